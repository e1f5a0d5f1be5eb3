//! Optional span export (OTLP over HTTP/protobuf or gRPC, or JSON lines on stdout), off by default.
//!
//! Why our own exporter instead of `opentelemetry-otlp`: the SDK brings its own runtime glue, a
//! batch processor thread and (for gRPC) tonic, which is more code in every sidecar than the few
//! spans per request we emit. We already have prost, hyper's h1/h2 client and tokio; the OTLP
//! messages below are the subset of `opentelemetry/proto/{trace,common,resource}/v1` we fill,
//! with the upstream field numbers.
//!
//! The request path never waits on export: [`Tracer::record`] is a `try_send` into a bounded
//! queue, and a full queue drops the span (counted, logged at most once per batch).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::trace::TraceContext;

pub mod collector;
pub mod push;
pub mod request;

// === wire messages (opentelemetry-proto v1) ===

/// `collector.trace.v1.ExportTraceServiceRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct ExportTraceServiceRequest {
    /// Spans grouped by resource.
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

/// `trace.v1.ResourceSpans`.
#[derive(Clone, PartialEq, Message)]
pub struct ResourceSpans {
    /// The emitting process.
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    /// Spans grouped by instrumentation scope.
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
}

/// `resource.v1.Resource`.
#[derive(Clone, PartialEq, Message)]
pub struct Resource {
    /// Resource attributes (`service.name`, …).
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

/// `trace.v1.ScopeSpans`.
#[derive(Clone, PartialEq, Message)]
pub struct ScopeSpans {
    /// The instrumentation scope.
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    /// The spans.
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<Span>,
}

/// `common.v1.InstrumentationScope`.
#[derive(Clone, PartialEq, Message)]
pub struct InstrumentationScope {
    /// Scope name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Scope version.
    #[prost(string, tag = "2")]
    pub version: String,
}

/// `trace.v1.Span` (the fields we fill).
#[derive(Clone, PartialEq, Message)]
pub struct Span {
    /// 16 bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    /// 8 bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub span_id: Vec<u8>,
    /// 8 bytes, empty for a root span.
    #[prost(bytes = "vec", tag = "4")]
    pub parent_span_id: Vec<u8>,
    /// Span name.
    #[prost(string, tag = "5")]
    pub name: String,
    /// `SpanKind`: 1 internal, 2 server, 3 client.
    #[prost(int32, tag = "6")]
    pub kind: i32,
    /// Start, ns since the Unix epoch.
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    /// End, ns since the Unix epoch.
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    /// Attributes.
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    /// Status.
    #[prost(message, optional, tag = "15")]
    pub status: Option<Status>,
}

/// `trace.v1.Status`.
#[derive(Clone, PartialEq, Message)]
pub struct Status {
    /// Message (errors only).
    #[prost(string, tag = "2")]
    pub message: String,
    /// 0 unset, 1 ok, 2 error.
    #[prost(int32, tag = "3")]
    pub code: i32,
}

/// `common.v1.KeyValue`.
#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    /// Key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// `common.v1.AnyValue` (the scalar variants).
#[derive(Clone, PartialEq, Message)]
pub struct AnyValue {
    /// The value.
    #[prost(oneof = "any_value::Value", tags = "1, 2, 3, 4")]
    pub value: Option<any_value::Value>,
}

/// `AnyValue`'s oneof.
pub mod any_value {
    /// A scalar value.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// `string_value`.
        #[prost(string, tag = "1")]
        StringValue(String),
        /// `bool_value`.
        #[prost(bool, tag = "2")]
        BoolValue(bool),
        /// `int_value`.
        #[prost(int64, tag = "3")]
        IntValue(i64),
        /// `double_value`.
        #[prost(double, tag = "4")]
        DoubleValue(f64),
    }
}

// === span data ===

