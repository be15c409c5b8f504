//! Publishing a stream's staged files: one destination transaction (retried with
//! back-off, dropped on cancel = rolled back), then promotion of the staged files
//! into the lake's D1 table.
//!
//! Staged files are read back in order, a few ahead, and conformed to the stream's
//! final schema (columns that appeared mid-run are null in earlier files), so a
//! load's memory is bounded by a few files, not by the stream.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use sha2::{Digest, Sha256};

use super::live_load::{joined_load, LiveLoad, LiveLoadTask};
use super::{Counters, Executor, RunOptions, TaskFailure};
use crate::destination::{DestinationError, LoadOutcome, LoadTail, TableSpec, WriteMode};
use crate::lake::{layout, LakeError};
use crate::publish::{KeptBatches, StagedLoad};
use crate::run::TaskRecord;
use crate::schema::TableSchema;
use crate::shard::RunPart;
use crate::typing::Rejected;

/// A run still `running` after this long was killed (kill -9 leaves no record of its
/// end): its staged files are leftovers, not a live run's.
const LIVE_RUN_HORIZON: chrono::Duration = chrono::Duration::hours(24);

/// Staged files promoted into the D1 table at once.
const FILES_RENAMED_AT_ONCE: usize = 8;

/// A Parquet file staged by a finished slice.
#[derive(Debug, Clone)]
pub(super) struct StagedFile {
    /// The slice's index in the plan: files load in plan order.
    pub(super) slice: usize,
    pub(super) dt: String,
    pub(super) path: String,
}

/// A stream's extraction, ready to publish.
pub(super) struct Staged<'a> {
    /// The table as the load started (the live load's shape).
    pub(super) spec: &'a TableSpec,
    /// The stream's schema after every slice: the shape the staged load publishes.
    pub(super) schema: &'a TableSchema,
    /// In plan order.
    pub(super) files: &'a [StagedFile],
    /// Batches of those files still in memory (not read back).
    pub(super) kept: &'a KeptBatches,
    pub(super) rejected: &'a [Rejected],
    pub(super) load_id: &'a str,
    /// The slices this run read (or resumed): their checkpoints go at publish.
    pub(super) slices: &'a [crate::source::Slice],
}

impl Executor {
    /// Publishes a stream: through the live load when it carried every row in the
    /// final shape, else from the staged files; then promotes the files into the
    /// lake's D1 table and drops the checkpoints the publish made obsolete.
    pub(super) async fn publish_stream(
        &self,
        staged: Staged<'_>,
        live: Option<LiveLoadTask>,
        live_load: &LiveLoad,
        options: &RunOptions,
        counters: &Counters,
        record: &mut TaskRecord,
    ) -> Result<(), TaskFailure> {
        let partitions: BTreeSet<String> = staged.files.iter().map(|f| f.dt.clone()).collect();
        let partitions: Vec<String> = partitions.into_iter().collect();
        let table = &staged.spec.name;
        let mut outcome = None;
        match live {
            // Registry knowledge (which fields are optional) does not change the table.
            Some(load)
                if live_load.is_live() && staged.schema.fields == staged.spec.schema.fields =>
            {
                live_load.finish(LoadTail {
                    quarantine: staged.rejected.to_vec(),
                    partitions: partitions.clone(),
                    fence: self.fence(options),
                });
                // A cancel drops the load (it may wait on a locked destination), which
                // rolls its transaction back, as a staged load's does.
                let joined = tokio::select! {
                    joined = load => joined,
                    () = options.cancel.cancelled() => return Err(TaskFailure::Cancelled),
                };
                match joined_load(joined) {
                    Ok(done) => {
                        tracing::debug!(table = %table, "published the load that streamed during the extraction");
                        outcome = Some(done)
                    }
                    Err(e) => {
                        tracing::warn!(table = %table, error = %e, "live load failed; loading from staged files")
                    }
                }
            }
            // Dropping the load rolls its transaction back.
            other => drop(other),
        }
        let spec = TableSpec {
            schema: staged.schema.clone(),
            ..staged.spec.clone()
        };
        let outcome = match outcome {
            Some(outcome) => outcome,
            None => {
                tracing::debug!(table = %table, "publishing from the staged files");
                self.load_with_retries(
                    &spec,
                    staged.files,
                    Some(staged.kept),
                    staged.rejected,
                    &partitions,
                    staged.load_id,
                    options,
                    counters,
                )
                .await?
            }
        };
        record.rows_loaded = outcome.rows_loaded;
        record.rows_replaced = outcome.rows_replaced;
        record.rows_quarantined = staged.rejected.len() as u64;
        record.partitions = partitions.clone();
        for r in staged.rejected.iter().take(5) {
            record.warnings.push(crate::secret::redact(&format!(
                "quarantined {}: {}",
                r.origin, r.reason
            )));
        }
        if staged.rejected.len() > 5 {
            record.warnings.push(format!(
                "… and {} more quarantined records",
                staged.rejected.len() - 5
            ));
        }

        // The quarantine in the lake too: `sluice query` reads it whatever the destination.
        crate::quarantine::write(&self.lake, "d1", table, &options.run_id, staged.rejected).await?;

        // Promote staged files into the D1 table in the lake. Appended files are
        // named by load id: promoting the same input again (a run repeated after a
        // kill between publish and state) replaces them instead of adding a copy.
        let file_prefix = match spec.write_mode {
            WriteMode::Append => staged.load_id,
            _ => options.run_id.as_str(),
        };
        // A shard's partition overwrite keeps the files the round's other shards promoted.
        let keep = match &options.part {
            RunPart::Shard(run) if spec.write_mode == WriteMode::OverwritePartitions => {
                run.ledger.other_shards_runs(&run.round, run.shard).await?
            }
            _ => BTreeSet::new(),
        };
        self.promote(
            table,
            spec.write_mode,
            staged.files,
            &partitions,
            file_prefix,
            &keep,
        )
        .await?;

        // Checkpoints and leftovers of earlier, unpublished runs are now obsolete; a
        // shard's only for its own slices (the other shards may still resume theirs).
        match &options.part {
            RunPart::Shard(_) => {
                self.state
                    .clear_slice_checkpoints(table, staged.slices.iter().map(|s| s.key.as_str()))
                    .await?
            }
            _ => self.state.clear_checkpoints(table).await?,
        }
        self.remove_leftovers(table, &options.run_id).await?;
        Ok(())
    }

