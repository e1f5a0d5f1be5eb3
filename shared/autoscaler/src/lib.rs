//! Knative's KPA autoscaling decision logic, as a pure library.
//!
//! No tokio, no clock, no I/O: time and observations are arguments, decisions are return values.
//! The I/O shells (scrapers, tickers, scalers) live in the binaries.
//!
//! # Layout
//! (filled in as the modules land; see `../shared/docs/autoscaler.md` for the specification)
#![deny(missing_docs)]
