//! The activator's Prometheus metrics (names from `shared::telemetry::metrics::names`).

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shared::telemetry::metrics::names;

use crate::catalog::RevisionKey;
use crate::reporter::ConnMetrics;
use crate::throttler::RevisionGauges;

type Labels = Vec<(&'static str, String)>;

/// All activator metrics.
#[derive(Debug)]
pub struct Metrics {
    queued: Family<Labels, Gauge>,
    active: Family<Labels, Gauge>,
    concurrency: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Stats connection gauges.
    pub conn: ConnMetrics,
    /// Time requests were held before a pod took them, in seconds.
    pub hold: Histogram,
}

fn labels(key: &RevisionKey) -> Labels {
    vec![
        ("k8s_namespace_name", key.namespace.clone()),
        ("kn_revision_name", key.name.clone()),
    ]
}

impl Metrics {
    /// Registers every metric in `reg`.
    pub fn register(reg: &mut Registry, conn: ConnMetrics) -> Self {
        let m = Self {
            queued: Family::default(),
            active: Family::default(),
            concurrency: Family::default(),
            conn,
            hold: Histogram::new([
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        };
        reg.register(
            names::REVISION_REQUEST_QUEUED,
            "Requests waiting for capacity",
            m.queued.clone(),
        );
        reg.register(
            names::REVISION_REQUEST_ACTIVE,
            "Requests being proxied",
            m.active.clone(),
        );
        reg.register(
            names::REVISION_REQUEST_CONCURRENCY,
            "Concurrency reported to the autoscaler (1 s average)",
            m.concurrency.clone(),
        );
        // Knative records both with the attribute `peer="autoscaler"`.
        let peer = reg.sub_registry_with_label((
            std::borrow::Cow::Borrowed("peer"),
            std::borrow::Cow::Borrowed("autoscaler"),
        ));
        peer.register(
            names::STATS_CONNECTION_UP,
            "Whether a peer is reachable from the activator (1 = reachable, 0 = not reachable)",
            m.conn.reachable.clone(),
        );
        peer.register(
            names::STATS_CONNECTION_ERRORS,
            "Number of connection errors from the activator",
            m.conn.errors.clone(),
        );
        reg.register(
            names::ACTIVATOR_HOLD_DURATION,
            "Time a request was held before a pod took it",
            m.hold.clone(),
        );
        m
    }

    /// Gauges for one revision.
    pub fn revision(&self, key: &RevisionKey) -> RevisionGauges {
        let l = labels(key);
        RevisionGauges {
            queued: self.queued.get_or_create(&l).clone(),
            active: self.active.get_or_create(&l).clone(),
        }
    }

    /// Records a reported concurrency with Knative's four attributes (service, configuration,
    /// revision, namespace).
    pub fn set_concurrency(
        &self,
        key: &RevisionKey,
        service: &str,
        configuration: &str,
        value: f64,
    ) {
        let mut l = labels(key);
        l.push(("kn_service_name", service.to_owned()));
        l.push(("kn_configuration_name", configuration.to_owned()));
        self.concurrency.get_or_create(&l).set(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14 item 6: Knative's names for the stats connection, both with `peer="autoscaler"`.
    #[test]
    fn stats_connection_metrics_have_knatives_names_and_peer() {
        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg, ConnMetrics::default());
        m.conn.reachable.set(1);
        m.conn.errors.inc();
        let text = shared::telemetry::metrics::render(&reg);
        assert!(
            text.contains("kn_activator_stats_conn_reachable{peer=\"autoscaler\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kn_activator_stats_conn_errors_total{peer=\"autoscaler\"} 1"),
            "{text}"
        );
        assert!(!text.contains("connection_up"), "{text}");
    }
}
