//! A fake user container and a queue-proxy running in-process, both on 127.0.0.1:0.
#![allow(dead_code)]

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
use hyper_util::rt::{TokioExecutor, TokioIo};
use queue_proxy::config::{Cli, Config};
use shared::BoxError;
use shared::http::server::{ServerOptions, serve};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
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
        _ => Response::new(full("ok")),
    };
    Ok(resp)
}

fn websocket_echo(mut req: Request<Incoming>) -> Response<Body> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(up) = on.await {
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(up),
                Role::Server,
                None,
            )
            .await;
            while let Some(Ok(m)) = ws.next().await {
                if m.is_text() || m.is_binary() {
                    if ws.send(m).await.is_err() {
                        break;
                    }
                } else if m.is_close() {
                    break;
                }
            }
        }
    });
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

/// The reconciler's minimal environment, pointing at `user_port`.
pub fn cli(user_port: u16) -> Cli {
    Cli {
        serving_namespace: Some("ns".into()),
        serving_configuration: Some("cfg".into()),
        serving_revision: Some("rev".into()),
        serving_pod: Some("pod-1".into()),
        serving_pod_ip: Some("10.0.0.1".into()),
        queue_serving_port: Some("0".into()),
        queue_serving_tls_port: Some("8112".into()),
        user_port: Some(user_port.to_string()),
        container_concurrency: Some("0".into()),
        revision_timeout_seconds: Some("30".into()),
        observability_config: Some(
            r#"{"tracing":{},"metrics":{},"runtime":{},"requestMetrics":{}}"#.into(),
        ),
        ..Cli::default()
    }
}

pub struct Qp {
    pub serving: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub user_metrics: Option<SocketAddr>,
    pub shutdown: CancellationToken,
    pub done: JoinHandle<()>,
}

pub async fn start_qp(cli: Cli) -> Qp {
    let config = Config::try_from(cli).unwrap();
    let listeners = queue_proxy::Listeners::local(config.user_metrics_port.is_some())
        .await
        .unwrap();
    let qp = Qp {
        serving: listeners.serving.local_addr().unwrap(),
        admin: listeners.admin.local_addr().unwrap(),
        metrics: listeners.metrics.local_addr().unwrap(),
        user_metrics: listeners
            .user_metrics
            .as_ref()
            .map(|l| l.local_addr().unwrap()),
        shutdown: CancellationToken::new(),
        done: tokio::spawn(async {}),
    };
    let token = qp.shutdown.clone();
    Qp {
        done: tokio::spawn(async move {
            queue_proxy::run(config, listeners, token).await.unwrap();
        }),
        ..qp
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
