//! Reconciliation: facts that no webhook delivered are read from the providers' histories and
//! applied like delivered ones; a webhook that arrives after its fact was reconciled changes
//! nothing.

use chrono::Utc;
use kommo_pay_scheduler::Reconciler;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::stripe_flow::*;

impl Flow {
    fn reconciler(&self) -> Reconciler {
        Reconciler::new(
            self.app.db.pool.clone(),
            kommo_pay_core::clients::for_accounts(&self.app.db.pool, &self.config.accounts),
            self.config.jobs.clone(),
            chrono::Duration::hours(24),
        )
    }

    async fn events_with_key(&self, key: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE dedup_key = $1").bind(key).fetch_one(&self.app.db.pool).await.unwrap()
    }
}

#[tokio::test]
async fn a_stripe_payment_no_webhook_delivered_is_recovered_and_its_late_webhook_changes_nothing() {
    let f = flow().await;
    f.deal_enters_stage().await;
    f.drain().await;

    // The client pays; Stripe's webhook never gets through.
    let mut paid = checkout_completed("evt_never_delivered", "plink_fake1", "pi_test_lost", 200000);
    paid["created"] = json!(Utc::now().timestamp());
    f.stripe.add_event(paid.clone());
    // Events of other accounts' kinds and older than the lookback are not ours to read.
    let mut old = checkout_completed("evt_too_old", "plink_other", "pi_old", 100);
    old["created"] = json!(Utc::now().timestamp() - 3 * 86400);
    f.stripe.add_event(old);

    let reconciler = f.reconciler();
    assert_eq!(reconciler.run_once(Utc::now()).await.unwrap(), 1);
    f.drain_with_retries().await;
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PAID);
    assert_eq!(f.note_texts().len(), 2, "the link's note and the payment's: {:?}", f.note_texts());
    let asked = f.stripe.requests().into_iter().find(|r| r.path == "/v1/events").unwrap();
    let mut types: Vec<&str> = asked.params["types"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    types.sort();
    assert!(types.contains(&"checkout.session.completed") && types.contains(&"charge.refunded"), "{types:?}");
    let headers: Value = sqlx::query_scalar("SELECT headers FROM events WHERE dedup_key = 'evt_never_delivered'").fetch_one(&f.app.db.pool).await.unwrap();
    assert_eq!(headers["x-kommo-pay-reconciled"], "stripe", "the log says where the event came from");

    // The webhook arrives at last: a duplicate, no job, no second note.
    f.stripe_sends(paid).await;
    assert_eq!(f.worker.run_once().await.unwrap().claimed, 0);
    assert_eq!(f.events_with_key("evt_never_delivered").await, 1);
    assert_eq!(f.note_texts().len(), 2);

    assert_eq!(reconciler.run_once(Utc::now()).await.unwrap(), 0, "the next round finds nothing new");
}

#[tokio::test]
async fn a_lemonsqueezy_order_no_webhook_delivered_is_matched_to_its_checkout_and_paid_once() {
    let f = flow().await;
    f.deal_enters(LS_STAGE).await;
    f.drain().await;

    // The client pays the checkout; every delivery fails. The API's order carries no custom data.
    let order = json!({
        "type": "orders", "id": "1001", "attributes": {
            "store_id": 12345, "customer_id": 777, "order_number": 1234, "user_email": "jane@client.example",
            "currency": "USD", "status": "paid", "subtotal": 200000, "total": 200000, "refunded": false, "refunded_amount": 0,
            "first_order_item": { "product_name": "Pro plan", "variant_id": 67890, "price": 200000 },
            "test_mode": true, "created_at": Utc::now().to_rfc3339(), "updated_at": Utc::now().to_rfc3339()
        }
    });
    f.lemonsqueezy.add("orders", order);
    let mut elsewhere = json!({ "type": "orders", "id": "9", "attributes": { "store_id": 999, "currency": "USD", "subtotal": 200000, "status": "paid", "created_at": Utc::now().to_rfc3339() } });
    f.lemonsqueezy.add("orders", elsewhere.take());

    assert_eq!(f.reconciler().run_once(Utc::now()).await.unwrap(), 1, "only the store the account sells through");
    f.drain_with_retries().await;
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PAID);
    let lead: Option<i64> = sqlx::query_scalar("SELECT lead_id FROM events WHERE dedup_key = 'order_created:1001'").fetch_one(&f.app.db.pool).await.unwrap();
    assert_eq!(lead, Some(LEAD), "matched by its unpaid checkout's amount");
    let notes = f.note_texts().len();

    // The webhook comes back to life (a dashboard resend): the same key, a duplicate.
    f.lemonsqueezy_sends(&ls_order("order_created", "paid", 0, Some(LEAD))).await;
    assert_eq!(f.worker.run_once().await.unwrap().claimed, 0);
    assert_eq!(f.events_with_key("order_created:1001").await, 1);
    assert_eq!(f.note_texts().len(), notes);
}

