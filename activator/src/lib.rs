//! activator: Knative's activator in Rust, plus `activator local` and `activator simulate`.
//!
//! # Layout
//! - [`cli`]: the command line and subcommand dispatch.
//! - [`config`]: activator settings (Knative env vars) and the activator's `main`.
//! - [`catalog`]: the revision catalog every control-plane source feeds.
//! - [`source`]: control-plane sources (`kubernetes`, `file:PATH`).
//! - [`manager`]: one throttler and one prober per revision.
//! - [`throttler`]: per-revision capacity, bounded wait queue, pod assignment.
//! - [`lb`]: load-balancing picks.
//! - [`split`]: traffic splits by percent (one host, several revisions).
//! - [`probe`]: pod readiness probing.
//! - [`reporter`]: concurrency reporter and stats sinks (autoscaler websocket, channel).
//! - [`reqlog`]: the request log line (`config-observability`), written at the end of a response.
//! - [`proxy`]: the activator's rewriting for the hop to a pod.
//! - [`stack`]: the request path.
//! - [`park`]: holds a new HTTP/1 connection's first request outside hyper while it waits.
//! - [`timeout`]: revision timeouts after the response head.
//! - [`tls`]: system-internal TLS rules (CA pool, namespace SAN check, serving certificate);
//!   not wired in yet.
//! - [`metrics`]: Prometheus metrics.
//! - [`simulate`]: the autoscaler what-if simulator.
//! - [`local`]: Knative Services as local processes.
//!
//! In-process use (tests, `activator local`): build a [`catalog::Catalog`], a
//! [`reporter::StatsSink`] (e.g. [`reporter::StatsSink::channel`] feeding an embedded KPA), bind
//! listeners, and call [`run`].
//!
//! Contract: `../shared/docs/activator.md`.
#![warn(missing_docs)]

pub mod catalog;
pub mod cli;
pub mod config;
pub mod configmap;
pub mod lb;
pub mod local;
pub mod manager;
pub mod metrics;
pub mod packed;
pub mod park;
pub mod probe;
pub mod proxy;
pub mod reporter;
pub mod reqlog;
pub mod simulate;
pub mod source;
pub mod split;
pub mod stack;
pub mod throttler;
pub mod timeout;
pub mod tls;

use std::process::ExitCode;
use std::sync::Arc;

use http::{Response, StatusCode};
use http_body_util::Full;
use prometheus_client::registry::Registry;
use shared::http::proxy::ClientOptions;
use shared::http::server::{ServerOptions, serve, serve_with};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::{Config, SinkSpec, SourceSpec};
use crate::manager::Manager;
use crate::metrics::Metrics;
use crate::probe::ProbeSettings;
use crate::reporter::{ConnMetrics, Reporter, StatsSink, WebsocketSink};
use crate::stack::{Handler, Health};
use crate::throttler::QueueLimits;

/// Bound listeners.
#[derive(Debug)]
pub struct Listeners {
    /// HTTP/1 + h2c (Knative 8012).
    pub http1: TcpListener,
    /// h2c (Knative 8013); both ports serve the same handler and accept h1 and h2c.
    pub h2c: Option<TcpListener>,
    /// Prometheus metrics (Knative 9090).
    pub metrics: Option<TcpListener>,
}

/// Shutdown signals.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// First signal: fail kubelet health, serve for the drain delay, then stop accepting and
    /// wait for in-flight requests.
    pub drain: CancellationToken,
    /// Second signal: stop waiting and return at once.
    pub exit: CancellationToken,
}

