//! `type: postgres` and `type: mysql` — tables and queries of a relational database.
//!
//! Owns what both databases share: the config ([`config`]), the streams built from
//! the catalog, planning (cursor bounds), and reading one slice as keyset pages.
//! Each database ([`postgres`], [`mysql`]) supplies its SQL dialect, its type
//! mapping and a session (one connection holding one snapshot).
//!
//! Exactness, and why it holds:
//! - A slice reads inside one snapshot: PostgreSQL `REPEATABLE READ`, InnoDB
//!   `START TRANSACTION WITH CONSISTENT SNAPSHOT`. Pages are keyset queries
//!   `WHERE (cursor, pk) > (last row's) ORDER BY cursor, pk LIMIT batch_size`, so
//!   rows sharing a cursor value across a page boundary are neither lost nor
//!   repeated, and memory is bounded by the batch size, not the table.
//! - An incremental slice is bounded above by the cursor's maximum read when the
//!   run was planned; that bound becomes the stored cursor only after the publish.
//!   The next run starts strictly after it (or `overlap` before it: re-read rows
//!   are merged on the primary key, so repeats are harmless).
//! - Values travel as their database's own text (numeric digits, microseconds), so
//!   nothing passes through a float; each page is landed as NDJSON rows exactly as
//!   read before it is typed, so `sluice replay` types the same rows again.

pub mod config;
pub mod discover;
pub mod mysql;
pub mod postgres;
mod tls;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use sluice_core::config::{ConfigDocument, ConfigError, Section};
use sluice_core::destination::WriteMode;
use sluice_core::schema::{Field, FieldType, TableSchema};
use sluice_core::source::{
    DecodeState, DecodedPage, LandedPage, PageSink, RunWindow, Slice, Source, SourceError,
    StreamPlan, StreamSpec,
};
use sluice_core::typing::{decode_json_line, Origin, Record};
use tokio::sync::mpsc;

use crate::BuildContext;
use config::{parse_overlap, SqlConfig, SqlStreamConfig, SyncMode, TlsMode};

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
    /// `postgres` or `mysql`.
    fn kind(&self) -> &'static str;
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
    /// `value` minus an overlap (seconds when `is_duration`).
    fn minus(&self, value: String, amount: f64, is_duration: bool, column: &SqlColumn) -> String;
    /// The largest value of a column of `q`, as text.
    fn max_text(&self, column: &SqlColumn) -> String;
}

/// How a stream is synced.
#[derive(Debug, Clone)]
enum Mode {
    Full,
    /// By a growing column (index into columns), with an optional overlap.
    Cursor {
        column: usize,
        overlap: Option<(f64, bool)>,
    },
    /// By an append-only key.
    AppendKey {
        column: usize,
    },
}

/// A stream as read: its spec, relation, columns and key order.
#[derive(Debug, Clone)]
pub struct SqlStream {
    pub spec: StreamSpec,
    pub relation: Relation,
    pub columns: Vec<SqlColumn>,
    /// Columns (indices) pages are ordered and paged by; empty: one streamed query.
    order_key: Vec<usize>,
    mode: Mode,
}

