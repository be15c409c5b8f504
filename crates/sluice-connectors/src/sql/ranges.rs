//! Parallel key ranges (`ranges: N`): a large table read as N slices, each a range of
//! its leading primary-key column, each on its own connection, all in one snapshot.
//!
//! - Boundaries come from two cheap index lookups (the key's min and max) and split
//!   min..max evenly at round numbers (the step rounded up to two significant
//!   digits), so a table that grew a little between a killed run and its re-run is
//!   cut the same way and the finished ranges' checkpoints are reused. The first and
//!   last ranges are open-ended: a row outside min..max (inserted after planning) is
//!   still read.
//! - Other ordered keys (text, uuid, dates, timestamps, numerics) split at quantiles
//!   the database computes in its own ordering: PostgreSQL's `percentile_disc` over
//!   the key, MySQL / MariaDB / SQLite `ORDER BY key LIMIT 1 OFFSET k`. Ranges are
//!   `key >= lo AND key < hi` in SQL, so the ordering that cuts them (the column's
//!   collation) is the one that reads them: the ranges cover every key once, whatever
//!   the collation, and keys are never compared in Rust. Such cuts move as the table
//!   changes, so a re-run after a kill re-reads every range (each key still once).
//!   Boundaries are computed before the shared snapshot opens: they only balance the
//!   ranges; a row inserted in between falls into one range like any other.
//! - One snapshot: the first range read opens a [`SharedSnapshot`] that the others
//!   join (PostgreSQL: an exported snapshot; InnoDB: sessions started together under
//!   a brief read lock; see each database). It is kept until every range of the plan
//!   has been read, so a retried range joins the same snapshot; a resumed range was
//!   read in its own run's snapshot (rows of one key are never lost or repeated, but
//!   a resumed load mixes two snapshots until the next run).
//! - Within a range, pages are keyset queries on the primary key, as everywhere.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Value};
use sluice_core::schema::FieldType;
use sluice_core::source::{PageSink, Slice, SourceError};

use super::read::Bounds;
use super::streams::SqlStream;
use super::{Session, SqlSource};

/// A snapshot several sessions read in, one per range.
#[async_trait]
pub trait SharedSnapshot: Send + Sync {
    /// A session already inside the snapshot, for range `index` (0-based).
    async fn session(&self, index: usize) -> Result<Box<dyn Session>, SourceError>;
}

/// The shared snapshots open now, by stream: kept while their ranges are read.
#[derive(Default)]
pub(crate) struct Snapshots(tokio::sync::Mutex<HashMap<String, OpenSnapshot>>);

struct OpenSnapshot {
    /// The plan that opened it: ranges of another plan never join it.
    plan: String,
    snapshot: Arc<dyn SharedSnapshot>,
    unread: usize,
}

/// One range of the leading key column: `from <= key < to`, either end open.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct KeyRange {
    pub from: Option<String>,
    pub to: Option<String>,
}

/// The plan of a ranged read, from a range slice's params.
struct RangeSlice {
    plan: String,
    index: usize,
    count: usize,
}

/// Boundaries splitting `min..=max` into at most `ranges` ranges at round numbers.
pub(crate) fn boundaries(min: i64, max: i64, ranges: usize) -> Vec<i64> {
    if ranges < 2 || max <= min {
        return Vec::new();
    }
    let span = max as i128 - min as i128 + 1;
    let mut step = (span + ranges as i128 - 1) / ranges as i128;
    // Two significant digits, rounded up: 1 250 000 → 1 300 000.
    let mut magnitude = 1i128;
    while step / magnitude >= 100 {
        magnitude *= 10;
    }
    step = (step + magnitude - 1) / magnitude * magnitude;
    let base = (min as i128).div_euclid(step) * step;
    (1..ranges as i128)
        .map(|k| base + k * step)
        .filter(|&b| b > min as i128 && b <= max as i128)
        .map(|b| b as i64)
        .collect()
}

