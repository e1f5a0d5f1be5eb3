//! `config-network`, read once at startup like Knative's activator (activator.md §1.3): a direct
//! GET in `SYSTEM_NAMESPACE`, fatal when missing. Only the keys the activator uses are parsed;
//! settings this activator does not implement are refused (TLS) or reported (mesh modes) rather
//! than silently ignored.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};

use super::KubeSourceError;

/// The config map's name.
pub const CONFIG_NETWORK: &str = "config-network";

/// `mesh-compatibility-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MeshMode {
    /// Probe pods; fall back to the cluster IP when every probe looks like a mesh (default).
    #[default]
    Auto,
    /// Always use the cluster IP.
    Enabled,
    /// Never fall back.
    Disabled,
}

/// The `config-network` keys the activator reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `system-internal-tls: enabled` (or the legacy `internal-encryption: "true"`).
    pub system_internal_tls: bool,
    /// `mesh-compatibility-mode`; unknown values are ignored, as Knative does.
    pub mesh_mode: MeshMode,
    /// `enable-mesh-pod-addressability` (passthrough load balancing).
    pub pod_addressability: bool,
}

impl NetworkConfig {
    /// Parses the config map's data.
    pub fn parse(data: &BTreeMap<String, String>) -> Self {
        let get = |k: &str| data.get(k).map(|v| v.trim().to_ascii_lowercase());
        let mesh_mode = match get("mesh-compatibility-mode").as_deref() {
            Some("enabled") => MeshMode::Enabled,
            Some("disabled") => MeshMode::Disabled,
            _ => MeshMode::Auto,
        };
        Self {
            system_internal_tls: get("system-internal-tls").as_deref() == Some("enabled")
                || get("internal-encryption").as_deref() == Some("true"),
            mesh_mode,
            pod_addressability: get("enable-mesh-pod-addressability").as_deref() == Some("true"),
        }
    }

    /// Refuses settings that would silently weaken the installation; warns about the ones that
    /// only change routing.
    ///
    /// # Errors
    /// [`KubeSourceError::Unsupported`] for system-internal TLS, which this activator does not
    /// implement: serving it in plaintext would undo the encryption the operator asked for.
    pub fn check(&self) -> Result<(), KubeSourceError> {
        if self.system_internal_tls {
            return Err(KubeSourceError::Unsupported(
                "config-network system-internal-tls is enabled; this activator does not implement system-internal TLS (port 8112)",
            ));
        }
        if self.mesh_mode != MeshMode::Auto {
            tracing::warn!(mode = ?self.mesh_mode, "config-network mesh-compatibility-mode is not implemented; behaving as auto");
        }
        if self.pod_addressability {
            tracing::warn!(
                "config-network enable-mesh-pod-addressability is not implemented; pods are addressed directly"
            );
        }
        Ok(())
    }
}

/// GETs `config-network` in `namespace` and parses it.
///
/// # Errors
/// [`KubeSourceError::ConfigNetwork`] when the GET fails (missing config map: fatal, as in Knative).
pub async fn load(client: Client, namespace: &str) -> Result<NetworkConfig, KubeSourceError> {
    let cm = Api::<ConfigMap>::namespaced(client, namespace)
        .get(CONFIG_NETWORK)
        .await
        .map_err(|e| KubeSourceError::ConfigNetwork(namespace.to_owned(), e))?;
    Ok(NetworkConfig::parse(&cm.data.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_and_keys() {
        assert_eq!(NetworkConfig::parse(&data(&[])), NetworkConfig::default());
        assert!(NetworkConfig::parse(&data(&[])).check().is_ok());
        let c = NetworkConfig::parse(&data(&[
            ("mesh-compatibility-mode", "Disabled"),
            ("enable-mesh-pod-addressability", "true"),
            ("system-internal-tls", "disabled"),
        ]));
        assert_eq!(c.mesh_mode, MeshMode::Disabled);
        assert!(c.pod_addressability && !c.system_internal_tls);
        // Warned about, not fatal.
        assert!(c.check().is_ok());
        assert_eq!(
            NetworkConfig::parse(&data(&[("mesh-compatibility-mode", "sometimes")])).mesh_mode,
            MeshMode::Auto
        );
    }

    #[test]
    fn system_internal_tls_is_refused() {
        for kv in [
            ("system-internal-tls", "Enabled"),
            ("internal-encryption", "true"),
        ] {
            let err = NetworkConfig::parse(&data(&[kv])).check().unwrap_err();
            assert!(err.to_string().contains("system-internal-tls"), "{err}");
        }
    }
}
