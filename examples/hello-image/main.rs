//! The seeds' hello world as an image: answers `Hello <TARGET>!` on `$PORT` (default 8080) on
//! every interface, as an app in a container must (the engine publishes the port from outside
//! the container's network namespace). It stops on SIGTERM: as a container's PID 1 it would
//! otherwise ignore the signal and wait out the engine's grace period.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let target = std::env::var("TARGET").unwrap_or_else(|_| "World".to_owned());
    let revision = std::env::var("K_REVISION").unwrap_or_default();
    let body = Bytes::from(format!("Hello {target}!\n"));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
            eprintln!("hello-image: revision {revision:?} listening on port {port}");
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => r?,
                    _ = term.recv() => return Ok(()),
                    _ = int.recv() => return Ok(()),
                };
                let body = body.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        let body = body.clone();
                        async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
}
