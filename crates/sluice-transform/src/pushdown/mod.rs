//! Models that run inside the warehouse (`models: { engine: destination }`, or
//! `engine: destination` in a model's YAML): the same SQL, planned by DataFusion as
//! for `engine: local`, unparsed to PostgreSQL (see [`dialect`]) and run where the
//! data is, so a model is as big as the warehouse, not as sluice's memory.
//!
//! What a model reads there: `d1.<table>` is a temporary view over the published D1
//! table with the `pii:` policy applied as for local models (hash through SHA-256,
//! masks, encryption through pgcrypto; an action PostgreSQL cannot compute is an
//! error if the model reads the column); `d2a.<model>` / `d2b.<model>` are the
//! published tables.
//!
//! One model is one [`WarehouseSession`] (one transaction):
//! 1. temp objects: the hash and encryption keys (bound as parameters, never in SQL
//!    text), `encrypt`/`decrypt`, the currency rates and `convert_currency`, the D1 views;
//! 2. `INSERT INTO` the staging table `SELECT` the model (only the recomputed dates
//!    for an incremental run); rows whose `partition_by` is NULL go to the quarantine;
//! 3. the checks, as SQL over the staging table (`this`); failing rows come back as
//!    JSON, the only rows that travel through sluice;
//! 4. an `error` check failed → only the quarantine is committed, the table stays;
//!    otherwise the table is replaced (or its recomputed dates) in the same commit.
//!
//! Everything that can be found before a run is found by [`validate`]: a destination
//! that cannot run models (SQLite), a function with no PostgreSQL form, a `pii:`
//! action the warehouse cannot compute on a column the model reads. Unlike local
//! models, the model's table is not copied into the lake's `d2a/`, `d2b/`.

mod checks;
mod dialect;
mod objects;

use std::collections::BTreeSet;
use std::sync::Arc;

use backon::Retryable;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::LogicalPlan;
use sluice_core::config::ModelEngine;
use sluice_core::destination::{Destination, LoadTail, TableSpec, WriteMode};
use sluice_core::pushdown::Warehouse;
use sluice_core::run::RunRecord;
use tokio_util::sync::CancellationToken;

use crate::checks::{Severity, THIS};
use crate::error::TransformError;
use crate::project::{find_ignore_case, Model, ModelProject};
use crate::run::{incremental_sql, Outcome, Recomputed};
use checks::{check_sql, rejected, rows_as_json, run_checks};
use dialect::{quote, Relations};
use objects::setup;

/// Whether `model` runs in the warehouse.
pub(crate) fn in_warehouse(project: &ModelProject, model: &Model) -> bool {
    model.engine(project.engine) == ModelEngine::Destination
}

/// Refuses, naming the first such model's file, models with `engine: destination`
/// when the destination cannot run models (SQLite). Checked before a run starts.
pub fn check_destination(
    project: &ModelProject,
    destination: &dyn Destination,
) -> Result<(), TransformError> {
    if destination.warehouse().is_some() {
        return Ok(());
    }
    let Some(model) = project.models.iter().find(|m| in_warehouse(project, m)) else {
        return Ok(());
    };
    Err(model
        .sql_error(
            None,
            format!(
                "{} runs with engine: destination, but the destination ({}) cannot run models: \
                 use a PostgreSQL destination, or `engine: local` (models.engine in pipeline.yaml, \
                 or `engine:` in the model's .yml)",
                model.qualified_name(),
                destination.describe()
            ),
        )
        .into())
}

