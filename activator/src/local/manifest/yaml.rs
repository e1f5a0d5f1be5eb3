//! The YAML shapes read with serde; unknown keys land in `other` maps and become warnings.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ServiceYaml {
    #[serde(default)]
    pub(super) api_version: String,
    #[serde(default)]
    pub(super) kind: String,
    #[serde(default)]
    pub(super) metadata: Meta,
    #[serde(default)]
    pub(super) spec: ServiceSpec,
    #[serde(flatten)]
    pub(super) other: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Meta {
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) namespace: Option<String>,
    #[serde(default)]
    pub(super) annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ServiceSpec {
    #[serde(default)]
    pub(super) template: Template,
    #[serde(default)]
    pub(super) traffic: Option<Vec<TrafficYaml>>,
    #[serde(flatten)]
    pub(super) other: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct TrafficYaml {
    #[serde(default)]
    pub(super) revision_name: Option<String>,
    #[serde(default)]
    pub(super) latest_revision: Option<bool>,
    #[serde(default)]
    pub(super) percent: Option<u32>,
    #[serde(default)]
    pub(super) tag: Option<String>,
    #[serde(default)]
    pub(super) configuration_name: Option<String>,
    #[serde(default)]
    pub(super) url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Template {
    #[serde(default)]
    pub(super) metadata: Meta,
    #[serde(default)]
    pub(super) spec: PodSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PodSpec {
    #[serde(default)]
    pub(super) container_concurrency: Option<u32>,
    #[serde(default)]
    pub(super) timeout_seconds: Option<u64>,
    #[serde(default)]
    pub(super) response_start_timeout_seconds: Option<u64>,
    #[serde(default)]
    pub(super) idle_timeout_seconds: Option<u64>,
    #[serde(default)]
    pub(super) containers: Vec<Container>,
    #[serde(flatten)]
    pub(super) other: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Container {
    #[serde(default)]
    pub(super) image: Option<String>,
    #[serde(default)]
    pub(super) image_pull_policy: Option<String>,
    #[serde(default)]
    pub(super) working_dir: Option<String>,
    #[serde(default)]
    pub(super) command: Vec<String>,
    #[serde(default)]
    pub(super) args: Vec<String>,
    #[serde(default)]
    pub(super) env: Vec<EnvVar>,
    #[serde(default)]
    pub(super) ports: Vec<PortYaml>,
    #[serde(default)]
    pub(super) readiness_probe: Option<serde_yaml_ng::Value>,
    #[serde(flatten)]
    pub(super) other: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PortYaml {
    #[serde(default)]
    pub(super) container_port: Option<u32>,
    #[serde(default)]
    pub(super) name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct EnvVar {
    pub(super) name: String,
    #[serde(default)]
    pub(super) value: Option<String>,
    #[serde(default)]
    pub(super) value_from: Option<serde_yaml_ng::Value>,
}
