//! The sandbox: local stand-ins for Kommo, Stripe and Lemon Squeezy, so that the quick start shows
//! kommo-pay working without real accounts. They are the test suite's fakes (`tests/api/fakes`),
//! speaking the providers' wire formats and limits, on fixed loopback ports that the example
//! configuration (`deploy/local/kommo-pay.toml`) points at:
//!
//! | port | stands in for |
//! |---|---|
//! | 8181 | Kommo (`base_url`) |
//! | 8182 | Stripe (`api_base_url`) |
//! | 8183 | Lemon Squeezy (`api_base_url`) |
//! | 8180 | this sandbox's control: `POST /demo` plays the demo, `GET /demo` tells how far it is |
//!
//! `deploy/local/demo.sh` plays the demo (`tests/api/fakes/demo.rs`, which `tests/api/demo.rs`
//! checks) against ingest (`KOMMO_PAY_SANDBOX_INGEST`, default `http://127.0.0.1:8080`), signed
//! with the secrets of `deploy/local/example.env`.
//!
//! Run by `deploy/local/run.sh` for the example configuration only; kommo-pay itself never starts
//! it.

#[allow(dead_code)]
#[path = "../tests/api/fakes/mod.rs"]
mod fakes;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use fakes::demo::Demo;
use fakes::kommo::FakeKommo;
use fakes::lemonsqueezy::FakeLemonSqueezy;
use fakes::stripe::FakeStripe;
use serde_json::json;

struct Sandbox {
    demo: Demo,
    /// What the demo has done so far, one line each; "done" last.
    progress: Mutex<Vec<String>>,
    /// The last play: each play's deals get ids of their own.
    plays: Mutex<i64>,
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() {
    let kommo = FakeKommo::start_on("127.0.0.1:8181").await;
    let stripe = FakeStripe::start_on("127.0.0.1:8182").await;
    let lemonsqueezy = FakeLemonSqueezy::start_on("127.0.0.1:8183").await;
    // The hook Kommo would have for kommo-pay, enabled (the overview's health row reads it).
    eprintln!("sandbox: Kommo on {}, Stripe on {}, Lemon Squeezy on {}", kommo.url, stripe.url, lemonsqueezy.url);
    kommo.set_webhooks(vec![json!({ "id": 1, "destination": "http://127.0.0.1:8080/webhooks/kommo/acme/…", "disabled": false, "settings": ["status_lead"] })]);
    let demo = Demo {
        kommo,
        stripe,
        http: reqwest::Client::new(),
        ingest: env("KOMMO_PAY_SANDBOX_INGEST", "http://127.0.0.1:8080"),
        kommo_secret: env("ACME_KOMMO_WEBHOOK_SECRET", "local-demo-kommo-url-secret-0123456789"),
        stripe_secret: env("ACME_STRIPE_WEBHOOK_SECRET", "whsec_local_demo"),
    };
    let sandbox = Arc::new(Sandbox {
        demo,
        progress: Mutex::new(Vec::new()),
        // Deal ids of their own even across restarts of the sandbox over the same database.
        plays: Mutex::new(chrono::Utc::now().timestamp() % 100_000),
    });
    let control = Router::new().route("/demo", get(progress).post(play)).with_state(sandbox);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8180").await.expect("the sandbox's control port 8180 is free");
    eprintln!("sandbox: POST http://127.0.0.1:8180/demo plays the demo (deploy/local/demo.sh)");
    axum::serve(listener, control).await.expect("the sandbox serves");
}

async fn progress(State(sandbox): State<Arc<Sandbox>>) -> String {
    sandbox.progress.lock().unwrap().join("\n")
}

async fn play(State(sandbox): State<Arc<Sandbox>>) -> (axum::http::StatusCode, String) {
    let play = {
        let mut plays = sandbox.plays.lock().unwrap();
        *plays += 1;
        *plays
    };
    sandbox.progress.lock().unwrap().clear();
    tokio::spawn(async move {
        if let Err(error) = sandbox.demo.play(play, &|line| sandbox.say(line)).await {
            sandbox.say(&format!("stopped: {error}"));
        }
        sandbox.say("done");
    });
    (axum::http::StatusCode::ACCEPTED, "playing the demo: GET /demo for its progress\n".into())
}

impl Sandbox {
    fn say(&self, line: &str) {
        eprintln!("sandbox: {line}");
        self.progress.lock().unwrap().push(line.to_owned());
    }
}
