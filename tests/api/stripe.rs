use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn a_signed_event_is_logged_with_its_job_before_the_answer() {
    let app = spawn_app().await;
    let body = stripe_event("evt_1Paid", "checkout.session.completed", 15318175);

    let response = app.post_signed_stripe(&body).await;

    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer, serde_json::json!({ "accepted": 1, "duplicates": 0 }));
    let (account, source, kind, dedup_key, lead_id, payload): (String, String, String, String, Option<i64>, Value) =
        sqlx::query_as("SELECT account, source, kind, dedup_key, lead_id, payload FROM events").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(
        (account.as_str(), source.as_str(), kind.as_str(), dedup_key.as_str(), lead_id),
        (ACCOUNT, "stripe", "checkout.session.completed", "evt_1Paid", Some(15318175))
    );
    assert_eq!(payload, serde_json::from_str::<Value>(&body).unwrap());
    let (job_kind, state, job_lead): (String, String, Option<i64>) =
        sqlx::query_as("SELECT j.kind, j.state, j.lead_id FROM jobs j JOIN events e ON e.id = j.event_id").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!((job_kind.as_str(), state.as_str(), job_lead), ("stripe.payment", "available", Some(15318175)));
}

#[tokio::test]
async fn the_signature_header_is_not_stored_but_safe_headers_are() {
    let app = spawn_app().await;
    app.post_signed_stripe(&stripe_event("evt_h", "invoice.paid", 1)).await;
    let headers: Value = sqlx::query_scalar("SELECT headers FROM events").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(headers["content-type"], "application/json");
    assert!(!headers.to_string().to_lowercase().contains("signature"), "{headers}");
    assert!(!headers.to_string().contains(STRIPE_SECRET));
}

#[tokio::test]
async fn rejected_deliveries_get_their_status_and_change_nothing() {
    let app = spawn_app().await;
    let body = stripe_event("evt_bad", "checkout.session.completed", 1);
    let t = now();
    let tampered = body.replace("200000", "1");
    let cases: Vec<(&str, &str, String, Option<String>, u16)> = vec![
        ("tampered body", ACCOUNT, tampered.clone(), Some(stripe_signature(STRIPE_SECRET, t, &body)), 401),
        ("wrong secret", ACCOUNT, body.clone(), Some(stripe_signature("whsec_guess", t, &body)), 401),
        ("no signature", ACCOUNT, body.clone(), None, 401),
        ("garbled signature", ACCOUNT, body.clone(), Some("t=abc,v1=xyz".into()), 401),
        ("stale timestamp", ACCOUNT, body.clone(), Some(stripe_signature(STRIPE_SECRET, t - 600, &body)), 400),
        ("future timestamp", ACCOUNT, body.clone(), Some(stripe_signature(STRIPE_SECRET, t + 600, &body)), 400),
        ("signed but not JSON", ACCOUNT, "not json".into(), Some(stripe_signature(STRIPE_SECRET, t, "not json")), 400),
        ("signed but not an event", ACCOUNT, "{}".into(), Some(stripe_signature(STRIPE_SECRET, t, "{}")), 400),
        ("unknown account", "nobody", body.clone(), Some(stripe_signature(STRIPE_SECRET, t, &body)), 404),
        ("account without Stripe", KOMMO_ONLY_ACCOUNT, body.clone(), Some(stripe_signature(STRIPE_SECRET, t, &body)), 404),
    ];
    for (name, account, body, signature, status) in cases {
        let response = app.post_stripe(account, &body, signature.as_deref()).await;
        assert_eq!(response.status().as_u16(), status, "case {name:?}");
        let answer: Value = response.json().await.unwrap();
        assert!(answer["error"].is_string(), "case {name:?}: {answer}");
        assert!(!answer.to_string().contains(STRIPE_SECRET), "case {name:?} leaks the secret");
    }
    assert_eq!((app.events().await, app.jobs().await), (0, 0), "no rejected delivery reaches the log");
}

#[tokio::test]
async fn both_secrets_work_while_rotating() {
    let app = spawn_app().await;
    let new = stripe_event("evt_new", "invoice.paid", 1);
    let old = stripe_event("evt_old", "invoice.paid", 1);
    let t = now();
    let old_v1 = stripe_signature(STRIPE_OLD_SECRET, t, &old).split("v1=").nth(1).unwrap().to_owned();
    let both = format!("{},v1={old_v1}", stripe_signature("whsec_unknown", t, &old));
    assert_eq!(app.post_stripe(ACCOUNT, &new, Some(&stripe_signature(STRIPE_SECRET, t, &new))).await.status(), 200);
    assert_eq!(app.post_stripe(ACCOUNT, &old, Some(&both)).await.status(), 200, "several v1 values, one valid");
    assert_eq!(app.events().await, 2);
}

#[tokio::test]
async fn a_redelivered_event_is_acknowledged_once_logged_once() {
    let app = spawn_app().await;
    let body = stripe_event("evt_twice", "checkout.session.completed", 7);

    // Stripe re-signs every retry; concurrent deliveries must still collapse into one.
    let (a, b, c) = tokio::join!(app.post_signed_stripe(&body), app.post_signed_stripe(&body), app.post_signed_stripe(&body));

    let mut accepted = 0;
    for response in [a, b, c] {
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        accepted += answer["accepted"].as_i64().unwrap();
    }
    assert_eq!(accepted, 1);
    assert_eq!((app.events().await, app.jobs().await), (1, 1));
}

