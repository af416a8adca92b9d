//! Scheduler leadership (exactly one leads; when it dies, another takes over) and housekeeping.

use std::time::Duration;

use kommo_pay_scheduler::{Housekeeping, Leadership};

use crate::fakes::kommo::FakeKommo;
use crate::fakes::stripe::FakeStripe;
use crate::helpers::*;

#[tokio::test]
async fn one_scheduler_leads_and_another_takes_over_when_it_dies() {
    let db = TestDb::new().await;
    let check = Duration::from_millis(50);
    let first = Leadership::spawn(&db.pool, check);
    eventually(Duration::from_secs(10), "the first scheduler leads", || async { first.is_leader() }).await;
    let second = Leadership::spawn(&db.pool, check);

    // Over many of the second's checks, never two leaders.
    for _ in 0..20 {
        assert!(!(first.is_leader() && second.is_leader()), "two leaders");
        tokio::time::sleep(check).await;
    }
    assert!(first.is_leader() && !second.is_leader());

    drop(first); // the process dies: its connection, and the lock, go with it
    eventually(Duration::from_secs(10), "the second scheduler takes over", || async { second.is_leader() }).await;
}

#[tokio::test]
async fn two_scheduler_processes_one_leads_and_the_other_takes_over_when_it_is_killed() {
    let kommo = FakeKommo::start().await;
    let stripe = FakeStripe::start().await;
    let db = TestDb::new().await;
    let sections = "[log]\nfilter = \"warn\"\n[scheduler]\nleader_check_secs = 1\nreconcile_interval_secs = 1";
    let (path, env) = account_config_file(sections, &db.url, &kommo.url, &stripe.url);
    let leader = async || -> Option<String> {
        sqlx::query_scalar(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()",
        )
        .fetch_optional(&db.pool)
        .await
        .unwrap()
    };
    let named = |child: &std::process::Child| Some(format!("kommo-pay scheduler pid {}", child.id()));
    let following = async |child: &std::process::Child| -> bool {
        let name = named(child).unwrap();
        let connected: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1").bind(&name).fetch_one(&db.pool).await.unwrap();
        connected == 1
    };
    let rounds = "SELECT count(*) FROM reconcile_cursors";

    let mut first = start_role("scheduler", &path, &env);
    eventually(Duration::from_secs(30), "the first scheduler leads and reconciles", || async { leader().await == named(&first) && db.count(rounds).await > 0 })
        .await;
    let mut second = start_role("scheduler", &path, &env);
    eventually(Duration::from_secs(30), "the second scheduler is connected", || async { following(&second).await }).await;
    assert_eq!(leader().await, named(&first), "the first still leads; the second follows");

    first.kill().unwrap(); // SIGKILL: no goodbye; the lock dies with its connection
    first.wait().unwrap();
    sqlx::query("DELETE FROM reconcile_cursors").execute(&db.pool).await.unwrap();
    eventually(Duration::from_secs(30), "the second scheduler takes over and reconciles", || async {
        leader().await == named(&second) && db.count(rounds).await > 0
    })
    .await;
    second.kill().unwrap();
    second.wait().unwrap();
    std::fs::remove_file(&path).ok();
}

#[tokio::test]
async fn housekeeping_prunes_old_finished_jobs_and_keeps_the_rest_and_every_event() {
    let db = TestDb::new().await;
    let now = chrono::Utc::now();
    let event = uuid::Uuid::now_v7();
    sqlx::query("INSERT INTO events (id, account, source, kind, dedup_key, payload) VALUES ($1, 'acme', 'stripe', 'x', 'k', '{}')")
        .bind(event)
        .execute(&db.pool)
        .await
        .unwrap();
    let job = |state: &'static str, age_days: i64| {
        sqlx::query_scalar::<_, i64>(
            "INSERT INTO jobs (kind, account, event_id, max_attempts, state, finished_at) VALUES ('k', 'acme', $1, 1, $2, $3) RETURNING id",
        )
        .bind(event)
        .bind(state)
        .bind(now - chrono::Duration::days(age_days))
        .fetch_one(&db.pool)
    };
    job("completed", 8).await.unwrap();
    job("discarded", 30).await.unwrap();
    let recent = job("completed", 6).await.unwrap();
    let dead = job("dead", 30).await.unwrap();
    let replayed = job("completed", 30).await.unwrap();
    let replay = job("available", 0).await.unwrap();
    sqlx::query("UPDATE jobs SET replay_of = $1 WHERE id = $2").bind(replayed).bind(replay).execute(&db.pool).await.unwrap();

    let env = test_env(&db.url);
    let no_accounts = kommo_pay_core::config::Config::parse("", "empty", &|name| env.get(name).cloned()).unwrap().accounts;
    let housekeeping =
        Housekeeping::new(db.pool.clone(), kommo_pay_core::clients::for_accounts(&db.pool, &no_accounts), chrono::Duration::days(7), Duration::from_secs(3600));
    assert_eq!(housekeeping.run_once(now).await.unwrap(), 2);
    let mut left: Vec<i64> = sqlx::query_scalar("SELECT id FROM jobs ORDER BY id").fetch_all(&db.pool).await.unwrap();
    left.sort();
    assert_eq!(left, [recent, dead, replayed, replay]);
    assert_eq!(db.count("SELECT count(*) FROM events").await, 1, "the log keeps everything");
    assert_eq!(housekeeping.run_once(now).await.unwrap(), 0);
}

