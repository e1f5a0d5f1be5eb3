//! Executes a parsed template over a request's [`Entry`] and [`Revision`], with Go's rules: field
//! and method access on Knative's `RequestLogTemplateInput`, truthiness, variables and scopes,
//! `range`/`break`/`continue`, the predefined functions and `fmt` printing. Values borrow from
//! the entry and the template, so fields cost no allocation.

use std::borrow::Cow;
use std::cmp::Ordering;

use http::HeaderMap;

use super::ExecError;
use super::fmt::{html_escape, js_escape, print_value, query_escape, sprint, sprintf, sprintln};
use super::func::Func;
use super::parse::{Arg, Cmd, Node, Pipe, Tree};
use crate::telemetry::reqlog::{Entry, Revision, TlsState};

/// Steps (nodes walked and values computed) one render may take: Go has no bound, but a
/// sidecar must not let one config line burn a core per request (`range 1000000000`).
const MAX_STEPS: usize = 1_000_000;
/// Output one render may produce.
const MAX_OUTPUT: usize = 1 << 20;
/// Nested bodies being walked (`if`, `range`, `{{template}}` calls together): bounds the
/// recursion so a self-calling template fails instead of overflowing the stack (Go's bound on
/// template calls is 100000, on goroutine stacks that grow).
const MAX_WALK_DEPTH: usize = 200;

/// A template value.
#[derive(Clone, Debug)]
pub(crate) enum Value<'a> {
    Nil,
    /// A typed nil pointer (`.Request.TLS` on plain HTTP), named by its Go type.
    NilPtr(&'static str),
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    /// A `[]string` (header values).
    List(Vec<Value<'a>>),
    Obj(Obj<'a>),
}

/// A Go struct or map the template can look into.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Obj<'a> {
    Root(&'a Entry, &'a Revision),
    Request(&'a Entry),
    Response(&'a Entry),
    Revision(&'a Revision),
    Url(&'a Entry),
    Header(&'a Entry),
    Query(&'a str),
    Tls(&'a TlsState),
}

impl Value<'_> {
    /// The Go type name `printf` prints for a wrong verb.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::Nil => "<nil>",
            Value::NilPtr(t) => t,
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float64",
            Value::Str(_) => "string",
            Value::List(_) => "[]string",
            Value::Obj(o) => match o {
                Obj::Root(..) => "*http.RequestLogTemplateInput",
                Obj::Request(_) => "*http.Request",
                Obj::Response(_) => "*http.RequestLogResponse",
                Obj::Revision(_) => "*http.RequestLogRevision",
                Obj::Url(_) => "*url.URL",
                Obj::Header(_) => "http.Header",
                Obj::Query(_) => "url.Values",
                Obj::Tls(_) => "*tls.ConnectionState",
            },
        }
    }

    /// Go's `if`: false, 0, nil and empty are false.
    fn truth(&self) -> bool {
        match self {
            Value::Nil | Value::NilPtr(_) => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::List(l) => !l.is_empty(),
            Value::Obj(Obj::Header(e)) => e.headers.as_ref().is_some_and(|h| !h.is_empty()),
            Value::Obj(Obj::Query(q)) => !q.is_empty(),
            Value::Obj(_) => true,
        }
    }
}

fn s(v: &str) -> Value<'_> {
    Value::Str(Cow::Borrowed(v))
}

/// Go's `textproto.CanonicalMIMEHeaderKey` for a (lower-case) header name.
fn canonical(name: &str) -> String {
    let mut up = true;
    name.chars()
        .map(|c| {
            let o = if up {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            up = c == '-';
            o
        })
        .collect()
}

fn header_values<'a>(h: Option<&'a HeaderMap>, name: &str) -> Vec<Value<'a>> {
    let Some(h) = h else { return Vec::new() };
    h.get_all(name.to_ascii_lowercase().as_str())
        .iter()
        .map(|v| Value::Str(String::from_utf8_lossy(v.as_bytes())))
        .collect()
}

/// The header as a sorted Go map: canonical name and values.
fn header_entries(h: Option<&HeaderMap>) -> Vec<(String, Vec<Value<'_>>)> {
    let Some(h) = h else { return Vec::new() };
    let mut keys: Vec<(String, Vec<Value<'_>>)> = h
        .keys()
        .map(|k| (canonical(k.as_str()), header_values(Some(h), k.as_str())))
        .collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    keys
}

fn unescape(s: &str, plus: bool) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// `url.ParseQuery` as `URL.Query()` uses it: pairs in order, undecodable ones dropped.
fn query_pairs(raw: &str) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    raw.split('&')
        .filter(|p| !p.is_empty() && !p.contains(';'))
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k, true), unescape(v, true))
        })
        .collect()
}

