//! A flow's attempt that fails after some of its steps went out: the retry does exactly the
//! missing ones. Each test fails one step at the fake and checks, at the fakes, that every effect
//! happened once: the link, each PATCH of field values, the note, the Salesbot launch.

use axum::http::Method;
use serde_json::Value;

use crate::stripe_flow::*;

/// The PATCHes that wrote custom field `field_id` (these tests have one deal).
fn patches_writing(f: &Flow, field_id: i64) -> usize {
    f.patches(|value| value["field_id"] == field_id)
}

fn link_notes(f: &Flow) -> Vec<String> {
    f.note_texts().into_iter().filter(|t| t.starts_with("Payment link")).collect()
}

/// The trigger moves the deal on (`move_to_status_id`) in the PATCH that writes its link, so the
/// retry finds it out of the trigger stage: the link this job issued is still finished.
#[tokio::test]
async fn a_retry_after_the_links_patch_moved_the_deal_on_still_adds_the_note_and_launches_the_salesbot() {
    let f = flow().await;
    f.kommo.answer_next_at(Method::POST, "/api/v4/leads/notes", 500, r#"{"title":"Internal Server Error","status":500}"#);

    f.deal_enters_stage().await;
    f.drain_with_retries().await;

    assert_eq!(f.kommo.lead(LEAD).unwrap()["status_id"], LINK_SENT_STAGE);
    assert_eq!(f.link_creates().len(), 1);
    assert_eq!(link_notes(&f), [format!("Payment link for 2,000.00 USD: {}", crate::stripe_flow::LINK1)], "the client's message is not lost");
    assert_eq!(f.bot_runs(), 1, "the Salesbot that sends the link is launched");
    assert_eq!(patches_writing(&f, LINK_FIELD), 1, "the retry saw the link on the card and did not write it again");
}

/// The client paid (the deal is won) before the retry: the card's paid state and won stage are
/// left as they are, and the client gets no "here is your link" message for a paid link.
#[tokio::test]
async fn a_retry_after_the_deal_was_paid_neither_undoes_the_payment_nor_messages_the_client() {
    let f = flow().await;
    f.kommo.answer_next_at(Method::POST, "/api/v2/salesbot/run", 500, r#"{"title":"Internal Server Error","status":500}"#);
    f.deal_enters_stage().await;
    f.drain().await;
    assert_eq!(f.app.db.count("SELECT count(*) FROM jobs WHERE kind = 'payment_link.issue' AND state = 'retryable'").await, 1);

    f.stripe_sends(checkout_completed("evt_paid_first", "plink_fake1", "pi_test_1", 200000)).await;
    f.drain().await;
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PAID);
    f.drain_with_retries().await;

    assert_eq!(f.bot_runs(), 1, "only the failed launch: no message about a paid link");
    assert_eq!(link_notes(&f).len(), 1);
    assert_eq!(patches_writing(&f, LINK_FIELD), 1);
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PAID, "the retry did not write Awaiting over Paid");
    assert_eq!(f.kommo.lead(LEAD).unwrap()["status_id"], 142, "nor move the won deal back");
}

/// The payment's PATCH went out, then its note failed: the retry reads the card, finds the
/// payment on it, and only adds the note.
#[tokio::test]
async fn a_retried_payment_does_not_patch_the_card_again_when_it_already_shows_the_payment() {
    let f = flow().await;
    f.deal_enters_stage().await;
    f.drain().await;
    let patches_before = patches_writing(&f, PAYMENT_ID_FIELD);

    f.kommo.answer_next_at(Method::POST, "/api/v4/leads/notes", 500, r#"{"title":"Internal Server Error","status":500}"#);
    f.stripe_sends(checkout_completed("evt_paid_once", "plink_fake1", "pi_test_1", 200000)).await;
    f.drain_with_retries().await;

    assert_eq!(patches_writing(&f, PAYMENT_ID_FIELD) - patches_before, 1, "one PATCH of the payment's values");
    let received: Vec<Value> = f.kommo.notes().into_iter().filter(|n| n["params"]["text"].as_str().unwrap().starts_with("Payment received")).collect();
    assert_eq!(received.len(), 1);
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PAID);
    assert_eq!(f.kommo.lead(LEAD).unwrap()["status_id"], 142);
}
