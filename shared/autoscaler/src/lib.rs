//! Knative's KPA autoscaling decision logic, as a pure library.
//!
//! No tokio, no clock, no I/O: time and observations are arguments, decisions are return values.
//! The I/O shells (scrapers, tickers, scalers) live in the binaries. The specification is
//! `../shared/docs/autoscaler.md`; section numbers (§) below refer to it.
//!
//! # Layout
//! - [`config`]: the `config-autoscaler` ConfigMap ([`Config`]), Knative defaults and validation (§3.1).
//! - [`annotation`]: `autoscaling.knative.dev/*` keys, webhook validation, [`annotation::unknown_keys`] (§3.2).
//! - [`spec`]: effective per-revision settings ([`RevisionSettings`]) and the [`DeciderSpec`] (§3.3).
//! - [`window`]: linear and weighted-exponential bucket averages, the sliding max window (§4).
//! - [`collector`]: [`Stat`], the per-revision [`collector::Collection`], sample-size math (§5).
//! - [`decider`]: [`Decider`]`::scale(now, ready, observed)` → [`ScaleResult`], [`DeciderStatus`] (§6).
//! - [`scaler`]: the KPA reconciler's bounds / initial scale / scale-to-zero gating (§7–§8).
//! - [`revision`]: [`RevisionAutoscaler`], everything above for one revision.
//!
//! # Time
//! Every time is a [`std::time::Duration`] since an epoch the caller picks. Knative aligns
//! buckets to Unix seconds; passing Unix time reproduces that exactly.
//!
//! # Embedding (what `activator local` does)
//! ```
//! use std::collections::BTreeMap;
//! use std::time::Duration;
//! use autoscaler::{Config, RevisionAutoscaler, RevisionSettings, Stat};
//!
//! let config = Config::default(); // or Config::from_map(&configmap_data)?
//! let mut annotations = BTreeMap::new();
//! annotations.insert("autoscaling.knative.dev/target".to_owned(), "10".to_owned());
//! for k in autoscaler::annotation::unknown_keys(&annotations) { eprintln!("unknown {k}"); }
//! let settings = RevisionSettings::from_annotations(&config, &annotations, 0).expect("valid");
//! let t0 = Duration::from_secs(1_700_000_000);
//! let mut rev = RevisionAutoscaler::new(settings, t0, 0);
//!
//! // The activator sees the first request of a revision at zero: the poke.
//! let t = t0 + Duration::from_secs(1);
//! let poke = Stat { average_concurrent_requests: 1.0, request_count: 1.0, ..Stat::default() };
//! rev.record_activator(t, &poke);
//! // Once per second: feed each pod's scraped Stat, then tick.
//! rev.record_scrape(t, &[], 0);
//! let snap = rev.tick(t, 0, true);
//! assert!(snap.desired_pods >= 1);
//! println!("{} pods, ebc {}, panic {}, stable {}", snap.desired_pods,
//!          snap.excess_burst_capacity, snap.panic, snap.stable_concurrency);
//! ```
#![deny(missing_docs)]

pub mod annotation;
pub mod collector;
pub mod config;
pub mod decider;
pub mod goparse;
pub mod revision;
pub mod scaler;
pub mod spec;
pub mod window;

pub use collector::Stat;
pub use config::{Config, ConfigError};
pub use decider::{Decider, DeciderStatus, Observed, ScaleResult};
pub use revision::{RevisionAutoscaler, Snapshot};
pub use spec::{DeciderSpec, RevisionSettings};
