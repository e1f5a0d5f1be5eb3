//! Configuration from Knative's environment variables (`queue-proxy.md` §2) plus our port and
//! drain overrides (`architecture.md`).
//!
//! [`Cli`] reads the variables with their exact Knative names; [`Config`] is the validated
//! domain type (`impl TryFrom<Cli>`), unit-tested with struct literals.

use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::probe::ProbeSpec;

/// Raw settings, one field per environment variable. Every field is optional at this level so
/// that [`Config::try_from`] can name a missing variable itself (with exit code 64).
#[derive(Clone, Debug, Default, Parser)]
#[command(name = "queue-proxy", about = "Knative queue-proxy sidecar", version)]
#[allow(missing_docs)]
pub struct Cli {
    #[arg(long, env = "SERVING_NAMESPACE")]
    pub serving_namespace: Option<String>,
    #[arg(long, env = "SERVING_SERVICE")]
    pub serving_service: Option<String>,
    #[arg(long, env = "SERVING_CONFIGURATION")]
    pub serving_configuration: Option<String>,
    #[arg(long, env = "SERVING_REVISION")]
    pub serving_revision: Option<String>,
    #[arg(long, env = "SERVING_POD")]
    pub serving_pod: Option<String>,
    #[arg(long, env = "SERVING_POD_IP")]
    pub serving_pod_ip: Option<String>,
    #[arg(long, env = "QUEUE_SERVING_PORT")]
    pub queue_serving_port: Option<String>,
    #[arg(long, env = "QUEUE_SERVING_TLS_PORT")]
    pub queue_serving_tls_port: Option<String>,
    #[arg(long, env = "USER_PORT")]
    pub user_port: Option<String>,
    #[arg(long, env = "CONTAINER_CONCURRENCY")]
    pub container_concurrency: Option<String>,
    #[arg(long, env = "REVISION_TIMEOUT_SECONDS")]
    pub revision_timeout_seconds: Option<String>,
    #[arg(long, env = "REVISION_RESPONSE_START_TIMEOUT_SECONDS")]
    pub revision_response_start_timeout_seconds: Option<String>,
    #[arg(long, env = "REVISION_IDLE_TIMEOUT_SECONDS")]
    pub revision_idle_timeout_seconds: Option<String>,
    #[arg(long, env = "SERVING_READINESS_PROBE")]
    pub serving_readiness_probe: Option<String>,
    #[arg(long, env = "ENABLE_MULTI_CONTAINER_PROBES")]
    pub enable_multi_container_probes: Option<String>,
    #[arg(long, env = "ENABLE_HTTP2_AUTO_DETECTION")]
    pub enable_http2_auto_detection: Option<String>,
    #[arg(long, env = "ENABLE_HTTP_FULL_DUPLEX")]
    pub enable_http_full_duplex: Option<String>,
    #[arg(long, env = "SERVING_LOGGING_CONFIG")]
    pub serving_logging_config: Option<String>,
    #[arg(long, env = "SERVING_LOGGING_LEVEL")]
    pub serving_logging_level: Option<String>,
    #[arg(long, env = "OBSERVABILITY_CONFIG")]
    pub observability_config: Option<String>,
    #[arg(long, env = "QUEUE_PROXY_TLS_MIN_VERSION")]
    pub queue_proxy_tls_min_version: Option<String>,
    #[arg(long, env = "QUEUE_PROXY_TLS_MAX_VERSION")]
    pub queue_proxy_tls_max_version: Option<String>,
    #[arg(long, env = "QUEUE_PROXY_TLS_CIPHER_SUITES")]
    pub queue_proxy_tls_cipher_suites: Option<String>,
    #[arg(long, env = "QUEUE_PROXY_TLS_CURVE_PREFERENCES")]
    pub queue_proxy_tls_curve_preferences: Option<String>,
    /// Set by the reconciler, not read by the core queue-proxy (tolerated).
    #[arg(long, env = "SYSTEM_NAMESPACE")]
    pub system_namespace: Option<String>,
    /// Set by the reconciler, not read by the core queue-proxy (tolerated).
    #[arg(long, env = "HOST_IP")]
    pub host_ip: Option<String>,
    /// Set by the reconciler, not read by the core queue-proxy (tolerated).
    #[arg(long, env = "ROOT_CA")]
    pub root_ca: Option<String>,
    #[arg(long, env = "METRICS_PROMETHEUS_PORT")]
    pub metrics_prometheus_port: Option<String>,
    /// Ours: admin listener port (default 8022).
    #[arg(long, env = "QUEUE_ADMIN_PORT")]
    pub queue_admin_port: Option<String>,
    /// Ours: autoscaler `Stat` listener port (default 9090).
    #[arg(long, env = "QUEUE_METRICS_PORT")]
    pub queue_metrics_port: Option<String>,
    /// Ours: Prometheus request-metrics listener port (default 9091).
    #[arg(long, env = "QUEUE_USER_METRICS_PORT")]
    pub queue_user_metrics_port: Option<String>,
    /// Ours: quiet period after SIGTERM before exiting, in seconds (default 30).
    #[arg(long, env = "QUEUE_DRAIN_SECONDS")]
    pub queue_drain_seconds: Option<String>,
    /// Ours: the IP every listener binds (default: all interfaces, as Knative's `:port`).
    /// `activator local` sets `127.0.0.1` so a developer's pods are not on the network.
    #[arg(long, env = "QUEUE_BIND_ADDRESS")]
    pub queue_bind_address: Option<String>,
    /// OTel SDK variable: span collector URL, used as given; wins over the configured endpoint.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otel_exporter_otlp_traces_endpoint: Option<String>,
    /// OTel SDK variable: collector base URL (`/v1/traces` appended for http/protobuf).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// OTel SDK variable: the `service.name` resource attribute of exported spans.
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub otel_service_name: Option<String>,
    /// OTel SDK variable: PEM CAs trusted for an `https` span collector (wins over the next).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")]
    pub otel_exporter_otlp_traces_certificate: Option<String>,
    /// OTel SDK variable: PEM CAs trusted for an `https` collector (default: the system's).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CERTIFICATE")]
    pub otel_exporter_otlp_certificate: Option<String>,
    /// Ours: directory with `tls.crt` and `tls.key` (default `/var/lib/knative/certs`).
    #[arg(long, env = "QUEUE_TLS_CERT_DIR")]
    pub queue_tls_cert_dir: Option<String>,
    /// Ours: time allowed for a request head on the serving, admin and metrics ports, in
    /// seconds (default 60, Go's ReadHeaderTimeout on Knative's listeners).
    #[arg(long, env = "QUEUE_HEADER_READ_TIMEOUT_SECONDS")]
    pub queue_header_read_timeout_seconds: Option<String>,
    /// Ours: how often the certificate files are re-read, in seconds (default 60).
    #[arg(long, env = "QUEUE_TLS_RELOAD_SECONDS")]
    pub queue_tls_reload_seconds: Option<String>,
}

