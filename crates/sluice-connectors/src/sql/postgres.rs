//! PostgreSQL: sessions over tokio-postgres (TLS by rustls), its dialect and types.
//!
//! Every column is selected as PostgreSQL's own text of the value in a session set
//! to UTC and ISO dates, so numerics keep their digits and timestamps their
//! microseconds; bytea is read as hex, arrays as `to_json`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluice_core::schema::{FieldType, MAX_DECIMAL_PRECISION};
use sluice_core::secret::redact;
use sluice_core::source::SourceError;
use tokio::sync::mpsc;
use tokio_postgres::types::{Kind, ToSql, Type};
use tokio_postgres::{Client, NoTls};

use super::config::{Overlap, TlsMode};
use super::{
    CatalogTable, Database, Described, DescribedColumn, ReadAs, Relation, Session, SqlColumn,
    TextRows,
};
use super::ranges::SharedSnapshot;

/// The widest decimal scale a D1 column holds (see `FieldType::parse`).
const MAX_SCALE: i32 = 18;

#[derive(Clone)]
pub struct Postgres {
    connect: tokio_postgres::Config,
    tls: Option<Arc<rustls::ClientConfig>>,
    described: String,
}

impl Postgres {
    /// Validates the URL without connecting.
    pub fn new(url: &url::Url, tls: TlsMode, key_prefix: &str) -> Result<Postgres, SourceError> {
        let url_error = |message: String| SourceError::config(message, format!("{key_prefix}.url"));
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(url_error(format!(
                "the URL scheme is `{}`; expected postgres://user:password@host:5432/database",
                url.scheme()
            )));
        }
        // TLS is the `tls:` key's decision, not the URL's.
        let (stripped, _) = sluice_core::connection::take_query_param(url, "sslmode");
        let mut connect: tokio_postgres::Config =
            stripped
                .as_str()
                .parse()
                .map_err(|e: tokio_postgres::Error| {
                    url_error(redact(&format!("invalid connection URL: {e}")))
                })?;
        if connect.get_application_name().is_none() {
            connect.application_name("sluice");
        }
        connect.connect_timeout(Duration::from_secs(10));
        connect.ssl_mode(match tls {
            TlsMode::Disable => tokio_postgres::config::SslMode::Disable,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let tls = match tls {
            TlsMode::Disable => None,
            TlsMode::Require => Some(Arc::new(super::tls::encrypt_only()?)),
            TlsMode::VerifyFull => Some(Arc::new(super::tls::verify_full()?)),
        };
        let host = url.host_str().unwrap_or("localhost");
        let described = format!(
            "postgres {host}:{}{}",
            url.port().unwrap_or(5432),
            url.path()
        );
        Ok(Postgres {
            connect,
            tls,
            described,
        })
    }
}

fn pg_error(e: tokio_postgres::Error) -> SourceError {
    let message = match e.as_db_error() {
        Some(db) => format!(
            "{}{}",
            db.message(),
            db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
        ),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    };
    let code = e.as_db_error().map(|db| db.code().code().to_string());
    match code.as_deref() {
        // Syntax, undefined objects, privileges, authentication, no such database.
        Some(c) if c.starts_with("42") || c.starts_with("28") || c == "3D000" => {
            SourceError::new(sluice_core::source::ErrorClass::Configuration, message)
        }
        _ => SourceError::transient(message),
    }
}

impl Postgres {
    /// A new connection, set up for exact text forms.
    async fn open_session(&self) -> Result<PgSession, SourceError> {
        let on_error = |e: tokio_postgres::Error| {
            let e = pg_error(e);
            SourceError::new(e.class, format!("{}: {}", self.described, e.message))
        };
        let client = match &self.tls {
            None => {
                let (client, connection) = self.connect.connect(NoTls).await.map_err(on_error)?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %redact(&e.to_string()), "postgres source connection ended");
                    }
                });
                client
            }
            Some(tls) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
                let (client, connection) = self.connect.connect(tls).await.map_err(on_error)?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %redact(&e.to_string()), "postgres source connection ended");
                    }
                });
                client
            }
        };
        // Text forms that do not depend on the server's settings: UTC instants,
        // ISO dates, hex bytea, floats with every digit they need.
        client
            .batch_execute(
                "SET TIME ZONE 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
                 SET bytea_output = 'hex'; SET extra_float_digits = 3",
            )
            .await
            .map_err(on_error)?;
        Ok(PgSession {
            client,
            in_transaction: false,
        })
    }
}

#[async_trait]
impl Database for Postgres {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn session(&self) -> Result<Box<dyn Session>, SourceError> {
        Ok(Box::new(self.open_session().await?))
    }

