//! A fake user container on 127.0.0.1:0 and the real queue-proxy binary in front of it.
#![allow(dead_code)]

#[path = "../support/ws_echo.rs"]
mod ws_echo;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use shared::BoxError;
use shared::http::server::{ServerOptions, serve};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const DEADLINE: Duration = Duration::from_secs(20);

pub type Body = UnsyncBoxBody<Bytes, BoxError>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into())
        .map_err(|n: Infallible| match n {})
        .boxed_unsync()
}

/// What the fake app observed.
#[derive(Clone, Default)]
pub struct AppStats {
    pub hits: Arc<AtomicUsize>,
    pub now: Arc<AtomicUsize>,
    pub max: Arc<AtomicUsize>,
}

pub struct App {
    pub addr: SocketAddr,
    pub stats: AppStats,
}

fn query_ms(req: &Request<Incoming>) -> u64 {
    req.uri()
        .query()
        .and_then(|q| q.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn app_handler(req: Request<Incoming>, st: AppStats) -> Result<Response<Body>, Infallible> {
    st.hits.fetch_add(1, Ordering::SeqCst);
    let n = st.now.fetch_add(1, Ordering::SeqCst) + 1;
    st.max.fetch_max(n, Ordering::SeqCst);
    struct Dec(Arc<AtomicUsize>);
    impl Drop for Dec {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let _dec = Dec(st.now.clone());
    let path = req.uri().path().to_owned();
    let resp = match path.as_str() {
        "/sleep" => {
            tokio::time::sleep(Duration::from_millis(query_ms(&req))).await;
            Response::new(full("slept"))
        }
        "/headers" => {
            let mut out = format!(
                "{:?} host={}\n",
                req.version(),
                req.headers()
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or(req.uri().authority().map(|a| a.as_str()).unwrap_or(""))
            );
            let mut hs: Vec<_> = req.headers().iter().collect();
            hs.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
            for (k, v) in hs {
                out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            Response::new(full(out))
        }
        "/ws" => return Ok(websocket_echo(req)),
        // A gRPC-shaped answer: body, then `grpc-status` in trailers.
        "/trailers" => {
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(2);
            tokio::spawn(async move {
                let _ = tx.send_data(Bytes::from_static(b"data")).await;
                let mut t = http::HeaderMap::new();
                t.insert("grpc-status", http::HeaderValue::from_static("0"));
                let _ = tx.send_trailers(t).await;
            });
            // HTTP/1 trailers must be announced (hyper sends only announced fields).
            let mut resp = Response::new(body.boxed_unsync());
            resp.headers_mut()
                .insert("trailer", http::HeaderValue::from_static("grpc-status"));
            return Ok(resp);
        }
        // `/drip?ms=M&n=N`: headers at once, then N one-byte chunks M ms apart (unknown length).
        "/drip" => {
            let q = req.uri().query().unwrap_or("");
            let arg = |k: &str| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let (ms, n) = (arg("ms"), arg("n"));
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
            tokio::spawn(async move {
                for _ in 0..n {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    if tx.send_data(Bytes::from_static(b".")).await.is_err() {
                        return;
                    }
                }
            });
            return Ok(Response::new(body.boxed_unsync()));
        }
        _ => Response::new(full("ok")),
    };
    Ok(resp)
}

fn websocket_echo(mut req: Request<Incoming>) -> Response<Body> {
    let key = ws_echo::spawn_echo(&mut req);
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", key)
        .body(full(""))
        .unwrap()
}

pub async fn start_app_on(l: TcpListener) -> App {
    let addr = l.local_addr().unwrap();
    let stats = AppStats::default();
    let st = stats.clone();
    let svc = tower::service_fn(move |req| app_handler(req, st.clone()));
    tokio::spawn(serve(
        l,
        svc,
        ServerOptions::default(),
        CancellationToken::new(),
    ));
    App { addr, stats }
}

pub async fn start_app() -> App {
    start_app_on(TcpListener::bind("127.0.0.1:0").await.unwrap()).await
}

/// The queue-proxy binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_queue-proxy");

/// The reconciler's environment for one pod, pointing at `user_port`, with every port of ours
/// at 0 (the binary logs the bound addresses) and a 1 s drain.
#[derive(Clone, Debug)]
pub struct Env(pub Vec<(String, String)>);

pub fn env(user_port: u16) -> Env {
    Env(vec![])
        .set("SERVING_NAMESPACE", "ns")
        .set("SERVING_CONFIGURATION", "cfg")
        .set("SERVING_REVISION", "rev")
        .set("SERVING_SERVICE", "svc")
        .set("SERVING_POD", "pod-1")
        .set("SERVING_POD_IP", "10.0.0.1")
        .set("QUEUE_SERVING_PORT", "0")
        .set("QUEUE_SERVING_TLS_PORT", "0")
        .set("USER_PORT", &user_port.to_string())
        .set("CONTAINER_CONCURRENCY", "0")
        .set("REVISION_TIMEOUT_SECONDS", "30")
        .set("SERVING_LOGGING_CONFIG", "")
        .set("SERVING_LOGGING_LEVEL", "")
        .set(
            "OBSERVABILITY_CONFIG",
            r#"{"tracing":{},"metrics":{},"runtime":{},"requestMetrics":{}}"#,
        )
        .set("QUEUE_ADMIN_PORT", "0")
        .set("QUEUE_METRICS_PORT", "0")
        .set("QUEUE_USER_METRICS_PORT", "0")
        .set("QUEUE_DRAIN_SECONDS", "1")
        .set("SYSTEM_NAMESPACE", "knative-serving")
        .set("HOST_IP", "10.0.0.2")
        .set("ROOT_CA", "")
        // Tests never see the node's real certificates.
        .set("QUEUE_TLS_CERT_DIR", "/nonexistent")
}

impl Env {
    /// Sets (or replaces) `k`.
    pub fn set(mut self, k: &str, v: &str) -> Self {
        self.0.retain(|(n, _)| n != k);
        self.0.push((k.into(), v.into()));
        self
    }

    /// Removes `k`.
    pub fn unset(mut self, k: &str) -> Self {
        self.0.retain(|(n, _)| n != k);
        self
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    /// A `Command` for the binary with exactly this environment.
    pub fn command(&self) -> std::process::Command {
        let mut c = std::process::Command::new(BIN);
        c.env_clear().envs(self.0.iter().map(|(k, v)| (k, v)));
        c
    }
}

/// A running queue-proxy process; killed on drop.
pub struct Qp {
    pub serving: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub user_metrics: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub child: std::process::Child,
    /// Every stdout/stderr line so far (logs, request logs).
    pub lines: Arc<std::sync::Mutex<Vec<String>>>,
}

/// Starts the binary and waits until it reported every listener it should bind.
pub async fn start_qp(env: Env) -> Qp {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let want_user_metrics = env
        .get("OBSERVABILITY_CONFIG")
        .is_some_and(|c| c.contains("prometheus"));
    let want_tls = env
        .get("QUEUE_TLS_CERT_DIR")
        .is_some_and(|d| std::path::Path::new(d).join("tls.key").exists());
    let mut child = env
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn queue-proxy");
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, SocketAddr)>(8);
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    for (reader, tx) in [
        (Box::new(out) as Box<dyn std::io::Read + Send>, Some(tx)),
        (Box::new(err), None),
    ] {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if let (Some(tx), "listening") = (&tx, v["message"].as_str().unwrap_or("")) {
                    let name = v["listener"].as_str().unwrap_or("").to_owned();
                    if let Some(addr) = v["addr"].as_str().and_then(|a| a.parse().ok()) {
                        let addr: SocketAddr = addr;
                        let local = SocketAddr::from(([127, 0, 0, 1], addr.port()));
                        let _ = tx.blocking_send((name, local));
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
    }
    let mut seen = std::collections::HashMap::new();
    let complete = |seen: &std::collections::HashMap<String, SocketAddr>| {
        ["serving", "admin", "metrics"]
            .iter()
            .all(|n| seen.contains_key(*n))
            && (!want_user_metrics || seen.contains_key("user-metrics"))
            && (!want_tls || seen.contains_key("serving-tls"))
    };
    while !complete(&seen) {
        match tokio::time::timeout(DEADLINE, rx.recv()).await {
            Ok(Some((name, addr))) => {
                seen.insert(name, addr);
            }
            _ => {
                let _ = child.kill();
                panic!(
                    "queue-proxy did not report its listeners: {:?}",
                    lines.lock().unwrap()
                );
            }
        }
    }
    Qp {
        serving: seen["serving"],
        admin: seen["admin"],
        metrics: seen["metrics"],
        user_metrics: seen.get("user-metrics").copied(),
        tls: seen.get("serving-tls").copied(),
        child,
        lines,
    }
}

impl Qp {
    /// Sends SIGTERM to the process.
    pub fn sigterm(&self) {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM");
    }

    /// Waits (bounded by `limit`) for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "did not exit in {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Output lines so far that parse as JSON and satisfy `pred`.
    pub fn json_lines(&self, pred: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v| pred(v))
            .collect()
    }
}

impl Drop for Qp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends a GET and returns status and body.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, Bytes) {
    let mut b = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = tokio::time::timeout(DEADLINE, client().request(b.body(Empty::new()).unwrap()))
        .await
        .expect("response before the deadline")
        .expect("request ok");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

/// Writes `raw` on a fresh connection and reads until the server closes or `DEADLINE`.
pub async fn raw(addr: SocketAddr, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}
