//! SQLite database files: sessions over rusqlite (on blocking threads), dialect and
//! types.
//!
//! A file is opened read-only; a snapshot is a read transaction (`BEGIN` and a first
//! read), which sees one consistent state of the file whether it is in WAL or
//! rollback-journal mode. SQLite stores any value in any column, so the D1 type comes
//! from the column's *declared* type (`INTEGER`, `DECIMAL(12,2)`, `DATETIME`), read
//! by SQLite's own affinity rules where the name alone says enough; a declared type
//! that does not pin the values down (none at all, `NUMERIC` without a scale, an
//! unknown name) is an error naming the column. A stored value that does not fit its
//! declared type (text in an INTEGER column) reaches typing as it is and is
//! quarantined there with its reason.
//!
//! Values travel as text: integers as digits, reals in their shortest exact form (so
//! a `DECIMAL(12,2)` value stored as the real 12.3 becomes 12.30 again), blobs as
//! lowercase hex.

use std::path::PathBuf;

use async_trait::async_trait;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use sluice_core::schema::{FieldType, MAX_DECIMAL_PRECISION};
use sluice_core::source::{ErrorClass, SourceError};
use tokio::sync::mpsc;

use super::config::Overlap;
use super::{
    CatalogTable, Database, Described, DescribedColumn, ReadAs, Relation, Session, SqlColumn,
    TextRows,
};

/// How long a read waits for a writer's lock (rollback-journal mode) before failing.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Sqlite {
    path: PathBuf,
}

impl Sqlite {
    /// `path` is already resolved against the pipeline's folder.
    pub fn new(path: PathBuf) -> Sqlite {
        Sqlite { path }
    }
}

fn sqlite_error(e: rusqlite::Error) -> SourceError {
    use rusqlite::ErrorCode::*;
    match e.sqlite_error_code() {
        // Another process holds the file: worth another attempt.
        Some(DatabaseBusy | DatabaseLocked) => SourceError::transient(e.to_string()),
        Some(NotADatabase | DatabaseCorrupt) => SourceError::data(e.to_string()),
        // Syntax, no such table or column, cannot open the file.
        _ => SourceError::new(ErrorClass::Configuration, e.to_string()),
    }
}

#[async_trait]
impl Database for Sqlite {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn location_key(&self) -> &'static str {
        "path"
    }

    /// One file has no snapshot to share between connections, and one reader already
    /// reads it as fast as the disk allows: `ranges:` is refused with its key.
    async fn shared_snapshot(
        &self,
        relation: &Relation,
        _sessions: usize,
    ) -> Result<Box<dyn super::ranges::SharedSnapshot>, SourceError> {
        Err(SourceError::config(
            format!(
                "`ranges:` is for PostgreSQL and MySQL sources; `{}` is a SQLite file, read by one connection",
                relation.describe()
            ),
            "ranges",
        ))
    }

    async fn session(&self) -> Result<Box<dyn Session>, SourceError> {
        let path = self.path.clone();
        let conn = tokio::task::spawn_blocking(move || {
            if !path.is_file() {
                // As a server that does not answer: the pipeline still loads (plan,
                // export, serve), and runs of its streams fail with this until the
                // file is there.
                return Err(SourceError::transient(format!(
                    "no SQLite database file at {}",
                    path.display()
                )));
            }
            let conn = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| {
                let e = sqlite_error(e);
                SourceError::new(e.class, format!("sqlite {}: {}", path.display(), e.message))
            })?;
            conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite_error)?;
            Ok(conn)
        })
        .await
        .map_err(|e| SourceError::transient(format!("the SQLite thread stopped: {e}")))??;
        Ok(Box::new(SqliteSession {
            conn: Some(conn),
            in_transaction: false,
        }))
    }

    fn quote(&self, ident: &str) -> String {
        format!("\"{}\"", ident.replace('"', "\"\""))
    }

    fn select_expr(&self, column: &SqlColumn) -> String {
        let name = format!("q.{}", self.quote(&column.name));
        match column.read_as {
            // As bytes (hex in `value_text`), NULL kept: text stored in a BLOB column
            // is its UTF-8 bytes, one form whatever was stored.
            ReadAs::Hex => format!("CAST({name} AS BLOB)"),
            _ => name,
        }
    }

    fn key_expr(&self, column: &SqlColumn) -> String {
        format!("q.{}", self.quote(&column.name))
    }

    fn param(&self, _n: usize, column: &SqlColumn) -> String {
        // Parameters are bound as text; a numeric column compares as a number.
        match column.ty {
            FieldType::Bigint => "CAST(? AS INTEGER)".into(),
            FieldType::Double => "CAST(? AS REAL)".into(),
            FieldType::Numeric { .. } => "CAST(? AS NUMERIC)".into(),
            _ => "?".into(),
        }
    }

    fn minus(&self, value: String, overlap: Overlap) -> String {
        let Overlap {
            amount,
            is_duration,
        } = overlap;
        if is_duration {
            // Whole seconds, rounded up: an overlap a little wider is harmless (merged).
            format!("datetime({value}, '-{} seconds')", amount.ceil() as i64)
        } else {
            format!("({value} - {amount})")
        }
    }

    fn max_text(&self, column: &SqlColumn) -> String {
        format!("max(q.{})", self.quote(&column.name))
    }
}

