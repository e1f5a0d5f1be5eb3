//! The concurrency reporter (mirrors `pkg/activator/handler/concurrency_reporter.go`) and the
//! sinks its stats go to.
//!
//! On the first request of a revision (no entry) it sends a **poke** `{concurrency 1, count 1}`
//! at once, so the autoscaler scales from zero without waiting for the next tick. Every second
//! it reports the time-weighted average concurrency and the arrivals of the window, with the
//! poke subtracted from the first report. Entries idle for a whole window (average 0, nothing in
//! flight) are deleted after their report, so the next request pokes again. The reporter wraps
//! the throttler and the timeout, so held requests count as concurrency.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use shared::stats::{Stat, WireStatMessage, WireStatMessages};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::catalog::RevisionKey;

/// Report period.
pub const REPORT_PERIOD: Duration = Duration::from_secs(1);

// === sinks ===

/// Where stat batches go. Cheap to clone.
#[derive(Clone, Debug)]
pub enum StatsSink {
    /// Dropped (file mode without an autoscaler). Always healthy.
    Discard,
    /// An in-process channel (local mode feeds the embedded KPA). Always healthy; a full
    /// channel drops the batch, like a failed websocket send in Knative.
    Channel(mpsc::Sender<WireStatMessages>),
    /// Knative's autoscaler websocket. Healthy iff connected.
    Websocket(WebsocketSink),
}

impl StatsSink {
    /// A channel sink and its receiver (bounded by `capacity` batches).
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<WireStatMessages>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self::Channel(tx), rx)
    }

    /// Sends one batch without waiting; drops it when the sink cannot take it now.
    pub fn send(&self, batch: WireStatMessages) {
        match self {
            Self::Discard => {}
            Self::Channel(tx) => {
                if tx.try_send(batch).is_err() {
                    tracing::warn!("stats channel full or closed; batch dropped");
                }
            }
            Self::Websocket(ws) => ws.send(batch),
        }
    }

    /// `None` when healthy, otherwise the reason (Knative's health check text).
    pub fn unhealthy_reason(&self) -> Option<&'static str> {
        match self {
            Self::Websocket(ws) if !ws.is_connected() => {
                Some("connection has not yet been established")
            }
            _ => None,
        }
    }
}

/// The durable websocket to Knative's autoscaler (`ws://autoscaler.<ns>.svc.<domain>:8080`):
/// binary `WireStatMessages` frames, reconnect with backoff (100 ms × 1.3, jittered, capped),
/// a ping every 10/3 s and a 10 s read deadline extended by any frame.
#[derive(Clone, Debug)]
pub struct WebsocketSink {
    tx: mpsc::Sender<WireStatMessages>,
    connected: Arc<AtomicBool>,
    metrics: ConnMetrics,
}

/// Connection gauges (`kn.activator.stats.conn.reachable`, `.errors`).
#[derive(Clone, Debug, Default)]
pub struct ConnMetrics {
    /// 1 while connected.
    pub reachable: Gauge,
    /// Disconnects.
    pub errors: Counter,
}

impl WebsocketSink {
    /// Starts the connection task; it runs until `shutdown`.
    pub fn spawn(url: String, shutdown: CancellationToken) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let connected = Arc::new(AtomicBool::new(false));
        let metrics = ConnMetrics::default();
        tokio::spawn(ws_loop(
            url,
            rx,
            Arc::clone(&connected),
            metrics.clone(),
            shutdown,
        ));
        Self {
            tx,
            connected,
            metrics,
        }
    }

    /// The connection gauges (registered by [`crate::run`]).
    pub fn metrics(&self) -> &ConnMetrics {
        &self.metrics
    }

    /// Whether a connection is established now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    fn send(&self, batch: WireStatMessages) {
        // Like Knative: no buffering while disconnected.
        if self.is_connected() && self.tx.try_send(batch).is_err() {
            tracing::warn!("autoscaler send queue full; batch dropped");
        }
    }
}

