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

// === Knative's own expectations (pkg/autoscaler/scaling autoscaler tests), restated ===
//
// Knative's unit tests presume 75% utilisation (total = target / 0.75), panic threshold 2,
// rates 10, a 60 s stable window, activator capacity 150, and a decider created with 1 ready pod.
// They compare the EBC with a ±1 tolerance.

fn kspec(target: f64, tbc: f64) -> DeciderSpec {
    DeciderSpec {
        max_scale_up_rate: 10.0,
        max_scale_down_rate: 10.0,
        scaling_metric: "concurrency".to_owned(),
        target_value: target,
        total_value: target / 0.75,
        target_burst_capacity: tbc,
        activator_capacity: 150.0,
        panic_threshold: 2.0,
        stable_window: s(60),
        scale_down_delay: Duration::ZERO,
        initial_scale: 1,
        reachable: true,
        activation_scale: 0,
    }
}

fn kebc(target: f64, tbc: f64, conc: f64, pods: f64) -> i32 {
    (target / 0.75 * pods - tbc - conc).floor() as i32
}

#[track_caller]
fn expect(
    d: &mut Decider,
    now: Duration,
    ready: i32,
    stable: f64,
    panic: f64,
    want: i32,
    ebc: i32,
) {
    let r = d.scale(now, Some(ready), obs(stable, panic));
    assert!(r.scale_valid);
    assert_eq!(r.desired_pod_count, want, "desired");
    assert!(
        (r.excess_burst_capacity - ebc).abs() <= 1,
        "ebc {} vs {ebc}",
        r.excess_burst_capacity
    );
}

#[test]
fn knative_scale_table() {
    struct Case {
        label: &'static str,
        target: f64,
        tbc: f64,
        stable: f64,
        panic: f64,
        ready: i32,
        prep: fn(&mut DeciderSpec),
        /// Start in panic 5 s ago with this many max panic pods.
        panicking: Option<i32>,
        want: i32,
        ebc: i32,
    }
    let none: fn(&mut DeciderSpec) = |_| {};
    let cases = [
        Case {
            label: "no data at zero",
            target: 10.0,
            tbc: 100.0,
            stable: 0.0,
            panic: 0.0,
            ready: 1,
            prep: none,
            panicking: None,
            want: 0,
            ebc: kebc(10.0, 100.0, 0.0, 1.0),
        },
        Case {
            label: "unlimited TBC",
            target: 181.0,
            tbc: -1.0,
            stable: 21.0,
            panic: 26.0,
            ready: 1,
            prep: none,
            panicking: None,
            want: 1,
            ebc: -1,
        },
        Case {
            label: "zero TBC",
            target: 10.0,
            tbc: 0.0,
            stable: 50.0,
            panic: 49.0,
            ready: 1,
            prep: none,
            panicking: None,
            want: 5,
            ebc: 0,
        },
        Case {
            label: "stable no change",
            target: 10.0,
            tbc: 100.0,
            stable: 50.0,
            panic: 50.0,
            ready: 1,
            prep: none,
            panicking: None,
            want: 5,
            ebc: kebc(10.0, 100.0, 50.0, 1.0),
        },
        Case {
            label: "panic, stable larger",
            target: 1.0,
            tbc: 100.0,
            stable: 50.0,
            panic: 30.0,
            ready: 5,
            prep: none,
            panicking: Some(5),
            want: 50,
            ebc: kebc(1.0, 100.0, 30.0, 5.0),
        },
        Case {
            label: "panic, panic larger",
            target: 1.0,
            tbc: 100.0,
            stable: 20.0,
            panic: 30.0,
            ready: 5,
            prep: none,
            panicking: Some(5),
            want: 30,
            ebc: kebc(1.0, 100.0, 30.0, 5.0),
        },
        Case {
            label: "already scaled",
            target: 10.0,
            tbc: 100.0,
            stable: 50.0,
            panic: 50.0,
            ready: 5,
            prep: none,
            panicking: None,
            want: 5,
            ebc: kebc(10.0, 100.0, 50.0, 5.0),
        },
        Case {
            label: "small scale-up rate",
            target: 1.0,
            tbc: 1982.0,
            stable: 3.0,
            panic: 3.1,
            ready: 2,
            prep: |s| s.max_scale_up_rate = 1.1,
            panicking: None,
            want: 3,
            ebc: kebc(1.0, 1982.0, 3.1, 2.0),
        },
        Case {
            label: "small scale-down rate",
            target: 10.0,
            tbc: 1982.0,
            stable: 1.0,
            panic: 1.0,
            ready: 100,
            prep: |s| s.max_scale_down_rate = 1.1,
            panicking: None,
            want: 90,
            ebc: kebc(10.0, 1982.0, 1.0, 100.0),
        },
        Case {
            label: "unreachable ignores scale-down rate",
            target: 10.0,
            tbc: 1982.0,
            stable: 1.0,
            panic: 1.0,
            ready: 100,
            prep: |s| {
                s.max_scale_down_rate = 1.1;
                s.reachable = false;
            },
            panicking: None,
            want: 1,
            ebc: kebc(10.0, 1982.0, 1.0, 100.0),
        },
        Case {
            label: "panic doubles pods",
            target: 10.0,
            tbc: 84.0,
            stable: 50.0,
            panic: 100.0,
            ready: 1,
            prep: none,
            panicking: None,
            want: 10,
            ebc: kebc(10.0, 84.0, 100.0, 1.0),
        },
    ];
    let now = s(10_000);
    for c in cases {
        let mut sp = kspec(c.target, c.tbc);
        (c.prep)(&mut sp);
        let mut d = match c.panicking {
            Some(p) => Decider::new(sp, now - s(5), p),
            None => Decider::new(sp, now, 1),
        };
        let r = d.scale(now, Some(c.ready), obs(c.stable, c.panic));
        assert_eq!(r.desired_pod_count, c.want, "{}", c.label);
        assert!(
            (r.excess_burst_capacity - c.ebc).abs() <= 1,
            "{}: ebc {} vs {}",
            c.label,
            r.excess_burst_capacity,
            c.ebc
        );
    }
}

