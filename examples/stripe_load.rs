//! Load generator for the ingest benchmark (`benches/ingest.sh`): sends correctly signed Stripe
//! webhooks, each with a new event id, and prints throughput and latency.
//!
//!   stripe_load URL SECRET closed CONCURRENCY SECONDS   as fast as CONCURRENCY clients can go
//!   stripe_load URL SECRET rate   PER_SECOND  SECONDS   a fixed arrival rate (open loop)
//!   stripe_load --print-event                           one event body, for pgbench's script
//!
//! In `rate` mode latency counts from each request's scheduled time, so a stalled server is not
//! hidden by the generator waiting for it (no coordinated omission). Output: one line,
//! `events_per_sec=… p50_ms=… p99_ms=… max_ms=… errors=…`. Every request goes to a loopback URL
//! of the caller's choosing and the run stops by itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kommo_pay_core::stripe::webhook::signature_header;
use tokio::sync::Mutex;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The benchmark's pgbench script stores a payload of the same size as the events sent.
    if args.get(1).map(String::as_str) == Some("--print-event") {
        println!("{}", event("evt_pgbench"));
        return;
    }
    let [_, url, secret, mode, amount, seconds] = args.as_slice() else {
        eprintln!("usage: stripe_load URL SECRET closed|rate CONCURRENCY|PER_SECOND SECONDS");
        std::process::exit(2);
    };
    let amount: u64 = amount.parse().expect("a number");
    let duration = Duration::from_secs(seconds.parse().expect("seconds"));
    let client = reqwest::Client::builder().pool_max_idle_per_host(1024).build().unwrap();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let template = event("EVENT_ID");
    let load = Arc::new(Load { client, url: url.clone(), secret: secret.clone(), run, template, latencies: Mutex::new(Vec::new()), errors: Default::default() });

    let started = Instant::now();
    match mode.as_str() {
        "closed" => closed_loop(&load, amount as usize, duration).await,
        "rate" => open_loop(&load, amount, duration).await,
        other => panic!("unknown mode {other}"),
    }
    let elapsed = started.elapsed().as_secs_f64();

    let mut latencies = load.latencies.lock().await.clone();
    latencies.sort_unstable();
    let pct = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).copied().unwrap_or(0);
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "events_per_sec={:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} requests={} errors={}",
        latencies.len() as f64 / elapsed,
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(latencies.last().copied().unwrap_or(0)),
        latencies.len(),
        load.errors.load(std::sync::atomic::Ordering::Relaxed),
    );
}

struct Load {
    client: reqwest::Client,
    url: String,
    secret: String,
    run: String,
    /// The event body with `EVENT_ID` where each request's id goes.
    template: String,
    /// Latency of each successful request, in microseconds.
    latencies: Mutex<Vec<u64>>,
    errors: std::sync::atomic::AtomicU64,
}

impl Load {
    /// Sends event number `n`; records its latency counted from `since`.
    async fn send(&self, n: u64, since: Instant) {
        let body = self.template.replace("EVENT_ID", &format!("evt_bench_{}_{n}", self.run));
        let signature = signature_header(&self.secret, chrono::Utc::now().timestamp(), body.as_bytes());
        let ok = match self.client.post(&self.url).header("Stripe-Signature", signature).body(body).send().await {
            // Read to the end, so that the connection goes back to the pool for the next request.
            Ok(response) => response.status() == 200 && response.bytes().await.is_ok(),
            Err(_) => false,
        };
        if ok {
            self.latencies.lock().await.push(since.elapsed().as_micros() as u64);
        } else {
            self.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

async fn closed_loop(load: &Arc<Load>, concurrency: usize, duration: Duration) {
    let deadline = Instant::now() + duration;
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let clients: Vec<_> = (0..concurrency)
        .map(|_| {
            let (load, counter) = (load.clone(), counter.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    load.send(n, Instant::now()).await;
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
}

async fn open_loop(load: &Arc<Load>, per_second: u64, duration: Duration) {
    let total = per_second * duration.as_secs();
    let interval = Duration::from_secs_f64(1.0 / per_second as f64);
    let start = Instant::now();
    let mut requests = Vec::with_capacity(total as usize);
    for n in 0..total {
        let scheduled = start + interval * n as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let load = load.clone();
        requests.push(tokio::spawn(async move { load.send(n, scheduled).await }));
    }
    for request in requests {
        request.await.unwrap();
    }
}

/// A `checkout.session.completed` event of realistic size (about 1.5 KB).
fn event(id: &str) -> String {
    serde_json::json!({
        "id": id, "object": "event", "api_version": "2025-07-30.basil", "created": 1764160000,
        "livemode": false, "pending_webhooks": 1, "request": { "id": null, "idempotency_key": null },
        "type": "checkout.session.completed",
        "data": { "object": {
            "id": "cs_test_a1B2c3D4e5F6g7H8i9J0", "object": "checkout.session", "amount_subtotal": 200000,
            "amount_total": 200000, "currency": "usd", "customer": null, "customer_creation": "if_required",
            "customer_details": { "email": "client@example.com", "name": "Jane Client", "phone": null,
                "address": { "city": "Berlin", "country": "DE", "line1": "Street 1", "line2": null, "postal_code": "10115", "state": null },
                "tax_exempt": "none", "tax_ids": [] },
            "livemode": false, "mode": "payment", "payment_intent": "pi_3QxYz0AbCdEfGh1I0JkLmNoP",
            "payment_link": "plink_1QxYz0AbCdEfGh1IjKlMnOpQ", "payment_method_types": ["card"],
            "payment_status": "paid", "status": "complete", "success_url": null, "url": null,
            "metadata": { "kommo_account_id": "32427762", "kommo_lead_id": "15318175", "kommo_contact_id": "9012345" },
            "created": 1764159900, "expires_at": 1764246300
        }}
    })
    .to_string()
}
