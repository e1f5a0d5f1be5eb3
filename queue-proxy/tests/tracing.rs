//! The real binary with tracing on: spans reach an OTLP/HTTP collector on 127.0.0.1 with
//! Knative's names and parentage, the app sees the client span in `traceparent`, and probes
//! produce no spans.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_with_knatives_names_and_parentage() {
    let app = start_app().await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let col = l.local_addr().unwrap();
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let mut spans = shared::telemetry::otlp::collector::spawn(l, stop);
    let obs = format!(
        r#"{{"tracing":{{"protocol":"http/protobuf","endpoint":"{col}","samplingRate":1}}}}"#
    );
    let qp = start_qp(
        env(app.addr.port())
            .set("CONTAINER_CONCURRENCY", "1")
            .set("OBSERVABILITY_CONFIG", &obs),
    )
    .await;
    let serving = qp.serving;

    // A probe first: answered by the queue-proxy, no spans.
    let (s, _, _) = get(
        serving,
        "/",
        &[
            ("user-agent", "Knative-Activator-Probe"),
            ("k-network-probe", "queue"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK);

    let incoming_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming_span = "00f067aa0ba902b7";
    let tp = format!("00-{incoming_trace}-{incoming_span}-01");
    let (s, _, body) = get(serving, "/headers", &[("traceparent", tp.as_str())]).await;
    assert_eq!(s, StatusCode::OK);
    let body = String::from_utf8_lossy(&body).into_owned();
    let upstream_tp = body
        .lines()
        .find_map(|l| l.strip_prefix("traceparent: "))
        .expect("traceparent reaches the app")
        .to_owned();

    let mut got = Vec::new();
    while got.len() < 4 {
        let s = tokio::time::timeout(Duration::from_secs(10), spans.recv())
            .await
            .expect("four spans exported within the flush interval")
            .unwrap();
        got.push(s);
    }
    // Nothing else arrives (the probe made no spans).
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), spans.recv())
            .await
            .is_err()
    );
    let by_name = |n: &str| {
        got.iter()
            .find(|s| s.name == n)
            .unwrap_or_else(|| panic!("{n}"))
    };
    let server = by_name("GET");
    let proxy = by_name("kn.queueproxy.proxy");
    let wait = by_name("kn.queueproxy.wait");
    let client = by_name("HTTP GET");
    for s in &got {
        assert_eq!(hex(&s.trace_id), incoming_trace, "one trace");
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
    }
    assert_eq!(hex(&server.parent_span_id), incoming_span);
    assert_eq!((server.kind, client.kind), (2, 3));
    assert_eq!(proxy.parent_span_id, server.span_id);
    assert_eq!(wait.parent_span_id, proxy.span_id);
    assert_eq!(client.parent_span_id, proxy.span_id);
    assert_eq!(
        upstream_tp,
        format!("00-{incoming_trace}-{}-01", hex(&client.span_id)),
        "the app's parent is the client span"
    );
}
