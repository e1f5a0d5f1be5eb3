//! Time-bucketed averages (`aggregation.TimedFloat64Buckets`, `WeightedFloat64Buckets`) and the
//! sliding-window maximum (`aggregation/max.TimeWindow`). See §4.
//!
//! Times are `Duration`s since an arbitrary epoch (Unix time gives Knative's bucket alignment).
//! Recording is O(1) amortised and never allocates; the ring is allocated once at construction.

use std::collections::VecDeque;
use std::time::Duration;

/// The aggregation algorithm of a revision's averagers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// Plain average over the window (Knative's default).
    #[default]
    Linear,
    /// Weighted exponential (`weighted-exponential`).
    WeightedExponential,
}

const NS: u64 = 1_000_000_000;

fn nanos(t: Duration) -> u64 {
    u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)
}

/// Round half away from zero to 6 decimals.
fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// A ring of per-granularity buckets averaged over a window, linear or weighted-exponential.
#[derive(Debug, Clone)]
pub struct TimedBuckets {
    algorithm: Algorithm,
    /// Granularity in ns (whole seconds).
    g: u64,
    /// Window in ns.
    window: u64,
    buckets: Box<[f64]>,
    window_total: f64,
    first_write: Option<u64>,
    last_write: Option<u64>,
    /// Weighted smoothing coefficient.
    m: f64,
}

fn smoothing(n: usize) -> f64 {
    (1.0 - (1.0 - 0.9999f64).powf(1.0 / n as f64)).max(0.2)
}

impl TimedBuckets {
    /// A ring for `window` with `granularity` buckets (whole seconds, ≥ 1 s; production uses 1 s).
    ///
    /// # Panics
    /// If `granularity` is below one second or not whole seconds.
    pub fn new(algorithm: Algorithm, window: Duration, granularity: Duration) -> Self {
        let g = nanos(granularity);
        assert!(
            g >= NS && g.is_multiple_of(NS),
            "granularity must be whole seconds ≥ 1 s"
        );
        let w = nanos(window);
        let n = (w.div_ceil(g)).max(1) as usize;
        Self {
            algorithm,
            g,
            window: w,
            buckets: vec![0.0; n].into_boxed_slice(),
            window_total: 0.0,
            first_write: None,
            last_write: None,
            m: smoothing(n),
        }
    }

