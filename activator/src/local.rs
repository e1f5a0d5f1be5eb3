//! `activator local SERVICE.yaml...`: runs Knative Services as local processes.
//!
//! Each Service becomes one revision `<service>-00001`. The embedded activator fronts every
//! request (routed by `Host: <service>.<namespace>.<domain>`), the embedded KPA decides the pod
//! count, and each pod is a `queue-proxy` process plus the container's command.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, Endpoints, RevisionKey, RevisionSpec};
use crate::config::Config;
use crate::reporter::StatsSink;
use crate::{Listeners, Shutdown};

/// Local-mode arguments.
#[derive(Debug, clap::Args)]
pub struct LocalArgs {
    /// Knative Service YAML files (`serving.knative.dev/v1`) or directories of them.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Address the activator listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Domain of the routes: `<service>.<namespace>.<domain>`.
    #[arg(long, default_value = "example.com")]
    pub domain: String,
    /// The autoscaler's `scale-to-zero-grace-period`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub scale_to_zero_grace_period: Duration,
    /// Address of the admin listener serving `GET /status` (JSON per revision); off when unset.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Log level (debug, info, warn, error).
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

// ---- YAML ----

#[derive(Debug, Deserialize)]
struct ServiceYaml {
    metadata: Meta,
    #[serde(default)]
    spec: ServiceSpec,
}

#[derive(Debug, Default, Deserialize)]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct ServiceSpec {
    #[serde(default)]
    template: Template,
    #[serde(flatten)]
    other: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
struct Template {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: PodSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    #[serde(default)]
    container_concurrency: Option<u32>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
    #[serde(default)]
    response_start_timeout_seconds: Option<u64>,
    #[serde(default)]
    idle_timeout_seconds: Option<u64>,
    #[serde(default)]
    containers: Vec<Container>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
struct Container {
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
struct EnvVar {
    name: String,
    #[serde(default)]
    value: String,
}

/// One revision to run.
#[derive(Debug)]
struct Revision {
    service: String,
    key: RevisionKey,
    host: String,
    settings: autoscaler::RevisionSettings,
    container_concurrency: u32,
    timeout: Duration,
    response_start_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

fn load(path: &Path, cfg: &autoscaler::Config, domain: &str) -> Result<Revision, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(path, &text, cfg, domain)
}

/// Checks a Service YAML the way `activator local` loads it (default `config-autoscaler`,
/// domain `cluster.local`), without starting anything. The fuzz target's entry point.
///
/// # Errors
/// The message `activator local` would print, naming the file and field.
pub fn check_service(path: &Path, text: &str) -> Result<(), String> {
    parse(path, text, &autoscaler::Config::default(), "cluster.local").map(|_| ())
}

fn parse(
    path: &Path,
    text: &str,
    cfg: &autoscaler::Config,
    domain: &str,
) -> Result<Revision, String> {
    let svc: ServiceYaml =
        serde_yaml_ng::from_str(text).map_err(|e| format!("{}: {e}", path.display()))?;
    let p = path.display();
    if svc.metadata.name.is_empty() {
        return Err(format!("{p}: metadata.name is required"));
    }
    let ns = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let spec = svc.spec.template.spec;
    let Some(c) = spec.containers.into_iter().next() else {
        return Err(format!("{p}: spec.template.spec.containers is empty"));
    };
    if c.command.is_empty() {
        return Err(format!(
            "{p}: container has no `command` (image {:?}); local mode runs commands, not images",
            c.image.unwrap_or_default()
        ));
    }
    let ignored = |what: &str, keys: &BTreeMap<String, serde_yaml_ng::Value>, ok: &[&str]| {
        for k in keys.keys().filter(|k| !ok.contains(&k.as_str())) {
            tracing::warn!(file = %p, field = %format!("{what}.{k}"), "not supported in local mode; ignored");
        }
    };
    ignored("spec", &svc.spec.other, &[]);
    ignored("spec.template.spec", &spec.other, &[]);
    ignored(
        "spec.template.spec.containers[0]",
        &c.other,
        &["name", "ports", "resources"],
    );
    let cc = spec.container_concurrency.unwrap_or(0);
    let ann = &svc.spec.template.metadata.annotations;
    for k in autoscaler::annotation::unknown_keys(ann) {
        tracing::warn!(file = %p, key = %k, "unknown autoscaling annotation");
    }
    let settings = autoscaler::RevisionSettings::from_annotations(
        cfg,
        ann,
        i32::try_from(cc).unwrap_or(i32::MAX),
    )
    .map_err(|e| format!("{p}: {e}"))?;
    let mut cmd = c.command.into_iter();
    let program = resolve_program(&cmd.next().unwrap_or_default());
    let mut args: Vec<String> = cmd.collect();
    args.extend(c.args);
    let name = svc.metadata.name;
    Ok(Revision {
        key: RevisionKey::new(ns.clone(), format!("{name}-00001")),
        host: format!("{name}.{ns}.{domain}"),
        service: name,
        settings,
        container_concurrency: cc,
        timeout: Duration::from_secs(spec.timeout_seconds.unwrap_or(300)),
        response_start_timeout: spec.response_start_timeout_seconds.map(Duration::from_secs),
        idle_timeout: spec.idle_timeout_seconds.map(Duration::from_secs),
        program,
        args,
        env: c.env.into_iter().map(|e| (e.name, e.value)).collect(),
    })
}

/// A bare command name is looked up next to this binary first (`target/*/helloworld`), then PATH.
fn resolve_program(cmd: &str) -> PathBuf {
    if !cmd.contains('/')
        && let Ok(exe) = std::env::current_exe()
    {
        let sibling = exe.with_file_name(cmd);
        if sibling.is_file() {
            return sibling;
        }
    }
    PathBuf::from(cmd)
}

fn secs(d: Option<Duration>) -> String {
    d.map_or(0, |d| d.as_secs()).to_string()
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

// ---- pods ----

struct Pod {
    name: String,
    qp_port: u16,
    metrics_port: u16,
    user_port: u16,
    ready: bool,
    qp: Child,
    app: Child,
}

impl Pod {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.qp_port)
    }
}

fn pipe_lines(prefix: String, child: &mut Child) {
    if let Some(out) = child.stdout.take() {
        let p = prefix.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                println!("[{p}] {l}");
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                eprintln!("[{prefix}] {l}");
            }
        });
    }
}

