//! What the provider clients share about HTTP: how a request with no answer is described, and
//! the metrics of every call.

use std::time::Instant;

use tracing::Instrument;

use crate::provider::Provider;

/// "timed out", "could not connect: …", or the error with its causes; never the URL (a Kommo
/// webhook URL would carry a secret; API URLs carry none, but no client should rely on that).
pub fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    if causes.is_empty() { kind.to_owned() } else { format!("{kind}: {}", causes.join(": ")) }
}

/// Sends `request` to `provider`'s `path` and reads the whole answer, observed by [`observe`]:
/// a success whose body is not JSON (a proxy's HTML page, a cut-off body) counts as `invalid`,
/// not as its status, since every provider we call answers a success in JSON (or, for Kommo's
/// 204, with nothing).
pub async fn send(provider: Provider, path: &str, request: reqwest::RequestBuilder) -> Result<(u16, bytes::Bytes), reqwest::Error> {
    send_with_headers(provider, path, request).await.map(|(status, _, body)| (status, body))
}

/// [`send`], with the answer's headers.
pub async fn send_with_headers(
    provider: Provider,
    path: &str,
    request: reqwest::RequestBuilder,
) -> Result<(u16, reqwest::header::HeaderMap, bytes::Bytes), reqwest::Error> {
    let started = Instant::now();
    let answer = async {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        Ok((status, headers, response.bytes().await?))
    }
    .instrument(call_span(provider, path))
    .await;
    let label = match &answer {
        // 202 acknowledges a queued task; Kommo answers a Salesbot launch with the text "Accepted".
        Ok((status @ 200..=299, _, body)) if *status != 202 && !body.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() => {
            tracing::warn!(%provider, endpoint = %endpoint_class(path), status, "a success whose body is not JSON");
            "invalid".to_owned()
        }
        Ok((status, _, _)) => status.to_string(),
        Err(_) => "error".to_owned(),
    };
    observe(provider, path, &label, started);
    answer
}

/// A call to a provider that failed, as its job records it: the provider, method and endpoint,
/// the final error, and what each earlier try of the same call got (clients retry a couple of
/// times within one attempt), so no failure is left out of the job's errors.
#[derive(Debug)]
pub struct Failed<E> {
    /// `Stripe POST v1/payment_links`.
    pub call: String,
    /// The earlier tries' errors, oldest first.
    pub earlier: Vec<String>,
    pub error: E,
}

impl<E: std::fmt::Display> Failed<E> {
    pub fn new(provider: &str, method: &reqwest::Method, path: &str, earlier: Vec<String>, error: E) -> Failed<E> {
        Failed { call: format!("{provider} {method} {}", endpoint_class(path)), earlier, error }
    }
}

impl<E: std::fmt::Display> std::fmt::Display for Failed<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.call, self.error)?;
        if !self.earlier.is_empty() {
            write!(f, " (earlier tries: {})", self.earlier.join("; "))?;
        }
        Ok(())
    }
}

impl<E: std::fmt::Debug + std::fmt::Display> std::error::Error for Failed<E> {}

/// The failure's own kind, to decide on it (`is_retryable`, the variants).
impl<E> std::ops::Deref for Failed<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.error
    }
}

/// The span of one call to a provider (a child of the job's span, so of the delivery's trace).
pub fn call_span(provider: Provider, path: &str) -> tracing::Span {
    tracing::info_span!("provider call", provider = provider.as_str(), endpoint = %endpoint_class(path))
}

/// Counts one call to `provider` and records how long it took: `kommo_pay_provider_requests_total`
/// and `kommo_pay_provider_request_seconds`, by provider, endpoint class (the path with ids
/// replaced, e.g. `api/v4/leads/:id`) and status (`error` when there was no answer, `invalid`
/// for a success that is not JSON).
pub fn observe(provider: Provider, path: &str, status: &str, started: Instant) {
    let endpoint = endpoint_class(path);
    let status = status.to_owned();
    metrics::counter!("kommo_pay_provider_requests_total", "provider" => provider.as_str(), "endpoint" => endpoint.clone(), "status" => status).increment(1);
    metrics::histogram!("kommo_pay_provider_request_seconds", "provider" => provider.as_str(), "endpoint" => endpoint).record(started.elapsed().as_secs_f64());
}

/// The path without its query, each segment that looks like an id (all digits, or longer than a
/// version like `v4` and holding a digit) replaced by `:id`: ids must not become metric series.
pub fn endpoint_class(path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default().trim_matches('/');
    let id = |segment: &str| {
        let digits = segment.bytes().filter(u8::is_ascii_digit).count();
        digits > 0 && (digits == segment.len() || segment.len() > 3)
    };
    path.split('/').map(|segment| if id(segment) { ":id" } else { segment }).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoint_classes_hide_ids_and_queries() {
        assert_eq!(super::endpoint_class("api/v4/leads/15318175?with=contacts"), "api/v4/leads/:id");
        assert_eq!(super::endpoint_class("/v1/payment_links/plink_1MoC3ULkdIwHu7ix"), "v1/payment_links/:id");
        assert_eq!(super::endpoint_class("v1/orders?filter[store_id]=1&page[number]=2"), "v1/orders");
        assert_eq!(super::endpoint_class("api/v4/bots/77/run"), "api/v4/bots/:id/run");
        assert_eq!(super::endpoint_class("v1/subscriptions/in_1"), "v1/subscriptions/:id");
    }
}