impl SqlSource {
    /// The slices of a ranged read of `stream` (`upper`: an incremental load's cursor
    /// bound), or `None` when the table has too few keys to split.
    pub(crate) async fn range_slices(
        &self,
        stream: &SqlStream,
        dt: &str,
        upper: Option<&str>,
    ) -> Result<Option<Vec<Slice>>, SourceError> {
        let column = &stream.columns[stream.range_columns[0]];
        let cuts: Vec<String> = if column.ty == FieldType::Bigint {
            let Some((min, max)) = self.key_extent(stream).await? else {
                return Ok(None);
            };
            boundaries(min, max, stream.ranges)
                .into_iter()
                .map(|b| b.to_string())
                .collect()
        } else {
            self.key_quantiles(stream).await?
        };
        if cuts.is_empty() {
            return Ok(None);
        }
        let plan = format!("{:016x}", rand::random::<u64>());
        let count = cuts.len() + 1;
        let edges: Vec<Option<String>> = std::iter::once(None)
            .chain(cuts.into_iter().map(Some))
            .chain(std::iter::once(None))
            .collect();
        let key_column = &column.name;
        let integer = column.ty == FieldType::Bigint;
        let slices = edges
            .windows(2)
            .enumerate()
            .map(|(index, edge)| {
                let (from, to) = (edge[0].clone(), edge[1].clone());
                // Stable across runs (for checkpoints): the range, and the cursor bound
                // an incremental load stops at (a range read to another bound differs).
                let mut key = format!(
                    "{key_column} {}..{}",
                    from.as_deref().unwrap_or("start"),
                    to.as_deref().unwrap_or("end")
                );
                if let Some(upper) = upper {
                    key = format!("start..{upper} {key}");
                }
                if upper.is_some() || !integer {
                    key = key.replace(
                        |c: char| !c.is_ascii_alphanumeric() && !" .-_".contains(c),
                        "_",
                    );
                }
                Slice {
                    key,
                    params: json!({
                        "dt": dt, "upper": upper, "key_from": from, "key_to": to,
                        "snapshot": plan, "range": index, "ranges": count,
                    }),
                }
            })
            .collect();
        Ok(Some(slices))
    }

    /// At most `ranges - 1` cuts of a non-integer leading key, at its quantiles in the
    /// database's own ordering, ascending and distinct (as the database compares them).
    async fn key_quantiles(&self, stream: &SqlStream) -> Result<Vec<String>, SourceError> {
        let column = &stream.columns[stream.range_columns[0]];
        let name = format!("q.{}", self.db.quote(&column.name));
        let relation = self.db.relation_sql(&stream.relation);
        let n = stream.ranges;
        let mut session = self.db.session().await?;
        let cuts = if self.db.kind() == "postgres" {
            let fractions: Vec<String> = (1..n).map(|k| format!("{}", k as f64 / n as f64)).collect();
            // Cut in the key's own ordering (type and collation) and kept in that
            // order: percentile_disc's results ascend as the fractions do.
            let sql = format!(
                "SELECT u.b::text FROM unnest((SELECT percentile_disc(ARRAY[{}]::float8[]) \
                 WITHIN GROUP (ORDER BY {name}) FROM {relation} AS q WHERE {name} IS NOT NULL)) \
                 WITH ORDINALITY AS u(b, i) ORDER BY u.i",
                fractions.join(", ")
            );
            let mut cuts = first_cells(session.rows(&sql, Vec::new()).await?);
            // Equal neighbours (many rows of one key) would make an empty range.
            cuts.dedup();
            cuts
        } else {
            // MySQL / MariaDB / SQLite: the k-th key in the key's order, by offset.
            let count_sql = format!("SELECT COUNT(*) FROM {relation} AS q WHERE {name} IS NOT NULL");
            let total: u64 = first_cells(session.rows(&count_sql, Vec::new()).await?)
                .first()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let mut cuts: Vec<String> = Vec::new();
            if total >= n as u64 {
                for k in 1..n as u64 {
                    let sql = format!(
                        "SELECT {} FROM {relation} AS q WHERE {name} IS NOT NULL ORDER BY {name} LIMIT 1 OFFSET {}",
                        self.db.key_expr(column),
                        total * k / n as u64
                    );
                    if let Some(cut) = first_cells(session.rows(&sql, Vec::new()).await?).pop() {
                        // Equal neighbours (many rows of one key) would make an empty range.
                        if cuts.last() != Some(&cut) {
                            cuts.push(cut);
                        }
                    }
                }
            }
            cuts
        };
        session.close().await?;
        Ok(cuts)
    }

