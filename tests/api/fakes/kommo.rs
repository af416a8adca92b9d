//! A fake Kommo API v4: JSON in and out (HAL on success, problem+json on errors, an nginx HTML
//! page for a 403 block), leads and contacts in memory, and scripted failures and delays.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

pub const TOKEN: &str = "kommo-test-token";

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub body: Value,
    pub at: Instant,
}

/// A scripted answer: status, content type, body.
pub type Scripted = (u16, &'static str, String);

#[derive(Default)]
struct Fake {
    requests: Vec<Recorded>,
    leads: HashMap<i64, Value>,
    contacts: HashMap<i64, Value>,
    notes: Vec<Value>,
    tasks: Vec<Value>,
    script: VecDeque<Scripted>,
    /// Scripted answers for the next request of a method to a path, whatever comes before it.
    script_at: Vec<(Method, String, Scripted)>,
    delay: Option<Duration>,
    oauth: Option<Oauth>,
    custom_fields: Vec<Value>,
    /// The events API's `lead_status_changed` entries.
    stage_changes: Vec<Value>,
    webhooks: Vec<Value>,
    /// Kommo's per-integration limit, when enforced: requests in any one second above it get 429.
    rate_limit: Option<usize>,
    too_many: usize,
    /// Leads whose updates Kommo refuses (a validation error naming the item).
    refused_updates: Vec<i64>,
    /// Fields whose every value Kommo refuses (as it refuses a text over its length).
    refused_fields: Vec<i64>,
}

/// The integration's OAuth state at Kommo: the one valid refresh token and access token.
#[derive(Debug, Clone)]
pub struct Oauth {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
    pub access_token: String,
    pub expires_in: i64,
    pub refreshes: u32,
    /// Authorization codes an installation handed out, each good once.
    pub codes: Vec<String>,
    /// The redirect URI every token request must name.
    pub redirect_uri: Option<String>,
}

#[derive(Clone)]
pub struct FakeKommo {
    pub url: String,
    state: Arc<Mutex<Fake>>,
}

impl FakeKommo {
    pub async fn start() -> FakeKommo {
        FakeKommo::start_on("127.0.0.1:0").await
    }

    /// The fake on `address` (the sandbox's fixed ports).
    pub async fn start_on(address: &str) -> FakeKommo {
        let state = Arc::new(Mutex::new(Fake::default()));
        let router = Router::new()
            .route("/api/v4/leads/{id}", get(get_lead))
            .route("/api/v4/leads", get(search_leads).patch(patch_leads))
            .route("/api/v4/leads/complex", post(add_complex))
            .route("/api/v4/contacts/{id}", get(get_contact))
            .route("/api/v4/contacts", get(list_contacts))
            .route("/api/v2/salesbot/run", post(launch_bots))
            .route("/api/v4/leads/notes", get(list_notes).post(add_notes))
            .route("/api/v4/tasks", get(list_tasks).post(add_tasks))
            .route("/oauth2/access_token", post(access_token))
            .route("/api/v4/leads/custom_fields", get(list_fields).post(add_fields))
            .route("/api/v4/events", get(list_events))
            .route("/api/v4/webhooks", get(list_webhooks))
            .with_state(state.clone());
        FakeKommo { url: super::serve(router, address).await, state }
    }

    pub fn add_lead(&self, lead: Value) {
        let id = lead["id"].as_i64().unwrap();
        self.state.lock().unwrap().leads.insert(id, lead);
    }

    pub fn add_contact(&self, contact: Value) {
        let id = contact["id"].as_i64().unwrap();
        self.state.lock().unwrap().contacts.insert(id, contact);
    }

    pub fn lead(&self, id: i64) -> Option<Value> {
        self.state.lock().unwrap().leads.get(&id).cloned()
    }

    /// The next request gets this answer instead of the normal one.
    pub fn answer_next(&self, status: u16, content_type: &'static str, body: &str) {
        self.state.lock().unwrap().script.push_back((status, content_type, body.to_owned()));
    }

    /// The next `method` request to `path` gets this answer instead of the normal one (a step
    /// of a flow failing after the steps before it went through).
    pub fn answer_next_at(&self, method: Method, path: &str, status: u16, body: &str) {
        self.state.lock().unwrap().script_at.push((method, path.to_owned(), (status, "application/problem+json", body.to_owned())));
    }

    /// Every request waits this long before it is answered.
    pub fn delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = Some(delay);
    }

    /// Enforces Kommo's limit as Kommo does: a request with `per_second` others in the second
    /// before it is answered 429 (and counted), not served.
    pub fn limit_rate(&self, per_second: usize) {
        self.state.lock().unwrap().rate_limit = Some(per_second);
    }

    /// The requests answered 429 by [`FakeKommo::limit_rate`].
    pub fn too_many(&self) -> usize {
        self.state.lock().unwrap().too_many
    }

    /// Every update of lead `id` is refused with a 400 naming its item, as Kommo refuses a value
    /// its field does not take; the whole array is refused with it.
    pub fn refuse_updates_of(&self, id: i64) {
        self.state.lock().unwrap().refused_updates.push(id);
    }

    /// Every value written into field `id` is refused with a 400 naming the item, as Kommo
    /// refuses a text it finds too long.
    pub fn refuse_values_of_field(&self, id: i64) {
        self.state.lock().unwrap().refused_fields.push(id);
    }

    /// An admin adds a deal field (`{type, name, enums?: [{value}]}`); its id (and its options'
    /// ids) are Kommo's, as `POST /api/v4/leads/custom_fields` gives them.
    pub fn add_field(&self, field: Value) -> Value {
        create_field(&mut self.state.lock().unwrap(), field)
    }

    /// The Salesbot launches that reached Kommo, one per item of the batch launches.
    pub fn bot_launches(&self) -> Vec<Value> {
        let requests = self.requests();
        requests.into_iter().filter(|r| r.path == "/api/v2/salesbot/run").flat_map(|r| r.body.as_array().cloned().unwrap_or_default()).collect()
    }

    /// Accepts OAuth: `refresh_token` is the one valid refresh token; access tokens last
    /// `expires_in` seconds.
    pub fn enable_oauth(&self, client_id: &str, client_secret: &str, refresh_token: &str, expires_in: i64) {
        self.state.lock().unwrap().oauth = Some(Oauth {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            refresh_token: refresh_token.into(),
            access_token: String::new(),
            expires_in,
            refreshes: 0,
            codes: Vec::new(),
            redirect_uri: None,
        });
    }

    /// An admin installed the integration: Kommo hands out `code` (exchangeable once, with the
    /// integration's `redirect_uri`).
    pub fn issue_code(&self, code: &str, redirect_uri: &str) {
        let mut fake = self.state.lock().unwrap();
        let oauth = fake.oauth.as_mut().expect("OAuth enabled");
        oauth.codes.push(code.to_owned());
        oauth.redirect_uri = Some(redirect_uri.to_owned());
    }

    pub fn oauth(&self) -> Oauth {
        self.state.lock().unwrap().oauth.clone().expect("OAuth enabled")
    }

    /// The current access token stops working (revoked, or expired early).
    pub fn revoke_access_token(&self) {
        self.state.lock().unwrap().oauth.as_mut().expect("OAuth enabled").access_token = "revoked".into();
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn custom_fields(&self) -> Vec<Value> {
        self.state.lock().unwrap().custom_fields.clone()
    }

    /// A manager moves the lead into `status_id` at `at` (Unix seconds): the lead changes and the
    /// events API lists the change; no hook is sent.
    pub fn move_lead_silently(&self, lead_id: i64, status_id: i64, at: i64) {
        let mut fake = self.state.lock().unwrap();
        let lead = fake.leads.get_mut(&lead_id).expect("a known lead");
        let before = json!([{ "lead_status": { "id": lead["status_id"], "pipeline_id": lead["pipeline_id"] } }]);
        lead["status_id"] = json!(status_id);
        let after = json!([{ "lead_status": { "id": status_id, "pipeline_id": lead["pipeline_id"] } }]);
        let id = format!("01jz{:022}", fake.stage_changes.len());
        fake.stage_changes.push(json!({
            "id": id, "type": "lead_status_changed", "entity_id": lead_id, "entity_type": "lead", "created_by": 504141,
            "created_at": at, "value_after": after, "value_before": before, "account_id": 32427762,
            "_links": { "self": { "href": format!("/api/v4/events/{id}") } }
        }));
    }

    /// The hooks `GET /api/v4/webhooks` lists.
    pub fn set_webhooks(&self, webhooks: Vec<Value>) {
        self.state.lock().unwrap().webhooks = webhooks;
    }

    /// A note that is there already (e.g. added by an attempt that then died).
    pub fn add_note(&self, note: Value) {
        self.state.lock().unwrap().notes.push(note);
    }

    pub fn notes(&self) -> Vec<Value> {
        self.state.lock().unwrap().notes.clone()
    }

    pub fn tasks(&self) -> Vec<Value> {
        self.state.lock().unwrap().tasks.clone()
    }
}

fn problem(status: u16, title: &str, detail: &str) -> Response {
    let body = json!({ "title": title, "type": "https://httpstatus.es/", "status": status, "detail": detail });
    (StatusCode::from_u16(status).unwrap(), [("content-type", "application/problem+json")], body.to_string()).into_response()
}

fn hal(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), [("content-type", "application/hal+json")], body.to_string()).into_response()
}

