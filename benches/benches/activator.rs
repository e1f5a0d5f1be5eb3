//! The activator's load-balancing pick among N pods, per policy, against a naive baseline
//! (scan every pod for the least loaded one with free capacity).

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use activator::lb;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

struct Pod {
    in_flight: AtomicUsize,
    cap: usize,
}

fn pods(n: usize) -> Vec<Pod> {
    (0..n)
        .map(|i| Pod {
            // Half full, so picks have to skip some pods.
            in_flight: AtomicUsize::new(if i % 2 == 0 { 10 } else { i % 10 }),
            cap: 10,
        })
        .collect()
}

fn take(p: &Pod) -> Option<()> {
    let cur = p.in_flight.load(Ordering::Relaxed);
    (cur < p.cap).then_some(())
}

fn naive_least_loaded(pods: &[Pod]) -> Option<usize> {
    pods.iter()
        .enumerate()
        .filter(|(_, p)| take(p).is_some())
        .min_by_key(|(_, p)| p.in_flight.load(Ordering::Relaxed))
        .map(|(i, _)| i)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("lb_pick");
    for n in [3usize, 100, 1000] {
        let set = pods(n);
        let mut rng = rand::rng();
        g.bench_with_input(BenchmarkId::new("random_choice_2", n), &set, |b, set| {
            b.iter(|| {
                lb::random_choice_2(
                    set.len(),
                    |i| set[i].in_flight.load(Ordering::Relaxed),
                    &mut rng,
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("first_available", n), &set, |b, set| {
            b.iter(|| lb::first_available(black_box(set), take))
        });
        let mut cursor = 0;
        g.bench_with_input(BenchmarkId::new("round_robin", n), &set, |b, set| {
            b.iter(|| lb::round_robin(black_box(set), &mut cursor, take))
        });
        g.bench_with_input(BenchmarkId::new("naive_least_loaded", n), &set, |b, set| {
            b.iter(|| naive_least_loaded(black_box(set)))
        });
    }
    g.finish();
}

/// One request's admission through the revision throttler (revision permit + pod pick + pod
/// permit, released on drop), against a naive `Mutex<Vec<usize>>` first-fit baseline.
fn throttler(c: &mut Criterion) {
    use activator::catalog::{RevisionKey, RevisionSpec};
    use activator::throttler::{QueueLimits, RevisionGauges, RevisionThrottler};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime for the bench");
    let mut g = c.benchmark_group("throttler_acquire_release");
    for (cc, pods) in [(1u32, 10usize), (10, 10), (0, 100)] {
        let t = RevisionThrottler::new(
            RevisionKey::new("ns", "r"),
            RevisionSpec {
                container_concurrency: cc,
                ..RevisionSpec::default()
            },
            QueueLimits::new(10_000, usize::MAX),
            Default::default(),
            RevisionGauges::default(),
        );
        let dests: Vec<String> = (0..pods)
            .map(|i| format!("10.0.{}.{}:8012", i / 250, i % 250 + 1))
            .collect();
        t.update_dests(&dests, None, 0);
        g.bench_function(BenchmarkId::new(format!("cc{cc}"), pods), |b| {
            b.to_async(&rt).iter(|| async {
                let lease = t.acquire(0).await;
                black_box(&lease);
            })
        });
    }
    let naive = std::sync::Mutex::new(vec![0usize; 10]);
    g.bench_function("naive_mutex_first_fit/10", |b| {
        b.iter(|| {
            let mut v = naive.lock().expect("baseline mutex is never poisoned");
            if let Some(slot) = v.iter_mut().find(|n| **n < 1) {
                *slot += 1;
                *slot -= 1;
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench, throttler);
criterion_main!(benches);
