//! The serving port's request path, as tower layers (outermost first):
//!
//! ```text
//! Observe (in-flight count, request log, request metrics)
//!  → Trace (spans, when tracing is on; queue-proxy.md §7.5)
//!  → Rescue (errors → 502/503/504; the only place that picks status codes)
//!  → DrainProbe (health checks and KProbes answered here; restarts the drain timer)
//!  → Timeout (total / response-start / idle, queue wait included)
//!  → ForwardedShim (Forwarded from X-Forwarded-*, K-Original-Host, Knative-Serving-* removed)
//!  → Stats (arrival before the breaker: queued and rejected requests count)
//!  → Breaker (CC in flight, 10×CC queued, permit held to end of body or tunnel)
//!  → UserClient (shared::http::proxy::Upstream to 127.0.0.1:USER_PORT)
//! ```
//!
//! `Observe` sits above `Rescue` (style.md puts Rescue first) because it must see the final
//! status code of rescued errors for the request log and metrics; it never fails itself.
//!
//! Every layer is always ready; waiting happens in response futures, bounded by the breaker
//! queue and the timeouts. Guards (stats, breaker permit, in-flight) ride in the response body
//! until its end, or in the [`Tunnel`] of a `101` response until the tunnel closes.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http::header::{HOST, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use shared::BoxError;
use shared::breaker::{Breaker, QueueFull};
use shared::http::body::Guarded;
use shared::http::detach::Detached;
use shared::http::headers::{
    self, FORWARDED, K_NETWORK_HASH, K_NETWORK_PROBE, K_ORIGINAL_HOST, KNATIVE_SERVING_NAMESPACE,
    KNATIVE_SERVING_REVISION, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO,
};
use shared::http::proxy::{ProxyError, Tunnel, Upstream};
use shared::http::response::{empty, go_error, sniffed_text};
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::drain::Drainer;
use crate::observe::Observer;
use crate::probe::Prober;
use crate::stats::Stats;

/// The body every layer below `Rescue` answers with.
pub type QpBody = UnsyncBoxBody<Bytes, BoxError>;
/// A response of the stack.
pub type Resp = Response<QpBody>;
type BoxFut<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// Boxes any body into [`QpBody`].
pub fn boxed<B>(b: B) -> QpBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

fn full(resp: Response<http_body_util::Full<Bytes>>) -> Resp {
    resp.map(|b| b.map_err(|n: Infallible| match n {}).boxed_unsync())
}

/// Keeps `guard` until the response body ends, or until the tunnel of a `101` closes.
pub fn hold<G: Send + 'static>(resp: Resp, guard: G) -> Resp {
    if let Some(t) = resp.extensions().get::<Tunnel>() {
        t.hold(guard);
        resp
    } else {
        resp.map(|b| Guarded::new(b, guard).boxed_unsync())
    }
}

/// Takes the inner service out, leaving a clone (tower's "ready clone" idiom).
fn take<S: Clone>(s: &mut S) -> S {
    let clone = s.clone();
    std::mem::replace(s, clone)
}

// === errors ===

/// A timeout fired before the response started: 504 `request timeout`.
#[derive(Debug, thiserror::Error)]
#[error("request timeout")]
pub struct RequestTimeout(());

/// The status and response for an error that reached the top of the stack.
pub fn rescue(err: &BoxError) -> Resp {
    let e: &(dyn std::error::Error + 'static) = err.as_ref();
    if shared::error::is_caused_by::<QueueFull>(e) {
        full(go_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "pending request queue full",
        ))
    } else if shared::error::is_caused_by::<RequestTimeout>(e) {
        full(sniffed_text(StatusCode::GATEWAY_TIMEOUT, "request timeout"))
    } else if let Some(p) = shared::error::cause_ref::<ProxyError>(e) {
        full(p.to_response())
    } else {
        full(go_error(StatusCode::BAD_GATEWAY, &err.to_string()))
    }
}

