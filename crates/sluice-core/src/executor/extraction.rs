//! Extracting one stream: its slices read in parallel within the source's budget,
//! each retried whole, while the live load (if any) takes their batches.
//!
//! [`Extraction`] is what the slices of one stream share while they run: the
//! growing schema, the files they staged, the records they rejected. Each attempt
//! at a slice gets its own [`SliceSink`] over it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::live_load::{joined_load, LiveLoad, LiveLoadTask};
use super::publish::StagedFile;
use super::slice_sink::SliceSink;
use super::{Counters, Executor, TaskFailure};
use crate::drift::StreamSchema;
use crate::lake::Lake;
use crate::plan::StreamTask;
use crate::source::{RunWindow, Slice, SourceError, StreamSpec};
use crate::state::StateStore;
use crate::typing::Rejected;

/// What the slices of one stream share during a run.
pub(super) struct Extraction<'a> {
    pub(super) lake: &'a Lake,
    pub(super) state: &'a StateStore,
    pub(super) run_id: &'a str,
    /// The source's name: the first folder of the stream's raw pages.
    pub(super) source: &'a str,
    pub(super) stream: &'a StreamSpec,
    pub(super) window: &'a RunWindow,
    pub(super) cancel: &'a CancellationToken,
    pub(super) schema: Mutex<StreamSchema>,
    /// old column → the new name the source sends (`schema.renames`).
    pub(super) renames: &'a BTreeMap<String, String>,
    pub(super) counters: &'a Counters,
    /// Files of the finished slices (and of slices resumed from a checkpoint).
    pub(super) staged: Mutex<Vec<StagedFile>>,
    /// What this run wrote to its staged files, while it fits in memory.
    pub(super) kept: crate::publish::KeptBatches,
    /// Records of the finished slices that go to quarantine.
    pub(super) rejected: Mutex<Vec<Rejected>>,
    /// Cursors the finished slices reported, by slice index.
    pub(super) cursors: Mutex<BTreeMap<usize, serde_json::Value>>,
    pub(super) live_load: &'a LiveLoad,
}

impl Executor {
    /// Reads every slice of `slices`; returns the live load's task if it is still
    /// running when the last slice is done (a load that ends early is dropped).
    pub(super) async fn extract_slices(
        &self,
        task: &StreamTask,
        slices: &[Slice],
        budget: &Arc<Semaphore>,
        extraction: &Extraction<'_>,
        mut live: Option<LiveLoadTask>,
    ) -> Result<Option<LiveLoadTask>, TaskFailure> {
        let name = task.name();
        let reads = futures::stream::iter(slices.iter().enumerate())
            .map(|(index, slice)| {
                let name = &name;
                async move {
                    let _permit = budget.acquire().await.expect("semaphore never closed");
                    if extraction.cancel.is_cancelled() {
                        return Err(TaskFailure::Cancelled);
                    }
                    if self.resume_slice(extraction, index, &slice.key).await {
                        // Its rows are in an earlier run's files, not in the live load.
                        extraction.live_load.abort();
                        self.observer.slice_finished(name, 0);
                        return Ok(());
                    }
                    self.record_slice(extraction, index, slice).await?;
                    let rows = self.read_slice(task, extraction, index, slice).await?;
                    self.observer.slice_finished(name, rows);
                    Ok(())
                }
            })
            .buffer_unordered(task.source.max_concurrency().max(1))
            .collect::<Vec<Result<(), TaskFailure>>>();
        // The slices run here while the load task takes their batches; a load that
        // ends before the extraction does is noticed at once.
        let mut reads = Box::pin(reads);
        let results = loop {
            let Some(load) = live.as_mut() else {
                break (&mut reads).await;
            };
            tokio::select! {
                results = &mut reads => break results,
                outcome = load => {
                    // Before the tail was sent, the load can only end early: the
                    // ledger already has this load, it failed, or it was called off
                    // (a new column, a resumed slice: expected, not worth a warning).
                    // The staged load decides.
                    if let Err(e) = joined_load(outcome) {
                        if extraction.live_load.is_live() {
                            tracing::warn!(table = %task.stream.table, error = %e, "live load stopped; loading from staged files");
                        } else {
                            tracing::debug!(table = %task.stream.table, error = %e, "live load called off; loading from staged files");
                        }
                    }
                    extraction.live_load.abort();
                    live = None;
                }
            }
        };
        drop(reads);
        for result in results {
            result?;
        }
        if extraction.cancel.is_cancelled() {
            return Err(TaskFailure::Cancelled);
        }
        Ok(live)
    }

    /// Reads one slice, retrying the whole slice on transient errors; each attempt
    /// stages into its own files. Returns the rows it typed.
    async fn read_slice(
        &self,
        task: &StreamTask,
        extraction: &Extraction<'_>,
        index: usize,
        slice: &Slice,
    ) -> Result<u64, TaskFailure> {
        let attempt = AtomicU64::new(0);
        let result = self
            .retry(extraction.counters, extraction.cancel, || async {
                let n = attempt.fetch_add(1, Ordering::Relaxed);
                let mut sink = SliceSink::new(extraction, index, n);
                // A cancelled run stops the read where it waits (a 60 s Retry-After,
                // a pacer, a slow server), not at its next page: the read is dropped.
                let read = tokio::select! {
                    read = task.source.read(&task.stream, slice, &mut sink) => read,
                    () = extraction.cancel.cancelled() => {
                        Err(SourceError::transient("cancelled while waiting on the source"))
                    }
                };
                match read {
                    Ok(()) => sink.finish(&slice.key).await,
                    Err(e) => {
                        sink.discard().await;
                        Err(e)
                    }
                }
            })
            .await;
        match result {
            Ok(rows) => Ok(rows),
            Err(_) if extraction.cancel.is_cancelled() => Err(TaskFailure::Cancelled),
            Err(e) => Err(TaskFailure::Source(SourceError {
                message: format!("slice {}: {}", slice.key, e.message),
                ..e
            })),
        }
    }
}
