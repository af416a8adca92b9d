//! Provider subscriptions and their deals (`subscriptions`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// A subscription snapshot as the provider sent it.
pub struct Snapshot<'a> {
    pub account: &'a str,
    pub provider: &'a str,
    pub subscription_id: &'a str,
    pub lead_id: i64,
    pub status: &'a str,
    pub updated_at: DateTime<Utc>,
}

/// Stores the snapshot unless a newer one is stored already (an equal time is not older).
/// Returns whether it was stored.
pub async fn store(pool: &PgPool, snapshot: &Snapshot<'_>) -> Result<bool, sqlx::Error> {
    let stored: Option<String> = sqlx::query_scalar(
        "INSERT INTO subscriptions AS s (account, provider, subscription_id, lead_id, status, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (account, provider, subscription_id) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at
             WHERE s.updated_at <= excluded.updated_at
         RETURNING status",
    )
    .bind(snapshot.account)
    .bind(snapshot.provider)
    .bind(snapshot.subscription_id)
    .bind(snapshot.lead_id)
    .bind(snapshot.status)
    .bind(snapshot.updated_at)
    .fetch_optional(pool)
    .await?;
    Ok(stored.is_some())
}

/// The deal of a subscription we have seen.
pub async fn lead_of(pool: &PgPool, account: &str, provider: &str, subscription_id: &str) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT lead_id FROM subscriptions WHERE account = $1 AND provider = $2 AND subscription_id = $3")
        .bind(account)
        .bind(provider)
        .bind(subscription_id)
        .fetch_optional(pool)
        .await
}
