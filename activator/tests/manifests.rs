//! Our manifests against the binary: `config/standalone/example.yaml` run as written (its
//! activator args and source file), every env var `config/base` sets is one the binary reads,
//! and a stats sink that cannot connect is reported where an operator sees it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_yaml_ng::Value;
use tokio::io::AsyncBufReadExt as _;

const DEADLINE: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The example's documents.
fn example() -> Vec<Value> {
    manifest("standalone/example.yaml")
}

/// The documents of `config/<path>`.
fn manifest(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{}/../config/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} in the example"))
}

/// Stdout lines of a child, collected as they come.
fn follow(child: &mut tokio::process::Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = child.stdout.take().unwrap();
    let l = Arc::clone(&lines);
    tokio::spawn(async move {
        let mut r = tokio::io::BufReader::new(out).lines();
        while let Ok(Some(line)) = r.next_line().await {
            l.lock().unwrap().push(line);
        }
    });
    lines
}

fn count(lines: &Mutex<Vec<String>>, f: impl Fn(&str) -> bool) -> usize {
    lines.lock().unwrap().iter().filter(|l| f(l)).count()
}

/// A kubelet probe to the activator: `Some(status)` once it answers.
async fn kubelet_probe(port: u16) -> Option<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(
        b"GET / HTTP/1.1\r\nhost: x\r\nk-kubelet-probe: activator\r\nconnection: close\r\n\r\n",
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_example_needs_no_autoscaler() {
    let docs = example();
    let source = find(&docs, "ConfigMap", "activator-source")["data"]["source.yaml"]
        .as_str()
        .unwrap()
        .to_owned();
    let container =
        &find(&docs, "Deployment", "activator")["spec"]["template"]["spec"]["containers"][0];
    let dir = std::env::temp_dir().join(format!("activator-standalone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("source.yaml");
    std::fs::write(&src, source).unwrap();
    // The example's args as written, with the mounted path pointed at the temp copy.
    let args: Vec<String> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace("/etc/activator/source.yaml", src.to_str().unwrap())
        })
        .collect();
    assert!(
        args.windows(2).any(|w| w == ["--stats-sink", "none"]),
        "the example must not dial an autoscaler that does not exist: {args:?}"
    );
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_activator"))
        .env_clear()
        .env("POD_NAME", "activator-0")
        .env("POD_IP", "127.0.0.1")
        .env("SYSTEM_NAMESPACE", "knative-rs-demo")
        .args(&args)
        .args(["--metrics-addr", "none", "--profiling-port", "0"])
        .args(["--http1-addr", &format!("127.0.0.1:{port}")])
        .args(["--h2c-addr", &format!("127.0.0.1:{}", free_port())])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = follow(&mut child);
    let ready = tokio::time::timeout(DEADLINE, async {
        loop {
            if kubelet_probe(port).await == Some(200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        ready.is_ok(),
        "activator not healthy: {:?}",
        lines.lock().unwrap()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&lines, |l| l.contains("autoscaler")),
        0,
        "{:?}",
        lines.lock().unwrap()
    );
    child.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_stats_sink_is_a_warning_once_per_outage() {
    let dir = std::env::temp_dir().join(format!("activator-sink-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("source.yaml");
    std::fs::write(&src, "revisions: []\n").unwrap();
    // Nothing listens on this port: every connect is refused at once.
    let sink = format!("ws://127.0.0.1:{}/", free_port());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_activator"))
        .env_clear()
        .env("POD_NAME", "activator-0")
        .env("POD_IP", "127.0.0.1")
        .env("SYSTEM_NAMESPACE", "knative-serving")
        .args(["--source", &format!("file:{}", src.display())])
        .args(["--stats-sink", &sink, "--metrics-addr", "none"])
        .args(["--profiling-port", "0"])
        .args(["--http1-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--h2c-addr", &format!("127.0.0.1:{}", free_port())])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = follow(&mut child);
    let warned =
        |l: &str| l.contains("\"severity\":\"WARNING\"") && l.contains("autoscaler connect");
    let seen = tokio::time::timeout(DEADLINE, async {
        while count(&lines, warned) == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(seen.is_ok(), "no warning: {:?}", lines.lock().unwrap());
    // Retries (every 0.1–5 s) stay below warning level within the same outage.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(count(&lines, warned), 1, "{:?}", lines.lock().unwrap());
    assert!(
        lines.lock().unwrap().iter().any(|l| l.contains(&sink)),
        "the warning names the URL"
    );
    child.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_env_var_of_our_deployment_is_read_and_no_volume_is_needed() {
    use clap::CommandFactory as _;
    let docs = manifest("base/activator.yaml");
    let spec = &find(&docs, "Deployment", "activator")["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    let read: Vec<String> = activator::cli::Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    for e in container["env"].as_sequence().unwrap() {
        let name = e["name"].as_str().unwrap();
        assert!(
            read.iter().any(|r| r == name),
            "{name} is set but never read"
        );
    }
    // ConfigMaps come from the API (Knative's Role), so the Deployment mounts nothing, as
    // Knative's own does.
    assert!(container.get("volumeMounts").is_none() && spec.get("volumes").is_none());
}
