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
//! Each stage is a tower layer over a boxed, always-ready service whose error type is
//! `Infallible` ([`StackService`]): every failure is already a response, because a service
//! error would abort the connection. [`Handler::service`] composes them with `ServiceBuilder`.
//! Permits and the in-flight mark ride in the response body (or the `101` tunnel) until it ends.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use dashmap::DashMap;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use shared::error::BoxError;
use shared::http::body::Guarded;
use shared::http::headers::{
    self, K_NETWORK_HASH, K_NETWORK_PROBE, KNATIVE_SERVING_NAMESPACE, KNATIVE_SERVING_REVISION,
    PROBE_ACTIVATOR, X_KNATIVE_ACTIVATOR_HOLD_MS,
};
use shared::http::proxy::{ProxyError, Tunnel, is_upgrade_request};
use shared::http::response::{empty, go_error};
use shared::http::server::ConnInfo;
use tokio::time::Instant;
use tower::Service;
use tower::util::BoxCloneSyncService;

use crate::catalog::RevisionKey;
use crate::metrics::Metrics;
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
    pub request_log: Option<Arc<shared::telemetry::reqlog::Template>>,
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
    h + req.uri().to_string().len() + HELD_REQUEST_OVERHEAD
}

/// The stack as one boxed, cloneable, always-ready service.
pub type StackService = BoxCloneSyncService<Request<Incoming>, Response<RespBody>, Infallible>;

/// Keeps `guard` alive until the response ends: the body's end, or the end of a `101` tunnel.
fn hold_until_end<G: Send + 'static>(resp: Response<RespBody>, guard: G) -> Response<RespBody> {
    if let Some(tunnel) = resp.extensions().get::<Tunnel>() {
        tunnel.hold(guard);
        return resp;
    }
    resp.map(|b| Guarded::new(b, guard).boxed_unsync())
}

