//! Stripe's money events: `stripe.payment` (a one-time payment succeeded, or an asynchronous one
//! failed), `stripe.invoice` (a subscription invoice was paid or failed), `stripe.refund`,
//! `stripe.subscription_updated` and `stripe.subscription_ended`.
//!
//! Stripe announces one payment several times (`checkout.session.completed`,
//! `payment_intent.succeeded`), in any order, each possibly redelivered. The payment intent id
//! makes them one: the first records the payment and updates the deal; the rest find it applied.

use std::sync::Arc;

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use kommo_pay_core::dunning::Failure;
use kommo_pay_core::ids::{AccountSlug, JobId, LeadId};
use kommo_pay_core::kommo::lead::LeadChanges;
use kommo_pay_core::money::{Currency, Money};
use kommo_pay_core::payment_links;
use kommo_pay_core::payments::{self, Received};
use kommo_pay_core::provider::Provider;
use kommo_pay_core::queue::ClaimedJob;
use kommo_pay_core::stripe::event::Object;
use kommo_pay_core::stripe::webhook::StripeEvent;
use kommo_pay_core::subscriptions::{self, Snapshot};

use super::deal::{Tell, mark_and_tell, note_once, tell_manager, update_lead_once};
use super::overdue::charge_failed;
use super::settle::{Payment, Settlement, record_refund, settle};
use super::{AccountClients, Context, RequiredClients, causing_stripe_event, db_failed, kommo_failed, stripe_failed};
use crate::JobError;

pub(super) async fn apply(context: Arc<Context>, job: ClaimedJob) -> Result<(), JobError> {
    let clients = context.clients(&job)?;
    let account = &clients.account;
    let pool = &context.pool;
    let event = causing_stripe_event(pool, &job).await?;
    let kind = event.kind.as_str();
    let payment = match &event.object {
        Object::CheckoutSession(session) if matches!(kind, "checkout.session.completed" | "checkout.session.async_payment_succeeded") => {
            if session.mode != "payment" {
                tracing::info!(kind, "a subscription checkout: its invoices carry the payments");
                return Ok(());
            }
            if session.payment_status != "paid" {
                tracing::info!(kind, "checkout completed but not paid yet; waiting for async_payment_succeeded");
                return Ok(());
            }
            let id = session.payment_intent.clone().ok_or_else(|| JobError::permanent(anyhow!("a paid checkout session without a payment_intent")))?;
            payment(id, session.payment_link.clone(), amount(session.amount_total, "amount_total")?, &session.currency, None, &event)?
        }
        Object::PaymentIntent(intent) if kind == "payment_intent.succeeded" => {
            let id = named(&intent.id).ok_or_else(|| JobError::permanent(anyhow!("a payment intent without an id")))?.to_owned();
            payment(id, None, amount(intent.amount_received, "amount_received")?, &intent.currency, None, &event)?
        }
        Object::CheckoutSession(session) if kind == "checkout.session.async_payment_failed" => {
            let lead_id = lead_of(&context, &account.slug, session.payment_link.as_deref(), job.lead_id).await?;
            let kommo = &clients.kommo;
            let Some(lead) = kommo.lead(lead_id).await.map_err(kommo_failed)? else { return Ok(()) };
            let text = "The client's bank payment through the Stripe link failed. Contact the client; the link stays open for another try.";
            return tell_manager(pool, kommo, &account.slug, &lead, job.id, "payment.failed", text).await;
        }
        _ => return Err(JobError::permanent(anyhow!("{kind} is not a payment event"))),
    };

    let lead_id = lead_of(&context, &account.slug, payment.link_id.as_deref(), job.lead_id).await?;
    let link = match &payment.link_id {
        Some(id) => payment_links::by_id(pool, &account.slug, id).await.map_err(db_failed)?,
        None => payment_links::active_for(pool, &account.slug, lead_id).await.map_err(db_failed)?,
    };
    let won_stage = account.handling(link.as_ref().map(|l| l.trigger.as_str())).won_status_id;
    let note = format!("Payment received: {} via Stripe", payment.amount);
    settle(&context, clients, &job, Settlement { provider: Provider::Stripe, payment: &payment, lead_id, won_stage, note, carried: event.metadata.clone() })
        .await?;
    deactivate_paid_links(clients, pool, lead_id, job.id).await
}

/// A paid deal must not be charged again through its Stripe links, whichever event came first.
async fn deactivate_paid_links(clients: &AccountClients, pool: &sqlx::PgPool, lead_id: LeadId, job_id: JobId) -> Result<(), JobError> {
    let account = &clients.account.slug;
    for link in payment_links::active_ids(pool, account, lead_id).await.map_err(db_failed)? {
        clients.stripe()?.deactivate_payment_link(&link, &format!("kommo-pay:deactivate:{link}")).await.map_err(stripe_failed)?;
        fail::fail_point!("payment.link_deactivated");
        payment_links::set_status(pool, account, lead_id, job_id, &link, "paid").await.map_err(db_failed)?;
    }
    Ok(())
}

