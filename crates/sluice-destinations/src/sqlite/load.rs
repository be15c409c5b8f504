//! One load into SQLite, on a blocking thread: every row staged first, then published
//! in one `BEGIN IMMEDIATE` transaction.
//!
//! Staging fills a temporary table (positional columns `c0`, `c1`, …) of the load's
//! own connection without taking the database's write lock, so concurrent loads
//! (streams of one run, a round's shards) stage side by side and take the lock in
//! turn only to publish. The publish: ledger check, create or evolve the table,
//! publish by write mode with SQL, quarantine, ledger row, commit. Rows are bound
//! for the column types the table will have; if another load changed them in
//! between, the load fails as transient and is run again.
//!
//! SQLite stores what it is given, so types live in the declared column type:
//! `INTEGER`, `REAL`, `BOOLEAN` (0/1), `TEXT`, and text-affinity names that
//! remember sluice's type: `DECIMAL_TEXT(38,s)` (the exact decimal string —
//! NUMERIC affinity would turn it into a lossy REAL), `DATE_TEXT`
//! (`YYYY-MM-DD`), `TIMESTAMP_TEXT` (RFC 3339 UTC with microseconds, so text
//! order is time order) and `JSON_TEXT`. Widening a column rebuilds the table
//! inside the transaction, converting the stored values, because SQLite has
//! no `ALTER COLUMN … TYPE`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, OptionalExtension, Statement, Transaction};
use sluice_core::destination::{
    DestinationError, Fence, LoadOutcome, LoadTail, TableSpec, WriteMode,
};
use sluice_core::schema::{FieldType, RUN_ID_COLUMN};
use sluice_core::typing::Rejected;
use tokio::sync::mpsc::Receiver;

use super::{open, table_name, Message};
use crate::columns::{write_date, write_decimal, write_timestamp, BatchColumns, Cell};
use crate::names::quote;

const STAGING: &str = "temp._sluice_staging";
const ORDINAL: &str = "_sluice_ord";
const LEDGER: &str = "_sluice_loads";
/// Shards' fencing tokens (see `Fence`): one row per (round, shard, token) with the
/// run id that published it.
const FENCES: &str = "_sluice_shard_fences";

/// What the blocking side needs, owned (it outlives the request's borrows).
pub(super) struct Job {
    pub spec: TableSpec,
    pub load_id: String,
    pub run_id: String,
    /// Switched replacements (see [`super::alias`]).
    pub aliases: Vec<sluice_core::replace::D1Alias>,
}

/// A column of the target table as it exists.
struct Existing {
    name: String,
    declared: String,
    /// 1-based position in the primary key, 0 if not part of it.
    pk: i64,
}