/// Refuses, naming the model's file, what would fail once the model runs in the
/// warehouse: a local model reading a warehouse-only table, a function or `pii:`
/// action PostgreSQL has no form of, SQL the unparser cannot write. `reads`: the
/// columns the model reads (`d1.table.column`). `warehouse`: `None` before the
/// destination is known (object names are then only checked for being mapped).
pub(crate) async fn validate(
    ctx: &SessionContext,
    project: &ModelProject,
    model: &Model,
    warehouse: Option<&dyn Warehouse>,
    reads: &BTreeSet<String>,
) -> Result<(), TransformError> {
    let id = model.qualified_name();
    if !in_warehouse(project, model) {
        for dep in &model.depends_on {
            let upstream = project
                .models
                .iter()
                .find(|m| m.layer.as_str() == dep.layer && m.name == dep.name);
            if let Some(upstream) = upstream.filter(|m| in_warehouse(project, m)) {
                return Err(model
                    .sql_error(
                        find_ignore_case(&model.sql, &dep.name),
                        format!(
                            "{id} runs locally (engine: local) but reads {}, which runs in the \
                             destination and is not in the lake: give {id} `engine: destination` too",
                            upstream.qualified_name()
                        ),
                    )
                    .into());
            }
        }
        return Ok(());
    }
    let planner = planning_context(ctx, project, model).await?;
    let plan = logical_plan(&planner, &model.sql, &id).await?;
    refuse_functions(model, &plan, None)?;
    for dep in model.depends_on.iter().filter(|d| d.layer == "d1") {
        if project.switched_alias(&dep.name).is_some() {
            return Err(model
                .sql_error(
                    find_ignore_case(&model.sql, &dep.name),
                    format!(
                        "d1.{} is a switched replacement's old name, which engine: destination \
                         does not map yet; run {id} with engine: local",
                        dep.name
                    ),
                )
                .into());
        }
        let schema = ctx
            .table_provider(TableReference::partial("d1", dep.name.as_str()))
            .await
            .map(|t| t.schema())
            .map_err(|e| TransformError::engine(&id, e))?;
        for field in schema.fields() {
            let column = field.name();
            if !reads.contains(&format!("d1.{}.{column}", dep.name)) {
                continue;
            }
            if let Some(action) = policy_action(project, &dep.name, column) {
                if let Err(why) = dialect::policy_expr(action, "x", "t.x") {
                    return Err(model
                        .sql_error(
                            find_ignore_case(&model.sql, column),
                            format!(
                                "{id} reads d1.{}.{column}, which the pii: policy shows as `{}`: \
                                 {why}, so it cannot run with engine: destination",
                                dep.name,
                                action.name()
                            ),
                        )
                        .into());
                }
            }
        }
    }
    let relations = relations(project, model, warehouse);
    dialect::unparse(&plan, &relations).map_err(|e| {
        model.sql_error(
            None,
            format!("{id} cannot be written as PostgreSQL for engine: destination: {e}"),
        )
    })?;
    let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
    for check in &model.config.checks {
        check_sql(&planner, model, check, schema.clone(), &relations).await?;
    }
    Ok(())
}

/// What the `pii:` policy does to `table.column` (connector marks included).
pub(super) fn policy_action(
    project: &ModelProject,
    table: &str,
    column: &str,
) -> Option<crate::pii::PiiAction> {
    let marked = project
        .d1_tables
        .get(table)
        .is_some_and(|d| d.pii_columns.iter().any(|c| c == column));
    project.pii.action(table, column, marked)
}

/// A session in which `model`'s tables are plain tables with the schemas `ctx` gives
/// them: `ctx`'s `d1.*` are views (policy, de-duplication) that the unparser would
/// write out over the lake's raw tables; in the warehouse they are replaced whole.
async fn planning_context(
    ctx: &SessionContext,
    project: &ModelProject,
    model: &Model,
) -> Result<SessionContext, TransformError> {
    let planner = SessionContext::new_with_config(ctx.copied_config());
    for udf in project.pii.functions() {
        planner.register_udf(udf);
    }
    for udf in crate::functions::functions(&project.rates) {
        planner.register_udf(udf);
    }
    let catalog = planner.catalog("datafusion").expect("default catalog");
    for schema in ["d1", "d2a", "d2b"] {
        catalog
            .register_schema(
                schema,
                Arc::new(datafusion::catalog::MemorySchemaProvider::new()),
            )
            .map_err(|e| TransformError::engine("plan", e))?;
    }
    let checked = model.config.checks.iter().filter_map(|c| {
        let (layer, table) = c.relationships.as_ref()?.to.split_once('.')?;
        Some((layer.to_string(), table.to_string()))
    });
    let tables: BTreeSet<(String, String)> = model
        .depends_on
        .iter()
        .map(|d| (d.layer.clone(), d.name.clone()))
        .chain(checked)
        .collect();
    for (layer, table) in tables {
        let reference = TableReference::partial(layer.as_str(), table.as_str());
        let Ok(provider) = ctx.table_provider(reference.clone()).await else {
            continue;
        };
        let empty: Arc<dyn TableProvider> = Arc::new(
            MemTable::try_new(provider.schema(), vec![vec![]])
                .map_err(|e| TransformError::engine("plan", e))?,
        );
        planner
            .register_table(reference, empty)
            .map_err(|e| TransformError::engine("plan", e))?;
    }
    Ok(planner)
}

