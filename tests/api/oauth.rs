//! Kommo OAuth installation end to end (issue #15): the consent URL's one-time state, Kommo's
//! redirect with a code (through ingest), the stored pair used and rotated, the bad callbacks that
//! store nothing, and the signed revocation hook.

use std::collections::HashMap;
use std::time::Duration;

use kommo_pay_core::config::Config;
use kommo_pay_core::kommo::client::{KommoClient, KommoError};
use kommo_pay_core::kommo::oauth;

use crate::fakes::accounts::AccountToml;
use crate::fakes::kommo::FakeKommo;
use crate::helpers::*;

const CLIENT_ID: &str = "2f0e9a50-5d4a-4b8e-9d1c-1f3b8e7a6c11";
const CLIENT_SECRET: &str = "integration-client-secret-0123456789";
const REDIRECT: &str = "https://pay.agency.example/oauth/kommo/callback";

struct Install {
    app: TestApp,
    kommo: FakeKommo,
    config: Config,
    /// The configuration as written, and its environment, for `kommo-pay` processes.
    text: String,
    env: HashMap<String, String>,
}

/// An account with OAuth and no bootstrap refresh token: nothing but an installation connects it.
async fn install() -> Install {
    let kommo = FakeKommo::start().await;
    kommo.enable_oauth(CLIENT_ID, CLIENT_SECRET, "no-refresh-token-yet", 3600);
    let db = TestDb::new().await;
    let text = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        {account}"#,
        account = AccountToml::new(ACCOUNT, KOMMO_ACCOUNT_ID, &kommo.url).kommo(&format!(
            r#"auth = {{ kind = "oauth", client_id = "{CLIENT_ID}", client_secret_env = "KOMMO_CLIENT_SECRET", redirect_uri = "{REDIRECT}" }}"#
        )),
    );
    let mut env: HashMap<String, String> = test_env(&db.url);
    env.insert("KOMMO_CLIENT_SECRET".into(), CLIENT_SECRET.into());
    let config = Config::parse(&text, "oauth config", &|name| env.get(name).cloned()).unwrap();
    let app = spawn_app_from(db, &config).await;
    Install { app, kommo, config, text, env }
}

impl Install {
    fn account(&self) -> std::sync::Arc<kommo_pay_core::config::Account> {
        self.config.accounts.get(ACCOUNT).unwrap().clone()
    }

    /// `kommo-pay kommo connect`'s consent URL; returns its state.
    async fn consent(&self) -> String {
        let url = oauth::begin(&self.app.db.pool, &self.account()).await.unwrap();
        assert_eq!((url.scheme(), url.host_str(), url.path()), ("https", Some("www.kommo.com"), "/oauth"));
        let query: HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(query["client_id"], CLIENT_ID);
        assert_eq!(query["mode"], "post_message");
        query["state"].clone()
    }

    /// The fake Kommo's host, as its redirect names it (`referer`).
    fn referer(&self) -> String {
        self.kommo.url.trim_start_matches("http://").to_owned()
    }

    /// A whole installation: consent, Kommo hands out `code`, its redirect connects the account.
    async fn installs_with(&self, code: &str) {
        let state = self.consent().await;
        self.kommo.issue_code(code, REDIRECT);
        let (status, page) = self.redirect(&[("code", code), ("state", &state), ("referer", &self.referer())]).await;
        assert_eq!(status, 200, "{page}");
    }

    /// Kommo's redirect to ingest after the admin allowed access.
    async fn redirect(&self, pairs: &[(&str, &str)]) -> (u16, String) {
        let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        let answer = self.app.client.get(format!("{}/oauth/kommo/callback?{query}", self.app.address)).send().await.unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    }

    async fn stored_tokens(&self) -> i64 {
        self.app.db.count("SELECT count(*) FROM kommo_tokens WHERE access_token IS NOT NULL OR refresh_token IS NOT NULL").await
    }

    fn client(&self) -> KommoClient {
        KommoClient::for_account(self.app.db.pool.clone(), &self.account())
    }
}