/// A `postgres` or `mysql` source.
pub struct SqlSource {
    name: String,
    db: Arc<dyn Database>,
    streams: Vec<SqlStream>,
    batch_size: usize,
    max_concurrency: usize,
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

/// The database of a section (`type: postgres` / `type: mysql`).
pub fn database(
    kind: &str,
    config: &SqlConfig,
    key_prefix: &str,
) -> Result<Arc<dyn Database>, SourceError> {
    let url = url::Url::parse(config.url.expose()).map_err(|e| {
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

/// `type: postgres` and `type: mysql` (MariaDB too).
pub const SOURCE_TYPES: &[crate::SourceType] = &[
    crate::SourceType {
        name: "postgres",
        build: |doc, section, ctx| Ok(Arc::new(SqlSource::build(doc, section, ctx)?)),
    },
    crate::SourceType {
        name: "mysql",
        build: |doc, section, ctx| Ok(Arc::new(SqlSource::build(doc, section, ctx)?)),
    },
];

impl SqlSource {
    /// Builds from `sources.<name>`, reading each stream's columns from the catalog.
    #[allow(clippy::result_large_err)] // ConfigError's size is the config module's choice.
    pub fn build(
        doc: &ConfigDocument,
        section: &Section,
        _ctx: &BuildContext,
    ) -> Result<Self, ConfigError> {
        let config: SqlConfig = doc.parse_section(section)?;
        let key_prefix = section.path.join(".");
        let db = database(&section.kind, &config, &key_prefix)
            .map_err(|e| crate::error_at_key(doc, section, e))?;
        block_on(SqlSource::new(&section.name, db, config, &key_prefix))
            .map_err(|e| crate::error_at_key(doc, section, e))
    }

    pub async fn new(
        name: &str,
        db: Arc<dyn Database>,
        config: SqlConfig,
        key_prefix: &str,
    ) -> Result<Self, SourceError> {
        if config.streams.is_empty() {
            // Nothing to describe (yet: `sluice discover --write` adds streams).
            return Ok(SqlSource {
                name: name.to_string(),
                db,
                streams: Vec::new(),
                batch_size: config.batch_size.max(1),
                max_concurrency: config.max_concurrency.max(1),
            });
        }
        let mut session = db.session().await.map_err(|e| {
            SourceError::config(
                format!(
                    "cannot connect to read the columns of its streams: {}",
                    e.message
                ),
                format!("{key_prefix}.url"),
            )
        })?;
        let mut streams = Vec::new();
        for (stream_name, stream) in &config.streams {
            let key = format!("{key_prefix}.streams.{stream_name}");
            streams.push(build_stream(&*db, &mut *session, name, stream_name, stream, &key).await?);
        }
        session.close().await?;
        Ok(SqlSource {
            name: name.to_string(),
            db,
            streams,
            batch_size: config.batch_size.max(1),
            max_concurrency: config.max_concurrency.max(1),
        })
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

/// The relation a stream config names: `schema.table`, `table`, or a query.
fn relation_of(stream: &SqlStreamConfig, key: &str) -> Result<Relation, SourceError> {
    match (&stream.table, &stream.query) {
        (Some(table), None) => Ok(match table.split_once('.') {
            Some((schema, name)) => Relation::Table {
                schema: Some(schema.to_string()),
                name: name.to_string(),
            },
            None => Relation::Table {
                schema: None,
                name: table.clone(),
            },
        }),
        (None, Some(query)) => Ok(Relation::Query(query.clone())),
        _ => Err(SourceError::config(
            "give a stream either `table:` or `query:`",
            key.to_string(),
        )),
    }
}

async fn build_stream(
    db: &dyn Database,
    session: &mut dyn Session,
    source: &str,
    stream_name: &str,
    config: &SqlStreamConfig,
    key: &str,
) -> Result<SqlStream, SourceError> {
    if !sluice_core::config::is_identifier(stream_name) {
        return Err(SourceError::config(
            "stream names may use lowercase letters, digits and `_`",
            key.to_string(),
        ));
    }
    let relation = relation_of(config, key)?;
    let what = relation.describe();
    let relation_key = if config.table.is_some() {
        format!("{key}.table")
    } else {
        format!("{key}.query")
    };
    let described = session
        .describe(&relation, &db.relation_sql(&relation))
        .await
        .map_err(|e| SourceError::config(e.message, relation_key.clone()))?;
    for declared in config.columns.keys() {
        if !described.columns.iter().any(|c| &c.name == declared) {
            return Err(SourceError::config(
                format!("`{what}` has no column `{declared}`"),
                format!("{key}.columns.{declared}"),
            ));
        }
    }
    let mut columns = Vec::new();
    for column in described.columns {
        let mapped = match config.columns.get(&column.name) {
            Some(declared) => FieldType::parse(declared)
                .map(|ty| (ty, ReadAs::Text))
                .map_err(|e| {
                    SourceError::config(e, format!("{key}.columns.{}", column.name))
                })?,
            None => column.mapped.map_err(|reason| {
                SourceError::config(
                    format!(
                        "`{what}` column `{}`: {reason}; declare its type under `columns:` or leave it out with a `query:`",
                        column.name
                    ),
                    relation_key.clone(),
                )
            })?,
        };
        columns.push(SqlColumn {
            name: column.name,
            ty: mapped.0,
            read_as: mapped.1,
            source_type: column.source_type,
        });
    }
    let index_of = |name: &str, field: &str| {
        columns.iter().position(|c| c.name == name).ok_or_else(|| {
            SourceError::config(
                format!("`{what}` has no column `{name}`"),
                format!("{key}.{field}"),
            )
        })
    };
    let primary_key = config.primary_key.clone().unwrap_or(described.primary_key);
    let pk_indices = primary_key
        .iter()
        .map(|c| index_of(c, "primary_key"))
        .collect::<Result<Vec<_>, _>>()?;
    let (mode, order_key) = match config.sync {
        SyncMode::Full => {
            if config.cursor.is_some() || config.append_key.is_some() {
                return Err(SourceError::config(
                    "`cursor:` and `append_key:` are for `sync: incremental`",
                    format!("{key}.sync"),
                ));
            }
            (Mode::Full, pk_indices.clone())
        }
        SyncMode::Incremental => match (&config.cursor, &config.append_key) {
            (Some(cursor), None) => {
                let column = index_of(cursor, "cursor")?;
                if pk_indices.is_empty() {
                    return Err(SourceError::config(
                        format!("incremental sync by cursor needs a primary key to merge changed rows on, and `{what}` has none in the catalog: declare `primary_key:`"),
                        format!("{key}.primary_key"),
                    ));
                }
                let overlap = config
                    .overlap
                    .as_deref()
                    .map(parse_overlap)
                    .transpose()
                    .map_err(|e| SourceError::config(e, format!("{key}.overlap")))?;
                let mut order = vec![column];
                order.extend(pk_indices.iter().copied().filter(|i| *i != column));
                (Mode::Cursor { column, overlap }, order)
            }
            (None, Some(append_key)) => {
                let column = index_of(append_key, "append_key")?;
                (Mode::AppendKey { column }, vec![column])
            }
            _ => {
                return Err(SourceError::config(
                    "`sync: incremental` needs `cursor:` (a column that grows on every change) or `append_key:` (a key that only grows)",
                    format!("{key}.sync"),
                ))
            }
        },
    };
    if let Mode::Cursor { column, .. } | Mode::AppendKey { column } = mode {
        let ty = columns[column].ty;
        if matches!(ty, FieldType::Json | FieldType::Boolean) {
            return Err(SourceError::config(
                format!(
                    "column `{}` ({}) cannot order rows",
                    columns[column].name, columns[column].source_type
                ),
                format!("{key}.cursor"),
            ));
        }
    }
    // Merge on the primary key (or the append key) so re-read rows replace themselves.
    let merge_key = match (&mode, primary_key.is_empty()) {
        (Mode::AppendKey { column }, true) => vec![columns[*column].name.clone()],
        _ => primary_key.clone(),
    };
    let write_mode = config.write_mode.unwrap_or(match mode {
        Mode::Full => WriteMode::Replace,
        _ => WriteMode::Merge,
    });
    if write_mode == WriteMode::Merge && merge_key.is_empty() {
        return Err(SourceError::config(
            "write_mode merge needs a primary key",
            format!("{key}.write_mode"),
        ));
    }
    let fields = columns
        .iter()
        .map(|c| {
            let field = Field::new(&c.name, c.ty);
            if merge_key.contains(&c.name) {
                field.required()
            } else {
                field
            }
        })
        .collect();
    Ok(SqlStream {
        spec: StreamSpec {
            name: stream_name.to_string(),
            table: config
                .d1_table
                .clone()
                .unwrap_or_else(|| format!("{source}_{stream_name}")),
            schema: TableSchema::new(fields),
            infer_columns: false,
            primary_key: merge_key,
            partition_column: None,
            write_mode,
            dedupe: Default::default(),
        },
        relation,
        columns,
        order_key,
        mode,
    })
}

/// An incremental slice's bounds, as the database's text of the cursor column.
#[derive(Debug, Clone, Default)]
struct Bounds {
    /// Exclusive, or inclusive after subtracting the overlap.
    lower: Option<String>,
    upper: Option<String>,
}

impl Bounds {
    fn of(slice: &Slice) -> Bounds {
        let text = |k: &str| {
            slice
                .params
                .get(k)
                .and_then(Value::as_str)
                .map(String::from)
        };
        Bounds {
            lower: text("lower"),
            upper: text("upper"),
        }
    }
}

/// The SQL of one page and its parameters. `after`: the previous page's last key.
fn page_query(
    db: &dyn Database,
    stream: &SqlStream,
    bounds: &Bounds,
    after: Option<&[String]>,
    limit: usize,
) -> (String, Vec<String>) {
    let mut select: Vec<String> = stream.columns.iter().map(|c| db.select_expr(c)).collect();
    select.extend(
        stream
            .order_key
            .iter()
            .map(|&i| db.key_expr(&stream.columns[i])),
    );
    let mut sql = format!(
        "SELECT {} FROM {} AS q",
        select.join(", "),
        db.relation_sql(&stream.relation)
    );
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    if let Mode::Cursor { column, .. } | Mode::AppendKey { column } = &stream.mode {
        let col = &stream.columns[*column];
        let name = format!("q.{}", db.quote(&col.name));
        if let Some(upper) = &bounds.upper {
            params.push(upper.clone());
            conditions.push(format!("{name} <= {}", db.param(params.len(), col)));
        }
        if let Some(lower) = &bounds.lower {
            params.push(lower.clone());
            let p = db.param(params.len(), col);
            conditions.push(match &stream.mode {
                Mode::Cursor {
                    overlap: Some((amount, is_duration)),
                    ..
                } if *amount > 0.0 => {
                    format!("{name} >= {}", db.minus(p, *amount, *is_duration, col))
                }
                _ => format!("{name} > {p}"),
            });
        }
    }
    if let Some(after) = after {
        let mut left = Vec::new();
        let mut right = Vec::new();
        for (&i, value) in stream.order_key.iter().zip(after) {
            let col = &stream.columns[i];
            params.push(value.clone());
            left.push(format!("q.{}", db.quote(&col.name)));
            right.push(db.param(params.len(), col));
        }
        conditions.push(format!("({}) > ({})", left.join(", "), right.join(", ")));
    }
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    if !stream.order_key.is_empty() {
        let order: Vec<String> = stream
            .order_key
            .iter()
            .map(|&i| format!("q.{}", db.quote(&stream.columns[i].name)))
            .collect();
        sql.push_str(&format!(" ORDER BY {} LIMIT {limit}", order.join(", ")));
    }
    (sql, params)
}

/// A cell's JSON value for typing: exact text stays text where a JSON number
/// could round it (numeric), and becomes a number only where it cannot.
fn cell_json(column: &SqlColumn, text: Option<String>) -> Value {
    let Some(text) = text else {
        return Value::Null;
    };
    match (column.ty, column.read_as) {
        (_, ReadAs::JsonText) | (FieldType::Json, _) => {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        }
        (FieldType::Boolean, _) => match text.as_str() {
            "t" | "true" | "1" => Value::Bool(true),
            "f" | "false" | "0" => Value::Bool(false),
            _ => Value::String(text),
        },
        (FieldType::Bigint, _) => match text.parse::<i64>() {
            Ok(n) => Value::from(n),
            Err(_) => Value::String(text),
        },
        (FieldType::Double, _) => match text.parse::<f64>() {
            Ok(f) if f.is_finite() => serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or(Value::String(text)),
            _ => Value::String(text),
        },
        (FieldType::Timestamp, _) => Value::String(iso_timestamp(&text)),
        _ => Value::String(text),
    }
}

/// `2024-07-01 10:11:12.5+00` (PostgreSQL in a UTC session) or `2024-07-01 10:11:12`
/// (a naive timestamp, read as UTC) → RFC 3339 that typing reads exactly.
fn iso_timestamp(text: &str) -> String {
    let text = text.replacen(' ', "T", 1);
    match text.strip_suffix("+00") {
        Some(utc) => format!("{utc}Z"),
        None => text,
    }
}

impl SqlSource {
    /// The text of the cursor column's largest value now, in its own short session.
    async fn upper_bound(
        &self,
        stream: &SqlStream,
        column: usize,
    ) -> Result<Option<String>, SourceError> {
        let mut session = self.db.session().await?;
        let sql = format!(
            "SELECT {} FROM {} AS q",
            self.db.max_text(&stream.columns[column]),
            self.db.relation_sql(&stream.relation)
        );
        let rows = session.rows(&sql, Vec::new()).await?;
        session.close().await?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten()))
    }

    /// Lands one page of rows and hands its records over. Returns the last row's key.
    async fn land_page(
        &self,
        stream: &SqlStream,
        rows: TextRows,
        page_no: u32,
        dt: &str,
        sink: &mut dyn PageSink,
    ) -> Result<Option<Vec<String>>, SourceError> {
        let width = stream.columns.len();
        let mut body = Vec::with_capacity(rows.len() * 128);
        let mut maps = Vec::with_capacity(rows.len());
        let mut last_key = None;
        for mut row in rows {
            let key: Vec<String> = row
                .drain(width..)
                .map(|cell| cell.unwrap_or_default())
                .collect();
            let mut map = Map::with_capacity(width);
            for (column, cell) in stream.columns.iter().zip(row) {
                map.insert(column.name.clone(), cell_json(column, cell));
            }
            serde_json::to_writer(&mut body, &map)
                .map_err(|e| SourceError::data(format!("encoding a row: {e}")))?;
            body.push(b'\n');
            maps.push(map);
            last_key = Some(key);
        }
        let landed = sink
            .land(&format!("p{page_no:05}"), "ndjson", dt, &Bytes::from(body))
            .await?;
        let records = maps
            .into_iter()
            .enumerate()
            .map(|(i, fields)| Record {
                fields,
                origin: Origin {
                    page: landed.path.clone(),
                    line: i as u64 + 1,
                },
            })
            .collect();
        sink.records(records).await?;
        Ok(last_key)
    }

    async fn read_snapshot(
        &self,
        stream: &SqlStream,
        bounds: &Bounds,
        dt: &str,
        session: &mut dyn Session,
        sink: &mut dyn PageSink,
    ) -> Result<(), SourceError> {
        session.begin_snapshot().await?;
        let mut page_no = 0;
        if stream.order_key.is_empty() {
            // No key to page by: one query, streamed in pages through a channel of one.
            let (sql, _) = page_query(&*self.db, stream, bounds, None, self.batch_size);
            let (tx, mut rx) = mpsc::channel::<TextRows>(1);
            let reading = session.stream(&sql, self.batch_size, tx);
            let landing = async {
                while let Some(rows) = rx.recv().await {
                    page_no += 1;
                    self.land_page(stream, rows, page_no, dt, sink).await?;
                    if sink.is_cancelled() {
                        return Err(SourceError::transient("cancelled"));
                    }
                }
                Ok::<(), SourceError>(())
            };
            let (read, landed) = tokio::join!(reading, landing);
            landed?;
            return read;
        }
        let mut after: Option<Vec<String>> = None;
        loop {
            let (sql, params) =
                page_query(&*self.db, stream, bounds, after.as_deref(), self.batch_size);
            let rows = session.rows(&sql, params).await?;
            let full = rows.len() >= self.batch_size;
            if rows.is_empty() {
                break;
            }
            page_no += 1;
            after = self.land_page(stream, rows, page_no, dt, sink).await?;
            if !full {
                break;
            }
            if sink.is_cancelled() {
                return Err(SourceError::transient("cancelled"));
            }
        }
        Ok(())
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
        let stream = self.stream(&spec.name)?;
        let dt = window.today.to_string();
        let column = match stream.mode {
            Mode::Full => {
                return Ok(StreamPlan {
                    slices: vec![Slice {
                        key: "snapshot".into(),
                        params: json!({"dt": dt}),
                    }],
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
            matches!(stream.mode, Mode::Cursor { overlap: Some((amount, _)), .. } if amount > 0.0);
        if lower.as_deref() == Some(upper.as_str()) && !overlap {
            // Nothing past the cursor: no query at all.
            return Ok(StreamPlan {
                slices: Vec::new(),
                cursor_after: None,
            });
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
            cursor_after: Some(json!({"column": column_name, "value": upper})),
        })
    }

    async fn read(
        &self,
        spec: &StreamSpec,
        slice: &Slice,
        sink: &mut dyn PageSink,
    ) -> Result<(), SourceError> {
        let stream = self.stream(&spec.name)?;
        let bounds = Bounds::of(slice);
        let dt = slice
            .params
            .get("dt")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        let mut session = self.db.session().await?;
        let read = self
            .read_snapshot(stream, &bounds, &dt, &mut *session, sink)
            .await;
        let closed = session.close().await;
        read.and(closed)
    }

    fn decode(
        &self,
        _stream: &StreamSpec,
        _slice: &Slice,
        page: &LandedPage,
        body: &[u8],
        _state: &mut DecodeState,
    ) -> Option<Result<DecodedPage, SourceError>> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_become_rfc3339() {
        assert_eq!(
            iso_timestamp("2024-07-01 10:11:12.123456+00"),
            "2024-07-01T10:11:12.123456Z"
        );
        assert_eq!(iso_timestamp("2024-07-01 10:11:12"), "2024-07-01T10:11:12");
    }

    #[test]
    fn cells_keep_exact_text() {
        let col = |ty| SqlColumn {
            name: "c".into(),
            ty,
            read_as: ReadAs::Text,
            source_type: String::new(),
        };
        assert_eq!(
            cell_json(
                &col(FieldType::numeric(2)),
                Some("12345678901234567890.12".into())
            ),
            json!("12345678901234567890.12")
        );
        assert_eq!(
            cell_json(&col(FieldType::Bigint), Some("-9223372036854775808".into())),
            json!(i64::MIN)
        );
        assert_eq!(
            cell_json(&col(FieldType::Boolean), Some("t".into())),
            json!(true)
        );
        assert_eq!(
            cell_json(&col(FieldType::Double), Some("NaN".into())),
            json!("NaN")
        );
        assert_eq!(
            cell_json(&col(FieldType::Json), Some(r#"{"b":1,"a":[2]}"#.into())),
            json!({"b":1,"a":[2]})
        );
        assert_eq!(cell_json(&col(FieldType::Text), None), Value::Null);
    }
}
