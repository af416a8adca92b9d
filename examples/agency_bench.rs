//! Agency-scale benchmark (`benches/agency.sh`): one `kommo-pay serve` (the release binary, with
//! the default worker settings) and several client accounts, each with a fake Kommo of its own
//! that enforces Kommo's 7 requests a second (429 above it) and answers after 150 ms, and one
//! fake Stripe whose link creations take 250 ms.
//!
//!   agency_bench DATABASE_URL BINARY burst [DEALS]       account A moves DEALS (1,000) into its
//!                                                        trigger stage at once; account B moves
//!                                                        one deal a second meanwhile
//!   agency_bench DATABASE_URL BINARY accounts [N] [DEALS] N accounts (20) move DEALS (50) each at once
//!
//! Prints, per account, the makespan (first webhook → the last link on a card), its Kommo
//! requests by kind, its floor, and the most requests in any one second; for B, its latencies.

#[allow(dead_code)]
#[path = "../tests/api/fakes/mod.rs"]
mod fakes;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use fakes::kommo::FakeKommo;
use fakes::stripe::FakeStripe;
use serde_json::json;

use fakes::accounts::{PIPELINE, TRIGGER_STAGE as STAGE};
const LINK_FIELD: i64 = 901;
const SECRET: &str = "bench-kommo-secret-0123456789abcdef";
/// The configured rate (the default) and what each fake Kommo enforces.
const RATE: f64 = 5.0;
const KOMMO_LIMIT: usize = 7;
const KOMMO_DELAY: Duration = Duration::from_millis(150);
const STRIPE_DELAY: Duration = Duration::from_millis(250);

