//! One revision's loop: the embedded KPA decides, pods are started and stopped to match.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::pod::{self, Pod, PodTemplate, Recheck};
use super::routing::Routing;
use super::status::{self, StatusMap};
use crate::Throttlers;
use crate::catalog::{Catalog, Endpoints, RevisionKey};

/// How often pods are checked (exited, ready) between autoscaler ticks.
const POLL: Duration = Duration::from_millis(100);
/// How often the status line is logged.
const STATUS_LINE: Duration = Duration::from_secs(3);

/// A scale-from-zero in progress: when the poke came, and the pod started for it.
#[derive(Debug, Clone)]
struct ColdStart {
    poked: Instant,
    scheduled_after: Option<Duration>,
    pod: Option<String>,
}

/// Everything one revision's loop needs.
#[derive(Debug)]
pub struct RevisionLoop {
    /// What the pods run.
    pub template: PodTemplate,
    /// The revision's autoscaler settings.
    pub settings: autoscaler::RevisionSettings,
    /// Hosts routed here and reachability, from the router.
    pub routing: watch::Receiver<Routing>,
    /// Told once, when the revision is first ready (its initial scale of pods is ready), so
    /// `latestRevision` routes may move to it.
    pub ready: mpsc::UnboundedSender<RevisionKey>,
    /// Status for `GET /status`.
    pub status: StatusMap,
    /// Endpoints go here.
    pub catalog: Catalog,
    /// The activator's reports for this revision (poke, then one per second).
    pub stats: mpsc::Receiver<autoscaler::Stat>,
    /// The activator's throttlers (for held-request counts), once it runs.
    pub throttlers: Option<oneshot::Receiver<Throttlers>>,
    /// Time zero of the autoscaler clock.
    pub start: Instant,
}

