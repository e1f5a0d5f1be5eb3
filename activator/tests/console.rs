//! `activator local`'s console, piped: readable timestamped lines (the queue-proxy's JSON
//! rendered), the request log, `--log-format json`, and every listener it starts bound to
//! 127.0.0.1 only.

mod local_support;
use local_support::{bin_dir, free_port, get};

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const HELLO: &str = r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
spec:
  template:
    spec:
      containers:
        - command: ["helloworld"]
"#;

struct Local {
    child: Child,
    port: u16,
    admin: u16,
    lines: Arc<Mutex<Vec<String>>>,
    _dir: PathBuf,
}

impl Local {
    fn start(name: &str, extra: &[&str]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("activator-console-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let file = dir.join("hello.yaml");
        std::fs::write(&file, HELLO).expect("yaml");
        let (port, admin) = (free_port(), free_port());
        let mut child = Command::new(bin_dir().join("activator"))
            .arg("local")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(extra)
            .arg(&file)
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
        Self {
            child,
            port,
            admin,
            lines,
            _dir: dir,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn wait_for(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| f(l)) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no line {what}; output:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pod_address(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, body)) = get(self.admin, "/status", "localhost") {
                let v: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
                let pod = &v["default/hello-00001"]["pods"][0];
                if pod["ready"] == true {
                    return pod["address"].as_str().expect("address").to_owned();
                }
            }
            assert!(Instant::now() < deadline, "no ready pod");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Some(pid) = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// `HH:MM:SS.mmm ` at the start.
fn timestamped(l: &str) -> bool {
    let b = l.as_bytes();
    b.len() > 13
        && [0, 1, 3, 4, 6, 7, 9, 10, 11]
            .iter()
            .all(|&i| b[i].is_ascii_digit())
        && b[2] == b':'
        && b[5] == b':'
        && b[8] == b'.'
        && b[12] == b' '
}

/// This machine's address on its default route, if it has one other than loopback.
fn outside_ip() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("10.255.255.255:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn readable_timestamped_lines_request_log_and_loopback_only_pods() {
    let local = Local::start("human", &["--request-log"]);
    let qp = local.wait_for("from the queue-proxy", |l| {
        l.contains("[hello-00001-deployment-1/queue-proxy] INFO listening")
    });
    assert!(timestamped(&qp), "{qp}");
    assert!(!qp.contains('{'), "raw JSON: {qp}");
    assert!(qp.contains("addr=127.0.0.1:"), "{qp}");
    let status = local.wait_for("of status", |l| l.contains(" INFO status "));
    assert!(timestamped(&status), "{status}");

    let addr = local.pod_address();
    let (code, body) = get(local.port, "/x?y=1", "hello.default.example.com").expect("request");
    assert_eq!((code, body.as_str()), (200, "Hello World!\n"));
    let req = local.wait_for("of the request log", |l| l.contains(" GET hello.default"));
    assert!(timestamped(&req), "{req}");
    assert!(
        req.contains(" GET hello.default.example.com/x?y=1 200 ")
            && req
                .contains("ms revision=default/hello-00001 pod=hello-00001-deployment-1 held_ms="),
        "{req}"
    );

    // The queue-proxy answers on loopback, and not on the machine's other address.
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    match outside_ip() {
        Some(ip) => assert!(
            TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(2)).is_err(),
            "the queue-proxy on port {port} is reachable at {ip}"
        ),
        None => eprintln!("no non-loopback address here: reachability from outside not checked"),
    }
}

#[test]
fn json_format_keeps_json() {
    let local = Local::start("json", &["--log-format", "json"]);
    let qp = local.wait_for("from the queue-proxy", |l| {
        l.contains("\"knative.dev/pod\":\"hello-00001-deployment-1\"") && l.contains("listening")
    });
    let v: serde_json::Value = serde_json::from_str(&qp).expect("queue-proxy line is JSON");
    assert_eq!(v["message"], "listening");
    let ours = local.wait_for("of ours", |l| l.contains("serving"));
    let v: serde_json::Value = serde_json::from_str(&ours).expect("our line is JSON");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("serving")),
        "{ours}"
    );
}

/// A pod that exits before it is ever ready (here `false`; a missing image alike) is retried
/// with a doubling delay, not at every tick.
#[test]
fn a_pod_failing_before_ready_is_retried_with_backoff() {
    let dir = std::env::temp_dir().join(format!("activator-console-false-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let file = dir.join("false.yaml");
    std::fs::write(&file, HELLO.replace("[\"helloworld\"]", "[\"false\"]")).expect("yaml");
    let mut child = Command::new(bin_dir().join("activator"))
        .arg("local")
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn activator local");
    let out = child.stdout.take().expect("stdout");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let l = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            l.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    });
    std::thread::sleep(Duration::from_secs(5));
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let lines = lines.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let started = lines.iter().filter(|l| l.contains("pod started")).count();
    // 0 s, then after 1, 2 (and 4) s: at most 4 in 5 s; without the backoff, one per tick.
    assert!(
        (2..=4).contains(&started),
        "{started} starts:\n{}",
        lines.join("\n")
    );
    assert!(
        lines.iter().any(|l| l.contains("retry_in=2s")),
        "{}",
        lines.join("\n")
    );
}
