//! The outermost layer: counts requests in flight (for shutdown), writes the request log and
//! records request metrics once the response body has ended (or the tunnel closed), as Go's
//! handlers do when they return. Probes (`ANY_PROBE`) are neither logged (unless
//! `enableProbeRequestLog`) nor measured.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shared::BoxError;
use shared::http::headers::{self, KNATIVE_SERVING_DEFAULT_ROUTE, KNATIVE_SERVING_TAG};
use shared::http::proxy::Tunnel;
use shared::telemetry::trace::TraceContext;
use tower::Service;

use crate::reqlog::{Entry, Revision, Template, TlsState};
use crate::stack::{InFlightCounter, InFlightGuard, QpBody, Resp};

/// Knative's histogram buckets for request durations, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    http_response_status_code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    http_request_method: &'static str,
    url_scheme: &'static str,
    server_address: String,
    /// Absent (empty) when the Host names no port or the scheme's default one, as otelhttp.
    server_port: Option<u16>,
    network_protocol_name: &'static str,
    network_protocol_version: &'static str,
    http_response_status_code: u16,
    kn_route_tag: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The user-facing request metrics (`queue-proxy.md` §7.4), Prometheus names.
#[derive(Debug)]
pub struct Metrics {
    invocation: Family<StatusLabels, Histogram, fn() -> Histogram>,
    server: Family<ServerLabels, Histogram, fn() -> Histogram>,
    queue_depth: Gauge,
}

impl Metrics {
    /// Registers the metrics in `reg`. The 200 series exist from start, at 0.
    pub fn register(reg: &mut Registry) -> Self {
        let m = Self {
            invocation: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            server: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            queue_depth: Gauge::default(),
        };
        reg.register(
            shared::telemetry::metrics::names::INVOCATION_DURATION,
            "The duration of task execution",
            m.invocation.clone(),
        );
        reg.register(
            shared::telemetry::metrics::names::HTTP_SERVER_REQUEST_DURATION,
            "Duration of HTTP server requests.",
            m.server.clone(),
        );
        reg.register(
            shared::telemetry::metrics::names::QUEUE_DEPTH,
            "Number of current requests in the queue",
            m.queue_depth.clone(),
        );
        let _ = m.invocation.get_or_create(&StatusLabels {
            http_response_status_code: 200,
        });
        m
    }
}

/// The method label as OpenTelemetry's semantic conventions (and so otelhttp) record it: the
/// nine standard methods, anything else `_OTHER`, so a client cannot grow the scrape by sending
/// made-up methods.
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::CONNECT => "CONNECT",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::TRACE => "TRACE",
        http::Method::PATCH => "PATCH",
        _ => "_OTHER",
    }
}

/// `server.address` and `server.port` as otelhttp derives them from the request's Host: the
/// port only when it is given and not the scheme's default.
pub fn server_labels<B>(req: &Request<B>, tls: bool) -> (String, Option<u16>) {
    let host = req
        .uri()
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| headers::first(req.headers(), &http::header::HOST))
        .unwrap_or("");
    let (name, port) = match host.strip_prefix('[').and_then(|r| r.split_once(']')) {
        Some((h, rest)) => (h, rest.strip_prefix(':')),
        None => match host.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        },
    };
    let port = port
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|&p| p != if tls { 443 } else { 80 });
    (name.to_owned(), port)
}

/// Knative's route-tag label (§7.4).
pub fn route_tag(h: &http::HeaderMap) -> String {
    let tag = headers::first(h, &KNATIVE_SERVING_TAG).unwrap_or("");
    let dr = headers::first(h, &KNATIVE_SERVING_DEFAULT_ROUTE).unwrap_or("");
    match (tag.is_empty(), dr.is_empty()) {
        (true, true) => "kn:disabled".into(),
        (true, false) => "kn:default".into(),
        (false, _) if dr == "true" => "kn:undefined".into(),
        (false, _) => tag.into(),
    }
}

/// Observability settings and state shared by every request; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Observer {
    /// Requests in flight on the serving port.
    pub in_flight: InFlightCounter,
    metrics: Option<Arc<Metrics>>,
    log: Option<Arc<(Template, Revision)>>,
    log_probes: bool,
}

impl Observer {
    /// An observer; `metrics` and `log` are optional.
    pub fn new(
        metrics: Option<Arc<Metrics>>,
        log: Option<(Template, Revision)>,
        log_probes: bool,
    ) -> Self {
        Self {
            in_flight: InFlightCounter::default(),
            metrics,
            log: log.map(Arc::new),
            log_probes,
        }
    }

    /// The queue-depth gauge, when metrics are on.
    pub fn queue_depth_gauge(&self) -> Option<Gauge> {
        self.metrics.as_ref().map(|m| m.queue_depth.clone())
    }
}

/// The [`Observer`] as a layer.
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    obs: Observer,
}

