//! The log, searched: list with filters and a cursor, show one event with the jobs it caused,
//! and replay an event (derive its jobs again, e.g. after a bug fix).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Operator, OpsError, Page};
use crate::config::{Accounts, JobPolicies};
use crate::event_log::{NewEvent, Source};
use crate::jobs;
use crate::provider::Provider;

/// What to list; every field optional. Times are RFC 3339; `cursor` comes from a previous page.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    pub account: Option<String>,
    pub lead: Option<i64>,
    /// `kommo`, `stripe`, `lemonsqueezy` or `internal`.
    #[schemars(extend("enum" = SOURCES))]
    pub source: Option<String>,
    pub kind: Option<String>,
    /// Received at or after, RFC 3339.
    #[schemars(extend("format" = "date-time"))]
    pub from: Option<String>,
    /// Received before, RFC 3339.
    #[schemars(extend("format" = "date-time"))]
    pub to: Option<String>,
    /// The `next_cursor` of the page before.
    #[schemars(pattern(r"^[1-9][0-9]{0,18}$"))]
    pub cursor: Option<String>,
    /// Items per page (default 100).
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<i64>,
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct EventSummary {
    /// The log's global order.
    pub seq: i64,
    pub id: Uuid,
    pub account: String,
    pub source: String,
    pub kind: String,
    pub dedup_key: String,
    pub lead_id: Option<i64>,
    pub received_at: DateTime<Utc>,
    /// The job that recorded it, for internal facts.
    pub caused_by_job: Option<i64>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EventDetail {
    #[serde(flatten)]
    pub event: EventSummary,
    pub caused_by_event: Option<Uuid>,
    pub payload: Value,
    pub headers: Value,
    /// The jobs it caused, with their outcomes.
    pub jobs: Vec<JobSummary>,
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct JobSummary {
    pub id: i64,
    pub kind: String,
    pub state: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// The dead job this one replays.
    pub replay_of: Option<i64>,
}

pub const SOURCES: [&str; 4] = [Provider::Kommo.as_str(), Provider::Stripe.as_str(), Provider::LemonSqueezy.as_str(), Source::Internal.as_str()];
const SUMMARY: &str = "seq, id, account, source, kind, dedup_key, lead_id, received_at, caused_by_job";
pub(super) const JOB_SUMMARY: &str = "id, kind, state, attempt, max_attempts, created_at, finished_at, errors -> -1 ->> 'error' AS last_error, replay_of";

/// A page of events, newest first.
pub async fn list(pool: &PgPool, filter: &EventFilter) -> Result<Page<EventSummary>, OpsError> {
    let limit = super::limit(filter.limit)?;
    let before = super::cursor(filter.cursor.as_deref())?;
    if let Some(source) = filter.source.as_deref().filter(|s| !SOURCES.contains(s)) {
        return Err(OpsError::BadRequest(format!("source {source:?} is not one of {}", SOURCES.join(", "))));
    }
    let (from, to) = (super::time("from", filter.from.as_deref())?, super::time("to", filter.to.as_deref())?);
    if let (Some(from), Some(to)) = (from, to)
        && from > to
    {
        return Err(OpsError::BadRequest("from is after to".into()));
    }
    let items: Vec<EventSummary> = sqlx::query_as(super::sql(format!(
        "SELECT {SUMMARY} FROM events
         WHERE ($1::text IS NULL OR account = $1) AND ($2::int8 IS NULL OR lead_id = $2)
           AND ($3::text IS NULL OR source = $3) AND ($4::text IS NULL OR kind = $4)
           AND ($5::timestamptz IS NULL OR received_at >= $5) AND ($6::timestamptz IS NULL OR received_at < $6)
           AND ($7::int8 IS NULL OR seq < $7)
         ORDER BY seq DESC LIMIT $8"
    )))
    .bind(&filter.account)
    .bind(filter.lead)
    .bind(&filter.source)
    .bind(&filter.kind)
    .bind(from)
    .bind(to)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page(items, limit, |e| e.seq))
}

/// Cuts the one extra row a query read to learn whether another page follows.
pub(super) fn page<T>(mut items: Vec<T>, limit: i64, key: impl Fn(&T) -> i64) -> Page<T> {
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_cursor = if more { items.last().map(|last| key(last).to_string()) } else { None };
    Page { items, next_cursor }
}

/// One event with its payload and the jobs it caused.
pub async fn show(pool: &PgPool, id: Uuid) -> Result<EventDetail, OpsError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        event: EventSummary,
        caused_by_event: Option<Uuid>,
        payload: Value,
        headers: Value,
    }
    let row: Row = sqlx::query_as(super::sql(format!("SELECT {SUMMARY}, caused_by_event, payload, headers FROM events WHERE id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("no event {id}")))?;
    let jobs = sqlx::query_as(super::sql(format!("SELECT {JOB_SUMMARY} FROM jobs WHERE event_id = $1 ORDER BY id"))).bind(id).fetch_all(pool).await?;
    Ok(EventDetail { event: row.event, caused_by_event: row.caused_by_event, payload: row.payload, headers: row.headers, jobs })
}

/// An event id as an operator typed it.
pub fn parse_id(text: &str) -> Result<Uuid, OpsError> {
    text.parse().map_err(|_| OpsError::BadRequest(format!("{text:?} is not an event id (a UUID)")))
}

/// An event's summary, without its payload.
pub(super) async fn summary(pool: &PgPool, id: Uuid) -> Result<Option<EventSummary>, sqlx::Error> {
    sqlx::query_as(super::sql(format!("SELECT {SUMMARY} FROM events WHERE id = $1"))).bind(id).fetch_optional(pool).await
}

/// `POST /ops/v1/events/{id}/replay`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Why, for the audit log: not blank.
    #[schemars(length(min = 1), pattern(r"\S"))]
    pub reason: String,
}

/// What replaying an event did.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EventReplay {
    /// The `event.replayed` record in the log.
    pub record: Uuid,
    pub jobs: Vec<i64>,
}