fn start_pod(rev: &Revision, n: u64) -> std::io::Result<Pod> {
    let name = format!("{}-deployment-{n}", rev.key.name);
    let (qp_port, user_port) = (free_port()?, free_port()?);
    let (admin, metrics, user_metrics) = (free_port()?, free_port()?, free_port()?);
    let mut app = Command::new(&rev.program);
    app.args(&rev.args)
        .envs(rev.env.iter().map(|(k, v)| (k, v)))
        .env("PORT", user_port.to_string())
        .env("K_SERVICE", &rev.service)
        .env("K_REVISION", &rev.key.name)
        .env("K_CONFIGURATION", &rev.service)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut app = app
        .spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", rev.program.display())))?;
    pipe_lines(name.clone(), &mut app);
    let qp_bin = std::env::current_exe()?.with_file_name("queue-proxy");
    let probe = format!(
        r#"{{"tcpSocket":{{"port":{user_port},"host":"127.0.0.1"}},"successThreshold":1}}"#
    );
    let mut qp = Command::new(&qp_bin);
    qp.env("SERVING_NAMESPACE", &rev.key.namespace)
        .env("SERVING_CONFIGURATION", &rev.service)
        .env("SERVING_REVISION", &rev.key.name)
        .env("SERVING_SERVICE", &rev.service)
        .env("SERVING_POD", &name)
        .env("SERVING_POD_IP", "127.0.0.1")
        .env("QUEUE_SERVING_PORT", qp_port.to_string())
        .env("QUEUE_SERVING_TLS_PORT", free_port()?.to_string())
        .env("USER_PORT", user_port.to_string())
        .env(
            "CONTAINER_CONCURRENCY",
            rev.container_concurrency.to_string(),
        )
        .env(
            "REVISION_TIMEOUT_SECONDS",
            rev.timeout.as_secs().to_string(),
        )
        .env(
            "REVISION_RESPONSE_START_TIMEOUT_SECONDS",
            secs(rev.response_start_timeout),
        )
        .env("REVISION_IDLE_TIMEOUT_SECONDS", secs(rev.idle_timeout))
        .env("SERVING_READINESS_PROBE", probe)
        .env("SERVING_LOGGING_CONFIG", "")
        .env("SERVING_LOGGING_LEVEL", "")
        .env("QUEUE_ADMIN_PORT", admin.to_string())
        .env("QUEUE_METRICS_PORT", metrics.to_string())
        .env("QUEUE_USER_METRICS_PORT", user_metrics.to_string())
        .env("QUEUE_DRAIN_SECONDS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut qp = qp
        .spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", qp_bin.display())))?;
    pipe_lines(format!("{name}/queue-proxy"), &mut qp);
    tracing::info!(revision = %rev.key, pod = %name, "pod started");
    Ok(Pod {
        name,
        qp_port,
        metrics_port: metrics,
        user_port,
        ready: false,
        qp,
        app,
    })
}

/// SIGTERM the queue-proxy, wait for it (bounded), then kill the app.
async fn stop_pod(mut pod: Pod) {
    if let Some(pid) = pod.qp.id() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(10), pod.qp.wait())
        .await
        .is_err()
    {
        let _ = pod.qp.kill().await;
    }
    let _ = pod.app.kill().await;
    tracing::info!(pod = %pod.name, "pod stopped");
}

