//! The upstream forwarding core shared by the queue-proxy (→ user container) and the activator
//! (→ pods): a pooled client, Go `ReverseProxy`-style request/response rewriting, `101` upgrade
//! tunnelling, and an error type that says whether anything reached the upstream.
//!
//! # Public API
//! - [`ClientOptions`]: pool and dial knobs (idle timeout, idle connections per host, connect
//!   timeout, TCP keepalive). `TCP_NODELAY` is always on.
//! - [`Upstream::new(target, &ClientOptions)`](Upstream::new): an HTTP/1.1 connection pool of
//!   our own and an h2c (prior knowledge) client, both dialling the fixed `target` socket address
//!   whatever the request's authority says. Cheap to clone (the pools are shared). Build one per
//!   target (the queue-proxy: `127.0.0.1:USER_PORT`; the activator: one per pod).
//! - [`Upstream::forward(req)`](Upstream::forward)
//!   `-> Result<Response<UpstreamBody<B>>, ProxyError>`: rewrites the request
//!   ([`prepare_request`]), sends it over h2c if the inbound request is HTTP/2 and HTTP/1.1
//!   otherwise (never negotiated, like Knative), strips hop-by-hop response headers
//!   ([`strip_response`]) and tunnels `101` upgrades. The response body, [`UpstreamBody`], is
//!   hyper's [`Incoming`] plus the pooled connection it returns at its end: it streams with
//!   backpressure, carries trailers, and is never collected. `Upstream` is also a tower
//!   `Service<Request<B>>` (`Error = BoxError`, always ready), the innermost layer of a stack.
//! - [`Tunnel`]: inserted into the extensions of a `101` response. The tunnel copies bytes both
//!   ways until either side closes. Layers above call [`Tunnel::hold`] to keep a guard (breaker
//!   permit, in-flight count) alive until the tunnel ends, [`Tunnel::close`] to cut it (e.g. a
//!   revision timeout), and [`Tunnel::closed`] to wait for it.
//! - [`ProxyError`]: a failure before response headers. [`ProxyError::nothing_sent`] is true when
//!   the request provably never reached the upstream (connect failed, e.g. connection refused):
//!   safe to retry on another connection or pod. [`ProxyError::to_response`] renders Go's `502`
//!   (`dial tcp 127.0.0.1:8080: connect: connection refused\n`, `text/plain`, `nosniff`).
//! - [`prepare_request`], [`strip_hop_by_hop`], [`strip_response`], [`is_upgrade_request`]: the
//!   rewriting steps on their own, for callers that need them separately.
//!
//! # Request rewriting (Go `httputil.ReverseProxy`, `queue-proxy.md` §5.6)
//! - Removes `Connection`, `Proxy-Connection`, `Keep-Alive`, `Proxy-Authenticate`,
//!   `Proxy-Authorization`, `Te`, `Transfer-Encoding`, `Upgrade` and every header named in
//!   `Connection`; re-adds `Te: trailers` if the client's `Te` had it, and
//!   `Connection: Upgrade` + `Upgrade: <proto>` on upgrade requests. `Trailer` is kept: it
//!   announces the request's trailers, which hyper's HTTP/1 client sends only when announced.
//! - Appends the TCP peer (from [`ConnInfo`] in the extensions) to `X-Forwarded-For`, joining
//!   earlier values with `, `.
//! - Keeps path, raw query, method, `Host`/`:authority`; adds no `User-Agent`, `Accept-Encoding`,
//!   `Via` or `X-Forwarded-Proto`.
//!
//! # Connection pool (HTTP/1.1)
//! Our own (`proxy/pool.rs`), not hyper-util's legacy `Client`, which cost measurably more CPU
//! per request in the queue-proxy (`benches/RESULTS.md`, "Second hot-path round"): its pool
//! hashes a key on every checkout and return, and spawns a task per request that waits for the
//! connection to become ready again. An `Upstream` has one target, so the pool is one stack:
//! - Each connection is dialled with hyper-util's `HttpConnector` (`TCP_NODELAY`, TCP keepalive,
//!   connect timeout) and driven by one task for its whole life, spawned at connect; requests
//!   reach it through hyper's `client::conn::http1::SendRequest`.
//! - A connection returns to the pool when its response body ends (at once for a response
//!   without a body), never after a `101` (the tunnel keeps it) or a body dropped early (hyper
//!   closes it). By then hyper's connection task has finished the exchange, so the connection is
//!   ready; no task waits for that.
//! - Checkout takes the most recently returned connection that is open, ready, and idle for less
//!   than `pool_idle_timeout` (kept below the app's keep-alive, knative/serving#12414). Closed
//!   and expired ones are dropped on the way; busy ones (a request body still being written) are
//!   skipped. A reaper task, running only while connections are idle, closes the expired ones
//!   (within twice the timeout). At most `pool_max_idle_per_host` are kept; more are closed.
//!
//! # Retries
//! - A request handed to a pooled connection that turned out to be closed before the request was
//!   written comes back from hyper unsent (`try_send_request`) and goes to the next pooled
//!   connection, or a fresh one (hyper-util's `retry_canceled_requests` did the same).
//! - The stale keep-alive race (knative/serving#12414): the app closes an idle connection just
//!   as we write a request on it, and the write "succeeds" into a dying socket. Go's transport
//!   replays such a request when it is replayable (`GET`/`HEAD`/`OPTIONS`/`TRACE` without a
//!   body); so do we, once, when the connection closed or reset before any response byte. The
//!   replay is sent from a copy of the head (method, URI, headers; no extensions) taken before
//!   the first attempt, because hyper consumes a request it has written. Go only replays on a
//!   *reused* connection; we also replay a bodiless `GET` whose fresh connection dies before the
//!   response head (as with hyper-util, which did not say whether a connection was reused). Such
//!   requests are idempotent by definition (RFC 9110 §9.2.2).
//!
//! Nothing else is retried here; callers decide with [`ProxyError::nothing_sent`].
//!
//! # Errors after headers
//! A failure while streaming the body surfaces as an error from the body; hyper then aborts the
//! client connection (HTTP/1) or resets the stream (HTTP/2), so a truncated body never looks
//! complete (Knative §13.11).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    CONNECTION, HOST, HeaderName, HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE,
    TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;

