//! Knative's ConfigMaps in `SYSTEM_NAMESPACE`, from the API server and watched, as Knative's
//! activator reads them (its Role grants get/list/watch on configmaps there; nothing more is
//! needed): one kube-runtime watcher on the namespace's ConfigMaps.
//!
//! - `config-logging` (`CONFIG_LOGGING_NAME`): the log level, applied live.
//! - `config-observability` (`CONFIG_OBSERVABILITY_NAME`): the request log and
//!   `runtime-profiling`, applied live; the tracing keys, read from the first list only (Knative
//!   reads them at start-up too).
//! - `config-network`: read at start-up by [`super::network::load`]; a later change is logged as
//!   needing a restart, as in Knative.
//!
//! A bad value is logged and the previous setting kept (Knative's config store rejects it the
//! same way); a deleted ConfigMap leaves the settings as they were.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{BoxStream, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use super::KubeSourceError;
use super::network::CONFIG_NETWORK;
use crate::configmap::Live;

/// The ConfigMap names (Knative's `CONFIG_LOGGING_NAME` / `CONFIG_OBSERVABILITY_NAME`).
#[derive(Clone, Debug)]
pub struct Names {
    /// `config-logging` unless renamed.
    pub logging: String,
    /// `config-observability` unless renamed.
    pub observability: String,
}

impl Default for Names {
    fn default() -> Self {
        Self {
            logging: "config-logging".to_owned(),
            observability: "config-observability".to_owned(),
        }
    }
}

/// The watch on `SYSTEM_NAMESPACE`'s ConfigMaps, after its first list.
pub struct ConfigMapSource {
    events: BoxStream<'static, watcher::Result<watcher::Event<ConfigMap>>>,
    names: Names,
    live: Arc<Live>,
    relist: Option<Vec<ConfigMap>>,
    /// `config-network`'s data as last seen, to tell a real change from a re-list.
    network: Option<BTreeMap<String, String>>,
}

impl std::fmt::Debug for ConfigMapSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigMapSource")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// What the first list held, for the settings read only at start-up.
#[derive(Debug, Default)]
pub struct Initial {
    /// `config-observability`'s data, if it exists.
    pub observability: Option<BTreeMap<String, String>>,
}

impl ConfigMapSource {
    /// Lists `namespace`'s ConfigMaps (waiting up to `timeout`), applies the live settings, and
    /// returns the source to [`run`](Self::run) with what start-up needs.
    ///
    /// # Errors
    /// [`KubeSourceError::Sync`] when no list completes in time (the message carries the
    /// watch's last error, e.g. a 403).
    pub async fn start(
        client: Client,
        namespace: &str,
        names: Names,
        live: Arc<Live>,
        timeout: Duration,
    ) -> Result<(Self, Initial), KubeSourceError> {
        let events = watcher(
            Api::<ConfigMap>::namespaced(client, namespace),
            watcher::Config::default(),
        )
        .default_backoff()
        .boxed();
        let mut me = Self {
            events,
            names,
            live,
            relist: None,
            network: None,
        };
        let mut initial = Initial::default();
        let mut last_error = None;
        let listed = tokio::time::timeout(timeout, async {
            while let Some(e) = me.events.next().await {
                match e {
                    Ok(watcher::Event::InitDone) => {
                        let listed = me.relist.take().unwrap_or_default();
                        initial.observability = listed
                            .iter()
                            .find(|cm| name(cm) == me.names.observability)
                            .map(|cm| cm.data.clone().unwrap_or_default());
                        for cm in &listed {
                            me.apply(cm);
                        }
                        return true;
                    }
                    Ok(e) => me.handle(e),
                    Err(error) => {
                        tracing::warn!(error = %error, "configmap watch error; retrying");
                        last_error = Some(error.to_string());
                    }
                }
            }
            false
        })
        .await;
        if listed != Ok(true) {
            return Err(KubeSourceError::ConfigMaps {
                namespace: namespace.to_owned(),
                waited: timeout,
                last_error: last_error.unwrap_or_else(|| "none".into()),
            });
        }
        Ok((me, initial))
    }

    /// Follows the watch until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let e = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = self.events.next() => e,
            };
            match e {
                None => return,
                Some(Ok(e)) => self.handle(e),
                Some(Err(error)) => {
                    tracing::warn!(error = %error, "configmap watch error; retrying");
                }
            }
        }
    }

    fn handle(&mut self, e: watcher::Event<ConfigMap>) {
        match e {
            watcher::Event::Apply(cm) => self.apply(&cm),
            // Knative keeps the last good settings when a ConfigMap goes away.
            watcher::Event::Delete(cm) => {
                tracing::info!(name = %name(&cm), "configmap deleted; keeping its last settings");
            }
            watcher::Event::Init => self.relist = Some(Vec::new()),
            watcher::Event::InitApply(cm) => match &mut self.relist {
                Some(buf) => buf.push(cm),
                None => self.apply(&cm),
            },
            watcher::Event::InitDone => {
                for cm in self.relist.take().unwrap_or_default() {
                    self.apply(&cm);
                }
            }
        }
    }

    fn apply(&mut self, cm: &ConfigMap) {
        let empty = BTreeMap::new();
        let data = cm.data.as_ref().unwrap_or(&empty);
        let n = name(cm);
        if n == self.names.logging {
            self.live.apply_logging(data);
        } else if n == self.names.observability {
            self.live.apply_observability(data);
        } else if n == CONFIG_NETWORK {
            if self.network.as_ref().is_some_and(|old| old != data) {
                tracing::info!(
                    "config-network changed; as in Knative, the activator applies it on restart"
                );
            }
            self.network = Some(data.clone());
        }
    }
}

fn name(cm: &ConfigMap) -> &str {
    cm.metadata.name.as_deref().unwrap_or_default()
}
