//! Request logs (`queue-proxy.md` §7.6, `activator.md` §8.6): Knative's Go `text/template` over
//! `{Request, Response, Revision, TraceID}` ([`crate::telemetry::template`]), and what one line
//! is rendered from.

pub use super::template::{ExecError, Template, TemplateError, go_float};

/// Knative's stock `logging.request-log-template` (config-observability).
pub const DEFAULT_TEMPLATE: &str = r#"{"httpRequest": {"requestMethod": "{{.Request.Method}}", "requestUrl": "{{js .Request.RequestURI}}", "requestSize": "{{.Request.ContentLength}}", "status": {{.Response.Code}}, "responseSize": "{{.Response.Size}}", "userAgent": "{{js .Request.UserAgent}}", "remoteIp": "{{js .Request.RemoteAddr}}", "serverIp": "{{.Revision.PodIP}}", "referer": "{{js .Request.Referer}}", "latency": "{{.Response.Latency}}s", "protocol": "{{.Request.Proto}}"}, "traceId": "{{.TraceID}}"}"#;

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
    /// `.Request.TLS` (`None` on plain HTTP: Go's nil pointer).
    pub tls: Option<TlsState>,
    /// The request headers, kept only when the template reads them ([`Template::needs_headers`]).
    pub headers: Option<http::HeaderMap>,
}

/// What `.Request.TLS` shows of Go's `tls.ConnectionState`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsState {
    /// The negotiated version's code point (`0x0304` = TLS 1.3).
    pub version: u16,
    /// The negotiated cipher suite's code point.
    pub cipher_suite: u16,
    /// The ALPN protocol, if any.
    pub alpn: String,
    /// The SNI server name, if any.
    pub server_name: String,
}

impl std::fmt::Display for TlsState {
    /// A brace-enclosed summary in the order of Go's `tls.ConnectionState` fields (Version,
    /// HandshakeComplete, DidResume, CipherSuite, NegotiatedProtocol, …, ServerName): Go's
    /// template printer dereferences the pointer, so `{{.Request.TLS}}` starts with `{`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{{{} true false {} {} true {}}}",
            self.version, self.cipher_suite, self.alpn, self.server_name
        )
    }
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
    /// The entry for `req`: [`Entry::from_request`], plus the headers when the template reads
    /// them.
    pub fn entry<B: http_body::Body>(&self, req: &http::Request<B>) -> Entry {
        Entry {
            headers: self.needs_headers().then(|| req.headers().clone()),
            ..Entry::from_request(req)
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
        assert_eq!(
            Template::parse("TLS: {{.Request.TLS}}")
                .unwrap()
                .render(&e, &r),
            "TLS: <nil>\n"
        );
        assert_eq!(go_float(1.5), "1.5");
    }
}
