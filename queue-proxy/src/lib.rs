//! queue-proxy: Knative's per-pod sidecar, in Rust. Contract: `../shared/docs/queue-proxy.md`;
//! operator notes: `docs/queue-proxy.md`.
//!
//! # Layout
//! - [`config`]: Knative's environment variables → [`Config`].
//! - [`stack`]: the serving port's tower layers (rescue, drain/probe, timeouts, forwarded shim,
//!   stats, breaker, upstream client).
//! - [`observe`]: in-flight count, request log and request metrics (outermost layer).
//! - [`stats`]: the autoscaler's 1 s window and the protobuf `Stat` reporter.
//! - [`drain`]: Knative's Drainer (quiet period, reset).
//! - [`h2c`]: `Upgrade: h2c` on the serving port.
//! - [`probe`]: the user container's readiness probe (`SERVING_READINESS_PROBE`).
//! - [`admin`]: `/wait-for-drain`, the `Stat` endpoint and the Prometheus endpoint.
//! - [`reqlog`]: request-log templates.
//! - [`tls`]: system-internal TLS on `QUEUE_SERVING_TLS_PORT` (certificate watcher, rustls).
//!
//! [`run`] serves everything on listeners the caller bound, so tests run in-process on
//! `127.0.0.1:0`.
#![warn(missing_docs)]

pub mod admin;
pub mod config;
pub mod drain;
pub mod h2c;
pub mod observe;
pub mod probe;
pub use shared::telemetry::reqlog;
pub mod stack;
pub mod stats;
pub mod tls;
pub mod trace;

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use config::Config;
use prometheus_client::registry::Registry;
use shared::breaker::{Breaker, BreakerParams};
use shared::http::listen::listen;
use shared::http::proxy::{ClientOptions, Upstream};
use shared::http::server::{ServerOptions, serve};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Longest wait, after the listeners closed, for upgraded connections and h2 streams to end
/// (Knative's hijack drain: 60 s).
pub const UPGRADE_DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// Bound listeners.
#[derive(Debug)]
pub struct Listeners {
    /// `QUEUE_SERVING_PORT`.
    pub serving: TcpListener,
    /// `QUEUE_ADMIN_PORT`.
    pub admin: TcpListener,
    /// `QUEUE_METRICS_PORT`.
    pub metrics: TcpListener,
    /// The user-metrics port, when request metrics are Prometheus.
    pub user_metrics: Option<TcpListener>,
    /// `QUEUE_SERVING_TLS_PORT`, when the certificate files exist.
    pub tls: Option<TcpListener>,
}

/// Start-up failures of [`run`].
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The TLS certificate cannot be loaded or the TLS settings are unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

async fn bind_any(ip: Option<std::net::IpAddr>, port: u16) -> std::io::Result<TcpListener> {
    if let Some(ip) = ip {
        return TcpListener::bind(SocketAddr::from((ip, port))).await;
    }
    // Go's `:port` listens on every interface, IPv4 and IPv6; fall back to IPv4 where IPv6 is
    // unavailable.
    // With the system's accept backlog (`somaxconn`), as Go listens.
    match listen(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))) {
        Ok(l) => Ok(l),
        Err(_) => listen(SocketAddr::from(([0, 0, 0, 0], port))),
    }
}

impl Listeners {
    /// Binds every port of `config` on all interfaces.
    ///
    /// # Errors
    /// A port that cannot be bound, or the certificate directory cannot be examined.
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        let tls = tls::enabled(&config.tls.cert_dir).map_err(std::io::Error::other)?;
        Ok(Self {
            serving: bind_any(config.bind_address, config.serving_port).await?,
            admin: bind_any(config.bind_address, config.admin_port).await?,
            metrics: bind_any(config.bind_address, config.metrics_port).await?,
            user_metrics: match config.user_metrics_port {
                Some(p) => Some(bind_any(config.bind_address, p).await?),
                None => None,
            },
            tls: if tls {
                Some(bind_any(config.bind_address, config.serving_tls_port).await?)
            } else {
                None
            },
        })
    }

    /// Binds every port on `127.0.0.1:0` (tests).
    ///
    /// # Errors
    /// Binding fails.
    pub async fn local(user_metrics: bool) -> std::io::Result<Self> {
        let b = || TcpListener::bind("127.0.0.1:0");
        Ok(Self {
            serving: b().await?,
            admin: b().await?,
            metrics: b().await?,
            user_metrics: if user_metrics { Some(b().await?) } else { None },
            tls: None,
        })
    }
}

