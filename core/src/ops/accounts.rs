//! Each account's health, as the console's overview shows it: are its Kommo calls paused or
//! blocked, has Kommo disabled its webhooks, how far behind is reconciliation, when does its
//! OAuth token expire, and how much of its Kommo budget is it using.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use sqlx::PgPool;

use super::OpsError;
use crate::config::{Accounts, KommoAuth};
use crate::provider::Provider;

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AccountHealth {
    pub account: String,
    /// After Kommo's 429: no call goes out before this.
    pub kommo_paused_until: Option<DateTime<Utc>>,
    /// Provider calls stopped until an operator unblocks them.
    pub blocked: Vec<super::queue_stats::Blocked>,
    /// When reconciliation last listed the account's Kommo webhooks (none yet: never).
    pub webhooks_checked_at: Option<DateTime<Utc>>,
    /// Ids of the hooks Kommo had disabled at that check.
    pub webhooks_disabled: Vec<String>,
    /// How far back each provider's reconciliation has read.
    pub reconciled: Vec<Reconciled>,
    /// For an OAuth integration: the stored token's state (absent for a long-lived token).
    pub oauth: Option<OauthState>,
    /// Kommo requests per second over the last ten to twenty seconds.
    pub kommo_requests_per_second: f64,
    /// The configured budget (`requests_per_second`).
    pub kommo_limit: f64,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Reconciled {
    pub provider: String,
    /// Everything before this has been read.
    pub read_until: DateTime<Utc>,
    /// Seconds between that and now.
    pub lag_secs: f64,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct OauthState {
    /// When the stored access token expires (it is refreshed before; absent before installing).
    pub expires_at: Option<DateTime<Utc>>,
    pub connected_at: Option<DateTime<Utc>>,
    /// Set when Kommo said the integration was uninstalled.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The health of every configured account, in slug order.
pub async fn health(pool: &PgPool, accounts: &Accounts) -> Result<Vec<AccountHealth>, OpsError> {
    type Limit = (String, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<String>, f64);
    let limits: Vec<Limit> = sqlx::query_as(
        "SELECT provider, account, paused_until, blocked_at, blocked_reason,
                -- The window running now, with the ten seconds before it when they had requests.
                CASE WHEN window_start > now() - interval '10 seconds'
                     THEN (window_requests + last_window_requests)
                          / (greatest(extract(epoch FROM now() - window_start), 1) + CASE WHEN last_window_requests > 0 THEN 10 ELSE 0 END)
                     WHEN window_start > now() - interval '20 seconds' THEN window_requests / 10.0
                     ELSE 0 END::float8
         FROM api_limits",
    )
    .fetch_all(pool)
    .await?;
    let checks: Vec<(String, DateTime<Utc>, Vec<String>)> =
        sqlx::query_as("SELECT account, checked_at, disabled_ids FROM kommo_webhook_checks").fetch_all(pool).await?;
    let cursors: Vec<(String, String, DateTime<Utc>, f64)> =
        sqlx::query_as("SELECT account, provider, read_until, extract(epoch FROM now() - read_until)::float8 FROM reconcile_cursors ORDER BY provider")
            .fetch_all(pool)
            .await?;
    type Token = (String, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    let tokens: Vec<Token> = sqlx::query_as("SELECT account, expires_at, connected_at, revoked_at FROM kommo_tokens").fetch_all(pool).await?;

    Ok(accounts
        .iter()
        .map(|account| {
            let slug = account.slug.as_str();
            let mine = limits.iter().filter(|limit| limit.1 == slug);
            let kommo = mine.clone().find(|limit| limit.0 == Provider::Kommo.as_str());
            let check = checks.iter().find(|check| check.0 == slug);
            let oauth = matches!(account.kommo.auth, KommoAuth::Oauth { .. }).then(|| {
                let token = tokens.iter().find(|token| token.0 == slug);
                OauthState { expires_at: token.and_then(|t| t.1), connected_at: token.and_then(|t| t.2), revoked_at: token.and_then(|t| t.3) }
            });
            AccountHealth {
                account: slug.to_owned(),
                kommo_paused_until: kommo.and_then(|limit| limit.2).filter(|until| *until > Utc::now()),
                blocked: mine
                    .filter_map(|(provider, account, _, since, reason, _)| {
                        since.map(|since| super::queue_stats::Blocked { provider: provider.clone(), account: account.clone(), since, reason: reason.clone() })
                    })
                    .collect(),
                webhooks_checked_at: check.map(|check| check.1),
                webhooks_disabled: check.map(|check| check.2.clone()).unwrap_or_default(),
                reconciled: cursors
                    .iter()
                    .filter(|cursor| cursor.0 == slug)
                    .map(|(_, provider, read_until, lag)| Reconciled { provider: provider.clone(), read_until: *read_until, lag_secs: lag.max(0.0) })
                    .collect(),
                oauth,
                kommo_requests_per_second: kommo.map_or(0.0, |limit| limit.5),
                kommo_limit: account.kommo.requests_per_second,
            }
        })
        .collect())
}

/// Records what reconciliation found when it listed `account`'s Kommo webhooks.
pub async fn record_webhook_check(pool: &PgPool, account: &str, disabled_ids: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO kommo_webhook_checks (account, checked_at, disabled_ids) VALUES ($1, now(), $2)
         ON CONFLICT (account) DO UPDATE SET checked_at = now(), disabled_ids = $2",
    )
    .bind(account)
    .bind(disabled_ids)
    .execute(pool)
    .await?;
    Ok(())
}
