//! What the black-box suites of both binaries need around a child process and a client: free
//! ports, stderr capture, signals, exit waits, bounded requests and polling. Included with
//! `#[path]` by the queue-proxy's reliability suite and by the activator's.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled HTTP/1.1 client.
pub fn h1() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A pooled h2c (prior knowledge) client.
pub fn h2c() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A port that was free a moment ago (bind to 0, read it, close).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Collects everything `from` yields (a child's stderr) on a thread, for panic checks and
/// failure messages.
pub fn capture(mut from: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// Sends `sig` (`TERM`, `INT`, `KILL`, …) to `pid` with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Waits up to `within` for `child` to exit; panics naming `what` otherwise.
pub fn wait_exit(child: &mut Child, within: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "{what} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `req` and reads the whole body; `Err` on a transport error or after `within`.
pub async fn send_request(
    c: &HttpClient,
    req: Request<Full<Bytes>>,
    within: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let fut = async {
        let resp = c.request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e:?}"))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(within, fut)
        .await
        .unwrap_or_else(|_| Err("timeout".into()))
}

/// [`send_request`] for a method, URL and body.
pub async fn send(
    c: &HttpClient,
    method: &str,
    url: String,
    body: Bytes,
    within: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body))
        .unwrap();
    send_request(c, req, within).await
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `within`.
pub async fn eventually(what: &str, within: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
