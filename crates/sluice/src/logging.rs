//! Logs on stderr, text or JSON, with every registered secret redacted from every line.
//!
//! Text logs are coloured only on a terminal and never when `NO_COLOR` is set; JSON
//! lines logged inside a run carry its `run_id` at the top level.

use std::io::{self, IsTerminal, Write};
use std::sync::OnceLock;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The format chosen at start, for messages printed outside the subscriber (config errors).
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The log format in force (text until [`init`] ran).
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or(LogFormat::Text)
}

/// Whether text on stderr may carry ANSI colours (https://no-color.org).
pub fn colour() -> bool {
    io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber; returns true when progress bars should be shown.
pub fn init(format: LogFormat, filter: &str) -> bool {
    let _ = FORMAT.set(format);
    let colour = colour();
    let _ = miette::set_hook(Box::new(move |_| {
        Box::new(miette::MietteHandlerOpts::new().color(colour).build())
            as Box<dyn miette::ReportHandler>
    }));
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(filter).ok())
        .unwrap_or_else(|| EnvFilter::new("warn"));
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(format == LogFormat::Text && colour)
        .with_writer(RedactingStderr);
    let stderr = match format {
        LogFormat::Text => stderr.with_target(false).boxed(),
        LogFormat::Json => stderr.json().flatten_event(true).boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(stderr.with_filter(filter))
        .with(crate::run_log::RunLogLayer.with_filter(crate::run_log::filter()))
        .try_init();
    format == LogFormat::Text && io::stderr().is_terminal()
}

/// Prints an error for the user on stderr: `error: …`, or under `--log-format json`
/// one JSON line (`level: ERROR`), so CI can parse every failure the same way.
/// Config errors, which know their file and line, go through
/// [`crate::project::print_config_error`] instead.
macro_rules! print_error {
    ($($arg:tt)*) => {
        $crate::logging::emit_error(&format!($($arg)*))
    };
}
pub(crate) use print_error;

/// What [`print_error!`] expands to.
pub fn emit_error(message: &str) {
    let message = sluice_core::secret::redact(message);
    if format() == LogFormat::Json {
        let line = serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339(),
            "level": "ERROR",
            "message": message,
        });
        eprintln!("{line}");
    } else {
        eprintln!("error: {message}");
    }
}

/// A writer that buffers one log line and writes it to stderr with secrets replaced.
pub struct RedactingStderr;

pub struct RedactingLine(Vec<u8>);

impl Write for RedactingLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactingLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let text = match format() {
            LogFormat::Json => lift_run_id(&text).unwrap_or_else(|| text.into_owned()),
            LogFormat::Text => text.into_owned(),
        };
        let _ = io::stderr().write_all(sluice_core::secret::redact(&text).as_bytes());
    }
}

/// A JSON log line with its run's id (from the enclosing `run` span) at the top
/// level, where log tools look; `None` when the line has none.
fn lift_run_id(line: &str) -> Option<String> {
    let mut value: serde_json::Value = serde_json::from_str(line.trim_end()).ok()?;
    let run_id = value.pointer("/span/run_id").cloned().or_else(|| {
        value["spans"]
            .as_array()?
            .iter()
            .find_map(|s| s.get("run_id").cloned())
    })?;
    value.as_object_mut()?.insert("run_id".into(), run_id);
    Some(format!("{value}\n"))
}

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingLine;
    fn make_writer(&'a self) -> Self::Writer {
        RedactingLine(Vec::with_capacity(256))
    }
}
