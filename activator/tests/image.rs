//! The container images, built and run: the `*-local` targets of the `Dockerfile` (FROM scratch,
//! the binary and its few glibc libraries) built with podman from the binaries cargo built, no
//! registry needed; each run as the image's own user (65532, as Knative's `runAsNonRoot` without
//! `runAsUser` requires) with a read-only root filesystem and the env Knative sets, and a request
//! served through both: client → activator container → queue-proxy container → app.
//!
//! Part of the default run (≈ 20 s here with debug binaries; the images copy ≈ 350 MB). Alone:
//! `cargo build -p queue-proxy && cargo test -p activator --test image -- --nocapture`
//! (`IMAGE_BIN_DIR=target/release` for release binaries and their sizes). Without podman, or on
//! an engine that cannot run containers, it prints why and passes without checking anything.
//!
//! podman 4.3 on cgroup-v1/hybrid hosts: crun refuses ("cgroups in hybrid mode not supported"),
//! so this uses `--runtime runc` with a containers.conf of its own (`CONTAINERS_CONF` in its temp
//! dir) that sets `cgroup_manager = "cgroupfs"` and no default ulimits.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// podman with this test's own configuration.
struct Podman {
    conf: PathBuf,
}

impl Podman {
    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf)
            .args(["--runtime", "runc"]);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("podman runs")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// The shared libraries `bin` loads, from `ldd` (absolute paths; the vdso has none).
fn shared_libs(bin: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(bin).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect()
}

/// A build context: `bin/` with both binaries and `rootfs/` with their libraries at the same
/// paths as on this host.
fn context(dir: &Path, bins: &[PathBuf]) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    for b in bins {
        std::fs::copy(b, dir.join("bin").join(b.file_name().unwrap())).unwrap();
        for lib in shared_libs(b) {
            let to = dir.join("rootfs").join(lib.strip_prefix("/").unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            // Resolve symlinks (ld-linux is usually one): the image gets the real file.
            std::fs::copy(std::fs::canonicalize(&lib).unwrap(), &to).unwrap();
        }
    }
}

/// The app behind the queue-proxy.
async fn app(stop: CancellationToken) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let svc = tower::service_fn(|_req: Request<Incoming>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
            b"hello from the app",
        ))))
    });
    tokio::spawn(shared::http::server::serve(
        l,
        svc,
        shared::http::server::ServerOptions::default(),
        stop,
    ));
    port
}

