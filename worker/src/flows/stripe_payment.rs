//! `stripe.payment`: a one-time payment succeeded (or an asynchronous one failed); bring the
//! deal in line.
//!
//! Stripe announces one payment several times (`checkout.session.completed`,
//! `payment_intent.succeeded`), in any order, each possibly redelivered. The payment intent id
//! makes them one: the first records the payment and updates the deal; the rest find it applied.

use std::sync::Arc;

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use kommo_pay_core::money::{Currency, Money};
use kommo_pay_core::payment_links;
use kommo_pay_core::payments::{self, Application, Received};
use kommo_pay_core::queue::ClaimedJob;
use serde_json::{Value, json};

use super::deal::{Deal, field_enum, field_value, tell_manager};
use super::{Context, causing_event, db_failed, kommo_failed, stripe_failed};
use crate::JobError;

/// One payment as an event describes it.
struct Payment {
    /// `pi_…`.
    id: String,
    /// The Payment Link it came through, when the event says.
    link_id: Option<String>,
    amount: Money,
    at: DateTime<Utc>,
}

pub(super) async fn apply(context: Arc<Context>, job: ClaimedJob) -> Result<(), JobError> {
    let clients = context.clients(&job)?;
    let account = &clients.account;
    let pool = &context.pool;
    let event = causing_event(pool, &job).await?;
    let kind = event.get("type").and_then(Value::as_str).unwrap_or_default();
    let object = &event["data"]["object"];
    let text = |key: &str| object.get(key).and_then(Value::as_str).map(str::to_owned);

    let payment = match kind {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            if text("mode").as_deref() != Some("payment") {
                tracing::info!(kind, "a subscription checkout: its invoices carry the payments");
                return Ok(());
            }
            if text("payment_status").as_deref() != Some("paid") {
                tracing::info!(kind, "checkout completed but not paid yet; waiting for async_payment_succeeded");
                return Ok(());
            }
            let id = text("payment_intent").ok_or_else(|| JobError::permanent(anyhow!("a paid checkout session without a payment_intent")))?;
            payment(id, text("payment_link"), object, "amount_total", &event)?
        }
        "payment_intent.succeeded" => {
            let id = text("id").ok_or_else(|| JobError::permanent(anyhow!("a payment intent without an id")))?;
            payment(id, None, object, "amount_received", &event)?
        }
        "checkout.session.async_payment_failed" => {
            let lead_id = lead_of(&context, &account.slug, text("payment_link").as_deref(), job.lead_id).await?;
            let kommo = clients.kommo()?;
            let Some(lead) = kommo.lead(lead_id).await.map_err(kommo_failed)? else { return Ok(()) };
            let text = "The client's bank payment through the Stripe link failed. Contact the client; the link stays open for another try.";
            return tell_manager(pool, kommo, &account.slug, &Deal::from_lead(&lead)?, job.id, "payment.failed", text).await;
        }
        other => return Err(JobError::permanent(anyhow!("{other} is not a payment event"))),
    };

    let lead_id = lead_of(&context, &account.slug, payment.link_id.as_deref(), job.lead_id).await?;
    let received = Received {
        account: &account.slug,
        provider: "stripe",
        payment_id: &payment.id,
        lead_id,
        link_id: payment.link_id.as_deref(),
        amount: payment.amount,
        paid_at: payment.at,
        job_id: job.id,
    };
    let kommo = clients.kommo()?;
    let application = payments::record(pool, &received).await.map_err(db_failed)?;
    if application == Application::Busy {
        // Another announcement of the same payment is being applied right now; look again later.
        return Err(JobError::retryable(anyhow!("payment {} is being applied by another job", payment.id)));
    }
    if application == Application::Yours {
        let fields = account.kommo.fields.as_ref().ok_or_else(|| JobError::dead_letter(anyhow!("the account has no kommo.fields")))?;
        let mut changes = json!({
            "custom_fields_values": [
                field_enum(fields.payment_status, fields.statuses.paid),
                field_value(fields.payment_date, json!(payment.at.timestamp())),
                field_value(fields.paid_amount, json!(payment.amount.major())),
                field_value(fields.payment_id, json!(payment.id)),
            ]
        });
        let link = match &payment.link_id {
            Some(id) => payment_links::find(pool, &account.slug, id).await.map_err(db_failed)?,
            None => payment_links::active_for(pool, &account.slug, lead_id).await.map_err(db_failed)?,
        };
        if let Some(status_id) = link.and_then(|l| account.trigger(&l.trigger).and_then(|t| t.paid_status_id)) {
            changes["status_id"] = json!(status_id);
        }
        kommo.update_lead(lead_id, &changes).await.map_err(kommo_failed)?;
        let note = json!([{ "entity_id": lead_id, "note_type": "common", "params": { "text": format!("Payment received: {} via Stripe", payment.amount) } }]);
        kommo.add_lead_notes(&note).await.map_err(kommo_failed)?;
        payments::mark_applied(pool, &account.slug, "stripe", &payment.id).await.map_err(db_failed)?;
        tracing::info!(lead_id, payment = %payment.id, amount = %payment.amount, "deal marked paid");
    }

    // A paid deal must not be charged again through its link, whichever event came first.
    let stripe = clients.stripe()?;
    for link in payment_links::active_ids(pool, &account.slug, lead_id).await.map_err(db_failed)? {
        stripe.deactivate_payment_link(&link, &format!("kommo-pay:deactivate:{link}")).await.map_err(stripe_failed)?;
        payment_links::set_status(pool, &account.slug, &link, "paid").await.map_err(db_failed)?;
    }
    Ok(())
}

fn payment(id: String, link_id: Option<String>, object: &Value, amount_key: &str, event: &Value) -> Result<Payment, JobError> {
    let minor = object.get(amount_key).and_then(Value::as_i64).ok_or_else(|| JobError::permanent(anyhow!("the payment has no {amount_key}")))?;
    let code = object.get("currency").and_then(Value::as_str).unwrap_or_default();
    let currency = Currency::parse(code).map_err(JobError::permanent)?;
    let at = event.get("created").and_then(Value::as_i64).and_then(|t| DateTime::from_timestamp(t, 0)).unwrap_or_else(Utc::now);
    Ok(Payment { id, link_id, amount: Money::from_minor(minor, currency), at })
}

/// The deal a payment belongs to: our own link → deal mapping first, the metadata second.
async fn lead_of(context: &Context, account: &str, link_id: Option<&str>, metadata_lead: Option<i64>) -> Result<i64, JobError> {
    if let Some(link_id) = link_id {
        if let Some(link) = payment_links::find(&context.pool, account, link_id).await.map_err(db_failed)? {
            return Ok(link.lead_id);
        }
    }
    metadata_lead.ok_or_else(|| {
        JobError::dead_letter(anyhow!(
            "the payment names no deal: its link {link_id:?} is not one of ours and its metadata has no kommo_lead_id"
        ))
    })
}