// === Rescue ===

/// Turns every error into a response (a hyper service error would abort the connection).
#[derive(Clone, Debug)]
pub struct Rescue<S> {
    inner: S,
}

impl<S> Rescue<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B> Service<Request<B>> for Rescue<S>
where
    S: Service<Request<B>, Response = Resp, Error = BoxError>,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        RescueFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Rescue`]'s response future. The stages below `Observe` are hand-written futures over
    /// the one boxed upstream future instead of a boxed `async` block each: one allocation and
    /// one dynamic call less per stage and request (`benches/RESULTS.md`, "Second hot-path
    /// round").
    pub struct RescueFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future<Output = Result<Resp, BoxError>>> Future for RescueFuture<F> {
    type Output = Result<Resp, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(match ready!(self.project().inner.poll(cx)) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "request failed");
                rescue(&e)
            }
        }))
    }
}

// === DrainProbe ===

/// Knative's Drainer + health handler: answers `HEALTH_UA` and `KPROBE` requests itself (never
/// proxied, never counted) and restarts the drain timer on every other request.
#[derive(Clone, Debug)]
pub struct DrainProbe<S> {
    inner: S,
    drainer: Drainer,
    prober: Prober,
    pod: Option<HeaderValue>,
}

/// Response header naming the pod (`SERVING_POD`) on the queue-proxy's readiness answers (ours,
/// not Knative's: an extra header its probers ignore). A prober that started the pod, like
/// `activator local`, checks it to be sure the answer came from that pod and not from another
/// process that holds the port.
pub const X_KNATIVE_POD: http::HeaderName = http::HeaderName::from_static("x-knative-pod");

impl<S> DrainProbe<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, drainer: Drainer, prober: Prober) -> Self {
        Self {
            inner,
            drainer,
            prober,
            pod: None,
        }
    }

    /// Names the pod in readiness answers ([`X_KNATIVE_POD`]).
    #[must_use]
    pub fn with_pod(mut self, pod: &str) -> Self {
        self.pod = HeaderValue::from_str(pod).ok();
        self
    }
}

impl<S, B> Service<Request<B>> for DrainProbe<S>
where
    S: Service<Request<B>, Response = Resp, Error = BoxError>,
    B: Send + 'static,
{
    type Response = Resp;
    type Error = BoxError;
    /// Left: a probe answered here; right: the request passed on.
    type Future = Either<BoxFut<Resp, BoxError>, S::Future>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let h = req.headers();
        if headers::is_health_ua(h) {
            if self.drainer.is_draining() {
                return Either::Left(ready(full(go_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting down",
                ))));
            }
            let probe = headers::first(h, &K_NETWORK_PROBE).unwrap_or("");
            if probe != headers::PROBE_QUEUE {
                let msg = format!("unexpected probe header value: {probe}");
                return Either::Left(ready(full(go_error(StatusCode::BAD_REQUEST, &msg))));
            }
            let prober = self.prober.clone();
            let pod = self.pod.clone();
            return Either::Left(Box::pin(async move {
                let mut r = if prober.probe().await {
                    full(sniffed_text(StatusCode::OK, "queue"))
                } else {
                    full(empty(StatusCode::SERVICE_UNAVAILABLE))
                };
                if let Some(pod) = pod {
                    r.headers_mut().insert(X_KNATIVE_POD, pod);
                }
                Ok(r)
            }));
        }
        if headers::is_kprobe(h) {
            if self.drainer.is_draining() {
                return Either::Left(ready(full(go_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting down",
                ))));
            }
            let hash = h.get(&K_NETWORK_HASH).filter(|v| !v.is_empty()).cloned();
            return Either::Left(ready(match hash {
                None => full(go_error(
                    StatusCode::BAD_REQUEST,
                    "a probe request must contain a non-empty \"K-Network-Hash\" header",
                )),
                Some(v) => {
                    let mut r = full(empty(StatusCode::OK));
                    r.headers_mut().insert(K_NETWORK_HASH, v);
                    r
                }
            }));
        }
        self.drainer.touch();
        // Every layer below is always ready and its future owns what it needs, so the inner
        // service is called in place (no per-request clone) and its future passed on.
        Either::Right(self.inner.call(req))
    }
}

fn ready<E: Send + 'static>(r: Resp) -> BoxFut<Resp, E> {
    Box::pin(std::future::ready(Ok(r)))
}

// === Timeout ===

/// Revision timeouts (`queue-proxy.md` §5.4), timed from the request's arrival here, so the
/// breaker queue wait counts.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// `T`: total. Before the response starts → 504; after → `request timeout` appended and the
    /// body ended. After a `101`, the tunnel is closed at `T` (the only timer that applies to
    /// upgraded connections; our documented choice).
    pub total: Duration,
    /// `S`: the response head must arrive within this.
    pub response_start: Option<Duration>,
    /// `I`: the longest gap between response writes (the head counts as a write).
    pub idle: Option<Duration>,
}

/// The timeout layer.
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    t: Timeouts,
}

impl<S> Timeout<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, t: Timeouts) -> Self {
        Self { inner, t }
    }
}

impl<S, B> Service<Request<B>> for Timeout<S>
where
    S: Service<Request<B>, Response = Resp, Error = BoxError>,
{
    type Response = Resp;
    type Error = BoxError;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let t = self.t;
        let start = Instant::now();
        let total = start + t.total;
        // Before the first write Knative's idle check always fires, so I acts like S here.
        let mut head_deadline = total;
        for d in [t.response_start, t.idle].into_iter().flatten() {
            head_deadline = head_deadline.min(start + d);
        }
        TimeoutFuture {
            inner: self.inner.call(req),
            sleep: tokio::time::sleep_until(head_deadline),
            total,
            t,
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Timeout`]'s response future: the head deadline, then [`TimeoutBody`] (or, after a
    /// `101`, a task that closes the tunnel at `T`). Hand-written, see [`RescueFuture`].
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        total: Instant,
        t: Timeouts,
    }
}

