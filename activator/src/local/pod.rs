//! Pods: a `queue-proxy` process configured through Knative's env vars, plus the app: the
//! container's command as a local process, or its image as a container (see [`super::container`]).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::container::{ContainerApp, ContainerSpec};
use super::engine::Engine;
use super::manifest::{RevisionPlan, queue_proxy_probe};
use crate::catalog::RevisionKey;

/// How long a new pod's app may take to accept connections before the start-up time is no
/// longer measured (the pod still becomes ready whenever its queue-proxy says so).
const LISTEN_WATCH: Duration = Duration::from_secs(60);

/// What a revision's pods run.
#[derive(Debug)]
pub struct PodTemplate {
    /// The revision.
    pub key: RevisionKey,
    /// The Service (for `K_SERVICE`, `SERVING_SERVICE`).
    pub service: String,
    /// The resolved program.
    pub program: PathBuf,
    /// The plan (args, env, timeouts, probe).
    pub plan: RevisionPlan,
    /// The `queue-proxy` binary.
    pub queue_proxy: PathBuf,
    /// The container engine, for a container with an `image` and no `command`.
    pub engine: Option<Arc<Engine>>,
}

/// A pod's app: a local process, or a container run by the engine.
#[derive(Debug)]
pub enum App {
    /// The container's `command`.
    Process(Child),
    /// The container's `image`.
    Container(ContainerApp),
}

impl App {
    /// The process id of a local app.
    pub fn pid(&self) -> Option<u32> {
        match self {
            App::Process(c) => c.id(),
            App::Container(_) => None,
        }
    }

    /// The container's name.
    pub fn container(&self) -> Option<&str> {
        match self {
            App::Process(_) => None,
            App::Container(c) => Some(&c.name),
        }
    }
}

/// One running pod.
#[derive(Debug)]
pub struct Pod {
    /// `<revision>-deployment-<n>`.
    pub name: String,
    /// Queue-proxy serving port (the pod's address for the activator).
    pub qp_port: u16,
    /// Queue-proxy autoscaler `Stat` port.
    pub metrics_port: u16,
    /// The app's `PORT`.
    pub user_port: u16,
    /// The queue-proxy answered its readiness probe.
    pub ready: bool,
    /// Consecutive failed re-probes while ready (kubelet's `failureThreshold` count).
    pub probe_failures: u32,
    /// When a ready pod is probed again.
    pub next_probe: Instant,
    /// When the processes were spawned.
    pub spawned: Instant,
    /// Spawn → the app accepting connections (set once, by a watcher task).
    pub listening_after: Arc<OnceLock<Duration>>,
    /// Spawn → the queue-proxy accepting connections (set once, by a watcher task).
    pub qp_listening_after: Arc<OnceLock<Duration>>,
    /// Spawn → the queue-proxy reporting the pod ready (set once, by a watcher task).
    pub ready_after: Arc<OnceLock<Duration>>,
    /// Spawn → the engine reporting the container started (containers only).
    pub engine_after: Arc<OnceLock<Duration>>,
    /// The queue-proxy process.
    pub qp: Child,
    /// The app.
    pub app: App,
    /// The pod's ports, held until the pod is dropped ([`super::port`]).
    pub ports: super::port::Lease,
}

impl Pod {
    /// The `ip:port` the activator sends requests to.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.qp_port)
    }

    /// Whether either process has exited.
    pub fn exited(&mut self) -> bool {
        let app = match &mut self.app {
            App::Process(c) => matches!(c.try_wait(), Ok(Some(_)) | Err(_)),
            App::Container(c) => c.exited(),
        };
        app || matches!(self.qp.try_wait(), Ok(Some(_)) | Err(_))
    }

    /// Whether the app has been started: a process at once, a container once the engine says
    /// so. Until then the pod is not routed to: podman holds a published port open before the
    /// container runs, so a TCP readiness probe could pass with no app behind it.
    pub fn started(&self) -> bool {
        match &self.app {
            App::Process(_) => true,
            App::Container(_) => self.engine_after.get().is_some(),
        }
    }

    /// Asks the queue-proxy whether the pod is ready (`K-Network-Probe: queue`), and that the
    /// answer is this pod's.
    pub async fn probe(&self) -> bool {
        probe_queue(self.qp_port, &self.name).await
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or(0, |d| d.as_secs()).to_string()
}

/// Prefixes each line of the child's stdout/stderr with `prefix` and passes it on.
pub(super) fn pipe_lines(prefix: String, child: &mut Child) {
    if let Some(out) = child.stdout.take() {
        let p = prefix.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                super::console::print(&super::console::pod_line(&p, &l));
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                super::console::print(&super::console::pod_line(&prefix, &l));
            }
        });
    }
}

