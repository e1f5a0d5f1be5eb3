//! The KPA reconciler's scaler side as pure logic (`kpa.scaler.scale`, `handleScaleToZero`,
//! `computeStatus`, SKS mode): bounds, initial scale, the scale-to-zero grace and retention
//! periods, and the PA's `Active` condition. See §7–§8.

use std::time::Duration;

use crate::spec::RevisionSettings;

/// Extra time beyond the progress deadline before an activating PA is given up on.
pub const ACTIVATION_TIMEOUT_BUFFER: Duration = Duration::from_secs(30);

/// The PA's `Active` condition status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Active {
    /// Activating (Unknown): waiting for pods to become ready.
    Activating,
    /// Active (True).
    Active,
    /// Inactive (False): scaled, or being scaled, to zero.
    Inactive,
}

/// The SKS mode: whether the activator is in the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pods serve directly.
    Serve,
    /// Requests go through the activator.
    Proxy,
}

/// What one reconcile decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalerOutput {
    /// The scaler's `want` (-1 = unknown; 0 may mean "about to scale to zero, not yet applied").
    pub want: i32,
    /// The replicas the Deployment should have now (changes only when the scaler applies).
    pub replicas: i32,
    /// The PA's Active condition after this reconcile.
    pub active: Active,
    /// The SKS mode after this reconcile.
    pub mode: Mode,
    /// When Knative would reconcile again at the latest, if it asked to be requeued.
    pub requeue_after: Option<Duration>,
}

/// Per-revision reconciler state: the PA conditions, SKS mode and Deployment replicas.
#[derive(Debug, Clone)]
pub struct Scaler {
    active: Active,
    active_since: Duration,
    scale_target_initialized: bool,
    mode: Mode,
    proxy_since: Option<Duration>,
    replicas: i32,
    desired_status: Option<i32>,
}

impl Scaler {
    /// A new PA at `now`: activating, SKS in Proxy, Deployment created with the initial scale.
    pub fn new(settings: &RevisionSettings, now: Duration) -> Self {
        Self {
            active: Active::Activating,
            active_since: now,
            scale_target_initialized: false,
            mode: Mode::Proxy,
            proxy_since: Some(now),
            replicas: settings.initial_scale,
            desired_status: None,
        }
    }

    /// The current Deployment replicas.
    pub fn replicas(&self) -> i32 {
        self.replicas
    }

    /// The PA's Active condition.
    pub fn active(&self) -> Active {
        self.active
    }

    /// The PA status `desired_scale` (`None` until first known).
    pub fn desired_status(&self) -> Option<i32> {
        self.desired_status
    }

    /// One reconcile at `now`: `desired` is the decider status's desired scale (-1 = unknown),
    /// `ebc` its excess burst capacity, `ready` the ready pods, and `activator_in_path` the result
    /// of the activator probe (true when the activator is known to be in the path; ignored when
    /// TBC = -1).
    pub fn reconcile(
        &mut self,
        s: &RevisionSettings,
        now: Duration,
        desired: i32,
        ebc: i32,
        ready: i32,
        activator_in_path: bool,
    ) -> ScalerOutput {
        let mut requeue: Option<Duration> = None;
        let mut enqueue = |d: Duration| requeue = Some(requeue.map_or(d, |r: Duration| r.min(d)));
        let want = self.scale(s, now, desired, activator_in_path, &mut enqueue);

        // SKS mode (step 6), after the scale decision read the old mode.
        let mode = if want > 0 && ebc >= 0 {
            Mode::Serve
        } else {
            Mode::Proxy
        };
        if mode != self.mode {
            self.mode = mode;
            self.proxy_since = (mode == Mode::Proxy).then_some(now);
        }
        self.compute_status(s, now, want, ready);
        ScalerOutput {
            want,
            replicas: self.replicas,
            active: self.active,
            mode: self.mode,
            requeue_after: requeue,
        }
    }

    fn scale(
        &mut self,
        s: &RevisionSettings,
        now: Duration,
        mut desired: i32,
        activator_in_path: bool,
        enqueue: &mut dyn FnMut(Duration),
    ) -> i32 {
        if desired < 0 && self.active != Active::Activating {
            return desired;
        }
        let (mut min, max) = s.scale_bounds();
        if s.initial_scale > 1 && !self.scale_target_initialized && s.decider.reachable {
            min = min.max(s.initial_scale);
        }
        if desired < min {
            desired = min;
        } else if max != 0 && desired > max {
            desired = max;
        }
        let (desired, apply) =
            self.handle_scale_to_zero(s, now, desired, activator_in_path, enqueue);
        if apply {
            self.replicas = desired;
        }
        desired
    }

