//! `sluice run`: build the run plan, select from it, have the library execute it, report.

use std::path::Path;
use std::sync::Arc;

use chrono::NaiveDate;
use sluice_core::executor::{Executor, RunObserver, RunOptions};
use sluice_core::plan::execute::PlanRunError;
use sluice_core::plan::RunPlan;
use sluice_core::run::{new_run_id, RunRecord, RunStatus, TaskStatus};
use sluice_core::shard::{RoundStatus, RunPart, Shard, ShardCompletion, ShardLedger, ShardRun};
use sluice_core::source::{RunWindow, Source};
use sluice_transform::{ModelProject, ModelRunOptions, ModelStage};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{print_table, seconds, thousands};
use crate::exit;
use crate::project::Project;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// What to run: `source`, `source.stream`, a D1 table, a model, globs (`*.insights`),
    /// `tag:<tag>`, with `+` for upstream/downstream (`+channel_spend_daily`, `facebook+`,
    /// `2+model`). Repeatable or comma-separated; default: everything.
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
    /// Run shard K of N (`0/3`): a deterministic share of the extraction slices, no
    /// models; each source's API request budget is divided by N.
    #[arg(long, value_name = "K/N", conflicts_with = "finalize")]
    pub shard: Option<Shard>,
    /// Run only the models and checks, once every shard of the round has published.
    #[arg(long)]
    pub finalize: bool,
    /// The sharded run's round: shards and finalize of one run share it (default: `--today`'s date).
    #[arg(long, env = "SLUICE_ROUND", value_name = "ID")]
    pub round: Option<String>,
    /// Take the shard's lease even if its owner looks alive (its process is known dead).
    #[arg(long, requires = "shard")]
    pub take_over: bool,
    /// Seconds without a heartbeat after which a shard's lease can be taken over.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub lease: u64,
}

pub async fn run(pipeline: &Path, args: RunArgs, interactive: bool) -> u8 {
    if let Some(shard) = args.shard {
        // Before the sources are built: their HTTP clients take their share then.
        sluice_connectors::http::divide_budgets(shard.count);
    }
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
                if let Some(shard) = args.shard {
                    println!(
                        "  shard {shard} of round {}: each source's request budget divided by {} (and the slice concurrency of sources that protect it: databases, files)",
                        round_of(&args),
                        shard.count
                    );
                }
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
/// state and destination: the selected part of the run plan, executed by the library.
/// SIGINT / SIGTERM cancel it.
pub async fn execute_with(
    project: &Project,
    sources: &[Arc<dyn Source>],
    args: &RunArgs,
    observer: Arc<dyn RunObserver>,
) -> Result<RunRecord, u8> {
    execute_as(project, sources, args, observer, new_run_id()).await
}

/// [`execute_with`] as run id `run_id` (a `quarantine retry` names its runs).
pub async fn execute_as(
    project: &Project,
    sources: &[Arc<dyn Source>],
    args: &RunArgs,
    observer: Arc<dyn RunObserver>,
    run_id: String,
) -> Result<RunRecord, u8> {
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone(), project, &run_id);
    execute_cancellable(project, sources, args, observer, cancel, run_id).await
}

