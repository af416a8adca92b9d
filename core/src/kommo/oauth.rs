//! Kommo OAuth 2.0 installation: the consent URL with its one-time `state`, the exchange of the
//! authorization code Kommo hands back (callback or operator), the token endpoint shared with the
//! client's refreshes, and the signed "access revoked" hook Kommo calls on uninstall.
//!
//! A connected account's pair lives in `kommo_tokens` (the refresh token rotates on every
//! refresh, `client.rs`); an uninstalled one is blocked like a 403 (its calls stop) until it is
//! connected again.

use crate::ids::AccountSlug;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sqlx::{PgExecutor, PgPool};

use crate::config::{Account, Accounts, KommoAuth};
use crate::event_log::{self, Fact};
use crate::provider::Provider;

/// Where an admin of the client account consents (Kommo's host for every account).
pub const CONSENT_URL: &str = "https://www.kommo.com/oauth";
/// A consent's `state` is good for as long as Kommo's authorization code: 20 minutes.
const STATE_MINUTES: i64 = 20;
/// The block an uninstall puts on the account; connecting again lifts it (and only it).
pub const REVOKED: &str = "Kommo access revoked: the integration was uninstalled";

/// Why an installation, or a revocation hook, was not accepted. Every message is for the person
/// at the browser or the terminal, and names no secret.
#[derive(Debug, thiserror::Error)]
pub enum OauthError {
    #[error("account {0:?} is not configured")]
    UnknownAccount(String),
    #[error("account {0} does not use OAuth: its [accounts.kommo.auth] kind is long_lived_token")]
    NotOauth(crate::ids::AccountSlug),
    #[error("this installation link is unknown to kommo-pay: start again with `kommo-pay kommo connect --account SLUG`")]
    UnknownState,
    #[error("this installation link was used already: start again with `kommo-pay kommo connect --account {0}`")]
    StateUsed(String),
    #[error("this installation link expired (links last {STATE_MINUTES} minutes): start again with `kommo-pay kommo connect --account {0}`")]
    StateExpired(String),
    #[error("the installation is for integration {got:?}, but account {account} is configured with integration {expected:?}")]
    WrongClient { account: crate::ids::AccountSlug, got: String, expected: String },
    #[error("the installation came from {referer}, but account {account} is configured for {expected}")]
    WrongAccount { account: crate::ids::AccountSlug, referer: String, expected: String },
    #[error("Kommo refused the authorization code ({0}); codes last 20 minutes and work once: start again with `kommo-pay kommo connect`")]
    Refused(String),
    #[error("Kommo's token endpoint could not be used: {0}")]
    Unavailable(String),
    #[error("the revocation hook's signature does not match any configured OAuth account")]
    BadSignature,
    #[error("the database: {0}")]
    Database(#[from] sqlx::Error),
}

impl OauthError {
    /// The caller's mistake (400/401), not ours or Kommo's (503).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, OauthError::Unavailable(_) | OauthError::Database(_))
    }
}

/// An account that got its token pair.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Connected {
    pub account: AccountSlug,
    /// The Kommo host it was installed from.
    pub host: String,
    pub expires_at: DateTime<Utc>,
}

/// What Kommo's redirect to the integration's `redirect_uri` carries.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Callback {
    pub code: String,
    pub state: String,
    /// The client account's host, e.g. `acme.kommo.com`.
    pub referer: Option<String>,
    pub client_id: Option<String>,
}

/// What Kommo's "access revoked" hook carries (a GET).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Revocation {
    pub client_uuid: String,
    pub account_id: i64,
    /// Hex HMAC-SHA256 of `{client_uuid}|{account_id}`, keyed by the client secret.
    pub signature: String,
}

/// The OAuth settings of `account`, or why it has none.
struct Integration<'a> {
    client_id: &'a str,
    client_secret: &'a SecretString,
    redirect_uri: &'a url::Url,
}

fn integration(account: &Account) -> Result<Integration<'_>, OauthError> {
    match &account.kommo.auth {
        KommoAuth::Oauth { client_id, client_secret, redirect_uri, .. } => Ok(Integration { client_id, client_secret, redirect_uri }),
        KommoAuth::LongLivedToken { .. } => Err(OauthError::NotOauth(account.slug.clone())),
    }
}

/// Starts an installation: a one-time `state` bound to `account`, and the consent URL an admin of
/// the client account opens (Kommo then redirects to the integration's `redirect_uri`, which is
/// ingest's `/oauth/kommo/callback`).
pub async fn begin(pool: &PgPool, account: &Account) -> Result<url::Url, OauthError> {
    let integration = integration(account)?;
    let state = uuid::Uuid::new_v4().simple().to_string();
    sqlx::query("INSERT INTO kommo_oauth_states (state, account) VALUES ($1, $2)").bind(&state).bind(&account.slug).execute(pool).await?;
    let mut url = url::Url::parse(CONSENT_URL).expect("a valid URL");
    // `post_message`: Kommo redirects the consent window to `redirect_uri` and tells its opener.
    url.query_pairs_mut().append_pair("client_id", integration.client_id).append_pair("state", &state).append_pair("mode", "post_message");
    Ok(url)
}

