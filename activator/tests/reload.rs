//! Live reload under load: `activator local` watches its YAML; a template edit makes the next
//! revision and the route moves to it once it is ready, a bad edit keeps the running state and
//! prints `file:line: field: message`, a traffic-only edit splits without a new revision. Four
//! clients send requests the whole time: 0 errors.

mod local_support;
use local_support::{bin_dir, free_port, get};

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn yaml(target: &str, extra_spec: &str, traffic: &str) -> String {
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
spec:
{traffic}  template:
    metadata:
      annotations:
        autoscaling.knative.dev/window: "6s"
    spec:
{extra_spec}      containers:
        - command: ["helloworld"]
          env:
            - name: TARGET
              value: {target}
"#
    )
}

/// Saves like an editor that writes a new file and renames it over the old one.
fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(pid) = i32::try_from(self.0.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn edits_apply_under_load_with_no_errors_and_bad_edits_keep_the_running_state() {
    let dir = std::env::temp_dir().join(format!("activator-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let file = dir.join("hello.yaml");
    save(&file, &yaml("blue", "", ""));
    let (port, admin) = (free_port(), free_port());
    let mut child = Command::new(bin_dir().join("activator"))
        .arg("local")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--scale-to-zero-grace-period", "1s"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn activator local");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
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
    let _child = Killed(child);
    let log = || lines.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
    let status = || -> serde_json::Value {
        get(admin, "/status", "localhost")
            .ok()
            .and_then(|(_, b)| serde_json::from_str(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(40);
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out: {what}; log:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait("the first pod", &|| {
        status()["default/hello-00001"]["ready_pods"].as_i64() == Some(1)
    });

    // Four clients for the whole test; every answer is tallied by body, anything else is an error.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let recent = Arc::new(Mutex::new(Vec::<String>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, tally, recent, errors) = (
                Arc::clone(&stop),
                Arc::clone(&tally),
                Arc::clone(&recent),
                Arc::clone(&errors),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match get(port, "/", "hello.default.example.com") {
                        Ok((200, b)) => {
                            *tally.lock().unwrap().entry(b.clone()).or_default() += 1;
                            let mut r = recent.lock().unwrap();
                            r.push(b);
                            let n = r.len();
                            if n > 200 {
                                r.drain(..n - 200);
                            }
                        }
                        other => errors.lock().unwrap().push(format!("{other:?}")),
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    let count = |body: &str| tally.lock().unwrap().get(body).copied().unwrap_or(0);
    let last_all = |body: &str| {
        let r = recent.lock().unwrap();
        r.len() >= 50 && r[r.len() - 50..].iter().all(|b| b == body)
    };
    wait("blue answers", &|| count("Hello blue!\n") > 20);

    // 1. A template edit: the next revision, and the route moves to it.
    save(&file, &yaml("green", "", ""));
    wait("green only", &|| last_all("Hello green!\n"));
    let s = status();
    assert!(s["default/hello-00002"].is_object(), "{s}");
    assert!(log().contains("new revision"), "{}", log());

    // 2. A bad edit: refused with file:line: field, the running state stays.
    save(
        &file,
        &yaml("green", "      containerConcurrency: lots\n", ""),
    );
    let want = format!(
        "{}:11: spec.template.spec.containerConcurrency: invalid type",
        file.display()
    );
    wait("the refusal", &|| log().contains(&want));
    assert!(log().contains("reload refused"), "{}", log());
    let before = count("Hello green!\n");
    wait("green still served", &|| {
        count("Hello green!\n") > before + 20
    });
    assert!(!status()["default/hello-00003"].is_object());

    // 3. Traffic only: half to the first revision by name, half to the latest; no new revision.
    let split = "  traffic:\n    - revisionName: hello-00001\n      percent: 50\n    - latestRevision: true\n      percent: 50\n";
    let blue_before = count("Hello blue!\n");
    save(&file, &yaml("green", "", split));
    wait("blue again", &|| count("Hello blue!\n") > blue_before + 20);
    let (b, g) = (count("Hello blue!\n"), count("Hello green!\n"));
    wait("both", &|| {
        count("Hello blue!\n") > b + 20 && count("Hello green!\n") > g + 20
    });
    assert!(!status()["default/hello-00003"].is_object(), "{}", status());

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "{} errors: {errors:?}\n{}",
        errors.len(),
        log()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
