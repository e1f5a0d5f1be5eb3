//! The accept loop: HTTP/1.1 and h2c (prior knowledge) on one port, upgrades allowed, graceful
//! shutdown on a token. Both binaries serve every listener through [`serve`].
//!
//! Hostile HTTP/1 input is answered here, before any layer runs, so nothing of it is forwarded:
//! hyper itself answers oversized heads (431), too many headers (431) and malformed heads,
//! methods, `Content-Length`s and chunk sizes (400); [`serve`] adds `400` for a request with
//! both `Content-Length` and `Transfer-Encoding` ([`super::framing`]) and for `CONNECT` that is
//! HTTP/1.0 or not in authority form (RFC 9112 §3.2.3).
//!
//! The protocol is chosen by peeking at the first bytes (the 24-byte HTTP/2 preface or not) and
//! the connection is then handed to hyper's HTTP/1 or HTTP/2 server directly. hyper-util's
//! `auto` builder does the same by *reading* the first bytes and replaying them, and that first
//! short read made hyper grow every HTTP/1 connection's read buffer from 8 to 16 KiB: 8 KiB more
//! per open connection, which dominated the memory of held requests (docs/activator.md).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

use super::conn_limit::{ConnectionLimit, ConnectionPermit};
use super::framing::{Inspect, Tracker, Verdict, Verdicts};
use super::h2_guard::{H2Limits, StreamGuard, Streams};
use super::park::{self, First, FirstHead, Rewind};
use super::response::go_error;

/// The HTTP/2 connection preface (RFC 9113 §3.4) a prior-knowledge h2c client sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long an HTTP/2 connection sent GOAWAY for idleness or resets may take to finish.
const GOAWAY_GRACE: Duration = Duration::from_secs(10);

/// Largest request head we accept; larger heads get `431` from hyper. Knative's Go server allows
/// 1 MiB; we document 64 KiB as a deliberate, safer limit (`docs/compatibility.md`).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Per-connection facts, inserted into every request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    /// The TCP peer (used for `X-Forwarded-For`).
    pub remote: SocketAddr,
    /// The local address the connection arrived on.
    pub local: SocketAddr,
}

