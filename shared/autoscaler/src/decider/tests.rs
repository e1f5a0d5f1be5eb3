use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::config::Config;
use crate::spec::RevisionSettings;

fn s(x: u64) -> Duration {
    Duration::from_secs(x)
}

/// Default spec: total 100, target 70 (cc = 0), TBC 211, window 60 s.
fn spec() -> DeciderSpec {
    RevisionSettings::resolve(&Config::default(), &BTreeMap::new(), 0, true).decider
}

fn obs(stable: f64, panic: f64) -> Option<Observed> {
    Some(Observed { stable, panic })
}

#[test]
fn worked_example() {
    // §9: 3 ready, panic 450, stable 180.
    let mut d = Decider::new(spec(), s(1000), 1);
    let r = d.scale(s(1000), Some(3), obs(180.0, 450.0));
    assert_eq!(
        r,
        ScaleResult {
            desired_pod_count: 7,
            excess_burst_capacity: -361,
            scale_valid: true
        }
    );
    assert!(d.in_panic());
    // Lower panic values: held at 7.
    let r = d.scale(s(1002), Some(7), obs(180.0, 100.0));
    assert_eq!(r.desired_pod_count, 7);
    // Still held until 60 s after the last over-threshold tick (strictly after).
    let r = d.scale(s(1060), Some(7), obs(70.0, 70.0));
    assert_eq!(r.desired_pod_count, 7);
    assert!(d.in_panic());
    let r = d.scale(s(1061), Some(7), obs(70.0, 70.0));
    assert!(!d.in_panic());
    // Stable 1 pod, but max_down = floor(7/2) = 3.
    assert_eq!(r.desired_pod_count, 3);
}

#[test]
fn table() {
    // (ready, stable, panic, expected desired, expected ebc) on a fresh decider with 1 ready pod.
    let table: &[(i32, f64, f64, i32, i32)] = &[
        (1, 0.0, 0.0, 0, 100 - 211),
        (0, 0.0, 0.0, 0, -211), // raw ready in EBC
        (1, 70.0, 70.0, 1, 100 - 211 - 70),
        (1, 71.0, 71.0, 2, -182),            // 2/1 ≥ 2 → panic, want 2
        (10, 0.0, 0.0, 5, 1000 - 211),       // max_down = floor(10/2)
        (10, 7000.0, 0.0, 100, 789),         // ceil(7000/70) = 100 ≤ max_up 10000
        (1, 1e9, 1e9, 1000, -1_000_000_111), // max_up = ceil(1000·1)
        (0, 1e9, 1e9, 1000, -1_000_000_211), // ready_f = 1
    ];
    for &(ready, stable, panic, want, ebc) in table {
        let mut d = Decider::new(spec(), s(0), 1);
        let r = d.scale(s(0), Some(ready), obs(stable, panic));
        assert_eq!(
            (r.desired_pod_count, r.excess_burst_capacity),
            (want, ebc),
            "{ready} {stable} {panic}"
        );
    }
}

#[test]
fn invalid_without_data() {
    let mut d = Decider::new(spec(), s(0), 1);
    assert_eq!(d.scale(s(0), Some(1), None), ScaleResult::INVALID);
    assert_eq!(d.scale(s(0), None, obs(1.0, 1.0)), ScaleResult::INVALID);
}

#[test]
fn panic_entry_threshold_is_inclusive_and_uses_unclamped() {
    let mut sp = spec();
    sp.max_scale_up_rate = 1.5;
    let mut d = Decider::new(sp, s(0), 1);
    // dppc = ceil(700/70) = 10, ratio 10 ≥ 2 → panic; clamped to max_up = ceil(1.5·2) = 3.
    let r = d.scale(s(0), Some(2), obs(0.0, 700.0));
    assert!(d.in_panic());
    assert_eq!(r.desired_pod_count, 3);
    let mut d = Decider::new(spec(), s(0), 1);
    // Exactly 2×: ceil(280/70) = 4 over 2 ready → panic.
    d.scale(s(0), Some(2), obs(0.0, 280.0));
    assert!(d.in_panic());
    let mut d = Decider::new(spec(), s(0), 1);
    d.scale(s(0), Some(2), obs(0.0, 210.0));
    assert!(!d.in_panic(), "ceil(210/70) = 3 → 3/2 < 2");
}

#[test]
fn starts_in_panic_with_many_pods() {
    let mut d = Decider::new(spec(), s(100), 5);
    assert!(d.in_panic());
    // Held at 5 (max_panic_pods = ready0) until the stable window passes.
    let r = d.scale(s(102), Some(5), obs(0.0, 0.0));
    assert_eq!(r.desired_pod_count, 5);
    let r = d.scale(s(161), Some(5), obs(0.0, 0.0));
    assert!(!d.in_panic());
    assert_eq!(r.desired_pod_count, 2, "floor(5/2)");
    assert!(!Decider::new(spec(), s(0), 1).in_panic());
}

