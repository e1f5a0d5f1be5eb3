//! `--source kubernetes`: the revision catalog from the Kubernetes API, with kube-rs watchers.
//!
//! Four cluster-wide watches (activator.md §2), each a `kube::runtime::watcher` stream with
//! kube's default backoff:
//! - `serving.knative.dev/v1` Revisions → revision specs ([`revision`]);
//! - private EndpointSlices (`networking.internal.knative.dev/serviceType=Private` and a
//!   `serving.knative.dev/revisionUID` label, as Knative filters its Endpoints) → pod dests;
//! - public EndpointSlices (`serviceType=Public`) → the activator IPs assigned to a revision;
//! - private Services (`serviceType=Private`) → the cluster-IP fallback dest.
//!
//! EndpointSlices (not the deprecated core/v1 Endpoints) carry the labels of their Service, or of
//! the Endpoints they mirror for the selector-less public Service, so the same label filters work.
//! Knative's own RBAC (`knative-serving-activator-cluster`) grants core/v1 Endpoints but not
//! EndpointSlices: when listing EndpointSlices is forbidden (403) at start, both address watches
//! use Endpoints instead, with the same label selectors, and one log line says so
//! ([`AddressApi::detect`]).
//!
//! One task owns the [`state::State`] and publishes it to the [`Catalog`]; the request path only
//! reads catalog snapshots. kube-runtime's watcher handles watch restarts, bookmarks and `410
//! Gone` (it re-lists and reports `Init`/`InitApply`/`InitDone`, which the state applies
//! atomically, dropping objects deleted while the watch was down).

pub mod configmaps;
pub mod network;
pub mod revision;
pub mod state;

use std::time::Duration;

use futures_util::stream::{BoxStream, StreamExt, select_all};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use self::revision::Revision;
use self::state::{Kind, State};
use crate::catalog::Catalog;

/// How long [`KubeSource::start`] waits for the first complete list of every watch.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// Label selector of private EndpointSlices (Knative's private Endpoints filter, §2.2).
pub const PRIVATE_SLICES: &str =
    "networking.internal.knative.dev/serviceType=Private,serving.knative.dev/revisionUID";
/// Label selector of public EndpointSlices (§2.4).
pub const PUBLIC_SLICES: &str = "networking.internal.knative.dev/serviceType=Public";
/// Label selector of private Services (§2.3).
pub const PRIVATE_SERVICES: &str = "networking.internal.knative.dev/serviceType=Private";

/// The Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    /// No cluster configuration (in-cluster service account or kubeconfig) was usable.
    #[error("kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// `config-network` could not be read (Knative treats this as fatal too).
    #[error("reading config-network in namespace {0}: {1}")]
    ConfigNetwork(String, #[source] kube::Error),
    /// `config-network` asks for something this activator does not implement.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The ConfigMaps of `SYSTEM_NAMESPACE` could not be listed in time.
    #[error(
        "no list of the configmaps in {namespace} within {waited:?} (last error: {last_error})"
    )]
    ConfigMaps {
        /// `SYSTEM_NAMESPACE`.
        namespace: String,
        /// How long we waited.
        waited: Duration,
        /// The last watch error seen, if any.
        last_error: String,
    },
    /// A watch did not complete its first list in time.
    #[error(
        "kubernetes source: no complete list of {kind:?} within {waited:?} (last error: {last_error})"
    )]
    Sync {
        /// The first kind still missing.
        kind: Kind,
        /// How long we waited.
        waited: Duration,
        /// The last watch error seen, if any.
        last_error: String,
    },
}

/// Which API the pod addresses come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressApi {
    /// `discovery.k8s.io/v1` EndpointSlices (our RBAC in `config/base`).
    EndpointSlices,
    /// core/v1 Endpoints (Knative's RBAC, which does not grant EndpointSlices).
    Endpoints,
}