/// [`execute_with`] as run id `run_id`, stopped by `cancel` rather than by signals
/// (`sluice serve` owns its signals and runs many runs).
pub async fn execute_cancellable(
    project: &Project,
    sources: &[Arc<dyn Source>],
    args: &RunArgs,
    observer: Arc<dyn RunObserver>,
    cancel: CancellationToken,
    run_id: String,
) -> Result<RunRecord, u8> {
    if let (Some(since), Some(until)) = (args.since, args.until) {
        if since > until {
            crate::logging::print_error!("--since {since} is after --until {until}");
            return Err(exit::CONFIG);
        }
    }
    // Models are planned before anything runs: a SQL error stops the run with file:line.
    let (plan, models) = build_plan(project, sources)?;
    let selection = match plan.select(&args.select) {
        Ok(s) => s,
        Err(e) => {
            crate::logging::print_error!("{e}");
            return Err(exit::CONFIG);
        }
    };
    let today = args
        .today
        .unwrap_or_else(|| chrono::Utc::now().date_naive());
    // A target's sample: without an explicit window, only its last days are read.
    let sampled = match (project.config.sample, args.since, args.until) {
        (Some(sample), None, None) => {
            let since = sample.since(today);
            tracing::info!(
                target_name = project.config.target.as_deref().unwrap_or_default(),
                %since,
                "sample window of {} day(s): date-window streams read from {since}; cursors do not move",
                sample.days
            );
            Some(since)
        }
        _ => None,
    };
    let window = RunWindow {
        since: args.since.or(sampled),
        until: args.until,
        today,
        full_refresh: args.full_refresh,
    };
    let details = serde_json::json!({
        "run_id": run_id,
        "select": args.select,
        "sample_since": sampled,
        "since": args.since,
        "until": args.until,
        "full_refresh": args.full_refresh,
    });
    let actor = sluice_core::audit::Actor::local();
    super::audit::record(&project.lake, &project.config.name, "run", &actor, details).await?;
    let specs: Vec<_> = sources.iter().flat_map(|s| s.streams()).collect();
    if let Err(e) = sluice_transform::preflight::check_models(&models, &project.lake, &specs).await
    {
        return Err(crate::project::report_transform_error(&e));
    }
    if let Err(e) =
        sluice_transform::pushdown::check_destination(&models, project.destination.as_ref())
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
    let executor = Executor {
        pipeline: project.config.name.clone(),
        lake: project.lake.clone(),
        state: project.state.clone(),
        // D1 quarantine rows reach the warehouse only as the PII policy shows them.
        destination: Arc::new(sluice_transform::warehouse::PolicedDestination::new(
            project.destination.clone(),
            models.pii.clone(),
        )),
        execution: project.config.execution.clone(),
        schema_policy: project.schema_policy.clone(),
        observer,
    };
    // Every log line of the run (extraction and models) names it.
    let span = tracing::info_span!("run", run_id = %run_id);
    if let Some(lineage) = &lineage {
        lineage.started(&run_id).await;
    }
    let part = match run_part(project, args, &plan, &run_id).await {
        Ok(part) => part,
        Err(code) => return Err(code),
    };
    let options = RunOptions {
        run_id,
        select: args.select.clone(),
        window,
        cancel,
        part: part.clone(),
    };
    let stage = ModelStage {
        project: models,
        lake: project.lake.clone(),
        destination: project.destination.clone(),
        options: ModelRunOptions {
            full_refresh: args.full_refresh,
        },
    };
    // Every run says when a configured API version nears its sunset.
    for source in sources {
        for notice in source.notices() {
            tracing::warn!(source = %source.name(), "{notice}");
        }
    }
    crate::run_log::start();
    let outcome = sluice_core::plan::execute::run(&plan, &selection, &executor, options, &stage)
        .instrument(span)
        .await;
    let log = crate::run_log::finish();
    if let (RunPart::Shard(shard), Ok(record)) = (&part, &outcome) {
        finish_shard(shard, record).await?;
    }
    match outcome {
        Ok(record) => {
            if let Err(e) = project.state.save_run_log(&record.run_id, &log).await {
                tracing::warn!(run_id = %record.run_id, "cannot keep the run's log: {e}");
            }
            if let Some(lineage) = &lineage {
                lineage.finished(&record).await;
            }
            Ok(record)
        }
        Err(PlanRunError::Config(e)) => {
            crate::project::print_config_error(&e);
            Err(exit::CONFIG)
        }
    }
}

