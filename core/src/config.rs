//! The configuration file: one TOML file describing the service and every Kommo account it
//! serves. Secrets are never in the file: it names the environment variables that hold them.
//!
//! Loading has two steps. [`ConfigFile`] is the file as written (it also generates the JSON
//! Schema in `schemas/config.schema.json`); [`Config::resolve`] validates it, reads the named
//! environment variables and returns the [`Config`] the service runs with. Every problem is
//! reported at once, each naming its key (`accounts[0].stripe.secret_key_env: ...`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use secrecy::SecretString;
use serde::Deserialize;

use crate::money::Currency;
use crate::retry_policy::RetryPolicy;
use crate::stripe::client::{Interval, Recurring};

/// Where environment variables come from: the process environment in production, a map in tests.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, for [`Config::load`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The variable that, when set, wins over `database.url`.
pub const DATABASE_URL_ENV: &str = "DATABASE_URL";

// ---------------------------------------------------------------------------------------------
// The file as written.

/// The kommo-pay configuration file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub database: DatabaseSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub worker: WorkerSection,
    #[serde(default)]
    pub jobs: JobsSection,
    /// The Kommo accounts this deployment serves, each with its own providers.
    #[serde(default)]
    pub accounts: Vec<AccountSection>,
}

/// The HTTP server of the ingest role.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address and port to listen on. Port 0 picks a free port.
    pub listen: String,
    /// Largest webhook body accepted, in bytes; larger ones get 413.
    pub body_limit_bytes: usize,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self { listen: "127.0.0.1:8080".into(), body_limit_bytes: 256 * 1024 }
    }
}

/// The PostgreSQL database that holds the event log and the queue.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    /// Connection URL without a password. The `DATABASE_URL` environment variable, when set,
    /// wins; put any password there.
    pub url: Option<String>,
    /// Size of each process's connection pool.
    pub max_connections: u32,
    /// How long a request may wait for a connection before the answer is 503, in milliseconds.
    /// Kommo gives up after 2 s, so keep it well below that.
    pub acquire_timeout_ms: u64,
    /// Apply pending migrations when a role starts (otherwise run `kommo-pay migrate`).
    pub migrate_on_start: bool,
    /// Ingest's appends to the event log running at once in one process. Deliveries arriving
    /// while all run are committed together as the next batch (group commit). 2 suits a 2-core
    /// database server; raise it with the database's cores.
    pub ingest_concurrent_appends: usize,
}

impl Default for DatabaseSection {
    fn default() -> Self {
        Self { url: None, max_connections: 16, acquire_timeout_ms: 1000, migrate_on_start: true, ingest_concurrent_appends: 2 }
    }
}

/// Log output.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `info,kommo_pay_ingest=debug`. `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self { format: LogFormat::Human, filter: "info".into() }
    }
}

/// The worker role.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSection {
    /// Jobs run at once by one worker process.
    pub concurrency: usize,
    /// Jobs claimed per query, at most the free slots.
    pub claim_batch: usize,
    /// How often an idle worker looks for work when no wake-up arrives, in milliseconds.
    pub poll_interval_ms: u64,
    /// How often a worker marks its running jobs alive, in milliseconds. A job whose worker
    /// died runs again within two intervals.
    pub heartbeat_interval_ms: u64,
    /// The longest one attempt may run, in seconds; past it the attempt fails and is retried.
    pub job_timeout_secs: u64,
    /// On SIGTERM, how long running jobs may finish before they are cut off and given back, in
    /// seconds.
    pub shutdown_grace_secs: u64,
}

impl Default for WorkerSection {
    fn default() -> Self {
        Self {
            concurrency: 16,
            claim_batch: 16,
            poll_interval_ms: 1000,
            heartbeat_interval_ms: 5000,
            job_timeout_secs: 60,
            shutdown_grace_secs: 30,
        }
    }
}

/// Retries: defaults for every job kind, and overrides per kind.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct JobsSection {
    /// Attempts in all before a job is dead-lettered.
    pub max_attempts: i32,
    /// Wait after the first failure, in milliseconds; it doubles with each failure.
    pub retry_base_ms: u64,
    /// Longest wait between attempts, in milliseconds.
    pub retry_cap_ms: u64,
    /// Overrides by job kind, e.g. `[jobs.kinds."stripe.payment"]`.
    pub kinds: BTreeMap<String, JobKindSection>,
}

