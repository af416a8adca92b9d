//! The append-only event log (`events`): every verified delivery and every internal fact.
//!
//! [`append`] writes a batch of events and the jobs they imply in one statement, so one
//! transaction and one round trip: the event and its work are committed together or not at all,
//! and a redelivered event (same account, source and dedup key) changes nothing, not even its jobs.

use crate::ids::{AccountSlug, JobId, LeadId};
use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::provider::Provider;
use crate::queue::NewJob;

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Kommo,
    Stripe,
    LemonSqueezy,
    /// Facts recorded by kommo-pay itself (link issued, job dead-lettered, replayed, …).
    Internal,
}

impl Source {
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Kommo => Provider::Kommo.as_str(),
            Source::Stripe => Provider::Stripe.as_str(),
            Source::LemonSqueezy => Provider::LemonSqueezy.as_str(),
            Source::Internal => "internal",
        }
    }
}

impl From<Provider> for Source {
    fn from(provider: Provider) -> Source {
        match provider {
            Provider::Kommo => Source::Kommo,
            Provider::Stripe => Source::Stripe,
            Provider::LemonSqueezy => Source::LemonSqueezy,
        }
    }
}

/// An event about to be appended.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: Uuid,
    pub account: AccountSlug,
    pub source: Source,
    pub kind: String,
    pub dedup_key: String,
    pub lead_id: Option<LeadId>,
    /// The delivery as received (for Kommo, one change of the form body as JSON). Raw JSON
    /// text, passed through to `jsonb` without a parse-and-reserialise round trip.
    pub payload: Box<RawValue>,
    /// A safe subset of the request headers; never signatures or secrets.
    pub headers: Value,
}

impl NewEvent {
    pub fn new(account: &AccountSlug, source: Source, kind: String, dedup_key: String, lead_id: Option<LeadId>, payload: Box<RawValue>) -> Self {
        NewEvent { id: Uuid::now_v7(), account: account.to_owned(), source, kind, dedup_key, lead_id, payload, headers: Value::Object(Default::default()) }
    }
}

/// A delivery whose body, though authentic, is not what the provider sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(String);

impl PayloadError {
    pub fn new(message: impl Into<String>) -> Self {
        PayloadError(message.into())
    }
}

/// The body as raw JSON, for [`NewEvent::payload`]; it must be a JSON document.
pub fn raw_json(body: &[u8]) -> Result<Box<RawValue>, PayloadError> {
    let text = std::str::from_utf8(body).map_err(|_| PayloadError::new("the body is not UTF-8"))?;
    RawValue::from_string(text.to_owned()).map_err(|e| PayloadError::new(format!("not JSON: {e}")))
}

/// What [`append`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Ids of the events that were new.
    pub new_events: Vec<Uuid>,
    /// Events already in the log (redeliveries); neither they nor their jobs were written again.
    pub duplicates: usize,
    /// Jobs enqueued for the new events.
    pub jobs: i64,
}

const APPEND: &str = r#"
WITH appended AS (
    INSERT INTO events (id, account, source, kind, dedup_key, lead_id, payload, headers)
    SELECT id, account, source, kind, dedup_key, lead_id, payload::jsonb, headers
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::text[], $8::jsonb[])
        AS e(id, account, source, kind, dedup_key, lead_id, payload, headers)
    ON CONFLICT ON CONSTRAINT events_dedup DO NOTHING
    RETURNING id
), enqueued AS (
    INSERT INTO jobs (event_id, kind, args, account, lead_id, max_attempts, unique_key)
    SELECT j.event_id, j.kind, j.args, j.account, j.lead_id, j.max_attempts, j.unique_key
    FROM unnest($9::uuid[], $10::text[], $11::jsonb[], $12::text[], $13::int8[], $14::int4[], $15::text[])
        AS j(event_id, kind, args, account, lead_id, max_attempts, unique_key)
    WHERE j.event_id IN (SELECT id FROM appended)
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
    RETURNING 1
)
SELECT coalesce((SELECT array_agg(id) FROM appended), '{}') AS appended,
       (SELECT count(*) FROM enqueued) AS enqueued
"#;

