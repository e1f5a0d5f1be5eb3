//! Activator settings: Knative's env vars (activator.md §1.1) plus our flags, validated into
//! [`Config`]; and the activator's `main`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

/// Exit code for a bad setting (`EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

/// Activator settings as given on the command line or in the environment.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// This pod's name: `pod_name` in every stat sent to the autoscaler.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// This pod's IP, matched as a string against the activator IPs of a revision (subsetting).
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<String>,
    /// Namespace of the autoscaler service.
    #[arg(long, env = "SYSTEM_NAMESPACE")]
    pub system_namespace: Option<String>,
    /// Upstream idle connections kept in total (accepted for compatibility; the pool is per pod).
    #[arg(long, env = "MAX_IDLE_PROXY_CONNS", default_value_t = 1000)]
    pub max_idle_proxy_conns: usize,
    /// Upstream idle connections kept per pod.
    #[arg(long, env = "MAX_IDLE_PROXY_CONNS_PER_HOST", default_value_t = 100)]
    pub max_idle_proxy_conns_per_host: usize,
    /// Deadline of one round of pod probes (Go duration).
    #[arg(long, env = "PROBE_TIMEOUT", default_value = "300ms")]
    pub probe_timeout: String,
    /// Slow re-probe tick (Go duration).
    #[arg(long, env = "PROBE_FREQUENCY", default_value = "200ms")]
    pub probe_frequency: String,
    /// Cluster domain for `<rev>.<ns>.svc.<domain>` hosts and the autoscaler address. Unset:
    /// the `search svc.<domain>` entry of /etc/resolv.conf, else `cluster.local` (Knative's
    /// `network.GetClusterDomainName`).
    #[arg(long, env = "CLUSTER_DOMAIN")]
    pub cluster_domain: Option<String>,
    /// Control-plane source: `kubernetes` (alias `kube`; watch the API server with the pod's
    /// service account, the default so Knative's own manifests work unchanged) or `file:PATH`
    /// (JSON or YAML, re-read on change).
    #[arg(long, env = "ACTIVATOR_SOURCE", default_value = "kubernetes")]
    pub source: String,
    /// Where stats go: `autoscaler` (ws://autoscaler.<SYSTEM_NAMESPACE>.svc.<domain>:8080),
    /// a `ws://` URL, or `none`.
    #[arg(long, env = "ACTIVATOR_STATS_SINK", default_value = "autoscaler")]
    pub stats_sink: String,
    /// HTTP/1 (+h2c) listener (Knative port 8012).
    #[arg(long, env = "ACTIVATOR_HTTP1_ADDR", default_value = "0.0.0.0:8012")]
    pub http1_addr: SocketAddr,
    /// h2c listener (Knative port 8013).
    #[arg(long, env = "ACTIVATOR_H2C_ADDR", default_value = "0.0.0.0:8013")]
    pub h2c_addr: SocketAddr,
    /// Prometheus metrics listener (Knative port 9090); `none` disables it.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: String,
    /// How long to keep serving after the first SIGTERM before closing listeners.
    #[arg(long, env = "ACTIVATOR_DRAIN_DELAY", default_value = "45s")]
    pub drain_delay: String,
    /// Most requests held per revision (beyond it: 503 `pending request queue full`).
    #[arg(long, env = "ACTIVATOR_MAX_QUEUED_REQUESTS", default_value_t = 10_000)]
    pub max_queued_requests: usize,
    /// Most bytes pinned by held requests, all revisions together (head + 2 KiB each).
    #[arg(long, env = "ACTIVATOR_MAX_QUEUED_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_queued_bytes: usize,
    /// Log level override (wins over `config-logging`; else info).
    #[arg(long, env = "ACTIVATOR_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Knative's `config-logging`: a mounted ConfigMap directory or a ConfigMap YAML file
    /// (`zap-logger-config`, `loglevel.activator`), read at start-up when it exists. With the
    /// Kubernetes source the API's copy replaces it and is watched.
    #[arg(long, env = "ACTIVATOR_CONFIG_LOGGING")]
    pub config_logging: Option<PathBuf>,
    /// Knative's `config-observability` (mounted directory or ConfigMap YAML): the
    /// `tracing-protocol`, `tracing-endpoint`, `tracing-sampling-rate`,
    /// `logging.enable-request-log` and `logging.request-log-template` keys, read at start-up.
    #[arg(long, env = "ACTIVATOR_CONFIG_OBSERVABILITY")]
    pub config_observability: Option<PathBuf>,
    /// Profiling server port (Knative's 8008); it answers 404 unless `config-observability`
    /// has `runtime-profiling: enabled`. 0 disables the listener.
    #[arg(long, env = "PROFILING_PORT", default_value_t = shared::profiling::DEFAULT_PORT)]
    pub profiling_port: u16,
    /// Name of the logging ConfigMap in `SYSTEM_NAMESPACE` (Kubernetes source).
    #[arg(long, env = "CONFIG_LOGGING_NAME", default_value = "config-logging")]
    pub config_logging_name: String,
    /// Name of the observability ConfigMap in `SYSTEM_NAMESPACE` (Kubernetes source).
    #[arg(
        long,
        env = "CONFIG_OBSERVABILITY_NAME",
        default_value = "config-observability"
    )]
    pub config_observability_name: String,
}

