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
//!
//! The parts, one file each: [`extraction`](self::extraction) reads a stream's
//! slices, each through a [`SliceSink`](self::slice_sink) (the `PageSink` a source
//! writes to); `live_load` feeds a load that runs during the extraction;
//! `publish` loads the staged files and promotes them in the lake; `resume`
//! writes and reuses slice checkpoints. Schema drift is decided by
//! [`StreamSchema`](crate::drift::StreamSchema).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;
use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::ExecutionConfig;
use crate::destination::{
    Destination, DestinationError, LoadRequest, StreamedLoads, TableSpec, WriteMode,
};
use crate::drift::{SchemaConfig, StreamSchema};
use crate::lake::{Lake, LakeError};
use crate::plan::StreamTask;
use crate::run::{RunRecord, RunStatus, TaskError, TaskRecord, TaskStatus};
use crate::shard::{RunPart, ShardError, ShardRun};
use crate::source::{ErrorClass, RunWindow, SourceError};
use crate::state::{StateError, StateStore};

mod extraction;
mod live_load;
mod publish;
mod resume;
mod slice_sink;

use extraction::Extraction;
use live_load::{LiveLoad, LiveLoadTask};

/// Columns sluice adds to every D1 table (defined with the schema types).
pub use crate::schema::{LOADED_AT_COLUMN, RUN_ID_COLUMN};

/// Rows per Arrow batch: bounds memory per open partition.
const BATCH_ROWS: usize = 8192;
/// Bytes of a stream's staged batches kept in memory for its load, so it does not
/// read back the files it just wrote (see [`crate::publish::KeptBatches`]).
const KEPT_BYTES_PER_STREAM: usize = 16 << 20;
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
    /// The whole plan, a shard's share of its slices, or the finalize's models.
    pub part: RunPart,
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
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("cancelled")]
    Cancelled,
    /// A panic in the source or the load, caught so the run record still ends.
    #[error("{0}")]
    Panic(String),
}