/// How often an accept loop may log the same trouble (failed accepts, shed connections).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A warning logged at most once per [`WARN_EVERY`], with the number of times it was held back.
#[derive(Debug, Default)]
struct Throttled {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttled {
    /// Whether to log now, and how many occurrences were held back since the last log.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now < t + WARN_EVERY) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// The next connection of `listener` (with `TCP_NODELAY` set) and its [`ConnInfo`], or `None`
/// once `shutdown` is cancelled. Accept errors (EMFILE and friends) back off 50 ms instead of
/// spinning or ending the loop, and are logged once per 10 s at most (with the count held
/// back). `local` is the listener's address, read once by the caller.
pub async fn accept(
    listener: &TcpListener,
    local: Option<SocketAddr>,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, ConnInfo)> {
    let mut warn = Throttled::default();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, mut remote)) => {
                    let _ = stream.set_nodelay(true);
                    // A dual-stack `[::]` listener reports IPv4 peers as `::ffff:a.b.c.d`; Go
                    // unmaps them, so `X-Forwarded-For` and logs carry the plain IPv4 address.
                    remote.set_ip(remote.ip().to_canonical());
                    let info = ConnInfo {
                        remote,
                        local: local.unwrap_or(remote),
                    };
                    return Some((stream, info));
                }
                Err(error) => {
                    if let Some(held_back) = warn.due() {
                        tracing::warn!(error = %error, held_back, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Knobs of the HTTP server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Serve HTTP/1 only (admin and metrics ports); otherwise h1 and h2c are auto-detected.
    pub http1_only: bool,
    /// Time allowed for a client to send a complete request head (slowloris guard).
    pub header_read_timeout: Duration,
    /// Largest request head in bytes (hyper answers 431 beyond it).
    pub max_header_bytes: usize,
    /// Most header fields in one request (hyper answers 431 beyond it; we answer 431 on
    /// HTTP/2 beyond it too).
    pub max_headers: usize,
    /// HTTP/2 idle timeout and early-reset bound ([`super::h2_guard`]).
    pub h2: H2Limits,
    /// Open client connections allowed; more are closed at accept. By default one budget for
    /// the whole process, below its descriptor limit ([`super::conn_limit`]).
    pub connections: ConnectionLimit,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            http1_only: false,
            // Go's ReadHeaderTimeout on Knative's listeners.
            header_read_timeout: Duration::from_secs(60),
            max_header_bytes: MAX_HEADER_BYTES,
            max_headers: 200,
            h2: H2Limits::default(),
            connections: ConnectionLimit::process(),
        }
    }
}

/// Serves `svc` on `listener` until `shutdown` is cancelled, then stops accepting and waits for
/// open connections to finish their in-flight requests (HTTP/1 keep-alive connections are closed
/// after their current response; HTTP/2 connections get GOAWAY).
///
/// The caller bounds the wait (e.g. with the revision timeout). Upgraded connections are handed to
/// the service and are not tracked here.
///
/// The service must be always ready (every service in our stacks is).
pub async fn serve<S, B>(
    listener: TcpListener,
    svc: S,
    opts: ServerOptions,
    shutdown: CancellationToken,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_with(listener, svc, opts, None, shutdown).await;
}

/// [`serve`], with `hold` offered the first request head of every new HTTP/1 connection: a
/// connection it holds waits outside hyper (socket and head bytes only) until the hold
/// resolves, then hyper serves it as if it had read the bytes itself ([`super::park`]).
/// Held connections are in flight: shutdown waits for them like for hyper's requests.
pub async fn serve_with<S, B>(
    listener: TcpListener,
    svc: S,
    opts: ServerOptions,
    hold: Option<Arc<dyn FirstHead>>,
    shutdown: CancellationToken,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limit = opts.connections.clone();
    let common = Common::new(opts, hold);
    accept_loop(
        listener,
        limit,
        shutdown,
        move |stream, info, closing, permit| {
            connection(
                Arc::clone(&common),
                svc.clone(),
                stream,
                info,
                closing,
                permit,
            )
        },
    )
    .await;
}

/// A connection after a handshake step (TLS): the stream to speak HTTP on, whether it speaks
/// HTTP/2 (ALPN), and extensions added to every request on it.
pub struct Handshaken<I> {
    /// The decrypted stream.
    pub io: I,
    /// HTTP/2 (else HTTP/1.1).
    pub h2: bool,
    /// Added to every request (e.g. the negotiated TLS parameters).
    pub extensions: http::Extensions,
}

/// [`serve`] with a handshake step before HTTP (the queue-proxy's TLS port): everything after
/// it is the plain path, framing checks and graceful shutdown included. The handshake is
/// bounded by the header-read timeout and abandoned at shutdown; `None` drops the connection.
pub async fn serve_handshaken<S, B, H, Fut, I>(
    listener: TcpListener,
    svc: S,
    opts: ServerOptions,
    handshake: H,
    shutdown: CancellationToken,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    H: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Handshaken<I>>> + Send + 'static,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limit = opts.connections.clone();
    let common = Common::new(opts, None);
    accept_loop(
        listener,
        limit,
        shutdown,
        move |stream, info, closing, permit| {
            let (common, svc) = (Arc::clone(&common), svc.clone());
            // One deadline for the handshake and the first request head.
            let deadline = Instant::now() + common.opts.header_read_timeout;
            let hs = handshake(stream);
            async move {
                let _permit = permit;
                let done = tokio::select! {
                    r = tokio::time::timeout_at(deadline, hs) => r,
                    _ = closing.cancelled() => return,
                };
                let Ok(Some(h)) = done else {
                    tracing::debug!("handshake failed or timed out");
                    return;
                };
                let extra = (!h.extensions.is_empty()).then_some(h.extensions);
                let io = Io {
                    io: h.io,
                    h2: h.h2,
                    pre: Vec::new(),
                    first: None,
                    extra,
                    deadline: Some(deadline),
                };
                drive(&common, svc, io, info, closing).await;
            }
        },
    )
    .await;
}

/// Serves HTTP/2 on an already established stream (the queue-proxy's `Upgrade: h2c`): the
/// same HTTP/2 server as a prior-knowledge connection, idle timeout, early-reset bound and
/// field-count rule included. Not tracked for graceful shutdown (upgraded connections are
/// handed off, as the module docs say).
pub async fn serve_h2<I, S, B>(io: I, svc: S, opts: ServerOptions, info: ConnInfo)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let common = Common::new(opts, None);
    let io = Io {
        io,
        h2: true,
        pre: Vec::new(),
        first: None,
        extra: None,
        deadline: None,
    };
    drive(&common, svc, io, info, CancellationToken::new()).await;
}

