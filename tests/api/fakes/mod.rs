//! Fakes of the external SaaS APIs, speaking their real wire formats, on loopback port 0.

pub mod kommo;
pub mod lemonsqueezy;
pub mod stripe;

/// Serves `router` on a free loopback port; returns its base URL.
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{address}")
}
