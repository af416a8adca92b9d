//! Connecting to PostgreSQL and keeping its schema current.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::DatabaseConfig;

/// The migrations in `migrations/`, compiled into the binary.
/// The session advisory lock the leading scheduler holds: "kommo-pay" as a number, the same in
/// every process (`scheduler::leader` takes it; the ops overview asks who holds it).
pub const SCHEDULER_LOCK_KEY: i64 = 0x6b6f_6d6d_6f70_6179;

pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// A pool for `config`. Waits for the database for up to about half a minute at start-up (a
/// service started together with its database should not crash-loop), then gives up.
pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = config.url.expose_secret().parse().map_err(|e| anyhow::anyhow!("the database URL is not valid: {e}"))?;
    let options = options.application_name("kommo-pay");
    // No ping before each use: it costs a round trip per request, and a connection that died
    // fails its statement, which is answered 503 (the provider retries) and drops the connection.
    let pool_options = PgPoolOptions::new().max_connections(config.max_connections).acquire_timeout(config.acquire_timeout).test_before_acquire(false);
    let connect = || pool_options.clone().connect_with(options.clone());
    let pool = connect
        .retry(ExponentialBuilder::default().with_min_delay(Duration::from_millis(200)).with_max_times(8))
        .notify(|error, delay| tracing::warn!(%error, ?delay, "database not reachable yet; retrying"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the database at {}: {e}", redacted(&options)))?;
    Ok(pool)
}

/// Runs `write` again a few times when it fails (0.1 s doubling, five tries, about 1.5 s in all)
/// while the database blinks: for writes whose loss costs more than the wait, such as a job's
/// outcome (otherwise the rescuer must take the job back and run it again). Durable retry delays
/// are stored in the job row instead; this is only for the short, in-process kind.
pub async fn retry_briefly<T, F, Fut>(what: &str, write: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    write
        .retry(ExponentialBuilder::default().with_min_delay(Duration::from_millis(100)).with_max_times(4))
        .notify(|error, delay| tracing::warn!(%error, ?delay, "{what} failed; retrying"))
        .await
}

/// Applies the migrations that are not applied yet.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.map_err(|e| anyhow::anyhow!("migrating the database failed: {e}"))
}

/// True when every migration this binary knows has been applied successfully, and no unknown
/// (newer) one has: the schema is the one the code expects.
pub async fn schema_is_current(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let applied: Vec<(i64, bool)> = match sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version").fetch_all(pool).await {
        Ok(rows) => rows,
        // No migrations table: nothing was ever applied.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => return Ok(false),
        Err(e) => return Err(e),
    };
    let known: Vec<i64> = MIGRATOR.iter().filter(|m| m.migration_type.is_up_migration()).map(|m| m.version).collect();
    Ok(applied.iter().all(|(_, ok)| *ok) && applied.iter().map(|(v, _)| *v).eq(known.iter().copied()))
}

/// Host, port and database of `options`, for messages: no user, no password.
fn redacted(options: &PgConnectOptions) -> String {
    format!("{}:{}/{}", options.get_host(), options.get_port(), options.get_database().unwrap_or(""))
}