use super::headers::X_FORWARDED_FOR;
use super::response::go_error;
use super::server::ConnInfo;
use crate::error::BoxError;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers Go's `ReverseProxy` removes (`hopHeaders`), except `Trailer` on responses,
/// see [`strip_response`].
const HOP_HEADERS: [HeaderName; 9] = [
    CONNECTION,
    PROXY_CONNECTION,
    KEEP_ALIVE,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Pool and dial settings of an [`Upstream`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Idle pooled connections are closed after this long. Keep it **below** the app's own
    /// keep-alive timeout, or the app closes a connection just as we reuse it
    /// (knative/serving#12414). Default 1.5 s: below gunicorn's 2 s and Node's / uvicorn's 5 s.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per host (Knative: CC if > 0, else 1000).
    pub pool_max_idle_per_host: usize,
    /// Dial timeout; `None` waits for the OS. Connection refused always fails at once.
    pub connect_timeout: Option<Duration>,
    /// TCP keepalive probe interval on upstream connections (Knative: 5 s).
    pub tcp_keepalive: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            pool_idle_timeout: Duration::from_millis(1500),
            pool_max_idle_per_host: 1000,
            connect_timeout: Some(Duration::from_secs(20)),
            tcp_keepalive: Some(Duration::from_secs(5)),
        }
    }
}

/// A connector that dials one fixed address whatever the URI says, so the request URI can carry
/// the client's authority (it becomes h2 `:authority` and the pool key) while we connect to the
/// target.
#[derive(Clone, Debug)]
struct FixedConnector {
    inner: HttpConnector,
    target: Uri,
}

impl tower::Service<Uri> for FixedConnector {
    type Response = PlainConn;
    type Error = <HttpConnector as tower::Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<PlainConn, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let connecting = self.inner.call(self.target.clone());
        Box::pin(async move { connecting.await.map(PlainConn) })
    }
}

/// An upstream TCP connection that reports no connection info to the client. hyper-util copies
/// a connector's "extra" info ([`hyper_util::client::legacy::connect::HttpInfo`]) into the
/// extensions of every response, two allocations per request that nothing here reads.
#[derive(Debug)]
struct PlainConn(TokioIo<tokio::net::TcpStream>);

