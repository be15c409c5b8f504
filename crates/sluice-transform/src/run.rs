//! Running the models of a project: plan all, then run each in dependency order into
//! the lake (`d2a/<model>/…`, `d2b/<model>/…`) and the destination.
//!
//! 1. **Plan** every model against the lake's current schemas (each model's planned
//!    output stands in for it while later models are planned). A SQL error is
//!    returned as a file:line [`ConfigError`](sluice_core::config::ConfigError)
//!    before any model runs.
//! 2. **Scope**: a `table` model is rebuilt whole. An `incremental` model recomputes
//!    only the `partition_by` dates touched upstream in this run: the `dt`
//!    partitions the run's D1 tasks wrote (from the run record), or the dates an
//!    upstream incremental model recomputed. Nothing touched: up to date.
//! 3. **Compute** the output, conform its types, run its **checks**.
//! 4. **Publish**, unless an `error` check failed: Parquet to the lake (new files
//!    first, old ones removed after the load), then one destination load
//!    (`replace`, or `overwrite_partitions` for the recomputed dates) with the
//!    quarantined rows of `warn` checks. A failed model keeps its previous table and
//!    the models that read it are skipped.
//!
//! Each model adds a [`TaskRecord`] to the run record, and each model with checks a
//! `<model>:checks` record (rows quarantined, warnings, the error that blocked it).
//!
//! (Just over 700 lines: planning, scoping and publishing share the per-run maps of
//! what each model recomputed; output streaming is in `output.rs`, checks in
//! `checks.rs`, models run inside the warehouse in `pushdown/`.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::DataFusionError;
use datafusion::execution::context::SessionContext;
use sluice_core::destination::{Destination, LoadTail, TableSpec, WriteMode};
use sluice_core::lake::{layout, Lake};
use sluice_core::publish::StagedLoad;
use sluice_core::run::{RunRecord, TaskError, TaskRecord, TaskStatus};
use sluice_core::source::ErrorClass;
use tokio_util::sync::CancellationToken;

use crate::catalog::{self, D1View};
use crate::checks::{self, run_checks, Severity};
use crate::conform;
use crate::error::TransformError;
use crate::output;
use crate::project::{find_ignore_case, offset_of, Materialization, Model, ModelProject};

/// Options of a models run.
#[derive(Debug, Clone, Default)]
pub struct ModelRunOptions {
    /// Rebuild incremental models whole (`sluice run --full-refresh`).
    pub full_refresh: bool,
}

/// What a model's run changed, for the models that read it.
#[derive(Debug, Clone)]
pub(crate) enum Recomputed {
    Full,
    Partitions(BTreeSet<String>),
    Nothing,
    /// Failed or skipped: readers are skipped too.
    Failed,
}

