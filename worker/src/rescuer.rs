//! Takes back jobs whose worker died: their rows stay `running` under an owner that no longer
//! heartbeats. Any number of rescuers may run (one per worker); two never take the same row.
//! A taken-back job's lost attempt is a failed attempt like any other: [`crate::executor::fate`]
//! decides whether it runs again (with its kind's backoff) or is dead-lettered.

use std::time::Duration;

use chrono::Utc;
use kommo_pay_core::config::{JobPolicies, WorkerConfig};
use kommo_pay_core::queue::{self, Fate};
use sqlx::PgPool;

use crate::JobError;
use crate::executor::{fate, record_failure};

/// What [`Rescuer::run_once`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rescued {
    /// Taken back to run again (after their kind's backoff).
    pub retried: u64,
    /// Out of attempts: dead-lettered (and logged).
    pub dead: u64,
}

pub struct Rescuer {
    pool: PgPool,
    policies: JobPolicies,
    /// This rescuer's name in `jobs.locked_by` while it records a taken-back job's fate.
    owner: String,
    /// How often to look.
    interval: Duration,
    /// A running job whose heartbeat is older than this is taken back.
    stale_after: Duration,
    /// A running job claimed longer ago than this is taken back, heartbeat or not.
    overdue_after: Duration,
}

impl Rescuer {
    pub fn new(pool: PgPool, policies: JobPolicies, stale_after: Duration, overdue_after: Duration) -> Rescuer {
        let owner = format!("rescuer:{}:{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
        Rescuer { pool, policies, owner, interval: stale_after / 3, stale_after, overdue_after }
    }

    /// Looks every half heartbeat interval for heartbeats older than one and a half intervals:
    /// a crashed worker's job is taken back within two intervals, while a live worker, which
    /// heartbeats every interval, keeps half an interval of slack.
    pub fn for_worker(pool: PgPool, config: &WorkerConfig, policies: JobPolicies) -> Rescuer {
        Rescuer::new(pool, policies, config.heartbeat_interval.mul_f64(1.5), config.job_timeout + 2 * config.heartbeat_interval)
    }

    pub async fn run_once(&self) -> Result<Rescued, sqlx::Error> {
        let mut rescued = Rescued::default();
        for taken in queue::take_back(&self.pool, &self.owner, self.stale_after, self.overdue_after).await? {
            let (job, error) = (taken.job, taken.error);
            let fate = fate(&job, &JobError::retryable(anyhow::anyhow!(error.clone())), &self.policies.policy(&job.kind), Utc::now(), fastrand::f64());
            // Not written: the job stays running under this rescuer, and the next rescue takes it.
            if record_failure(&self.pool, &self.owner, &self.policies, &job, &error, fate).await {
                match fate {
                    Fate::Dead => rescued.dead += 1,
                    _ => rescued.retried += 1,
                }
            }
        }
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
