#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;

fn span(name: &'static str, parent: Option<[u8; 8]>) -> SpanData {
    SpanData {
        trace_id: [0x4b; 16],
        span_id: [0x01, 2, 3, 4, 5, 6, 7, 8],
        parent,
        name: Cow::Borrowed(name),
        kind: SpanKind::Server,
        start: UNIX_EPOCH + Duration::from_nanos(1_000),
        end: UNIX_EPOCH + Duration::from_nanos(2_000),
        attributes: vec![
            ("http.request.method", Attr::Str(Cow::Borrowed("GET"))),
            ("http.response.status_code", Attr::Int(200)),
        ],
        error: None,
    }
}

#[test]
fn sampler_follows_knative() {
    let tid = [0u8; 16];
    let sampled = TraceContext {
        trace_id: [1; 16],
        span_id: [1; 8],
        sampled: true,
    };
    let unsampled = TraceContext {
        sampled: false,
        ..sampled
    };
    // rate ≥ 1: always, parent ignored.
    assert!(Sampler::new(1.0).sample(Some(&unsampled), &tid));
    // rate ≤ 0: never.
    assert!(!Sampler::new(0.0).sample(Some(&sampled), &tid));
    // In between: the parent decides.
    assert!(Sampler::new(0.5).sample(Some(&sampled), &tid));
    assert!(!Sampler::new(0.5).sample(Some(&unsampled), &tid));
    // No parent: trace-id ratio on the low 8 bytes.
    let mut low = [0u8; 16];
    low[8] = 0x10; // (0x10.. >> 1) is well below 0.5 × 2^63
    assert!(Sampler::new(0.5).sample(None, &low));
    let mut high = [0u8; 16];
    high[8] = 0xf0;
    assert!(!Sampler::new(0.5).sample(None, &high));
    let n = (0..2000)
        .filter(|_| Sampler::new(0.25).sample(None, &new_trace_id()))
        .count();
    assert!((300..700).contains(&n), "about a quarter sampled, got {n}");
}