pub(super) async fn logical_plan(
    ctx: &SessionContext,
    sql: &str,
    context: &str,
) -> Result<LogicalPlan, TransformError> {
    ctx.state()
        .create_logical_plan(sql)
        .await
        .map_err(|e| TransformError::engine(context, e))
}

pub(super) fn refuse_functions(
    model: &Model,
    plan: &LogicalPlan,
    check: Option<&str>,
) -> Result<(), TransformError> {
    let Some((name, why)) = dialect::unsupported_functions(plan).into_iter().next() else {
        return Ok(());
    };
    let place = check.map(|c| format!(" (check {c})")).unwrap_or_default();
    Err(model
        .sql_error(
            check
                .is_none()
                .then(|| find_ignore_case(&model.sql, &name))
                .flatten(),
            format!(
                "{}{place} calls `{name}`, which cannot run with engine: destination: {why}",
                model.qualified_name()
            ),
        )
        .into())
}

/// The columns (`d1.table.column`) of the D1 tables the model's own query reads that it
/// does not read: a view leaves out such a column it would encrypt (see
/// [`objects::setup`]). `None` when that is not known for sure (the plan does not
/// optimize); a table a check reads is never listed.
async fn unread_columns(
    ctx: &SessionContext,
    plan: &LogicalPlan,
    model: &Model,
) -> Option<BTreeSet<String>> {
    let checked: BTreeSet<&str> = model
        .config
        .checks
        .iter()
        .filter_map(|c| {
            c.relationships
                .as_ref()
                .and_then(|r| r.to.strip_prefix("d1."))
        })
        .collect();
    let tables: Vec<&str> = model
        .depends_on
        .iter()
        .filter(|d| d.layer == "d1" && !checked.contains(d.name.as_str()))
        .map(|d| d.name.as_str())
        .collect();
    unread_in(ctx, plan, &tables).await
}

/// The columns of the D1 `tables` that `plan` does not read.
async fn unread_in(
    ctx: &SessionContext,
    plan: &LogicalPlan,
    tables: &[&str],
) -> Option<BTreeSet<String>> {
    let read = crate::lineage::columns_read_by(ctx, plan)?;
    let mut unread = BTreeSet::new();
    for table in tables {
        let provider = ctx
            .table_provider(TableReference::partial("d1", *table))
            .await
            .ok()?;
        for field in provider.schema().fields() {
            let column = format!("d1.{table}.{}", field.name());
            if !read.contains(&column) {
                unread.insert(column);
            }
        }
    }
    Some(unread)
}

/// The D1 tables `model` reads, itself or through a `relationships` check.
pub(super) fn d1_tables(model: &Model) -> BTreeSet<&str> {
    model
        .depends_on
        .iter()
        .filter(|d| d.layer == "d1")
        .map(|d| d.name.as_str())
        .chain(model.config.checks.iter().filter_map(|c| {
            c.relationships
                .as_ref()
                .and_then(|r| r.to.strip_prefix("d1."))
        }))
        .collect()
}

