//! Black-box: client → activator → queue-proxy → app, all in-process through their `run`
//! functions on 127.0.0.1:0. Covers what only the pair can show: a request held at zero is
//! released through a real queue-proxy once it is ready, the app sees the activator's marking,
//! and the queue-proxy's `Stat` counts the request as proxied (so Knative's autoscaler can
//! subtract it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use activator::catalog::{Catalog, Endpoints, RevisionKey, RevisionSpec};
use activator::reporter::StatsSink;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use shared::http::server::{ServerOptions, serve};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);

struct App {
    port: u16,
    hits: Arc<AtomicUsize>,
    proxied_marked: Arc<AtomicUsize>,
}

async fn start_app(l: TcpListener) -> App {
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let marked = Arc::new(AtomicUsize::new(0));
    let (h, m) = (hits.clone(), marked.clone());
    let svc = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
        h.fetch_add(1, Ordering::SeqCst);
        if req
            .headers()
            .get("k-proxy-request")
            .is_some_and(|v| v == "activator")
        {
            m.fetch_add(1, Ordering::SeqCst);
        }
        let host = req.headers().get("host").cloned();
        async move {
            let body = format!(
                "hello from {}",
                host.and_then(|h| h.to_str().ok().map(str::to_owned))
                    .unwrap_or_default()
            );
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
        }
    });
    tokio::spawn(serve(
        l,
        svc,
        ServerOptions::default(),
        CancellationToken::new(),
    ));
    App {
        port,
        hits,
        proxied_marked: marked,
    }
}

fn qp_cli(user_port: u16) -> queue_proxy::config::Cli {
    queue_proxy::config::Cli {
        serving_namespace: Some("default".into()),
        serving_configuration: Some("hello".into()),
        serving_revision: Some("hello-00001".into()),
        serving_pod: Some("hello-00001-pod".into()),
        serving_pod_ip: Some("127.0.0.1".into()),
        queue_serving_port: Some("0".into()),
        queue_serving_tls_port: Some("8112".into()),
        user_port: Some(user_port.to_string()),
        container_concurrency: Some("2".into()),
        revision_timeout_seconds: Some("30".into()),
        serving_readiness_probe: Some(format!(
            r#"{{"tcpSocket":{{"port":{user_port},"host":"127.0.0.1"}},"successThreshold":1}}"#
        )),
        observability_config: Some(
            r#"{"tracing":{},"metrics":{},"runtime":{},"requestMetrics":{}}"#.into(),
        ),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_at_zero_then_served_through_a_real_queue_proxy() {
    // Queue-proxy first, its app not yet listening (the port is reserved but not served).
    // Reserve a free port, then close it: nothing listens there until the app starts.
    let user_port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let qp_config = queue_proxy::Config::try_from(qp_cli(user_port)).unwrap();
    let qp_listeners = queue_proxy::Listeners::local(false).await.unwrap();
    let qp_addr = qp_listeners.serving.local_addr().unwrap();
    let qp_metrics = qp_listeners.metrics.local_addr().unwrap();
    let qp_stop = CancellationToken::new();
    tokio::spawn(queue_proxy::run(qp_config, qp_listeners, qp_stop.clone()));

    // Activator with one revision and no pods: requests are held.
    let catalog = Catalog::new();
    let key = RevisionKey::new("default", "hello-00001");
    catalog.upsert_revision(
        key.clone(),
        RevisionSpec {
            container_concurrency: 2,
            timeout: Duration::from_secs(30),
            ..Default::default()
        },
    );
    let (sink, mut stats) = StatsSink::channel(16);
    let act_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let act_addr = act_listener.local_addr().unwrap();
    let listeners = activator::Listeners {
        http1: act_listener,
        h2c: None,
        metrics: None,
    };
    let shutdown = activator::Shutdown::default();
    tokio::spawn(activator::run(
        activator::config::Config::in_process("activator-0", "127.0.0.1"),
        listeners,
        catalog.clone(),
        sink,
        shutdown,
    ));

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut held = Vec::new();
    for _ in 0..5 {
        let req = Request::get(format!("http://{act_addr}/"))
            .header("knative-serving-namespace", "default")
            .header("knative-serving-revision", "hello-00001")
            .header("host", "hello.default.example.com")
            .body(Empty::new())
            .unwrap();
        held.push(tokio::spawn(client.request(req)));
    }
    // The activator pokes the autoscaler on the first request of a revision at zero.
    let poke = tokio::time::timeout(DEADLINE, stats.recv())
        .await
        .expect("poke")
        .expect("open");
    let stat = poke.messages[0].stat.clone().unwrap();
    assert_eq!(poke.messages[0].name, "hello-00001");
    assert!(stat.average_concurrent_requests >= 1.0);

    // The pod appears (not ready: its app is not listening); nothing may be served yet.
    catalog.set_endpoints(
        &key,
        Endpoints {
            not_ready: vec![qp_addr.to_string()],
            ..Default::default()
        },
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        held.iter().all(|h| !h.is_finished()),
        "held until the app is ready"
    );

    // The app starts listening: the queue-proxy turns ready, the activator's probe sees it.
    let app = start_app(TcpListener::bind(("127.0.0.1", user_port)).await.unwrap()).await;
    catalog.set_endpoints(
        &key,
        Endpoints {
            ready: vec![qp_addr.to_string()],
            ..Default::default()
        },
    );
    for h in held {
        let resp = tokio::time::timeout(DEADLINE, h)
            .await
            .expect("released")
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        // Host is the client's, not 127.0.0.1 (K-Original-Host / Host preserved end to end).
        assert_eq!(&body[..], b"hello from hello.default.example.com");
    }
    assert_eq!(app.hits.load(Ordering::SeqCst), 5);
    assert_eq!(
        app.proxied_marked.load(Ordering::SeqCst),
        5,
        "K-Proxy-Request reached the app"
    );
    let _ = app.port;

    // The queue-proxy's Stat counts them as proxied within a couple of reporting windows.
    let metrics_client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut proxied = 0.0;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < deadline {
        let resp = metrics_client
            .get(format!("http://{qp_metrics}/metrics").parse().unwrap())
            .await
            .unwrap();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let s = shared::stats::Stat::decode(bytes).unwrap();
        assert_eq!(s.pod_name, "hello-00001-pod");
        proxied += s.proxied_request_count;
        if proxied > 0.0 {
            assert!(s.request_count >= s.proxied_request_count);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        proxied > 0.0,
        "queue-proxy reported the activator's requests as proxied"
    );
    qp_stop.cancel();
}
