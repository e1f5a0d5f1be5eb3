//! Go's `strconv` / `time.ParseDuration` accept/reject rules, so config maps and annotations are
//! accepted or rejected exactly as Knative (Go) does.

use std::time::Duration;

/// A Go `time.Duration`: signed nanoseconds.
pub type GoDuration = i64;

/// Go `strconv.ParseBool`: exactly `1 t T TRUE true True 0 f F FALSE false False`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go `strconv.ParseFloat(s, 64)` for decimal forms, `inf`/`infinity`/`nan` (any case, signed).
///
/// Differences kept deliberately small: Go's hexadecimal floats (`0x1p3`) and underscores after a
/// base prefix are not accepted.
pub fn parse_float(s: &str) -> Option<f64> {
    // Rust's parser accepts the same decimal grammar and the same special words; Go rejects a
    // signed "nan", Rust accepts it.
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    if unsigned.len() != s.len() && unsigned.eq_ignore_ascii_case("nan") {
        return None;
    }
    s.parse::<f64>().ok()
}

/// Go `strconv.ParseInt(s, 10, 32)`: optional sign, decimal digits, in int32 range.
pub fn parse_int32(s: &str) -> Option<i32> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i32>().ok()
}

/// Go `strconv.Atoi` (64-bit platforms): optional sign, decimal digits, in int64 range.
pub fn parse_atoi(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i64>().ok()
}

/// Go `time.ParseDuration`: `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`, units ns us µs μs ms s m h; a bare
/// `0` is allowed. Returns signed nanoseconds.
pub fn parse_duration(orig: &str) -> Option<GoDuration> {
    let mut s = orig;
    let mut neg = false;
    if let Some(c) = s.chars().next()
        && (c == '-' || c == '+')
    {
        neg = c == '-';
        s = &s[1..];
    }
    if s == "0" {
        return Some(0);
    }
    if s.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        let b0 = s.as_bytes()[0];
        if !(b0 == b'.' || b0.is_ascii_digit()) {
            return None;
        }
        // Integer part.
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let pre = int_len > 0;
        let mut v: u64 = 0;
        for b in s[..int_len].bytes() {
            v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            if v > 1 << 63 {
                return None;
            }
        }
        s = &s[int_len..];
        // Fraction.
        let mut f: u64 = 0;
        let mut scale: f64 = 1.0;
        let mut post = false;
        if let Some(rest) = s.strip_prefix('.') {
            s = rest;
            let frac_len = s.bytes().take_while(u8::is_ascii_digit).count();
            post = frac_len > 0;
            let mut overflow = false;
            for b in s[..frac_len].bytes() {
                if overflow {
                    continue;
                }
                // Go stops accumulating once more digits would overflow, ignoring the rest.
                match f
                    .checked_mul(10)
                    .and_then(|x| x.checked_add(u64::from(b - b'0')))
                {
                    Some(nf) if nf <= 1 << 63 => {
                        f = nf;
                        scale *= 10.0;
                    }
                    _ => overflow = true,
                }
            }
            s = &s[frac_len..];
        }
        if !pre && !post {
            return None;
        }
        // Unit.
        let unit_len = s
            .char_indices()
            .find(|&(_, c)| c == '.' || c.is_ascii_digit())
            .map_or(s.len(), |(i, _)| i);
        if unit_len == 0 {
            return None;
        }
        let unit: u64 = match &s[..unit_len] {
            "ns" => 1,
            "us" | "\u{00b5}s" | "\u{03bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            _ => return None,
        };
        s = &s[unit_len..];
        if v > (1 << 63) / unit {
            return None;
        }
        v *= unit;
        if f > 0 {
            // Go: v += uint64(float64(f) * (float64(unit) / scale)), truncating.
            v = v.checked_add((f as f64 * (unit as f64 / scale)) as u64)?;
            if v > 1 << 63 {
                return None;
            }
        }
        total = total.checked_add(v)?;
        if total > 1 << 63 {
            return None;
        }
    }
    if neg {
        Some((total as i128).wrapping_neg() as i64)
    } else if total > i64::MAX as u64 {
        None
    } else {
        Some(total as i64)
    }
}

