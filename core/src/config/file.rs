//! The configuration file as written: what each key means, its default, and the JSON Schema
//! generated from these types.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::retry_policy::RetryPolicy;

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
    pub scheduler: SchedulerSection,
    #[serde(default)]
    pub jobs: JobsSection,
    #[serde(default)]
    pub ops: OpsSection,
    #[serde(default)]
    pub metrics: MetricsSection,
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
    /// How long a request may wait for a connection, and a webhook for its commit (whatever it
    /// waits on), before the answer is 503, in milliseconds. Kommo gives up after 2 s, so keep it
    /// well below that.
    pub acquire_timeout_ms: u64,
    /// Apply pending migrations when a role starts (otherwise run `kommo-pay migrate`).
    pub migrate_on_start: bool,
    /// The most appends to the event log running at once in one ingest process. Deliveries
    /// arriving meanwhile are committed together as the next batch (group commit); beyond the
    /// first, an append starts only for a backlog of at least 4 events. 2 suits a 2-core
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
    /// The most jobs of one account running at once, across every worker process: a burst in one
    /// account leaves slots to the others (each account's Kommo budget is its own). Runnable
    /// jobs are claimed account by account in turns, oldest first within an account.
    pub max_per_account: usize,
    /// How often an idle worker looks for work when no wake-up arrives, in milliseconds.
    pub poll_interval_ms: u64,
    /// How often a worker marks its running jobs alive, in milliseconds. A job whose worker
    /// died is taken back within two intervals and runs again after its kind's backoff.
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
            concurrency: 1000,
            claim_batch: 1000,
            max_per_account: 250,
            poll_interval_ms: 1000,
            heartbeat_interval_ms: 5000,
            job_timeout_secs: 60,
            shutdown_grace_secs: 30,
        }
    }
}

/// The scheduler role.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSection {
    /// Seconds between scans of the database (unpaid-link reminders, overdue subscriptions).
    pub scan_interval_secs: u64,
    /// Seconds between a scheduler's checks of its leadership: a dead leader is replaced within
    /// about this long.
    pub leader_check_secs: u64,
    /// Seconds between reconciliations: reading each provider's recent history for what
    /// webhooks missed.
    pub reconcile_interval_secs: u64,
    /// How far back an account's first reconciliation reads, in hours (later ones continue
    /// from where the last stopped). Stripe keeps events for 30 days.
    pub reconcile_lookback_hours: u64,
    /// Seconds between housekeeping rounds (pruning finished jobs).
    pub housekeeping_interval_secs: u64,
    /// Days a completed or discarded job stays in the queue table. Its event and facts stay in
    /// the log for good; dead-lettered jobs stay until an operator replays or discards them.
    pub finished_job_retention_days: u64,
}

impl Default for SchedulerSection {
    fn default() -> Self {
        Self {
            scan_interval_secs: 60,
            leader_check_secs: 5,
            reconcile_interval_secs: 300,
            reconcile_lookback_hours: 24,
            housekeeping_interval_secs: 3600,
            finished_job_retention_days: 7,
        }
    }
}

/// Prometheus metrics.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// The path of the metrics, on the ingest server and on `listen`.
    pub path: String,
    /// An address of its own for metrics (and `/healthz`), in every role: how worker and
    /// scheduler processes are scraped. Unset: only the ingest server serves them.
    pub listen: Option<String>,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self { path: "/metrics".into(), listen: None }
    }
}

/// The ops API (`/ops/v1/…`) and the ops console (`/console`) on the ingest server. Without
/// tokens both refuse every request.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OpsSection {
    /// Who may call the ops API and sign in to the console: each token's name is recorded in the
    /// log with what its holder did.
    pub tokens: Vec<OpsTokenSection>,
    /// A console session unused for this long ends, in minutes.
    pub console_idle_minutes: u64,
}

