//! Provider subscriptions and their deals (`subscriptions`).

use crate::ids::{AccountSlug, JobId, LeadId};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::dunning::{self, Failure, Run};
use crate::projections::{self, Change, Meta};
use crate::provider::Provider;

/// A subscription snapshot as the provider sent it.
pub struct Snapshot<'a> {
    pub account: &'a AccountSlug,
    pub provider: Provider,
    pub subscription_id: &'a str,
    pub lead_id: LeadId,
    pub status: &'a str,
    pub updated_at: DateTime<Utc>,
}

impl Snapshot<'_> {
    /// The provider says the subscription is not being paid (Stripe and Lemon Squeezy alike).
    pub fn unpaid(&self) -> bool {
        matches!(self.status, "past_due" | "unpaid")
    }

    /// The provider says it is being paid (Stripe's `active`/`trialing`, Lemon Squeezy's
    /// `active`/`on_trial`).
    fn paid(&self) -> bool {
        matches!(self.status, "active" | "trialing" | "on_trial")
    }
}

/// What storing a snapshot did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// It is the newest snapshot of its subscription (an equal time is not older).
    pub newest: bool,
    /// When it is the newest and says the subscription is unpaid: the run of failures it opened
    /// or continued, or that a payment overtook it.
    pub run: Option<Run>,
}

/// Stores the snapshot unless a newer one is stored already, recorded by job `job_id`, and acts
/// on it when it is the newest: one saying the subscription is unpaid opens a run of failures
/// (`what` describes it for the manager), in case the failed charge's own event was lost; one
/// saying it is paid ends the subscription's runs that began before it. All in one transaction
/// under the deal's lock, so two snapshots (or a snapshot and a payment) handled at the same
/// moment end as they would one after the other, in the provider's order (ADR 14).
pub async fn store(pool: &PgPool, snapshot: &Snapshot<'_>, job_id: JobId, what: &str) -> Result<Stored, sqlx::Error> {
    let change = Change::SubscriptionSnapshot {
        provider: snapshot.provider.to_string(),
        subscription_id: snapshot.subscription_id.to_owned(),
        status: snapshot.status.to_owned(),
        updated_at: snapshot.updated_at,
    };
    let meta = Meta { account: snapshot.account, lead_id: snapshot.lead_id, job_id: Some(job_id), at: Utc::now() };
    let mut tx = pool.begin().await?;
    projections::lock_deal(&mut tx, snapshot.account, snapshot.lead_id).await?;
    let newest = projections::record(&mut tx, meta, &change).await?.changed > 0;
    let mut run = None;
    if newest && snapshot.unpaid() {
        let failure = Failure {
            account: snapshot.account,
            provider: snapshot.provider,
            subscription_id: snapshot.subscription_id,
            lead_id: snapshot.lead_id,
            failed_at: snapshot.updated_at,
            what,
            billed_for: None,
        };
        run = Some(dunning::record_failure_in(&mut tx, &failure, job_id).await?);
    } else if newest && snapshot.paid() {
        let ended =
            Change::FailureRunEnded { provider: snapshot.provider.to_string(), subscription_id: snapshot.subscription_id.to_owned(), at: snapshot.updated_at };
        projections::record(&mut tx, meta, &ended).await?;
    }
    tx.commit().await?;
    Ok(Stored { newest, run })
}

/// The deal of a subscription we have seen.
pub async fn lead_of(pool: &PgPool, account: &AccountSlug, provider: Provider, subscription_id: &str) -> Result<Option<LeadId>, sqlx::Error> {
    sqlx::query_scalar("SELECT lead_id FROM subscriptions WHERE account = $1 AND provider = $2 AND subscription_id = $3")
        .bind(account)
        .bind(provider)
        .bind(subscription_id)
        .fetch_optional(pool)
        .await
}
