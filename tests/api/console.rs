//! The ops console (`/console`) over HTTP: sign-in and sessions, CSRF, every page's answers, and
//! that no configured secret ever appears in a page. The browser tests are in `console_browser.rs`.

use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};

use crate::helpers::*;

/// A client that shows redirects instead of following them.
fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// `request` with `fields` as its form body, as a browser sends a form.
trait FormBody {
    fn form_fields(self, fields: &[(&str, &str)]) -> Self;
}

impl FormBody for reqwest::RequestBuilder {
    fn form_fields(self, fields: &[(&str, &str)]) -> Self {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        self.header("Content-Type", "application/x-www-form-urlencoded").body(body)
    }
}

/// The value of cookie `name` a response sets.
fn set_cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get_all(SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).find(|v| v.starts_with(&format!("{name}=")))
}

fn cookie_value(set_cookie: &str) -> &str {
    set_cookie.split(';').next().unwrap().split_once('=').unwrap().1
}

/// The value of the first hidden `csrf` field of a page.
fn csrf_of(page: &str) -> String {
    let at = page.find(r#"name="csrf" value=""#).unwrap_or_else(|| panic!("no CSRF field in the page:\n{page}")) + r#"name="csrf" value=""#.len();
    page[at..].split('"').next().unwrap().to_owned()
}

pub(crate) struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers.get(LOCATION).map_or("", |v| v.to_str().unwrap())
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    Answer { status: response.status().as_u16(), headers: response.headers().clone(), body: response.text().await.unwrap() }
}

/// The sign-in form's cookie and token, as a browser gets them from the sign-in page.
async fn sign_in_form(app: &TestApp) -> (String, String) {
    let page = answer(client().get(format!("{}/console/sign-in", app.address)).send().await.unwrap()).await;
    assert_eq!(page.status, 200);
    let cookie = cookie_value(set_cookie(&page.headers, "kommo_pay_sign_in").expect("the sign-in page sets its form cookie")).to_owned();
    (cookie, csrf_of(&page.body))
}

