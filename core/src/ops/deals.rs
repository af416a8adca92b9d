//! One deal as kommo-pay knows it: its payment history from the log, the projections (what its
//! card should show: links, payments, subscriptions, a run of failed payments) and its jobs.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use sqlx::PgPool;

use super::OpsError;
use super::events::{JOB_SUMMARY, JobSummary};
use super::history::{self, Entry};
use crate::config::Accounts;

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Deal {
    pub account: String,
    pub lead_id: i64,
    /// The payment history, oldest first.
    pub entries: Vec<Entry>,
    pub links: Vec<Link>,
    pub payments: Vec<Payment>,
    pub subscriptions: Vec<Subscription>,
    /// Open runs of failed subscription payments.
    pub failures: Vec<Failure>,
    /// Newest first.
    pub jobs: Vec<JobSummary>,
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Link {
    pub provider: String,
    pub link_id: String,
    pub url: String,
    #[sqlx(skip)]
    pub amount: String,
    pub amount_minor: i64,
    pub currency: String,
    /// active, paid, replaced or deactivated.
    pub status: String,
    pub issued_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Payment {
    pub provider: String,
    pub payment_id: String,
    #[sqlx(skip)]
    pub amount: String,
    #[sqlx(skip)]
    pub refunded: String,
    pub amount_minor: i64,
    pub refunded_minor: i64,
    pub currency: String,
    pub paid_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Subscription {
    pub provider: String,
    pub subscription_id: String,
    pub status: String,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Failure {
    pub provider: String,
    pub subscription_id: String,
    pub what: String,
    pub failed_at: DateTime<Utc>,
    /// When the deal was marked overdue (absent: still in the grace period).
    pub overdue_at: Option<DateTime<Utc>>,
}

/// An amount as people read it ("49.90 EUR"), or the raw figures when the code is no currency.
fn shown(minor: i64, code: &str) -> String {
    history::to_money((minor, code.to_owned())).map_or_else(|| format!("{minor} {code} (minor units)"), |money| money.to_string())
}

/// Deal `lead_id` of `account`; not found when the account is not configured or kommo-pay has
/// nothing about the deal.
pub async fn show(pool: &PgPool, accounts: &Accounts, account: &str, lead_id: i64) -> Result<Deal, OpsError> {
    if accounts.get(account).is_none() {
        return Err(OpsError::NotFound(format!("no account {account:?} is configured")));
    }
    let entries = history::of_deal(pool, account, lead_id).await?;
    let mut links: Vec<Link> = sqlx::query_as(
        "SELECT provider, link_id, url, amount_minor, currency, status, issued_at FROM payment_links
         WHERE account = $1 AND lead_id = $2 ORDER BY issued_at",
    )
    .bind(account)
    .bind(lead_id)
    .fetch_all(pool)
    .await?;
    links.iter_mut().for_each(|link| link.amount = shown(link.amount_minor, &link.currency));
    let mut payments: Vec<Payment> = sqlx::query_as(
        "SELECT provider, payment_id, amount_minor, refunded_minor, currency, paid_at FROM payments
         WHERE account = $1 AND lead_id = $2 ORDER BY paid_at",
    )
    .bind(account)
    .bind(lead_id)
    .fetch_all(pool)
    .await?;
    for payment in &mut payments {
        payment.amount = shown(payment.amount_minor, &payment.currency);
        payment.refunded = shown(payment.refunded_minor, &payment.currency);
    }
    let subscriptions =
        sqlx::query_as("SELECT provider, subscription_id, status, updated_at FROM subscriptions WHERE account = $1 AND lead_id = $2 ORDER BY updated_at")
            .bind(account)
            .bind(lead_id)
            .fetch_all(pool)
            .await?;
    let failures =
        sqlx::query_as("SELECT provider, subscription_id, what, failed_at, overdue_at FROM dunning WHERE account = $1 AND lead_id = $2 ORDER BY failed_at")
            .bind(account)
            .bind(lead_id)
            .fetch_all(pool)
            .await?;
    let jobs = sqlx::query_as(super::sql(format!("SELECT {JOB_SUMMARY} FROM jobs WHERE account = $1 AND lead_id = $2 ORDER BY id DESC LIMIT 200")))
        .bind(account)
        .bind(lead_id)
        .fetch_all(pool)
        .await?;
    Ok(Deal { account: account.to_owned(), lead_id, entries, links, payments, subscriptions, failures, jobs })
}

/// The account and deal of a Kommo deal URL as the browser shows it
/// (`https://acme.kommo.com/leads/detail/123`): the account is the one whose Kommo lives there.
pub fn from_url(accounts: &Accounts, given: &str) -> Result<(String, i64), OpsError> {
    let bad = || OpsError::BadRequest(format!("{given:?} is not a Kommo deal URL such as https://acme.kommo.com/leads/detail/123"));
    let url = url::Url::parse(given.trim()).map_err(|_| bad())?;
    let lead_id = url
        .path()
        .strip_prefix("/leads/detail/")
        .map(|rest| rest.trim_end_matches('/'))
        .and_then(|id| id.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .ok_or_else(bad)?;
    let account = accounts
        .iter()
        .find(|account| account.kommo.base_url.host_str() == url.host_str() && account.kommo.base_url.port_or_known_default() == url.port_or_known_default())
        .ok_or_else(|| OpsError::NotFound(format!("no configured account's Kommo is at {}", url.host_str().unwrap_or_default())))?;
    Ok((account.slug.to_string(), lead_id))
}