pub(super) fn run(
    path: &Path,
    busy_timeout: Duration,
    job: Job,
    mut batches: Receiver<Message>,
) -> Result<LoadOutcome, DestinationError> {
    let label = job.spec.qualified_name();
    let failed = |e: rusqlite::Error| DestinationError::Load {
        table: label.clone(),
        message: format!("{}: {e}", path.display()),
    };
    let spec = &job.spec;
    validate(spec)?;
    let table = table_name(&spec.layer, &spec.name);
    let qualified = quote(&table);

    let mut conn = open(path, busy_timeout).map_err(failed)?;

    // Stage, outside the write lock: a deferred transaction that writes only the
    // temporary database takes no lock other writers wait on.
    let tail: LoadTail;
    let n = spec.schema.fields.len();
    let staging_columns: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let staged_for = {
        // Read in a transaction of its own: staging then holds no snapshot of the
        // main database (which would keep a checkpoint from passing it).
        let existing = {
            let tx = conn.transaction().map_err(failed)?;
            columns_of(&tx, &table).map_err(failed)?
        };
        let targets = planned_targets(&existing, spec)?;
        let tx = conn.transaction().map_err(failed)?;
        tx.execute_batch(&format!(
            "DROP TABLE IF EXISTS {STAGING}; CREATE TEMP TABLE _sluice_staging ({}, {ORDINAL} INTEGER)",
            staging_columns.join(", ")
        ))
        .map_err(failed)?;
        tail =
            stage(&tx, spec, &targets, &mut batches, &label).map_err(|e| e.into_error(failed))?;
        tx.commit().map_err(failed)?;
        targets
    };

    // IMMEDIATE takes the write lock now: the ledger check and DDL below cannot race.
    let tx = super::begin_immediate(&conn, busy_timeout).map_err(failed)?;
    tx.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {LEDGER} (table_name TEXT NOT NULL, load_id TEXT NOT NULL, \
         run_id TEXT NOT NULL, rows INTEGER NOT NULL, loaded_at TEXT NOT NULL, \
         PRIMARY KEY (table_name, load_id))"
    ))
    .map_err(failed)?;
    let seen = tx
        .query_row(
            &format!("SELECT 1 FROM {LEDGER} WHERE table_name = ?1 AND load_id = ?2"),
            params![label, job.load_id],
            |_| Ok(()),
        )
        .optional()
        .map_err(failed)?;
    if seen.is_some() {
        return Ok(LoadOutcome {
            already_loaded: true,
            ..LoadOutcome::default()
        });
    }

    super::alias::drop_views(&tx, &job.aliases, spec).map_err(failed)?;
    let targets = prepare_table(&tx, spec, &table).map_err(|e| e.into_error(failed))?;
    if targets != staged_for {
        // Another load retyped a column since this one staged: bound wrongly, so again.
        return Err(DestinationError::Load {
            table: label.clone(),
            message: "another load changed the table's column types while this one staged its rows; loading again".into(),
        });
    }

    if let Some(fence) = &tail.fence {
        // The write lock is held since BEGIN IMMEDIATE: no other load runs in between.
        check_fence(&tx, fence, &job.run_id, &label).map_err(|e| e.into_error(failed))?;
    }

    // Publish.
    let target_columns: Vec<String> = spec.schema.fields.iter().map(|f| quote(&f.name)).collect();
    let insert = |filter: &str| {
        format!(
            "INSERT INTO {qualified} ({}) SELECT {} FROM {STAGING} {filter}",
            target_columns.join(", "),
            staging_columns.join(", ")
        )
    };
    let (rows_replaced, rows_loaded) = match spec.write_mode {
        WriteMode::Append => (0, tx.execute(&insert(""), []).map_err(failed)?),
        WriteMode::Replace => {
            let replaced = tx
                .execute(&format!("DELETE FROM {qualified}"), [])
                .map_err(failed)?;
            (replaced, tx.execute(&insert(""), []).map_err(failed)?)
        }
        WriteMode::Merge => {
            let keys: Vec<(String, String)> = spec
                .primary_key
                .iter()
                .map(|k| {
                    (
                        quote(k),
                        format!("c{}", spec.schema.index_of(k).expect("validated")),
                    )
                })
                .collect();
            let target_keys = keys
                .iter()
                .map(|(t, _)| t.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let staged_keys = keys
                .iter()
                .map(|(_, s)| s.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let replaced = tx
                .execute(
                    &format!("DELETE FROM {qualified} WHERE ({target_keys}) IN (SELECT {staged_keys} FROM {STAGING})"),
                    [],
                )
                .map_err(failed)?;
            let latest = format!(
                "WHERE {ORDINAL} IN (SELECT max({ORDINAL}) FROM {STAGING} GROUP BY {staged_keys})"
            );
            (replaced, tx.execute(&insert(&latest), []).map_err(failed)?)
        }
        WriteMode::OverwritePartitions => {
            let column = spec.partition_column.as_deref().expect("validated");
            let i = spec.schema.index_of(column).expect("validated");
            let named = serde_json::to_string(&tail.partitions).unwrap_or_else(|_| "[]".into());
            let mut sql = format!(
                "DELETE FROM {qualified} WHERE ({col} IN (SELECT value FROM json_each(?1)) \
                 OR {col} IN (SELECT c{i} FROM {STAGING}))",
                col = quote(column)
            );
            let mut values = vec![named];
            // A shard keeps the rows the round's other shards published (see `Fence`).
            if let (Some(fence), Some(_)) = (&tail.fence, spec.schema.field(RUN_ID_COLUMN)) {
                sql += &format!(
                    " AND NOT EXISTS (SELECT 1 FROM {FENCES} AS f WHERE f.round = ?2 \
                     AND f.shard <> ?3 AND f.run_id = {qualified}.{})",
                    quote(RUN_ID_COLUMN)
                );
                values.extend([fence.round.clone(), fence.shard.clone()]);
            }
            let replaced = tx
                .execute(&sql, rusqlite::params_from_iter(values))
                .map_err(failed)?;
            (replaced, tx.execute(&insert(""), []).map_err(failed)?)
        }
    };
    tx.execute_batch(&format!("DROP TABLE {STAGING}"))
        .map_err(failed)?;

    let now = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    insert_quarantine(&tx, &table, &job.run_id, &tail.quarantine, &now).map_err(failed)?;
    super::alias::publish(&tx, &job.aliases, spec).map_err(failed)?;
    tx.execute(
        &format!("INSERT INTO {LEDGER} (table_name, load_id, run_id, rows, loaded_at) VALUES (?1, ?2, ?3, ?4, ?5)"),
        params![label, job.load_id, job.run_id, rows_loaded as i64, now],
    )
    .map_err(failed)?;
    tx.commit().map_err(failed)?;
    Ok(LoadOutcome {
        rows_loaded: rows_loaded as u64,
        rows_replaced: rows_replaced as u64,
        rows_quarantined: tail.quarantine.len() as u64,
        already_loaded: false,
    })
}

/// Why a step of the load stopped: SQL (reported with the database's path by the
/// caller) or a reason of its own, already said.
enum Step {
    Sql(rusqlite::Error),
    Failed(DestinationError),
}

impl From<rusqlite::Error> for Step {
    fn from(e: rusqlite::Error) -> Self {
        Step::Sql(e)
    }
}

impl Step {
    fn into_error(self, failed: impl Fn(rusqlite::Error) -> DestinationError) -> DestinationError {
        match self {
            Step::Sql(e) => failed(e),
            Step::Failed(e) => e,
        }
    }
}

/// Checks a shard's fencing token in the load's transaction and records it with the
/// run id: refused when a higher token of the same shard and round has published.
fn check_fence(tx: &Transaction<'_>, fence: &Fence, run_id: &str, label: &str) -> Result<(), Step> {
    tx.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {FENCES} (round TEXT NOT NULL, shard TEXT NOT NULL, \
         token INTEGER NOT NULL, run_id TEXT NOT NULL, PRIMARY KEY (round, shard, token))"
    ))?;
    let token = fence.stored_token();
    let highest: Option<i64> = tx.query_row(
        &format!("SELECT max(token) FROM {FENCES} WHERE round = ?1 AND shard = ?2"),
        params![fence.round, fence.shard],
        |row| row.get(0),
    )?;
    if let Some(refusal) = fence.refusal(highest) {
        return Err(Step::Failed(DestinationError::Fenced {
            table: label.to_string(),
            message: refusal,
        }));
    }
    tx.execute(
        &format!(
            "INSERT OR IGNORE INTO {FENCES} (round, shard, token, run_id) VALUES (?1, ?2, ?3, ?4)"
        ),
        params![fence.round, fence.shard, token, run_id],
    )?;
    Ok(())
}

