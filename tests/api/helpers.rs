//! Test harness: a fresh PostgreSQL database per test, and the real ingest application on port 0.

use std::collections::HashMap;

use kommo_pay_core::config::Config;
use kommo_pay_core::db::MIGRATOR;
use kommo_pay_ingest::Application;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};

pub const ACCOUNT: &str = "acme";
pub const KOMMO_ACCOUNT_ID: i64 = 32427762;
/// The ops API tokens of the test configuration's operators.
pub const OPS_TOKEN_ALICE: &str = "alice-ops-token-0123456789abcdef0123";
pub const OPS_TOKEN_BOB: &str = "bob-ops-token-0123456789abcdef012345";
pub const KOMMO_SECRET: &str = "test-kommo-url-secret-0123456789abcdef";
pub const STRIPE_SECRET: &str = "whsec_test_current";
pub const STRIPE_OLD_SECRET: &str = "whsec_test_previous";
pub const LS_SECRET: &str = "ls-test-signing-secret";
/// An account with Kommo only: its Stripe and Lemon Squeezy routes do not exist.
pub const KOMMO_ONLY_ACCOUNT: &str = "kommo-only";

const NO_DATABASE: &str = "\n\nThe tests need a PostgreSQL server and DATABASE_URL pointing at it.\n\
    Run the suite with `deploy/local/test.sh`, which starts the project's private cluster,\n\
    or start it yourself: `eval \"export $(deploy/local/postgres.sh start)\"`.\n\n";

