//! What `activator local` prints: its own log lines, the pods' output, the request log and, on a
//! terminal, a live view of every revision kept below the scrolling lines.
//!
//! Everything goes through one writer so the live view can be erased before a line is printed
//! and drawn again after it (what `kubectl get -w` users expect to watch). Piped, there is no
//! live view: the revision loops print timestamped status lines instead.
//!
//! Human format: `12:03:04.123 [hello-00001-deployment-1/queue-proxy] INFO listening
//! addr=127.0.0.1:40515`. JSON format (`--log-format json`): our lines as Knative's zap JSON,
//! the queue-proxy's JSON unchanged, app output wrapped as `{"timestamp","pod","message"}`.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// The output's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Readable lines (and the live view on a terminal).
    Human,
    /// One JSON object per line.
    Json,
}

struct Console {
    format: Format,
    live: bool,
    state: Mutex<Live>,
}

#[derive(Default)]
struct Live {
    /// One line per revision, in key order.
    rows: BTreeMap<String, String>,
    /// Lines of the view currently on screen.
    drawn: usize,
}

static CONSOLE: OnceLock<Console> = OnceLock::new();

/// Sets the format; the live view is on when stdout is a terminal (human format only).
pub fn init(format: Format) {
    let live = format == Format::Human && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let _ = CONSOLE.set(Console {
        format,
        live,
        state: Mutex::new(Live::default()),
    });
}

fn console() -> &'static Console {
    CONSOLE.get_or_init(|| Console {
        format: Format::Human,
        live: false,
        state: Mutex::new(Live::default()),
    })
}

/// Whether the live view replaces the periodic status lines.
pub fn live() -> bool {
    console().live
}

/// The output format.
pub fn format() -> Format {
    console().format
}

/// Prints lines (each ending in `\n`), keeping the live view below them.
pub fn print(text: &str) {
    let c = console();
    let mut st = c.state.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = std::io::stdout().lock();
    let mut buf = String::new();
    if c.live {
        erase(&mut buf, st.drawn);
    }
    buf.push_str(text);
    if c.live {
        draw(&mut buf, &st.rows);
        st.drawn = st.rows.len();
    }
    let _ = out.write_all(buf.as_bytes());
    let _ = out.flush();
}

/// Sets one revision's live-view row and redraws (no-op when there is no live view).
pub fn set_row(key: &str, row: String) {
    let c = console();
    if !c.live {
        return;
    }
    let mut st = c.state.lock().unwrap_or_else(|e| e.into_inner());
    let mut buf = String::new();
    erase(&mut buf, st.drawn);
    st.rows.insert(key.to_owned(), row);
    draw(&mut buf, &st.rows);
    st.drawn = st.rows.len();
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(buf.as_bytes());
    let _ = out.flush();
}

fn erase(buf: &mut String, lines: usize) {
    for _ in 0..lines {
        // Up one line, clear it.
        buf.push_str("\x1b[1A\x1b[2K");
    }
}

fn draw(buf: &mut String, rows: &BTreeMap<String, String>) {
    for r in rows.values() {
        buf.push_str("\x1b[7m");
        buf.push_str(r);
        buf.push_str("\x1b[0m\n");
    }
}

/// `HH:MM:SS.mmm` (UTC) of now.
pub fn clock() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    )
}

/// One line of a pod's output, as printed.
pub fn pod_line(prefix: &str, line: &str) -> String {
    match format() {
        Format::Human => render_human(prefix, line),
        Format::Json => render_json(prefix, line),
    }
}

/// A queue-proxy zap JSON line as `time [prefix] LEVEL message key=value…`; anything else (an
/// app's own output) as `time [prefix] line`.
fn render_human(prefix: &str, line: &str) -> String {
    let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(line) else {
        return format!("{} [{prefix}] {line}\n", clock());
    };
    let time = match m.remove("timestamp") {
        // `2026-12-04T17:42:55.740Z` → `17:42:55.740`.
        Some(Value::String(t)) if t.len() >= 23 => t[11..23].to_owned(),
        _ => clock(),
    };
    let level = match m.remove("severity").or_else(|| m.remove("level")) {
        Some(Value::String(l)) => l.to_ascii_uppercase(),
        _ => "INFO".to_owned(),
    };
    let msg = match m.remove("message").or_else(|| m.remove("msg")) {
        Some(Value::String(s)) => s,
        Some(v) => v.to_string(),
        None => String::new(),
    };
    // Implied by the prefix, or noise for a reader.
    for k in ["caller", "logger", "knative.dev/key", "knative.dev/pod"] {
        m.remove(k);
    }
    let mut out = format!("{time} [{prefix}] {level} {msg}");
    for (k, v) in m {
        match v {
            Value::String(s) if !s.contains(' ') && !s.is_empty() => {
                out.push_str(&format!(" {k}={s}"));
            }
            v => out.push_str(&format!(" {k}={v}")),
        }
    }
    out.push('\n');
    out
}