/// Runs every model of `project`, appending one task per model (and per check group)
/// to `record`, then re-settles the record's status. `Err` only for problems found
/// before anything ran (a SQL error, with file:line) or an unreadable lake.
pub async fn run_models(
    project: &ModelProject,
    lake: &Lake,
    destination: &dyn Destination,
    record: &mut RunRecord,
    options: &ModelRunOptions,
    cancel: &CancellationToken,
) -> Result<(), TransformError> {
    if project.models.is_empty() {
        return Ok(());
    }
    crate::pushdown::check_destination(project, destination)?;
    let ctx = catalog::session(project, lake, D1View::Policy).await?;
    crate::pushdown::register_published(&ctx, project, destination).await?;
    let d1_present = catalog::lake_tables(lake, "d1").await?;

    // 1. Plan everything first.
    let mut planned: BTreeMap<String, SchemaRef> = BTreeMap::new();
    let mut reads: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut missing: BTreeMap<String, String> = BTreeMap::new();
    for model in &project.models {
        let absent: Vec<String> = model
            .depends_on
            .iter()
            .filter(|d| {
                if d.layer == "d1" {
                    !d1_present.contains(&d.name)
                } else {
                    missing.contains_key(&d.to_string())
                }
            })
            .map(|d| d.to_string())
            .collect();
        if !absent.is_empty() {
            missing.insert(
                model.qualified_name(),
                format!("not run: no data yet for {}", absent.join(", ")),
            );
            continue;
        }
        let schema = plan(&ctx, model).await?;
        let read = columns_read(&ctx, model).await;
        crate::pushdown::validate(&ctx, project, model, destination.warehouse(), &read).await?;
        reads.insert(model.qualified_name(), read);
        catalog::register_placeholder(&ctx, model.layer.as_str(), &model.name, schema.clone())?;
        planned.insert(model.qualified_name(), schema);
    }

    // Source fields that changed shape this run, by D1 table: a model reading one is told.
    let changes: Vec<(String, sluice_core::drift::SchemaChange)> = record
        .tasks
        .iter()
        .filter(|t| t.table.starts_with("d1."))
        .flat_map(|t| {
            t.schema_changes
                .iter()
                .map(|c| (t.table.clone(), c.clone()))
        })
        .filter(|(_, c)| !matches!(c.kind, sluice_core::drift::ChangeKind::Added))
        .collect();

    // D1 partitions this run wrote, by table.
    let mut touched: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for task in &record.tasks {
        if let Some(table) = task.table.strip_prefix("d1.") {
            if task.status == TaskStatus::Succeeded {
                touched
                    .entry(table.to_string())
                    .or_default()
                    .extend(task.partitions.iter().cloned());
            }
        }
    }

    let mut done: BTreeMap<String, Recomputed> = BTreeMap::new();
    for model in &project.models {
        let name = model.qualified_name();
        let mut task = TaskRecord::new(
            &name,
            format!("{}.{}", model.layer.as_str(), model.table_name()),
        );
        let timer = Instant::now();
        if cancel.is_cancelled() {
            task.status = TaskStatus::Cancelled;
            finish_task(record, task);
            done.insert(name, Recomputed::Failed);
            continue;
        }
        let blocked = missing.get(&name).cloned().or_else(|| {
            model
                .depends_on
                .iter()
                .find(|d| matches!(done.get(&d.to_string()), Some(Recomputed::Failed)))
                .map(|d| format!("not run: {d} failed or was skipped"))
        });
        if let Some(reason) = blocked {
            task.status = TaskStatus::Skipped;
            task.warnings.push(reason);
            finish_task(record, task);
            done.insert(name, Recomputed::Failed);
            continue;
        }
        // A field the model reads stopped arriving (or looks renamed): running it would
        // publish NULLs where values were. Hold it: its previous table stays, the run is
        // partial and says what to map.
        let gone: Vec<String> = reads
            .get(&name)
            .map(|read| {
                changes
                    .iter()
                    .filter(|(table, change)| {
                        matches!(
                            change.kind,
                            sluice_core::drift::ChangeKind::Removed
                                | sluice_core::drift::ChangeKind::LikelyRename
                        ) && read.contains(&format!("{table}.{}", change.field))
                    })
                    .map(|(table, change)| format!("`{}` of {table}: {change}", change.field))
                    .collect()
            })
            .unwrap_or_default();
        if !gone.is_empty() {
            task.status = TaskStatus::Failed;
            task.error = Some(TaskError {
                class: ErrorClass::Data,
                message: format!(
                    "held (previous table kept): it reads {}; map the field under schema.renames \
                     or change the model",
                    gone.join("; ")
                ),
                config_key: None,
            });
            finish_task(record, task);
            done.insert(name, Recomputed::Failed);
            continue;
        }
        let in_warehouse = crate::pushdown::in_warehouse(project, model);
        let existing = if in_warehouse {
            crate::pushdown::published(destination, model).await?
        } else {
            catalog::lake_tables(lake, model.layer.as_str())
                .await?
                .contains(&model.name)
        };
        let scope = scope(project, model, options, existing, &touched, &done);
        if let Recomputed::Partitions(p) = &scope {
            if p.is_empty() {
                task.status = TaskStatus::UpToDate;
                finish_task(record, task);
                done.insert(name, Recomputed::Nothing);
                continue;
            }
        }
        // Readers see what upstream models published, not their plan placeholders.
        for dep in model.depends_on.iter().filter(|d| d.layer != "d1") {
            if !catalog::register_lake_table(&ctx, lake, &dep.layer, &dep.name).await? {
                if let Some(schema) = planned.get(&dep.to_string()) {
                    catalog::register_placeholder(&ctx, &dep.layer, &dep.name, schema.clone())?;
                }
            }
        }
        if in_warehouse {
            crate::pushdown::register_published(&ctx, project, destination).await?;
        }
        tracing::info!(task = %name, in_warehouse, "model started");
        let outcome = if in_warehouse {
            crate::pushdown::run_one(
                &ctx,
                project,
                model,
                lake,
                destination,
                record,
                &scope,
                cancel,
            )
            .await
        } else {
            run_one(
                &ctx,
                project,
                model,
                lake,
                destination,
                record,
                &scope,
                cancel,
            )
            .await
        };
        task.duration_ms = timer.elapsed().as_millis() as u64;
        let (model_task, check_task, recomputed) = match outcome {
            Ok(o) => o.into_tasks(task, &name),
            Err(e) => {
                task.status = if matches!(e, TransformError::Cancelled) {
                    TaskStatus::Cancelled
                } else {
                    TaskStatus::Failed
                };
                task.error = Some(TaskError {
                    class: ErrorClass::Data,
                    message: sluice_core::secret::redact(&e.to_string()),
                    config_key: None,
                });
                (task, None, Recomputed::Failed)
            }
        };
        let mut model_task = model_task;
        if let Some(read) = reads.get(&name) {
            for (table, change) in &changes {
                if read.contains(&format!("{table}.{}", change.field)) {
                    model_task.warnings.push(format!(
                        "reads `{}` of {table}, which changed this run: {change}",
                        change.field
                    ));
                }
            }
        }
        finish_task(record, model_task);
        if let Some(t) = check_task {
            finish_task(record, t);
        }
        done.insert(name, recomputed);
    }
    record.settle(cancel.is_cancelled());
    Ok(())
}

