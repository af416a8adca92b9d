//! `POST /webhooks/kommo/{account}/{secret}`: Kommo's unsigned, form-encoded CRM webhooks.
//!
//! Kommo signs nothing, so three things authenticate a delivery: the unguessable secret at the
//! end of the URL (compared in constant time), `account[id]` matching the account's configured
//! id, and, later, the worker re-reading the lead through the API before acting on it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use kommo_pay_core::event_log::{NewEvent, Source};
use kommo_pay_core::kommo::webhook::KommoDelivery;
use secrecy::ExposeSecret;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::kept_headers;
use crate::{Accepted, AppState, IngestError};

pub(super) async fn receive(State(state): State<Arc<AppState>>, Path((slug, secret)): Path<(String, String)>, headers: HeaderMap, body: Bytes) -> Response {
    let started = std::time::Instant::now();
    let outcome = accept(&state, &slug, &secret, &headers, &body).await;
    state.finish(Source::Kommo, &slug, outcome, started)
}

async fn accept(state: &AppState, slug: &str, secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<Accepted, IngestError> {
    let account = state.account(slug)?;
    let expected = account.kommo.webhook_secret.expose_secret().as_bytes();
    if !bool::from(secret.as_bytes().ct_eq(expected)) {
        return Err(IngestError::Unauthenticated("the URL secret is wrong".into()));
    }
    let delivery = KommoDelivery::parse(body)?;
    if delivery.account_id != account.kommo.account_id {
        return Err(IngestError::Unauthenticated(format!("account[id] {} is not this account's Kommo id", delivery.account_id)));
    }
    let kept = kept_headers(headers);
    let events = delivery
        .changes
        .iter()
        .map(|change| {
            let payload = serde_json::value::to_raw_value(&json!({ "account": delivery.account, "item": change.item })).expect("a JSON value serialises");
            let mut event = NewEvent::new(&account.slug, Source::Kommo, change.kind(), change.dedup_key(), change.lead_id(), payload);
            event.headers = kept.clone();
            event
        })
        .collect();
    state.append(&account, events).await
}