#[test]
fn knative_scale_down_delay() {
    let mut sp = kspec(10.0, 100.0);
    sp.panic_threshold = 100.0;
    sp.scale_down_delay = s(300);
    let mut d = Decider::new(sp, s(0), 0);
    let m = |x: u64| s(60 * x);
    let st = |d: &mut Decider, t, c: f64| d.scale(t, Some(0), obs(c, c)).desired_pod_count;
    // Simple: held for the whole delay, dropped 2 s later.
    assert_eq!(st(&mut d, s(2), 40.0), 4);
    assert_eq!(st(&mut d, m(5), 0.0), 4);
    assert_eq!(st(&mut d, m(5) + s(2), 0.0), 0);
    // Gradual: the maximum scrolls out.
    assert_eq!(st(&mut d, m(9), 40.0), 4);
    assert_eq!(st(&mut d, m(10), 30.0), 4);
    assert_eq!(st(&mut d, m(11), 0.0), 4);
    assert_eq!(st(&mut d, m(14), 0.0), 3);
    assert_eq!(st(&mut d, m(15), 0.0), 0);
    // Zero delay scales down at once.
    let mut sp = kspec(10.0, 100.0);
    sp.panic_threshold = 100.0;
    let mut d = Decider::new(sp, s(0), 0);
    assert_eq!(st(&mut d, s(0), 40.0), 4);
    assert_eq!(st(&mut d, Duration::from_millis(500), 20.0), 2);
}