fn validate(spec: &TableSpec) -> Result<(), DestinationError> {
    let error = |message: String| {
        Err(DestinationError::Schema {
            table: spec.qualified_name(),
            message,
        })
    };
    if spec.schema.fields.is_empty() {
        return error("the table has no columns".into());
    }
    match spec.write_mode {
        WriteMode::Merge if spec.primary_key.is_empty() => {
            error("write mode `merge` needs a primary_key".into())
        }
        WriteMode::Merge => match spec
            .primary_key
            .iter()
            .find(|k| spec.schema.field(k).is_none())
        {
            Some(key) => error(format!("primary key column `{key}` is not in the schema")),
            None => Ok(()),
        },
        WriteMode::OverwritePartitions => match &spec.partition_column {
            None => error("write mode `overwrite_partitions` needs a partition_column".into()),
            Some(c) if spec.schema.field(c).is_none() => {
                error(format!("partition column `{c}` is not in the schema"))
            }
            Some(_) => Ok(()),
        },
        _ => Ok(()),
    }
}

/// The declared column type for `ty`; see the module docs.
fn declared_type(ty: FieldType) -> String {
    match ty {
        FieldType::Boolean => "BOOLEAN".into(),
        FieldType::Bigint => "INTEGER".into(),
        FieldType::Double => "REAL".into(),
        // SQLite stores decimals as text; the declared precision is enforced when typing.
        FieldType::Numeric { scale, .. } => format!("DECIMAL_TEXT(38,{})", scale.max(0)),
        FieldType::Text => "TEXT".into(),
        FieldType::Json => "JSON_TEXT".into(),
        FieldType::Date => "DATE_TEXT".into(),
        FieldType::Timestamp => "TIMESTAMP_TEXT".into(),
    }
}

