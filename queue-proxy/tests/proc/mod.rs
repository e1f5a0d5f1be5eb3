//! The real `queue-proxy` binary as a child process: environment, listening addresses from its
//! log, signals, and `/proc` readings (RSS, open fds) for the reliability suite.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness;

pub const BIN: &str = env!("CARGO_BIN_EXE_queue-proxy");

/// The reconciler's environment for a queue-proxy in front of `user_port`, every port on 0 so
/// tests never collide, a 1 s drain and Prometheus request metrics (for the queue-depth gauge).
pub fn env(user_port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("SERVING_NAMESPACE", "ns".into()),
        ("SERVING_CONFIGURATION", "cfg".into()),
        ("SERVING_REVISION", "rev".into()),
        ("SERVING_POD", "pod-1".into()),
        ("SERVING_POD_IP", "127.0.0.1".into()),
        ("QUEUE_SERVING_PORT", "0".into()),
        ("QUEUE_SERVING_TLS_PORT", "8112".into()),
        ("USER_PORT", user_port.to_string()),
        ("CONTAINER_CONCURRENCY", "0".into()),
        ("REVISION_TIMEOUT_SECONDS", "30".into()),
        ("SERVING_LOGGING_CONFIG", "".into()),
        ("SERVING_LOGGING_LEVEL", "".into()),
        (
            "OBSERVABILITY_CONFIG",
            r#"{"requestMetrics":{"protocol":"prometheus"}}"#.into(),
        ),
        ("QUEUE_ADMIN_PORT", "0".into()),
        ("QUEUE_METRICS_PORT", "0".into()),
        ("QUEUE_USER_METRICS_PORT", "0".into()),
        ("QUEUE_DRAIN_SECONDS", "1".into()),
        ("SYSTEM_NAMESPACE", "knative-serving".into()),
        ("HOST_IP", "10.0.0.2".into()),
        ("ROOT_CA", "".into()),
    ]
}

/// Replaces (or adds) one variable.
pub fn set(env: &mut Vec<(&'static str, String)>, key: &'static str, value: &str) {
    env.retain(|(k, _)| *k != key);
    env.push((key, value.into()));
}

/// A running queue-proxy. Dropping it kills the process.
pub struct Qp {
    pub child: Child,
    pub serving: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub user_metrics: SocketAddr,
    pub stderr: Arc<Mutex<String>>,
    pub stdout: Arc<Mutex<Vec<String>>>,
}

fn local(addr: &str) -> SocketAddr {
    let a: SocketAddr = addr.parse().unwrap();
    SocketAddr::from(([127, 0, 0, 1], a.port()))
}

/// Starts the binary and waits (up to 20 s) for its four `listening` log lines.
pub fn spawn(env: Vec<(&'static str, String)>) -> Qp {
    spawn_cmd(Command::new(BIN), env)
}

/// [`spawn`] with the soft and hard descriptor limit set to `nofile` (through `sh`'s `ulimit`,
/// which then execs the binary: the pid is the queue-proxy's).
pub fn spawn_with_nofile(env: Vec<(&'static str, String)>, nofile: u32) -> Qp {
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", &format!("ulimit -n {nofile} && exec \"$0\""), BIN]);
    spawn_cmd(cmd, env)
}

fn spawn_cmd(mut cmd: Command, env: Vec<(&'static str, String)>) -> Qp {
    let mut child = cmd
        .env_clear()
        .envs(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = harness::capture(child.stderr.take().unwrap());
    {
        let out = child.stdout.take().unwrap();
        let lines = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr_of = |name: &str| -> Option<SocketAddr> {
        stdout.lock().unwrap().iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let addr = v["addr"].as_str()?;
            (v["message"] == "listening" && v["listener"] == name).then(|| local(addr))
        })
    };
    loop {
        if let (Some(serving), Some(admin), Some(metrics), Some(user_metrics)) = (
            addr_of("serving"),
            addr_of("admin"),
            addr_of("metrics"),
            addr_of("user-metrics"),
        ) {
            return Qp {
                child,
                serving,
                admin,
                metrics,
                user_metrics,
                stderr,
                stdout,
            };
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "queue-proxy exited at start ({status}): {}",
                stderr.lock().unwrap()
            );
        }
        assert!(Instant::now() < deadline, "queue-proxy did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Qp {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        harness::signal(self.pid(), sig);
    }

    /// Waits up to `within` for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        harness::wait_exit(&mut self.child, within, "queue-proxy")
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// Open file descriptors.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// Fails the test if the process panicked (pass criterion (c)).
    pub fn assert_no_panic(&self) {
        let err = self.stderr.lock().unwrap();
        assert!(!err.contains("panicked"), "queue-proxy panicked: {err}");
        let out = self.stdout.lock().unwrap();
        assert!(
            !out.iter().any(|l| l.contains("panicked")),
            "queue-proxy panicked"
        );
    }
}

impl Drop for Qp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
