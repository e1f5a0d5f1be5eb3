//! The profiling server of the real binary: on `PROFILING_PORT` only when the revision's
//! `OBSERVABILITY_CONFIG` has `runtime.profiling: enabled` (Knative's queue-proxy), absent
//! otherwise.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `raw` GET on 127.0.0.1:`port` once something listens; `None` if nothing does within 10 s.
async fn get_when_up(port: u16, path: &str) -> Option<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            return Some(raw(addr, req.as_bytes()).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test]
async fn profiling_port_follows_runtime_profiling() {
    let app = start_app().await;
    let port = free_port();
    let _qp = start_qp(
        env(app.addr.port())
            .set("PROFILING_PORT", &port.to_string())
            .set(
                "OBSERVABILITY_CONFIG",
                r#"{"tracing":{},"metrics":{},"runtime":{"profiling":"enabled"},"requestMetrics":{}}"#,
            ),
    )
    .await;
    let heap = get_when_up(port, "/debug/pprof/heap")
        .await
        .expect("profiling listens");
    assert!(heap.starts_with("HTTP/1.1 200"), "{heap}");
    assert!(heap.contains("VmRSS_bytes: "), "{heap}");
    let profile = get_when_up(port, "/debug/pprof/profile?seconds=1")
        .await
        .unwrap();
    assert!(profile.starts_with("HTTP/1.1 200"), "{profile}");
    assert!(profile.contains("application/octet-stream"), "{profile}");

    // Off (the default): the queue-proxy starts without the listener.
    let port = free_port();
    let qp = start_qp(env(app.addr.port()).set("PROFILING_PORT", &port.to_string())).await;
    assert!(get(qp.serving, "/", &[]).await.0.is_success());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
