//! The activator's request path, in the contract's order (activator.md §3.1), outermost first:
//!
//! 1. **Health**: kubelet probes (`kube-probe/` UA or `K-Kubelet-Probe`) are answered here: 200
//!    when healthy, 500 `<reason>\n` when draining or not connected to the autoscaler.
//! 2. **Network probe** `K-Network-Probe: probe`: echoes `K-Network-Hash` (400 without it). Any
//!    other request loses its `K-Network-Hash` header.
//! 3. **Activator probe**: `K-Network-Probe: activator` → 200 `activator` (the KPA's
//!    scale-to-zero handshake depends on it); other values → 400.
//! 4. **Revision resolution** from `Knative-Serving-Namespace`/`-Revision`, else the host
//!    `<rev>.<ns>.svc.<domain>`; unknown → 404 with Knative's text. Then the request log, when
//!    enabled ([`crate::reqlog`]).
//! 5. **Concurrency reporting**: wraps everything below, so held requests count.
//! 6. **Timeout**: `timeoutSeconds` (and `responseStartTimeoutSeconds`) until the response head,
//!    including the time held → 504 `activator request timeout`.
//! 7. **Throttler**: wait for capacity and a pod; bounded queue → 503.
//! 8. **Proxy**: rewrite for the pod and forward; a refused dial ejects the pod and retries
//!    another one (nothing was sent).
//!
//! Ahead of the stages, a request for a revision without capacity waits in its throttler queue
//! with nothing but the request and the waiter alive (`hold_ahead`, the same hold as for a new
//! HTTP/1 connection's first request in [`crate::park`]); the stages then take the outcome.
//!
//! Each stage is a tower layer over the rest of the path, a shared function (`Next`) returning
//! a boxed future of a response: every failure is already a response, because a service error
//! would abort the connection. [`Handler::service`] composes them with `ServiceBuilder` into one
//! always-ready [`StackService`] (error type `Infallible`) that hyper is given. Permits and the
//! in-flight mark ride in the response body (or the `101` tunnel) until it ends.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use bytes::Bytes;
use dashmap::DashMap;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use shared::error::BoxError;
use shared::http::body::Guarded;
use shared::http::detach::Detached;
use shared::http::headers::{
    self, K_NETWORK_HASH, K_NETWORK_PROBE, KNATIVE_SERVING_NAMESPACE, KNATIVE_SERVING_REVISION,
    PROBE_ACTIVATOR, X_KNATIVE_ACTIVATOR_HOLD_MS,
};
use shared::http::proxy::{ProxyError, Tunnel, is_upgrade_request};
use shared::http::response::{empty, go_error};
use shared::http::server::ConnInfo;
use tokio::time::Instant;
use tower::Service;

use crate::catalog::RevisionKey;
use crate::metrics::Metrics;
use crate::packed::PackedHead;
use crate::park::Parked;
use crate::proxy::{ReclaimBody, rewrite_for_dest};
use crate::reporter::{Reporter, StatsSink};
use crate::throttler::RevisionThrottler;
use crate::timeout::TimeoutBody;

/// Response body of the activator.
pub type RespBody = UnsyncBoxBody<Bytes, BoxError>;

/// How many pods a refused request is tried on.
const MAX_DIAL_ATTEMPTS: usize = 3;

/// Fixed per-request overhead counted against the byte bound besides the head itself
/// (connection buffers and task state while held).
pub(crate) const HELD_REQUEST_OVERHEAD: usize = 2048;

/// Kubelet health: draining or not connected to the autoscaler means unhealthy.
#[derive(Debug)]
pub struct Health {
    draining: AtomicBool,
    sink: StatsSink,
}

impl Health {
    /// Healthy unless draining, or the stats sink is a websocket that is not connected.
    pub fn new(sink: StatsSink) -> Arc<Self> {
        Arc::new(Self {
            draining: AtomicBool::new(false),
            sink,
        })
    }

    /// Fails kubelet probes from now on (first SIGTERM).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// `None` when healthy, else the reason.
    pub fn unhealthy_reason(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Acquire) {
            return Some("received SIGTERM from kubelet");
        }
        self.sink.unhealthy_reason()
    }
}

