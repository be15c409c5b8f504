//! Running a plan: extract every selected stream, land its pages, type its records
//! into D1 files, publish them to the destination, then advance state.
//!
//! Per stream the order is what makes runs safe to kill and repeat:
//!
//! 1. slices are read (in parallel, each retried whole on transient errors); every
//!    page is landed in `raw/` before it is decoded; typed rows are staged as
//!    Parquet under `_staging/<run>/`; records that do not fit are kept for quarantine;
//! 2. the destination publishes rows + quarantine + ledger entry in ONE transaction;
//! 3. staged files are promoted into `d1/<table>/dt=…/` (replacing what the write
//!    mode replaces), then the schema version and the cursor are stored.
//!
//! A crash before 2 leaves the destination untouched and state unchanged, so the
//! next run redoes the work; a crash after 2 repeats a publish the write mode or
//! the ledger makes idempotent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{new_null_array, ArrayRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::ExecutionConfig;
use crate::destination::{
    BatchStream, Destination, DestinationError, LoadOutcome, LoadRequest, LoadTail, TableSpec,
    TailFuture, WriteMode,
};
use crate::drift::{ChangeKind, Policy, SchemaChange, SchemaConfig, StreamPolicy};
use crate::lake::{parquet_batches, Lake, LakeError, PagePath, TableFileWriter};
use crate::line_typer::LineTyper;
use crate::plan::StreamTask;
use crate::run::{RunRecord, RunStatus, TaskError, TaskRecord, TaskStatus};
use crate::schema::{infer_type, unify, Field, FieldType, TableSchema};
use crate::source::{ErrorClass, LandedPage, PageSink, RunWindow, Slice, SourceError, TypedLines};
use crate::state::{SliceCheckpoint, StateError, StateStore};
use crate::typing::{to_scalar, BatchBuilder, FieldError, Record, Rejected, Scalar};

/// Columns sluice adds to every D1 table.
pub const RUN_ID_COLUMN: &str = "_sluice_run_id";
pub const LOADED_AT_COLUMN: &str = "_sluice_loaded_at";
/// Rows per Arrow batch: bounds memory per open partition.
const BATCH_ROWS: usize = 8192;
/// Rows per staged Parquet file before it is rotated.
const STAGED_FILE_ROWS: u64 = 256 * 1024;

/// Hooks for progress display; every method has a no-op default.
pub trait RunObserver: Send + Sync {
    fn task_started(&self, _task: &str, _slices: usize) {}
    fn slice_finished(&self, _task: &str, _rows: u64) {}
    fn task_loading(&self, _task: &str) {}
    fn task_finished(&self, _record: &TaskRecord) {}
}

/// An observer that shows nothing.
pub struct Quiet;
impl RunObserver for Quiet {}

/// What to run.
#[derive(Clone)]
pub struct RunOptions {
    pub run_id: String,
    pub select: Vec<String>,
    pub window: RunWindow,
    pub cancel: CancellationToken,
}

/// Runs streams against one lake, state store and destination.
pub struct Executor {
    pub pipeline: String,
    pub lake: Lake,
    pub state: StateStore,
    pub destination: Arc<dyn Destination>,
    pub execution: ExecutionConfig,
    /// Schema-change policies (the `schema:` section).
    pub schema_policy: SchemaConfig,
    pub observer: Arc<dyn RunObserver>,
}

