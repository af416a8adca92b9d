//! Dead letters: jobs whose attempts ran out or that failed for good. Operators list and count
//! them, look at one, and — once the cause is fixed — replay them (a new job linked to the dead
//! one through `replay_of`; the dead one becomes `replayed`) or discard them with a reason. Bulk
//! actions run in batches, each its own transaction, and every job acted on gets its own record
//! in the log (`job.replayed`, `job.discarded`) with the operator and the reason.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::events::{EventSummary, JOB_SUMMARY, JobSummary, page};
use super::{Operator, OpsError, Page};

/// Which dead jobs; every field optional. `error` matches part of the last error, ignoring case.
#[derive(Debug, Default, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadFilter {
    pub account: Option<String>,
    pub kind: Option<String>,
    pub lead: Option<i64>,
    pub error: Option<String>,
    /// The `next_cursor` of the page before.
    #[schemars(pattern(r"^[1-9][0-9]{0,18}$"))]
    pub cursor: Option<String>,
    /// Items per page (default 100).
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<i64>,
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct DeadJob {
    pub id: i64,
    pub kind: String,
    pub account: String,
    pub lead_id: Option<i64>,
    pub event_id: Option<Uuid>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct DeadCount {
    pub kind: String,
    /// The last error, its first 200 characters.
    pub error: String,
    pub count: i64,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: JobSummary,
    pub account: String,
    pub lead_id: Option<i64>,
    pub args: Value,
    /// Every failed attempt: `{"at", "attempt", "error"}`.
    pub errors: Value,
    pub locked_by: Option<String>,
    /// The job that replays this one, when an operator replayed it.
    pub replayed_as: Option<i64>,
    /// The event that caused it.
    pub event: Option<EventSummary>,
}

/// The dead jobs an action applies to.
#[derive(Debug, Clone)]
pub enum Selection {
    /// These jobs, each of which must be dead.
    Ids(Vec<i64>),
    /// Every dead job matching (an empty filter matches all; `cursor` and `limit`, if given, must
    /// be valid but page nothing).
    Matching(DeadFilter),
}

/// `POST /ops/v1/dead-letters/replay|discard`: which dead jobs (`ids`, or a `filter`; `{}`
/// matches them all), why, and whether only to count them.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [
    { "required": ["ids"], "properties": { "ids": { "type": "array" } } },
    { "required": ["filter"], "properties": { "filter": { "type": "object" } } }
]))]
pub struct BulkRequest {
    pub ids: Option<Vec<i64>>,
    pub filter: Option<DeadFilter>,
    /// Why, for the audit log: not blank.
    #[schemars(length(min = 1), pattern(r"\S"))]
    pub reason: String,
    #[serde(default)]
    pub dry_run: bool,
}

impl BulkRequest {
    pub fn selection(&self) -> Result<Selection, OpsError> {
        match (&self.ids, &self.filter) {
            (Some(ids), None) => Ok(Selection::Ids(ids.clone())),
            (None, Some(filter)) => Ok(Selection::Matching(filter.clone())),
            _ => Err(OpsError::BadRequest("name the jobs with either \"ids\" or \"filter\" ({} matches every dead letter)".into())),
        }
    }
}

/// `GET /ops/v1/dead-letters/counts`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DeadCounts {
    pub counts: Vec<DeadCount>,
}

/// What a replay or discard did (or, on a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Outcome {
    pub matched: i64,
    pub done: i64,
    pub dry_run: bool,
}

/// Jobs acted on per transaction.
const BATCH: i64 = 500;

// The selection as SQL over `jobs`: $1 account, $2 kind, $3 lead, $4 error part, $5 ids.
const SELECTED: &str = "state = 'dead' AND ($1::text IS NULL OR account = $1) AND ($2::text IS NULL OR kind = $2)
    AND ($3::int8 IS NULL OR lead_id = $3)
    AND ($4::text IS NULL OR strpos(lower(coalesce(errors -> -1 ->> 'error', '')), lower($4)) > 0)
    AND ($5::int8[] IS NULL OR id = ANY($5))";

fn bind_selection<'q, O>(
    query: sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments>,
    filter: &'q DeadFilter,
    ids: Option<&'q [i64]>,
) -> sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments> {
    query.bind(&filter.account).bind(&filter.kind).bind(filter.lead).bind(&filter.error).bind(ids)
}

