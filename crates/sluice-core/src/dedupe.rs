//! One row per primary key in what a `merge` run stages (`dedupe: last | first | error`).
//!
//! A merge keeps one row per key, but an input may repeat a key (a customer
//! exported twice in one file). The destination would keep one of them and the
//! lake's D1 both, so the two would disagree: the repeats are settled here, on the
//! staged files, before either is written. Rows are ordered as staged — by slice
//! (file name), then partition, then line — the order the destination loads in.
//! The rows that lose are quarantined with the key and the policy, never dropped.
//!
//! It runs between a stream's last response and its publish, so it reads what the
//! run still holds in memory ([`KeptBatches`]) and the other files a few ahead.

use std::collections::{HashMap, HashSet};

use arrow::array::{BooleanArray, RecordBatch};
use arrow::row::{RowConverter, SortField};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;

use crate::lake::{read_parquet, Lake, LakeError};
use crate::publish::{KeptBatches, FILES_READ_AHEAD};
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
/// files that held losing rows (and forgetting them in `kept`). Returns the losers,
/// for quarantine.
pub async fn dedupe_staged(
    lake: &Lake,
    staged: &[String],
    kept: &KeptBatches,
    key: &[String],
    policy: Dedupe,
) -> Result<Vec<Rejected>, DedupeError> {
    if key.is_empty() || staged.is_empty() {
        return Ok(Vec::new());
    }
    // Pass 1: where each key occurs, in order.
    let mut occurrences: HashMap<Vec<u8>, Vec<(usize, usize)>> = HashMap::new();
    let mut converter: Option<RowConverter> = None;
    let mut read = futures::stream::iter(staged.iter().enumerate())
        .map(|(file, path)| async move {
            Ok::<_, DedupeError>((file, path, kept.batches_or_read(lake, path).await?))
        })
        .buffered(FILES_READ_AHEAD);
    while let Some((file, path, batches)) = read.try_next().await? {
        let mut offset = 0;
        for batch in batches {
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
        let batches = kept.batches_or_read(lake, path).await?;
        kept.forget(path);
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(ids: &[i64], names: &[&str]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(names.to_vec())),
            ],
        )
        .unwrap()
    }

    async fn write(lake: &Lake, path: &str, batch: &RecordBatch) {
        let mut writer = lake.parquet_writer(path, batch.schema()).unwrap();
        writer.write(batch).await.unwrap();
        writer.close().await.unwrap();
    }

    #[tokio::test]
    async fn kept_files_are_read_from_memory_and_a_rewritten_one_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open("lake", dir.path()).unwrap();
        let (on_disk, in_memory) = ("_staging/r/t/a.parquet", "_staging/r/t/b.parquet");
        write(&lake, on_disk, &batch(&[1, 2], &["a1", "a2"])).await;
        // `b.parquet` is only in memory: if de-duplication read it from the lake, it
        // would fail; key 2 repeats across the two files.
        let kept = KeptBatches::new(1 << 20);
        kept.keep(in_memory, &batch(&[2, 3], &["b2", "b3"]));
        let staged = [on_disk.to_string(), in_memory.to_string()];
        let key = ["id".to_string()];

        let losers = dedupe_staged(&lake, &staged, &kept, &key, Dedupe::Last)
            .await
            .unwrap();
        assert_eq!(losers.len(), 1);
        assert!(losers[0].raw.contains("\"a2\""), "{}", losers[0].raw);
        assert_eq!(&*losers[0].origin.page, on_disk);
        // The file that held the loser is rewritten without it and no longer kept
        // (it was not); the other stays kept and unwritten.
        let rewritten = read_parquet(&lake, on_disk).await.unwrap();
        let ids: Vec<i64> = rewritten
            .iter()
            .flat_map(|b| {
                let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                ids.values().to_vec()
            })
            .collect();
        assert_eq!(ids, [1]);
        assert!(kept.batches(in_memory).is_some());
        assert!(lake.get(in_memory).await.unwrap().is_none());

        // `first` keeps file a's row and rewrites the in-memory file: now it is
        // written to the lake and forgotten in memory.
        let kept = KeptBatches::new(1 << 20);
        kept.keep(in_memory, &batch(&[1, 3], &["b1", "b3"]));
        let losers = dedupe_staged(&lake, &staged, &kept, &key, Dedupe::First)
            .await
            .unwrap();
        assert_eq!(losers.len(), 1);
        assert!(losers[0].raw.contains("\"b1\""), "{}", losers[0].raw);
        assert!(kept.batches(in_memory).is_none());
        assert_eq!(
            read_parquet(&lake, in_memory).await.unwrap()[0].num_rows(),
            1
        );
    }
}
