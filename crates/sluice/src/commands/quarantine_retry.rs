//! `sluice quarantine retry <table>`: type a D1 table's quarantined records again
//! with the stream's current config and load those that now fit, as a recorded run
//! (run record, audit log, run log). The mechanics — and why nothing loads twice —
//! are in `sluice_core::quarantine::retry`; this module resolves the table, refuses
//! what cannot be retried, and reports.

use std::path::Path;
use std::sync::Arc;

use sluice_core::destination::WriteMode;
use sluice_core::executor::RunObserver;
use sluice_core::quarantine::retry::{self, Latest, Outcome, PendingRetry, Superseded};
use sluice_core::source::{Source, StreamSpec};
use sluice_transform::arrow::array::{Array, StringArray};
use sluice_transform::arrow::datatypes::DataType;
use sluice_transform::{D1View, ModelProject};

use super::run::{execute_as, exit_code, print_summary, RunArgs};
use crate::exit;
use crate::project::Project;

#[derive(clap::Args, Debug)]
pub struct RetryArgs {
    /// The D1 table (`shop_orders` or `d1.shop_orders`) whose quarantine to retry.
    pub table: String,
    /// Only the records this run quarantined (see `sluice quarantine list`).
    #[arg(long = "run")]
    pub run_id: Option<String>,
    /// Say what would load and what would still fail; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the run record as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(pipeline: &Path, args: RetryArgs, interactive: bool) -> u8 {
    let project = match Project::load(pipeline) {
        Ok(p) => p,
        Err(e) => return e.report(),
    };
    let models = match ModelProject::load(&project.config) {
        Ok(m) => m.with_streams(project.sources.iter().flat_map(|s| s.streams())),
        Err(e) => {
            crate::project::print_config_error(&e);
            return exit::CONFIG;
        }
    };
    let models =
        match super::lake_view::with_registered_marks(models, &project.lake, &project.config.name)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                crate::logging::print_error!("{}", sluice_core::secret::redact(&e));
                return exit::RUN_FAILED;
            }
        };
    let (source, stream) = match find_stream(&project, &models, &args.table) {
        Ok(found) => found,
        Err(message) => {
            crate::logging::print_error!("{message}");
            return exit::CONFIG;
        }
    };
    let table = stream.table.clone();
    if stream.write_mode == WriteMode::Replace {
        crate::logging::print_error!(
            "d1.{table} is a `replace` stream: each run reloads the whole source, so its next run (`sluice run --select {}.{}`) types these records with the fixed config; retrying them into the current table would mix two snapshots",
            source.name(),
            stream.name
        );
        return exit::CONFIG;
    }
    let lake = &project.lake;
    // A retry killed half-way is finished (or redone with the same files) first.
    let redo = if args.dry_run {
        None
    } else {
        match retry::recover(lake, &table).await {
            Ok(redo) => redo,
            Err(e) => return lake_error(e),
        }
    };
    let mut files = match retry::files(lake, &table, args.run_id.as_deref()).await {
        Ok(f) => f,
        Err(e) => return lake_error(e),
    };
    if let Some(redo) = &redo {
        eprintln!(
            "finishing an interrupted retry of d1.{table} ({} file(s))",
            redo.len()
        );
        files.retain(|f| redo.contains(&f.path));
    }
    if let (Some(run), true) = (&args.run_id, files.is_empty()) {
        if !matches!(project.state.run(run).await, Ok(Some(_))) {
            crate::logging::print_error!("no run {run} in {} (see `sluice runs`)", lake.location());
            return exit::CONFIG;
        }
    }
    let quarantined: usize = files.iter().map(|f| f.records.len()).sum();
    if quarantined == 0 {
        let of_run = args
            .run_id
            .as_ref()
            .map(|r| format!(" of run {r}"))
            .unwrap_or_default();
        println!("nothing to retry: d1.{table} has no quarantined records{of_run}");
        return exit::OK;
    }
    let superseded = match superseded(&project, &models, &stream).await {
        Ok(s) => s,
        Err(e) => {
            crate::logging::print_error!("{}", sluice_core::secret::redact(&e));
            return exit::RUN_FAILED;
        }
    };

    if args.dry_run {
        return dry_run(&project, &models, &source, &stream, &files, &superseded).await;
    }

    let run_id = retry::retry_run_id();
    let pending = PendingRetry {
        run_id: run_id.clone(),
        files: files.iter().map(|f| f.path.clone()).collect(),
    };
    let details = serde_json::json!({
        "run_id": run_id,
        "table": format!("d1.{table}"),
        "of_run": args.run_id,
        "files": pending.files,
        "records": quarantined,
    });
    let actor = sluice_core::audit::Actor::local();
    if let Err(code) = super::audit::record(
        lake,
        &project.config.name,
        "quarantine_retry",
        &actor,
        details,
    )
    .await
    {
        return code;
    }
    if let Err(e) = retry::start(lake, &table, &pending).await {
        return lake_error(e);
    }
    let sources: Vec<Arc<dyn Source>> = project
        .sources
        .iter()
        .map(|s| {
            if s.name() == source.name() {
                Arc::new(retry::QuarantineSource::new(
                    s.clone(),
                    &stream.name,
                    files.clone(),
                    superseded.clone(),
                )) as Arc<dyn Source>
            } else {
                s.clone()
            }
        })
        .collect();
    let run_args = RunArgs {
        // The stream, then the models that read it (for the partitions it touched).
        select: vec![format!("{}.{}+", source.name(), stream.name)],
        json: args.json,
        ..RunArgs::default()
    };
    let observer: Arc<dyn RunObserver> = if interactive && !args.json {
        Arc::new(crate::progress::Bars::new())
    } else {
        Arc::new(crate::progress::LogLines)
    };
    let record = match execute_as(&project, &sources, &run_args, observer, run_id).await {
        Ok(record) => record,
        Err(code) => return code,
    };
    let stream_task = record
        .tasks
        .iter()
        .find(|t| t.table == format!("d1.{table}"));
    let published = stream_task.is_some_and(|t| {
        matches!(
            t.status,
            sluice_core::run::TaskStatus::Succeeded | sluice_core::run::TaskStatus::UpToDate
        )
    });
    if published {
        // What still fails is in this run's quarantine file now.
        if let Err(e) = retry::finish(lake, &table, &pending).await {
            return lake_error(e);
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&record).unwrap_or_default()
        );
    } else {
        let (loaded, still) = stream_task
            .map(|t| (t.rows_loaded, t.rows_quarantined))
            .unwrap_or_default();
        println!(
            "quarantine retry of d1.{table}: {quarantined} record(s) retried, {loaded} loaded, {still} still quarantined"
        );
        print_summary(&record);
    }
    exit_code(&record)
}

