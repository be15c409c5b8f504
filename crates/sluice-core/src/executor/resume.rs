//! Checkpoint and resume: what a run writes so a later run can redo less.
//!
//! Before a slice is read, what it asks the source for is written beside its raw
//! pages (for `sluice replay`). A finished slice writes a checkpoint (its staged
//! files and quarantined records, see `SliceSink::finish`); a later run that finds
//! the checkpoint and all its files reuses the slice instead of reading it again.

use std::sync::atomic::Ordering;

use object_store::ObjectStoreExt;

use super::extraction::Extraction;
use super::publish::StagedFile;
use super::{Executor, TaskFailure};
use crate::source::Slice;
use crate::typing::Rejected;

impl Executor {
    /// Writes what the slice asks the source for beside its raw pages, for replays.
    pub(super) async fn record_slice(
        &self,
        extraction: &Extraction<'_>,
        index: usize,
        slice: &Slice,
    ) -> Result<(), TaskFailure> {
        let path = crate::lake::slice_manifest_path(
            extraction.source,
            &extraction.stream.name,
            extraction.run_id,
            index,
        );
        let body = serde_json::json!({"key": slice.key, "params": slice.params});
        Ok(self
            .lake
            .put(&path, bytes::Bytes::from(body.to_string()))
            .await?)
    }

    /// Reuses a slice an earlier run finished but did not publish (crash, cancel,
    /// another slice failing). True if the slice's staged files were all still there.
    pub(super) async fn resume_slice(
        &self,
        extraction: &Extraction<'_>,
        index: usize,
        key: &str,
    ) -> bool {
        let table = &extraction.stream.table;
        let Ok(Some(checkpoint)) = self.state.checkpoint(table, key).await else {
            return false;
        };
        for (_, path) in &checkpoint.files {
            if self
                .lake
                .store()
                .head(&self.lake.object_path(path))
                .await
                .is_err()
            {
                return false;
            }
        }
        extraction
            .counters
            .rows
            .fetch_add(checkpoint.rows, Ordering::Relaxed);
        extraction.counters.resumed.fetch_add(1, Ordering::Relaxed);
        extraction
            .staged
            .lock()
            .expect("staged lock")
            .extend(checkpoint.files.into_iter().map(|(dt, path)| StagedFile {
                slice: index,
                dt,
                path,
            }));
        if let Some(cursor) = checkpoint.cursor {
            let mut cursors = extraction.cursors.lock().expect("cursors lock");
            cursors.insert(index, cursor);
        }
        extraction.rejected.lock().expect("rejected lock").extend(
            checkpoint
                .rejected
                .into_iter()
                .map(|(page, line, reason, raw)| Rejected {
                    origin: crate::typing::Origin {
                        page: page.into(),
                        line,
                    },
                    reason,
                    raw,
                }),
        );
        tracing::info!(table = %table, slice = %key, "resumed slice from an earlier run's checkpoint");
        true
    }
}
