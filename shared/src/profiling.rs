//! Knative's profiling server on `PROFILING_PORT` (8008), for both binaries.
//!
//! Knative serves Go's `net/http/pprof` there while `config-observability` has
//! `runtime-profiling: enabled` and answers 404 otherwise (the activator listens all the time and
//! follows the ConfigMap live; the queue-proxy listens only when the revision was created with
//! profiling on). Ours, on the same paths:
//! - `/debug/pprof/profile?seconds=N` (default 30): a CPU profile of the whole process, sampled
//!   at 100 Hz with the `pprof` crate (SIGPROF), in pprof's protobuf format (uncompressed; the
//!   `pprof` tool and `go tool pprof` read both). One at a time, as Go: a second concurrent
//!   request is refused with 500.
//! - `/debug/pprof/heap`: a text heap summary (malloc's arena / mmapped / in-use / free bytes and
//!   the kernel's RSS figures). Go serves a sampled allocation profile here; Rust's allocator
//!   keeps no allocation sites, so this is what we can give without slowing every allocation.
//! - `/debug/pprof/cmdline`, and `/debug/pprof/` listing the above.
//!
//! Off costs nothing on the request path: no sampling timer or signal handler is installed until
//! a profile is requested, and the server is a separate listener.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::http::server::{ServerOptions, serve as serve_http};

/// Knative's default profiling port.
pub const DEFAULT_PORT: u16 = 8008;
/// Knative's env var overriding it.
pub const PORT_ENV: &str = "PROFILING_PORT";
/// Default CPU profile length (Go's).
pub const DEFAULT_SECONDS: u64 = 30;
/// Longest CPU profile accepted (a request holds a blocking thread that long).
pub const MAX_SECONDS: u64 = 600;
/// Samples per second (Go's default rate).
pub const FREQUENCY_HZ: i32 = 100;

/// The listen address: all interfaces on `PROFILING_PORT`, else 8008. An unusable value is
/// logged and the default used (Knative would listen on whatever string it got).
pub fn addr_from_env() -> SocketAddr {
    let port = match std::env::var(PORT_ENV) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| {
            tracing::warn!(value = %v, "PROFILING_PORT is not a port; using 8008");
            DEFAULT_PORT
        }),
        _ => DEFAULT_PORT,
    };
    SocketAddr::from(([0, 0, 0, 0], port))
}

/// Whether Knative's observability JSON (the queue-proxy's `OBSERVABILITY_CONFIG`) turns
/// profiling on: `{"runtime": {"profiling": "enabled"}}`. Anything else, including JSON that does
/// not parse, is off.
pub fn enabled_in_observability_json(json: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(json).is_ok_and(|v| {
        v.pointer("/runtime/profiling")
            .and_then(serde_json::Value::as_str)
            == Some("enabled")
    })
}

/// Binds `addr` and serves until `shutdown`; `enabled` switches the endpoints on and off (404
/// while off). A bind failure is logged (profiling is never worth failing the data plane for).
pub async fn run(addr: SocketAddr, enabled: watch::Receiver<bool>, shutdown: CancellationToken) {
    match TcpListener::bind(addr).await {
        Ok(l) => serve(l, enabled, shutdown).await,
        Err(error) => {
            tracing::error!(%addr, %error, "cannot listen for profiling; profiling unavailable");
        }
    }
}

/// Serves the profiling endpoints on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    enabled: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let svc = tower::service_fn(move |req: Request<Incoming>| {
        let on = *enabled.borrow();
        async move { Ok::<_, Infallible>(handle(on, &req).await) }
    });
    let opts = ServerOptions {
        http1_only: true,
        ..ServerOptions::default()
    };
    serve_http(listener, svc, opts, shutdown).await;
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn not_found() -> Response<Full<Bytes>> {
    // Go's http.NotFound body.
    text(StatusCode::NOT_FOUND, "404 page not found\n".to_owned())
}

