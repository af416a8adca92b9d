//! Takes back jobs whose worker died: their rows stay `running` under an owner that no longer
//! heartbeats. Any number of rescuers may run (one per worker); each rescue is one guarded
//! UPDATE, so two rescuers never take the same row twice.

use std::time::Duration;

use kommo_pay_core::config::WorkerConfig;
use kommo_pay_core::queue::{self, Rescued};
use sqlx::PgPool;

pub struct Rescuer {
    pool: PgPool,
    /// How often to look.
    interval: Duration,
    /// A running job whose heartbeat is older than this is taken back.
    stale_after: Duration,
    /// A running job claimed longer ago than this is taken back, heartbeat or not.
    overdue_after: Duration,
}

impl Rescuer {
    /// Looks every half heartbeat interval for heartbeats older than one and a half intervals:
    /// a crashed worker's job runs again within two intervals, while a live worker, which
    /// heartbeats every interval, keeps half an interval of slack.
    pub fn for_worker(pool: PgPool, config: &WorkerConfig) -> Rescuer {
        Rescuer {
            pool,
            interval: config.heartbeat_interval / 2,
            stale_after: config.heartbeat_interval.mul_f64(1.5),
            overdue_after: config.job_timeout + 2 * config.heartbeat_interval,
        }
    }

    pub async fn run_once(&self) -> Result<Rescued, sqlx::Error> {
        let rescued = queue::rescue(&self.pool, self.stale_after, self.overdue_after).await?;
        if rescued != Rescued::default() {
            tracing::warn!(retried = rescued.retried, dead = rescued.dead, "rescued jobs of workers that stopped");
            metrics::counter!("kommo_pay_jobs_rescued_total").increment(rescued.retried + rescued.dead);
        }
        Ok(rescued)
    }

    pub async fn run(self) {
        let mut ticks = tokio::time::interval(self.interval);
        loop {
            ticks.tick().await;
            if let Err(error) = self.run_once().await {
                tracing::warn!(%error, "rescuing jobs failed; trying again");
            }
        }
    }
}