impl hyper_util::client::legacy::connect::Connection for PlainConn {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

impl hyper::rt::Read for PlainConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for PlainConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}

/// Pooled clients to one upstream address (HTTP/1.1 and h2c prior knowledge).
///
/// Cloning is one reference-count increment: the request path clones its services per request
/// (tower's ready-clone idiom), and a hyper-util `Client` clone copies a dozen fields and
/// `Arc`s, which showed up in the queue-proxy's profile.
#[derive(Debug)]
pub struct Upstream<B = Incoming> {
    inner: Arc<UpstreamInner<B>>,
}

#[derive(Debug)]
struct UpstreamInner<B> {
    h1: Arc<H1Pool<ForwardBody<B>>>,
    h2: Client<FixedConnector, ForwardBody<B>>,
    target: SocketAddr,
    /// `host:port` of the target, used when the request names no authority (HTTP/1.0).
    target_authority: Authority,
}

impl<B> Clone for Upstream<B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B> Upstream<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Builds pooled clients dialling `target`.
    ///
    /// # Panics
    /// Never in practice: a socket address always renders as a valid URI authority.
    pub fn new(target: SocketAddr, opts: &ClientOptions) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_keepalive(opts.tcp_keepalive);
        conn.set_connect_timeout(opts.connect_timeout);
        // The URI passed to `call` is replaced, so its scheme check never sees https.
        conn.enforce_http(false);
        let target_authority =
            Authority::try_from(target.to_string()).expect("a socket address is a valid authority");
        let target_uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(target_authority.clone())
            .path_and_query("/")
            .build()
            .expect("scheme, authority and / make a valid URI");
        let h1 = H1Pool::new(
            conn.clone(),
            target_uri.clone(),
            opts.pool_idle_timeout,
            opts.pool_max_idle_per_host,
        );
        let connector = FixedConnector {
            inner: conn,
            target: target_uri,
        };
        let h2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(opts.pool_idle_timeout)
            .pool_max_idle_per_host(opts.pool_max_idle_per_host)
            .retry_canceled_requests(true)
            // We set Host ourselves (the client's, never the target's).
            .set_host(false)
            .http2_only(true)
            .build(connector);
        Self {
            inner: Arc::new(UpstreamInner {
                h1: Arc::new(h1),
                h2,
                target,
                target_authority,
            }),
        }
    }

    /// The address this upstream dials.
    pub fn target(&self) -> SocketAddr {
        self.inner.target
    }

    /// Forwards `req` and returns the upstream's response head with a streaming body.
    ///
    /// The request is rewritten as described in the module docs. An HTTP/2 request goes out
    /// over h2c, anything else over HTTP/1.1. On an upgrade request answered with `101`, a
    /// [`Tunnel`] is spawned and inserted into the response extensions; the inbound request must
    /// carry hyper's `OnUpgrade` (it does when it comes from [`super::server::serve`]).
    ///
    /// # Errors
    /// [`ProxyError`] when no response head arrived.
    pub async fn forward(
        &self,
        mut req: Request<B>,
    ) -> Result<Response<UpstreamBody<B>>, ProxyError> {
        let upgrade = prepare_request(&mut req);
        let inbound_h2 = req.version() == Version::HTTP_2;
        // Upgrades only exist in HTTP/1.1 (no extended CONNECT, as in Knative).
        let client_upgrade = if upgrade && !inbound_h2 {
            Some(hyper::upgrade::on(&mut req))
        } else {
            None
        };
        let replayable = !upgrade && is_replayable(&req);
        let mut resp = if inbound_h2 {
            self.send_h2(req, replayable).await?
        } else {
            self.send_h1(req, replayable).await?
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return Err(ProxyError::UnexpectedUpgrade);
            };
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let tunnel = Tunnel::new();
            tokio::spawn(tunnel.clone().run(client_upgrade, upstream_upgrade));
            // Like hyper-util's pool, keep the upgraded connection's sender until it is done.
            if let Some(tx) = resp.body_mut().take_upgraded() {
                tunnel.hold(tx);
            }
            resp.extensions_mut().insert(tunnel);
            // Keep `Connection: Upgrade` and `Upgrade`; strip the rest.
            let proto = resp.headers().get(UPGRADE).cloned();
            strip_response(resp.headers_mut());
            if let Some(p) = proto {
                resp.headers_mut().insert(UPGRADE, p);
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("Upgrade"));
            }
        } else {
            strip_response(resp.headers_mut());
        }
        // An intermediary answers with its own version (RFC 9110 §2.5), as Go's ReverseProxy:
        // an HTTP/1.0 upstream's close-delimited body then reaches an HTTP/1.1 client chunked on
        // a connection that stays open, instead of as `HTTP/1.0` with the connection closed.
        if !inbound_h2 && resp.version() == Version::HTTP_10 {
            *resp.version_mut() = Version::HTTP_11;
        }
        Ok(resp)
    }

    /// The authority the request names (URI, then `Host`), else the target's.
    fn authority_of(&self, req: &Request<B>) -> Authority {
        req.uri()
            .authority()
            .cloned()
            .or_else(|| {
                req.headers()
                    .get(HOST)
                    .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            })
            .unwrap_or_else(|| self.inner.target_authority.clone())
    }

    /// HTTP/1.1 through our pool (module docs, "Connection pool").
    async fn send_h1(
        &self,
        mut req: Request<B>,
        replayable: bool,
    ) -> Result<Response<UpstreamBody<B>>, ProxyError> {
        *req.version_mut() = Version::HTTP_11;
        if !req.headers().contains_key(HOST)
            && let Ok(v) = HeaderValue::from_str(self.authority_of(&req).as_str())
        {
            req.headers_mut().insert(HOST, v);
        }
        // HTTP/1.1 request targets are origin-form (authority-form for CONNECT); an inbound
        // origin-form URI (the usual case) is kept as it is.
        if *req.method() == http::Method::CONNECT {
            let a = self.authority_of(&req);
            *req.uri_mut() = Uri::from(a);
        } else if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            let pq = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(pq);
        }
        let pool = &self.inner.h1;
        let mut replay = replayable.then(|| bodiless_copy(&req));
        let mut req = req.map(ForwardBody::Inner);
        loop {
            let (mut tx, reused) = match pool.checkout() {
                Some(tx) => (tx, true),
                None => (
                    pool.connect()
                        .await
                        .map_err(|e| ProxyError::connect(e, self.inner.target))?,
                    false,
                ),
            };
            let mut err = match tx.try_send_request(req).await {
                Ok(resp) => {
                    let lease = pool::Lease {
                        pool: Arc::clone(pool),
                        tx,
                        reusable: true,
                    };
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        // The connection now belongs to the tunnel: never pooled again; the
                        // tunnel keeps its sender (see `forward`).
                        return Ok(resp.map(|b| UpstreamBody::upgraded(b, lease)));
                    }
                    return Ok(resp.map(|b| UpstreamBody::pooled(b, lease)));
                }
                Err(e) => e,
            };
            match err.take_message() {
                // A pooled connection closed before our request was written (hyper hands it
                // back): try the next one, or a fresh connection. The loop ends because every
                // turn either drops a pooled connection or dials.
                Some(back) if reused => {
                    tracing::trace!(error = %err.error(), "pooled upstream connection was closed; retrying");
                    req = back;
                }
                // The request was written and the connection died before the response head:
                // the stale keep-alive race. Replay once if replayable.
                _ => {
                    let again = died_before_response(err.error())
                        .then(|| replay.take())
                        .flatten();
                    let Some(again) = again else {
                        return Err(ProxyError::Transport(err.into_error().into()));
                    };
                    tracing::debug!(error = %err.error(), "upstream connection closed under a replayable request; retrying once");
                    req = again;
                }
            }
        }
    }

    /// h2c prior knowledge through hyper-util's pool.
    async fn send_h2(
        &self,
        mut req: Request<B>,
        replayable: bool,
    ) -> Result<Response<UpstreamBody<B>>, ProxyError> {
        let authority = self.authority_of(&req);
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority)
            .path_and_query(pq)
            .build()
            .map_err(ProxyError::request)?;
        *req.version_mut() = Version::HTTP_2;
        // :authority carries the host; a Host header next to it is not sent by Go either.
        req.headers_mut().remove(HOST);
        let client = &self.inner.h2;
        let replay = replayable.then(|| bodiless_copy(&req));
        let resp = match client.request(req.map(ForwardBody::Inner)).await {
            Ok(resp) => resp,
            Err(e) => match replay {
                Some(again) if !e.is_connect() && died_before_response(&e) => {
                    tracing::debug!(error = %e, "upstream connection closed under a replayable request; retrying once");
                    client
                        .request(again)
                        .await
                        .map_err(|e| ProxyError::from_client(e, self.inner.target))?
                }
                _ => return Err(ProxyError::from_client(e, self.inner.target)),
            },
        };
        Ok(resp.map(UpstreamBody::unpooled))
    }
}