/// Why a task stopped.
#[derive(Debug, thiserror::Error)]
enum TaskFailure {
    #[error("{0}")]
    Source(SourceError),
    #[error(transparent)]
    Destination(#[from] DestinationError),
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cancelled")]
    Cancelled,
}

impl TaskFailure {
    fn to_error(&self) -> TaskError {
        let (class, config_key) = match self {
            TaskFailure::Source(e) => (e.class, e.config_key.clone()),
            TaskFailure::Destination(
                DestinationError::Connect { .. } | DestinationError::Refused { .. },
            ) => (ErrorClass::Configuration, Some("destination".into())),
            TaskFailure::Destination(DestinationError::Schema { .. }) => (ErrorClass::Data, None),
            _ => (ErrorClass::Transient, None),
        };
        TaskError {
            class,
            message: crate::secret::redact(&self.to_string()),
            config_key,
        }
    }
}

impl Executor {
    /// Runs `tasks` and returns the finished run record (also stored in the lake).
    pub async fn run(&self, tasks: Vec<StreamTask>, options: RunOptions) -> RunRecord {
        let mut record = RunRecord {
            run_id: options.run_id.clone(),
            pipeline: self.pipeline.clone(),
            started_at: Utc::now(),
            finished_at: None,
            status: RunStatus::Running,
            window: options.window.clone(),
            select: options.select.clone(),
            tasks: Vec::new(),
            error: None,
        };
        if let Err(e) = self.state.save_run(&record).await {
            record.error = Some(format!("cannot write the run record: {e}"));
            record.settle(false);
            record.status = RunStatus::Failed;
            return record;
        }

        // One slice budget per source, shared by its streams: API limits are per account/app.
        let mut budgets: HashMap<String, Arc<Semaphore>> = HashMap::new();
        for task in &tasks {
            budgets
                .entry(task.source.name().to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(task.source.max_concurrency().max(1))));
        }
        let concurrency = self.execution.concurrency.max(1);
        let results: Vec<TaskRecord> = futures::stream::iter(tasks)
            .map(|task| {
                let budget = budgets[task.source.name()].clone();
                let options = &options;
                async move { self.run_stream(task, budget, options).await }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        record.tasks = results;
        record.tasks.sort_by(|a, b| a.task.cmp(&b.task));
        record.settle(options.cancel.is_cancelled());
        if let Err(e) = self.state.save_run(&record).await {
            record.error = Some(format!("cannot write the run record: {e}"));
        }
        record
    }

    async fn run_stream(
        &self,
        task: StreamTask,
        budget: Arc<Semaphore>,
        options: &RunOptions,
    ) -> TaskRecord {
        let name = task.name();
        let mut record = TaskRecord::new(&name, format!("d1.{}", task.stream.table));
        let started = Instant::now();
        let counters = Counters::default();
        let outcome = if options.cancel.is_cancelled() {
            Err(TaskFailure::Cancelled)
        } else {
            self.extract_and_load(&task, &budget, options, &counters, &mut record)
                .await
        };
        record.duration_ms = started.elapsed().as_millis() as u64;
        record.retries += counters.retries.load(Ordering::Relaxed) as u32;
        record.pages = counters.pages.load(Ordering::Relaxed);
        record.bytes = counters.bytes.load(Ordering::Relaxed);
        record.rows_extracted = counters.rows.load(Ordering::Relaxed);
        record.slices_resumed = counters.resumed.load(Ordering::Relaxed);
        record
            .warnings
            .extend(counters.warnings.lock().expect("warnings lock").drain(..));
        match outcome {
            Ok(status) => record.status = status,
            Err(TaskFailure::Cancelled) => record.status = TaskStatus::Cancelled,
            Err(failure) => {
                tracing::error!(task = %name, error = %crate::secret::redact(&failure.to_string()), "task failed");
                record.status = TaskStatus::Failed;
                record.error = Some(failure.to_error());
            }
        }
        self.observer.task_finished(&record);
        record
    }

    async fn extract_and_load(
        &self,
        task: &StreamTask,
        budget: &Arc<Semaphore>,
        options: &RunOptions,
        counters: &Counters,
        record: &mut TaskRecord,
    ) -> Result<TaskStatus, TaskFailure> {
        let source = &task.source;
        let stream = &task.stream;
        let name = task.name();

        // The stored cursor is read even for a full refresh: the new one is written as its successor.
        let cursor = self.state.cursor(source.name(), &stream.name).await?;
        let start_from = if options.window.full_refresh {
            None
        } else {
            cursor.as_ref().map(|c| &c.value)
        };
        let plan = self
            .retry(counters, &options.cancel, || {
                source.plan(stream, start_from, &options.window)
            })
            .await
            .map_err(TaskFailure::Source)?;
        record.slices = plan.slices.len() as u64;
        self.observer.task_started(&name, plan.slices.len());
        if plan.slices.is_empty() {
            // Nothing to load, but the source may still have learnt something (a
            // touched file's new time): keep it, so the next run need not re-learn it.
            if let (Some(after), false) = (plan.cursor_after, options.window.is_backfill()) {
                let version = cursor.as_ref().map(|c| c.version);
                let run_id = &options.run_id;
                self.state
                    .save_cursor(source.name(), &stream.name, version, run_id, after)
                    .await?;
            }
            return Ok(TaskStatus::UpToDate);
        }

        let previous_schema = self.state.schema(&stream.table).await?;
        let policy = self.schema_policy.for_stream(&name);
        let renames = policy.renames.clone();
        let schema = StreamSchema::new(stream, previous_schema.as_ref().map(|v| &v.value), policy);
        let write_mode = if options.window.full_refresh {
            WriteMode::Replace
        } else {
            stream.write_mode
        };
        let spec = TableSpec {
            layer: "d1".into(),
            name: stream.table.clone(),
            schema: schema.schema.clone(),
            primary_key: stream.primary_key.clone(),
            partition_column: stream.partition_column.clone(),
            write_mode,
        };
        let load_id = match write_mode {
            // Appending the same input twice must not duplicate it.
            WriteMode::Append => digest(&stream.table, plan.slices.iter().map(|s| s.key.as_str())),
            _ => options.run_id.clone(),
        };
        // Rows stream into the destination while the extraction runs, when the
        // destination allows a long transaction and the row order does not matter
        // (merges keep the last row per key). Anything that would make the streamed
        // rows differ from the staged ones calls it off; the staged load follows.
        // The load runs as its own task, so encoding rows for the destination
        // uses another core than typing them; dropping the handle aborts it (rollback).
        let stream_load = LoadStream::new();
        let mut streamed = (self.destination.streams_loads()
            && stream.write_mode != WriteMode::Merge)
            .then(|| {
                let (batches, tail) = stream_load.open();
                let destination = self.destination.clone();
                let (spec, load_id, run_id) =
                    (spec.clone(), load_id.clone(), options.run_id.clone());
                tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                    destination
                        .load(LoadRequest {
                            table: &spec,
                            batches,
                            tail,
                            load_id: &load_id,
                            run_id: &run_id,
                        })
                        .await
                        .map_err(|e| e.to_string())
                }))
            });
        if streamed.is_none() {
            stream_load.abort();
        }
        let shared = SharedStream {
            lake: &self.lake,
            state: &self.state,
            run_id: &options.run_id,
            source: source.name(),
            stream,
            window: &options.window,
            cancel: &options.cancel,
            schema: Mutex::new(schema),
            renames: &renames,
            counters,
            staged: Mutex::new(Vec::new()),
            rejected: Mutex::new(Vec::new()),
            stream_load: &stream_load,
        };

        // Extract: slices in parallel within the source's budget, each retried whole.
        let extraction = futures::stream::iter(plan.slices.iter().enumerate())
            .map(|(index, slice)| {
                let shared = &shared;
                let name = &name;
                async move {
                    let _permit = budget.acquire().await.expect("semaphore never closed");
                    if shared.cancel.is_cancelled() {
                        return Err(TaskFailure::Cancelled);
                    }
                    if self.resume_slice(shared, index, &slice.key).await {
                        // Its rows are in an earlier run's files, not in the stream.
                        shared.stream_load.abort();
                        self.observer.slice_finished(name, 0);
                        return Ok(());
                    }
                    self.record_slice(shared, index, slice).await?;
                    let attempt = AtomicU64::new(0);
                    let result = self
                        .retry(counters, shared.cancel, || async {
                            let n = attempt.fetch_add(1, Ordering::Relaxed);
                            let mut sink = SliceSink::new(shared, index, n);
                            match source.read(stream, slice, &mut sink).await {
                                Ok(()) => sink.finish(&slice.key).await,
                                Err(e) => {
                                    sink.discard().await;
                                    Err(e)
                                }
                            }
                        })
                        .await;
                    match result {
                        Ok(rows) => {
                            self.observer.slice_finished(name, rows);
                            Ok(())
                        }
                        Err(_) if shared.cancel.is_cancelled() => Err(TaskFailure::Cancelled),
                        Err(e) => Err(TaskFailure::Source(SourceError {
                            message: format!("slice {}: {}", slice.key, e.message),
                            ..e
                        })),
                    }
                }
            })
            .buffer_unordered(source.max_concurrency().max(1))
            .collect::<Vec<Result<(), TaskFailure>>>();
        // The slices run here while the load task takes their batches; a load that
        // ends before the extraction does is noticed at once.
        let mut extraction = Box::pin(extraction);
        let slice_results = loop {
            let Some(load) = streamed.as_mut() else {
                break (&mut extraction).await;
            };
            tokio::select! {
                results = &mut extraction => break results,
                outcome = load => {
                    // Before the tail was sent, the load can only end early: the
                    // ledger already has this load, it failed, or it was called off
                    // (a new column, a resumed slice: expected, not worth a warning).
                    // The staged load decides.
                    if let Err(e) = joined_load(outcome) {
                        if stream_load.is_live() {
                            tracing::warn!(table = %stream.table, error = %e, "streaming load stopped; loading from staged files");
                        } else {
                            tracing::debug!(table = %stream.table, error = %e, "streaming load called off; loading from staged files");
                        }
                    }
                    stream_load.abort();
                    streamed = None;
                }
            }
        };
        drop(extraction);
        for result in slice_results {
            result?;
        }
        if options.cancel.is_cancelled() {
            return Err(TaskFailure::Cancelled);
        }

