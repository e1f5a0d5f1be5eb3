//! Reliability suite (`docs/reliability.md`): the real `queue-proxy` binary between a bounded
//! client and a scriptable stub upstream, all on 127.0.0.1. Every test checks exact status codes,
//! the upstream's request count (no duplicates, nothing forwarded that was rejected), that the
//! process did not panic, and gauges / fds / RSS back near baseline where the plan asks.
//!
//! Durations are shortened with env vars (`QUEUE_DRAIN_SECONDS`) and the stub's `/hold` gate
//! replaces long sleeps, so ordering never depends on timing; deadlines are generous.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/harness.rs"]
mod harness;
mod proc;
mod stub;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use harness::{eventually, free_port, h1, h2c, send};

const DEADLINE: Duration = Duration::from_secs(20);
const LONG: Duration = Duration::from_secs(60);

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, Bytes) {
    send(
        &h1(),
        "GET",
        format!("http://{addr}{path}"),
        Bytes::new(),
        DEADLINE,
    )
    .await
    .unwrap()
}

async fn probe(addr: SocketAddr) -> StatusCode {
    let req = Request::get(format!("http://{addr}/"))
        .header("user-agent", "kube-probe/1.31")
        .header("k-network-probe", "queue")
        .body(Full::new(Bytes::new()))
        .unwrap();
    tokio::time::timeout(DEADLINE, h1().request(req))
        .await
        .expect("probe answered")
        .map(|r| r.status())
        .unwrap_or(StatusCode::BAD_GATEWAY)
}

/// The autoscaler `Stat` from the metrics port.
async fn stat(qp: &proc::Qp) -> shared::stats::Stat {
    let (s, body) = get(qp.metrics, "/metrics").await;
    assert_eq!(s, StatusCode::OK);
    shared::stats::Stat::decode(body).unwrap()
}

/// `kn_serving_queue_depth` from the Prometheus port.
async fn queue_depth(qp: &proc::Qp) -> f64 {
    let (_, body) = get(qp.user_metrics, "/metrics").await;
    let text = String::from_utf8_lossy(&body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("kn_serving_queue_depth "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no queue depth in {text}"))
}

/// Pass criterion (e): the queue-depth gauge and the `Stat` concurrency settle at 0.
async fn assert_gauges_settle(qp: &proc::Qp) {
    eventually("queue depth back to 0", DEADLINE, async || {
        queue_depth(qp).await == 0.0
    })
    .await;
    // The Stat is the last completed 1 s window; an idle window reports 0 in flight.
    eventually("Stat concurrency back to 0", DEADLINE, async || {
        let s = stat(qp).await;
        s.average_concurrent_requests == 0.0 && s.request_count == 0.0
    })
    .await;
}

/// Writes `raw` on a fresh connection and reads until the server closes (or 10 s).
async fn raw(addr: SocketAddr, raw: &[u8]) -> (String, bool) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .is_ok();
    (String::from_utf8_lossy(&buf).into_owned(), closed)
}

// === 1. SIGTERM under steady load ===

/// Steady keep-alive load over h1 and h2c with a 100 ms upstream; SIGTERM mid-load. Every
/// request gets 200 (the drain keeps serving until a quiet period), probes fail once TERM is
/// seen, the upstream saw exactly the requests that succeeded, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s01_sigterm_under_steady_h1_and_h2c_load_gives_no_errors() {
    let stub = stub::start(LONG).await;
    let mut env = proc::env(stub.addr.port());
    // Longer than any plausible scheduling hiccup between a worker's last request and its stop.
    proc::set(&mut env, "QUEUE_DRAIN_SECONDS", "2");
    let mut qp = proc::spawn(env);
    let serving = qp.serving;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for i in 0..8 {
        let client = if i % 2 == 0 { h1() } else { h2c() };
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let (mut ok, mut bad) = (0usize, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let url = format!("http://{serving}/sleep?ms=100");
                match send(&client, "GET", url, Bytes::new(), DEADLINE).await {
                    Ok((StatusCode::OK, _)) => ok += 1,
                    other => bad.push(format!("{other:?}")),
                }
            }
            (i % 2 == 0, ok, bad)
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(probe(serving).await, StatusCode::OK);
    qp.signal("TERM");
    eventually("probe fails after TERM", DEADLINE, async || {
        probe(serving).await == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    // Keep the load on through the drain: new requests are still accepted and served.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        qp.child.try_wait().unwrap().is_none(),
        "still serving under load"
    );
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
    let status = qp.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0));
    // No duplicates, nothing lost: the probes never reach the upstream.
    assert_eq!(stub.requests(), h1_ok + h2_ok);
    assert_eq!(stub.now(), 0);
    qp.assert_no_panic();
}