/// The request handler (all stages).
#[derive(Debug)]
pub struct Handler {
    /// Throttlers by revision (kept up to date by the manager).
    pub throttlers: Arc<DashMap<RevisionKey, Arc<RevisionThrottler>>>,
    /// Concurrency reporter.
    pub reporter: Arc<Reporter>,
    /// Kubelet health.
    pub health: Arc<Health>,
    /// Cluster domain for `<rev>.<ns>.svc.<domain>` hosts.
    pub cluster_domain: String,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The catalog, for host routes.
    pub catalog: tokio::sync::watch::Receiver<Arc<crate::catalog::Snapshot>>,
    /// The catalog version the throttler manager has applied.
    pub applied: tokio::sync::watch::Receiver<u64>,
    /// Span recording (disabled unless `config-observability` sets `tracing-protocol`).
    pub tracer: shared::telemetry::otlp::Tracer,
    /// Request log (`config-observability`'s `logging.enable-request-log`); `None` = off.
    pub request_log: crate::configmap::RequestLogRx,
    /// Also the ingress (`activator local`): see [`crate::proxy::as_ingress`].
    pub ingress: bool,
}

fn full(resp: Response<Full<Bytes>>) -> Response<RespBody> {
    resp.map(|b| b.map_err(|n| match n {}).boxed_unsync())
}

/// Go's `html.EscapeString`.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&#39;"),
            '"' => out.push_str("&#34;"),
            c => out.push(c),
        }
    }
    out
}

/// Revision from the routing headers, else a catalog host route, else a
/// `<rev>.<ns>.svc.<domain>[:port]` host.
pub fn resolve_key<B>(
    req: &Request<B>,
    cluster_domain: &str,
    routes: &std::collections::BTreeMap<String, RevisionKey>,
) -> RevisionKey {
    let ns = headers::first(req.headers(), &KNATIVE_SERVING_NAMESPACE).unwrap_or("");
    let name = headers::first(req.headers(), &KNATIVE_SERVING_REVISION).unwrap_or("");
    if !ns.is_empty() && !name.is_empty() {
        return RevisionKey::new(ns, name);
    }
    let host = headers::first(req.headers(), &http::header::HOST)
        .or_else(|| req.uri().host())
        .unwrap_or("");
    if !routes.is_empty() {
        let bare = match host.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        if let Some(k) = routes.get(&bare.to_ascii_lowercase()) {
            return k.clone();
        }
    }
    let parts: Vec<&str> = host.splitn(4, '.').collect();
    if parts.len() == 4 && parts[2] == "svc" {
        let domain = parts[3].rsplit_once(':').map_or(parts[3], |(d, _)| d);
        if domain == cluster_domain {
            return RevisionKey::new(parts[1], parts[0]);
        }
    }
    RevisionKey::new(ns, name)
}

/// [`resolve_key`], with the snapshot's traffic splits consulted (after the routing headers)
/// before its plain host routes. A split picks the next revision in its weighted rotation.
pub fn resolve_in_snapshot<B>(
    req: &Request<B>,
    cluster_domain: &str,
    snap: &crate::catalog::Snapshot,
) -> RevisionKey {
    if let Some(s) = split_of(req, snap) {
        return s.pick().clone();
    }
    resolve_key(req, cluster_domain, &snap.routes)
}

/// The traffic split that picks the revision for `req`, if one does (no routing header and a
/// split for the host).
pub(crate) fn split_of<'s, B>(
    req: &Request<B>,
    snap: &'s crate::catalog::Snapshot,
) -> Option<&'s Arc<crate::split::TrafficSplit>> {
    if snap.splits.is_empty()
        || headers::first(req.headers(), &KNATIVE_SERVING_REVISION).is_some_and(|v| !v.is_empty())
    {
        return None;
    }
    let host = headers::first(req.headers(), &http::header::HOST)
        .or_else(|| req.uri().host())
        .unwrap_or("");
    let bare = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    snap.splits.get(&bare.to_ascii_lowercase())
}

