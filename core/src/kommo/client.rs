//! The one Kommo API client: every call to Kommo goes through it, so the account's rate limit,
//! pauses and blocks hold for all of kommo-pay.
//!
//! - **Rate**: before each request the client reserves the account's next send slot in
//!   PostgreSQL (`api_limits`, one upsert; `crate::rate_limit`) and waits for it, so any number
//!   of worker processes together send at most `requests_per_second`.
//! - **429**: the account is paused for everyone for `retry_after` (or a minute), and the job
//!   retries later.
//! - **403** (Kommo's block, JSON or an nginx HTML page): the account is blocked for everyone;
//!   calls fail at once without reaching Kommo until an operator clears `blocked_at`. Hammering a
//!   blocked account only prolongs the block.
//! - **204** is an empty result, not an error.
//! - **OAuth 2.0**: the access token is refreshed five minutes before it expires and once on a
//!   401; one refresh at a time per account (a row lock on `kommo_tokens`), and the rotated pair
//!   is committed before the new access token is used.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::PgPool;

use super::activity::{NewNote, NewTask, SalesbotLaunch, Written};
use super::batch::{Batcher, List, MOST_LAUNCHES, MOST_WRITES, Page, Reader};
use super::fields::{LeadField, NewField};
use super::lead::{Contact, Lead, LeadChanges, NewLead};
use super::stage_changes::StageChange;
use super::webhook::Webhook;
use crate::ids::{AccountSlug, ContactId, LeadId};
use crate::provider::Provider;
use crate::rate_limit::{RateLimiter, Slot};

/// The pause after a 429 that names no `retry_after`.
const DEFAULT_PAUSE: Duration = Duration::from_secs(60);

pub struct KommoClient {
    api: Arc<Api>,
    /// Writes that Kommo takes in arrays go out batched, up to 50 per request: while one request
    /// waits for its rate-limit slot or its answer, the next writes gather.
    lead_updates: Batcher,
    lead_notes: Batcher,
    tasks: Batcher,
    salesbot_launches: Batcher,
    /// Reads by id go out as lists of up to 250 ids, gathered the same way: leads and contacts,
    /// and the notes and tasks of leads (the checks before a retried write).
    lead_reads: Reader,
    contact_reads: Reader,
    note_reads: Reader,
    task_reads: Reader,
    /// The deals' custom fields, read at most every [`FIELDS_KEPT`]: checkout data is checked
    /// against them on every paid order, and admins change fields rarely.
    lead_fields: tokio::sync::Mutex<Option<(std::time::Instant, Arc<[LeadField]>)>>,
}

/// How long the deals' custom fields, once read, are taken as they were.
const FIELDS_KEPT: Duration = Duration::from_secs(600);

tokio::task_local! {
    /// A lead read for the running job together with its group's (one list request for many
    /// jobs, `worker::executor`): the job's first read of that lead is answered from here.
    /// Scoped to the job's own task, so no other job ever sees it.
    static READ_AHEAD: std::cell::Cell<Option<(LeadId, Result<Option<Lead>, KommoError>)>>;
}

/// Runs `job` with `lead` as the answer to its first [`KommoClient::lead`] of lead `id` (`None`:
/// Kommo has no such lead; an error: the read failed, as the job's own read would have). The
/// read was made for the job a moment before it started, in one list request with the rest of
/// its group; any later read of the lead goes to Kommo.
pub async fn with_lead_read<F: std::future::Future>(id: LeadId, lead: Result<Option<Lead>, KommoError>, job: F) -> F::Output {
    READ_AHEAD.scope(std::cell::Cell::new(Some((id, lead))), job).await
}

/// The running job's read-ahead of lead `id`, taken (once).
fn read_ahead(id: LeadId) -> Option<Result<Option<Lead>, KommoError>> {
    READ_AHEAD
        .try_with(|ahead| match ahead.take() {
            Some((read, lead)) if read == id => Some(lead),
            other => {
                ahead.set(other);
                None
            }
        })
        .ok()
        .flatten()
}

/// One request to Kommo at a time, within the account's limits.
pub(super) struct Api {
    http: reqwest::Client,
    base: url::Url,
    account: AccountSlug,
    credentials: Credentials,
    pool: PgPool,
    limiter: RateLimiter,
}

