//! Reliability scenarios 19, 21 and 22 (`docs/reliability.md`) against the real binary: framing
//! transparency with raw bytes on both sides, streaming flushes, gRPC-shaped h2c (many streams on
//! one connection, trailers, `RST_STREAM`), and a black-holed OTLP collector.
//!
//! Where the exact bytes matter the client writes raw HTTP/1 on a TCP socket and the upstream is
//! a raw TCP server ([`RawUp`]) that records each request it parsed and answers a canned response
//! chosen by path. Ordering comes from state (the upstream holds a stream until the test opens a
//! gate), never from sleeps; deadlines only guard against hangs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{DEADLINE, env, start_qp};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// === raw HTTP/1 parsing (both sides) ===

/// One parsed HTTP/1 message: start line, headers in wire order, decoded body, and whether the
/// body was chunked on the wire.
#[derive(Clone, Debug, Default)]
struct Msg {
    start: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunked: bool,
}

impl Msg {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    fn status(&self) -> u16 {
        self.start.split(' ').nth(1).unwrap().parse().unwrap()
    }

    fn path(&self) -> &str {
        self.start.split(' ').nth(1).unwrap_or("")
    }

    fn method(&self) -> &str {
        self.start.split(' ').next().unwrap()
    }
}

/// A buffered reader of HTTP/1 messages on one connection.
struct Wire<S> {
    s: S,
    buf: Vec<u8>,
}

/// How the body of the next message is delimited.
#[derive(Clone, Copy, PartialEq)]
enum BodyKind {
    /// Requests without CL/TE, HEAD responses, 1xx/204/304.
    None,
    /// Responses without CL/TE: read to EOF.
    Eof,
}

impl<S: AsyncRead + Unpin> Wire<S> {
    fn new(s: S) -> Self {
        Self { s, buf: Vec::new() }
    }

    /// Reads more bytes; `false` on EOF.
    async fn fill(&mut self) -> bool {
        let mut b = [0u8; 16 * 1024];
        let n = self.s.read(&mut b).await.unwrap_or(0);
        self.buf.extend_from_slice(&b[..n]);
        n > 0
    }

    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = String::from_utf8(self.buf[..i].to_vec()).unwrap();
                self.buf.drain(..i + 2);
                return Some(l);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "EOF inside a body");
        }
        self.buf.drain(..n).collect()
    }

    /// Reads one message; `None` on a clean EOF before it. `without_length` says what a message
    /// without CL/TE carries; `head_only` is for the answer to a `HEAD`.
    async fn message(&mut self, without_length: BodyKind, head_only: bool) -> Option<Msg> {
        let start = self.line().await?;
        let mut m = Msg {
            start,
            ..Msg::default()
        };
        loop {
            let l = self.line().await.expect("EOF inside a head");
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            m.headers.push((k.to_owned(), v.trim().to_owned()));
        }
        let bodyless_status =
            m.start.starts_with("HTTP/") && matches!(m.status(), 100..=199 | 204 | 304);
        if head_only || bodyless_status {
            return Some(m);
        }
        if m.header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            m.chunked = true;
            loop {
                let size = self.line().await.expect("EOF at a chunk size");
                let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
                    .expect("chunk size");
                if size == 0 {
                    // Trailer section up to the empty line.
                    while !self.line().await.expect("EOF in trailers").is_empty() {}
                    break;
                }
                let data = self.exact(size).await;
                m.body.extend_from_slice(&data);
                assert_eq!(self.exact(2).await, b"\r\n", "chunk CRLF");
            }
        } else if let Some(n) = m.header("content-length") {
            let n = n.parse().unwrap();
            m.body = self.exact(n).await;
        } else if without_length == BodyKind::Eof {
            while self.fill().await {}
            m.body = std::mem::take(&mut self.buf);
        }
        Some(m)
    }
}

// === a raw upstream ===

/// A raw TCP upstream: records every request it parsed and answers by path (see [`canned`]).
/// `/sse` sends one event, then waits for [`RawUp::release`] before the rest.
struct RawUp {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Msg>>>,
    gate: watch::Sender<bool>,
    /// When `/sse` wrote its first event.
    first_event_at: Arc<Mutex<Option<Instant>>>,
}

