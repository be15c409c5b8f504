//! The temporary objects one model's warehouse session creates before its `SELECT`
//! runs: the hash key (a bound parameter, never SQL text), the currency rates with
//! `convert_currency`, and a `pii:` policy view per D1 table the model reads. All
//! live in `pg_temp` and end with the session.

use sluice_core::pushdown::{Warehouse, WarehouseSession};

use super::dialect::{self, literal, quote, CONVERT_FUNCTION, KEYS_TABLE};
use super::policy_action;
use crate::error::TransformError;
use crate::project::{Model, ModelProject};

/// The session's temporary objects: the hash key, the currency rates and
/// `convert_currency`, and a policy view per D1 table the model reads.
pub(super) async fn setup(
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
                &format!(
                    "INSERT INTO pg_temp._sluice_rates VALUES {}",
                    chunk.join(", ")
                ),
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
    for dep in super::d1_tables(model) {
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
