//! The scheduler role: periodic scans run by one elected leader (`leader.rs`), turning what they
//! find into jobs on the same queue. Today: unpaid-link reminders (`reminders.rs`).

pub mod leader;
pub mod reminders;

use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use kommo_pay_core::config::{Accounts, JobPolicies, SchedulerSection};
use sqlx::PgPool;

pub use leader::Leadership;
pub use reminders::Reminders;

/// Runs the scans while leading, until `shutdown` completes.
pub async fn run(pool: PgPool, accounts: Accounts, policies: JobPolicies, config: &SchedulerSection, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let leadership = Leadership::spawn(&pool, Duration::from_secs(config.leader_check_secs));
    let reminders = Reminders::new(pool, accounts, policies);
    let mut ticks = tokio::time::interval(Duration::from_secs(config.scan_interval_secs));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticks.tick() => {
                if leadership.is_leader()
                    && let Err(error) = reminders.run_once(Utc::now()).await
                {
                    tracing::warn!(%error, "the reminder scan failed; trying again at the next tick");
                }
            }
        }
    }
    Ok(())
}