#[tokio::test]
async fn housekeeping_refreshes_oauth_tokens_of_idle_accounts_before_they_expire() {
    let db = TestDb::new().await;
    let kommo = FakeKommo::start().await;
    kommo.enable_oauth("integration-uuid", "client-secret", "first-refresh-token", 86400);
    let text = crate::fakes::accounts::AccountToml::new(ACCOUNT, KOMMO_ACCOUNT_ID, &kommo.url)
        .kommo(r#"auth = { kind = "oauth", client_id = "integration-uuid", client_secret_env = "KOMMO_CLIENT_SECRET", redirect_uri = "https://kommo-pay.example/oauth", refresh_token_env = "KOMMO_REFRESH_TOKEN" }"#)
        .to_string();
    let mut env = test_env(&db.url);
    env.insert("KOMMO_CLIENT_SECRET".into(), "client-secret".into());
    env.insert("KOMMO_REFRESH_TOKEN".into(), "first-refresh-token".into());
    let config = kommo_pay_core::config::Config::parse(&text, "oauth config", &|name| env.get(name).cloned()).unwrap();
    let now = chrono::Utc::now();

    // No call to Kommo has been made: the tokens are refreshed anyway, and stored.
    let hourly = Housekeeping::new(
        db.pool.clone(),
        kommo_pay_core::clients::for_accounts(&db.pool, &config.accounts),
        chrono::Duration::days(7),
        Duration::from_secs(3600),
    );
    hourly.run_once(now).await.unwrap();
    assert_eq!(kommo.oauth().refreshes, 1);
    let stored: String = sqlx::query_scalar("SELECT refresh_token FROM kommo_tokens").fetch_one(&db.pool).await.unwrap();
    assert_eq!(stored, "oauth-refresh-1", "the rotated refresh token is kept");

    hourly.run_once(now).await.unwrap();
    assert_eq!(kommo.oauth().refreshes, 1, "a token valid past the next round is left alone");

    // Rounds further apart than the token's remaining life refresh it now.
    let rare = Housekeeping::new(
        db.pool.clone(),
        kommo_pay_core::clients::for_accounts(&db.pool, &config.accounts),
        chrono::Duration::days(7),
        Duration::from_secs(86400),
    );
    rare.run_once(now).await.unwrap();
    assert_eq!(kommo.oauth().refreshes, 2);
}

/// Alerts are built on "exactly one scheduler reports `kommo_pay_scheduler_leader 1`": a leader
/// whose lock connection is killed must report 0 once another leads, and a follower reports 0
/// rather than nothing.
#[tokio::test]
async fn when_the_leaders_lock_connection_is_killed_exactly_one_process_reports_leadership() {
    let kommo = FakeKommo::start().await;
    let stripe = FakeStripe::start().await;
    let db = TestDb::new().await;
    let scheduler = |port: u16| {
        let sections = format!("[log]\nfilter = \"warn\"\n[scheduler]\nleader_check_secs = 1\n[metrics]\nlisten = \"127.0.0.1:{port}\"");
        let (path, env) = account_config_file(&sections, &db.url, &kommo.url, &stripe.url);
        (start_role("scheduler", &path, &env), path, port)
    };
    let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // What a process reports: None while its metrics cannot be read or lack the gauge.
    let gauge = async |port: u16| -> Option<u8> {
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.ok()?.text().await.ok()?;
        text.lines().find_map(|line| line.strip_prefix("kommo_pay_scheduler_leader ")).map(|v| if v.trim() == "1" { 1 } else { 0 })
    };

    let (mut first, first_path, first_port) = scheduler(free_port());
    eventually(Duration::from_secs(30), "the first scheduler reports that it leads", || async { gauge(first_port).await == Some(1) }).await;
    let (mut second, second_path, second_port) = scheduler(free_port());
    eventually(Duration::from_secs(30), "the second scheduler reports 0", || async { gauge(second_port).await == Some(0) }).await;
    assert_eq!(gauge(first_port).await, Some(1));

    // The leader's lock connection dies (a network cut, an operator's pg_terminate_backend).
    let killed: Vec<bool> = sqlx::query_scalar("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1")
        .bind(format!("kommo-pay scheduler pid {}", first.id()))
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(killed, [true], "the leader's lock connection was found and ended");
    eventually(Duration::from_secs(30), "the second leads and the first reports 0", || async {
        (gauge(first_port).await, gauge(second_port).await) == (Some(0), Some(1))
    })
    .await;
    // It stays that way: the first reconnects as a follower.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!((gauge(first_port).await, gauge(second_port).await), (Some(0), Some(1)));
    }

    for child in [&mut first, &mut second] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    std::fs::remove_file(first_path).ok();
    std::fs::remove_file(second_path).ok();
}
