//! The one place that decides which jobs an event implies.
//!
//! Ingest calls [`implied_by`] for every event it appends and enqueues the result in the same
//! transaction. Events that imply nothing are still logged: they are the audit trail and the
//! input of reconciliation.

use crate::ids::AccountSlug;
use serde_json::json;
use uuid::Uuid;

use crate::config::{Account, JobPolicies};
use crate::event_log::{NewEvent, Source};
use crate::queue::NewJob;

/// What a job does; the worker has one handler per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// A deal entered a trigger stage: issue its payment link and put it in the card.
    IssuePaymentLink,
    /// An unpaid link is due a reminder: a task for the deal's manager to remind the client.
    RemindManager,
    /// A subscription stayed unpaid past the grace period (the scheduler's overdue scan): mark
    /// the deal Overdue and give its manager a task.
    MarkOverdue,
    /// A job about a deal failed for good: tell the deal's manager with a task. Enqueued by the
    /// queue itself when it dead-letters a job (`queue::fail`, for the executor and the rescuer).
    AlertManager,
    /// A one-time payment succeeded: mark the deal paid.
    StripePayment,
    /// A subscription invoice was paid or failed.
    StripeInvoice,
    /// A subscription ended.
    StripeSubscriptionEnded,
    /// A subscription's state changed (a snapshot): one not being paid opens a run of failures.
    StripeSubscriptionUpdated,
    /// A charge was refunded, fully or partly.
    StripeRefund,
    /// A Lemon Squeezy order was paid (or failed), or refunded.
    LemonSqueezyOrder,
    /// A Lemon Squeezy subscription changed or one of its payments happened.
    LemonSqueezySubscription,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::IssuePaymentLink => "payment_link.issue",
            JobKind::AlertManager => "deal.alert",
            JobKind::RemindManager => "deal.remind",
            JobKind::MarkOverdue => "deal.overdue",
            JobKind::StripePayment => "stripe.payment",
            JobKind::StripeInvoice => "stripe.invoice",
            JobKind::StripeSubscriptionEnded => "stripe.subscription_ended",
            JobKind::StripeSubscriptionUpdated => "stripe.subscription_updated",
            JobKind::StripeRefund => "stripe.refund",
            JobKind::LemonSqueezyOrder => "lemonsqueezy.order",
            JobKind::LemonSqueezySubscription => "lemonsqueezy.subscription",
        }
    }
}

/// The Stripe event types that change a deal: those [`stripe_job`] maps to a job, which are the
/// ones reconciliation asks the events API for.
pub const STRIPE_EVENT_TYPES: [&str; 10] = [
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "payment_intent.succeeded",
    "invoice.paid",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "charge.refunded",
];

/// The job a Stripe event type implies, for the types that change a deal (reference/stripe.md §2).
fn stripe_job(event_type: &str) -> Option<JobKind> {
    match event_type {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" | "checkout.session.async_payment_failed" | "payment_intent.succeeded" => {
            Some(JobKind::StripePayment)
        }
        "invoice.paid" | "invoice.payment_succeeded" | "invoice.payment_failed" => Some(JobKind::StripeInvoice),
        "customer.subscription.updated" => Some(JobKind::StripeSubscriptionUpdated),
        "customer.subscription.deleted" => Some(JobKind::StripeSubscriptionEnded),
        "charge.refunded" => Some(JobKind::StripeRefund),
        _ => None,
    }
}

/// The job a Lemon Squeezy event implies, for the events that change a deal
/// (reference/lemonsqueezy.md §2).
fn lemonsqueezy_job(event_name: &str) -> Option<JobKind> {
    match event_name {
        "order_created" | "order_refunded" => Some(JobKind::LemonSqueezyOrder),
        name if name.starts_with("subscription_") => Some(JobKind::LemonSqueezySubscription),
        _ => None,
    }
}

/// The scheduler's fact that an unpaid link is due a reminder (`{link_id, reminder, …}`).
pub const REMINDER_DUE: &str = "payment_link.reminder_due";