/// How the client authenticates.
#[derive(Clone)]
pub enum Credentials {
    /// A private integration's long-lived token.
    LongLived(SecretString),
    /// OAuth 2.0: access tokens from `kommo_tokens` (stored by the installation, `oauth.rs`),
    /// refreshed with the stored refresh token (or, before any is stored, the configured
    /// bootstrap `initial_refresh_token`).
    Oauth { client_id: String, client_secret: SecretString, redirect_uri: String, initial_refresh_token: Option<SecretString> },
}

/// Refresh this long before the access token expires.
const REFRESH_AHEAD: Duration = Duration::from_secs(300);

/// Why a Kommo call failed.
#[derive(Debug, thiserror::Error)]
pub enum KommoError {
    /// Kommo blocked the account (403); nothing is sent until an operator unblocks it.
    #[error("Kommo has blocked API access for account {account} since {since}: {reason}")]
    Blocked { account: AccountSlug, since: DateTime<Utc>, reason: String },
    /// Too many requests (429), or our own queue for the account is too long.
    #[error("Kommo's rate limit for account {account}: retry after {retry_after:?}")]
    RateLimited { account: AccountSlug, retry_after: Duration },
    /// The token is invalid, expired or revoked (401), or the account is unpaid (402).
    #[error("Kommo refused the credentials of account {account} ({status}): {detail}")]
    Unauthorized { account: AccountSlug, status: u16, detail: String },
    /// Kommo refused the request itself (400, 404, 422 …): retrying the same request won't help.
    #[error("Kommo refused the request ({status}): {detail}")]
    Refused { status: u16, detail: String },
    /// Kommo failed (5xx) or could not be reached in time.
    #[error("Kommo is unavailable: {0}")]
    Unavailable(String),
    /// Our own database, which holds the rate limit.
    #[error("the rate-limit state could not be read: {0}")]
    Database(#[from] sqlx::Error),
}

impl KommoError {
    /// The same error for another caller (each write of a failed batch gets its own).
    pub fn replicate(&self) -> KommoError {
        match self {
            KommoError::Blocked { account, since, reason } => KommoError::Blocked { account: account.clone(), since: *since, reason: reason.clone() },
            KommoError::RateLimited { account, retry_after } => KommoError::RateLimited { account: account.clone(), retry_after: *retry_after },
            KommoError::Unauthorized { account, status, detail } => {
                KommoError::Unauthorized { account: account.clone(), status: *status, detail: detail.clone() }
            }
            KommoError::Refused { status, detail } => KommoError::Refused { status: *status, detail: detail.clone() },
            KommoError::Unavailable(detail) => KommoError::Unavailable(detail.clone()),
            KommoError::Database(error) => KommoError::Unavailable(format!("the rate-limit state could not be read: {error}")),
        }
    }

    /// Worth trying again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, KommoError::RateLimited { .. } | KommoError::Unavailable(_) | KommoError::Database(_))
    }

    /// Needs a person (a block, bad credentials): the job should be dead-lettered, not retried.
    pub fn needs_operator(&self) -> bool {
        matches!(self, KommoError::Blocked { .. } | KommoError::Unauthorized { .. })
    }
}

impl KommoClient {
    /// The client for a configured account, with its credentials and rate.
    pub fn for_account(pool: PgPool, account: &crate::config::Account) -> KommoClient {
        use crate::config::KommoAuth;
        let credentials = match &account.kommo.auth {
            KommoAuth::LongLivedToken { token } => Credentials::LongLived(token.clone()),
            KommoAuth::Oauth { client_id, client_secret, redirect_uri, refresh_token } => Credentials::Oauth {
                client_id: client_id.clone(),
                client_secret: client_secret.clone(),
                redirect_uri: redirect_uri.to_string(),
                initial_refresh_token: refresh_token.clone(),
            },
        };
        Self::new(pool, &account.slug, account.kommo.base_url.clone(), credentials, account.kommo.requests_per_second)
    }

    /// A client for `account` at `base`, sending at most `requests_per_second` together with
    /// every other client of the account.
    pub fn new(pool: PgPool, account: &AccountSlug, base: url::Url, credentials: Credentials, requests_per_second: f64) -> KommoClient {
        Self::with_timeouts(pool, account, base, credentials, requests_per_second, Duration::from_secs(20))
    }

