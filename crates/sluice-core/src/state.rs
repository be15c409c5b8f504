//! Pipeline state in the lake: cursors, schema versions and run records.
//!
//! Cursors and schemas are *versioned objects* (`…/00000007.json`): a writer
//! creates version n+1 with a create-only put. If another run created it first,
//! the write fails with [`StateError::Conflict`] instead of silently overwriting
//! that run's progress. This works on every object store and needs no coordinator.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;

use crate::lake::{Lake, LakeError};
use crate::run::RunRecord;
use crate::schema::TableSchema;

/// Checkpoints deleted at once after a shard's publish.
const CHECKPOINTS_DELETED_AT_ONCE: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("state object {path} is corrupt: {message}")]
    Corrupt { path: String, message: String },
    #[error("{what} was changed by another run ({path} already exists); re-run to continue from its state")]
    Conflict { what: String, path: String },
    #[error("the lake's state was written in format {found} by a newer sluice; this one reads formats up to {LAKE_FORMAT}: upgrade sluice ({path})")]
    NewerFormat { found: u64, path: String },
}

/// The layout and encoding of everything sluice writes to a lake. Raised when a change
/// would make an older sluice misread a lake; a lake records the format it was written
/// in (`_state/<pipeline>/format.json`), so an older binary refuses it instead.
pub const LAKE_FORMAT: u64 = 1;

/// One version of a versioned state object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Versioned<T> {
    pub version: u64,
    pub run_id: String,
    pub written_at: chrono::DateTime<chrono::Utc>,
    pub value: T,
}

/// A schema version as recorded in the registry.
pub type SchemaVersion = Versioned<TableSchema>;

/// A finished slice of a run that did not publish: its staged files can be reused
/// by the next run that plans the same slice, instead of reading the source again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SliceCheckpoint {
    pub slice_key: String,
    pub run_id: String,
    pub rows: u64,
    /// Staged Parquet files: (`dt`, lake path).
    pub files: Vec<(String, String)>,
    /// Records the slice quarantined: (origin page, line, reason, raw).
    pub rejected: Vec<(String, u64, String, String)>,
    /// The cursor the slice reported ([`crate::source::PageSink::cursor_reached`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<serde_json::Value>,
}

#[derive(Clone, Debug)]
pub struct StateStore {
    lake: Lake,
    prefix: String,
}

impl StateStore {
    pub fn new(lake: Lake, pipeline: &str) -> Self {
        StateStore {
            lake,
            prefix: crate::lake::layout::state(pipeline),
        }
    }

    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    async fn latest<T: DeserializeOwned>(
        &self,
        dir: &str,
    ) -> Result<Option<Versioned<T>>, StateError> {
        let objects = self.lake.list(dir).await?;
        let Some(last) = objects.iter().rev().find(|o| o.path.ends_with(".json")) else {
            return Ok(None);
        };
        self.read_json(&last.path).await
    }

    async fn history<T: DeserializeOwned>(
        &self,
        dir: &str,
    ) -> Result<Vec<Versioned<T>>, StateError> {
        let mut out = Vec::new();
        for object in self.lake.list(dir).await? {
            if let Some(v) = self.read_json(&object.path).await? {
                out.push(v);
            }
        }
        Ok(out)
    }

