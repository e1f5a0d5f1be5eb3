//! `--source file:PATH`: revisions and pod addresses from a JSON or YAML file, re-read when its
//! modification time or size changes (polled; inotify would add a dependency for little gain).
//!
//! Schema (documented for operators in `docs/activator.md`):
//! ```yaml
//! revisions:
//!   - namespace: default
//!     name: hello-00001
//!     containerConcurrency: 1        # 0 = unlimited (default)
//!     timeoutSeconds: 300            # default 300
//!     responseStartTimeoutSeconds: 0 # 0/absent = disabled
//!     idleTimeoutSeconds: 0          # 0/absent = disabled
//!     protocol: http1                # or h2c
//!     probeNotReady: true            # probe and use not-ready pods (Knative's optimisation)
//!     service: hello                 # labels for metrics
//!     configuration: hello
//!     ready: ["10.0.0.5:8012"]       # pod dests Kubernetes reports ready
//!     notReady: []                   # pod dests not ready yet
//!     clusterIP: "10.96.0.7:80"      # optional private-service dest (mesh fallback)
//!     activators: ["10.0.1.1"]       # optional: activator IPs assigned (subsetting)
//!     hosts: ["hello.default.example.com"]  # optional: extra Host routes to this revision
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::catalog::{
    Catalog, Endpoints, Protocol, RevisionEntry, RevisionKey, RevisionSpec, Snapshot,
};

/// How often the file's metadata is checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Reading or parsing the file failed.
#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The content is neither valid JSON nor valid YAML for the schema.
    #[error("parsing {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    revisions: Vec<FileRevision>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileRevision {
    namespace: String,
    name: String,
    #[serde(default)]
    container_concurrency: u32,
    #[serde(default)]
    timeout_seconds: Option<u64>,
    #[serde(default)]
    response_start_timeout_seconds: Option<u64>,
    #[serde(default)]
    idle_timeout_seconds: Option<u64>,
    #[serde(default)]
    protocol: Protocol,
    #[serde(default = "yes")]
    probe_not_ready: bool,
    #[serde(default)]
    service: String,
    #[serde(default)]
    configuration: String,
    #[serde(default)]
    ready: Vec<String>,
    #[serde(default)]
    not_ready: Vec<String>,
    #[serde(default, rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(default)]
    activators: Option<Vec<String>>,
    #[serde(default)]
    hosts: Vec<String>,
}

fn yes() -> bool {
    true
}

fn secs(v: Option<u64>) -> Option<Duration> {
    v.filter(|s| *s > 0).map(Duration::from_secs)
}

/// Parses file content (JSON is tried first, then YAML) into a snapshot.
///
/// # Errors
/// [`FileSourceError::Parse`] naming the path.
pub fn parse(path: &Path, text: &str) -> Result<Snapshot, FileSourceError> {
    let doc: FileDoc = match serde_json::from_str(text) {
        Ok(d) => d,
        Err(json_err) => {
            serde_yaml_ng::from_str(text).map_err(|yaml_err| FileSourceError::Parse {
                path: path.to_owned(),
                message: if text.trim_start().starts_with('{') {
                    json_err.to_string()
                } else {
                    yaml_err.to_string()
                },
            })?
        }
    };
    let mut snap = Snapshot::default();
    for r in doc.revisions {
        let spec = RevisionSpec {
            container_concurrency: r.container_concurrency,
            timeout: secs(r.timeout_seconds).unwrap_or(Duration::from_secs(300)),
            response_start_timeout: secs(r.response_start_timeout_seconds),
            idle_timeout: secs(r.idle_timeout_seconds),
            protocol: r.protocol,
            probe_not_ready: r.probe_not_ready,
            service: r.service,
            configuration: r.configuration,
        };
        let entry = RevisionEntry {
            spec,
            endpoints: Endpoints {
                ready: r.ready,
                not_ready: r.not_ready,
                cluster_ip: r.cluster_ip,
            },
            activators: r.activators,
        };
        let key = RevisionKey::new(r.namespace, r.name);
        for h in r.hosts {
            snap.routes.insert(h.to_ascii_lowercase(), key.clone());
        }
        snap.revisions.insert(key, Arc::new(entry));
    }
    Ok(snap)
}

/// Reads and parses the file once.
///
/// # Errors
/// [`FileSourceError`] naming the path.
pub fn load(path: &Path) -> Result<Snapshot, FileSourceError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileSourceError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// The file source: loads once (failing loudly), then keeps the catalog in sync.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    catalog: Catalog,
}

impl FileSource {
    /// Loads `path` into `catalog`.
    ///
    /// # Errors
    /// The first load must succeed; later bad edits are logged and the last good state is kept.
    pub fn start(path: PathBuf, catalog: Catalog) -> Result<Self, FileSourceError> {
        catalog.replace(load(&path)?);
        Ok(Self { path, catalog })
    }

    /// Polls the file until `shutdown`; a changed mtime or size triggers a re-read.
    pub async fn run(self, shutdown: CancellationToken) {
        let stamp = |p: &Path| -> Option<(SystemTime, u64)> {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        };
        let mut last = stamp(&self.path);
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = stamp(&self.path);
            if now == last {
                continue;
            }
            last = now;
            match load(&self.path) {
                Ok(snap) => {
                    tracing::info!(path = %self.path.display(), revisions = snap.revisions.len(), "file source reloaded");
                    self.catalog.replace(snap);
                }
                Err(error) => {
                    tracing::error!(error = %error, "file source: keeping the last good state")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_parse_to_the_same_snapshot() {
        let yaml = "revisions:\n- namespace: ns\n  name: r\n  containerConcurrency: 2\n  ready: [\"127.0.0.1:1\"]\n  protocol: h2c\n  clusterIP: 10.0.0.1:80\n";
        let json = r#"{"revisions":[{"namespace":"ns","name":"r","containerConcurrency":2,"ready":["127.0.0.1:1"],"protocol":"h2c","clusterIP":"10.0.0.1:80"}]}"#;
        let a = parse(Path::new("a"), yaml).unwrap();
        let b = parse(Path::new("b"), json).unwrap();
        assert_eq!(a, b);
        let e = &a.revisions[&RevisionKey::new("ns", "r")];
        assert_eq!(e.spec.container_concurrency, 2);
        assert_eq!(e.spec.protocol, Protocol::H2c);
        assert_eq!(e.spec.timeout, Duration::from_secs(300));
        assert_eq!(e.endpoints.cluster_ip.as_deref(), Some("10.0.0.1:80"));
    }

    #[test]
    fn unknown_fields_are_rejected_with_the_path() {
        let err = parse(
            Path::new("/x.yaml"),
            "revisions:\n- namespace: n\n  name: r\n  bogus: 1\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("/x.yaml"), "{err}");
    }
}