/// The stream that writes `name` (`orders`, `d1.orders`); a model table or an
/// unknown name is an error naming what can be retried.
fn find_stream(
    project: &Project,
    models: &ModelProject,
    name: &str,
) -> Result<(Arc<dyn Source>, StreamSpec), String> {
    let bare = name
        .strip_prefix("d1.")
        .or_else(|| name.strip_prefix("d1__"))
        .unwrap_or(name);
    for source in &project.sources {
        if let Some(stream) = source.streams().into_iter().find(|s| s.table == bare) {
            return Ok((source.clone(), stream));
        }
    }
    if let Ok(model) = super::lake_view::find_model(models, &name.replace("__", ".")) {
        return Err(format!(
            "{} is a model: its quarantine holds rows that failed its checks, which a retry cannot retype; fix the data or the check, then `sluice run --select {}`",
            model.qualified_name(),
            model.name
        ));
    }
    let tables: Vec<String> = project
        .sources
        .iter()
        .flat_map(|s| s.streams())
        .map(|s| s.table)
        .collect();
    let hint = sluice_core::config::suggest(bare, tables.iter().map(String::as_str))
        .map(|t| format!("; did you mean `d1.{t}`?"))
        .unwrap_or_default();
    Err(format!(
        "`{name}` is not a D1 table of this pipeline{hint} (D1 tables: {})",
        tables
            .iter()
            .map(|t| format!("d1.{t}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Who last loaded each key (merge) or partition (overwrite_partitions), from the
/// lake's D1 table; nothing for append streams, or before the table exists.
async fn superseded(
    project: &Project,
    models: &ModelProject,
    stream: &StreamSpec,
) -> Result<Superseded, String> {
    let columns = match stream.write_mode {
        WriteMode::Merge => stream.primary_key.clone(),
        WriteMode::OverwritePartitions => stream.partition_column.iter().cloned().collect(),
        _ => Vec::new(),
    };
    let mut superseded = Superseded {
        columns: columns.clone(),
        same_run_supersedes: stream.write_mode == WriteMode::Merge,
        ..Default::default()
    };
    if columns.is_empty() {
        return Ok(superseded);
    }
    let tables = sluice_transform::catalog::lake_tables(&project.lake, "d1")
        .await
        .map_err(|e| e.to_string())?;
    if !tables.contains(&stream.table) {
        return Ok(superseded);
    }
    let run = sluice_core::schema::RUN_ID_COLUMN;
    let keys: Vec<String> = columns
        .iter()
        .map(|c| format!("CAST(\"{c}\" AS VARCHAR)"))
        .collect();
    let sql = format!(
        "SELECT concat_ws('\u{1f}', {keys}) AS k, MAX({run}) AS any_run, \
         MAX(CASE WHEN {run} NOT LIKE '%{suffix}' THEN {run} END) AS source_run \
         FROM d1.\"{table}\" GROUP BY 1",
        keys = keys.join(", "),
        suffix = retry::RETRY_RUN_SUFFIX,
        table = stream.table,
    );
    let (_, batches) = sluice_transform::query(&project.lake, models, &sql, D1View::Unmasked)
        .await
        .map_err(|e| e.to_string())?;
    for batch in batches {
        let text = |i: usize| {
            sluice_transform::arrow::compute::cast(batch.column(i), &DataType::Utf8)
                .ok()
                .and_then(|a| a.as_any().downcast_ref::<StringArray>().cloned())
        };
        let (Some(k), Some(any), Some(source)) = (text(0), text(1), text(2)) else {
            continue;
        };
        for row in 0..batch.num_rows() {
            if k.is_null(row) {
                continue;
            }
            superseded.latest.insert(
                k.value(row).to_string(),
                Latest {
                    any: any.value(row).to_string(),
                    source: (!source.is_null(row)).then(|| source.value(row).to_string()),
                },
            );
        }
    }
    Ok(superseded)
}

/// `--dry-run`: each record's outcome, the record shown as the `pii:` policy shows it.
async fn dry_run(
    project: &Project,
    models: &ModelProject,
    source: &Arc<dyn Source>,
    stream: &StreamSpec,
    files: &[retry::QuarantineFile],
    superseded: &Superseded,
) -> u8 {
    let previous = match project.state.schema(&stream.table).await {
        Ok(p) => p,
        Err(e) => {
            crate::logging::print_error!("{e}");
            return exit::RUN_FAILED;
        }
    };
    let policy = project
        .schema_policy
        .for_stream(&format!("{}.{}", source.name(), stream.name));
    let outcomes = retry::classify(
        stream,
        previous.as_ref().map(|v| &v.value),
        policy,
        files,
        superseded,
    );
    let marked = models
        .d1_tables
        .get(&stream.table)
        .map(|d| d.pii_columns.clone())
        .unwrap_or_default();
    let mut rows = vec![vec![
        "run".to_string(),
        "origin".into(),
        "outcome".into(),
        "record".into(),
    ]];
    for (record, outcome) in &outcomes {
        let outcome = match outcome {
            Outcome::Loads => "would load".to_string(),
            Outcome::StillFails(reason) => format!("still fails: {reason}"),
            Outcome::AlreadyRecovered => "already loaded by an earlier retry".into(),
        };
        let shown = models.pii.apply_to_raw(&stream.table, &marked, &record.raw);
        rows.push(vec![
            record.run_id.clone(),
            record.origin.clone(),
            sluice_core::secret::redact(&outcome),
            sluice_core::secret::redact(&shown),
        ]);
    }
    super::print_table(&rows);
    let counts = retry::summarize(&outcomes);
    let summary: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    println!(
        "dry run of d1.{}: {} (nothing changed)",
        stream.table,
        summary.join(", ")
    );
    exit::OK
}

fn lake_error(e: sluice_core::lake::LakeError) -> u8 {
    crate::logging::print_error!("{}", sluice_core::secret::redact(&e.to_string()));
    exit::RUN_FAILED
}
