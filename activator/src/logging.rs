//! Knative's `config-logging` for the activator: `zap-logger-config` (zap JSON, its `level`) and
//! `loglevel.activator` (wins over the zap level), as in Knative's activator.
//!
//! Knative's activator watches the ConfigMap through the API server; we read it once at start-up
//! from where a Deployment can put it without API access: a mounted ConfigMap volume (a
//! directory with one file per key) or a ConfigMap manifest (`kind: ConfigMap` YAML with
//! `data:`). Changes take effect on restart (documented difference).

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
        let data: BTreeMap<String, String> = if path.is_dir() {
            let mut m = BTreeMap::new();
            for key in [ZAP_KEY, LEVEL_KEY] {
                match std::fs::read_to_string(path.join(key)) {
                    Ok(v) => {
                        m.insert(key.to_owned(), v);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(err(format!("{key}: {e}"))),
                }
            }
            m
        } else {
            let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
            #[derive(serde::Deserialize)]
            struct ConfigMap {
                #[serde(default)]
                data: BTreeMap<String, String>,
            }
            serde_yaml_ng::from_str::<ConfigMap>(&text)
                .map_err(|e| err(format!("not a ConfigMap: {e}")))?
                .data
        };
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
