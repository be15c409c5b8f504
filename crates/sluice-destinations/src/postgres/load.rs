//! One load into PostgreSQL, in one transaction.
//!
//! 1. Outside the transaction, idempotently: the layer's schema and the ledger
//!    (empty schemas are harmless if the load later fails).
//! 2. `BEGIN`; an advisory lock on the table serialises concurrent loads of it,
//!    which makes the ledger check and `CREATE TABLE` race-free.
//! 3. The ledger already has this load id → roll back, report `already_loaded`.
//! 4. Create the table, or evolve it: add missing columns, widen compatible
//!    types, refuse incompatible ones (nothing has been changed yet then).
//! 5. `COPY … FROM STDIN (FORMAT binary)`: straight into the table for
//!    `append`/`replace` when every column already has the load's exact type;
//!    otherwise into a `TEMP … ON COMMIT DROP` staging table whose columns are
//!    positional (`c0`, `c1`, …, plus a row ordinal for merges), so hostile
//!    field names only ever appear quoted, in the target table.
//! 6. A shard's load (`sluice run --shard`) checks and records its fencing
//!    token in `<ledger schema>.shard_fences` (see `Fence`): refused when a
//!    later owner of the shard has published.
//! 7. Publish by write mode with plain SQL from staging (casting to widened
//!    column types on the way), insert quarantined records and the ledger
//!    row, `COMMIT`.
//!
//! Any error, a dropped future or a killed process ends the connection before
//! `COMMIT`, and PostgreSQL rolls everything back.
//!
//! (Just over 700 lines: the seven steps share `TablePlan` and one transaction;
//! COPY encoding is in `copy.rs`, grants in `grants.rs`, fences in `fence.rs`.)

use std::collections::HashMap;

use futures::StreamExt;
use sluice_core::destination::{DestinationError, LoadOutcome, LoadRequest, TableSpec, WriteMode};
use sluice_core::schema::{FieldType, MAX_DECIMAL_PRECISION, RUN_ID_COLUMN};
use sluice_core::secret::redact;
use sluice_core::typing::Rejected;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient};

use super::copy::{wire_type, RowCells};
use super::grants;
use super::{error_text, PostgresDestination};
use crate::columns::BatchColumns;
use crate::names::{fit, pg, quote, POSTGRES_MAX_IDENTIFIER};

const STAGING: &str = "pg_temp._sluice_staging";
const ORDINAL: &str = "_sluice_ord";
/// Quarantined records per INSERT: arrays this size keep statements well under limits.
const QUARANTINE_CHUNK: usize = 5_000;