fn query_get<'a>(raw: &'a str, key: &str) -> Vec<Value<'a>> {
    query_pairs(raw)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| Value::Str(v))
        .collect()
}

/// The parts of the request URI as Go's server parses it into `*url.URL`.
struct UrlParts<'a> {
    scheme: &'a str,
    host: &'a str,
    path: &'a str,
    query: &'a str,
    has_query: bool,
}

fn url_parts(uri: &str) -> UrlParts<'_> {
    let (rest, query, has_query) = match uri.split_once('?') {
        Some((a, q)) => (a, q, true),
        None => (uri, "", false),
    };
    let (scheme, host, path) = match rest.split_once("://") {
        Some((sch, after)) if !sch.contains('/') => {
            let i = after.find('/').unwrap_or(after.len());
            (sch, &after[..i], &after[i..])
        }
        _ => ("", "", rest),
    };
    UrlParts {
        scheme,
        host,
        path,
        query,
        has_query,
    }
}

fn split_host_port(host: &str) -> (&str, &str) {
    if let Some((h, p)) = host.strip_prefix('[').and_then(|r| r.split_once(']')) {
        return (h, p.strip_prefix(':').unwrap_or(""));
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, p),
        _ => (host, ""),
    }
}

fn proto_version(proto: &str) -> (i64, i64) {
    match proto {
        "HTTP/2.0" => (2, 0),
        "HTTP/1.0" => (1, 0),
        _ => (1, 1),
    }
}

fn int_arg(v: &Value<'_>) -> Result<i64, ExecError> {
    match v {
        Value::Int(i) => Ok(*i),
        v => Err(ExecError::new(format!(
            "expected integer; found {}",
            v.type_name()
        ))),
    }
}

fn str_arg<'v>(v: &'v Value<'_>) -> Result<&'v str, ExecError> {
    match v {
        Value::Str(s) => Ok(s),
        v => Err(ExecError::new(format!(
            "wrong type for value; expected string; got {}",
            v.type_name()
        ))),
    }
}

