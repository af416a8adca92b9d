//! Liveness, readiness and metrics.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::AppState;

/// The process is up.
pub(super) async fn alive() -> &'static str {
    "ok"
}

/// The database answers and its schema is the one this binary expects.
pub(super) async fn ready(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    match kommo_pay_core::db::schema_is_current(&state.pool).await {
        Ok(true) => (StatusCode::OK, Json(json!({ "database": "ok", "schema": "current" }))),
        Ok(false) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "database": "ok", "schema": "not current: run `kommo-pay migrate`" }))),
        Err(error) => {
            tracing::warn!(%error, "readiness check: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "database": "unreachable" })))
        }
    }
}

pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> String {
    kommo_pay_core::telemetry::render_metrics(&state.pool).await
}