impl RawUp {
    async fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (gate, rx) = watch::channel(false);
        let first_event_at = Arc::new(Mutex::new(None));
        let (s, at) = (seen.clone(), first_event_at.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    continue;
                };
                tokio::spawn(serve_raw(tcp, s.clone(), rx.clone(), at.clone()));
            }
        });
        Self {
            addr,
            seen,
            gate,
            first_event_at,
        }
    }

    fn release(&self) {
        let _ = self.gate.send(true);
    }

    /// The request the upstream saw for `path` (exactly one).
    fn request(&self, path: &str) -> Msg {
        let seen = self.seen.lock().unwrap();
        let hits: Vec<_> = seen.iter().filter(|m| m.path() == path).collect();
        assert_eq!(hits.len(), 1, "requests for {path}: {hits:?}");
        hits[0].clone()
    }
}

/// 64 KiB + 3 bytes covering every byte value (CRLFs, NULs, high bytes).
fn payload() -> Vec<u8> {
    (0..65_539u32).map(|i| (i * 7 % 256) as u8).collect()
}

/// The canned response for `req`, and whether the upstream closes afterwards (EOF framing).
fn canned(req: &Msg) -> (Vec<u8>, bool) {
    let head = |s: &str| s.replace('\n', "\r\n").into_bytes();
    let with_body = |h: &str, b: &[u8]| {
        let mut v = head(h);
        v.extend_from_slice(b);
        v
    };
    let p = payload();
    match req.path().split('?').next().unwrap() {
        // Echoes the request body with a Content-Length.
        "/echo" => (
            with_body(
                &format!("HTTP/1.1 200 OK\nContent-Length: {}\n\n", req.body.len()),
                &req.body,
            ),
            false,
        ),
        "/cl" => {
            let h = format!("HTTP/1.1 200 OK\nContent-Length: {}\nX-Up: cl\n\n", p.len());
            // A HEAD answer has the head only.
            if req.method() == "HEAD" {
                (head(&h), false)
            } else {
                (with_body(&h, &p), false)
            }
        }
        "/chunked" => {
            let mut v = head("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n");
            for c in p.chunks(10_000) {
                v.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                v.extend_from_slice(c);
                v.extend_from_slice(b"\r\n");
            }
            v.extend_from_slice(b"0\r\n\r\n");
            (v, false)
        }
        "/empty" => (head("HTTP/1.1 200 OK\nContent-Length: 0\n\n"), false),
        "/204" => (head("HTTP/1.1 204 No Content\nX-Up: 204\n\n"), false),
        "/304" => (head("HTTP/1.1 304 Not Modified\nETag: \"v1\"\n\n"), false),
        // HTTP/1.0, no length: the body ends when the upstream closes.
        "/eof" => (
            with_body(
                "HTTP/1.0 200 OK\nContent-Type: application/octet-stream\n\n",
                &p,
            ),
            true,
        ),
        "/hop" => (
            head(
                "HTTP/1.1 200 OK\nConnection: X-Hop, keep-alive\nX-Hop: secret\n\
                 Keep-Alive: timeout=5\nProxy-Connection: keep-alive\nX-Keep: yes\n\
                 Content-Length: 2\n\nok",
            ),
            false,
        ),
        _ => (head("HTTP/1.1 404 Not Found\nContent-Length: 0\n\n"), false),
    }
}

async fn serve_raw(
    tcp: TcpStream,
    seen: Arc<Mutex<Vec<Msg>>>,
    mut gate: watch::Receiver<bool>,
    first_event_at: Arc<Mutex<Option<Instant>>>,
) {
    let (r, mut w) = tcp.into_split();
    let mut wire = Wire::new(r);
    while let Some(req) = wire.message(BodyKind::None, false).await {
        seen.lock().unwrap().push(req.clone());
        if req.path() == "/sse" {
            let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                         Transfer-Encoding: chunked\r\n\r\n";
            let ev = b"data: one\n\n";
            let first = [head.as_slice(), b"b\r\n", ev, b"\r\n"].concat();
            w.write_all(&first).await.unwrap();
            w.flush().await.unwrap();
            *first_event_at.lock().unwrap() = Some(Instant::now());
            let _ = gate.wait_for(|open| *open).await;
            let rest = b"b\r\ndata: two\n\n\r\n0\r\n\r\n";
            w.write_all(rest).await.unwrap();
            continue;
        }
        let (bytes, close) = canned(&req);
        if w.write_all(&bytes).await.is_err() {
            return;
        }
        if close {
            return;
        }
    }
}

