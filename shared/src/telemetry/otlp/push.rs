//! OTLP metrics push (`requestMetrics.protocol` / `metrics-protocol` = `grpc` or
//! `http/protobuf`): every export interval, in a task of its own, the registry's current values
//! go to the collector as one `ExportMetricsServiceRequest` with cumulative temporality, as the
//! OTel SDK's periodic reader sends them. The request path never sees it: it only updates the
//! same metric handles the Prometheus scrape reads.
//!
//! The values are read from our own Prometheus text rendering of the registry
//! (prometheus-client has no public iterator over a family's series); names and attribute keys
//! go back to OpenTelemetry's dotted form (`http_server_request_duration_seconds` →
//! `http.server.request.duration`, unit `s`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use prometheus_client::registry::Registry;
use prost::Message;
use tokio_util::sync::CancellationToken;

use super::{
    ExportError, InstrumentationScope, KeyValue, Protocol, Resource, Signal, any_value,
    endpoint_uri, export_client, kv, nanos,
};

/// `ExportMetricsServiceRequest` (opentelemetry/proto/collector/metrics/v1).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportMetricsServiceRequest {
    /// Per resource.
    #[prost(message, repeated, tag = "1")]
    pub resource_metrics: Vec<ResourceMetrics>,
}

/// `ResourceMetrics`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceMetrics {
    /// The process.
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    /// Per instrumentation scope.
    #[prost(message, repeated, tag = "2")]
    pub scope_metrics: Vec<ScopeMetrics>,
}

/// `ScopeMetrics`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeMetrics {
    /// The scope.
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    /// The metrics.
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
}

/// `Metric`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    /// Dotted OTel name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Description.
    #[prost(string, tag = "2")]
    pub description: String,
    /// Unit (`s` for `_seconds`).
    #[prost(string, tag = "3")]
    pub unit: String,
    /// The points.
    #[prost(oneof = "metric::Data", tags = "5, 7, 9")]
    pub data: Option<metric::Data>,
}

/// `Metric`'s oneof.
pub mod metric {
    /// Gauge, sum or histogram.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Data {
        /// A gauge.
        #[prost(message, tag = "5")]
        Gauge(super::Gauge),
        /// A counter.
        #[prost(message, tag = "7")]
        Sum(super::Sum),
        /// A histogram.
        #[prost(message, tag = "9")]
        Histogram(super::Histogram),
    }
}

/// `Gauge`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Gauge {
    /// Points.
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
}

/// `Sum`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sum {
    /// Points.
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
    /// 2 = cumulative.
    #[prost(int32, tag = "2")]
    pub aggregation_temporality: i32,
    /// Counters are monotonic.
    #[prost(bool, tag = "3")]
    pub is_monotonic: bool,
}

/// `Histogram`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Histogram {
    /// Points.
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<HistogramDataPoint>,
    /// 2 = cumulative.
    #[prost(int32, tag = "2")]
    pub aggregation_temporality: i32,
}

/// `NumberDataPoint`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NumberDataPoint {
    /// Attributes.
    #[prost(message, repeated, tag = "7")]
    pub attributes: Vec<KeyValue>,
    /// Process start.
    #[prost(fixed64, tag = "2")]
    pub start_time_unix_nano: u64,
    /// Now.
    #[prost(fixed64, tag = "3")]
    pub time_unix_nano: u64,
    /// The value.
    #[prost(double, tag = "4")]
    pub as_double: f64,
}

/// `HistogramDataPoint`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HistogramDataPoint {
    /// Attributes.
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    /// Process start.
    #[prost(fixed64, tag = "2")]
    pub start_time_unix_nano: u64,
    /// Now.
    #[prost(fixed64, tag = "3")]
    pub time_unix_nano: u64,
    /// Observations.
    #[prost(fixed64, tag = "4")]
    pub count: u64,
    /// Their sum.
    #[prost(double, optional, tag = "5")]
    pub sum: Option<f64>,
    /// Per bucket (not cumulative), one more than the bounds.
    #[prost(fixed64, repeated, tag = "6")]
    pub bucket_counts: Vec<u64>,
    /// Upper bounds.
    #[prost(double, repeated, tag = "7")]
    pub explicit_bounds: Vec<f64>,
}

