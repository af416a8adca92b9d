//! `/ops/v1/…`: the ops API, over the same functions as the ops CLI (`kommo_pay_core::ops`).
//!
//! Every request needs `Authorization: Bearer <token>` with one of the tokens in `[ops] tokens`;
//! the token's name is the operator recorded in the log. Answers are JSON; errors are
//! `{"error": "…"}` with 400 (bad filter or argument), 401, 404, or 503 (database unreachable).
//! The webhooks are not behind this: they authenticate by their own signatures.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use kommo_pay_core::ops::dead_letters::{self, BulkRequest, DeadCounts, DeadFilter};
use kommo_pay_core::ops::events::{self, EventFilter, ReplayRequest};
use kommo_pay_core::ops::history::{self, History};
use kommo_pay_core::ops::{ErrorBody, Operator, OpsError, UnblockRequest, queue_stats};
use secrecy::ExposeSecret;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::AppState;

pub(super) fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/ops/v1/events", get(list_events))
        .route("/ops/v1/events/{id}", get(show_event))
        .route("/ops/v1/events/{id}/replay", post(replay_event))
        .route("/ops/v1/dead-letters", get(list_dead))
        .route("/ops/v1/dead-letters/counts", get(count_dead))
        .route("/ops/v1/dead-letters/replay", post(replay_dead))
        .route("/ops/v1/dead-letters/discard", post(discard_dead))
        .route("/ops/v1/jobs/{id}", get(show_job))
        .route("/ops/v1/queue", get(queue))
        .route("/ops/v1/deals/{account}/{lead}/history", get(deal_history))
        .route("/ops/v1/accounts/{account}/unblock", post(unblock))
        .route_layer(axum::middleware::from_fn_with_state(state, authenticate))
}

/// Finds the operator whose token the request carries. Every configured token is compared, in
/// constant time, so the answer's timing says nothing about which one nearly matched.
async fn authenticate(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .as_bytes()
        .to_vec();
    let mut operator = None;
    for token in state.ops_tokens.iter() {
        if bool::from(token.token.expose_secret().as_bytes().ct_eq(&given)) {
            operator = Some(Operator(token.name.clone()));
        }
    }
    match operator {
        Some(operator) => {
            tracing::info!(operator = %operator.0, "ops request");
            request.extensions_mut().insert(operator);
            next.run(request).await
        }
        None => {
            let message = if state.ops_tokens.is_empty() { "the ops API has no tokens configured ([ops] tokens)" } else { "a valid bearer token is required" };
            failure(StatusCode::UNAUTHORIZED, message)
        }
    }
}

fn failure(status: StatusCode, message: &str) -> Response {
    (status, Json(ErrorBody { error: message.to_owned() })).into_response()
}

/// An [`OpsError`] or a request the extractors could not read, as an answer.
struct Failure {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        failure(self.status, &self.message)
    }
}

impl From<OpsError> for Failure {
    fn from(error: OpsError) -> Failure {
        let status = match &error {
            OpsError::BadRequest(_) => StatusCode::BAD_REQUEST,
            OpsError::NotFound(_) => StatusCode::NOT_FOUND,
            OpsError::Database(cause) => {
                tracing::error!(error = %cause, "ops request failed on the database");
                return Failure { status: StatusCode::SERVICE_UNAVAILABLE, message: "the database is unavailable; try again".into() };
            }
        };
        Failure { status, message: error.to_string() }
    }
}

impl From<QueryRejection> for Failure {
    fn from(rejection: QueryRejection) -> Failure {
        Failure { status: StatusCode::BAD_REQUEST, message: rejection.body_text() }
    }
}

impl From<PathRejection> for Failure {
    fn from(rejection: PathRejection) -> Failure {
        Failure { status: StatusCode::BAD_REQUEST, message: rejection.body_text() }
    }
}

impl From<JsonRejection> for Failure {
    fn from(rejection: JsonRejection) -> Failure {
        Failure { status: StatusCode::BAD_REQUEST, message: rejection.body_text() }
    }
}

type Answer = Result<Response, Failure>;

fn ok(value: impl serde::Serialize) -> Answer {
    Ok(Json(value).into_response())
}

async fn list_events(State(state): State<Arc<AppState>>, filter: Result<Query<EventFilter>, QueryRejection>) -> Answer {
    ok(events::list(&state.pool, &filter?.0).await?)
}

async fn show_event(State(state): State<Arc<AppState>>, id: Result<Path<String>, PathRejection>) -> Answer {
    ok(events::show(&state.pool, events::parse_id(&id?.0)?).await?)
}

async fn replay_event(
    State(state): State<Arc<AppState>>,
    Extension(operator): Extension<Operator>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<ReplayRequest>, JsonRejection>,
) -> Answer {
    let body = body?.0;
    ok(events::replay(&state.pool, &state.accounts, &state.job_policies, events::parse_id(&id?.0)?, &operator, &body.reason).await?)
}

async fn list_dead(State(state): State<Arc<AppState>>, filter: Result<Query<DeadFilter>, QueryRejection>) -> Answer {
    ok(dead_letters::list(&state.pool, &filter?.0).await?)
}

async fn count_dead(State(state): State<Arc<AppState>>, filter: Result<Query<DeadFilter>, QueryRejection>) -> Answer {
    ok(DeadCounts { counts: dead_letters::counts(&state.pool, &filter?.0).await? })
}

async fn show_job(State(state): State<Arc<AppState>>, id: Result<Path<i64>, PathRejection>) -> Answer {
    ok(dead_letters::show(&state.pool, id?.0).await?)
}

async fn replay_dead(State(state): State<Arc<AppState>>, Extension(operator): Extension<Operator>, body: Result<Json<BulkRequest>, JsonRejection>) -> Answer {
    let act = body?.0;
    ok(dead_letters::replay(&state.pool, &act.selection()?, &operator, &act.reason, act.dry_run, &mut |_, _| {}).await?)
}

async fn discard_dead(State(state): State<Arc<AppState>>, Extension(operator): Extension<Operator>, body: Result<Json<BulkRequest>, JsonRejection>) -> Answer {
    let act = body?.0;
    ok(dead_letters::discard(&state.pool, &act.selection()?, &operator, &act.reason, act.dry_run, &mut |_, _| {}).await?)
}

async fn unblock(
    State(state): State<Arc<AppState>>,
    Extension(operator): Extension<Operator>,
    account: Result<Path<String>, PathRejection>,
    body: Result<Json<UnblockRequest>, JsonRejection>,
) -> Answer {
    let (Path(account), body) = (account?, body?.0);
    ok(kommo_pay_core::ops::unblock(&state.pool, &body.provider, &account, &operator, &body.reason).await?)
}

async fn queue(State(state): State<Arc<AppState>>) -> Answer {
    ok(queue_stats::stats(&state.pool).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryFormat {
    /// `json` (default) or `csv`.
    format: Option<String>,
}

async fn deal_history(
    State(state): State<Arc<AppState>>,
    deal: Result<Path<(String, i64)>, PathRejection>,
    format: Result<Query<HistoryFormat>, QueryRejection>,
) -> Answer {
    let (Path((account, lead)), format) = (deal?, format?.0.format);
    let entries = history::of_deal(&state.pool, &account, lead).await?;
    match format.as_deref() {
        None | Some("json") => ok(History { account, lead_id: lead, entries }),
        Some("csv") => Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], history::to_csv(&entries)).into_response()),
        Some(other) => Err(OpsError::BadRequest(format!("format {other:?} is not json or csv")).into()),
    }
}
