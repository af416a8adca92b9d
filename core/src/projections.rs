//! The projections: tables the flows read that are folds of the event log — `payment_links`,
//! `payments`, `subscriptions`, `dunning` and the deals of `self_serve_orders`.
//!
//! Every change to them is a [`Change`], made by [`record`]: it appends the change to the log as
//! an internal fact and applies it, in the caller's transaction. [`rebuild`] empties the tables and
//! applies every recorded change again in the log's order, with the same code, so the rebuilt
//! tables equal the live ones. Leases (`payments.applying_*`, `self_serve_orders.creating_*`) are
//! not projections: they only say who is working on something right now.

use crate::ids::{AccountSlug, JobId, LeadId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// One change to a projection, as recorded in the log (`payload.change` names the variant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A new link becomes the deal's active one; the active one before it is replaced.
    LinkIssued {
        provider: String,
        link_id: String,
        trigger: String,
        url: String,
        amount_minor: i64,
        currency: String,
    },
    /// `paid` or `deactivated`.
    LinkStatus {
        provider: String,
        link_id: String,
        status: String,
    },
    LinkNoteAdded {
        provider: String,
        link_id: String,
    },
    LinkSalesbotRun {
        provider: String,
        link_id: String,
    },
    /// A payment announced by the provider (once per payment id).
    PaymentReceived {
        provider: String,
        payment_id: String,
        link_id: Option<String>,
        amount_minor: i64,
        currency: String,
        paid_at: DateTime<Utc>,
        /// The start of the billing period a subscription invoice pays for: its place in the
        /// deal's order (ADR 14). Absent for other payments and in facts recorded before it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        billed_for: Option<DateTime<Utc>>,
    },
    /// The deal was updated for the payment.
    PaymentApplied {
        provider: String,
        payment_id: String,
    },
    /// The provider's running total of refunds of a payment; it never goes down.
    RefundRecorded {
        provider: String,
        payment_id: String,
        amount_minor: i64,
        currency: String,
        paid_at: DateTime<Utc>,
        refunded_minor: i64,
    },
    /// A subscription snapshot; applied only when not older than the stored one.
    SubscriptionSnapshot {
        provider: String,
        subscription_id: String,
        status: String,
        updated_at: DateTime<Utc>,
    },
    /// A charge failed: a run of failures opens unless one is open.
    FailureRunOpened {
        provider: String,
        subscription_id: String,
        run_id: Uuid,
        failed_at: DateTime<Utc>,
        what: String,
        /// The billing period of the failed invoice, as for a payment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        billed_for: Option<DateTime<Utc>>,
    },
    /// The provider says the subscription is being paid again (a newer snapshot saying so): its
    /// runs that began no later than `at` end. (ADR 14)
    FailureRunEnded {
        provider: String,
        subscription_id: String,
        at: DateTime<Utc>,
    },
    /// The run outlasted the grace period. (`what` failed, for the log's reader.)
    FailureRunOverdue {
        run_id: Uuid,
        what: String,
    },
    /// A payment ends the deal's runs that stand before it: `paid_at` is the payment's place in
    /// the deal's order (its billing period, or when it was paid), compared with each run's.
    FailureRunsCleared {
        paid_at: DateTime<Utc>,
    },
    /// The deal created for a self-serve order.
    SelfServeDealCreated {
        provider: String,
        order_id: String,
    },
}

