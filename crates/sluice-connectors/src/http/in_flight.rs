//! A client's cap on requests in flight, with the requests that finish work served
//! first.
//!
//! Requests come in three kinds ([`Urgency`]): one that continues started work (an
//! async report run's poll or results, a listing's next page) goes first, then one
//! that starts a long job (an async report run submitted, which the API then computes
//! for a while), then any other (a listing's first page, a lookup). Started work so
//! finishes sooner, and long jobs start early enough for the one-request work to fill
//! the time they take instead of delaying them. Any kind takes a slot no more urgent
//! request waits for, so the cap stays fully used.
//!
//! How: the slots are first come, first served. Less urgent requests first line up
//! for a one-permit gate per kind (the other kind's gate, then the job starters'), so
//! at most one of them at a time waits among the more urgent ones.

use std::sync::Arc;

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// How soon a request should take a free slot (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Urgency {
    /// A listing's first page, a lookup: anything that neither continues nor starts a job.
    #[default]
    Other,
    /// Starts a long job: an async report run submitted.
    StartsJob,
    /// Continues started work: a report run's poll or results, a next page.
    Continues,
}

/// At most `n` requests in flight, the most urgent first (see the module doc).
#[derive(Clone)]
pub struct InFlight {
    slots: Arc<Semaphore>,
    job_starts: Arc<Semaphore>,
    others: Arc<Semaphore>,
}

impl InFlight {
    pub fn new(n: usize) -> Self {
        InFlight {
            slots: Arc::new(Semaphore::new(n.max(1))),
            job_starts: Arc::new(Semaphore::new(1)),
            others: Arc::new(Semaphore::new(1)),
        }
    }

    /// Waits for a slot; the request is in flight while the permit lives.
    pub async fn acquire(&self, urgency: Urgency) -> Result<OwnedSemaphorePermit, AcquireError> {
        let _other_turn = match urgency {
            Urgency::Other => Some(self.others.acquire().await?),
            _ => None,
        };
        let _job_turn = match urgency {
            Urgency::Other | Urgency::StartsJob => Some(self.job_starts.acquire().await?),
            Urgency::Continues => None,
        };
        self.slots.clone().acquire_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// One slot, held; requests queue in the order listed, each once the one before
    /// waits. The first (`other 1`) already waits for the slot itself, so it goes
    /// first; after it, the continuation, the job starts, then the other request.
    #[tokio::test]
    async fn the_most_urgent_waiting_request_takes_the_next_free_slot() {
        let limit = InFlight::new(1);
        let held = limit.acquire(Urgency::Other).await.unwrap();
        let started = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for (name, urgency) in [
            ("other 1", Urgency::Other),
            ("other 2", Urgency::Other),
            ("job 1", Urgency::StartsJob),
            ("job 2", Urgency::StartsJob),
            ("poll", Urgency::Continues),
        ] {
            let (limit, started) = (limit.clone(), started.clone());
            waiters.push(tokio::spawn(async move {
                let _slot = limit.acquire(urgency).await.unwrap();
                started.lock().unwrap().push(name);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(held);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(
            *started.lock().unwrap(),
            ["other 1", "poll", "job 1", "job 2", "other 2"]
        );
    }

    /// With nothing more urgent waiting, any request takes every free slot.
    #[tokio::test]
    async fn requests_of_one_kind_fill_every_slot() {
        let limit = InFlight::new(3);
        let mut permits = Vec::new();
        for _ in 0..3 {
            permits.push(
                tokio::time::timeout(Duration::from_secs(1), limit.acquire(Urgency::Other))
                    .await
                    .expect("a free slot is taken at once")
                    .unwrap(),
            );
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(50), limit.acquire(Urgency::Continues))
                .await
                .is_err(),
            "a fourth request waits"
        );
    }
}
