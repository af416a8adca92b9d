//! The Stripe flow end to end: webhooks into ingest, jobs through the worker, effects at the
//! fake Kommo and the fake Stripe.

use std::collections::HashMap;
use std::time::Duration;

use kommo_pay_core::config::Config;
use kommo_pay_worker::{Context, Worker, handlers};
use serde_json::{Value, json};

use crate::fakes::accounts::AccountToml;
use crate::fakes::kommo::{FakeKommo, TOKEN};
use crate::fakes::lemonsqueezy::FakeLemonSqueezy;
use crate::fakes::stripe::FakeStripe;
use crate::helpers::*;

pub(crate) const LEAD: i64 = 15318175;
/// The first and second links the fake Stripe creates, with the deal's main contact's email
/// filled in on the payment page.
pub(crate) const LINK1: &str = "https://buy.stripe.com/test_fake1?prefilled_email=jane%40client.example";
pub(crate) const LINK2: &str = "https://buy.stripe.com/test_fake2?prefilled_email=jane%40client.example";
pub(crate) const PIPELINE: i64 = 8572511;
pub(crate) const TRIGGER_STAGE: i64 = 67548619;
pub(crate) const LINK_SENT_STAGE: i64 = 67548620;
pub(crate) const LS_STAGE: i64 = 67548630;
pub(crate) const LINK_FIELD: i64 = 901;
pub(crate) const STATUS_FIELD: i64 = 902;
pub(crate) const DATE_FIELD: i64 = 903;
pub(crate) const PAYMENT_ID_FIELD: i64 = 904;
pub(crate) const PAID_AMOUNT_FIELD: i64 = 905;
pub(crate) const REFUNDED_FIELD: i64 = 906;
pub(crate) const AWAITING: i64 = 9022;
pub(crate) const PAID: i64 = 9023;
pub(crate) const NOT_ISSUED: i64 = 9021;
pub(crate) const OVERDUE: i64 = 9024;
pub(crate) const REFUNDED: i64 = 9025;
pub(crate) const PARTIALLY_REFUNDED: i64 = 9026;
pub(crate) const CANCELLED: i64 = 9027;
/// Deal fields an admin made for checkout data, in the order the fake Kommo numbers them: a
/// text, a select (options Pro = [`PLAN_PRO`], Basic), a numeric, a text.
pub(crate) const UTM_FIELD: i64 = 1246500;
pub(crate) const PLAN_FIELD: i64 = 1246501;
pub(crate) const PLAN_PRO: i64 = 900100;
pub(crate) const SEATS_FIELD: i64 = 1246502;
pub(crate) const COUPON_FIELD: i64 = 1246503;

pub(crate) struct Flow {
    pub(crate) config: Config,
    pub(crate) app: TestApp,
    pub(crate) kommo: FakeKommo,
    pub(crate) stripe: FakeStripe,
    pub(crate) lemonsqueezy: FakeLemonSqueezy,
    pub(crate) worker: Worker,
    last_modified: std::cell::Cell<i64>,
}

pub(crate) async fn flow() -> Flow {
    flow_at(50).await
}

/// [`flow`], with the account's Kommo budget at `requests_per_second`.
pub(crate) async fn flow_at(requests_per_second: u32) -> Flow {
    let kommo = FakeKommo::start().await;
    let stripe = FakeStripe::start().await;
    let lemonsqueezy = FakeLemonSqueezy::start().await;
    let db = TestDb::new().await;
    let account = AccountToml::new(ACCOUNT, KOMMO_ACCOUNT_ID, &kommo.url)
        .key(r#"default_currency = "USD""#)
        .kommo(&format!("requests_per_second = {requests_per_second}"))
        .set(
            "[accounts.kommo.fields]",
            &format!(
                "payment_link = {LINK_FIELD}
                payment_status = {STATUS_FIELD}
                payment_date = {DATE_FIELD}
                payment_id = {PAYMENT_ID_FIELD}
                paid_amount = {PAID_AMOUNT_FIELD}
                refunded_amount = {REFUNDED_FIELD}
                statuses = {{ not_issued = {NOT_ISSUED}, awaiting = {AWAITING}, paid = {PAID}, overdue = {OVERDUE}, refunded = {REFUNDED}, \
                              partially_refunded = {PARTIALLY_REFUNDED}, cancelled = {CANCELLED} }}"
            ),
        )
        .stripe(&stripe.url)
        .stripe_key("requests_per_second = 100")
        .trigger("invoice", "stripe", PIPELINE, TRIGGER_STAGE)
        .trigger_key(&format!(
            "paid_status_id = 142
            move_to_status_id = {LINK_SENT_STAGE}
            salesbot_id = 77
            remind_after_days = 3
            max_reminders = 2
            remind_salesbot_id = 78
            refund_status_id = 67548641"
        ))
        .set(
            "[accounts.lemonsqueezy]",
            &format!(
                r#"api_base_url = "{ls_url}"
                api_key_env = "LS_KEY"
                webhook_secret_envs = ["LS_WHSEC"]
                test_mode = true"#,
                ls_url = lemonsqueezy.url
            ),
        )
        .set(
            "[accounts.deals]",
            &format!(
                "success_manager_id = 500
                refund_status_id = 67548640
                fields_from_checkout = {{ utm_source = {UTM_FIELD}, plan = {PLAN_FIELD}, seats = {SEATS_FIELD}, coupon = {COUPON_FIELD} }}"
            ),
        )
        .set(
            "[accounts.lemonsqueezy.self_serve]",
            &format!(
                r#"pipeline_id = {PIPELINE}
                status_id = 67548600
                responsible_user_ids = [11, 12, 13]
                tags = ["self-serve"]
                rules = [{{ variant_id = "99999", responsible_user_id = 77 }}]"#
            ),
        )
        .trigger("checkout", "lemonsqueezy", PIPELINE, LS_STAGE)
        .trigger_key(
            r#"store_id = "12345"
            variant_id = "67890"
            checkout_expires_hours = 72
            product_name = "Pro plan"
            custom = { campaign = "black-friday", kommo_lead_id = "never overrides the deal's" }"#,
        );
    let text = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [ops]
        tokens = [{{ name = "alice", token_env = "OPS_TOKEN_ALICE" }}]
        {account}
        "#
    );
    let mut env: HashMap<String, String> = test_env(&db.url);
    env.insert("KOMMO_TOKEN".into(), TOKEN.into());
    env.insert("LS_KEY".into(), crate::fakes::lemonsqueezy::API_KEY.into());
    let config = Config::parse(&text, "flow config", &|name| env.get(name).cloned()).unwrap();
    let worker = Worker::new(db.pool.clone(), handlers(Context::new(db.pool.clone(), &config.accounts)), config.worker.clone(), config.jobs.clone());
    let app = spawn_app_from(db, &config).await;
    kommo.add_lead(json!({
        "id": LEAD, "name": "Website redesign", "price": 2000, "pipeline_id": PIPELINE, "status_id": TRIGGER_STAGE,
        "responsible_user_id": 504141, "custom_fields_values": null, "_embedded": { "contacts": [{ "id": 9012345, "is_main": true }] }
    }));
    kommo.add_contact(json!({
        "id": 9012345, "name": "Jane Client",
        "custom_fields_values": [{ "field_id": 1, "field_code": "EMAIL", "values": [{ "value": "jane@client.example", "enum_code": "WORK" }] }]
    }));
    for field in [
        json!({ "type": "text", "name": "UTM source" }),
        json!({ "type": "select", "name": "Plan", "enums": [{ "value": "Pro" }, { "value": "Basic" }] }),
        json!({ "type": "numeric", "name": "Seats" }),
        json!({ "type": "text", "name": "Coupon" }),
    ] {
        kommo.add_field(field);
    }
    Flow { config, app, kommo, stripe, lemonsqueezy, worker, last_modified: std::cell::Cell::new(1764160000) }
}

