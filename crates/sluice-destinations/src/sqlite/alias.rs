//! A switched replacement's old D1 name in SQLite (see `sluice_core::replace`).
//!
//! In the load transaction of the replacing table (`d1__crm_customers`): the alias
//! views over it are dropped before the table is evolved (a rebuild must not trip
//! over a view of it) and made again after its rows are published. The replaced
//! table (`d1__vendor_customers`), if still a table, is first renamed
//! `d1__vendor_customers__replaced_<YYYYMMDD>` with `legacy_alter_table` on, so
//! views of the user's keep naming `d1__vendor_customers` and so read the new view.

use rusqlite::{OptionalExtension, Transaction};
use sluice_core::destination::TableSpec;
use sluice_core::replace::{D1Alias, ViewColumn};

use super::table_name;
use crate::names::quote;

fn of<'a>(aliases: &'a [D1Alias], spec: &'a TableSpec) -> impl Iterator<Item = &'a D1Alias> {
    aliases
        .iter()
        .filter(move |a| spec.layer == "d1" && a.table == spec.name)
}

fn kind(tx: &Transaction<'_>, name: &str) -> rusqlite::Result<Option<String>> {
    tx.query_row(
        "SELECT type FROM sqlite_master WHERE name = ?1 AND type IN ('table', 'view')",
        [name],
        |r| r.get(0),
    )
    .optional()
}

/// Drops the alias views over `spec`'s table (made again by [`publish`]).
pub(super) fn drop_views(
    tx: &Transaction<'_>,
    aliases: &[D1Alias],
    spec: &TableSpec,
) -> rusqlite::Result<()> {
    for alias in of(aliases, spec) {
        let old = table_name("d1", &alias.replaced_table);
        if kind(tx, &old)?.as_deref() == Some("view") {
            tx.execute_batch(&format!("DROP VIEW {}", quote(&old)))?;
        }
    }
    Ok(())
}

/// Retires each replaced table still there and makes its name a view of `spec`'s.
pub(super) fn publish(
    tx: &Transaction<'_>,
    aliases: &[D1Alias],
    spec: &TableSpec,
) -> rusqlite::Result<()> {
    for alias in of(aliases, spec) {
        let old = table_name("d1", &alias.replaced_table);
        match kind(tx, &old)?.as_deref() {
            Some("table") => retire(tx, alias, &old)?,
            Some(_) => tx.execute_batch(&format!("DROP VIEW {}", quote(&old)))?,
            None => {}
        }
        let prefix = table_name("d1", &alias.retired_prefix());
        let retired: Option<String> = tx
            .query_row(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, length(?1)) = ?1 \
                 ORDER BY name DESC LIMIT 1",
                [&prefix],
                |r| r.get(0),
            )
            .optional()?;
        let mut old_columns: Vec<(String, String)> = Vec::new();
        if let Some(retired) = retired {
            let mut stmt = tx.prepare("SELECT name, type FROM pragma_table_info(?1)")?;
            old_columns = stmt
                .query_map([retired], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
        }
        let new_refs: Vec<&str> = spec.schema.fields.iter().map(|f| f.name.as_str()).collect();
        let old_refs: Vec<&str> = old_columns.iter().map(|(n, _)| n.as_str()).collect();
        let select: Vec<String> = alias
            .view_columns(&new_refs, &old_refs)
            .iter()
            .map(|column| match column {
                ViewColumn::Mapped { new, old } if new == old => quote(new),
                ViewColumn::Mapped { new, old } => format!("{} AS {}", quote(new), quote(old)),
                ViewColumn::Null { old } => {
                    let ty = old_columns
                        .iter()
                        .find(|(n, _)| n == old)
                        .map(|(_, t)| t.as_str())
                        .filter(|t| !t.is_empty() && !t.contains(['"', ';', ')']));
                    match ty {
                        Some(ty) => format!("CAST(NULL AS {ty}) AS {}", quote(old)),
                        None => format!("NULL AS {}", quote(old)),
                    }
                }
            })
            .collect();
        tx.execute_batch(&format!(
            "CREATE VIEW {} AS SELECT {} FROM {}",
            quote(&old),
            select.join(", "),
            quote(&table_name("d1", &alias.table))
        ))?;
    }
    Ok(())
}

/// Renames the replaced table to its retired name (the first free one of the day).
fn retire(tx: &Transaction<'_>, alias: &D1Alias, old: &str) -> rusqlite::Result<()> {
    let base = table_name("d1", &alias.retired_name(chrono::Utc::now().date_naive()));
    let mut name = base.clone();
    let mut n = 2;
    while kind(tx, &name)?.is_some() {
        name = format!("{base}_{n}");
        n += 1;
    }
    // Legacy rename: views naming the old table keep that name (and so read the
    // alias view) instead of being rewritten to the retired table.
    tx.execute_batch("PRAGMA legacy_alter_table = ON")?;
    let renamed = tx.execute_batch(&format!(
        "ALTER TABLE {} RENAME TO {}",
        quote(old),
        quote(&name)
    ));
    tx.execute_batch("PRAGMA legacy_alter_table = OFF")?;
    renamed?;
    tracing::info!(table = %alias.replaced_table, kept_as = %name, "switched: the replaced table is kept under a new name");
    Ok(())
}
