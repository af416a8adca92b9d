//! Fair claims across accounts (ADR 15): one account's burst never makes another account's job
//! wait for it, and no account runs more than `max_per_account` jobs at once, in any number of
//! worker processes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kommo_pay_core::config::WorkerConfig;
use kommo_pay_core::ids::JobId;
use kommo_pay_core::queue;
use kommo_pay_worker::{Handlers, Worker};

use crate::helpers::*;

const KIND: &str = "test.fair";

/// `n` runnable jobs of `account`; returns their ids, oldest first.
async fn backlog(db: &TestDb, account: &str, n: i64) -> Vec<JobId> {
    sqlx::query_scalar("INSERT INTO jobs (kind, account, max_attempts) SELECT $1, $2, 3 FROM generate_series(1, $3) RETURNING id")
        .bind(KIND)
        .bind(account)
        .bind(n)
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

fn accounts_of(jobs: &[queue::ClaimedJob]) -> Vec<&str> {
    jobs.iter().map(|j| j.account.as_str()).collect()
}

#[tokio::test]
async fn with_more_of_one_accounts_jobs_than_slots_another_accounts_job_is_in_the_next_claim() {
    let db = TestDb::new().await;
    backlog(&db, "agency-a", 200).await;
    let b = backlog(&db, "agency-b", 1).await;

    let first = queue::claim(&db.pool, "w1", &[KIND.to_owned()], 8, 100).await.unwrap();
    assert_eq!(first.len(), 8);
    assert!(first.iter().any(|j| j.id == b[0]), "B's one job, newer than all of A's, is claimed at once: {:?}", accounts_of(&first));

    // Turns: with three accounts waiting, a claim of six takes two of each, oldest first.
    let db = TestDb::new().await;
    let a = backlog(&db, "agency-a", 10).await;
    let b = backlog(&db, "agency-b", 10).await;
    let c = backlog(&db, "agency-c", 10).await;
    let ids: Vec<JobId> = queue::claim(&db.pool, "w1", &[KIND.to_owned()], 6, 100).await.unwrap().iter().map(|j| j.id).collect();
    let mut expected = vec![a[0], a[1], b[0], b[1], c[0], c[1]];
    expected.sort();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn an_account_at_its_cap_gets_no_slot_while_others_still_do() {
    let db = TestDb::new().await;
    backlog(&db, "agency-a", 50).await;
    let kinds = [KIND.to_owned()];

    let first = queue::claim(&db.pool, "w1", &kinds, 16, 5).await.unwrap();
    assert_eq!(accounts_of(&first), ["agency-a"; 5], "at most the cap");
    // Another process's claim counts what runs everywhere.
    assert!(queue::claim(&db.pool, "w2", &kinds, 16, 5).await.unwrap().is_empty());
    let b = backlog(&db, "agency-b", 3).await;
    let second = queue::claim(&db.pool, "w2", &kinds, 16, 5).await.unwrap();
    assert_eq!(second.iter().map(|j| j.id).collect::<Vec<_>>(), b, "B still gets its slots");
}

/// Two worker processes (two workers, two owners, one database) with 16 slots each run two
/// busy accounts' jobs: neither account ever has more than the cap running, and both progress
/// from the start.
#[tokio::test]
async fn two_workers_never_run_more_than_the_cap_of_one_account_and_both_accounts_progress() {
    let db = TestDb::new().await;
    backlog(&db, "agency-a", 60).await;
    backlog(&db, "agency-b", 60).await;
    let cap = 4;
    let running: Arc<Mutex<HashMap<String, (usize, usize)>>> = Arc::default(); // account → (now, most)
    let finished_order: Arc<Mutex<Vec<String>>> = Arc::default();
    let handlers = || {
        let (running, finished_order) = (running.clone(), finished_order.clone());
        Handlers::new().on(KIND, move |job| {
            let (running, finished_order) = (running.clone(), finished_order.clone());
            async move {
                {
                    let mut running = running.lock().unwrap();
                    let entry = running.entry(job.account.to_string()).or_default();
                    entry.0 += 1;
                    entry.1 = entry.1.max(entry.0);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                running.lock().unwrap().get_mut(job.account.as_str()).unwrap().0 -= 1;
                finished_order.lock().unwrap().push(job.account.to_string());
                Ok(())
            }
        })
    };
    let config = WorkerConfig {
        concurrency: 16,
        claim_batch: 16,
        max_per_account: cap,
        poll_interval: Duration::from_millis(50),
        heartbeat_interval: Duration::from_secs(5),
        job_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(5),
    };
    let policies = test_config(&db.url, "").jobs;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for _ in 0..2 {
        let worker = Worker::new(db.pool.clone(), handlers(), config.clone(), policies.clone());
        let mut stopped = stopped.clone();
        workers.push(tokio::spawn(worker.run(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })));
    }
    eventually(Duration::from_secs(60), "every job completes", || async { db.count("SELECT count(*) FROM jobs WHERE state = 'completed'").await == 120 }).await;
    stop.send_replace(true);
    for worker in workers {
        worker.await.unwrap().unwrap();
    }

    let most: HashMap<String, usize> = running.lock().unwrap().iter().map(|(account, (_, most))| (account.clone(), *most)).collect();
    assert!(most.values().all(|m| *m <= cap), "an account ran more than {cap} jobs at once: {most:?}");
    let order = finished_order.lock().unwrap().clone();
    let first_of_b = order.iter().position(|a| a == "agency-b").unwrap();
    let first_of_a = order.iter().position(|a| a == "agency-a").unwrap();
    assert!(first_of_a < 2 * cap && first_of_b < 2 * cap, "both accounts progress from the start: {:?}", &order[..16]);
}

/// The deal's `payment_link.issue` job as the queue holds it: state, attempts used, errors
/// written, what it waits for, and how far off its next run is (seconds).
async fn issue_job(db: &TestDb) -> (String, i32, serde_json::Value, Option<String>, f64) {
    sqlx::query_as("SELECT state, attempt, errors, waiting_for, extract(epoch FROM run_at - now())::float8 FROM jobs WHERE kind = 'payment_link.issue'")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// An account whose Kommo budget has no slot soon (paused after a 429 here) holds no worker
/// slot: its job is deferred to the slot's time, uses no attempt and writes no error, and the
/// queue view and the metrics show it waiting for Kommo's rate limit. When the budget is back
/// it runs as if nothing happened.
#[tokio::test]
async fn a_job_waiting_for_its_accounts_kommo_budget_is_deferred_without_using_an_attempt() {
    let f = crate::stripe_flow::flow().await;
    let db = &f.app.db;
    sqlx::query("INSERT INTO api_limits (provider, account, paused_until) VALUES ('kommo', $1, now() + interval '60 seconds')")
        .bind(ACCOUNT)
        .execute(&db.pool)
        .await
        .unwrap();

    f.deal_enters_stage().await;
    let ran = f.worker.run_once().await.unwrap();
    assert_eq!((ran.claimed, ran.deferred, ran.retried), (1, 1, 0), "{ran:?}");
    let (state, attempt, errors, waiting_for, due_in) = issue_job(db).await;
    assert_eq!((state.as_str(), attempt, errors, waiting_for.as_deref()), ("available", 0, serde_json::json!([]), Some("kommo")));
    assert!((50.0..=61.0).contains(&due_in), "deferred to the pause's end, {due_in} s away");
    assert!(f.kommo.requests().is_empty(), "nothing was sent to the paused account");

    let queue: serde_json::Value =
        f.app.client.get(format!("{}/ops/v1/queue", f.app.address)).bearer_auth(OPS_TOKEN_ALICE).send().await.unwrap().json().await.unwrap();
    assert_eq!(queue["waiting_for_rate_limit"][0]["provider"], "kommo", "{queue}");
    assert_eq!(queue["waiting_for_rate_limit"][0]["account"], ACCOUNT);
    assert_eq!(queue["waiting_for_rate_limit"][0]["count"], 1);
    let metrics = f.app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"kommo_pay_jobs_waiting_for_rate_limit{provider="kommo"} 1"#), "{metrics}");

    // The budget is back (the pause ended): the link is issued on the job's first attempt.
    sqlx::query("UPDATE api_limits SET paused_until = NULL").execute(&db.pool).await.unwrap();
    sqlx::query("UPDATE jobs SET run_at = now()").execute(&db.pool).await.unwrap();
    f.drain().await;
    let (state, attempt, errors, waiting_for, _) = issue_job(db).await;
    assert_eq!((state.as_str(), attempt, errors, waiting_for), ("completed", 1, serde_json::json!([]), None));
    assert_eq!(f.field(crate::stripe_flow::LINK_FIELD).unwrap()["value"], crate::stripe_flow::LINK1);
}

/// Kommo's own 429 pauses the account for everyone and defers the job the same way.
#[tokio::test]
async fn a_kommo_429_pauses_the_account_and_defers_its_job_without_using_an_attempt() {
    let f = crate::stripe_flow::flow().await;
    f.kommo.answer_next(429, "application/problem+json", r#"{"title":"Too Many Requests","status":429,"detail":"Too many requests"}"#);

    f.deal_enters_stage().await;
    let ran = f.worker.run_once().await.unwrap();
    assert_eq!((ran.claimed, ran.deferred), (1, 1), "{ran:?}");
    let (state, attempt, errors, waiting_for, due_in) = issue_job(&f.app.db).await;
    assert_eq!((state.as_str(), attempt, errors, waiting_for.as_deref()), ("available", 0, serde_json::json!([]), Some("kommo")));
    assert!(due_in > 0.0, "deferred to the pause's end");
    let paused: bool = sqlx::query_scalar("SELECT paused_until > now() FROM api_limits WHERE provider = 'kommo'").fetch_one(&f.app.db.pool).await.unwrap();
    assert!(paused, "the account is paused for every process");
}

/// A request that gives up on a slot too far away (and defers its job) must not take that slot:
/// otherwise every deferral would burn budget the account's other requests could have used.
#[tokio::test]
async fn a_request_that_gives_up_on_a_far_slot_reserves_nothing() {
    use kommo_pay_core::rate_limit::{RateLimiter, Slot};
    let db = TestDb::new().await;
    let limiter = RateLimiter::new(db.pool.clone(), kommo_pay_core::provider::Provider::Kommo, &ACCOUNT.into(), 5.0);
    assert_eq!(limiter.acquire().await.unwrap(), Slot::Go);
    limiter.pause(Duration::from_secs(60)).await.unwrap();
    let next_slot = || sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>("SELECT next_slot FROM api_limits").fetch_one(&db.pool);
    let before = next_slot().await.unwrap();
    for _ in 0..10 {
        let slot = limiter.acquire().await.unwrap();
        assert!(matches!(slot, Slot::TooFar(wait) if wait > Duration::from_secs(50)), "{slot:?}");
    }
    assert_eq!(next_slot().await.unwrap(), before, "ten give-ups reserved nothing");
}