/// A fact kommo-pay itself records (source `internal`): what a job established about a deal
/// (`payment_link.issued`, `payment.received`, a projection's change), a job's dead letter, an
/// operator's action.
pub struct Fact<'a> {
    pub account: &'a AccountSlug,
    pub kind: &'a str,
    /// Once per key: a retry that records the same fact again changes nothing.
    pub dedup_key: &'a str,
    pub lead_id: Option<LeadId>,
    /// The event it follows from (an operator's replay of it, a dead job's cause).
    pub caused_by_event: Option<Uuid>,
    /// The job that established it.
    pub caused_by_job: Option<JobId>,
    pub payload: Value,
}

impl<'a> Fact<'a> {
    /// What job `job_id` established about deal `lead_id`.
    pub fn of_job(account: &'a AccountSlug, kind: &'a str, dedup_key: &'a str, lead_id: LeadId, job_id: JobId, payload: Value) -> Fact<'a> {
        Fact { account, kind, dedup_key, lead_id: Some(lead_id), caused_by_event: None, caused_by_job: Some(job_id), payload }
    }
}

/// Appends an internal fact, inside the caller's transaction when it passes one, so that the
/// fact and the state it describes are committed together. Returns the new fact's id, or `None`
/// when its key was recorded already.
pub async fn append_fact<'e>(db: impl PgExecutor<'e>, fact: Fact<'_>) -> Result<Option<Uuid>, sqlx::Error> {
    Ok(append_facts(db, &[fact]).await?.remove(0))
}

/// Appends internal facts in one statement, in their order in the log: the one writer of
/// internal facts. Returns each fact's new id, or `None` where its key was recorded already.
pub async fn append_facts<'e>(db: impl PgExecutor<'e>, facts: &[Fact<'_>]) -> Result<Vec<Option<Uuid>>, sqlx::Error> {
    // Ids are made here, in order, so the answer tells which facts were new.
    let ids: Vec<Uuid> = facts.iter().map(|_| Uuid::now_v7()).collect();
    let new: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO events (id, account, source, kind, dedup_key, lead_id, caused_by_event, caused_by_job, payload)
         SELECT id, account, 'internal', kind, dedup_key, lead_id, caused_by_event, caused_by_job, payload
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::uuid[], $7::int8[], $8::jsonb[]) WITH ORDINALITY
             AS f(id, account, kind, dedup_key, lead_id, caused_by_event, caused_by_job, payload, n)
         ORDER BY n
         ON CONFLICT ON CONSTRAINT events_dedup DO NOTHING RETURNING id",
    )
    .bind(&ids)
    .bind(facts.iter().map(|f| f.account.as_str()).collect::<Vec<_>>())
    .bind(facts.iter().map(|f| f.kind).collect::<Vec<_>>())
    .bind(facts.iter().map(|f| f.dedup_key).collect::<Vec<_>>())
    .bind(facts.iter().map(|f| f.lead_id.map(|id| id.0)).collect::<Vec<_>>())
    .bind(facts.iter().map(|f| f.caused_by_event).collect::<Vec<_>>())
    .bind(facts.iter().map(|f| f.caused_by_job.map(|id| id.0)).collect::<Vec<_>>())
    .bind(facts.iter().map(|f| &f.payload).collect::<Vec<_>>())
    .fetch_all(db)
    .await?;
    Ok(ids.into_iter().map(|id| new.contains(&id).then_some(id)).collect())
}

/// Appends `events` and enqueues `jobs` (each naming its event by `event_id`) atomically.
/// Jobs of events that turn out to be duplicates are dropped with them.
pub async fn append<'e>(db: impl PgExecutor<'e>, events: &[NewEvent], jobs: &[NewJob]) -> Result<Appended, sqlx::Error> {
    let (new_events, enqueued): (Vec<Uuid>, i64) = sqlx::query_as(APPEND)
        .bind(events.iter().map(|e| e.id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.account.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.source.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.dedup_key.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.lead_id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.payload.get()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| &e.headers).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.event_id).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| &j.args).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.account.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.lead_id).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.max_attempts).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.unique_key.as_deref()).collect::<Vec<_>>())
        .fetch_one(db)
        .await?;
    Ok(Appended { duplicates: events.len() - new_events.len(), new_events, jobs: enqueued })
}
