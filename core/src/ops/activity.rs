//! The last 24 hours by hour: events received, jobs completed, jobs dead-lettered (the
//! overview's two charts).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use sqlx::PgPool;

use super::OpsError;

/// Hours in the window.
pub const HOURS: usize = 24;

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Hour {
    /// The hour's start.
    pub hour: DateTime<Utc>,
    pub events: i64,
    pub completed: i64,
    pub dead: i64,
}

/// One entry per hour, oldest first, the last being the hour now running; hours without
/// anything are there with zeros.
pub async fn last_day(pool: &PgPool) -> Result<Vec<Hour>, OpsError> {
    let rows: Vec<(DateTime<Utc>, i64, i64, i64)> = sqlx::query_as(
        "WITH hours AS (
             SELECT generate_series(date_trunc('hour', now()) - interval '23 hours', date_trunc('hour', now()), interval '1 hour') AS hour
         ),
         received AS (
             SELECT date_trunc('hour', received_at) AS hour, count(*) AS n FROM events
             WHERE received_at >= date_trunc('hour', now()) - interval '23 hours' GROUP BY 1
         ),
         -- Two scans, each on its state's partial index (jobs_finished, jobs_dead).
         finished AS (
             SELECT hour, sum(completed) AS completed, sum(dead) AS dead FROM (
                 SELECT date_trunc('hour', finished_at) AS hour, 1 AS completed, 0 AS dead FROM jobs
                 WHERE state = 'completed' AND finished_at >= date_trunc('hour', now()) - interval '23 hours'
                 UNION ALL
                 SELECT date_trunc('hour', finished_at), 0, 1 FROM jobs
                 WHERE state = 'dead' AND finished_at >= date_trunc('hour', now()) - interval '23 hours'
             ) f GROUP BY 1
         )
         SELECT h.hour, coalesce(r.n, 0), coalesce(f.completed, 0)::int8, coalesce(f.dead, 0)::int8
         FROM hours h LEFT JOIN received r USING (hour) LEFT JOIN finished f USING (hour) ORDER BY h.hour",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(hour, events, completed, dead)| Hour { hour, events, completed, dead }).collect())
}