pub(super) async fn load(
    destination: &PostgresDestination,
    request: LoadRequest<'_>,
) -> Result<LoadOutcome, DestinationError> {
    let spec = request.table;
    let label = spec.qualified_name();
    let failed = |e: tokio_postgres::Error| DestinationError::Load {
        table: label.clone(),
        message: redact(&error_text(&e)),
    };
    let plan = TablePlan::new(destination, spec)?;
    let mut client = connect_for_load(destination, spec, &plan).await?;

    let mut tx = client.transaction().await.map_err(failed)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&format!("sluice:{}.{}", plan.schema, plan.table)],
    )
    .await
    .map_err(failed)?;

    let seen = tx
        .query_opt(
            &format!(
                "SELECT 1 FROM {} WHERE table_name = $1 AND load_id = $2",
                plan.ledger
            ),
            &[&label, &request.load_id],
        )
        .await
        .map_err(failed)?;
    if seen.is_some() {
        tx.rollback().await.map_err(failed)?;
        return Ok(LoadOutcome {
            already_loaded: true,
            ..LoadOutcome::default()
        });
    }

    let target_types = prepare_table(&tx, &plan, spec).await?;

    // Append and replace COPY straight into the table when every column has
    // exactly the load's type (binary COPY does no casts): half the writes of
    // staging, and just as atomic inside the transaction. Otherwise stage.
    let target_columns: Vec<String> = spec.schema.fields.iter().map(|f| pg(&f.name)).collect();
    let direct = matches!(spec.write_mode, WriteMode::Append | WriteMode::Replace)
        && spec.schema.fields.iter().all(|f| {
            target_types.get(&fit(&f.name, POSTGRES_MAX_IDENTIFIER)) == Some(&sql_type(f.ty))
        });
    let mut rows_replaced = 0;
    let with_ordinal = spec.write_mode == WriteMode::Merge;
    let copy_into = if direct {
        if spec.write_mode == WriteMode::Replace {
            // DELETE, not TRUNCATE: readers with an older snapshot keep seeing the old rows.
            rows_replaced = tx
                .execute(&format!("DELETE FROM {}", plan.qualified), &[])
                .await
                .map_err(failed)?;
        }
        format!("{} ({})", plan.qualified, target_columns.join(", "))
    } else {
        let mut staging_columns: Vec<String> = spec
            .schema
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| format!("c{i} {}", sql_type(f.ty)))
            .collect();
        if with_ordinal {
            staging_columns.push(format!("{ORDINAL} bigint"));
        }
        tx.batch_execute(&format!(
            "CREATE TEMP TABLE _sluice_staging ({}) ON COMMIT DROP",
            staging_columns.join(", ")
        ))
        .await
        .map_err(failed)?;
        STAGING.to_string()
    };
    let mut types: Vec<_> = spec.schema.fields.iter().map(|f| wire_type(f.ty)).collect();
    if with_ordinal {
        types.push(tokio_postgres::types::Type::INT8);
    }
    let sink = tx
        .copy_in(&format!("COPY {copy_into} FROM STDIN (FORMAT binary)"))
        .await
        .map_err(failed)?;
    let writer = BinaryCopyInWriter::new(sink, &types);
    futures::pin_mut!(writer);
    let mut batches = request.batches;
    let mut ordinal: i64 = 0;
    while let Some(batch) = batches.next().await {
        // An error from upstream returns here: the writer's drop aborts the COPY,
        // the transaction's drop rolls back.
        let batch = batch?;
        let columns =
            BatchColumns::new(&batch, &spec.schema).map_err(|message| DestinationError::Load {
                table: label.clone(),
                message,
            })?;
        let views = columns.views();
        for row in 0..columns.rows() {
            let cells = RowCells {
                columns: &views,
                row,
                ordinal: with_ordinal.then_some(ordinal),
                next: 0,
            };
            writer.as_mut().write_raw(cells).await.map_err(failed)?;
            ordinal += 1;
        }
    }
    let staged = writer.finish().await.map_err(failed)?;
    // Nothing is published unless the producer of the rows says it is complete.
    let tail = request.tail.await?;
    if let Some(fence) = &tail.fence {
        super::fence::check(&mut tx, &plan.fences, fence, request.run_id)
            .await
            .map_err(|e| match e {
                super::fence::FenceError::Sql(e) => failed(e),
                super::fence::FenceError::Refused(message) => DestinationError::Fenced {
                    table: label.clone(),
                    message,
                },
            })?;
    }

    // Publish.
    let staged_columns: Vec<String> = (0..spec.schema.fields.len())
        .map(|i| format!("c{i}"))
        .collect();
    let insert = |from: &str| {
        format!(
            "INSERT INTO {} ({}) SELECT {} FROM {from}",
            plan.qualified,
            target_columns.join(", "),
            staged_columns.join(", ")
        )
    };
    let (rows_replaced, rows_loaded) = match spec.write_mode {
        _ if direct => (rows_replaced, staged),
        WriteMode::Append => (0, tx.execute(&insert(STAGING), &[]).await.map_err(failed)?),
        WriteMode::Replace => {
            let replaced = tx
                .execute(&format!("DELETE FROM {}", plan.qualified), &[])
                .await
                .map_err(failed)?;
            (
                replaced,
                tx.execute(&insert(STAGING), &[]).await.map_err(failed)?,
            )
        }
        WriteMode::Merge => {
            let keys: Vec<(String, String)> = spec
                .primary_key
                .iter()
                .map(|k| {
                    let i = spec.schema.index_of(k).expect("checked by TablePlan::new");
                    (pg(k), format!("c{i}"))
                })
                .collect();
            let matches = keys
                .iter()
                .map(|(t, s)| format!("t.{t} = s.{s}"))
                .collect::<Vec<_>>()
                .join(" AND ");
            let replaced = tx
                .execute(
                    &format!(
                        "DELETE FROM {} AS t USING {STAGING} AS s WHERE {matches}",
                        plan.qualified
                    ),
                    &[],
                )
                .await
                .map_err(failed)?;
            let key_list = keys
                .iter()
                .map(|(_, s)| s.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let latest = format!(
                "(SELECT DISTINCT ON ({key_list}) * FROM {STAGING} ORDER BY {key_list}, {ORDINAL} DESC) AS s"
            );
            (
                replaced,
                tx.execute(&insert(&latest), &[]).await.map_err(failed)?,
            )
        }
        WriteMode::OverwritePartitions => {
            let column = spec
                .partition_column
                .as_deref()
                .expect("checked by TablePlan::new");
            let i = spec
                .schema
                .index_of(column)
                .expect("checked by TablePlan::new");
            let column_type = target_types
                .get(&fit(column, POSTGRES_MAX_IDENTIFIER))
                .cloned()
                .unwrap_or_else(|| sql_type(spec.schema.fields[i].ty));
            // The partitions named by the request and those present in the rows:
            // either alone could leave duplicates after a re-run.
            let mut sql = format!(
                "DELETE FROM {} AS t WHERE (t.{col} = ANY($1::text[]::{column_type}[]) \
                 OR t.{col} IN (SELECT c{i} FROM {STAGING}))",
                plan.qualified,
                col = pg(column)
            );
            let partitions: Vec<&str> = tail.partitions.iter().map(String::as_str).collect();
            let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&partitions];
            // A shard keeps the rows the round's other shards published (see `Fence`).
            if let (Some(fence), Some(_)) = (&tail.fence, spec.schema.field(RUN_ID_COLUMN)) {
                sql += &format!(
                    " AND NOT EXISTS (SELECT 1 FROM {} AS f WHERE f.round = $2 AND f.shard <> $3 \
                     AND f.run_id = t.{})",
                    plan.fences,
                    pg(RUN_ID_COLUMN)
                );
                params.push(&fence.round);
                params.push(&fence.shard);
            }
            let replaced = tx.execute(&sql, &params).await.map_err(failed)?;
            (
                replaced,
                tx.execute(&insert(STAGING), &[]).await.map_err(failed)?,
            )
        }
    };
    tracing::debug!(table = %label, staged, rows_loaded, rows_replaced, "published");

    insert_quarantine(&tx, &plan.quarantine, request.run_id, &tail.quarantine)
        .await
        .map_err(failed)?;
    let aliases = destination.aliases.lock().expect("aliases lock").clone();
    super::alias::publish(&tx, &aliases, &plan.schema, spec).await?;

    tx.execute(
        &format!(
            "INSERT INTO {} (table_name, load_id, run_id, rows) VALUES ($1, $2, $3, $4)",
            plan.ledger
        ),
        &[
            &label,
            &request.load_id,
            &request.run_id,
            &(rows_loaded as i64),
        ],
    )
    .await
    .map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    Ok(LoadOutcome {
        rows_loaded,
        rows_replaced,
        rows_quarantined: tail.quarantine.len() as u64,
        already_loaded: false,
    })
}