/// Every environment variable [`Cli`] reads, Knative's first, then ours.
pub const ENV_NAMES: &[&str] = &[
    "SERVING_NAMESPACE",
    "SERVING_SERVICE",
    "SERVING_CONFIGURATION",
    "SERVING_REVISION",
    "SERVING_POD",
    "SERVING_POD_IP",
    "QUEUE_SERVING_PORT",
    "QUEUE_SERVING_TLS_PORT",
    "USER_PORT",
    "CONTAINER_CONCURRENCY",
    "REVISION_TIMEOUT_SECONDS",
    "REVISION_RESPONSE_START_TIMEOUT_SECONDS",
    "REVISION_IDLE_TIMEOUT_SECONDS",
    "SERVING_READINESS_PROBE",
    "ENABLE_MULTI_CONTAINER_PROBES",
    "ENABLE_HTTP2_AUTO_DETECTION",
    "ENABLE_HTTP_FULL_DUPLEX",
    "SERVING_LOGGING_CONFIG",
    "SERVING_LOGGING_LEVEL",
    "OBSERVABILITY_CONFIG",
    "QUEUE_PROXY_TLS_MIN_VERSION",
    "QUEUE_PROXY_TLS_MAX_VERSION",
    "QUEUE_PROXY_TLS_CIPHER_SUITES",
    "QUEUE_PROXY_TLS_CURVE_PREFERENCES",
    "SYSTEM_NAMESPACE",
    "HOST_IP",
    "ROOT_CA",
    "METRICS_PROMETHEUS_PORT",
    "QUEUE_ADMIN_PORT",
    "QUEUE_METRICS_PORT",
    "QUEUE_USER_METRICS_PORT",
    "QUEUE_DRAIN_SECONDS",
    "QUEUE_BIND_ADDRESS",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "QUEUE_TLS_CERT_DIR",
    "QUEUE_HEADER_READ_TIMEOUT_SECONDS",
    "QUEUE_TLS_RELOAD_SECONDS",
];

/// A configuration error; the message names the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is absent.
    #[error("required key {0} missing value")]
    Missing(&'static str),
    /// A variable does not parse.
    #[error("envconfig.Process: assigning {name}: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

fn invalid(name: &'static str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        name,
        reason: reason.to_string(),
    }
}

/// Request-metrics exporter (`requestMetrics.protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsProtocol {
    /// No request metrics (Knative's default).
    None,
    /// Prometheus text on the user-metrics port.
    Prometheus,
    /// OTLP push (`grpc`, `http/protobuf`) to `requestMetrics.endpoint`.
    Otlp,
}