impl Default for OpsSection {
    fn default() -> Self {
        Self { tokens: Vec::new(), console_idle_minutes: 30 }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpsTokenSection {
    /// The operator (a person or a tool), e.g. `alice` or `runbook-bot`.
    pub name: String,
    /// Environment variable holding the bearer token (at least 32 characters).
    pub token_env: String,
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
    /// Days a subscription may stay unpaid after a failed charge (while the provider retries the
    /// card) before its deal is marked Overdue and the manager gets a task. 0 marks it at the
    /// next scan.
    #[serde(default = "default_overdue_grace_days")]
    pub overdue_grace_days: u32,
    /// Stages that issue a payment link when a deal enters them.
    #[serde(default)]
    pub triggers: Vec<TriggerSection>,
    /// How deals are handled whichever provider the payment came through.
    #[serde(default)]
    pub deals: DealsSection,
}

fn default_overdue_grace_days() -> u32 {
    3
}

fn default_currency() -> String {
    "USD".into()
}

/// A deal entering `pipeline_id`/`status_id` gets a payment link.
/// How the account's deals are handled, for Stripe and Lemon Squeezy alike.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DealsSection {
    /// The stage a paid deal moves to when its trigger names no `paid_status_id` (Lemon Squeezy
    /// deals otherwise move to 142, won; Stripe deals otherwise stay where they are).
    pub won_status_id: Option<i64>,
    /// The "needs attention" stage a deal moves to when its payment is refunded.
    pub refund_status_id: Option<i64>,
    /// The customer-success manager who gets the task when a subscription is cancelled
    /// (default: the deal's responsible manager).
    pub success_manager_id: Option<i64>,
    /// Deal fields filled from what a checkout carried (Lemon Squeezy's `checkout_data.custom`,
    /// Stripe's metadata): key → Kommo deal field id, e.g. `{ utm_source = 1246600, plan =
    /// 1246601 }`. Written when a paid order, session or invoice carries the key (a self-serve
    /// buyer's new deal too). The value is checked against the field's type — text, numeric,
    /// url, checkbox, date, select and multiselect by option label — and one the field cannot
    /// take goes into a note on the deal instead. Keys starting with `kommo_` are kommo-pay's own.
    #[serde(default)]
    pub fields_from_checkout: std::collections::BTreeMap<String, i64>,
}

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
    /// The product name the client sees (default: the deal's name), and a description.
    pub product_name: Option<String>,
    pub description: Option<String>,
    /// Extra key/values carried with the payment (Stripe metadata, Lemon Squeezy custom data).
    #[serde(default)]
    pub custom: BTreeMap<String, String>,
    /// Days after the link was issued, unpaid, when the manager gets a "remind the client" task.
    /// No reminders when unset.
    pub remind_after_days: Option<u32>,
    /// Reminders per link at most.
    #[serde(default = "three")]
    pub max_reminders: u32,
    /// Days between reminders (default: remind_after_days).
    pub remind_every_days: Option<u32>,
    /// This trigger's deals' "needs attention" stage when refunded (default: `[accounts.deals]`).
    pub refund_status_id: Option<i64>,
    /// Who gets this trigger's deals' cancellation tasks (default: `[accounts.deals]`).
    pub success_manager_id: Option<i64>,
    /// A Salesbot launched for the deal at each reminder, so that Kommo messages the client
    /// (WhatsApp, email…) with the link without a manager's click; once per reminder, never for a
    /// paid, replaced, won or lost deal. Needs remind_after_days.
    pub remind_salesbot_id: Option<i64>,
    /// Whether each reminder also gives the manager a "remind the client" task (default true;
    /// false with remind_salesbot_id to remind by message only).
    #[serde(default = "yes")]
    pub remind_task: bool,
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
fn three() -> u32 {
    3
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

impl FieldsSection {
    /// Every field kommo-pay reads or writes itself.
    pub fn ids(&self) -> Vec<i64> {
        let fixed = [self.payment_link, self.payment_status, self.payment_date, self.payment_id, self.paid_amount];
        fixed.into_iter().chain([self.amount_due, self.refunded_amount, self.currency].into_iter().flatten()).collect()
    }
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
    /// OAuth 2.0 (a public or an agency's integration): an admin of the client account installs
    /// it (`kommo-pay kommo connect`), the pair is stored in PostgreSQL, refreshed before expiry
    /// and rotated at every refresh.
    Oauth {
        /// The integration's id (Kommo: Settings → Integrations → the integration → Keys).
        client_id: String,
        /// Environment variable holding the client secret.
        client_secret_env: String,
        /// The integration's redirect URI: ingest's `/oauth/kommo/callback`, e.g.
        /// `https://pay.agency.example/oauth/kommo/callback`, exactly as entered in Kommo.
        redirect_uri: String,
        /// Optional bootstrap: an environment variable holding a refresh token obtained elsewhere;
        /// unused once the account is connected (the stored pair wins).
        refresh_token_env: Option<String>,
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
    /// Requests per second to Stripe's API from one process for this account. Stripe allows
    /// 100 in live mode and 25 in test mode, the defaults by the key's mode (`sk_test_`,
    /// `rk_test_`); a 429 beyond it is retried after a pause.
    pub requests_per_second: Option<f64>,
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
    /// The store whose orders and subscriptions reconciliation reads, besides the stores named
    /// by triggers (set it when self-serve buyers use a store no trigger names).
    pub store_id: Option<String>,
    /// Moved to `[accounts.deals] refund_status_id` (for both providers); still read here.
    pub refund_status_id: Option<i64>,
    /// Moved to `[accounts.deals] success_manager_id` (for both providers); still read here.
    pub success_manager_id: Option<i64>,
    /// Deals for buyers who paid without one (self-serve).
    pub self_serve: Option<SelfServeSection>,
}

/// Where self-serve buyers' deals go, and who gets them.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelfServeSection {
    pub pipeline_id: i64,
    pub status_id: i64,
    /// Managers taking turns (round robin, fair across all worker processes). A checkout whose
    /// custom data has `manager_id` naming one of these (or of the rules' managers) goes to that
    /// manager before any rule or turn; one naming someone else is noted and ignored.
    pub responsible_user_ids: Vec<i64>,
    /// Tags for the new deals.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Rules that pick the manager before the round robin: the first whose variant matches.
    #[serde(default)]
    pub rules: Vec<SelfServeRule>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelfServeRule {
    /// The Lemon Squeezy variant (plan) bought.
    pub variant_id: String,
    pub responsible_user_id: i64,
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
