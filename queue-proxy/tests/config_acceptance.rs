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
