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
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::projections::{self, Change, Meta};

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
/// its first failure. Recorded by job `job_id`. Returns whether a run was opened.
pub async fn record_failure(pool: &PgPool, failure: &Failure<'_>, job_id: i64) -> Result<bool, sqlx::Error> {
    let change = Change::FailureRunOpened {
        provider: failure.provider.to_owned(),
        subscription_id: failure.subscription_id.to_owned(),
        run_id: Uuid::now_v7(),
        failed_at: failure.failed_at,
        what: failure.what.to_owned(),
    };
    let meta = Meta { account: failure.account, lead_id: failure.lead_id, job_id: Some(job_id), at: Utc::now() };
    Ok(projections::record_alone(pool, meta, &change).await?.changed > 0)
}

/// A payment for the deal made at `paid_at` ends its runs of failures (overdue or not) that began
/// before it; a late announcement of an older payment leaves a newer run open.
pub async fn clear(pool: &PgPool, account: &str, lead_id: i64, paid_at: DateTime<Utc>, job_id: i64) -> Result<u64, sqlx::Error> {
    // Most payments end no run: record a change only when there is one to end.
    let open: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM dunning WHERE account = $1 AND lead_id = $2 AND failed_at <= $3)")
        .bind(account)
        .bind(lead_id)
        .bind(paid_at)
        .fetch_one(pool)
        .await?;
    if !open {
        return Ok(0);
    }
    let meta = Meta { account, lead_id, job_id: Some(job_id), at: Utc::now() };
    Ok(projections::record_alone(pool, meta, &Change::FailureRunsCleared { paid_at }).await?.changed)
}

/// An open run of failures.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Open {
    pub run_id: Uuid,
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

/// Marks a run overdue at `now` (once: a second leader changes nothing), in the caller's
/// transaction. Returns the fact recorded, when this call marked it.
pub async fn mark_overdue(conn: &mut PgConnection, account: &str, run: &Open, now: DateTime<Utc>) -> Result<Option<Uuid>, sqlx::Error> {
    let meta = Meta { account, lead_id: run.lead_id, job_id: None, at: now };
    let recorded = projections::record(conn, meta, &Change::FailureRunOverdue { run_id: run.run_id, what: run.what.clone() }).await?;
    Ok(recorded.fact.filter(|_| recorded.changed > 0))
}

/// The run a `deal.overdue` job is about, if it is still open (not paid since).
pub async fn find(pool: &PgPool, account: &str, run_id: Uuid) -> Result<Option<Open>, sqlx::Error> {
    sqlx::query_as(
        "SELECT run_id, provider, subscription_id, lead_id, failed_at, what, overdue_at FROM dunning
         WHERE account = $1 AND run_id = $2",
    )
    .bind(account)
    .bind(run_id)
    .fetch_optional(pool)
    .await
}
