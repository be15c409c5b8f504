//! A model's output on its way to the destination: streamed from the engine into
//! staged Parquet files in the lake (one per partition date, rotated), so memory holds
//! batches, not the output; then published by `sluice_core::publish` and renamed into
//! the model's lake table by `run.rs`, or discarded.

use std::collections::BTreeMap;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::DataFusionError;
use futures::StreamExt;
use sluice_core::lake::Lake;

use crate::conform;
use crate::error::TransformError;
use crate::project::Model;

/// Rows per staged model file: a load reads one file into memory at a time.
const MODEL_FILE_ROWS: u64 = 256 * 1024;
/// Row-group bytes all open staged files may buffer together before they are cut.
/// The writers' real memory is a few times what `in_progress_size` reports (encoders,
/// dictionaries, page buffers). Measured (bench/model, 30 day partitions, debug build,
/// peak RSS of the write phase): 2M rows 431 MiB at 48 MiB, 264 at 8 MiB; 10M rows
/// ~430 MiB at 16 MiB, ~300 at 4 MiB, in the same time. Row groups then hold a few
/// thousand rows per date, about a DataFusion batch.
const MODEL_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// A model's output, staged in the lake.
pub(crate) struct StagedOutput {
    /// (partition date, lake path) of each staged file; no date when unpartitioned.
    pub(crate) files: Vec<(Option<String>, String)>,
    pub(crate) rows: u64,
    /// Rows whose `partition_by` value is NULL: not staged, for the quarantine.
    pub(crate) undated: Vec<RecordBatch>,
}

/// Streams `df`'s output into Parquet files under `staging`: conformed to `target`,
/// split by partition date when the model has one.
pub(crate) async fn stage(
    df: datafusion::dataframe::DataFrame,
    lake: &Lake,
    staging: &str,
    target: &SchemaRef,
    model: &Model,
) -> Result<StagedOutput, TransformError> {
    let context = model.qualified_name();
    let engine = |e: DataFusionError| TransformError::engine(&context, e);
    let partition = match &model.config.partition_by {
        Some(column) => Some(
            target
                .index_of(column)
                .map_err(|e| TransformError::engine(format!("partition_by `{column}`"), e))?,
        ),
        None => None,
    };
    // One open file per partition date; each is rotated at MODEL_FILE_ROWS, and
    // row groups are cut early when all open files together buffer too much.
    let mut writers: BTreeMap<Option<String>, sluice_core::lake::TableFileWriter> = BTreeMap::new();
    let mut files = Vec::new();
    let mut rows = 0u64;
    let mut undated = Vec::new();
    let mut output = df.execute_stream().await.map_err(engine)?;
    while let Some(batch) = output.next().await {
        let batch = batch.map_err(engine)?;
        if batch.num_rows() == 0 {
            continue;
        }
        let batch = conform::conform_batch(&batch, target)
            .map_err(|m| TransformError::engine(&context, m))?;
        let parts = match partition {
            None => vec![(None, batch)],
            Some(index) => {
                let split = sluice_core::lake::split_by_date(&batch, index)
                    .map_err(|e| TransformError::engine(format!("{context} partition_by"), e))?;
                undated.extend(split.nulls);
                split.parts.into_iter().map(|(d, b)| (Some(d), b)).collect()
            }
        };
        for (date, part) in parts {
            let writer = match writers.entry(date.clone()) {
                std::collections::btree_map::Entry::Occupied(w) => w.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let folder = match &date {
                        Some(date) => format!("{staging}/dt={date}"),
                        None => staging.to_string(),
                    };
                    let path = format!("{folder}/part-{:05}.parquet", files.len());
                    files.push((date.clone(), path.clone()));
                    v.insert(lake.parquet_writer(&path, target.clone())?)
                }
            };
            rows += part.num_rows() as u64;
            writer.write(&part).await?;
            if writer.rows() >= MODEL_FILE_ROWS {
                if let Some(full) = writers.remove(&date) {
                    full.close().await?;
                }
            }
        }
        if writers.values().map(|w| w.buffered_bytes()).sum::<usize>() > MODEL_BUFFER_BYTES {
            for writer in writers.values_mut() {
                writer.flush().await?;
            }
        }
    }
    // An empty output is still a table (with no rows).
    if files.is_empty() && partition.is_none() {
        let path = format!("{staging}/part-00000.parquet");
        files.push((None, path.clone()));
        writers.insert(None, lake.parquet_writer(&path, target.clone())?);
    }
    for (_, writer) in writers {
        writer.close().await?;
    }
    Ok(StagedOutput {
        files,
        rows,
        undated,
    })
}

/// Removes staged files that will not be published.
pub(crate) async fn discard(lake: &Lake, staged: &[(Option<String>, String)]) {
    for (_, path) in staged {
        if let Err(e) = lake.delete(path).await {
            tracing::debug!(path = %path, error = %e, "could not remove a staged model file");
        }
    }
}