// === a raw client ===

/// A raw HTTP/1 client connection to the queue-proxy.
struct RawClient {
    w: tokio::net::tcp::OwnedWriteHalf,
    wire: Wire<tokio::net::tcp::OwnedReadHalf>,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> Self {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        Self {
            w,
            wire: Wire::new(r),
        }
    }

    /// Sends `head` (LF line ends, turned into CRLF, blank line added) and `body`; reads the
    /// response.
    async fn exchange(&mut self, head: &str, body: &[u8]) -> Msg {
        let mut bytes = format!("{}\n\n", head.trim_end())
            .replace('\n', "\r\n")
            .into_bytes();
        bytes.extend_from_slice(body);
        self.w.write_all(&bytes).await.unwrap();
        let head_only = head.starts_with("HEAD ");
        tokio::time::timeout(DEADLINE, self.wire.message(BodyKind::Eof, head_only))
            .await
            .expect("response before the deadline")
            .expect("a response, not EOF")
    }
}

fn chunked(p: &[u8], size: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for c in p.chunks(size) {
        v.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        v.extend_from_slice(c);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"0\r\n\r\n");
    v
}

// === 19. Framing transparency ===

/// Every case on one keep-alive client connection, so a stray byte after a bodyless response
/// (HEAD, 204, 304) would corrupt the next response's status line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s19_framing_is_transparent_both_ways() {
    let up = RawUp::start().await;
    let qp = start_qp(env(up.addr.port())).await;
    let mut c = RawClient::connect(qp.serving).await;
    let p = payload();
    let no_te = |m: &Msg, what: &str| {
        assert!(!m.has("transfer-encoding"), "{what}: TE added: {m:?}");
    };

    // CL request body up, CL response down: byte-exact, lengths kept, no chunking added.
    let r = c
        .exchange(
            &format!(
                "POST /echo HTTP/1.1\nHost: app\nContent-Length: {}\n\
                 Content-Type: application/octet-stream",
                p.len()
            ),
            &p,
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.body == p, "CL echo not byte-exact");
    assert_eq!(
        r.header("content-length"),
        Some(p.len().to_string().as_str())
    );
    no_te(&r, "CL response");
    let u = up.request("/echo");
    assert!(u.body == p, "CL request body not byte-exact upstream");
    assert_eq!(
        u.header("content-length"),
        Some(p.len().to_string().as_str())
    );
    no_te(&u, "CL request");

    // Chunked request body: the upstream gets the same bytes (re-chunked or not).
    let r = c
        .exchange(
            "POST /echo?chunked HTTP/1.1\nHost: app\nTransfer-Encoding: chunked",
            &chunked(&p, 4_000),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.body == p, "chunked upload not byte-exact");
    let u = up.request("/echo?chunked");
    assert!(u.body == p, "chunked request body not byte-exact upstream");
    assert!(
        u.chunked || u.header("content-length") == Some(p.len().to_string().as_str()),
        "upstream framing: {:?}",
        u.headers
    );

    // Chunked response body down.
    let r = c.exchange("GET /chunked HTTP/1.1\nHost: app", b"").await;
    assert_eq!(r.status(), 200);
    assert!(r.body == p, "chunked download not byte-exact");

    // CL response down, and the same resource by HEAD: same length, no body bytes.
    let r = c.exchange("GET /cl HTTP/1.1\nHost: app", b"").await;
    assert_eq!((r.status(), r.header("x-up")), (200, Some("cl")));
    assert!(r.body == p, "CL download not byte-exact");
    assert_eq!(
        r.header("content-length"),
        Some(p.len().to_string().as_str())
    );
    no_te(&r, "CL download");
    let r = c.exchange("HEAD /cl HTTP/1.1\nHost: app", b"").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.header("content-length"),
        Some(p.len().to_string().as_str())
    );
    no_te(&r, "HEAD");

    // `Content-Length: 0` both ways.
    let r = c
        .exchange("POST /empty HTTP/1.1\nHost: app\nContent-Length: 0", b"")
        .await;
    assert_eq!((r.status(), r.body.len()), (200, 0));
    assert_eq!(r.header("content-length"), Some("0"));
    no_te(&r, "CL 0 response");
    let u = up.request("/empty");
    assert!(u.body.is_empty());
    no_te(&u, "CL 0 request");
    assert!(
        matches!(u.header("content-length"), None | Some("0")),
        "{:?}",
        u.headers
    );

    // Bodyless GET and DELETE: no body framing invented upstream.
    for m in ["GET", "DELETE"] {
        let path = format!("/echo?{m}");
        let r = c
            .exchange(&format!("{m} {path} HTTP/1.1\nHost: app"), b"")
            .await;
        assert_eq!((r.status(), r.body.len()), (200, 0), "{m}");
        let u = up.request(&path);
        assert!(u.body.is_empty(), "{m}");
        no_te(&u, m);
        assert!(
            matches!(u.header("content-length"), None | Some("0")),
            "{m}: {:?}",
            u.headers
        );
    }

    // 204 and 304: head only, no framing headers added.
    let r = c.exchange("GET /204 HTTP/1.1\nHost: app", b"").await;
    assert_eq!((r.status(), r.header("x-up")), (204, Some("204")));
    no_te(&r, "204");
    assert!(!r.has("content-length"), "204 with CL: {:?}", r.headers);
    let r = c
        .exchange("GET /304 HTTP/1.1\nHost: app\nIf-None-Match: \"v1\"", b"")
        .await;
    assert_eq!((r.status(), r.header("etag")), (304, Some("\"v1\"")));
    no_te(&r, "304");

    // Hop-by-hop headers, standard and `Connection`-listed, stripped both ways.
    let r = c
        .exchange(
            "GET /hop HTTP/1.1\nHost: app\nConnection: keep-alive, X-Hop\nX-Hop: secret\n\
             Keep-Alive: timeout=5\nProxy-Connection: keep-alive\nTE: gzip\nX-Keep: yes",
            b"",
        )
        .await;
    assert_eq!((r.status(), r.body.as_slice()), (200, &b"ok"[..]));
    assert_eq!(r.header("x-keep"), Some("yes"));
    for h in ["x-hop", "keep-alive", "proxy-connection"] {
        assert!(!r.has(h), "response kept {h}: {:?}", r.headers);
    }
    assert!(
        r.header("connection").is_none_or(|v| !v.contains("X-Hop")),
        "{:?}",
        r.headers
    );
    let u = up.request("/hop");
    assert_eq!(u.header("x-keep"), Some("yes"));
    for h in ["x-hop", "keep-alive", "proxy-connection", "te"] {
        assert!(!u.has(h), "request kept {h}: {:?}", u.headers);
    }
    assert!(
        u.header("connection").is_none_or(|v| !v.contains("X-Hop")),
        "{:?}",
        u.headers
    );

    // Still on the same client connection: everything above was framed exactly.
    let r = c.exchange("GET /empty?last HTTP/1.1\nHost: app", b"").await;
    assert_eq!(r.status(), 200);

    // An HTTP/1.0 upstream ending its body by closing: the client gets every byte; an HTTP/1.1
    // client gets `HTTP/1.1` framed by chunks and keeps its connection (finding 4, fixed).
    for (version, path) in [("HTTP/1.1", "/eof"), ("HTTP/1.0", "/eof?v10")] {
        let mut c = RawClient::connect(qp.serving).await;
        let r = c
            .exchange(&format!("GET {path} {version}\nHost: app"), b"")
            .await;
        assert_eq!(r.status(), 200, "{version} client");
        assert!(
            r.body == p,
            "{version} client: EOF-delimited body not byte-exact ({} bytes)",
            r.body.len()
        );
        assert_eq!(
            r.header("content-type"),
            Some("application/octet-stream"),
            "{version} client"
        );
        if version == "HTTP/1.0" {
            assert!(!r.chunked, "chunked to an HTTP/1.0 client");
        } else {
            assert!(r.start.starts_with("HTTP/1.1 200"), "{}", r.start);
            assert!(r.chunked, "an HTTP/1.1 client gets a framed body");
            let again = c
                .exchange("GET /empty?after-eof HTTP/1.1\nHost: app", b"")
                .await;
            assert_eq!(again.status(), 200, "the client connection stays open");
        }
    }
    assert_no_panic(&qp);
}

