//! A worker process killed with SIGKILL in the middle of a job: another process finishes it,
//! and the job's effects happen once.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn a_worker_killed_mid_job_leaves_the_job_to_another_which_completes_it_once() {
    // A heartbeat a second: the dead worker's job is taken back within 2 s, and the living one's
    // beats are not missed on a machine busy with the whole suite (300 ms once cost a spurious
    // rescue, and so an extra attempt).
    let sections = "[log]\nfilter = \"warn\"\n[worker]\nheartbeat_interval_ms = 1000\npoll_interval_ms = 100";
    let setup = ProcessSetup::deal_entered_stage(sections).await;
    let (kommo, stripe, app) = (&setup.kommo, &setup.stripe, &setup.app);

    // The first worker is inside Stripe's (slow) answer when it is killed.
    stripe.delay_creates(Some(Duration::from_secs(30)));
    let mut first = setup.start("worker");
    eventually(Duration::from_secs(30), "the first worker calls Stripe", || async { !stripe.requests().is_empty() }).await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    stripe.delay_creates(None);

    let mut second = setup.start("worker");
    eventually(Duration::from_secs(30), "the second worker completes the job", || async {
        app.db.count("SELECT count(*) FROM jobs WHERE state = 'completed'").await == 1
    })
    .await;
    second.kill().unwrap();
    second.wait().unwrap();

    let keys: Vec<String> = stripe.requests().iter().map(|r| r.idempotency_key.clone().unwrap()).collect();
    assert_eq!(keys.len(), 2, "one try per worker");
    assert_eq!(keys[0], keys[1], "the same idempotency key across the crash");
    assert!(stripe.link("plink_fake1").is_some() && stripe.link("plink_fake2").is_none(), "exactly one link at Stripe");
    let (state, attempt): (String, i32) = sqlx::query_as("SELECT state, attempt FROM jobs").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!((state.as_str(), attempt), ("completed", 2), "the killed run counted as an attempt");
    assert_eq!(kommo.notes().len(), 1, "one note with the link");
    let lead = kommo.lead(15318175).unwrap();
    assert_eq!(lead["custom_fields_values"][0]["values"][0]["value"], "https://buy.stripe.com/test_fake1");
}