/// sluice's type for a declared type; other declarations by SQLite's affinity rules.
fn field_type_of(declared: &str) -> Option<FieldType> {
    let d = declared.trim().to_ascii_uppercase();
    Some(match d.as_str() {
        "BOOLEAN" => FieldType::Boolean,
        "TEXT" => FieldType::Text,
        "JSON_TEXT" => FieldType::Json,
        "DATE_TEXT" => FieldType::Date,
        "TIMESTAMP_TEXT" => FieldType::Timestamp,
        s if s.starts_with("DECIMAL_TEXT(") => FieldType::numeric(
            s.trim_end_matches(')')
                .rsplit(',')
                .next()?
                .trim()
                .parse()
                .ok()?,
        ),
        s if s.contains("INT") => FieldType::Bigint,
        s if s.contains("CHAR") || s.contains("CLOB") || s.contains("TEXT") => FieldType::Text,
        s if s.contains("REAL") || s.contains("FLOA") || s.contains("DOUB") => FieldType::Double,
        _ => return None,
    })
}

/// Creates or evolves the table; returns, per load column, the type its values
/// must be written as (the column's type, which may be wider than the field's).
fn prepare_table(
    tx: &Transaction<'_>,
    spec: &TableSpec,
    table: &str,
) -> Result<Vec<FieldType>, Step> {
    let qualified = quote(table);
    let existing = columns_of(tx, table)?;
    if existing.is_empty() {
        let mut columns: Vec<String> = spec
            .schema
            .fields
            .iter()
            .map(|f| format!("{} {}", quote(&f.name), declared_type(f.ty)))
            .collect();
        if spec.write_mode == WriteMode::Merge {
            let keys: Vec<String> = spec.primary_key.iter().map(|k| quote(k)).collect();
            columns.push(format!("PRIMARY KEY ({})", keys.join(", ")));
        }
        tx.execute_batch(&format!(
            "CREATE TABLE {qualified} ({})",
            columns.join(", ")
        ))?;
        ensure_partition_index(tx, spec, table)?;
        return Ok(spec.schema.fields.iter().map(|f| f.ty).collect());
    }

    let by_name: HashMap<&str, &Existing> = existing.iter().map(|c| (c.name.as_str(), c)).collect();
    let targets = planned_targets(&existing, spec).map_err(Step::Failed)?;
    let mut added = Vec::new();
    let mut widened: HashMap<String, (Option<FieldType>, FieldType)> = HashMap::new();
    for (field, target) in spec.schema.fields.iter().zip(&targets) {
        match by_name.get(field.name.as_str()) {
            None => added.push(format!(
                "{} {}",
                quote(&field.name),
                declared_type(field.ty)
            )),
            Some(column) => {
                let have = field_type_of(&column.declared);
                if have.is_some_and(|have| have != *target) {
                    widened.insert(field.name.clone(), (have, *target));
                }
            }
        }
    }
    for column in &added {
        tx.execute_batch(&format!("ALTER TABLE {qualified} ADD COLUMN {column}"))?;
    }
    if !widened.is_empty() {
        tracing::info!(table, columns = ?widened.keys().collect::<Vec<_>>(), "widening columns (rebuilding the table)");
        // Re-read: the rebuild must carry the columns just added too.
        rebuild(tx, table, &columns_of(tx, table)?, &widened)?;
        ensure_partition_index(tx, spec, table)?;
    }
    // A declared rename folds the column an earlier run evolved back into the kept one.
    for (sent, kept) in &spec.schema.folded {
        if !by_name.contains_key(sent.as_str()) || spec.schema.field(kept).is_none() {
            continue;
        }
        tracing::info!(table, column = %sent, into = %kept, "folding a renamed column back");
        tx.execute_batch(&format!(
            "UPDATE {qualified} SET {k} = COALESCE({k}, {s}) WHERE {s} IS NOT NULL; \
             ALTER TABLE {qualified} DROP COLUMN {s}",
            k = quote(kept),
            s = quote(sent),
        ))?;
    }
    Ok(targets)
}

