//! The parse tree and the parser: Go's grammar, and Go's parse-time checks (undefined
//! functions and variables, `break` outside `range`, missing `{{end}}`), so a template Go
//! rejects at start-up is rejected here too.

use std::collections::HashMap;

use super::ParseError;
use super::func::Func;
use super::lex::{Tok, lex};

/// Nesting deeper than this is refused: it bounds the parser's and executor's recursion (Go's
/// own bound is far larger; no request-log template comes near either).
const MAX_DEPTH: usize = 100;

/// A node of a template body.
#[derive(Clone, Debug)]
pub(super) enum Node {
    Text(String),
    Action(Pipe),
    If(Branch),
    With(Branch),
    Range(Branch),
    Break,
    Continue,
    Template(String, Option<Pipe>),
}

/// The pipeline, body and `else` body of `if`, `with` and `range`.
#[derive(Clone, Debug)]
pub(super) struct Branch {
    pub pipe: Pipe,
    pub then: Vec<Node>,
    pub els: Vec<Node>,
}

/// `$a, $b := cmd | cmd`.
#[derive(Clone, Debug)]
pub(super) struct Pipe {
    pub decl: Vec<String>,
    /// `=` rather than `:=`.
    pub assign: bool,
    pub cmds: Vec<Cmd>,
}

/// Space-separated operands; the first may be a function.
#[derive(Clone, Debug)]
pub(super) struct Cmd {
    pub args: Vec<Arg>,
}

/// An operand.
#[derive(Clone, Debug)]
pub(super) enum Arg {
    Dot,
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// `.A.B`: fields (or methods) of dot.
    Field(Vec<String>),
    /// `$x.A.B`.
    Var(String, Vec<String>),
    Func(Func),
    /// `(pipeline).A.B`.
    Chain(Box<Pipe>, Vec<String>),
}

/// A parsed template set: the main body and the `define`d ones.
#[derive(Clone, Debug)]
pub(super) struct Tree {
    pub main: Vec<Node>,
    pub defs: HashMap<String, Vec<Node>>,
}

#[derive(Debug, PartialEq)]
enum Stop {
    Eof,
    End,
    Else,
    ElseIf,
    ElseWith,
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    vars: Vec<String>,
    range_depth: usize,
    depth: usize,
    defs: HashMap<String, Vec<Node>>,
}