fn head_bytes<B>(req: &Request<B>) -> usize {
    let h: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    h + uri_len(req.uri()) + HELD_REQUEST_OVERHEAD
}

/// The length of the URI as written (`scheme://authority/path?query`), without formatting it.
fn uri_len(uri: &http::Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len())
}

/// A stage's boxed response future.
type BoxFuture = Pin<Box<dyn Future<Output = Response<RespBody>> + Send>>;

/// The request path below a stage: one shared function, so handing it on costs an `Arc` clone.
/// (Stages used to be `BoxCloneSyncService`s; calling one meant cloning it, and cloning a boxed
/// service clones everything below it: ≈ 36 allocations per request for the six stages.)
type Next = Arc<dyn Fn(Request<Incoming>) -> BoxFuture + Send + Sync>;

/// The whole request path as a cloneable, always-ready tower service (what hyper is given).
/// Cloning it is one `Arc` clone; it is one pointer wide, because hyper keeps a copy of it next
/// to every request it has not called the service for yet (8 B, not 24 B, in each h2 stream's
/// task, which tokio sizes in steps of 128 B).
#[derive(Clone)]
pub struct StackService(Arc<StackInner>);

struct StackInner {
    handler: Arc<Handler>,
    top: Next,
}

impl std::fmt::Debug for StackService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackService").finish_non_exhaustive()
    }
}

impl Service<Request<Incoming>> for StackService {
    type Response = Response<RespBody>;
    type Error = Infallible;
    type Future = futures_util::future::Map<
        BoxFuture,
        fn(Response<RespBody>) -> Result<Response<RespBody>, Infallible>,
    >;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        use futures_util::FutureExt;
        hold_ahead(&self.0.handler, &self.0.top, req).map(Ok as fn(_) -> _)
    }
}

/// Keeps `guard` alive until the response ends: the body's end, or the end of a `101` tunnel.
fn hold_until_end<G: Send + 'static>(resp: Response<RespBody>, guard: G) -> Response<RespBody> {
    if let Some(tunnel) = resp.extensions().get::<Tunnel>() {
        tunnel.hold(guard);
        return resp;
    }
    resp.map(|b| Guarded::new(b, guard).boxed_unsync())
}

/// A stage: answers some requests itself and hands the rest to `inner`.
fn stage<F, Fut>(inner: Next, f: F) -> Next
where
    F: Fn(Next, Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<RespBody>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(Arc::clone(&inner), req)))
}

/// Calls the next stage. Deliberately not `async`: the stage's boxed future is created here, so
/// the caller awaits a 16-byte box instead of embedding a copy of the request (that made every
/// stage's future ~2 KiB, ~11 KiB per held request; docs/activator.md).
fn call(inner: Next, req: Request<Incoming>) -> BoxFuture {
    inner(req)
}

/// Stages 1–3: kubelet health, `K-Network-Probe: probe` (hash echo) and `K-Network-Probe:
/// activator`. Decided synchronously: a request that is not a probe goes on to `inner` without
/// a future (or an allocation) of this stage.
fn probe_layer(health: Arc<Health>) -> impl tower::Layer<Next, Service = Next> + Clone {
    tower::layer::layer_fn(move |inner: Next| -> Next {
        let health = Arc::clone(&health);
        Arc::new(move |mut req: Request<Incoming>| -> BoxFuture {
            match answer_probe(&health, &mut req) {
                Some(resp) => Box::pin(std::future::ready(resp)),
                None => inner(req),
            }
        })
    })
}

