//! A minimal OTLP/HTTP trace receiver on a given listener: decodes every
//! `ExportTraceServiceRequest` posted to `/v1/traces` and hands the spans over a channel. Used by
//! the binaries' black-box tests to check what they export; small enough to keep next to the
//! exporter so both sides use the same messages.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ExportTraceServiceRequest, Span};

/// Serves `listener` until `stop`; every exported span arrives on the returned channel.
pub fn spawn(listener: TcpListener, stop: CancellationToken) -> mpsc::UnboundedReceiver<Span> {
    let (tx, rx) = mpsc::unbounded_channel();
    let svc = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
        let tx = tx.clone();
        async move {
            let ok = req.uri().path() == "/v1/traces";
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let msg = body
                .ok()
                .filter(|_| ok)
                .and_then(|b| ExportTraceServiceRequest::decode(b.as_ref()).ok());
            let Some(msg) = msg else {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                return Ok::<_, Infallible>(r);
            };
            for s in msg
                .resource_spans
                .into_iter()
                .flat_map(|rs| rs.scope_spans)
                .flat_map(|ss| ss.spans)
            {
                let _ = tx.send(s);
            }
            Ok(Response::new(Full::new(Bytes::new())))
        }
    });
    tokio::spawn(crate::http::server::serve(
        listener,
        svc,
        crate::http::server::ServerOptions::default(),
        stop,
    ));
    rx
}
