//! Soft deletes for incremental streams without CDC: a periodic scan of the source's
//! primary keys (`deletes: { scan: key, every: 1d }`).
//!
//! An incremental read sees rows that changed, never rows that went away. When a
//! scan is due, the plan adds one more slice to the run. That slice:
//!
//! 1. reads, from the lake, the latest version of every key in the stream's D1
//!    table (the version a `merge` keeps: the latest `_sluice_loaded_at`) and
//!    whether it is already marked deleted — keys and two flags, not rows;
//! 2. reads every primary key of the source table in one snapshot, in keyset pages
//!    of `batch_size` keys (only key columns travel, and one page is in memory);
//! 3. publishes, as records of this run, the last D1 version of each key the
//!    source no longer has with `_sluice_deleted_at` set to the scan's time, and
//!    the source's row of each marked key the source has again, unmarked.
//!
//! The records go through the same typing, merge and single publish as the run's
//! changed rows (the scan slice is planned last, so a `dedupe: last` keeps its
//! verdict), and they are landed as a page first, so `sluice replay` repeats it.
//!
//! Why mark rather than delete: D1 is the copy of what the source said, and a
//! report joining a deleted customer's orders still needs the customer; the mark
//! says when sluice noticed, the lake keeps every version, and a scan that was
//! wrong (a table truncated and reloaded at the source) is undone by the next one.
//!
//! Memory: the D1 key set is held while the source keys stream past (about the
//! key's text plus 40 bytes per row); the rows republished are only the changed ones.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sluice_core::lake::{layout, parquet_batches, Lake};
use sluice_core::schema::{FieldType, LOADED_AT_COLUMN};
use sluice_core::source::{PageSink, RunWindow, Slice, SourceError, StreamPlan};
use sluice_core::typing::{Origin, Record};

use super::config::{parse_overlap, DeletesConfig};
use super::read::cell_json;
use super::streams::SqlStream;
use super::{ReadAs, Session, SqlSource};

/// The column a soft-deleted row carries: when the scan found it gone (else NULL).
pub const DELETED_AT_COLUMN: &str = "_sluice_deleted_at";

/// Returning rows read per query: well under every database's bound-parameter limit.
const RETURNING_KEYS_PER_QUERY: usize = 200;
/// Where a stream's cursor remembers its last key scan.
const SCANNED_AT: &str = "deletes_scanned_at";
/// The slice parameter that makes a slice a key scan (its value: the scan's time).
const SCAN_PARAM: &str = "deletes_scan_at";

/// A stream's declared key scan.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyScan {
    every: chrono::Duration,
}

impl KeyScan {
    /// Checks `deletes:` against the stream it is declared on.
    pub(crate) fn new(
        config: &DeletesConfig,
        stream: &SqlStream,
        key: &str,
    ) -> Result<KeyScan, SourceError> {
        let every = parse_overlap(&config.every.to_string())
            .ok()
            .filter(|o| o.is_duration || o.amount == 0.0)
            .ok_or_else(|| {
                SourceError::config(
                    format!(
                        "`{}` is not a period: use e.g. `1d`, `12 hours`, `30 minutes`, or `0` for every run",
                        config.every
                    ),
                    format!("{key}.deletes.every"),
                )
            })?;
        if matches!(stream.mode, super::streams::Mode::Full) {
            return Err(SourceError::config(
                "`deletes:` is for `sync: incremental` streams (a full sync replaces the table, deleted rows included)",
                format!("{key}.deletes"),
            ));
        }
        if stream.spec.write_mode != sluice_core::destination::WriteMode::Merge
            || stream.spec.primary_key.is_empty()
        {
            return Err(SourceError::config(
                "`deletes:` marks rows by primary key: the stream needs `write_mode: merge` and a primary key",
                format!("{key}.deletes"),
            ));
        }
        for name in &stream.spec.primary_key {
            let column = stream.columns.iter().find(|c| &c.name == name);
            let comparable = column.is_some_and(|c| {
                c.read_as == ReadAs::Text
                    && matches!(
                        c.ty,
                        FieldType::Bigint | FieldType::Text | FieldType::Numeric { scale: 0, .. }
                    )
            });
            if !comparable {
                return Err(SourceError::config(
                    format!("`deletes:` compares keys as text: primary key column `{name}` must be an integer or text column"),
                    format!("{key}.deletes"),
                ));
            }
        }
        Ok(KeyScan {
            every: chrono::Duration::milliseconds((every.amount * 1000.0) as i64),
        })
    }

