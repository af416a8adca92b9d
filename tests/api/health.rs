use crate::helpers::*;

#[tokio::test]
async fn healthz_and_readyz_answer_when_all_is_well() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<serde_json::Value>().await.unwrap()["schema"], "current");
}

#[tokio::test]
async fn readyz_is_503_until_the_schema_is_migrated() {
    let app = spawn_app_on(TestDb::empty().await, "").await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 503);

    kommo_pay_core::db::migrate(&app.db.pool).await.unwrap();
    assert_eq!(app.get("/readyz").await.status(), 200);
}

#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let app = spawn_app().await;
    let response = app.get("/healthz").await;
    let id = response.headers().get("x-request-id").expect("x-request-id header");
    assert_eq!(id.len(), 36, "a UUID: {id:?}");
}

#[tokio::test]
async fn rejections_are_counted_by_source_account_and_reason() {
    let app = spawn_app().await;
    app.post_stripe(ACCOUNT, "{}", Some("t=1,v1=00")).await;
    app.post_stripe("made-up-account", "{}", None).await;

    let metrics = app.get("/metrics").await.text().await.unwrap();

    assert!(metrics.contains(r#"kommo_pay_webhooks_rejected_total{source="stripe",account="acme",reason="unauthenticated"}"#), "{metrics}");
    assert!(metrics.contains(r#"account="unknown",reason="unknown_account""#), "{metrics}");
    assert!(!metrics.contains("made-up-account"), "a URL's slug must not become a series");
}
