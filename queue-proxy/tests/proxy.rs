//! In-process black-box tests: `queue_proxy::run` on 127.0.0.1:0 in front of a fake app.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use prost::Message;

#[tokio::test]
async fn cc_is_enforced_at_the_app_and_the_queue_overflows_with_503() {
    let app = start_app().await;
    let mut c = cli(app.addr.port());
    c.container_concurrency = Some("1".into());
    let qp = start_qp(c).await;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = get(qp.serving, "/sleep?ms=60", &[]).await;
            (r, t.elapsed())
        }));
    }
    let mut ok = 0;
    let mut full = 0;
    for t in tasks {
        let ((status, _, body), took) = t.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body, "pending request queue full\n");
                assert!(
                    took < Duration::from_millis(500),
                    "503 must be immediate: {took:?}"
                );
                full += 1;
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(
        (ok, full),
        (11, 1),
        "CC=1: 1 running + 10 queued, the 12th rejected"
    );
    assert_eq!(
        app.stats.max.load(Ordering::SeqCst),
        1,
        "never more than CC at the app"
    );
}

#[tokio::test]
async fn revision_timeout_gives_504_on_time() {
    let app = start_app().await;
    let mut c = cli(app.addr.port());
    c.revision_timeout_seconds = Some("1".into());
    let qp = start_qp(c).await;
    let t = Instant::now();
    let (status, _, body) = get(qp.serving, "/sleep?ms=5000", &[]).await;
    let took = t.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body, "request timeout");
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn probes_are_answered_by_the_queue_proxy_and_never_reach_the_app() {
    let app = start_app().await;
    let qp = start_qp(cli(app.addr.port())).await;
    let (s, _, b) = get(
        qp.serving,
        "/healthz",
        &[
            ("user-agent", "Knative-Activator-Probe"),
            ("k-network-probe", "queue"),
        ],
    )
    .await;
    assert_eq!((s, b.as_ref()), (StatusCode::OK, &b"queue"[..]));
    let (s, _, b) = get(qp.serving, "/", &[("user-agent", "kube-probe/1.30")]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b, "unexpected probe header value: \n");
    let (s, h, _) = get(
        qp.serving,
        "/",
        &[("k-network-probe", "probe"), ("k-network-hash", "abc")],
    )
    .await;
    assert_eq!(
        (s, h["k-network-hash"].to_str().unwrap()),
        (StatusCode::OK, "abc")
    );
    let (s, _, _) = get(qp.serving, "/", &[("k-network-probe", "probe")]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        app.stats.hits.load(Ordering::SeqCst),
        0,
        "no probe reached the app"
    );
}