/// Adds a model's (or its checks') task to the run record and to the run's log.
fn finish_task(record: &mut RunRecord, task: TaskRecord) {
    match &task.error {
        // `info`: the run summary already shows failures; this is for the run log.
        Some(error) => tracing::info!(
            task = %task.task,
            status = ?task.status,
            "task failed: {}",
            error.message
        ),
        None => tracing::info!(
            task = %task.task,
            status = ?task.status,
            rows_loaded = task.rows_loaded,
            rows_quarantined = task.rows_quarantined,
            duration_ms = task.duration_ms,
            "task finished"
        ),
    }
    record.tasks.push(task);
}

/// Plans a model; a SQL error comes back as file:line.
/// The columns `model` reads (`layer.table.column`, D1 views as their D1 table), from
/// the optimised plan's table scans: only columns the query really uses (projected,
/// filtered, joined on) count. Empty when the model cannot be planned.
pub(crate) async fn columns_read(ctx: &SessionContext, model: &Model) -> BTreeSet<String> {
    let Ok(plan) = ctx.state().create_logical_plan(&model.sql).await else {
        return BTreeSet::new();
    };
    crate::lineage::columns_read_by(ctx, &plan).unwrap_or_default()
}

pub(crate) async fn plan(ctx: &SessionContext, model: &Model) -> Result<SchemaRef, TransformError> {
    let plan = ctx
        .state()
        .create_logical_plan(&model.sql)
        .await
        .map_err(|e| plan_error(model, &e))?;
    // A model is a query: DDL, DML and statements are refused before anything runs.
    catalog::read_only()
        .verify_plan(&plan)
        .map_err(|e| plan_error(model, &e))?;
    let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
    let (table, _) = conform::table_schema(&schema).map_err(|m| model.sql_error(None, m))?;
    if let Some(column) = &model.config.partition_by {
        let field = table.field(column);
        if !field.is_some_and(|f| f.ty == sluice_core::schema::FieldType::Date) {
            let doc = model.yaml.as_ref();
            let message = match field {
                None => format!("partition_by: the model has no column `{column}`"),
                Some(_) => {
                    format!("partition_by: `{column}` must be a DATE column (CAST it in the SQL)")
                }
            };
            return Err(match doc {
                Some(doc) => doc.error_at(&["partition_by".into()], message).into(),
                None => model.sql_error(None, message).into(),
            });
        }
    }
    Ok(schema)
}

fn plan_error(model: &Model, error: &DataFusionError) -> TransformError {
    let message = error.to_string();
    let from_span = error
        .diagnostic()
        .and_then(|d| d.span)
        .and_then(|s| offset_of(&model.sql, s.start.line, s.start.column));
    let offset = from_span.or_else(|| {
        // "No field named nme." / "table 'datafusion.d1.x' not found"
        let word = if let Some(rest) = message.split("No field named ").nth(1) {
            rest.split(['.', ' ', ','])
                .next()
                .map(|w| w.trim_matches('"').to_string())
        } else if let Some(rest) = message.split("table '").nth(1) {
            rest.split('\'')
                .next()
                .map(|t| t.trim_start_matches("datafusion.").to_string())
        } else {
            None
        }?;
        find_ignore_case(&model.sql, &word)
    });
    TransformError::Config(model.sql_error(offset, message))
}

