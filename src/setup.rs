//! The commands that prepare an account: `config check`, `kommo connect`, `kommo setup`.

use anyhow::Context;
use kommo_pay_core::config::{Account, Config, KommoAuth};
use kommo_pay_core::db;
use kommo_pay_core::kommo::{client::KommoClient, oauth, setup};
use kommo_pay_core::provider::Provider;
use sqlx::PgPool;

/// `config check`: the configuration parsed (or the error, from loading it), its accounts and
/// their providers, the notices, and which OAuth accounts are not connected yet.
pub async fn check(config: &Config) {
    println!("configuration is valid: {} account(s)", config.accounts.len());
    for account in config.accounts.iter() {
        let providers: Vec<&str> = [(Provider::Stripe, account.stripe.is_some()), (Provider::LemonSqueezy, account.lemonsqueezy.is_some())]
            .iter()
            .filter_map(|(provider, on)| on.then_some(provider.as_str()))
            .collect();
        println!("  {} (Kommo account {}): {}", account.slug, account.kommo.account_id, providers.join(", "));
    }
    for notice in &config.notices {
        println!("note: {notice}");
    }
    not_connected(config).await;
}

/// Says which OAuth accounts have no installation yet (reading the database, when it answers
/// within a few seconds: the configuration itself is valid either way).
async fn not_connected(config: &Config) {
    let installed: Vec<_> = config.accounts.iter().filter(|a| matches!(a.kommo.auth, KommoAuth::Oauth { .. })).collect();
    if installed.is_empty() {
        return;
    }
    let pool = match tokio::time::timeout(std::time::Duration::from_secs(5), db::connect(&config.database)).await {
        Ok(Ok(pool)) => pool,
        _ => {
            println!("OAuth accounts' connections not checked: the database did not answer");
            return;
        }
    };
    for account in installed {
        match oauth::connected(&pool, account).await {
            Ok(true) => {}
            Ok(false) => println!("  {}: OAuth, not connected yet: run `kommo-pay kommo connect --account {}`", account.slug, account.slug),
            Err(error) => println!("  {}: OAuth connection not checked: {error}", account.slug),
        }
    }
}

/// `kommo connect`: without a code, the consent URL an admin of the client account opens; with
/// one (copied from the redirect), the exchange for the account's tokens.
pub async fn connect(pool: &PgPool, config: &Config, slug: &str, code: Option<&str>, referer: Option<&str>) -> anyhow::Result<()> {
    let account = account(config, slug)?;
    db::migrate(pool).await?;
    match code {
        None => {
            let consent = oauth::begin(pool, account).await?;
            eprintln!("An admin of the client account opens this link (valid 20 minutes, once) and allows access:");
            println!("{consent}");
            eprintln!("Kommo then sends them to the integration's redirect URI (ingest's /oauth/kommo/callback), which connects the account.");
        }
        Some(code) => {
            let connected = oauth::exchange(pool, account, code, referer, "cli").await?;
            println!("account {} is connected to Kommo ({}); its access token is valid until {}", connected.account, connected.host, connected.expires_at);
        }
    }
    Ok(())
}

/// `kommo setup`: creates the deal fields kommo-pay writes (those missing) and prints the
/// account's `fields` section.
pub async fn fields(pool: &PgPool, config: &Config, slug: &str) -> anyhow::Result<()> {
    let account = account(config, slug)?;
    db::migrate(pool).await?;
    let done = setup::run(&KommoClient::for_account(pool.clone(), account)).await?;
    match done.created.as_slice() {
        [] => eprintln!("all fields exist already; nothing was created"),
        created => eprintln!("created the fields: {}", created.join(", ")),
    }
    eprintln!("paste this into the [[accounts]] entry of {:?}:\n", account.slug);
    print!("{}", done.config);
    Ok(())
}

fn account<'a>(config: &'a Config, slug: &str) -> anyhow::Result<&'a std::sync::Arc<Account>> {
    config.accounts.get(slug).with_context(|| format!("no account {slug:?} in the configuration"))
}
