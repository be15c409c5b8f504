//! Models that run inside the warehouse (`models: { engine: destination }`, or
//! `engine: destination` in a model's YAML): the same SQL, planned by DataFusion as
//! for `engine: local`, unparsed to PostgreSQL (see [`dialect`]) and run where the
//! data is, so a model is as big as the warehouse, not as sluice's memory.
//!
//! What a model reads there: `d1.<table>` is a temporary view over the published D1
//! table with the `pii:` policy applied as for local models (hash through SHA-256,
//! masks; an action PostgreSQL cannot compute is an error if the model reads the
//! column); `d2a.<model>` / `d2b.<model>` are the published tables.
//!
//! One model is one [`WarehouseSession`] (one transaction):
//! 1. temp objects: the hash key (bound as a parameter, never in SQL text), the
//!    currency rates and `convert_currency`, the D1 views;
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

mod dialect;

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::LogicalPlan;
use sluice_core::config::ModelEngine;
use sluice_core::destination::{Destination, LoadTail, TableSpec, WriteMode};
use sluice_core::pushdown::{Warehouse, WarehouseSession};
use sluice_core::run::RunRecord;
use sluice_core::typing::{Origin, Rejected};
use tokio_util::sync::CancellationToken;

use crate::checks::{CheckSpec, Severity, THIS};
use crate::error::TransformError;
use crate::project::{find_ignore_case, Model, ModelProject};
use crate::run::{incremental_sql, Outcome, Recomputed};
use dialect::{literal, quote, Relations, CONVERT_FUNCTION, KEYS_TABLE};

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
                if let Err(why) = dialect::policy_expr(action, "x") {
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
fn policy_action(
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

async fn logical_plan(
    ctx: &SessionContext,
    sql: &str,
    context: &str,
) -> Result<LogicalPlan, TransformError> {
    ctx.state()
        .create_logical_plan(sql)
        .await
        .map_err(|e| TransformError::engine(context, e))
}

fn refuse_functions(
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
            check.is_none().then(|| find_ignore_case(&model.sql, &name)).flatten(),
            format!(
                "{}{place} calls `{name}`, which cannot run with engine: destination: {why}",
                model.qualified_name()
            ),
        )
        .into())
}

