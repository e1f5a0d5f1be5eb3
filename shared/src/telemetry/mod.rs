//! Logs, metric names and trace context: the conventions both binaries share.

pub mod log;
pub mod metrics;
pub mod otlp;
pub mod reqlog;
pub mod template;
pub mod trace;
