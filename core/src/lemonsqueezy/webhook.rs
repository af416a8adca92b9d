//! Lemon Squeezy webhook deliveries: the `X-Signature` header and the JSON:API envelope.
//!
//! The signature is the hex HMAC-SHA256 of the raw body alone: there is no timestamp, and no
//! event id. Deliveries are deduplicated on natural keys (see [`LemonSqueezyEvent::dedup_key`]).

use crate::ids::LeadId;
use std::borrow::Cow;
use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::event::Object;
use crate::event_log::{PayloadError, raw_json};
use crate::signature::{self, SignatureError};

pub const SIGNATURE_HEADER: &str = "X-Signature";

pub fn verify(header: Option<&str>, body: &[u8], secrets: &[SecretString]) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing(SIGNATURE_HEADER))?;
    let candidate = hex::decode(header.trim()).map_err(|_| SignatureError::Malformed(SIGNATURE_HEADER))?;
    if candidate.len() != 32 {
        return Err(SignatureError::Malformed(SIGNATURE_HEADER));
    }
    if signature::any_matches(secrets, &[body], &[candidate]) { Ok(()) } else { Err(SignatureError::Mismatch) }
}

/// The header Lemon Squeezy would send for `body` signed with `secret`.
pub fn signature_header(secret: &str, body: &[u8]) -> String {
    signature::sign_hex(secret, &[body])
}

/// The `checkout_data.custom` key under which checkouts carry the Kommo lead id.
pub const LEAD_ID_CUSTOM_KEY: &str = "kommo_lead_id";

/// A delivery, parsed once: by ingest from the request's body, by the worker from the stored
/// payload (the same bytes), by reconciliation from a listed object.
#[derive(Debug, Clone)]
pub struct LemonSqueezyEvent {
    /// `meta.event_name` (the signed one; `X-Event-Name` is not signed).
    pub kind: String,
    /// `data.id`: the order's, subscription's or invoice's id.
    pub id: String,
    pub dedup_key: String,
    pub test_mode: bool,
    pub lead_id: Option<LeadId>,
    /// What the checkout carried (`meta.custom_data`), values as text; empty when nothing.
    pub custom: BTreeMap<String, String>,
    /// `data` typed by its `type`.
    pub object: Object,
    pub payload: Box<RawValue>,
}

// The envelope: typed and borrowed where only read, the attributes kept for the typed object.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    meta: Option<Meta<'a>>,
    #[serde(borrow)]
    data: Option<Data<'a>>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow)]
    event_name: Option<Cow<'a, str>>,
    #[serde(default)]
    test_mode: bool,
    custom_data: Option<Value>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    /// A numeric string in practice; numbers are accepted too.
    id: Option<Value>,
    #[serde(default)]
    attributes: Value,
}

impl LemonSqueezyEvent {
    pub fn parse(body: &[u8]) -> Result<LemonSqueezyEvent, PayloadError> {
        let envelope: Envelope<'_> = serde_json::from_slice(body).map_err(|e| PayloadError::new(format!("not a Lemon Squeezy event: {e}")))?;
        let meta = envelope.meta.ok_or_else(|| PayloadError::new("meta is missing"))?;
        let kind = meta.event_name.filter(|s| !s.is_empty()).ok_or_else(|| PayloadError::new("meta.event_name is missing"))?;
        let data = envelope.data.ok_or_else(|| PayloadError::new("data is missing"))?;
        let id = match data.id {
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(PayloadError::new("data.id is missing")),
        };
        let dedup_key = dedup_key(&kind, &id, &data.attributes);
        let custom_data = meta.custom_data.as_ref().and_then(Value::as_object);
        let lead_id = custom_data.and_then(|c| c.get(LEAD_ID_CUSTOM_KEY)).and_then(crate::wire::lenient_id).map(LeadId);
        let custom = custom_data.into_iter().flatten().map(|(key, value)| (key.clone(), crate::plain_text(value))).collect();
        let object = Object::decode(data.kind.as_deref().unwrap_or_default(), &id, &data.attributes);
        Ok(LemonSqueezyEvent { kind: kind.into_owned(), id, dedup_key, test_mode: meta.test_mode, lead_id, custom, object, payload: raw_json(body)? })
    }
}

impl LemonSqueezyEvent {
    /// The event a webhook named `name` would have delivered for `object` (a listed order or
    /// subscription, `super::client::Listed::raw`), with the deal in its custom data: the same
    /// envelope, so the same natural key, and a late webhook for the same fact is a duplicate.
    pub fn announcing(name: &str, object: &Value, lead_id: Option<LeadId>) -> Result<LemonSqueezyEvent, PayloadError> {
        let custom = lead_id.map(|lead| serde_json::json!({ LEAD_ID_CUSTOM_KEY: lead.to_string() }));
        let test_mode = object.pointer("/attributes/test_mode").cloned().unwrap_or(Value::Bool(false));
        let body = serde_json::json!({ "meta": { "event_name": name, "test_mode": test_mode, "custom_data": custom }, "data": object });
        LemonSqueezyEvent::parse(body.to_string().as_bytes())
    }
}

