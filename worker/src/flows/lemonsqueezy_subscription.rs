//! `lemonsqueezy.subscription`: a subscription's lifecycle and its payments.
//!
//! `subscription_created` stores the subscription → deal mapping: the payment events
//! (`subscription_payment_*`, about a subscription invoice) carry no custom data of their own and
//! find their deal through it. Lifecycle events are snapshots, applied only when not older than
//! the one stored, so a late delivery cannot undo a newer state.

use std::sync::Arc;

use anyhow::anyhow;
use chrono::Utc;
use kommo_pay_core::dunning::Failure;
use kommo_pay_core::lemonsqueezy::event::Object;
use kommo_pay_core::payments::{self, Received};
use kommo_pay_core::provider::Provider;
use kommo_pay_core::queue::ClaimedJob;
use kommo_pay_core::subscriptions::{self, Snapshot};

use super::deal::{set_payment_status, tell_manager};
use super::overdue::charge_failed;
use super::settle::{Payment, Settlement, record_refund, settle};
use super::{Context, causing_lemonsqueezy_event, db_failed, kommo_failed};
use crate::JobError;

pub(super) async fn apply(context: Arc<Context>, job: ClaimedJob) -> Result<(), JobError> {
    let clients = context.clients(&job)?;
    let account = &clients.account;
    let pool = &context.pool;
    let event = causing_lemonsqueezy_event(pool, &job).await?;
    let name = event.kind.as_str();
    let data_id = &event.id;
    // Payment events are about an invoice; the subscription is an attribute.
    let subscription_id = match &event.object {
        Object::SubscriptionInvoice(invoice) => invoice.subscription_id.clone(),
        _ => data_id.clone(),
    };
    if let Object::SubscriptionInvoice(invoice) = &event.object
        && matches!(name, "subscription_payment_success" | "subscription_payment_recovered")
        && invoice.billing_reason == "initial"
    {
        tracing::info!(invoice = %data_id, "the first invoice is the order's money, counted with order_created");
        return Ok(());
    }
    let mapped = subscriptions::lead_of(pool, &account.slug, Provider::LemonSqueezy, &subscription_id).await.map_err(db_failed)?;
    // Lemon Squeezy sends a subscription's events at about the same time, in no set order: an
    // invoice may come before the `subscription_created` that maps it to its deal, so its job
    // waits and tries again (and dead-letters only when the mapping never comes).
    let lead_id = mapped.or(job.lead_id).ok_or_else(|| {
        JobError::retryable(anyhow!("subscription {subscription_id} names no deal yet: no subscription_created with a kommo_lead_id has been seen"))
    })?;
    let fields = account.kommo.fields.as_ref().ok_or_else(|| JobError::permanent(anyhow!("the account has no kommo.fields")))?;

    if let Object::SubscriptionInvoice(invoice) = &event.object {
        let total = invoice.total.money().map_err(JobError::permanent)?;
        let payment =
            Payment { id: format!("invoice-{data_id}"), link_id: None, amount: total, at: invoice.created_at.unwrap_or_else(Utc::now), billed_for: None };
        return match name {
            "subscription_payment_success" | "subscription_payment_recovered" => {
                let note = format!("Payment received: {total} — subscription renewal (invoice {data_id})");
                settle(
                    &context,
                    clients,
                    &job,
                    Settlement { provider: Provider::LemonSqueezy, payment: &payment, lead_id, won_stage: None, note, carried: Default::default() },
                )
                .await
            }
            "subscription_payment_failed" => {
                if payments::find(pool, &account.slug, Provider::LemonSqueezy, &payment.id).await.map_err(db_failed)?.is_some() {
                    tracing::info!(invoice = %data_id, "the invoice is paid already; a late failure changes nothing");
                    return Ok(());
                }
                let what = format!("{total} (Lemon Squeezy invoice {data_id})");
                let failure = Failure {
                    account: &account.slug,
                    provider: Provider::LemonSqueezy,
                    subscription_id: &subscription_id,
                    lead_id,
                    failed_at: payment.at,
                    what: &what,
                    billed_for: None,
                };
                charge_failed(&context, clients, &job, failure).await
            }
            "subscription_payment_refunded" => {
                let refunded_total = invoice.refunded_amount;
                let received = Received {
                    account: &account.slug,
                    provider: Provider::LemonSqueezy,
                    payment_id: &payment.id,
                    lead_id,
                    link_id: None,
                    amount: total,
                    paid_at: payment.at,
                    billed_for: None,
                    job_id: job.id,
                };
                record_refund(&context, clients, &received, refunded_total).await.map(drop)
            }
            other => {
                tracing::info!(name = other, "nothing to do for this subscription payment event");
                Ok(())
            }
        };
    }

    let Object::Subscription(subscription) = &event.object else {
        return Err(JobError::permanent(anyhow!("{name} is about {:?}, not a subscription", event.object)));
    };
    let snapshot = Snapshot {
        account: &account.slug,
        provider: Provider::LemonSqueezy,
        subscription_id: &subscription_id,
        lead_id,
        status: &subscription.status,
        updated_at: subscription.updated_at.unwrap_or_else(Utc::now),
    };
    // A snapshot saying the subscription is not being paid opens a run of failures, in case the
    // payment event was lost; one saying it is paid ends them (decided where it is stored).
    let what = format!("the subscription to {} (Lemon Squeezy subscription {subscription_id}, {})", subscription.product_name, snapshot.status);
    let stored = subscriptions::store(pool, &snapshot, job.id, &what).await.map_err(db_failed)?;
    let newest = stored.newest;
    fail::fail_point!("subscription.stored");
    match name {
        "subscription_cancelled" => {
            let Some(mut deal) = clients.kommo.lead(lead_id).await.map_err(kommo_failed)? else { return Ok(()) };
            let ends = subscription.ends_on.as_deref().unwrap_or("the end of the period");
            let product = &subscription.product_name;
            let text = format!(
                "The client cancelled the Lemon Squeezy subscription to {product}. It stays active until {ends}: find out why, and whether to win the client back."
            );
            let trigger = kommo_pay_core::payment_links::trigger_of(pool, &account.slug, lead_id).await.map_err(db_failed)?;
            if let Some(manager) = account.handling(trigger.as_deref()).success_manager_id {
                deal.responsible_user_id = Some(manager);
            }
            tell_manager(pool, &clients.kommo, &account.slug, &deal, job.id, "subscription.cancelled", &text).await
        }
        "subscription_expired" if newest => set_payment_status(clients, &job, lead_id, fields.statuses.cancelled).await,
        "subscription_resumed" | "subscription_unpaused" if newest => set_payment_status(clients, &job, lead_id, fields.statuses.paid).await,
        _ => {
            tracing::info!(name, subscription = %subscription_id, newest, run = ?stored.run, "subscription snapshot stored");
            Ok(())
        }
    }
}