/// Records the request; answers from the script, or checks the token; `None` lets the route answer.
async fn intake(state: &Arc<Mutex<Fake>>, method: Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Option<Response> {
    let delay = {
        let mut fake = state.lock().unwrap();
        let body = if body.is_empty() { Value::Null } else { serde_json::from_slice(body).expect("the client sends JSON") };
        let now = Instant::now();
        if let Some(limit) = fake.rate_limit {
            let last_second = fake.requests.iter().rev().take_while(|r| now.duration_since(r.at) < Duration::from_secs(1)).count();
            if last_second >= limit {
                fake.too_many += 1;
                return Some(problem(429, "Too Many Requests", "Too many requests"));
            }
        }
        fake.requests.push(Recorded { method: method.clone(), path: uri.to_string(), body, at: now });
        fake.delay
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let scripted_at = {
        let mut fake = state.lock().unwrap();
        let found = fake.script_at.iter().position(|(m, path, _)| *m == method && uri.path() == path);
        found.map(|i| fake.script_at.remove(i).2)
    };
    if let Some((status, content_type, body)) = scripted_at.or_else(|| state.lock().unwrap().script.pop_front()) {
        return Some((StatusCode::from_u16(status).unwrap(), [("content-type", content_type)], body).into_response());
    }
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or_default().to_owned();
    let oauth_token = state.lock().unwrap().oauth.as_ref().map(|o| o.access_token.clone()).filter(|t| !t.is_empty());
    let authorized = bearer == TOKEN || Some(&bearer) == oauth_token.as_ref();
    (!authorized).then(|| problem(401, "Unauthorized", "Token is invalid"))
}

async fn get_lead(State(state): State<Arc<Mutex<Fake>>>, Path(id): Path<i64>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(answer) = intake(&state, method, &uri, &headers, &body).await {
        return answer;
    }
    match state.lock().unwrap().leads.get(&id) {
        Some(lead) => hal(200, lead.clone()),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn get_contact(State(state): State<Arc<Mutex<Fake>>>, Path(id): Path<i64>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(answer) = intake(&state, method, &uri, &headers, &body).await {
        return answer;
    }
    match state.lock().unwrap().contacts.get(&id) {
        Some(contact) => hal(200, contact.clone()),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

/// `PATCH /api/v4/leads`: an array of `{id, …changes}`; all or nothing, like Kommo's validation.
async fn patch_leads(State(state): State<Arc<Mutex<Fake>>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(answer) = intake(&state, method, &uri, &headers, &body).await {
        return answer;
    }
    let updates: Vec<Value> = serde_json::from_slice(&body).unwrap();
    if updates.len() > 250 {
        return problem(422, "Unprocessable Entity", "Limit 250 per page");
    }
    let mut fake = state.lock().unwrap();
    for (i, update) in updates.iter().enumerate() {
        let id = update["id"].as_i64().unwrap_or_default();
        let refusal = if !fake.leads.contains_key(&id) {
            Some(("NotFound", "id".to_owned(), "lead not found"))
        } else if fake.refused_updates.contains(&id) {
            Some(("NotSupportedChoice", "custom_fields_values.0.field_id".to_owned(), "the field does not take this value"))
        } else {
            refused_value(&fake, update)
        };
        if let Some((code, path, detail)) = refusal {
            let body = json!({ "validation-errors": [{ "request_id": i.to_string(), "errors": [{ "code": code, "path": path, "detail": detail }] }],
                               "title": "Bad Request", "status": 400, "detail": "Request validation failed" });
            return (StatusCode::BAD_REQUEST, [("content-type", "application/problem+json")], body.to_string()).into_response();
        }
    }
    let mut updated = Vec::new();
    for changes in updates {
        let id = changes["id"].as_i64().unwrap();
        apply_changes(fake.leads.get_mut(&id).unwrap(), &changes);
        updated.push(json!({ "id": id, "updated_at": 1764160000 }));
    }
    hal(200, json!({ "_embedded": { "leads": updated } }))
}

/// What Kommo's validation finds wrong with an update's custom field values: a value a known
/// field's type cannot take (a select's unknown option, a number that is not one), or any value
/// of a field set to refuse them.
fn refused_value(fake: &Fake, update: &Value) -> Option<(&'static str, String, &'static str)> {
    let written = update.get("custom_fields_values").and_then(Value::as_array)?;
    written.iter().enumerate().find_map(|(j, entry)| {
        let id = entry["field_id"].as_i64()?;
        let path = format!("custom_fields_values.{j}.field_id");
        if fake.refused_fields.contains(&id) {
            return Some(("InvalidValue", path, "the value is too long"));
        }
        let field = fake.custom_fields.iter().find(|f| f["id"].as_i64() == Some(id))?;
        let values = entry["values"].as_array().cloned().unwrap_or_default();
        let bad = match field["type"].as_str().unwrap_or_default() {
            "select" | "radiobutton" | "multiselect" => {
                let options: Vec<&Value> = field["enums"].as_array().map(|e| e.iter().map(|o| &o["id"]).collect()).unwrap_or_default();
                values.iter().any(|v| !options.contains(&&v["enum_id"]))
            }
            "numeric" | "monetary" => values.iter().any(|v| !(v["value"].is_number() || v["value"].as_str().is_some_and(|t| t.parse::<f64>().is_ok()))),
            _ => false,
        };
        bad.then_some(("NotSupportedChoice", path, "the field does not take this value"))
    })
}

fn apply_changes(lead: &mut Value, changes: &Value) {
    for (key, value) in changes.as_object().unwrap() {
        if key == "custom_fields_values" {
            // Kommo replaces the values of the fields it is sent and keeps the others.
            let mut fields: Vec<Value> = lead[key].as_array().cloned().unwrap_or_default();
            for field in value.as_array().unwrap() {
                fields.retain(|f| f["field_id"] != field["field_id"]);
                fields.push(field.clone());
            }
            lead[key] = Value::Array(fields);
        } else {
            lead[key] = value.clone();
        }
    }
}

async fn add_notes(State(state): State<Arc<Mutex<Fake>>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(answer) = intake(&state, method, &uri, &headers, &body).await {
        return answer;
    }
    let notes: Vec<Value> = serde_json::from_slice(&body).unwrap();
    let mut fake = state.lock().unwrap();
    let first = fake.notes.len();
    fake.notes.extend(notes.iter().cloned());
    let ids: Vec<Value> = (0..notes.len()).map(|i| json!({ "id": 9000 + first + i })).collect();
    hal(200, json!({ "_embedded": { "notes": ids } }))
}

async fn add_tasks(State(state): State<Arc<Mutex<Fake>>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(answer) = intake(&state, method, &uri, &headers, &body).await {
        return answer;
    }
    let tasks: Vec<Value> = serde_json::from_slice(&body).unwrap();
    for task in &tasks {
        let blank = task.get("text").and_then(Value::as_str).is_none_or(|text| text.trim().is_empty());
        if blank || task.get("complete_till").is_none() {
            return problem(400, "Bad Request", "Request validation failed: text must not be blank; complete_till is required");
        }
    }
    let mut fake = state.lock().unwrap();
    let first = fake.tasks.len();
    fake.tasks.extend(tasks.iter().cloned());
    let ids: Vec<Value> = (0..tasks.len()).map(|i| json!({ "id": 7000 + first + i })).collect();
    hal(200, json!({ "_embedded": { "tasks": ids } }))
}

/// `POST /api/v2/salesbot/run`: `[{bot_id, entity_id, entity_type}]`, at most 100; Kommo
/// answers 202 with the text "Accepted".
async fn launch_bots(State(state): State<Arc<Mutex<Fake>>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(answer) = intake(&state, method, &uri, &headers, &body).await {
        return answer;
    }
    let launches: Vec<Value> = serde_json::from_slice(&body).unwrap();
    if launches.len() > 100 || launches.iter().any(|l| l["bot_id"].as_i64().is_none() || l["entity_type"] != 2) {
        return problem(400, "Bad Request", "at most 100 launches of {bot_id, entity_id, entity_type: 2}");
    }
    (StatusCode::ACCEPTED, [("content-type", "text/html")], "Accepted").into_response()
}

/// `POST /oauth2/access_token` (JSON): a refresh rotates both tokens; the old refresh token dies.
async fn access_token(State(state): State<Arc<Mutex<Fake>>>, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap();
    let mut fake = state.lock().unwrap();
    let Some(oauth) = fake.oauth.as_mut() else { return problem(404, "Not Found", "no OAuth here") };
    let client = request["client_id"] == oauth.client_id.as_str()
        && request["client_secret"] == oauth.client_secret.as_str()
        && oauth.redirect_uri.as_ref().is_none_or(|uri| request["redirect_uri"] == uri.as_str());
    let granted = match request["grant_type"].as_str() {
        Some("refresh_token") => request["refresh_token"] == oauth.refresh_token.as_str(),
        Some("authorization_code") => match oauth.codes.iter().position(|code| request["code"] == code.as_str()) {
            Some(i) => {
                oauth.codes.remove(i);
                true
            }
            None => false,
        },
        _ => false,
    };
    if !client || !granted {
        return problem(400, "Bad Request", "Token has been revoked");
    }
    // A code's pair is the installation's; only refreshes count as such.
    let issued = if request["grant_type"] == "refresh_token" {
        oauth.refreshes += 1;
        format!("{}", oauth.refreshes)
    } else {
        format!("installed-{}", uuid::Uuid::new_v4().simple())
    };
    oauth.access_token = format!("oauth-access-{issued}");
    oauth.refresh_token = format!("oauth-refresh-{issued}");
    let answer = json!({ "token_type": "Bearer", "expires_in": oauth.expires_in, "access_token": oauth.access_token, "refresh_token": oauth.refresh_token });
    (StatusCode::OK, axum::Json(answer)).into_response()
}

async fn list_fields(State(state): State<Arc<Mutex<Fake>>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(answer) = intake(&state, method, &uri, &headers, &body).await {
        return answer;
    }
    let fields = state.lock().unwrap().custom_fields.clone();
    if fields.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    hal(200, json!({ "_page": 1, "_links": { "self": { "href": uri.to_string() } }, "_embedded": { "custom_fields": fields } }))
}

async fn add_fields(State(state): State<Arc<Mutex<Fake>>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(answer) = intake(&state, method, &uri, &headers, &body).await {
        return answer;
    }
    let requested: Vec<Value> = serde_json::from_slice(&body).unwrap();
    let mut fake = state.lock().unwrap();
    let created: Vec<Value> = requested.into_iter().map(|field| create_field(&mut fake, field)).collect();
    hal(200, json!({ "_embedded": { "custom_fields": created } }))
}

/// A new field with Kommo's ids for it and its options.
fn create_field(fake: &mut Fake, mut field: Value) -> Value {
    let n = fake.custom_fields.len() as i64;
    field["id"] = json!(1246500 + n);
    if let Some(enums) = field.get_mut("enums").and_then(Value::as_array_mut) {
        for (i, option) in enums.iter_mut().enumerate() {
            option["id"] = json!(900000 + n * 100 + i as i64);
        }
    }
    fake.custom_fields.push(field.clone());
    field
}

/// `POST /api/v4/leads/complex`: leads created with their contact, ids from 30,000,000.
async fn add_complex(State(state): State<Arc<Mutex<Fake>>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(answer) = intake(&state, method, &uri, &headers, &body).await {
        return answer;
    }
    let leads: Vec<Value> = serde_json::from_slice(&body).unwrap();
    let mut fake = state.lock().unwrap();
    let mut created = Vec::new();
    for (i, mut lead) in leads.into_iter().enumerate() {
        let id = 30_000_000 + fake.leads.len() as i64;
        lead["id"] = json!(id);
        fake.leads.insert(id, lead);
        created.push(json!({ "id": id, "contact_id": id + 1, "company_id": null, "request_id": [i.to_string()], "merged": false }));
    }
    hal(200, Value::Array(created))
}

/// `GET /api/v4/leads?filter[id][]=…&limit=…` (the leads with those ids) or `?query=…` (leads
/// whose name contains the query); 204 when none.
async fn search_leads(State(state): State<Arc<Mutex<Fake>>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(answer) = intake(&state, method, &uri, &headers, &body).await {
        return answer;
    }
    let query: String =
        uri.query().and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "query").map(|(_, v)| v.into_owned())).unwrap_or_default();
    let found: Vec<Value> = match by_ids(&uri) {
        Err(refused) => return *refused,
        Ok(Some(ids)) => {
            let fake = state.lock().unwrap();
            ids.iter().filter_map(|id| fake.leads.get(id).cloned()).collect()
        }
        Ok(None) => state.lock().unwrap().leads.values().filter(|l| l["name"].as_str().is_some_and(|n| n.contains(&query))).cloned().collect(),
    };
    if found.is_empty() { StatusCode::NO_CONTENT.into_response() } else { hal(200, json!({ "_embedded": { "leads": found } })) }
}

/// `GET /api/v4/contacts?filter[id][]=…`: the contacts with those ids; 204 when none.
async fn list_contacts(State(state): State<Arc<Mutex<Fake>>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(answer) = intake(&state, method, &uri, &headers, &body).await {
        return answer;
    }
    let ids = match by_ids(&uri) {
        Err(refused) => return *refused,
        Ok(ids) => ids.unwrap_or_default(),
    };
    let found: Vec<Value> = {
        let fake = state.lock().unwrap();
        ids.iter().filter_map(|id| fake.contacts.get(id).cloned()).collect()
    };
    if found.is_empty() { StatusCode::NO_CONTENT.into_response() } else { hal(200, json!({ "_embedded": { "contacts": found } })) }
}

/// The ids a list request filters on (`filter[id][]`), if any; Kommo's page holds at most 250
/// (`limit`, default 50), and a request for more is refused with 422.
fn by_ids(uri: &Uri) -> Result<Option<Vec<i64>>, Box<Response>> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let limit: usize = pairs.iter().find(|(k, _)| k == "limit").map_or(50, |(_, v)| v.parse().expect("a number"));
    let ids: Vec<i64> = pairs.iter().filter(|(k, _)| k == "filter[id][]").map(|(_, v)| v.parse().expect("an id")).collect();
    if limit > 250 || ids.len() > limit {
        return Err(Box::new(problem(422, "Unprocessable Entity", "Limit 250 per page")));
    }
    Ok((!ids.is_empty()).then_some(ids))
}

/// `GET /api/v4/events?filter[type]=…&filter[created_at][from]=…&limit=…&page=…`: HAL pages, 204
/// when a page is empty.
async fn list_events(State(state): State<Arc<Mutex<Fake>>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(answer) = intake(&state, method, &uri, &headers, &body).await {
        return answer;
    }
    let query: HashMap<String, String> = form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let number = |key: &str, default: i64| query.get(key).map_or(default, |v| v.parse().expect("a number"));
    let (from, limit, page) = (number("filter[created_at][from]", 0), number("limit", 100), number("page", 1));
    let kind = query.get("filter[type]").cloned().unwrap_or_default();
    let matching: Vec<Value> =
        state.lock().unwrap().stage_changes.iter().filter(|e| e["type"] == kind.as_str() && e["created_at"].as_i64().unwrap() >= from).cloned().collect();
    let start = ((page - 1) * limit) as usize;
    let events: Vec<Value> = matching.iter().skip(start).take(limit as usize).cloned().collect();
    if events.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let mut links = json!({ "self": { "href": uri.to_string() } });
    if matching.len() > start + events.len() {
        links["next"] = json!({ "href": format!("/api/v4/events?page={}", page + 1) });
    }
    hal(200, json!({ "_page": page, "_links": links, "_embedded": { "events": events } }))
}

async fn list_webhooks(State(state): State<Arc<Mutex<Fake>>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(answer) = intake(&state, method, &uri, &headers, &body).await {
        return answer;
    }
    let hooks = state.lock().unwrap().webhooks.clone();
    if hooks.is_empty() { StatusCode::NO_CONTENT.into_response() } else { hal(200, json!({ "_total_items": hooks.len(), "_embedded": { "webhooks": hooks } })) }
}

/// `GET /api/v4/leads/notes?filter[entity_id][]=…&filter[note_type]=…`: those leads' notes, newest
/// first; 204 when none.
async fn list_notes(State(state): State<Arc<Mutex<Fake>>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(answer) = intake(&state, method, &uri, &headers, &body).await {
        return answer;
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let entities = entity_ids(&pairs);
    let note_type = pairs.iter().find(|(k, _)| k == "filter[note_type]").map(|(_, v)| v.clone());
    let notes: Vec<Value> = state
        .lock()
        .unwrap()
        .notes
        .iter()
        .rev()
        .filter(|n| entities.iter().any(|e| n["entity_id"] == *e) && note_type.as_ref().is_none_or(|t| n["note_type"] == t.as_str()))
        .cloned()
        .collect();
    if notes.is_empty() { StatusCode::NO_CONTENT.into_response() } else { hal(200, json!({ "_embedded": { "notes": notes } })) }
}

/// The ids a list filters on by entity (`filter[entity_id][]`).
fn entity_ids(pairs: &[(String, String)]) -> Vec<i64> {
    pairs.iter().filter(|(k, _)| k == "filter[entity_id][]").map(|(_, v)| v.parse().expect("an id")).collect()
}

/// `GET /api/v4/tasks?filter[entity_id][]=…`: those entities' tasks (all, without the filter),
/// newest first; 204 when none.
async fn list_tasks(State(state): State<Arc<Mutex<Fake>>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(answer) = intake(&state, method, &uri, &headers, &body).await {
        return answer;
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let entities = entity_ids(&pairs);
    let tasks: Vec<Value> =
        state.lock().unwrap().tasks.iter().rev().filter(|t| entities.is_empty() || entities.iter().any(|e| t["entity_id"] == *e)).cloned().collect();
    if tasks.is_empty() { StatusCode::NO_CONTENT.into_response() } else { hal(200, json!({ "_embedded": { "tasks": tasks } })) }
}
