//! Issue 14: every configuration a stock Knative v1.23 install can hand the queue-proxy starts
//! it and serves; each value either takes effect (asserted here) or is logged as ignored.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

/// Waits (bounded) for an output line containing `needle`.
async fn wait_line(qp: &Qp, needle: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(l) = qp.lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no line with {needle:?}: {:?}",
            qp.lines.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn obs(template: &str) -> String {
    serde_json::json!({"enableRequestLog": true, "requestLogTemplate": template}).to_string()
}

/// The Go templates of issue 14 (each made the binary exit 64 before): the binary starts and
/// writes what Knative's queue-proxy writes for the same request.
#[tokio::test]
async fn go_request_log_templates_render() {
    let app = start_app().await;
    let cases = [
        (
            r#"A {{.Request.Method}} {{.Request.Header.Get "X-Request-Id"}}"#,
            "A GET rid-7",
        ),
        ("B {{.Request.URL.Path}}", "B /p q"),
        ("C {{.Request.Host}}", "C h.example.com"),
        (r#"D {{printf "code=%d" .Response.Code}}"#, "D code=200"),
        ("E {{if eq .Response.Code 200}}ok{{end}}", "E ok"),
        (
            "F {{with .Request.UserAgent}}{{js .}}{{end}}",
            "F a\\'b\\u003Cc\\u003E",
        ),
    ];
    for (template, want) in cases {
        let qp = start_qp(env(app.addr.port()).set("OBSERVABILITY_CONFIG", &obs(template))).await;
        let (s, _, _) = get(
            qp.serving,
            "/p%20q?x=1",
            &[
                ("x-request-id", "rid-7"),
                ("host", "h.example.com"),
                ("user-agent", "a'b<c>"),
            ],
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{template}");
        let tag = &want[..2];
        assert_eq!(wait_line(&qp, tag).await, want, "{template}");
    }
}

/// A template Go's parser rejects: Knative logs the error and serves without request logs.
#[tokio::test]
async fn a_template_go_rejects_is_logged_and_the_pod_serves() {
    let app = start_app().await;
    let qp =
        start_qp(env(app.addr.port()).set("OBSERVABILITY_CONFIG", &obs("X {{.Request.Method")))
            .await;
    let l = wait_line(&qp, "Request logs will be unavailable").await;
    assert!(l.contains("unclosed action"), "{l}");
    let (s, _, _) = get(qp.serving, "/", &[]).await;
    assert_eq!(s, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !qp.lines.lock().unwrap().iter().any(|l| l.starts_with("X ")),
        "no request log"
    );
}

/// A template that parses but fails per request (a field `*http.Request` lacks): Knative's
/// fallback line.
#[tokio::test]
async fn a_template_failing_at_run_time_writes_knatives_fallback_line() {
    let app = start_app().await;
    let qp =
        start_qp(env(app.addr.port()).set("OBSERVABILITY_CONFIG", &obs("{{.Request.Nope}}"))).await;
    let (s, _, _) = get(qp.serving, "/x?y=1", &[]).await;
    assert_eq!(s, StatusCode::OK);
    let l = wait_line(&qp, "Invalid request log template").await;
    assert!(
        l.starts_with("Invalid request log template: method: GET, response code: 200, latency: "),
        "{l}"
    );
    assert!(l.ends_with(", url: /x?y=1"), "{l}");
}

fn cert_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("qp-cfgacc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    std::fs::write(d.join("tls.crt"), c.cert.pem()).unwrap();
    std::fs::write(d.join("tls.key"), c.key_pair.serialize_pem()).unwrap();
    d
}

/// curl (installed by `.ci/run`) over TLS to `addr`, bounded: (success, body).
fn curl_tls(addr: std::net::SocketAddr, ca: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", ca.to_str().unwrap()])
        .args(extra)
        .arg(format!("https://{addr}/"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Issue 14 item 3: TLS 1.3 suite names (in Go's `tls.CipherSuites()`) and Go suites rustls
/// lacks are accepted; the TLS port serves.
#[tokio::test]
async fn tls13_and_go_only_cipher_suite_names_are_accepted() {
    let app = start_app().await;
    for (i, suites) in [
        "TLS_AES_128_GCM_SHA256,TLS_AES_256_GCM_SHA384,TLS_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ]
    .into_iter()
    .enumerate()
    {
        let dir = cert_dir(&format!("suites{i}"));
        let qp = start_qp(
            env(app.addr.port())
                .set("QUEUE_TLS_CERT_DIR", dir.to_str().unwrap())
                .set("QUEUE_PROXY_TLS_CIPHER_SUITES", suites),
        )
        .await;
        let (addr, ca) = (qp.tls.unwrap(), dir.join("tls.crt"));
        let (ok, body) = tokio::task::spawn_blocking(move || curl_tls(addr, &ca, &[]))
            .await
            .unwrap();
        assert!(ok && body == "ok", "{suites}: {body}");
        if i == 1 {
            wait_line(&qp, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA").await;
        }
        drop(qp);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A suite name Go rejects: Knative reads the TLS variables only with a certificate mounted
/// (then it exits 1); without one the pod serves.
#[tokio::test]
async fn a_suite_go_rejects_is_fatal_only_with_tls_on() {
    let app = start_app().await;
    let qp = start_qp(
        env(app.addr.port()).set("QUEUE_PROXY_TLS_CIPHER_SUITES", "TLS_RSA_WITH_RC4_128_SHA"),
    )
    .await;
    let (s, _, _) = get(qp.serving, "/", &[]).await;
    assert_eq!(s, StatusCode::OK);
    drop(qp);
    let dir = cert_dir("rc4");
    let out = env(app.addr.port())
        .set("QUEUE_TLS_CERT_DIR", dir.to_str().unwrap())
        .set("QUEUE_PROXY_TLS_CIPHER_SUITES", "TLS_RSA_WITH_RC4_128_SHA")
        .command()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let all = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        all.contains("Failed to read TLS configuration from environment")
            && all.contains("QUEUE_PROXY_TLS_CIPHER_SUITES"),
        "{all}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 14 item 5: 60 requests with made-up method tokens and random paths add one
/// `http_request_method="_OTHER"` series, not 60; `server_address`/`server_port` come from the
/// Host as otelhttp records them.
#[tokio::test]
async fn hostile_methods_and_paths_do_not_grow_the_scrape() {
    let app = start_app().await;
    let qp = start_qp(env(app.addr.port()).set(
        "OBSERVABILITY_CONFIG",
        r#"{"requestMetrics":{"protocol":"prometheus"}}"#,
    ))
    .await;
    let c = client();
    for i in 0..60 {
        let req = http::Request::builder()
            .method(http::Method::from_bytes(format!("X{i}QZ").as_bytes()).unwrap())
            .uri(format!("http://{}/r/{i}/{}", qp.serving, i * 7919))
            .header("host", "hello.default.example.com:8080")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = tokio::time::timeout(DEADLINE, c.request(req))
            .await
            .unwrap()
            .unwrap();
        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
    }
    get(qp.serving, "/", &[("host", "hello.default.example.com")]).await;
    let (_, _, b) = get(qp.user_metrics.unwrap(), "/metrics", &[]).await;
    let b = String::from_utf8_lossy(&b).into_owned();
    let series: Vec<&str> = b
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count{"))
        .collect();
    assert_eq!(series.len(), 2, "{series:#?}");
    let other = series
        .iter()
        .find(|l| l.contains("http_request_method=\"_OTHER\""))
        .unwrap_or_else(|| panic!("{series:#?}"));
    assert!(other.ends_with(" 60"), "{other}");
    assert!(
        other.contains("server_address=\"hello.default.example.com\"")
            && other.contains("server_port=\"8080\"")
            && other.contains("url_scheme=\"http\""),
        "{other}"
    );
    let get_series = series
        .iter()
        .find(|l| l.contains("http_request_method=\"GET\""))
        .unwrap();
    assert!(get_series.contains("server_port=\"\""), "{get_series}");
    assert!(!b.contains("X1QZ") && !b.contains("/r/1"), "{b}");
}

/// Issue 14 item 5: requests on the TLS port are recorded with `url_scheme="https"`.
#[tokio::test]
async fn the_tls_port_records_https() {
    let app = start_app().await;
    let dir = cert_dir("scheme");
    let qp = start_qp(
        env(app.addr.port())
            .set("QUEUE_TLS_CERT_DIR", dir.to_str().unwrap())
            .set(
                "OBSERVABILITY_CONFIG",
                r#"{"requestMetrics":{"protocol":"prometheus"}}"#,
            ),
    )
    .await;
    let (addr, ca) = (qp.tls.unwrap(), dir.join("tls.crt"));
    let (ok, body) = tokio::task::spawn_blocking(move || curl_tls(addr, &ca, &[]))
        .await
        .unwrap();
    assert!(ok, "{body}");
    let (_, _, b) = get(qp.user_metrics.unwrap(), "/metrics", &[]).await;
    let b = String::from_utf8_lossy(&b).into_owned();
    assert!(
        b.lines().any(
            |l| l.starts_with("http_server_request_duration_seconds_count{")
                && l.contains("url_scheme=\"https\"")
                && l.contains("server_address=\"127.0.0.1\"")
        ),
        "{b}"
    );
    drop(qp);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An OTLP metrics collector on 127.0.0.1: every decoded push, with its path.
async fn metrics_collector(
    grpc: bool,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::Receiver<(
        String,
        shared::telemetry::otlp::push::ExportMetricsServiceRequest,
    )>,
) {
    use prost::Message as _;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let body = http_body_util::BodyExt::collect(req.into_body())
                                .await
                                .unwrap()
                                .to_bytes();
                            let b = if grpc { body.slice(5..) } else { body };
                            let msg =
                                shared::telemetry::otlp::push::ExportMetricsServiceRequest::decode(
                                    b.as_ref(),
                                )
                                .unwrap();
                            let _ = tx.send((path, msg)).await;
                            let mut r =
                                http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                            if grpc {
                                r.headers_mut()
                                    .insert("content-type", "application/grpc".parse().unwrap());
                                r.headers_mut().insert("grpc-status", "0".parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    (addr, rx)
}

/// Issue 14 item 4: `requestMetrics.protocol` `http/protobuf` and `grpc` (upstream's own
/// example) push the request metrics to the collector every `exportInterval`.
#[tokio::test]
async fn otlp_request_metrics_are_pushed() {
    use shared::telemetry::otlp::push::metric::Data;
    let app = start_app().await;
    for (protocol, grpc) in [("http/protobuf", false), ("grpc", true)] {
        let (col, mut rx) = metrics_collector(grpc).await;
        let obs = serde_json::json!({"requestMetrics": {
            "protocol": protocol,
            "endpoint": format!("http://{col}"),
            "exportInterval": 200_000_000,
        }})
        .to_string();
        let qp = start_qp(env(app.addr.port()).set("OBSERVABILITY_CONFIG", &obs)).await;
        let (s, _, _) = get(qp.serving, "/", &[]).await;
        assert_eq!(s, StatusCode::OK);
        let deadline = Instant::now() + DEADLINE;
        let (path, count) = loop {
            let (path, msg) = tokio::time::timeout(DEADLINE, rx.recv())
                .await
                .expect("a push within the deadline")
                .unwrap();
            let count: u64 = msg.resource_metrics[0].scope_metrics[0]
                .metrics
                .iter()
                .filter(|m| m.name == "http.server.request.duration")
                .filter_map(|m| match &m.data {
                    Some(Data::Histogram(h)) => {
                        Some(h.data_points.iter().map(|p| p.count).sum::<u64>())
                    }
                    _ => None,
                })
                .sum();
            if count >= 1 {
                break (path, count);
            }
            assert!(Instant::now() < deadline, "the request never showed up");
        };
        assert_eq!(count, 1, "{protocol}");
        assert!(
            path.ends_with(if grpc {
                "MetricsService/Export"
            } else {
                "/v1/metrics"
            }),
            "{path}"
        );
    }
}

/// A collector that accepts and never answers: requests are served as before, and the
/// failure is logged (once per minute at most).
#[tokio::test]
async fn a_black_holed_metrics_collector_does_not_touch_requests() {
    let app = start_app().await;
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let obs = serde_json::json!({"requestMetrics": {
        "protocol": "http/protobuf",
        "endpoint": format!("http://{}", hole.local_addr().unwrap()),
        "exportInterval": 100_000_000,
    }})
    .to_string();
    let qp = start_qp(env(app.addr.port()).set("OBSERVABILITY_CONFIG", &obs)).await;
    for _ in 0..20 {
        let (s, _, _) = get(qp.serving, "/", &[]).await;
        assert_eq!(s, StatusCode::OK);
    }
    wait_line(&qp, "metrics export failed").await;
    drop(hole);
}

/// Every key of upstream's `_example` blocks that reaches the queue-proxy, rendered as
/// `pkg/reconciler/revision/resources/queue.go` renders them: `config-observability` (into
/// `OBSERVABILITY_CONFIG`, collectors pointed at 127.0.0.1), `config-logging`
/// (`SERVING_LOGGING_CONFIG`, `SERVING_LOGGING_LEVEL`), `config-deployment`'s
/// `queue-sidecar-*` TLS keys and root CA (empty in the example), `config-network`'s
/// `ENABLE_HTTP2_AUTO_DETECTION`/`ENABLE_HTTP_FULL_DUPLEX`. The binary starts, and each value
/// takes effect: the request log renders, spans and request metrics reach the collectors on
/// the example's paths, the zap encoder is the example's.
#[tokio::test]
async fn upstream_example_configuration_takes_effect() {
    use shared::telemetry::otlp::push::metric::Data;
    let app = start_app().await;
    let (col, mut metrics) = metrics_collector(false).await;
    let tl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let traces_at = tl.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut spans = shared::telemetry::otlp::collector::spawn(tl, stop.clone());
    let obs = serde_json::json!({
        "tracing": {
            "protocol": "http/protobuf",
            "endpoint": format!("http://{traces_at}/v1/traces"),
            "samplingRate": 1.0,
        },
        "metrics": {
            "protocol": "http/protobuf",
            "endpoint": "http://example.com/v1/traces",
            "exportInterval": 60_000_000_000i64,
        },
        "runtime": {"profiling": "enabled"},
        "requestMetrics": {
            "protocol": "http/protobuf",
            "endpoint": format!("http://{col}/api/v1/otlp/v1/metrics"),
            // The example's 60 s would outlast the test; the key's effect is what is checked.
            "exportInterval": 200_000_000,
        },
        "LoggingURLTemplate": "http://logging.example.com/?revisionUID=${REVISION_UID}",
        "enableRequestLog": true,
        "requestLogTemplate": shared::telemetry::reqlog::DEFAULT_TEMPLATE,
    })
    .to_string();
    let zap = r#"{"level": "info", "development": false, "outputPaths": ["stdout"], "errorOutputPaths": ["stderr"], "encoding": "json", "encoderConfig": {"timeKey": "timestamp", "levelKey": "severity", "nameKey": "logger", "callerKey": "caller", "messageKey": "message", "stacktraceKey": "stacktrace", "lineEnding": "", "levelEncoder": "", "timeEncoder": "iso8601", "durationEncoder": "", "callerEncoder": ""}}"#;
    let qp = start_qp(
        env(app.addr.port())
            .set("OBSERVABILITY_CONFIG", &obs)
            .set("SERVING_LOGGING_CONFIG", zap)
            .set("SERVING_LOGGING_LEVEL", "info")
            .set("QUEUE_PROXY_TLS_MIN_VERSION", "")
            .set("QUEUE_PROXY_TLS_MAX_VERSION", "")
            .set("QUEUE_PROXY_TLS_CIPHER_SUITES", "")
            .set("QUEUE_PROXY_TLS_CURVE_PREFERENCES", "")
            .set("ROOT_CA", "")
            .set("ENABLE_HTTP2_AUTO_DETECTION", "false")
            .set("ENABLE_HTTP_FULL_DUPLEX", "false")
            .set("ENABLE_MULTI_CONTAINER_PROBES", "false"),
    )
    .await;
    let (s, _, _) = get(qp.serving, "/ex?a=1", &[("user-agent", "example/1")]).await;
    assert_eq!(s, StatusCode::OK);
    // The request log: the example's template.
    let line = wait_line(&qp, "\"requestUrl\": \"/ex?a\\u003D1\"").await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["httpRequest"]["userAgent"], "example/1");
    // Spans on the example's URL path.
    let span = tokio::time::timeout(DEADLINE, spans.recv())
        .await
        .expect("a span")
        .unwrap();
    assert!(!span.name.is_empty());
    // Request metrics on the example's URL path (the collector decodes only real pushes).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (path, msg) = tokio::time::timeout(DEADLINE, metrics.recv())
            .await
            .expect("a push")
            .unwrap();
        assert_eq!(path, "/api/v1/otlp/v1/metrics");
        let seen = msg.resource_metrics[0].scope_metrics[0].metrics.iter().any(|m| {
            m.name == "http.server.request.duration"
                && matches!(&m.data, Some(Data::Histogram(h)) if h.data_points.iter().any(|p| p.count > 0))
        });
        if seen {
            break;
        }
        assert!(Instant::now() < deadline, "request never pushed");
    }
    // config-logging's example encoder: zap's lowercase levels, ISO-8601 milliseconds.
    let listening = qp.json_lines(|v| v["message"] == "listening");
    let l = &listening[0];
    assert_eq!(l["severity"], "info", "{l}");
    let ts = l["timestamp"].as_str().unwrap();
    assert_eq!(ts.split_once('.').map(|f| f.1.len()), Some(4), "{ts}");
    stop.cancel();
}
