//! Logging: the `[log]` configuration and the subscriber the binary installs.
//!
//! Two formats. `text` is tracing's human format (span fields shown as `call{tenant=acme call_id=3}:`). `json` is
//! one JSON object a line, **flat**: the fields of every span the event is in (outermost first, inner ones win) and
//! then the event's own fields are top-level keys, beside `timestamp`, `level`, `target` and `message`. Every line
//! logged inside a call's span (`transport::sip` opens one per call, and the call's media task runs in it) therefore
//! carries `tenant` and `call_id` as plain keys, which is what log pipelines index on (`jq 'select(.tenant=="acme")'`).
//! `auto` (the default) is JSON when stderr is not a terminal, text when it is.
//!
//! The level is an `EnvFilter` directive (`info`, `info,fairvox=debug`); `RUST_LOG`, when set, overrides it.

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// `[log] format`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, text when it is.
    #[default]
    Auto,
    Json,
    Text,
}

/// The `[log]` section of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// An `EnvFilter` directive; `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig { level: "info".to_owned(), format: LogFormat::Auto }
    }
}

/// A `[log] level` that is not a valid filter directive.
#[derive(Debug, thiserror::Error)]
#[error("{level:?} is not a log filter (e.g. \"info\" or \"info,fairvox=debug\"): {reason}")]
pub struct BadLevel {
    pub level: String,
    pub reason: String,
}

impl LogConfig {
    /// Checks that `level` parses as a filter (config validation calls it).
    pub fn check(&self) -> Result<(), BadLevel> {
        EnvFilter::try_new(&self.level)
            .map(drop)
            .map_err(|e| BadLevel { level: self.level.clone(), reason: e.to_string() })
    }

    /// Whether this configuration logs JSON, given whether stderr is a terminal.
    pub fn json(&self, stderr_is_terminal: bool) -> bool {
        match self.format {
            LogFormat::Auto => !stderr_is_terminal,
            LogFormat::Json => true,
            LogFormat::Text => false,
        }
    }

    /// The filter: `RUST_LOG` if it is set and valid, else `level` (else `info`).
    fn filter(&self) -> EnvFilter {
        EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(&self.level))
            .unwrap_or_else(|_| EnvFilter::new("info"))
    }
}

/// Installs the global subscriber writing to stderr. Call once, at start; a second call does nothing.
pub fn init(config: &LogConfig) {
    let json = config.json(std::io::stderr().is_terminal());
    let builder = tracing_subscriber::fmt().with_env_filter(config.filter()).with_writer(std::io::stderr);
    let _ =
        if json { builder.fmt_fields(JsonFields::new()).event_format(FlatJson).try_init() } else { builder.try_init() };
}

/// A subscriber writing flat JSON lines to `writer`, with `config`'s level (not `RUST_LOG`): for tests.
pub fn json_subscriber<W>(config: &LogConfig, writer: W) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(writer)
        .fmt_fields(JsonFields::new())
        .event_format(FlatJson)
        .finish()
}

/// The flat JSON event format (see the module documentation). Span fields are read from what [`JsonFields`]
/// stored for each span, so the subscriber must use `fmt_fields(JsonFields::new())`.
#[derive(Copy, Clone, Debug, Default)]
pub struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut line = Map::new();
        let mut timestamp = String::new();
        if SystemTime.format_time(&mut Writer::new(&mut timestamp)).is_ok() {
            line.insert("timestamp".into(), Value::String(timestamp));
        }
        line.insert("level".into(), Value::String(event.metadata().level().to_string()));
        line.insert("target".into(), Value::String(event.metadata().target().to_owned()));
        if let Some(scope) = ctx.event_scope() {
            let mut innermost = None;
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                    && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&fields.fields)
                {
                    line.extend(map);
                }
                innermost = Some(span.name());
            }
            if let Some(name) = innermost {
                line.insert("span".into(), Value::String(name.to_owned()));
            }
        }
        event.record(&mut FieldMap(&mut line));
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Records an event's fields into a JSON map.
struct FieldMap<'a>(&'a mut Map<String, Value>);

impl FieldMap<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        self.0.insert(name.strip_prefix("r#").unwrap_or(name).to_owned(), value);
    }
}

impl Visit for FieldMap<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn lines(buffer: &Buffer) -> Vec<Map<String, Value>> {
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Map<String, Value>>(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    #[test]
    fn json_lines_carry_the_fields_of_their_spans_at_top_level() {
        let buffer = Buffer::default();
        let subscriber = json_subscriber(&LogConfig { level: "debug".into(), ..LogConfig::default() }, buffer.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(tenant = "x", "outside any call");
            let call = tracing::info_span!("call", tenant = "acme", call_id = 7u64);
            let _in_call = call.enter();
            tracing::info!(packets = 3u64, "inside the call");
            let provider = tracing::info_span!("provider", call_sid = "CA1");
            provider.in_scope(|| tracing::warn!(error = "refused", "nested span"));
            // An event field of the same name wins over the span's.
            tracing::debug!(call_id = "override", "event field wins");
            tracing::trace!("filtered out");
        });
        let lines = lines(&buffer);
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[0]["message"], "outside any call");
        assert!(!lines[0].contains_key("call_id"));
        assert!(!lines[0].contains_key("span"));
        assert_eq!(lines[1]["tenant"], "acme");
        assert_eq!(lines[1]["call_id"], 7);
        assert_eq!(lines[1]["packets"], 3);
        assert_eq!(lines[1]["level"], "INFO");
        assert_eq!(lines[1]["span"], "call");
        assert!(lines[1]["timestamp"].as_str().is_some_and(|t| t.len() >= 20), "{:?}", lines[1]);
        assert_eq!(lines[2]["tenant"], "acme");
        assert_eq!(lines[2]["call_id"], 7);
        assert_eq!(lines[2]["call_sid"], "CA1");
        assert_eq!(lines[2]["span"], "provider");
        assert_eq!(lines[2]["level"], "WARN");
        assert_eq!(lines[3]["call_id"], "override");
    }

    #[test]
    fn config_parses_and_checks_the_level() {
        #[derive(serde::Deserialize)]
        struct T {
            log: LogConfig,
        }
        let t: T = toml::from_str("[log]\nlevel = \"info,fairvox=debug\"\nformat = \"json\"\n").unwrap();
        assert_eq!(t.log.format, LogFormat::Json);
        assert!(t.log.check().is_ok());
        assert!(t.log.json(true));
        let t: T = toml::from_str("[log]\n").unwrap();
        assert_eq!(t.log, LogConfig::default());
        assert!(t.log.json(false) && !t.log.json(true), "auto: JSON unless stderr is a terminal");
        assert!(toml::from_str::<T>("[log]\nformat = \"xml\"\n").is_err());
        assert!(toml::from_str::<T>("[log]\ncolour = true\n").is_err());
        let bad = LogConfig { level: "info,fairvox=loud".into(), ..LogConfig::default() };
        assert!(bad.check().is_err());
        assert!(!LogConfig { format: LogFormat::Text, ..LogConfig::default() }.json(false));
    }
}
