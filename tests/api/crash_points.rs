//! Deterministic crash tests (ADR 16): for each step boundary of the flows, the job crashes
//! there (a fault point panics once, inside the running handler), the retry runs it again, and
//! the fakes are asked whether every effect happened exactly once: one link, one PATCH of each
//! set of field values, one note, one task, one Salesbot launch.
//!
//! Fault points are compiled in only for the tests (the worker's `failpoints` feature) and their
//! configuration is per process: the test runner (cargo-nextest) runs every test in a process
//! of its own.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::stripe_flow::*;

/// What a deal's story left at the fakes.
#[derive(Debug, PartialEq)]
struct Effects {
    /// Distinct Stripe Payment Links created (the same idempotency key is the same link).
    links_created: usize,
    link_patches: usize,
    link_notes: usize,
    salesbot_launches: usize,
    payment_patches: usize,
    payment_notes: usize,
    links_deactivated: usize,
    status: Value,
    stage: Value,
}

fn effects(f: &Flow) -> Effects {
    let patches_writing = |field: i64| f.patches(|value| value["field_id"] == field);
    let keys = |path: &str| -> usize {
        f.stripe.requests().iter().filter(|r| r.path == path).filter_map(|r| r.idempotency_key.clone()).collect::<BTreeSet<_>>().len()
    };
    let notes = |prefix: &str| f.note_texts().iter().filter(|t| t.starts_with(prefix)).count();
    Effects {
        links_created: keys("/v1/payment_links"),
        link_patches: patches_writing(LINK_FIELD),
        link_notes: notes("Payment link for"),
        salesbot_launches: f.bot_runs(),
        payment_patches: patches_writing(PAYMENT_ID_FIELD),
        payment_notes: notes("Payment received"),
        links_deactivated: keys("/v1/payment_links/plink_fake1"),
        status: f.field(STATUS_FIELD).map(|v| v["enum_id"].clone()).unwrap_or_default(),
        stage: f.kommo.lead(LEAD).unwrap()["status_id"].clone(),
    }
}

/// A deal enters the trigger stage and gets its link (a note, a Salesbot launch, a stage move),
/// then the client pays it (the card Paid and won, a note, the link deactivated), with the fault
/// point `point` panicking once. Returns what the fakes saw.
async fn link_then_payment_crashing_at(point: &str) -> Effects {
    let f = flow().await;
    fail::cfg(point, "1*panic").unwrap();
    f.deal_enters_stage().await;
    f.drain_with_retries().await;
    f.stripe_sends(checkout_completed("evt_paid_crash", "plink_fake1", "pi_test_crash", 200000)).await;
    f.drain_with_retries().await;
    fail::remove(point);
    crashed_once_and_finished(&f, point).await;
    effects(&f)
}

fn once() -> Effects {
    Effects {
        links_created: 1,
        link_patches: 1,
        link_notes: 1,
        salesbot_launches: 1,
        payment_patches: 1,
        payment_notes: 1,
        links_deactivated: 1,
        status: PAID.into(),
        stage: 142.into(),
    }
}

macro_rules! crash_at {
    ($($test:ident: $point:literal,)*) => {$(
        #[tokio::test]
        async fn $test() {
            assert_eq!(link_then_payment_crashing_at($point).await, once(), "crashed at {}", $point);
        }
    )*};
}

crash_at! {
    crash_after_the_link_was_created_at_the_provider: "payment_link.created",
    crash_after_the_link_was_recorded: "payment_link.recorded",
    crash_after_the_link_was_written_to_the_card: "payment_link.card_written",
    crash_after_the_links_note_was_added: "payment_link.note_added",
    crash_after_the_links_note_was_recorded: "payment_link.note_recorded",
    crash_after_the_payment_was_recorded: "payment.recorded",
    crash_after_the_payment_was_written_to_the_card: "payment.card_written",
    crash_after_the_payments_note_was_added: "payment.note_added",
    crash_after_the_paid_link_was_deactivated: "payment.link_deactivated",
}

