//! A shard's fencing token, checked and recorded inside its load's transaction
//! (see `sluice_core::destination::Fence`), in `<ledger schema>.shard_fences`:
//! one row per (round, shard, token) with the run id that published it.

use sluice_core::destination::Fence;
use tokio_postgres::Transaction;

use super::load::is_duplicate;

pub(super) enum FenceError {
    Sql(tokio_postgres::Error),
    Refused(String),
}

/// Checks a shard's fencing token in the load's transaction and records it with the
/// run id: refused when a higher token of the same shard and round has published. A
/// lock per shard and round orders two publishers of the same shard; the row of the
/// one that commits first is seen by the other.
pub(super) async fn check(
    tx: &mut Transaction<'_>,
    fences: &str,
    fence: &Fence,
    run_id: &str,
) -> Result<(), FenceError> {
    // In a savepoint: two first loads creating the table at once must not abort the load.
    let savepoint = tx
        .savepoint("sluice_fences")
        .await
        .map_err(FenceError::Sql)?;
    let created = savepoint
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} (round text NOT NULL, shard text NOT NULL, \
             token bigint NOT NULL, run_id text NOT NULL, \
             published_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (round, shard, token))",
            fences
        ))
        .await;
    match created {
        Ok(()) => savepoint.commit().await.map_err(FenceError::Sql)?,
        Err(e) if is_duplicate(&e) => savepoint.rollback().await.map_err(FenceError::Sql)?,
        Err(e) => return Err(FenceError::Sql(e)),
    }
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&format!("sluice-fence:{}:{}", fence.round, fence.shard)],
    )
    .await
    .map_err(FenceError::Sql)?;
    let token = fence.stored_token();
    let highest: Option<i64> = tx
        .query_one(
            &format!(
                "SELECT max(token) FROM {} WHERE round = $1 AND shard = $2",
                fences
            ),
            &[&fence.round, &fence.shard],
        )
        .await
        .map_err(FenceError::Sql)?
        .get(0);
    if let Some(refusal) = fence.refusal(highest) {
        return Err(FenceError::Refused(refusal));
    }
    tx.execute(
        &format!(
            "INSERT INTO {} (round, shard, token, run_id) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
            fences
        ),
        &[&fence.round, &fence.shard, &token, &run_id],
    )
    .await
    .map_err(FenceError::Sql)?;
    Ok(())
}