struct SqliteSession {
    /// `None` only while a blocking call has it.
    conn: Option<Connection>,
    in_transaction: bool,
}

impl SqliteSession {
    /// Runs `work` with the connection on a blocking thread (rusqlite blocks).
    async fn with<T, F>(&mut self, work: F) -> Result<T, SourceError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, SourceError> + Send + 'static,
    {
        let conn = self
            .conn
            .take()
            .ok_or_else(|| SourceError::transient("the SQLite connection was lost"))?;
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let result = work(&conn);
            (conn, result)
        })
        .await
        .map_err(|e| SourceError::transient(format!("the SQLite thread stopped: {e}")))?;
        self.conn = Some(conn);
        result
    }
}

/// A stored value as text (None = NULL).
fn value_text(value: ValueRef<'_>) -> Option<String> {
    Some(match value {
        ValueRef::Null => return None,
        ValueRef::Integer(i) => i.to_string(),
        // Rust prints the shortest text that reads back as the same double, never
        // in exponent form: the digits a DECIMAL value was stored from.
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Blob(b) => hex::encode(b),
    })
}

fn query_rows(
    conn: &Connection,
    sql: &str,
    params: &[String],
    mut each: impl FnMut(Vec<Option<String>>) -> bool,
) -> rusqlite::Result<()> {
    let mut statement = conn.prepare(sql)?;
    let width = statement.column_count();
    let mut rows = statement.query(rusqlite::params_from_iter(params.iter()))?;
    while let Some(row) = rows.next()? {
        let cells = (0..width)
            .map(|i| row.get_ref(i).map(value_text))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if !each(cells) {
            break;
        }
    }
    Ok(())
}

#[async_trait]
impl Session for SqliteSession {
    async fn begin_snapshot(&mut self) -> Result<(), SourceError> {
        // A deferred transaction takes its snapshot at its first read: read now, so
        // the snapshot is this moment's and not the first page's.
        self.with(|conn| {
            conn.execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;")
                .map_err(sqlite_error)
        })
        .await?;
        self.in_transaction = true;
        Ok(())
    }

    async fn rows(&mut self, sql: &str, params: Vec<String>) -> Result<TextRows, SourceError> {
        let sql = sql.to_string();
        self.with(move |conn| {
            let mut out = Vec::new();
            query_rows(conn, &sql, &params, |row| {
                out.push(row);
                true
            })
            .map_err(sqlite_error)?;
            Ok(out)
        })
        .await
    }

    async fn stream(
        &mut self,
        sql: &str,
        page_rows: usize,
        pages: mpsc::Sender<TextRows>,
    ) -> Result<(), SourceError> {
        let sql = sql.to_string();
        self.with(move |conn| {
            // One page in memory: the blocking thread waits for the reader to take it.
            let mut page = Vec::with_capacity(page_rows);
            let mut receiver_gone = false;
            query_rows(conn, &sql, &[], |row| {
                page.push(row);
                if page.len() >= page_rows
                    && pages.blocking_send(std::mem::take(&mut page)).is_err()
                {
                    receiver_gone = true;
                    return false;
                }
                true
            })
            .map_err(sqlite_error)?;
            if !page.is_empty() && !receiver_gone {
                let _ = pages.blocking_send(page);
            }
            Ok(())
        })
        .await
    }