        // Removed fields and likely renames are only known once every slice is read.
        let mut stream_schema = shared.schema.into_inner().expect("schema lock");
        let columns = &stream_schema.declared;
        columns
            .check_typos(&stream_schema.schema, stream_schema.rows_seen)
            .map_err(|m| {
                let key = format!("sources.{}.streams.{}.columns", source.name(), stream.name);
                TaskFailure::Source(SourceError::config(m, key))
            })?;
        let frozen = stream_schema.finish();
        record.schema_changes = stream_schema.changes.values().cloned().collect();
        for change in &record.schema_changes {
            tracing::warn!(task = %name, "schema change: {change}");
        }
        frozen.map_err(|m| TaskFailure::Source(schema_frozen(m)))?;

        // Load: one transaction at the destination.
        let final_schema = stream_schema.schema.clone();
        let mut staged = shared.staged.into_inner().expect("staged lock");
        staged.sort_by(|a, b| (a.slice, &a.path).cmp(&(b.slice, &b.path)));
        let mut rejected = shared.rejected.into_inner().expect("rejected lock");
        if stream.write_mode == WriteMode::Merge {
            rejected.extend(self.dedupe(task, &staged).await?);
        }
        let partitions: BTreeSet<String> = staged.iter().map(|f| f.dt.clone()).collect();
        let partitions: Vec<String> = partitions.into_iter().collect();
        self.observer.task_loading(&name);
        let tail = LoadTail {
            quarantine: rejected.clone(),
            partitions: partitions.clone(),
        };
        let mut outcome = None;
        match streamed {
            Some(load) if stream_load.is_live() && final_schema == spec.schema => {
                stream_load.finish(tail);
                match joined_load(load.await) {
                    Ok(done) => outcome = Some(done),
                    Err(e) => {
                        tracing::warn!(table = %stream.table, error = %e, "streaming load failed; loading from staged files")
                    }
                }
            }
            // Dropping the load rolls its transaction back.
            other => drop(other),
        }
        let spec = TableSpec {
            schema: final_schema.clone(),
            ..spec.clone()
        };
        let outcome = match outcome {
            Some(outcome) => outcome,
            None => {
                self.load_with_retries(
                    &spec,
                    &staged,
                    &rejected,
                    &partitions,
                    &load_id,
                    options,
                    counters,
                )
                .await?
            }
        };
        record.rows_loaded = outcome.rows_loaded;
        record.rows_replaced = outcome.rows_replaced;
        record.rows_quarantined = rejected.len() as u64;
        record.partitions = partitions.clone();
        for r in rejected.iter().take(5) {
            record.warnings.push(crate::secret::redact(&format!(
                "quarantined {}: {}",
                r.origin, r.reason
            )));
        }
        if rejected.len() > 5 {
            record.warnings.push(format!(
                "… and {} more quarantined records",
                rejected.len() - 5
            ));
        }

        // The quarantine in the lake too: `sluice query` reads it whatever the destination.
        crate::quarantine::write(&self.lake, "d1", &stream.table, &options.run_id, &rejected)
            .await?;

        // Promote staged files into the D1 table in the lake.
        self.promote(
            &stream.table,
            write_mode,
            &staged,
            &partitions,
            &options.run_id,
        )
        .await?;

        // Checkpoints and leftovers of earlier, unpublished runs are now obsolete.
        self.state.clear_checkpoints(&stream.table).await?;
        for object in self.lake.list("_staging").await? {
            if object.path.contains(&format!("/{}/", stream.table)) {
                self.lake.delete(&object.path).await?;
            }
        }