#[test]
fn activation_scale() {
    let mut sp = spec();
    sp.activation_scale = 3;
    sp.max_scale_up_rate = 1.1;
    let mut d = Decider::new(sp, s(0), 1);
    // dspc = 1 → raised to 3, above max_up = ceil(1.1) = 2.
    let r = d.scale(s(0), Some(1), obs(1.0, 1.0));
    assert_eq!(r.desired_pod_count, 3);
    // Zero load stays zero.
    let mut d = Decider::new(d.spec().clone(), s(0), 0);
    assert_eq!(d.scale(s(0), Some(0), obs(0.0, 0.0)).desired_pod_count, 0);
}

#[test]
fn scale_down_delay_and_reachability() {
    let mut sp = spec();
    sp.scale_down_delay = s(10);
    sp.max_scale_down_rate = 100.0;
    let mut d = Decider::new(sp.clone(), s(1000), 1);
    assert_eq!(
        d.scale(s(1000), Some(1), obs(700.0, 70.0))
            .desired_pod_count,
        10
    );
    // ready 10 (panic exits need stable window; keep panic off: panic/ready small)
    assert_eq!(
        d.scale(s(1002), Some(10), obs(70.0, 70.0))
            .desired_pod_count,
        10
    );
    assert_eq!(
        d.scale(s(1008), Some(10), obs(70.0, 70.0))
            .desired_pod_count,
        10
    );
    // 1010: index 505 − 500 = 5 ≥ size 5 → the 10 has expired.
    assert_eq!(
        d.scale(s(1010), Some(10), obs(70.0, 70.0))
            .desired_pod_count,
        1
    );
    // Unreachable: no delay, no lower rate limit.
    sp.reachable = false;
    sp.max_scale_down_rate = 2.0;
    let mut d = Decider::new(sp, s(1000), 1);
    d.scale(s(1000), Some(1), obs(700.0, 70.0));
    assert_eq!(
        d.scale(s(1002), Some(10), obs(0.0, 0.0)).desired_pod_count,
        0
    );
}

#[test]
fn ebc_modes() {
    for (tbc, want) in [(0.0, 0), (-1.0, -1), (100.0, 300 - 100 - 50)] {
        let mut sp = spec();
        sp.target_burst_capacity = tbc;
        let mut d = Decider::new(sp, s(0), 1);
        assert_eq!(
            d.scale(s(0), Some(3), obs(50.0, 50.0))
                .excess_burst_capacity,
            want
        );
    }
    // Flooring before conversion: 1·100 − 211 − 0.5 = −111.5 → −112.
    let mut d = Decider::new(spec(), s(0), 1);
    assert_eq!(
        d.scale(s(0), Some(1), obs(0.5, 0.5)).excess_burst_capacity,
        -112
    );
}

#[test]
fn status() {
    let mut sp = spec();
    assert_eq!(
        DeciderStatus::new(&sp),
        DeciderStatus {
            desired_scale: -1,
            excess_burst_capacity: -111
        }
    );
    sp.total_value = 100.5;
    sp.target_burst_capacity = 100.0;
    sp.initial_scale = 0;
    // int32(0·100.5 − 100) = −100, truncation.
    assert_eq!(DeciderStatus::new(&sp).excess_burst_capacity, -100);
    sp.target_burst_capacity = -1.0;
    assert_eq!(DeciderStatus::new(&sp).excess_burst_capacity, -1);
    let mut st = DeciderStatus::new(&spec());
    let r = |d, e| ScaleResult {
        desired_pod_count: d,
        excess_burst_capacity: e,
        scale_valid: true,
    };
    assert!(st.apply(r(1, -5)));
    assert!(!st.apply(r(1, -7)));
    assert_eq!(st.excess_burst_capacity, -7, "always overwritten");
    assert!(st.apply(r(1, 0)), "sign flip, 0 counts as positive");
    assert!(!st.apply(ScaleResult::INVALID));
    assert!(st.apply(r(0, 0)));
    assert!(st.wants_poke(1.0));
    assert!(!st.wants_poke(0.0));
}

proptest! {
    #[test]
    fn rates_respected(
        ready in 1i32..200,
        stable in 0.0f64..1e6,
        panic in 0.0f64..1e6,
        up in 1.01f64..20.0,
        down in 1.01f64..20.0,
    ) {
        let mut sp = spec();
        sp.max_scale_up_rate = up;
        sp.max_scale_down_rate = down;
        let mut d = Decider::new(sp, s(0), 1);
        let r = d.scale(s(10), Some(ready), obs(stable, panic));
        let f = f64::from(ready);
        prop_assert!(f64::from(r.desired_pod_count) <= (up * f).ceil());
        prop_assert!(f64::from(r.desired_pod_count) >= (f / down).floor());
        prop_assert!(r.desired_pod_count >= 0);
    }

    #[test]
    fn never_decreases_in_panic(loads in proptest::collection::vec(0.0f64..5000.0, 1..40)) {
        let mut d = Decider::new(spec(), s(0), 1);
        let mut prev: Option<i32> = None;
        for (i, l) in loads.iter().enumerate() {
            let r = d.scale(s(2 * i as u64), Some(2), obs(*l / 2.0, *l));
            if d.in_panic() && let Some(p) = prev {
                prop_assert!(r.desired_pod_count >= p);
            }
            prev = d.in_panic().then_some(r.desired_pod_count);
        }
    }
}