    /// The smallest and largest leading key, by two index lookups.
    async fn key_extent(&self, stream: &SqlStream) -> Result<Option<(i64, i64)>, SourceError> {
        let column = &stream.columns[stream.range_columns[0]];
        let name = format!("q.{}", self.db.quote(&column.name));
        let mut session = self.db.session().await?;
        let mut ends = Vec::new();
        for direction in ["ASC", "DESC"] {
            let sql = format!(
                "SELECT {} FROM {} AS q WHERE {name} IS NOT NULL ORDER BY {name} {direction} LIMIT 1",
                self.db.key_expr(column),
                self.db.relation_sql(&stream.relation)
            );
            let rows = session.rows(&sql, Vec::new()).await?;
            let value = rows.into_iter().next().and_then(|r| r.into_iter().next().flatten());
            match value.map(|v| v.parse::<i64>()) {
                Some(Ok(v)) => ends.push(v),
                Some(Err(e)) => {
                    return Err(SourceError::data(format!(
                        "the range key `{}` is not an integer: {e}",
                        column.name
                    )))
                }
                None => break,
            }
        }
        session.close().await?;
        Ok((ends.len() == 2).then(|| (ends[0], ends[1])))
    }

    /// Reads one range slice inside the snapshot its plan shares.
    pub(crate) async fn read_range(
        &self,
        stream: &SqlStream,
        slice: &Slice,
        bounds: &Bounds,
        dt: &str,
        sink: &mut dyn PageSink,
    ) -> Result<(), SourceError> {
        let range = range_slice(&slice.params)?;
        let snapshot = self.ranges.join(self, stream, &range).await?;
        let mut session = snapshot.session(range.index).await?;
        let read = self
            .read_pages(stream, bounds, dt, &mut *session, sink)
            .await;
        let closed = session.close().await;
        read.and(closed)?;
        self.ranges.finished(&stream.spec.name, &range.plan).await;
        Ok(())
    }
}

/// The first cell of each row, NULLs left out.
fn first_cells(rows: super::TextRows) -> Vec<String> {
    rows.into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect()
}

fn range_slice(params: &Value) -> Result<RangeSlice, SourceError> {
    let number = |k: &str| params.get(k).and_then(Value::as_u64).map(|n| n as usize);
    match (
        params.get("snapshot").and_then(Value::as_str),
        number("range"),
        number("ranges"),
    ) {
        (Some(plan), Some(index), Some(count)) => Ok(RangeSlice {
            plan: plan.to_string(),
            index,
            count,
        }),
        _ => Err(SourceError::data(format!(
            "a range slice without its plan: {params}"
        ))),
    }
}

impl Snapshots {
    /// The snapshot of `range`'s plan, opened by the first of its ranges to ask.
    async fn join(
        &self,
        source: &SqlSource,
        stream: &SqlStream,
        range: &RangeSlice,
    ) -> Result<Arc<dyn SharedSnapshot>, SourceError> {
        let mut open = self.0.lock().await;
        if let Some(found) = open.get(&stream.spec.name) {
            if found.plan == range.plan {
                return Ok(found.snapshot.clone());
            }
        }
        // Another plan's snapshot (an earlier run in this process) is over.
        open.remove(&stream.spec.name);
        let snapshot: Arc<dyn SharedSnapshot> = source
            .db
            .shared_snapshot(&stream.relation, range.count)
            .await?
            .into();
        open.insert(
            stream.spec.name.clone(),
            OpenSnapshot {
                plan: range.plan.clone(),
                snapshot: snapshot.clone(),
                unread: range.count,
            },
        );
        Ok(snapshot)
    }

    /// A range of `plan` was read; the last one closes the snapshot.
    async fn finished(&self, stream: &str, plan: &str) {
        let mut open = self.0.lock().await;
        if let Some(found) = open.get_mut(stream).filter(|f| f.plan == plan) {
            found.unread = found.unread.saturating_sub(1);
            if found.unread == 0 {
                open.remove(stream);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_are_round_and_stable_as_a_table_grows() {
        assert_eq!(
            boundaries(1, 5_000_000, 4),
            vec![1_300_000, 2_600_000, 3_900_000]
        );
        // A few more rows: the same cuts, so finished ranges are reused.
        assert_eq!(boundaries(1, 5_000_900, 4), boundaries(1, 5_000_000, 4));
        assert_eq!(boundaries(-50, 49, 2), vec![0]);
        assert_eq!(boundaries(7, 7, 4), Vec::<i64>::new());
        assert_eq!(boundaries(1, 3, 8), vec![2, 3]);
        assert_eq!(boundaries(i64::MIN, i64::MAX, 2), vec![0]);
        assert_eq!(boundaries(1, 100, 1), Vec::<i64>::new());
    }

    #[test]
    fn range_slices_name_their_plan() {
        let params = json!({"snapshot": "ab", "range": 2, "ranges": 4});
        let range = range_slice(&params).unwrap();
        assert_eq!((range.plan.as_str(), range.index, range.count), ("ab", 2, 4));
        assert!(range_slice(&json!({"dt": "2024-01-01"})).is_err());
    }
}
