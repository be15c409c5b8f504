//! Models computed inside PostgreSQL (`models: { engine: destination }`): the
//! [`Warehouse`] side of sluice's pushdown.
//!
//! One model is one connection and one transaction, driven by sluice-transform:
//!
//! 1. Outside the transaction, idempotently: the layer's schema, the ledger, grants
//!    (as for every load, see `load.rs`).
//! 2. `BEGIN`; the table's advisory lock (the same one loads take); a load id the
//!    ledger has → `ROLLBACK`, nothing to do.
//! 3. A `TEMP … ON COMMIT DROP` staging table with the table's columns, which the
//!    model's `INSERT … SELECT` fills and its checks read.
//! 4. Publish: create or evolve the table, `DELETE` what the model replaces (the
//!    whole table, or the recomputed partitions), `INSERT` from staging, quarantine,
//!    ledger, `COMMIT`. Or, when an `error` check failed: only the quarantine, `COMMIT`.
//!
//! A dropped session drops its connection before `COMMIT`: PostgreSQL rolls back.
//! `DELETE` + `INSERT` rather than `TRUNCATE` or a rename: readers with an older
//! snapshot keep reading the old rows, and nobody ever sees a half table.

use async_trait::async_trait;
use sluice_core::destination::{DestinationError, LoadOutcome, LoadTail, TableSpec, WriteMode};
use sluice_core::pushdown::{Warehouse, WarehouseSession};
use sluice_core::secret::redact;
use sluice_core::typing::Rejected;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::load::{connect_for_load, insert_quarantine, prepare_table, sql_type, TablePlan};
use super::{error_text, PostgresDestination};
use crate::names::{fit, pg, quote, POSTGRES_MAX_IDENTIFIER};

const STAGE: &str = "pg_temp._sluice_model";

#[async_trait]
impl Warehouse for PostgresDestination {
    fn dialect(&self) -> &'static str {
        "postgres"
    }

    fn published_table(&self, layer: &str, name: &str) -> String {
        format!(
            "{}.{}",
            quote(&fit(&self.schema_name(layer), POSTGRES_MAX_IDENTIFIER)),
            pg(name)
        )
    }

    async fn columns(
        &self,
        layer: &str,
        name: &str,
    ) -> Result<Vec<(String, String)>, DestinationError> {
        let client = self.connect().await?;
        let rows = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
                &[
                    &fit(&self.schema_name(layer), POSTGRES_MAX_IDENTIFIER),
                    &fit(name, POSTGRES_MAX_IDENTIFIER),
                ],
            )
            .await
            .map_err(|e| DestinationError::Load {
                table: format!("{layer}.{name}"),
                message: redact(&error_text(&e)),
            })?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn begin(
        &self,
        spec: &TableSpec,
        load_id: &str,
    ) -> Result<Option<Box<dyn WarehouseSession>>, DestinationError> {
        let label = spec.qualified_name();
        let failed = |e: tokio_postgres::Error| session_error(&label, &e);
        if !matches!(
            spec.write_mode,
            WriteMode::Replace | WriteMode::OverwritePartitions
        ) {
            return Err(DestinationError::Schema {
                table: label,
                message: "a model publishes with `replace` or `overwrite_partitions`".into(),
            });
        }
        let plan = TablePlan::new(self, spec)?;
        let client = connect_for_load(self, spec, &plan).await?;
        client.batch_execute("BEGIN").await.map_err(failed)?;
        client
            .execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&format!("sluice:{}.{}", plan.schema, plan.table)],
            )
            .await
            .map_err(failed)?;
        let seen = client
            .query_opt(
                &format!(
                    "SELECT 1 FROM {} WHERE table_name = $1 AND load_id = $2",
                    plan.ledger
                ),
                &[&label, &load_id],
            )
            .await
            .map_err(failed)?;
        if seen.is_some() {
            client.batch_execute("ROLLBACK").await.map_err(failed)?;
            return Ok(None);
        }
        let columns: Vec<String> = spec
            .schema
            .fields
            .iter()
            .map(|f| format!("{} {}", pg(&f.name), sql_type(f.ty)))
            .collect();
        client
            .batch_execute(&format!(
                "CREATE TEMP TABLE _sluice_model ({}) ON COMMIT DROP",
                columns.join(", ")
            ))
            .await
            .map_err(failed)?;
        Ok(Some(Box::new(ModelSession {
            client,
            plan,
            spec: spec.clone(),
            load_id: load_id.to_string(),
        })))
    }
}

/// An open model transaction (see the module doc).
struct ModelSession {
    client: Client,
    plan: TablePlan,
    spec: TableSpec,
    load_id: String,
}

impl ModelSession {
    fn failed(&self) -> impl Fn(tokio_postgres::Error) -> DestinationError + '_ {
        move |e| session_error(&self.spec.qualified_name(), &e)
    }
}

