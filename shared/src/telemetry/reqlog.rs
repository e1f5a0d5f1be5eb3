//! Request logs (`queue-proxy.md` §7.6, `activator.md` §8.6): Knative's Go `text/template` over
//! `{Request, Response, Revision, TraceID}`, reduced to what templates use in practice: plain
//! text plus `{{.Field.Path}}` and `{{js .Field.Path}}` actions over the fields below. Any other
//! action is rejected at start-up (Knative: an invalid template is a constructor error).

use std::fmt::Write as _;

/// Knative's stock `logging.request-log-template` (config-observability).
pub const DEFAULT_TEMPLATE: &str = r#"{"httpRequest": {"requestMethod": "{{.Request.Method}}", "requestUrl": "{{js .Request.RequestURI}}", "requestSize": "{{.Request.ContentLength}}", "status": {{.Response.Code}}, "responseSize": "{{.Response.Size}}", "userAgent": "{{js .Request.UserAgent}}", "remoteIp": "{{js .Request.RemoteAddr}}", "serverIp": "{{.Revision.PodIP}}", "referer": "{{js .Request.Referer}}", "latency": "{{.Response.Latency}}s", "protocol": "{{.Request.Proto}}"}, "traceId": "{{.TraceID}}"}"#;

/// Fields a template may reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Method,
    RequestUri,
    Url,
    Proto,
    Host,
    RemoteAddr,
    ContentLength,
    UserAgent,
    Referer,
    Tls,
    Code,
    Size,
    Latency,
    RevName,
    RevNamespace,
    RevService,
    RevConfiguration,
    RevPodName,
    RevPodIp,
    TraceId,
}