    async fn read_json<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, StateError> {
        let Some(bytes) = self.lake.get(path).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path: path.to_string(),
                message: e.to_string(),
            })
    }

    /// Writes version `previous + 1`, failing if another writer got there first.
    async fn put_next<T: Serialize>(
        &self,
        dir: &str,
        what: &str,
        previous: Option<u64>,
        run_id: &str,
        value: T,
    ) -> Result<u64, StateError> {
        let version = previous.unwrap_or(0) + 1;
        let path = format!("{dir}/{version:010}.json");
        let record = Versioned {
            version,
            run_id: run_id.to_string(),
            written_at: chrono::Utc::now(),
            value,
        };
        let text = serde_json::to_vec_pretty(&record).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if self.lake.put_new(&path, Bytes::from(text)).await? {
            Ok(version)
        } else {
            Err(StateError::Conflict {
                what: what.to_string(),
                path,
            })
        }
    }

    fn cursor_dir(&self, source: &str, stream: &str) -> String {
        format!("{}/cursors/{source}/{stream}", self.prefix)
    }

    /// The stream's latest cursor.
    pub async fn cursor(
        &self,
        source: &str,
        stream: &str,
    ) -> Result<Option<Versioned<Value>>, StateError> {
        self.latest(&self.cursor_dir(source, stream)).await
    }

    /// Stores a new cursor; `previous` is the version this run started from.
    pub async fn save_cursor(
        &self,
        source: &str,
        stream: &str,
        previous: Option<u64>,
        run_id: &str,
        cursor: Value,
    ) -> Result<u64, StateError> {
        let dir = self.cursor_dir(source, stream);
        self.put_next(
            &dir,
            &format!("the cursor of {source}.{stream}"),
            previous,
            run_id,
            cursor,
        )
        .await
    }

    fn schema_dir(&self, table: &str) -> String {
        format!("{}/schemas/{table}", self.prefix)
    }

    pub async fn schema(&self, table: &str) -> Result<Option<SchemaVersion>, StateError> {
        self.latest(&self.schema_dir(table)).await
    }

    pub async fn schema_history(&self, table: &str) -> Result<Vec<SchemaVersion>, StateError> {
        self.history(&self.schema_dir(table)).await
    }

    pub async fn save_schema(
        &self,
        table: &str,
        previous: Option<u64>,
        run_id: &str,
        schema: &TableSchema,
    ) -> Result<u64, StateError> {
        let dir = self.schema_dir(table);
        self.put_next(
            &dir,
            &format!("the schema of {table}"),
            previous,
            run_id,
            schema,
        )
        .await
    }

    fn checkpoint_path(&self, table: &str, slice_key: &str) -> String {
        use sha2::{Digest, Sha256};
        let digest = hex::encode(&Sha256::digest(slice_key.as_bytes())[..12]);
        format!("{}/checkpoints/{table}/{digest}.json", self.prefix)
    }

    /// The checkpoint of a slice finished by an earlier run that did not publish.
    pub async fn checkpoint(
        &self,
        table: &str,
        slice_key: &str,
    ) -> Result<Option<SliceCheckpoint>, StateError> {
        let found: Option<SliceCheckpoint> = self
            .read_json(&self.checkpoint_path(table, slice_key))
            .await?;
        Ok(found.filter(|c| c.slice_key == slice_key))
    }

    pub async fn save_checkpoint(
        &self,
        table: &str,
        checkpoint: &SliceCheckpoint,
    ) -> Result<(), StateError> {
        let path = self.checkpoint_path(table, &checkpoint.slice_key);
        let text = serde_json::to_vec(checkpoint).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        self.lake
            .put(
                &path,
                Bytes::from(crate::secret::redact(&String::from_utf8_lossy(&text))),
            )
            .await?;
        Ok(())
    }

    /// Forgets the checkpoints of these slices of a table (after a shard published
    /// them): the round's other shards, still reading, keep theirs.
    pub async fn clear_slice_checkpoints<'k>(
        &self,
        table: &str,
        slice_keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<(), StateError> {
        // A few at once: on S3 each delete is a round trip, and a shard may have thousands.
        let paths: Vec<String> = slice_keys
            .into_iter()
            .map(|key| self.checkpoint_path(table, key))
            .collect();
        futures::stream::iter(paths.iter().map(|path| self.lake.delete(path)))
            .buffer_unordered(CHECKPOINTS_DELETED_AT_ONCE)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Forgets every checkpoint of a table (after its data was published).
    pub async fn clear_checkpoints(&self, table: &str) -> Result<(), StateError> {
        for object in self
            .lake
            .list(&format!("{}/checkpoints/{table}", self.prefix))
            .await?
        {
            self.lake.delete(&object.path).await?;
        }
        Ok(())
    }

    /// Records the lake format on first use (create-only) and refuses a lake written
    /// in a newer one. Called before a run writes anything.
    pub async fn check_format(&self) -> Result<(), StateError> {
        let path = format!("{}/format.json", self.prefix);
        let mine = Bytes::from(serde_json::json!({ "lake_format": LAKE_FORMAT }).to_string());
        if self.lake.put_new(&path, mine).await? {
            return Ok(());
        }
        let text = self.lake.get(&path).await?.unwrap_or_default();
        let found = serde_json::from_slice::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["lake_format"].as_u64())
            .ok_or_else(|| StateError::Corrupt {
                path: path.clone(),
                message: "no `lake_format` number".into(),
            })?;
        if found > LAKE_FORMAT {
            return Err(StateError::NewerFormat { found, path });
        }
        Ok(())
    }

    fn run_path(&self, run_id: &str) -> String {
        format!("{}/runs/{run_id}.json", self.prefix)
    }

    /// Writes (or rewrites) a run's record, with secrets redacted.
    pub async fn save_run(&self, record: &RunRecord) -> Result<(), StateError> {
        let path = self.run_path(&record.run_id);
        let text = serde_json::to_string_pretty(record).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let text = crate::secret::redact(&text);
        self.lake.put(&path, Bytes::from(text)).await?;
        Ok(())
    }

    fn run_log_path(&self, run_id: &str) -> String {
        format!("{}/run_logs/{run_id}.log", self.prefix)
    }

    /// Writes a run's log (already redacted by whoever captured it; redacted again).
    pub async fn save_run_log(&self, run_id: &str, log: &str) -> Result<(), StateError> {
        let text = crate::secret::redact(log);
        self.lake
            .put(&self.run_log_path(run_id), Bytes::from(text))
            .await?;
        Ok(())
    }

    /// A run's log, if it was kept (runs before logs were kept have none).
    pub async fn run_log(&self, run_id: &str) -> Result<Option<String>, StateError> {
        let path = self.run_log_path(run_id);
        match self.lake.get(&path).await? {
            Some(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            None => Ok(None),
        }
    }

    pub async fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StateError> {
        self.read_json(&self.run_path(run_id)).await
    }

    /// All run records, oldest first (run ids sort by start time).
    pub async fn runs(&self) -> Result<Vec<RunRecord>, StateError> {
        let mut out = Vec::new();
        for object in self.lake.list(&format!("{}/runs", self.prefix)).await? {
            if let Some(run) = self.read_json::<RunRecord>(&object.path).await? {
                out.push(run);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lake_in_a_newer_format_is_refused_and_the_current_one_is_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open("lake", dir.path()).unwrap();
        let state = StateStore::new(lake.clone(), "p");
        state.check_format().await.unwrap();
        state.check_format().await.unwrap();
        let recorded = lake.get("_state/p/format.json").await.unwrap().unwrap();
        assert_eq!(recorded, format!("{{\"lake_format\":{LAKE_FORMAT}}}"));

        lake.put(
            "_state/p/format.json",
            Bytes::from(format!("{{\"lake_format\":{}}}", LAKE_FORMAT + 1)),
        )
        .await
        .unwrap();
        let err = state.check_format().await.unwrap_err();
        assert!(matches!(err, StateError::NewerFormat { .. }), "{err}");
        assert!(err.to_string().contains("upgrade sluice"), "{err}");
    }

    #[tokio::test]
    async fn second_writer_of_the_same_cursor_version_gets_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateStore::new(Lake::open("lake", dir.path()).unwrap(), "p");
        assert!(state.cursor("s", "t").await.unwrap().is_none());
        let v = state
            .save_cursor("s", "t", None, "r1", serde_json::json!({"a": 1}))
            .await
            .unwrap();
        assert_eq!(v, 1);
        // A second run that also started from "no cursor" must not overwrite run 1's progress.
        let err = state
            .save_cursor("s", "t", None, "r2", serde_json::json!({"a": 2}))
            .await
            .unwrap_err();
        assert!(matches!(err, StateError::Conflict { .. }), "{err}");
        state
            .save_cursor("s", "t", Some(1), "r2", serde_json::json!({"a": 3}))
            .await
            .unwrap();
        let latest = state.cursor("s", "t").await.unwrap().unwrap();
        assert_eq!(
            (latest.version, latest.value),
            (2, serde_json::json!({"a": 3}))
        );
    }
}
