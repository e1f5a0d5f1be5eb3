//! Scenario 16 (slowloris) against the shared server both binaries use, with a 1 s header-read
//! timeout instead of the production 60 s: connections that trickle a request head are closed
//! at the timeout, well-formed requests keep being served meanwhile, and the process's fd count
//! returns to baseline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use shared::http::server::{ServerOptions, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Trickles one header byte every 200 ms until the server closes; returns how long it took.
async fn trickle(addr: std::net::SocketAddr) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").await.unwrap();
    let mut buf = [0u8; 256];
    loop {
        if s.write_all(b"a").await.is_err() {
            return start.elapsed();
        }
        // hyper may answer 408 before closing; keep reading until EOF.
        let read = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
        if let Ok(Ok(0) | Err(_)) = read {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never closed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_close_at_the_header_read_timeout() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let svc = tower::service_fn(|_req| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let opts = ServerOptions {
        header_read_timeout: Duration::from_secs(1),
        ..ServerOptions::default()
    };
    tokio::spawn(serve(l, svc, opts, CancellationToken::new()));
    let baseline = fds();
    let slow: Vec<_> = (0..200).map(|_| tokio::spawn(trickle(addr))).collect();
    // Well-formed requests are served while the slow heads are pending.
    for _ in 0..10 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut resp = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut resp))
            .await
            .expect("served while slowloris is on")
            .unwrap();
        assert!(resp.starts_with(b"HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for s in slow {
        let took = s.await.unwrap();
        // Closed by the timeout, not by anything faster (a 200 ms trickle never completes a
        // head); the upper bound is generous for a loaded CI box.
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(15),
            "closed after {took:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while fds() > baseline + 2 {
        assert!(Instant::now() < deadline, "fds {} vs {baseline}", fds());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
