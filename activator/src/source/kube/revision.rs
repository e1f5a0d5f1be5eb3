//! A minimal typed `serving.knative.dev/v1` Revision: only the fields the activator reads
//! (activator.md §2.1). Unknown fields are ignored, so newer Knative versions still parse.
//!
//! The `kube::Resource` impl is written by hand instead of `#[derive(CustomResource)]`: the
//! derive pulls in `schemars` and a proc-macro crate to generate a CRD schema we never install.

use std::borrow::Cow;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::catalog::{Protocol, RevisionSpec};

/// Label naming the Knative Service of a revision (metrics only).
pub const SERVICE_LABEL: &str = "serving.knative.dev/service";
/// Label naming the Configuration of a revision (metrics only).
pub const CONFIGURATION_LABEL: &str = "serving.knative.dev/configuration";

/// Knative's default `timeoutSeconds` (the webhook always sets it; we default defensively).
const DEFAULT_TIMEOUT_SECONDS: u64 = 300;

/// `serving.knative.dev/v1` Revision, reduced to what the activator uses.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Revision {
    /// Name, namespace, labels, resourceVersion.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The revision's spec.
    #[serde(default)]
    pub spec: RevisionSpecFields,
}

/// `Revision.spec`: the Knative fields plus the pod-spec parts the activator reads.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionSpecFields {
    /// `containerConcurrency`; absent means 0 (unlimited).
    #[serde(default)]
    pub container_concurrency: Option<i64>,
    /// `timeoutSeconds`.
    #[serde(default)]
    pub timeout_seconds: Option<i64>,
    /// `responseStartTimeoutSeconds`.
    #[serde(default)]
    pub response_start_timeout_seconds: Option<i64>,
    /// `idleTimeoutSeconds`.
    #[serde(default)]
    pub idle_timeout_seconds: Option<i64>,
    /// The pod's containers.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub containers: Vec<Container>,
}

/// Go encodes a nil slice as `null`; treat it like an absent field.
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// A container, reduced to ports and probe hints.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// Container name.
    #[serde(default)]
    pub name: String,
    /// Ports; only the first port's name matters (`h2c`).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub ports: Vec<ContainerPort>,
    /// Readiness probe; only whether it is an `exec` probe matters.
    #[serde(default)]
    pub readiness_probe: Option<ProbeHint>,
    /// Startup probe; only its presence matters.
    #[serde(default)]
    pub startup_probe: Option<IgnoredAny>,
}

/// A container port.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// Port name (`h2c` selects HTTP/2 cleartext).
    #[serde(default)]
    pub name: Option<String>,
}

/// The part of a probe that decides Knative's probe optimisation.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ProbeHint {
    /// Present for exec probes.
    #[serde(default)]
    pub exec: Option<IgnoredAny>,
}

impl kube::Resource for Revision {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Revision".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "serving.knative.dev".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "revisions".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

fn seconds(v: Option<i64>) -> Option<Duration> {
    v.filter(|s| *s > 0)
        .map(|s| Duration::from_secs(s.unsigned_abs()))
}

impl Revision {
    /// The serving container: the only container, else the first one with ports (§2.1).
    fn serving_container(&self) -> Option<&Container> {
        match self.spec.containers.as_slice() {
            [only] => Some(only),
            all => all.iter().find(|c| !c.ports.is_empty()),
        }
    }