/// Starts pod number `n` of a revision.
///
/// # Errors
/// When a port cannot be allocated or a process cannot be spawned.
pub fn start(t: &PodTemplate, n: u64) -> std::io::Result<Pod> {
    let name = format!("{}-deployment-{n}", t.key.name);
    // Every pod shares the host's network, so each gets its own free port rather than the
    // declared `containerPort` (documented deviation; the app still reads it from `PORT`).
    let ports = super::port::allocate(super::port::PER_POD)?;
    let (qp_port, user_port, tls) = (ports.get(0), ports.get(1), ports.get(2));
    let (admin, metrics, user_metrics) = (ports.get(3), ports.get(4), ports.get(5));
    let spawned = Instant::now();
    let engine_after = Arc::new(OnceLock::new());
    let app = match (&t.engine, &t.plan.image) {
        (Some(engine), Some(image)) if t.plan.program.as_os_str().is_empty() => {
            let mut env = vec![
                // Knative's contract: the app listens on `containerPort`, given in `PORT`.
                ("PORT".to_owned(), t.plan.container_port.to_string()),
                ("K_SERVICE".to_owned(), t.service.clone()),
                ("K_CONFIGURATION".to_owned(), t.service.clone()),
                ("K_REVISION".to_owned(), t.key.name.clone()),
            ];
            env.extend(t.plan.env.iter().cloned());
            App::Container(ContainerApp::start(
                Arc::clone(engine),
                ContainerSpec {
                    name: format!("kn-local-{}-{n}", t.key.name),
                    pod: name.clone(),
                    image: image.clone(),
                    pull: t.plan.image_pull_policy.clone(),
                    args: t.plan.args.clone(),
                    working_dir: t.plan.working_dir.clone(),
                    env,
                    host_port: user_port,
                    container_port: t.plan.container_port,
                    grace: t.plan.timeout,
                },
                spawned,
                Arc::clone(&engine_after),
            ))
        }
        _ => {
            let mut app = Command::new(&t.program);
            // argv[0] is the command as written, as a container runtime execs it (the program
            // itself may have been found next to this binary).
            app.arg0(&t.plan.program)
                .args(&t.plan.args)
                .envs(t.plan.env.iter().map(|(k, v)| (k, v)))
                .env("PORT", user_port.to_string())
                .env("K_SERVICE", &t.service)
                .env("K_REVISION", &t.key.name)
                .env("K_CONFIGURATION", &t.service)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            if let Some(d) = &t.plan.working_dir {
                app.current_dir(d);
            }
            let mut app = app.spawn().map_err(|e| {
                std::io::Error::new(e.kind(), format!("{}: {e}", t.program.display()))
            })?;
            pipe_lines(name.clone(), &mut app);
            App::Process(app)
        }
    };
    let probe = queue_proxy_probe(
        t.plan.readiness_probe.as_ref(),
        user_port,
        t.plan.container_port,
    )
    .to_string();
    let mut qp = Command::new(&t.queue_proxy);
    qp.env("SERVING_NAMESPACE", &t.key.namespace)
        .env("SERVING_CONFIGURATION", &t.service)
        .env("SERVING_REVISION", &t.key.name)
        .env("SERVING_SERVICE", &t.service)
        .env("SERVING_POD", &name)
        .env("SERVING_POD_IP", "127.0.0.1")
        .env("QUEUE_SERVING_PORT", qp_port.to_string())
        .env("QUEUE_SERVING_TLS_PORT", tls.to_string())
        .env("USER_PORT", user_port.to_string())
        .env(
            "CONTAINER_CONCURRENCY",
            t.plan.container_concurrency.to_string(),
        )
        .env(
            "REVISION_TIMEOUT_SECONDS",
            t.plan.timeout.as_secs().to_string(),
        )
        .env(
            "REVISION_RESPONSE_START_TIMEOUT_SECONDS",
            secs(t.plan.response_start_timeout),
        )
        .env("REVISION_IDLE_TIMEOUT_SECONDS", secs(t.plan.idle_timeout))
        .env("SERVING_READINESS_PROBE", probe)
        .env(
            "ENABLE_HTTP2_AUTO_DETECTION",
            (t.plan.protocol == crate::catalog::Protocol::H2c).to_string(),
        )
        .env("SERVING_LOGGING_CONFIG", "")
        .env("SERVING_LOGGING_LEVEL", "")
        .env("QUEUE_ADMIN_PORT", admin.to_string())
        .env("QUEUE_METRICS_PORT", metrics.to_string())
        .env("QUEUE_USER_METRICS_PORT", user_metrics.to_string())
        .env("QUEUE_DRAIN_SECONDS", "1")
        // Only the activator's `--listen` is meant to be reachable from other machines.
        .env("QUEUE_BIND_ADDRESS", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut qp = qp
        .spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", t.queue_proxy.display())))?;
    pipe_lines(format!("{name}/queue-proxy"), &mut qp);
    let listening_after = Arc::new(OnceLock::new());
    // A container's published port accepts (held by the engine) before the container runs;
    // only once the engine has started it does a connect reach the app.
    let gate = matches!(app, App::Container(_)).then(|| Arc::clone(&engine_after));
    tokio::spawn(watch_listening(
        user_port,
        spawned,
        Arc::clone(&listening_after),
        gate,
    ));
    let qp_listening_after = Arc::new(OnceLock::new());
    tokio::spawn(watch_listening(
        qp_port,
        spawned,
        Arc::clone(&qp_listening_after),
        None,
    ));
    let ready_after = Arc::new(OnceLock::new());
    tokio::spawn(watch_ready(
        qp_port,
        name.clone(),
        spawned,
        Arc::clone(&ready_after),
    ));
    super::console::register_pod(format!("127.0.0.1:{qp_port}"), name.clone());
    tracing::info!(revision = %t.key, pod = %name, "pod started");
    Ok(Pod {
        name,
        qp_port,
        metrics_port: metrics,
        user_port,
        ready: false,
        probe_failures: 0,
        next_probe: spawned,
        spawned,
        listening_after,
        qp_listening_after,
        ready_after,
        engine_after,
        qp,
        app,
        ports,
    })
}

/// Measures the pod-start share of a cold start: connects to the app's port every millisecond
/// (every 10 ms after the first second) until it accepts. The poll costs little next to a
/// process start and bounds the error to the interval.
async fn watch_listening(
    port: u16,
    spawned: Instant,
    out: Arc<OnceLock<Duration>>,
    after: Option<Arc<OnceLock<Duration>>>,
) {
    while spawned.elapsed() < LISTEN_WATCH {
        let open = after.as_ref().is_none_or(|a| a.get().is_some());
        if open && TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            let _ = out.set(spawned.elapsed());
            return;
        }
        tokio::time::sleep(poll_interval(spawned)).await;
    }
}

