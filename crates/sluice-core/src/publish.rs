//! The one way a table reaches the destination: staged Parquet files in the lake,
//! read back in order (a few files ahead) and published in one destination transaction,
//! retried with back-off on transient failures, rolled back on cancel. D1 streams
//! (the executor) and models (sluice-transform) both publish through here, so
//! retries, cancellation and memory bounds are the same for every table.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use arrow::array::{new_null_array, ArrayRef};
use arrow::record_batch::RecordBatch;
use backon::{ExponentialBuilder, Retryable};
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use crate::config::ExecutionConfig;
use crate::destination::{
    Destination, DestinationError, LoadBatches, LoadOutcome, LoadRequest, LoadTail, TableSpec,
};
use crate::lake::{parquet_batches, read_parquet, Lake, LakeError};

/// A publish of staged files.
pub struct StagedLoad<'a> {
    pub spec: &'a TableSpec,
    /// Lake paths of the staged Parquet files, in load order.
    pub files: &'a [String],
    /// Batches of some of those files still in memory: those files are not read back.
    pub kept: Option<&'a KeptBatches>,
    pub tail: &'a LoadTail,
    pub load_id: &'a str,
    pub run_id: &'a str,
}

/// Publishes `load` in one transaction, retrying transient failures as `execution`
/// says; `on_retry` hears each retry (counters, logs). A cancel drops the load, which
/// rolls its transaction back, and returns `DestinationError::Cancelled`.
pub async fn load_staged(
    destination: &dyn Destination,
    lake: &Lake,
    load: StagedLoad<'_>,
    execution: &ExecutionConfig,
    cancel: &CancellationToken,
    on_retry: &(dyn Fn(&DestinationError, Duration) + Send + Sync),
) -> Result<LoadOutcome, DestinationError> {
    let attempt = || async {
        let request = LoadRequest {
            table: load.spec,
            batches: staged_batches(lake, load.files, load.kept, load.spec),
            tail: load.tail.clone().ready(),
            load_id: load.load_id,
            run_id: load.run_id,
        };
        tokio::select! {
            _ = cancel.cancelled() => Err(DestinationError::Cancelled { table: load.spec.qualified_name() }),
            outcome = destination.load(request) => outcome,
        }
    };
    attempt
        .retry(backoff(execution))
        .when(|e: &DestinationError| e.is_transient() && !cancel.is_cancelled())
        .notify(on_retry)
        .await
}

/// The back-off of every retried task: doubling from `initial_backoff_ms`, with jitter.
pub fn backoff(execution: &ExecutionConfig) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(execution.initial_backoff_ms))
        .with_max_delay(Duration::from_millis(execution.max_backoff_ms))
        .with_max_times(execution.retries as usize)
        .with_jitter()
}

/// Staged files fetched ahead of the one being loaded: a load of many small files
/// (a month of one-day partitions per account) would otherwise wait on each read in
/// turn, which on S3 is a round trip per file. Memory stays bounded by a few files.
pub(crate) const FILES_READ_AHEAD: usize = 4;

/// One staged file's batches: decoded as they are taken, or kept in memory.
type FileBatches = Box<dyn Iterator<Item = Result<RecordBatch, DestinationError>> + Send>;

/// Batches of the staged files, in order, conformed to the table's schema (columns
/// that appeared mid-run are null in earlier files; a column the schema lacks is an
/// error, never dropped). A file whose batches are `kept` is not read back.
pub fn staged_batches<'a>(
    lake: &'a Lake,
    files: &'a [String],
    kept: Option<&'a KeptBatches>,
    spec: &TableSpec,
) -> LoadBatches<'a> {
    let arrow_schema = spec.schema.arrow_schema();
    futures::stream::iter(files)
        .map(move |path| async move {
            if let Some(batches) = kept.and_then(|k| k.batches(path)) {
                return Ok(Box::new(batches.into_iter().map(Ok)) as FileBatches);
            }
            let reader = parquet_batches(lake, path)
                .await
                .map_err(|e| load_err(e.to_string()))?;
            Ok(
                Box::new(reader.map(|batch| batch.map_err(|e| load_err(e.to_string()))))
                    as FileBatches,
            )
        })
        .buffered(FILES_READ_AHEAD)
        .map_ok(move |batches| {
            let arrow_schema = arrow_schema.clone();
            futures::stream::iter(
                batches.map(move |batch| batch.and_then(|b| conform(&b, &arrow_schema))),
            )
        })
        .try_flatten()
        .boxed()
}

/// The batches written to staged files, kept in memory up to a byte budget, so a
/// load need not read back what the run just wrote: a stream's many small one-day
/// files cost a read and a Parquet decode each. A file is kept whole or not at all
/// (once the budget is spent, files that grow further are forgotten and read back).
pub struct KeptBatches {
    budget: usize,
    inner: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    bytes: usize,
    files: HashMap<String, Vec<RecordBatch>>,
    /// Files not (or no longer) kept: their later batches are not kept either.
    dropped: HashSet<String>,
}

impl KeptBatches {
    pub fn new(budget: usize) -> Self {
        KeptBatches {
            budget,
            inner: Mutex::new(Kept::default()),
        }
    }

    /// Keeps `batch`, written to `path`, if the budget allows; else forgets `path`.
    pub fn keep(&self, path: &str, batch: &RecordBatch) {
        let mut kept = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if kept.dropped.contains(path) {
            return;
        }
        let size = batch.get_array_memory_size();
        if kept.bytes + size > self.budget {
            kept.forget(path);
            return;
        }
        kept.bytes += size;
        kept.files
            .entry(path.to_string())
            .or_default()
            .push(batch.clone());
    }