#[test]
fn knative_sequences() {
    let t0 = s(100_000);
    // Panic, then unpanic and scale down after the stable window.
    let mut d = Decider::new(kspec(10.0, 93.0), t0, 1);
    expect(
        &mut d,
        t0,
        1,
        100.0,
        100.0,
        10,
        kebc(10.0, 93.0, 100.0, 1.0),
    );
    expect(
        &mut d,
        t0,
        10,
        100.0,
        1000.0,
        100,
        kebc(10.0, 93.0, 1000.0, 10.0),
    );
    expect(
        &mut d,
        t0 + s(30),
        10,
        1.0,
        1.0,
        100,
        kebc(10.0, 93.0, 1.0, 10.0),
    );
    expect(
        &mut d,
        t0 + s(61),
        10,
        1.0,
        1.0,
        1,
        kebc(10.0, 93.0, 1.0, 10.0),
    );

    // Rate-limited scale up: ×10 per tick.
    let mut d = Decider::new(kspec(10.0, 61.0), t0, 1);
    expect(
        &mut d,
        t0,
        1,
        1000.0,
        1001.0,
        10,
        kebc(10.0, 61.0, 1001.0, 1.0),
    );
    expect(
        &mut d,
        t0,
        10,
        1000.0,
        1001.0,
        100,
        kebc(10.0, 61.0, 1001.0, 10.0),
    );

    // Rate-limited scale down: ÷10 per tick.
    let mut d = Decider::new(kspec(10.0, 61.0), t0, 1);
    expect(&mut d, t0, 100, 1.0, 1.0, 10, kebc(10.0, 61.0, 1.0, 100.0));
    expect(&mut d, t0, 10, 1.0, 1.0, 1, kebc(10.0, 61.0, 1.0, 10.0));

    // No ready pods: rates act as if 1.
    let mut d = Decider::new(kspec(10.0, 81.0), t0, 1);
    expect(
        &mut d,
        t0,
        0,
        1000.0,
        888.0,
        10,
        kebc(10.0, 81.0, 888.0, 0.0),
    );

    // Update the target.
    let mut d = Decider::new(kspec(10.0, 77.0), t0, 1);
    expect(
        &mut d,
        t0,
        1,
        100.0,
        101.0,
        10,
        kebc(10.0, 77.0, 101.0, 1.0),
    );
    let mut sp = kspec(1.0, 71.0);
    sp.activator_capacity = 21.0;
    d.update(sp);
    expect(
        &mut d,
        t0,
        10,
        100.0,
        101.0,
        100,
        kebc(1.0, 71.0, 101.0, 10.0),
    );

    // Unpanic after a slow increase.
    let mut d = Decider::new(kspec(1.0, 98.0), t0, 1);
    expect(&mut d, t0, 10, 11.0, 25.0, 25, kebc(1.0, 98.0, 25.0, 10.0));
    expect(
        &mut d,
        t0 + s(30),
        40,
        30.0,
        41.0,
        41,
        kebc(1.0, 98.0, 41.0, 40.0),
    );
    assert!(d.in_panic());
    expect(
        &mut d,
        t0 + s(62),
        55,
        50.0,
        56.0,
        50,
        kebc(1.0, 98.0, 56.0, 55.0),
    );
    assert!(!d.in_panic());

    // Extend the panic window while still surging.
    let mut d = Decider::new(kspec(1.0, 98.0), t0, 1);
    expect(&mut d, t0, 10, 11.0, 25.0, 25, kebc(1.0, 98.0, 25.0, 10.0));
    expect(
        &mut d,
        t0 + s(30),
        40,
        30.0,
        80.0,
        80,
        kebc(1.0, 98.0, 80.0, 40.0),
    );
    // Panic time moved to t0+30: still panicking at t0+90, not at t0+91.
    expect(
        &mut d,
        t0 + s(90),
        80,
        1.0,
        1.0,
        80,
        kebc(1.0, 98.0, 1.0, 80.0),
    );
    d.scale(t0 + s(91), Some(80), obs(1.0, 1.0));
    assert!(!d.in_panic());

    // Exponential growth tracked in panic mode, then stable.
    let mut d = Decider::new(kspec(1.0, 101.0), t0, 1);
    expect(&mut d, t0, 1, 6.0, 6.0, 6, kebc(1.0, 101.0, 6.0, 1.0));
    expect(&mut d, t0, 6, 36.0, 36.0, 36, kebc(1.0, 101.0, 36.0, 6.0));
    expect(
        &mut d,
        t0 + s(1),
        36,
        216.0,
        216.0,
        216,
        kebc(1.0, 101.0, 216.0, 36.0),
    );
    expect(
        &mut d,
        t0 + s(1),
        216,
        1296.0,
        1296.0,
        1296,
        kebc(1.0, 101.0, 1296.0, 216.0),
    );
    expect(
        &mut d,
        t0 + s(2),
        1296,
        1296.0,
        1296.0,
        1296,
        kebc(1.0, 101.0, 1296.0, 1296.0),
    );
}

#[test]
fn knative_start_in_panic_mode() {
    for ready in 0..2 {
        assert!(!Decider::new(kspec(100.0, 11.0), s(0), ready).in_panic());
    }
    let mut d = Decider::new(kspec(100.0, 11.0), s(0), 2);
    assert!(d.in_panic());
    // max_panic_pods = 2 holds the scale.
    assert_eq!(d.scale(s(2), Some(2), obs(10.0, 10.0)).desired_pod_count, 2);
}
