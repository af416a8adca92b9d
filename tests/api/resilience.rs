//! Things break under load: the database goes away, workers are killed again and again,
//! providers hang or answer garbage, deliveries are repeated by the thousand. Nothing
//! acknowledged is lost, and every effect at the providers happens once. Bounded in time,
//! loopback only.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::AssertSqlSafe;

use crate::helpers::*;

const DEALS: i64 = 60;
const FIRST_LEAD: i64 = 20_000_000;

fn stage_entered(lead: i64) -> String {
    format!(
        "account%5Bid%5D=32427762&leads%5Bstatus%5D%5B0%5D%5Bid%5D={lead}&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D=67548619&leads%5Bstatus%5D%5B0%5D%5Bpipeline_id%5D=8572511"
    )
}

fn add_deals(setup: &ProcessSetup) {
    for lead in FIRST_LEAD..FIRST_LEAD + DEALS {
        setup.kommo.add_lead(json!({
            "id": lead, "name": format!("Deal {lead}"), "price": 1000, "pipeline_id": 8572511, "status_id": 67548619,
            "responsible_user_id": 504141, "custom_fields_values": null
        }));
    }
}

/// Every effect happened once: one Stripe link per deal (the setup's deal included), created
/// with one idempotency key per job, and one note per deal.
async fn effects_once(setup: &ProcessSetup) {
    let creates: Vec<_> = setup.stripe.requests().into_iter().filter(|r| r.path == "/v1/payment_links").collect();
    let mut keys: Vec<String> = creates.iter().map(|r| r.idempotency_key.clone().unwrap()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len() as i64, DEALS + 1, "one link per deal");
    let mut notes: HashMap<i64, usize> = HashMap::new();
    for note in setup.kommo.notes() {
        *notes.entry(note["entity_id"].as_i64().unwrap()).or_default() += 1;
    }
    if notes.len() as i64 != DEALS + 1 {
        let missing: Vec<i64> = (FIRST_LEAD..FIRST_LEAD + DEALS).filter(|l| !notes.contains_key(l)).collect();
        let rows: Vec<Value> =
            sqlx::query_scalar("SELECT to_jsonb(l) FROM payment_links l WHERE lead_id = ANY($1)").bind(&missing).fetch_all(&setup.app.db.pool).await.unwrap();
        let jobs: Vec<(i64, String, i32, Value)> =
            sqlx::query_as("SELECT id, state, attempt, errors FROM jobs WHERE lead_id = ANY($1)").bind(&missing).fetch_all(&setup.app.db.pool).await.unwrap();
        let requests: Vec<String> = setup
            .kommo
            .requests()
            .iter()
            .filter(|r| missing.iter().any(|m| r.body.to_string().contains(&m.to_string()) || r.path.contains(&m.to_string())))
            .map(|r| format!("{} {} {}", r.method, r.path, r.body))
            .collect();
        panic!("deals without a note: {missing:?}\nlinks: {rows:?}\njobs: {jobs:?}\nrequests: {requests:#?}");
    }
    assert!(notes.values().all(|n| *n == 1), "one note per deal: {notes:?}");
    assert_eq!(setup.app.db.count("SELECT count(*) FROM payment_links").await, DEALS + 1);
    // One PATCH of the card per deal: a retry finds its link on the card and writes it no more.
    let mut patches: HashMap<i64, usize> = HashMap::new();
    for request in setup.kommo.requests().iter().filter(|r| r.method == axum::http::Method::PATCH) {
        for update in request.body.as_array().into_iter().flatten() {
            *patches.entry(update["id"].as_i64().unwrap()).or_default() += 1;
        }
    }
    assert!(patches.len() as i64 == DEALS + 1 && patches.values().all(|n| *n == 1), "one PATCH per deal: {patches:?}");
}

