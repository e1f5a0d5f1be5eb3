//! Pod readiness probing (mirrors `pkg/activator/net/revision_backends.go`).
//!
//! One task per revision owns the healthy set. It probes every not-yet-healthy pod in parallel
//! (`GET /healthz`, `K-Network-Probe: queue`, `User-Agent: Knative-Activator-Probe`; healthy iff
//! 200 with body exactly `queue`) under one `PROBE_TIMEOUT` deadline, and pushes the healthy set
//! to the throttler whenever it changes.
//!
//! Beyond Knative's fixed 200 ms tick: new or ejected pods are probed at once and then with a
//! quick backoff (1 ms doubling up to [`FAST_PROBE_CAP`]) for [`FAST_PROBE_WINDOW`] after the
//! last change, then every `PROBE_FREQUENCY`, so a held request reaches a pod within a few ms
//! of it listening. Probes use the pod's pooled upstream, so the probe connection is reused by
//! the first request.
//!
//! Mesh fallback (§6.3): when no pod probe succeeded, every probe answer was a mesh error
//! (502/503), and the cluster IP probes healthy, routing switches to the cluster IP for good.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::USER_AGENT;
use http::{Request, StatusCode, Version};
use http_body_util::BodyExt;
use shared::http::headers::{K_NETWORK_PROBE, PROBE_QUEUE, UA_ACTIVATOR_PROBE};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::catalog::{Endpoints, Protocol};
use crate::proxy::ReclaimBody;
use crate::throttler::{PodUpstream, RevisionThrottler};

/// Fastest re-probe interval cap right after a change.
pub const FAST_PROBE_CAP: Duration = Duration::from_millis(5);
/// How long after a change re-probing stays fast.
pub const FAST_PROBE_WINDOW: Duration = Duration::from_secs(15);

/// Probe timing (env `PROBE_TIMEOUT`, `PROBE_FREQUENCY`).
#[derive(Clone, Copy, Debug)]
pub struct ProbeSettings {
    /// Deadline of one round (Knative 300 ms).
    pub timeout: Duration,
    /// Slow re-probe tick (Knative 200 ms).
    pub frequency: Duration,
}

/// Result of one probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 200 `queue`.
    Healthy,
    /// 502/503: possibly a mesh in the way.
    MeshError,
    /// Any other answer: the pod is reachable but not ready.
    NotReady,
    /// Connect or transport failure, or the deadline.
    Unreachable,
}

/// Probes one dest through its pooled upstream.
pub async fn probe(upstream: &PodUpstream, dest: &str, protocol: Protocol) -> Outcome {
    let req = Request::builder()
        .uri(format!("http://{dest}/healthz"))
        .version(match protocol {
            Protocol::Http1 => Version::HTTP_11,
            Protocol::H2c => Version::HTTP_2,
        })
        .header(K_NETWORK_PROBE, PROBE_QUEUE)
        .header(USER_AGENT, UA_ACTIVATOR_PROBE)
        .body(ReclaimBody::empty());
    let Ok(req) = req else {
        return Outcome::Unreachable;
    };
    let resp = match upstream.forward(req).await {
        Ok(r) => r,
        Err(_) => return Outcome::Unreachable,
    };
    let status = resp.status();
    let body = match resp.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Outcome::Unreachable,
    };
    if status == StatusCode::OK && body == Bytes::from_static(PROBE_QUEUE.as_bytes()) {
        Outcome::Healthy
    } else if status == StatusCode::BAD_GATEWAY || status == StatusCode::SERVICE_UNAVAILABLE {
        Outcome::MeshError
    } else {
        Outcome::NotReady
    }
}

/// The per-revision probing loop.
pub struct Prober {
    /// Where healthy sets go.
    pub throttler: Arc<RevisionThrottler>,
    /// Latest endpoints from the catalog.
    pub endpoints: watch::Receiver<Endpoints>,
    /// Dests the proxy saw refuse a connection.
    pub ejected: mpsc::Receiver<String>,
    /// Timing.
    pub settings: ProbeSettings,
}

