//! Payment links issued for deals (`payment_links`), kept with the `payment_link.*` events.

use crate::ids::{AccountSlug, JobId, LeadId};
use chrono::Utc;
use sqlx::PgPool;

use crate::money::{Currency, Money};
use crate::projections::{self, Change, Meta};
use crate::provider::Provider;
use crate::recorder::Recorder;

#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub struct PaymentLink {
    /// `stripe` or `lemonsqueezy`.
    pub provider: String,
    pub link_id: String,
    pub lead_id: LeadId,
    pub trigger: String,
    pub url: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: String,
    /// The job that created it: its record is that job's decision that the deal gets this link.
    pub issued_by_job: Option<i64>,
    pub note_added_at: Option<chrono::DateTime<chrono::Utc>>,
    pub salesbot_run_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl PaymentLink {
    pub fn amount(&self) -> Option<Money> {
        Currency::parse(&self.currency).ok().map(|c| Money::from_minor(self.amount_minor, c))
    }
}

/// The deal's active link, whichever provider issued it.
pub async fn active_for(pool: &PgPool, account: &AccountSlug, lead_id: LeadId) -> Result<Option<PaymentLink>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM payment_links WHERE account = $1 AND lead_id = $2 AND status = 'active'
         ORDER BY issued_at DESC LIMIT 1",
    )
    .bind(account)
    .bind(lead_id)
    .fetch_optional(pool)
    .await
}

/// The trigger of the deal's newest link, whatever its status: the trigger whose deal-handling
/// options (its refund stage, its success manager) apply to the deal's payments.
pub async fn trigger_of(pool: &PgPool, account: &AccountSlug, lead_id: LeadId) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT trigger FROM payment_links WHERE account = $1 AND lead_id = $2 ORDER BY issued_at DESC LIMIT 1")
        .bind(account)
        .bind(lead_id)
        .fetch_optional(pool)
        .await
}

/// What an issuing job finds of the deal's links.
#[derive(Debug)]
pub struct Known {
    /// The link this job issued, whatever its status now: an earlier attempt's decision.
    pub issued_by_job: Option<PaymentLink>,
    /// The deal's active link, whichever job issued it.
    pub active: Option<PaymentLink>,
}

/// The unpaid links of `provider` for exactly `amount`, issued before `paid_at`: the deals an
/// order that carries no deal id may have paid for (reconciliation's fallback).
pub async fn unpaid_matching(
    pool: &PgPool,
    account: &AccountSlug,
    provider: Provider,
    amount: Money,
    paid_at: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<PaymentLink>, sqlx::Error> {
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
    pub account: &'a AccountSlug,
    pub provider: Provider,
    pub lead_id: LeadId,
    pub trigger: &'a str,
    pub link_id: &'a str,
    pub url: &'a str,
    pub amount: Money,
    pub job_id: JobId,
}

/// Records a new link as the deal's active one, the previous active one as replaced, and the
/// fact in the event log, in one transaction (shared with the links of other deals recorded at
/// the same moment). A retry that records the same link changes nothing and gets the link as it
/// is now.
pub async fn record_issued(pool: &PgPool, recorder: &Recorder, issued: &Issued<'_>) -> Result<PaymentLink, sqlx::Error> {
    // The row as this change inserts it.
    let link = PaymentLink {
        provider: issued.provider.to_string(),
        link_id: issued.link_id.to_owned(),
        lead_id: issued.lead_id,
        trigger: issued.trigger.to_owned(),
        url: issued.url.to_owned(),
        amount_minor: issued.amount.minor(),
        currency: issued.amount.currency().code().to_owned(),
        status: "active".to_owned(),
        issued_by_job: Some(issued.job_id.0),
        note_added_at: None,
        salesbot_run_at: None,
    };
    let change = Change::LinkIssued {
        provider: link.provider.clone(),
        link_id: link.link_id.clone(),
        trigger: link.trigger.clone(),
        url: link.url.clone(),
        amount_minor: link.amount_minor,
        currency: link.currency.clone(),
    };
    let recorded = recorder.record(Meta { account: issued.account, lead_id: issued.lead_id, job_id: Some(issued.job_id), at: Utc::now() }, change).await?;
    if recorded.changed == 1 {
        // It inserted the row: no need to read it back.
        return Ok(link);
    }
    // A retry recorded the link already: it is as it is now (its note may be added, it may be paid).
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
pub async fn replaced(pool: &PgPool, account: &AccountSlug, lead_id: LeadId) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT link_id FROM payment_links WHERE account = $1 AND provider = $3 AND lead_id = $2 AND status = 'replaced'")
        .bind(account)
        .bind(lead_id)
        .bind(Provider::Stripe.as_str())
        .fetch_all(pool)
        .await
}

/// Moves a Stripe link of the deal to `status` (`paid`, `deactivated`); call it once Stripe has
/// deactivated it. `job_id` is the job that did.
pub async fn set_status(pool: &PgPool, account: &AccountSlug, lead_id: LeadId, job_id: JobId, link_id: &str, status: &str) -> Result<(), sqlx::Error> {
    let change = Change::LinkStatus { provider: Provider::Stripe.to_string(), link_id: link_id.to_owned(), status: status.to_owned() };
    projections::record_alone(pool, Meta { account, lead_id, job_id: Some(job_id), at: Utc::now() }, &change).await.map(drop)
}

/// The deal's active links' ids.
pub async fn active_ids(pool: &PgPool, account: &AccountSlug, lead_id: LeadId) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT link_id FROM payment_links WHERE account = $1 AND provider = $3 AND lead_id = $2 AND status = 'active'")
        .bind(account)
        .bind(lead_id)
        .bind(Provider::Stripe.as_str())
        .fetch_all(pool)
        .await
}

