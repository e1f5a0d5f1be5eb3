//! Thin entry point: parse the environment, set up logs, run the library until SIGTERM.

use clap::Parser;
use queue_proxy::config::{Cli, Config};
use shared::telemetry::log::{LogFormat, ZapFormat, init, resolve_level};

/// sysexits `EX_CONFIG`: a missing or invalid variable.
const EXIT_CONFIG: i32 = 64;

fn main() {
    let mut profiling = false;
    let config = match Cli::try_parse().map_err(|e| e.to_string()).and_then(|cli| {
        // As Knative: the profiling server runs only when the revision's pods were created
        // with `runtime-profiling: enabled`.
        profiling = cli
            .observability_config
            .as_deref()
            .is_some_and(shared::profiling::enabled_in_observability_json);
        Config::try_from(cli).map_err(|e| e.to_string())
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("queue-proxy: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let level = resolve_level(
        Some(config.logging_level.as_str()).filter(|s| !s.is_empty()),
        Some(config.logging_config.as_str()).filter(|s| !s.is_empty()),
    );
    init(
        LogFormat::Zap(
            ZapFormat {
                logger: "queueproxy".into(),
                key: Some(format!("{}/{}", config.namespace, config.revision)),
                pod: Some(config.pod.clone()),
                ..ZapFormat::default()
            }
            .with_zap_config(Some(config.logging_config.as_str())),
        ),
        level,
    );
    let rt = match runtime().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("queue-proxy: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async move {
        let (first, second) = match shared::shutdown::signals() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                return 1;
            }
        };
        // A second signal exits at once with 1 (knative.dev/pkg/signals).
        tokio::spawn(async move {
            second.cancelled().await;
            std::process::exit(1);
        });
        if profiling {
            tracing::info!("Runtime profiling enabled");
            let (_on, enabled) = tokio::sync::watch::channel(true);
            tokio::spawn(shared::profiling::run(
                shared::profiling::addr_from_env(),
                enabled,
                tokio_util::sync::CancellationToken::new(),
            ));
        }
        let listeners = match queue_proxy::Listeners::bind(&config).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "Failed to bring up queue-proxy, shutting down.");
                return 1;
            }
        };
        match queue_proxy::run(config, listeners, first).await {
            Ok(()) => 0,
            // Knative: a certificate that cannot be loaded is fatal (exit 1).
            Err(e @ queue_proxy::StartError::Tls(_)) => {
                tracing::error!(error = %e, "Failed to bring up queue-proxy, shutting down.");
                1
            }
        }
    });
    std::process::exit(code);
}

/// The runtime for `available_parallelism` CPUs, which honours the CPU affinity mask and the
/// cgroup CPU quota (what Go's automaxprocs does for Knative's sidecar, which usually gets ≤ 1
/// CPU). With one CPU a multi-thread runtime still runs one worker thread, but every wake-up
/// goes through its shared queues and the main thread parks beside it; the current-thread
/// scheduler runs the same tasks with less bookkeeping (benches/RESULTS.md, queue-proxy profile).
fn runtime() -> tokio::runtime::Builder {
    match std::thread::available_parallelism().map(std::num::NonZeroUsize::get) {
        Ok(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
}
