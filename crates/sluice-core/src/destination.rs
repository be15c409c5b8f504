//! The `Destination` trait: where published tables live (PostgreSQL, SQLite, …).
//!
//! A load is one call and one transaction: the rows of a table, its quarantined
//! records and a ledger entry are published together or not at all. A process
//! killed at any point leaves the table as it was before or as it is after.

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::schema::TableSchema;
use crate::typing::Rejected;

/// How a load changes the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// Insert the rows; a load id already in the ledger is skipped, so a retried load adds nothing.
    #[default]
    Append,
    /// The rows become the whole table.
    Replace,
    /// Upsert on the primary key (the last row for a key within a load wins).
    Merge,
    /// Delete the partitions (`partition_column` values) the load touches, then insert.
    OverwritePartitions,
}

/// A table to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSpec {
    /// The layer, used as the PostgreSQL schema (`d1`, `d2a`, `d2b`).
    pub layer: String,
    pub name: String,
    pub schema: TableSchema,
    pub primary_key: Vec<String>,
    /// A date column: the unit of `overwrite_partitions` and the lake's `dt=` folders.
    pub partition_column: Option<String>,
    pub write_mode: WriteMode,
}

impl TableSpec {
    /// `d1.facebook_insights`, for messages and run records.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.layer, self.name)
    }
}

/// Everything one load publishes, in one transaction.
pub struct LoadRequest<'a> {
    pub table: &'a TableSpec,
    /// The rows, streamed so memory stays bounded by the batch size. Batches carry
    /// `table.schema`'s columns in order (columns added by schema evolution included).
    /// A load that stops before their end (an error, a load already published) returns
    /// at once, dropping them: while a live load's extraction runs, its slices wait on
    /// them, and its tail comes only after the last batch.
    pub batches: LoadBatches<'a>,
    /// What is only known once every batch has been produced; awaited after the last
    /// batch. A load whose tail fails (or is dropped) rolls back: this is how a load
    /// that streams while the extraction still runs is called off.
    pub tail: TailFuture<'a>,
    /// Identifies the input; a load whose id the ledger already has for this table is a no-op.
    pub load_id: &'a str,
    pub run_id: &'a str,
}

/// The rows of a load, in batches.
pub type LoadBatches<'a> = BoxStream<'a, Result<RecordBatch, DestinationError>>;
/// The tail of a load, once known.
pub type TailFuture<'a> = BoxFuture<'a, Result<LoadTail, DestinationError>>;

/// The end of a load: published with the rows, in the same transaction.
#[derive(Debug, Clone, Default)]
pub struct LoadTail {
    /// Records that could not be typed; they go to `<table>__quarantine`.
    pub quarantine: Vec<Rejected>,
    /// Partition values (ISO dates) this load replaces, for `OverwritePartitions`.
    pub partitions: Vec<String>,
    /// A shard's load (`sluice run --shard`): its fencing token, checked and recorded
    /// in the load's own transaction. `None` for every other load.
    pub fence: Option<Fence>,
}

/// The fencing token of a sharded run's load (see `crate::shard`). In the load's
/// transaction the destination refuses it ([`DestinationError::Fenced`]) when a higher
/// token of the same shard and round has published, else records it with the run id:
/// a process that lost its shard while paused between its lease check and its publish
/// cannot publish. An `OverwritePartitions` load with a fence keeps, in the partitions
/// it replaces, the rows published by the round's *other* shards (their recorded run
/// ids): the shards of one round each own some slices of the same partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// `<pipeline>/<round>/<scope>`: the shards that share the tables.
    pub round: String,
    /// `K-of-N`.
    pub shard: String,
    /// The shard's lease generation in the round: the highest one published wins.
    pub token: u64,
}

impl Fence {
    /// The token as the destinations store it (a signed 64-bit column).
    pub fn stored_token(&self) -> i64 {
        i64::try_from(self.token).unwrap_or(i64::MAX)
    }

    /// Why the load is refused, given the highest token already published for the
    /// shard: a higher one means another process took the shard over.
    pub fn refusal(&self, highest: Option<i64>) -> Option<String> {
        let token = self.stored_token();
        highest.filter(|&h| h > token).map(|highest| {
            format!(
                "shard {} of round {} was taken over: fencing token {highest} has published, \
                 this process holds {token}; nothing published",
                self.shard, self.round
            )
        })
    }
}

impl LoadTail {
    /// A tail that is already known (every load that does not stream).
    pub fn ready<'a>(self) -> TailFuture<'a> {
        Box::pin(std::future::ready(Ok(self)))
    }
}

