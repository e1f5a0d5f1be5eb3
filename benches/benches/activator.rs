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

criterion_group!(benches, bench);
criterion_main!(benches);
