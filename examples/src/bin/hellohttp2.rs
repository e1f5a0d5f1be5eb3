//! Mirrors Knative's `hellohttp2` test image (test/test_images/hellohttp2): answers `$RESPONSE`
//! (default `Hello, New World! How about donuts and coffee?`) to HTTP/2 requests and
//! `426 Upgrade Required` to anything else, so a client sees the text only when the path to the
//! app spoke HTTP/2 (h2c). Listens on `$PORT` (default 8080).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let text = Bytes::from(
        std::env::var("RESPONSE")
            .unwrap_or_else(|_| "Hello, New World! How about donuts and coffee?".to_owned()),
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            eprintln!("hellohttp2: listening on port {port}");
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => r?,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                };
                let text = text.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let r = if req.version() == Version::HTTP_2 {
                            Response::new(Full::new(text.clone()))
                        } else {
                            let mut r = Response::new(Full::new(Bytes::from_static(
                                b"this server only speaks HTTP/2\n",
                            )));
                            *r.status_mut() = StatusCode::UPGRADE_REQUIRED;
                            r
                        };
                        async move { Ok::<_, Infallible>(r) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
}
