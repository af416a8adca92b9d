//! Batched completion: successes that finish together are marked completed with one UPDATE.
//! Each job task waits for its own row to be committed before its slot frees, so a crash loses
//! no completion that a handler was told about.

use kommo_pay_core::ids::JobId;
use kommo_pay_core::queue;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

/// The most completions in one UPDATE.
const MAX_BATCH: usize = 1000;

#[derive(Clone)]
pub(crate) struct Completer {
    requests: mpsc::Sender<(JobId, oneshot::Sender<bool>)>,
}

impl Completer {
    pub(crate) fn spawn(pool: PgPool, owner: String) -> Completer {
        let (requests, mut incoming) = mpsc::channel::<(JobId, oneshot::Sender<bool>)>(4 * MAX_BATCH);
        tokio::spawn(async move {
            while let Some(batch) = kommo_pay_core::batching::next_batch(&mut incoming, MAX_BATCH).await {
                let ids: Vec<JobId> = batch.iter().map(|(id, _)| *id).collect();
                let completed = complete_with_retries(&pool, &owner, &ids).await;
                for (id, reply) in batch {
                    let _ = reply.send(completed.contains(&id));
                }
            }
        });
        Completer { requests }
    }

    /// Marks job `id` completed; false when it was no longer ours (rescued meanwhile) or the
    /// write kept failing (the rescuer then takes the job back and it runs again).
    pub(crate) async fn complete(&self, id: JobId) -> bool {
        let (reply, answer) = oneshot::channel();
        if self.requests.send((id, reply)).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

async fn complete_with_retries(pool: &PgPool, owner: &str, ids: &[JobId]) -> Vec<JobId> {
    kommo_pay_core::db::retry_briefly("recording completions", || queue::complete(pool, owner, ids)).await.unwrap_or_default()
}
