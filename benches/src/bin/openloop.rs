//! Open-loop (constant-rate) HTTP/1.1 load generator for `benches/load/run.sh`.
//!
//! wrk and hey are closed-loop: a slow response delays the next request, so a stalled proxy
//! looks *faster* (coordinated omission). benchmarking.md asks for open-loop runs at 25/50/75 %
//! of direct capacity; wrk2 and vegeta, the usual tools, are not in Debian, so this is ours.
//!
//! Model (wrk2's): `--connections` keep-alive connections, each sending on its own fixed
//! schedule (`rate / connections` requests per second, staggered). Latency is measured from the
//! request's *intended* start, so time spent queued behind a slow response on the same
//! connection counts. A ticker thread releases due start times (std `sleep`, ~50–100 µs
//! granularity, instead of tokio's 1 ms timer wheel); both threads should be pinned to the load
//! generator's CPU. The uncorrected latency (from the actual send) is reported too.
//!
//! Output, one line: `achieved_rps (finished inside the window) p50 p90 p99 p999 max requests errors p50_sent p99_sent`
//! (latencies in µs, over the measured window after `--warmup`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(about = "Open-loop HTTP/1.1 load at a fixed rate (CO-corrected latency)")]
struct Args {
    /// Target, `http://127.0.0.1:PORT/path` (plain HTTP/1.1 only).
    #[arg(long)]
    url: Uri,
    /// Requests per second over all connections.
    #[arg(long)]
    rate: f64,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    /// Seconds sent at the same rate before measuring (discarded).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
}

/// One finished request: latency from its intended start and from its actual send, in µs.
#[derive(Clone, Copy)]
struct Sample {
    intended_us: u32,
    sent_us: u32,
    /// Finished before the schedule ended: counts toward the achieved rate. A proxy that falls
    /// behind still completes everything eventually, but not at the offered rate.
    in_window: bool,
}

struct Outcome {
    samples: Vec<Sample>,
    errors: u64,
}

fn main() {
    let args = Args::parse();
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(args.rate) || args.connections == 0 || !positive(args.duration) {
        eprintln!("openloop: --rate, --duration and --connections must be positive");
        std::process::exit(2);
    }
    let headers = match parse_headers(&args.headers) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("openloop: {e}");
            std::process::exit(2);
        }
    };
    let (Some(host), Some(port)) = (args.url.host(), args.url.port_u16()) else {
        eprintln!("openloop: --url needs a host and an explicit port");
        std::process::exit(2);
    };
    let addr = format!("{host}:{port}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let total = ((args.warmup + args.duration) * args.rate).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate);

    let mut senders = Vec::with_capacity(args.connections);
    let mut receivers = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let (tx, rx) = mpsc::unbounded_channel::<Instant>();
        senders.push(tx);
        receivers.push(rx);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ticker_stop = stop.clone();
    // The ticker releases request i at start + i × interval to connection i mod C. It sends
    // every start time that is due when it wakes, so a late wake-up never loses requests.
    let ticker = std::thread::spawn(move || {
        let mut i = 0u64;
        while i < total && !ticker_stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let mut due = start + interval.mul_f64(i as f64);
            while due <= now && i < total {
                let _ = senders[(i % senders.len() as u64) as usize].send(due);
                i += 1;
                due = start + interval.mul_f64(i as f64);
            }
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    });

    let outcome = rt.block_on(async move {
        let mut tasks = Vec::with_capacity(receivers.len());
        for rx in receivers {
            let (url, headers, addr) = (args.url.clone(), headers.clone(), addr.clone());
            tasks.push(tokio::spawn(connection(
                addr,
                url,
                headers,
                rx,
                measure_from,
                end,
            )));
        }
        let mut all = Outcome {
            samples: Vec::with_capacity(((args.duration) * args.rate) as usize + 16),
            errors: 0,
        };
        // Requests still queued 10 s after the schedule ended are counted as errors.
        let deadline = tokio::time::Instant::from_std(end + Duration::from_secs(10));
        for t in tasks {
            match tokio::time::timeout_at(deadline, t).await {
                Ok(Ok(o)) => {
                    all.samples.extend(o.samples);
                    all.errors += o.errors;
                }
                _ => all.errors += 1,
            }
        }
        all
    });
    stop.store(true, Ordering::Relaxed);
    let _ = ticker.join();

    let measured = outcome.samples.iter().filter(|s| s.in_window).count() as f64 / args.duration;
    let mut intended: Vec<u32> = outcome.samples.iter().map(|s| s.intended_us).collect();
    let mut sent: Vec<u32> = outcome.samples.iter().map(|s| s.sent_us).collect();
    intended.sort_unstable();
    sent.sort_unstable();
    println!(
        "{:.0} {} {} {} {} {} {} {} {} {}",
        measured,
        pct(&intended, 0.50),
        pct(&intended, 0.90),
        pct(&intended, 0.99),
        pct(&intended, 0.999),
        intended.last().copied().unwrap_or(0),
        outcome.samples.len(),
        outcome.errors,
        pct(&sent, 0.50),
        pct(&sent, 0.99),
    );
}