/// Records that the link's note was added, so a retry does not repeat it.
pub async fn mark_note_added(recorder: &Recorder, account: &AccountSlug, link: &PaymentLink, job_id: JobId) -> Result<(), sqlx::Error> {
    let change = Change::LinkNoteAdded { provider: link.provider.clone(), link_id: link.link_id.clone() };
    recorder.record(Meta { account, lead_id: link.lead_id, job_id: Some(job_id), at: Utc::now() }, change).await.map(drop)
}

/// Records that the link's Salesbot was launched, so a retry does not repeat it.
pub async fn mark_salesbot_run(recorder: &Recorder, account: &AccountSlug, link: &PaymentLink, job_id: JobId) -> Result<(), sqlx::Error> {
    let change = Change::LinkSalesbotRun { provider: link.provider.clone(), link_id: link.link_id.clone() };
    recorder.record(Meta { account, lead_id: link.lead_id, job_id: Some(job_id), at: Utc::now() }, change).await.map(drop)
}

/// The link with id `link_id`, whichever provider issued it.
pub async fn by_id(pool: &PgPool, account: &AccountSlug, link_id: &str) -> Result<Option<PaymentLink>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM payment_links WHERE account = $1 AND link_id = $2").bind(account).bind(link_id).fetch_optional(pool).await
}

/// A deal's issuing lease, held by one job until [`stop_issuing`].
#[derive(Debug)]
pub struct Lease {
    /// An abandoned attempt held the lease before (its worker died, or it is five minutes old):
    /// it may have written to the deal, so read first.
    pub resumed: bool,
    /// The deal's links as the job found them on taking the lease (while it holds it, no other
    /// job issues one).
    pub known: Known,
}

/// Takes the deal's issuing lease for `job_id` and reads the deal's links it needs to decide,
/// in one statement; `None` while another job holds it. A fresh row is a free deal; an existing
/// one is taken over when it is this job's own (an attempt that died holding it) or five minutes
/// old, and otherwise left to its holder. (`xmax = 0` marks a row this statement inserted rather
/// than updated.)
pub async fn start_issuing(pool: &PgPool, account: &AccountSlug, lead_id: LeadId, job_id: JobId) -> Result<Option<Lease>, sqlx::Error> {
    let taken: Option<(bool, sqlx::types::Json<Vec<PaymentLink>>)> = sqlx::query_as(
        "WITH lease AS (
             INSERT INTO payment_link_issuing AS i (account, lead_id, job_id) VALUES ($1, $2, $3)
             ON CONFLICT (account, lead_id) DO UPDATE SET job_id = EXCLUDED.job_id, since = now()
                 WHERE i.job_id = EXCLUDED.job_id OR i.since < now() - interval '5 minutes'
             RETURNING xmax = 0 AS fresh)
         SELECT fresh, (SELECT COALESCE(json_agg(l ORDER BY l.issued_at DESC), '[]') FROM payment_links l
                        WHERE l.account = $1 AND l.lead_id = $2 AND (l.issued_by_job = $3 OR l.status = 'active'))
         FROM lease",
    )
    .bind(account)
    .bind(lead_id)
    .bind(job_id)
    .fetch_optional(pool)
    .await?;
    let Some((fresh, sqlx::types::Json(links))) = taken else { return Ok(None) };
    let issued_by_job = links.iter().find(|link| link.issued_by_job == Some(job_id.0)).cloned();
    let known = Known { issued_by_job, active: links.into_iter().find(|link| link.status == "active") };
    Ok(Some(Lease { resumed: !fresh, known }))
}

/// Gives the lease back (only if `job_id` still holds it), whatever the outcome.
pub async fn stop_issuing(pool: &PgPool, account: &AccountSlug, lead_id: LeadId, job_id: JobId) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM payment_link_issuing WHERE account = $1 AND lead_id = $2 AND job_id = $3")
        .bind(account)
        .bind(lead_id)
        .bind(job_id)
        .execute(pool)
        .await?;
    Ok(())
}
