//! The queue at a glance: counts by state, kind and account; how long the oldest runnable job has
//! waited; what runs now and where.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use sqlx::PgPool;

use super::OpsError;

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QueueStats {
    pub by_state: Vec<Count>,
    pub by_kind: Vec<Count>,
    pub by_account: Vec<Count>,
    /// Seconds the oldest job that could run now has been waiting (0: none waits).
    pub oldest_runnable_age_secs: f64,
    /// Jobs waiting for a provider's rate limit (deferred, not failed), by account.
    pub waiting_for_rate_limit: Vec<Waiting>,
    /// Provider accounts whose calls are stopped: Kommo's 403 block (an operator unblocks it), or
    /// an uninstalled OAuth integration (connecting it again lifts it).
    pub blocked: Vec<Blocked>,
    pub running: Vec<Running>,
    /// The scheduler process that leads now (its connection's `application_name`); absent when
    /// no scheduler runs.
    pub scheduler_leader: Option<String>,
}

/// A provider account whose calls stop, since when and why.
#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Blocked {
    pub provider: String,
    pub account: String,
    pub since: DateTime<Utc>,
    pub reason: Option<String>,
}

/// Every provider account with a budget row, and whether its calls are blocked (for the
/// blocked list, and the gauge that shows 0 once a block is lifted).
pub async fn blocks(pool: &PgPool) -> Result<Vec<(String, String, Option<Blocked>)>, sqlx::Error> {
    type Row = (String, String, Option<DateTime<Utc>>, Option<String>);
    let rows: Vec<Row> =
        sqlx::query_as("SELECT provider, account, blocked_at, blocked_reason FROM api_limits ORDER BY provider, account").fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|(provider, account, since, reason)| {
            let blocked = since.map(|since| Blocked { provider: provider.clone(), account: account.clone(), since, reason });
            (provider, account, blocked)
        })
        .collect())
}

/// Jobs of one account that wait for `provider`'s budget, and until when the last of them waits.
#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Waiting {
    pub provider: String,
    pub account: String,
    pub count: i64,
    pub until: DateTime<Utc>,
}

/// Jobs of one `key` (a kind or an account; empty for `by_state`) in one state.
#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Count {
    pub key: String,
    pub state: String,
    pub count: i64,
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Running {
    pub id: i64,
    pub kind: String,
    pub account: String,
    pub lead_id: Option<i64>,
    pub attempt: i32,
    /// The worker process (`host:pid:…`).
    pub locked_by: Option<String>,
    pub locked_at: Option<DateTime<Utc>>,
    pub heartbeat_at: Option<DateTime<Utc>>,
}

fn counts(key: &str) -> String {
    format!("SELECT {key} AS key, state, count(*) AS count FROM jobs GROUP BY 1, 2 ORDER BY 1, 2")
}

/// Jobs by state, and how long the oldest runnable job has waited, in seconds: the queue's depth,
/// as `stats` shows it and the metrics gauges read it at each scrape.
pub async fn depth(pool: &PgPool) -> Result<(Vec<Count>, f64), sqlx::Error> {
    let by_state = sqlx::query_as(super::sql(counts("''"))).fetch_all(pool).await?;
    let oldest_runnable_age_secs = sqlx::query_scalar(
        "SELECT coalesce(extract(epoch FROM now() - min(run_at))::float8, 0) FROM jobs
         WHERE state IN ('available', 'retryable') AND run_at <= now()",
    )
    .fetch_one(pool)
    .await?;
    Ok((by_state, oldest_runnable_age_secs))
}

/// The jobs that wait for a provider's rate limit, by provider and account.
pub async fn waiting(pool: &PgPool) -> Result<Vec<Waiting>, sqlx::Error> {
    sqlx::query_as(
        "SELECT waiting_for AS provider, account, count(*) AS count, max(run_at) AS until FROM jobs
         WHERE waiting_for IS NOT NULL AND state IN ('available', 'retryable') GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
}

pub async fn stats(pool: &PgPool) -> Result<QueueStats, OpsError> {
    let (by_state, oldest_runnable_age_secs) = depth(pool).await?;
    let by_kind = sqlx::query_as(super::sql(counts("kind"))).fetch_all(pool).await?;
    let by_account = sqlx::query_as(super::sql(counts("account"))).fetch_all(pool).await?;
    let waiting_for_rate_limit = waiting(pool).await?;
    let running = sqlx::query_as(
        "SELECT id, kind, account, lead_id, attempt, locked_by, locked_at, heartbeat_at FROM jobs WHERE state = 'running' ORDER BY locked_at, id LIMIT 1000",
    )
    .fetch_all(pool)
    .await?;
    let blocked = blocks(pool).await?.into_iter().filter_map(|(_, _, blocked)| blocked).collect();
    let scheduler_leader = sqlx::query_scalar(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND ((l.classid::int8 << 32) | l.objid::int8) = $1",
    )
    .bind(crate::db::SCHEDULER_LOCK_KEY)
    .fetch_optional(pool)
    .await?;
    Ok(QueueStats { by_state, by_kind, by_account, oldest_runnable_age_secs, waiting_for_rate_limit, blocked, running, scheduler_leader })
}