#[tokio::test]
async fn the_database_going_away_under_load_loses_nothing_acknowledged_and_workers_resume() {
    let sections = "[log]\nfilter = \"error\"\n[worker]\nheartbeat_interval_ms = 300\npoll_interval_ms = 100";
    let setup = ProcessSetup::deal_entered_stage(sections).await;
    add_deals(&setup);
    let mut worker = setup.start("worker");
    let app = setup.app.clone();
    let (acknowledged, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));

    // Four senders deliver the stage changes, each retried on 503 as Kommo would.
    let senders: Vec<_> = (0..4)
        .map(|sender| {
            let (app, acknowledged, refused) = (app.clone(), acknowledged.clone(), refused.clone());
            tokio::spawn(async move {
                for lead in (FIRST_LEAD..FIRST_LEAD + DEALS).filter(|l| l % 4 == sender) {
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                    loop {
                        match app.post_kommo(ACCOUNT, KOMMO_SECRET, &stage_entered(lead)).await.status().as_u16() {
                            200 => break,
                            503 => refused.fetch_add(1, Ordering::SeqCst),
                            other => panic!("lead {lead}: answered {other}"),
                        };
                        assert!(tokio::time::Instant::now() < deadline, "lead {lead} never got through");
                        tokio::task::yield_now().await;
                    }
                    acknowledged.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    // A third of the way in, the database goes away until a few deliveries were refused.
    eventually(Duration::from_secs(30), "a third delivered", || async { acknowledged.load(Ordering::SeqCst) >= DEALS as usize / 3 }).await;
    let mut admin = app.db.admin().await;
    let name = app.db.name.clone();
    sqlx::raw_sql(AssertSqlSafe(format!(r#"ALTER DATABASE "{name}" ALLOW_CONNECTIONS false"#))).execute(&mut admin).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1").bind(&name).execute(&mut admin).await.unwrap();
    eventually(Duration::from_secs(30), "deliveries are refused while it is away", || async { refused.load(Ordering::SeqCst) >= 8 }).await;
    sqlx::raw_sql(AssertSqlSafe(format!(r#"ALTER DATABASE "{name}" ALLOW_CONNECTIONS true"#))).execute(&mut admin).await.unwrap();

    for sender in senders {
        sender.await.unwrap();
    }
    let db = &app.db;
    assert_eq!(
        db.count("SELECT count(DISTINCT lead_id) FROM events WHERE kind = 'leads.status'").await,
        DEALS + 1,
        "every acknowledged delivery is in the log"
    );
    eventually(Duration::from_secs(60), "the worker resumes by itself and finishes every job", || async {
        db.count("SELECT count(*) FROM jobs WHERE state = 'completed' AND kind = 'payment_link.issue'").await == DEALS + 1
    })
    .await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    effects_once(&setup).await;
}

#[tokio::test]
async fn workers_killed_again_and_again_under_load_leave_every_effect_done_once() {
    let sections = "[log]\nfilter = \"error\"\n[worker]\nheartbeat_interval_ms = 300\npoll_interval_ms = 100\nconcurrency = 4";
    let setup = ProcessSetup::deal_entered_stage(sections).await;
    add_deals(&setup);
    for lead in FIRST_LEAD..FIRST_LEAD + DEALS {
        assert_eq!(setup.app.post_kommo(ACCOUNT, KOMMO_SECRET, &stage_entered(lead)).await.status(), 200);
    }
    // Slow answers, so that kills land in the middle of jobs.
    setup.stripe.delay_creates(Some(Duration::from_millis(40)));
    let db = &setup.app.db;
    let completed = async || db.count("SELECT count(*) FROM jobs WHERE state = 'completed'").await;

    let mut workers = vec![setup.start("worker"), setup.start("worker")];
    for round in 0..6 {
        let before = completed().await;
        eventually(Duration::from_secs(30), "work goes on", || async { completed().await > before || before == DEALS + 1 }).await;
        let mut victim = workers.remove(round % workers.len());
        victim.kill().unwrap(); // SIGKILL, whatever it was doing
        victim.wait().unwrap();
        workers.push(setup.start("worker"));
    }
    eventually(Duration::from_secs(60), "every job completes", || async { completed().await == DEALS + 1 }).await;
    for mut worker in workers {
        worker.kill().unwrap();
        worker.wait().unwrap();
    }
    effects_once(&setup).await;
}

#[tokio::test]
async fn a_provider_that_hangs_or_answers_garbage_costs_a_retry_not_a_stuck_worker() {
    use kommo_pay_worker::{Context, Worker, handlers};
    let sections = "[worker]\njob_timeout_secs = 3";
    let setup = ProcessSetup::deal_entered_stage(sections).await;
    let config = kommo_pay_core::config::Config::load(&setup.config_path, &|name| setup.env.get(name).cloned()).unwrap();
    let pool = setup.app.db.pool.clone();
    let worker = Worker::new(pool.clone(), handlers(Context::new(pool.clone(), &config.accounts)), config.worker.clone(), config.jobs.clone());
    let last_error = async || -> String {
        sqlx::query_scalar("SELECT errors -> -1 ->> 'error' FROM jobs WHERE kind = 'payment_link.issue'").fetch_one(&pool).await.unwrap()
    };
    let due_now = async || sqlx::query("UPDATE jobs SET run_at = now() WHERE state = 'retryable'").execute(&pool).await.unwrap();

    // Kommo hangs: the attempt is cut off at the job timeout, recorded, and retried later.
    setup.kommo.delay(Duration::from_secs(30));
    let started = std::time::Instant::now();
    assert_eq!(worker.run_once().await.unwrap().retried, 1);
    assert!(started.elapsed() < Duration::from_secs(10), "the timeout fired");
    assert!(last_error().await.contains("timed out"), "{}", last_error().await);
    setup.kommo.delay(Duration::ZERO);

    // Stripe answers an HTML page instead of JSON: an error is recorded, and the job retried.
    due_now().await;
    // (The client itself tries three times with the same idempotency key before the job fails.)
    for _ in 0..3 {
        setup.stripe.fail_next(200, Value::String("<html>502 Bad Gateway</html>".into()), None);
    }
    assert_eq!(worker.run_once().await.unwrap().retried, 1);
    assert!(last_error().await.contains("a body that is not its JSON"), "{}", last_error().await);

    // Kommo answers garbage where JSON belongs.
    due_now().await;
    setup.kommo.answer_next(200, "text/html", "<html>maintenance</html>");
    assert_eq!(worker.run_once().await.unwrap().retried, 1);
    assert!(last_error().await.contains("unreadable answer"), "{}", last_error().await);

    // Once they behave, the job completes; nothing was ever left running.
    due_now().await;
    assert_eq!(worker.run_once().await.unwrap().completed, 1);
    assert_eq!(setup.app.db.count("SELECT count(*) FROM jobs WHERE state = 'running'").await, 0);
}

#[tokio::test]
async fn ten_thousand_deliveries_of_two_thousand_events_store_one_event_each() {
    let app = Arc::new(spawn_app().await);
    let bodies: Arc<Vec<String>> = Arc::new((0..2000).map(|i| stripe_event(&format!("evt_dup_{i}"), "checkout.session.completed", i)).collect());
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let (app, bodies) = (app.clone(), bodies.clone());
            tokio::spawn(async move {
                // Each event five times, the copies spread over the tasks.
                for delivery in (0..10_000).filter(|d| d % 16 == task) {
                    let body = &bodies[delivery % 2000];
                    assert_eq!(app.post_signed_stripe(body).await.status(), 200);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(app.events().await, 2000);
    assert_eq!(app.jobs().await, 2000, "and one job each");
}