impl Flow {
    /// A manager moves the deal into the trigger stage: Kommo's state changes, and its hook
    /// arrives (each call a new change).
    pub(crate) async fn deal_enters_stage(&self) {
        self.deal_enters(TRIGGER_STAGE).await;
    }

    pub(crate) async fn deal_enters(&self, stage: i64) {
        let mut lead = self.kommo.lead(LEAD).unwrap();
        lead["status_id"] = json!(stage);
        self.kommo.add_lead(lead);
        self.last_modified.set(self.last_modified.get() + 1);
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("account[id]", KOMMO_ACCOUNT_ID.to_string()),
                ("account[subdomain]", "acme".into()),
                ("leads[status][0][id]", LEAD.to_string()),
                ("leads[status][0][status_id]", stage.to_string()),
                ("leads[status][0][pipeline_id]", PIPELINE.to_string()),
                ("leads[status][0][last_modified]", self.last_modified.get().to_string()),
            ])
            .finish();
        assert_eq!(self.app.post_kommo(ACCOUNT, KOMMO_SECRET, &body).await.status(), 200);
    }

    pub(crate) async fn stripe_sends(&self, event: Value) {
        assert_eq!(self.app.post_signed_stripe(&event.to_string()).await.status(), 200);
    }

    /// Runs jobs until none is runnable.
    pub(crate) async fn drain(&self) {
        for _ in 0..20 {
            if self.worker.run_once().await.unwrap().claimed == 0 {
                return;
            }
        }
        panic!("the queue did not drain");
    }

    /// Runs jobs until none is left to run, retries included: their waits are cut short.
    pub(crate) async fn drain_with_retries(&self) {
        for _ in 0..10 {
            self.drain().await;
            let due = sqlx::query("UPDATE jobs SET run_at = now() WHERE state = 'retryable'").execute(&self.app.db.pool).await.unwrap();
            if due.rows_affected() == 0 {
                return;
            }
        }
        panic!("jobs kept failing");
    }

    pub(crate) fn field(&self, field_id: i64) -> Option<Value> {
        let lead = self.kommo.lead(LEAD).unwrap();
        lead["custom_fields_values"].as_array()?.iter().find(|f| f["field_id"] == field_id).map(|f| f["values"][0].clone())
    }

    pub(crate) fn note_texts(&self) -> Vec<String> {
        self.kommo.notes().iter().map(|n| n["params"]["text"].as_str().unwrap().to_owned()).collect()
    }

    pub(crate) fn overdue(&self) -> kommo_pay_scheduler::Overdue {
        kommo_pay_scheduler::Overdue::new(self.app.db.pool.clone(), self.config.accounts.clone(), self.config.jobs.clone())
    }

    /// The PATCHes of leads that wrote a custom field value for which `wrote` holds.
    pub(crate) fn patches(&self, wrote: impl Fn(&Value) -> bool) -> usize {
        self.kommo
            .requests()
            .iter()
            .filter(|r| r.method == axum::http::Method::PATCH && r.path.starts_with("/api/v4/leads"))
            .filter(|r| r.body.as_array().into_iter().flatten().any(|u| u["custom_fields_values"].as_array().is_some_and(|v| v.iter().any(&wrote))))
            .count()
    }

    /// The launches of the trigger's Salesbot (77) that reached Kommo.
    pub(crate) fn bot_runs(&self) -> usize {
        self.kommo.bot_launches().iter().filter(|launch| launch["bot_id"] == 77).count()
    }

    pub(crate) fn link_creates(&self) -> Vec<crate::fakes::stripe::Recorded> {
        self.stripe.requests().into_iter().filter(|r| r.path == "/v1/payment_links").collect()
    }
}

pub(crate) fn checkout_completed(event_id: &str, link: &str, intent: &str, amount: i64) -> Value {
    json!({
        "id": event_id, "object": "event", "type": "checkout.session.completed", "created": 1764170000, "livemode": false,
        "api_version": "2025-07-30.basil",
        "data": { "object": {
            "id": format!("cs_test_{event_id}"), "object": "checkout.session", "mode": "payment", "status": "complete",
            "payment_status": "paid", "payment_link": link, "payment_intent": intent,
            "amount_total": amount, "currency": "usd",
            "metadata": { "kommo_account_id": KOMMO_ACCOUNT_ID.to_string(), "kommo_lead_id": LEAD.to_string() }
        }}
    })
}

pub(crate) fn payment_intent_succeeded(event_id: &str, intent: &str, amount: i64) -> Value {
    json!({
        "id": event_id, "object": "event", "type": "payment_intent.succeeded", "created": 1764170001, "livemode": false,
        "data": { "object": {
            "id": intent, "object": "payment_intent", "amount": amount, "amount_received": amount, "currency": "usd", "status": "succeeded",
            "metadata": { "kommo_account_id": KOMMO_ACCOUNT_ID.to_string(), "kommo_lead_id": LEAD.to_string() }
        }}
    })
}

#[tokio::test]
async fn a_deal_entering_the_stage_gets_a_link_and_paying_it_closes_the_deal() {
    let f = flow().await;

    f.deal_enters_stage().await;
    f.drain().await;

    let creates = f.link_creates();
    assert_eq!(creates.len(), 1);
    let params = &creates[0].params;
    assert_eq!(params["line_items"][0]["price_data"]["unit_amount"], "200000");
    assert_eq!(params["line_items"][0]["price_data"]["currency"], "usd");
    assert_eq!(params["line_items"][0]["price_data"]["product_data"]["name"], "Website redesign");
    assert_eq!(params["payment_intent_data"]["metadata"]["kommo_lead_id"], LEAD.to_string());
    // The client travels with the payment: the main contact's id in the link's and the
    // payment's metadata, their email filled in on the payment page (LINK1's prefilled_email).
    assert_eq!(params["metadata"]["kommo_contact_id"], "9012345");
    assert_eq!(params["payment_intent_data"]["metadata"]["kommo_contact_id"], "9012345");
    assert_eq!(f.field(LINK_FIELD).unwrap()["value"], LINK1);
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], AWAITING);
    assert_eq!(f.note_texts(), vec![format!("Payment link for 2,000.00 USD: {LINK1}")]);
    assert_eq!(f.kommo.lead(LEAD).unwrap()["status_id"], LINK_SENT_STAGE, "moved on once the link is in the card");
    assert_eq!(f.kommo.bot_launches(), vec![json!({ "bot_id": 77, "entity_id": LEAD, "entity_type": 2 })], "the Salesbot that sends the link is launched once");

    f.stripe_sends(checkout_completed("evt_paid_1", "plink_fake1", "pi_test_1", 200000)).await;
    f.drain().await;

    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PAID);
    assert_eq!(f.field(PAID_AMOUNT_FIELD).unwrap()["value"], "2000.00");
    assert_eq!(f.field(PAYMENT_ID_FIELD).unwrap()["value"], "pi_test_1");
    assert_eq!(f.field(DATE_FIELD).unwrap()["value"], 1764170000);
    assert_eq!(f.kommo.lead(LEAD).unwrap()["status_id"], 142, "moved to won");
    assert_eq!(f.note_texts()[1], "Payment received: 2,000.00 USD via Stripe");
    assert_eq!(f.stripe.link("plink_fake1").unwrap()["active"], false, "the paid link is deactivated");
    let facts: Vec<String> = sqlx::query_scalar("SELECT kind FROM events WHERE source = 'internal' AND lead_id = $1 ORDER BY seq")
        .bind(LEAD)
        .fetch_all(&f.app.db.pool)
        .await
        .unwrap();
    assert_eq!(
        facts,
        vec![
            "payment_link.issued",
            "payment_link.note_added",
            "payment_link.salesbot_run",
            "payment.received",
            "payment.applied",
            "payment_link.status_changed",
        ],
        "every change of the deal's projections is a fact in the log"
    );
}