/// The jobs `event`, received for `account` (or, for the scheduler's reminders, recorded),
/// implies, each with the attempts its kind's policy
/// allows.
pub fn implied_by(event: &NewEvent, account: &Account, policies: &JobPolicies) -> Vec<NewJob> {
    let (kind, args) = match event.source {
        Source::Kommo => match (event.lead_id, stage_entered(event).and_then(|stage| account.trigger_for(stage))) {
            (Some(_), Some(trigger)) => (JobKind::IssuePaymentLink, json!({ "event_id": event.id, "trigger": trigger.name })),
            _ => return Vec::new(),
        },
        Source::Stripe => match stripe_job(&event.kind) {
            // Snapshots of subscriptions that name no deal are not ours (a Stripe account has
            // others), and change with every renewal: no job, or each would end as a dead letter.
            Some(JobKind::StripeSubscriptionUpdated) if event.lead_id.is_none() => return Vec::new(),
            Some(kind) => (kind, json!({ "event_id": event.id })),
            None => return Vec::new(),
        },
        Source::LemonSqueezy => match lemonsqueezy_job(&event.kind) {
            Some(kind) => (kind, json!({ "event_id": event.id })),
            None => return Vec::new(),
        },
        // The scheduler's reminder of an unpaid link: its manager is reminded.
        Source::Internal if event.kind == REMINDER_DUE => {
            #[derive(serde::Deserialize)]
            struct Due {
                link_id: String,
                reminder: i64,
            }
            let Ok(due) = serde_json::from_str::<Due>(event.payload.get()) else { return Vec::new() };
            (JobKind::RemindManager, json!({ "link_id": due.link_id, "reminder": due.reminder }))
        }
        _ => return Vec::new(),
    };
    vec![NewJob {
        kind: kind.as_str().to_owned(),
        args,
        account: event.account.clone(),
        lead_id: event.lead_id,
        event_id: event.id,
        max_attempts: policies.policy(kind.as_str()).max_attempts,
        // The event is unique already; its job needs no key of its own.
        unique_key: None,
    }]
}

/// The `deal.overdue` job a subscription's run marked overdue implies (hung off its
/// `subscription.overdue` fact): the card says overdue and the manager is told.
pub fn overdue_of(account: &AccountSlug, run: &crate::dunning::Open, fact: Uuid, policies: &JobPolicies) -> NewJob {
    let kind = JobKind::MarkOverdue.as_str();
    NewJob {
        kind: kind.into(),
        args: json!({ "run_id": run.run_id, "provider": run.provider, "subscription_id": run.subscription_id }),
        account: account.to_owned(),
        lead_id: Some(run.lead_id),
        event_id: fact,
        max_attempts: policies.policy(kind).max_attempts,
        unique_key: Some(format!("{account}:overdue:{}", run.run_id)),
    }
}

/// The `deal.alert` a dead letter raises, telling the deal's manager (hung off the dead job's
/// event, or its dead-letter `fact`), with `attempts` (its kind's policy). None for a job of no
/// deal, and alerts raise none of their own, so a blocked Kommo account cannot make them loop.
pub fn alert_for(dead: &crate::queue::DeadLettered, error: &str, fact: Option<Uuid>, attempts: i32) -> Option<NewJob> {
    let lead_id = dead.lead_id.filter(|_| dead.kind != JobKind::AlertManager.as_str())?;
    Some(NewJob {
        kind: JobKind::AlertManager.as_str().into(),
        args: json!({ "job_id": dead.id, "job_kind": dead.kind, "error": error }),
        account: dead.account.clone(),
        lead_id: Some(lead_id),
        event_id: dead.event_id.or(fact)?,
        max_attempts: attempts,
        unique_key: Some(format!("deal.alert:{}:{}", dead.id, dead.attempt)),
    })
}