    /// As [`KommoClient::new`], with another request timeout (connect: 5 s, as Kommo's own
    /// library; request: 20 s by default).
    pub fn with_timeouts(
        pool: PgPool,
        account: &AccountSlug,
        base: url::Url,
        credentials: Credentials,
        requests_per_second: f64,
        request_timeout: Duration,
    ) -> KommoClient {
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).timeout(request_timeout).build().expect("a TLS backend is available");
        let limiter = RateLimiter::new(pool.clone(), Provider::Kommo, account, requests_per_second);
        let api = Arc::new(Api { http, base, account: account.clone(), credentials, pool, limiter });
        KommoClient {
            lead_updates: Batcher::spawn(api.clone(), reqwest::Method::PATCH, "api/v4/leads", MOST_WRITES),
            lead_notes: Batcher::spawn(api.clone(), reqwest::Method::POST, "api/v4/leads/notes", MOST_WRITES),
            tasks: Batcher::spawn(api.clone(), reqwest::Method::POST, "api/v4/tasks", MOST_WRITES),
            salesbot_launches: Batcher::spawn(api.clone(), reqwest::Method::POST, "api/v2/salesbot/run", MOST_LAUNCHES),
            lead_reads: Reader::spawn(api.clone(), List { path: "api/v4/leads", query: "with=contacts", by: "id", embedded: "leads" }),
            contact_reads: Reader::spawn(api.clone(), List { path: "api/v4/contacts", query: "", by: "id", embedded: "contacts" }),
            note_reads: Reader::spawn(
                api.clone(),
                List { path: "api/v4/leads/notes", query: "filter[note_type]=common&order[id]=desc", by: "entity_id", embedded: "notes" },
            ),
            task_reads: Reader::spawn(
                api.clone(),
                List { path: "api/v4/tasks", query: "filter[entity_type]=leads&order[id]=desc", by: "entity_id", embedded: "tasks" },
            ),
            lead_fields: tokio::sync::Mutex::new(None),
            api,
        }
    }

    /// A lead with its contact ids (`with=contacts`); `None` when Kommo has no such lead. Read in
    /// one list request with the other reads waiting meanwhile (or read ahead with the job's
    /// group, [`with_lead_read`]).
    pub async fn lead(&self, id: LeadId) -> Result<Option<Lead>, KommoError> {
        if let Some(lead) = read_ahead(id) {
            return lead;
        }
        self.lead_reads.read_one(id.0).await?.map(|lead| decode("GET api/v4/leads", lead)).transpose()
    }

    /// The leads with `ids` that Kommo has, with their contact ids, in ⌈n / 250⌉ list requests.
    pub async fn leads(&self, ids: Vec<LeadId>) -> Result<std::collections::HashMap<LeadId, Lead>, KommoError> {
        let found = self.lead_reads.read(ids.into_iter().map(|id| id.0).collect()).await?;
        found.into_iter().filter_map(|(id, leads)| Some(decode("GET api/v4/leads", leads.into_iter().next()?).map(|lead| (LeadId(id), lead)))).collect()
    }

    /// A contact with its custom fields (phone, email); `None` when there is no such contact.
    pub async fn contact(&self, id: ContactId) -> Result<Option<Contact>, KommoError> {
        self.contact_reads.read_one(id.0).await?.map(|contact| decode("GET api/v4/contacts", contact)).transpose()
    }

    /// Changes the fields in `changes` (only those) of lead `id`. Batched with other updates.
    pub async fn update_lead(&self, id: LeadId, changes: &LeadChanges) -> Result<(), KommoError> {
        let mut update = body(changes);
        update["id"] = serde_json::json!(id);
        self.lead_updates.submit(update).await
    }

    /// Adds a common note with `text` to lead `lead_id`. Kommo has no idempotency keys, so when
    /// `maybe_done` (an earlier attempt may have added it, then died before recording that) the
    /// lead's notes are read first (with other leads' in one list), and a note with this text
    /// means it is done. Batched with other notes.
    pub async fn add_lead_note_once(&self, lead_id: LeadId, text: &str, maybe_done: bool) -> Result<(), KommoError> {
        if maybe_done && self.written(&self.note_reads, lead_id, text).await? {
            tracing::info!(lead_id = lead_id.0, "the note was added by an earlier attempt");
            return Ok(());
        }
        self.lead_notes.submit(body(&NewNote::common(lead_id, text))).await
    }

    /// Creates `task`, read before written when `maybe_done`, like
    /// [`KommoClient::add_lead_note_once`]. Batched with other tasks.
    pub async fn add_task_once(&self, task: &NewTask, maybe_done: bool) -> Result<(), KommoError> {
        if maybe_done && self.written(&self.task_reads, task.entity_id, &task.text).await? {
            tracing::info!(lead_id = task.entity_id.0, "the task was created by an earlier attempt");
            return Ok(());
        }
        self.tasks.submit(body(task)).await
    }

    /// Whether lead `lead_id` has a note or task (as `reads` lists them) with `text`.
    async fn written(&self, reads: &Reader, lead_id: LeadId, text: &str) -> Result<bool, KommoError> {
        let found = reads.read(vec![lead_id.0]).await?.remove(&lead_id.0).unwrap_or_default();
        Ok(found.into_iter().filter_map(|item| serde_json::from_value::<Written>(item).ok()).any(|item| item.text() == Some(text)))
    }

    /// Creates a lead together with its contact (`POST /api/v4/leads/complex`, one lead);
    /// returns the new lead's id.
    pub async fn create_lead_with_contact(&self, lead: &NewLead) -> Result<LeadId, KommoError> {
        #[derive(serde::Deserialize)]
        struct Created {
            #[serde(deserialize_with = "crate::wire::required_id")]
            id: LeadId,
        }
        let call = "POST api/v4/leads/complex";
        let answer = self.api.call::<Vec<Created>>(reqwest::Method::POST, "api/v4/leads/complex", Some(&Value::Array(vec![body(lead)]))).await?;
        answer.and_then(|created| Some(created.first()?.id)).ok_or_else(|| KommoError::Unavailable(format!("{call}: answered without a lead id")))
    }

    /// Leads whose fields contain `query` (Kommo's full-text search; an empty result is none).
    pub async fn search_leads(&self, query: &str) -> Result<Vec<Lead>, KommoError> {
        let path = format!("api/v4/leads?query={}", url::form_urlencoded::byte_serialize(query.as_bytes()).collect::<String>());
        let answer = self.api.call::<Page>(reqwest::Method::GET, &path, None).await?;
        Ok(answer.map(|page| page.items("leads")).unwrap_or_default())
    }

    /// Every custom field of leads, all pages.
    pub async fn lead_custom_fields(&self) -> Result<Vec<LeadField>, KommoError> {
        self.every_page(|page| format!("api/v4/leads/custom_fields?limit=250&page={page}"), "custom_fields").await
    }

    /// Every page of a list (`path` of a page number), its `entities` as `T`.
    async fn every_page<T: DeserializeOwned>(&self, path: impl Fn(u32) -> String, entities: &str) -> Result<Vec<T>, KommoError> {
        let mut found = Vec::new();
        for page in 1.. {
            let Some(answer) = self.api.call::<Page>(reqwest::Method::GET, &path(page), None).await? else { break };
            let last = !answer.has_next();
            found.extend(answer.items(entities));
            if last {
                break;
            }
        }
        Ok(found)
    }

    /// The deals' custom fields with their types and options, read once per [`FIELDS_KEPT`] for
    /// every caller of the account (callers meanwhile wait for the one read).
    pub async fn lead_fields(&self) -> Result<Arc<[LeadField]>, KommoError> {
        let mut kept = self.lead_fields.lock().await;
        if let Some((read_at, fields)) = kept.as_ref()
            && read_at.elapsed() < FIELDS_KEPT
        {
            return Ok(fields.clone());
        }
        let fields: Arc<[LeadField]> = self.lead_custom_fields().await?.into();
        *kept = Some((std::time::Instant::now(), fields.clone()));
        Ok(fields)
    }

    /// Makes sure the account's OAuth access token stays valid for `ahead`, refreshing it now if
    /// not (nothing to do for a long-lived token). Kommo's refresh token dies after three months
    /// unused, so an idle account must refresh on a schedule, not only on use.
    pub async fn refresh_ahead(&self, ahead: Duration) -> Result<(), KommoError> {
        self.api.token_valid_for(None, ahead).await.map(drop)
    }

    /// Every stage change of a lead since `from` (Unix seconds), oldest first, from the events
    /// API (an event that names no lead, time or new stage is left out).
    pub async fn stage_changes_since(&self, from: i64) -> Result<Vec<StageChange>, KommoError> {
        let path = |page| format!("api/v4/events?filter[type]=lead_status_changed&filter[created_at][from]={from}&limit=100&page={page}");
        let events: Vec<Value> = self.every_page(path, "events").await?;
        let mut changes: Vec<StageChange> = events.into_iter().filter_map(StageChange::from_event).collect();
        changes.sort_by_key(|c| c.at);
        Ok(changes)
    }

    /// The account's webhooks.
    pub async fn webhooks(&self) -> Result<Vec<Webhook>, KommoError> {
        let answer = self.api.call::<Page>(reqwest::Method::GET, "api/v4/webhooks", None).await?;
        Ok(answer.map(|page| page.items("webhooks")).unwrap_or_default())
    }

    /// Creates lead custom fields; returns them as Kommo created them.
    pub async fn add_lead_custom_fields(&self, fields: &[NewField]) -> Result<Vec<LeadField>, KommoError> {
        let request = Value::Array(fields.iter().map(body).collect());
        let answer = self.api.call::<Page>(reqwest::Method::POST, "api/v4/leads/custom_fields", Some(&request)).await?;
        Ok(answer.map(|page| page.items("custom_fields")).unwrap_or_default())
    }

    /// Launches Salesbot `bot_id` for lead `lead_id`, with the other launches waiting meanwhile
    /// in one `POST /api/v2/salesbot/run` of up to 100 (Kommo answers 202).
    pub async fn run_salesbot(&self, bot_id: i64, lead_id: LeadId) -> Result<(), KommoError> {
        self.salesbot_launches.submit(body(&SalesbotLaunch::for_lead(bot_id, lead_id))).await
    }
}

