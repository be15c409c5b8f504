//! `type: postgres`, `type: mysql` and `type: sqlite` — tables and queries of a
//! relational database.
//!
//! Owns what both databases share: the [`Source`] (planning: cursor bounds), the
//! config ([`config`]), the streams built from the catalog (`streams.rs`), reading
//! one slice as keyset pages (`read.rs`), soft deletes by key scan ([`deletes`]) and
//! `sluice discover` ([`discover`]).
//! Each database ([`postgres`], [`mysql`], [`sqlite`]) supplies its SQL dialect, its type
//! mapping and a session (one connection holding one snapshot).
//!
//! Exactness, and why it holds:
//! - A slice reads inside one snapshot: PostgreSQL `REPEATABLE READ`, InnoDB
//!   `START TRANSACTION WITH CONSISTENT SNAPSHOT`, a SQLite read transaction. Pages are keyset queries
//!   `WHERE (cursor, pk) > (last row's) ORDER BY cursor, pk LIMIT batch_size`, so
//!   rows sharing a cursor value across a page boundary are neither lost nor
//!   repeated, and memory is bounded by the batch size, not the table.
//! - `ranges: N` reads a large table as N slices of its primary key, each on its own
//!   connection, all in one snapshot their sessions share (`ranges.rs`).
//! - An incremental slice is bounded above by the cursor's maximum read when the
//!   run was planned; that bound becomes the stored cursor only after the publish.
//!   The next run starts strictly after it (or `overlap` before it: re-read rows
//!   are merged on the primary key, so repeats are harmless).
//! - Values travel as their database's own text (numeric digits, microseconds), so
//!   nothing passes through a float; each page is landed as NDJSON rows exactly as
//!   read before it is typed, so `sluice replay` types the same rows again.

mod cdc;
pub mod config;
pub mod deletes;
pub mod discover;
pub mod drop_slot;
pub mod mysql;
pub mod pgoutput;
pub mod postgres;
mod ranges;
mod read;
pub mod sqlite;
mod streams;
mod tls;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Value};
use sluice_core::config::{ConfigDocument, ConfigError, Section};
use sluice_core::lake::Lake;
use sluice_core::schema::{Field, FieldType};
use sluice_core::source::{
    DecodeState, DecodedPage, LandedPage, PageSink, RunWindow, Slice, Source, SourceError,
    StreamPlan, StreamSpec,
};
use sluice_core::typing::{decode_json_line, Origin};
use tokio::sync::mpsc;

use crate::BuildContext;
use config::{SqlConfig, TlsMode};
use deletes::{KeyScan, DELETED_AT_COLUMN};
use read::Bounds;
pub use streams::SqlStream;
use streams::{build_stream, Mode};

/// How a column is selected so that its text is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAs {
    /// The database's text form of the value.
    Text,
    /// Bytes as lowercase hex (bytea, blob, binary).
    Hex,
    /// A value the database renders as JSON text (arrays).
    JsonText,
}

/// A column of a stream: its D1 type and how it is read.
#[derive(Debug, Clone)]
pub struct SqlColumn {
    pub name: String,
    pub ty: FieldType,
    pub read_as: ReadAs,
    /// The database's type name (`timestamptz`, `decimal(12,2)`), for discovery and casts.
    pub source_type: String,
}

/// What a stream reads from.
#[derive(Debug, Clone)]
pub enum Relation {
    Table {
        schema: Option<String>,
        name: String,
    },
    Query(String),
}

impl Relation {
    fn describe(&self) -> String {
        match self {
            Relation::Table {
                schema: Some(s),
                name,
            } => format!("{s}.{name}"),
            Relation::Table { schema: None, name } => name.clone(),
            Relation::Query(_) => "query".into(),
        }
    }
}

/// A column as the database described it: its mapping, or why it has none.
pub struct DescribedColumn {
    pub name: String,
    pub source_type: String,
    pub mapped: Result<(FieldType, ReadAs), String>,
}

/// The catalog's view of a relation.
pub struct Described {
    pub columns: Vec<DescribedColumn>,
    /// From the catalog (empty for a query or a table without one).
    pub primary_key: Vec<String>,
}

/// A table in the catalog, for `sluice discover`.
pub struct CatalogTable {
    pub schema: String,
    pub name: String,
}

/// Rows of text cells (None = NULL), as one page.
pub type TextRows = Vec<Vec<Option<String>>>;

