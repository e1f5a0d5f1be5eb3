//! `ports` and `readinessProbe`: validated as Knative's webhook does, and rewritten for the
//! queue-proxy as Knative's reconciler does.

use super::doc::Doc;
use super::yaml::PortYaml;
use super::{ManifestError, Warning};
use crate::catalog::Protocol;

/// Ports Knative reserves for its own containers (`k8s_validation.go` `reservedPorts`).
const RESERVED_PORTS: [u16; 6] = [8012, 8013, 8022, 8112, 9090, 9091];

/// Knative's default `containerPort`.
pub const DEFAULT_PORT: u16 = 8080;

pub(super) fn port(doc: &Doc<'_>, ports: &[PortYaml]) -> Result<(u16, Protocol), ManifestError> {
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

/// Validates `readinessProbe` as Knative does (one handler; a named port must be the container
/// port's name) and returns it as JSON.
pub(super) fn probe(
    doc: &Doc<'_>,
    v: serde_yaml_ng::Value,
    container_port: u16,
    port_name: Option<&str>,
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
        // Knative's webhook (`validateProbe`) only rejects a *named* port other than the
        // container port's name (`http` when unnamed); a number is probed as written.
        let named = port_name.unwrap_or("http");
        if let Some(name) = obj[*h].get("port").and_then(serde_json::Value::as_str)
            && name != named
            && name.parse::<u16>().is_err()
        {
            let field: Vec<&str> = at.iter().copied().chain([*h, "port"]).collect();
            return Err(doc.err(
                &field,
                format!("{name:?}: probe port must match container port (named {named:?})"),
            ));
        }
        if let Some(p) = explicit_port(&json, container_port) {
            warnings.push(doc.warn(
                &at,
                &format!(
                    "probe port {p} is not the container port: probed on 127.0.0.1:{p} as written, which every pod on this machine shares (only one pod of this revision can listen there)"
                ),
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

/// A numeric probe port other than the container port (and not 0): Knative's reconciler probes
/// that port instead of the user port (`queue.go` `probePort`).
pub fn explicit_port(probe: &serde_json::Value, container_port: u16) -> Option<u16> {
    ["httpGet", "tcpSocket", "grpc"]
        .iter()
        .filter_map(|h| probe.get(*h)?.get("port"))
        .find_map(|p| {
            p.as_u64()
                .or_else(|| p.as_str().and_then(|s| s.parse().ok()))
        })
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0 && *p != container_port)
}

/// The `SERVING_READINESS_PROBE` Knative's reconciler gives the queue-proxy: the user's probe
/// (or the default TCP probe) aimed at `127.0.0.1:<user_port>` (or at an explicit probe port
/// other than `container_port`, as written), an exec probe replaced by TCP,
/// `successThreshold` defaulted to 1 and a `timeoutSeconds` of at least 1 when periodic.
/// Mirrors `pkg/reconciler/revision/resources/queue.go` `applyReadinessProbeDefaults`.
pub fn queue_proxy_probe(
    probe: Option<&serde_json::Value>,
    user_port: u16,
    container_port: u16,
) -> serde_json::Value {
    use serde_json::{Value, json};
    let user_port = probe
        .and_then(|p| explicit_port(p, container_port))
        .unwrap_or(user_port);
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
