//! `lemonsqueezy.order`: an order was created (paid, pending, failed or fraudulent) or refunded.
//!
//! The deal comes from the checkout's custom data (`meta.custom_data.kommo_lead_id`). Amounts are
//! integer cents in the order's own currency. Lemon Squeezy sends no event id: ingest keyed the
//! event on the order (and the refunded total), and the payment record keys on the order id, so
//! resent and reordered deliveries settle once.

use std::sync::Arc;

use anyhow::anyhow;
use chrono::Utc;
use kommo_pay_core::ids::LeadId;
use kommo_pay_core::kommo::lead::{FieldValue, LeadChanges, NewContact, NewLead, NewLeadEmbedded, Tag};
use kommo_pay_core::lemonsqueezy::event::{Object, Order};
use kommo_pay_core::lemonsqueezy::webhook::LemonSqueezyEvent;
use kommo_pay_core::money::Money;
use kommo_pay_core::payment_links;
use kommo_pay_core::payments::Received;
use kommo_pay_core::provider::Provider;
use kommo_pay_core::queue::ClaimedJob;
use kommo_pay_core::self_serve::{self, Claim};

use super::deal::{tell_manager, update_lead_once};
use super::settle::{Payment, Settlement, record_refund, settle};
use super::{AccountClients, Context, causing_lemonsqueezy_event, db_failed, kommo_failed};
use crate::JobError;

/// The custom data key that names the self-serve deal's manager (a Kommo user id).
const MANAGER_CUSTOM_KEY: &str = "manager_id";

/// Kommo's "won" stage, in every pipeline.
const WON: i64 = 142;

pub(super) async fn apply(context: Arc<Context>, job: ClaimedJob) -> Result<(), JobError> {
    let clients = context.clients(&job)?;
    let account = &clients.account;
    let event = causing_lemonsqueezy_event(&context.pool, &job).await?;
    let Object::Order(order) = &event.object else {
        return Err(JobError::permanent(anyhow!("{} is about {:?}, not an order", event.kind, event.object)));
    };
    let (name, id) = (event.kind.as_str(), &event.id);
    let total = order.total.money().map_err(JobError::permanent)?;
    let number = &order.number;
    let product = if order.product_name.is_empty() { "an order" } else { &order.product_name };
    let status = order.status.as_str();
    let lead_id = match job.lead_id {
        Some(lead_id) => lead_id,
        // A self-serve buyer: the deal made for this order earlier, or a new one once it is paid.
        None => match self_serve::lead_of(&context.pool, &account.slug, Provider::LemonSqueezy, id).await.map_err(db_failed)? {
            Some(lead_id) => lead_id,
            None if name == "order_created" && status == "paid" => self_serve_deal(&context, clients, &job, &event, order, total).await?,
            None => {
                tracing::info!(order = %id, name, status, "an order without a deal, and not a paid one: nothing to do");
                return Ok(());
            }
        },
    };
    let at = order.created_at.unwrap_or_else(Utc::now);
    let payment = Payment { id: id.clone(), link_id: None, amount: total, at, billed_for: None };

    match (name, status) {
        ("order_created", "paid") => {
            let link = payment_links::active_for(&context.pool, &account.slug, lead_id).await.map_err(db_failed)?;
            let won_stage = account.handling(link.as_ref().map(|l| l.trigger.as_str())).won_status_id.unwrap_or(WON);
            let note = format!("Payment received: {total} — {product} (order #{number})");
            settle(
                &context,
                clients,
                &job,
                Settlement { provider: Provider::LemonSqueezy, payment: &payment, lead_id, won_stage: Some(won_stage), note, carried: event.custom.clone() },
            )
            .await
        }
        ("order_created", "pending") => {
            tracing::info!(order = %id, "order pending: waiting for it to be paid");
            Ok(())
        }
        ("order_created", status @ ("failed" | "fraudulent")) => {
            let Some(lead) = clients.kommo.lead(lead_id).await.map_err(kommo_failed)? else { return Ok(()) };
            let what = if status == "failed" { "failed" } else { "was flagged as fraudulent" };
            let text = format!("Lemon Squeezy order #{number} for {total} ({product}) {what}. Contact the client.");
            tell_manager(&context.pool, &clients.kommo, &account.slug, &lead, job.id, "payment.failed", &text).await
        }
        ("order_refunded", _) => {
            let refunded_total = order.refunded_amount;
            let received = Received {
                account: &account.slug,
                provider: Provider::LemonSqueezy,
                payment_id: id,
                lead_id,
                link_id: None,
                amount: total,
                paid_at: at,
                billed_for: None,
                job_id: job.id,
            };
            let Some(refunded) = record_refund(&context, clients, &received, refunded_total).await? else { return Ok(()) };
            let trigger = payment_links::trigger_of(&context.pool, &account.slug, lead_id).await.map_err(db_failed)?;
            if let Some(stage) = account.handling(trigger.as_deref()).refund_status_id {
                update_lead_once(&clients.kommo, lead_id, &LeadChanges { status_id: Some(stage), ..LeadChanges::default() }, job.attempt > 0).await?;
            }
            fail::fail_point!("refund.stage_moved");
            let Some(lead) = clients.kommo.lead(lead_id).await.map_err(kommo_failed)? else { return Ok(()) };
            let whole = if refunded_total >= total.minor() { "in full" } else { "partly" };
            let text = format!("Lemon Squeezy order #{number} ({product}) was refunded {whole}: {refunded} of {total}. Check with the client why.");
            tell_manager(&context.pool, &clients.kommo, &account.slug, &lead, job.id, "refund.task", &text).await
        }
        (name, status) => {
            tracing::info!(name, status, order = %id, "nothing to do for this order state");
            Ok(())
        }
    }
}

