//! Go's `fmt` as templates reach it: `%v` printing of values, `print`/`println` spacing,
//! `printf` verbs with flags, width and precision, and the `html`, `js` and `urlquery` escapers.

use std::fmt::Write as _;

use super::exec::Value;

/// Go's `%v` for a float64: the shortest decimal that round-trips, in exponent form when the
/// decimal exponent is below -4 or at least 6 (strconv's `'g'` with precision -1: `1e+06`,
/// `5.2e-05`, `123456`).
pub fn go_float(v: f64) -> String {
    let mut s = String::new();
    float_g(&mut s, v, None);
    s
}

/// `%g` with an optional precision (significant digits).
fn float_g(out: &mut String, v: f64, prec: Option<usize>) {
    if !v.is_finite() {
        out.push_str(non_finite(v));
        return;
    }
    if v == 0.0 {
        out.push_str(if v.is_sign_negative() { "-0" } else { "0" });
        return;
    }
    let e = match prec {
        None => format!("{v:e}"),
        Some(p) => format!("{:.*e}", p.max(1) - 1, v),
    };
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    // Trailing zeros never show in %g.
    let mant = if mant.contains('.') {
        mant.trim_end_matches('0').trim_end_matches('.')
    } else {
        mant
    };
    let nd = mant.bytes().filter(u8::is_ascii_digit).count() as i32;
    let dp = exp + 1;
    let eprec = match prec {
        None => 6,
        Some(p) => {
            let p = p.max(1) as i32;
            if p > nd && nd >= dp { nd } else { p }
        }
    };
    if exp < -4 || exp >= eprec {
        out.push_str(mant);
        exp_suffix(out, exp);
    } else {
        let decimals = (nd - dp).max(0) as usize;
        let _ = write!(out, "{v:.decimals$}");
    }
}

fn exp_suffix(out: &mut String, exp: i32) {
    let _ = write!(
        out,
        "e{}{:02}",
        if exp < 0 { '-' } else { '+' },
        exp.unsigned_abs()
    );
}

fn non_finite(v: f64) -> &'static str {
    if v.is_nan() {
        "NaN"
    } else if v > 0.0 {
        "+Inf"
    } else {
        "-Inf"
    }
}

/// `%e` with `prec` fraction digits.
fn float_e(out: &mut String, v: f64, prec: usize, upper: bool) {
    if !v.is_finite() {
        out.push_str(non_finite(v));
        return;
    }
    let e = format!("{v:.prec$e}");
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    out.push_str(mant);
    let start = out.len();
    exp_suffix(out, exp.parse().unwrap_or(0));
    if upper {
        out.replace_range(start..start + 1, "E");
    }
}

/// Go's `%v` of a value into `out`.
pub(super) fn print_value(out: &mut String, v: &Value<'_>) {
    match v {
        Value::Nil | Value::NilPtr(_) => out.push_str("<nil>"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => float_g(out, *f, None),
        Value::Str(s) => out.push_str(s),
        Value::List(l) => {
            out.push('[');
            for (i, e) in l.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                print_value(out, e);
            }
            out.push(']');
        }
        Value::Obj(o) => o.print(out),
    }
}

fn is_string(v: &Value<'_>) -> bool {
    matches!(v, Value::Str(_))
}

/// Go's `fmt.Sprint`: a space between operands when neither side is a string.
pub(super) fn sprint(out: &mut String, args: &[Value<'_>]) {
    for (i, a) in args.iter().enumerate() {
        if i > 0 && !is_string(a) && !is_string(&args[i - 1]) {
            out.push(' ');
        }
        print_value(out, a);
    }
}

/// Go's `fmt.Sprintln`: always a space between operands, then a newline.
pub(super) fn sprintln(out: &mut String, args: &[Value<'_>]) {
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        print_value(out, a);
    }
    out.push('\n');
}

/// Go's `template.HTMLEscapeString`.
pub(super) fn html_escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\0' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

/// Go's `template.JSEscapeString`.
pub(super) fn js_escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '<' => out.push_str("\\u003C"),
            '>' => out.push_str("\\u003E"),
            '&' => out.push_str("\\u0026"),
            '=' => out.push_str("\\u003D"),
            c if (c as u32) < 0x20 || c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Go's `url.QueryEscape`.
pub(super) fn query_escape(out: &mut String, s: &str) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char);
            }
            b' ' => out.push('+'),
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
}