fn want_args(name: &str, args: &[Value<'_>], n: usize) -> Result<(), ExecError> {
    if args.len() == n {
        Ok(())
    } else {
        Err(ExecError::new(format!(
            "wrong number of args for {name}: want {n} got {}",
            args.len()
        )))
    }
}

impl<'a> Obj<'a> {
    /// Field or method `name` with `args` (Go: a method may take arguments, a field may not).
    fn field(self, name: &str, args: Vec<Value<'a>>) -> Result<Value<'a>, ExecError> {
        let niladic = |v: Value<'a>| -> Result<Value<'a>, ExecError> {
            if args.is_empty() {
                Ok(v)
            } else {
                Err(ExecError::new(format!(
                    "{name} has arguments but cannot be invoked as function"
                )))
            }
        };
        let missing = || {
            ExecError::new(format!(
                "can't evaluate field {name} in type {}",
                Value::Obj(self).type_name()
            ))
        };
        match self {
            Obj::Root(e, r) => niladic(match name {
                "Request" => Value::Obj(Obj::Request(e)),
                "Response" => Value::Obj(Obj::Response(e)),
                "Revision" => Value::Obj(Obj::Revision(r)),
                "TraceID" => s(&e.trace_id),
                _ => return Err(missing()),
            }),
            Obj::Request(e) => {
                if name == "ProtoAtLeast" {
                    want_args(name, &args, 2)?;
                    let (maj, min) = proto_version(e.proto);
                    let (a, b) = (int_arg(&args[0])?, int_arg(&args[1])?);
                    return Ok(Value::Bool(maj > a || (maj == a && min >= b)));
                }
                niladic(match name {
                    "Method" => s(&e.method),
                    "URL" => Value::Obj(Obj::Url(e)),
                    "Proto" => s(e.proto),
                    "ProtoMajor" => Value::Int(proto_version(e.proto).0),
                    "ProtoMinor" => Value::Int(proto_version(e.proto).1),
                    "Header" | "Trailer" => Value::Obj(Obj::Header(e)),
                    "ContentLength" => Value::Int(e.content_length),
                    "TransferEncoding" => Value::List(Vec::new()),
                    "Close" => Value::Bool(false),
                    "Host" => s(&e.host),
                    "Form" | "PostForm" => Value::Obj(Obj::Query("")),
                    "MultipartForm" => Value::NilPtr("*multipart.Form"),
                    "RemoteAddr" => s(&e.remote_addr),
                    "RequestURI" => s(&e.request_uri),
                    "TLS" => match &e.tls {
                        Some(t) => Value::Obj(Obj::Tls(t)),
                        None => Value::NilPtr("*tls.ConnectionState"),
                    },
                    "Pattern" => s(""),
                    "UserAgent" => s(&e.user_agent),
                    "Referer" => s(&e.referer),
                    _ => return Err(missing()),
                })
            }
            Obj::Response(e) => niladic(match name {
                "Code" => Value::Int(i64::from(e.code)),
                "Size" => Value::Int(i64::try_from(e.size).unwrap_or(i64::MAX)),
                "Latency" => Value::Float(e.latency),
                _ => return Err(missing()),
            }),
            Obj::Revision(r) => niladic(match name {
                "Name" => s(&r.name),
                "Namespace" => s(&r.namespace),
                "Service" => s(&r.service),
                "Configuration" => s(&r.configuration),
                "PodName" => s(&r.pod_name),
                "PodIP" => s(&r.pod_ip),
                _ => return Err(missing()),
            }),
            Obj::Url(e) => {
                let u = url_parts(&e.request_uri);
                niladic(match name {
                    "Scheme" => s(u.scheme),
                    "Opaque" | "RawFragment" | "Fragment" => s(""),
                    "User" => Value::NilPtr("*url.Userinfo"),
                    "Host" => s(u.host),
                    "Path" => Value::Str(unescape(u.path, false)),
                    "RawPath" => s(if unescape(u.path, false) == u.path {
                        ""
                    } else {
                        u.path
                    }),
                    "EscapedPath" => s(u.path),
                    "RawQuery" => s(u.query),
                    "ForceQuery" => Value::Bool(u.has_query && u.query.is_empty()),
                    "OmitHost" => Value::Bool(false),
                    "String" | "Redacted" => s(&e.request_uri),
                    "RequestURI" => {
                        let end = e.request_uri.len();
                        let start = end - u.path.len() - u.query.len() - usize::from(u.has_query);
                        s(&e.request_uri[start..])
                    }
                    "Hostname" => s(split_host_port(u.host).0),
                    "Port" => s(split_host_port(u.host).1),
                    "IsAbs" => Value::Bool(!u.scheme.is_empty()),
                    "Query" => Value::Obj(Obj::Query(u.query)),
                    _ => return Err(missing()),
                })
            }
            Obj::Header(e) => match name {
                "Get" => {
                    want_args(name, &args, 1)?;
                    let k = str_arg(&args[0])?;
                    Ok(header_values(e.headers.as_ref(), k)
                        .into_iter()
                        .next()
                        .unwrap_or_else(|| s("")))
                }
                "Values" => {
                    want_args(name, &args, 1)?;
                    Ok(Value::List(header_values(
                        e.headers.as_ref(),
                        str_arg(&args[0])?,
                    )))
                }
                key => niladic(self.index_key(key)),
            },
            Obj::Query(q) => match name {
                "Get" => {
                    want_args(name, &args, 1)?;
                    let k = str_arg(&args[0])?.to_owned();
                    Ok(query_get(q, &k).into_iter().next().unwrap_or_else(|| s("")))
                }
                "Has" => {
                    want_args(name, &args, 1)?;
                    let k = str_arg(&args[0])?.to_owned();
                    Ok(Value::Bool(!query_get(q, &k).is_empty()))
                }
                key => niladic(self.index_key(key)),
            },
            Obj::Tls(t) => niladic(match name {
                "Version" => Value::Int(i64::from(t.version)),
                "HandshakeComplete" => Value::Bool(true),
                "DidResume" => Value::Bool(false),
                "CipherSuite" => Value::Int(i64::from(t.cipher_suite)),
                "NegotiatedProtocol" => s(&t.alpn),
                "ServerName" => s(&t.server_name),
                _ => return Err(missing()),
            }),
        }
    }

    /// A map index (`index .Request.Header "Accept"`): Go's maps match the key exactly, and
    /// `http.Header` keys are canonical.
    fn index_key(self, key: &str) -> Value<'a> {
        match self {
            Obj::Header(e) if canonical(key) == key => {
                Value::List(header_values(e.headers.as_ref(), key))
            }
            Obj::Query(q) => Value::List(query_get(q, key)),
            _ => Value::List(Vec::new()),
        }
    }

    fn is_map(self) -> bool {
        matches!(self, Obj::Header(_) | Obj::Query(_))
    }

    /// Key/value pairs of a map, sorted by key as Go prints and ranges them.
    fn entries(self) -> Vec<(Value<'a>, Value<'a>)> {
        match self {
            Obj::Header(e) => header_entries(e.headers.as_ref())
                .into_iter()
                .map(|(k, v)| (Value::Str(Cow::Owned(k)), Value::List(v)))
                .collect(),
            Obj::Query(q) => {
                let mut keys: Vec<Cow<'a, str>> =
                    query_pairs(q).into_iter().map(|(k, _)| k).collect();
                keys.sort();
                keys.dedup();
                keys.into_iter()
                    .map(|k| {
                        let v = Value::List(query_get(q, &k));
                        (Value::Str(k), v)
                    })
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// `%v`. Structs print their fields in Go's order (for `*http.Request`, only the leading
    /// fields a log could want; Go prints internal pointers after them).
    pub(crate) fn print(self, out: &mut String) {
        let mut fields = |vals: &[Value<'_>]| {
            out.push('{');
            for (i, v) in vals.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                print_value(out, v);
            }
            out.push('}');
        };
        match self {
            Obj::Root(e, r) => fields(&[
                Value::Obj(Obj::Request(e)),
                Value::Obj(Obj::Response(e)),
                Value::Obj(Obj::Revision(r)),
                s(&e.trace_id),
            ]),
            Obj::Request(e) => {
                let (maj, min) = proto_version(e.proto);
                fields(&[
                    s(&e.method),
                    Value::Obj(Obj::Url(e)),
                    s(e.proto),
                    Value::Int(maj),
                    Value::Int(min),
                    Value::Obj(Obj::Header(e)),
                    Value::Int(e.content_length),
                    s(&e.host),
                    s(&e.remote_addr),
                    s(&e.request_uri),
                ]);
            }
            Obj::Response(e) => fields(&[
                Value::Int(i64::from(e.code)),
                Value::Int(i64::try_from(e.size).unwrap_or(i64::MAX)),
                Value::Float(e.latency),
            ]),
            Obj::Revision(r) => fields(&[
                s(&r.name),
                s(&r.namespace),
                s(&r.service),
                s(&r.configuration),
                s(&r.pod_name),
                s(&r.pod_ip),
            ]),
            Obj::Url(e) => out.push_str(&e.request_uri),
            Obj::Tls(t) => {
                use std::fmt::Write as _;
                let _ = write!(out, "{t}");
            }
            Obj::Header(_) | Obj::Query(_) => {
                out.push_str("map[");
                for (i, (k, v)) in self.entries().iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    print_value(out, k);
                    out.push(':');
                    print_value(out, v);
                }
                out.push(']');
            }
        }
    }
}

enum Flow {
    Normal,
    Break,
    Continue,
}

/// One render.
pub(super) struct Exec<'a> {
    tree: &'a Tree,
    vars: Vec<(&'a str, Value<'a>)>,
    steps: usize,
    depth: usize,
}

impl<'a> Exec<'a> {
    /// Renders `tree` over the entry into `out`.
    pub(super) fn run(
        tree: &'a Tree,
        e: &'a Entry,
        r: &'a Revision,
        out: &mut String,
    ) -> Result<(), ExecError> {
        let root = Value::Obj(Obj::Root(e, r));
        let mut x = Exec {
            tree,
            vars: vec![("$", root.clone())],
            steps: 0,
            depth: 0,
        };
        x.walk(&root, &tree.main, out).map(|_| ())
    }

    fn step(&mut self, out: &str) -> Result<(), ExecError> {
        self.steps += 1;
        if self.steps > MAX_STEPS || out.len() > MAX_OUTPUT {
            return Err(ExecError::new("request log template exceeds its budget"));
        }
        Ok(())
    }

    fn walk(
        &mut self,
        dot: &Value<'a>,
        nodes: &'a [Node],
        out: &mut String,
    ) -> Result<Flow, ExecError> {
        if self.depth >= MAX_WALK_DEPTH {
            return Err(ExecError::new("exceeded maximum template depth"));
        }
        self.depth += 1;
        let flow = self.walk_nodes(dot, nodes, out);
        self.depth -= 1;
        flow
    }

    fn walk_nodes(
        &mut self,
        dot: &Value<'a>,
        nodes: &'a [Node],
        out: &mut String,
    ) -> Result<Flow, ExecError> {
        for n in nodes {
            self.step(out)?;
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Action(p) => {
                    let v = self.pipe(dot, p, true, out)?;
                    if p.decl.is_empty() {
                        print_value(out, &v);
                    }
                }
                Node::If(b) | Node::With(b) => {
                    let mark = self.vars.len();
                    let v = self.pipe(dot, &b.pipe, true, out)?;
                    let with = matches!(n, Node::With(_));
                    let flow = if v.truth() {
                        if with {
                            self.walk(&v, &b.then, out)?
                        } else {
                            self.walk(dot, &b.then, out)?
                        }
                    } else {
                        self.walk(dot, &b.els, out)?
                    };
                    self.vars.truncate(mark);
                    if !matches!(flow, Flow::Normal) {
                        return Ok(flow);
                    }
                }
                Node::Range(b) => {
                    let v = self.pipe(dot, &b.pipe, false, out)?;
                    let items = self.range_items(v)?;
                    if items.is_empty() {
                        let flow = self.walk(dot, &b.els, out)?;
                        if !matches!(flow, Flow::Normal) {
                            return Ok(flow);
                        }
                        continue;
                    }
                    for (k, elem) in items {
                        self.step(out)?;
                        let mark = self.vars.len();
                        match b.pipe.decl.as_slice() {
                            [] => {}
                            [one] => self.set_var(one, elem.clone(), b.pipe.assign),
                            [a, c, ..] => {
                                self.set_var(a, k, b.pipe.assign);
                                self.set_var(c, elem.clone(), b.pipe.assign);
                            }
                        }
                        let flow = self.walk(&elem, &b.then, out)?;
                        self.vars.truncate(mark);
                        if matches!(flow, Flow::Break) {
                            break;
                        }
                    }
                }
                Node::Break => return Ok(Flow::Break),
                Node::Continue => return Ok(Flow::Continue),
                Node::Template(name, pipe) => {
                    let body = self
                        .tree
                        .defs
                        .get(name)
                        .ok_or_else(|| ExecError::new(format!("no such template {name:?}")))?;
                    let dot = match pipe {
                        Some(p) => self.pipe(dot, p, true, out)?,
                        None => Value::Nil,
                    };
                    let vars = std::mem::replace(&mut self.vars, vec![("$", dot.clone())]);
                    let res = self.walk(&dot, body, out);
                    self.vars = vars;
                    res?;
                }
            }
        }
        Ok(Flow::Normal)
    }

    fn range_items(&self, v: Value<'a>) -> Result<Vec<(Value<'a>, Value<'a>)>, ExecError> {
        Ok(match v {
            Value::List(l) => l
                .into_iter()
                .enumerate()
                .map(|(i, e)| (Value::Int(i as i64), e))
                .collect(),
            Value::Obj(o) if o.is_map() => o.entries(),
            Value::Int(n) => {
                if usize::try_from(n).unwrap_or(0) > MAX_STEPS {
                    return Err(ExecError::new("request log template exceeds its budget"));
                }
                (0..n.max(0))
                    .map(|i| (Value::Int(i), Value::Int(i)))
                    .collect()
            }
            Value::Nil => Vec::new(),
            v => {
                return Err(ExecError::new(format!(
                    "range can't iterate over {}",
                    v.type_name()
                )));
            }
        })
    }

    fn set_var(&mut self, name: &'a str, v: Value<'a>, assign: bool) {
        if assign && let Some(slot) = self.vars.iter_mut().rev().find(|(n, _)| *n == name) {
            slot.1 = v;
            return;
        }
        self.vars.push((name, v));
    }

    fn var(&self, name: &str) -> Result<Value<'a>, ExecError> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| ExecError::new(format!("undefined variable: {name}")))
    }

    /// Runs a pipeline; with `declare`, binds its variables (range binds per element instead).
    fn pipe(
        &mut self,
        dot: &Value<'a>,
        p: &'a Pipe,
        declare: bool,
        out: &str,
    ) -> Result<Value<'a>, ExecError> {
        let mut last: Option<Value<'a>> = None;
        for c in &p.cmds {
            self.step(out)?;
            last = Some(self.cmd(dot, c, last, out)?);
        }
        let v = last.unwrap_or(Value::Nil);
        if declare && let Some(name) = p.decl.first() {
            self.set_var(name, v.clone(), p.assign);
        }
        Ok(v)
    }

    fn cmd(
        &mut self,
        dot: &Value<'a>,
        c: &'a Cmd,
        fin: Option<Value<'a>>,
        out: &str,
    ) -> Result<Value<'a>, ExecError> {
        let rest = &c.args[1..];
        let not_func = |v: Value<'a>| {
            if rest.is_empty() && fin.is_none() {
                Ok(v)
            } else {
                Err(ExecError::new("can't give argument to non-function"))
            }
        };
        match &c.args[0] {
            Arg::Field(names) => self.chain(dot, dot.clone(), names, rest, fin, out),
            Arg::Var(name, names) if !names.is_empty() => {
                let v = self.var(name)?;
                self.chain(dot, v, names, rest, fin, out)
            }
            Arg::Chain(p, names) if !names.is_empty() => {
                let v = self.pipe(dot, p, false, out)?;
                self.chain(dot, v, names, rest, fin, out)
            }
            Arg::Func(f) => self.call(dot, *f, rest, fin, out),
            a => {
                let v = self.arg(dot, a, out)?;
                not_func(v)
            }
        }
    }

    fn chain(
        &mut self,
        dot: &Value<'a>,
        mut recv: Value<'a>,
        names: &'a [String],
        args: &'a [Arg],
        fin: Option<Value<'a>>,
        out: &str,
    ) -> Result<Value<'a>, ExecError> {
        let mut fin = fin;
        for (i, name) in names.iter().enumerate() {
            let argv = if i + 1 == names.len() {
                let mut v = Vec::with_capacity(args.len() + 1);
                for a in args {
                    v.push(self.arg(dot, a, out)?);
                }
                v.extend(fin.take());
                v
            } else {
                Vec::new()
            };
            recv = match recv {
                Value::Obj(o) => o.field(name, argv)?,
                Value::NilPtr(t) => {
                    return Err(ExecError::new(format!("nil pointer evaluating {t}.{name}")));
                }
                v => {
                    return Err(ExecError::new(format!(
                        "can't evaluate field {name} in type {}",
                        v.type_name()
                    )));
                }
            };
        }
        Ok(recv)
    }

    fn arg(&mut self, dot: &Value<'a>, a: &'a Arg, out: &str) -> Result<Value<'a>, ExecError> {
        Ok(match a {
            Arg::Dot => dot.clone(),
            Arg::Nil => Value::Nil,
            Arg::Bool(b) => Value::Bool(*b),
            Arg::Int(i) => Value::Int(*i),
            Arg::Float(f) => Value::Float(*f),
            Arg::Str(v) => s(v),
            Arg::Field(names) => self.chain(dot, dot.clone(), names, &[], None, out)?,
            Arg::Var(name, names) => {
                let v = self.var(name)?;
                self.chain(dot, v, names, &[], None, out)?
            }
            Arg::Func(f) => self.call(dot, *f, &[], None, out)?,
            Arg::Chain(p, names) => {
                let v = self.pipe(dot, p, false, out)?;
                self.chain(dot, v, names, &[], None, out)?
            }
        })
    }

    fn call(
        &mut self,
        dot: &Value<'a>,
        f: Func,
        args: &'a [Arg],
        fin: Option<Value<'a>>,
        out: &str,
    ) -> Result<Value<'a>, ExecError> {
        // `and`/`or` stop at the first deciding operand, as Go's do since 1.18.
        if matches!(f, Func::And | Func::Or) {
            let n = args.len() + usize::from(fin.is_some());
            if n == 0 {
                return Err(ExecError::new(
                    "wrong number of args: want at least 1 got 0",
                ));
            }
            let mut fin = fin;
            let mut last = Value::Nil;
            for i in 0..n {
                last = match args.get(i) {
                    Some(a) => self.arg(dot, a, out)?,
                    None => fin.take().unwrap_or(Value::Nil),
                };
                if last.truth() == matches!(f, Func::Or) {
                    return Ok(last);
                }
            }
            return Ok(last);
        }
        let mut v = Vec::with_capacity(args.len() + 1);
        for a in args {
            v.push(self.arg(dot, a, out)?);
        }
        v.extend(fin);
        let mut buf = String::new();
        Ok(match f {
            Func::And | Func::Or => Value::Nil,
            Func::Not => {
                want_args("not", &v, 1)?;
                Value::Bool(!v[0].truth())
            }
            Func::Len => {
                want_args("len", &v, 1)?;
                Value::Int(match &v[0] {
                    Value::Str(s) => s.len() as i64,
                    Value::List(l) => l.len() as i64,
                    Value::Obj(o) if o.is_map() => o.entries().len() as i64,
                    x => {
                        return Err(ExecError::new(format!(
                            "error calling len: len of type {}",
                            x.type_name()
                        )));
                    }
                })
            }
            Func::Index => {
                let mut it = v.into_iter();
                let mut item = it
                    .next()
                    .ok_or_else(|| ExecError::new("wrong number of args for index"))?;
                for ix in it {
                    item = match (item, ix) {
                        (Value::Obj(o), Value::Str(k)) if o.is_map() => o.index_key(&k),
                        (Value::List(l), Value::Int(i)) => usize::try_from(i)
                            .ok()
                            .and_then(|i| l.into_iter().nth(i))
                            .ok_or_else(|| {
                                ExecError::new(format!(
                                    "error calling index: index out of range: {i}"
                                ))
                            })?,
                        (Value::Str(s), Value::Int(i)) => usize::try_from(i)
                            .ok()
                            .and_then(|i| s.as_bytes().get(i).copied())
                            .map(|b| Value::Int(i64::from(b)))
                            .ok_or_else(|| {
                                ExecError::new(format!(
                                    "error calling index: index out of range: {i}"
                                ))
                            })?,
                        (item, _) => {
                            return Err(ExecError::new(format!(
                                "error calling index: can't index item of type {}",
                                item.type_name()
                            )));
                        }
                    };
                }
                item
            }
            Func::Slice => {
                let (item, ix) = v
                    .split_first()
                    .ok_or_else(|| ExecError::new("wrong number of args for slice"))?;
                let len = match item {
                    Value::Str(s) => s.len(),
                    Value::List(l) => l.len(),
                    x => {
                        return Err(ExecError::new(format!(
                            "error calling slice: can't slice item of type {}",
                            x.type_name()
                        )));
                    }
                };
                let mut b = [0, len];
                if ix.len() > 2 {
                    return Err(ExecError::new(
                        "error calling slice: too many slice indexes",
                    ));
                }
                for (i, x) in ix.iter().enumerate() {
                    b[i] = usize::try_from(int_arg(x)?)
                        .map_err(|_| ExecError::new("error calling slice: index out of range"))?;
                }
                if b[0] > b[1] || b[1] > len {
                    return Err(ExecError::new("error calling slice: index out of range"));
                }
                match item {
                    Value::Str(st) => Value::Str(Cow::Owned(
                        String::from_utf8_lossy(&st.as_bytes()[b[0]..b[1]]).into_owned(),
                    )),
                    Value::List(l) => Value::List(l[b[0]..b[1]].to_vec()),
                    _ => Value::Nil,
                }
            }
            Func::Print => {
                sprint(&mut buf, &v);
                Value::Str(Cow::Owned(buf))
            }
            Func::Println => {
                sprintln(&mut buf, &v);
                Value::Str(Cow::Owned(buf))
            }
            Func::Printf => {
                let (format, rest) = v
                    .split_first()
                    .ok_or_else(|| ExecError::new("wrong number of args for printf"))?;
                sprintf(&mut buf, str_arg(format)?, rest);
                Value::Str(Cow::Owned(buf))
            }
            Func::Html | Func::Js | Func::Urlquery => {
                let text: Cow<'_, str> = match v.as_slice() {
                    [Value::Str(one)] => Cow::Borrowed(one),
                    _ => {
                        let mut t = String::new();
                        sprint(&mut t, &v);
                        Cow::Owned(t)
                    }
                };
                match f {
                    Func::Html => html_escape(&mut buf, &text),
                    Func::Js => js_escape(&mut buf, &text),
                    _ => query_escape(&mut buf, &text),
                }
                Value::Str(Cow::Owned(buf))
            }
            Func::Eq => {
                let (first, rest) = v
                    .split_first()
                    .ok_or_else(|| ExecError::new("missing argument for comparison"))?;
                if rest.is_empty() {
                    return Err(ExecError::new("missing argument for comparison"));
                }
                let mut any = false;
                for r in rest {
                    if equal(first, r)? {
                        any = true;
                        break;
                    }
                }
                Value::Bool(any)
            }
            Func::Ne => {
                want_args("ne", &v, 2)?;
                Value::Bool(!equal(&v[0], &v[1])?)
            }
            Func::Lt | Func::Le | Func::Gt | Func::Ge => {
                want_args("comparison", &v, 2)?;
                let o = order(&v[0], &v[1])?;
                Value::Bool(match f {
                    Func::Lt => o == Ordering::Less,
                    Func::Le => o != Ordering::Greater,
                    Func::Gt => o == Ordering::Greater,
                    _ => o != Ordering::Less,
                })
            }
            Func::Call => {
                return Err(ExecError::new("error calling call: non-function"));
            }
        })
    }
}