        // State last: schema version, then cursor.
        let schema_changed = previous_schema.as_ref().map(|v| &v.value) != Some(&final_schema);
        if schema_changed {
            self.state
                .save_schema(
                    &stream.table,
                    previous_schema.as_ref().map(|v| v.version),
                    &options.run_id,
                    &final_schema,
                )
                .await?;
        }
        if !options.window.is_backfill() {
            if let Some(cursor_after) = plan.cursor_after {
                self.state
                    .save_cursor(
                        source.name(),
                        &stream.name,
                        cursor.as_ref().map(|c| c.version),
                        &options.run_id,
                        cursor_after,
                    )
                    .await?;
            }
        }
        Ok(TaskStatus::Succeeded)
    }

    /// One row per key in a merge stream's staged files; the others, for quarantine.
    async fn dedupe(
        &self,
        task: &StreamTask,
        staged: &[StagedFile],
    ) -> Result<Vec<Rejected>, TaskFailure> {
        let stream = &task.stream;
        let paths: Vec<String> = staged.iter().map(|f| f.path.clone()).collect();
        crate::dedupe::dedupe_staged(&self.lake, &paths, &stream.primary_key, stream.dedupe)
            .await
            .map_err(|e| {
                let key = format!(
                    "sources.{}.streams.{}.dedupe",
                    task.source.name(),
                    stream.name
                );
                TaskFailure::Source(SourceError::config(e.to_string(), key))
            })
    }

    /// Writes what the slice asks the source for beside its raw pages, for replays.
    async fn record_slice(
        &self,
        shared: &SharedStream<'_>,
        index: usize,
        slice: &Slice,
    ) -> Result<(), TaskFailure> {
        let path = crate::lake::slice_manifest_path(
            shared.source,
            &shared.stream.name,
            shared.run_id,
            index,
        );
        let body = serde_json::json!({"key": slice.key, "params": slice.params});
        Ok(self
            .lake
            .put(&path, bytes::Bytes::from(body.to_string()))
            .await?)
    }

    /// Reuses a slice an earlier run finished but did not publish (crash, cancel,
    /// another slice failing). True if the slice's staged files were all still there.
    async fn resume_slice(&self, shared: &SharedStream<'_>, index: usize, key: &str) -> bool {
        let table = &shared.stream.table;
        let Ok(Some(checkpoint)) = self.state.checkpoint(table, key).await else {
            return false;
        };
        for (_, path) in &checkpoint.files {
            if self
                .lake
                .store()
                .head(&self.lake.object_path(path))
                .await
                .is_err()
            {
                return false;
            }
        }
        shared
            .counters
            .rows
            .fetch_add(checkpoint.rows, Ordering::Relaxed);
        shared.counters.resumed.fetch_add(1, Ordering::Relaxed);
        shared
            .staged
            .lock()
            .expect("staged lock")
            .extend(checkpoint.files.into_iter().map(|(dt, path)| StagedFile {
                slice: index,
                dt,
                path,
            }));
        shared
            .rejected
            .lock()
            .expect("rejected lock")
            .extend(
                checkpoint
                    .rejected
                    .into_iter()
                    .map(|(page, line, reason, raw)| Rejected {
                        origin: crate::typing::Origin {
                            page: page.into(),
                            line,
                        },
                        reason,
                        raw,
                    }),
            );
        tracing::info!(table = %table, slice = %key, "resumed slice from an earlier run's checkpoint");
        true
    }

    #[allow(clippy::too_many_arguments)]
    async fn load_with_retries(
        &self,
        spec: &TableSpec,
        staged: &[StagedFile],
        rejected: &[Rejected],
        partitions: &[String],
        load_id: &str,
        options: &RunOptions,
        counters: &Counters,
    ) -> Result<crate::destination::LoadOutcome, TaskFailure> {
        let attempt = || async {
            let batches = staged_batches(&self.lake, staged, spec.schema.clone());
            let request = LoadRequest {
                table: spec,
                batches,
                tail: LoadTail {
                    quarantine: rejected.to_vec(),
                    partitions: partitions.to_vec(),
                }
                .ready(),
                load_id,
                run_id: &options.run_id,
            };
            tokio::select! {
                // Dropping the load future rolls its transaction back.
                _ = options.cancel.cancelled() => Err(DestinationError::Cancelled { table: spec.qualified_name() }),
                outcome = self.destination.load(request) => outcome,
            }
        };
        attempt
            .retry(self.backoff())
            .when(|e: &DestinationError| e.is_transient() && !options.cancel.is_cancelled())
            .notify(|e, delay| {
                counters.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(table = %spec.qualified_name(), error = %e, ?delay, "load failed; retrying");
            })
            .await
            .map_err(|e| match e {
                DestinationError::Cancelled { .. } => TaskFailure::Cancelled,
                e => TaskFailure::Destination(e),
            })
    }

    /// Moves this run's staged files into `d1/<table>/dt=…/` and removes what they replace.
    async fn promote(
        &self,
        table: &str,
        mode: WriteMode,
        staged: &[StagedFile],
        partitions: &[String],
        run_id: &str,
    ) -> Result<(), LakeError> {
        let store = self.lake.store();
        let mut targets = Vec::with_capacity(staged.len());
        for (n, file) in staged.iter().enumerate() {
            let target = format!("d1/{table}/dt={}/{run_id}-{n:05}.parquet", file.dt);
            store
                .rename(
                    &self.lake.object_path(&file.path),
                    &self.lake.object_path(&target),
                )
                .await
                .map_err(|source| LakeError::Store {
                    path: target.clone(),
                    source,
                })?;
            targets.push(target);
        }
        let prefixes: Vec<String> = match mode {
            WriteMode::Replace => vec![format!("d1/{table}/")],
            WriteMode::OverwritePartitions => partitions
                .iter()
                .map(|dt| format!("d1/{table}/dt={dt}/"))
                .collect(),
            WriteMode::Append | WriteMode::Merge => Vec::new(),
        };
        for prefix in prefixes {
            for object in self.lake.list(&prefix).await? {
                let from_this_run = object
                    .path
                    .rsplit('/')
                    .next()
                    .is_some_and(|file| file.starts_with(run_id));
                if !from_this_run {
                    self.lake.delete(&object.path).await?;
                }
            }
        }
        Ok(())
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.execution.initial_backoff_ms))
            .with_max_delay(Duration::from_millis(self.execution.max_backoff_ms))
            .with_max_times(self.execution.retries as usize)
            .with_jitter()
    }

    /// Retries transient source errors with jittered exponential back-off.
    async fn retry<T, F, Fut>(
        &self,
        counters: &Counters,
        cancel: &CancellationToken,
        operation: F,
    ) -> Result<T, SourceError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, SourceError>>,
    {
        operation
            .retry(self.backoff())
            // A source stopping because the run is cancelled is not a failure to retry.
            .when(|e: &SourceError| e.class == ErrorClass::Transient && !cancel.is_cancelled())
            .notify(|e, delay| {
                counters.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, ?delay, "transient source error; retrying");
            })
            .await
    }
}

/// Batches of the staged files, conformed to the final schema (columns that
/// appeared mid-run are null in earlier files).
fn staged_batches<'a>(
    lake: &'a Lake,
    staged: &'a [StagedFile],
    schema: TableSchema,
) -> futures::stream::BoxStream<'a, Result<RecordBatch, DestinationError>> {
    let arrow_schema = schema.arrow_schema();
    futures::stream::iter(staged)
        .then(move |file| async move {
            parquet_batches(lake, &file.path)
                .await
                .map_err(|e| load_err(e.to_string()))
        })
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

fn digest<'a>(table: &str, keys: impl Iterator<Item = &'a str>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(table.as_bytes());
    for key in keys {
        hasher.update([0]);
        hasher.update(key.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Default)]
struct Counters {
    retries: AtomicU64,
    pages: AtomicU64,
    bytes: AtomicU64,
    rows: AtomicU64,
    resumed: AtomicU64,
    warnings: Mutex<Vec<String>>,
}

/// A Parquet file staged by a finished slice.
#[derive(Debug, Clone)]
struct StagedFile {
    slice: usize,
    dt: String,
    path: String,
}

/// The stream's schema as it grows during a run, and the changes it saw.
struct StreamSchema {
    schema: TableSchema,
    /// Bumped whenever a column is added or widened, so slices rebuild their builders.
    version: u64,
    infer: bool,
    policy: StreamPolicy,
    /// The schema a previous run recorded; changes are judged against it.
    baseline: Option<TableSchema>,
    /// Baseline fields not seen (non-null) in any record of this run yet.
    unseen: BTreeSet<String>,
    /// Declared columns, and which of them no record of this run filled yet.
    declared: crate::declared::DeclaredColumns,
    /// New fields held back by the `quarantine` policy.
    held_back: BTreeSet<String>,
    changes: BTreeMap<(ChangeKind, String), SchemaChange>,
    rows_seen: u64,
}