// === 7. Bounded queue at CC = 1 ===

/// 50 concurrent requests at CC = 1: one reaches the upstream, ten queue (10 × CC), 39 get
/// `503 pending request queue full` while the upstream still holds the first; after release the
/// eleven get 200 one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s07_bounded_queue_at_cc1_admits_11_and_rejects_39_at_once() {
    let stub = stub::start(LONG).await;
    let mut env = proc::env(stub.addr.port());
    proc::set(&mut env, "CONTAINER_CONCURRENCY", "1");
    let qp = proc::spawn(env);
    let rejected = Arc::new(AtomicUsize::new(0));
    let mut reqs = Vec::new();
    for _ in 0..50 {
        let (url, rejected) = (format!("http://{}/hold", qp.serving), rejected.clone());
        reqs.push(tokio::spawn(async move {
            let r = send(&h1(), "GET", url, Bytes::new(), LONG).await;
            if matches!(r, Ok((StatusCode::SERVICE_UNAVAILABLE, _))) {
                rejected.fetch_add(1, Ordering::SeqCst);
            }
            r
        }));
    }
    // The 39 rejections arrive while the upstream is still holding the first request: they do
    // not wait for a slot.
    eventually("39 immediate 503s", DEADLINE, async || {
        rejected.load(Ordering::SeqCst) == 39
    })
    .await;
    assert_eq!(stub.requests(), 1, "only one request reached the upstream");
    // Knative's `kn.serving.queue.depth` is the breaker's in-flight count: queued + executing.
    assert_eq!(
        queue_depth(&qp).await,
        11.0,
        "ten requests queued, one executing"
    );
    stub.release();
    let mut statuses = Vec::new();
    for r in reqs {
        let (s, body) = r.await.unwrap().unwrap();
        if s == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(body, "pending request queue full\n");
        }
        statuses.push(s);
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let shed = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!((ok, shed), (11, 39), "{statuses:?}");
    assert_eq!(stub.requests(), 11, "every admitted request once");
    assert_eq!(stub.max(), 1, "the upstream never saw more than CC");
    assert_gauges_settle(&qp).await;
    qp.assert_no_panic();
}

// === 9. Sustained overload, memory bound (short CI version; benches/load/soak.sh runs 5 min) ===

/// 64 clients send 10 KiB POSTs with a 1 s client timeout into CC = 2 whose upstream never
/// answers, for 4 s. Every answer is a 503 or a client timeout (never 5xx of another kind), the
/// upstream never sees more than 2 at once, RSS stays under a ceiling, and fds and gauges return
/// to baseline once the clients are gone and the app has answered the abandoned requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09_sustained_overload_stays_bounded_and_recovers() {
    const RSS_CEILING_KIB: u64 = 64 * 1024;
    let stub = stub::start(LONG).await;
    let mut env = proc::env(stub.addr.port());
    proc::set(&mut env, "CONTAINER_CONCURRENCY", "2");
    let qp = proc::spawn(env);
    // Warm up the allocator and the pools before taking the baseline.
    for _ in 0..20 {
        assert_eq!(get(qp.serving, "/").await.0, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (rss0, fds0) = (qp.rss_kib(), qp.fds());
    let body = Bytes::from(vec![b'b'; 10 * 1024]);
    let until = Instant::now() + Duration::from_secs(4);
    let mut workers = Vec::new();
    for _ in 0..64 {
        let (url, body) = (format!("http://{}/hold", qp.serving), body.clone());
        workers.push(tokio::spawn(async move {
            let (mut shed, mut timeouts, mut other) = (0usize, 0usize, Vec::new());
            while Instant::now() < until {
                // A fresh client per request: a timed-out request leaves nothing pooled.
                let client = h1();
                let r = send(
                    &client,
                    "POST",
                    url.clone(),
                    body.clone(),
                    Duration::from_secs(1),
                );
                match r.await {
                    Ok((StatusCode::SERVICE_UNAVAILABLE, _)) => shed += 1,
                    Err(e) if e == "timeout" => timeouts += 1,
                    r => other.push(format!("{r:?}")),
                }
            }
            (shed, timeouts, other)
        }));
    }
    let mut peak = 0;
    while Instant::now() < until {
        peak = peak.max(qp.rss_kib());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut shed, mut timeouts, mut other) = (0, 0, Vec::new());
    for w in workers {
        let (s, t, o) = w.await.unwrap();
        shed += s;
        timeouts += t;
        other.extend(o);
    }
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    assert!(shed > 0 && timeouts > 0, "shed {shed}, timeouts {timeouts}");
    // The slot of a request whose client gave up is kept until the app answered (scenario
    // 28), so the upstream never had more than CC at once.
    assert!(stub.max() <= 2, "the upstream held {} at once", stub.max());
    assert!(
        peak < rss0 + RSS_CEILING_KIB,
        "RSS peaked at {peak} KiB from a {rss0} KiB baseline"
    );
    // The app finishes the abandoned work; then the slots, the upstream connections and the
    // fds are free, and a fresh request is served.
    stub.release();
    eventually("fds back near baseline", DEADLINE, async || {
        qp.fds() <= fds0 + 4
    })
    .await;
    assert_eq!(get(qp.serving, "/").await.0, StatusCode::OK);
    assert_gauges_settle(&qp).await;
    eprintln!(
        "s09: {shed} shed, {timeouts} client timeouts, RSS {rss0} KiB → peak {peak} KiB, fds {fds0} → {}",
        qp.fds()
    );
    qp.assert_no_panic();
}

// === 11. Connection refused ===

/// Nothing listens on `USER_PORT`: 502 with Go's dial error, at once, for GET and POST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_refused_upstream_gives_502_naming_the_dial() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let qp = proc::spawn(proc::env(port));
    for method in ["GET", "POST"] {
        let url = format!("http://{}/", qp.serving);
        let (s, body) = send(&h1(), method, url, Bytes::from("x"), DEADLINE)
            .await
            .unwrap();
        assert_eq!(s, StatusCode::BAD_GATEWAY);
        assert_eq!(
            body,
            format!("dial tcp 127.0.0.1:{port}: connect: connection refused\n")
        );
    }
    assert_gauges_settle(&qp).await;
    qp.assert_no_panic();
}

