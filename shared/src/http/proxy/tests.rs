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
