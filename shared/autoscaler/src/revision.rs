//! The per-revision facade: collector + decider + decider status + scaler, driven by the caller's
//! clock. This is what `activator local` embeds.

use std::time::Duration;

use crate::collector::{Collection, Stat, extrapolate};
use crate::decider::{Decider, DeciderStatus, Observed, TICK_INTERVAL};
use crate::scaler::{Active, Mode, Scaler};
use crate::spec::RevisionSettings;

/// One revision's autoscaler state. All times are `Duration`s since one epoch of the caller's
/// choosing (Unix time matches Knative's bucket alignment).
#[derive(Debug, Clone)]
pub struct RevisionAutoscaler {
    settings: RevisionSettings,
    collection: Collection,
    decider: Decider,
    status: DeciderStatus,
    scaler: Scaler,
    last_decision: Option<Duration>,
    poke_pending: bool,
    last: Snapshot,
}

/// What the autoscaler wants for a revision after a [`RevisionAutoscaler::tick`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    /// The Deployment replicas to run now: after the scaler's bounds, initial scale, activation
    /// scale and scale-to-zero grace/retention. This is what a scaler applies.
    pub desired_pods: i32,
    /// The decider's desired scale (-1 = unknown yet), before the scaler.
    pub decider_desired: i32,
    /// Excess burst capacity; negative means keep the activator in the path.
    pub excess_burst_capacity: i32,
    /// Whether the decider is in panic mode.
    pub panic: bool,
    /// Observed stable-window average of the scaling metric (revision total).
    pub stable: f64,
    /// Observed panic-window average of the scaling metric (revision total).
    pub panic_value: f64,
    /// Observed stable-window concurrency (revision total), whatever the metric.
    pub stable_concurrency: f64,
    /// Observed panic-window concurrency (revision total), whatever the metric.
    pub panic_concurrency: f64,
    /// The PA's Active condition.
    pub active: Active,
    /// Whether the activator should be in the request path (SKS Proxy mode).
    pub activator_in_path: bool,
    /// How many activators Knative would assign.
    pub num_activators: i32,
}

impl RevisionAutoscaler {
    /// A revision's autoscaler created at `now` with `ready_pods` ready.
    pub fn new(settings: RevisionSettings, now: Duration, ready_pods: i32) -> Self {
        let collection = Collection::new(
            settings.algorithm,
            settings.decider.stable_window,
            settings.panic_window,
            settings.scrapes(),
        );
        let decider = Decider::new(settings.decider.clone(), now, ready_pods);
        let status = DeciderStatus::new(&settings.decider);
        let scaler = Scaler::new(&settings, now);
        let last = Snapshot {
            desired_pods: scaler.replicas(),
            decider_desired: status.desired_scale,
            excess_burst_capacity: status.excess_burst_capacity,
            panic: decider.in_panic(),
            stable: 0.0,
            panic_value: 0.0,
            stable_concurrency: 0.0,
            panic_concurrency: 0.0,
            active: scaler.active(),
            activator_in_path: true,
            num_activators: settings.num_activators(ready_pods),
        };
        Self {
            settings,
            collection,
            decider,
            status,
            scaler,
            last_decision: None,
            poke_pending: false,
            last,
        }
    }

    /// The effective settings.
    pub fn settings(&self) -> &RevisionSettings {
        &self.settings
    }

    /// Replaces the settings (the revision's annotations or the config changed). Windows are
    /// resized keeping fresh data; the scale-down-delay window is not changed (as Knative).
    pub fn update(&mut self, settings: RevisionSettings, now: Duration) {
        self.collection.update(
            settings.decider.stable_window,
            settings.panic_window,
            settings.scrapes(),
            now,
        );
        self.decider.update(settings.decider.clone());
        self.settings = settings;
    }

    /// Records one scrape round: each pod's queue-proxy `Stat` (all ready pods, or a sample of
    /// them), extrapolated to `ready_pods`. Nothing is recorded when `stats` is empty.
    pub fn record_scrape(&mut self, now: Duration, stats: &[Stat], ready_pods: i32) {
        if let Some(s) = extrapolate(stats, ready_pods)
            && !s.is_empty()
        {
            self.collection.record(now, &s);
        }
    }

    /// Records the activator's report for this revision (concurrency and request count for its
    /// period). Returns true for a *poke*: the revision is at 0 and the report has concurrency, so
    /// the next [`tick`](Self::tick) decides at once (call it now to scale from zero promptly).
    pub fn record_activator(&mut self, now: Duration, stat: &Stat) -> bool {
        // Knative records activator stats at their whole-second timestamp.
        let t = Duration::from_secs(now.as_secs());
        self.collection.record(t, stat);
        let poke = self.status.wants_poke(stat.average_concurrent_requests);
        self.poke_pending |= poke;
        poke
    }

