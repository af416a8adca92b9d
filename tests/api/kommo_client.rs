//! The Kommo client against a fake Kommo: answers, errors, and the account-wide rate limit,
//! pause and block that all processes share through PostgreSQL.

use std::time::Duration;

use kommo_pay_core::ids::{ContactId, LeadId};
use kommo_pay_core::kommo::activity::NewTask;
use kommo_pay_core::kommo::client::{Credentials, KommoClient, KommoError};
use kommo_pay_core::kommo::lead::{FieldValue, LeadChanges};
use secrecy::SecretString;
use serde_json::json;

use crate::fakes::kommo::{FakeKommo, TOKEN};
use crate::helpers::*;

fn client(db: &TestDb, kommo: &FakeKommo, per_second: f64) -> KommoClient {
    KommoClient::with_timeouts(
        db.pool.clone(),
        &ACCOUNT.into(),
        kommo.url.parse().unwrap(),
        Credentials::LongLived(SecretString::from(TOKEN)),
        per_second,
        Duration::from_millis(500),
    )
}

fn lead() -> serde_json::Value {
    json!({
        "id": 15318175, "name": "Website redesign", "price": 2000, "status_id": 67548619, "pipeline_id": 8572511,
        "responsible_user_id": 504141, "custom_fields_values": null,
        "_embedded": { "contacts": [{ "id": 9012345, "is_main": true }] }
    })
}

#[tokio::test]
async fn reads_a_lead_and_treats_204_as_none() {
    let db = TestDb::new().await;
    let kommo = FakeKommo::start().await;
    kommo.add_lead(lead());
    let client = client(&db, &kommo, 50.0);

    let found = client.lead(LeadId(15318175)).await.unwrap().unwrap();
    assert_eq!((found.main_contact_id(), found.name(), found.price().as_deref()), (Some(ContactId(9012345)), "Website redesign", Some("2000")));
    assert_eq!(kommo.requests()[0].path, "/api/v4/leads?limit=250&page=1&with=contacts&filter[id][]=15318175");
    assert!(client.lead(LeadId(1)).await.unwrap().is_none());
}

#[tokio::test]
async fn writes_fields_notes_tasks_and_launches_a_salesbot() {
    let db = TestDb::new().await;
    let kommo = FakeKommo::start().await;
    kommo.add_lead(lead());
    let client = client(&db, &kommo, 50.0);

    let fields = LeadChanges::fields(vec![FieldValue::value(1, "https://buy.stripe.com/test_1")]);
    client.update_lead(LeadId(15318175), &fields).await.unwrap();
    client.add_lead_note_once(LeadId(15318175), "Payment link issued", false).await.unwrap();
    client.add_task_once(&NewTask::call(LeadId(15318175), "Call", 1764200000, None), false).await.unwrap();
    client.run_salesbot(77, LeadId(15318175)).await.unwrap();

    assert_eq!(kommo.requests()[0].method, axum::http::Method::PATCH);
    assert_eq!(kommo.lead(15318175).unwrap()["custom_fields_values"][0]["values"][0]["value"], "https://buy.stripe.com/test_1");
    assert_eq!(kommo.notes(), vec![json!({ "entity_id": 15318175, "note_type": "common", "params": { "text": "Payment link issued" } })]);
    assert_eq!(kommo.tasks()[0]["text"], "Call");
    assert_eq!(kommo.bot_launches(), vec![json!({ "bot_id": 77, "entity_id": 15318175, "entity_type": 2 })], "accepted with Kommo's plain-text 202");
}

/// Reads asked for together go to Kommo as list requests of at most 250 ids, and an id Kommo
/// does not have is simply missing from the answer.
#[tokio::test]
async fn reads_many_leads_in_lists_of_250() {
    let db = TestDb::new().await;
    let kommo = FakeKommo::start().await;
    for id in 1..=600 {
        kommo.add_lead(json!({ "id": id, "name": format!("Deal {id}"), "pipeline_id": 1, "status_id": 2 }));
    }
    let client = client(&db, &kommo, 50.0);

    let found = client.leads((1..=620).map(LeadId).collect()).await.unwrap();
    assert_eq!(found.len(), 600);
    assert_eq!(found[&LeadId(317)].name(), "Deal 317");
    let lists: Vec<_> = kommo.requests().into_iter().filter(|r| r.path.starts_with("/api/v4/leads?")).collect();
    assert_eq!(lists.len(), 3, "⌈620 / 250⌉ lists");
    assert!(lists.iter().all(|r| r.path.matches("filter[id][]=").count() <= 250));
}

