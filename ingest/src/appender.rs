//! Group commit: deliveries that arrive together are appended together, in one statement and
//! one commit, and each is answered only after that commit.
//!
//! Ingest's rate is bounded by PostgreSQL's work per statement and per commit, not by fsync
//! (concurrent commits already share flushes). So at most `database.ingest_concurrent_appends`
//! appends run at once, and a second one starts beside a running one only for a backlog
//! ([`starts_now`]); deliveries that arrive meanwhile wait and go out as the next batch. When
//! the load is light every delivery goes alone, with no added latency.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use kommo_pay_core::event_log::{self, NewEvent};
use kommo_pay_core::queue::{NewJob, Waker};
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

use crate::error::refuses_data;
use crate::{Accepted, IngestError};

/// The most events in one statement.
const MAX_BATCH_EVENTS: usize = 256;

/// While an append runs, another starts only for a batch at least this large ([`starts_now`]).
const BACKLOG_EVENTS: usize = 4;

/// Whether a batch of `events` goes out now, with `running` of `slots` appends under way.
///
/// A statement costs PostgreSQL a fixed part (starting the executor, checking constraints,
/// opening indexes, committing) of about what four events' rows cost, so a second statement
/// beside a running one pays only for a backlog; a smaller batch waits for the running append
/// and grows meanwhile. Measured (README): at 8 concurrent clients on 2 cores, batches grew from
/// 2.4 to 3.5 events and throughput rose by a fifth.
fn starts_now(running: usize, slots: usize, events: usize) -> bool {
    running == 0 || (running < slots && events >= BACKLOG_EVENTS)
}

/// Deliveries waiting to go out together.
#[derive(Default)]
struct Batch {
    pending: Vec<Pending>,
}

impl Batch {
    /// The events of all its deliveries (a batch holds a few hundred at most).
    fn events(&self) -> usize {
        self.pending.iter().map(Pending::weight).sum()
    }

    /// Drops the deliveries already answered 503 (their deadline passed while they waited):
    /// during an outage the backlog would otherwise go on taking the database's time.
    fn forget_abandoned(&mut self) {
        self.pending.retain(|pending| !pending.reply.is_closed());
    }
}

struct Pending {
    events: Vec<NewEvent>,
    jobs: Vec<NewJob>,
    reply: oneshot::Sender<Result<Accepted, IngestError>>,
}

impl Pending {
    /// What a delivery counts for in a batch: its events.
    fn weight(&self) -> usize {
        self.events.len()
    }
}

#[derive(Clone)]
pub(crate) struct Appender {
    queue: mpsc::Sender<Pending>,
    /// How long a delivery may wait for its commit before it is answered 503: the database's
    /// `acquire_timeout`, counted from the delivery's arrival, whatever it waits on (a queue
    /// behind running appends, a connection, the statement). Kommo counts an answer after 2 s
    /// as a failure and disables the hook after 100 of them.
    deadline: Duration,
}

impl Appender {
    pub(crate) fn spawn(pool: PgPool, waker: Waker, concurrent_appends: usize, deadline: Duration) -> Appender {
        let (queue, mut incoming) = mpsc::channel::<Pending>(4096);
        let slots = Arc::new(Semaphore::new(concurrent_appends));
        let finished = Arc::new(Notify::new());
        tokio::spawn(async move {
            let mut batch = Batch::default();
            loop {
                if batch.pending.is_empty() {
                    match incoming.recv().await {
                        Some(first) => batch.pending.push(first),
                        None => return,
                    }
                }
                kommo_pay_core::batching::fill_weighed(&mut batch.pending, &mut incoming, MAX_BATCH_EVENTS, Pending::weight);
                batch.forget_abandoned();
                if batch.pending.is_empty() {
                    continue;
                }
                let running = concurrent_appends - slots.available_permits();
                if starts_now(running, concurrent_appends, batch.events()) {
                    let slot = slots.clone().try_acquire_owned().expect("a slot is free");
                    let (pool, waker, finished) = (pool.clone(), waker.clone(), finished.clone());
                    let out = std::mem::take(&mut batch);
                    tokio::spawn(async move {
                        write(&pool, &waker, out.pending).await;
                        drop(slot);
                        finished.notify_one();
                    });
                    continue;
                }
                // Wait for a running append to finish, or for more deliveries to join this batch.
                tokio::select! {
                    _ = finished.notified() => {}
                    next = incoming.recv(), if batch.events() < MAX_BATCH_EVENTS => match next {
                        Some(next) => batch.pending.push(next),
                        None => finished.notified().await,
                    },
                }
            }
        });
        Appender { queue, deadline }
    }

