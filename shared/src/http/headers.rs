//! Header names and the request predicates Knative uses to classify requests.
//!
//! These are wire contracts with Knative (see `queue-proxy.md` §4 and `activator.md` §3), so they
//! live in one place. Predicates look only at the first value of a header, compare values
//! case-sensitively, and match `User-Agent` by prefix, exactly as Knative does.

use http::HeaderMap;
use http::header::{HeaderName, USER_AGENT};

/// `K-Network-Probe`: marks probe requests (`queue`, `probe`, `activator`).
pub const K_NETWORK_PROBE: HeaderName = HeaderName::from_static("k-network-probe");
/// `K-Network-Hash`: echoed back on ingress KProbes.
pub const K_NETWORK_HASH: HeaderName = HeaderName::from_static("k-network-hash");
/// `K-Kubelet-Probe`: a kubelet probe forwarded through to the user container.
pub const K_KUBELET_PROBE: HeaderName = HeaderName::from_static("k-kubelet-probe");
/// `K-Proxy-Request`: set to `activator` on requests the activator proxied.
pub const K_PROXY_REQUEST: HeaderName = HeaderName::from_static("k-proxy-request");
/// `K-Original-Host`: the host the client asked for, restored by the queue-proxy.
pub const K_ORIGINAL_HOST: HeaderName = HeaderName::from_static("k-original-host");
/// `Knative-Serving-Revision`: revision routing hint set by the ingress.
pub const KNATIVE_SERVING_REVISION: HeaderName =
    HeaderName::from_static("knative-serving-revision");
/// `Knative-Serving-Namespace`: namespace routing hint set by the ingress.
pub const KNATIVE_SERVING_NAMESPACE: HeaderName =
    HeaderName::from_static("knative-serving-namespace");
/// `Knative-Serving-Tag`: the route tag a request was sent to.
pub const KNATIVE_SERVING_TAG: HeaderName = HeaderName::from_static("knative-serving-tag");
/// `Knative-Serving-Default-Route`: set when a tagged route fell back to the default.
pub const KNATIVE_SERVING_DEFAULT_ROUTE: HeaderName =
    HeaderName::from_static("knative-serving-default-route");
/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `Forwarded` (RFC 7239).
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// `traceparent` (W3C trace context).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` (W3C trace context).
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// `b3` single-header B3 propagation.
pub const B3: HeaderName = HeaderName::from_static("b3");
/// `X-B3-TraceId`.
pub const X_B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// `X-B3-SpanId`.
pub const X_B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// `X-B3-Sampled`.
pub const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// `X-Content-Type-Options`.
pub const X_CONTENT_TYPE_OPTIONS: HeaderName = HeaderName::from_static("x-content-type-options");
/// Ours: how long the activator held a request before a pod had capacity, in milliseconds
/// (Knative users ask for a cold-start signal, knative/serving#13459).
pub const X_KNATIVE_ACTIVATOR_HOLD_MS: HeaderName =
    HeaderName::from_static("x-knative-activator-hold-ms");

/// `K-Network-Probe` value the queue-proxy answers itself.
pub const PROBE_QUEUE: &str = "queue";
/// `K-Network-Probe` value of ingress KProbes.
pub const PROBE_KPROBE: &str = "probe";
/// `K-Network-Probe` value the activator answers itself.
pub const PROBE_ACTIVATOR: &str = "activator";
/// `K-Proxy-Request` value set by the activator.
pub const PROXY_REQUEST_ACTIVATOR: &str = "activator";
/// User agent of the activator's pod probes.
pub const UA_ACTIVATOR_PROBE: &str = "Knative-Activator-Probe";
/// User agent of the autoscaler's probes.
pub const UA_AUTOSCALING_PROBE: &str = "Knative-Autoscaling-Probe";
/// Prefix of the kubelet's user agent.
pub const UA_KUBE_PROBE_PREFIX: &str = "kube-probe/";

/// The first value of `name`, as a string, if present and valid UTF-8.
pub fn first<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn user_agent(headers: &HeaderMap) -> &str {
    first(headers, &USER_AGENT).unwrap_or("")
}

/// `HEALTH_UA`: kubelet, activator or autoscaler probe user agents (prefix match).
pub fn is_health_ua(headers: &HeaderMap) -> bool {
    let ua = user_agent(headers);
    ua.starts_with(UA_KUBE_PROBE_PREFIX)
        || ua.starts_with(UA_ACTIVATOR_PROBE)
        || ua.starts_with(UA_AUTOSCALING_PROBE)
}

/// `KPROBE`: `K-Network-Probe: probe`.
pub fn is_kprobe(headers: &HeaderMap) -> bool {
    first(headers, &K_NETWORK_PROBE) == Some(PROBE_KPROBE)
}

/// `KUBELET_PROBE`: a kube-probe user agent or a non-empty `K-Kubelet-Probe`.
pub fn is_kubelet_probe(headers: &HeaderMap) -> bool {
    user_agent(headers).starts_with(UA_KUBE_PROBE_PREFIX)
        || first(headers, &K_KUBELET_PROBE).is_some_and(|v| !v.is_empty())
}

/// `ANY_PROBE`: a kubelet probe or any non-empty `K-Network-Probe`.
pub fn is_any_probe(headers: &HeaderMap) -> bool {
    is_kubelet_probe(headers) || first(headers, &K_NETWORK_PROBE).is_some_and(|v| !v.is_empty())
}

/// `PROXIED`: `K-Proxy-Request: activator`.
pub fn is_proxied(headers: &HeaderMap) -> bool {
    first(headers, &K_PROXY_REQUEST) == Some(PROXY_REQUEST_ACTIVATOR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn predicates_follow_knative() {
        assert!(is_health_ua(&h(&[("user-agent", "kube-probe/1.30")])));
        assert!(is_health_ua(&h(&[(
            "user-agent",
            "Knative-Activator-Probe"
        )])));
        assert!(!is_health_ua(&h(&[("user-agent", "curl/8")])));
        // K-Kubelet-Probe alone is a kubelet probe but not a health UA.
        let kk = h(&[("k-kubelet-probe", "queue")]);
        assert!(is_kubelet_probe(&kk) && !is_health_ua(&kk));
        assert!(!is_kubelet_probe(&h(&[("k-kubelet-probe", "")])));
        assert!(is_kprobe(&h(&[("K-Network-Probe", "probe")])));
        // Values compare case-sensitively.
        assert!(!is_kprobe(&h(&[("K-Network-Probe", "Probe")])));
        assert!(is_any_probe(&h(&[("K-Network-Probe", "anything")])));
        // Only the first value counts.
        assert!(!is_proxied(&h(&[
            ("k-proxy-request", "x"),
            ("k-proxy-request", "activator")
        ])));
        assert!(is_proxied(&h(&[("k-proxy-request", "activator")])));
    }
}