/// Accepts until `shutdown`, runs `conn` for each connection, then asks them to finish
/// (`closing`: HTTP/1 closes after the current response, HTTP/2 sends GOAWAY) and waits.
/// A connection beyond `limit` is closed at once: shedding it keeps descriptors for the
/// connections already open and for the process's own dials.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limit: ConnectionLimit,
    shutdown: CancellationToken,
    conn: F,
) where
    F: Fn(TcpStream, ConnInfo, CancellationToken, ConnectionPermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let local = listener.local_addr().ok();
    let tracker = TaskTracker::new();
    let closing = CancellationToken::new();
    let mut shed = Throttled::default();
    while let Some((stream, info)) = accept(&listener, local, &shutdown).await {
        let Some(permit) = limit.try_acquire() else {
            if let Some(held_back) = shed.due() {
                tracing::warn!(
                    max = limit.max(),
                    held_back,
                    "too many open connections; closing new ones"
                );
            }
            drop(stream);
            continue;
        };
        // The permit rides inside the connection's own future: wrapping that future in
        // another async block would store it twice (the captured future and the awaited one),
        // doubling every held connection's task.
        tracker.spawn(conn(stream, info, closing.clone(), permit));
    }
    drop(listener);
    closing.cancel();
    tracker.close();
    tracker.wait().await;
}

/// What every connection of one server shares (one pointer per connection task, not the
/// builders).
struct Common {
    h1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
    opts: ServerOptions,
    hold: Option<Arc<dyn FirstHead>>,
}

impl Common {
    fn new(opts: ServerOptions, hold: Option<Arc<dyn FirstHead>>) -> Arc<Self> {
        let mut h1 = hyper::server::conn::http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(opts.header_read_timeout)
            // max_buf_size alone is a soft limit (a read may overshoot it and the head still
            // parse); max_header_size is checked on the parsed head too, so 431 is exact.
            .max_header_size(opts.max_header_bytes)
            .max_buf_size(opts.max_header_bytes.max(8192))
            .max_headers(opts.max_headers);
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new());
        Arc::new(Self { h1, h2, opts, hold })
    }
}

/// A connection ready for hyper: its stream, protocol, bytes already read from it (replayed
/// first), the held first request's extensions, and extensions for every request.
struct Io<I> {
    io: I,
    h2: bool,
    pre: Vec<u8>,
    first: Option<http::Extensions>,
    extra: Option<http::Extensions>,
    /// When the first request head must be complete (HTTP/1: one deadline across sniffing,
    /// the first-head read and hyper, as Go's ReadHeaderTimeout).
    deadline: Option<Instant>,
}

