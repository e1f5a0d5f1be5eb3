//! Keeps one [`RevisionThrottler`] and one [`Prober`] per catalog revision (Knative's throttler
//! informer handlers plus the revision-backends manager).

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;
use shared::http::proxy::ClientOptions;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::catalog::{Endpoints, RevisionKey, Snapshot};
use crate::metrics::Metrics;
use crate::probe::{ProbeSettings, Prober};
use crate::throttler::{QueueLimits, RevisionThrottler};

struct Watcher {
    endpoints: watch::Sender<Endpoints>,
    stop: CancellationToken,
}

/// Applies catalog snapshots.
pub struct Manager {
    /// Throttlers readable from the request path.
    pub throttlers: Arc<DashMap<RevisionKey, Arc<RevisionThrottler>>>,
    watchers: HashMap<RevisionKey, Watcher>,
    pod_ip: String,
    limits: Arc<QueueLimits>,
    client_opts: ClientOptions,
    probe: ProbeSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// The catalog version applied last (see [`crate::catalog::Snapshot::version`]).
    applied: watch::Sender<u64>,
}

impl Manager {
    /// A manager with no revisions.
    pub fn new(
        pod_ip: String,
        limits: Arc<QueueLimits>,
        client_opts: ClientOptions,
        probe: ProbeSettings,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            throttlers: Arc::new(DashMap::new()),
            watchers: HashMap::new(),
            pod_ip,
            limits,
            client_opts,
            probe,
            metrics,
            shutdown,
            applied: watch::channel(0).0,
        }
    }

    /// Follows the catalog version applied last.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Applies one snapshot: creates, updates and removes throttlers and probers.
    pub fn apply(&mut self, snap: &Snapshot) {
        for (key, entry) in &snap.revisions {
            let throttler = match self.throttlers.get(key).map(|t| Arc::clone(&t)) {
                Some(t) => {
                    if *t.spec() != entry.spec {
                        t.set_spec(entry.spec.clone());
                    }
                    t
                }
                None => {
                    let t = RevisionThrottler::new(
                        key.clone(),
                        entry.spec.clone(),
                        Arc::clone(&self.limits),
                        self.client_opts.clone(),
                        self.metrics.revision(key),
                    );
                    self.throttlers.insert(key.clone(), Arc::clone(&t));
                    t
                }
            };
            if let Some(ips) = &entry.activators {
                throttler.update_activators(ips, &self.pod_ip);
            }
            match self.watchers.get(key) {
                Some(w) => {
                    w.endpoints.send_if_modified(|cur| {
                        if *cur == entry.endpoints {
                            false
                        } else {
                            *cur = entry.endpoints.clone();
                            true
                        }
                    });
                }
                None => {
                    let (tx, rx) = watch::channel(entry.endpoints.clone());
                    let (etx, erx) = mpsc::channel(64);
                    throttler.set_eject_channel(etx);
                    let stop = self.shutdown.child_token();
                    let prober = Prober {
                        throttler,
                        endpoints: rx,
                        ejected: erx,
                        settings: self.probe,
                    };
                    tokio::spawn(prober.run(stop.clone()));
                    self.watchers.insert(
                        key.clone(),
                        Watcher {
                            endpoints: tx,
                            stop,
                        },
                    );
                }
            }
        }
        self.watchers.retain(|key, w| {
            let keep = snap.revisions.contains_key(key);
            if !keep {
                w.stop.cancel();
            }
            keep
        });
        // Requests already inside a removed throttler keep their Arc and finish.
        self.throttlers
            .retain(|key, _| snap.revisions.contains_key(key));
        self.applied.send_replace(snap.version);
    }

    /// Follows the catalog until `shutdown`.
    pub async fn run(mut self, mut rx: watch::Receiver<Arc<Snapshot>>) {
        loop {
            let snap = rx.borrow_and_update().clone();
            self.apply(&snap);
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
        }
    }
}