const CUMULATIVE: i32 = 2;

/// Push settings.
#[derive(Clone, Debug, PartialEq)]
pub struct PushConfig {
    /// `grpc` or `http/protobuf`.
    pub protocol: Protocol,
    /// Collector URL.
    pub endpoint: Uri,
    /// Export interval (`exportInterval` / `metrics-export-interval`; 0 = the SDK's 60 s).
    pub interval: Duration,
    /// `service.name`.
    pub service_name: String,
    /// Other resource attributes.
    pub resource: Vec<(String, String)>,
    /// PEM CAs for an `https` collector (else the system's).
    pub ca_file: Option<std::path::PathBuf>,
}

/// The OTel SDK's default export interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

impl PushConfig {
    /// From Knative's keys. `Ok(None)` for `none`/`prometheus`/empty.
    ///
    /// # Errors
    /// An unknown protocol, or a push protocol without a usable endpoint (fatal in Knative too).
    pub fn from_knative(
        protocol: &str,
        endpoint: Option<&str>,
        interval: Duration,
    ) -> Result<Option<Self>, ExportError> {
        let protocol = match protocol {
            "" | "none" | "prometheus" => return Ok(None),
            "grpc" => Protocol::Grpc,
            "http/protobuf" => Protocol::HttpProtobuf,
            other => return Err(ExportError::Protocol(other.to_owned())),
        };
        let raw = endpoint
            .filter(|e| !e.is_empty())
            .ok_or(ExportError::Endpoint {
                endpoint: String::new(),
                reason: "required when the protocol is grpc or http/protobuf",
            })?;
        Ok(Some(Self {
            endpoint: endpoint_uri(raw, false, &protocol, Signal::Metrics)?,
            protocol,
            interval: if interval.is_zero() {
                DEFAULT_INTERVAL
            } else {
                interval
            },
            service_name: String::new(),
            resource: Vec::new(),
            ca_file: None,
        }))
    }
}

/// One series of the text exposition.
#[derive(Debug, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn parse_labels(s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut out = Vec::new();
    let mut rest = s.strip_prefix('{')?;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(r) = rest.strip_prefix('}') {
            return Some((out, r));
        }
        let (k, r) = rest.split_once("=\"")?;
        let mut v = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => v.push('\n'),
                    c => v.push(c),
                },
                '"' => break i,
                c => v.push(c),
            }
        };
        out.push((k.to_owned(), v));
        rest = &r[end + 1..];
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let i = line.find(['{', ' '])?;
    let name = line[..i].to_owned();
    let (labels, rest) = if line[i..].starts_with('{') {
        parse_labels(&line[i..])?
    } else {
        (Vec::new(), &line[i..])
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

fn otel_name(prom: &str) -> (String, &'static str) {
    match prom.strip_suffix("_seconds") {
        Some(base) => (base.replace('_', "."), "s"),
        None => (prom.replace('_', "."), ""),
    }
}

fn attributes(labels: &[(String, String)]) -> Vec<KeyValue> {
    labels
        .iter()
        .filter(|(k, _)| k != "le")
        .map(|(k, v)| {
            kv(
                &k.replace('_', "."),
                any_value::Value::StringValue(v.clone()),
            )
        })
        .collect()
}

/// The metrics of a Prometheus/OpenMetrics text rendering, as OTLP metrics.
pub fn metrics_from_text(text: &str, start: u64, now: u64) -> Vec<Metric> {
    let mut out: Vec<Metric> = Vec::new();
    let mut family: Option<(String, String, String)> = None; // name, type, help
    let mut samples: Vec<Sample> = Vec::new();
    let flush =
        |out: &mut Vec<Metric>, fam: Option<(String, String, String)>, s: &mut Vec<Sample>| {
            if let Some((name, kind, help)) = fam
                && let Some(m) = to_metric(&name, &kind, help, s, start, now)
            {
                out.push(m);
            }
            s.clear();
        };
    let mut help = String::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("# HELP ") {
            help = h.split_once(' ').map_or("", |x| x.1).to_owned();
        } else if let Some(t) = line.strip_prefix("# TYPE ") {
            flush(&mut out, family.take(), &mut samples);
            let (name, kind) = t.split_once(' ').unwrap_or((t, "unknown"));
            family = Some((name.to_owned(), kind.to_owned(), std::mem::take(&mut help)));
        } else if !line.starts_with('#')
            && !line.is_empty()
            && let Some(s) = parse_sample(line)
        {
            samples.push(s);
        }
    }
    flush(&mut out, family, &mut samples);
    out
}