async fn ws_loop(
    url: String,
    mut rx: mpsc::Receiver<WireStatMessages>,
    connected: Arc<AtomicBool>,
    metrics: ConnMetrics,
    shutdown: CancellationToken,
) {
    use futures_util::{SinkExt, StreamExt};
    use prost::Message as _;
    use tokio_tungstenite::tungstenite::Message;

    const INITIAL: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    const PING: Duration = Duration::from_millis(3333);
    const READ_DEADLINE: Duration = Duration::from_secs(10);
    let mut backoff = INITIAL;
    // The first failure of each outage is a warning (the autoscaler never hears from us, so
    // scale-from-zero stalls); the retries that follow are debug, to keep logs quiet.
    let mut outage_logged = false;
    loop {
        let connect = tokio::time::timeout(
            Duration::from_secs(3),
            tokio_tungstenite::connect_async(url.as_str()),
        );
        let ws = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = connect => r,
        };
        let ws = match ws {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(error)) => {
                if outage_logged {
                    tracing::debug!(error = %error, url = %url, "autoscaler connect failed");
                } else {
                    tracing::warn!(error = %error, url = %url, "autoscaler connect failed; stats are not delivered until it succeeds (retrying)");
                    outage_logged = true;
                }
                let jitter = 1.0 + rand::random::<f64>() * 0.5;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
                }
                backoff = backoff.mul_f64(1.3).min(MAX_BACKOFF);
                continue;
            }
            Err(_) => {
                if outage_logged {
                    tracing::debug!(url = %url, "autoscaler connect timed out");
                } else {
                    tracing::warn!(url = %url, "autoscaler connect timed out; stats are not delivered until it succeeds (retrying)");
                    outage_logged = true;
                }
                continue;
            }
        };
        tracing::info!(url = %url, "connected to the autoscaler");
        backoff = INITIAL;
        outage_logged = false;
        // Stale batches from before the connection are not sent (they were dropped in Knative).
        while rx.try_recv().is_ok() {}
        connected.store(true, Ordering::Release);
        metrics.reachable.set(1);
        let (mut tx_ws, mut rx_ws) = ws.split();
        let mut ping = tokio::time::interval(PING);
        ping.reset();
        let mut deadline = Instant::now() + READ_DEADLINE;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = tx_ws.send(Message::Close(None)).await;
                    connected.store(false, Ordering::Release);
                    metrics.reachable.set(0);
                    return;
                }
                batch = rx.recv() => {
                    let Some(batch) = batch else { return };
                    if let Err(error) = tx_ws.send(Message::Binary(batch.encode_to_vec().into())).await {
                        tracing::warn!(error = %error, "sending stats failed");
                        break;
                    }
                }
                _ = ping.tick() => {
                    if tx_ws.send(Message::Ping(Default::default())).await.is_err() {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("autoscaler connection: no pong within the read deadline");
                    break;
                }
                frame = rx_ws.next() => match frame {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => deadline = Instant::now() + READ_DEADLINE,
                }
            }
        }
        connected.store(false, Ordering::Release);
        metrics.reachable.set(0);
        metrics.errors.inc();
        tracing::warn!(url = %url, "autoscaler connection lost; reconnecting");
    }
}

// === reporter ===

#[derive(Debug)]
struct Entry {
    /// The map's key again, shared with every [`InFlight`] of the revision (no per-request
    /// copy of the key's strings).
    key: Arc<RevisionKey>,
    concurrency: f64,
    weighted: f64,
    elapsed: f64,
    count: f64,
    last: Instant,
    first_request: f64,
    refs: i64,
}

impl Entry {
    fn new(key: Arc<RevisionKey>, now: Instant) -> Self {
        Self {
            key,
            concurrency: 0.0,
            weighted: 0.0,
            elapsed: 0.0,
            count: 0.0,
            last: now,
            first_request: 1.0,
            refs: 0,
        }
    }

    fn arrive(&mut self, now: Instant) {
        self.advance(now);
        self.concurrency += 1.0;
        self.count += 1.0;
        self.refs += 1;
    }

    fn advance(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.weighted += self.concurrency * dt;
        self.elapsed += dt;
        self.last = now;
    }
}

/// Callback receiving each revision's adjusted concurrency.
type OnReport = Box<dyn Fn(&RevisionKey, f64) + Send + Sync>;

/// Per-revision concurrency accounting and the 1 s reporting loop.
pub struct Reporter {
    pod_name: String,
    entries: Mutex<HashMap<RevisionKey, Entry>>,
    sink: StatsSink,
    on_report: OnReport,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("pod_name", &self.pod_name)
            .field("sink", &self.sink)
            .finish_non_exhaustive()
    }
}

/// Marks a request in flight; dropping it records the request's end.
#[derive(Debug)]
pub struct InFlight {
    reporter: Arc<Reporter>,
    key: Arc<RevisionKey>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.reporter.request_out(&self.key, Instant::now());
    }
}

fn stat_msg(key: &RevisionKey, pod: &str, avg: f64, count: f64) -> WireStatMessage {
    WireStatMessage {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        stat: Some(Stat {
            pod_name: pod.to_owned(),
            average_concurrent_requests: avg,
            request_count: count,
            ..Stat::default()
        }),
    }
}