impl AddressApi {
    /// EndpointSlices unless the service account may not list them: one `limit=1` list, and a
    /// 403 selects core/v1 Endpoints. Any other outcome keeps EndpointSlices (an unreachable API
    /// server is retried by the watchers and reported by [`KubeSource::start`]).
    pub async fn detect(client: &Client) -> Self {
        let probe = Api::<EndpointSlice>::all(client.clone())
            .list_metadata(&ListParams::default().limit(1))
            .await;
        match probe {
            Err(kube::Error::Api(s)) if s.is_forbidden() => {
                tracing::info!(
                    "listing discovery.k8s.io EndpointSlices is forbidden (Knative's RBAC); watching core/v1 Endpoints instead"
                );
                Self::Endpoints
            }
            _ => Self::EndpointSlices,
        }
    }
}

/// One watcher item, tagged with its watch (boxed: the k8s types differ a lot in size).
enum Update {
    Revision(Box<watcher::Result<watcher::Event<Revision>>>),
    PrivateSlice(Box<watcher::Result<watcher::Event<EndpointSlice>>>),
    PublicSlice(Box<watcher::Result<watcher::Event<EndpointSlice>>>),
    PrivateEndpoints(Box<watcher::Result<watcher::Event<Endpoints>>>),
    PublicEndpoints(Box<watcher::Result<watcher::Event<Endpoints>>>),
    PrivateService(Box<watcher::Result<watcher::Event<Service>>>),
}

/// The Kubernetes source: started once (waiting for the first lists), then followed.
pub struct KubeSource {
    updates: BoxStream<'static, Update>,
    client: Client,
    api: AddressApi,
    state: State,
    catalog: Catalog,
    last_error: Option<String>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("revisions", &self.state.entries().len())
            .finish_non_exhaustive()
    }
}

/// A client from the in-cluster service account, or `KUBECONFIG` / `~/.kube/config` outside one
/// (`kube::Config::infer`).
///
/// # Errors
/// [`KubeSourceError::Client`] when no configuration is usable.
pub async fn infer_client() -> Result<Client, KubeSourceError> {
    Client::try_default().await.map_err(KubeSourceError::Client)
}

/// The watches, with pod addresses from `api`.
fn watches(client: &Client, api: AddressApi) -> BoxStream<'static, Update> {
    let cfg = watcher::Config::default;
    let mut streams: Vec<BoxStream<'static, Update>> = vec![
        watcher(Api::<Revision>::all(client.clone()), cfg())
            .default_backoff()
            .map(|e| Update::Revision(Box::new(e)))
            .boxed(),
    ];
    match api {
        AddressApi::EndpointSlices => {
            let slices = || Api::<EndpointSlice>::all(client.clone());
            streams.push(
                watcher(slices(), cfg().labels(PRIVATE_SLICES))
                    .default_backoff()
                    .map(|e| Update::PrivateSlice(Box::new(e)))
                    .boxed(),
            );
            streams.push(
                watcher(slices(), cfg().labels(PUBLIC_SLICES))
                    .default_backoff()
                    .map(|e| Update::PublicSlice(Box::new(e)))
                    .boxed(),
            );
        }
        AddressApi::Endpoints => {
            // Knative's Services (and so their Endpoints) carry the same labels.
            let eps = || Api::<Endpoints>::all(client.clone());
            streams.push(
                watcher(eps(), cfg().labels(PRIVATE_SLICES))
                    .default_backoff()
                    .map(|e| Update::PrivateEndpoints(Box::new(e)))
                    .boxed(),
            );
            streams.push(
                watcher(eps(), cfg().labels(PUBLIC_SLICES))
                    .default_backoff()
                    .map(|e| Update::PublicEndpoints(Box::new(e)))
                    .boxed(),
            );
        }
    }
    streams.push(
        watcher(
            Api::<Service>::all(client.clone()),
            cfg().labels(PRIVATE_SERVICES),
        )
        .default_backoff()
        .map(|e| Update::PrivateService(Box::new(e)))
        .boxed(),
    );
    select_all(streams).boxed()
}