impl<F: Future<Output = Result<Resp, BoxError>>> Future for TimeoutFuture<F> {
    type Output = Result<Resp, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The response first: a timer that is never polled is never registered.
        if let Poll::Ready(r) = this.inner.poll(cx) {
            let resp = r?;
            let total = *this.total;
            if let Some(tunnel) = resp.extensions().get::<Tunnel>().cloned() {
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep_until(total) => tunnel.close(),
                        _ = tunnel.closed() => {}
                    }
                });
                return Poll::Ready(Ok(resp));
            }
            let idle = this.t.idle;
            return Poll::Ready(Ok(
                resp.map(|b| TimeoutBody::new(b, total, idle).boxed_unsync())
            ));
        }
        ready!(this.sleep.poll(cx));
        tracing::warn!(timeout = ?this.t.total, "Request timeout");
        Poll::Ready(Err(RequestTimeout(()).into()))
    }
}

pin_project_lite::pin_project! {
    /// Enforces `T` and `I` on the response body: on expiry, appends `request timeout` and ends
    /// the body (Go's timeout writer), dropping the upstream body.
    struct TimeoutBody {
        inner: Option<QpBody>,
        total: Instant,
        idle: Option<Duration>,
        #[pin]
        sleep: Sleep,
    }
}

impl TimeoutBody {
    fn new(inner: QpBody, total: Instant, idle: Option<Duration>) -> Self {
        let first = idle.map_or(total, |i| total.min(Instant::now() + i));
        Self {
            inner: Some(inner),
            total,
            idle,
            sleep: tokio::time::sleep_until(first),
        }
    }
}

