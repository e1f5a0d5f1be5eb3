//! Long reliability checks, not run by CI (`#[ignore]`): run them with
//! `cargo test -p queue-proxy --test long -- --ignored` (about 10 minutes; both run at once).
//!
//! - Scenario 4's limit: after SIGTERM an upgraded connection is kept, then closed once the
//!   hijack drain limit (60 s, Knative's `hijackDrainDuration`) has passed, and the process exits.
//! - Scenario 21's long session: a websocket with traffic every second stays up for
//!   `WS_SOAK_SECONDS` (default 600).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio_tungstenite::tungstenite::Message as Ws;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(qp: &Qp) -> Socket {
    let (ws, resp) = tokio::time::timeout(
        DEADLINE,
        tokio_tungstenite::connect_async(format!("ws://{}/ws", qp.serving)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// Sends `m` and waits for its echo; `false` if the socket is closed instead.
async fn echo(ws: &mut Socket, m: &str) -> bool {
    if ws.send(Ws::text(m)).await.is_err() {
        return false;
    }
    match tokio::time::timeout(DEADLINE, ws.next()).await {
        Ok(Some(Ok(Ws::Text(t)))) => {
            assert_eq!(t.as_str(), m);
            true
        }
        Ok(_) => false,
        Err(_) => panic!("no echo and no close within {DEADLINE:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: about 65 s"]
async fn s04_websocket_across_term_is_closed_after_the_60s_hijack_limit() {
    let app = start_app().await;
    // A revision timeout far above 60 s, so only the hijack limit can end the tunnel.
    let mut qp = start_qp(env(app.addr.port()).set("REVISION_TIMEOUT_SECONDS", "900")).await;
    let mut ws = open(&qp).await;
    assert!(echo(&mut ws, "before").await);
    qp.sigterm();
    let termed = Instant::now();
    let mut i = 0u64;
    let closed_after = loop {
        i += 1;
        if !echo(&mut ws, &format!("after {i}")).await {
            break termed.elapsed();
        }
        assert!(
            termed.elapsed() < Duration::from_secs(120),
            "tunnel never closed"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    println!("tunnel closed {closed_after:?} after SIGTERM ({i} echoes)");
    // Drain quiet period (1 s in the harness) + the 60 s limit, with slack for a busy machine.
    assert!(
        closed_after >= Duration::from_secs(55) && closed_after <= Duration::from_secs(90),
        "closed after {closed_after:?}"
    );
    assert_eq!(qp.wait_exit(Duration::from_secs(30)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: WS_SOAK_SECONDS, default 600 s"]
async fn s21_websocket_session_with_traffic_stays_up() {
    let secs: u64 = std::env::var("WS_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let app = start_app().await;
    // The overall timeout applies to tunnels too (docs/queue-proxy.md): keep it above the run.
    let qp =
        start_qp(env(app.addr.port()).set("REVISION_TIMEOUT_SECONDS", &(secs + 120).to_string()))
            .await;
    let mut ws = open(&qp).await;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        n += 1;
        assert!(
            echo(&mut ws, &format!("frame {n}")).await,
            "closed after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("{n} echoes over {:?}, none lost", start.elapsed());
    ws.close(None).await.unwrap();
}