/// How a ready pod is re-probed, as the kubelet re-probes a readiness probe: every `period`,
/// and out of the endpoints after `failure_threshold` consecutive failures (back in after one
/// success). Taken from the container's `readinessProbe`; without `periodSeconds` the period is
/// 1 s (kubelet's default is 10 s; locally a pod that stops answering should leave the routing
/// within seconds), `failureThreshold` defaults to 3 as in Kubernetes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recheck {
    /// Time between probes of a ready pod.
    pub period: Duration,
    /// Consecutive failures that take a pod out.
    pub failure_threshold: u32,
}

impl Recheck {
    /// From the container's `readinessProbe` (Kubernetes JSON), if any.
    pub fn from_probe(probe: Option<&serde_json::Value>) -> Self {
        let field = |k: &str| {
            probe
                .and_then(|p| p.get(k))
                .and_then(serde_json::Value::as_u64)
                .filter(|v| *v > 0)
        };
        Recheck {
            period: Duration::from_secs(field("periodSeconds").unwrap_or(1)),
            failure_threshold: field("failureThreshold")
                .map_or(3, |v| u32::try_from(v).unwrap_or(u32::MAX)),
        }
    }
}

/// Spawned → the queue-proxy answering its readiness probe with 200, polled like
/// [`watch_listening`]: the gap after the app listens is the queue-proxy's probing (ours).
async fn watch_ready(port: u16, pod: String, spawned: Instant, out: Arc<OnceLock<Duration>>) {
    while spawned.elapsed() < LISTEN_WATCH {
        if probe_queue(port, &pod).await {
            let _ = out.set(spawned.elapsed());
            return;
        }
        tokio::time::sleep(poll_interval(spawned)).await;
    }
}

fn poll_interval(spawned: Instant) -> Duration {
    if spawned.elapsed() < Duration::from_secs(1) {
        Duration::from_millis(1)
    } else {
        Duration::from_millis(10)
    }
}

/// `K-Network-Probe: queue` to a queue-proxy, as the activator sends it (with its user agent,
/// which is what makes the queue-proxy answer the probe itself instead of proxying it to the app
/// as a request): 200 with the body `queue` once the user container passed the readiness probe,
/// 503 before and while draining. The answer must name `pod` (the queue-proxy's
/// `X-Knative-Pod`): a pod is never ready through another process's listener on its port.
async fn probe_queue(port: u16, pod: &str) -> bool {
    let ask = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nK-Network-Probe: queue\r\n\
              User-Agent: Knative-Activator-Probe\r\nConnection: close\r\n\r\n",
        )
        .await
        .ok()?;
        let mut answer = Vec::with_capacity(256);
        s.read_to_end(&mut answer).await.ok()?;
        Some(is_queue_ok(&answer, pod))
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), ask).await,
        Ok(Some(true))
    )
}

