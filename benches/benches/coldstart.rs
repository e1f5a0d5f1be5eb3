//! Cold start (issue 8 item 3, benchmarking.md §5.7): requests held by the real activator
//! binary while its only pod is not listening; the backend starts 200 ms after every request is
//! held; the metric is *backend listening → first byte of each response* at the client.
//!
//! Variants:
//! - `activator`: activator → fake pod (a hyper server answering the activator's probe with
//!   `queue`); the file source lists the pod as ready, nothing listens there yet.
//! - `activator+qp`: activator → real queue-proxy binary → app. The queue-proxy runs from the
//!   start with a TCP readiness probe (aggressive mode) on an app port nobody listens on; the
//!   app starts later. This is Knative's scale-from-zero path once the pod is scheduled. (The
//!   queue-proxy alone does not hold requests, like Knative's: before its app listens it
//!   answers probes 503 and requests 502, so the activator is what holds them.)
//!
//! Not criterion: a `harness = false` bench that drives the release binaries.
//!
//! ```text
//! cargo build --release -p activator -p queue-proxy
//! cargo bench -p benches --bench coldstart -- [--n 1,100,1000] [--trials 20] \
//!     [--bin target/release] [--variants activator,activator+qp] [--out benches/load/out]
//! ```
//!
//! Under `cargo test` (no `--bench` argument) it only checks its arguments and returns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const REV: &str = "cold-00001";
const NS: &str = "default";
/// Every wait in a trial is bounded by this.
const DEADLINE: Duration = Duration::from_secs(30);
/// Time between "every request is held" and the backend listening (§5.7 step 3).
const BACKEND_DELAY: Duration = Duration::from_millis(200);

struct Args {
    ns: Vec<usize>,
    trials: usize,
    bin: PathBuf,
    variants: Vec<String>,
    out: PathBuf,
    bench: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        ns: vec![1, 100, 1000],
        trials: 20,
        // `cargo bench` runs this from the package directory; the binaries are the workspace's.
        bin: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release"),
        variants: vec!["activator".into(), "activator+qp".into()],
        out: Path::new(env!("CARGO_MANIFEST_DIR")).join("load/out"),
        bench: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" => a.bench = true,
            "--n" => {
                a.ns = val()
                    .split(',')
                    .map(|s| s.parse().expect("--n: numbers"))
                    .collect()
            }
            "--trials" => a.trials = val().parse().expect("--trials: a number"),
            "--bin" => a.bin = PathBuf::from(val()),
            "--variants" => a.variants = val().split(',').map(str::to_owned).collect(),
            "--out" => a.out = PathBuf::from(val()),
            _ => {} // cargo/libtest flags
        }
    }
    for v in &a.variants {
        assert!(
            v == "activator" || v == "activator+qp",
            "unknown variant {v} (activator, activator+qp)"
        );
    }
    a
}

/// A port that was free a moment ago (bound then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_listening(port: u16) {
    let end = Instant::now() + DEADLINE;
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < end, "port {port} never opened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Kills the child on drop, so a panicking trial leaves nothing behind.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_activator(bin: &Path, dir: &Path, dest: u16, port: u16, mport: u16) -> Proc {
    let src = dir.join(format!("cold-{port}.yaml"));
    std::fs::write(
        &src,
        format!(
            "revisions:\n  - namespace: {NS}\n    name: {REV}\n    containerConcurrency: 0\n    \
             ready: [\"127.0.0.1:{dest}\"]\n"
        ),
    )
    .unwrap();
    let child = Command::new(bin.join("activator"))
        .args(["--source", &format!("file:{}", src.display())])
        .args(["--stats-sink", "none"])
        .args(["--http1-addr", &format!("127.0.0.1:{port}")])
        .args(["--h2c-addr", "127.0.0.1:0"])
        .args(["--metrics-addr", &format!("127.0.0.1:{mport}")])
        .env("POD_NAME", "bench-activator")
        .env("POD_IP", "127.0.0.1")
        .env("SYSTEM_NAMESPACE", "knative-serving")
        .env("ACTIVATOR_LOG_LEVEL", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("activator binary (cargo build --release -p activator)");
    Proc(child)
}

fn start_queue_proxy(bin: &Path, port: u16, app: u16) -> Proc {
    let probe =
        format!(r#"{{"tcpSocket":{{"port":{app},"host":"127.0.0.1"}},"successThreshold":1}}"#);
    let child = Command::new(bin.join("queue-proxy"))
        .env_clear()
        .env("SERVING_NAMESPACE", NS)
        .env("SERVING_CONFIGURATION", "cold")
        .env("SERVING_REVISION", REV)
        .env("SERVING_POD", "cold-pod")
        .env("SERVING_POD_IP", "127.0.0.1")
        .env("SERVING_SERVICE", "cold")
        .env("QUEUE_SERVING_PORT", port.to_string())
        .env("QUEUE_SERVING_TLS_PORT", "8112")
        .env("QUEUE_ADMIN_PORT", free_port().to_string())
        .env("QUEUE_METRICS_PORT", free_port().to_string())
        .env("QUEUE_USER_METRICS_PORT", "0")
        .env("USER_PORT", app.to_string())
        .env("CONTAINER_CONCURRENCY", "0")
        .env("REVISION_TIMEOUT_SECONDS", "300")
        .env("SERVING_READINESS_PROBE", probe)
        .env("REVISION_RESPONSE_START_TIMEOUT_SECONDS", "0")
        .env("REVISION_IDLE_TIMEOUT_SECONDS", "0")
        .env("SERVING_LOGGING_CONFIG", "")
        .env("SERVING_LOGGING_LEVEL", "error")
        .env("ENABLE_PROFILING", "false")
        .env("SERVING_ENABLE_PROBE_REQUEST_LOG", "false")
        .env("SERVING_ENABLE_REQUEST_LOG", "false")
        .env("METRICS_COLLECTOR_ADDRESS", "")
        .env("ENABLE_HTTP2_AUTO_DETECTION", "false")
        .env("ENABLE_HTTP_FULL_DUPLEX", "false")
        .env("ROOT_CA", "")
        .env("SYSTEM_NAMESPACE", "knative-serving")
        .env("OBSERVABILITY_CONFIG", "{}")
        .env("QUEUE_DRAIN_SECONDS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("queue-proxy binary (cargo build --release -p queue-proxy)");
    Proc(child)
}

/// Sum of the activator's `kn_revision_request_queued` gauge.
async fn queued(mport: u16) -> usize {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", mport)).await else {
        return 0;
    };
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body).await;
    body.lines()
        .filter(|l| l.starts_with("kn_revision_request_queued{") && l.contains(REV))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as usize)
        .sum()
}

