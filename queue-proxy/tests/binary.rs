//! The real binary's environment contract (part 1 of issue 3).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use http::StatusCode;

#[test]
fn missing_or_unparsable_variable_exits_64_naming_it() {
    for (env, name) in [
        (env(8080).unset("SERVING_POD"), "SERVING_POD"),
        (
            env(8080).set("CONTAINER_CONCURRENCY", ""),
            "CONTAINER_CONCURRENCY",
        ),
        (
            env(8080).set("OBSERVABILITY_CONFIG", "{not json"),
            "OBSERVABILITY_CONFIG",
        ),
        (
            env(8080).set("REVISION_TIMEOUT_SECONDS", "ten"),
            "REVISION_TIMEOUT_SECONDS",
        ),
    ] {
        let out = env.command().output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{name}: {stderr}");
        assert!(stderr.contains(name), "{name}: {stderr}");
    }
}

#[tokio::test]
async fn the_reconcilers_full_environment_starts_and_go_style_values_parse() {
    let app = start_app().await;
    // Knative's defaults plus the accepted-and-ignored variables, with Go-style ints and bools.
    let qp = start_qp(
        env(app.addr.port())
            .set("CONTAINER_CONCURRENCY", "0x1")
            .set("ENABLE_HTTP2_AUTO_DETECTION", "F")
            .set("ENABLE_HTTP_FULL_DUPLEX", "TRUE")
            .set("ENABLE_MULTI_CONTAINER_PROBES", "false")
            .set("REVISION_RESPONSE_START_TIMEOUT_SECONDS", "0")
            .set("REVISION_IDLE_TIMEOUT_SECONDS", "0")
            .set("QUEUE_PROXY_TLS_MIN_VERSION", "")
            .set(
                "SERVING_READINESS_PROBE",
                &format!(
                    r#"{{"tcpSocket":{{"port":"{}","host":"127.0.0.1"}},"successThreshold":1}}"#,
                    app.addr.port()
                ),
            ),
    )
    .await;
    let (s, _, b) = get(
        qp.serving,
        "/",
        &[
            ("user-agent", "kube-probe/1.30"),
            ("k-network-probe", "queue"),
        ],
    )
    .await;
    assert_eq!((s, b.as_ref()), (StatusCode::OK, &b"queue"[..]));
    assert_eq!(get(qp.serving, "/", &[]).await.0, StatusCode::OK);
}
