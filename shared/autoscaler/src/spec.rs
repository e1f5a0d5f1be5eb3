//! The effective per-revision settings, derived from config + annotations + containerConcurrency
//! as Knative's KPA reconciler does (`ResolveMetricTarget`, `MakeDecider`, `MakeMetric`,
//! `ScaleBounds`). See §3.3.

// `!(x >= lo)` is deliberate: NaN must fail every range check, as in Go.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::annotation::{self as ann, AnnotationErrors};
use crate::config::{Config, HPA_CLASS, KPA_CLASS};
use crate::goparse;
use crate::window::Algorithm;

/// The decider's per-revision parameters (Knative `DeciderSpec`). JSON uses snake_case with
/// durations in seconds (`stable_window_s`, `scale_down_delay_s`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeciderSpec {
    /// Per tick, desired ≤ ceil(rate × ready).
    pub max_scale_up_rate: f64,
    /// Per tick, desired ≥ floor(ready / rate) (only when reachable).
    pub max_scale_down_rate: f64,
    /// `"concurrency"` or `"rps"`; anything else is treated as concurrency.
    #[serde(default = "default_metric")]
    pub scaling_metric: String,
    /// Per-pod target (metric units).
    pub target_value: f64,
    /// Per-pod capacity (metric units).
    #[serde(default)]
    pub total_value: f64,
    /// -1 unlimited, 0 none, > 0 spare capacity to keep.
    #[serde(default)]
    pub target_burst_capacity: f64,
    /// Capacity of one activator.
    #[serde(default = "default_activator_capacity")]
    pub activator_capacity: f64,
    /// Panic threshold as a ratio (2.0 = 200%).
    #[serde(default)]
    pub panic_threshold: f64,
    /// The stable window (panic exit); 0 when omitted, as Go's zero value.
    #[serde(rename = "stable_window_s", with = "secs", default)]
    pub stable_window: Duration,
    /// Scale-down delay (0 = none).
    #[serde(rename = "scale_down_delay_s", with = "secs", default)]
    pub scale_down_delay: Duration,
    /// Initial scale (only used for the initial EBC).
    #[serde(default = "default_one")]
    pub initial_scale: i32,
    /// `pa.reachability != Unreachable`.
    #[serde(default = "default_true")]
    pub reachable: bool,
    /// Minimum non-zero scale (meaningful when ≥ 2).
    #[serde(default)]
    pub activation_scale: i32,
}

