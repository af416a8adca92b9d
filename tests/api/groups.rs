//! Jobs of one account handled as groups (ADR 17): a bulk move's reads and writes reach Kommo
//! together, each job's outcome stays its own, and the account's rate holds across processes.

use std::time::Duration;

use axum::http::Method;
use kommo_pay_worker::{Context, Worker, handlers};
use serde_json::json;

use crate::helpers::*;
use crate::stripe_flow::{Flow, LINK_FIELD, PIPELINE, TRIGGER_STAGE, flow, flow_at};

/// Deals 1.. of the fake Kommo, all in the trigger stage.
fn deals(f: &Flow, n: i64) -> Vec<i64> {
    let ids: Vec<i64> = (1..=n).map(|i| 40_000_000 + i).collect();
    for id in &ids {
        f.kommo.add_lead(json!({ "id": id, "name": format!("Deal {id}"), "price": 500, "pipeline_id": PIPELINE, "status_id": TRIGGER_STAGE }));
    }
    ids
}

/// A manager moves `leads` into the trigger stage at once: Kommo sends the move in bodies of 50.
async fn bulk_move(f: &Flow, leads: &[i64]) {
    for chunk in leads.chunks(50) {
        let mut body = form_urlencoded::Serializer::new(String::new());
        body.append_pair("account[id]", &KOMMO_ACCOUNT_ID.to_string());
        for (i, lead) in chunk.iter().enumerate() {
            body.append_pair(&format!("leads[status][{i}][id]"), &lead.to_string());
            body.append_pair(&format!("leads[status][{i}][status_id]"), &TRIGGER_STAGE.to_string());
            body.append_pair(&format!("leads[status][{i}][pipeline_id]"), &PIPELINE.to_string());
            body.append_pair(&format!("leads[status][{i}][last_modified]"), "1764160001");
        }
        assert_eq!(f.app.post_kommo(ACCOUNT, KOMMO_SECRET, &body.finish()).await.status(), 200);
    }
}

fn link_of(f: &Flow, lead: i64) -> Option<String> {
    let lead = f.kommo.lead(lead)?;
    let fields = lead["custom_fields_values"].as_array()?.clone();
    fields.iter().find(|field| field["field_id"] == LINK_FIELD)?.pointer("/values/0/value")?.as_str().map(str::to_owned)
}

/// 300 deals moved at once, on the default Kommo budget of 5 requests a second: their reads
/// reach Kommo as ⌈300 / 250⌉ list requests (no read of one lead), their writes in arrays of at
/// most 50, their Salesbot launches in batches of at most 100; every deal gets its own link.
#[tokio::test]
async fn a_bulk_move_reads_its_deals_in_lists_of_250_and_writes_in_batches() {
    let f = flow_at(5).await;
    let leads = deals(&f, 300);
    bulk_move(&f, &leads).await;
    f.drain().await;

    let links: std::collections::HashSet<String> = leads.iter().map(|lead| link_of(&f, *lead).expect("every deal has its link")).collect();
    assert_eq!(links.len(), 300, "a link of its own for each deal");
    let requests = f.kommo.requests();
    let reads: Vec<_> = requests.iter().filter(|r| r.method == Method::GET && r.path.starts_with("/api/v4/leads")).collect();
    assert_eq!(reads.len(), 2, "⌈300 / 250⌉ list reads: {:?}", reads.iter().map(|r| &r.path[..60.min(r.path.len())]).collect::<Vec<_>>());
    assert!(reads.iter().all(|r| r.path.starts_with("/api/v4/leads?")), "no read of a single lead");
    let writes: Vec<_> = requests.iter().filter(|r| r.method != Method::GET).collect();
    assert!(writes.iter().all(|r| r.body.as_array().is_some_and(|items| items.len() <= if r.path == "/api/v2/salesbot/run" { 100 } else { 50 })));
    assert_eq!(f.kommo.bot_launches().len(), 300);
    // Batching is what the budget is spent on: far fewer write requests than deals.
    assert!(writes.len() < 60, "{} write requests for 300 deals", writes.len());
}