    async fn close(mut self: Box<Self>) -> Result<(), SourceError> {
        if self.in_transaction {
            self.with(|conn| conn.execute_batch("COMMIT").map_err(sqlite_error))
                .await?;
        }
        Ok(())
    }

    async fn describe(
        &mut self,
        relation: &Relation,
        relation_sql: &str,
    ) -> Result<Described, SourceError> {
        let relation = relation.clone();
        let relation_sql = relation_sql.to_string();
        self.with(move |conn| describe(conn, &relation, &relation_sql))
            .await
    }

    async fn tables(&mut self) -> Result<Vec<CatalogTable>, SourceError> {
        let rows = self
            .rows(
                "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') \
                 AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
                Vec::new(),
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .map(|name| CatalogTable {
                schema: "main".into(),
                name,
            })
            .collect())
    }
}

/// The columns of a table or view (declared types from `pragma_table_info`), or of a
/// query (through a temporary view, whose columns carry the declared types of the
/// table columns they select; computed columns have none and must be declared).
fn describe(
    conn: &Connection,
    relation: &Relation,
    relation_sql: &str,
) -> Result<Described, SourceError> {
    let (schema, table, what) = match relation {
        Relation::Table { schema, name } => (
            schema.clone().unwrap_or_else(|| "main".into()),
            name.clone(),
            relation.describe(),
        ),
        Relation::Query(_) => {
            conn.execute_batch(&format!(
                "DROP VIEW IF EXISTS temp.sluice_describe; \
                 CREATE TEMP VIEW sluice_describe AS SELECT * FROM {relation_sql} AS q"
            ))
            .map_err(sqlite_error)?;
            ("temp".into(), "sluice_describe".into(), "query".into())
        }
    };
    let mut statement = conn
        .prepare("SELECT name, type, pk FROM pragma_table_info(?1, ?2) ORDER BY cid")
        .map_err(sqlite_error)?;
    let mut columns = Vec::new();
    let mut keyed: Vec<(i64, String)> = Vec::new();
    let rows = statement
        .query_map([&table, &schema], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                row.get::<_, i64>(2)?,
            ))
        })
        .map_err(sqlite_error)?;
    for row in rows {
        let (name, declared, pk) = row.map_err(sqlite_error)?;
        if pk > 0 {
            keyed.push((pk, name.clone()));
        }
        columns.push(DescribedColumn {
            mapped: sqlite_type(&declared),
            source_type: declared,
            name,
        });
    }
    if matches!(relation, Relation::Query(_)) {
        conn.execute_batch("DROP VIEW IF EXISTS temp.sluice_describe")
            .map_err(sqlite_error)?;
    }
    if columns.is_empty() {
        return Err(SourceError::new(
            ErrorClass::Configuration,
            format!("no table or view `{what}` in the SQLite database"),
        ));
    }
    keyed.sort();
    Ok(Described {
        columns,
        primary_key: keyed.into_iter().map(|(_, name)| name).collect(),
    })
}

/// The D1 type of a declared SQLite column type, or why there is none.
///
/// Names SQLite gives NUMERIC affinity are read by what they say (`DATE`,
/// `DATETIME`, `TIMESTAMP`, `BOOLEAN`, `DECIMAL(p,s)`, `JSON`); otherwise SQLite's
/// own rules decide: a name containing INT is an integer, CHAR/CLOB/TEXT text,
/// BLOB bytes, REAL/FLOA/DOUB a double.
pub fn sqlite_type(declared: &str) -> Result<(FieldType, ReadAs), String> {
    let upper = declared.trim().to_ascii_uppercase();
    let base = upper.split('(').next().unwrap_or_default().trim();
    let plain = |ty| Ok((ty, ReadAs::Text));
    match base {
        "" => return Err("no declared type: SQLite lets such a column hold any kind of value, so its type is ambiguous".into()),
        "DATE" => return plain(FieldType::Date),
        "DATETIME" | "TIMESTAMP" => return plain(FieldType::Timestamp),
        "BOOLEAN" | "BOOL" => return plain(FieldType::Boolean),
        "JSON" | "JSONB" => return plain(FieldType::Json),
        "DECIMAL" | "NUMERIC" => return decimal(&upper),
        _ => {}
    }
    if upper.contains("INT") {
        plain(FieldType::Bigint)
    } else if ["CHAR", "CLOB", "TEXT"].iter().any(|t| upper.contains(t)) {
        plain(FieldType::Text)
    } else if upper.contains("BLOB") {
        Ok((FieldType::Text, ReadAs::Hex))
    } else if ["REAL", "FLOA", "DOUB"].iter().any(|t| upper.contains(t)) {
        plain(FieldType::Double)
    } else {
        Err(format!(
            "declared type `{declared}` is not one sluice reads exactly (SQLite gives it NUMERIC affinity: a value may be stored as an integer, a real or text)"
        ))
    }
}

