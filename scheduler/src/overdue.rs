//! Overdue subscriptions: a run of failed charges (`dunning`) still open after the account's grace
//! period → a `deal.overdue` job, once per run.
//!
//! The job, its internal event (`subscription.overdue`, keyed by the run) and the run's mark are
//! committed in one transaction, so a second scan or a second leader finds the run marked.

use chrono::{DateTime, Utc};
use kommo_pay_core::config::{Accounts, JobPolicies};
use kommo_pay_core::dunning;
use kommo_pay_core::event_log::{self, NewEvent, Source};
use kommo_pay_core::jobs::JobKind;
use kommo_pay_core::queue::NewJob;
use serde_json::json;
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
                if !dunning::mark_overdue(&mut *tx, &account.slug, &run, now).await? {
                    continue; // paid or marked since the query
                }
                let args = json!({ "run_id": run.run_id, "provider": run.provider, "subscription_id": run.subscription_id });
                let raw = serde_json::value::to_raw_value(&json!({ "what": run.what, "grace_days": account.overdue_grace.num_days(), "run": args }))
                    .expect("JSON serialises");
                let key = format!("overdue:{}", run.run_id);
                let event = NewEvent::new(&account.slug, Source::Internal, "subscription.overdue".into(), key.clone(), Some(run.lead_id), raw);
                let job = NewJob {
                    kind: JobKind::MarkOverdue.as_str().into(),
                    args,
                    account: account.slug.clone(),
                    lead_id: Some(run.lead_id),
                    event_id: event.id,
                    max_attempts: self.policies.policy(JobKind::MarkOverdue.as_str()).max_attempts,
                    unique_key: Some(format!("{}:{key}", account.slug)),
                };
                event_log::append(&mut *tx, &[event], &[job]).await?;
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
