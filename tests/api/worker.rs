//! The job engine: claims, outcomes, retries, dead letters, crash rescue, shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use kommo_pay_core::config::WorkerConfig;
use kommo_pay_core::event_log::{self, NewEvent, Source};
use kommo_pay_core::ids::{JobId, LeadId};
use kommo_pay_core::queue::{self, NewJob};
use kommo_pay_worker::{Handlers, JobError, Ran, Rescuer, Worker};
use serde_json::{Value, json};

use crate::helpers::*;

const KIND: &str = "test.job";

fn worker_config() -> WorkerConfig {
    WorkerConfig {
        concurrency: 8,
        claim_batch: 8,
        max_per_account: 8,
        poll_interval: Duration::from_millis(100),
        heartbeat_interval: Duration::from_millis(300),
        job_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(10),
    }
}

fn rescuer(db: &TestDb, stale_after: Duration, overdue_after: Duration) -> Rescuer {
    Rescuer::new(db.pool.clone(), test_config(&db.url, "").jobs, stale_after, overdue_after)
}

fn worker(db: &TestDb, handlers: Handlers, config: WorkerConfig) -> Worker {
    Worker::new(db.pool.clone(), handlers, config, test_config(&db.url, "").jobs)
}

/// Enqueues one job of `kind` (with its causing event) and returns its id.
async fn enqueue(db: &TestDb, kind: &str, max_attempts: i32) -> i64 {
    let event = NewEvent::new(
        &ACCOUNT.into(),
        Source::Internal,
        "test.fact".into(),
        uuid::Uuid::new_v4().to_string(),
        Some(LeadId(15318175)),
        serde_json::value::to_raw_value(&json!({})).unwrap(),
    );
    let job = NewJob {
        kind: kind.into(),
        args: json!({ "n": 1 }),
        account: ACCOUNT.into(),
        lead_id: Some(LeadId(15318175)),
        event_id: event.id,
        max_attempts,
        unique_key: None,
    };
    event_log::append(&db.pool, std::slice::from_ref(&event), &[job]).await.unwrap();
    sqlx::query_scalar("SELECT id FROM jobs WHERE event_id = $1").bind(event.id).fetch_one(&db.pool).await.unwrap()
}

async fn state(db: &TestDb, id: i64) -> (String, i32) {
    sqlx::query_as("SELECT state, attempt FROM jobs WHERE id = $1").bind(id).fetch_one(&db.pool).await.unwrap()
}

async fn errors(db: &TestDb, id: i64) -> Vec<Value> {
    let errors: Value = sqlx::query_scalar("SELECT errors FROM jobs WHERE id = $1").bind(id).fetch_one(&db.pool).await.unwrap();
    errors.as_array().unwrap().clone()
}

async fn make_due(db: &TestDb, id: i64) {
    sqlx::query("UPDATE jobs SET run_at = now() WHERE id = $1").bind(id).execute(&db.pool).await.unwrap();
}

/// A handler that fails with a retryable error its first `failures` attempts, then succeeds.
fn flaky(failures: usize) -> (Handlers, Arc<Mutex<usize>>) {
    let calls = Arc::new(Mutex::new(0));
    let seen = calls.clone();
    let handlers = Handlers::new().on(KIND, move |_job| {
        let calls = seen.clone();
        async move {
            let mut n = calls.lock().unwrap();
            *n += 1;
            if *n <= failures { Err(JobError::retryable(anyhow!("Stripe answered 503 (attempt {n})"))) } else { Ok(()) }
        }
    });
    (handlers, calls)
}

#[tokio::test]
async fn a_successful_job_is_completed_once() {
    let db = TestDb::new().await;
    let id = enqueue(&db, KIND, 5).await;
    let (handlers, calls) = flaky(0);
    let worker = worker(&db, handlers, worker_config());

    assert_eq!(worker.run_once().await.unwrap(), Ran { claimed: 1, completed: 1, ..Ran::default() });
    assert_eq!(worker.run_once().await.unwrap(), Ran::default(), "nothing left to run");

    assert_eq!(state(&db, id).await, ("completed".into(), 1));
    assert_eq!(*calls.lock().unwrap(), 1);
    let locked: Option<String> = sqlx::query_scalar("SELECT locked_by FROM jobs WHERE id = $1").bind(id).fetch_one(&db.pool).await.unwrap();
    assert_eq!(locked, None);
}