#[tokio::test]
async fn events_we_do_not_act_on_are_logged_without_jobs() {
    let app = spawn_app().await;
    assert_eq!(app.post_signed_stripe(&stripe_event("evt_c", "customer.created", 1)).await.status(), 200);
    assert_eq!((app.events().await, app.jobs().await), (1, 0));
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_and_are_not_stored() {
    let app = spawn_app_with("body_limit_bytes = 2048").await;
    let padding = "x".repeat(4096);
    let body = stripe_event("evt_big", "invoice.paid", 1).replace("\"usd\"", &format!("\"usd\",\"pad\":\"{padding}\""));

    let response = app.post_signed_stripe(&body).await;

    assert_eq!(response.status(), 413);
    assert_eq!(app.events().await, 0);
    let small = stripe_event("evt_small", "invoice.paid", 1);
    assert_eq!(app.post_signed_stripe(&small).await.status(), 200, "a body under the limit still passes");
}

#[tokio::test]
async fn an_event_the_database_cannot_store_gets_400_without_failing_its_neighbours() {
    let app = spawn_app().await;
    // Valid JSON, but `jsonb` cannot hold a NUL character: no retry would ever store it.
    let poison = stripe_event("evt_poison", "invoice.paid", 1).replace("cs_test_a1b2c3", "cs_\\u0000");
    let good: Vec<String> = (0..3).map(|i| stripe_event(&format!("evt_fine_{i}"), "invoice.paid", 1)).collect();

    let (poisoned, a, b, c) =
        tokio::join!(app.post_signed_stripe(&poison), app.post_signed_stripe(&good[0]), app.post_signed_stripe(&good[1]), app.post_signed_stripe(&good[2]),);

    assert_eq!(poisoned.status(), 400);
    let answer: Value = poisoned.json().await.unwrap();
    assert!(answer["detail"].as_str().unwrap().contains("cannot be stored"), "{answer}");
    for response in [a, b, c] {
        assert_eq!(response.status(), 200);
    }
    assert_eq!((app.events().await, app.jobs().await), (3, 3));
}

#[tokio::test]
async fn deliveries_arriving_while_an_append_runs_are_committed_together() {
    let app = spawn_app().await;
    // Appends wait behind this lock until the test lets them go.
    let mut locker = app.db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN SHARE MODE").execute(&mut *locker).await.unwrap();
    let waiting_appends = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap()
    };
    let first = stripe_event("evt_first", "invoice.paid", 1);
    // Four: the backlog for which a second append starts beside a running one (ingest's appender).
    let rest: Vec<String> = (0..4).map(|i| stripe_event(&format!("evt_rest_{i}"), "invoice.paid", 1)).collect();

    let later = async {
        eventually(Duration::from_secs(10), "the first delivery's append waits", || async { waiting_appends().await == 1 }).await;
        let (answers, ()) = tokio::join!(futures_util::future::join_all(rest.iter().map(|body| app.post_signed_stripe(body))), async {
            eventually(Duration::from_secs(10), "a second append starts for the backlog", || async { waiting_appends().await == 2 }).await;
            locker.commit().await.unwrap();
        });
        answers
    };
    let (first_answer, rest_answers) = tokio::join!(app.post_signed_stripe(&first), later);

    assert_eq!(first_answer.status(), 200);
    for answer in rest_answers {
        assert_eq!(answer.status(), 200);
    }
    assert_eq!((app.events().await, app.jobs().await), (5, 5));
    // Rows written by one statement share its transaction id. The four did not start a second
    // append one by one: they waited for the running one and went out together.
    let statements: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM events WHERE dedup_key LIKE 'evt_rest_%'").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(statements, 1, "the waiting deliveries were committed in one statement");
}

#[tokio::test]
async fn concurrent_deliveries_are_each_answered_for_their_own_events() {
    let app = spawn_app().await;
    let bodies: Vec<String> = (0..40).map(|i| stripe_event(&format!("evt_many_{}", i % 20), "invoice.paid", i)).collect();

    let answers = futures_util::future::join_all(bodies.iter().map(|body| app.post_signed_stripe(body))).await;

    let mut accepted = 0;
    for response in answers {
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["accepted"].as_i64().unwrap() + answer["duplicates"].as_i64().unwrap(), 1, "{answer}");
        accepted += answer["accepted"].as_i64().unwrap();
    }
    assert_eq!(accepted, 20, "each of the 20 distinct events is accepted exactly once");
    assert_eq!((app.events().await, app.jobs().await), (20, 20));
}

#[test]
fn the_readme_tells_users_every_stripe_event_to_select() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let stripe_row = readme.lines().find(|line| line.starts_with("| Stripe | `https://HOST/webhooks/stripe/")).expect("the README's Stripe webhook row");
    for event in kommo_pay_core::jobs::STRIPE_EVENT_TYPES {
        assert!(stripe_row.contains(&format!("`{event}`")), "the README's Stripe webhook row does not name {event}");
    }
}