/// One connection, holding at most one snapshot.
#[async_trait]
pub trait Session: Send {
    /// Starts a read-only transaction that sees one consistent snapshot.
    async fn begin_snapshot(&mut self) -> Result<(), SourceError>;
    /// A bounded query (it has a LIMIT): all its rows as text.
    async fn rows(&mut self, sql: &str, params: Vec<String>) -> Result<TextRows, SourceError>;
    /// An unbounded query read in pages of `page_rows`, sent to `pages` as they fill.
    async fn stream(
        &mut self,
        sql: &str,
        page_rows: usize,
        pages: mpsc::Sender<TextRows>,
    ) -> Result<(), SourceError>;
    /// Ends the snapshot and closes the connection.
    async fn close(self: Box<Self>) -> Result<(), SourceError>;
    /// The columns (and catalog primary key) of `relation`, spelt `relation_sql`.
    async fn describe(
        &mut self,
        relation: &Relation,
        relation_sql: &str,
    ) -> Result<Described, SourceError>;
    /// The tables and views a user can read, for `sluice discover`.
    async fn tables(&mut self) -> Result<Vec<CatalogTable>, SourceError>;
}

/// A database: its dialect, its types and its sessions.
#[async_trait]
pub trait Database: Send + Sync {
    /// `postgres`, `mysql` or `sqlite`.
    fn kind(&self) -> &'static str;
    /// The config key that says where the database is (`url`, or `path` for a file).
    fn location_key(&self) -> &'static str {
        "url"
    }
    async fn session(&self) -> Result<Box<dyn Session>, SourceError>;

    fn quote(&self, ident: &str) -> String;
    /// The relation as it goes after FROM (aliased `q` by the caller).
    fn relation_sql(&self, relation: &Relation) -> String {
        match relation {
            Relation::Table {
                schema: Some(s),
                name,
            } => format!("{}.{}", self.quote(s), self.quote(name)),
            Relation::Table { schema: None, name } => self.quote(name),
            Relation::Query(q) => format!("({})", q.trim().trim_end_matches(';')),
        }
    }
    /// A column of `q` selected as exact text.
    fn select_expr(&self, column: &SqlColumn) -> String;
    /// A key column of `q` as text that [`Database::param`] reads back exactly.
    fn key_expr(&self, column: &SqlColumn) -> String;
    /// Parameter `n` (1-based) compared with `column`.
    fn param(&self, n: usize, column: &SqlColumn) -> String;
    /// `value` minus an overlap.
    fn minus(&self, value: String, overlap: config::Overlap) -> String;
    /// The largest value of a column of `q`, as text.
    fn max_text(&self, column: &SqlColumn) -> String;
    /// A snapshot `sessions` sessions read `relation` in, for parallel key ranges.
    async fn shared_snapshot(
        &self,
        relation: &Relation,
        sessions: usize,
    ) -> Result<Box<dyn ranges::SharedSnapshot>, SourceError>;
}

/// A `postgres` or `mysql` source.
pub struct SqlSource {
    name: String,
    db: Arc<dyn Database>,
    streams: Vec<SqlStream>,
    batch_size: usize,
    max_concurrency: usize,
    /// The pipeline's lake: a key scan compares the source's keys with D1's.
    lake: Option<Lake>,
    /// Streams with `deletes:`, by name.
    key_scans: HashMap<String, KeyScan>,
    /// Streams with `sync: cdc`, by name.
    cdc: HashMap<String, cdc::Cdc>,
    /// Why the catalog could not be read when the source was built (the database
    /// did not answer): the streams are known by name only, and every plan, read
    /// and check fails with this until a later load reaches the database.
    unreachable: Option<SourceError>,
    /// The snapshots parallel key ranges are being read in.
    ranges: ranges::Snapshots,
}

/// Runs a future to completion on a runtime of its own, on a thread of its own: a
/// source is built synchronously (possibly inside the CLI's runtime) and its
/// streams' columns come from the catalog.
pub fn block_on<F>(future: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime for the catalog")
                    .block_on(future)
            })
            .join()
            .expect("the catalog thread panicked")
    })
}