/// The answer to a kubelet or network probe; `None` (and `K-Network-Hash` removed) for any
/// other request.
fn answer_probe(health: &Health, req: &mut Request<Incoming>) -> Option<Response<RespBody>> {
    // Kubelet probes first: they must never be counted, routed or throttled.
    if headers::is_kubelet_probe(req.headers()) {
        return Some(full(match health.unhealthy_reason() {
            None => empty(StatusCode::OK),
            Some(reason) => go_error(StatusCode::INTERNAL_SERVER_ERROR, reason),
        }));
    }
    // Then network probes: the KPA's scale-to-zero handshake must work for any host.
    if headers::is_kprobe(req.headers()) {
        return Some(full(
            match req.headers().get(K_NETWORK_HASH).filter(|v| !v.is_empty()) {
                Some(hash) => {
                    let mut r = empty(StatusCode::OK);
                    r.headers_mut().insert(K_NETWORK_HASH, hash.clone());
                    r
                }
                None => go_error(
                    StatusCode::BAD_REQUEST,
                    "a probe request must contain a non-empty \"K-Network-Hash\" header",
                ),
            },
        ));
    }
    req.headers_mut().remove(K_NETWORK_HASH);
    let v = req
        .headers()
        .get(K_NETWORK_PROBE)
        .filter(|v| !v.is_empty())?;
    Some(full(if v.as_bytes() == PROBE_ACTIVATOR.as_bytes() {
        let mut r = Response::new(Full::new(Bytes::from_static(b"activator")));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(shared::http::response::TEXT_PLAIN_UTF8),
        );
        r
    } else {
        let shown = html_escape(&String::from_utf8_lossy(v.as_bytes()));
        go_error(
            StatusCode::BAD_REQUEST,
            &format!("unexpected probe header value: \"{shown}\""),
        )
    }))
}

/// Stage 3b: spans `handle` → `throttler_try` / `activator_proxy` → `<METHOD> <path>`
/// (activator.md §8.5). Not a stage at all when tracing is off, so held requests carry nothing.
fn trace_layer(
    tracer: shared::telemetry::otlp::Tracer,
) -> impl tower::Layer<Next, Service = Next> + Clone {
    use shared::telemetry::otlp::request::{ACTIVATOR, RequestSpans};
    tower::layer::layer_fn(move |inner: Next| {
        if !tracer.enabled() {
            return inner;
        }
        let tracer = tracer.clone();
        stage(inner, move |inner, mut req: Request<Incoming>| {
            let (method, path) = (req.method().clone(), req.uri().path().to_owned());
            let started =
                RequestSpans::start(&tracer, ACTIVATOR, &method, &path, req.headers_mut(), true);
            let spans = started.map(|(spans, admitted)| {
                if let Some(a) = admitted {
                    req.extensions_mut().insert(a);
                }
                spans
            });
            let fut = call(inner, req);
            async move {
                let resp = fut.await;
                match spans {
                    Some(mut s) => {
                        s.set_status(resp.status().as_u16());
                        hold_until_end(resp, s)
                    }
                    None => resp,
                }
            }
        })
    })
}

/// Stage 4: revision resolution; puts the revision's throttler into the request extensions.
/// Requests resolved ahead of the stages (`hold_ahead`, `park`) go on synchronously.
fn resolve_layer(h: Arc<Handler>) -> impl tower::Layer<Next, Service = Next> + Clone {
    tower::layer::layer_fn(move |inner: Next| -> Next {
        let h = Arc::clone(&h);
        Arc::new(move |mut req: Request<Incoming>| -> BoxFuture {
            if req.extensions().get::<Arc<RevisionThrottler>>().is_some() {
                // Resolved ahead of the stages (`hold_ahead`).
                return inner(req);
            }
            if let Some(p) = req.extensions().get::<Parked>() {
                // Held ahead (outside hyper, or by `hold_ahead`): resolved when it arrived.
                let throttler = Arc::clone(p.throttler());
                req.extensions_mut().insert(throttler);
                return inner(req);
            }
            Box::pin(resolve(Arc::clone(&h), Arc::clone(&inner), req))
        })
    })
}

