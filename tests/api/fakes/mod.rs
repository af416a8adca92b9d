//! Fakes of the external SaaS APIs, speaking their real wire formats, on loopback port 0.

pub mod demo;
pub mod kommo;
pub mod lemonsqueezy;
pub mod stripe;

/// Serves `router` on `address` (port 0: a free one); returns its base URL.
pub async fn serve(router: axum::Router, address: &str) -> String {
    let listener = tokio::net::TcpListener::bind(address).await.unwrap_or_else(|e| panic!("cannot listen on {address}: {e}"));
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{address}")
}

/// A configuration with one account whose Kommo and Stripe are the fakes at `kommo_url` and
/// `stripe_url`: deal fields 901–905, one Stripe trigger "invoice" on stage 67548619 of pipeline
/// 8572511 (`trigger_extra` adds keys to it). `sections` comes first (`[server]`, `[worker]`, …).
/// Secrets come from KOMMO_SECRET, KOMMO_TOKEN, STRIPE_KEY and STRIPE_WHSEC.
pub fn account_config(sections: &str, slug: &str, account_id: i64, kommo_url: &str, stripe_url: &str, trigger_extra: &str) -> String {
    format!(
        r#"
        {sections}
        [[accounts]]
        slug = "{slug}"
        [accounts.kommo]
        account_id = {account_id}
        base_url = "{kommo_url}"
        webhook_secret_env = "KOMMO_SECRET"
        auth = {{ kind = "long_lived_token", token_env = "KOMMO_TOKEN" }}
        requests_per_second = 50
        fields = {{ payment_link = 901, payment_status = 902, payment_date = 903, payment_id = 904, paid_amount = 905, statuses = {{ not_issued = 1, awaiting = 2, paid = 3, overdue = 4, refunded = 5, partially_refunded = 6, cancelled = 7 }} }}
        [accounts.stripe]
        api_base_url = "{stripe_url}"
        secret_key_env = "STRIPE_KEY"
        webhook_secret_envs = ["STRIPE_WHSEC"]
        [[accounts.triggers]]
        name = "invoice"
        pipeline_id = 8572511
        status_id = 67548619
        provider = "stripe"
        {trigger_extra}
        "#
    )
}
