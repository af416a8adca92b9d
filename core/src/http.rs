//! What the provider clients share about HTTP: how a request with no answer is described, and
//! the metrics of every call.

use std::time::Instant;

use tracing::Instrument;

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

/// Sends `request` to `provider`'s `path` and reads the whole answer, observed by [`observe`].
pub async fn send(provider: &'static str, path: &str, request: reqwest::RequestBuilder) -> Result<(u16, bytes::Bytes), reqwest::Error> {
    let started = Instant::now();
    let answer = async {
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.bytes().await?))
    }
    .instrument(call_span(provider, path))
    .await;
    observe(provider, path, answer.as_ref().ok().map(|(status, _)| *status), started);
    answer
}

/// The span of one call to a provider (a child of the job's span, so of the delivery's trace).
pub fn call_span(provider: &'static str, path: &str) -> tracing::Span {
    tracing::info_span!("provider call", provider, endpoint = %endpoint_class(path))
}

/// Counts one call to `provider` and records how long it took: `kommo_pay_provider_requests_total`
/// and `kommo_pay_provider_request_seconds`, by provider, endpoint class (the path with ids
/// replaced, e.g. `api/v4/leads/:id`) and status (`error` when there was no answer).
pub fn observe(provider: &'static str, path: &str, status: Option<u16>, started: Instant) {
    let endpoint = endpoint_class(path);
    let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
    metrics::counter!("kommo_pay_provider_requests_total", "provider" => provider, "endpoint" => endpoint.clone(), "status" => status).increment(1);
    metrics::histogram!("kommo_pay_provider_request_seconds", "provider" => provider, "endpoint" => endpoint).record(started.elapsed().as_secs_f64());
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
