//! The OpenAPI 3.1 document of the ops API (`schemas/ops-api.openapi.json`): the paths written
//! here, the bodies generated from the very types the handlers serialise, so the two cannot drift
//! apart. A test checks the committed file is this document, and that real answers validate
//! against it.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Value, json};

use super::dead_letters::{BulkRequest, DeadCounts, DeadFilter, DeadJob, JobDetail, Outcome};
use super::events::{EventDetail, EventFilter, EventReplay, EventSummary, ReplayRequest};
use super::history::History;
use super::queue_stats::QueueStats;
use super::{ErrorBody, Page, UnblockRequest, Unblocked};

pub fn document() -> Value {
    let mut generator = SchemaGenerator::new(SchemaSettings::draft2020_12().with(|s| s.definitions_path = "/components/schemas".into()));
    let mut schema = |generate: fn(&mut SchemaGenerator) -> schemars::Schema| serde_json::to_value(generate(&mut generator)).expect("a schema serialises");
    let events = schema(|g| g.subschema_for::<Page<EventSummary>>());
    let event = schema(|g| g.subschema_for::<EventDetail>());
    let replay_request = schema(|g| g.subschema_for::<ReplayRequest>());
    let replayed = schema(|g| g.subschema_for::<EventReplay>());
    let dead = schema(|g| g.subschema_for::<Page<DeadJob>>());
    let counts = schema(|g| g.subschema_for::<DeadCounts>());
    let bulk = schema(|g| g.subschema_for::<BulkRequest>());
    let outcome = schema(|g| g.subschema_for::<Outcome>());
    let job = schema(|g| g.subschema_for::<JobDetail>());
    let queue = schema(|g| g.subschema_for::<QueueStats>());
    let history = schema(|g| g.subschema_for::<History>());
    let error = schema(|g| g.subschema_for::<ErrorBody>());
    let unblock_request = schema(|g| g.subschema_for::<UnblockRequest>());
    let unblocked = schema(|g| g.subschema_for::<Unblocked>());
    let event_filter = query_parameters::<EventFilter>(&mut generator);
    let dead_filter = query_parameters::<DeadFilter>(&mut generator);
    let components = serde_json::to_value(generator.take_definitions(true)).expect("schemas serialise");

    let ok = |body: &Value| json!({ "description": "OK", "content": { "application/json": { "schema": body } } });
    let failures = |codes: &[u16]| {
        let mut answers = serde_json::Map::new();
        for code in codes {
            let description = match code {
                400 => "a bad filter or argument; nothing was changed",
                401 => "no valid bearer token",
                404 => "not found",
                _ => "the database is unavailable; try again",
            };
            answers.insert(code.to_string(), json!({ "description": description, "content": { "application/json": { "schema": error } } }));
        }
        answers
    };
    let answers = |body: &Value, codes: &[u16]| {
        let mut all = failures(codes);
        all.insert("200".into(), ok(body));
        Value::Object(all)
    };
    let path_id = |name: &str, kind: &str, format: Option<&str>| {
        let mut schema = json!({ "type": kind });
        if let Some(format) = format {
            schema["format"] = json!(format);
        }
        // Ids we hand out are positive and fit 64 bits; the handlers refuse anything else.
        if kind == "integer" {
            schema["minimum"] = json!(1);
            schema["maximum"] = json!(i64::MAX);
        }
        json!({ "name": name, "in": "path", "required": true, "schema": schema })
    };
    let body = |schema: &Value| json!({ "required": true, "content": { "application/json": { "schema": schema } } });
    let mut history_answers = answers(&history, &[400, 401, 404, 503]);
    history_answers["200"]["content"]["text/csv"] = json!({ "schema": { "type": "string" } });

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "kommo-pay ops API",
            "version": "1",
            "description": "Inspect the event log, dead letters and the queue; replay and discard; read a deal's payment history. Every request needs a bearer token from `[ops] tokens`; the token's name is recorded in the log with every replay and discard."
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/ops/v1/events": { "get": { "summary": "Events, newest first, a page at a time", "parameters": event_filter, "responses": answers(&events, &[400, 401, 503]) } },
            "/ops/v1/events/{id}": { "get": { "summary": "One event, its payload and the jobs it caused", "parameters": [path_id("id", "string", Some("uuid"))], "responses": answers(&event, &[400, 401, 404, 503]) } },
            "/ops/v1/events/{id}/replay": { "post": { "summary": "Derive the event's jobs again and enqueue them, linked to it", "parameters": [path_id("id", "string", Some("uuid"))], "requestBody": body(&replay_request), "responses": answers(&replayed, &[400, 401, 404, 503]) } },
            "/ops/v1/dead-letters": { "get": { "summary": "Dead jobs, oldest first, a page at a time", "parameters": dead_filter, "responses": answers(&dead, &[400, 401, 503]) } },
            "/ops/v1/dead-letters/counts": { "get": { "summary": "Dead jobs counted by kind and last error", "parameters": dead_filter, "responses": answers(&counts, &[400, 401, 503]) } },
            "/ops/v1/dead-letters/replay": { "post": { "summary": "Replay dead jobs (by ids or filter; dry_run only counts)", "requestBody": body(&bulk), "responses": answers(&outcome, &[400, 401, 503]) } },
            "/ops/v1/dead-letters/discard": { "post": { "summary": "Discard dead jobs with a reason", "requestBody": body(&bulk), "responses": answers(&outcome, &[400, 401, 503]) } },
            "/ops/v1/jobs/{id}": { "get": { "summary": "Any job with every attempt's error and its event", "parameters": [path_id("id", "integer", Some("int64"))], "responses": answers(&job, &[400, 401, 404, 503]) } },
            "/ops/v1/accounts/{account}/unblock": { "post": { "summary": "Let calls for the account go out again after the provider blocked it", "parameters": [path_id("account", "string", None)], "requestBody": body(&unblock_request), "responses": answers(&unblocked, &[400, 401, 404, 503]) } },
            "/ops/v1/queue": { "get": { "summary": "The queue by state, kind and account; the oldest runnable job; what runs", "responses": answers(&queue, &[401, 503]) } },
            "/ops/v1/deals/{account}/{lead}/history": { "get": {
                "summary": "A deal's payment history from the event log",
                "parameters": [
                    path_id("account", "string", None),
                    path_id("lead", "integer", Some("int64")),
                    { "name": "format", "in": "query", "required": false, "schema": { "enum": ["json", "csv"] } }
                ],
                "responses": history_answers
            } }
        },
        "components": {
            "schemas": components,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } }
        }
    })
}

/// A filter type's fields as optional query parameters.
fn query_parameters<T: JsonSchema>(generator: &mut SchemaGenerator) -> Value {
    let schema = serde_json::to_value(generator.root_schema_for::<T>()).expect("a schema serialises");
    let properties = schema.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
    Value::Array(
        properties
            .into_iter()
            .map(|(name, mut property)| {
                let description = property.as_object_mut().and_then(|p| p.remove("description"));
                // Optional in the type means "may be absent" here: a query has no null.
                if let Some(Value::Array(types)) = property.get_mut("type") {
                    types.retain(|t| t != "null");
                    if types.len() == 1 {
                        property["type"] = types[0].clone();
                    }
                }
                let mut parameter = json!({ "name": name, "in": "query", "required": false, "schema": property });
                if let Some(description) = description {
                    parameter["description"] = description;
                }
                parameter
            })
            .collect(),
    )
}
