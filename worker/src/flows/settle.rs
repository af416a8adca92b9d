//! Settling a payment on its deal, for every provider: recorded once per provider payment, applied
//! by the one job that holds its lease (ADR 0007), the deal's status computed from the record so
//! that payments and refunds converge whatever their order.

use std::collections::BTreeMap;

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use kommo_pay_core::dunning;
use kommo_pay_core::ids::LeadId;
use kommo_pay_core::kommo::lead::{FieldValue, LeadChanges};
use kommo_pay_core::money::{Currency, Money};
use kommo_pay_core::payments::{self, Application, Received};
use kommo_pay_core::provider::Provider;
use kommo_pay_core::queue::ClaimedJob;

use super::checkout_fields;
use super::deal::update_lead_once;
use super::{AccountClients, Context, db_failed, kommo_failed};
use crate::JobError;

/// One payment as an event describes it.
pub(super) struct Payment {
    /// `pi_…`.
    pub id: String,
    /// The Payment Link it came through, when the event says.
    pub link_id: Option<String>,
    pub amount: Money,
    pub at: DateTime<Utc>,
    /// The billing period it pays for, for a subscription invoice whose provider says.
    pub billed_for: Option<DateTime<Utc>>,
}

/// A payment to settle on its deal.
pub(super) struct Settlement<'a> {
    pub provider: Provider,
    pub payment: &'a Payment,
    pub lead_id: LeadId,
    /// The stage to move the deal to while it stands paid.
    pub won_stage: Option<i64>,
    /// The note for the deal's feed.
    pub note: String,
    /// What the checkout carried (custom data, metadata), for `[accounts.deals] fields_from_checkout`.
    pub carried: BTreeMap<String, String>,
}

/// Records a payment once and, in the one job that wins the lease, brings the deal in line:
/// status, date, amounts and payment id, the won stage while it stands paid, the fields the
/// checkout's data fills, and the note.
pub(super) async fn settle(context: &Context, clients: &AccountClients, job: &ClaimedJob, settlement: Settlement<'_>) -> Result<(), JobError> {
    let Settlement { provider, payment, lead_id, won_stage, note, carried } = settlement;
    let account = &clients.account;
    let pool = &context.pool;
    let received = Received {
        account: &account.slug,
        provider,
        payment_id: &payment.id,
        lead_id,
        link_id: payment.link_id.as_deref(),
        amount: payment.amount,
        paid_at: payment.at,
        billed_for: payment.billed_for,
        job_id: job.id,
    };
    let application = payments::record(pool, &received).await.map_err(db_failed)?;
    // Paid: whatever failed before it is made good, whichever job applies the payment. After the
    // record, so that a failure decided meanwhile either sees the payment or is cleared here.
    dunning::clear(pool, &account.slug, lead_id, received.order(), job.id).await.map_err(db_failed)?;
    fail::fail_point!("payment.recorded");
    match application {
        // Another announcement of the same payment is being applied right now; look again later.
        Application::Busy => Err(JobError::retryable(anyhow!("payment {} is being applied by another job", payment.id))),
        Application::Done => Ok(()),
        Application::Yours { resumed } => {
            write_payment_state(context, clients, lead_id, won_stage, job.attempt > 0 || resumed).await?;
            fail::fail_point!("payment.card_written");
            checkout_fields::write(clients, lead_id, &carried, job.attempt > 0 || resumed).await?;
            clients.kommo.add_lead_note_once(lead_id, &note, job.attempt > 0 || resumed).await.map_err(kommo_failed)?;
            fail::fail_point!("payment.note_added");
            payments::mark_applied(pool, &received).await.map_err(db_failed)?;
            tracing::info!(lead_id = lead_id.0, %provider, payment = %payment.id, amount = %payment.amount, "deal marked paid");
            Ok(())
        }
    }
}

/// Writes what the deal's record says to its card, the same whichever of its jobs runs last
/// (ADR 14): its newest payment in the provider's order — Paid, Partially refunded or Refunded,
/// the date, the amounts and the payment id — or Overdue while a run of failures that stands
/// after every payment is overdue; and, when it stands paid, `won_stage`. When `maybe_done` (an
/// earlier attempt may have written it), the card is read first and a PATCH it already shows is
/// skipped.
pub(super) async fn write_payment_state(
    context: &Context,
    clients: &AccountClients,
    lead_id: LeadId,
    won_stage: Option<i64>,
    maybe_done: bool,
) -> Result<(), JobError> {
    let account = &clients.account;
    let fields = account.kommo.fields.as_ref().ok_or_else(|| JobError::permanent(anyhow!("the account has no kommo.fields")))?;
    let newest = payments::newest(&context.pool, &account.slug, lead_id)
        .await
        .map_err(db_failed)?
        .ok_or_else(|| JobError::retryable(anyhow!("no payment of deal {lead_id} is recorded yet")))?;
    let (payment_id, settled) = (&newest.payment_id, &newest.settled);
    let currency = Currency::parse(&settled.currency).map_err(JobError::permanent)?;
    let statuses = &fields.statuses;
    let status = match settled.refunded_minor {
        // Open runs stand after every recorded payment (a payment clears those before it, and a
        // failure before a recorded payment opens none): an overdue one is what the deal is.
        _ if dunning::overdue(&context.pool, &account.slug, lead_id).await.map_err(db_failed)? => statuses.overdue,
        0 => statuses.paid,
        refunded if refunded >= settled.amount_minor => statuses.refunded,
        _ => statuses.partially_refunded,
    };
    let mut values = vec![
        FieldValue::option(fields.payment_status, status),
        FieldValue::value(fields.payment_date, settled.paid_at.timestamp()),
        FieldValue::value(fields.paid_amount, Money::from_minor(settled.amount_minor, currency).major()),
        FieldValue::value(fields.payment_id, payment_id.as_str()),
    ];
    if let Some(field) = fields.refunded_amount.filter(|_| settled.refunded_minor > 0) {
        values.push(FieldValue::value(field, Money::from_minor(settled.refunded_minor, currency).major()));
    }
    let changes = LeadChanges { status_id: won_stage.filter(|_| status == statuses.paid), custom_fields_values: values };
    update_lead_once(&clients.kommo, lead_id, &changes, maybe_done).await
}

/// Records a refund of a settled (or not yet settled) payment, Stripe's and Lemon Squeezy's
/// running total (the fact `refund.applied`), and writes the deal's resulting status. Returns the
/// refunded total when it grew, `None` when this total was recorded before (a late or repeated
/// event, or a retry after a crash: the deal's status is written again all the same).
pub(super) async fn record_refund(
    context: &Context,
    clients: &AccountClients,
    received: &Received<'_>,
    refunded_total: i64,
) -> Result<Option<Money>, JobError> {
    let new = payments::record_refund(&context.pool, received, refunded_total).await.map_err(db_failed)?;
    fail::fail_point!("refund.recorded");
    // Written whatever: a repeat or a retry finds the card read first, and a PATCH it shows skipped.
    write_payment_state(context, clients, received.lead_id, None, true).await?;
    fail::fail_point!("refund.card_written");
    if !new {
        tracing::info!(payment = received.payment_id, "no new refund: another job recorded this total");
        return Ok(None);
    }
    Ok(Some(Money::from_minor(refunded_total, received.amount.currency())))
}
