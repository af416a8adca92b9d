//! Who is signed in: sessions in PostgreSQL behind an HttpOnly, SameSite=Strict cookie, the CSRF
//! token every form carries, and the slowdown of wrong tokens at sign-in.
//!
//! A session row holds the hash of its cookie (never the cookie), the operator, and the hash of
//! the ops token signed in with: removing or changing that token in the configuration ends the
//! session at its next request, as signing out or [`Sessions::idle`] without a request does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use kommo_pay_core::config::OpsToken;
use kommo_pay_core::ops::Operator;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Fields, Shown};
use crate::AppState;

/// The session cookie.
const SESSION_COOKIE: &str = "kommo_pay_session";
/// Before sign-in: the double-submit token of the sign-in form (a site that forges the form
/// cannot read or send it).
const SIGN_IN_COOKIE: &str = "kommo_pay_sign_in";

/// A random value for a cookie or a form: 244 bits from the OS's generator (two v4 UUIDs).
fn random_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

fn sha256(text: &str) -> Vec<u8> {
    Sha256::digest(text.as_bytes()).to_vec()
}

fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The value of cookie `name` in the request, if any.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// A `Set-Cookie` value for the console's paths. `Secure` when the request reached the proxy in
/// front of kommo-pay over HTTPS (ingest itself speaks plain HTTP).
fn set_cookie(headers: &HeaderMap, name: &str, value: &str, max_age: Option<Duration>) -> String {
    let secure = headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) == Some("https");
    let age = max_age.map_or(String::new(), |age| format!("; Max-Age={}", age.as_secs()));
    format!("{name}={value}; Path=/console; HttpOnly; SameSite=Strict{age}{}", if secure { "; Secure" } else { "" })
}

/// The sign-in form's token: the request's cookie, or a new one with the cookie that sets it.
pub(super) fn sign_in_token(headers: &HeaderMap) -> (String, Option<String>) {
    match cookie(headers, SIGN_IN_COOKIE) {
        Some(token) if token.len() == 64 => (token.to_owned(), None),
        _ => {
            let token = random_token();
            let cookie = set_cookie(headers, SIGN_IN_COOKIE, &token, None);
            (token, Some(cookie))
        }
    }
}

/// Whether a sign-in form came from our own page: its token matches the cookie set with it.
pub(super) fn sign_in_form_is_ours(headers: &HeaderMap, fields: &Fields) -> bool {
    matches!((cookie(headers, SIGN_IN_COOKIE), fields.get("csrf")), (Some(cookie), Some(form)) if same(cookie, form))
}

/// The operator whose token `given` is, compared with every token in constant time.
pub(super) fn operator_of<'a>(tokens: &'a [OpsToken], given: &str) -> Option<&'a OpsToken> {
    let mut found = None;
    for token in tokens {
        if same(token.token.expose_secret(), given) {
            found = Some(token);
        }
    }
    found
}

/// A signed-in request: who, and the token its forms must carry.
#[derive(Clone)]
pub(super) struct SignedIn {
    pub operator: Operator,
    pub csrf: String,
}

impl SignedIn {
    pub fn shown(&self) -> Shown<'_> {
        Shown { operator: Some(&self.operator.0), csrf: &self.csrf }
    }
}

/// Starts a session for `token`'s operator; returns the `Set-Cookie` value.
pub(super) async fn start(state: &AppState, headers: &HeaderMap, token: &OpsToken) -> Result<String, sqlx::Error> {
    let id = random_token();
    // Sessions past their idle time go as new ones come; nothing else needs to sweep them.
    sqlx::query("DELETE FROM console_sessions WHERE last_seen_at < now() - $1::interval")
        .bind(sqlx::postgres::types::PgInterval::try_from(state.console.idle).unwrap_or_default())
        .execute(&state.pool)
        .await?;
    sqlx::query("INSERT INTO console_sessions (id_hash, operator, token_hash, csrf) VALUES ($1, $2, $3, $4)")
        .bind(sha256(&id))
        .bind(&token.name)
        .bind(sha256(token.token.expose_secret()))
        .bind(random_token())
        .execute(&state.pool)
        .await?;
    Ok(set_cookie(headers, SESSION_COOKIE, &id, None))
}

/// Ends the request's session, if any; returns the `Set-Cookie` value that clears the cookie.
pub(super) async fn end(state: &AppState, headers: &HeaderMap) -> Result<String, sqlx::Error> {
    if let Some(id) = cookie(headers, SESSION_COOKIE) {
        sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1").bind(sha256(id)).execute(&state.pool).await?;
    }
    Ok(set_cookie(headers, SESSION_COOKIE, "", Some(Duration::ZERO)))
}