    /// The window.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window)
    }

    fn n(&self) -> u64 {
        self.buckets.len() as u64
    }
    fn truncate(&self, t: u64) -> u64 {
        t - t % self.g
    }
    fn index(&self, t: u64) -> u64 {
        t / self.g
    }
    fn slot(&self, idx: u64) -> usize {
        (idx % self.n()) as usize
    }

    /// Adds `v` to the bucket of `t` (several writes into one bucket are summed).
    pub fn record(&mut self, t: Duration, v: f64) {
        let t = nanos(t);
        let bt = self.truncate(t);
        let wi = self.index(t);
        if self.last_write != Some(bt) {
            let fresh_enough = self
                .last_write
                .is_none_or(|lw| bt.saturating_add(self.window) > lw);
            if !fresh_enough {
                return; // ≥ one window older than the newest write
            }
            if self.first_write.is_none_or(|fw| fw > bt) {
                self.first_write = Some(bt);
            }
            if self.last_write.is_none_or(|lw| bt > lw) {
                match self.last_write {
                    Some(lw) if bt - lw < self.window => {
                        for i in self.index(lw) + 1..=wi {
                            let s = self.slot(i);
                            self.window_total -= self.buckets[s];
                            self.buckets[s] = 0.0;
                        }
                    }
                    _ => {
                        self.first_write = Some(bt);
                        self.buckets.fill(0.0);
                        self.window_total = 0.0;
                    }
                }
                self.last_write = Some(bt);
            }
        }
        let s = self.slot(wi);
        self.buckets[s] += v;
        self.window_total += v;
    }

    /// True when nothing was written during the last window (`truncate(now) − last_write > W`).
    pub fn is_empty(&self, now: Duration) -> bool {
        let now = self.truncate(nanos(now));
        self.last_write
            .is_none_or(|lw| now > lw && now - lw > self.window)
    }

    /// The window average at `now` with this ring's algorithm.
    pub fn window_average(&self, now: Duration) -> f64 {
        match self.algorithm {
            Algorithm::Linear => self.linear_average(now),
            Algorithm::WeightedExponential => self.weighted_average(now),
        }
    }

    fn nb_since_first(&self, lw: u64, cap: u64) -> u64 {
        match self.first_write {
            Some(fw) => ((lw - fw) / self.g + 1).min(cap),
            None => cap,
        }
    }

    fn linear_average(&self, now: Duration) -> f64 {
        let now = self.truncate(nanos(now));
        let Some(lw) = self.last_write else {
            return 0.0;
        };
        if now <= lw {
            let nb = self.nb_since_first(lw, self.n()).max(1);
            return round6(self.window_total / nb as f64);
        }
        let d = now - lw;
        if d < self.window {
            let (s, e) = (self.index(lw), self.index(now));
            let mut ret = self.window_total;
            for i in s + 1..=e {
                ret -= self.buckets[self.slot(i)];
            }
            let nb = self
                .nb_since_first(lw, self.n().saturating_sub(e - s))
                .max(1);
            return round6(ret / nb as f64);
        }
        0.0
    }

    fn weighted_average(&self, now: Duration) -> f64 {
        if self.is_empty(now) {
            return 0.0;
        }
        let Some(lw) = self.last_write else {
            return 0.0;
        };
        let now = self.truncate(nanos(now));
        let mut mult = self.m;
        let mut nb = self.n() as i64;
        if now > lw {
            let z = (now - lw) / self.g;
            mult *= (1.0 - self.m).powi(z as i32);
            nb -= z as i64;
        }
        let n = self.n();
        let start = self.index(lw) % n;
        let mut result = 0.0;
        for i in 0..nb.max(0) as u64 {
            let idx = (start + n - (i % n)) % n;
            result += self.buckets[idx as usize] * mult;
            mult *= 1.0 - self.m;
        }
        result
    }

    /// Changes the window (`ResizeWindow`), keeping the most recent data when it is fresh at `now`
    /// (upstream reads the wall clock here; we take it as an argument, §11.3). Allocates.
    pub fn resize(&mut self, window: Duration, now: Duration) {
        let w2 = nanos(window);
        if w2 == self.window {
            return;
        }
        let n2 = w2.div_ceil(self.g).max(1);
        let mut nb = vec![0.0; n2 as usize].into_boxed_slice();
        let now_t = self.truncate(nanos(now));
        let fresh = self
            .last_write
            .is_some_and(|lw| now_t <= lw || now_t - lw <= self.window);
        let mut total = 0.0;
        if fresh && let Some(lw) = self.last_write {
            let n = self.n();
            let li = self.index(lw);
            for k in 0..n.min(n2) {
                let Some(idx) = li.checked_sub(k) else { break };
                let v = self.buckets[(idx % n) as usize];
                nb[(idx % n2) as usize] = v;
                total += v;
            }
            self.first_write = Some(lw.saturating_sub((n - 1) * self.g));
        } else {
            self.first_write = None;
        }
        self.buckets = nb;
        self.window_total = total;
        self.window = w2;
        self.m = smoothing(n2 as usize);
    }
}

/// Sliding-window maximum over the last `size` indexes ("ascending minima" for maxima).
#[derive(Debug, Clone)]
pub struct MaxWindow {
    size: u64,
    entries: VecDeque<(u64, i32)>,
}

impl MaxWindow {
    /// A window over `size` indexes.
    pub fn new(size: u64) -> Self {
        let size = size.max(1);
        Self {
            size,
            entries: VecDeque::with_capacity(size as usize + 1),
        }
    }

    /// Records `v` at `index` (non-decreasing).
    pub fn record(&mut self, index: u64, mut v: i32) {
        while self.entries.back().is_some_and(|&(_, bv)| v >= bv) {
            self.entries.pop_back();
        }
        while self
            .entries
            .front()
            .is_some_and(|&(fi, _)| index.saturating_sub(fi) >= self.size)
        {
            self.entries.pop_front();
        }
        if let Some(&(bi, bv)) = self.entries.back()
            && bi == index
        {
            v = v.max(bv);
            self.entries.pop_back();
        }
        self.entries.push_back((index, v));
    }

