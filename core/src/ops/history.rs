//! A deal's payment history, for an auditor: every inbound event and every effect recorded about
//! the deal, in the log's order, read from `events` alone (never from state that changes).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::OpsError;
use crate::money::{Currency, Money};
use crate::provider::Provider;

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Entry {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub source: String,
    pub kind: String,
    /// What happened, in words.
    pub what: String,
    /// The amount involved, in minor units of `currency`.
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    /// The amount for people, e.g. `2,000.00 USD`.
    pub amount: Option<String>,
    /// The provider's or kommo-pay's status word, e.g. `paid`, `failed`, `refunded`.
    pub status: Option<String>,
    pub event_id: Uuid,
}

/// `GET /ops/v1/deals/{account}/{lead}/history`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct History {
    pub account: String,
    pub lead_id: i64,
    pub entries: Vec<Entry>,
}

/// Every event of deal `lead_id` of `account`, oldest first.
pub async fn of_deal(pool: &PgPool, account: &str, lead_id: i64) -> Result<Vec<Entry>, OpsError> {
    let rows: Vec<(i64, DateTime<Utc>, String, String, Uuid, Value)> =
        sqlx::query_as("SELECT seq, received_at, source, kind, id, payload FROM events WHERE account = $1 AND lead_id = $2 ORDER BY seq")
            .bind(account)
            .bind(lead_id)
            .fetch_all(pool)
            .await?;
    if rows.is_empty() {
        return Err(OpsError::NotFound(format!("the log has nothing about deal {lead_id} of account {account:?}")));
    }
    Ok(rows.into_iter().map(|(seq, at, source, kind, event_id, payload)| entry(seq, at, source, kind, event_id, &payload)).collect())
}

fn entry(seq: i64, at: DateTime<Utc>, source: String, kind: String, event_id: Uuid, payload: &Value) -> Entry {
    let described = describe(&source, &kind, payload);
    let money = described.amount.and_then(to_money);
    Entry {
        seq,
        at,
        what: described.what,
        amount_minor: money.map(Money::minor),
        currency: money.map(|m| m.currency().code().to_owned()),
        amount: money.map(|m| m.to_string()),
        status: described.status,
        source,
        kind,
        event_id,
    }
}

/// An amount in minor units and its currency code, when the code is one.
pub(super) fn to_money((minor, code): (i64, String)) -> Option<Money> {
    Currency::parse(&code).ok().map(|currency| Money::from_minor(minor, currency))
}

struct Described {
    what: String,
    amount: Option<(i64, String)>,
    status: Option<String>,
}