#[tokio::test]
async fn an_installation_connects_the_account_and_its_pair_is_used_and_rotated() {
    let f = install().await;
    assert!(!oauth::connected(&f.app.db.pool, &f.account()).await.unwrap(), "not connected before");
    let not_yet = f.client().webhooks().await.unwrap_err();
    assert!(not_yet.to_string().contains("kommo-pay kommo connect --account acme"), "{not_yet}");

    let state = f.consent().await;
    f.kommo.issue_code("def50200-code-1", REDIRECT);
    let referer = f.referer();
    let (status, page) = f.redirect(&[("code", "def50200-code-1"), ("state", &state), ("referer", &referer), ("client_id", CLIENT_ID)]).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("is connected"), "{page}");
    assert!(!page.contains(CLIENT_SECRET) && !page.contains("oauth-access"), "no secret on the page");
    assert!(oauth::connected(&f.app.db.pool, &f.account()).await.unwrap());
    assert_eq!(f.app.db.count("SELECT count(*) FROM events WHERE kind = 'kommo.connected' AND account = 'acme'").await, 1, "recorded in the log");

    // The first call uses the installed pair; a refresh rotates it, stored before use.
    let client = f.client();
    client.webhooks().await.unwrap();
    assert_eq!(f.kommo.oauth().refreshes, 0, "the exchanged access token was used as it is");
    client.refresh_ahead(Duration::from_secs(7200)).await.unwrap();
    let oauth_state = f.kommo.oauth();
    assert_eq!(oauth_state.refreshes, 1);
    let stored: String = sqlx::query_scalar("SELECT refresh_token FROM kommo_tokens WHERE account = 'acme'").fetch_one(&f.app.db.pool).await.unwrap();
    assert_eq!(stored, oauth_state.refresh_token, "the rotated refresh token is the stored one");
    client.webhooks().await.unwrap();

    // The same redirect again (a reload, or a replay) is refused and changes nothing.
    let (status, page) = f.redirect(&[("code", "def50200-code-1"), ("state", &state), ("referer", &referer), ("client_id", CLIENT_ID)]).await;
    assert_eq!(status, 400);
    assert!(page.contains("used already"), "{page}");
    assert_eq!(f.kommo.oauth().refreshes, 1);
}

#[tokio::test]
async fn bad_callbacks_are_refused_with_a_reason_and_store_nothing() {
    let f = install().await;
    let referer = f.referer();
    f.kommo.issue_code("good-code", REDIRECT);

    let (status, page) = f.redirect(&[("code", "good-code"), ("state", "0123456789abcdef0123456789abcdef")]).await;
    assert_eq!((status, page.contains("unknown")), (400, true), "an unknown state: {page}");

    let expired = f.consent().await;
    sqlx::query("UPDATE kommo_oauth_states SET created_at = now() - interval '21 minutes' WHERE state = $1")
        .bind(&expired)
        .execute(&f.app.db.pool)
        .await
        .unwrap();
    let (status, page) = f.redirect(&[("code", "good-code"), ("state", &expired), ("referer", &referer)]).await;
    assert_eq!((status, page.contains("expired")), (400, true), "an expired state: {page}");

    let state = f.consent().await;
    let (status, page) = f.redirect(&[("code", "good-code"), ("state", &state), ("referer", &referer), ("client_id", "another-integration")]).await;
    assert_eq!((status, page.contains("another-integration")), (400, true), "a wrong client_id: {page}");

    let state = f.consent().await;
    let (status, page) = f.redirect(&[("code", "good-code"), ("state", &state), ("referer", "someone-else.kommo.com")]).await;
    assert_eq!((status, page.contains("someone-else.kommo.com")), (400, true), "another account's installation: {page}");

    let state = f.consent().await;
    let (status, page) = f.redirect(&[("code", "made-up-code"), ("state", &state), ("referer", &referer)]).await;
    assert_eq!((status, page.contains("refused the authorization code")), (400, true), "a code Kommo refuses: {page}");

    let (status, _) = f.redirect(&[("state", "no code")]).await;
    assert_eq!(status, 400, "no code at all");

    assert_eq!(f.stored_tokens().await, 0, "no token was stored by any of them");
    assert_eq!(f.app.db.count("SELECT count(*) FROM events WHERE kind = 'kommo.connected'").await, 0);
}