/// A request type as the JSON Kommo takes.
fn body(item: &impl serde::Serialize) -> Value {
    serde_json::to_value(item).expect("Kommo's request types serialise to JSON")
}

/// An entity of a list answer as its type; one that does not decode fails the read, naming it.
fn decode<T: DeserializeOwned>(call: &str, entity: Value) -> Result<T, KommoError> {
    serde_json::from_value(entity).map_err(|e| KommoError::Unavailable(format!("{call}: an unreadable entity: {e}")))
}

impl Api {
    pub(super) async fn call<T: DeserializeOwned>(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Option<T>, KommoError> {
        self.slot().await?;
        self.call_in_slot(method, path, body).await
    }

    /// [`Api::call`] for a caller that already holds a send slot ([`Api::slot`]): a batcher
    /// takes its slot first and fills the batch when it has it.
    pub(super) async fn call_in_slot<T: DeserializeOwned>(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Option<T>, KommoError> {
        // Every error names the call, as Stripe's and Lemon Squeezy's do (`http::Failed`).
        let call = format!("{method} {}", crate::http::endpoint_class(path));
        let (mut status, mut bytes, used) = self.send(method.clone(), path, body, None).await?;
        if status == 401 && matches!(self.credentials, Credentials::Oauth { .. }) {
            // Revoked or expired early: refresh (unless another process already did), try once more.
            self.slot().await?;
            (status, bytes, _) = self.send(method, path, body, Some(&used)).await?;
        }
        let detail = || format!("{call}: {}", problem_detail(&bytes));
        match status {
            204 => Ok(None),
            200..=299 if bytes.is_empty() => Ok(None),
            // Accepted: a task was queued (a Salesbot launch); Kommo's body says only that.
            202 => Ok(serde_json::from_slice(&bytes).ok()),
            200..=299 => serde_json::from_slice(&bytes).map(Some).map_err(|e| KommoError::Unavailable(format!("{call}: unreadable answer {status}: {e}"))),
            429 => {
                let retry_after = retry_after(&bytes).unwrap_or(DEFAULT_PAUSE);
                self.pause(retry_after).await?;
                Err(KommoError::RateLimited { account: self.account.clone(), retry_after })
            }
            403 => {
                let reason = format!("403 from {}", detail());
                let since = self.block(&reason).await?;
                Err(KommoError::Blocked { account: self.account.clone(), since, reason })
            }
            401 | 402 => Err(KommoError::Unauthorized { account: self.account.clone(), status, detail: detail() }),
            500.. => Err(KommoError::Unavailable(format!("{status} from {}", detail()))),
            _ => Err(KommoError::Refused { status, detail: detail() }),
        }
    }

    /// Sends one request in a slot already taken; returns its status, body and the token it used.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        refused: Option<&SecretString>,
    ) -> Result<(u16, bytes::Bytes, SecretString), KommoError> {
        let token = self.access_token(refused).await?;
        let url = self.base.join(path).expect("API paths join onto the base URL");
        let call = format!("{method} {}", crate::http::endpoint_class(path));
        let mut request = self.http.request(method, url).bearer_auth(token.expose_secret());
        if let Some(body) = body {
            request = request.json(body);
        }
        let (status, bytes) =
            crate::http::send(Provider::Kommo, path, request).await.map_err(|e| KommoError::Unavailable(format!("{call}: {}", crate::http::describe(e))))?;
        Ok((status, bytes, token))
    }

    /// The token to send: the long-lived one, or a current OAuth access token, refreshed when it
    /// expires within [`REFRESH_AHEAD`] or when it is the `refused` one.
    async fn access_token(&self, refused: Option<&SecretString>) -> Result<SecretString, KommoError> {
        self.token_valid_for(refused, REFRESH_AHEAD).await
    }

    /// [`Api::access_token`], valid for at least `ahead`.
    async fn token_valid_for(&self, refused: Option<&SecretString>, ahead: Duration) -> Result<SecretString, KommoError> {
        let (client_id, client_secret, redirect_uri, initial_refresh_token) = match &self.credentials {
            Credentials::LongLived(token) => return Ok(token.clone()),
            Credentials::Oauth { client_id, client_secret, redirect_uri, initial_refresh_token } => {
                (client_id, client_secret, redirect_uri, initial_refresh_token)
            }
        };
        let fresh = |expires_at: Option<DateTime<Utc>>| {
            expires_at.is_some_and(|at| at - Utc::now() > chrono::Duration::from_std(ahead).unwrap_or(chrono::Duration::MAX))
        };
        if refused.is_none() {
            let stored: Option<(Option<String>, Option<DateTime<Utc>>)> =
                sqlx::query_as("SELECT access_token, expires_at FROM kommo_tokens WHERE account = $1").bind(&self.account).fetch_optional(&self.pool).await?;
            if let Some((Some(token), _)) = stored.filter(|(_, at)| fresh(*at)) {
                return Ok(SecretString::from(token));
            }
        }
        // One refresh at a time per account, across processes: whoever holds the row lock
        // refreshes; the others then find the new token.
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO kommo_tokens (account) VALUES ($1) ON CONFLICT DO NOTHING").bind(&self.account).execute(&mut *tx).await?;
        let (access, refresh, expires_at): (Option<String>, Option<String>, Option<DateTime<Utc>>) =
            sqlx::query_as("SELECT access_token, refresh_token, expires_at FROM kommo_tokens WHERE account = $1 FOR UPDATE")
                .bind(&self.account)
                .fetch_one(&mut *tx)
                .await?;
        let was_refused = |token: &String| refused.is_some_and(|r| r.expose_secret() == token);
        if let Some(token) = access.filter(|t| fresh(expires_at) && !was_refused(t)) {
            // Another process refreshed while we waited for the lock.
            return Ok(SecretString::from(token));
        }
        let Some(refresh_token) = refresh.map(SecretString::from).or_else(|| initial_refresh_token.clone()) else {
            return Err(KommoError::Unauthorized {
                account: self.account.clone(),
                status: 401,
                detail: format!("the integration is not connected: run `kommo-pay kommo connect --account {}`", self.account),
            });
        };
        let pair = match super::oauth::request_pair(
            &self.http,
            &self.base,
            client_id,
            client_secret,
            redirect_uri,
            super::oauth::Grant::Refresh(&refresh_token),
        )
        .await
        {
            Ok(pair) => pair,
            Err(super::oauth::TokenError::Unavailable(detail)) => return Err(KommoError::Unavailable(format!("token refresh: {detail}"))),
            Err(super::oauth::TokenError::Refused { status, detail }) => {
                return Err(KommoError::Unauthorized {
                    account: self.account.clone(),
                    status,
                    detail: format!("the refresh token was refused ({detail}); connect the integration again with `kommo-pay kommo connect`"),
                });
            }
        };
        super::oauth::store_pair(&mut *tx, &self.account, &pair).await?;
        // Stored before it is used: Kommo has already invalidated the old refresh token.
        tx.commit().await?;
        tracing::info!(account = %self.account, "Kommo OAuth tokens refreshed");
        Ok(SecretString::from(pair.access_token))
    }

    /// Waits for the account's next send slot (ADR 0006).
    pub(super) async fn slot(&self) -> Result<(), KommoError> {
        match self.limiter.acquire().await? {
            Slot::Go => Ok(()),
            Slot::TooFar(wait) => Err(KommoError::RateLimited { account: self.account.clone(), retry_after: wait }),
            Slot::Blocked { since, reason } => Err(KommoError::Blocked { account: self.account.clone(), since, reason }),
        }
    }

    async fn pause(&self, retry_after: Duration) -> Result<(), sqlx::Error> {
        tracing::warn!(account = %self.account, ?retry_after, "Kommo answered 429: pausing the account");
        self.limiter.pause(retry_after).await
    }

    async fn block(&self, reason: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        tracing::error!(account = %self.account, reason, "Kommo answered 403: all calls for this account stop until an operator unblocks it");
        metrics::counter!("kommo_pay_kommo_blocked_total", "account" => self.account.to_string()).increment(1);
        self.limiter.block(reason).await
    }
}

/// Kommo's problem+json `detail` (and validation errors), or the start of a non-JSON body
/// (a 403 may be nginx's HTML page).
pub(super) fn problem_detail(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(problem) => {
            let detail = problem.get("detail").or_else(|| problem.get("title")).and_then(Value::as_str).unwrap_or("no detail");
            // Each validation error as `path: detail (code)`, as a person reads it.
            let errors: Vec<String> = problem
                .get("validation-errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|item| item.get("errors").and_then(Value::as_array).cloned().unwrap_or_default())
                .map(|error| {
                    let text = |key: &str| error.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
                    match (text("path"), text("detail"), text("code")) {
                        (path, detail, code) if detail.is_empty() => format!("{path}: {code}"),
                        (path, detail, code) => format!("{path}: {detail} ({code})"),
                    }
                })
                .collect();
            if errors.is_empty() { detail.to_owned() } else { format!("{detail}: {}", errors.join("; ")) }
        }
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if text.is_empty() { "empty body".into() } else { text.chars().take(200).collect() }
        }
    }
}

