//! A deal's outcome never depends on the order in which its events arrive or its jobs run
//! (ADR 14). The same set of a subscription's events, delivered in every order, each twice, with
//! a Kommo failure that makes a job retry, ends in one state.

use axum::http::Method;
use serde_json::Value;

use crate::stripe_flow::*;

/// Every ordering of `items`.
fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut all = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, first.clone());
            all.push(tail);
        }
    }
    all
}

/// What the deal ends as: its card's payment status and payment id, the overdue tasks, the
/// payment notes, and the runs of failures left open.
#[derive(Debug, PartialEq)]
struct Outcome {
    status: Value,
    payment_id: Value,
    overdue_tasks: usize,
    payment_notes: Vec<String>,
    open_runs: i64,
}

/// The first month paid, the second paid (announced twice by Stripe), the third's charge
/// failed: whatever the order, the deal shows the second month's payment until the grace period
/// ends, then it is Overdue with one task.
#[tokio::test]
async fn a_subscriptions_events_in_every_order_each_delivered_twice_end_in_one_state() {
    let events = [
        invoice("evt_in1_paid", "invoice.paid", "in_1", 4990),
        invoice("evt_in2_paid", "invoice.paid", "in_2", 4990),
        invoice("evt_in2_succeeded", "invoice.payment_succeeded", "in_2", 4990),
        invoice("evt_in3_failed", "invoice.payment_failed", "in_3", 0),
    ];
    let failed_at = chrono::DateTime::from_timestamp(1764180000, 0).unwrap();
    let mut outcomes = Vec::new();
    for (round, order) in permutations(&events).into_iter().enumerate() {
        let f = flow().await;
        // One of the deal's PATCHes fails once: its job runs again later, after the others.
        f.kommo.answer_next_at(Method::PATCH, "/api/v4/leads", 500, r#"{"title":"Internal Server Error","status":500}"#);
        for event in &order {
            f.stripe_sends(event.clone()).await;
            f.stripe_sends(event.clone()).await;
            // Half the rounds handle each event before the next arrives; the others let the
            // worker run the deal's jobs together.
            if round % 2 == 1 {
                f.drain().await;
            }
        }
        f.drain_with_retries().await;
        let payment_id = f.field(PAYMENT_ID_FIELD).map(|v| v["value"].clone()).unwrap_or_default();
        assert_eq!(payment_id, "in_2", "before the grace period ends, order {:?}", ids(&order));
        assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PAID, "order {:?}", ids(&order));

        f.overdue().run_once(failed_at + chrono::Duration::days(4)).await.unwrap();
        f.drain_with_retries().await;
        let outcome = Outcome {
            status: f.field(STATUS_FIELD).unwrap()["enum_id"].clone(),
            payment_id: f.field(PAYMENT_ID_FIELD).unwrap()["value"].clone(),
            overdue_tasks: f.kommo.tasks().iter().filter(|t| t["text"].as_str().unwrap().contains("overdue")).count(),
            payment_notes: {
                let mut notes: Vec<String> = f.note_texts().into_iter().filter(|t| t.starts_with("Payment received")).collect();
                notes.sort();
                notes
            },
            open_runs: f.app.db.count("SELECT count(*) FROM dunning").await,
        };
        outcomes.push((ids(&order), outcome));
    }
    let expected = Outcome {
        status: OVERDUE.into(),
        payment_id: "in_2".into(),
        overdue_tasks: 1,
        payment_notes: vec![
            "Payment received: 49.90 EUR via Stripe (subscription invoice in_1)".into(),
            "Payment received: 49.90 EUR via Stripe (subscription invoice in_2)".into(),
        ],
        open_runs: 1,
    };
    let differing: Vec<_> = outcomes.iter().filter(|(_, outcome)| *outcome != expected).collect();
    assert!(differing.is_empty(), "{} of {} orders ended otherwise: {differing:#?}", differing.len(), outcomes.len());
}

fn ids(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
}

/// A subscription's snapshots say past due, then active again (and its first month was paid):
/// whatever order they arrive in, and whether their jobs run one after another or together, the
/// deal ends with nothing unpaid and no overdue task.
#[tokio::test]
async fn a_subscriptions_snapshots_in_every_order_end_with_nothing_unpaid() {
    let events = [
        invoice("evt_in1_paid", "invoice.paid", "in_1", 4990),
        subscription_updated("evt_sub_past_due", "past_due", 1764183000),
        subscription_updated("evt_sub_active", "active", 1764185000),
    ];
    let later = chrono::DateTime::from_timestamp(1764190000, 0).unwrap() + chrono::Duration::days(30);
    let mut differing = Vec::new();
    for (round, order) in permutations(&events).into_iter().enumerate() {
        for together in [false, true] {
            let f = flow().await;
            for event in &order {
                f.stripe_sends(event.clone()).await;
                f.stripe_sends(event.clone()).await;
                if !together {
                    f.drain().await;
                }
            }
            f.drain_with_retries().await;
            f.overdue().run_once(later).await.unwrap();
            f.drain_with_retries().await;
            let open_runs = f.app.db.count("SELECT count(*) FROM dunning").await;
            let tasks = f.kommo.tasks().len();
            let status = f.field(STATUS_FIELD).unwrap()["enum_id"].clone();
            if (open_runs, tasks, &status) != (0, 0, &Value::from(PAID)) {
                differing.push((round, together, ids(&order), open_runs, tasks, status));
            }
        }
    }
    assert!(differing.is_empty(), "orders that ended otherwise (round, together, order, open runs, tasks, status): {differing:#?}");
}
