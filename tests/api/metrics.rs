//! Prometheus metrics: ingest's own, and a worker process's on a listener of its own.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn ingest_measures_its_latency_and_the_queue_by_state() {
    let app = spawn_app().await;
    let event =
        json!({ "id": "evt_m", "object": "event", "type": "checkout.session.completed", "created": now(), "livemode": false, "data": { "object": {} } });
    app.post_signed_stripe(&event.to_string()).await;

    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"kommo_pay_ingest_seconds_count{source="stripe",outcome="accepted"}"#), "{metrics}");
    assert!(metrics.contains(r#"kommo_pay_jobs{state="available"} 1"#), "{metrics}");
    assert!(metrics.contains("kommo_pay_dead_letters 0"), "{metrics}");
    assert!(metrics.contains("kommo_pay_oldest_runnable_job_seconds "), "{metrics}");
}

#[tokio::test]
async fn a_worker_process_serves_its_job_and_provider_metrics_where_configured() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sections = format!("[log]\nfilter = \"warn\"\n[worker]\npoll_interval_ms = 100\n[metrics]\npath = \"/prom\"\nlisten = \"127.0.0.1:{port}\"");
    let setup = ProcessSetup::deal_entered_stage(&sections).await;
    let app = &setup.app;

    let mut worker = setup.start("worker");
    eventually(Duration::from_secs(30), "the worker completes the job", || async {
        app.db.count("SELECT count(*) FROM jobs WHERE state = 'completed'").await == 1
    })
    .await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/prom")).await.unwrap().text().await.unwrap();
    worker.kill().unwrap();
    worker.wait().unwrap();

    for expected in [
        r#"kommo_pay_jobs_total{kind="payment_link.issue",outcome="completed"} 1"#,
        r#"kommo_pay_job_seconds_count{kind="payment_link.issue",outcome="completed"} 1"#,
        r#"kommo_pay_provider_requests_total{provider="stripe",endpoint="v1/payment_links",status="200"} 1"#,
        r#"kommo_pay_provider_requests_total{provider="kommo",endpoint="api/v4/leads",status="200"}"#,
        r#"kommo_pay_provider_request_seconds_count{provider="kommo",endpoint="api/v4/leads"}"#,
        r#"kommo_pay_jobs{state="completed"} 1"#,
    ] {
        assert!(metrics.contains(expected), "{expected} in\n{metrics}");
    }
}
