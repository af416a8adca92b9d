//! End-to-end latency benchmark (`benches/flow.sh`): from a Kommo webhook entering ingest to
//! the (fake, instant) Kommo API receiving the deal's payment link, through the event log, the
//! queue, the worker and the (fake, instant) Stripe API.
//!
//!   flow_latency DATABASE_URL DEALS PER_SECOND
//!
//! Deals enter the trigger stage at PER_SECOND, each timed from its webhook to the PATCH that
//! writes its link. Kommo's rate limit is set high enough that no request waits for a slot.
//! Prints `deals=… p50_ms=… p99_ms=… max_ms=…`.

// The test suite's fakes, used as they are; the benchmark needs only part of them.
#[allow(dead_code)]
#[path = "../tests/api/fakes/mod.rs"]
mod fakes;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kommo_pay_core::config::Config;
use serde_json::json;

use fakes::accounts::{PIPELINE, TRIGGER_STAGE as STAGE};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, deals, per_second] = args.as_slice() else {
        eprintln!("usage: flow_latency DATABASE_URL DEALS PER_SECOND");
        std::process::exit(2);
    };
    let deals: i64 = deals.parse().unwrap();
    let per_second: f64 = per_second.parse().unwrap();
    let kommo = fakes::kommo::FakeKommo::start().await;
    let stripe = fakes::stripe::FakeStripe::start().await;
    let sections = "[server]\nlisten = \"127.0.0.1:0\"\n[log]\nfilter = \"error\"";
    let account = fakes::accounts::AccountToml::standard("bench", 1, &kommo.url, &stripe.url).kommo("requests_per_second = 50").trigger_key("add_note = false");
    let text = format!("{sections}\n{account}");
    let secret = "bench-kommo-secret-0123456789abcdef";
    let env: HashMap<&str, String> = HashMap::from([
        ("DATABASE_URL", url.clone()),
        ("KOMMO_SECRET", secret.into()),
        ("KOMMO_TOKEN", fakes::kommo::TOKEN.into()),
        ("STRIPE_KEY", "sk_test_bench".into()),
        ("STRIPE_WHSEC", "whsec_bench".into()),
    ]);
    let config = Config::parse(&text, "bench", &|name| env.get(name).cloned()).unwrap();
    let pool = kommo_pay_core::db::connect(&config.database).await.unwrap();
    kommo_pay_core::db::migrate(&pool).await.unwrap();
    let app = kommo_pay_ingest::Application::build(&config, pool.clone()).await.unwrap();
    let address = app.local_addr();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let handlers = kommo_pay_worker::handlers(kommo_pay_worker::Context::new(pool.clone(), &config.accounts));
    let worker = kommo_pay_worker::Worker::new(pool.clone(), handlers, config.worker.clone(), config.jobs.clone());
    tokio::spawn(worker.run(std::future::pending()));

    let first_lead = 20_000_000 + (std::process::id() as i64 % 1000) * 10_000;
    for n in 0..deals {
        kommo.add_lead(json!({ "id": first_lead + n, "name": format!("Deal {n}"), "price": 2000, "pipeline_id": PIPELINE, "status_id": STAGE }));
    }
    let client = reqwest::Client::new();
    let webhook = format!("http://{address}/webhooks/kommo/bench/{secret}");
    let interval = Duration::from_secs_f64(1.0 / per_second);
    let start = Instant::now();
    let mut sent = HashMap::new();
    for n in 0..deals {
        tokio::time::sleep_until((start + interval * n as u32).into()).await;
        let lead = first_lead + n;
        let body = format!(
            "account%5Bid%5D=1&leads%5Bstatus%5D%5B0%5D%5Bid%5D={lead}&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D={STAGE}&leads%5Bstatus%5D%5B0%5D%5Bpipeline_id%5D={PIPELINE}"
        );
        sent.insert(lead, Instant::now());
        let status = client.post(&webhook).body(body).send().await.unwrap().status();
        assert_eq!(status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut latencies = loop {
        // Lead updates go out batched: every lead in a PATCH gets that request's arrival time.
        let patches: Vec<Duration> = kommo
            .requests()
            .iter()
            .filter(|r| r.method == axum::http::Method::PATCH)
            .flat_map(|r| r.body.as_array().cloned().unwrap_or_default().into_iter().map(move |update| (update, r.at)))
            .filter_map(|(update, at)| sent.get(&update["id"].as_i64()?).map(|sent| at.duration_since(*sent)))
            .collect();
        if patches.len() as i64 == deals {
            break patches;
        }
        assert!(Instant::now() < deadline, "only {} of {deals} links arrived", patches.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!("deals={deals} per_second={per_second} p50_ms={:.1} p99_ms={:.1} max_ms={:.1}", ms(pct(0.5)), ms(pct(0.99)), ms(*latencies.last().unwrap()));
}