impl TaskFailure {
    fn to_error(&self) -> TaskError {
        let (class, config_key) = match self {
            TaskFailure::Source(e) => (e.class, e.config_key.clone()),
            TaskFailure::Destination(
                DestinationError::Connect { .. } | DestinationError::Refused { .. },
            ) => (ErrorClass::Configuration, Some("destination".into())),
            TaskFailure::Destination(
                DestinationError::Schema { .. } | DestinationError::Query { .. },
            ) => (ErrorClass::Data, None),
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
            notices: Vec::new(),
            api_usage: Default::default(),
            error: None,
        };
        // An older binary must not write into a lake a newer one has laid out.
        if let Err(e) = self.state.check_format().await {
            record.error = Some(e.to_string());
            record.settle(false);
            record.status = RunStatus::Failed;
            return record;
        }
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
                .or_insert_with(|| Arc::new(Semaphore::new(slice_budget(task, &options))));
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
            // A panic (a connector bug, a hostile input we missed) fails this task; without
            // the catch it would end the process with the run record still `running`.
            AssertUnwindSafe(self.extract_and_load(&task, &budget, options, &counters, &mut record))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    Err(TaskFailure::Panic(crate::run::panic_message(
                        &format!("stream {name}"),
                        &*panic,
                    )))
                })
        };
        record.duration_ms = started.elapsed().as_millis() as u64;
        record.retries += counters.retries.load(Ordering::Relaxed) as u32;
        record.pages = counters.pages.load(Ordering::Relaxed);
        record.bytes = counters.bytes.load(Ordering::Relaxed);
        record.rows_extracted = counters.rows.load(Ordering::Relaxed);
        record.slices_resumed = counters.resumed.load(Ordering::Relaxed);
        record.warnings.extend(
            counters
                .warnings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..),
        );
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

    /// One stream, in the crash-safe order of the module doc: plan, extract,
    /// publish, promote, then state.
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
        let shard = match &options.part {
            RunPart::Shard(run) => Some(run),
            _ => None,
        };
        let mut plan = plan;
        // Each kept slice's index in the whole plan: the order the shards' cursors compare by.
        let mut plan_index: Vec<usize> = (0..plan.slices.len()).collect();
        if let Some(run) = shard {
            let keys = plan
                .slices
                .iter()
                .map(|s| crate::shard::stable_slice_key(&s.key).to_string())
                .collect();
            let order = run.ledger.slice_order(&run.round, &name, keys).await?;
            let place = source
                .streams()
                .iter()
                .position(|s| s.name == stream.name)
                .unwrap_or(0);
            (plan.slices, plan_index) = shard_share(
                run,
                &name,
                place,
                stream.write_mode,
                options,
                plan.slices,
                &order,
            );
            if plan.slices.is_empty() {
                self.propose_cursor(
                    run,
                    &name,
                    &cursor,
                    plan.cursor_after.clone(),
                    None,
                    options,
                )
                .await?;
                self.observer.task_started(&name, 0);
                return Ok(TaskStatus::UpToDate);
            }
        }
        if !plan.slices.is_empty() {
            let planned = plan.slices;
            plan.slices = self
                .retry(counters, &options.cancel, || {
                    source.prepare(stream, planned.clone())
                })
                .await
                .map_err(TaskFailure::Source)?;
        }
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
        let mut schema =
            StreamSchema::new(stream, previous_schema.as_ref().map(|v| &v.value), policy);
        // A rename declared after a run evolved the new name: its column folds back.
        let folded = schema.folded_columns();
        schema.fold(&folded);
        let renames = schema.resolve_renames();
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
            WriteMode::Append => {
                publish::digest(&stream.table, plan.slices.iter().map(|s| s.key.as_str()))
            }
            _ => options.run_id.clone(),
        };
        let live_load = LiveLoad::new();
        let live = self.start_live_load(&spec, &load_id, options, &live_load);
        let extraction = Extraction {
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
            kept: crate::publish::KeptBatches::new(KEPT_BYTES_PER_STREAM),
            rejected: Mutex::new(Vec::new()),
            cursors: Mutex::new(Default::default()),
            live_load: &live_load,
        };
        let live = self
            .extract_slices(task, &plan.slices, budget, &extraction, live)
            .await?;

        // A cursor learnt while reading (the last slice's) replaces the planned one.
        let last_learnt = extraction
            .cursors
            .into_inner()
            .expect("cursors lock")
            .pop_last();
        let planned_cursor = plan.cursor_after.clone();
        let cursor_after = last_learnt
            .as_ref()
            .map(|(_, c)| c.clone())
            .or(plan.cursor_after);
        // Removed fields and likely renames are only known once every slice is read.
        let mut stream_schema = extraction.schema.into_inner().expect("schema lock");
        stream_schema.declared_typos().map_err(|m| {
            let key = format!("sources.{}.streams.{}.columns", source.name(), stream.name);
            TaskFailure::Source(SourceError::config(m, key))
        })?;
        let frozen = stream_schema.finish();
        record.schema_changes = stream_schema.changes.values().cloned().collect();
        for change in &record.schema_changes {
            tracing::warn!(task = %name, "schema change: {change}");
        }
        frozen.map_err(|m| TaskFailure::Source(schema_frozen(m)))?;
        let final_schema = stream_schema.schema;

        let mut staged = extraction.staged.into_inner().expect("staged lock");
        staged.sort_by(|a, b| (a.slice, &a.path).cmp(&(b.slice, &b.path)));
        let mut rejected = extraction.rejected.into_inner().expect("rejected lock");
        let kept = extraction.kept;
        if stream.write_mode == WriteMode::Merge {
            let losers = self.dedupe(task, &staged, &kept).await?;
            if !losers.is_empty() {
                // The live load has them too: the staged files, rewritten, load instead.
                live_load.abort();
            }
            rejected.extend(losers);
        }
        if let Some(run) = shard {
            // A shard that lost its lease (another process took it over) publishes nothing;
            // one that loses it after this check is refused by the destination's fence.
            run.lease.check().await?;
            crate::test_hook::hold_before_publish().await;
        }
        self.observer.task_loading(&name);
        let published = publish::Staged {
            spec: &spec,
            schema: &final_schema,
            files: &staged,
            kept: &kept,
            rejected: &rejected,
            load_id: &load_id,
            slices: &plan.slices,
        };
        self.publish_stream(published, live, &live_load, options, counters, record)
            .await?;
        if !folded.is_empty() {
            // The destination folded its rows in the load; the lake's files follow,
            // before the schema is recorded (a crash in between folds again).
            crate::drift::fold::fold_lake_table(&self.lake, &stream.table, &folded)
                .await
                .map_err(|e| {
                    TaskFailure::Source(SourceError::transient(format!(
                        "folding renamed columns in the lake: {e}"
                    )))
                })?;
            for (kept, sent) in &folded {
                record.warnings.push(format!(
                    "column `{sent}` folded back into `{kept}` (schema.renames): its values load as `{kept}`"
                ));
            }
        }

        // State last: schema version, then cursor.
        let schema_changed = previous_schema.as_ref().map(|v| &v.value) != Some(&final_schema);
        if schema_changed {
            // Shards of one round all publish the stream, so others may store versions
            // meanwhile (three shards: a retry can meet a third). Ours is stored on top
            // of the latest, merged with it, until the latest holds all of ours.
            let mut previous = previous_schema.as_ref().map(|v| v.version);
            let mut schema = final_schema.clone();
            for attempt in 1.. {
                let saved = self
                    .state
                    .save_schema(&stream.table, previous, &options.run_id, &schema)
                    .await;
                match saved {
                    Err(StateError::Conflict { .. })
                        if shard.is_some() && attempt < SCHEMA_SAVE_ATTEMPTS =>
                    {
                        let Some(latest) = self.state.schema(&stream.table).await? else {
                            continue;
                        };
                        schema = latest.value.merged_with(&final_schema);
                        if schema == latest.value {
                            break; // it holds ours already (or wider)
                        }
                        previous = Some(latest.version);
                    }
                    other => {
                        other?;
                        break;
                    }
                }
            }
        }
        if let Some(run) = shard {
            let reached = last_learnt.map(|(index, c)| (plan_index[index], c));
            self.propose_cursor(run, &name, &cursor, planned_cursor, reached, options)
                .await?;
            return Ok(TaskStatus::Succeeded);
        }
        if !options.window.is_backfill() {
            if let Some(cursor_after) = cursor_after {
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

    /// Starts a load that takes rows while the extraction runs, when the destination
    /// allows a long transaction. Row order does not matter: a merge's repeated keys
    /// are settled on the staged files, which then load instead. The load runs as its
    /// own task, so encoding rows for the destination overlaps the requests and uses
    /// another core than typing them.
    fn start_live_load(
        &self,
        spec: &TableSpec,
        load_id: &str,
        options: &RunOptions,
        live_load: &LiveLoad,
    ) -> Option<LiveLoadTask> {
        // A merge stream streams too (even when a full refresh loads it as
        // `replace`): de-duplication calls the live load off if it finds repeats.
        match self.destination.streams_loads() {
            StreamedLoads::No => return None,
            // The round's other shards load the same tables: they would wait for
            // this shard's whole extraction.
            StreamedLoads::LockingTable if matches!(options.part, RunPart::Shard(_)) => {
                return None
            }
            StreamedLoads::LockingTable | StreamedLoads::Unlocked => {}
        }
        let (batches, tail) = live_load.open();
        let destination = self.destination.clone();
        let (spec, load_id, run_id) = (spec.clone(), load_id.to_string(), options.run_id.clone());
        Some(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            async move {
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
            },
        )))
    }

    /// A shard does not move the cursor (the other shards plan from it): it proposes
    /// what its share reached, and `--finalize` stores it (see [`crate::shard`]).
    async fn propose_cursor(
        &self,
        run: &ShardRun,
        task: &str,
        cursor: &Option<crate::state::Versioned<serde_json::Value>>,
        planned: Option<serde_json::Value>,
        reached: Option<(usize, serde_json::Value)>,
        options: &RunOptions,
    ) -> Result<(), TaskFailure> {
        if options.window.is_backfill() || (planned.is_none() && reached.is_none()) {
            return Ok(());
        }
        let proposal = crate::shard::CursorProposal {
            from_version: cursor.as_ref().map(|c| c.version),
            planned,
            reached,
        };
        run.ledger
            .propose_cursor(&run.round, task, run.shard, &proposal)
            .await?;
        Ok(())
    }

    /// The fencing token a shard's loads carry (none outside a shard).
    fn fence(&self, options: &RunOptions) -> Option<crate::destination::Fence> {
        match &options.part {
            RunPart::Shard(run) => Some(run.fence(&self.pipeline)),
            _ => None,
        }
    }

    fn backoff(&self) -> ExponentialBuilder {
        crate::publish::backoff(&self.execution)
    }

    /// One row per key in a merge stream's staged files; the others, for quarantine.
    async fn dedupe(
        &self,
        task: &StreamTask,
        staged: &[publish::StagedFile],
        kept: &crate::publish::KeptBatches,
    ) -> Result<Vec<crate::typing::Rejected>, TaskFailure> {
        let stream = &task.stream;
        let paths: Vec<String> = staged.iter().map(|f| f.path.clone()).collect();
        crate::dedupe::dedupe_staged(&self.lake, &paths, kept, &stream.primary_key, stream.dedupe)
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

/// What one stream's task counted, shared by its slices.
#[derive(Default)]
struct Counters {
    retries: AtomicU64,
    pages: AtomicU64,
    bytes: AtomicU64,
    rows: AtomicU64,
    resumed: AtomicU64,
    warnings: Mutex<Vec<String>>,
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

/// The slices of `slices` that `run`'s shard owns, with their indexes in the plan: by
/// position in the round's stored slice list `order`, else by hash (see
/// [`crate::shard`]). A stream whose write mode replaces the whole table goes whole to
/// one shard; one that overwrites partitions is shared by slice (the shards' overwrites
/// keep each other's rows). `stream` is the stream's place among its source's streams
/// (see [`crate::shard::Shard::owns_position`]).
fn shard_share(
    run: &ShardRun,
    task: &str,
    stream: usize,
    mode: WriteMode,
    options: &RunOptions,
    slices: Vec<crate::source::Slice>,
    order: &[String],
) -> (Vec<crate::source::Slice>, Vec<usize>) {
    let whole = options.window.full_refresh || mode == WriteMode::Replace;
    let position: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, key)| (key.as_str(), i))
        .collect();
    slices
        .into_iter()
        .enumerate()
        .filter(|(_, slice)| {
            if whole {
                return run.shard.owns(task);
            }
            match position.get(crate::shard::stable_slice_key(&slice.key)) {
                Some(&i) => run.shard.owns_position(i, order.len(), stream),
                None => run
                    .shard
                    .owns(&crate::shard::slice_key(task, Some(&slice.key))),
            }
        })
        .map(|(index, slice)| (slice, index))
        .unzip()
}

/// Tries at storing a stream's schema version while other shards store theirs.
const SCHEMA_SAVE_ATTEMPTS: u32 = 8;

/// Slices of a source read at once; N shards share the limit of a source whose
/// concurrency protects the source itself (see `Source::shards_share_concurrency`).
fn slice_budget(task: &StreamTask, options: &RunOptions) -> usize {
    let limit = task.source.max_concurrency().max(1);
    match &options.part {
        RunPart::Shard(run) if task.source.shards_share_concurrency() => {
            limit.div_ceil(run.shard.count as usize).max(1)
        }
        _ => limit,
    }
}