/// `run` failed to start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The file source could not be loaded.
    #[error(transparent)]
    Source(#[from] source::file::FileSourceError),
    /// The Kubernetes source could not start.
    #[error(transparent)]
    Kube(#[from] source::kube::KubeSourceError),
}

/// Runs the activator until `shutdown` (see [`Shutdown`]). With `config.source` set, the file or
/// the Kubernetes API is loaded into `catalog` before listening and followed; with `None` the
/// caller feeds `catalog`.
///
/// # Errors
/// [`RunError`] when startup fails (the file source cannot be read, the Kubernetes source has
/// no client configuration or does not sync).
pub async fn run(
    config: Config,
    listeners: Listeners,
    catalog: Catalog,
    stats_sink: StatsSink,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    run_observed(config, listeners, catalog, stats_sink, shutdown, None).await
}

/// The throttlers by revision, as the request path sees them.
pub(crate) type Throttlers =
    Arc<dashmap::DashMap<catalog::RevisionKey, Arc<throttler::RevisionThrottler>>>;

/// [`run`], handing the throttlers to `observe` once they exist (`activator local` reads the
/// held-request counts from them for its status).
pub(crate) async fn run_observed(
    config: Config,
    listeners: Listeners,
    catalog: Catalog,
    stats_sink: StatsSink,
    shutdown: Shutdown,
    observe: Option<tokio::sync::oneshot::Sender<Throttlers>>,
) -> Result<(), RunError> {
    let background = CancellationToken::new();
    let _stop_background = background.clone().drop_guard();
    let live = Arc::new(configmap::Live::new(
        config.request_log.clone(),
        config.profiling,
        config.log_level.is_some(),
    ));
    let mut tracing_config = config.tracing.clone();
    match &config.source {
        Some(SourceSpec::File(path)) => {
            let src = source::file::FileSource::start(path.clone(), catalog.clone())?;
            tokio::spawn(src.run(background.clone()));
        }
        Some(SourceSpec::Kubernetes) => {
            let client = source::kube::infer_client().await?;
            source::kube::network::load(client.clone(), &config.system_namespace)
                .await?
                .check()?;
            let (cms, initial) = source::kube::configmaps::ConfigMapSource::start(
                client.clone(),
                &config.system_namespace,
                config.configmap_names.clone(),
                Arc::clone(&live),
                source::kube::SYNC_TIMEOUT,
            )
            .await?;
            // Tracing is read at start-up (as Knative); the API's copy wins over a volume.
            if let Some(data) = &initial.observability {
                match configmap::tracing_from_data(data) {
                    Ok(t) => tracing_config = t,
                    Err(e) => tracing::error!(error = %e, "config-observability tracing rejected"),
                }
            }
            tokio::spawn(cms.run(background.clone()));
            let src = source::kube::KubeSource::start(
                client,
                catalog.clone(),
                source::kube::SYNC_TIMEOUT,
            )
            .await?;
            tokio::spawn(src.run(background.clone()));
        }
        None => {}
    }
    tokio::spawn(shared::memory::run(background.clone()));
    if let Some(addr) = config.profiling_addr {
        // Always listening, 404 until `runtime-profiling: enabled` (Knative's activator).
        tokio::spawn(shared::profiling::run(
            addr,
            live.profiling.subscribe(),
            background.clone(),
        ));
    }
    let mut registry = Registry::default();
    let conn = match &stats_sink {
        StatsSink::Websocket(ws) => ws.metrics().clone(),
        _ => ConnMetrics::default(),
    };
    let metrics = Arc::new(Metrics::register(&mut registry, conn));
    let registry = Arc::new(registry);

    let client_opts = ClientOptions {
        pool_max_idle_per_host: config.max_idle_per_host,
        ..ClientOptions::default()
    };
    let mut manager = Manager::new(
        config.pod_ip.clone(),
        QueueLimits::new(config.max_queued_requests, config.max_queued_bytes),
        client_opts,
        ProbeSettings {
            timeout: config.probe_timeout,
            frequency: config.probe_frequency,
        },
        Arc::clone(&metrics),
        background.clone(),
    );
    let rx = catalog.subscribe();
    // The first snapshot is applied before listening, so known revisions never 404.
    manager.apply(&rx.borrow().clone());
    let throttlers = Arc::clone(&manager.throttlers);
    if let Some(tx) = observe {
        let _ = tx.send(Arc::clone(&throttlers));
    }
    let applied = manager.applied();
    tokio::spawn(manager.run(rx));

    let m = Arc::clone(&metrics);
    let known = Arc::clone(&throttlers);
    let reporter = Reporter::new(config.pod_name.clone(), stats_sink.clone(), move |k, v| {
        // Like Knative, the gauge is skipped once the revision is gone from the catalog.
        let spec = known.get(k).map(|t| t.spec());
        if let Some(spec) = spec {
            m.set_concurrency(k, &spec.service, &spec.configuration, v);
        }
    });
    tokio::spawn(Arc::clone(&reporter).run(background.clone()));

    let health = Health::new(stats_sink);
    let handler = Arc::new(Handler {
        throttlers,
        reporter,
        health: Arc::clone(&health),
        cluster_domain: config.cluster_domain.clone(),
        metrics,
        catalog: catalog.subscribe(),
        applied,
        tracer: tracing_config.map_or_else(shared::telemetry::otlp::Tracer::disabled, |t| {
            shared::telemetry::otlp::Tracer::start(t, background.clone())
        }),
        request_log: live.request_log.subscribe(),
        ingress: config.ingress,
    });
    let stop_accepting = CancellationToken::new();
    let mut servers = tokio::task::JoinSet::new();
    // New HTTP/1 connections whose first request must wait are held outside hyper (`park`).
    let parker: Arc<dyn shared::http::park::FirstHead> = park::Parker::new(Arc::clone(&handler));
    for l in std::iter::once(listeners.http1).chain(listeners.h2c) {
        servers.spawn(serve_with(
            l,
            Arc::clone(&handler).service(),
            ServerOptions::default(),
            Some(Arc::clone(&parker)),
            stop_accepting.clone(),
        ));
    }
    if let Some(l) = listeners.metrics {
        let reg = Arc::clone(&registry);
        let svc = tower::service_fn(move |_req| {
            let body = shared::telemetry::metrics::render(&reg);
            async move {
                let mut r = Response::new(Full::new(bytes::Bytes::from(body)));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(
                        shared::telemetry::metrics::PROMETHEUS_CONTENT_TYPE,
                    ),
                );
                *r.status_mut() = StatusCode::OK;
                Ok::<_, std::convert::Infallible>(r)
            }
        });
        let opts = ServerOptions {
            http1_only: true,
            ..ServerOptions::default()
        };
        // The metrics port stays up until the process ends (scrapes during drain).
        tokio::spawn(serve(l, svc, opts, background.clone()));
    }

    tokio::select! {
        _ = shutdown.drain.cancelled() => {}
        _ = shutdown.exit.cancelled() => return Ok(()),
    }
    health.start_draining();
    tracing::info!(delay = ?config.drain_delay, "draining: failing kubelet probes, still serving");
    tokio::select! {
        _ = tokio::time::sleep(config.drain_delay) => {}
        _ = shutdown.exit.cancelled() => return Ok(()),
    }
    stop_accepting.cancel();
    tokio::select! {
        _ = async { while servers.join_next().await.is_some() {} } => {}
        _ = shutdown.exit.cancelled() => {}
    }
    Ok(())
}