async fn resolve(h: Arc<Handler>, inner: Next, mut req: Request<Incoming>) -> Response<RespBody> {
    let (key, version) = {
        // Short synchronous read of the current snapshot; never held across an await.
        let snap = h.catalog.borrow();
        (
            resolve_in_snapshot(&req, &h.cluster_domain, &snap),
            snap.version,
        )
    };
    if *h.applied.borrow() < version {
        // The catalog changed a moment ago and the manager is applying it (a few µs):
        // wait, so a revision added just now is held rather than 404.
        let mut applied = h.applied.clone();
        let _ = applied.wait_for(|v| *v >= version).await;
    }
    let Some(throttler) = h.throttlers.get(&key).map(|t| Arc::clone(&t)) else {
        return full(go_error(
            StatusCode::NOT_FOUND,
            &format!(
                "Error getting active endpoint: revision.serving.knative.dev \"{}\" not found",
                key.name
            ),
        ));
    };
    req.extensions_mut().insert(throttler);
    call(inner, req).await
}

/// Stage 4b: the request log, when enabled; the line is written when the response ends.
fn reqlog_layer(
    template: crate::configmap::RequestLogRx,
) -> impl tower::Layer<Next, Service = Next> + Clone {
    tower::layer::layer_fn(move |inner: Next| {
        let template = template.clone();
        stage(inner, move |inner, req: Request<Incoming>| {
            // Read per request: `config-observability` turns the log on and off live.
            let template = template.borrow().clone();
            let start = req
                .extensions()
                .get::<Parked>()
                .map_or_else(Instant::now, Parked::arrived);
            let line = template.and_then(|template| {
                throttler_of(&req).map(|t| crate::reqlog::Line::start(template, &req, &t, start))
            });
            let fut = call(inner, req);
            async move {
                let resp = fut.await;
                let Some(mut line) = line else {
                    return resp;
                };
                line.set_code(resp.status().as_u16());
                line.set_held_ms(
                    resp.headers()
                        .get(X_KNATIVE_ACTIVATOR_HOLD_MS)
                        .and_then(|v| v.to_str().ok()?.parse().ok()),
                );
                line.set_pod(
                    resp.extensions()
                        .get::<crate::reqlog::PodAddr>()
                        .map(|p| p.0.clone()),
                );
                if let Some(tunnel) = resp.extensions().get::<Tunnel>() {
                    tunnel.hold(line);
                    return resp;
                }
                resp.map(|b| shared::http::body::Counted::new(b, line).boxed_unsync())
            }
        })
    })
}

fn throttler_of(req: &Request<Incoming>) -> Option<Arc<RevisionThrottler>> {
    req.extensions().get::<Arc<RevisionThrottler>>().cloned()
}

fn internal_error() -> Response<RespBody> {
    full(empty(StatusCode::INTERNAL_SERVER_ERROR))
}

/// Stages 5–6 around 7–8, in one future: concurrency reporting (held until the response
/// ends) wraps the revision timeouts, which wrap the throttler and the proxy. Timeouts: until
/// the response head `timeoutSeconds` (and `responseStartTimeoutSeconds`) → 504; after it, the
/// body keeps the overall deadline (measured from arrival, so it includes the time held) and
/// the idle timer. Tunnels are not cut (docs/activator.md).
async fn serve_revision(h: Arc<Handler>, req: Request<Incoming>) -> Response<RespBody> {
    let Some(t) = throttler_of(&req) else {
        return internal_error();
    };
    // Reporting wraps the timeout and the throttler, so held requests count. A request held
    // ahead of the stages was reported when it arrived.
    let parked = req.extensions().get::<Parked>();
    let in_flight = match parked.and_then(Parked::take_in_flight) {
        Some(mark) => mark,
        None => h.reporter.request_in(&t.key),
    };
    // A held request counts from its arrival, like one held inside the stages.
    if parked.is_some_and(Parked::timed_out) {
        return hold_until_end(timed_out(), in_flight);
    }
    let arrived = parked.map_or_else(Instant::now, Parked::arrived);
    let spec = t.spec();
    let deadline = arrived + spec.timeout;
    let limit = spec
        .response_start_timeout
        .map_or(spec.timeout, |r| r.min(spec.timeout));
    let resp = match tokio::time::timeout_at(arrived + limit, h.activate(&t, req)).await {
        Ok(resp) if resp.extensions().get::<Tunnel>().is_some() => resp,
        Ok(resp) => resp.map(|b| TimeoutBody::new(b, deadline, spec.idle_timeout).boxed_unsync()),
        Err(_) => timed_out(),
    };
    hold_until_end(resp, in_flight)
}

