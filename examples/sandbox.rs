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
//! The demo (`deploy/local/demo.sh`) plays what managers and clients do: eight deals enter the
//! trigger stage and get their links, five are paid (one of them then half refunded), one
//! subscription charge fails, and one deal's link cannot be created because "Stripe" keeps
//! failing, so its job ends as a dead letter with a task for the manager. Webhooks go to ingest
//! (`KOMMO_PAY_SANDBOX_INGEST`, default `http://127.0.0.1:8080`) signed with the secrets of
//! `deploy/local/example.env`, exactly as the providers would send them.
//!
//! Run by `deploy/local/run.sh` for the example configuration only; kommo-pay itself never starts
//! it.

#[allow(dead_code)]
#[path = "../tests/api/fakes/mod.rs"]
mod fakes;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use fakes::kommo::FakeKommo;
use fakes::lemonsqueezy::FakeLemonSqueezy;
use fakes::stripe::FakeStripe;
use serde_json::{Value, json};

/// The example configuration's account.
const ACCOUNT: &str = "acme";
const KOMMO_ACCOUNT_ID: i64 = 32427762;
const PIPELINE: i64 = 8572511;
const NEW_STAGE: i64 = 67548618;
const TRIGGER_STAGE: i64 = 67548619;
/// The deal field the links go into.
const LINK_FIELD: i64 = 1246500;

/// The demo's deals: name, budget (in dollars), what happens to them.
const DEALS: [(&str, i64, Fate); 8] = [
    ("Website redesign", 2000, Fate::Paid),
    ("Annual support plan", 1200, Fate::PaidThenHalfRefunded),
    ("Logo and brand book", 450, Fate::Paid),
    ("Online shop setup", 2990, Fate::Paid),
    ("SEO audit", 800, Fate::Paid),
    ("Hosting, monthly", 49, Fate::SubscriptionFails),
    ("Newsletter templates", 300, Fate::Unpaid),
    ("Mobile app prototype", 5000, Fate::LinkFails),
];

#[derive(Clone, Copy, PartialEq)]
enum Fate {
    Paid,
    PaidThenHalfRefunded,
    SubscriptionFails,
    Unpaid,
    LinkFails,
}

