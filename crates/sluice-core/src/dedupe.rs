//! One row per primary key in what a `merge` run stages (`dedupe: last | first | error`).
//!
//! A merge keeps one row per key, but an input may repeat a key (a customer
//! exported twice in one file). The destination would keep one of them and the
//! lake's D1 both, so the two would disagree: the repeats are settled here, on the
//! staged files, before either is written. Rows are ordered as staged — by slice
//! (file name), then partition, then line — the order the destination loads in.
//! The rows that lose are quarantined with the key and the policy, never dropped.

use std::collections::{HashMap, HashSet};

use arrow::array::{BooleanArray, RecordBatch};
use arrow::row::{RowConverter, SortField};
use serde::Deserialize;

use crate::lake::{parquet_batches, read_parquet, Lake, LakeError};
use crate::typing::{Origin, Rejected};

/// Which of several rows with the same primary key in one run is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dedupe {
    /// The row read last (default).
    #[default]
    Last,
    /// The row read first.
    First,
    /// Fail the stream, naming the key.
    Error,
}

impl Dedupe {
    fn as_str(&self) -> &'static str {
        match self {
            Dedupe::Last => "last",
            Dedupe::First => "first",
            Dedupe::Error => "error",
        }
    }
}

/// Why de-duplication stopped.
#[derive(Debug, thiserror::Error)]
pub enum DedupeError {
    #[error("primary key {key} appears {count} times in this run's input (`dedupe: error`); fix the input or set `dedupe: last` or `first`")]
    Duplicate { key: String, count: usize },
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("de-duplicating {path}: {message}")]
    Data { path: String, message: String },
}

/// Removes repeated keys from `staged` (lake paths, in load order), rewriting the
/// files that held losing rows. Returns the losers, for quarantine.
pub async fn dedupe_staged(
    lake: &Lake,
    staged: &[String],
    key: &[String],
    policy: Dedupe,
) -> Result<Vec<Rejected>, DedupeError> {
    if key.is_empty() || staged.is_empty() {
        return Ok(Vec::new());
    }
    // Pass 1: where each key occurs, in order.
    let mut occurrences: HashMap<Vec<u8>, Vec<(usize, usize)>> = HashMap::new();
    let mut converter: Option<RowConverter> = None;
    for (file, path) in staged.iter().enumerate() {
        let mut offset = 0;
        for batch in parquet_batches(lake, path).await? {
            let batch = batch.map_err(|e| data(path, e))?;
            let columns = key_columns(&batch, key).map_err(|m| data(path, m))?;
            if converter.is_none() {
                let fields = columns
                    .iter()
                    .map(|c| SortField::new(c.data_type().clone()))
                    .collect();
                converter = Some(RowConverter::new(fields).map_err(|e| data(path, e))?);
            }
            let rows = converter
                .as_ref()
                .expect("set above")
                .convert_columns(&columns)
                .map_err(|e| data(path, e))?;
            for (i, row) in rows.iter().enumerate() {
                occurrences
                    .entry(row.as_ref().to_vec())
                    .or_default()
                    .push((file, offset + i));
            }
            offset += batch.num_rows();
        }
    }
    // Losers per file.
    let mut losers: HashMap<usize, HashSet<usize>> = HashMap::new();
    for places in occurrences.values().filter(|p| p.len() > 1) {
        let keep = match policy {
            Dedupe::Last => places.len() - 1,
            Dedupe::First => 0,
            Dedupe::Error => {
                let (file, row) = places[0];
                let key = describe_key(lake, &staged[file], row, key).await?;
                return Err(DedupeError::Duplicate {
                    key,
                    count: places.len(),
                });
            }
        };
        for (n, (file, row)) in places.iter().enumerate() {
            if n != keep {
                losers.entry(*file).or_default().insert(*row);
            }
        }
    }
    // Pass 2: rewrite the files that held losers.
    let mut rejected = Vec::new();
    let mut files: Vec<_> = losers.into_iter().collect();
    files.sort_by_key(|(file, _)| *file);
    for (file, rows) in files {
        let path = &staged[file];
        let batches = read_parquet(lake, path).await?;
        let Some(schema) = batches.first().map(|b| b.schema()) else {
            continue;
        };
        let mut writer = lake.parquet_writer(path, schema)?;
        let mut offset = 0;
        for batch in &batches {
            let keep: BooleanArray = (0..batch.num_rows())
                .map(|i| Some(!rows.contains(&(offset + i))))
                .collect();
            for i in (0..batch.num_rows()).filter(|i| rows.contains(&(offset + i))) {
                let raw = row_json(&batch.slice(i, 1)).map_err(|m| data(path, m))?;
                rejected.push(Rejected {
                    origin: Origin {
                        page: path.as_str().into(),
                        line: (offset + i + 1) as u64,
                    },
                    reason: format!(
                        "primary key {} repeats in this run's input; `dedupe: {}` keeps another row",
                        key_text(&raw, key),
                        policy.as_str()
                    ),
                    raw,
                });
            }
            let kept =
                arrow::compute::filter_record_batch(batch, &keep).map_err(|e| data(path, e))?;
            writer.write(&kept).await?;
            offset += batch.num_rows();
        }
        writer.close().await?;
    }
    Ok(rejected)
}

fn data(path: &str, message: impl std::fmt::Display) -> DedupeError {
    DedupeError::Data {
        path: path.to_string(),
        message: message.to_string(),
    }
}

fn key_columns(batch: &RecordBatch, key: &[String]) -> Result<Vec<arrow::array::ArrayRef>, String> {
    key.iter()
        .map(|k| {
            batch
                .column_by_name(k)
                .cloned()
                .ok_or_else(|| format!("no key column `{k}`"))
        })
        .collect()
}

/// One row as a JSON object.
fn row_json(batch: &RecordBatch) -> Result<String, String> {
    let mut out = Vec::new();
    {
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut out);
        writer
            .write(batch)
            .and_then(|_| writer.finish())
            .map_err(|e| e.to_string())?;
    }
    Ok(String::from_utf8_lossy(&out).trim_end().to_string())
}

/// `(id=5)` from a row's JSON.
fn key_text(raw: &str, key: &[String]) -> String {
    let value: serde_json::Value = serde_json::from_str(raw).unwrap_or_default();
    let parts: Vec<String> = key
        .iter()
        .map(|k| format!("{k}={}", value.get(k).cloned().unwrap_or_default()))
        .collect();
    format!("({})", parts.join(", "))
}

async fn describe_key(
    lake: &Lake,
    path: &str,
    row: usize,
    key: &[String],
) -> Result<String, DedupeError> {
    let mut offset = 0;
    for batch in read_parquet(lake, path).await? {
        if row < offset + batch.num_rows() {
            let raw = row_json(&batch.slice(row - offset, 1)).map_err(|m| data(path, m))?;
            return Ok(key_text(&raw, key));
        }
        offset += batch.num_rows();
    }
    Ok(String::new())
}