async fn submit_token(app: &TestApp, token: &str) -> Answer {
    let (cookie, csrf) = sign_in_form(app).await;
    let form = [("token", token), ("csrf", &csrf), ("next", "/console/dead-letters")];
    answer(
        client()
            .post(format!("{}/console/sign-in", app.address))
            .header("Cookie", format!("kommo_pay_sign_in={cookie}"))
            .form_fields(&form)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// A signed-in operator, as its cookie and its forms' token.
pub(crate) struct Session {
    pub cookie: String,
    pub csrf: String,
    /// The server it was started on.
    pub base: String,
}

pub(crate) async fn sign_in(app: &TestApp, token: &str) -> Session {
    let signed = submit_token(app, token).await;
    assert_eq!(signed.status, 303, "{}", signed.body);
    let cookie = cookie_value(set_cookie(&signed.headers, "kommo_pay_session").expect("a session cookie")).to_owned();
    let mut session = Session { cookie, csrf: String::new(), base: app.address.clone() };
    session.csrf = csrf_of(&session.get("/console").await.body);
    session
}

impl Session {
    pub async fn get(&self, path: &str) -> Answer {
        answer(client().get(format!("{}{path}", self.base)).header("Cookie", format!("kommo_pay_session={}", self.cookie)).send().await.unwrap()).await
    }

    /// Posts `fields` and this session's CSRF token.
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        form.push(("csrf", &self.csrf));
        self.post_exactly(path, &form).await
    }

    async fn post_exactly(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        answer(
            client()
                .post(format!("{}{path}", self.base))
                .header("Cookie", format!("kommo_pay_session={}", self.cookie))
                .form_fields(form)
                .send()
                .await
                .unwrap(),
        )
        .await
    }
}

/// A paid deal (lead 77: a Stripe checkout of 2,000.00 USD) and two dead letters of lead 78.
async fn some_history(app: &TestApp) -> (String, Vec<i64>) {
    assert_eq!(app.post_signed_stripe(&stripe_event("evt_console_paid", "checkout.session.completed", 77)).await.status(), 200);
    let event: uuid::Uuid = sqlx::query_scalar("SELECT id FROM events WHERE dedup_key = 'evt_console_paid'").fetch_one(&app.db.pool).await.unwrap();
    let dead = crate::ops::bury(&app.db, 2, "deal.payment", 78, "Kommo answered 400: status_id: not found (NotFound)").await;
    (event.to_string(), dead)
}

/// Every page of the console, with the data of [`some_history`].
fn pages(event: &str, job: i64) -> Vec<String> {
    [
        "/console".to_owned(),
        "/console/deals".to_owned(),
        format!("/console/deals/{ACCOUNT}/77"),
        format!("/console/deals/{ACCOUNT}/77/history.csv"),
        format!("/console/deals/{ACCOUNT}/77/history.json"),
        "/console/events".to_owned(),
        format!("/console/events?account={ACCOUNT}&source=stripe"),
        format!("/console/events/{event}"),
        "/console/dead-letters".to_owned(),
        "/console/dead-letters?kind=deal.payment&error=status_id".to_owned(),
        format!("/console/jobs/{job}"),
    ]
    .into()
}

#[tokio::test]
async fn signed_out_every_page_sends_to_sign_in_and_every_form_too() {
    let app = spawn_app().await;
    let (event, dead) = some_history(&app).await;
    let nobody = Session { cookie: "not-a-session".into(), csrf: String::new(), base: app.address.clone() };
    for path in pages(&event, dead[0]) {
        let answer = nobody.get(&path).await;
        assert_eq!(answer.status, 303, "{path}");
        let next: String = form_urlencoded::byte_serialize(path.as_bytes()).collect();
        assert_eq!(answer.location(), format!("/console/sign-in?next={next}"), "{path}");
    }
    for path in ["/console/dead-letters/replay", "/console/dead-letters/discard", "/console/sign-out", &format!("/console/events/{event}/replay")] {
        let answer = nobody.post(path, &[("ids", &dead[0].to_string()), ("confirm", "yes"), ("reason", "r")]).await;
        assert_eq!((answer.status, answer.location()), (303, "/console/sign-in?next=%2Fconsole"), "{path}");
    }
    assert_eq!(app.db.count("SELECT count(*) FROM jobs WHERE state = 'dead'").await, 2, "nothing changed");
}

#[tokio::test]
async fn a_token_signs_in_with_a_strict_http_only_cookie_and_a_wrong_one_says_nothing_more() {
    let app = spawn_app().await;
    let wrong = submit_token(&app, "not-the-token-0123456789abcdef012345").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("That token is not accepted."), "{}", wrong.body);
    assert!(set_cookie(&wrong.headers, "kommo_pay_session").is_none());

    let signed = submit_token(&app, OPS_TOKEN_ALICE).await;
    assert_eq!((signed.status, signed.location()), (303, "/console/dead-letters"), "back where the operator was going");
    let cookie = set_cookie(&signed.headers, "kommo_pay_session").unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP here: a Secure cookie would never come back");
    let session = Session { cookie: cookie_value(cookie).to_owned(), csrf: String::new(), base: app.address.clone() };
    let overview = session.get("/console").await;
    assert_eq!(overview.status, 200);
    assert!(overview.body.contains("Signed in as <strong>alice</strong>"), "{}", overview.body);
    let stored: (String, i64) = sqlx::query_as("SELECT operator, length(id_hash)::int8 FROM console_sessions").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(stored, ("alice".to_owned(), 32), "the database holds the cookie's hash, not the cookie");

    // Behind a TLS-terminating proxy the cookie is Secure.
    let (form_cookie, csrf) = sign_in_form(&app).await;
    let proxied = client()
        .post(format!("{}/console/sign-in", app.address))
        .header("Cookie", format!("kommo_pay_sign_in={form_cookie}"))
        .header("X-Forwarded-Proto", "https")
        .form_fields(&[("token", OPS_TOKEN_BOB), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert!(set_cookie(proxied.headers(), "kommo_pay_session").unwrap().ends_with("; Secure"));

    // A sign-in form posted from elsewhere (without the form's cookie) is refused.
    let forged = client().post(format!("{}/console/sign-in", app.address)).form_fields(&[("token", OPS_TOKEN_ALICE), ("csrf", &csrf)]).send().await.unwrap();
    assert_eq!(forged.status(), 403);
    assert!(set_cookie(forged.headers(), "kommo_pay_session").is_none());
    // Somewhere else after sign-in is never another site.
    let (form_cookie, csrf) = sign_in_form(&app).await;
    let elsewhere = client()
        .post(format!("{}/console/sign-in", app.address))
        .header("Cookie", format!("kommo_pay_sign_in={form_cookie}"))
        .form_fields(&[("token", OPS_TOKEN_ALICE), ("csrf", &csrf), ("next", "//evil.example/console")])
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.headers()[LOCATION], "/console");
}

#[tokio::test]
async fn repeated_wrong_tokens_are_slowed_down() {
    let app = spawn_app().await;
    for _ in 0..3 {
        assert_eq!(submit_token(&app, "wrong").await.status, 401);
    }
    // Three failures: the next attempt waits 1 s before its token is even compared.
    let started = Instant::now();
    assert_eq!(submit_token(&app, "wrong").await.status, 401);
    assert!(started.elapsed() >= Duration::from_secs(1), "the fourth wrong token came back after {:?}", started.elapsed());
}

#[tokio::test]
async fn every_page_answers_signed_in_and_none_shows_a_secret() {
    let app = spawn_app().await;
    let (event, dead) = some_history(&app).await;
    let session = sign_in(&app, OPS_TOKEN_ALICE).await;
    let secrets: Vec<String> = test_env(&app.db.url).into_iter().filter(|(name, _)| name != "DATABASE_URL").map(|(_, value)| value).collect();
    for path in pages(&event, dead[0]) {
        let answer = session.get(&path).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        for secret in &secrets {
            assert!(!answer.body.contains(secret.as_str()), "{path} shows a configured secret");
        }
        let policy = answer.headers["content-security-policy"].to_str().unwrap();
        assert!(policy.starts_with("default-src 'none'") && !policy.contains("script-src"), "{path}: {policy}");
        assert_eq!(answer.headers["cache-control"], "no-store", "{path}");
    }
    let deal = session.get(&format!("/console/deals/{ACCOUNT}/77")).await.body;
    assert!(deal.contains("2,000.00 USD"), "the payment with amount and currency:\n{deal}");
    let csv = session.get(&format!("/console/deals/{ACCOUNT}/77/history.csv")).await;
    assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
    assert!(csv.body.contains("checkout.session.completed"), "{}", csv.body);

    let found = session.get("/console/deals?url=https%3A%2F%2Facme.kommo.com%2Fleads%2Fdetail%2F77").await;
    assert_eq!((found.status, found.location()), (303, "/console/deals/acme/77"), "a pasted Kommo deal URL finds its deal");
    let found = session.get(&format!("/console/deals?account={ACCOUNT}&lead=77")).await;
    assert_eq!((found.status, found.location()), (303, "/console/deals/acme/77"));

    for (path, status) in [
        (format!("/console/deals/{ACCOUNT}/123456"), 404),
        ("/console/deals/nowhere/77".to_owned(), 404),
        (format!("/console/deals/{ACCOUNT}/seven"), 400),
        (format!("/console/events/{}", uuid::Uuid::now_v7()), 404),
        ("/console/events/not-an-id".to_owned(), 400),
        ("/console/events?source=paypal".to_owned(), 400),
        ("/console/jobs/999999".to_owned(), 404),
        ("/console/jobs/x".to_owned(), 400),
        ("/console/dead-letters?lead=x".to_owned(), 400),
        ("/console/deals?url=https%3A%2F%2Fnowhere.kommo.com%2Fleads%2Fdetail%2F7".to_owned(), 404),
        ("/console/dead-letters/runs/not-a-run".to_owned(), 404),
    ] {
        let answer = session.get(&path).await;
        assert_eq!(answer.status, status, "{path}: {}", answer.body);
        assert!(answer.body.contains("class=\"error\""), "{path} says what was wrong");
    }
}

#[tokio::test]
async fn a_form_without_its_csrf_token_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let (event, dead) = some_history(&app).await;
    let session = sign_in(&app, OPS_TOKEN_ALICE).await;
    let other = sign_in(&app, OPS_TOKEN_BOB).await;
    let id = dead[0].to_string();
    let selection = [("ids", id.as_str()), ("confirm", "yes"), ("reason", "forged")];
    for csrf in [None, Some("0000"), Some(other.csrf.as_str())] {
        let mut form = selection.to_vec();
        form.extend(csrf.map(|token| ("csrf", token)));
        for path in ["/console/dead-letters/replay", "/console/dead-letters/discard", &format!("/console/events/{event}/replay"), "/console/sign-out"] {
            let answer = session.post_exactly(path, &form).await;
            assert_eq!(answer.status, 403, "{path} with {csrf:?}");
        }
    }
    assert_eq!(app.db.count("SELECT count(*) FROM jobs WHERE state = 'dead'").await, 2);
    assert_eq!(app.db.count("SELECT count(*) FROM events WHERE kind IN ('job.replayed', 'job.discarded', 'event.replayed')").await, 0);
    assert_eq!(session.get("/console").await.status, 200, "still signed in: the forged sign-out did nothing");
}

