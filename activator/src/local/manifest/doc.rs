//! YAML documents with their place in the file, so every error can name `file:line: field`.

use super::{ManifestError, Warning};

/// A YAML document of a file: its text and the 1-based line it starts at.
pub(super) struct Doc<'a> {
    pub(super) file: &'a str,
    pub(super) text: &'a str,
    pub(super) first_line: usize,
}

impl Doc<'_> {
    /// The line of a dotted field path, found by walking the keys in order (best effort: the
    /// document's first line when a key is not written, e.g. a missing field).
    pub(super) fn line_of(&self, path: &[&str]) -> usize {
        let mut from = 0;
        let mut found = 0;
        let lines: Vec<&str> = self.text.lines().collect();
        for seg in path {
            let seg = seg.split('[').next().unwrap_or(seg);
            let hit = lines.iter().enumerate().skip(from).find(|(_, l)| {
                let t = l.trim_start().trim_start_matches("- ").trim_start();
                t.starts_with(&format!("{seg}:"))
                    || t.starts_with(&format!("\"{seg}\":"))
                    || t.starts_with(&format!("'{seg}':"))
            });
            match hit {
                Some((i, _)) => {
                    found = i;
                    from = i + 1;
                }
                None => break,
            }
        }
        self.first_line + found
    }

    pub(super) fn err(&self, path: &[&str], message: impl Into<String>) -> ManifestError {
        ManifestError::Field {
            file: self.file.to_owned(),
            line: self.line_of(path),
            field: path.join("."),
            message: message.into(),
        }
    }

    pub(super) fn warn(&self, path: &[&str], message: &str) -> Warning {
        Warning {
            at: format!("{}:{}", self.file, self.line_of(path)),
            field: path.join("."),
            message: message.to_owned(),
        }
    }
}

/// Splits a file into YAML documents at `---` lines.
pub(super) fn documents<'a>(file: &'a str, text: &'a str) -> Vec<Doc<'a>> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut first_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") {
            docs.push(Doc {
                file,
                text: &text[start..offset],
                first_line,
            });
            start = offset + line.len();
            first_line = i + 2;
        }
        offset += line.len();
    }
    docs.push(Doc {
        file,
        text: &text[start..],
        first_line,
    });
    docs.retain(|d| {
        d.text
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

/// A serde error as a field error: the path serde reports, the line where it happened.
pub(super) fn yaml_error(doc: &Doc<'_>, e: &serde_yaml_ng::Error) -> ManifestError {
    let text = e.to_string();
    // serde_yaml_ng writes "<path>: <message> at line L column C"; keep path and message apart.
    let text = match text.rfind(" at line ") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    let (field, message) = match text.split_once(": ") {
        Some((p, m)) if !p.contains(' ') => (p.to_owned(), m.to_owned()),
        _ => ("(document)".to_owned(), text.to_owned()),
    };
    let line = match e.location() {
        Some(l) => doc.first_line + l.line() - 1,
        None => doc.line_of(&field.split('.').collect::<Vec<_>>()),
    };
    ManifestError::Field {
        file: doc.file.to_owned(),
        line,
        field,
        message,
    }
}
