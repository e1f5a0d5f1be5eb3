//! Autoscaler statistics (`queue-proxy.md` §7.1–7.2).
//!
//! [`RequestStats`] is the pure window maths of knative/networking `pkg/http/stats/request.go`:
//! it takes `now` on every call. [`Stats`] wraps it in a mutex for the request path (one short,
//! uncontended lock per event, no allocation) and [`Stats::report`] produces the protobuf `Stat`
//! that [`Reporter`] stores once per second for the metrics endpoint.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use shared::stats::Stat;
use tokio_util::sync::CancellationToken;

/// Time-weighted concurrency and arrival counts over one window.
#[derive(Clone, Debug)]
pub struct RequestStats {
    concurrency: f64,
    proxied_concurrency: f64,
    last_change: Instant,
    request_count: f64,
    proxied_count: f64,
    integral: f64,
    proxied_integral: f64,
    seconds_in_use: f64,
}

/// A request event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A request arrived.
    In,
    /// A request ended.
    Out,
    /// A request proxied by the activator arrived.
    ProxiedIn,
    /// A request proxied by the activator ended.
    ProxiedOut,
}

/// One window's result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Report {
    /// Time-weighted average concurrency.
    pub average_concurrency: f64,
    /// The same, for proxied requests.
    pub average_proxied_concurrency: f64,
    /// Arrivals in the window.
    pub request_count: f64,
    /// Proxied arrivals in the window.
    pub proxied_request_count: f64,
}

impl RequestStats {
    /// Empty stats whose window starts at `start`.
    pub fn new(start: Instant) -> Self {
        Self {
            concurrency: 0.0,
            proxied_concurrency: 0.0,
            last_change: start,
            request_count: 0.0,
            proxied_count: 0.0,
            integral: 0.0,
            proxied_integral: 0.0,
            seconds_in_use: 0.0,
        }
    }

    fn integrate(&mut self, now: Instant) {
        if now > self.last_change {
            let dt = (now - self.last_change).as_secs_f64();
            self.seconds_in_use += dt;
            self.integral += self.concurrency * dt;
            self.proxied_integral += self.proxied_concurrency * dt;
            self.last_change = now;
        }
    }

    /// Records `event` at `now`. Out-of-order events (`now` before the last change) skip the
    /// integration but still move the counters, as in Knative.
    pub fn record(&mut self, now: Instant, event: Event) {
        self.integrate(now);
        match event {
            Event::ProxiedIn => {
                self.proxied_concurrency += 1.0;
                self.proxied_count += 1.0;
                self.concurrency += 1.0;
                self.request_count += 1.0;
            }
            Event::In => {
                self.concurrency += 1.0;
                self.request_count += 1.0;
            }
            Event::ProxiedOut => {
                self.proxied_concurrency -= 1.0;
                self.concurrency -= 1.0;
            }
            Event::Out => self.concurrency -= 1.0,
        }
    }

    /// Closes the window at `now` and starts the next one (current concurrency is kept).
    pub fn report(&mut self, now: Instant) -> Report {
        self.integrate(now);
        let avg = |i: f64| {
            if self.seconds_in_use > 0.0 {
                i / self.seconds_in_use
            } else {
                0.0
            }
        };
        let r = Report {
            average_concurrency: avg(self.integral),
            average_proxied_concurrency: avg(self.proxied_integral),
            request_count: self.request_count,
            proxied_request_count: self.proxied_count,
        };
        self.request_count = 0.0;
        self.proxied_count = 0.0;
        self.integral = 0.0;
        self.proxied_integral = 0.0;
        self.seconds_in_use = 0.0;
        r
    }
}

/// Shared stats handle for the request path; cheap to clone.
#[derive(Clone, Debug)]
pub struct Stats {
    inner: Arc<Mutex<RequestStats>>,
}

/// Records the matching "out" event when dropped (end of body, tunnel close, or cancellation).
#[derive(Debug)]
pub struct InFlight {
    stats: Stats,
    proxied: bool,
}

impl Stats {
    /// Stats starting now.
    pub fn new(start: Instant) -> Self {
        Self {
            inner: Arc::new(Mutex::new(RequestStats::new(start))),
        }
    }

    fn record(&self, event: Event) {
        let now = Instant::now();
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(now, event);
    }

    /// Records an arrival; the returned guard records the departure when dropped.
    pub fn arrive(&self, proxied: bool) -> InFlight {
        self.record(if proxied { Event::ProxiedIn } else { Event::In });
        InFlight {
            stats: self.clone(),
            proxied,
        }
    }

    /// Closes the window at `now`.
    pub fn report(&self, now: Instant) -> Report {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .report(now)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.record(if self.proxied {
            Event::ProxiedOut
        } else {
            Event::Out
        });
    }
}

/// Builds the protobuf `Stat` for a window (`protobuf_stats_reporter.go`): counts divided by the
/// reporting period, `timestamp` never set.
pub fn stat(pod: &str, r: &Report, period: Duration, uptime: Duration) -> Stat {
    let secs = period.as_secs_f64();
    Stat {
        pod_name: pod.to_owned(),
        average_concurrent_requests: r.average_concurrency,
        average_proxied_concurrent_requests: r.average_proxied_concurrency,
        request_count: r.request_count / secs,
        proxied_request_count: r.proxied_request_count / secs,
        process_uptime: uptime.as_secs_f64(),
        timestamp: 0,
    }
}