/// The natural key of a delivery, so that retries and resends collapse into one event.
///
/// - `order_created` and `subscription_payment_success|failed|recovered` happen once per order or
///   invoice: the event name and the object id.
/// - Refunds can repeat on the same object (several partial refunds): add the cumulative
///   `refunded_amount`.
/// - Everything else (`subscription_*` snapshots, license keys, unknown events) is a snapshot of
///   an object that changes over time: add `updated_at`. Two snapshots with the same `updated_at`
///   under one event name carry the same state.
fn dedup_key(kind: &str, id: &str, attributes: &Value) -> String {
    let refunded_amount = match attributes.get("refunded_amount") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    };
    let updated_at = attributes.get("updated_at").and_then(Value::as_str).unwrap_or("-");
    match kind {
        "order_created" | "subscription_payment_success" | "subscription_payment_failed" | "subscription_payment_recovered" => format!("{kind}:{id}"),
        "order_refunded" | "subscription_payment_refunded" => format!("{kind}:{id}:{refunded_amount}"),
        _ => format!("{kind}:{id}:{updated_at}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(event: &str, id: &str, attributes: &str, custom: &str) -> Vec<u8> {
        format!(
            r#"{{"meta":{{"event_name":"{event}","test_mode":true,"webhook_id":"8b1e","custom_data":{custom}}},"data":{{"type":"orders","id":"{id}","attributes":{attributes}}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn signature_cases() {
        let payload = body("order_created", "1", "{}", "{}");
        let good = signature_header("ls_secret", &payload);
        let secrets = |s: &[&str]| s.iter().map(|s| SecretString::from(*s)).collect::<Vec<_>>();
        // (name, header, body, secrets, expected)
        type Case<'a> = (&'a str, Option<String>, &'a [u8], Vec<SecretString>, Result<(), SignatureError>);
        let cases: Vec<Case<'_>> = vec![
            ("valid", Some(good.clone()), &payload, secrets(&["ls_secret"]), Ok(())),
            ("upper-case hex", Some(good.to_uppercase()), &payload, secrets(&["ls_secret"]), Ok(())),
            ("second secret during rotation", Some(good.clone()), &payload, secrets(&["new", "ls_secret"]), Ok(())),
            ("tampered body", Some(good.clone()), &payload[1..], secrets(&["ls_secret"]), Err(SignatureError::Mismatch)),
            ("wrong secret", Some(good.clone()), &payload, secrets(&["other"]), Err(SignatureError::Mismatch)),
            ("missing", None, &payload, secrets(&["ls_secret"]), Err(SignatureError::Missing(SIGNATURE_HEADER))),
            ("not hex", Some("xyz".into()), &payload, secrets(&["ls_secret"]), Err(SignatureError::Malformed(SIGNATURE_HEADER))),
            ("truncated", Some(good[..62].to_string()), &payload, secrets(&["ls_secret"]), Err(SignatureError::Malformed(SIGNATURE_HEADER))),
        ];
        for (name, header, body, secrets, want) in cases {
            assert_eq!(verify(header.as_deref(), body, &secrets), want, "case {name:?}");
        }
    }

    #[test]
    fn natural_dedup_keys() {
        let key = |event: &str, attrs: &str| LemonSqueezyEvent::parse(&body(event, "77", attrs, "{}")).unwrap().dedup_key;
        assert_eq!(key("order_created", r#"{"updated_at":"2026-01-01T00:00:00.000000Z"}"#), "order_created:77");
        assert_eq!(key("subscription_payment_success", "{}"), "subscription_payment_success:77");
        assert_eq!(key("order_refunded", r#"{"refunded_amount":500}"#), "order_refunded:77:500");
        assert_ne!(key("order_refunded", r#"{"refunded_amount":500}"#), key("order_refunded", r#"{"refunded_amount":900}"#));
        assert_eq!(key("subscription_updated", r#"{"updated_at":"2026-01-01T00:00:00.000000Z"}"#), "subscription_updated:77:2026-01-01T00:00:00.000000Z");
        assert_eq!(key("something_new", "{}"), "something_new:77:-");
    }

    #[test]
    fn finds_the_lead_in_custom_data_as_string_or_number() {
        let lead = |custom: &str| LemonSqueezyEvent::parse(&body("order_created", "1", "{}", custom)).unwrap().lead_id;
        assert_eq!(lead(r#"{"kommo_lead_id":"15318175"}"#), Some(LeadId(15318175)));
        assert_eq!(lead(r#"{"kommo_lead_id":15318175}"#), Some(LeadId(15318175)));
        assert_eq!(lead(r#"{"kommo_lead_id":"abc"}"#), None);
        assert_eq!(lead("null"), None);
    }

    #[test]
    fn the_object_is_typed_by_its_type_and_the_custom_data_read_as_text() {
        let custom = r#"{"kommo_lead_id":15318175,"utm_source":"site"}"#;
        let event = LemonSqueezyEvent::parse(&body("order_created", "1001", r#"{"status":"paid","total":200000,"currency":"USD"}"#, custom)).unwrap();
        assert_eq!((event.id.as_str(), event.lead_id), ("1001", Some(LeadId(15318175))));
        assert_eq!(event.custom.get("kommo_lead_id").map(String::as_str), Some("15318175"));
        assert_eq!(event.custom.get("utm_source").map(String::as_str), Some("site"));
        let Object::Order(order) = event.object else { panic!("an order: {:?}", event.object) };
        assert_eq!((order.status.as_str(), order.total.minor, order.total.currency.as_str()), ("paid", 200000, "USD"));
    }

    #[test]
    fn malformed_envelopes_are_rejected() {
        for body in [
            &b"{"[..],
            br#"{"data":{"id":"1"}}"#,
            br#"{"meta":{"event_name":"order_created"}}"#,
            br#"{"meta":{"event_name":"order_created"},"data":{"type":"orders"}}"#,
        ] {
            assert!(LemonSqueezyEvent::parse(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }
}
