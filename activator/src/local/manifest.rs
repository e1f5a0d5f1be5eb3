//! Knative Service YAML → the revisions and routes `activator local` runs.
//!
//! Pure: text in, plan out (no processes, no clock). Several YAML documents (in one file or
//! across files, in command-line order) for the same Service are successive versions of it, as
//! if each were `kubectl apply`-ed in turn: every document's template is a revision (named
//! `spec.template.metadata.name`, else `<service>-NNNNN` by document count), and the **last**
//! document's `traffic` decides the routes (default: 100 % to the latest revision).
//!
//! # Layout
//! - `yaml`: the serde shapes. `doc`: documents and `file:line` lookup for errors.
//! - `probe`: `ports` and `readinessProbe` (validation, and the queue-proxy's probe JSON).
//! - `traffic`: `spec.traffic` checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use self::doc::{Doc, documents, yaml_error};
use self::probe::{port, probe};
use self::traffic::{PendingTraffic, is_dns_label, resolve_traffic};
use self::yaml::{Meta, ServiceYaml, Template};
use crate::catalog::Protocol;

/// Knative's `container-concurrency-max-limit` default (`config-defaults`).
const MAX_CONTAINER_CONCURRENCY: u32 = 1000;
/// Knative's `max-revision-timeout-seconds` default (`config-defaults`).
const MAX_TIMEOUT_SECONDS: u64 = 600;

/// Why a manifest was rejected; always names the file, and the line and field where known.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A field is missing, malformed or not allowed.
    #[error("{file}:{line}: {field}: {message}")]
    Field {
        /// The file.
        file: String,
        /// 1-based line of the field (or of its document when the field is absent).
        line: usize,
        /// Dotted path of the field, e.g. `spec.template.spec.containerConcurrency`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// A field `activator local` ignores, reported once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Where: `file:line`.
    pub at: String,
    /// Dotted path of the field.
    pub field: String,
    /// Why it is ignored.
    pub message: String,
}

/// One revision, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionPlan {
    /// Service name.
    pub service: String,
    /// Namespace.
    pub namespace: String,
    /// Revision name.
    pub name: String,
    /// Template annotations (`autoscaling.knative.dev/*` are validated here).
    pub annotations: BTreeMap<String, String>,
    /// `containerConcurrency` (0 = unlimited).
    pub container_concurrency: u32,
    /// `timeoutSeconds` (default 300 s).
    pub timeout: Duration,
    /// `responseStartTimeoutSeconds`.
    pub response_start_timeout: Option<Duration>,
    /// `idleTimeoutSeconds`.
    pub idle_timeout: Option<Duration>,
    /// `command[0]`; empty when the container has no `command` and runs its `image`.
    pub program: PathBuf,
    /// `command[1..] + args` (for an image: `args`, which replace the image's CMD).
    pub args: Vec<String>,
    /// `image`: run through a container engine when there is no `command`.
    pub image: Option<String>,
    /// `imagePullPolicy` (`Always`, `IfNotPresent`, `Never`) as written.
    pub image_pull_policy: Option<String>,
    /// `workingDir`.
    pub working_dir: Option<String>,
    /// `env` (literal values).
    pub env: Vec<(String, String)>,
    /// `ports[0].containerPort` as declared (default 8080); see [`RevisionPlan::container_port`].
    pub container_port: u16,
    /// `h2c` when `ports[0].name` is `h2c`.
    pub protocol: Protocol,
    /// `readinessProbe` as written (JSON); `None` means Knative's default TCP probe.
    pub readiness_probe: Option<serde_json::Value>,
}

/// A traffic target after resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Revision name.
    pub revision: String,
    /// Share of the Service's host, 0–100.
    pub percent: u32,
    /// `tag`: also routed at `<tag>-<service>.<namespace>.<domain>`.
    pub tag: Option<String>,
    /// `latestRevision: true`, explicit or defaulted (an entry without `revisionName`, or no
    /// `traffic`): follows the newest *ready* revision at run time, also across a live reload
    /// (`revision` is the latest created, where it starts); a `revisionName` keeps naming the
    /// same one.
    pub latest: bool,
}

