//! Property tests of everything that reads what the internet sends: arbitrary bytes never panic
//! a parser and never pass a signature check; what the clients write reads back the same.

use chrono::Utc;
use kommo_pay_core::form::{encode, parse_form};
use kommo_pay_core::kommo::webhook::KommoDelivery;
use kommo_pay_core::lemonsqueezy::webhook::{self as lemonsqueezy, LemonSqueezyEvent};
use kommo_pay_core::stripe::webhook::{self as stripe, StripeEvent};
use proptest::prelude::*;
use secrecy::SecretString;
use serde_json::{Map, Value};

const SECRET: &str = "whsec_property_test_secret";

fn secrets() -> Vec<SecretString> {
    vec![SecretString::from(SECRET)]
}

/// Bytes that look like bracket forms often enough to reach the parser's deep paths.
fn formish() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        "[a-z0-9_\\[\\]=&%+.-]{0,300}".prop_map(String::into_bytes),
        proptest::collection::vec(("[a-z]{1,6}(\\[[a-z0-9]{0,4}\\]){0,12}", "[a-zA-Z0-9 %]{0,12}"), 0..12)
            .prop_map(|pairs| { pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&").into_bytes() }),
    ]
}

/// A tree that a bracket form can carry: objects with word keys, strings, non-empty arrays.
fn form_tree() -> impl Strategy<Value = Value> {
    let leaf = "[ -~]{0,20}".prop_map(Value::String);
    let tree = leaf.prop_recursive(3, 40, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 1..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 1..4).prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    });
    proptest::collection::btree_map("[a-z_]{1,8}", tree, 1..5).prop_map(|m| Value::Object(m.into_iter().collect()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_form_and_kommo_parsers_never_panic(body in formish()) {
        if let Ok(tree) = parse_form(&body) {
            prop_assert!(tree.is_object(), "the top level is an object: {tree}");
        }
        if let Ok(delivery) = KommoDelivery::parse(&body) {
            for change in &delivery.changes {
                prop_assert!(!change.entity.is_empty() && !change.action.is_empty());
                let _ = (change.kind(), change.dedup_key(), change.lead_id());
            }
        }
    }

    #[test]
    fn what_the_clients_encode_reads_back_the_same(tree in form_tree()) {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(encode(&tree)).finish();
        prop_assert_eq!(parse_form(body.as_bytes()).unwrap(), tree);
    }

    #[test]
    fn payload_parsers_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400), json in "\\{(\"[a-z_]{1,8}\":(\"[a-z0-9_]{0,8}\"|[0-9]{1,4}|null|\\{\\}|\\[\\]),?){0,6}\\}") {
        let _ = StripeEvent::parse(&body);
        let _ = LemonSqueezyEvent::parse(&body);
        let _ = StripeEvent::parse(json.as_bytes());
        let _ = LemonSqueezyEvent::parse(json.as_bytes());
    }

    #[test]
    fn no_made_up_stripe_signature_passes(
        header in prop_oneof![
            "[ -~]{0,120}",
            ("[0-9]{1,11}", "[0-9a-f]{64}").prop_map(|(t, v1)| format!("t={t},v1={v1}")),
            ("[0-9]{1,11}", proptest::collection::vec("[0-9a-f]{0,70}", 0..4)).prop_map(|(t, v)| format!("t={t},{}", v.iter().map(|s| format!("v1={s}")).collect::<Vec<_>>().join(","))),
        ],
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        prop_assert!(stripe::verify(Some(&header), &body, &secrets(), std::time::Duration::from_secs(300), Utc::now()).is_err());
    }

    #[test]
    fn a_real_stripe_signature_passes_only_for_its_own_body(body in proptest::collection::vec(any::<u8>(), 1..200), flip in any::<prop::sample::Index>()) {
        let now = Utc::now();
        let header = stripe::signature_header(SECRET, now.timestamp(), &body);
        prop_assert!(stripe::verify(Some(&header), &body, &secrets(), std::time::Duration::from_secs(300), now).is_ok());
        let mut tampered = body.clone();
        let i = flip.index(tampered.len());
        tampered[i] ^= 0x01;
        prop_assert!(stripe::verify(Some(&header), &tampered, &secrets(), std::time::Duration::from_secs(300), now).is_err());
    }

    #[test]
    fn no_made_up_lemonsqueezy_signature_passes(header in prop_oneof!["[ -~]{0,100}", "[0-9a-fA-F]{64}"], body in proptest::collection::vec(any::<u8>(), 0..200)) {
        prop_assert!(lemonsqueezy::verify(Some(&header), &body, &secrets()).is_err());
        let real = lemonsqueezy::signature_header(SECRET, &body);
        prop_assert!(lemonsqueezy::verify(Some(&real), &body, &secrets()).is_ok());
    }
}