#[tokio::test]
async fn a_failed_attempt_is_retried_at_a_stored_time_with_its_error_kept() {
    let db = TestDb::new().await;
    let id = enqueue(&db, KIND, 5).await;
    let (handlers, _) = flaky(1);
    let worker = worker(&db, handlers, worker_config());

    assert_eq!(worker.run_once().await.unwrap().retried, 1);

    assert_eq!(state(&db, id).await, ("retryable".into(), 1));
    let wait: f64 = sqlx::query_scalar("SELECT extract(epoch FROM run_at - now())::float8 FROM jobs WHERE id = $1").bind(id).fetch_one(&db.pool).await.unwrap();
    assert!((0.3..=1.0).contains(&wait), "the first retry waits between base/2 and base (1 s): {wait}");
    let errors = errors(&db, id).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["attempt"], 1);
    assert!(errors[0]["error"].as_str().unwrap().contains("Stripe answered 503"), "{errors:?}");
    assert_eq!(worker.run_once().await.unwrap().claimed, 0, "not due yet");

    make_due(&db, id).await;
    assert_eq!(worker.run_once().await.unwrap().completed, 1);
    assert_eq!(state(&db, id).await, ("completed".into(), 2));
}

#[tokio::test]
async fn a_job_out_of_attempts_is_dead_lettered_and_logged() {
    let db = TestDb::new().await;
    let id = enqueue(&db, KIND, 2).await;
    let (handlers, _) = flaky(usize::MAX);
    let worker = worker(&db, handlers, worker_config());

    assert_eq!(worker.run_once().await.unwrap().retried, 1);
    make_due(&db, id).await;
    assert_eq!(worker.run_once().await.unwrap().dead, 1);

    assert_eq!(state(&db, id).await, ("dead".into(), 2));
    assert_eq!(errors(&db, id).await.len(), 2);
    let (kind, lead_id, payload): (String, Option<i64>, Value) =
        sqlx::query_as("SELECT kind, lead_id, payload FROM events WHERE source = 'internal' AND caused_by_job = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((kind.as_str(), lead_id), ("job.dead_lettered", Some(15318175)));
    assert_eq!(payload["job_kind"], KIND);
    assert_eq!(payload["attempt"], 2);
    assert!(payload["error"].as_str().unwrap().contains("attempt 2"), "{payload}");
    make_due(&db, id).await;
    assert_eq!(worker.run_once().await.unwrap().claimed, 0, "a dead job is never claimed again");
}

#[tokio::test]
async fn a_permanent_error_dead_letters_the_job_without_retries() {
    let db = TestDb::new().await;
    let id = enqueue(&db, KIND, 5).await;
    let handlers = Handlers::new().on(KIND, |_job| async { Err(JobError::permanent(anyhow!("currency XYZ is not supported"))) });
    let worker = worker(&db, handlers, worker_config());

    assert_eq!(worker.run_once().await.unwrap().dead, 1);

    assert_eq!(state(&db, id).await, ("dead".into(), 1));
    assert_eq!(db.count("SELECT count(*) FROM events WHERE kind = 'job.dead_lettered'").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM jobs WHERE kind = 'deal.alert'").await, 1, "its deal's manager is told");
}

#[tokio::test]
async fn panics_and_timeouts_are_failed_attempts() {
    let db = TestDb::new().await;
    let panicking = enqueue(&db, "test.panics", 5).await;
    let hanging = enqueue(&db, "test.hangs", 5).await;
    let handlers = Handlers::new()
        .on("test.panics", |_job| async { panic!("index out of bounds") })
        .on("test.hangs", |_job| async { std::future::pending::<Result<(), JobError>>().await });
    let config = WorkerConfig { job_timeout: Duration::from_millis(300), ..worker_config() };
    let worker = worker(&db, handlers, config);

    assert_eq!(worker.run_once().await.unwrap().retried, 2);

    assert!(errors(&db, panicking).await[0]["error"].as_str().unwrap().contains("panicked: index out of bounds"));
    assert!(errors(&db, hanging).await[0]["error"].as_str().unwrap().contains("timed out"));
}

#[tokio::test]
async fn jobs_of_kinds_without_a_handler_are_left_alone() {
    let db = TestDb::new().await;
    let other = enqueue(&db, "someone.elses", 5).await;
    let (handlers, _) = flaky(0);
    assert_eq!(worker(&db, handlers, worker_config()).run_once().await.unwrap().claimed, 0);
    assert_eq!(state(&db, other).await, ("available".into(), 0));
}

#[tokio::test]
async fn a_late_outcome_never_overwrites_a_rescued_job() {
    let db = TestDb::new().await;
    let id = enqueue(&db, KIND, 5).await;
    let claimed = queue::claim(&db.pool, "old-owner", &[KIND.to_owned()], 10, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    sqlx::query("UPDATE jobs SET heartbeat_at = now() - interval '1 hour' WHERE id = $1").bind(id).execute(&db.pool).await.unwrap();

    let rescued = rescuer(&db, Duration::from_secs(5), Duration::from_secs(3600)).run_once().await.unwrap();
    assert_eq!((rescued.retried, rescued.dead), (1, 0));

    assert!(queue::complete(&db.pool, "old-owner", &[JobId(id)]).await.unwrap().is_empty());
    assert!(!queue::fail(&db.pool, "old-owner", JobId(id), "late", queue::Fate::Dead, 10).await.unwrap());
    assert_eq!(state(&db, id).await, ("retryable".into(), 1));
    let backs_off: bool = sqlx::query_scalar("SELECT run_at > now() FROM jobs WHERE id = $1").bind(id).fetch_one(&db.pool).await.unwrap();
    assert!(backs_off, "a lost attempt is retried after its kind's backoff, like any failed one");
    assert!(errors(&db, id).await[0]["error"].as_str().unwrap().contains("old-owner stopped heartbeating"));
}

#[tokio::test]
async fn a_crashed_workers_job_is_taken_back_within_two_heartbeat_intervals_and_runs_again() {
    let db = TestDb::new().await;
    let id = enqueue(&db, KIND, 5).await;
    let hang = Handlers::new().on(KIND, |_job| async { std::future::pending::<Result<(), JobError>>().await });
    let crashing = tokio::spawn(worker(&db, hang, worker_config()).run(std::future::pending()));
    eventually(Duration::from_secs(10), "the first worker runs the job", || async { state(&db, id).await.0 == "running" }).await;

    // Like kill -9: the process's tasks stop at once, heartbeat included; nothing is released.
    crashing.abort();
    let _ = crashing.await;
    let (handlers, _) = flaky(0);
    let survivor = tokio::spawn(worker(&db, handlers, worker_config()).run(std::future::pending()));

    eventually(Duration::from_secs(10), "the job completes on the surviving worker", || async { state(&db, id).await.0 == "completed" }).await;
    survivor.abort();
    assert_eq!(state(&db, id).await, ("completed".into(), 2), "the lost run counts as an attempt");
}

#[tokio::test]
async fn the_rescuer_takes_back_jobs_silent_for_one_and_a_half_heartbeat_intervals() {
    // It looks every half interval, so a crashed worker's job runs again within two intervals.
    let db = TestDb::new().await;
    let config = WorkerConfig { heartbeat_interval: Duration::from_secs(10), ..worker_config() };
    let rescuer = Rescuer::for_worker(db.pool.clone(), &config, test_config(&db.url, "").jobs);
    let recent = enqueue(&db, KIND, 5).await;
    let silent = enqueue(&db, KIND, 5).await;
    queue::claim(&db.pool, "gone", &[KIND.to_owned()], 10, 10).await.unwrap();
    let age = |id: i64, secs: i32| sqlx::query("UPDATE jobs SET heartbeat_at = now() - make_interval(secs => $2) WHERE id = $1").bind(id).bind(secs);
    age(recent, 14).execute(&db.pool).await.unwrap();
    age(silent, 16).execute(&db.pool).await.unwrap();

    let rescued = rescuer.run_once().await.unwrap();

    assert_eq!((rescued.retried, rescued.dead), (1, 0));
    assert_eq!(state(&db, recent).await.0, "running", "14 s of silence is within 1.5 × 10 s");
    assert_eq!(state(&db, silent).await, ("retryable".into(), 1));
}

#[tokio::test]
async fn a_job_that_keeps_killing_its_worker_ends_dead_not_looping() {
    let db = TestDb::new().await;
    let id = enqueue(&db, KIND, 1).await;
    queue::claim(&db.pool, "gone", &[KIND.to_owned()], 10, 10).await.unwrap();
    sqlx::query("UPDATE jobs SET heartbeat_at = now() - interval '1 hour'").execute(&db.pool).await.unwrap();

    let rescued = rescuer(&db, Duration::from_secs(5), Duration::from_secs(3600)).run_once().await.unwrap();

    assert_eq!((rescued.retried, rescued.dead), (0, 1));
    assert_eq!(state(&db, id).await, ("dead".into(), 1));
    assert_eq!(db.count("SELECT count(*) FROM events WHERE kind = 'job.dead_lettered'").await, 1);
}

#[tokio::test]
async fn a_slow_but_alive_job_is_never_stolen() {
    let db = TestDb::new().await;
    let id = enqueue(&db, KIND, 5).await;
    let slow = Handlers::new().on(KIND, |_job| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Ok(())
    });
    let config = worker_config();
    let running = tokio::spawn(worker(&db, slow, config.clone()).run(std::future::pending()));
    let rescuer = Rescuer::for_worker(db.pool.clone(), &config, test_config(&db.url, "").jobs);

    eventually(Duration::from_secs(10), "the job completes", || async {
        let rescued = rescuer.run_once().await.unwrap();
        assert_eq!((rescued.retried, rescued.dead), (0, 0), "a live worker's job was rescued");
        state(&db, id).await.0 == "completed"
    })
    .await;
    running.abort();
    assert_eq!(state(&db, id).await, ("completed".into(), 1));
}

#[tokio::test]
async fn shutdown_lets_running_jobs_finish_and_gives_back_those_cut_off() {
    let db = TestDb::new().await;
    let quick = enqueue(&db, "test.quick", 5).await;
    let stuck = enqueue(&db, "test.stuck", 5).await;
    let handlers = Handlers::new()
        .on("test.quick", |_job| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(())
        })
        .on("test.stuck", |_job| async { std::future::pending::<Result<(), JobError>>().await });
    let config = WorkerConfig { shutdown_grace: Duration::from_millis(800), ..worker_config() };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker(&db, handlers, config).run(async {
        let _ = stopped.await;
    }));
    eventually(Duration::from_secs(10), "both jobs run", || async { state(&db, quick).await.0 == "running" && state(&db, stuck).await.0 == "running" }).await;

    stop.send(()).unwrap();
    running.await.unwrap().unwrap();

    assert_eq!(state(&db, quick).await, ("completed".into(), 1), "finished within the grace period");
    assert_eq!(state(&db, stuck).await, ("available".into(), 0), "given back untouched");
}