// === 12. Upstream crash before headers ===

/// The upstream reads a POST and closes without answering: 502, and the POST is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_crash_before_headers_gives_502_without_a_retry() {
    let stub = stub::start(LONG).await;
    let qp = proc::spawn(proc::env(stub.addr.port()));
    let url = format!("http://{}/crash", qp.serving);
    let (s, _) = send(&h1(), "POST", url, Bytes::from("payload"), DEADLINE)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert_eq!(
        stub.requests(),
        1,
        "a POST that reached the upstream is never re-sent"
    );
    // A bodiless GET is replayable (Go's rule for the stale keep-alive race): retried once.
    assert_eq!(get(qp.serving, "/crash").await.0, StatusCode::BAD_GATEWAY);
    assert_eq!(stub.requests(), 3, "the GET was sent twice, never more");
    assert_gauges_settle(&qp).await;
    qp.assert_no_panic();
}

// === 13. Upstream crash mid-body ===

/// The upstream announces 1000 bytes, sends 100 and dies. HTTP/1: the client gets the 200 head
/// and 100 bytes, then the connection closes (never a complete body, never a 502 appended).
/// h2c: the stream is reset, so the body ends in an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_crash_mid_body_aborts_the_response() {
    let stub = stub::start(LONG).await;
    let qp = proc::spawn(proc::env(stub.addr.port()));
    let (resp, closed) = raw(
        qp.serving,
        b"GET /abort?after=100 HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await;
    assert!(closed, "the connection is closed");
    let (head, body) = resp.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 1000"),
        "{head}"
    );
    assert_eq!(body, "x".repeat(100), "exactly the bytes the upstream sent");
    let url = format!("http://{}/abort?after=100", qp.serving);
    let r = send(&h2c(), "GET", url, Bytes::new(), DEADLINE).await;
    assert!(
        matches!(&r, Err(e) if e.starts_with("body")),
        "h2 body must fail: {r:?}"
    );
    assert_eq!(stub.requests(), 2);
    assert_gauges_settle(&qp).await;
    qp.assert_no_panic();
}

// === 14. Stale keep-alive race ===

/// The upstream closes idle connections after 1 s; requests arrive on one keep-alive client at
/// periods around that timeout. Every request gets 200 and reaches the upstream exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_stale_keep_alive_race_gives_no_errors() {
    let stub = stub::start(Duration::from_secs(1)).await;
    let qp = proc::spawn(proc::env(stub.addr.port()));
    let client = h1();
    let periods = [1000u64, 950, 1000, 1050, 1000, 980, 1020, 1000, 1000, 1000];
    for (i, ms) in periods.iter().enumerate() {
        let url = format!("http://{}/", qp.serving);
        let r = send(&client, "GET", url, Bytes::new(), DEADLINE).await;
        assert!(matches!(&r, Ok((StatusCode::OK, _))), "request {i}: {r:?}");
        tokio::time::sleep(Duration::from_millis(*ms)).await;
    }
    assert_eq!(stub.requests(), periods.len(), "no duplicates");
    assert!(
        stub.connections() > 1,
        "the upstream did close idle connections"
    );
    qp.assert_no_panic();
}

