//! Quarantined records in the lake: `quarantine/<layer>/<table>/<run>.ndjson`, one
//! JSON object per record — `run_id`, `origin` (file:line, or `check:<name>`),
//! `reason`, and `raw` (the record as received, as text). D1 streams and models
//! write the same shape, so `sluice query` reads every quarantine as
//! `quarantine.<layer>__<table>`, whether or not a destination holds a copy.

use bytes::Bytes;

pub mod retry;

use crate::lake::{Lake, LakeError};
use crate::typing::Rejected;

/// The folder of every quarantine.
pub const PREFIX: &str = "quarantine";

/// The lake path of one run's quarantine of `layer.table`.
pub fn path(layer: &str, table: &str, run_id: &str) -> String {
    format!(
        "{}/{run_id}.ndjson",
        crate::lake::layout::quarantine(layer, table)
    )
}

/// Writes `rejected` (nothing when empty); returns the path written.
pub async fn write(
    lake: &Lake,
    layer: &str,
    table: &str,
    run_id: &str,
    rejected: &[Rejected],
) -> Result<Option<String>, LakeError> {
    if rejected.is_empty() {
        return Ok(None);
    }
    let mut text = String::new();
    for r in rejected {
        let line = serde_json::json!({
            "run_id": run_id,
            "origin": r.origin.to_string(),
            "reason": r.reason,
            "raw": r.raw,
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    let path = path(layer, table, run_id);
    lake.put(&path, Bytes::from(crate::secret::redact(&text)))
        .await?;
    Ok(Some(path))
}
