//! One proxied request's spans, shared by the queue-proxy and the activator: a server span, a
//! wait span (queue / throttler, ended at admission), a proxy span and the client span whose id
//! goes upstream in `traceparent`. The binaries differ only in names and in the wait span's
//! parent, given by [`SpanNames`].

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue, Method};

use super::{Attr, SpanData, SpanKind, Tracer, new_span_id, new_trace_id};
use crate::http::headers::{self, TRACEPARENT};
use crate::telemetry::trace::TraceContext;

/// When the request was admitted (breaker or throttler); ends the wait span. Put into the
/// request's extensions by the tracing layer; the admitting layer calls [`Admitted::mark`].
#[derive(Clone, Debug, Default)]
pub struct Admitted(Arc<OnceLock<SystemTime>>);

impl Admitted {
    /// Marks the admission time (first call wins).
    pub fn mark(&self) {
        let _ = self.0.set(SystemTime::now());
    }

    fn get(&self) -> Option<SystemTime> {
        self.0.get().copied()
    }
}

/// Which span the wait span hangs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitParent {
    /// Under the proxy span (queue-proxy: `kn.queueproxy.wait` under `kn.queueproxy.proxy`).
    Proxy,
    /// Under the server span (activator: `throttler_try` beside `activator_proxy`).
    Server,
}

/// A binary's span vocabulary.
#[derive(Clone, Copy, Debug)]
pub struct SpanNames {
    /// Server span name; `None` = the method (OTel's convention, the queue-proxy's).
    pub server: Option<&'static str>,
    /// The wait span (recorded only when the request can wait).
    pub wait: &'static str,
    /// Where the wait span hangs.
    pub wait_parent: WaitParent,
    /// The proxy span.
    pub proxy: &'static str,
    /// Client span name from method and path.
    pub client: fn(&str, &str) -> String,
}

/// Knative queue-proxy's names (`queue-proxy.md` §7.5).
pub const QUEUE_PROXY: SpanNames = SpanNames {
    server: None,
    wait: "kn.queueproxy.wait",
    wait_parent: WaitParent::Proxy,
    proxy: "kn.queueproxy.proxy",
    client: |method, _| format!("HTTP {method}"),
};

/// Knative activator's names (`activator.md` §8.5).
pub const ACTIVATOR: SpanNames = SpanNames {
    server: Some("handle"),
    wait: "throttler_try",
    wait_parent: WaitParent::Server,
    proxy: "activator_proxy",
    client: |method, path| format!("{method} {}", if path.is_empty() { "/" } else { path }),
};

fn method_name(m: &Method) -> Cow<'static, str> {
    // OTel's semantic conventions: known methods by name, anything else as `HTTP`.
    match *m {
        Method::GET => "GET".into(),
        Method::POST => "POST".into(),
        Method::PUT => "PUT".into(),
        Method::DELETE => "DELETE".into(),
        Method::HEAD => "HEAD".into(),
        Method::OPTIONS => "OPTIONS".into(),
        Method::PATCH => "PATCH".into(),
        Method::CONNECT => "CONNECT".into(),
        Method::TRACE => "TRACE".into(),
        _ => "HTTP".into(),
    }
}

/// The spans of one sampled request; recorded when dropped (end of body or tunnel), so put it
/// in the response body's guard.
#[derive(Debug)]
pub struct RequestSpans {
    tracer: Tracer,
    names: SpanNames,
    trace_id: [u8; 16],
    parent: Option<[u8; 8]>,
    server: [u8; 8],
    proxy: [u8; 8],
    wait: Option<[u8; 8]>,
    client: [u8; 8],
    method: Cow<'static, str>,
    path: String,
    start: SystemTime,
    admitted: Admitted,
    status: u16,
}