/// The warehouse objects `model` and its checks may name (without a warehouse: the
/// layers' own schema names, enough to find what cannot be mapped).
fn relations(
    project: &ModelProject,
    model: &Model,
    warehouse: Option<&dyn Warehouse>,
) -> Relations {
    let mut relations = Relations::default();
    let d1: BTreeSet<&str> = model
        .depends_on
        .iter()
        .filter(|d| d.layer == "d1")
        .map(|d| d.name.as_str())
        .chain(model.config.checks.iter().filter_map(|c| {
            c.relationships
                .as_ref()
                .and_then(|r| r.to.strip_prefix("d1."))
        }))
        .collect();
    for table in d1 {
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
    relations.insert("", THIS, "pg_temp._sluice_model".into());
    relations
}

fn d1_view(table: &str) -> String {
    format!("pg_temp.{}", quote(&format!("_sluice_d1__{table}")))
}

/// A check's failing-rows (or freshness) query as PostgreSQL over the staging table.
async fn check_sql(
    ctx: &SessionContext,
    model: &Model,
    check: &CheckSpec,
    schema: SchemaRef,
    relations: &Relations,
) -> Result<Option<String>, TransformError> {
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let sql = match (check.failing_rows_sql(&columns), &check.freshness) {
        (Some(sql), _) => sql,
        (None, Some(f)) => format!(
            "SELECT CAST(max(CAST({c} AS TIMESTAMP)) AS VARCHAR) AS latest, \
             CAST(date_part('epoch', now() - max(CAST({c} AS TIMESTAMP))) AS BIGINT) AS age FROM {THIS}",
            c = quote(&f.column)
        ),
        (None, None) => return Ok(None),
    };
    let name = check.display_name();
    let this = TableReference::bare(THIS);
    let _ = ctx.deregister_table(this.clone());
    let empty: Arc<dyn TableProvider> = Arc::new(
        MemTable::try_new(schema, vec![vec![]]).map_err(|e| TransformError::engine("check", e))?,
    );
    ctx.register_table(this.clone(), empty)
        .map_err(|e| TransformError::engine("check", e))?;
    let plan = logical_plan(ctx, &sql, &format!("check {name}")).await;
    let _ = ctx.deregister_table(this);
    let plan = plan?;
    refuse_functions(model, &plan, Some(&name))?;
    dialect::unparse(&plan, relations).map(Some).map_err(|e| {
        model
            .sql_error(
                None,
                format!(
                    "check {name} of {} cannot be written as PostgreSQL: {e}",
                    model.qualified_name()
                ),
            )
            .into()
    })
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
    let mut checks = Vec::new();
    for check in &model.config.checks {
        checks.push((check, check_sql(ctx, model, check, target.clone(), &relations).await?));
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
    let work = async {
        let Some(mut session) = warehouse.begin(&spec, &load_id).await? else {
            // The ledger has this publish: a retried run, nothing to do.
            return Ok(already_published(scope, partitions.clone(), had_table));
        };
        setup(session.as_mut(), project, model, warehouse).await?;
        let stage = session.stage().to_string();
        let rows = session
            .execute(&format!("INSERT INTO {stage} SELECT * FROM ({select}) AS _sluice_m"), &[])
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
        let layer = model.layer.as_str();
        let kept_at =
            sluice_core::quarantine::write(lake, layer, &model.name, &record.run_id, &quarantine)
                .await?
                .map(|_| {
                    format!(
                        "failing rows: `sluice query \"select * from quarantine.{layer}__{}\"`",
                        model.name
                    )
                });
        if !errors.is_empty() {
            session.block(&quarantine, &record.run_id).await?;
            errors.extend(kept_at);
            return Ok(Outcome {
                recomputed: Recomputed::Failed,
                rows,
                rows_loaded: 0,
                rows_replaced: 0,
                partitions: Vec::new(),
                has_checks: true,
                quarantined: quarantine.len() as u64,
                undated: undated_rows,
                warnings,
                blocked: Some(errors.join("; ")),
                had_table,
            });
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

/// The session's temporary objects: the hash key, the currency rates and
/// `convert_currency`, and a policy view per D1 table the model reads.
async fn setup(
    session: &mut dyn WarehouseSession,
    project: &ModelProject,
    model: &Model,
    warehouse: &dyn Warehouse,
) -> Result<(), TransformError> {
    // Without a key the table stays empty and `hmac_sha256()` is NULL, as locally.
    session
        .execute(
            "CREATE TEMP TABLE _sluice_keys (ipad bytea NOT NULL, opad bytea NOT NULL) ON COMMIT DROP",
            &[],
        )
        .await?;
    if let Some((inner, outer)) = project.pii.keys.hmac_pads() {
        session
            .execute(
                &format!("INSERT INTO {KEYS_TABLE} (ipad, opad) VALUES ($1, $2)"),
                &[&inner[..], &outer[..]],
            )
            .await?;
    }
    session
        .execute(
            "CREATE TEMP TABLE _sluice_rates (day date NOT NULL, src text NOT NULL, \
             dst text NOT NULL, rate numeric NOT NULL) ON COMMIT DROP",
            &[],
        )
        .await?;
    let values: Vec<String> = project
        .rates
        .entries()
        .map(|(day, from, to, rate)| {
            format!("(DATE '{day}', {}, {}, {rate})", literal(from), literal(to))
        })
        .collect();
    for chunk in values.chunks(1000) {
        session
            .execute(
                &format!("INSERT INTO pg_temp._sluice_rates VALUES {}", chunk.join(", ")),
                &[],
            )
            .await?;
    }
    // The rate on or before the day, else the inverse pair; the same rule as local.
    session
        .execute(
            "CREATE FUNCTION pg_temp._sluice_rate(f text, t text, d date) RETURNS numeric \
             LANGUAGE sql STABLE AS $$ SELECT coalesce( \
             (SELECT rate FROM pg_temp._sluice_rates WHERE src = f AND dst = t AND day <= d ORDER BY day DESC LIMIT 1), \
             (SELECT CAST(1 AS numeric(60, 40)) / rate FROM pg_temp._sluice_rates \
              WHERE src = t AND dst = f AND day <= d AND rate <> 0 ORDER BY day DESC LIMIT 1)) $$",
            &[],
        )
        .await?;
    session
        .execute(
            &format!(
                "CREATE FUNCTION {CONVERT_FUNCTION}(amount numeric, f text, t text, d date) RETURNS numeric \
                 LANGUAGE sql STABLE AS $$ SELECT round(amount * CASE WHEN upper(f) = upper(t) THEN 1 \
                 ELSE coalesce(pg_temp._sluice_rate(upper(f), upper(t), d), \
                 pg_temp._sluice_rate(upper(f), 'USD', d) * pg_temp._sluice_rate('USD', upper(t), d)) END, 6) $$"
            ),
            &[],
        )
        .await?;
    for dep in model.depends_on.iter().filter(|d| d.layer == "d1").map(|d| d.name.as_str()).chain(
        model.config.checks.iter().filter_map(|c| {
            c.relationships
                .as_ref()
                .and_then(|r| r.to.strip_prefix("d1."))
        }),
    ) {
        create_d1_view(session, project, warehouse, dep).await?;
    }
    Ok(())
}

/// `pg_temp."_sluice_d1__<table>"`: the published D1 table as models see it, with the
/// `pii:` policy applied and a `dt` date column (the partition column's date, or the
/// load date of an unpartitioned table, as the lake's `dt=` folders hold).
async fn create_d1_view(
    session: &mut dyn WarehouseSession,
    project: &ModelProject,
    warehouse: &dyn Warehouse,
    table: &str,
) -> Result<(), TransformError> {
    let published = warehouse.published_table("d1", table);
    let columns: Vec<String> = session
        .query_text(&format!(
            "SELECT CAST(attname AS TEXT) FROM pg_attribute WHERE attrelid = to_regclass({}) \
             AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            literal(&published)
        ))
        .await?
        .into_iter()
        .filter_map(|row| row.into_iter().next().flatten())
        .collect();
    if columns.is_empty() {
        return Err(TransformError::engine(
            format!("d1.{table}"),
            format!("{published} is not in the destination: run its stream first"),
        ));
    }
    let mut select = Vec::new();
    for column in columns.iter().filter(|c| *c != "dt") {
        let value = format!("CAST(t.{} AS TEXT)", quote(column));
        match policy_action(project, table, column) {
            None => select.push(format!("t.{}", quote(column))),
            Some(action) => match dialect::policy_expr(action, &value) {
                Ok(Some(expr)) => select.push(format!("{expr} AS {}", quote(column))),
                Ok(None) => {}
                // Not read by the model (validate refused it otherwise): not shown.
                Err(_) => select.push(format!("CAST(NULL AS TEXT) AS {}", quote(column))),
            },
        }
    }
    let dt = project
        .d1_tables
        .get(table)
        .and_then(|d| d.partition_column.clone())
        .filter(|c| columns.contains(c))
        .map(|c| format!("CAST(t.{} AS DATE)", quote(&c)))
        .unwrap_or_else(|| {
            if columns.iter().any(|c| c == "dt") {
                "CAST(t.\"dt\" AS DATE)".into()
            } else {
                "CAST(t.\"_sluice_loaded_at\" AS DATE)".into()
            }
        });
    select.push(format!("{dt} AS \"dt\""));
    session
        .execute(
            &format!(
                "CREATE TEMP VIEW {} AS SELECT {} FROM {published} AS t",
                quote(&format!("_sluice_d1__{table}")),
                select.join(", ")
            ),
            &[],
        )
        .await?;
    Ok(())
}

/// Rows of `stage` matching `condition`, each as a JSON object.
async fn rows_as_json(
    session: &mut dyn WarehouseSession,
    from: &str,
    condition: &str,
) -> Result<Vec<String>, TransformError> {
    Ok(session
        .query_text(&format!(
            "SELECT CAST(row_to_json(r) AS TEXT) FROM (SELECT * FROM {from} WHERE {condition}) AS r"
        ))
        .await?
        .into_iter()
        .filter_map(|row| row.into_iter().next().flatten())
        .collect())
}

fn rejected(origin: &str, reason: &str, rows: Vec<String>) -> Vec<Rejected> {
    let page: Arc<str> = Arc::from(origin);
    rows.into_iter()
        .enumerate()
        .map(|(i, raw)| Rejected {
            origin: Origin {
                page: page.clone(),
                line: i as u64 + 1,
            },
            reason: reason.to_string(),
            raw,
        })
        .collect()
}

/// The checks over the staging table, as local checks report them:
/// `(severity, message, failing rows)` per failed check.
async fn run_checks(
    session: &mut dyn WarehouseSession,
    checks: &[(&CheckSpec, Option<String>)],
    rows: u64,
) -> Result<Vec<(Severity, String, Vec<Rejected>)>, TransformError> {
    let mut failures = Vec::new();
    for (check, sql) in checks {
        let name = check.display_name();
        if let (Some(sql), None) = (sql, &check.freshness) {
            let found = session
                .query_text(&format!(
                    "SELECT CAST(row_to_json(r) AS TEXT) FROM ({sql}) AS r"
                ))
                .await?
                .into_iter()
                .filter_map(|row| row.into_iter().next().flatten())
                .collect::<Vec<_>>();
            if !found.is_empty() {
                let rows = rejected(
                    &format!("check:{name}"),
                    &format!("check {name} failed"),
                    found,
                );
                failures.push((
                    check.severity,
                    format!("{name}: {} failing rows", rows.len()),
                    rows,
                ));
            }
        } else if let Some(rc) = &check.row_count {
            if rc.min.is_some_and(|m| rows < m) || rc.max.is_some_and(|m| rows > m) {
                let expected = match (rc.min, rc.max) {
                    (Some(a), Some(b)) => format!("{a}..={b}"),
                    (Some(a), None) => format!("at least {a}"),
                    (None, Some(b)) => format!("at most {b}"),
                    (None, None) => "any".into(),
                };
                failures.push((
                    check.severity,
                    format!("{name}: {rows} rows, expected {expected}"),
                    Vec::new(),
                ));
            }
        } else if let (Some(f), Some(sql)) = (&check.freshness, sql) {
            let max_age = crate::checks::parse_age(&f.max_age)
                .map_err(|e| TransformError::engine("check", e))?;
            let found = session
                .query_text(&format!(
                    "SELECT CAST(latest AS TEXT), CAST(age AS TEXT) FROM ({sql}) AS r"
                ))
                .await?;
            let row = found.into_iter().next().unwrap_or_default();
            let latest = row.first().cloned().flatten();
            let age: Option<i64> = row.get(1).cloned().flatten().and_then(|a| a.parse().ok());
            if age.is_none_or(|a| a > max_age) {
                failures.push((
                    check.severity,
                    format!(
                        "{name}: latest {} is older than {}",
                        latest.unwrap_or_else(|| "(no rows)".into()),
                        f.max_age
                    ),
                    Vec::new(),
                ));
            }
        }
    }
    Ok(failures)
}
