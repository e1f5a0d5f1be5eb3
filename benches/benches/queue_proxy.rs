//! queue-proxy hot path: breaker admission + stats in/out per request (goal ≤ 100 ns, no
//! allocation), against a naive baseline (a mutex-guarded counter).
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use queue_proxy::stats::Stats;
use shared::breaker::{Breaker, BreakerParams};

fn hot_path(c: &mut Criterion) {
    let breaker = Breaker::new(BreakerParams::for_container_concurrency(10));
    let stats = Stats::new(Instant::now());
    c.bench_function("qp/breaker+stats (uncontended)", |b| {
        b.iter(|| {
            let guard = stats.arrive(false);
            let permit = breaker.try_acquire().unwrap();
            drop(permit);
            drop(guard);
        })
    });
    let naive = Mutex::new(0u64);
    c.bench_function("qp/naive mutex counter baseline", |b| {
        b.iter(|| {
            *naive.lock().unwrap() += 1;
            *naive.lock().unwrap() -= 1;
        })
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
