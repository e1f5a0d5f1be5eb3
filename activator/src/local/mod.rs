//! `activator local SERVICE.yaml...`: runs Knative Services as local processes.
//!
//! The embedded activator fronts every request (routed by `Host: <service>.<namespace>.<domain>`,
//! split by the Service's `traffic` percentages, and `<tag>-<service>...` for tags), the embedded
//! KPA decides each revision's pod count, and each pod is a `queue-proxy` process plus the
//! container's command.
//!
//! # Layout
//! - [`manifest`]: Service YAML → revisions and traffic (pure, validated, with file:line errors).
//! - [`pod`]: starting, probing, scraping and stopping one pod's processes.
//! - [`engine`], [`container`]: podman or docker, for a container with an `image` and no
//!   `command`.
//! - [`scaler`]: one loop per revision: KPA tick, pods to match, endpoints, status.
//! - [`status`]: `GET /status` JSON.
//! - [`console`]: readable output, the live view on a terminal, the request log.

pub mod console;
pub mod container;
pub mod engine;
pub mod manifest;
pub mod pod;
pub mod scaler;
pub mod status;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::manifest::{ManifestError, ServicePlan};
use self::pod::PodTemplate;
use self::scaler::RevisionLoop;
use self::status::StatusMap;
use crate::catalog::{Catalog, RevisionKey, RevisionSpec};
use crate::config::Config;
use crate::reporter::StatsSink;
use crate::split::TrafficSplit;
use crate::{Listeners, Shutdown};

/// Local-mode arguments.
#[derive(Debug, clap::Args)]
pub struct LocalArgs {
    /// Knative Service YAML files (`serving.knative.dev/v1`) or directories of them. Several
    /// documents for the same Service are successive versions: each template is a revision, the
    /// last document's `traffic` wins.
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
    /// `human`: readable lines (pods' JSON rendered), and a live view of the revisions when
    /// stdout is a terminal; `json`: one JSON object per line.
    #[arg(
        long,
        env = "ACTIVATOR_LOCAL_LOG_FORMAT",
        value_enum,
        default_value = "human"
    )]
    pub log_format: console::Format,
    /// One line per request: time, method, host, path, status, latency, revision, held ms.
    #[arg(long, env = "ACTIVATOR_LOCAL_REQUEST_LOG")]
    pub request_log: bool,
    /// Container engine for containers with an `image` and no `command` (default: podman, else
    /// docker, whichever is on PATH first in that order).
    #[arg(long, env = "ACTIVATOR_LOCAL_ENGINE", value_enum)]
    pub engine: Option<engine::EngineKind>,
    /// OCI runtime the engine is asked for (`--runtime`), e.g. `runc` on hosts where podman's
    /// default `crun` cannot start containers.
    #[arg(long, env = "ACTIVATOR_LOCAL_ENGINE_RUNTIME")]
    pub engine_runtime: Option<String>,
}