// === 17. Oversized headers ===

/// A single 70 KiB header, 201 headers, and 80 KiB spread over 40 headers: 431, connection
/// closed, nothing forwarded, no RSS spike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s17_oversized_headers_get_431_with_nothing_forwarded() {
    let stub = stub::start(LONG).await;
    let qp = proc::spawn(proc::env(stub.addr.port()));
    assert_eq!(get(qp.serving, "/").await.0, StatusCode::OK);
    let rss0 = qp.rss_kib();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let mut many = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
    for i in 0..201 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let mut total = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
    for i in 0..40 {
        total.push_str(&format!("X-T{i}: {}\r\n", "t".repeat(2048)));
    }
    total.push_str("\r\n");
    for (name, req) in [
        ("70 KiB header", big),
        ("201 headers", many),
        ("80 KiB total", total),
    ] {
        for _ in 0..5 {
            let (resp, closed) = raw(qp.serving, req.as_bytes()).await;
            assert!(resp.starts_with("HTTP/1.1 431"), "{name}: {resp}");
            assert!(closed, "{name}: connection closed");
        }
    }
    // The same field-count rule on HTTP/2 (h2 itself bounds only the head's bytes).
    let mut req = Request::get(format!("http://{}/", qp.serving));
    for i in 0..201 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let (status, _) = harness::send_request(&h2c(), req, DEADLINE).await.unwrap();
    assert_eq!(
        status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "h2c 201 fields"
    );
    assert_eq!(
        stub.requests(),
        1,
        "only the first, well-formed request was forwarded"
    );
    assert!(qp.rss_kib() < rss0 + 16 * 1024, "no RSS spike");
    qp.assert_no_panic();
}

// === 18. Malformed and ambiguous framing ===

/// Request-smuggling shapes get 400 and a closed connection, and the upstream receives nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18_ambiguous_framing_gets_400_with_nothing_forwarded() {
    let stub = stub::start(LONG).await;
    let qp = proc::spawn(proc::env(stub.addr.port()));
    let cases: [(&str, &[u8]); 11] = [
        (
            "CL then TE",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        ),
        (
            "TE then CL",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "CL + TE on a second request",
            b"GET / HTTP/1.1\r\nHost: h\r\n\r\nPOST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "two Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        ),
        (
            "invalid chunk size",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "TE not chunked",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n",
        ),
        ("invalid method token", b"G@T / HTTP/1.1\r\nHost: h\r\n\r\n"),
        ("CONNECT origin-form", b"CONNECT / HTTP/1.1\r\nHost: h\r\n\r\n"),
        ("HTTP/1.0 CONNECT", b"CONNECT h:80 HTTP/1.0\r\nHost: h\r\n\r\n"),
        (
            "identical Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        ),
    ];
    let mut ext = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;e=".to_vec();
    ext.extend(std::iter::repeat_n(b'x', 64 * 1024));
    ext.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
    let cases = cases
        .into_iter()
        .chain([("64 KiB chunk extension", &ext[..])]);
    for (name, req) in cases {
        let (resp, closed) = raw(qp.serving, req).await;
        // The "second request" case first gets its well-formed GET answered.
        let last = resp.rsplit("HTTP/1.").next().unwrap_or("");
        assert!(
            last.get(2..).is_some_and(|l| l.starts_with("400")),
            "{name}: {resp}"
        );
        assert!(closed, "{name}: connection closed");
        assert!(!resp.contains("smuggled"), "{name}: {resp}");
    }
    // Transfer codings other than one `chunked` get Go's 501 (hyper would drop `gzip` and
    // forward gzip bytes labelled `chunked`).
    for te in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: identity, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let req = format!("POST / HTTP/1.1\r\nHost: h\r\n{te}\r\n3\r\nabc\r\n0\r\n\r\n");
        let (resp, closed) = raw(qp.serving, req.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 501"), "{te}: {resp}");
        assert!(
            resp.ends_with("Unsupported transfer encoding\n"),
            "{te}: {resp}"
        );
        assert!(closed, "{te}: connection closed");
    }
    assert_eq!(
        stub.requests(),
        1,
        "only the well-formed GET before the smuggling attempt was forwarded"
    );
    qp.assert_no_panic();
}

// === 23. Idle-connection flood ===