/// Where the control plane comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    /// `file:PATH`.
    File(PathBuf),
    /// `kubernetes` / `kube`: Revisions, EndpointSlices and Services from the API server.
    Kubernetes,
}

/// Where stats go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkSpec {
    /// Nowhere.
    None,
    /// A websocket URL.
    Websocket(String),
}

/// Validated settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// `POD_NAME`.
    pub pod_name: String,
    /// `POD_IP`.
    pub pod_ip: String,
    /// `SYSTEM_NAMESPACE`.
    pub system_namespace: String,
    /// Idle connections per pod.
    pub max_idle_per_host: usize,
    /// Probe round deadline.
    pub probe_timeout: Duration,
    /// Slow probe tick.
    pub probe_frequency: Duration,
    /// `CLUSTER_DOMAIN`.
    pub cluster_domain: String,
    /// Source (`None` only for in-process use, where the caller feeds the catalog).
    pub source: Option<SourceSpec>,
    /// Stats destination.
    pub sink: SinkSpec,
    /// Listener addresses (the binary binds them; `run` takes bound listeners).
    pub http1_addr: SocketAddr,
    /// h2c listener address.
    pub h2c_addr: SocketAddr,
    /// Metrics listener address.
    pub metrics_addr: Option<SocketAddr>,
    /// Serve this long after the first signal.
    pub drain_delay: Duration,
    /// Held requests per revision.
    pub max_queued_requests: usize,
    /// Held bytes in total.
    pub max_queued_bytes: usize,
    /// Log level override.
    pub log_level: Option<String>,
    /// `config-logging` (empty when not given).
    pub logging: crate::configmap::LoggingConfig,
    /// Span export from `config-observability`; `None` = off (Knative's default).
    pub tracing: Option<shared::telemetry::otlp::ExportConfig>,
    /// Request log template from `config-observability`; `None` = off (Knative's default).
    pub request_log: Option<shared::telemetry::reqlog::Template>,
    /// The activator is also the ingress (`activator local`): it adds the headers a Knative
    /// ingress adds and speaks h2c to `h2c` revisions whatever the client speaks. Off in a
    /// cluster, where the ingress in front does both.
    pub ingress: bool,
    /// The ConfigMaps the Kubernetes source watches.
    pub configmap_names: crate::source::kube::configmaps::Names,
    /// Profiling listener (`None`: none).
    pub profiling_addr: Option<SocketAddr>,
    /// `runtime-profiling: enabled` in a mounted `config-observability` (the API's copy, when
    /// watched, replaces it).
    pub profiling: bool,
    /// Why `config-observability`'s request-log keys could not be applied: logged once at
    /// start, and the activator serves without request logs, as Knative's does.
    pub request_log_error: Option<String>,
}

impl Config {
    /// Settings for in-process use (tests, `activator local`): no source, stats discarded,
    /// Knative's probe timings, no drain delay.
    pub fn in_process(pod_name: &str, pod_ip: &str) -> Self {
        Self {
            pod_name: pod_name.to_owned(),
            pod_ip: pod_ip.to_owned(),
            system_namespace: "knative-serving".to_owned(),
            max_idle_per_host: 100,
            probe_timeout: Duration::from_millis(300),
            probe_frequency: Duration::from_millis(200),
            cluster_domain: "cluster.local".to_owned(),
            source: None,
            sink: SinkSpec::None,
            http1_addr: ([127, 0, 0, 1], 0).into(),
            h2c_addr: ([127, 0, 0, 1], 0).into(),
            metrics_addr: None,
            drain_delay: Duration::ZERO,
            max_queued_requests: 10_000,
            max_queued_bytes: 64 * 1024 * 1024,
            log_level: None,
            logging: crate::configmap::LoggingConfig::default(),
            tracing: None,
            request_log: None,
            ingress: false,
            configmap_names: crate::source::kube::configmaps::Names::default(),
            profiling_addr: None,
            profiling: false,
            request_log_error: None,
        }
    }
}