/// One client request on its own connection: (first byte instant, whole response OK).
async fn client(port: u16) -> (Instant, bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.set_nodelay(true).unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: cold.{NS}.example.com\r\nKnative-Serving-Namespace: {NS}\r\n\
         Knative-Serving-Revision: {REV}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap_or(0);
    let first = Instant::now();
    let mut resp = buf[..n].to_vec();
    let _ = s.read_to_end(&mut resp).await;
    (first, resp.starts_with(b"HTTP/1.1 200"))
}

/// The backend: answers the activator's probe (`K-Network-Probe: queue` → `queue`) and any
/// other request with 200 `ok`. Returns the instant right after `listen()`.
async fn start_backend(port: u16) -> (Instant, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    let listening = Instant::now();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let probe = req
                        .headers()
                        .get("k-network-probe")
                        .is_some_and(|v| v == "queue");
                    let body = if probe { "queue" } else { "ok" };
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (listening, task)
}

struct Trial {
    first_byte_ms: Vec<f64>,
    drain_ms: f64,
    failed: usize,
}

async fn trial(a: &Args, dir: &Path, variant: &str, n: usize) -> Trial {
    let (port, mport, backend) = (free_port(), free_port(), free_port());
    let mut procs = Vec::new();
    let dest = if variant == "activator+qp" {
        let qp = free_port();
        procs.push(start_queue_proxy(&a.bin, qp, backend));
        wait_listening(qp).await;
        qp
    } else {
        backend
    };
    procs.push(start_activator(&a.bin, dir, dest, port, mport));
    wait_listening(port).await;
    wait_listening(mport).await;

    let clients: Vec<_> = (0..n).map(|_| tokio::spawn(client(port))).collect();
    let end = Instant::now() + DEADLINE;
    while queued(mport).await < n {
        assert!(Instant::now() < end, "{n} requests never all held");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(BACKEND_DELAY).await;
    let (listening, server) = start_backend(backend).await;
    let mut t = Trial {
        first_byte_ms: Vec::with_capacity(n),
        drain_ms: 0.0,
        failed: 0,
    };
    let mut last = listening;
    for c in clients {
        let (first, ok) = tokio::time::timeout(DEADLINE, c)
            .await
            .expect("response within the deadline")
            .unwrap();
        t.first_byte_ms
            .push(first.saturating_duration_since(listening).as_secs_f64() * 1e3);
        last = last.max(first);
        t.failed += usize::from(!ok);
    }
    t.drain_ms = last.saturating_duration_since(listening).as_secs_f64() * 1e3;
    server.abort();
    drop(procs);
    t
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// (total, steal) jiffies from /proc/stat.
fn cpu_steal() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    (v.iter().sum(), v.get(7).copied().unwrap_or(0))
}

fn main() {
    let a = parse_args();
    if !a.bench {
        println!("coldstart: drives release binaries; run with `cargo bench --bench coldstart`");
        return;
    }
    std::fs::create_dir_all(&a.out).unwrap();
    let dir = std::env::temp_dir().join(format!("coldstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut tsv = std::fs::File::create(a.out.join("coldstart.tsv")).unwrap();
    writeln!(
        tsv,
        "variant\tn\ttrial\tp50_ms\tp99_ms\tmax_ms\tdrain_ms\tfailed"
    )
    .unwrap();
    println!(
        "| variant | held N | trials | samples | first byte p50 ms | p99 ms | max ms | drain all \
         (median) ms | non-200 | steal % | loadavg |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for variant in &a.variants {
        for &n in &a.ns {
            let (tot0, st0) = cpu_steal();
            let mut all = Vec::new();
            let mut drains = Vec::new();
            let mut failed = 0;
            for i in 0..a.trials {
                let t = rt.block_on(trial(&a, &dir, variant, n));
                let mut s = t.first_byte_ms.clone();
                s.sort_by(f64::total_cmp);
                writeln!(
                    tsv,
                    "{variant}\t{n}\t{i}\t{:.3}\t{:.3}\t{:.3}\t{:.3}\t{}",
                    pct(&s, 50.0),
                    pct(&s, 99.0),
                    pct(&s, 100.0),
                    t.drain_ms,
                    t.failed
                )
                .unwrap();
                all.extend(t.first_byte_ms);
                drains.push(t.drain_ms);
                failed += t.failed;
            }
            let (tot1, st1) = cpu_steal();
            all.sort_by(f64::total_cmp);
            drains.sort_by(f64::total_cmp);
            println!(
                "| {variant} | {n} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {failed} | {:.1} | {} |",
                a.trials,
                all.len(),
                pct(&all, 50.0),
                pct(&all, 99.0),
                pct(&all, 100.0),
                pct(&drains, 50.0),
                100.0 * (st1 - st0) as f64 / (tot1 - tot0).max(1) as f64,
                loadavg()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