/// Parses `src`.
pub(super) fn parse(src: &str) -> Result<Tree, ParseError> {
    let mut p = Parser {
        toks: lex(src)?,
        pos: 0,
        vars: vec!["$".to_owned()],
        range_depth: 0,
        depth: 0,
        defs: HashMap::new(),
    };
    let (main, end) = p.list(true)?;
    match end {
        Stop::Eof => Ok(Tree { main, defs: p.defs }),
        Stop::End => Err(ParseError::new("unexpected {{end}}")),
        _ => Err(ParseError::new("unexpected {{else}}")),
    }
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn skip_space(&mut self) {
        while self.peek() == Some(&Tok::Space) {
            self.pos += 1;
        }
    }

    fn expect_close(&mut self, what: &str) -> Result<(), ParseError> {
        self.skip_space();
        match self.next() {
            Some(Tok::Close) => Ok(()),
            _ => Err(ParseError::new(format!("unexpected input in {what}"))),
        }
    }

    /// Nodes up to `{{end}}`, `{{else…}}` or the end of input.
    fn list(&mut self, top: bool) -> Result<(Vec<Node>, Stop), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError::new("template nested too deeply"));
        }
        let mut nodes = Vec::new();
        let end = loop {
            match self.next() {
                None => break Stop::Eof,
                Some(Tok::Text(t)) => nodes.push(Node::Text(t)),
                Some(Tok::Open) => {
                    self.skip_space();
                    let kw = match self.peek() {
                        Some(Tok::Ident(k)) => k.clone(),
                        _ => String::new(),
                    };
                    match kw.as_str() {
                        "end" => {
                            self.pos += 1;
                            self.expect_close("end")?;
                            break Stop::End;
                        }
                        "else" => {
                            self.pos += 1;
                            self.skip_space();
                            match self.peek() {
                                Some(Tok::Ident(k)) if k == "if" => {
                                    self.pos += 1;
                                    break Stop::ElseIf;
                                }
                                Some(Tok::Ident(k)) if k == "with" => {
                                    self.pos += 1;
                                    break Stop::ElseWith;
                                }
                                _ => {
                                    self.expect_close("else")?;
                                    break Stop::Else;
                                }
                            }
                        }
                        "if" | "with" | "range" => {
                            self.pos += 1;
                            nodes.push(self.control(&kw)?);
                        }
                        "break" | "continue" => {
                            self.pos += 1;
                            if self.range_depth == 0 {
                                return Err(ParseError::new(format!(
                                    "{{{{{kw}}}}} outside {{{{range}}}}"
                                )));
                            }
                            self.expect_close(&kw)?;
                            nodes.push(if kw == "break" {
                                Node::Break
                            } else {
                                Node::Continue
                            });
                        }
                        "template" => {
                            self.pos += 1;
                            let (name, pipe) = self.template_call("template")?;
                            nodes.push(Node::Template(name, pipe));
                        }
                        "block" => {
                            self.pos += 1;
                            let (name, pipe) = self.template_call("block")?;
                            let body = self.sub_template(false)?;
                            self.defs.insert(name.clone(), body);
                            nodes.push(Node::Template(name, pipe));
                        }
                        "define" => {
                            self.pos += 1;
                            if !top || self.depth > 1 {
                                return Err(ParseError::new("unexpected {{define}}"));
                            }
                            self.skip_space();
                            let name = match self.next() {
                                Some(Tok::Str(s)) => s,
                                _ => return Err(ParseError::new("define: name must be a string")),
                            };
                            self.expect_close("define")?;
                            let body = self.sub_template(true)?;
                            self.defs.insert(name, body);
                        }
                        _ => {
                            let pipe = self.pipeline("command", false)?;
                            nodes.push(Node::Action(pipe));
                        }
                    }
                }
                Some(t) => return Err(ParseError::new(format!("unexpected {t:?}"))),
            }
        };
        self.depth -= 1;
        Ok((nodes, end))
    }

    /// The body of a `define` or `block`: its own variable scope, ended by `{{end}}`.
    fn sub_template(&mut self, _define: bool) -> Result<Vec<Node>, ParseError> {
        let vars = std::mem::replace(&mut self.vars, vec!["$".to_owned()]);
        let range_depth = std::mem::take(&mut self.range_depth);
        let (body, end) = self.list(false)?;
        self.vars = vars;
        self.range_depth = range_depth;
        if end != Stop::End {
            return Err(ParseError::new("unexpected EOF in define"));
        }
        Ok(body)
    }

    fn template_call(&mut self, what: &str) -> Result<(String, Option<Pipe>), ParseError> {
        self.skip_space();
        let name = match self.next() {
            Some(Tok::Str(s)) => s,
            _ => return Err(ParseError::new(format!("{what}: name must be a string"))),
        };
        self.skip_space();
        if self.peek() == Some(&Tok::Close) {
            self.pos += 1;
            return Ok((name, None));
        }
        Ok((name, Some(self.pipeline(what, false)?)))
    }

    /// `if`/`with`/`range` after the keyword, through its `{{end}}`.
    fn control(&mut self, kw: &str) -> Result<Node, ParseError> {
        let mark = self.vars.len();
        let range = kw == "range";
        let pipe = self.pipeline(kw, range)?;
        if range {
            self.range_depth += 1;
        }
        let (then, end) = self.list(false)?;
        if range {
            self.range_depth -= 1;
        }
        let els = match end {
            Stop::Eof => return Err(ParseError::new(format!("unexpected EOF in {kw}"))),
            Stop::End => Vec::new(),
            Stop::Else => {
                let (els, end) = self.list(false)?;
                if end != Stop::End {
                    return Err(ParseError::new(format!("expected end; found else in {kw}")));
                }
                els
            }
            // `{{else if x}}` is `{{else}}{{if x}}…{{end}}{{end}}` sharing the one `{{end}}`.
            Stop::ElseIf if kw == "if" => vec![self.control("if")?],
            Stop::ElseWith if kw == "with" => vec![self.control("with")?],
            _ => return Err(ParseError::new(format!("unexpected else in {kw}"))),
        };
        self.vars.truncate(mark);
        let b = Branch { pipe, then, els };
        Ok(match kw {
            "if" => Node::If(b),
            "with" => Node::With(b),
            _ => Node::Range(b),
        })
    }

    /// A pipeline up to `}}` (consumed) or `)` (not consumed).
    fn pipeline(&mut self, ctx: &str, range: bool) -> Result<Pipe, ParseError> {
        self.skip_space();
        let mut decl = Vec::new();
        let mut assign = false;
        // Declarations: `$x :=`, `$x =`, `$i, $e :=` (range only).
        let save = self.pos;
        if let Some(Tok::Var(v)) = self.peek().cloned() {
            self.pos += 1;
            self.skip_space();
            match self.peek() {
                Some(Tok::Decl) | Some(Tok::Assign) => {
                    assign = self.peek() == Some(&Tok::Assign);
                    self.pos += 1;
                    decl.push(v);
                }
                Some(Tok::Comma) if range => {
                    self.pos += 1;
                    self.skip_space();
                    let Some(Tok::Var(v2)) = self.next() else {
                        return Err(ParseError::new("range can only initialize variables"));
                    };
                    self.skip_space();
                    match self.next() {
                        Some(Tok::Decl) => {}
                        Some(Tok::Assign) => assign = true,
                        _ => return Err(ParseError::new("range can only initialize variables")),
                    }
                    decl.push(v);
                    decl.push(v2);
                }
                Some(Tok::Comma) => {
                    return Err(ParseError::new(format!("too many declarations in {ctx}")));
                }
                _ => self.pos = save,
            }
        }
        for v in &decl {
            if assign {
                if !self.vars.contains(v) {
                    return Err(ParseError::new(format!("undefined variable {v:?}")));
                }
            } else {
                self.vars.push(v.clone());
            }
        }
        let mut cmds = Vec::new();
        loop {
            self.skip_space();
            match self.peek() {
                Some(Tok::Close) => {
                    self.pos += 1;
                    break;
                }
                Some(Tok::RParen) => break,
                None => return Err(ParseError::new("unclosed action")),
                _ => {}
            }
            if !cmds.is_empty() {
                match self.next() {
                    Some(Tok::Pipe) => {}
                    t => return Err(ParseError::new(format!("unexpected {t:?} in {ctx}"))),
                }
            }
            cmds.push(self.command()?);
        }
        if cmds.is_empty() {
            return Err(ParseError::new(format!("missing value for {ctx}")));
        }
        for (i, c) in cmds.iter().enumerate().skip(1) {
            if !matches!(
                c.args.first(),
                Some(Arg::Func(_) | Arg::Field(_) | Arg::Var(..) | Arg::Chain(..))
            ) {
                return Err(ParseError::new(format!(
                    "non executable command in pipeline stage {}",
                    i + 1
                )));
            }
        }
        Ok(Pipe { decl, assign, cmds })
    }

    fn command(&mut self) -> Result<Cmd, ParseError> {
        let mut args = Vec::new();
        loop {
            self.skip_space();
            match self.peek() {
                None | Some(Tok::Close | Tok::RParen | Tok::Pipe) => break,
                _ => {}
            }
            args.push(self.operand()?);
            match self.peek() {
                None | Some(Tok::Space | Tok::Close | Tok::RParen | Tok::Pipe) => {}
                Some(t) => return Err(ParseError::new(format!("unexpected {t:?} in operand"))),
            }
        }
        match args.first() {
            None => Err(ParseError::new("empty command")),
            Some(Arg::Nil) => Err(ParseError::new("nil is not a command")),
            Some(_) => Ok(Cmd { args }),
        }
    }

    fn fields(&mut self) -> Vec<String> {
        let mut f = Vec::new();
        while let Some(Tok::Field(name)) = self.peek() {
            f.push(name.clone());
            self.pos += 1;
        }
        f
    }

    fn operand(&mut self) -> Result<Arg, ParseError> {
        let t = self
            .next()
            .ok_or_else(|| ParseError::new("unclosed action"))?;
        let arg = match t {
            Tok::Field(name) => {
                self.pos -= 1;
                let _ = name;
                return Ok(Arg::Field(self.fields()));
            }
            Tok::Var(v) => {
                if !self.vars.contains(&v) {
                    return Err(ParseError::new(format!("undefined variable {v:?}")));
                }
                return Ok(Arg::Var(v, self.fields()));
            }
            Tok::Dot => Arg::Dot,
            Tok::LParen => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(ParseError::new("template nested too deeply"));
                }
                let p = self.pipeline("parenthesized pipeline", false)?;
                self.depth -= 1;
                if self.next() != Some(Tok::RParen) {
                    return Err(ParseError::new("unclosed left paren"));
                }
                return Ok(Arg::Chain(Box::new(p), self.fields()));
            }
            Tok::Str(s) => Arg::Str(s),
            Tok::Char(c) => Arg::Int(c),
            Tok::Num(n) => number(&n)?,
            Tok::Ident(id) => match id.as_str() {
                "true" => Arg::Bool(true),
                "false" => Arg::Bool(false),
                "nil" => Arg::Nil,
                name => Arg::Func(
                    Func::lookup(name)
                        .ok_or_else(|| ParseError::new(format!("function {name:?} not defined")))?,
                ),
            },
            t => return Err(ParseError::new(format!("unexpected {t:?} in operand"))),
        };
        if matches!(self.peek(), Some(Tok::Field(_))) {
            return Err(ParseError::new("unexpected . after term"));
        }
        Ok(arg)
    }
}