/// A setting is invalid; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {name}: {reason}")]
pub struct ConfigError {
    /// The env var / flag.
    pub name: &'static str,
    /// Why.
    pub reason: String,
}

fn bad(name: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        name,
        reason: reason.into(),
    }
}

fn duration(name: &'static str, v: &str) -> Result<Duration, ConfigError> {
    parse_go_duration(v.trim()).ok_or_else(|| {
        bad(
            name,
            format!("{v:?}: not a Go duration (e.g. 300ms, 1.5s, 1m30s)"),
        )
    })
}

/// Go's `time.ParseDuration` for non-negative values: one or more `<number><unit>` with an
/// optional fraction, units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`; `0` alone is allowed.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return None;
        }
        let value: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Where the pod's resolver configuration lives.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Knative's default cluster domain.
const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// The cluster domain from resolv.conf text: the first `search` entry starting with `svc.`, minus
/// that prefix and any trailing dot (`search ns.svc.cluster.local svc.cluster.local` gives
/// `cluster.local`). Mirrors knative.dev/pkg `network.getClusterDomainName`.
pub fn cluster_domain_from_resolv(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("search"))
        .filter(|rest| rest.starts_with([' ', '\t']))
        .flat_map(str::split_whitespace)
        .find_map(|e| e.strip_prefix("svc."))
        .map(|d| d.trim_end_matches('.').to_owned())
        .filter(|d| !d.is_empty())
}

fn cluster_domain(env: Option<String>) -> String {
    env.filter(|d| !d.trim().is_empty())
        .map(|d| d.trim().to_owned())
        .or_else(|| {
            std::fs::read_to_string(RESOLV_CONF)
                .ok()
                .and_then(|t| cluster_domain_from_resolv(&t))
        })
        .unwrap_or_else(|| DEFAULT_CLUSTER_DOMAIN.to_owned())
}

fn required(name: &'static str, v: Option<String>) -> Result<String, ConfigError> {
    v.filter(|s| !s.is_empty())
        .ok_or_else(|| bad(name, "required"))
}

impl TryFrom<ServeArgs> for Config {
    type Error = ConfigError;

