//! The job queue (`jobs`). Jobs are enqueued in the transaction that appends their event
//! ([`crate::event_log::append`]); workers are woken afterwards by a [`Waker`], claim them with
//! `FOR UPDATE SKIP LOCKED`, and write each outcome guarded by "still running and still mine".

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::types::PgInterval;
use uuid::Uuid;

use crate::ids::{AccountSlug, JobId, LeadId};
use crate::provider::Provider;

/// The channel on which workers LISTEN for "there is new work".
pub const WAKE_CHANNEL: &str = "kommo_pay_jobs";

/// The advisory lock claims take turns on: "kommo-pay claim" as a number.
const CLAIM_LOCK: i64 = 0x6b70_636c_6169_6d00;

/// A job about to be enqueued.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    pub args: Value,
    pub account: AccountSlug,
    pub lead_id: Option<LeadId>,
    /// The event whose arrival implies this job.
    pub event_id: Uuid,
    pub max_attempts: i32,
    /// When set, a second job with the same key is never enqueued.
    pub unique_key: Option<String>,
}

/// Wakes workers after jobs were committed, with at most one NOTIFY per `interval` however many
/// transactions enqueued.
///
/// A NOTIFY inside the enqueueing transaction would take a database-wide lock at every commit
/// and serialise them (a peer queue fell to ~1,400 enqueues/s that way); one coalesced NOTIFY,
/// sent outside those transactions, costs nothing at any rate. Workers poll as well, so a lost
/// wake-up only delays work by one poll interval.
#[derive(Clone)]
pub struct Waker {
    pending: Arc<tokio::sync::Notify>,
}

impl Waker {
    /// Starts the task that sends the NOTIFYs. It lives as long as the runtime.
    pub fn spawn(pool: PgPool, interval: Duration) -> Waker {
        let pending = Arc::new(tokio::sync::Notify::new());
        let waiting = pending.clone();
        tokio::spawn(async move {
            loop {
                // `notify_one` stores one permit when nobody waits, so wake-ups that arrive while
                // a NOTIFY is in flight coalesce into the next one.
                waiting.notified().await;
                if let Err(error) = wake_workers(&pool).await {
                    tracing::debug!(%error, "could not wake workers; they will find the jobs by polling");
                }
                tokio::time::sleep(interval).await;
            }
        });
        Waker { pending }
    }

    /// Asks for a wake-up. Cheap and non-blocking: call it after every commit that enqueued jobs.
    pub fn wake(&self) {
        self.pending.notify_one();
    }
}

/// Enqueues one job outside ingest's append (a job that hangs off a fact recorded in the same
/// transaction); a job whose unique key is taken is not enqueued again. Returns its id if new.
pub async fn enqueue<'e>(db: impl sqlx::PgExecutor<'e>, job: &NewJob) -> Result<Option<JobId>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO jobs (event_id, kind, args, account, lead_id, max_attempts, unique_key) VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING RETURNING id",
    )
    .bind(job.event_id)
    .bind(&job.kind)
    .bind(&job.args)
    .bind(&job.account)
    .bind(job.lead_id)
    .bind(job.max_attempts)
    .bind(&job.unique_key)
    .fetch_optional(db)
    .await
}

/// One NOTIFY to the workers, now. For rare enqueues outside ingest (an operator's replay); hot
/// paths go through a [`Waker`].
pub async fn wake_workers(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(pool).await.map(drop)
}

/// A job a worker has claimed. Every write about it names the claiming `owner` and expects the
/// row still `running`: a job that was rescued meanwhile (and maybe claimed elsewhere) is never
/// overwritten by a late outcome.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: JobId,
    pub kind: String,
    pub args: Value,
    pub account: AccountSlug,
    pub lead_id: Option<LeadId>,
    pub event_id: Option<Uuid>,
    /// Attempts already used before this one.
    pub attempt: i32,
    pub max_attempts: i32,
    /// The trace of the delivery that caused it (its event's `traceparent`), to continue.
    pub traceparent: Option<String>,
}

