//! Running `activator local` the way Knative's e2e tests drive a cluster: Services as YAML, a
//! client that sends `Host: <service>.<namespace>.example.com`, and the admin `GET /status` in
//! place of the Kubernetes API (ready pods, desired scale).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use rustix::process::Signal;

/// Cheap tests run side by side (`shared`); tests whose assertions depend on timing or scale
/// take the machine alone (`exclusive`), so other tests' processes do not skew them.
static MACHINE: RwLock<()> = RwLock::new(());

pub fn shared() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|e| e.into_inner())
}

pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(|e| e.into_inner())
}

/// The directory with `activator`, `queue-proxy` and the test apps.
pub fn bin_dir() -> PathBuf {
    let activator = Path::new(env!("CARGO_BIN_EXE_activator"));
    let dir = activator.parent().expect("binary dir").to_path_buf();
    for b in [
        "queue-proxy",
        "helloworld",
        "runtime",
        "singlethreaded",
        "timeout",
        "readiness",
        "wsserver",
        "grpc-ping",
        "autoscale",
        "hellohttp2",
    ] {
        assert!(
            dir.join(b).is_file(),
            "{b} is not built next to the activator in {}: run `cargo test --workspace` \
             (or `cargo build -p queue-proxy -p examples` first)",
            dir.display()
        );
    }
    dir
}

