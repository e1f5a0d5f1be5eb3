//! Plumbing shared by the `queue-proxy` and `activator` binaries.
//!
//! Everything here is a wire contract with Knative or a mechanism both binaries need, so it lives
//! once. The pure KPA decision logic is its own crate (`autoscaler`), so that it cannot reach tokio.
//!
//! # Layout
//! - [`error`]: `BoxError` and cause-chain classification (`is_caused_by`, `cause_ref`).
//! - [`http`]: header names and probe predicates ([`http::headers`]), plain-text responses
//!   ([`http::response`]), the h1 + h2c server loop with graceful shutdown ([`http::server`]),
//!   the upstream forwarding core ([`http::proxy`]) and body guards ([`http::body`]).
//! - [`breaker`]: Knative's breaker (capacity + bounded queue, permits held to end of body).
//! - [`stats`]: the `Stat` / `WireStatMessages` protobuf messages.
//! - [`memory`]: gives memory freed after a burst back to the OS (glibc's `malloc_trim`).
//! - [`profiling`]: Knative's profiling server (`PROFILING_PORT`, 8008): CPU profiles in pprof
//!   protobuf and a heap summary, only while `runtime-profiling: enabled`.
//! - [`telemetry`]: zap-style JSON logs, metric names, trace-context propagation.
//! - [`shutdown`]: SIGTERM/SIGINT into a `CancellationToken`.
#![deny(missing_docs)]

pub mod breaker;
pub mod error;
pub mod http;
pub mod memory;
pub mod profiling;
pub mod shutdown;
pub mod stats;
pub mod telemetry;

pub use error::BoxError;
