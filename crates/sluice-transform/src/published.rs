//! Models as published, read without running them: their checks over the tables
//! the lake holds now (`sluice test`), a preview of their rows (`sluice show`) and
//! the SQL they run (`sluice compile`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, Int64Array, RecordBatch};
use datafusion::common::TableReference;
use sluice_core::lake::Lake;
use sluice_core::typing::Rejected;

use crate::catalog::{self, D1View};
use crate::checks::{run_checks, CheckSpec, Severity};
use crate::error::TransformError;
use crate::project::{Model, ModelProject};

/// What one check found over a published table.
#[derive(Debug, Clone)]
pub enum CheckResult {
    Passed,
    /// The check's condition does not hold: `message` says how, `rows` are the
    /// failing rows (row-level checks) as the quarantine would keep them.
    Failed {
        message: String,
        rows: Vec<Rejected>,
    },
    /// The check could not run: the model is not published, or its SQL fails
    /// against the published table (a column the table no longer has).
    Error(String),
}

/// One check of one model, run over the lake.
#[derive(Debug, Clone)]
pub struct CheckOutcome {
    /// `d2a.orders_clean`.
    pub model: String,
    /// The check's display name (`not_null(id)`, or its `name:`).
    pub check: String,
    pub severity: Severity,
    pub result: CheckResult,
    pub duration: Duration,
}

/// Runs the checks `selected` keeps, for every model of `project`, over the model's
/// table as the lake holds it (nothing is computed, published or quarantined).
/// `Err` only when the lake cannot be read at all.
pub async fn check_published(
    project: &ModelProject,
    lake: &Lake,
    selected: impl Fn(&Model, &CheckSpec) -> bool,
) -> Result<Vec<CheckOutcome>, TransformError> {
    let mut outcomes = Vec::new();
    if project.models.iter().all(|m| m.config.checks.is_empty()) {
        return Ok(outcomes);
    }
    let ctx = catalog::session(project, lake, D1View::Policy).await?;
    for model in &project.models {
        let checks: Vec<&CheckSpec> = model
            .config
            .checks
            .iter()
            .filter(|c| selected(model, c))
            .collect();
        if checks.is_empty() {
            continue;
        }
        let id = model.qualified_name();
        let reference = TableReference::partial(model.layer.as_str(), model.name.as_str());
        let table = match ctx.table_provider(reference).await {
            Ok(table) => Ok(table),
            Err(_) => Err(format!(
                "{id} is not published in the lake: run `sluice run --select {id}` first"
            )),
        };
        let rows = match &table {
            Ok(_) => count_rows(&ctx, model).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        };
        for check in checks {
            let started = Instant::now();
            let result = match (&table, &rows) {
                (Ok(table), Ok(rows)) => {
                    let found = run_checks(
                        &ctx,
                        std::slice::from_ref(check),
                        table.schema(),
                        Arc::clone(table),
                        *rows,
                    )
                    .await;
                    match found {
                        Ok(failures) => match failures.into_iter().next() {
                            None => CheckResult::Passed,
                            Some(f) => CheckResult::Failed {
                                message: f.message,
                                rows: f.rows,
                            },
                        },
                        Err(e) => CheckResult::Error(sluice_core::secret::redact(&e.to_string())),
                    }
                }
                (Err(e), _) | (_, Err(e)) => CheckResult::Error(e.clone()),
            };
            outcomes.push(CheckOutcome {
                model: id.clone(),
                check: check.display_name(),
                severity: check.severity,
                result,
                duration: started.elapsed(),
            });
        }
    }
    Ok(outcomes)
}

async fn count_rows(
    ctx: &datafusion::execution::context::SessionContext,
    model: &Model,
) -> Result<u64, TransformError> {
    let sql = format!(
        "SELECT count(*) FROM {}.\"{}\"",
        model.layer.as_str(),
        model.name
    );
    let batches = catalog::user_sql(ctx, &sql)
        .await
        .map_err(|e| TransformError::engine(model.qualified_name(), e))?
        .collect()
        .await
        .map_err(|e| TransformError::engine(model.qualified_name(), e))?;
    Ok(first_count(&batches))
}

fn first_count(batches: &[RecordBatch]) -> u64 {
    batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| b.column(0).as_any().downcast_ref::<Int64Array>().cloned())
        .filter(|a| a.is_valid(0))
        .map_or(0, |a| a.value(0).max(0) as u64)
}

/// Up to `limit` rows of `model`'s SQL over the lake as it is now, D1 seen through
/// the `pii:` policy; nothing is written. A model reading another model reads what
/// the lake holds of it.
pub async fn preview(
    project: &ModelProject,
    lake: &Lake,
    model: &Model,
    limit: usize,
) -> Result<Vec<RecordBatch>, TransformError> {
    let sql = format!(
        "SELECT * FROM (\n{}\n) AS __model LIMIT {limit}",
        model.sql.trim().trim_end_matches(';')
    );
    let ctx = catalog::session(project, lake, D1View::Policy).await?;
    crate::run::plan(&ctx, model).await?;
    catalog::user_sql(&ctx, &sql)
        .await
        .map_err(|e| TransformError::engine(model.qualified_name(), e))?
        .collect()
        .await
        .map_err(|e| TransformError::engine(model.qualified_name(), e))
}
