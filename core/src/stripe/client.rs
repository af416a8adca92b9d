//! A thin Stripe client for the few endpoints kommo-pay calls.
//!
//! Requests are bracket form-encoded and pinned to [`API_VERSION`]. Every POST carries the
//! caller's `Idempotency-Key`, the same across all tries of one job, so a retried create is
//! replayed by Stripe instead of run twice. Like Stripe's own libraries, a failed request is
//! tried again here a couple of times (409, 429, 5xx and network errors, unless Stripe says
//! `Stripe-Should-Retry: false`); what still fails goes back to the job, which decides.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::form;
use crate::http::Failed;
use crate::money::Money;

/// The API version every request and every parsed object assumes. At least 2025-07-30.basil:
/// inline `price_data` on Payment Links needs it.
pub const API_VERSION: &str = "2025-07-30.basil";

/// Tries of one request after the first, for errors Stripe says are worth retrying.
const RETRIES: usize = 2;

pub struct StripeClient {
    http: reqwest::Client,
    base: url::Url,
    secret_key: SecretString,
    /// The first pause between tries; it doubles (0.5 s, 1 s, as Stripe's libraries do).
    retry_pause: Duration,
    pacer: Option<crate::rate_limit::Pacer>,
}

/// Why a Stripe request failed.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// Stripe answered with an error object.
    #[error("Stripe refused the request ({status} {kind}{}): {message}", code.as_ref().map(|c| format!(", {c}")).unwrap_or_default())]
    Api {
        status: u16,
        /// `invalid_request_error`, `api_error`, `card_error`, `idempotency_error`.
        kind: String,
        code: Option<String>,
        message: String,
        param: Option<String>,
        /// `Stripe-Should-Retry`, when Stripe sent it.
        should_retry: Option<bool>,
        request_id: Option<String>,
    },
    /// No answer: connection refused or reset, or the timeout passed.
    #[error("Stripe could not be reached: {0}")]
    Unreachable(String),
    /// An answer that is not Stripe's JSON.
    #[error("Stripe answered {status} with a body that is not its JSON: {detail}")]
    Unreadable { status: u16, detail: String },
}

impl StripeError {
    /// Whether trying again later may succeed: Stripe's own rule (its header first, then 409,
    /// 429 and 5xx), and every failure to reach it.
    pub fn is_retryable(&self) -> bool {
        match self {
            StripeError::Api { status, should_retry, .. } => should_retry.unwrap_or(*status == 409 || *status == 429 || *status >= 500),
            StripeError::Unreachable(_) => true,
            // A success we cannot read (a proxy's page, a cut-off body) may have done the work:
            // the retry carries the same idempotency key and gets Stripe's stored answer.
            StripeError::Unreadable { status, .. } => (200..300).contains(status) || *status == 429 || *status >= 500,
        }
    }
}

/// A Payment Link to create for a deal.
#[derive(Debug, Clone)]
pub struct NewPaymentLink {
    pub product_name: String,
    pub amount: Money,
    /// Set for a subscription: the price recurs every `interval_count` `interval`s.
    pub recurring: Option<Recurring>,
    /// Goes on the link (copied to its checkout sessions) and on the payment intent or the
    /// subscription, so every later event carries the deal.
    pub metadata: BTreeMap<String, String>,
    /// Where the buyer goes after paying; Stripe's confirmation page when `None`.
    pub redirect_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recurring {
    pub interval: Interval,
    pub interval_count: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Day,
    Week,
    Month,
    Year,
}

impl Interval {
    pub fn as_str(self) -> &'static str {
        match self {
            Interval::Day => "day",
            Interval::Week => "week",
            Interval::Month => "month",
            Interval::Year => "year",
        }
    }
}

impl NewPaymentLink {
    /// The create's `Idempotency-Key`: `scope` (the job that creates it) and a digest of the
    /// parameters. A retry sending the same parameters gets Stripe's stored answer, so one link;
    /// a retry whose deal changed meanwhile (another amount, name or contact) is a new request,
    /// where one key would get Stripe's `idempotency_error` for other parameters.
    pub fn idempotency_key(&self, scope: &str) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.params().to_string().as_bytes());
        format!("{scope}:{}", hex::encode(&digest[..8]))
    }

    /// The create request's parameters (reference/stripe.md §1).
    pub fn params(&self) -> Value {
        let mut price_data = json!({
            "currency": self.amount.currency().code().to_ascii_lowercase(),
            "unit_amount": self.amount.minor(),
            "product_data": { "name": self.product_name },
        });
        let mut params = json!({
            "line_items": [{ "price_data": null, "quantity": 1 }],
            "metadata": self.metadata,
        });
        match self.recurring {
            Some(recurring) => {
                price_data["recurring"] = json!({ "interval": recurring.interval.as_str(), "interval_count": recurring.interval_count });
                params["subscription_data"] = json!({ "metadata": self.metadata });
            }
            None => {
                params["payment_intent_data"] = json!({ "metadata": self.metadata });
                // One payment per link; we deactivate it after the payment as well.
                params["restrictions"] = json!({ "completed_sessions": { "limit": 1 } });
            }
        }
        params["line_items"][0]["price_data"] = price_data;
        if let Some(url) = &self.redirect_url {
            params["after_completion"] = json!({ "type": "redirect", "redirect": { "url": url } });
        }
        params
    }
}

/// A page of `GET /v1/events`: each event as Stripe sends it to webhooks.
#[derive(Debug, Deserialize)]
pub struct EventPage {
    pub data: Vec<Box<serde_json::value::RawValue>>,
    pub has_more: bool,
}

/// What we keep of a Payment Link.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PaymentLink {
    pub id: String,
    pub url: String,
    pub active: bool,
}