impl Default for JobsSection {
    fn default() -> Self {
        let policy = RetryPolicy::default();
        Self {
            max_attempts: policy.max_attempts,
            retry_base_ms: policy.base.as_millis() as u64,
            retry_cap_ms: policy.cap.as_millis() as u64,
            kinds: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobKindSection {
    pub max_attempts: Option<i32>,
    pub retry_base_ms: Option<u64>,
    pub retry_cap_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One line of text per event, for a terminal.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// One Kommo account and the payment providers it uses.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountSection {
    /// Short name used in webhook URLs and in the log: lowercase letters, digits and `-`.
    pub slug: String,
    pub kommo: KommoSection,
    pub stripe: Option<StripeSection>,
    pub lemonsqueezy: Option<LemonSqueezySection>,
    /// Currency of deals whose currency field is empty or not configured (ISO 4217, e.g. `USD`).
    #[serde(default = "default_currency")]
    pub default_currency: String,
    /// Stages that issue a payment link when a deal enters them.
    #[serde(default)]
    pub triggers: Vec<TriggerSection>,
}

fn default_currency() -> String {
    "USD".into()
}

/// A deal entering `pipeline_id`/`status_id` gets a payment link.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerSection {
    /// Names the trigger in jobs and logs; unique within the account.
    pub name: String,
    pub pipeline_id: i64,
    pub status_id: i64,
    /// `stripe` (a Payment Link) or `lemonsqueezy` (a checkout).
    pub provider: String,
    /// Lemon Squeezy: the store and the product variant the checkout sells (its price is
    /// replaced by the deal's amount; a subscription variant makes a subscription).
    pub store_id: Option<String>,
    pub variant_id: Option<String>,
    /// Lemon Squeezy: hours until the checkout URL expires (none: it never does).
    pub checkout_expires_hours: Option<u32>,
    /// `payment` (one-time) or `subscription`.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// For subscriptions: `day`, `week`, `month` or `year`.
    pub interval: Option<String>,
    #[serde(default = "one")]
    pub interval_count: u32,
    /// Where the client lands after paying.
    pub redirect_url: Option<String>,
    /// Stage to move the deal to once its link is issued (same pipeline).
    pub move_to_status_id: Option<i64>,
    /// Stage to move the deal to once it is paid, e.g. 142 (won).
    pub paid_status_id: Option<i64>,
    /// Add a note with the link to the deal.
    #[serde(default = "yes")]
    pub add_note: bool,
    /// Salesbot to launch for the deal once the link is in its card (it sends the link).
    pub salesbot_id: Option<i64>,
}

fn default_mode() -> String {
    "payment".into()
}
fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}

/// Ids of the deal fields kommo-pay writes and reads (`kommo-pay kommo setup` creates them).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldsSection {
    /// URL field: the payment link.
    pub payment_link: i64,
    /// Select field: the payment status.
    pub payment_status: i64,
    /// `date_time` field: when the deal was paid.
    pub payment_date: i64,
    /// Text field: Stripe's payment intent id (or the provider's order id).
    pub payment_id: i64,
    /// Numeric field: the amount paid.
    pub paid_amount: i64,
    /// Numeric field that, when set, is charged instead of the deal's price.
    pub amount_due: Option<i64>,
    /// Numeric field: the amount refunded so far.
    pub refunded_amount: Option<i64>,
    /// Text or select field holding an ISO currency code, when deals differ in currency.
    pub currency: Option<i64>,
    /// Enum ids of the payment status field's options.
    pub statuses: StatusesSection,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusesSection {
    pub not_issued: i64,
    pub awaiting: i64,
    pub paid: i64,
    pub overdue: i64,
    pub refunded: i64,
    pub partially_refunded: i64,
    pub cancelled: i64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KommoSection {
    /// The numeric Kommo account id (`account[id]` in webhooks). Subdomains can be renamed; this
    /// id cannot.
    pub account_id: i64,
    /// The account's API host, e.g. `https://acme.kommo.com`.
    pub base_url: String,
    /// Environment variable holding the secret that ends this account's webhook URL
    /// (`/webhooks/kommo/{slug}/{secret}`). At least 24 characters.
    pub webhook_secret_env: String,
    pub auth: KommoAuthSection,
    /// Requests per second to Kommo's API for this account, across all worker processes
    /// together. Kommo allows 7 per integration and 50 per account for all integrations.
    #[serde(default = "default_kommo_rate")]
    pub requests_per_second: f64,
    /// The deal fields kommo-pay uses; needed when the account has triggers.
    pub fields: Option<FieldsSection>,
}

fn default_kommo_rate() -> f64 {
    5.0
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum KommoAuthSection {
    /// A private integration's long-lived token.
    LongLivedToken {
        /// Environment variable holding the token.
        token_env: String,
    },
    /// OAuth 2.0: tokens are refreshed before expiry and the rotated pair is stored in PostgreSQL.
    Oauth {
        client_id: String,
        /// Environment variable holding the client secret.
        client_secret_env: String,
        redirect_uri: String,
        /// Environment variable holding the first refresh token; later ones live in the database.
        refresh_token_env: String,
    },
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StripeSection {
    /// Stripe's API base URL; point it at a fake in tests.
    #[serde(default = "default_stripe_api")]
    pub api_base_url: String,
    /// Environment variable holding the secret API key (`sk_live_…` / `sk_test_…`).
    pub secret_key_env: String,
    /// Environment variables holding the endpoint's signing secrets (`whsec_…`). Name two while
    /// rolling a secret: a signature made with either is accepted.
    pub webhook_secret_envs: Vec<String>,
    /// Oldest accepted signature timestamp, in seconds (Stripe's libraries use 300).
    #[serde(default = "default_tolerance")]
    pub signature_tolerance_secs: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LemonSqueezySection {
    /// Lemon Squeezy's API base URL; point it at a fake in tests.
    #[serde(default = "default_lemonsqueezy_api")]
    pub api_base_url: String,
    /// Environment variable holding the API key.
    pub api_key_env: String,
    /// Environment variables holding the webhook signing secrets; several while rotating.
    pub webhook_secret_envs: Vec<String>,
    /// Create checkouts in test mode (with a test-mode API key).
    #[serde(default)]
    pub test_mode: bool,
}

fn default_stripe_api() -> String {
    "https://api.stripe.com".into()
}
fn default_lemonsqueezy_api() -> String {
    "https://api.lemonsqueezy.com".into()
}
fn default_tolerance() -> u64 {
    300
}

// ---------------------------------------------------------------------------------------------
// The configuration the service runs with.

#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub log: LogSection,
    pub worker: WorkerConfig,
    pub jobs: JobPolicies,
    pub accounts: Accounts,
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub concurrency: usize,
    pub claim_batch: usize,
    pub poll_interval: Duration,
    pub heartbeat_interval: Duration,
    pub job_timeout: Duration,
    pub shutdown_grace: Duration,
}

/// The retry policy of each job kind.
#[derive(Debug, Clone, Default)]
pub struct JobPolicies {
    default: RetryPolicy,
    kinds: BTreeMap<String, RetryPolicy>,
}

impl JobPolicies {
    pub fn policy(&self, kind: &str) -> RetryPolicy {
        self.kinds.get(kind).copied().unwrap_or(self.default)
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub body_limit_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// May carry a password when it came from `DATABASE_URL`: never print it.
    pub url: SecretString,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub migrate_on_start: bool,
    pub ingest_concurrent_appends: usize,
}

/// The configured accounts, by slug.
#[derive(Debug, Clone, Default)]
pub struct Accounts(BTreeMap<String, Arc<Account>>);

impl Accounts {
    pub fn get(&self, slug: &str) -> Option<&Arc<Account>> {
        self.0.get(slug)
    }
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Account>> {
        self.0.values()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Account {
    pub slug: String,
    pub kommo: KommoAccount,
    pub stripe: Option<StripeAccount>,
    pub lemonsqueezy: Option<LemonSqueezyAccount>,
    pub default_currency: Currency,
    pub triggers: Vec<Trigger>,
}

impl Account {
    /// The trigger for a deal now in `stage` (pipeline, status), if any.
    pub fn trigger_for(&self, (pipeline_id, status_id): (i64, i64)) -> Option<&Trigger> {
        self.triggers.iter().find(|t| t.pipeline_id == pipeline_id && t.status_id == status_id)
    }

    pub fn trigger(&self, name: &str) -> Option<&Trigger> {
        self.triggers.iter().find(|t| t.name == name)
    }
}

#[derive(Debug, Clone)]
pub struct Trigger {
    pub name: String,
    pub pipeline_id: i64,
    pub status_id: i64,
    pub provider: TriggerProvider,
    /// `Some` for a subscription.
    pub recurring: Option<Recurring>,
    pub redirect_url: Option<String>,
    pub move_to_status_id: Option<i64>,
    pub paid_status_id: Option<i64>,
    pub add_note: bool,
    pub salesbot_id: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct KommoAccount {
    pub account_id: i64,
    pub base_url: url::Url,
    pub webhook_secret: SecretString,
    pub auth: KommoAuth,
    pub requests_per_second: f64,
    pub fields: Option<FieldsSection>,
}

#[derive(Debug, Clone)]
pub enum KommoAuth {
    LongLivedToken { token: SecretString },
    Oauth { client_id: String, client_secret: SecretString, redirect_uri: url::Url, refresh_token: SecretString },
}

#[derive(Debug, Clone)]
pub struct StripeAccount {
    pub api_base_url: url::Url,
    pub secret_key: SecretString,
    pub webhook_secrets: Vec<SecretString>,
    pub signature_tolerance: Duration,
}

#[derive(Debug, Clone)]
pub struct LemonSqueezyAccount {
    pub api_base_url: url::Url,
    pub api_key: SecretString,
    pub webhook_secrets: Vec<SecretString>,
    pub test_mode: bool,
}

/// Where a trigger's link comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerProvider {
    Stripe,
    LemonSqueezy { store_id: String, variant_id: String, expires_hours: Option<u32> },
}

/// Why a configuration could not be used: every problem found, each naming its key.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration {}:", self.source_name)?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The shortest accepted Kommo webhook secret: the URL secret is the only thing that
/// authenticates Kommo's unsigned webhooks, so it must not be guessable.
pub const MIN_KOMMO_WEBHOOK_SECRET_LEN: usize = 24;

impl Config {
    /// Reads, parses and resolves the file at `path`.
    pub fn load(path: &Path, env: Env<'_>) -> Result<Config, ConfigError> {
        let source_name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: source_name.clone(),
            problems: vec![format!("cannot read the file: {e}")],
        })?;
        Self::parse(&text, &source_name, env)
    }

    /// Parses and resolves a configuration given as TOML text.
    pub fn parse(text: &str, source_name: &str, env: Env<'_>) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError {
            source_name: source_name.to_owned(),
            problems: vec![e.to_string().trim_end().to_owned()],
        })?;
        Self::resolve(file, env).map_err(|problems| ConfigError { source_name: source_name.to_owned(), problems })
    }

    /// Validates the file and reads the secrets it names from `env`.
    pub fn resolve(file: ConfigFile, env: Env<'_>) -> Result<Config, Vec<String>> {
        let mut v = Validator { env, problems: Vec::new() };

        let listen = v.check("server.listen", file.server.listen.parse::<SocketAddr>().map_err(|e| {
            format!("{:?} is not an address and port like 127.0.0.1:8080 ({e})", file.server.listen)
        }));
        if file.server.body_limit_bytes < 1024 {
            v.problem("server.body_limit_bytes", "must be at least 1024");
        }

        let url = match env(DATABASE_URL_ENV).filter(|u| !u.is_empty()) {
            Some(url) => Some(url),
            None => match &file.database.url {
                Some(url) => {
                    match url::Url::parse(url) {
                        Ok(parsed) if parsed.password().is_some() => v.problem(
                            "database.url",
                            "contains a password; put the whole URL in the DATABASE_URL environment variable instead",
                        ),
                        Ok(parsed) if !matches!(parsed.scheme(), "postgres" | "postgresql") => {
                            v.problem("database.url", "must be a postgres:// URL")
                        }
                        Ok(_) => {}
                        Err(e) => v.problem("database.url", &format!("is not a URL ({e})")),
                    }
                    Some(url.clone())
                }
                None => {
                    v.problem("database.url", "is not set, and neither is the DATABASE_URL environment variable");
                    None
                }
            },
        };
        if file.database.max_connections < 2 {
            v.problem("database.max_connections", "must be at least 2");
        }
        if !(1..=file.database.max_connections as usize).contains(&file.database.ingest_concurrent_appends) {
            v.problem("database.ingest_concurrent_appends", "must be between 1 and database.max_connections");
        }

        let w = &file.worker;
        for (key, value) in [
            ("worker.concurrency", w.concurrency as u64),
            ("worker.claim_batch", w.claim_batch as u64),
            ("worker.poll_interval_ms", w.poll_interval_ms),
            ("worker.heartbeat_interval_ms", w.heartbeat_interval_ms),
            ("worker.job_timeout_secs", w.job_timeout_secs),
        ] {
            if value == 0 {
                v.problem(key, "must be positive");
            }
        }
        let worker = WorkerConfig {
            concurrency: w.concurrency,
            claim_batch: w.claim_batch,
            poll_interval: Duration::from_millis(w.poll_interval_ms),
            heartbeat_interval: Duration::from_millis(w.heartbeat_interval_ms),
            job_timeout: Duration::from_secs(w.job_timeout_secs),
            shutdown_grace: Duration::from_secs(w.shutdown_grace_secs),
        };
        let jobs = v.job_policies(&file.jobs);

        let mut accounts = BTreeMap::new();
        let mut kommo_ids = BTreeSet::new();
        for (i, section) in file.accounts.into_iter().enumerate() {
            let key = format!("accounts[{i}]");
            if !is_slug(&section.slug) {
                v.problem(
                    &format!("{key}.slug"),
                    &format!("{:?} is not a slug: use 1-64 lowercase letters, digits and '-'", section.slug),
                );
            }
            if accounts.contains_key(&section.slug) {
                v.problem(&format!("{key}.slug"), &format!("{:?} is used by an earlier account", section.slug));
            }
            if !kommo_ids.insert(section.kommo.account_id) {
                v.problem(
                    &format!("{key}.kommo.account_id"),
                    &format!("{} is used by an earlier account", section.kommo.account_id),
                );
            }
            if let Some(account) = v.account(&key, section) {
                accounts.insert(account.slug.clone(), Arc::new(account));
            }
        }

        if !v.problems.is_empty() {
            return Err(v.problems);
        }
        Ok(Config {
            server: ServerConfig { listen: listen.expect("checked"), body_limit_bytes: file.server.body_limit_bytes },
            database: DatabaseConfig {
                url: SecretString::from(url.expect("checked")),
                max_connections: file.database.max_connections,
                acquire_timeout: Duration::from_millis(file.database.acquire_timeout_ms),
                migrate_on_start: file.database.migrate_on_start,
                ingest_concurrent_appends: file.database.ingest_concurrent_appends,
            },
            log: file.log,
            worker,
            jobs,
            accounts: Accounts(accounts),
        })
    }
}

/// The JSON Schema of the configuration file, as committed in `schemas/config.schema.json`.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(ConfigFile)).expect("a schema serialises")
}

fn is_slug(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
}

/// Collects problems while resolving, so that one run reports all of them.
struct Validator<'a> {
    env: Env<'a>,
    problems: Vec<String>,
}

impl Validator<'_> {
    fn problem(&mut self, key: &str, message: &str) {
        self.problems.push(format!("{key}: {message}"));
    }

