//! The `config-autoscaler` ConfigMap: every key, Knative's defaults, and Knative's validation.
//!
//! Mirrors `pkg/autoscaler/config/config.go` (`NewConfigFromMap`, `validate`). See §3.1 of the
//! specification.

// `!(x >= lo)` is deliberate: NaN must fail every range check, as in Go.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use std::collections::BTreeMap;
use std::time::Duration;

use crate::goparse::{self, GoDuration};

/// The KPA class name.
pub const KPA_CLASS: &str = "kpa.autoscaling.knative.dev";
/// The HPA class name.
pub const HPA_CLASS: &str = "hpa.autoscaling.knative.dev";

/// An invalid `config-autoscaler` map: which key, and why (including the allowed range).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("config-autoscaler: {key}: {message}")]
pub struct ConfigError {
    /// The offending key (for cross-key rules, the key that was checked last).
    pub key: &'static str,
    /// What was wrong and what is allowed.
    pub message: String,
}

impl ConfigError {
    fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }
}

/// The validated `config-autoscaler` settings. `Config::default()` is Knative's default map.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `pod-autoscaler-class` (trimmed). Default `kpa.autoscaling.knative.dev`.
    pub pod_autoscaler_class: String,
    /// `enable-scale-to-zero`. Default true.
    pub enable_scale_to_zero: bool,
    /// `allow-zero-initial-scale`. Default false.
    pub allow_zero_initial_scale: bool,
    /// `max-scale-up-rate` (> 1). Default 1000.
    pub max_scale_up_rate: f64,
    /// `max-scale-down-rate` (> 1). Default 2.
    pub max_scale_down_rate: f64,
    /// `container-concurrency-target-percentage` as a fraction in (0, 1]. Default 0.7.
    pub container_concurrency_target_fraction: f64,
    /// `container-concurrency-target-default`: per-pod total when containerConcurrency = 0. Default 100.
    pub container_concurrency_target_default: f64,
    /// `requests-per-second-target-default`. Default 200.
    pub rps_target_default: f64,
    /// `target-burst-capacity`: -1 unlimited, 0 none, > 0 spare capacity. Default 211.
    pub target_burst_capacity: f64,
    /// `panic-window-percentage` in [1, 100]. Default 10.
    pub panic_window_percentage: f64,
    /// `activator-capacity` (≥ 1). Default 100.
    pub activator_capacity: f64,
    /// `panic-threshold-percentage`. Default 200. Not validated (Knative does not).
    pub panic_threshold_percentage: f64,
    /// `initial-scale`. Default 1.
    pub initial_scale: i32,
    /// `min-scale`. Default 0.
    pub min_scale: i32,
    /// `max-scale` (0 = unbounded). Default 0.
    pub max_scale: i32,
    /// `max-scale-limit` (0 = no limit). Default 0.
    pub max_scale_limit: i32,
    /// `stable-window` in [6 s, 1 h], whole seconds. Default 60 s.
    pub stable_window: Duration,
    /// `scale-down-delay`, whole seconds. Default 0.
    pub scale_down_delay: Duration,
    /// `scale-to-zero-grace-period` (> 0). Default 30 s.
    pub scale_to_zero_grace_period: Duration,
    /// `scale-to-zero-pod-retention-period`. Default 0.
    pub scale_to_zero_pod_retention_period: Duration,
    /// Utilisation for RPS targets; no ConfigMap key (only the annotation changes it). 0.7.
    pub target_utilization: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            pod_autoscaler_class: KPA_CLASS.to_owned(),
            enable_scale_to_zero: true,
            allow_zero_initial_scale: false,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            container_concurrency_target_fraction: 0.7,
            container_concurrency_target_default: 100.0,
            rps_target_default: 200.0,
            target_burst_capacity: 211.0,
            panic_window_percentage: 10.0,
            activator_capacity: 100.0,
            panic_threshold_percentage: 200.0,
            initial_scale: 1,
            min_scale: 0,
            max_scale: 0,
            max_scale_limit: 0,
            stable_window: Duration::from_secs(60),
            scale_down_delay: Duration::ZERO,
            scale_to_zero_grace_period: Duration::from_secs(30),
            scale_to_zero_pod_retention_period: Duration::ZERO,
            target_utilization: 0.7,
        }
    }
}