#[tokio::test]
async fn duplicated_and_reordered_payment_events_apply_once() {
    let f = flow().await;
    f.deal_enters_stage().await;
    f.drain().await;

    // The payment intent's event first, then the session's, each delivered twice.
    for event in [
        payment_intent_succeeded("evt_pi", "pi_test_2", 200000),
        payment_intent_succeeded("evt_pi", "pi_test_2", 200000),
        checkout_completed("evt_cs", "plink_fake1", "pi_test_2", 200000),
        checkout_completed("evt_cs", "plink_fake1", "pi_test_2", 200000),
    ] {
        f.stripe_sends(event).await;
    }
    f.drain_with_retries().await;

    let received: Vec<String> = f.note_texts().into_iter().filter(|t| t.starts_with("Payment received")).collect();
    assert_eq!(received.len(), 1, "{:?}", f.note_texts());
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PAID);
    assert_eq!(f.stripe.link("plink_fake1").unwrap()["active"], false);
    assert_eq!(f.app.db.count("SELECT count(*) FROM events WHERE kind = 'payment.received'").await, 1);
    assert_eq!(f.app.db.count("SELECT count(*) FROM jobs WHERE state <> 'completed'").await, 0);
}

#[tokio::test]
async fn a_retry_reads_the_deals_notes_first_and_does_not_repeat_one_an_earlier_attempt_added() {
    let f = flow().await;
    f.deal_enters_stage().await;
    // An earlier attempt added the note, then died before recording that it had.
    f.kommo.add_note(json!({ "entity_id": LEAD, "note_type": "common", "params": { "text": format!("Payment link for 2,000.00 USD: {LINK1}") } }));
    sqlx::query("UPDATE jobs SET attempt = 1").execute(&f.app.db.pool).await.unwrap();
    f.drain().await;
    assert_eq!(f.note_texts().len(), 1, "{:?}", f.note_texts());
    assert!(
        f.kommo
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.path.starts_with("/api/v4/leads/notes?") && r.path.contains(&format!("filter[entity_id][]={LEAD}"))),
        "read before written"
    );

    // A first attempt writes without reading.
    f.deal_enters(LINK_SENT_STAGE).await;
    let reads = f.kommo.requests().iter().filter(|r| r.path.contains("/notes?")).count();
    f.stripe_sends(checkout_completed("evt_first_try", "plink_fake1", "pi_first", 200000)).await;
    f.drain().await;
    assert_eq!(f.note_texts().len(), 2);
    assert_eq!(f.kommo.requests().iter().filter(|r| r.path.contains("/notes?")).count(), reads);
}

#[tokio::test]
async fn a_job_taking_over_an_abandoned_payment_reads_the_deals_notes_first() {
    let f = flow().await;
    f.deal_enters_stage().await;
    f.drain().await;
    f.stripe_sends(checkout_completed("evt_cs", "plink_fake1", "pi_test_3", 200000)).await;
    f.drain().await;
    let received = || f.note_texts().into_iter().filter(|t| t.starts_with("Payment received")).count();
    assert_eq!(received(), 1);
    // As if that job's worker had died after the note and before recording it, long ago.
    sqlx::query("UPDATE payments SET applied_at = NULL, applying_job = 424242, applying_since = now() - interval '6 minutes'")
        .execute(&f.app.db.pool)
        .await
        .unwrap();
    let reads = f.kommo.requests().iter().filter(|r| r.path.contains("/notes?")).count();

    // Another announcement of the same payment: a new job, on its first attempt, takes over.
    f.stripe_sends(payment_intent_succeeded("evt_pi", "pi_test_3", 200000)).await;
    f.drain_with_retries().await;

    assert!(f.kommo.requests().iter().filter(|r| r.path.contains("/notes?")).count() > reads, "read before written");
    assert_eq!(received(), 1, "{:?}", f.note_texts());
    assert_eq!(f.app.db.count("SELECT count(*) FROM payments WHERE applied_at IS NOT NULL").await, 1);
}

#[tokio::test]
async fn reentering_the_stage_reuses_the_link_and_a_new_amount_replaces_it() {
    let f = flow().await;
    f.deal_enters_stage().await;
    f.drain().await;

    f.deal_enters_stage().await;
    f.drain().await;
    assert_eq!(f.link_creates().len(), 1, "same amount: the active link is reused");
    assert_eq!(f.note_texts().len(), 1, "and its note is not repeated");

    let mut lead = f.kommo.lead(LEAD).unwrap();
    lead["price"] = json!(2500);
    f.kommo.add_lead(lead);
    f.deal_enters_stage().await;
    f.drain().await;

    assert_eq!(f.link_creates().len(), 2);
    assert_eq!(f.link_creates()[1].params["line_items"][0]["price_data"]["unit_amount"], "250000");
    assert_eq!(f.field(LINK_FIELD).unwrap()["value"], LINK2);
    assert_eq!(f.stripe.link("plink_fake1").unwrap()["active"], false, "the old link no longer takes payments");
    assert_eq!(f.stripe.link("plink_fake2").unwrap()["active"], true);
}

#[tokio::test]
async fn two_issue_jobs_for_one_deal_running_at_once_make_one_link() {
    let f = flow().await;
    // Stripe answers slowly, so that both jobs are inside the create at the same time.
    f.stripe.delay_creates(Some(Duration::from_millis(300)));
    f.deal_enters_stage().await;
    f.deal_enters_stage().await;

    f.drain_with_retries().await;

    assert_eq!(f.link_creates().len(), 1, "the second job waited for the first and reused its link");
    assert_eq!(f.note_texts().len(), 1);
    assert_eq!(f.field(LINK_FIELD).unwrap()["value"], LINK1);
    assert_eq!(f.app.db.count("SELECT count(*) FROM jobs WHERE state = 'completed'").await, 2);
}

#[tokio::test]
async fn a_job_taking_over_an_abandoned_issue_reads_the_deals_notes_first() {
    let f = flow().await;
    f.deal_enters_stage().await;
    // A job issuing this deal's link died long ago, after its note reached Kommo.
    sqlx::query("INSERT INTO payment_link_issuing (account, lead_id, job_id, since) VALUES ($1, $2, 424242, now() - interval '6 minutes')")
        .bind(ACCOUNT)
        .bind(LEAD)
        .execute(&f.app.db.pool)
        .await
        .unwrap();
    f.kommo.add_note(json!({ "entity_id": LEAD, "note_type": "common", "params": { "text": format!("Payment link for 2,000.00 USD: {LINK1}") } }));

    f.drain().await;

    assert_eq!(f.note_texts().len(), 1, "{:?}", f.note_texts());
    assert!(f.kommo.requests().iter().any(|r| r.method == "GET" && r.path.contains("/notes?")), "read before written");
    assert_eq!(f.app.db.count("SELECT count(*) FROM payment_link_issuing").await, 0, "the lease is given back");
}

#[tokio::test]
async fn a_deal_without_an_amount_gets_a_task_and_no_link() {
    let f = flow().await;
    let mut lead = f.kommo.lead(LEAD).unwrap();
    lead["price"] = Value::Null;
    f.kommo.add_lead(lead);

    f.deal_enters_stage().await;
    f.drain().await;

    assert!(f.link_creates().is_empty());
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], NOT_ISSUED);
    let tasks = f.kommo.tasks();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["responsible_user_id"], 504141);
    assert!(tasks[0]["text"].as_str().unwrap().contains("the deal's budget is empty"), "{tasks:?}");
    assert_eq!(f.app.db.count("SELECT count(*) FROM jobs WHERE state = 'completed'").await, 1, "done, not retried");
}

