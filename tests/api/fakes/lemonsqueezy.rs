//! A fake Lemon Squeezy API: JSON:API in and out, its `errors` array, 201 for a created
//! checkout with a signed-looking URL, and scripted failures.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

pub const API_KEY: &str = "ls-test-api-key";

#[derive(Debug, Clone)]
pub struct Recorded {
    pub document: Value,
    pub accept: Option<String>,
    pub content_type: Option<String>,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct Fake {
    requests: Vec<Recorded>,
    failures: VecDeque<(u16, Value)>,
    checkouts: usize,
}

#[derive(Clone)]
pub struct FakeLemonSqueezy {
    pub url: String,
    state: Arc<Mutex<Fake>>,
}

impl FakeLemonSqueezy {
    pub async fn start() -> FakeLemonSqueezy {
        let state = Arc::new(Mutex::new(Fake::default()));
        let router = Router::new().route("/v1/checkouts", post(create_checkout)).with_state(state.clone());
        FakeLemonSqueezy { url: super::serve(router).await, state }
    }

    pub fn fail_next(&self, status: u16, body: Value) {
        self.state.lock().unwrap().failures.push_back((status, body));
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn errors(status: u16, detail: &str, pointer: &str) -> Response {
    let body = json!({ "jsonapi": { "version": "1.0" }, "errors": [{ "detail": detail, "status": status.to_string(), "title": "Unprocessable Entity", "source": { "pointer": pointer } }] });
    (StatusCode::from_u16(status).unwrap(), [("content-type", "application/vnd.api+json")], body.to_string()).into_response()
}

async fn create_checkout(State(state): State<Arc<Mutex<Fake>>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let document: Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut fake = state.lock().unwrap();
    fake.requests.push(Recorded { document: document.clone(), accept: header("accept"), content_type: header("content-type"), authorization: header("authorization") });
    if let Some((status, body)) = fake.failures.pop_front() {
        return (StatusCode::from_u16(status).unwrap(), [("content-type", "application/vnd.api+json")], body.to_string()).into_response();
    }
    if header("authorization") != Some(format!("Bearer {API_KEY}")) {
        return errors(401, "Unauthenticated.", "/");
    }
    let data = &document["data"];
    let variant = data.pointer("/relationships/variant/data/id");
    if !matches!(variant, Some(Value::String(_))) || data.pointer("/relationships/store/data/id").and_then(Value::as_str).is_none() {
        return errors(422, "The store and variant relationships are required, with string ids.", "/data/relationships");
    }
    if variant.and_then(Value::as_str) == Some("999") {
        return errors(404, "The variant could not be found.", "/data/relationships/variant");
    }
    if !data.pointer("/attributes/checkout_data/custom").is_some_and(Value::is_object) {
        return errors(422, "The checkout data must be an array.", "/data/attributes/checkout_data");
    }
    fake.checkouts += 1;
    let id = format!("5e8b546c-c561-4a2c-a586-{:012}", fake.checkouts);
    let attributes = json!({
        "store_id": data.pointer("/relationships/store/data/id").and_then(Value::as_str).unwrap().parse::<i64>().unwrap_or(0),
        "variant_id": variant.and_then(Value::as_str).unwrap().parse::<i64>().unwrap_or(0),
        "custom_price": data.pointer("/attributes/custom_price"),
        "checkout_data": data.pointer("/attributes/checkout_data"),
        "expires_at": data.pointer("/attributes/expires_at"),
        "test_mode": data.pointer("/attributes/test_mode"),
        "preview": false,
        "url": format!("https://acme.lemonsqueezy.com/checkout/custom/{id}?signature=abc123"),
    });
    let body = json!({ "jsonapi": { "version": "1.0" }, "data": { "type": "checkouts", "id": id, "attributes": attributes } });
    (StatusCode::CREATED, [("content-type", "application/vnd.api+json")], body.to_string()).into_response()
}