#[test]
fn endpoints_and_protocols() {
    let c = |p, e: Option<&str>, t: Option<&str>, b: Option<&str>| {
        ExportConfig::from_knative(p, e, 1.0, t, b).map(|c| c.and_then(|c| c.endpoint))
    };
    assert_eq!(c("none", Some("x:1"), None, None).unwrap(), None);
    assert_eq!(c("", None, None, None).unwrap(), None);
    assert_eq!(
        c("http/protobuf", Some("collector:4318"), None, None)
            .unwrap()
            .unwrap()
            .to_string(),
        // knative.dev/pkg prefixes `https://` to a bare `name:port` (Go parses it as opaque).
        "https://collector:4318/v1/traces"
    );
    assert_eq!(
        c("grpc", Some("http://collector:4317"), None, None)
            .unwrap()
            .unwrap()
            .to_string(),
        "http://collector:4317/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    );
    assert_eq!(
        c("http/protobuf", Some("10.0.0.9:4318"), None, None)
            .unwrap()
            .unwrap()
            .scheme_str(),
        Some("http")
    );
    assert_eq!(
        c("http/protobuf", Some("http://c:4318/otlp/"), None, None)
            .unwrap()
            .unwrap()
            .to_string(),
        // A path is used as given (the SDK's WithEndpointURL).
        "http://c:4318/otlp/"
    );
    // OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is used as given and wins.
    assert_eq!(
        c(
            "http/protobuf",
            Some("c:4318"),
            Some("http://t:9/x"),
            Some("b:1")
        )
        .unwrap()
        .unwrap()
        .to_string(),
        "http://t:9/x"
    );
    assert_eq!(
        c("grpc", Some("c:4317"), None, None)
            .unwrap()
            .unwrap()
            .to_string(),
        // Issue 14: a bare gRPC `host:port` is TLS in Knative.
        "https://c:4317/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    );
    assert_eq!(c("stdout", None, None, None).unwrap(), None);
    let e = c("zipkin", None, None, None).unwrap_err().to_string();
    assert!(e.contains("zipkin") && e.contains("http/protobuf"), "{e}");
    let e = c("grpc", None, None, None).unwrap_err().to_string();
    assert!(e.contains("required"), "{e}");
    assert_eq!(
        c("grpc", Some("https://c:4317"), None, None)
            .unwrap()
            .unwrap()
            .scheme_str(),
        Some("https")
    );
    let e = c("grpc", Some("ftp://c:1"), None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("scheme"), "{e}");
}

#[test]
fn span_bytes_use_the_upstream_field_numbers() {
    let p = span("GET", Some([9; 8])).to_proto();
    let b = p.encode_to_vec();
    // trace_id: field 1, length-delimited (0x0a), 16 bytes.
    assert_eq!(&b[..2], &[0x0a, 16]);
    assert_eq!(&b[2..18], &[0x4b; 16]);
    // span_id: field 2 (0x12), 8 bytes.
    assert_eq!(&b[18..20], &[0x12, 8]);
    // parent_span_id: field 4 (0x22), 8 bytes.
    assert_eq!(&b[28..30], &[0x22, 8]);
    // name: field 5 (0x2a), "GET".
    assert_eq!(&b[38..43], &[0x2a, 3, b'G', b'E', b'T']);
    // kind: field 6 varint (0x30) = 2 (server).
    assert_eq!(&b[43..45], &[0x30, 2]);
    // start: field 7 fixed64 (0x39), 1000 little-endian.
    assert_eq!(b[45], 0x39);
    assert_eq!(&b[46..54], &1000u64.to_le_bytes());
    assert_eq!(b[54], 0x41);
    // Round trip.
    assert_eq!(Span::decode(b.as_slice()).unwrap(), p);
}

#[test]
fn stdout_json_has_ids_and_attributes() {
    let j: serde_json::Value = serde_json::from_str(&span("GET", None).to_json()).unwrap();
    assert_eq!(j["Name"], "GET");
    assert_eq!(j["SpanContext"]["TraceID"], "4b".repeat(16));
    assert_eq!(j["Attributes"]["http.response.status_code"], 200);
    assert_eq!(j["Parent"]["SpanID"], "");
}

/// A collector on 127.0.0.1 that hands every decoded export request to the test.
async fn collector(grpc: bool) -> (String, mpsc::Receiver<(String, ExportTraceServiceRequest)>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(16);
    let svc = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
        let tx = tx.clone();
        async move {
            let path = req.uri().path().to_owned();
            let ct = req
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let msg = if grpc {
                assert_eq!(ct, "application/grpc");
                assert_eq!(body[0], 0, "uncompressed");
                let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
                assert_eq!(len, body.len() - 5);
                ExportTraceServiceRequest::decode(&body[5..]).unwrap()
            } else {
                assert_eq!(ct, "application/x-protobuf");
                ExportTraceServiceRequest::decode(body.as_ref()).unwrap()
            };
            tx.send((path, msg)).await.unwrap();
            let mut r = Response::new(Full::new(Bytes::new()));
            if grpc {
                r.headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/grpc"));
                r.headers_mut()
                    .insert("grpc-status", HeaderValue::from_static("0"));
            }
            Ok::<_, Infallible>(r)
        }
    });
    tokio::spawn(crate::http::server::serve(
        l,
        svc,
        crate::http::server::ServerOptions::default(),
        CancellationToken::new(),
    ));
    (addr.to_string(), rx)
}

