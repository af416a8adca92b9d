//! OpenTelemetry: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, one trace runs from the webhook's
//! request through the job its event implied to the job's calls to the providers, exported over
//! OTLP/HTTP (here to a fake collector that decodes what it receives).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::json;

use crate::fakes::kommo::FakeKommo;
use crate::fakes::stripe::FakeStripe;
use crate::helpers::*;

#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

async fn collector() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let received = spans.clone();
    let router = Router::new().route(
        "/v1/traces",
        post(async move |body: Bytes| {
            let request = ExportTraceServiceRequest::decode(body).expect("an OTLP/protobuf export");
            let mut spans = received.lock().unwrap();
            for resource in request.resource_spans {
                for scope in resource.scope_spans {
                    spans.extend(scope.spans.into_iter().map(|s| Span {
                        name: s.name,
                        trace_id: s.trace_id,
                        span_id: s.span_id,
                        parent_span_id: s.parent_span_id,
                    }));
                }
            }
            ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
        }),
    );
    (crate::fakes::serve(router, "127.0.0.1:0").await, spans)
}

#[tokio::test]
async fn one_trace_runs_from_the_webhook_through_the_job_to_the_provider_calls() {
    let (collector_url, spans) = collector().await;
    let kommo = FakeKommo::start().await;
    let stripe = FakeStripe::start().await;
    kommo.add_lead(json!({
        "id": 15318175, "name": "Website redesign", "price": 2000, "pipeline_id": 8572511, "status_id": 67548619,
        "responsible_user_id": 504141, "custom_fields_values": null
    }));
    let db = TestDb::new().await;
    let sections = "[log]\nformat = \"json\"\nfilter = \"info\"\n[server]\nlisten = \"127.0.0.1:0\"\n[worker]\npoll_interval_ms = 100";
    let (path, mut env) = account_config_file(sections, &db.url, &kommo.url, &stripe.url);
    env.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), collector_url);
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_kommo-pay"))
            .args(["serve", "--config"])
            .arg(&path)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&env)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = loop {
        let line = lines.next().expect("kommo-pay exited before listening").unwrap();
        if let Ok(log) = serde_json::from_str::<serde_json::Value>(&line)
            && log["fields"]["message"] == "ingest listening"
        {
            break log["fields"]["address"].as_str().unwrap().to_owned();
        }
    };
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());

    let body = "account%5Bid%5D=32427762&leads%5Bstatus%5D%5B0%5D%5Bid%5D=15318175&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D=67548619&leads%5Bstatus%5D%5B0%5D%5Bpipeline_id%5D=8572511";
    let answer = reqwest::Client::new()
        .post(format!("http://{address}/webhooks/kommo/{ACCOUNT}/{KOMMO_SECRET}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    eventually(Duration::from_secs(30), "the job completes", || async { db.count("SELECT count(*) FROM jobs WHERE state = 'completed'").await == 1 }).await;
    let traceparent: String = sqlx::query_scalar("SELECT headers ->> 'traceparent' FROM events").fetch_one(&db.pool).await.unwrap();
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    // The last spans are sent on the way out, to the collector this runtime serves: wait without
    // blocking it.
    let child = Mutex::new(child);
    eventually(Duration::from_secs(30), "kommo-pay stops", || async { child.lock().unwrap().try_wait().unwrap().is_some() }).await;
    std::fs::remove_file(&path).ok();

    let logs = rest.join().unwrap();
    assert!(!logs.iter().any(|l| l.contains("BatchSpanProcessor")), "spans were exported: {logs:?}");
    let spans = spans.lock().unwrap().clone();
    let request = spans.iter().find(|s| s.name == "request").unwrap_or_else(|| panic!("no request span in {spans:?}"));
    assert_eq!(hex::encode(&request.trace_id), traceparent.split('-').nth(1).unwrap(), "the event keeps the request's trace");
    let job = spans.iter().find(|s| s.name == "job").unwrap_or_else(|| panic!("no job span in {spans:?}"));
    assert_eq!(job.trace_id, request.trace_id, "the job continues the webhook's trace");
    assert_eq!(job.parent_span_id, request.span_id, "as a child of the request");
    // The job's calls: provider-call spans under the job span (the scheduler's reconciliation
    // makes calls of its own, in traces of their own).
    let under_job = |span: &Span| {
        let mut parent = span.parent_span_id.clone();
        while let Some(up) = spans.iter().find(|s| s.span_id == parent) {
            if up.span_id == job.span_id {
                return true;
            }
            parent = up.parent_span_id.clone();
        }
        false
    };
    let calls: Vec<&Span> = spans.iter().filter(|s| s.name == "provider call" && under_job(s)).collect();
    assert!(calls.len() >= 3, "Kommo read, Stripe create, Kommo writes (batched ones too): {calls:?}");
    for call in calls {
        assert_eq!(call.trace_id, request.trace_id, "every outbound call is in the trace");
    }
}