/// `OBSERVABILITY_CONFIG`, overlaid on Knative's defaults (§2.2).
#[derive(Clone, Debug, PartialEq)]
pub struct Observability {
    /// Request metrics exporter.
    pub request_metrics: MetricsProtocol,
    /// `requestMetrics.endpoint`: for Prometheus a `host:port` listen address, for OTLP the
    /// collector.
    pub request_metrics_endpoint: Option<String>,
    /// `requestMetrics.protocol` as given (`grpc`, `http/protobuf`, …).
    pub request_metrics_protocol: String,
    /// `requestMetrics.exportInterval` (Go `time.Duration` in JSON: nanoseconds; 0 = 60 s).
    pub request_metrics_interval: Duration,
    /// `enableRequestLog`.
    pub enable_request_log: bool,
    /// `requestLogTemplate` (Knative's default template when unset).
    pub request_log_template: String,
    /// `enableProbeRequestLog`.
    pub enable_probe_request_log: bool,
    /// `tracing.protocol` (`""`/`none` = off, `grpc`, `http/protobuf`, `stdout`).
    pub tracing_protocol: String,
    /// `tracing.endpoint`.
    pub tracing_endpoint: Option<String>,
    /// `tracing.samplingRate` (default 0: with a protocol but no rate nothing is sampled, as
    /// in Knative, except `stdout`, which always samples).
    pub tracing_sampling_rate: f64,
}

/// Knative's default request-log template (§7.6), verbatim.
pub const DEFAULT_REQUEST_LOG_TEMPLATE: &str = shared::telemetry::reqlog::DEFAULT_TEMPLATE;