/// Claims up to `limit` runnable jobs of `kinds` for `owner`, fairly across accounts (ADR 15):
/// the accounts with runnable jobs take turns, one job each per turn, oldest account first
/// within a turn and oldest job first within an account; an account with `max_per_account`
/// jobs running (in any process) gets none. So a burst in one account never makes another's
/// job wait for it: that job is in the next claim's first turn.
///
/// Claims take turns (a transaction-scoped advisory lock): the count of an account's running
/// jobs is read after the claim before it committed, so two processes claiming at once cannot
/// both fill the same account's room. Each account's candidates are read from its own index
/// range, at most `limit` of them: a claim costs about what a plain oldest-first claim costs
/// (benches/queue.sh).
pub async fn claim(pool: &PgPool, owner: &str, kinds: &[String], limit: i64, max_per_account: i64) -> Result<Vec<ClaimedJob>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // JIT off for this transaction: the planner cannot estimate the recursive scan of accounts
    // and guesses a hundred of them, which lifts a claim's cost over `jit_above_cost` whenever
    // the statistics show a backlog; compiling then took 70–170 ms per claim, and throughput fell
    // to a seventh at random (benches/queue.sh, ADR 15). Set with the lock: no extra round trip.
    sqlx::query("SELECT set_config('jit', 'off', true), pg_advisory_xact_lock($1)").bind(CLAIM_LOCK).execute(&mut *tx).await?;
    let mut jobs: Vec<ClaimedJob> = sqlx::query_as(
        "WITH RECURSIVE waiting (account) AS (
             (SELECT account FROM jobs WHERE state IN ('available', 'retryable') ORDER BY account LIMIT 1)
             UNION ALL
             SELECT (SELECT j.account FROM jobs j WHERE j.state IN ('available', 'retryable') AND j.account > w.account ORDER BY j.account LIMIT 1)
             FROM waiting w WHERE w.account IS NOT NULL
         ), candidates AS (
             SELECT c.id, c.run_at, row_number() OVER (PARTITION BY w.account ORDER BY c.run_at, c.id) AS turn
             FROM waiting w
             CROSS JOIN LATERAL (SELECT $4 - count(*) AS room FROM jobs r WHERE r.state = 'running' AND r.account = w.account) cap
             CROSS JOIN LATERAL (
                 SELECT j.id, j.run_at FROM jobs j
                 WHERE j.account = w.account AND j.state IN ('available', 'retryable') AND j.run_at <= now() AND j.kind = ANY($2)
                 ORDER BY j.run_at, j.id
                 LIMIT least($3, greatest(cap.room, 0))
                 FOR UPDATE SKIP LOCKED) c
             WHERE w.account IS NOT NULL
         )
         UPDATE jobs SET state = 'running', locked_by = $1, locked_at = now(), heartbeat_at = now(), waiting_for = NULL
         WHERE id = ANY(ARRAY(SELECT id FROM candidates ORDER BY turn, run_at, id LIMIT $3))
         RETURNING id, kind, args, account, lead_id, event_id, attempt, max_attempts,
                   (SELECT e.headers ->> 'traceparent' FROM events e WHERE e.id = jobs.event_id) AS traceparent",
    )
    .bind(owner)
    .bind(kinds)
    .bind(limit)
    .bind(max_per_account)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    // RETURNING has no order.
    jobs.sort_by_key(|job| job.id);
    Ok(jobs)
}

/// Marks `ids` completed; returns those that were still this owner's to complete.
pub async fn complete(pool: &PgPool, owner: &str, ids: &[JobId]) -> Result<Vec<JobId>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE jobs SET state = 'completed', attempt = attempt + 1, finished_at = now(),
                locked_by = NULL, locked_at = NULL, heartbeat_at = NULL
         WHERE id = ANY($1) AND locked_by = $2 AND state = 'running'
         RETURNING id",
    )
    .bind(ids)
    .bind(owner)
    .fetch_all(pool)
    .await
}

/// What happens to a job whose attempt did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Waits for a provider's rate limit (named) until this time: not a failed attempt.
    Defer(DateTime<Utc>, Provider),
    /// Run again at this time.
    Retry(DateTime<Utc>),
    /// Attempts used up, or an error no retry can fix: kept as a dead letter for an operator to
    /// inspect and replay.
    Dead,
}

