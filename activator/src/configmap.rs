//! Knative's ConfigMaps for the activator: `config-logging` (`zap-logger-config` and its
//! `level`, `loglevel.activator` winning over it) and the tracing, request-log and
//! `runtime-profiling` keys of `config-observability`.
//!
//! With the Kubernetes source they come from the API server (a watch on the ConfigMaps of
//! `SYSTEM_NAMESPACE`, [`crate::source::kube::configmaps`]), as in Knative: the log level, the
//! request log and profiling apply live; tracing is read at start-up. A mounted ConfigMap volume
//! (a directory with one file per key) or a ConfigMap manifest (`kind: ConfigMap` YAML) is read
//! at start-up when its path is given and exists; the API's copy replaces it once read.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use shared::telemetry::log::ZapFormat;
use shared::telemetry::reqlog::Template;
use tokio::sync::watch;
use tracing::Level;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Registry, reload};

/// The keys of `config-logging` the activator uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoggingConfig {
    /// `zap-logger-config`: zap's JSON configuration.
    pub zap_logger_config: Option<String>,
    /// `loglevel.activator`.
    pub level: Option<String>,
}

/// Why `config-logging` could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct LoggingConfigError {
    /// The path given.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Reads `keys` of a ConfigMap from a mounted volume (a directory, one file per key) or from a
/// ConfigMap manifest (YAML with `data:`). Missing keys are simply absent.
///
/// # Errors
/// An unreadable path or file, or YAML that is not a ConfigMap; the message names the path.
pub fn read_configmap(
    path: &Path,
    keys: &[&str],
) -> Result<BTreeMap<String, String>, LoggingConfigError> {
    let err = |reason: String| LoggingConfigError {
        path: path.display().to_string(),
        reason,
    };
    // A volume that is not mounted (Knative's own Deployment mounts none) is simply absent.
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    if path.is_dir() {
        let mut m = BTreeMap::new();
        for key in keys {
            match std::fs::read_to_string(path.join(key)) {
                Ok(v) => {
                    m.insert((*key).to_owned(), v);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(format!("{key}: {e}"))),
            }
        }
        return Ok(m);
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    #[derive(serde::Deserialize)]
    struct ConfigMap {
        #[serde(default)]
        data: BTreeMap<String, String>,
    }
    let mut data = serde_yaml_ng::from_str::<ConfigMap>(&text)
        .map_err(|e| err(format!("not a ConfigMap: {e}")))?
        .data;
    data.retain(|k, _| keys.contains(&k.as_str()));
    Ok(data)
}

/// The tracing keys of `config-observability`.
pub const TRACING_KEYS: &[&str] = &[
    "tracing-protocol",
    "tracing-endpoint",
    "tracing-sampling-rate",
];
/// `logging.enable-request-log`.
pub const ENABLE_REQUEST_LOG: &str = "logging.enable-request-log";
/// `logging.request-log-template`.
pub const REQUEST_LOG_TEMPLATE: &str = "logging.request-log-template";
/// `runtime-profiling` (`enabled` turns the profiling server on).
pub const RUNTIME_PROFILING: &str = "runtime-profiling";

fn path_err(path: &Path) -> impl Fn(String) -> LoggingConfigError + '_ {
    move |reason| LoggingConfigError {
        path: path.display().to_string(),
        reason,
    }
}

/// Knative's `config-observability` tracing keys (`tracing-protocol`, `tracing-endpoint`,
/// `tracing-sampling-rate`), read at start-up like Knative's activator.
///
/// # Errors
/// An unreadable ConfigMap, a rate that is not a number, or an unknown protocol / unusable
/// endpoint ([`shared::telemetry::otlp::ExportError`]); the message names the path and key.
pub fn read_tracing(
    path: &Path,
) -> Result<Option<shared::telemetry::otlp::ExportConfig>, LoggingConfigError> {
    tracing_from_data(&read_configmap(path, TRACING_KEYS)?).map_err(path_err(path))
}

