//! `/console/sign-in` and `/console/sign-out`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::session::{self, Posted};
use super::{Fields, Shown, refused, render};
use crate::AppState;

/// Where to go after signing in: a console page, never another site.
fn next(fields: &Fields) -> &str {
    match fields.get("next") {
        Some(next) if next.starts_with("/console") && !next.contains("//") && !next.contains('\\') => next,
        _ => "/console",
    }
}

fn form(status: StatusCode, headers: &HeaderMap, next: &str, message: Option<&str>) -> Response {
    let (token, cookie) = session::sign_in_token(headers);
    let body = html! {
        @if let Some(message) = message { p.error { (message) } }
        form.sign-in method="post" action="/console/sign-in" {
            label for="token" { "Ops token" }
            input #token type="password" name="token" autocomplete="current-password" required autofocus;
            input type="hidden" name="next" value=(next);
            input type="hidden" name="csrf" value=(token);
            button type="submit" { "Sign in" }
        }
        p.hint { "Use one of the tokens in " code { "[ops] tokens" } " of the configuration; its name is recorded with what you do." }
    };
    let mut response = render(status, "Sign in", Shown { operator: None, csrf: "" }, body);
    if let Some(cookie) = cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie.parse().expect("a cookie is a header value"));
    }
    response
}

pub(super) async fn page(headers: HeaderMap, uri: Uri) -> Response {
    form(StatusCode::OK, &headers, next(&Fields::query(&uri)), None)
}

pub(super) async fn submit(State(state): State<Arc<AppState>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let fields = Fields::parse(&body);
    let next = next(&fields).to_owned();
    if !session::sign_in_form_is_ours(&headers, &fields) {
        return refused(StatusCode::FORBIDDEN, "This sign-in form did not come from this console. Open the sign-in page again.");
    }
    if state.ops_tokens.is_empty() {
        return form(StatusCode::UNAUTHORIZED, &headers, &next, Some("The console has no tokens configured ([ops] tokens)."));
    }
    let given = fields.get("token").unwrap_or_default();
    let Some(found) = state.console.throttle.attempt(|| session::operator_of(&state.ops_tokens, given).cloned()).await else {
        return refused(StatusCode::TOO_MANY_REQUESTS, "Too many sign-in attempts at once; try again in a minute.");
    };
    let Some(token) = found else {
        tracing::warn!("console sign-in with a wrong token");
        return form(StatusCode::UNAUTHORIZED, &headers, &next, Some("That token is not accepted."));
    };
    match session::start(&state, &headers, &token).await {
        Ok(cookie) => {
            tracing::info!(operator = %token.name, "console sign-in");
            ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
        }
        Err(error) => super::unavailable(&error),
    }
}

pub(super) async fn sign_out(State(state): State<Arc<AppState>>, headers: HeaderMap, posted: Posted) -> Response {
    match session::end(&state, &headers).await {
        Ok(cookie) => {
            tracing::info!(operator = %posted.signed.operator.0, "console sign-out");
            ([(header::SET_COOKIE, cookie)], Redirect::to("/console/sign-in")).into_response()
        }
        Err(error) => super::unavailable(&error),
    }
}
