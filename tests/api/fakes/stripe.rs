//! A fake Stripe: bracket form-encoded requests in, JSON out, Stripe's error objects, and
//! idempotent replays of a key's first answer. Failures can be queued to test retries.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// The secret key the fake accepts (the test environment's `STRIPE_KEY`).
pub const SECRET_KEY: &str = "sk_test_123";

/// One request as Stripe would see it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    /// The decoded form parameters.
    pub params: Value,
    pub idempotency_key: Option<String>,
    pub version: Option<String>,
    pub authorization: Option<String>,
    /// When it arrived.
    pub at: std::time::Instant,
}

#[derive(Default)]
struct Fake {
    requests: Vec<Recorded>,
    links: HashMap<String, Value>,
    /// By idempotency key: the request's parameters and the answer.
    replies: HashMap<String, (Value, Value)>,
    failures: VecDeque<(u16, Scripted, Option<bool>)>,
    delay: Option<std::time::Duration>,
    /// Everything that happened, as the events API lists it.
    events: Vec<Value>,
    /// Deals (`metadata[kommo_lead_id]`) whose links Stripe fails to create, every time.
    failing_leads: Vec<String>,
}

/// A scripted answer's body: Stripe's JSON, or a page that is not JSON (a proxy's).
enum Scripted {
    Json(Value),
    Page(String),
}

#[derive(Clone)]
pub struct FakeStripe {
    pub url: String,
    state: Arc<Mutex<Fake>>,
}

impl FakeStripe {
    pub async fn start() -> FakeStripe {
        FakeStripe::start_on("127.0.0.1:0").await
    }

    /// The fake on `address` (the sandbox's fixed ports).
    pub async fn start_on(address: &str) -> FakeStripe {
        let state = Arc::new(Mutex::new(Fake::default()));
        let router = Router::new()
            .route("/v1/payment_links", post(create_link))
            .route("/v1/payment_links/{id}", post(update_link))
            .route("/v1/events", axum::routing::get(list_events))
            .with_state(state.clone());
        FakeStripe { url: super::serve(router, address).await, state }
    }

    /// The next request is answered `status` with `body` (and `Stripe-Should-Retry` if given).
    pub fn fail_next(&self, status: u16, body: Value, should_retry: Option<bool>) {
        self.state.lock().unwrap().failures.push_back((status, Scripted::Json(body), should_retry));
    }

    /// The next request is answered `status` with an HTML page, as a proxy in front of Stripe
    /// might answer.
    pub fn answer_next_with_page(&self, status: u16, page: &str) {
        self.state.lock().unwrap().failures.push_back((status, Scripted::Page(page.to_owned()), None));
    }

    /// Link creations wait this long before they are handled (`None`: no wait).
    pub fn delay_creates(&self, delay: Option<std::time::Duration>) {
        self.state.lock().unwrap().delay = delay;
    }

    /// Something happened at Stripe: the events API lists `event` (whether or not it was
    /// delivered).
    pub fn add_event(&self, event: Value) {
        self.state.lock().unwrap().events.push(event);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Every link created so far.
    pub fn links(&self) -> Vec<Value> {
        self.state.lock().unwrap().links.values().cloned().collect()
    }

    /// Every link creation for deal `lead_id` is answered 500, as during an outage of Stripe's.
    pub fn fail_links_of_lead(&self, lead_id: i64) {
        self.state.lock().unwrap().failing_leads.push(lead_id.to_string());
    }

    pub fn link(&self, id: &str) -> Option<Value> {
        self.state.lock().unwrap().links.get(id).cloned()
    }
}

fn record(state: &mut Fake, path: String, headers: &HeaderMap, body: &[u8]) -> Recorded {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let recorded = Recorded {
        path,
        params: kommo_pay_core::form::parse_form(body).expect("the client sends a valid bracket form"),
        idempotency_key: header("idempotency-key"),
        version: header("stripe-version"),
        authorization: header("authorization"),
        at: std::time::Instant::now(),
    };
    state.requests.push(recorded.clone());
    recorded
}

fn stripe_error(status: u16, kind: &str, code: &str, message: &str, param: &str) -> (u16, Value) {
    (status, json!({ "error": { "type": kind, "code": code, "message": message, "param": param } }))
}

fn answer(status: u16, body: Value, should_retry: Option<bool>) -> Response {
    scripted(status, Scripted::Json(body), should_retry)
}

fn scripted(status: u16, body: Scripted, should_retry: Option<bool>) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    let mut response = match body {
        Scripted::Json(body) => (status, axum::Json(body)).into_response(),
        Scripted::Page(page) => (status, [("content-type", "text/html")], page).into_response(),
    };
    response.headers_mut().insert("request-id", "req_fake".parse().unwrap());
    if let Some(retry) = should_retry {
        response.headers_mut().insert("stripe-should-retry", retry.to_string().parse().unwrap());
    }
    response
}

