//! Knative's breaker: at most `capacity` requests execute, at most `queue_depth` more wait, and
//! everything beyond is rejected at once.
//!
//! Mirrors `pkg/queue/breaker.go` (`Breaker.Reserve`, `Maybe`, `UpdateConcurrency`), with two
//! deliberate differences: waiters are woken in FIFO order (tokio's semaphore is fair; Knative's
//! channel is not, and the contract allows fair), and the permit is a value the caller moves into
//! the response body, so it is held until the body ends rather than until the headers arrive.
//!
//! We write our own rather than use tower's `ConcurrencyLimit`: that releases on headers, has no
//! bounded queue, and cannot change capacity (the activator resizes per pod count).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The breaker's queue (waiting + executing slots) is full.
#[derive(Debug, thiserror::Error)]
#[error("pending request queue full")]
pub struct QueueFull(());

/// Sizes of a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerParams {
    /// How many requests may wait for capacity (queue-proxy: 10 × CC).
    pub queue_depth: usize,
    /// The largest capacity the breaker will ever be given.
    pub max_concurrency: usize,
    /// Capacity at creation (queue-proxy: CC; activator: 0 until pods are ready).
    pub initial_capacity: usize,
}

impl BreakerParams {
    /// The queue-proxy's breaker for `containerConcurrency = cc` (cc ≥ 1): queue depth 10 × cc.
    pub fn for_container_concurrency(cc: usize) -> Self {
        Self {
            queue_depth: 10 * cc,
            max_concurrency: cc,
            initial_capacity: cc,
        }
    }
}

/// A concurrency breaker with a bounded wait queue and adjustable capacity.
#[derive(Debug)]
pub struct Breaker {
    /// Slots taken: waiting plus executing (Knative's `inFlight`).
    pending: AtomicUsize,
    total_slots: usize,
    sem: Arc<Semaphore>,
    /// Permits that must be forgotten when returned, because capacity shrank below what is
    /// executing (tokio's `forget_permits` only removes *available* permits).
    debt: AtomicUsize,
    /// Target capacity; the mutex serialises (rare) resizes, never taken on the request path.
    capacity: Mutex<usize>,
    max_concurrency: usize,
}

/// A taken slot in the breaker; dropping it frees the slot.
#[derive(Debug)]
pub struct Reservation {
    breaker: Arc<Breaker>,
}

/// Permission to execute; hold it until the response body ends. Dropping it frees the capacity
/// and the slot.
#[derive(Debug)]
pub struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    _slot: Reservation,
}

// === impl Breaker ===

impl Breaker {
    /// Creates a breaker.
    ///
    /// # Panics
    /// If `initial_capacity > max_concurrency`.
    pub fn new(params: BreakerParams) -> Arc<Self> {
        assert!(
            params.initial_capacity <= params.max_concurrency,
            "initial capacity above max concurrency"
        );
        Arc::new(Self {
            pending: AtomicUsize::new(0),
            total_slots: params.queue_depth + params.max_concurrency,
            sem: Arc::new(Semaphore::new(params.initial_capacity)),
            debt: AtomicUsize::new(0),
            capacity: Mutex::new(params.initial_capacity),
            max_concurrency: params.max_concurrency,
        })
    }