fn render_json(prefix: &str, line: &str) -> String {
    if line.starts_with('{') && serde_json::from_str::<Value>(line).is_ok() {
        return format!("{line}\n");
    }
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let v = serde_json::json!({
        "timestamp": humantime::format_rfc3339_millis(UNIX_EPOCH + d).to_string(),
        "pod": prefix,
        "message": line,
    });
    format!("{v}\n")
}

/// `tracing` output through the console.
#[derive(Clone, Copy, Debug, Default)]
pub struct Writer;

impl Write for Writer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        print(&String::from_utf8_lossy(b));
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Writer {
    type Writer = Writer;

    fn make_writer(&'a self) -> Self::Writer {
        Writer
    }
}

/// `HH:MM:SS.mmm` before each of our own human lines.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock;

impl tracing_subscriber::fmt::time::FormatTime for Clock {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(w, "{}", clock())
    }
}

/// Installs the `tracing` subscriber for local mode.
pub fn init_tracing(level: tracing::Level) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(Writer);
    let _ = match format() {
        Format::Json => builder
            .event_format(shared::telemetry::log::ZapFormat::default())
            .try_init(),
        Format::Human => builder
            .with_ansi(live() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()))
            .compact()
            .with_target(false)
            .with_timer(Clock)
            .try_init(),
    };
}