/// The warehouse objects `model` and its checks may name (without a warehouse: the
/// layers' own schema names, enough to find what cannot be mapped).
fn relations(
    project: &ModelProject,
    model: &Model,
    warehouse: Option<&dyn Warehouse>,
) -> Relations {
    let mut relations = Relations::default();
    for table in d1_tables(model) {
        relations.insert("d1", table, d1_view(table));
    }
    for other in &project.models {
        let layer = other.layer.as_str();
        let object = match warehouse {
            Some(w) => w.published_table(layer, other.table_name()),
            None => format!("{}.{}", quote(layer), quote(other.table_name())),
        };
        relations.insert(layer, &other.name, object);
    }
    // Models outside this selection (`--select`): published under their own name.
    for dep in model.depends_on.iter().filter(|d| d.layer != "d1") {
        let key = (dep.layer.clone(), dep.name.clone());
        if !relations.by_name.contains_key(&key) {
            let object = match warehouse {
                Some(w) => w.published_table(&dep.layer, &dep.name),
                None => format!("{}.{}", quote(&dep.layer), quote(&dep.name)),
            };
            relations.insert(&dep.layer, &dep.name, object);
        }
    }
    relations.insert("", THIS, "pg_temp._sluice_model".into());
    relations
}

pub(super) fn d1_view(table: &str) -> String {
    format!("pg_temp.{}", quote(&format!("_sluice_d1__{table}")))
}

/// Registers, for planning, the published tables that models running in the warehouse
/// read but that neither the lake nor this selection of models provides (`sluice run
/// --select d2b.x` where `d2a.y` also runs in the warehouse): their columns come from
/// the warehouse.
pub(crate) async fn register_published(
    ctx: &SessionContext,
    project: &ModelProject,
    destination: &dyn Destination,
) -> Result<(), TransformError> {
    let Some(warehouse) = destination.warehouse() else {
        return Ok(());
    };
    for model in project.models.iter().filter(|m| in_warehouse(project, m)) {
        for dep in model.depends_on.iter().filter(|d| d.layer != "d1") {
            let selected = project
                .models
                .iter()
                .any(|m| m.layer.as_str() == dep.layer && m.name == dep.name);
            let reference = TableReference::partial(dep.layer.as_str(), dep.name.as_str());
            if selected || ctx.table_provider(reference).await.is_ok() {
                continue;
            }
            let columns = warehouse.columns(&dep.layer, &dep.name).await?;
            if columns.is_empty() {
                continue;
            }
            let fields: Vec<datafusion::arrow::datatypes::Field> = columns
                .iter()
                .map(|(name, ty)| {
                    datafusion::arrow::datatypes::Field::new(name, arrow_type(ty), true)
                })
                .collect();
            let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
            crate::catalog::register_placeholder(ctx, &dep.layer, &dep.name, schema)?;
        }
    }
    Ok(())
}

/// The Arrow type sluice reads a PostgreSQL column type as (the inverse of the types
/// the destination creates).
fn arrow_type(sql: &str) -> datafusion::arrow::datatypes::DataType {
    use datafusion::arrow::datatypes::{DataType, TimeUnit};
    match sql {
        "bigint" | "integer" | "smallint" => DataType::Int64,
        "double precision" | "real" => DataType::Float64,
        "boolean" => DataType::Boolean,
        "date" => DataType::Date32,
        "timestamp with time zone" => {
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        }
        "timestamp without time zone" => DataType::Timestamp(TimeUnit::Microsecond, None),
        s if s.starts_with("numeric(") => {
            let inner = s.trim_start_matches("numeric(").trim_end_matches(')');
            let (p, sc) = inner.split_once(',').unwrap_or((inner, "0"));
            let p: u8 = p.trim().parse().unwrap_or(38);
            let sc: i8 = sc.trim().parse().unwrap_or(0);
            DataType::Decimal128(p.min(38), sc)
        }
        "numeric" => DataType::Decimal128(38, 10),
        _ => DataType::Utf8,
    }
}

