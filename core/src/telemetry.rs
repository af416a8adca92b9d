//! Logs (human-readable or JSON lines, filtered by the configuration or `RUST_LOG`) and metrics
//! (one Prometheus recorder per process, rendered by whichever `/metrics` endpoint it serves).
//!
//! Secrets, signature headers and request bodies are never logged above debug level; the ingest
//! server logs the route template, never the URI (Kommo's URL carries the account's secret).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSection};

/// Installs the global subscriber. Call once, at start-up.
pub fn init(log: &LogSection) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match log.format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
    }
}

/// The process's metrics recorder, installed on first use (several servers in one test process
/// share it).
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().expect("no other metrics recorder is installed"))
        .clone()
}

/// The metrics in Prometheus text, the queue's gauges read from the database first:
/// `kommo_pay_jobs{state}`, `kommo_pay_dead_letters` and `kommo_pay_oldest_runnable_job_seconds`.
/// A database that does not answer leaves the gauges as they were (the scrape still succeeds).
pub async fn render_metrics(pool: &PgPool) -> String {
    let handle = metrics();
    match queue_gauges(pool).await {
        Ok(()) => {}
        Err(error) => tracing::debug!(%error, "queue gauges not refreshed"),
    }
    handle.render()
}

async fn queue_gauges(pool: &PgPool) -> Result<(), sqlx::Error> {
    let states: Vec<(String, i64)> = sqlx::query_as("SELECT state, count(*) FROM jobs GROUP BY state").fetch_all(pool).await?;
    for state in ["available", "running", "retryable", "completed", "dead", "discarded", "replayed"] {
        let count = states.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
        metrics::gauge!("kommo_pay_jobs", "state" => state).set(count as f64);
        if state == "dead" {
            metrics::gauge!("kommo_pay_dead_letters").set(count as f64);
        }
    }
    let oldest: f64 = sqlx::query_scalar(
        "SELECT coalesce(extract(epoch FROM now() - min(run_at))::float8, 0) FROM jobs WHERE state IN ('available', 'retryable') AND run_at <= now()",
    )
    .fetch_one(pool)
    .await?;
    metrics::gauge!("kommo_pay_oldest_runnable_job_seconds").set(oldest);
    Ok(())
}
