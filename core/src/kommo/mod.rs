//! Kommo (amoCRM): the CRM whose deals we keep in step with payments.

mod batch;
pub mod client;
pub mod fields;
pub mod oauth;
pub mod setup;
pub mod webhook;

use serde_json::Value;

/// Reads an id that may arrive as a number or as a string of digits (Kommo's webhooks send every
/// value as a string; provider metadata round-trips ids as strings).
pub fn lenient_id(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|id| *id > 0)
}
