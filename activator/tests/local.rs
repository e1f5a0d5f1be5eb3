//! `activator local` as a black box: the seeds' experiments, shortened by annotations
//! (`window: 6s`) and `--scale-to-zero-grace-period 1s`.
//!
//! Runs the real `activator` binary, which runs the real `queue-proxy` and the workspace's
//! `helloworld` / `autoscale` apps as pods. All four are built next to each other by
//! `cargo test --workspace` (the `examples` package has its own tests, which builds its
//! binaries). The tests in this file take turns (one lock), so the autoscaling results are not
//! skewed by another test's processes competing for the CPU.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustix::process::Signal;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The directory with `activator`, `queue-proxy`, `helloworld` and `autoscale`.
fn bin_dir() -> PathBuf {
    let activator = Path::new(env!("CARGO_BIN_EXE_activator"));
    let dir = activator.parent().expect("binary dir").to_path_buf();
    for b in ["queue-proxy", "helloworld", "autoscale"] {
        assert!(
            dir.join(b).is_file(),
            "{b} is not built next to the activator in {}: run `cargo test --workspace` \
             (or `cargo build -p queue-proxy -p examples` first)",
            dir.display()
        );
    }
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A temporary directory with Service YAMLs, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("activator-local-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmp dir");
        Self(d)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write yaml");
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `activator local`; stopped with SIGTERM (then SIGKILL) on drop.
struct Local {
    child: Child,
    port: u16,
    admin: u16,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Local {
    fn start(files: &[PathBuf], extra: &[&str]) -> Self {
        let dir = bin_dir();
        let (port, admin) = (free_port(), free_port());
        let mut child = Command::new(dir.join("activator"))
            .arg("local")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--scale-to-zero-grace-period", "1s"])
            .args(extra)
            .args(files)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn activator local");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let l = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    l.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        let local = Self {
            child,
            port,
            admin,
            lines,
        };
        wait_until(Duration::from_secs(20), "the activator to listen", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                && TcpStream::connect(("127.0.0.1", admin)).is_ok()
        });
        local
    }

    fn log(&self) -> String {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    fn log_has(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|l| l.contains(needle))
    }

    /// `GET /status`, one revision's entry (`Null` before its first tick).
    fn status(&self, revision: &str) -> serde_json::Value {
        let (code, _, body) = get(self.admin, "/status", "localhost").expect("GET /status");
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
        v[format!("default/{revision}")].clone()
    }

    fn ready_pods(&self, revision: &str) -> i64 {
        self.status(revision)["ready_pods"].as_i64().unwrap_or(-1)
    }

    fn pod_count(&self, revision: &str) -> usize {
        self.status(revision)["pods"]
            .as_array()
            .map_or(usize::MAX, Vec::len)
    }

    fn signal(&self, sig: Signal) {
        kill(u64::from(self.child.id()), sig).expect("signal the activator");
    }

    /// Waits for the process to exit (bounded); its exit status.
    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "activator did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = kill(u64::from(self.child.id()), Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kill(pid: u64, sig: Signal) -> rustix::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or(rustix::io::Errno::INVAL)?;
    rustix::process::kill_process(pid, sig)
}

/// One `Connection: close` request: status, head, body.
fn get(port: u16, path: &str, host: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_ascii_lowercase(), body.to_owned()))
}

const HELLO: &str = r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/window: "6s"
ANNOTATIONS
    spec:
      containers:
        - command: ["helloworld"]
          env:
            - name: TARGET
              value: TARGET_VALUE
"#;

fn hello(annotations: &[(&str, &str)], target: &str) -> String {
    let ann: String = annotations
        .iter()
        .map(|(k, v)| format!("        autoscaling.knative.dev/{k}: \"{v}\"\n"))
        .collect();
    HELLO
        .replace("ANNOTATIONS\n", &ann)
        .replace("TARGET_VALUE", target)
}