    fn handle_scale_to_zero(
        &self,
        s: &RevisionSettings,
        now: Duration,
        desired: i32,
        activator_in_path: bool,
        enqueue: &mut dyn FnMut(Duration),
    ) -> (i32, bool) {
        if desired != 0 {
            return (desired, true);
        }
        if !s.enable_scale_to_zero {
            return (1, true);
        }
        let since = now.saturating_sub(self.active_since);
        match self.active {
            Active::Activating => {
                let timeout = s.progress_deadline + ACTIVATION_TIMEOUT_BUFFER;
                if since > timeout {
                    return (0, true);
                }
                enqueue(timeout);
                (-1, false)
            }
            Active::Active => {
                let sw = s.decider.stable_window;
                if since >= sw {
                    if self.mode == Mode::Proxy {
                        enqueue(Duration::from_secs(3));
                    }
                    return (0, false);
                }
                enqueue(sw - since);
                (1, true)
            }
            Active::Inactive => {
                let in_path = !s.scrapes() || activator_in_path;
                if !in_path {
                    enqueue(Duration::from_secs(1));
                    return (0, false);
                }
                let ret = if s.decider.reachable {
                    s.scale_to_zero_pod_retention_period
                } else {
                    Duration::ZERO
                };
                let grace = s.scale_to_zero_grace_period;
                if since >= grace.max(ret) {
                    return (0, true);
                }
                if ret > Duration::ZERO && since < ret {
                    enqueue(ret - since);
                    return (0, false);
                }
                let proxy_for = self
                    .proxy_since
                    .map_or(Duration::ZERO, |p| now.saturating_sub(p));
                if proxy_for >= grace {
                    return (0, true);
                }
                enqueue(grace - proxy_for);
                (0, false)
            }
        }
    }

    fn set_active(&mut self, a: Active, now: Duration) {
        if self.active != a {
            self.active = a;
            self.active_since = now;
        }
    }

