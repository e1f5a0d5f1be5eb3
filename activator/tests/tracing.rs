//! The activator with tracing on (`config-observability` as a mounted volume, through the real
//! config parsing): spans reach an OTLP/HTTP collector with Knative's names and parentage, and the
//! pod sees the client span in `traceparent`.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use activator::catalog::{Catalog, Endpoints, RevisionKey, RevisionSpec};
use activator::config::Config;
use activator::reporter::StatsSink;
use activator::{Listeners, Shutdown};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use shared::telemetry::otlp::Span;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_with_knatives_names_and_parentage() {
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let col = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let col_addr = col.local_addr().unwrap();
    let mut spans = shared::telemetry::otlp::collector::spawn(col, stop.clone());

    // A fake queue-proxy: answers probes, remembers the traceparent of real requests.
    let pod = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pod_addr = pod.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(None::<String>));
    let s2 = Arc::clone(&seen);
    let svc = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
        let seen = Arc::clone(&s2);
        async move {
            if req
                .headers()
                .get("k-network-probe")
                .is_some_and(|v| v == "queue")
            {
                return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"queue"))));
            }
            *seen.lock().unwrap() = req
                .headers()
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_owned());
            Ok(Response::new(Full::new(Bytes::from_static(b"hi"))))
        }
    });
    tokio::spawn(shared::http::server::serve(
        pod,
        svc,
        shared::http::server::ServerOptions::default(),
        stop.clone(),
    ));

    // config-observability as Kubernetes mounts it: one file per key.
    let dir = std::env::temp_dir().join(format!("act-tracing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tracing-protocol"), "http/protobuf").unwrap();
    std::fs::write(dir.join("tracing-endpoint"), col_addr.to_string()).unwrap();
    std::fs::write(dir.join("tracing-sampling-rate"), "1").unwrap();
    let mut config = Config::in_process("act", "127.0.0.1");
    config.tracing = activator::configmap::read_tracing(&dir).unwrap();
    assert!(config.tracing.is_some());

    let http1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = http1.local_addr().unwrap();
    let catalog = Catalog::new();
    let shutdown = Shutdown::default();
    tokio::spawn(activator::run(
        config,
        Listeners {
            http1,
            h2c: None,
            metrics: None,
        },
        catalog.clone(),
        StatsSink::Discard,
        shutdown.clone(),
    ));
    let key = RevisionKey::new("ns", "rev");
    catalog.upsert_revision(key.clone(), RevisionSpec::default());
    catalog.set_endpoints(
        &key,
        Endpoints {
            ready: vec![pod_addr.to_string()],
            ..Endpoints::default()
        },
    );

    let incoming_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming_span = "00f067aa0ba902b7";
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::builder()
        .uri(format!("http://{addr}/hello"))
        .header("host", "rev.ns.svc.cluster.local")
        .header(
            "traceparent",
            format!("00-{incoming_trace}-{incoming_span}-01"),
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let _ = resp.into_body().collect().await.unwrap();

    let mut got: Vec<Span> = Vec::new();
    while got.len() < 4 {
        let s = tokio::time::timeout(Duration::from_secs(10), spans.recv())
            .await
            .expect("four spans exported within the flush interval")
            .unwrap();
        got.push(s);
    }
    let by_name = |n: &str| {
        got.iter()
            .find(|s| s.name == n)
            .unwrap_or_else(|| panic!("{n}"))
    };
    let handle = by_name("handle");
    let wait = by_name("throttler_try");
    let proxy = by_name("activator_proxy");
    let client_span = by_name("GET /hello");
    for s in &got {
        assert_eq!(hex(&s.trace_id), incoming_trace, "one trace");
    }
    assert_eq!(hex(&handle.parent_span_id), incoming_span);
    assert_eq!(wait.parent_span_id, handle.span_id);
    assert_eq!(proxy.parent_span_id, handle.span_id);
    assert_eq!(client_span.parent_span_id, proxy.span_id);
    assert!(wait.end_time_unix_nano <= proxy.end_time_unix_nano);
    assert_eq!(
        seen.lock().unwrap().clone().unwrap(),
        format!("00-{incoming_trace}-{}-01", hex(&client_span.span_id)),
        "the pod's parent is the client span"
    );
    shutdown.exit.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}
