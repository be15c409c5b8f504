//! Progress display: bars on a terminal, log lines otherwise.

use std::collections::HashMap;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sluice_core::executor::RunObserver;
use sluice_core::run::TaskRecord;

/// Shows one bar per running task (slices done / planned).
pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    pub fn new() -> Self {
        Bars {
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

impl RunObserver for Bars {
    fn task_started(&self, task: &str, slices: usize) {
        let bar = self.multi.add(ProgressBar::new(slices as u64));
        bar.set_style(
            ProgressStyle::with_template("{prefix:<28} [{bar:30}] {pos}/{len} slices {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(task.to_string());
        self.bars
            .lock()
            .expect("bars lock")
            .insert(task.to_string(), bar);
    }

    fn slice_finished(&self, task: &str, _rows: u64) {
        if let Some(bar) = self.bars.lock().expect("bars lock").get(task) {
            bar.inc(1);
        }
    }

    fn task_loading(&self, task: &str) {
        if let Some(bar) = self.bars.lock().expect("bars lock").get(task) {
            bar.set_message("loading…");
        }
    }

    fn task_finished(&self, record: &TaskRecord) {
        if let Some(bar) = self.bars.lock().expect("bars lock").remove(&record.task) {
            bar.finish_and_clear();
        }
    }
}

/// Logs task starts and ends (non-interactive runs, CI, Airflow).
pub struct LogLines;

impl RunObserver for LogLines {
    fn task_started(&self, task: &str, slices: usize) {
        tracing::info!(task, slices, "task started");
    }
    fn task_loading(&self, task: &str) {
        tracing::info!(task, "extracted; loading");
    }
    fn task_finished(&self, record: &TaskRecord) {
        tracing::info!(
            task = %record.task,
            status = ?record.status,
            rows_loaded = record.rows_loaded,
            rows_quarantined = record.rows_quarantined,
            duration_ms = record.duration_ms,
            "task finished"
        );
    }
}
