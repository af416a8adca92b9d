//! Subscriptions whose payment failed and is not yet made good (`dunning`).
//!
//! ```text
//!   (none) --charge failed / past_due snapshot--> open --grace passed (scheduler)--> overdue
//!   open | overdue --a payment for the deal-----> (none)
//! ```
//! Providers retry a failed card for days and most retries succeed, so a failure alone tells
//! the deal a note; only a run of failures that outlasts the account's grace period makes the
//! deal Overdue, with a task, once.

use crate::ids::{AccountSlug, JobId, LeadId};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::projections::{self, Change, Meta};
use crate::provider::Provider;

/// A failed subscription charge.
pub struct Failure<'a> {
    pub account: &'a AccountSlug,
    pub provider: Provider,
    pub subscription_id: &'a str,
    pub lead_id: LeadId,
    pub failed_at: DateTime<Utc>,
    /// What failed, for the manager's task, e.g. "invoice in_1 of 49.90 EUR".
    pub what: &'a str,
    /// The billing period of the failed invoice, when the provider says (ADR 14).
    pub billed_for: Option<DateTime<Utc>>,
}

impl Failure<'_> {
    /// The failure's place in the deal's order.
    fn order(&self) -> DateTime<Utc> {
        self.billed_for.unwrap_or(self.failed_at)
    }
}

/// What [`record_failure`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// A run of failures opened with this failure.
    Opened,
    /// The subscription's run was open already; it keeps the time of its first failure.
    Continued,
    /// The deal has a payment that stands at or after this failure in the provider's order (a
    /// late delivery): nothing is unpaid.
    Overtaken,
}

/// Opens a run of failures for the subscription, unless one is open or a payment overtook the
/// failure. Decided and recorded under the deal's lock, so a payment recorded at the same moment
/// either is seen here or clears the run after it ([`clear`]): the outcome never depends on
/// which of their jobs runs first. Recorded by job `job_id`.
pub async fn record_failure(pool: &PgPool, failure: &Failure<'_>, job_id: JobId) -> Result<Run, sqlx::Error> {
    let mut tx = pool.begin().await?;
    projections::lock_deal(&mut tx, failure.account, failure.lead_id).await?;
    let run = record_failure_in(&mut tx, failure, job_id).await?;
    tx.commit().await?;
    Ok(run)
}

/// [`record_failure`] in the caller's transaction, which holds the deal's lock.
pub(crate) async fn record_failure_in(conn: &mut PgConnection, failure: &Failure<'_>, job_id: JobId) -> Result<Run, sqlx::Error> {
    let overtaken: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM payments WHERE account = $1 AND lead_id = $2 AND coalesce(billed_for, paid_at) >= $3)")
            .bind(failure.account)
            .bind(failure.lead_id)
            .bind(failure.order())
            .fetch_one(&mut *conn)
            .await?;
    if overtaken {
        return Ok(Run::Overtaken);
    }
    let change = Change::FailureRunOpened {
        provider: failure.provider.to_string(),
        subscription_id: failure.subscription_id.to_owned(),
        run_id: Uuid::now_v7(),
        failed_at: failure.failed_at,
        what: failure.what.to_owned(),
        billed_for: failure.billed_for,
    };
    let meta = Meta { account: failure.account, lead_id: failure.lead_id, job_id: Some(job_id), at: Utc::now() };
    let opened = projections::record(conn, meta, &change).await?.changed > 0;
    Ok(if opened { Run::Opened } else { Run::Continued })
}

/// A payment that stands at `order` in the deal's order (its billing period, or when it was
/// paid) ends the deal's runs of failures (overdue or not) that stand at or before it; a late
/// announcement of an older payment leaves a newer run open. Call it after the payment is
/// recorded ([`crate::payments::record`]), so that a failure decided meanwhile sees it.
pub async fn clear(pool: &PgPool, account: &AccountSlug, lead_id: LeadId, order: DateTime<Utc>, job_id: JobId) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    projections::lock_deal(&mut tx, account, lead_id).await?;
    // Most payments end no run: record a change only when there is one to end.
    let open: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM dunning WHERE account = $1 AND lead_id = $2 AND coalesce(billed_for, failed_at) <= $3)")
        .bind(account)
        .bind(lead_id)
        .bind(order)
        .fetch_one(&mut *tx)
        .await?;
    if !open {
        return Ok(0);
    }
    let meta = Meta { account, lead_id, job_id: Some(job_id), at: Utc::now() };
    let cleared = projections::record(&mut tx, meta, &Change::FailureRunsCleared { paid_at: order }).await?.changed;
    tx.commit().await?;
    Ok(cleared)
}

/// Whether the deal has a run of failures marked overdue: what its card shows until a payment
/// that stands after it clears it.
pub async fn overdue(pool: &PgPool, account: &AccountSlug, lead_id: LeadId) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM dunning WHERE account = $1 AND lead_id = $2 AND overdue_at IS NOT NULL)")
        .bind(account)
        .bind(lead_id)
        .fetch_one(pool)
        .await
}

/// An open run of failures.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Open {
    pub run_id: Uuid,
    pub provider: String,
    pub subscription_id: String,
    pub lead_id: LeadId,
    pub failed_at: DateTime<Utc>,
    pub what: String,
    pub overdue_at: Option<DateTime<Utc>>,
}

/// The runs of `account` that began before `before` and are not marked overdue yet.
pub async fn due<'e>(db: impl PgExecutor<'e>, account: &AccountSlug, before: DateTime<Utc>) -> Result<Vec<Open>, sqlx::Error> {
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
pub async fn mark_overdue(conn: &mut PgConnection, account: &AccountSlug, run: &Open, now: DateTime<Utc>) -> Result<Option<Uuid>, sqlx::Error> {
    let meta = Meta { account, lead_id: run.lead_id, job_id: None, at: now };
    let recorded = projections::record(conn, meta, &Change::FailureRunOverdue { run_id: run.run_id, what: run.what.clone() }).await?;
    Ok(recorded.fact.filter(|_| recorded.changed > 0))
}

/// The run a `deal.overdue` job is about, if it is still open (not paid since).
pub async fn find(pool: &PgPool, account: &AccountSlug, run_id: Uuid) -> Result<Option<Open>, sqlx::Error> {
    sqlx::query_as(
        "SELECT run_id, provider, subscription_id, lead_id, failed_at, what, overdue_at FROM dunning
         WHERE account = $1 AND run_id = $2",
    )
    .bind(account)
    .bind(run_id)
    .fetch_optional(pool)
    .await
}
