//! Mirrors Knative's `timeout` test image (test/test_images/timeout): `?initialTimeout=<ms>`
//! waits before the response head, the head is sent at once, `?timeout=<ms>` waits before the
//! body `Slept for <ms> milliseconds`. Listens on `$PORT` (default 8080).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::channel::Channel;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

fn param(query: &str, name: &str) -> u64 {
    query
        .split('&')
        .find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or(0)
}

async fn handle(req: Request<Incoming>) -> Result<Response<Channel<Bytes>>, Infallible> {
    let query = req.uri().query().unwrap_or("").to_owned();
    tokio::time::sleep(Duration::from_millis(param(&query, "initialTimeout"))).await;
    let (mut tx, body) = Channel::new(1);
    let sleep = param(&query, "timeout");
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(sleep)).await;
        let _ = tx
            .send_data(Bytes::from(format!("Slept for {sleep} milliseconds")))
            .await;
    });
    Ok(Response::new(body))
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
            eprintln!("timeout: listening on port {port}");
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