impl Prober {
    /// Runs until `shutdown` or the endpoints sender is dropped (revision removed).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut healthy: BTreeSet<String> = BTreeSet::new();
        let mut prev_ready: BTreeSet<String> = BTreeSet::new();
        let mut pushed: Option<(BTreeSet<String>, Option<String>, usize)> = None;
        let mut cluster_mode = false;
        let mut backoff = Duration::ZERO;
        let mut fast_until = Instant::now() + FAST_PROBE_WINDOW;
        loop {
            let eps = self.endpoints.borrow_and_update().clone();
            let spec = self.throttler.spec();
            let ready: BTreeSet<String> = eps.ready.iter().cloned().collect();
            let not_ready: BTreeSet<String> = eps.not_ready.iter().cloned().collect();
            let mut all = ready.clone();
            if spec.probe_not_ready {
                all.extend(not_ready.iter().cloned());
            }
            // Pods that went ready → not-ready are re-probed (TestCheckDestsReadyToNotReady).
            for d in prev_ready.difference(&ready) {
                healthy.remove(d);
            }
            prev_ready = ready.clone();
            healthy.retain(|d| all.contains(d));
            let keep = all.clone();
            let cip = eps.cluster_ip.clone();
            self.throttler
                .retain_upstreams(&|d| keep.contains(d) || cip.as_deref() == Some(d));

            let update = if cluster_mode {
                (BTreeSet::new(), eps.cluster_ip.clone(), ready.len())
            } else {
                let todo: Vec<String> = all.difference(&healthy).cloned().collect();
                let mut any_not_mesh = false;
                if !todo.is_empty() {
                    let results = self.probe_all(&todo, spec.protocol).await;
                    for (d, o) in todo.into_iter().zip(results) {
                        match o {
                            Outcome::Healthy => {
                                // Not-ready pods count only when the spec allows it.
                                healthy.insert(d);
                            }
                            Outcome::NotReady => any_not_mesh = true,
                            _ => {}
                        }
                    }
                }
                if healthy.is_empty()
                    && !all.is_empty()
                    && !any_not_mesh
                    && let Some(cip) = &eps.cluster_ip
                    && let Some(up) = self.throttler.upstream(cip)
                    && probe(&up, cip, spec.protocol).await == Outcome::Healthy
                {
                    tracing::info!(revision = %self.throttler.key, cluster_ip = %cip, "pods not addressable, routing through the cluster IP");
                    cluster_mode = true;
                    (BTreeSet::new(), Some(cip.clone()), ready.len())
                } else {
                    (healthy.clone(), None, healthy.len())
                }
            };
            if pushed.as_ref() != Some(&update) {
                let dests: Vec<String> = update.0.iter().cloned().collect();
                self.throttler
                    .update_dests(&dests, update.1.as_deref(), update.2);
                tracing::debug!(revision = %self.throttler.key, healthy = dests.len(), cluster_ip = ?update.1, "dests updated");
                pushed = Some(update);
            }

            let pending = !cluster_mode && all.len() > healthy.len();
            let sleep = tokio::time::sleep(backoff);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = self.endpoints.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    backoff = Duration::ZERO;
                    fast_until = Instant::now() + FAST_PROBE_WINDOW;
                    continue;
                }
                Some(dest) = self.ejected.recv() => {
                    healthy.remove(&dest);
                    // Do not re-probe at once: the pod just refused a connection.
                    backoff = Duration::from_millis(1);
                    fast_until = Instant::now() + FAST_PROBE_WINDOW;
                    pushed = None;
                    tokio::time::sleep(backoff).await;
                    continue;
                }
                _ = sleep, if pending => {}
            }
            let cap = if Instant::now() < fast_until {
                FAST_PROBE_CAP.min(self.settings.frequency)
            } else {
                self.settings.frequency
            };
            backoff = (backoff * 2).max(Duration::from_millis(1)).min(cap);
        }
    }

    async fn probe_all(&self, todo: &[String], protocol: Protocol) -> Vec<Outcome> {
        // One shared deadline for the whole round, as Knative does; probes that finish in time
        // count even if others are slow.
        let deadline = Instant::now() + self.settings.timeout;
        let futs = todo.iter().map(|d| {
            let up = self.throttler.upstream(d);
            async move {
                let Some(up) = up else {
                    return Outcome::Unreachable;
                };
                tokio::time::timeout_at(deadline, probe(&up, d, protocol))
                    .await
                    .unwrap_or(Outcome::Unreachable)
            }
        });
        futures_util::future::join_all(futs).await
    }
}