#[tokio::test]
async fn a_stage_change_kommo_never_sent_issues_the_link_and_the_late_hook_changes_nothing() {
    let f = flow().await;
    let now = Utc::now().timestamp();
    f.kommo.move_lead_silently(LEAD, LINK_SENT_STAGE, now - 60);
    f.kommo.move_lead_silently(LEAD, TRIGGER_STAGE, now - 30);

    let reconciler = f.reconciler();
    assert_eq!(reconciler.run_once(Utc::now()).await.unwrap(), 1, "only the move into a trigger stage");
    f.drain().await;
    assert_eq!(f.link_creates().len(), 1);
    assert_eq!(f.field(LINK_FIELD).unwrap()["value"], crate::stripe_flow::LINK1);
    let notes = f.note_texts().len();
    assert_eq!(reconciler.run_once(Utc::now()).await.unwrap(), 0, "read again, appended once");

    // Kommo's hook for that move arrives late: logged, and its job finds the work done.
    f.deal_enters_stage().await;
    f.drain().await;
    assert_eq!(f.link_creates().len(), 1, "no second link");
    assert_eq!(f.note_texts().len(), notes, "no second note");
}

#[tokio::test]
async fn a_status_hook_that_was_delivered_is_not_reconciled_again() {
    let f = flow().await;
    f.kommo.move_lead_silently(LEAD, TRIGGER_STAGE, Utc::now().timestamp());
    f.deal_enters_stage().await;
    assert_eq!(f.reconciler().run_once(Utc::now()).await.unwrap(), 0);
}

#[tokio::test]
async fn a_webhook_kommo_disabled_is_reported_without_its_secret_url() {
    let f = flow().await;
    f.kommo.set_webhooks(vec![
        json!({ "id": 11, "destination": format!("https://pay.example/webhooks/kommo/{ACCOUNT}/{KOMMO_SECRET}"), "settings": ["status_lead"], "disabled": true, "sort": 1 }),
        json!({ "id": 12, "destination": "https://other.example/hook", "settings": ["add_lead"], "disabled": false, "sort": 2 }),
    ]);
    f.reconciler().run_once(Utc::now()).await.unwrap();
    let metrics = f.app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(&format!(r#"kommo_pay_kommo_webhooks_disabled{{account="{ACCOUNT}"}} 1"#)), "{metrics}");
    assert!(!metrics.contains(KOMMO_SECRET));
}

#[tokio::test]
async fn a_provider_that_fails_keeps_its_cursor_and_the_others_go_on() {
    let f = flow().await;
    let mut paid = checkout_completed("evt_after_outage", "plink_fake1", "pi_test_o", 200000);
    paid["created"] = json!(Utc::now().timestamp());
    f.stripe.add_event(paid);
    f.stripe.fail_next(401, json!({ "error": { "type": "invalid_request_error", "message": "Invalid API Key provided" } }), Some(false));

    assert_eq!(f.reconciler().run_once(Utc::now()).await.unwrap(), 0);
    let cursors: Vec<String> = sqlx::query_scalar("SELECT provider FROM reconcile_cursors ORDER BY provider").fetch_all(&f.app.db.pool).await.unwrap();
    assert_eq!(cursors, ["kommo", "lemonsqueezy"], "Stripe's cursor did not move");

    assert_eq!(f.reconciler().run_once(Utc::now()).await.unwrap(), 1, "read from the same place once Stripe answers");
}

#[tokio::test]
async fn a_lemonsqueezy_subscription_falling_past_due_unannounced_opens_its_run_of_failures() {
    let f = flow().await;
    f.lemonsqueezy_sends(&ls_subscription("subscription_created", "active", "2026-11-26T12:26:23.000000Z", true)).await;
    f.drain_with_retries().await;

    // The subscription falls past due; neither the payment failure nor the snapshot is delivered.
    let updated_at = Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let snapshot: Value = serde_json::from_str(&ls_subscription("subscription_updated", "past_due", &updated_at, false)).unwrap();
    let mut subscription = snapshot["data"].clone();
    subscription["attributes"]["created_at"] = json!(Utc::now().to_rfc3339());
    f.lemonsqueezy.add("subscriptions", subscription);

    assert_eq!(f.reconciler().run_once(Utc::now()).await.unwrap(), 1);
    f.drain_with_retries().await;
    assert_eq!(f.app.db.count("SELECT count(*) FROM dunning WHERE subscription_id = '555' AND overdue_at IS NULL").await, 1);

    // Its webhook, late, is the same snapshot: a duplicate.
    f.lemonsqueezy_sends(&ls_subscription("subscription_updated", "past_due", &updated_at, true)).await;
    assert_eq!(f.worker.run_once().await.unwrap().claimed, 0);
}
