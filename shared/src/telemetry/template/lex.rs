//! Splits a Go `text/template` source into text and action tokens, with Go's trim markers
//! (`{{- ` and ` -}}`) and comments (`{{/* */}}`) applied here so the parser never sees them.

use super::ParseError;

/// One token.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok {
    Text(String),
    Open,
    Close,
    /// `.Name` (one segment; chains are several in a row with no space between).
    Field(String),
    /// `$` or `$name`.
    Var(String),
    /// A function name or keyword.
    Ident(String),
    Dot,
    Str(String),
    /// A number literal as written (the parser decides int or float).
    Num(String),
    /// A character constant (Go: an integer).
    Char(i64),
    Pipe,
    LParen,
    RParen,
    Decl,
    Assign,
    Comma,
    /// White space inside an action: separates operands, ends a field chain.
    Space,
}

/// The tokens of `src`.
pub(super) fn lex(src: &str) -> Result<Vec<Tok>, ParseError> {
    let mut toks = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    loop {
        let Some(open) = rest.find("{{") else {
            push_text(&mut toks, rest, trim_next, false);
            return Ok(toks);
        };
        let after = &rest[open + 2..];
        let trim_left = after.starts_with("- ")
            || after.starts_with("-\t")
            || after.starts_with("-\n")
            || after.starts_with("-\r");
        push_text(&mut toks, &rest[..open], trim_next, trim_left);
        let mut body = if trim_left { &after[2..] } else { after };
        if trim_left {
            body = body.trim_start_matches([' ', '\t', '\n', '\r']);
        }
        if let Some(c) = body.strip_prefix("/*") {
            let end = c
                .find("*/")
                .ok_or_else(|| ParseError::new("unclosed comment"))?;
            let tail = &c[end + 2..];
            let (tail, trim) = close_of(tail)
                .ok_or_else(|| ParseError::new("comment ends before closing delimiter"))?;
            trim_next = trim;
            rest = tail;
            continue;
        }
        toks.push(Tok::Open);
        let (tail, trim) = lex_action(body, &mut toks)?;
        toks.push(Tok::Close);
        trim_next = trim;
        rest = tail;
    }
}

fn push_text(toks: &mut Vec<Tok>, mut t: &str, trim_start: bool, trim_end: bool) {
    if trim_start {
        t = t.trim_start_matches([' ', '\t', '\n', '\r']);
    }
    if trim_end {
        t = t.trim_end_matches([' ', '\t', '\n', '\r']);
    }
    if !t.is_empty() {
        toks.push(Tok::Text(t.to_owned()));
    }
}