/// The database of a section (`type: postgres` / `mysql` / `sqlite`); a SQLite
/// `path:` is relative to `root`, the pipeline's folder.
pub fn database(
    kind: &str,
    config: &SqlConfig,
    key_prefix: &str,
    root: &std::path::Path,
) -> Result<Arc<dyn Database>, SourceError> {
    if kind == "sqlite" {
        if config.url.is_some() || config.tls.is_some() {
            let key = if config.url.is_some() { "url" } else { "tls" };
            return Err(SourceError::config(
                "a SQLite source is a file: give `path:` (no `url:` or `tls:`)",
                format!("{key_prefix}.{key}"),
            ));
        }
        let Some(path) = &config.path else {
            return Err(SourceError::config(
                "give `path:`, the SQLite database file (relative to the pipeline's folder)",
                key_prefix.to_string(),
            ));
        };
        return Ok(Arc::new(sqlite::Sqlite::new(root.join(path))));
    }
    if config.path.is_some() {
        return Err(SourceError::config(
            format!("`path:` is for `type: sqlite`; a {kind} source takes `url:`"),
            format!("{key_prefix}.path"),
        ));
    }
    let Some(url) = &config.url else {
        return Err(SourceError::config(
            format!("give `url:` ({kind}://user:password@host/database, usually `${{VAR}}`)"),
            key_prefix.to_string(),
        ));
    };
    let url = url::Url::parse(url.expose()).map_err(|e| {
        SourceError::config(
            format!("not a valid URL ({e}); expected {kind}://user:password@host/database"),
            format!("{key_prefix}.url"),
        )
    })?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        // `mysql://` is not a special scheme: its IP addresses parse as opaque hosts.
        Some(url::Host::Domain(d)) => {
            d == "localhost"
                || d.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        None => true,
    };
    // Encrypted by default; a database on this machine is reached without TLS.
    let tls = config.tls.unwrap_or(if loopback {
        TlsMode::Disable
    } else {
        TlsMode::Require
    });
    Ok(match kind {
        "postgres" => Arc::new(postgres::Postgres::new(&url, tls, key_prefix)?),
        _ => Arc::new(mysql::Mysql::new(&url, tls, key_prefix)?),
    })
}

/// A stream with `deletes:` carries `_sluice_deleted_at` (NULL until a key scan
/// finds its row gone at the source).
fn add_deleted_at(stream: &mut SqlStream) {
    if stream.spec.schema.field(DELETED_AT_COLUMN).is_none() {
        stream
            .spec
            .schema
            .fields
            .push(Field::new(DELETED_AT_COLUMN, FieldType::Timestamp));
    }
}

/// `type: postgres`, `type: mysql` (MariaDB too) and `type: sqlite`.
pub const SOURCE_TYPES: &[crate::SourceType] = &[
    crate::SourceType {
        name: "postgres",
        build: |doc, section, ctx| Ok(Arc::new(SqlSource::build(doc, section, ctx)?)),
    },
    crate::SourceType {
        name: "mysql",
        build: |doc, section, ctx| Ok(Arc::new(SqlSource::build(doc, section, ctx)?)),
    },
    crate::SourceType {
        name: "sqlite",
        build: |doc, section, ctx| Ok(Arc::new(SqlSource::build(doc, section, ctx)?)),
    },
];

impl SqlSource {
    /// Builds from `sources.<name>`, reading each stream's columns from the catalog.
    #[allow(clippy::result_large_err)] // ConfigError's size is the config module's choice.
    pub fn build(
        doc: &ConfigDocument,
        section: &Section,
        ctx: &BuildContext,
    ) -> Result<Self, ConfigError> {
        let config: SqlConfig = doc.parse_section(section)?;
        let key_prefix = section.path.join(".");
        let db = database(&section.kind, &config, &key_prefix, &ctx.root)
            .map_err(|e| crate::error_at_key(doc, section, e))?;
        let lake = Some(ctx.lake.clone());
        block_on(SqlSource::new(&section.name, db, config, &key_prefix, lake))
            .map_err(|e| crate::error_at_key(doc, section, e))
    }

