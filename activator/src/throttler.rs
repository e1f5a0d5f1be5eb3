//! The per-revision throttler: holds requests while a revision has no capacity and admits them
//! up to `containerConcurrency × pods assigned to this activator` (mirrors
//! `pkg/activator/net/throttler.go`).
//!
//! Each revision has a revision breaker ([`shared::breaker::Breaker`], capacity recomputed on
//! every dest or activator-index change) and one tracker per healthy pod (its own breaker of
//! capacity CC when CC > 0). A request takes a revision permit (waiting FIFO while capacity is
//! 0), then asks the LB policy for a pod with free capacity; if the pick fails (the assigned set
//! shrank meanwhile) it gives the permit back and waits for a change, like Knative's re-enqueue.
//!
//! Beyond Knative (its OOM #13583): the wait queue is bounded per revision by count and globally
//! by an estimate of the bytes each held request pins; beyond either bound the request fails at
//! once with [`QueueFull`] (503 `pending request queue full`). A held request whose client goes
//! away is dropped by hyper, and dropping the wait future frees its slot at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use shared::breaker::{Breaker, BreakerParams, Permit};
use shared::http::proxy::{ClientOptions, Upstream};
use tokio::sync::{Notify, mpsc};

use crate::catalog::{RevisionKey, RevisionSpec};
use crate::lb::{self, Policy};
use crate::proxy::ReclaimBody;

/// Knative's cap on capacity (`math.MaxInt32`).
pub const MAX_CAPACITY: usize = i32::MAX as usize;

/// The wait queue of a revision (by count) or of the activator (by bytes) is full.
#[derive(Debug, thiserror::Error)]
#[error("pending request queue full")]
pub struct QueueFull(());

/// An upstream for one pod, pooled per dest.
pub type PodUpstream = Upstream<ReclaimBody>;

// === capacity math (pure; Knative's table cases in the tests) ===

/// Knative's `pickIndices`: the slice `[begin, end)` of sorted pods for activator `index` of
/// `activators`, and how many remainder pods exist. `pods` and `activators` must be > 0.
pub fn pick_indices(pods: usize, index: usize, activators: usize) -> (usize, usize, usize) {
    if activators > pods {
        let begin = index % pods;
        return (begin, begin + 1, 0);
    }
    let size = pods / activators;
    let begin = index * size;
    (begin, begin + size, pods % activators)
}

/// Knative's `assignSlice`: the pods (sorted by dest) this activator serves. All of them when the
/// index is unknown (−1), with one activator, or with at most one pod.
pub fn assign_slice<T: Clone>(sorted: &[T], index: i32, activators: usize) -> Vec<T> {
    let Ok(index) = usize::try_from(index) else {
        return sorted.to_vec();
    };
    if activators <= 1 || sorted.len() <= 1 {
        return sorted.to_vec();
    }
    let (begin, end, remnants) = pick_indices(sorted.len(), index, activators);
    let mut out: Vec<T> = sorted
        .get(begin..end)
        .map(<[T]>::to_vec)
        .unwrap_or_default();
    if remnants > 0 {
        let tail = &sorted[sorted.len() - remnants..];
        if let Some(t) = tail.get(index) {
            out.push(t.clone());
        }
    }
    out
}

/// Knative's `calculateCapacity`: revision-breaker capacity from CC, the number of assigned pod
/// trackers, the backend count (healthy pods, or k8s-ready pods behind a cluster IP) and the
/// activator count.
pub fn calculate_capacity(cc: u32, trackers: usize, backends: usize, activators: usize) -> usize {
    let cc = cc as usize;
    let mut target = if trackers > 0 {
        cc.saturating_mul(trackers)
    } else {
        let t = cc.saturating_mul(backends);
        if t > 0 {
            (t / activators.max(1)).max(1)
        } else {
            0
        }
    };
    if backends > 0 && (cc == 0 || target > MAX_CAPACITY) {
        target = MAX_CAPACITY;
    }
    target
}

