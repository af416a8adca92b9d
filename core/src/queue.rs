//! The job queue (`jobs`). Jobs are enqueued in the transaction that appends their event
//! ([`crate::event_log::append`]); workers are woken afterwards by a [`Waker`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// The channel on which workers LISTEN for "there is new work".
pub const WAKE_CHANNEL: &str = "kommo_pay_jobs";

/// A job about to be enqueued.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    pub args: Value,
    pub account: String,
    pub lead_id: Option<i64>,
    /// The event whose arrival implies this job.
    pub event_id: Uuid,
    pub max_attempts: i32,
    /// When set, a second job with the same key is never enqueued.
    pub unique_key: Option<String>,
}

/// Wakes workers after jobs were committed, with at most one NOTIFY per `interval` however many
/// transactions enqueued.
///
/// A NOTIFY inside the enqueueing transaction would take a database-wide lock at every commit
/// and serialise them (a peer queue fell to ~1,400 enqueues/s that way); one coalesced NOTIFY,
/// sent outside those transactions, costs nothing at any rate. Workers poll as well, so a lost
/// wake-up only delays work by one poll interval.
#[derive(Clone)]
pub struct Waker {
    pending: Arc<tokio::sync::Notify>,
}

impl Waker {
    /// Starts the task that sends the NOTIFYs. It lives as long as the runtime.
    pub fn spawn(pool: PgPool, interval: Duration) -> Waker {
        let pending = Arc::new(tokio::sync::Notify::new());
        let waiting = pending.clone();
        tokio::spawn(async move {
            loop {
                // `notify_one` stores one permit when nobody waits, so wake-ups that arrive while
                // a NOTIFY is in flight coalesce into the next one.
                waiting.notified().await;
                if let Err(error) = sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&pool).await {
                    tracing::debug!(%error, "could not wake workers; they will find the jobs by polling");
                }
                tokio::time::sleep(interval).await;
            }
        });
        Waker { pending }
    }

    /// Asks for a wake-up. Cheap and non-blocking: call it after every commit that enqueued jobs.
    pub fn wake(&self) {
        self.pending.notify_one();
    }
}