    /// Adds the scan slice to `plan` when one is due, and records it in the cursor.
    pub(crate) fn plan(
        &self,
        mut plan: StreamPlan,
        cursor: Option<&Value>,
        window: &RunWindow,
        now: DateTime<Utc>,
    ) -> StreamPlan {
        let last = cursor
            .filter(|_| !window.full_refresh)
            .and_then(|c| c.get(SCANNED_AT))
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        let due = last.is_none_or(|last| now - last >= self.every);
        let scanned_at = if due {
            let at = now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            plan.slices.push(Slice {
                key: format!("deletes@{}", now.format("%Y%m%dT%H%M%S%.6f")),
                params: json!({"dt": window.today.to_string(), SCAN_PARAM: at}),
            });
            Some(at)
        } else {
            last.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        };
        let Some(scanned_at) = scanned_at else {
            return plan;
        };
        if !due && plan.cursor_after.is_none() {
            return plan; // the stored cursor stays, with its scan time
        }
        let mut after = plan
            .cursor_after
            .take()
            .or_else(|| cursor.filter(|_| !window.full_refresh).cloned())
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        after[SCANNED_AT] = Value::String(scanned_at);
        plan.cursor_after = Some(after);
        plan
    }
}

/// The scan's time when `slice` is a key scan.
pub(crate) fn scan_time(slice: &Slice) -> Option<String> {
    slice
        .params
        .get(SCAN_PARAM)
        .and_then(Value::as_str)
        .map(String::from)
}

/// The latest version of one key in D1.
struct Latest {
    /// `_sluice_loaded_at` in microseconds, then the date folder: a merge's order.
    version: (i64, String),
    deleted: bool,
    present_at_source: bool,
}

/// Text of each row's key, one entry per row of `batch`.
fn key_texts(batch: &RecordBatch, key: &[String]) -> Result<Vec<String>, String> {
    let options = FormatOptions::default();
    let formatters = key
        .iter()
        .map(|k| {
            let column: &ArrayRef = batch
                .column_by_name(k)
                .ok_or_else(|| format!("no key column `{k}`"))?;
            ArrayFormatter::try_new(column.as_ref(), &options).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((0..batch.num_rows())
        .map(|row| {
            formatters
                .iter()
                .map(|f| f.value(row).to_string())
                .collect::<Vec<_>>()
                .join("\u{1f}")
        })
        .collect())
}

/// `_sluice_loaded_at` of each row, in microseconds.
fn loaded_at(batch: &RecordBatch) -> Result<Vec<i64>, String> {
    let column = batch
        .column_by_name(LOADED_AT_COLUMN)
        .ok_or_else(|| format!("no `{LOADED_AT_COLUMN}` column"))?;
    let micros = arrow::compute::cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None))
        .and_then(|c| arrow::compute::cast(&c, &DataType::Int64))
        .map_err(|e| e.to_string())?;
    let micros = micros
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .ok_or("loaded_at is not a timestamp")?;
    Ok((0..micros.len()).map(|i| micros.value(i)).collect())
}