/// The one step that is at least once (ADR 16): Kommo cannot be asked whether a Salesbot ran, so
/// a crash between the launch and its record launches it again: a second message rather than a
/// link the client never gets. Everything else still happens once.
#[tokio::test]
async fn crash_after_the_salesbot_was_launched_launches_it_again_and_does_everything_else_once() {
    let effects = link_then_payment_crashing_at("payment_link.salesbot_launched").await;
    assert_eq!(effects, Effects { salesbot_launches: 2, ..once() });
}

/// A task for the manager (a failed bank payment), crashing after Kommo took it and before the
/// log says so: the retry reads the deal's tasks and adds none.
#[tokio::test]
async fn crash_after_a_managers_task_was_added() {
    let f = flow().await;
    f.deal_enters_stage().await;
    f.drain_with_retries().await;
    fail::cfg("deal.task_added", "1*panic").unwrap();
    let failed = json!({
        "id": "evt_async_failed", "object": "event", "type": "checkout.session.async_payment_failed", "created": 1764170500, "livemode": false,
        "data": { "object": {
            "id": "cs_test_async", "object": "checkout.session", "mode": "payment", "status": "complete", "payment_status": "unpaid",
            "payment_link": "plink_fake1", "amount_total": 200000, "currency": "usd",
            "metadata": { "kommo_account_id": crate::helpers::KOMMO_ACCOUNT_ID.to_string(), "kommo_lead_id": LEAD.to_string() }
        }}
    });
    f.stripe_sends(failed).await;
    f.drain_with_retries().await;
    fail::remove("deal.task_added");
    assert_eq!(f.app.db.count("SELECT count(*) FROM jobs WHERE errors::text LIKE '%panicked%'").await, 1);
    assert_eq!(f.kommo.tasks().len(), 1, "{:?}", f.kommo.tasks());
}

/// A note in the deal's feed (a failed subscription charge), crashing after Kommo took it.
#[tokio::test]
async fn crash_after_a_deals_note_was_added() {
    let f = flow().await;
    f.stripe_sends(invoice("evt_in1_paid", "invoice.paid", "in_1", 4990)).await;
    f.drain_with_retries().await;
    fail::cfg("deal.note_added", "1*panic").unwrap();
    f.stripe_sends(invoice("evt_in2_failed", "invoice.payment_failed", "in_2", 0)).await;
    f.drain_with_retries().await;
    fail::remove("deal.note_added");
    assert_eq!(f.app.db.count("SELECT count(*) FROM jobs WHERE errors::text LIKE '%panicked%'").await, 1);
    let failures = f.note_texts().into_iter().filter(|t| t.starts_with("The subscription payment")).count();
    assert_eq!(failures, 1, "{:?}", f.note_texts());
}

/// A paid deal refunded in part, crashing at `point` once: one PATCH with the refunded amount,
/// one refund note, the card Partially refunded.
async fn refund_crashing_at(point: &str) {
    let f = flow().await;
    f.deal_enters_stage().await;
    f.drain_with_retries().await;
    f.stripe_sends(checkout_completed("evt_paid_r", "plink_fake1", "pi_r", 200000)).await;
    f.drain_with_retries().await;
    fail::cfg(point, "1*panic").unwrap();
    f.stripe_sends(charge_refunded("evt_refund_crash", "pi_r", 200000, 50000)).await;
    f.drain_with_retries().await;
    fail::remove(point);
    assert_eq!(f.app.db.count("SELECT count(*) FROM jobs WHERE errors::text LIKE '%panicked%'").await, 1, "crashed at {point}");
    let refund_patches = f.patches(|value| value["field_id"] == REFUNDED_FIELD);
    assert_eq!(refund_patches, 1, "crashed at {point}");
    let notes: Vec<String> = f.note_texts().into_iter().filter(|t| t.starts_with("Refunded")).collect();
    assert_eq!(notes, ["Refunded partly: 500.00 USD of 2,000.00 USD via Stripe"], "crashed at {point}");
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PARTIALLY_REFUNDED);
}

