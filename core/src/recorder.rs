//! Changes that concurrent jobs record at the same moment, committed together: a group of
//! issuing jobs records its 50 links in one transaction of a few statements instead of 50
//! transactions of five, so a burst's database round trips stop queueing behind each other. A
//! batch waits for its first change only ([`crate::batching`]), so a lone change is recorded at
//! once; a batch that fails is recorded again change by change, so one change's failure is its
//! own.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::ids::{AccountSlug, JobId, LeadId};
use crate::projections::{self, Change, Meta, Recorded};

/// The most changes in one transaction.
const MOST: usize = 100;
/// Transactions of batches in flight at once: the next batch gathers while these commit.
const IN_FLIGHT: usize = 4;

/// A change waiting to be recorded, and who waits for it.
struct Asked {
    account: AccountSlug,
    lead_id: LeadId,
    job_id: Option<JobId>,
    at: DateTime<Utc>,
    change: Change,
    reply: oneshot::Sender<Result<Recorded, sqlx::Error>>,
}

impl Asked {
    fn meta(&self) -> Meta<'_> {
        Meta { account: &self.account, lead_id: self.lead_id, job_id: self.job_id, at: self.at }
    }
}

/// Records changes in their own transactions, several at once when they arrive together.
#[derive(Clone)]
pub struct Recorder {
    queue: mpsc::Sender<Asked>,
}

impl Recorder {
    pub fn spawn(pool: PgPool) -> Recorder {
        let (queue, mut incoming) = mpsc::channel::<Asked>(4 * MOST);
        tokio::spawn(async move {
            let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
            while let Some(batch) = crate::batching::next_batch(&mut incoming, MOST).await {
                let permit = in_flight.clone().acquire_owned().await.expect("the semaphore is never closed");
                let pool = pool.clone();
                tokio::spawn(async move {
                    record_batch(&pool, batch).await;
                    drop(permit);
                });
            }
        });
        Recorder { queue }
    }

    /// [`projections::record_alone`], committed with whatever other changes arrive meanwhile.
    pub async fn record(&self, meta: Meta<'_>, change: Change) -> Result<Recorded, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        let asked = Asked { account: meta.account.clone(), lead_id: meta.lead_id, job_id: meta.job_id, at: meta.at, change, reply };
        self.queue.send(asked).await.map_err(|_| sqlx::Error::PoolClosed)?;
        answer.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

/// Records `batch` in one transaction; if that fails, each change in one of its own.
async fn record_batch(pool: &PgPool, batch: Vec<Asked>) {
    if batch.len() > 1 {
        let changes: Vec<(Meta<'_>, &Change)> = batch.iter().map(|asked| (asked.meta(), &asked.change)).collect();
        let together = async {
            let mut tx = pool.begin().await?;
            let recorded = projections::record_all(&mut tx, &changes).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(recorded)
        };
        match together.await {
            Ok(recorded) => {
                for (asked, recorded) in batch.into_iter().zip(recorded) {
                    let _ = asked.reply.send(Ok(recorded));
                }
                return;
            }
            Err(error) => tracing::warn!(%error, changes = batch.len(), "recording a batch of changes failed; recording each alone"),
        }
    }
    for asked in batch {
        let recorded = projections::record_alone(pool, asked.meta(), &asked.change).await;
        let _ = asked.reply.send(recorded);
    }
}