// === load generation (in-test, bounded) ===

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn error(&self, e: String) {
        let mut v = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() < 20 {
            v.push(e);
        } else {
            v.push(String::new());
        }
    }

    fn error_count(&self) -> usize {
        self.errors.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One keep-alive client sending `GET path` until `until`; every answer other than a 200 with
/// a body, and every connection error, is an error.
async fn client(port: u16, host: String, path: String, until: Instant, tally: Arc<Tally>) {
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> = None;
    while Instant::now() < until {
        let mut s = match sender.take() {
            Some(s) => s,
            None => {
                let stream = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    Ok(s) => s,
                    Err(e) => {
                        tally.error(format!("connect: {e}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok((s, conn)) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                else {
                    tally.error("handshake".into());
                    continue;
                };
                tokio::spawn(conn);
                s
            }
        };
        let req = http::Request::get(path.as_str())
            .header(http::header::HOST, host.as_str())
            .body(Empty::new())
            .expect("request");
        let sent = async {
            s.ready().await?;
            let resp = s.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        match tokio::time::timeout(Duration::from_secs(30), sent).await {
            Ok(Ok((status, body))) if status == 200 && !body.is_empty() => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                sender = Some(s);
            }
            Ok(Ok((status, body))) => {
                tally.error(format!("{status}: {}", String::from_utf8_lossy(&body)));
                sender = Some(s);
            }
            Ok(Err(e)) => tally.error(format!("request: {e}")),
            Err(_) => tally.error("no answer in 30 s".into()),
        }
    }
}

/// `clients` keep-alive clients for `duration`; returns when all have stopped.
fn load(
    rt: &tokio::runtime::Runtime,
    port: u16,
    host: &str,
    path: &str,
    clients: usize,
    duration: Duration,
) -> (Arc<Tally>, std::thread::JoinHandle<()>) {
    let tally = Arc::new(Tally::default());
    let until = Instant::now() + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            rt.spawn(client(
                port,
                host.to_owned(),
                path.to_owned(),
                until,
                Arc::clone(&tally),
            ))
        })
        .collect();
    let handle = rt.handle().clone();
    let waiter = std::thread::spawn(move || {
        handle.block_on(async {
            for t in tasks {
                let _ = t.await;
            }
        });
    });
    (tally, waiter)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

// === the seeds' experiments ===

/// Seed 1: hello world from zero. The first request is held while a pod starts and answers
/// 200; the product reports the time split (pod start vs ours) in `GET /status` and its log.
#[test]
fn hello_world_from_zero_answers_and_reports_the_time_split() {
    let _serial = serial();
    let dir = Dir::new("zero");
    let yaml = dir.file("hello.yaml", &hello(&[], "World"));
    let local = Local::start(&[yaml], &[]);
    // A new revision starts at its initial scale (1 pod), then idles to zero: window 6 s,
    // grace 1 s.
    wait_until(Duration::from_secs(20), "the initial pod", || {
        local.ready_pods("hello-00001") == 1
    });
    wait_until(Duration::from_secs(30), "scale to zero", || {
        local.pod_count("hello-00001") == 0
    });

    let t = Instant::now();
    let (code, head, body) =
        get(local.port, "/", "hello.default.example.com").expect("first request");
    let total_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(code, 200, "{head}\n{body}\n{}", local.log());
    assert_eq!(body, "Hello World!\n");
    let hold_ms: f64 = head
        .lines()
        .find_map(|l| l.strip_prefix("x-knative-activator-hold-ms: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("hold header on a held request");

    wait_until(Duration::from_secs(10), "the cold-start record", || {
        local.status("hello-00001")["last_cold_start"]["pod_start_ms"].is_number()
    });
    let cold = local.status("hello-00001")["last_cold_start"].clone();
    let pod_start_ms = cold["pod_start_ms"].as_f64().expect("pod_start_ms");
    let scheduling_ms = cold["scheduling_ms"].as_f64().expect("scheduling_ms");
    let readiness_ms = cold["readiness_ms"].as_f64().expect("readiness_ms");
    let app_ms = cold["app_listening_ms"].as_f64().expect("app_listening_ms");
    let qp_ms = cold["queue_proxy_listening_ms"]
        .as_f64()
        .expect("queue_proxy_listening_ms");
    assert_eq!(pod_start_ms, app_ms.max(qp_ms), "{cold}");
    // The pod's start is part of the client's wait, and so is our scheduling.
    assert!(
        pod_start_ms > 0.0 && pod_start_ms < total_ms,
        "{cold} total {total_ms}"
    );
    assert!(
        scheduling_ms >= 0.0 && scheduling_ms < total_ms,
        "{cold} total {total_ms}"
    );
    assert!(hold_ms <= total_ms + 1.0, "hold {hold_ms} total {total_ms}");
    assert!(
        readiness_ms >= 0.0 && readiness_ms < total_ms,
        "{cold} total {total_ms}"
    );
    eprintln!(
        "cold start: first request {total_ms:.1} ms = pod start {pod_start_ms:.1} ms (app {app_ms:.1}, queue-proxy {qp_ms:.1}) + ours {:.1} ms \
         (demand → spawn {scheduling_ms:.1} ms, listening → queue-proxy ready {readiness_ms:.1} ms, \
         rest {:.1} ms); activator hold {hold_ms:.1} ms",
        total_ms - pod_start_ms,
        total_ms - pod_start_ms - scheduling_ms - readiness_ms
    );
    assert!(local.log_has("cold start"), "{}", local.log());
    // Piped output carries no terminal colour codes.
    assert!(!local.log().contains('\x1b'), "{}", local.log());

    // Unknown hosts are not routed, with a body that says so.
    let (code, _, body) = get(local.port, "/", "nope.default.example.com").expect("404");
    assert_eq!(code, 404);
    assert!(body.contains("not found"), "{body}");
}

/// Seed 2 and 3: autoscale-go with target 10 under 50 clients at `sleep=100` holds 5 pods
/// (±1); a lighter load while it scales down sees no errors; no load → 0 pods.
///
/// Sleep-dominated requests make the result a matter of Little's law, not CPU speed: 50
/// clients each with one request in flight keep ≈ 50 requests in the activator (time spent
/// outside it is the client's own, microseconds), so ceil(concurrency / 10) is 5 unless the
/// overhead per request approaches the 100 ms sleep.
#[test]
fn autoscale_holds_five_pods_under_load_scales_down_without_errors_then_to_zero() {
    let _serial = serial();
    let dir = Dir::new("autoscale");
    let yaml = dir.file(
        "autoscale.yaml",
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: autoscale
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/target: "10"
        autoscaling.knative.dev/target-utilization-percentage: "100"
        autoscaling.knative.dev/window: "6s"
    spec:
      containers:
        - command: ["autoscale"]
"#,
    );
    let local = Local::start(&[yaml], &[]);
    let rev = "autoscale-00001";
    let host = "autoscale.default.example.com";
    wait_until(Duration::from_secs(20), "the initial pod", || {
        local.ready_pods(rev) == 1
    });
    let rt = runtime();

    // Phase 1: 50 clients for 14 s; the pod count is sampled over the last 5 s.
    let (heavy, waiter) = load(
        &rt,
        local.port,
        host,
        "/?sleep=100",
        50,
        Duration::from_secs(14),
    );
    std::thread::sleep(Duration::from_secs(9));
    let mut samples = Vec::new();
    while !waiter.is_finished() {
        let s = local.status(rev);
        samples.push((
            s["ready_pods"].as_i64().unwrap_or(-1),
            s["stable_concurrency"].as_f64().unwrap_or(-1.0),
        ));
        std::thread::sleep(Duration::from_millis(500));
    }
    waiter.join().expect("load");
    let ok = heavy.ok.load(Ordering::Relaxed);
    eprintln!(
        "50 clients, 14 s: {ok} ok, (ready pods, stable concurrency) over the last 5 s: {samples:?}"
    );
    assert_eq!(
        heavy.error_count(),
        0,
        "errors under load: {:?}",
        heavy.errors.lock().unwrap_or_else(|e| e.into_inner())
    );
    assert!(samples.len() >= 3, "{samples:?}");
    assert!(
        samples.iter().all(|(pods, _)| (4..=6).contains(pods)),
        "ready pods not 5±1 under load: {samples:?}\n{}",
        local.log()
    );
    let peak = samples.iter().map(|(p, _)| *p).max().unwrap_or(0);

    // Phase 2: 3 clients while the revision scales down; no request may fail.
    let (light, waiter) = load(
        &rt,
        local.port,
        host,
        "/?sleep=100",
        3,
        Duration::from_secs(25),
    );
    let mut lowest = peak;
    while !waiter.is_finished() {
        lowest = lowest.min(local.ready_pods(rev));
        std::thread::sleep(Duration::from_millis(500));
    }
    waiter.join().expect("load");
    eprintln!(
        "3 clients, 25 s: {} ok, pods {peak} → {lowest}",
        light.ok.load(Ordering::Relaxed)
    );
    assert_eq!(
        light.error_count(),
        0,
        "errors while scaling down: {:?}",
        light.errors.lock().unwrap_or_else(|e| e.into_inner())
    );
    assert!(
        lowest < peak,
        "did not scale down under light load: {peak} → {lowest}"
    );

    // Phase 3: no load → window (6 s) + grace (1 s) → zero pods, processes gone.
    wait_until(Duration::from_secs(40), "scale to zero", || {
        local.pod_count(rev) == 0
    });
}

/// Seed: a traffic split honoured over 1,000 requests, and a tag route to one revision.
#[test]
fn traffic_split_80_20_and_tag_route() {
    let _serial = serial();
    let dir = Dir::new("split");
    let v1 = hello(&[("min-scale", "1")], "blue");
    let v2 = hello(&[("min-scale", "1")], "green").replace(
        "spec:\n  template:",
        "spec:\n  traffic:\n    - revisionName: hello-00001\n      percent: 80\n    - latestRevision: true\n      percent: 20\n      tag: candidate\n  template:",
    );
    let yaml = dir.file("hello.yaml", &format!("{v1}---\n{v2}"));
    let local = Local::start(&[yaml], &[]);
    wait_until(Duration::from_secs(30), "both revisions ready", || {
        local.ready_pods("hello-00001") >= 1 && local.ready_pods("hello-00002") >= 1
    });
    let rt = runtime();
    let (blue, green, other) = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", local.port))
            .await
            .expect("connect");
        let (mut s, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        let (mut blue, mut green, mut other) = (0, 0, Vec::new());
        for _ in 0..1000 {
            s.ready().await.expect("ready");
            let req = http::Request::get("/")
                .header(http::header::HOST, "hello.default.example.com")
                .body(Empty::new())
                .expect("request");
            let resp = s.send_request(req).await.expect("response");
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            match &body[..] {
                b"Hello blue!\n" => blue += 1,
                b"Hello green!\n" => green += 1,
                b => other.push(String::from_utf8_lossy(b).into_owned()),
            }
        }
        (blue, green, other)
    });
    eprintln!("1,000 requests: blue {blue}, green {green}");
    assert!(other.is_empty(), "{other:?}");
    assert!((750..=850).contains(&blue), "blue {blue}, green {green}");
    assert_eq!(blue + green, 1000);
    for _ in 0..5 {
        let (code, _, body) =
            get(local.port, "/", "candidate-hello.default.example.com").expect("tag route");
        assert_eq!((code, body.as_str()), (200, "Hello green!\n"));
    }
    let routes = local.status("hello-00001")["routes"].clone();
    assert_eq!(
        routes,
        serde_json::json!([{"host": "hello.default.example.com", "percent": 80}])
    );
}

/// A pod whose app crashes is replaced, and the revision serves again.
#[test]
fn crashed_pod_is_replaced() {
    let _serial = serial();
    let dir = Dir::new("crash");
    let yaml = dir.file("hello.yaml", &hello(&[("min-scale", "1")], "World"));
    let local = Local::start(&[yaml], &[]);
    let rev = "hello-00001";
    wait_until(Duration::from_secs(20), "a ready pod", || {
        local.ready_pods(rev) == 1
    });
    let pod = local.status(rev)["pods"][0].clone();
    let pid = pod["app_pid"].as_u64().expect("app pid");
    kill(pid, Signal::KILL).expect("kill the app");
    wait_until(Duration::from_secs(20), "a replacement pod", || {
        let s = local.status(rev);
        s["ready_pods"] == 1 && s["pods"][0]["name"] != pod["name"]
    });
    assert!(local.log_has("pod exited; replacing it"), "{}", local.log());
    let (code, _, body) = get(local.port, "/", "hello.default.example.com").expect("request");
    assert_eq!((code, body.as_str()), (200, "Hello World!\n"));
}

/// A pod whose readiness probe starts failing leaves the endpoints (not replaced: it has not
/// exited) and comes back once the probe passes again, as the kubelet's readiness does.
#[test]
fn pod_failing_readiness_leaves_the_endpoints_and_returns() {
    let _serial = serial();
    let dir = Dir::new("unready");
    let yaml = dir.file(
        "hello.yaml",
        &hello(&[("min-scale", "1"), ("max-scale", "1")], "World").replace(
            "          env:\n",
            "          readinessProbe:\n            httpGet:\n              path: /\n            periodSeconds: 1\n            failureThreshold: 2\n          env:\n",
        ),
    );
    let local = Local::start(&[yaml], &[]);
    let rev = "hello-00001";
    wait_until(Duration::from_secs(20), "a ready pod", || {
        local.ready_pods(rev) == 1
    });
    let pod = local.status(rev)["pods"][0].clone();
    let app = pod["app_pid"].as_u64().expect("app pid");
    // A stopped app still accepts TCP connections (the kernel does) but answers no HTTP probe.
    kill(app, Signal::STOP).expect("stop the app");
    wait_until(
        Duration::from_secs(20),
        "the pod out of the endpoints",
        || local.ready_pods(rev) == 0,
    );
    assert!(
        local.log_has("pod not ready; removed from the endpoints"),
        "{}",
        local.log()
    );
    assert_eq!(
        local.status(rev)["pods"][0]["name"],
        pod["name"],
        "not replaced"
    );
    kill(app, Signal::CONT).expect("continue the app");
    wait_until(Duration::from_secs(20), "the pod ready again", || {
        local.ready_pods(rev) == 1
    });
    assert_eq!(local.status(rev)["pods"][0]["name"], pod["name"]);
    let (code, _, body) = get(local.port, "/", "hello.default.example.com").expect("request");
    assert_eq!((code, body.as_str()), (200, "Hello World!\n"));
}

/// Every process under `pid`, with its start time (to tell a reused pid apart).
fn descendants(pid: u32) -> BTreeSet<(u32, u64)> {
    let mut all = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some((ppid, start, _)) = stat(p) {
            all.push((p, ppid, start));
        }
    }
    let mut out = BTreeSet::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (p, pp, start) in &all {
            if *pp == parent && out.insert((*p, *start)) {
                frontier.push(*p);
            }
        }
    }
    out
}

/// `(ppid, starttime, state)` from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(u32, u64, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields resume after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    Some((f.get(1)?.parse().ok()?, f.get(19)?.parse().ok()?, state))
}