    /// Runs the autoscaler at `now`: the decider every [`TICK_INTERVAL`] (or at once after a poke),
    /// then the scaler. `ready_pods` is the number of ready pods; `activator_probe_ok` whether the
    /// activator is confirmed in the request path before the last pod is removed (Knative probes
    /// the public service; local mode, where the activator fronts every request, passes true).
    pub fn tick(&mut self, now: Duration, ready_pods: i32, activator_probe_ok: bool) -> Snapshot {
        let due = self.poke_pending
            || self
                .last_decision
                .is_none_or(|l| now.saturating_sub(l) >= TICK_INTERVAL);
        let conc = self.collection.stable_and_panic_concurrency(now).ok();
        if due {
            self.poke_pending = false;
            self.last_decision = Some(now);
            let observed = if self.settings.decider.is_rps() {
                self.collection.stable_and_panic_rps(now).ok()
            } else {
                conc
            };
            let observed = observed.map(|(stable, panic)| Observed { stable, panic });
            let r = self.decider.scale(now, Some(ready_pods), observed);
            self.status.apply(r);
            if let Some(o) = observed {
                self.last.stable = o.stable;
                self.last.panic_value = o.panic;
            }
        }
        let out = self.scaler.reconcile(
            &self.settings,
            now,
            self.status.desired_scale,
            self.status.excess_burst_capacity,
            ready_pods,
            activator_probe_ok,
        );
        let (sc, pc) = conc.unwrap_or((0.0, 0.0));
        self.last = Snapshot {
            desired_pods: out.replicas,
            decider_desired: self.status.desired_scale,
            excess_burst_capacity: self.status.excess_burst_capacity,
            panic: self.decider.in_panic(),
            stable_concurrency: sc,
            panic_concurrency: pc,
            active: out.active,
            activator_in_path: out.mode == Mode::Proxy,
            num_activators: self.settings.num_activators(ready_pods),
            ..self.last
        };
        self.last
    }