    pub async fn new(
        name: &str,
        db: Arc<dyn Database>,
        config: SqlConfig,
        key_prefix: &str,
        lake: Option<Lake>,
    ) -> Result<Self, SourceError> {
        if config.streams.is_empty() {
            // Nothing to describe (yet: `sluice discover --write` adds streams).
            return Ok(SqlSource {
                name: name.to_string(),
                db,
                streams: Vec::new(),
                batch_size: config.batch_size.max(1),
                max_concurrency: config.max_concurrency.max(1),
                lake,
                key_scans: HashMap::new(),
                cdc: HashMap::new(),
                unreachable: None,
                ranges: Default::default(),
            });
        }
        let mut session = match db.session().await {
            Ok(session) => session,
            // A database that does not answer must not stop `plan`, `export` or
            // `serve`: the streams are kept by name and their runs fail instead.
            Err(e) if e.class == sluice_core::source::ErrorClass::Transient => {
                let streams = config
                    .streams
                    .iter()
                    .map(|(stream_name, stream)| {
                        let key = format!("{key_prefix}.streams.{stream_name}");
                        let mut unread = streams::unread_stream(name, stream_name, stream, &key)?;
                        if stream.deletes.is_some() || stream.sync == config::SyncMode::Cdc {
                            add_deleted_at(&mut unread);
                        }
                        Ok(unread)
                    })
                    .collect::<Result<Vec<_>, SourceError>>()?;
                return Ok(SqlSource {
                    name: name.to_string(),
                    db,
                    streams,
                    batch_size: config.batch_size.max(1),
                    max_concurrency: config.max_concurrency.max(1),
                    lake,
                    key_scans: HashMap::new(),
                    cdc: HashMap::new(),
                    unreachable: Some(SourceError::transient(format!(
                        "the database did not answer when the pipeline was loaded, so its columns are unknown: {}",
                        e.message
                    ))),
                    ranges: Default::default(),
                });
            }
            Err(e) => {
                return Err(SourceError::config(
                    format!(
                        "cannot connect to read the columns of its streams: {}",
                        e.message
                    ),
                    format!("{key_prefix}.{}", db.location_key()),
                ))
            }
        };
        let mut streams = Vec::new();
        let mut key_scans = HashMap::new();
        let mut cdc_streams = HashMap::new();
        for (stream_name, stream) in &config.streams {
            let key = format!("{key_prefix}.streams.{stream_name}");
            let mut built = build_stream(&*db, &mut *session, name, stream_name, stream, &key).await?;
            if let Some(deletes) = &stream.deletes {
                key_scans.insert(stream_name.clone(), KeyScan::new(deletes, &built, &key)?);
                add_deleted_at(&mut built);
            }
            if stream.sync == config::SyncMode::Cdc {
                let cdc = cdc::Cdc::new(&*db, name, stream, &built, &key)?;
                cdc.check_server(&mut *session).await?;
                cdc_streams.insert(stream_name.clone(), cdc);
                add_deleted_at(&mut built);
            }
            streams.push(built);
        }
        session.close().await?;
        Ok(SqlSource {
            name: name.to_string(),
            db,
            streams,
            batch_size: config.batch_size.max(1),
            max_concurrency: config.max_concurrency.max(1),
            lake,
            key_scans,
            cdc: cdc_streams,
            unreachable: None,
            ranges: Default::default(),
        })
    }

    /// The catalog was not read: nothing can be planned or read.
    fn reachable(&self) -> Result<(), SourceError> {
        match &self.unreachable {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn stream(&self, name: &str) -> Result<&SqlStream, SourceError> {
        self.streams
            .iter()
            .find(|s| s.spec.name == name)
            .ok_or_else(|| SourceError::data(format!("unknown stream `{name}`")))
    }

    pub fn database(&self) -> &Arc<dyn Database> {
        &self.db
    }
}

#[async_trait]
impl Source for SqlSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn streams(&self) -> Vec<StreamSpec> {
        self.streams.iter().map(|s| s.spec.clone()).collect()
    }

    async fn check(&self) -> Result<(), SourceError> {
        self.reachable()?;
        let mut session = self.db.session().await?;
        session.rows("SELECT '1'", Vec::new()).await?;
        session.close().await
    }

    async fn plan(
        &self,
        spec: &StreamSpec,
        cursor: Option<&Value>,
        window: &RunWindow,
    ) -> Result<StreamPlan, SourceError> {
        if let Some(cdc) = self.cdc.get(&spec.name) {
            self.reachable()?;
            return self
                .plan_cdc(cdc, self.stream(&spec.name)?, cursor, window)
                .await;
        }
        let plan = self.plan_reads(spec, cursor, window).await?;
        Ok(match self.key_scans.get(&spec.name) {
            Some(scan) => scan.plan(plan, cursor, window, chrono::Utc::now()),
            None => plan,
        })
    }

    async fn read(
        &self,
        spec: &StreamSpec,
        slice: &Slice,
        sink: &mut dyn PageSink,
    ) -> Result<(), SourceError> {
        self.reachable()?;
        let stream = self.stream(&spec.name)?;
        let dt = slice
            .params
            .get("dt")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        if let Some(cdc) = self.cdc.get(&spec.name).filter(|_| cdc::is_changes(slice)) {
            return self.read_changes(cdc, stream, slice, &dt, sink).await;
        }
        if let Some(scan_at) = deletes::scan_time(slice) {
            return self.scan_deletes(stream, &scan_at, &dt, sink).await;
        }
        let bounds = Bounds::of(slice);
        if bounds.is_range() {
            return self.read_range(stream, slice, &bounds, &dt, sink).await;
        }
        let mut session = self.db.session().await?;
        let read = self
            .read_snapshot(stream, &bounds, &dt, &mut *session, sink)
            .await;
        let closed = session.close().await;
        read.and(closed)
    }

    fn decode(
        &self,
        stream: &StreamSpec,
        slice: &Slice,
        page: &LandedPage,
        body: &[u8],
        state: &mut DecodeState,
    ) -> Option<Result<DecodedPage, SourceError>> {
        if cdc::is_changes(slice) {
            return Some(
                self.stream(&stream.name)
                    .and_then(|s| cdc::decode_page(s, page, body, state)),
            );
        }
        let mut decoded = DecodedPage::default();
        let lines = body.strip_suffix(b"\n").unwrap_or(body);
        if lines.is_empty() {
            return Some(Ok(decoded));
        }
        for (i, line) in lines.split(|&b| b == b'\n').enumerate() {
            let origin = Origin {
                page: page.path.clone(),
                line: i as u64 + 1,
            };
            match decode_json_line(line, origin) {
                Ok(record) => decoded.records.push(record),
                Err(rejected) => decoded.rejected.push(rejected),
            }
        }
        Some(Ok(decoded))
    }

    fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }

