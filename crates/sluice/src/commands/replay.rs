//! `sluice replay --run ID`: redo a past run from what it landed, without calling any source.
//!
//! By default both halves are replayed: the run's landed raw pages are decoded again
//! by each source's own decoder (sluice-core's `ReplaySource`) and loaded to D1, then
//! every model is re-run for the partitions that replay touched and loaded to the
//! destination. `--transforms-only` skips the decoding: the models are re-run from
//! the lake's D1 data for the partitions the past run wrote (after a model or
//! `pii:` change, or when a load failed).

use std::path::Path;
use std::sync::Arc;

use sluice_core::executor::RunObserver;
use sluice_core::run::{new_run_id, RunRecord, RunStatus};
use sluice_core::source::Source;
use sluice_transform::{run_models, ModelProject, ModelRunOptions, TransformError};
use tokio_util::sync::CancellationToken;

use super::run::{execute_with, exit_code, print_summary, RunArgs};
use crate::exit;
use crate::project::Project;

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// The run to replay (see `sluice runs`).
    #[arg(long = "run")]
    pub run_id: String,
    /// Streams to replay (default: every stream that run ran).
    #[arg(short, long, value_delimiter = ',')]
    pub select: Vec<String>,
    /// Re-run only the models, from the D1 partitions that run wrote to the lake.
    #[arg(long)]
    pub transforms_only: bool,
    /// Print the run record as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(pipeline: &Path, args: ReplayArgs, interactive: bool) -> u8 {
    let project = match Project::load(pipeline) {
        Ok(p) => p,
        Err(e) => return e.report(),
    };
    let models = match ModelProject::load(&project.config) {
        Ok(m) => m
            .with_streams(project.sources.iter().flat_map(|s| s.streams()))
            .with_aliases(project.aliases.clone()),
        Err(e) => {
            crate::project::print_config_error(&e);
            return exit::CONFIG;
        }
    };
    let past = match project.state.run(&args.run_id).await {
        Ok(Some(run)) => run,
        Ok(None) => {
            crate::logging::print_error!(
                "no run {} in {} (see `sluice runs`)",
                args.run_id,
                project.lake.location()
            );
            return exit::CONFIG;
        }
        Err(e) => {
            crate::logging::print_error!("{e}");
            return exit::INTERNAL;
        }
    };
    let details = serde_json::json!({
        "of_run": past.run_id,
        "select": args.select,
        "transforms_only": args.transforms_only,
    });
    let actor = sluice_core::audit::Actor::local();
    if let Err(code) = super::audit::record(
        &project.lake,
        &project.config.name,
        "replay",
        &actor,
        details,
    )
    .await
    {
        return code;
    }

    let (mut record, copied) = if args.transforms_only {
        // The past run's D1 tasks say which partitions the models recompute; they are
        // removed from the new record afterwards (this replay did not extract them).
        let d1_tasks: Vec<_> = past
            .tasks
            .iter()
            .filter(|t| t.table.starts_with("d1."))
            .cloned()
            .collect();
        let n = d1_tasks.len();
        let record = RunRecord {
            run_id: new_run_id(),
            pipeline: project.config.name.clone(),
            started_at: chrono::Utc::now(),
            finished_at: None,
            status: RunStatus::Running,
            window: past.window.clone(),
            select: args.select.clone(),
            tasks: d1_tasks,
            notices: Vec::new(),
            api_usage: Default::default(),
            error: None,
        };
        (record, n)
    } else {
        let sources: Vec<Arc<dyn Source>> = project
            .sources
            .iter()
            .map(|s| {
                Arc::new(sluice_core::replay::ReplaySource::new(
                    s.clone(),
                    project.lake.clone(),
                    &past.run_id,
                )) as Arc<dyn Source>
            })
            .collect();
        let select = if args.select.is_empty() {
            past.tasks
                .iter()
                .filter(|t| t.table.starts_with("d1."))
                .map(|t| t.task.clone())
                .collect()
        } else {
            args.select.clone()
        };
        let run_args = RunArgs {
            select,
            today: Some(past.window.today),
            json: args.json,
            ..RunArgs::default()
        };
        let observer: Arc<dyn RunObserver> = if interactive && !args.json {
            Arc::new(crate::progress::Bars::new())
        } else {
            Arc::new(crate::progress::LogLines)
        };
        // Extraction from the landed pages, then the models, exactly as `sluice run` does.
        return match execute_with(&project, &sources, &run_args, observer).await {
            Ok(record) => {
                report(&record, &past.run_id, args.json);
                exit_code(&record)
            }
            Err(code) => code,
        };
    };

    let cancel = CancellationToken::new();
    let result = run_models(
        &models,
        &project.lake,
        project.destination.as_ref(),
        &mut record,
        &ModelRunOptions::default(),
        &cancel,
    )
    .await;
    record.tasks.drain(..copied);
    record.settle(cancel.is_cancelled());
    if let Err(e) = result {
        match e {
            TransformError::Config(e) => {
                crate::project::print_config_error(&e);
                return exit::CONFIG;
            }
            e => record.error = Some(sluice_core::secret::redact(&e.to_string())),
        }
    }
    if let Err(e) = project.state.save_run(&record).await {
        eprintln!("warning: could not save the run record: {e}");
    }
    report(&record, &past.run_id, args.json);
    exit_code(&record)
}

fn report(record: &RunRecord, replayed: &str, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(record).unwrap_or_default()
        );
    } else {
        println!("replay of run {replayed}");
        print_summary(record);
    }
}