#[tokio::test]
async fn a_429_pauses_the_account_for_every_client() {
    let db = TestDb::new().await;
    let kommo = FakeKommo::start().await;
    kommo.answer_next(429, "application/problem+json", r#"{"title":"Too Many Requests","status":429,"detail":"slow down","retry_after":300}"#);

    let error = client(&db, &kommo, 50.0).lead(LeadId(15318175)).await.unwrap_err();
    assert!(matches!(error, KommoError::RateLimited { retry_after, .. } if retry_after == Duration::from_secs(300)), "{error:?}");
    assert!(error.is_retryable());

    // Another process's client does not call Kommo during the pause.
    let other = KommoClient::new(db.pool.clone(), &ACCOUNT.into(), kommo.url.parse().unwrap(), Credentials::LongLived(SecretString::from(TOKEN)), 50.0);
    assert!(matches!(other.lead(LeadId(15318175)).await, Err(KommoError::RateLimited { .. })));
    assert_eq!(kommo.requests().len(), 1);
}

#[tokio::test]
async fn a_403_blocks_the_account_until_an_operator_clears_it() {
    let db = TestDb::new().await;
    let kommo = FakeKommo::start().await;
    kommo.add_lead(lead());
    kommo.answer_next(
        403,
        "text/html",
        "<html>\n<head><title>403 Forbidden</title></head>\n<body><center><h1>403 Forbidden</h1></center><hr><center>nginx</center></body>\n</html>",
    );
    let client = client(&db, &kommo, 50.0);

    let error = client.lead(LeadId(15318175)).await.unwrap_err();
    assert!(error.needs_operator() && !error.is_retryable(), "{error:?}");
    assert!(error.to_string().contains("403 Forbidden"), "{error}");
    let again = client.lead(LeadId(15318175)).await.unwrap_err();
    assert!(matches!(again, KommoError::Blocked { .. }));
    assert_eq!(kommo.requests().len(), 1, "nothing reaches Kommo while blocked");

    sqlx::query("UPDATE api_limits SET blocked_at = NULL, blocked_reason = NULL WHERE provider = 'kommo'").execute(&db.pool).await.unwrap();
    assert!(client.lead(LeadId(15318175)).await.unwrap().is_some());
}

#[tokio::test]
async fn errors_are_classified() {
    let db = TestDb::new().await;
    let kommo = FakeKommo::start().await;
    let client = client(&db, &kommo, 50.0);

    kommo.answer_next(400, "application/problem+json", r#"{"validation-errors":[{"request_id":"0","errors":[{"code":"NotSupportedChoice","path":"custom_fields_values.0.field_id","detail":"no such field"}]}],"title":"Bad Request","status":400,"detail":"Request validation failed"}"#);
    let refused = client.update_lead(LeadId(1), &LeadChanges::default()).await.unwrap_err();
    assert!(matches!(refused, KommoError::Refused { status: 400, .. }) && !refused.is_retryable());
    assert!(refused.to_string().contains("NotSupportedChoice"), "{refused}");

    assert!(refused.to_string().contains("PATCH api/v4/leads"), "the error names the call: {refused}");

    kommo.answer_next(500, "application/problem+json", r#"{"title":"Internal Server Error","status":500,"trace_id":"abc"}"#);
    let failed = client.lead(LeadId(1)).await.unwrap_err();
    assert!(failed.is_retryable());
    assert!(failed.to_string().starts_with("Kommo is unavailable: 500 from GET api/v4/leads"), "{failed}");

    let wrong_token =
        KommoClient::new(db.pool.clone(), &ACCOUNT.into(), kommo.url.parse().unwrap(), Credentials::LongLived(SecretString::from("revoked")), 50.0);
    let unauthorized = wrong_token.lead(LeadId(1)).await.unwrap_err();
    assert!(unauthorized.needs_operator(), "{unauthorized:?}");
    assert!(!unauthorized.to_string().contains("revoked"), "the token never appears in errors");

    kommo.delay(Duration::from_secs(3));
    let slow = client.lead(LeadId(1)).await.unwrap_err();
    assert!(matches!(slow, KommoError::Unavailable(_)) && slow.is_retryable(), "a timeout is retryable: {slow:?}");
    assert!(slow.to_string().contains("GET api/v4/leads: timed out"), "{slow}");
}

#[tokio::test]
async fn two_processes_together_stay_under_the_accounts_rate() {
    let db = TestDb::new().await;
    let kommo = FakeKommo::start().await;
    kommo.add_lead(lead());
    // Two clients with pools of their own: like two worker processes, they share only PostgreSQL.
    let second_db = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&db.url).await.unwrap();
    let per_second = 10.0;
    let a = client(&db, &kommo, per_second);
    let b = KommoClient::with_timeouts(
        second_db,
        &ACCOUNT.into(),
        kommo.url.parse().unwrap(),
        Credentials::LongLived(SecretString::from(TOKEN)),
        per_second,
        Duration::from_secs(5),
    );

    // (Lead reads would gather into one list: the webhooks list is one request a call.)
    let calls = (0..24).map(|i| {
        let client = if i % 2 == 0 { &a } else { &b };
        async move { client.webhooks().await.unwrap() }
    });
    futures_util::future::join_all(calls).await;

    let mut arrivals: Vec<_> = kommo.requests().iter().map(|r| r.at).collect();
    arrivals.sort();
    assert_eq!(arrivals.len(), 24);
    // Slots are 1.05 / rate apart, so request i and request i + 10 are sent 1.05 s apart; their
    // arrival times at the fake (stamped by its handler, on this test's busy runtime, beside the
    // whole suite) jitter by tens of milliseconds, hence the allowance below 1 s.
    for (first, eleventh) in arrivals.iter().zip(arrivals.iter().skip(10)) {
        let gap = eleventh.duration_since(*first);
        assert!(gap >= Duration::from_millis(900), "11 requests within {gap:?}");
    }
}

fn oauth_client(db_pool: sqlx::PgPool, kommo: &FakeKommo) -> KommoClient {
    let credentials = Credentials::Oauth {
        client_id: "integration-uuid".into(),
        client_secret: SecretString::from("client-secret"),
        redirect_uri: "https://kommo-pay.example/oauth".into(),
        initial_refresh_token: Some(SecretString::from("first-refresh-token")),
    };
    KommoClient::new(db_pool, &ACCOUNT.into(), kommo.url.parse().unwrap(), credentials, 50.0)
}

#[tokio::test]
async fn oauth_refreshes_once_across_processes_and_stores_the_rotated_pair_first() {
    let db = TestDb::new().await;
    let kommo = FakeKommo::start().await;
    kommo.add_lead(lead());
    kommo.enable_oauth("integration-uuid", "client-secret", "first-refresh-token", 86400);
    let other_process = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&db.url).await.unwrap();
    let (a, b) = (oauth_client(db.pool.clone(), &kommo), oauth_client(other_process, &kommo));

    let (ra, rb) = tokio::join!(a.lead(LeadId(15318175)), b.lead(LeadId(15318175)));

    assert!(ra.unwrap().is_some() && rb.unwrap().is_some());
    assert_eq!(kommo.oauth().refreshes, 1, "one refresh for both: the first refresh token is single-use");
    let (access, refresh): (String, String) = sqlx::query_as("SELECT access_token, refresh_token FROM kommo_tokens").fetch_one(&db.pool).await.unwrap();
    assert_eq!((access.as_str(), refresh.as_str()), ("oauth-access-1", "oauth-refresh-1"));
    a.lead(LeadId(15318175)).await.unwrap();
    assert_eq!(kommo.oauth().refreshes, 1, "a fresh token is reused");
}

#[tokio::test]
async fn oauth_refreshes_before_expiry_and_after_a_401() {
    let db = TestDb::new().await;
    let kommo = FakeKommo::start().await;
    kommo.add_lead(lead());
    kommo.enable_oauth("integration-uuid", "client-secret", "first-refresh-token", 60);
    let client = oauth_client(db.pool.clone(), &kommo);

    client.lead(LeadId(15318175)).await.unwrap();
    client.lead(LeadId(15318175)).await.unwrap();
    assert_eq!(kommo.oauth().refreshes, 2, "a token with a minute left is refreshed before use");

    kommo.enable_oauth("integration-uuid", "client-secret", "oauth-refresh-2", 86400);
    kommo.revoke_access_token();
    assert!(client.lead(LeadId(15318175)).await.unwrap().is_some(), "a 401 refreshes once and tries again");
    assert_eq!(kommo.oauth().refreshes, 1);
}

#[tokio::test]
async fn a_refused_refresh_token_needs_an_operator() {
    let db = TestDb::new().await;
    let kommo = FakeKommo::start().await;
    kommo.enable_oauth("integration-uuid", "client-secret", "some-other-token", 86400);

    let error = oauth_client(db.pool.clone(), &kommo).lead(LeadId(15318175)).await.unwrap_err();

    assert!(error.needs_operator(), "{error:?}");
    assert!(error.to_string().contains("connect the integration again with `kommo-pay kommo connect`"), "{error}");
    assert!(!error.to_string().contains("first-refresh-token") && !error.to_string().contains("client-secret"));
}

#[tokio::test]
async fn concurrent_writes_to_an_account_share_requests() {
    let db = TestDb::new().await;
    let kommo = FakeKommo::start().await;
    for id in 1..=12 {
        kommo.add_lead(json!({ "id": id, "name": format!("Deal {id}"), "status_id": 1, "pipeline_id": 1 }));
    }
    let client = client(&db, &kommo, 2.0);

    let changes: Vec<_> = (1..=12).map(|id| (id, LeadChanges { status_id: Some(id * 100), ..LeadChanges::default() })).collect();
    let writes = changes.iter().map(|(id, change)| client.update_lead(LeadId(*id), change));
    for result in futures_util::future::join_all(writes).await {
        result.unwrap();
    }

    let patches: Vec<_> = kommo.requests().into_iter().filter(|r| r.method == axum::http::Method::PATCH).collect();
    let items: usize = patches.iter().map(|r| r.body.as_array().unwrap().len()).sum();
    assert_eq!(items, 12);
    assert!(patches.len() <= 3, "12 writes in {} requests", patches.len());
    assert_eq!(kommo.lead(7).unwrap()["status_id"], 700);
}

#[tokio::test]
async fn one_refused_write_fails_alone_not_its_whole_batch() {
    let db = TestDb::new().await;
    let kommo = FakeKommo::start().await;
    let client = client(&db, &kommo, 2.0);
    let [first, blank, third] = ["first", " ", "third"].map(|text| NewTask::call(LeadId(1), text, 1764200000, None));

    let (a, bad, c) = tokio::join!(client.add_task_once(&first, false), client.add_task_once(&blank, false), client.add_task_once(&third, false));

    assert!(a.is_ok() && c.is_ok(), "{a:?} {c:?}");
    assert!(matches!(bad, Err(KommoError::Refused { status: 400, .. })), "{bad:?}");
    let created: Vec<String> = kommo.tasks().iter().map(|t| t["text"].as_str().unwrap().to_owned()).collect();
    assert_eq!(created.len(), 2);
    assert!(created.contains(&"first".to_owned()) && created.contains(&"third".to_owned()));
}

/// The checks before retried notes and tasks are list reads too: 100 leads' checks asked for
/// together are one request for their notes (and one for their tasks), and the notes and tasks
/// not found go out in arrays of 50.
#[tokio::test]
async fn checks_before_retried_notes_and_tasks_read_many_leads_at_once() {
    let db = TestDb::new().await;
    let kommo = FakeKommo::start().await;
    let leads: Vec<i64> = (1..=100).collect();
    for id in &leads {
        kommo.add_lead(json!({ "id": id, "name": format!("Deal {id}"), "pipeline_id": 1, "status_id": 2 }));
    }
    kommo.add_note(json!({ "entity_id": 7, "note_type": "common", "params": { "text": "Paid" } }));
    let client = client(&db, &kommo, 50.0);

    futures_util::future::join_all(leads.iter().map(|id| client.add_lead_note_once(LeadId(*id), "Paid", true))).await.into_iter().for_each(|r| r.unwrap());
    let tasks: Vec<NewTask> = leads.iter().map(|id| NewTask::call(LeadId(*id), "Call the client", 1764200000, None)).collect();
    futures_util::future::join_all(tasks.iter().map(|task| client.add_task_once(task, true))).await.into_iter().for_each(|r| r.unwrap());

    let requests = kommo.requests();
    let count = |method: axum::http::Method, path: &str| requests.iter().filter(|r| r.method == method && r.path.starts_with(path)).count();
    assert_eq!(count(axum::http::Method::GET, "/api/v4/leads/notes?"), 1, "one list for 100 leads' notes");
    assert_eq!(count(axum::http::Method::GET, "/api/v4/tasks?"), 1, "one list for 100 leads' tasks");
    assert_eq!(count(axum::http::Method::POST, "/api/v4/leads/notes"), 2, "99 new notes in arrays of 50");
    assert_eq!(kommo.notes().iter().filter(|n| n["entity_id"] == 7).count(), 1, "the note already there is not added again");
    assert_eq!(kommo.tasks().len(), 100);
}