/// A `200` whose body is `queue` (the activator's success test; an app answering 200 is not),
/// from the queue-proxy of `pod` (its `X-Knative-Pod` header).
fn is_queue_ok(answer: &[u8], pod: &str) -> bool {
    let Some(at) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..at]);
    let named = head.lines().skip(1).any(|l| {
        l.split_once(':')
            .is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case("x-knative-pod") && v.trim() == pod)
    });
    answer.starts_with(b"HTTP/1.1 200") && named && &answer[at + 4..] == b"queue"
}

/// Stops a pod in Knative's order: SIGTERM to the queue-proxy (it fails probes and drains);
/// the app's pre-stop hook (`/wait-for-drain` on the queue-proxy's admin port) returns once the
/// drain is done, then the app gets SIGTERM while the queue-proxy still carries what is in
/// flight (a WebSocket's closing handshake: the queue-proxy waits for upgraded connections to
/// end before it exits). Each step is bounded; SIGKILL after.
pub async fn stop(mut pod: Pod) {
    signal(&pod.qp, Signal::TERM);
    let admin = pod.ports.get(3);
    let _ = tokio::time::timeout(Duration::from_secs(10), wait_for_drain(admin)).await;
    // Knative stops the user container with SIGTERM once the queue-proxy has drained.
    match pod.app {
        App::Process(mut app) => {
            signal(&app, Signal::TERM);
            if tokio::time::timeout(Duration::from_secs(2), app.wait())
                .await
                .is_err()
            {
                let _ = app.kill().await;
            }
        }
        App::Container(c) => c.stop().await,
    }
    if tokio::time::timeout(Duration::from_secs(10), pod.qp.wait())
        .await
        .is_err()
    {
        let _ = pod.qp.kill().await;
    }
    tracing::info!(pod = %pod.name, "pod stopped");
}

/// `GET /wait-for-drain` on the queue-proxy's admin port: answers when the drain is done (or
/// fails at once when the queue-proxy is gone).
async fn wait_for_drain(admin: u16) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", admin)).await else {
        return;
    };
    let req = b"GET /wait-for-drain HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if s.write_all(req).await.is_ok() {
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer).await;
    }
}

fn signal(child: &Child, sig: Signal) {
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        // ESRCH (already gone) is fine: the caller waits for the exit either way.
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// `GET /metrics` on a queue-proxy's autoscaler port, decoded.
pub async fn scrape(port: u16) -> Option<autoscaler::Stat> {
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

/// The wire `Stat` as the autoscaler library's.
pub fn convert(s: shared::stats::Stat) -> autoscaler::Stat {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_queue_proxys_own_answer_counts_as_ready() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-knative-pod: p-1\r\n\r\nqueue";
        assert!(is_queue_ok(ok, "p-1"));
        assert!(!is_queue_ok(
            b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\n\r\nHello World!\n",
            "p-1"
        ));
        assert!(!is_queue_ok(
            b"HTTP/1.1 503 Service Unavailable\r\n\r\n",
            "p-1"
        ));
        assert!(!is_queue_ok(b"HTTP/1.1 200 OK\r\n", "p-1"));
    }

    /// Issue 16 item 7: a queue-proxy answering for another pod (a sibling that holds the port)
    /// does not make this pod ready; its own answer does.
    #[tokio::test]
    async fn a_pod_is_not_ready_through_another_pods_queue_proxy() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-knative-pod: hello-00001-deployment-1\r\n\r\nqueue")
                    .await;
            }
        });
        assert!(!probe_queue(port, "hello-00001-deployment-2").await);
        assert!(probe_queue(port, "hello-00001-deployment-1").await);
    }

    #[test]
    fn recheck_follows_the_readiness_probe_with_local_defaults() {
        let default = Recheck {
            period: Duration::from_secs(1),
            failure_threshold: 3,
        };
        assert_eq!(Recheck::from_probe(None), default);
        assert_eq!(Recheck::from_probe(Some(&json!({"httpGet": {}}))), default);
        // periodSeconds 0 is Knative's "aggressive" marker, not a period.
        assert_eq!(
            Recheck::from_probe(Some(&json!({"periodSeconds": 0, "failureThreshold": 0}))),
            default
        );
        assert_eq!(
            Recheck::from_probe(Some(&json!({"periodSeconds": 5, "failureThreshold": 1}))),
            Recheck {
                period: Duration::from_secs(5),
                failure_threshold: 1
            }
        );
    }
}