/// The round of a sharded run: `--round`, else the run's `--today` date. It names lake
/// folders: anything but `[A-Za-z0-9._-]` becomes `_` (an Airflow run id such as
/// `scheduled__2026-12-05T05:00:00+00:00` is a fine round).
fn round_of(args: &RunArgs) -> String {
    let round = args.round.clone().unwrap_or_else(|| {
        args.today
            .unwrap_or_else(|| chrono::Utc::now().date_naive())
            .to_string()
    });
    round
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What part of the plan this run executes. A shard takes its lease first (or stops
/// with [`exit::SHARD_HELD`]); a shard already published in the round, or a finalize
/// whose shards have not all published, stops here (`Err` is the exit code).
async fn run_part(
    project: &Project,
    args: &RunArgs,
    plan: &RunPlan,
    run_id: &str,
) -> Result<RunPart, u8> {
    let round = round_of(args);
    let ledger = ShardLedger::new(project.lake.clone(), &project.config.name);
    let lake_error = |e: sluice_core::shard::ShardError| {
        crate::logging::print_error!("{e}");
        exit::RUN_FAILED
    };
    if args.finalize {
        let scopes = finalize_scopes(plan, &args.select);
        let status = ledger.round_status(&round, scopes.as_ref()).await;
        let missing = match status.map_err(lake_error)? {
            RoundStatus::Complete { shards } => {
                tracing::info!(%round, "all {shards} shards published; running the models");
                let moved = ledger
                    .finalize_cursors(&round, &project.state, run_id, scopes.as_ref())
                    .await
                    .map_err(lake_error)?;
                for task in moved {
                    tracing::info!(%task, "cursor advanced to where the shards reached");
                }
                return Ok(RunPart::Finalize);
            }
            RoundStatus::NoShards => "no shard has published".to_string(),
            RoundStatus::Pending { missing } => {
                format!("shards {} have not published", missing.join(", "))
            }
            RoundStatus::Mixed(counts) => {
                format!("shards of different counts ({counts:?}) published")
            }
        };
        crate::logging::print_error!(
            "--finalize refused: in round {round}, {missing}; run them first (or pass the round's --round)"
        );
        return Err(exit::SHARDS_PENDING);
    }
    let Some(shard) = args.shard else {
        return Ok(RunPart::Whole);
    };
    let round = format!("{round}/{}", sluice_core::shard::scope_of(&args.select));
    if let Some(done) = ledger.completion(&round, shard).await.map_err(lake_error)? {
        eprintln!(
            "shard {shard} of round {round} was already published by run {}; nothing to do",
            done.run_id
        );
        return Err(exit::OK);
    }
    let lease_time = std::time::Duration::from_secs(args.lease.max(1));
    let lease = match ledger
        .acquire(&round, shard, run_id, lease_time, args.take_over)
        .await
    {
        Ok(lease) => std::sync::Arc::new(lease),
        Err(e @ sluice_core::shard::ShardError::Held { .. }) => {
            crate::logging::print_error!("{e}");
            return Err(exit::SHARD_HELD);
        }
        Err(e) => return Err(lake_error(e)),
    };
    lease.keep_alive(lease_time / 4);
    Ok(RunPart::Shard(ShardRun {
        shard,
        round,
        lease,
        ledger,
    }))
}

/// The shard scopes a `--finalize --select …` waits for: `all` and those of the sources
/// the selected models read (an Airflow DAG shards each source as its own task, with
/// `--select <source>`); every scope without `--select`.
fn finalize_scopes(
    plan: &RunPlan,
    select: &[String],
) -> Option<std::collections::BTreeSet<String>> {
    if select.is_empty() {
        return None;
    }
    let upstream: Vec<String> = select
        .iter()
        .map(|p| {
            if p.starts_with('+') {
                p.clone()
            } else {
                format!("+{p}")
            }
        })
        .collect();
    let selection = plan.select(&upstream).ok()?;
    let mut scopes: std::collections::BTreeSet<String> = plan
        .nodes()
        .iter()
        .filter(|n| n.kind == sluice_core::plan::NodeKind::Stream && selection.contains(&n.id))
        .filter_map(|n| n.id.split_once('.'))
        .map(|(source, _)| sluice_core::shard::scope_of(&[source.to_string()]))
        .collect();
    scopes.insert(sluice_core::shard::scope_of(&[]));
    Some(scopes)
}

/// Records a shard's completion when every task of its share succeeded, then frees its
/// lease. `Err(SHARD_HELD)` when another process took the shard over during the run.
async fn finish_shard(run: &ShardRun, record: &RunRecord) -> Result<(), u8> {
    if let Err(e) = run.lease.check().await {
        crate::logging::print_error!("{e}");
        return Err(exit::SHARD_HELD);
    }
    if record.status == RunStatus::Succeeded {
        let completion = ShardCompletion {
            round: run.round.clone(),
            shard: run.shard,
            run_id: record.run_id.clone(),
            finished_at: chrono::Utc::now(),
            slices: record
                .tasks
                .iter()
                .map(|t| (t.task.clone(), t.slices))
                .collect(),
        };
        if let Err(e) = run.ledger.complete(&run.round, &completion).await {
            crate::logging::print_error!("cannot record the shard's completion: {e}");
            return Err(exit::RUN_FAILED);
        }
    }
    if let Err(e) = run.lease.release().await {
        tracing::warn!("cannot release the shard lease (it expires on its own): {e}");
    }
    Ok(())
}

/// The run plan of `sources` and the project's models; `Err` is the exit code of a
/// model error (printed with file:line) or of a plan error.
pub fn build_plan(
    project: &Project,
    sources: &[Arc<dyn Source>],
) -> Result<(RunPlan, ModelProject), u8> {
    let models = match ModelProject::load(&project.config) {
        Ok(m) => m
            .with_streams(sources.iter().flat_map(|s| s.streams()))
            .with_aliases(project.aliases.clone()),
        Err(e) => {
            crate::project::print_config_error(&e);
            return Err(exit::CONFIG);
        }
    };
    match RunPlan::build(sources, &models.describe()) {
        Ok(plan) => Ok((plan, models)),
        Err(e) => {
            crate::logging::print_error!("{e}");
            Err(exit::CONFIG)
        }
    }
}

/// SIGINT or SIGTERM cancels the run: in-flight loads roll back, state is not advanced.
/// The cancel is audited (a signal cannot be refused: a failure to record it is only
/// reported).
fn spawn_signal_handler(cancel: CancellationToken, project: &Project, run_id: &str) {
    let (lake, pipeline) = (project.lake.clone(), project.config.name.clone());
    let run_id = run_id.to_string();
    tokio::spawn(async move {
        next_signal().await;
        eprintln!("stopping: finishing nothing new, rolling back in-flight loads…");
        let actor = sluice_core::audit::Actor::local();
        let details = serde_json::json!({ "run_id": run_id, "by": "signal" });
        let log = sluice_core::audit::AuditLog::new(lake, &pipeline);
        if let Err(e) = log.append("cancel", &actor, details).await {
            eprintln!("warning: the cancel could not be recorded in the audit log: {e}");
        }
        cancel.cancel();
        // A second signal means now: something did not stop (a load waiting on a
        // lock, a stuck server). Exiting drops open destination transactions with
        // their connections, so the destination is still as before; state was not
        // advanced and staged files are cleaned by a later run, as after kill -9.
        next_signal().await;
        eprintln!("stopping now (second signal); in-flight loads are rolled back by the database");
        std::process::exit(i32::from(exit::CANCELLED));
    });
}

/// Resolves on the next SIGINT (Ctrl-C) or SIGTERM.
async fn next_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
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
    for (source, usage) in &record.api_usage {
        if usage.requests == 0 {
            continue;
        }
        let mut line = format!("  api {source}: {} requests", thousands(usage.requests));
        if usage.retries > 0 {
            line += &format!(", {} retried", thousands(usage.retries));
        }
        if usage.throttled > 0 {
            line += &format!(" ({} throttled)", thousands(usage.throttled));
        }
        let waited = usage.paced_ms + usage.retry_wait_ms;
        if waited > 0 {
            line += &format!(", waited {}", seconds(waited));
        }
        println!("{line}");
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
