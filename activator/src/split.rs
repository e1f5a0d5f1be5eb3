//! Traffic splits: one host routed to several revisions by percent (Knative `spec.traffic`).
//!
//! Knative's ingress picks a revision per request at random by weight. We pick by a smooth
//! weighted round robin (nginx's algorithm) precomputed into a 100-slot table, so any 100
//! consecutive requests follow the percentages exactly and interleave (80/20 gives
//! `a a a a b a a a a b …`, not 80 `a`s then 20 `b`s). Deterministic routing keeps a
//! 1,000-request check of an 80/20 split exact instead of "within a few percent, usually".

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::catalog::RevisionKey;

/// A weighted set of revisions behind one host.
#[derive(Debug)]
pub struct TrafficSplit {
    targets: Vec<(RevisionKey, u32)>,
    /// Index into `targets` for each of 100 (or sum-of-weights) consecutive requests.
    table: Vec<usize>,
    cursor: AtomicUsize,
}

/// A split needs at least one target with a positive weight.
#[derive(Debug, thiserror::Error)]
#[error("a traffic split needs at least one target with percent > 0")]
pub struct EmptySplit(());

impl TrafficSplit {
    /// A split over `targets` (revision, percent). Targets at 0 % are kept for display but never
    /// picked. Weights need not sum to 100; each target gets `weight / sum` of the requests.
    ///
    /// # Errors
    /// [`EmptySplit`] when no weight is positive.
    pub fn new(targets: Vec<(RevisionKey, u32)>) -> Result<Self, EmptySplit> {
        let table = smooth_wrr(&targets.iter().map(|(_, w)| *w).collect::<Vec<_>>());
        if table.is_empty() {
            return Err(EmptySplit(()));
        }
        Ok(Self {
            targets,
            table,
            cursor: AtomicUsize::new(0),
        })
    }

    /// The next revision for a request.
    pub fn pick(&self) -> &RevisionKey {
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        &self.targets[self.table[n % self.table.len()]].0
    }

    /// The targets and their weights, as configured.
    pub fn targets(&self) -> &[(RevisionKey, u32)] {
        &self.targets
    }
}

impl PartialEq for TrafficSplit {
    /// Equal when the targets are; the cursor is runtime state.
    fn eq(&self, other: &Self) -> bool {
        self.targets == other.targets
    }
}

/// One cycle of smooth weighted round robin: every index `i` appears `weights[i]` times (after
/// dividing all weights by their gcd), spread as evenly as the weights allow.
fn smooth_wrr(weights: &[u32]) -> Vec<usize> {
    let g = weights.iter().fold(0, |a, &b| gcd(a, b));
    if g == 0 {
        return Vec::new();
    }
    let w: Vec<i64> = weights.iter().map(|&x| i64::from(x / g)).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut table = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        for (c, wi) in current.iter_mut().zip(&w) {
            *c += wi;
        }
        let best = (0..w.len())
            .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
            .unwrap_or(0);
        current[best] -= total;
        table.push(best);
    }
    table
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> RevisionKey {
        RevisionKey::new("default", n)
    }

    #[test]
    fn exact_shares_over_whole_cycles() {
        for (wa, wb) in [(80, 20), (50, 50), (99, 1), (33, 67), (100, 0)] {
            let s = TrafficSplit::new(vec![(key("a"), wa), (key("b"), wb)]).unwrap();
            let a = (0..1000).filter(|_| s.pick() == &key("a")).count();
            assert_eq!(a, usize::try_from(wa * 10).unwrap(), "{wa}/{wb}");
        }
    }

    #[test]
    fn interleaves_instead_of_bursting() {
        let s = TrafficSplit::new(vec![(key("a"), 80), (key("b"), 20)]).unwrap();
        let picks: Vec<bool> = (0..10).map(|_| s.pick() == &key("b")).collect();
        // Two `b`s in any 10 requests, never adjacent.
        assert_eq!(picks.iter().filter(|b| **b).count(), 2);
        assert!(!picks.windows(2).any(|w| w[0] && w[1]), "{picks:?}");
    }

    #[test]
    fn zero_weights_are_never_picked_and_all_zero_is_an_error() {
        let s = TrafficSplit::new(vec![(key("a"), 0), (key("b"), 100)]).unwrap();
        assert!((0..50).all(|_| s.pick() == &key("b")));
        assert!(TrafficSplit::new(vec![(key("a"), 0)]).is_err());
        assert!(TrafficSplit::new(vec![]).is_err());
    }

    #[test]
    fn three_way_split() {
        let s = TrafficSplit::new(vec![(key("a"), 50), (key("b"), 30), (key("c"), 20)]).unwrap();
        let mut n = [0; 3];
        for _ in 0..100 {
            let k = s.pick().clone();
            n[usize::from(k.name.as_bytes()[0] - b'a')] += 1;
        }
        assert_eq!(n, [50, 30, 20]);
    }
}
