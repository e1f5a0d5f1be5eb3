//! The profiling server on 127.0.0.1: 404 while off, a CPU profile that decodes as pprof's
//! protobuf and names the function that burned the CPU, one profile at a time, a heap summary.
#![allow(clippy::unwrap_used)] // test helpers

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pprof::protos::{Message as _, Profile};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// `GET path` with `Connection: close`: (status, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, buf[end + 4..].to_vec())
}

#[inline(never)]
fn burn_cpu_for_the_profiler(stop: &AtomicBool) -> u64 {
    let mut x = 1u64;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    x
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_profile_heap_and_the_switch() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (on, enabled) = watch::channel(false);
    let stop = CancellationToken::new();
    tokio::spawn(shared::profiling::serve(l, enabled, stop.clone()));

    // Off (Knative's default): every path is Go's 404.
    let (status, body) = get(addr, "/debug/pprof/profile?seconds=1").await;
    assert_eq!(
        (status, body.as_slice()),
        (404, &b"404 page not found\n"[..])
    );
    assert_eq!(get(addr, "/debug/pprof/heap").await.0, 404);

    on.send_replace(true);
    let burning = Arc::new(AtomicBool::new(false));
    let b = Arc::clone(&burning);
    let burner = std::thread::spawn(move || burn_cpu_for_the_profiler(&b));
    let first = tokio::spawn(async move { get(addr, "/debug/pprof/profile?seconds=2").await });
    // A second profile while the first runs is refused, as Go refuses it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = get(addr, "/debug/pprof/profile?seconds=1").await;
    assert_eq!(status, 500, "{}", String::from_utf8_lossy(&body));
    let (status, body) = first.await.unwrap();
    burning.store(true, Ordering::Relaxed);
    burner.join().unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let p = Profile::decode(body.as_slice()).expect("pprof protobuf");
    let s = |i: i64| p.string_table[usize::try_from(i).unwrap()].as_str();
    let types: Vec<_> = p.sample_type.iter().map(|t| (s(t.ty), s(t.unit))).collect();
    assert!(types.contains(&("cpu", "nanoseconds")), "{types:?}");
    assert!(!p.sample.is_empty(), "no samples");
    assert!(
        p.function
            .iter()
            .any(|f| s(f.name).contains("burn_cpu_for_the_profiler")),
        "the busy function is named in the profile"
    );

    let (status, body) = get(addr, "/debug/pprof/heap").await;
    let text = String::from_utf8(body).unwrap();
    assert_eq!(status, 200);
    assert!(text.contains("VmRSS_bytes: "), "{text}");
    assert_eq!(get(addr, "/debug/pprof/profile?seconds=0").await.0, 400);

    // Off again, live.
    on.send_replace(false);
    assert_eq!(get(addr, "/debug/pprof/heap").await.0, 404);
    stop.cancel();
}