/// `DECIMAL(p,s)` / `NUMERIC(p,s)`; without a scale the digits after the point are unknown.
fn decimal(upper: &str) -> Result<(FieldType, ReadAs), String> {
    let args = upper
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .map(|args| {
            args.split(',')
                .map(|a| a.trim().parse::<u32>())
                .collect::<Result<Vec<_>, _>>()
        });
    let (precision, scale) = match args {
        Some(Ok(a)) if a.len() == 2 => (a[0], a[1]),
        Some(Ok(a)) if a.len() == 1 => (a[0], 0),
        _ => {
            return Err(format!(
                "`{upper}` has no precision and scale, so its values' digits are unknown; declare e.g. `numeric(18,4)` under `columns:`"
            ))
        }
    };
    if precision > MAX_DECIMAL_PRECISION as u32 || scale > 18 || scale > precision {
        return Err(format!(
            "`{upper}` is wider than a D1 column holds exactly (at most 38 digits, 18 after the point)"
        ));
    }
    Ok((
        FieldType::Numeric {
            precision: precision as u8,
            scale: scale as i8,
        },
        ReadAs::Text,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_map_by_name_then_by_affinity() {
        let ty = sqlite_type;
        assert_eq!(ty("INTEGER"), Ok((FieldType::Bigint, ReadAs::Text)));
        assert_eq!(ty("unsigned big int"), Ok((FieldType::Bigint, ReadAs::Text)));
        assert_eq!(ty("VARCHAR(40)"), Ok((FieldType::Text, ReadAs::Text)));
        assert_eq!(ty("blob"), Ok((FieldType::Text, ReadAs::Hex)));
        assert_eq!(ty("DOUBLE PRECISION"), Ok((FieldType::Double, ReadAs::Text)));
        assert_eq!(
            ty("decimal(12, 2)"),
            Ok((
                FieldType::Numeric {
                    precision: 12,
                    scale: 2
                },
                ReadAs::Text
            ))
        );
        assert_eq!(ty("DATE"), Ok((FieldType::Date, ReadAs::Text)));
        assert_eq!(ty("datetime"), Ok((FieldType::Timestamp, ReadAs::Text)));
        assert_eq!(ty("TIMESTAMP"), Ok((FieldType::Timestamp, ReadAs::Text)));
        assert_eq!(ty("BOOLEAN"), Ok((FieldType::Boolean, ReadAs::Text)));
        assert!(ty("").unwrap_err().contains("ambiguous"));
        assert!(ty("NUMERIC").unwrap_err().contains("precision and scale"));
        assert!(ty("MONEY").unwrap_err().contains("NUMERIC affinity"));
        assert!(ty("decimal(50,2)").unwrap_err().contains("wider"));
    }

    #[test]
    fn reals_keep_their_shortest_exact_digits() {
        assert_eq!(value_text(ValueRef::Real(12.3)).unwrap(), "12.3");
        assert_eq!(value_text(ValueRef::Real(1e20)).unwrap(), "100000000000000000000");
        assert_eq!(value_text(ValueRef::Real(1e-7)).unwrap(), "0.0000001");
        assert_eq!(value_text(ValueRef::Blob(&[0, 0xab])).unwrap(), "00ab");
        assert_eq!(value_text(ValueRef::Null), None);
    }
}
