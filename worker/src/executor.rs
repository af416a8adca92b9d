//! The worker loop: claims jobs as slots free up, runs each on its own task (so handlers use
//! every core), and records each outcome. Beside it run a heartbeat, a rescuer and a listener
//! for wake-ups.
//!
//! ```text
//!            claim (SKIP LOCKED, ≤ free slots)          ok ──> completer (batched UPDATE)
//!  queue ──────────────────────────────────> handler ──┤
//!    ^   woken by NOTIFY, or every poll interval         err ─> fate(): retry at t, or dead
//!    └── rescuer: running rows whose owner stopped heartbeating, or that outlived the timeout
//! ```

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use futures_util::future::{self, BoxFuture};
use kommo_pay_core::config::{JobPolicies, WorkerConfig};
use kommo_pay_core::ids::{AccountSlug, LeadId};
use kommo_pay_core::kommo::client::with_lead_read;
use kommo_pay_core::queue::{self, ClaimedJob, Fate};
use kommo_pay_core::retry_policy::RetryPolicy;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::completer::Completer;
use crate::handler::{GroupDeals, Handlers, JobError};
use crate::rescuer::Rescuer;
use crate::wake;

/// What one attempt ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Retried,
    Dead,
    /// It waits for a provider's rate limit; no attempt was used.
    Deferred,
    /// The job was no longer ours to record (rescued meanwhile, or the write failed): the
    /// rescuer owns its fate now.
    Lost,
}

/// Counts of what [`Worker::run_once`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ran {
    pub claimed: usize,
    pub completed: usize,
    pub retried: usize,
    pub dead: usize,
    pub deferred: usize,
    pub lost: usize,
}

impl Ran {
    fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Completed => self.completed += 1,
            Outcome::Retried => self.retried += 1,
            Outcome::Dead => self.dead += 1,
            Outcome::Deferred => self.deferred += 1,
            Outcome::Lost => self.lost += 1,
        }
    }
}

/// The one place that decides a failed job's fate: a permanent error is dead-lettered at once; a
/// retryable one is retried with the kind's backoff until the job's attempts are used up, then
/// dead-lettered; a job waiting for a provider's rate limit is deferred, using no attempt.
pub fn fate(job: &ClaimedJob, error: &JobError, policy: &RetryPolicy, now: DateTime<Utc>, jitter: f64) -> Fate {
    let failed = job.attempt + 1;
    match error {
        // Waiting for a budget uses no attempt, so it never dead-letters a job.
        JobError::Deferred { after, waiting_for } => Fate::Defer(now + chrono::Duration::from_std(*after).unwrap_or(chrono::Duration::MAX), *waiting_for),
        JobError::Permanent(_) => Fate::Dead,
        JobError::Retryable(_) if failed >= job.max_attempts => Fate::Dead,
        JobError::Retryable(_) => {
            let delay = policy.delay(failed, jitter);
            Fate::Retry(now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX))
        }
    }
}

/// What every job task shares.
struct Shared {
    pool: PgPool,
    owner: String,
    handlers: Handlers,
    policies: JobPolicies,
    job_timeout: Duration,
    completer: Completer,
}

/// A worker process's job runner.
pub struct Worker {
    shared: Arc<Shared>,
    config: WorkerConfig,
}

impl Worker {
    pub fn new(pool: PgPool, handlers: Handlers, config: WorkerConfig, policies: JobPolicies) -> Worker {
        let owner = owner_id();
        let completer = Completer::spawn(pool.clone(), owner.clone());
        let shared = Arc::new(Shared { pool, owner, handlers, policies, job_timeout: config.job_timeout, completer });
        Worker { shared, config }
    }

    /// This process's identity in `jobs.locked_by`: host, pid and a random suffix.
    pub fn owner(&self) -> &str {
        &self.shared.owner
    }

    /// Claims one batch of runnable jobs, runs them all and records their outcomes. For tests
    /// and tools that step the queue by hand; [`Worker::run`] is the service loop.
    pub async fn run_once(&self) -> Result<Ran, sqlx::Error> {
        let kinds = self.shared.handlers.kinds();
        let jobs = queue::claim(&self.shared.pool, &self.shared.owner, &kinds, self.config.claim_batch as i64, self.config.max_per_account as i64).await?;
        let mut ran = Ran { claimed: jobs.len(), ..Ran::default() };
        let mut running = JoinSet::new();
        start(&self.shared, jobs, &mut running);
        while let Some(outcome) = running.join_next().await {
            ran.count(outcome.expect("job tasks catch their panics"));
        }
        Ok(ran)
    }