/// `SpanKind` values used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// Work inside the proxy (queue wait, the proxy hop).
    Internal = 1,
    /// The incoming request.
    Server = 2,
    /// The request to the upstream.
    Client = 3,
}

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    /// A string.
    Str(Cow<'static, str>),
    /// An integer.
    Int(i64),
}

/// A finished span, as the request path hands it over.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanData {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// This span's id.
    pub span_id: [u8; 8],
    /// Parent span id, `None` for a root.
    pub parent: Option<[u8; 8]>,
    /// Name (`GET`, `kn.queueproxy.proxy`, …).
    pub name: Cow<'static, str>,
    /// Kind.
    pub kind: SpanKind,
    /// Start.
    pub start: SystemTime,
    /// End.
    pub end: SystemTime,
    /// Attributes.
    pub attributes: Vec<(&'static str, Attr)>,
    /// `Some(message)` marks the span as an error.
    pub error: Option<String>,
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

impl SpanData {
    fn to_proto(&self) -> Span {
        Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            parent_span_id: self.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: self.name.to_string(),
            kind: self.kind as i32,
            start_time_unix_nano: nanos(self.start),
            end_time_unix_nano: nanos(self.end),
            attributes: self
                .attributes
                .iter()
                .map(|(k, v)| {
                    kv(
                        k,
                        match v {
                            Attr::Str(s) => any_value::Value::StringValue(s.to_string()),
                            Attr::Int(i) => any_value::Value::IntValue(*i),
                        },
                    )
                })
                .collect(),
            status: self.error.as_ref().map(|m| Status {
                message: m.clone(),
                code: 2,
            }),
        }
    }

    /// One JSON line (the `stdout` protocol), ids in hex as OTel's stdout exporter prints them.
    pub fn to_json(&self) -> String {
        fn hex(b: &[u8]) -> String {
            b.iter().map(|b| format!("{b:02x}")).collect()
        }
        let attrs: serde_json::Map<String, serde_json::Value> = self
            .attributes
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    match v {
                        Attr::Str(s) => serde_json::Value::from(s.as_ref()),
                        Attr::Int(i) => serde_json::Value::from(*i),
                    },
                )
            })
            .collect();
        serde_json::json!({
            "Name": self.name,
            "SpanContext": {"TraceID": hex(&self.trace_id), "SpanID": hex(&self.span_id)},
            "Parent": {"SpanID": self.parent.map(|p| hex(&p)).unwrap_or_default()},
            "SpanKind": self.kind as i32,
            "StartTime": nanos(self.start),
            "EndTime": nanos(self.end),
            "Attributes": attrs,
            "Status": {"Code": if self.error.is_some() { "Error" } else { "Unset" },
                       "Description": self.error.clone().unwrap_or_default()},
        })
        .to_string()
    }
}

// === configuration ===

/// How spans leave the process (`tracing.protocol`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/HTTP with protobuf bodies: `POST <endpoint>` (`/v1/traces` appended to a bare
    /// `host:port` or base URL).
    HttpProtobuf,
    /// OTLP/gRPC over h2c: `POST /opentelemetry.proto.collector.trace.v1.TraceService/Export`.
    Grpc,
    /// One JSON line per span on stdout (always samples, as Knative's stdout exporter).
    Stdout,
}

/// Exporter settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportConfig {
    /// The protocol.
    pub protocol: Protocol,
    /// Collector URL; ignored for `stdout`.
    pub endpoint: Option<Uri>,
    /// `samplingRate`: ≥ 1 always samples (parent ignored), ≤ 0 never, else parent-based ratio.
    pub sampling_rate: f64,
    /// `service.name` resource attribute.
    pub service_name: String,
    /// Extra resource attributes (`OTEL_RESOURCE_ATTRIBUTES`, Knative's pod/revision labels).
    pub resource: Vec<(String, String)>,
    /// PEM file of the CAs trusted for an `https` endpoint instead of the system's
    /// (`OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE` / `OTEL_EXPORTER_OTLP_CERTIFICATE`, as the OTel
    /// SDK Knative uses reads them).
    pub ca_file: Option<std::path::PathBuf>,
}

