//! Stripe webhook deliveries: the `Stripe-Signature` header and the event envelope.
//!
//! The signature is HMAC-SHA256 (hex) of `"{t}.{raw body}"`, keyed with the whole `whsec_…`
//! string. During a secret roll Stripe sends several `v1` values; any match is enough. Other
//! schemes (test mode's fake `v0`) are ignored, which also blocks downgrades.

use crate::ids::LeadId;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::event::{Object, Wire};
use crate::event_log::{PayloadError, raw_json};
use crate::signature::{self, SignatureError};

pub const SIGNATURE_HEADER: &str = "Stripe-Signature";

/// Checks `header` against `body` with each of `secrets`.
///
/// The timestamp is checked only after a signature matched, so an unauthenticated sender learns
/// nothing about our clock. Timestamps more than `tolerance` in the past are stale; unlike
/// Stripe's libraries we also refuse ones more than `tolerance` in the future, which no honest
/// delivery has.
pub fn verify(header: Option<&str>, body: &[u8], secrets: &[SecretString], tolerance: Duration, now: DateTime<Utc>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing(SIGNATURE_HEADER))?;
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else { continue };
        match key {
            "t" => timestamp = Some(value),
            // A v1 that is not hex cannot match; skip it rather than reject its siblings.
            "v1" => candidates.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    let t_text = timestamp.ok_or(SignatureError::Malformed(SIGNATURE_HEADER))?;
    let t: i64 = t_text.parse().map_err(|_| SignatureError::Malformed(SIGNATURE_HEADER))?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed(SIGNATURE_HEADER));
    }
    if !signature::any_matches(secrets, &[t_text.as_bytes(), b".", body], &candidates) {
        return Err(SignatureError::Mismatch);
    }
    let age = now.timestamp() - t;
    let tolerance = tolerance.as_secs() as i64;
    if age > tolerance {
        return Err(SignatureError::Stale(age));
    }
    if -age > tolerance {
        return Err(SignatureError::Future(-age));
    }
    Ok(())
}

/// The header Stripe would send for `body` signed at `timestamp` with `secret`.
pub fn signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let t = timestamp.to_string();
    format!("t={t},v1={}", signature::sign_hex(secret, &[t.as_bytes(), b".", body]))
}

/// A Stripe event, parsed once: by ingest from the request's body, by the worker from the stored
/// payload (the same bytes), by reconciliation from the events API. The whole event is kept as
/// the payload.
#[derive(Debug, Clone)]
pub struct StripeEvent {
    /// `evt_…`: Stripe's own id, our dedup key.
    pub id: String,
    /// The event type, e.g. `checkout.session.completed`.
    pub kind: String,
    pub livemode: bool,
    /// When Stripe created the event: the time of the change it announces.
    pub created: Option<DateTime<Utc>>,
    /// The Kommo lead, when our metadata travelled with the object.
    pub lead_id: Option<LeadId>,
    /// Every metadata key the object carries, as text (its own keys win over its
    /// subscription's): what checkout data the deal's fields may take.
    pub metadata: BTreeMap<String, String>,
    /// `data.object`, typed.
    pub object: Object,
    pub payload: Box<RawValue>,
}

/// The metadata key under which payment links carry the Kommo lead id.
pub const LEAD_ID_METADATA_KEY: &str = "kommo_lead_id";

// The envelope: typed and borrowed where only read; the object's fields we read, the rest of
// the body only scanned, not built into a tree (ingest's CPU per event bounds its rate).
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    livemode: bool,
    created: Option<i64>,
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    object: Option<Wire>,
}

