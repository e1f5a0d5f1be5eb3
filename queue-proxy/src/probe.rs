//! The user container's readiness probe (`SERVING_READINESS_PROBE`, `queue-proxy.md` §6).
//!
//! [`parse_specs`] decodes Knative's compact Kubernetes `Probe` JSON (one object, or an array
//! with `ENABLE_MULTI_CONTAINER_PROBES`). [`Prober::probe`] runs every probe in parallel and is
//! single-flight: concurrent callers share one run. Aggressive mode (`periodSeconds: 0`) retries
//! until success or 10 s; the consecutive-success counter persists across calls (Knative).
//!
//! Deviation: aggressive mode retries every **10 ms** (Knative: 50 ms), and every **2 ms** while
//! the connection is refused (nothing listens yet: a refused loopback connect is two syscalls,
//! and never reaches the app), so readiness is reported within ~2 ms of the app listening. This
//! is what a held request waits for after the app starts (the activator's probe blocks on this
//! run). Each attempt still has Knative's 100 ms timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::time::{Instant, timeout};

/// Aggressive mode: pause between attempts (Knative: 50 ms).
pub const AGGRESSIVE_INTERVAL: Duration = Duration::from_millis(10);
/// Aggressive mode: pause after an attempt whose connection was refused (nothing listens yet).
pub const REFUSED_INTERVAL: Duration = Duration::from_millis(2);
/// Aggressive mode: timeout of one attempt (Knative: 100 ms).
pub const AGGRESSIVE_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(100);
/// Aggressive mode: give up after this long (Knative's `PollTimeout`).
pub const AGGRESSIVE_POLL_TIMEOUT: Duration = Duration::from_secs(10);

/// A Kubernetes `IntOrString` port.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(i64),
    /// A string (Knative's encoder writes `"8080"`).
    Str(String),
}

impl Default for IntOrString {
    fn default() -> Self {
        Self::Int(0)
    }
}

impl IntOrString {
    fn port(&self) -> Option<u16> {
        match self {
            Self::Int(i) => u16::try_from(*i).ok(),
            Self::Str(s) => s.parse().ok(),
        }
    }
}

/// One `httpHeaders` entry.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct HttpHeader {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Value.
    #[serde(default)]
    pub value: String,
}

/// `httpGet`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpGet {
    /// Path, possibly with a query.
    #[serde(default)]
    pub path: String,
    /// Port.
    #[serde(default)]
    pub port: IntOrString,
    /// Host (the reconciler sets 127.0.0.1).
    #[serde(default)]
    pub host: String,
    /// `HTTP` or `HTTPS`.
    #[serde(default)]
    pub scheme: String,
    /// Extra headers.
    #[serde(default)]
    pub http_headers: Vec<HttpHeader>,
}

/// `tcpSocket`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct TcpSocket {
    /// Port.
    #[serde(default)]
    pub port: IntOrString,
    /// Host.
    #[serde(default)]
    pub host: String,
}

/// `grpc`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Grpc {
    /// Port.
    #[serde(default)]
    pub port: i64,
    /// Health service name (`""` = whole server).
    #[serde(default)]
    pub service: Option<String>,
}

/// A Kubernetes `Probe` as Knative encodes it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    /// `exec` (always fails in the queue-proxy, as in Knative).
    #[serde(default)]
    pub exec: Option<serde_json::Value>,
    /// `httpGet`.
    #[serde(default)]
    pub http_get: Option<HttpGet>,
    /// `tcpSocket`.
    #[serde(default)]
    pub tcp_socket: Option<TcpSocket>,
    /// `grpc`.
    #[serde(default)]
    pub grpc: Option<Grpc>,
    /// Attempt timeout in periodic mode.
    #[serde(default)]
    pub timeout_seconds: i32,
    /// 0 = aggressive mode.
    #[serde(default)]
    pub period_seconds: i32,
    /// Consecutive successes needed in aggressive mode (0 behaves like 1).
    #[serde(default)]
    pub success_threshold: i32,
    /// Ignored (the kubelet applies it to our own probe).
    #[serde(default)]
    pub failure_threshold: i32,
}

