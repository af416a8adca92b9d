//! Console benchmark (`benches/console.sh`): how fast every console page answers over a large
//! database — EVENTS events over 30 days across 20 accounts, a completed job for every other
//! event of the last 7 days (housekeeping prunes older ones: `finished_job_retention_days`), and
//! DEAD dead letters — signed in, one request at a time.
//!
//!   console_bench DATABASE_URL [EVENTS] [DEAD] [SAMPLES]     (defaults 1000000 10000 50)
//!
//! Prints one row per page: p50, p95 and the slowest answer, in milliseconds, beside the floor
//! (the stylesheet: HTTP and the session check without a query of the page's own).

#[allow(dead_code)]
#[path = "../tests/api/fakes/mod.rs"]
mod fakes;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kommo_pay_core::config::Config;

const ACCOUNTS: usize = 20;
const TOKEN: &str = "bench-ops-token-0123456789abcdef0123456789";

fn config(url: &str) -> Config {
    let accounts: String = (1..=ACCOUNTS)
        .map(|n| fakes::accounts::AccountToml::new(&format!("agency-{n:02}"), 1_000_000 + n as i64, &format!("https://client{n}.kommo.com")).to_string())
        .collect();
    let text = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [database]
        url = "{url}"
        max_connections = 8
        [ops]
        tokens = [{{ name = "bench", token_env = "TOKEN" }}]
        {accounts}
        "#
    );
    let env: HashMap<&str, &str> =
        [("KOMMO_SECRET", "bench-secret-0123456789abcdef0123456789"), ("KOMMO_TOKEN", "bench-kommo-token"), ("TOKEN", TOKEN), ("DATABASE_URL", url)].into();
    Config::parse(&text, "console bench", &|name| env.get(name).map(|v| v.to_string())).expect("the bench's configuration is valid")
}

async fn generate(pool: &sqlx::PgPool, events: i64, dead: i64) {
    let started = Instant::now();
    // Kinds as they arrive, by source; leads get about twenty events each.
    sqlx::query(
        "INSERT INTO events (id, account, source, kind, dedup_key, lead_id, received_at, payload, headers)
         SELECT gen_random_uuid(), 'agency-' || lpad((i % 20 + 1)::text, 2, '0'),
                (ARRAY['kommo', 'stripe', 'stripe', 'lemonsqueezy', 'internal'])[i % 5 + 1],
                (ARRAY['leads.status', 'checkout.session.completed', 'invoice.paid', 'order_created', 'payment_link.issued'])[i % 5 + 1],
                'bench-' || i, 100000 + i % ($1 / 20), now() - (i * interval '30 days') / $1,
                jsonb_build_object('data', jsonb_build_object('object', jsonb_build_object('id', 'obj_' || i, 'amount_total', 4990, 'currency', 'usd',
                    'metadata', jsonb_build_object('kommo_lead_id', (100000 + i % ($1 / 20))::text)))),
                '{\"content-type\": \"application/json\"}'
         FROM generate_series(1, $1) AS i",
    )
    .bind(events)
    .execute(pool)
    .await
    .expect("events generated");
    sqlx::query(
        "INSERT INTO jobs (kind, account, lead_id, event_id, state, attempt, max_attempts, created_at, finished_at)
         SELECT 'stripe.payment', account, lead_id, id, 'completed', 1, 10, received_at, received_at + interval '1 second'
         FROM events WHERE seq % 2 = 0 AND received_at > now() - interval '7 days'",
    )
    .execute(pool)
    .await
    .expect("completed jobs generated");
    sqlx::query(
        "INSERT INTO jobs (kind, account, lead_id, event_id, state, attempt, max_attempts, created_at, finished_at, errors)
         SELECT (ARRAY['payment_link.issue', 'stripe.payment', 'stripe.invoice', 'lemonsqueezy.order'])[seq % 4 + 1], account, lead_id, id,
                'dead', 10, 10, received_at, received_at + interval '1 hour',
                jsonb_build_array(jsonb_build_object('at', received_at, 'attempt', 10, 'error',
                    (ARRAY['Kommo answered 400: status_id: not found', 'Stripe POST v1/payment_links: 500', 'Kommo answered 504', 'timed out'])[seq % 4 + 1]))
         FROM events WHERE seq % 2 = 1 ORDER BY seq DESC LIMIT $1",
    )
    .bind(dead)
    .execute(pool)
    .await
    .expect("dead letters generated");
    // As autovacuum leaves a live database; measuring while it catches up would measure it.
    sqlx::query("VACUUM ANALYZE").execute(pool).await.expect("vacuumed");
    eprintln!("console_bench: generated {events} events and {dead} dead letters in {:.0} s", started.elapsed().as_secs_f64());
}

struct Signed {
    http: reqwest::Client,
    base: String,
    cookie: String,
    csrf: String,
}

