//! Subscriptions whose payment failed and is not yet made good (`dunning`).
//!
//! ```text
//!   (none) --charge failed / past_due snapshot--> open --grace passed (scheduler)--> overdue
//!   open | overdue --a payment for the deal-----> (none)
//! ```
//! Providers retry a failed card for days and most retries succeed, so a failure alone tells
//! the deal a note; only a run of failures that outlasts the account's grace period makes the
//! deal Overdue, with a task, once.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

/// A failed subscription charge.
pub struct Failure<'a> {
    pub account: &'a str,
    pub provider: &'a str,
    pub subscription_id: &'a str,
    pub lead_id: i64,
    pub failed_at: DateTime<Utc>,
    /// What failed, for the manager's task, e.g. "invoice in_1 of 49.90 EUR".
    pub what: &'a str,
}

/// Opens a run of failures for the subscription, unless one is open: the run keeps the time of
/// its first failure. Returns whether a run was opened.
pub async fn record_failure(pool: &PgPool, failure: &Failure<'_>) -> Result<bool, sqlx::Error> {
    let opened = sqlx::query(
        "INSERT INTO dunning (account, provider, subscription_id, lead_id, failed_at, what) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (account, provider, subscription_id) DO NOTHING",
    )
    .bind(failure.account)
    .bind(failure.provider)
    .bind(failure.subscription_id)
    .bind(failure.lead_id)
    .bind(failure.failed_at)
    .bind(failure.what)
    .execute(pool)
    .await?;
    Ok(opened.rows_affected() == 1)
}

/// A payment for the deal made at `paid_at` ends its runs of failures (overdue or not) that began
/// before it; a late announcement of an older payment leaves a newer run open.
pub async fn clear<'e>(db: impl PgExecutor<'e>, account: &str, lead_id: i64, paid_at: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let cleared = sqlx::query("DELETE FROM dunning WHERE account = $1 AND lead_id = $2 AND failed_at <= $3")
        .bind(account)
        .bind(lead_id)
        .bind(paid_at)
        .execute(db)
        .await?;
    Ok(cleared.rows_affected())
}

/// An open run of failures.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Open {
    pub run_id: uuid::Uuid,
    pub provider: String,
    pub subscription_id: String,
    pub lead_id: i64,
    pub failed_at: DateTime<Utc>,
    pub what: String,
    pub overdue_at: Option<DateTime<Utc>>,
}

/// The runs of `account` that began before `before` and are not marked overdue yet.
pub async fn due<'e>(db: impl PgExecutor<'e>, account: &str, before: DateTime<Utc>) -> Result<Vec<Open>, sqlx::Error> {
    sqlx::query_as(
        "SELECT run_id, provider, subscription_id, lead_id, failed_at, what, overdue_at FROM dunning
         WHERE account = $1 AND overdue_at IS NULL AND failed_at <= $2 ORDER BY failed_at",
    )
    .bind(account)
    .bind(before)
    .fetch_all(db)
    .await
}

/// Marks a run overdue, only if it is still the same open run. Returns whether it was marked.
pub async fn mark_overdue<'e>(db: impl PgExecutor<'e>, account: &str, run: &Open, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
    let marked = sqlx::query(
        "UPDATE dunning SET overdue_at = $3 WHERE account = $1 AND run_id = $2 AND overdue_at IS NULL",
    )
    .bind(account)
    .bind(run.run_id)
    .bind(now)
    .execute(db)
    .await?;
    Ok(marked.rows_affected() == 1)
}

/// The run a `deal.overdue` job is about, if it is still open (not paid since).
pub async fn find(pool: &PgPool, account: &str, run_id: uuid::Uuid) -> Result<Option<Open>, sqlx::Error> {
    sqlx::query_as(
        "SELECT run_id, provider, subscription_id, lead_id, failed_at, what, overdue_at FROM dunning
         WHERE account = $1 AND run_id = $2",
    )
    .bind(account)
    .bind(run_id)
    .fetch_optional(pool)
    .await
}