fn to_metric(
    name: &str,
    kind: &str,
    description: String,
    samples: &[Sample],
    start: u64,
    now: u64,
) -> Option<Metric> {
    let (otel, unit) = otel_name(name);
    let number = |suffix: &str| -> Vec<NumberDataPoint> {
        samples
            .iter()
            .filter(|s| s.name == format!("{name}{suffix}"))
            .map(|s| NumberDataPoint {
                attributes: attributes(&s.labels),
                start_time_unix_nano: start,
                time_unix_nano: now,
                as_double: s.value,
            })
            .collect()
    };
    let data = match kind {
        "gauge" => metric::Data::Gauge(Gauge {
            data_points: number(""),
        }),
        "counter" => metric::Data::Sum(Sum {
            data_points: number("_total"),
            aggregation_temporality: CUMULATIVE,
            is_monotonic: true,
        }),
        "histogram" => {
            // Group by label set (without `le`), keeping first-seen order.
            let mut points: Vec<(Vec<(String, String)>, HistogramDataPoint)> = Vec::new();
            for s in samples {
                let key: Vec<(String, String)> = s
                    .labels
                    .iter()
                    .filter(|(k, _)| k != "le")
                    .cloned()
                    .collect();
                let idx = match points.iter().position(|(k, _)| *k == key) {
                    Some(i) => i,
                    None => {
                        points.push((
                            key.clone(),
                            HistogramDataPoint {
                                attributes: attributes(&key),
                                start_time_unix_nano: start,
                                time_unix_nano: now,
                                ..HistogramDataPoint::default()
                            },
                        ));
                        points.len() - 1
                    }
                };
                let p = &mut points[idx].1;
                if s.name == format!("{name}_sum") {
                    p.sum = Some(s.value);
                } else if s.name == format!("{name}_count") {
                    p.count = s.value as u64;
                } else if s.name == format!("{name}_bucket") {
                    let le = s.labels.iter().find(|(k, _)| k == "le").map(|(_, v)| v)?;
                    if le != "+Inf" {
                        p.explicit_bounds.push(le.parse().ok()?);
                    }
                    // Cumulative here; made per-bucket below.
                    p.bucket_counts.push(s.value as u64);
                }
            }
            for (_, p) in &mut points {
                let mut prev = 0;
                for c in &mut p.bucket_counts {
                    let cum = *c;
                    *c = cum.saturating_sub(prev);
                    prev = cum;
                }
            }
            metric::Data::Histogram(Histogram {
                data_points: points.into_iter().map(|(_, p)| p).collect(),
                aggregation_temporality: CUMULATIVE,
            })
        }
        _ => return None,
    };
    Some(Metric {
        name: otel,
        description,
        unit: unit.to_owned(),
        data: Some(data),
    })
}

/// One `ExportMetricsServiceRequest` of `registry`'s current values.
pub fn encode(config: &PushConfig, registry: &Registry, start: u64, now: u64) -> Vec<u8> {
    let text = crate::telemetry::metrics::render(registry);
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
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource { attributes }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "knative.dev/serving".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                }),
                metrics: metrics_from_text(&text, start, now),
            }],
        }],
    }
    .encode_to_vec()
}

