//! Request spans (`queue-proxy.md` §7.5), recorded only when `tracing.protocol` is not `none`.
//!
//! Per sampled non-probe request: a server span named after the method, a child
//! `kn.queueproxy.proxy`, under it `kn.queueproxy.wait` (only with a breaker, ended at admission)
//! and the client span `HTTP <METHOD>`, whose id goes upstream in `traceparent`
//! ([`shared::telemetry::otlp::request`]). The spans end when the response body ends (or the
//! tunnel of a `101` closes) and are handed to the exporter without waiting.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::Request;
use shared::telemetry::otlp::Tracer;
use shared::telemetry::otlp::request::{QUEUE_PROXY, RequestSpans};
use tower::Service;

use crate::stack::{Resp, hold};

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

impl<S, B> Service<Request<B>> for Trace<S>
where
    S: Service<Request<B>, Response = Resp, Error = Infallible>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Resp;
    type Error = Infallible;
    /// Left: no span recorded, the inner future as it is; right: spans end with the response.
    type Future = Either<S::Future, Pin<Box<dyn Future<Output = Result<Resp, Infallible>> + Send>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The inner service is always ready and its boxed future owns what it needs: call it in
        // place and, when no span is recorded, pass its future on as it is.
        let inner = &mut self.inner;
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        let Some((mut spans, admitted)) = RequestSpans::start(
            &self.tracer,
            QUEUE_PROXY,
            &method,
            &path,
            req.headers_mut(),
            self.breaker,
        ) else {
            return Either::Left(inner.call(req));
        };
        if let Some(a) = admitted {
            req.extensions_mut().insert(a);
        }
        let fut = inner.call(req);
        Either::Right(Box::pin(async move {
            let Ok(resp) = fut.await;
            spans.set_status(resp.status().as_u16());
            Ok(hold(resp, spans))
        }))
    }
}