/// Go's `strconv.Quote`.
fn quote(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[derive(Default)]
struct Spec {
    minus: bool,
    plus: bool,
    sharp: bool,
    space: bool,
    zero: bool,
    width: Option<usize>,
    prec: Option<usize>,
}

/// Go's `fmt.Sprintf` over template values.
pub(super) fn sprintf(out: &mut String, format: &str, args: &[Value<'_>]) {
    let mut next = 0;
    let mut chars = format.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = Spec::default();
        while let Some(&(_, f)) = chars.peek() {
            match f {
                '-' => spec.minus = true,
                '+' => spec.plus = true,
                '#' => spec.sharp = true,
                ' ' => spec.space = true,
                '0' => spec.zero = true,
                _ => break,
            }
            chars.next();
        }
        let num = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
                   next: &mut usize|
         -> Option<usize> {
            if chars.peek().map(|&(_, c)| c) == Some('*') {
                chars.next();
                let v = match args.get(*next) {
                    Some(Value::Int(i)) => usize::try_from(*i).ok(),
                    _ => None,
                };
                *next += 1;
                return v;
            }
            let mut n: Option<usize> = None;
            while let Some(&(_, d)) = chars.peek() {
                let Some(d) = d.to_digit(10) else { break };
                n = Some(
                    n.unwrap_or(0)
                        .saturating_mul(10)
                        .saturating_add(d as usize)
                        .min(1 << 16),
                );
                chars.next();
            }
            n
        };
        spec.width = num(&mut chars, &mut next);
        if chars.peek().map(|&(_, c)| c) == Some('.') {
            chars.next();
            spec.prec = Some(num(&mut chars, &mut next).unwrap_or(0));
        }
        let Some((_, verb)) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(next) else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        next += 1;
        format_one(out, &spec, verb, arg);
    }
    if next < args.len() {
        out.push_str("%!(EXTRA ");
        for (i, a) in args[next..].iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(a.type_name());
            out.push('=');
            print_value(out, a);
        }
        out.push(')');
    }
}

fn bad_verb(out: &mut String, verb: char, arg: &Value<'_>) {
    let _ = write!(out, "%!{verb}(");
    if matches!(arg, Value::Nil) {
        out.push_str("<nil>");
    } else {
        out.push_str(arg.type_name());
        out.push('=');
        print_value(out, arg);
    }
    out.push(')');
}

fn pad(out: &mut String, spec: &Spec, body: &str, numeric: bool) {
    let len = body.chars().count();
    let width = spec.width.unwrap_or(0);
    if len >= width {
        out.push_str(body);
        return;
    }
    let fill = width - len;
    if spec.minus {
        out.push_str(body);
        out.extend(std::iter::repeat_n(' ', fill));
    } else if spec.zero && numeric {
        // Zeros go after the sign.
        let (sign, digits) = match body.as_bytes().first() {
            Some(b'+' | b'-' | b' ') => body.split_at(1),
            _ => ("", body),
        };
        out.push_str(sign);
        out.extend(std::iter::repeat_n('0', fill));
        out.push_str(digits);
    } else {
        out.extend(std::iter::repeat_n(' ', fill));
        out.push_str(body);
    }
}

fn sign(spec: &Spec, neg: bool) -> &'static str {
    if neg {
        "-"
    } else if spec.plus {
        "+"
    } else if spec.space {
        " "
    } else {
        ""
    }
}

