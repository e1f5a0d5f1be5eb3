//! Mirrors Knative's `singlethreaded` test image (test/test_images/singlethreaded): serves one
//! request at a time. Each request holds the app for 500 ms and answers `One at a time`; a
//! request that arrives while another is being served gets a 500, which is how
//! `containerConcurrency: 1` is shown to be enforced. Listens on `$PORT` (default 8080).

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

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let busy = Arc::new(AtomicBool::new(false));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            eprintln!("singlethreaded: listening on port {port}");
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => r?,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                };
                let busy = Arc::clone(&busy);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        let busy = Arc::clone(&busy);
                        async move {
                            if busy.swap(true, Ordering::AcqRel) {
                                let mut r = Response::new(Full::new(Bytes::from_static(
                                    b"concurrent request received\n",
                                )));
                                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                                return Ok::<_, Infallible>(r);
                            }
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            busy.store(false, Ordering::Release);
                            Ok(Response::new(Full::new(Bytes::from_static(
                                b"One at a time",
                            ))))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
}