/// Why an exporter could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Unknown `tracing.protocol`.
    #[error("unsupported tracing protocol {0:?} (accepted: none, grpc, http/protobuf, stdout)")]
    Protocol(String),
    /// Missing or unusable endpoint.
    #[error("tracing endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The value given.
        endpoint: String,
        /// Why it was refused.
        reason: &'static str,
    },
}

impl ExportConfig {
    /// Builds the settings from Knative's `tracing` keys and the OTel env overrides
    /// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is used as given; `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// gets the signal path appended, as the OTel spec says). `Ok(None)` means tracing is off.
    ///
    /// Endpoints as knative.dev/pkg hands them to the OTel SDK: a URL keeps its scheme (`https`
    /// exports over TLS); a bare `host:port` whose host is a name (Go parses it as an opaque
    /// URL) gets `https://`, so it is TLS too; a bare `ip:port` (which Go's URL parser rejects)
    /// stays plain HTTP.
    ///
    /// # Errors
    /// An unknown protocol, or an endpoint that is missing or not a URL.
    pub fn from_knative(
        protocol: &str,
        endpoint: Option<&str>,
        sampling_rate: f64,
        traces_endpoint_env: Option<&str>,
        base_endpoint_env: Option<&str>,
    ) -> Result<Option<Self>, ExportError> {
        let protocol = match protocol {
            "" | "none" => return Ok(None),
            "http/protobuf" => Protocol::HttpProtobuf,
            "grpc" => Protocol::Grpc,
            "stdout" => Protocol::Stdout,
            other => return Err(ExportError::Protocol(other.to_owned())),
        };
        let endpoint = if protocol == Protocol::Stdout {
            None
        } else {
            let (raw, full) = match (traces_endpoint_env, base_endpoint_env, endpoint) {
                (Some(t), _, _) if !t.is_empty() => (t, true),
                (_, Some(b), _) if !b.is_empty() => (b, false),
                (_, _, Some(e)) if !e.is_empty() => (e, false),
                _ => {
                    return Err(ExportError::Endpoint {
                        endpoint: String::new(),
                        reason: "required when the protocol is grpc or http/protobuf",
                    });
                }
            };
            Some(endpoint_uri(raw, full, &protocol, Signal::Traces)?)
        };
        Ok(Some(Self {
            protocol,
            endpoint,
            sampling_rate,
            service_name: String::new(),
            resource: Vec::new(),
            ca_file: None,
        }))
    }
}

/// What an endpoint receives: the OTLP/HTTP path and the gRPC method differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    Traces,
    Metrics,
}

pub(crate) fn endpoint_uri(
    raw: &str,
    full: bool,
    protocol: &Protocol,
    signal: Signal,
) -> Result<Uri, ExportError> {
    let bad = |reason| ExportError::Endpoint {
        endpoint: raw.to_owned(),
        reason,
    };
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else if opaque_host_port(raw) {
        format!("https://{raw}")
    } else {
        format!("http://{raw}")
    };
    let uri: Uri = with_scheme.parse().map_err(|_| bad("not a URL"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => "http",
        Some("https") => "https",
        _ => return Err(bad("scheme must be http or https")),
    };
    let authority = uri.authority().ok_or_else(|| bad("no host"))?.clone();
    let path = match (protocol, signal) {
        (Protocol::Grpc, Signal::Traces) => {
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export".to_owned()
        }
        (Protocol::Grpc, Signal::Metrics) => {
            "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export".to_owned()
        }
        // A URL with a path is used as given (the OTel SDK's `WithEndpointURL`, which Knative
        // calls): upstream's own examples name `…/v1/traces` and `…/api/v1/otlp/v1/metrics`.
        _ if full || !matches!(uri.path(), "" | "/") => uri.path().to_owned(),
        (_, Signal::Traces) => format!("{}/v1/traces", uri.path().trim_end_matches('/')),
        (_, Signal::Metrics) => format!("{}/v1/metrics", uri.path().trim_end_matches('/')),
    };
    Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| bad("not a URL"))
}

