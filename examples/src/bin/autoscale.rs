//! Knative's autoscale-go in Rust: `?sleep=<ms>` sleeps, `?prime=<n>` finds primes below n,
//! `?bloat=<mb>` allocates and touches that many MiB. Listens on `$PORT` (default 8080).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

fn param(query: &str, name: &str) -> Option<u64> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

fn primes_below(n: u64) -> u64 {
    // A sieve, like autoscale-go's, to burn CPU proportionally to n.
    let n = n.min(100_000_000) as usize;
    if n < 3 {
        return 0;
    }
    let mut sieve = vec![true; n];
    let mut count = 0;
    for i in 2..n {
        if sieve[i] {
            count += 1;
            let mut j = i * i;
            while j < n {
                sieve[j] = false;
                j += i;
            }
        }
    }
    count
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let query = req.uri().query().unwrap_or("");
    let mut out = String::new();
    if let Some(ms) = param(query, "sleep") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        out.push_str(&format!("Slept for {ms} milliseconds.\n"));
    }
    if let Some(n) = param(query, "prime") {
        let c = tokio::task::spawn_blocking(move || primes_below(n))
            .await
            .unwrap_or(0);
        out.push_str(&format!("The number of primes below {n} is {c}.\n"));
    }
    if let Some(mb) = param(query, "bloat") {
        let mb = mb.min(4096) as usize;
        let mut v = vec![0u8; mb * 1024 * 1024];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        out.push_str(&format!(
            "Allocated {} Mb of memory.\n",
            v.len() / 1024 / 1024
        ));
    }
    if out.is_empty() {
        let mut r = Response::new(Full::new(Bytes::from_static(
            b"usage: ?sleep=<ms>&prime=<n>&bloat=<mb>\n",
        )));
        *r.status_mut() = StatusCode::OK;
        return Ok(r);
    }
    Ok(Response::new(Full::new(Bytes::from(out))))
}

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            eprintln!("autoscale: listening on port {port}");
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => r?,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                };
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), hyper::service::service_fn(handle))
                        .await;
                });
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_and_primes() {
        assert_eq!(param("sleep=100&prime=10", "prime"), Some(10));
        assert_eq!(param("sleep=x", "sleep"), None);
        assert_eq!(primes_below(10), 4);
    }
}