/// One revision's live-view row.
pub fn row(revision: &str, s: &Value) -> String {
    let f = |k: &str| s[k].as_f64().unwrap_or(0.0);
    let cold = &s["last_cold_start"];
    let cold = if cold.is_null() {
        "-".to_owned()
    } else {
        let total = ["scheduling_ms", "pod_start_ms", "readiness_ms"]
            .iter()
            .map(|k| cold[*k].as_f64().unwrap_or(0.0))
            .sum::<f64>();
        match cold["engine_start_ms"].as_f64() {
            Some(e) => format!("{total:.0} ms (engine {e:.0} ms)"),
            None => format!("{total:.0} ms"),
        }
    };
    format!(
        "{revision:<28} pods {}/{}  stable {:.2}  panic {:.2}{}  held {}  cold start {cold}",
        s["ready_pods"].as_i64().unwrap_or(0),
        s["desired_pods"].as_i64().unwrap_or(0),
        f("stable_concurrency"),
        f("panic_concurrency"),
        if s["panic"].as_bool().unwrap_or(false) {
            " (panic)"
        } else {
            ""
        },
        s["held_requests"].as_u64().unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_proxy_json_becomes_a_readable_line() {
        let l = render_human(
            "hello-00001-deployment-1/queue-proxy",
            r#"{"addr":"127.0.0.1:40515","caller":"queue-proxy/src/lib.rs:206","knative.dev/key":"default/hello-00001","knative.dev/pod":"hello-00001-deployment-1","listener":"serving","logger":"queueproxy","message":"listening","severity":"INFO","timestamp":"2026-12-04T12:03:04.123Z"}"#,
        );
        assert_eq!(
            l,
            "12:03:04.123 [hello-00001-deployment-1/queue-proxy] INFO listening addr=127.0.0.1:40515 listener=serving\n"
        );
        let app = render_human("hello-00001-deployment-1", "helloworld: listening on 8080");
        assert!(
            app.ends_with(" [hello-00001-deployment-1] helloworld: listening on 8080\n"),
            "{app}"
        );
        assert_eq!(app.find(" ["), Some(12), "{app}");
    }

    #[test]
    fn json_keeps_json_and_wraps_plain_output() {
        assert_eq!(render_json("p", r#"{"a":1}"#), "{\"a\":1}\n");
        let v: Value = serde_json::from_str(render_json("p/x", "hi there").trim()).unwrap();
        assert_eq!(
            (v["pod"].as_str(), v["message"].as_str()),
            (Some("p/x"), Some("hi there"))
        );
    }

    #[test]
    fn live_row_shows_pods_concurrency_held_and_cold_start() {
        let s = serde_json::json!({
            "ready_pods": 2, "desired_pods": 3, "stable_concurrency": 12.5,
            "panic_concurrency": 20.0, "panic": true, "held_requests": 4,
            "last_cold_start": {"scheduling_ms": 0.2, "pod_start_ms": 600.0,
                "readiness_ms": 1.0, "engine_start_ms": 590.0},
        });
        let r = row("default/hello-00001", &s);
        assert!(
            r.contains("pods 2/3  stable 12.50  panic 20.00 (panic)  held 4  cold start 601 ms (engine 590 ms)"),
            "{r}"
        );
    }
}

/// The request log's template: the fields the activator knows, tab-separated for
/// [`request_line`] (Knative's request-log machinery renders it).
///
/// # Panics
/// Never: the template is fixed and uses only supported fields (a unit test parses it).
pub fn request_log_template() -> shared::telemetry::reqlog::Template {
    shared::telemetry::reqlog::Template::parse(REQUEST_LOG)
        .unwrap_or_else(|e| unreachable!("fixed template: {e}"))
}

const REQUEST_LOG: &str = "{{.Request.Method}}\t{{.Request.Host}}\t{{.Request.RequestURI}}\t{{.Response.Code}}\t{{.Response.Latency}}\t{{.Revision.Namespace}}/{{.Revision.Name}}";

static PODS: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

/// Names the pod at a queue-proxy address, for the request log.
pub fn register_pod(addr: String, name: String) {
    PODS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(addr, name);
}

/// Prints one request-log line (the [`crate::reqlog::Sink`] of local mode).
pub fn request_line(rendered: &str, held_ms: Option<u64>, pod: Option<&str>) {
    let name = pod.map(|a| {
        PODS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(a)
            .cloned()
            .unwrap_or_else(|| a.to_owned())
    });
    print(&format_request(rendered, held_ms, name.as_deref()));
}

fn format_request(rendered: &str, held_ms: Option<u64>, pod: Option<&str>) -> String {
    let f: Vec<&str> = rendered.trim_end().split('\t').collect();
    let [method, host, path, code, latency, revision] = f[..] else {
        return format!("{} request {}\n", clock(), rendered.trim_end());
    };
    let ms = latency.parse::<f64>().map_or(0.0, |s| s * 1e3);
    match format() {
        Format::Human => format!(
            "{} {method} {host}{path} {code} {ms:.1}ms revision={revision} pod={} held_ms={}\n",
            clock(),
            pod.unwrap_or("-"),
            held_ms.unwrap_or(0)
        ),
        Format::Json => {
            let v = serde_json::json!({
                "timestamp": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                "message": "request",
                "method": method, "host": host, "path": path,
                "status": code.parse::<u16>().unwrap_or(0),
                "latency_ms": ms, "revision": revision, "pod": pod, "held_ms": held_ms.unwrap_or(0),
            });
            format!("{v}\n")
        }
    }
}

#[cfg(test)]
mod request_tests {
    use super::*;

    #[test]
    fn request_lines_have_every_field() {
        let t = request_log_template();
        let e = shared::telemetry::reqlog::Entry {
            method: "GET".into(),
            request_uri: "/a?b=1".into(),
            host: "hello.default.example.com".into(),
            code: 200,
            latency: 0.0123,
            ..Default::default()
        };
        let r = shared::telemetry::reqlog::Revision {
            name: "hello-00001".into(),
            namespace: "default".into(),
            ..Default::default()
        };
        let line = format_request(&t.render(&e, &r), Some(7), Some("hello-00001-deployment-1"));
        assert!(
            line.ends_with(
                " GET hello.default.example.com/a?b=1 200 12.3ms revision=default/hello-00001 pod=hello-00001-deployment-1 held_ms=7\n"
            ),
            "{line:?}"
        );
    }
}