/// The session of a request, if it is live: its cookie is known, it was used within the idle
/// time (this use counts), and the token it was started with is still configured.
async fn live(state: &AppState, headers: &HeaderMap) -> Result<Option<SignedIn>, sqlx::Error> {
    let Some(id) = cookie(headers, SESSION_COOKIE) else { return Ok(None) };
    let row: Option<(String, Vec<u8>, String)> = sqlx::query_as(
        "UPDATE console_sessions SET last_seen_at = now() WHERE id_hash = $1 AND last_seen_at >= now() - $2::interval
         RETURNING operator, token_hash, csrf",
    )
    .bind(sha256(id))
    .bind(sqlx::postgres::types::PgInterval::try_from(state.console.idle).unwrap_or_default())
    .fetch_optional(&state.pool)
    .await?;
    let Some((operator, token_hash, csrf)) = row else { return Ok(None) };
    let still_configured = state.ops_tokens.iter().any(|token| token.name == operator && bool::from(sha256(token.token.expose_secret()).ct_eq(&token_hash)));
    if !still_configured {
        sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1").bind(sha256(id)).execute(&state.pool).await?;
        return Ok(None);
    }
    Ok(Some(SignedIn { operator: Operator(operator), csrf }))
}

/// Where an unauthenticated request is sent: the sign-in page, coming back here after.
fn to_sign_in(parts: &Parts) -> Response {
    let here = parts.uri.path_and_query().map_or("/console", |p| p.as_str());
    let back = if parts.method == axum::http::Method::GET { here } else { "/console" };
    let next: String = form_urlencoded::byte_serialize(back.as_bytes()).collect();
    Redirect::to(&format!("/console/sign-in?next={next}")).into_response()
}

impl FromRequestParts<Arc<AppState>> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<SignedIn, Response> {
        match live(state, &parts.headers).await {
            Ok(Some(signed)) => Ok(signed),
            Ok(None) => Err(to_sign_in(parts)),
            Err(error) => Err(super::unavailable(&error)),
        }
    }
}

/// A state-changing form from a signed-in operator, its CSRF token checked: the only way a
/// console handler reads a POST, so none can forget the check.
pub(super) struct Posted {
    pub signed: SignedIn,
    pub fields: Fields,
}

impl FromRequest<Arc<AppState>> for Posted {
    type Rejection = Response;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Posted, Response> {
        let (mut parts, body) = request.into_parts();
        let signed = SignedIn::from_request_parts(&mut parts, state).await?;
        let bytes = axum::body::to_bytes(body, super::FORM_LIMIT)
            .await
            .map_err(|_| super::refused(axum::http::StatusCode::PAYLOAD_TOO_LARGE, "The form is too large."))?;
        let fields = Fields::parse(&bytes);
        if !fields.get("csrf").is_some_and(|given| same(given, &signed.csrf)) {
            tracing::warn!(operator = %signed.operator.0, "console form without its CSRF token refused");
            return Err(super::refused(axum::http::StatusCode::FORBIDDEN, "This form did not come from this console page. Open the page again and resend it."));
        }
        Ok(Posted { signed, fields })
    }
}

/// Wrong tokens at sign-in are slowed down: attempts go one at a time, each waiting longer the
/// more attempts failed lately (doubling from 250 ms to 8 s; forgotten after 15 minutes without
/// one). A caller beyond [`Throttle::MAX_WAITING`] waiting is told to come back later.
pub(crate) struct Throttle {
    turn: tokio::sync::Mutex<Failures>,
    waiting: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct Failures {
    count: u32,
    last: Option<Instant>,
}

impl Failures {
    const FORGOTTEN_AFTER: Duration = Duration::from_secs(15 * 60);

    fn delay(&self) -> Duration {
        match self.last {
            Some(last) if self.count > 0 && last.elapsed() < Self::FORGOTTEN_AFTER => {
                Duration::from_millis(250u64 << (self.count - 1).min(5)).min(Duration::from_secs(8))
            }
            _ => Duration::ZERO,
        }
    }
}

impl Throttle {
    const MAX_WAITING: usize = 16;

    pub fn new() -> Throttle {
        Throttle { turn: tokio::sync::Mutex::new(Failures::default()), waiting: std::sync::atomic::AtomicUsize::new(0) }
    }

    /// Runs `check` in its turn, after the wait that recent failures impose; `None` when too
    /// many attempts already wait.
    pub async fn attempt<T>(&self, check: impl FnOnce() -> Option<T>) -> Option<Option<T>> {
        use std::sync::atomic::Ordering;
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= Self::MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let mut failures = self.turn.lock().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        tokio::time::sleep(failures.delay()).await;
        let found = check();
        match found {
            Some(_) => *failures = Failures::default(),
            None => {
                failures.count = failures.count.saturating_add(1);
                failures.last = Some(Instant::now());
            }
        }
        Some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_with_each_failure_up_to_eight_seconds() {
        let at = |count| Failures { count, last: Some(Instant::now()) }.delay();
        assert_eq!(Failures::default().delay(), Duration::ZERO);
        assert_eq!(at(1), Duration::from_millis(250));
        assert_eq!(at(2), Duration::from_millis(500));
        assert_eq!(at(6), Duration::from_secs(8));
        assert_eq!(at(40), Duration::from_secs(8));
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "a=1; kommo_pay_session=abc; b=2".parse().unwrap());
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, SIGN_IN_COOKIE), None);
    }

    #[test]
    fn cookies_are_secure_behind_https_only() {
        let mut headers = HeaderMap::new();
        assert!(!set_cookie(&headers, "c", "v", None).contains("Secure"));
        headers.insert("x-forwarded-proto", "https".parse().unwrap());
        let cookie = set_cookie(&headers, "c", "v", None);
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.ends_with("; Secure"), "{cookie}");
    }
}
