//! Who may read what sluice publishes on PostgreSQL.
//!
//! - `d1` (clear personal data) and `_sluice` (the ledger) are *closed*: nothing for
//!   `PUBLIC`, USAGE + SELECT (on today's tables and, through default privileges, on
//!   every table sluice creates later) for the roles in `destination.d1_readers`
//!   only; a role removed from that list loses its access at the next load.
//! - `d2a`, `d2b` (personal columns only as the PII policy shows them): USAGE +
//!   SELECT, current and default, for `destination.readers` (a BI tool's role);
//!   grants made by hand are left alone.
//!
//! Each schema is secured once per process, under an advisory lock: concurrent
//! `GRANT`s on one schema can otherwise fail with "tuple concurrently updated".

use tokio_postgres::Client;

use super::PostgresDestination;
use crate::names::quote;

/// The layer whose schema holds clear personal data.
pub const CLOSED_LAYER: &str = "d1";

/// Sets the grants of `schema`, which holds `layer` (`None`: the ledger schema).
pub(super) async fn secure(
    destination: &PostgresDestination,
    client: &mut Client,
    schema: &str,
    layer: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    if destination
        .secured
        .lock()
        .expect("grants lock")
        .contains(schema)
    {
        return Ok(());
    }
    let config = destination.config();
    let closed = layer.is_none_or(|l| l == CLOSED_LAYER);
    let readers = if closed {
        &config.d1_readers
    } else {
        &config.readers
    };
    let quoted = quote(schema);
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&format!("sluice:grants:{schema}")],
    )
    .await?;
    let mut sql = String::new();
    if closed {
        sql.push_str(&format!(
            "REVOKE ALL ON SCHEMA {quoted} FROM PUBLIC; \
             REVOKE ALL ON ALL TABLES IN SCHEMA {quoted} FROM PUBLIC; "
        ));
        // Roles holding any privilege on the schema but its owner's and the listed ones.
        let granted = tx
            .query(
                "SELECT DISTINCT r.rolname::text FROM pg_namespace n \
                 CROSS JOIN LATERAL aclexplode(n.nspacl) a \
                 JOIN pg_roles r ON r.oid = a.grantee \
                 WHERE n.nspname = $1 AND a.grantee <> n.nspowner",
                &[&schema],
            )
            .await?;
        for row in granted {
            let role: String = row.get(0);
            if !readers.contains(&role) {
                let role = quote(&role);
                sql.push_str(&format!(
                    "REVOKE ALL ON SCHEMA {quoted} FROM {role}; \
                     REVOKE ALL ON ALL TABLES IN SCHEMA {quoted} FROM {role}; \
                     ALTER DEFAULT PRIVILEGES IN SCHEMA {quoted} REVOKE ALL ON TABLES FROM {role}; "
                ));
            }
        }
    }
    for role in readers {
        let role = quote(role);
        sql.push_str(&format!(
            "GRANT USAGE ON SCHEMA {quoted} TO {role}; \
             GRANT SELECT ON ALL TABLES IN SCHEMA {quoted} TO {role}; \
             ALTER DEFAULT PRIVILEGES IN SCHEMA {quoted} GRANT SELECT ON TABLES TO {role}; "
        ));
    }
    if !sql.is_empty() {
        tx.batch_execute(&sql).await?;
    }
    tx.commit().await?;
    destination
        .secured
        .lock()
        .expect("grants lock")
        .insert(schema.to_string());
    Ok(())
}