impl StreamSchema {
    /// Declared columns, then columns a previous run added, then sluice's own.
    fn new(
        stream: &crate::source::StreamSpec,
        previous: Option<&TableSchema>,
        policy: StreamPolicy,
    ) -> Self {
        let mut fields: Vec<Field> = stream.schema.fields.clone();
        if let Some(previous) = previous {
            for field in &previous.fields {
                match fields.iter_mut().find(|f| f.name == field.name) {
                    // A type a previous run widened stays widened.
                    Some(declared) if declared.ty.widens_to(&field.ty) => declared.ty = field.ty,
                    Some(_) => {}
                    None if !is_system(&field.name) => fields.push(field.clone()),
                    None => {}
                }
            }
        }
        fields.push(Field::new(RUN_ID_COLUMN, FieldType::Text));
        fields.push(Field::new(LOADED_AT_COLUMN, FieldType::Timestamp));
        let unseen = previous
            .map(|p| {
                p.fields
                    .iter()
                    .filter(|f| !is_system(&f.name))
                    .map(|f| f.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        StreamSchema {
            schema: TableSchema::new(fields),
            version: 0,
            infer: stream.infer_columns,
            policy,
            baseline: previous.cloned(),
            unseen,
            declared: crate::declared::DeclaredColumns::new(&stream.schema),
            held_back: BTreeSet::new(),
            changes: BTreeMap::new(),
            rows_seen: 0,
        }
    }

    fn note(
        &mut self,
        kind: ChangeKind,
        field: &str,
        detail: impl FnOnce() -> String,
        action: &str,
        records: u64,
    ) {
        self.changes
            .entry((kind, field.to_string()))
            .and_modify(|c| c.records += records)
            .or_insert_with(|| SchemaChange {
                kind,
                field: field.to_string(),
                detail: detail(),
                action: action.to_string(),
                records,
            });
    }

    /// Handles keys seen in `records` that the schema lacks, by policy. `Err` = frozen.
    fn absorb(&mut self, records: &[Record]) -> Result<(), String> {
        self.rows_seen += records.len() as u64;
        self.declared.note_values(records);
        if !self.unseen.is_empty() {
            for record in records {
                self.unseen
                    .retain(|name| record.fields.get(name).is_none_or(Value::is_null));
                if self.unseen.is_empty() {
                    break;
                }
            }
        }
        if !self.infer {
            return Ok(());
        }
        let mut new: BTreeMap<&str, (Option<FieldType>, u64, &Record)> = BTreeMap::new();
        let mut order: Vec<&str> = Vec::new();
        for record in records {
            for (key, value) in &record.fields {
                if self.schema.field(key).is_some() || self.held_back.contains(key) {
                    continue;
                }
                let entry = new.entry(key.as_str()).or_insert_with(|| {
                    order.push(key.as_str());
                    (None, 0, record)
                });
                entry.1 += 1;
                if let Some(ty) = infer_type(value) {
                    entry.0 = Some(match entry.0 {
                        Some(seen) => unify(seen, ty),
                        None => ty,
                    });
                }
            }
        }
        if order.is_empty() {
            return Ok(());
        }
        let policy = if self.baseline.is_some() {
            self.policy.on_new_field
        } else {
            Policy::Evolve
        };
        match policy {
            Policy::Freeze => {
                let key = order[0];
                let (ty, _, first) = &new[key];
                return Err(format!(
                    "new field `{key}` ({}) first seen at {}; schema policy `freeze` holds this stream (set `schema.on_new_field` to evolve or quarantine, then `sluice replay`)",
                    ty.unwrap_or(FieldType::Text).name(),
                    first.origin
                ));
            }
            Policy::Quarantine => {
                for key in order {
                    let (ty, _, first) = &new[key];
                    let detail = format!(
                        "{} first seen at {}",
                        ty.unwrap_or(FieldType::Text).name(),
                        first.origin
                    );
                    self.held_back.insert(key.to_string());
                    self.note(ChangeKind::Added, key, || detail, "quarantined", 0);
                }
            }
            Policy::Evolve => {
                // Keep sluice's columns last.
                let system: Vec<Field> = self.schema.fields.split_off(self.schema.fields.len() - 2);
                for key in &order {
                    let (ty, count, first) = &new[key];
                    let ty = ty.unwrap_or(FieldType::Text);
                    self.schema.fields.push(Field::new(*key, ty));
                    if self.baseline.is_some() {
                        let detail = format!("{} first seen at {}", ty.name(), first.origin);
                        self.note(ChangeKind::Added, key, || detail, "evolved", *count);
                    }
                }
                self.schema.fields.extend(system);
                self.version += 1;
            }
        }
        Ok(())
    }

    /// `absorb` for lines a [`LineTyper`] typed: every key was a known column, so
    /// only the run's tallies move (rows seen, baseline fields seen non-null).
    fn absorb_batch(&mut self, batch: &RecordBatch) {
        self.rows_seen += batch.num_rows() as u64;
        self.declared.note_batch(batch);
        self.unseen.retain(|name| {
            batch
                .column_by_name(name)
                .is_none_or(|c| c.null_count() == c.len())
        });
    }

    /// Widens `column` to hold `value` if the policy allows and a lossless widening exists.
    fn try_widen(&mut self, column: usize, value: &Value) -> bool {
        let Some(field) = self.schema.fields.get(column) else {
            return false;
        };
        let Some(seen) = infer_type(value) else {
            return false;
        };
        let wider = unify(field.ty, seen);
        if wider == field.ty || !field.ty.widens_to(&wider) {
            return false;
        }
        let (name, from) = (field.name.clone(), field.ty);
        self.schema.fields[column].ty = wider;
        self.version += 1;
        self.note(
            ChangeKind::Widened,
            &name,
            || format!("{} → {}", from.name(), wider.name()),
            "evolved",
            1,
        );
        true
    }

    /// Fields that disappeared and likely renames, once every slice is read.
    fn finish(&mut self) -> Result<(), String> {
        if self.baseline.is_none() || self.rows_seen == 0 || !self.infer {
            return Ok(());
        }
        let removed: Vec<String> = self.unseen.iter().cloned().collect();
        for name in &removed {
            let ty = self
                .baseline
                .as_ref()
                .and_then(|b| b.field(name))
                .map(|f| f.ty);
            if self.policy.on_removed_field == Policy::Freeze {
                return Err(format!(
                    "field `{name}` is no longer sent (absent from all {} records); schema policy `freeze` holds this stream (`schema.on_removed_field`)",
                    self.rows_seen
                ));
            }
            let rows = self.rows_seen;
            self.note(
                ChangeKind::Removed,
                name,
                || format!("absent from all {rows} records; column kept (NULL)"),
                "reported",
                0,
            );
            let added: Vec<(String, Option<FieldType>)> = self
                .changes
                .values()
                .filter(|c| c.kind == ChangeKind::Added)
                .map(|c| (c.field.clone(), self.schema.field(&c.field).map(|f| f.ty)))
                .collect();
            for (new_name, new_ty) in added {
                let compatible = match (ty, new_ty) {
                    (Some(a), Some(b)) => a.widens_to(&b) || b.widens_to(&a),
                    _ => true,
                };
                if compatible {
                    let detail = format!("`{name}` → `{new_name}`? map it with schema.renames to keep downstream models working");
                    self.note(ChangeKind::LikelyRename, name, || detail, "reported", 0);
                }
            }
        }
        Ok(())
    }
}

fn is_system(name: &str) -> bool {
    name == RUN_ID_COLUMN || name == LOADED_AT_COLUMN
}

/// What the slices of one stream share.
struct SharedStream<'a> {
    lake: &'a Lake,
    state: &'a StateStore,
    run_id: &'a str,
    source: &'a str,
    stream: &'a crate::source::StreamSpec,
    window: &'a RunWindow,
    cancel: &'a CancellationToken,
    schema: Mutex<StreamSchema>,
    renames: &'a BTreeMap<String, String>,
    counters: &'a Counters,
    staged: Mutex<Vec<StagedFile>>,
    rejected: Mutex<Vec<Rejected>>,
    stream_load: &'a LoadStream,
}

/// The executor's end of a load that streams while the extraction runs: batches go
/// in as slices flush them; the tail (quarantine, partitions) once all is read.
/// Once called off it stays off: the load sees its inputs close and rolls back.
struct LoadStream {
    batches: Mutex<Option<tokio::sync::mpsc::Sender<RecordBatch>>>,
    tail: Mutex<Option<tokio::sync::oneshot::Sender<LoadTail>>>,
}

/// Batches in flight to a streaming load: enough to keep it busy, few enough to bound memory.
const STREAM_BATCHES: usize = 2;

impl LoadStream {
    fn new() -> Self {
        LoadStream {
            batches: Mutex::new(None),
            tail: Mutex::new(None),
        }
    }

    /// The load's inputs: the batch stream and the tail.
    fn open<'a>(&self) -> (BatchStream<'a>, TailFuture<'a>) {
        let (batch_tx, batch_rx) = tokio::sync::mpsc::channel(STREAM_BATCHES);
        let (tail_tx, tail_rx) = tokio::sync::oneshot::channel();
        *self.batches.lock().expect("stream lock") = Some(batch_tx);
        *self.tail.lock().expect("stream lock") = Some(tail_tx);
        let batches = futures::stream::unfold(batch_rx, |mut rx| async move {
            rx.recv().await.map(|batch| (Ok(batch), rx))
        });
        let tail = async move {
            tail_rx.await.map_err(|_| DestinationError::Cancelled {
                table: "streaming load".into(),
            })
        };
        (batches.boxed(), Box::pin(tail))
    }

    fn is_live(&self) -> bool {
        self.tail.lock().expect("stream lock").is_some()
    }

    fn abort(&self) {
        self.batches.lock().expect("stream lock").take();
        self.tail.lock().expect("stream lock").take();
    }

    /// Hands a batch to the load (waiting while it is busy); a load that went away calls the stream off.
    async fn send(&self, batch: &RecordBatch) {
        let sender = self.batches.lock().expect("stream lock").clone();
        if let Some(sender) = sender {
            if sender.send(batch.clone()).await.is_err() {
                self.abort();
            }
        }
    }

    /// Every batch is in: end the stream and let the load publish.
    fn finish(&self, tail: LoadTail) {
        self.batches.lock().expect("stream lock").take();
        if let Some(sender) = self.tail.lock().expect("stream lock").take() {
            let _ = sender.send(tail);
        }
    }
}

/// One attempt at one slice: lands pages, types records, stages Parquet per partition.
struct SliceSink<'s, 'a> {
    shared: &'s SharedStream<'a>,
    slice: usize,
    attempt: u64,
    schema_version: u64,
    schema: TableSchema,
    /// Per partition (`dt`): rows being built and the staged file they go to.
    partitions: BTreeMap<String, Partition>,
    files: Vec<StagedFile>,
    closed: Vec<String>,
    rejected: Vec<Rejected>,
    rows: u64,
    file_seq: u32,
}

struct Partition {
    builder: BatchBuilder,
    writer: Option<TableFileWriter>,
}

impl<'s, 'a> SliceSink<'s, 'a> {
    fn new(shared: &'s SharedStream<'a>, slice: usize, attempt: u64) -> Self {
        let (schema, version) = {
            let s = shared.schema.lock().expect("schema lock");
            (s.schema.clone(), s.version)
        };
        SliceSink {
            shared,
            slice,
            attempt,
            schema_version: version,
            schema,
            partitions: BTreeMap::new(),
            files: Vec::new(),
            closed: Vec::new(),
            rejected: Vec::new(),
            rows: 0,
            file_seq: 0,
        }
    }