impl StripeEvent {
    pub fn parse(body: &[u8]) -> Result<StripeEvent, PayloadError> {
        let envelope: Envelope<'_> = serde_json::from_slice(body).map_err(|e| PayloadError::new(format!("not a Stripe event: {e}")))?;
        let id = envelope.id.filter(|id| !id.is_empty()).ok_or_else(|| PayloadError::new("the event has no \"id\""))?;
        if !id.starts_with("evt_") || id.len() > 255 {
            return Err(PayloadError::new("the event id is not an evt_ id"));
        }
        let kind = envelope.kind.filter(|k| !k.is_empty()).ok_or_else(|| PayloadError::new("the event has no \"type\""))?;
        let object = envelope.data.and_then(|d| d.object).ok_or_else(|| PayloadError::new("the event has no data.object"))?;
        Ok(StripeEvent {
            id: id.into_owned(),
            kind: kind.into_owned(),
            livemode: envelope.livemode,
            created: envelope.created.and_then(|t| DateTime::from_timestamp(t, 0)),
            lead_id: object.lead_id(LEAD_ID_METADATA_KEY),
            metadata: object.carried(),
            object: object.decode(),
            payload: raw_json(body)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const SECRET: &str = "whsec_test_secret";
    const BODY: &[u8] = br#"{"id":"evt_1","type":"checkout.session.completed","livemode":false,"data":{"object":{"metadata":{"kommo_lead_id":"42"}}}}"#;
    const TOLERANCE: Duration = Duration::from_secs(300);

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000, 0).unwrap()
    }

    fn check(header: Option<&str>, body: &[u8], secrets: &[&str]) -> Result<(), SignatureError> {
        let secrets: Vec<SecretString> = secrets.iter().map(|s| SecretString::from(*s)).collect();
        verify(header, body, &secrets, TOLERANCE, now())
    }

    fn v1(secret: &str, t: i64) -> String {
        signature::sign_hex(secret, &[t.to_string().as_bytes(), b".", BODY])
    }

    #[test]
    fn signature_cases() {
        let t = now().timestamp();
        let good = signature_header(SECRET, t, BODY);
        // (name, header, body, secrets, expected)
        type Case<'a> = (&'a str, Option<String>, &'a [u8], &'a [&'a str], Result<(), SignatureError>);
        let cases: Vec<Case<'_>> = vec![
            ("valid", Some(good.clone()), BODY, &[SECRET], Ok(())),
            ("spaces after commas", Some(good.replace(',', ", ")), BODY, &[SECRET], Ok(())),
            ("several v1, one valid", Some(format!("t={t},v1={},v1={}", v1("other", t), v1(SECRET, t))), BODY, &[SECRET], Ok(())),
            ("fake v0 ignored", Some(format!("{good},v0={}", "00".repeat(32))), BODY, &[SECRET], Ok(())),
            ("only v0 present", Some(format!("t={t},v0={}", v1(SECRET, t))), BODY, &[SECRET], Err(SignatureError::Malformed(SIGNATURE_HEADER))),
            ("rotated: old secret still configured", Some(signature_header("whsec_old", t, BODY)), BODY, &["whsec_new", "whsec_old"], Ok(())),
            ("rotated: old secret removed", Some(signature_header("whsec_old", t, BODY)), BODY, &["whsec_new"], Err(SignatureError::Mismatch)),
            ("tampered body", Some(good.clone()), &BODY[..BODY.len() - 1], &[SECRET], Err(SignatureError::Mismatch)),
            ("wrong secret", Some(good.clone()), BODY, &["whsec_other"], Err(SignatureError::Mismatch)),
            ("stale", Some(signature_header(SECRET, t - 301, BODY)), BODY, &[SECRET], Err(SignatureError::Stale(301))),
            ("just within tolerance", Some(signature_header(SECRET, t - 300, BODY)), BODY, &[SECRET], Ok(())),
            ("future", Some(signature_header(SECRET, t + 301, BODY)), BODY, &[SECRET], Err(SignatureError::Future(301))),
            ("timestamp swapped after signing", Some(good.replace(&format!("t={t}"), &format!("t={}", t + 1))), BODY, &[SECRET], Err(SignatureError::Mismatch)),
            ("missing", None, BODY, &[SECRET], Err(SignatureError::Missing(SIGNATURE_HEADER))),
            ("empty", Some(String::new()), BODY, &[SECRET], Err(SignatureError::Malformed(SIGNATURE_HEADER))),
            ("garbled", Some("garbage".into()), BODY, &[SECRET], Err(SignatureError::Malformed(SIGNATURE_HEADER))),
            ("non-numeric t", Some(good.replace(&format!("t={t}"), "t=yesterday")), BODY, &[SECRET], Err(SignatureError::Malformed(SIGNATURE_HEADER))),
            ("non-hex v1", Some(format!("t={t},v1=zz")), BODY, &[SECRET], Err(SignatureError::Malformed(SIGNATURE_HEADER))),
        ];
        for (name, header, body, secrets, want) in cases {
            assert_eq!(check(header.as_deref(), body, secrets), want, "case {name:?}");
        }
    }

    #[test]
    fn parses_the_envelope_and_finds_the_lead() {
        let event = StripeEvent::parse(BODY).unwrap();
        assert_eq!((event.id.as_str(), event.kind.as_str(), event.lead_id), ("evt_1", "checkout.session.completed", Some(LeadId(42))));

        let invoice = br#"{"id":"evt_2","type":"invoice.paid","data":{"object":{"parent":{"type":"subscription_details","subscription_details":{"metadata":{"kommo_lead_id":"7"}}}}}}"#;
        assert_eq!(StripeEvent::parse(invoice).unwrap().lead_id, Some(LeadId(7)));
        let older = br#"{"id":"evt_3","type":"invoice.paid","data":{"object":{"subscription_details":{"metadata":{"kommo_lead_id":8}}}}}"#;
        assert_eq!(StripeEvent::parse(older).unwrap().lead_id, Some(LeadId(8)));
        let none = br#"{"id":"evt_4","type":"charge.refunded","data":{"object":{"metadata":{}}}}"#;
        assert_eq!(StripeEvent::parse(none).unwrap().lead_id, None);
    }

    #[test]
    fn malformed_envelopes_are_rejected() {
        for body in [
            &b"not json"[..],
            b"[]",
            br#"{"type":"x","data":{"object":{}}}"#,
            br#"{"id":"x","type":"y","data":{"object":{}}}"#,
            br#"{"id":"evt_1","data":{"object":{}}}"#,
            br#"{"id":"evt_1","type":"x"}"#,
        ] {
            assert!(StripeEvent::parse(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }
}