#[tokio::test]
async fn crash_after_a_refund_was_recorded() {
    refund_crashing_at("refund.recorded").await;
}

#[tokio::test]
async fn crash_after_a_refund_was_written_to_the_card() {
    refund_crashing_at("refund.card_written").await;
}

#[tokio::test]
async fn crash_after_the_refunds_note_was_added() {
    refund_crashing_at("deal.note_added").await;
}

/// A self-serve buyer's paid order, crashing at `point` once: one deal created in Kommo, paid
/// once.
async fn self_serve_crashing_at(point: &str) {
    let f = flow().await;
    fail::cfg(point, "1*panic").unwrap();
    f.lemonsqueezy_sends(&self_serve_order(2001, 67890)).await;
    f.drain_with_retries().await;
    fail::remove(point);
    assert_eq!(f.app.db.count("SELECT count(*) FROM jobs WHERE errors::text LIKE '%panicked%'").await, 1, "crashed at {point}");
    let created = f.kommo.requests().into_iter().filter(|r| r.path == "/api/v4/leads/complex").count();
    assert_eq!(created, 1, "one deal for one order, crashed at {point}");
    let id: i64 = sqlx::query_scalar("SELECT lead_id FROM self_serve_orders").fetch_one(&f.app.db.pool).await.unwrap();
    assert_eq!(f.kommo.lead(id).unwrap()["status_id"], 142);
    let paid = f.kommo.notes().iter().filter(|n| n["entity_id"] == id && n["params"]["text"].as_str().unwrap().starts_with("Payment received")).count();
    assert_eq!(paid, 1);
}

#[tokio::test]
async fn crash_after_a_self_serve_deal_was_created_in_kommo() {
    self_serve_crashing_at("self_serve.deal_created").await;
}

#[tokio::test]
async fn crash_after_a_self_serve_deal_was_recorded() {
    self_serve_crashing_at("self_serve.deal_recorded").await;
}

/// A subscription overdue after its grace period, crashing after the card shows Overdue and
/// before the manager's task: one PATCH to Overdue, one task.
#[tokio::test]
async fn crash_after_an_overdue_deals_status_was_written() {
    let f = flow().await;
    f.stripe_sends(invoice("evt_in1_paid", "invoice.paid", "in_1", 4990)).await;
    f.stripe_sends(invoice("evt_in2_failed", "invoice.payment_failed", "in_2", 0)).await;
    f.drain_with_retries().await;
    fail::cfg("deal.status_written", "1*panic").unwrap();
    let failed_at = chrono::DateTime::from_timestamp(1764180000, 0).unwrap();
    assert_eq!(f.overdue().run_once(failed_at + chrono::Duration::days(4)).await.unwrap(), 1);
    f.drain_with_retries().await;
    fail::remove("deal.status_written");
    assert_eq!(f.app.db.count("SELECT count(*) FROM jobs WHERE errors::text LIKE '%panicked%'").await, 1);
    let overdue_patches = f.patches(|value| value["values"][0]["enum_id"] == OVERDUE);
    assert_eq!(overdue_patches, 1);
    assert_eq!(f.kommo.tasks().len(), 1);
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], OVERDUE);
}

/// Every test below crashes a job once and ends with every job completed.
async fn crashed_once_and_finished(f: &Flow, point: &str) {
    assert_eq!(f.app.db.count("SELECT count(*) FROM jobs WHERE errors::text LIKE '%panicked%'").await, 1, "the job crashed at {point} once");
    let left: Vec<(String, String, serde_json::Value)> =
        sqlx::query_as("SELECT kind, state, errors FROM jobs WHERE state <> 'completed'").fetch_all(&f.app.db.pool).await.unwrap();
    assert!(left.is_empty(), "every job completed after the crash at {point}: {left:?}");
}

/// PATCHes that set the payment status to `option`.
fn status_patches(f: &Flow, option: i64) -> usize {
    f.patches(|value| value["field_id"] == STATUS_FIELD && value["values"][0]["enum_id"] == option)
}

