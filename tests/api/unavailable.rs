use crate::helpers::*;
use sqlx::AssertSqlSafe;

/// Takes the database away from the running app: refuses new connections, ends existing ones.
async fn take_the_database_away(app: &TestApp) -> sqlx::PgConnection {
    let mut admin = app.db.admin().await;
    let name = &app.db.name;
    sqlx::raw_sql(AssertSqlSafe(format!(r#"ALTER DATABASE "{name}" ALLOW_CONNECTIONS false"#))).execute(&mut admin).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1").bind(name).execute(&mut admin).await.unwrap();
    admin
}

#[tokio::test]
async fn when_the_database_is_gone_webhooks_get_503_and_nothing_is_acknowledged() {
    let app = spawn_app().await;
    let body = stripe_event("evt_during_outage", "checkout.session.completed", 9);
    let mut admin = take_the_database_away(&app).await;
    let name = &app.db.name;

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

/// A TCP relay between the app and PostgreSQL that can be cut, as when the database's host goes
/// down: after [`cut`](NetworkCut::cut) open connections are closed and the port refuses new
/// ones. The app's pool then keeps trying to connect until its acquire timeout runs out (a
/// refusal by the server itself, as `ALLOW_CONNECTIONS false` gives, ends an acquire at once and
/// would not show how long an outage makes a delivery wait).
struct NetworkCut {
    address: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl NetworkCut {
    async fn start(database_url: &str) -> NetworkCut {
        let upstream = url::Url::parse(database_url).unwrap();
        let upstream = format!("{}:{}", upstream.host_str().unwrap(), upstream.port().unwrap_or(5432));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (cut, is_cut) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut until_cut = is_cut.clone();
            loop {
                let mut client = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok((client, _)) => client, Err(_) => return },
                    _ = until_cut.wait_for(|cut| *cut) => return, // the listener closes: refused
                };
                let (upstream, mut until_cut) = (upstream.clone(), is_cut.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = until_cut.wait_for(|cut| *cut) => {} // both sockets close
                    }
                });
            }
        });
        NetworkCut { address, cut }
    }

    /// The database URL through the relay.
    fn url(&self, database_url: &str) -> String {
        let mut url = url::Url::parse(database_url).unwrap();
        url.set_port(Some(self.address.port())).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.to_string()
    }

    fn cut(&self) {
        self.cut.send_replace(true);
    }
}

/// Kommo counts an answer after 2 s as a failure and disables the hook after 100 of them in two
/// hours: while the database is unreachable every delivery, however many arrive at once, is
/// answered 503 within the configured `acquire_timeout_ms` (1,000 in the test configuration)
/// and a margin. The bound is the contract, not a benchmark.
#[tokio::test]
async fn while_the_database_is_unreachable_fifty_concurrent_deliveries_each_get_503_within_the_acquire_timeout() {
    let db = TestDb::new().await;
    let network = NetworkCut::start(&db.url).await;
    let config = test_config(&network.url(&db.url), "");
    let app = spawn_app_from(db, &config).await;
    assert_eq!(app.post_signed_stripe(&stripe_event("evt_before", "checkout.session.completed", 1)).await.status(), 200);

    network.cut();
    let bound = std::time::Duration::from_millis(1000 + 100);
    for round in 0..2 {
        let deliveries = (0..50).map(|i| {
            let body = stripe_event(&format!("evt_outage_{round}_{i}"), "checkout.session.completed", i);
            let app = &app;
            async move {
                let started = std::time::Instant::now();
                let status = app.post_signed_stripe(&body).await.status().as_u16();
                (status, started.elapsed())
            }
        });
        let answers = futures_util::future::join_all(deliveries).await;
        let late: Vec<_> = answers.iter().filter(|(_, took)| *took > bound).collect();
        assert!(answers.iter().all(|(status, _)| *status == 503), "round {round}: {answers:?}");
        assert!(late.is_empty(), "round {round}: {} of 50 answers took over {bound:?}: {late:?}", late.len());
    }
}
