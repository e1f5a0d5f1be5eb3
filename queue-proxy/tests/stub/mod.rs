//! A scriptable stub upstream on 127.0.0.1 for the reliability suite (plan D2). The path picks
//! the behaviour, so one stub serves a whole test:
//!
//! - `/sleep?ms=N`: answers `slept` after N ms.
//! - `/hold`: answers `held` once [`Stub::release`] is called.
//! - `/work?ms=N`: answers `worked` after N ms, and keeps working (counted in flight) for the
//!   N ms even if the connection is closed first (an app that ignores cancellation).
//! - `/stream?chunks=N&size=S&ms=M`: a chunked body of N chunks of S bytes (`x`), M ms apart.
//! - `/abort?after=B`: announces `Content-Length: 1000`, sends B bytes, then dies (crash
//!   mid-body).
//! - `/crash`: reads the request, then closes the connection without a response.
//! - `/ws`: a WebSocket echo (text and binary frames).
//! - anything else: reads the whole body and answers `ok <bytes read>`.
//!
//! A request with `K-Network-Probe: queue` (the activator's pod probe) gets `200 queue`, as a
//! queue-proxy would answer, and is counted apart from requests.
//!
//! Connections idle for longer than the keep-alive timeout are closed by the stub, like Go's
//! `IdleTimeout` or Node's `keepAliveTimeout` (the stale keep-alive race, scenario 14).
#![allow(dead_code, clippy::unwrap_used)]

#[path = "../support/ws_echo.rs"]
mod ws_echo;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// What the stub observed.
#[derive(Debug, Default)]
pub struct Seen {
    /// Requests whose head reached the stub.
    pub requests: AtomicUsize,
    /// Requests being handled now.
    pub now: AtomicUsize,
    /// Most requests handled at once.
    pub max: AtomicUsize,
    /// TCP connections accepted.
    pub connections: AtomicUsize,
    /// Request body bytes read.
    pub body_bytes: AtomicUsize,
    /// Activator readiness probes answered (not counted in `requests`).
    pub probes: AtomicUsize,
}

/// A running stub.
/// A running stub; dropping it closes the listener (open connections finish).
pub struct Stub {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    gate: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Stub {
    /// Lets every `/hold` request (current and future) answer.
    pub fn release(&self) {
        let _ = self.gate.send(true);
    }

    pub fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }

    pub fn now(&self) -> usize {
        self.seen.now.load(Ordering::SeqCst)
    }

    pub fn max(&self) -> usize {
        self.seen.max.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }
}

fn param(req: &Request<Incoming>, name: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into())
        .map_err(|n: Infallible| match n {})
        .boxed()
}

struct InFlight(Arc<Seen>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("stub: scripted crash")]
struct Crash;

