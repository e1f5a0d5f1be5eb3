//! Logs in Knative's zap JSON shape, or a human format for local runs.
//!
//! Knative builds its logger from `config-logging`'s `zap-logger-config` laid over zapdriver's
//! production config (knative.dev/pkg `logging.stackdriverConfig`): with no config (a stock
//! install) that writes `severity` as `DEBUG`/`INFO`/`WARNING`/`ERROR` and `timestamp` as
//! RFC 3339 with nanoseconds, then `logger`, `caller`, `message`, `knative.dev/key`,
//! `knative.dev/pod` (and `knative.dev/controller` in the activator). A config that sets
//! `encoderConfig` keys or the level/time encoders changes them as zap would ([`ZapFormat::
//! with_zap_config`]). Log pipelines built for Knative parse exactly these, so we write them,
//! and add the event's own fields.

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
    /// `knative.dev/controller` (the activator's component name), when set.
    pub controller: Option<String>,
    /// Key names and encoders from `zap-logger-config`'s `encoderConfig`.
    pub encoder: EncoderConfig,
}

/// How zap names a level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LevelEncoding {
    /// zapdriver's: `DEBUG`, `INFO`, `WARNING`, `ERROR` (no config given).
    #[default]
    Zapdriver,
    /// zap's `capital`: `WARN`.
    Capital,
    /// zap's default for any other `levelEncoder` value, `""` included: `warn`.
    Lowercase,
}

/// How zap writes the time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimeEncoding {
    /// RFC 3339 with nanoseconds, trailing zeros trimmed (zapdriver's, and `rfc3339nano`).
    #[default]
    Rfc3339Nano,
    /// `rfc3339`: whole seconds.
    Rfc3339,
    /// `iso8601`: milliseconds (`2006-01-02T15:04:05.000Z0700`, `Z` in UTC).
    Iso8601,
    /// `millis`: float milliseconds since the epoch.
    Millis,
    /// `nanos`: integer nanoseconds since the epoch.
    Nanos,
    /// zap's default for any other value: float seconds since the epoch.
    Epoch,
}

/// `encoderConfig` of a zap JSON config, over zapdriver's production defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncoderConfig {
    /// `timeKey`.
    pub time_key: String,
    /// `levelKey`.
    pub level_key: String,
    /// `nameKey`.
    pub name_key: String,
    /// `callerKey`.
    pub caller_key: String,
    /// `messageKey`.
    pub message_key: String,
    /// `levelEncoder`.
    pub level: LevelEncoding,
    /// `timeEncoder`.
    pub time: TimeEncoding,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            time_key: "timestamp".into(),
            level_key: "severity".into(),
            name_key: "logger".into(),
            caller_key: "caller".into(),
            message_key: "message".into(),
            level: LevelEncoding::Zapdriver,
            time: TimeEncoding::Rfc3339Nano,
        }
    }
}

impl EncoderConfig {
    /// Lays a `zap-logger-config` JSON over the defaults as Go's `json.Unmarshal` does: only
    /// keys present change. An unparsable config keeps the defaults (Knative falls back to
    /// zapdriver's production config).
    pub fn from_zap_config(json: Option<&str>) -> Self {
        let mut c = Self::default();
        let Some(enc) = json
            .filter(|j| !j.trim().is_empty())
            .and_then(|j| serde_json::from_str::<Value>(j).ok())
            .and_then(|v| v.get("encoderConfig").cloned())
        else {
            return c;
        };
        let s = |k: &str| enc.get(k).and_then(Value::as_str).map(str::to_owned);
        for (k, slot) in [
            ("timeKey", &mut c.time_key),
            ("levelKey", &mut c.level_key),
            ("nameKey", &mut c.name_key),
            ("callerKey", &mut c.caller_key),
            ("messageKey", &mut c.message_key),
        ] {
            if let Some(v) = s(k) {
                *slot = v;
            }
        }
        if let Some(v) = s("levelEncoder") {
            c.level = match v.as_str() {
                "capital" | "capitalColor" => LevelEncoding::Capital,
                _ => LevelEncoding::Lowercase,
            };
        }
        if let Some(v) = s("timeEncoder") {
            c.time = match v.as_str() {
                "rfc3339nano" | "RFC3339Nano" => TimeEncoding::Rfc3339Nano,
                "rfc3339" | "RFC3339" => TimeEncoding::Rfc3339,
                "iso8601" | "ISO8601" => TimeEncoding::Iso8601,
                "millis" => TimeEncoding::Millis,
                "nanos" => TimeEncoding::Nanos,
                _ => TimeEncoding::Epoch,
            };
        }
        c
    }