/// Whether Go's `url.Parse` reads `raw` as `scheme:opaque` (a name, then `:` and more): what
/// knative.dev/pkg turns into `https://raw`.
fn opaque_host_port(raw: &str) -> bool {
    let Some((head, rest)) = raw.split_once(':') else {
        return false;
    };
    let mut chars = head.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && !rest.starts_with('/')
}

/// The exporter's HTTP client: plain HTTP, and TLS for `https` endpoints with the system's
/// roots or `ca_file`'s. gRPC offers only `h2` in ALPN.
pub(crate) type ExportClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

pub(crate) fn export_client(grpc: bool, ca_file: Option<&std::path::Path>) -> ExportClient {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let custom = |roots: rustls::RootCertStore| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring implements the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth()
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            match CertificateDer::pem_file_iter(path) {
                Ok(certs) => {
                    for c in certs.flatten() {
                        let _ = roots.add(c);
                    }
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    path = %path.display(),
                    "cannot read the OTLP exporter's CA file; https exports will fail"
                ),
            }
            builder.with_tls_config(custom(roots))
        }
        None => builder.with_native_roots().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no system CA certificates; https exports will fail");
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(custom(rustls::RootCertStore::empty()))
        }),
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let connector = if grpc {
        builder.https_or_http().enable_http2().wrap_connector(http)
    } else {
        builder
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http)
    };
    let mut b = Client::builder(TokioExecutor::new());
    if grpc {
        b.http2_only(true);
    }
    b.build(connector)
}

// === sampling ===

/// Knative's sampler: rate ≥ 1 → always (parent ignored); ≤ 0 → never; otherwise
/// ParentBased(TraceIDRatio(rate)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    rate: f64,
}

impl Sampler {
    /// A sampler for `rate`.
    pub fn new(rate: f64) -> Self {
        Self { rate }
    }

    /// Whether a span in `trace_id` with the given parent is sampled.
    pub fn sample(&self, parent: Option<&TraceContext>, trace_id: &[u8; 16]) -> bool {
        if self.rate >= 1.0 {
            return true;
        }
        if self.rate <= 0.0 {
            return false;
        }
        if let Some(p) = parent {
            return p.sampled;
        }
        // OTel's TraceIDRatioBased: the low 8 bytes, shifted right once, below rate × 2^63.
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        let x = u64::from_be_bytes(low) >> 1;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let bound = (self.rate * (1u64 << 63) as f64) as u64;
        x < bound
    }
}

/// A new random span id (never all zero).
pub fn new_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
    }
}

/// A new random trace id (never all zero).
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id: [u8; 16] = rand::random();
        if id != [0; 16] {
            return id;
        }
    }
}

// === tracer ===

/// Spans queued for export at most; beyond, spans are dropped (never blocking a request).
const QUEUE: usize = 4096;
/// Spans per export request.
const BATCH: usize = 512;
/// How long a span may wait for its batch.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The request path's handle: cheap to clone; disabled unless an exporter runs.
#[derive(Clone, Debug, Default)]
pub struct Tracer {
    inner: Option<Arc<TracerInner>>,
}

#[derive(Debug)]
struct TracerInner {
    tx: mpsc::Sender<SpanData>,
    sampler: Sampler,
    dropped: AtomicU64,
}