/// Knative's `inferIndex`: position of `self_ip` among `ips` sorted as strings, or −1.
pub fn infer_index(ips: &[String], self_ip: &str) -> i32 {
    let mut sorted: Vec<&str> = ips.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted
        .iter()
        .position(|ip| *ip == self_ip)
        .and_then(|p| i32::try_from(p).ok())
        .unwrap_or(-1)
}

// === trackers ===

/// One healthy pod (or the cluster IP) as seen by this activator.
#[derive(Debug)]
pub struct PodTracker {
    /// `ip:port`.
    pub dest: String,
    /// Per-pod breaker of capacity CC; `None` when CC = 0 (unlimited).
    breaker: Option<Arc<Breaker>>,
    /// Requests this activator has in flight to the pod (random-choice-2 weight).
    in_flight: AtomicUsize,
    /// Pooled connections to the pod (shared with the prober, so probe connections get reused).
    pub upstream: PodUpstream,
    /// `dest` parsed once, for the upstream request's URI (`None` if it is not an authority).
    pub authority: Option<http::uri::Authority>,
}

impl PodTracker {
    fn new(dest: String, cc: u32, upstream: PodUpstream) -> Arc<Self> {
        let breaker = (cc > 0).then(|| {
            Breaker::new(BreakerParams {
                queue_depth: 0,
                max_concurrency: cc as usize,
                initial_capacity: cc as usize,
            })
        });
        Arc::new(Self {
            authority: http::uri::Authority::try_from(dest.as_str()).ok(),
            dest,
            breaker,
            in_flight: AtomicUsize::new(0),
            upstream,
        })
    }

    /// Requests in flight to this pod from this activator.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn try_take(self: &Arc<Self>) -> Option<PodLease> {
        let permit = match &self.breaker {
            Some(b) => Some(b.try_acquire()?),
            None => None,
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(PodLease {
            tracker: Arc::clone(self),
            permit,
        })
    }
}

#[derive(Debug)]
struct PodLease {
    tracker: Arc<PodTracker>,
    permit: Option<Permit>,
}

impl Drop for PodLease {
    fn drop(&mut self) {
        self.tracker.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Permission to send one request to `dest`; hold it until the response body ends.
#[derive(Debug)]
pub struct Lease {
    pod: PodLease,
    revision: Option<Permit>,
    /// Whether the request had to wait for capacity (it was "held").
    pub waited: bool,
    /// Whether the dest is the private service's cluster IP.
    pub cluster_ip: bool,
    throttler: Arc<RevisionThrottler>,
}

impl Lease {
    /// The tracker of the chosen pod.
    pub fn tracker(&self) -> &Arc<PodTracker> {
        &self.pod.tracker
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.throttler.active.dec();
        // Free both slots before waking anyone (fields drop only after this function), so a
        // woken request that re-enqueued after a failed pick finds them free.
        self.pod.permit.take();
        self.revision.take();
        self.throttler.wake_requeued();
    }
}

// === limits shared by all revisions ===

/// Bounds of the wait queue (beyond Knative).
#[derive(Debug)]
pub struct QueueLimits {
    /// Most requests held per revision.
    pub max_requests_per_revision: usize,
    /// Most bytes pinned by held requests, all revisions together.
    pub max_bytes: usize,
    bytes: AtomicUsize,
}

impl QueueLimits {
    /// New limits.
    pub fn new(max_requests_per_revision: usize, max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            max_requests_per_revision,
            max_bytes,
            bytes: AtomicUsize::new(0),
        })
    }

    /// Bytes currently pinned by held requests.
    pub fn held_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

struct WaitSlot {
    throttler: Arc<RevisionThrottler>,
    bytes: usize,
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        self.throttler.waiting.fetch_sub(1, Ordering::AcqRel);
        self.throttler
            .limits
            .bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
        self.throttler.queued.dec();
    }
}