    /// Appends `events` and `jobs` (which name their events) and returns once they are committed,
    /// or with 503 once the deadline has passed. A delivery answered 503 may still be committed
    /// by an append already under way: that is safe, the provider's retry is then a duplicate.
    pub(crate) async fn append(&self, events: Vec<NewEvent>, jobs: Vec<NewJob>) -> Result<Accepted, IngestError> {
        let committed = async {
            let (reply, answer) = oneshot::channel();
            self.queue.send(Pending { events, jobs, reply }).await.map_err(|_| IngestError::Stopping)?;
            answer.await.map_err(|_| IngestError::Stopping)?
        };
        match tokio::time::timeout(self.deadline, committed).await {
            Ok(outcome) => outcome,
            Err(_) => Err(IngestError::Unavailable(format!("not committed within {:?}", self.deadline))),
        }
    }
}

async fn write(pool: &PgPool, waker: &Waker, batch: Vec<Pending>) {
    if batch.len() == 1 {
        let pending = batch.into_iter().next().expect("one");
        let outcome = append_one(pool, waker, &pending.events, &pending.jobs).await;
        let _ = pending.reply.send(outcome);
        return;
    }
    // One statement for all: the deliveries' events and jobs are moved (not copied) into one
    // list each; each delivery keeps how many of either are its own, to be answered or retried.
    let (mut events, mut jobs, mut shares) = (Vec::new(), Vec::new(), Vec::with_capacity(batch.len()));
    for pending in batch {
        shares.push((pending.events.len(), pending.jobs.len(), pending.reply));
        events.extend(pending.events);
        jobs.extend(pending.jobs);
    }
    match append_and_wake(pool, waker, &events, &jobs).await {
        Ok(appended) => {
            let new: HashSet<_> = appended.new_events.into_iter().collect();
            let mut own = events.iter();
            for (count, _, reply) in shares {
                let accepted = own.by_ref().take(count).filter(|e| new.contains(&e.id)).count();
                let _ = reply.send(Ok(Accepted { accepted, duplicates: count - accepted }));
            }
        }
        // The database is unavailable: every delivery gets its 503 now. Retrying each on its own
        // would make each wait for a connection again, past the deadline.
        Err(error) if !refuses_data(&error) => {
            let cause = error.to_string();
            for (_, _, reply) in shares {
                let _ = reply.send(Err(IngestError::Unavailable(cause.clone())));
            }
        }
        // The database refused the data: retry each delivery on its own, so that the one it
        // refuses (say, a `\u0000` in its JSON) does not fail the others with it.
        Err(_) => {
            let (mut events, mut jobs) = (events.into_iter(), jobs.into_iter());
            let retries: Vec<_> = shares
                .into_iter()
                .map(|(event_count, job_count, reply)| {
                    let events: Vec<_> = events.by_ref().take(event_count).collect();
                    let jobs: Vec<_> = jobs.by_ref().take(job_count).collect();
                    async move {
                        let outcome = append_one(pool, waker, &events, &jobs).await;
                        let _ = reply.send(outcome);
                    }
                })
                .collect();
            futures_util::future::join_all(retries).await;
        }
    }
}

async fn append_one(pool: &PgPool, waker: &Waker, events: &[NewEvent], jobs: &[NewJob]) -> Result<Accepted, IngestError> {
    let appended = append_and_wake(pool, waker, events, jobs).await.map_err(|e| IngestError::from_database(&e))?;
    Ok(Accepted { accepted: appended.new_events.len(), duplicates: appended.duplicates })
}

/// Appends, and once committed wakes the workers if there is work for them.
async fn append_and_wake(pool: &PgPool, waker: &Waker, events: &[NewEvent], jobs: &[NewJob]) -> Result<event_log::Appended, sqlx::Error> {
    let appended = event_log::append(pool, events, jobs).await?;
    if appended.jobs > 0 {
        waker.wake();
    }
    Ok(appended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_appender_sends_even_one_delivery_at_once() {
        assert!(starts_now(0, 2, 1));
        assert!(starts_now(0, 1, 1));
    }

    #[test]
    fn beside_a_running_append_only_a_backlog_goes() {
        assert!(!starts_now(1, 2, BACKLOG_EVENTS - 1));
        assert!(starts_now(1, 2, BACKLOG_EVENTS));
    }

    #[test]
    fn never_more_appends_than_slots() {
        assert!(!starts_now(2, 2, MAX_BATCH_EVENTS));
        assert!(!starts_now(1, 1, MAX_BATCH_EVENTS));
    }
}
