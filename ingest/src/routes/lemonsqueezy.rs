//! `POST /webhooks/lemonsqueezy/{account}`: Lemon Squeezy events, signed with `X-Signature`.
//!
//! Lemon Squeezy counts only a 200 as delivered and retries three times in about 2.5 minutes,
//! so unknown event names are stored and answered 200 like the others.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use kommo_pay_core::event_log::{NewEvent, Source};
use kommo_pay_core::lemonsqueezy::webhook::{self, LemonSqueezyEvent};

use super::{header, kept_headers};
use crate::{Accepted, AppState, IngestError};

pub(super) async fn receive(State(state): State<Arc<AppState>>, Path(slug): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let started = std::time::Instant::now();
    let outcome = accept(&state, &slug, &headers, &body).await;
    state.finish(Source::LemonSqueezy, &slug, outcome, started)
}

async fn accept(state: &AppState, slug: &str, headers: &HeaderMap, body: &[u8]) -> Result<Accepted, IngestError> {
    let account = state.account(slug)?;
    let lemonsqueezy = account.lemonsqueezy.as_ref().ok_or(IngestError::UnknownAccount)?;
    webhook::verify(header(headers, webhook::SIGNATURE_HEADER), body, &lemonsqueezy.webhook_secrets)?;
    let event = LemonSqueezyEvent::parse(body)?;
    let mut new = NewEvent::new(&account.slug, Source::LemonSqueezy, event.kind, event.dedup_key, event.lead_id, event.payload);
    new.headers = kept_headers(headers);
    state.append(&account, vec![new]).await
}
