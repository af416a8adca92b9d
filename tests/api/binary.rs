//! The `kommo-pay` binary itself, as a user runs it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;

fn write_config(text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("kommo-pay-test-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, text).unwrap();
    path
}

fn kommo_pay() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kommo-pay"));
    command.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

#[tokio::test]
async fn serve_accepts_a_signed_webhook_rejects_a_tampered_one_and_stops_on_sigterm() {
    let db = TestDb::new().await;
    let config = write_config(&format!("{}\n[log]\nformat = \"json\"\n", test_config_text("")));
    let mut child =
        Running(kommo_pay().args(["serve", "--config"]).arg(&config).envs(test_env(&db.url)).stderr(Stdio::piped()).spawn().expect("kommo-pay starts"));

    // The server logs the address it bound (port 0 = any free port).
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = loop {
        let line = lines.next().expect("kommo-pay exited before listening").unwrap();
        let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if log["fields"]["message"] == "ingest listening" {
            break log["fields"]["address"].as_str().unwrap().to_owned();
        }
    };
    let logs = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let client = reqwest::Client::new();
    let url = format!("http://{address}/webhooks/stripe/{ACCOUNT}");
    let body = stripe_event("evt_binary", "checkout.session.completed", 5);

    let good = client.post(&url).header("Stripe-Signature", stripe_signature(STRIPE_SECRET, now(), &body)).body(body.clone()).send().await.unwrap();
    let tampered = body.replace("evt_binary", "evt_forged");
    let bad = client.post(&url).header("Stripe-Signature", stripe_signature(STRIPE_SECRET, now(), &body)).body(tampered).send().await.unwrap();

    assert_eq!(good.status(), 200);
    assert_eq!(bad.status(), 401);
    let stored: Vec<String> = sqlx::query_scalar("SELECT dedup_key FROM events").fetch_all(&db.pool).await.unwrap();
    assert_eq!(stored, vec!["evt_binary".to_owned()]);

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "kommo-pay did not stop after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit:?}");
    let logs = logs.join().unwrap().join("\n");
    for secret in [STRIPE_SECRET, KOMMO_SECRET, LS_SECRET] {
        assert!(!logs.contains(secret), "a secret reached the log");
    }
    assert!(logs.contains("shutdown requested"), "{logs}");
    std::fs::remove_file(config).ok();
}

#[test]
fn config_check_lists_every_problem_and_exits_non_zero() {
    let config = write_config(&test_config_text("").replace("acme.kommo.com", "acme kommo"));

    let output = kommo_pay().args(["config", "check", "--config"]).arg(&config).env("DATABASE_URL", "postgres://x@h/db").output().unwrap();

    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for want in [
        "accounts[0].kommo.base_url",
        "accounts[0].kommo.webhook_secret_env: environment variable KOMMO_SECRET is not set",
        "accounts[0].stripe.webhook_secret_envs[0]: environment variable STRIPE_WHSEC is not set",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }
    std::fs::remove_file(config).ok();
}

#[test]
fn config_check_passes_a_valid_file() {
    let config = write_config(&test_config_text(""));
    let output = kommo_pay().args(["config", "check", "--config"]).arg(&config).envs(test_env("postgres://x@h/db")).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("configuration is valid: 2 account(s)"));
    std::fs::remove_file(config).ok();
}

#[test]
fn the_committed_config_schema_is_the_generated_one() {
    let committed: serde_json::Value = serde_json::from_str(include_str!("../../schemas/config.schema.json")).expect("schemas/config.schema.json is JSON");
    assert!(
        committed == kommo_pay_core::config::json_schema(),
        "schemas/config.schema.json is stale: run `cargo run -- config schema > schemas/config.schema.json`"
    );
}

#[test]
fn the_example_config_is_valid_with_its_example_env() {
    let example_env = include_str!("../../deploy/local/example.env");
    let mut env: std::collections::HashMap<String, String> = example_env
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    env.remove("DATABASE_URL");
    let config =
        kommo_pay_core::config::Config::parse(include_str!("../../deploy/local/kommo-pay.toml"), "deploy/local/kommo-pay.toml", &|name| env.get(name).cloned())
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.accounts.len(), 1);
}

// Multi-threaded: the fake Kommo must answer while this thread waits for the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kommo_setup_creates_the_missing_fields_once_and_prints_their_config() {
    let kommo = crate::fakes::kommo::FakeKommo::start().await;
    let db = TestDb::new().await;
    let account = crate::fakes::accounts::AccountToml::new(ACCOUNT, KOMMO_ACCOUNT_ID, &kommo.url).to_string();
    let config = write_config(&account);
    let mut env = test_env(&db.url);
    env.insert("KOMMO_TOKEN".into(), crate::fakes::kommo::TOKEN.into());
    let setup = || kommo_pay().args(["kommo", "setup", "--account", ACCOUNT, "--config"]).arg(&config).envs(&env).output().unwrap();

    let first = setup();
    let second = setup();

    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stderr).contains("created the fields: payment_link, payment_status"));
    assert!(String::from_utf8_lossy(&second.stderr).contains("nothing was created"), "{}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(first.stdout, second.stdout, "the same fields both times");
    let fields = kommo.custom_fields();
    assert_eq!(fields.len(), 7);
    let status = fields.iter().find(|f| f["code"] == "KOMMO_PAY_STATUS").unwrap();
    assert_eq!((status["type"].as_str(), status["is_api_only"].as_bool()), (Some("select"), Some(true)));
    assert_eq!(status["enums"].as_array().unwrap().len(), 7);

    // The printed section completes the account's configuration.
    let printed = String::from_utf8(first.stdout).unwrap();
    let env_map: std::collections::HashMap<String, String> = env.clone();
    let resolved = kommo_pay_core::config::Config::parse(&format!("{account}\n{printed}"), "pasted", &|name| env_map.get(name).cloned())
        .unwrap_or_else(|e| panic!("{e}\n{printed}"));
    let pasted = resolved.accounts.get(ACCOUNT).unwrap().kommo.fields.clone().unwrap();
    assert_eq!(pasted.payment_link, 1246500);
    assert_eq!(pasted.statuses.paid, status["enums"][2]["id"].as_i64().unwrap());
    std::fs::remove_file(config).ok();
}