    fn level(&self, level: &Level) -> &'static str {
        match (self.level, *level) {
            (LevelEncoding::Lowercase, Level::ERROR) => "error",
            (LevelEncoding::Lowercase, Level::WARN) => "warn",
            (LevelEncoding::Lowercase, Level::INFO) => "info",
            (LevelEncoding::Lowercase, _) => "debug",
            (_, Level::ERROR) => "ERROR",
            (LevelEncoding::Zapdriver, Level::WARN) => "WARNING",
            (_, Level::WARN) => "WARN",
            (_, Level::INFO) => "INFO",
            _ => "DEBUG",
        }
    }

    fn time(&self, now: std::time::SystemTime) -> Value {
        let since = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        match self.time {
            TimeEncoding::Rfc3339Nano => {
                // humantime writes nine digits; Go's RFC3339Nano trims trailing zeros.
                let t = humantime::format_rfc3339_nanos(now).to_string();
                let (head, frac) = t.trim_end_matches('Z').split_once('.').unwrap_or((&t, ""));
                let frac = frac.trim_end_matches('0');
                if frac.is_empty() {
                    format!("{}Z", head.trim_end_matches('Z')).into()
                } else {
                    format!("{head}.{frac}Z").into()
                }
            }
            TimeEncoding::Rfc3339 => humantime::format_rfc3339_seconds(now).to_string().into(),
            // Go's `Z0700` prints `Z` for UTC, the zone of our timestamps.
            TimeEncoding::Iso8601 => humantime::format_rfc3339_millis(now).to_string().into(),
            TimeEncoding::Millis => Value::from(since.as_secs_f64() * 1e3),
            TimeEncoding::Nanos => Value::from(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)),
            TimeEncoding::Epoch => Value::from(since.as_secs_f64()),
        }
    }
}

impl ZapFormat {
    /// Applies `zap-logger-config`'s `encoderConfig` (`SERVING_LOGGING_CONFIG`,
    /// `config-logging`).
    #[must_use]
    pub fn with_zap_config(mut self, json: Option<&str>) -> Self {
        self.encoder = EncoderConfig::from_zap_config(json);
        self
    }
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
        let enc = &self.encoder;
        let mut obj = Map::new();
        obj.insert(enc.level_key.clone(), enc.level(meta.level()).into());
        obj.insert(enc.time_key.clone(), enc.time(std::time::SystemTime::now()));
        obj.insert(enc.name_key.clone(), self.logger.clone().into());
        let caller = match (meta.file(), meta.line()) {
            (Some(f), Some(l)) => format!("{f}:{l}"),
            _ => meta.target().to_owned(),
        };
        obj.insert(enc.caller_key.clone(), caller.into());
        obj.insert(enc.message_key.clone(), message);
        if let Some(k) = &self.key {
            obj.insert("knative.dev/key".into(), k.clone().into());
        }
        if let Some(c) = &self.controller {
            obj.insert("knative.dev/controller".into(), c.clone().into());
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
// Built once at start and moved into the subscriber: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
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
                ..ZapFormat::default()
            })
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(status = 504u64, "Request timeout: 300s");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        // zapdriver's level names (Knative's logger when config-logging sets no encoder).
        assert_eq!(v["severity"], "WARNING");
        assert_eq!(v["logger"], "queueproxy");
        assert_eq!(v["message"], "Request timeout: 300s");
        assert_eq!(v["knative.dev/key"], "default/hello-00001");
        assert_eq!(v["knative.dev/pod"], "hello-00001-deployment-abc");
        assert_eq!(v["status"], 504);
        assert!(v["caller"].as_str().unwrap().contains("log.rs:"));
        let ts = v["timestamp"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(ts).is_ok(), "ISO-8601: {ts}");
        // RFC 3339 with nanoseconds (trailing zeros trimmed): more than milliseconds, except
        // at the rare instant whose last six digits are zero.
        let frac = ts.trim_end_matches('Z').split_once('.').map_or("", |f| f.1);
        assert!(frac.len() <= 9 && !frac.ends_with('0'), "{ts}");
    }

    #[test]
    fn encoder_config_as_zap_reads_it() {
        let d = EncoderConfig::from_zap_config(None);
        assert_eq!(d, EncoderConfig::default());
        assert_eq!(d.level(&Level::WARN), "WARNING");
        // config-logging's `_example`: `"levelEncoder": ""` is zap's lowercase,
        // `"timeEncoder": "iso8601"` milliseconds with a numeric zone.
        let ex = r#"{"level":"info","encoding":"json","encoderConfig":{"timeKey":"timestamp","levelKey":"severity","nameKey":"logger","callerKey":"caller","messageKey":"message","stacktraceKey":"stacktrace","lineEnding":"","levelEncoder":"","timeEncoder":"iso8601","durationEncoder":"","callerEncoder":""}}"#;
        let c = EncoderConfig::from_zap_config(Some(ex));
        assert_eq!(c.level(&Level::WARN), "warn");
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(1_700_000_000_123_456_789);
        assert_eq!(c.time(t), Value::from("2023-11-14T22:13:20.123Z"));
        assert_eq!(d.time(t), Value::from("2023-11-14T22:13:20.123456789Z"));
        let t0 = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_500);
        assert_eq!(d.time(t0), Value::from("2023-11-14T22:13:20.5Z"));
        let caps = EncoderConfig::from_zap_config(Some(
            r#"{"encoderConfig":{"levelEncoder":"capital","timeEncoder":"nanos","messageKey":"msg"}}"#,
        ));
        assert_eq!(caps.level(&Level::WARN), "WARN");
        assert_eq!(caps.message_key, "msg");
        assert_eq!(caps.time(t), Value::from(1_700_000_000_123_456_789u64));
        assert_eq!(
            EncoderConfig::from_zap_config(Some("not json")),
            EncoderConfig::default()
        );
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
