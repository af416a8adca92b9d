//! Fakes of the external SaaS APIs, speaking their real wire formats, on loopback port 0.

pub mod accounts;
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

/// `sections` (`[server]`, `[worker]`, …) and one [`accounts::AccountToml::standard`] account
/// whose Kommo (budget 50 requests/s) and Stripe are the fakes at `kommo_url` and `stripe_url`.
pub fn account_config(sections: &str, slug: &str, account_id: i64, kommo_url: &str, stripe_url: &str) -> String {
    format!("{sections}\n{}", accounts::AccountToml::standard(slug, account_id, kommo_url, stripe_url).kommo("requests_per_second = 50"))
}