impl PaymentLink {
    /// The link's URL with the client's `email` filled in on the payment page (Stripe takes
    /// `prefilled_email` as a URL parameter of a Payment Link).
    pub fn prefilled_for(&self, email: Option<&str>) -> String {
        match (url::Url::parse(&self.url), email) {
            (Ok(mut url), Some(email)) => {
                url.query_pairs_mut().append_pair("prefilled_email", email);
                url.to_string()
            }
            _ => self.url.clone(),
        }
    }
}

impl StripeClient {
    pub fn new(base: url::Url, secret_key: SecretString) -> StripeClient {
        let http =
            reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(30)).build().expect("a TLS backend is available");
        StripeClient { http, base, secret_key, retry_pause: Duration::from_millis(500), pacer: None }
    }

    /// The same client sending at most `requests_per_second` (Stripe's limit is per account,
    /// and a bulk move's links are created concurrently).
    pub fn paced(mut self, requests_per_second: f64) -> StripeClient {
        self.pacer = Some(crate::rate_limit::Pacer::new(requests_per_second));
        self
    }

    /// The same client with another first pause between tries (tests make it short).
    pub fn with_retry_pause(mut self, pause: Duration) -> StripeClient {
        self.retry_pause = pause;
        self
    }

    pub async fn create_payment_link(&self, link: &NewPaymentLink, idempotency_key: &str) -> Result<PaymentLink, Failed<StripeError>> {
        self.post("/v1/payment_links", &link.params(), idempotency_key).await
    }

    /// Payment Links cannot be deleted; a deactivated one shows Stripe's "no longer available".
    pub async fn deactivate_payment_link(&self, id: &str, idempotency_key: &str) -> Result<PaymentLink, Failed<StripeError>> {
        self.post(&format!("/v1/payment_links/{id}"), &json!({ "active": false }), idempotency_key).await
    }

    /// One page of events created at or after `created_from` (Unix seconds), of the given
    /// types, newest first; `starting_after` continues from the last event of the page before.
    /// The API keeps 30 days of events.
    pub async fn list_events(&self, types: &[&str], created_from: i64, starting_after: Option<&str>) -> Result<EventPage, Failed<StripeError>> {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("limit", "100").append_pair("created[gte]", &created_from.to_string());
        for kind in types {
            query.append_pair("types[]", kind);
        }
        if let Some(id) = starting_after {
            query.append_pair("starting_after", id);
        }
        let path = format!("/v1/events?{}", query.finish());
        self.with_retries(reqwest::Method::GET, &path, |request| request).await
    }

    /// POSTs `params` to `path` with `idempotency_key`, trying again on retryable errors.
    pub async fn post<T: for<'de> Deserialize<'de>>(&self, path: &str, params: &Value, idempotency_key: &str) -> Result<T, Failed<StripeError>> {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form::encode(params)).finish();
        self.with_retries(reqwest::Method::POST, path, |request| {
            request.header("Idempotency-Key", idempotency_key).header("Content-Type", "application/x-www-form-urlencoded").body(body.clone())
        })
        .await
    }

    /// Sends a `method` request to `path`, completed by `build`, with our key and API version,
    /// trying again (the same request, so the same idempotency key) while Stripe's answer
    /// allows. The error names the call and every try's failure.
    async fn with_retries<T: for<'de> Deserialize<'de>>(
        &self,
        method: reqwest::Method,
        path: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<T, Failed<StripeError>> {
        let mut pause = self.retry_pause;
        let mut earlier = Vec::new();
        loop {
            let request =
                build(self.http.request(method.clone(), self.url(path))).bearer_auth(self.secret_key.expose_secret()).header("Stripe-Version", API_VERSION);
            if let Some(pacer) = &self.pacer {
                pacer.wait().await;
            }
            match self.send(path, request).await {
                Ok(answer) => return Ok(answer),
                Err(error) if error.is_retryable() && earlier.len() < RETRIES => {
                    tracing::warn!(%error, endpoint = %crate::http::endpoint_class(path), "Stripe request failed; trying again");
                    earlier.push(error.to_string());
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(error) => return Err(Failed::new("Stripe", &method, path, earlier, error)),
            }
        }
    }

    fn url(&self, path: &str) -> url::Url {
        self.base.join(path.trim_start_matches('/')).expect("API paths join onto the base URL")
    }

    async fn send<T: for<'de> Deserialize<'de>>(&self, path: &str, request: reqwest::RequestBuilder) -> Result<T, StripeError> {
        let (status, headers, body) = crate::http::send_with_headers(crate::provider::Provider::Stripe, path, request)
            .await
            .map_err(|e| StripeError::Unreachable(crate::http::describe(e)))?;
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let should_retry = header("stripe-should-retry").map(|v| v == "true");
        let request_id = header("request-id");
        if (200..300).contains(&status) {
            return serde_json::from_slice(&body).map_err(|e| StripeError::Unreadable { status, detail: e.to_string() });
        }
        #[derive(Deserialize)]
        struct ErrorBody {
            error: ErrorObject,
        }
        #[derive(Deserialize)]
        struct ErrorObject {
            #[serde(rename = "type")]
            kind: Option<String>,
            code: Option<String>,
            message: Option<String>,
            param: Option<String>,
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(ErrorBody { error }) => Err(StripeError::Api {
                status,
                kind: error.kind.unwrap_or_else(|| "api_error".into()),
                code: error.code,
                message: error.message.unwrap_or_else(|| "(no message)".into()),
                param: error.param,
                should_retry,
                request_id,
            }),
            Err(_) => Err(StripeError::Unreadable { status, detail: String::from_utf8_lossy(&body).chars().take(200).collect() }),
        }
    }
}
