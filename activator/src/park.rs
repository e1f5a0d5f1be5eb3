//! Holding a new HTTP/1 connection's first request outside hyper while its revision has no
//! capacity ([`shared::http::park`]): a held request then costs its socket, its head bytes and a
//! waiter in the revision's throttler queue, instead of hyper's ≈ 21 KiB per connection.
//!
//! [`Parker`] sees the first head of every new HTTP/1 connection (before hyper) and holds it
//! only when nothing about it is special: not a probe or health check, a known revision that
//! would have to wait now, resolved without a traffic split, tracing off. It then does what the
//! request path would do for a held request, in the same order: report the request to the
//! concurrency reporter (the first request of a revision pokes the autoscaler) and wait in the
//! revision's throttler queue (FIFO with every other waiter, same bounds, same
//! `kn_revision_request_queued` gauge), bounded by the revision's timeout. The outcome (a lease,
//! queue full, or timed out) rides as a [`Parked`] ticket into the connection's first request,
//! and the stack uses it instead of resolving, reporting and queueing again, so responses (200,
//! 503 `pending request queue full`, 504 `activator request timeout`, …) are those of the
//! ordinary path.
//!
//! Everything else goes to hyper at once with the bytes replayed, and is held, if at all, in the
//! ordinary way inside hyper; so are later requests of a kept-alive connection (docs/activator.md).

use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use http::Request;
use shared::http::headers::{self, KNATIVE_SERVING_NAMESPACE, KNATIVE_SERVING_REVISION};
use shared::http::park::{FirstHead, HoldFuture};
use shared::http::server::ConnInfo;
use tokio::time::Instant;

use crate::reporter::InFlight;
use crate::stack::{HELD_REQUEST_OVERHEAD, Handler};
use crate::throttler::{Lease, QueueFull, RevisionThrottler};

/// Holds plain first requests of new HTTP/1 connections for revisions without capacity.
#[derive(Debug)]
pub struct Parker {
    handler: Arc<Handler>,
}

impl Parker {
    /// A parker for `handler`'s revisions.
    pub fn new(handler: Arc<Handler>) -> Arc<Self> {
        Arc::new(Self { handler })
    }
}

/// The outcome of a hold, for the connection's first request (request extensions).
#[derive(Clone, Debug)]
pub struct Parked(Arc<ParkedInner>);

#[derive(Debug)]
struct ParkedInner {
    throttler: Arc<RevisionThrottler>,
    arrived: Instant,
    timed_out: bool,
    in_flight: Mutex<Option<InFlight>>,
    lease: Mutex<Option<Result<Lease, QueueFull>>>,
}

impl Parked {
    /// The revision the head was resolved to.
    pub fn throttler(&self) -> &Arc<RevisionThrottler> {
        &self.0.throttler
    }

    /// When the request arrived (its timeouts count from here).
    pub fn arrived(&self) -> Instant {
        self.0.arrived
    }

    /// Whether the revision timeout passed while held.
    pub fn timed_out(&self) -> bool {
        self.0.timed_out
    }

    /// The concurrency mark taken when the request arrived (once).
    pub fn take_in_flight(&self) -> Option<InFlight> {
        self.0.in_flight.lock().ok()?.take()
    }

    /// The lease acquired while held, or the queue-full refusal (once; `None` after a timeout).
    pub fn take_lease(&self) -> Option<Result<Lease, QueueFull>> {
        self.0.lease.lock().ok()?.take()
    }
}

impl FirstHead for Parker {
    fn hold(&self, head: &httparse::Request<'_, '_>, _info: &ConnInfo) -> Option<HoldFuture> {
        let req = routing_request(head)?;
        let throttler = resolve_ahead(&self.handler, &req)?;
        if !throttler.likely_to_wait() {
            return None;
        }
        // `map`, not an `async` block: a future captured by an `async` block and awaited in it
        // is stored twice (≈ 0.3 KiB more per parked connection).
        Some(Box::pin(
            hold(&self.handler, throttler, head_bytes(head)).map(|parked| {
                let mut ext = http::Extensions::new();
                ext.insert(parked);
                ext
            }),
        ))
    }
}

/// The revision of `req` if it may be resolved, and held, ahead of the request path: nothing
/// about it is special (not a probe, tracing off, no traffic split, the catalog is applied) and
/// its revision is known. Used for the first head of a new HTTP/1 connection (outside hyper)
/// and for every request hyper hands to the stack (`stack::hold_ahead`); the request is held if
/// the revision would make it wait now ([`RevisionThrottler::likely_to_wait`]).
pub(crate) fn resolve_ahead<B>(h: &Handler, req: &Request<B>) -> Option<Arc<RevisionThrottler>> {
    if h.tracer.enabled() {
        // Spans start when the request enters the stack; holding it ahead would hide the
        // wait from them.
        return None;
    }
    if req.extensions().get::<Parked>().is_some() || headers::is_any_probe(req.headers()) {
        return None;
    }
    let key = {
        // Short synchronous read of the current snapshot, as in the stack's resolution.
        let snap = h.catalog.borrow();
        if *h.applied.borrow() < snap.version || crate::stack::split_of(req, &snap).is_some() {
            // The manager is applying a newer catalog, or a split picks the revision (a
            // pick advances its rotation, so it must happen once, in the stack).
            return None;
        }
        crate::stack::resolve_key(req, &h.cluster_domain, &snap.routes)
    };
    h.throttlers.get(&key).map(|t| Arc::clone(&t))
}