/// The type each field is stored as once the table is evolved for `spec`: the
/// column's own when it holds the field's values, the field's when the column is
/// new, untyped or widened to it; an error naming a column neither type holds.
fn planned_targets(
    existing: &[Existing],
    spec: &TableSpec,
) -> Result<Vec<FieldType>, DestinationError> {
    let by_name: HashMap<&str, &Existing> = existing.iter().map(|c| (c.name.as_str(), c)).collect();
    spec.schema
        .fields
        .iter()
        .map(|field| {
            let Some(column) = by_name.get(field.name.as_str()) else {
                return Ok(field.ty);
            };
            match field_type_of(&column.declared) {
                None => Ok(field.ty),
                Some(have) if field.ty.widens_to(&have) => Ok(have),
                Some(have) if have.widens_to(&field.ty) => Ok(field.ty),
                Some(have) => Err(DestinationError::Schema {
                    table: spec.qualified_name(),
                    message: format!(
                        "column `{}` is {} in the table but {} in this load, and neither type \
                         holds the other's values; rename the field or migrate the column",
                        field.name,
                        have.name(),
                        field.ty.name()
                    ),
                }),
            }
        })
        .collect()
}

/// Inserts every batch into the staging table, bound for `targets`; returns the
/// load's tail. Untyped columns keep exactly the values bound.
fn stage(
    tx: &Transaction<'_>,
    spec: &TableSpec,
    targets: &[FieldType],
    batches: &mut Receiver<Message>,
    label: &str,
) -> Result<LoadTail, Step> {
    let n = spec.schema.fields.len();
    let placeholders: Vec<String> = (1..=n + 1).map(|i| format!("?{i}")).collect();
    let mut insert = tx.prepare(&format!(
        "INSERT INTO {STAGING} VALUES ({})",
        placeholders.join(", ")
    ))?;
    let mut scratch = String::new();
    let mut ordinal: i64 = 0;
    loop {
        match batches.blocking_recv() {
            Some(Message::Batch(batch)) => {
                let columns = BatchColumns::new(&batch, &spec.schema).map_err(|message| {
                    Step::Failed(DestinationError::Load {
                        table: label.to_string(),
                        message,
                    })
                })?;
                let views = columns.views();
                for row in 0..columns.rows() {
                    for (i, column) in views.iter().enumerate() {
                        bind(
                            &mut insert,
                            i + 1,
                            column.cell(row),
                            targets[i],
                            &mut scratch,
                        )?;
                    }
                    insert.raw_bind_parameter(n + 1, ordinal)?;
                    insert.raw_execute()?;
                    ordinal += 1;
                }
            }
            Some(Message::End(tail)) => return Ok(tail),
            // The sender went away without `End`: the load was cancelled or the
            // stream failed. Returning drops the transaction, which rolls back.
            None => {
                return Err(Step::Failed(DestinationError::Cancelled {
                    table: label.to_string(),
                }))
            }
        }
    }
}