    /// sluice's own columns: one value for every row of the run.
    fn constants(&self) -> Vec<(String, Scalar)> {
        vec![
            (
                RUN_ID_COLUMN.to_string(),
                Scalar::Text(self.shared.run_id.to_string()),
            ),
            (
                LOADED_AT_COLUMN.to_string(),
                Scalar::Timestamp(loaded_at_micros(self.shared.run_id)),
            ),
        ]
    }

    /// The partition `dt` of this slice, opened on first use.
    fn partition(&mut self, dt: &str) -> &mut Partition {
        if !self.partitions.contains_key(dt) {
            let builder = self.new_builder();
            let partition = Partition {
                builder,
                writer: None,
            };
            self.partitions.insert(dt.to_string(), partition);
        }
        self.partitions.get_mut(dt).expect("inserted above")
    }

    fn new_builder(&self) -> BatchBuilder {
        self.constants().into_iter().fold(
            BatchBuilder::new(self.schema.clone()),
            |builder, (name, value)| builder.with_constant(&name, value),
        )
    }

    /// The `dt` partition of a record, from the stream's partition column.
    fn partition_of(&self, record: &Record) -> Result<String, String> {
        let Some(column) = &self.shared.stream.partition_column else {
            return Ok(self.shared.window.today.to_string());
        };
        match record
            .fields
            .get(column)
            .map(|v| to_scalar(v, FieldType::Date))
        {
            Some(Ok(Scalar::Date(days))) => Ok(date_of(days)),
            Some(Err(e)) => Err(format!("partition column `{column}`: {e}")),
            _ => Err(format!("partition column `{column}` is missing or null")),
        }
    }

    async fn flush_partition(&mut self, dt: &str) -> Result<(), SourceError> {
        let partition = self.partitions.get_mut(dt).expect("partition exists");
        if partition.builder.is_empty() {
            return Ok(());
        }
        let batch = partition.builder.finish();
        self.write_batch(dt, batch).await
    }

    /// Writes a batch of the sink's schema to the partition's staged file (and the streaming load).
    async fn write_batch(&mut self, dt: &str, batch: RecordBatch) -> Result<(), SourceError> {
        let table = &self.shared.stream.table;
        let run_id = self.shared.run_id;
        let (slice, attempt) = (self.slice, self.attempt);
        let seq = self.file_seq;
        let partition = self.partitions.get_mut(dt).expect("partition exists");
        if partition.writer.is_none() {
            let path = format!(
                "_staging/{run_id}/{table}/dt={dt}/s{slice:05}-a{attempt}-{seq:04}.parquet"
            );
            let writer = self
                .shared
                .lake
                .parquet_writer(&path, batch.schema())
                .map_err(lake_to_source)?;
            partition.writer = Some(writer);
            self.files.push(StagedFile {
                slice,
                dt: dt.to_string(),
                path,
            });
            self.file_seq += 1;
        }
        let writer = partition.writer.as_mut().expect("writer just set");
        writer.write(&batch).await.map_err(lake_to_source)?;
        if self.schema_version == 0 {
            self.shared.stream_load.send(&batch).await;
        }
        // Rotate big files: the load reads one staged file into memory at a time.
        if writer.rows() >= STAGED_FILE_ROWS {
            let writer = partition.writer.take().expect("writer present");
            let (path, _) = writer.close().await.map_err(lake_to_source)?;
            self.closed.push(path);
        }
        Ok(())
    }