impl<S> Observe<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, obs: Observer) -> Self {
        Self { inner, obs }
    }
}

/// What is recorded when the response ends.
#[derive(Debug)]
struct Record {
    _in_flight: InFlightGuard,
    start: Instant,
    code: u16,
    size: u64,
    metrics: Option<(Arc<Metrics>, ServerLabels)>,
    log: Option<(Arc<(Template, Revision)>, Entry)>,
}

impl Drop for Record {
    fn drop(&mut self) {
        let latency = self.start.elapsed().as_secs_f64();
        if let Some((m, mut labels)) = self.metrics.take() {
            labels.http_response_status_code = self.code;
            m.server.get_or_create(&labels).observe(latency);
            m.invocation
                .get_or_create(&StatusLabels {
                    http_response_status_code: self.code,
                })
                .observe(latency);
        }
        if let Some((t, mut e)) = self.log.take() {
            e.code = self.code;
            e.size = self.size;
            e.latency = latency;
            let line = t.0.render(&e, &t.1);
            // Request logs go to stdout, one write per line, as Knative's.
            let _ = std::io::stdout().lock().write_all(line.as_bytes());
        }
    }
}

fn proto(v: Version) -> (&'static str, &'static str) {
    match v {
        Version::HTTP_2 => ("HTTP/2.0", "2"),
        Version::HTTP_10 => ("HTTP/1.0", "1.0"),
        _ => ("HTTP/1.1", "1.1"),
    }
}

impl<S, B> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: Body + Send + 'static,
{
    type Response = Response<ObservedBody>;
    type Error = Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let start = Instant::now();
        let in_flight = self.obs.in_flight.enter();
        let probe = headers::is_any_probe(req.headers());
        let metrics = match (&self.obs.metrics, probe) {
            (Some(m), false) => Some((m.clone(), {
                let tls = req.extensions().get::<crate::tls::TlsInfo>().is_some();
                let (server_address, server_port) = server_labels(&req, tls);
                ServerLabels {
                    http_request_method: method_label(req.method()),
                    url_scheme: if tls { "https" } else { "http" },
                    server_address,
                    server_port,
                    network_protocol_name: "http",
                    network_protocol_version: proto(req.version()).1,
                    http_response_status_code: 0,
                    kn_route_tag: route_tag(req.headers()),
                }
            })),
            _ => None,
        };
        let log = match &self.obs.log {
            Some(l) if !probe || self.obs.log_probes => {
                let entry = Entry {
                    trace_id: TraceContext::extract(req.headers())
                        .map(|t| t.trace_id_hex())
                        .unwrap_or_default(),
                    tls: req
                        .extensions()
                        .get::<crate::tls::TlsInfo>()
                        .map(|t| TlsState {
                            version: t.version,
                            cipher_suite: t.cipher_suite,
                            alpn: t.alpn.clone(),
                            server_name: t.server_name.clone(),
                        }),
                    ..l.0.entry(&req)
                };
                Some((l.clone(), entry))
            }
            _ => None,
        };
        ObserveFuture {
            inner: self.inner.call(req),
            pending: Some(Pending {
                in_flight,
                start,
                metrics,
                log,
            }),
        }
    }
}

/// What [`Observe`] keeps until the response head: a request whose future is dropped before
/// (client gone) is not recorded, as before.
struct Pending {
    in_flight: InFlightGuard,
    start: Instant,
    metrics: Option<(Arc<Metrics>, ServerLabels)>,
    log: Option<(Arc<(Template, Revision)>, Entry)>,
}

pin_project_lite::pin_project! {
    /// [`Observe`]'s response future. Hand-written rather than a boxed `async` block: it wraps
    /// every request on the serving port (one allocation less each; see
    /// `crate::stack::RescueFuture`).
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F: Future<Output = Result<Resp, Infallible>>> Future for ObserveFuture<F> {
    type Output = Result<Response<ObservedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(resp) = ready!(this.inner.poll(cx));
        let record = this.pending.take().map(|p| Record {
            _in_flight: p.in_flight,
            start: p.start,
            code: resp.status().as_u16(),
            size: 0,
            metrics: p.metrics,
            log: p.log,
        });
        let record = match (record, resp.extensions().get::<Tunnel>()) {
            (Some(record), Some(t)) => {
                t.hold(record);
                None
            }
            (record, _) => record,
        };
        Poll::Ready(Ok(resp.map(|b| ObservedBody { inner: b, record })))
    }
}

/// The serving port's response body: counts bytes and records the request when it ends.
#[derive(Debug)]
pub struct ObservedBody {
    inner: QpBody,
    record: Option<Record>,
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(d), Some(r)) = (f.data_ref(), self.record.as_mut()) {
                    r.size += d.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => {
                // Go's metrics record a mid-stream failure as 500.
                if let Some(r) = self.record.as_mut() {
                    r.code = 500;
                }
                self.record = None;
            }
            Poll::Ready(None) => self.record = None,
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