fn columns_of(tx: &Transaction<'_>, table: &str) -> rusqlite::Result<Vec<Existing>> {
    let mut stmt = tx.prepare("SELECT name, type, pk FROM pragma_table_info(?1)")?;
    let rows = stmt.query_map([table], |r| {
        Ok(Existing {
            name: r.get(0)?,
            declared: r.get(1)?,
            pk: r.get(2)?,
        })
    })?;
    rows.collect()
}

/// Rebuilds `table` with some columns retyped, converting their stored values.
fn rebuild(
    tx: &Transaction<'_>,
    table: &str,
    existing: &[Existing],
    widened: &HashMap<String, (Option<FieldType>, FieldType)>,
) -> rusqlite::Result<()> {
    let scratch = quote(&format!("{table}__sluice_rebuild"));
    let mut columns = Vec::new();
    let mut values = Vec::new();
    for column in existing {
        let name = quote(&column.name);
        match widened.get(&column.name) {
            Some((from, to)) => {
                columns.push(format!("{name} {}", declared_type(*to)));
                values.push(convert(&name, *from, *to));
            }
            None => {
                columns.push(format!("{name} {}", column.declared));
                values.push(name);
            }
        }
    }
    let mut keys: Vec<&Existing> = existing.iter().filter(|c| c.pk > 0).collect();
    keys.sort_by_key(|c| c.pk);
    if !keys.is_empty() {
        let keys: Vec<String> = keys.iter().map(|c| quote(&c.name)).collect();
        columns.push(format!("PRIMARY KEY ({})", keys.join(", ")));
    }
    let names: Vec<String> = existing.iter().map(|c| quote(&c.name)).collect();
    tx.execute_batch(&format!(
        "CREATE TABLE {scratch} ({cols}); \
         INSERT INTO {scratch} ({names}) SELECT {values} FROM {table_q}; \
         DROP TABLE {table_q}; \
         ALTER TABLE {scratch} RENAME TO {table_q};",
        cols = columns.join(", "),
        names = names.join(", "),
        values = values.join(", "),
        table_q = quote(table),
    ))
}

/// SQL converting a stored value of type `from` to `to`'s text form (a widening).
fn convert(column: &str, from: Option<FieldType>, to: FieldType) -> String {
    match (from, to) {
        (Some(FieldType::Boolean), FieldType::Text) => {
            format!("CASE {column} WHEN 1 THEN 'true' WHEN 0 THEN 'false' END")
        }
        (_, FieldType::Text) => format!("CAST({column} AS TEXT)"),
        (Some(FieldType::Bigint), FieldType::Double) => format!("CAST({column} AS REAL)"),
        (Some(FieldType::Bigint), FieldType::Numeric { scale, .. }) if scale > 0 => {
            format!(
                "CAST({column} AS TEXT) || '.{}'",
                "0".repeat(scale as usize)
            )
        }
        (Some(FieldType::Numeric { scale: 0, .. }), FieldType::Numeric { scale, .. })
            if scale > 0 =>
        {
            format!("{column} || '.{}'", "0".repeat(scale as usize))
        }
        (Some(FieldType::Numeric { scale: a, .. }), FieldType::Numeric { scale: b, .. })
            if b > a =>
        {
            format!("{column} || '{}'", "0".repeat((b - a) as usize))
        }
        (Some(FieldType::Date), FieldType::Timestamp) => format!("{column} || 'T00:00:00.000000Z'"),
        _ => column.to_string(),
    }
}