impl RequestSpans {
    /// Starts the spans of a request unless tracing is off, the request is a probe, or the
    /// sampler says no. On `Some`, `traceparent` in `headers` now names the client span, and
    /// the returned [`Admitted`] (when `can_wait`) must reach the admitting layer.
    ///
    /// Like Knative's W3C-only propagator, B3 headers are not read here.
    pub fn start(
        tracer: &Tracer,
        names: SpanNames,
        method: &Method,
        path: &str,
        headers: &mut HeaderMap,
        can_wait: bool,
    ) -> Option<(Self, Option<Admitted>)> {
        if !tracer.enabled() || headers::is_any_probe(headers) {
            return None;
        }
        let parent =
            headers::first(headers, &TRACEPARENT).and_then(|_| TraceContext::extract(headers));
        let trace_id = parent.map_or_else(new_trace_id, |p| p.trace_id);
        if !tracer.sample(parent.as_ref(), &trace_id) {
            return None;
        }
        let spans = Self {
            tracer: tracer.clone(),
            names,
            trace_id,
            parent: parent.map(|p| p.span_id),
            server: new_span_id(),
            proxy: new_span_id(),
            wait: can_wait.then(new_span_id),
            client: new_span_id(),
            method: method_name(method),
            path: path.to_owned(),
            start: SystemTime::now(),
            admitted: Admitted::default(),
            status: 0,
        };
        let upstream = TraceContext {
            trace_id,
            span_id: spans.client,
            sampled: true,
        };
        if let Ok(v) = HeaderValue::from_str(&upstream.traceparent()) {
            headers.insert(TRACEPARENT, v);
        }
        let admitted = spans.wait.is_some().then(|| spans.admitted.clone());
        Some((spans, admitted))
    }

    /// Records the response status (an error span from 500 up).
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }
}

impl Drop for RequestSpans {
    fn drop(&mut self) {
        let end = SystemTime::now();
        let admitted = self.admitted.get();
        let error = (self.status >= 500).then(|| format!("status {}", self.status));
        let method = Attr::Str(self.method.clone());
        let status = Attr::Int(i64::from(self.status));
        let span =
            |span_id, parent, name: Cow<'static, str>, kind, start, end, attributes| SpanData {
                trace_id: self.trace_id,
                span_id,
                parent,
                name,
                kind,
                start,
                end,
                attributes,
                error: error.clone(),
            };
        let server_name = self
            .names
            .server
            .map_or_else(|| self.method.clone(), Cow::Borrowed);
        self.tracer.record(span(
            self.server,
            self.parent,
            server_name,
            SpanKind::Server,
            self.start,
            end,
            vec![
                ("http.request.method", method.clone()),
                ("url.path", Attr::Str(self.path.clone().into())),
                ("http.response.status_code", status.clone()),
            ],
        ));
        if let Some(wait) = self.wait {
            let parent = match self.names.wait_parent {
                WaitParent::Proxy => self.proxy,
                WaitParent::Server => self.server,
            };
            self.tracer.record(span(
                wait,
                Some(parent),
                self.names.wait.into(),
                SpanKind::Internal,
                self.start,
                admitted.unwrap_or(end),
                Vec::new(),
            ));
        }
        // A request that never got past the wait never went upstream: no proxy or client span
        // for the activator; the queue-proxy's proxy span encloses the wait, so it stays.
        let went_upstream = self.wait.is_none() || admitted.is_some();
        let proxy_start = match self.names.wait_parent {
            WaitParent::Server => admitted.unwrap_or(self.start),
            WaitParent::Proxy => self.start,
        };
        if went_upstream || self.names.wait_parent == WaitParent::Proxy {
            self.tracer.record(span(
                self.proxy,
                Some(self.server),
                self.names.proxy.into(),
                SpanKind::Internal,
                proxy_start,
                end,
                Vec::new(),
            ));
        }
        if went_upstream {
            self.tracer.record(span(
                self.client,
                Some(self.proxy),
                (self.names.client)(&self.method, &self.path).into(),
                SpanKind::Client,
                admitted.unwrap_or(self.start),
                end,
                vec![
                    ("http.request.method", method),
                    ("http.response.status_code", status),
                ],
            ));
        }
    }
}
