use serde_json::Value;

use crate::helpers::*;

fn order_created(order_id: &str, lead_id: &str) -> String {
    serde_json::json!({
        "meta": {
            "event_name": "order_created",
            "test_mode": true,
            "webhook_id": "8b1e3a4c-0000-4000-8000-000000000001",
            "custom_data": { "kommo_account_id": KOMMO_ACCOUNT_ID.to_string(), "kommo_lead_id": lead_id }
        },
        "data": {
            "type": "orders",
            "id": order_id,
            "attributes": {
                "store_id": 12345, "customer_id": 777, "order_number": 1234, "user_email": "buyer@example.com",
                "currency": "USD", "status": "paid", "total": 9900, "refunded": false,
                "first_order_item": { "product_name": "Pro plan", "variant_id": 67890, "price": 9900 },
                "created_at": "2026-11-26T12:26:23.000000Z", "updated_at": "2026-11-26T12:26:23.000000Z"
            }
        }
    })
    .to_string()
}

#[tokio::test]
async fn a_signed_order_is_logged_with_its_job() {
    let app = spawn_app().await;
    let body = order_created("1001", "15318175");

    let response = app.post_lemonsqueezy(ACCOUNT, &body, Some(&ls_signature(LS_SECRET, &body))).await;

    assert_eq!(response.status(), 200);
    let (kind, dedup_key, lead_id): (String, String, Option<i64>) =
        sqlx::query_as("SELECT kind, dedup_key, lead_id FROM events").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!((kind.as_str(), dedup_key.as_str(), lead_id), ("order_created", "order_created:1001", Some(15318175)));
    assert_eq!(app.db.count("SELECT count(*) FROM jobs WHERE kind = 'lemonsqueezy.order'").await, 1);
}

#[tokio::test]
async fn a_resent_order_is_one_event() {
    let app = spawn_app().await;
    let body = order_created("1002", "1");
    let signature = ls_signature(LS_SECRET, &body);
    for _ in 0..3 {
        assert_eq!(app.post_lemonsqueezy(ACCOUNT, &body, Some(&signature)).await.status(), 200);
    }
    assert_eq!((app.events().await, app.jobs().await), (1, 1));
}

#[tokio::test]
async fn unknown_event_names_are_stored_and_answered_200() {
    let app = spawn_app().await;
    let body = order_created("1003", "1").replace("order_created", "affiliate_activated");

    let response = app.post_lemonsqueezy(ACCOUNT, &body, Some(&ls_signature(LS_SECRET, &body))).await;

    assert_eq!(response.status(), 200);
    assert_eq!((app.events().await, app.jobs().await), (1, 0));
}

#[tokio::test]
async fn rejected_lemonsqueezy_deliveries_change_nothing() {
    let app = spawn_app().await;
    let body = order_created("1004", "1");
    let cases: Vec<(&str, &str, String, Option<String>, u16)> = vec![
        ("no signature", ACCOUNT, body.clone(), None, 401),
        ("wrong secret", ACCOUNT, body.clone(), Some(ls_signature("guess", &body)), 401),
        ("tampered body", ACCOUNT, body.replace("9900", "1"), Some(ls_signature(LS_SECRET, &body)), 401),
        ("not hex", ACCOUNT, body.clone(), Some("not-hex".into()), 401),
        ("signed but malformed", ACCOUNT, "{\"meta\":{}}".into(), Some(ls_signature(LS_SECRET, "{\"meta\":{}}")), 400),
        ("unknown account", "nobody", body.clone(), Some(ls_signature(LS_SECRET, &body)), 404),
        ("account without Lemon Squeezy", KOMMO_ONLY_ACCOUNT, body.clone(), Some(ls_signature(LS_SECRET, &body)), 404),
    ];
    for (name, account, body, signature, status) in cases {
        let response = app.post_lemonsqueezy(account, &body, signature.as_deref()).await;
        assert_eq!(response.status().as_u16(), status, "case {name:?}");
        let answer: Value = response.json().await.unwrap();
        assert!(answer["error"].is_string(), "case {name:?}");
    }
    assert_eq!(app.events().await, 0);
}