/// A number constant as Go types it when passed to a function: a float if written with a
/// fraction or exponent, an int otherwise.
fn number(s: &str) -> Result<Arg, ParseError> {
    let bad = || ParseError::new(format!("illegal number syntax: {s:?}"));
    let clean: String = s.chars().filter(|&c| c != '_').collect();
    let (neg, body) = match clean.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, clean.strip_prefix('+').unwrap_or(&clean)),
    };
    let lower = body.to_ascii_lowercase();
    let int = if let Some(h) = lower.strip_prefix("0x") {
        if h.contains(['p', '.']) {
            None
        } else {
            Some(i64::from_str_radix(h, 16))
        }
    } else if let Some(o) = lower.strip_prefix("0o") {
        Some(i64::from_str_radix(o, 8))
    } else if let Some(b) = lower.strip_prefix("0b") {
        Some(i64::from_str_radix(b, 2))
    } else if lower.contains(['.', 'e']) {
        None
    } else if lower.len() > 1 && lower.starts_with('0') {
        Some(i64::from_str_radix(&lower[1..], 8))
    } else {
        Some(lower.parse::<i64>())
    };
    match int {
        Some(Ok(v)) => Ok(Arg::Int(if neg { -v } else { v })),
        Some(Err(_)) => Err(bad()),
        None => {
            if lower.starts_with("0x") {
                return Err(ParseError::new(format!(
                    "hexadecimal floats are not supported: {s:?}"
                )));
            }
            let v: f64 = lower.parse().map_err(|_| bad())?;
            Ok(Arg::Float(if neg { -v } else { v }))
        }
    }
}
