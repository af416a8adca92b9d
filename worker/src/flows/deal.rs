//! What the flows do to a Kommo deal: its amount due, writes that a retry does not repeat, and
//! the manager's tasks and the feed's notes, each once per job. The deal's wire shapes are
//! `kommo_pay_core::kommo::lead`'s.

use anyhow::anyhow;
use kommo_pay_core::config::FieldsSection;
use kommo_pay_core::event_log::{self, Fact};
use kommo_pay_core::ids::{AccountSlug, JobId, LeadId};
use kommo_pay_core::kommo::activity::NewTask;
use kommo_pay_core::kommo::client::KommoClient;
use kommo_pay_core::kommo::lead::{FieldValue, Lead, LeadChanges};
use kommo_pay_core::money::{Currency, Money};
use serde_json::json;
use sqlx::PgPool;

use super::{AccountClients, Context, db_failed, kommo_failed};
use crate::JobError;
use kommo_pay_core::config::StatusesSection;
use kommo_pay_core::queue::ClaimedJob;

/// What the client is to pay for `deal`: the "amount due" field when configured and set, else the
/// deal's price; in the deal's currency field when configured and set, else the account's
/// default. The error says, for the manager, what to fix.
pub(super) fn amount_due(deal: &Lead, fields: &FieldsSection, default_currency: Currency) -> Result<Money, String> {
    let currency = match fields.currency.and_then(|id| deal.field(id)) {
        Some(code) => Currency::parse(&code).map_err(|e| format!("the deal's currency field: {e}"))?,
        None => default_currency,
    };
    let (amount, source) = match fields.amount_due.and_then(|id| deal.field(id)) {
        Some(amount) => (amount, "the Amount Due field"),
        None => (deal.price().unwrap_or_default(), "the deal's budget"),
    };
    if amount.trim().is_empty() || amount.trim() == "0" {
        return Err(format!("{source} is empty"));
    }
    let money = Money::parse_major(&amount, currency).map_err(|e| format!("{source}: {e}"))?;
    money.positive().map_err(|e| format!("{source}: {e}"))
}

/// Writes `changes` to lead `lead_id` unless its card already shows them. The card is read only
/// when `maybe_done` (an earlier attempt may have sent the PATCH, then died before its next
/// step); a first attempt writes without reading.
pub(super) async fn update_lead_once(kommo: &KommoClient, lead_id: LeadId, changes: &LeadChanges, maybe_done: bool) -> Result<(), JobError> {
    if maybe_done && kommo.lead(lead_id).await.map_err(kommo_failed)?.is_some_and(|lead| lead.shows(changes)) {
        tracing::info!(lead_id = lead_id.0, "the card already shows these values: an earlier attempt wrote them");
        return Ok(());
    }
    kommo.update_lead(lead_id, changes).await.map_err(kommo_failed)
}

/// Something went wrong that a manager must fix: a task for the deal's responsible manager, due
/// within a day, and the fact in the log. Done once per job (the log entry is written after the
/// task, and its presence stops a retry from adding a second one).
pub(super) async fn tell_manager(
    pool: &PgPool,
    kommo: &KommoClient,
    account: &AccountSlug,
    deal: &Lead,
    job_id: JobId,
    kind: &str,
    text: &str,
) -> Result<(), JobError> {
    let dedup_key = format!("{kind}:job:{job_id}");
    let Some(tried_before) = still_to_do(pool, account, &dedup_key, job_id).await? else { return Ok(()) };
    let due = chrono::Utc::now().timestamp() + 24 * 3600;
    let task = NewTask::call(deal.id, text, due, deal.responsible_user_id);
    kommo.add_task_once(&task, tried_before).await.map_err(kommo_failed)?;
    fail::fail_point!("deal.task_added");
    tracing::warn!(lead_id = deal.id.0, problem = text, "told the deal's manager with a Kommo task");
    let fact = Fact::of_job(account, kind, &dedup_key, deal.id, job_id, json!({ "task": text }));
    event_log::append_fact(pool, fact).await.map(drop).map_err(db_failed)
}

/// Something the deal's feed should show, nothing to act on: a note, and the fact in the log;
/// once per job, like [`tell_manager`].
pub(super) async fn note_once(
    pool: &PgPool,
    kommo: &KommoClient,
    account: &AccountSlug,
    lead_id: LeadId,
    job_id: JobId,
    kind: &str,
    text: &str,
) -> Result<(), JobError> {
    let dedup_key = format!("{kind}:job:{job_id}");
    let Some(tried_before) = still_to_do(pool, account, &dedup_key, job_id).await? else { return Ok(()) };
    kommo.add_lead_note_once(lead_id, text, tried_before).await.map_err(kommo_failed)?;
    fail::fail_point!("deal.note_added");
    let fact = Fact::of_job(account, kind, &dedup_key, lead_id, job_id, json!({ "note": text }));
    event_log::append_fact(pool, fact).await.map(drop).map_err(db_failed)
}