/// A stage: answers some requests itself and hands the rest to `inner`.
fn stage<F, Fut>(inner: StackService, f: F) -> StackService
where
    F: Fn(StackService, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<RespBody>> + Send + 'static,
{
    BoxCloneSyncService::new(tower::service_fn(move |req| {
        let fut = f(inner.clone(), req);
        async move { Ok::<_, Infallible>(fut.await) }
    }))
}

/// Calls the next stage. Deliberately not `async`: the stage's boxed future is created here, so
/// the caller awaits a 16-byte box instead of embedding a `Oneshot` holding a second copy of the
/// request (that made every stage's future ~2 KiB, ~11 KiB per held request; docs/activator.md).
fn call(
    mut inner: StackService,
    req: Request<Incoming>,
) -> impl Future<Output = Response<RespBody>> + Send {
    // Every stage is always ready (module docs), so `call` needs no `poll_ready` first.
    let fut = inner.call(req);
    async move {
        match fut.await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }
}

/// Stage 1: kubelet health.
fn health_layer(
    health: Arc<Health>,
) -> impl tower::Layer<StackService, Service = StackService> + Clone {
    tower::layer::layer_fn(move |inner| {
        let health = Arc::clone(&health);
        stage(inner, move |inner, req| {
            let health = Arc::clone(&health);
            async move {
                if !headers::is_kubelet_probe(req.headers()) {
                    return call(inner, req).await;
                }
                full(match health.unhealthy_reason() {
                    None => empty(StatusCode::OK),
                    Some(reason) => go_error(StatusCode::INTERNAL_SERVER_ERROR, reason),
                })
            }
        })
    })
}

/// Stages 2–3: `K-Network-Probe: probe` (hash echo) and `K-Network-Probe: activator`.
fn probe_layer() -> impl tower::Layer<StackService, Service = StackService> + Clone {
    tower::layer::layer_fn(|inner| {
        stage(inner, |inner, mut req: Request<Incoming>| async move {
            if headers::is_kprobe(req.headers()) {
                return full(
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
                );
            }
            req.headers_mut().remove(K_NETWORK_HASH);
            let Some(v) = req.headers().get(K_NETWORK_PROBE).filter(|v| !v.is_empty()) else {
                return call(inner, req).await;
            };
            full(if v.as_bytes() == PROBE_ACTIVATOR.as_bytes() {
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
            })
        })
    })
}

/// Stage 3b: spans `handle` → `throttler_try` / `activator_proxy` → `<METHOD> <path>`
/// (activator.md §8.5). Not a stage at all when tracing is off, so held requests carry nothing.
fn trace_layer(
    tracer: shared::telemetry::otlp::Tracer,
) -> impl tower::Layer<StackService, Service = StackService> + Clone {
    use shared::telemetry::otlp::request::{ACTIVATOR, RequestSpans};
    tower::layer::layer_fn(move |inner: StackService| {
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
fn resolve_layer(
    h: Arc<Handler>,
) -> impl tower::Layer<StackService, Service = StackService> + Clone {
    tower::layer::layer_fn(move |inner| {
        let h = Arc::clone(&h);
        stage(inner, move |inner, mut req: Request<Incoming>| {
            let h = Arc::clone(&h);
            async move {
                if let Some(p) = req.extensions().get::<Parked>() {
                    // Held outside hyper: resolved (and found) when it arrived.
                    let throttler = Arc::clone(p.throttler());
                    req.extensions_mut().insert(throttler);
                    return call(inner, req).await;
                }
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
        })
    })
}

/// Stage 4b: the request log, when enabled; the line is written when the response ends.
fn reqlog_layer(
    template: Option<Arc<shared::telemetry::reqlog::Template>>,
) -> impl tower::Layer<StackService, Service = StackService> + Clone {
    tower::layer::layer_fn(move |inner: StackService| {
        let Some(template) = template.clone() else {
            return inner;
        };
        stage(inner, move |inner, req: Request<Incoming>| {
            let start = req
                .extensions()
                .get::<Parked>()
                .map_or_else(Instant::now, Parked::arrived);
            let line = throttler_of(&req)
                .map(|t| crate::reqlog::Line::start(Arc::clone(&template), &req, &t, start));
            let fut = call(inner, req);
            async move {
                let resp = fut.await;
                let Some(mut line) = line else {
                    return resp;
                };
                line.set_code(resp.status().as_u16());
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

/// Stage 5: concurrency reporting, held until the response ends.
fn report_layer(
    reporter: Arc<Reporter>,
) -> impl tower::Layer<StackService, Service = StackService> + Clone {
    tower::layer::layer_fn(move |inner| {
        let reporter = Arc::clone(&reporter);
        stage(inner, move |inner, req| {
            let reporter = Arc::clone(&reporter);
            async move {
                let Some(t) = throttler_of(&req) else {
                    return internal_error();
                };
                // A request held outside hyper was reported when it arrived.
                let in_flight = match req.extensions().get::<Parked>() {
                    Some(p) => p
                        .take_in_flight()
                        .unwrap_or_else(|| reporter.request_in(&t.key)),
                    None => reporter.request_in(&t.key),
                };
                hold_until_end(call(inner, req).await, in_flight)
            }
        })
    })
}

/// Stage 6: revision timeouts. Until the response head: `timeoutSeconds` (and
/// `responseStartTimeoutSeconds`) → 504; after it, the body keeps the overall deadline
/// (measured from arrival) and the idle timer. Tunnels are not cut (docs/activator.md).
fn timeout_layer() -> impl tower::Layer<StackService, Service = StackService> + Clone {
    tower::layer::layer_fn(|inner| {
        stage(inner, |inner, req| async move {
            let Some(t) = throttler_of(&req) else {
                return internal_error();
            };
            let spec = t.spec();
            // A request held outside hyper counts from its arrival, like one held inside.
            let parked = req.extensions().get::<Parked>();
            if parked.is_some_and(Parked::timed_out) {
                return timed_out();
            }
            let arrived = parked.map_or_else(Instant::now, Parked::arrived);
            let deadline = arrived + spec.timeout;
            let limit = spec
                .response_start_timeout
                .map_or(spec.timeout, |r| r.min(spec.timeout));
            match tokio::time::timeout_at(arrived + limit, call(inner, req)).await {
                Ok(resp) if resp.extensions().get::<Tunnel>().is_some() => resp,
                Ok(resp) => {
                    resp.map(|b| TimeoutBody::new(b, deadline, spec.idle_timeout).boxed_unsync())
                }
                Err(_) => timed_out(),
            }
        })
    })
}

/// Stage 0: a request that would wait for capacity waits *before* entering the stages, so
/// while it is held only the request and a small waiter are alive (≈ 1 KiB), not the six stage
/// futures (≈ 5.8 KiB; benches/RESULTS.md). This is how h2c streams and later requests of a
/// kept-alive HTTP/1 connection are held; the first request of a new HTTP/1 connection is held
/// the same way, outside hyper ([`crate::park`]). The outcome rides into the stages as a
/// [`Parked`] ticket, and each stage uses it as it does for a parked connection (revision,
/// concurrency mark, arrival time for the timeouts and the request log, lease or refusal).
/// Requests that may not be held ahead (probes, splits, tracing on: [`crate::park::holdable`])
/// and requests with capacity now go through the stages directly.
fn hold_ahead(h: Arc<Handler>, stack: StackService) -> StackService {
    BoxCloneSyncService::new(tower::service_fn(move |req: Request<Incoming>| {
        let Some(throttler) = crate::park::holdable(&h, &req) else {
            // Always ready (module docs): no `poll_ready` needed.
            return futures_util::future::Either::Left(stack.clone().call(req));
        };
        let wait = crate::park::hold(&h, throttler, head_bytes(&req));
        let (mut parts, body) = req.into_parts();
        compact_head(&mut parts);
        let mut req = Request::from_parts(parts, body);
        let stack = stack.clone();
        futures_util::future::Either::Right(async move {
            req.extensions_mut().insert(wait.await);
            Ok(call(stack, req).await)
        })
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
        let activation = {
            let h = Arc::clone(&self);
            BoxCloneSyncService::new(tower::service_fn(move |req: Request<Incoming>| {
                let h = Arc::clone(&h);
                async move {
                    let Some(t) = throttler_of(&req) else {
                        return Ok(internal_error());
                    };
                    Ok::<_, Infallible>(h.activate(&t, req).await)
                }
            }))
        };
        let stack = tower::ServiceBuilder::new()
            // Kubelet probes first: they must never be counted, routed or throttled.
            .layer(health_layer(Arc::clone(&self.health)))
            // Probes next: the KPA's scale-to-zero handshake must work for any host.
            .layer(probe_layer())
            // Spans (when tracing is on) cover everything proxied, 404s included.
            .layer(trace_layer(self.tracer.clone()))
            // Resolution before counting: unknown revisions are 404 and never reported.
            .layer(resolve_layer(Arc::clone(&self)))
            // Request log inside resolution (as Knative's): 404s and probes are not logged.
            .layer(reqlog_layer(self.request_log.clone()))
            // Reporting wraps the timeout and the throttler, so held requests count.
            .layer(report_layer(Arc::clone(&self.reporter)))
            // The timeout wraps throttler and proxy: the clock includes the time held.
            .layer(timeout_layer())
            .service(activation);
        hold_ahead(self, stack)
    }

    /// Handles one request through the whole stack (tests and embedding).
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<RespBody> {
        call(self.service(), req).await
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
        if held.is_none() && throttler.likely_to_wait() {
            compact_head(&mut parts);
        }
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
            let dest = lease.tracker().dest.clone();
            let parts = match &original {
                Some(p) if retryable => clone_parts(p),
                _ => match original.take() {
                    Some(p) => p,
                    None => return full(go_error(StatusCode::BAD_GATEWAY, "request already sent")),
                },
            };
            let mut out = Request::from_parts(parts, body.clone());
            rewrite_for_dest(&mut out, &dest);
            // Boxed: the hyper client's future is large and would otherwise be part of the
            // state of every held request, although it only exists once a pod was picked.
            match Box::pin(lease.tracker().upstream.forward(out)).await {
                Ok(mut resp) => {
                    if lease.waited {
                        let held = arrived.elapsed();
                        self.metrics.hold.observe(held.as_secs_f64());
                        if let Ok(v) = HeaderValue::from_str(&held.as_millis().to_string()) {
                            resp.headers_mut().insert(X_KNATIVE_ACTIVATOR_HOLD_MS, v);
                        }
                    }
                    let resp = resp.map(|b| b.map_err(BoxError::from).boxed_unsync());
                    return hold_until_end(resp, lease);
                }
                Err(e)
                    if e.nothing_sent()
                        && retryable
                        && !lease.cluster_ip
                        && attempt < MAX_DIAL_ATTEMPTS =>
                {
                    tracing::info!(revision = %throttler.key, dest = %dest, error = %e, "pod refused the connection; ejecting and retrying");
                    drop(lease);
                    throttler.eject(&dest);
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

/// Copies the header values and the URI of a request that is about to be held into one small
/// buffer of their own. hyper parses them as slices of the connection's 8 KiB read buffer, and
/// while any slice is alive the whole buffer stays allocated; hyper has already allocated a new
/// one for the next read, so without this a held HTTP/1 request pins two read buffers.
fn compact_head(parts: &mut http::request::Parts) {
    let uri = parts.uri.to_string();
    let len: usize = parts.headers.values().map(HeaderValue::len).sum::<usize>() + uri.len();
    let mut buf = bytes::BytesMut::with_capacity(len);
    buf.extend_from_slice(uri.as_bytes());
    let uri_end = buf.len();
    for v in parts.headers.values() {
        buf.extend_from_slice(v.as_bytes());
    }
    let buf = buf.freeze();
    if let Ok(u) = http::Uri::from_maybe_shared(buf.slice(..uri_end)) {
        parts.uri = u;
    }
    let mut at = uri_end;
    for v in parts.headers.values_mut() {
        let end = at + v.len();
        // The bytes were a valid value a moment ago, so this cannot fail; keep the old value if
        // it somehow does.
        if let Ok(mut copy) = HeaderValue::from_maybe_shared(buf.slice(at..end)) {
            copy.set_sensitive(v.is_sensitive());
            *v = copy;
        }
        at = end;
    }
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
    fn html_escaping_like_go() {
        assert_eq!(
            html_escape("<a href=\"x\">'&"),
            "&lt;a href=&#34;x&#34;&gt;&#39;&amp;"
        );
    }
}