impl Change {
    /// The fact's kind in the log.
    fn kind(&self) -> &'static str {
        match self {
            Change::LinkIssued { .. } => "payment_link.issued",
            Change::LinkStatus { .. } => "payment_link.status_changed",
            Change::LinkNoteAdded { .. } => "payment_link.note_added",
            Change::LinkSalesbotRun { .. } => "payment_link.salesbot_run",
            Change::PaymentReceived { .. } => "payment.received",
            Change::PaymentApplied { .. } => "payment.applied",
            Change::RefundRecorded { .. } => "refund.applied",
            Change::SubscriptionSnapshot { .. } => "subscription.snapshot",
            Change::FailureRunOpened { .. } => "payment.failure_run_opened",
            Change::FailureRunOverdue { .. } => "subscription.overdue",
            Change::FailureRunEnded { .. } => "payment.failure_run_ended",
            Change::FailureRunsCleared { .. } => "payment.failure_runs_cleared",
            Change::SelfServeDealCreated { .. } => "self_serve.deal_created",
        }
    }

    /// The fact's dedup key: the same change recorded twice (a retried job) is one fact. That is
    /// only right for changes that have no further effect when applied again, whatever happened
    /// in between (inserts that keep the first, values that only grow, newer-wins snapshots).
    fn key(&self, lead_id: LeadId) -> String {
        let kind = self.kind();
        match self {
            Change::LinkIssued { provider, link_id, .. } | Change::LinkNoteAdded { provider, link_id } | Change::LinkSalesbotRun { provider, link_id } => {
                format!("{kind}:{provider}:{link_id}")
            }
            Change::LinkStatus { provider, link_id, status } => format!("{kind}:{provider}:{link_id}:{status}"),
            Change::PaymentReceived { provider, payment_id, .. } | Change::PaymentApplied { provider, payment_id } => format!("{kind}:{provider}:{payment_id}"),
            Change::RefundRecorded { provider, payment_id, refunded_minor, .. } => format!("{kind}:{provider}:{payment_id}:{refunded_minor}"),
            Change::SubscriptionSnapshot { provider, subscription_id, status, updated_at } => {
                format!("{kind}:{provider}:{subscription_id}:{}:{status}", updated_at.timestamp_micros())
            }
            // What these two do depends on what is open when they apply, not on what they carry:
            // each is a fact of its own, applied again in the same order.
            Change::FailureRunOpened { run_id, .. } => format!("{kind}:{run_id}"),
            Change::FailureRunsCleared { paid_at } => format!("{kind}:{lead_id}:{}:{}", paid_at.timestamp_micros(), Uuid::now_v7()),
            Change::FailureRunOverdue { run_id, .. } => format!("overdue:{run_id}"),
            Change::FailureRunEnded { provider, subscription_id, at } => format!("{kind}:{provider}:{subscription_id}:{}", at.timestamp_micros()),
            Change::SelfServeDealCreated { provider, order_id } => format!("{kind}:{provider}:{order_id}"),
        }
    }
}

/// Whose change it is and when.
#[derive(Debug, Clone, Copy)]
pub struct Meta<'a> {
    pub account: &'a AccountSlug,
    pub lead_id: LeadId,
    /// The job that made it; none for the scheduler's own changes.
    pub job_id: Option<JobId>,
    pub at: DateTime<Utc>,
}

/// What [`record`] did.
#[derive(Debug, Clone, Copy)]
pub struct Recorded {
    /// Rows the change touched (0: it changed nothing, e.g. an older snapshot).
    pub changed: u64,
    /// The fact's id, when it is new to the log.
    pub fact: Option<Uuid>,
}

/// Records `change` in the log and applies it, in the caller's transaction.
///
/// Changes of one deal are serialised (a transaction-scoped advisory lock on the deal), and the
/// fact is appended after the change is applied, so the log's order of a deal's facts is the
/// order their changes took effect: what a rebuild replays.
pub async fn record(conn: &mut PgConnection, meta: Meta<'_>, change: &Change) -> Result<Recorded, sqlx::Error> {
    Ok(record_all(conn, &[(meta, change)]).await?.remove(0))
}

