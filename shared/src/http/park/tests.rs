use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::http::server::{ServerOptions, serve_with};

const DEADLINE: Duration = Duration::from_secs(10);

fn head(raw: &[u8]) -> (bool, usize) {
    let mut hs = [httparse::EMPTY_HEADER; 16];
    let mut req = httparse::Request::new(&mut hs);
    let n = match req.parse(raw).unwrap() {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => panic!("partial"),
    };
    (plain(&req, raw.len() - n), n)
}

#[test]
fn only_plainly_framed_heads_are_offered() {
    let cases: &[(&[u8], bool)] = &[
        (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", true),
        (b"GET / HTTP/1.0\r\n\r\n", true),
        // A body, partly sent.
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", true),
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcde", true),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc",
            true,
        ),
        (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", true),
        (b"POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", true),
        // Pipelined: bytes beyond the first request.
        (b"GET / HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n", false),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nabGET", false),
        // Ambiguous or odd framing: hyper (and the framing guard) answer it.
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            false,
        ),
        (b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n", false),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", false),
        (b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", false),
        (
            b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: foo, h2c\r\n\r\n",
            false,
        ),
    ];
    for (raw, want) in cases {
        assert_eq!(head(raw).0, *want, "{}", String::from_utf8_lossy(raw));
    }
}

#[tokio::test]
async fn rewind_replays_then_reads_on() {
    let (mut a, b) = tokio::io::duplex(64);
    a.write_all(b" world").await.unwrap();
    drop(a);
    let mut r = Rewind::new(b, b"hello".to_vec());
    let mut small = [0u8; 3];
    r.read_exact(&mut small).await.unwrap();
    assert_eq!(&small, b"hel");
    let mut rest = String::new();
    r.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "lo world");
    assert_eq!(r.pre.capacity(), 0, "replayed bytes are freed");
}

/// Holds heads whose path starts with `/hold` until `release`; counts holds and live futures.
#[derive(Default)]
struct Hook {
    release: CancellationToken,
    held: AtomicUsize,
    live: Arc<AtomicUsize>,
}

struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct Ticket(&'static str);

impl FirstHead for Hook {
    fn hold(&self, head: &httparse::Request<'_, '_>, _info: &ConnInfo) -> Option<HoldFuture> {
        if !head.path?.starts_with("/hold") {
            return None;
        }
        self.held.fetch_add(1, Ordering::SeqCst);
        self.live.fetch_add(1, Ordering::SeqCst);
        let live = Live(Arc::clone(&self.live));
        let release = self.release.clone();
        Some(Box::pin(async move {
            release.cancelled().await;
            drop(live);
            let mut ext = http::Extensions::new();
            ext.insert(Ticket("held"));
            ext
        }))
    }
}

/// Echoes the ticket (or "-") and the request body.
async fn start(hook: Arc<Hook>) -> (SocketAddr, CancellationToken) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let svc = tower::service_fn(|req: Request<Incoming>| async move {
        let ticket = req.extensions().get::<Ticket>().map_or("-", |t| t.0);
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let out = format!("{ticket} {}", String::from_utf8_lossy(&body));
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(out))))
    });
    let stop = CancellationToken::new();
    tokio::spawn(serve_with(
        l,
        svc,
        ServerOptions::default(),
        Some(hook as Arc<dyn FirstHead>),
        stop.clone(),
    ));
    (addr, stop)
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let end = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(tokio::time::Instant::now() < end, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    // Responses here are small and end the connection or carry Content-Length; read until the
    // body is there.
    loop {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if n == 0 {
            return text;
        }
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.parse::<usize>().ok());
            if len.is_some_and(|l| body.len() >= l) {
                return text;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_first_request_gets_the_ticket_and_its_body_later_ones_do_not() {
    let hook = Arc::new(Hook::default());
    let (addr, _stop) = start(Arc::clone(&hook)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /hold HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    wait_until("held", || hook.held.load(Ordering::SeqCst) == 1).await;
    // The rest of the body arrives while held; it is buffered and replayed.
    s.write_all(b"world").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    hook.release.cancel();
    let out = read_response(&mut s).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("held helloworld"), "{out}");
    // The next request on the kept-alive connection is hyper's: no hold, no ticket.
    s.write_all(b"POST /hold HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .unwrap();
    let out = read_response(&mut s).await;
    assert!(out.ends_with("- hi"), "{out}");
    assert_eq!(hook.held.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unheld_and_unusual_heads_go_to_hyper_unchanged() {
    let hook = Arc::new(Hook::default());
    let (addr, _stop) = start(Arc::clone(&hook)).await;
    // Not held by the hook.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /now HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.ends_with("- "));
    // Pipelined: two requests in one write are never held.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /hold HTTP/1.1\r\nHost: h\r\n\r\nGET /hold2 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(DEADLINE, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
    // A head hyper rejects still gets hyper's answer.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /hold HTTP/1.1\r\nHost h\r\n\r\n")
        .await
        .unwrap();
    let out = read_response(&mut s).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // A head larger than we read ourselves (but within hyper's limit) is served by hyper.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let big = "x".repeat(MAX_PARKED_HEAD);
    s.write_all(format!("GET /hold HTTP/1.1\r\nHost: h\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let out = read_response(&mut s).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(hook.held.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_while_held_drops_the_hold_at_once() {
    let hook = Arc::new(Hook::default());
    let (addr, _stop) = start(Arc::clone(&hook)).await;
    for rst in [false, true] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /hold HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        wait_until("held", || hook.live.load(Ordering::SeqCst) == 1).await;
        if rst {
            // SO_LINGER 0: close sends RST (blocking on drop is not an issue with linger 0).
            #[allow(deprecated)]
            s.set_linger(Some(Duration::ZERO)).unwrap();
        }
        drop(s);
        wait_until("hold dropped", || hook.live.load(Ordering::SeqCst) == 0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_held_connections() {
    let hook = Arc::new(Hook::default());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let svc = tower::service_fn(|_req: Request<Incoming>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve_with(
        l,
        svc,
        ServerOptions::default(),
        Some(Arc::clone(&hook) as Arc<dyn FirstHead>),
        stop.clone(),
    ));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /hold HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    wait_until("held", || hook.held.load(Ordering::SeqCst) == 1).await;
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!task.is_finished(), "a held request is in flight");
    hook.release.cancel();
    let mut out = String::new();
    tokio::time::timeout(DEADLINE, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    // Served, then closed (read_to_string saw the end).
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
}