async fn handle(
    req: Request<Incoming>,
    seen: Arc<Seen>,
    mut gate: watch::Receiver<bool>,
) -> Result<Response<Body>, std::io::Error> {
    if req
        .headers()
        .get("k-network-probe")
        .is_some_and(|v| v == "queue")
    {
        seen.probes.fetch_add(1, Ordering::SeqCst);
        return Ok(Response::new(full("queue")));
    }
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let n = seen.now.fetch_add(1, Ordering::SeqCst) + 1;
    seen.max.fetch_max(n, Ordering::SeqCst);
    let guard = InFlight(seen.clone());
    match req.uri().path() {
        "/sleep" => {
            tokio::time::sleep(Duration::from_millis(param(&req, "ms").unwrap_or(0))).await;
            Ok(Response::new(full("slept")))
        }
        "/work" => {
            // An app that ignores cancellation: the work goes on (and counts as in flight)
            // for its full time even when the connection it came on is closed.
            let ms = param(&req, "ms").unwrap_or(0);
            let work = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                drop(guard);
            });
            let _ = work.await;
            Ok(Response::new(full("worked")))
        }
        "/hold" => {
            let _ = gate.wait_for(|open| *open).await;
            Ok(Response::new(full("held")))
        }
        "/stream" => {
            let chunks = param(&req, "chunks").unwrap_or(1);
            let size = param(&req, "size").unwrap_or(1) as usize;
            let ms = param(&req, "ms").unwrap_or(0);
            let frames = stream::unfold(0u64, move |i| async move {
                if i >= chunks {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                let frame = Frame::data(Bytes::from(vec![b'x'; size]));
                Some((Ok::<_, BoxError>(frame), i + 1))
            });
            // The in-flight guard rides with the body, so `now` counts streaming responses.
            let body = StreamBody::new(frames).map_frame(move |f| {
                let _ = &guard;
                f
            });
            Ok(Response::new(BodyExt::boxed(body)))
        }
        "/abort" => {
            let after = param(&req, "after").unwrap_or(100) as usize;
            // The pause lets the head and the first bytes reach the proxy before the crash.
            let frames = stream::unfold(0, move |i| async move {
                match i {
                    0 => Some((Ok(Frame::data(Bytes::from(vec![b'x'; after]))), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Some((Err(Box::new(Crash) as BoxError), 2))
                    }
                    _ => None,
                }
            });
            Ok(Response::builder()
                .header("content-length", "1000")
                .body(BodyExt::boxed(StreamBody::new(frames)))
                .unwrap())
        }
        "/ws" => Ok(websocket_echo(req)),
        "/crash" => {
            let _ = req.into_body().collect().await;
            // A service error makes hyper drop the connection without writing a response.
            Err(std::io::Error::other(Crash))
        }
        _ => {
            let body = req
                .into_body()
                .collect()
                .await
                .map_err(std::io::Error::other)?
                .to_bytes();
            seen.body_bytes.fetch_add(body.len(), Ordering::SeqCst);
            Ok(Response::new(full(format!("ok {}", body.len()))))
        }
    }
}

fn websocket_echo(mut req: Request<Incoming>) -> Response<Body> {
    let key = ws_echo::spawn_echo(&mut req);
    Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", key)
        .body(full(""))
        .unwrap()
}

/// Starts a stub on `127.0.0.1:0` whose idle connections close after `keep_alive`.
pub async fn start(keep_alive: Duration) -> Stub {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_on(l, keep_alive)
}

/// Starts a stub on a listener the caller bound.
pub fn start_on(l: TcpListener, keep_alive: Duration) -> Stub {
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let (gate, rx) = watch::channel(false);
    let s = seen.clone();
    let accept = tokio::spawn(async move {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new());
        builder.http2().timer(TokioTimer::new());
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            s.connections.fetch_add(1, Ordering::SeqCst);
            let (s, rx) = (s.clone(), rx.clone());
            // Idle tracking: requests in flight on this connection and when the last one ended.
            let active = Arc::new(AtomicUsize::new(0));
            let (idle_tx, mut idle_rx) = watch::channel(());
            let svc = {
                let active = active.clone();
                hyper::service::service_fn(move |req| {
                    let (s, rx, active, idle_tx) =
                        (s.clone(), rx.clone(), active.clone(), idle_tx.clone());
                    active.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let r = handle(req, s, rx).await;
                        active.fetch_sub(1, Ordering::SeqCst);
                        let _ = idle_tx.send(());
                        r
                    }
                })
            };
            let builder = builder.clone();
            tokio::spawn(async move {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
                tokio::pin!(conn);
                loop {
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        changed = idle_rx.changed() => if changed.is_err() { break },
                        _ = tokio::time::sleep(keep_alive) => {
                            if active.load(Ordering::SeqCst) == 0 {
                                // Idle past the keep-alive timeout: close, as Go does.
                                return;
                            }
                        }
                    }
                }
                let _ = conn.await;
            });
        }
    });
    Stub {
        addr,
        seen,
        gate,
        accept,
    }
}