fn hidden_csrf(page: &str) -> String {
    let marker = r#"name="csrf" value=""#;
    let at = page.find(marker).expect("a CSRF field") + marker.len();
    page[at..].split('"').next().unwrap().to_owned()
}

async fn sign_in(base: &str) -> Signed {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let page = http.get(format!("{base}/console/sign-in")).send().await.unwrap();
    let form_cookie = page.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let csrf = hidden_csrf(&page.text().await.unwrap());
    let body = form_urlencoded::Serializer::new(String::new()).extend_pairs([("token", TOKEN), ("csrf", &csrf)]).finish();
    let signed = http
        .post(format!("{base}/console/sign-in"))
        .header("Cookie", form_cookie)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let cookie = signed.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let overview = http.get(format!("{base}/console")).header("Cookie", &cookie).send().await.unwrap().text().await.unwrap();
    Signed { http, base: base.to_owned(), csrf: hidden_csrf(&overview), cookie }
}

impl Signed {
    /// One request; panics unless it is answered `expected`.
    async fn time(&self, method: &str, path: &str, form: &[(&str, &str)], expected: u16) -> Duration {
        let started = Instant::now();
        let request = match method {
            "POST" => {
                let mut fields = form.to_vec();
                fields.push(("csrf", &self.csrf));
                let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
                self.http.post(format!("{}{path}", self.base)).header("Content-Type", "application/x-www-form-urlencoded").body(body)
            }
            _ => self.http.get(format!("{}{path}", self.base)),
        };
        let answer = request.header("Cookie", &self.cookie).send().await.unwrap();
        let status = answer.status().as_u16();
        let _ = answer.bytes().await.unwrap();
        assert_eq!(status, expected, "{method} {path}");
        started.elapsed()
    }
}

/// A request to time: method, path, form fields (for a POST), the status it must get.
type Page = (&'static str, String, Vec<(&'static str, &'static str)>, u16);

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).expect("usage: console_bench DATABASE_URL [EVENTS] [DEAD] [SAMPLES]");
    let events: i64 = args.get(2).map_or(1_000_000, |n| n.parse().expect("EVENTS"));
    let dead: i64 = args.get(3).map_or(10_000, |n| n.parse().expect("DEAD"));
    let samples: usize = args.get(4).map_or(50, |n| n.parse().expect("SAMPLES"));
    let config = config(url);
    let pool = kommo_pay_core::db::connect(&config.database).await.expect("database");
    kommo_pay_core::db::migrate(&pool).await.expect("migrated");
    generate(&pool, events, dead).await;

    let app = kommo_pay_ingest::Application::build(&config, pool.clone()).await.expect("ingest builds");
    let base = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let signed = sign_in(&base).await;

    let (event, lead): (uuid::Uuid, i64) =
        sqlx::query_as("SELECT id, lead_id FROM events WHERE account = 'agency-07' ORDER BY seq DESC LIMIT 1").fetch_one(&pool).await.unwrap();
    let job: i64 = sqlx::query_scalar("SELECT max(id) FROM jobs WHERE state = 'dead'").fetch_one(&pool).await.unwrap();
    let pages: Vec<Page> = vec![
        ("GET", "/console/style.css".into(), vec![], 200),
        ("GET", "/console".into(), vec![], 200),
        ("GET", "/console/deals?url=https%3A%2F%2Fclient7.kommo.com%2Fleads%2Fdetail%2F1".into(), vec![], 303),
        ("GET", format!("/console/deals/agency-07/{lead}"), vec![], 200),
        ("GET", format!("/console/deals/agency-07/{lead}/history.csv"), vec![], 200),
        ("GET", "/console/events".into(), vec![], 200),
        ("GET", "/console/events?account=agency-07&source=stripe".into(), vec![], 200),
        ("GET", "/console/events?kind=invoice.paid&from=2026-01-01T00:00".into(), vec![], 200),
        ("GET", format!("/console/events?account=agency-07&lead={lead}"), vec![], 200),
        ("GET", format!("/console/events/{event}"), vec![], 200),
        ("GET", "/console/dead-letters".into(), vec![], 200),
        ("GET", "/console/dead-letters?account=agency-03&error=504".into(), vec![], 200),
        ("POST", "/console/dead-letters/replay".into(), vec![("scope", "matching"), ("kind", "stripe.payment")], 200),
        ("GET", format!("/console/jobs/{job}"), vec![], 200),
    ];
    println!("| page | p50 ms | p95 ms | slowest ms |");
    println!("|---|---:|---:|---:|");
    for (method, path, form, expected) in &pages {
        for _ in 0..3 {
            signed.time(method, path, form, *expected).await;
        }
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            times.push(signed.time(method, path, form, *expected).await);
        }
        times.sort();
        let shown = if *method == "POST" { format!("POST {path} (a dry run's count)") } else { path.clone() };
        println!("| `{shown}` | {:.1} | {:.1} | {:.1} |", percentile(&times, 0.5), percentile(&times, 0.95), percentile(&times, 1.0));
    }
}
