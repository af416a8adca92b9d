//! Checkout data in deal fields (`[accounts.deals] fields_from_checkout`), for both providers:
//! what a field takes is written, what it cannot take becomes a note, and the payment is never
//! held up by it.

use serde_json::{Value, json};

use crate::stripe_flow::*;

/// A self-serve order whose checkout carried `custom`.
fn self_serve_order_carrying(order: u32, custom: Value) -> String {
    let body = self_serve_order(order, 67890);
    let mut order: Value = serde_json::from_str(&body).unwrap();
    order["meta"]["custom_data"] = custom;
    order.to_string()
}

fn notes_of(f: &Flow, lead: i64) -> Vec<String> {
    f.kommo.notes().iter().filter(|n| n["entity_id"] == lead).map(|n| n["params"]["text"].as_str().unwrap().to_owned()).collect()
}

fn field_of(f: &Flow, lead: i64, field: i64) -> Option<Value> {
    let lead = f.kommo.lead(lead).unwrap();
    lead["custom_fields_values"].as_array()?.iter().find(|v| v["field_id"] == field).map(|v| v["values"].clone())
}

#[tokio::test]
async fn a_self_serve_buyers_checkout_data_fills_the_new_deals_fields_and_names_its_manager() {
    let f = flow().await;
    let custom = json!({ "utm_source": "website", "plan": "pro", "seats": "many", "manager_id": "12", "referrer": "newsletter" });
    f.lemonsqueezy_sends(&self_serve_order_carrying(4001, custom)).await;
    f.drain_with_retries().await;

    let lead: i64 = sqlx::query_scalar("SELECT lead_id FROM self_serve_orders").fetch_one(&f.app.db.pool).await.unwrap();
    let deal = f.kommo.lead(lead).unwrap();
    assert_eq!(deal["responsible_user_id"], 12, "the manager the checkout named, before the round robin (11 would be first)");
    assert_eq!(deal["status_id"], 142, "paid like any deal");
    assert_eq!(field_of(&f, lead, UTM_FIELD), Some(json!([{ "value": "website" }])));
    assert_eq!(field_of(&f, lead, PLAN_FIELD), Some(json!([{ "enum_id": PLAN_PRO }])), "a select by its option's label, whatever its case");
    assert_eq!(field_of(&f, lead, SEATS_FIELD), None, "a numeric field never gets a word");
    let notes = notes_of(&f, lead);
    let refused = "Checkout data the deal's fields could not take: seats = \"many\" (field \"Seats\" (1246502): not a number, and the field is numeric).";
    assert_eq!(notes.iter().filter(|n| *n == refused).count(), 1, "{notes:?}");
    assert!(notes.iter().any(|n| n.starts_with("Self-serve order 4001.") && n.contains("referrer: newsletter")), "unmapped keys stay in the note: {notes:?}");
    assert_eq!(f.app.db.count("SELECT count(*) FROM jobs WHERE state <> 'completed'").await, 0, "nothing failed");
}

#[tokio::test]
async fn a_manager_id_that_is_not_a_self_serve_manager_is_noted_and_the_turn_decides() {
    let f = flow().await;
    f.lemonsqueezy_sends(&self_serve_order_carrying(4002, json!({ "manager_id": "666" }))).await;
    f.drain_with_retries().await;

    let lead: i64 = sqlx::query_scalar("SELECT lead_id FROM self_serve_orders").fetch_one(&f.app.db.pool).await.unwrap();
    assert_eq!(f.kommo.lead(lead).unwrap()["responsible_user_id"], 11, "the first in turn");
    let notes = notes_of(&f, lead);
    assert!(notes.iter().any(|n| n.contains("The manager_id 666 is not one of the self-serve managers")), "{notes:?}");
}

#[tokio::test]
async fn a_paid_stripe_session_fills_the_deals_fields_and_what_kommo_refuses_becomes_a_note() {
    let f = flow().await;
    f.kommo.refuse_values_of_field(COUPON_FIELD);
    f.deal_enters_stage().await;
    f.drain().await;

    let mut paid = checkout_completed("evt_paid_fields", "plink_fake1", "pi_test_fields", 200000);
    let metadata = &mut paid["data"]["object"]["metadata"];
    for (key, value) in [("utm_source", "ads"), ("plan", "Gold"), ("coupon", "BF2026"), ("seats", "12")] {
        metadata[key] = json!(value);
    }
    f.stripe_sends(paid.clone()).await;
    // The same payment announced again, with the same metadata: written once, noted once.
    let mut again = payment_intent_succeeded("evt_paid_fields_pi", "pi_test_fields", 200000);
    again["data"]["object"]["metadata"] = paid["data"]["object"]["metadata"].clone();
    f.stripe_sends(again).await;
    f.drain_with_retries().await;

    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PAID, "the payment is applied whatever the fields took");
    assert_eq!(f.field(UTM_FIELD).unwrap(), json!({ "value": "ads" }));
    assert_eq!(f.field(SEATS_FIELD).unwrap(), json!({ "value": 12.0 }));
    assert_eq!(f.field(PLAN_FIELD), None, "Gold is none of the plan's options");
    assert_eq!(f.field(COUPON_FIELD), None, "Kommo refused it");
    let refused: Vec<String> = f.note_texts().into_iter().filter(|n| n.starts_with("Checkout data")).collect();
    assert_eq!(
        refused,
        vec![
            "Checkout data the deal's fields could not take: plan = \"Gold\" (field \"Plan\" (1246501): not one of the field's options (Pro, Basic)); \
             coupon = \"BF2026\" (Kommo refused it: PATCH api/v4/leads: Request validation failed: \
             custom_fields_values.0.field_id: the value is too long (InvalidValue))."
        ]
    );
    assert_eq!(f.app.db.count("SELECT count(*) FROM jobs WHERE state <> 'completed'").await, 0, "nothing failed");
}

#[tokio::test]
async fn a_paid_lemonsqueezy_order_for_a_deal_fills_its_fields() {
    let f = flow().await;
    let mut order: Value = serde_json::from_str(&ls_order("order_created", "paid", 0, Some(LEAD))).unwrap();
    order["meta"]["custom_data"]["utm_source"] = json!("partner");
    order["meta"]["custom_data"]["seats"] = json!(5);
    f.lemonsqueezy_sends(&order.to_string()).await;
    f.drain_with_retries().await;

    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PAID);
    assert_eq!(f.field(UTM_FIELD).unwrap(), json!({ "value": "partner" }));
    assert_eq!(f.field(SEATS_FIELD).unwrap(), json!({ "value": 5.0 }), "a number in custom data is a number");
    assert!(f.note_texts().iter().all(|n| !n.starts_with("Checkout data")), "nothing refused: {:?}", f.note_texts());
}
