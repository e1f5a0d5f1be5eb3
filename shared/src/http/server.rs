//! The accept loop: HTTP/1.1 and h2c (prior knowledge) on one port, upgrades allowed, graceful
//! shutdown on a token. Both binaries serve every listener through [`serve`].
//!
//! Hostile HTTP/1 input is answered here, before any layer runs, so nothing of it is forwarded:
//! hyper itself answers oversized heads (431), too many headers (431) and malformed heads,
//! methods, `Content-Length`s and chunk sizes (400); [`serve`] adds `400` for a request with
//! both `Content-Length` and `Transfer-Encoding` ([`super::framing`]) and for `CONNECT` that is
//! HTTP/1.0 or not in authority form (RFC 9112 §3.2.3).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

use super::framing::{Inspect, Tracker, Verdict, Verdicts};
use super::response::go_error;

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

/// Knobs of the HTTP server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Serve HTTP/1 only (admin and metrics ports); otherwise h1 and h2c are auto-detected.
    pub http1_only: bool,
    /// Time allowed for a client to send a complete request head (slowloris guard).
    pub header_read_timeout: Duration,
    /// Largest request head in bytes (hyper answers 431 beyond it).
    pub max_header_bytes: usize,
    /// Most header fields in one request (hyper answers 431 beyond it).
    pub max_headers: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            http1_only: false,
            // Go's ReadHeaderTimeout on Knative's listeners.
            header_read_timeout: Duration::from_secs(60),
            max_header_bytes: MAX_HEADER_BYTES,
            max_headers: 200,
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .max_buf_size(opts.max_header_bytes.max(8192))
        .max_headers(opts.max_headers);
    builder.http2().timer(TokioTimer::new());
    if opts.http1_only {
        builder = builder.http1_only();
    }
    let local = listener.local_addr().ok();
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, remote) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning or dying.
                    tracing::warn!(error = %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            remote,
            local: local.unwrap_or(remote),
        };
        let svc = svc.clone();
        let verdicts = Verdicts::default();
        let io = Inspect::new(
            stream,
            Tracker::new(opts.max_header_bytes, opts.max_headers),
            verdicts.clone(),
        );
        let hsvc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let rejected = reject_hostile(&req, &verdicts);
            req.extensions_mut().insert(info);
            let svc = svc.clone();
            async move {
                if let Some(resp) = rejected {
                    return Ok::<_, Infallible>(resp.map(Either::Right));
                }
                svc.oneshot(req).await.map(|r| r.map(Either::Left))
            }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), hsvc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(error = %error, "connection ended with error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The `400` for request shapes hyper accepts but a proxy must not forward (smuggling and
/// tunnel confusion); `None` for everything else. HTTP/2 requests are framed by h2 and pass.
fn reject_hostile<B>(req: &Request<B>, verdicts: &Verdicts) -> Option<Response<Full<Bytes>>> {
    if req.version() > Version::HTTP_11 {
        return None;
    }
    let why = match verdicts.next(req.headers()) {
        Verdict::Ambiguous => "both Content-Length and Transfer-Encoding",
        Verdict::BadChunk => "malformed chunked body",
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