    /// An exported snapshot (`pg_export_snapshot`) held open by a session of its
    /// own; each range's session imports it (`SET TRANSACTION SNAPSHOT`).
    async fn shared_snapshot(
        &self,
        _relation: &Relation,
        _sessions: usize,
    ) -> Result<Box<dyn SharedSnapshot>, SourceError> {
        let mut holder = self.open_session().await?;
        holder.begin_snapshot().await?;
        let rows = holder
            .rows("SELECT pg_export_snapshot()", Vec::new())
            .await?;
        let id = rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
            .ok_or_else(|| SourceError::transient("pg_export_snapshot() returned nothing"))?;
        Ok(Box::new(PgSharedSnapshot {
            db: self.clone(),
            id,
            _holder: holder,
        }))
    }

    fn quote(&self, ident: &str) -> String {
        format!("\"{}\"", ident.replace('"', "\"\""))
    }

    fn select_expr(&self, column: &SqlColumn) -> String {
        let name = format!("q.{}", self.quote(&column.name));
        match column.read_as {
            ReadAs::Hex => format!("encode({name}, 'hex')"),
            ReadAs::JsonText => format!("to_json({name})::text"),
            ReadAs::Text => format!("{name}::text"),
        }
    }

    fn key_expr(&self, column: &SqlColumn) -> String {
        format!("q.{}::text", self.quote(&column.name))
    }

    fn param(&self, n: usize, column: &SqlColumn) -> String {
        format!("${n}::text::{}", column.source_type)
    }

    fn minus(&self, value: String, overlap: Overlap) -> String {
        let Overlap {
            amount,
            is_duration,
        } = overlap;
        if is_duration {
            format!("({value} - make_interval(secs => {amount}))")
        } else {
            format!("({value} - {amount})")
        }
    }

    fn max_text(&self, column: &SqlColumn) -> String {
        format!("max(q.{})::text", self.quote(&column.name))
    }
}

struct PgSession {
    client: Client,
    in_transaction: bool,
}

/// An exported snapshot, valid while the transaction of `_holder` stays open.
struct PgSharedSnapshot {
    db: Postgres,
    id: String,
    _holder: PgSession,
}

#[async_trait]
impl SharedSnapshot for PgSharedSnapshot {
    async fn session(&self, _index: usize) -> Result<Box<dyn Session>, SourceError> {
        let mut session = self.db.open_session().await?;
        // SET TRANSACTION SNAPSHOT must come before the transaction's first query.
        session
            .client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
                self.id.replace('\'', "''")
            ))
            .await
            .map_err(pg_error)?;
        session.in_transaction = true;
        Ok(Box::new(session))
    }
}

fn text_rows(rows: Vec<tokio_postgres::Row>) -> Result<TextRows, SourceError> {
    rows.iter()
        .map(|row| {
            (0..row.len())
                .map(|i| {
                    row.try_get::<_, Option<String>>(i).map_err(|e| {
                        SourceError::data(format!(
                            "column {} is not text: {e}",
                            row.columns()[i].name()
                        ))
                    })
                })
                .collect()
        })
        .collect()
}

#[async_trait]
impl Session for PgSession {
    async fn begin_snapshot(&mut self) -> Result<(), SourceError> {
        self.client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(pg_error)?;
        self.in_transaction = true;
        Ok(())
    }

    async fn rows(&mut self, sql: &str, params: Vec<String>) -> Result<TextRows, SourceError> {
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let rows = self.client.query(sql, &refs).await.map_err(pg_error)?;
        text_rows(rows)
    }

    async fn stream(
        &mut self,
        sql: &str,
        page_rows: usize,
        pages: mpsc::Sender<TextRows>,
    ) -> Result<(), SourceError> {
        // A server-side cursor: each FETCH holds one page in memory, whatever the table.
        self.client
            .batch_execute(&format!("DECLARE sluice_read NO SCROLL CURSOR FOR {sql}"))
            .await
            .map_err(pg_error)?;
        let fetch = format!("FETCH {page_rows} FROM sluice_read");
        loop {
            let rows = self.client.query(&fetch, &[]).await.map_err(pg_error)?;
            if rows.is_empty() {
                break;
            }
            if pages.send(text_rows(rows)?).await.is_err() {
                break; // the reader stopped (an error it reports itself)
            }
        }
        self.client
            .batch_execute("CLOSE sluice_read")
            .await
            .map_err(pg_error)
    }

    async fn close(self: Box<Self>) -> Result<(), SourceError> {
        if self.in_transaction {
            self.client
                .batch_execute("COMMIT")
                .await
                .map_err(pg_error)?;
        }
        Ok(())
    }

    async fn describe(
        &mut self,
        relation: &Relation,
        relation_sql: &str,
    ) -> Result<Described, SourceError> {
        let statement = self
            .client
            .prepare(&format!("SELECT * FROM {relation_sql} AS q LIMIT 0"))
            .await
            .map_err(pg_error)?;
        let columns = statement
            .columns()
            .iter()
            .map(|c| DescribedColumn {
                name: c.name().to_string(),
                source_type: type_name(c.type_(), c.type_modifier()),
                mapped: pg_type(c.type_(), c.type_modifier()),
            })
            .collect();
        let primary_key = match relation {
            Relation::Table { .. } => {
                let rows = self
                    .rows(
                        "SELECT a.attname::text FROM pg_index i \
                         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                         WHERE i.indrelid = $1::text::regclass AND i.indisprimary \
                         ORDER BY array_position(i.indkey::int2[], a.attnum)",
                        vec![relation_sql.to_string()],
                    )
                    .await?;
                rows.into_iter()
                    .filter_map(|r| r.into_iter().next().flatten())
                    .collect()
            }
            Relation::Query(_) => Vec::new(),
        };
        Ok(Described {
            columns,
            primary_key,
        })
    }