    /// Runs jobs until `shutdown` completes; then stops claiming, lets running jobs finish for
    /// the grace period, cuts off the rest and gives them back to the queue.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let kinds = self.shared.handlers.kinds();
        if kinds.is_empty() {
            tracing::warn!("worker has no job handlers in this version; jobs stay queued");
            shutdown.await;
            return Ok(());
        }
        let (pool, owner) = (self.shared.pool.clone(), self.shared.owner.clone());
        tracing::info!(%owner, ?kinds, concurrency = self.config.concurrency, "worker started");

        let wake = Arc::new(Notify::new());
        let mut side_tasks = JoinSet::new();
        side_tasks.spawn(wake::listen(pool.clone(), wake.clone()));
        side_tasks.spawn(heartbeat(pool.clone(), owner.clone(), self.config.heartbeat_interval));
        side_tasks.spawn(Rescuer::for_worker(pool.clone(), &self.config, self.shared.policies.clone()).run());

        let mut running: JoinSet<Outcome> = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            // Jobs finish together (their completions commit in one batch): count them all free
            // before claiming, or the next claims would take one job at a time.
            while running.try_join_next().is_some() {}
            let free = self.config.concurrency.saturating_sub(running.len());
            let limit = free.min(self.config.claim_batch);
            let mut more_waiting = false;
            if limit > 0 {
                match queue::claim(&pool, &owner, &kinds, limit as i64, self.config.max_per_account as i64).await {
                    Ok(jobs) => {
                        more_waiting = jobs.len() == limit;
                        start(&self.shared, jobs, &mut running);
                    }
                    Err(error) => tracing::warn!(%error, "claiming jobs failed; trying again after the poll interval"),
                }
            }
            if more_waiting && running.len() < self.config.concurrency {
                continue;
            }
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = running.join_next(), if !running.is_empty() => {}
                _ = wake.notified() => {}
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }

        tracing::info!(running = running.len(), "worker stopping: no new claims");
        let finished = tokio::time::timeout(self.config.shutdown_grace, async { while running.join_next().await.is_some() {} }).await;
        if finished.is_err() {
            tracing::warn!(cut_off = running.len(), "grace period over: giving the remaining jobs back");
            running.abort_all();
            while running.join_next().await.is_some() {}
        }
        side_tasks.abort_all();
        let released = queue::release(&pool, &owner, None).await?;
        tracing::info!(released, "worker stopped");
        Ok(())
    }
}

/// A group's deals, read once for all its jobs (ADR 17).
type GroupRead = future::Shared<BoxFuture<'static, Option<GroupDeals>>>;

/// Starts the claimed `jobs`, each on its own task. The jobs of one account and kind claimed
/// together are a group: when their kind reads its deal first, the group reads all its deals in
/// one list request per 250, and each job's first read is answered from it. Each job still runs
/// and records its outcome alone, so one job's failure never fails the others.
fn start(shared: &Arc<Shared>, jobs: Vec<ClaimedJob>, running: &mut JoinSet<Outcome>) {
    let mut groups: HashMap<(AccountSlug, String), Vec<LeadId>> = HashMap::new();
    for job in &jobs {
        if let Some(lead_id) = job.lead_id.filter(|_| shared.handlers.read_ahead(&job.kind).is_some()) {
            groups.entry((job.account.clone(), job.kind.clone())).or_default().push(lead_id);
        }
    }
    let reads: HashMap<(AccountSlug, String), GroupRead> = groups
        .into_iter()
        .map(|((account, kind), leads)| {
            let read = shared.handlers.read_ahead(&kind).expect("grouped kinds read ahead");
            let future = read(account.clone(), leads);
            ((account, kind), future.shared())
        })
        .collect();
    for job in jobs {
        let read = reads.get(&(job.account.clone(), job.kind.clone())).cloned();
        running.spawn(execute(shared.clone(), job, read));
    }
}