    /// The last snapshot (for status displays).
    pub fn snapshot(&self) -> Snapshot {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::config::Config;

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    fn settings(kv: &[(&str, &str)]) -> RevisionSettings {
        let a = kv
            .iter()
            .map(|(k, v)| (format!("autoscaling.knative.dev/{k}"), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>();
        RevisionSettings::from_annotations(&Config::default(), &a, 0).unwrap()
    }

    fn pod(c: f64) -> Stat {
        Stat {
            pod_name: "p".into(),
            average_concurrent_requests: c,
            request_count: c,
            ..Stat::default()
        }
    }

    #[test]
    fn scale_from_zero_poke_then_back_to_zero() {
        let t0 = 1_000_000;
        let mut r = RevisionAutoscaler::new(settings(&[]), s(t0), 0);
        // Initially: no data → decider unknown; deployment at initial scale 1 until it's known.
        let snap = r.tick(s(t0), 0, true);
        assert_eq!(snap.decider_desired, -1);
        // Idle: no pods, nothing scraped; the activator reports zeros, so the decider says 0.
        let mut t = t0;
        for _ in 0..5 {
            t += 1;
            r.record_activator(s(t), &Stat::default());
            r.tick(s(t), 0, true);
        }
        let snap = r.tick(s(t), 0, true);
        assert_eq!(snap.decider_desired, 0);
        // First request: poke.
        t += 1;
        let poked = r.record_activator(
            s(t),
            &Stat {
                average_concurrent_requests: 1.0,
                request_count: 1.0,
                ..Stat::default()
            },
        );
        assert!(poked);
        let snap = r.tick(s(t), 0, true);
        assert!(snap.desired_pods >= 1, "{snap:?}");
        assert!(snap.activator_in_path);
        // Pod ready, load continues for a while.
        for _ in 0..10 {
            t += 1;
            r.record_scrape(s(t), &[pod(1.0)], 1);
            let snap = r.tick(s(t), 1, true);
            assert_eq!(snap.desired_pods, 1);
            assert!(!snap.panic);
        }
        // Load stops: the stable average reaches 0 one stable window later; the PA has then been
        // active for over a stable window, so it goes inactive and the last pod goes after grace.
        let mut zero_at = None;
        for _ in 0..300 {
            t += 1;
            r.record_scrape(s(t), &[pod(0.0)], 1);
            let snap = r.tick(s(t), 1, true);
            if snap.desired_pods == 0 {
                zero_at = Some(t);
                break;
            }
        }
        let zero_at = zero_at.expect("scaled to zero");
        assert!(zero_at - t0 > 60, "not before a stable window of idleness");
    }

    #[test]
    fn scale_to_zero_timing() {
        // (annotations, seconds from inactive to zero)
        let table: &[(&[(&str, &str)], u64)] = &[
            // Serve mode (TBC 0): the grace period runs from the switch to proxy.
            (&[("target-burst-capacity", "0")], 30),
            // Retention longer than grace.
            (
                &[
                    ("target-burst-capacity", "0"),
                    ("scale-to-zero-pod-retention-period", "45s"),
                ],
                45,
            ),
            // Default TBC with one pod: the activator was in the path all along → next tick.
            (&[], 1),
        ];
        for (kv, want) in table {
            let mut r = RevisionAutoscaler::new(settings(kv), s(0), 1);
            let mut inactive_at = None;
            let mut zero_at = None;
            for t in 1..400u64 {
                let load = if t < 20 { 1.0 } else { 0.0 };
                r.record_scrape(s(t), &[pod(load)], 1);
                let snap = r.tick(s(t), 1, true);
                if snap.active == Active::Inactive && inactive_at.is_none() {
                    inactive_at = Some(t);
                }
                if snap.desired_pods == 0 {
                    zero_at = Some(t);
                    break;
                }
            }
            let (i, z) = (inactive_at.expect("inactive"), zero_at.expect("zero"));
            // The stable window (60 s) must see no load before the decider says 0.
            assert!(i >= 79, "{kv:?}: inactive at {i}");
            assert_eq!(z - i, *want, "{kv:?}");
        }
    }

    #[test]
    fn update_resizes_and_keeps_data() {
        let mut r = RevisionAutoscaler::new(settings(&[("target", "10")]), s(100), 1);
        for t in 101..=110 {
            r.record_scrape(s(t), &[pod(20.0)], 1);
            r.tick(s(t), 2, true);
        }
        r.update(settings(&[("target", "5"), ("window", "10s")]), s(110));
        assert_eq!(r.settings().panic_window, s(1));
        let snap = r.tick(s(112), 2, true);
        // Fresh data kept across the resize; the two trailing empty seconds are dropped from both
        // sum and count, so the average stays 20 → ceil(20 / (5 × 0.7)) = 6 pods.
        assert!((snap.stable_concurrency - 20.0).abs() < 1e-9, "{snap:?}");
        assert_eq!(snap.decider_desired, 6);
    }

    #[test]
    fn panic_scale_up_and_bounds() {
        let mut r =
            RevisionAutoscaler::new(settings(&[("max-scale", "5"), ("target", "10")]), s(100), 1);
        let mut t = 100;
        let mut last = r.snapshot();
        for _ in 0..10 {
            t += 1;
            r.record_scrape(s(t), &[pod(100.0)], 1);
            last = r.tick(s(t), 1, true);
        }
        assert!(last.panic);
        assert_eq!(last.desired_pods, 5);
        assert!(last.decider_desired > 5);
        assert!((last.panic_concurrency - 100.0).abs() < 1e-9);
    }

    proptest! {
        #[test]
        fn desired_within_bounds_and_never_zero_in_grace(
            loads in proptest::collection::vec(0.0f64..300.0, 1..120),
            min in 0i32..3,
            extra in 0i32..6,
        ) {
            let max = min + extra + 1;
            let min_s = min.to_string();
            let max_s = max.to_string();
            let st = settings(&[("min-scale", &min_s), ("max-scale", &max_s), ("target", "10")]);
            let grace = st.scale_to_zero_grace_period.as_secs();
            let mut r = RevisionAutoscaler::new(st, s(1000), 1);
            let mut ready = 1;
            let mut last_demand: Option<u64> = None;
            for (i, l) in loads.iter().enumerate() {
                let t = 1001 + i as u64;
                r.record_scrape(s(t), &[pod(*l)], ready.max(1));
                let snap = r.tick(s(t), ready, true);
                prop_assert!(snap.desired_pods <= max);
                prop_assert!(snap.desired_pods >= min);
                if snap.decider_desired > 0 {
                    last_demand = Some(t);
                }
                if snap.desired_pods == 0 {
                    prop_assert_eq!(snap.decider_desired, 0);
                    if let Some(d) = last_demand {
                        prop_assert!(t >= d + grace, "zero at {} within grace of demand at {}", t, d);
                    }
                }
                ready = snap.desired_pods;
            }
        }
    }
}
