//! Breaker acquire/release: ours vs a naive `Mutex<usize>` counter baseline.

use std::sync::{Arc, Mutex};

use criterion::{Criterion, criterion_group, criterion_main};
use shared::breaker::{Breaker, BreakerParams};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("breaker");
    let b = Breaker::new(BreakerParams::for_container_concurrency(10));
    g.bench_function("try_acquire_release_uncontended", |bench| {
        bench.iter(|| {
            let p = b.try_acquire();
            std::hint::black_box(&p);
        })
    });
    let naive = Arc::new(Mutex::new(0usize));
    g.bench_function("naive_mutex_counter", |bench| {
        bench.iter(|| {
            let mut n = naive.lock().expect("baseline mutex is never poisoned");
            if *n < 10 {
                *n += 1;
            }
            *n -= 1;
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
