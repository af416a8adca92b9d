//! What a Stripe event's object says, typed: decoded from `data.object` by
//! [`super::webhook::StripeEvent::parse`], the one parser ingest runs on the delivery and the
//! worker on the stored payload. The API version's shapes (basil's invoice nesting) are known
//! here only. Decoding never fails on the object's fields: one that is missing or of another
//! type reads as absent, and the flow that needs it says so.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::wire;

/// The object an event is about (`data.object.object`).
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    CheckoutSession(CheckoutSession),
    PaymentIntent(PaymentIntent),
    Invoice(Invoice),
    Subscription(Subscription),
    Charge(Charge),
    /// Any other object: stored in the log, nothing to do.
    Other(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckoutSession {
    pub id: String,
    /// `payment`, `subscription` or `setup`.
    pub mode: String,
    /// `paid`, `unpaid` (an asynchronous payment still under way) or `no_payment_required`.
    pub payment_status: String,
    pub payment_intent: Option<String>,
    pub payment_link: Option<String>,
    pub amount_total: Option<i64>,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PaymentIntent {
    pub id: String,
    pub amount_received: Option<i64>,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Invoice {
    pub id: String,
    pub amount_paid: Option<i64>,
    pub amount_due: Option<i64>,
    pub currency: String,
    /// The subscription it bills: `parent.subscription_details.subscription` since API
    /// 2025-03-31.basil, `subscription` before.
    pub subscription: Option<String>,
    /// Where the invoice stands among its subscription's invoices: the start of the period its
    /// first line bills (the service period; basil's invoice-level `period_start` is the period
    /// before), else when it was created. Events of one invoice carry the same invoice, so its
    /// payment and its failures always compare equal (ADR 14).
    pub billing_period: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub id: String,
    pub status: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub id: String,
    pub payment_intent: Option<String>,
    pub amount: Option<i64>,
    /// Cumulative.
    pub amount_refunded: i64,
    pub currency: String,
}

impl Object {
    /// The object's own id (`pi_…`, `in_…`, `sub_…`); empty when it has none.
    pub fn id(&self) -> &str {
        match self {
            Object::CheckoutSession(o) => &o.id,
            Object::PaymentIntent(o) => &o.id,
            Object::Invoice(o) => &o.id,
            Object::Subscription(o) => &o.id,
            Object::Charge(o) => &o.id,
            Object::Other(_) => "",
        }
    }
}

/// `data.object` as delivered: the fields of every object we read, each optional.
#[derive(Deserialize, Default)]
pub(super) struct Wire {
    #[serde(default, deserialize_with = "wire::text")]
    object: Option<String>,
    #[serde(default, deserialize_with = "wire::text")]
    id: Option<String>,
    #[serde(default, deserialize_with = "wire::text")]
    mode: Option<String>,
    #[serde(default, deserialize_with = "wire::text")]
    payment_status: Option<String>,
    #[serde(default, deserialize_with = "wire::text")]
    payment_intent: Option<String>,
    #[serde(default, deserialize_with = "wire::text")]
    payment_link: Option<String>,
    #[serde(default, deserialize_with = "wire::text")]
    status: Option<String>,
    #[serde(default, deserialize_with = "wire::text")]
    currency: Option<String>,
    #[serde(default, deserialize_with = "wire::int")]
    amount: Option<i64>,
    #[serde(default, deserialize_with = "wire::int")]
    amount_total: Option<i64>,
    #[serde(default, deserialize_with = "wire::int")]
    amount_received: Option<i64>,
    #[serde(default, deserialize_with = "wire::int")]
    amount_paid: Option<i64>,
    #[serde(default, deserialize_with = "wire::int")]
    amount_due: Option<i64>,
    #[serde(default, deserialize_with = "wire::int")]
    amount_refunded: Option<i64>,
    #[serde(default, deserialize_with = "wire::int")]
    created: Option<i64>,
    /// Invoices before basil.
    #[serde(default, deserialize_with = "wire::text")]
    subscription: Option<String>,
    #[serde(default, deserialize_with = "wire::lenient")]
    metadata: Option<Metadata>,
    #[serde(default, deserialize_with = "wire::lenient")]
    parent: Option<Parent>,
    /// Invoices before basil.
    #[serde(default, deserialize_with = "wire::lenient")]
    subscription_details: Option<Details>,
    #[serde(default, deserialize_with = "wire::lenient")]
    lines: Option<Lines>,
}

type Metadata = BTreeMap<String, Value>;

#[derive(Deserialize)]
struct Parent {
    #[serde(default, deserialize_with = "wire::lenient")]
    subscription_details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    #[serde(default, deserialize_with = "wire::text")]
    subscription: Option<String>,
    #[serde(default, deserialize_with = "wire::lenient")]
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
struct Lines {
    #[serde(default)]
    data: Vec<Line>,
}

#[derive(Deserialize)]
struct Line {
    #[serde(default, deserialize_with = "wire::lenient")]
    period: Option<Period>,
}

#[derive(Deserialize)]
struct Period {
    #[serde(default, deserialize_with = "wire::int")]
    start: Option<i64>,
}

impl Wire {
    /// Our metadata wherever it travels with the object, in the order it applies: the
    /// subscription's snapshot on an invoice (basil's `parent.subscription_details`, or the older
    /// `subscription_details`), then the object's own, whose keys win.
    fn metadata(&self) -> impl Iterator<Item = &Metadata> {
        let basil = self.parent.as_ref().and_then(|p| p.subscription_details.as_ref()).and_then(|d| d.metadata.as_ref());
        let older = self.subscription_details.as_ref().and_then(|d| d.metadata.as_ref());
        [older, basil, self.metadata.as_ref()].into_iter().flatten()
    }

    /// Every metadata key and value, as text.
    pub(super) fn carried(&self) -> BTreeMap<String, String> {
        self.metadata().flat_map(|m| m.iter().map(|(key, value)| (key.clone(), crate::plain_text(value)))).collect()
    }

    /// The Kommo lead our metadata names: the object's own first, then its subscription's.
    pub(super) fn lead_id(&self, key: &str) -> Option<crate::ids::LeadId> {
        let places: Vec<&Metadata> = self.metadata().collect();
        places.into_iter().rev().find_map(|m| m.get(key).and_then(crate::wire::lenient_id)).map(crate::ids::LeadId)
    }

    pub(super) fn decode(self) -> Object {
        let id = self.id.clone().unwrap_or_default();
        let currency = self.currency.clone().unwrap_or_default();
        match self.object.as_deref().unwrap_or_default() {
            "checkout.session" => Object::CheckoutSession(CheckoutSession {
                id,
                mode: self.mode.unwrap_or_default(),
                payment_status: self.payment_status.unwrap_or_default(),
                payment_intent: self.payment_intent,
                payment_link: self.payment_link,
                amount_total: self.amount_total,
                currency,
            }),
            "payment_intent" => Object::PaymentIntent(PaymentIntent { id, amount_received: self.amount_received, currency }),
            "invoice" => {
                let first_line = self.lines.as_ref().and_then(|l| l.data.first()).and_then(|line| line.period.as_ref()).and_then(|p| p.start);
                let basil = self.parent.as_ref().and_then(|p| p.subscription_details.as_ref()).and_then(|d| d.subscription.clone());
                Object::Invoice(Invoice {
                    id,
                    amount_paid: self.amount_paid,
                    amount_due: self.amount_due,
                    currency,
                    subscription: basil.or(self.subscription),
                    billing_period: first_line.or(self.created).and_then(|t| DateTime::from_timestamp(t, 0)),
                })
            }
            "subscription" => Object::Subscription(Subscription { id, status: self.status }),
            "charge" => Object::Charge(Charge {
                id,
                payment_intent: self.payment_intent,
                amount: self.amount,
                amount_refunded: self.amount_refunded.unwrap_or(0),
                currency,
            }),
            other => Object::Other(other.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn wire(object: Value) -> Wire {
        serde_json::from_str(&object.to_string()).unwrap()
    }

    fn decode(object: Value) -> Object {
        wire(object).decode()
    }

    #[test]
    fn a_basil_invoice_names_its_subscription_and_stands_at_its_first_lines_period() {
        let invoice = decode(json!({
            "object": "invoice", "id": "in_2", "amount_paid": 4990, "amount_due": 4990, "currency": "usd", "created": 1764180000,
            "parent": { "subscription_details": { "subscription": "sub_1", "metadata": { "kommo_lead_id": "15318175" } } },
            "lines": { "data": [{ "period": { "start": 1764000000, "end": 1766600000 } }] }
        }));
        let Object::Invoice(invoice) = invoice else { panic!("an invoice") };
        assert_eq!(invoice.subscription.as_deref(), Some("sub_1"));
        assert_eq!(invoice.billing_period.unwrap().timestamp(), 1764000000);
        let older = decode(json!({ "object": "invoice", "id": "in_1", "subscription": "sub_0", "created": 1764180000 }));
        let Object::Invoice(older) = older else { panic!("an invoice") };
        assert_eq!((older.subscription.as_deref(), older.billing_period.unwrap().timestamp()), (Some("sub_0"), 1764180000));
    }

    #[test]
    fn odd_fields_read_as_absent_and_unknown_objects_are_kept_by_name() {
        let session =
            decode(json!({ "object": "checkout.session", "id": "cs_1", "payment_intent": { "id": "pi_expanded" }, "amount_total": "12", "metadata": 5 }));
        let Object::CheckoutSession(session) = session else { panic!("a session") };
        assert_eq!((session.payment_intent, session.amount_total), (None, None));
        assert_eq!(decode(json!({ "object": "customer", "id": "cus_1" })), Object::Other("customer".into()));
        assert_eq!(decode(json!({})), Object::Other(String::new()));
    }

    #[test]
    fn the_objects_own_metadata_wins_over_its_subscriptions() {
        let wire = wire(json!({
            "object": "invoice",
            "metadata": { "plan": "own", "kommo_lead_id": "2" },
            "parent": { "subscription_details": { "metadata": { "plan": "subscription", "utm_source": "ad", "kommo_lead_id": "1" } } }
        }));
        let carried = wire.carried();
        assert_eq!((carried["plan"].as_str(), carried["utm_source"].as_str()), ("own", "ad"));
        assert_eq!(wire.lead_id("kommo_lead_id"), Some(crate::ids::LeadId(2)));
    }
}
