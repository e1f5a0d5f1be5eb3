//! Go's `text/template` as Knative's request logs use it (`logging.request-log-template`): our
//! own small engine over Knative's `RequestLogTemplateInput` (`.Request`, `.Response`,
//! `.Revision`, `.TraceID`), parsed once at start and rendered per request without building a
//! value tree. Why not a crate: `docs/dependencies.md`.
//!
//! # Layout
//! - `lex`: tokens, trim markers and comments.
//! - `parse`: the tree, with Go's parse-time checks.
//! - `exec`: values, fields and methods of the request, the predefined functions.
//! - `fmt`: Go's `%v`, `printf` and the escapers.

mod exec;
mod fmt;
mod func;
mod lex;
mod parse;

pub use self::fmt::go_float;

use self::parse::{Arg, Node, Pipe, Tree};
use crate::telemetry::reqlog::{Entry, Revision};

/// A template Go's parser would reject too (upstream: the queue-proxy serves without request
/// logs, the activator keeps its previous template).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("template: requestLog: {0}")]
pub struct TemplateError(String);

impl TemplateError {
    fn new(m: impl Into<String>) -> Self {
        Self(m.into())
    }
}

pub(crate) use TemplateError as ParseError;

/// A render failed (Go: `Execute` returned an error): the line becomes Knative's fallback.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("template: requestLog: executing: {0}")]
pub struct ExecError(String);

impl ExecError {
    fn new(m: impl Into<String>) -> Self {
        Self(m.into())
    }
}

/// A parsed request-log template.
#[derive(Clone, Debug)]
pub struct Template {
    tree: Tree,
    headers: bool,
}

impl Template {
    /// Parses `src` as Knative does: a newline is appended when missing, then Go's grammar.
    ///
    /// # Errors
    /// What Go's parser rejects (unknown functions or variables, unbalanced actions, bad
    /// literals), and nesting deeper than 100.
    pub fn parse(src: &str) -> Result<Self, TemplateError> {
        let tree = if src.ends_with('\n') {
            parse::parse(src)?
        } else {
            parse::parse(&format!("{src}\n"))?
        };
        let headers =
            nodes_need_headers(&tree.main) || tree.defs.values().any(|d| nodes_need_headers(d));
        Ok(Self { tree, headers })
    }

    /// Whether the template reads request headers beyond User-Agent and Referer (then the
    /// entry carries a copy of them).
    pub fn needs_headers(&self) -> bool {
        self.headers
    }

    /// Renders `e` into `out`.
    ///
    /// # Errors
    /// What Go's `Execute` fails on (a missing field, a bad comparison, an index out of range).
    pub fn render_into(
        &self,
        out: &mut String,
        e: &Entry,
        rev: &Revision,
    ) -> Result<(), ExecError> {
        exec::Exec::run(&self.tree, e, rev, out)
    }

    /// One log line. A render that fails gives Knative's fallback line instead
    /// (`pkg/http/request_log.go`: method, code, latency and URL).
    pub fn render(&self, e: &Entry, rev: &Revision) -> String {
        let mut out = String::with_capacity(256);
        if self.render_into(&mut out, e, rev).is_err() {
            out.clear();
            out.push_str("Invalid request log template: method: ");
            out.push_str(&e.method);
            out.push_str(", response code: ");
            out.push_str(&e.code.to_string());
            out.push_str(", latency: ");
            out.push_str(&go_float(e.latency));
            out.push_str(", url: ");
            out.push_str(&e.request_uri);
            out.push('\n');
        }
        out
    }
}

fn path_needs_headers(names: &[String]) -> bool {
    names.iter().any(|n| n == "Header" || n == "Trailer") || names == ["Request"]
}

fn pipe_needs_headers(p: &Pipe) -> bool {
    p.cmds.iter().flat_map(|c| &c.args).any(|a| match a {
        Arg::Field(n) => path_needs_headers(n),
        Arg::Var(_, n) => n.is_empty() || path_needs_headers(n),
        Arg::Chain(p, n) => pipe_needs_headers(p) || path_needs_headers(n),
        _ => false,
    })
}

fn nodes_need_headers(nodes: &[Node]) -> bool {
    nodes.iter().any(|n| match n {
        Node::Action(p) => pipe_needs_headers(p),
        Node::If(b) | Node::With(b) | Node::Range(b) => {
            pipe_needs_headers(&b.pipe) || nodes_need_headers(&b.then) || nodes_need_headers(&b.els)
        }
        Node::Template(_, Some(p)) => pipe_needs_headers(p),
        _ => false,
    })
}

#[cfg(test)]
mod tests;
