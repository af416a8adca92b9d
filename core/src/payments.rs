//! Payments received for deals (`payments`), kept with the `payment.received` events: one row
//! per provider payment, however many events announce it.

use crate::ids::{AccountSlug, JobId, LeadId};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::money::Money;
use crate::projections::{self, Change, Meta};
use crate::provider::Provider;

pub struct Received<'a> {
    pub account: &'a AccountSlug,
    pub provider: Provider,
    pub payment_id: &'a str,
    pub lead_id: LeadId,
    pub link_id: Option<&'a str>,
    pub amount: Money,
    pub paid_at: DateTime<Utc>,
    /// The billing period a subscription invoice pays for, when the provider says: the
    /// payment's place in the deal's order (ADR 14); otherwise `paid_at` is.
    pub billed_for: Option<DateTime<Utc>>,
    pub job_id: JobId,
}

impl Received<'_> {
    /// The payment's place in the deal's order.
    pub fn order(&self) -> DateTime<Utc> {
        self.billed_for.unwrap_or(self.paid_at)
    }
}

impl Received<'_> {
    fn meta(&self) -> Meta<'_> {
        Meta { account: self.account, lead_id: self.lead_id, job_id: Some(self.job_id), at: Utc::now() }
    }
}

/// Who updates the deal for a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Application {
    /// This job: update the deal, then [`mark_applied`]. `resumed` when an earlier attempt (this
    /// job's or an abandoned one's) held the lease: it may have written to the deal, so read first.
    Yours { resumed: bool },
    /// Another job is at it right now.
    Busy,
    /// The deal was updated already.
    Done,
}

/// Records the payment (once) and decides who updates the deal for it: the first job to ask
/// gets a lease; others find it busy until it is applied (or the lease is abandoned).
pub async fn record(pool: &PgPool, received: &Received<'_>) -> Result<Application, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Recorded even when a refund that arrived first created the row: the log, not the row, is
    // the deal's history.
    let change = Change::PaymentReceived {
        provider: received.provider.to_string(),
        payment_id: received.payment_id.to_owned(),
        link_id: received.link_id.map(str::to_owned),
        amount_minor: received.amount.minor(),
        currency: received.amount.currency().code().to_owned(),
        paid_at: received.paid_at,
        billed_for: received.billed_for,
    };
    projections::record(&mut tx, received.meta(), &change).await?;
    let leased: Option<Option<i64>> = sqlx::query_scalar(
        // The earlier holder is read in FROM, before the row changes (as in `self_serve::claim`).
        "UPDATE payments p SET applying_job = $4, applying_since = now()
         FROM (SELECT applying_job AS earlier FROM payments WHERE account = $1 AND provider = $2 AND payment_id = $3) b
         WHERE p.account = $1 AND p.provider = $2 AND p.payment_id = $3 AND p.applied_at IS NULL
           AND (p.applying_job IS NULL OR p.applying_job = $4 OR p.applying_since < now() - interval '5 minutes')
         RETURNING b.earlier",
    )
    .bind(received.account)
    .bind(received.provider)
    .bind(received.payment_id)
    .bind(received.job_id)
    .fetch_optional(&mut *tx)
    .await?;
    let applied: Option<DateTime<Utc>> = sqlx::query_scalar("SELECT applied_at FROM payments WHERE account = $1 AND provider = $2 AND payment_id = $3")
        .bind(received.account)
        .bind(received.provider)
        .bind(received.payment_id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(match (leased, applied) {
        (Some(earlier), _) => Application::Yours { resumed: earlier.is_some() },
        (None, Some(_)) => Application::Done,
        (None, None) => Application::Busy,
    })
}

/// A payment as the deal shows it: how much was paid and how much of it refunded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Settled {
    pub lead_id: LeadId,
    pub amount_minor: i64,
    pub currency: String,
    pub refunded_minor: i64,
    pub paid_at: DateTime<Utc>,
    pub applied_at: Option<DateTime<Utc>>,
}

/// A deal's newest payment in the provider's order (ADR 14): what its card shows, whichever
/// payment's job runs last.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Newest {
    pub provider: String,
    pub payment_id: String,
    #[sqlx(flatten)]
    pub settled: Settled,
}

pub async fn newest(pool: &PgPool, account: &AccountSlug, lead_id: LeadId) -> Result<Option<Newest>, sqlx::Error> {
    sqlx::query_as(
        "SELECT provider, payment_id, lead_id, amount_minor, currency, refunded_minor, paid_at, applied_at FROM payments
         WHERE account = $1 AND lead_id = $2 ORDER BY coalesce(billed_for, paid_at) DESC, paid_at DESC, payment_id DESC LIMIT 1",
    )
    .bind(account)
    .bind(lead_id)
    .fetch_optional(pool)
    .await
}

pub async fn find(pool: &PgPool, account: &AccountSlug, provider: Provider, payment_id: &str) -> Result<Option<Settled>, sqlx::Error> {
    sqlx::query_as(
        "SELECT lead_id, amount_minor, currency, refunded_minor, paid_at, applied_at FROM payments WHERE account = $1 AND provider = $2 AND payment_id = $3",
    )
    .bind(account)
    .bind(provider)
    .bind(payment_id)
    .fetch_optional(pool)
    .await
}

/// Records a refund of payment `payment_id` (the running total Stripe reports): creates the
/// payment when its own events have not arrived yet, and never lowers the refunded amount.
/// Returns whether this job's refund is new to the deal: the total grew now, or it grew when an
/// earlier attempt of the same job recorded it (which then crashed before telling the deal).
pub async fn record_refund(pool: &PgPool, received: &Received<'_>, refunded_total: i64) -> Result<bool, sqlx::Error> {
    let change = Change::RefundRecorded {
        provider: received.provider.to_string(),
        payment_id: received.payment_id.to_owned(),
        amount_minor: received.amount.minor(),
        currency: received.amount.currency().code().to_owned(),
        paid_at: received.paid_at,
        refunded_minor: refunded_total,
    };
    if projections::record_alone(pool, received.meta(), &change).await?.changed > 0 {
        return Ok(true);
    }
    projections::recorded_by_job(pool, received.account, received.lead_id, &change, received.job_id).await
}

/// The deal was updated for this payment.
pub async fn mark_applied(pool: &PgPool, received: &Received<'_>) -> Result<(), sqlx::Error> {
    let change = Change::PaymentApplied { provider: received.provider.to_string(), payment_id: received.payment_id.to_owned() };
    projections::record_alone(pool, received.meta(), &change).await.map(drop)
}
