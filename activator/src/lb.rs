//! Load-balancing picks (pure functions; mirrors `pkg/activator/net/lb_policy.go`).
//!
//! The policy is chosen from containerConcurrency: random choice of 2 for CC = 0, first
//! available for CC 1–3 (packs requests onto the lowest pods), round robin for CC > 3. Every pick
//! returns `None` on an empty set instead of panicking (Knative quirk §12.6).
//!
//! `try_take` reserves capacity on a target (the pod breaker's `try_acquire`) and returns the
//! lease; the picks never block.

use rand::Rng;

/// Which policy a revision uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// CC = 0: two random candidates, the one with fewer in-flight requests wins.
    RandomChoice2,
    /// CC 1–3: the first target (in dest order) with free capacity.
    FirstAvailable,
    /// CC > 3: the next target after the previous pick with free capacity.
    RoundRobin,
}

impl Policy {
    /// Knative's choice for `container_concurrency`.
    pub fn for_container_concurrency(cc: u32) -> Self {
        match cc {
            0 => Self::RandomChoice2,
            1..=3 => Self::FirstAvailable,
            _ => Self::RoundRobin,
        }
    }
}

/// Random choice of 2 by `weight` (in-flight count): returns the index to use.
pub fn random_choice_2(
    len: usize,
    weight: impl Fn(usize) -> usize,
    rng: &mut impl Rng,
) -> Option<usize> {
    match len {
        0 => None,
        1 => Some(0),
        _ => {
            // Two distinct indices (Floyd's trick for k = 2).
            let a = rng.random_range(0..len);
            let mut b = rng.random_range(0..len - 1);
            if b >= a {
                b += 1;
            }
            let (wa, wb) = (weight(a), weight(b));
            Some(if wa < wb {
                a
            } else if wb < wa {
                b
            } else if rng.random_bool(0.5) {
                a
            } else {
                b
            })
        }
    }
}

/// First available: the lowest index whose `try_take` succeeds.
pub fn first_available<T, L>(
    targets: &[T],
    mut try_take: impl FnMut(&T) -> Option<L>,
) -> Option<(usize, L)> {
    targets
        .iter()
        .enumerate()
        .find_map(|(i, t)| try_take(t).map(|l| (i, l)))
}

/// Round robin from `*cursor` (reset to 0 when past the end); the cursor moves past the pick.
pub fn round_robin<T, L>(
    targets: &[T],
    cursor: &mut usize,
    mut try_take: impl FnMut(&T) -> Option<L>,
) -> Option<(usize, L)> {
    let n = targets.len();
    if *cursor >= n {
        *cursor = 0;
    }
    for k in 0..n {
        let i = (*cursor + k) % n;
        if let Some(l) = try_take(&targets[i]) {
            *cursor = i + 1;
            return Some((i, l));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct Slot {
        cap: usize,
        used: Cell<usize>,
    }
    fn slots(caps: &[usize]) -> Vec<Slot> {
        caps.iter()
            .map(|&cap| Slot {
                cap,
                used: Cell::new(0),
            })
            .collect()
    }
    fn take(s: &Slot) -> Option<()> {
        (s.used.get() < s.cap).then(|| s.used.set(s.used.get() + 1))
    }

    #[test]
    fn policy_by_cc() {
        assert_eq!(Policy::for_container_concurrency(0), Policy::RandomChoice2);
        assert_eq!(Policy::for_container_concurrency(3), Policy::FirstAvailable);
        assert_eq!(Policy::for_container_concurrency(4), Policy::RoundRobin);
    }

    #[test]
    fn empty_sets_never_panic() {
        let mut rng = rand::rng();
        assert_eq!(random_choice_2(0, |_| 0, &mut rng), None);
        assert!(first_available(&slots(&[]), take).is_none());
        let mut c = 5;
        assert!(round_robin(&slots(&[]), &mut c, take).is_none());
    }

    #[test]
    fn random_choice_two_targets_both_get_traffic() {
        let mut rng = rand::rng();
        let mut hits = [0; 2];
        for _ in 0..100 {
            hits[random_choice_2(2, |_| 0, &mut rng).unwrap()] += 1;
        }
        assert!(hits[0] > 0 && hits[1] > 0, "{hits:?}");
    }

    #[test]
    fn random_choice_avoids_the_loaded_target() {
        let mut rng = rand::rng();
        for _ in 0..50 {
            // Two targets: they are the two candidates, the lighter one wins.
            assert_eq!(
                random_choice_2(2, |i| if i == 0 { 5 } else { 0 }, &mut rng),
                Some(1)
            );
        }
        assert_eq!(random_choice_2(1, |_| 9, &mut rng), Some(0));
    }

    #[test]
    fn first_available_packs_and_reports_full() {
        let s = slots(&[1]);
        assert!(first_available(&s, take).is_some());
        assert!(
            first_available(&s, take).is_none(),
            "a full single tracker gives none"
        );
        let s = slots(&[1, 1]);
        assert_eq!(first_available(&s, take).map(|p| p.0), Some(0));
        assert_eq!(first_available(&s, take).map(|p| p.0), Some(1));
        let s = slots(&[3, 3, 3]);
        for _ in 0..3 {
            assert_eq!(
                first_available(&s, take).map(|p| p.0),
                Some(0),
                "cc=3 packs the lowest pod"
            );
        }
    }

    #[test]
    fn round_robin_advances_wraps_and_skips_full() {
        let s = slots(&[1, 1]);
        let mut c = 0;
        assert_eq!(round_robin(&s, &mut c, take).map(|p| p.0), Some(0));
        assert_eq!(round_robin(&s, &mut c, take).map(|p| p.0), Some(1));
        assert!(round_robin(&s, &mut c, take).is_none(), "full set");
        s[0].used.set(0); // a freed slot is reused
        assert_eq!(round_robin(&s, &mut c, take).map(|p| p.0), Some(0));
        // A shrunk list resets the cursor.
        let mut c = 7;
        let s = slots(&[2, 2, 2]);
        assert_eq!(round_robin(&s, &mut c, take).map(|p| p.0), Some(0));
        // cc=2: skips full pods and wraps.
        s[1].used.set(2);
        assert_eq!(round_robin(&s, &mut c, take).map(|p| p.0), Some(2));
        assert_eq!(round_robin(&s, &mut c, take).map(|p| p.0), Some(0));
        assert_eq!(round_robin(&s, &mut c, take).map(|p| p.0), Some(2));
        assert!(round_robin(&s, &mut c, take).is_none());
    }
}