pub fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every port a test binds for the activator comes from here (bind 0: these are the test's own
/// listeners, bound by the activator at once, not pods).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `activator local` over the given YAML files; SIGTERM (then SIGKILL) on drop.
pub struct Local {
    child: Child,
    pub port: u16,
    admin: u16,
    lines: Arc<Mutex<Vec<String>>>,
    dir: PathBuf,
}

impl Local {
    /// Writes `docs` (joined with `---`) to a file and starts `activator local` on it.
    pub fn start(test: &str, docs: &[String], extra: &[&str]) -> Self {
        let bins = bin_dir();
        let dir = std::env::temp_dir().join(format!("knative-e2e-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let file = dir.join("services.yaml");
        std::fs::write(&file, docs.join("---\n")).expect("write yaml");
        let (port, admin) = (free_port(), free_port());
        let mut child = Command::new(bins.join("activator"))
            .arg("local")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--scale-to-zero-grace-period", "1s"])
            .args(extra)
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn activator local");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let outs: [Option<Box<dyn Read + Send>>; 2] = [
            child.stdout.take().map(|o| Box::new(o) as _),
            child.stderr.take().map(|o| Box::new(o) as _),
        ];
        for out in outs.into_iter().flatten() {
            let l = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    l.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        let mut local = Self {
            child,
            port,
            admin,
            lines,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err()
            || TcpStream::connect(("127.0.0.1", admin)).is_err()
        {
            if let Ok(Some(s)) = local.child.try_wait() {
                panic!("activator local exited ({s}):\n{}", local.log());
            }
            assert!(
                Instant::now() < deadline,
                "activator did not listen:\n{}",
                local.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        local
    }

    /// Sends `sig` to `activator local` itself.
    pub fn signal(&self, sig: Signal) {
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }

    pub fn log(&self) -> String {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// `GET /status`: every revision by `namespace/name`.
    pub fn status_all(&self) -> serde_json::Value {
        let r = request(self.admin, "GET", "/status", "localhost", &[], "").expect("GET /status");
        serde_json::from_str(&r.body).expect("status JSON")
    }

    /// `GET /status`, one revision's entry (`Null` before its first tick).
    pub fn status(&self, revision: &str) -> serde_json::Value {
        let v = self.status_all();
        let key = if revision.contains('/') {
            revision.to_owned()
        } else {
            format!("default/{revision}")
        };
        v[key].clone()
    }

    pub fn ready_pods(&self, revision: &str) -> i64 {
        self.status(revision)["ready_pods"].as_i64().unwrap_or(-1)
    }

    pub fn desired_pods(&self, revision: &str) -> i64 {
        self.status(revision)["desired_pods"].as_i64().unwrap_or(-1)
    }

    pub fn pod_count(&self, revision: &str) -> usize {
        self.status(revision)["pods"]
            .as_array()
            .map_or(usize::MAX, Vec::len)
    }

    /// Waits until `revision` has `n` ready pods (the Service is "ready" in Knative's terms).
    pub fn wait_ready(&self, revision: &str, n: i64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.ready_pods(revision) < n {
            assert!(
                Instant::now() < deadline,
                "{revision}: {} ready pods, want {n}\n{}",
                self.ready_pods(revision),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path` with `Host: host` and extra headers.
    pub fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        request(self.port, "GET", path, host, headers, "").expect("request")
    }
}

/// Runs `activator local` over `docs`, expecting it to refuse them: its stderr.
pub fn start_fails(test: &str, docs: &[String]) -> String {
    let dir = std::env::temp_dir().join(format!("knative-e2e-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let file = dir.join("services.yaml");
    std::fs::write(&file, docs.join("---\n")).expect("write yaml");
    let out = Command::new(bin_dir().join("activator"))
        .args(["local", "--listen", "127.0.0.1:0"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .expect("run activator local");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "accepted:\n{stderr}");
    stderr
}

impl Drop for Local {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let pid = i32::try_from(self.child.id())
                .ok()
                .and_then(rustix::process::Pid::from_raw);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, Signal::TERM);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A response: status and body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`), as Knative's spoof client
/// sends them; chunked bodies are decoded.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let at = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no response head"))?;
    let head = String::from_utf8_lossy(&buf[..at]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let raw = &buf[at + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(raw) } else { raw.to_vec() };
    Ok(Resp {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..nl])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        raw = &raw[nl + 2..];
        if size == 0 || raw.len() < size {
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or_default();
    }
    out
}

// === Service YAML ===

/// A Knative Service document, built the way upstream's `v1test` options build one.
#[derive(Clone, Debug)]
pub struct Svc {
    pub name: String,
    pub namespace: Option<String>,
    pub revision: Option<String>,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub annotations: BTreeMap<String, String>,
    pub port: Option<(Option<u16>, Option<String>)>,
    pub container_concurrency: Option<u32>,
    pub timeout_seconds: Option<u64>,
    pub response_start_timeout_seconds: Option<u64>,
    pub idle_timeout_seconds: Option<u64>,
    pub readiness_probe: Option<String>,
    pub traffic: Option<String>,
}

impl Svc {
    pub fn new(name: &str, command: &str) -> Self {
        Self {
            name: name.to_owned(),
            namespace: None,
            revision: None,
            command: vec![command.to_owned()],
            args: Vec::new(),
            env: Vec::new(),
            annotations: BTreeMap::new(),
            port: None,
            container_concurrency: None,
            timeout_seconds: None,
            response_start_timeout_seconds: None,
            idle_timeout_seconds: None,
            readiness_probe: None,
            traffic: None,
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    pub fn ann(mut self, k: &str, v: &str) -> Self {
        self.annotations
            .insert(format!("autoscaling.knative.dev/{k}"), v.to_owned());
        self
    }

    /// `traffic:` entries, one YAML flow mapping per entry.
    pub fn traffic(mut self, entries: &[&str]) -> Self {
        self.traffic = Some(
            entries
                .iter()
                .map(|e| format!("    - {e}\n"))
                .collect::<String>(),
        );
        self
    }

    pub fn host(&self) -> String {
        format!(
            "{}.{}.example.com",
            self.name,
            self.namespace.as_deref().unwrap_or("default")
        )
    }

    pub fn yaml(&self) -> String {
        let mut y = format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {}\n",
            self.name
        );
        if let Some(ns) = &self.namespace {
            y.push_str(&format!("  namespace: {ns}\n"));
        }
        y.push_str("spec:\n");
        if let Some(t) = &self.traffic {
            y.push_str(&format!("  traffic:\n{t}"));
        }
        y.push_str("  template:\n    metadata:\n");
        if let Some(r) = &self.revision {
            y.push_str(&format!("      name: {r}\n"));
        }
        y.push_str("      annotations:\n");
        // Knative's minimum window, as upstream's e2e tests use to keep them short.
        let mut ann = self.annotations.clone();
        ann.entry("autoscaling.knative.dev/window".into())
            .or_insert_with(|| "6s".into());
        for (k, v) in &ann {
            y.push_str(&format!("        {k}: \"{v}\"\n"));
        }
        y.push_str("    spec:\n");
        if let Some(cc) = self.container_concurrency {
            y.push_str(&format!("      containerConcurrency: {cc}\n"));
        }
        if let Some(t) = self.timeout_seconds {
            y.push_str(&format!("      timeoutSeconds: {t}\n"));
        }
        if let Some(t) = self.response_start_timeout_seconds {
            y.push_str(&format!("      responseStartTimeoutSeconds: {t}\n"));
        }
        if let Some(t) = self.idle_timeout_seconds {
            y.push_str(&format!("      idleTimeoutSeconds: {t}\n"));
        }
        y.push_str(&format!(
            "      containers:\n        - command: {:?}\n",
            self.command
        ));
        if !self.args.is_empty() {
            y.push_str(&format!("          args: {:?}\n", self.args));
        }
        if let Some((n, name)) = &self.port {
            y.push_str("          ports:\n            - ");
            let mut fields = Vec::new();
            if let Some(n) = n {
                fields.push(format!("containerPort: {n}"));
            }
            if let Some(name) = name {
                fields.push(format!("name: {name}"));
            }
            y.push_str(&format!("{{{}}}\n", fields.join(", ")));
        }
        if let Some(p) = &self.readiness_probe {
            y.push_str(&format!("          readinessProbe: {p}\n"));
        }
        if !self.env.is_empty() {
            y.push_str("          env:\n");
            for (k, v) in &self.env {
                y.push_str(&format!("            - {{name: {k}, value: {v:?}}}\n"));
            }
        }
        y
    }
}
