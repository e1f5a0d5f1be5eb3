//! Black-box tests of the activator: `run` in-process (and the real binary for signals and exit
//! codes) against fake queue-proxies on 127.0.0.1 that answer probes and count concurrency.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use activator::catalog::{Catalog, Endpoints, RevisionKey, RevisionSpec};
use activator::config::Config;
use activator::reporter::{StatsSink, WebsocketSink};
use activator::{Listeners, Shutdown};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message as _;
use shared::stats::WireStatMessages;
use tokio::net::TcpListener;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(10);

// === fake queue-proxy ===

#[derive(Default)]
struct Pod {
    ready: AtomicBool,
    current: AtomicUsize,
    max: AtomicUsize,
    hits: AtomicUsize,
    probes: AtomicUsize,
    delay_ms: AtomicUsize,
    last_headers: Mutex<Option<HeaderMap>>,
    last_version: Mutex<Option<http::Version>>,
}

struct FakePod {
    addr: SocketAddr,
    state: Arc<Pod>,
    stop: CancellationToken,
}

impl Drop for FakePod {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn fake_pod_on(listener: TcpListener, ready: bool, delay_ms: usize) -> FakePod {
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(Pod::default());
    state.ready.store(ready, Ordering::SeqCst);
    state.delay_ms.store(delay_ms, Ordering::SeqCst);
    let stop = CancellationToken::new();
    let st = Arc::clone(&state);
    let svc = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
        let st = Arc::clone(&st);
        async move {
            if req
                .headers()
                .get("k-network-probe")
                .is_some_and(|v| v == "queue")
            {
                st.probes.fetch_add(1, Ordering::SeqCst);
                let ok = st.ready.load(Ordering::SeqCst);
                let mut r = Response::new(Full::new(Bytes::from_static(if ok {
                    b"queue"
                } else {
                    b""
                })));
                *r.status_mut() = if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                return Ok::<_, Infallible>(r);
            }
            *st.last_headers.lock().unwrap() = Some(req.headers().clone());
            *st.last_version.lock().unwrap() = Some(req.version());
            if req.uri().path() == "/echo" {
                st.hits.fetch_add(1, Ordering::SeqCst);
                let body = req.into_body().collect().await.unwrap().to_bytes();
                return Ok(Response::new(Full::new(body)));
            }
            if req.headers().contains_key("upgrade") {
                return Ok(websocket_echo(req));
            }
            st.hits.fetch_add(1, Ordering::SeqCst);
            let now = st.current.fetch_add(1, Ordering::SeqCst) + 1;
            st.max.fetch_max(now, Ordering::SeqCst);
            let d = st.delay_ms.load(Ordering::SeqCst);
            if d > 0 {
                tokio::time::sleep(Duration::from_millis(d as u64)).await;
            }
            st.current.fetch_sub(1, Ordering::SeqCst);
            Ok(Response::new(Full::new(Bytes::from(addr.to_string()))))
        }
    });
    tokio::spawn(shared::http::server::serve(
        listener,
        svc,
        shared::http::server::ServerOptions::default(),
        stop.clone(),
    ));
    FakePod { addr, state, stop }
}