/// [`read_tracing`] from a ConfigMap's data.
///
/// # Errors
/// A bad key; the message names it.
pub fn tracing_from_data(
    data: &BTreeMap<String, String>,
) -> Result<Option<shared::telemetry::otlp::ExportConfig>, String> {
    let get = |k: &str| {
        data.get(k)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let rate = match get("tracing-sampling-rate") {
        None => 0.0,
        Some(r) => r
            .parse::<f64>()
            .map_err(|_| format!("tracing-sampling-rate: {r:?} is not a number"))?,
    };
    shared::telemetry::otlp::ExportConfig::from_knative(
        get("tracing-protocol").as_deref().unwrap_or(""),
        get("tracing-endpoint").as_deref(),
        rate,
        None,
        None,
    )
    .map(|c| {
        c.map(|mut c| {
            c.service_name = "activator".to_owned();
            c
        })
    })
    .map_err(|e| format!("tracing-*: {e}"))
}

/// `config-observability`'s request-log keys: the parsed template when
/// `logging.enable-request-log` is `"true"`, else `None`. Without a
/// `logging.request-log-template` key Knative's stock template is used.
///
/// # Errors
/// Enabled with an empty template (Knative's validation rejects it too), or a template with an
/// action we do not support; the message names the key.
pub fn read_request_log(path: &Path) -> Result<Option<Template>, LoggingConfigError> {
    request_log_from_data(&read_configmap(
        path,
        &[ENABLE_REQUEST_LOG, REQUEST_LOG_TEMPLATE],
    )?)
    .map_err(path_err(path))
}

/// [`read_request_log`] from a ConfigMap's data.
///
/// # Errors
/// As [`read_request_log`].
pub fn request_log_from_data(data: &BTreeMap<String, String>) -> Result<Option<Template>, String> {
    let enabled = match data.get(ENABLE_REQUEST_LOG).map(|v| v.trim()) {
        None | Some("") => false,
        Some(v) => v
            .parse::<bool>()
            .map_err(|_| format!("{ENABLE_REQUEST_LOG}: {v:?} is not true or false"))?,
    };
    if !enabled {
        return Ok(None);
    }
    let template = data
        .get(REQUEST_LOG_TEMPLATE)
        .map_or(shared::telemetry::reqlog::DEFAULT_TEMPLATE, String::as_str);
    if template.trim().is_empty() {
        return Err(format!(
            "{REQUEST_LOG_TEMPLATE}: empty, but {ENABLE_REQUEST_LOG} is \"true\""
        ));
    }
    Template::parse(template)
        .map(Some)
        .map_err(|e| format!("{REQUEST_LOG_TEMPLATE}: {e}"))
}

/// `runtime-profiling: enabled` (Knative's only accepted "on" value; anything else is off).
pub fn profiling_from_data(data: &BTreeMap<String, String>) -> bool {
    data.get(RUNTIME_PROFILING)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("enabled"))
}

const ZAP_KEY: &str = "zap-logger-config";
const LEVEL_KEY: &str = "loglevel.activator";

/// Zap's levels (`debug`, `info`, `warn`, `error`, `dpanic`, `panic`, `fatal`).
const LEVELS: &[&str] = &["debug", "info", "warn", "error", "dpanic", "panic", "fatal"];

impl LoggingConfig {
    /// Reads a mounted ConfigMap directory or a ConfigMap YAML file.
    ///
    /// # Errors
    /// An unreadable path, YAML that is not a ConfigMap, invalid zap JSON, or an unknown level;
    /// the message names the path and the key.
    pub fn read(path: &Path) -> Result<Self, LoggingConfigError> {
        Self::from_data(&read_configmap(path, &[ZAP_KEY, LEVEL_KEY])?).map_err(path_err(path))
    }

    /// From a ConfigMap's data.
    ///
    /// # Errors
    /// Invalid zap JSON or an unknown level; the message names the key.
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, String> {
        let zap = data
            .get(ZAP_KEY)
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        if let Some(z) = &zap {
            serde_json::from_str::<serde_json::Value>(z)
                .map_err(|e| format!("{ZAP_KEY}: invalid JSON: {e}"))?;
        }
        let level = data
            .get(LEVEL_KEY)
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty());
        if let Some(l) = &level
            && shared::telemetry::log::parse_level(l).is_none()
        {
            return Err(format!(
                "{LEVEL_KEY}: unknown level {l:?} (accepted: {})",
                LEVELS.join(", ")
            ));
        }
        Ok(Self {
            zap_logger_config: zap,
            level,
        })
    }

    /// The level these keys give (`loglevel.activator`, else zap's `level`, else info).
    pub fn level(&self) -> Level {
        shared::telemetry::log::resolve_level(
            self.level.as_deref(),
            self.zap_logger_config.as_deref(),
        )
    }
}

// === live settings ===

/// The global log filter's handle, set by [`init_logging`].
static LEVEL: OnceLock<reload::Handle<LevelFilter, Registry>> = OnceLock::new();