impl DeadFilter {
    /// The page size and the cursor, checked. Checked wherever a filter is taken, even where it
    /// pages nothing (counts, bulk actions): the API's document states one rule for a filter.
    fn paging(&self) -> Result<(i64, Option<i64>), OpsError> {
        Ok((super::limit(self.limit)?, super::cursor(self.cursor.as_deref())?))
    }
}

/// A page of dead jobs, oldest first.
pub async fn list(pool: &PgPool, filter: &DeadFilter) -> Result<Page<DeadJob>, OpsError> {
    let (limit, after) = filter.paging()?;
    let after = after.unwrap_or(0);
    let sql = format!(
        "SELECT id, kind, account, lead_id, event_id, attempt, max_attempts, finished_at, errors -> -1 ->> 'error' AS last_error
         FROM jobs WHERE {SELECTED} AND id > $6 ORDER BY id LIMIT $7"
    );
    let items = bind_selection(sqlx::query_as(super::sql(sql)), filter, None).bind(after).bind(limit + 1).fetch_all(pool).await?;
    Ok(page(items, limit, |job: &DeadJob| job.id))
}

/// Dead jobs counted by kind and last error, most first.
pub async fn counts(pool: &PgPool, filter: &DeadFilter) -> Result<Vec<DeadCount>, OpsError> {
    filter.paging()?;
    let sql = format!(
        "SELECT kind, left(coalesce(errors -> -1 ->> 'error', ''), 200) AS error, count(*) AS count
         FROM jobs WHERE {SELECTED} GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2"
    );
    Ok(bind_selection(sqlx::query_as(super::sql(sql)), filter, None).fetch_all(pool).await?)
}

/// Any job, dead or not, with its arguments, every attempt's error and its causing event.
pub async fn show(pool: &PgPool, id: i64) -> Result<JobDetail, OpsError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        job: JobSummary,
        account: String,
        lead_id: Option<i64>,
        args: Value,
        errors: Value,
        locked_by: Option<String>,
        event_id: Option<Uuid>,
        replayed_as: Option<i64>,
    }
    let row: Row = sqlx::query_as(super::sql(format!(
        "SELECT {JOB_SUMMARY}, account, lead_id, args, errors, locked_by, event_id,
                (SELECT r.id FROM jobs r WHERE r.replay_of = jobs.id) AS replayed_as
         FROM jobs WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| OpsError::NotFound(format!("no job {id}")))?;
    let event = match row.event_id {
        Some(event_id) => super::events::summary(pool, event_id).await?,
        None => None,
    };
    let Row { job, account, lead_id, args, errors, locked_by, replayed_as, .. } = row;
    Ok(JobDetail { job, account, lead_id, args, errors, locked_by, replayed_as, event })
}

/// Replays the selected dead jobs: each gets a new job (same kind, arguments and event, its
/// attempts anew) that points at it, and becomes `replayed`. `progress(done, total)` is called
/// after every batch.
pub async fn replay(
    pool: &PgPool,
    selection: &Selection,
    operator: &Operator,
    reason: &str,
    dry_run: bool,
    progress: &mut (dyn FnMut(i64, i64) + Send),
) -> Result<Outcome, OpsError> {
    act(pool, selection, Action::Replay, operator, reason, dry_run, progress).await
}

/// Discards the selected dead jobs: they become `discarded` and stay for the record.
pub async fn discard(
    pool: &PgPool,
    selection: &Selection,
    operator: &Operator,
    reason: &str,
    dry_run: bool,
    progress: &mut (dyn FnMut(i64, i64) + Send),
) -> Result<Outcome, OpsError> {
    act(pool, selection, Action::Discard, operator, reason, dry_run, progress).await
}

/// What an operator does to a selection of dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// See [`replay`].
    Replay,
    /// See [`discard`].
    Discard,
}