struct Account {
    slug: String,
    /// Its Kommo account id (`account[id]` in its hooks).
    id: i64,
    kommo: FakeKommo,
    /// The deals it moves, and when each one's webhook was sent.
    sent: HashMap<i64, Instant>,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: agency_bench DATABASE_URL BINARY burst [DEALS] | DATABASE_URL BINARY accounts [N] [DEALS]";
    let (Some(url), Some(binary), Some(scenario)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let number = |i: usize, default: i64| args.get(i).map_or(default, |v| v.parse().expect("a number"));
    let (accounts, deals_each) = match scenario.as_str() {
        "burst" => (2, number(4, 1000)),
        "accounts" => (number(4, 20), number(5, 50)),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };

    let stripe = FakeStripe::start().await;
    stripe.delay_creates(Some(STRIPE_DELAY));
    let mut all = Vec::new();
    for n in 0..accounts {
        let kommo = FakeKommo::start().await;
        kommo.delay(KOMMO_DELAY);
        kommo.limit_rate(KOMMO_LIMIT);
        all.push(Account { slug: format!("client-{n}"), id: 1 + n, kommo, sent: HashMap::new() });
    }
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = config(listen, &all, &stripe.url);
    let file = std::env::temp_dir().join(format!("kommo-pay-agency-bench-{}.toml", std::process::id()));
    std::fs::write(&file, config).unwrap();
    let mut serve = std::process::Command::new(binary)
        .args(["--config", file.to_str().unwrap(), "serve"])
        .env("DATABASE_URL", url)
        .env("KOMMO_SECRET", SECRET)
        .env("KOMMO_TOKEN", fakes::kommo::TOKEN)
        .env("STRIPE_KEY", fakes::stripe::SECRET_KEY)
        .env("STRIPE_WHSEC", "whsec_bench")
        .spawn()
        .expect("the kommo-pay binary starts");
    let client = reqwest::Client::new();
    let base = format!("http://{listen}");
    let ready = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/readyz")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(Instant::now() < ready, "kommo-pay serve did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let started = Instant::now();
    let result = match scenario.as_str() {
        "burst" => burst(&client, &base, &stripe, &mut all, deals_each).await,
        _ => at_once(&client, &base, &stripe, &mut all, deals_each).await,
    };
    let _ = serve.kill();
    let _ = serve.wait();
    let _ = std::fs::remove_file(&file);
    result.unwrap_or_else(|problem| panic!("after {:?}: {problem}", started.elapsed()));
}

/// Account A (the first) moves `deals` at once; account B (the second) one deal a second until
/// A's last link is on its card.
async fn burst(client: &reqwest::Client, base: &str, stripe: &FakeStripe, all: &mut [Account], deals: i64) -> Result<(), String> {
    let (a, b) = all.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    add_deals(a, 0, deals);
    let first = Instant::now();
    move_into_stage(client, base, a, &a.sent.keys().copied().collect::<Vec<_>>()).await;
    let mut b_moved = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    let a_links = loop {
        let links = links(a);
        if links.len() == a.sent.len() {
            break links;
        }
        if Instant::now() > deadline {
            return Err(format!("A has {} of {deals} links", links.len()));
        }
        if first.elapsed() >= Duration::from_secs(b_moved) {
            let lead = 1_000_000 + b_moved as i64;
            add_deals_from(b, lead, 1);
            move_into_stage(client, base, b, &[lead]).await;
            b_moved += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // B's last deals finish after A's.
    let b_links = loop {
        let links = links(b);
        if links.len() == b.sent.len() || Instant::now() > deadline {
            break links;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    report(a, stripe, first, &a_links);
    let mut latencies: Vec<Duration> = b_links.iter().map(|(lead, at)| at.duration_since(b.sent[lead])).collect();
    latencies.sort();
    let ms = |d: Duration| d.as_millis();
    let pct = |p: f64| latencies.get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1)).copied().unwrap_or_default();
    println!(
        "B: {} of {} deals linked, latency p50 {} ms, p99 {} ms, max {} ms; 429s {}, most requests in one second {}",
        latencies.len(),
        b.sent.len(),
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
        b.kommo.too_many(),
        most_in_a_second(&b.kommo)
    );
    Ok(())
}

/// Every account moves `deals` at once.
async fn at_once(client: &reqwest::Client, base: &str, stripe: &FakeStripe, all: &mut [Account], deals: i64) -> Result<(), String> {
    for (n, account) in all.iter_mut().enumerate() {
        add_deals(account, n as i64 * 100_000, deals);
    }
    let first = Instant::now();
    let moves = all.iter_mut().map(|account| {
        let leads: Vec<i64> = account.sent.keys().copied().collect();
        async move { move_into_stage(client, base, account, &leads).await }
    });
    // The webhooks go out together; each account's send times are its first webhook's.
    futures_util::future::join_all(moves).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = all.iter().filter(|account| links(account).len() == account.sent.len()).count();
        if done == all.len() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{done} of {} accounts have all their links", all.len()));
        }
        // Each link's time is its PATCH's arrival at the fake, so polling seldom loses no
        // precision; polling often would spend the cores the service is measured on (every
        // look copies each fake's recorded requests).
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut worst: f64 = 0.0;
    for account in all.iter() {
        worst = worst.max(report(account, stripe, first, &links(account)));
    }
    println!("slowest account: {worst:.2} × its floor");
    Ok(())
}

/// Prints the account's row; returns its makespan / floor.
fn report(account: &Account, stripe: &FakeStripe, first: Instant, links: &HashMap<i64, Instant>) -> f64 {
    let deals = account.sent.len();
    let makespan = links.values().max().map(|last| last.duration_since(first)).unwrap_or_default();
    let requests = account.kommo.requests();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for request in &requests {
        let path = request.path.split('?').next().unwrap_or_default();
        let path: String =
            path.split('/').map(|s| if s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty() { ":id" } else { s }).collect::<Vec<_>>().join("/");
        *kinds.entry(format!("{} {path}", request.method)).or_default() += 1;
    }
    // The fewest requests that do the work: reads of 250, writes of 50 (the link's PATCH and its
    // note), at the configured rate; plus one read → create → write chain.
    let fewest = deals.div_ceil(250) + 2 * deals.div_ceil(50);
    let chain = KOMMO_DELAY + STRIPE_DELAY + KOMMO_DELAY;
    let floor = fewest as f64 / RATE + chain.as_secs_f64();
    let ratio = makespan.as_secs_f64() / floor;
    let creations: Vec<Instant> = stripe
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/payment_links" && r.params["metadata"]["kommo_pay_account"] == account.slug.as_str())
        .map(|r| r.at)
        .collect();
    println!(
        "{}: {deals} deals, makespan {:.2} s, floor {:.2} s ({fewest} requests / {RATE}/s + {} ms), ratio {ratio:.2}; Kommo requests {} {:?}; 429s {}, most requests in one second {}; most Stripe link creations in one second {}",
        account.slug,
        makespan.as_secs_f64(),
        floor,
        chain.as_millis(),
        requests.len(),
        kinds,
        account.kommo.too_many(),
        most_in_a_second(&account.kommo),
        most_arrivals_in_a_second(creations)
    );
    ratio
}

fn add_deals(account: &mut Account, offset: i64, deals: i64) {
    add_deals_from(account, 20_000_000 + offset, deals);
}

fn add_deals_from(account: &mut Account, first: i64, deals: i64) {
    for lead in first..first + deals {
        account.kommo.add_lead(json!({ "id": lead, "name": format!("Deal {lead}"), "price": 2000, "pipeline_id": PIPELINE, "status_id": STAGE }));
        account.sent.insert(lead, Instant::now());
    }
}

/// Kommo's hook for a move of `leads` into the trigger stage, in bodies of 50 as Kommo sends a
/// bulk move; each lead's send time is its body's.
async fn move_into_stage(client: &reqwest::Client, base: &str, account: &mut Account, leads: &[i64]) {
    for chunk in leads.chunks(50) {
        let mut body = form_urlencoded::Serializer::new(String::new());
        body.append_pair("account[id]", &account.id.to_string());
        for (i, lead) in chunk.iter().enumerate() {
            body.append_pair(&format!("leads[status][{i}][id]"), &lead.to_string());
            body.append_pair(&format!("leads[status][{i}][status_id]"), &STAGE.to_string());
            body.append_pair(&format!("leads[status][{i}][pipeline_id]"), &PIPELINE.to_string());
        }
        let sent = Instant::now();
        account.sent.extend(chunk.iter().map(|lead| (*lead, sent)));
        let status = client
            .post(format!("{base}/webhooks/kommo/{}/{SECRET}", account.slug))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body.finish())
            .send()
            .await
            .expect("ingest answers")
            .status();
        assert_eq!(status, 200, "ingest took the hook");
    }
}

/// When each deal's link reached its card (the first PATCH that wrote the link field).
fn links(account: &Account) -> HashMap<i64, Instant> {
    let mut found = HashMap::new();
    for request in account.kommo.requests().iter().filter(|r| r.method == axum::http::Method::PATCH) {
        for update in request.body.as_array().into_iter().flatten() {
            let writes_link = update["custom_fields_values"].as_array().is_some_and(|fields| fields.iter().any(|f| f["field_id"] == LINK_FIELD));
            if let Some(lead) = update["id"].as_i64().filter(|_| writes_link) {
                found.entry(lead).or_insert(request.at);
            }
        }
    }
    found
}

/// The most requests that reached the fake Kommo in any one second.
fn most_in_a_second(kommo: &FakeKommo) -> usize {
    most_arrivals_in_a_second(kommo.requests().iter().map(|r| r.at).collect())
}

/// The most of `arrivals` (requests reaching a fake) in any one second.
fn most_arrivals_in_a_second(mut arrivals: Vec<Instant>) -> usize {
    arrivals.sort();
    (0..arrivals.len()).map(|i| arrivals[i..].iter().take_while(|at| at.duration_since(arrivals[i]) < Duration::from_secs(1)).count()).max().unwrap_or(0)
}

/// One account per fake Kommo, each with its Stripe trigger and a note on the link; default
/// worker settings and Kommo rate; Stripe at its live-mode rate.
fn config(listen: std::net::SocketAddr, all: &[Account], stripe_url: &str) -> String {
    let mut text = format!("[server]\nlisten = \"{listen}\"\n[log]\nfilter = \"warn\"\n");
    for account in all {
        text.push_str(
            &fakes::accounts::AccountToml::standard(&account.slug, account.id, &account.kommo.url, stripe_url)
                .stripe_key("requests_per_second = 100")
                .to_string(),
        );
    }
    text
}
