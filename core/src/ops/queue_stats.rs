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

/// Jobs by state, and how long the oldest runnable job has waited, in seconds: the queue's depth,
/// as the metrics gauges read it at each scrape.
pub async fn depth(pool: &PgPool) -> Result<(Vec<Count>, f64), sqlx::Error> {
    let by_state = sqlx::query_as("SELECT '' AS key, state, count(*) AS count FROM jobs GROUP BY 2 ORDER BY 2").fetch_all(pool).await?;
    Ok((by_state, oldest_runnable_age_secs(pool).await?))
}

async fn oldest_runnable_age_secs(pool: &PgPool) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce(extract(epoch FROM now() - min(run_at))::float8, 0) FROM jobs
         WHERE state IN ('available', 'retryable') AND run_at <= now()",
    )
    .fetch_one(pool)
    .await
}

/// Which jobs a count covers.
#[derive(Clone, Copy, PartialEq)]
enum Covered {
    All,
    /// Waiting, running and dead: read through those states' partial indexes, so it stays quick
    /// however many days of finished jobs the table keeps.
    Live,
}

/// Jobs by state, by kind and state, and by account and state, in one pass.
async fn counts(pool: &PgPool, covered: Covered) -> Result<(Vec<Count>, Vec<Count>, Vec<Count>), sqlx::Error> {
    let jobs = match covered {
        Covered::All => "jobs",
        Covered::Live => {
            "(SELECT kind, account, state FROM jobs WHERE state IN ('available', 'retryable')
              UNION ALL SELECT kind, account, state FROM jobs WHERE state = 'running'
              UNION ALL SELECT kind, account, state FROM jobs WHERE state = 'dead') live"
        }
    };
    let rows: Vec<(Option<String>, Option<String>, String, i64)> = sqlx::query_as(super::sql(format!(
        "SELECT kind, account, state, count(*) FROM {jobs} GROUP BY GROUPING SETS ((state), (kind, state), (account, state)) ORDER BY 1, 2, 3"
    )))
    .fetch_all(pool)
    .await?;
    let (mut by_state, mut by_kind, mut by_account) = (Vec::new(), Vec::new(), Vec::new());
    // `kind` and `account` are never NULL in the table: NULL here means "not grouped by".
    for (kind, account, state, count) in rows {
        match (kind, account) {
            (Some(kind), _) => by_kind.push(Count { key: kind, state, count }),
            (None, Some(account)) => by_account.push(Count { key: account, state, count }),
            (None, None) => by_state.push(Count { key: String::new(), state, count }),
        }
    }
    Ok((by_state, by_kind, by_account))
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

/// The whole queue, finished jobs included (the ops API and CLI).
pub async fn stats(pool: &PgPool) -> Result<QueueStats, OpsError> {
    stats_of(pool, Covered::All).await
}

/// The same without finished jobs (completed, replayed, discarded): the console's overview,
/// which shows finished jobs per hour instead.
pub async fn live(pool: &PgPool) -> Result<QueueStats, OpsError> {
    stats_of(pool, Covered::Live).await
}

async fn stats_of(pool: &PgPool, covered: Covered) -> Result<QueueStats, OpsError> {
    let (by_state, by_kind, by_account) = counts(pool, covered).await?;
    let oldest_runnable_age_secs = oldest_runnable_age_secs(pool).await?;
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