/// A connection ready to load `spec`: its schema and the ledger's exist, the
/// table's grants are applied, and the load ledger table exists (created outside
/// the load's transaction, so concurrent first loads cannot collide inside it).
pub(super) async fn connect_for_load(
    destination: &PostgresDestination,
    spec: &TableSpec,
    plan: &TablePlan,
) -> Result<Client, DestinationError> {
    let failed = |e: tokio_postgres::Error| DestinationError::Load {
        table: spec.qualified_name(),
        message: redact(&error_text(&e)),
    };
    let mut client = destination.connect().await?;
    ensure_schema(&client, &plan.schema).await.map_err(failed)?;
    ensure_schema(&client, &plan.ledger_schema)
        .await
        .map_err(failed)?;
    secure(destination, &mut client, plan, spec).await?;
    create_if_missing(
        &client,
        &format!(
            "CREATE TABLE IF NOT EXISTS {} (table_name text NOT NULL, load_id text NOT NULL, \
             run_id text NOT NULL, rows bigint NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now(), \
             PRIMARY KEY (table_name, load_id))",
            plan.ledger
        ),
    )
    .await
    .map_err(failed)?;
    Ok(client)
}

/// The names one load uses, fitted to PostgreSQL's limits; `qualified`,
/// `quarantine`, `ledger` and `fences` are quoted and ready for SQL.
pub(super) struct TablePlan {
    pub(super) schema: String,
    pub(super) table: String,
    pub(super) qualified: String,
    pub(super) quarantine: String,
    pub(super) ledger_schema: String,
    pub(super) ledger: String,
    /// Shards' fencing tokens (see `Fence`), beside the ledger.
    pub(super) fences: String,
}

