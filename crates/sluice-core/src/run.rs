//! Run records: what each run did, for `sluice runs`, the dashboard and alerts.
//!
//! A record is written when a run starts and rewritten when it ends. Its text passes
//! through [`crate::secret::redact`] before it is stored, so a secret that slipped
//! into an error message never reaches run history.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::source::{ErrorClass, RunWindow};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    /// Some tasks failed, others were published.
    Partial,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Partial => "partial",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Succeeded,
    /// Nothing new to load (no new files, empty window).
    UpToDate,
    Failed,
    Cancelled,
    /// Not run because the run was cancelled or a dependency failed.
    Skipped,
}

/// A task's error, classified so alerts and users know what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    pub class: ErrorClass,
    pub message: String,
    /// The config key to fix, for configuration errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_key: Option<String>,
}

/// One extract → D1 → load task (later: a model or a check).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    /// `files.orders`, `facebook.insights`.
    pub task: String,
    /// The published table, `d1.files_orders`.
    pub table: String,
    pub status: TaskStatus,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// Attempts beyond the first, summed over slices and the load.
    pub retries: u32,
    pub slices: u64,
    /// Slices reused from an earlier run's checkpoint instead of being read again.
    #[serde(default)]
    pub slices_resumed: u64,
    pub pages: u64,
    /// Bytes received from the source (as landed, before compression).
    pub bytes: u64,
    pub rows_extracted: u64,
    pub rows_loaded: u64,
    pub rows_replaced: u64,
    pub rows_quarantined: u64,
    /// Partitions (`dt` values) written by this task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Source schema changes this task detected, and what was done about each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schema_changes: Vec<crate::drift::SchemaChange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
}

impl TaskRecord {
    pub fn new(task: impl Into<String>, table: impl Into<String>) -> Self {
        TaskRecord {
            task: task.into(),
            table: table.into(),
            status: TaskStatus::Skipped,
            started_at: Utc::now(),
            duration_ms: 0,
            retries: 0,
            slices: 0,
            slices_resumed: 0,
            pages: 0,
            bytes: 0,
            rows_extracted: 0,
            rows_loaded: 0,
            rows_replaced: 0,
            rows_quarantined: 0,
            partitions: Vec::new(),
            warnings: Vec::new(),
            schema_changes: Vec::new(),
            error: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub pipeline: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub status: RunStatus,
    pub window: RunWindow,
    /// `--select` patterns; empty means everything.
    #[serde(default)]
    pub select: Vec<String>,
    pub tasks: Vec<TaskRecord>,
    /// What the sources said that is not an error: an API version nearing its
    /// sunset, deprecation headers on the API's answers (`source: notice`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
    /// What each API source was asked during the run (`facebook` → requests, waits).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub api_usage: BTreeMap<String, ApiUsage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How hard a run used one API source, for `/metrics` and capacity planning
/// (how close a pipeline runs to its rate limits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiUsage {
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// Requests sent again after a 5xx, a throttle or a network error.
    pub retries: u64,
    /// Retries the API asked for by saying when to come back (429 + Retry-After,
    /// Facebook's regain time, Google's retryDelay): the source's rate limit was hit.
    pub throttled: u64,
    /// Time requests waited before being sent to stay under the rate limits sluice
    /// keeps (pacing, request budgets, in-flight caps), milliseconds.
    pub paced_ms: u64,
    /// Time spent waiting before retries (back-off and waits the API asked for), ms.
    pub retry_wait_ms: u64,
}

impl ApiUsage {
    /// What happened between `earlier` and `self` (counters of one client).
    pub fn since(&self, earlier: &ApiUsage) -> ApiUsage {
        ApiUsage {
            requests: self.requests.saturating_sub(earlier.requests),
            retries: self.retries.saturating_sub(earlier.retries),
            throttled: self.throttled.saturating_sub(earlier.throttled),
            paced_ms: self.paced_ms.saturating_sub(earlier.paced_ms),
            retry_wait_ms: self.retry_wait_ms.saturating_sub(earlier.retry_wait_ms),
        }
    }
}

impl RunRecord {
    pub fn duration_ms(&self) -> Option<i64> {
        self.finished_at
            .map(|end| (end - self.started_at).num_milliseconds())
    }

    /// The overall status from the tasks' statuses.
    pub fn settle(&mut self, cancelled: bool) {
        let failed = self
            .tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Failed)
            .count();
        let ok = self
            .tasks
            .iter()
            .filter(|t| matches!(t.status, TaskStatus::Succeeded | TaskStatus::UpToDate))
            .count();
        self.status = if cancelled {
            RunStatus::Cancelled
        } else if failed == 0 {
            RunStatus::Succeeded
        } else if ok > 0 {
            RunStatus::Partial
        } else {
            RunStatus::Failed
        };
        self.finished_at = Some(Utc::now());
    }
}

/// What a caught panic says, for a run record: where it happened and its message,
/// redacted (a panic message may quote a value).
pub fn panic_message(place: &str, payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    crate::secret::redact(&format!(
        "internal error in {place} (a bug in sluice, please report it): {text}"
    ))
}

/// A new run id: sortable by time, unique across machines (`20240701T050000Z-3f9a1c`).
pub fn new_run_id() -> String {
    let suffix: u32 = rand::random::<u32>() & 0x00ff_ffff;
    format!("{}-{suffix:06x}", Utc::now().format("%Y%m%dT%H%M%S%.3fZ")).replace('.', "")
}
