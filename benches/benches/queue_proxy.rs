//! queue-proxy hot path: breaker admission + stats in/out per request (goal ≤ 100 ns, no
//! allocation), uncontended and with two threads contending, against a naive baseline (a
//! mutex-guarded counter); and the 1 s `Stat` encoding against a naive text rendering.
//!
//! A counting global allocator wraps the system allocator so the bench can report, before the
//! timings, how many heap allocations one hot-path operation makes (Knative's Go handler: 5–8).
#![allow(clippy::unwrap_used, clippy::print_stdout)]
// The counting allocator needs `unsafe impl GlobalAlloc`; it only forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;
use queue_proxy::stats::{Stats, stat};
use shared::breaker::{Breaker, BreakerParams};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap allocations per call of `f`, averaged over `n` calls (after one warm-up call).
fn allocs_per_op(n: u64, mut f: impl FnMut()) -> f64 {
    f();
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..n {
        f();
    }
    (ALLOCS.load(Ordering::Relaxed) - before) as f64 / n as f64
}

/// One request's worth of hot-path work: stats in, breaker permit, release both.
fn hot_op(breaker: &Arc<Breaker>, stats: &Stats) {
    let guard = stats.arrive(false);
    let permit = breaker.try_acquire();
    black_box(&permit);
    drop(permit);
    drop(guard);
}

fn hot_path(c: &mut Criterion) {
    let breaker = Breaker::new(BreakerParams::for_container_concurrency(10));
    let stats = Stats::new(Instant::now());
    let naive = Mutex::new(0u64);
    let naive_op = |n: &Mutex<u64>| {
        *n.lock().unwrap() += 1;
        *n.lock().unwrap() -= 1;
    };

    let ours = allocs_per_op(100_000, || hot_op(&breaker, &stats));
    let base = allocs_per_op(100_000, || naive_op(&naive));
    let encode = allocs_per_op(10_000, || {
        black_box(
            stat(
                "pod-1",
                &stats.report(Instant::now()),
                Duration::from_secs(1),
                Duration::ZERO,
            )
            .encode_to_vec(),
        );
    });
    println!(
        "allocations per op: breaker+stats {ours:.3}, naive mutex counter {base:.3}, Stat report+encode {encode:.3}"
    );

    c.bench_function("qp/breaker+stats (uncontended)", |b| {
        b.iter(|| hot_op(&breaker, &stats))
    });
    c.bench_function("qp/naive mutex counter baseline", |b| {
        b.iter(|| naive_op(&naive))
    });

    // Two threads doing the same work on the same breaker and stats: time per op on this
    // thread while the other one hammers (Knative's containerConcurrency path under load).
    let shared = Arc::new((
        Breaker::new(BreakerParams::for_container_concurrency(10)),
        Stats::new(Instant::now()),
    ));
    c.bench_function("qp/breaker+stats (2 threads contended)", |b| {
        b.iter_custom(|iters| {
            let stop = Arc::new(AtomicBool::new(false));
            let start = Arc::new(Barrier::new(2));
            let other = {
                let (shared, stop, start) =
                    (Arc::clone(&shared), Arc::clone(&stop), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    while !stop.load(Ordering::Relaxed) {
                        hot_op(&shared.0, &shared.1);
                    }
                })
            };
            start.wait();
            let t = Instant::now();
            for _ in 0..iters {
                hot_op(&shared.0, &shared.1);
            }
            let took = t.elapsed();
            stop.store(true, Ordering::Relaxed);
            other.join().unwrap();
            took
        })
    });
    let naive2 = Arc::new(Mutex::new(0u64));
    c.bench_function("qp/naive mutex counter (2 threads contended)", |b| {
        b.iter_custom(|iters| {
            let stop = Arc::new(AtomicBool::new(false));
            let start = Arc::new(Barrier::new(2));
            let other = {
                let (n, stop, start) = (Arc::clone(&naive2), Arc::clone(&stop), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    while !stop.load(Ordering::Relaxed) {
                        naive_op(&n);
                    }
                })
            };
            start.wait();
            let t = Instant::now();
            for _ in 0..iters {
                naive_op(&naive2);
            }
            let took = t.elapsed();
            stop.store(true, Ordering::Relaxed);
            other.join().unwrap();
            took
        })
    });
}

fn stat_encoding(c: &mut Criterion) {
    let stats = Stats::new(Instant::now());
    for _ in 0..100 {
        drop(stats.arrive(false));
    }
    let report = stats.report(Instant::now());
    let mut buf = Vec::with_capacity(128);
    c.bench_function("qp/Stat build+encode (prost, reused buffer)", |b| {
        b.iter(|| {
            buf.clear();
            stat(
                "hello-00001-deployment-5f7d8c-abcde",
                black_box(&report),
                Duration::from_secs(1),
                Duration::from_secs(42),
            )
            .encode(&mut buf)
            .unwrap();
            black_box(&buf);
        })
    });
    // Naive baseline: the same numbers as Prometheus-style text via `format!`.
    c.bench_function("qp/Stat naive text format! baseline", |b| {
        b.iter(|| {
            let r = black_box(&report);
            black_box(format!(
                "pod_name=\"{}\"\naverage_concurrent_requests {}\naverage_proxied_concurrent_requests {}\nrequest_count {}\nproxied_request_count {}\nprocess_uptime {}\n",
                "hello-00001-deployment-5f7d8c-abcde",
                r.average_concurrency,
                r.average_proxied_concurrency,
                r.request_count,
                r.proxied_request_count,
                42.0
            ));
        })
    });
}

criterion_group!(benches, hot_path, stat_encoding);
criterion_main!(benches);
