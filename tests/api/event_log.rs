use kommo_pay_core::event_log::{self, NewEvent, Source};
use kommo_pay_core::ids::LeadId;
use kommo_pay_core::queue::NewJob;
use serde_json::json;

use crate::helpers::*;

fn event(dedup_key: &str) -> NewEvent {
    NewEvent::new(
        &ACCOUNT.into(),
        Source::Internal,
        "test.fact".into(),
        dedup_key.into(),
        Some(LeadId(1)),
        serde_json::value::to_raw_value(&json!({ "n": dedup_key })).unwrap(),
    )
}

fn job_for(event: &NewEvent) -> NewJob {
    NewJob { kind: "test.job".into(), args: json!({}), account: ACCOUNT.into(), lead_id: event.lead_id, event_id: event.id, max_attempts: 3, unique_key: None }
}

#[tokio::test]
async fn the_log_rejects_update_delete_and_truncate() {
    let db = TestDb::new().await;
    event_log::append(&db.pool, &[event("a")], &[]).await.unwrap();

    for sql in ["UPDATE events SET kind = 'changed'", "DELETE FROM events", "TRUNCATE events CASCADE"] {
        let error = sqlx::query(sql).execute(&db.pool).await.expect_err(sql).to_string();
        assert!(error.contains("append-only"), "{sql}: {error}");
    }
    assert_eq!(db.count("SELECT count(*) FROM events WHERE kind = 'test.fact'").await, 1);
}

#[tokio::test]
async fn a_duplicate_event_brings_no_jobs_and_a_batch_collapses_its_own_repeats() {
    let db = TestDb::new().await;
    let first = event("k1");
    event_log::append(&db.pool, std::slice::from_ref(&first), &[job_for(&first)]).await.unwrap();

    let again = event("k1");
    let fresh = event("k2");
    let repeated = event("k2");
    let appended =
        event_log::append(&db.pool, &[again.clone(), fresh.clone(), repeated.clone()], &[job_for(&again), job_for(&fresh), job_for(&repeated)]).await.unwrap();

    assert_eq!(appended.new_events, vec![fresh.id]);
    assert_eq!((appended.duplicates, appended.jobs), (2, 1));
    assert_eq!(db.count("SELECT count(*) FROM jobs").await, 2);
}

#[tokio::test]
async fn the_same_key_in_two_accounts_or_sources_is_two_events() {
    let db = TestDb::new().await;
    let mut other_account = event("k");
    other_account.account = "other".into();
    let mut other_source = event("k");
    other_source.source = Source::Stripe;
    let appended = event_log::append(&db.pool, &[event("k"), other_account, other_source], &[]).await.unwrap();
    assert_eq!(appended.new_events.len(), 3);
}

#[tokio::test]
async fn a_unique_job_key_enqueues_once() {
    let db = TestDb::new().await;
    let (a, b) = (event("a"), event("b"));
    let keyed = |e: &NewEvent| NewJob { unique_key: Some("remind:lead-1:1".into()), ..job_for(e) };
    let appended = event_log::append(&db.pool, &[a.clone(), b.clone()], &[keyed(&a), keyed(&b)]).await.unwrap();
    assert_eq!((appended.new_events.len(), appended.jobs), (2, 1));
}

#[tokio::test]
async fn an_accepted_event_with_jobs_wakes_listening_workers() {
    let app = spawn_app().await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&app.db.pool).await.unwrap();
    listener.listen(kommo_pay_core::queue::WAKE_CHANNEL).await.unwrap();

    app.post_signed_stripe(&stripe_event("evt_wake", "checkout.session.completed", 3)).await;

    let notification = tokio::time::timeout(std::time::Duration::from_secs(10), listener.recv()).await.expect("a wake-up within 10 s").unwrap();
    assert_eq!(notification.channel(), kommo_pay_core::queue::WAKE_CHANNEL);
}
