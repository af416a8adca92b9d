//! One client per provider for an account, built the same way by every role that calls out.

use std::sync::Arc;

use sqlx::PgPool;

use crate::config::Account;
use crate::kommo::client::KommoClient;
use crate::lemonsqueezy::client::LemonSqueezyClient;
use crate::stripe::client::StripeClient;

pub struct AccountClients {
    pub account: Arc<Account>,
    pub kommo: KommoClient,
    /// When the account has an `[accounts.stripe]` section.
    pub stripe: Option<StripeClient>,
    /// When the account has an `[accounts.lemonsqueezy]` section.
    pub lemonsqueezy: Option<LemonSqueezyClient>,
}

/// The clients of every account, built once and shared by whatever in a process calls out.
pub fn for_accounts(pool: &PgPool, accounts: &crate::config::Accounts) -> Arc<[AccountClients]> {
    accounts.iter().map(|account| AccountClients::new(pool, account)).collect()
}

impl AccountClients {
    pub fn new(pool: &PgPool, account: &Arc<Account>) -> AccountClients {
        AccountClients {
            account: account.clone(),
            kommo: KommoClient::for_account(pool.clone(), account),
            stripe: account.stripe.as_ref().map(|s| StripeClient::new(s.api_base_url.clone(), s.secret_key.clone()).paced(s.requests_per_second)),
            lemonsqueezy: account
                .lemonsqueezy
                .as_ref()
                .map(|l| LemonSqueezyClient::new(pool.clone(), &account.slug, l.api_base_url.clone(), l.api_key.clone())),
        }
    }
}
