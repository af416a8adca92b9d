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
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration file and the environment variables it names, then exit.
    /// Exits non-zero and lists every problem, each with its key, when something is wrong.
    Check,
    /// Print the JSON Schema of the configuration file.
    Schema,
}
