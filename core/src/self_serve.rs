//! Self-serve buyers: the deal created for an order that named none (`self_serve_orders`), and
//! the round-robin cursor that assigns their managers (`round_robin`).

use crate::ids::{AccountSlug, JobId, LeadId};
use chrono::Utc;
use sqlx::PgPool;

use crate::projections::{self, Change, Meta};
use crate::provider::Provider;

/// Who creates the deal for an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The deal exists already.
    Existing(LeadId),
    /// This job: create it, then [`record_lead`]. `resumed` when an earlier attempt (this job's
    /// or an abandoned one's) held the claim: it may have created the deal before it stopped, so
    /// look for it first.
    Yours { resumed: bool },
    /// Another job is creating it right now.
    Busy,
}

/// Claims the creation of the deal for `order_id`. A lease older than five minutes counts as
/// abandoned (its job died before Kommo answered).
pub async fn claim(pool: &PgPool, account: &AccountSlug, provider: Provider, order_id: &str, job_id: JobId) -> Result<Claim, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO self_serve_orders (account, provider, order_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(account)
        .bind(provider)
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
    let (lead_id, creating_job, earlier): (Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
        // The earlier holder is read in FROM, before the row changes (a CTE read from RETURNING
        // would run after the update and see nothing).
        "UPDATE self_serve_orders o SET
             creating_job = CASE WHEN o.lead_id IS NULL AND (o.creating_job IS NULL OR o.creating_job = $4 OR o.creating_since < now() - interval '5 minutes')
                                 THEN $4 ELSE o.creating_job END,
             creating_since = CASE WHEN o.lead_id IS NULL AND (o.creating_job IS NULL OR o.creating_job = $4 OR o.creating_since < now() - interval '5 minutes')
                                   THEN now() ELSE o.creating_since END
         FROM (SELECT creating_job AS earlier FROM self_serve_orders WHERE account = $1 AND provider = $2 AND order_id = $3) b
         WHERE o.account = $1 AND o.provider = $2 AND o.order_id = $3
         RETURNING o.lead_id, o.creating_job, b.earlier",
    )
    .bind(account)
    .bind(provider)
    .bind(order_id)
    .bind(job_id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(match (lead_id, creating_job) {
        (Some(lead), _) => Claim::Existing(LeadId(lead)),
        (None, Some(job)) if JobId(job) == job_id => Claim::Yours { resumed: earlier.is_some() },
        _ => Claim::Busy,
    })
}

/// The deal created for `order_id`, stored the moment Kommo returned it, by job `job_id`.
pub async fn record_lead(pool: &PgPool, account: &AccountSlug, provider: Provider, order_id: &str, lead_id: LeadId, job_id: JobId) -> Result<(), sqlx::Error> {
    let change = Change::SelfServeDealCreated { provider: provider.to_string(), order_id: order_id.to_owned() };
    projections::record_alone(pool, Meta { account, lead_id, job_id: Some(job_id), at: Utc::now() }, &change).await.map(drop)
}

/// The deal created for `order_id`, if any.
pub async fn lead_of(pool: &PgPool, account: &AccountSlug, provider: Provider, order_id: &str) -> Result<Option<LeadId>, sqlx::Error> {
    let lead: Option<Option<LeadId>> = sqlx::query_scalar("SELECT lead_id FROM self_serve_orders WHERE account = $1 AND provider = $2 AND order_id = $3")
        .bind(account)
        .bind(provider)
        .bind(order_id)
        .fetch_optional(pool)
        .await?;
    Ok(lead.flatten())
}

/// The next turn of the account's round robin: 0, 1, 2, … across all processes.
pub async fn next_turn(pool: &PgPool, account: &AccountSlug) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO round_robin AS r (account, next) VALUES ($1, 1)
         ON CONFLICT (account) DO UPDATE SET next = r.next + 1
         RETURNING next - 1",
    )
    .bind(account)
    .fetch_one(pool)
    .await
}