#[tokio::test]
async fn stripe_refusing_the_link_tells_the_manager_without_retrying() {
    let f = flow().await;
    let mut lead = f.kommo.lead(LEAD).unwrap();
    lead["price"] = json!("0.10");
    f.kommo.add_lead(lead);

    f.deal_enters_stage().await;
    f.drain().await;

    assert_eq!(f.link_creates().len(), 1, "asked once: Stripe's 400 is not retried");
    let tasks = f.kommo.tasks();
    assert_eq!(tasks.len(), 1);
    assert!(tasks[0]["text"].as_str().unwrap().contains("Amount must be at least 50 cents"), "{tasks:?}");
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], NOT_ISSUED);
    assert_eq!(f.app.db.count("SELECT count(*) FROM events WHERE kind = 'payment_link.failed'").await, 1);
}

#[tokio::test]
async fn a_deal_that_left_the_stage_gets_nothing() {
    let f = flow().await;
    f.deal_enters_stage().await;
    // Before the job runs, a manager moves the deal on (lost).
    let mut lead = f.kommo.lead(LEAD).unwrap();
    lead["status_id"] = json!(143);
    f.kommo.add_lead(lead);

    f.drain().await;

    assert!(f.link_creates().is_empty());
    assert!(f.field(LINK_FIELD).is_none());
}

#[tokio::test]
async fn a_stripe_outage_is_retried_later_with_the_same_idempotency_key() {
    let f = flow().await;
    for _ in 0..3 {
        f.stripe.fail_next(503, json!({ "error": { "type": "api_error", "message": "Stripe is down" } }), None);
    }

    f.deal_enters_stage().await;
    f.drain().await;
    assert_eq!(f.app.db.count("SELECT count(*) FROM jobs WHERE state = 'retryable'").await, 1);
    assert!(f.field(LINK_FIELD).is_none());
    // The attempt's error names the call and every try's failure, not just the last.
    let error: String = sqlx::query_scalar("SELECT errors -> -1 ->> 'error' FROM jobs WHERE state = 'retryable'").fetch_one(&f.app.db.pool).await.unwrap();
    assert!(error.contains("Stripe POST v1/payment_links: Stripe refused the request (503 api_error): Stripe is down"), "{error}");
    assert_eq!(error.matches("503").count(), 3, "the two earlier tries are on the job too: {error}");

    sqlx::query("UPDATE jobs SET run_at = now() WHERE state = 'retryable'").execute(&f.app.db.pool).await.unwrap();
    f.drain().await;

    assert_eq!(f.field(LINK_FIELD).unwrap()["value"], LINK1);
    let keys: Vec<String> = f.link_creates().iter().map(|r| r.idempotency_key.clone().unwrap()).collect();
    assert_eq!(keys.len(), 4);
    assert!(keys.iter().all(|k| *k == keys[0]), "one key across attempts: {keys:?}");
}

#[tokio::test]
async fn a_job_that_gives_up_leaves_a_task_for_the_deals_manager() {
    let f = flow().await;
    // Stripe fails every try of the job's only attempt (one try and two retries).
    f.stripe.fail_links_of_lead(LEAD);
    f.deal_enters_stage().await;
    sqlx::query("UPDATE jobs SET max_attempts = 1").execute(&f.app.db.pool).await.unwrap();

    f.drain().await;

    assert_eq!(f.app.db.count("SELECT count(*) FROM jobs WHERE kind = 'payment_link.issue' AND state = 'dead'").await, 1);
    let tasks = f.kommo.tasks();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let text = tasks[0]["text"].as_str().unwrap();
    assert!(text.contains("could not finish \"issue the payment link\"") && text.contains("An unknown error occurred"), "{text}");
    assert_eq!(tasks[0]["responsible_user_id"], 504141);
    assert!(f.stripe.links().is_empty(), "no link was created");
    assert_eq!(f.app.db.count("SELECT count(*) FROM events WHERE kind = 'deal.alerted'").await, 1);
}

#[tokio::test]
async fn kommo_blocking_the_account_dead_letters_the_job_at_once() {
    let f = flow().await;
    f.kommo.answer_next(403, "text/html", "<html><body><h1>403 Forbidden</h1></body></html>");

    f.deal_enters_stage().await;
    f.drain().await;

    assert_eq!(f.app.db.count("SELECT count(*) FROM jobs WHERE kind = 'payment_link.issue' AND state = 'dead'").await, 1);
    assert_eq!(f.app.db.count("SELECT count(*) FROM events WHERE kind = 'job.dead_lettered'").await, 2, "the job and its alert");
    assert_eq!(f.app.db.count("SELECT count(*) FROM jobs WHERE kind = 'deal.alert'").await, 1, "an alert raises no alert of its own");
    assert_eq!(f.kommo.requests().len(), 1, "no retry, and no alert, hammered the blocked account");
}

/// An event of subscription invoice `in_N`, which bills the subscription's N-th month.
pub(crate) fn invoice(event_id: &str, kind: &str, invoice_id: &str, paid: i64) -> Value {
    let month: i64 = invoice_id.trim_start_matches("in_").parse().unwrap_or(1);
    let period_start = 1764180000 + (month - 1) * 30 * 86400;
    json!({
        "id": event_id, "object": "event", "type": kind, "created": 1764180000, "livemode": false,
        "data": { "object": {
            "id": invoice_id, "object": "invoice", "amount_due": 4990, "amount_paid": paid, "currency": "eur",
            "status": if paid > 0 { "paid" } else { "open" },
            "lines": { "object": "list", "data": [{ "object": "line_item", "period": { "start": period_start, "end": period_start + 30 * 86400 } }] },
            "parent": { "type": "subscription_details", "subscription_details": {
                "subscription": "sub_test_1",
                "metadata": { "kommo_account_id": KOMMO_ACCOUNT_ID.to_string(), "kommo_lead_id": LEAD.to_string() }
            }}
        }}
    })
}

pub(crate) fn subscription_updated(event_id: &str, status: &str, created: i64) -> Value {
    json!({
        "id": event_id, "object": "event", "type": "customer.subscription.updated", "created": created, "livemode": false,
        "data": { "object": {
            "id": "sub_test_1", "object": "subscription", "status": status, "currency": "eur",
            "metadata": { "kommo_account_id": KOMMO_ACCOUNT_ID.to_string(), "kommo_lead_id": LEAD.to_string() }
        }, "previous_attributes": { "status": "active" } }
    })
}

pub(crate) fn charge_refunded(event_id: &str, intent: &str, amount: i64, refunded: i64) -> Value {
    json!({
        "id": event_id, "object": "event", "type": "charge.refunded", "created": 1764190000, "livemode": false,
        "data": { "object": {
            "id": "ch_test_1", "object": "charge", "payment_intent": intent, "amount": amount, "amount_captured": amount,
            "amount_refunded": refunded, "refunded": refunded == amount, "currency": "usd", "status": "succeeded",
            "metadata": { "kommo_account_id": KOMMO_ACCOUNT_ID.to_string(), "kommo_lead_id": LEAD.to_string() }
        }}
    })
}

