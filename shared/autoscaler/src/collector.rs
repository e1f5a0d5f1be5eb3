//! Metric collection math (`pkg/autoscaler/metrics`): the per-revision collection of four
//! averagers, recording of scraped and activator stats, and the scrape sample-size math. See §5.

use std::time::Duration;

use crate::window::{Algorithm, TimedBuckets};

/// A queue-proxy / activator report (the fields of Knative's `Stat` protobuf that matter here).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stat {
    /// Reporter identity (pod name, activator pod name, or `service-scraper`).
    pub pod_name: String,
    /// Time-weighted average in-flight requests over the period.
    pub average_concurrent_requests: f64,
    /// The part of `average_concurrent_requests` that came through the activator.
    pub average_proxied_concurrent_requests: f64,
    /// Requests per second (queue-proxy) or count for the 1 s period (activator).
    pub request_count: f64,
    /// The part of `request_count` that came through the activator.
    pub proxied_request_count: f64,
    /// Seconds since the reporter started.
    pub process_uptime: f64,
    /// Unix seconds.
    pub timestamp: i64,
}

impl Stat {
    /// True when every field is at its zero value.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The bucket granularity of every averager.
pub const BUCKET_SIZE: Duration = Duration::from_secs(1);

/// `populationMeanSampleSize`: how many of `population` pods to scrape.
/// 0→0, 1→1, 2→2, 5→4, 10→7, 100→14, 1000→16.
pub fn sample_size(population: i32) -> i32 {
    if population <= 3 {
        return population.max(0);
    }
    let n = f64::from(population);
    const X: f64 = 1.96 * 1.96 * 100.0 / 25.0;
    (n * X / (n + X - 1.0)).ceil() as i32
}

/// Averages `sampled` stats and extrapolates them to `population` pods (`sum / n × N` on fields
/// 2–5), named `service-scraper`. Returns `None` when nothing was sampled.
pub fn extrapolate<'a>(
    sampled: impl IntoIterator<Item = &'a Stat>,
    population: i32,
) -> Option<Stat> {
    let mut sum = Stat {
        pod_name: "service-scraper".to_owned(),
        ..Stat::default()
    };
    let mut n = 0u32;
    for s in sampled {
        n += 1;
        sum.average_concurrent_requests += s.average_concurrent_requests;
        sum.average_proxied_concurrent_requests += s.average_proxied_concurrent_requests;
        sum.request_count += s.request_count;
        sum.proxied_request_count += s.proxied_request_count;
    }
    if n == 0 {
        return None;
    }
    let k = f64::from(population) / f64::from(n);
    sum.average_concurrent_requests *= k;
    sum.average_proxied_concurrent_requests *= k;
    sum.request_count *= k;
    sum.proxied_request_count *= k;
    Some(sum)
}

/// No data in the stable window (Knative `ErrNoData`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no data available")]
pub struct NoData;

/// One revision's four averagers: stable/panic × concurrency/RPS.
#[derive(Debug, Clone)]
pub struct Collection {
    stable_conc: TimedBuckets,
    panic_conc: TimedBuckets,
    stable_rps: TimedBuckets,
    panic_rps: TimedBuckets,
    scrapes: bool,
}

impl Collection {
    /// A collection with the given windows. `scrapes` is false when the scrape target is empty
    /// (TBC = -1): an empty window then reads as 0 instead of [`NoData`].
    pub fn new(
        algorithm: Algorithm,
        stable_window: Duration,
        panic_window: Duration,
        scrapes: bool,
    ) -> Self {
        let b = |w| TimedBuckets::new(algorithm, w, BUCKET_SIZE);
        Self {
            stable_conc: b(stable_window),
            panic_conc: b(panic_window),
            stable_rps: b(stable_window),
            panic_rps: b(panic_window),
            scrapes,
        }
    }

    /// `CreateOrUpdate` on an existing collection: resizes the windows (keeping fresh data).
    pub fn update(
        &mut self,
        stable_window: Duration,
        panic_window: Duration,
        scrapes: bool,
        now: Duration,
    ) {
        self.stable_conc.resize(stable_window, now);
        self.panic_conc.resize(panic_window, now);
        self.stable_rps.resize(stable_window, now);
        self.panic_rps.resize(panic_window, now);
        self.scrapes = scrapes;
    }