/// Launches Salesbot `bot` for lead `lead_id` for reminder `number`, once per job (the fact
/// `payment_link.reminder_bot` records it). Kommo cannot be asked whether a bot ran, so a crash
/// between the launch and its fact launches it again: at least once, as the link's own
/// Salesbot (ADR 16).
pub(super) async fn launch_once(
    pool: &PgPool,
    kommo: &KommoClient,
    account: &AccountSlug,
    lead_id: LeadId,
    job_id: JobId,
    bot: i64,
    number: i64,
) -> Result<(), JobError> {
    let kind = "payment_link.reminder_bot";
    let dedup_key = format!("{kind}:job:{job_id}");
    if still_to_do(pool, account, &dedup_key, job_id).await?.is_none() {
        return Ok(());
    }
    kommo.run_salesbot(bot, lead_id).await.map_err(kommo_failed)?;
    let fact = Fact::of_job(account, kind, &dedup_key, lead_id, job_id, json!({ "salesbot_id": bot, "reminder": number }));
    event_log::append_fact(pool, fact).await.map(drop).map_err(db_failed)
}

/// Where a job's task or note (fact `dedup_key`) stands, in one query: `None` when the log
/// records it done; otherwise whether an earlier attempt of the job ran (and may have written to
/// Kommo before it died, so Kommo is read before it is written).
async fn still_to_do(pool: &PgPool, account: &AccountSlug, dedup_key: &str, job_id: JobId) -> Result<Option<bool>, JobError> {
    let (logged, tried_before): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM events WHERE account = $1 AND source = 'internal' AND dedup_key = $2),
                coalesce((SELECT attempt > 0 FROM jobs WHERE id = $3), false)",
    )
    .bind(account)
    .bind(dedup_key)
    .bind(job_id)
    .fetch_one(pool)
    .await
    .map_err(db_failed)?;
    Ok((!logged).then_some(tried_before))
}

/// What a deal's manager is told with a task: the fact's `kind`, the `text`, and who, when not
/// the deal's responsible manager.
pub(super) struct Tell<'a> {
    pub kind: &'a str,
    pub text: &'a str,
    pub to: Option<i64>,
}

/// Sets the deal's payment status to `status` (picked from the configured options) and tells
/// the deal's manager (or `tell.to`) with a task.
pub(super) async fn mark_and_tell(
    context: &Context,
    clients: &AccountClients,
    job: &ClaimedJob,
    lead_id: LeadId,
    status: impl Fn(&StatusesSection) -> i64,
    tell: Tell<'_>,
) -> Result<(), JobError> {
    let kommo = &clients.kommo;
    let fields = clients.account.kommo.fields.as_ref().ok_or_else(|| JobError::permanent(anyhow!("the account has no kommo.fields")))?;
    let Some(mut deal) = kommo.lead(lead_id).await.map_err(kommo_failed)? else {
        tracing::info!(lead_id = lead_id.0, "the deal no longer exists");
        return Ok(());
    };
    let changes = LeadChanges::fields(vec![FieldValue::option(fields.payment_status, status(&fields.statuses))]);
    if !deal.shows(&changes) {
        kommo.update_lead(lead_id, &changes).await.map_err(kommo_failed)?;
    }
    fail::fail_point!("deal.status_written");
    if tell.to.is_some() {
        deal.responsible_user_id = tell.to;
    }
    tell_manager(&context.pool, kommo, &clients.account.slug, &deal, job.id, tell.kind, tell.text).await
}

/// Sets the deal's payment status field to the option `status`; a retry of `job` reads the card
/// first, so a PATCH an earlier attempt sent is not sent again.
pub(super) async fn set_payment_status(clients: &AccountClients, job: &ClaimedJob, lead_id: LeadId, status: i64) -> Result<(), JobError> {
    let fields = clients.account.kommo.fields.as_ref().ok_or_else(|| JobError::permanent(anyhow!("the account has no kommo.fields")))?;
    let changes = LeadChanges::fields(vec![FieldValue::option(fields.payment_status, status)]);
    update_lead_once(&clients.kommo, lead_id, &changes, job.attempt > 0).await?;
    fail::fail_point!("deal.status_written");
    Ok(())
}
