//! Autoscaler decisions: one decision over a full window, and 10,000 revisions per 1 s tick
//! (record one sample per revision, then decide), against a naive baseline that keeps every
//! sample in a `Vec` and re-averages the window on each decision.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use autoscaler::collector::Collection;
use autoscaler::{Config, Decider, Observed, RevisionSettings};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

const REVISIONS: usize = 10_000;
const T0: u64 = 1_700_000_000;

fn settings() -> RevisionSettings {
    RevisionSettings::resolve(&Config::default(), &BTreeMap::new(), 0, true)
}

/// A revision with a full 60 s stable window of data.
fn warm(s: &RevisionSettings, seed: u64) -> (Decider, Collection) {
    let mut c = Collection::new(s.algorithm, s.decider.stable_window, s.panic_window, true);
    for i in 0..60 {
        c.record_raw(Duration::from_secs(T0 + i), ((seed + i) % 200) as f64, 10.0);
    }
    (
        Decider::new(s.decider.clone(), Duration::from_secs(T0), 1),
        c,
    )
}

fn decide(d: &mut Decider, c: &Collection, now: Duration, ready: i32) -> i32 {
    let o = c
        .stable_and_panic_concurrency(now)
        .ok()
        .map(|(stable, panic)| Observed { stable, panic });
    d.scale(now, Some(ready), o).desired_pod_count
}

/// The naive baseline: all samples in a Vec, averaged by a scan per decision.
struct Naive {
    samples: Vec<(u64, f64)>,
}

impl Naive {
    fn record(&mut self, t: u64, v: f64) {
        self.samples.push((t, v));
        self.samples.retain(|&(st, _)| st + 60 > t);
    }
    fn averages(&self, now: u64) -> (f64, f64) {
        let avg = |w: u64| {
            let xs: Vec<f64> = self
                .samples
                .iter()
                .filter(|&&(t, _)| t + w > now)
                .map(|&(_, v)| v)
                .collect();
            if xs.is_empty() {
                0.0
            } else {
                xs.iter().sum::<f64>() / xs.len() as f64
            }
        };
        (avg(60), avg(6))
    }
}

fn bench(c: &mut Criterion) {
    let s = settings();
    let mut g = c.benchmark_group("autoscaler");

    g.bench_function("decide_full_window", |b| {
        b.iter_batched_ref(
            || warm(&s, 7),
            |(d, col)| black_box(decide(d, col, Duration::from_secs(T0 + 60), 3)),
            BatchSize::SmallInput,
        )
    });

    g.bench_function("record_sample", |b| {
        let (_, mut col) = warm(&s, 7);
        let mut t = T0 + 60;
        b.iter(|| {
            t += 1;
            col.record_raw(Duration::from_secs(t), black_box(5.0), 1.0);
        })
    });

    let mut revs: Vec<(Decider, Collection)> = (0..REVISIONS as u64).map(|i| warm(&s, i)).collect();
    let mut tick = T0 + 60;
    g.bench_function("tick_10k_revisions", |b| {
        b.iter(|| {
            tick += 1;
            let now = Duration::from_secs(tick);
            let mut total = 0i64;
            for (i, (d, col)) in revs.iter_mut().enumerate() {
                col.record_raw(now, (i % 300) as f64, 10.0);
                total += i64::from(decide(d, col, now, 3));
            }
            black_box(total)
        })
    });

    let mut naive: Vec<(Decider, Naive)> = (0..REVISIONS as u64)
        .map(|i| {
            let mut n = Naive {
                samples: Vec::new(),
            };
            for k in 0..60 {
                n.record(T0 + k, ((i + k) % 200) as f64);
            }
            (
                Decider::new(s.decider.clone(), Duration::from_secs(T0), 1),
                n,
            )
        })
        .collect();
    let mut tick = T0 + 60;
    g.bench_function("tick_10k_revisions_naive", |b| {
        b.iter(|| {
            tick += 1;
            let now = Duration::from_secs(tick);
            let mut total = 0i64;
            for (i, (d, n)) in naive.iter_mut().enumerate() {
                n.record(tick, (i % 300) as f64);
                let (stable, panic) = n.averages(tick);
                total += i64::from(
                    d.scale(now, Some(3), Some(Observed { stable, panic }))
                        .desired_pod_count,
                );
            }
            black_box(total)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