impl<B> tower::Service<Request<B>> for Upstream<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<UpstreamBody<B>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<UpstreamBody<B>>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.forward(req).await.map_err(Into::into) })
    }
}

// === replay (stale keep-alive) ===

/// Go's `Request.isReplayable`: an idempotent method without a body (or an idempotency key,
/// which we do not honour: it would allow replaying bodies we have already streamed away).
fn is_replayable<B: Body>(req: &Request<B>) -> bool {
    matches!(
        *req.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::TRACE
    ) && req.body().is_end_stream()
}

/// What a replay needs: method, URI, version and headers. Not the extensions: hyper's clients
/// read none we set (header-case maps and extended CONNECT are off), and cloning them cost a
/// map plus a box per entry on every bodiless request.
fn bodiless_copy<B>(req: &Request<B>) -> Request<ForwardBody<B>> {
    let mut copy = Request::new(ForwardBody::Empty);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// The connection closed or was reset before the response head: what a stale pooled
/// connection looks like once the request was written. `e` is hyper's error (HTTP/1.1) or
/// hyper-util's (h2c, not a connect error).
fn died_before_response(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(h) = c.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled())
        {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            )
        {
            return true;
        }
        cur = c.source();
    }
    false
}

/// The body type of upstream requests: the caller's body, or nothing for a replay.
#[derive(Debug)]
enum ForwardBody<B> {
    /// The caller's body.
    Inner(B),
    /// A replayed bodiless request.
    Empty,
}