struct Sandbox {
    kommo: FakeKommo,
    stripe: FakeStripe,
    http: reqwest::Client,
    ingest: String,
    kommo_secret: String,
    stripe_secret: String,
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
    let sandbox = Arc::new(Sandbox {
        kommo,
        stripe,
        http: reqwest::Client::new(),
        ingest: env("KOMMO_PAY_SANDBOX_INGEST", "http://127.0.0.1:8080"),
        kommo_secret: env("ACME_KOMMO_WEBHOOK_SECRET", "local-demo-kommo-url-secret-0123456789"),
        stripe_secret: env("ACME_STRIPE_WEBHOOK_SECRET", "whsec_local_demo"),
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
        if let Err(error) = demo(&sandbox, play).await {
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

    /// A manager moves deal `lead` into `stage`: Kommo changes it and sends its webhook.
    async fn enters_stage(&self, lead: i64, stage: i64) -> Result<(), String> {
        let mut deal = self.kommo.lead(lead).ok_or("no such deal")?;
        deal["status_id"] = json!(stage);
        self.kommo.add_lead(deal);
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("account[id]", KOMMO_ACCOUNT_ID.to_string()),
                ("account[subdomain]", ACCOUNT.into()),
                ("leads[status][0][id]", lead.to_string()),
                ("leads[status][0][status_id]", stage.to_string()),
                ("leads[status][0][pipeline_id]", PIPELINE.to_string()),
                ("leads[status][0][last_modified]", chrono::Utc::now().timestamp().to_string()),
            ])
            .finish();
        let url = format!("{}/webhooks/kommo/{ACCOUNT}/{}", self.ingest, self.kommo_secret);
        let answer = self.http.post(url).header("Content-Type", "application/x-www-form-urlencoded").body(body).send().await.map_err(|e| e.to_string())?;
        answered(answer, "Kommo's webhook").await
    }

    /// Stripe sends `event`, signed as Stripe signs.
    async fn stripe_sends(&self, event: Value) -> Result<(), String> {
        let body = event.to_string();
        let signature = kommo_pay_core::stripe::webhook::signature_header(&self.stripe_secret, chrono::Utc::now().timestamp(), body.as_bytes());
        let answer = self
            .http
            .post(format!("{}/webhooks/stripe/{ACCOUNT}", self.ingest))
            .header("Stripe-Signature", signature)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        self.stripe.add_event(event);
        answered(answer, "Stripe's webhook").await
    }

    /// The link Stripe created for deal `lead`, once it has.
    async fn link_of(&self, lead: i64) -> Result<Value, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let link = self.stripe.links().into_iter().find(|link| link["metadata"]["kommo_lead_id"] == json!(lead.to_string()));
            let in_card = self.kommo.lead(lead).is_some_and(|deal| deal.to_string().contains(&format!("\"field_id\":{LINK_FIELD}")));
            match link {
                Some(link) if in_card => return Ok(link),
                _ if Instant::now() > deadline => return Err(format!("deal {lead} got no link within a minute: is `kommo-pay serve` running?")),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

async fn answered(answer: reqwest::Response, what: &str) -> Result<(), String> {
    match answer.status().as_u16() {
        200 => Ok(()),
        status => Err(format!("{what} was answered {status}: {}", answer.text().await.unwrap_or_default())),
    }
}

fn metadata(lead: i64) -> Value {
    json!({ "kommo_account_id": KOMMO_ACCOUNT_ID.to_string(), "kommo_lead_id": lead.to_string() })
}

/// Plays the demo once (play `play`: its deals are 100 × play + 1…8).
async fn demo(s: &Sandbox, play: i64) -> Result<(), String> {
    let ids: Vec<i64> = (1..=DEALS.len() as i64).map(|n| play * 100 + n).collect();
    for (&lead, (name, budget, fate)) in ids.iter().zip(DEALS) {
        let contact = lead + 500_000;
        s.kommo.add_contact(json!({
            "id": contact, "name": format!("Client of {name}"),
            "custom_fields_values": [{ "field_id": 1, "field_code": "EMAIL", "values": [{ "value": format!("client{lead}@example.com"), "enum_code": "WORK" }] }]
        }));
        s.kommo.add_lead(json!({
            "id": lead, "name": name, "price": budget, "pipeline_id": PIPELINE, "status_id": NEW_STAGE,
            "responsible_user_id": 504141, "custom_fields_values": null, "_embedded": { "contacts": [{ "id": contact, "is_main": true }] }
        }));
        if fate == Fate::LinkFails {
            s.stripe.fail_links_of_lead(lead);
        }
    }
    s.say(&format!("{} deals enter the trigger stage", ids.len()));
    for &lead in &ids {
        s.enters_stage(lead, TRIGGER_STAGE).await?;
    }
    for (&lead, (name, budget, fate)) in ids.iter().zip(DEALS) {
        if fate == Fate::LinkFails {
            s.say(&format!("deal {lead} ({name}): Stripe keeps failing; its job retries, then dead-letters"));
            continue;
        }
        let link = s.link_of(lead).await?;
        s.say(&format!("deal {lead} ({name}) has its link {}", link["url"].as_str().unwrap_or_default()));
        let amount = budget * 100;
        let intent = format!("pi_demo_{lead}");
        let now = chrono::Utc::now().timestamp();
        match fate {
            Fate::Paid | Fate::PaidThenHalfRefunded => {
                s.stripe_sends(json!({
                    "id": format!("evt_demo_paid_{lead}"), "object": "event", "type": "checkout.session.completed", "created": now, "livemode": false,
                    "api_version": "2025-07-30.basil",
                    "data": { "object": {
                        "id": format!("cs_demo_{lead}"), "object": "checkout.session", "mode": "payment", "status": "complete",
                        "payment_status": "paid", "payment_link": link["id"], "payment_intent": intent, "amount_total": amount, "currency": "usd",
                        "metadata": metadata(lead)
                    }}
                }))
                .await?;
                s.say(&format!("deal {lead} is paid: {budget}.00 USD"));
            }
            Fate::SubscriptionFails => {
                s.stripe_sends(json!({
                    "id": format!("evt_demo_failed_{lead}"), "object": "event", "type": "invoice.payment_failed", "created": now, "livemode": false,
                    "api_version": "2025-07-30.basil",
                    "data": { "object": {
                        "id": format!("in_demo_{lead}"), "object": "invoice", "amount_due": amount, "amount_paid": 0, "currency": "usd", "status": "open",
                        "lines": { "object": "list", "data": [{ "object": "line_item", "period": { "start": now, "end": now + 30 * 86400 } }] },
                        "parent": { "type": "subscription_details", "subscription_details": { "subscription": format!("sub_demo_{lead}"), "metadata": metadata(lead) } }
                    }}
                }))
                .await?;
                s.say(&format!("deal {lead}: the subscription's card was declined"));
            }
            Fate::Unpaid | Fate::LinkFails => s.say(&format!("deal {lead}: the client has not paid yet")),
        }
        if fate == Fate::PaidThenHalfRefunded {
            s.stripe_sends(json!({
                "id": format!("evt_demo_refund_{lead}"), "object": "event", "type": "charge.refunded", "created": now + 1, "livemode": false,
                "data": { "object": {
                    "id": format!("ch_demo_{lead}"), "object": "charge", "payment_intent": intent, "amount": amount, "amount_captured": amount,
                    "amount_refunded": amount / 2, "refunded": false, "currency": "usd", "status": "succeeded", "metadata": metadata(lead)
                }}
            }))
            .await?;
            s.say(&format!("deal {lead}: half of it is refunded"));
        }
    }
    s.say("open the console to see it all: http://127.0.0.1:8080/console");
    Ok(())
}
