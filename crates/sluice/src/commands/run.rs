//! `sluice run`: plan, execute, report.

use std::path::Path;
use std::sync::Arc;

use chrono::NaiveDate;
use sluice_core::executor::{Executor, RunObserver, RunOptions};
use sluice_core::plan::plan_streams;
use sluice_core::run::{new_run_id, RunRecord, RunStatus, TaskStatus};
use sluice_core::source::{RunWindow, Source};
use sluice_transform::{run_models, ModelProject, ModelRunOptions, TransformError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{print_table, seconds, thousands};
use crate::exit;
use crate::project::Project;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Streams to run: `source`, `source.stream`, a D1 table name, or globs (`*.insights`). Repeatable or comma-separated.
    #[arg(short, long, value_delimiter = ',')]
    pub select: Vec<String>,
    /// Backfill from this date (inclusive). A backfill does not move incremental cursors.
    #[arg(long)]
    pub since: Option<NaiveDate>,
    /// Backfill up to this date (inclusive).
    #[arg(long)]
    pub until: Option<NaiveDate>,
    /// Ignore cursors and rebuild the selected tables from scratch.
    #[arg(long)]
    pub full_refresh: bool,
    /// The run's "today" (default: the current UTC date); the end of incremental windows.
    #[arg(long, env = "SLUICE_TODAY")]
    pub today: Option<NaiveDate>,
    /// Print the run record as JSON on stdout instead of the summary table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(pipeline: &Path, args: RunArgs, interactive: bool) -> u8 {
    let project = match Project::load(pipeline) {
        Ok(p) => p,
        Err(e) => return e.report(),
    };
    let observer: Arc<dyn RunObserver> = if interactive && !args.json {
        Arc::new(crate::progress::Bars::new())
    } else {
        Arc::new(crate::progress::LogLines)
    };
    match execute(&project, &args, observer).await {
        Ok(record) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&record).unwrap_or_default()
                );
            } else {
                print_summary(&record);
            }
            exit_code(&record)
        }
        Err(code) => code,
    }
}

/// Runs the project once; `Err` carries the exit code of a failure before the run started.
pub async fn execute(
    project: &Project,
    args: &RunArgs,
    observer: Arc<dyn RunObserver>,
) -> Result<RunRecord, u8> {
    execute_with(project, &project.sources, args, observer).await
}

/// Runs `sources` (the project's, or replay wrappers of them) with the project's lake,
/// state and destination.
pub async fn execute_with(
    project: &Project,
    sources: &[Arc<dyn Source>],
    args: &RunArgs,
    observer: Arc<dyn RunObserver>,
) -> Result<RunRecord, u8> {
    let tasks = match plan_streams(sources, &args.select) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return Err(exit::CONFIG);
        }
    };
    if let (Some(since), Some(until)) = (args.since, args.until) {
        if since > until {
            eprintln!("error: --since {since} is after --until {until}");
            return Err(exit::CONFIG);
        }
    }
    // Models are planned before anything runs: a SQL error stops the run with file:line.
    let models = match ModelProject::load(&project.config) {
        Ok(m) => m.with_streams(sources.iter().flat_map(|s| s.streams())),
        Err(e) => {
            crate::project::print_config_error(&e);
            return Err(exit::CONFIG);
        }
    };
    let specs: Vec<_> = sources.iter().flat_map(|s| s.streams()).collect();
    if let Err(e) = sluice_transform::preflight::check_models(&models, &project.lake, &specs).await
    {
        return Err(crate::project::report_transform_error(&e));
    }
    let lineage = match crate::lineage::RunLineage::for_project(project, &models) {
        Ok(l) => l,
        Err(e) => {
            crate::project::print_config_error(&e);
            return Err(exit::CONFIG);
        }
    };
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    let executor = Executor {
        pipeline: project.config.name.clone(),
        lake: project.lake.clone(),
        state: project.state.clone(),
        destination: project.destination.clone(),
        execution: project.config.execution.clone(),
        schema_policy: project.schema_policy.clone(),
        observer,
    };
    let run_id = new_run_id();
    // Every log line of the run (extraction and models) names it.
    let span = tracing::info_span!("run", run_id = %run_id);
    if let Some(lineage) = &lineage {
        lineage.started(&run_id).await;
    }
    let options = RunOptions {
        run_id,
        select: args.select.clone(),
        window: RunWindow {
            since: args.since,
            until: args.until,
            today: args
                .today
                .unwrap_or_else(|| chrono::Utc::now().date_naive()),
            full_refresh: args.full_refresh,
        },
        cancel: cancel.clone(),
    };
    // Every run says when a configured API version nears its sunset.
    for source in sources {
        for notice in source.notices() {
            tracing::warn!(source = %source.name(), "{notice}");
        }
    }
    let mut record = executor.run(tasks, options).instrument(span.clone()).await;
    // Recorded after the run: the API's own deprecation headers arrive with its answers.
    record.notices = sources
        .iter()
        .flat_map(|s| {
            let name = s.name().to_string();
            s.notices().into_iter().map(move |n| format!("{name}: {n}"))
        })
        .collect();
    let model_options = ModelRunOptions {
        full_refresh: args.full_refresh,
    };
    if let Err(e) = run_models(
        &models,
        &project.lake,
        project.destination.as_ref(),
        &mut record,
        &model_options,
        &cancel,
    )
    .instrument(span)
    .await
    {
        if let TransformError::Config(e) = &e {
            crate::project::print_config_error(e);
            return Err(exit::CONFIG);
        }
        record.error = Some(sluice_core::secret::redact(&e.to_string()));
    }
    // run_models re-settled the status; store the final record.
    if let Err(e) = project.state.save_run(&record).await {
        record.error = Some(format!("cannot write the run record: {e}"));
    }
    if let Some(lineage) = &lineage {
        lineage.finished(&record).await;
    }
    Ok(record)
}

