//! A model's checks in the warehouse: each check's SQL planned by DataFusion over the
//! model's output (`this`), unparsed to PostgreSQL over the staging table, and its
//! failing rows brought back as JSON quarantine records, as local checks report them.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SessionContext;
use sluice_core::pushdown::WarehouseSession;
use sluice_core::typing::{Origin, Rejected};

use super::dialect::{self, quote, Relations};
use super::{logical_plan, refuse_functions};
use crate::checks::{CheckSpec, Severity, THIS};
use crate::error::TransformError;
use crate::project::Model;

/// A check's failing-rows (or freshness) query as PostgreSQL over the staging table.
pub(super) async fn check_sql(
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

/// Rows of `stage` matching `condition`, each as a JSON object.
pub(super) async fn rows_as_json(
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

pub(super) fn rejected(origin: &str, reason: &str, rows: Vec<String>) -> Vec<Rejected> {
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
pub(super) async fn run_checks(
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
