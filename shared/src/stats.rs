//! The autoscaler's wire messages, `pkg/autoscaler/metrics/stat.proto` (proto3, package `metrics`).
//!
//! Hand-derived with prost so no `protoc` is needed; field numbers are the wire contract.

/// One reporter's numbers for one reporting period.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Stat {
    /// Reporter identity: pod name, activator pod name, or `service-scraper`.
    #[prost(string, tag = "1")]
    pub pod_name: String,
    /// Time-weighted average in-flight requests over the period.
    #[prost(double, tag = "2")]
    pub average_concurrent_requests: f64,
    /// The part of `average_concurrent_requests` that came through the activator.
    #[prost(double, tag = "3")]
    pub average_proxied_concurrent_requests: f64,
    /// Requests per second (queue-proxy) or raw count for the 1 s period (activator).
    #[prost(double, tag = "4")]
    pub request_count: f64,
    /// The part of `request_count` that came through the activator.
    #[prost(double, tag = "5")]
    pub proxied_request_count: f64,
    /// Seconds since the reporter started.
    #[prost(double, tag = "6")]
    pub process_uptime: f64,
    /// Unix seconds; left 0 by reporters, set by the autoscaler on receipt.
    #[prost(int64, tag = "7")]
    pub timestamp: i64,
}

/// A stat keyed by revision, as the activator sends it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireStatMessage {
    /// Revision namespace.
    #[prost(string, tag = "1")]
    pub namespace: String,
    /// Revision name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// The stat.
    #[prost(message, optional, tag = "3")]
    pub stat: Option<Stat>,
}

/// A batch of stats: one binary websocket message from the activator to the autoscaler.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireStatMessages {
    /// The batch.
    #[prost(message, repeated, tag = "1")]
    pub messages: Vec<WireStatMessage>,
}

/// `Content-Type` of the `:9090/metrics` answer, compared exactly by the autoscaler's scraper.
pub const PROTOBUF_CONTENT_TYPE: &str = "application/protobuf";

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn golden_bytes_match_knative() {
        // From queue-proxy.md §7.1: pod "p" with request_count = 2.
        let s = Stat {
            pod_name: "p".into(),
            request_count: 2.0,
            ..Default::default()
        };
        assert_eq!(
            s.encode_to_vec(),
            [0x0a, 0x01, 0x70, 0x21, 0, 0, 0, 0, 0, 0, 0, 0x40]
        );
        let w = WireStatMessages {
            messages: vec![WireStatMessage {
                namespace: "n".into(),
                name: "r".into(),
                stat: Some(s.clone()),
            }],
        };
        let bytes = w.encode_to_vec();
        assert_eq!(&bytes[..2], &[0x0a, 20]);
        assert_eq!(&bytes[2..8], &[0x0a, 1, b'n', 0x12, 1, b'r']);
        assert_eq!(&bytes[8..10], &[0x1a, 12]);
        assert_eq!(WireStatMessages::decode(bytes.as_slice()).unwrap(), w);
    }
}
