//! The one place that decides which jobs an event implies.
//!
//! Ingest calls [`implied_by`] for every event it appends and enqueues the result in the same
//! transaction. Events that imply nothing are still logged: they are the audit trail and the
//! input of reconciliation.

use serde_json::json;

use crate::config::JobPolicies;
use crate::event_log::{NewEvent, Source};
use crate::queue::NewJob;

/// What a job does; the worker has one handler per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Bring the deal in line with a Stripe event (payment, renewal, failure, refund, cancel).
    ApplyStripeEvent,
    /// Bring the deal in line with a Lemon Squeezy event (order, subscription, refund).
    ApplyLemonSqueezyEvent,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::ApplyStripeEvent => "stripe.apply_event",
            JobKind::ApplyLemonSqueezyEvent => "lemonsqueezy.apply_event",
        }
    }

}

/// Stripe event types that change a deal (reference/stripe.md §2).
pub const STRIPE_EVENTS: &[&str] = &[
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "payment_intent.succeeded",
    "invoice.paid",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
    "customer.subscription.deleted",
    "charge.refunded",
];

/// Lemon Squeezy event names that change a deal (reference/lemonsqueezy.md §2).
pub const LEMONSQUEEZY_EVENTS: &[&str] = &[
    "order_created",
    "order_refunded",
    "subscription_created",
    "subscription_updated",
    "subscription_cancelled",
    "subscription_resumed",
    "subscription_expired",
    "subscription_paused",
    "subscription_unpaused",
    "subscription_payment_success",
    "subscription_payment_failed",
    "subscription_payment_recovered",
    "subscription_payment_refunded",
];

/// The jobs `event` implies, each with the attempts its kind's policy allows.
pub fn implied_by(event: &NewEvent, policies: &JobPolicies) -> Vec<NewJob> {
    let kind = match event.source {
        Source::Stripe if STRIPE_EVENTS.contains(&event.kind.as_str()) => JobKind::ApplyStripeEvent,
        Source::LemonSqueezy if LEMONSQUEEZY_EVENTS.contains(&event.kind.as_str()) => JobKind::ApplyLemonSqueezyEvent,
        _ => return Vec::new(),
    };
    vec![NewJob {
        kind: kind.as_str().to_owned(),
        args: json!({ "event_id": event.id }),
        account: event.account.clone(),
        lead_id: event.lead_id,
        event_id: event.id,
        max_attempts: policies.policy(kind.as_str()).max_attempts,
        // The event is unique already; its job needs no key of its own.
        unique_key: None,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn event(source: Source, kind: &str) -> NewEvent {
        NewEvent::new("acme", source, kind.into(), "k".into(), Some(7), RawValue::NULL.to_owned())
    }

    #[test]
    fn payment_events_imply_one_apply_job_for_their_event() {
        let e = event(Source::Stripe, "checkout.session.completed");
        let jobs = implied_by(&e, &JobPolicies::default());
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].kind, "stripe.apply_event");
        assert_eq!((jobs[0].event_id, jobs[0].lead_id, jobs[0].account.as_str()), (e.id, Some(7), "acme"));
        assert_eq!(jobs[0].args["event_id"], e.id.to_string());
        assert_eq!(jobs[0].max_attempts, 20);
        assert_eq!(implied_by(&event(Source::LemonSqueezy, "order_created"), &JobPolicies::default())[0].kind, "lemonsqueezy.apply_event");
    }

    #[test]
    fn other_events_are_logged_without_jobs() {
        for (source, kind) in [
            (Source::Stripe, "customer.created"),
            (Source::LemonSqueezy, "license_key_created"),
            (Source::Kommo, "leads.update"),
            (Source::Stripe, "order_created"),
        ] {
            assert!(implied_by(&event(source, kind), &JobPolicies::default()).is_empty(), "{kind}");
        }
    }
}