    /// Records a stat (scraped or from the activator) at `t`, subtracting the proxied share.
    pub fn record(&mut self, t: Duration, stat: &Stat) {
        let c = stat.average_concurrent_requests - stat.average_proxied_concurrent_requests;
        let r = stat.request_count - stat.proxied_request_count;
        self.record_raw(t, c, r);
    }

    /// Records already-netted revision-wide concurrency and RPS at `t`.
    pub fn record_raw(&mut self, t: Duration, concurrency: f64, rps: f64) {
        self.stable_conc.record(t, concurrency);
        self.panic_conc.record(t, concurrency);
        self.stable_rps.record(t, rps);
        self.panic_rps.record(t, rps);
    }

    /// `(stable, panic)` concurrency at `now`.
    ///
    /// # Errors
    /// [`NoData`] when the stable window is empty and the revision is scraped.
    pub fn stable_and_panic_concurrency(&self, now: Duration) -> Result<(f64, f64), NoData> {
        if self.scrapes && self.stable_conc.is_empty(now) {
            return Err(NoData);
        }
        Ok((
            self.stable_conc.window_average(now),
            self.panic_conc.window_average(now),
        ))
    }

    /// `(stable, panic)` RPS at `now`.
    ///
    /// # Errors
    /// [`NoData`] when the stable window is empty and the revision is scraped.
    pub fn stable_and_panic_rps(&self, now: Duration) -> Result<(f64, f64), NoData> {
        if self.scrapes && self.stable_rps.is_empty(now) {
            return Err(NoData);
        }
        Ok((
            self.stable_rps.window_average(now),
            self.panic_rps.window_average(now),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    #[test]
    fn sample_sizes() {
        for (n, want) in [
            (-1, 0),
            (0, 0),
            (1, 1),
            (2, 2),
            (3, 3),
            (5, 4),
            (10, 7),
            (100, 14),
            (1000, 16),
        ] {
            assert_eq!(sample_size(n), want, "{n}");
        }
        assert_eq!(sample_size(i32::MAX), 16);
    }

    #[test]
    fn extrapolation() {
        let st = |c, pc, r, pr| Stat {
            average_concurrent_requests: c,
            average_proxied_concurrent_requests: pc,
            request_count: r,
            proxied_request_count: pr,
            ..Stat::default()
        };
        let e = extrapolate(&[st(2.0, 1.0, 10.0, 4.0), st(4.0, 0.0, 20.0, 0.0)], 10).unwrap();
        assert_eq!(e.pod_name, "service-scraper");
        assert_eq!(
            (
                e.average_concurrent_requests,
                e.average_proxied_concurrent_requests,
                e.request_count,
                e.proxied_request_count
            ),
            (30.0, 5.0, 150.0, 20.0)
        );
        assert_eq!(extrapolate(&[], 3), None);
    }

    #[test]
    fn proxied_subtracted_and_summed_with_activator() {
        let mut c = Collection::new(Algorithm::Linear, s(60), s(6), true);
        assert_eq!(c.stable_and_panic_concurrency(s(100)), Err(NoData));
        let scraped = Stat {
            average_concurrent_requests: 10.0,
            average_proxied_concurrent_requests: 4.0,
            request_count: 100.0,
            proxied_request_count: 40.0,
            ..Stat::default()
        };
        let activator = Stat {
            average_concurrent_requests: 4.0,
            request_count: 40.0,
            ..Stat::default()
        };
        c.record(s(100), &scraped);
        c.record(s(100), &activator);
        assert_eq!(c.stable_and_panic_concurrency(s(100)), Ok((10.0, 10.0)));
        assert_eq!(c.stable_and_panic_rps(s(100)), Ok((100.0, 100.0)));
        // Panic window forgets after 6 s, stable keeps it.
        assert_eq!(c.stable_and_panic_concurrency(s(106)), Ok((10.0, 0.0)));
        assert_eq!(c.stable_and_panic_concurrency(s(161)), Err(NoData));
        // Not scraped (TBC = -1): empty reads as zeros.
        let c = Collection::new(Algorithm::Linear, s(60), s(6), false);
        assert_eq!(c.stable_and_panic_concurrency(s(100)), Ok((0.0, 0.0)));
    }
}
