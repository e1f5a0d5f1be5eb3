//! `activator local` running the seeds' Service YAML (a container with only `image:`) through a
//! real container engine: an image built here from the `hello-image` example binary (nothing
//! can be pulled), `examples/hello-image/service.yaml` with a 6 s window, from one pod to zero,
//! a cold start, scale up under load, a crashed container replaced, back to zero, and no
//! container left after exit (checked with the engine's own `ps`).
//!
//! Skips, printing why, when no engine can build and run a container on this machine.

mod local_support;
use local_support::{free_port, get};

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LABEL: &str = "dev.knative.local/owner";

fn bin_dir() -> PathBuf {
    let activator = Path::new(env!("CARGO_BIN_EXE_activator"));
    let dir = activator.parent().expect("binary dir").to_path_buf();
    for b in ["queue-proxy", "hello-image"] {
        assert!(
            dir.join(b).is_file(),
            "{b} is not built next to the activator in {}: run `cargo test --workspace` \
             (or `cargo build -p queue-proxy -p examples` first)",
            dir.display()
        );
    }
    dir
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn on_path(p: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()))
}

fn wait_until(within: Duration, what: &str, log: &dyn Fn() -> String, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The engine, with this test's own `containers.conf` (never the machine's), and `--runtime
/// runc` where runc is installed (podman 4.3's default crun fails on cgroup v1 hosts).
struct Engine {
    program: &'static str,
    conf: PathBuf,
    runtime: Option<&'static str>,
}

impl Engine {
    fn cmd(&self) -> Command {
        let mut c = Command::new(self.program);
        c.env("CONTAINERS_CONF", &self.conf).stdin(Stdio::null());
        if let (Some(r), "podman") = (self.runtime, self.program) {
            c.args(["--runtime", r]);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .cmd()
            .args(args)
            .output()
            .map_err(|e| format!("{}: {e}", self.program))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{} {}: {}",
                self.program,
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Names of containers with local mode's label.
    fn labelled(&self) -> Vec<String> {
        let filter = format!("label={LABEL}");
        self.run(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"])
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

/// A temp dir removed on drop.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The engine and a freshly built image, or why not.
fn setup(dir: &Path, image: &str) -> Result<Engine, String> {
    let program = ["podman", "docker"]
        .into_iter()
        .find(|p| on_path(p))
        .ok_or("neither podman nor docker is on PATH")?;
    let conf = dir.join("containers.conf");
    std::fs::write(
        &conf,
        "[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = \"cgroupfs\"\n",
    )
    .map_err(|e| e.to_string())?;
    let engine = Engine {
        program,
        conf,
        runtime: on_path("runc").then_some("runc"),
    };
    engine.run(&["info"])?;
    let build = Command::new(repo().join("examples/hello-image/build.sh"))
        .env("BIN", bin_dir().join("hello-image"))
        .env("IMAGE", image)
        .env("ENGINE", program)
        .env("CONTAINERS_CONF", &engine.conf)
        .output()
        .map_err(|e| format!("build.sh: {e}"))?;
    if !build.status.success() {
        return Err(format!(
            "build.sh: {}",
            String::from_utf8_lossy(&build.stderr).trim()
        ));
    }
    // Can this machine run a container at all?
    let probe = format!("kn-local-preflight-{}", std::process::id());
    let ran = engine.run(&["run", "-d", "--name", &probe, "--pull", "never", image]);
    let _ = engine.run(&["rm", "-f", &probe]);
    ran.map(|_| engine)
}

struct Local {
    child: Child,
    admin: u16,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Local {
    fn log(&self) -> String {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    fn status(&self) -> serde_json::Value {
        get(self.admin, "/status", "localhost")
            .ok()
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .map_or(serde_json::Value::Null, |v| {
                v["default/hello-image-00001"].clone()
            })
    }

    fn ready(&self) -> i64 {
        self.status()["ready_pods"].as_i64().unwrap_or(-1)
    }

    fn pods(&self) -> usize {
        self.status()["pods"]
            .as_array()
            .map_or(usize::MAX, Vec::len)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(self.child.id(), rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn kill(pid: u32, sig: rustix::process::Signal) -> rustix::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or(rustix::io::Errno::INVAL)?;
    rustix::process::kill_process(pid, sig)
}

const HOST: &str = "hello-image.default.example.com";

#[test]
fn image_only_service_runs_from_zero_scales_up_and_back_and_leaves_no_container() {
    let dir = Dir(std::env::temp_dir().join(format!("activator-images-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).expect("tmp dir");
    let image = format!("dev.local/hello:test-{}", std::process::id());
    let engine = match setup(&dir.0, &image) {
        Ok(e) => e,
        Err(why) => {
            eprintln!("SKIPPED image test: no container engine can run here: {why}");
            return;
        }
    };
    struct Rmi<'a>(&'a Engine, &'a str);
    impl Drop for Rmi<'_> {
        fn drop(&mut self) {
            let _ = self.0.run(&["rmi", "-f", self.1]);
        }
    }
    let _rmi = Rmi(&engine, &image);

    // The example as written, with our tag, a short window, target 1 and at most 3 pods.
    let yaml = std::fs::read_to_string(repo().join("examples/hello-image/service.yaml"))
        .expect("example yaml")
        .replace("dev.local/hello:local", &image)
        .replace(
            "  template:\n    spec:\n",
            "  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/window: \"6s\"\n        autoscaling.knative.dev/target: \"1\"\n        autoscaling.knative.dev/max-scale: \"3\"\n    spec:\n",
        );
    assert!(yaml.contains("max-scale"), "example changed shape:\n{yaml}");
    let file = dir.0.join("service.yaml");
    std::fs::write(&file, &yaml).expect("write yaml");

    // A leftover of a killed run (its owner pid is not a running activator) goes at start.
    let leftover = "kn-local-hello-image-00001-99";
    let _ = engine.run(&["rm", "-f", leftover]);
    engine
        .run(&[
            "create",
            "--name",
            leftover,
            "--label",
            &format!("{LABEL}=999999999"),
            "--pull",
            "never",
            &image,
        ])
        .expect("create a leftover container");

    let (port, admin) = (free_port(), free_port());
    let mut cmd = Command::new(bin_dir().join("activator"));
    cmd.arg("local")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--scale-to-zero-grace-period", "1s"])
        .args(["--engine", engine.program])
        .env("CONTAINERS_CONF", &engine.conf)
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(r) = engine.runtime {
        cmd.args(["--engine-runtime", r]);
    }
    let mut child = cmd.spawn().expect("spawn activator local");
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
    let local = Local {
        child,
        admin,
        lines,
    };
    let log = || local.log();

    // The first pod (initial scale 1) serves; its output is prefixed with the pod's name.
    wait_until(Duration::from_secs(30), "the first pod", &log, || {
        local.ready() == 1
    });
    assert!(
        !engine.labelled().iter().any(|n| n == leftover),
        "leftover not removed: {:?}",
        engine.labelled()
    );
    let (code, body) = get(port, "/", HOST).expect("first request");
    assert_eq!((code, body.as_str()), (200, "Hello World!\n"), "{}", log());
    let first = local.status()["pods"][0]["container"]
        .as_str()
        .expect("container name")
        .to_owned();
    assert_eq!(first, "kn-local-hello-image-00001-1");
    wait_until(
        Duration::from_secs(10),
        "prefixed container output",
        &log,
        || {
            local.log().contains(
            "[hello-image-00001-deployment-1] hello-image: revision \"hello-image-00001\" listening on port 8080",
        )
        },
    );

    // A crashed container is replaced.
    engine.run(&["kill", &first]).expect("kill the container");
    wait_until(Duration::from_secs(30), "a replacement pod", &log, || {
        let s = local.status();
        s["ready_pods"] == 1 && s["pods"][0]["container"] != first.as_str()
    });
    wait_until(
        Duration::from_secs(20),
        "the crashed container removed",
        &log,
        || !engine.labelled().contains(&first),
    );

    // Idle → zero pods and no container.
    wait_until(Duration::from_secs(40), "scale to zero", &log, || {
        local.pods() == 0 && engine.labelled().is_empty()
    });

    // Cold start: the request is held until the container serves; the split is reported.
    let asked = Instant::now();
    let (code, body) = get(port, "/", HOST).expect("cold request");
    let client_ms = asked.elapsed().as_secs_f64() * 1e3;
    assert_eq!((code, body.as_str()), (200, "Hello World!\n"), "{}", log());
    wait_until(
        Duration::from_secs(20),
        "the cold-start record",
        &log,
        || local.status()["last_cold_start"]["engine_start_ms"].is_number(),
    );
    let cold = local.status()["last_cold_start"].clone();
    let (engine_ms, app_ms) = (
        cold["engine_start_ms"].as_f64().unwrap_or(-1.0),
        cold["app_listening_ms"].as_f64().unwrap_or(-1.0),
    );
    assert!(engine_ms > 0.0 && app_ms >= engine_ms, "{cold}");
    assert!(local.log().contains("cold start"), "{}", log());
    eprintln!("image cold start: client {client_ms:.0} ms, {cold}");

    // Load with 8 clients at target 1 → more pods (at most 3), each a container.
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, errors, ok) = (Arc::clone(&stop), Arc::clone(&errors), Arc::clone(&ok));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match get(port, "/", HOST) {
                        Ok((200, b)) if b == "Hello World!\n" => ok.fetch_add(1, Ordering::Relaxed),
                        _ => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    wait_until(Duration::from_secs(30), "scale up", &log, || {
        local.ready() >= 2 && engine.labelled().len() >= 2
    });
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0, "{}", log());
    assert!(ok.load(Ordering::Relaxed) > 0);

    // Back to zero.
    wait_until(Duration::from_secs(40), "back to zero", &log, || {
        local.pods() == 0 && engine.labelled().is_empty()
    });

    // A pod again, then SIGTERM: the process exits 0 and no container is left.
    let (code, _) = get(port, "/", HOST).expect("request");
    assert_eq!(code, 200);
    assert!(!engine.labelled().is_empty());
    let mut local = local;
    kill(local.child.id(), rustix::process::Signal::TERM).expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = local.child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit; log:\n{}", local.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert_eq!(engine.labelled(), Vec::<String>::new(), "{}", local.log());
}