/// Stage 0: a request that would wait for capacity waits *before* entering the stages, so
/// while it is held only the request and a small waiter are alive (≈ 1 KiB), not the six stage
/// futures (≈ 5.8 KiB; benches/RESULTS.md). This is how h2c streams and later requests of a
/// kept-alive HTTP/1 connection are held; the first request of a new HTTP/1 connection is held
/// the same way, outside hyper ([`crate::park`]). The outcome rides into the stages as a
/// [`Parked`] ticket, and each stage uses it as it does for a parked connection (revision,
/// concurrency mark, arrival time for the timeouts and the request log, lease or refusal).
/// Requests with capacity now go through the stages directly, their revision already resolved
/// (the resolution stage does not repeat it). Requests that may not be resolved ahead (probes,
/// splits, tracing on: [`crate::park::resolve_ahead`]) are resolved, and held, by the stages.
fn hold_ahead(h: &Handler, top: &Next, mut req: Request<Incoming>) -> BoxFuture {
    use futures_util::FutureExt;
    let Some(throttler) = crate::park::resolve_ahead(h, &req) else {
        return top(req);
    };
    if !throttler.likely_to_wait() {
        // Resolved already: the resolution stage takes it from here instead of resolving again.
        req.extensions_mut().insert(throttler);
        return top(req);
    }
    let wait = crate::park::hold(h, throttler, head_bytes(&req));
    let (mut parts, body) = req.into_parts();
    let packed = PackedHead::take(&mut parts);
    let top = Arc::clone(top);
    // `then`, not an `async` block: a future captured by an `async` block and awaited in it is
    // stored twice (the capture and the awaited copy); this one is the waiter, then the stages.
    Box::pin(wait.then(move |parked| {
        let mut parts = parts;
        packed.restore(&mut parts);
        parts.extensions.insert(parked);
        top(Request::from_parts(parts, body))
    }))
}

/// The revision timeout passed before the response head.
fn timed_out() -> Response<RespBody> {
    full(shared::http::response::sniffed_text(
        StatusCode::GATEWAY_TIMEOUT,
        "activator request timeout",
    ))
}

impl Handler {
    /// The request path as tower layers (outermost first; see the module docs), innermost the
    /// activation service (throttler + proxy).
    pub fn service(self: Arc<Self>) -> StackService {
        let activation: Next = {
            let h = Arc::clone(&self);
            Arc::new(move |req: Request<Incoming>| -> BoxFuture {
                Box::pin(serve_revision(Arc::clone(&h), req))
            })
        };
        let top = tower::ServiceBuilder::new()
            // Kubelet probes first (never counted, routed or throttled), then network probes
            // (the KPA's scale-to-zero handshake must work for any host).
            .layer(probe_layer(Arc::clone(&self.health)))
            // Spans (when tracing is on) cover everything proxied, 404s included.
            .layer(trace_layer(self.tracer.clone()))
            // Resolution before counting: unknown revisions are 404 and never reported.
            .layer(resolve_layer(Arc::clone(&self)))
            // Request log inside resolution (as Knative's): 404s and probes are not logged.
            .layer(reqlog_layer(self.request_log.clone()))
            // Reporting, timeouts, throttler and proxy: one future (`serve_revision`).
            .service(activation);
        StackService(Arc::new(StackInner { handler: self, top }))
    }