/// A failed statement of a model's session: the connection lost, the server
/// shutting down or a serialization conflict may pass on a new attempt ([`Load`],
/// transient); anything else is the model's SQL failing on the data ([`Query`]),
/// which would fail again.
///
/// [`Load`]: DestinationError::Load
/// [`Query`]: DestinationError::Query
fn session_error(table: &str, e: &tokio_postgres::Error) -> DestinationError {
    let (table, message) = (table.to_string(), redact(&error_text(e)));
    let transient = match e.code() {
        // No SQLSTATE: the connection closed or broke.
        None => true,
        Some(state) => {
            let code = state.code();
            // 08 connection, 40 serialization/deadlock, 53 resources, 57P0x shutdown.
            ["08", "40", "53", "57P0"]
                .iter()
                .any(|class| code.starts_with(class))
        }
    };
    if transient {
        DestinationError::Load { table, message }
    } else {
        DestinationError::Query { table, message }
    }
}

#[async_trait]
impl WarehouseSession for ModelSession {
    fn stage(&self) -> &str {
        STAGE
    }

    async fn execute(&mut self, sql: &str, secrets: &[&[u8]]) -> Result<u64, DestinationError> {
        let params: Vec<&(dyn ToSql + Sync)> =
            secrets.iter().map(|s| s as &(dyn ToSql + Sync)).collect();
        self.client
            .execute(sql, &params)
            .await
            .map_err(self.failed())
    }

    async fn query_text(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, DestinationError> {
        let rows = self.client.query(sql, &[]).await.map_err(self.failed())?;
        Ok(rows
            .iter()
            .map(|row| (0..row.len()).map(|i| row.get(i)).collect())
            .collect())
    }

    async fn publish(
        self: Box<Self>,
        tail: LoadTail,
        run_id: &str,
    ) -> Result<LoadOutcome, DestinationError> {
        let failed = self.failed();
        let (client, plan, spec) = (&self.client, &self.plan, &self.spec);
        let target_types = prepare_table(client, plan, spec).await?;
        let columns: Vec<String> = spec.schema.fields.iter().map(|f| pg(&f.name)).collect();
        let rows_replaced = match spec.write_mode {
            WriteMode::OverwritePartitions => {
                let column = spec
                    .partition_column
                    .as_deref()
                    .expect("checked by TablePlan::new");
                let column_type = target_types
                    .get(&fit(column, POSTGRES_MAX_IDENTIFIER))
                    .cloned()
                    .unwrap_or_else(|| "date".into());
                // The recomputed dates and those in the rows: either alone could leave
                // duplicates after a re-run.
                let sql = format!(
                    "DELETE FROM {} WHERE {col} = ANY($1::text[]::{column_type}[]) \
                     OR {col} IN (SELECT {col} FROM {STAGE})",
                    plan.qualified,
                    col = pg(column)
                );
                let partitions: Vec<&str> = tail.partitions.iter().map(String::as_str).collect();
                client
                    .execute(&sql, &[&partitions])
                    .await
                    .map_err(&failed)?
            }
            _ => client
                .execute(&format!("DELETE FROM {}", plan.qualified), &[])
                .await
                .map_err(&failed)?,
        };
        let rows_loaded = client
            .execute(
                &format!(
                    "INSERT INTO {} ({cols}) SELECT {cols} FROM {STAGE}",
                    plan.qualified,
                    cols = columns.join(", ")
                ),
                &[],
            )
            .await
            .map_err(&failed)?;
        insert_quarantine(client, &plan.quarantine, run_id, &tail.quarantine)
            .await
            .map_err(&failed)?;
        client
            .execute(
                &format!(
                    "INSERT INTO {} (table_name, load_id, run_id, rows) VALUES ($1, $2, $3, $4)",
                    plan.ledger
                ),
                &[
                    &spec.qualified_name(),
                    &self.load_id,
                    &run_id,
                    &(rows_loaded as i64),
                ],
            )
            .await
            .map_err(&failed)?;
        client.batch_execute("COMMIT").await.map_err(&failed)?;
        tracing::debug!(table = %spec.qualified_name(), rows_loaded, rows_replaced, "published in the warehouse");
        Ok(LoadOutcome {
            rows_loaded,
            rows_replaced,
            rows_quarantined: tail.quarantine.len() as u64,
            already_loaded: false,
        })
    }

    async fn block(
        self: Box<Self>,
        quarantine: &[Rejected],
        run_id: &str,
    ) -> Result<u64, DestinationError> {
        let failed = self.failed();
        insert_quarantine(&self.client, &self.plan.quarantine, run_id, quarantine)
            .await
            .map_err(&failed)?;
        self.client.batch_execute("COMMIT").await.map_err(&failed)?;
        Ok(quarantine.len() as u64)
    }
}
