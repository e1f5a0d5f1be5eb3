//! The revision catalog: what the control plane tells the activator.
//!
//! Three sources feed one [`Catalog`]: the file source (`--source file:PATH`, [`crate::source::file`]),
//! the Kubernetes source (`--source kubernetes`, [`crate::source::kube`]: Revisions, private and
//! public EndpointSlices, private Services) and the local source
//! (`activator local`, which calls [`Catalog::upsert_revision`], [`Catalog::set_endpoints`] and
//! [`Catalog::remove_revision`] directly). Consumers (the throttler manager) subscribe to a
//! `tokio::sync::watch` of immutable [`Snapshot`]s, so a source never blocks on the data path and
//! the data path never sees a half-applied update.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::split::TrafficSplit;

/// `namespace/name` of a revision.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RevisionKey {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Revision name.
    pub name: String,
}

impl RevisionKey {
    /// A key from namespace and name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for RevisionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Upstream protocol of a revision (Knative: `h2c` when the first container port is named `h2c`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 (port name `http`).
    #[default]
    Http1,
    /// HTTP/2 cleartext (port name `http2`).
    H2c,
}

/// The parts of a Revision the activator uses.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionSpec {
    /// `spec.containerConcurrency`; 0 means unlimited. Captured when the throttler is created.
    pub container_concurrency: u32,
    /// `spec.timeoutSeconds` (default 300 s): overall budget incl. the time spent held.
    pub timeout: Duration,
    /// `spec.responseStartTimeoutSeconds`; `None` disables it.
    pub response_start_timeout: Option<Duration>,
    /// `spec.idleTimeoutSeconds`; `None` disables it (not enforced yet, see docs/activator.md).
    pub idle_timeout: Option<Duration>,
    /// Upstream protocol.
    pub protocol: Protocol,
    /// Whether a not-ready pod that passes the activator's probe may get traffic (Knative's
    /// probe optimisation). `false` when the revision has an exec readiness probe or startup
    /// probes (activator.md §6.4).
    pub probe_not_ready: bool,
    /// `serving.knative.dev/service` label (metrics only).
    pub service: String,
    /// `serving.knative.dev/configuration` label (metrics only).
    pub configuration: String,
}

impl Default for RevisionSpec {
    fn default() -> Self {
        Self {
            container_concurrency: 0,
            timeout: Duration::from_secs(300),
            response_start_timeout: None,
            idle_timeout: None,
            protocol: Protocol::Http1,
            probe_not_ready: true,
            service: String::new(),
            configuration: String::new(),
        }
    }
}

/// Pod addresses of a revision (Knative: the private Endpoints), each an `ip:port` dest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// Pods Kubernetes reports ready.
    pub ready: Vec<String>,
    /// Pods not ready yet (probed anyway when the spec allows it).
    pub not_ready: Vec<String>,
    /// The private Service's `clusterIP:port`, used only when pods are not addressable (mesh).
    pub cluster_ip: Option<String>,
}

/// One revision as the catalog knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionEntry {
    /// The spec.
    pub spec: RevisionSpec,
    /// The latest pod addresses.
    pub endpoints: Endpoints,
    /// IPs of the activators assigned to this revision (Knative: the public Endpoints in proxy
    /// mode). `None` means "not known": the activator serves all pods. When this activator's
    /// `POD_IP` is not in the list, the previous index/count are kept (Knative quirk).
    pub activators: Option<Vec<String>>,
}

/// An immutable view of all revisions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Revisions by key.
    pub revisions: BTreeMap<RevisionKey, Arc<RevisionEntry>>,
    /// Extra host routes (host without port, lowercase) → revision, consulted after the
    /// `Knative-Serving-*` headers and before `<rev>.<ns>.svc.<domain>`. Knative's ingress does
    /// this routing in a cluster; `activator local` uses it for `<service>.<ns>.<domain>`.
    pub routes: BTreeMap<String, RevisionKey>,
    /// Host routes split by percent over several revisions (Knative `spec.traffic`), consulted
    /// right after `routes`. `activator local` sets one per Service with more than one target.
    pub splits: BTreeMap<String, Arc<TrafficSplit>>,
    /// Increases with every change. The request path compares it with the version the throttler
    /// manager has applied, so a request never acts on throttlers older than the catalog it was
    /// routed with (a revision added a moment ago is held, not 404).
    pub version: u64,
}

