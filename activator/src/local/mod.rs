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
//! - [`port`]: each pod's ports, without the bind-0-and-release race.
//! - [`routing`]: hosts → revisions, following the newest ready revision.
//! - [`engine`], [`container`]: podman or docker, for a container with an `image` and no
//!   `command`.
//! - [`scaler`]: one loop per revision: KPA tick, pods to match, endpoints, status.
//! - [`status`]: `GET /status` JSON.
//! - [`reload`]: applying the YAML at start and on every save, as `kubectl apply` would.
//! - [`console`]: readable output, the live view on a terminal, the request log.

pub mod console;
pub mod container;
pub mod engine;
pub mod manifest;
pub mod pod;
pub mod port;
pub mod reload;
pub mod routing;
pub mod scaler;
pub mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::manifest::ManifestError;
use self::status::StatusMap;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::reporter::StatsSink;
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
pub(crate) fn resolve_program(cmd: &std::path::Path) -> PathBuf {
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

async fn run(args: LocalArgs) -> Result<(), LocalError> {
    let cfg = autoscaler::Config {
        scale_to_zero_grace_period: args.scale_to_zero_grace_period,
        ..autoscaler::Config::default()
    };
    let (first, second) = shared::shutdown::signals().map_err(|e| LocalError::Io {
        what: "signals".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let status: StatusMap = Arc::default();
    let catalog = Catalog::new();
    let queue_proxy = std::env::current_exe()
        .map_err(|source| LocalError::Io {
            what: "locating queue-proxy".into(),
            source,
        })?
        .with_file_name("queue-proxy");
    let (throttlers_tx, throttlers_rx) = tokio::sync::watch::channel(None);
    let mut runner = reload::Runner::new(
        args.files.clone(),
        args.domain.clone(),
        args.listen,
        cfg,
        catalog.clone(),
        Arc::clone(&status),
        throttlers_rx,
        queue_proxy,
        args.engine,
        args.engine_runtime.clone(),
    );
    // Revisions first, then routes (inside): a route never points at a revision the catalog
    // lacks. Bad YAML stops start-up here, before anything listens.
    runner.apply_files(true).await.map_err(|e| match e {
        reload::ApplyError::Manifest(m) => LocalError::Manifest(m),
        reload::ApplyError::Engine(e) => LocalError::Engine(e),
    })?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| LocalError::Io {
            what: format!("listen {}", args.listen),
            source,
        })?;
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
    let (sink, mut rx) = StatsSink::channel(1024);
    let senders = Arc::clone(&runner.senders);
    tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            for m in batch.messages {
                let tx = senders
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&(m.namespace, m.name))
                    .cloned();
                if let (Some(tx), Some(s)) = (tx, m.stat) {
                    let _ = tx.try_send(pod::convert(s));
                }
            }
        }
    });
    // One throttler map serves every revision loop, present and future.
    let (ttx, trx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Ok(t) = trx.await {
            let _ = throttlers_tx.send(Some(t));
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
        Config {
            ingress: true,
            ..config
        },
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
    let stop = runner.stop.clone();
    let watching = CancellationToken::new();
    let runner = Arc::new(tokio::sync::Mutex::new(runner));
    let watcher = tokio::spawn(reload::watch_files(Arc::clone(&runner), watching.clone()));
    first.cancelled().await;
    tracing::info!("stopping: terminating pods (Ctrl-C again to force)");
    watching.cancel();
    let _ = watcher.await;
    stop.cancel();
    exit.cancel();
    let mut runner = runner.lock().await;
    tokio::select! {
        _ = async { while runner.loops.join_next().await.is_some() {} } => {}
        () = second.cancelled() => {}
    }
    // Whatever a forced stop left running goes too: no container outlives local mode.
    if let Some(e) = &runner.engine {
        e.remove_own().await;
    }
    match activator.await {
        Ok(Ok(())) | Err(_) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
    }
}
