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
use kommo_pay_core::lemonsqueezy::client::LemonSqueezyClient;
use kommo_pay_core::lemonsqueezy::webhook::{LEAD_ID_CUSTOM_KEY, LemonSqueezyEvent};
use kommo_pay_core::money::{Currency, Money};
use kommo_pay_core::provider::Provider;
use kommo_pay_core::{payment_links, subscriptions};
use serde_json::{Value, json};
use sqlx::PgPool;

/// At most this many pages of 100 per list and round; more waits for the next round.
const MAX_PAGES: u32 = 50;

pub(super) async fn missed(pool: &PgPool, clients: &AccountClients, from: DateTime<Utc>) -> anyhow::Result<Vec<NewEvent>> {
    let Some(api) = &clients.lemonsqueezy else { return Ok(Vec::new()) };
    let slug = clients.account.slug.as_str();
    let mut events = Vec::new();
    for store in clients.account.lemonsqueezy_stores() {
        for order in created_since(api, "orders", store, from).await? {
            let lead_id = order_lead(pool, slug, &order).await?;
            events.push(event(slug, "order_created", order.clone(), lead_id)?);
            if order.pointer("/attributes/refunded") == Some(&Value::Bool(true)) {
                events.push(event(slug, "order_refunded", order, lead_id)?);
            }
        }
        for subscription in created_since(api, "subscriptions", store, from).await? {
            let id = id_of(&subscription);
            let mapped = subscriptions::lead_of(pool, slug, Provider::LemonSqueezy, &id).await?;
            let order_id = subscription.pointer("/attributes/order_id").map(text).unwrap_or_default();
            let name = match (mapped, subscription.pointer("/attributes/status").and_then(Value::as_str)) {
                // The mapping is what the lost `subscription_created` would have stored.
                (None, _) => "subscription_created",
                (Some(_), Some("cancelled")) => "subscription_cancelled",
                (Some(_), Some("expired")) => "subscription_expired",
                (Some(_), _) => "subscription_updated",
            };
            let lead_id = match mapped {
                Some(lead_id) => Some(lead_id),
                None => ordered_by(pool, slug, &order_id, &events).await?,
            };
            let Some(lead_id) = lead_id else {
                tracing::debug!(subscription = %id, "a subscription of no deal we know; not ours to reconcile");
                continue;
            };
            events.push(event(slug, name, subscription, Some(lead_id))?);
        }
    }
    Ok(events)
}

/// The objects of `resource` in `store` created at or after `from`.
async fn created_since(api: &LemonSqueezyClient, resource: &str, store: &str, from: DateTime<Utc>) -> anyhow::Result<Vec<Value>> {
    let mut found = Vec::new();
    for page in 1..=MAX_PAGES {
        let path = format!("v1/{resource}?filter[store_id]={store}&page[size]=100&page[number]={page}");
        let answer = api.get(&path).await.with_context(|| format!("listing Lemon Squeezy {resource}"))?;
        let data = answer.get("data").and_then(Value::as_array).cloned().unwrap_or_default();
        let before = data.len();
        found.extend(data.into_iter().filter(|object| created_at(object).is_some_and(|at| at >= from)));
        if found.len() < before || answer.pointer("/links/next").is_none_or(Value::is_null) {
            break;
        }
    }
    Ok(found)
}

/// The deal an order paid for: the one unpaid checkout for exactly its amount.
async fn order_lead(pool: &PgPool, account: &str, order: &Value) -> anyhow::Result<Option<i64>> {
    let attributes = &order["attributes"];
    let (Some(subtotal), Some(currency), Some(at)) =
        (attributes.get("subtotal").and_then(Value::as_i64), attributes.get("currency").and_then(Value::as_str), created_at(order))
    else {
        return Ok(None);
    };
    let Ok(currency) = Currency::parse(currency) else { return Ok(None) };
    let candidates = payment_links::unpaid_matching(pool, account, Provider::LemonSqueezy, Money::from_minor(subtotal, currency), at).await?;
    match candidates.as_slice() {
        [one] => Ok(Some(one.lead_id)),
        [] => Ok(None),
        several => {
            let leads: Vec<i64> = several.iter().map(|link| link.lead_id).collect();
            tracing::warn!(order = %id_of(order), ?leads, "a reconciled order matches several deals' checkouts; it is logged without a deal");
            Ok(None)
        }
    }
}

/// The deal of the order `order_id`: from the log, or from an order reconciled in this round.
async fn ordered_by(pool: &PgPool, account: &str, order_id: &str, this_round: &[NewEvent]) -> Result<Option<i64>, sqlx::Error> {
    let key = format!("order_created:{order_id}");
    if let Some(event) = this_round.iter().find(|e| e.dedup_key == key) {
        return Ok(event.lead_id);
    }
    let lead: Option<Option<i64>> = sqlx::query_scalar("SELECT lead_id FROM events WHERE account = $1 AND source = 'lemonsqueezy' AND dedup_key = $2")
        .bind(account)
        .bind(&key)
        .fetch_optional(pool)
        .await?;
    Ok(lead.flatten())
}

/// The event a webhook would have delivered for `object`: the same envelope, so the same key.
fn event(account: &str, name: &str, object: Value, lead_id: Option<i64>) -> anyhow::Result<NewEvent> {
    let custom = lead_id.map(|lead| json!({ LEAD_ID_CUSTOM_KEY: lead.to_string() }));
    let test_mode = object.pointer("/attributes/test_mode").cloned().unwrap_or(Value::Bool(false));
    let body = json!({ "meta": { "event_name": name, "test_mode": test_mode, "custom_data": custom }, "data": object });
    let parsed = LemonSqueezyEvent::parse(body.to_string().as_bytes()).context("a reconciled Lemon Squeezy object")?;
    Ok(NewEvent::new(account, Source::LemonSqueezy, parsed.kind, parsed.dedup_key, parsed.lead_id, parsed.payload))
}

fn created_at(object: &Value) -> Option<DateTime<Utc>> {
    let text = object.pointer("/attributes/created_at")?.as_str()?;
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
}

fn id_of(object: &Value) -> String {
    object.get("id").map(text).unwrap_or_default()
}

fn text(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_owned)
}