/// The 1 s reporter: encodes the last completed window for the metrics endpoint.
#[derive(Clone, Debug)]
pub struct Reporter {
    latest: Arc<Mutex<Bytes>>,
}

impl Reporter {
    /// A reporter whose first answer carries only `pod_name` (Knative, before the first report).
    pub fn new(pod: &str) -> Self {
        let first = Stat {
            pod_name: pod.to_owned(),
            ..Default::default()
        };
        Self {
            latest: Arc::new(Mutex::new(Bytes::from(first.encode_to_vec()))),
        }
    }

    /// The encoded `Stat` of the last completed window.
    pub fn latest(&self) -> Bytes {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reports every `period` until `shutdown`.
    pub async fn run(
        self,
        stats: Stats,
        pod: String,
        started: Instant,
        period: Duration,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let report = stats.report(now);
            let s = stat(&pod, &report, period, now.duration_since(started));
            *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Bytes::from(s.encode_to_vec());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(base: Instant, n: u64) -> Instant {
        base + Duration::from_millis(n)
    }

    fn case(events: &[(u64, Event)], report_at: u64) -> Report {
        let t0 = Instant::now();
        let mut s = RequestStats::new(t0);
        for &(t, e) in events {
            s.record(ms(t0, t), e);
        }
        s.report(ms(t0, report_at))
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn knative_request_stats_cases() {
        use Event::*;
        let r = case(&[], 1000);
        assert_eq!((r.average_concurrency, r.request_count), (0.0, 0.0));
        let r = case(&[(0, In), (1000, Out)], 1000);
        assert!(close(r.average_concurrency, 1.0) && r.request_count == 1.0);
        let r = case(&[(0, In), (3000, Out)], 6000);
        assert!(close(r.average_concurrency, 0.5));
        let r = case(&[(0, In), (1, Out)], 1000);
        assert!(close(r.average_concurrency, 0.001));
        let r = case(
            &[
                (0, In),
                (333, Out),
                (333, In),
                (666, Out),
                (666, In),
                (1000, Out),
            ],
            1000,
        );
        assert!(close(r.average_concurrency, 1.0) && r.request_count == 3.0);
        let r = case(&[(0, In), (100, In), (600, Out), (1000, Out)], 1000);
        assert!(close(r.average_concurrency, 1.5) && r.request_count == 2.0);
        let r = case(&[(0, ProxiedIn), (500, ProxiedOut)], 1000);
        assert!(close(r.average_concurrency, 0.5) && close(r.average_proxied_concurrency, 0.5));
        assert_eq!((r.request_count, r.proxied_request_count), (1.0, 1.0));
        let r = case(
            &[(0, ProxiedIn), (0, In), (500, ProxiedOut), (1000, Out)],
            1000,
        );
        assert!(close(r.average_concurrency, 1.5) && close(r.average_proxied_concurrency, 0.5));
        assert_eq!((r.request_count, r.proxied_request_count), (2.0, 1.0));
        let r = case(&[(500, In), (499, In), (1000, Out), (999, Out)], 1000);
        // Knative's out-of-order case: window starts at the first event.
        assert_eq!(r.request_count, 2.0);
    }

    #[test]
    fn windows_reset_but_keep_concurrency() {
        let t0 = Instant::now();
        let mut s = RequestStats::new(t0);
        s.record(t0, Event::In);
        let r = s.report(ms(t0, 1000));
        assert!(close(r.average_concurrency, 1.0) && r.request_count == 1.0);
        s.record(ms(t0, 1500), Event::Out);
        let r = s.report(ms(t0, 2000));
        assert!(close(r.average_concurrency, 0.5) && r.request_count == 0.0);
    }

    #[test]
    fn stat_divides_counts_by_period() {
        let r = Report {
            average_concurrency: 2.0,
            average_proxied_concurrency: 1.0,
            request_count: 39.0,
            proxied_request_count: 15.0,
        };
        let s = stat("p", &r, Duration::from_secs(10), Duration::from_secs(5));
        assert!(close(s.request_count, 3.9) && close(s.proxied_request_count, 1.5));
        assert!(close(s.average_concurrent_requests, 2.0));
        assert_eq!(s.timestamp, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn reporter_publishes_each_second() {
        let start = Instant::now();
        let stats = Stats::new(start);
        let rep = Reporter::new("pod");
        assert_eq!(
            Stat::decode(rep.latest()).unwrap(),
            Stat {
                pod_name: "pod".into(),
                ..Default::default()
            }
        );
        let g = stats.arrive(true);
        let token = CancellationToken::new();
        tokio::spawn(rep.clone().run(
            stats.clone(),
            "pod".into(),
            start,
            Duration::from_secs(1),
            token.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let s = Stat::decode(rep.latest()).unwrap();
        assert_eq!(s.pod_name, "pod");
        assert_eq!((s.request_count, s.proxied_request_count), (1.0, 1.0));
        drop(g);
        token.cancel();
    }
}
