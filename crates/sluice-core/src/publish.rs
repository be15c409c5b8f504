//! The one way a table reaches the destination: staged Parquet files in the lake,
//! read back in order (a few files ahead) and published in one destination transaction,
//! retried with back-off on transient failures, rolled back on cancel. D1 streams
//! (the executor) and models (sluice-transform) both publish through here, so
//! retries, cancellation and memory bounds are the same for every table.

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
use crate::lake::{parquet_batches, Lake};

/// A publish of staged files.
pub struct StagedLoad<'a> {
    pub spec: &'a TableSpec,
    /// Lake paths of the staged Parquet files, in load order.
    pub files: &'a [String],
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
            batches: staged_batches(lake, load.files, load.spec),
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
const FILES_READ_AHEAD: usize = 4;

/// Batches of the staged files, in order, conformed to the table's schema (columns
/// that appeared mid-run are null in earlier files; a column the schema lacks is an
/// error, never dropped).
pub fn staged_batches<'a>(
    lake: &'a Lake,
    files: &'a [String],
    spec: &TableSpec,
) -> LoadBatches<'a> {
    let arrow_schema = spec.schema.arrow_schema();
    futures::stream::iter(files)
        .map(move |path| async move {
            parquet_batches(lake, path)
                .await
                .map_err(|e| load_err(e.to_string()))
        })
        .buffered(FILES_READ_AHEAD)
        .map_ok(move |reader| {
            let arrow_schema = arrow_schema.clone();
            futures::stream::iter(reader.map(move |batch| {
                batch
                    .map_err(|e| load_err(e.to_string()))
                    .and_then(|b| conform(&b, &arrow_schema))
            }))
        })
        .try_flatten()
        .boxed()
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