/// One connection: protocol sniffing, the optional hold of its first request, then hyper.
///
/// hyper's connection futures are boxed, so a held connection's task is only this function's
/// small state (socket, head bytes, the hold) rather than the size of hyper's state machine.
async fn connection<S, B>(
    common: Arc<Common>,
    svc: S,
    stream: TcpStream,
    info: ConnInfo,
    closing: CancellationToken,
    permit: ConnectionPermit,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _permit = permit;
    let opts = &common.opts;
    // One deadline for the whole first head: sniffing, the hold's first-head read and hyper
    // each restarting a full timer let a trickled head stay three times as long.
    let deadline = Instant::now() + opts.header_read_timeout;
    let h2c = !opts.http1_only
        && tokio::select! {
            sniffed = tokio::time::timeout_at(deadline, is_h2_preface(&stream)) => {
                match sniffed {
                    Ok(Ok(h2c)) => h2c,
                    // Closed, failed or silent before sending anything decisive.
                    _ => return,
                }
            }
            // Shutting down: a connection that has not sent a request yet has nothing
            // in flight, so it is closed at once (hyper-util's auto builder did so too).
            _ = closing.cancelled() => return,
        };
    let mut pre = Vec::new();
    let mut first = None;
    if let (false, Some(hook)) = (h2c, &common.hold) {
        let read = tokio::select! {
            r = tokio::time::timeout_at(
                deadline,
                park::first_request(&stream, &mut pre, hook.as_ref(), &info),
            ) => Some(r),
            _ = closing.cancelled() => None,
        };
        match read {
            Some(Ok(Ok(First::Hold(hold)))) => match park::wait(&stream, &mut pre, hold).await {
                Some(ext) => first = Some(ext),
                // The client left while held.
                None => return,
            },
            Some(Ok(Ok(First::Hyper))) => {}
            // Gone before a complete head, or silent past the header read timeout: hyper
            // closes such connections without an answer too.
            Some(Ok(Err(_)) | Err(_)) => return,
            // Shutting down mid-head: hyper reads the rest and answers (see below).
            None if pre.is_empty() => return,
            None => {}
        }
    }
    let io = Io {
        io: stream,
        h2: h2c,
        pre,
        // A held first request's head is complete; its wait is bounded by the hold.
        deadline: first.is_none().then_some(deadline),
        first,
        extra: None,
    };
    drive(&common, svc, io, info, closing).await;
}