/// `stripe.invoice`: a subscription invoice was paid, or its payment failed.
pub(super) async fn apply_invoice(context: Arc<Context>, job: ClaimedJob) -> Result<(), JobError> {
    let clients = context.clients(&job)?;
    let account = &clients.account;
    let event = causing_stripe_event(&context.pool, &job).await?;
    let kind = event.kind.as_str();
    let Object::Invoice(invoice) = &event.object else { return Err(JobError::permanent(anyhow!("{kind} is not about an invoice"))) };
    let id = named(&invoice.id).ok_or_else(|| JobError::permanent(anyhow!("an invoice without an id")))?.to_owned();
    // The subscription's metadata travels on its invoices; ingest read the lead from it.
    let lead_id = job.lead_id.ok_or_else(|| JobError::permanent(anyhow!("invoice {id} names no deal: its subscription metadata has no kommo_lead_id")))?;
    match kind {
        "invoice.paid" | "invoice.payment_succeeded" => {
            let payment = payment(id.clone(), None, amount(invoice.amount_paid, "amount_paid")?, &invoice.currency, invoice.billing_period, &event)?;
            if payment.amount.minor() == 0 {
                tracing::info!(invoice = %id, "a zero invoice (a trial): nothing was paid");
                return Ok(());
            }
            let note = format!("Payment received: {} via Stripe (subscription invoice {id})", payment.amount);
            settle(
                &context,
                clients,
                &job,
                Settlement { provider: Provider::Stripe, payment: &payment, lead_id, won_stage: None, note, carried: event.metadata.clone() },
            )
            .await?;
            deactivate_paid_links(clients, &context.pool, lead_id, job.id).await
        }
        "invoice.payment_failed" => {
            if payments::find(&context.pool, &account.slug, Provider::Stripe, &id).await.map_err(db_failed)?.is_some() {
                tracing::info!(invoice = %id, "the invoice is paid already; a late failure changes nothing");
                return Ok(());
            }
            let failed = payment(id.clone(), None, amount(invoice.amount_due, "amount_due")?, &invoice.currency, invoice.billing_period, &event)?;
            let subscription = invoice.subscription.as_deref().unwrap_or(&id);
            let what = format!("{} (Stripe invoice {id})", failed.amount);
            let failure = Failure {
                account: &account.slug,
                provider: Provider::Stripe,
                subscription_id: subscription,
                lead_id,
                failed_at: failed.at,
                what: &what,
                billed_for: failed.billed_for,
            };
            charge_failed(&context, clients, &job, failure).await
        }
        other => Err(JobError::permanent(anyhow!("{other} is not an invoice event"))),
    }
}

/// `stripe.subscription_ended`: the client's subscription was cancelled.
pub(super) async fn apply_subscription_ended(context: Arc<Context>, job: ClaimedJob) -> Result<(), JobError> {
    let clients = context.clients(&job)?;
    let event = causing_stripe_event(&context.pool, &job).await?;
    let id = named(event.object.id()).unwrap_or("?");
    let lead_id = job.lead_id.ok_or_else(|| JobError::permanent(anyhow!("subscription {id} names no deal: its metadata has no kommo_lead_id")))?;
    let text = format!("The client's Stripe subscription {id} was cancelled. Find out why, and whether to win the client back.");
    let trigger = payment_links::trigger_of(&context.pool, &clients.account.slug, lead_id).await.map_err(db_failed)?;
    let tell = Tell { kind: "subscription.cancelled", text: &text, to: clients.account.handling(trigger.as_deref()).success_manager_id };
    mark_and_tell(&context, clients, &job, lead_id, |s| s.cancelled, tell).await
}

/// `stripe.subscription_updated`: a snapshot of a subscription, stored like Lemon Squeezy's
/// (`subscriptions::store`, newest wins). The newest saying it is not being paid (`past_due`,
/// `unpaid`) opens a run of failures, in case the failed invoice's own event was lost, unless the
/// deal was paid at or after the snapshot (a late delivery changes nothing).
pub(super) async fn apply_subscription_updated(context: Arc<Context>, job: ClaimedJob) -> Result<(), JobError> {
    let clients = context.clients(&job)?;
    let pool = &context.pool;
    let event = causing_stripe_event(pool, &job).await?;
    let Object::Subscription(subscription) = &event.object else {
        return Err(JobError::permanent(anyhow!("{} is not about a subscription", event.kind)));
    };
    let id = named(&subscription.id).unwrap_or("?");
    let lead_id = job.lead_id.ok_or_else(|| JobError::permanent(anyhow!("subscription {id} names no deal: its metadata has no kommo_lead_id")))?;
    let account = &clients.account.slug;
    let snapshot = Snapshot {
        account,
        provider: Provider::Stripe,
        subscription_id: id,
        lead_id,
        status: subscription.status.as_deref().ok_or_else(|| JobError::permanent(anyhow!("subscription {id}'s snapshot has no status")))?,
        updated_at: created_at(&event),
    };
    let what = format!("Stripe subscription {id} ({})", snapshot.status);
    // Decided where it is stored, under the deal's lock: the newest unpaid one opens a run unless
    // a payment overtook it, the newest paid one ends the subscription's runs.
    let stored = subscriptions::store(pool, &snapshot, job.id, &what).await.map_err(db_failed)?;
    tracing::info!(subscription = id, status = snapshot.status, newest = stored.newest, run = ?stored.run, "subscription snapshot stored");
    Ok(())
}