impl<B> Body for ForwardBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            Self::Inner(b) => Pin::new(b).poll_frame(cx),
            Self::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Inner(b) => b.is_end_stream(),
            Self::Empty => true,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Inner(b) => b.size_hint(),
            Self::Empty => http_body::SizeHint::with_exact(0),
        }
    }
}

// === request / response rewriting ===

/// True if the request asks for a protocol upgrade (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// True if any header is hop-by-hop. A header named in `Connection` needs `Connection` itself,
/// so the standard list is enough. Most requests and responses carry none, and one pass over
/// the few names is cheaper than the ten hashed lookups of [`strip_hop_by_hop`] (measured:
/// header-map hashing was ≈ 4 % of the queue-proxy's CPU).
fn has_hop_by_hop(headers: &HeaderMap) -> bool {
    headers.keys().any(|k| HOP_HEADERS.contains(k))
}

/// Removes hop-by-hop headers: the standard list and every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !has_hop_by_hop(headers) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_HEADERS {
        headers.remove(name);
    }
}

/// Rewrites an inbound request for the upstream, in place (module docs). Returns whether it is an
/// upgrade request. Reads the peer from [`ConnInfo`] in the extensions, if present.
pub fn prepare_request<B>(req: &mut Request<B>) -> bool {
    let headers = req.headers_mut();
    // No hop-by-hop header (the usual case): no upgrade, no `Te`, nothing to strip.
    let upgrade_proto = if has_hop_by_hop(headers) {
        let upgrade_proto = is_upgrade_request(headers)
            .then(|| headers.get(UPGRADE).cloned())
            .flatten();
        let te_trailers = headers
            .get_all(TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
        // `Trailer` announces the request's trailer fields, and hyper's HTTP/1 client sends
        // only announced ones: without it an HTTP/1 upstream never sees them (Go's transport
        // re-announces `req.Trailer` the same way).
        let trailer: Vec<HeaderValue> = headers.get_all(TRAILER).iter().cloned().collect();
        strip_hop_by_hop(headers);
        for v in trailer {
            headers.append(TRAILER, v);
        }
        if te_trailers {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        }
        if let Some(proto) = &upgrade_proto {
            headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
            headers.insert(UPGRADE, proto.clone());
        }
        upgrade_proto
    } else {
        None
    };
    let peer = req.extensions().get::<ConnInfo>().map(|c| c.remote.ip());
    if let Some(ip) = peer {
        // Rendered on the stack: the longest IPv6 text is 45 bytes.
        let mut buf = [0u8; 64];
        let mut cur = std::io::Cursor::new(&mut buf[..]);
        if std::io::Write::write_fmt(&mut cur, format_args!("{ip}")).is_ok() {
            let n = usize::try_from(cur.position()).unwrap_or(0);
            if let Ok(ip) = std::str::from_utf8(&buf[..n]) {
                append_forwarded_for(req.headers_mut(), ip);
            }
        }
    }
    upgrade_proto.is_some()
}

/// Appends `ip` to `X-Forwarded-For`, joining earlier values (several header lines too) with
/// `, ` into one line, as Go's `ReverseProxy` does.
pub fn append_forwarded_for(headers: &mut HeaderMap, ip: &str) {
    let earlier = || {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
    };
    // One exactly sized buffer that becomes the header value without another copy (this runs
    // for every proxied request).
    let len = earlier().map(|s| s.len() + 2).sum::<usize>() + ip.len();
    let mut value = Vec::with_capacity(len);
    for s in earlier() {
        value.extend_from_slice(s.as_bytes());
        value.extend_from_slice(b", ");
    }
    value.extend_from_slice(ip.as_bytes());
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

/// Removes hop-by-hop headers from a response. `Trailer` is kept: it announces trailers, and
/// hyper's HTTP/1 encoder only sends trailer fields the response announced (Go re-announces
/// them too).
pub fn strip_response(headers: &mut HeaderMap) {
    if !has_hop_by_hop(headers) {
        return;
    }
    let trailer: Vec<HeaderValue> = headers.get_all(TRAILER).iter().cloned().collect();
    strip_hop_by_hop(headers);
    for v in trailer {
        headers.append(TRAILER, v);
    }
}

// === impl Tunnel ===

/// A running `101` tunnel between the client and the upstream (see the module docs).
#[derive(Clone, Debug)]
pub struct Tunnel {
    inner: Arc<TunnelInner>,
}

struct TunnelInner {
    /// `None` once the tunnel ended: later guards are dropped at once.
    guards: Mutex<Option<Vec<Box<dyn Send>>>>,
    close: CancellationToken,
    done: CancellationToken,
}

impl std::fmt::Debug for TunnelInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelInner")
            .field("closed", &self.done.is_cancelled())
            .finish()
    }
}