/// Runs the queue-proxy until `shutdown` is cancelled (SIGTERM), then drains as Knative does:
/// probes fail at once, requests are still served until `QUEUE_DRAIN_SECONDS` pass without
/// one, the serving listener closes, in-flight requests finish (bounded by the revision
/// timeout), upgraded connections get up to 60 s, and the function returns.
///
/// # Errors
/// A TLS certificate that cannot be loaded.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let started = Instant::now();
    let obs = &config.observability;
    // Knative (`sharedmain.requestLogHandler`): a template its parser rejects is logged and the
    // pod serves without request logs.
    let template = match obs.enable_request_log && !obs.request_log_template.is_empty() {
        true => reqlog::Template::parse(&obs.request_log_template)
            .inspect_err(|e| {
                tracing::error!(
                    error = %e,
                    "Error setting up request logger. Request logs will be unavailable."
                );
            })
            .ok(),
        false => None,
    };
    let log = if let Some(template) = template {
        Some((
            template,
            reqlog::Revision {
                name: config.revision.clone(),
                namespace: config.namespace.clone(),
                service: config.service.clone(),
                configuration: config.configuration.clone(),
                pod_name: config.pod.clone(),
                pod_ip: config.pod_ip.clone(),
            },
        ))
    } else {
        None
    };
    let tls = match &listeners.tls {
        Some(_) => {
            if let Some(e) = &config.tls.env_error {
                return Err(tls::TlsError::Env(e.clone()).into());
            }
            let provider = Arc::new(tls::provider_for(&config.tls));
            let store = Arc::new(tls::CertStore::load(&config.tls.cert_dir, provider)?);
            let server = tls::server_config(&config.tls, store.clone())?;
            Some((store, tokio_rustls::TlsAcceptor::from(Arc::new(server))))
        }
        None => None,
    };
    let mut registry = Registry::default();
    let metrics = (listeners.user_metrics.is_some() || config.metrics_push.is_some())
        .then(|| Arc::new(observe::Metrics::register(&mut registry)));
    let registry = Arc::new(registry);
    let observer = observe::Observer::new(metrics, log, obs.enable_probe_request_log);
    let in_flight = observer.in_flight.clone();

    let cc = config.container_concurrency;
    let breaker = (cc > 0).then(|| Breaker::new(BreakerParams::for_container_concurrency(cc)));
    let upstream = Upstream::new(
        SocketAddr::from(([127, 0, 0, 1], config.user_port)),
        &ClientOptions {
            pool_max_idle_per_host: if cc > 0 { cc } else { 1000 },
            ..ClientOptions::default()
        },
    );
    let stats = stats::Stats::new(started);
    let reporter = stats::Reporter::new(&config.pod);
    let drainer = drain::Drainer::new(config.drain_quiet_period);
    let prober = probe::Prober::new(config.readiness_probes.clone(), config.http2_auto_detection);
    let terminating = Arc::new(AtomicBool::new(false));

    let side = CancellationToken::new();
    let serving_token = CancellationToken::new();
    // 1,000 connections left the sidecar at ≈ 28 MiB for good without it (benches/RESULTS.md).
    tokio::spawn(shared::memory::run(side.clone()));
    tokio::spawn(reporter.clone().run(
        stats.clone(),
        config.pod.clone(),
        started,
        Duration::from_secs(1),
        side.clone(),
    ));

    for (name, l) in [
        ("serving", Some(&listeners.serving)),
        ("admin", Some(&listeners.admin)),
        ("metrics", Some(&listeners.metrics)),
        ("user-metrics", listeners.user_metrics.as_ref()),
        ("serving-tls", listeners.tls.as_ref()),
    ] {
        if let Some(addr) = l.and_then(|l| l.local_addr().ok()) {
            tracing::info!(listener = name, addr = %addr, "listening");
        }
    }

    let svc = stack::stack(stack::StackParts {
        upstream,
        breaker,
        stats,
        timeouts: stack::Timeouts {
            total: config.revision_timeout,
            response_start: config.response_start_timeout,
            idle: config.idle_timeout,
        },
        drainer: drainer.clone(),
        prober,
        observer,
        pod: config.pod.clone(),
        tracer: config
            .tracing
            .clone()
            .map_or_else(shared::telemetry::otlp::Tracer::disabled, |t| {
                shared::telemetry::otlp::Tracer::start(t, side.clone())
            }),
    });
    // The TLS port serves the same stack (same drainer, breaker and stats), closing with the
    // plain port after the drain.
    let serving_opts = ServerOptions {
        header_read_timeout: config.header_read_timeout,
        ..ServerOptions::default()
    };
    let serving_tls = match (listeners.tls, tls) {
        (Some(l), Some((store, acceptor))) => {
            tokio::spawn(store.watch(config.tls.reload_period, side.clone()));
            Some(tokio::spawn(tls::serve_tls(
                l,
                acceptor,
                svc.clone(),
                serving_opts.clone(),
                serving_token.clone(),
            )))
        }
        _ => None,
    };
    let serving = tokio::spawn(serve(
        listeners.serving,
        // h2c via `Upgrade` is for cleartext only (RFC 7540 §3.2); prior knowledge is hyper's.
        h2c::H2cUpgrade::new(svc),
        serving_opts.clone(),
        serving_token.clone(),
    ));

    let side_opts = ServerOptions {
        http1_only: true,
        ..serving_opts
    };
    let admin_svc = {
        let (drainer, terminating) = (drainer.clone(), terminating.clone());
        tower::service_fn(move |req| admin::admin(req, drainer.clone(), terminating.clone()))
    };
    tokio::spawn(serve(
        listeners.admin,
        admin_svc,
        side_opts.clone(),
        side.clone(),
    ));
    let metrics_svc = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        std::future::ready(Ok::<_, std::convert::Infallible>(
            admin::autoscaler_metrics(&req, &reporter),
        ))
    });
    tokio::spawn(serve(
        listeners.metrics,
        metrics_svc,
        side_opts.clone(),
        side.clone(),
    ));
    if let Some(push) = config.metrics_push.clone() {
        // Its own task: a slow or black-holed collector never touches the request path.
        tokio::spawn(shared::telemetry::otlp::push::run(
            push,
            registry.clone(),
            side.clone(),
        ));
    }
    if let Some(l) = listeners.user_metrics {
        let registry = registry.clone();
        let svc = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            std::future::ready(Ok::<_, std::convert::Infallible>(admin::user_metrics(
                &req, &registry,
            )))
        });
        tokio::spawn(serve(
            l,
            svc,
            ServerOptions {
                header_read_timeout: Duration::from_secs(5),
                ..side_opts
            },
            side.clone(),
        ));
    }

    shutdown.cancelled().await;
    tracing::info!("Received TERM signal, attempting to gracefully shutdown servers.");
    terminating.store(true, Ordering::Release);
    drainer.drain().await;
    tracing::info!("Drain complete, closing the serving listener.");
    serving_token.cancel();
    // HTTP/1 requests in flight finish (Knative waits without limit; the kubelet's grace period,
    // equal to the revision timeout, bounds it there, so we bound it the same way).
    let limit = config.revision_timeout.max(Duration::from_secs(1));
    let servers = async {
        let _ = serving.await;
        if let Some(t) = serving_tls {
            let _ = t.await;
        }
    };
    if tokio::time::timeout(limit, servers).await.is_err() {
        tracing::warn!("serving connections still open at the revision timeout");
    }
    // Upgraded connections and h2 streams (Knative's hijack drain).
    let deadline = tokio::time::Instant::now() + UPGRADE_DRAIN_LIMIT;
    while in_flight.get() > 0 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("Hijack connection drain failed");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    side.cancel();
    tracing::info!("Shutdown complete, exiting...");
    Ok(())
}