impl TablePlan {
    pub(super) fn new(
        destination: &PostgresDestination,
        spec: &TableSpec,
    ) -> Result<TablePlan, DestinationError> {
        let schema_error = |message: String| DestinationError::Schema {
            table: spec.qualified_name(),
            message,
        };
        if spec.schema.fields.is_empty() {
            return Err(schema_error("the table has no columns".into()));
        }
        let mut seen = HashMap::new();
        for field in &spec.schema.fields {
            if let Some(other) = seen.insert(fit(&field.name, POSTGRES_MAX_IDENTIFIER), &field.name)
            {
                return Err(schema_error(format!(
                    "columns `{other}` and `{}` have the same name in PostgreSQL",
                    field.name
                )));
            }
        }
        match spec.write_mode {
            WriteMode::Merge => {
                if spec.primary_key.is_empty() {
                    return Err(schema_error(
                        "write mode `merge` needs a primary_key".into(),
                    ));
                }
                for key in &spec.primary_key {
                    if spec.schema.field(key).is_none() {
                        return Err(schema_error(format!(
                            "primary key column `{key}` is not in the schema"
                        )));
                    }
                }
            }
            WriteMode::OverwritePartitions => match &spec.partition_column {
                None => {
                    return Err(schema_error(
                        "write mode `overwrite_partitions` needs a partition_column".into(),
                    ))
                }
                Some(column) if spec.schema.field(column).is_none() => {
                    return Err(schema_error(format!(
                        "partition column `{column}` is not in the schema"
                    )))
                }
                Some(_) => {}
            },
            WriteMode::Append | WriteMode::Replace => {}
        }
        let schema = fit(
            &destination.schema_name(&spec.layer),
            POSTGRES_MAX_IDENTIFIER,
        );
        let table = fit(&spec.name, POSTGRES_MAX_IDENTIFIER);
        let ledger_schema = fit(&destination.ledger_schema(), POSTGRES_MAX_IDENTIFIER);
        Ok(TablePlan {
            qualified: format!("{}.{}", quote(&schema), quote(&table)),
            quarantine: format!(
                "{}.{}",
                quote(&schema),
                pg(&format!("{}__quarantine", spec.name))
            ),
            ledger: format!("{}.loads", quote(&ledger_schema)),
            fences: format!("{}.shard_fences", quote(&ledger_schema)),
            schema,
            table,
            ledger_schema,
        })
    }
}

/// The column type sluice creates for `ty`, spelled as `format_type` prints it.
pub(super) fn sql_type(ty: FieldType) -> String {
    match ty {
        FieldType::Boolean => "boolean".into(),
        FieldType::Bigint => "bigint".into(),
        FieldType::Double => "double precision".into(),
        FieldType::Numeric { precision, scale } => format!("numeric({precision},{})", scale.max(0)),
        FieldType::Text => "text".into(),
        FieldType::Json => "jsonb".into(),
        FieldType::Date => "date".into(),
        FieldType::Timestamp => "timestamp with time zone".into(),
    }
}

/// What an existing column holds, in sluice's terms; `None` for types sluice
/// does not create (uuid, arrays, …), which are left to PostgreSQL's casts.
fn field_type_of(sql: &str) -> Option<FieldType> {
    Some(match sql {
        "boolean" => FieldType::Boolean,
        "bigint" | "integer" | "smallint" => FieldType::Bigint,
        "double precision" | "real" => FieldType::Double,
        "text" => FieldType::Text,
        "jsonb" | "json" => FieldType::Json,
        "date" => FieldType::Date,
        "timestamp with time zone" | "timestamp without time zone" => FieldType::Timestamp,
        // Unconstrained numeric holds any decimal sluice makes.
        "numeric" => FieldType::Numeric {
            precision: 2 * MAX_DECIMAL_PRECISION,
            scale: MAX_DECIMAL_PRECISION as i8,
        },
        s if s.starts_with("character") => FieldType::Text,
        s if s.starts_with("numeric(") => {
            let (precision, scale) = s
                .trim_start_matches("numeric(")
                .trim_end_matches(')')
                .split_once(',')?;
            FieldType::Numeric {
                precision: precision.trim().parse().ok()?,
                scale: scale.trim().parse().ok()?,
            }
        }
        _ => return None,
    })
}

