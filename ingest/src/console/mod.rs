//! `/console`: the ops console, web pages over the same functions as the ops CLI and
//! `/ops/v1` (`kommo_pay_core::ops`). Handlers read the request, call one of those functions
//! and render what it returns; they decide nothing of their own.
//!
//! Server-rendered HTML (maud), one stylesheet, no JavaScript: every page reads and every form
//! works in any browser. A strict Content-Security-Policy allows nothing from elsewhere and no
//! script at all. Sign-in, sessions and CSRF: `session.rs`.
//!
//! | answer | when |
//! |---|---|
//! | 200 | the page |
//! | 303 | after a form that changed something (to the page showing it); to the sign-in page when not signed in |
//! | 400 | a filter or form field is wrong (the page says which) |
//! | 401 | a wrong token at sign-in |
//! | 403 | a form without this session's CSRF token |
//! | 404 | no such deal, event, job or account |
//! | 503 | the database is unreachable |

mod chart;
mod dead_letters;
mod deals;
mod events;
mod jobs;
mod overview;
mod runs;
mod session;
mod sign_in;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use kommo_pay_core::ops::OpsError;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::AppState;

pub(crate) use runs::Runs;
pub(crate) use session::Throttle;

/// The largest form a console page posts (a dead-letter selection of a thousand ids fits).
const FORM_LIMIT: usize = 64 * 1024;

/// What the console keeps in the ingest process.
pub(crate) struct ConsoleState {
    /// A session unused for this long ends.
    pub idle: std::time::Duration,
    pub throttle: Throttle,
    /// Bulk replays and discards running or done lately, for their progress pages.
    pub runs: Runs,
}

pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/console", get(overview::page))
        .route("/console/style.css", get(style))
        .route("/console/sign-in", get(sign_in::page).post(sign_in::submit))
        .route("/console/sign-out", post(sign_in::sign_out))
        .route("/console/accounts/{account}/unblock", post(overview::unblock))
        .route("/console/deals", get(deals::find))
        .route("/console/deals/{account}/{lead}", get(deals::page))
        .route("/console/deals/{account}/{lead}/history.csv", get(deals::csv))
        .route("/console/deals/{account}/{lead}/history.json", get(deals::json))
        .route("/console/events", get(events::list))
        .route("/console/events/{id}", get(events::page))
        .route("/console/events/{id}/replay", post(events::replay))
        .route("/console/dead-letters", get(dead_letters::list))
        .route("/console/dead-letters/replay", post(dead_letters::replay))
        .route("/console/dead-letters/discard", post(dead_letters::discard))
        .route("/console/dead-letters/runs/{id}", get(runs::page))
        .route("/console/jobs/{id}", get(jobs::page))
        .layer(axum::middleware::map_response(protect))
}

/// Every console answer: nothing from other hosts, no script, no framing, not cached.
async fn protect(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=300")], include_str!("style.css")).into_response()
}

/// What the page frame shows of the session: who is signed in, and the token of its forms.
#[derive(Clone, Copy)]
pub(super) struct Shown<'a> {
    pub operator: Option<&'a str>,
    pub csrf: &'a str,
}