impl Tracer {
    /// A tracer that records nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Whether spans are recorded at all.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Whether a request with `parent` (and `trace_id`) should be recorded.
    pub fn sample(&self, parent: Option<&TraceContext>, trace_id: &[u8; 16]) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|i| i.sampler.sample(parent, trace_id))
    }

    /// Hands a finished span to the exporter; drops it if the queue is full.
    pub fn record(&self, span: SpanData) {
        if let Some(i) = &self.inner
            && i.tx.try_send(span).is_err()
        {
            i.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Spans dropped because the export queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |i| i.dropped.load(Ordering::Relaxed))
    }

    /// Starts the exporter task and returns its tracer. The task flushes what it holds when
    /// `shutdown` is cancelled, then ends.
    pub fn start(config: ExportConfig, shutdown: CancellationToken) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let sampler = if config.protocol == Protocol::Stdout {
            Sampler::new(1.0)
        } else {
            Sampler::new(config.sampling_rate)
        };
        let inner = Arc::new(TracerInner {
            tx,
            sampler,
            dropped: AtomicU64::new(0),
        });
        tokio::spawn(export_loop(config, rx, shutdown));
        Self { inner: Some(inner) }
    }
}

/// Encodes a batch as one `ExportTraceServiceRequest`.
pub fn encode_batch(config: &ExportConfig, spans: &[SpanData]) -> Vec<u8> {
    let mut attributes = vec![kv(
        "service.name",
        any_value::Value::StringValue(config.service_name.clone()),
    )];
    attributes.extend(
        config
            .resource
            .iter()
            .map(|(k, v)| kv(k, any_value::Value::StringValue(v.clone()))),
    );
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "knative.dev/serving".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                }),
                spans: spans.iter().map(SpanData::to_proto).collect(),
            }],
        }],
    }
    .encode_to_vec()
}

async fn export_loop(
    config: ExportConfig,
    mut rx: mpsc::Receiver<SpanData>,
    shutdown: CancellationToken,
) {
    let client = export_client(config.protocol == Protocol::Grpc, config.ca_file.as_deref());
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let stop = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n == 0,
            () = shutdown.cancelled() => {
                while let Ok(s) = rx.try_recv() { batch.push(s); }
                true
            }
        };
        if !stop && batch.len() < BATCH {
            // Let a batch fill for up to FLUSH_EVERY before sending it.
            let deadline = tokio::time::sleep(FLUSH_EVERY);
            tokio::pin!(deadline);
            while batch.len() < BATCH {
                let room = BATCH - batch.len();
                tokio::select! {
                    n = rx.recv_many(&mut batch, room) => if n == 0 { break },
                    () = &mut deadline => break,
                    () = shutdown.cancelled() => break,
                }
            }
        }
        if !batch.is_empty() {
            send(&client, &config, &batch).await;
            batch.clear();
        }
        if stop || shutdown.is_cancelled() {
            return;
        }
    }
}

async fn send(client: &ExportClient, config: &ExportConfig, spans: &[SpanData]) {
    let Some(uri) = config.endpoint.clone() else {
        // stdout: one JSON line per span.
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        for s in spans {
            let _ = writeln!(out, "{}", s.to_json());
        }
        return;
    };
    let msg = encode_batch(config, spans);
    let (body, content_type) = if config.protocol == Protocol::Grpc {
        // gRPC length-prefixed message: no compression flag, then the big-endian length.
        let mut b = BytesMut::with_capacity(5 + msg.len());
        b.put_u8(0);
        b.put_u32(u32::try_from(msg.len()).unwrap_or(u32::MAX));
        b.put_slice(&msg);
        (b.freeze(), "application/grpc")
    } else {
        (Bytes::from(msg), "application/x-protobuf")
    };
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri;
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    if config.protocol == Protocol::Grpc {
        req.headers_mut()
            .insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    let n = spans.len();
    match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
        Ok(Ok(resp)) if resp.status().is_success() => {
            // Drain the body so the connection is reused (and gRPC trailers are read).
            let _ = resp.into_body().collect().await;
        }
        Ok(Ok(resp)) => tracing::warn!(status = %resp.status(), spans = n, "span export refused"),
        Ok(Err(e)) => tracing::warn!(error = %e, spans = n, "span export failed"),
        Err(_) => tracing::warn!(spans = n, "span export timed out"),
    }
}

#[cfg(test)]
mod tests;