/// Installs the global subscriber: Knative's zap JSON lines on stdout, behind a level filter
/// that [`set_level`] changes while running. Returns false if a subscriber was already set.
pub fn init_logging(format: ZapFormat, level: Level) -> bool {
    let (filter, handle) = reload::Layer::new(LevelFilter::from_level(level));
    let fmt = tracing_subscriber::fmt::layer()
        .event_format(format)
        .with_writer(std::io::stdout);
    let ok = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok();
    if ok {
        let _ = LEVEL.set(handle);
    }
    ok
}

/// Changes the level of the subscriber [`init_logging`] installed; false without one.
pub fn set_level(level: Level) -> bool {
    LEVEL
        .get()
        .is_some_and(|h| h.reload(LevelFilter::from_level(level)).is_ok())
}

/// The request-log template in force; `None` = off. Read per request.
pub type RequestLogRx = watch::Receiver<Option<Arc<Template>>>;

/// The settings `config-logging` and `config-observability` change while the activator runs.
#[derive(Debug)]
pub struct Live {
    /// The request-log template ([`request_log_from_data`]).
    pub request_log: watch::Sender<Option<Arc<Template>>>,
    /// `runtime-profiling: enabled`.
    pub profiling: watch::Sender<bool>,
    /// `ACTIVATOR_LOG_LEVEL` was given: it wins over `config-logging`, which is then not applied.
    pub level_pinned: bool,
    /// The template source in force (`None` = off), to tell a real change from a re-list.
    request_log_source: std::sync::Mutex<Option<String>>,
}

impl Live {
    /// Initial values (from the start-up configuration).
    pub fn new(request_log: Option<Template>, profiling: bool, level_pinned: bool) -> Self {
        Self {
            // A source no ConfigMap has: the first one seen always applies.
            request_log_source: std::sync::Mutex::new(
                request_log.is_some().then(|| "\0start-up".to_owned()),
            ),
            request_log: watch::Sender::new(request_log.map(Arc::new)),
            profiling: watch::Sender::new(profiling),
            level_pinned,
        }
    }

    /// Applies a `config-logging` ConfigMap; a bad one is logged and the old level kept (as
    /// Knative rejects an invalid config).
    pub fn apply_logging(&self, data: &BTreeMap<String, String>) {
        match LoggingConfig::from_data(data) {
            Ok(c) if !self.level_pinned => {
                let level = c.level();
                if set_level(level) {
                    tracing::info!(level = %level, "config-logging applied");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "config-logging rejected; keeping the current level")
            }
        }
    }

