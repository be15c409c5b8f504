//! `sluice forget --subject <value>`: erases one person from the lake's D1/D2 tables
//! and quarantines and from the destination, and records the erasure in the audit
//! log by a hash of the subject only.
//!
//! D1 rows match when a personal column (marked by its connector or by a `pii:`
//! rule) holds the subject (case and surrounding spaces ignored); D2 and quarantine
//! rows match when any text holds one of those D1 values or its policy hash. Lake
//! Parquet files with a match are rewritten without it (staged, then moved over the
//! original). Landed pages lose the records holding the subject.

use std::collections::BTreeSet;
use std::path::Path;

use sha2::{Digest, Sha256};
use sluice_core::lake::{layout, read_parquet, Lake};
use sluice_transform::arrow::array::{Array, AsArray, BooleanArray};
use sluice_transform::arrow::compute::filter_record_batch;
use sluice_transform::arrow::datatypes::DataType;
use sluice_transform::ModelProject;

use crate::exit;
use crate::project::Project;

#[derive(clap::Args, Debug)]
pub struct ForgetArgs {
    /// The person's identifying value as stored in a personal column (e.g. an email).
    #[arg(long)]
    pub subject: String,
}

pub async fn run(pipeline: &Path, args: ForgetArgs) -> u8 {
    let project = match Project::load(pipeline) {
        Ok(p) => p,
        Err(e) => return e.report(),
    };
    let specs: Vec<_> = project.sources.iter().flat_map(|s| s.streams()).collect();
    let models = match ModelProject::load(&project.config) {
        Ok(m) => m.with_streams(specs.iter().cloned()),
        Err(e) => {
            crate::project::print_config_error(&e);
            return exit::CONFIG;
        }
    };
    let subject = args.subject.trim().to_string();
    if subject.is_empty() {
        crate::logging::print_error!("--subject is empty");
        return exit::CONFIG;
    }
    let subject_hash = models
        .pii
        .keys
        .hmac_hex(&subject)
        .unwrap_or_else(|| hex::encode(Sha256::digest(subject.as_bytes())));
    let actor = sluice_core::audit::Actor::local();
    let details = serde_json::json!({ "subject_hash": subject_hash });
    if let Err(code) = super::audit::record(
        &project.lake,
        &project.config.name,
        "forget",
        &actor,
        details,
    )
    .await
    {
        return code;
    }
    match erase(&project, &models, &specs, &subject).await {
        Ok(summary) => {
            println!(
                "forgot subject {}: {} lake rows, {} warehouse rows",
                &subject_hash[..12],
                summary.0,
                summary.1
            );
            exit::OK
        }
        Err(e) => {
            crate::logging::print_error!("{}", sluice_core::secret::redact(&e));
            exit::RUN_FAILED
        }
    }
}