fn format_one(out: &mut String, spec: &Spec, verb: char, arg: &Value<'_>) {
    let mut body = String::new();
    let numeric;
    match (arg, verb) {
        (Value::Bool(b), 'v' | 't') => {
            body.push_str(if *b { "true" } else { "false" });
            numeric = false;
        }
        (Value::Int(i), 'v' | 'd' | 'b' | 'o' | 'O' | 'x' | 'X') => {
            let mag = i.unsigned_abs();
            let mut digits = match verb {
                'b' => format!("{mag:b}"),
                'o' | 'O' => format!("{mag:o}"),
                'x' => format!("{mag:x}"),
                'X' => format!("{mag:X}"),
                _ => mag.to_string(),
            };
            if let Some(p) = spec.prec {
                if p == 0 && mag == 0 {
                    digits.clear();
                } else if digits.len() < p {
                    digits = format!("{}{digits}", "0".repeat(p - digits.len()));
                }
            }
            let prefix = match (verb, spec.sharp) {
                ('O', _) => "0o",
                ('x', true) => "0x",
                ('X', true) => "0X",
                ('b', true) => "0b",
                ('o', true) if !digits.starts_with('0') => "0",
                _ => "",
            };
            body = format!("{}{prefix}{digits}", sign(spec, *i < 0));
            numeric = spec.prec.is_none();
        }
        (Value::Int(i), 'c') => {
            body.push(
                u32::try_from(*i)
                    .ok()
                    .and_then(char::from_u32)
                    .unwrap_or('\u{FFFD}'),
            );
            numeric = false;
        }
        (Value::Int(i), 'q') => {
            let c = u32::try_from(*i)
                .ok()
                .and_then(char::from_u32)
                .unwrap_or('\u{FFFD}');
            body = format!("'{c}'");
            numeric = false;
        }
        (Value::Int(i), 'U') => {
            body = format!("U+{i:04X}");
            numeric = false;
        }
        (Value::Float(f), 'v' | 'g' | 'G' | 'e' | 'E' | 'f' | 'F') => {
            let neg = f.is_sign_negative() && !f.is_nan();
            let a = f.abs();
            let mut s = String::new();
            match verb {
                'e' | 'E' => float_e(&mut s, a, spec.prec.unwrap_or(6), verb == 'E'),
                'f' | 'F' if a.is_finite() => {
                    let _ = write!(s, "{a:.*}", spec.prec.unwrap_or(6));
                }
                _ => {
                    float_g(&mut s, a, spec.prec);
                    if verb == 'G' {
                        s = s.to_uppercase();
                    }
                }
            }
            if !a.is_finite() && (verb == 'f' || verb == 'F') {
                s = non_finite(a).to_owned();
            }
            // +Inf already carries its sign.
            let s = s.strip_prefix('+').unwrap_or(&s).to_owned();
            body = format!("{}{s}", sign(spec, neg));
            numeric = a.is_finite();
        }
        (Value::Str(s), 'v' | 's' | 'q' | 'x' | 'X') => {
            let s = match spec.prec {
                Some(p) if verb != 'x' && verb != 'X' => {
                    let end = s.char_indices().nth(p).map_or(s.len(), |(i, _)| i);
                    &s[..end]
                }
                _ => &s[..],
            };
            match verb {
                'q' => quote(&mut body, s),
                'x' => s.bytes().for_each(|b| {
                    let _ = write!(body, "{b:02x}");
                }),
                'X' => s.bytes().for_each(|b| {
                    let _ = write!(body, "{b:02X}");
                }),
                _ => body.push_str(s),
            }
            numeric = false;
        }
        (Value::List(l), _) => {
            body.push('[');
            for (i, e) in l.iter().enumerate() {
                if i > 0 {
                    body.push(' ');
                }
                format_one(&mut body, spec, verb, e);
            }
            body.push(']');
            out.push_str(&body);
            return;
        }
        (Value::Nil | Value::NilPtr(_), 'v') => {
            body.push_str("<nil>");
            numeric = false;
        }
        (Value::Obj(_) | Value::NilPtr(_), 'v' | 's') => {
            print_value(&mut body, arg);
            numeric = false;
        }
        _ => {
            bad_verb(out, verb, arg);
            return;
        }
    }
    pad(out, spec, &body, numeric);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(format: &str, args: &[Value<'_>]) -> String {
        let mut s = String::new();
        sprintf(&mut s, format, args);
        s
    }

    #[test]
    fn floats_print_as_go() {
        for (v, want) in [
            (0.000052, "5.2e-05"),
            (1.5, "1.5"),
            (0.0001, "0.0001"),
            (123456.0, "123456"),
            (1e6, "1e+06"),
            (1073741824.0, "1.073741824e+09"),
            (0.0, "0"),
            (f64::INFINITY, "+Inf"),
        ] {
            assert_eq!(go_float(v), want, "{v}");
        }
    }

    #[test]
    fn printf_verbs() {
        use std::borrow::Cow;
        let s = |v: &'static str| Value::Str(Cow::Borrowed(v));
        assert_eq!(f("code=%d", &[Value::Int(200)]), "code=200");
        assert_eq!(
            f(
                "%5d|%-5d|%05d",
                &[Value::Int(7), Value::Int(7), Value::Int(-7)]
            ),
            "    7|7    |-0007"
        );
        assert_eq!(
            f(
                "%x %X %#x %o %b",
                &[
                    Value::Int(255),
                    Value::Int(255),
                    Value::Int(255),
                    Value::Int(8),
                    Value::Int(5)
                ]
            ),
            "ff FF 0xff 10 101"
        );
        assert_eq!(
            f(
                "%.3f %e %g %.2g",
                &[
                    Value::Float(1.0),
                    Value::Float(1234.5678),
                    Value::Float(0.000052),
                    Value::Float(1234.0)
                ]
            ),
            "1.000 1.234568e+03 5.2e-05 1.2e+03"
        );
        assert_eq!(
            f(
                "%s %q %v %10s|%-4s|",
                &[s("a"), s("b\"c"), s("d"), s("right"), s("l")]
            ),
            "a \"b\\\"c\" d      right|l   |"
        );
        assert_eq!(f("%d", &[s("x")]), "%!d(string=x)");
        assert_eq!(f("%d %d", &[Value::Int(1)]), "1 %!d(MISSING)");
        assert_eq!(f("%d", &[Value::Int(1), s("x")]), "1%!(EXTRA string=x)");
        assert_eq!(f("100%%", &[]), "100%");
        assert_eq!(f("%t %v", &[Value::Bool(true), Value::Nil]), "true <nil>");
        assert_eq!(
            f("%c%U", &[Value::Int(65), Value::Int(0x1F600)]),
            "AU+1F600"
        );
        assert_eq!(f("%", &[]), "%!(NOVERB)");
    }

    #[test]
    fn escapers() {
        let mut s = String::new();
        html_escape(&mut s, "<a href=\"x\">&'");
        assert_eq!(s, "&lt;a href=&#34;x&#34;&gt;&amp;&#39;");
        s.clear();
        query_escape(&mut s, "a b&c=d/é");
        assert_eq!(s, "a+b%26c%3Dd%2F%C3%A9");
        s.clear();
        js_escape(&mut s, "it's <b>\"x\"</b>\n");
        assert_eq!(s, "it\\'s \\u003Cb\\u003E\\\"x\\\"\\u003C/b\\u003E\\u000A");
    }
}
