//! Control-plane sources that feed the [`crate::catalog::Catalog`].
//!
//! - [`file`]: `--source file:PATH`, a JSON or YAML file re-read when it changes.
//! - [`kube`]: `--source kubernetes`, kube-rs watchers on Revisions, EndpointSlices and Services.
//! - The local source (`activator local`) calls the catalog handle directly.

pub mod file;
pub mod kube;
