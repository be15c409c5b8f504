//! Every quarantine in the lake as a table of the SQL engine:
//! `quarantine.<layer>__<table>` (`quarantine.d1__shop_orders`,
//! `quarantine.d2a__orders_clean`), with the columns `run_id`, `origin`, `reason`
//! and `raw` that [`sluice_core::quarantine`] writes. Quarantines are small (bad
//! records, failing check rows): they are read into memory.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SessionContext;
use sluice_core::lake::Lake;
use sluice_core::quarantine::PREFIX;

use crate::error::TransformError;
use crate::project::ModelProject;

/// The engine's schema of the quarantine tables.
pub const SCHEMA: &str = "quarantine";
const COLUMNS: [&str; 4] = ["run_id", "origin", "reason", "raw"];

/// Registers one table per quarantined lake table. With `policy`, the `raw` records of
/// D1 quarantines show their personal fields as the policy's D1 views do (see
/// [`crate::pii::PiiPolicy::apply_to_raw`]); without, as received.
pub async fn register(
    ctx: &SessionContext,
    lake: &Lake,
    policy: Option<&ModelProject>,
) -> Result<(), TransformError> {
    let catalog = ctx.catalog("datafusion").expect("default catalog");
    catalog
        .register_schema(SCHEMA, Arc::new(MemorySchemaProvider::new()))
        .map_err(|e| TransformError::engine("session", e))?;
    // `quarantine/<layer>/<table>/<run>.ndjson`, by `<layer>__<table>`.
    let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for object in lake.list(&format!("{PREFIX}/")).await? {
        let parts: Vec<&str> = object.path.split('/').collect();
        if let [_, layer, table, file] = &parts[parts.len().saturating_sub(4)..] {
            if file.ends_with(".ndjson") {
                tables
                    .entry(format!("{layer}__{table}"))
                    .or_default()
                    .push(object.path.clone());
            }
        }
    }
    let schema = Arc::new(Schema::new(
        COLUMNS
            .iter()
            .map(|c| Field::new(*c, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    for (name, files) in tables {
        // Model quarantines hold rows models computed from the policy's views already.
        let personal = policy
            .zip(name.strip_prefix("d1__"))
            .map(|(project, table)| {
                let marked = project
                    .d1_tables
                    .get(table)
                    .map(|d| d.pii_columns.clone())
                    .unwrap_or_default();
                (project, table, marked)
            });
        let mut columns: Vec<Vec<Option<String>>> = vec![Vec::new(); COLUMNS.len()];
        for file in files {
            let Some(body) = lake.get(&file).await? else {
                continue;
            };
            for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let value: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
                for (i, column) in COLUMNS.iter().enumerate() {
                    let text = match &value[*column] {
                        serde_json::Value::Null => None,
                        serde_json::Value::String(s) => Some(s.clone()),
                        other => Some(other.to_string()),
                    };
                    columns[i].push(match (&personal, *column, text) {
                        (Some((project, table, marked)), "raw", Some(raw)) => {
                            Some(project.pii.apply_to_raw(table, marked, &raw))
                        }
                        (_, _, text) => text,
                    });
                }
            }
        }
        let arrays: Vec<ArrayRef> = columns
            .into_iter()
            .map(|c| Arc::new(StringArray::from(c)) as ArrayRef)
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), arrays)
            .map_err(|e| TransformError::engine("quarantine", e))?;
        let table = MemTable::try_new(schema.clone(), vec![vec![batch]])
            .map_err(|e| TransformError::engine("quarantine", e))?;
        ctx.register_table(
            TableReference::partial(SCHEMA, name.as_str()),
            Arc::new(table),
        )
        .map_err(|e| TransformError::engine("register", e))?;
    }
    Ok(())
}
