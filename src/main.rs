//! `kommo-pay`: one binary, one subcommand per role. This file parses the command line and
//! dispatches; what each command does lives in `roles`, `setup` and `ops`.

mod cli;
mod ops;
mod roles;
mod setup;

use std::path::Path;

use anyhow::Context;
use clap::Parser;
use kommo_pay_core::config::{self, Config};
use kommo_pay_core::{db, telemetry};

use cli::{Cli, Command, ConfigCommand, KommoCommand};
use roles::Roles;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(ops::exit_code(&error))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // What needs no configuration, then what needs no database.
    match &cli.command {
        Command::Config { command: ConfigCommand::Schema } => return print_json(&config::json_schema()),
        Command::Openapi => return print_json(&kommo_pay_core::ops::openapi::document()),
        Command::Config { command: ConfigCommand::Check } => {
            setup::check(&load_config(cli.config.as_deref())?).await;
            return Ok(());
        }
        _ => {}
    }
    let config = load_config(cli.config.as_deref())?;
    let spans = telemetry::init(&config.log);
    let pool = db::connect(&config.database).await?;
    let ran = match cli.command {
        Command::Serve => roles::run(Roles::ALL, &config, &pool).await,
        Command::Ingest => roles::run(Roles::INGEST, &config, &pool).await,
        Command::Worker => roles::run(Roles::WORKER, &config, &pool).await,
        Command::Scheduler => roles::run(Roles::SCHEDULER, &config, &pool).await,
        Command::Migrate => db::migrate(&pool).await.map(|()| println!("migrations applied")),
        Command::Kommo { command: KommoCommand::Connect { account, code, referer } } => {
            setup::connect(&pool, &config, &account, code.as_deref(), referer.as_deref()).await
        }
        Command::Kommo { command: KommoCommand::Setup { account } } => setup::fields(&pool, &config, &account).await,
        command @ (Command::Events { .. }
        | Command::Dead { .. }
        | Command::Queue
        | Command::History { .. }
        | Command::Projections { .. }
        | Command::Kommo { command: KommoCommand::Unblock { .. } }) => ops::run(command, &pool, &config, cli.json, &ops::operator(cli.operator)).await,
        Command::Config { .. } | Command::Openapi => unreachable!("answered before the configuration is read"),
    };
    spans.shutdown();
    ran
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let path = path.context(format!("no configuration file: pass --config FILE or set {}", cli::CONFIG_ENV))?;
    Ok(Config::load(path, &config::process_env)?)
}