fn ensure_partition_index(
    tx: &Transaction<'_>,
    spec: &TableSpec,
    table: &str,
) -> rusqlite::Result<()> {
    if let (WriteMode::OverwritePartitions, Some(column)) =
        (spec.write_mode, &spec.partition_column)
    {
        tx.execute_batch(&format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
            quote(&format!("{table}__{column}")),
            quote(table),
            quote(column)
        ))?;
    }
    Ok(())
}

/// Binds one cell as the column's type `target` stores it (the same as the
/// cell's type, or a wider one after evolution).
fn bind(
    stmt: &mut Statement<'_>,
    index: usize,
    cell: Cell<'_>,
    target: FieldType,
    scratch: &mut String,
) -> rusqlite::Result<()> {
    scratch.clear();
    match cell {
        Cell::Null => return stmt.raw_bind_parameter(index, rusqlite::types::Null),
        Cell::Text(s) | Cell::Json(s) => return stmt.raw_bind_parameter(index, s),
        Cell::Boolean(b) => match target {
            FieldType::Text => scratch.push_str(if b { "true" } else { "false" }),
            _ => return stmt.raw_bind_parameter(index, b as i64),
        },
        Cell::Bigint(v) => match target {
            FieldType::Double => return stmt.raw_bind_parameter(index, v as f64),
            FieldType::Numeric { scale, .. } => {
                write_decimal(scratch, v as i128 * 10i128.pow(scale.max(0) as u32), scale)
            }
            FieldType::Text => {
                use std::fmt::Write as _;
                let _ = write!(scratch, "{v}");
            }
            _ => return stmt.raw_bind_parameter(index, v),
        },
        Cell::Double(v) => match target {
            FieldType::Text => {
                use std::fmt::Write as _;
                let _ = write!(scratch, "{v}");
            }
            _ => return stmt.raw_bind_parameter(index, v),
        },
        Cell::Numeric(unscaled, scale) => match target {
            FieldType::Numeric { scale: wider, .. } if wider > scale => {
                match 10i128
                    .checked_pow((wider - scale) as u32)
                    .and_then(|f| unscaled.checked_mul(f))
                {
                    Some(rescaled) => write_decimal(scratch, rescaled, wider),
                    None => write_decimal(scratch, unscaled, scale),
                }
            }
            _ => write_decimal(scratch, unscaled, scale),
        },
        Cell::Date(days) => {
            write_date(scratch, days).ok_or_else(|| out_of_range("date"))?;
            if target == FieldType::Timestamp {
                scratch.push_str("T00:00:00.000000Z");
            }
        }
        Cell::Timestamp(micros) => {
            write_timestamp(scratch, micros).ok_or_else(|| out_of_range("timestamp"))?
        }
    }
    stmt.raw_bind_parameter(index, scratch.as_str())
}

fn out_of_range(what: &str) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(format!("{what} out of range").into())
}

/// Inserts quarantined records into `<table>__quarantine`, creating it on first use.
pub(super) fn insert_quarantine(
    tx: &Transaction<'_>,
    table: &str,
    run_id: &str,
    rows: &[Rejected],
    now: &str,
) -> rusqlite::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let quarantine = quote(&format!("{table}__quarantine"));
    tx.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {quarantine} (run_id TEXT NOT NULL, origin TEXT NOT NULL, \
         line INTEGER, reason TEXT NOT NULL, raw TEXT, quarantined_at TEXT NOT NULL)"
    ))?;
    let mut insert = tx.prepare(&format!(
        "INSERT INTO {quarantine} (run_id, origin, line, reason, raw, quarantined_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
    ))?;
    for r in rows {
        insert.execute(params![
            run_id,
            &*r.origin.page,
            r.origin.line as i64,
            r.reason,
            r.raw,
            now
        ])?;
    }
    Ok(())
}