impl Default for Observability {
    fn default() -> Self {
        Self {
            request_metrics: MetricsProtocol::None,
            request_metrics_endpoint: None,
            request_metrics_protocol: String::new(),
            request_metrics_interval: Duration::ZERO,
            enable_request_log: false,
            request_log_template: DEFAULT_REQUEST_LOG_TEMPLATE.to_owned(),
            enable_probe_request_log: false,
            tracing_protocol: String::new(),
            tracing_endpoint: None,
            tracing_sampling_rate: 0.0,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ObsJson {
    #[serde(default)]
    tracing: Option<ProtoJson>,
    #[serde(default)]
    request_metrics: Option<ProtoJson>,
    #[serde(default)]
    enable_request_log: Option<bool>,
    #[serde(default)]
    request_log_template: Option<String>,
    #[serde(default)]
    enable_probe_request_log: Option<bool>,
}

#[derive(Deserialize, Default)]
struct ProtoJson {
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default, rename = "samplingRate")]
    sampling_rate: Option<f64>,
    #[serde(default, rename = "exportInterval")]
    export_interval: Option<i64>,
}

impl Observability {
    /// Parses `OBSERVABILITY_CONFIG` over the defaults; empty values keep the default.
    ///
    /// # Errors
    /// Invalid JSON or an unknown protocol (both fatal in Knative).
    pub fn parse(json: &str) -> Result<Self, ConfigError> {
        let mut out = Self::default();
        if json.trim().is_empty() {
            return Ok(out);
        }
        let j: ObsJson =
            serde_json::from_str(json).map_err(|e| invalid("OBSERVABILITY_CONFIG", e))?;
        if let Some(rm) = j.request_metrics {
            out.request_metrics = match rm.protocol.as_deref().unwrap_or("") {
                "" | "none" => MetricsProtocol::None,
                "prometheus" => MetricsProtocol::Prometheus,
                "grpc" | "http/protobuf" => MetricsProtocol::Otlp,
                other => {
                    return Err(invalid(
                        "OBSERVABILITY_CONFIG",
                        format!("unsupported metrics protocol {other:?}"),
                    ));
                }
            };
            out.request_metrics_endpoint = rm.endpoint.filter(|e| !e.is_empty());
            out.request_metrics_protocol = rm.protocol.unwrap_or_default();
            out.request_metrics_interval =
                Duration::from_nanos(rm.export_interval.unwrap_or(0).max(0).unsigned_abs());
        }
        if let Some(t) = j.tracing {
            let protocol = t.protocol.unwrap_or_default();
            if !matches!(
                protocol.as_str(),
                "" | "none" | "grpc" | "http/protobuf" | "stdout"
            ) {
                return Err(invalid(
                    "OBSERVABILITY_CONFIG",
                    format!("unsupported tracing protocol {protocol:?}"),
                ));
            }
            out.tracing_protocol = protocol;
            out.tracing_endpoint = t.endpoint.filter(|e| !e.is_empty());
            out.tracing_sampling_rate = t.sampling_rate.unwrap_or(0.0);
        }
        out.enable_request_log = j.enable_request_log.unwrap_or(false);
        out.enable_probe_request_log = j.enable_probe_request_log.unwrap_or(false);
        if let Some(t) = j.request_log_template.filter(|t| !t.is_empty()) {
            out.request_log_template = t;
        }
        Ok(out)
    }
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// `SERVING_NAMESPACE`.
    pub namespace: String,
    /// `SERVING_SERVICE`.
    pub service: String,
    /// `SERVING_CONFIGURATION`.
    pub configuration: String,
    /// `SERVING_REVISION`.
    pub revision: String,
    /// `SERVING_POD`: the Stat's `pod_name`.
    pub pod: String,
    /// `SERVING_POD_IP`.
    pub pod_ip: String,
    /// `QUEUE_SERVING_PORT` (0 = any free port, ours, for tests and local mode).
    pub serving_port: u16,
    /// `QUEUE_SERVING_TLS_PORT`: served only when the certificate files exist.
    pub serving_tls_port: u16,
    /// `USER_PORT`: upstream `127.0.0.1:<port>`.
    pub user_port: u16,
    /// `CONTAINER_CONCURRENCY`; 0 (or negative) = unlimited, no breaker.
    pub container_concurrency: usize,
    /// `REVISION_TIMEOUT_SECONDS` (`T`); 0 fires at once, as in Knative.
    pub revision_timeout: Duration,
    /// `REVISION_RESPONSE_START_TIMEOUT_SECONDS` (`S`); `None` = disabled.
    pub response_start_timeout: Option<Duration>,
    /// `REVISION_IDLE_TIMEOUT_SECONDS` (`I`); `None` = disabled.
    pub idle_timeout: Option<Duration>,
    /// `SERVING_READINESS_PROBE`, parsed; empty = always ready.
    pub readiness_probes: Vec<ProbeSpec>,
    /// `ENABLE_HTTP2_AUTO_DETECTION`: HTTP probes try h2c first.
    pub http2_auto_detection: bool,
    /// `ENABLE_HTTP_FULL_DUPLEX`: accepted; we are always full duplex.
    pub full_duplex: bool,
    /// `SERVING_LOGGING_CONFIG` (zap JSON).
    pub logging_config: String,
    /// `SERVING_LOGGING_LEVEL`.
    pub logging_level: String,
    /// `OBSERVABILITY_CONFIG`.
    pub observability: Observability,
    /// `QUEUE_ADMIN_PORT` (default 8022).
    pub admin_port: u16,
    /// `QUEUE_METRICS_PORT` (default 9090).
    pub metrics_port: u16,
    /// The user-metrics port, if request metrics are Prometheus: `METRICS_PROMETHEUS_PORT`, else
    /// `QUEUE_USER_METRICS_PORT`, else the port of `requestMetrics.endpoint`, else 9091.
    pub user_metrics_port: Option<u16>,
    /// `QUEUE_DRAIN_SECONDS` (default 30).
    pub drain_quiet_period: Duration,
    /// `QUEUE_BIND_ADDRESS` (ours); `None` binds every interface.
    pub bind_address: Option<std::net::IpAddr>,
    /// Span export, from `tracing` in `OBSERVABILITY_CONFIG` and the `OTEL_*` overrides;
    /// `None` = off (Knative's default).
    pub tracing: Option<shared::telemetry::otlp::ExportConfig>,
    /// OTLP metrics push (`requestMetrics.protocol` `grpc` / `http/protobuf`); `None` = off.
    pub metrics_push: Option<shared::telemetry::otlp::push::PushConfig>,
    /// `QUEUE_PROXY_TLS_*` and `QUEUE_TLS_CERT_DIR`: the TLS listener's settings (served only
    /// when the certificate files exist).
    pub tls: crate::tls::TlsConfig,
    /// `QUEUE_HEADER_READ_TIMEOUT_SECONDS` (ours; default 60 s): slow header senders are closed.
    pub header_read_timeout: Duration,
}

/// Go's `strconv.ParseInt(s, 0, 64)`: decimal, `0x`, `0o`/`0`, `0b` prefixes, optional sign.
pub fn parse_go_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let body = body.replace('_', "");
    let v = if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        i64::from_str_radix(h, 16).ok()?
    } else if let Some(b) = body.strip_prefix("0b").or_else(|| body.strip_prefix("0B")) {
        i64::from_str_radix(b, 2).ok()?
    } else if let Some(o) = body.strip_prefix("0o").or_else(|| body.strip_prefix("0O")) {
        i64::from_str_radix(o, 8).ok()?
    } else if body.len() > 1 && body.starts_with('0') {
        i64::from_str_radix(&body[1..], 8).ok()?
    } else {
        body.parse::<i64>().ok()?
    };
    Some(if neg { -v } else { v })
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn required(v: Option<String>, name: &'static str) -> Result<String, ConfigError> {
    v.ok_or(ConfigError::Missing(name))
}

fn int(v: &str, name: &'static str) -> Result<i64, ConfigError> {
    parse_go_int(v).ok_or_else(|| {
        invalid(
            name,
            format!("strconv.ParseInt: parsing {v:?}: invalid syntax"),
        )
    })
}