async fn exports_to(protocol: &str, grpc: bool) {
    let (addr, mut rx) = collector(grpc).await;
    let mut cfg = ExportConfig::from_knative(protocol, Some(&addr), 1.0, None, None)
        .unwrap()
        .unwrap();
    cfg.service_name = "rev-a".into();
    let stop = CancellationToken::new();
    let tracer = Tracer::start(cfg, stop.clone());
    assert!(tracer.sample(None, &new_trace_id()));
    tracer.record(span("GET", None));
    tracer.record(span("kn.queueproxy.proxy", Some([1, 2, 3, 4, 5, 6, 7, 8])));
    let (path, msg) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("exported within the flush interval")
        .unwrap();
    if grpc {
        assert_eq!(
            path,
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        );
    } else {
        assert_eq!(path, "/v1/traces");
    }
    let rs = &msg.resource_spans[0];
    let svc = &rs.resource.as_ref().unwrap().attributes[0];
    assert_eq!(svc.key, "service.name");
    let names: Vec<&str> = rs.scope_spans[0]
        .spans
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["GET", "kn.queueproxy.proxy"]);
    assert_eq!(tracer.dropped(), 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_over_http_protobuf() {
    exports_to("http/protobuf", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_over_grpc() {
    exports_to("grpc", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_never_blocks_recording() {
    // Port 9 on loopback: nothing listens; exports fail, recording stays non-blocking.
    let cfg = ExportConfig::from_knative("http/protobuf", Some("127.0.0.1:9"), 1.0, None, None)
        .unwrap()
        .unwrap();
    let stop = CancellationToken::new();
    let tracer = Tracer::start(cfg, stop.clone());
    let t0 = std::time::Instant::now();
    for _ in 0..(QUEUE * 2) {
        tracer.record(span("GET", None));
    }
    // Far more than the queue holds: the rest were dropped, not waited for.
    assert!(tracer.dropped() > 0);
    assert!(t0.elapsed() < Duration::from_secs(5));
    stop.cancel();
}

/// A collector behind TLS with a self-signed certificate for `localhost`: (endpoint, CA file,
/// received messages).
async fn tls_collector(
    grpc: bool,
) -> (
    String,
    std::path::PathBuf,
    mpsc::Receiver<(String, ExportTraceServiceRequest)>,
) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let ca = std::env::temp_dir().join(format!(
        "otlp-ca-{}-{}.pem",
        std::process::id(),
        u8::from(grpc)
    ));
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let b = if grpc { body.slice(5..) } else { body };
                        let msg = ExportTraceServiceRequest::decode(b.as_ref()).unwrap();
                        tx.send((path, msg)).await.unwrap();
                        let mut r = Response::new(Full::new(Bytes::new()));
                        if grpc {
                            r.headers_mut().insert(
                                "content-type",
                                HeaderValue::from_static("application/grpc"),
                            );
                            r.headers_mut()
                                .insert("grpc-status", HeaderValue::from_static("0"));
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (format!("localhost:{port}"), ca, rx)
}

/// Issue 14 item 2: a bare `host:port` (and an `https://` URL) exports over TLS, as Knative's
/// OTel SDK does, trusting `OTEL_EXPORTER_OTLP_CERTIFICATE`'s CA.
async fn exports_over_tls(protocol: &str, grpc: bool, url: bool) {
    let (hostport, ca, mut rx) = tls_collector(grpc).await;
    let endpoint = if url {
        format!("https://{hostport}")
    } else {
        hostport
    };
    let mut cfg = ExportConfig::from_knative(protocol, Some(&endpoint), 1.0, None, None)
        .unwrap()
        .unwrap();
    assert_eq!(cfg.endpoint.as_ref().unwrap().scheme_str(), Some("https"));
    cfg.ca_file = Some(ca.clone());
    let stop = CancellationToken::new();
    let tracer = Tracer::start(cfg, stop.clone());
    tracer.record(span("GET", None));
    let (path, msg) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("exported over TLS within the flush interval")
        .unwrap();
    assert!(
        path.ends_with(if grpc { "/Export" } else { "/v1/traces" }),
        "{path}"
    );
    assert_eq!(msg.resource_spans[0].scope_spans[0].spans[0].name, "GET");
    stop.cancel();
    let _ = std::fs::remove_file(ca);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_over_tls_to_a_bare_grpc_host_port() {
    exports_over_tls("grpc", true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_over_tls_to_an_https_url() {
    exports_over_tls("http/protobuf", false, true).await;
}
