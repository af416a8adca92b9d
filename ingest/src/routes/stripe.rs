//! `POST /webhooks/stripe/{account}`: Stripe events, signed with `Stripe-Signature`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;
use kommo_pay_core::event_log::{NewEvent, Source};
use kommo_pay_core::stripe::webhook::{self, StripeEvent};

use super::{header, kept_headers};
use crate::{Accepted, AppState, IngestError};

pub(super) async fn receive(State(state): State<Arc<AppState>>, Path(slug): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let started = std::time::Instant::now();
    let outcome = accept(&state, &slug, &headers, &body).await;
    state.finish(Source::Stripe, &slug, outcome, started)
}

async fn accept(state: &AppState, slug: &str, headers: &HeaderMap, body: &[u8]) -> Result<Accepted, IngestError> {
    let account = state.account(slug)?;
    let stripe = account.stripe.as_ref().ok_or(IngestError::UnknownAccount)?;
    webhook::verify(header(headers, webhook::SIGNATURE_HEADER), body, &stripe.webhook_secrets, stripe.signature_tolerance, Utc::now())?;
    let event = StripeEvent::parse(body)?;
    let mut new = NewEvent::new(&account.slug, Source::Stripe, event.kind, event.id, event.lead_id, event.payload);
    new.headers = kept_headers(headers);
    state.append(&account, vec![new]).await
}
