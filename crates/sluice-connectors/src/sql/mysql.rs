//! MySQL and MariaDB: sessions over mysql_async (TLS by rustls), dialect and types.
//!
//! Rows come over the binary protocol and are written back as the server's own
//! text forms (decimals as sent, datetimes with microseconds, in a UTC session);
//! binary strings are read as hex. `tinyint(1)` is a boolean, `bigint unsigned` a
//! `numeric(20,0)`; MariaDB's JSON (a longtext with a `json_valid` check) is found
//! through the catalog.

use async_trait::async_trait;
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use mysql_async::{Column, Conn, Opts, OptsBuilder, Params, Row, SslOpts, Value};
use sluice_core::schema::{FieldType, MAX_DECIMAL_PRECISION};
use sluice_core::secret::redact;
use sluice_core::source::{ErrorClass, SourceError};
use tokio::sync::mpsc;

use super::config::{Overlap, TlsMode};
use super::{
    CatalogTable, Database, Described, DescribedColumn, ReadAs, Relation, Session, SqlColumn,
    TextRows,
};
use super::ranges::SharedSnapshot;

/// The character set number of binary strings (blob, varbinary, binary).
const BINARY_CHARSET: u16 = 63;

#[derive(Clone)]
pub struct Mysql {
    opts: Opts,
    described: String,
}

impl Mysql {
    /// Validates the URL without connecting.
    pub fn new(url: &url::Url, tls: TlsMode, key_prefix: &str) -> Result<Mysql, SourceError> {
        let url_error = |message: String| SourceError::config(message, format!("{key_prefix}.url"));
        if !matches!(url.scheme(), "mysql" | "mariadb") {
            return Err(url_error(format!(
                "the URL scheme is `{}`; expected mysql://user:password@host:3306/database",
                url.scheme()
            )));
        }
        let mut normalised = url.clone();
        let _ = normalised.set_scheme("mysql");
        let opts = Opts::from_url(normalised.as_str())
            .map_err(|e| url_error(redact(&format!("invalid connection URL: {e}"))))?;
        let ssl = match tls {
            TlsMode::Disable => None,
            TlsMode::Require => Some(
                SslOpts::default()
                    .with_danger_accept_invalid_certs(true)
                    .with_danger_skip_domain_validation(true),
            ),
            TlsMode::VerifyFull => Some(SslOpts::default()),
        };
        let opts = OptsBuilder::from_opts(opts)
            .ssl_opts(ssl)
            // The TCP address the URL names, not a local socket it might guess.
            .prefer_socket(false)
            .into();
        let described = format!(
            "mysql {}:{}{}",
            url.host_str().unwrap_or("localhost"),
            url.port().unwrap_or(3306),
            url.path()
        );
        Ok(Mysql { opts, described })
    }
}

fn my_error(e: mysql_async::Error) -> SourceError {
    match &e {
        mysql_async::Error::Server(server) => {
            let message = format!("{} (error {})", server.message, server.code);
            // 42xxx: syntax, unknown table or column, privileges; 28000: access denied.
            if server.state.starts_with("42") || server.state.starts_with("28") {
                SourceError::new(ErrorClass::Configuration, message)
            } else {
                SourceError::transient(message)
            }
        }
        other => SourceError::transient(other.to_string()),
    }
}