/// hyper's HTTP/1 (through the framing tracker) or HTTP/2 server on one connection, with
/// graceful shutdown on `closing`.
async fn drive<I, S, B>(
    common: &Common,
    svc: S,
    conn: Io<I>,
    info: ConnInfo,
    closing: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let opts = &common.opts;
    let Io {
        io: stream,
        h2: h2c,
        pre,
        first,
        extra,
        deadline,
    } = conn;
    let first = first.map(|ext| std::sync::Mutex::new(Some(ext)));
    let max_headers = opts.max_headers;
    let verdicts = Verdicts::default();
    let seen = verdicts.clone();
    let streams = h2c.then(|| Streams::new(opts.h2));
    let counted = streams.clone();
    let started = Arc::new(AtomicBool::new(false));
    let head_seen = Arc::clone(&started);
    let hsvc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        head_seen.store(true, Ordering::Relaxed);
        let mut guard = counted.as_ref().map(Streams::open);
        let rejected = reject_hostile(&req, &seen, max_headers);
        // The hold's extensions go to the first request only (a held connection's first
        // request is the one that was held: it is the first hyper parses).
        if let Some(ext) = first
            .as_ref()
            .and_then(|f| f.lock().ok().and_then(|mut g| g.take()))
        {
            req.extensions_mut().extend(ext);
        }
        if let Some(extra) = &extra {
            req.extensions_mut().extend(extra.clone());
        }
        req.extensions_mut().insert(info);
        let svc = svc.clone();
        async move {
            let resp = match rejected {
                Some(resp) => resp.map(Either::Right),
                None => match svc.oneshot(req).await {
                    Ok(r) => r.map(Either::Left),
                    Err(never) => match never {},
                },
            };
            // The stream stays open (for the idle clock) until hyper drops the body.
            if let Some(g) = guard.as_mut() {
                g.answered();
            }
            Ok::<_, Infallible>(resp.map(|inner| Counted { inner, guard }))
        }
    });
    let result = if let Some(streams) = streams {
        Box::pin(async {
            let conn = common.h2.serve_connection(TokioIo::new(stream), hsvc);
            tokio::pin!(conn);
            let why = tokio::select! {
                r = conn.as_mut() => return r,
                _ = closing.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    return conn.await;
                }
                _ = streams.idle() => "idle",
                _ = streams.too_many_resets() => "too many early stream resets",
            };
            tracing::debug!(reason = why, remote = %info.remote, "HTTP/2 connection: GOAWAY");
            conn.as_mut().graceful_shutdown();
            // A client that neither acknowledges the GOAWAY's PING nor stops resetting is
            // dropped; streams already answered get a grace period to finish.
            tokio::select! {
                r = conn.as_mut() => r,
                _ = streams.too_many_resets() => Ok(()),
                _ = tokio::time::sleep(GOAWAY_GRACE) => Ok(()),
                _ = closing.cancelled() => conn.await,
            }
        })
        .await
    } else {
        Box::pin(async {
            // HTTP/1 bytes (replayed ones first) pass through the framing tracker on their
            // way into hyper.
            let replay = !pre.is_empty();
            let io = Inspect::new(
                Rewind::new(stream, pre),
                Tracker::new(opts.max_header_bytes, opts.max_headers),
                verdicts,
            );
            let conn = common
                .h1
                .serve_connection(TokioIo::new(io), hsvc)
                .with_upgrades();
            tokio::pin!(conn);
            // hyper's own header timer restarts when it starts reading; the connection's
            // deadline (set before sniffing) bounds the first head as a whole.
            let first_head = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(first_head);
            let mut waiting = true;
            loop {
                tokio::select! {
                    () = first_head.as_mut(), if waiting => {
                        if !started.load(Ordering::Relaxed) {
                            tracing::debug!(remote = %info.remote, "no request head by the header read deadline");
                            return Ok(());
                        }
                        waiting = false;
                    }
                    r = conn.as_mut() => return r,
                    _ = closing.cancelled() => break,
                }
            }
            // hyper closes a connection it has not read from yet at once when asked to shut
            // down gracefully. One we read a head from (held through the start of shutdown,
            // say) has a request in flight: let hyper read it first, then it finishes that
            // request and closes.
            if replay {
                let first = std::future::poll_fn(|cx| Poll::Ready(conn.as_mut().poll(cx)));
                if let Poll::Ready(r) = first.await {
                    return r;
                }
            }
            conn.as_mut().graceful_shutdown();
            conn.await
        })
        .await
    };
    if let Err(error) = result {
        tracing::debug!(error = %error, "connection ended with error");
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its HTTP/2 stream counted as open until hyper drops it.
    struct Counted<B> {
        #[pin]
        inner: B,
        guard: Option<StreamGuard>,
    }
}