/// Kommo's redirect after consent: its `state` is used up (whatever follows, it never works
/// twice), checked against its account, and the code exchanged for the account's pair.
pub async fn complete(pool: &PgPool, accounts: &Accounts, callback: &Callback) -> Result<Connected, OauthError> {
    let used: Option<(String, bool)> = sqlx::query_as(
        "UPDATE kommo_oauth_states SET used_at = now() WHERE state = $1 AND used_at IS NULL
         RETURNING account, created_at > now() - make_interval(mins => $2)",
    )
    .bind(&callback.state)
    .bind(STATE_MINUTES as i32)
    .fetch_optional(pool)
    .await?;
    let account = match used {
        Some((account, true)) => account,
        Some((account, false)) => return Err(OauthError::StateExpired(account)),
        None => {
            let earlier: Option<String> =
                sqlx::query_scalar("SELECT account FROM kommo_oauth_states WHERE state = $1").bind(&callback.state).fetch_optional(pool).await?;
            return Err(earlier.map_or(OauthError::UnknownState, OauthError::StateUsed));
        }
    };
    let account = accounts.get(&account).ok_or(OauthError::UnknownAccount(account))?;
    let expected = integration(account)?.client_id;
    if let Some(got) = callback.client_id.as_deref().filter(|got| *got != expected) {
        return Err(OauthError::WrongClient { account: account.slug.clone(), got: got.to_owned(), expected: expected.to_owned() });
    }
    exchange(pool, account, &callback.code, callback.referer.as_deref(), "callback").await
}

/// Exchanges an authorization `code` for `account`'s pair and stores it, lifting a block an
/// uninstall left (`via`: how the code came, for the log). `referer`, when given, must be the
/// account's configured Kommo host: a code from another account's installation is refused.
pub async fn exchange(pool: &PgPool, account: &Account, code: &str, referer: Option<&str>, via: &str) -> Result<Connected, OauthError> {
    let integration = integration(account)?;
    let base = &account.kommo.base_url;
    let host = match base.port() {
        Some(port) => format!("{}:{port}", base.host_str().unwrap_or_default()),
        None => base.host_str().unwrap_or_default().to_owned(),
    };
    if let Some(referer) = referer.filter(|referer| referer.trim_start_matches("https://").trim_end_matches('/') != host) {
        return Err(OauthError::WrongAccount { account: account.slug.clone(), referer: referer.to_owned(), expected: host });
    }
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .expect("a TLS backend");
    let pair = request_pair(&http, base, integration.client_id, integration.client_secret, integration.redirect_uri.as_str(), Grant::Code(code))
        .await
        .map_err(|error| match error {
            TokenError::Refused { detail, .. } => OauthError::Refused(detail),
            TokenError::Unavailable(detail) => OauthError::Unavailable(detail),
        })?;
    let mut tx = pool.begin().await?;
    let expires_at = store_pair(&mut *tx, &account.slug, &pair).await?;
    sqlx::query("UPDATE kommo_tokens SET connected_at = now(), revoked_at = NULL WHERE account = $1").bind(&account.slug).execute(&mut *tx).await?;
    crate::rate_limit::unblock_if(&mut *tx, Provider::Kommo, &account.slug, REVOKED).await?;
    let key = format!("kommo.connected:{}", uuid::Uuid::now_v7());
    let payload = json!({ "host": host, "via": via, "expires_at": expires_at });
    let fact = Fact { account: &account.slug, kind: "kommo.connected", dedup_key: &key, lead_id: None, caused_by_event: None, caused_by_job: None, payload };
    event_log::append_fact(&mut *tx, fact).await?;
    tx.commit().await?;
    tracing::info!(account = %account.slug, %host, via, "Kommo OAuth installation connected");
    Ok(Connected { account: account.slug.clone(), host, expires_at })
}

/// The configured OAuth account a revocation hook is for, if its signature is that account's.
pub fn verify_revocation(accounts: &Accounts, hook: &Revocation) -> Result<std::sync::Arc<Account>, OauthError> {
    let signature = hex::decode(hook.signature.trim()).map_err(|_| OauthError::BadSignature)?;
    let message = format!("{}|{}", hook.client_uuid, hook.account_id);
    accounts
        .iter()
        .find(|account| {
            account.kommo.account_id == hook.account_id
                && integration(account).is_ok_and(|i| {
                    i.client_id == hook.client_uuid
                        && crate::signature::any_matches(std::slice::from_ref(i.client_secret), &[message.as_bytes()], std::slice::from_ref(&signature))
                })
        })
        .cloned()
        .ok_or(OauthError::BadSignature)
}

