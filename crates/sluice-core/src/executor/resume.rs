//! Checkpoint and resume: what a run writes so a later run can redo less.
//!
//! Before a slice is read, what it asks the source for is written beside its raw
//! pages (for `sluice replay`). A finished slice writes a checkpoint (its staged
//! files and quarantined records, see `SliceSink::finish`); a later run that finds
//! the checkpoint and all its files reuses the slice instead of reading it again.

use std::sync::atomic::Ordering;

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
    /// another slice failing), with the columns its staged files have. True if the
    /// slice's staged files were all still there and readable.
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
        // The files' own schemas, read before anything is taken from the checkpoint: a
        // file that is gone or unreadable means the slice is read again. Whole files,
        // one at a time, through the lake (an encrypted lake has no readable footer).
        let mut staged_schemas = Vec::with_capacity(checkpoint.files.len());
        for (_, path) in &checkpoint.files {
            let Ok(reader) = crate::lake::parquet_batches(&self.lake, path).await else {
                return false;
            };
            let arrow_schema = arrow::record_batch::RecordBatchReader::schema(&reader);
            let Ok(schema) = crate::schema::TableSchema::from_arrow(&arrow_schema) else {
                return false;
            };
            staged_schemas.push((path.clone(), schema));
        }
        {
            let mut schema = extraction.schema.lock().expect("schema lock");
            for (path, staged) in &staged_schemas {
                schema.adopt_staged(staged, path);
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
