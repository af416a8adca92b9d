//! Headless Chromium over WebDriver, for the console's browser tests and its screenshots
//! (`examples/console_screenshots.rs` includes this file): Debian's `chromium` and
//! `chromium-driver`, which `deploy/local/browser.sh` installs.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const NO_BROWSER: &str = "\n\nThe console's browser tests need Debian's chromium and chromium-driver\n\
    (/usr/bin/chromium, /usr/bin/chromedriver). `deploy/local/test.sh` installs them, or run\n\
    `deploy/local/browser.sh` yourself.\n\n";

/// A headless Chromium session and the chromedriver serving it (killed when dropped).
pub struct Browser {
    pub client: Client,
    driver: Child,
    /// chromedriver's port, and the session it runs for us.
    port: u16,
    session: String,
    _profile: TempDir,
}

/// A directory removed when dropped: the browser's empty profile.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Browser {
    /// Ends the WebDriver session, which makes chromedriver quit its Chromium, then chromedriver.
    /// Blocking and by hand (a drop cannot await): a test that panicked leaves no browser behind.
    fn drop(&mut self) {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!("DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", self.session);
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    pub async fn start() -> Browser {
        assert!(std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists(), "{NO_BROWSER}");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}{NO_BROWSER}"));
        let profile = TempDir(std::env::temp_dir().join(format!("kommo-pay-chromium-{}", uuid::Uuid::new_v4())));
        // The flags keep Chromium off the network it has no use for here (and that this machine's
        // closed network refuses, many connections at a time).
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain([format!("--user-data-dir={}", profile.0.display())])
        .collect::<Vec<_>>();
        let capabilities = json!({ "goog:chromeOptions": { "binary": CHROMIUM, "args": args } });
        let capabilities = capabilities.as_object().unwrap().clone();
        let webdriver = format!("http://127.0.0.1:{port}");
        let mut browser = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while browser.is_none() {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new()).capabilities(capabilities.clone()).connect(&webdriver).await {
                Ok(client) => browser = Some(client),
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "chromedriver did not start a Chromium session: {e}{NO_BROWSER}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let client = browser.unwrap();
        let session = client.session_id().await.ok().flatten().expect("a WebDriver session has an id");
        Browser { client, driver, port, session, _profile: profile }
    }

    /// The page's text; empty while a page is being replaced by the next (a click that
    /// submits a form returns before the next page is there).
    pub async fn text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        }
    }

    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    pub async fn click(&self, css: &str) {
        self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}")).click().await.unwrap();
    }

    /// Polls the page until its text contains `wanted`.
    pub async fn until_text(&self, wanted: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.text().await;
            if text.contains(wanted) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "the page never showed {wanted:?}; it shows:\n{text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
