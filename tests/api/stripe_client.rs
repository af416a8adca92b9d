//! The Stripe client against a fake Stripe that speaks Stripe's wire format.

use std::collections::BTreeMap;
use std::time::Duration;

use kommo_pay_core::money::{Currency, Money};
use kommo_pay_core::stripe::client::{API_VERSION, Interval, NewPaymentLink, Recurring, StripeClient, StripeError};
use secrecy::SecretString;
use serde_json::json;

use crate::fakes::stripe::FakeStripe;

fn client(base: &str) -> StripeClient {
    StripeClient::new(base.parse().unwrap(), SecretString::from("sk_test_fake_key")).with_retry_pause(Duration::from_millis(10))
}

fn link(amount: &str, currency: &str, recurring: Option<Recurring>) -> NewPaymentLink {
    NewPaymentLink {
        product_name: "Website redesign".into(),
        amount: Money::parse_major(amount, Currency::parse(currency).unwrap()).unwrap(),
        recurring,
        metadata: BTreeMap::from([("kommo_account_id".into(), "32427762".into()), ("kommo_lead_id".into(), "15318175".into())]),
        redirect_url: Some("https://acme.example/thanks".into()),
    }
}

#[tokio::test]
async fn a_one_time_link_carries_the_deal_in_every_metadata_and_allows_one_payment() {
    let stripe = FakeStripe::start().await;

    let created = client(&stripe.url).create_payment_link(&link("2000", "USD", None), "plink-create:acme:15318175:1").await.unwrap();

    assert_eq!((created.id.as_str(), created.url.as_str(), created.active), ("plink_fake1", "https://buy.stripe.com/test_fake1", true));
    let request = &stripe.requests()[0];
    assert_eq!(request.version.as_deref(), Some(API_VERSION));
    assert_eq!(request.idempotency_key.as_deref(), Some("plink-create:acme:15318175:1"));
    assert_eq!(request.authorization.as_deref(), Some("Bearer sk_test_fake_key"));
    let p = &request.params;
    assert_eq!(p["line_items"][0]["price_data"], json!({ "currency": "usd", "unit_amount": "200000", "product_data": { "name": "Website redesign" } }));
    assert_eq!(p["line_items"][0]["quantity"], "1");
    assert_eq!(p["metadata"]["kommo_lead_id"], "15318175");
    assert_eq!(p["payment_intent_data"]["metadata"]["kommo_lead_id"], "15318175");
    assert_eq!(p["restrictions"]["completed_sessions"]["limit"], "1");
    assert_eq!(p["after_completion"], json!({ "type": "redirect", "redirect": { "url": "https://acme.example/thanks" } }));
    assert!(p.get("subscription_data").is_none());
}

#[tokio::test]
async fn a_subscription_link_recurs_and_puts_the_deal_on_the_subscription() {
    let stripe = FakeStripe::start().await;
    let monthly = Some(Recurring { interval: Interval::Month, interval_count: 1 });

    client(&stripe.url).create_payment_link(&link("49.90", "EUR", monthly), "k").await.unwrap();

    let p = &stripe.requests()[0].params;
    assert_eq!(p["line_items"][0]["price_data"]["recurring"], json!({ "interval": "month", "interval_count": "1" }));
    assert_eq!(p["line_items"][0]["price_data"]["unit_amount"], "4990");
    assert_eq!(p["subscription_data"]["metadata"]["kommo_lead_id"], "15318175");
    assert!(p.get("payment_intent_data").is_none() && p.get("restrictions").is_none());
}

#[tokio::test]
async fn server_errors_are_retried_with_the_same_idempotency_key() {
    let stripe = FakeStripe::start().await;
    stripe.fail_next(500, json!({ "error": { "type": "api_error", "message": "Something went wrong" } }), None);
    stripe.fail_next(429, json!({ "error": { "type": "invalid_request_error", "code": "rate_limit", "message": "Too many requests" } }), None);

    let created = client(&stripe.url).create_payment_link(&link("10", "USD", None), "same-key").await.unwrap();

    assert_eq!(created.id, "plink_fake1");
    let keys: Vec<_> = stripe.requests().iter().map(|r| r.idempotency_key.clone().unwrap()).collect();
    assert_eq!(keys, vec!["same-key"; 3]);
}

#[tokio::test]
async fn a_replayed_key_returns_the_first_link_instead_of_a_second() {
    let stripe = FakeStripe::start().await;
    let client = client(&stripe.url);
    let first = client.create_payment_link(&link("10", "USD", None), "job-7").await.unwrap();
    let again = client.create_payment_link(&link("10", "USD", None), "job-7").await.unwrap();
    assert_eq!(first, again);
}

#[tokio::test]
async fn stripe_errors_are_parsed_and_classified() {
    let stripe = FakeStripe::start().await;
    let client = client(&stripe.url);

    let error = client.create_payment_link(&link("0.10", "USD", None), "a").await.unwrap_err();
    let StripeError::Api { status, kind, code, param, .. } = &error.error else { panic!("{error:?}") };
    assert_eq!((*status, kind.as_str(), code.as_deref()), (400, "invalid_request_error", Some("amount_too_small")));
    assert_eq!(param.as_deref(), Some("line_items[0][price_data][unit_amount]"));
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("Amount must be at least 50 cents"), "{error}");

    stripe.fail_next(500, json!({ "error": { "type": "api_error", "message": "no" } }), Some(false));
    let error = client.create_payment_link(&link("10", "USD", None), "b").await.unwrap_err();
    assert!(!error.is_retryable(), "Stripe-Should-Retry: false wins over the status");
    assert_eq!(stripe.requests().len(), 2, "and it was not tried again");
}

#[tokio::test]
async fn persistent_outages_end_in_a_retryable_error_for_the_job() {
    let stripe = FakeStripe::start().await;
    for _ in 0..3 {
        stripe.fail_next(503, json!({ "error": { "type": "api_error", "message": "down" } }), None);
    }
    let error = client(&stripe.url).create_payment_link(&link("10", "USD", None), "k").await.unwrap_err();
    assert!(error.is_retryable());
    assert_eq!(stripe.requests().len(), 3, "one try and two retries");

    let unreachable = client("http://127.0.0.1:9").create_payment_link(&link("10", "USD", None), "k").await.unwrap_err();
    assert!(matches!(unreachable.error, StripeError::Unreachable(_)) && unreachable.is_retryable(), "{unreachable:?}");
    assert!(!unreachable.to_string().contains("sk_test"), "no secret in errors");
}

#[tokio::test]
async fn deactivating_a_link() {
    let stripe = FakeStripe::start().await;
    let client = client(&stripe.url);
    let created = client.create_payment_link(&link("10", "USD", None), "k").await.unwrap();

    let updated = client.deactivate_payment_link(&created.id, "deactivate:k").await.unwrap();

    assert!(!updated.active);
    assert_eq!(stripe.link(&created.id).unwrap()["active"], false);
    assert_eq!(stripe.requests()[1].path, format!("/v1/payment_links/{}", created.id));
    assert_eq!(stripe.requests()[1].params, json!({ "active": "false" }));
}
