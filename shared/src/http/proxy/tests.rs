//! In-process tests: a fake upstream and a proxy, both served by `server::serve` on 127.0.0.1:0.

use super::*;
use crate::http::server::{ServerOptions, serve};
use http_body_util::{BodyExt, Empty};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(10);

type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

async fn start<F, Fut>(f: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<TestBody>, Infallible>> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let svc = tower::service_fn(f);
    tokio::spawn(serve(
        l,
        svc,
        ServerOptions::default(),
        CancellationToken::new(),
    ));
    addr
}

fn full(s: impl Into<Bytes>) -> TestBody {
    Full::new(s.into())
        .map_err(|n: Infallible| match n {})
        .boxed_unsync()
}

/// An upstream that answers with its view of the request: version, host, then headers.
async fn echo_upstream() -> SocketAddr {
    start(|req: Request<Incoming>| async move {
        let mut out = format!(
            "{:?} {} {}\n",
            req.version(),
            req.method(),
            req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("")
        );
        out.push_str(&format!(
            "authority={}\n",
            req.uri().authority().map(|a| a.as_str()).unwrap_or("")
        ));
        let mut names: Vec<_> = req.headers().iter().collect();
        names.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        for (k, v) in names {
            out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
        }
        Ok(Response::new(full(out)))
    })
    .await
}

async fn proxy_to(target: SocketAddr) -> SocketAddr {
    let up: Upstream = Upstream::new(target, &ClientOptions::default());
    start(move |req| {
        let up = up.clone();
        async move { forward_or_502(&up, req).await }
    })
    .await
}

async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    timeout(DEADLINE, s.read_to_end(&mut buf))
        .await
        .expect("response within the deadline")
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn rewrites_headers_like_go_reverse_proxy() {
    let up = echo_upstream().await;
    let proxy = proxy_to(up).await;
    let resp = raw(
        proxy,
        "GET /a%2Fb?x=1&y HTTP/1.1\r\nHost: example.com\r\nConnection: close, X-Drop\r\n\
         X-Drop: 1\r\nX-Keep: 2\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: basic\r\n\
         Te: gzip, trailers\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let body = resp.split("\r\n\r\n").nth(1).unwrap();
    assert!(body.contains("HTTP/1.1 GET /a%2Fb?x=1&y\n"), "{body}");
    assert!(body.contains("host: example.com\n"), "{body}");
    assert!(body.contains("x-keep: 2\n"), "{body}");
    assert!(body.contains("te: trailers\n"), "{body}");
    assert!(
        body.contains("x-forwarded-for: 10.0.0.1, 10.0.0.2, 127.0.0.1\n"),
        "{body}"
    );
    for gone in [
        "x-drop",
        "keep-alive",
        "proxy-authorization",
        "user-agent",
        "accept-encoding",
        "via",
        "x-forwarded-proto",
    ] {
        assert!(!body.contains(&format!("{gone}:")), "{gone} in {body}");
    }
}

#[tokio::test]
async fn connection_refused_is_a_go_style_502_and_nothing_sent() {
    // Bind then drop to get a port nobody listens on.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let up: Upstream<Empty<Bytes>> = Upstream::new(dead, &ClientOptions::default());
    let err = up
        .forward(Request::get("/").body(Empty::new()).unwrap())
        .await
        .unwrap_err();
    assert!(err.nothing_sent());
    assert_eq!(
        err.to_string(),
        format!("dial tcp {dead}: connect: connection refused")
    );
    let resp = err.to_response();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        format!("dial tcp {dead}: connect: connection refused\n")
    );
}