#[tokio::test]
async fn two_workers_run_every_job_exactly_once() {
    let db = TestDb::new().await;
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(enqueue(&db, KIND, 5).await);
    }
    let runs: Arc<Mutex<HashMap<JobId, usize>>> = Arc::default();
    let handlers = |runs: Arc<Mutex<HashMap<JobId, usize>>>| {
        Handlers::new().on(KIND, move |job| {
            let runs = runs.clone();
            async move {
                *runs.lock().unwrap().entry(job.id).or_default() += 1;
                Ok(())
            }
        })
    };
    let a = tokio::spawn(worker(&db, handlers(runs.clone()), worker_config()).run(std::future::pending()));
    let b = tokio::spawn(worker(&db, handlers(runs.clone()), worker_config()).run(std::future::pending()));

    eventually(Duration::from_secs(30), "all 200 jobs complete", || async { db.count("SELECT count(*) FROM jobs WHERE state = 'completed'").await == 200 })
        .await;
    a.abort();
    b.abort();
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), 200);
    assert!(runs.values().all(|n| *n == 1), "a job ran twice");
}

#[tokio::test]
async fn a_committed_job_wakes_an_idle_worker_long_before_its_next_poll() {
    let db = TestDb::new().await;
    let (handlers, _) = flaky(0);
    let config = WorkerConfig { poll_interval: Duration::from_secs(60), ..worker_config() };
    // The first job is found by the start-up claim; once it is done the worker is idle, waiting.
    let first = enqueue(&db, KIND, 5).await;
    let running = tokio::spawn(worker(&db, handlers, config).run(std::future::pending()));
    eventually(Duration::from_secs(10), "the first job completes", || async { state(&db, first).await.0 == "completed" }).await;

    let second = enqueue(&db, KIND, 5).await;
    sqlx::query("SELECT pg_notify($1, '')").bind(queue::WAKE_CHANNEL).execute(&db.pool).await.unwrap();

    eventually(Duration::from_secs(10), "the second job completes without waiting a poll interval", || async { state(&db, second).await.0 == "completed" })
        .await;
    running.abort();
}