/// Raw HTTP/1.1 GET through the activator for `ns/hello-00001`: the whole response text.
async fn through_activator(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(
        b"GET / HTTP/1.1\r\nhost: hello.ns.example.com\r\nknative-serving-namespace: ns\r\n\
          knative-serving-revision: hello-00001\r\nconnection: close\r\n\r\n",
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// The uid the container's main process runs as, from the host's /proc.
fn container_uid(podman: &Podman, name: &str) -> String {
    let pid = podman.ok(&["inspect", "--format", "{{.State.Pid}}", name]);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|u| u.split_whitespace().next())
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_images_build_run_read_only_as_65532_and_serve() {
    if Command::new("podman").arg("--version").output().is_err() {
        println!("SKIPPED: podman is not installed (apt-get install podman runc)");
        return;
    }
    let bin_dir = std::env::var_os("IMAGE_BIN_DIR").map_or_else(
        || {
            Path::new(env!("CARGO_BIN_EXE_activator"))
                .parent()
                .unwrap()
                .to_owned()
        },
        PathBuf::from,
    );
    let bins = [bin_dir.join("queue-proxy"), bin_dir.join("activator")];
    if let Some(missing) = bins.iter().find(|b| !b.exists()) {
        println!(
            "SKIPPED: {} is missing (cargo build -p queue-proxy -p activator)",
            missing.display()
        );
        return;
    }
    let tag = std::process::id();
    let dir = std::env::temp_dir().join(format!("knative-rs-image-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("containers.conf");
    std::fs::write(
        &conf,
        "[containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = \"cgroupfs\"\n",
    )
    .unwrap();
    let podman = Podman { conf };
    let ctx = dir.join("context");
    context(&ctx, &bins);
    let dockerfile = concat!(env!("CARGO_MANIFEST_DIR"), "/../Dockerfile");
    let images = [
        (
            "queue-proxy-local",
            format!("localhost/knative-rs-test/queue-proxy:{tag}"),
        ),
        (
            "activator-local",
            format!("localhost/knative-rs-test/activator:{tag}"),
        ),
    ];
    for (target, image) in &images {
        let out = podman.run(&[
            "build",
            "--pull=never",
            "-f",
            dockerfile,
            "--target",
            target,
            "-t",
            image,
            ctx.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "building {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let size = podman.ok(&["image", "inspect", "--format", "{{.Size}}", image]);
        let user = podman.ok(&["image", "inspect", "--format", "{{.Config.User}}", image]);
        assert_eq!(user, "65532:65532");
        println!(
            "image {image}: {size} bytes (binaries from {})",
            bin_dir.display()
        );
    }

    let stop = CancellationToken::new();
    let app_port = app(stop.clone()).await;
    let qp_port = free_port();
    let qp = format!("knative-rs-test-qp-{tag}");
    let act = format!("knative-rs-test-act-{tag}");
    // Host networking: the containers and this test meet on 127.0.0.1. No --user: the image's
    // own USER must apply, as under Knative's runAsNonRoot.
    let common = [
        "run",
        "-d",
        "--rm",
        "--network",
        "host",
        "--read-only",
        "--pull=never",
    ];
    let qp_env = [
        "SERVING_NAMESPACE=ns".to_owned(),
        "SERVING_CONFIGURATION=hello".to_owned(),
        "SERVING_REVISION=hello-00001".to_owned(),
        "SERVING_SERVICE=hello".to_owned(),
        "SERVING_POD=hello-00001-deployment-abc".to_owned(),
        "SERVING_POD_IP=127.0.0.1".to_owned(),
        format!("QUEUE_SERVING_PORT={qp_port}"),
        format!("QUEUE_SERVING_TLS_PORT={}", free_port()),
        format!("USER_PORT={app_port}"),
        "CONTAINER_CONCURRENCY=0".to_owned(),
        "REVISION_TIMEOUT_SECONDS=300".to_owned(),
        "SERVING_LOGGING_CONFIG=".to_owned(),
        "SERVING_LOGGING_LEVEL=".to_owned(),
        r#"OBSERVABILITY_CONFIG={"tracing":{},"metrics":{},"runtime":{},"requestMetrics":{}}"#
            .to_owned(),
        format!("QUEUE_ADMIN_PORT={}", free_port()),
        format!("QUEUE_METRICS_PORT={}", free_port()),
        format!("QUEUE_USER_METRICS_PORT={}", free_port()),
        "SYSTEM_NAMESPACE=knative-serving".to_owned(),
        "HOST_IP=127.0.0.1".to_owned(),
        "ROOT_CA=".to_owned(),
    ];
    let mut args: Vec<String> = common.iter().map(|s| (*s).to_owned()).collect();
    args.extend(["--name".to_owned(), qp.clone()]);
    for e in &qp_env {
        args.extend(["-e".to_owned(), e.clone()]);
    }
    args.push(images[0].1.clone());
    let started = podman.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    if !started.status.success() {
        // The engine is there but cannot run containers here (e.g. no runc, no cgroups).
        println!(
            "SKIPPED: podman cannot run a container here: {}",
            String::from_utf8_lossy(&started.stderr)
        );
        let _ = std::fs::remove_dir_all(&dir);
        for (_, image) in &images {
            let _ = podman.run(&["rmi", "-f", image]);
        }
        return;
    }

    let src = dir.join("source");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("source.yaml"),
        format!(
            "revisions:\n  - namespace: ns\n    name: hello-00001\n    containerConcurrency: 0\n    \
             service: hello\n    configuration: hello\n    ready: [\"127.0.0.1:{qp_port}\"]\n"
        ),
    )
    .unwrap();
    let act_port = free_port();
    let mut args: Vec<String> = common.iter().map(|s| (*s).to_owned()).collect();
    args.extend(
        [
            "--name",
            &act,
            "-v",
            &format!("{}:/etc/activator:ro", src.display()),
            "-e",
            "POD_NAME=activator-0",
            "-e",
            "POD_IP=127.0.0.1",
            "-e",
            "SYSTEM_NAMESPACE=knative-serving",
            "-e",
            "CONFIG_LOGGING_NAME=config-logging",
            "-e",
            "CONFIG_OBSERVABILITY_NAME=config-observability",
            "-e",
            &format!("PROFILING_PORT={}", free_port()),
            &images[1].1,
            "--source",
            "file:/etc/activator/source.yaml",
            "--stats-sink",
            "none",
            "--metrics-addr",
            "none",
            "--http1-addr",
            &format!("127.0.0.1:{act_port}"),
            "--h2c-addr",
            &format!("127.0.0.1:{}", free_port()),
        ]
        .map(str::to_owned),
    );
    podman.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let served = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(r) = through_activator(act_port).await
                && r.starts_with("HTTP/1.1 200")
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let logs = |name: &str| {
        let out = podman.run(&["logs", name]);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let uids = (container_uid(&podman, &qp), container_uid(&podman, &act));
    let (qp_logs, act_logs) = (logs(&qp), logs(&act));
    for name in [&qp, &act] {
        let _ = podman.run(&["rm", "-f", "-t", "1", name]);
    }
    for (_, image) in &images {
        let _ = podman.run(&["rmi", "-f", image]);
    }
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    let served = served.unwrap_or_else(|_| {
        panic!("no 200 through both containers\nqueue-proxy:\n{qp_logs}\nactivator:\n{act_logs}")
    });
    assert!(served.ends_with("hello from the app"), "{served}");
    assert_eq!(uids, ("65532".to_owned(), "65532".to_owned()));
}