impl KubeSource {
    /// Starts the watches and waits (up to `sync_timeout`) until each has listed once, so the
    /// activator never serves 404 for a revision that exists; then publishes to `catalog`.
    ///
    /// # Errors
    /// [`KubeSourceError::Sync`] when a list does not complete in time (API unreachable,
    /// missing RBAC, Knative's CRDs not installed); the message carries the last watch error.
    pub async fn start(
        client: Client,
        catalog: Catalog,
        sync_timeout: Duration,
    ) -> Result<Self, KubeSourceError> {
        let api = AddressApi::detect(&client).await;
        let mut me = Self {
            updates: watches(&client, api),
            client,
            api,
            state: State::default(),
            catalog,
            last_error: None,
        };
        let all_synced = |st: &State| Kind::ALL.iter().all(|k| st.synced(*k));
        // On timeout the state itself says which watch is missing, so the result is not needed.
        let _timed_out = tokio::time::timeout(sync_timeout, async {
            while !all_synced(&me.state) {
                // The watcher streams never end (errors are retried with backoff).
                let Some(u) = me.updates.next().await else {
                    return;
                };
                if !me.switch_if_forbidden(&u) {
                    me.handle(u);
                }
            }
        })
        .await;
        if let Some(kind) = Kind::ALL.into_iter().find(|k| !me.state.synced(*k)) {
            return Err(KubeSourceError::Sync {
                kind,
                waited: sync_timeout,
                last_error: me.last_error.unwrap_or_else(|| "none".into()),
            });
        }
        me.publish();
        tracing::info!(
            revisions = me.state.entries().len(),
            "kubernetes source synced"
        );
        Ok(me)
    }

    /// Follows the watches until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let u = tokio::select! {
                _ = shutdown.cancelled() => return,
                u = self.updates.next() => u,
            };
            let Some(u) = u else { return };
            if self.switch_if_forbidden(&u) {
                continue;
            }
            if self.handle(u) {
                self.publish();
            }
        }
    }

    /// Knative's RBAC re-applied under a running pod (e.g. `serving-core.yaml`) forbids the
    /// EndpointSlice watches: every watch restarts on Endpoints, whose re-lists replace the
    /// slices' objects in one step, so routing does not flap. Returns whether it switched.
    fn switch_if_forbidden(&mut self, u: &Update) -> bool {
        if self.api != AddressApi::EndpointSlices {
            return false;
        }
        let Some(api) = forbidden_slices(u) else {
            return false;
        };
        tracing::info!(
            "discovery.k8s.io EndpointSlices became forbidden; watching core/v1 Endpoints instead"
        );
        self.api = api;
        self.updates = watches(&self.client, api);
        true
    }

    /// Applies one update; returns whether the catalog entries changed.
    fn handle(&mut self, u: Update) -> bool {
        let (kind, res) = match u {
            Update::Revision(r) => (Kind::Revisions, (*r).map(|e| self.state.on_revision(e))),
            Update::PrivateSlice(r) => (
                Kind::PrivateSlices,
                (*r).map(|e| self.state.on_private_slice(e)),
            ),
            Update::PublicSlice(r) => (
                Kind::PublicSlices,
                (*r).map(|e| self.state.on_public_slice(e)),
            ),
            Update::PrivateEndpoints(r) => (
                Kind::PrivateSlices,
                (*r).map(|e| self.state.on_private_slice(e)),
            ),
            Update::PublicEndpoints(r) => (
                Kind::PublicSlices,
                (*r).map(|e| self.state.on_public_slice(e)),
            ),
            Update::PrivateService(r) => (
                Kind::PrivateServices,
                (*r).map(|e| self.state.on_private_service(e)),
            ),
        };
        match res {
            Ok(changed) => changed,
            Err(error) => {
                // The watcher retries with backoff; 410 Gone makes it re-list on its own.
                tracing::warn!(kind = ?kind, error = %error, "kubernetes watch error; retrying");
                self.last_error = Some(error.to_string());
                false
            }
        }
    }

    fn publish(&self) {
        self.catalog.replace_revisions(self.state.entries().clone());
    }
}

/// `Some(Endpoints)` when `u` is an EndpointSlice watch failing with 403.
fn forbidden_slices(u: &Update) -> Option<AddressApi> {
    let err = match u {
        Update::PrivateSlice(r) | Update::PublicSlice(r) => r.as_ref().as_ref().err()?,
        _ => return None,
    };
    let forbidden = match err {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.is_forbidden(),
        watcher::Error::WatchError(s) => s.is_forbidden(),
        _ => false,
    };
    forbidden.then_some(AddressApi::Endpoints)
}
