//! Provider subscriptions and their deals (`subscriptions`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::projections::{self, Change, Meta};

/// A subscription snapshot as the provider sent it.
pub struct Snapshot<'a> {
    pub account: &'a str,
    pub provider: &'a str,
    pub subscription_id: &'a str,
    pub lead_id: i64,
    pub status: &'a str,
    pub updated_at: DateTime<Utc>,
}

/// Stores the snapshot unless a newer one is stored already (an equal time is not older);
/// recorded by job `job_id`. Returns whether it was stored.
pub async fn store(pool: &PgPool, snapshot: &Snapshot<'_>, job_id: i64) -> Result<bool, sqlx::Error> {
    let change = Change::SubscriptionSnapshot {
        provider: snapshot.provider.to_owned(),
        subscription_id: snapshot.subscription_id.to_owned(),
        status: snapshot.status.to_owned(),
        updated_at: snapshot.updated_at,
    };
    let meta = Meta { account: snapshot.account, lead_id: snapshot.lead_id, job_id: Some(job_id), at: Utc::now() };
    Ok(projections::record_alone(pool, meta, &change).await?.changed > 0)
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