    /// Takes a slot without waiting, or fails with [`QueueFull`] when all
    /// `queue_depth + max_concurrency` slots are taken. Mirrors `tryAcquirePending`.
    ///
    /// # Errors
    /// [`QueueFull`] when the breaker is full.
    pub fn reserve(self: &Arc<Self>) -> Result<Reservation, QueueFull> {
        let mut cur = self.pending.load(Ordering::Relaxed);
        loop {
            if cur >= self.total_slots {
                return Err(QueueFull(()));
            }
            match self.pending.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Ok(Reservation {
                        breaker: Arc::clone(self),
                    });
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Takes a slot and a permit only if capacity is free right now (Knative's `Reserve`, used by
    /// the activator to try a pod without queueing).
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let slot = self.reserve().ok()?;
        let permit = Arc::clone(&self.sem).try_acquire_owned().ok()?;
        Some(Permit {
            permit: Some(permit),
            _slot: slot,
        })
    }

    /// Slots taken: waiting plus executing. Knative reports this as `queue.depth`.
    pub fn in_flight(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// The current capacity.
    pub fn capacity(&self) -> usize {
        *self.capacity.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The largest capacity this breaker accepts.
    pub fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }

    /// Sets the capacity (clamped to `max_concurrency`). Growing wakes waiters at once; shrinking
    /// takes effect as executing requests finish. Mirrors `UpdateConcurrency`.
    pub fn update_capacity(&self, capacity: usize) {
        let capacity = capacity.min(self.max_concurrency);
        let mut cur = self.capacity.lock().unwrap_or_else(|p| p.into_inner());
        if capacity > *cur {
            let mut grow = capacity - *cur;
            // First cancel debt: those permits are still out and will simply be kept on return.
            while grow > 0 {
                let d = self.debt.load(Ordering::Acquire);
                if d == 0 {
                    break;
                }
                let pay = d.min(grow);
                if self
                    .debt
                    .compare_exchange(d, d - pay, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    grow -= pay;
                }
            }
            self.sem.add_permits(grow);
        } else if capacity < *cur {
            let shrink = *cur - capacity;
            let forgotten = self.sem.forget_permits(shrink);
            self.debt.fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
        *cur = capacity;
    }

    fn release(&self, permit: Option<OwnedSemaphorePermit>) {
        let Some(permit) = permit else { return };
        let mut d = self.debt.load(Ordering::Acquire);
        while d > 0 {
            match self
                .debt
                .compare_exchange_weak(d, d - 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    permit.forget();
                    return;
                }
                Err(actual) => d = actual,
            }
        }
        drop(permit);
    }
}

// === impl Reservation ===

impl Reservation {
    /// Waits (FIFO) for capacity. Bound the wait with a deadline or drop the future when the
    /// client goes away; the slot is freed when the reservation is dropped.
    pub async fn acquire(self) -> Permit {
        let sem = Arc::clone(&self.breaker.sem);
        match sem.acquire_owned().await {
            Ok(permit) => Permit {
                permit: Some(permit),
                _slot: self,
            },
            // The semaphore is never closed; keep the slot so accounting stays balanced.
            Err(_) => Permit {
                permit: None,
                _slot: self,
            },
        }
    }

    /// Takes a permit only if capacity is free right now, giving the slot back otherwise.
    ///
    /// # Errors
    /// Returns the reservation when no capacity is free.
    pub fn try_acquire(self) -> Result<Permit, Self> {
        match Arc::clone(&self.breaker.sem).try_acquire_owned() {
            Ok(permit) => Ok(Permit {
                permit: Some(permit),
                _slot: self,
            }),
            Err(_) => Err(self),
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.breaker.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl Permit ===

impl Drop for Permit {
    fn drop(&mut self) {
        self._slot.breaker.release(self.permit.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn queue_full_beyond_total_slots() {
        let b = Breaker::new(BreakerParams {
            queue_depth: 2,
            max_concurrency: 1,
            initial_capacity: 1,
        });
        let r: Vec<_> = (0..3).map(|_| b.reserve().unwrap()).collect();
        assert!(b.reserve().is_err());
        assert_eq!(b.in_flight(), 3);
        drop(r);
        assert_eq!(b.in_flight(), 0);
        assert!(b.reserve().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_fifo_and_permit_held_until_drop() {
        let b = Breaker::new(BreakerParams::for_container_concurrency(1));
        let first = b.reserve().unwrap().acquire().await;
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        for i in 0..3 {
            let r = b.reserve().unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let p = r.acquire().await;
                tx.send(i).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(p);
            });
            tokio::task::yield_now().await;
        }
        assert!(
            rx.try_recv().is_err(),
            "nobody admitted while the permit is held"
        );
        drop(first);
        let order: Vec<i32> = [rx.recv().await, rx.recv().await, rx.recv().await]
            .into_iter()
            .map(Option::unwrap)
            .collect();
        assert_eq!(order, vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn dropping_a_waiter_frees_its_slot() {
        let b = Breaker::new(BreakerParams::for_container_concurrency(1));
        let _held = b.reserve().unwrap().acquire().await;
        let waiting = b.reserve().unwrap();
        let fut = waiting.acquire();
        assert!(
            tokio::time::timeout(Duration::from_millis(5), fut)
                .await
                .is_err()
        );
        assert_eq!(b.in_flight(), 1);
    }

    #[tokio::test]
    async fn capacity_updates_grow_and_shrink() {
        let b = Breaker::new(BreakerParams {
            queue_depth: 10,
            max_concurrency: 10,
            initial_capacity: 0,
        });
        assert!(b.try_acquire().is_none());
        b.update_capacity(2);
        let p1 = b.try_acquire().unwrap();
        let p2 = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_none());
        // Shrink below what is executing: capacity comes back only as debt is paid.
        b.update_capacity(1);
        drop(p1);
        assert!(
            b.try_acquire().is_none(),
            "the returned permit paid the debt"
        );
        drop(p2);
        let p3 = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_none());
        drop(p3);
        // Growing while in debt cancels the debt first.
        let p4 = b.try_acquire().unwrap();
        b.update_capacity(0);
        b.update_capacity(1);
        drop(p4);
        assert!(b.try_acquire().is_some());
        assert_eq!(b.capacity(), 1);
        b.update_capacity(50);
        assert_eq!(b.capacity(), 10, "clamped to max_concurrency");
    }

    proptest::proptest! {
        /// Whatever sequence of acquires, releases and resizes, executing ≤ capacity once debt
        /// is settled, and slots never exceed queue_depth + max_concurrency.
        #[test]
        fn never_admits_more_than_capacity(ops in proptest::collection::vec(0u8..4, 1..200), cc in 1usize..6) {
            let b = Breaker::new(BreakerParams::for_container_concurrency(cc));
            let mut held: Vec<Permit> = Vec::new();
            let mut queued: Vec<Reservation> = Vec::new();
            let mut cap = cc;
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    0 => if let Some(p) = b.try_acquire() { held.push(p) },
                    1 => { if !held.is_empty() { held.remove(i % held.len()); } },
                    2 => { if let Ok(r) = b.reserve() { queued.push(r) } },
                    _ => { cap = i % (cc + 1); b.update_capacity(cap); },
                }
                proptest::prop_assert!(b.in_flight() <= 11 * cc);
                // While shrinking, permits already out may exceed the new capacity; new admissions
                // must not: if try_acquire succeeds now, executing must be within capacity.
                if let Some(p) = b.try_acquire() {
                    proptest::prop_assert!(held.len() < cap, "admitted {} with capacity {}", held.len() + 1, cap);
                    drop(p);
                }
            }
        }
    }
}
