//! Mirrors Knative's `readiness` test image (test/test_images/readiness): `/` answers Knative's
//! hello-world text; `/healthz/readiness` answers it too once healthy, 500 before; `/query`
//! answers it when the query has `probe=ok`; `/start-failing` makes the readiness path fail from
//! then on. `READY_DELAY` (e.g. `10s`, `500ms`) keeps it unhealthy that long after start,
//! `LISTEN_DELAY` delays listening, `HEALTHCHECK_PORT` moves the readiness path to `/readiness`
//! on that port. Listens on `$PORT` (default 8080).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// Knative's `test.HelloWorldText`.
const HELLO: &str = "Hello World! How about some tasty noodles?";

fn delay(var: &str) -> Option<Duration> {
    let v = std::env::var(var).ok()?;
    let (n, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        _ => None,
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

fn readiness(healthy: &AtomicBool) -> Response<Full<Bytes>> {
    if healthy.load(Ordering::Acquire) {
        text(StatusCode::OK, HELLO)
    } else {
        text(StatusCode::INTERNAL_SERVER_ERROR, "not healthy\n")
    }
}

fn route(
    req: &Request<Incoming>,
    healthy: &AtomicBool,
    probes_here: bool,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz/readiness" if probes_here => readiness(healthy),
        "/start-failing" => {
            healthy.store(false, Ordering::Release);
            text(StatusCode::OK, "will now fail readiness")
        }
        "/query" => {
            let ok = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "probe=ok"));
            if ok {
                text(StatusCode::OK, HELLO)
            } else {
                text(StatusCode::BAD_REQUEST, "probe=ok is missing\n")
            }
        }
        _ => text(StatusCode::OK, HELLO),
    }
}

async fn serve(port: u16, healthy: Arc<AtomicBool>, main: bool) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let separate_probe = std::env::var("HEALTHCHECK_PORT").is_ok();
    loop {
        let (stream, _) = listener.accept().await?;
        let healthy = Arc::clone(&healthy);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = if main {
                    route(&req, &healthy, !separate_probe)
                } else if req.uri().path() == "/readiness" {
                    readiness(&healthy)
                } else {
                    text(StatusCode::NOT_FOUND, "404 page not found\n")
                };
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let healthy = Arc::new(AtomicBool::new(true));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            if let Some(d) = delay("READY_DELAY") {
                healthy.store(false, Ordering::Release);
                let h = Arc::clone(&healthy);
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    h.store(true, Ordering::Release);
                });
            }
            if let Some(d) = delay("LISTEN_DELAY") {
                tokio::time::sleep(d).await;
            }
            if let Some(p) = std::env::var("HEALTHCHECK_PORT")
                .ok()
                .and_then(|p| p.parse().ok())
            {
                tokio::spawn(serve(p, Arc::clone(&healthy), false));
            }
            eprintln!("readiness: listening on port {port}");
            tokio::select! {
                r = serve(port, healthy, true) => r,
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        })
}