#[async_trait]
impl Database for Mysql {
    fn kind(&self) -> &'static str {
        "mysql"
    }

    async fn session(&self) -> Result<Box<dyn Session>, SourceError> {
        Ok(Box::new(self.open_session().await?))
    }

    /// InnoDB exports no snapshot: one session per range starts its consistent
    /// snapshot while a brief `FLUSH TABLES … WITH READ LOCK` (the whole server for a
    /// query) holds off commits to the table, so all see the same committed rows.
    /// Without the RELOAD privilege (or when the lock waits over 10 s), each range
    /// reads in a snapshot of its own, with a warning: a row's changes are still seen
    /// whole, but a transaction across two ranges may be seen in one and not the other.
    async fn shared_snapshot(
        &self,
        relation: &Relation,
        sessions: usize,
    ) -> Result<Box<dyn SharedSnapshot>, SourceError> {
        let lock = match relation {
            Relation::Table { .. } => {
                format!("FLUSH TABLES {} WITH READ LOCK", self.relation_sql(relation))
            }
            Relation::Query(_) => "FLUSH TABLES WITH READ LOCK".into(),
        };
        let mut locker = self.open_session().await?;
        let locked = async {
            locker.conn.query_drop("SET SESSION lock_wait_timeout = 10").await?;
            locker.conn.query_drop(&lock).await
        }
        .await;
        let mut opened = Vec::new();
        match locked {
            Ok(()) => {
                let started = async {
                    for _ in 0..sessions {
                        let mut session = self.open_session().await?;
                        session.begin_snapshot().await?;
                        opened.push(std::sync::Mutex::new(Some(session)));
                    }
                    Ok::<(), SourceError>(())
                }
                .await;
                let unlocked = locker.conn.query_drop("UNLOCK TABLES").await.map_err(my_error);
                started.and(unlocked)?;
            }
            Err(e) => tracing::warn!(
                relation = %relation.describe(), error = %my_error(e).message,
                "cannot hold off commits while the ranges start their snapshots; each range reads in a snapshot of its own"
            ),
        }
        let _ = locker.conn.disconnect().await;
        Ok(Box::new(MySharedSnapshot {
            db: self.clone(),
            started: opened,
        }))
    }

    fn quote(&self, ident: &str) -> String {
        format!("`{}`", ident.replace('`', "``"))
    }

    fn select_expr(&self, column: &SqlColumn) -> String {
        let name = format!("q.{}", self.quote(&column.name));
        match column.read_as {
            ReadAs::Hex => format!("LOWER(HEX({name}))"),
            _ => name,
        }
    }

    fn key_expr(&self, column: &SqlColumn) -> String {
        format!("q.{}", self.quote(&column.name))
    }

    fn param(&self, _n: usize, column: &SqlColumn) -> String {
        match column.ty {
            FieldType::Bigint => "CAST(? AS SIGNED)".into(),
            FieldType::Numeric { precision, scale } => {
                format!("CAST(? AS DECIMAL({precision},{scale}))")
            }
            FieldType::Timestamp => "CAST(? AS DATETIME(6))".into(),
            FieldType::Date => "CAST(? AS DATE)".into(),
            FieldType::Double => "CAST(? AS DOUBLE)".into(),
            _ => "?".into(),
        }
    }

    fn minus(&self, value: String, overlap: Overlap) -> String {
        let Overlap {
            amount,
            is_duration,
        } = overlap;
        if is_duration {
            format!(
                "({value} - INTERVAL {} MICROSECOND)",
                (amount * 1e6).round() as i64
            )
        } else {
            format!("({value} - {amount})")
        }
    }

    fn max_text(&self, column: &SqlColumn) -> String {
        format!("CAST(MAX(q.{}) AS CHAR)", self.quote(&column.name))
    }
}

struct MySession {
    conn: Conn,
    in_transaction: bool,
}

impl Mysql {
    /// A new connection in a UTC session.
    async fn open_session(&self) -> Result<MySession, SourceError> {
        let mut conn = Conn::new(self.opts.clone()).await.map_err(|e| {
            let e = my_error(e);
            SourceError::new(e.class, format!("{}: {}", self.described, e.message))
        })?;
        // Instants in UTC, whatever the server's zone.
        conn.query_drop("SET time_zone = '+00:00'")
            .await
            .map_err(my_error)?;
        Ok(MySession {
            conn,
            in_transaction: false,
        })
    }
}

/// Sessions whose snapshots started together, one per range (empty: no lock was had).
struct MySharedSnapshot {
    db: Mysql,
    started: Vec<std::sync::Mutex<Option<MySession>>>,
}

#[async_trait]
impl SharedSnapshot for MySharedSnapshot {
    async fn session(&self, index: usize) -> Result<Box<dyn Session>, SourceError> {
        let started = self
            .started
            .get(index)
            .and_then(|s| s.lock().expect("session lock").take());
        if let Some(session) = started {
            return Ok(Box::new(session));
        }
        if !self.started.is_empty() {
            // A retried range: its session was used up, and InnoDB cannot rejoin it.
            tracing::warn!(range = index, "a retried range reads in a snapshot of its own");
        }
        let mut session = self.db.open_session().await?;
        session.begin_snapshot().await?;
        Ok(Box::new(session))
    }
}