/// Whether the warehouse already has `model`'s table.
pub(crate) async fn published(
    destination: &dyn Destination,
    model: &Model,
) -> Result<bool, TransformError> {
    Ok(destination
        .row_count(model.layer.as_str(), model.table_name())
        .await?
        .is_some())
}

/// Runs one model in the warehouse (see the module doc) and says what it did.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_one(
    ctx: &SessionContext,
    project: &ModelProject,
    model: &Model,
    lake: &sluice_core::lake::Lake,
    destination: &dyn Destination,
    record: &RunRecord,
    scope: &Recomputed,
    cancel: &CancellationToken,
) -> Result<Outcome, TransformError> {
    let id = model.qualified_name();
    let warehouse = destination
        .warehouse()
        .ok_or_else(|| TransformError::engine(&id, "the destination cannot run models"))?;
    let had_table = published(destination, model).await?;
    let sql = match scope {
        Recomputed::Partitions(dates) => incremental_sql(model, dates.iter().map(String::as_str)),
        _ => model.sql.to_string(),
    };
    let ctx = &planning_context(ctx, project, model).await?;
    let plan = logical_plan(ctx, &sql, &id).await?;
    let output: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
    let (table_schema, target) =
        crate::conform::table_schema(&output).map_err(|m| TransformError::engine(&id, m))?;
    let relations = relations(project, model, Some(warehouse));
    let select = dialect::unparse(&plan, &relations).map_err(|e| TransformError::engine(&id, e))?;
    let unread = unread_columns(ctx, &plan, model).await;
    let mut checks = Vec::new();
    for check in &model.config.checks {
        checks.push((
            check,
            check_sql(ctx, model, check, target.clone(), &relations).await?,
        ));
    }
    let (write_mode, partitions) = match scope {
        Recomputed::Partitions(dates) => (
            WriteMode::OverwritePartitions,
            dates.iter().cloned().collect::<Vec<_>>(),
        ),
        _ => (WriteMode::Replace, Vec::new()),
    };
    let spec = TableSpec {
        layer: model.layer.as_str().to_string(),
        name: model.table_name().to_string(),
        schema: table_schema,
        primary_key: model.config.primary_key.clone(),
        partition_column: model.config.partition_by.clone(),
        write_mode,
    };
    let load_id = format!("{}:{id}", record.run_id);
    // One attempt is one transaction: a failed one rolled back whole, so it is retried whole.
    let attempt = || async {
        let Some(mut session) = warehouse.begin(&spec, &load_id).await? else {
            // The ledger has this publish: a retried run, nothing to do.
            return Ok(already_published(scope, partitions.clone(), had_table));
        };
        setup(session.as_mut(), project, model, warehouse, unread.as_ref()).await?;
        sluice_core::test_hook::hold("SLUICE_TEST_HOLD_IN_WAREHOUSE").await;
        let stage = session.stage().to_string();
        let rows = session
            .execute(
                &format!("INSERT INTO {stage} SELECT * FROM ({select}) AS _sluice_m"),
                &[],
            )
            .await?;
        let undated = match &model.config.partition_by {
            Some(column) => {
                let condition = format!("{} IS NULL", quote(column));
                let rows = rows_as_json(session.as_mut(), &stage, &condition).await?;
                if !rows.is_empty() {
                    session
                        .execute(&format!("DELETE FROM {stage} WHERE {condition}"), &[])
                        .await?;
                }
                rejected(
                    &format!("model:{}", model.name),
                    &format!(
                        "partition_by column `{column}` is NULL: the row has no date to be published under"
                    ),
                    rows,
                )
            }
            None => Vec::new(),
        };
        let failures = run_checks(session.as_mut(), &checks, rows - undated.len() as u64).await?;
        let undated_rows = undated.len() as u64;
        let mut quarantine = undated;
        let (mut warnings, mut errors) = (Vec::new(), Vec::new());
        for (severity, message, rows) in failures {
            quarantine.extend(rows);
            match severity {
                Severity::Warn => warnings.push(message),
                Severity::Error => errors.push(message),
            }
        }
        let kept_at =
            crate::run::keep_failing_rows(lake, model, &record.run_id, &quarantine).await?;
        if !errors.is_empty() {
            session.block(&quarantine, &record.run_id).await?;
            errors.extend(kept_at);
            return Ok(Outcome::blocked(
                rows,
                quarantine.len() as u64,
                undated_rows,
                warnings,
                &errors,
                had_table,
            ));
        }
        let partitions = match (&spec.write_mode, &spec.partition_column) {
            (WriteMode::Replace, Some(column)) => session
                .query_text(&format!(
                    "SELECT DISTINCT CAST({} AS TEXT) FROM {stage} ORDER BY 1",
                    quote(column)
                ))
                .await?
                .into_iter()
                .filter_map(|row| row.into_iter().next().flatten())
                .collect(),
            _ => partitions.clone(),
        };
        let tail = LoadTail {
            quarantine,
            partitions: partitions.clone(),
            // Models run once per round (unsharded, or in `--finalize`): no shard fence.
            fence: None,
        };
        let loaded = session.publish(tail, &record.run_id).await?;
        Ok::<_, TransformError>(Outcome {
            recomputed: scope.clone(),
            rows,
            rows_loaded: loaded.rows_loaded,
            rows_replaced: loaded.rows_replaced,
            partitions,
            has_checks: !model.config.checks.is_empty(),
            quarantined: 0,
            undated: undated_rows,
            warnings: warnings.into_iter().chain(kept_at).collect(),
            blocked: None,
            had_table,
        })
    };
    let work = attempt
        .retry(sluice_core::publish::backoff(&project.execution))
        .when(|e: &TransformError| {
            matches!(e, TransformError::Destination(d) if d.is_transient()) && !cancel.is_cancelled()
        })
        .notify(|e: &TransformError, delay: std::time::Duration| {
            tracing::warn!(model = %id, error = %e, ?delay, "model failed in the warehouse; retrying");
        });
    // Cancelling drops the session: its connection closes and PostgreSQL rolls back.
    tokio::select! {
        _ = cancel.cancelled() => Err(TransformError::Cancelled),
        outcome = work => outcome,
    }
}