    async fn tables(&mut self) -> Result<Vec<CatalogTable>, SourceError> {
        let rows = self
            .rows(
                "SELECT table_schema::text, table_name::text FROM information_schema.tables \
                 WHERE table_schema NOT IN ('pg_catalog', 'information_schema') \
                 AND table_schema NOT LIKE 'pg_toast%' ORDER BY 1, 2",
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

/// The type as SQL spells it (a valid cast target).
fn type_name(ty: &Type, typmod: i32) -> String {
    match ty.kind() {
        Kind::Enum(_) | Kind::Domain(_) | Kind::Composite(_) => {
            format!("\"{}\".\"{}\"", ty.schema(), ty.name())
        }
        _ if ty.name() == "numeric" => match numeric_typmod(typmod) {
            Some((p, s)) => format!("numeric({p},{s})"),
            None => "numeric".into(),
        },
        _ => ty.name().to_string(),
    }
}

/// numeric(p, s) from a type modifier: ((p << 16) | s) + 4; none when unconstrained.
fn numeric_typmod(typmod: i32) -> Option<(i32, i32)> {
    (typmod >= 4).then(|| (((typmod - 4) >> 16) & 0xffff, (typmod - 4) & 0x7ff))
}

/// The D1 type of a PostgreSQL type, or why there is none.
pub fn pg_type(ty: &Type, typmod: i32) -> Result<(FieldType, ReadAs), String> {
    match ty.kind() {
        Kind::Enum(_) => Ok((FieldType::Text, ReadAs::Text)),
        Kind::Array(element) => {
            // Arrays become JSON text; their elements must be readable on their own.
            pg_type(element, -1)
                .or_else(|e| {
                    if element.name() == "numeric" {
                        Ok((FieldType::Json, ReadAs::JsonText))
                    } else {
                        Err(e)
                    }
                })
                .map(|_| (FieldType::Json, ReadAs::JsonText))
        }
        Kind::Domain(base) => pg_type(base, typmod),
        Kind::Simple => Ok(match ty.name() {
            "int2" | "int4" | "int8" | "oid" => (FieldType::Bigint, ReadAs::Text),
            "float4" | "float8" => (FieldType::Double, ReadAs::Text),
            "bool" => (FieldType::Boolean, ReadAs::Text),
            "numeric" => {
                let Some((precision, scale)) = numeric_typmod(typmod) else {
                    return Err(
                        "`numeric` without a precision and scale has no exact column type".into(),
                    );
                };
                if precision > MAX_DECIMAL_PRECISION as i32
                    || scale > MAX_SCALE
                    || scale > precision
                {
                    return Err(format!(
                        "numeric({precision},{scale}) is wider than a D1 column holds exactly (at most 38 digits, 18 after the point)"
                    ));
                }
                (
                    FieldType::Numeric {
                        precision: precision as u8,
                        scale: scale as i8,
                    },
                    ReadAs::Text,
                )
            }
            "text" | "varchar" | "bpchar" | "char" | "name" | "citext" | "uuid" | "time"
            | "timetz" | "interval" | "inet" | "cidr" | "macaddr" | "macaddr8" | "xml" => {
                (FieldType::Text, ReadAs::Text)
            }
            "bytea" => (FieldType::Text, ReadAs::Hex),
            "date" => (FieldType::Date, ReadAs::Text),
            "timestamp" | "timestamptz" => (FieldType::Timestamp, ReadAs::Text),
            "json" | "jsonb" => (FieldType::Json, ReadAs::Text),
            other => return Err(format!("type `{other}` is not supported")),
        }),
        _ => Err(format!("type `{}` is not supported", ty.name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_modifiers_decode() {
        // numeric(12,2)
        assert_eq!(numeric_typmod(((12 << 16) | 2) + 4), Some((12, 2)));
        assert_eq!(numeric_typmod(-1), None);
        assert!(pg_type(&Type::NUMERIC, -1).is_err());
        assert_eq!(
            pg_type(&Type::NUMERIC, ((12 << 16) | 2) + 4).unwrap().0,
            FieldType::Numeric {
                precision: 12,
                scale: 2
            }
        );
        assert!(pg_type(&Type::NUMERIC, ((40 << 16) | 2) + 4).is_err());
        assert_eq!(pg_type(&Type::INT4_ARRAY, -1).unwrap().0, FieldType::Json);
        assert!(pg_type(&Type::POINT, -1).is_err());
    }
}
