//! Operations and audit: what the ops CLI (`kommo-pay events|dead|queue|history …`) and the ops
//! API (`/ops/v1/…`) do. One implementation: both call these functions and print or serialise
//! what they return.
//!
//! - `events`: search the log, show one event with the jobs it caused, replay an event.
//! - `dead_letters`: list, count, show, replay and discard dead jobs.
//! - `queue_stats`: the queue by state, kind and account; the oldest waiting job; what runs.
//! - `history`: a deal's payment history, from the log alone.
//! - `deals`: one deal: its history, what its card should show, its jobs.
//! - `accounts`: each account's health (paused, blocked, hooks, reconciliation, token, budget).
//! - `activity`: the last 24 hours by hour.
//!
//! Every operator action is appended to the log with the operator's name and reason.

pub mod accounts;
pub mod activity;
pub mod dead_letters;
pub mod deals;
pub mod events;
pub mod history;
pub mod openapi;
pub mod queue_stats;

use crate::provider::Provider;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;

/// A statement joined from this module's constant fragments (filters are bind parameters, never
/// text in the SQL), marked as audited for sqlx.
fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

/// Who acts: an ops API token's name, or the CLI's `--operator` (default `cli:$USER`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Operator(pub String);

/// Why an operation could not be done, in words the operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// A filter or argument is wrong: the message names it.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Every error answer of the ops API.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ErrorBody {
    /// What was wrong, in words an operator can act on.
    pub error: String,
}

/// One page of a list, and the cursor of the next page when there is one.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(rename = "{T}Page")]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass back as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The largest page a list returns.
pub const MAX_LIMIT: i64 = 1000;
/// The page size when none is asked for.
pub const DEFAULT_LIMIT: i64 = 100;

/// A page size as asked (`None`: the default), checked.
pub fn limit(asked: Option<i64>) -> Result<i64, OpsError> {
    match asked {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(OpsError::BadRequest(format!("limit {n} is out of range: 1 to {MAX_LIMIT}"))),
    }
}

/// A cursor as given back by a previous page: a positive number.
pub fn cursor(given: Option<&str>) -> Result<Option<i64>, OpsError> {
    given
        .map(|text| text.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| OpsError::BadRequest(format!("cursor {text:?} is not one this API gave out"))))
        .transpose()
}

/// A time as RFC 3339 (`2026-11-26T10:00:00Z`), named `what` in the error.
pub fn time(what: &str, given: Option<&str>) -> Result<Option<DateTime<Utc>>, OpsError> {
    given
        .map(|text| {
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| OpsError::BadRequest(format!("{what} {text:?} is not an RFC 3339 time such as 2026-11-26T10:00:00Z: {e}")))
        })
        .transpose()
}

/// A reason an operator must give for an action that changes something.
pub fn reason(given: &str) -> Result<&str, OpsError> {
    let reason = given.trim();
    if reason.is_empty() {
        return Err(OpsError::BadRequest("a reason is required: say why, for the audit log".into()));
    }
    Ok(reason)
}

/// `POST /ops/v1/accounts/{account}/unblock`.
#[derive(Debug, Clone, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnblockRequest {
    /// `kommo` (the default) or `lemonsqueezy`.
    #[serde(default = "kommo")]
    #[schemars(extend("enum" = UNBLOCKABLE))]
    pub provider: String,
    /// What was fixed, for the audit log: not blank.
    #[schemars(length(min = 1), pattern(r"\S"))]
    pub reason: String,
}

/// The providers whose blocks an operator can lift.
const UNBLOCKABLE: [&str; 2] = [Provider::Kommo.as_str(), Provider::LemonSqueezy.as_str()];

fn kommo() -> String {
    Provider::Kommo.to_string()
}

/// A provider account that was blocked (Kommo's 403) and is now unblocked.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Unblocked {
    pub provider: String,
    pub account: String,
    pub blocked_at: chrono::DateTime<Utc>,
    pub reason: String,
}

/// Lets calls to `provider` for `account` go out again after a block (Kommo answers 403 when it
/// blocks an integration; every call stops until an operator has fixed the cause and says so
/// here). Recorded in the log (`provider.unblocked`) with the operator and the reason.
pub async fn unblock(pool: &sqlx::PgPool, provider: &str, account: &str, operator: &Operator, reason: &str) -> Result<Unblocked, OpsError> {
    if !UNBLOCKABLE.contains(&provider) {
        return Err(OpsError::BadRequest(format!("provider {provider:?} is not one of {}", UNBLOCKABLE.join(", "))));
    }
    let reason = self::reason(reason)?;
    let account = &crate::ids::AccountSlug::from(account);
    let mut tx = pool.begin().await?;
    let cleared: Option<(chrono::DateTime<Utc>, Option<String>)> = sqlx::query_as(
        "UPDATE api_limits a SET blocked_at = NULL, blocked_reason = NULL
         FROM (SELECT blocked_at, blocked_reason FROM api_limits WHERE provider = $1 AND account = $2 FOR UPDATE) b
         WHERE a.provider = $1 AND a.account = $2 AND b.blocked_at IS NOT NULL
         RETURNING b.blocked_at, b.blocked_reason",
    )
    .bind(provider)
    .bind(account)
    .fetch_optional(&mut *tx)
    .await?;
    let (blocked_at, blocked_reason) = cleared.ok_or_else(|| OpsError::NotFound(format!("{provider} calls for account {account:?} are not blocked")))?;
    let key = format!("provider.unblocked:{provider}:{}", uuid::Uuid::now_v7());
    let fact = crate::event_log::Fact {
        account,
        kind: "provider.unblocked",
        dedup_key: &key,
        lead_id: None,
        caused_by_event: None,
        caused_by_job: None,
        payload: serde_json::json!({ "provider": provider, "blocked_at": blocked_at, "blocked_reason": blocked_reason, "operator": operator.0, "reason": reason }),
    };
    crate::event_log::append_fact(&mut *tx, fact).await?;
    tx.commit().await?;
    Ok(Unblocked { provider: provider.to_owned(), account: account.to_string(), blocked_at, reason: blocked_reason.unwrap_or_default() })
}