/// `stripe.refund`: a charge was refunded, fully or partly. Stripe reports the running total.
pub(super) async fn apply_refund(context: Arc<Context>, job: ClaimedJob) -> Result<(), JobError> {
    let clients = context.clients(&job)?;
    let account = &clients.account;
    let pool = &context.pool;
    let event = causing_stripe_event(pool, &job).await?;
    let Object::Charge(charge) = &event.object else { return Err(JobError::permanent(anyhow!("{} is not about a charge", event.kind))) };
    let intent = charge.payment_intent.as_deref().ok_or_else(|| JobError::permanent(anyhow!("a refunded charge without a payment_intent")))?;
    let refunded_total = charge.amount_refunded;
    let paid = payment(intent.to_owned(), None, amount(charge.amount, "amount")?, &charge.currency, None, &event)?;
    // Our payment record first (the charge's metadata is only a copy), then the metadata.
    let lead_id = match payments::find(pool, &account.slug, Provider::Stripe, intent).await.map_err(db_failed)? {
        Some(known) => known.lead_id,
        None => job.lead_id.ok_or_else(|| JobError::permanent(anyhow!("refunded payment {intent} names no deal")))?,
    };
    let received = Received {
        account: &account.slug,
        provider: Provider::Stripe,
        payment_id: intent,
        lead_id,
        link_id: None,
        amount: paid.amount,
        paid_at: paid.at,
        billed_for: None,
        job_id: job.id,
    };
    let Some(refunded) = record_refund(&context, clients, &received, refunded_total).await? else { return Ok(()) };
    let kommo = &clients.kommo;
    let trigger = payment_links::trigger_of(pool, &account.slug, lead_id).await.map_err(db_failed)?;
    if let Some(stage) = account.handling(trigger.as_deref()).refund_status_id {
        update_lead_once(kommo, lead_id, &LeadChanges { status_id: Some(stage), ..LeadChanges::default() }, job.attempt > 0).await?;
    }
    let whole = if refunded_total >= paid.amount.minor() { "in full" } else { "partly" };
    let text = format!("Refunded {whole}: {refunded} of {} via Stripe", paid.amount);
    note_once(pool, kommo, &account.slug, lead_id, job.id, "refund.noted", &text).await
}

fn payment(
    id: String,
    link_id: Option<String>,
    minor: i64,
    currency: &str,
    billed_for: Option<DateTime<Utc>>,
    event: &StripeEvent,
) -> Result<Payment, JobError> {
    let currency = Currency::parse(currency).map_err(JobError::permanent)?;
    Ok(Payment { id, link_id, amount: Money::from_minor(minor, currency), at: created_at(event), billed_for })
}

/// An object's id, when it has one (a typed object reads a missing id as empty).
fn named(id: &str) -> Option<&str> {
    Some(id).filter(|id| !id.is_empty())
}

/// An amount the payment must have; `key` names it in the error.
fn amount(minor: Option<i64>, key: &str) -> Result<i64, JobError> {
    minor.ok_or_else(|| JobError::permanent(anyhow!("the payment has no {key}")))
}

/// When Stripe created the event: the time of the change it announces.
fn created_at(event: &StripeEvent) -> DateTime<Utc> {
    event.created.unwrap_or_else(Utc::now)
}

/// The deal a payment belongs to: our own link → deal mapping first, the metadata second.
async fn lead_of(context: &Context, account: &AccountSlug, link_id: Option<&str>, metadata_lead: Option<LeadId>) -> Result<LeadId, JobError> {
    if let Some(link_id) = link_id
        && let Some(link) = payment_links::by_id(&context.pool, account, link_id).await.map_err(db_failed)?
    {
        return Ok(link.lead_id);
    }
    metadata_lead
        .ok_or_else(|| JobError::permanent(anyhow!("the payment names no deal: its link {link_id:?} is not one of ours and its metadata has no kommo_lead_id")))
}