impl RevisionLoop {
    /// Runs until `stop`, then stops every pod.
    pub async fn run(mut self, stop: CancellationToken) {
        let key = self.template.key.clone();
        let mut kpa =
            autoscaler::RevisionAutoscaler::new(self.settings.clone(), self.start.elapsed(), 0);
        let mut pods: Vec<Pod> = Vec::new();
        let mut seq = 0u64;
        let mut published = Endpoints::default();
        let mut last_tick: Option<Instant> = None;
        let mut last_line = Instant::now();
        let mut poll = tokio::time::interval(POLL);
        let mut throttlers: Option<Throttlers> = None;
        let mut cold: Option<ColdStart> = None;
        let mut last_cold = serde_json::Value::Null;
        let mut pending_report: Option<(ColdStart, String)> = None;
        // Pods that exit before ever being ready (a missing image, a bad command) are retried
        // with a doubling delay, as the kubelet backs off, instead of at every tick.
        let mut failures = 0u32;
        let mut retry_at: Option<Instant> = None;
        let recheck = Recheck::from_probe(self.template.plan.readiness_probe.as_ref());
        // Knative's revision is ready once its initial scale (at least min-scale) is ready.
        let ready_at = usize::try_from(
            self.settings
                .initial_scale
                .max(self.settings.min_scale)
                .max(1),
        )
        .unwrap_or(1);
        let mut announced = false;
        let mut routing = self.routing.borrow_and_update().clone();
        let mut settings = self.settings.clone();
        if settings.decider.reachable != routing.reachable {
            settings.decider.reachable = routing.reachable;
            kpa.update(settings.clone(), self.start.elapsed());
        }
        loop {
            let mut poked = false;
            tokio::select! {
                () = stop.cancelled() => break,
                _ = poll.tick() => {}
                s = self.stats.recv() => match s {
                    Some(s) => {
                        poked = kpa.record_activator(self.start.elapsed(), &s);
                        // The first report of demand while no pod exists starts a cold start.
                        if pods.is_empty() && cold.is_none() && s.average_concurrent_requests > 0.0 {
                            cold = Some(ColdStart {
                                poked: Instant::now(),
                                scheduled_after: None,
                                pod: None,
                            });
                        }
                    }
                    None => break,
                },
            }
            if self.routing.has_changed().unwrap_or(false) {
                routing = self.routing.borrow_and_update().clone();
                if settings.decider.reachable != routing.reachable {
                    settings.decider.reachable = routing.reachable;
                    tracing::info!(revision = %key, reachable = routing.reachable, "reachability changed");
                    kpa.update(settings.clone(), self.start.elapsed());
                    last_tick = None;
                }
            }
            if throttlers.is_none()
                && let Some(rx) = self.throttlers.as_mut()
                && let Ok(t) = rx.try_recv()
            {
                throttlers = Some(t);
            }
            // A pod whose app or queue-proxy exited is dropped; the next tick replaces it.
            // Its remains (the other process, a stopped container) are stopped and removed.
            let mut i = 0;
            while i < pods.len() {
                if pods[i].exited() {
                    let p = pods.remove(i);
                    if !p.ready && p.ready_after.get().is_none() {
                        failures = failures.saturating_add(1);
                        let backoff = Duration::from_secs(1 << failures.min(5).saturating_sub(1));
                        retry_at = Some(Instant::now() + backoff);
                        tracing::warn!(revision = %key, pod = %p.name, retry_in = ?backoff,
                            "pod failed before it was ready; retrying later");
                    }
                    tracing::warn!(revision = %key, pod = %p.name, "pod exited; replacing it");
                    tokio::spawn(pod::stop(p));
                    last_tick = None;
                } else {
                    i += 1;
                }
            }
            // Not-ready pods are probed every poll, ready ones every `recheck.period`; all in
            // parallel, so one pod that hangs a probe does not stall the others.
            let now = Instant::now();
            let due: Vec<usize> = (0..pods.len())
                .filter(|&i| pods[i].started() && (!pods[i].ready || now >= pods[i].next_probe))
                .collect();
            let results =
                futures_util::future::join_all(due.iter().map(|&i| pods[i].probe())).await;
            for (i, ok) in due.into_iter().zip(results) {
                let p = &mut pods[i];
                if p.ready {
                    p.next_probe = Instant::now() + recheck.period;
                    p.probe_failures = if ok { 0 } else { p.probe_failures + 1 };
                    if p.probe_failures >= recheck.failure_threshold {
                        p.ready = false;
                        tracing::warn!(revision = %key, pod = %p.name, failures = p.probe_failures,
                            "pod not ready; removed from the endpoints");
                    }
                } else if ok {
                    p.ready = true;
                    failures = 0;
                    retry_at = None;
                    p.probe_failures = 0;
                    p.next_probe = Instant::now() + recheck.period;
                    let start_ms = p.listening_after.get().map(|d| ms(*d));
                    tracing::info!(revision = %key, pod = %p.name, pod_start_ms = ?start_ms, "pod ready");
                    if let Some(c) = cold.take_if(|c| c.pod.as_deref() == Some(p.name.as_str())) {
                        pending_report = Some((c, p.name.clone()));
                    }
                }
            }
            if !announced && pods.iter().filter(|p| p.ready).count() >= ready_at {
                announced = true;
                let _ = self.ready.send(key.clone());
            }
            // The cold-start record waits for both watchers (they finish within ms of ready).
            if let Some((c, name)) = pending_report.take() {
                match pods.iter().find(|p| p.name == name) {
                    Some(p)
                        if p.listening_after.get().is_some()
                            && p.qp_listening_after.get().is_some()
                            && p.ready_after.get().is_some() =>
                    {
                        last_cold = cold_start_record(&key, p, &c);
                    }
                    Some(p) if p.spawned.elapsed() < Duration::from_secs(70) => {
                        pending_report = Some((c, name));
                    }
                    _ => {}
                }
            }
            let due = last_tick.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if !(poked || due) {
                self.publish_endpoints(&pods, &mut published);
                continue;
            }
            last_tick = Some(Instant::now());
            let ready = i32::try_from(pods.iter().filter(|p| p.ready).count()).unwrap_or(0);
            let mut scraped = Vec::new();
            for p in pods.iter().filter(|p| p.ready) {
                if let Some(s) = pod::scrape(p.metrics_port).await {
                    scraped.push(s);
                }
            }
            let now = self.start.elapsed();
            kpa.record_scrape(now, &scraped, ready);
            let snap = kpa.tick(now, ready, true);
            let want = usize::try_from(snap.desired_pods).unwrap_or(0);
            let backing_off = retry_at.is_some_and(|t| Instant::now() < t);
            while !backing_off && pods.len() < want {
                seq += 1;
                match pod::start(&self.template, seq) {
                    Ok(p) => {
                        if let Some(c) = cold.as_mut().filter(|c| c.pod.is_none()) {
                            c.scheduled_after = Some(p.spawned.duration_since(c.poked));
                            c.pod = Some(p.name.clone());
                        }
                        pods.push(p);
                    }
                    Err(e) => {
                        tracing::error!(revision = %key, error = %e, "cannot start pod");
                        break;
                    }
                }
            }
            while pods.len() > want {
                // Stop the newest pod, not-ready ones first; it leaves the endpoints before
                // it gets SIGTERM, so no new request is sent to a draining pod.
                let idx = pods
                    .iter()
                    .rposition(|p| !p.ready)
                    .unwrap_or(pods.len() - 1);
                let p = pods.remove(idx);
                self.publish_endpoints(&pods, &mut published);
                tokio::spawn(pod::stop(p));
            }
            let held = throttlers
                .as_ref()
                .and_then(|t| t.get(&key).map(|t| t.waiting()))
                .unwrap_or(0);
            let status_json = serde_json::json!({
                "routes": routing.routes.iter().map(|(h, p)| serde_json::json!({"host": h, "percent": p})).collect::<Vec<_>>(),
                "desired_pods": snap.desired_pods,
                "ready_pods": ready,
                "held_requests": held,
                "pods": pods.iter().map(|p| serde_json::json!({
                    "name": p.name,
                    "address": p.addr(),
                    "ready": p.ready,
                    "app_pid": p.app.pid(),
                    "container": p.app.container(),
                    "queue_proxy_pid": p.qp.id(),
                })).collect::<Vec<_>>(),
                "stable_concurrency": snap.stable_concurrency,
                "panic_concurrency": snap.panic_concurrency,
                "panic": snap.panic,
                "excess_burst_capacity": snap.excess_burst_capacity,
                "last_cold_start": last_cold,
            });
            super::console::set_row(
                &key.to_string(),
                super::console::row(&key.to_string(), &status_json),
            );
            status::publish(&self.status, key.to_string(), status_json);
            // On a terminal the live view shows this; piped, a line every few seconds.
            if !super::console::live() && last_line.elapsed() >= STATUS_LINE {
                last_line = Instant::now();
                tracing::info!(
                    revision = %key,
                    desired = snap.desired_pods,
                    ready,
                    pods = pods.len(),
                    stable = format!("{:.2}", snap.stable_concurrency),
                    panic_concurrency = format!("{:.2}", snap.panic_concurrency),
                    panic = snap.panic,
                    held,
                    ebc = snap.excess_burst_capacity,
                    "status"
                );
            }
            self.publish_endpoints(&pods, &mut published);
        }
        let stopping: Vec<_> = pods.into_iter().map(pod::stop).collect();
        futures_util::future::join_all(stopping).await;
    }