/// Rows removed from the lake and from the destination.
async fn erase(
    project: &Project,
    models: &ModelProject,
    specs: &[sluice_core::source::StreamSpec],
    subject: &str,
) -> Result<(u64, u64), String> {
    let lake = &project.lake;
    let (mut lake_rows, mut warehouse_rows) = (0, 0);
    let mut values: BTreeSet<String> = BTreeSet::from([subject.to_string()]);
    for spec in specs {
        let columns: Vec<String> = spec
            .schema
            .fields
            .iter()
            .filter(|f| f.pii || models.pii.action(&spec.table, &f.name, false).is_some())
            .map(|f| f.name.clone())
            .collect();
        if columns.is_empty() {
            continue;
        }
        let found = rewrite_table(lake, "d1", &spec.table, Some(&columns), &|v| {
            v.trim().eq_ignore_ascii_case(subject)
        })
        .await?;
        lake_rows += found.rows;
        values.extend(found.values);
    }
    // What the subject looks like past D1: as stored, and as the policy hashes it.
    let hashed: Vec<String> = values
        .iter()
        .filter_map(|v| models.pii.keys.hmac_hex(v))
        .collect();
    let clear: Vec<String> = values.iter().map(|v| v.to_lowercase()).collect();
    values.extend(hashed);
    let targets: Vec<String> = values.into_iter().collect();
    for spec in specs {
        lake_rows += forget_quarantine(lake, "d1", &spec.table, &targets).await?;
        let columns: Vec<String> = spec.schema.fields.iter().map(|f| f.name.clone()).collect();
        warehouse_rows += project
            .destination
            .forget("d1", &spec.table, &columns, &targets)
            .await
            .map_err(|e| e.to_string())?;
    }
    // Landed pages: the records holding a clear value, wherever they nest.
    lake_rows += forget_raw_pages(lake, &clear).await?;
    for model in &models.models {
        let (layer, table) = (model.layer.as_str(), model.table_name());
        let found = rewrite_table(lake, layer, table, None, &|v| {
            targets.iter().any(|t| t == v)
        })
        .await?;
        lake_rows += found.rows;
        lake_rows += forget_quarantine(lake, layer, table, &targets).await?;
        warehouse_rows += project
            .destination
            .forget(layer, table, &found.text_columns, &targets)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok((lake_rows, warehouse_rows))
}

#[derive(Default)]
struct Found {
    rows: u64,
    /// The matching values as stored.
    values: BTreeSet<String>,
    /// The text columns of the table's files.
    text_columns: Vec<String>,
}

/// Rewrites every Parquet file of `layer/table` without the rows where one of
/// `columns` (default: every text column) satisfies `matches`.
async fn rewrite_table(
    lake: &Lake,
    layer: &str,
    table: &str,
    columns: Option<&[String]>,
    matches: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Found, String> {
    let mut found = Found::default();
    let folder = format!("{}/", layout::table(layer, table));
    for object in lake.list(&folder).await.map_err(|e| e.to_string())? {
        if !object.path.ends_with(".parquet") {
            continue;
        }
        let batches = read_parquet(lake, &object.path)
            .await
            .map_err(|e| e.to_string())?;
        let mut kept = Vec::with_capacity(batches.len());
        let mut removed = 0;
        for batch in &batches {
            let schema = batch.schema();
            let mut keep = vec![true; batch.num_rows()];
            for (i, field) in schema.fields().iter().enumerate() {
                let column = batch.column(i).as_ref();
                if !matches!(field.data_type(), DataType::Utf8 | DataType::Utf8View) {
                    continue;
                }
                let text = |row| text_at(column, row);
                if !found.text_columns.contains(field.name()) {
                    found.text_columns.push(field.name().clone());
                }
                if columns.is_some_and(|c| !c.contains(field.name())) {
                    continue;
                }
                for (row, keep) in keep.iter_mut().enumerate() {
                    if let Some(value) = text(row).filter(|v| matches(v)) {
                        *keep = false;
                        found.values.insert(value.to_string());
                    }
                }
            }
            let gone = keep.iter().filter(|k| !**k).count();
            removed += gone;
            kept.push(if gone == 0 {
                batch.clone()
            } else {
                filter_record_batch(batch, &BooleanArray::from(keep)).map_err(|e| e.to_string())?
            });
        }
        if removed == 0 {
            continue;
        }
        let staged = format!(
            "{}/forget/{}.parquet",
            layout::staging("forget"),
            object.path.replace('/', "__")
        );
        let schema = batches[0].schema();
        let mut writer = lake
            .parquet_writer(&staged, schema)
            .map_err(|e| e.to_string())?;
        for batch in &kept {
            writer.write(batch).await.map_err(|e| e.to_string())?;
        }
        writer.close().await.map_err(|e| e.to_string())?;
        lake.rename(&staged, &object.path)
            .await
            .map_err(|e| e.to_string())?;
        found.rows += removed as u64;
    }
    Ok(found)
}

/// Rewrites the lake quarantine of `layer/table` without the records holding a target.
async fn forget_quarantine(
    lake: &Lake,
    layer: &str,
    table: &str,
    targets: &[String],
) -> Result<u64, String> {
    let mut removed = 0;
    let folder = format!("{}/", layout::quarantine(layer, table));
    for object in lake.list(&folder).await.map_err(|e| e.to_string())? {
        let Some(body) = lake.get(&object.path).await.map_err(|e| e.to_string())? else {
            continue;
        };
        let text = String::from_utf8_lossy(&body);
        let mut kept = String::with_capacity(text.len());
        let mut gone = 0;
        for line in text.split_inclusive('\n') {
            if targets.iter().any(|t| line.contains(t.as_str())) {
                gone += 1;
            } else {
                kept.push_str(line);
            }
        }
        if gone > 0 {
            lake.put(&object.path, kept.into_bytes().into())
                .await
                .map_err(|e| e.to_string())?;
            removed += gone;
        }
    }
    Ok(removed)
}

/// The text of a `Utf8` or `Utf8View` cell.
fn text_at(column: &dyn Array, row: usize) -> Option<&str> {
    if column.is_null(row) {
        return None;
    }
    match column.data_type() {
        DataType::Utf8 => Some(column.as_string::<i32>().value(row)),
        DataType::Utf8View => Some(column.as_string_view().value(row)),
        _ => None,
    }
}

/// Rewrites every landed page holding one of `clear` (lower-cased): in a JSON page,
/// each array element holding it is removed and any remaining string holding it is
/// nulled; in an NDJSON page, its lines are removed. Returns the records removed.
async fn forget_raw_pages(lake: &Lake, clear: &[String]) -> Result<u64, String> {
    let holds = |text: &str| {
        let lower = text.to_lowercase();
        clear.iter().any(|c| lower.contains(c.as_str()))
    };
    let mut removed = 0;
    for object in lake.list("raw/").await.map_err(|e| e.to_string())? {
        if !object.path.ends_with(".zst") {
            continue;
        }
        let body = lake
            .read_page(&object.path)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&body);
        if !holds(&text) {
            continue;
        }
        let rewritten = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(mut value) => {
                removed += prune(&mut value, &holds);
                serde_json::to_vec(&value).map_err(|e| e.to_string())?
            }
            Err(_) => {
                let mut kept = String::with_capacity(text.len());
                for line in text.split_inclusive('\n') {
                    if holds(line) {
                        removed += 1;
                    } else {
                        kept.push_str(line);
                    }
                }
                kept.into_bytes()
            }
        };
        lake.replace_page(&object.path, rewritten.into())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(removed)
}

/// Removes the array elements of `value` holding a match, nulls other matching strings.
fn prune(value: &mut serde_json::Value, holds: &dyn Fn(&str) -> bool) -> u64 {
    use serde_json::Value;
    match value {
        Value::Array(items) => {
            let before = items.len();
            items.retain(|item| !holds(&item.to_string()));
            let mut removed = (before - items.len()) as u64;
            for item in items {
                removed += prune(item, holds);
            }
            removed
        }
        Value::Object(fields) => fields.values_mut().map(|v| prune(v, holds)).sum(),
        Value::String(s) if holds(s) => {
            *value = Value::Null;
            0
        }
        _ => 0,
    }
}