#[tokio::test]
async fn upstream_closing_mid_request_is_not_nothing_sent() {
    // Accepts, reads the head, and closes without answering.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
        }
    });
    let up: Upstream<Empty<Bytes>> = Upstream::new(addr, &ClientOptions::default());
    let err = timeout(
        DEADLINE,
        up.forward(Request::get("/").body(Empty::new()).unwrap()),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(!err.nothing_sent(), "{err}");
    assert_eq!(err.to_response().status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn streams_chunks_as_they_arrive_and_forwards_trailers_over_h2c() {
    // The upstream sends one chunk, then waits for the test before finishing with trailers: the
    // client must see the first chunk while the upstream is still blocked (no buffering).
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let up = start(move |req: Request<Incoming>| {
        let mut go_rx = go_rx.clone();
        async move {
            let version = format!("{:?}", req.version());
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
            tokio::spawn(async move {
                let _ = tx.send_data(Bytes::from(version)).await;
                let _ = go_rx.wait_for(|go| *go).await;
                let _ = tx.send_data(Bytes::from_static(b"|end")).await;
                let mut t = HeaderMap::new();
                t.insert("grpc-status", HeaderValue::from_static("0"));
                let _ = tx.send_trailers(t).await;
            });
            Ok(Response::new(body.boxed_unsync()))
        }
    })
    .await;
    let proxy = proxy_to(up).await;
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = Request::get(format!("http://{proxy}/stream"))
        .header(TE, "trailers")
        .body(Empty::new())
        .unwrap();
    let resp = timeout(DEADLINE, client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    let mut body = resp.into_body();
    let first = timeout(DEADLINE, body.frame())
        .await
        .expect("first chunk before the upstream finishes")
        .unwrap()
        .unwrap();
    assert_eq!(
        first.into_data().unwrap(),
        "HTTP/2.0",
        "h2 inbound goes upstream as h2c"
    );
    go_tx.send(true).unwrap();
    let rest = timeout(DEADLINE, body.collect()).await.unwrap().unwrap();
    let trailers = rest.trailers().cloned().expect("trailers forwarded");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(rest.to_bytes(), "|end");
}

#[tokio::test]
async fn http1_request_trailers_reach_an_http1_upstream() {
    // The upstream answers with the trailers its request body ended with.
    let up = start(|req: Request<Incoming>| async move {
        let collected = req.into_body().collect().await.ok();
        let t = collected
            .as_ref()
            .and_then(|c| c.trailers())
            .and_then(|t| t.get("x-sum"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        Ok(Response::new(full(format!("trailer={t}"))))
    })
    .await;
    let proxy = proxy_to(up).await;
    let resp = raw(
        proxy,
        "POST / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nTrailer: X-Sum\r\n\
         Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 42\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("trailer=42"), "{resp}");
}

#[tokio::test]
async fn h2_inbound_keeps_authority() {
    let up = echo_upstream().await;
    let proxy = proxy_to(up).await;
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    // The URI authority names the proxy; Go's QP would pass the client's :authority on.
    let req = Request::get(format!("http://{proxy}/p?q=1"))
        .body(Empty::new())
        .unwrap();
    let resp = timeout(DEADLINE, client.request(req))
        .await
        .unwrap()
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.starts_with("HTTP/2.0 GET /p?q=1\n"), "{body}");
    assert!(body.contains(&format!("authority={proxy}\n")), "{body}");
}

#[tokio::test]
async fn tunnels_101_upgrades_both_ways_and_holds_guards_until_close() {
    // Upstream: answers 101, then echoes bytes on the upgraded connection.
    let up = start(|mut req: Request<Incoming>| async move {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(u) = on.await {
                let mut io = TokioIo::new(u);
                let mut buf = [0u8; 64];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut resp = Response::new(full(""));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("echo"));
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        Ok(resp)
    })
    .await;
    let (held_tx, mut held_rx) = tokio::sync::oneshot::channel::<()>();
    let held_tx = Arc::new(Mutex::new(Some(held_tx)));
    let upstream: Upstream = Upstream::new(up, &ClientOptions::default());
    let proxy = start(move |req| {
        let up = upstream.clone();
        let held = held_tx.lock().unwrap().take();
        async move {
            let resp = forward_or_502(&up, req).await?;
            if let (Some(t), Some(held)) = (resp.extensions().get::<Tunnel>(), held) {
                // Dropped (completing the receiver) only when the tunnel ends.
                t.hold(held);
            }
            Ok(resp)
        }
    })
    .await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        timeout(DEADLINE, s.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for msg in [&b"ping"[..], b"pong-pong"] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        timeout(DEADLINE, s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg);
    }
    // The tunnel is still open: the guard is held.
    assert!(held_rx.try_recv().is_err());
    drop(s);
    let _ = timeout(DEADLINE, held_rx)
        .await
        .expect("guard released when the tunnel closes");
}

#[test]
fn strip_response_keeps_trailer_announcement() {
    let mut h = HeaderMap::new();
    h.insert(CONNECTION, HeaderValue::from_static("x-a"));
    h.insert("x-a", HeaderValue::from_static("1"));
    h.insert(TRAILER, HeaderValue::from_static("grpc-status"));
    h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    strip_response(&mut h);
    assert_eq!(h.len(), 1);
    assert_eq!(h[TRAILER], "grpc-status");
}

// === pool ===

/// What the raw upstream does with the `n`th request (0-based) on a connection.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// Answer `200 ok` and keep the connection.
    Answer,
    /// Answer, then close the connection after this many ms.
    AnswerThenClose(u64),
    /// Close without answering (after reading the head).
    Close,
}

#[derive(Default)]
struct Counts {
    conns: std::sync::atomic::AtomicUsize,
    closed: std::sync::atomic::AtomicUsize,
    requests: std::sync::atomic::AtomicUsize,
}

impl Counts {
    fn get(&self) -> (usize, usize, usize) {
        use std::sync::atomic::Ordering::SeqCst;
        (
            self.conns.load(SeqCst),
            self.closed.load(SeqCst),
            self.requests.load(SeqCst),
        )
    }
}

/// A hand-rolled HTTP/1.1 upstream (bodiless requests or `Content-Length` bodies) that counts
/// connections, closes and requests, and acts on each request as `act(n)` says.
async fn raw_upstream(act: fn(usize) -> Act, delay: Duration) -> (SocketAddr, Arc<Counts>) {
    use std::sync::atomic::Ordering::SeqCst;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.conns.fetch_add(1, SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut n = 0;
                'conn: loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 1024];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => break 'conn,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 1024];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => break 'conn,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    buf.drain(..head_end + len);
                    c.requests.fetch_add(1, SeqCst);
                    tokio::time::sleep(delay).await;
                    let a = act(n);
                    n += 1;
                    if matches!(a, Act::Close) {
                        break;
                    }
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        break;
                    }
                    if let Act::AnswerThenClose(ms) = a {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        break;
                    }
                }
                c.closed.fetch_add(1, SeqCst);
            });
        }
    });
    (addr, counts)
}

