//! Reading one slice: keyset pages inside one snapshot, each landed as NDJSON rows
//! and handed over as records.

use bytes::Bytes;
use serde_json::{Map, Value};
use sluice_core::schema::FieldType;
use sluice_core::source::{PageSink, Slice, SourceError};
use sluice_core::typing::{Origin, Record};
use tokio::sync::mpsc;

use super::ranges::KeyRange;
use super::streams::{Mode, SqlStream};
use super::{Database, ReadAs, Session, SqlColumn, SqlSource, TextRows};

/// A slice's bounds: an incremental slice's, as the database's text of the cursor
/// column, and a range slice's on the leading key column.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bounds {
    /// Exclusive, or inclusive after subtracting the overlap.
    lower: Option<String>,
    upper: Option<String>,
    /// A range slice (`ranges:`): paged by the primary key, not the cursor.
    range: Option<KeyRange>,
}

impl Bounds {
    pub(crate) fn of(slice: &Slice) -> Bounds {
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
            range: slice.params.get("snapshot").map(|_| KeyRange {
                from: text("key_from"),
                to: text("key_to"),
            }),
        }
    }

    pub(crate) fn is_range(&self) -> bool {
        self.range.is_some()
    }
}

/// The SQL of one page and its parameters. `after`: the previous page's last key.
pub(crate) fn page_query(
    db: &dyn Database,
    stream: &SqlStream,
    bounds: &Bounds,
    after: Option<&[String]>,
    limit: usize,
) -> (String, Vec<String>) {
    // A range is read in primary-key order (its snapshot holds every row it will see).
    let order_key = match bounds.range {
        Some(_) => &stream.range_columns,
        None => &stream.order_key,
    };
    let mut select: Vec<String> = stream.columns.iter().map(|c| db.select_expr(c)).collect();
    select.extend(order_key.iter().map(|&i| db.key_expr(&stream.columns[i])));
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
                    overlap: Some(overlap),
                    ..
                } if overlap.amount > 0.0 => {
                    format!("{name} >= {}", db.minus(p, *overlap))
                }
                _ => format!("{name} > {p}"),
            });
        }
    }
    if let Some(KeyRange { from, to }) = &bounds.range {
        let col = &stream.columns[stream.range_columns[0]];
        let name = format!("q.{}", db.quote(&col.name));
        for (bound, op) in [(from, ">="), (to, "<")] {
            if let Some(value) = bound {
                params.push(value.clone());
                conditions.push(format!("{name} {op} {}", db.param(params.len(), col)));
            }
        }
    }
    if let Some(after) = after {
        let mut left = Vec::new();
        let mut right = Vec::new();
        for (&i, value) in order_key.iter().zip(after) {
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
    if !order_key.is_empty() {
        let order: Vec<String> = order_key
            .iter()
            .map(|&i| format!("q.{}", db.quote(&stream.columns[i].name)))
            .collect();
        sql.push_str(&format!(" ORDER BY {} LIMIT {limit}", order.join(", ")));
    }
    (sql, params)
}

/// A cell's JSON value for typing: exact text stays text where a JSON number
/// could round it (numeric), and becomes a number only where it cannot.
pub(crate) fn cell_json(column: &SqlColumn, text: Option<String>) -> Value {
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
pub(crate) fn iso_timestamp(text: &str) -> String {
    let text = text.replacen(' ', "T", 1);
    match text.strip_suffix("+00") {
        Some(utc) => format!("{utc}Z"),
        None => text,
    }
}

impl SqlSource {
    /// The text of the cursor column's largest value now, in its own short session.
    pub(crate) async fn upper_bound(
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

    pub(crate) async fn read_snapshot(
        &self,
        stream: &SqlStream,
        bounds: &Bounds,
        dt: &str,
        session: &mut dyn Session,
        sink: &mut dyn PageSink,
    ) -> Result<(), SourceError> {
        session.begin_snapshot().await?;
        self.read_pages(stream, bounds, dt, session, sink).await
    }

    /// Reads a slice's pages on a session already inside its snapshot.
    pub(crate) async fn read_pages(
        &self,
        stream: &SqlStream,
        bounds: &Bounds,
        dt: &str,
        session: &mut dyn Session,
        sink: &mut dyn PageSink,
    ) -> Result<(), SourceError> {
        let mut page_no = 0;
        if stream.order_key.is_empty() && !bounds.is_range() {
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
        // Ranges read at once share `batch_size`: memory stays bounded by it.
        let page_rows = match bounds.is_range() {
            true => (self.batch_size / self.max_concurrency.min(stream.ranges)).max(1),
            false => self.batch_size,
        };
        let mut after: Option<Vec<String>> = None;
        loop {
            let (sql, params) = page_query(&*self.db, stream, bounds, after.as_deref(), page_rows);
            let rows = session.rows(&sql, params).await?;
            let full = rows.len() >= page_rows;
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pages_follow_the_cursor_then_the_key_from_the_last_row() {
        let url = url::Url::parse("postgres://u@db.example:5432/shop").unwrap();
        let db =
            crate::sql::postgres::Postgres::new(&url, crate::sql::config::TlsMode::Disable, "k")
                .unwrap();
        let column = |name: &str, ty, source_type: &str| SqlColumn {
            name: name.into(),
            ty,
            read_as: ReadAs::Text,
            source_type: source_type.into(),
        };
        let stream = SqlStream {
            spec: sluice_core::source::StreamSpec {
                name: "orders".into(),
                table: "db_orders".into(),
                schema: sluice_core::schema::TableSchema::new(Vec::new()),
                infer_columns: false,
                primary_key: vec!["id".into()],
                partition_column: None,
                write_mode: sluice_core::destination::WriteMode::Merge,
                dedupe: Default::default(),
            },
            relation: super::super::Relation::Table {
                schema: Some("public".into()),
                name: "orders".into(),
            },
            columns: vec![
                column("id", FieldType::Bigint, "int8"),
                column("updated_at", FieldType::Timestamp, "timestamptz"),
            ],
            order_key: vec![1, 0],
            range_columns: vec![0],
            ranges: 1,
            mode: Mode::Cursor {
                column: 1,
                overlap: Some(crate::sql::config::Overlap {
                    amount: 600.0,
                    is_duration: true,
                }),
            },
        };
        let bounds = Bounds {
            lower: Some("2024-07-01 10:00:00+00".into()),
            upper: Some("2024-07-02 00:00:00+00".into()),
            range: None,
        };
        let (sql, params) = page_query(&db, &stream, &bounds, None, 500);
        assert_eq!(
            sql,
            "SELECT q.\"id\"::text, q.\"updated_at\"::text, q.\"updated_at\"::text, q.\"id\"::text \
             FROM \"public\".\"orders\" AS q WHERE q.\"updated_at\" <= $1::text::timestamptz \
             AND q.\"updated_at\" >= ($2::text::timestamptz - make_interval(secs => 600)) \
             ORDER BY q.\"updated_at\", q.\"id\" LIMIT 500"
        );
        assert_eq!(params.len(), 2);
        let last = ["2024-07-01 11:00:00+00".to_string(), "42".to_string()];
        let (sql, params) = page_query(&db, &stream, &bounds, Some(&last), 500);
        assert!(
            sql.contains("AND (q.\"updated_at\", q.\"id\") > ($3::text::timestamptz, $4::text::int8) ORDER BY"),
            "{sql}"
        );
        assert_eq!(params[2..], last);

        // A range of a first incremental load: bounded by the cursor, paged by the key.
        let range = Bounds {
            lower: None,
            upper: Some("2024-07-02 00:00:00+00".into()),
            range: Some(KeyRange {
                from: Some("100".into()),
                to: Some("200".into()),
            }),
        };
        let (sql, params) = page_query(&db, &stream, &range, Some(&["150".to_string()]), 500);
        assert!(
            sql.ends_with(
                "q.\"id\"::text FROM \"public\".\"orders\" AS q \
                 WHERE q.\"updated_at\" <= $1::text::timestamptz AND q.\"id\" >= $2::text::int8 \
                 AND q.\"id\" < $3::text::int8 AND (q.\"id\") > ($4::text::int8) ORDER BY q.\"id\" LIMIT 500"
            ),
            "{sql}"
        );
        assert_eq!(params, ["2024-07-02 00:00:00+00", "100", "200", "150"]);
    }

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