impl Field {
    fn parse(path: &str) -> Option<Self> {
        Some(match path {
            ".Request.Method" => Self::Method,
            ".Request.RequestURI" => Self::RequestUri,
            ".Request.URL" => Self::Url,
            ".Request.Proto" => Self::Proto,
            ".Request.Host" => Self::Host,
            ".Request.RemoteAddr" => Self::RemoteAddr,
            ".Request.ContentLength" => Self::ContentLength,
            ".Request.UserAgent" => Self::UserAgent,
            ".Request.Referer" => Self::Referer,
            ".Request.TLS" => Self::Tls,
            ".Response.Code" => Self::Code,
            ".Response.Size" => Self::Size,
            ".Response.Latency" => Self::Latency,
            ".Revision.Name" => Self::RevName,
            ".Revision.Namespace" => Self::RevNamespace,
            ".Revision.Service" => Self::RevService,
            ".Revision.Configuration" => Self::RevConfiguration,
            ".Revision.PodName" => Self::RevPodName,
            ".Revision.PodIP" => Self::RevPodIp,
            ".TraceID" => Self::TraceId,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Segment {
    Text(String),
    Field { field: Field, js: bool },
}

/// A parsed request-log template.
#[derive(Clone, Debug)]
pub struct Template {
    segments: Vec<Segment>,
}

/// The template uses an action we do not implement.
#[derive(Debug, thiserror::Error)]
#[error("unsupported request log template action {0:?}")]
pub struct TemplateError(String);

/// What a log line is rendered from.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    /// Method.
    pub method: String,
    /// Request URI as received.
    pub request_uri: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub proto: &'static str,
    /// Host.
    pub host: String,
    /// `ip:port` of the peer.
    pub remote_addr: String,
    /// Content-Length, -1 if unknown.
    pub content_length: i64,
    /// User-Agent.
    pub user_agent: String,
    /// Referer.
    pub referer: String,
    /// Status code.
    pub code: u16,
    /// Response body bytes.
    pub size: u64,
    /// Seconds.
    pub latency: f64,
    /// Trace id.
    pub trace_id: String,
    /// `.Request.TLS` as printed for a TLS connection (`None` prints `<nil>`).
    pub tls: Option<String>,
}

impl Entry {
    /// The request's fields (method, URI, protocol, host, peer, length, agent, referer); the
    /// response fields, trace id and TLS are filled in by the caller.
    pub fn from_request<B: http_body::Body>(req: &http::Request<B>) -> Self {
        use http::header::{HOST, REFERER, USER_AGENT};
        let h = req.headers();
        let str_of = |n| crate::http::headers::first(h, n).unwrap_or("").to_owned();
        Entry {
            method: req.method().as_str().to_owned(),
            request_uri: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            proto: match req.version() {
                http::Version::HTTP_2 => "HTTP/2.0",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            host: req
                .uri()
                .authority()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_else(|| str_of(&HOST)),
            remote_addr: req
                .extensions()
                .get::<crate::http::server::ConnInfo>()
                .map(|c| c.remote.to_string())
                .unwrap_or_default(),
            content_length: req
                .body()
                .size_hint()
                .exact()
                .and_then(|n| i64::try_from(n).ok())
                .unwrap_or(-1),
            user_agent: str_of(&USER_AGENT),
            referer: str_of(&REFERER),
            ..Entry::default()
        }
    }
}

/// The revision fields.
#[derive(Clone, Debug, Default)]
pub struct Revision {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service.
    pub service: String,
    /// Configuration.
    pub configuration: String,
    /// Pod name.
    pub pod_name: String,
    /// Pod IP.
    pub pod_ip: String,
}

impl Template {
    /// Parses `src`.
    ///
    /// # Errors
    /// An action other than a known field, optionally under `js`.
    pub fn parse(src: &str) -> Result<Self, TemplateError> {
        let mut segments = Vec::new();
        let mut rest = src;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                segments.push(Segment::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| TemplateError("unclosed action".into()))?;
            let action = after[..close].trim();
            let (js, path) = match action.strip_prefix("js ") {
                Some(p) => (true, p.trim()),
                None => (false, action),
            };
            let field = Field::parse(path).ok_or_else(|| TemplateError(action.to_owned()))?;
            segments.push(Segment::Field { field, js });
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Text(rest.to_owned()));
        }
        Ok(Self { segments })
    }

    /// Renders one line (with a trailing newline, added if the template lacks one).
    pub fn render(&self, e: &Entry, rev: &Revision) -> String {
        let mut out = String::with_capacity(256);
        for s in &self.segments {
            match s {
                Segment::Text(t) => out.push_str(t),
                Segment::Field { field, js } => {
                    let v = value(*field, e, rev);
                    if *js {
                        js_escape(&mut out, &v);
                    } else {
                        out.push_str(&v);
                    }
                }
            }
        }
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out
    }
}

fn value(f: Field, e: &Entry, r: &Revision) -> String {
    match f {
        Field::Method => e.method.clone(),
        Field::RequestUri | Field::Url => e.request_uri.clone(),
        Field::Proto => e.proto.to_owned(),
        Field::Host => e.host.clone(),
        Field::RemoteAddr => e.remote_addr.clone(),
        Field::ContentLength => e.content_length.to_string(),
        Field::UserAgent => e.user_agent.clone(),
        Field::Referer => e.referer.clone(),
        Field::Tls => e.tls.clone().unwrap_or_else(|| "<nil>".to_owned()),
        Field::Code => e.code.to_string(),
        Field::Size => e.size.to_string(),
        Field::Latency => go_float(e.latency),
        Field::RevName => r.name.clone(),
        Field::RevNamespace => r.namespace.clone(),
        Field::RevService => r.service.clone(),
        Field::RevConfiguration => r.configuration.clone(),
        Field::RevPodName => r.pod_name.clone(),
        Field::RevPodIp => r.pod_ip.clone(),
        Field::TraceId => e.trace_id.clone(),
    }
}

/// Go's `%v` for a float64: shortest round-trip, exponent form below 1e-4 or from 1e21, with a
/// two-digit exponent (`5.2e-05`).
pub fn go_float(v: f64) -> String {
    let a = v.abs();
    if v != 0.0 && !(1e-4..1e21).contains(&a) {
        let s = format!("{v:e}");
        let (m, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        format!("{m}e{sign}{digits:0>2}")
    } else {
        format!("{v}")
    }
}

/// Go's `template.JSEscapeString`.
fn js_escape(out: &mut String, s: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_knatives_default_template() {
        let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
        let e = Entry {
            method: "GET".into(),
            request_uri: "/a?b=\"c\"".into(),
            proto: "HTTP/1.1",
            remote_addr: "1.2.3.4:5".into(),
            content_length: 0,
            user_agent: "curl/8".into(),
            code: 200,
            size: 5,
            latency: 0.000052,
            trace_id: "abc".into(),
            ..Default::default()
        };
        let r = Revision {
            pod_ip: "10.0.0.1".into(),
            ..Default::default()
        };
        assert_eq!(
            t.render(&e, &r),
            "{\"httpRequest\": {\"requestMethod\": \"GET\", \"requestUrl\": \"/a?b\\u003D\\\"c\\\"\", \"requestSize\": \"0\", \"status\": 200, \"responseSize\": \"5\", \"userAgent\": \"curl/8\", \"remoteIp\": \"1.2.3.4:5\", \"serverIp\": \"10.0.0.1\", \"referer\": \"\", \"latency\": \"5.2e-05s\", \"protocol\": \"HTTP/1.1\"}, \"traceId\": \"abc\"}\n"
        );
        assert!(Template::parse("{{.Request.Body}}").is_err());
        assert_eq!(
            Template::parse("TLS: {{.Request.TLS}}")
                .unwrap()
                .render(&e, &r),
            "TLS: <nil>\n"
        );
        assert_eq!(go_float(1.5), "1.5");
    }
}