fn assert_no_panic(qp: &common::Qp) {
    let lines = qp.lines.lock().unwrap();
    assert!(
        !lines.iter().any(|l| l.contains("panicked")),
        "panic: {lines:?}"
    );
}

// === 21. Streaming and protocols ===

/// Each upstream flush reaches the client while the upstream still holds the rest of the stream,
/// over HTTP/1.1 and h2c.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s21_each_sse_flush_reaches_the_client_before_the_rest() {
    for h2 in [false, true] {
        // h1 in, h1 to a raw upstream; h2c in, h2c to an h2 upstream (as Knative forwards).
        let (raw, h2up) = if h2 {
            (None, Some(start_h2_up().await))
        } else {
            (Some(RawUp::start().await), None)
        };
        let (port, first_at) = match (&raw, &h2up) {
            (Some(r), _) => (r.addr.port(), r.first_event_at.clone()),
            (_, Some(u)) => (u.addr.port(), u.first_event_at.clone()),
            _ => unreachable!(),
        };
        let qp = start_qp(env(port)).await;
        let c = if h2 {
            common::h2_client()
        } else {
            common::client()
        };
        let req = Request::get(format!("http://{}/sse", qp.serving))
            .header("accept", "text/event-stream")
            .body(http_body_util::Empty::new())
            .unwrap();
        let resp = tokio::time::timeout(DEADLINE, c.request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = resp.into_body();
        let first = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .expect("first event before the deadline (upstream still holding)")
            .unwrap()
            .unwrap();
        let got = Instant::now();
        // The upstream has not been released: this event came through on its own flush.
        assert_eq!(first.data_ref().unwrap().as_ref(), b"data: one\n\n");
        let sent = first_at.lock().unwrap().unwrap();
        eprintln!(
            "s21 {}: first event {:?} after the upstream flushed it",
            if h2 { "h2c" } else { "h1" },
            got.saturating_duration_since(sent)
        );
        if let Some(r) = &raw {
            r.release();
        }
        if let Some(u) = &h2up {
            u.release();
        }
        let rest = tokio::time::timeout(DEADLINE, body.collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(rest.as_ref(), b"data: two\n\n");
        assert_no_panic(&qp);
    }
}

/// A gRPC-shaped h2c upstream: `/grpc` echoes the request body and ends with `grpc-status`
/// and `grpc-message` trailers derived from the body; `/bidi` streams each request frame back
/// as it arrives; `/rst` sends one frame, waits for the gate, then resets the stream; `/sse`
/// sends one event, waits for the gate, then sends the second.
struct H2Up {
    addr: SocketAddr,
    gate: watch::Sender<bool>,
    first_event_at: Arc<Mutex<Option<Instant>>>,
}

impl H2Up {
    fn release(&self) {
        let _ = self.gate.send(true);
    }
}

type H2Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

async fn h2_handle(
    req: Request<Incoming>,
    gate: watch::Receiver<bool>,
    first_event_at: Arc<Mutex<Option<Instant>>>,
) -> Result<Response<H2Body>, BoxError> {
    let grpc = |b: H2Body| {
        Response::builder()
            .header("content-type", "application/grpc")
            .body(b)
            .unwrap()
    };
    // One frame, the gate, then `after` (a frame or an error).
    let gated = move |first: &'static [u8], after: Result<Frame<Bytes>, BoxError>| {
        let frames = futures_util::stream::unfold(
            (0, gate, first_event_at, Some(after)),
            move |(i, mut gate, at, after)| async move {
                match i {
                    0 => {
                        *at.lock().unwrap() = Some(Instant::now());
                        let f = Ok(Frame::data(Bytes::from_static(first)));
                        Some((f, (1, gate, at, after)))
                    }
                    1 => {
                        let _ = gate.wait_for(|open| *open).await;
                        Some((after.unwrap(), (2, gate, at, None)))
                    }
                    _ => None,
                }
            },
        );
        BodyExt::boxed(StreamBody::new(frames))
    };
    match req.uri().path() {
        "/grpc" => {
            let body = req.into_body().collect().await?.to_bytes();
            let n: u32 = String::from_utf8_lossy(&body[5..]).parse().unwrap_or(0);
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", (n % 17).to_string().parse().unwrap());
            t.insert("grpc-message", format!("m{n}").parse().unwrap());
            let frames = futures_util::stream::iter([
                Ok::<_, BoxError>(Frame::data(body)),
                Ok(Frame::trailers(t)),
            ]);
            Ok(grpc(BodyExt::boxed(StreamBody::new(frames))))
        }
        "/bidi" => Ok(grpc(req.into_body().map_err(BoxError::from).boxed())),
        "/rst" => Ok(grpc(gated(b"partial", Err("scripted reset".into())))),
        "/sse" => Ok(Response::builder()
            .header("content-type", "text/event-stream")
            .body(gated(
                b"data: one\n\n",
                Ok(Frame::data(Bytes::from_static(b"data: two\n\n"))),
            ))
            .unwrap()),
        _ => Ok(Response::new(
            Full::new(Bytes::from_static(b"?"))
                .map_err(|n| match n {})
                .boxed(),
        )),
    }
}

