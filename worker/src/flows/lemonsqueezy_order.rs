//! `lemonsqueezy.order`: an order was created (paid, pending, failed or fraudulent) or refunded.
//!
//! The deal comes from the checkout's custom data (`meta.custom_data.kommo_lead_id`). Amounts are
//! integer cents in the order's own currency. Lemon Squeezy sends no event id: ingest keyed the
//! event on the order (and the refunded total), and the payment record keys on the order id, so
//! resent and reordered deliveries settle once.

use std::sync::Arc;

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use kommo_pay_core::money::{Currency, Money};
use kommo_pay_core::payment_links;
use kommo_pay_core::payments::Received;
use kommo_pay_core::queue::ClaimedJob;
use serde_json::Value;

use super::deal::{Deal, tell_manager};
use super::settle::{Payment, Settlement, record_refund, settle};
use super::{Context, causing_event, db_failed, kommo_failed};
use crate::JobError;

/// Kommo's "won" stage, in every pipeline.
const WON: i64 = 142;

pub(super) async fn apply(context: Arc<Context>, job: ClaimedJob) -> Result<(), JobError> {
    let clients = context.clients(&job)?;
    let account = &clients.account;
    let event = causing_event(&context.pool, &job).await?;
    let name = event.pointer("/meta/event_name").and_then(Value::as_str).unwrap_or_default();
    let id = match event.pointer("/data/id") {
        Some(Value::String(id)) => id.clone(),
        Some(other) => other.to_string(),
        None => return Err(JobError::permanent(anyhow!("an order event without data.id"))),
    };
    let order = &event["data"]["attributes"];
    let text = |key: &str| order.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
    let currency = Currency::parse(&text("currency")).map_err(JobError::permanent)?;
    let total = Money::from_minor(order.get("total").and_then(Value::as_i64).unwrap_or(0), currency);
    let number = order.get("order_number").map(|n| n.to_string().trim_matches('"').to_owned()).unwrap_or_else(|| id.clone());
    let product = order.pointer("/first_order_item/product_name").and_then(Value::as_str).unwrap_or("an order").to_owned();
    let lead_id = job.lead_id.ok_or_else(|| {
        JobError::permanent(anyhow!(
            "order #{number} names no deal (a self-serve buyer); creating deals for self-serve buyers is not supported yet"
        ))
    })?;
    let at = DateTime::parse_from_rfc3339(&text("created_at")).map(|t| t.with_timezone(&Utc)).unwrap_or_else(|_| Utc::now());
    let payment = Payment { id: id.clone(), link_id: None, amount: total, at };

    match (name, text("status").as_str()) {
        ("order_created", "paid") => {
            let link = payment_links::active_for(&context.pool, &account.slug, lead_id).await.map_err(db_failed)?;
            let won_stage = link.and_then(|l| account.trigger(&l.trigger).and_then(|t| t.paid_status_id)).unwrap_or(WON);
            let note = format!("Payment received: {total} — {product} (order #{number})");
            settle(&context, clients, &job, Settlement { provider: "lemonsqueezy", payment: &payment, lead_id, won_stage: Some(won_stage), note }).await
        }
        ("order_created", "pending") => {
            tracing::info!(order = %id, "order pending: waiting for it to be paid");
            Ok(())
        }
        ("order_created", status @ ("failed" | "fraudulent")) => {
            let Some(lead) = clients.kommo.lead(lead_id).await.map_err(kommo_failed)? else { return Ok(()) };
            let what = if status == "failed" { "failed" } else { "was flagged as fraudulent" };
            let text = format!("Lemon Squeezy order #{number} for {total} ({product}) {what}. Contact the client.");
            tell_manager(&context.pool, &clients.kommo, &account.slug, &Deal::from_lead(&lead)?, job.id, "payment.failed", &text).await
        }
        ("order_refunded", _) => {
            let refunded_total = order.get("refunded_amount").and_then(Value::as_i64).unwrap_or(0);
            let received = Received {
                account: &account.slug,
                provider: "lemonsqueezy",
                payment_id: &id,
                lead_id,
                link_id: None,
                amount: total,
                paid_at: at,
                job_id: job.id,
            };
            let Some(refunded) = record_refund(&context, clients, &received, refunded_total).await? else { return Ok(()) };
            let Some(lead) = clients.kommo.lead(lead_id).await.map_err(kommo_failed)? else { return Ok(()) };
            let whole = if refunded_total >= total.minor() { "in full" } else { "partly" };
            let text = format!("Lemon Squeezy order #{number} ({product}) was refunded {whole}: {refunded} of {total}. Check with the client why.");
            tell_manager(&context.pool, &clients.kommo, &account.slug, &Deal::from_lead(&lead)?, job.id, "refund.task", &text).await
        }
        (name, status) => {
            tracing::info!(name, status, order = %id, "nothing to do for this order state");
            Ok(())
        }
    }
}
