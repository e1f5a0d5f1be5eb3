//! queue-proxy: Knative's per-pod sidecar, in Rust.
//!
//! # Layout
//! (filled in as the modules land; contract in `../shared/docs/queue-proxy.md`)
#![warn(missing_docs)]