/// The stage a Kommo lead entered: a stage change (`leads.status`), or a lead created in a stage
/// (`leads.add`). Updates are not stage entries, even when they carry a status (reference/kommo.md §1).
fn stage_entered(event: &NewEvent) -> Option<(i64, i64)> {
    if !matches!(event.kind.as_str(), "leads.status" | "leads.add") {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Change {
        item: serde_json::Value,
    }
    let change: Change = serde_json::from_str(event.payload.get()).ok()?;
    let id = |key: &str| change.item.get(key).and_then(crate::wire::lenient_id);
    Some((id("pipeline_id")?, id("status_id")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AccountSlug, LeadId};
    use serde_json::value::RawValue;

    fn event(source: Source, kind: &str) -> NewEvent {
        NewEvent::new(&AccountSlug::from("acme"), source, kind.into(), "k".into(), Some(LeadId(7)), RawValue::NULL.to_owned())
    }

    fn kommo_change(kind: &str, pipeline: &str, status: &str) -> NewEvent {
        let payload = format!(r#"{{"account":{{"id":"1"}},"item":{{"id":"7","pipeline_id":"{pipeline}","status_id":"{status}"}}}}"#);
        NewEvent::new(&AccountSlug::from("acme"), Source::Kommo, kind.into(), "k".into(), Some(LeadId(7)), RawValue::from_string(payload).unwrap())
    }

    fn account() -> Account {
        let text = r#"
            [database]
            url = "postgres://h/db"
            [[accounts]]
            slug = "acme"
            [accounts.kommo]
            account_id = 1
            base_url = "https://acme.kommo.com"
            webhook_secret_env = "S"
            auth = { kind = "long_lived_token", token_env = "T" }
            fields = { payment_link = 1, payment_status = 2, payment_date = 3, payment_id = 4, paid_amount = 5, statuses = { not_issued = 10, awaiting = 11, paid = 12, overdue = 13, refunded = 14, partially_refunded = 15, cancelled = 16 } }
            [accounts.stripe]
            secret_key_env = "T"
            webhook_secret_envs = ["T"]
            [[accounts.triggers]]
            name = "invoice"
            pipeline_id = 8572511
            status_id = 67548619
            provider = "stripe"
        "#;
        let env = |_: &str| Some("0123456789abcdef0123456789abcdef".to_string());
        let config = crate::config::Config::parse(text, "t", &env).unwrap();
        config.accounts.get("acme").unwrap().as_ref().clone()
    }

    #[test]
    fn a_lead_entering_a_trigger_stage_implies_issuing_its_link() {
        let account = account();
        for kind in ["leads.status", "leads.add"] {
            let e = kommo_change(kind, "8572511", "67548619");
            let jobs = implied_by(&e, &account, &JobPolicies::default());
            assert_eq!(jobs.len(), 1, "{kind}");
            assert_eq!(jobs[0].kind, "payment_link.issue");
            assert_eq!(jobs[0].args["trigger"], "invoice");
        }
        for (kind, pipeline, status) in [("leads.status", "8572511", "142"), ("leads.status", "1", "67548619"), ("leads.update", "8572511", "67548619")] {
            assert!(implied_by(&kommo_change(kind, pipeline, status), &account, &JobPolicies::default()).is_empty(), "{kind} {pipeline} {status}");
        }
    }

    #[test]
    fn payment_events_imply_one_apply_job_for_their_event() {
        let e = event(Source::Stripe, "checkout.session.completed");
        let jobs = implied_by(&e, &account(), &JobPolicies::default());
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].kind, "stripe.payment");
        assert_eq!((jobs[0].event_id, jobs[0].lead_id, jobs[0].account.as_str()), (e.id, Some(LeadId(7)), "acme"));
        assert_eq!(jobs[0].args["event_id"], e.id.to_string());
        assert_eq!(jobs[0].max_attempts, 20);
        assert_eq!(implied_by(&event(Source::LemonSqueezy, "order_created"), &account(), &JobPolicies::default())[0].kind, "lemonsqueezy.order");
    }

    #[test]
    fn only_subscription_snapshots_of_a_deal_imply_a_job() {
        let mut e = event(Source::Stripe, "customer.subscription.updated");
        assert_eq!(implied_by(&e, &account(), &JobPolicies::default())[0].kind, "stripe.subscription_updated");
        e.lead_id = None;
        assert!(implied_by(&e, &account(), &JobPolicies::default()).is_empty());
    }

    #[test]
    fn every_stripe_type_reconciliation_reads_implies_a_job() {
        for kind in STRIPE_EVENT_TYPES {
            assert!(stripe_job(kind).is_some(), "{kind}");
        }
    }

    #[test]
    fn other_events_are_logged_without_jobs() {
        for (source, kind) in [
            (Source::Stripe, "customer.created"),
            (Source::LemonSqueezy, "license_key_created"),
            (Source::Kommo, "leads.update"),
            (Source::Stripe, "order_created"),
        ] {
            assert!(implied_by(&event(source, kind), &account(), &JobPolicies::default()).is_empty(), "{kind}");
        }
    }
}