/// Nearest-rank percentile of sorted values (0 when empty).
fn pct(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn parse_headers(raw: &[String]) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    raw.iter()
        .map(|h| {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| format!("header {h:?}: expected `Name: value`"))?;
            let name =
                HeaderName::try_from(name.trim()).map_err(|e| format!("header {h:?}: {e}"))?;
            let value =
                HeaderValue::try_from(value.trim()).map_err(|e| format!("header {h:?}: {e}"))?;
            Ok((name, value))
        })
        .collect()
}

/// One keep-alive connection working through its share of the schedule; reconnects after an
/// error (the failed request counts as an error, its successors keep their intended times).
async fn connection(
    addr: String,
    url: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    mut due: mpsc::UnboundedReceiver<Instant>,
    measure_from: Instant,
    end: Instant,
) -> Outcome {
    let mut out = Outcome {
        samples: Vec::new(),
        errors: 0,
    };
    let path = url
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let host = url
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let has_host = headers.iter().any(|(n, _)| n == http::header::HOST);
    let mut sender = None;
    while let Some(intended) = due.recv().await {
        if sender.is_none() {
            sender = connect(&addr).await;
        }
        let Some(s) = sender.as_mut() else {
            out.errors += u64::from(intended >= measure_from && intended < end);
            continue;
        };
        let mut req = Request::get(path.as_str());
        if !has_host {
            req = req.header(http::header::HOST, host.as_str());
        }
        for (n, v) in &headers {
            req = req.header(n, v);
        }
        let req = req.body(Empty::<Bytes>::new()).expect("request");
        let sent_at = Instant::now();
        let ok = match s.send_request(req).await {
            Ok(resp) => {
                let status_ok = resp.status().is_success();
                status_ok && resp.into_body().collect().await.is_ok()
            }
            Err(_) => false,
        };
        let done = Instant::now();
        if !ok {
            sender = None;
        }
        if intended < measure_from || intended >= end {
            continue;
        }
        if ok {
            out.samples.push(Sample {
                intended_us: micros(done.duration_since(intended)),
                sent_us: micros(done.duration_since(sent_at)),
                in_window: done <= end,
            });
        } else {
            out.errors += 1;
        }
    }
    out
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

async fn connect(addr: &str) -> Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let xs: Vec<u32> = (1..=100).collect();
        assert_eq!(pct(&xs, 0.50), 50);
        assert_eq!(pct(&xs, 0.99), 99);
        assert_eq!(pct(&xs, 0.999), 100);
        assert_eq!(pct(&[], 0.5), 0);
        assert_eq!(pct(&[7], 0.01), 7);
    }

    #[test]
    fn headers_need_a_colon_and_valid_names() {
        let ok = parse_headers(&["Host: a.b".into(), "K-Test:1".into()]).unwrap();
        assert_eq!(ok[0].0, "host");
        assert_eq!(ok[1].1, "1");
        assert!(
            parse_headers(&["nocolon".into()])
                .unwrap_err()
                .contains("Name: value")
        );
        assert!(parse_headers(&["bad name: x".into()]).is_err());
    }
}