/// Creates the deal (and its contact) for a self-serve buyer's paid order, once: the order is
/// claimed before Kommo is called and the new deal's id stored as soon as Kommo returns it; a
/// second job for the same order waits and then finds the deal.
async fn self_serve_deal(
    context: &Context,
    clients: &AccountClients,
    job: &ClaimedJob,
    event: &LemonSqueezyEvent,
    order: &Order,
    total: Money,
) -> Result<LeadId, JobError> {
    let (order_id, number) = (event.id.as_str(), &order.number);
    let account = &clients.account;
    let config = account
        .lemonsqueezy
        .as_ref()
        .and_then(|l| l.self_serve.as_ref())
        .ok_or_else(|| JobError::permanent(anyhow!("order {order_id} names no deal, and the account has no [accounts.lemonsqueezy.self_serve] section")))?;
    // The order number in the deal's name is what finds a deal an interrupted attempt created.
    let marker = format!("(order #{number})");
    match self_serve::claim(&context.pool, &account.slug, Provider::LemonSqueezy, order_id, job.id).await.map_err(db_failed)? {
        Claim::Existing(lead_id) => return Ok(lead_id),
        Claim::Busy => return Err(JobError::retryable(anyhow!("another job is creating the deal for order {order_id}"))),
        Claim::Yours { resumed: false } => {}
        Claim::Yours { resumed: true } => {
            let found = clients.kommo.search_leads(&marker).await.map_err(kommo_failed)?;
            if let Some(lead_id) = found.iter().find(|lead| lead.name().ends_with(&marker)).map(|lead| lead.id) {
                tracing::warn!(order = order_id, lead_id = lead_id.0, "an interrupted attempt had created the deal already; using it");
                self_serve::record_lead(&context.pool, &account.slug, Provider::LemonSqueezy, order_id, lead_id, job.id).await.map_err(db_failed)?;
                return Ok(lead_id);
            }
        }
    }
    let carried = &event.custom;
    // A manager the checkout names (a sales page per manager) first, if they are one of ours.
    let named = carried.get(MANAGER_CUSTOM_KEY).and_then(|id| id.trim().parse::<i64>().ok());
    let configured = |id: &i64| config.responsible_user_ids.contains(id) || config.rules.iter().any(|rule| rule.responsible_user_id == *id);
    let responsible = match (named.filter(configured), config.rules.iter().find(|rule| rule.variant_id == order.variant_id)) {
        (Some(manager), _) => manager,
        (None, Some(rule)) => rule.responsible_user_id,
        (None, None) => {
            let turn = self_serve::next_turn(&context.pool, &account.slug).await.map_err(db_failed)?;
            config.responsible_user_ids[turn.rem_euclid(config.responsible_user_ids.len() as i64) as usize]
        }
    };
    let buyer = if order.user_name.is_empty() { &order.user_email } else { &order.user_name };
    let product = &order.product_name;
    let whole_units = total.minor() / 10i64.pow(total.currency().exponent());
    let lead = NewLead {
        name: format!("{product} — {buyer} {marker}"),
        price: whole_units,
        pipeline_id: config.pipeline_id,
        status_id: config.status_id,
        responsible_user_id: responsible,
        embedded: NewLeadEmbedded {
            tags: config.tags.iter().map(|name| Tag { name: name.clone() }).collect(),
            contacts: vec![NewContact {
                first_name: buyer.clone(),
                responsible_user_id: responsible,
                custom_fields_values: vec![FieldValue::work_email(&order.user_email)],
            }],
        },
    };
    let lead_id = clients.kommo.create_lead_with_contact(&lead).await.map_err(kommo_failed)?;
    fail::fail_point!("self_serve.deal_created");
    self_serve::record_lead(&context.pool, &account.slug, Provider::LemonSqueezy, order_id, lead_id, job.id).await.map_err(db_failed)?;
    fail::fail_point!("self_serve.deal_recorded");
    // What the buyer's checkout carried (UTM and the like) goes into the deal's feed as well as
    // into the mapped fields (written with the payment).
    if !carried.is_empty() {
        let pairs: Vec<String> = carried.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let mut text = format!("Self-serve order {order_id}. {}", pairs.join(", "));
        if let Some(manager) = named.filter(|id| !configured(id)) {
            text.push_str(&format!(". The manager_id {manager} is not one of the self-serve managers, so the deal went to the next in turn"));
        }
        clients.kommo.add_lead_note_once(lead_id, &text, job.attempt > 0).await.map_err(kommo_failed)?;
    }
    tracing::info!(order = order_id, lead_id = lead_id.0, responsible, "deal created for a self-serve buyer");
    Ok(lead_id)
}
