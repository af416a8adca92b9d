//! The ops API (`/ops/v1`) and the ops CLI: authentication, the event log searched, dead letters
//! listed, counted, shown, replayed and discarded (also ten thousand at once), the queue, and a
//! deal's payment history.

use std::process::Command;

use serde_json::{Value, json};

use crate::helpers::*;

impl TestApp {
    /// An ops API request; a JSON answer is checked against the OpenAPI document on the way.
    async fn ops(&self, method: reqwest::Method, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let request_method = method.clone();
        let mut request = self.client.request(method, format!("{}{path}", self.address));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let json = response.headers().get("content-type").is_some_and(|t| t == "application/json");
        let text = response.text().await.unwrap();
        if !json {
            return (status, Value::String(text));
        }
        let body: Value = serde_json::from_str(&text).unwrap();
        conforms(method_name(&request_method), path, status, &body);
        (status, body)
    }

    async fn ops_get(&self, path: &str) -> (u16, Value) {
        self.ops(reqwest::Method::GET, path, Some(OPS_TOKEN_ALICE), None).await
    }

    async fn ops_post(&self, path: &str, body: Value) -> (u16, Value) {
        self.ops(reqwest::Method::POST, path, Some(OPS_TOKEN_ALICE), Some(body)).await
    }
}

fn method_name(method: &reqwest::Method) -> String {
    method.as_str().to_lowercase()
}

/// Panics unless `body`, answered `status` to `method path`, is what `schemas/ops-api.openapi.json`
/// says that operation answers.
/// The committed OpenAPI document.
fn document() -> Value {
    serde_json::from_str(include_str!("../../schemas/ops-api.openapi.json")).unwrap()
}

/// The document's path template that `path` (no query) matches, and its operations.
fn path_of<'d>(document: &'d Value, path: &str) -> (&'d String, &'d Value) {
    let segments: Vec<&str> = path.split('/').collect();
    document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(template, _)| {
            let parts: Vec<&str> = template.split('/').collect();
            parts.len() == segments.len() && parts.iter().zip(&segments).all(|(t, s)| t.starts_with('{') || t == s)
        })
        .unwrap_or_else(|| panic!("{path} is not in the OpenAPI document"))
}

fn conforms(method: String, path: &str, status: u16, body: &Value) {
    let document = document();
    let path = path.split('?').next().unwrap();
    let (_, operations) = path_of(&document, path);
    let answer = &operations[&method]["responses"][status.to_string()];
    let schema =
        answer.pointer("/content/application~1json/schema").unwrap_or_else(|| panic!("{method} {path} answering {status} is not in the OpenAPI document"));
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": schema["$ref"],
        "components": document["components"],
    });
    let validator = jsonschema::validator_for(&root).unwrap();
    let problems: Vec<String> = validator.iter_errors(body).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(problems.is_empty(), "{method} {path} answered {status} with a body the OpenAPI document does not allow: {problems:?}\n{body}");
}

/// `n` dead jobs of `kind` for lead `lead`, each with two failed attempts, caused by one Stripe
/// event; returns their ids.
pub(crate) async fn bury(db: &TestDb, n: i64, kind: &str, lead: i64, error: &str) -> Vec<i64> {
    let event = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO events (id, account, source, kind, dedup_key, lead_id, payload) VALUES ($1, $2, 'stripe', 'checkout.session.completed', $3, $4, '{}')",
    )
    .bind(event)
    .bind(ACCOUNT)
    .bind(format!("evt_{event}"))
    .bind(lead)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query_scalar(
        "INSERT INTO jobs (kind, args, account, lead_id, event_id, state, attempt, max_attempts, finished_at, errors, unique_key)
         SELECT $1, jsonb_build_object('event_id', $3::text), $2, $4, $3, 'dead', 2, 2, now(),
                jsonb_build_array(jsonb_build_object('at', now(), 'attempt', 1, 'error', 'first try: ' || $5::text),
                                  jsonb_build_object('at', now(), 'attempt', 2, 'error', $5::text)),
                'unique:' || $3::text || ':' || i
         FROM generate_series(1, $6) AS i RETURNING id",
    )
    .bind(kind)
    .bind(ACCOUNT)
    .bind(event)
    .bind(lead)
    .bind(error)
    .bind(n)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[test]
fn the_committed_openapi_document_is_the_generated_one() {
    let committed = document();
    assert!(
        committed == kommo_pay_core::ops::openapi::document(),
        "schemas/ops-api.openapi.json is stale: run `cargo run -- openapi > schemas/ops-api.openapi.json`"
    );
}