/// The binary's process around [`run`]: binds the configured listeners, installs signal
/// handlers, connects the stats sink. Exit code 1 on a second signal or a startup failure.
pub async fn serve_process(config: Config) -> ExitCode {
    // With the system's accept backlog (`somaxconn`), as Go listens.
    let bind = |addr| async move {
        shared::http::listen::listen(addr).map_err(|e| format!("listening on {addr}: {e}"))
    };
    let listeners = async {
        Ok::<_, String>(Listeners {
            http1: bind(config.http1_addr).await?,
            h2c: Some(bind(config.h2c_addr).await?),
            metrics: match config.metrics_addr {
                Some(a) => Some(bind(a).await?),
                None => None,
            },
        })
    }
    .await;
    let listeners = match listeners {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let (drain, exit) = match shared::shutdown::signals() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let sink_stop = CancellationToken::new();
    let sink = match &config.sink {
        SinkSpec::None => StatsSink::Discard,
        SinkSpec::Websocket(url) => {
            StatsSink::Websocket(WebsocketSink::spawn(url.clone(), sink_stop.clone()))
        }
    };
    let shutdown = Shutdown {
        drain,
        exit: exit.clone(),
    };
    let res = run(config, listeners, Catalog::new(), sink, shutdown).await;
    sink_stop.cancel();
    match res {
        Err(e) => {
            tracing::error!(error = %e, "activator failed");
            ExitCode::FAILURE
        }
        Ok(()) if exit.is_cancelled() => ExitCode::FAILURE,
        Ok(()) => ExitCode::SUCCESS,
    }
}
