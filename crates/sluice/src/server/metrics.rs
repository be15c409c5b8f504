//! `/metrics`: OpenMetrics text (which Prometheus scrapes) derived from the run
//! records in the lake at each scrape.
//!
//! Deriving rather than counting in memory means the numbers survive restarts,
//! include runs made by `sluice run` or an Airflow task against the same lake, and
//! always equal what `sluice runs` shows.
//!
//! | metric | labels |
//! |---|---|
//! | `sluice_runs_total` (finished runs), `sluice_runs_in_progress` | `status` / — |
//! | `sluice_rows_loaded_total`, `sluice_rows_extracted_total`, `sluice_bytes_received_total`, `sluice_pages_total`, `sluice_retries_total` | `task`, `table` |
//! | `sluice_rows_quarantined_total`, `sluice_check_failures_total` | `table` |
//! | `sluice_task_errors_total` | `class` |
//! | `sluice_task_duration_seconds` (histogram) | `task` |
//! | `sluice_table_last_success_timestamp_seconds`, `sluice_table_freshness_seconds` | `table` |
//! | `sluice_api_requests_total`, `sluice_api_retries_total`, `sluice_api_throttled_total` | `source` |
//! | `sluice_api_wait_seconds_total` | `source`, `reason` (`paced`: under sluice's own limits; `retry`: back-off and waits the API asked for) |

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sluice_core::run::{RunRecord, RunStatus, TaskStatus};

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Task durations from 0.1 s to ~30 min.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 15))
}

/// The metrics of `records` as OpenMetrics text; `now` dates the freshness gauges.
///
/// Counters must never go down, so only finished runs are counted: a running run's
/// record changes (the stream stage writes a settled-looking record before the
/// models run), so runs still `running` and the `current` run are left out until
/// they end; `sluice_runs_in_progress` counts them.
pub fn render(
    records: &[Arc<RunRecord>],
    current: Option<&str>,
    now: DateTime<Utc>,
) -> Result<String, String> {
    let mut registry = Registry::with_prefix("sluice");
    let runs = Family::<Labels, Counter>::default();
    let rows_loaded = Family::<Labels, Counter>::default();
    let rows_extracted = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    let pages = Family::<Labels, Counter>::default();
    let retries = Family::<Labels, Counter>::default();
    let quarantined = Family::<Labels, Counter>::default();
    let check_failures = Family::<Labels, Counter>::default();
    let errors = Family::<Labels, Counter>::default();
    let durations = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
        duration_histogram as fn() -> Histogram,
    );
    let last_success = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let freshness = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let api_requests = Family::<Labels, Counter>::default();
    let api_retries = Family::<Labels, Counter>::default();
    let api_throttled = Family::<Labels, Counter>::default();
    let api_wait = Family::<Labels, Counter<f64, AtomicU64>>::default();

    let in_progress = Gauge::<i64>::default();
    for record in records {
        if record.status == RunStatus::Running || current == Some(record.run_id.as_str()) {
            in_progress.inc();
            continue;
        }
        runs.get_or_create(&labels(&[("status", record.status.as_str())]))
            .inc();
        for (source, usage) in &record.api_usage {
            let by_source = labels(&[("source", source)]);
            api_requests
                .get_or_create(&by_source)
                .inc_by(usage.requests);
            api_retries.get_or_create(&by_source).inc_by(usage.retries);
            api_throttled
                .get_or_create(&by_source)
                .inc_by(usage.throttled);
            for (reason, ms) in [("paced", usage.paced_ms), ("retry", usage.retry_wait_ms)] {
                api_wait
                    .get_or_create(&labels(&[("source", source), ("reason", reason)]))
                    .inc_by(ms as f64 / 1000.0);
            }
        }
        for task in &record.tasks {
            let by_task = labels(&[("task", &task.task), ("table", &task.table)]);
            let by_table = labels(&[("table", &task.table)]);
            if task.task.ends_with(":checks") {
                // A checks task re-reads the model's rows; count what it quarantined
                // and whether an error check failed, not its rows as loads.
                if task.status == TaskStatus::Failed {
                    check_failures.get_or_create(&by_table).inc();
                }
            } else {
                rows_loaded.get_or_create(&by_task).inc_by(task.rows_loaded);
                rows_extracted
                    .get_or_create(&by_task)
                    .inc_by(task.rows_extracted);
                bytes.get_or_create(&by_task).inc_by(task.bytes);
                pages.get_or_create(&by_task).inc_by(task.pages);
                retries
                    .get_or_create(&by_task)
                    .inc_by(u64::from(task.retries));
            }
            quarantined
                .get_or_create(&by_table)
                .inc_by(task.rows_quarantined);
            if let Some(error) = &task.error {
                let class = serde_json::to_value(error.class)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| "unknown".into());
                errors.get_or_create(&labels(&[("class", &class)])).inc();
            }
            if !matches!(task.status, TaskStatus::Skipped | TaskStatus::Cancelled) {
                durations
                    .get_or_create(&labels(&[("task", &task.task)]))
                    .observe(task.duration_ms as f64 / 1000.0);
            }
        }
    }
    for table in super::http::freshness(records, now) {
        let Some(success) = table.last_success else {
            continue;
        };
        let by_table = labels(&[("table", &table.table)]);
        last_success
            .get_or_create(&by_table)
            .set(success.timestamp_millis() as f64 / 1000.0);
        freshness
            .get_or_create(&by_table)
            .set((now - success).num_milliseconds().max(0) as f64 / 1000.0);
    }

    registry.register("runs", "Finished runs by status", runs);
    registry.register(
        "runs_in_progress",
        "Runs started and not finished (their counts join the others when they end)",
        in_progress,
    );
    registry.register(
        "rows_loaded",
        "Rows loaded into the destination",
        rows_loaded,
    );
    registry.register(
        "rows_extracted",
        "Rows read from sources or computed by models",
        rows_extracted,
    );
    registry.register(
        "bytes_received",
        "Bytes received from sources, as landed",
        bytes,
    );
    registry.register("pages", "Pages received from sources", pages);
    registry.register("retries", "Attempts beyond the first", retries);
    registry.register(
        "rows_quarantined",
        "Records quarantined instead of loaded",
        quarantined,
    );
    registry.register(
        "check_failures",
        "Model check groups where an error-severity check failed",
        check_failures,
    );
    registry.register("task_errors", "Failed tasks by error class", errors);
    registry.register("task_duration_seconds", "Task durations", durations);
    registry.register(
        "table_last_success_timestamp_seconds",
        "When a table was last loaded (or confirmed up to date)",
        last_success,
    );
    registry.register(
        "table_freshness_seconds",
        "Seconds since a table was last loaded (or confirmed up to date)",
        freshness,
    );
    registry.register(
        "api_requests",
        "HTTP requests sent to a source's API, retries included",
        api_requests,
    );
    registry.register(
        "api_retries",
        "Requests to a source's API sent again",
        api_retries,
    );
    registry.register(
        "api_throttled",
        "Retries the API asked for with a time to come back (its rate limit was hit)",
        api_throttled,
    );
    registry.register(
        "api_wait_seconds",
        "Time requests to a source's API spent waiting: paced under sluice's limits, or before a retry",
        api_wait,
    );
    let mut text = String::new();
    encode(&mut text, &registry).map_err(|e| format!("cannot encode metrics: {e}"))?;
    Ok(text)
}