/// Creates the table, or evolves it to hold the load's columns. Returns the
/// target's column types by (fitted) name after the change.
pub(super) async fn prepare_table(
    tx: &impl GenericClient,
    plan: &TablePlan,
    spec: &TableSpec,
) -> Result<HashMap<String, String>, DestinationError> {
    let label = spec.qualified_name();
    let failed = |e: tokio_postgres::Error| DestinationError::Load {
        table: label.clone(),
        message: redact(&error_text(&e)),
    };
    let rows = tx
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&plan.schema, &plan.table],
        )
        .await
        .map_err(failed)?;
    let mut existing: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();

    if existing.is_empty() {
        let mut columns: Vec<String> = spec
            .schema
            .fields
            .iter()
            .map(|f| format!("{} {}", pg(&f.name), sql_type(f.ty)))
            .collect();
        if spec.write_mode == WriteMode::Merge {
            let keys: Vec<String> = spec.primary_key.iter().map(|k| pg(k)).collect();
            columns.push(format!("PRIMARY KEY ({})", keys.join(", ")));
        }
        tx.batch_execute(&format!(
            "CREATE TABLE {} ({})",
            plan.qualified,
            columns.join(", ")
        ))
        .await
        .map_err(failed)?;
        if spec.write_mode == WriteMode::OverwritePartitions {
            let column = spec
                .partition_column
                .as_deref()
                .expect("checked by TablePlan::new");
            let index = pg(&format!("{}__{}", spec.name, column));
            tx.batch_execute(&format!(
                "CREATE INDEX {index} ON {} ({})",
                plan.qualified,
                pg(column)
            ))
            .await
            .map_err(failed)?;
        }
        return Ok(spec
            .schema
            .fields
            .iter()
            .map(|f| (fit(&f.name, POSTGRES_MAX_IDENTIFIER), sql_type(f.ty)))
            .collect());
    }

    // Decide every change first, so an incompatible column fails before anything is altered.
    let mut changes = Vec::new();
    let mut new_types = Vec::new();
    for field in &spec.schema.fields {
        let name = fit(&field.name, POSTGRES_MAX_IDENTIFIER);
        let wanted = sql_type(field.ty);
        let Some(current) = existing.get(&name) else {
            changes.push(format!("ADD COLUMN {} {wanted}", quote(&name)));
            new_types.push((name, wanted));
            continue;
        };
        match field_type_of(current) {
            // Not a type sluice creates: PostgreSQL's assignment casts decide.
            None => {}
            Some(have) if field.ty.widens_to(&have) => {}
            Some(have) if have.widens_to(&field.ty) => {
                changes.push(format!(
                    "ALTER COLUMN {col} TYPE {wanted} USING {col}::{wanted}",
                    col = quote(&name)
                ));
                new_types.push((name, wanted));
            }
            Some(_) => {
                return Err(DestinationError::Schema {
                    table: label.clone(),
                    message: format!(
                        "column `{}` is {current} in the table but {} in this load, and neither \
                         type holds the other's values; rename the field or migrate the column",
                        field.name,
                        field.ty.name()
                    ),
                })
            }
        }
    }
    if !changes.is_empty() {
        tracing::info!(table = %label, changes = ?changes, "evolving table");
        tx.batch_execute(&format!(
            "ALTER TABLE {} {}",
            plan.qualified,
            changes.join(", ")
        ))
        .await
        .map_err(failed)?;
        existing.extend(new_types);
    }
    // A declared rename folds the column an earlier run evolved back into the kept one.
    for (sent, kept) in &spec.schema.folded {
        let sent = fit(sent, POSTGRES_MAX_IDENTIFIER);
        let kept = fit(kept, POSTGRES_MAX_IDENTIFIER);
        let (true, Some(kept_type)) = (existing.contains_key(&sent), existing.get(&kept).cloned())
        else {
            continue;
        };
        tracing::info!(table = %label, column = %sent, into = %kept, "folding a renamed column back");
        tx.batch_execute(&format!(
            "UPDATE {t} SET {k} = COALESCE({k}, CAST({s} AS {kept_type})) WHERE {s} IS NOT NULL; \
             ALTER TABLE {t} DROP COLUMN {s}",
            t = plan.qualified,
            k = quote(&kept),
            s = quote(&sent),
        ))
        .await
        .map_err(failed)?;
        existing.remove(&sent);
    }
    Ok(existing)
}

