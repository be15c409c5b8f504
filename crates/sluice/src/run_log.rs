//! A run's log: the `info` and louder events sluice logs while a run is in
//! progress (tasks starting and finishing, retries, resumed slices, table
//! evolutions, warnings), kept with the run record in the lake so the dashboard,
//! `/api/runs/{id}/log` and `sluice runs ID --show-log` show what happened after the
//! fact, whatever the process's own stderr filter was.
//!
//! One run at a time per process (the CLI runs one; `sluice serve` holds its run
//! slot), so the capture is process-wide: events from tasks the run spawned land
//! in it even though they are not inside the run's span.

use std::fmt::Write as _;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Lines kept per run; a run that logs more keeps its first lines and says how many
/// were left out (a retry storm must not grow the lake without bound).
const MAX_LINES: usize = 5_000;

struct Capture {
    lines: Vec<String>,
    dropped: usize,
}

static CAPTURE: Mutex<Option<Capture>> = Mutex::new(None);

/// What a run's log holds: sluice's own `info` and louder events, not the HTTP
/// server's or hyper's. A filter on the layer (not a test in it) keeps `debug!` in
/// hot loops disabled at their call sites.
pub fn filter() -> Targets {
    Targets::new().with_targets(
        [
            "sluice",
            "sluice_core",
            "sluice_connectors",
            "sluice_destinations",
            "sluice_transform",
        ]
        .map(|target| (target, LevelFilter::INFO)),
    )
}

/// Starts capturing this process's run events; [`finish`] returns them.
pub fn start() {
    *CAPTURE.lock().unwrap_or_else(|p| p.into_inner()) = Some(Capture {
        lines: Vec::new(),
        dropped: 0,
    });
}

/// Stops capturing and returns the log, secrets redacted.
pub fn finish() -> String {
    let Some(capture) = CAPTURE.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return String::new();
    };
    let mut text = capture.lines.join("\n");
    if capture.dropped > 0 {
        let _ = write!(
            text,
            "\n… {} more lines left out (a run log keeps its first {MAX_LINES})",
            capture.dropped
        );
    }
    text.push('\n');
    sluice_core::secret::redact(&text)
}

/// The tracing layer that feeds the capture.
pub struct RunLogLayer;

impl<S: Subscriber> Layer<S> for RunLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut guard = CAPTURE.lock().unwrap_or_else(|p| p.into_inner());
        let Some(capture) = guard.as_mut() else {
            return;
        };
        if capture.lines.len() >= MAX_LINES {
            capture.dropped += 1;
            return;
        }
        let mut line = Line::default();
        event.record(&mut line);
        capture.lines.push(format!(
            "{} {:<5} {}{}",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            meta.level(),
            line.message,
            line.fields
        ));
    }
}

/// An event as text: its message, then `key=value` pairs.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}