/// One Service: its revisions (in declaration order) and its traffic.
#[derive(Debug, Clone)]
pub struct ServicePlan {
    /// Service name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Revisions, oldest first; the last is the latest created (a rollback to an earlier
    /// revision's name moves that revision to the end).
    pub revisions: Vec<RevisionPlan>,
    /// Traffic of the last document.
    pub traffic: Vec<Target>,
}

impl ServicePlan {
    /// Whether any route reaches `revision` (a percent above 0 or a tag). Knative scales
    /// unreachable revisions to zero regardless of `min-scale`.
    pub fn reachable(&self, revision: &str) -> bool {
        self.traffic
            .iter()
            .any(|t| t.revision == revision && (t.percent > 0 || t.tag.is_some()))
    }
}

// === loading ===

/// Reads the files (directories: their `*.yaml`/`*.yml`, sorted) into Services, in order.
///
/// # Errors
/// The first [`ManifestError`] found.
pub fn load_paths(
    paths: &[PathBuf],
    cfg: &autoscaler::Config,
) -> Result<(Vec<ServicePlan>, Vec<Warning>), ManifestError> {
    let mut sources = Vec::new();
    for p in paths {
        let read_err = |source| ManifestError::Read {
            file: p.display().to_string(),
            source,
        };
        if p.is_dir() {
            let mut in_dir: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(read_err)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            in_dir.sort();
            for f in in_dir {
                sources.push((f.display().to_string(), read(&f)?));
            }
        } else {
            sources.push((p.display().to_string(), read(p)?));
        }
    }
    let refs: Vec<(&str, &str)> = sources
        .iter()
        .map(|(f, t)| (f.as_str(), t.as_str()))
        .collect();
    parse(&refs, cfg)
}

fn read(p: &Path) -> Result<String, ManifestError> {
    std::fs::read_to_string(p).map_err(|source| ManifestError::Read {
        file: p.display().to_string(),
        source,
    })
}

/// Parses `(file name, text)` sources into Services.
///
/// # Errors
/// The first [`ManifestError`] found.
pub fn parse(
    sources: &[(&str, &str)],
    cfg: &autoscaler::Config,
) -> Result<(Vec<ServicePlan>, Vec<Warning>), ManifestError> {
    let mut services: Vec<ServicePlan> = Vec::new();
    let mut traffic: BTreeMap<(String, String), PendingTraffic<'_>> = BTreeMap::new();
    let mut warnings = Vec::new();
    // Documents seen per Service: Knative's generation, which numbers default revision names.
    let mut generations: BTreeMap<usize, u32> = BTreeMap::new();
    for (file, text) in sources {
        for doc in documents(file, text) {
            let svc: ServiceYaml =
                serde_yaml_ng::from_str(doc.text).map_err(|e| yaml_error(&doc, &e))?;
            let (ns, name, rev) =
                revision(&doc, cfg, svc.metadata, svc.spec.template, &mut warnings)?;
            if svc.api_version != "serving.knative.dev/v1" {
                return Err(doc.err(
                    &["apiVersion"],
                    format!(
                        "{:?}: local mode runs serving.knative.dev/v1 Services",
                        svc.api_version
                    ),
                ));
            }
            if svc.kind != "Service" {
                return Err(doc.err(
                    &["kind"],
                    format!("{:?}: local mode runs Services", svc.kind),
                ));
            }
            for k in svc.other.keys().filter(|k| k.as_str() != "status") {
                warnings.push(doc.warn(&[k], "not supported in local mode; ignored"));
            }
            for k in svc.spec.other.keys() {
                warnings.push(doc.warn(&["spec", k], "not supported in local mode; ignored"));
            }
            let idx = match services
                .iter()
                .position(|s| s.name == name && s.namespace == ns)
            {
                Some(i) => i,
                None => {
                    services.push(ServicePlan {
                        name: name.clone(),
                        namespace: ns.clone(),
                        revisions: Vec::new(),
                        traffic: Vec::new(),
                    });
                    services.len() - 1
                }
            };
            let svc_plan = &mut services[idx];
            let generation = generations.entry(idx).or_insert(0);
            *generation += 1;
            let rev_name = match rev.name.is_empty() {
                false => rev.name.clone(),
                true => format!("{name}-{generation:05}"),
            };
            let rev = RevisionPlan {
                name: rev_name.clone(),
                ..rev
            };
            match svc_plan.revisions.iter().position(|r| r.name == rev_name) {
                // Rolling back to an earlier template under its own name: Knative creates no
                // revision and that one is the latest again (test/e2e/rollback_byo_test.go).
                Some(i) if svc_plan.revisions[i] == rev => {
                    let again = svc_plan.revisions.remove(i);
                    svc_plan.revisions.push(again);
                }
                Some(_) => {
                    return Err(doc.err(
                        &["spec", "template", "metadata", "name"],
                        format!(
                            "revision {rev_name:?} is declared twice with different templates (Knative rejects a changed template under an existing name)"
                        ),
                    ));
                }
                None => svc_plan.revisions.push(rev),
            }
            traffic.insert(
                (ns, name),
                PendingTraffic {
                    doc,
                    entries: svc.spec.traffic,
                },
            );
        }
    }
    for svc in &mut services {
        if let Some(t) = traffic.remove(&(svc.namespace.clone(), svc.name.clone())) {
            svc.traffic = resolve_traffic(&t, svc)?;
        }
    }
    Ok((services, warnings))
}

