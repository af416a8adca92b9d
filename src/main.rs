//! `kommo-pay`: one binary, one subcommand per role.

mod cli;
mod ops;

use std::path::Path;

use anyhow::Context;
use clap::Parser;
use kommo_pay_core::config::{self, Config};
use kommo_pay_core::provider::Provider;
use kommo_pay_core::{db, telemetry};
use tokio::sync::watch;

use cli::{Cli, Command, ConfigCommand, KommoCommand};

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
    if let Command::Config { command: ConfigCommand::Schema } = cli.command {
        println!("{}", serde_json::to_string_pretty(&config::json_schema())?);
        return Ok(());
    }
    if let Command::Openapi = cli.command {
        println!("{}", serde_json::to_string_pretty(&kommo_pay_core::ops::openapi::document())?);
        return Ok(());
    }
    let config = load_config(cli.config.as_deref())?;
    if let Command::Config { command: ConfigCommand::Check } = cli.command {
        println!("configuration is valid: {} account(s)", config.accounts.len());
        for account in config.accounts.iter() {
            let providers: Vec<&str> =
                [(Provider::Stripe.as_str(), account.stripe.is_some()), (Provider::LemonSqueezy.as_str(), account.lemonsqueezy.is_some())]
                    .iter()
                    .filter_map(|(name, on)| on.then_some(*name))
                    .collect();
            println!("  {} (Kommo account {}): {}", account.slug, account.kommo.account_id, providers.join(", "));
        }
        for notice in &config.notices {
            println!("note: {notice}");
        }
        not_connected(&config).await;
        return Ok(());
    }

    let spans = telemetry::init(&config.log);
    let pool = db::connect(&config.database).await?;
    if matches!(cli.command, Command::Migrate) {
        db::migrate(&pool).await?;
        println!("migrations applied");
        return Ok(());
    }
    if let Command::Kommo { command: KommoCommand::Connect { account, code, referer } } = &cli.command {
        let account = config.accounts.get(account).with_context(|| format!("no account {account:?} in the configuration"))?;
        db::migrate(&pool).await?;
        match code {
            None => {
                let consent = kommo_pay_core::kommo::oauth::begin(&pool, account).await?;
                eprintln!("An admin of the client account opens this link (valid 20 minutes, once) and allows access:");
                println!("{consent}");
                eprintln!("Kommo then sends them to the integration's redirect URI (ingest's /oauth/kommo/callback), which connects the account.");
            }
            Some(code) => {
                let connected = kommo_pay_core::kommo::oauth::exchange(&pool, account, code, referer.as_deref(), "cli").await?;
                println!("account {} is connected to Kommo ({}); its access token is valid until {}", connected.account, connected.host, connected.expires_at);
            }
        }
        return Ok(());
    }
    if let Command::Kommo { command: KommoCommand::Setup { account } } = &cli.command {
        let account = config.accounts.get(account).with_context(|| format!("no account {account:?} in the configuration"))?;
        db::migrate(&pool).await?;
        let kommo = kommo_pay_core::kommo::client::KommoClient::for_account(pool.clone(), account);
        let done = kommo_pay_core::kommo::setup::run(&kommo).await?;
        match done.created.as_slice() {
            [] => eprintln!("all fields exist already; nothing was created"),
            created => eprintln!("created the fields: {}", created.join(", ")),
        }
        eprintln!("paste this into the [[accounts]] entry of {:?}:\n", account.slug);
        print!("{}", done.config);
        return Ok(());
    }
    if matches!(
        cli.command,
        Command::Events { .. }
            | Command::Dead { .. }
            | Command::Queue
            | Command::History { .. }
            | Command::Projections { .. }
            | Command::Kommo { command: KommoCommand::Unblock { .. } }
    ) {
        let operator = ops::operator(cli.operator);
        return ops::run(cli.command, &pool, &config, cli.json, &operator).await;
    }
    if config.database.migrate_on_start {
        db::migrate(&pool).await?;
    }

    let stop = shutdown_signal();
    let (ingest, worker, scheduler) = match cli.command {
        Command::Serve => (true, true, true),
        Command::Ingest => (true, false, false),
        Command::Worker => (false, true, false),
        Command::Scheduler => (false, false, true),
        Command::Migrate | Command::Config { .. } | Command::Kommo { .. } => unreachable!("handled above"),
        Command::Events { .. } | Command::Dead { .. } | Command::Queue | Command::History { .. } | Command::Projections { .. } | Command::Openapi => {
            unreachable!("handled above")
        }
    };
    let ingest = async {
        if ingest {
            let app = kommo_pay_ingest::Application::build(&config, pool.clone()).await?;
            app.run_until_stopped(stopped(stop.clone())).await.context("the ingest server failed")?;
        }
        anyhow::Ok(())
    };
    let worker = async {
        if worker {
            let context = kommo_pay_worker::Context::new(pool.clone(), &config.accounts);
            let handlers = kommo_pay_worker::handlers(context);
            let runner = kommo_pay_worker::Worker::new(pool.clone(), handlers, config.worker.clone(), config.jobs.clone());
            runner.run(stopped(stop.clone())).await?;
        }
        anyhow::Ok(())
    };
    let scheduler = async {
        if scheduler {
            kommo_pay_scheduler::run(pool.clone(), config.accounts.clone(), config.jobs.clone(), &config.scheduler, stopped(stop.clone())).await?;
        }
        anyhow::Ok(())
    };
    let metrics = async {
        if let Some(listen) = config.metrics.listen {
            kommo_pay_ingest::serve_metrics(listen, &config.metrics.path, pool.clone(), stopped(stop.clone())).await?;
        }
        anyhow::Ok(())
    };
    let ran = tokio::try_join!(ingest, worker, scheduler, metrics);
    tracing::info!("stopped");
    spans.shutdown();
    ran.map(drop)
}

/// Says which OAuth accounts have no installation yet (reading the database, when it answers
/// within a few seconds: the configuration itself is valid either way).
async fn not_connected(config: &Config) {
    let oauth: Vec<_> = config.accounts.iter().filter(|a| matches!(a.kommo.auth, kommo_pay_core::config::KommoAuth::Oauth { .. })).collect();
    if oauth.is_empty() {
        return;
    }
    let pool = match tokio::time::timeout(std::time::Duration::from_secs(5), db::connect(&config.database)).await {
        Ok(Ok(pool)) => pool,
        _ => {
            println!("OAuth accounts' connections not checked: the database did not answer");
            return;
        }
    };
    for account in oauth {
        match kommo_pay_core::kommo::oauth::connected(&pool, account).await {
            Ok(true) => {}
            Ok(false) => println!("  {}: OAuth, not connected yet: run `kommo-pay kommo connect --account {}`", account.slug, account.slug),
            Err(error) => println!("  {}: OAuth connection not checked: {error}", account.slug),
        }
    }
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let path = path.context(format!("no configuration file: pass --config FILE or set {}", cli::CONFIG_ENV))?;
    Ok(Config::load(path, &config::process_env)?)
}

/// Flips to `true` on SIGTERM or Ctrl-C.
fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested");
        let _ = tx.send(true);
    });
    rx
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
