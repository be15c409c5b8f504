//! The `Source` trait: a system sluice extracts from (an API, a database, files).
//!
//! A source lists its streams; for each stream it plans *slices* (a file, an
//! account × date window) from the stream's cursor and the run window, and reads a
//! slice into *pages*. Each page is landed in the lake exactly as received
//! ([`PageSink::land`]) *before* it is decoded into records ([`PageSink::records`]).
//! The executor owns everything else: typing, quarantine, D1 files, loads, state.

use async_trait::async_trait;
use bytes::Bytes;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

use crate::destination::WriteMode;
use crate::line_typer::{LineTyper, TypedLines};
use crate::schema::TableSchema;
use crate::typing::{Record, Rejected};

/// One stream of a source and the D1 table it feeds.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// The stream's name within its source (`insights`, `orders`).
    pub name: String,
    /// The D1 table name (default `<source>_<stream>`).
    pub table: String,
    /// Declared columns; with `infer_columns`, columns seen in data are added after them.
    pub schema: TableSchema,
    pub infer_columns: bool,
    pub primary_key: Vec<String>,
    /// A date column that partitions the table (`dt=` in the lake, unit of overwrite).
    pub partition_column: Option<String>,
    pub write_mode: WriteMode,
    /// Which row a `merge` keeps when one run's input repeats a key.
    pub dedupe: crate::dedupe::Dedupe,
}

/// The dates a run covers: incremental (from the cursor) unless `since`/`until` are given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunWindow {
    /// `--since`: a backfill start; the cursor is not advanced by a backfill.
    pub since: Option<NaiveDate>,
    pub until: Option<NaiveDate>,
    /// The run's "today" (UTC), the end of an incremental window.
    pub today: NaiveDate,
    /// `--full-refresh`: ignore cursors and rebuild from the start.
    pub full_refresh: bool,
}

impl RunWindow {
    pub fn is_backfill(&self) -> bool {
        self.since.is_some() || self.until.is_some()
    }
}

/// A unit of extraction work, retried and checkpointed as a whole.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Slice {
    /// Stable and unique within the stream: `data/orders-2.csv`, `act_1/2024-07-01..2024-07-28`.
    pub key: String,
    /// Source-specific parameters (file path, account id, date range, …).
    pub params: Value,
}

/// Slices for one stream, and the cursor to store once all of them are loaded.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    pub slices: Vec<Slice>,
    /// `None` keeps the old cursor.
    pub cursor_after: Option<Value>,
}

/// How a failure should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Network, 5xx, throttling: retry with back-off.
    Transient,
    /// The request was too big: retry in smaller pieces.
    NeedsSplitting,
    /// Credentials, permissions, an unknown field or version: stop this source and tell the user what to fix.
    Configuration,
    /// The data itself is unreadable (e.g. a file that is not what its extension says).
    Data,
}

/// A source failure with its class and, for configuration errors, the key to fix.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct SourceError {
    pub class: ErrorClass,
    pub message: String,
    /// The config key to change, e.g. `sources.facebook.access_token`.
    pub config_key: Option<String>,
}

impl SourceError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        SourceError {
            class,
            message: crate::secret::redact(&message.into()),
            config_key: None,
        }
    }
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Transient, message)
    }
    pub fn config(message: impl Into<String>, key: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorClass::Configuration, message);
        e.config_key = Some(key.into());
        e
    }
    pub fn data(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Data, message)
    }
}

/// A page as landed: its lake path identifies it as the origin of its records.
#[derive(Debug, Clone)]
pub struct LandedPage {
    pub path: Arc<str>,
}

/// What a landed page decodes to.
#[derive(Debug, Default)]
pub struct DecodedPage {
    pub records: Vec<Record>,
    pub rejected: Vec<Rejected>,
}

/// What decoding remembers across the pages of one slice, in landing order: the
/// keys of records already emitted, so a replay drops the same repeats `read` did.
#[derive(Debug, Default)]
pub struct DecodeState {
    pub seen: std::collections::HashSet<String>,
    /// Lines decoded so far, for sources that number records by line.
    pub lines: Option<u64>,
    /// What an earlier page of the slice told that later pages' records need (a
    /// Facebook insights slice's account details, landed before its rows).
    pub context: Option<Value>,
}

/// Where a source puts what it reads. Implemented by the executor.
#[async_trait]
pub trait PageSink: Send {
    /// Lands a page exactly as received. `dt` is the date folder (usually the
    /// slice's first day); `name` is unique within the slice (`p00001`).
    async fn land(
        &mut self,
        name: &str,
        extension: &str,
        dt: &str,
        body: &Bytes,
    ) -> Result<LandedPage, SourceError>;

