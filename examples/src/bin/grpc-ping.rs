//! Mirrors Knative's `grpc-ping` test image (test/test_images/grpc-ping): the `ping.PingService`
//! of its `ping.proto` over h2c: unary `Ping` and bidirectional `PingStream`, each answering a
//! `Request{msg}` with `Response{msg + SUFFIX}` (after `DELAY` ms for `Ping`), plus
//! `grpc.health.v1.Health/Check` answering SERVING (for gRPC readiness probes). Any other
//! request gets an empty 200, as upstream's handler gives. Listens on `$PORT` (default 8080).
//!
//! The messages are one string field each, so the gRPC framing (flag byte, 4-byte length) and
//! the protobuf encoding are written out here rather than generated.

use std::convert::Infallible;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use http_body_util::channel::{Channel, Sender};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// Protobuf: field 1, length-delimited, holding `s`.
fn encode_msg(s: &str) -> Vec<u8> {
    let mut out = vec![0x0a];
    let mut n = s.len();
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(s.as_bytes());
    out
}

/// Field 1 (string) of a protobuf message; other fields are skipped.
fn decode_msg(mut b: &[u8]) -> String {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut msg = String::new();
    while let Some(key) = varint(&mut b) {
        match key & 7 {
            0 => {
                let _ = varint(&mut b);
            }
            2 => {
                let Some(len) = varint(&mut b).and_then(|l| usize::try_from(l).ok()) else {
                    break;
                };
                let Some(v) = b.get(..len) else { break };
                if key >> 3 == 1 {
                    msg = String::from_utf8_lossy(v).into_owned();
                }
                b = &b[len..];
            }
            1 => b = b.get(8..).unwrap_or_default(),
            5 => b = b.get(4..).unwrap_or_default(),
            _ => break,
        }
    }
    msg
}

/// One gRPC length-prefixed message.
fn frame(payload: &[u8]) -> Bytes {
    let mut f = BytesMut::with_capacity(5 + payload.len());
    f.extend_from_slice(&[0]);
    f.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    f.extend_from_slice(payload);
    f.freeze()
}

fn trailers() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static("0"));
    t
}

fn pong(msg: &str) -> String {
    format!("{msg}{}", std::env::var("SUFFIX").unwrap_or_default())
}

/// Reads request messages as they come and answers each through `tx` (`unary`: after `DELAY`).
async fn serve_calls(mut body: Incoming, mut tx: Sender<Bytes>, path: String) {
    let delay = std::env::var("DELAY")
        .ok()
        .and_then(|d| d.parse().ok())
        .map_or(Duration::ZERO, Duration::from_millis);
    let mut buf = BytesMut::new();
    while let Some(Ok(f)) = body.frame().await {
        let Ok(data) = f.into_data() else { continue };
        buf.extend_from_slice(&data);
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < 5 + len {
                break;
            }
            buf.advance(5);
            let msg = buf.split_to(len);
            let answer = match path.as_str() {
                "/grpc.health.v1.Health/Check" => vec![0x08, 0x01],
                "/ping.PingService/Ping" => {
                    tokio::time::sleep(delay).await;
                    encode_msg(&pong(&decode_msg(&msg)))
                }
                _ => encode_msg(&pong(&decode_msg(&msg))),
            };
            if tx.send_data(frame(&answer)).await.is_err() {
                return;
            }
        }
    }
    let _ = tx.send_trailers(trailers()).await;
}

async fn handle(req: Request<Incoming>) -> Result<Response<Channel<Bytes>>, Infallible> {
    let grpc = req.version() == http::Version::HTTP_2
        && req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let (tx, body) = Channel::new(4);
    if !grpc {
        drop(tx);
        return Ok(Response::new(body));
    }
    let path = req.uri().path().to_owned();
    tokio::spawn(serve_calls(req.into_body(), tx, path));
    let mut r = Response::new(body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    Ok(r)
}

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            eprintln!("grpc-ping: listening on port {port}");
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => r?,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                };
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), hyper::service::service_fn(handle))
                        .await;
                });
            }
        })
}