/// Appends records to `<table>__quarantine` alone, in their own transaction: the
/// failing rows of a model whose error-severity check blocked its publish.
pub(super) async fn record_quarantine(
    destination: &PostgresDestination,
    spec: &TableSpec,
    run_id: &str,
    rows: &[Rejected],
) -> Result<u64, DestinationError> {
    let label = spec.qualified_name();
    let failed = |e: tokio_postgres::Error| DestinationError::Load {
        table: label.clone(),
        message: redact(&error_text(&e)),
    };
    if rows.is_empty() {
        return Ok(0);
    }
    let plan = TablePlan::new(destination, spec)?;
    let mut client = destination.connect().await?;
    ensure_schema(&client, &plan.schema).await.map_err(failed)?;
    ensure_schema(&client, &plan.ledger_schema)
        .await
        .map_err(failed)?;
    secure(destination, &mut client, &plan, spec).await?;
    let tx = client.transaction().await.map_err(failed)?;
    insert_quarantine(&tx, &plan.quarantine, run_id, rows)
        .await
        .map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    Ok(rows.len() as u64)
}

/// Sets who may read the table's schema (and the ledger's): see [`super::grants`].
/// A refusal (a listed role that does not exist, no right to grant) is not retried.
pub(super) async fn secure(
    destination: &PostgresDestination,
    client: &mut Client,
    plan: &TablePlan,
    spec: &TableSpec,
) -> Result<(), DestinationError> {
    let refused = |e: tokio_postgres::Error| DestinationError::Schema {
        table: spec.qualified_name(),
        message: format!(
            "setting read access (destination.readers / d1_readers): {}",
            redact(&error_text(&e))
        ),
    };
    grants::secure(destination, client, &plan.schema, Some(&spec.layer))
        .await
        .map_err(refused)?;
    grants::secure(destination, client, &plan.ledger_schema, None)
        .await
        .map_err(refused)
}

/// Inserts quarantined records (creating `<table>__quarantine` on first use).
pub(super) async fn insert_quarantine(
    tx: &impl GenericClient,
    quarantine: &str,
    run_id: &str,
    rows: &[Rejected],
) -> Result<(), tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {quarantine} (run_id text NOT NULL, origin text NOT NULL, line bigint, \
         reason text NOT NULL, raw text, quarantined_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await?;
    let sql = format!(
        "INSERT INTO {quarantine} (run_id, origin, line, reason, raw) \
         SELECT $1::text, * FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[])"
    );
    let statement = tx.prepare(&sql).await?;
    for chunk in rows.chunks(QUARANTINE_CHUNK) {
        let origins: Vec<String> = chunk.iter().map(|r| no_nul(&r.origin.page)).collect();
        let lines: Vec<i64> = chunk.iter().map(|r| r.origin.line as i64).collect();
        let reasons: Vec<String> = chunk.iter().map(|r| no_nul(&r.reason)).collect();
        let raws: Vec<String> = chunk.iter().map(|r| no_nul(&r.raw)).collect();
        tx.execute(&statement, &[&run_id, &origins, &lines, &reasons, &raws])
            .await?;
    }
    Ok(())
}

/// `CREATE SCHEMA IF NOT EXISTS`, tolerating a concurrent creator winning the race.
pub(super) async fn ensure_schema(
    client: &Client,
    schema: &str,
) -> Result<(), tokio_postgres::Error> {
    create_if_missing(
        client,
        &format!("CREATE SCHEMA IF NOT EXISTS {}", quote(schema)),
    )
    .await
}

/// Runs an `IF NOT EXISTS` DDL statement; two sessions running it at once can still
/// collide in the catalog (a unique violation, or 42710 on the table's row type),
/// which means it exists now.
pub(super) async fn create_if_missing(
    client: &Client,
    sql: &str,
) -> Result<(), tokio_postgres::Error> {
    match client.batch_execute(sql).await {
        Err(e) if is_duplicate(&e) => Ok(()),
        other => other,
    }
}

/// The error of a `CREATE … IF NOT EXISTS` that raced another creator of the same object.
pub(super) fn is_duplicate(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(
            &SqlState::UNIQUE_VIOLATION
                | &SqlState::DUPLICATE_OBJECT
                | &SqlState::DUPLICATE_SCHEMA
                | &SqlState::DUPLICATE_TABLE
        )
    )
}

fn no_nul(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}