/// SIGINT or SIGTERM cancels the run: in-flight loads roll back, state is not advanced.
fn spawn_signal_handler(cancel: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("stopping: finishing nothing new, rolling back in-flight loads…");
        cancel.cancel();
    });
}

pub fn exit_code(record: &RunRecord) -> u8 {
    match record.status {
        RunStatus::Succeeded => exit::OK,
        RunStatus::Partial => exit::PARTIAL,
        RunStatus::Cancelled => exit::CANCELLED,
        RunStatus::Failed | RunStatus::Running => exit::RUN_FAILED,
    }
}

pub fn print_summary(record: &RunRecord) {
    println!(
        "run {}  {}  {}",
        record.run_id,
        record.status.as_str(),
        record
            .duration_ms()
            .map(|ms| seconds(ms.max(0) as u64))
            .unwrap_or_default()
    );
    let mut rows = vec![vec![
        "task".to_string(),
        "table".into(),
        "status".into(),
        "rows".into(),
        "quarantined".into(),
        "pages".into(),
        "retries".into(),
        "time".into(),
    ]];
    for t in &record.tasks {
        rows.push(vec![
            t.task.clone(),
            t.table.clone(),
            status_text(t.status).into(),
            thousands(t.rows_loaded),
            thousands(t.rows_quarantined),
            thousands(t.pages),
            t.retries.to_string(),
            seconds(t.duration_ms),
        ]);
    }
    print_table(&rows);
    for t in &record.tasks {
        if let Some(error) = &t.error {
            let fix = error
                .config_key
                .as_ref()
                .map(|k| format!(" (check `{k}`)"))
                .unwrap_or_default();
            println!("  ✗ {}: {}{fix}", t.task, error.message);
        }
        for change in &t.schema_changes {
            println!("  ~ {}: schema: {change}", t.task);
        }
        for warning in &t.warnings {
            println!("  ! {}: {warning}", t.task);
        }
    }
    for notice in &record.notices {
        println!("  ! {notice}");
    }
    if let Some(e) = &record.error {
        println!("  ✗ {e}");
    }
}

pub fn status_text(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Succeeded => "ok",
        TaskStatus::UpToDate => "up to date",
        TaskStatus::Failed => "FAILED",
        TaskStatus::Cancelled => "cancelled",
        TaskStatus::Skipped => "skipped",
    }
}
