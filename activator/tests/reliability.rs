//! Reliability suite, activator side (`docs/reliability.md`): the real `activator` binary with a
//! file source, in front of the scriptable stub pods of the queue-proxy suite, on 127.0.0.1.
//! Checks exact status codes, the pods' request counts, exit codes and panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../queue-proxy/tests/support/harness.rs"]
mod harness;
#[path = "../../queue-proxy/tests/stub/mod.rs"]
mod stub;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use harness::{HttpClient, eventually, free_port, h1, h2c};

const DEADLINE: Duration = Duration::from_secs(20);
const LONG: Duration = Duration::from_secs(60);
const HOST: &str = "rev.ns.svc.cluster.local";

/// The activator binary with a file source; killed on drop.
struct Act {
    child: Child,
    http1: SocketAddr,
    h2c: SocketAddr,
    stderr: Arc<Mutex<String>>,
    dir: std::path::PathBuf,
}

impl Drop for Act {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Act {
    fn spawn(name: &str, catalog: &str, extra: &[&str]) -> Act {
        let dir = std::env::temp_dir().join(format!("act-rel-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("catalog.yaml");
        std::fs::write(&file, catalog).unwrap();
        let (p1, p2) = (free_port(), free_port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_activator"))
            .env_clear()
            .env("POD_NAME", "a")
            .env("POD_IP", "10.0.0.1")
            .env("SYSTEM_NAMESPACE", "knative-serving")
            .args(["--source", &format!("file:{}", file.display())])
            .args(["--stats-sink", "none", "--metrics-addr", "none"])
            .args(["--http1-addr", &format!("127.0.0.1:{p1}")])
            .args(["--h2c-addr", &format!("127.0.0.1:{p2}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = harness::capture(child.stderr.take().unwrap());
        Act {
            child,
            http1: ([127, 0, 0, 1], p1).into(),
            h2c: ([127, 0, 0, 1], p2).into(),
            stderr,
            dir,
        }
    }

    fn signal(&self, sig: &str) {
        harness::signal(self.child.id(), sig);
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        harness::wait_exit(&mut self.child, within, "activator")
    }

    fn assert_no_panic(&self) {
        let err = self.stderr.lock().unwrap();
        assert!(!err.contains("panicked"), "activator panicked: {err}");
    }
}

fn catalog(cc: u32, pods: &[SocketAddr]) -> String {
    let ready: Vec<String> = pods.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "revisions:\n- namespace: ns\n  name: rev\n  containerConcurrency: {cc}\n  timeoutSeconds: 60\n  ready: [{}]\n",
        ready.join(", ")
    )
}

async fn send(
    c: &HttpClient,
    addr: SocketAddr,
    path: &str,
    within: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let req = Request::get(format!("http://{addr}{path}"))
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    harness::send_request(c, req, within).await
}

async fn serving(act: &Act) {
    eventually("revision served", DEADLINE, async || {
        matches!(
            send(&h1(), act.http1, "/", Duration::from_secs(5)).await,
            Ok((StatusCode::OK, _))
        )
    })
    .await;
}

// === 1. SIGTERM under steady load ===

/// Steady h1 (port 8012) and h2c (port 8013) load through the activator; SIGTERM mid-load with
/// a 2 s drain delay. Every request gets 200, the pod saw each exactly once, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a01_sigterm_under_steady_h1_and_h2c_load_gives_no_errors() {
    let pod = stub::start(LONG).await;
    let mut act = Act::spawn("a01", &catalog(0, &[pod.addr]), &["--drain-delay", "2s"]);
    serving(&act).await;
    let before = pod.requests();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for i in 0..8 {
        let (client, addr) = if i % 2 == 0 {
            (h1(), act.http1)
        } else {
            (h2c(), act.h2c)
        };
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let (mut ok, mut bad) = (0usize, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                match send(&client, addr, "/sleep?ms=100", DEADLINE).await {
                    Ok((StatusCode::OK, _)) => ok += 1,
                    other => bad.push(format!("{other:?}")),
                }
            }
            (i % 2 == 0, ok, bad)
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    act.signal("TERM");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(act.child.try_wait().unwrap().is_none(), "still draining");
    stop.store(true, Ordering::SeqCst);
    let (mut h1_ok, mut h2_ok, mut bad) = (0, 0, Vec::new());
    for w in workers {
        let (is_h1, ok, b) = w.await.unwrap();
        if is_h1 {
            h1_ok += ok
        } else {
            h2_ok += ok
        }
        bad.extend(b);
    }
    assert!(bad.is_empty(), "non-2xx or errors: {bad:?}");
    assert!(h1_ok > 0 && h2_ok > 0, "h1 {h1_ok}, h2c {h2_ok}");
    assert_eq!(act.wait_exit(DEADLINE).code(), Some(0));
    assert_eq!(
        pod.requests() - before,
        h1_ok + h2_ok,
        "no duplicates, none lost"
    );
    act.assert_no_panic();
}

// === 7 / 9. Bounded queue ===

/// CC = 1 and a queue of 5 (`ACTIVATOR_MAX_QUEUED_REQUESTS`): of 30 concurrent requests one
/// reaches the pod, five wait, and 24 get 503 at once while the pod still holds the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a07_bounded_queue_sheds_the_excess_at_once() {
    let pod = stub::start(LONG).await;
    let act = Act::spawn(
        "a07",
        &catalog(1, &[pod.addr]),
        &["--max-queued-requests", "5"],
    );
    serving(&act).await;
    let before = pod.requests();
    let shed = Arc::new(AtomicUsize::new(0));
    let mut reqs = Vec::new();
    for _ in 0..30 {
        let (addr, shed) = (act.http1, shed.clone());
        reqs.push(tokio::spawn(async move {
            let r = send(&h1(), addr, "/hold", LONG).await;
            if matches!(r, Ok((StatusCode::SERVICE_UNAVAILABLE, _))) {
                shed.fetch_add(1, Ordering::SeqCst);
            }
            r
        }));
    }
    eventually("24 immediate 503s", DEADLINE, async || {
        shed.load(Ordering::SeqCst) == 24
    })
    .await;
    assert_eq!(pod.requests() - before, 1, "one request at the pod");
    pod.release();
    let mut ok = 0;
    for r in reqs {
        let (s, _) = r.await.unwrap().unwrap();
        assert!(
            s == StatusCode::OK || s == StatusCode::SERVICE_UNAVAILABLE,
            "{s}"
        );
        ok += usize::from(s == StatusCode::OK);
    }
    assert_eq!(ok, 6);
    assert_eq!(pod.requests() - before, 6);
    assert_eq!(pod.max(), 1);
    act.assert_no_panic();
}

// === 11. Connection refused ===

/// Two pods, one of them a closed port: every request gets 200 from the live pod, which sees
/// each request exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a11_refused_pod_is_skipped_and_every_request_succeeds() {
    let pod = stub::start(LONG).await;
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let act = Act::spawn("a11", &catalog(0, &[dead, pod.addr]), &[]);
    serving(&act).await;
    let before = pod.requests();
    let c = h1();
    for _ in 0..20 {
        let (s, body) = send(&c, act.http1, "/", DEADLINE).await.unwrap();
        assert_eq!((s, body), (StatusCode::OK, Bytes::from("ok 0")));
    }
    assert_eq!(pod.requests() - before, 20);
    act.assert_no_panic();
}

// === 18. Ambiguous framing ===

/// The activator shares the server: CL + TE and a bad chunk get 400 and nothing is forwarded.
/// Scenario 28 in the activator: CC 2 to one pod that takes 500 ms and ignores cancellation,
/// clients that give up after 150 ms: the pod never has more than 2 requests at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a28_cc_holds_at_the_pod_when_clients_give_up() {
    let pod = stub::start(LONG).await;
    let act = Act::spawn("a28", &catalog(2, &[pod.addr]), &[]);
    serving(&act).await;
    let start = std::time::Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let addr = act.http1;
        workers.spawn(async move {
            let client = h1();
            while start.elapsed() < Duration::from_secs(3) {
                let _ = send(&client, addr, "/work?ms=500", Duration::from_millis(150)).await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    assert!(
        pod.max() <= 2,
        "the pod held {} requests at once with CC 2",
        pod.max()
    );
    act.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a18_ambiguous_framing_gets_400_with_nothing_forwarded() {
    let pod = stub::start(LONG).await;
    let act = Act::spawn("a18", &catalog(0, &[pod.addr]), &[]);
    serving(&act).await;
    let before = pod.requests();
    for req in [
        format!(
            "POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        ),
        format!(
            "POST / HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
        ),
        format!(
            "POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"
        ),
        format!(
            "POST / HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(act.http1).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
            .await
            .expect("connection closed")
            .unwrap();
        let resp = String::from_utf8_lossy(&buf);
        // Go's 501 for a transfer coding other than one `chunked`, 400 for the rest.
        let want = if req.contains("gzip") {
            "HTTP/1.1 501"
        } else {
            "HTTP/1.1 400"
        };
        assert!(resp.starts_with(want), "{resp}");
    }
    assert_eq!(pod.requests() - before, 0);
    act.assert_no_panic();
}