/// Every key `Config::from_map` reads. Others (`_example`, the obsolete `tick-interval` and
/// `panic-window`) are ignored, as Knative does.
pub const CONFIG_KEYS: &[&str] = &[
    "pod-autoscaler-class",
    "enable-scale-to-zero",
    "allow-zero-initial-scale",
    "max-scale-up-rate",
    "max-scale-down-rate",
    "container-concurrency-target-percentage",
    "container-concurrency-target-default",
    "requests-per-second-target-default",
    "target-burst-capacity",
    "panic-window-percentage",
    "activator-capacity",
    "panic-threshold-percentage",
    "initial-scale",
    "min-scale",
    "max-scale",
    "max-scale-limit",
    "stable-window",
    "scale-down-delay",
    "scale-to-zero-grace-period",
    "scale-to-zero-pod-retention-period",
];

const SEC: GoDuration = 1_000_000_000;

impl Config {
    /// Parses and validates a `config-autoscaler` data map, as Knative's `NewConfigFromMap`.
    ///
    /// # Errors
    /// The first parse error (in key order of [`CONFIG_KEYS`]) or the first failing validation rule
    /// (in Knative's order), naming the key and the allowed range.
    pub fn from_map<S: AsRef<str>>(data: &BTreeMap<String, S>) -> Result<Self, ConfigError> {
        let get = |k: &str| data.get(k).map(AsRef::as_ref);
        let d = Self::default();
        let mut c = d.clone();

        if let Some(v) = get("pod-autoscaler-class") {
            c.pod_autoscaler_class = v.trim().to_owned();
        }
        let bool_key = |k: &'static str, dflt: bool| -> Result<bool, ConfigError> {
            match get(k) {
                None => Ok(dflt),
                Some(v) => goparse::parse_bool(v).ok_or_else(|| {
                    ConfigError::new(
                        k,
                        format!("failed to parse {v:?}: expected a bool (true/false)"),
                    )
                }),
            }
        };
        let float_key = |k: &'static str, dflt: f64| -> Result<f64, ConfigError> {
            match get(k) {
                None => Ok(dflt),
                Some(v) => goparse::parse_float(v).ok_or_else(|| {
                    ConfigError::new(k, format!("failed to parse {v:?}: expected a number"))
                }),
            }
        };
        let int_key = |k: &'static str, dflt: i32| -> Result<i32, ConfigError> {
            match get(k) {
                None => Ok(dflt),
                Some(v) => goparse::parse_int32(v).ok_or_else(|| {
                    ConfigError::new(
                        k,
                        format!("failed to parse {v:?}: expected a decimal int32 integer"),
                    )
                }),
            }
        };
        let dur_key = |k: &'static str, dflt: Duration| -> Result<GoDuration, ConfigError> {
            match get(k) {
                None => Ok(goparse::from_std(dflt)),
                Some(v) => goparse::parse_duration(v).ok_or_else(|| {
                    ConfigError::new(
                        k,
                        format!(
                            "failed to parse {v:?}: expected a Go duration such as 60s or 1m30s"
                        ),
                    )
                }),
            }
        };

        c.enable_scale_to_zero = bool_key("enable-scale-to-zero", d.enable_scale_to_zero)?;
        c.allow_zero_initial_scale =
            bool_key("allow-zero-initial-scale", d.allow_zero_initial_scale)?;
        c.max_scale_up_rate = float_key("max-scale-up-rate", d.max_scale_up_rate)?;
        c.max_scale_down_rate = float_key("max-scale-down-rate", d.max_scale_down_rate)?;
        c.container_concurrency_target_fraction = float_key(
            "container-concurrency-target-percentage",
            d.container_concurrency_target_fraction,
        )?;
        c.container_concurrency_target_default = float_key(
            "container-concurrency-target-default",
            d.container_concurrency_target_default,
        )?;
        c.rps_target_default =
            float_key("requests-per-second-target-default", d.rps_target_default)?;
        c.target_burst_capacity = float_key("target-burst-capacity", d.target_burst_capacity)?;
        c.panic_window_percentage =
            float_key("panic-window-percentage", d.panic_window_percentage)?;
        c.activator_capacity = float_key("activator-capacity", d.activator_capacity)?;
        c.panic_threshold_percentage =
            float_key("panic-threshold-percentage", d.panic_threshold_percentage)?;
        c.initial_scale = int_key("initial-scale", d.initial_scale)?;
        c.min_scale = int_key("min-scale", d.min_scale)?;
        c.max_scale = int_key("max-scale", d.max_scale)?;
        c.max_scale_limit = int_key("max-scale-limit", d.max_scale_limit)?;
        let stable_window = dur_key("stable-window", d.stable_window)?;
        let scale_down_delay = dur_key("scale-down-delay", d.scale_down_delay)?;
        let grace = dur_key("scale-to-zero-grace-period", d.scale_to_zero_grace_period)?;
        let retention = dur_key(
            "scale-to-zero-pod-retention-period",
            d.scale_to_zero_pod_retention_period,
        )?;

        // Percentage normalisation: > 1 means a percentage, ≤ 1 a fraction.
        if c.container_concurrency_target_fraction > 1.0 {
            c.container_concurrency_target_fraction /= 100.0;
        }

        validate(&c, stable_window, scale_down_delay, grace, retention)?;

        c.stable_window = goparse::to_std(stable_window);
        c.scale_down_delay = goparse::to_std(scale_down_delay);
        c.scale_to_zero_grace_period = goparse::to_std(grace);
        c.scale_to_zero_pod_retention_period = goparse::to_std(retention);
        Ok(c)
    }

    /// Re-runs validation on an already-built config (e.g. a struct literal).
    ///
    /// # Errors
    /// As [`Config::from_map`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate(
            self,
            goparse::from_std(self.stable_window),
            goparse::from_std(self.scale_down_delay),
            goparse::from_std(self.scale_to_zero_grace_period),
            goparse::from_std(self.scale_to_zero_pod_retention_period),
        )
    }
}

