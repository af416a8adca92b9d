//! The configuration file: one TOML file describing the service and every Kommo account it
//! serves. Secrets are never in the file: it names the environment variables that hold them.
//!
//! Loading has two steps. [`ConfigFile`] is the file as written (`file.rs`; it also generates the
//! JSON Schema in `schemas/config.schema.json`); [`Config::resolve`] (`resolve.rs`) validates it,
//! reads the named environment variables and returns the [`Config`] the service runs with (this
//! file). Every problem is reported at once, each naming its key
//! (`accounts[0].stripe.secret_key_env: ...`).

mod file;
mod resolve;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

pub use file::*;
pub use resolve::MIN_KOMMO_WEBHOOK_SECRET_LEN;

use crate::money::Currency;
use crate::retry_policy::RetryPolicy;
use crate::stripe::client::Recurring;

/// Where environment variables come from: the process environment in production, a map in tests.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, for [`Config::load`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The variable that, when set, wins over `database.url`.
pub const DATABASE_URL_ENV: &str = "DATABASE_URL";

#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub log: LogSection,
    pub worker: WorkerConfig,
    pub scheduler: SchedulerSection,
    pub jobs: JobPolicies,
    /// The ops API's bearer tokens, by operator name.
    pub ops_tokens: Vec<OpsToken>,
    /// A console session unused for this long ends.
    pub console_idle: Duration,
    pub metrics: MetricsConfig,
    pub accounts: Accounts,
    /// What is valid but should change (a key that moved), for `config check` to say.
    pub notices: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub path: String,
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct OpsToken {
    pub name: String,
    pub token: SecretString,
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub concurrency: usize,
    pub claim_batch: usize,
    pub max_per_account: usize,
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
pub struct Accounts(BTreeMap<crate::ids::AccountSlug, Arc<Account>>);

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
    pub slug: crate::ids::AccountSlug,
    pub kommo: KommoAccount,
    pub stripe: Option<StripeAccount>,
    pub lemonsqueezy: Option<LemonSqueezyAccount>,
    pub default_currency: Currency,
    /// How long a subscription may stay unpaid after a failed charge before the deal is overdue.
    pub overdue_grace: chrono::Duration,
    pub triggers: Vec<Trigger>,
    pub deals: DealHandling,
    /// `[accounts.deals] fields_from_checkout`: checkout data key → deal field id.
    pub checkout_fields: std::collections::BTreeMap<String, i64>,
}

/// How the account's deals are handled, whichever provider the payment came through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DealHandling {
    pub won_status_id: Option<i64>,
    pub refund_status_id: Option<i64>,
    pub success_manager_id: Option<i64>,
}

impl Account {
    /// The trigger for a deal now in `stage` (pipeline, status), if any.
    pub fn trigger_for(&self, (pipeline_id, status_id): (i64, i64)) -> Option<&Trigger> {
        self.triggers.iter().find(|t| t.pipeline_id == pipeline_id && t.status_id == status_id)
    }

    pub fn trigger(&self, name: &str) -> Option<&Trigger> {
        self.triggers.iter().find(|t| t.name == name)
    }

    /// How a deal whose link came from `trigger` is handled: the trigger's options (its
    /// `paid_status_id` is its won stage), else the account's `[accounts.deals]`.
    pub fn handling(&self, trigger: Option<&str>) -> DealHandling {
        let Some(t) = trigger.and_then(|name| self.trigger(name)) else { return self.deals };
        DealHandling {
            won_status_id: t.paid_status_id.or(self.deals.won_status_id),
            refund_status_id: t.refund_status_id.or(self.deals.refund_status_id),
            success_manager_id: t.success_manager_id.or(self.deals.success_manager_id),
        }
    }

    /// The Lemon Squeezy stores this account sells through: the configured one and the triggers'.
    pub fn lemonsqueezy_stores(&self) -> std::collections::BTreeSet<&str> {
        let configured = self.lemonsqueezy.iter().filter_map(|l| l.store_id.as_deref());
        let triggers = self.triggers.iter().filter_map(|t| match &t.provider {
            TriggerProvider::LemonSqueezy { store_id, .. } => Some(store_id.as_str()),
            TriggerProvider::Stripe => None,
        });
        configured.chain(triggers).collect()
    }
}

#[derive(Debug, Clone)]
pub struct Trigger {
    pub name: String,
    pub pipeline_id: i64,
    pub status_id: i64,
    pub provider: TriggerProvider,
    pub product_name: Option<String>,
    pub description: Option<String>,
    /// Extra key/values carried with the payment.
    pub custom: BTreeMap<String, String>,
    pub reminders: Option<Reminders>,
    /// `Some` for a subscription.
    pub recurring: Option<Recurring>,
    pub redirect_url: Option<String>,
    pub move_to_status_id: Option<i64>,
    pub paid_status_id: Option<i64>,
    pub refund_status_id: Option<i64>,
    pub success_manager_id: Option<i64>,
    pub add_note: bool,
    pub salesbot_id: Option<i64>,
}

/// When an unpaid link's manager is reminded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reminders {
    pub after: chrono::Duration,
    pub every: chrono::Duration,
    pub max: u32,
    /// Launched for the deal at each reminder (Kommo messages the client).
    pub salesbot_id: Option<i64>,
    /// The manager's "remind the client" task at each reminder.
    pub task: bool,
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
    LongLivedToken {
        token: SecretString,
    },
    /// `refresh_token`: the optional bootstrap; an installation stores the pair in the database.
    Oauth {
        client_id: String,
        client_secret: SecretString,
        redirect_uri: url::Url,
        refresh_token: Option<SecretString>,
    },
}

#[derive(Debug, Clone)]
pub struct StripeAccount {
    pub api_base_url: url::Url,
    pub secret_key: SecretString,
    pub webhook_secrets: Vec<SecretString>,
    pub signature_tolerance: Duration,
    pub requests_per_second: f64,
}

#[derive(Debug, Clone)]
pub struct LemonSqueezyAccount {
    pub api_base_url: url::Url,
    pub api_key: SecretString,
    pub webhook_secrets: Vec<SecretString>,
    pub test_mode: bool,
    pub store_id: Option<String>,
    pub self_serve: Option<SelfServeSection>,
}

/// Where a trigger's link comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerProvider {
    Stripe,
    LemonSqueezy { store_id: String, variant_id: String, expires_hours: Option<u32> },
}

impl TriggerProvider {
    pub fn provider(&self) -> crate::provider::Provider {
        match self {
            TriggerProvider::Stripe => crate::provider::Provider::Stripe,
            TriggerProvider::LemonSqueezy { .. } => crate::provider::Provider::LemonSqueezy,
        }
    }
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

impl Config {
    /// Reads, parses and resolves the file at `path`.
    pub fn load(path: &Path, env: Env<'_>) -> Result<Config, ConfigError> {
        let source_name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError { source_name: source_name.clone(), problems: vec![format!("cannot read the file: {e}")] })?;
        Self::parse(&text, &source_name, env)
    }

    /// Parses and resolves a configuration given as TOML text.
    pub fn parse(text: &str, source_name: &str, env: Env<'_>) -> Result<Config, ConfigError> {
        let file: ConfigFile =
            toml::from_str(text).map_err(|e| ConfigError { source_name: source_name.to_owned(), problems: vec![e.to_string().trim_end().to_owned()] })?;
        Self::resolve(file, env).map_err(|problems| ConfigError { source_name: source_name.to_owned(), problems })
    }
}

/// The JSON Schema of the configuration file, as committed in `schemas/config.schema.json`.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(ConfigFile)).expect("a schema serialises")
}
