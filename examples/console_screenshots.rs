//! Screenshots of every console page, from a running quick start with the demo played
//! (`deploy/local/screenshots.sh` does all of it), into `docs/console/*.png` for the README.
//!
//! `cargo run --example console_screenshots -- [BASE_URL] [OUT_DIR]`, with the ops token in
//! `KOMMO_PAY_OPS_TOKEN`; defaults: `http://127.0.0.1:8080`, `docs/console`.

#[allow(dead_code)]
#[path = "../tests/api/browser.rs"]
mod browser;

use browser::Browser;
use fantoccini::Locator;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let base = args.next().unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let out = std::path::PathBuf::from(args.next().unwrap_or_else(|| "docs/console".into()));
    let token = std::env::var("KOMMO_PAY_OPS_TOKEN").expect("KOMMO_PAY_OPS_TOKEN holds the ops token to sign in with");
    std::fs::create_dir_all(&out).expect("the output directory can be made");
    let browser = Browser::start().await;
    // Tall enough for a whole page of the demo's data in one picture.
    browser.client.set_window_size(1280, 1500).await.unwrap();
    let shoot = async |name: &str| {
        let png = browser.client.screenshot().await.expect("a screenshot");
        std::fs::write(out.join(format!("{name}.png")), png).expect("the screenshot is written");
        println!("{}", out.join(format!("{name}.png")).display());
    };

    browser.client.goto(&format!("{base}/console")).await.unwrap();
    shoot("sign-in").await;
    browser.fill("#token", &token).await;
    browser.click("form.sign-in button").await;
    browser.until_text("Signed in as").await;
    shoot("overview").await;

    // The first deal the demo paid and half refunded: its timeline has the most to show.
    browser.client.goto(&format!("{base}/console/events?kind=charge.refunded")).await.unwrap();
    let deal = browser.client.find(Locator::Css("table td a[href^='/console/deals/']")).await.expect("the demo was played: deploy/local/demo.sh");
    deal.click().await.unwrap();
    browser.until_text("Timeline").await;
    shoot("deal").await;

    browser.client.goto(&format!("{base}/console/events")).await.unwrap();
    shoot("events").await;
    browser.client.find(Locator::Css("table td a[href^='/console/events/']")).await.unwrap().click().await.unwrap();
    browser.until_text("Payload").await;
    shoot("event").await;

    browser.client.goto(&format!("{base}/console/dead-letters")).await.unwrap();
    shoot("dead-letters").await;
    browser.click("button[value=matching][formaction='/console/dead-letters/replay']").await;
    browser.until_text("Reason").await;
    shoot("dead-letters-replay").await;

    browser.client.goto(&format!("{base}/console/dead-letters")).await.unwrap();
    browser.client.find(Locator::Css("table td a[href^='/console/jobs/']")).await.unwrap().click().await.unwrap();
    browser.until_text("Arguments").await;
    shoot("job").await;
}