    fn try_from(a: ServeArgs) -> Result<Self, ConfigError> {
        let system_namespace = required("SYSTEM_NAMESPACE", a.system_namespace)?;
        let cluster_domain = cluster_domain(a.cluster_domain);
        let source = match a.source.trim() {
            "kubernetes" | "kube" => Some(SourceSpec::Kubernetes),
            s => match s.split_once(':') {
                Some(("file", p)) if !p.is_empty() => Some(SourceSpec::File(PathBuf::from(p))),
                _ => {
                    return Err(bad(
                        "ACTIVATOR_SOURCE",
                        format!("{s:?}: expected kubernetes or file:PATH"),
                    ));
                }
            },
        };
        let sink = match a.stats_sink.as_str() {
            "none" => SinkSpec::None,
            "autoscaler" => SinkSpec::Websocket(format!(
                "ws://autoscaler.{system_namespace}.svc.{cluster_domain}:8080"
            )),
            u if u.starts_with("ws://") || u.starts_with("wss://") => {
                SinkSpec::Websocket(u.to_owned())
            }
            other => {
                return Err(bad(
                    "--stats-sink",
                    format!("{other:?}: expected autoscaler, none or a ws:// URL"),
                ));
            }
        };
        let metrics_addr = match a.metrics_addr.as_str() {
            "none" | "" => None,
            s => Some(
                s.parse()
                    .map_err(|e| bad("METRICS_ADDR", format!("{s:?}: {e}")))?,
            ),
        };
        let probe_timeout = duration("PROBE_TIMEOUT", &a.probe_timeout)?;
        let probe_frequency = duration("PROBE_FREQUENCY", &a.probe_frequency)?;
        if probe_frequency.is_zero() {
            return Err(bad("PROBE_FREQUENCY", "must be > 0"));
        }
        if probe_timeout.is_zero() {
            return Err(bad("PROBE_TIMEOUT", "must be > 0"));
        }
        if a.max_queued_requests == 0 {
            return Err(bad("ACTIVATOR_MAX_QUEUED_REQUESTS", "must be > 0"));
        }
        // Knative's activator logs a request-log setting it cannot apply and serves on.
        let request_log = match &a.config_observability {
            Some(p) => crate::configmap::read_request_log(p).map_err(|e| e.to_string()),
            None => Ok(None),
        };
        Ok(Self {
            pod_name: required("POD_NAME", a.pod_name)?,
            pod_ip: required("POD_IP", a.pod_ip)?,
            system_namespace,
            max_idle_per_host: a.max_idle_proxy_conns_per_host,
            probe_timeout,
            probe_frequency,
            cluster_domain,
            source,
            sink,
            http1_addr: a.http1_addr,
            h2c_addr: a.h2c_addr,
            metrics_addr,
            drain_delay: duration("ACTIVATOR_DRAIN_DELAY", &a.drain_delay)?,
            max_queued_requests: a.max_queued_requests,
            max_queued_bytes: a.max_queued_bytes,
            log_level: a.log_level,
            logging: match &a.config_logging {
                Some(p) => crate::configmap::LoggingConfig::read(p)
                    .map_err(|e| bad("ACTIVATOR_CONFIG_LOGGING", e.to_string()))?,
                None => crate::configmap::LoggingConfig::default(),
            },
            tracing: match &a.config_observability {
                Some(p) => crate::configmap::read_tracing(p)
                    .map_err(|e| bad("ACTIVATOR_CONFIG_OBSERVABILITY", e.to_string()))?,
                None => None,
            },
            request_log: request_log.as_ref().ok().cloned().flatten(),
            request_log_error: request_log.err(),
            ingress: false,
            configmap_names: crate::source::kube::configmaps::Names {
                logging: a.config_logging_name,
                observability: a.config_observability_name,
            },
            profiling_addr: (a.profiling_port != 0)
                .then(|| SocketAddr::from(([0, 0, 0, 0], a.profiling_port))),
            profiling: match &a.config_observability {
                Some(p) => {
                    crate::configmap::read_configmap(p, &[crate::configmap::RUNTIME_PROFILING])
                        .map(|d| crate::configmap::profiling_from_data(&d))
                        .map_err(|e| bad("ACTIVATOR_CONFIG_OBSERVABILITY", e.to_string()))?
                }
                None => false,
            },
        })
    }
}