#[tokio::test]
async fn each_subscription_invoice_is_paid_once_and_a_failed_one_makes_the_deal_overdue() {
    let f = flow().await;

    for event in [
        invoice("evt_in1_paid", "invoice.paid", "in_1", 4990),
        invoice("evt_in1_succeeded", "invoice.payment_succeeded", "in_1", 4990),
        invoice("evt_in1_paid", "invoice.paid", "in_1", 4990),
    ] {
        f.stripe_sends(event).await;
    }
    f.drain_with_retries().await;
    assert_eq!(f.note_texts(), vec!["Payment received: 49.90 EUR via Stripe (subscription invoice in_1)"]);
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PAID);

    // A failure alone is a note: Stripe retries the card.
    f.stripe_sends(invoice("evt_in2_failed", "invoice.payment_failed", "in_2", 0)).await;
    f.stripe_sends(invoice("evt_in2_failed", "invoice.payment_failed", "in_2", 0)).await;
    f.drain_with_retries().await;
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PAID);
    assert!(f.note_texts()[1].starts_with("The subscription payment of 49.90 EUR (Stripe invoice in_2) failed"), "{:?}", f.note_texts());
    assert!(f.kommo.tasks().is_empty());

    // Still unpaid after the grace period (3 days by default): Overdue and a task, once.
    let failed_at = chrono::DateTime::from_timestamp(1764180000, 0).unwrap();
    let overdue = f.overdue();
    assert_eq!(overdue.run_once(failed_at + chrono::Duration::days(2)).await.unwrap(), 0, "within the grace period");
    assert_eq!(overdue.run_once(failed_at + chrono::Duration::days(3)).await.unwrap(), 1);
    assert_eq!(overdue.run_once(failed_at + chrono::Duration::days(4)).await.unwrap(), 0, "marked once");
    f.drain_with_retries().await;
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], OVERDUE);
    let tasks = f.kommo.tasks();
    assert_eq!(tasks.len(), 1);
    let text = tasks[0]["text"].as_str().unwrap();
    assert!(text.contains("overdue") && text.contains("49.90 EUR (Stripe invoice in_2)") && text.contains("after 3 days"), "{text}");

    // Paid at last: cleared, and a late failure of a paid invoice changes nothing.
    f.stripe_sends(invoice("evt_in2_paid", "invoice.paid", "in_2", 4990)).await;
    f.stripe_sends(invoice("evt_in1_failed_late", "invoice.payment_failed", "in_1", 0)).await;
    f.drain_with_retries().await;
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PAID, "a late failure of a paid invoice changes nothing");
    assert_eq!(f.note_texts().len(), 3);
    assert_eq!(overdue.run_once(failed_at + chrono::Duration::days(30)).await.unwrap(), 0, "nothing left unpaid");
    assert_eq!(f.kommo.tasks().len(), 1);

    // The next failure starts a new run, overdue in its turn.
    f.stripe_sends(invoice("evt_in3_failed", "invoice.payment_failed", "in_3", 0)).await;
    f.drain_with_retries().await;
    assert_eq!(overdue.run_once(failed_at + chrono::Duration::days(30)).await.unwrap(), 1);
    f.drain_with_retries().await;
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], OVERDUE);
    assert_eq!(f.kommo.tasks().len(), 2);
}

#[tokio::test]
async fn a_past_due_subscription_alone_makes_the_deal_overdue_and_a_stale_one_changes_nothing() {
    let f = flow().await;
    f.stripe_sends(invoice("evt_in1_paid", "invoice.paid", "in_1", 4990)).await;
    f.drain_with_retries().await;
    // A past_due snapshot older than that payment, an active one, and a past_due one delivered
    // after the active one though older than it, all at once (their jobs run together): nothing
    // unpaid.
    for event in [
        subscription_updated("evt_sub_stale", "past_due", 1764170000),
        subscription_updated("evt_sub_active", "active", 1764185000),
        subscription_updated("evt_sub_overtaken", "past_due", 1764183000),
    ] {
        f.stripe_sends(event).await;
    }
    f.drain_with_retries().await;
    assert_eq!(f.app.db.count("SELECT count(*) FROM subscriptions WHERE provider = 'stripe' AND status = 'active'").await, 1);
    let overdue = f.overdue();
    let snapshot_at = chrono::DateTime::from_timestamp(1764190000, 0).unwrap();
    assert_eq!(overdue.run_once(snapshot_at + chrono::Duration::days(30)).await.unwrap(), 0);

    // The failed invoice's own event was lost; the subscription's snapshot says past_due.
    f.stripe_sends(subscription_updated("evt_sub_past_due", "past_due", 1764190000)).await;
    f.drain_with_retries().await;
    assert_eq!(overdue.run_once(snapshot_at + chrono::Duration::days(2)).await.unwrap(), 0, "within the grace period");
    assert_eq!(overdue.run_once(snapshot_at + chrono::Duration::days(3)).await.unwrap(), 1);
    f.drain_with_retries().await;

    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], OVERDUE);
    let tasks = f.kommo.tasks();
    assert_eq!(tasks.len(), 1);
    assert!(tasks[0]["text"].as_str().unwrap().contains("Stripe subscription sub_test_1 (past_due)"), "{tasks:?}");
}

#[tokio::test]
async fn a_subscription_snapshot_without_a_status_is_refused_and_changes_nothing() {
    let f = flow().await;
    let mut event = subscription_updated("evt_sub_no_status", "past_due", 1764190000);
    event["data"]["object"].as_object_mut().unwrap().remove("status");
    f.stripe_sends(event).await;
    f.drain().await;

    assert_eq!(f.app.db.count("SELECT count(*) FROM jobs WHERE state = 'dead' AND errors::text LIKE '%has no status%'").await, 1);
    assert_eq!(f.app.db.count("SELECT count(*) FROM subscriptions").await, 0);
    assert_eq!(f.app.db.count("SELECT count(*) FROM dunning").await, 0);
}

#[tokio::test]
async fn a_cancelled_subscription_marks_the_deal_and_tells_its_manager() {
    let f = flow().await;
    let deleted = json!({
        "id": "evt_sub_deleted", "object": "event", "type": "customer.subscription.deleted", "created": 1764200000,
        "data": { "object": { "id": "sub_test_1", "object": "subscription", "status": "canceled",
            "metadata": { "kommo_lead_id": LEAD.to_string() } } }
    });

    f.stripe_sends(deleted).await;
    f.drain_with_retries().await;

    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], CANCELLED);
    assert!(f.kommo.tasks()[0]["text"].as_str().unwrap().contains("sub_test_1 was cancelled"));
    assert_eq!(f.kommo.tasks()[0]["responsible_user_id"], 500, "the account's success manager, as for Lemon Squeezy");
}

#[tokio::test]
async fn partial_then_full_refunds_update_the_deal_forward_only() {
    let f = flow().await;
    f.deal_enters_stage().await;
    f.drain().await;
    f.stripe_sends(checkout_completed("evt_cs_r", "plink_fake1", "pi_r", 200000)).await;
    f.drain_with_retries().await;

    f.stripe_sends(charge_refunded("evt_refund_1", "pi_r", 200000, 50000)).await;
    f.drain_with_retries().await;
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PARTIALLY_REFUNDED);
    assert_eq!(f.field(REFUNDED_FIELD).unwrap()["value"], "500.00");
    assert_eq!(f.kommo.lead(LEAD).unwrap()["status_id"], 67548641, "the trigger's own needs-attention stage, over the account's");

    f.stripe_sends(charge_refunded("evt_refund_2", "pi_r", 200000, 200000)).await;
    f.drain_with_retries().await;
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], REFUNDED);
    assert_eq!(f.field(REFUNDED_FIELD).unwrap()["value"], "2000.00");

    // An event reporting an older, smaller total arriving late changes nothing.
    f.stripe_sends(charge_refunded("evt_refund_1_replayed", "pi_r", 200000, 50000)).await;
    f.drain_with_retries().await;
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], REFUNDED);
    let refund_notes: Vec<String> = f.note_texts().into_iter().filter(|t| t.starts_with("Refunded")).collect();
    assert_eq!(refund_notes, vec!["Refunded partly: 500.00 USD of 2,000.00 USD via Stripe", "Refunded in full: 2,000.00 USD of 2,000.00 USD via Stripe"]);
}

#[tokio::test]
async fn a_refund_that_arrives_before_its_payment_still_ends_refunded() {
    let f = flow().await;
    f.deal_enters_stage().await;
    f.drain().await;

    f.stripe_sends(charge_refunded("evt_refund_early", "pi_early", 200000, 200000)).await;
    f.drain_with_retries().await;
    f.stripe_sends(checkout_completed("evt_cs_late", "plink_fake1", "pi_early", 200000)).await;
    f.drain_with_retries().await;

    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], REFUNDED, "the same end state as in order");
    assert_ne!(f.kommo.lead(LEAD).unwrap()["status_id"], 142, "a refunded deal is not moved to won");
    assert_eq!(f.app.db.count("SELECT count(*) FROM jobs WHERE state <> 'completed'").await, 0);
}