#[tokio::test]
async fn the_signed_revocation_hook_disconnects_the_account_and_a_new_installation_reconnects_it() {
    let f = install().await;
    f.installs_with("code-a").await;

    let revoke = |signature: String| {
        let url = format!("{}/oauth/kommo/revoked?client_uuid={CLIENT_ID}&account_id={KOMMO_ACCOUNT_ID}&signature={signature}", f.app.address);
        let client = f.app.client.clone();
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    // Forged (signed with another secret) or unsigned: 401, nothing changes.
    let forged = kommo_pay_core::signature::sign_hex("not-the-secret", &[format!("{CLIENT_ID}|{KOMMO_ACCOUNT_ID}").as_bytes()]);
    assert_eq!(revoke(forged).await, 401);
    assert_eq!(revoke(String::new()).await, 401);
    assert!(oauth::connected(&f.app.db.pool, &f.account()).await.unwrap());
    f.client().webhooks().await.unwrap();

    let signed = kommo_pay_core::signature::sign_hex(CLIENT_SECRET, &[format!("{CLIENT_ID}|{KOMMO_ACCOUNT_ID}").as_bytes()]);
    assert_eq!(revoke(signed).await, 200);
    assert!(!oauth::connected(&f.app.db.pool, &f.account()).await.unwrap());
    assert_eq!(f.stored_tokens().await, 0, "the tokens are gone");
    assert_eq!(f.app.db.count("SELECT count(*) FROM events WHERE kind = 'kommo.access_revoked'").await, 1, "recorded in the log");
    let requests = f.kommo.requests().len();
    let blocked = f.client().webhooks().await.unwrap_err();
    assert!(matches!(blocked, KommoError::Blocked { ref reason, .. } if reason.contains("uninstalled")), "{blocked:?}");
    assert_eq!(f.kommo.requests().len(), requests, "calls stop without reaching Kommo");
    let stats = kommo_pay_core::ops::queue_stats::stats(&f.app.db.pool).await.unwrap();
    assert!(
        matches!(stats.blocked.as_slice(), [b] if b.account == ACCOUNT && b.reason.as_deref().is_some_and(|r| r.contains("kommo connect"))),
        "{:?}",
        stats.blocked
    );
    let metrics = f.app.client.get(format!("{}/metrics", f.app.address)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"kommo_pay_provider_blocked{provider="kommo",account="acme"} 1"#), "{metrics}");

    // Installing again lifts the block its uninstall set.
    f.installs_with("code-b").await;
    f.client().webhooks().await.unwrap();
}

/// The operator's side, through the binary: `config check` says the account is not connected,
/// `kommo connect` prints the consent link, and `kommo connect --code` exchanges a copied code.
#[tokio::test]
async fn the_cli_says_who_is_not_connected_prints_the_consent_link_and_exchanges_a_copied_code() {
    let f = install().await;
    let path = std::env::temp_dir().join(format!("kommo-pay-oauth-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, &f.text).unwrap();
    // Async: the fake Kommo answers on this test's runtime while the binary runs.
    let run = async |args: &[&str]| {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kommo-pay"))
            .args(args)
            .arg("--config")
            .arg(&path)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&f.env)
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };

    assert!(run(&["config", "check"]).await.contains("acme: OAuth, not connected yet: run `kommo-pay kommo connect --account acme`"));
    let link = run(&["kommo", "connect", "--account", ACCOUNT]).await;
    let link = url::Url::parse(link.trim()).expect("a URL");
    let state = link.query_pairs().find(|(k, _)| k == "state").map(|(_, v)| v.into_owned()).expect("a state");
    let stored: Option<String> =
        sqlx::query_scalar("SELECT account FROM kommo_oauth_states WHERE state = $1").bind(&state).fetch_optional(&f.app.db.pool).await.unwrap();
    assert_eq!(stored.as_deref(), Some(ACCOUNT), "the state is bound to the account");

    f.kommo.issue_code("copied-code", REDIRECT);
    let referer = f.referer();
    assert!(run(&["kommo", "connect", "--account", ACCOUNT, "--code", "copied-code", "--referer", &referer]).await.contains("account acme is connected"));
    assert!(!run(&["config", "check"]).await.contains("not connected"));
    std::fs::remove_file(&path).unwrap();
}

/// An account Kommo itself blocked (403) and then uninstalled: the block keeps Kommo's reason,
/// and connecting again does not lift it (an operator's unblock does).
#[tokio::test]
async fn reconnecting_never_lifts_a_block_kommo_set() {
    let f = install().await;
    f.installs_with("code-a").await;
    let pool = &f.app.db.pool;
    kommo_pay_core::rate_limit::block_account(pool, kommo_pay_core::provider::Provider::Kommo, &ACCOUNT.into(), "403 from GET api/v4/leads: blocked")
        .await
        .unwrap();
    oauth::revoke(pool, &f.account()).await.unwrap();

    f.installs_with("code-b").await;
    let reason: Option<String> = sqlx::query_scalar("SELECT blocked_reason FROM api_limits WHERE account = 'acme'").fetch_one(pool).await.unwrap();
    assert_eq!(reason.as_deref(), Some("403 from GET api/v4/leads: blocked"), "Kommo's block stays for an operator");
}
