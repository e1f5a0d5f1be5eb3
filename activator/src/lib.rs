//! activator: Knative's activator in Rust, plus `activator local` and `activator simulate`.
//!
//! # Layout
//! - [`cli`]: the command line and subcommand dispatch.
//! - [`config`]: activator settings (Knative env vars) and the activator's `main`.
//! - [`simulate`]: the autoscaler what-if simulator.
//! - [`local`]: Knative Services as local processes.
//!
//! Contract: `../shared/docs/activator.md`.
#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod local;
pub mod simulate;