#[tokio::test]
async fn dead_letters_are_counted_first_then_replayed_with_a_reason_on_the_deals_timeline() {
    let app = spawn_app().await;
    let (_, dead) = some_history(&app).await;
    let session = sign_in(&app, OPS_TOKEN_ALICE).await;
    let dry = session.post("/console/dead-letters/replay", &[("scope", "matching"), ("kind", "deal.payment"), ("error", "status_id")]).await;
    assert_eq!(dry.status, 200, "{}", dry.body);
    assert!(dry.body.contains(r#"<strong class="matched">2</strong>"#), "the count first:\n{}", dry.body);
    assert_eq!(app.db.count("SELECT count(*) FROM jobs WHERE state = 'dead'").await, 2, "a dry run changes nothing");

    let no_reason = session.post("/console/dead-letters/replay", &[("scope", "matching"), ("kind", "deal.payment"), ("confirm", "yes")]).await;
    assert_eq!(no_reason.status, 400);
    assert!(no_reason.body.contains("a reason is required"), "{}", no_reason.body);

    let run =
        session.post("/console/dead-letters/replay", &[("scope", "matching"), ("kind", "deal.payment"), ("confirm", "yes"), ("reason", "stage fixed")]).await;
    assert_eq!(run.status, 303, "{}", run.body);
    let progress = run.location().to_owned();
    assert!(progress.starts_with("/console/dead-letters/runs/"), "{progress}");
    eventually(Duration::from_secs(10), "the run to finish", || async { session.get(&progress).await.body.contains("class=\"finished\"") }).await;
    let finished = session.get(&progress).await.body;
    assert!(finished.contains(r#"<strong class="done">2</strong> of 2"#), "{finished}");
    assert_eq!(app.db.count("SELECT count(*) FROM jobs WHERE state = 'replayed'").await, 2);
    let operator: String =
        sqlx::query_scalar("SELECT payload ->> 'operator' FROM events WHERE kind = 'job.replayed' LIMIT 1").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(operator, "alice", "the token's name is the operator the log records");
    let deal = session.get(&format!("/console/deals/{ACCOUNT}/78")).await.body;
    assert!(deal.contains("job replayed by alice: stage fixed"), "{deal}");

    // One job, from its own page's button: counted, then discarded.
    let [first, second] = dead[..] else { panic!() };
    let job = session.get(&format!("/console/jobs/{}", first + 2)).await;
    assert_eq!(job.status, 200, "the replay's new job has a page");
    assert!(job.body.contains(&format!("job {first}")), "it names the job it replays");
    sqlx::query("UPDATE jobs SET state = 'dead' WHERE id = $1").bind(second).execute(&app.db.pool).await.unwrap();
    let dry = session.post("/console/dead-letters/discard", &[("ids", &second.to_string())]).await;
    assert!(dry.body.contains(r#"<strong class="matched">1</strong>"#), "{}", dry.body);
    let done = session.post("/console/dead-letters/discard", &[("ids", &second.to_string()), ("confirm", "yes"), ("reason", "duplicate")]).await;
    assert_eq!(done.status, 303);
    eventually(Duration::from_secs(10), "the discard", || async { app.db.count("SELECT count(*) FROM jobs WHERE state = 'discarded'").await == 1 }).await;
}

#[tokio::test]
async fn an_event_is_replayed_with_a_reason_and_the_page_of_its_record_follows() {
    let app = spawn_app().await;
    let (event, _) = some_history(&app).await;
    let session = sign_in(&app, OPS_TOKEN_BOB).await;
    let replayed = session.post(&format!("/console/events/{event}/replay"), &[("reason", "after the fix")]).await;
    assert_eq!(replayed.status, 303, "{}", replayed.body);
    let record = session.get(replayed.location()).await;
    assert_eq!(record.status, 200);
    assert!(record.body.contains("event.replayed") && record.body.contains("after the fix"), "{}", record.body);
}

#[tokio::test]
async fn sign_out_idle_time_and_a_removed_token_each_end_a_session() {
    let app = spawn_app().await;
    let alice = sign_in(&app, OPS_TOKEN_ALICE).await;
    let bob = sign_in(&app, OPS_TOKEN_BOB).await;

    let out = alice.post("/console/sign-out", &[]).await;
    assert_eq!((out.status, out.location()), (303, "/console/sign-in"));
    assert!(set_cookie(&out.headers, "kommo_pay_session").unwrap().contains("Max-Age=0"), "the cookie is cleared");
    assert_eq!(alice.get("/console").await.status, 303, "the signed-out cookie no longer works");

    // Bob's token is removed from the configuration: his session ends at its next request.
    let env = test_env(&app.db.url);
    let text = test_config_text("").replace(r#", { name = "bob", token_env = "OPS_TOKEN_BOB" }"#, "");
    let config = kommo_pay_core::config::Config::parse(&text, "test", &|name| env.get(name).cloned()).unwrap();
    let pool = kommo_pay_core::db::connect(&config.database).await.unwrap();
    let restarted = kommo_pay_ingest::Application::build(&config, pool).await.unwrap();
    let base = format!("http://{}", restarted.local_addr());
    tokio::spawn(restarted.run_until_stopped(std::future::pending()));
    let bob = Session { base, ..bob };
    assert_eq!(bob.get("/console").await.status, 303);
    assert_eq!(app.db.count("SELECT count(*) FROM console_sessions WHERE operator = 'bob'").await, 0, "and it is gone");

    // Idle past the configured time: the session ends.
    let again = sign_in(&app, OPS_TOKEN_ALICE).await;
    assert_eq!(again.get("/console").await.status, 200);
    sqlx::query("UPDATE console_sessions SET last_seen_at = now() - interval '31 minutes'").execute(&app.db.pool).await.unwrap();
    assert_eq!(again.get("/console").await.status, 303);
}

#[tokio::test]
async fn the_overview_shows_each_accounts_health_and_unblocks_a_blocked_account() {
    let app = spawn_app().await;
    let session = sign_in(&app, OPS_TOKEN_ALICE).await;
    kommo_pay_core::rate_limit::block_account(
        &app.db.pool,
        kommo_pay_core::provider::Provider::Kommo,
        &ACCOUNT.into(),
        "Kommo answered 403: the integration is blocked",
    )
    .await
    .unwrap();
    kommo_pay_core::ops::accounts::record_webhook_check(&app.db.pool, KOMMO_ONLY_ACCOUNT, &["4242".to_owned()]).await.unwrap();
    sqlx::query("INSERT INTO reconcile_cursors (account, provider, read_until) VALUES ($1, 'stripe', now() - interval '90 seconds')")
        .bind(ACCOUNT)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let overview = session.get("/console").await.body;
    for shown in [
        "kommo blocked since",
        "Kommo answered 403: the integration is blocked",
        "1 disabled by Kommo: 4242",
        "stripe: 90 s behind",
        "long-lived token",
        "0.0 / 5",
    ] {
        assert!(overview.contains(shown), "the overview shows {shown:?}:\n{overview}");
    }
    assert!(overview.contains("Scheduler leader: <strong class=\"bad\">none"), "no scheduler runs here");
    // Requests sent for the account count against its budget (those of the last ten seconds).
    let budget =
        kommo_pay_core::rate_limit::RateLimiter::new(app.db.pool.clone(), kommo_pay_core::provider::Provider::Kommo, &KOMMO_ONLY_ACCOUNT.into(), 1000.0);
    for _ in 0..20 {
        budget.acquire().await.unwrap();
    }
    let health = kommo_pay_core::ops::accounts::health(&app.db.pool, &test_config(&app.db.url, "").accounts).await.unwrap();
    let rate = health.iter().find(|h| h.account == KOMMO_ONLY_ACCOUNT).unwrap().kommo_requests_per_second;
    assert!(rate >= 2.0, "20 requests in the last ten seconds are at least 2 per second: {rate}");

    let refused = session.post(&format!("/console/accounts/{ACCOUNT}/unblock"), &[("provider", "kommo")]).await;
    assert_eq!(refused.status, 400, "a reason is required");
    let unblocked =
        session.post(&format!("/console/accounts/{ACCOUNT}/unblock"), &[("provider", "kommo"), ("reason", "admin re-enabled the integration")]).await;
    assert_eq!((unblocked.status, unblocked.location()), (303, "/console"));
    assert_eq!(app.db.count("SELECT count(*) FROM api_limits WHERE blocked_at IS NOT NULL").await, 0);
    let operator: String =
        sqlx::query_scalar("SELECT payload ->> 'operator' FROM events WHERE kind = 'provider.unblocked'").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(operator, "alice");
    assert!(!session.get("/console").await.body.contains("blocked since"));
}
