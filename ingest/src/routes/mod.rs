//! The routes, and what every webhook route shares: account lookup, the answer, and the
//! counting and logging of each outcome.

mod health;
mod kommo;
mod lemonsqueezy;
mod oauth;
mod ops;
mod stripe;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kommo_pay_core::config::Account;
use kommo_pay_core::event_log::Source;
use serde_json::{Map, Value};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::{Accepted, AppState, IngestError};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub(crate) fn router(state: Arc<AppState>, body_limit: usize, metrics_path: &str) -> Router {
    Router::new()
        .route("/webhooks/kommo/{account}/{secret}", post(kommo::receive))
        .route("/webhooks/stripe/{account}", post(stripe::receive))
        .route("/webhooks/lemonsqueezy/{account}", post(lemonsqueezy::receive))
        .route("/oauth/kommo/callback", get(oauth::callback))
        .route("/oauth/kommo/revoked", get(oauth::revoked))
        .route("/healthz", get(health::alive))
        .route("/readyz", get(health::ready))
        .route(metrics_path, get(health::metrics))
        .merge(ops::router(state.clone()))
        .merge(crate::console::router())
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(
            // The span names the route template, never the URI: Kommo's URL ends in the account's
            // secret. Every line logged while serving a request carries its request id.
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let route = request.extensions().get::<MatchedPath>().map_or("-", MatchedPath::as_str);
                    let id = request.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                    tracing::info_span!("request", request_id = %id, method = %request.method(), route)
                })
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

impl AppState {
    /// The account named by the URL, if it exists.
    fn account(&self, slug: &str) -> Result<Arc<Account>, IngestError> {
        self.accounts.get(slug).cloned().ok_or(IngestError::UnknownAccount)
    }

    /// Turns a delivery's outcome into the answer, counting and logging it on the way.
    fn finish(&self, source: Source, slug: &str, outcome: Result<Accepted, IngestError>, started: std::time::Instant) -> Response {
        let known = self.accounts.get(slug).map(|a| a.slug.as_str());
        self.metrics.latency(source.as_str(), if outcome.is_ok() { "accepted" } else { "rejected" }, started);
        match outcome {
            Ok(accepted) => {
                self.metrics.accepted(source.as_str(), slug, accepted.accepted, accepted.duplicates);
                tracing::info!(source = source.as_str(), account = slug, accepted = accepted.accepted, duplicates = accepted.duplicates, "delivery accepted");
                Json(accepted).into_response()
            }
            Err(error) => {
                self.metrics.rejected(source.as_str(), known, &error);
                match &error {
                    IngestError::Unavailable(cause) => {
                        tracing::error!(source = source.as_str(), account = known, error = %cause, "delivery not stored: answering 503")
                    }
                    IngestError::Stopping => {
                        tracing::warn!(source = source.as_str(), account = known, "delivery refused while stopping: answering 503")
                    }
                    other => {
                        tracing::warn!(source = source.as_str(), account = known, reason = other.reason(), detail = %other, "delivery rejected")
                    }
                }
                error.into_response()
            }
        }
    }
}

/// Request headers worth keeping with an event. An allow-list: signatures, authorisation and
/// cookies never reach the log.
const KEPT_HEADERS: &[&str] = &["content-type", "user-agent", "x-request-id", "x-amocrm-requestid", "x-event-name", "stripe-should-retry"];

fn kept_headers(headers: &HeaderMap) -> Value {
    let mut kept: Map<String, Value> = KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            let value = headers.get(*name)?.to_str().ok()?;
            Some((name.to_string(), Value::String(value.to_owned())))
        })
        .collect();
    // This request's trace (when tracing is on), so the event's jobs continue it.
    if let Some(traceparent) = kommo_pay_core::telemetry::current_traceparent() {
        kept.insert("traceparent".into(), Value::String(traceparent));
    }
    Value::Object(kept)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}