fn alive(pid: u32, start: u64) -> bool {
    matches!(stat(pid), Some((_, s, state)) if s == start && state != 'Z')
}

/// SIGTERM and SIGINT stop every pod process: nothing `activator local` started survives it.
#[test]
fn no_process_is_left_after_sigterm_or_sigint() {
    let _serial = serial();
    for (sig, name) in [(Signal::TERM, "TERM"), (Signal::INT, "INT")] {
        let dir = Dir::new(&format!("signal-{name}"));
        let yaml = dir.file("hello.yaml", &hello(&[("min-scale", "2")], "World"));
        let mut local = Local::start(&[yaml], &[]);
        wait_until(Duration::from_secs(30), "two ready pods", || {
            local.ready_pods("hello-00001") == 2
        });
        let procs = descendants(local.child.id());
        // Two pods, each a queue-proxy and an app.
        assert!(procs.len() >= 4, "{procs:?}");
        local.signal(sig);
        let status = local.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "SIG{name}: {status}\n{}", local.log());
        let left: Vec<_> = procs.iter().filter(|(p, s)| alive(*p, *s)).collect();
        assert!(left.is_empty(), "SIG{name} left {left:?}\n{}", local.log());
    }
}

/// Bad YAML: exit non-zero with the file, line and field.
#[test]
fn bad_yaml_names_file_line_and_field() {
    let dir = Dir::new("bad");
    let bin = bin_dir().join("activator");
    let cases = [
        (
            hello(&[], "World").replace(
                "    spec:\n      containers:",
                "    spec:\n      containerConcurrency: lots\n      containers:",
            ),
            ":11: spec.template.spec.containerConcurrency: invalid type",
        ),
        (
            hello(&[("target", "-1")], "World"),
            ":10: spec.template.metadata.annotations.autoscaling.knative.dev/target:",
        ),
        (
            hello(&[], "World").replace(r#"- command: ["helloworld"]"#, "- name: app"),
            ":11: spec.template.spec.containers: containers[0] needs an `image`",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let f = dir.file(&format!("bad{i}.yaml"), text);
        let out = Command::new(&bin)
            .args(["local", "--listen", "127.0.0.1:0"])
            .arg(&f)
            .stdin(Stdio::null())
            .output()
            .expect("run activator local");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}\n{stderr}");
        let want = format!("{}{want}", f.display());
        assert!(stderr.contains(&want), "want {want:?} in:\n{stderr}");
    }
}

/// Requests held for a revision without a ready pod show in `GET /status` and the status line.
#[test]
fn held_requests_show_in_status() {
    let _serial = serial();
    let dir = Dir::new("held");
    // `sleep` never listens, so the pod never becomes ready and requests stay held.
    let yaml = dir.file(
        "never.yaml",
        &hello(&[], "World")
            .replace("name: hello", "name: never")
            .replace(
                r#"- command: ["helloworld"]"#,
                r#"- command: ["sleep", "60"]"#,
            ),
    );
    let local = Local::start(&[yaml], &[]);
    let port = local.port;
    for _ in 0..2 {
        // Detached: these requests end with the activator, when the test drops it.
        std::thread::spawn(move || get(port, "/", "never.default.example.com"));
    }
    wait_until(Duration::from_secs(20), "two held requests", || {
        local.status("never-00001")["held_requests"] == 2
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !local.log_has("held=2") {
        assert!(
            Instant::now() < deadline,
            "no status line with held=2:\n{}",
            local.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn environ(pid: u64) -> std::collections::BTreeMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// The container's `readinessProbe` reaches the queue-proxy as `SERVING_READINESS_PROBE`,
/// aimed at the app's port, as Knative's reconciler writes it; the pod passes it.
#[test]
fn readiness_probe_reaches_the_queue_proxy() {
    let _serial = serial();
    let dir = Dir::new("probe");
    let yaml = dir.file(
        "hello.yaml",
        &hello(&[], "World").replace(
            "          env:\n",
            "          ports:\n            - containerPort: 8080\n          readinessProbe:\n            httpGet:\n              path: /healthz\n              port: 8080\n            periodSeconds: 1\n          env:\n",
        ),
    );
    let local = Local::start(&[yaml], &[]);
    wait_until(Duration::from_secs(20), "a ready pod", || {
        local.ready_pods("hello-00001") == 1
    });
    let pod = local.status("hello-00001")["pods"][0].clone();
    let qp = environ(pod["queue_proxy_pid"].as_u64().expect("qp pid"));
    let app = environ(pod["app_pid"].as_u64().expect("app pid"));
    let user_port: u16 = qp["USER_PORT"].parse().expect("USER_PORT");
    assert_eq!(app["PORT"], user_port.to_string());
    let probe: serde_json::Value =
        serde_json::from_str(&qp["SERVING_READINESS_PROBE"]).expect("probe JSON");
    assert_eq!(
        probe,
        serde_json::json!({
            "httpGet": {"path": "/healthz", "port": user_port, "host": "127.0.0.1", "scheme": "HTTP"},
            "periodSeconds": 1, "timeoutSeconds": 1, "successThreshold": 1
        })
    );
    assert_eq!(qp["SERVING_REVISION"], "hello-00001");
    assert_eq!(qp["SERVING_SERVICE"], "hello");
}