    fn publish_endpoints(&self, pods: &[Pod], published: &mut Endpoints) {
        let (ready, not_ready): (Vec<&Pod>, Vec<&Pod>) =
            pods.iter().filter(|p| p.started()).partition(|p| p.ready);
        let ep = Endpoints {
            ready: ready.iter().map(|p| p.addr()).collect(),
            not_ready: not_ready.iter().map(|p| p.addr()).collect(),
            cluster_ip: None,
        };
        if ep != *published {
            self.catalog.set_endpoints(&self.template.key, ep.clone());
            *published = ep;
        }
    }
}

/// Logs a finished cold start and returns its `last_cold_start` status object. Pod start is
/// both processes' start (in Knative, both containers of the pod start in parallel); the rest
/// of the wait is ours.
fn cold_start_record(
    key: &crate::catalog::RevisionKey,
    p: &Pod,
    c: &ColdStart,
) -> serde_json::Value {
    let app = p.listening_after.get().copied().unwrap_or_default();
    let qp = p.qp_listening_after.get().copied().unwrap_or_default();
    let ready = p.ready_after.get().copied().unwrap_or_default();
    let started = app.max(qp);
    let scheduling_ms = c.scheduled_after.map(ms);
    let readiness_ms = ms(ready.saturating_sub(started));
    // For a container: spawn → the engine reporting it started, and the rest of the app's start.
    let engine_ms = p.engine_after.get().map(|d| ms(*d));
    let app_after_engine_ms = p.engine_after.get().map(|e| ms(app.saturating_sub(*e)));
    tracing::info!(
        revision = %key,
        pod = %p.name,
        scheduling_ms = ?scheduling_ms,
        engine_start_ms = ?engine_ms,
        app_after_engine_ms = ?app_after_engine_ms,
        pod_start_ms = ms(started),
        app_listening_ms = ms(app),
        queue_proxy_listening_ms = ms(qp),
        readiness_ms,
        "cold start: demand → spawned (ours), spawned → app and queue-proxy listening (pod start), → queue-proxy ready (ours)"
    );
    serde_json::json!({
        "pod": p.name,
        "scheduling_ms": scheduling_ms,
        "pod_start_ms": ms(started),
        "app_listening_ms": ms(app),
        "engine_start_ms": engine_ms,
        "app_after_engine_ms": app_after_engine_ms,
        "queue_proxy_listening_ms": ms(qp),
        "readiness_ms": readiness_ms,
    })
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}