/// Validates one document's metadata and template into a revision (name filled in later when
/// not given).
fn revision(
    doc: &Doc<'_>,
    cfg: &autoscaler::Config,
    meta: Meta,
    template: Template,
    warnings: &mut Vec<Warning>,
) -> Result<(String, String, RevisionPlan), ManifestError> {
    if meta.name.is_empty() {
        return Err(doc.err(&["metadata", "name"], "required"));
    }
    if !is_dns_label(&meta.name) {
        return Err(doc.err(
            &["metadata", "name"],
            format!("{:?} is not a DNS label", meta.name),
        ));
    }
    let ns = meta.namespace.unwrap_or_else(|| "default".to_owned());
    let name = meta.name;
    let tmeta = template.metadata;
    if !tmeta.name.is_empty() && !tmeta.name.starts_with(&format!("{name}-")) {
        return Err(doc.err(
            &["spec", "template", "metadata", "name"],
            format!(
                "{:?} must have the prefix \"{name}-\" (Knative's rule)",
                tmeta.name
            ),
        ));
    }
    let spec = template.spec;
    for k in spec.other.keys() {
        warnings.push(doc.warn(
            &["spec", "template", "spec", k],
            "not supported in local mode; ignored",
        ));
    }
    let mut containers = spec.containers.into_iter();
    let Some(c) = containers.next() else {
        return Err(doc.err(
            &["spec", "template", "spec", "containers"],
            "at least one container is required",
        ));
    };
    if containers.next().is_some() {
        warnings.push(doc.warn(
            &["spec", "template", "spec", "containers[1]"],
            "sidecar containers are not run in local mode; ignored",
        ));
    }
    let cpath = ["spec", "template", "spec", "containers"];
    // `command` runs a local process; without one the `image` runs in a container engine.
    if c.command.is_empty() && c.image.as_deref().unwrap_or_default().is_empty() {
        return Err(doc.err(
            &cpath,
            "containers[0] needs an `image` (run by podman or docker) or a `command` (run as a local process)",
        ));
    }
    if let Some(p) = &c.image_pull_policy
        && !["Always", "IfNotPresent", "Never"].contains(&p.as_str())
    {
        let path: Vec<&str> = cpath.iter().copied().chain(["imagePullPolicy"]).collect();
        return Err(doc.err(&path, format!("{p:?}: want Always, IfNotPresent or Never")));
    }
    for k in c
        .other
        .keys()
        .filter(|k| !["name", "resources"].contains(&k.as_str()))
    {
        let path: Vec<&str> = cpath.iter().copied().chain([k.as_str()]).collect();
        warnings.push(doc.warn(&path, "not supported in local mode; ignored"));
    }
    let (container_port, protocol) = port(doc, &c.ports)?;
    let readiness_probe = match c.readiness_probe {
        None => None,
        Some(v) => {
            let port_name = c
                .ports
                .first()
                .and_then(|p| p.name.as_deref())
                .filter(|n| !n.is_empty());
            Some(probe(doc, v, container_port, port_name, warnings)?)
        }
    };
    let mut env = Vec::new();
    for e in c.env {
        if e.value_from.is_some() {
            let path: Vec<&str> = cpath.iter().copied().chain(["env", &e.name]).collect();
            warnings.push(doc.warn(&path, "valueFrom is not supported in local mode; unset"));
            continue;
        }
        env.push((e.name, e.value.unwrap_or_default()));
    }
    let container_concurrency = spec.container_concurrency.unwrap_or(0);
    if container_concurrency > MAX_CONTAINER_CONCURRENCY {
        return Err(doc.err(
            &["spec", "template", "spec", "containerConcurrency"],
            format!(
                "expected 0 <= {container_concurrency} <= {MAX_CONTAINER_CONCURRENCY} (Knative's container-concurrency-max-limit)"
            ),
        ));
    }
    let ann_path = ["spec", "template", "metadata", "annotations"];
    for k in autoscaler::annotation::unknown_keys(&tmeta.annotations) {
        let path: Vec<&str> = ann_path.iter().copied().chain([k]).collect();
        warnings.push(doc.warn(&path, "unknown autoscaling annotation; ignored"));
    }
    let cc = i32::try_from(container_concurrency).unwrap_or(i32::MAX);
    if let Err(e) = autoscaler::RevisionSettings::from_annotations(cfg, &tmeta.annotations, cc) {
        let key = e.keys().next().unwrap_or_default();
        let path: Vec<&str> = ann_path.iter().copied().chain([key]).collect();
        return Err(doc.err(&path, e.to_string()));
    }
    let mut cmd = c.command.into_iter();
    let program = PathBuf::from(cmd.next().unwrap_or_default());
    let mut args: Vec<String> = cmd.collect();
    args.extend(c.args);
    let secs = |field: &str, v: Option<u64>| -> Result<Option<Duration>, ManifestError> {
        match v {
            Some(0) if field == "timeoutSeconds" => Err(doc.err(
                &["spec", "template", "spec", field],
                "must be greater than 0",
            )),
            Some(n) if n > MAX_TIMEOUT_SECONDS => Err(doc.err(
                &["spec", "template", "spec", field],
                format!(
                    "expected 0 <= {n} <= {MAX_TIMEOUT_SECONDS} (Knative's max-revision-timeout-seconds)"
                ),
            )),
            v => Ok(v.filter(|s| *s > 0).map(Duration::from_secs)),
        }
    };
    Ok((
        ns.clone(),
        name.clone(),
        RevisionPlan {
            service: name,
            namespace: ns,
            name: tmeta.name,
            annotations: tmeta.annotations,
            container_concurrency,
            timeout: secs("timeoutSeconds", spec.timeout_seconds)?
                .unwrap_or(Duration::from_secs(300)),
            response_start_timeout: secs(
                "responseStartTimeoutSeconds",
                spec.response_start_timeout_seconds,
            )?,
            idle_timeout: secs("idleTimeoutSeconds", spec.idle_timeout_seconds)?,
            program,
            args,
            image: c.image.filter(|i| !i.is_empty()),
            image_pull_policy: c.image_pull_policy,
            working_dir: c.working_dir.filter(|d| !d.is_empty()),
            env,
            container_port,
            protocol,
            readiness_probe,
        },
    ))
}

mod doc;
mod probe;
mod traffic;
mod yaml;

pub use self::probe::{DEFAULT_PORT, explicit_port, queue_proxy_probe};

#[cfg(test)]
mod tests;