/// [`record`] for several changes at once (of many deals, as a group of jobs makes them), in
/// their order, with a statement per step rather than per change where the changes allow.
pub async fn record_all(conn: &mut PgConnection, changes: &[(Meta<'_>, &Change)]) -> Result<Vec<Recorded>, sqlx::Error> {
    lock_deals(conn, changes.iter().map(|(meta, _)| (meta.account, meta.lead_id))).await?;
    let changed = apply_all(conn, changes).await?;
    let keys: Vec<String> = changes.iter().map(|(meta, change)| change.key(meta.lead_id)).collect();
    let facts: Vec<crate::event_log::Fact<'_>> = changes
        .iter()
        .zip(&keys)
        .map(|((meta, change), key)| {
            let mut payload = serde_json::to_value(change).expect("a change serialises");
            payload["at"] = serde_json::to_value(meta.at).expect("a time serialises");
            crate::event_log::Fact {
                account: meta.account,
                kind: change.kind(),
                dedup_key: key,
                lead_id: Some(meta.lead_id),
                caused_by_event: None,
                caused_by_job: meta.job_id,
                payload,
            }
        })
        .collect();
    let facts = crate::event_log::append_facts(&mut *conn, &facts).await?;
    Ok(changed.into_iter().zip(facts).map(|(changed, fact)| Recorded { changed, fact }).collect())
}

/// Serialises the deal's changes until the caller's transaction ends: a decision that reads
/// the projections and then records a change takes it first, so no other change of the deal
/// comes between the read and the record.
pub async fn lock_deal(conn: &mut PgConnection, account: &AccountSlug, lead_id: LeadId) -> Result<(), sqlx::Error> {
    lock_deals(conn, [(account, lead_id)]).await
}

/// [`lock_deal`] for several deals, in one statement. The locks are taken in the order of their
/// keys, so two transactions locking overlapping deals cannot deadlock.
async fn lock_deals<'a>(conn: &mut PgConnection, deals: impl IntoIterator<Item = (&'a AccountSlug, LeadId)>) -> Result<(), sqlx::Error> {
    let (accounts, leads): (Vec<&str>, Vec<i64>) = deals.into_iter().map(|(account, lead_id)| (account.as_str(), lead_id.0)).unzip();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(key) FROM (
             SELECT DISTINCT hashtextextended(account || ':' || lead_id::text, 0) AS key
             FROM unnest($1::text[], $2::int8[]) AS d(account, lead_id) ORDER BY key) AS deals",
    )
    .bind(accounts)
    .bind(leads)
    .execute(&mut *conn)
    .await
    .map(drop)
}

/// Whether job `job_id` recorded `change` for the deal: what a retry of that job asks to learn
/// that its decision was made (the change recorded) even though recording it again changes
/// nothing now.
pub async fn recorded_by_job(pool: &PgPool, account: &AccountSlug, lead_id: LeadId, change: &Change, job_id: JobId) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE account = $1 AND source = 'internal' AND dedup_key = $2 AND caused_by_job = $3)")
        .bind(account)
        .bind(change.key(lead_id))
        .bind(job_id)
        .fetch_one(pool)
        .await
}

/// [`record`] in a transaction of its own.
pub async fn record_alone(pool: &PgPool, meta: Meta<'_>, change: &Change) -> Result<Recorded, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let recorded = record(&mut tx, meta, change).await?;
    tx.commit().await?;
    Ok(recorded)
}