/// A Lemon Squeezy subscription cancelled and later expired, crashing at `point` once: one task
/// for the success manager, one PATCH to Cancelled.
async fn lemonsqueezy_subscription_ending_crashing_at(point: &str) {
    let f = flow().await;
    f.lemonsqueezy_sends(&ls_subscription("subscription_created", "active", "2026-11-26T12:00:00.000000Z", true)).await;
    f.drain_with_retries().await;
    fail::cfg(point, "1*panic").unwrap();
    f.lemonsqueezy_sends(&ls_subscription("subscription_cancelled", "cancelled", "2026-12-01T09:00:00.000000Z", true)).await;
    f.drain_with_retries().await;
    f.lemonsqueezy_sends(&ls_subscription("subscription_expired", "expired", "2026-12-26T12:26:23.000000Z", true)).await;
    f.drain_with_retries().await;
    fail::remove(point);
    crashed_once_and_finished(&f, point).await;
    let tasks = f.kommo.tasks();
    assert_eq!(tasks.len(), 1, "crashed at {point}: {tasks:?}");
    assert_eq!(tasks[0]["responsible_user_id"], 500, "for the customer-success manager");
    assert_eq!(status_patches(&f, CANCELLED), 1, "crashed at {point}");
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], CANCELLED);
}

/// A Lemon Squeezy subscription renewed, crashing at `point` once: one PATCH to Paid, one note.
async fn lemonsqueezy_renewal_crashing_at(point: &str) {
    let f = flow().await;
    f.lemonsqueezy_sends(&ls_subscription("subscription_created", "active", "2026-11-26T12:26:23.000000Z", true)).await;
    f.lemonsqueezy_sends(&ls_invoice("subscription_payment_success", "801", "initial")).await;
    f.drain_with_retries().await;
    fail::cfg(point, "1*panic").unwrap();
    f.lemonsqueezy_sends(&ls_invoice("subscription_payment_success", "802", "renewal")).await;
    f.drain_with_retries().await;
    fail::remove(point);
    crashed_once_and_finished(&f, point).await;
    assert_eq!(f.note_texts(), ["Payment received: 49.00 USD — subscription renewal (invoice 802)"], "crashed at {point}");
    assert_eq!(status_patches(&f, PAID), 1, "crashed at {point}");
}

/// A Lemon Squeezy renewal that fails, crashing after its note: one note, no change of status.
#[tokio::test]
async fn crash_after_a_lemonsqueezy_failed_renewals_note_was_added() {
    let f = flow().await;
    f.lemonsqueezy_sends(&ls_subscription("subscription_created", "active", "2026-11-26T12:26:23.000000Z", true)).await;
    f.drain_with_retries().await;
    fail::cfg("deal.note_added", "1*panic").unwrap();
    f.lemonsqueezy_sends(&ls_invoice("subscription_payment_failed", "803", "renewal")).await;
    f.drain_with_retries().await;
    fail::remove("deal.note_added");
    crashed_once_and_finished(&f, "deal.note_added").await;
    let failures = f.note_texts().into_iter().filter(|t| t.starts_with("The subscription payment of 49.00 USD")).count();
    assert_eq!(failures, 1, "{:?}", f.note_texts());
    assert!(f.field(STATUS_FIELD).is_none(), "Lemon Squeezy retries the card first");
}

/// A paid Lemon Squeezy order refunded in part, crashing at `point` once: one PATCH of the
/// refunded amount, one move to the needs-attention stage, one task.
async fn lemonsqueezy_refund_crashing_at(point: &str) {
    let f = flow().await;
    f.lemonsqueezy_sends(&ls_order("order_created", "paid", 0, Some(LEAD))).await;
    f.drain_with_retries().await;
    fail::cfg(point, "1*panic").unwrap();
    f.lemonsqueezy_sends(&ls_order("order_refunded", "partial_refund", 50000, Some(LEAD))).await;
    f.drain_with_retries().await;
    fail::remove(point);
    crashed_once_and_finished(&f, point).await;
    assert_eq!(f.patches(|value| value["field_id"] == REFUNDED_FIELD), 1, "crashed at {point}");
    let moved = |update: &Value| update["status_id"] == 67548640;
    let stage_moves =
        f.kommo.requests().iter().filter(|r| r.method == axum::http::Method::PATCH && r.body.as_array().is_some_and(|b| b.iter().any(moved))).count();
    assert_eq!(stage_moves, 1, "crashed at {point}");
    assert_eq!(f.kommo.tasks().len(), 1, "crashed at {point}: {:?}", f.kommo.tasks());
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PARTIALLY_REFUNDED);
}

