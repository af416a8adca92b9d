//! The quick start's demo, as the sandbox (`examples/sandbox.rs`) plays it and
//! `tests/api/demo.rs` checks it: eight deals of the example configuration's account enter the
//! trigger stage and get their links; five are paid (one of them then half refunded), one
//! subscription charge is declined, one stays unpaid, and one deal's link cannot be created
//! because Stripe keeps failing, so its job ends as a dead letter with a task for the manager.
//! Webhooks go to ingest signed with the account's secrets, exactly as the providers send them.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::kommo::FakeKommo;
use super::stripe::FakeStripe;

/// The example configuration's account.
pub const ACCOUNT: &str = "acme";
const KOMMO_ACCOUNT_ID: i64 = 32427762;
const PIPELINE: i64 = 8572511;
const NEW_STAGE: i64 = 67548618;
const TRIGGER_STAGE: i64 = 67548619;
/// The deal field the links go into.
const LINK_FIELD: i64 = 1246500;

/// The demo's deals: name, budget (in dollars), what happens to them.
pub const DEALS: [(&str, i64, Fate); 8] = [
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
pub enum Fate {
    Paid,
    PaidThenHalfRefunded,
    SubscriptionFails,
    Unpaid,
    LinkFails,
}

/// The fakes the demo plays on, and where and how it sends their webhooks.
pub struct Demo {
    pub kommo: FakeKommo,
    pub stripe: FakeStripe,
    pub http: reqwest::Client,
    /// Ingest's base URL.
    pub ingest: String,
    pub kommo_secret: String,
    pub stripe_secret: String,
}

impl Demo {
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

impl Demo {
    /// Plays the demo once: its deals are 100 × `play` + 1…8; `say` hears what happens.
    pub async fn play(&self, play: i64, say: &(dyn Fn(&str) + Sync)) -> Result<(), String> {
        let s = self;
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
        say(&format!("{} deals enter the trigger stage", ids.len()));
        for &lead in &ids {
            s.enters_stage(lead, TRIGGER_STAGE).await?;
        }
        for (&lead, (name, budget, fate)) in ids.iter().zip(DEALS) {
            if fate == Fate::LinkFails {
                say(&format!("deal {lead} ({name}): Stripe keeps failing; its job retries, then dead-letters"));
                continue;
            }
            let link = s.link_of(lead).await?;
            say(&format!("deal {lead} ({name}) has its link {}", link["url"].as_str().unwrap_or_default()));
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
                    say(&format!("deal {lead} is paid: {budget}.00 USD"));
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
                    say(&format!("deal {lead}: the subscription's card was declined"));
                }
                Fate::Unpaid | Fate::LinkFails => say(&format!("deal {lead}: the client has not paid yet")),
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
                say(&format!("deal {lead}: half of it is refunded"));
            }
        }
        say("open the console to see it all: http://127.0.0.1:8080/console");
        Ok(())
    }
}