#[tokio::test]
async fn the_ops_api_needs_a_named_token_and_the_webhooks_do_not() {
    let app = spawn_app().await;
    for token in [None, Some("wrong"), Some(&OPS_TOKEN_ALICE[..10]), Some("")] {
        let (status, body) = app.ops(reqwest::Method::GET, "/ops/v1/queue", token, None).await;
        assert_eq!(status, 401, "{token:?}");
        assert_eq!(body["error"], "a valid bearer token is required");
    }
    assert_eq!(app.ops(reqwest::Method::GET, "/ops/v1/queue", Some(OPS_TOKEN_BOB), None).await.0, 200);
    assert_eq!(app.ops_get("/ops/v1/queue").await.0, 200);
    let event = json!({ "id": "evt_no_token", "object": "event", "type": "customer.created", "created": now(), "livemode": false, "data": { "object": {} } });
    assert_eq!(app.post_signed_stripe(&event.to_string()).await.status(), 200, "webhooks authenticate by signature");
}

#[tokio::test]
async fn events_are_searched_by_filters_a_page_at_a_time_and_shown_with_their_jobs() {
    let app = spawn_app().await;
    for i in 0..3 {
        let event =
            json!({ "id": format!("evt_{i}"), "object": "event", "type": "customer.created", "created": now(), "livemode": false, "data": { "object": {} } });
        app.post_signed_stripe(&event.to_string()).await;
    }
    let body =
        "account%5Bid%5D=32427762&leads%5Bstatus%5D%5B0%5D%5Bid%5D=77&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D=1&leads%5Bstatus%5D%5B0%5D%5Bpipeline_id%5D=2";
    app.post_kommo(ACCOUNT, KOMMO_SECRET, body).await;

    let (status, first) = app.ops_get("/ops/v1/events?source=stripe&limit=2").await;
    assert_eq!(status, 200, "{first}");
    let ids = |page: &Value| page["items"].as_array().unwrap().iter().map(|e| e["dedup_key"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert_eq!(ids(&first), ["evt_2", "evt_1"], "newest first");
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = app.ops_get(&format!("/ops/v1/events?source=stripe&limit=2&cursor={cursor}")).await;
    assert_eq!(ids(&second), ["evt_0"]);
    assert!(second.get("next_cursor").is_none(), "the last page");

    let (_, kommo) = app.ops_get(&format!("/ops/v1/events?account={ACCOUNT}&lead=77")).await;
    assert_eq!(kommo["items"].as_array().unwrap().len(), 1);
    let id = kommo["items"][0]["id"].as_str().unwrap();
    let (status, shown) = app.ops_get(&format!("/ops/v1/events/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(shown["payload"]["item"]["id"], "77");
    assert_eq!(shown["jobs"], json!([]), "a stage that is no trigger implies no job");
    let from = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (_, none) = app.ops_get(&format!("/ops/v1/events?from={}", urlencode(&from))).await;
    assert_eq!(none["items"], json!([]));

    for (query, problem) in [
        ("source=paypal", "source \"paypal\" is not one of kommo, stripe, lemonsqueezy, internal"),
        ("from=yesterday", "from \"yesterday\" is not an RFC 3339 time"),
        ("limit=0", "limit 0 is out of range: 1 to 1000"),
        ("cursor=abc", "cursor \"abc\" is not one this API gave out"),
        ("lead=seven", "lead"),
        ("colour=red", "unknown field `colour`"),
    ] {
        let (status, body) = app.ops_get(&format!("/ops/v1/events?{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert!(body["error"].as_str().unwrap().contains(problem), "{query}: {body}");
    }
    assert_eq!(app.ops_get(&format!("/ops/v1/events/{}", uuid::Uuid::now_v7())).await.0, 404);
    assert_eq!(app.ops_get("/ops/v1/events/not-a-uuid").await.0, 400);
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test]
async fn dead_letters_are_listed_counted_shown_replayed_and_discarded_with_a_record_each() {
    let app = spawn_app().await;
    let db = &app.db;
    let timeouts = bury(db, 3, "stripe.payment", 15318175, "Kommo is unavailable: 503").await;
    let refused = bury(db, 2, "payment_link.issue", 42, "Stripe refused the link").await;

    let (_, counts) = app.ops_get("/ops/v1/dead-letters/counts").await;
    assert_eq!(
        counts["counts"],
        json!([
            { "kind": "stripe.payment", "error": "Kommo is unavailable: 503", "count": 3 },
            { "kind": "payment_link.issue", "error": "Stripe refused the link", "count": 2 },
        ])
    );
    let (_, page) = app.ops_get("/ops/v1/dead-letters?error=REFUSED").await;
    let listed: Vec<i64> = page["items"].as_array().unwrap().iter().map(|j| j["id"].as_i64().unwrap()).collect();
    assert_eq!(listed, refused, "matched by part of the error, ignoring case");

    let (status, shown) = app.ops_get(&format!("/ops/v1/jobs/{}", timeouts[0])).await;
    assert_eq!(status, 200);
    assert_eq!(shown["state"], "dead");
    assert_eq!(shown["errors"].as_array().unwrap().len(), 2, "every attempt's error");
    assert_eq!(shown["event"]["kind"], "checkout.session.completed");
    assert_eq!(shown["lead_id"], 15318175);

    // A dry run counts and changes nothing.
    let (_, dry) =
        app.ops_post("/ops/v1/dead-letters/replay", json!({ "filter": { "kind": "stripe.payment" }, "reason": "Kommo is back", "dry_run": true })).await;
    assert_eq!(dry, json!({ "matched": 3, "done": 0, "dry_run": true }));
    assert_eq!(db.count("SELECT count(*) FROM jobs WHERE state = 'dead'").await, 5);

    let (status, replayed) = app.ops_post("/ops/v1/dead-letters/replay", json!({ "ids": [timeouts[0], timeouts[1]], "reason": "Kommo is back" })).await;
    assert_eq!((status, &replayed), (200, &json!({ "matched": 2, "done": 2, "dry_run": false })));
    let (_, old) = app.ops_get(&format!("/ops/v1/jobs/{}", timeouts[0])).await;
    assert_eq!(old["state"], "replayed");
    let new_id = old["replayed_as"].as_i64().unwrap();
    let (_, new) = app.ops_get(&format!("/ops/v1/jobs/{new_id}")).await;
    assert_eq!((new["state"].as_str(), new["replay_of"].as_i64(), new["attempt"].as_i64()), (Some("available"), Some(timeouts[0]), Some(0)));
    assert_eq!(new["args"], old["args"]);
    let (operator, reason): (String, String) =
        sqlx::query_as("SELECT payload ->> 'operator', payload ->> 'reason' FROM events WHERE kind = 'job.replayed' AND caused_by_job = $1")
            .bind(timeouts[0])
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((operator.as_str(), reason.as_str()), ("alice", "Kommo is back"));
    let unique_key_moved: String = sqlx::query_scalar("SELECT unique_key FROM jobs WHERE id = $1").bind(new_id).fetch_one(&db.pool).await.unwrap();
    assert!(unique_key_moved.starts_with("unique:"), "the replay took over the dead job's unique key");

    // Asking again for jobs that are no longer dead letters changes nothing.
    let (status, body) = app.ops_post("/ops/v1/dead-letters/replay", json!({ "ids": [timeouts[0], timeouts[2]], "reason": "again" })).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains(&format!("not dead letters (or no such jobs): {}", timeouts[0])), "{body}");
    assert_eq!(db.count("SELECT count(*) FROM jobs WHERE state = 'dead'").await, 3);

    for (body, problem) in [
        (json!({ "filter": {}, "reason": "  " }), "a reason is required"),
        (json!({ "reason": "why" }), "either \"ids\" or \"filter\""),
        (json!({ "ids": [], "reason": "why" }), "no job ids given"),
        (json!({ "ids": [1], "filter": {}, "reason": "why" }), "either \"ids\" or \"filter\""),
        (json!({ "filter": { "colour": "red" }, "reason": "why" }), "unknown field `colour`"),
    ] {
        let (status, answer) = app.ops_post("/ops/v1/dead-letters/discard", body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert!(answer["error"].as_str().unwrap().contains(problem), "{body}: {answer}");
    }

    let (_, discarded) = app.ops_post("/ops/v1/dead-letters/discard", json!({ "filter": { "lead": 42 }, "reason": "the deal was lost" })).await;
    assert_eq!(discarded["done"], 2);
    assert_eq!(db.count("SELECT count(*) FROM events WHERE kind = 'job.discarded' AND payload ->> 'reason' = 'the deal was lost'").await, 2);
    let (_, stats) = app.ops_get("/ops/v1/queue").await;
    let state = |name: &str| stats["by_state"].as_array().unwrap().iter().find(|c| c["state"] == name).map(|c| c["count"].as_i64().unwrap());
    assert_eq!((state("dead"), state("replayed"), state("discarded"), state("available")), (Some(1), Some(2), Some(2), Some(2)));
    assert!(stats["oldest_runnable_age_secs"].as_f64().unwrap() >= 0.0);
}

/// `kommo-pay ARGS…` against the test database, with the test configuration.
fn cli(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    let path = std::env::temp_dir().join(format!("kommo-pay-ops-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, test_config_text("")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kommo-pay"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KOMMO_PAY_OPERATOR", "carol")
        .envs(test_env(&db.url))
        .output()
        .expect("kommo-pay runs");
    std::fs::remove_file(&path).ok();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

#[tokio::test]
async fn the_cli_does_the_same_with_tables_json_and_exit_codes_scripts_can_trust() {
    let db = TestDb::new().await;
    let dead = bury(&db, 2, "stripe.payment", 15318175, "Kommo is unavailable: 503").await;

    let (code, out, _) = cli(&db, &["dead", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("stripe.payment") && out.contains("Kommo is unavailable: 503") && out.contains(&dead[1].to_string()), "{out}");
    let (code, out, _) = cli(&db, &["dead", "list", "--json", "--limit", "1"]);
    assert_eq!(code, 0);
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((page["items"][0]["id"].as_i64(), page["next_cursor"].as_str()), (Some(dead[0]), Some(dead[0].to_string().as_str())));
    let (_, out, _) = cli(&db, &["dead", "counts", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["counts"][0]["count"], 2);
    let (code, out, _) = cli(&db, &["dead", "show", &dead[0].to_string()]);
    assert_eq!(code, 0);
    assert!(out.contains("first try: Kommo is unavailable") && out.contains("checkout.session.completed"), "{out}");
    let (_, out, _) = cli(&db, &["events", "list", "--json", "--source", "stripe"]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["items"].as_array().unwrap().len(), 1);
    let event: String = sqlx::query_scalar("SELECT id::text FROM events").fetch_one(&db.pool).await.unwrap();
    let (code, out, _) = cli(&db, &["events", "show", &event]);
    assert_eq!(code, 0);
    assert!(out.contains("checkout.session.completed") && out.contains("payload:") && out.contains("stripe.payment"), "{out}");
    let (code, out, _) = cli(&db, &["events", "replay", &event, "--reason", "after the fix", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["jobs"].as_array().unwrap().len(), 1);
    let (code, out, _) = cli(&db, &["history", "--account", ACCOUNT, "--lead", "15318175", "--format", "csv"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("seq,at,source,kind,what") && out.contains("event.replayed") && out.contains("after the fix"), "{out}");
    let (code, out, _) = cli(&db, &["projections", "rebuild"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("projections rebuilt from the log"), "{out}");
    let (_, out, _) = cli(&db, &["queue"]);
    assert!(out.contains("dead") && out.contains("oldest runnable job"), "{out}");

    let (code, out, _) = cli(&db, &["dead", "replay", "--all", "--reason", "Kommo is back", "--dry-run"]);
    assert_eq!((code, out.trim()), (0, "would replay 2 dead job(s); nothing was changed"));
    let (code, out, _) = cli(&db, &["dead", "replay", &dead[0].to_string(), "--reason", "Kommo is back"]);
    assert_eq!((code, out.trim()), (0, "replayed 1 dead job(s) as carol"));
    let who: String = sqlx::query_scalar("SELECT payload ->> 'operator' FROM events WHERE kind = 'job.replayed'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(who, "carol", "the CLI's operator is in the log");

    // Bad arguments exit 2 and change nothing; what does not exist exits 3.
    let replayed = dead[0].to_string();
    for args in [
        vec!["dead", "replay", "--reason", "no selection"],
        vec!["dead", "replay", "1", "--all", "--reason", "two selections"],
        vec!["dead", "discard", &replayed, "--reason", "not dead any more"],
        vec!["events", "list", "--source", "paypal"],
        vec!["history", "--account", ACCOUNT, "--lead", "1", "--format", "xml"],
    ] {
        let (code, _, err) = cli(&db, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
    }
    assert_eq!(cli(&db, &["dead", "show", "999999"]).0, 3);
    assert_eq!(cli(&db, &["history", "--account", ACCOUNT, "--lead", "404"]).0, 3);
    assert_eq!(db.count("SELECT count(*) FROM jobs WHERE state = 'dead'").await, 1);
}

#[test]
fn the_openapi_command_prints_the_document() {
    let output = Command::new(env!("CARGO_BIN_EXE_kommo-pay")).arg("openapi").output().unwrap();
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["openapi"], "3.1.0");
}

#[tokio::test]
async fn ten_thousand_dead_letters_page_quickly_and_replay_in_bulk_with_one_record_each() {
    let app = spawn_app().await;
    let db = &app.db;
    bury(db, 10_000, "stripe.payment", 15318175, "Kommo is unavailable: 503").await;

    let mut seen = 0;
    let mut cursor = String::new();
    loop {
        let (status, page) = app.ops_get(&format!("/ops/v1/dead-letters?limit=1000{cursor}")).await;
        assert_eq!(status, 200);
        seen += page["items"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen, 10_000, "every dead letter, a page at a time");

    let (code, out, err) = cli(db, &["dead", "replay", "--kind", "stripe.payment", "--reason", "Kommo is back"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "replayed 10000 dead job(s) as carol");
    let progress: Vec<&str> = err.lines().filter(|l| l.starts_with("replayed ")).collect();
    assert_eq!(progress.len(), 20, "a line per batch of 500: {err}");
    assert_eq!((progress[0], progress[19]), ("replayed 500/10000", "replayed 10000/10000"));
    assert_eq!(db.count("SELECT count(*) FROM jobs WHERE state = 'dead'").await, 0);
    assert_eq!(db.count("SELECT count(*) FROM jobs WHERE replay_of IS NOT NULL AND state = 'available'").await, 10_000);
    assert_eq!(db.count("SELECT count(DISTINCT caused_by_job) FROM events WHERE kind = 'job.replayed'").await, 10_000);
    assert_eq!(db.count("SELECT count(*) FROM events WHERE kind = 'job.replayed'").await, 10_000, "one record per job");
}

#[tokio::test]
async fn a_deals_payment_history_is_read_from_the_log_as_json_csv_and_a_table() {
    use crate::stripe_flow::*;
    let f = flow().await;
    f.deal_enters_stage().await;
    f.drain().await;
    f.stripe_sends(checkout_completed("evt_paid", "plink_fake1", "pi_test_h", 200000)).await;
    f.stripe_sends(charge_refunded("evt_refund", "pi_test_h", 200000, 50000)).await;
    f.drain_with_retries().await;

    let (status, history) = f.app.ops_get(&format!("/ops/v1/deals/{ACCOUNT}/{LEAD}/history")).await;
    assert_eq!(status, 200, "{history}");
    let entries = history["entries"].as_array().unwrap();
    let row = |kind: &str| entries.iter().find(|e| e["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in {entries:?}"));
    assert_eq!(entries[0]["kind"], "leads.status", "oldest first");
    assert!(row("payment_link.issued")["what"].as_str().unwrap().contains("https://buy.stripe.com/test_fake1"));
    assert_eq!(row("payment_link.issued")["amount"], "2,000.00 USD");
    assert_eq!(
        (row("checkout.session.completed")["amount_minor"].as_i64(), row("checkout.session.completed")["status"].as_str()),
        (Some(200000), Some("paid"))
    );
    assert_eq!(row("payment.received")["currency"], "USD");
    assert_eq!((row("charge.refunded")["amount"].as_str(), row("charge.refunded")["status"].as_str()), (Some("500.00 USD"), Some("refunded")));
    assert!(row("refund.applied")["what"].as_str().unwrap().contains("500.00 USD of 2,000.00 USD"));
    let seqs: Vec<i64> = entries.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in the log's order");

    let response =
        f.app.client.get(format!("{}/ops/v1/deals/{ACCOUNT}/{LEAD}/history?format=csv", f.app.address)).bearer_auth(OPS_TOKEN_ALICE).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = response.text().await.unwrap();
    assert!(csv.starts_with("seq,at,source,kind,what,amount_minor,currency,amount,status,event_id\r\n"), "{csv}");
    assert!(csv.contains(",200000,USD,\"2,000.00 USD\",paid,"), "amounts with commas are quoted: {csv}");
    assert_eq!(csv.lines().count(), entries.len() + 1);
    assert_eq!(f.app.ops_get(&format!("/ops/v1/deals/{ACCOUNT}/{LEAD}/history?format=xml")).await.0, 400);
    assert_eq!(f.app.ops_get(&format!("/ops/v1/deals/{ACCOUNT}/1/history")).await.0, 404);
}

#[tokio::test]
async fn replaying_an_event_derives_its_jobs_again_linked_to_it() {
    use crate::stripe_flow::*;
    let f = flow().await;
    f.deal_enters_stage().await;
    f.drain().await;
    let (_, page) = f.app.ops_get("/ops/v1/events?kind=leads.status").await;
    let stage_event = page["items"][0]["id"].as_str().unwrap().to_owned();

    let (status, replay) = f.app.ops_post(&format!("/ops/v1/events/{stage_event}/replay"), json!({ "reason": "after the amount fix" })).await;
    assert_eq!(status, 200, "{replay}");
    let (_, shown) = f.app.ops_get(&format!("/ops/v1/events/{stage_event}")).await;
    let jobs = shown["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "the original job and the replayed one");
    assert_eq!((jobs[1]["kind"].as_str(), jobs[1]["state"].as_str()), (Some("payment_link.issue"), Some("available")));
    assert_eq!(replay["jobs"], json!([jobs[1]["id"]]));
    let (_, record) = f.app.ops_get(&format!("/ops/v1/events/{}", replay["record"].as_str().unwrap())).await;
    assert_eq!((record["kind"].as_str(), record["caused_by_event"].as_str()), (Some("event.replayed"), Some(stage_event.as_str())));
    assert_eq!(record["payload"]["operator"], "alice");
    f.drain().await;
    assert_eq!(f.link_creates().len(), 1, "the replayed job reuses the deal's link");

    let (_, facts) = f.app.ops_get("/ops/v1/events?kind=payment_link.issued").await;
    let internal = facts["items"][0]["id"].as_str().unwrap();
    let (status, body) = f.app.ops_post(&format!("/ops/v1/events/{internal}/replay"), json!({ "reason": "why not" })).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("internal record"), "{body}");
}

/// The projections as JSON, leases left out (they are not projections).
async fn projections(db: &TestDb) -> Value {
    sqlx::query_scalar(
        "SELECT jsonb_build_object(
             'payment_links', (SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY account, provider, link_id), '[]') FROM payment_links t),
             'payments', (SELECT coalesce(jsonb_agg(to_jsonb(t) - 'applying_job' - 'applying_since' ORDER BY account, provider, payment_id), '[]') FROM payments t),
             'subscriptions', (SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY account, provider, subscription_id), '[]') FROM subscriptions t),
             'dunning', (SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY account, provider, subscription_id), '[]') FROM dunning t),
             'self_serve', (SELECT coalesce(jsonb_agg(jsonb_build_object('order', order_id, 'lead', lead_id) ORDER BY order_id), '[]') FROM self_serve_orders))",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn projections_rebuilt_from_the_log_equal_the_live_ones_after_a_long_mixed_scenario() {
    use crate::stripe_flow::*;
    let f = flow().await;
    // Stripe: a link, the same amount again, a new amount (the first link replaced), the payment
    // announced three times, a partial then a full refund.
    f.deal_enters_stage().await;
    f.drain().await;
    f.deal_enters_stage().await;
    let mut lead = f.kommo.lead(LEAD).unwrap();
    lead["price"] = json!(2500);
    f.kommo.add_lead(lead);
    f.deal_enters_stage().await;
    f.drain().await;
    for event in [
        checkout_completed("evt_cs", "plink_fake2", "pi_mixed", 250000),
        payment_intent_succeeded("evt_pi", "pi_mixed", 250000),
        charge_refunded("evt_r1", "pi_mixed", 250000, 50000),
        charge_refunded("evt_r2", "pi_mixed", 250000, 250000),
    ] {
        f.stripe_sends(event).await;
    }
    f.drain_with_retries().await;
    // Stripe subscription invoices: paid, failed, overdue, paid at last; another failure open.
    for event in [invoice("evt_i1", "invoice.paid", "in_1", 4990), invoice("evt_i2", "invoice.payment_failed", "in_2", 0)] {
        f.stripe_sends(event).await;
    }
    f.drain_with_retries().await;
    let overdue = f.overdue();
    overdue.run_once(chrono::Utc::now() + chrono::Duration::days(30)).await.unwrap();
    f.drain_with_retries().await;
    f.stripe_sends(invoice("evt_i2_paid", "invoice.paid", "in_2", 4990)).await;
    f.stripe_sends(invoice("evt_i3", "invoice.payment_failed", "in_3", 0)).await;
    f.drain_with_retries().await;
    // Lemon Squeezy: a checkout, its subscription, a renewal, a failure, snapshots out of order.
    f.deal_enters(LS_STAGE).await;
    f.drain().await;
    for body in [
        ls_subscription("subscription_created", "active", "2026-11-26T12:00:00.000000Z", true),
        ls_invoice("subscription_payment_success", "802", "renewal"),
        ls_subscription("subscription_updated", "past_due", "2026-12-27T12:00:00.000000Z", true),
        ls_subscription("subscription_updated", "active", "2026-12-01T12:00:00.000000Z", true),
        ls_invoice("subscription_payment_failed", "803", "renewal"),
    ] {
        f.lemonsqueezy_sends(&body).await;
    }
    f.drain_with_retries().await;
    // Self-serve buyers.
    for order in [2001, 2002] {
        f.lemonsqueezy_sends(&self_serve_order(order, 67890)).await;
    }
    f.drain_with_retries().await;

    let live = projections(&f.app.db).await;
    for table in ["payment_links", "payments", "subscriptions", "dunning", "self_serve"] {
        assert!(!live[table].as_array().unwrap().is_empty(), "the scenario leaves rows in {table}: {live}");
    }
    let rebuilt = kommo_pay_core::projections::rebuild(&f.app.db.pool).await.unwrap();
    assert!(rebuilt.changes > 20, "{rebuilt:?}");
    let again = projections(&f.app.db).await;
    assert!(again == live, "rebuilt:\n{again:#}\nlive:\n{live:#}");
    kommo_pay_core::projections::rebuild(&f.app.db.pool).await.unwrap();
    assert!(projections(&f.app.db).await == live, "a rebuild of a rebuild is the same");

    // Never while jobs run.
    sqlx::query("INSERT INTO jobs (kind, account, max_attempts, state) VALUES ('k', $1, 1, 'running')").bind(ACCOUNT).execute(&f.app.db.pool).await.unwrap();
    let refused = kommo_pay_core::projections::rebuild(&f.app.db.pool).await.unwrap_err();
    assert!(refused.to_string().contains("1 job(s) are running: stop the workers first"), "{refused}");
}

#[tokio::test]
async fn a_kommo_block_is_lifted_by_an_operator_with_a_reason_in_the_log() {
    let app = spawn_app().await;
    let block = "INSERT INTO api_limits (provider, account, next_slot, blocked_at, blocked_reason) VALUES ('kommo', 'acme', now(), now(), '403 from api/v4/leads: blocked')";
    sqlx::query(block).execute(&app.db.pool).await.unwrap();

    let (status, body) = app.ops_post(&format!("/ops/v1/accounts/{ACCOUNT}/unblock"), json!({ "reason": "the integration's IP was whitelisted" })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reason"], "403 from api/v4/leads: blocked");
    assert_eq!(app.db.count("SELECT count(*) FROM api_limits WHERE blocked_at IS NOT NULL").await, 0);
    let (operator, reason): (String, String) =
        sqlx::query_as("SELECT payload ->> 'operator', payload ->> 'reason' FROM events WHERE kind = 'provider.unblocked'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!((operator.as_str(), reason.as_str()), ("alice", "the integration's IP was whitelisted"));
    assert_eq!(app.ops_post(&format!("/ops/v1/accounts/{ACCOUNT}/unblock"), json!({ "reason": "again" })).await.0, 404, "nothing to lift");
    assert_eq!(app.ops_post(&format!("/ops/v1/accounts/{ACCOUNT}/unblock"), json!({ "reason": "" })).await.0, 400);

    sqlx::query("UPDATE api_limits SET blocked_at = now(), blocked_reason = 'blocked again'").execute(&app.db.pool).await.unwrap();
    let (code, out, err) = cli(&app.db, &["kommo", "unblock", "--account", ACCOUNT, "--reason", "fixed"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("Kommo calls for acme go out again"), "{out}");
    assert_eq!(cli(&app.db, &["kommo", "unblock", "--account", ACCOUNT, "--reason", "fixed"]).0, 3);
}

/// Whether the OpenAPI document allows the request: its path and query parameters against their
/// schemas (formats asserted), and its body against the operation's request body.
fn document_allows(method: &str, path_and_query: &str, body: Option<&Value>) -> bool {
    let document = document();
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let segments: Vec<&str> = path.split('/').collect();
    let (template, operations) = path_of(&document, path);
    let operation = &operations[method];
    let valid = |schema: &Value, instance: &Value| {
        let root = json!({ "$schema": "https://json-schema.org/draft/2020-12/schema", "allOf": [schema], "components": document["components"] });
        jsonschema::options().should_validate_formats(true).build(&root).unwrap().is_valid(instance)
    };
    // A parameter's text as the instance its schema describes.
    let typed = |schema: &Value, text: &str| match schema["type"].as_str() {
        Some("integer") => text.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(text.to_owned())),
        _ => Value::String(text.to_owned()),
    };
    let parameter = |name: &str, place: &str| {
        operation["parameters"].as_array().into_iter().flatten().find(|p| p["name"] == name && p["in"] == place).map(|p| p["schema"].clone())
    };
    let path_ok = template.split('/').zip(&segments).all(|(t, s)| match t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        Some(name) => parameter(name, "path").is_some_and(|schema| valid(&schema, &typed(&schema, s))),
        None => true,
    });
    let query_ok =
        form_urlencoded::parse(query.as_bytes()).all(|(name, value)| parameter(&name, "query").is_some_and(|schema| valid(&schema, &typed(&schema, &value))));
    let body_ok = match (body, operation.pointer("/requestBody/content/application~1json/schema")) {
        (Some(body), Some(schema)) => valid(schema, body),
        (None, None) => true,
        _ => false,
    };
    path_ok && query_ok && body_ok
}

/// Every operation, sent what its handler refuses: an id out of range, a blank reason, a limit
/// or cursor outside what the API gives out, neither or both of `ids` and `filter`. Each answer
/// is a JSON `{"error"}` the document lists for the operation, and the document itself already
/// refuses the request (it states the handler's rules), while the good requests beside them pass.
#[tokio::test]
async fn every_operation_refuses_bad_input_with_a_documented_json_error_and_the_document_says_so() {
    let app = spawn_app().await;
    let event = uuid::Uuid::now_v7();
    let huge = "99999999999999999999";
    let post = |body: Value| Some(body);
    let cases: Vec<(&str, String, Option<Value>)> = vec![
        ("get", format!("/ops/v1/jobs/{huge}"), None),
        ("get", "/ops/v1/jobs/not-a-number".into(), None),
        ("get", format!("/ops/v1/deals/{ACCOUNT}/{huge}/history"), None),
        ("get", format!("/ops/v1/deals/{ACCOUNT}/x/history"), None),
        ("get", format!("/ops/v1/deals/{ACCOUNT}/1/history?format=xml"), None),
        ("get", "/ops/v1/events/not-a-uuid".into(), None),
        ("get", "/ops/v1/events?limit=0".into(), None),
        ("get", "/ops/v1/events?limit=1001".into(), None),
        ("get", format!("/ops/v1/events?lead={huge}"), None),
        ("get", "/ops/v1/events?cursor=".into(), None),
        ("get", "/ops/v1/events?cursor=-3".into(), None),
        ("get", "/ops/v1/events?source=paypal".into(), None),
        ("get", "/ops/v1/events?from=yesterday".into(), None),
        ("get", "/ops/v1/dead-letters?limit=0".into(), None),
        ("get", "/ops/v1/dead-letters?cursor=".into(), None),
        ("get", "/ops/v1/dead-letters/counts?limit=5000".into(), None),
        ("post", format!("/ops/v1/events/{event}/replay"), post(json!({ "reason": "" }))),
        ("post", format!("/ops/v1/events/{event}/replay"), post(json!({ "reason": "   " }))),
        ("post", "/ops/v1/events/not-a-uuid/replay".into(), post(json!({ "reason": "why" }))),
        ("post", "/ops/v1/dead-letters/replay".into(), post(json!({ "filter": {}, "reason": "" }))),
        ("post", "/ops/v1/dead-letters/replay".into(), post(json!({ "ids": null, "filter": null, "reason": "why" }))),
        ("post", "/ops/v1/dead-letters/replay".into(), post(json!({ "ids": [1], "filter": {}, "reason": "why" }))),
        ("post", "/ops/v1/dead-letters/discard".into(), post(json!({ "reason": "why" }))),
        ("post", "/ops/v1/dead-letters/discard".into(), post(json!({ "ids": [1], "reason": " " }))),
        ("post", format!("/ops/v1/accounts/{ACCOUNT}/unblock"), post(json!({ "reason": "" }))),
        ("post", format!("/ops/v1/accounts/{ACCOUNT}/unblock"), post(json!({ "provider": "paypal", "reason": "why" }))),
    ];
    for (method, path, body) in &cases {
        let request = app.client.request(method.to_uppercase().parse().unwrap(), format!("{}{path}", app.address)).bearer_auth(OPS_TOKEN_ALICE);
        let request = match body {
            Some(body) => request.json(body),
            None => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response.headers().get("content-type").map(|t| t.to_str().unwrap().to_owned());
        let text = response.text().await.unwrap();
        assert!(matches!(status, 400 | 404), "{method} {path} {body:?}: {status} {text}");
        assert_eq!(content_type.as_deref(), Some("application/json"), "{method} {path}: {status} {text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{method} {path}: {answer}");
        conforms(method.to_string(), path, status, &answer);
        assert!(!document_allows(method, path, body.as_ref()), "the document allows {method} {path} {body:?}, which the handler refuses ({status} {text})");
    }

    // The document is no blanket refusal: what the handlers take, it allows.
    for (method, path, body) in [
        ("get", "/ops/v1/jobs/12".to_owned(), None),
        ("get", format!("/ops/v1/deals/{ACCOUNT}/15318175/history?format=csv"), None),
        ("get", "/ops/v1/events?limit=1000&cursor=17&source=stripe&from=2026-11-26T10:00:00Z".into(), None),
        ("post", "/ops/v1/dead-letters/replay".into(), Some(json!({ "filter": {}, "reason": "why", "dry_run": true }))),
        ("post", "/ops/v1/dead-letters/discard".into(), Some(json!({ "ids": [1, 2], "filter": null, "reason": "why" }))),
        ("post", format!("/ops/v1/accounts/{ACCOUNT}/unblock"), Some(json!({ "provider": "lemonsqueezy", "reason": "fixed" }))),
    ] {
        assert!(document_allows(method, &path, body.as_ref()), "the document refuses {method} {path} {body:?}");
    }
}