    async fn close_all(&mut self) -> Result<(), SourceError> {
        let dts: Vec<String> = self.partitions.keys().cloned().collect();
        for dt in &dts {
            self.flush_partition(dt).await?;
        }
        for (_, partition) in std::mem::take(&mut self.partitions) {
            if let Some(writer) = partition.writer {
                let (path, _) = writer.close().await.map_err(lake_to_source)?;
                self.closed.push(path);
            }
        }
        Ok(())
    }

    /// The slice succeeded: its files and rejected records become part of the stream,
    /// and a checkpoint lets a later run reuse them if this run does not publish.
    async fn finish(mut self, slice_key: &str) -> Result<u64, SourceError> {
        self.close_all().await?;
        let checkpoint = SliceCheckpoint {
            slice_key: slice_key.to_string(),
            run_id: self.shared.run_id.to_string(),
            rows: self.rows,
            files: self
                .files
                .iter()
                .map(|f| (f.dt.clone(), f.path.clone()))
                .collect(),
            rejected: self
                .rejected
                .iter()
                .map(|r| {
                    (
                        r.origin.page.to_string(),
                        r.origin.line,
                        r.reason.clone(),
                        r.raw.clone(),
                    )
                })
                .collect(),
        };
        if let Err(e) = self
            .shared
            .state
            .save_checkpoint(&self.shared.stream.table, &checkpoint)
            .await
        {
            // Only resumability is lost; the run itself can go on.
            tracing::warn!(error = %e, "cannot write a slice checkpoint");
        }
        self.shared
            .counters
            .rows
            .fetch_add(self.rows, Ordering::Relaxed);
        self.shared
            .staged
            .lock()
            .expect("staged lock")
            .append(&mut self.files);
        self.shared
            .rejected
            .lock()
            .expect("rejected lock")
            .append(&mut self.rejected);
        Ok(self.rows)
    }

    /// The attempt failed: remove what it staged (its raw pages stay in the lake).
    async fn discard(mut self) {
        // Its rows may already be in the streaming load: that load cannot be used.
        self.shared.stream_load.abort();
        for (_, partition) in std::mem::take(&mut self.partitions) {
            drop(partition.writer);
        }
        for file in &self.files {
            let _ = self.shared.lake.delete(&file.path).await;
        }
    }
}

enum TypeChange {
    Widened,
    Reject,
}

impl SliceSink<'_, '_> {
    fn reject(&mut self, record: &Record, reason: String) {
        self.rejected.push(Rejected {
            origin: record.origin.clone(),
            reason,
            raw: Value::Object(record.fields.clone()).to_string(),
        });
    }

    /// Runs `change` on the shared schema; if the schema moved on, closes this
    /// slice's open files (they keep the old shape) and adopts the new one.
    async fn sync_schema(
        &mut self,
        change: impl FnOnce(&mut StreamSchema) -> Result<(), String>,
    ) -> Result<(), SourceError> {
        let (version, result) = {
            let mut schema = self.shared.schema.lock().expect("schema lock");
            let result = change(&mut schema);
            if schema.version != self.schema_version {
                self.schema = schema.schema.clone();
            }
            (schema.version, result)
        };
        if let Err(message) = result {
            return Err(schema_frozen(message));
        }
        if version != self.schema_version {
            self.close_all().await?;
            self.schema_version = version;
            // Rows of the new shape do not fit the table the load started with.
            self.shared.stream_load.abort();
        }
        Ok(())
    }

    /// A value did not fit its column: widen, quarantine or freeze, by policy.
    fn on_type_change(&mut self, error: &FieldError) -> Result<TypeChange, SourceError> {
        let mut schema = self.shared.schema.lock().expect("schema lock");
        let Some(value) = &error.value else {
            // A required field arrived missing or null: the source's nullability changed.
            if schema.baseline.is_some() {
                let field = schema.schema.fields[error.column].name.clone();
                schema.note(
                    ChangeKind::NullabilityChanged,
                    &field,
                    || "a required field arrived empty".into(),
                    "quarantined",
                    1,
                );
            }
            return Ok(TypeChange::Reject);
        };
        if schema.baseline.is_none() {
            // No earlier shape to compare with: this is bad data, not a schema change.
            return Ok(TypeChange::Reject);
        }
        let field = schema.schema.fields[error.column].name.clone();
        let ty = schema.schema.fields[error.column].ty;
        let seen = infer_type(value)
            .map(|t| t.name())
            .unwrap_or_else(|| "null".into());
        let policy = schema.policy.on_type_change;
        match policy {
            Policy::Evolve if schema.try_widen(error.column, value) => Ok(TypeChange::Widened),
            Policy::Freeze => Err(schema_frozen(format!(
                "field `{field}` ({}) received {seen} {value}; schema policy `freeze` holds this stream (`schema.on_type_change`)",
                ty.name()
            ))),
            _ => {
                schema.note(ChangeKind::TypeChanged, &field, || format!("{} column received {seen}", ty.name()), "quarantined", 1);
                Ok(TypeChange::Reject)
            }
        }
    }
}

/// The result of a streaming load's task.
fn joined_load(
    joined: Result<Result<LoadOutcome, String>, tokio::task::JoinError>,
) -> Result<LoadOutcome, String> {
    joined.map_err(|e| format!("load task: {e}"))?
}

/// A batch's rows grouped by the ISO date in a `Date32` column, in order of first appearance.
fn split_by_date(
    batch: &RecordBatch,
    column: usize,
) -> Result<Vec<(String, RecordBatch)>, arrow::error::ArrowError> {
    use arrow::array::AsArray;
    let days = batch
        .column(column)
        .as_primitive_opt::<arrow::datatypes::Date32Type>()
        .ok_or_else(|| {
            arrow::error::ArrowError::CastError("partition column is not a date".into())
        })?;
    let mut groups: Vec<(i32, Vec<u32>)> = Vec::new();
    for (row, day) in days.iter().enumerate() {
        // The typer sends rows without a partition value to the general path.
        let day =
            day.ok_or_else(|| arrow::error::ArrowError::CastError("null partition value".into()))?;
        match groups.iter_mut().find(|(d, _)| *d == day) {
            Some((_, rows)) => rows.push(row as u32),
            None => groups.push((day, vec![row as u32])),
        }
    }
    if groups.len() == 1 {
        return Ok(vec![(date_of(groups[0].0), batch.clone())]);
    }
    groups
        .into_iter()
        .map(|(day, rows)| {
            let rows = arrow::array::UInt32Array::from(rows);
            arrow::compute::take_record_batch(batch, &rows).map(|part| (date_of(day), part))
        })
        .collect()
}

/// The ISO date of a `Scalar::Date`, for `dt=` folders.
fn date_of(days: i32) -> String {
    (chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")
        + chrono::Duration::days(days as i64))
    .to_string()
}

fn schema_frozen(message: String) -> SourceError {
    SourceError::config(message, "schema")
}

/// All rows of a run share one load time: the run id's timestamp, so replays are stable.
fn loaded_at_micros(run_id: &str) -> i64 {
    chrono::NaiveDateTime::parse_from_str(
        &run_id[..run_id.find('-').unwrap_or(run_id.len())],
        "%Y%m%dT%H%M%S%3fZ",
    )
    .map(|t| t.and_utc().timestamp_micros())
    .unwrap_or_else(|_| Utc::now().timestamp_micros())
}

fn lake_to_source(e: LakeError) -> SourceError {
    SourceError::transient(format!("lake: {e}"))
}

#[async_trait]
impl PageSink for SliceSink<'_, '_> {
    async fn land(
        &mut self,
        name: &str,
        extension: &str,
        dt: &str,
        body: &bytes::Bytes,
    ) -> Result<LandedPage, SourceError> {
        let page = format!("s{:05}-a{}-{name}", self.slice, self.attempt);
        let path = PagePath {
            source: self.shared.source,
            stream: &self.shared.stream.name,
            dt,
            run_id: self.shared.run_id,
            page: &page,
            extension,
        };
        let path = self
            .shared
            .lake
            .land_page(&path, body.clone())
            .await
            .map_err(lake_to_source)?;
        self.shared.counters.pages.fetch_add(1, Ordering::Relaxed);
        self.shared
            .counters
            .bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(LandedPage { path: path.into() })
    }

