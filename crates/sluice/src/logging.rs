//! Logs on stderr, text or JSON, with every registered secret redacted from every line.

use std::io::{self, IsTerminal, Write};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber; returns true when progress bars should be shown.
pub fn init(format: LogFormat, filter: &str) -> bool {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(filter).ok())
        .unwrap_or_else(|| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    format == LogFormat::Text && io::stderr().is_terminal()
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
        let _ = io::stderr().write_all(sluice_core::secret::redact(&text).as_bytes());
    }
}

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingLine;
    fn make_writer(&'a self) -> Self::Writer {
        RedactingLine(Vec::with_capacity(256))
    }
}