    fn check<T>(&mut self, key: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|message| self.problem(key, &message)).ok()
    }

    /// The value of the environment variable named at `key`.
    fn secret(&mut self, key: &str, var: &str) -> Option<SecretString> {
        if var.is_empty() {
            self.problem(key, "names no environment variable");
            return None;
        }
        match (self.env)(var) {
            Some(value) if !value.is_empty() => Some(SecretString::from(value)),
            Some(_) => {
                self.problem(key, &format!("environment variable {var} is empty"));
                None
            }
            None => {
                self.problem(key, &format!("environment variable {var} is not set"));
                None
            }
        }
    }

    fn secrets(&mut self, key: &str, vars: &[String]) -> Option<Vec<SecretString>> {
        if vars.is_empty() {
            self.problem(key, "names no environment variable; name at least one");
            return None;
        }
        let found: Vec<_> = vars.iter().enumerate().filter_map(|(i, var)| self.secret(&format!("{key}[{i}]"), var)).collect();
        (found.len() == vars.len()).then_some(found)
    }

    fn job_policies(&mut self, jobs: &JobsSection) -> JobPolicies {
        let mut policy = |key: &str, max_attempts: i32, base_ms: u64, cap_ms: u64| {
            if max_attempts < 1 {
                self.problem(&format!("{key}max_attempts"), "must be at least 1");
            }
            if base_ms == 0 || cap_ms < base_ms {
                self.problem(&format!("{key}retry_cap_ms"), "retry_base_ms must be positive and retry_cap_ms at least retry_base_ms");
            }
            RetryPolicy { max_attempts, base: Duration::from_millis(base_ms), cap: Duration::from_millis(cap_ms) }
        };
        let default = policy("jobs.", jobs.max_attempts, jobs.retry_base_ms, jobs.retry_cap_ms);
        let kinds = jobs
            .kinds
            .iter()
            .map(|(kind, o)| {
                let p = policy(
                    &format!("jobs.kinds.\"{kind}\"."),
                    o.max_attempts.unwrap_or(jobs.max_attempts),
                    o.retry_base_ms.unwrap_or(jobs.retry_base_ms),
                    o.retry_cap_ms.unwrap_or(jobs.retry_cap_ms),
                );
                (kind.clone(), p)
            })
            .collect();
        JobPolicies { default, kinds }
    }

    fn http_url(&mut self, key: &str, value: &str) -> Option<url::Url> {
        self.check(
            key,
            match url::Url::parse(value) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(url),
                Ok(_) => Err(format!("{value:?} is not an http(s) URL")),
                Err(e) => Err(format!("{value:?} is not a URL ({e})")),
            },
        )
    }

    fn account(&mut self, key: &str, section: AccountSection) -> Option<Account> {
        let problems_before = self.problems.len();
        let k = &section.kommo;
        if k.account_id <= 0 {
            self.problem(&format!("{key}.kommo.account_id"), "must be a positive Kommo account id");
        }
        let base_url = self.http_url(&format!("{key}.kommo.base_url"), &k.base_url);
        if !(k.requests_per_second > 0.0 && k.requests_per_second <= 50.0) {
            self.problem(&format!("{key}.kommo.requests_per_second"), "must be above 0 and at most 50 (Kommo's limit per account)");
        }
        let secret_key = format!("{key}.kommo.webhook_secret_env");
        let webhook_secret = self.secret(&secret_key, &k.webhook_secret_env);
        if let Some(secret) = &webhook_secret {
            use secrecy::ExposeSecret;
            if secret.expose_secret().len() < MIN_KOMMO_WEBHOOK_SECRET_LEN {
                self.problem(
                    &secret_key,
                    &format!(
                        "the secret in {} is shorter than {MIN_KOMMO_WEBHOOK_SECRET_LEN} characters; use a random one (e.g. `openssl rand -hex 24`)",
                        k.webhook_secret_env
                    ),
                );
            }
        }
        let auth = match &k.auth {
            KommoAuthSection::LongLivedToken { token_env } => self
                .secret(&format!("{key}.kommo.auth.token_env"), token_env)
                .map(|token| KommoAuth::LongLivedToken { token }),
            KommoAuthSection::Oauth { client_id, client_secret_env, redirect_uri, refresh_token_env } => {
                if client_id.is_empty() {
                    self.problem(&format!("{key}.kommo.auth.client_id"), "is empty");
                }
                let client_secret = self.secret(&format!("{key}.kommo.auth.client_secret_env"), client_secret_env);
                let redirect_uri = self.http_url(&format!("{key}.kommo.auth.redirect_uri"), redirect_uri);
                let refresh_token = self.secret(&format!("{key}.kommo.auth.refresh_token_env"), refresh_token_env);
                match (client_secret, redirect_uri, refresh_token) {
                    (Some(client_secret), Some(redirect_uri), Some(refresh_token)) => {
                        Some(KommoAuth::Oauth { client_id: client_id.clone(), client_secret, redirect_uri, refresh_token })
                    }
                    _ => None,
                }
            }
        };

        let stripe = section.stripe.as_ref().map(|s| {
            let api_base_url = self.http_url(&format!("{key}.stripe.api_base_url"), &s.api_base_url);
            let secret_key = self.secret(&format!("{key}.stripe.secret_key_env"), &s.secret_key_env);
            let webhook_secrets = self.secrets(&format!("{key}.stripe.webhook_secret_envs"), &s.webhook_secret_envs);
            if s.signature_tolerance_secs == 0 {
                self.problem(&format!("{key}.stripe.signature_tolerance_secs"), "must be positive");
            }
            Some(StripeAccount {
                api_base_url: api_base_url?,
                secret_key: secret_key?,
                webhook_secrets: webhook_secrets?,
                signature_tolerance: Duration::from_secs(s.signature_tolerance_secs),
            })
        });
        let lemonsqueezy = section.lemonsqueezy.as_ref().map(|s| {
            let api_base_url = self.http_url(&format!("{key}.lemonsqueezy.api_base_url"), &s.api_base_url);
            let api_key = self.secret(&format!("{key}.lemonsqueezy.api_key_env"), &s.api_key_env);
            let webhook_secrets =
                self.secrets(&format!("{key}.lemonsqueezy.webhook_secret_envs"), &s.webhook_secret_envs);
            Some(LemonSqueezyAccount { api_base_url: api_base_url?, api_key: api_key?, webhook_secrets: webhook_secrets?, test_mode: s.test_mode })
        });

        let default_currency = self.check(
            &format!("{key}.default_currency"),
            Currency::parse(&section.default_currency).map_err(|e| e.to_string()),
        );
        let mut triggers = Vec::new();
        for (i, t) in section.triggers.iter().enumerate() {
            let tkey = format!("{key}.triggers[{i}]");
            if section.triggers[..i].iter().any(|earlier| earlier.name == t.name) {
                self.problem(&format!("{tkey}.name"), &format!("{:?} is used by an earlier trigger", t.name));
            }
            if section.triggers[..i].iter().any(|e| (e.pipeline_id, e.status_id) == (t.pipeline_id, t.status_id)) {
                self.problem(&format!("{tkey}.status_id"), "an earlier trigger has the same pipeline and status");
            }
            let provider = match t.provider.as_str() {
                "stripe" => {
                    if section.stripe.is_none() {
                        self.problem(&format!("{tkey}.provider"), "is stripe, but the account has no [accounts.stripe] section");
                    }
                    Some(TriggerProvider::Stripe)
                }
                "lemonsqueezy" => {
                    if section.lemonsqueezy.is_none() {
                        self.problem(&format!("{tkey}.provider"), "is lemonsqueezy, but the account has no [accounts.lemonsqueezy] section");
                    }
                    if t.interval.is_some() || t.mode != "payment" {
                        self.problem(&format!("{tkey}.mode"), "Lemon Squeezy sells what the variant is: leave mode and interval out");
                    }
                    match (&t.store_id, &t.variant_id) {
                        (Some(store_id), Some(variant_id)) => Some(TriggerProvider::LemonSqueezy {
                            store_id: store_id.clone(),
                            variant_id: variant_id.clone(),
                            expires_hours: t.checkout_expires_hours,
                        }),
                        _ => {
                            self.problem(&format!("{tkey}.variant_id"), "a lemonsqueezy trigger needs store_id and variant_id");
                            None
                        }
                    }
                }
                other => {
                    self.problem(&format!("{tkey}.provider"), &format!("{other:?} is neither \"stripe\" nor \"lemonsqueezy\""));
                    None
                }
            };
            if k.fields.is_none() {
                self.problem(&tkey, &format!("needs {key}.kommo.fields (run `kommo-pay kommo setup`)"));
            }
            let recurring = match (t.mode.as_str(), t.interval.as_deref()) {
                _ if t.provider == "lemonsqueezy" => None,
                ("payment", None) => None,
                ("payment", Some(_)) => {
                    self.problem(&format!("{tkey}.interval"), "is only for mode = \"subscription\"");
                    None
                }
                ("subscription", interval) => {
                    let interval = match interval {
                        Some("day") => Some(Interval::Day),
                        Some("week") => Some(Interval::Week),
                        Some("month") => Some(Interval::Month),
                        Some("year") => Some(Interval::Year),
                        _ => {
                            self.problem(&format!("{tkey}.interval"), "must be day, week, month or year for a subscription");
                            None
                        }
                    };
                    if t.interval_count == 0 {
                        self.problem(&format!("{tkey}.interval_count"), "must be at least 1");
                    }
                    interval.map(|interval| Recurring { interval, interval_count: t.interval_count })
                }
                (other, _) => {
                    self.problem(&format!("{tkey}.mode"), &format!("{other:?} is neither \"payment\" nor \"subscription\""));
                    None
                }
            };
            if let Some(url) = &t.redirect_url {
                self.http_url(&format!("{tkey}.redirect_url"), url);
            }
            let Some(provider) = provider else { continue };
            triggers.push(Trigger {
                name: t.name.clone(),
                pipeline_id: t.pipeline_id,
                status_id: t.status_id,
                provider,
                recurring,
                redirect_url: t.redirect_url.clone(),
                move_to_status_id: t.move_to_status_id,
                paid_status_id: t.paid_status_id,
                add_note: t.add_note,
                salesbot_id: t.salesbot_id,
            });
        }

        // Our own stage moves come back as webhooks: a move into a trigger stage would issue
        // links forever.
        for (i, t) in triggers.iter().enumerate() {
            for (name, target) in [("move_to_status_id", t.move_to_status_id), ("paid_status_id", t.paid_status_id)] {
                if target.is_some_and(|status| triggers.iter().any(|other| (other.pipeline_id, other.status_id) == (t.pipeline_id, status))) {
                    self.problem(&format!("{key}.triggers[{i}].{name}"), "is a trigger stage itself: the move would issue another link");
                }
            }
        }

        if self.problems.len() > problems_before {
            return None;
        }
        Some(Account {
            default_currency: default_currency?,
            triggers,
            slug: section.slug,
            kommo: KommoAccount {
                account_id: k.account_id,
                base_url: base_url?,
                webhook_secret: webhook_secret?,
                auth: auth?,
                requests_per_second: k.requests_per_second,
                fields: k.fields.clone(),
            },
            stripe: stripe.flatten(),
            lemonsqueezy: lemonsqueezy.flatten(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const VALID: &str = r#"
        [database]
        url = "postgres://postgres@127.0.0.1:54329/kommo_pay"

        [[accounts]]
        slug = "acme"
        [accounts.kommo]
        account_id = 32427762
        base_url = "https://acme.kommo.com"
        webhook_secret_env = "ACME_KOMMO_WEBHOOK_SECRET"
        auth = { kind = "long_lived_token", token_env = "ACME_KOMMO_TOKEN" }
        [accounts.stripe]
        secret_key_env = "ACME_STRIPE_KEY"
        webhook_secret_envs = ["ACME_WHSEC", "ACME_WHSEC_OLD"]
    "#;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    fn full_env() -> impl Fn(&str) -> Option<String> {
        env(&[
            ("ACME_KOMMO_WEBHOOK_SECRET", "0123456789abcdef0123456789abcdef"),
            ("ACME_KOMMO_TOKEN", "kommo-token"),
            ("ACME_STRIPE_KEY", "sk_test_x"),
            ("ACME_WHSEC", "whsec_new"),
            ("ACME_WHSEC_OLD", "whsec_old"),
        ])
    }

    #[test]
    fn a_valid_file_resolves_with_its_secrets_and_defaults() {
        let config = Config::parse(VALID, "test.toml", &full_env()).unwrap();
        let acme = config.accounts.get("acme").unwrap();
        assert_eq!(acme.kommo.account_id, 32427762);
        let stripe = acme.stripe.as_ref().unwrap();
        assert_eq!(stripe.webhook_secrets.len(), 2);
        assert_eq!(stripe.signature_tolerance, Duration::from_secs(300));
        assert_eq!(stripe.api_base_url.as_str(), "https://api.stripe.com/");
        assert_eq!(config.server.body_limit_bytes, 256 * 1024);
        assert!(acme.lemonsqueezy.is_none());
    }

    #[test]
    fn database_url_from_the_environment_wins_over_the_file() {
        let with_url = |name: &str| {
            if name == DATABASE_URL_ENV { Some("postgres://u:pw@db:5432/x".to_string()) } else { full_env()(name) }
        };
        let config = Config::parse(VALID, "test.toml", &with_url).unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(config.database.url.expose_secret(), "postgres://u:pw@db:5432/x");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = VALID
            .replace(r#"slug = "acme""#, r#"slug = "Acme Corp""#)
            .replace("https://acme.kommo.com", "acme.kommo.com")
            .replace("127.0.0.1:54329", "me:secret@127.0.0.1:54329");
        let err = Config::parse(&text, "bad.toml", &env(&[("ACME_KOMMO_WEBHOOK_SECRET", "short")])).unwrap_err();
        let expected = [
            "database.url: contains a password",
            "accounts[0].slug: \"Acme Corp\" is not a slug",
            "accounts[0].kommo.base_url: \"acme.kommo.com\" is not a URL",
            "accounts[0].kommo.webhook_secret_env: the secret in ACME_KOMMO_WEBHOOK_SECRET is shorter than 24",
            "accounts[0].kommo.auth.token_env: environment variable ACME_KOMMO_TOKEN is not set",
            "accounts[0].stripe.secret_key_env: environment variable ACME_STRIPE_KEY is not set",
            "accounts[0].stripe.webhook_secret_envs[1]: environment variable ACME_WHSEC_OLD is not set",
        ];
        for want in expected {
            assert!(err.problems.iter().any(|p| p.starts_with(want)), "missing {want:?} in {:#?}", err.problems);
        }
        // The secret's value never appears in an error.
        assert!(!err.to_string().contains("short\""), "{err}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_their_place() {
        let err = Config::parse(&format!("{VALID}\nsurprise = 1\n"), "x.toml", &full_env()).unwrap_err();
        assert!(err.problems[0].contains("unknown field `surprise`"), "{err}");
        let err = Config::parse(&VALID.replace("32427762", "\"32427762\""), "x.toml", &full_env()).unwrap_err();
        assert!(err.problems[0].contains("account_id"), "{err}");
    }

    #[test]
    fn duplicate_slugs_and_kommo_ids_are_rejected() {
        let second = &VALID[VALID.find("[[accounts]]").unwrap()..];
        let err = Config::parse(&format!("{VALID}\n{second}"), "x.toml", &full_env()).unwrap_err();
        assert!(err.problems.iter().any(|p| p.starts_with("accounts[1].slug: \"acme\" is used")), "{err}");
        assert!(err.problems.iter().any(|p| p.starts_with("accounts[1].kommo.account_id: 32427762 is used")), "{err}");
    }

    #[test]
    fn job_kinds_override_the_default_retry_policy() {
        let text = format!("[jobs]\nmax_attempts = 7\n[jobs.kinds.\"stripe.payment\"]\nmax_attempts = 3\nretry_cap_ms = 5000\n{VALID}");
        let config = Config::parse(&text, "x.toml", &full_env()).unwrap();
        let special = config.jobs.policy("stripe.payment");
        assert_eq!((special.max_attempts, special.base, special.cap), (3, Duration::from_secs(1), Duration::from_secs(5)));
        assert_eq!(config.jobs.policy("other").max_attempts, 7);

        let bad = format!("[jobs.kinds.x]\nmax_attempts = 0\nretry_base_ms = 10\nretry_cap_ms = 1\n{VALID}");
        let err = Config::parse(&bad, "x.toml", &full_env()).unwrap_err();
        assert!(err.problems.iter().any(|p| p.starts_with("jobs.kinds.\"x\".max_attempts")), "{err}");
        assert!(err.problems.iter().any(|p| p.starts_with("jobs.kinds.\"x\".retry_cap_ms")), "{err}");
    }

    #[test]
    fn triggers_are_checked_against_loops_and_missing_parts() {
        let trigger = |extra: &str| {
            format!(
                "{VALID}\n[[accounts.triggers]]\nname = \"t\"\npipeline_id = 1\nstatus_id = 10\nprovider = \"stripe\"\n{extra}\n"
            )
        };
        let err = Config::parse(&trigger("move_to_status_id = 10"), "x.toml", &full_env()).unwrap_err();
        assert!(err.problems.iter().any(|p| p.starts_with("accounts[0].triggers[0].move_to_status_id: is a trigger stage")), "{err}");
        assert!(err.problems.iter().any(|p| p.starts_with("accounts[0].triggers[0]: needs accounts[0].kommo.fields")), "{err}");
        let err = Config::parse(&trigger("mode = \"subscription\""), "x.toml", &full_env()).unwrap_err();
        assert!(err.problems.iter().any(|p| p.starts_with("accounts[0].triggers[0].interval: must be day")), "{err}");
        let err = Config::parse(&trigger("provider = \"paypal\""), "x.toml", &full_env()).unwrap_err();
        assert!(err.problems[0].contains("duplicate key"), "{err}");
        let ls = trigger("").replace("provider = \"stripe\"", "provider = \"lemonsqueezy\"");
        let err = Config::parse(&ls, "x.toml", &full_env()).unwrap_err();
        assert!(err.problems.iter().any(|p| p.starts_with("accounts[0].triggers[0].provider: is lemonsqueezy, but the account has no")), "{err}");
        assert!(err.problems.iter().any(|p| p.starts_with("accounts[0].triggers[0].variant_id: a lemonsqueezy trigger needs")), "{err}");
    }

    #[test]
    fn slugs() {
        for ok in ["acme", "a", "acme-2"] {
            assert!(is_slug(ok), "{ok}");
        }
        for bad in ["", "Acme", "a b", "-a", "a/b", &"a".repeat(65)] {
            assert!(!is_slug(bad), "{bad}");
        }
    }
}