fn scope(
    project: &ModelProject,
    model: &Model,
    options: &ModelRunOptions,
    existing: bool,
    touched: &BTreeMap<String, BTreeSet<String>>,
    done: &BTreeMap<String, Recomputed>,
) -> Recomputed {
    if model.config.materialized != Materialization::Incremental
        || options.full_refresh
        || !existing
    {
        return Recomputed::Full;
    }
    let mut dates = BTreeSet::new();
    for dep in &model.depends_on {
        if dep.layer == "d1" {
            // Dimension tables (no partition column) are keyed by load date: they do
            // not say which output dates changed.
            let partitioned = project
                .d1_tables
                .get(&dep.name)
                .is_none_or(|t| t.partitioned);
            if partitioned {
                dates.extend(touched.get(&dep.name).into_iter().flatten().cloned());
            }
        } else {
            match done.get(&dep.to_string()) {
                Some(Recomputed::Full) => return Recomputed::Full,
                Some(Recomputed::Partitions(p)) => dates.extend(p.iter().cloned()),
                _ => {}
            }
        }
    }
    Recomputed::Partitions(dates)
}

/// A model's computed result, before it becomes task records.
pub(crate) struct Outcome {
    pub(crate) recomputed: Recomputed,
    pub(crate) rows: u64,
    pub(crate) rows_loaded: u64,
    pub(crate) rows_replaced: u64,
    pub(crate) partitions: Vec<String>,
    pub(crate) has_checks: bool,
    pub(crate) quarantined: u64,
    /// Rows withheld because their `partition_by` value is NULL (in the quarantine).
    pub(crate) undated: u64,
    pub(crate) warnings: Vec<String>,
    /// An `error` check failed: nothing was published.
    pub(crate) blocked: Option<String>,
    /// Whether the lake held the model's table before this run.
    pub(crate) had_table: bool,
}

impl Outcome {
    /// An `error` check failed (`errors`): nothing published, the failing rows quarantined.
    pub(crate) fn blocked(
        rows: u64,
        quarantined: u64,
        undated: u64,
        warnings: Vec<String>,
        errors: &[String],
        had_table: bool,
    ) -> Outcome {
        Outcome {
            recomputed: Recomputed::Failed,
            rows,
            rows_loaded: 0,
            rows_replaced: 0,
            partitions: Vec::new(),
            has_checks: true,
            quarantined,
            undated,
            warnings,
            blocked: Some(errors.join("; ")),
            had_table,
        }
    }

    fn into_tasks(
        self,
        mut task: TaskRecord,
        name: &str,
    ) -> (TaskRecord, Option<TaskRecord>, Recomputed) {
        task.rows_extracted = self.rows;
        task.rows_loaded = self.rows_loaded;
        task.rows_replaced = self.rows_replaced;
        task.partitions = self.partitions;
        let checks = self.has_checks.then(|| {
            let mut t = TaskRecord::new(format!("{name}:checks"), task.table.clone());
            t.started_at = task.started_at;
            t.rows_extracted = self.rows;
            // The failing rows; undated rows are the model task's (each row counted once).
            t.rows_quarantined = self.quarantined.saturating_sub(self.undated);
            t.warnings = self.warnings.clone();
            t.status = TaskStatus::Succeeded;
            if let Some(message) = &self.blocked {
                t.status = TaskStatus::Failed;
                t.error = Some(TaskError {
                    class: ErrorClass::Data,
                    message: message.clone(),
                    config_key: None,
                });
            }
            t
        });
        if let Some(message) = self.blocked {
            let kept = if self.had_table {
                "previous table kept"
            } else {
                "there is no previous table"
            };
            task.status = TaskStatus::Failed;
            task.error = Some(TaskError {
                class: ErrorClass::Data,
                message: format!("not published ({kept}): {message}"),
                config_key: None,
            });
            task.rows_quarantined = self.undated;
            return (task, checks, Recomputed::Failed);
        }
        if self.undated > 0 {
            task.rows_quarantined = self.undated;
            task.warnings.push(format!(
                "{} rows quarantined: their partition_by value is NULL",
                self.undated
            ));
        }
        task.status = TaskStatus::Succeeded;
        (task, checks, self.recomputed)
    }
}