/// Gauges of one revision (`kn.revision.request.queued` / `.active`).
#[derive(Clone, Debug, Default)]
pub struct RevisionGauges {
    /// Requests waiting for capacity.
    pub queued: Gauge,
    /// Requests being proxied.
    pub active: Gauge,
}

// === impl RevisionThrottler ===

#[derive(Debug, Default)]
struct State {
    /// Healthy pods, sorted by dest.
    trackers: Vec<Arc<PodTracker>>,
    /// This activator's share of `trackers`.
    assigned: Vec<Arc<PodTracker>>,
    cluster_ip: Option<Arc<PodTracker>>,
    index: i32,
    activators: usize,
    backends: usize,
}

/// The throttler of one revision.
#[derive(Debug)]
pub struct RevisionThrottler {
    /// The revision.
    pub key: RevisionKey,
    spec: RwLock<Arc<RevisionSpec>>,
    cc: u32,
    policy: Policy,
    breaker: Arc<Breaker>,
    state: RwLock<State>,
    rr_cursor: Mutex<usize>,
    waiting: AtomicUsize,
    /// Wakes requests waiting after a failed pick ([`Self::requeue`]).
    changed: Notify,
    /// Counts lease ends and dest changes (see `requeue`).
    released: AtomicU64,
    /// Requests waiting after a failed pick.
    requeued: AtomicUsize,
    limits: Arc<QueueLimits>,
    client_opts: ClientOptions,
    upstreams: Mutex<HashMap<String, PodUpstream>>,
    eject_tx: Mutex<Option<mpsc::Sender<String>>>,
    queued: Gauge,
    active: Gauge,
}

impl RevisionThrottler {
    /// A throttler with no capacity; CC is captured now (revisions are immutable).
    pub fn new(
        key: RevisionKey,
        spec: RevisionSpec,
        limits: Arc<QueueLimits>,
        client_opts: ClientOptions,
        gauges: RevisionGauges,
    ) -> Arc<Self> {
        let cc = spec.container_concurrency;
        Arc::new(Self {
            key,
            policy: Policy::for_container_concurrency(cc),
            cc,
            spec: RwLock::new(Arc::new(spec)),
            // Knative: Q = 10000, M = MaxInt32, C = 0. Our own bound is applied before the
            // breaker (count and bytes), so the breaker needs no queue of its own.
            breaker: Breaker::new(BreakerParams {
                queue_depth: 0,
                max_concurrency: MAX_CAPACITY,
                initial_capacity: 0,
            }),
            state: RwLock::new(State {
                index: -1,
                ..State::default()
            }),
            rr_cursor: Mutex::new(0),
            waiting: AtomicUsize::new(0),
            changed: Notify::new(),
            released: AtomicU64::new(0),
            requeued: AtomicUsize::new(0),
            limits,
            client_opts,
            upstreams: Mutex::new(HashMap::new()),
            eject_tx: Mutex::new(None),
            queued: gauges.queued,
            active: gauges.active,
        })
    }

    /// The revision spec (timeouts may be updated; CC is fixed at creation).
    pub fn spec(&self) -> Arc<RevisionSpec> {
        self.spec.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the spec (CC changes are ignored, as in Knative).
    pub fn set_spec(&self, spec: RevisionSpec) {
        *self.spec.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(spec);
    }

    /// Current revision-breaker capacity.
    pub fn capacity(&self) -> usize {
        self.breaker.capacity()
    }

    /// Requests waiting for capacity.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Whether a request arriving now would probably wait (others are waiting, or the revision
    /// is at capacity). A hint only: the answer may change before the request asks.
    pub fn likely_to_wait(&self) -> bool {
        self.waiting() > 0 || self.breaker.in_flight() >= self.breaker.capacity()
    }

    /// The dests this activator currently routes to (its assigned share, or the cluster IP).
    pub fn assigned_dests(&self) -> Vec<String> {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        match &st.cluster_ip {
            Some(c) => vec![c.dest.clone()],
            None => st.assigned.iter().map(|t| t.dest.clone()).collect(),
        }
    }

    /// This activator's (index, count) for the revision.
    pub fn activator_index(&self) -> (i32, usize) {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        (st.index, st.activators)
    }

    /// The pooled upstream for `dest`, created on first use.
    pub fn upstream(&self, dest: &str) -> Option<PodUpstream> {
        let addr: SocketAddr = dest.parse().ok()?;
        let mut map = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        Some(
            map.entry(dest.to_owned())
                .or_insert_with(|| Upstream::new(addr, &self.client_opts))
                .clone(),
        )
    }

    /// Drops pooled upstreams for dests no longer listed.
    pub fn retain_upstreams(&self, keep: &dyn Fn(&str) -> bool) {
        let mut map = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|d, _| keep(d));
    }