/// Reads what an auditor needs from each kind of payload.
fn describe(source: &str, kind: &str, payload: &Value) -> Described {
    let text = |v: &Value, pointer: &str| v.pointer(pointer).map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned));
    let int = |v: &Value, pointer: &str| v.pointer(pointer).and_then(|x| x.as_i64().or_else(|| x.as_str()?.parse().ok()));
    let money = |v: &Value, amount: &str, currency: &str| Some((int(v, amount)?, text(v, currency)?.to_uppercase()));
    let d = |what: String, amount: Option<(i64, String)>, status: Option<String>| Described { what, amount, status };
    match (Provider::parse(source), kind) {
        (Some(Provider::Kommo), "leads.status" | "leads.add") => {
            let stage = text(payload, "/item/status_id").unwrap_or_default();
            let pipeline = text(payload, "/item/pipeline_id").unwrap_or_default();
            d(format!("Deal entered stage {stage} (pipeline {pipeline})"), None, None)
        }
        (Some(Provider::Kommo), _) => d(format!("Kommo: {kind}"), None, None),
        (Some(Provider::Stripe), _) => {
            let object = payload.pointer("/data/object").cloned().unwrap_or_default();
            let (what, amount, status) = match kind {
                "checkout.session.completed" | "checkout.session.async_payment_succeeded" | "checkout.session.async_payment_failed" => {
                    ("Stripe checkout", money(&object, "/amount_total", "/currency"), text(&object, "/payment_status"))
                }
                "payment_intent.succeeded" => ("Stripe payment", money(&object, "/amount_received", "/currency"), Some("succeeded".into())),
                "invoice.paid" | "invoice.payment_succeeded" => {
                    ("Stripe subscription invoice paid", money(&object, "/amount_paid", "/currency"), Some("paid".into()))
                }
                "invoice.payment_failed" => ("Stripe subscription invoice failed", money(&object, "/amount_due", "/currency"), Some("failed".into())),
                "charge.refunded" => ("Stripe refund (total refunded)", money(&object, "/amount_refunded", "/currency"), Some("refunded".into())),
                "customer.subscription.deleted" => ("Stripe subscription ended", None, text(&object, "/status")),
                _ => ("Stripe event", None, None),
            };
            let id = text(&object, "/id").unwrap_or_default();
            d(format!("{what}: {kind} {id}"), amount, status)
        }
        (Some(Provider::LemonSqueezy), _) => {
            let attributes = payload.pointer("/data/attributes").cloned().unwrap_or_default();
            let id = text(payload, "/data/id").unwrap_or_default();
            let amount = match kind {
                "order_refunded" | "subscription_payment_refunded" => money(&attributes, "/refunded_amount", "/currency"),
                _ => money(&attributes, "/total", "/currency"),
            };
            d(format!("Lemon Squeezy {kind} {id}"), amount, text(&attributes, "/status"))
        }
        _ => {
            let amount = money(payload, "/amount_minor", "/currency");
            let what = match kind {
                "payment_link.issued" => format!("Payment link issued: {}", text(payload, "/url").unwrap_or_default()),
                "payment.received" => {
                    format!("Payment recorded: {} {}", text(payload, "/provider").unwrap_or_default(), text(payload, "/payment_id").unwrap_or_default())
                }
                "refund.applied" => {
                    let shown = |amount: &str| money(payload, amount, "/currency").and_then(to_money).map(|m| m.to_string()).unwrap_or_default();
                    let what = format!("Refunded so far: {} of {}", shown("/refunded_minor"), shown("/amount_minor"));
                    return d(what, money(payload, "/refunded_minor", "/currency"), Some("refunded".into()));
                }
                "payment_link.status_changed" => {
                    format!("Payment link {} is now {}", text(payload, "/link_id").unwrap_or_default(), text(payload, "/status").unwrap_or_default())
                }
                "payment.applied" => format!("Deal updated for payment {}", text(payload, "/payment_id").unwrap_or_default()),
                "subscription.snapshot" => {
                    format!("Subscription {} is {}", text(payload, "/subscription_id").unwrap_or_default(), text(payload, "/status").unwrap_or_default())
                }
                "payment.failure_run_opened" => format!("A subscription payment failed: {}", text(payload, "/what").unwrap_or_default()),
                "payment.failure_runs_cleared" => "Earlier failed payments made good".to_owned(),
                "self_serve.deal_created" => format!("Deal created for self-serve order {}", text(payload, "/order_id").unwrap_or_default()),
                "payment_link.reminder_due" => {
                    format!("Reminder {} due for {}", text(payload, "/reminder").unwrap_or_default(), text(payload, "/url").unwrap_or_default())
                }
                "subscription.overdue" => format!("Subscription overdue: {}", text(payload, "/what").unwrap_or_default()),
                "job.dead_lettered" => {
                    format!("Failed for good ({}): {}", text(payload, "/job_kind").unwrap_or_default(), text(payload, "/error").unwrap_or_default())
                }
                "job.replayed" | "job.discarded" | "event.replayed" => format!(
                    "{} by {}: {}",
                    kind.replace('.', " "),
                    text(payload, "/operator").unwrap_or_default(),
                    text(payload, "/reason").unwrap_or_default()
                ),
                _ => match (text(payload, "/task"), text(payload, "/note")) {
                    (Some(task), _) => format!("Task for the manager: {task}"),
                    (None, Some(note)) => format!("Note: {note}"),
                    _ => kind.to_owned(),
                },
            };
            d(what, amount, None)
        }
    }
}

/// The entries as CSV (RFC 4180), one row each, with a header row.
pub fn to_csv(entries: &[Entry]) -> String {
    let field = |value: &str| {
        if value.contains([',', '"', '\n', '\r']) { format!("\"{}\"", value.replace('"', "\"\"")) } else { value.to_owned() }
    };
    let mut out = String::from("seq,at,source,kind,what,amount_minor,currency,amount,status,event_id\r\n");
    for e in entries {
        let row = [
            e.seq.to_string(),
            e.at.to_rfc3339(),
            e.source.clone(),
            e.kind.clone(),
            e.what.clone(),
            e.amount_minor.map(|a| a.to_string()).unwrap_or_default(),
            e.currency.clone().unwrap_or_default(),
            e.amount.clone().unwrap_or_default(),
            e.status.clone().unwrap_or_default(),
            e.event_id.to_string(),
        ];
        out.push_str(&row.iter().map(|v| field(v)).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    out
}