async fn create_link(State(state): State<Arc<Mutex<Fake>>>, headers: HeaderMap, body: Bytes) -> Response {
    let (request, delay) = {
        let mut fake = state.lock().unwrap();
        (record(&mut fake, "/v1/payment_links".into(), &headers, &body), fake.delay)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let mut fake = state.lock().unwrap();
    if let Some((status, body, retry)) = fake.failures.pop_front() {
        return scripted(status, body, retry);
    }
    if let Some(lead) = request.params["metadata"]["kommo_lead_id"].as_str()
        && fake.failing_leads.iter().any(|failing| failing == lead)
    {
        let (status, body) = stripe_error(500, "api_error", "", "An unknown error occurred", "");
        return answer(status, body, Some(true));
    }
    let key = request.idempotency_key.clone().unwrap_or_default();
    if let Some((params, reply)) = fake.replies.get(&key) {
        // As Stripe: the stored answer for the same request, an error for other parameters.
        if *params != request.params {
            let message = format!(
                "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
            );
            let (status, body) = stripe_error(400, "idempotency_error", "", &message, "");
            return answer(status, body, None);
        }
        return answer(200, reply.clone(), None);
    }
    let price = &request.params["line_items"][0]["price_data"];
    let currency = price["currency"].as_str().unwrap_or_default();
    let amount: i64 = price["unit_amount"].as_str().and_then(|a| a.parse().ok()).unwrap_or(0);
    if !["usd", "eur", "gbp", "jpy"].contains(&currency) {
        let (status, body) =
            stripe_error(400, "invalid_request_error", "parameter_invalid", &format!("Invalid currency: {currency}."), "line_items[0][price_data][currency]");
        return answer(status, body, None);
    }
    if currency != "jpy" && amount < 50 {
        let (status, body) =
            stripe_error(400, "invalid_request_error", "amount_too_small", "Amount must be at least 50 cents.", "line_items[0][price_data][unit_amount]");
        return answer(status, body, None);
    }
    let n = fake.links.len() + 1;
    let id = format!("plink_fake{n}");
    let link = json!({
        "id": id, "object": "payment_link", "active": true, "livemode": false,
        "url": format!("https://buy.stripe.com/test_fake{n}"),
        "currency": currency, "metadata": request.params["metadata"],
    });
    fake.links.insert(id, link.clone());
    fake.replies.insert(key, (request.params.clone(), link.clone()));
    answer(200, link, None)
}

async fn update_link(State(state): State<Arc<Mutex<Fake>>>, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let mut fake = state.lock().unwrap();
    let request = record(&mut fake, format!("/v1/payment_links/{id}"), &headers, &body);
    if let Some((status, body, retry)) = fake.failures.pop_front() {
        return scripted(status, body, retry);
    }
    let Some(link) = fake.links.get_mut(&id) else {
        let (status, body) = stripe_error(404, "invalid_request_error", "resource_missing", &format!("No such payment_link: '{id}'"), "id");
        return answer(status, body, None);
    };
    if let Some(active) = request.params["active"].as_str() {
        link["active"] = json!(active == "true");
    }
    answer(200, link.clone(), None)
}

/// `GET /v1/events?types[]=…&created[gte]=…&limit=…&starting_after=…`: newest first, as Stripe
/// lists.
async fn list_events(State(state): State<Arc<Mutex<Fake>>>, uri: axum::http::Uri, headers: HeaderMap) -> Response {
    let query = uri.query().unwrap_or_default().to_owned();
    let mut fake = state.lock().unwrap();
    let recorded = record(&mut fake, "/v1/events".into(), &headers, query.as_bytes());
    if let Some((status, body, retry)) = fake.failures.pop_front() {
        return scripted(status, body, retry);
    }
    if recorded.authorization.as_deref() != Some(&format!("Bearer {SECRET_KEY}")) {
        let (status, body) = stripe_error(401, "invalid_request_error", "", "Invalid API Key provided", "");
        return answer(status, body, None);
    }
    let params = recorded.params;
    let types: Vec<&str> = params["types"].as_array().map(|t| t.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let number = |v: &Value| v.as_str().and_then(|s| s.parse::<i64>().ok());
    let from = number(&params["created"]["gte"]).unwrap_or(0);
    let limit = number(&params["limit"]).unwrap_or(10) as usize;
    let mut listed: Vec<&Value> =
        fake.events.iter().filter(|e| e["created"].as_i64().unwrap() >= from && (types.is_empty() || types.contains(&e["type"].as_str().unwrap()))).collect();
    listed.sort_by_key(|e| std::cmp::Reverse(e["created"].as_i64().unwrap()));
    if let Some(after) = params["starting_after"].as_str() {
        let at = listed.iter().position(|e| e["id"] == after).map_or(listed.len(), |i| i + 1);
        listed.drain(..at);
    }
    let has_more = listed.len() > limit;
    let data: Vec<Value> = listed.into_iter().take(limit).cloned().collect();
    answer(200, json!({ "object": "list", "url": "/v1/events", "has_more": has_more, "data": data }), None)
}
