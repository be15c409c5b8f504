//! A client's cap on requests in flight, with the requests that finish work served
//! first.
//!
//! Requests come in three kinds ([`Urgency`]): one that continues started work (an
//! async report run's poll or results, a listing's or a CleverTap cursor's next page,
//! a count being polled) goes first, then one
//! that starts a long job (an async report run submitted, which the API then computes
//! for a while), then any other (a listing's first page, a lookup). Started work so
//! finishes sooner, and long jobs start early enough for the one-request work to fill
//! the time they take instead of delaying them. Any kind takes a slot no more urgent
//! request waits for, so the cap stays fully used; and a job has few polls and pages,
//! so other requests wait for the work in progress, never for ever.
//!
//! The slots are a priority semaphore: the most urgent waiting request takes the next
//! free one, and requests of one urgency take them in the order they asked.

use std::sync::Arc;

use priority_semaphore::{AcquireError, Permit, PrioritySemaphore};

/// How soon a request should take a free slot (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Urgency {
    /// A listing's first page, a lookup: anything that neither continues nor starts a job.
    #[default]
    Other,
    /// Starts a long job: an async report run submitted.
    StartsJob,
    /// Continues started work: a report run's poll or results, a next page, a poll.
    Continues,
}

impl Urgency {
    fn priority(self) -> i32 {
        match self {
            Urgency::Other => 0,
            Urgency::StartsJob => 1,
            Urgency::Continues => 2,
        }
    }
}

/// At most `n` requests in flight, the most urgent first (see the module doc).
#[derive(Clone)]
pub struct InFlight {
    slots: Arc<PrioritySemaphore>,
}

impl InFlight {
    pub fn new(n: usize) -> Self {
        InFlight {
            slots: Arc::new(PrioritySemaphore::new(n.max(1))),
        }
    }

    /// Waits for a slot; the request is in flight while the permit lives.
    pub async fn acquire(&self, urgency: Urgency) -> Result<Permit, AcquireError> {
        self.slots.acquire(urgency.priority()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// One slot, held; requests queue in the order listed, each once the one before
    /// waits. They take the slot the most urgent first, in the order they asked within
    /// one urgency.
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
            ["poll", "job 1", "job 2", "other 1", "other 2"]
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
