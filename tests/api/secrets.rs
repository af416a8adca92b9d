//! Known secret values through a run of the real binary — webhooks good and forged, jobs that
//! succeed and fail at the providers, ops requests with good and bad tokens, all logged at debug
//! level — and not one of them in the logs, the event log, the jobs' errors or any answer.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::fakes::kommo::TOKEN as KOMMO_TOKEN;
use crate::fakes::stripe::SECRET_KEY as STRIPE_KEY;
use crate::helpers::*;

const STAGE_ENTERED: &str = "account%5Bid%5D=32427762&leads%5Bstatus%5D%5B0%5D%5Bid%5D=15318175&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D=67548619&leads%5Bstatus%5D%5B0%5D%5Bpipeline_id%5D=8572511";

#[tokio::test]
async fn no_secret_reaches_the_logs_the_event_log_errors_or_answers() {
    let sections = r#"
        [log]
        format = "json"
        filter = "debug"
        [server]
        listen = "127.0.0.1:0"
        [worker]
        poll_interval_ms = 100
        [ops]
        tokens = [{ name = "alice", token_env = "OPS_TOKEN_ALICE" }]
    "#;
    let setup = ProcessSetup::deal_entered_stage(sections).await;
    let (kommo, stripe, db) = (&setup.kommo, &setup.stripe, &setup.app.db);
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_kommo-pay"))
            .args(["serve", "--config"])
            .arg(&setup.config_path)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&setup.env)
            .stderr(Stdio::piped())
            .spawn()
            .expect("kommo-pay starts"),
    );
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut logs = Vec::new();
    let address = loop {
        let line = lines.next().expect("kommo-pay exited before listening").unwrap();
        let parsed = serde_json::from_str::<serde_json::Value>(&line).ok();
        logs.push(line);
        if let Some(log) = parsed.filter(|log| log["fields"]["message"] == "ingest listening") {
            break log["fields"]["address"].as_str().unwrap().to_owned();
        }
    };
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let client = reqwest::Client::new();
    let mut answers = Vec::new();
    let mut send = async |request: reqwest::RequestBuilder| {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        answers.push(response.text().await.unwrap());
        status
    };

    // The deal's link is issued (the stage event was committed by the setup).
    eventually(Duration::from_secs(30), "the link is issued", || async { db.count("SELECT count(*) FROM jobs WHERE state = 'completed'").await == 1 }).await;
    // Forged and wrong-secret deliveries, a paid checkout, ops calls good and bad.
    let kommo_url = |secret: &str| format!("http://{address}/webhooks/kommo/{ACCOUNT}/{secret}");
    assert_eq!(send(client.post(kommo_url("wrong-secret")).header("content-type", "application/x-www-form-urlencoded").body(STAGE_ENTERED)).await, 401);
    let paid = json!({
        "id": "evt_secrets", "object": "event", "type": "checkout.session.completed", "created": now(), "livemode": false,
        "data": { "object": { "id": "cs_1", "object": "checkout.session", "payment_status": "paid", "payment_link": "plink_fake1",
            "payment_intent": "pi_1", "amount_total": 200000, "currency": "usd", "metadata": { "kommo_lead_id": "15318175" } } }
    })
    .to_string();
    let stripe_url = format!("http://{address}/webhooks/stripe/{ACCOUNT}");
    let signature = stripe_signature(STRIPE_SECRET, now(), &paid);
    assert_eq!(send(client.post(&stripe_url).header("Stripe-Signature", &signature).body(paid.clone())).await, 200);
    assert_eq!(send(client.post(&stripe_url).header("Stripe-Signature", &signature).body(paid.replace("pi_1", "pi_2"))).await, 401);
    assert_eq!(send(client.get(format!("http://{address}/ops/v1/events")).bearer_auth("not-a-token")).await, 401);
    assert_eq!(send(client.get(format!("http://{address}/ops/v1/events")).bearer_auth(OPS_TOKEN_ALICE)).await, 200);

    // The providers refuse the credentials: Kommo's 401, Stripe's message naming the key masked.
    kommo.answer_next(401, "application/problem+json", r#"{"title":"Unauthorized","status":401,"detail":"Token is invalid"}"#);
    stripe.fail_next(401, json!({ "error": { "type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_***123" } }), Some(false));
    let moved = STAGE_ENTERED.replace("pipeline_id%5D=8572511", "pipeline_id%5D=8572511&leads%5Bstatus%5D%5B0%5D%5Blast_modified%5D=2");
    assert_eq!(send(client.post(kommo_url(KOMMO_SECRET)).header("content-type", "application/x-www-form-urlencoded").body(moved)).await, 200);
    eventually(Duration::from_secs(30), "every job has run", || async {
        db.count("SELECT count(*) FROM jobs WHERE state IN ('available', 'running')").await == 0
            && db.count("SELECT count(*) FROM jobs WHERE errors <> '[]'").await > 0
    })
    .await;

    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    child.wait().unwrap();
    logs.extend(rest.join().unwrap());
    let logs = logs.join("\n");
    let stored: String =
        sqlx::query_scalar("SELECT string_agg(dedup_key || payload::text || headers::text, ' ') FROM events").fetch_one(&db.pool).await.unwrap();
    let jobs: String = sqlx::query_scalar("SELECT string_agg(args::text || errors::text, ' ') FROM jobs").fetch_one(&db.pool).await.unwrap();
    assert!(jobs.contains("401"), "the failures were recorded: {jobs}");
    assert!(logs.contains("DEBUG"), "debug lines were logged");

    for (name, secret) in [
        ("the Kommo URL secret", KOMMO_SECRET),
        ("the Kommo token", KOMMO_TOKEN),
        ("the Stripe key", STRIPE_KEY),
        ("the Stripe signing secret", STRIPE_SECRET),
        ("the ops token", OPS_TOKEN_ALICE),
    ] {
        assert!(!logs.contains(secret), "{name} is in the logs");
        assert!(!stored.contains(secret), "{name} is in the event log");
        assert!(!jobs.contains(secret), "{name} is in a job's errors");
        assert!(!answers.iter().any(|a| a.contains(secret)), "{name} is in an answer");
    }
    assert!(!logs.contains(&signature), "a signature header is in the logs");
}