/// Why local mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A Service YAML is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A listener could not be bound, or signals not installed.
    #[error("{what}: {source}")]
    Io {
        /// What was being set up.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The embedded activator failed.
    #[error(transparent)]
    Activator(#[from] crate::RunError),
    /// A revision runs an image and no container engine was found.
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
}

/// Runs local mode: exit 0 after a clean stop, 1 when it cannot start (the message names the
/// file, line and field for bad YAML).
pub fn main(args: LocalArgs) -> ExitCode {
    let level =
        shared::telemetry::log::parse_level(&args.log_level).unwrap_or(tracing::Level::INFO);
    console::init(args.log_format);
    console::init_tracing(level);
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

/// A bare command name is looked up next to this binary first (`target/*/helloworld`), then PATH.
fn resolve_program(cmd: &std::path::Path) -> PathBuf {
    if cmd.components().count() == 1
        && let Ok(exe) = std::env::current_exe()
    {
        let sibling = exe.with_file_name(cmd);
        if sibling.is_file() {
            return sibling;
        }
    }
    cmd.to_path_buf()
}

/// Host → weighted revisions for one Service: the main host gets every target with a percent,
/// each tag its own host.
fn routes(svc: &ServicePlan, domain: &str) -> Vec<(String, Vec<(String, u32)>)> {
    let main = format!("{}.{}.{domain}", svc.name, svc.namespace);
    let mut split: Vec<(String, u32)> = Vec::new();
    for t in svc.traffic.iter().filter(|t| t.percent > 0) {
        match split.iter_mut().find(|(r, _)| *r == t.revision) {
            Some((_, p)) => *p += t.percent,
            None => split.push((t.revision.clone(), t.percent)),
        }
    }
    let mut out = vec![(main, split)];
    for t in &svc.traffic {
        if let Some(tag) = &t.tag {
            out.push((
                format!("{tag}-{}.{}.{domain}", svc.name, svc.namespace),
                vec![(t.revision.clone(), 100)],
            ));
        }
    }
    out
}

async fn run(args: LocalArgs) -> Result<(), LocalError> {
    let cfg = autoscaler::Config {
        scale_to_zero_grace_period: args.scale_to_zero_grace_period,
        ..autoscaler::Config::default()
    };
    let (services, warnings) = manifest::load_paths(&args.files, &cfg)?;
    for w in &warnings {
        tracing::warn!(at = %w.at, field = %w.field, "{}", w.message);
    }
    let mut revisions = Vec::new();
    for svc in &services {
        for r in &svc.revisions {
            let cc = i32::try_from(r.container_concurrency).unwrap_or(i32::MAX);
            // Annotations were validated by the manifest; unreachable revisions (no percent,
            // no tag) may scale to zero whatever their min-scale, as in Knative.
            let settings = autoscaler::RevisionSettings::resolve(
                &cfg,
                &r.annotations,
                cc,
                svc.reachable(&r.name),
            );
            revisions.push((r.clone(), settings));
        }
    }
    // An engine only when some container runs its image; found (or refused) before anything starts.
    let needs_engine = revisions
        .iter()
        .map(|(r, _)| r)
        .find(|r| r.program.as_os_str().is_empty());
    let engine = match needs_engine {
        Some(r) => {
            let e = engine::Engine::find(
                args.engine,
                args.engine_runtime.clone(),
                &format!("{}/{}", r.namespace, r.name),
                r.image.as_deref().unwrap_or_default(),
            )?;
            tracing::info!(engine = %e.program.display(), runtime = ?e.runtime, "container engine");
            e.remove_leftovers().await;
            Some(Arc::new(e))
        }
        None => None,
    };
    let (first, second) = shared::shutdown::signals().map_err(|e| LocalError::Io {
        what: "signals".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| LocalError::Io {
            what: format!("listen {}", args.listen),
            source,
        })?;
    let status: StatusMap = Arc::default();
    if let Some(addr) = args.admin {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| LocalError::Io {
                what: format!("admin listen {addr}"),
                source,
            })?;
        tracing::info!(url = %format!("http://{addr}/status"), "status");
        tokio::spawn(status::serve(l, Arc::clone(&status)));
    }
    let catalog = Catalog::new();
    let queue_proxy = std::env::current_exe()
        .map_err(|source| LocalError::Io {
            what: "locating queue-proxy".into(),
            source,
        })?
        .with_file_name("queue-proxy");
    // Revisions first, then routes: a route never points at a revision the catalog lacks.
    for (r, _) in &revisions {
        catalog.upsert_revision(
            RevisionKey::new(&r.namespace, &r.name),
            RevisionSpec {
                container_concurrency: r.container_concurrency,
                timeout: r.timeout,
                response_start_timeout: r.response_start_timeout,
                idle_timeout: r.idle_timeout,
                protocol: r.protocol,
                service: r.service.clone(),
                configuration: r.service.clone(),
                ..RevisionSpec::default()
            },
        );
    }
    let mut routed: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
    for svc in &services {
        for (host, targets) in routes(svc, &args.domain) {
            let keyed: Vec<(RevisionKey, u32)> = targets
                .iter()
                .map(|(r, p)| (RevisionKey::new(&svc.namespace, r), *p))
                .collect();
            for (r, p) in &targets {
                routed
                    .entry(format!("{}/{r}", svc.namespace))
                    .or_default()
                    .push((host.clone(), *p));
            }
            let shown: Vec<String> = targets.iter().map(|(r, p)| format!("{r} {p}%")).collect();
            tracing::info!(route = %format!("http://{}/ (Host: {host})", args.listen), to = %shown.join(", "), "serving");
            match keyed.as_slice() {
                [(k, _)] => catalog.set_route(&host, k.clone()),
                _ => match TrafficSplit::new(keyed) {
                    Ok(s) => catalog.set_split(&host, s),
                    Err(e) => tracing::warn!(host = %host, error = %e, "no route"),
                },
            }
        }
    }
    let (sink, mut rx) = StatsSink::channel(1024);
    let start = Instant::now();
    let stop = CancellationToken::new();
    let mut senders = BTreeMap::new();
    let mut loops = tokio::task::JoinSet::new();
    let mut observers = Vec::new();
    for (r, settings) in revisions {
        let key = RevisionKey::new(&r.namespace, &r.name);
        let (tx, srx) = mpsc::channel(64);
        senders.insert((key.namespace.clone(), key.name.clone()), tx);
        let (otx, orx) = tokio::sync::oneshot::channel();
        observers.push(otx);
        let rl = RevisionLoop {
            template: PodTemplate {
                key: key.clone(),
                service: r.service.clone(),
                program: resolve_program(&r.program),
                queue_proxy: queue_proxy.clone(),
                engine: engine.clone(),
                plan: r,
            },
            settings,
            routes: routed.remove(&key.to_string()).unwrap_or_default(),
            status: Arc::clone(&status),
            catalog: catalog.clone(),
            stats: srx,
            throttlers: Some(orx),
            start,
        };
        loops.spawn(rl.run(stop.clone()));
    }
    tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            for m in batch.messages {
                if let (Some(tx), Some(s)) = (senders.get(&(m.namespace, m.name)), m.stat) {
                    let _ = tx.try_send(pod::convert(s));
                }
            }
        }
    });
    // One throttler map serves every revision loop.
    let (ttx, trx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Ok(t) = trx.await {
            for o in observers {
                let _ = o.send(Arc::clone(&t));
            }
        }
    });
    let shutdown = Shutdown::default();
    let exit = shutdown.exit.clone();
    let mut config = Config::in_process("activator-local", "127.0.0.1");
    if args.request_log {
        config.request_log = Some(console::request_log_template());
        crate::reqlog::set_sink(console::request_line);
    }
    let activator = tokio::spawn(crate::run_observed(
        config,
        Listeners {
            http1: listener,
            h2c: None,
            metrics: None,
        },
        catalog,
        sink,
        shutdown,
        Some(ttx),
    ));
    first.cancelled().await;
    tracing::info!("stopping: terminating pods (Ctrl-C again to force)");
    stop.cancel();
    exit.cancel();
    tokio::select! {
        _ = async { while loops.join_next().await.is_some() {} } => {}
        () = second.cancelled() => {}
    }
    // Whatever a forced stop left running goes too: no container outlives local mode.
    if let Some(e) = &engine {
        e.remove_own().await;
    }
    match activator.await {
        Ok(Ok(())) | Err(_) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::manifest::Target;

    fn plan(traffic: Vec<Target>) -> ServicePlan {
        ServicePlan {
            name: "hello".into(),
            namespace: "ns".into(),
            revisions: Vec::new(),
            traffic,
        }
    }

    fn t(revision: &str, percent: u32, tag: Option<&str>) -> Target {
        Target {
            revision: revision.into(),
            percent,
            tag: tag.map(Into::into),
        }
    }

    #[test]
    fn main_host_splits_by_percent_and_tags_get_their_own_host() {
        let svc = plan(vec![
            t("hello-1", 50, None),
            t("hello-2", 30, Some("old")),
            t("hello-1", 20, Some("current")),
            t("hello-3", 0, Some("next")),
        ]);
        assert_eq!(
            routes(&svc, "example.com"),
            vec![
                (
                    "hello.ns.example.com".to_owned(),
                    vec![("hello-1".to_owned(), 70), ("hello-2".to_owned(), 30)]
                ),
                (
                    "old-hello.ns.example.com".to_owned(),
                    vec![("hello-2".to_owned(), 100)]
                ),
                (
                    "current-hello.ns.example.com".to_owned(),
                    vec![("hello-1".to_owned(), 100)]
                ),
                (
                    "next-hello.ns.example.com".to_owned(),
                    vec![("hello-3".to_owned(), 100)]
                ),
            ]
        );
    }
}