    async fn records(&mut self, mut records: Vec<Record>) -> Result<(), SourceError> {
        if !self.shared.renames.is_empty() {
            for record in &mut records {
                for (old, new) in self.shared.renames {
                    if let Some(value) = record.fields.remove(new) {
                        record.fields.insert(old.clone(), value);
                    }
                }
            }
        }
        // New columns first, so every record of this page is typed with them.
        self.sync_schema(|schema| schema.absorb(&records)).await?;
        let held_back = self
            .shared
            .schema
            .lock()
            .expect("schema lock")
            .held_back
            .clone();
        for record in &records {
            if let Some(field) = held_back
                .iter()
                .find(|f| record.fields.contains_key(f.as_str()))
            {
                self.shared.schema.lock().expect("schema lock").note(
                    ChangeKind::Added,
                    field,
                    String::new,
                    "quarantined",
                    1,
                );
                self.reject(record, format!("new field `{field}` held back by schema policy quarantine (schema.on_new_field)"));
                continue;
            }
            // A key that is missing cannot be merged or de-duplicated: quarantine the record.
            if let Some(key) = self
                .shared
                .stream
                .primary_key
                .iter()
                .find(|k| record.fields.get(k.as_str()).is_none_or(Value::is_null))
            {
                let mut schema = self.shared.schema.lock().expect("schema lock");
                if schema.baseline.is_some() {
                    schema.note(
                        ChangeKind::NullabilityChanged,
                        key,
                        || "a primary key field arrived empty".into(),
                        "quarantined",
                        1,
                    );
                }
                drop(schema);
                self.reject(
                    record,
                    format!("primary key field `{key}` is missing or null"),
                );
                continue;
            }
            let dt = match self.partition_of(record) {
                Ok(dt) => dt,
                Err(reason) => {
                    self.reject(record, reason);
                    continue;
                }
            };
            // At most one widening per column per record: then it either fits or is quarantined.
            for _ in 0..=self.schema.fields.len() {
                let partition = self.partition(&dt);
                let error = match partition.builder.push_fields(&record.fields) {
                    Ok(()) => {
                        let full = partition.builder.len() >= BATCH_ROWS;
                        self.rows += 1;
                        if full {
                            self.flush_partition(&dt).await?;
                        }
                        break;
                    }
                    Err(error) => error,
                };
                match self.on_type_change(&error)? {
                    TypeChange::Widened => {
                        self.sync_schema(|_| Ok(())).await?;
                        continue;
                    }
                    TypeChange::Reject => {
                        self.reject(record, error.message);
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    async fn rejected(&mut self, mut rejected: Vec<Rejected>) -> Result<(), SourceError> {
        self.rejected.append(&mut rejected);
        Ok(())
    }

    fn line_typer(&self) -> Option<LineTyper> {
        // Renames rewrite keys, and a partition column must already be a date: the
        // general path handles those.
        if !self.shared.renames.is_empty() {
            return None;
        }
        let mut required = self.shared.stream.primary_key.clone();
        if let Some(column) = &self.shared.stream.partition_column {
            if self.schema.field(column).map(|f| f.ty) != Some(FieldType::Date) {
                return None;
            }
            required.push(column.clone());
        }
        Some(LineTyper::new(
            &self.schema,
            self.schema_version,
            &required,
            self.constants(),
        ))
    }

    async fn typed_lines(&mut self, lines: TypedLines) -> Result<(), SourceError> {
        self.sync_schema(|_| Ok(())).await?;
        let batch = match lines.batch() {
            Some(batch) if lines.schema_version == self.schema_version => batch,
            _ => {
                // Typed against a schema that has moved on since: take the general path.
                let decoded = lines.decode();
                self.records(decoded.records).await?;
                return self.rejected(decoded.rejected).await;
            }
        };
        self.shared
            .schema
            .lock()
            .expect("schema lock")
            .absorb_batch(&batch);
        let column = self
            .shared
            .stream
            .partition_column
            .as_ref()
            .and_then(|c| self.schema.index_of(c));
        let parts = match column {
            None => vec![(self.shared.window.today.to_string(), batch)],
            Some(i) => split_by_date(&batch, i)
                .map_err(|e| SourceError::transient(format!("partitioning typed rows: {e}")))?,
        };
        for (dt, part) in parts {
            self.partition(&dt);
            // Rows typed earlier in this partition go first.
            self.flush_partition(&dt).await?;
            self.rows += part.num_rows() as u64;
            self.write_batch(&dt, part).await?;
        }
        Ok(())
    }

    fn warn(&mut self, message: String) {
        tracing::warn!(stream = %self.shared.stream.name, "{}", crate::secret::redact(&message));
        self.shared
            .counters
            .warnings
            .lock()
            .expect("warnings lock")
            .push(crate::secret::redact(&message));
    }

    fn is_cancelled(&self) -> bool {
        self.shared.cancel.is_cancelled()
    }
}