/// Decodes `SERVING_READINESS_PROBE`.
///
/// # Errors
/// Invalid JSON, or an array when `multi` is false (and vice versa).
pub fn parse_specs(json: &str, multi: bool) -> Result<Vec<ProbeSpec>, serde_json::Error> {
    if multi {
        serde_json::from_str(json)
    } else {
        // serde accepts a sequence for a struct; Knative's decoder does not.
        let v: serde_json::Value = serde_json::from_str(json)?;
        if !v.is_object() {
            return Err(serde::de::Error::custom("expected a single probe object"));
        }
        serde_json::from_value::<ProbeSpec>(v).map(|p| vec![p])
    }
}

/// Why one probe attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// `exec` probes cannot run in the queue-proxy.
    #[error("exec probe not supported")]
    Exec,
    /// No handler in the spec.
    #[error("no probe found")]
    NoHandler,
    /// The attempt timed out.
    #[error("probe timed out after {0:?}")]
    Timeout(Duration),
    /// Connecting or talking failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// HTTP failed.
    #[error("{0}")]
    Http(#[from] hyper::Error),
    /// The answer was not a success.
    #[error("{0}")]
    Status(String),
}

impl ProbeError {
    /// Nothing listened: the connection was refused.
    fn is_refused(&self) -> bool {
        matches!(self, Self::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    }
}

struct Runner {
    spec: ProbeSpec,
    /// Aggressive mode's consecutive successes (persists across calls, Knative).
    successes: AtomicU32,
    h2_detect: bool,
}

/// Runs the readiness probes; cheap to clone.
#[derive(Clone)]
pub struct Prober {
    runners: Arc<Vec<Runner>>,
    /// Single-flight: the run in progress holds the lock; waiters reuse its result.
    flight: Arc<Mutex<bool>>,
    generation: Arc<AtomicU64>,
    /// Shorter poll timeout for tests.
    poll_timeout: Duration,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("probes", &self.runners.len())
            .finish()
    }
}

impl Prober {
    /// A prober for `specs`; no specs means always ready.
    pub fn new(specs: Vec<ProbeSpec>, h2_detect: bool) -> Self {
        Self {
            runners: Arc::new(
                specs
                    .into_iter()
                    .map(|spec| Runner {
                        spec,
                        successes: AtomicU32::new(0),
                        h2_detect,
                    })
                    .collect(),
            ),
            flight: Arc::new(Mutex::new(false)),
            generation: Arc::new(AtomicU64::new(0)),
            poll_timeout: AGGRESSIVE_POLL_TIMEOUT,
        }
    }

    /// Overrides the aggressive-mode poll timeout (tests).
    pub fn with_poll_timeout(mut self, d: Duration) -> Self {
        self.poll_timeout = d;
        self
    }

    /// Probes the containers: true only if every probe passes. Concurrent callers share one run
    /// (Knative's `ProbeContainer`).
    pub async fn probe(&self) -> bool {
        if self.runners.is_empty() {
            return true;
        }
        let seen = self.generation.load(Ordering::Acquire);
        let mut last = self.flight.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            // A run finished while we waited for the lock: share its answer.
            return *last;
        }
        let runs = self.runners.iter().map(|r| r.run(self.poll_timeout));
        let results = futures_util::future::join_all(runs).await;
        let ok = results.iter().all(Result::is_ok);
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            tracing::warn!(error = %e, "readiness probe failed");
        }
        *last = ok;
        self.generation.fetch_add(1, Ordering::AcqRel);
        ok
    }
}

impl Runner {
    async fn run(&self, poll_timeout: Duration) -> Result<(), ProbeError> {
        if self.spec.period_seconds > 0 {
            let t =
                Duration::from_secs(u64::try_from(self.spec.timeout_seconds.max(0)).unwrap_or(1));
            return self.attempt(t).await;
        }
        let need = u32::try_from(self.spec.success_threshold.max(1)).unwrap_or(1);
        let deadline = Instant::now() + poll_timeout;
        let mut failures = 0u32;
        loop {
            let mut pause = AGGRESSIVE_INTERVAL;
            match self.attempt(AGGRESSIVE_ATTEMPT_TIMEOUT).await {
                Ok(()) => {
                    let n = self.successes.fetch_add(1, Ordering::AcqRel) + 1;
                    if n >= need {
                        return Ok(());
                    }
                }
                Err(e) => {
                    self.successes.store(0, Ordering::Release);
                    failures += 1;
                    if e.is_refused() {
                        pause = REFUSED_INTERVAL;
                    }
                    if Instant::now() + pause >= deadline {
                        tracing::warn!(error = %e, "aggressive probe error (failed {failures} times)");
                        return Err(e);
                    }
                }
            }
            if Instant::now() + pause >= deadline {
                return Err(ProbeError::Status("success threshold not reached".into()));
            }
            tokio::time::sleep(pause).await;
        }
    }

