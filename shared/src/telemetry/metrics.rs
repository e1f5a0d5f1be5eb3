//! Metric names (wire contracts with dashboards and Knative's docs) and registry helpers.
//!
//! The registry is always passed explicitly (`&mut Registry`): no globals. Counters are
//! registered at start-up so they scrape as 0 before the first request.

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

/// Names, as Knative's OpenTelemetry instruments are exported to Prometheus (dots → underscores;
/// prometheus-client appends `_total` to counters and unit suffixes itself).
pub mod names {
    /// queue-proxy: `kn.serving.queue.depth` (gauge, breaker occupancy).
    pub const QUEUE_DEPTH: &str = "kn_serving_queue_depth";
    /// queue-proxy: `kn.serving.invocation.duration` (histogram, seconds).
    pub const INVOCATION_DURATION: &str = "kn_serving_invocation_duration_seconds";
    /// `http.server.request.duration` (histogram, seconds).
    pub const HTTP_SERVER_REQUEST_DURATION: &str = "http_server_request_duration_seconds";
    /// `http.server.active_requests` (gauge).
    pub const HTTP_SERVER_ACTIVE_REQUESTS: &str = "http_server_active_requests";
    /// activator: `kn.revision.request.concurrency` (gauge).
    pub const REVISION_REQUEST_CONCURRENCY: &str = "kn_revision_request_concurrency";
    /// activator: requests waiting in the throttler (gauge, ours).
    pub const REVISION_REQUEST_QUEUED: &str = "kn_revision_request_queued";
    /// activator: requests executing on pods (gauge, ours).
    pub const REVISION_REQUEST_ACTIVE: &str = "kn_revision_request_active";
    /// activator: time a request was held before capacity (histogram, seconds, ours; #13459).
    pub const ACTIVATOR_HOLD_DURATION: &str = "kn_activator_hold_duration_seconds";
    /// activator: stats websocket connected (gauge 0/1).
    pub const STATS_CONNECTION_UP: &str = "kn_activator_stats_conn_reachable";
    /// activator: stats websocket disconnects (counter; prometheus-client appends `_total`).
    pub const STATS_CONNECTION_ERRORS: &str = "kn_activator_stats_conn_errors";
}

/// Renders `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, registry);
    out
}

/// `Content-Type` of the Prometheus text exposition.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