#[tokio::test]
async fn a_lemonsqueezy_trigger_puts_a_prefilled_checkout_in_the_card() {
    let f = flow().await;

    f.deal_enters(LS_STAGE).await;
    f.drain().await;

    let requests = f.lemonsqueezy.requests();
    assert_eq!(requests.len(), 1);
    let attributes = &requests[0].document["data"]["attributes"];
    assert_eq!(attributes["custom_price"], 200000);
    assert_eq!(attributes["checkout_data"]["custom"]["kommo_lead_id"], LEAD.to_string());
    assert_eq!(attributes["checkout_data"]["custom"]["kommo_contact_id"], "9012345", "the client travels with the order");
    assert_eq!(attributes["checkout_data"]["email"], "jane@client.example");
    assert_eq!(attributes["checkout_data"]["name"], "Jane Client");
    assert_eq!(attributes["product_options"]["name"], "Pro plan", "the trigger's product name");
    assert_eq!(attributes["checkout_data"]["custom"]["campaign"], "black-friday", "configured extras travel too");
    assert_eq!(attributes["test_mode"], true);
    assert!(attributes["expires_at"].is_string(), "the checkout expires: {attributes}");
    let url = f.field(LINK_FIELD).unwrap()["value"].as_str().unwrap().to_owned();
    assert!(url.starts_with("https://acme.lemonsqueezy.com/checkout/custom/"), "{url}");
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], AWAITING);
    assert!(f.link_creates().is_empty(), "no Stripe link");
    let provider: String =
        sqlx::query_scalar("SELECT payload ->> 'provider' FROM events WHERE kind = 'payment_link.issued'").fetch_one(&f.app.db.pool).await.unwrap();
    assert_eq!(provider, "lemonsqueezy");

    // Moving to the Stripe stage replaces the checkout with a Stripe link.
    f.deal_enters(TRIGGER_STAGE).await;
    f.drain().await;
    assert_eq!(f.field(LINK_FIELD).unwrap()["value"], LINK1);
    assert_eq!(f.app.db.count("SELECT count(*) FROM payment_links WHERE status = 'replaced' AND provider = 'lemonsqueezy'").await, 1);
}

pub(crate) fn ls_order(event: &str, status: &str, refunded: i64, lead: Option<i64>) -> String {
    let custom = match lead {
        Some(lead) => json!({ "kommo_account_id": KOMMO_ACCOUNT_ID.to_string(), "kommo_lead_id": lead.to_string() }),
        None => json!({ "utm_source": "website" }),
    };
    json!({
        "meta": { "event_name": event, "test_mode": true, "webhook_id": "8b1e3a4c-0000-4000-8000-000000000002", "custom_data": custom },
        "data": { "type": "orders", "id": "1001", "attributes": {
            "store_id": 12345, "customer_id": 777, "order_number": 1234, "user_email": "jane@client.example",
            "currency": "USD", "status": status, "total": 200000, "refunded": refunded == 200000, "refunded_amount": refunded,
            "first_order_item": { "product_name": "Website redesign", "variant_id": 67890, "price": 200000 },
            "created_at": "2026-11-26T12:26:23.000000Z", "updated_at": "2026-11-26T12:26:23.000000Z"
        }}
    })
    .to_string()
}

impl Flow {
    pub(crate) async fn lemonsqueezy_sends(&self, body: &str) {
        let signature = ls_signature(LS_SECRET, body);
        assert_eq!(self.app.post_lemonsqueezy(ACCOUNT, body, Some(&signature)).await.status(), 200);
    }
}

#[tokio::test]
async fn a_paid_lemonsqueezy_order_closes_its_deal_once() {
    let f = flow().await;
    f.deal_enters(LS_STAGE).await;
    f.drain().await;

    let paid = ls_order("order_created", "paid", 0, Some(LEAD));
    f.lemonsqueezy_sends(&paid).await;
    f.lemonsqueezy_sends(&paid).await;
    f.drain_with_retries().await;

    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PAID);
    assert_eq!(f.field(PAID_AMOUNT_FIELD).unwrap()["value"], "2000.00");
    assert_eq!(f.field(PAYMENT_ID_FIELD).unwrap()["value"], "1001");
    assert_eq!(f.kommo.lead(LEAD).unwrap()["status_id"], 142, "closed as won");
    let received: Vec<String> = f.note_texts().into_iter().filter(|t| t.starts_with("Payment received")).collect();
    assert_eq!(received, vec!["Payment received: 2,000.00 USD — Website redesign (order #1234)"]);
}

#[tokio::test]
async fn a_refunded_lemonsqueezy_order_updates_the_deal_and_tells_its_manager() {
    let f = flow().await;
    f.lemonsqueezy_sends(&ls_order("order_created", "paid", 0, Some(LEAD))).await;
    f.drain_with_retries().await;

    f.lemonsqueezy_sends(&ls_order("order_refunded", "partial_refund", 50000, Some(LEAD))).await;
    f.drain_with_retries().await;

    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PARTIALLY_REFUNDED);
    assert_eq!(f.field(REFUNDED_FIELD).unwrap()["value"], "500.00");
    assert_eq!(f.kommo.lead(LEAD).unwrap()["status_id"], 67548640, "moved to the needs-attention stage");
    let tasks = f.kommo.tasks();
    assert_eq!(tasks.len(), 1);
    assert!(tasks[0]["text"].as_str().unwrap().contains("refunded partly: 500.00 USD of 2,000.00 USD"), "{tasks:?}");

    f.lemonsqueezy_sends(&ls_order("order_refunded", "refunded", 200000, Some(LEAD))).await;
    f.drain_with_retries().await;
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], REFUNDED);
    assert_eq!(f.kommo.tasks().len(), 2);
}

#[tokio::test]
async fn a_failed_lemonsqueezy_order_tells_the_manager_and_a_pending_one_waits() {
    let f = flow().await;
    f.lemonsqueezy_sends(&ls_order("order_created", "pending", 0, Some(LEAD))).await;
    f.drain_with_retries().await;
    assert!(f.kommo.tasks().is_empty() && f.field(STATUS_FIELD).is_none(), "a pending order changes nothing yet");

    let failed = ls_order("order_created", "failed", 0, Some(LEAD)).replace("\"1001\"", "\"1002\"");
    f.lemonsqueezy_sends(&failed).await;
    f.drain_with_retries().await;

    let tasks = f.kommo.tasks();
    assert_eq!(tasks.len(), 1);
    assert!(tasks[0]["text"].as_str().unwrap().contains("order #1234 for 2,000.00 USD (Website redesign) failed"), "{tasks:?}");
    assert!(f.field(STATUS_FIELD).is_none(), "not marked paid");
}

pub(crate) fn self_serve_order(order: u32, variant: u32) -> String {
    ls_order("order_created", "paid", 0, None)
        .replace("\"1001\"", &format!("\"{order}\""))
        .replace("\"variant_id\":67890", &format!("\"variant_id\":{variant}"))
}

fn created_deals(f: &Flow) -> Vec<Value> {
    f.kommo.requests().into_iter().filter(|r| r.path == "/api/v4/leads/complex").map(|r| r.body[0].clone()).collect()
}