    /// The catalog's view of this revision.
    pub fn to_spec(&self) -> RevisionSpec {
        let s = &self.spec;
        let protocol = match self
            .serving_container()
            .and_then(|c| c.ports.first())
            .and_then(|p| p.name.as_deref())
        {
            Some("h2c") => Protocol::H2c,
            _ => Protocol::Http1,
        };
        // Knative disables the optimisation for an exec readiness probe or a startup probe on
        // the serving container and for sidecar startup probes; sidecar exec readiness probes
        // are included too, the safe superset activator.md §6.4 recommends.
        let probe_not_ready = !s.containers.iter().any(|c| {
            c.startup_probe.is_some()
                || c.readiness_probe.as_ref().is_some_and(|p| p.exec.is_some())
        });
        let label = |k: &str| {
            self.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(k))
                .cloned()
                .unwrap_or_default()
        };
        RevisionSpec {
            container_concurrency: s
                .container_concurrency
                .filter(|c| *c > 0)
                .map_or(0, |c| u32::try_from(c).unwrap_or(u32::MAX)),
            timeout: seconds(s.timeout_seconds)
                .unwrap_or(Duration::from_secs(DEFAULT_TIMEOUT_SECONDS)),
            response_start_timeout: seconds(s.response_start_timeout_seconds),
            idle_timeout: seconds(s.idle_timeout_seconds),
            protocol,
            probe_not_ready,
            service: label(SERVICE_LABEL),
            configuration: label(CONFIGURATION_LABEL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Revision {
        serde_json::from_str(json).expect("test JSON is valid")
    }

    #[test]
    fn fields_the_contract_uses() {
        let r = parse(
            r#"{"apiVersion":"serving.knative.dev/v1","kind":"Revision",
            "metadata":{"name":"hello-00001","namespace":"ns","resourceVersion":"7",
              "labels":{"serving.knative.dev/service":"hello","serving.knative.dev/configuration":"hello-cfg"}},
            "spec":{"containerConcurrency":3,"timeoutSeconds":60,"responseStartTimeoutSeconds":5,
              "idleTimeoutSeconds":0,"enableServiceLinks":false,
              "containers":[{"name":"user","image":"x","ports":[{"name":"h2c","containerPort":8080}],
                "readinessProbe":{"httpGet":{"port":0},"successThreshold":1}}]},
            "status":{"conditions":[]}}"#,
        );
        let s = r.to_spec();
        assert_eq!(s.container_concurrency, 3);
        assert_eq!(s.timeout, Duration::from_secs(60));
        assert_eq!(s.response_start_timeout, Some(Duration::from_secs(5)));
        assert_eq!(s.idle_timeout, None);
        assert_eq!(s.protocol, Protocol::H2c);
        assert!(s.probe_not_ready);
        assert_eq!(
            (s.service.as_str(), s.configuration.as_str()),
            ("hello", "hello-cfg")
        );
    }

    #[test]
    fn defaults_when_fields_are_absent() {
        let s = parse(r#"{"metadata":{"name":"r","namespace":"n"},"spec":{"containers":[{}]}}"#)
            .to_spec();
        assert_eq!(s, RevisionSpec::default());
        // Go's nil slices arrive as null.
        let s =
            parse(r#"{"spec":{"containers":[{"ports":null}],"timeoutSeconds":null}}"#).to_spec();
        assert_eq!(s, RevisionSpec::default());
        assert_eq!(
            parse(r#"{"spec":{"containers":null}}"#).to_spec(),
            RevisionSpec::default()
        );
    }

    #[test]
    fn serving_container_is_the_first_with_ports_when_there_are_sidecars() {
        let s = parse(
            r#"{"spec":{"containers":[{"name":"side"},{"name":"user","ports":[{"name":"h2c"}]}]}}"#,
        )
        .to_spec();
        assert_eq!(s.protocol, Protocol::H2c);
        // A port not named h2c (or an unnamed one) is HTTP/1.
        let s = parse(r#"{"spec":{"containers":[{"ports":[{"containerPort":8080}]}]}}"#).to_spec();
        assert_eq!(s.protocol, Protocol::Http1);
    }

    #[test]
    fn exec_readiness_or_startup_probes_disable_the_probe_optimisation() {
        for json in [
            r#"{"spec":{"containers":[{"readinessProbe":{"exec":{"command":["true"]}}}]}}"#,
            r#"{"spec":{"containers":[{"startupProbe":{"tcpSocket":{}}}]}}"#,
            r#"{"spec":{"containers":[{"ports":[{}]},{"startupProbe":{}}]}}"#,
        ] {
            assert!(!parse(json).to_spec().probe_not_ready, "{json}");
        }
    }
}
