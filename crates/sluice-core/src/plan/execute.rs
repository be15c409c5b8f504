//! Running the selected part of a [`RunPlan`]: the one way every front end runs a
//! run (the CLI, `sluice serve`, an Airflow or Kubernetes task).
//!
//! 1. The selected streams run on the [`Executor`]: extraction, D1 publish and state,
//!    at most `execution.concurrency` streams at once and each source within its own
//!    slice budget. The executor writes the run record when the run starts.
//! 2. The selected models then run through a [`ModelRunner`] (implemented by
//!    sluice-transform, which owns the SQL engine), in dependency order; a model
//!    whose upstream failed is skipped, and an unselected upstream is read as the
//!    lake holds it.
//! 3. The final record is stored.
//!
//! One [`CancellationToken`] (in [`RunOptions`]) stops both stages: nothing new
//! starts, in-flight loads roll back, and state is not advanced.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::{PlanTask, RunPlan, Selection};
use crate::config::ConfigError;
use crate::executor::{Executor, RunOptions};
use crate::run::{RunRecord, RunStatus};
use crate::source::Source;

/// Runs SQL models for a run; sluice-transform implements it.
#[async_trait]
pub trait ModelRunner: Send + Sync {
    /// Runs `models` (ids such as `d2a.ad_performance_daily`, in dependency order),
    /// appending one task record per model (and per check group) to `record` and
    /// re-settling its status.
    async fn run_models(
        &self,
        models: &[String],
        record: &mut RunRecord,
        cancel: &CancellationToken,
    ) -> Result<(), ModelRunError>;
}

/// Why the model stage could not run.
#[derive(Debug, thiserror::Error)]
pub enum ModelRunError {
    /// Found before any model ran: a SQL or model YAML error, with file:line.
    #[error(transparent)]
    Config(Box<ConfigError>),
    /// The stage stopped (e.g. the lake could not be read); the message is redacted.
    #[error("{0}")]
    Failed(String),
}

/// A run that could not complete its record.
#[derive(Debug, thiserror::Error)]
pub enum PlanRunError {
    /// A model's SQL or YAML is wrong (found after the streams ran, before any model did).
    #[error(transparent)]
    Config(Box<ConfigError>),
}

/// Runs the `selection` of `plan`: streams on `executor`, then models on `models`.
/// Returns the finished run record, which is also stored in the lake.
pub async fn run(
    plan: &RunPlan,
    selection: &Selection,
    executor: &Executor,
    options: RunOptions,
    models: &dyn ModelRunner,
) -> Result<RunRecord, PlanRunError> {
    let mut streams = Vec::new();
    let mut model_ids = Vec::new();
    for task in plan.tasks(selection) {
        match task {
            PlanTask::Stream(stream) => streams.push(*stream),
            PlanTask::Model(id) => model_ids.push(id),
        }
    }
    // A shard runs only its share of the extraction; the finalize only the models.
    match options.part {
        crate::shard::RunPart::Shard(_) => model_ids.clear(),
        crate::shard::RunPart::Finalize => streams.clear(),
        crate::shard::RunPart::Whole => {}
    }
    let cancel = options.cancel.clone();
    // Notices (an API version nearing its sunset, deprecation headers the API sent
    // while the run read it) are known once the streams ran.
    let mut sources: Vec<Arc<dyn Source>> = Vec::new();
    for task in &streams {
        if !sources.iter().any(|s| s.name() == task.source.name()) {
            sources.push(task.source.clone());
        }
    }
    let usage_before: Vec<_> = sources.iter().map(|s| s.api_usage()).collect();
    let mut record = executor.run(streams, options).await;
    for (source, before) in sources.iter().zip(&usage_before) {
        if let (Some(after), Some(before)) = (source.api_usage(), before) {
            record
                .api_usage
                .insert(source.name().to_string(), after.since(before));
        }
    }
    if !model_ids.is_empty() {
        // A panic in the model stage (a bug, or an engine's) must end as a failed
        // record, never leave the stored one claiming the run is still going.
        let stage = AssertUnwindSafe(models.run_models(&model_ids, &mut record, &cancel))
            .catch_unwind()
            .await;
        match stage {
            Ok(Ok(())) => {}
            Ok(Err(ModelRunError::Config(e))) => return Err(PlanRunError::Config(e)),
            Ok(Err(ModelRunError::Failed(message))) => {
                // The streams' loads stand, but no model ran: never a green run.
                record.error = Some(crate::secret::redact(&message));
                if record.status == RunStatus::Succeeded {
                    record.status = RunStatus::Partial;
                }
            }
            Err(panic) => {
                record.error = Some(crate::run::panic_message("the model stage", &*panic));
                record.status = RunStatus::Failed;
                record.finished_at = Some(chrono::Utc::now());
            }
        }
    }
    record.notices = sources
        .iter()
        .flat_map(|s| {
            let name = s.name().to_string();
            s.notices().into_iter().map(move |n| format!("{name}: {n}"))
        })
        .collect();
    if !model_ids.is_empty() || !record.notices.is_empty() || !record.api_usage.is_empty() {
        // The model stage re-settled the status, notices or API usage were added:
        // store the final record.
        if let Err(e) = executor.state.save_run(&record).await {
            record.error = Some(format!("cannot write the run record: {e}"));
        }
    }
    Ok(record)
}