/// Runs one attempt of `job` (with its group's read of its deal, if any) and records its outcome.
async fn execute(shared: Arc<Shared>, job: ClaimedJob, group_read: Option<GroupRead>) -> Outcome {
    let span =
        tracing::info_span!("job", id = job.id.0, kind = %job.kind, attempt = job.attempt + 1, account = %job.account, lead_id = job.lead_id.map(|id| id.0));
    if let Some(traceparent) = &job.traceparent {
        kommo_pay_core::telemetry::continue_trace(&span, traceparent);
    }
    async move {
        let started = std::time::Instant::now();
        let handler = shared.handlers.get(&job.kind).expect("only kinds with a handler are claimed").clone();
        let (lead_id, run) = (job.lead_id, handler(job.clone()));
        let attempt = AssertUnwindSafe(async move {
            match (group_read, lead_id) {
                (Some(read), Some(lead_id)) => match read.await {
                    Some(deals) => {
                        let lead = match &*deals {
                            Ok(leads) => Ok(leads.get(&lead_id).cloned()),
                            Err(error) => Err(error.replicate()),
                        };
                        with_lead_read(lead_id, lead, run).await
                    }
                    None => run.await,
                },
                _ => run.await,
            }
        })
        .catch_unwind();
        let result = match tokio::time::timeout(shared.job_timeout, attempt).await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => Err(JobError::Retryable(anyhow!("the handler panicked: {}", panic_message(&panic)))),
            Err(_) => Err(JobError::Retryable(anyhow!("the attempt timed out after {:?}", shared.job_timeout))),
        };
        let outcome = match result {
            Ok(()) => {
                if shared.completer.complete(job.id).await {
                    Outcome::Completed
                } else {
                    Outcome::Lost
                }
            }
            Err(error) => {
                let fate = fate(&job, &error, &shared.policies.policy(&job.kind), Utc::now(), fastrand::f64());
                let message = match &error {
                    JobError::Retryable(e) | JobError::Permanent(e) => format!("{e:#}"),
                    JobError::Deferred { waiting_for, .. } => format!("waiting for {waiting_for}'s rate limit"),
                };
                match record_failure(&shared.pool, &shared.owner, &shared.policies, &job, &message, fate).await {
                    true => match fate {
                        Fate::Defer(at, waiting_for) => {
                            tracing::info!(%waiting_for, until = %at, "no provider slot soon: the job waits, its slot goes to others");
                            Outcome::Deferred
                        }
                        Fate::Retry(at) => {
                            tracing::warn!(error = %message, retry_at = %at, "attempt failed; will retry");
                            Outcome::Retried
                        }
                        Fate::Dead => {
                            tracing::error!(error = %message, "job dead-lettered");
                            Outcome::Dead
                        }
                    },
                    false => Outcome::Lost,
                }
            }
        };
        let label = match outcome {
            Outcome::Completed => "completed",
            Outcome::Retried => "retried",
            Outcome::Dead => "dead",
            Outcome::Deferred => "deferred",
            Outcome::Lost => "lost",
        };
        metrics::counter!("kommo_pay_jobs_total", "kind" => job.kind.clone(), "outcome" => label).increment(1);
        metrics::histogram!("kommo_pay_job_seconds", "kind" => job.kind.clone(), "outcome" => label).record(started.elapsed().as_secs_f64());
        outcome
    }
    .instrument(span)
    .await
}

/// Writes a failed attempt's `fate` (for the executor and the rescuer alike), retrying the write
/// itself for a short while (the database may blink). If it cannot be written the job stays
/// `running` and a rescuer takes it back later.
pub(crate) async fn record_failure(pool: &PgPool, owner: &str, policies: &JobPolicies, job: &ClaimedJob, message: &str, fate: Fate) -> bool {
    // The alert a dead letter raises has its kind's attempts, like any job.
    let alert_attempts = policies.policy(kommo_pay_core::jobs::JobKind::AlertManager.as_str()).max_attempts;
    kommo_pay_core::db::retry_briefly("recording the failure", || queue::fail(pool, owner, job.id, message, fate, alert_attempts)).await.unwrap_or(false)
}

async fn heartbeat(pool: PgPool, owner: String, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        if let Err(error) = queue::heartbeat(&pool, &owner).await {
            tracing::warn!(%error, "heartbeat failed; running jobs may be rescued by another worker");
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_else(|| "a non-text panic".into())
}

fn owner_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "host".into());
    format!("{host}:{}:{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn job(attempt: i32, max_attempts: i32) -> ClaimedJob {
        ClaimedJob {
            id: kommo_pay_core::ids::JobId(1),
            kind: "k".into(),
            args: serde_json::Value::Null,
            account: "acme".into(),
            lead_id: None,
            event_id: None,
            attempt,
            max_attempts,
            traceparent: None,
        }
    }

    #[test]
    fn fates() {
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let policy = RetryPolicy { max_attempts: 3, base: Duration::from_secs(10), cap: Duration::from_secs(100) };
        let retryable = || JobError::retryable(anyhow!("503"));
        assert_eq!(fate(&job(0, 3), &retryable(), &policy, now, 1.0), Fate::Retry(now + chrono::Duration::seconds(10)));
        assert_eq!(fate(&job(1, 3), &retryable(), &policy, now, 0.0), Fate::Retry(now + chrono::Duration::seconds(10)));
        assert_eq!(fate(&job(2, 3), &retryable(), &policy, now, 1.0), Fate::Dead);
        assert_eq!(fate(&job(0, 3), &JobError::permanent(anyhow!("Kommo blocked the account")), &policy, now, 1.0), Fate::Dead);
        // Waiting for a budget is no failed attempt: even the last attempt is deferred, not dead.
        let waiting = JobError::Deferred { after: Duration::from_secs(7), waiting_for: kommo_pay_core::provider::Provider::Kommo };
        assert_eq!(fate(&job(2, 3), &waiting, &policy, now, 1.0), Fate::Defer(now + chrono::Duration::seconds(7), kommo_pay_core::provider::Provider::Kommo));
    }
}