/// Applies a change to the tables; returns the rows it touched. The one place these tables are
/// written (besides leases), live and in a rebuild.
async fn apply(conn: &mut PgConnection, meta: Meta<'_>, change: &Change) -> Result<u64, sqlx::Error> {
    let Meta { account, lead_id, at, .. } = meta;
    let done = match change {
        Change::LinkIssued { .. } => return Ok(issue_links(conn, &[(meta, change)]).await?[0]),
        Change::LinkStatus { provider, link_id, status } => {
            sqlx::query("UPDATE payment_links SET status = $4 WHERE account = $1 AND provider = $2 AND link_id = $3 AND status <> $4")
                .bind(account)
                .bind(provider)
                .bind(link_id)
                .bind(status)
                .execute(&mut *conn)
                .await?
        }
        Change::LinkNoteAdded { provider, link_id } => {
            sqlx::query("UPDATE payment_links SET note_added_at = $4 WHERE account = $1 AND provider = $2 AND link_id = $3 AND note_added_at IS NULL")
                .bind(account)
                .bind(provider)
                .bind(link_id)
                .bind(at)
                .execute(&mut *conn)
                .await?
        }
        Change::LinkSalesbotRun { provider, link_id } => {
            sqlx::query("UPDATE payment_links SET salesbot_run_at = $4 WHERE account = $1 AND provider = $2 AND link_id = $3 AND salesbot_run_at IS NULL")
                .bind(account)
                .bind(provider)
                .bind(link_id)
                .bind(at)
                .execute(&mut *conn)
                .await?
        }
        Change::PaymentReceived { provider, payment_id, link_id, amount_minor, currency, paid_at, billed_for } => {
            // The first announcement wins (a refund may even have created the row first): the
            // payment's fact carries one key, so a later announcement must change nothing. Only
            // the billing period, which a refund does not know, is filled in if missing.
            sqlx::query(
                "INSERT INTO payments AS p (account, provider, payment_id, lead_id, link_id, amount_minor, currency, paid_at, billed_for)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (account, provider, payment_id) DO UPDATE SET billed_for = excluded.billed_for
                     WHERE p.billed_for IS NULL AND excluded.billed_for IS NOT NULL",
            )
            .bind(account)
            .bind(provider)
            .bind(payment_id)
            .bind(lead_id)
            .bind(link_id)
            .bind(amount_minor)
            .bind(currency)
            .bind(paid_at)
            .bind(billed_for)
            .execute(&mut *conn)
            .await?
        }
        Change::PaymentApplied { provider, payment_id } => {
            sqlx::query("UPDATE payments SET applied_at = $4, applying_job = NULL, applying_since = NULL WHERE account = $1 AND provider = $2 AND payment_id = $3 AND applied_at IS NULL")
                .bind(account)
                .bind(provider)
                .bind(payment_id)
                .bind(at)
                .execute(&mut *conn)
                .await?
        }
        Change::RefundRecorded { provider, payment_id, amount_minor, currency, paid_at, refunded_minor } => {
            sqlx::query(
                "INSERT INTO payments AS p (account, provider, payment_id, lead_id, amount_minor, currency, paid_at, refunded_minor)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (account, provider, payment_id) DO UPDATE SET refunded_minor = excluded.refunded_minor
                     WHERE p.refunded_minor < excluded.refunded_minor",
            )
            .bind(account)
            .bind(provider)
            .bind(payment_id)
            .bind(lead_id)
            .bind(amount_minor)
            .bind(currency)
            .bind(paid_at)
            .bind(refunded_minor)
            .execute(&mut *conn)
            .await?
        }
        Change::SubscriptionSnapshot { provider, subscription_id, status, updated_at } => {
            sqlx::query(
                "INSERT INTO subscriptions AS s (account, provider, subscription_id, lead_id, status, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (account, provider, subscription_id) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at
                     WHERE s.updated_at <= excluded.updated_at",
            )
            .bind(account)
            .bind(provider)
            .bind(subscription_id)
            .bind(lead_id)
            .bind(status)
            .bind(updated_at)
            .execute(&mut *conn)
            .await?
        }
        Change::FailureRunOpened { provider, subscription_id, run_id, failed_at, what, billed_for } => {
            sqlx::query(
                "INSERT INTO dunning (account, provider, subscription_id, run_id, lead_id, failed_at, what, billed_for) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (account, provider, subscription_id) DO NOTHING",
            )
            .bind(account)
            .bind(provider)
            .bind(subscription_id)
            .bind(run_id)
            .bind(lead_id)
            .bind(failed_at)
            .bind(what)
            .bind(billed_for)
            .execute(&mut *conn)
            .await?
        }
        Change::FailureRunOverdue { run_id, .. } => {
            sqlx::query("UPDATE dunning SET overdue_at = $3 WHERE account = $1 AND run_id = $2 AND overdue_at IS NULL")
                .bind(account)
                .bind(run_id)
                .bind(at)
                .execute(&mut *conn)
                .await?
        }
        Change::FailureRunEnded { provider, subscription_id, at } => {
            sqlx::query("DELETE FROM dunning WHERE account = $1 AND provider = $2 AND subscription_id = $3 AND failed_at <= $4")
                .bind(account)
                .bind(provider)
                .bind(subscription_id)
                .bind(at)
                .execute(&mut *conn)
                .await?
        }
        Change::FailureRunsCleared { paid_at } => {
            sqlx::query("DELETE FROM dunning WHERE account = $1 AND lead_id = $2 AND coalesce(billed_for, failed_at) <= $3")
                .bind(account)
                .bind(lead_id)
                .bind(paid_at)
                .execute(&mut *conn)
                .await?
        }
        Change::SelfServeDealCreated { provider, order_id } => {
            sqlx::query(
                "INSERT INTO self_serve_orders AS o (account, provider, order_id, lead_id) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (account, provider, order_id) DO UPDATE SET lead_id = excluded.lead_id WHERE o.lead_id IS NULL",
            )
            .bind(account)
            .bind(provider)
            .bind(order_id)
            .bind(lead_id)
            .execute(&mut *conn)
            .await?
        }
    };
    Ok(done.rows_affected())
}