impl Body for TimeoutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(i) = *this.idle
                    && frame.is_data()
                {
                    let next = (*this.total).min(Instant::now() + i);
                    this.sleep.as_mut().reset(next);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(other) => {
                *this.inner = None;
                return Poll::Ready(other);
            }
            Poll::Pending => {}
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            tracing::warn!("Request timeout (after the response started)");
            *this.inner = None;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                b"request timeout",
            )))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }
}

// === ForwardedShim ===

/// Request rewrites of the queue-proxy's handler: the Forwarded shim (§5.5), `K-Original-Host`
/// restoration (not for kubelet probes) and removal of the revision routing headers (§5.6).
#[derive(Clone, Debug)]
pub struct ForwardedShim<S> {
    inner: S,
}

impl<S> ForwardedShim<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

/// `Forwarded` from `X-Forwarded-{For,Host,Proto}` when no `Forwarded` exists
/// (`pkg/queue/forwarded_shim.go`).
pub fn forwarded_value(h: &http::HeaderMap) -> Option<String> {
    if h.contains_key(FORWARDED) {
        return None;
    }
    let xff = headers::first(h, &X_FORWARDED_FOR).unwrap_or("");
    let xfh = headers::first(h, &X_FORWARDED_HOST).unwrap_or("");
    let xfp = headers::first(h, &X_FORWARDED_PROTO).unwrap_or("");
    if xff.is_empty() && xfh.is_empty() && xfp.is_empty() {
        return None;
    }
    let node = |n: &str| {
        if n.contains(':') {
            format!("\"[{n}]\"")
        } else {
            n.to_owned()
        }
    };
    let nodes: Vec<&str> = if xff.is_empty() {
        Vec::new()
    } else {
        xff.split(',').map(str::trim).collect()
    };
    let mut first = Vec::new();
    if let Some(n) = nodes.first() {
        first.push(format!("for={}", node(n)));
    }
    if !xfh.is_empty() {
        first.push(format!("host={xfh}"));
    }
    if !xfp.is_empty() {
        first.push(format!("proto={xfp}"));
    }
    let mut out = first.join(";");
    for n in nodes.iter().skip(1) {
        out.push_str(&format!(", for={}", node(n)));
    }
    Some(out)
}

impl<S, B> Service<Request<B>> for ForwardedShim<S>
where
    S: Service<Request<B>, Response = Resp, Error = BoxError>,
{
    type Response = Resp;
    type Error = BoxError;
    type Future = S::Future;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        if let Some(v) = forwarded_value(req.headers())
            && let Ok(v) = HeaderValue::from_str(&v)
        {
            req.headers_mut().insert(FORWARDED, v);
        }
        let kubelet = headers::is_kubelet_probe(req.headers());
        let h = req.headers_mut();
        h.remove(KNATIVE_SERVING_REVISION);
        h.remove(KNATIVE_SERVING_NAMESPACE);
        if !kubelet && let Some(host) = h.remove(K_ORIGINAL_HOST).filter(|v| !v.is_empty()) {
            if let Ok(a) = http::uri::Authority::try_from(host.as_bytes()) {
                let mut parts = req.uri().clone().into_parts();
                if parts.authority.is_some() {
                    parts.authority = Some(a);
                    if let Ok(u) = http::Uri::from_parts(parts) {
                        *req.uri_mut() = u;
                    }
                }
            }
            req.headers_mut().insert(HOST, host);
        }
        self.inner.call(req)
    }
}

// === Stats ===

/// Records the autoscaler's in/out events around everything below (kubelet probes excepted).
#[derive(Clone, Debug)]
pub struct StatsLayer<S> {
    inner: S,
    stats: Stats,
}

impl<S> StatsLayer<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, stats: Stats) -> Self {
        Self { inner, stats }
    }
}

