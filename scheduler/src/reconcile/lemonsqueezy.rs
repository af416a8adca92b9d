//! Lemon Squeezy: orders and subscriptions that changed since the cursor, appended as the
//! webhook events that would have announced them, under the same natural keys
//! (`order_created:{id}`, `subscription_updated:{id}:{updated_at}`, …), so a late webhook for the
//! same fact is a duplicate.
//!
//! The API's objects carry no custom data (reference/lemonsqueezy.md §4), so the deal is found
//! the way a human would: an order for exactly the amount of one unpaid checkout we issued before
//! it was paid is that checkout's; a subscription is its order's. An order that matches no
//! checkout, or several, is appended without a deal, as a webhook without custom data would be
//! (a self-serve buyer, when self-serve is configured).
//!
//! Both lists come newest first by creation, so paging stops at the first object older than the
//! cursor. A refund or subscription change of an object created before the cursor is therefore
//! not read here; its webhook, Lemon Squeezy's dashboard resend and the deal's task on the
//! earlier failure are what catch it.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use kommo_pay_core::clients::AccountClients;
use kommo_pay_core::event_log::{NewEvent, Source};
use kommo_pay_core::ids::{AccountSlug, LeadId};
use kommo_pay_core::lemonsqueezy::client::{Listed, Listing};
use kommo_pay_core::lemonsqueezy::event::{Object, Order};
use kommo_pay_core::lemonsqueezy::webhook::LemonSqueezyEvent;
use kommo_pay_core::money::{Currency, Money};
use kommo_pay_core::provider::Provider;
use kommo_pay_core::{payment_links, subscriptions};
use sqlx::PgPool;

pub(super) async fn missed(pool: &PgPool, clients: &AccountClients, from: DateTime<Utc>) -> anyhow::Result<Vec<NewEvent>> {
    let Some(api) = &clients.lemonsqueezy else { return Ok(Vec::new()) };
    let slug = &clients.account.slug;
    let mut events = Vec::new();
    for store in clients.account.lemonsqueezy_stores() {
        for listed in api.created_since(Listing::Orders, store, from).await.context("listing Lemon Squeezy orders")? {
            let Object::Order(order) = &listed.object else { continue };
            let lead_id = order_lead(pool, slug, &listed.id, order).await?;
            events.push(event(slug, "order_created", &listed, lead_id)?);
            if order.refunded {
                events.push(event(slug, "order_refunded", &listed, lead_id)?);
            }
        }
        for listed in api.created_since(Listing::Subscriptions, store, from).await.context("listing Lemon Squeezy subscriptions")? {
            let Object::Subscription(subscription) = &listed.object else { continue };
            let id = &listed.id;
            let mapped = subscriptions::lead_of(pool, slug, Provider::LemonSqueezy, id).await?;
            let name = match (mapped, subscription.status.as_str()) {
                // The mapping is what the lost `subscription_created` would have stored.
                (None, _) => "subscription_created",
                (Some(_), "cancelled") => "subscription_cancelled",
                (Some(_), "expired") => "subscription_expired",
                (Some(_), _) => "subscription_updated",
            };
            let lead_id = match mapped {
                Some(lead_id) => Some(lead_id),
                None => ordered_by(pool, slug, &subscription.order_id, &events).await?,
            };
            let Some(lead_id) = lead_id else {
                tracing::debug!(subscription = %id, "a subscription of no deal we know; not ours to reconcile");
                continue;
            };
            events.push(event(slug, name, &listed, Some(lead_id))?);
        }
    }
    Ok(events)
}

/// The deal an order paid for: the one unpaid checkout for exactly its amount.
async fn order_lead(pool: &PgPool, account: &AccountSlug, id: &str, order: &Order) -> anyhow::Result<Option<LeadId>> {
    let (Some(subtotal), Ok(currency), Some(at)) = (order.subtotal, Currency::parse(&order.total.currency), order.created_at) else {
        return Ok(None);
    };
    let candidates = payment_links::unpaid_matching(pool, account, Provider::LemonSqueezy, Money::from_minor(subtotal, currency), at).await?;
    match candidates.as_slice() {
        [one] => Ok(Some(one.lead_id)),
        [] => Ok(None),
        several => {
            let leads: Vec<i64> = several.iter().map(|link| link.lead_id.0).collect();
            tracing::warn!(order = %id, ?leads, "a reconciled order matches several deals' checkouts; it is logged without a deal");
            Ok(None)
        }
    }
}

/// The deal of the order `order_id`: from the log, or from an order reconciled in this round.
async fn ordered_by(pool: &PgPool, account: &AccountSlug, order_id: &str, this_round: &[NewEvent]) -> Result<Option<LeadId>, sqlx::Error> {
    let key = format!("order_created:{order_id}");
    if let Some(event) = this_round.iter().find(|e| e.dedup_key == key) {
        return Ok(event.lead_id);
    }
    let lead: Option<Option<LeadId>> = sqlx::query_scalar("SELECT lead_id FROM events WHERE account = $1 AND source = $3 AND dedup_key = $2")
        .bind(account)
        .bind(&key)
        .bind(Source::LemonSqueezy.as_str())
        .fetch_optional(pool)
        .await?;
    Ok(lead.flatten())
}

/// The event a webhook named `name` would have delivered for `listed`.
fn event(account: &AccountSlug, name: &str, listed: &Listed, lead_id: Option<LeadId>) -> anyhow::Result<NewEvent> {
    let parsed = LemonSqueezyEvent::announcing(name, &listed.raw, lead_id).context("a reconciled Lemon Squeezy object")?;
    Ok(NewEvent::new(account, Source::LemonSqueezy, parsed.kind, parsed.dedup_key, parsed.lead_id, parsed.payload))
}