/// Kommo says the integration was uninstalled from `account`: its tokens are dropped, its calls
/// stop (a block, shown wherever 403 blocks are), and the log records it.
pub async fn revoke(pool: &PgPool, account: &Account) -> Result<(), OauthError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO kommo_tokens (account, revoked_at) VALUES ($1, now())
         ON CONFLICT (account) DO UPDATE SET access_token = NULL, refresh_token = NULL, expires_at = NULL, revoked_at = now()",
    )
    .bind(&account.slug)
    .execute(&mut *tx)
    .await?;
    let reason = format!("{REVOKED}; connect it again with `kommo-pay kommo connect --account {}`", account.slug);
    crate::rate_limit::block_account(&mut *tx, Provider::Kommo, &account.slug, &reason).await?;
    // (A block Kommo set before, a 403, keeps its reason: reconnecting does not lift it.)
    let key = format!("kommo.access_revoked:{}", uuid::Uuid::now_v7());
    let fact = Fact {
        account: &account.slug,
        kind: "kommo.access_revoked",
        dedup_key: &key,
        lead_id: None,
        caused_by_event: None,
        caused_by_job: None,
        payload: json!({ "account_id": account.kommo.account_id }),
    };
    event_log::append_fact(&mut *tx, fact).await?;
    tx.commit().await?;
    tracing::warn!(account = %account.slug, "Kommo says the integration was uninstalled: calls for the account stop until it is connected again");
    Ok(())
}

/// Whether `account` has a refresh token (stored, or the configured bootstrap one) to call with.
pub async fn connected(pool: &PgPool, account: &Account) -> Result<bool, sqlx::Error> {
    let KommoAuth::Oauth { refresh_token, .. } = &account.kommo.auth else { return Ok(true) };
    let stored: Option<(Option<String>, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT refresh_token, revoked_at FROM kommo_tokens WHERE account = $1").bind(&account.slug).fetch_optional(pool).await?;
    Ok(match stored {
        Some((_, Some(_))) => false,
        Some((Some(_), None)) => true,
        _ => refresh_token.is_some(),
    })
}

/// What the token endpoint is asked for.
pub(super) enum Grant<'a> {
    Code(&'a str),
    Refresh(&'a SecretString),
}

/// A token pair as Kommo issues it.
#[derive(serde::Deserialize)]
pub(super) struct Pair {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: i64,
}

/// Why the token endpoint gave no pair.
pub(super) enum TokenError {
    /// Kommo refused the code or refresh token (4xx): only a new consent helps.
    Refused { status: u16, detail: String },
    /// Kommo failed or could not be reached.
    Unavailable(String),
}

/// `POST {base}/oauth2/access_token` (JSON), Kommo's one token endpoint, for codes and refreshes.
pub(super) async fn request_pair(
    http: &reqwest::Client,
    base: &url::Url,
    client_id: &str,
    client_secret: &SecretString,
    redirect_uri: &str,
    grant: Grant<'_>,
) -> Result<Pair, TokenError> {
    let mut body = json!({ "client_id": client_id, "client_secret": client_secret.expose_secret(), "redirect_uri": redirect_uri });
    match grant {
        Grant::Code(code) => {
            body["grant_type"] = json!("authorization_code");
            body["code"] = json!(code);
        }
        Grant::Refresh(token) => {
            body["grant_type"] = json!("refresh_token");
            body["refresh_token"] = json!(token.expose_secret());
        }
    }
    let url = base.join("oauth2/access_token").expect("joins");
    let response = http.post(url).json(&body).send().await.map_err(|e| TokenError::Unavailable(crate::http::describe(e)))?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(|e| TokenError::Unavailable(crate::http::describe(e)))?;
    match status {
        200 => serde_json::from_slice(&bytes).map_err(|e| TokenError::Unavailable(format!("unreadable token answer: {e}"))),
        500.. => Err(TokenError::Unavailable(format!("{status}: {}", super::client::problem_detail(&bytes)))),
        _ => Err(TokenError::Refused { status, detail: super::client::problem_detail(&bytes) }),
    }
}

/// Stores `account`'s new pair (before it is used: Kommo has already invalidated the old
/// refresh token); returns when the access token expires.
pub(super) async fn store_pair<'e>(db: impl PgExecutor<'e>, account: &AccountSlug, pair: &Pair) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO kommo_tokens (account, access_token, refresh_token, expires_at, refreshed_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4), now())
         ON CONFLICT (account) DO UPDATE SET access_token = $2, refresh_token = $3, expires_at = now() + make_interval(secs => $4), refreshed_at = now()
         RETURNING expires_at",
    )
    .bind(account)
    .bind(&pair.access_token)
    .bind(&pair.refresh_token)
    .bind(pair.expires_in as f64)
    .fetch_one(db)
    .await
}
