//! A switched replacement's old D1 name in PostgreSQL (see `sluice_core::replace`).
//!
//! Inside the load transaction of the replacing table (`d1.crm_customers`), after its
//! rows are published: the replaced table (`d1.vendor_customers`), if still a table,
//! is renamed `vendor_customers__replaced_<YYYYMMDD>` (its last data stays
//! readable), and `d1.vendor_customers` becomes a view of the replacing table with
//! the mapped columns under their old names and the old columns the new stream lacks
//! as NULLs of their old types. A view of the user's that read the old table follows
//! the rename (PostgreSQL binds views to tables, not names): it is named in a warning.

use sluice_core::destination::{DestinationError, TableSpec};
use sluice_core::replace::{D1Alias, ViewColumn};
use tokio_postgres::Transaction;

use crate::names::{fit, pg, quote, POSTGRES_MAX_IDENTIFIER};

/// Publishes the old name of every switched replacement of `spec`'s table.
pub(super) async fn publish(
    tx: &Transaction<'_>,
    aliases: &[D1Alias],
    schema: &str,
    spec: &TableSpec,
) -> Result<(), DestinationError> {
    if spec.layer != "d1" {
        return Ok(());
    }
    for alias in aliases.iter().filter(|a| a.table == spec.name) {
        publish_one(tx, alias, schema, spec)
            .await
            .map_err(|e| DestinationError::Load {
                table: format!(
                    "d1.{} (the view of d1.{})",
                    alias.replaced_table, alias.table
                ),
                message: sluice_core::secret::redact(&super::error_text(&e)),
            })?;
    }
    Ok(())
}

async fn publish_one(
    tx: &Transaction<'_>,
    alias: &D1Alias,
    schema: &str,
    spec: &TableSpec,
) -> Result<(), tokio_postgres::Error> {
    let old = fit(&alias.replaced_table, POSTGRES_MAX_IDENTIFIER);
    let kind: Option<i8> = tx
        .query_opt(
            "SELECT c.relkind::\"char\" FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &old],
        )
        .await?
        .map(|r| r.get(0));
    if kind.is_some_and(|k| k as u8 != b'v') {
        retire(tx, alias, schema, &old).await?;
    }
    // The replaced table's columns and types: from its latest retired copy.
    let retired: Option<String> = tx
        .query_opt(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND starts_with(c.relname::text, $2) \
             ORDER BY c.relname DESC LIMIT 1",
            &[&schema, &alias.retired_prefix()],
        )
        .await?
        .map(|r| r.get(0));
    let mut old_columns: Vec<(String, String)> = Vec::new();
    if let Some(retired) = &retired {
        let rows = tx
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                 WHERE a.attrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass \
                 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&schema, retired],
            )
            .await?;
        old_columns = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    }
    let new_names: Vec<String> = spec
        .schema
        .fields
        .iter()
        .map(|f| fit(&f.name, POSTGRES_MAX_IDENTIFIER))
        .collect();
    let new_refs: Vec<&str> = new_names.iter().map(String::as_str).collect();
    let old_refs: Vec<&str> = old_columns.iter().map(|(n, _)| n.as_str()).collect();
    let select: Vec<String> = alias
        .view_columns(&new_refs, &old_refs)
        .iter()
        .map(|column| match column {
            ViewColumn::Mapped { new, old } if new == old => pg(new),
            ViewColumn::Mapped { new, old } => format!("{} AS {}", pg(new), pg(old)),
            ViewColumn::Null { old } => {
                let ty = old_columns
                    .iter()
                    .find(|(n, _)| n == old)
                    .map_or("text", |(_, t)| t.as_str());
                format!("CAST(NULL AS {ty}) AS {}", pg(old))
            }
        })
        .collect();
    let view = format!("{}.{}", quote(schema), pg(&alias.replaced_table));
    let body = format!(
        "SELECT {} FROM {}.{}",
        select.join(", "),
        quote(schema),
        pg(&alias.table)
    );
    // CREATE OR REPLACE keeps views of the user's that read this one; it refuses a
    // changed column type, and then the view is dropped (never cascading) and made anew.
    tx.batch_execute("SAVEPOINT sluice_alias").await?;
    match tx
        .batch_execute(&format!("CREATE OR REPLACE VIEW {view} AS {body}"))
        .await
    {
        Ok(()) => tx.batch_execute("RELEASE SAVEPOINT sluice_alias").await,
        Err(e) => {
            tracing::info!(view = %view, error = %super::error_text(&e), "recreating the view");
            tx.batch_execute(&format!(
                "ROLLBACK TO SAVEPOINT sluice_alias; DROP VIEW IF EXISTS {view}; CREATE VIEW {view} AS {body}"
            ))
            .await
        }
    }
}

/// Renames the replaced table to its retired name (the first free one of the day).
async fn retire(
    tx: &Transaction<'_>,
    alias: &D1Alias,
    schema: &str,
    old: &str,
) -> Result<(), tokio_postgres::Error> {
    let base = alias.retired_name(chrono::Utc::now().date_naive());
    let mut name = fit(&base, POSTGRES_MAX_IDENTIFIER);
    for n in 2.. {
        let taken = tx
            .query_opt(
                "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&schema, &name],
            )
            .await?
            .is_some();
        if !taken {
            break;
        }
        name = fit(&format!("{base}_{n}"), POSTGRES_MAX_IDENTIFIER);
    }
    let dependents = tx
        .query(
            "SELECT DISTINCT v.oid::regclass::text FROM pg_depend d \
             JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class \
             WHERE d.refobjid = (quote_ident($1) || '.' || quote_ident($2))::regclass \
             AND v.oid <> d.refobjid",
            &[&schema, &old],
        )
        .await?;
    tx.batch_execute(&format!(
        "ALTER TABLE {}.{} RENAME TO {}",
        quote(schema),
        quote(old),
        quote(&name)
    ))
    .await?;
    tracing::info!(table = %alias.replaced_table, kept_as = %name, "switched: the replaced table is kept under a new name");
    for row in dependents {
        let view: String = row.get(0);
        tracing::warn!(
            "view {view} read d1.{old}, which is now {schema}.{name} (the replaced stream's last data); \
             recreate it to read d1.{old}, now a view of d1.{}",
            alias.table
        );
    }
    Ok(())
}