async fn get_ok(up: &Upstream<Full<Bytes>>, method: &str, body: &'static str) -> StatusCode {
    let req = Request::builder()
        .method(method)
        .uri("/")
        .header(HOST, "app")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    match timeout(DEADLINE, up.forward(req)).await.unwrap() {
        Ok(resp) => {
            let s = resp.status();
            let b = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(b, "ok");
            s
        }
        Err(e) => e.to_response().status(),
    }
}

/// Waits until `f` holds (every wait has a deadline).
async fn eventually(mut f: impl FnMut() -> bool) {
    timeout(DEADLINE, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("condition within the deadline");
}

#[tokio::test]
async fn pool_reuses_one_connection_for_sequential_requests() {
    let (addr, counts) = raw_upstream(|_| Act::Answer, Duration::ZERO).await;
    let up: Upstream<Full<Bytes>> = Upstream::new(addr, &ClientOptions::default());
    for _ in 0..5 {
        assert_eq!(get_ok(&up, "GET", "").await, StatusCode::OK);
        assert_eq!(up.inner.h1.idle_len(), 1, "returned at the end of the body");
    }
    assert_eq!(counts.get(), (1, 0, 5));
}

#[tokio::test]
async fn pool_closes_connections_idle_past_the_timeout() {
    let (addr, counts) = raw_upstream(|_| Act::Answer, Duration::ZERO).await;
    let opts = ClientOptions {
        pool_idle_timeout: Duration::from_millis(100),
        ..ClientOptions::default()
    };
    let up: Upstream<Full<Bytes>> = Upstream::new(addr, &opts);
    assert_eq!(get_ok(&up, "GET", "").await, StatusCode::OK);
    // Never used past the timeout, and closed by the reaper without further traffic.
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(up.inner.h1.checkout().is_none(), "expired");
    assert_eq!(get_ok(&up, "GET", "").await, StatusCode::OK);
    assert_eq!(counts.get().0, 2);
    eventually(|| counts.get().1 == 2).await;
    assert_eq!(up.inner.h1.idle_len(), 0);
}

#[tokio::test]
async fn pool_skips_a_connection_the_app_closed() {
    // Each connection answers once and closes 20 ms later without `Connection: close`.
    let (addr, counts) = raw_upstream(|_| Act::AnswerThenClose(20), Duration::ZERO).await;
    let up: Upstream<Full<Bytes>> = Upstream::new(addr, &ClientOptions::default());
    assert_eq!(get_ok(&up, "GET", "").await, StatusCode::OK);
    eventually(|| counts.get().1 == 1).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    // A POST is never replayed, so this only passes if the dead connection was not used.
    assert_eq!(get_ok(&up, "POST", "body").await, StatusCode::OK);
    assert_eq!(counts.get().2, 2, "each request reached the app once");
}

#[tokio::test]
async fn pool_replays_a_bodiless_get_once_when_a_reused_connection_dies() {
    // The second request on every connection is read and the connection closed unanswered:
    // the stale keep-alive race, made deterministic.
    let act = |n| if n == 0 { Act::Answer } else { Act::Close };
    let (addr, counts) = raw_upstream(act, Duration::ZERO).await;
    let up: Upstream<Full<Bytes>> = Upstream::new(addr, &ClientOptions::default());
    assert_eq!(get_ok(&up, "GET", "").await, StatusCode::OK);
    assert_eq!(get_ok(&up, "GET", "").await, StatusCode::OK, "replayed");
    assert_eq!(counts.get().2, 3, "the GET reached the app twice");
    // A POST on the reused connection is not replayed.
    assert_eq!(get_ok(&up, "POST", "body").await, StatusCode::BAD_GATEWAY);
    assert_eq!(counts.get().2, 4, "the POST reached the app once");
}

#[tokio::test]
async fn pool_keeps_at_most_max_idle_connections() {
    let (addr, counts) = raw_upstream(|_| Act::Answer, Duration::from_millis(50)).await;
    let opts = ClientOptions {
        pool_max_idle_per_host: 1,
        ..ClientOptions::default()
    };
    let up: Upstream<Full<Bytes>> = Upstream::new(addr, &opts);
    let (a, b, c) = tokio::join!(
        get_ok(&up, "GET", ""),
        get_ok(&up, "GET", ""),
        get_ok(&up, "GET", "")
    );
    assert_eq!([a, b, c], [StatusCode::OK; 3]);
    assert_eq!(counts.get().0, 3);
    assert_eq!(up.inner.h1.idle_len(), 1);
    eventually(|| counts.get().1 == 2).await;
}

#[test]
fn our_own_descriptor_exhaustion_is_not_an_upstream_failure() {
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let err = |errno| ProxyError::connect(std::io::Error::from_raw_os_error(errno).into(), addr);
    for local in [libc::EMFILE, libc::ENFILE, libc::EADDRNOTAVAIL] {
        let e = err(local);
        assert!(e.nothing_sent() && e.is_local_exhaustion(), "{e}");
    }
    assert!(!err(libc::ECONNREFUSED).is_local_exhaustion());
    assert!(!ProxyError::UnexpectedUpgrade.is_local_exhaustion());
    assert_eq!(
        err(libc::EMFILE).to_string(),
        "dial tcp 127.0.0.1:1: connect: too many open files"
    );
}
