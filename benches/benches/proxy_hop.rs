//! One loopback HTTP/1.1 hop through the whole queue-proxy stack, in process: a hyper client →
//! `queue_proxy::run` on 127.0.0.1:0 → a hyper "ok" backend, one request at a time over
//! keep-alive connections, against the same client straight to the backend (the baseline).
//! The difference is the queue-proxy's added latency per request (parse, stack, re-serialise,
//! upstream round trip), with CC = 0 (no breaker) and CC = 10 (breaker on).
//!
//! Everything runs on one current-thread runtime, so no cross-CPU wake-ups are measured
//! (benchmarking.md §4.3 "co-located" floor). Run pinned: `taskset -c 1 cargo bench -p benches
//! --bench proxy_hop`.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use queue_proxy::config::{Cli, Config};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

async fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

async fn queue_proxy(user: SocketAddr, cc: u32, stop: CancellationToken) -> SocketAddr {
    let cli = Cli {
        serving_namespace: Some("default".into()),
        serving_configuration: Some("hello".into()),
        serving_revision: Some("hello-00001".into()),
        serving_pod: Some("hello-pod".into()),
        serving_pod_ip: Some("127.0.0.1".into()),
        queue_serving_port: Some("0".into()),
        queue_serving_tls_port: Some("8112".into()),
        user_port: Some(user.port().to_string()),
        container_concurrency: Some(cc.to_string()),
        revision_timeout_seconds: Some("300".into()),
        observability_config: Some(
            r#"{"tracing":{},"metrics":{},"runtime":{},"requestMetrics":{}}"#.into(),
        ),
        ..Cli::default()
    };
    let config = Config::try_from(cli).unwrap();
    let listeners = queue_proxy::Listeners::local(false).await.unwrap();
    let addr = listeners.serving.local_addr().unwrap();
    tokio::spawn(async move { queue_proxy::run(config, listeners, stop).await.unwrap() });
    addr
}

async fn get(client: &Client<HttpConnector, Empty<Bytes>>, uri: &http::Uri) {
    let req = Request::get(uri.clone())
        .header("host", "hello.default.example.com")
        .body(Empty::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let (direct, qp0, qp10) = rt.block_on(async {
        let app = backend().await;
        (
            app,
            queue_proxy(app, 0, stop.clone()).await,
            queue_proxy(app, 10, stop.clone()).await,
        )
    });
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut g = c.benchmark_group("proxy_hop");
    for (name, addr) in [
        ("direct", direct),
        ("queue-proxy cc=0", qp0),
        ("queue-proxy cc=10", qp10),
    ] {
        let uri: http::Uri = format!("http://{addr}/").parse().unwrap();
        // Warm the pools (client → proxy, proxy → app) outside the timed loop.
        rt.block_on(get(&client, &uri));
        g.bench_function(name, |b| b.to_async(&rt).iter(|| get(&client, &uri)));
    }
    g.finish();
    stop.cancel();
}

criterion_group!(benches, bench);
criterion_main!(benches);