#[tokio::test]
async fn a_self_serve_buyer_becomes_a_paid_deal_once() {
    let f = flow().await;
    let order = self_serve_order(2001, 67890);

    f.lemonsqueezy_sends(&order).await;
    f.lemonsqueezy_sends(&order).await;
    f.drain_with_retries().await;

    let deals = created_deals(&f);
    assert_eq!(deals.len(), 1, "one deal for one order");
    let deal = &deals[0];
    assert_eq!(deal["name"], "Website redesign — jane@client.example (order #1234)");
    assert_eq!(deal["price"], 2000);
    assert_eq!(deal["status_id"], 67548600);
    assert_eq!(deal["responsible_user_id"], 11);
    assert_eq!(deal["_embedded"]["tags"], json!([{ "name": "self-serve" }]));
    assert_eq!(deal["_embedded"]["contacts"][0]["custom_fields_values"][0]["values"][0]["value"], "jane@client.example");
    let id: i64 = sqlx::query_scalar("SELECT lead_id FROM self_serve_orders").fetch_one(&f.app.db.pool).await.unwrap();
    let paid = f.kommo.lead(id).unwrap();
    assert_eq!(paid["status_id"], 142, "then paid like any deal: closed as won");
    let notes: Vec<String> = f.kommo.notes().iter().filter(|n| n["entity_id"] == id).map(|n| n["params"]["text"].as_str().unwrap().to_owned()).collect();
    assert!(notes.iter().any(|n| n == "Self-serve order 2001. utm_source: website"), "{notes:?}");
    assert!(notes.iter().any(|n| n.starts_with("Payment received: 2,000.00 USD")), "{notes:?}");
}

#[tokio::test]
async fn a_deal_created_by_an_interrupted_attempt_is_found_not_created_again() {
    let f = flow().await;
    // An earlier worker claimed the order, created the deal in Kommo, and died before storing it.
    f.kommo.add_lead(json!({ "id": 31000000, "name": "Website redesign — jane@client.example (order #1234)", "status_id": 67548600, "pipeline_id": PIPELINE }));
    sqlx::query("INSERT INTO self_serve_orders (account, provider, order_id, creating_job, creating_since) VALUES ($1, 'lemonsqueezy', '2003', 999999, now() - interval '10 minutes')")
        .bind(ACCOUNT)
        .execute(&f.app.db.pool)
        .await
        .unwrap();

    f.lemonsqueezy_sends(&self_serve_order(2003, 67890)).await;
    f.drain_with_retries().await;

    assert!(created_deals(&f).is_empty(), "no second deal: {:?}", f.kommo.requests().iter().map(|r| format!("{} {}", r.method, r.path)).collect::<Vec<_>>());
    let stored: i64 = sqlx::query_scalar("SELECT lead_id FROM self_serve_orders").fetch_one(&f.app.db.pool).await.unwrap();
    assert_eq!(stored, 31000000);
    assert_eq!(f.kommo.lead(31000000).unwrap()["status_id"], 142, "and the found deal is paid");
}

#[tokio::test]
async fn two_workers_racing_on_one_order_create_one_deal() {
    let f = flow().await;
    f.lemonsqueezy_sends(&self_serve_order(2002, 67890)).await;
    // A second job for the same event, as a replay would make, run by a second worker at once.
    sqlx::query("INSERT INTO jobs (kind, args, account, event_id, max_attempts) SELECT kind, args, account, event_id, max_attempts FROM jobs")
        .execute(&f.app.db.pool)
        .await
        .unwrap();
    let second =
        Worker::new(f.app.db.pool.clone(), handlers(Context::new(f.app.db.pool.clone(), &f.config.accounts)), f.config.worker.clone(), f.config.jobs.clone());

    let (a, b) = tokio::join!(f.worker.run_once(), second.run_once());
    assert_eq!(a.unwrap().claimed + b.unwrap().claimed, 2);
    f.drain_with_retries().await;

    assert_eq!(created_deals(&f).len(), 1);
    assert_eq!(f.app.db.count("SELECT count(*) FROM jobs WHERE state = 'completed'").await, 2);
    assert_eq!(f.app.db.count("SELECT count(*) FROM events WHERE kind = 'payment.received'").await, 1);
}

#[tokio::test]
async fn self_serve_deals_go_round_the_managers_fairly_and_rules_come_first() {
    let f = flow().await;
    for order in 3001..3010 {
        f.lemonsqueezy_sends(&self_serve_order(order, 67890)).await;
    }
    f.lemonsqueezy_sends(&self_serve_order(3010, 99999)).await;
    f.drain_with_retries().await;

    let mut counts = std::collections::BTreeMap::new();
    for deal in created_deals(&f) {
        *counts.entry(deal["responsible_user_id"].as_i64().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(counts, std::collections::BTreeMap::from([(11, 3), (12, 3), (13, 3), (77, 1)]));
}

pub(crate) fn ls_subscription(event: &str, status: &str, updated_at: &str, with_deal: bool) -> String {
    let custom = if with_deal { json!({ "kommo_lead_id": LEAD.to_string() }) } else { Value::Null };
    json!({
        "meta": { "event_name": event, "test_mode": true, "custom_data": custom },
        "data": { "type": "subscriptions", "id": "555", "attributes": {
            "store_id": 12345, "order_id": 1001, "product_name": "Pro plan", "variant_name": "Monthly", "status": status,
            "cancelled": status == "cancelled", "renews_at": "2026-12-26T12:26:23.000000Z",
            "ends_at": if status == "cancelled" || status == "expired" { json!("2026-12-26T12:26:23.000000Z") } else { Value::Null },
            "created_at": "2026-11-26T12:26:23.000000Z", "updated_at": updated_at
        }}
    })
    .to_string()
}

/// An event of subscription invoice `invoice`: 801 is the first month's, 802 the second's, 803
/// the third's.
pub(crate) fn ls_invoice(event: &str, invoice: &str, reason: &str) -> String {
    let created = match invoice {
        "801" => "2026-11-26T12:26:23.000000Z",
        "803" => "2027-01-26T12:26:23.000000Z",
        _ => "2026-12-26T12:26:23.000000Z",
    };
    json!({
        "meta": { "event_name": event, "test_mode": true },
        "data": { "type": "subscription-invoices", "id": invoice, "attributes": {
            "subscription_id": 555, "customer_id": 777, "billing_reason": reason, "status": "paid",
            "currency": "USD", "total": 4900, "refunded": false, "refunded_amount": 0,
            "created_at": created, "updated_at": created
        }}
    })
    .to_string()
}

#[tokio::test]
async fn lemonsqueezy_subscription_payments_find_their_deal_through_the_subscription() {
    let f = flow().await;
    f.lemonsqueezy_sends(&ls_subscription("subscription_created", "active", "2026-11-26T12:26:23.000000Z", true)).await;
    f.lemonsqueezy_sends(&ls_invoice("subscription_payment_success", "801", "initial")).await;
    f.drain_with_retries().await;
    assert!(f.note_texts().is_empty(), "the first invoice is the order's money, counted once with order_created");

    let renewal = ls_invoice("subscription_payment_success", "802", "renewal");
    f.lemonsqueezy_sends(&renewal).await;
    f.lemonsqueezy_sends(&renewal).await;
    f.drain_with_retries().await;
    assert_eq!(f.note_texts(), vec!["Payment received: 49.00 USD — subscription renewal (invoice 802)"]);
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PAID);

    f.lemonsqueezy_sends(&ls_invoice("subscription_payment_failed", "803", "renewal")).await;
    f.drain_with_retries().await;
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PAID, "Lemon Squeezy retries the card");
    let failed_at: chrono::DateTime<chrono::Utc> = "2027-01-26T12:26:23Z".parse().unwrap();
    assert_eq!(f.overdue().run_once(failed_at + chrono::Duration::days(3)).await.unwrap(), 1);
    f.drain_with_retries().await;
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], OVERDUE);
    assert!(f.kommo.tasks()[0]["text"].as_str().unwrap().contains("49.00 USD (Lemon Squeezy invoice 803)"));

    f.lemonsqueezy_sends(&ls_invoice("subscription_payment_recovered", "803", "renewal")).await;
    f.drain_with_retries().await;
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PAID, "recovered: paid again");
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM dunning").fetch_one(&f.app.db.pool).await.unwrap();
    assert_eq!(open, 0, "the run of failures ended with the payment");
}

