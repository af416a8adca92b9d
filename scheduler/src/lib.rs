//! The scheduler role: periodic scans (reminders, overdue subscriptions, reconciliation) run by
//! one elected leader.
//!
//! This version schedules nothing yet.

use std::future::Future;

/// Runs the scheduler role until `shutdown` completes.
pub async fn run(shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    tracing::warn!("scheduler role: this version has no periodic scans");
    shutdown.await;
    Ok(())
}
