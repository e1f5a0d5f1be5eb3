//! Logs in Knative's zap JSON shape, or a human format for local runs.
//!
//! Knative's `config-logging` encoder writes `severity`, `timestamp` (ISO-8601), `logger`,
//! `caller`, `message`, plus `knative.dev/key` and `knative.dev/pod`; log pipelines built for
//! Knative parse exactly these keys, so we write them, and add the event's own fields.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Knative's zap keys, plus the fixed fields of this process.
#[derive(Clone, Debug, Default)]
pub struct ZapFormat {
    /// The `logger` value (`queueproxy`, `activator`).
    pub logger: String,
    /// `knative.dev/key` (`<namespace>/<revision>`), when known.
    pub key: Option<String>,
    /// `knative.dev/pod`, when known.
    pub pod: Option<String>,
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

/// zap's capital level names.
fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

impl<S, N> FormatEvent<S, N> for ZapFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        let message = fields.remove("message").unwrap_or(Value::from(""));
        let mut obj = Map::new();
        obj.insert("severity".into(), severity(meta.level()).into());
        obj.insert(
            "timestamp".into(),
            humantime::format_rfc3339_millis(std::time::SystemTime::now())
                .to_string()
                .into(),
        );
        obj.insert("logger".into(), self.logger.clone().into());
        let caller = match (meta.file(), meta.line()) {
            (Some(f), Some(l)) => format!("{f}:{l}"),
            _ => meta.target().to_owned(),
        };
        obj.insert("caller".into(), caller.into());
        obj.insert("message".into(), message);
        if let Some(k) = &self.key {
            obj.insert("knative.dev/key".into(), k.clone().into());
        }
        if let Some(p) = &self.pod {
            obj.insert("knative.dev/pod".into(), p.clone().into());
        }
        for (k, v) in fields {
            obj.entry(k).or_insert(v);
        }
        writeln!(writer, "{}", Value::Object(obj))
    }
}

/// How logs are written.
#[derive(Clone, Debug)]
pub enum LogFormat {
    /// Knative's zap JSON, one object per line (containers).
    Zap(ZapFormat),
    /// Compact human-readable lines (`activator local`).
    Human,
}

/// Parses a zap/Knative level name (`debug`, `info`, `warn`, `error`, `dpanic`, `panic`,
/// `fatal`), case-insensitively.
pub fn parse_level(s: &str) -> Option<Level> {
    match s.trim().to_ascii_lowercase().as_str() {
        "debug" => Some(Level::DEBUG),
        "info" => Some(Level::INFO),
        "warn" | "warning" => Some(Level::WARN),
        "error" | "dpanic" | "panic" | "fatal" => Some(Level::ERROR),
        _ => None,
    }
}

/// The level from a zap JSON logger config (`{"level": "info", ...}`) and an explicit level
/// override (`SERVING_LOGGING_LEVEL`, `loglevel.<component>`). The override wins; an invalid
/// config falls back to `info`, as Knative falls back to a production logger rather than failing.
pub fn resolve_level(level_override: Option<&str>, zap_config: Option<&str>) -> Level {
    if let Some(l) = level_override.and_then(parse_level) {
        return l;
    }
    zap_config
        .and_then(|c| serde_json::from_str::<Value>(c).ok())
        .and_then(|v| v.get("level").and_then(Value::as_str).and_then(parse_level))
        .unwrap_or(Level::INFO)
}

/// Installs the global subscriber writing to stdout. Call once from `main`; returns false if a
/// subscriber was already installed (e.g. tests).
pub fn init(format: LogFormat, level: Level) -> bool {
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Zap(z) => builder.event_format(z).try_init().is_ok(),
        // Colours only on a terminal: piped or redirected logs stay plain text (NO_COLOR too).
        LogFormat::Human => builder
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stdout())
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            )
            .compact()
            .with_target(false)
            .without_time()
            .try_init()
            .is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn zap_json_line_has_knative_keys() {
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .event_format(ZapFormat {
                logger: "queueproxy".into(),
                key: Some("default/hello-00001".into()),
                pod: Some("hello-00001-deployment-abc".into()),
            })
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(status = 504u64, "Request timeout: 300s");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["severity"], "WARN");
        assert_eq!(v["logger"], "queueproxy");
        assert_eq!(v["message"], "Request timeout: 300s");
        assert_eq!(v["knative.dev/key"], "default/hello-00001");
        assert_eq!(v["knative.dev/pod"], "hello-00001-deployment-abc");
        assert_eq!(v["status"], 504);
        assert!(v["caller"].as_str().unwrap().contains("log.rs:"));
        let ts = v["timestamp"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(ts).is_ok(), "ISO-8601: {ts}");
    }

    #[test]
    fn level_resolution() {
        assert_eq!(resolve_level(Some("debug"), None), Level::DEBUG);
        assert_eq!(
            resolve_level(None, Some(r#"{"level":"error"}"#)),
            Level::ERROR
        );
        assert_eq!(resolve_level(None, Some("not json")), Level::INFO);
        assert_eq!(
            resolve_level(Some("bogus"), Some(r#"{"level":"warn"}"#)),
            Level::WARN
        );
    }
}