/// What a load did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadOutcome {
    pub rows_loaded: u64,
    /// Rows removed by the publish (replaced partitions, replaced table, merged keys).
    pub rows_replaced: u64,
    pub rows_quarantined: u64,
    /// True when the ledger showed this load id was already published: nothing changed.
    pub already_loaded: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// Cannot connect or authenticate: a configuration problem.
    #[error("cannot connect to {target}: {message}")]
    Connect { target: String, message: String },
    /// The server refused the login or the database (wrong role, password or
    /// database name): retrying the same settings cannot succeed.
    #[error("{target} refused the connection: {message}")]
    Refused { target: String, message: String },
    /// The table's existing shape conflicts with the load (e.g. incompatible type).
    #[error("table {table}: {message}")]
    Schema { table: String, message: String },
    #[error("loading {table}: {message}")]
    Load { table: String, message: String },
    /// The warehouse refused a statement of a model run there (its SQL failed on the
    /// data, e.g. a division by zero): running it again gives the same error.
    #[error("{table}: the warehouse refused the model's SQL: {message}")]
    Query { table: String, message: String },
    /// The load was cancelled; the transaction was rolled back.
    #[error("load of {table} cancelled; rolled back")]
    Cancelled { table: String },
    /// A later process took the shard over: its fencing token was refused and the
    /// transaction rolled back (see [`Fence`]).
    #[error("load of {table} refused: {message}")]
    Fenced { table: String, message: String },
}

impl DestinationError {
    /// Whether retrying the same load may succeed (network blips, serialization failures).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            DestinationError::Connect { .. } | DestinationError::Load { .. }
        )
    }
}

/// How a destination's loads can run while the extraction still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamedLoads {
    /// Each load starts once its stream is extracted.
    No,
    /// A streamed load holds the table's lock from its start (PostgreSQL: the
    /// advisory lock that makes its DDL race-free): other loads of the table wait
    /// for the whole extraction, so a round's shards, which load the same tables,
    /// do not stream.
    LockingTable,
    /// A streamed load stages where no other load waits on it and takes the write
    /// lock only to publish (SQLite: a temporary table of its own connection).
    Unlocked,
}

#[async_trait]
pub trait Destination: Send + Sync {
    /// What it is, without secrets: `postgres 127.0.0.1:5432/test`, `sqlite ./warehouse.db`.
    fn describe(&self) -> String;

    /// Connects and checks it can create schemas and tables (`sluice validate --connections`).
    async fn check(&self) -> Result<(), DestinationError>;

    /// Whether a load may stream while the extraction runs (its transaction then
    /// stays open for the whole extraction), and what it holds meanwhile.
    fn streams_loads(&self) -> StreamedLoads {
        StreamedLoads::No
    }

    /// The switched replacements (`replaces: … switch: true`, see [`crate::replace`]):
    /// from now on each load of a replacing D1 table also makes the replaced table's
    /// name a view over it, in the load's transaction. Destinations without views
    /// ignore it.
    fn set_d1_aliases(&self, _aliases: &[crate::replace::D1Alias]) {}

    /// Creates or evolves the table, then publishes `request` atomically.
    async fn load(&self, request: LoadRequest<'_>) -> Result<LoadOutcome, DestinationError>;

    /// Appends `rows` to `<table>__quarantine` without touching the table itself:
    /// the failing rows of a model whose error-severity check blocked its publish,
    /// so every quarantine lives in the warehouse next to its table.
    async fn record_quarantine(
        &self,
        table: &TableSpec,
        run_id: &str,
        rows: &[Rejected],
    ) -> Result<u64, DestinationError>;

    /// `sluice forget`: deletes the rows of `layer.table` where one of `columns` (read
    /// as text) is one of `values`, and the rows of `<table>__quarantine` whose `raw`
    /// contains one of them, in one transaction. A missing table or column is skipped.
    /// Returns the rows deleted.
    async fn forget(
        &self,
        layer: &str,
        table: &str,
        columns: &[String],
        values: &[String],
    ) -> Result<u64, DestinationError>;

    /// Row count of a published table, or `None` if it does not exist (summaries, tests).
    async fn row_count(&self, layer: &str, table: &str) -> Result<Option<u64>, DestinationError>;

    /// The warehouse that runs models inside this destination (`models.engine:
    /// destination`), if it can (see [`crate::pushdown`]).
    fn warehouse(&self) -> Option<&dyn crate::pushdown::Warehouse> {
        None
    }
}