/// The HTTP/2 preface and an empty SETTINGS frame: all an idle h2c client sends.
const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// A descriptor limit of 256 (so the connection bound is 192) and 400 idle h2c connections:
/// the ones over the bound are closed at once, a keep-alive client connected before the flood
/// keeps being served (its upstream dials come from the reserve), the accept loop does not
/// log a warning per connection, and once the flood leaves new clients are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s23_idle_connection_flood_is_shed_while_open_clients_are_served() {
    let stub = stub::start(LONG).await;
    let qp = proc::spawn_with_nofile(proc::env(stub.addr.port()), 256);
    // A raw keep-alive connection, so no client pool can quietly dial a new one.
    let mut kept = tokio::net::TcpStream::connect(qp.serving).await.unwrap();
    async fn ask_on(s: &mut tokio::net::TcpStream) -> String {
        s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let mut b = [0u8; 1024];
        while !buf.ends_with(b"ok 0") {
            let n = tokio::time::timeout(DEADLINE, s.read(&mut b))
                .await
                .unwrap()
                .unwrap();
            assert!(
                n > 0,
                "kept connection closed: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&b[..n]);
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
    assert!(ask_on(&mut kept).await.starts_with("HTTP/1.1 200"));
    let mut flood = Vec::new();
    for _ in 0..400 {
        let Ok(mut s) = tokio::net::TcpStream::connect(qp.serving).await else {
            continue;
        };
        if s.write_all(H2_HELLO).await.is_ok() {
            flood.push(s);
        }
    }
    // The shed ones see their connection closed.
    let mut closed = 0;
    for s in &mut flood {
        let mut b = [0u8; 256];
        loop {
            match tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await {
                Ok(Ok(0) | Err(_)) => {
                    closed += 1;
                    break;
                }
                Ok(Ok(_)) => {}
                Err(_) => break,
            }
        }
    }
    assert!(closed >= 400 - 192, "{closed} of 400 shed");
    // The client connected before the flood is served throughout.
    for _ in 0..5 {
        assert!(ask_on(&mut kept).await.starts_with("HTTP/1.1 200"));
    }
    // The accept loop's warnings are rate-limited (one per 10 s, with a count held back).
    let out = qp.stdout.lock().unwrap().clone();
    let noisy = out
        .iter()
        .filter(|l| l.contains("accept failed") || l.contains("too many open connections"))
        .count();
    assert!(noisy <= 2, "{noisy} accept-loop warnings");
    drop(flood);
    let url = format!("http://{}/", qp.serving);
    eventually("new clients served after the flood", DEADLINE, async || {
        send(&h1(), "GET", url.clone(), Bytes::new(), DEADLINE)
            .await
            .is_ok_and(|r| r.0 == StatusCode::OK)
    })
    .await;
    qp.assert_no_panic();
}

// === 24. Paced rapid reset ===

/// HEADERS, a pause, RST_STREAM, repeated on one h2c connection to an app that ignores
/// cancellation at CC 1: the connection ends in GOAWAY long before 1 000 resets, and the app
/// never has more than one request at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s24_paced_rapid_reset_ends_in_goaway() {
    let stub = stub::start(LONG).await;
    let mut env = proc::env(stub.addr.port());
    proc::set(&mut env, "CONTAINER_CONCURRENCY", "1");
    let qp = proc::spawn(env);
    let io =
        hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(qp.serving).await.unwrap());
    let (mut send_req, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let mut resets = 0;
    for _ in 0..1000 {
        if send_req.ready().await.is_err() {
            break;
        }
        let req = Request::get(format!("http://{}/work?ms=200", qp.serving))
            .body(Full::new(Bytes::new()))
            .unwrap();
        match tokio::time::timeout(Duration::from_millis(1), send_req.send_request(req)).await {
            Ok(Err(_)) => break,
            Ok(Ok(r)) => panic!("answered before the reset: {r:?}"),
            Err(_) => resets += 1,
        }
    }
    assert!(resets < 1000, "no GOAWAY after {resets} resets");
    let _ = tokio::time::timeout(DEADLINE, conn)
        .await
        .expect("connection closed");
    assert!(
        stub.max() <= 1,
        "the app held {} requests at CC 1",
        stub.max()
    );
    qp.assert_no_panic();
}

// === 25. One header-read deadline ===

/// A head that starts with "P" (it could be the HTTP/2 preface) and trickles the rest: closed
/// at the one 2 s header deadline, not after a fresh timer per stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s25_one_header_deadline_per_request_head() {
    let stub = stub::start(LONG).await;
    let mut env = proc::env(stub.addr.port());
    proc::set(&mut env, "QUEUE_HEADER_READ_TIMEOUT_SECONDS", "2");
    let qp = proc::spawn(env);
    let start = Instant::now();
    let mut s = tokio::net::TcpStream::connect(qp.serving).await.unwrap();
    s.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"OST / HTTP/1.1\r\nHost: h\r\n").await.unwrap();
    for i in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if s.write_all(format!("X-{i}: v\r\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
        let mut b = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await
        {
            break;
        }
    }
    let open_for = start.elapsed();
    assert!(
        open_for < Duration::from_millis(3200),
        "open for {open_for:?}"
    );
    assert_eq!(stub.requests(), 0);
    qp.assert_no_panic();
}