impl Tunnel {
    fn new() -> Self {
        Self {
            inner: Arc::new(TunnelInner {
                guards: Mutex::new(Some(Vec::new())),
                close: CancellationToken::new(),
                done: CancellationToken::new(),
            }),
        }
    }

    /// Keeps `guard` alive until the tunnel ends (dropped at once if it already ended).
    pub fn hold<G: Send + 'static>(&self, guard: G) {
        let mut guards = self.inner.guards.lock().unwrap_or_else(|p| p.into_inner());
        match guards.as_mut() {
            Some(v) => v.push(Box::new(guard)),
            None => {
                drop(guards);
                drop(guard);
            }
        }
    }

    /// Cuts the tunnel: both connections are closed.
    pub fn close(&self) {
        self.inner.close.cancel();
    }

    /// Resolves when the tunnel has ended (either side closed, an error, or [`Tunnel::close`]).
    pub async fn closed(&self) {
        self.inner.done.cancelled().await;
    }

    /// True once the tunnel has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.done.is_cancelled()
    }

    async fn run(self, client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
        let copy = async {
            let (client, upstream) = tokio::try_join!(client, upstream)?;
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
            Ok::<_, BoxError>(())
        };
        tokio::select! {
            res = copy => if let Err(error) = res {
                tracing::debug!(error = %error, "upgrade tunnel ended with error");
            },
            _ = self.inner.close.cancelled() => tracing::debug!("upgrade tunnel closed"),
        }
        let guards = self
            .inner
            .guards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(guards);
        self.inner.done.cancel();
    }
}

// === impl ProxyError ===