impl<S, B> Service<Request<B>> for StatsLayer<S>
where
    S: Service<Request<B>, Response = Resp, Error = BoxError>,
{
    type Response = Resp;
    type Error = BoxError;
    type Future = StatsFuture<S::Future>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let guard = (!headers::is_kubelet_probe(req.headers()))
            .then(|| self.stats.arrive(headers::is_proxied(req.headers())));
        StatsFuture {
            inner: self.inner.call(req),
            guard,
        }
    }
}

pin_project_lite::pin_project! {
    /// [`StatsLayer`]'s response future: moves the stats guard into the response. Hand-written,
    /// see [`RescueFuture`].
    pub struct StatsFuture<F> {
        #[pin]
        inner: F,
        guard: Option<crate::stats::InFlight>,
    }
}

impl<F: Future<Output = Result<Resp, BoxError>>> Future for StatsFuture<F> {
    type Output = Result<Resp, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = ready!(this.inner.poll(cx))?;
        Poll::Ready(Ok(match this.guard.take() {
            Some(g) => hold(resp, g),
            None => resp,
        }))
    }
}

// === Breaker ===

/// `CONTAINER_CONCURRENCY` enforcement: `None` = unlimited. Kubelet probes bypass it.
#[derive(Clone, Debug)]
pub struct BreakerLayer<S> {
    inner: S,
    breaker: Option<Arc<Breaker>>,
    depth: Option<prometheus_client::metrics::gauge::Gauge>,
    /// How long an abandoned request may keep its slot while the app finishes it.
    hold_limit: Duration,
}

impl<S> BreakerLayer<S> {
    /// Wraps `inner`; `depth` receives the breaker occupancy on each admission.
    pub fn new(
        inner: S,
        breaker: Option<Arc<Breaker>>,
        depth: Option<prometheus_client::metrics::gauge::Gauge>,
    ) -> Self {
        Self {
            inner,
            breaker,
            depth,
            hold_limit: DEFAULT_HOLD_LIMIT,
        }
    }

    /// Bounds how long a request whose client gave up keeps its slot (the revision timeout).
    pub fn with_hold_limit(mut self, limit: Duration) -> Self {
        self.hold_limit = limit;
        self
    }
}

/// Knative's default revision timeout: the bound on an abandoned request's slot unless
/// [`BreakerLayer::with_hold_limit`] sets the revision's own.
const DEFAULT_HOLD_LIMIT: Duration = Duration::from_secs(300);

impl<S, B> Service<Request<B>> for BreakerLayer<S>
where
    S: Service<Request<B>, Response = Resp, Error = BoxError, Future = BoxFut<Resp, BoxError>>
        + Clone
        + Send
        + 'static,
    B: Send + 'static,
{
    type Response = Resp;
    type Error = BoxError;
    type Future = BoxFut<Resp, BoxError>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Without a breaker (CC = 0) or for kubelet probes the inner boxed future is passed on
        // as it is, not boxed again.
        let Some(breaker) = self.breaker.clone() else {
            return self.inner.call(req);
        };
        if headers::is_kubelet_probe(req.headers()) {
            return self.inner.call(req);
        }
        // Reserve synchronously so a full queue answers without a task hop.
        let slot = breaker.reserve();
        let depth = DepthSync {
            gauge: self.depth.clone(),
            breaker,
        };
        depth.sync();
        let mut inner = take(&mut self.inner);
        let hold_limit = self.hold_limit;
        Box::pin(async move {
            // `depth` is declared before the permit, so it drops after it (cancelled or failed
            // requests) and re-reads the occupancy once the slot is free.
            let depth = depth;
            let permit = slot?.acquire().await;
            if let Some(a) = req
                .extensions()
                .get::<shared::telemetry::otlp::request::Admitted>()
            {
                a.mark();
            }
            // CC is a promise to the app: a client that gives up while the app works does not
            // free the slot until the app has answered (or the revision timeout passed).
            // A tuple drops its fields in order: the permit first, then the gauge update (also
            // when the detached call ends later).
            let (resp, guard) = Detached::new(inner.call(req), (permit, depth), hold_limit).await;
            Ok(hold(resp?, guard))
        })
    }
}

