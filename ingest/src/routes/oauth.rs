//! Kommo's OAuth calls: the redirect after an admin installs the integration, and the signed
//! "access revoked" hook on uninstall. The callback is the one place ingest calls a provider: the
//! authorization code lives 20 minutes and the admin waits for the page saying whether it worked.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use kommo_pay_core::kommo::oauth::{self, Callback, Revocation};

use crate::AppState;

/// `GET /oauth/kommo/callback?code=…&state=…&referer=…&client_id=…`: a plain page saying the
/// account is connected, or why not.
pub(super) async fn callback(State(state): State<Arc<AppState>>, query: Result<Query<Callback>, QueryRejection>) -> Response {
    let Ok(Query(callback)) = query else {
        return page(
            StatusCode::BAD_REQUEST,
            "Not connected",
            "This address is where Kommo sends an admin after installing the integration; the request carries no code and state.",
        );
    };
    match oauth::complete(&state.pool, &state.accounts, &callback).await {
        Ok(connected) => page(
            StatusCode::OK,
            "Connected",
            &format!("Kommo account {} ({}) is connected to kommo-pay. You can close this page.", connected.account, connected.host),
        ),
        Err(error) => {
            tracing::warn!(%error, "a Kommo OAuth installation was not completed");
            let status = if error.is_client_error() { StatusCode::BAD_REQUEST } else { StatusCode::SERVICE_UNAVAILABLE };
            page(status, "Not connected", &error.to_string())
        }
    }
}

/// `GET /oauth/kommo/revoked?client_uuid=…&account_id=…&signature=…`: Kommo says the integration
/// was uninstalled. A forged or unsigned call gets 401 and changes nothing.
pub(super) async fn revoked(State(state): State<Arc<AppState>>, query: Result<Query<Revocation>, QueryRejection>) -> Response {
    let Ok(Query(hook)) = query else { return (StatusCode::UNAUTHORIZED, "unsigned").into_response() };
    let account = match oauth::verify_revocation(&state.accounts, &hook) {
        Ok(account) => account,
        Err(error) => {
            tracing::warn!(%error, account_id = hook.account_id, "a Kommo revocation hook was refused");
            return (StatusCode::UNAUTHORIZED, error.to_string()).into_response();
        }
    };
    match oauth::revoke(&state.pool, &account).await {
        Ok(()) => (StatusCode::OK, "revoked").into_response(),
        Err(error) => {
            tracing::error!(%error, account = %account.slug, "a Kommo revocation could not be recorded; Kommo will call again");
            (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response()
        }
    }
}

/// A minimal page: no script, no outside resources, nothing the request sent echoed unescaped.
fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let escape = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>kommo-pay: {title}</title></head>\
         <body><h1>{title}</h1><p>{text}</p></body></html>",
        title = escape(title),
        text = escape(text)
    );
    (status, [("content-security-policy", "default-src 'none'")], Html(body)).into_response()
}
