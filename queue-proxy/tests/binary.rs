//! The real binary: environment contract, startup and SIGTERM.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

const BIN: &str = env!("CARGO_BIN_EXE_queue-proxy");

fn base_env(user_port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("SERVING_NAMESPACE", "ns".into()),
        ("SERVING_CONFIGURATION", "".into()),
        ("SERVING_REVISION", "rev".into()),
        ("SERVING_POD", "pod-1".into()),
        ("SERVING_POD_IP", "127.0.0.1".into()),
        ("QUEUE_SERVING_PORT", "0".into()),
        ("QUEUE_SERVING_TLS_PORT", "8112".into()),
        ("USER_PORT", user_port.to_string()),
        ("CONTAINER_CONCURRENCY", "0".into()),
        ("REVISION_TIMEOUT_SECONDS", "10".into()),
        ("SERVING_LOGGING_CONFIG", "".into()),
        ("SERVING_LOGGING_LEVEL", "".into()),
        ("QUEUE_ADMIN_PORT", "0".into()),
        ("QUEUE_METRICS_PORT", "0".into()),
        ("QUEUE_DRAIN_SECONDS", "1".into()),
        ("SYSTEM_NAMESPACE", "knative-serving".into()),
        ("HOST_IP", "10.0.0.2".into()),
        ("ROOT_CA", "".into()),
    ]
}

#[test]
fn missing_variable_exits_64_naming_it() {
    let mut env = base_env(8080);
    env.retain(|(k, _)| *k != "SERVING_POD");
    let out = Command::new(BIN).env_clear().envs(env).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SERVING_POD"));
    let mut env = base_env(8080);
    env.push(("CONTAINER_CONCURRENCY", "".into()));
    let out = Command::new(BIN).env_clear().envs(env).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CONTAINER_CONCURRENCY"));
}

#[tokio::test]
async fn sigterm_with_a_request_in_flight_drains_and_exits_0() {
    let app = start_app().await;
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .env_clear()
        .envs(base_env(app.addr.port()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Find the serving port in the "listening" log line.
    let stdout = child.stdout.take().unwrap();
    let serving: SocketAddr = tokio::task::spawn_blocking(move || {
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "listening" && v["listener"] == "serving" {
                let addr: SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
                return SocketAddr::from(([127, 0, 0, 1], addr.port()));
            }
        }
        panic!("no listening line");
    })
    .await
    .unwrap();
    let (s, _, b) = get(
        serving,
        "/",
        &[
            ("user-agent", "Knative-Activator-Probe"),
            ("k-network-probe", "queue"),
        ],
    )
    .await;
    assert_eq!((s, b.as_ref()), (StatusCode::OK, &b"queue"[..]));
    assert!(started.elapsed() < Duration::from_secs(5));
    let in_flight = tokio::spawn(async move { get(serving, "/sleep?ms=1500", &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, _, _) = get(
        serving,
        "/",
        &[
            ("user-agent", "Knative-Activator-Probe"),
            ("k-network-probe", "queue"),
        ],
    )
    .await;
    assert_eq!(
        s,
        StatusCode::SERVICE_UNAVAILABLE,
        "probes fail at once after SIGTERM"
    );
    assert_eq!(
        in_flight.await.unwrap().0,
        StatusCode::OK,
        "in-flight request completes"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
}
