//! `test/e2e/grpc_test.go`: gRPC (unary and bidirectional streaming) through the activator and
//! the queue-proxy to an `h2c` revision, on the `grpc-ping` app (Knative's `grpc-ping` image).

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::harness::{Local, Svc, shared, wait_until};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `Request{msg}` / `Response{msg}` (one string field) in a gRPC frame.
fn frame(msg: &str) -> Bytes {
    let mut pb = vec![0x0a, u8::try_from(msg.len()).expect("short message")];
    pb.extend_from_slice(msg.as_bytes());
    let mut f = BytesMut::new();
    f.extend_from_slice(&[0]);
    f.extend_from_slice(&u32::try_from(pb.len()).expect("len").to_be_bytes());
    f.extend_from_slice(&pb);
    f.freeze()
}

/// The next message's string field from a response body, and the buffered rest.
async fn next_msg(body: &mut Incoming, buf: &mut BytesMut) -> Option<String> {
    loop {
        if buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() >= 5 + len {
                buf.advance(5);
                let pb = buf.split_to(len);
                let n = usize::from(*pb.get(1)?);
                return Some(String::from_utf8_lossy(pb.get(2..2 + n)?).into_owned());
            }
        }
        let f = body.frame().await?.ok()?;
        if let Ok(d) = f.into_data() {
            buf.extend_from_slice(&d);
        }
    }
}

pub(crate) async fn h2(
    port: u16,
) -> hyper::client::conn::http2::SendRequest<
    http_body_util::combinators::BoxBody<Bytes, hyper::Error>,
> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

fn call(host: &str, method: &str) -> http::request::Builder {
    http::Request::post(format!("http://{host}/ping.PingService/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
}

/// Upstream `unaryTest`: `Ping("Hello!")` answers `Hello!`, with `grpc-status: 0`.
async fn unary(port: u16, host: &str) -> Result<String, String> {
    let mut s = h2(port).await;
    let req = call(host, "Ping")
        .body(Full::new(frame("Hello!")).map_err(|n| match n {}).boxed())
        .map_err(|e| e.to_string())?;
    let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    let got = next_msg(&mut body, &mut buf).await.ok_or("no message")?;
    let mut status = None;
    while let Some(Ok(f)) = body.frame().await {
        if let Ok(t) = f.into_trailers() {
            status = t.get("grpc-status").cloned();
        }
    }
    match status {
        Some(s) if s == "0" => Ok(got),
        other => Err(format!("grpc-status {other:?}")),
    }
}

/// Upstream `streamTest`: 3 messages on one stream, each answered before the next is sent;
/// after the client closes its side, the stream ends (EOF).
async fn stream(port: u16, host: &str) -> Result<(), String> {
    let mut s = h2(port).await;
    let (mut tx, body) = Channel::<Bytes, hyper::Error>::new(1);
    let req = call(host, "PingStream")
        .body(body.boxed())
        .map_err(|e| e.to_string())?;
    let want = "This is a short message!";
    tx.send_data(frame(want)).await.map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(60), s.send_request(req))
        .await
        .map_err(|_| "no response head")?
        .map_err(|e| e.to_string())?;
    let mut rbody = resp.into_body();
    let mut buf = BytesMut::new();
    for i in 0..3 {
        if i > 0 {
            tx.send_data(frame(want)).await.map_err(|e| e.to_string())?;
        }
        let got = tokio::time::timeout(Duration::from_secs(10), next_msg(&mut rbody, &mut buf))
            .await
            .map_err(|_| format!("stream {i}: no answer"))?;
        if got.as_deref() != Some(want) {
            return Err(format!("stream {i}: response = {got:?}, want {want:?}"));
        }
    }
    drop(tx);
    match tokio::time::timeout(Duration::from_secs(10), next_msg(&mut rbody, &mut buf)).await {
        Ok(None) => Ok(()),
        other => Err(format!("expected EOF, got {other:?}")),
    }
}

fn grpc_service(name: &str) -> Svc {
    let mut svc = Svc::new(name, "grpc-ping");
    // Upstream's `WithNamedPort("h2c")`.
    svc.port = Some((None, Some("h2c".into())));
    svc
}

/// TestGRPCUnaryPing (test/e2e/grpc_test.go).
#[test]
fn test_grpc_unary_ping() {
    let _m = shared();
    let svc = grpc_service("grpc-unary");
    let local = Local::start("grpc-unary", &[svc.yaml()], &[]);
    local.wait_ready("grpc-unary-00001", 1, Duration::from_secs(30));
    let got = runtime().block_on(unary(local.port, &svc.host()));
    assert_eq!(got.as_deref(), Ok("Hello!"), "{}", local.log());
}

/// TestGRPCStreamingPing (test/e2e/grpc_test.go).
#[test]
fn test_grpc_streaming_ping() {
    let _m = shared();
    let svc = grpc_service("grpc-stream");
    let local = Local::start("grpc-stream", &[svc.yaml()], &[]);
    local.wait_ready("grpc-stream-00001", 1, Duration::from_secs(30));
    let got = runtime().block_on(stream(local.port, &svc.host()));
    assert_eq!(got, Ok(()), "{}", local.log());
}

/// TestGRPCUnaryPingViaActivator and TestGRPCStreamingPingViaActivator (test/e2e/grpc_test.go):
/// `target-burst-capacity: -1` (the activator stays in the path; locally it always is), and
/// from zero pods, so each call is held in the activator until a pod is ready.
#[test]
fn test_grpc_ping_via_activator() {
    let _m = shared();
    let svc = grpc_service("grpc-activator").ann("target-burst-capacity", "-1");
    let local = Local::start("grpc-activator", &[svc.yaml()], &[]);
    let rev = "grpc-activator-00001";
    local.wait_ready(rev, 1, Duration::from_secs(30));
    let rt = runtime();
    wait_until(Duration::from_secs(30), "scale to zero", || {
        local.pod_count(rev) == 0
    });
    let got = rt.block_on(unary(local.port, &svc.host()));
    assert_eq!(got.as_deref(), Ok("Hello!"), "unary\n{}", local.log());
    wait_until(Duration::from_secs(30), "scale to zero", || {
        local.pod_count(rev) == 0
    });
    let got = rt.block_on(stream(local.port, &svc.host()));
    assert_eq!(got, Ok(()), "streaming\n{}", local.log());
}

/// TestReadinessGRPCProbe (test/e2e/readiness_test.go): a `grpc` readiness probe on the
/// container port (the app's `grpc.health.v1.Health/Check`) makes the Service ready.
#[test]
fn test_readiness_grpc_probe() {
    let _m = shared();
    let mut svc = grpc_service("grpc-probe");
    svc.readiness_probe = Some("{grpc: {port: 8080}}".into());
    let local = Local::start("grpc-probe", &[svc.yaml()], &[]);
    local.wait_ready("grpc-probe-00001", 1, Duration::from_secs(30));
    let r = local.get(&svc.host(), "/", &[]);
    assert_eq!(r.status, 200);
}
