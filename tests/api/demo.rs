//! The quick start as a newcomer runs it: the example configuration (`deploy/local/kommo-pay.toml`
//! with `deploy/local/example.env`) pointed at the fakes, the real ingest and worker, and the demo
//! that `deploy/local/demo.sh` plays. Its deals must end paid, refunded, failed and dead-lettered
//! as the README says, and the console must show them.

use std::collections::HashMap;
use std::time::Duration;

use kommo_pay_core::config::Config;
use kommo_pay_worker::{Context, Worker, handlers};

use crate::fakes::demo::{DEALS, Demo};
use crate::fakes::kommo::FakeKommo;
use crate::fakes::lemonsqueezy::FakeLemonSqueezy;
use crate::fakes::stripe::FakeStripe;
use crate::helpers::*;

#[tokio::test]
async fn the_quick_start_demo_pays_deals_and_leaves_one_dead_letter_to_replay() {
    let (kommo, stripe, lemonsqueezy) = (FakeKommo::start().await, FakeStripe::start().await, FakeLemonSqueezy::start().await);
    let db = TestDb::new().await;
    let text = include_str!("../../deploy/local/kommo-pay.toml")
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("http://127.0.0.1:8181", &kommo.url)
        .replace("http://127.0.0.1:8182", &stripe.url)
        .replace("http://127.0.0.1:8183", &lemonsqueezy.url);
    assert!(!text.contains("\"http://127.0.0.1:818"), "every sandbox URL of the example configuration is replaced");
    let mut env: HashMap<String, String> = include_str!("../../deploy/local/example.env")
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    env.insert("DATABASE_URL".into(), db.url.clone());
    let config = Config::parse(&text, "deploy/local/kommo-pay.toml", &|name| env.get(name).cloned()).expect("the example configuration is valid");
    let worker = Worker::new(db.pool.clone(), handlers(Context::new(db.pool.clone(), &config.accounts)), config.worker.clone(), config.jobs.clone());
    tokio::spawn(worker.run(std::future::pending()));
    let app = spawn_app_from(db, &config).await;

    let demo = Demo {
        kommo,
        stripe,
        http: reqwest::Client::new(),
        ingest: app.address.clone(),
        kommo_secret: env["ACME_KOMMO_WEBHOOK_SECRET"].clone(),
        stripe_secret: env["ACME_STRIPE_WEBHOOK_SECRET"].clone(),
    };
    demo.play(1, &|_| {}).await.expect("the demo plays to its end");

    let db = &app.db;
    eventually(Duration::from_secs(30), "five paid deals, one half refunded, one failed charge, one dead letter", || async {
        db.count("SELECT count(*) FROM payments").await == 5
            && db.count("SELECT count(*) FROM payments WHERE refunded_minor * 2 = amount_minor").await == 1
            && db.count("SELECT count(*) FROM dunning").await == 1
            && db.count("SELECT count(*) FROM jobs WHERE state = 'dead' AND kind = 'payment_link.issue'").await == 1
    })
    .await;
    assert_eq!(db.count("SELECT count(*) FROM payment_links").await, DEALS.len() as i64 - 1, "every deal but the failing one got its link");

    let session = crate::console::sign_in(&app, &env["KOMMO_PAY_OPS_TOKEN"]).await;
    let overview = session.get("/console").await.body;
    assert!(overview.contains("payment_link.issue") && overview.contains("Stripe POST v1/payment_links"), "the dead letter is on the overview");
    let paid = session.get(&format!("/console/deals/acme/{}", 101)).await.body;
    assert!(paid.contains("2,000.00 USD") && paid.contains("paid"), "the first deal was paid 2,000.00 USD:\n{paid}");
}