/// A whole page: the frame (navigation, who is signed in, sign-out) around `body`.
fn frame(title: &str, shown: Shown<'_>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · kommo-pay" }
                link rel="stylesheet" href="/console/style.css";
            }
            body {
                header {
                    a.brand href="/console" { "kommo-pay" }
                    @if let Some(operator) = shown.operator {
                        nav {
                            a href="/console" { "Overview" }
                            a href="/console/deals" { "Deals" }
                            a href="/console/events" { "Events" }
                            a href="/console/dead-letters" { "Dead letters" }
                        }
                        form.who method="post" action="/console/sign-out" {
                            span { "Signed in as " strong { (operator) } }
                            (csrf(shown.csrf))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

fn csrf(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

/// A page answer.
fn render(status: StatusCode, title: &str, shown: Shown<'_>, body: Markup) -> Response {
    (status, Html(frame(title, shown, body).into_string())).into_response()
}

/// An error page outside a session (or before one is known): the message and a way back.
fn refused(status: StatusCode, message: &str) -> Response {
    let body = html! { p.error { (message) } p { a href="/console" { "Back to the overview" } } };
    render(status, status.canonical_reason().unwrap_or("Error"), Shown { operator: None, csrf: "" }, body)
}

fn unavailable(error: &sqlx::Error) -> Response {
    tracing::error!(error = %error, "console request failed on the database");
    refused(StatusCode::SERVICE_UNAVAILABLE, "The database is unavailable; try again.")
}

/// What went wrong in a signed-in page, as its answer.
struct Failure(Response);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        self.0
    }
}

impl From<OpsError> for Failure {
    fn from(error: OpsError) -> Failure {
        Failure(match &error {
            OpsError::BadRequest(message) => refused(StatusCode::BAD_REQUEST, message),
            OpsError::NotFound(message) => refused(StatusCode::NOT_FOUND, message),
            OpsError::Database(cause) => unavailable(cause),
        })
    }
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Failure {
        Failure(unavailable(&error))
    }
}

type Answer = Result<Response, Failure>;

/// Form fields or query parameters, as sent (a name may repeat: the ids of a selection). An empty
/// value is no value: that is how a form sends a field left blank.
#[derive(Debug, Default)]
pub(super) struct Fields(Vec<(String, String)>);

impl Fields {
    fn parse(bytes: &[u8]) -> Fields {
        Fields(form_urlencoded::parse(bytes).map(|(k, v)| (k.into_owned(), v.trim().to_owned())).filter(|(_, v)| !v.is_empty()).collect())
    }

    fn query(uri: &axum::http::Uri) -> Fields {
        Fields::parse(uri.query().unwrap_or_default().as_bytes())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn text(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_owned)
    }

    fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.0.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The link to the next page of a list at `path`: these fields, with `cursor` in place of
    /// any cursor they had.
    fn next_page(&self, path: &str, cursor: &str) -> String {
        let kept = self.0.iter().filter(|(k, _)| k != "cursor").map(|(k, v)| (k.as_str(), v.as_str()));
        let query: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(kept).append_pair("cursor", cursor).finish();
        format!("{path}?{query}")
    }

    /// A whole number, or a 400 naming the field.
    fn number(&self, name: &str, what: &str) -> Result<Option<i64>, OpsError> {
        self.get(name).map(|text| text.parse::<i64>().map_err(|_| OpsError::BadRequest(format!("{what} {text:?} is not a number")))).transpose()
    }
}

/// A time as the pages show it: UTC to the second, never broken over two lines.
fn when(at: &DateTime<Utc>) -> Markup {
    html! { time datetime=(at.to_rfc3339()) { (at.format("%Y-%m-%d %H:%M:%S UTC")) } }
}

/// JSON, indented, for reading.
fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// A link to the console page of a deal.
fn deal_link(account: &str, lead: i64) -> Markup {
    html! { a href={ "/console/deals/" (account) "/" (lead) } { (account) " #" (lead) } }
}

/// A job's state as a badge the stylesheet colours.
fn state_badge(state: &str) -> Markup {
    html! { span class={ "badge " (state) } { (state) } }
}

/// Options of a `<select>` with `selected` chosen, and a first "any" choice.
fn options<'a>(choices: impl IntoIterator<Item = &'a str>, selected: Option<&str>) -> Markup {
    html! {
        option value="" { "any" }
        @for choice in choices {
            option value=(choice) selected[Some(choice) == selected] { (choice) }
        }
    }
}

/// A small amount of text that must not be mistaken for markup, e.g. a dash for "nothing".
const NOTHING: PreEscaped<&str> = PreEscaped("&mdash;");
