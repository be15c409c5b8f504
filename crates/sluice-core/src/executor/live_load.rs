//! A load that runs while the extraction still runs: the executor's end of it.
//!
//! When the destination allows a long transaction (PostgreSQL, SQLite: see
//! `StreamedLoads`), a stream's rows go to the destination as slices flush them, so
//! encoding rows for the destination overlaps the requests and uses another core
//! than typing them. Anything that would make the live rows differ from the staged
//! ones (a failed attempt, a resumed slice, a schema that moved on, a merge's
//! repeated keys) calls the live load off; it then sees its inputs close and rolls
//! back, and the staged load publishes instead.

use std::sync::Mutex;

use arrow::record_batch::RecordBatch;
use futures::StreamExt;

use crate::destination::{DestinationError, LoadBatches, LoadOutcome, LoadTail, TailFuture};

/// Batches in flight to a live load: enough to keep it busy, few enough to bound memory.
const LIVE_BATCHES: usize = 2;

/// Batches go in as slices flush them; the tail (quarantine, partitions) once all
/// is read. Once called off it stays off.
pub(super) struct LiveLoad {
    batches: Mutex<Option<tokio::sync::mpsc::Sender<RecordBatch>>>,
    tail: Mutex<Option<tokio::sync::oneshot::Sender<LoadTail>>>,
}

impl LiveLoad {
    /// A live load with nothing attached: [`LiveLoad::open`] attaches the destination's end.
    pub(super) fn new() -> Self {
        LiveLoad {
            batches: Mutex::new(None),
            tail: Mutex::new(None),
        }
    }

    /// The load's inputs: the batches and the tail.
    pub(super) fn open<'a>(&self) -> (LoadBatches<'a>, TailFuture<'a>) {
        let (batch_tx, batch_rx) = tokio::sync::mpsc::channel(LIVE_BATCHES);
        let (tail_tx, tail_rx) = tokio::sync::oneshot::channel();
        *self.batches.lock().expect("live load lock") = Some(batch_tx);
        *self.tail.lock().expect("live load lock") = Some(tail_tx);
        let batches = futures::stream::unfold(batch_rx, |mut rx| async move {
            rx.recv().await.map(|batch| (Ok(batch), rx))
        });
        let tail = async move {
            tail_rx.await.map_err(|_| DestinationError::Cancelled {
                table: "live load".into(),
            })
        };
        (batches.boxed(), Box::pin(tail))
    }

    /// Whether the load can still publish (opened, not called off, not finished).
    pub(super) fn is_live(&self) -> bool {
        self.tail.lock().expect("live load lock").is_some()
    }

    /// Calls the load off: its inputs close without a tail, so it rolls back.
    pub(super) fn abort(&self) {
        self.batches.lock().expect("live load lock").take();
        self.tail.lock().expect("live load lock").take();
    }

    /// Hands a batch to the load (waiting while it is busy); a load that went away
    /// calls itself off.
    pub(super) async fn send(&self, batch: &RecordBatch) {
        let sender = self.batches.lock().expect("live load lock").clone();
        if let Some(sender) = sender {
            if sender.send(batch.clone()).await.is_err() {
                self.abort();
            }
        }
    }

    /// Every batch is in: end the batches and let the load publish.
    pub(super) fn finish(&self, tail: LoadTail) {
        self.batches.lock().expect("live load lock").take();
        if let Some(sender) = self.tail.lock().expect("live load lock").take() {
            let _ = sender.send(tail);
        }
    }
}

/// The result of a live load's task.
pub(super) fn joined_load(
    joined: Result<Result<LoadOutcome, String>, tokio::task::JoinError>,
) -> Result<LoadOutcome, String> {
    joined.map_err(|e| format!("load task: {e}"))?
}

/// The destination's end of a live load, running as its own task; dropping it
/// aborts the task (its transaction rolls back).
pub(super) type LiveLoadTask = tokio_util::task::AbortOnDropHandle<Result<LoadOutcome, String>>;