// === 28. containerConcurrency holds at the app when clients give up ===

/// Knative #13583's shape, shortened: CC 2, an app that takes 500 ms and ignores cancellation,
/// 16 clients that give up after 150 ms and retry at once, for 3 s. The app never has more than
/// 2 requests at once (the slot is kept until the app answered), and requests whose client had
/// gone while queued are not forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s28_cc_holds_at_the_app_when_clients_give_up() {
    let stub = stub::start(LONG).await;
    let mut env = proc::env(stub.addr.port());
    proc::set(&mut env, "CONTAINER_CONCURRENCY", "2");
    let qp = proc::spawn(env);
    assert_eq!(get(qp.serving, "/").await.0, StatusCode::OK);
    let before = stub.requests();
    let run = Duration::from_secs(3);
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let addr = qp.serving;
        workers.spawn(async move {
            let client = h1();
            while start.elapsed() < run {
                let _ = send(
                    &client,
                    "GET",
                    format!("http://{addr}/work?ms=500"),
                    Bytes::new(),
                    Duration::from_millis(150),
                )
                .await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    assert!(
        stub.max() <= 2,
        "the app held {} requests at once with CC 2",
        stub.max()
    );
    // At most 2 slots × (3 s + the last 0.5 s) / 0.5 s reach the app.
    let forwarded = stub.requests() - before;
    assert!(forwarded <= 2 * 7 + 2, "{forwarded} forwarded");
    // Once the abandoned work is done, the slots are free again.
    eventually("slots freed", DEADLINE, async || {
        get(qp.serving, "/").await.0 == StatusCode::OK
    })
    .await;
    assert_gauges_settle(&qp).await;
    qp.assert_no_panic();
}

// === 2. Long request across TERM ===

/// A 3 s request (the plan's 12 s, shortened), SIGTERM 0.5 s in: 200 with the full body, and
/// the process stays up until it is done, then exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s02_long_request_across_term_completes() {
    let stub = stub::start(LONG).await;
    let mut qp = proc::spawn(proc::env(stub.addr.port()));
    let url = format!("http://{}/sleep?ms=3000", qp.serving);
    let long = tokio::spawn(async move { send(&h1(), "GET", url, Bytes::new(), LONG).await });
    eventually("request at the upstream", DEADLINE, async || {
        stub.now() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    qp.signal("TERM");
    assert_eq!(
        long.await.unwrap().unwrap(),
        (StatusCode::OK, Bytes::from("slept"))
    );
    assert_eq!(qp.wait_exit(DEADLINE).code(), Some(0));
    assert_eq!(stub.requests(), 1);
    qp.assert_no_panic();
}

// === 3. Bodies still streaming at TERM ===

/// Fifty 16 KiB responses (25 over h1, 25 as h2c streams on one connection) have their heads
/// but not their bodies when SIGTERM arrives: every body arrives complete and byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s03_bodies_streaming_at_term_arrive_whole() {
    let stub = stub::start(LONG).await;
    let mut qp = proc::spawn(proc::env(stub.addr.port()));
    let (h1c, h2c) = (h1(), h2c());
    let headers = Arc::new(AtomicUsize::new(0));
    let mut streams = Vec::new();
    for i in 0..50 {
        let client = if i % 2 == 0 { h1c.clone() } else { h2c.clone() };
        let url = format!("http://{}/stream?chunks=16&size=1024&ms=100", qp.serving);
        let headers = headers.clone();
        streams.push(tokio::spawn(async move {
            let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
            let resp = tokio::time::timeout(DEADLINE, client.request(req))
                .await
                .expect("head in time")
                .expect("head");
            assert_eq!(resp.status(), StatusCode::OK);
            headers.fetch_add(1, Ordering::SeqCst);
            tokio::time::timeout(DEADLINE, resp.into_body().collect())
                .await
                .expect("body in time")
                .map(|b| b.to_bytes())
        }));
    }
    eventually("50 heads received", DEADLINE, async || {
        headers.load(Ordering::SeqCst) == 50
    })
    .await;
    qp.signal("TERM");
    for s in streams {
        let body = s.await.unwrap().expect("complete body");
        assert_eq!(body, Bytes::from(vec![b'x'; 16 * 1024]));
    }
    assert_eq!(qp.wait_exit(DEADLINE).code(), Some(0));
    assert_eq!(stub.requests(), 50);
    qp.assert_no_panic();
}

// === 6. SIGKILL and immediate restart on the same ports ===

/// SIGKILL with open client connections, then an immediate restart on the same four ports:
/// it binds at once, and readiness stays 503 until the user container listens (no 200 before
/// the upstream is ready).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_sigkill_and_restart_binds_the_same_ports() {
    let user_port = free_port();
    let mut env = proc::env(user_port);
    for key in [
        "QUEUE_SERVING_PORT",
        "QUEUE_ADMIN_PORT",
        "QUEUE_METRICS_PORT",
        "QUEUE_USER_METRICS_PORT",
    ] {
        proc::set(&mut env, key, &free_port().to_string());
    }
    proc::set(
        &mut env,
        "SERVING_READINESS_PROBE",
        &format!(
            r#"{{"tcpSocket":{{"port":{user_port},"host":"127.0.0.1"}},"successThreshold":1,"failureThreshold":1,"periodSeconds":1,"timeoutSeconds":1}}"#
        ),
    );
    let stub = stub::start_on(
        tokio::net::TcpListener::bind(("127.0.0.1", user_port))
            .await
            .unwrap(),
        LONG,
    );
    let mut first = proc::spawn(env.clone());
    let serving = first.serving;
    eventually("first instance ready", DEADLINE, async || {
        probe(serving).await == StatusCode::OK
    })
    .await;
    // Connections open at kill time leave sockets behind on the server side.
    let client = h1();
    let url = format!("http://{serving}/sleep?ms=5000");
    let pending = tokio::spawn({
        let client = client.clone();
        async move { send(&client, "GET", url, Bytes::new(), DEADLINE).await }
    });
    eventually("request in flight", DEADLINE, async || stub.now() == 1).await;
    first.signal("KILL");
    first.wait_exit(DEADLINE);
    assert!(pending.await.unwrap().is_err(), "the killed request fails");
    // The user container is "restarting" too: nothing listens on its port.
    drop(stub);
    let second = proc::spawn(env);
    assert_eq!(second.serving, serving, "same port");
    // No 200 before the upstream is ready.
    for _ in 0..5 {
        assert_eq!(probe(serving).await, StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stub = stub::start_on(
        tokio::net::TcpListener::bind(("127.0.0.1", user_port))
            .await
            .unwrap(),
        LONG,
    );
    eventually("ready once the app listens", DEADLINE, async || {
        probe(serving).await == StatusCode::OK
    })
    .await;
    assert_eq!(get(serving, "/").await.0, StatusCode::OK);
    assert_eq!(stub.requests(), 1);
    second.assert_no_panic();
}

// === 20. Large and slow bodies ===

/// A 64 MiB upload and a 64 MiB download read slowly stream through with backpressure: the
/// bytes arrive exact and RSS stays within 32 MiB of baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s20_large_bodies_stream_with_bounded_memory() {
    const MIB: usize = 1024 * 1024;
    let stub = stub::start(LONG).await;
    let qp = proc::spawn(proc::env(stub.addr.port()));
    assert_eq!(get(qp.serving, "/").await.0, StatusCode::OK);
    let rss0 = qp.rss_kib();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(rss0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, pid) = (peak.clone(), done.clone(), qp.pid());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    let rss = s
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                        .unwrap_or(0);
                    peak.fetch_max(rss, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // Upload: a streamed chunked body of 64 × 1 MiB; the stub counts what it read.
    let (mut tx, body) =
        http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(4);
    let upload_client: Client<HttpConnector, _> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("http://{}/upload", qp.serving))
        .body(body)
        .unwrap();
    let resp = tokio::spawn(async move { upload_client.request(req).await });
    for _ in 0..64 {
        tx.send_data(Bytes::from(vec![b'u'; MIB])).await.unwrap();
    }
    drop(tx);
    let resp = tokio::time::timeout(LONG, resp)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, format!("ok {}", 64 * MIB));
    // Download: 64 MiB, read in pauses so the queue-proxy must hold back the upstream.
    let req = Request::get(format!(
        "http://{}/stream?chunks=1024&size=65536&ms=0",
        qp.serving
    ))
    .body(Full::new(Bytes::new()))
    .unwrap();
    let resp = h1().request(req).await.unwrap();
    let mut body = resp.into_body();
    let (mut n, mut frames) = (0usize, 0usize);
    while let Some(f) = body.frame().await {
        let f = f.unwrap();
        if let Some(d) = f.data_ref() {
            assert!(d.iter().all(|b| *b == b'x'));
            n += d.len();
        }
        frames += 1;
        if frames % 64 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(n, 64 * MIB);
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::SeqCst);
    eprintln!("s20: RSS {rss0} KiB → peak {peak} KiB while streaming 2 × 64 MiB");
    assert!(
        peak < rss0 + 32 * 1024,
        "RSS peaked at {peak} KiB from a {rss0} KiB baseline"
    );
    assert_eq!(stub.requests(), 3);
    qp.assert_no_panic();
}

// === 4. Upgraded WebSocket at TERM ===

/// A WebSocket session open at SIGTERM keeps exchanging frames after the serving listener has
/// closed (new connections are refused by then); when the client closes it, the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04_websocket_across_term_keeps_working_until_closed() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Ws;
    let stub = stub::start(LONG).await;
    let mut qp = proc::spawn(proc::env(stub.addr.port()));
    let (mut ws, resp) = tokio::time::timeout(
        DEADLINE,
        tokio_tungstenite::connect_async(format!("ws://{}/ws", qp.serving)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let echo = async |ws: &mut tokio_tungstenite::WebSocketStream<_>, m: &str| {
        ws.send(Ws::text(m)).await.unwrap();
        let got = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("echo in time")
            .expect("socket open")
            .expect("frame");
        assert_eq!(got.into_text().unwrap().as_str(), m);
    };
    echo(&mut ws, "before").await;
    qp.signal("TERM");
    // The quiet period (1 s) passes and the serving listener closes; the tunnel stays up.
    let serving = qp.serving;
    eventually("serving listener closed", DEADLINE, async || {
        tokio::net::TcpStream::connect(serving).await.is_err()
    })
    .await;
    for i in 0..5 {
        echo(&mut ws, &format!("after {i}")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        qp.child.try_wait().unwrap().is_none(),
        "waits for the tunnel"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    assert_eq!(qp.wait_exit(DEADLINE).code(), Some(0));
    qp.assert_no_panic();
}

// === 10. Client cancels while queued ===

/// At CC = 1, a request queued behind a held one is abandoned by its client: it never reaches
/// the upstream, its slot is freed, and the gauges settle at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_cancelled_while_queued_never_reaches_the_upstream() {
    let stub = stub::start(LONG).await;
    let mut env = proc::env(stub.addr.port());
    proc::set(&mut env, "CONTAINER_CONCURRENCY", "1");
    let qp = proc::spawn(env);
    let url = format!("http://{}/hold", qp.serving);
    let first = tokio::spawn({
        let url = url.clone();
        async move { send(&h1(), "GET", url, Bytes::new(), LONG).await }
    });
    eventually("first request at the upstream", DEADLINE, async || {
        stub.now() == 1
    })
    .await;
    let second = tokio::spawn(async move { send(&h1(), "GET", url, Bytes::new(), LONG).await });
    eventually("second request queued", DEADLINE, async || {
        queue_depth(&qp).await == 2.0
    })
    .await;
    second.abort();
    let _ = second.await;
    eventually(
        "the abandoned request left the queue",
        DEADLINE,
        async || queue_depth(&qp).await == 1.0,
    )
    .await;
    stub.release();
    assert_eq!(first.await.unwrap().unwrap().0, StatusCode::OK);
    assert_eq!(
        stub.requests(),
        1,
        "the cancelled request never reached the upstream"
    );
    assert_eq!(get(qp.serving, "/").await.0, StatusCode::OK);
    assert_eq!(stub.requests(), 2);
    assert_gauges_settle(&qp).await;
    qp.assert_no_panic();
}

// === Memory after a burst ===

/// 600 keep-alive connections each send one request (the proxy keeps ≈ 27 KiB per connection
/// and its pooled upstream connection), then all close. RSS must come back near the baseline:
/// glibc keeps freed memory in its arenas unless trimmed (`shared::memory`); before the trim
/// loop the sidecar stayed at the peak for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_returns_after_a_burst_of_connections() {
    const CONNS: usize = 600;
    let stub = stub::start(LONG).await;
    let qp = proc::spawn(proc::env(stub.addr.port()));
    for _ in 0..20 {
        assert_eq!(get(qp.serving, "/").await.0, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss0 = qp.rss_kib();
    let mut socks = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        let mut s = tokio::net::TcpStream::connect(qp.serving).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        socks.push(s);
    }
    for s in &mut socks {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    }
    let peak = qp.rss_kib();
    assert!(
        peak > rss0 + 8 * 1024,
        "the burst should cost memory: {rss0} → {peak} KiB"
    );
    drop(socks);
    // At least two thirds given back (without the trim loop RSS stays at the peak).
    let ceiling = rss0 + (peak - rss0) / 3;
    eventually("RSS back near the baseline", DEADLINE, async || {
        qp.rss_kib() < ceiling
    })
    .await;
    eprintln!(
        "memory: RSS {rss0} KiB → {peak} KiB with {CONNS} connections → {} KiB after",
        qp.rss_kib()
    );
    qp.assert_no_panic();
}