/// A failure before the upstream's response head arrived.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The connection could not be opened: nothing was sent (safe to retry elsewhere).
    #[error("dial tcp {addr}: connect: {reason}")]
    Connect {
        /// The address dialled.
        addr: SocketAddr,
        /// Go-style reason (`connection refused`, `i/o timeout`, …).
        reason: String,
        /// The connector's (or hyper's handshake) error.
        #[source]
        source: BoxError,
    },
    /// The request may have (partly) reached the upstream: connection reset, closed before the
    /// response, protocol error. The source is hyper's error (HTTP/1.1) or hyper-util's (h2c).
    #[error("{0}")]
    Transport(#[source] BoxError),
    /// The request could not be turned into an upstream request (bad authority).
    #[error("invalid upstream request: {0}")]
    Request(#[source] http::Error),
    /// The upstream answered `101` to a request that cannot be upgraded.
    #[error("upstream switched protocols on a request that cannot be upgraded")]
    UnexpectedUpgrade,
}

impl ProxyError {
    fn request(e: http::Error) -> Self {
        Self::Request(e)
    }

    fn from_client(e: hyper_util::client::legacy::Error, addr: SocketAddr) -> Self {
        if e.is_connect() {
            Self::connect(e.into(), addr)
        } else {
            Self::Transport(e.into())
        }
    }

    fn connect(e: BoxError, addr: SocketAddr) -> Self {
        let reason = crate::error::cause_ref::<std::io::Error>(e.as_ref())
            .map(go_io_reason)
            .unwrap_or_else(|| "connection failed".to_owned());
        Self::Connect {
            addr,
            reason,
            source: e,
        }
    }

    /// True when the request provably never reached the upstream, so it may be retried on
    /// another connection or pod.
    pub fn nothing_sent(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Request(_))
    }

    /// True when the dial failed for lack of local resources (descriptors, memory, ports):
    /// our own trouble, not the upstream's. Such a failure must not eject a healthy pod; the
    /// request fails with 502 instead of being retried elsewhere, where it would fail the same.
    pub fn is_local_exhaustion(&self) -> bool {
        let Self::Connect { source, .. } = self else {
            return false;
        };
        crate::error::cause_ref::<std::io::Error>(source.as_ref())
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|e| {
                matches!(
                    e,
                    libc::EMFILE
                        | libc::ENFILE
                        | libc::ENOBUFS
                        | libc::ENOMEM
                        | libc::EADDRNOTAVAIL
                )
            })
    }

    /// Go's `502 Bad Gateway` for this error: body `<error text>\n`, `text/plain`, `nosniff`.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        go_error(StatusCode::BAD_GATEWAY, &self.go_text())
    }

    /// The error text as Go's transport would print it, as far as we can tell: the whole
    /// cause chain joined with `: `.
    pub fn go_text(&self) -> String {
        match self {
            Self::Transport(e) => {
                let mut s = e.to_string();
                let mut cur = e.source();
                while let Some(c) = cur {
                    s.push_str(": ");
                    s.push_str(&c.to_string());
                    cur = c.source();
                }
                s
            }
            other => other.to_string(),
        }
    }
}

/// An `io::Error` as Go's `syscall.Errno` strings print it.
fn go_io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::TimedOut => "i/o timeout".into(),
        ErrorKind::ConnectionReset => "connection reset by peer".into(),
        ErrorKind::AddrNotAvailable => "cannot assign requested address".into(),
        _ => {
            let s = e.to_string();
            // Rust appends " (os error N)"; Go does not.
            let s = s.split(" (os error").next().unwrap_or(&s);
            s.to_lowercase()
        }
    }
}

/// A service that answers every error with its response: used where an `Infallible` service is
/// needed around [`Upstream`] in tests and simple callers.
pub async fn forward_or_502<B>(
    upstream: &Upstream<B>,
    req: Request<B>,
) -> Result<Response<http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>>, Infallible>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    use http_body_util::BodyExt;
    Ok(match upstream.forward(req).await {
        Ok(resp) => resp.map(|b| b.map_err(Into::into).boxed_unsync()),
        Err(e) => e
            .to_response()
            .map(|b| b.map_err(|n| match n {}).boxed_unsync()),
    })
}

mod pool;

use pool::H1Pool;
pub use pool::UpstreamBody;

#[cfg(test)]
mod tests;