impl<B: http_body::Body> http_body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether the client starts with the HTTP/2 preface, decided from as few bytes as possible
/// without consuming them (hyper then reads the stream from its first byte).
async fn is_h2_preface(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        stream.readable().await?;
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A strict prefix so far ("P", "PRI * …"): peeking does not consume, so readiness stays
        // set; wait a little for the rest instead of spinning. Rare: requests arrive whole.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The `400` for request shapes hyper accepts but a proxy must not forward (smuggling and
/// tunnel confusion); `None` for everything else. HTTP/2 requests are framed by h2 and pass.
fn reject_hostile<B>(
    req: &Request<B>,
    verdicts: &Verdicts,
    max_headers: usize,
) -> Option<Response<Full<Bytes>>> {
    if req.version() > Version::HTTP_11 {
        // HTTP/1's field-count rule on HTTP/2 too: h2 bounds the head's bytes, not its fields.
        if req.headers().len() > max_headers {
            tracing::debug!(fields = req.headers().len(), "rejected an HTTP/2 head");
            return Some(go_error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "431 Request Header Fields Too Large",
            ));
        }
        return None;
    }
    let why = match verdicts.next(req.headers()) {
        Verdict::Ambiguous => "both Content-Length and Transfer-Encoding",
        Verdict::BadChunk => "malformed chunked body",
        Verdict::DuplicateLength => "multiple Content-Length values",
        Verdict::UnsupportedCoding => {
            tracing::debug!("rejected an unsupported transfer coding");
            // Go's answer, word for word; the connection cannot be read further.
            let mut resp = go_error(StatusCode::NOT_IMPLEMENTED, "Unsupported transfer encoding");
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return Some(resp);
        }
        Verdict::Clean => "",
    };
    let why = if !why.is_empty() {
        why
    } else if req.method() == Method::CONNECT
        && (req.version() < Version::HTTP_11
            || req.uri().authority().is_none()
            || req.uri().path_and_query().is_some())
    {
        "CONNECT needs version 1.1 and an authority-form target"
    } else {
        return None;
    };
    tracing::debug!(reason = why, "rejected a malformed request");
    let mut resp = go_error(StatusCode::BAD_REQUEST, &format!("400 Bad Request: {why}"));
    // The rest of the connection cannot be trusted to be framed the way we read it.
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DEADLINE: Duration = Duration::from_secs(20);

    async fn start() -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let svc = tower::service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(l, svc, ServerOptions::default(), stop.clone()));
        (addr, stop, task)
    }

    #[tokio::test]
    async fn accept_unmaps_ipv4_peers_of_a_dual_stack_listener() {
        // Machines without IPv6 cannot bind `[::]`; nothing to check there.
        let Ok(l) = TcpListener::bind("[::]:0").await else {
            return;
        };
        let port = l.local_addr().unwrap().port();
        let stop = CancellationToken::new();
        let client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (_s, info) = tokio::time::timeout(DEADLINE, accept(&l, None, &stop))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.remote, client.local_addr().unwrap());
        assert!(info.remote.is_ipv4(), "{}", info.remote);
    }

    #[tokio::test]
    async fn h1_and_h2c_prior_knowledge_on_one_port() {
        let (addr, stop, task) = start().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tokio::time::timeout(DEADLINE, s.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");

        // A prior-knowledge h2c client gets an HTTP/2 SETTINGS frame back (type 0x4).
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(H2_PREFACE).await.unwrap();
        s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap(); // empty SETTINGS
        let mut head = [0u8; 9];
        tokio::time::timeout(DEADLINE, s.read_exact(&mut head))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            head[3], 4,
            "first frame from the server is SETTINGS: {head:?}"
        );
        // This raw client cannot answer the graceful-shutdown PING, so it leaves first.
        drop(s);
        stop.cancel();
        tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_silent_connection_does_not_hold_up_shutdown() {
        let (addr, stop, task) = start().await;
        let _silent = TcpStream::connect(addr).await.unwrap();
        // Let the server accept it and start sniffing.
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
        // The header read timeout is 60 s; shutdown must not wait for it.
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("serve returns promptly")
            .unwrap();
    }

    /// A server whose service answers `/slow` never (until dropped) and everything else at once.
    async fn start_with(opts: ServerOptions) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let svc = tower::service_fn(move |req: Request<Incoming>| {
            seen.fetch_add(1, Ordering::Relaxed);
            async move {
                if req.uri().path() == "/slow" {
                    std::future::pending::<()>().await;
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        });
        tokio::spawn(serve(l, svc, opts, CancellationToken::new()));
        (addr, calls)
    }

    async fn h2_client(
        addr: SocketAddr,
    ) -> (
        hyper::client::conn::http2::SendRequest<Full<Bytes>>,
        tokio::task::JoinHandle<()>,
    ) {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        (send, tokio::spawn(async move { drop(conn.await) }))
    }

    #[tokio::test]
    async fn paced_early_resets_end_in_goaway() {
        let opts = ServerOptions {
            h2: H2Limits {
                early_resets: 50,
                ..H2Limits::default()
            },
            ..ServerOptions::default()
        };
        let (addr, calls) = start_with(opts).await;
        let (mut send, conn) = h2_client(addr).await;
        // HEADERS, a pause long enough for the service to start, RST_STREAM (dropping the
        // response future cancels the stream), repeated: never a burst h2 would notice.
        let mut sent = 0;
        for _ in 0..1000 {
            if send.ready().await.is_err() {
                break;
            }
            let req = Request::get(format!("http://{addr}/slow"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let fut = send.send_request(req);
            match tokio::time::timeout(Duration::from_millis(2), fut).await {
                // Refused: the server sent GOAWAY.
                Ok(Err(_)) => break,
                Ok(Ok(r)) => panic!("the slow route never answers: {r:?}"),
                Err(_) => sent += 1,
            }
        }
        assert!(sent < 200, "GOAWAY after about 50 early resets, not {sent}");
        tokio::time::timeout(DEADLINE, conn)
            .await
            .expect("connection closed")
            .unwrap();
        assert!(calls.load(Ordering::Relaxed) <= sent);
    }

    #[tokio::test]
    async fn idle_h2c_connections_get_goaway() {
        let opts = ServerOptions {
            h2: H2Limits {
                idle_timeout: Duration::from_millis(500),
                ..H2Limits::default()
            },
            ..ServerOptions::default()
        };
        let (addr, _) = start_with(opts).await;
        let (mut send, conn) = h2_client(addr).await;
        send.ready().await.unwrap();
        let req = Request::get(format!("http://{addr}/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        drop(resp);
        // Idle from here: closed after 0.5–0.75 s (the deadline only bounds a hang).
        tokio::time::timeout(DEADLINE, conn)
            .await
            .expect("idle connection closed")
            .unwrap();
        // A raw client that sends only the preface and SETTINGS is closed too.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(H2_PREFACE).await.unwrap();
        s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        let mut sink = Vec::new();
        tokio::time::timeout(DEADLINE, s.read_to_end(&mut sink))
            .await
            .expect("preface-only connection closed")
            .ok();
    }

    #[tokio::test]
    async fn one_header_deadline_across_sniffing_and_hyper() {
        let opts = ServerOptions {
            header_read_timeout: Duration::from_secs(2),
            ..ServerOptions::default()
        };
        let (addr, calls) = start_with(opts).await;
        let t = std::time::Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        // "P" could still be the HTTP/2 preface: the sniff waits for more.
        s.write_all(b"P").await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        s.write_all(b"OST / HTTP/1.1\r\nHost: h\r\n").await.unwrap();
        // Then a header line every 200 ms, never the end of the head.
        let closed = async {
            for i in 0..50 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if s.write_all(format!("X-{i}: v\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                let mut b = [0u8; 64];
                if let Ok(Ok(0) | Err(_)) =
                    tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await
                {
                    return;
                }
            }
        };
        closed.await;
        let open_for = t.elapsed();
        // One 2 s deadline; with a fresh timer per stage it stayed open past 3.5 s.
        assert!(open_for < Duration::from_millis(3200), "{open_for:?}");
        assert_eq!(calls.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn connections_beyond_the_bound_are_shed_and_open_ones_served() {
        let opts = ServerOptions {
            connections: ConnectionLimit::new(3),
            ..ServerOptions::default()
        };
        let (addr, _) = start_with(opts).await;
        let mut kept = TcpStream::connect(addr).await.unwrap();
        let ask = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        kept.write_all(ask).await.unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(DEADLINE, kept.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let _idle1 = TcpStream::connect(addr).await.unwrap();
        let _idle2 = TcpStream::connect(addr).await.unwrap();
        // The fourth is accepted and closed at once.
        let mut shed = TcpStream::connect(addr).await.unwrap();
        let n = tokio::time::timeout(DEADLINE, shed.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        // The open keep-alive connection is still served.
        kept.write_all(ask).await.unwrap();
        let n = tokio::time::timeout(DEADLINE, kept.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
}