async fn port_open(port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(200),
            TcpStream::connect(("127.0.0.1", port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// `GET /metrics` on a queue-proxy's autoscaler port, decoded.
async fn scrape(port: u16) -> Option<autoscaler::Stat> {
    let fetch = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let at = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") || head.contains("transfer-encoding: chunked") {
            return None;
        }
        let s: shared::stats::Stat = prost::Message::decode(&buf[at + 4..]).ok()?;
        Some(s)
    };
    let s = tokio::time::timeout(Duration::from_millis(500), fetch)
        .await
        .ok()??;
    Some(convert(s))
}

fn convert(s: shared::stats::Stat) -> autoscaler::Stat {
    autoscaler::Stat {
        pod_name: s.pod_name,
        average_concurrent_requests: s.average_concurrent_requests,
        average_proxied_concurrent_requests: s.average_proxied_concurrent_requests,
        request_count: s.request_count,
        proxied_request_count: s.proxied_request_count,
        process_uptime: s.process_uptime,
        timestamp: s.timestamp,
    }
}

/// Per-revision status for `GET /status`.
type StatusMap = Arc<Mutex<BTreeMap<String, serde_json::Value>>>;

/// Serves `GET /status` (any path, in fact) as JSON until the process ends.
async fn serve_status(listener: TcpListener, status: StatusMap) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let status = Arc::clone(&status);
        tokio::spawn(async move {
            // Read the whole head: closing with unread bytes would reset the connection.
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
            let req = String::from_utf8_lossy(&buf);
            let (code, body) = if req.starts_with("GET /status ") {
                let v = serde_json::to_string(&*status.lock().unwrap_or_else(|e| e.into_inner()))
                    .unwrap_or_default();
                ("200 OK", v)
            } else {
                (
                    "404 Not Found",
                    "{\"error\":\"try GET /status\"}".to_owned(),
                )
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

/// Scales one revision until `stop`.
async fn revision_loop(
    rev: Revision,
    status: StatusMap,
    catalog: Catalog,
    mut stats: mpsc::Receiver<autoscaler::Stat>,
    start: Instant,
    stop: CancellationToken,
) {
    let mut kpa = autoscaler::RevisionAutoscaler::new(rev.settings.clone(), start.elapsed(), 0);
    let mut pods: Vec<Pod> = Vec::new();
    let mut seq = 0u64;
    let mut published = Endpoints::default();
    let mut last_tick = Instant::now() - Duration::from_secs(10);
    let mut last_status = Instant::now();
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    loop {
        let mut poked = false;
        tokio::select! {
            () = stop.cancelled() => break,
            _ = poll.tick() => {}
            s = stats.recv() => match s {
                Some(s) => poked = kpa.record_activator(start.elapsed(), &s),
                None => break,
            },
        }
        // A pod whose app or queue-proxy exited is dropped; the next tick replaces it.
        let before = pods.len();
        pods.retain_mut(|p| {
            let dead = matches!(p.app.try_wait(), Ok(Some(_)) | Err(_))
                || matches!(p.qp.try_wait(), Ok(Some(_)) | Err(_));
            if dead {
                tracing::warn!(revision = %rev.key, pod = %p.name, "pod exited; replacing it");
            }
            !dead
        });
        if pods.len() != before {
            last_tick = Instant::now() - Duration::from_secs(10);
        }
        // Readiness: the app and the queue-proxy both accept connections.
        for p in pods.iter_mut().filter(|p| !p.ready) {
            p.ready = port_open(p.user_port).await && port_open(p.qp_port).await;
        }
        if poked || last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            let ready = i32::try_from(pods.iter().filter(|p| p.ready).count()).unwrap_or(0);
            let mut scraped = Vec::new();
            for p in pods.iter().filter(|p| p.ready) {
                if let Some(s) = scrape(p.metrics_port).await {
                    scraped.push(s);
                }
            }
            let now = start.elapsed();
            kpa.record_scrape(now, &scraped, ready);
            let snap = kpa.tick(now, ready, true);
            if let Ok(want) = usize::try_from(snap.desired_pods) {
                while pods.len() < want {
                    seq += 1;
                    match start_pod(&rev, seq) {
                        Ok(p) => pods.push(p),
                        Err(e) => {
                            tracing::error!(revision = %rev.key, error = %e, "cannot start pod");
                            break;
                        }
                    }
                }
                while pods.len() > want {
                    // Remove the newest (not-ready first) pod from the endpoints before stopping it.
                    let idx = pods
                        .iter()
                        .rposition(|p| !p.ready)
                        .unwrap_or(pods.len() - 1);
                    let p = pods.remove(idx);
                    let ep = endpoints(&pods);
                    catalog.set_endpoints(&rev.key, ep.clone());
                    published = ep;
                    tokio::spawn(stop_pod(p));
                }
            }
            status.lock().unwrap_or_else(|e| e.into_inner()).insert(
                rev.key.to_string(),
                serde_json::json!({
                    "host": rev.host,
                    "desired_pods": snap.desired_pods,
                    "ready_pods": ready,
                    "pods": pods.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
                    "stable_concurrency": snap.stable_concurrency,
                    "panic_concurrency": snap.panic_concurrency,
                    "panic": snap.panic,
                    "excess_burst_capacity": snap.excess_burst_capacity,
                }),
            );
            if last_status.elapsed() >= Duration::from_secs(3) {
                last_status = Instant::now();
                tracing::info!(
                    revision = %rev.key,
                    desired = snap.desired_pods,
                    ready,
                    pods = pods.len(),
                    stable = format!("{:.2}", snap.stable_concurrency),
                    panic_concurrency = format!("{:.2}", snap.panic_concurrency),
                    panic = snap.panic,
                    ebc = snap.excess_burst_capacity,
                    "status"
                );
            }
        }
        let ep = endpoints(&pods);
        if ep != published {
            catalog.set_endpoints(&rev.key, ep.clone());
            published = ep;
        }
    }
    for p in pods {
        stop_pod(p).await;
    }
}

fn endpoints(pods: &[Pod]) -> Endpoints {
    let (ready, not_ready): (Vec<&Pod>, Vec<&Pod>) = pods.iter().partition(|p| p.ready);
    Endpoints {
        ready: ready.iter().map(|p| p.addr()).collect(),
        not_ready: not_ready.iter().map(|p| p.addr()).collect(),
        cluster_ip: None,
    }
}

/// Runs local mode.
pub fn main(args: LocalArgs) -> ExitCode {
    let level =
        shared::telemetry::log::parse_level(&args.log_level).unwrap_or(tracing::Level::INFO);
    shared::telemetry::log::init(shared::telemetry::log::LogFormat::Human, level);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("activator local: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("activator local: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: LocalArgs) -> Result<(), String> {
    let cfg = autoscaler::Config {
        scale_to_zero_grace_period: args.scale_to_zero_grace_period,
        ..autoscaler::Config::default()
    };
    let mut files = Vec::new();
    for f in &args.files {
        if f.is_dir() {
            let rd = std::fs::read_dir(f).map_err(|e| format!("{}: {e}", f.display()))?;
            let mut in_dir: Vec<PathBuf> = rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            in_dir.sort();
            files.extend(in_dir);
        } else {
            files.push(f.clone());
        }
    }
    let mut revisions = Vec::new();
    for f in &files {
        revisions.push(load(f, &cfg, &args.domain)?);
    }
    let (first, second) = shared::shutdown::signals().map_err(|e| e.to_string())?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("listen {}: {e}", args.listen))?;
    let status: StatusMap = Arc::default();
    if let Some(addr) = args.admin {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("admin listen {addr}: {e}"))?;
        tracing::info!(url = %format!("http://{addr}/status"), "status");
        tokio::spawn(serve_status(l, Arc::clone(&status)));
    }
    let catalog = Catalog::new();
    let (sink, mut rx) = StatsSink::channel(1024);
    let start = Instant::now();
    let stop = CancellationToken::new();
    let mut senders = BTreeMap::new();
    let mut loops = tokio::task::JoinSet::new();
    for rev in revisions {
        catalog.upsert_revision(
            rev.key.clone(),
            RevisionSpec {
                container_concurrency: rev.container_concurrency,
                timeout: rev.timeout,
                response_start_timeout: rev.response_start_timeout,
                idle_timeout: rev.idle_timeout,
                service: rev.service.clone(),
                configuration: rev.service.clone(),
                ..RevisionSpec::default()
            },
        );
        catalog.set_route(&rev.host, rev.key.clone());
        tracing::info!(revision = %rev.key, route = %format!("http://{}/ (Host: {})", args.listen, rev.host), "serving");
        let (tx, srx) = mpsc::channel(64);
        senders.insert((rev.key.namespace.clone(), rev.key.name.clone()), tx);
        loops.spawn(revision_loop(
            rev,
            Arc::clone(&status),
            catalog.clone(),
            srx,
            start,
            stop.clone(),
        ));
    }
    tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            for m in batch.messages {
                if let (Some(tx), Some(s)) = (senders.get(&(m.namespace, m.name)), m.stat) {
                    let _ = tx.try_send(convert(s));
                }
            }
        }
    });
    let shutdown = Shutdown::default();
    let exit = shutdown.exit.clone();
    let activator = tokio::spawn(crate::run(
        Config::in_process("activator-local", "127.0.0.1"),
        Listeners {
            http1: listener,
            h2c: None,
            metrics: None,
        },
        catalog,
        sink,
        shutdown,
    ));
    first.cancelled().await;
    tracing::info!("stopping: terminating pods (Ctrl-C again to force)");
    stop.cancel();
    exit.cancel();
    tokio::select! {
        _ = async { while loops.join_next().await.is_some() {} } => {}
        () = second.cancelled() => {}
    }
    match activator.await {
        Ok(Ok(())) | Err(_) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
    }
}