async fn start_h2_up() -> H2Up {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (gate, rx) = watch::channel(false);
    let first_event_at = Arc::new(Mutex::new(None));
    let at = first_event_at.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            let (rx, at) = (rx.clone(), at.clone());
            tokio::spawn(async move {
                let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                b.max_concurrent_streams(2_000);
                let svc =
                    hyper::service::service_fn(move |req| h2_handle(req, rx.clone(), at.clone()));
                let _ = b.serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    H2Up {
        addr,
        gate,
        first_event_at,
    }
}

/// One h2c prior-knowledge connection to `addr`.
async fn h2_conn<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

const STREAMS: u32 = 1_000;

/// 1 000 concurrent gRPC-shaped streams on one h2c connection: every echo byte-exact and every
/// stream's own `grpc-status`/`grpc-message` trailers preserved; a bidirectional stream echoes
/// frame by frame; an upstream `RST_STREAM` reaches the client as a stream error (not a clean
/// end) while the connection keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s21_grpc_over_h2c_streams_trailers_and_resets() {
    let up = start_h2_up().await;
    let qp = start_qp(env(up.addr.port())).await;
    let send = h2_conn::<Full<Bytes>>(qp.serving).await;

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..STREAMS {
        let mut send = send.clone();
        let url = format!("http://{}/grpc", qp.serving);
        tasks.spawn(async move {
            // A gRPC length-prefixed message: flag, 4-byte length, payload.
            let msg = n.to_string();
            let mut body = vec![0u8];
            body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            body.extend_from_slice(msg.as_bytes());
            let req = Request::post(url)
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap();
            send.ready().await.unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let all = resp.into_body().collect().await.unwrap();
            let trailers = all.trailers().cloned().expect("trailers");
            assert_eq!(all.to_bytes().as_ref(), body.as_slice(), "stream {n}");
            assert_eq!(trailers["grpc-status"], (n % 17).to_string().as_str());
            assert_eq!(trailers["grpc-message"], format!("m{n}").as_str());
        });
    }
    let all = tokio::time::timeout(Duration::from_secs(60), async {
        let mut ok = 0;
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
            ok += 1;
        }
        ok
    })
    .await
    .expect("all streams before the deadline");
    assert_eq!(all, STREAMS);
    eprintln!(
        "s21: {STREAMS} concurrent streams on one h2c connection in {:?}",
        started.elapsed()
    );

    // Bidirectional: each request frame comes back before the next one is sent.
    let mut bidi = h2_conn::<http_body_util::StreamBody<_>>(qp.serving).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    let req_body = StreamBody::new(tokio_stream_from(rx));
    let req = Request::post(format!("http://{}/bidi", qp.serving))
        .header("content-type", "application/grpc")
        .body(req_body)
        .unwrap();
    bidi.ready().await.unwrap();
    let resp = tokio::time::timeout(DEADLINE, async {
        // The head may wait for the first frame on some proxies; send it first.
        tx.send(Ok(Frame::data(Bytes::from_static(b"ping-0"))))
            .await
            .unwrap();
        bidi.send_request(req).await.unwrap()
    })
    .await
    .unwrap();
    let mut body = resp.into_body();
    let mut echoed = Vec::new();
    for i in 0..5 {
        if i > 0 {
            tx.send(Ok(Frame::data(Bytes::from(format!("ping-{i}")))))
                .await
                .unwrap();
        }
        let mut got = Vec::new();
        while got.len() < format!("ping-{i}").len() {
            let f = tokio::time::timeout(DEADLINE, body.frame())
                .await
                .expect("echo before the next frame is sent")
                .unwrap()
                .unwrap();
            if let Some(d) = f.data_ref() {
                got.extend_from_slice(d);
            }
        }
        echoed.push(String::from_utf8(got).unwrap());
    }
    assert_eq!(echoed, ["ping-0", "ping-1", "ping-2", "ping-3", "ping-4"]);
    drop(tx);

    // RST_STREAM from the upstream mid-body (after the head and a frame reached the client):
    // the client's stream fails instead of ending cleanly; the connection keeps working.
    let mut s = send.clone();
    s.ready().await.unwrap();
    let resp = tokio::time::timeout(
        DEADLINE,
        s.send_request(
            Request::post(format!("http://{}/rst", qp.serving))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        ),
    )
    .await
    .unwrap()
    .expect("head before the reset");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.data_ref().unwrap().as_ref(), b"partial");
    up.release();
    let rest = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .unwrap();
    let err = match rest {
        Ok(b) => panic!(
            "a reset stream ended cleanly: {:?}, trailers {:?}",
            b.trailers().cloned(),
            b.to_bytes()
        ),
        Err(e) => {
            // The reset is in the source chain (hyper's body error wraps h2's).
            let mut chain = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                chain.push_str(&format!(": {s}"));
                src = s.source();
            }
            chain
        }
    };
    eprintln!("s21: upstream RST_STREAM seen by the client as: {err}");
    assert!(err.contains("stream error"), "not a stream reset: {err}");
    s.ready().await.unwrap();
    let again = s
        .send_request(
            Request::post(format!("http://{}/grpc", qp.serving))
                .body(Full::new(Bytes::from_static(b"\0\0\0\0\x017")))
                .unwrap(),
        )
        .await
        .expect("the connection survives a stream reset");
    let all = again.into_body().collect().await.unwrap();
    assert_eq!(all.trailers().unwrap()["grpc-status"], "7");
    assert_no_panic(&qp);
}