    /// Handles one request through the whole stack (tests and embedding).
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<RespBody> {
        match self.service().call(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    }

    /// Stages 7–8: wait for a pod (throttler), then proxy; the lease rides in the response.
    async fn activate(
        &self,
        throttler: &Arc<RevisionThrottler>,
        req: Request<Incoming>,
    ) -> Response<RespBody> {
        let bytes = head_bytes(&req);
        let retryable = !is_upgrade_request(req.headers());
        let (mut parts, body) = req.into_parts();
        let admitted = parts
            .extensions
            .remove::<shared::telemetry::otlp::request::Admitted>();
        // Held outside hyper: the wait is over and its outcome (lease or refusal) is here.
        let parked = parts.extensions.remove::<Parked>();
        let arrived = parked.as_ref().map_or_else(Instant::now, Parked::arrived);
        let mut held = parked.as_ref().and_then(Parked::take_lease);
        // Waiting here is rare (`hold_ahead` holds what is likely to wait): the head waits
        // packed the same way.
        let mut packed =
            (held.is_none() && throttler.likely_to_wait()).then(|| PackedHead::take(&mut parts));
        // Upgrade requests keep hyper's upgrade handle (in the extensions) and are never retried.
        let mut original = Some(parts);
        let body = ReclaimBody::new(body);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let acquired = match held.take() {
                Some(res) => res,
                None => throttler.acquire(bytes).await,
            };
            let lease = match acquired {
                Ok(l) => l,
                Err(e) => return full(go_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())),
            };
            if let Some(a) = &admitted {
                a.mark();
            }
            if let (Some(p), Some(parts)) = (packed.take(), original.as_mut()) {
                p.restore(parts);
            }
            let tracker = Arc::clone(lease.tracker());
            let parts = match &original {
                Some(p) if retryable => clone_parts(p),
                _ => match original.take() {
                    Some(p) => p,
                    None => return full(go_error(StatusCode::BAD_GATEWAY, "request already sent")),
                },
            };
            let mut out = Request::from_parts(parts, body.clone());
            rewrite_for_dest(&mut out, tracker.authority.as_ref());
            if self.ingress {
                crate::proxy::as_ingress(&mut out, throttler.spec().protocol, retryable);
            }
            // Boxed: the hyper client's future is large and would otherwise be part of the
            // state of every held request, although it only exists once a pod was picked.
            let call = {
                let t = Arc::clone(&tracker);
                Box::pin(async move { t.upstream.forward(out).await })
            };
            // The lease stays taken until the pod has really answered, even when the client
            // gives up first (containerConcurrency holds at the app; `shared::http::detach`).
            let (result, lease) = Detached::new(call, lease, throttler.spec().timeout).await;
            match result {
                Ok(mut resp) => {
                    // Only the request log reads it: no cost on the request path otherwise.
                    if self.request_log.borrow().is_some() {
                        resp.extensions_mut()
                            .insert(crate::reqlog::PodAddr(tracker.dest.clone()));
                    }
                    if lease.waited {
                        let held = arrived.elapsed();
                        self.metrics.hold.observe(held.as_secs_f64());
                        if let Ok(v) = HeaderValue::from_str(&held.as_millis().to_string()) {
                            resp.headers_mut().insert(X_KNATIVE_ACTIVATOR_HOLD_MS, v);
                        }
                    }
                    if resp.extensions().get::<Tunnel>().is_some() {
                        let resp = resp.map(|b| b.map_err(BoxError::from).boxed_unsync());
                        return hold_until_end(resp, lease);
                    }
                    // One box for the body and the lease (not one each).
                    return resp
                        .map(|b| Guarded::new(b.map_err(BoxError::from), lease).boxed_unsync());
                }
                Err(e)
                    if e.nothing_sent()
                        && !e.is_local_exhaustion()
                        && retryable
                        && !lease.cluster_ip
                        && attempt < MAX_DIAL_ATTEMPTS =>
                {
                    tracing::info!(revision = %throttler.key, dest = %tracker.dest, error = %e, "pod refused the connection; ejecting and retrying");
                    drop(lease);
                    throttler.eject(&tracker.dest);
                }
                Err(e) => return proxy_error(&throttler.key, &e),
            }
        }
    }
}

fn proxy_error(key: &RevisionKey, e: &ProxyError) -> Response<RespBody> {
    tracing::warn!(revision = %key, error = %e, "error proxying the request");
    full(e.to_response())
}