    /// Deletes staged files of `table` left by runs that ended without publishing
    /// them. Files of another run that is still going (another process on the same
    /// pipeline: a second pod, a shard) are its own and stay.
    async fn remove_leftovers(&self, table: &str, run_id: &str) -> Result<(), TaskFailure> {
        // Run by run, and only this table's folder: `_staging/` also holds the files of
        // the round's other shards, thousands of them while they publish.
        for owner in self.lake.folders("_staging/").await? {
            if owner == run_id {
                continue;
            }
            let leftovers = self
                .lake
                .list(&format!(
                    "{}/{table}/",
                    crate::lake::layout::staging(&owner)
                ))
                .await?;
            if leftovers.is_empty() {
                continue;
            }
            let running = self.state.run(&owner).await?.is_some_and(|run| {
                run.status == crate::run::RunStatus::Running
                    && chrono::Utc::now() - run.started_at < LIVE_RUN_HORIZON
            });
            if running {
                continue;
            }
            for object in leftovers {
                self.lake.delete(&object.path).await?;
            }
        }
        Ok(())
    }

    /// Publishes the staged files in one destination transaction, retrying transient
    /// failures with back-off; a cancel drops the load (its transaction rolls back).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn load_with_retries(
        &self,
        spec: &TableSpec,
        staged: &[StagedFile],
        kept: Option<&KeptBatches>,
        rejected: &[Rejected],
        partitions: &[String],
        load_id: &str,
        options: &RunOptions,
        counters: &Counters,
    ) -> Result<LoadOutcome, TaskFailure> {
        let files: Vec<String> = staged.iter().map(|f| f.path.clone()).collect();
        let tail = LoadTail {
            quarantine: rejected.to_vec(),
            partitions: partitions.to_vec(),
            fence: self.fence(options),
        };
        let on_retry = |e: &DestinationError, delay: std::time::Duration| {
            counters.retries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(table = %spec.qualified_name(), error = %e, ?delay, "load failed; retrying");
        };
        crate::publish::load_staged(
            self.destination.as_ref(),
            &self.lake,
            StagedLoad {
                spec,
                files: &files,
                kept,
                tail: &tail,
                load_id,
                run_id: &options.run_id,
            },
            &self.execution,
            &options.cancel,
            &on_retry,
        )
        .await
        .map_err(|e| match e {
            DestinationError::Cancelled { .. } => TaskFailure::Cancelled,
            e => TaskFailure::Destination(e),
        })
    }

    /// Moves this run's staged files into `d1/<table>/dt=…/<file_prefix>-NNNNN.parquet`
    /// and removes what they replace (every file of those folders not named by
    /// `file_prefix`, the run id of a replacing load, nor by one of the run ids in `keep`).
    pub(super) async fn promote(
        &self,
        table: &str,
        mode: WriteMode,
        staged: &[StagedFile],
        partitions: &[String],
        file_prefix: &str,
        keep: &BTreeSet<String>,
    ) -> Result<(), LakeError> {
        let run_id = file_prefix;
        let store = self.lake.store();
        let store = &store;
        // Renamed several at once: on S3 a rename is a copy and a delete.
        futures::stream::iter(staged.iter().enumerate())
            .map(|(n, file)| async move {
                let target = format!(
                    "{}{run_id}-{n:05}.parquet",
                    layout::table_partition("d1", table, &file.dt)
                );
                store
                    .rename(
                        &self.lake.object_path(&file.path),
                        &self.lake.object_path(&target),
                    )
                    .await
                    .map_err(|source| LakeError::Store {
                        path: target,
                        source,
                    })
            })
            .buffer_unordered(FILES_RENAMED_AT_ONCE)
            .try_collect::<Vec<()>>()
            .await?;
        let prefixes: Vec<String> = match mode {
            WriteMode::Replace => vec![format!("{}/", layout::table("d1", table))],
            WriteMode::OverwritePartitions => partitions
                .iter()
                .map(|dt| layout::table_partition("d1", table, dt))
                .collect(),
            WriteMode::Append | WriteMode::Merge => Vec::new(),
        };
        for prefix in prefixes {
            for object in self.lake.list(&prefix).await? {
                let file = object.path.rsplit('/').next().unwrap_or_default();
                let kept = file.starts_with(run_id)
                    || keep.iter().any(|run| file.starts_with(&format!("{run}-")));
                if !kept {
                    self.lake.delete(&object.path).await?;
                }
            }
        }
        Ok(())
    }
}

/// A load id for appended input: the same slices of the same table give the same id.
pub(super) fn digest<'a>(table: &str, keys: impl Iterator<Item = &'a str>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(table.as_bytes());
    for key in keys {
        hasher.update([0]);
        hasher.update(key.as_bytes());
    }
    hex::encode(&hasher.finalize()[..16])
}