/// `s` starts right after a comment: optional ` -`, then `}}`. Returns what follows and whether
/// the next text is trimmed.
fn close_of(s: &str) -> Option<(&str, bool)> {
    if let Some(r) = s.strip_prefix("}}") {
        return Some((r, false));
    }
    let t = s.trim_start_matches([' ', '\t', '\n', '\r']);
    if t.len() < s.len()
        && let Some(r) = t.strip_prefix("-}}")
    {
        return Some((r, true));
    }
    None
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fn is_alnum(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Lexes one action's body up to and including `}}`.
fn lex_action<'s>(mut s: &'s str, toks: &mut Vec<Tok>) -> Result<(&'s str, bool), ParseError> {
    loop {
        let Some(c) = s.chars().next() else {
            return Err(ParseError::new("unclosed action"));
        };
        if let Some(r) = s.strip_prefix("}}") {
            return Ok((r, false));
        }
        if is_space(c) {
            let t = s.trim_start_matches(is_space);
            if let Some(r) = t.strip_prefix("-}}") {
                return Ok((r, true));
            }
            toks.push(Tok::Space);
            s = t;
            continue;
        }
        match c {
            '|' => {
                toks.push(Tok::Pipe);
                s = &s[1..];
            }
            '(' => {
                toks.push(Tok::LParen);
                s = &s[1..];
            }
            ')' => {
                toks.push(Tok::RParen);
                s = &s[1..];
            }
            ',' => {
                toks.push(Tok::Comma);
                s = &s[1..];
            }
            '=' => {
                toks.push(Tok::Assign);
                s = &s[1..];
            }
            ':' => {
                s = s
                    .strip_prefix(":=")
                    .ok_or_else(|| ParseError::new("expected :="))?;
                toks.push(Tok::Decl);
            }
            '"' => {
                let (v, r) = quoted(&s[1..])?;
                toks.push(Tok::Str(v));
                s = r;
            }
            '`' => {
                let end = s[1..]
                    .find('`')
                    .ok_or_else(|| ParseError::new("unterminated raw quoted string"))?;
                toks.push(Tok::Str(s[1..1 + end].to_owned()));
                s = &s[end + 2..];
            }
            '\'' => {
                let (v, r) = char_const(&s[1..])?;
                toks.push(Tok::Char(v));
                s = r;
            }
            '$' => {
                let n = s[1..].find(|c| !is_alnum(c)).map_or(s.len(), |i| i + 1);
                toks.push(Tok::Var(s[..n].to_owned()));
                s = &s[n..];
            }
            '.' => {
                let next = s[1..].chars().next();
                if next.is_some_and(|c| c.is_ascii_digit()) {
                    let n = number_len(s);
                    toks.push(Tok::Num(s[..n].to_owned()));
                    s = &s[n..];
                } else if next.is_some_and(is_alnum) {
                    let n = s[1..].find(|c| !is_alnum(c)).map_or(s.len(), |i| i + 1);
                    toks.push(Tok::Field(s[1..n].to_owned()));
                    s = &s[n..];
                } else {
                    toks.push(Tok::Dot);
                    s = &s[1..];
                }
            }
            '+' | '-' | '0'..='9' => {
                let n = number_len(s);
                if n == 0 || (n == 1 && !c.is_ascii_digit()) {
                    return Err(ParseError::new(format!("bad character {c:?}")));
                }
                toks.push(Tok::Num(s[..n].to_owned()));
                s = &s[n..];
            }
            c if is_alnum(c) => {
                let n = s.find(|c| !is_alnum(c)).unwrap_or(s.len());
                toks.push(Tok::Ident(s[..n].to_owned()));
                s = &s[n..];
            }
            c => return Err(ParseError::new(format!("bad character {c:?}"))),
        }
    }
}

/// Length of the number at the start of `s` (Go's scanNumber, loosely: the parser validates).
fn number_len(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    while i < b.len() {
        let c = b[i];
        let body = s.trim_start_matches(['+', '-']);
        let hex = body.starts_with("0x") || body.starts_with("0X");
        let exp_sign = (c == b'+' || c == b'-')
            && i > 0
            && ((!hex && matches!(b[i - 1], b'e' | b'E')) || matches!(b[i - 1], b'p' | b'P'));
        if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || exp_sign {
            i += 1;
        } else {
            break;
        }
    }
    i
}

/// Decodes a Go interpreted string literal after its opening quote.
fn quoted(s: &str) -> Result<(String, &str), ParseError> {
    let mut out = String::new();
    let mut it = s.char_indices();
    while let Some((i, c)) = it.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\n' => break,
            '\\' => {
                let (j, e) = it
                    .next()
                    .ok_or_else(|| ParseError::new("unterminated quoted string"))?;
                let (ch, used) = escape(e, &s[j + e.len_utf8()..], '"')?;
                // Go allows \x and octal escapes to form arbitrary bytes; we keep valid UTF-8.
                out.push(ch);
                for _ in 0..used {
                    it.next();
                }
            }
            c => out.push(c),
        }
    }
    Err(ParseError::new("unterminated quoted string"))
}

/// One escape after `\`: the character and how many more chars of `rest` it used.
fn escape(e: char, rest: &str, quote: char) -> Result<(char, usize), ParseError> {
    let hex = |n: usize| -> Result<(char, usize), ParseError> {
        let h = rest.get(..n).ok_or_else(|| ParseError::new("bad escape"))?;
        let v = u32::from_str_radix(h, 16).map_err(|_| ParseError::new("bad escape"))?;
        char::from_u32(v)
            .map(|c| (c, n))
            .ok_or_else(|| ParseError::new("bad escape"))
    };
    Ok(match e {
        'a' => ('\x07', 0),
        'b' => ('\x08', 0),
        'f' => ('\x0c', 0),
        'n' => ('\n', 0),
        'r' => ('\r', 0),
        't' => ('\t', 0),
        'v' => ('\x0b', 0),
        '\\' => ('\\', 0),
        'x' => hex(2)?,
        'u' => hex(4)?,
        'U' => hex(8)?,
        '0'..='7' => {
            let o = rest.get(..2).ok_or_else(|| ParseError::new("bad escape"))?;
            let v = u32::from_str_radix(&format!("{e}{o}"), 8)
                .map_err(|_| ParseError::new("bad escape"))?;
            (
                char::from_u32(v).ok_or_else(|| ParseError::new("bad escape"))?,
                2,
            )
        }
        c if c == quote => (c, 0),
        _ => return Err(ParseError::new("unknown escape sequence")),
    })
}

fn char_const(s: &str) -> Result<(i64, &str), ParseError> {
    let mut it = s.chars();
    let c = it
        .next()
        .ok_or_else(|| ParseError::new("unterminated character constant"))?;
    let (v, used) = match c {
        '\\' => {
            let e = it
                .next()
                .ok_or_else(|| ParseError::new("unterminated character constant"))?;
            let (ch, n) = escape(e, it.as_str(), '\'')?;
            (ch, 1 + e.len_utf8() + n)
        }
        '\'' | '\n' => return Err(ParseError::new("bad character constant")),
        c => (c, c.len_utf8()),
    };
    let r = s[used..]
        .strip_prefix('\'')
        .ok_or_else(|| ParseError::new("unterminated character constant"))?;
    Ok((i64::from(u32::from(v)), r))
}