/// Request parts for one attempt. The connection facts and hyper's upgrade handle (only present
/// on upgrade requests, which are never retried) are carried over.
fn clone_parts(parts: &http::request::Parts) -> http::request::Parts {
    let mut b = Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.clone())
        .version(parts.version);
    if let Some(h) = b.headers_mut() {
        *h = parts.headers.clone();
    }
    let (mut p, ()) = b
        .body(())
        .map(Request::into_parts)
        .unwrap_or_else(|_| Request::new(()).into_parts());
    if let Some(info) = parts.extensions.get::<ConnInfo>() {
        p.extensions.insert(*info);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_from_headers_and_host() {
        let none = std::collections::BTreeMap::new();
        let r = Request::builder()
            .header("knative-serving-namespace", "ns")
            .header("knative-serving-revision", "rev")
            .body(())
            .unwrap();
        assert_eq!(
            resolve_key(&r, "cluster.local", &none),
            RevisionKey::new("ns", "rev")
        );
        for host in ["rev.ns.svc.cluster.local", "rev.ns.svc.cluster.local:80"] {
            let r = Request::builder().header("host", host).body(()).unwrap();
            assert_eq!(
                resolve_key(&r, "cluster.local", &none),
                RevisionKey::new("ns", "rev"),
                "{host}"
            );
        }
        let r = Request::builder()
            .header("host", "rev.ns.svc.other")
            .body(())
            .unwrap();
        assert_eq!(
            resolve_key(&r, "cluster.local", &none),
            RevisionKey::new("", "")
        );
    }

    #[test]
    fn host_routes_ignore_port_and_case() {
        let mut routes = std::collections::BTreeMap::new();
        routes.insert(
            "hello.default.example.com".to_string(),
            RevisionKey::new("default", "hello-1"),
        );
        let r = Request::builder()
            .header("host", "Hello.default.example.com:8080")
            .body(())
            .unwrap();
        assert_eq!(
            resolve_key(&r, "cluster.local", &routes),
            RevisionKey::new("default", "hello-1")
        );
        // Headers still win.
        let r = Request::builder()
            .header("host", "hello.default.example.com")
            .header("knative-serving-namespace", "ns")
            .header("knative-serving-revision", "rev")
            .body(())
            .unwrap();
        assert_eq!(
            resolve_key(&r, "cluster.local", &routes),
            RevisionKey::new("ns", "rev")
        );
    }

    #[test]
    fn splits_pick_by_weight_and_headers_still_win() {
        let c = crate::catalog::Catalog::new();
        let (a, b) = (
            RevisionKey::new("default", "hello-1"),
            RevisionKey::new("default", "hello-2"),
        );
        c.set_split(
            "hello.default.example.com",
            crate::split::TrafficSplit::new(vec![(a.clone(), 75), (b.clone(), 25)]).unwrap(),
        );
        let snap = c.snapshot();
        let r = Request::builder()
            .header("host", "HELLO.default.example.com:80")
            .body(())
            .unwrap();
        let picks: Vec<RevisionKey> = (0..4)
            .map(|_| resolve_in_snapshot(&r, "cluster.local", &snap))
            .collect();
        assert_eq!(picks.iter().filter(|k| **k == a).count(), 3);
        assert_eq!(picks.iter().filter(|k| **k == b).count(), 1);
        let r = Request::builder()
            .header("host", "hello.default.example.com")
            .header("knative-serving-namespace", "ns")
            .header("knative-serving-revision", "rev")
            .body(())
            .unwrap();
        assert_eq!(
            resolve_in_snapshot(&r, "cluster.local", &snap),
            RevisionKey::new("ns", "rev")
        );
    }

    #[test]
    fn uri_length_without_formatting() {
        for u in ["/", "/a?b=1", "http://h:8080/p?q", "http://h/", "*"] {
            let uri: http::Uri = u.parse().unwrap();
            assert_eq!(uri_len(&uri), uri.to_string().len(), "{u}");
        }
    }

    #[test]
    fn html_escaping_like_go() {
        assert_eq!(
            html_escape("<a href=\"x\">'&"),
            "&lt;a href=&#34;x&#34;&gt;&#39;&amp;"
        );
    }
}