    pub(crate) fn set_eject_channel(&self, tx: mpsc::Sender<String>) {
        *self.eject_tx.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    /// Sets the healthy dests (pods, or the cluster IP with the k8s-ready count) and recomputes
    /// capacity. Existing trackers are kept, so in-flight counts survive updates.
    pub fn update_dests(&self, healthy: &[String], cluster_ip: Option<&str>, ready_count: usize) {
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        let prev_cluster_ip = st.cluster_ip.take();
        let old: HashMap<String, Arc<PodTracker>> = st
            .trackers
            .drain(..)
            .chain(prev_cluster_ip)
            .map(|t| (t.dest.clone(), t))
            .collect();
        let make = |dest: &str| -> Option<Arc<PodTracker>> {
            if let Some(t) = old.get(dest) {
                return Some(Arc::clone(t));
            }
            let up = self.upstream(dest)?;
            Some(PodTracker::new(dest.to_owned(), self.cc, up))
        };
        let mut trackers: Vec<_> = healthy.iter().filter_map(|d| make(d)).collect();
        trackers.sort_by(|a, b| a.dest.cmp(&b.dest));
        // The cluster IP has no per-pod limit: kube-proxy spreads over the ready pods and the
        // revision breaker already caps the total (Knative: no reservation for it).
        st.cluster_ip = cluster_ip.and_then(|d| match old.get(d) {
            Some(t) if t.breaker.is_none() => Some(Arc::clone(t)),
            _ => Some(PodTracker::new(d.to_owned(), 0, self.upstream(d)?)),
        });
        st.trackers = trackers;
        st.backends = if st.cluster_ip.is_some() {
            ready_count
        } else {
            st.trackers.len()
        };
        self.recompute(&mut st);
    }

    /// Applies the activator IPs assigned to the revision. When `self_ip` is absent the previous
    /// index and count are kept (Knative quirk §2.4).
    pub fn update_activators(&self, ips: &[String], self_ip: &str) {
        let index = infer_index(ips, self_ip);
        if index < 0 {
            return;
        }
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        if st.index != index || st.activators != ips.len() {
            st.index = index;
            st.activators = ips.len();
            self.recompute(&mut st);
        }
    }

    /// Passive outlier ejection: `dest` refused a connection. It leaves the routing set at once
    /// and the prober re-probes it.
    pub fn eject(&self, dest: &str) {
        {
            let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
            let before = st.trackers.len();
            st.trackers.retain(|t| t.dest != dest);
            if st.trackers.len() != before {
                st.backends = st.trackers.len();
                self.recompute(&mut st);
            }
        }
        let tx = self
            .eject_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(tx) = tx {
            let _ = tx.try_send(dest.to_owned());
        }
    }

    fn recompute(&self, st: &mut State) {
        let n = if st.cluster_ip.is_some() {
            0
        } else {
            st.assigned = if self.cc > 0 {
                assign_slice(&st.trackers, st.index, st.activators)
            } else {
                st.trackers.clone()
            };
            st.assigned.len()
        };
        let cap = calculate_capacity(self.cc, n, st.backends, st.activators);
        // Trackers are in place before capacity grows, so an admitted request finds a target.
        self.breaker.update_capacity(cap);
        self.released.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn pick(&self) -> Option<(PodLease, bool)> {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = &st.cluster_ip {
            return c.try_take().map(|l| (l, true));
        }
        let targets = &st.assigned;
        let lease = match self.policy {
            Policy::RandomChoice2 => {
                let i = lb::random_choice_2(
                    targets.len(),
                    |i| targets[i].in_flight(),
                    &mut rand::rng(),
                )?;
                targets[i].try_take()
            }
            Policy::FirstAvailable => lb::first_available(targets, |t| t.try_take()).map(|p| p.1),
            Policy::RoundRobin => {
                let mut cur = self.rr_cursor.lock().unwrap_or_else(|p| p.into_inner());
                lb::round_robin(targets, &mut cur, |t| t.try_take()).map(|p| p.1)
            }
        };
        lease.map(|l| (l, false))
    }

    /// Waits for capacity and a pod (Knative's `Try`). `bytes` is what the held request pins in
    /// memory; it counts against the global byte bound while waiting. Cancel by dropping.
    ///
    /// # Errors
    /// [`QueueFull`] when a bound is reached.
    pub async fn acquire(self: &Arc<Self>, bytes: usize) -> Result<Lease, QueueFull> {
        let _slot = self.enter_queue(bytes)?;
        let mut waited = false;
        loop {
            let reservation = self.breaker.reserve().map_err(|_| QueueFull(()))?;
            let permit = match reservation.try_acquire() {
                Ok(p) => p,
                Err(r) => {
                    waited = true;
                    r.acquire().await
                }
            };
            let seen = self.released.load(Ordering::SeqCst);
            if let Some((pod, cluster_ip)) = self.pick() {
                self.active.inc();
                // `_slot` is dropped on return: the request leaves the queue as it gets the lease.
                return Ok(Lease {
                    pod,
                    revision: Some(permit),
                    waited,
                    cluster_ip,
                    throttler: Arc::clone(self),
                });
            }
            // Re-enqueue: capacity said yes but every assigned pod is full (a race between
            // revision and pod capacity). Give the permit back and wait for a release or a dest
            // change. Boxed: rare, and its waiter and timer stay out of every held request's state.
            drop(permit);
            waited = true;
            Box::pin(self.requeue(seen)).await;
        }
    }

    /// Waits until a slot was released or the dests changed since `seen` (a value of
    /// `released` read before the failed pick); the timeout only guards against a missed
    /// wake-up.
    async fn requeue(&self, seen: u64) {
        let changed = self.changed.notified();
        tokio::pin!(changed);
        self.requeued.fetch_add(1, Ordering::SeqCst);
        changed.as_mut().enable();
        // A release after the failed pick either bumped `released` before this read, or comes
        // after it and then sees `requeued` > 0 and notifies (both SeqCst).
        if self.released.load(Ordering::SeqCst) == seen {
            let _ = tokio::time::timeout(Duration::from_millis(50), changed).await;
        }
        self.requeued.fetch_sub(1, Ordering::SeqCst);
    }

    /// A lease ended or the dests changed: wakes the requests waiting after a failed pick. The
    /// mutex inside `notify_waiters` is taken only when there are such requests.
    fn wake_requeued(&self) {
        self.released.fetch_add(1, Ordering::SeqCst);
        if self.requeued.load(Ordering::SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }

    fn enter_queue(self: &Arc<Self>, bytes: usize) -> Result<WaitSlot, QueueFull> {
        let n = self.waiting.fetch_add(1, Ordering::AcqRel);
        let b = self.limits.bytes.fetch_add(bytes, Ordering::AcqRel);
        let slot = WaitSlot {
            throttler: Arc::clone(self),
            bytes,
        };
        self.queued.inc();
        if n >= self.limits.max_requests_per_revision || b + bytes > self.limits.max_bytes {
            return Err(QueueFull(()));
        }
        Ok(slot)
    }
}

#[cfg(test)]
mod tests;