/// [`replay`] or [`discard`], chosen by `action` (for callers that hold the choice as a value).
pub async fn act(
    pool: &PgPool,
    selection: &Selection,
    action: Action,
    operator: &Operator,
    reason: &str,
    dry_run: bool,
    progress: &mut (dyn FnMut(i64, i64) + Send),
) -> Result<Outcome, OpsError> {
    let reason = super::reason(reason)?;
    let all = DeadFilter::default();
    let (filter, ids) = match selection {
        Selection::Ids(ids) if ids.is_empty() => return Err(OpsError::BadRequest("no job ids given".into())),
        Selection::Ids(ids) => (&all, Some(ids.as_slice())),
        Selection::Matching(filter) => {
            filter.paging()?;
            (filter, None)
        }
    };
    let (matched,): (i64,) =
        bind_selection(sqlx::query_as(super::sql(format!("SELECT count(*) FROM jobs WHERE {SELECTED}"))), filter, ids).fetch_one(pool).await?;
    if let Some(ids) = ids
        && matched < ids.len() as i64
    {
        let dead: Vec<i64> = bind_selection(sqlx::query_as(super::sql(format!("SELECT id FROM jobs WHERE {SELECTED}"))), filter, Some(ids))
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|(id,): (i64,)| id)
            .collect();
        let missing: Vec<String> = ids.iter().filter(|id| !dead.contains(id)).map(i64::to_string).collect();
        return Err(OpsError::BadRequest(format!("not dead letters (or no such jobs): {}; nothing was changed", missing.join(", "))));
    }
    if dry_run {
        return Ok(Outcome { matched, done: 0, dry_run });
    }
    let mut done = 0;
    let mut after = 0;
    loop {
        let mut tx = pool.begin().await?;
        let (count, last) = batch(&mut tx, filter, ids, after, action, operator, reason).await?;
        tx.commit().await?;
        if count == 0 {
            break;
        }
        done += count;
        after = last;
        progress(done, matched.max(done));
    }
    if matches!(action, Action::Replay) && done > 0 {
        crate::queue::wake_workers(pool).await?;
    }
    Ok(Outcome { matched, done, dry_run })
}

/// Acts on the next batch of selected jobs after id `after`; returns how many and the last id.
async fn batch(
    tx: &mut Transaction<'_, Postgres>,
    filter: &DeadFilter,
    ids: Option<&[i64]>,
    after: i64,
    action: Action,
    operator: &Operator,
    reason: &str,
) -> Result<(i64, i64), OpsError> {
    let (state, record) = match action {
        Action::Replay => ("replayed", "job.replayed"),
        Action::Discard => ("discarded", "job.discarded"),
    };
    // A replay's new job takes over the unique key, so the dead one gives it up.
    let sql = format!(
        "WITH picked AS (
             SELECT id, unique_key FROM jobs WHERE {SELECTED} AND id > $6 ORDER BY id LIMIT $7 FOR UPDATE SKIP LOCKED
         ), acted AS (
             UPDATE jobs j SET state = $8, finished_at = now(), unique_key = CASE WHEN $8 = 'replayed' THEN NULL ELSE j.unique_key END
             FROM picked WHERE j.id = picked.id
             RETURNING j.id, j.kind, j.args, j.account, j.lead_id, j.event_id, j.max_attempts, picked.unique_key, j.errors -> -1 ->> 'error' AS error
         ), replays AS (
             INSERT INTO jobs (kind, args, account, lead_id, event_id, max_attempts, unique_key, replay_of)
             SELECT kind, args, account, lead_id, event_id, max_attempts, unique_key, id FROM acted WHERE $8 = 'replayed'
             RETURNING id, replay_of
         )
         SELECT a.id, a.kind, a.account, a.lead_id, a.event_id, a.error, r.id AS replayed_as
         FROM acted a LEFT JOIN replays r ON r.replay_of = a.id ORDER BY a.id"
    );
    let acted: Vec<Acted> = bind_selection(sqlx::query_as(super::sql(sql)), filter, ids).bind(after).bind(BATCH).bind(state).fetch_all(&mut **tx).await?;
    for Acted { id, kind, account, lead_id, event_id, error, replayed_as } in &acted {
        let key = format!("{record}:{id}");
        let mut payload = json!({ "job_id": id, "job_kind": kind, "operator": operator.0, "reason": reason });
        if let Some(replayed_as) = replayed_as {
            payload["replayed_as"] = json!(replayed_as);
        }
        if let Some(error) = error {
            payload["last_error"] = json!(error);
        }
        let account = crate::ids::AccountSlug::from(account.as_str());
        let fact = crate::event_log::Fact {
            account: &account,
            kind: record,
            dedup_key: &key,
            lead_id: lead_id.map(crate::ids::LeadId),
            caused_by_event: *event_id,
            caused_by_job: Some(crate::ids::JobId(*id)),
            payload,
        };
        crate::event_log::append_fact(&mut **tx, fact).await?;
    }
    Ok((acted.len() as i64, acted.last().map_or(0, |acted| acted.id)))
}

/// A dead letter an operator replayed or discarded, as its fact records it.
#[derive(sqlx::FromRow)]
struct Acted {
    id: i64,
    kind: String,
    account: String,
    lead_id: Option<i64>,
    event_id: Option<Uuid>,
    error: Option<String>,
    replayed_as: Option<i64>,
}
