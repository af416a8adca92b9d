//! A thin Lemon Squeezy client: JSON:API requests with the three headers the API expects, the
//! API key as a bearer token, errors read from the `errors` array, and the account's 300 requests
//! per minute kept across all processes (`crate::rate_limit`).
//!
//! Lemon Squeezy documents no idempotency key: a create retried after a lost answer may create a
//! second checkout. That is harmless (a checkout is only a URL); the caller keeps the one it hands
//! out. Failed requests are tried again here on 429, 5xx and network errors, twice at most.

use crate::ids::AccountSlug;
use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::http::Failed;
use crate::money::Money;
use crate::rate_limit::{RateLimiter, Slot};

const MEDIA_TYPE: &str = "application/vnd.api+json";
/// 300 calls per minute (docs.lemonsqueezy.com/api).
const REQUESTS_PER_SECOND: f64 = 5.0;
const RETRIES: usize = 2;
/// Lemon Squeezy names no `Retry-After`: back off to the next minute.
const RATE_LIMIT_PAUSE: Duration = Duration::from_secs(60);

pub struct LemonSqueezyClient {
    http: reqwest::Client,
    base: url::Url,
    api_key: SecretString,
    limiter: RateLimiter,
    retry_pause: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LemonSqueezyError {
    /// The API refused the request (4xx with a JSON:API `errors` array).
    #[error("Lemon Squeezy refused the request ({status}): {detail}{}", pointer.as_ref().map(|p| format!(" (at {p})")).unwrap_or_default())]
    Refused { status: u16, detail: String, pointer: Option<String> },
    /// The API key is wrong, expired (they last a year) or of the other mode.
    #[error("Lemon Squeezy refused the API key ({status}): {detail}")]
    Unauthorized { status: u16, detail: String },
    #[error("Lemon Squeezy's rate limit: retry after {0:?}")]
    RateLimited(Duration),
    /// 5xx, no answer, or an unreadable one.
    #[error("Lemon Squeezy is unavailable: {0}")]
    Unavailable(String),
    #[error("the rate-limit state could not be read: {0}")]
    Database(#[from] sqlx::Error),
}

impl LemonSqueezyError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::RateLimited(_) | Self::Unavailable(_) | Self::Database(_))
    }
}

/// A checkout to create for a deal.
#[derive(Debug, Clone)]
pub struct NewCheckout {
    pub store_id: String,
    pub variant_id: String,
    /// Overrides the variant's price (in cents of the store's currency).
    pub custom_price: Money,
    /// `checkout_data.custom`: comes back as `meta.custom_data` in the order's webhooks.
    pub custom: BTreeMap<String, String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub product_name: Option<String>,
    pub description: Option<String>,
    pub redirect_url: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub test_mode: bool,
}

impl NewCheckout {
    /// The JSON:API document for `POST /v1/checkouts` (reference/lemonsqueezy.md §1).
    pub fn document(&self) -> Value {
        // Only this variant: the buyer cannot switch plans on a deal's checkout.
        let enabled: Vec<i64> = self.variant_id.parse().ok().into_iter().collect();
        let mut product_options = json!({ "enabled_variants": enabled });
        for (key, value) in [("name", &self.product_name), ("description", &self.description), ("redirect_url", &self.redirect_url)] {
            if let Some(value) = value {
                product_options[key] = json!(value);
            }
        }
        let mut checkout_data = json!({ "custom": self.custom });
        for (key, value) in [("email", &self.email), ("name", &self.name)] {
            if let Some(value) = value {
                checkout_data[key] = json!(value);
            }
        }
        json!({ "data": {
            "type": "checkouts",
            "attributes": {
                "custom_price": self.custom_price.minor(),
                "product_options": product_options,
                "checkout_data": checkout_data,
                "expires_at": self.expires_at,
                "test_mode": self.test_mode,
            },
            "relationships": {
                "store": { "data": { "type": "stores", "id": self.store_id } },
                "variant": { "data": { "type": "variants", "id": self.variant_id } },
            }
        }})
    }
}

/// What reconciliation lists of a store: its orders or its subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Orders,
    Subscriptions,
}

impl Listing {
    fn resource(self) -> &'static str {
        match self {
            Listing::Orders => "orders",
            Listing::Subscriptions => "subscriptions",
        }
    }
}

/// One object of a listing: typed, and as sent (a reconciled event carries it as its `data`).
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: String,
    pub object: super::event::Object,
    pub raw: Value,
}

/// At most this many pages of 100 per listing and call; more waits for the next call.
const MAX_PAGES: u32 = 50;

/// What we keep of a checkout: its id (a UUID) and its signed URL, to be sent exactly as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    pub id: String,
    pub url: String,
}