    /// The maximum over the window (0 before any record).
    pub fn current(&self) -> i32 {
        self.entries.front().map_or(0, |&(_, v)| v)
    }
}

/// A [`MaxWindow`] over time (`max.TimeWindow`): `size = ceil(duration / granularity)`.
#[derive(Debug, Clone)]
pub struct MaxTimeWindow {
    g: u64,
    inner: MaxWindow,
}

impl MaxTimeWindow {
    /// A window of `duration` with `granularity` buckets (whole seconds; Knative uses 2 s).
    pub fn new(duration: Duration, granularity: Duration) -> Self {
        let g = (granularity.as_secs()).max(1);
        Self {
            g,
            inner: MaxWindow::new(nanos(duration).div_ceil(g * NS)),
        }
    }

    /// Records `v` at `t`.
    pub fn record(&mut self, t: Duration, v: i32) {
        self.inner.record(t.as_secs() / self.g, v);
    }

    /// The maximum recorded during the last window.
    pub fn current(&self) -> i32 {
        self.inner.current()
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }
    fn lin(w: u64) -> TimedBuckets {
        TimedBuckets::new(Algorithm::Linear, s(w), s(1))
    }

    #[test]
    fn linear_table() {
        // (writes (t, v), query t, expected average)
        let table: &[(&[(u64, f64)], u64, f64)] = &[
            (&[], 100, 0.0),
            (&[(100, 10.0)], 100, 10.0), // first sample as-is
            (&[(100, 10.0), (101, 20.0)], 101, 15.0),
            (&[(100, 10.0), (100, 20.0)], 100, 30.0), // same bucket summed
            (&[(100, 10.0), (102, 20.0)], 102, 10.0), // gap counts as 0
            (&[(100, 10.0), (101, 20.0)], 103, 15.0), // trailing empty seconds not diluted
            (&[(100, 10.0)], 105, 0.0),               // d = W: nothing left
            (
                &[
                    (100, 6.0),
                    (101, 6.0),
                    (102, 6.0),
                    (103, 6.0),
                    (104, 6.0),
                    (105, 6.0),
                ],
                105,
                6.0,
            ),
            (&[(100, 5.0), (106, 1.0)], 106, 1.0), // full window gap resets
            (&[(100, 1.0), (101, 1.0), (102, 1.0)], 102, 1.0),
            (&[(100, 1.0), (102, 2.0), (101, 3.0)], 102, 2.0), // late write inside the window
            (&[(110, 1.0), (105, 100.0)], 110, 1.0),           // write exactly W older dropped
            (&[(100, 1.0), (101, 0.0), (102, 0.0)], 102, 0.333333),
        ];
        for (writes, q, want) in table {
            let mut b = lin(5);
            for &(t, v) in *writes {
                b.record(s(t), v);
            }
            let got = b.window_average(s(*q));
            assert!(
                (got - *want).abs() < 1e-9,
                "{writes:?} @ {q}: got {got}, want {want}"
            );
        }
    }

    #[test]
    fn linear_full_window_and_emptiness() {
        let mut b = lin(60);
        for t in 0..120u64 {
            b.record(s(1000 + t), t as f64);
        }
        // Last 60 values: 60..=119, mean 89.5.
        assert!((b.window_average(s(1119)) - 89.5).abs() < 1e-9);
        assert!(!b.is_empty(s(1179)));
        assert!(b.is_empty(s(1180)));
        assert!(lin(5).is_empty(s(0)));
        // Sub-second times land in their second's bucket.
        let mut b = lin(5);
        b.record(Duration::from_millis(100_900), 4.0);
        b.record(Duration::from_millis(100_100), 2.0);
        assert_eq!(b.window_average(s(100)), 6.0);
    }