/// An mpsc receiver as a `Stream` (no extra dependency for one adapter).
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + Unpin {
    Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

// === 22. Stats and control-plane faults ===

/// Medians and worst of `n` sequential GETs through `qp`; every answer must be 200.
async fn latencies(qp: &common::Qp, n: usize) -> (Duration, Duration) {
    let c = common::client();
    let mut all = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let req = Request::get(format!("http://{}/?i={i}", qp.serving))
            .body(http_body_util::Empty::new())
            .unwrap();
        let resp = tokio::time::timeout(DEADLINE, c.request(req))
            .await
            .expect("answer before the deadline")
            .expect("request ok");
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
        resp.into_body().collect().await.unwrap();
        all.push(t.elapsed());
    }
    all.sort();
    (all[n / 2], all[n - 1])
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A collector that accepts connections and never reads or answers adds no latency: every
/// request is answered, none takes a second, and RSS stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s22_black_holed_otlp_endpoint_adds_no_latency() {
    const N: usize = 300;
    let app = common::start_app().await;
    // The black hole: accepted sockets are kept open and never read.
    let hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        let mut keep = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            acc.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            keep.push(s);
        }
    });

    let off = start_qp(env(app.addr.port())).await;
    let (off_p50, off_max) = latencies(&off, N).await;
    drop(off);

    let obs = format!(
        r#"{{"tracing":{{"protocol":"http/protobuf","endpoint":"{hole_addr}","samplingRate":1}}}}"#
    );
    let on = start_qp(env(app.addr.port()).set("OBSERVABILITY_CONFIG", &obs)).await;
    let rss0 = rss_kib(on.child.id());
    let (on_p50, mut on_max) = latencies(&on, N).await;
    // The exporter has a batch to send by now: once it is stuck on the black hole, more
    // requests go through with the export hanging.
    let deadline = Instant::now() + DEADLINE;
    while accepted.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the exporter never dialled the collector"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (during_p50, during_max) = latencies(&on, N / 3).await;
    on_max = on_max.max(during_max);
    let rss1 = rss_kib(on.child.id());
    eprintln!(
        "s22: tracing off p50 {off_p50:?} max {off_max:?}; black-holed OTLP p50 {on_p50:?} \
         max {on_max:?} (p50 {during_p50:?} once an export hung); collector connections \
         accepted {}; RSS {rss0} -> {rss1} KiB",
        accepted.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert!(
        on_max < Duration::from_secs(1),
        "slowest request {on_max:?}"
    );
    assert!(
        rss1 < rss0 + 64 * 1024,
        "RSS grew {rss0} -> {rss1} KiB with a black-holed exporter"
    );
    assert_no_panic(&on);
}