impl LemonSqueezyClient {
    pub fn new(pool: PgPool, account: &AccountSlug, base: url::Url, api_key: SecretString) -> LemonSqueezyClient {
        let http =
            reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(20)).build().expect("a TLS backend is available");
        let limiter = RateLimiter::new(pool, crate::provider::Provider::LemonSqueezy, account, REQUESTS_PER_SECOND);
        LemonSqueezyClient { http, base, api_key, limiter, retry_pause: Duration::from_millis(500) }
    }

    /// The same client with another first pause between tries (tests make it short).
    pub fn with_retry_pause(mut self, pause: Duration) -> LemonSqueezyClient {
        self.retry_pause = pause;
        self
    }

    pub async fn create_checkout(&self, checkout: &NewCheckout) -> Result<Checkout, Failed<LemonSqueezyError>> {
        let answer = self.request(reqwest::Method::POST, "v1/checkouts", Some(&checkout.document())).await?;
        let id = answer.pointer("/data/id").and_then(Value::as_str);
        let url = answer.pointer("/data/attributes/url").and_then(Value::as_str);
        match (id, url) {
            (Some(id), Some(url)) => Ok(Checkout { id: id.to_owned(), url: url.to_owned() }),
            _ => {
                let error = LemonSqueezyError::Unavailable("a checkout answer without data.id or data.attributes.url".into());
                Err(Failed::new("Lemon Squeezy", &reqwest::Method::POST, "v1/checkouts", Vec::new(), error))
            }
        }
    }

    /// The objects of `listing` in `store` created at or after `from`. Lemon Squeezy lists them
    /// newest first by creation, so paging stops at the first older one (or after
    /// [`MAX_PAGES`]).
    pub async fn created_since(&self, listing: Listing, store: &str, from: DateTime<Utc>) -> Result<Vec<Listed>, Failed<LemonSqueezyError>> {
        let resource = listing.resource();
        let mut found = Vec::new();
        for page in 1..=MAX_PAGES {
            let path = format!("v1/{resource}?filter[store_id]={store}&page[size]=100&page[number]={page}");
            let answer = self.request(reqwest::Method::GET, &path, None).await?;
            let data = answer.get("data").and_then(Value::as_array).cloned().unwrap_or_default();
            let before = data.len();
            found.extend(data.into_iter().filter(|object| created_at(object).is_some_and(|at| at >= from)).map(|raw| {
                let id = raw.get("id").map(crate::plain_text).unwrap_or_default();
                let attributes = raw.get("attributes").cloned().unwrap_or(Value::Null);
                Listed { object: super::event::Object::decode(resource, &id, &attributes), id, raw }
            }));
            if found.len() < before || answer.pointer("/links/next").is_none_or(Value::is_null) {
                break;
            }
        }
        Ok(found)
    }

    /// Sends the request, trying again a couple of times on a failure worth it (not a rate
    /// limit: that waits for its time). The error names the call and every try's failure.
    async fn request(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value, Failed<LemonSqueezyError>> {
        let mut pause = self.retry_pause;
        let mut earlier = Vec::new();
        loop {
            match self.send(method.clone(), path, body).await {
                Ok(answer) => return Ok(answer),
                Err(error) if error.is_retryable() && !matches!(error, LemonSqueezyError::RateLimited(_)) && earlier.len() < RETRIES => {
                    tracing::warn!(%error, endpoint = %crate::http::endpoint_class(path), "Lemon Squeezy request failed; trying again");
                    earlier.push(error.to_string());
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(error) => return Err(Failed::new("Lemon Squeezy", &method, path, earlier, error)),
            }
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value, LemonSqueezyError> {
        match self.limiter.acquire().await? {
            Slot::Go => {}
            Slot::TooFar(wait) => return Err(LemonSqueezyError::RateLimited(wait)),
            Slot::Blocked { reason, .. } => return Err(LemonSqueezyError::Unauthorized { status: 0, detail: reason }),
        }
        let url = self.base.join(path).expect("API paths join onto the base URL");
        let mut request =
            self.http.request(method, url).bearer_auth(self.api_key.expose_secret()).header("Accept", MEDIA_TYPE).header("Content-Type", MEDIA_TYPE);
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        let (status, bytes) = crate::http::send(crate::provider::Provider::LemonSqueezy, path, request)
            .await
            .map_err(|e| LemonSqueezyError::Unavailable(crate::http::describe(e)))?;
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        let first_error = json.as_ref().and_then(|j| j.pointer("/errors/0")).cloned().unwrap_or_default();
        let detail = first_error
            .get("detail")
            .or_else(|| first_error.get("title"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
        match status {
            200..=299 => json.ok_or_else(|| LemonSqueezyError::Unavailable("an answer that is not JSON".into())),
            401 | 403 => Err(LemonSqueezyError::Unauthorized { status, detail }),
            429 => {
                self.limiter.pause(RATE_LIMIT_PAUSE).await?;
                Err(LemonSqueezyError::RateLimited(RATE_LIMIT_PAUSE))
            }
            500.. => Err(LemonSqueezyError::Unavailable(format!("{status}: {detail}"))),
            _ => {
                let pointer = first_error.pointer("/source/pointer").and_then(Value::as_str).map(str::to_owned);
                Err(LemonSqueezyError::Refused { status, detail, pointer })
            }
        }
    }
}
fn created_at(object: &Value) -> Option<DateTime<Utc>> {
    object.pointer("/attributes/created_at")?.as_str().and_then(super::event::time)
}