/// How often a failing push is logged (one line, then a count of the quiet failures).
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Pushes `registry` every `config.interval` until `shutdown`, then once more.
pub async fn run(config: PushConfig, registry: Arc<Registry>, shutdown: CancellationToken) {
    let client = export_client(config.protocol == Protocol::Grpc, config.ca_file.as_deref());
    let start = nanos(SystemTime::now());
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last_log: Option<tokio::time::Instant> = None;
    let mut quiet_failures = 0u64;
    loop {
        let stop = tokio::select! {
            _ = tick.tick() => false,
            () = shutdown.cancelled() => true,
        };
        let msg = encode(&config, &registry, start, nanos(SystemTime::now()));
        let body = if config.protocol == Protocol::Grpc {
            let mut b = BytesMut::with_capacity(5 + msg.len());
            b.put_u8(0);
            b.put_u32(u32::try_from(msg.len()).unwrap_or(u32::MAX));
            b.put_slice(&msg);
            b.freeze()
        } else {
            Bytes::from(msg)
        };
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = config.endpoint.clone();
        let ct = if config.protocol == Protocol::Grpc {
            req.headers_mut()
                .insert(http::header::TE, HeaderValue::from_static("trailers"));
            "application/grpc"
        } else {
            "application/x-protobuf"
        };
        req.headers_mut()
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
        let timeout = config.interval.min(Duration::from_secs(30));
        let failure = match tokio::time::timeout(timeout, client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => {
                let _ = resp.into_body().collect().await;
                None
            }
            Ok(Ok(resp)) => Some(format!("collector answered {}", resp.status())),
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("timed out".to_owned()),
        };
        if let Some(error) = failure {
            let now = tokio::time::Instant::now();
            if last_log.is_none_or(|t| now.duration_since(t) >= FAILURE_LOG_EVERY) {
                tracing::warn!(
                    error = %error,
                    endpoint = %config.endpoint,
                    suppressed = quiet_failures,
                    "metrics export failed"
                );
                last_log = Some(now);
                quiet_failures = 0;
            } else {
                quiet_failures += 1;
            }
        }
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge as PGauge;
    use prometheus_client::metrics::histogram::Histogram as PHistogram;

    #[test]
    fn registry_values_become_otlp_metrics() {
        let mut reg = Registry::default();
        let h = Family::<Vec<(&'static str, String)>, PHistogram>::new_with_constructor(|| {
            PHistogram::new([0.1, 1.0])
        });
        reg.register(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests.",
            h.clone(),
        );
        let g = PGauge::<i64>::default();
        reg.register("kn_serving_queue_depth", "Queue depth", g.clone());
        let l = vec![
            ("http_request_method", "GET".to_owned()),
            ("kn_route_tag", "a \"b\"".to_owned()),
        ];
        h.get_or_create(&l).observe(0.05);
        h.get_or_create(&l).observe(0.5);
        h.get_or_create(&l).observe(5.0);
        g.set(3);
        let text = crate::telemetry::metrics::render(&reg);
        let m = metrics_from_text(&text, 1, 2);
        assert_eq!(m.len(), 2, "{text}");
        assert_eq!(m[0].name, "http.server.request.duration");
        assert_eq!(m[0].unit, "s");
        let Some(metric::Data::Histogram(hist)) = &m[0].data else {
            panic!("{m:?}")
        };
        let p = &hist.data_points[0];
        assert_eq!(p.count, 3);
        assert_eq!(p.explicit_bounds, [0.1, 1.0]);
        assert_eq!(p.bucket_counts, [1, 1, 1]);
        assert!((p.sum.unwrap() - 5.55).abs() < 1e-9);
        let keys: Vec<&str> = p.attributes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, ["http.request.method", "kn.route.tag"]);
        assert_eq!(hist.aggregation_temporality, CUMULATIVE);
        assert_eq!(m[1].name, "kn.serving.queue.depth");
        let Some(metric::Data::Gauge(gauge)) = &m[1].data else {
            panic!("{m:?}")
        };
        assert!((gauge.data_points[0].as_double - 3.0).abs() < f64::EPSILON);
    }

    #[test]
    fn config_as_knative() {
        let c = |p, e: Option<&str>| PushConfig::from_knative(p, e, Duration::ZERO);
        assert_eq!(c("prometheus", None).unwrap(), None);
        let g = c("grpc", Some("http://127.0.0.1:4317")).unwrap().unwrap();
        assert_eq!(
            g.endpoint.to_string(),
            "http://127.0.0.1:4317/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
        );
        assert_eq!(g.interval, DEFAULT_INTERVAL);
        let h = c("http/protobuf", Some("collector:4318")).unwrap().unwrap();
        assert_eq!(h.endpoint.to_string(), "https://collector:4318/v1/metrics");
        assert!(c("grpc", None).is_err());
        assert!(c("opencensus", Some("x:1")).is_err());
    }
}