fn incompatible() -> ExecError {
    ExecError::new("incompatible types for comparison")
}

/// Go's `eq` on two values: basic kinds of the same kind compare, nil compares to nil.
fn equal(a: &Value<'_>, b: &Value<'_>) -> Result<bool, ExecError> {
    Ok(match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Float(x), Value::Float(y)) => x == y,
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Nil | Value::NilPtr(_), Value::Nil | Value::NilPtr(_)) => true,
        (Value::Nil, Value::Obj(_)) | (Value::Obj(_), Value::Nil) => false,
        (Value::List(_), _) | (_, Value::List(_)) => {
            return Err(ExecError::new("non-comparable type"));
        }
        _ => return Err(incompatible()),
    })
}

fn order(a: &Value<'_>, b: &Value<'_>) -> Result<Ordering, ExecError> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Ok(x.cmp(y)),
        (Value::Float(x), Value::Float(y)) => Ok(x.partial_cmp(y).unwrap_or(Ordering::Equal)),
        (Value::Str(x), Value::Str(y)) => Ok(x.as_bytes().cmp(y.as_bytes())),
        (Value::Bool(_), Value::Bool(_)) | (Value::Obj(_) | Value::Nil, _) => {
            Err(ExecError::new("invalid type for comparison"))
        }
        _ => Err(incompatible()),
    }
}
