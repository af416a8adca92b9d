//! The ops console in a real browser: headless Chromium driven over WebDriver (chromedriver),
//! against the real ingest application. `deploy/local/test.sh` installs Debian's `chromium` and
//! `chromium-driver` when they are missing (`deploy/local/browser.sh`).

use fantoccini::Locator;
use serde_json::json;

use crate::browser::Browser;
use crate::helpers::*;

async fn sign_in(browser: &Browser, app: &TestApp, token: &str) {
    browser.client.goto(&format!("{}/console", app.address)).await.unwrap();
    browser.fill("#token", token).await;
    browser.click("form.sign-in button").await;
}

#[tokio::test]
async fn an_operator_signs_in_is_sent_back_without_a_session_and_signs_out() {
    let app = spawn_app().await;
    let browser = Browser::start().await;
    browser.client.goto(&format!("{}/console/dead-letters", app.address)).await.unwrap();
    assert_eq!(browser.path().await, "/console/sign-in?next=%2Fconsole%2Fdead-letters", "unauthenticated: the sign-in page");

    browser.fill("#token", "not-a-token").await;
    browser.click("form.sign-in button").await;
    browser.until_text("That token is not accepted.").await;

    browser.fill("#token", OPS_TOKEN_ALICE).await;
    browser.click("form.sign-in button").await;
    browser.until_text("Signed in as alice").await;
    assert_eq!(browser.path().await, "/console/dead-letters", "back where the operator was going");
    let cookies = browser.client.execute("return document.cookie", vec![]).await.unwrap();
    assert_eq!(cookies, json!(""), "the session cookie is HttpOnly: no script can read it");

    browser.click("form.who button").await;
    browser.until_text("Ops token").await;
    browser.client.goto(&format!("{}/console", app.address)).await.unwrap();
    assert!(browser.path().await.starts_with("/console/sign-in"), "signed out: the session is over");
}

#[tokio::test]
async fn a_forged_form_without_the_csrf_token_is_refused() {
    let app = spawn_app().await;
    let dead = crate::ops::bury(&app.db, 1, "deal.payment", 78, "Kommo answered 400").await;
    let browser = Browser::start().await;
    sign_in(&browser, &app, OPS_TOKEN_ALICE).await;
    browser.until_text("Signed in as alice").await;
    browser.client.goto(&format!("{}/console/jobs/{}", app.address, dead[0])).await.unwrap();
    // The page's own form, with its CSRF token taken out, as a forger's copy would be.
    browser.client.execute("document.querySelector('form.act input[name=csrf]').remove()", vec![]).await.unwrap();
    browser.click("form.act button").await;
    browser.until_text("This form did not come from this console page.").await;
    assert_eq!(app.db.count("SELECT count(*) FROM jobs WHERE state = 'dead'").await, 1, "nothing changed");
}

#[tokio::test]
async fn dead_letters_found_by_filter_are_counted_replayed_and_audited_on_the_deal_and_a_paid_deal_shows_its_payment() {
    let app = spawn_app().await;
    assert_eq!(app.post_signed_stripe(&stripe_event("evt_browser_paid", "checkout.session.completed", 77)).await.status(), 200);
    crate::ops::bury(&app.db, 3, "deal.payment", 78, "Kommo answered 400: status_id: not found").await;
    crate::ops::bury(&app.db, 2, "payment_link.issue", 79, "Stripe answered 500").await;
    let browser = Browser::start().await;
    sign_in(&browser, &app, OPS_TOKEN_ALICE).await;
    browser.until_text("Signed in as alice").await;

    browser.client.goto(&format!("{}/console/dead-letters", app.address)).await.unwrap();
    browser.fill("input[name=kind]", "deal.payment").await;
    browser.click("form.filters button").await;
    browser.until_text("Replay all 3 matching").await;
    browser.click("button[value=matching][formaction='/console/dead-letters/replay']").await;
    browser.until_text("Replay 3 of dead letters with kind \"deal.payment\"?").await;
    assert_eq!(app.db.count("SELECT count(*) FROM jobs WHERE state = 'dead'").await, 5, "the dry run changed nothing");
    browser.fill("input[name=reason]", "stage id fixed").await;
    browser.click("form.act button").await;
    browser.until_text("Done: replayed 3 of 3 selected.").await;
    assert_eq!(app.db.count("SELECT count(*) FROM jobs WHERE state = 'dead'").await, 2, "the other kind is left alone");

    browser.click("a[href='/console/dead-letters']").await;
    browser.until_text("payment_link.issue").await;
    browser.client.goto(&format!("{}/console/deals?account={ACCOUNT}&lead=78", app.address)).await.unwrap();
    browser.until_text("job replayed by alice: stage id fixed").await;

    // A manager's question, answered from the deal's URL in Kommo.
    browser.client.goto(&format!("{}/console/deals", app.address)).await.unwrap();
    browser.fill("input[name=url]", "https://acme.kommo.com/leads/detail/77").await;
    browser.click("form.filters button").await;
    browser.until_text("Deal 77 of acme").await;
    let payment = browser.client.find(Locator::Css("table.timeline td.amount")).await.unwrap().text().await.unwrap();
    assert_eq!(payment, "2,000.00 USD");
}
