//! Request spans (`queue-proxy.md` §7.5), recorded only when `tracing.protocol` is not `none`.
//!
//! Per sampled non-probe request: a server span named after the method, a child
//! `kn.queueproxy.proxy`, under it `kn.queueproxy.wait` (only with a breaker, ended at admission)
//! and the client span `HTTP <METHOD>`, whose id goes upstream in `traceparent`. Like Knative's
//! W3C-only propagator, B3 headers are not read here (they pass through unchanged).
//!
//! The spans end when the response body ends (or the tunnel of a `101` closes), measured by a
//! guard that rides in the body, and are handed to the exporter without waiting.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::SystemTime;

use http::{HeaderValue, Method, Request};
use shared::http::headers::{self, TRACEPARENT};
use shared::telemetry::otlp::{Attr, SpanData, SpanKind, Tracer, new_span_id, new_trace_id};
use shared::telemetry::trace::TraceContext;
use tower::Service;

use crate::stack::{Resp, hold};

/// When the breaker admitted the request; set by the breaker layer if present in the request's
/// extensions (ends the `kn.queueproxy.wait` span).
#[derive(Clone, Debug, Default)]
pub struct Admitted(Arc<OnceLock<SystemTime>>);

impl Admitted {
    /// Marks the admission time (first call wins).
    pub fn mark(&self) {
        let _ = self.0.set(SystemTime::now());
    }
}

/// The tracing layer: between `Observe` and `Rescue`, so spans carry the final status.
#[derive(Clone, Debug)]
pub struct Trace<S> {
    inner: S,
    tracer: Tracer,
    breaker: bool,
}

impl<S> Trace<S> {
    /// Wraps `inner`; `breaker` says whether a wait span is recorded (CC > 0).
    pub fn new(inner: S, tracer: Tracer, breaker: bool) -> Self {
        Self {
            inner,
            tracer,
            breaker,
        }
    }
}

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

impl<S, B> Service<Request<B>> for Trace<S>
where
    S: Service<Request<B>, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Resp, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !self.tracer.enabled() || headers::is_any_probe(req.headers()) {
            return Box::pin(inner.call(req));
        }
        let parent = headers::first(req.headers(), &TRACEPARENT)
            .and_then(|_| TraceContext::extract(req.headers()));
        let trace_id = parent.map_or_else(new_trace_id, |p| p.trace_id);
        if !self.tracer.sample(parent.as_ref(), &trace_id) {
            return Box::pin(inner.call(req));
        }
        let spans = RequestSpans {
            tracer: self.tracer.clone(),
            trace_id,
            parent: parent.map(|p| p.span_id),
            server: new_span_id(),
            proxy: new_span_id(),
            wait: self.breaker.then(new_span_id),
            client: new_span_id(),
            name: method_name(req.method()),
            path: req.uri().path().to_owned(),
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
            req.headers_mut().insert(TRACEPARENT, v);
        }
        if spans.wait.is_some() {
            req.extensions_mut().insert(spans.admitted.clone());
        }
        let fut = inner.call(req);
        Box::pin(async move {
            let Ok(resp) = fut.await;
            let mut spans = spans;
            spans.status = resp.status().as_u16();
            Ok(hold(resp, spans))
        })
    }
}

/// The ids and times of one request's spans; recorded when dropped (end of body or tunnel).
struct RequestSpans {
    tracer: Tracer,
    trace_id: [u8; 16],
    parent: Option<[u8; 8]>,
    server: [u8; 8],
    proxy: [u8; 8],
    wait: Option<[u8; 8]>,
    client: [u8; 8],
    name: Cow<'static, str>,
    path: String,
    start: SystemTime,
    admitted: Admitted,
    status: u16,
}

impl Drop for RequestSpans {
    fn drop(&mut self) {
        let end = SystemTime::now();
        let admitted = self.admitted.0.get().copied();
        let error = (self.status >= 500).then(|| format!("status {}", self.status));
        let span = |span_id, parent, name: Cow<'static, str>, kind, start, end, attrs| SpanData {
            trace_id: self.trace_id,
            span_id,
            parent,
            name,
            kind,
            start,
            end,
            attributes: attrs,
            error: error.clone(),
        };
        let method = Attr::Str(self.name.clone());
        let status = Attr::Int(i64::from(self.status));
        self.tracer.record(span(
            self.server,
            self.parent,
            self.name.clone(),
            SpanKind::Server,
            self.start,
            end,
            vec![
                ("http.request.method", method.clone()),
                ("url.path", Attr::Str(self.path.clone().into())),
                ("http.response.status_code", status.clone()),
            ],
        ));
        self.tracer.record(span(
            self.proxy,
            Some(self.server),
            "kn.queueproxy.proxy".into(),
            SpanKind::Internal,
            self.start,
            end,
            Vec::new(),
        ));
        if let Some(wait) = self.wait {
            self.tracer.record(span(
                wait,
                Some(self.proxy),
                "kn.queueproxy.wait".into(),
                SpanKind::Internal,
                self.start,
                admitted.unwrap_or(end),
                Vec::new(),
            ));
        }
        // A request rejected by the breaker never went upstream: no client span.
        if self.wait.is_none() || admitted.is_some() {
            self.tracer.record(span(
                self.client,
                Some(self.proxy),
                format!("HTTP {}", self.name).into(),
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
