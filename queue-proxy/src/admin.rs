//! The side listeners: admin (`/wait-for-drain`), autoscaler metrics (`/metrics`, protobuf
//! `Stat`) and user metrics (`/metrics`, Prometheus text). None of them is behind the drainer.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use prometheus_client::registry::Registry;
use shared::http::response::{empty, go_error};
use shared::stats::PROTOBUF_CONTENT_TYPE;
use shared::telemetry::metrics::{PROMETHEUS_CONTENT_TYPE, render};

use crate::drain::Drainer;
use crate::stats::Reporter;

fn not_found() -> Response<Full<Bytes>> {
    go_error(StatusCode::NOT_FOUND, "404 page not found")
}

/// `/wait-for-drain` (Knative `adminHandler`): blocks until the drain completes. Without a
/// SIGTERM within 1 s the drain is reset (the user container is restarting, not the pod
/// shutting down), so the call returns after about 1 s and probes are healthy again.
pub async fn admin<B>(
    req: Request<B>,
    drainer: Drainer,
    terminating: Arc<AtomicBool>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/wait-for-drain" {
        return Ok(not_found());
    }
    tracing::info!("Attached drain handler from user-container");
    let watchdog = {
        let drainer = drainer.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if !terminating.load(Ordering::Acquire) {
                drainer.reset();
            }
        })
    };
    drainer.drain().await;
    drop(watchdog);
    Ok(empty(StatusCode::OK))
}

/// `:QUEUE_METRICS_PORT/metrics`: the last completed window's `Stat`, any method, any `Accept`.
pub fn autoscaler_metrics<B>(req: &Request<B>, reporter: &Reporter) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return not_found();
    }
    let mut resp = Response::new(Full::new(reporter.latest()));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(PROTOBUF_CONTENT_TYPE),
    );
    resp
}

/// `:QUEUE_USER_METRICS_PORT/metrics`: Prometheus text (`GET`/`HEAD`; other methods 405).
pub fn user_metrics<B>(req: &Request<B>, registry: &Registry) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return not_found();
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return go_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    }
    let mut resp = Response::new(Full::new(Bytes::from(render(registry))));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
    );
    resp
}
