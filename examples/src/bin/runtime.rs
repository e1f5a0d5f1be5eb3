//! Mirrors Knative's `runtime` test image (test/test_images/runtime): answers every request
//! with a JSON description of what the container sees, in the shape of Knative's
//! `test/types/runtime.go` `RuntimeInfo` (the fields a local process can report): the request
//! (`ts`, `uri`, `host`, `method`, `headers` as lists, `protoMajor`/`protoMinor`) and the host
//! (`envs`, `args`, `user`, `stdin`). Listens on `$PORT` (default 8080) over HTTP/1.1 and h2c.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};

fn host_info() -> Value {
    let envs: BTreeMap<String, String> = std::env::vars().collect();
    let args: Vec<String> = std::env::args().collect();
    // The runtime contract says stdin is closed to the container: reading it ends at once.
    let mut buf = [0u8; 1];
    let stdin = match std::io::stdin().read(&mut buf) {
        Ok(0) => json!({"eof": true}),
        Ok(_) => json!({"eof": false}),
        Err(e) => json!({"error": e.to_string()}),
    };
    let cwd = match std::env::current_dir() {
        Ok(d) => json!({"directory": d.display().to_string()}),
        Err(e) => json!({"error": e.to_string()}),
    };
    let ids = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let id = |key: &str, at: usize| -> i64 {
        ids.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().nth(at))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    };
    json!({
        "envs": envs,
        "args": args,
        "stdin": stdin,
        "user": {"uid": id("Uid:", 0), "euid": id("Uid:", 1), "gid": id("Gid:", 0), "egid": id("Gid:", 1), "cwd": cwd},
    })
}

fn request_info(req: &Request<Incoming>) -> Value {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        if k == http::header::HOST {
            continue;
        }
        headers
            .entry(canonical(k.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(http::uri::Authority::as_str))
        .unwrap_or("");
    let (major, minor) = match req.version() {
        Version::HTTP_2 => (2, 0),
        Version::HTTP_10 => (1, 0),
        Version::HTTP_3 => (3, 0),
        _ => (1, 1),
    };
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    json!({
        "ts": ts,
        "uri": req.uri().path_and_query().map_or("/", http::uri::PathAndQuery::as_str),
        "host": host,
        "method": req.method().as_str(),
        "headers": headers,
        "protoMajor": major,
        "protoMinor": minor,
    })
}

/// `x-forwarded-for` → `X-Forwarded-For`, as Go's `http.Header` keys are written.
fn canonical(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            c.next().map_or_else(String::new, |f| {
                f.to_ascii_uppercase().to_string() + c.as_str()
            })
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let host = host_info();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            eprintln!("runtime: listening on port {port}");
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => r?,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                };
                let host = host.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let body = json!({"request": request_info(&req), "host": host});
                        async move {
                            let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
                            r.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
}
