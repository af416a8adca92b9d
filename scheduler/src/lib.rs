//! The scheduler role: periodic scans run by one elected leader (`leader.rs`), turning what they
//! find into jobs on the same queue.
//!
//! Every scan has the same shape: `new` with what it needs, and `run_once(now)` that does one
//! round at the time it is given (tests move that clock) and returns how much it did. [`run`]
//! repeats each at its interval while this process leads.
//!
//! - `reminders`: unpaid links due a reminder.
//! - `overdue`: subscriptions unpaid past the grace period.
//! - `reconcile`: what webhooks missed, read from each provider's history.
//! - `housekeeping`: finished jobs pruned from the queue table; Kommo OAuth tokens kept fresh.

pub mod housekeeping;
pub mod leader;
pub mod overdue;
pub mod reconcile;
pub mod reminders;

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kommo_pay_core::config::{Accounts, JobPolicies, SchedulerSection};
use sqlx::PgPool;

pub use housekeeping::Housekeeping;
pub use leader::Leadership;
pub use overdue::Overdue;
pub use reconcile::Reconciler;
pub use reminders::Reminders;

/// Runs the scans while leading, until `shutdown` completes. A scan cut off by shutdown loses
/// nothing: each round's writes are transactions, and the next leader does the round again.
pub async fn run(pool: PgPool, accounts: Accounts, policies: JobPolicies, config: &SchedulerSection, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let leadership = Leadership::spawn(&pool, Duration::from_secs(config.leader_check_secs));
    let reminders = Reminders::new(pool.clone(), accounts.clone(), policies.clone());
    let overdue = Overdue::new(pool.clone(), accounts.clone(), policies.clone());
    let lookback = chrono::Duration::hours(config.reconcile_lookback_hours as i64);
    let clients = kommo_pay_core::clients::for_accounts(&pool, &accounts);
    let reconciler = Reconciler::new(pool.clone(), clients.clone(), policies, lookback);
    let housekeeping_every = Duration::from_secs(config.housekeeping_interval_secs);
    let housekeeping = Housekeeping::new(pool, clients, chrono::Duration::days(config.finished_job_retention_days as i64), housekeeping_every);
    let scan = Duration::from_secs(config.scan_interval_secs);
    let scans = async {
        tokio::join!(
            every(&leadership, "reminders", scan, |now| reminders.run_once(now)),
            every(&leadership, "overdue", scan, |now| overdue.run_once(now)),
            every(&leadership, "reconcile", Duration::from_secs(config.reconcile_interval_secs), |now| reconciler.run_once(now)),
            every(&leadership, "housekeeping", housekeeping_every, |now| housekeeping.run_once(now)),
        )
    };
    tokio::select! {
        _ = shutdown => {}
        _ = scans => {}
    }
    Ok(())
}

/// Runs `run_once` every `interval` while this process leads. A failed round is logged and
/// counted; the next tick tries again.
async fn every<F, Fut, E>(leadership: &Leadership, scan: &'static str, interval: Duration, run_once: F)
where
    F: Fn(DateTime<Utc>) -> Fut,
    Fut: Future<Output = Result<usize, E>>,
    E: Display,
{
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !leadership.is_leader() {
            continue;
        }
        let started = std::time::Instant::now();
        match run_once(Utc::now()).await {
            Ok(done) => {
                metrics::counter!("kommo_pay_scheduler_rounds_total", "scan" => scan, "outcome" => "ok").increment(1);
                tracing::debug!(scan, done, elapsed_ms = started.elapsed().as_millis() as u64, "scan round finished");
            }
            Err(error) => {
                metrics::counter!("kommo_pay_scheduler_rounds_total", "scan" => scan, "outcome" => "failed").increment(1);
                tracing::warn!(scan, %error, "a scan round failed; trying again at the next tick");
            }
        }
    }
}