/// Probes (kubelet and activator `K-Network-Probe: queue`, Knative's `K-Network-Probe: probe`)
/// sent all through a window are not counted in the `Stat`; one `K-Proxy-Request: activator`
/// request is counted once, as proxied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s22_probes_are_not_counted_and_activator_requests_are_proxied() {
    use prost::Message;
    let app = common::start_app().await;
    let qp = start_qp(env(app.addr.port())).await;
    let serving = qp.serving;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stop.clone();
    let probes = tokio::spawn(async move {
        let kinds: [&[(&str, &str)]; 3] = [
            &[
                ("user-agent", "kube-probe/1.31"),
                ("k-network-probe", "queue"),
            ],
            &[
                ("user-agent", "Knative-Activator-Probe"),
                ("k-network-probe", "queue"),
            ],
            &[("k-network-probe", "probe"), ("k-network-hash", "abc")],
        ];
        let mut sent = 0;
        while !st.load(std::sync::atomic::Ordering::SeqCst) {
            let (s, _, _) = common::get(serving, "/", kinds[sent % 3]).await;
            assert_eq!(s, StatusCode::OK, "probe {sent}");
            sent += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sent
    });
    let req = tokio::spawn(async move {
        common::get(
            serving,
            "/sleep?ms=2500",
            &[("k-proxy-request", "activator")],
        )
        .await
    });
    let mut stats = Vec::new();
    let end = Instant::now() + Duration::from_secs(4);
    while Instant::now() < end {
        let (_, _, b) = common::get(qp.metrics, "/metrics", &[]).await;
        stats.push(shared::stats::Stat::decode(b).unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(req.await.unwrap().0, StatusCode::OK);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let sent = probes.await.unwrap();
    assert!(sent > 20, "only {sent} probes");
    assert_eq!(app.stats.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Probes would show up as dozens of requests per window.
    for s in &stats {
        assert!(s.request_count <= 1.0, "{s:?}");
        assert_eq!(s.proxied_request_count, s.request_count, "{s:?}");
        assert!(s.average_concurrent_requests <= 1.01, "{s:?}");
    }
    assert!(
        stats
            .iter()
            .any(|s| s.request_count == 1.0 && s.proxied_request_count == 1.0),
        "{stats:?}"
    );
    assert!(
        stats
            .iter()
            .any(|s| (s.average_proxied_concurrent_requests - 1.0).abs() < 0.01),
        "{stats:?}"
    );
}
