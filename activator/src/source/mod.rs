//! Control-plane sources that feed the [`crate::catalog::Catalog`].
//!
//! - [`file`]: `--source file:PATH`, a JSON or YAML file re-read when it changes.
//! - Kubernetes (kube-rs watchers) and the local source (`activator local`) plug into the same
//!   catalog handle.

pub mod file;
