//! Per-revision `autoscaling.knative.dev/*` annotations: keys (with legacy aliases), the webhook's
//! validation (`ValidateAnnotations`, errors accumulated), and the lenient run-time getters.
//!
//! Mirrors `pkg/apis/autoscaling/register.go` and `annotation_validation.go`. See §3.2.

use std::collections::BTreeMap;

use crate::config::{Config, HPA_CLASS, KPA_CLASS};
use crate::goparse::{self, GoDuration};

/// The annotation group prefix.
pub const GROUP: &str = "autoscaling.knative.dev/";

/// One annotation: the canonical key first, then legacy aliases (lookup takes the first present).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnotationKey {
    /// Keys in priority order, fully qualified.
    pub keys: &'static [&'static str],
}

impl AnnotationKey {
    /// The canonical (first) key.
    pub fn canonical(&self) -> &'static str {
        self.keys[0]
    }

    /// The first key present and its value (Knative `kmap.KeyPriority.Get`).
    pub fn get<'a>(
        &self,
        annotations: &'a BTreeMap<String, String>,
    ) -> Option<(&'static str, &'a str)> {
        self.keys
            .iter()
            .find_map(|k| annotations.get(*k).map(|v| (*k, v.as_str())))
    }
}

macro_rules! keys {
    ($($(#[$m:meta])* $name:ident = [$($k:literal),+];)*) => {
        $( $(#[$m])* pub const $name: AnnotationKey = AnnotationKey { keys: &[$(concat!("autoscaling.knative.dev/", $k)),+] }; )*
        /// Every annotation this crate reads, in declaration order.
        pub const ALL: &[AnnotationKey] = &[$($name),*];
    };
}

keys! {
    /// `class`: the pod autoscaler class.
    CLASS = ["class"];
    /// `metric`: `concurrency` or `rps` for KPA.
    METRIC = ["metric"];
    /// `target`: per-pod total for the metric.
    TARGET = ["target"];
    /// `target-utilization-percentage`.
    TARGET_UTILIZATION = ["target-utilization-percentage", "targetUtilizationPercentage"];
    /// `target-burst-capacity`.
    TARGET_BURST_CAPACITY = ["target-burst-capacity", "targetBurstCapacity"];
    /// `window`: the stable window.
    WINDOW = ["window"];
    /// `panic-window-percentage`.
    PANIC_WINDOW_PERCENTAGE = ["panic-window-percentage", "panicWindowPercentage"];
    /// `panic-threshold-percentage`.
    PANIC_THRESHOLD_PERCENTAGE = ["panic-threshold-percentage", "panicThresholdPercentage"];
    /// `min-scale`.
    MIN_SCALE = ["min-scale", "minScale"];
    /// `max-scale`.
    MAX_SCALE = ["max-scale", "maxScale"];
    /// `initial-scale`.
    INITIAL_SCALE = ["initial-scale", "initialScale"];
    /// `activation-scale`.
    ACTIVATION_SCALE = ["activation-scale"];
    /// `scale-down-delay`.
    SCALE_DOWN_DELAY = ["scale-down-delay", "scaleDownDelay"];
    /// `scale-to-zero-pod-retention-period`.
    SCALE_TO_ZERO_POD_RETENTION_PERIOD = ["scale-to-zero-pod-retention-period", "scaleToZeroPodRetentionPeriod"];
    /// `metric-aggregation-algorithm`.
    METRIC_AGGREGATION_ALGORITHM = ["metric-aggregation-algorithm", "metricAggregationAlgorithm"];
}

/// `serving.knative.dev/progress-deadline` (not in the autoscaling group, but read by the scaler).
pub const PROGRESS_DEADLINE: &str = "serving.knative.dev/progress-deadline";

/// Every fully-qualified key this crate understands (canonical and legacy), so callers can warn
/// about unknown `autoscaling.knative.dev/*` annotations.
pub fn known_keys() -> impl Iterator<Item = &'static str> {
    ALL.iter().flat_map(|a| a.keys.iter().copied())
}

/// `autoscaling.knative.dev/*` keys in `annotations` that this crate does not know.
pub fn unknown_keys(annotations: &BTreeMap<String, String>) -> Vec<&str> {
    annotations
        .keys()
        .filter(|k| k.starts_with(GROUP) && !known_keys().any(|kk| kk == k.as_str()))
        .map(String::as_str)
        .collect()
}

/// One invalid annotation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}: {key}")]
pub struct AnnotationError {
    /// The fully-qualified annotation key as written.
    pub key: String,
    /// What was wrong and what is allowed.
    pub message: String,
}

/// All invalid annotations of a revision, sorted by message text (as Knative's `FieldError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct AnnotationErrors(pub Vec<AnnotationError>);

impl AnnotationErrors {
    /// The offending keys.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|e| e.key.as_str())
    }
}

// === typed lenient getters (run time: invalid → None, i.e. fall back to config) ===

pub(crate) fn get_float(a: &BTreeMap<String, String>, k: AnnotationKey) -> Option<f64> {
    k.get(a).and_then(|(_, v)| goparse::parse_float(v))
}
pub(crate) fn get_int32(a: &BTreeMap<String, String>, k: AnnotationKey) -> Option<i32> {
    k.get(a).and_then(|(_, v)| goparse::parse_int32(v))
}
pub(crate) fn get_duration(a: &BTreeMap<String, String>, k: AnnotationKey) -> Option<GoDuration> {
    k.get(a).and_then(|(_, v)| goparse::parse_duration(v))
}
pub(crate) fn get_str(a: &BTreeMap<String, String>, k: AnnotationKey) -> Option<&str> {
    k.get(a).map(|(_, v)| v)
}

const SEC: GoDuration = 1_000_000_000;
const HOUR: GoDuration = 3600 * SEC;

/// The webhook's `ValidateAnnotations(ctx, config, annotations)`.
///
/// # Errors
/// Every invalid annotation, each naming its key and the allowed range.
pub fn validate(
    config: &Config,
    annotations: &BTreeMap<String, String>,
) -> Result<(), AnnotationErrors> {
    let mut errs: Vec<AnnotationError> = Vec::new();
    let mut push = |key: &str, message: String| {
        errs.push(AnnotationError {
            key: key.to_owned(),
            message,
        });
    };

    // class
    let class_ann = CLASS.get(annotations);
    if let Some((k, v)) = class_ann
        && v.ends_with(".knative.dev")
        && v != KPA_CLASS
        && v != HPA_CLASS
    {
        push(
            k,
            format!("invalid value {v:?}, allowed: {KPA_CLASS}, {HPA_CLASS}"),
        );
    }
    let class = class_ann.map_or(config.pod_autoscaler_class.as_str(), |(_, v)| v);

    // metric
    if let Some((k, v)) = METRIC.get(annotations) {
        if class == KPA_CLASS && v != "concurrency" && v != "rps" {
            push(
                k,
                format!("invalid value {v:?}, allowed for class kpa: concurrency, rps"),
            );
        } else if class == HPA_CLASS && v.is_empty() {
            push(
                k,
                "invalid empty value, a metric is required for class hpa".to_owned(),
            );
        }
    }

    let float_in = |push: &mut dyn FnMut(&str, String), key: AnnotationKey, lo: f64, hi: f64| {
        if let Some((k, v)) = key.get(annotations) {
            match goparse::parse_float(v) {
                None => push(
                    k,
                    format!("invalid value {v:?}: expected a number in [{lo}, {hi}]"),
                ),
                Some(f) if !(lo..=hi).contains(&f) => {
                    push(k, format!("expected {lo} <= {v} <= {hi}"));
                }
                Some(_) => {}
            }
        }
    };
    float_in(&mut push, TARGET, 0.01, f64::INFINITY);
    float_in(&mut push, TARGET_UTILIZATION, 1.0, 100.0);
    float_in(&mut push, PANIC_WINDOW_PERCENTAGE, 1.0, 100.0);
    float_in(&mut push, PANIC_THRESHOLD_PERCENTAGE, 110.0, 1000.0);

    if let Some((k, v)) = TARGET_BURST_CAPACITY.get(annotations) {
        match goparse::parse_float(v) {
            #[allow(clippy::float_cmp)]
            Some(f) if f >= 0.0 || f == -1.0 => {}
            _ => push(
                k,
                format!("invalid value {v:?}: must be a number >= 0, or -1 (unlimited)"),
            ),
        }
    }

    if let Some((k, v)) = WINDOW.get(annotations) {
        match goparse::parse_duration(v) {
            None => push(
                k,
                format!("invalid value {v:?}: expected a duration in [6s, 1h]"),
            ),
            Some(d) if !(6 * SEC..=HOUR).contains(&d) => {
                push(k, format!("expected 6s <= {v} <= 1h0m0s"));
            }
            Some(d) if goparse::truncate_to_second(d) != d => {
                push(
                    k,
                    format!("invalid value {v:?}: must be a whole number of seconds"),
                );
            }
            Some(_) => {}
        }
    }

    // min/max scale
    let mut min = 0i32;
    let min_ann = MIN_SCALE.get(annotations);
    if let Some((k, v)) = min_ann {
        match goparse::parse_int32(v) {
            Some(m) if m >= 0 => min = m,
            _ => push(
                k,
                format!("invalid value {v:?}: expected an integer in [0, 2147483647]"),
            ),
        }
    }
    let mut max = 0i32;
    let max_ann = MAX_SCALE.get(annotations);
    if let Some((k, v)) = max_ann {
        match goparse::parse_int32(v) {
            Some(m) if m >= 0 => {
                max = m;
                if config.max_scale_limit > 0 && (m == 0 || m > config.max_scale_limit) {
                    push(
                        k,
                        format!(
                            "expected 1 <= {v} <= {} (max-scale-limit)",
                            config.max_scale_limit
                        ),
                    );
                }
            }
            _ => push(
                k,
                format!("invalid value {v:?}: expected an integer in [0, 2147483647]"),
            ),
        }
    }
    if min_ann.is_some()
        && let Some((k, _)) = max_ann
        && max != 0
        && max < min
    {
        push(k, format!("max-scale={max} is less than min-scale={min}"));
    }

    if let Some((k, v)) = INITIAL_SCALE.get(annotations) {
        match goparse::parse_atoi(v) {
            Some(i) if i > 0 || (i == 0 && config.allow_zero_initial_scale) => {}
            Some(0) => push(
                k,
                "invalid value 0: allowed only when allow-zero-initial-scale is true".to_owned(),
            ),
            _ => push(
                k,
                format!(
                    "invalid value {v:?}: expected an integer >= 1 (0 with allow-zero-initial-scale)"
                ),
            ),
        }
    }

    if let Some((k, v)) = ACTIVATION_SCALE.get(annotations) {
        // The bounds are the effective ones (annotation if it parses, else config).
        let eff_min = get_int32(annotations, MIN_SCALE).unwrap_or(config.min_scale);
        let eff_max = get_int32(annotations, MAX_SCALE).unwrap_or(config.max_scale);
        match goparse::parse_int32(v) {
            None => push(k, format!("invalid value {v:?}: expected an integer >= 2")),
            Some(a) if a < eff_min => {
                push(
                    k,
                    format!("activation-scale={a} must be >= min-scale={eff_min}"),
                );
            }
            Some(a) if eff_max != 0 && a > eff_max => {
                push(
                    k,
                    format!("activation-scale={a} must be <= max-scale={eff_max}"),
                );
            }
            Some(a) if a < 2 => push(k, format!("expected 2 <= {a}")),
            Some(_) => {}
        }
    }

    if let Some((k, v)) = SCALE_DOWN_DELAY.get(annotations) {
        match goparse::parse_duration(v) {
            None => push(
                k,
                format!("invalid value {v:?}: expected a duration in [0s, 1h]"),
            ),
            Some(d) if !(0..=HOUR).contains(&d) => push(k, format!("expected 0s <= {v} <= 1h0m0s")),
            Some(d) if goparse::round_to_second(d) != d => {
                push(
                    k,
                    format!("invalid value {v:?}: must be specified with at most second precision"),
                );
            }
            Some(_) => {}
        }
    }

    if let Some((k, v)) = SCALE_TO_ZERO_POD_RETENTION_PERIOD.get(annotations) {
        match goparse::parse_duration(v) {
            Some(d) if (0..=HOUR).contains(&d) => {}
            _ => push(
                k,
                format!("invalid value {v:?}: expected a duration in [0s, 1h]"),
            ),
        }
    }

    if let Some((_, c)) = class_ann
        && c == KPA_CLASS
        && let Some((k, v)) = METRIC_AGGREGATION_ALGORITHM.get(annotations)
        && !matches!(
            v,
            "" | "linear" | "weighted-exponential" | "weightedExponential"
        )
    {
        push(
            k,
            format!("invalid value {v:?}, allowed: linear, weighted-exponential"),
        );
    }

    if errs.is_empty() {
        Ok(())
    } else {
        errs.sort_by_cached_key(ToString::to_string);
        Err(AnnotationErrors(errs))
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;

    fn ann(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (format!("{GROUP}{k}"), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn valid_sets() {
        let c = Config::default();
        for kv in [
            &[][..],
            &[("target", "0.01"), ("metric", "rps"), ("class", KPA_CLASS)],
            &[
                ("targetUtilizationPercentage", "100"),
                ("window", "6s"),
                ("panic-window-percentage", "1"),
            ],
            &[
                ("panic-threshold-percentage", "110"),
                ("target-burst-capacity", "-1"),
            ],
            &[
                ("min-scale", "2"),
                ("max-scale", "3"),
                ("activation-scale", "2"),
            ],
            &[("min-scale", "5"), ("max-scale", "0")],
            &[
                ("initial-scale", "3"),
                ("scale-down-delay", "1h"),
                ("scale-to-zero-pod-retention-period", "1.5s"),
            ],
            &[
                ("class", KPA_CLASS),
                ("metric-aggregation-algorithm", "weightedExponential"),
            ],
            &[("metric-aggregation-algorithm", "bogus")], // only checked with an explicit KPA class
            &[("class", "custom.example.com"), ("metric", "anything")],
            &[("class", HPA_CLASS), ("metric", "cpu")],
        ] {
            assert_eq!(validate(&c, &ann(kv)), Ok(()), "{kv:?}");
        }
    }

    #[test]
    fn invalid_sets_name_keys() {
        let c = Config::default();
        let limited = Config {
            max_scale_limit: 10,
            max_scale: 5,
            ..Config::default()
        };
        let zero_ok = Config {
            allow_zero_initial_scale: true,
            ..Config::default()
        };
        let table: &[(&Config, &[(&str, &str)], &[&str])] = &[
            (&c, &[("class", "foo.knative.dev")], &["class"]),
            (&c, &[("metric", "cpu")], &["metric"]),
            (&c, &[("class", HPA_CLASS), ("metric", "")], &["metric"]),
            (&c, &[("target", "0.001")], &["target"]),
            (&c, &[("target", "x")], &["target"]),
            (
                &c,
                &[("target-utilization-percentage", "0.5")],
                &["target-utilization-percentage"],
            ),
            (
                &c,
                &[("targetUtilizationPercentage", "101")],
                &["targetUtilizationPercentage"],
            ),
            (
                &c,
                &[("target-burst-capacity", "-2")],
                &["target-burst-capacity"],
            ),
            (&c, &[("window", "5s")], &["window"]),
            (&c, &[("window", "61500ms")], &["window"]),
            (&c, &[("window", "2h")], &["window"]),
            (
                &c,
                &[("panic-window-percentage", "101")],
                &["panic-window-percentage"],
            ),
            (
                &c,
                &[("panic-threshold-percentage", "109")],
                &["panic-threshold-percentage"],
            ),
            (
                &c,
                &[("panic-threshold-percentage", "1001")],
                &["panic-threshold-percentage"],
            ),
            (&c, &[("min-scale", "-1")], &["min-scale"]),
            (&c, &[("minScale", "2147483648")], &["minScale"]),
            (&c, &[("max-scale", "1.5")], &["max-scale"]),
            (
                &c,
                &[("min-scale", "3"), ("max-scale", "2")],
                &["max-scale"],
            ),
            (&limited, &[("max-scale", "0")], &["max-scale"]),
            (&limited, &[("max-scale", "11")], &["max-scale"]),
            (&c, &[("initial-scale", "0")], &["initial-scale"]),
            (&c, &[("initial-scale", "-1")], &["initial-scale"]),
            (&zero_ok, &[("initial-scale", "-1")], &["initial-scale"]),
            (&c, &[("activation-scale", "1")], &["activation-scale"]),
            (&c, &[("activation-scale", "x")], &["activation-scale"]),
            (
                &c,
                &[("min-scale", "3"), ("activation-scale", "2")],
                &["activation-scale"],
            ),
            (
                &c,
                &[("max-scale", "3"), ("activation-scale", "4")],
                &["activation-scale"],
            ),
            (&c, &[("scale-down-delay", "-1s")], &["scale-down-delay"]),
            (&c, &[("scale-down-delay", "1500ms")], &["scale-down-delay"]),
            (&c, &[("scaleDownDelay", "61m")], &["scaleDownDelay"]),
            (
                &c,
                &[("scale-to-zero-pod-retention-period", "-1s")],
                &["scale-to-zero-pod-retention-period"],
            ),
            (
                &c,
                &[("scale-to-zero-pod-retention-period", "2h")],
                &["scale-to-zero-pod-retention-period"],
            ),
            (
                &c,
                &[
                    ("class", KPA_CLASS),
                    ("metric-aggregation-algorithm", "max"),
                ],
                &["metric-aggregation-algorithm"],
            ),
            (
                &c,
                &[("target", "0"), ("window", "1s"), ("min-scale", "x")],
                &["target", "window", "min-scale"],
            ),
        ];
        for (cfg, kv, keys) in table {
            let e = validate(cfg, &ann(kv)).unwrap_err();
            let mut got: Vec<_> = e
                .keys()
                .map(|k| k.trim_start_matches(GROUP).to_owned())
                .collect();
            let mut want: Vec<_> = keys.iter().map(|k| (*k).to_owned()).collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "{kv:?}: {e}");
        }
    }

    #[test]
    fn priority_and_unknown() {
        let a = ann(&[("minScale", "1"), ("min-scale", "2"), ("bogus", "1")]);
        assert_eq!(get_int32(&a, MIN_SCALE), Some(2));
        assert_eq!(unknown_keys(&a), vec!["autoscaling.knative.dev/bogus"]);
        assert!(known_keys().any(|k| k == "autoscaling.knative.dev/scaleToZeroPodRetentionPeriod"));
    }
}
