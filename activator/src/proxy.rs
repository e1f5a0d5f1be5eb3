//! The activator's hop to a pod: Knative's activator-specific rewriting (activator.md §3.4) on
//! top of the shared forwarding core [`shared::http::proxy::Upstream`], plus a request body that
//! can be taken back when a dial failed, so a refused request is retried on another pod.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HOST, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use shared::error::BoxError;
use shared::http::headers::{
    K_ORIGINAL_HOST, K_PROXY_REQUEST, KNATIVE_SERVING_NAMESPACE, KNATIVE_SERVING_REVISION,
    PROXY_REQUEST_ACTIVATOR, X_FORWARDED_PROTO,
};

use crate::catalog::Protocol;

/// A request body whose inner [`Incoming`] can be reclaimed after a failed dial (nothing was
/// read from it then). The mutex is only taken inside `poll_frame`, never across an await. An
/// empty body (most requests) is not kept at all, so it costs no allocation.
#[derive(Clone, Debug, Default)]
pub struct ReclaimBody {
    inner: Option<Arc<Mutex<Option<Incoming>>>>,
}

impl ReclaimBody {
    /// Wraps `body`.
    pub fn new(body: Incoming) -> Self {
        if body.is_end_stream() {
            return Self::empty();
        }
        Self {
            inner: Some(Arc::new(Mutex::new(Some(body)))),
        }
    }

    /// An empty body (probes).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Takes the inner body back; `None` for an empty body.
    pub fn take(&self) -> Option<Incoming> {
        self.inner
            .as_ref()?
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

impl Body for ReclaimBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(inner) = &self.inner else {
            return Poll::Ready(None);
        };
        let mut guard = inner.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|inner| {
            inner
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_none_or(Body::is_end_stream)
        })
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(
            || SizeHint::with_exact(0),
            |inner| {
                inner
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
            },
        )
    }
}

/// Rewrites an inbound request for the pod at `dest` the way Knative's activator does:
/// `K-Original-Host` = inbound Host (unless already set), Host = the dest, `K-Proxy-Request:
/// activator`, and the `Knative-Serving-Revision`/`-Namespace` routing headers removed. The
/// shared core adds hop-by-hop stripping and `X-Forwarded-For`. `dest` is parsed once per pod
/// ([`crate::throttler::PodTracker::authority`]); without one the URI is left as it is.
pub fn rewrite_for_dest<B>(req: &mut Request<B>, dest: Option<&Authority>) {
    let headers = req.headers_mut();
    let inbound_host = headers.remove(HOST);
    let inbound_host = inbound_host.or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let headers = req.headers_mut();
    if !headers.contains_key(K_ORIGINAL_HOST)
        && let Some(h) = inbound_host
    {
        headers.insert(K_ORIGINAL_HOST, h);
    }
    headers.insert(
        K_PROXY_REQUEST,
        HeaderValue::from_static(PROXY_REQUEST_ACTIVATOR),
    );
    headers.remove(KNATIVE_SERVING_REVISION);
    headers.remove(KNATIVE_SERVING_NAMESPACE);
    if let Some(authority) = dest {
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// What a Knative ingress does to a request on its way to a revision, for `activator local`,
/// where the activator is the ingress: `X-Forwarded-Proto` is the scheme the client used
/// (always `http`: local mode has no TLS listener; set, not appended, as an edge proxy does),
/// which the queue-proxy folds into `Forwarded`; and an `h2c` revision is spoken to over HTTP/2
/// whatever the client's version (test/conformance/runtime/protocol_test.go), and an `http1`
/// revision over HTTP/1.1 whatever the client's version. Upgrade requests
/// (`plain` false) stay HTTP/1.1: an upgrade does not exist in HTTP/2 here, as in Knative.
pub fn as_ingress<B>(req: &mut Request<B>, protocol: Protocol, plain: bool) {
    req.headers_mut()
        .insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    match protocol {
        Protocol::H2c if plain => *req.version_mut() = Version::HTTP_2,
        // An HTTP/2 client's request reaches an `http1` revision over HTTP/1.1: the app may
        // speak nothing else (Knative's runtime contract).
        Protocol::Http1 => *req.version_mut() = Version::HTTP_11,
        Protocol::H2c => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_ingress_sets_the_scheme_and_h2c_for_h2c_revisions() {
        let mut req = Request::builder()
            .header(X_FORWARDED_PROTO, "https")
            .body(())
            .unwrap();
        as_ingress(&mut req, Protocol::Http1, true);
        assert_eq!(req.headers()[X_FORWARDED_PROTO], "http");
        assert_eq!(req.version(), Version::HTTP_11);
        as_ingress(&mut req, Protocol::H2c, false);
        assert_eq!(req.version(), Version::HTTP_11, "upgrades stay HTTP/1.1");
        as_ingress(&mut req, Protocol::H2c, true);
        assert_eq!(req.version(), Version::HTTP_2);
        as_ingress(&mut req, Protocol::Http1, true);
        assert_eq!(
            req.version(),
            Version::HTTP_11,
            "an h2 client to an http1 revision"
        );
    }

    #[test]
    fn activator_headers() {
        let mut req = Request::builder()
            .uri("/p?q=1")
            .header(HOST, "hello.default.example.com")
            .header(KNATIVE_SERVING_REVISION, "r")
            .header(KNATIVE_SERVING_NAMESPACE, "ns")
            .body(())
            .unwrap();
        rewrite_for_dest(&mut req, Some(&Authority::from_static("10.0.0.1:8012")));
        assert_eq!(req.uri(), "http://10.0.0.1:8012/p?q=1");
        assert!(req.headers().get(HOST).is_none());
        assert_eq!(req.headers()[K_ORIGINAL_HOST], "hello.default.example.com");
        assert_eq!(req.headers()[K_PROXY_REQUEST], "activator");
        assert!(req.headers().get(KNATIVE_SERVING_REVISION).is_none());
        assert!(req.headers().get(KNATIVE_SERVING_NAMESPACE).is_none());
        // An existing K-Original-Host wins.
        let mut req = Request::builder()
            .uri("/")
            .header(HOST, "b")
            .header(K_ORIGINAL_HOST, "a")
            .body(())
            .unwrap();
        rewrite_for_dest(&mut req, Some(&Authority::from_static("10.0.0.1:8012")));
        assert_eq!(req.headers()[K_ORIGINAL_HOST], "a");
    }
}
