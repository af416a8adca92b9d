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
    /// Objects the list endpoints serve, by resource (`orders`, `subscriptions`).
    objects: std::collections::HashMap<String, Vec<Value>>,
}

#[derive(Clone)]
pub struct FakeLemonSqueezy {
    pub url: String,
    state: Arc<Mutex<Fake>>,
}

impl FakeLemonSqueezy {
    pub async fn start() -> FakeLemonSqueezy {
        FakeLemonSqueezy::start_on("127.0.0.1:0").await
    }

    /// The fake on `address` (the sandbox's fixed ports).
    pub async fn start_on(address: &str) -> FakeLemonSqueezy {
        let state = Arc::new(Mutex::new(Fake::default()));
        let router = Router::new().route("/v1/checkouts", post(create_checkout)).route("/v1/{resource}", axum::routing::get(list)).with_state(state.clone());
        FakeLemonSqueezy { url: super::serve(router, address).await, state }
    }

    pub fn fail_next(&self, status: u16, body: Value) {
        self.state.lock().unwrap().failures.push_back((status, body));
    }

    /// An order or subscription exists at Lemon Squeezy (`resource` is `orders` or
    /// `subscriptions`; `object` is its JSON:API resource object).
    pub fn add(&self, resource: &str, object: Value) {
        self.state.lock().unwrap().objects.entry(resource.to_owned()).or_default().push(object);
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
    fake.requests.push(Recorded {
        document: document.clone(),
        accept: header("accept"),
        content_type: header("content-type"),
        authorization: header("authorization"),
    });
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

/// `GET /v1/orders|subscriptions?filter[store_id]=…&page[number]=…&page[size]=…`: newest first by
/// `created_at`, with JSON:API page links.
async fn list(
    State(state): State<Arc<Mutex<Fake>>>,
    axum::extract::Path(resource): axum::extract::Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {API_KEY}")) {
        return errors(401, "Unauthenticated.", "");
    }
    let query: std::collections::HashMap<String, String> = form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let number = |key: &str, default: usize| query.get(key).map_or(default, |v| v.parse().expect("a number"));
    let (page, size) = (number("page[number]", 1), number("page[size]", 10));
    let store = query.get("filter[store_id]").cloned();
    let mut objects: Vec<Value> = state.lock().unwrap().objects.get(&resource).cloned().unwrap_or_default();
    objects.retain(|o| store.as_ref().is_none_or(|s| o["attributes"]["store_id"].as_i64().map(|id| id.to_string()).as_ref() == Some(s)));
    objects.sort_by(|a, b| b["attributes"]["created_at"].as_str().cmp(&a["attributes"]["created_at"].as_str()));
    let last = objects.len().div_ceil(size).max(1);
    let data: Vec<Value> = objects.into_iter().skip((page - 1) * size).take(size).collect();
    let link = |p: usize| format!("https://api.lemonsqueezy.com/v1/{resource}?page%5Bnumber%5D={p}&page%5Bsize%5D={size}&sort=-createdAt");
    let next = if page < last { json!(link(page + 1)) } else { Value::Null };
    let body = json!({
        "meta": { "page": { "currentPage": page, "lastPage": last, "perPage": size } },
        "jsonapi": { "version": "1.0" },
        "links": { "first": link(1), "last": link(last), "next": next },
        "data": data,
    });
    (StatusCode::OK, [("content-type", "application/vnd.api+json")], body.to_string()).into_response()
}