/// One deal of a group whose update Kommo refuses (a 400 for its item) fails alone: the other
/// deals of the same PATCH get their links and complete.
#[tokio::test]
async fn one_deal_of_a_group_that_kommo_refuses_fails_alone() {
    let f = flow().await;
    let leads = deals(&f, 6);
    let refused = leads[2];
    f.kommo.refuse_updates_of(refused);
    bulk_move(&f, &leads).await;
    f.drain().await;

    for lead in &leads {
        let state: String =
            sqlx::query_scalar("SELECT state FROM jobs WHERE kind = 'payment_link.issue' AND lead_id = $1").bind(lead).fetch_one(&f.app.db.pool).await.unwrap();
        if *lead == refused {
            assert_eq!(state, "dead", "Kommo's refusal is no retry's to fix");
            assert!(link_of(&f, *lead).is_none());
        } else {
            assert_eq!(state, "completed", "deal {lead}");
            assert!(link_of(&f, *lead).is_some(), "deal {lead} has its link");
        }
    }
}

/// Two worker processes (a pool, an owner and Kommo clients of their own each, sharing only
/// PostgreSQL) working one account's bulk move together stay within its configured rate, and
/// Kommo (which enforces 7 a second, as the real one does) never answers 429.
#[tokio::test]
async fn two_worker_processes_together_stay_within_the_accounts_rate() {
    let per_second = 5;
    let f = flow_at(per_second).await;
    f.kommo.limit_rate(7);
    let leads = deals(&f, 120);
    bulk_move(&f, &leads).await;

    let second_pool = sqlx::postgres::PgPoolOptions::new().max_connections(8).connect(&f.app.db.url).await.unwrap();
    let second = Worker::new(second_pool.clone(), handlers(Context::new(second_pool, &f.config.accounts)), f.config.worker.clone(), f.config.jobs.clone());
    let drain = async |worker: &Worker| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state <> 'completed'").fetch_one(&f.app.db.pool).await.unwrap();
            if left == 0 {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{left} jobs left");
            if worker.run_once().await.unwrap().claimed == 0 {
                // Deferred jobs wait for the budget's next slot; poll for them.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    tokio::join!(drain(&f.worker), drain(&second));

    assert!(leads.iter().all(|lead| link_of(&f, *lead).is_some()));
    assert_eq!(f.kommo.too_many(), 0, "no 429");
    // Slots are 1.05 / rate apart.
    assert_within_rate(f.kommo.requests().iter().map(|r| r.at).collect(), per_second as usize, "requests");
}

/// No `per_second + 1` of `arrivals` within a second: a limiter's window is 1.05 s, so arrival
/// i and arrival i + rate are sent at least that far apart (their arrivals, stamped by a fake on
/// this test's busy runtime, jitter by tens of milliseconds).
fn assert_within_rate(mut arrivals: Vec<std::time::Instant>, per_second: usize, what: &str) {
    arrivals.sort();
    for (first, next) in arrivals.iter().zip(arrivals.iter().skip(per_second)) {
        let gap = next.duration_since(*first);
        assert!(gap >= Duration::from_millis(900), "{} {what} within {gap:?}", per_second + 1);
    }
}

/// A group's Stripe link creations go out together, but never more in one second than the
/// account's Stripe rate (configured here at 100 a second, Stripe's live limit).
#[tokio::test]
async fn a_groups_stripe_creations_stay_within_the_stripe_rate() {
    let per_second = 100;
    let f = flow().await;
    let leads = deals(&f, 130);
    bulk_move(&f, &leads).await;
    f.drain().await;

    assert!(leads.iter().all(|lead| link_of(&f, *lead).is_some()));
    let arrivals: Vec<_> = f.link_creates().iter().map(|r| r.at).collect();
    assert_eq!(arrivals.len(), 130, "one creation per deal");
    assert_within_rate(arrivals, per_second, "creations");
}