/// Runs the activator: validate, bind, serve until signalled.
pub fn main(args: ServeArgs) -> ExitCode {
    let config = match Config::try_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("activator: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let level = shared::telemetry::log::resolve_level(
        config
            .log_level
            .as_deref()
            .or(config.logging.level.as_deref()),
        config.logging.zap_logger_config.as_deref(),
    );
    // Behind a reloadable filter: `config-logging` changes apply while running.
    crate::configmap::init_logging(
        shared::telemetry::log::ZapFormat {
            logger: "activator".into(),
            key: None,
            pod: Some(config.pod_name.clone()),
            // Knative's activator adds its component name to every line.
            controller: Some("activator".into()),
            ..Default::default()
        }
        .with_zap_config(config.logging.zap_logger_config.as_deref()),
        level,
    );
    if let Some(e) = &config.request_log_error {
        tracing::error!(error = %e, "Failed to update the request log template.");
    }
    let rt = match runtime().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("activator: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(crate::serve_process(config))
}

/// The runtime for `available_parallelism` CPUs, which honours the CPU affinity mask and the
/// cgroup CPU quota (Knative's activator deployment limits it to 1 CPU). With one CPU a
/// multi-thread runtime still runs one worker thread, but every wake-up goes through its shared
/// queues and the main thread parks beside it; the current-thread scheduler runs the same tasks
/// with less bookkeeping (as the queue-proxy does; benches/RESULTS.md, activator hop).
fn runtime() -> tokio::runtime::Builder {
    match std::thread::available_parallelism().map(std::num::NonZeroUsize::get) {
        Ok(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn args() -> ServeArgs {
        ServeArgs {
            pod_name: Some("a".into()),
            pod_ip: Some("10.0.0.1".into()),
            system_namespace: Some("knative-serving".into()),
            max_idle_proxy_conns: 1000,
            max_idle_proxy_conns_per_host: 100,
            probe_timeout: "300ms".into(),
            probe_frequency: "200ms".into(),
            cluster_domain: Some("cluster.local".into()),
            source: "file:/x.yaml".into(),
            stats_sink: "autoscaler".into(),
            http1_addr: ([0, 0, 0, 0], 8012).into(),
            h2c_addr: ([0, 0, 0, 0], 8013).into(),
            metrics_addr: "0.0.0.0:9090".into(),
            drain_delay: "45s".into(),
            max_queued_requests: 10,
            max_queued_bytes: 10,
            log_level: None,
            config_logging: None,
            config_observability: None,
            profiling_port: 0,
            config_logging_name: "config-logging".into(),
            config_observability_name: "config-observability".into(),
        }
    }

    #[test]
    fn valid_defaults() {
        let c = Config::try_from(args()).unwrap();
        assert_eq!(
            c.sink,
            SinkSpec::Websocket("ws://autoscaler.knative-serving.svc.cluster.local:8080".into())
        );
        assert_eq!(c.probe_timeout, Duration::from_millis(300));
        assert_eq!(c.drain_delay, Duration::from_secs(45));
        assert_eq!(c.source, Some(SourceSpec::File("/x.yaml".into())));
    }

    #[test]
    fn config_logging_is_read_and_named_in_errors() {
        // A volume that is not mounted is skipped (Knative's Deployment mounts none).
        let mut a = args();
        a.config_logging = Some("/nonexistent/config-logging".into());
        assert!(Config::try_from(a).is_ok());
        let dir = std::env::temp_dir().join(format!("act-cfg-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("loglevel.activator"), "loud").unwrap();
        let mut a = args();
        a.config_logging = Some(dir.clone());
        let e = Config::try_from(a).unwrap_err();
        assert_eq!(e.name, "ACTIVATOR_CONFIG_LOGGING");
        assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn errors_name_the_setting() {
        let mut a = args();
        a.probe_timeout = "soon".into();
        assert_eq!(Config::try_from(a).unwrap_err().name, "PROBE_TIMEOUT");
        let mut a = args();
        a.pod_ip = None;
        assert_eq!(Config::try_from(a).unwrap_err().name, "POD_IP");
        for bad in ["kube:", "", "file:", "k8s"] {
            let mut a = args();
            a.source = bad.into();
            assert_eq!(
                Config::try_from(a).unwrap_err().name,
                "ACTIVATOR_SOURCE",
                "{bad:?}"
            );
        }
        for good in ["kubernetes", "kube"] {
            let mut a = args();
            a.source = good.into();
            assert_eq!(
                Config::try_from(a).unwrap().source,
                Some(SourceSpec::Kubernetes)
            );
        }
    }

    #[test]
    fn cluster_domain_from_resolv_conf() {
        let k8s = "nameserver 10.96.0.10\nsearch default.svc.corp.example svc.corp.example corp.example\noptions ndots:5\n";
        assert_eq!(
            cluster_domain_from_resolv(k8s).as_deref(),
            Some("corp.example")
        );
        assert_eq!(
            cluster_domain_from_resolv("search\tsvc.cluster.local.\n").as_deref(),
            Some("cluster.local")
        );
        for none in [
            "",
            "nameserver 1.1.1.1\n",
            "search example.com\n",
            "searchsvc.x\n",
        ] {
            assert_eq!(cluster_domain_from_resolv(none), None, "{none:?}");
        }
        // CLUSTER_DOMAIN wins over resolv.conf.
        let mut a = args();
        a.cluster_domain = Some("corp.example".into());
        let c = Config::try_from(a).unwrap();
        assert_eq!(
            c.sink,
            SinkSpec::Websocket("ws://autoscaler.knative-serving.svc.corp.example:8080".into())
        );
    }

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_go_duration("300ms"), Some(ms(300)));
        assert_eq!(parse_go_duration("1.5s"), Some(ms(1500)));
        assert_eq!(parse_go_duration("1m30s"), Some(ms(90_000)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("200us"), Some(Duration::from_micros(200)));
        for bad in ["", "5", "1x", "s", "-1s", "1s ms"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn knative_env_names() {
        let cmd = crate::cli::Cli::command();
        let envs: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
            .collect();
        for name in [
            "POD_NAME",
            "POD_IP",
            "SYSTEM_NAMESPACE",
            "MAX_IDLE_PROXY_CONNS",
            "MAX_IDLE_PROXY_CONNS_PER_HOST",
            "PROBE_TIMEOUT",
            "PROBE_FREQUENCY",
            "CLUSTER_DOMAIN",
        ] {
            assert!(
                envs.iter().any(|e| e == name),
                "{name} missing from {envs:?}"
            );
        }
    }
}