async fn handle(enabled: bool, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if !enabled || req.method() != Method::GET {
        return not_found();
    }
    match req.uri().path() {
        "/debug/pprof/" | "/debug/pprof" => text(
            StatusCode::OK,
            "profile: CPU profile, pprof protobuf (?seconds=N, default 30)\n\
             heap: heap summary (text)\n\
             cmdline: the command line, NUL-separated\n"
                .to_owned(),
        ),
        "/debug/pprof/cmdline" => text(
            StatusCode::OK,
            std::env::args().collect::<Vec<_>>().join("\0"),
        ),
        "/debug/pprof/heap" => text(StatusCode::OK, heap_summary()),
        "/debug/pprof/profile" => match seconds(req.uri().query()) {
            Ok(secs) => cpu_profile(Duration::from_secs(secs)).await,
            Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        },
        _ => not_found(),
    }
}

/// `seconds` from the query: default [`DEFAULT_SECONDS`], 1..=[`MAX_SECONDS`].
fn seconds(query: Option<&str>) -> Result<u64, String> {
    let Some(v) = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("seconds="))
    else {
        return Ok(DEFAULT_SECONDS);
    };
    match v.parse::<u64>() {
        Ok(s) if (1..=MAX_SECONDS).contains(&s) => Ok(s),
        _ => Err(format!(
            "seconds: {v:?} is not a number of seconds between 1 and {MAX_SECONDS}"
        )),
    }
}

/// Samples the whole process for `length` on a blocking thread (the guard is not `Send`), then
/// encodes the pprof protobuf.
async fn cpu_profile(length: Duration) -> Response<Full<Bytes>> {
    let res = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        use pprof::protos::Message as _;
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(FREQUENCY_HZ)
            // Unwinding through these from a signal handler can deadlock (pprof's advice).
            .blocklist(&["libc", "libgcc", "pthread", "vdso"])
            .build()
            .map_err(|e| format!("Could not enable CPU profiling: {e}"))?;
        std::thread::sleep(length);
        let profile = guard
            .report()
            .build()
            .and_then(|r| r.pprof())
            .map_err(|e| format!("Could not build the CPU profile: {e}"))?;
        Ok(profile.encode_to_vec())
    })
    .await;
    match res {
        Ok(Ok(body)) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"profile\""),
            );
            r
        }
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("profile task failed: {e}\n"),
        ),
    }
}

/// malloc's arenas and the kernel's view of the process memory, one `key: bytes` per line.
fn heap_summary() -> String {
    let mut out = String::new();
    match crate::memory::heap_stats() {
        Some(h) => {
            let _ = writeln!(out, "malloc_arena_bytes: {}", h.arena);
            let _ = writeln!(out, "malloc_mmapped_bytes: {}", h.mmapped);
            let _ = writeln!(out, "malloc_in_use_bytes: {}", h.in_use);
            let _ = writeln!(out, "malloc_free_bytes: {}", h.free);
        }
        None => out.push_str("malloc: statistics not available with this C library\n"),
    }
    // VmRSS, RssAnon, VmHWM, VmData from /proc/self/status, in bytes.
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            if !matches!(k, "VmRSS" | "RssAnon" | "VmHWM" | "VmData") {
                continue;
            }
            if let Some(kb) = v
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
            {
                let _ = writeln!(out, "{k}_bytes: {}", kb * 1024);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_parameter() {
        assert_eq!(seconds(None), Ok(DEFAULT_SECONDS));
        assert_eq!(seconds(Some("debug=1")), Ok(DEFAULT_SECONDS));
        assert_eq!(seconds(Some("seconds=2")), Ok(2));
        assert_eq!(seconds(Some("x=1&seconds=5")), Ok(5));
        for bad in ["seconds=0", "seconds=-1", "seconds=soon", "seconds=601"] {
            assert!(seconds(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn observability_json_switch() {
        assert!(enabled_in_observability_json(
            r#"{"tracing":{},"runtime":{"profiling":"enabled","exportInterval":"1s"}}"#
        ));
        for off in [
            "",
            "{",
            "{}",
            r#"{"runtime":{"profiling":"disabled"}}"#,
            r#"{"runtime":{"profiling":true}}"#,
        ] {
            assert!(!enabled_in_observability_json(off), "{off}");
        }
    }

    #[test]
    fn heap_summary_has_the_kernel_figures() {
        let s = heap_summary();
        assert!(s.contains("VmRSS_bytes: "), "{s}");
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(s.contains("malloc_in_use_bytes: "), "{s}");
        }
    }
}