/// Records a failed attempt of job `id` and its fate. A dead job is also written to the event
/// log (`job.dead_lettered`) and, when it concerns a deal, gets a
/// `deal.alert` job (of `alert_attempts` attempts, its kind's policy) that tells the deal's
/// manager; all in the same statement. Alerts raise no
/// alerts of their own, so a blocked Kommo account cannot make them loop. Returns false
/// when the job was no longer this owner's (rescued meanwhile): nothing was written.
pub async fn fail(pool: &PgPool, owner: &str, id: JobId, error: &str, fate: Fate, alert_attempts: i32) -> Result<bool, sqlx::Error> {
    let (state, run_at) = match fate {
        Fate::Defer(at, waiting_for) => return defer(pool, owner, id, at, waiting_for).await,
        Fate::Retry(at) => ("retryable", Some(at)),
        Fate::Dead => ("dead", None),
    };
    const FAILED: &str = "UPDATE jobs SET
             state = $3,
             attempt = attempt + 1,
             run_at = coalesce($4, run_at),
             finished_at = CASE WHEN $3 = 'dead' THEN now() END,
             locked_by = NULL, locked_at = NULL, heartbeat_at = NULL,
             errors = errors || jsonb_build_array(jsonb_build_object('at', now(), 'attempt', attempt + 1, 'error', $5::text))
         WHERE id = $1 AND locked_by = $2 AND state = 'running'
         RETURNING id, kind, account, lead_id, event_id, attempt, max_attempts";
    let failed = sqlx::query_as::<_, DeadLettered>(FAILED).bind(id).bind(owner).bind(state).bind(run_at).bind(error);
    if fate != Fate::Dead {
        return Ok(failed.fetch_optional(pool).await?.is_some());
    }
    // The dead letter, its fact and its alert are committed together.
    let mut tx = pool.begin().await?;
    let Some(dead) = failed.fetch_optional(&mut *tx).await? else { return Ok(false) };
    let key = format!("job:{}:{}:dead", dead.id, dead.attempt);
    let fact = crate::event_log::Fact {
        account: &dead.account,
        kind: "job.dead_lettered",
        dedup_key: &key,
        lead_id: dead.lead_id,
        caused_by_event: dead.event_id,
        caused_by_job: Some(dead.id),
        payload: serde_json::json!({ "job_id": dead.id, "job_kind": dead.kind, "attempt": dead.attempt, "max_attempts": dead.max_attempts, "error": error }),
    };
    let fact = crate::event_log::append_fact(&mut *tx, fact).await?;
    if let Some(alert) = crate::jobs::alert_for(&dead, error, fact, alert_attempts) {
        enqueue(&mut *tx, &alert).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// A job as it was dead-lettered: what its fact and its alert say of it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadLettered {
    pub id: JobId,
    pub kind: String,
    pub account: AccountSlug,
    pub lead_id: Option<LeadId>,
    pub event_id: Option<Uuid>,
    /// Attempts used, this one included.
    pub attempt: i32,
    pub max_attempts: i32,
}

/// Gives job `id` back to wait for `waiting_for`'s rate limit until `at`: its attempt is not
/// counted and no error is written (waiting for a budget is not failing). Returns false when
/// the job was no longer this owner's.
async fn defer(pool: &PgPool, owner: &str, id: JobId, at: DateTime<Utc>, waiting_for: Provider) -> Result<bool, sqlx::Error> {
    let deferred = sqlx::query(
        "UPDATE jobs SET state = CASE WHEN attempt = 0 THEN 'available' ELSE 'retryable' END, run_at = $3, waiting_for = $4,
                locked_by = NULL, locked_at = NULL, heartbeat_at = NULL
         WHERE id = $1 AND locked_by = $2 AND state = 'running'",
    )
    .bind(id)
    .bind(owner)
    .bind(at)
    .bind(waiting_for)
    .execute(pool)
    .await?;
    Ok(deferred.rows_affected() == 1)
}

/// Keeps `owner`'s running jobs from being rescued. One statement per process per interval.
pub async fn heartbeat(pool: &PgPool, owner: &str) -> Result<u64, sqlx::Error> {
    let beat = sqlx::query("UPDATE jobs SET heartbeat_at = now() WHERE locked_by = $1 AND state = 'running'").bind(owner).execute(pool).await?;
    Ok(beat.rows_affected())
}

/// Gives `owner`'s running jobs back to the queue untouched (attempts are counted at outcome,
/// not at claim), e.g. jobs claimed but not started when the worker stops.
pub async fn release(pool: &PgPool, owner: &str, ids: Option<&[JobId]>) -> Result<u64, sqlx::Error> {
    let released = sqlx::query(
        "UPDATE jobs SET state = CASE WHEN attempt = 0 THEN 'available' ELSE 'retryable' END,
                locked_by = NULL, locked_at = NULL, heartbeat_at = NULL
         WHERE locked_by = $1 AND state = 'running' AND ($2::int8[] IS NULL OR id = ANY($2))",
    )
    .bind(owner)
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(released.rows_affected())
}

/// A running job taken back from a worker that stopped, with why: its fate is decided like any
/// failed attempt's (`worker::executor::fate`) and written with [`fail`] under `owner`, the
/// rescuer that took it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TakenBack {
    #[sqlx(flatten)]
    pub job: ClaimedJob,
    pub error: String,
}

/// Takes back running jobs whose owner has not heartbeated for `stale_after` (the process died,
/// or lost its database), and those running longer than `overdue_after` (longer than any attempt
/// may: their outcome could not be written), for `owner` to record their lost attempt. Two
/// rescuers never take the same job (`SKIP LOCKED`, and the row then names its new owner).
pub async fn take_back(pool: &PgPool, owner: &str, stale_after: Duration, overdue_after: Duration) -> Result<Vec<TakenBack>, sqlx::Error> {
    sqlx::query_as(
        "WITH lost AS (
             SELECT id, locked_by, heartbeat_at < now() - $1::interval AS silent FROM jobs
             WHERE state = 'running' AND (heartbeat_at < now() - $1::interval OR locked_at < now() - $2::interval)
             FOR UPDATE SKIP LOCKED
         )
         UPDATE jobs j SET locked_by = $3, locked_at = now(), heartbeat_at = now() FROM lost WHERE j.id = lost.id
         RETURNING j.id, j.kind, j.args, j.account, j.lead_id, j.event_id, j.attempt, j.max_attempts,
                   (SELECT e.headers ->> 'traceparent' FROM events e WHERE e.id = j.event_id) AS traceparent,
                   CASE WHEN lost.silent
                        THEN 'the worker ' || lost.locked_by || ' stopped heartbeating during this attempt (it crashed or lost the database)'
                        ELSE 'the attempt on ' || lost.locked_by || ' outlived the job timeout without an outcome' END AS error",
    )
    .bind(PgInterval::try_from(stale_after).expect("a heartbeat interval fits an interval"))
    .bind(PgInterval::try_from(overdue_after).expect("a job timeout fits an interval"))
    .bind(owner)
    .fetch_all(pool)
    .await
}