/// Formats a Go duration the way Go's `Duration.String` does (`1m1.984s`, `0s`, `-5s`, `1h0m0s`).
pub fn format_duration(d: GoDuration) -> String {
    if d == 0 {
        return "0s".to_owned();
    }
    let neg = d < 0;
    let u = d.unsigned_abs();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if u < 1_000_000_000 {
        // Sub-second: ns, µs or ms with a fraction.
        let (unit, div) = if u < 1_000 {
            ("ns", 1)
        } else if u < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        out.push_str(&frac(u, div));
        out.push_str(unit);
        return out;
    }
    let h = u / 3_600_000_000_000;
    let rem = u % 3_600_000_000_000;
    let m = rem / 60_000_000_000;
    let sn = rem % 60_000_000_000;
    if h > 0 {
        out.push_str(&format!("{h}h{m}m"));
    } else if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&frac(sn, 1_000_000_000));
    out.push('s');
    out
}

fn frac(v: u64, div: u64) -> String {
    let whole = v / div;
    let rest = v % div;
    if rest == 0 {
        return whole.to_string();
    }
    let width = div.ilog10() as usize;
    let s = format!("{rest:0width$}");
    format!("{whole}.{}", s.trim_end_matches('0'))
}

/// Converts a non-negative Go duration to a `std::time::Duration` (negative becomes zero).
pub fn to_std(d: GoDuration) -> Duration {
    Duration::from_nanos(d.max(0) as u64)
}

/// Converts a `std::time::Duration` to Go nanoseconds, saturating.
pub fn from_std(d: Duration) -> GoDuration {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Go `Duration.Round(time.Second)`: nearest second, halves away from zero.
pub fn round_to_second(d: GoDuration) -> GoDuration {
    const S: i64 = 1_000_000_000;
    let r = d % S;
    if d < 0 {
        let r = -r;
        if r + r < S { d + r } else { d - (S - r) }
    } else if r + r < S {
        d - r
    } else {
        d.saturating_add(S - r)
    }
}

/// Go `Duration.Truncate(time.Second)`.
pub fn truncate_to_second(d: GoDuration) -> GoDuration {
    d - d % 1_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn durations_like_go() {
        let table: &[(&str, Option<i64>)] = &[
            ("0", Some(0)),
            ("-0", Some(0)),
            ("60s", Some(60 * S)),
            ("2m3s", Some(123 * S)),
            ("1h", Some(3600 * S)),
            ("-1m23s", Some(-83 * S)),
            ("61984ms", Some(61_984_000_000)),
            ("1.5s", Some(1_500_000_000)),
            (".5s", Some(500_000_000)),
            ("5.s", Some(5 * S)),
            ("1µs", Some(1_000)),
            ("1us", Some(1_000)),
            ("10", None),
            ("", None),
            ("s", None),
            ("1d", None),
            (".s", None),
            ("1 s", None),
            (" 1s", None),
            ("3000000h", None),
        ];
        for (s, want) in table {
            assert_eq!(parse_duration(s), *want, "{s:?}");
        }
    }

    #[test]
    fn scalars_like_go() {
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("yes"), None);
        assert_eq!(parse_bool("tRue"), None);
        assert_eq!(parse_float("1e3"), Some(1000.0));
        assert_eq!(parse_float("inf"), Some(f64::INFINITY));
        assert!(parse_float("NaN").is_some_and(f64::is_nan));
        assert_eq!(parse_float("-nan"), None);
        assert_eq!(parse_float(" 1"), None);
        assert_eq!(parse_int32("2147483647"), Some(i32::MAX));
        assert_eq!(parse_int32("2147483648"), None);
        assert_eq!(parse_int32("+3"), Some(3));
        assert_eq!(parse_int32("1.0"), None);
    }

    #[test]
    fn formatting_and_rounding() {
        assert_eq!(format_duration(61_984_000_000), "1m1.984s");
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(-5 * S), "-5s");
        assert_eq!(format_duration(3600 * S), "1h0m0s");
        assert_eq!(format_duration(1_500_000), "1.5ms");
        assert_eq!(round_to_second(61_984_000_000), 62 * S);
        assert_eq!(round_to_second(1_500_000_000), 2 * S);
        assert_eq!(round_to_second(-1_500_000_000), -2 * S);
        assert_eq!(truncate_to_second(61_984_000_000), 61 * S);
    }
}
