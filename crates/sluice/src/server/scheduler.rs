//! The scheduler loop: runs the pipeline at the times of its `schedule:`.
//!
//! Times are computed by croner in the schedule's time zone (chrono-tz), so
//! `0 6 * * *` in `Europe/Berlin` stays at 06:00 local across DST changes.
//!
//! The loop is sequential: it waits for a time, runs, and only then looks at the
//! clock again, so two runs of the pipeline never overlap (manual runs share the
//! same run slot, see [`super::Daemon::run_slot`]). Times that passed while a run
//! overran, or while sluice was down, are *missed*; `catch_up:` says what to do
//! with them. The last time handled is kept in the lake
//! (`_state/<pipeline>/scheduler.json`), so a restart knows what it missed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sluice_core::config::{CatchUp, Schedule};
use sluice_core::run::RunStatus;

use super::Daemon;

/// What the scheduler keeps between restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchedulerState {
    /// The last scheduled time that was run (or deliberately skipped), in UTC.
    pub last_handled: DateTime<Utc>,
    /// The expression that time belongs to, for people reading the file.
    pub cron: String,
}

/// Where the scheduler state of `pipeline` lives in the lake.
pub fn state_path(pipeline: &str) -> String {
    format!(
        "{}/scheduler.json",
        sluice_core::lake::layout::state(pipeline)
    )
}

/// Marks the scheduler dead when its loop ends, however it ends (a panic included),
/// so `/healthz` fails and the orchestrator restarts the process.
struct AliveGuard(Arc<Daemon>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.scheduler_alive.store(false, Ordering::SeqCst);
    }
}

/// Runs `schedule` until the daemon stops taking work.
pub async fn run_loop(daemon: Arc<Daemon>, schedule: Schedule) {
    daemon.scheduler_alive.store(true, Ordering::SeqCst);
    let _alive = AliveGuard(daemon.clone());
    let path = state_path(&daemon.project.config.name);
    let mut last = match load(&daemon, &path).await {
        Some(state) => state.last_handled,
        // First start: nothing was missed yet.
        None => Utc::now(),
    };
    save(&daemon, &path, &schedule, last).await;
    let tz = schedule.timezone;
    loop {
        if daemon.stopping.is_cancelled() {
            return;
        }
        let now = Utc::now();
        let next = match schedule
            .cron
            .find_next_occurrence(&last.with_timezone(&tz), false)
        {
            Ok(next) => next.with_timezone(&Utc),
            Err(e) => {
                tracing::error!("schedule `{}` has no next time: {e}", schedule.expression);
                return;
            }
        };
        let due = if next > now {
            let wait = (next - now).to_std().unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = daemon.stopping.cancelled() => return,
            }
            next
        } else {
            // `next` was missed (sluice was down, or the previous run overran).
            let latest = schedule
                .cron
                .find_previous_occurrence(&now.with_timezone(&tz), true)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or(next);
            match schedule.catch_up {
                CatchUp::Skip => {
                    tracing::warn!(
                        "skipping missed scheduled times {next} … {latest} (catch_up: skip)"
                    );
                    last = latest;
                    save(&daemon, &path, &schedule, last).await;
                    continue;
                }
                CatchUp::Latest => {
                    tracing::warn!(
                        "catching up the latest missed time {latest} (catch_up: latest)"
                    );
                    latest
                }
                CatchUp::All => {
                    tracing::warn!("catching up missed time {next} (catch_up: all)");
                    next
                }
            }
        };
        // A run triggered over the API may hold the slot: wait for it, unless stopping.
        let slot = tokio::select! {
            slot = daemon.run_slot.clone().lock_owned() => slot,
            _ = daemon.stopping.cancelled() => return,
        };
        if daemon.stopping.is_cancelled() {
            return;
        }
        tracing::info!("scheduled run for {due}");
        let ticket = daemon.claim(sluice_core::run::new_run_id(), slot);
        let record = daemon.execute(Vec::new(), ticket).await;
        // A run cancelled by shutdown did not happen: catch-up may redo it after a
        // restart. One an operator cancelled was handled.
        if record.status != RunStatus::Cancelled || !daemon.stopping.is_cancelled() {
            last = due;
            save(&daemon, &path, &schedule, last).await;
        }
    }
}

async fn load(daemon: &Daemon, path: &str) -> Option<SchedulerState> {
    match daemon.project.lake.get(path).await {
        Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
            Ok(state) => Some(state),
            Err(e) => {
                tracing::warn!("ignoring unreadable {path}: {e}");
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("cannot read {path}: {e}");
            None
        }
    }
}

async fn save(daemon: &Daemon, path: &str, schedule: &Schedule, last: DateTime<Utc>) {
    let state = SchedulerState {
        last_handled: last,
        cron: schedule.expression.clone(),
    };
    let text = serde_json::to_vec_pretty(&state).unwrap_or_default();
    if let Err(e) = daemon.project.lake.put(path, Bytes::from(text)).await {
        tracing::warn!("cannot write {path}: {e}");
    }
}