/// Lemon Squeezy sends a subscription's events in no set order: a renewal that comes before
/// the `subscription_created` naming its deal waits for it instead of being dead-lettered.
#[tokio::test]
async fn a_lemonsqueezy_renewal_before_its_subscription_created_waits_and_then_pays_the_deal() {
    let f = flow().await;
    f.lemonsqueezy_sends(&ls_invoice("subscription_payment_success", "802", "renewal")).await;
    f.drain().await;
    let (state, errors): (String, Value) = sqlx::query_as("SELECT state, errors FROM jobs").fetch_one(&f.app.db.pool).await.unwrap();
    assert_eq!(state, "retryable", "{errors}");
    assert!(errors.to_string().contains("names no deal yet"), "{errors}");

    f.lemonsqueezy_sends(&ls_subscription("subscription_created", "active", "2026-11-26T12:26:23.000000Z", true)).await;
    f.drain_with_retries().await;
    assert_eq!(f.note_texts(), ["Payment received: 49.00 USD — subscription renewal (invoice 802)"]);
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], PAID);
    assert_eq!(f.app.db.count("SELECT count(*) FROM jobs WHERE state <> 'completed'").await, 0);
}

#[tokio::test]
async fn lemonsqueezy_cancellation_tells_the_manager_and_expiry_ends_it_whatever_arrives_late() {
    let f = flow().await;
    f.lemonsqueezy_sends(&ls_subscription("subscription_created", "active", "2026-11-26T12:00:00.000000Z", true)).await;
    f.lemonsqueezy_sends(&ls_subscription("subscription_cancelled", "cancelled", "2026-12-01T09:00:00.000000Z", true)).await;
    f.drain_with_retries().await;
    let tasks = f.kommo.tasks();
    assert_eq!(tasks.len(), 1);
    assert!(tasks[0]["text"].as_str().unwrap().contains("stays active until 2026-12-26"), "{tasks:?}");
    assert_eq!(tasks[0]["responsible_user_id"], 500, "for the customer-success manager");

    f.lemonsqueezy_sends(&ls_subscription("subscription_expired", "expired", "2026-12-26T12:26:23.000000Z", true)).await;
    f.drain_with_retries().await;
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], CANCELLED);

    // A resume from before the expiry, delivered late, does not bring the deal back.
    f.lemonsqueezy_sends(&ls_subscription("subscription_resumed", "active", "2026-12-02T09:00:00.000000Z", true)).await;
    f.drain_with_retries().await;
    assert_eq!(f.field(STATUS_FIELD).unwrap()["enum_id"], CANCELLED);
}

async fn issued_at(f: &Flow) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar("SELECT issued_at FROM payment_links").fetch_one(&f.app.db.pool).await.unwrap()
}

#[tokio::test]
async fn an_unpaid_link_brings_reminders_on_their_days_once_each() {
    let f = flow().await;
    f.deal_enters_stage().await;
    f.drain().await;
    let issued = issued_at(&f).await;
    let reminders = kommo_pay_scheduler::Reminders::new(f.app.db.pool.clone(), f.config.accounts.clone(), f.config.jobs.clone());
    let day = chrono::Duration::days(1);
    let hour = chrono::Duration::hours(1);

    assert_eq!(reminders.run_once(issued + day * 2).await.unwrap(), 0, "not yet");
    assert_eq!(reminders.run_once(issued + day * 3 + hour).await.unwrap(), 1);
    assert_eq!(reminders.run_once(issued + day * 3 + hour * 2).await.unwrap(), 0, "each reminder once");
    f.drain().await;
    let tasks = f.kommo.tasks();
    assert_eq!(tasks.len(), 1);
    let text = tasks[0]["text"].as_str().unwrap();
    assert!(text.contains("Remind the client about payment: 2,000.00 USD") && text.contains(LINK1) && text.contains("(reminder 1)"), "{text}");
    assert_eq!(tasks[0]["responsible_user_id"], 504141);

    let reminder_bots = || f.kommo.bot_launches().iter().filter(|launch| launch["bot_id"] == 78).count();
    assert_eq!(reminder_bots(), 1, "the reminder's Salesbot messages the client once");

    assert_eq!(reminders.run_once(issued + day * 6 + hour).await.unwrap(), 1);
    assert_eq!(reminders.run_once(issued + day * 30).await.unwrap(), 0, "two at most");
    f.drain().await;
    assert_eq!(f.kommo.tasks().len(), 2);
    assert_eq!(reminder_bots(), 2, "once per reminder number");
    // A retried reminder job (its fact recorded) launches nothing again.
    sqlx::query("UPDATE jobs SET state = 'available', run_at = now() WHERE kind = 'deal.remind'").execute(&f.app.db.pool).await.unwrap();
    f.drain().await;
    assert_eq!(reminder_bots(), 2);
    assert_eq!(f.kommo.tasks().len(), 2);
    assert_eq!(f.app.db.count("SELECT count(*) FROM events WHERE kind = 'payment_link.reminder_bot'").await, 2, "each launch in the log");
}

#[tokio::test]
async fn reminders_stop_once_the_deal_is_paid() {
    let f = flow().await;
    f.deal_enters_stage().await;
    f.drain().await;
    let issued = issued_at(&f).await;
    f.stripe_sends(checkout_completed("evt_paid_before_reminder", "plink_fake1", "pi_test_r", 200000)).await;
    f.drain_with_retries().await;

    let reminders = kommo_pay_scheduler::Reminders::new(f.app.db.pool.clone(), f.config.accounts.clone(), f.config.jobs.clone());
    assert_eq!(reminders.run_once(issued + chrono::Duration::days(4)).await.unwrap(), 0);
    assert!(f.kommo.bot_launches().iter().all(|launch| launch["bot_id"] != 78), "no reminder message after payment");
}

/// A proxy's HTML page answered with 200 is no success: it counts as `status="invalid"` in the
/// provider metrics (not as a 200), the error is on the job, and the create is tried again with
/// the same idempotency key.
#[tokio::test]
async fn a_success_that_is_not_stripes_json_counts_as_invalid_and_is_retried() {
    let f = flow().await;
    let page = "<html><body>502 Bad Gateway</body></html>";
    for _ in 0..3 {
        f.stripe.answer_next_with_page(200, page);
    }
    f.deal_enters_stage().await;
    f.drain().await;

    let error: String = sqlx::query_scalar("SELECT errors -> -1 ->> 'error' FROM jobs WHERE state = 'retryable'").fetch_one(&f.app.db.pool).await.unwrap();
    assert!(error.starts_with("Stripe POST v1/payment_links: Stripe answered 200 with a body that is not its JSON"), "{error}");
    let metrics = f.app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"kommo_pay_provider_requests_total{provider="stripe",endpoint="v1/payment_links",status="invalid"} 3"#), "{metrics}");
    assert!(!metrics.contains(r#"provider="stripe",endpoint="v1/payment_links",status="200""#), "{metrics}");

    f.drain_with_retries().await;
    assert_eq!(f.field(LINK_FIELD).unwrap()["value"], LINK1);
    let keys: Vec<String> = f.link_creates().iter().map(|r| r.idempotency_key.clone().unwrap()).collect();
    assert!(keys.len() == 4 && keys.iter().all(|k| *k == keys[0]), "one key across tries: {keys:?}");
}

/// A deal without a contact still gets its link, without a prefilled email or contact id. (The
/// metadata that carries the contact id goes to the subscription too: `stripe_client.rs`.)
#[tokio::test]
async fn the_contact_rides_in_every_metadata_and_a_deal_without_one_still_gets_its_link() {
    let f = flow().await;
    let mut lead = f.kommo.lead(LEAD).unwrap();
    lead["_embedded"] = json!({ "contacts": [] });
    f.kommo.add_lead(lead);
    f.deal_enters_stage().await;
    f.drain().await;
    assert_eq!(f.field(LINK_FIELD).unwrap()["value"], "https://buy.stripe.com/test_fake1", "no contact, no prefilled email");
    assert!(f.link_creates()[0].params["metadata"].get("kommo_contact_id").is_none());
}
