//! The decision function (`scaling.autoscaler`): desired pods and excess burst capacity from
//! observed stable/panic load, with panic mode, rate limits, activation scale and scale-down
//! delay. See §6.

use std::time::Duration;

use crate::spec::DeciderSpec;
use crate::window::MaxTimeWindow;

/// Knative's decider tick interval (also the scale-down-delay window granularity).
pub const TICK_INTERVAL: Duration = Duration::from_secs(2);

/// A decision (`ScaleResult`). Invalid results are `{0, 0, false}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleResult {
    /// Desired pods (before the scaler's bounds and scale-to-zero gating).
    pub desired_pod_count: i32,
    /// Excess burst capacity; negative means the activator must stay in the path.
    pub excess_burst_capacity: i32,
    /// False when there was no data (or no pod count).
    pub scale_valid: bool,
}

impl ScaleResult {
    /// The invalid result.
    pub const INVALID: Self = Self {
        desired_pod_count: 0,
        excess_burst_capacity: 0,
        scale_valid: false,
    };
}

/// Observed revision-wide load, averaged over the stable and the panic window (metric units).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Observed {
    /// Stable-window average.
    pub stable: f64,
    /// Panic-window average.
    pub panic: f64,
}

/// One revision's decider state (Knative `autoscaler`).
#[derive(Debug, Clone)]
pub struct Decider {
    spec: DeciderSpec,
    panic_time: Option<Duration>,
    max_panic_pods: i32,
    delay_window: Option<MaxTimeWindow>,
}

impl Decider {
    /// A decider created at `now` with `ready_pods` ready. More than one ready pod starts in panic
    /// mode (protects the current scale after a restart).
    pub fn new(spec: DeciderSpec, now: Duration, ready_pods: i32) -> Self {
        let delay_window = (spec.scale_down_delay > Duration::ZERO)
            .then(|| MaxTimeWindow::new(spec.scale_down_delay, TICK_INTERVAL));
        Self {
            spec,
            panic_time: (ready_pods > 1).then_some(now),
            max_panic_pods: ready_pods,
            delay_window,
        }
    }

    /// Replaces the spec only; the scale-down-delay window is fixed at construction (§11.4).
    pub fn update(&mut self, spec: DeciderSpec) {
        self.spec = spec;
    }

    /// The current spec.
    pub fn spec(&self) -> &DeciderSpec {
        &self.spec
    }

    /// Whether the decider is in panic mode.
    pub fn in_panic(&self) -> bool {
        self.panic_time.is_some()
    }

    /// `Scale(now)`: `observed` is `None` when the collector has no data (→ invalid);
    /// `ready_pods` is the ready pod count (`None` for a pod-count error other than NotFound).
    pub fn scale(
        &mut self,
        now: Duration,
        ready_pods: Option<i32>,
        observed: Option<Observed>,
    ) -> ScaleResult {
        let Some(ready) = ready_pods else {
            return ScaleResult::INVALID;
        };
        let Some(Observed { stable, panic }) = observed else {
            return ScaleResult::INVALID;
        };
        let spec = &self.spec;
        let ready_f = f64::from(ready.max(1));

        let max_up = (spec.max_scale_up_rate * ready_f).ceil();
        let max_down = if spec.reachable {
            (ready_f / spec.max_scale_down_rate).floor()
        } else {
            0.0
        };

        let dspc = (stable / spec.target_value).ceil();
        let dppc = (panic / spec.target_value).ceil();
        let mut want_stable = dspc.max(max_down).min(max_up) as i32;
        let mut want_panic = dppc.max(max_down).min(max_up) as i32;
        if spec.activation_scale > 1 {
            if dspc > 0.0 && want_stable < spec.activation_scale {
                want_stable = spec.activation_scale;
            }
            if dppc > 0.0 && want_panic < spec.activation_scale {
                want_panic = spec.activation_scale;
            }
        }

        let over = dppc / ready_f >= spec.panic_threshold;
        if over {
            self.panic_time = Some(now);
        } else if let Some(pt) = self.panic_time
            && pt + spec.stable_window < now
        {
            self.panic_time = None;
            self.max_panic_pods = 0;
        }

        let mut want = want_stable;
        if self.panic_time.is_some() {
            want = want_stable.max(want_panic);
            if want > self.max_panic_pods {
                self.max_panic_pods = want;
            }
            want = self.max_panic_pods;
        }

        if spec.reachable
            && let Some(w) = &mut self.delay_window
        {
            w.record(now, want);
            want = w.current();
        }

        let tbc = spec.target_burst_capacity;
        let ebc = if tbc == 0.0 {
            0
        } else if tbc > 0.0 {
            (f64::from(ready) * spec.total_value - tbc - panic).floor() as i32
        } else {
            -1
        };
        ScaleResult {
            desired_pod_count: want,
            excess_burst_capacity: ebc,
            scale_valid: true,
        }
    }
}

/// What the KPA reconciler reads (`DeciderStatus`), maintained as the MultiScaler does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeciderStatus {
    /// Last desired scale; -1 = unknown yet.
    pub desired_scale: i32,
    /// Last excess burst capacity.
    pub excess_burst_capacity: i32,
}

impl DeciderStatus {
    /// The status of a new decider: desired -1, EBC = TBC for -1/0, else
    /// `int32(initial_scale × total − TBC)` (truncated, not floored).
    pub fn new(spec: &DeciderSpec) -> Self {
        let tbc = spec.target_burst_capacity;
        let ebc = if tbc == -1.0 || tbc == 0.0 {
            tbc as i32
        } else {
            (f64::from(spec.initial_scale) * spec.total_value - tbc) as i32
        };
        Self {
            desired_scale: -1,
            excess_burst_capacity: ebc,
        }
    }

    /// Applies a tick's result; returns whether the reconciler must be notified (desired changed
    /// or the EBC's sign flipped, 0 counting as positive). Invalid results change nothing.
    pub fn apply(&mut self, r: ScaleResult) -> bool {
        if !r.scale_valid {
            return false;
        }
        let changed = self.desired_scale != r.desired_pod_count
            || (self.excess_burst_capacity < 0) != (r.excess_burst_capacity < 0);
        self.desired_scale = r.desired_pod_count;
        self.excess_burst_capacity = r.excess_burst_capacity;
        changed
    }

    /// `Poke`: an activator stat with non-zero concurrency for a revision at 0 runs a tick at once.
    pub fn wants_poke(&self, average_concurrent_requests: f64) -> bool {
        self.desired_scale == 0 && average_concurrent_requests != 0.0
    }
}

#[cfg(test)]
mod tests;