fn default_metric() -> String {
    "concurrency".to_owned()
}
fn default_activator_capacity() -> f64 {
    100.0
}
fn default_one() -> i32 {
    1
}
fn default_true() -> bool {
    true
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.subsec_nanos() == 0 {
            s.serialize_u64(d.as_secs())
        } else {
            s.serialize_f64(d.as_secs_f64())
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

impl DeciderSpec {
    /// True when the metric is RPS.
    pub fn is_rps(&self) -> bool {
        self.scaling_metric == "rps"
    }

    /// Checks what the decider needs to not produce nonsense (the reconciler always produces valid
    /// specs; a hand-written JSON spec may not).
    ///
    /// # Errors
    /// A message naming the offending field.
    pub fn check(&self) -> Result<(), String> {
        if !(self.target_value > 0.0) {
            return Err(format!(
                "target_value must be > 0, was {}",
                self.target_value
            ));
        }
        if !(self.max_scale_up_rate > 0.0) || !(self.max_scale_down_rate > 0.0) {
            return Err("max_scale_up_rate and max_scale_down_rate must be > 0".to_owned());
        }
        #[allow(clippy::float_cmp)]
        if !(self.target_burst_capacity >= 0.0 || self.target_burst_capacity == -1.0) {
            return Err("target_burst_capacity must be >= 0 or -1".to_owned());
        }
        // A stable window of 0 is accepted, as Knative's decider accepts it (its own scaling
        // tests leave it unset): panic mode then ends at the first tick below the threshold.
        Ok(())
    }
}

/// Everything the autoscaler needs for one revision: the decider spec, the metric windows, and
/// the scaler's bounds and scale-to-zero timings.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionSettings {
    /// The pod autoscaler class.
    pub class: String,
    /// The decider's spec.
    pub decider: DeciderSpec,
    /// The panic window (averagers).
    pub panic_window: Duration,
    /// The aggregation algorithm of the four averagers.
    pub algorithm: Algorithm,
    /// Lower bound (0 = none); forced to 0 while unreachable.
    pub min_scale: i32,
    /// Upper bound (0 = unbounded).
    pub max_scale: i32,
    /// Effective initial scale.
    pub initial_scale: i32,
    /// `enable-scale-to-zero`.
    pub enable_scale_to_zero: bool,
    /// `scale-to-zero-grace-period`.
    pub scale_to_zero_grace_period: Duration,
    /// Last-pod retention period (ignored while unreachable).
    pub scale_to_zero_pod_retention_period: Duration,
    /// Deployment progress deadline (activation timeout = this + 30 s).
    pub progress_deadline: Duration,
}

/// The default `config-deployment` progress deadline.
pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(600);

/// The panic window from a stable window and a percentage (§3.3): truncate to ns, round to the
/// second (ties away from zero), at least 1 s.
pub fn panic_window(stable_window: Duration, percentage: f64) -> Duration {
    let ns = (goparse::from_std(stable_window) as f64 * percentage / 100.0) as i64;
    let r = goparse::round_to_second(ns);
    goparse::to_std(r.max(1_000_000_000))
}

impl RevisionSettings {
    /// Validates the annotations as Knative's webhook does, then resolves the effective settings.
    /// `container_concurrency` is the revision's `containerConcurrency` (0 = unlimited).
    ///
    /// # Errors
    /// Every invalid annotation, each naming its key.
    pub fn from_annotations(
        config: &Config,
        annotations: &BTreeMap<String, String>,
        container_concurrency: i32,
    ) -> Result<Self, AnnotationErrors> {
        ann::validate(config, annotations)?;
        Ok(Self::resolve(
            config,
            annotations,
            container_concurrency,
            true,
        ))
    }

    /// Resolves the effective settings without validation; unparseable annotations fall back to
    /// the config (the reconciler's run-time behaviour, §11.10).
    pub fn resolve(
        config: &Config,
        a: &BTreeMap<String, String>,
        container_concurrency: i32,
        reachable: bool,
    ) -> Self {
        let class = ann::get_str(a, ann::CLASS)
            .unwrap_or(&config.pod_autoscaler_class)
            .to_owned();
        let metric = match ann::get_str(a, ann::METRIC) {
            Some(m) => m.to_owned(),
            None if class == KPA_CLASS => "concurrency".to_owned(),
            None if class == HPA_CLASS => "cpu".to_owned(),
            None => String::new(),
        };
        // ResolveMetricTarget.
        let (mut total, mut tu) = if metric == "rps" {
            (config.rps_target_default, config.target_utilization)
        } else {
            let t = if container_concurrency == 0 {
                config.container_concurrency_target_default
            } else {
                f64::from(container_concurrency)
            };
            (t, config.container_concurrency_target_fraction)
        };
        if let Some(t) = ann::get_float(a, ann::TARGET) {
            total = t;
            if metric == "concurrency" && container_concurrency != 0 {
                total = total.min(f64::from(container_concurrency));
            }
        }
        if let Some(p) = ann::get_float(a, ann::TARGET_UTILIZATION) {
            tu = p / 100.0;
        }
        let target = (total * tu).max(0.01);

        let stable_window =
            ann::get_duration(a, ann::WINDOW).map_or(config.stable_window, goparse::to_std);
        let pwp = ann::get_float(a, ann::PANIC_WINDOW_PERCENTAGE)
            .unwrap_or(config.panic_window_percentage);
        let threshold = ann::get_float(a, ann::PANIC_THRESHOLD_PERCENTAGE)
            .unwrap_or(config.panic_threshold_percentage)
            / 100.0;
        let tbc =
            ann::get_float(a, ann::TARGET_BURST_CAPACITY).unwrap_or(config.target_burst_capacity);
        let scale_down_delay = ann::get_duration(a, ann::SCALE_DOWN_DELAY)
            .map_or(config.scale_down_delay, goparse::to_std);
        let activation_scale = ann::get_int32(a, ann::ACTIVATION_SCALE).unwrap_or(0);
        let initial_scale = match ann::INITIAL_SCALE
            .get(a)
            .and_then(|(_, v)| goparse::parse_atoi(v))
        {
            None => config.initial_scale,
            Some(0) if !config.allow_zero_initial_scale => config.initial_scale,
            Some(v) => i32::try_from(v).unwrap_or(config.initial_scale),
        };
        let min_scale = ann::get_int32(a, ann::MIN_SCALE).unwrap_or(config.min_scale);
        let max_scale = ann::get_int32(a, ann::MAX_SCALE).unwrap_or(config.max_scale);
        let retention = ann::get_duration(a, ann::SCALE_TO_ZERO_POD_RETENTION_PERIOD)
            .map_or(config.scale_to_zero_pod_retention_period, goparse::to_std);
        let algorithm = match ann::get_str(a, ann::METRIC_AGGREGATION_ALGORITHM) {
            Some("weighted-exponential" | "weightedExponential") => Algorithm::WeightedExponential,
            _ => Algorithm::Linear,
        };
        let progress_deadline = a
            .get(ann::PROGRESS_DEADLINE)
            .and_then(|v| goparse::parse_duration(v))
            .map_or(DEFAULT_PROGRESS_DEADLINE, goparse::to_std);

        Self {
            class,
            decider: DeciderSpec {
                max_scale_up_rate: config.max_scale_up_rate,
                max_scale_down_rate: config.max_scale_down_rate,
                scaling_metric: metric,
                target_value: target,
                total_value: total,
                target_burst_capacity: tbc,
                activator_capacity: config.activator_capacity,
                panic_threshold: threshold,
                stable_window,
                scale_down_delay,
                initial_scale,
                reachable,
                activation_scale,
            },
            panic_window: panic_window(stable_window, pwp),
            algorithm,
            min_scale,
            max_scale,
            initial_scale,
            enable_scale_to_zero: config.enable_scale_to_zero,
            scale_to_zero_grace_period: config.scale_to_zero_grace_period,
            scale_to_zero_pod_retention_period: retention,
            progress_deadline,
        }
    }

    /// Settings around a hand-written decider spec: the panic window and the scaler's settings
    /// come from `config` (the `--spec` path of the simulator).
    pub fn from_decider_spec(config: &Config, decider: DeciderSpec) -> Self {
        let mut s = Self::resolve(config, &BTreeMap::new(), 0, decider.reachable);
        s.panic_window = panic_window(decider.stable_window, config.panic_window_percentage);
        s.initial_scale = decider.initial_scale;
        s.decider = decider;
        s
    }

    /// Whether the revision's pods are scraped (`scrape_target != ""`): false when TBC = -1.
    #[allow(clippy::float_cmp)]
    pub fn scrapes(&self) -> bool {
        self.decider.target_burst_capacity != -1.0
    }

    /// `(min, max)` as `ScaleBounds` (min forced to 0 while unreachable; 0 = unbounded max).
    pub fn scale_bounds(&self) -> (i32, i32) {
        let min = if self.decider.reachable {
            self.min_scale
        } else {
            0
        };
        (min, self.max_scale)
    }

    /// `num_activators` (§7 step 8) for `ready` pods.
    pub fn num_activators(&self, ready: i32) -> i32 {
        let d = &self.decider;
        if d.target_burst_capacity == 0.0 {
            return 2;
        }
        let n = ((f64::from(ready) * d.total_value + d.target_burst_capacity.max(0.0))
            / d.activator_capacity)
            .ceil();
        (n as i32).max(2)
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;

    fn ann(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (format!("{}{k}", ann::GROUP), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn targets() {
        let c = Config::default();
        // (annotations, containerConcurrency, metric, total, target)
        let table: &[(&[(&str, &str)], i32, &str, f64, f64)] = &[
            (&[], 0, "concurrency", 100.0, 70.0),
            (&[], 10, "concurrency", 10.0, 7.0),
            (&[("target", "50")], 10, "concurrency", 10.0, 7.0),
            (&[("target", "5")], 10, "concurrency", 5.0, 3.5),
            (&[("target", "5")], 0, "concurrency", 5.0, 3.5),
            (
                &[("target-utilization-percentage", "50")],
                0,
                "concurrency",
                100.0,
                50.0,
            ),
            (&[("metric", "rps")], 10, "rps", 200.0, 140.0),
            (
                &[("metric", "rps"), ("target", "500")],
                10,
                "rps",
                500.0,
                350.0,
            ),
            (&[("target", "0.001")], 0, "concurrency", 0.001, 0.01),
        ];
        for (kv, cc, metric, total, target) in table {
            let s = RevisionSettings::resolve(&c, &ann(kv), *cc, true);
            assert_eq!(s.decider.scaling_metric, *metric, "{kv:?}");
            assert!((s.decider.total_value - total).abs() < 1e-9, "{kv:?}");
            assert!(
                (s.decider.target_value - target).abs() < 1e-9,
                "{kv:?} {}",
                s.decider.target_value
            );
        }
    }

    #[test]
    fn windows_and_overrides() {
        let c = Config::default();
        assert_eq!(
            panic_window(Duration::from_secs(60), 10.0),
            Duration::from_secs(6)
        );
        assert_eq!(
            panic_window(Duration::from_secs(60), 51.0),
            Duration::from_secs(31)
        );
        assert_eq!(
            panic_window(Duration::from_secs(10), 10.0),
            Duration::from_secs(1)
        );
        assert_eq!(
            panic_window(Duration::from_secs(6), 1.0),
            Duration::from_secs(1)
        );
        let s = RevisionSettings::resolve(
            &c,
            &ann(&[
                ("window", "2m"),
                ("panicWindowPercentage", "25"),
                ("panic-threshold-percentage", "150"),
                ("target-burst-capacity", "0"),
                ("scale-down-delay", "10s"),
                ("activation-scale", "3"),
                ("initial-scale", "0"),
                ("min-scale", "x"),
                ("max-scale", "7"),
                ("metric-aggregation-algorithm", "weighted-exponential"),
            ]),
            0,
            true,
        );
        assert_eq!(s.decider.stable_window, Duration::from_secs(120));
        assert_eq!(s.panic_window, Duration::from_secs(30));
        assert!((s.decider.panic_threshold - 1.5).abs() < 1e-12);
        assert_eq!(s.decider.target_burst_capacity, 0.0);
        assert_eq!(s.decider.scale_down_delay, Duration::from_secs(10));
        assert_eq!(s.decider.activation_scale, 3);
        assert_eq!(
            s.initial_scale, 1,
            "zero initial scale not allowed falls back to config"
        );
        assert_eq!(
            (s.min_scale, s.max_scale),
            (0, 7),
            "invalid min-scale falls back"
        );
        assert_eq!(s.algorithm, Algorithm::WeightedExponential);
        assert_eq!(s.num_activators(10), 2);
    }

    #[test]
    fn from_annotations_rejects() {
        let e =
            RevisionSettings::from_annotations(&Config::default(), &ann(&[("window", "1s")]), 0)
                .unwrap_err();
        assert!(
            e.to_string().contains("autoscaling.knative.dev/window"),
            "{e}"
        );
    }

    #[test]
    fn spec_json_roundtrip() {
        let s = RevisionSettings::resolve(&Config::default(), &BTreeMap::new(), 0, true).decider;
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["stable_window_s"], 60);
        assert_eq!(j["panic_threshold"], 2.0);
        let back: DeciderSpec = serde_json::from_value(j).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn activators() {
        let s = RevisionSettings::resolve(&Config::default(), &BTreeMap::new(), 0, true);
        // ceil((10*100 + 211)/100) = 13
        assert_eq!(s.num_activators(10), 13);
        assert_eq!(s.num_activators(0), 3);
    }
}