/// The D1 files of `table` with their date folders.
async fn d1_files(lake: &Lake, table: &str) -> Result<Vec<(String, String)>, SourceError> {
    let prefix = format!("{}/", layout::table("d1", table));
    let lake_error = |e: sluice_core::lake::LakeError| SourceError::transient(e.to_string());
    let mut files: Vec<(String, String)> = lake
        .list(&prefix)
        .await
        .map_err(lake_error)?
        .into_iter()
        .filter(|o| o.path.ends_with(".parquet"))
        .map(|o| {
            let dt = o
                .path
                .split('/')
                .find_map(|part| part.strip_prefix("dt="))
                .unwrap_or_default()
                .to_string();
            (o.path, dt)
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Every batch of a D1 file, with `each` called on it.
async fn each_batch(
    lake: &Lake,
    path: &str,
    mut each: impl FnMut(RecordBatch) -> Result<(), String>,
) -> Result<(), SourceError> {
    let reader = parquet_batches(lake, path)
        .await
        .map_err(|e| SourceError::transient(e.to_string()))?;
    for batch in reader {
        let batch = batch.map_err(|e| SourceError::data(format!("{path}: {e}")))?;
        each(batch).map_err(|e| SourceError::data(format!("{path}: {e}")))?;
    }
    Ok(())
}

impl SqlSource {
    /// Reads a key-scan slice (see the module doc).
    pub(crate) async fn scan_deletes(
        &self,
        stream: &SqlStream,
        scan_at: &str,
        dt: &str,
        sink: &mut dyn PageSink,
    ) -> Result<(), SourceError> {
        let lake = self.lake.as_ref().ok_or_else(|| {
            SourceError::data("a key scan needs the pipeline's lake, and this source has none")
        })?;
        let key = &stream.spec.primary_key;
        let files = d1_files(lake, &stream.spec.table).await?;
        let mut d1: HashMap<String, Latest> = HashMap::new();
        for (path, folder) in &files {
            each_batch(lake, path, |batch| {
                let keys = key_texts(&batch, key)?;
                let loaded = loaded_at(&batch)?;
                let deleted = batch.column_by_name(DELETED_AT_COLUMN);
                for (row, key) in keys.into_iter().enumerate() {
                    let version = (loaded[row], folder.clone());
                    let is_deleted = deleted.is_some_and(|c| c.is_valid(row));
                    let latest = d1.entry(key).or_insert_with(|| Latest {
                        version: version.clone(),
                        deleted: is_deleted,
                        present_at_source: false,
                    });
                    if latest.version < version {
                        latest.version = version;
                        latest.deleted = is_deleted;
                    }
                }
                Ok(())
            })
            .await?;
        }
        if d1.is_empty() {
            return Ok(()); // nothing published yet: nothing can have gone
        }

        let mut session = self.db.session().await?;
        let scanned = self.scan_source(stream, &mut d1, &mut *session).await;
        let returning: Vec<Vec<String>> = d1
            .iter()
            .filter(|(_, l)| l.deleted && l.present_at_source)
            .map(|(k, _)| k.split('\u{1f}').map(String::from).collect())
            .collect();
        let returned = match scanned {
            Ok(()) => self.read_rows(stream, &returning, &mut *session).await,
            Err(e) => Err(e),
        };
        let closed = session.close().await;
        let mut records = returned?;
        closed?;

        // The rows the source no longer has: their last D1 version, marked.
        let gone: HashMap<&str, &(i64, String)> = d1
            .iter()
            .filter(|(_, l)| !l.deleted && !l.present_at_source)
            .map(|(k, l)| (k.as_str(), &l.version))
            .collect();
        if !gone.is_empty() {
            for (path, folder) in &files {
                each_batch(lake, path, |batch| {
                    let keys = key_texts(&batch, key)?;
                    let loaded = loaded_at(&batch)?;
                    let rows: Vec<usize> = (0..batch.num_rows())
                        .filter(|&row| {
                            gone.get(keys[row].as_str())
                                .is_some_and(|v| v.0 == loaded[row] && &v.1 == folder)
                        })
                        .collect();
                    if rows.is_empty() {
                        return Ok(());
                    }
                    for mut map in d1_rows(&batch, stream, &rows)? {
                        map.insert(
                            DELETED_AT_COLUMN.into(),
                            Value::String(scan_at.to_string()),
                        );
                        records.push(map);
                    }
                    Ok(())
                })
                .await?;
            }
        }
        tracing::info!(
            stream = %stream.spec.name,
            marked = gone.len(),
            unmarked = returning.len(),
            keys_in_d1 = d1.len(),
            "key scan for deletes"
        );
        for (n, chunk) in records.chunks(self.batch_size.max(1)).enumerate() {
            land_records(chunk.to_vec(), n + 1, dt, sink).await?;
        }
        Ok(())
    }

    /// Reads every primary key of the source in one snapshot, marking the D1 keys seen.
    async fn scan_source(
        &self,
        stream: &SqlStream,
        d1: &mut HashMap<String, Latest>,
        session: &mut dyn Session,
    ) -> Result<(), SourceError> {
        let db = &*self.db;
        let key_columns: Vec<&super::SqlColumn> = stream
            .spec
            .primary_key
            .iter()
            .filter_map(|k| stream.columns.iter().find(|c| &c.name == k))
            .collect();
        let select: Vec<String> = key_columns.iter().map(|c| db.key_expr(c)).collect();
        let names: Vec<String> = key_columns
            .iter()
            .map(|c| format!("q.{}", db.quote(&c.name)))
            .collect();
        let relation = db.relation_sql(&stream.relation);
        session.begin_snapshot().await?;
        let mut after: Option<Vec<String>> = None;
        loop {
            let (condition, params) = match &after {
                None => (String::new(), Vec::new()),
                Some(last) => {
                    let placeholders: Vec<String> = key_columns
                        .iter()
                        .enumerate()
                        .map(|(i, c)| db.param(i + 1, c))
                        .collect();
                    (
                        format!(
                            " WHERE ({}) > ({})",
                            names.join(", "),
                            placeholders.join(", ")
                        ),
                        last.clone(),
                    )
                }
            };
            let sql = format!(
                "SELECT {} FROM {relation} AS q{condition} ORDER BY {} LIMIT {}",
                select.join(", "),
                names.join(", "),
                self.batch_size
            );
            let rows = session.rows(&sql, params).await?;
            let full = rows.len() >= self.batch_size;
            for row in &rows {
                let key: Vec<String> = row.iter().map(|c| c.clone().unwrap_or_default()).collect();
                if let Some(latest) = d1.get_mut(&key.join("\u{1f}")) {
                    latest.present_at_source = true;
                }
            }
            match rows.into_iter().last() {
                Some(last) if full => {
                    after = Some(last.into_iter().map(Option::unwrap_or_default).collect())
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// The source's rows of `keys` (each the key columns' text), in the open snapshot.
    async fn read_rows(
        &self,
        stream: &SqlStream,
        keys: &[Vec<String>],
        session: &mut dyn Session,
    ) -> Result<Vec<Map<String, Value>>, SourceError> {
        let db = &*self.db;
        let select: Vec<String> = stream.columns.iter().map(|c| db.select_expr(c)).collect();
        let key_columns = stream
            .spec
            .primary_key
            .iter()
            .map(|name| {
                stream
                    .columns
                    .iter()
                    .find(|c| &c.name == name)
                    .ok_or_else(|| SourceError::data(format!("no key column `{name}`")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::new();
        // One query per chunk of keys (`(k1 = ? AND k2 = ?) OR …`), not one per key.
        for chunk in keys.chunks(RETURNING_KEYS_PER_QUERY) {
            let mut param = 0;
            let matches: Vec<String> = chunk
                .iter()
                .map(|_| {
                    let conditions: Vec<String> = key_columns
                        .iter()
                        .map(|column| {
                            param += 1;
                            format!("q.{} = {}", db.quote(&column.name), db.param(param, column))
                        })
                        .collect();
                    format!("({})", conditions.join(" AND "))
                })
                .collect();
            let sql = format!(
                "SELECT {} FROM {} AS q WHERE {}",
                select.join(", "),
                db.relation_sql(&stream.relation),
                matches.join(" OR ")
            );
            for row in session.rows(&sql, chunk.concat()).await? {
                let mut map = Map::with_capacity(stream.columns.len() + 1);
                for (column, cell) in stream.columns.iter().zip(row) {
                    map.insert(column.name.clone(), cell_json(column, cell));
                }
                map.insert(DELETED_AT_COLUMN.into(), Value::Null);
                out.push(map);
            }
        }
        Ok(out)
    }
}

/// Rows `rows` of a D1 batch as the records that would have produced them.
fn d1_rows(
    batch: &RecordBatch,
    stream: &SqlStream,
    rows: &[usize],
) -> Result<Vec<Map<String, Value>>, String> {
    let options = FormatOptions::default();
    let mut out: Vec<Map<String, Value>> = rows.iter().map(|_| Map::new()).collect();
    for column in &stream.columns {
        let Some(array) = batch.column_by_name(&column.name) else {
            for map in &mut out {
                map.insert(column.name.clone(), Value::Null);
            }
            continue;
        };
        let formatter = ArrayFormatter::try_new(array.as_ref(), &options).map_err(|e| e.to_string())?;
        for (map, &row) in out.iter_mut().zip(rows) {
            let text = array
                .is_valid(row)
                .then(|| formatter.value(row).to_string());
            map.insert(column.name.clone(), cell_json(column, text));
        }
    }
    Ok(out)
}

/// Lands records as one NDJSON page (what `decode` reads back) and hands them over.
async fn land_records(
    records: Vec<Map<String, Value>>,
    page_no: usize,
    dt: &str,
    sink: &mut dyn PageSink,
) -> Result<(), SourceError> {
    let mut body = Vec::with_capacity(records.len() * 128);
    for map in &records {
        serde_json::to_writer(&mut body, map)
            .map_err(|e| SourceError::data(format!("encoding a row: {e}")))?;
        body.push(b'\n');
    }
    let landed = sink
        .land(&format!("d{page_no:05}"), "ndjson", dt, &Bytes::from(body))
        .await?;
    let origin: Arc<str> = landed.path.clone();
    let records = records
        .into_iter()
        .enumerate()
        .map(|(i, fields)| Record {
            fields,
            origin: Origin {
                page: origin.clone(),
                line: i as u64 + 1,
            },
        })
        .collect();
    sink.records(records).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn window(full_refresh: bool) -> RunWindow {
        RunWindow {
            since: None,
            until: None,
            today: chrono::NaiveDate::from_ymd_opt(2024, 7, 2).unwrap(),
            full_refresh,
        }
    }

    fn reads(cursor_after: Option<Value>) -> StreamPlan {
        StreamPlan {
            slices: vec![Slice {
                key: "a..b".into(),
                params: json!({}),
            }],
            cursor_after,
        }
    }

    #[test]
    fn a_scan_is_planned_last_when_due_and_its_time_rides_with_the_cursor() {
        let daily = KeyScan {
            every: chrono::Duration::days(1),
        };
        let now = Utc.with_ymd_and_hms(2024, 7, 2, 6, 0, 0).unwrap();
        let moved = json!({"column": "updated_at", "value": "b"});

        // Never scanned: due, after the reads, and remembered.
        let plan = daily.plan(reads(Some(moved.clone())), None, &window(false), now);
        assert_eq!(plan.slices.len(), 2);
        assert_eq!(
            scan_time(&plan.slices[1]).as_deref(),
            Some("2024-07-02T06:00:00.000000Z")
        );
        assert!(scan_time(&plan.slices[0]).is_none());
        let after = plan.cursor_after.unwrap();
        assert_eq!(after["value"], "b");
        assert_eq!(after[SCANNED_AT], "2024-07-02T06:00:00.000000Z");

        // Scanned an hour ago: not due; a moved cursor keeps the scan's time, an
        // unmoved one is left as stored.
        let stored = json!({"column": "updated_at", "value": "a", SCANNED_AT: "2024-07-02T05:00:00Z"});
        let plan = daily.plan(reads(Some(moved.clone())), Some(&stored), &window(false), now);
        assert_eq!(plan.slices.len(), 1);
        assert_eq!(
            plan.cursor_after.unwrap()[SCANNED_AT],
            "2024-07-02T05:00:00.000000Z"
        );
        let plan = daily.plan(reads(None), Some(&stored), &window(false), now);
        assert!(plan.cursor_after.is_none());

        // Due again a day later, with nothing else to read: the stored cursor is
        // kept and only the scan's time moves.
        let later = now + chrono::Duration::days(1);
        let plan = daily.plan(reads(None), Some(&stored), &window(false), later);
        assert_eq!(plan.slices.len(), 2);
        let after = plan.cursor_after.unwrap();
        assert_eq!(after["value"], "a");
        assert_eq!(after[SCANNED_AT], "2024-07-03T06:00:00.000000Z");

        // A full refresh scans whatever the stored time says.
        let plan = daily.plan(reads(None), Some(&stored), &window(true), now);
        assert_eq!(plan.slices.len(), 2);
    }
}