    fn notices(&self) -> Vec<String> {
        self.unreachable
            .iter()
            .map(|e| format!("{} (its streams' columns are not checked)", e.message))
            .collect()
    }
}

impl SqlSource {
    /// The slices that read rows: one snapshot for a full sync, the rows past the
    /// cursor up to the cursor column's maximum now for an incremental one.
    async fn plan_reads(
        &self,
        spec: &StreamSpec,
        cursor: Option<&Value>,
        window: &RunWindow,
    ) -> Result<StreamPlan, SourceError> {
        self.reachable()?;
        let stream = self.stream(&spec.name)?;
        let dt = window.today.to_string();
        let column = match stream.mode {
            Mode::Full => {
                let ranged = match stream.ranges {
                    1 => None,
                    _ => self.range_slices(stream, &dt, None).await?,
                };
                return Ok(StreamPlan {
                    slices: ranged.unwrap_or_else(|| vec![Slice {
                        key: "snapshot".into(),
                        params: json!({"dt": dt}),
                    }]),
                    cursor_after: None,
                })
            }
            Mode::Cursor { column, .. } | Mode::AppendKey { column } => column,
        };
        let column_name = &stream.columns[column].name;
        // A cursor of another column (the config changed) starts over.
        let lower = cursor
            .filter(|_| !window.full_refresh)
            .filter(|c| c.get("column").and_then(Value::as_str) == Some(column_name))
            .and_then(|c| c.get("value").and_then(Value::as_str))
            .map(String::from);
        let Some(upper) = self.upper_bound(stream, column).await? else {
            // An empty table: nothing to read, and the cursor stays.
            return Ok(StreamPlan {
                slices: Vec::new(),
                cursor_after: None,
            });
        };
        let overlap =
            matches!(stream.mode, Mode::Cursor { overlap: Some(o), .. } if o.amount > 0.0);
        if lower.as_deref() == Some(upper.as_str()) && !overlap {
            // Nothing past the cursor: no query at all.
            return Ok(StreamPlan {
                slices: Vec::new(),
                cursor_after: None,
            });
        }
        let cursor_after = Some(json!({"column": column_name, "value": upper}));
        if lower.is_none() && stream.ranges > 1 {
            // A first load: the whole table to `upper`, in parallel key ranges.
            if let Some(slices) = self.range_slices(stream, &dt, Some(&upper)).await? {
                return Ok(StreamPlan {
                    slices,
                    cursor_after,
                });
            }
        }
        let key = format!("{}..{}", lower.as_deref().unwrap_or("start"), upper).replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
            "_",
        );
        Ok(StreamPlan {
            slices: vec![Slice {
                key,
                params: json!({"dt": dt, "lower": lower, "upper": upper}),
            }],
            cursor_after,
        })
    }
}