/// A value of the binary protocol as the text the server would have sent.
fn value_text(value: Value, column: &Column) -> Option<String> {
    Some(match value {
        Value::NULL => return None,
        Value::Bytes(bytes) => match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        },
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Double(d) => d.to_string(),
        Value::Date(y, mo, d, h, mi, s, us) => {
            if matches!(
                column.column_type(),
                ColumnType::MYSQL_TYPE_DATE | ColumnType::MYSQL_TYPE_NEWDATE
            ) {
                format!("{y:04}-{mo:02}-{d:02}")
            } else {
                format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}")
            }
        }
        Value::Time(negative, days, h, mi, s, us) => {
            let hours = days * 24 + h as u32;
            let sign = if negative { "-" } else { "" };
            let fraction = if us > 0 {
                format!(".{us:06}")
            } else {
                String::new()
            };
            format!("{sign}{hours:02}:{mi:02}:{s:02}{fraction}")
        }
    })
}

fn row_text(row: Row) -> Vec<Option<String>> {
    let columns = row.columns();
    row.unwrap()
        .into_iter()
        .zip(columns.iter())
        .map(|(value, column)| value_text(value, column))
        .collect()
}

fn params(values: Vec<String>) -> Params {
    if values.is_empty() {
        Params::Empty
    } else {
        Params::Positional(values.into_iter().map(Value::from).collect())
    }
}

#[async_trait]
impl Session for MySession {
    async fn begin_snapshot(&mut self) -> Result<(), SourceError> {
        self.conn
            .query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(my_error)?;
        self.conn
            .query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .await
            .map_err(my_error)?;
        self.in_transaction = true;
        Ok(())
    }

    async fn rows(&mut self, sql: &str, values: Vec<String>) -> Result<TextRows, SourceError> {
        let rows: Vec<Row> = self
            .conn
            .exec(sql, params(values))
            .await
            .map_err(my_error)?;
        Ok(rows.into_iter().map(row_text).collect())
    }

    async fn stream(
        &mut self,
        sql: &str,
        page_rows: usize,
        pages: mpsc::Sender<TextRows>,
    ) -> Result<(), SourceError> {
        // Rows are read off the socket as the pages are taken: one page in memory.
        let mut result = self
            .conn
            .exec_iter(sql, Params::Empty)
            .await
            .map_err(my_error)?;
        let mut page = Vec::with_capacity(page_rows);
        let mut receiver_gone = false;
        while let Some(row) = result.next().await.map_err(my_error)? {
            if receiver_gone {
                continue; // drain the result so the connection stays usable
            }
            page.push(row_text(row));
            if page.len() >= page_rows && pages.send(std::mem::take(&mut page)).await.is_err() {
                receiver_gone = true;
            }
        }
        if !page.is_empty() && !receiver_gone {
            let _ = pages.send(page).await;
        }
        Ok(())
    }

    async fn close(mut self: Box<Self>) -> Result<(), SourceError> {
        if self.in_transaction {
            self.conn.query_drop("COMMIT").await.map_err(my_error)?;
        }
        self.conn.disconnect().await.map_err(my_error)
    }

    async fn describe(
        &mut self,
        relation: &Relation,
        relation_sql: &str,
    ) -> Result<Described, SourceError> {
        let statement = self
            .conn
            .prep(format!("SELECT * FROM {relation_sql} AS q LIMIT 0"))
            .await
            .map_err(my_error)?;
        let mut columns: Vec<DescribedColumn> = statement
            .columns()
            .iter()
            .map(|c| {
                let (source_type, mapped) = mysql_type(c);
                DescribedColumn {
                    name: c.name_str().into_owned(),
                    source_type,
                    mapped,
                }
            })
            .collect();
        let Relation::Table { schema, name } = relation else {
            return Ok(Described {
                columns,
                primary_key: Vec::new(),
            });
        };
        let (schema_sql, mut args) = match schema {
            Some(s) => ("?", vec![s.clone()]),
            None => ("DATABASE()", Vec::new()),
        };
        args.push(name.clone());
        let primary_key = self
            .rows(
                &format!(
                    "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
                     WHERE TABLE_SCHEMA = {schema_sql} AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' \
                     ORDER BY ORDINAL_POSITION"
                ),
                args.clone(),
            )
            .await?
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect();
        // MariaDB's JSON is a longtext with a `json_valid` check named after the
        // column (MySQL's own JSON type is already known from the column type).
        let json_columns: Vec<String> = self
            .rows(
                &format!(
                    "SELECT CONSTRAINT_NAME FROM information_schema.CHECK_CONSTRAINTS \
                     WHERE CONSTRAINT_SCHEMA = {schema_sql} AND TABLE_NAME = ? \
                     AND CHECK_CLAUSE LIKE 'json_valid(%'"
                ),
                args,
            )
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect();
        for column in &mut columns {
            if json_columns.contains(&column.name)
                && matches!(column.mapped, Ok((FieldType::Text, ReadAs::Text)))
            {
                column.mapped = Ok((FieldType::Json, ReadAs::Text));
                column.source_type = "json".into();
            }
        }
        Ok(Described {
            columns,
            primary_key,
        })
    }