/// Applies `changes` in their order; returns the rows each touched. New links of distinct deals
/// (a group's issuing jobs) go in one statement; anything else one change at a time.
async fn apply_all(conn: &mut PgConnection, changes: &[(Meta<'_>, &Change)]) -> Result<Vec<u64>, sqlx::Error> {
    let new_links = changes.len() > 1 && changes.iter().all(|(_, change)| matches!(change, Change::LinkIssued { .. }));
    if new_links && distinct_deals(changes) {
        return issue_links(conn, changes).await;
    }
    let mut changed = Vec::with_capacity(changes.len());
    for (meta, change) in changes {
        changed.push(apply(conn, *meta, change).await?);
    }
    Ok(changed)
}

fn distinct_deals(changes: &[(Meta<'_>, &Change)]) -> bool {
    let deals: std::collections::HashSet<(&AccountSlug, LeadId)> = changes.iter().map(|(meta, _)| (meta.account, meta.lead_id)).collect();
    deals.len() == changes.len()
}

/// Applies `LinkIssued` changes, each of another deal: each new link becomes its deal's active
/// one and the active one before it is replaced. (The UPDATE sees the table as it was before
/// this statement, so it never touches the links it inserts.) Returns 1 for each link inserted,
/// 0 for one recorded already.
async fn issue_links(conn: &mut PgConnection, changes: &[(Meta<'_>, &Change)]) -> Result<Vec<u64>, sqlx::Error> {
    let mut rows = IssuedRows::default();
    for (meta, change) in changes {
        let Change::LinkIssued { provider, link_id, trigger, url, amount_minor, currency } = change else { unreachable!("only new links are issued") };
        rows.account.push(meta.account.as_str());
        rows.provider.push(provider);
        rows.link_id.push(link_id);
        rows.lead_id.push(meta.lead_id.0);
        rows.trigger.push(trigger);
        rows.url.push(url);
        rows.amount_minor.push(*amount_minor);
        rows.currency.push(currency);
        rows.issued_at.push(meta.at);
        rows.issued_by_job.push(meta.job_id.map(|id| id.0));
    }
    let inserted: std::collections::HashSet<(String, i64)> = sqlx::query_as(
        "WITH inserted AS (
             INSERT INTO payment_links (account, provider, link_id, lead_id, trigger, url, amount_minor, currency, issued_at, issued_by_job)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[], $7::int8[], $8::text[], $9::timestamptz[], $10::int8[])
             ON CONFLICT DO NOTHING
             RETURNING account, link_id, lead_id),
         replaced AS (
             UPDATE payment_links p SET status = 'replaced' FROM inserted i
             WHERE p.account = i.account AND p.lead_id = i.lead_id AND p.status = 'active' AND p.link_id <> i.link_id)
         SELECT account, lead_id FROM inserted",
    )
    .bind(&rows.account)
    .bind(&rows.provider)
    .bind(&rows.link_id)
    .bind(&rows.lead_id)
    .bind(&rows.trigger)
    .bind(&rows.url)
    .bind(&rows.amount_minor)
    .bind(&rows.currency)
    .bind(&rows.issued_at)
    .bind(&rows.issued_by_job)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    // Each change is its deal's only one here, so a row inserted for the deal is the change's.
    // (Its link id alone would not do: a provider that answered two deals with one link
    // inserted it for one of them.)
    Ok(rows.account.iter().zip(&rows.lead_id).map(|(account, lead_id)| u64::from(inserted.contains(&(account.to_string(), *lead_id)))).collect())
}

/// The columns of new links, for `unnest`.
#[derive(Default)]
struct IssuedRows<'a> {
    account: Vec<&'a str>,
    provider: Vec<&'a str>,
    link_id: Vec<&'a str>,
    lead_id: Vec<i64>,
    trigger: Vec<&'a str>,
    url: Vec<&'a str>,
    amount_minor: Vec<i64>,
    currency: Vec<&'a str>,
    issued_at: Vec<DateTime<Utc>>,
    issued_by_job: Vec<Option<i64>>,
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rebuilt {
    /// Recorded changes applied again.
    pub changes: u64,
}

/// Why a rebuild was refused.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("{0} job(s) are running: stop the workers first, so that nothing changes the projections during the rebuild")]
    JobsRunning(i64),
    #[error("fact {seq} in the log cannot be read as a change: {problem}")]
    Unreadable { seq: i64, problem: String },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Empties the projections and applies every recorded change again, in the log's order, in one
/// transaction (readers see the old tables until it commits). Refused while jobs run.
pub async fn rebuild(pool: &PgPool) -> Result<Rebuilt, RebuildError> {
    let mut tx = pool.begin().await?;
    // No worker may claim or finish a job meanwhile (their changes would interleave).
    sqlx::query("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE").execute(&mut *tx).await?;
    let running: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'running'").fetch_one(&mut *tx).await?;
    if running > 0 {
        return Err(RebuildError::JobsRunning(running));
    }
    // Leases of unfinished self-serve claims survive: they are work in progress, not projection.
    sqlx::query("TRUNCATE payment_links, payments, subscriptions, dunning").execute(&mut *tx).await?;
    sqlx::query("UPDATE self_serve_orders SET lead_id = NULL").execute(&mut *tx).await?;
    let mut changes = 0;
    let mut after = 0_i64;
    loop {
        let facts: Vec<(i64, AccountSlug, i64, Option<i64>, Value)> = sqlx::query_as(
            "SELECT seq, account, lead_id, caused_by_job, payload FROM events
             WHERE source = 'internal' AND payload ? 'change' AND lead_id IS NOT NULL AND seq > $1 ORDER BY seq LIMIT 1000",
        )
        .bind(after)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = facts.last() else { break };
        after = last.0;
        for (seq, account, lead_id, job_id, payload) in facts {
            let unreadable = |problem: String| RebuildError::Unreadable { seq, problem };
            let at: DateTime<Utc> = serde_json::from_value(payload["at"].clone()).map_err(|e| unreadable(format!("at: {e}")))?;
            let change: Change = serde_json::from_value(payload).map_err(|e| unreadable(e.to_string()))?;
            apply(&mut tx, Meta { account: &account, lead_id: LeadId(lead_id), job_id: job_id.map(JobId), at }, &change).await?;
            changes += 1;
        }
    }
    sqlx::query("DELETE FROM self_serve_orders WHERE lead_id IS NULL AND creating_job IS NULL").execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(Rebuilt { changes })
}