fn already_published(scope: &Recomputed, partitions: Vec<String>, had_table: bool) -> Outcome {
    Outcome {
        recomputed: scope.clone(),
        rows: 0,
        rows_loaded: 0,
        rows_replaced: 0,
        partitions,
        has_checks: false,
        quarantined: 0,
        undated: 0,
        warnings: vec!["already published by this run (load ledger)".into()],
        blocked: None,
        had_table,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn unread(sql: &str) -> BTreeSet<String> {
        let ctx = SessionContext::new();
        ctx.sql("CREATE SCHEMA d1").await.unwrap();
        ctx.sql("CREATE TABLE d1.profiles (id VARCHAR, email VARCHAR, address VARCHAR)")
            .await
            .unwrap();
        let plan = logical_plan(&ctx, sql, "test").await.unwrap();
        unread_in(&ctx, &plan, &["profiles"]).await.unwrap()
    }

    #[tokio::test]
    async fn a_column_is_unread_only_when_nothing_in_the_query_uses_it() {
        let address = BTreeSet::from(["d1.profiles.address".to_string()]);
        assert_eq!(unread("SELECT id, email FROM d1.profiles").await, address);
        assert!(unread("SELECT * FROM d1.profiles").await.is_empty());
        for sql in [
            "SELECT id FROM d1.profiles WHERE address IS NOT NULL",
            "SELECT id, email FROM d1.profiles ORDER BY address",
            "SELECT count(DISTINCT address) AS n FROM d1.profiles",
            "SELECT p.id FROM d1.profiles AS p JOIN d1.profiles AS q ON p.address = q.id",
        ] {
            let unread = unread(sql).await;
            assert!(!unread.contains("d1.profiles.address"), "{sql}: {unread:?}");
        }
    }
}
