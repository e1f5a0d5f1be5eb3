//! `activator local`: a Service YAML runs as local processes, scales from zero on the first
//! request and back to zero when idle.
//!
//! The app is `python3 -m http.server` (wrapped by `sh` for `$PORT`), so the test does not depend
//! on the `examples` binaries; it needs `queue-proxy` next to the activator binary, which
//! `cargo test --workspace` builds. Missing pieces skip the test with a message.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    /// SIGTERM first so `activator local` stops its pods (no orphans), then SIGKILL.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn get(port: u16, host: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    get_path(port, "/index.html", host, timeout)
}

fn get_path(
    port: u16,
    path: &str,
    host: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(timeout))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, buf))
}

fn wait_for(lines: &Arc<Mutex<Vec<String>>>, needle: &str, n: usize, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if lines
            .lock()
            .expect("lock")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
            >= n
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn scales_from_zero_and_back() {
    let activator = Path::new(env!("CARGO_BIN_EXE_activator"));
    if !activator.with_file_name("queue-proxy").is_file() {
        eprintln!(
            "skipping: queue-proxy is not built next to the activator (run cargo test --workspace)"
        );
        return;
    }
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipping: python3 not found");
        return;
    }
    let dir = std::env::temp_dir().join(format!("activator-local-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    std::fs::write(dir.join("index.html"), "hello from local mode\n").expect("index");
    let yaml = dir.join("svc.yaml");
    std::fs::write(
        &yaml,
        format!(
            r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: pyweb
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/target: "10"
        autoscaling.knative.dev/window: "6s"
    spec:
      containers:
        - command: ["sh", "-c", "exec python3 -m http.server --bind 127.0.0.1 --directory {} \"$PORT\""]
"#,
            dir.display()
        ),
    )
    .expect("yaml");

    let port = free_port();
    let admin = free_port();
    let mut child = Command::new(activator)
        .args([
            "local",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--scale-to-zero-grace-period",
            "1s",
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ])
        .arg(&yaml)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn activator");
    let out = child.stdout.take().expect("stdout");
    let child = KillOnDrop(child);
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l2 = Arc::clone(&lines);
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            l2.lock().expect("lock").push(l);
        }
    });

    // The listener comes up before any pod exists.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "activator did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A new revision starts at its initial scale (1 pod), then idles down to zero
    // (window 6 s + grace 1 s).
    assert!(wait_for(&lines, "pod started", 1, Duration::from_secs(10)));
    let (status, body) = get(port, "pyweb.default.example.com", Duration::from_secs(20))
        .expect("request at initial scale");
    assert_eq!(status, 200, "{body}");
    assert!(
        wait_for(&lines, "pod stopped", 1, Duration::from_secs(25)),
        "pod not stopped; log:\n{}",
        lines.lock().expect("lock").join("\n")
    );

    // First request from zero is held, a pod starts, the answer is the app's.
    let (status, body) = get(port, "pyweb.default.example.com", Duration::from_secs(20))
        .expect("first request from zero");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hello from local mode"), "{body}");
    assert!(wait_for(&lines, "pod started", 2, Duration::from_secs(1)));

    // The status endpoint lists the revision.
    let (status, body) =
        get_path(admin, "/status", "localhost", Duration::from_secs(5)).expect("status");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"default/pyweb-00001\""), "{body}");

    // Unknown host: not routed.
    let (status, _) = get(port, "nope.default.example.com", Duration::from_secs(5)).expect("404");
    assert_eq!(status, 404);
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}