/// Derives the jobs of event `id` again, as the job registry decides today, and enqueues them
/// linked to the event; the replay is recorded in the log with the operator and the reason.
pub async fn replay(pool: &PgPool, accounts: &Accounts, policies: &JobPolicies, id: Uuid, operator: &Operator, reason: &str) -> Result<EventReplay, OpsError> {
    let reason = super::reason(reason)?;
    let detail = show(pool, id).await?;
    let event = &detail.event;
    let account = accounts.get(&event.account).ok_or_else(|| OpsError::BadRequest(format!("account {:?} is no longer configured", event.account)))?;
    let Some(source) = Provider::parse(&event.source).map(Source::from) else {
        return Err(OpsError::BadRequest(format!("event {id} is an internal record; only deliveries from a provider imply jobs")));
    };
    let payload = serde_json::value::to_raw_value(&detail.payload).expect("JSON serialises");
    let mut stored = NewEvent::new(&account.slug, source, event.kind.clone(), event.dedup_key.clone(), event.lead_id.map(crate::ids::LeadId), payload);
    stored.id = id;
    let derived = jobs::implied_by(&stored, account, policies);
    if derived.is_empty() {
        return Err(OpsError::BadRequest(format!("event {id} ({}) implies no job", event.kind)));
    }
    let mut tx = pool.begin().await?;
    let mut ids = Vec::new();
    for job in &derived {
        // Derived jobs carry no unique key (their event is unique), so each is new.
        ids.extend(crate::queue::enqueue(&mut *tx, job).await?.map(|id| id.0));
    }
    // Every replay is its own fact: a fresh key each time.
    let key = format!("event.replayed:{id}:{}", Uuid::now_v7());
    let fact = crate::event_log::Fact {
        account: &account.slug,
        kind: "event.replayed",
        dedup_key: &key,
        lead_id: event.lead_id.map(crate::ids::LeadId),
        caused_by_event: Some(id),
        caused_by_job: None,
        payload: json!({ "event_id": id, "event_kind": event.kind, "jobs": ids, "operator": operator.0, "reason": reason }),
    };
    let record = crate::event_log::append_fact(&mut *tx, fact).await?.expect("a fresh key is new");
    tx.commit().await?;
    crate::queue::wake_workers(pool).await?;
    Ok(EventReplay { record, jobs: ids })
}