/// A database of its own for one test, migrated, dropped when the value is dropped.
pub struct TestDb {
    pub pool: PgPool,
    pub name: String,
    pub url: String,
    server_url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let db = Self::empty().await;
        MIGRATOR.run(&db.pool).await.expect("migrations apply to a fresh database");
        db
    }

    /// A fresh database without the schema.
    pub async fn empty() -> TestDb {
        let server_url = std::env::var("DATABASE_URL").unwrap_or_else(|_| panic!("DATABASE_URL is not set.{NO_DATABASE}"));
        let mut admin = PgConnection::connect(&server_url).await.unwrap_or_else(|e| panic!("cannot connect to DATABASE_URL ({e}).{NO_DATABASE}"));
        let name = format!("kp_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::raw_sql(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#))).execute(&mut admin).await.expect("create test database");
        let url = with_database(&server_url, &name);
        let pool = PgPoolOptions::new().max_connections(5).connect(&url).await.expect("connect to test database");
        TestDb { pool, name, url, server_url }
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// A connection to the server's maintenance database, for tests that act on this database
    /// from outside (e.g. taking it away).
    pub async fn admin(&self) -> PgConnection {
        PgConnection::connect(&self.server_url).await.expect("admin connection")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (server_url, name) = (self.server_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime; a thread of its own may block on a new one.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
                let mut admin = PgConnection::connect(&server_url).await?;
                sqlx::raw_sql(AssertSqlSafe(format!(r#"ALTER DATABASE "{name}" ALLOW_CONNECTIONS true"#))).execute(&mut admin).await?;
                sqlx::raw_sql(AssertSqlSafe(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))).execute(&mut admin).await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(_))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

fn with_database(server_url: &str, name: &str) -> String {
    let mut url = url::Url::parse(server_url).expect("DATABASE_URL is a URL");
    url.set_path(name);
    url.to_string()
}

/// The configuration file tests run with; `server_extra` adds `[server]` keys (TOML).
pub fn test_config_text(server_extra: &str) -> String {
    use crate::fakes::accounts::AccountToml;
    let account = AccountToml::new(ACCOUNT, KOMMO_ACCOUNT_ID, "https://acme.kommo.com")
        .stripe_key(r#"secret_key_env = "STRIPE_KEY""#)
        .stripe_key(r#"webhook_secret_envs = ["STRIPE_WHSEC", "STRIPE_WHSEC_OLD"]"#)
        .set("[accounts.lemonsqueezy]", r#"api_key_env = "LS_KEY""#)
        .set("[accounts.lemonsqueezy]", r#"webhook_secret_envs = ["LS_WHSEC"]"#);
    let kommo_only = AccountToml::new(KOMMO_ONLY_ACCOUNT, 1000001, "https://other.kommo.com");
    format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        {server_extra}

        [database]
        max_connections = 8
        acquire_timeout_ms = 1000

        [ops]
        tokens = [{{ name = "alice", token_env = "OPS_TOKEN_ALICE" }}, {{ name = "bob", token_env = "OPS_TOKEN_BOB" }}]

        {account}{kommo_only}"#
    )
}

/// The environment that goes with [`test_config_text`].
pub fn test_env(database_url: &str) -> HashMap<String, String> {
    [
        ("DATABASE_URL", database_url),
        ("KOMMO_SECRET", KOMMO_SECRET),
        ("KOMMO_TOKEN", "kommo-token"),
        ("STRIPE_KEY", crate::fakes::stripe::SECRET_KEY),
        ("STRIPE_WHSEC", STRIPE_SECRET),
        ("STRIPE_WHSEC_OLD", STRIPE_OLD_SECRET),
        ("LS_KEY", "ls-key"),
        ("LS_WHSEC", LS_SECRET),
        ("OPS_TOKEN_ALICE", OPS_TOKEN_ALICE),
        ("OPS_TOKEN_BOB", OPS_TOKEN_BOB),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

pub fn test_config(database_url: &str, server_extra: &str) -> Config {
    let env = test_env(database_url);
    Config::parse(&test_config_text(server_extra), "test config", &|name| env.get(name).cloned()).expect("test config is valid")
}

/// The real ingest application, serving on a free port against its own database.
pub struct TestApp {
    pub address: String,
    pub db: TestDb,
    pub client: reqwest::Client,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with("").await
}

/// Like [`spawn_app`], with extra `[server]` keys (TOML).
pub async fn spawn_app_with(server_extra: &str) -> TestApp {
    spawn_app_on(TestDb::new().await, server_extra).await
}

/// The application over `db` as it is (migrated or not).
pub async fn spawn_app_on(db: TestDb, server_extra: &str) -> TestApp {
    let config = test_config(&db.url, server_extra);
    spawn_app_from(db, &config).await
}

/// The application with `config`, over `db`.
pub async fn spawn_app_from(db: TestDb, config: &Config) -> TestApp {
    // The app gets a pool of its own, built from the configuration as in production.
    let pool = kommo_pay_core::db::connect(&config.database).await.expect("app pool");
    let app = Application::build(config, pool).await.expect("app builds");
    let address = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    TestApp { address, db, client: reqwest::Client::new() }
}

impl TestApp {
    pub async fn post_stripe(&self, account: &str, body: &str, signature: Option<&str>) -> reqwest::Response {
        let mut request = self.client.post(format!("{}/webhooks/stripe/{account}", self.address)).body(body.to_owned());
        if let Some(signature) = signature {
            request = request.header("Stripe-Signature", signature);
        }
        request.header("Content-Type", "application/json").send().await.expect("request sent")
    }

    /// Posts `body` to the Stripe route signed now with the current secret.
    pub async fn post_signed_stripe(&self, body: &str) -> reqwest::Response {
        self.post_stripe(ACCOUNT, body, Some(&stripe_signature(STRIPE_SECRET, now(), body))).await
    }

    pub async fn post_kommo(&self, account: &str, secret: &str, body: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/webhooks/kommo/{account}/{secret}", self.address))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("User-Agent", "amoCRM-Webhooks/3.0")
            .body(body.to_owned())
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post_lemonsqueezy(&self, account: &str, body: &str, signature: Option<&str>) -> reqwest::Response {
        let mut request =
            self.client.post(format!("{}/webhooks/lemonsqueezy/{account}", self.address)).header("Content-Type", "application/json").body(body.to_owned());
        if let Some(signature) = signature {
            request = request.header("X-Signature", signature);
        }
        request.send().await.expect("request sent")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.address)).send().await.expect("request sent")
    }

    pub async fn events(&self) -> i64 {
        self.db.count("SELECT count(*) FROM events").await
    }

    pub async fn jobs(&self) -> i64 {
        self.db.count("SELECT count(*) FROM jobs").await
    }
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub fn stripe_signature(secret: &str, timestamp: i64, body: &str) -> String {
    kommo_pay_core::stripe::webhook::signature_header(secret, timestamp, body.as_bytes())
}

pub fn ls_signature(secret: &str, body: &str) -> String {
    kommo_pay_core::lemonsqueezy::webhook::signature_header(secret, body.as_bytes())
}

/// A Stripe event of `kind` about lead `lead_id`, shaped like Stripe's (fields trimmed to the
/// ones the code reads).
pub fn stripe_event(id: &str, kind: &str, lead_id: i64) -> String {
    serde_json::json!({
        "id": id,
        "object": "event",
        "api_version": "2025-07-30.basil",
        "created": now(),
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "type": kind,
        "data": { "object": {
            "id": "cs_test_a1b2c3",
            "object": "checkout.session",
            "amount_total": 200000,
            "currency": "usd",
            "mode": "payment",
            "payment_link": "plink_1Abc",
            "payment_intent": "pi_3Abc",
            "payment_status": "paid",
            "status": "complete",
            "metadata": { "kommo_account_id": KOMMO_ACCOUNT_ID.to_string(), "kommo_lead_id": lead_id.to_string() }
        }}
    })
    .to_string()
}

/// Polls `check` every 20 ms until it holds; fails the test naming `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A `kommo-pay` process a test started, as a `Child`: killed when it goes out of scope, so a test
/// that fails (panics) before it stops its processes leaves none running.
pub struct Running(pub std::process::Child);

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `kommo-pay ROLE --config CONFIG` with exactly `env` (and PATH), its output discarded.
pub fn start_role(role: &str, config: &std::path::Path, env: &HashMap<String, String>) -> Running {
    Running(
        std::process::Command::new(env!("CARGO_BIN_EXE_kommo-pay"))
            .args([role, "--config"])
            .arg(config)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("kommo-pay {role} starts: {e}")),
    )
}

/// [`crate::fakes::account_config`] with `sections`, written to a temporary file for a `kommo-pay` process,
/// and the environment that goes with it (`database_url` and the fakes' secrets).
pub fn account_config_file(
    sections: &str,
    database_url: &str,
    kommo_url: &str,
    stripe_url: &str,
) -> (std::path::PathBuf, std::collections::HashMap<String, String>) {
    let text = crate::fakes::account_config(sections, ACCOUNT, KOMMO_ACCOUNT_ID, kommo_url, stripe_url);
    let path = std::env::temp_dir().join(format!("kommo-pay-test-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, text).unwrap();
    let mut env = test_env(database_url);
    env.insert("KOMMO_TOKEN".into(), crate::fakes::kommo::TOKEN.into());
    (path, env)
}

/// A deal, fake Kommo and Stripe, a configuration file with `sections` for `kommo-pay` processes,
/// and the app on a fresh database; the deal has just entered the trigger stage (its event and
/// job are committed).
pub struct ProcessSetup {
    pub kommo: crate::fakes::kommo::FakeKommo,
    pub stripe: crate::fakes::stripe::FakeStripe,
    pub app: std::sync::Arc<TestApp>,
    pub config_path: std::path::PathBuf,
    pub env: HashMap<String, String>,
}

impl ProcessSetup {
    pub async fn deal_entered_stage(sections: &str) -> ProcessSetup {
        let kommo = crate::fakes::kommo::FakeKommo::start().await;
        let stripe = crate::fakes::stripe::FakeStripe::start().await;
        kommo.add_lead(serde_json::json!({
            "id": 15318175, "name": "Website redesign", "price": 2000, "pipeline_id": 8572511, "status_id": 67548619,
            "responsible_user_id": 504141, "custom_fields_values": null
        }));
        let db = TestDb::new().await;
        let (config_path, env) = account_config_file(sections, &db.url, &kommo.url, &stripe.url);
        let mut config = Config::load(&config_path, &|name| env.get(name).cloned()).unwrap();
        // The test's own server takes any free port; processes started from the file keep theirs.
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        let app = spawn_app_from(db, &config).await;
        let body = "account%5Bid%5D=32427762&leads%5Bstatus%5D%5B0%5D%5Bid%5D=15318175&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D=67548619&leads%5Bstatus%5D%5B0%5D%5Bpipeline_id%5D=8572511";
        assert_eq!(app.post_kommo(ACCOUNT, KOMMO_SECRET, body).await.status(), 200);
        ProcessSetup { kommo, stripe, app: std::sync::Arc::new(app), config_path, env }
    }

    pub fn start(&self, role: &str) -> Running {
        start_role(role, &self.config_path, &self.env)
    }
}

impl Drop for ProcessSetup {
    fn drop(&mut self) {
        std::fs::remove_file(&self.config_path).ok();
    }
}
