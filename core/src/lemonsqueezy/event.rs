//! What a Lemon Squeezy event says, typed: decoded from a delivery's `data` by
//! [`super::webhook::LemonSqueezyEvent::parse`], the one parser ingest runs on the delivery and
//! the worker on the stored payload. Decoding never fails on the objects' attributes: a field
//! that is missing or of another type reads as empty, and the flow that needs it says so.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::money::{Currency, Money};

/// The object a delivery is about (`data.type`).
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// `orders`: `order_created`, `order_refunded`.
    Order(Order),
    /// `subscriptions`: the lifecycle snapshots (`subscription_created`, `_updated`, `_cancelled`, …).
    Subscription(Subscription),
    /// `subscription-invoices`: `subscription_payment_success`, `_failed`, `_recovered`, `_refunded`.
    SubscriptionInvoice(SubscriptionInvoice),
    /// Any other type (license keys, affiliates, …): stored in the log, nothing to do.
    Other(String),
}

/// An order's attributes as the flows read them.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    /// The number the buyer sees (`order_number`); the order id when there is none.
    pub number: String,
    /// `paid`, `pending`, `failed`, `fraudulent`, `refunded`, `partial_refund`.
    pub status: String,
    pub total: Amount,
    /// Before tax and discounts, in the order's minor units: what a checkout's custom price
    /// was.
    pub subtotal: Option<i64>,
    /// Cumulative, in the order's minor units.
    pub refunded_amount: i64,
    /// Whether any of it was refunded.
    pub refunded: bool,
    pub user_name: String,
    pub user_email: String,
    /// Of `first_order_item`.
    pub product_name: String,
    pub variant_id: String,
    pub created_at: Option<DateTime<Utc>>,
}

/// A subscription snapshot's attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// The order that started it.
    pub order_id: String,
    /// `active`, `on_trial`, `paused`, `past_due`, `unpaid`, `cancelled`, `expired`.
    pub status: String,
    pub product_name: String,
    /// The day access ends (`YYYY-MM-DD`), for a cancelled or expired subscription.
    pub ends_on: Option<String>,
    /// The snapshot's own time: which of two snapshots is newer.
    pub updated_at: Option<DateTime<Utc>>,
}

/// A subscription invoice's attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionInvoice {
    pub subscription_id: String,
    /// `initial` (the order's own money), `renewal`, `updated`.
    pub billing_reason: String,
    pub total: Amount,
    pub refunded_amount: i64,
    pub created_at: Option<DateTime<Utc>>,
}

/// An amount as Lemon Squeezy states it: integer minor units and an ISO currency code.
#[derive(Debug, Clone, PartialEq)]
pub struct Amount {
    pub minor: i64,
    pub currency: String,
}

impl Amount {
    /// The amount as money; an unknown currency is an error the flow reports.
    pub fn money(&self) -> Result<Money, crate::money::MoneyError> {
        Ok(Money::from_minor(self.minor, Currency::parse(&self.currency)?))
    }
}

impl Object {
    /// Decodes `data.attributes` of an object of type `kind` with id `id`.
    pub(super) fn decode(kind: &str, id: &str, attributes: &Value) -> Object {
        let text = |key: &str| attributes.get(key).map(text_of).unwrap_or_default();
        let amount = || Amount { minor: number(attributes.get("total")).unwrap_or(0), currency: text("currency") };
        let refunded = || number(attributes.get("refunded_amount")).unwrap_or(0);
        match kind {
            "orders" => {
                let item = |key: &str| attributes.get("first_order_item").and_then(|i| i.get(key)).map(text_of).unwrap_or_default();
                Object::Order(Order {
                    number: Some(text("order_number")).filter(|n| !n.is_empty()).unwrap_or_else(|| id.to_owned()),
                    status: text("status"),
                    total: amount(),
                    subtotal: number(attributes.get("subtotal")),
                    refunded_amount: refunded(),
                    refunded: attributes.get("refunded").and_then(Value::as_bool).unwrap_or(false),
                    user_name: text("user_name"),
                    user_email: text("user_email"),
                    product_name: item("product_name"),
                    variant_id: item("variant_id"),
                    created_at: time(&text("created_at")),
                })
            }
            "subscriptions" => Object::Subscription(Subscription {
                order_id: text("order_id"),
                status: text("status"),
                product_name: text("product_name"),
                ends_on: Some(text("ends_at")).filter(|e| !e.is_empty()).map(|e| e.get(..10).unwrap_or(&e).to_owned()),
                updated_at: time(&text("updated_at")),
            }),
            "subscription-invoices" => Object::SubscriptionInvoice(SubscriptionInvoice {
                subscription_id: text("subscription_id"),
                billing_reason: text("billing_reason"),
                total: amount(),
                refunded_amount: refunded(),
                created_at: time(&text("created_at")),
            }),
            other => Object::Other(other.to_owned()),
        }
    }
}

/// A string as it is, a number as its digits, anything else (null included) as empty.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// An integer, or a string of one.
fn number(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// An RFC 3339 time, as Lemon Squeezy writes them.
pub(super) fn time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_order_reads_its_attributes_and_tolerates_odd_types() {
        let attributes = json!({
            "order_number": 1234, "status": "paid", "currency": "USD", "total": "200000", "subtotal": 180000, "refunded_amount": null, "refunded": false,
            "user_name": "Jane", "user_email": "jane@client.example", "created_at": "2026-11-26T12:26:23.000000Z",
            "first_order_item": { "product_name": "Website redesign", "variant_id": 67890 }, "unknown": { "ignored": true }
        });
        let Object::Order(order) = Object::decode("orders", "1001", &attributes) else { panic!("an order") };
        assert_eq!((order.number.as_str(), order.status.as_str(), order.total.minor, order.refunded_amount), ("1234", "paid", 200000, 0));
        assert_eq!((order.subtotal, order.refunded), (Some(180000), false));
        assert_eq!((order.product_name.as_str(), order.variant_id.as_str()), ("Website redesign", "67890"));
        assert_eq!(order.total.money().unwrap().to_string(), "2,000.00 USD");
        assert_eq!(order.created_at.unwrap().to_rfc3339(), "2026-11-26T12:26:23+00:00");
    }

    #[test]
    fn missing_attributes_read_as_empty_and_other_types_are_kept_by_name() {
        let Object::Order(order) = Object::decode("orders", "77", &json!({})) else { panic!("an order") };
        assert_eq!((order.number.as_str(), order.total.minor, order.created_at), ("77", 0, None));
        assert!(order.total.money().is_err(), "no currency is an error for the flow to report");
        let Object::Subscription(subscription) = Object::decode("subscriptions", "5", &json!({ "ends_at": "2026-12-26T12:26:23.000000Z" })) else {
            panic!("a subscription")
        };
        assert_eq!(subscription.ends_on.as_deref(), Some("2026-12-26"));
        assert_eq!(Object::decode("license-keys", "9", &json!({})), Object::Other("license-keys".into()));
    }
}
