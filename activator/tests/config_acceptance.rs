//! Issue 14: the activator's binary with upstream `config-observability` request-log values: Go
//! templates render as Knative's activator renders them, and a template Go rejects is logged
//! while the activator keeps serving.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

const DEADLINE: Duration = Duration::from_secs(20);
const HOST: &str = "rev.ns.svc.cluster.local";

/// A ready pod: answers Knative's queue probe with `queue` and anything else with `ok`.
async fn pod() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let probe = req
                            .headers()
                            .get("k-network-probe")
                            .is_some_and(|v| v == "queue");
                        let mut r = Response::new(Full::new(Bytes::from_static(if probe {
                            b"queue"
                        } else {
                            b"ok"
                        })));
                        if probe {
                            r.headers_mut()
                                .insert("k-network-probe", "queue".parse().unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(r)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the activator with `template`, sends one request, and returns everything it printed.
async fn run_with_template(tag: &str, template: &str) -> (StatusCode, String) {
    let pod = pod().await;
    let dir = std::env::temp_dir().join(format!("activator-cfgacc-{tag}-{}", std::process::id()));
    let obs = dir.join("config-observability");
    std::fs::create_dir_all(&obs).unwrap();
    std::fs::write(obs.join("logging.enable-request-log"), "true").unwrap();
    std::fs::write(obs.join("logging.request-log-template"), template).unwrap();
    let file = dir.join("catalog.yaml");
    std::fs::write(
        &file,
        format!("revisions:\n- namespace: ns\n  name: rev\n  ready: [\"{pod}\"]\n"),
    )
    .unwrap();
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_activator"))
        .env_clear()
        .env("POD_NAME", "a")
        .env("POD_IP", "10.0.0.1")
        .env("SYSTEM_NAMESPACE", "knative-serving")
        .env("ACTIVATOR_CONFIG_OBSERVABILITY", &obs)
        .args(["--source", &format!("file:{}", file.display())])
        .args(["--stats-sink", "none", "--metrics-addr", "none"])
        .args(["--http1-addr", &format!("127.0.0.1:{port}")])
        .args(["--h2c-addr", &format!("127.0.0.1:{}", free_port())])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let c = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let send = || {
        let req = Request::builder()
            .uri(format!("http://127.0.0.1:{port}/p?q=1"))
            .header("host", HOST)
            .header("x-request-id", "rid-9")
            .header("user-agent", "a<b")
            .body(Full::new(Bytes::new()))
            .unwrap();
        c.request(req)
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let status = loop {
        match send().await {
            Ok(r) if r.status() == StatusCode::OK => {
                let _ = r.into_body().collect().await;
                break StatusCode::OK;
            }
            r => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "activator never served: {:?}",
                    r.map(|r| r.status())
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &child.id().unwrap().to_string()])
        .status();
    let mut out = String::new();
    for r in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let mut r = r;
        tokio::time::timeout(
            DEADLINE,
            tokio::io::AsyncReadExt::read_to_string(&mut r, &mut out),
        )
        .await
        .unwrap()
        .unwrap();
    }
    let _ = std::fs::remove_dir_all(dir);
    (status, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_templates_render_in_the_activator() {
    let (s, out) = run_with_template(
        "go",
        r#"RL {{.Request.Method}} {{.Request.Header.Get "X-Request-Id"}} {{.Request.URL.Path}} {{printf "code=%d" .Response.Code}}{{if eq .Response.Code 200}} ok{{end}} {{with .Request.UserAgent}}{{js .}}{{end}} {{.Revision.Namespace}}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("RL ")).collect();
    // The first successful request may follow a few 503/502s while the pod is probed; every
    // routed request is logged, and the last one is ours with status 200.
    assert_eq!(
        lines.last().copied(),
        Some("RL GET rid-9 /p code=200 ok a\\u003Cb ns"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_go_rejects_is_logged_and_the_activator_serves() {
    let (s, out) = run_with_template("bad", "RL {{if .Request.Method}}").await;
    assert_eq!(s, StatusCode::OK, "{out}");
    assert!(
        out.contains("Failed to update the request log template."),
        "{out}"
    );
    assert!(!out.lines().any(|l| l.starts_with("RL ")), "{out}");
}

/// Issue 14 item 7: the activator's lines carry `knative.dev/controller: activator`, zapdriver's
/// level names and nanosecond timestamps, as Knative's with a stock `config-logging`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_are_knatives() {
    // A template Go rejects makes the activator log an ERROR line.
    let (_, out) = run_with_template("log", "RL {{if}}").await;
    let lines: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v.get("severity").is_some())
        .collect();
    assert!(!lines.is_empty(), "{out}");
    for v in &lines {
        assert_eq!(v["knative.dev/controller"], "activator", "{v}");
        assert_eq!(v["logger"], "activator", "{v}");
        let sev = v["severity"].as_str().unwrap();
        assert!(["DEBUG", "INFO", "WARNING", "ERROR"].contains(&sev), "{v}");
        let ts = v["timestamp"].as_str().unwrap();
        let frac = ts.trim_end_matches('Z').split_once('.').map_or("", |f| f.1);
        assert!(frac.len() <= 9 && !frac.ends_with('0'), "{ts}");
    }
    assert!(lines.iter().any(|v| v["severity"] == "ERROR"), "{out}");
}
