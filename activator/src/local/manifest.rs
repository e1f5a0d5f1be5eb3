//! Knative Service YAML → the revisions and routes `activator local` runs.
//!
//! Pure: text in, plan out (no processes, no clock). Several YAML documents (in one file or
//! across files, in command-line order) for the same Service are successive versions of it, as
//! if each were `kubectl apply`-ed in turn: every document's template is a revision (named
//! `spec.template.metadata.name`, else `<service>-NNNNN` by document count), and the **last**
//! document's `traffic` decides the routes (default: 100 % to the latest revision).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::catalog::Protocol;

/// Ports Knative reserves for its own containers (`k8s_validation.go` `reservedPorts`).
const RESERVED_PORTS: [u16; 6] = [8012, 8013, 8022, 8112, 9090, 9091];

/// Knative's default `containerPort`.
pub const DEFAULT_PORT: u16 = 8080;

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
#[derive(Debug, Clone)]
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
    /// `command[0]`.
    pub program: PathBuf,
    /// `command[1..] + args`.
    pub args: Vec<String>,
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
}

/// One Service: its revisions (in declaration order) and its traffic.
#[derive(Debug, Clone)]
pub struct ServicePlan {
    /// Service name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Revisions, oldest first.
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

// === YAML shapes ===

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceYaml {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: ServiceSpec,
    #[serde(flatten)]
    other: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct ServiceSpec {
    #[serde(default)]
    template: Template,
    #[serde(default)]
    traffic: Option<Vec<TrafficYaml>>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TrafficYaml {
    #[serde(default)]
    revision_name: Option<String>,
    #[serde(default)]
    latest_revision: Option<bool>,
    #[serde(default)]
    percent: Option<u32>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    configuration_name: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Template {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: PodSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    #[serde(default)]
    container_concurrency: Option<u32>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
    #[serde(default)]
    response_start_timeout_seconds: Option<u64>,
    #[serde(default)]
    idle_timeout_seconds: Option<u64>,
    #[serde(default)]
    containers: Vec<Container>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    #[serde(default)]
    ports: Vec<PortYaml>,
    #[serde(default)]
    readiness_probe: Option<serde_yaml_ng::Value>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortYaml {
    #[serde(default)]
    container_port: Option<u32>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvVar {
    name: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    value_from: Option<serde_yaml_ng::Value>,
}

// === loading ===

/// A YAML document of a file: its text and the 1-based line it starts at.
struct Doc<'a> {
    file: &'a str,
    text: &'a str,
    first_line: usize,
}

impl Doc<'_> {
    /// The line of a dotted field path, found by walking the keys in order (best effort: the
    /// document's first line when a key is not written, e.g. a missing field).
    fn line_of(&self, path: &[&str]) -> usize {
        let mut from = 0;
        let mut found = 0;
        let lines: Vec<&str> = self.text.lines().collect();
        for seg in path {
            let seg = seg.split('[').next().unwrap_or(seg);
            let hit = lines.iter().enumerate().skip(from).find(|(_, l)| {
                let t = l.trim_start().trim_start_matches("- ").trim_start();
                t.starts_with(&format!("{seg}:"))
                    || t.starts_with(&format!("\"{seg}\":"))
                    || t.starts_with(&format!("'{seg}':"))
            });
            match hit {
                Some((i, _)) => {
                    found = i;
                    from = i + 1;
                }
                None => break,
            }
        }
        self.first_line + found
    }

    fn err(&self, path: &[&str], message: impl Into<String>) -> ManifestError {
        ManifestError::Field {
            file: self.file.to_owned(),
            line: self.line_of(path),
            field: path.join("."),
            message: message.into(),
        }
    }

    fn warn(&self, path: &[&str], message: &str) -> Warning {
        Warning {
            at: format!("{}:{}", self.file, self.line_of(path)),
            field: path.join("."),
            message: message.to_owned(),
        }
    }
}

/// Splits a file into YAML documents at `---` lines.
fn documents<'a>(file: &'a str, text: &'a str) -> Vec<Doc<'a>> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut first_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") {
            docs.push(Doc {
                file,
                text: &text[start..offset],
                first_line,
            });
            start = offset + line.len();
            first_line = i + 2;
        }
        offset += line.len();
    }
    docs.push(Doc {
        file,
        text: &text[start..],
        first_line,
    });
    docs.retain(|d| {
        d.text
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

/// A serde error as a field error: the path serde reports, the line where it happened.
fn yaml_error(doc: &Doc<'_>, e: &serde_yaml_ng::Error) -> ManifestError {
    let text = e.to_string();
    // serde_yaml_ng writes "<path>: <message> at line L column C"; keep path and message apart.
    let text = match text.rfind(" at line ") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    let (field, message) = match text.split_once(": ") {
        Some((p, m)) if !p.contains(' ') => (p.to_owned(), m.to_owned()),
        _ => ("(document)".to_owned(), text.to_owned()),
    };
    let line = match e.location() {
        Some(l) => doc.first_line + l.line() - 1,
        None => doc.line_of(&field.split('.').collect::<Vec<_>>()),
    };
    ManifestError::Field {
        file: doc.file.to_owned(),
        line,
        field,
        message,
    }
}

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

/// Traffic of one document, before revision names are checked.
struct PendingTraffic<'a> {
    doc: Doc<'a>,
    entries: Option<Vec<TrafficYaml>>,
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
            let rev_name = match rev.name.is_empty() {
                false => rev.name.clone(),
                true => format!("{name}-{:05}", svc_plan.revisions.len() + 1),
            };
            if svc_plan.revisions.iter().any(|r| r.name == rev_name) {
                return Err(doc.err(
                    &["spec", "template", "metadata", "name"],
                    format!("revision {rev_name:?} is declared twice"),
                ));
            }
            svc_plan.revisions.push(RevisionPlan {
                name: rev_name,
                ..rev
            });
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
    if c.command.is_empty() {
        return Err(doc.err(
            &cpath,
            format!(
                "containers[0] has no `command` (image {:?}); local mode runs commands, not images",
                c.image.unwrap_or_default()
            ),
        ));
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
        Some(v) => Some(probe(doc, v, container_port, warnings)?),
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
            env,
            container_port,
            protocol,
            readiness_probe,
        },
    ))
}

fn port(doc: &Doc<'_>, ports: &[PortYaml]) -> Result<(u16, Protocol), ManifestError> {
    let path = ["spec", "template", "spec", "containers", "ports"];
    if ports.len() > 1 {
        return Err(doc.err(&path, "more than one container port is set"));
    }
    let Some(p) = ports.first() else {
        return Ok((DEFAULT_PORT, Protocol::Http1));
    };
    let at = [
        "spec",
        "template",
        "spec",
        "containers",
        "ports",
        "containerPort",
    ];
    let n = match p.container_port {
        None | Some(0) => DEFAULT_PORT,
        Some(n) => u16::try_from(n).map_err(|_| doc.err(&at, format!("{n} is not a port")))?,
    };
    if RESERVED_PORTS.contains(&n) {
        return Err(doc.err(&at, format!("{n} is reserved by Knative")));
    }
    let protocol = match p.name.as_deref() {
        None | Some("" | "http1") => Protocol::Http1,
        Some("h2c") => Protocol::H2c,
        Some(other) => {
            let at = ["spec", "template", "spec", "containers", "ports", "name"];
            return Err(doc.err(&at, format!("{other:?}: must be \"http1\" or \"h2c\"")));
        }
    };
    Ok((n, protocol))
}

/// Validates `readinessProbe` as Knative does (one handler; an explicit port must be the
/// container port) and returns it as JSON.
fn probe(
    doc: &Doc<'_>,
    v: serde_yaml_ng::Value,
    container_port: u16,
    warnings: &mut Vec<Warning>,
) -> Result<serde_json::Value, ManifestError> {
    let at = ["spec", "template", "spec", "containers", "readinessProbe"];
    let json = serde_json::to_value(&v).map_err(|e| doc.err(&at, e.to_string()))?;
    let Some(obj) = json.as_object() else {
        return Err(doc.err(&at, "must be a mapping"));
    };
    let handlers: Vec<&str> = ["httpGet", "tcpSocket", "exec", "grpc"]
        .into_iter()
        .filter(|h| obj.contains_key(*h))
        .collect();
    if handlers.len() > 1 {
        return Err(doc.err(
            &at,
            format!("expected exactly one handler, got {}", handlers.join(", ")),
        ));
    }
    if let Some(h) = handlers.first() {
        let port = obj[*h].get("port");
        if let Some(p) = port.filter(|p| !p.is_null())
            && p.as_u64() != Some(u64::from(container_port))
            && p.as_u64() != Some(0)
        {
            let field: Vec<&str> = at.iter().copied().chain([*h, "port"]).collect();
            return Err(doc.err(
                &field,
                format!("{p}: may only probe the container port {container_port}"),
            ));
        }
        if *h == "exec" {
            warnings.push(doc.warn(
                &at,
                "exec probes are not run in local mode (no kubelet); the queue-proxy probes the port over TCP, as Knative's does",
            ));
        }
    }
    Ok(json)
}

/// Checks the traffic block against the Service's revisions.
fn resolve_traffic(
    t: &PendingTraffic<'_>,
    svc: &ServicePlan,
) -> Result<Vec<Target>, ManifestError> {
    let latest = svc
        .revisions
        .last()
        .map(|r| r.name.clone())
        .unwrap_or_default();
    let Some(entries) = &t.entries else {
        return Ok(vec![Target {
            revision: latest,
            percent: 100,
            tag: None,
        }]);
    };
    let doc = &t.doc;
    let at = ["spec", "traffic"];
    let mut out = Vec::new();
    let mut tags = BTreeSet::new();
    for (i, e) in entries.iter().enumerate() {
        let field = format!("traffic[{i}]");
        let at_i = ["spec", field.as_str()];
        if e.configuration_name.is_some() || e.url.is_some() {
            return Err(doc.err(&at_i, "configurationName and url are not supported"));
        }
        let revision = match (&e.revision_name, e.latest_revision) {
            (Some(_), Some(true)) => {
                return Err(doc.err(
                    &at_i,
                    "revisionName may not be set when latestRevision is true",
                ));
            }
            (Some(r), _) => {
                if !svc.revisions.iter().any(|x| &x.name == r) {
                    let known: Vec<&str> = svc.revisions.iter().map(|r| r.name.as_str()).collect();
                    return Err(doc.err(
                        &["spec", "traffic", "revisionName"],
                        format!(
                            "revision {r:?} is not declared for this Service (declared: {})",
                            known.join(", ")
                        ),
                    ));
                }
                r.clone()
            }
            (None, Some(true)) => latest.clone(),
            (None, _) => {
                return Err(doc.err(&at_i, "set revisionName, or latestRevision: true"));
            }
        };
        let percent = e.percent.unwrap_or(0);
        if percent > 100 {
            return Err(doc.err(
                &["spec", "traffic", "percent"],
                format!("{percent}: must be between 0 and 100"),
            ));
        }
        if let Some(tag) = &e.tag {
            if !is_dns_label(tag) || tag.len() + svc.name.len() + 1 > 63 {
                return Err(doc.err(
                    &["spec", "traffic", "tag"],
                    format!("{tag:?}: <tag>-<service> must be a DNS label"),
                ));
            }
            if !tags.insert(tag.clone()) {
                return Err(doc.err(
                    &["spec", "traffic", "tag"],
                    format!("{tag:?} is used twice"),
                ));
            }
        }
        out.push(Target {
            revision,
            percent,
            tag: e.tag.clone(),
        });
    }
    let sum: u32 = out.iter().map(|t| t.percent).sum();
    if sum != 100 {
        return Err(doc.err(&at, format!("traffic targets sum to {sum}, want 100")));
    }
    Ok(out)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The `SERVING_READINESS_PROBE` Knative's reconciler gives the queue-proxy: the user's probe
/// (or the default TCP probe) aimed at `127.0.0.1:<user_port>`, an exec probe replaced by TCP,
/// `successThreshold` defaulted to 1 and a `timeoutSeconds` of at least 1 when periodic.
/// Mirrors `pkg/reconciler/revision/resources/queue.go` `applyReadinessProbeDefaults`.
pub fn queue_proxy_probe(probe: Option<&serde_json::Value>, user_port: u16) -> serde_json::Value {
    use serde_json::{Value, json};
    let mut p = probe
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let o = p
        .as_object_mut()
        .expect("invariant: filtered to objects above");
    if o.remove("exec").is_some()
        || !["httpGet", "tcpSocket", "grpc"]
            .iter()
            .any(|h| o.contains_key(*h))
    {
        o.insert("tcpSocket".into(), json!({}));
    }
    if let Some(h) = o.get_mut("httpGet").and_then(Value::as_object_mut) {
        h.insert("host".into(), json!("127.0.0.1"));
        h.insert("port".into(), json!(user_port));
        h.entry("scheme").or_insert(json!("HTTP"));
    }
    if let Some(t) = o.get_mut("tcpSocket").and_then(Value::as_object_mut) {
        t.insert("host".into(), json!("127.0.0.1"));
        t.insert("port".into(), json!(user_port));
    }
    if let Some(g) = o.get_mut("grpc").and_then(Value::as_object_mut) {
        g.insert("port".into(), json!(user_port));
    }
    if o.get("successThreshold")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        == 0
    {
        o.insert("successThreshold".into(), json!(1));
    }
    let period = o.get("periodSeconds").and_then(Value::as_u64).unwrap_or(0);
    let timeout = o.get("timeoutSeconds").and_then(Value::as_u64).unwrap_or(0);
    if period > 0 && timeout < 1 {
        o.insert("timeoutSeconds".into(), json!(1));
    }
    p
}

#[cfg(test)]
mod tests;