impl Reporter {
    /// A reporter sending as `pod_name` (env `POD_NAME`). `on_report` receives each revision's
    /// adjusted concurrency (the `kn.revision.request.concurrency` gauge).
    pub fn new(
        pod_name: String,
        sink: StatsSink,
        on_report: impl Fn(&RevisionKey, f64) + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            pod_name,
            entries: Mutex::new(HashMap::new()),
            sink,
            on_report: Box::new(on_report),
        })
    }

    /// The sink (health check).
    pub fn sink(&self) -> &StatsSink {
        &self.sink
    }

    /// Records a request arriving for `key`; hold the guard until the response ends.
    pub fn request_in(self: &Arc<Self>, key: &RevisionKey) -> InFlight {
        InFlight {
            reporter: Arc::clone(self),
            key: self.record_in(key, Instant::now()),
        }
    }

    fn record_in(&self, key: &RevisionKey, now: Instant) -> Arc<RevisionKey> {
        let (poke, shared) = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            // Looked up by reference: the key is copied only for a new entry.
            let existing = entries.get_mut(key).map(|e| {
                e.arrive(now);
                Arc::clone(&e.key)
            });
            match existing {
                Some(shared) => (false, shared),
                None => {
                    let shared = Arc::new(key.clone());
                    let mut e = Entry::new(Arc::clone(&shared), now);
                    e.arrive(now);
                    entries.insert(key.clone(), e);
                    (true, shared)
                }
            }
        };
        if poke {
            self.sink.send(WireStatMessages {
                messages: vec![stat_msg(key, &self.pod_name, 1.0, 1.0)],
            });
        }
        shared
    }

    fn request_out(&self, key: &RevisionKey, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.get_mut(key) {
            e.advance(now);
            e.concurrency -= 1.0;
            e.refs -= 1;
        }
    }

    /// Builds the report of the window ending `now` and resets the windows.
    pub fn report(&self, now: Instant) -> WireStatMessages {
        let mut out = Vec::new();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|key, e| {
            e.advance(now);
            let avg = if e.elapsed > 0.0 {
                e.weighted / e.elapsed
            } else {
                0.0
            };
            let adj = e.first_request;
            e.first_request = 0.0;
            let reported = (avg - adj).max(0.0);
            out.push(stat_msg(key, &self.pod_name, reported, e.count - adj));
            (self.on_report)(key, reported);
            e.weighted = 0.0;
            e.elapsed = 0.0;
            e.count = 0.0;
            avg != 0.0 || e.refs > 0
        });
        WireStatMessages { messages: out }
    }

    /// Reports every [`REPORT_PERIOD`] until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(REPORT_PERIOD);
        tick.reset();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let batch = self.report(Instant::now());
            if !batch.messages.is_empty() {
                self.sink.send(batch);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(b: &WireStatMessages) -> Vec<(f64, f64)> {
        b.messages
            .iter()
            .map(|m| {
                let s = m.stat.as_ref().unwrap();
                (s.average_concurrent_requests, s.request_count)
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn poke_then_adjusted_reports_then_deletion() {
        let (sink, mut rx) = StatsSink::channel(16);
        let r = Reporter::new("pod".into(), sink, |_, _| {});
        let k = RevisionKey::new("ns", "r");
        let t0 = Instant::now();
        // Two sequential requests: poke, then avg 0 count 1.
        r.record_in(&k, t0);
        r.request_out(&k, t0);
        r.record_in(&k, t0);
        r.request_out(&k, t0);
        assert_eq!(stats(&rx.try_recv().unwrap()), vec![(1.0, 1.0)]);
        assert!(rx.try_recv().is_err(), "one poke only");
        assert_eq!(stats(&r.report(t0 + REPORT_PERIOD)), vec![(0.0, 1.0)]);
        // The entry was idle for the window: deleted; the next request pokes again.
        r.record_in(&k, t0 + REPORT_PERIOD);
        assert_eq!(stats(&rx.try_recv().unwrap()), vec![(1.0, 1.0)]);
    }

    #[tokio::test(start_paused = true)]
    async fn three_concurrent_requests_poke_then_two_two() {
        let (sink, mut rx) = StatsSink::channel(16);
        let r = Reporter::new("pod".into(), sink, |_, _| {});
        let k = RevisionKey::new("ns", "r");
        let t0 = Instant::now();
        for _ in 0..3 {
            r.record_in(&k, t0);
        }
        assert_eq!(stats(&rx.try_recv().unwrap()), vec![(1.0, 1.0)]);
        assert_eq!(stats(&r.report(t0 + REPORT_PERIOD)), vec![(2.0, 2.0)]);
        // Still in flight: not deleted, full concurrency next window.
        assert_eq!(stats(&r.report(t0 + 2 * REPORT_PERIOD)), vec![(3.0, 0.0)]);
        for _ in 0..3 {
            r.request_out(&k, t0 + 2 * REPORT_PERIOD);
        }
        assert_eq!(stats(&r.report(t0 + 3 * REPORT_PERIOD)), vec![(0.0, 0.0)]);
        assert!(
            r.report(t0 + 4 * REPORT_PERIOD).messages.is_empty(),
            "silent after idle"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn interleaved_requests_average_half() {
        let (sink, _rx) = StatsSink::channel(16);
        let r = Reporter::new("pod".into(), sink, |_, _| {});
        let k = RevisionKey::new("ns", "r");
        let t0 = Instant::now();
        r.report(t0);
        r.record_in(&k, t0);
        r.request_out(&k, t0 + REPORT_PERIOD / 2);
        let s = stats(&r.report(t0 + REPORT_PERIOD));
        // avg 0.5 − poke 1 → clamped at 0; count 1 − 1 = 0.
        assert_eq!(s, vec![(0.0, 0.0)]);
        r.record_in(&k, t0 + REPORT_PERIOD);
        r.request_out(&k, t0 + REPORT_PERIOD + REPORT_PERIOD / 2);
        assert_eq!(stats(&r.report(t0 + 2 * REPORT_PERIOD)), vec![(0.5, 1.0)]);
    }
}