    async fn attempt(&self, t: Duration) -> Result<(), ProbeError> {
        let fut = async {
            if self.spec.exec.is_some() {
                Err(ProbeError::Exec)
            } else if let Some(h) = &self.spec.http_get {
                http_probe(h, self.h2_detect).await
            } else if let Some(tcp) = &self.spec.tcp_socket {
                let host = if tcp.host.is_empty() {
                    "127.0.0.1"
                } else {
                    &tcp.host
                };
                let port = tcp.port.port().unwrap_or(0);
                TcpStream::connect((host, port)).await?;
                Ok(())
            } else if let Some(g) = &self.spec.grpc {
                grpc_probe(g).await
            } else {
                Err(ProbeError::NoHandler)
            }
        };
        if t.is_zero() {
            return fut.await;
        }
        timeout(t, fut).await.map_err(|_| ProbeError::Timeout(t))?
    }
}

async fn connect(host: &str, port: u16) -> Result<TokioIo<TcpStream>, ProbeError> {
    let s = TcpStream::connect((host, port)).await?;
    let _ = s.set_nodelay(true);
    Ok(TokioIo::new(s))
}

async fn http_probe(h: &HttpGet, h2_detect: bool) -> Result<(), ProbeError> {
    if h.scheme.eq_ignore_ascii_case("https") {
        // No TLS client in the queue-proxy (documented deviation).
        return Err(ProbeError::Status(
            "HTTPS readiness probes are not supported".into(),
        ));
    }
    let host = if h.host.is_empty() {
        "127.0.0.1"
    } else {
        &h.host
    };
    let port = h.port.port().unwrap_or(0);
    let path = if h.path.starts_with('/') {
        h.path.clone()
    } else {
        format!("/{}", h.path)
    };
    let build = |with_headers: bool| -> Result<Request<Empty<Bytes>>, ProbeError> {
        let uri: Uri = format!("http://{host}:{port}{path}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| ProbeError::Status(e.to_string()))?;
        let mut b = Request::get(uri.clone())
            .header(http::header::USER_AGENT, "kube-probe//")
            .header(http::header::HOST, format!("{host}:{port}"));
        if with_headers {
            for hh in &h.http_headers {
                b = b.header(hh.name.as_str(), hh.value.as_str());
            }
        }
        b.body(Empty::new())
            .map_err(|e| ProbeError::Status(e.to_string()))
    };
    if h2_detect {
        let io = connect(host, port).await?;
        if let Ok((mut send, conn)) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await
        {
            tokio::spawn(conn);
            if let Ok(resp) = send.send_request(build(false)?).await
                && (resp.status().is_success() || resp.status().is_redirection())
            {
                let resp = send.send_request(build(true)?).await?;
                return check_status(resp.status());
            }
        }
    }
    let io = connect(host, port).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let mut req = build(true)?;
    req.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    let resp = send.send_request(req).await?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    check_status(status)
}

fn check_status(s: StatusCode) -> Result<(), ProbeError> {
    if (200..400).contains(&s.as_u16()) {
        Ok(())
    } else {
        Err(ProbeError::Status(format!(
            "HTTP probe did not respond Ready, got status code: {}",
            s.as_u16()
        )))
    }
}

/// `grpc.health.v1.Health/Check` over h2c, framed by hand (one tiny message each way).
async fn grpc_probe(g: &Grpc) -> Result<(), ProbeError> {
    let port = u16::try_from(g.port).unwrap_or(0);
    let io = connect("127.0.0.1", port).await?;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await?;
    tokio::spawn(conn);
    // HealthCheckRequest { string service = 1; }
    let service = g.service.clone().unwrap_or_default();
    let mut msg = BytesMut::new();
    if !service.is_empty() {
        msg.put_u8(0x0a);
        put_varint(&mut msg, service.len() as u64);
        msg.put_slice(service.as_bytes());
    }
    let mut frame = BytesMut::with_capacity(5 + msg.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(msg.len()).unwrap_or(0));
    frame.put_slice(&msg);
    let req = Request::post(format!(
        "http://127.0.0.1:{port}/grpc.health.v1.Health/Check"
    ))
    .version(http::Version::HTTP_2)
    .header(http::header::CONTENT_TYPE, "application/grpc")
    .header(http::header::TE, "trailers")
    .header(http::header::USER_AGENT, "kube-probe//")
    .body(Full::new(frame.freeze()))
    .map_err(|e| ProbeError::Status(e.to_string()))?;
    let resp = send.send_request(req).await?;
    let collected = resp.into_body().collect().await?;
    let status_trailer = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if status_trailer != "0" {
        return Err(ProbeError::Status(format!(
            "gRPC probe failed, grpc-status {status_trailer:?}"
        )));
    }
    let mut body = collected.to_bytes();
    if body.len() < 5 {
        return Err(ProbeError::Status("gRPC probe: empty response".into()));
    }
    body.advance(5);
    // HealthCheckResponse { ServingStatus status = 1; }  SERVING = 1.
    let serving = body.len() >= 2 && body[0] == 0x08 && body[1] == 0x01;
    if serving {
        Ok(())
    } else {
        Err(ProbeError::Status("gRPC probe: service not SERVING".into()))
    }
}

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn decodes_knative_encodings() {
        let p = parse_specs(
            r#"{"tcpSocket":{"port":"8080","host":"127.0.0.1"},"successThreshold":1}"#,
            false,
        )
        .unwrap();
        assert_eq!(p[0].tcp_socket.as_ref().unwrap().port.port(), Some(8080));
        let p = parse_specs(
            r#"[{"tcpSocket":{"port":8080,"host":"127.0.0.1"}},{"httpGet":{"path":"health?foo=bar","port":8090,"httpHeaders":[{"name":"x","value":"y"}]},"periodSeconds":1,"timeoutSeconds":1}]"#,
            true,
        )
        .unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].http_get.as_ref().unwrap().http_headers[0].name, "x");
        assert!(parse_specs(r#""tcp""#, false).is_err());
        assert!(parse_specs(r#"[{"tcpSocket":{}}]"#, false).is_err());
    }

    fn tcp(port: u16) -> ProbeSpec {
        ProbeSpec {
            tcp_socket: Some(TcpSocket {
                port: IntOrString::Int(i64::from(port)),
                host: "127.0.0.1".into(),
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn exec_and_empty_fail_tcp_passes() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let short = Duration::from_millis(50);
        assert!(Prober::new(vec![tcp(port)], false).probe().await);
        let exec = ProbeSpec {
            exec: Some(serde_json::json!({})),
            ..Default::default()
        };
        assert!(
            !Prober::new(vec![exec], false)
                .with_poll_timeout(short)
                .probe()
                .await
        );
        assert!(
            !Prober::new(vec![ProbeSpec::default()], false)
                .with_poll_timeout(short)
                .probe()
                .await
        );
        drop(l);
        assert!(
            !Prober::new(vec![tcp(port)], false)
                .with_poll_timeout(short)
                .probe()
                .await
        );
    }

    #[tokio::test]
    async fn only_a_refused_connection_counts_as_nothing_listening() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let runner = |spec| Runner {
            spec,
            successes: AtomicU32::new(0),
            h2_detect: false,
        };
        let refused = runner(tcp(port)).attempt(AGGRESSIVE_ATTEMPT_TIMEOUT).await;
        assert!(refused.unwrap_err().is_refused());
        assert!(!ProbeError::Timeout(AGGRESSIVE_ATTEMPT_TIMEOUT).is_refused());
        assert!(!ProbeError::Status("HTTP probe did not respond Ready".into()).is_refused());
    }

    #[tokio::test]
    async fn aggressive_probe_waits_for_the_app() {
        // Reserve a port, start listening on it a little later: the probe must block until then.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let prober = Prober::new(vec![tcp(addr.port())], false);
        let p = prober.clone();
        let run = tokio::spawn(async move { p.probe().await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _l = TcpListener::bind(addr).await.unwrap();
        let ok = timeout(Duration::from_secs(5), run).await.unwrap().unwrap();
        assert!(ok);
    }
}
