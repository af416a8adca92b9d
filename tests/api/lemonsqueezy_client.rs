//! The Lemon Squeezy client against a fake Lemon Squeezy speaking JSON:API.

use std::collections::BTreeMap;
use std::time::Duration;

use kommo_pay_core::lemonsqueezy::client::{LemonSqueezyClient, LemonSqueezyError, NewCheckout};
use kommo_pay_core::money::{Currency, Money};
use secrecy::SecretString;
use serde_json::json;

use crate::fakes::lemonsqueezy::{API_KEY, FakeLemonSqueezy};
use crate::helpers::*;

fn client(db: &TestDb, fake: &FakeLemonSqueezy, key: &str) -> LemonSqueezyClient {
    LemonSqueezyClient::new(db.pool.clone(), &ACCOUNT.into(), fake.url.parse().unwrap(), SecretString::from(key.to_owned()))
        .with_retry_pause(Duration::from_millis(10))
}

fn checkout(variant: &str) -> NewCheckout {
    NewCheckout {
        store_id: "12345".into(),
        variant_id: variant.into(),
        custom_price: Money::parse_major("99", Currency::parse("USD").unwrap()).unwrap(),
        custom: BTreeMap::from([("kommo_account_id".into(), "32427762".into()), ("kommo_lead_id".into(), "15318175".into())]),
        email: Some("client@example.com".into()),
        name: Some("Jane Client".into()),
        product_name: Some("Pro plan".into()),
        description: None,
        redirect_url: Some("https://acme.example/thanks".into()),
        expires_at: None,
        test_mode: true,
    }
}

#[tokio::test]
async fn a_checkout_is_a_json_api_document_with_the_deal_in_its_custom_data() {
    let db = TestDb::new().await;
    let fake = FakeLemonSqueezy::start().await;

    let created = client(&db, &fake, API_KEY).create_checkout(&checkout("67890")).await.unwrap();

    assert!(created.url.starts_with("https://acme.lemonsqueezy.com/checkout/custom/") && created.url.contains("signature="), "{created:?}");
    let request = &fake.requests()[0];
    assert_eq!(request.authorization.as_deref(), Some(format!("Bearer {API_KEY}").as_str()));
    assert_eq!(request.accept.as_deref(), Some("application/vnd.api+json"));
    assert_eq!(request.content_type.as_deref(), Some("application/vnd.api+json"));
    let data = &request.document["data"];
    assert_eq!(data["type"], "checkouts");
    assert_eq!(data["relationships"]["store"]["data"], json!({ "type": "stores", "id": "12345" }));
    assert_eq!(data["relationships"]["variant"]["data"], json!({ "type": "variants", "id": "67890" }));
    assert_eq!(data["attributes"]["custom_price"], 9900);
    assert_eq!(data["attributes"]["checkout_data"]["custom"]["kommo_lead_id"], "15318175");
    assert_eq!(data["attributes"]["checkout_data"]["email"], "client@example.com");
    assert_eq!(data["attributes"]["product_options"]["enabled_variants"], json!([67890]));
    assert_eq!(data["attributes"]["test_mode"], true);
}

#[tokio::test]
async fn refusals_are_read_from_the_errors_array_and_not_retried() {
    let db = TestDb::new().await;
    let fake = FakeLemonSqueezy::start().await;

    let error = client(&db, &fake, API_KEY).create_checkout(&checkout("999")).await.unwrap_err();

    assert!(matches!(&error.error, LemonSqueezyError::Refused { status: 404, pointer: Some(p), .. } if p == "/data/relationships/variant"), "{error:?}");
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("The variant could not be found"), "{error}");
    assert_eq!(fake.requests().len(), 1);

    let unauthorized = client(&db, &fake, "expired-key").create_checkout(&checkout("67890")).await.unwrap_err();
    assert!(matches!(unauthorized.error, LemonSqueezyError::Unauthorized { status: 401, .. }), "{unauthorized:?}");
    assert!(!unauthorized.to_string().contains("expired-key"));
}

#[tokio::test]
async fn server_errors_are_retried_and_a_429_pauses_the_account() {
    let db = TestDb::new().await;
    let fake = FakeLemonSqueezy::start().await;
    fake.fail_next(500, json!({ "errors": [{ "detail": "Server Error", "status": "500" }] }));
    fake.fail_next(502, json!({}));

    assert!(client(&db, &fake, API_KEY).create_checkout(&checkout("67890")).await.is_ok());
    assert_eq!(fake.requests().len(), 3);

    fake.fail_next(429, json!({ "errors": [{ "detail": "Too Many Attempts.", "status": "429" }] }));
    let limited = client(&db, &fake, API_KEY).create_checkout(&checkout("67890")).await.unwrap_err();
    assert!(matches!(limited.error, LemonSqueezyError::RateLimited(_)) && limited.is_retryable());
    let again = client(&db, &fake, API_KEY).create_checkout(&checkout("67890")).await.unwrap_err();
    assert!(matches!(again.error, LemonSqueezyError::RateLimited(_)), "paused for every client of the account: {again:?}");
    assert_eq!(fake.requests().len(), 4, "nothing sent during the pause");
}

#[tokio::test]
async fn an_outage_that_outlasts_the_tries_names_the_call_and_every_tries_failure() {
    let db = TestDb::new().await;
    let fake = FakeLemonSqueezy::start().await;
    for status in [500, 502, 503] {
        fake.fail_next(status, json!({ "errors": [{ "detail": "Server Error", "status": status.to_string() }] }));
    }

    let error = client(&db, &fake, API_KEY).create_checkout(&checkout("67890")).await.unwrap_err();

    assert!(error.is_retryable());
    let text = error.to_string();
    assert!(text.starts_with("Lemon Squeezy POST v1/checkouts: Lemon Squeezy is unavailable: 503: Server Error"), "{text}");
    assert!(text.contains("earlier tries: Lemon Squeezy is unavailable: 500: Server Error; Lemon Squeezy is unavailable: 502"), "{text}");
}