    /// Applies a `config-observability` ConfigMap's live keys (request log, profiling).
    pub fn apply_observability(&self, data: &BTreeMap<String, String>) {
        match request_log_from_data(data) {
            Ok(t) => {
                // Templates are compared by their source: an unrelated key's update is no change.
                let source = t.is_some().then(|| {
                    data.get(REQUEST_LOG_TEMPLATE).map_or_else(
                        || shared::telemetry::reqlog::DEFAULT_TEMPLATE.to_owned(),
                        Clone::clone,
                    )
                });
                let mut last = self
                    .request_log_source
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if *last != source {
                    *last = source;
                    tracing::info!(
                        enabled = t.is_some(),
                        "request log updated from config-observability"
                    );
                    self.request_log.send_replace(t.map(Arc::new));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "config-observability request log rejected; keeping the current one")
            }
        }
        let profiling = profiling_from_data(data);
        if self
            .profiling
            .send_if_modified(|cur| std::mem::replace(cur, profiling) != profiling)
        {
            tracing::info!(
                enabled = profiling,
                "runtime-profiling updated from config-observability"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("act-logging-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn reads_a_configmap_manifest_and_a_mounted_volume() {
        let d = tmp("manifest");
        let f = d.join("config-logging.yaml");
        std::fs::write(
            &f,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: config-logging}\ndata:\n  zap-logger-config: |\n    {\"level\": \"warn\"}\n  loglevel.activator: debug\n",
        )
        .unwrap();
        let c = LoggingConfig::read(&f).unwrap();
        assert_eq!(c.level.as_deref(), Some("debug"));
        assert_eq!(
            shared::telemetry::log::resolve_level(
                c.level.as_deref(),
                c.zap_logger_config.as_deref()
            ),
            tracing::Level::DEBUG
        );
        let v = tmp("volume");
        std::fs::write(v.join(ZAP_KEY), "{\"level\": \"error\"}").unwrap();
        let c = LoggingConfig::read(&v).unwrap();
        assert_eq!(c.level, None);
        assert_eq!(
            shared::telemetry::log::resolve_level(
                c.level.as_deref(),
                c.zap_logger_config.as_deref()
            ),
            tracing::Level::ERROR
        );
    }

    #[test]
    fn tracing_from_config_observability() {
        let v = tmp("obs");
        assert!(read_tracing(&v).unwrap().is_none(), "off by default");
        std::fs::write(v.join("tracing-protocol"), "http/protobuf").unwrap();
        std::fs::write(v.join("tracing-endpoint"), "collector:4318").unwrap();
        std::fs::write(v.join("tracing-sampling-rate"), "0.1").unwrap();
        let t = read_tracing(&v).unwrap().unwrap();
        // A bare `name:port` is TLS, as knative.dev/pkg prefixes `https://` (issue 14).
        assert_eq!(
            t.endpoint.unwrap().to_string(),
            "https://collector:4318/v1/traces"
        );
        assert!((t.sampling_rate - 0.1).abs() < 1e-9);
        std::fs::write(v.join("tracing-sampling-rate"), "often").unwrap();
        let e = read_tracing(&v).unwrap_err().to_string();
        assert!(e.contains("tracing-sampling-rate"), "{e}");
        std::fs::write(v.join("tracing-sampling-rate"), "1").unwrap();
        std::fs::write(v.join("tracing-protocol"), "zipkin").unwrap();
        let e = read_tracing(&v).unwrap_err().to_string();
        assert!(e.contains("zipkin"), "{e}");
    }

    #[test]
    fn request_log_from_config_observability() {
        let v = tmp("reqlog");
        std::fs::create_dir_all(&v).unwrap();
        assert!(read_request_log(&v).unwrap().is_none(), "off by default");
        std::fs::write(v.join("logging.request-log-template"), "{{.Request.URL}}").unwrap();
        assert!(
            read_request_log(&v).unwrap().is_none(),
            "a template alone is not enough"
        );
        std::fs::write(v.join("logging.enable-request-log"), "true").unwrap();
        assert!(read_request_log(&v).unwrap().is_some());
        std::fs::write(v.join("logging.request-log-template"), "").unwrap();
        let e = read_request_log(&v).unwrap_err().to_string();
        assert!(e.contains("logging.request-log-template: empty"), "{e}");
        std::fs::write(v.join("logging.request-log-template"), "{{if .X}}").unwrap();
        let e = read_request_log(&v).unwrap_err().to_string();
        assert!(e.contains("logging.request-log-template"), "{e}");
        std::fs::remove_file(v.join("logging.request-log-template")).unwrap();
        assert!(
            read_request_log(&v).unwrap().is_some(),
            "the stock template"
        );
        std::fs::write(v.join("logging.enable-request-log"), "yes").unwrap();
        let e = read_request_log(&v).unwrap_err().to_string();
        assert!(e.contains("logging.enable-request-log"), "{e}");
    }

    #[test]
    fn runtime_profiling_from_a_volume() {
        let v = tmp("profiling");
        let read =
            |v: &Path| profiling_from_data(&read_configmap(v, &[RUNTIME_PROFILING]).unwrap());
        assert!(!read(&v), "off by default");
        std::fs::write(v.join(RUNTIME_PROFILING), "enabled").unwrap();
        assert!(read(&v));
        std::fs::write(v.join(RUNTIME_PROFILING), "disabled").unwrap();
        assert!(!read(&v));
    }

    #[test]
    fn bad_values_name_the_key() {
        let v = tmp("bad");
        std::fs::write(v.join(LEVEL_KEY), "loud").unwrap();
        let e = LoggingConfig::read(&v).unwrap_err().to_string();
        assert!(e.contains(LEVEL_KEY) && e.contains("loud"), "{e}");
        std::fs::remove_file(v.join(LEVEL_KEY)).unwrap();
        std::fs::write(v.join(ZAP_KEY), "{").unwrap();
        let e = LoggingConfig::read(&v).unwrap_err().to_string();
        assert!(e.contains(ZAP_KEY), "{e}");
        // A path that does not exist is an unmounted volume: nothing set.
        assert_eq!(
            LoggingConfig::read(&v.join("missing.yaml")).unwrap(),
            LoggingConfig::default()
        );
    }
}
