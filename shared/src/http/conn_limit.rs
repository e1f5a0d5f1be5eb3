//! A bound on open client connections below the process's file-descriptor limit.
//!
//! Every accepted connection holds a descriptor; a flood of idle connections can take the
//! last one, and then nothing works: not new clients, not the proxies' own dials to the app or
//! to pods, not probes. So accepting stops short of the limit: a connection over
//! [`ConnectionLimit`] is accepted and closed at once (the client sees its connection closed
//! rather than a SYN left in the backlog), leaving a reserve of descriptors for upstream
//! connections, probes and files. All listeners of a process share one budget by default.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// The share of the descriptor limit kept for everything but client connections (upstream
/// dials, the pool, probes, files): a quarter, and at least [`MIN_RESERVE`].
const RESERVE_DIVISOR: usize = 4;
/// The smallest reserve, whatever the descriptor limit.
const MIN_RESERVE: usize = 64;
/// The descriptor limit assumed where `/proc/self/limits` cannot be read (Linux's default soft
/// limit).
const FALLBACK_NOFILE: usize = 1024;

/// A shared count of open client connections and its bound.
#[derive(Clone, Debug)]
pub struct ConnectionLimit(Arc<Count>);

#[derive(Debug)]
struct Count {
    open: AtomicUsize,
    max: usize,
}

/// One open connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnectionPermit(Arc<Count>);

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnectionLimit {
    /// A budget of `max` connections of its own.
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Count {
            open: AtomicUsize::new(0),
            max,
        }))
    }

    /// The process-wide budget: the soft descriptor limit less the reserve.
    pub fn process() -> Self {
        static PROCESS: OnceLock<ConnectionLimit> = OnceLock::new();
        PROCESS
            .get_or_init(|| Self::new(for_nofile(nofile())))
            .clone()
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.0.max
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.0.open.load(Ordering::Relaxed)
    }

    /// A place for one more connection, or `None` at the bound.
    pub fn try_acquire(&self) -> Option<ConnectionPermit> {
        self.0
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.0.max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionPermit(Arc::clone(&self.0)))
    }
}

/// The connection bound for a descriptor limit of `nofile`.
pub fn for_nofile(nofile: usize) -> usize {
    let reserve = (nofile / RESERVE_DIVISOR).max(MIN_RESERVE);
    nofile.saturating_sub(reserve).max(1)
}

/// The soft `RLIMIT_NOFILE`, read from `/proc/self/limits` (no `unsafe` getrlimit call).
pub fn nofile() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .and_then(|soft| soft.parse().ok())
        .unwrap_or(FALLBACK_NOFILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_keeps_a_reserve() {
        assert_eq!(for_nofile(1024), 768);
        assert_eq!(for_nofile(20_000), 15_000);
        assert_eq!(for_nofile(100), 36);
        assert!(nofile() >= 64);
        let l = ConnectionLimit::new(2);
        let a = l.try_acquire().unwrap();
        let _b = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none());
        drop(a);
        assert!(l.try_acquire().is_some());
    }
}