/// A handle to the catalog; cheap to clone. Sources write, the activator reads.
#[derive(Clone, Debug)]
pub struct Catalog {
    tx: Arc<watch::Sender<Arc<Snapshot>>>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::new()
    }
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Arc::new(Snapshot::default()));
        Self { tx: Arc::new(tx) }
    }

    /// Subscribes to snapshots; the receiver sees the current one at once.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    fn modify(&self, f: impl FnOnce(&mut Snapshot)) {
        self.tx.send_modify(|snap| {
            let mut next = (**snap).clone();
            f(&mut next);
            next.version = snap.version + 1;
            *snap = Arc::new(next);
        });
    }

    /// Adds a revision or replaces its spec, keeping its endpoints. Requests for it are held from
    /// now on, even before any endpoints are known.
    pub fn upsert_revision(&self, key: RevisionKey, spec: RevisionSpec) {
        self.modify(|s| {
            let entry = match s.revisions.get(&key) {
                Some(e) => RevisionEntry {
                    spec,
                    endpoints: e.endpoints.clone(),
                    activators: e.activators.clone(),
                },
                None => RevisionEntry {
                    spec,
                    endpoints: Endpoints::default(),
                    activators: None,
                },
            };
            s.revisions.insert(key, Arc::new(entry));
        });
    }

    /// Sets the pod addresses of a known revision. Returns `false` (and changes nothing) if the
    /// revision is unknown, as Knative drops Endpoints events for revisions not in its cache.
    pub fn set_endpoints(&self, key: &RevisionKey, endpoints: Endpoints) -> bool {
        let mut found = false;
        self.modify(|s| {
            if let Some(e) = s.revisions.get_mut(key) {
                found = true;
                Arc::make_mut(e).endpoints = endpoints;
            }
        });
        found
    }

    /// Sets the activator IPs assigned to a revision (subsetting). Returns `false` if unknown.
    pub fn set_activators(&self, key: &RevisionKey, ips: Vec<String>) -> bool {
        let mut found = false;
        self.modify(|s| {
            if let Some(e) = s.revisions.get_mut(key) {
                found = true;
                Arc::make_mut(e).activators = Some(ips);
            }
        });
        found
    }

    /// Removes a revision: new requests get 404, requests already held continue to wait.
    pub fn remove_revision(&self, key: &RevisionKey) {
        self.modify(|s| {
            s.revisions.remove(key);
        });
    }

    /// Routes requests whose Host (port ignored, case-insensitive) is `host` to `key`.
    pub fn set_route(&self, host: &str, key: RevisionKey) {
        let host = host.to_ascii_lowercase();
        self.modify(|s| {
            s.splits.remove(&host);
            s.routes.insert(host, key);
        });
    }

    /// Routes requests whose Host is `host` to the revisions of `split`, by percent. Replaces a
    /// plain route of the same host.
    pub fn set_split(&self, host: &str, split: TrafficSplit) {
        let host = host.to_ascii_lowercase();
        self.modify(|s| {
            s.routes.remove(&host);
            s.splits.insert(host, Arc::new(split));
        });
    }

    /// Removes a host route.
    pub fn remove_route(&self, host: &str) {
        let host = host.to_ascii_lowercase();
        self.modify(|s| {
            s.routes.remove(&host);
            s.splits.remove(&host);
        });
    }

    /// Replaces all revisions (a source that owns them, like the Kubernetes watchers), keeping
    /// host routes and splits; a no-op when nothing changed.
    pub fn replace_revisions(&self, revisions: BTreeMap<RevisionKey, Arc<RevisionEntry>>) {
        self.tx.send_if_modified(|cur| {
            if cur.revisions == revisions {
                return false;
            }
            let mut next = (**cur).clone();
            next.revisions = revisions;
            next.version = cur.version + 1;
            *cur = Arc::new(next);
            true
        });
    }

    /// Replaces everything at once (the file source re-reading its file).
    pub fn replace(&self, mut snapshot: Snapshot) {
        self.tx.send_if_modified(|cur| {
            if cur.revisions == snapshot.revisions
                && cur.routes == snapshot.routes
                && cur.splits == snapshot.splits
            {
                false
            } else {
                snapshot.version = cur.version + 1;
                *cur = Arc::new(snapshot);
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_for_unknown_revision_are_dropped() {
        let c = Catalog::new();
        let k = RevisionKey::new("ns", "r");
        assert!(!c.set_endpoints(&k, Endpoints::default()));
        c.upsert_revision(k.clone(), RevisionSpec::default());
        let eps = Endpoints {
            ready: vec!["127.0.0.1:1".into()],
            ..Endpoints::default()
        };
        assert!(c.set_endpoints(&k, eps.clone()));
        // Updating the spec keeps the endpoints.
        c.upsert_revision(k.clone(), RevisionSpec::default());
        assert_eq!(c.snapshot().revisions[&k].endpoints, eps);
        c.remove_revision(&k);
        assert!(c.snapshot().revisions.is_empty());
    }
}