    /// Hands over the decoded records of a landed page.
    async fn records(&mut self, records: Vec<Record>) -> Result<(), SourceError>;

    /// Records that could not even be decoded (a malformed line): kept for quarantine.
    async fn rejected(&mut self, rejected: Vec<Rejected>) -> Result<(), SourceError>;

    /// Opt-in fast path (the `files` connector's big NDJSON files; see
    /// [`crate::line_typer`]): a typer for the stream's current schema, when this sink
    /// takes [`TypedLines`]. Sources that do not opt in never call it.
    fn line_typer(&self) -> Option<LineTyper> {
        None
    }

    /// Hands over lines typed by a [`PageSink::line_typer`] typer, in order with `records`.
    async fn typed_lines(&mut self, lines: TypedLines) -> Result<(), SourceError> {
        let decoded = lines.decode();
        self.records(decoded.records).await?;
        self.rejected(decoded.rejected).await
    }

    /// The stream's cursor once this slice is published, learnt while reading (the
    /// largest `updated_at` a REST API returned, a Singer tap's STATE). Stored after
    /// the publish in place of the plan's `cursor_after`; with several slices, the
    /// last slice in plan order that reported one wins. Not called by `decode`.
    fn cursor_reached(&mut self, _cursor: Value) {}

    /// A warning for the run record (reconciliation mismatch, a skipped account, …).
    fn warn(&mut self, message: String);

    /// True once the run is being cancelled: stop between pages.
    fn is_cancelled(&self) -> bool;
}

#[async_trait]
pub trait Source: Send + Sync {
    /// The source's name in the pipeline (`facebook`).
    fn name(&self) -> &str;

    fn streams(&self) -> Vec<StreamSpec>;

    /// Columns the connector computes from other columns of the same record, as
    /// `(D1 table, column, the columns it is computed from)` (Google Ads' `cost` from
    /// `cost_micros`): column-level lineage follows them back to what the API sent.
    fn derived_columns(&self) -> Vec<(String, String, Vec<String>)> {
        Vec::new()
    }

    /// Checks credentials and reachability (`sluice validate --connections`).
    async fn check(&self) -> Result<(), SourceError>;

    /// Plans one stream's slices from its cursor (`None` on the first run or a full refresh).
    async fn plan(
        &self,
        stream: &StreamSpec,
        cursor: Option<&Value>,
        window: &RunWindow,
    ) -> Result<StreamPlan, SourceError>;

    /// Completes the parameters of the slices this process is about to read, with
    /// details only their readers need (a Facebook account's currency and time zone):
    /// a `--shard K/N` run plans every slice but prepares only its own share, so N
    /// shards look each detail up once between them. Called after sharding and before
    /// a slice is checkpointed or read; the default leaves the slices as planned.
    async fn prepare(
        &self,
        _stream: &StreamSpec,
        slices: Vec<Slice>,
    ) -> Result<Vec<Slice>, SourceError> {
        Ok(slices)
    }

    /// Reads one slice: land every page, then hand over its records.
    async fn read(
        &self,
        stream: &StreamSpec,
        slice: &Slice,
        sink: &mut dyn PageSink,
    ) -> Result<(), SourceError>;

    /// Decodes a page this source landed earlier, for `sluice replay`: the same
    /// records `read` produced for `slice` (as it was planned then), without
    /// calling the source. Pages come in landing order. `None`: not supported.
    fn decode(
        &self,
        _stream: &StreamSpec,
        _slice: &Slice,
        _page: &LandedPage,
        _body: &[u8],
        _state: &mut DecodeState,
    ) -> Option<Result<DecodedPage, SourceError>> {
        None
    }

    /// How many slices of this source may run at once (API concurrency limits).
    fn max_concurrency(&self) -> usize {
        4
    }

    /// Whether N shards (`sluice run --shard K/N`) divide [`Source::max_concurrency`]
    /// between them: yes when it protects the source itself (a database's connections).
    /// An API whose limits are a request-rate budget and an in-flight cap, both divided
    /// between the shards by the HTTP client, answers no: there each shard keeps its
    /// slice concurrency, which only hides request latency.
    fn shards_share_concurrency(&self) -> bool {
        true
    }

    /// What the user should know that is not an error: a configured API version
    /// nearing its sunset, deprecation notices the API sent on its answers so far.
    /// Shown by `validate` and recorded with every run.
    fn notices(&self) -> Vec<String> {
        Vec::new()
    }

    /// The source's API usage since it was built (HTTP sources); runs record the
    /// difference over the run. `None`: the source calls no API.
    fn api_usage(&self) -> Option<crate::run::ApiUsage> {
        None
    }
}
