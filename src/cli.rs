//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub const CONFIG_ENV: &str = "KOMMO_PAY_CONFIG";

/// Connects Kommo CRM deals to Stripe and Lemon Squeezy payments.
///
/// Every role reads one TOML configuration file (see `schemas/config.schema.json`); secrets come
/// from the environment variables it names. `DATABASE_URL`, when set, wins over `database.url`.
#[derive(Debug, Parser)]
#[command(name = "kommo-pay", version)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, short, global = true, env = CONFIG_ENV, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print JSON instead of tables (ops commands), for scripts.
    #[arg(long, global = true)]
    pub json: bool,

    /// Who acts, recorded in the log with every replay and discard (ops commands).
    #[arg(long, global = true, env = "KOMMO_PAY_OPERATOR", value_name = "NAME")]
    pub operator: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run ingest, worker and scheduler in one process (a single VM, or development).
    Serve,
    /// Run the webhook server: verify, append to the event log, enqueue, answer. Scale it out
    /// behind a load balancer; it keeps no state of its own.
    Ingest,
    /// Run jobs from the queue. Run as many as the providers' rate limits allow.
    Worker,
    /// Run the periodic scans; any number may run, one leads.
    Scheduler,
    /// Apply pending database migrations, then exit.
    Migrate,
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Prepare a Kommo account.
    Kommo {
        #[command(subcommand)]
        command: KommoCommand,
    },
    /// Print the OpenAPI document of the ops API (`/ops/v1`).
    Openapi,
    /// Search the event log, show one event and the jobs it caused, replay an event.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Dead letters (jobs that failed for good): list, count, show, replay, discard.
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
    /// The queue: jobs by state, kind and account; the oldest waiting job; what runs where.
    Queue,
    /// The projections (payment links, payments, subscriptions, failed-payment runs, self-serve
    /// deals): tables folded from the event log.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// A deal's payment history, read from the event log alone.
    History {
        #[arg(long)]
        account: String,
        /// The Kommo lead (deal) id.
        #[arg(long)]
        lead: i64,
        /// `table`, `json` or `csv` (`--json` is the same as `--format json`).
        #[arg(long, default_value = "table")]
        format: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Empty them and apply every recorded change again from the log, in one transaction.
    /// Refused while jobs run: stop the workers first.
    Rebuild,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List events, newest first; `--cursor` continues where a page ended.
    List(EventArgs),
    /// One event: its payload and the jobs it caused, with their outcomes.
    Show { id: String },
    /// Derive the event's jobs again (after a bug fix) and enqueue them, linked to the event.
    Replay {
        id: String,
        /// Why, for the audit log.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct EventArgs {
    #[arg(long)]
    pub account: Option<String>,
    #[arg(long)]
    pub lead: Option<i64>,
    /// kommo, stripe, lemonsqueezy or internal.
    #[arg(long)]
    pub source: Option<String>,
    #[arg(long)]
    pub kind: Option<String>,
    /// Received at or after (RFC 3339, e.g. 2026-11-26T10:00:00Z).
    #[arg(long)]
    pub from: Option<String>,
    /// Received before (RFC 3339).
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long)]
    pub cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[arg(long)]
    pub limit: Option<i64>,
}

#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// List dead jobs, oldest first; `--cursor` continues where a page ended.
    List {
        #[command(flatten)]
        filter: DeadArgs,
        #[arg(long)]
        cursor: Option<String>,
        /// Page size, 1 to 1000 (default 100).
        #[arg(long)]
        limit: Option<i64>,
    },
    /// Count dead jobs by kind and last error.
    Counts {
        #[command(flatten)]
        filter: DeadArgs,
    },
    /// One job (dead or not): arguments, every attempt's error, the causing event, the deal.
    Show { id: i64 },
    /// Run dead jobs again: each gets a new job linked to it. Name them by id, by filter, or
    /// `--all`; `--dry-run` only counts them.
    Replay(ActArgs),
    /// Give up on dead jobs for good, with a reason.
    Discard(ActArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct DeadArgs {
    #[arg(long)]
    pub account: Option<String>,
    #[arg(long)]
    pub kind: Option<String>,
    #[arg(long)]
    pub lead: Option<i64>,
    /// Part of the last error, ignoring case.
    #[arg(long)]
    pub error: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ActArgs {
    /// Job ids; or leave out and filter.
    pub ids: Vec<i64>,
    #[command(flatten)]
    pub filter: DeadArgs,
    /// Every dead job (when no id or filter is given).
    #[arg(long)]
    pub all: bool,
    /// Why, for the audit log.
    #[arg(long)]
    pub reason: String,
    /// Only count what would be acted on.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum KommoCommand {
    /// Create the deal fields kommo-pay uses where they are missing (found by their code, so
    /// running it again changes nothing), then print the `[accounts.kommo.fields]` section to
    /// paste into the account's configuration. Needs an admin's token.
    Setup {
        /// The account's slug in the configuration.
        #[arg(long)]
        account: String,
    },
    /// Connect an OAuth account: prints the consent URL for an admin of the client account
    /// (Kommo then redirects to ingest's `/oauth/kommo/callback`, which completes it); with
    /// `--code`, exchanges an authorization code copied from Kommo here instead.
    Connect {
        #[arg(long)]
        account: String,
        /// An authorization code (valid 20 minutes, once).
        #[arg(long)]
        code: Option<String>,
        /// The client account's host the code came from (Kommo's `referer`, e.g.
        /// `acme.kommo.com`); checked against the account's `base_url` when given.
        #[arg(long)]
        referer: Option<String>,
    },
    /// Let calls for the account go out again after Kommo blocked it (403: every call stops
    /// until an operator has fixed the cause and says so here, with a reason for the log).
    Unblock {
        #[arg(long)]
        account: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration file and the environment variables it names, then exit.
    /// Exits non-zero and lists every problem, each with its key, when something is wrong.
    Check,
    /// Print the JSON Schema of the configuration file.
    Schema,
}