fn retry_after(body: &[u8]) -> Option<Duration> {
    let problem: Value = serde_json::from_slice(body).ok()?;
    problem.get("retry_after").and_then(Value::as_u64).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_details_from_json_html_and_nothing() {
        let validation = br#"{"validation-errors":[{"request_id":"0","errors":[{"code":"NotSupportedChoice","path":"custom_fields_values.0.field_id"}]}],"title":"Bad Request","status":400,"detail":"Request validation failed"}"#;
        assert_eq!(problem_detail(validation), "Request validation failed: custom_fields_values.0.field_id: NotSupportedChoice");
        let with_detail = br#"{"validation-errors":[{"request_id":"0","errors":[{"code":"InvalidValue","path":"name","detail":"too long"}]}],"detail":"Request validation failed"}"#;
        assert_eq!(problem_detail(with_detail), "Request validation failed: name: too long (InvalidValue)");
        assert_eq!(problem_detail(b"<html>\n<head><title>403 Forbidden</title></head>\n</html>"), "<html> <head><title>403 Forbidden</title></head> </html>");
        assert_eq!(problem_detail(b""), "empty body");
        assert_eq!(retry_after(br#"{"title":"Too Many Requests","status":429,"retry_after":300}"#), Some(Duration::from_secs(300)));
        assert_eq!(retry_after(b"Too Many Requests"), None);
    }
}