/// Knative's `validate`, in Knative's order. NaN fails every range check, as in Go.
fn validate(
    c: &Config,
    stable_window: GoDuration,
    scale_down_delay: GoDuration,
    grace: GoDuration,
    retention: GoDuration,
) -> Result<(), ConfigError> {
    let fd = goparse::format_duration;
    let err = |k: &'static str, m: String| Err(ConfigError::new(k, m));
    if grace <= 0 {
        return err(
            "scale-to-zero-grace-period",
            format!("must be positive, was: {}", fd(grace)),
        );
    }
    if scale_down_delay < 0 {
        return err(
            "scale-down-delay",
            format!("cannot be negative, was: {}", fd(scale_down_delay)),
        );
    }
    if goparse::round_to_second(scale_down_delay) != scale_down_delay {
        return err(
            "scale-down-delay",
            format!(
                "= {}, must be specified with at most second precision",
                fd(scale_down_delay)
            ),
        );
    }
    if retention < 0 {
        return err(
            "scale-to-zero-pod-retention-period",
            format!("cannot be negative, was: {}", fd(retention)),
        );
    }
    let tbc = c.target_burst_capacity;
    #[allow(clippy::float_cmp)]
    if !(tbc >= 0.0 || tbc == -1.0) {
        return err(
            "target-burst-capacity",
            format!("must be either non-negative or -1 (for unlimited), was: {tbc}"),
        );
    }
    let frac = c.container_concurrency_target_fraction;
    if !(frac > 0.0 && frac <= 1.0) {
        return err(
            "container-concurrency-target-percentage",
            format!("= {frac}, must be in (0, 1] as a fraction or (1, 100] as a percentage"),
        );
    }
    let cc_target = frac * c.container_concurrency_target_default;
    if !(cc_target >= 0.01) {
        return err(
            "container-concurrency-target-default",
            format!(
                "container-concurrency-target-percentage and container-concurrency-target-default yield target concurrency of {cc_target}, can't be less than 0.01"
            ),
        );
    }
    if !(c.rps_target_default >= 0.01) {
        return err(
            "requests-per-second-target-default",
            format!("must be at least 0.01, was: {}", c.rps_target_default),
        );
    }
    if !(c.activator_capacity >= 1.0) {
        return err(
            "activator-capacity",
            format!("= {}, must be at least 1", c.activator_capacity),
        );
    }
    if !(c.max_scale_up_rate > 1.0) {
        return err(
            "max-scale-up-rate",
            format!("= {}, must be greater than 1.0", c.max_scale_up_rate),
        );
    }
    if !(c.max_scale_down_rate > 1.0) {
        return err(
            "max-scale-down-rate",
            format!("= {}, must be greater than 1.0", c.max_scale_down_rate),
        );
    }
    if !(6 * SEC..=3600 * SEC).contains(&stable_window) {
        return err(
            "stable-window",
            format!("= {}, must be in [6s; 1h0m0s] range", fd(stable_window)),
        );
    }
    if goparse::round_to_second(stable_window) != stable_window {
        return err(
            "stable-window",
            format!(
                "= {}, must be specified with at most second precision",
                fd(stable_window)
            ),
        );
    }
    let pwp = c.panic_window_percentage;
    if !(1.0..=100.0).contains(&pwp) {
        return err(
            "panic-window-percentage",
            format!("= {pwp}, must be in [1, 100] interval"),
        );
    }
    if c.initial_scale < 0 || (c.initial_scale == 0 && !c.allow_zero_initial_scale) {
        return err(
            "initial-scale",
            format!(
                "= {}, must be at least 0 and at least 1 unless allow-zero-initial-scale is true",
                c.initial_scale
            ),
        );
    }
    if c.min_scale < 0 {
        return err(
            "min-scale",
            format!("= {}, must be at least 0", c.min_scale),
        );
    }
    let lo = i32::from(c.max_scale_limit > 0);
    if c.max_scale < lo || (c.max_scale_limit > 0 && c.max_scale > c.max_scale_limit) {
        let hi = if c.max_scale_limit > 0 {
            c.max_scale_limit.to_string()
        } else {
            "+Inf".to_owned()
        };
        return err(
            "max-scale",
            format!(
                "= {}, must be in [{lo}, {hi}] range (max-scale-limit = {})",
                c.max_scale, c.max_scale_limit
            ),
        );
    }
    if c.max_scale_limit < 0 {
        return err(
            "max-scale-limit",
            format!("= {}, must be at least 0", c.max_scale_limit),
        );
    }
    if c.max_scale > 0 && c.min_scale > c.max_scale {
        return err(
            "min-scale",
            format!(
                "min-scale (= {}) must be less than max-scale (= {})",
                c.min_scale, c.max_scale
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults() {
        let c = Config::from_map(&map(&[("_example", "junk"), ("tick-interval", "x")])).unwrap();
        assert_eq!(c, Config::default());
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn percentage_normalisation() {
        for (v, want) in [
            ("70", 0.7),
            ("0.7", 0.7),
            ("1", 1.0),
            ("100", 1.0),
            ("50", 0.5),
        ] {
            let c =
                Config::from_map(&map(&[("container-concurrency-target-percentage", v)])).unwrap();
            assert!(
                (c.container_concurrency_target_fraction - want).abs() < 1e-12,
                "{v}"
            );
        }
    }

    #[test]
    fn parses_every_key() {
        let c = Config::from_map(&map(&[
            ("pod-autoscaler-class", "  hpa.autoscaling.knative.dev \n"),
            ("enable-scale-to-zero", "False"),
            ("allow-zero-initial-scale", "t"),
            ("max-scale-up-rate", "1e1"),
            ("max-scale-down-rate", "4"),
            ("container-concurrency-target-default", "10"),
            ("requests-per-second-target-default", "5"),
            ("target-burst-capacity", "-1"),
            ("panic-window-percentage", "20"),
            ("activator-capacity", "50"),
            ("panic-threshold-percentage", "300"),
            ("initial-scale", "0"),
            ("min-scale", "1"),
            ("max-scale", "9"),
            ("max-scale-limit", "10"),
            ("stable-window", "2m"),
            ("scale-down-delay", "15s"),
            ("scale-to-zero-grace-period", "1m"),
            ("scale-to-zero-pod-retention-period", "1m30s"),
        ]))
        .unwrap();
        assert_eq!(c.pod_autoscaler_class, HPA_CLASS);
        assert!(!c.enable_scale_to_zero && c.allow_zero_initial_scale);
        assert_eq!(c.max_scale_up_rate, 10.0);
        assert_eq!(c.target_burst_capacity, -1.0);
        assert_eq!(
            (c.initial_scale, c.min_scale, c.max_scale, c.max_scale_limit),
            (0, 1, 9, 10)
        );
        assert_eq!(c.stable_window, Duration::from_secs(120));
        assert_eq!(c.scale_down_delay, Duration::from_secs(15));
        assert_eq!(
            c.scale_to_zero_pod_retention_period,
            Duration::from_secs(90)
        );
    }

    #[test]
    fn rejections_name_the_key() {
        let table: &[(&[(&str, &str)], &str)] = &[
            (&[("enable-scale-to-zero", "yes")], "enable-scale-to-zero"),
            (&[("max-scale-up-rate", "fast")], "max-scale-up-rate"),
            (&[("initial-scale", "1.5")], "initial-scale"),
            (&[("max-scale", "2147483648")], "max-scale"),
            (&[("stable-window", "60")], "stable-window"),
            (
                &[("scale-to-zero-grace-period", "0s")],
                "scale-to-zero-grace-period",
            ),
            (
                &[("scale-to-zero-grace-period", "-1s")],
                "scale-to-zero-grace-period",
            ),
            (&[("scale-down-delay", "-1s")], "scale-down-delay"),
            (&[("scale-down-delay", "61984ms")], "scale-down-delay"),
            (
                &[("scale-to-zero-pod-retention-period", "-1s")],
                "scale-to-zero-pod-retention-period",
            ),
            (&[("target-burst-capacity", "-2")], "target-burst-capacity"),
            (&[("target-burst-capacity", "NaN")], "target-burst-capacity"),
            (
                &[("container-concurrency-target-percentage", "0")],
                "container-concurrency-target-percentage",
            ),
            (
                &[("container-concurrency-target-percentage", "101")],
                "container-concurrency-target-percentage",
            ),
            (
                &[
                    ("container-concurrency-target-percentage", "0.5"),
                    ("container-concurrency-target-default", "0.01"),
                ],
                "container-concurrency-target-default",
            ),
            (
                &[("requests-per-second-target-default", "0.001")],
                "requests-per-second-target-default",
            ),
            (&[("activator-capacity", "0.5")], "activator-capacity"),
            (&[("max-scale-up-rate", "1")], "max-scale-up-rate"),
            (&[("max-scale-down-rate", "1.0")], "max-scale-down-rate"),
            (&[("stable-window", "5s")], "stable-window"),
            (&[("stable-window", "1h0m1s")], "stable-window"),
            (&[("stable-window", "61984ms")], "stable-window"),
            (
                &[("panic-window-percentage", "0.5")],
                "panic-window-percentage",
            ),
            (
                &[("panic-window-percentage", "101")],
                "panic-window-percentage",
            ),
            (&[("initial-scale", "-1")], "initial-scale"),
            (&[("initial-scale", "0")], "initial-scale"),
            (&[("min-scale", "-1")], "min-scale"),
            (&[("max-scale", "-1")], "max-scale"),
            (&[("max-scale-limit", "5")], "max-scale"),
            (&[("max-scale-limit", "5"), ("max-scale", "6")], "max-scale"),
            (&[("max-scale-limit", "-1")], "max-scale-limit"),
            (&[("min-scale", "3"), ("max-scale", "2")], "min-scale"),
        ];
        for (kv, key) in table {
            let e = Config::from_map(&map(kv)).unwrap_err();
            assert_eq!(e.key, *key, "{kv:?}: {e}");
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn accepted_edge_values() {
        for kv in [
            &[("initial-scale", "0"), ("allow-zero-initial-scale", "true")][..],
            &[("stable-window", "6s")],
            &[("stable-window", "1h")],
            &[("target-burst-capacity", "0")],
            &[("max-scale-limit", "5"), ("max-scale", "5")],
            &[("panic-threshold-percentage", "1")], // not validated
            &[("scale-to-zero-pod-retention-period", "1.5s")],
            &[("min-scale", "3"), ("max-scale", "0")],
        ] {
            assert!(Config::from_map(&map(kv)).is_ok(), "{kv:?}");
        }
    }

    /// Knative's `TestNewConfig` table, restated (minus its "grace window too small" case:
    /// the specified HEAD only requires a positive grace period).
    #[test]
    fn knative_new_config_table() {
        let c = Config::from_map(&map(&[
            ("enable-scale-to-zero", "true"),
            ("max-scale-down-rate", "3.0"),
            ("max-scale-up-rate", "1.01"),
            ("container-concurrency-target-percentage", "0.71"),
            ("container-concurrency-target-default", "10.5"),
            ("requests-per-second-target-default", "10.11"),
            ("target-burst-capacity", "12345"),
            ("scale-down-delay", "15m"),
            ("stable-window", "5m"),
            ("tick-interval", "2s"),
            ("panic-window-percentage", "10"),
            ("panic-threshold-percentage", "200"),
            ("pod-autoscaler-class", "some.class"),
            ("activator-capacity", "905"),
            ("scale-to-zero-pod-retention-period", "2m3s"),
        ]))
        .unwrap();
        let want = Config {
            target_burst_capacity: 12345.0,
            container_concurrency_target_default: 10.5,
            container_concurrency_target_fraction: 0.71,
            rps_target_default: 10.11,
            max_scale_down_rate: 3.0,
            max_scale_up_rate: 1.01,
            scale_down_delay: Duration::from_secs(900),
            stable_window: Duration::from_secs(300),
            activator_capacity: 905.0,
            pod_autoscaler_class: "some.class".to_owned(),
            scale_to_zero_pod_retention_period: Duration::from_secs(123),
            ..Config::default()
        };
        assert_eq!(c, want);
        let c = Config::from_map(&map(&[
            ("max-scale-up-rate", "1.001"),
            ("container-concurrency-target-percentage", "0.5"),
            ("container-concurrency-target-default", "10.0"),
            ("target-burst-capacity", "0"),
            ("stable-window", "5m"),
            ("activator-capacity", "1"),
        ]))
        .unwrap();
        assert_eq!(
            (
                c.max_scale_up_rate,
                c.target_burst_capacity,
                c.activator_capacity
            ),
            (1.001, 0.0, 1.0)
        );
        assert_eq!(
            Config::from_map(&map(&[("container-concurrency-target-percentage", "55")]))
                .unwrap()
                .container_concurrency_target_fraction,
            0.55
        );
        assert!(
            Config::from_map(&map(&[("enable-scale-to-zero", "TRUE")]))
                .unwrap()
                .enable_scale_to_zero
        );
        let c = Config::from_map(&map(&[
            ("enable-scale-to-zero", "false"),
            ("scale-to-zero-grace-period", "33s"),
        ]))
        .unwrap();
        assert!(!c.enable_scale_to_zero);
        assert_eq!(c.scale_to_zero_grace_period, Duration::from_secs(33));
        assert_eq!(
            Config::from_map(&map(&[("max-scale", "10")]))
                .unwrap()
                .max_scale,
            10
        );
        for kv in [
            &[("max-scale-up-rate", "not a float")][..],
            &[("scale-down-delay", "-1m23s")],
            &[("scale-to-zero-pod-retention-period", "-4m11s")],
            &[("stable-window", "not a duration")],
            &[("target-burst-capacity", "-11")],
            &[("container-concurrency-target-percentage", "-42")],
            &[("container-concurrency-target-percentage", "142.4")],
            &[("requests-per-second-target-default", "-5.25")],
            &[("max-scale-up-rate", "1")],
            &[("max-scale-down-rate", "-55")],
            &[("max-scale-down-rate", "1")],
            &[("stable-window", "1h1s")],
            &[("stable-window", "1s")],
            &[("stable-window", "61984ms")],
            &[("scale-down-delay", "61984ms")],
            &[("activator-capacity", "0.95")],
            &[("panic-window-percentage", "0.1")],
            &[
                ("stable-window", "12s"),
                ("panic-window", "3s"),
                ("panic-window-percentage", "110"),
            ],
            &[
                ("container-concurrency-target-percentage", "1"),
                ("container-concurrency-target-default", "0.001"),
            ],
            &[
                ("allow-zero-initial-scale", "false"),
                ("initial-scale", "0"),
            ],
            &[
                ("allow-zero-initial-scale", "false"),
                ("initial-scale", "-1"),
            ],
            &[
                ("allow-zero-initial-scale", "false"),
                ("initial-scale", "invalid"),
            ],
            &[("allow-zero-initial-scale", "invalid")],
            &[("max-scale", "-1")],
        ] {
            assert!(Config::from_map(&map(kv)).is_err(), "{kv:?}");
        }
    }
}