/// Keeps a model's failing rows in the lake whatever the severity (local and in the
/// warehouse alike): `sluice query` reads them as `quarantine.<layer>__<model>`.
/// Returns the line telling the user so, when there were any.
pub(crate) async fn keep_failing_rows(
    lake: &Lake,
    model: &Model,
    run_id: &str,
    rows: &[sluice_core::typing::Rejected],
) -> Result<Option<String>, TransformError> {
    let layer = model.layer.as_str();
    Ok(
        sluice_core::quarantine::write(lake, layer, &model.name, run_id, rows)
            .await?
            .map(|_| {
                format!(
                    "failing rows: `sluice query \"select * from quarantine.{layer}__{}\"`",
                    model.name
                )
            }),
    )
}

#[allow(clippy::too_many_arguments)]
async fn run_one(
    ctx: &SessionContext,
    project: &ModelProject,
    model: &Model,
    lake: &Lake,
    destination: &dyn Destination,
    record: &RunRecord,
    scope: &Recomputed,
    cancel: &CancellationToken,
) -> Result<Outcome, TransformError> {
    let context = model.qualified_name();
    let engine = |e: DataFusionError| TransformError::engine(&context, e);
    let sql = match scope {
        Recomputed::Partitions(dates) => incremental_sql(model, dates.iter().map(String::as_str)),
        _ => model.sql.to_string(),
    };
    let df = catalog::user_sql(ctx, &sql).await.map_err(engine)?;
    let (table_schema, target) = conform::table_schema(df.schema().as_arrow())
        .map_err(|m| TransformError::engine(&context, m))?;
    // The output streams into staged Parquet files (one per partition date), so a
    // model's memory is bounded by the engine's state and one row group per date,
    // not by its output.
    let run_id = &record.run_id;
    let staging = layout::model_staging(run_id, model.layer.as_str(), &model.name);
    let staged = tokio::select! {
        _ = cancel.cancelled() => return Err(TransformError::Cancelled),
        result = output::stage(df, lake, &staging, &target, model) => result?,
    };
    let output::StagedOutput {
        files: staged_files,
        rows,
        undated,
    } = staged;
    let undated = checks::rows_as_rejected(
        &format!("model:{}", model.name),
        &format!(
            "partition_by column `{}` is NULL: the row has no date to be published under",
            model.config.partition_by.as_deref().unwrap_or_default()
        ),
        &undated,
    )?;

    // Checks.
    let output = catalog::staged_table(ctx, lake, &staging, target.clone()).await?;
    let failures = run_checks(ctx, &model.config.checks, target.clone(), output, rows).await;
    let failures = match failures {
        Ok(f) => f,
        Err(e) => {
            output::discard(lake, &staged_files).await;
            return Err(e);
        }
    };
    let undated_rows = undated.len() as u64;
    let mut quarantine = undated;
    let mut warnings = Vec::new();
    let mut errors = Vec::new();
    for f in &failures {
        quarantine.extend(f.rows.iter().cloned());
        match f.severity {
            Severity::Warn => warnings.push(f.message.clone()),
            Severity::Error => errors.push(f.message.clone()),
        }
    }
    let layer = model.layer.as_str();
    let dir = layout::table(layer, &model.name);
    let had_table = catalog::lake_tables(lake, layer)
        .await?
        .contains(&model.name);
    let kept_at = keep_failing_rows(lake, model, &record.run_id, &quarantine).await?;
    if !errors.is_empty() {
        // The table is not published, but its failing rows are, next to it
        // (`<model>__quarantine`), like a stream's rejected records.
        let blocked_spec = TableSpec {
            layer: layer.to_string(),
            name: model.table_name().to_string(),
            schema: table_schema,
            primary_key: model.config.primary_key.clone(),
            partition_column: model.config.partition_by.clone(),
            write_mode: WriteMode::Replace,
        };
        output::discard(lake, &staged_files).await;
        destination
            .record_quarantine(&blocked_spec, &record.run_id, &quarantine)
            .await?;
        if let Some(pointer) = &kept_at {
            errors.push(pointer.clone());
        }
        return Ok(Outcome::blocked(
            rows,
            quarantine.len() as u64,
            undated_rows,
            warnings,
            &errors,
            had_table,
        ));
    }

    // Destination: one transaction, streamed from the staged files.
    let output_dates: BTreeSet<String> = staged_files.iter().filter_map(|f| f.0.clone()).collect();
    let (write_mode, partitions): (WriteMode, Vec<String>) = match scope {
        Recomputed::Partitions(dates) => (
            WriteMode::OverwritePartitions,
            dates.iter().cloned().collect(),
        ),
        _ => (WriteMode::Replace, output_dates.iter().cloned().collect()),
    };
    let spec = TableSpec {
        layer: layer.to_string(),
        name: model.table_name().to_string(),
        schema: table_schema,
        primary_key: model.config.primary_key.clone(),
        partition_column: model.config.partition_by.clone(),
        write_mode,
    };
    let load_id = format!("{run_id}:{}", model.qualified_name());
    let files: Vec<String> = staged_files.iter().map(|f| f.1.clone()).collect();
    let tail = LoadTail {
        quarantine: quarantine.clone(),
        partitions: partitions.clone(),
        fence: None,
    };
    let on_retry = |e: &sluice_core::destination::DestinationError, delay: std::time::Duration| {
        tracing::warn!(table = %spec.qualified_name(), error = %e, ?delay, "load failed; retrying");
    };
    let loaded = sluice_core::publish::load_staged(
        destination,
        lake,
        StagedLoad {
            spec: &spec,
            files: &files,
            kept: None,
            tail: &tail,
            load_id: &load_id,
            run_id,
        },
        &project.execution,
        cancel,
        &on_retry,
    )
    .await;
    let outcome = match loaded {
        Ok(o) => o,
        Err(e) => {
            output::discard(lake, &staged_files).await;
            return Err(e.into());
        }
    };

    // Lake: the staged files become the model's table.
    let mut written = Vec::new();
    for (n, (date, path)) in staged_files.iter().enumerate() {
        let target_path = match date {
            Some(date) => format!("{dir}/dt={date}/{run_id}-{n:05}.parquet"),
            None => format!("{dir}/{run_id}-{n:05}.parquet"),
        };
        lake.rename(path, &target_path).await?;
        written.push(target_path);
    }

    // Lake: remove what the new files replace.
    let replaced_prefixes: Vec<String> = match scope {
        Recomputed::Partitions(dates) => dates
            .iter()
            .map(|d| layout::table_partition(layer, &model.name, d))
            .collect(),
        _ => vec![format!("{dir}/")],
    };
    for prefix in replaced_prefixes {
        for object in lake.list(&prefix).await? {
            if !written.contains(&object.path) {
                lake.delete(&object.path).await?;
            }
        }
    }
    Ok(Outcome {
        recomputed: scope.clone(),
        rows,
        rows_loaded: outcome.rows_loaded,
        rows_replaced: outcome.rows_replaced,
        partitions,
        has_checks: !model.config.checks.is_empty(),
        // `warn` rows are published: flagged (copies in the quarantine), not withheld.
        quarantined: 0,
        undated: undated_rows,
        warnings: warnings.into_iter().chain(kept_at).collect(),
        blocked: None,
        had_table,
    })
}

