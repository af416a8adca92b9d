//! Overdue subscriptions: a run of failed charges (`dunning`) still open after the account's grace
//! period → a `deal.overdue` job, once per run.
//!
//! The run's mark (recorded as the fact `subscription.overdue`, keyed by the run) and the job are
//! committed in one transaction, so a second scan or a second leader finds the run marked.

use chrono::{DateTime, Utc};
use kommo_pay_core::config::{Accounts, JobPolicies};
use kommo_pay_core::dunning;
use kommo_pay_core::jobs;
use kommo_pay_core::queue;
use sqlx::PgPool;

pub struct Overdue {
    pool: PgPool,
    accounts: Accounts,
    policies: JobPolicies,
}

impl Overdue {
    pub fn new(pool: PgPool, accounts: Accounts, policies: JobPolicies) -> Overdue {
        Overdue { pool, accounts, policies }
    }

    /// Marks the runs overdue at `now`; returns how many.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<usize, sqlx::Error> {
        let mut marked = 0;
        for account in self.accounts.iter() {
            for run in dunning::due(&self.pool, &account.slug, now - account.overdue_grace).await? {
                let mut tx = self.pool.begin().await?;
                // The mark is recorded as a `subscription.overdue` fact; the job hangs off it.
                let Some(fact) = dunning::mark_overdue(&mut tx, &account.slug, &run, now).await? else {
                    continue; // paid or marked since the query
                };
                queue::enqueue(&mut *tx, &jobs::overdue_of(&account.slug, &run, fact, &self.policies)).await?;
                tx.commit().await?;
                marked += 1;
            }
        }
        if marked > 0 {
            tracing::info!(marked, "subscriptions past their grace period marked overdue");
        }
        Ok(marked)
    }
}