macro_rules! lemonsqueezy_crash_at {
    ($($test:ident: $scenario:ident at $point:literal,)*) => {$(
        #[tokio::test]
        async fn $test() {
            $scenario($point).await;
        }
    )*};
}

lemonsqueezy_crash_at! {
    crash_after_a_lemonsqueezy_cancellation_was_stored: lemonsqueezy_subscription_ending_crashing_at at "subscription.stored",
    crash_after_a_lemonsqueezy_cancellations_task_was_added: lemonsqueezy_subscription_ending_crashing_at at "deal.task_added",
    crash_after_a_lemonsqueezy_expiry_was_written_to_the_card: lemonsqueezy_subscription_ending_crashing_at at "deal.status_written",
    crash_after_a_lemonsqueezy_renewal_was_recorded: lemonsqueezy_renewal_crashing_at at "payment.recorded",
    crash_after_a_lemonsqueezy_renewal_was_written_to_the_card: lemonsqueezy_renewal_crashing_at at "payment.card_written",
    crash_after_a_lemonsqueezy_renewals_note_was_added: lemonsqueezy_renewal_crashing_at at "payment.note_added",
    crash_after_a_lemonsqueezy_refund_was_recorded: lemonsqueezy_refund_crashing_at at "refund.recorded",
    crash_after_a_lemonsqueezy_refund_was_written_to_the_card: lemonsqueezy_refund_crashing_at at "refund.card_written",
    crash_after_a_lemonsqueezy_refunds_stage_move: lemonsqueezy_refund_crashing_at at "refund.stage_moved",
    crash_after_a_lemonsqueezy_refunds_task_was_added: lemonsqueezy_refund_crashing_at at "deal.task_added",
}

/// The deal changes between an attempt that reached Stripe and its retry (a crash right after
/// the create, then the manager corrects the amount): Stripe refuses one idempotency key for
/// other parameters, so the retry's key is its own and the card gets the new amount's link, with
/// no "Stripe refused it" task. The first attempt's link stays unused at Stripe, on no card.
#[tokio::test]
async fn a_deal_changed_between_attempts_gets_a_link_for_its_new_amount() {
    let f = flow().await;
    fail::cfg("payment_link.created", "1*panic").unwrap();
    f.deal_enters_stage().await;
    f.drain().await;
    fail::remove("payment_link.created");
    let mut lead = f.kommo.lead(LEAD).unwrap();
    lead["price"] = json!(3000);
    f.kommo.add_lead(lead);
    f.drain_with_retries().await;
    crashed_once_and_finished(&f, "payment_link.created").await;
    let keys: BTreeSet<String> = f.link_creates().into_iter().filter_map(|r| r.idempotency_key).collect();
    assert_eq!(keys.len(), 2, "one key per set of parameters");
    assert!(f.kommo.tasks().is_empty(), "{:?}", f.kommo.tasks());
    let link = f.field(LINK_FIELD).unwrap()["value"].as_str().unwrap().to_owned();
    assert!(link.starts_with("https://buy.stripe.com/test_fake2"), "{link}");
    assert_eq!(f.stripe.link("plink_fake2").unwrap()["currency"], "usd");
    let amounts: Vec<String> = f.link_creates().iter().map(|r| r.params["line_items"][0]["price_data"]["unit_amount"].to_string()).collect();
    assert_eq!(amounts, ["\"200000\"", "\"300000\""]);
}