    /// `path` changed or went away (a failed attempt, a rewrite): read it, if at all, from the lake.
    pub fn forget(&self, path: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget(path);
    }

    /// The batches of `path`, in the order written, if all of them are kept.
    pub fn batches(&self, path: &str) -> Option<Vec<RecordBatch>> {
        let kept = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        kept.files.get(path).cloned()
    }

    /// The batches of `path`: from memory if kept, else read back from the lake.
    pub async fn batches_or_read(
        &self,
        lake: &Lake,
        path: &str,
    ) -> Result<Vec<RecordBatch>, LakeError> {
        match self.batches(path) {
            Some(batches) => Ok(batches),
            None => read_parquet(lake, path).await,
        }
    }
}

impl Kept {
    fn forget(&mut self, path: &str) {
        if let Some(batches) = self.files.remove(path) {
            self.bytes -= batches
                .iter()
                .map(|b| b.get_array_memory_size())
                .sum::<usize>();
        }
        self.dropped.insert(path.to_string());
    }
}

fn conform(
    batch: &RecordBatch,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<RecordBatch, DestinationError> {
    if batch.schema().fields() == schema.fields() {
        return RecordBatch::try_new(schema.clone(), batch.columns().to_vec())
            .map_err(|e| load_err(e.to_string()));
    }
    // A staged column the table lacks would be dropped without a word: refuse instead
    // (the run's schema takes in every column its files have, resumed ones too).
    if let Some(lost) = batch
        .schema()
        .fields()
        .iter()
        .find(|f| schema.field_with_name(f.name()).is_err())
    {
        return Err(load_err(format!(
            "staged column `{}` is not in the table's schema: refusing to drop it",
            lost.name()
        )));
    }
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) if column.data_type() == field.data_type() => Ok(column.clone()),
            Some(column) => {
                arrow::compute::cast(column, field.data_type()).map_err(|e| load_err(e.to_string()))
            }
            None => Ok(new_null_array(field.data_type(), batch.num_rows())),
        })
        .collect::<Result<_, _>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| load_err(e.to_string()))
}

fn load_err(message: String) -> DestinationError {
    DestinationError::Load {
        table: "staged batch".into(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::WriteMode;
    use crate::schema::{Field, FieldType, TableSchema};
    use arrow::array::Int64Array;
    use std::sync::Arc;

    fn spec() -> TableSpec {
        TableSpec {
            layer: "d1".into(),
            name: "t".into(),
            schema: TableSchema {
                fields: vec![Field::new("n", FieldType::Bigint)],
                ..TableSchema::default()
            },
            primary_key: Vec::new(),
            partition_column: None,
            write_mode: WriteMode::Append,
        }
    }

    fn batch(spec: &TableSpec, values: std::ops::Range<i64>) -> RecordBatch {
        RecordBatch::try_new(
            spec.schema.arrow_schema(),
            vec![Arc::new(Int64Array::from_iter_values(values))],
        )
        .unwrap()
    }

    async fn loaded(
        lake: &Lake,
        files: &[String],
        kept: Option<&KeptBatches>,
    ) -> Result<Vec<i64>, String> {
        let spec = spec();
        let batches: Vec<RecordBatch> = staged_batches(lake, files, kept, &spec)
            .try_collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(batches
            .iter()
            .flat_map(|b| {
                let column = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                column.values().to_vec()
            })
            .collect())
    }

    /// A kept file is loaded from memory, in order with the files read back; one
    /// forgotten, or over the budget, is read from the lake (here: gone, so an error).
    #[tokio::test]
    async fn a_load_takes_kept_files_from_memory_and_reads_the_others_back() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open("lake", dir.path()).unwrap();
        let spec = spec();
        let on_disk = "_staging/r/t/a.parquet".to_string();
        let mut writer = lake
            .parquet_writer(&on_disk, spec.schema.arrow_schema())
            .unwrap();
        writer.write(&batch(&spec, 0..3)).await.unwrap();
        writer.close().await.unwrap();
        let in_memory = "_staging/r/t/b.parquet".to_string();
        let files = vec![on_disk.clone(), in_memory.clone()];

        let (first, second) = (batch(&spec, 3..5), batch(&spec, 5..6));
        let kept = KeptBatches::new(first.get_array_memory_size() + second.get_array_memory_size());
        kept.keep(&in_memory, &first);
        kept.keep(&in_memory, &second);
        // `b.parquet` was never written to the lake: only memory has it.
        assert_eq!(
            loaded(&lake, &files, Some(&kept)).await.unwrap(),
            [0, 1, 2, 3, 4, 5]
        );
        assert!(loaded(&lake, &files, None).await.is_err());

        // Past the budget, a file is forgotten whole, and stays so.
        let over = KeptBatches::new(first.get_array_memory_size());
        over.keep(&in_memory, &first);
        over.keep(&in_memory, &second);
        assert!(over.batches(&in_memory).is_none());
        over.keep(&in_memory, &first);
        assert!(over.batches(&in_memory).is_none());

        kept.forget(&in_memory);
        let error = loaded(&lake, &files, Some(&kept)).await.unwrap_err();
        assert!(error.contains("b.parquet"), "{error}");
    }
}