    #[test]
    fn weighted_coefficients_and_average() {
        for (n, m) in [
            (42usize, 0.2),
            (41, 0.20117),
            (40, 0.20567),
            (6, 0.78456),
            (5, 0.8415107),
        ] {
            assert!((smoothing(n) - m).abs() < 1e-4, "n={n}: {}", smoothing(n));
        }
        let mut w = TimedBuckets::new(Algorithm::WeightedExponential, s(60), s(1));
        w.record(s(100), 10.0);
        assert!(
            (w.window_average(s(100)) - 2.0).abs() < 1e-12,
            "young window under-reports m·v"
        );
        // One empty second later the weight is m(1-m).
        assert!((w.window_average(s(101)) - 10.0 * 0.2 * 0.8).abs() < 1e-12);
        w.record(s(101), 10.0);
        assert!((w.window_average(s(101)) - (2.0 + 1.6)).abs() < 1e-12);
        // Steady load converges to the value.
        for t in 102..400 {
            w.record(s(t), 10.0);
        }
        assert!((w.window_average(s(399)) - 10.0).abs() < 0.01);
        assert_eq!(w.window_average(s(399 + 61)), 0.0);
    }

    #[test]
    fn resize_keeps_recent() {
        let mut b = lin(10);
        for t in 0..10u64 {
            b.record(s(100 + t), t as f64);
        }
        b.resize(s(5), s(109));
        // Keeps 5..=9, mean 7.
        assert!((b.window_average(s(109)) - 7.0).abs() < 1e-9);
        let mut stale = lin(10);
        stale.record(s(100), 3.0);
        stale.resize(s(20), s(500));
        assert_eq!(stale.window_average(s(500)), 0.0);
    }

    #[test]
    fn max_window_table() {
        // (records (index, v), expected current after each)
        let table: &[(u64, &[(u64, i32)], &[i32])] = &[
            (2, &[(0, 5), (1, 3), (2, 1), (3, 0)], &[5, 5, 3, 1]),
            (3, &[(0, 1), (0, 7), (0, 2)], &[1, 7, 7]),
            (1, &[(0, 4), (1, 2)], &[4, 2]),
            (5, &[(0, 1), (1, 2), (2, 3)], &[1, 2, 3]),
        ];
        for (size, recs, want) in table {
            let mut w = MaxWindow::new(*size);
            assert_eq!(w.current(), 0);
            for (&(i, v), &c) in recs.iter().zip(want.iter()) {
                w.record(i, v);
                assert_eq!(w.current(), c, "size {size} {recs:?}");
            }
        }
        let mut tw = MaxTimeWindow::new(s(10), s(2));
        tw.record(s(100), 9);
        tw.record(s(108), 1);
        assert_eq!(tw.current(), 9);
        tw.record(s(110), 1); // index 55 - 50 = 5 ≥ size 5 → dropped
        assert_eq!(tw.current(), 1);
    }

    proptest::proptest! {
        /// Arbitrary (also out-of-order) writes never panic and give finite, non-negative
        /// averages; a constant load over a full window averages to that constant.
        #[test]
        fn averages_are_sane(
            writes in proptest::collection::vec((0u64..500, 0.0f64..1000.0), 0..200),
            q in 0u64..600,
            w in 1u64..90,
            c in 0.0f64..1000.0,
        ) {
            for alg in [Algorithm::Linear, Algorithm::WeightedExponential] {
                let mut b = TimedBuckets::new(alg, s(w), s(1));
                for &(t, v) in &writes {
                    b.record(s(t), v);
                }
                let a = b.window_average(s(q));
                proptest::prop_assert!(a.is_finite() && a >= 0.0);
                let mut full = TimedBuckets::new(alg, s(w), s(1));
                for t in 0..(3 * w + 60) {
                    full.record(s(1000 + t), c);
                }
                let got = full.window_average(s(1000 + 3 * w + 59));
                let tol = if alg == Algorithm::Linear { 1e-6 } else { c * 1e-3 + 1e-9 };
                proptest::prop_assert!((got - c).abs() <= tol, "{:?} w={} c={} got={}", alg, w, c, got);
            }
        }
    }
}