/// The SQL an incremental run of `model` executes to recompute only `dates` (the
/// `partition_by` dates its upstream tables changed).
pub fn incremental_sql<'a>(model: &Model, dates: impl IntoIterator<Item = &'a str>) -> String {
    let column = model.config.partition_by.as_deref().unwrap_or("dt");
    let list: Vec<String> = dates.into_iter().map(|d| format!("DATE '{d}'")).collect();
    format!(
        "SELECT * FROM (\n{}\n) AS __model WHERE \"{column}\" IN ({})",
        model.sql.trim().trim_end_matches(';'),
        list.join(", ")
    )
}

/// Runs `sql` over the lake's tables (`d1.<table>`, `d2a.<model>`, `d2b.<model>`) with the
/// project's functions. D1 is seen through the PII policy unless `view` is `Unmasked`.
pub async fn query(
    lake: &Lake,
    project: &ModelProject,
    sql: &str,
    view: D1View,
) -> Result<(SchemaRef, Vec<RecordBatch>), TransformError> {
    let ctx = catalog::session(project, lake, view).await?;
    let df = catalog::user_sql(&ctx, sql)
        .await
        .map_err(|e| TransformError::engine("query", e))?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df
        .collect()
        .await
        .map_err(|e| TransformError::engine("query", e))?;
    Ok((schema, batches))
}