    async fn tables(&mut self) -> Result<Vec<CatalogTable>, SourceError> {
        let rows = self
            .rows(
                "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = DATABASE() ORDER BY 1, 2",
                Vec::new(),
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let mut r = r.into_iter();
                Some(CatalogTable {
                    schema: r.next().flatten()?,
                    name: r.next().flatten()?,
                })
            })
            .collect())
    }
}

/// The type's name and its D1 type, or why there is none.
pub fn mysql_type(c: &Column) -> (String, Result<(FieldType, ReadAs), String>) {
    use ColumnType::*;
    let unsigned = c.flags().contains(ColumnFlags::UNSIGNED_FLAG);
    let binary = c.character_set() == BINARY_CHARSET;
    let suffix = if unsigned { " unsigned" } else { "" };
    let text = |name: &str| {
        if binary {
            (
                format!("{name} (binary)"),
                Ok((FieldType::Text, ReadAs::Hex)),
            )
        } else {
            (name.to_string(), Ok((FieldType::Text, ReadAs::Text)))
        }
    };
    let plain = |name: String, ty: FieldType| (name, Ok((ty, ReadAs::Text)));
    match c.column_type() {
        MYSQL_TYPE_TINY if c.column_length() == 1 => plain("tinyint(1)".into(), FieldType::Boolean),
        MYSQL_TYPE_TINY => plain(format!("tinyint{suffix}"), FieldType::Bigint),
        MYSQL_TYPE_SHORT => plain(format!("smallint{suffix}"), FieldType::Bigint),
        MYSQL_TYPE_INT24 => plain(format!("mediumint{suffix}"), FieldType::Bigint),
        MYSQL_TYPE_LONG => plain(format!("int{suffix}"), FieldType::Bigint),
        MYSQL_TYPE_YEAR => plain("year".into(), FieldType::Bigint),
        // Up to 18446744073709551615: more than a signed bigint holds.
        MYSQL_TYPE_LONGLONG if unsigned => plain(
            "bigint unsigned".into(),
            FieldType::Numeric {
                precision: 20,
                scale: 0,
            },
        ),
        MYSQL_TYPE_LONGLONG => plain("bigint".into(), FieldType::Bigint),
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => {
            let scale = c.decimals() as u32;
            // The display length counts the point and, when signed, the sign.
            let precision = c
                .column_length()
                .saturating_sub(u32::from(scale > 0))
                .saturating_sub(u32::from(!unsigned));
            let name = format!("decimal({precision},{scale}){suffix}");
            if precision > MAX_DECIMAL_PRECISION as u32 || scale > 18 {
                let reason = format!(
                    "{name} is wider than a D1 column holds exactly (at most 38 digits, 18 after the point)"
                );
                return (name, Err(reason));
            }
            plain(
                name,
                FieldType::Numeric {
                    precision: precision as u8,
                    scale: scale as i8,
                },
            )
        }
        MYSQL_TYPE_FLOAT => plain("float".into(), FieldType::Double),
        MYSQL_TYPE_DOUBLE => plain("double".into(), FieldType::Double),
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => plain("date".into(), FieldType::Date),
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => {
            plain("datetime".into(), FieldType::Timestamp)
        }
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => {
            plain("timestamp".into(), FieldType::Timestamp)
        }
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => plain("time".into(), FieldType::Text),
        MYSQL_TYPE_JSON => plain("json".into(), FieldType::Json),
        MYSQL_TYPE_STRING if c.flags().contains(ColumnFlags::ENUM_FLAG) => text("enum"),
        MYSQL_TYPE_STRING if c.flags().contains(ColumnFlags::SET_FLAG) => text("set"),
        MYSQL_TYPE_ENUM => text("enum"),
        MYSQL_TYPE_SET => text("set"),
        MYSQL_TYPE_STRING => text("char"),
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING => text("varchar"),
        MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB | MYSQL_TYPE_BLOB => {
            if binary {
                text("blob")
            } else {
                text("text")
            }
        }
        MYSQL_TYPE_NULL => text("null"),
        other => {
            let name = format!("{other:?}")
                .trim_start_matches("MYSQL_TYPE_")
                .to_ascii_lowercase();
            let reason = format!("type `{name}` is not supported");
            (name, Err(reason))
        }
    }
}