    fn compute_status(&mut self, s: &RevisionSettings, now: Duration, want: i32, ready: i32) {
        if want >= 0 || self.desired_status.is_none_or(|d| d < 0) {
            self.desired_status = Some(want);
        }
        let (min, _) = s.scale_bounds();
        let min_ready = if self.scale_target_initialized {
            min.max(1)
        } else {
            min.max(s.initial_scale)
        };
        if ready >= min_ready {
            self.scale_target_initialized = true;
        }
        let inactive = self.active == Active::Inactive;
        if want == 0 || min_ready == 0 {
            self.set_active(Active::Inactive, now);
        } else if ready < min_ready {
            if want > 0 || !inactive {
                self.set_active(Active::Activating, now);
            }
        } else if want > 0 || !inactive {
            self.set_active(Active::Active, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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
        RevisionSettings::resolve(&Config::default(), &a, 0, true)
    }

    #[test]
    fn scale_to_zero_timeline() {
        let st = settings(&[]);
        let mut sc = Scaler::new(&st, s(0));
        // Unknown desired while activating: nothing applied, replicas stay at initial 1.
        let o = sc.reconcile(&st, s(0), -1, -111, 0, true);
        assert_eq!((o.want, o.replicas, o.active), (-1, 1, Active::Activating));
        // Pod ready and traffic: active.
        let o = sc.reconcile(&st, s(2), 1, -111, 1, true);
        assert_eq!((o.want, o.replicas, o.active), (1, 1, Active::Active));
        // Decider says 0 at t=10: hold 1 pod until a stable window (60 s) after becoming active.
        let o = sc.reconcile(&st, s(10), 0, -11, 1, true);
        assert_eq!((o.want, o.replicas, o.active), (1, 1, Active::Active));
        assert_eq!(o.requeue_after, Some(s(52)));
        let o = sc.reconcile(&st, s(61), 0, -11, 1, true);
        assert_eq!((o.want, o.replicas), (1, 1));
        // At 62 (≥ 60 s active): want 0, not applied; PA goes inactive, SKS to proxy.
        let o = sc.reconcile(&st, s(62), 0, -11, 1, true);
        assert_eq!(
            (o.want, o.replicas, o.active, o.mode),
            (0, 1, Active::Inactive, Mode::Proxy)
        );
        // Grace period (30 s) from inactive; SKS already in proxy since t=0 → applies at once.
        // (proxy_for ≥ grace short-circuits.)
        let o = sc.reconcile(&st, s(63), 0, -11, 1, true);
        assert_eq!(o.replicas, 0);
    }

    #[test]
    fn grace_measured_from_proxy() {
        let st = settings(&[("target-burst-capacity", "0")]);
        let mut sc = Scaler::new(&st, s(0));
        sc.reconcile(&st, s(0), 1, 0, 1, true);
        assert_eq!(sc.mode, Mode::Serve);
        let o = sc.reconcile(&st, s(100), 0, 0, 1, true);
        assert_eq!(
            (o.want, o.replicas, o.active, o.mode),
            (0, 1, Active::Inactive, Mode::Proxy)
        );
        for t in [101, 110, 129] {
            let o = sc.reconcile(&st, s(t), 0, 0, 1, true);
            assert_eq!(o.replicas, 1, "t={t}: still in grace");
            assert_eq!(o.want, 0);
        }
        let o = sc.reconcile(&st, s(130), 0, 0, 1, true);
        assert_eq!(o.replicas, 0, "grace is >=");
    }

    #[test]
    fn retention_and_probe() {
        let st = settings(&[("scale-to-zero-pod-retention-period", "90s")]);
        let mut sc = Scaler::new(&st, s(0));
        sc.reconcile(&st, s(0), 1, -1, 1, true);
        sc.reconcile(&st, s(60), 0, -1, 1, true); // inactive at 60
        assert_eq!(sc.active(), Active::Inactive);
        assert_eq!(sc.reconcile(&st, s(149), 0, -1, 1, true).replicas, 1);
        // Probe failing: never scales.
        assert_eq!(sc.reconcile(&st, s(150), 0, -1, 1, false).replicas, 1);
        assert_eq!(sc.reconcile(&st, s(150), 0, -1, 1, true).replicas, 0);
    }

    #[test]
    fn bounds_initial_and_disabled_scale_to_zero() {
        let st = settings(&[
            ("min-scale", "2"),
            ("max-scale", "5"),
            ("initial-scale", "4"),
        ]);
        let mut sc = Scaler::new(&st, s(0));
        assert_eq!(sc.replicas(), 4);
        // Keep initial scale until reached.
        assert_eq!(sc.reconcile(&st, s(0), 1, 0, 0, true).replicas, 4);
        assert_eq!(sc.reconcile(&st, s(2), 9, 0, 4, true).replicas, 5);
        assert_eq!(sc.reconcile(&st, s(4), 0, 0, 5, true).replicas, 2);
        let cfg = Config {
            enable_scale_to_zero: false,
            ..Config::default()
        };
        let st = RevisionSettings::resolve(&cfg, &BTreeMap::new(), 0, true);
        let mut sc = Scaler::new(&st, s(0));
        assert_eq!(sc.reconcile(&st, s(1000), 0, 0, 1, true).replicas, 1);
    }

    proptest::proptest! {
        /// Never below 1 while in grace: once the decider asked for pods, the last pod is kept for
        /// at least the grace period after that (TBC = 0, so the SKS serves whenever want > 0).
        #[test]
        fn never_zero_within_grace(desired in proptest::collection::vec(0i32..3, 1..200)) {
            let st = settings(&[("target-burst-capacity", "0")]);
            let grace = st.scale_to_zero_grace_period.as_secs();
            let mut sc = Scaler::new(&st, s(0));
            let mut ready = 0;
            let mut last_nonzero: Option<u64> = None;
            for (i, d) in desired.iter().enumerate() {
                let t = i as u64;
                if *d > 0 {
                    last_nonzero = Some(t);
                }
                let o = sc.reconcile(&st, s(t), *d, 0, ready, true);
                if o.replicas == 0 && let Some(ln) = last_nonzero {
                    proptest::prop_assert!(t >= ln + grace, "zero at {t}, last demand at {ln}");
                }
                proptest::prop_assert!(o.replicas >= 0);
                ready = o.replicas;
            }
        }

        /// The applied replicas always respect min/max-scale once a decision was applied.
        #[test]
        fn replicas_within_bounds(
            desired in proptest::collection::vec(-1i32..50, 1..100),
            min in 0i32..4,
            extra in 0i32..10,
        ) {
            let max = min + extra + 1;
            let (mn, mx) = (min.to_string(), max.to_string());
            let st = settings(&[("min-scale", &mn), ("max-scale", &mx)]);
            let mut sc = Scaler::new(&st, s(0));
            let mut ready = sc.replicas();
            for (i, d) in desired.iter().enumerate() {
                let o = sc.reconcile(&st, s(i as u64), *d, -1, ready, true);
                proptest::prop_assert!(o.replicas <= max);
                proptest::prop_assert!(o.replicas >= min);
                ready = o.replicas;
            }
        }
    }

    #[test]
    fn activation_timeout() {
        let st = settings(&[]);
        let mut sc = Scaler::new(&st, s(0));
        // Never ready: desired 1 keeps activating; decider 0 after the timeout (630 s) scales to 0.
        assert_eq!(sc.reconcile(&st, s(630), 0, 0, 0, true).want, -1);
        let o = sc.reconcile(&st, s(631), 0, 0, 0, true);
        assert_eq!((o.want, o.replicas, o.active), (0, 0, Active::Inactive));
    }
}
