//! Housekeeping: completed and discarded jobs leave the queue table after the retention period,
//! so that claims stay fast. Their events, and the facts the jobs recorded, stay in the log for
//! good; dead-lettered jobs stay until an operator replays or discards them.
//!
//! Kommo OAuth tokens need no round here: the client refreshes them ahead of expiry on use, one
//! refresh per account across processes (`kommo::client`).

use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;

/// Rows deleted per statement, so that one round never holds long locks.
const BATCH: i64 = 5_000;

pub struct Housekeeping {
    pool: PgPool,
    retention: Duration,
}

impl Housekeeping {
    pub fn new(pool: PgPool, retention: Duration) -> Housekeeping {
        Housekeeping { pool, retention }
    }

    /// Deletes the jobs finished before `now - retention`; returns how many.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<usize, sqlx::Error> {
        let mut pruned = 0;
        loop {
            let deleted = sqlx::query(
                "DELETE FROM jobs WHERE id IN (
                     SELECT id FROM jobs WHERE state IN ('completed', 'discarded') AND finished_at < $1
                       AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.replay_of = jobs.id) LIMIT $2)",
            )
            .bind(now - self.retention)
            .bind(BATCH)
            .execute(&self.pool)
            .await?
            .rows_affected();
            pruned += deleted as usize;
            if deleted < BATCH as u64 {
                break;
            }
        }
        if pruned > 0 {
            tracing::info!(pruned, "finished jobs pruned from the queue table");
        }
        Ok(pruned)
    }
}