fn port(v: &str, name: &'static str) -> Result<u16, ConfigError> {
    let p = int(v, name)?;
    u16::try_from(p).map_err(|_| invalid(name, format!("port {p} out of range")))
}

fn opt_port(v: Option<String>, name: &'static str, default: u16) -> Result<u16, ConfigError> {
    match v.as_deref() {
        None | Some("") => Ok(default),
        Some(s) => port(s, name),
    }
}

fn opt_bool(v: Option<String>, name: &'static str) -> Result<bool, ConfigError> {
    match v.as_deref() {
        None => Ok(false),
        Some(s) => parse_go_bool(s).ok_or_else(|| {
            invalid(
                name,
                format!("strconv.ParseBool: parsing {s:?}: invalid syntax"),
            )
        }),
    }
}

fn opt_secs(v: Option<String>, name: &'static str) -> Result<Option<Duration>, ConfigError> {
    match v.as_deref() {
        None => Ok(None),
        Some(s) => {
            let n = int(s, name)?;
            Ok((n > 0).then(|| Duration::from_secs(n as u64)))
        }
    }
}

impl TryFrom<Cli> for Config {
    type Error = ConfigError;

    fn try_from(c: Cli) -> Result<Self, ConfigError> {
        let namespace = required(c.serving_namespace, "SERVING_NAMESPACE")?;
        let configuration = required(c.serving_configuration, "SERVING_CONFIGURATION")?;
        let revision = required(c.serving_revision, "SERVING_REVISION")?;
        let pod = required(c.serving_pod, "SERVING_POD")?;
        let pod_ip = required(c.serving_pod_ip, "SERVING_POD_IP")?;
        let serving_port = port(
            &required(c.queue_serving_port, "QUEUE_SERVING_PORT")?,
            "QUEUE_SERVING_PORT",
        )?;
        let tls = required(c.queue_serving_tls_port, "QUEUE_SERVING_TLS_PORT")?;
        let serving_tls_port = if tls.is_empty() {
            8112
        } else {
            port(&tls, "QUEUE_SERVING_TLS_PORT")?
        };
        let user_port = port(&required(c.user_port, "USER_PORT")?, "USER_PORT")?;
        let cc = int(
            &required(c.container_concurrency, "CONTAINER_CONCURRENCY")?,
            "CONTAINER_CONCURRENCY",
        )?;
        let t = int(
            &required(c.revision_timeout_seconds, "REVISION_TIMEOUT_SECONDS")?,
            "REVISION_TIMEOUT_SECONDS",
        )?;
        let response_start_timeout = opt_secs(
            c.revision_response_start_timeout_seconds,
            "REVISION_RESPONSE_START_TIMEOUT_SECONDS",
        )?;
        let idle_timeout = opt_secs(
            c.revision_idle_timeout_seconds,
            "REVISION_IDLE_TIMEOUT_SECONDS",
        )?;
        let multi = opt_bool(
            c.enable_multi_container_probes,
            "ENABLE_MULTI_CONTAINER_PROBES",
        )?;
        let readiness_probes = match c.serving_readiness_probe.as_deref() {
            None | Some("") => Vec::new(),
            Some(json) => crate::probe::parse_specs(json, multi)
                .map_err(|e| invalid("SERVING_READINESS_PROBE", e))?,
        };
        let observability = Observability::parse(c.observability_config.as_deref().unwrap_or(""))?;
        let user_metrics_port = if observability.request_metrics == MetricsProtocol::Prometheus {
            let from_endpoint = observability
                .request_metrics_endpoint
                .as_deref()
                .and_then(|e| e.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok());
            let p = match (
                c.metrics_prometheus_port.filter(|s| !s.is_empty()),
                c.queue_user_metrics_port.filter(|s| !s.is_empty()),
            ) {
                (Some(p), _) => port(&p, "METRICS_PROMETHEUS_PORT")?,
                (None, Some(p)) => port(&p, "QUEUE_USER_METRICS_PORT")?,
                (None, None) => from_endpoint.unwrap_or(9091),
            };
            Some(p)
        } else {
            None
        };
        let drain = match c.queue_drain_seconds.as_deref() {
            None | Some("") => 30,
            Some(s) => {
                let n = int(s, "QUEUE_DRAIN_SECONDS")?;
                u64::try_from(n).map_err(|_| invalid("QUEUE_DRAIN_SECONDS", "negative"))?
            }
        };
        let tls = {
            use crate::tls::{Version, parse_cipher_suites, parse_curves, parse_version};
            let s = |v: &Option<String>| v.clone().unwrap_or_default();
            let mut env_error: Option<String> = None;
            let mut bad = |var: &str, e: String| {
                env_error.get_or_insert_with(|| format!("{var}: {e}"));
            };
            let min_version = parse_version(&s(&c.queue_proxy_tls_min_version), Version::Tls13)
                .unwrap_or_else(|e| {
                    bad("QUEUE_PROXY_TLS_MIN_VERSION", e);
                    Version::Tls13
                });
            let max_version = parse_version(&s(&c.queue_proxy_tls_max_version), Version::Tls13)
                .unwrap_or_else(|e| {
                    bad("QUEUE_PROXY_TLS_MAX_VERSION", e);
                    Version::Tls13
                });
            if min_version > max_version {
                bad(
                    "QUEUE_PROXY_TLS_MAX_VERSION",
                    "lower than QUEUE_PROXY_TLS_MIN_VERSION".into(),
                );
            }
            let suites =
                parse_cipher_suites(&s(&c.queue_proxy_tls_cipher_suites)).unwrap_or_else(|e| {
                    bad("QUEUE_PROXY_TLS_CIPHER_SUITES", e);
                    Default::default()
                });
            let curves =
                parse_curves(&s(&c.queue_proxy_tls_curve_preferences)).unwrap_or_else(|e| {
                    bad("QUEUE_PROXY_TLS_CURVE_PREFERENCES", e);
                    Vec::new()
                });
            crate::tls::TlsConfig {
                cert_dir: c
                    .queue_tls_cert_dir
                    .filter(|d| !d.is_empty())
                    .map_or_else(|| crate::tls::CERT_DIR.into(), Into::into),
                reload_period: match c.queue_tls_reload_seconds.as_deref() {
                    None | Some("") => crate::tls::RELOAD_PERIOD,
                    Some(v) => match int(v, "QUEUE_TLS_RELOAD_SECONDS")? {
                        n if n > 0 => Duration::from_secs(n.unsigned_abs()),
                        _ => return Err(invalid("QUEUE_TLS_RELOAD_SECONDS", "must be positive")),
                    },
                },
                min_version,
                max_version,
                cipher_suites: suites.tls12,
                curves,
                skipped: suites
                    .skipped
                    .into_iter()
                    .chain(crate::tls::skipped_curves(&s(
                        &c.queue_proxy_tls_curve_preferences
                    )))
                    .collect(),
                env_error,
            }
        };
        let tracing = shared::telemetry::otlp::ExportConfig::from_knative(
            &observability.tracing_protocol,
            observability.tracing_endpoint.as_deref(),
            observability.tracing_sampling_rate,
            c.otel_exporter_otlp_traces_endpoint.as_deref(),
            c.otel_exporter_otlp_endpoint.as_deref(),
        )
        .map_err(|e| invalid("OBSERVABILITY_CONFIG", e))?
        .map(|mut t| {
            t.service_name = c
                .otel_service_name
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "queue-proxy".to_owned());
            t.resource = vec![
                ("k8s.namespace.name".to_owned(), namespace.clone()),
                ("k8s.pod.name".to_owned(), pod.clone()),
                ("kn.revision.name".to_owned(), revision.clone()),
            ];
            t.ca_file = [
                &c.otel_exporter_otlp_traces_certificate,
                &c.otel_exporter_otlp_certificate,
            ]
            .into_iter()
            .flatten()
            .find(|p| !p.is_empty())
            .map(Into::into);
            t
        });
        let metrics_push = match observability.request_metrics {
            MetricsProtocol::Otlp => shared::telemetry::otlp::push::PushConfig::from_knative(
                &observability.request_metrics_protocol,
                observability.request_metrics_endpoint.as_deref(),
                observability.request_metrics_interval,
            )
            .map_err(|e| invalid("OBSERVABILITY_CONFIG", e))?
            .map(|mut p| {
                p.service_name = "queue-proxy".to_owned();
                p.resource = vec![
                    ("k8s.namespace.name".to_owned(), namespace.clone()),
                    ("k8s.pod.name".to_owned(), pod.clone()),
                    ("kn.revision.name".to_owned(), revision.clone()),
                ];
                p.ca_file = tracing.as_ref().and_then(|t| t.ca_file.clone());
                p
            }),
            _ => None,
        };
        Ok(Self {
            namespace,
            service: c.serving_service.unwrap_or_default(),
            configuration,
            revision,
            pod,
            pod_ip,
            serving_port,
            serving_tls_port,
            user_port,
            container_concurrency: usize::try_from(cc.max(0)).unwrap_or(0),
            revision_timeout: Duration::from_secs(u64::try_from(t.max(0)).unwrap_or(0)),
            response_start_timeout,
            idle_timeout,
            readiness_probes,
            http2_auto_detection: opt_bool(
                c.enable_http2_auto_detection,
                "ENABLE_HTTP2_AUTO_DETECTION",
            )?,
            full_duplex: opt_bool(c.enable_http_full_duplex, "ENABLE_HTTP_FULL_DUPLEX")?,
            logging_config: c.serving_logging_config.unwrap_or_default(),
            logging_level: c.serving_logging_level.unwrap_or_default(),
            observability,
            admin_port: opt_port(c.queue_admin_port, "QUEUE_ADMIN_PORT", 8022)?,
            metrics_port: opt_port(c.queue_metrics_port, "QUEUE_METRICS_PORT", 9090)?,
            user_metrics_port,
            drain_quiet_period: Duration::from_secs(drain),
            bind_address: match c.queue_bind_address.as_deref() {
                None | Some("") => None,
                Some(s) => Some(
                    s.parse()
                        .map_err(|_| invalid("QUEUE_BIND_ADDRESS", "not an IP address"))?,
                ),
            },
            tracing,
            metrics_push,
            tls,
            header_read_timeout: match c.queue_header_read_timeout_seconds.as_deref() {
                None | Some("") => Duration::from_secs(60),
                Some(v) => match int(v, "QUEUE_HEADER_READ_TIMEOUT_SECONDS")? {
                    n if n > 0 => Duration::from_secs(n.unsigned_abs()),
                    _ => {
                        return Err(invalid(
                            "QUEUE_HEADER_READ_TIMEOUT_SECONDS",
                            "must be positive",
                        ));
                    }
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The minimal reconciler environment (`queue_test.go` defaults).
    pub(crate) fn cli() -> Cli {
        Cli {
            serving_namespace: Some("ns".into()),
            serving_configuration: Some("".into()),
            serving_revision: Some("rev".into()),
            serving_pod: Some("pod".into()),
            serving_pod_ip: Some("10.0.0.1".into()),
            queue_serving_port: Some("8012".into()),
            queue_serving_tls_port: Some("8112".into()),
            user_port: Some("8080".into()),
            container_concurrency: Some("0".into()),
            revision_timeout_seconds: Some("45".into()),
            observability_config: Some(
                r#"{"tracing":{},"metrics":{},"runtime":{},"requestMetrics":{}}"#.into(),
            ),
            ..Cli::default()
        }
    }

    #[test]
    fn env_names_are_knatives() {
        let cmd = Cli::command();
        let names: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ENV_NAMES);
    }

    #[test]
    fn defaults_from_the_reconciler_env() {
        let c = Config::try_from(cli()).unwrap();
        assert_eq!(c.container_concurrency, 0);
        assert_eq!(c.revision_timeout, Duration::from_secs(45));
        assert_eq!(c.response_start_timeout, None);
        assert_eq!((c.admin_port, c.metrics_port), (8022, 9090));
        assert_eq!(c.user_metrics_port, None);
        assert_eq!(c.drain_quiet_period, Duration::from_secs(30));
        assert!(c.readiness_probes.is_empty());
    }

    #[test]
    fn missing_or_bad_variables_are_named() {
        let mut c = cli();
        c.serving_pod = None;
        let e = Config::try_from(c).unwrap_err();
        assert!(e.to_string().contains("SERVING_POD"), "{e}");
        let mut c = cli();
        c.container_concurrency = Some("".into());
        let e = Config::try_from(c).unwrap_err();
        assert!(e.to_string().contains("CONTAINER_CONCURRENCY"), "{e}");
        let mut c = cli();
        c.observability_config = Some("{".into());
        assert!(Config::try_from(c).is_err());
        let mut c = cli();
        c.enable_http2_auto_detection = Some("yes".into());
        assert!(Config::try_from(c).is_err());
        let named = |f: fn(&mut Cli), name: &str| {
            let mut c = cli();
            f(&mut c);
            let e = Config::try_from(c).unwrap_err().to_string();
            assert!(e.contains(name), "{name}: {e}");
        };
        // Knative reads the TLS variables only with a certificate mounted, then exits 1:
        // accepted here, kept as the TLS listener's start-up error.
        let deferred = |f: fn(&mut Cli), name: &str| {
            let mut c = cli();
            f(&mut c);
            let e = Config::try_from(c).unwrap().tls.env_error.unwrap();
            assert!(e.contains(name), "{name}: {e}");
        };
        deferred(
            |c| c.queue_proxy_tls_min_version = Some("1.1".into()),
            "QUEUE_PROXY_TLS_MIN_VERSION",
        );
        deferred(
            |c| c.queue_proxy_tls_max_version = Some("1.2".into()),
            "QUEUE_PROXY_TLS_MAX_VERSION",
        );
        deferred(
            |c| c.queue_proxy_tls_cipher_suites = Some("TLS_RSA_WITH_RC4_128_SHA".into()),
            "QUEUE_PROXY_TLS_CIPHER_SUITES",
        );
        deferred(
            |c| c.queue_proxy_tls_curve_preferences = Some("Curve25519x".into()),
            "QUEUE_PROXY_TLS_CURVE_PREFERENCES",
        );
        named(
            |c| c.queue_tls_reload_seconds = Some("0".into()),
            "QUEUE_TLS_RELOAD_SECONDS",
        );
        named(
            |c| c.queue_header_read_timeout_seconds = Some("-1".into()),
            "QUEUE_HEADER_READ_TIMEOUT_SECONDS",
        );
    }

    #[test]
    fn tls_defaults_are_knatives() {
        let cfg = Config::try_from(cli()).unwrap();
        assert_eq!(
            cfg.tls.cert_dir,
            std::path::Path::new("/var/lib/knative/certs")
        );
        assert_eq!(cfg.tls.min_version, crate::tls::Version::Tls13);
        assert_eq!(cfg.tls.reload_period, Duration::from_secs(60));
        assert_eq!(cfg.header_read_timeout, Duration::from_secs(60));
        let mut c = cli();
        c.queue_proxy_tls_min_version = Some("1.2".into());
        c.queue_proxy_tls_cipher_suites = Some("".into());
        let cfg = Config::try_from(c).unwrap();
        assert_eq!(
            (cfg.tls.min_version, cfg.tls.max_version),
            (crate::tls::Version::Tls12, crate::tls::Version::Tls13)
        );
    }

    #[test]
    fn tracing_settings_and_otel_overrides() {
        let mut c = cli();
        c.observability_config = Some(
            r#"{"tracing":{"protocol":"http/protobuf","endpoint":"collector:4318","samplingRate":0.5}}"#
                .into(),
        );
        let t = Config::try_from(c.clone()).unwrap().tracing.unwrap();
        // knative.dev/pkg: a bare `name:port` is `https://name:port`.
        assert_eq!(
            t.endpoint.unwrap().to_string(),
            "https://collector:4318/v1/traces"
        );
        assert_eq!(t.ca_file, None);
        c.otel_exporter_otlp_certificate = Some("/etc/ca.pem".into());
        let t = Config::try_from(c.clone()).unwrap().tracing.unwrap();
        assert_eq!(
            t.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert!((t.sampling_rate - 0.5).abs() < f64::EPSILON);
        assert_eq!(t.service_name, "queue-proxy");
        c.otel_exporter_otlp_traces_endpoint = Some("http://other:9/t".into());
        c.otel_service_name = Some("svc".into());
        let t = Config::try_from(c.clone()).unwrap().tracing.unwrap();
        assert_eq!(t.endpoint.unwrap().to_string(), "http://other:9/t");
        assert_eq!(t.service_name, "svc");
        // Off by default, and with "none".
        assert!(Config::try_from(cli()).unwrap().tracing.is_none());
        c.observability_config = Some(r#"{"tracing":{"protocol":"none"}}"#.into());
        assert!(Config::try_from(c.clone()).unwrap().tracing.is_none());
        // A protocol without an endpoint, or an unknown one, names the variable.
        c.otel_exporter_otlp_traces_endpoint = None;
        c.observability_config = Some(r#"{"tracing":{"protocol":"grpc"}}"#.into());
        let e = Config::try_from(c.clone()).unwrap_err().to_string();
        assert!(
            e.contains("OBSERVABILITY_CONFIG") && e.contains("endpoint"),
            "{e}"
        );
        c.observability_config = Some(r#"{"tracing":{"protocol":"zipkin"}}"#.into());
        let e = Config::try_from(c).unwrap_err().to_string();
        assert!(e.contains("zipkin"), "{e}");
    }

    #[test]
    fn go_int_and_overrides() {
        assert_eq!(parse_go_int("0x10"), Some(16));
        assert_eq!(parse_go_int("010"), Some(8));
        assert_eq!(parse_go_int("-3"), Some(-3));
        let mut c = cli();
        c.container_concurrency = Some("-1".into());
        c.queue_drain_seconds = Some("2".into());
        c.observability_config =
            Some(r#"{"requestMetrics":{"protocol":"prometheus","endpoint":":9191"}}"#.into());
        let cfg = Config::try_from(c.clone()).unwrap();
        assert_eq!(cfg.container_concurrency, 0);
        assert_eq!(cfg.drain_quiet_period, Duration::from_secs(2));
        assert_eq!(cfg.user_metrics_port, Some(9191));
        c.queue_user_metrics_port = Some("9999".into());
        assert_eq!(Config::try_from(c).unwrap().user_metrics_port, Some(9999));
    }

    #[test]
    fn bind_address_is_all_interfaces_unless_set() {
        let mut c = cli();
        assert_eq!(Config::try_from(c.clone()).unwrap().bind_address, None);
        c.queue_bind_address = Some("127.0.0.1".into());
        assert_eq!(
            Config::try_from(c.clone()).unwrap().bind_address,
            Some(std::net::IpAddr::from([127, 0, 0, 1]))
        );
        c.queue_bind_address = Some("localhost".into());
        let e = Config::try_from(c).unwrap_err().to_string();
        assert!(e.contains("QUEUE_BIND_ADDRESS"), "{e}");
    }
}
