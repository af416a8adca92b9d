//! Stripe: the events API lists every event of the last 30 days exactly as webhooks deliver
//! them, with the same id, so a missed event is appended under the key its webhook would have had.

use anyhow::Context as _;
use chrono::{DateTime, Duration, Utc};
use kommo_pay_core::clients::AccountClients;
use kommo_pay_core::event_log::{NewEvent, Source};
use kommo_pay_core::jobs::STRIPE_EVENT_TYPES;
use kommo_pay_core::stripe::webhook::StripeEvent;

/// Stripe keeps events for 30 days; reading from further back is refused.
const RETENTION: Duration = Duration::days(30);

/// The events of the types we act on created since `from`.
pub(super) async fn missed(clients: &AccountClients, from: DateTime<Utc>, now: DateTime<Utc>) -> anyhow::Result<Vec<NewEvent>> {
    let Some(stripe) = &clients.stripe else { return Ok(Vec::new()) };
    let oldest = now - RETENTION + Duration::hours(1);
    if from < oldest {
        tracing::warn!(account = %clients.account.slug, "reconciliation last read Stripe more than 30 days ago; events older than Stripe keeps are lost to it");
    }
    let from = from.max(oldest).timestamp();
    let mut events = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = stripe.list_events(&STRIPE_EVENT_TYPES, from, after.as_deref()).await.context("listing Stripe events")?;
        for raw in &page.data {
            let event = StripeEvent::parse(raw.get().as_bytes()).context("an event from the events API")?;
            after = Some(event.id.clone());
            events.push(NewEvent::new(&clients.account.slug, Source::Stripe, event.kind, event.id, event.lead_id, event.payload));
        }
        if !page.has_more || page.data.is_empty() {
            return Ok(events);
        }
    }
}