/// Keeps `kn_serving_queue_depth` equal to the breaker's occupancy: synced on admission and
/// again when dropped, after the request released its slot (Knative reads `InFlight()` at
/// collection time, so the gauge falls back to 0 when the queue empties).
struct DepthSync {
    gauge: Option<prometheus_client::metrics::gauge::Gauge>,
    breaker: Arc<Breaker>,
}

impl DepthSync {
    fn sync(&self) {
        if let Some(g) = &self.gauge {
            g.set(i64::try_from(self.breaker.in_flight()).unwrap_or(i64::MAX));
        }
    }
}

impl Drop for DepthSync {
    fn drop(&mut self) {
        self.sync();
    }
}

// === UserClient ===

/// The innermost service: the shared upstream client.
#[derive(Clone, Debug)]
pub struct UserClient {
    upstream: Upstream<Incoming>,
}

impl UserClient {
    /// Wraps `upstream`.
    pub fn new(upstream: Upstream<Incoming>) -> Self {
        Self { upstream }
    }
}

impl Service<Request<Incoming>> for UserClient {
    type Response = Resp;
    type Error = BoxError;
    type Future = BoxFut<Resp, BoxError>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let up = self.upstream.clone();
        Box::pin(async move {
            let resp = up.forward(req).await?;
            Ok(resp.map(boxed))
        })
    }
}

// === In-flight ===

/// Counts requests in flight on the serving port (upgraded connections included) for the
/// shutdown's final wait.
#[derive(Clone, Debug, Default)]
pub struct InFlightCounter(Arc<AtomicUsize>);

/// Decrements the counter on drop.
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicUsize>);

impl InFlightCounter {
    /// Enters one request.
    pub fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.0.clone())
    }

    /// Requests in flight now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Everything the serving stack needs.
#[derive(Clone, Debug)]
pub struct StackParts {
    /// Upstream client.
    pub upstream: Upstream<Incoming>,
    /// Breaker (`None` when CC = 0).
    pub breaker: Option<Arc<Breaker>>,
    /// Autoscaler stats.
    pub stats: Stats,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Drain state.
    pub drainer: Drainer,
    /// Readiness prober.
    pub prober: Prober,
    /// Request log, metrics and in-flight count.
    pub observer: Observer,
    /// Span recording (disabled unless `tracing.protocol` is set).
    pub tracer: shared::telemetry::otlp::Tracer,
    /// `SERVING_POD`, echoed in readiness answers ([`X_KNATIVE_POD`]).
    pub pod: String,
}

/// Builds the serving port's stack.
pub fn stack(
    p: StackParts,
) -> impl Service<
    Request<Incoming>,
    Response = Response<crate::observe::ObservedBody>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let depth = p.observer.queue_depth_gauge();
    let has_breaker = p.breaker.is_some();
    let client = UserClient::new(p.upstream);
    // The breaker is innermost so its permit covers exactly the upstream call and body.
    let breaker = BreakerLayer::new(client, p.breaker, depth).with_hold_limit(p.timeouts.total);
    // Stats wrap the breaker: queued and rejected requests are counted (Knative).
    let stats = StatsLayer::new(breaker, p.stats);
    let shim = ForwardedShim::new(stats);
    // Timeouts include the queue wait.
    let timeout = Timeout::new(shim, p.timeouts);
    let drain = DrainProbe::new(timeout, p.drainer, p.prober).with_pod(&p.pod);
    let rescue = Rescue::new(drain);
    // Spans sit inside Observe and above Rescue: they see the final status, and probes
    // (answered below) are skipped by header before any span starts.
    let traced = crate::trace::Trace::new(rescue, p.tracer, has_breaker);
    crate::observe::Observe::new(traced, p.observer)
}

#[cfg(test)]
mod tests;