/// Answers a websocket upgrade and echoes messages (the pod side of a tunnel).
fn websocket_echo(mut req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let key = req.headers().get("sec-websocket-key").cloned().unwrap();
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let io = hyper_util::rt::TokioIo::new(on.await.unwrap());
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        while let Some(Ok(m)) = ws.next().await {
            if m.is_text() && ws.send(m).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn fake_pod(ready: bool, delay_ms: usize) -> FakePod {
    fake_pod_on(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ready,
        delay_ms,
    )
    .await
}

// === the activator in-process ===

struct Activator {
    addr: SocketAddr,
    metrics: SocketAddr,
    catalog: Catalog,
    shutdown: Shutdown,
}

impl Drop for Activator {
    fn drop(&mut self) {
        self.shutdown.exit.cancel();
    }
}

async fn start(config: Config, sink: StatsSink) -> Activator {
    let http1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = http1.local_addr().unwrap();
    let maddr = metrics.local_addr().unwrap();
    let catalog = Catalog::new();
    let shutdown = Shutdown::default();
    let listeners = Listeners {
        http1,
        h2c: None,
        metrics: Some(metrics),
    };
    tokio::spawn(activator::run(
        config,
        listeners,
        catalog.clone(),
        sink,
        shutdown.clone(),
    ));
    Activator {
        addr,
        metrics: maddr,
        catalog,
        shutdown,
    }
}

fn key() -> RevisionKey {
    RevisionKey::new("ns", "rev")
}

fn spec(cc: u32) -> RevisionSpec {
    RevisionSpec {
        container_concurrency: cc,
        ..RevisionSpec::default()
    }
}

fn eps(pods: &[&FakePod]) -> Endpoints {
    Endpoints {
        ready: pods.iter().map(|p| p.addr.to_string()).collect(),
        ..Endpoints::default()
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(c: &HttpClient, a: &Activator, host: &str) -> (StatusCode, HeaderMap, String) {
    let req = Request::builder()
        .uri(format!("http://{}/", a.addr))
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = timeout(DEADLINE, c.request(req))
        .await
        .expect("response in time")
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

const HOST: &str = "rev.ns.svc.cluster.local";

async fn scrape(a: &Activator) -> String {
    let c = client();
    let req = Request::builder()
        .uri(format!("http://{}/metrics", a.metrics))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let body = c
        .request(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

async fn gauge(a: &Activator, name: &str) -> f64 {
    scrape(a)
        .await
        .lines()
        .filter(|l| l.starts_with(name) && l.contains("kn_revision_name=\"rev\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_for(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond().await {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn config() -> Config {
    Config::in_process("activator-0", "10.0.0.1")
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_then_release_from_zero() {
    let a = start(config(), StatsSink::Discard).await;
    a.catalog.upsert_revision(key(), spec(1));
    let c = client();
    let n = 20;
    let mut reqs = Vec::new();
    for _ in 0..n {
        let (c, a2) = (c.clone(), a.addr);
        reqs.push(tokio::spawn(async move {
            let req = Request::builder()
                .uri(format!("http://{a2}/x"))
                .header("knative-serving-namespace", "ns")
                .header("knative-serving-revision", "rev")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = timeout(DEADLINE, c.request(req)).await.unwrap().unwrap();
            let held = resp.headers().contains_key("x-knative-activator-hold-ms");
            (resp.status(), held)
        }));
    }
    wait_for("all requests held", async || {
        gauge(&a, "kn_revision_request_queued").await == n as f64
    })
    .await;
    let pod = fake_pod(true, 5).await;
    a.catalog.set_endpoints(&key(), eps(&[&pod]));
    for r in reqs {
        let (status, held) = r.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(held, "held requests carry the hold header");
    }
    assert_eq!(pod.state.hits.load(Ordering::SeqCst), n);
    assert_eq!(pod.state.max.load(Ordering::SeqCst), 1, "cc = 1 enforced");
    assert_eq!(gauge(&a, "kn_revision_request_queued").await, 0.0);
    // The pod saw the activator's headers.
    let h = pod.state.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(h["k-proxy-request"], "activator");
    assert!(h.get("knative-serving-revision").is_none());
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_becoming_ready_releases_held_requests() {
    let a = start(config(), StatsSink::Discard).await;
    // The pod is listed but not ready (probe 503), as during a cold start.
    let pod = fake_pod(false, 0).await;
    a.catalog.upsert_revision(key(), spec(0));
    a.catalog.set_endpoints(&key(), eps(&[&pod]));
    let c = client();
    let a2 = a.addr;
    let req = tokio::spawn(async move {
        let c = c.clone();
        let req = Request::builder()
            .uri(format!("http://{a2}/"))
            .header("host", HOST)
            .body(Full::new(Bytes::new()))
            .unwrap();
        timeout(DEADLINE, c.request(req))
            .await
            .unwrap()
            .unwrap()
            .status()
    });
    wait_for("request held", async || {
        gauge(&a, "kn_revision_request_queued").await == 1.0
    })
    .await;
    wait_for("the pod probed while not ready", async || {
        pod.state.probes.load(Ordering::SeqCst) > 2
    })
    .await;
    assert_eq!(
        pod.state.hits.load(Ordering::SeqCst),
        0,
        "not routed while not ready"
    );
    pod.state.ready.store(true, Ordering::SeqCst);
    assert_eq!(req.await.unwrap(), StatusCode::OK);
    assert_eq!(pod.state.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc_times_pods_enforced_at_the_pods() {
    let a = start(config(), StatsSink::Discard).await;
    let pods = [fake_pod(true, 100).await, fake_pod(true, 100).await];
    a.catalog.upsert_revision(key(), spec(2));
    a.catalog.set_endpoints(&key(), eps(&[&pods[0], &pods[1]]));
    let c = client();
    let mut reqs = Vec::new();
    for _ in 0..12 {
        let (c, a) = (c.clone(), Arc::new(a.addr));
        reqs.push(tokio::spawn(async move {
            let req = Request::builder()
                .uri(format!("http://{a}/"))
                .header("host", HOST)
                .body(Full::new(Bytes::new()))
                .unwrap();
            timeout(DEADLINE, c.request(req))
                .await
                .unwrap()
                .unwrap()
                .status()
        }));
    }
    for r in reqs {
        assert_eq!(r.await.unwrap(), StatusCode::OK);
    }
    for p in &pods {
        assert!(p.state.max.load(Ordering::SeqCst) <= 2, "cc 2 per pod");
        assert!(p.state.hits.load(Ordering::SeqCst) > 0, "both pods used");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subsetting_across_two_activators() {
    let pods = [fake_pod(true, 0).await, fake_pod(true, 0).await];
    let mut sorted = [pods[0].addr.to_string(), pods[1].addr.to_string()];
    sorted.sort();
    let ips = vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()];
    let a1 = start(Config::in_process("a1", "10.0.0.1"), StatsSink::Discard).await;
    let a2 = start(Config::in_process("a2", "10.0.0.2"), StatsSink::Discard).await;
    let c = client();
    for (a, want) in [(&a1, &sorted[0]), (&a2, &sorted[1])] {
        a.catalog.upsert_revision(key(), spec(1));
        a.catalog.set_endpoints(&key(), eps(&[&pods[0], &pods[1]]));
        a.catalog.set_activators(&key(), ips.clone());
        for _ in 0..5 {
            let (status, _, body) = get(&c, a, HOST).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(&body, want, "each activator serves its own pod");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_distribution_per_policy() {
    let pods = [
        fake_pod(true, 0).await,
        fake_pod(true, 0).await,
        fake_pod(true, 0).await,
    ];
    let mut sorted: Vec<String> = pods.iter().map(|p| p.addr.to_string()).collect();
    sorted.sort();
    let c = client();
    // First available (cc 1–3): sequential requests all go to the lowest pod.
    let a = start(config(), StatsSink::Discard).await;
    a.catalog.upsert_revision(key(), spec(3));
    a.catalog
        .set_endpoints(&key(), eps(&[&pods[0], &pods[1], &pods[2]]));
    for _ in 0..6 {
        assert_eq!(get(&c, &a, HOST).await.2, sorted[0]);
    }
    // Round robin (cc > 3): in dest order, evenly.
    let a = start(config(), StatsSink::Discard).await;
    a.catalog.upsert_revision(key(), spec(10));
    a.catalog
        .set_endpoints(&key(), eps(&[&pods[0], &pods[1], &pods[2]]));
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(get(&c, &a, HOST).await.2);
    }
    let want: Vec<String> = sorted.iter().chain(sorted.iter()).cloned().collect();
    assert_eq!(seen, want);
    // Random choice of 2 (cc 0): every pod gets traffic.
    let a = start(config(), StatsSink::Discard).await;
    a.catalog.upsert_revision(key(), spec(0));
    a.catalog
        .set_endpoints(&key(), eps(&[&pods[0], &pods[1], &pods[2]]));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..60 {
        seen.insert(get(&c, &a, HOST).await.2);
    }
    assert_eq!(seen.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_error_texts() {
    let mut cfg = config();
    cfg.max_queued_requests = 1;
    let a = start(cfg, StatsSink::Discard).await;
    let c = client();
    // Activator probe and network probe.
    let req = Request::builder()
        .uri(format!("http://{}/healthz", a.addr))
        .header("k-network-probe", "activator")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "activator"
    );
    let req = Request::builder()
        .uri(format!("http://{}/", a.addr))
        .header("k-network-probe", "probe")
        .header("k-network-hash", "abc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["k-network-hash"], "abc");
    let req = Request::builder()
        .uri(format!("http://{}/", a.addr))
        .header("k-network-probe", "<x>")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "unexpected probe header value: \"&lt;x&gt;\"\n"
    );
    let req = Request::builder()
        .uri(format!("http://{}/", a.addr))
        .header("user-agent", "kube-probe/1.30")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(c.request(req).await.unwrap().status(), StatusCode::OK);

    // 404 for an unknown revision.
    let (status, _, body) = get(&c, &a, "nope.ns.svc.cluster.local").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        "Error getting active endpoint: revision.serving.knative.dev \"nope\" not found\n"
    );

    // 504 after timeoutSeconds while held.
    a.catalog.upsert_revision(
        key(),
        RevisionSpec {
            timeout: Duration::from_secs(1),
            ..spec(1)
        },
    );
    let (status, _, body) = get(&c, &a, HOST).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body, "activator request timeout");

    // 503 when the bounded queue is full (bound 1 here).
    let (c2, addr) = (c.clone(), a.addr);
    let held = tokio::spawn(async move {
        let req = Request::builder()
            .uri(format!("http://{addr}/"))
            .header("host", HOST)
            .body(Full::new(Bytes::new()))
            .unwrap();
        c2.request(req).await.map(|r| r.status())
    });
    wait_for("one request held", async || {
        gauge(&a, "kn_revision_request_queued").await == 1.0
    })
    .await;
    let (status, _, body) = get(&c, &a, HOST).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "pending request queue full\n");
    held.abort();

    // A removed revision is unknown again.
    a.catalog.remove_revision(&key());
    wait_for("revision removed", async || {
        get(&c, &a, HOST).await.0 == StatusCode::NOT_FOUND
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_pod_is_ejected_and_the_request_retried_elsewhere() {
    let a = start(config(), StatsSink::Discard).await;
    let good = fake_pod(true, 0).await;
    let doomed = fake_pod(true, 0).await;
    a.catalog.upsert_revision(key(), spec(0));
    a.catalog.set_endpoints(&key(), eps(&[&good, &doomed]));
    let c = client();
    wait_for("both pods healthy", async || {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            seen.insert(get(&c, &a, HOST).await.2);
        }
        seen.len() == 2
    })
    .await;
    // The pod goes away without the endpoints changing (a crashed pod).
    let doomed_addr = doomed.addr;
    drop(doomed);
    // Wait until nothing accepts on the port any more.
    wait_for("doomed pod closed", async || {
        tokio::net::TcpStream::connect(doomed_addr).await.is_err()
    })
    .await;
    for _ in 0..20 {
        let (status, _, body) = get(&c, &a, HOST).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "refused dials are retried on another pod: {body}"
        );
        assert_eq!(body, good.addr.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failure_after_send_is_502() {
    // A pod that answers probes but drops real requests without a response.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        buf.drain(..end + 4);
                        if head.contains("k-network-probe: queue") {
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nqueue")
                                .await;
                        } else {
                            return; // close mid-request
                        }
                    }
                }
            });
        }
    });
    let a = start(config(), StatsSink::Discard).await;
    a.catalog.upsert_revision(key(), spec(1));
    a.catalog.set_endpoints(
        &key(),
        Endpoints {
            ready: vec![addr.to_string()],
            ..Endpoints::default()
        },
    );
    let (status, headers, body) = get(&client(), &a, HOST).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert!(body.ends_with('\n'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_frees_the_queue_slot() {
    use tokio::io::AsyncWriteExt;
    let mut cfg = config();
    cfg.max_queued_requests = 1;
    let a = start(cfg, StatsSink::Discard).await;
    a.catalog.upsert_revision(key(), spec(1));
    let mut s = tokio::net::TcpStream::connect(a.addr).await.unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    wait_for("held", async || {
        gauge(&a, "kn_revision_request_queued").await == 1.0
    })
    .await;
    drop(s);
    wait_for("slot freed", async || {
        gauge(&a, "kn_revision_request_queued").await == 0.0
    })
    .await;
    // The freed slot is usable: a new request is held (not rejected) and served once a pod appears.
    let pod = fake_pod(true, 0).await;
    let c = client();
    let addr = a.addr;
    let req = tokio::spawn(async move {
        let req = Request::builder()
            .uri(format!("http://{addr}/"))
            .header("host", HOST)
            .body(Full::new(Bytes::new()))
            .unwrap();
        c.request(req).await.unwrap().status()
    });
    wait_for("held again", async || {
        gauge(&a, "kn_revision_request_queued").await == 1.0
    })
    .await;
    a.catalog.set_endpoints(&key(), eps(&[&pod]));
    assert_eq!(
        timeout(DEADLINE, req).await.unwrap().unwrap(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_sink_gets_poke_then_reports() {
    let (sink, mut rx) = StatsSink::channel(16);
    let a = start(config(), sink).await;
    let pod = fake_pod(true, 0).await;
    a.catalog.upsert_revision(
        key(),
        RevisionSpec {
            service: "hello".into(),
            ..spec(1)
        },
    );
    a.catalog.set_endpoints(&key(), eps(&[&pod]));
    assert_eq!(get(&client(), &a, HOST).await.0, StatusCode::OK);
    let poke = timeout(DEADLINE, rx.recv()).await.unwrap().unwrap();
    let s = poke.messages[0].stat.clone().unwrap();
    assert_eq!(
        (poke.messages[0].name.as_str(), s.pod_name.as_str()),
        ("rev", "activator-0")
    );
    assert_eq!((s.average_concurrent_requests, s.request_count), (1.0, 1.0));
    let report = timeout(DEADLINE, rx.recv()).await.unwrap().unwrap();
    let s = report.messages[0].stat.clone().unwrap();
    assert_eq!(s.request_count, 0.0, "the poke is subtracted");
    let text = scrape(&a).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("kn_revision_request_concurrency{")
                && l.contains("kn_service_name=\"hello\"")
                && l.contains("kn_revision_name=\"rev\"")),
        "{text}"
    );
}

async fn ws_server(
    listener: TcpListener,
    tx: tokio::sync::mpsc::Sender<WireStatMessages>,
) -> CancellationToken {
    use futures_util::StreamExt;
    let stop = CancellationToken::new();
    let st = stop.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = tokio::select! {
                _ = st.cancelled() => return,
                r = listener.accept() => r.unwrap(),
            };
            let tx = tx.clone();
            let st = st.clone();
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
                loop {
                    tokio::select! {
                        _ = st.cancelled() => {
                            let _ = ws.close(None).await;
                            return;
                        }
                        m = ws.next() => match m {
                            Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b))) => {
                                let _ = tx.send(WireStatMessages::decode(b.as_ref()).unwrap()).await;
                            }
                            Some(Ok(_)) => {}
                            _ => return,
                        }
                    }
                }
            });
        }
    });
    stop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaler_websocket_poke_reports_and_reconnect() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = l.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let server = ws_server(l, tx.clone()).await;
    let sink_stop = CancellationToken::new();
    let sink = StatsSink::Websocket(WebsocketSink::spawn(
        format!("ws://{ws_addr}"),
        sink_stop.clone(),
    ));
    let a = start(config(), sink.clone()).await;
    let c = client();
    let kubelet = |c: HttpClient, addr: SocketAddr| async move {
        let req = Request::builder()
            .uri(format!("http://{addr}/"))
            .header("user-agent", "kube-probe/1.30")
            .body(Full::new(Bytes::new()))
            .unwrap();
        c.request(req).await.unwrap().status()
    };
    wait_for("connected", async || {
        kubelet(c.clone(), a.addr).await == StatusCode::OK
    })
    .await;
    let pod = fake_pod(true, 0).await;
    a.catalog.upsert_revision(key(), spec(1));
    a.catalog.set_endpoints(&key(), eps(&[&pod]));
    assert_eq!(get(&c, &a, HOST).await.0, StatusCode::OK);
    let poke = timeout(DEADLINE, rx.recv()).await.unwrap().unwrap();
    let s = poke.messages[0].stat.clone().unwrap();
    assert_eq!((s.average_concurrent_requests, s.request_count), (1.0, 1.0));
    let report = timeout(DEADLINE, rx.recv()).await.unwrap().unwrap();
    assert_eq!(report.messages[0].namespace, "ns");

    // The autoscaler restarts: health fails, then the activator reconnects on its own.
    server.cancel();
    wait_for("unhealthy while disconnected", async || {
        kubelet(c.clone(), a.addr).await == StatusCode::INTERNAL_SERVER_ERROR
    })
    .await;
    let l = TcpListener::bind(ws_addr).await.unwrap();
    let (tx2, mut rx2) = tokio::sync::mpsc::channel(64);
    let _server2 = ws_server(l, tx2).await;
    wait_for("reconnected", async || {
        kubelet(c.clone(), a.addr).await == StatusCode::OK
    })
    .await;
    // Requests of a new idle period poke again over the new connection.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let a2 = RevisionKey::new("ns", "rev2");
    a.catalog.upsert_revision(a2.clone(), spec(1));
    a.catalog.set_endpoints(&a2, eps(&[&pod]));
    assert_eq!(
        get(&c, &a, "rev2.ns.svc.cluster.local").await.0,
        StatusCode::OK
    );
    let got = timeout(DEADLINE, async {
        loop {
            let m = rx2.recv().await.unwrap();
            if m.messages.iter().any(|m| m.name == "rev2") {
                return m;
            }
        }
    })
    .await
    .unwrap();
    assert!(!got.messages.is_empty());
    sink_stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_websockets_are_preserved() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let a = start(config(), StatsSink::Discard).await;
    let pod = fake_pod(true, 0).await;
    a.catalog.upsert_revision(key(), spec(1));
    a.catalog.set_endpoints(&key(), eps(&[&pod]));
    // h2c in, h2c out.
    let h2: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = Request::builder()
        .uri(format!("http://{}/", a.addr))
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = timeout(DEADLINE, h2.request(req)).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        *pod.state.last_version.lock().unwrap(),
        Some(http::Version::HTTP_2)
    );
    // HTTP/1 in, HTTP/1 out.
    assert_eq!(get(&client(), &a, HOST).await.0, StatusCode::OK);
    assert_eq!(
        *pod.state.last_version.lock().unwrap(),
        Some(http::Version::HTTP_11)
    );
    // A websocket through the activator; it holds the pod's only slot while open.
    let mut req = format!("ws://{}/ws", a.addr).into_client_request().unwrap();
    req.headers_mut().insert("host", HOST.parse().unwrap());
    let (mut ws, resp) = timeout(DEADLINE, tokio_tungstenite::connect_async(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..3 {
        ws.send(Message::text(format!("hi {i}"))).await.unwrap();
        let echo = timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), format!("hi {i}"));
    }
    assert_eq!(
        gauge(&a, "kn_revision_request_active").await,
        1.0,
        "the tunnel holds its slot"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    wait_for("slot released", async || {
        gauge(&a, "kn_revision_request_active").await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_source_is_reread_on_change() {
    let pod = fake_pod(true, 0).await;
    let dir = std::env::temp_dir().join(format!(
        "activator-file-{}-{}",
        std::process::id(),
        pod.addr.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("catalog.json");
    let doc = |revs: &[&str]| {
        let items: Vec<String> = revs
            .iter()
            .map(|r| {
                format!(
                    r#"{{"namespace":"ns","name":"{r}","ready":["{}"]}}"#,
                    pod.addr
                )
            })
            .collect();
        format!(r#"{{"revisions":[{}]}}"#, items.join(","))
    };
    std::fs::write(&file, doc(&["rev"])).unwrap();
    let mut cfg = config();
    cfg.source = Some(activator::config::SourceSpec::File(file.clone()));
    let a = start(cfg, StatsSink::Discard).await;
    let c = client();
    wait_for("rev served", async || {
        get(&c, &a, HOST).await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(
        get(&c, &a, "rev2.ns.svc.cluster.local").await.0,
        StatusCode::NOT_FOUND
    );
    std::fs::write(&file, doc(&["rev", "rev2", "rev3"])).unwrap();
    wait_for("rev2 served", async || {
        get(&c, &a, "rev2.ns.svc.cluster.local").await.0 == StatusCode::OK
    })
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overall_timeout_cuts_a_slow_body() {
    let a = start(config(), StatsSink::Discard).await;
    // A pod that sends headers at once and never finishes the body.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let svc = tower::service_fn(|req: Request<hyper::body::Incoming>| async move {
        if req.headers().contains_key("k-network-probe") {
            return Ok::<_, Infallible>(Response::new(http_body_util::Either::Left(Full::new(
                Bytes::from_static(b"queue"),
            ))));
        }
        use futures_util::StreamExt;
        let stream = futures_util::stream::once(async {
            Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(b"start ")))
        })
        .chain(futures_util::stream::pending());
        Ok(Response::new(http_body_util::Either::Right(
            http_body_util::StreamBody::new(Box::pin(stream)),
        )))
    });
    let stop = CancellationToken::new();
    tokio::spawn(shared::http::server::serve(
        l,
        svc,
        Default::default(),
        stop.clone(),
    ));
    a.catalog.upsert_revision(
        key(),
        RevisionSpec {
            timeout: Duration::from_secs(1),
            ..spec(1)
        },
    );
    a.catalog.set_endpoints(
        &key(),
        Endpoints {
            ready: vec![addr.to_string()],
            ..Endpoints::default()
        },
    );
    let (status, _, body) = get(&client(), &a, HOST).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "start activator request timeout");
    stop.cancel();
}

// === held outside hyper (first request of a new HTTP/1 connection; activator::park) ===

/// Sends `parts` on a fresh connection, the later ones once the request is held.
async fn raw_held(a: &Activator, parts: &[&str]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(a.addr).await.unwrap();
    s.write_all(parts[0].as_bytes()).await.unwrap();
    for p in &parts[1..] {
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.write_all(p.as_bytes()).await.unwrap();
    }
    s
}

/// Reads one HTTP/1 response (with `Content-Length`, or until the connection ends): status line
/// and body.
async fn raw_response(s: &mut tokio::net::TcpStream) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = timeout(DEADLINE, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no response in time: {:?}", String::from_utf8_lossy(&out)))
            .unwrap();
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            let status = head.lines().next().unwrap_or("").to_owned();
            if n == 0 || len.is_some_and(|l| body.len() >= l) {
                return (status, body.to_owned());
            }
            if len.is_none() && body.ends_with("0\r\n\r\n") {
                return (status, dechunk(body));
            }
        }
        assert!(n > 0, "connection closed before a response: {text:?}");
    }
}

/// A complete chunked body, decoded (no trailers, no extensions).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size, 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_from_zero_on_fresh_connections_none_lost_bodies_intact() {
    let a = start(config(), StatsSink::Discard).await;
    a.catalog.upsert_revision(key(), spec(2));
    let n = 40;
    let mut conns = Vec::new();
    for i in 0..n {
        let body = format!("body-{i}-").repeat(10);
        let (first, rest) = body.split_at(7);
        let head = format!(
            "POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\r\n{first}",
            body.len()
        );
        // Half of them send the rest of the body while held.
        let parts: Vec<&str> = if i % 2 == 0 {
            vec![&head, rest]
        } else {
            vec![&head]
        };
        let mut s = raw_held(&a, &parts).await;
        if i % 2 == 1 {
            use tokio::io::AsyncWriteExt;
            s.write_all(rest.as_bytes()).await.unwrap();
        }
        conns.push((s, body));
    }
    wait_for("all held", async || {
        gauge(&a, "kn_revision_request_queued").await == n as f64
    })
    .await;
    let pod = fake_pod(true, 2).await;
    a.catalog.set_endpoints(&key(), eps(&[&pod]));
    for (mut s, body) in conns {
        let (status, got) = raw_response(&mut s).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!(got, body);
    }
    assert_eq!(pod.state.hits.load(Ordering::SeqCst), n);
    assert!(pod.state.max.load(Ordering::SeqCst) <= 2, "cc = 2 enforced");
    assert_eq!(gauge(&a, "kn_revision_request_queued").await, 0.0);
    assert_eq!(gauge(&a, "kn_revision_request_active").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_then_kept_alive_connection_serves_later_requests() {
    use tokio::io::AsyncWriteExt;
    let a = start(config(), StatsSink::Discard).await;
    a.catalog.upsert_revision(key(), spec(1));
    let get = format!("GET /x HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let mut s = raw_held(&a, &[&get]).await;
    wait_for("held", async || {
        gauge(&a, "kn_revision_request_queued").await == 1.0
    })
    .await;
    let pod = fake_pod(true, 0).await;
    a.catalog.set_endpoints(&key(), eps(&[&pod]));
    let (status, _) = raw_response(&mut s).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // The connection stays usable; the next request goes through hyper as usual.
    s.write_all(get.as_bytes()).await.unwrap();
    let (status, body) = raw_response(&mut s).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(body, pod.addr.to_string());
    assert_eq!(pod.state.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_client_reset_frees_the_slot_and_reports_nothing_left() {
    let a = start(config(), StatsSink::Discard).await;
    a.catalog.upsert_revision(key(), spec(1));
    let get = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(raw_held(&a, &[&get]).await);
    }
    wait_for("held", async || {
        gauge(&a, "kn_revision_request_queued").await == 5.0
    })
    .await;
    for s in held {
        // SO_LINGER 0: the close is a reset.
        #[allow(deprecated)]
        s.set_linger(Some(Duration::ZERO)).unwrap();
        drop(s);
    }
    wait_for("slots freed", async || {
        gauge(&a, "kn_revision_request_queued").await == 0.0
    })
    .await;
}

/// An activator whose revision (CC 1, no pods) times out after 300 ms.
async fn start_with_300ms_timeout() -> Activator {
    let a = start(config(), StatsSink::Discard).await;
    a.catalog.upsert_revision(
        key(),
        RevisionSpec {
            timeout: Duration::from_millis(300),
            ..spec(1)
        },
    );
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_past_the_revision_timeout_is_504() {
    let a = start_with_300ms_timeout().await;
    let started = Instant::now();
    let mut s = raw_held(
        &a,
        &[&format!(
            "POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\n\r\nabc"
        )],
    )
    .await;
    let (status, body) = raw_response(&mut s).await;
    assert!(status.starts_with("HTTP/1.1 504"), "{status}");
    assert_eq!(body, "activator request timeout");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(gauge(&a, "kn_revision_request_queued").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_beyond_the_queue_bound_is_503() {
    let mut cfg = config();
    cfg.max_queued_requests = 2;
    let a = start(cfg, StatsSink::Discard).await;
    a.catalog.upsert_revision(key(), spec(1));
    let get = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let _held = [raw_held(&a, &[&get]).await, raw_held(&a, &[&get]).await];
    wait_for("held", async || {
        gauge(&a, "kn_revision_request_queued").await == 2.0
    })
    .await;
    let mut s = raw_held(&a, &[&get]).await;
    let (status, body) = raw_response(&mut s).await;
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    assert_eq!(body, "pending request queue full\n");
    assert_eq!(gauge(&a, "kn_revision_request_queued").await, 2.0);
}

fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

async fn h2c_get(c: HttpClient, addr: SocketAddr) -> (StatusCode, HeaderMap, String) {
    let req = Request::builder()
        .uri(format!("http://{addr}/"))
        .header("host", HOST)
        .header("x-test-field", "one")
        .header("x-test-field", "two")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = timeout(DEADLINE, c.request(req)).await.unwrap().unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// h2c streams are held inside hyper, ahead of the stages (`stack::hold_ahead`): same bound,
/// same 503, a reset stream leaves the queue at once, and released streams carry the hold time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_streams_held_bounded_reset_and_released() {
    let mut cfg = config();
    cfg.max_queued_requests = 3;
    let a = start(cfg, StatsSink::Discard).await;
    let c = h2c_client();
    // One connection first (unknown revision: 404), so every stream below shares it.
    let (status, _, _) = h2c_get(c.clone(), a.addr).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    a.catalog.upsert_revision(key(), spec(1));
    let mut held: Vec<_> = (0..3)
        .map(|_| tokio::spawn(h2c_get(c.clone(), a.addr)))
        .collect();
    wait_for("held", async || {
        gauge(&a, "kn_revision_request_queued").await == 3.0
    })
    .await;
    let (status, _, body) = h2c_get(c.clone(), a.addr).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "pending request queue full\n");
    // Dropping the client's response future resets the stream.
    held.pop().unwrap().abort();
    wait_for("reset stream left the queue", async || {
        gauge(&a, "kn_revision_request_queued").await == 2.0
    })
    .await;
    let pod = fake_pod(true, 0).await;
    a.catalog.set_endpoints(&key(), eps(&[&pod]));
    for h in held {
        let (status, headers, body) = timeout(DEADLINE, h).await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, pod.addr.to_string());
        assert!(headers.contains_key("x-knative-activator-hold-ms"));
    }
    assert_eq!(pod.state.hits.load(Ordering::SeqCst), 2);
    assert_eq!(
        *pod.state.last_version.lock().unwrap(),
        Some(http::Version::HTTP_2)
    );
    // The head was packed while held (`activator::packed`) and restored intact.
    let seen = pod.state.last_headers.lock().unwrap().clone().unwrap();
    let fields: Vec<_> = seen.get_all("x-test-field").iter().collect();
    assert_eq!(fields, ["one", "two"]);
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    wait_for("nothing queued or active", async || {
        gauge(&a, "kn_revision_request_queued").await == 0.0
            && gauge(&a, "kn_revision_request_active").await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_stream_held_past_the_revision_timeout_is_504() {
    let a = start_with_300ms_timeout().await;
    let started = Instant::now();
    let (status, _, body) = h2c_get(h2c_client(), a.addr).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body, "activator request timeout");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(gauge(&a, "kn_revision_request_queued").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_held_from_zero_still_upgrades() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let a = start(config(), StatsSink::Discard).await;
    a.catalog.upsert_revision(key(), spec(1));
    let mut req = format!("ws://{}/ws", a.addr).into_client_request().unwrap();
    req.headers_mut().insert("host", HOST.parse().unwrap());
    let ws = tokio::spawn(tokio_tungstenite::connect_async(req));
    wait_for("held", async || {
        gauge(&a, "kn_revision_request_queued").await == 1.0
    })
    .await;
    let pod = fake_pod(true, 0).await;
    a.catalog.set_endpoints(&key(), eps(&[&pod]));
    let (mut ws, resp) = timeout(DEADLINE, ws).await.unwrap().unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("hi")).await.unwrap();
    let echo = timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_keep_waiting_through_the_drain() {
    let mut cfg = config();
    cfg.drain_delay = Duration::from_millis(100);
    let a = start(cfg, StatsSink::Discard).await;
    a.catalog.upsert_revision(key(), spec(1));
    let get = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let mut s = raw_held(&a, &[&get]).await;
    wait_for("held", async || {
        gauge(&a, "kn_revision_request_queued").await == 1.0
    })
    .await;
    a.shutdown.drain.cancel();
    // Past the drain delay: the listener is closed, the held request still waits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(tokio::net::TcpStream::connect(a.addr).await.is_err());
    let pod = fake_pod(true, 0).await;
    a.catalog.set_endpoints(&key(), eps(&[&pod]));
    let (status, _) = raw_response(&mut s).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}

// === the real binary ===

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn bad_setting_exits_64_naming_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_activator"))
        .env_clear()
        .env("POD_NAME", "a")
        .env("POD_IP", "10.0.0.1")
        .env("SYSTEM_NAMESPACE", "knative-serving")
        .env("PROBE_TIMEOUT", "soon")
        .args(["--source", "file:/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PROBE_TIMEOUT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_health_serves_through_drain_then_exits() {
    let pod = fake_pod(true, 0).await;
    let dir = std::env::temp_dir().join(format!("activator-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("catalog.yaml");
    std::fs::write(
        &file,
        format!("revisions:\n- namespace: ns\n  name: rev\n  containerConcurrency: 1\n  ready: [\"{}\"]\n", pod.addr),
    )
    .unwrap();
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_activator"))
        .env_clear()
        .env("POD_NAME", "a")
        .env("POD_IP", "10.0.0.1")
        .env("SYSTEM_NAMESPACE", "knative-serving")
        .args(["--source", &format!("file:{}", file.display())])
        .args([
            "--stats-sink",
            "none",
            "--metrics-addr",
            "none",
            "--drain-delay",
            "1500ms",
        ])
        .args(["--http1-addr", &format!("127.0.0.1:{port}")])
        .args(["--h2c-addr", &format!("127.0.0.1:{}", free_port())])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let c = client();
    let kubelet = |c: HttpClient| async move {
        let req = Request::builder()
            .uri(format!("http://{addr}/"))
            .header("user-agent", "kube-probe/1.30")
            .body(Full::new(Bytes::new()))
            .unwrap();
        match c.request(req).await {
            Ok(r) => Some(r.status()),
            Err(_) => None,
        }
    };
    wait_for("started", async || {
        kubelet(c.clone()).await == Some(StatusCode::OK)
    })
    .await;
    let fake = Activator {
        addr,
        metrics: addr,
        catalog: Catalog::new(),
        shutdown: Shutdown::default(),
    };
    wait_for("revision served", async || {
        get(&c, &fake, HOST).await.0 == StatusCode::OK
    })
    .await;
    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    wait_for("health fails", async || {
        kubelet(c.clone()).await == Some(StatusCode::INTERNAL_SERVER_ERROR)
    })
    .await;
    // Still serving during the drain delay.
    assert_eq!(get(&c, &fake, HOST).await.0, StatusCode::OK);
    // A request still in flight when the listeners close (the pod takes 2.5 s, the drain
    // delay is 1.5 s) completes before the process exits.
    pod.state.delay_ms.store(2500, Ordering::SeqCst);
    let (c2, f2) = (c.clone(), addr);
    let slow = tokio::spawn(async move {
        let req = Request::builder()
            .uri(format!("http://{f2}/"))
            .header("host", HOST)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = c2.request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    });
    wait_for("slow request in flight", async || {
        pod.state.current.load(Ordering::SeqCst) == 1
    })
    .await;
    let (status, body) = timeout(DEADLINE, slow).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, pod.addr.to_string());
    let status = timeout(DEADLINE, child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "clean exit after drain: {status:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_exits_at_once_with_1() {
    let dir = std::env::temp_dir().join(format!("activator-test2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("catalog.yaml");
    std::fs::write(&file, "revisions: []\n").unwrap();
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_activator"))
        .env_clear()
        .env("POD_NAME", "a")
        .env("POD_IP", "10.0.0.1")
        .env("SYSTEM_NAMESPACE", "knative-serving")
        .args(["--source", &format!("file:{}", file.display())])
        .args([
            "--stats-sink",
            "none",
            "--metrics-addr",
            "none",
            "--drain-delay",
            "60s",
        ])
        .args(["--http1-addr", &format!("127.0.0.1:{port}")])
        .args(["--h2c-addr", &format!("127.0.0.1:{}", free_port())])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let c = client();
    let kubelet = |c: HttpClient| async move {
        let req = Request::builder()
            .uri(format!("http://{addr}/"))
            .header("user-agent", "kube-probe/1.30")
            .body(Full::new(Bytes::new()))
            .unwrap();
        c.request(req).await.ok().map(|r| r.status())
    };
    wait_for("started", async || {
        kubelet(c.clone()).await == Some(StatusCode::OK)
    })
    .await;
    let pid = child.id().unwrap().to_string();
    let term = || {
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
    };
    assert!(term().success());
    wait_for("draining", async || {
        kubelet(c.clone()).await == Some(StatusCode::INTERNAL_SERVER_ERROR)
    })
    .await;
    assert!(term().success());
    let status = timeout(DEADLINE, child.wait())
        .await
        .expect("exits before the 60 s drain")
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_errors_fall_back_to_the_cluster_ip() {
    let a = start(config(), StatsSink::Discard).await;
    // Pods answer probes with 503 (a mesh in the way); the "cluster IP" answers like a pod.
    let pod = fake_pod(false, 0).await;
    let cluster = fake_pod(true, 0).await;
    a.catalog.upsert_revision(key(), spec(2));
    a.catalog.set_endpoints(
        &key(),
        Endpoints {
            ready: vec![pod.addr.to_string()],
            not_ready: vec![],
            cluster_ip: Some(cluster.addr.to_string()),
        },
    );
    let (status, _, body) = get(&client(), &a, HOST).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        cluster.addr.to_string(),
        "routed through the cluster IP"
    );
    assert_eq!(pod.state.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_connection_is_reused_by_the_first_request() {
    use hyper_util::server::conn::auto;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let probes = Arc::new(AtomicUsize::new(0));
    let (acc, pr) = (Arc::clone(&accepts), Arc::clone(&probes));
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            acc.fetch_add(1, Ordering::SeqCst);
            let pr = Arc::clone(&pr);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let probe = req.headers().contains_key("k-network-probe");
                    if probe {
                        pr.fetch_add(1, Ordering::SeqCst);
                    }
                    async move {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            if probe { b"queue" } else { b"app" },
                        ))))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let a = start(config(), StatsSink::Discard).await;
    a.catalog.upsert_revision(key(), spec(1));
    a.catalog.set_endpoints(
        &key(),
        Endpoints {
            ready: vec![addr.to_string()],
            ..Endpoints::default()
        },
    );
    wait_for("probed", async || probes.load(Ordering::SeqCst) > 0).await;
    let (status, _, body) = get(&client(), &a, HOST).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app"));
    assert_eq!(
        accepts.load(Ordering::SeqCst),
        1,
        "one connection for the probe and the request"
    );
}

/// `config-observability` with `logging.enable-request-log`: one line per routed request on
/// stdout, rendered from the template when the response ends; probes and 404s for unknown
/// revisions are not logged (activator.md §8.6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_lines_for_routed_requests_only() {
    let pod = fake_pod(true, 0).await;
    let dir = std::env::temp_dir().join(format!("activator-reqlog-{}", std::process::id()));
    let obs = dir.join("config-observability");
    std::fs::create_dir_all(&obs).unwrap();
    std::fs::write(obs.join("logging.enable-request-log"), "true").unwrap();
    std::fs::write(
        obs.join("logging.request-log-template"),
        "REQLOG {{.Request.Method}} {{js .Request.RequestURI}} {{.Response.Code}} \
         {{.Response.Size}} {{.Revision.Namespace}}/{{.Revision.Name}} {{.Request.UserAgent}}",
    )
    .unwrap();
    let file = dir.join("catalog.yaml");
    std::fs::write(
        &file,
        format!(
            "revisions:\n- namespace: ns\n  name: rev\n  ready: [\"{}\"]\n",
            pod.addr
        ),
    )
    .unwrap();
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_activator"))
        .env_clear()
        .env("POD_NAME", "a")
        .env("POD_IP", "10.0.0.1")
        .env("SYSTEM_NAMESPACE", "knative-serving")
        .env("ACTIVATOR_CONFIG_OBSERVABILITY", &obs)
        .args(["--source", &format!("file:{}", file.display())])
        .args(["--stats-sink", "none", "--metrics-addr", "none"])
        .args(["--http1-addr", &format!("127.0.0.1:{port}")])
        .args(["--h2c-addr", &format!("127.0.0.1:{}", free_port())])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let fake = Activator {
        addr,
        metrics: addr,
        catalog: Catalog::new(),
        shutdown: Shutdown::default(),
    };
    wait_for("listening", async || {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    let c = client();
    wait_for("revision served", async || {
        get(&c, &fake, HOST).await.0 == StatusCode::OK
    })
    .await;
    let send = |host: &'static str, probe: bool| {
        let c = c.clone();
        async move {
            let mut req = Request::builder()
                .uri(format!("http://{addr}/logged?a=1"))
                .header("host", host)
                .header("user-agent", "reqlog-test/1");
            if probe {
                req = req
                    .header("k-network-probe", "probe")
                    .header("k-network-hash", "h");
            }
            let resp = c
                .request(req.body(Full::new(Bytes::new())).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, body.len())
        }
    };
    let (status, size) = send(HOST, false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        send("nope.ns.svc.cluster.local", false).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(send(HOST, true).await.0, StatusCode::OK);
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &child.id().unwrap().to_string()])
        .status();
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    timeout(
        DEADLINE,
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut out),
    )
    .await
    .unwrap()
    .unwrap();
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("REQLOG ")).collect();
    let routed: Vec<&&str> = lines.iter().filter(|l| l.contains("reqlog-test")).collect();
    assert_eq!(
        routed,
        // Go's `js` escapes `=`.
        [&format!("REQLOG GET /logged?a\\u003D1 200 {size} ns/rev reqlog-test/1").as_str()],
        "{out}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
