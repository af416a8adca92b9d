use crate::helpers::*;
use sqlx::AssertSqlSafe;

#[tokio::test]
async fn when_the_database_is_gone_webhooks_get_503_and_nothing_is_acknowledged() {
    let app = spawn_app().await;
    let body = stripe_event("evt_during_outage", "checkout.session.completed", 9);

    // Take the database away from the running app: refuse new connections, end existing ones.
    let mut admin = app.db.admin().await;
    let name = &app.db.name;
    sqlx::raw_sql(AssertSqlSafe(format!(r#"ALTER DATABASE "{name}" ALLOW_CONNECTIONS false"#))).execute(&mut admin).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1").bind(name).execute(&mut admin).await.unwrap();

    let response = app.post_signed_stripe(&body).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers().get("retry-after").unwrap(), "5");
    assert_eq!(app.get("/readyz").await.status(), 503);

    // The database returns: nothing was stored, and Stripe's retries get through. (Each pooled
    // connection that died with the outage fails one statement, answered 503, and is dropped.)
    sqlx::raw_sql(AssertSqlSafe(format!(r#"ALTER DATABASE "{name}" ALLOW_CONNECTIONS true"#))).execute(&mut admin).await.unwrap();
    assert_eq!(app.events().await, 0, "a 503 acknowledged nothing");
    let mut statuses = Vec::new();
    for _retry in 0..10 {
        let status = app.post_signed_stripe(&body).await.status().as_u16();
        statuses.push(status);
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{statuses:?}");
    }
    assert_eq!(statuses.last(), Some(&200), "retries after the outage: {statuses:?}");
    assert_eq!((app.events().await, app.jobs().await), (1, 1));
}