/// Does what the request path does for a held request, in the same order: report it now (the
/// first request of a revision pokes the autoscaler), then wait in the throttler queue bounded
/// by the revision timeout. The future is small (the waiter and its deadline): it is all that
/// is alive while the request waits.
pub(crate) fn hold(
    h: &Handler,
    throttler: Arc<RevisionThrottler>,
    bytes: usize,
) -> impl Future<Output = Parked> + Send + use<> {
    let arrived = Instant::now();
    let spec = throttler.spec();
    let limit = spec
        .response_start_timeout
        .map_or(spec.timeout, |r| r.min(spec.timeout));
    let in_flight = h.reporter.request_in(&throttler.key);
    async move {
        let (lease, timed_out) =
            match tokio::time::timeout_at(arrived + limit, throttler.acquire(bytes)).await {
                Ok(res) => (Some(res), false),
                Err(_) => (None, true),
            };
        Parked(Arc::new(ParkedInner {
            throttler,
            arrived,
            timed_out,
            in_flight: Mutex::new(Some(in_flight)),
            lease: Mutex::new(lease),
        }))
    }
}

/// A request with only what routing and probe detection read: the target and the headers
/// `Host`, `Knative-Serving-*`, `User-Agent`, `K-Kubelet-Probe` and `K-Network-Probe`. `None`
/// when any of them is not what hyper would accept (hyper then answers it).
fn routing_request(head: &httparse::Request<'_, '_>) -> Option<Request<()>> {
    use shared::http::headers::{K_KUBELET_PROBE, K_NETWORK_PROBE};
    let mut b = Request::builder().uri(head.path?);
    for h in head.headers.iter() {
        let name = h.name;
        let wanted = [
            http::header::HOST.as_str(),
            KNATIVE_SERVING_NAMESPACE.as_str(),
            KNATIVE_SERVING_REVISION.as_str(),
            http::header::USER_AGENT.as_str(),
            K_KUBELET_PROBE.as_str(),
            K_NETWORK_PROBE.as_str(),
        ]
        .iter()
        .any(|w| name.eq_ignore_ascii_case(w));
        if wanted {
            b = b.header(name, h.value);
        }
    }
    b.body(()).ok()
}

/// What the held request counts against the byte bound: the same estimate as for a request
/// held inside hyper (`stack::head_bytes`), so the bounds admit the same requests.
fn head_bytes(head: &httparse::Request<'_, '_>) -> usize {
    let h: usize = head
        .headers
        .iter()
        .map(|h| h.name.len() + h.value.len() + 4)
        .sum();
    h + head.path.map_or(0, str::len) + HELD_REQUEST_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<'h, 'b>(
        raw: &'b [u8],
        headers: &'h mut [httparse::Header<'b>],
    ) -> httparse::Request<'h, 'b> {
        let mut req = httparse::Request::new(headers);
        assert!(req.parse(raw).unwrap().is_complete());
        req
    }

    #[test]
    fn routing_request_keeps_only_routing_and_probe_headers() {
        let mut hs = [httparse::EMPTY_HEADER; 16];
        let head = parse(
            b"POST /a?b HTTP/1.1\r\nHost: rev.ns.svc.cluster.local\r\nX-Other: 1\r\n\
              knative-serving-namespace: ns\r\nKnative-Serving-Revision: rev\r\n\
              User-Agent: kube-probe/1.33\r\n\r\n",
            &mut hs,
        );
        let req = routing_request(&head).unwrap();
        assert_eq!(req.uri(), "/a?b");
        assert_eq!(req.headers().len(), 4);
        assert!(req.headers().get("x-other").is_none());
        assert!(headers::is_kubelet_probe(req.headers()));
        let none = std::collections::BTreeMap::new();
        assert_eq!(
            crate::stack::resolve_key(&req, "cluster.local", &none),
            crate::catalog::RevisionKey::new("ns", "rev")
        );
    }

    #[test]
    fn routing_request_without_host_uses_the_absolute_target() {
        let mut hs = [httparse::EMPTY_HEADER; 4];
        let head = parse(
            b"GET http://rev.ns.svc.cluster.local/x HTTP/1.1\r\n\r\n",
            &mut hs,
        );
        let req = routing_request(&head).unwrap();
        let none = std::collections::BTreeMap::new();
        assert_eq!(
            crate::stack::resolve_key(&req, "cluster.local", &none),
            crate::catalog::RevisionKey::new("ns", "rev")
        );
    }

    #[test]
    fn byte_estimate_matches_the_stack() {
        let mut hs = [httparse::EMPTY_HEADER; 4];
        let head = parse(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", &mut hs);
        assert_eq!(head_bytes(&head), 4 + 1 + 4 + 2 + HELD_REQUEST_OVERHEAD);
    }
}