#[tokio::test]
async fn aggressive_readiness_is_reported_within_milliseconds_of_the_app_listening() {
    let reserve = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = reserve.local_addr().unwrap().port();
    drop(reserve);
    let mut c = cli(port);
    c.serving_readiness_probe = Some(format!(
        r#"{{"tcpSocket":{{"port":{port},"host":"127.0.0.1"}},"successThreshold":1}}"#
    ));
    let qp = start_qp(c).await;
    let probe = tokio::spawn(async move {
        let r = get(
            qp.serving,
            "/",
            &[
                ("user-agent", "kube-probe/1.30"),
                ("k-network-probe", "queue"),
            ],
        )
        .await;
        (r, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!probe.is_finished(), "ready before the app listens");
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let listening = Instant::now();
    let _app = start_app_on(l).await;
    let ((s, _, b), answered) = probe.await.unwrap();
    assert_eq!((s, b.as_ref()), (StatusCode::OK, &b"queue"[..]));
    let lag = answered - listening;
    assert!(lag < Duration::from_millis(60), "readiness lag {lag:?}");
}

#[tokio::test]
async fn stat_reflects_a_known_proxied_load() {
    let app = start_app().await;
    let qp = start_qp(cli(app.addr.port())).await;
    // Before the first report: only the pod name.
    let (s, h, b) = get(qp.metrics, "/metrics", &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], "application/protobuf");
    assert_eq!(shared::stats::Stat::decode(b).unwrap().pod_name, "pod-1");
    // One activator-proxied request held 2.5 s: some 1 s window is fully covered.
    let serving = qp.serving;
    let req = tokio::spawn(async move {
        get(
            serving,
            "/sleep?ms=2500",
            &[("k-proxy-request", "activator")],
        )
        .await
    });
    let mut stats = Vec::new();
    let end = Instant::now() + Duration::from_secs(4);
    while Instant::now() < end {
        let (_, _, b) = get(qp.metrics, "/metrics", &[]).await;
        stats.push(shared::stats::Stat::decode(b).unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(req.await.unwrap().0, StatusCode::OK);
    assert!(
        stats
            .iter()
            .any(|s| s.request_count == 1.0 && s.proxied_request_count == 1.0),
        "{stats:?}"
    );
    assert!(
        stats
            .iter()
            .any(|s| (s.average_concurrent_requests - 1.0).abs() < 0.01
                && (s.average_proxied_concurrent_requests - 1.0).abs() < 0.01
                && s.request_count == 0.0),
        "{stats:?}"
    );
    assert!(
        stats
            .iter()
            .all(|s| s.pod_name == "pod-1" && s.timestamp == 0)
    );
    assert!(stats.last().unwrap().process_uptime > 3.0);
}

#[tokio::test]
async fn headers_are_rewritten_like_knative() {
    let app = start_app().await;
    let qp = start_qp(cli(app.addr.port())).await;
    let (_, _, b) = get(
        qp.serving,
        "/headers",
        &[
            ("k-original-host", "orig.example.com"),
            ("knative-serving-revision", "rev"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
        ],
    )
    .await;
    let b = String::from_utf8_lossy(&b);
    assert!(b.contains("host=orig.example.com"), "{b}");
    assert!(
        !b.contains("k-original-host")
            && !b.contains("knative-serving-revision")
            && !b.contains("x-hop"),
        "{b}"
    );
    assert!(b.contains("x-forwarded-for: 1.2.3.4, 127.0.0.1\n"), "{b}");
    assert!(b.contains("forwarded: for=1.2.3.4;proto=https\n"), "{b}");
}

#[tokio::test]
async fn h2c_reaches_the_app_as_h2c() {
    let app = start_app().await;
    let qp = start_qp(cli(app.addr.port())).await;
    let req = http::Request::get(format!("http://{}/headers", qp.serving))
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, h2_client().request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let b = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(
        b.starts_with(b"HTTP/2.0"),
        "{}",
        String::from_utf8_lossy(&b)
    );
}

#[tokio::test]
async fn websocket_echo_through_the_queue_proxy() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Ws;
    let app = start_app().await;
    let mut c = cli(app.addr.port());
    c.container_concurrency = Some("1".into());
    let qp = start_qp(c).await;
    let (mut ws, resp) = tokio::time::timeout(
        DEADLINE,
        tokio_tungstenite::connect_async(format!("ws://{}/ws", qp.serving)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for m in ["hello", "world"] {
        ws.send(Ws::text(m)).await.unwrap();
        let got = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got.into_text().unwrap().as_str(), m);
    }
    // The tunnel holds the CC=1 permit: a plain request queues until the socket closes.
    let serving = qp.serving;
    let queued = tokio::spawn(async move { get(serving, "/", &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!queued.is_finished(), "the websocket holds the only slot");
    ws.close(None).await.unwrap();
    drop(ws);
    assert_eq!(
        tokio::time::timeout(DEADLINE, queued)
            .await
            .unwrap()
            .unwrap()
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn oversized_headers_get_431_and_ambiguous_framing_400_with_nothing_forwarded() {
    let app = start_app().await;
    let qp = start_qp(cli(app.addr.port())).await;
    let big = "a".repeat(70 * 1024);
    let r = raw(
        qp.serving,
        format!("GET / HTTP/1.1\r\nHost: h\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 431"), "{}", &r[..r.len().min(80)]);
    for req in [
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    ] {
        let r = raw(qp.serving, req.as_bytes()).await;
        assert!(
            r.starts_with("HTTP/1.1 400") || !r.contains(" 200 "),
            "{req:?} → {r}"
        );
    }
    assert_eq!(
        app.stats.hits.load(Ordering::SeqCst),
        0,
        "nothing forwarded"
    );
    // CL + TE: 400 before any layer runs (`shared::http::framing`), and the connection closes,
    // so a smuggled second request can never be read.
    let r = raw(
        qp.serving,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("connection: close"), "{r}");
    assert_eq!(
        r.matches("HTTP/1.1 ").count(),
        1,
        "the smuggled request is never served: {r}"
    );
}

#[tokio::test]
async fn drain_fails_probes_serves_in_flight_and_new_requests_then_returns() {
    let app = start_app().await;
    let mut c = cli(app.addr.port());
    c.queue_drain_seconds = Some("1".into());
    let qp = start_qp(c).await;
    let serving = qp.serving;
    let in_flight = tokio::spawn(async move { get(serving, "/sleep?ms=1500", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    qp.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (s, _, b) = get(
        qp.serving,
        "/",
        &[
            ("user-agent", "Knative-Activator-Probe"),
            ("k-network-probe", "queue"),
        ],
    )
    .await;
    assert_eq!(
        (s, b.as_ref()),
        (StatusCode::SERVICE_UNAVAILABLE, &b"shutting down\n"[..])
    );
    assert_eq!(
        get(qp.serving, "/", &[]).await.0,
        StatusCode::OK,
        "new requests still served"
    );
    assert_eq!(in_flight.await.unwrap().0, StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(10), qp.done)
        .await
        .expect("run returns after the quiet period")
        .unwrap();
}

#[tokio::test]
async fn wait_for_drain_without_sigterm_resets_after_a_second() {
    let app = start_app().await;
    let qp = start_qp(cli(app.addr.port())).await;
    let t = Instant::now();
    let (s, _, _) = get(qp.admin, "/wait-for-drain", &[]).await;
    assert_eq!(s, StatusCode::OK);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let (s, _, _) = get(
        qp.serving,
        "/",
        &[
            ("user-agent", "Knative-Activator-Probe"),
            ("k-network-probe", "queue"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "probes healthy again");
    assert_eq!(get(qp.admin, "/other", &[]).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn request_metrics_in_prometheus_text_from_start() {
    let app = start_app().await;
    let mut c = cli(app.addr.port());
    c.observability_config = Some(r#"{"requestMetrics":{"protocol":"prometheus"}}"#.into());
    let qp = start_qp(c).await;
    let um = qp.user_metrics.unwrap();
    let (s, _, b) = get(um, "/metrics", &[]).await;
    assert_eq!(s, StatusCode::OK);
    let b = String::from_utf8_lossy(&b).into_owned();
    assert!(
        b.contains(
            "kn_serving_invocation_duration_seconds_count{http_response_status_code=\"200\"} 0"
        ),
        "{b}"
    );
    get(qp.serving, "/", &[("knative-serving-tag", "blue")]).await;
    let (_, _, b) = get(um, "/metrics", &[]).await;
    let b = String::from_utf8_lossy(&b).into_owned();
    assert!(
        b.contains(
            "kn_serving_invocation_duration_seconds_count{http_response_status_code=\"200\"} 1"
        ),
        "{b}"
    );
    assert!(b.contains("kn_route_tag=\"blue\""), "{b}");
}
