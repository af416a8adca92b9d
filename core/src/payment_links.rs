//! Payment links issued for deals (`payment_links`), kept with the `payment_link.*` events.

use serde_json::json;
use sqlx::PgPool;

use crate::event_log::{self, Fact};
use crate::money::{Currency, Money};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PaymentLink {
    /// `stripe` or `lemonsqueezy`.
    pub provider: String,
    pub link_id: String,
    pub lead_id: i64,
    pub trigger: String,
    pub url: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: String,
    pub note_added_at: Option<chrono::DateTime<chrono::Utc>>,
    pub salesbot_run_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl PaymentLink {
    pub fn amount(&self) -> Option<Money> {
        Currency::parse(&self.currency).ok().map(|c| Money::from_minor(self.amount_minor, c))
    }
}

/// The deal's active link, whichever provider issued it.
pub async fn active_for(pool: &PgPool, account: &str, lead_id: i64) -> Result<Option<PaymentLink>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM payment_links WHERE account = $1 AND lead_id = $2 AND status = 'active'
         ORDER BY issued_at DESC LIMIT 1",
    )
    .bind(account)
    .bind(lead_id)
    .fetch_optional(pool)
    .await
}

/// The unpaid links of `provider` for exactly `amount`, issued before `paid_at`: the deals an
/// order that carries no deal id may have paid for (reconciliation's fallback).
pub async fn unpaid_matching(pool: &PgPool, account: &str, provider: &str, amount: Money, paid_at: chrono::DateTime<chrono::Utc>) -> Result<Vec<PaymentLink>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM payment_links WHERE account = $1 AND provider = $2 AND status = 'active'
           AND amount_minor = $3 AND currency = $4 AND issued_at <= $5",
    )
    .bind(account)
    .bind(provider)
    .bind(amount.minor())
    .bind(amount.currency().code())
    .bind(paid_at)
    .fetch_all(pool)
    .await
}

/// A link just created for a deal.
pub struct Issued<'a> {
    pub account: &'a str,
    /// `stripe` or `lemonsqueezy`.
    pub provider: &'a str,
    pub lead_id: i64,
    pub trigger: &'a str,
    pub link_id: &'a str,
    pub url: &'a str,
    pub amount: Money,
    pub job_id: i64,
}

/// Records a new link as the deal's active one, the previous active one as replaced, and the
/// fact in the event log, in one transaction. A retry that records the same link changes nothing.
pub async fn record_issued(pool: &PgPool, issued: &Issued<'_>) -> Result<PaymentLink, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO payment_links (account, provider, link_id, lead_id, trigger, url, amount_minor, currency, issued_by_job)
         VALUES ($1, $9, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(issued.account)
    .bind(issued.link_id)
    .bind(issued.lead_id)
    .bind(issued.trigger)
    .bind(issued.url)
    .bind(issued.amount.minor())
    .bind(issued.amount.currency().code())
    .bind(issued.job_id)
    .bind(issued.provider)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 1 {
        sqlx::query(
            "UPDATE payment_links SET status = 'replaced'
             WHERE account = $1 AND lead_id = $2 AND status = 'active' AND link_id <> $3",
        )
        .bind(issued.account)
        .bind(issued.lead_id)
        .bind(issued.link_id)
        .execute(&mut *tx)
        .await?;
        let payload = json!({
            "provider": issued.provider, "link_id": issued.link_id, "url": issued.url, "trigger": issued.trigger,
            "amount_minor": issued.amount.minor(), "currency": issued.amount.currency().code(),
            "amount": issued.amount.to_string(),
        });
        let dedup_key = format!("payment_link.issued:{}:{}", issued.provider, issued.link_id);
        let fact = Fact { account: issued.account, kind: "payment_link.issued", dedup_key: &dedup_key, lead_id: issued.lead_id, job_id: issued.job_id, payload };
        event_log::append_fact(&mut *tx, fact).await?;
    }
    tx.commit().await?;
    let link = sqlx::query_as("SELECT * FROM payment_links WHERE account = $1 AND provider = $2 AND link_id = $3")
        .bind(issued.account)
        .bind(issued.provider)
        .bind(issued.link_id)
        .fetch_one(pool)
        .await?;
    Ok(link)
}

/// The deal's Stripe links that a newer link replaced and that may still be payable. (Lemon
/// Squeezy checkouts cannot be deactivated: they stay `replaced` until their `expires_at`.)
pub async fn replaced(pool: &PgPool, account: &str, lead_id: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT link_id FROM payment_links WHERE account = $1 AND provider = 'stripe' AND lead_id = $2 AND status = 'replaced'",
    )
    .bind(account)
    .bind(lead_id)
    .fetch_all(pool)
    .await
}

/// Moves a link to `status` (`paid`, `deactivated`); call it once Stripe has deactivated it.
pub async fn set_status(pool: &PgPool, account: &str, link_id: &str, status: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE payment_links SET status = $3 WHERE account = $1 AND provider = 'stripe' AND link_id = $2")
        .bind(account)
        .bind(link_id)
        .bind(status)
        .execute(pool)
        .await?;
    Ok(())
}

/// The deal's active links' ids.
pub async fn active_ids(pool: &PgPool, account: &str, lead_id: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT link_id FROM payment_links WHERE account = $1 AND provider = 'stripe' AND lead_id = $2 AND status = 'active'")
        .bind(account)
        .bind(lead_id)
        .fetch_all(pool)
        .await
}

/// Records that the link's note was added / its Salesbot launched, so a retry does not repeat it.
pub async fn mark_note_added(pool: &PgPool, account: &str, link_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE payment_links SET note_added_at = now() WHERE account = $1 AND link_id = $2")
        .bind(account)
        .bind(link_id)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn mark_salesbot_run(pool: &PgPool, account: &str, link_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE payment_links SET salesbot_run_at = now() WHERE account = $1 AND link_id = $2")
        .bind(account)
        .bind(link_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// The link with id `link_id`, whichever provider issued it.
pub async fn by_id(pool: &PgPool, account: &str, link_id: &str) -> Result<Option<PaymentLink>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM payment_links WHERE account = $1 AND link_id = $2")
        .bind(account)
        .bind(link_id)
        .fetch_optional(pool)
        .await
}
