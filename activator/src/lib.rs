//! activator: Knative's activator in Rust, plus `activator local` and `activator simulate`.
//!
//! # Layout
//! (filled in as the modules land; contract in `../shared/docs/activator.md`)
#![warn(missing_docs)]
