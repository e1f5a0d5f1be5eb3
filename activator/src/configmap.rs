//! Knative's ConfigMaps for the activator: `config-logging` (`zap-logger-config` and its
//! `level`, `loglevel.activator` winning over it) and the tracing and request-log keys of
//! `config-observability`.
//!
//! Knative's activator reads them through the API server (logging live, tracing at start-up); we
//! read both once at start-up from where a Deployment can put them without API access: a mounted
//! ConfigMap volume (a directory with one file per key) or a ConfigMap manifest (`kind:
//! ConfigMap` YAML with `data:`). A logging change takes effect on restart (documented).

use std::collections::BTreeMap;
use std::path::Path;

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

/// Knative's `config-observability` tracing keys (`tracing-protocol`, `tracing-endpoint`,
/// `tracing-sampling-rate`), read at start-up like Knative's activator.
///
/// # Errors
/// An unreadable ConfigMap, a rate that is not a number, or an unknown protocol / unusable
/// endpoint ([`shared::telemetry::otlp::ExportError`]); the message names the path and key.
pub fn read_tracing(
    path: &Path,
) -> Result<Option<shared::telemetry::otlp::ExportConfig>, LoggingConfigError> {
    let err = |reason: String| LoggingConfigError {
        path: path.display().to_string(),
        reason,
    };
    let data = read_configmap(
        path,
        &[
            "tracing-protocol",
            "tracing-endpoint",
            "tracing-sampling-rate",
        ],
    )?;
    let get = |k: &str| {
        data.get(k)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let rate = match get("tracing-sampling-rate") {
        None => 0.0,
        Some(r) => r
            .parse::<f64>()
            .map_err(|_| err(format!("tracing-sampling-rate: {r:?} is not a number")))?,
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
    .map_err(|e| err(format!("tracing-*: {e}")))
}

/// `config-observability`'s request-log keys: the parsed template when
/// `logging.enable-request-log` is `"true"`, else `None`. Without a
/// `logging.request-log-template` key Knative's stock template is used.
///
/// # Errors
/// Enabled with an empty template (Knative's validation rejects it too), or a template with an
/// action we do not support; the message names the key.
pub fn read_request_log(
    path: &Path,
) -> Result<Option<shared::telemetry::reqlog::Template>, LoggingConfigError> {
    const ENABLE: &str = "logging.enable-request-log";
    const TEMPLATE: &str = "logging.request-log-template";
    let err = |reason: String| LoggingConfigError {
        path: path.display().to_string(),
        reason,
    };
    let data = read_configmap(path, &[ENABLE, TEMPLATE])?;
    let enabled = match data.get(ENABLE).map(|v| v.trim()) {
        None | Some("") => false,
        Some(v) => v
            .parse::<bool>()
            .map_err(|_| err(format!("{ENABLE}: {v:?} is not true or false")))?,
    };
    if !enabled {
        return Ok(None);
    }
    let template = data
        .get(TEMPLATE)
        .map_or(shared::telemetry::reqlog::DEFAULT_TEMPLATE, String::as_str);
    if template.trim().is_empty() {
        return Err(err(format!("{TEMPLATE}: empty, but {ENABLE} is \"true\"")));
    }
    shared::telemetry::reqlog::Template::parse(template)
        .map(Some)
        .map_err(|e| err(format!("{TEMPLATE}: {e}")))
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
        let err = |reason: String| LoggingConfigError {
            path: path.display().to_string(),
            reason,
        };
        let data = read_configmap(path, &[ZAP_KEY, LEVEL_KEY]).map_err(|e| err(e.reason))?;
        let zap = data
            .get(ZAP_KEY)
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        if let Some(z) = &zap {
            serde_json::from_str::<serde_json::Value>(z)
                .map_err(|e| err(format!("{ZAP_KEY}: invalid JSON: {e}")))?;
        }
        let level = data
            .get(LEVEL_KEY)
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty());
        if let Some(l) = &level
            && shared::telemetry::log::parse_level(l).is_none()
        {
            return Err(err(format!(
                "{LEVEL_KEY}: unknown level {l:?} (accepted: {})",
                LEVELS.join(", ")
            )));
        }
        Ok(Self {
            zap_logger_config: zap,
            level,
        })
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
    fn bad_values_name_the_key() {
        let v = tmp("bad");
        std::fs::write(v.join(LEVEL_KEY), "loud").unwrap();
        let e = LoggingConfig::read(&v).unwrap_err().to_string();
        assert!(e.contains(LEVEL_KEY) && e.contains("loud"), "{e}");
        std::fs::remove_file(v.join(LEVEL_KEY)).unwrap();
        std::fs::write(v.join(ZAP_KEY), "{").unwrap();
        let e = LoggingConfig::read(&v).unwrap_err().to_string();
        assert!(e.contains(ZAP_KEY), "{e}");
        let e = LoggingConfig::read(&v.join("missing.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.yaml"), "{e}");
    }
}
