//! Changes recorded together (`kommo_pay_core::recorder`): a burst of jobs' changes shares
//! transactions, and each still gets its own answer, its own fact and its own failure.

use chrono::Utc;
use futures_util::future::join_all;
use kommo_pay_core::ids::{AccountSlug, JobId, LeadId};
use kommo_pay_core::projections::{self, Change, Meta};
use kommo_pay_core::recorder::Recorder;

use crate::helpers::*;

fn issued(provider: &str, link: &str) -> Change {
    Change::LinkIssued {
        provider: provider.into(),
        link_id: link.into(),
        trigger: "proposal".into(),
        url: format!("https://buy.stripe.com/{link}"),
        amount_minor: 1500,
        currency: "EUR".into(),
    }
}

/// Deals' links as the table holds them, in a stable order.
async fn links(db: &TestDb) -> Vec<(String, i64, String, Option<i64>)> {
    sqlx::query_as("SELECT link_id, lead_id, status, issued_by_job FROM payment_links ORDER BY link_id").fetch_all(&db.pool).await.unwrap()
}

async fn record_links(recorder: &Recorder, account: &AccountSlug, links: &[(i64, &str, &str)]) -> Vec<Result<projections::Recorded, sqlx::Error>> {
    join_all(links.iter().map(|(lead, provider, link)| {
        let meta = Meta { account, lead_id: LeadId(*lead), job_id: Some(JobId(*lead)), at: Utc::now() };
        recorder.record(meta, issued(provider, link))
    }))
    .await
}

#[tokio::test]
async fn links_recorded_at_once_share_a_transaction_and_each_replaces_its_own_deals_link() {
    let db = TestDb::new().await;
    let recorder = Recorder::spawn(db.pool.clone());
    let account = AccountSlug::from(ACCOUNT);
    // Deal 1 has an active link already; the burst gives it a new one.
    let first = record_links(&recorder, &account, &[(1, "stripe", "plink_old")]).await;
    assert_eq!(first[0].as_ref().unwrap().changed, 1);

    let names: Vec<String> = (1..=20).map(|lead| format!("plink_{lead:02}")).collect();
    let burst: Vec<(i64, &str, &str)> = names.iter().zip(1..).map(|(name, lead)| (lead, "stripe", name.as_str())).collect();
    let recorded = record_links(&recorder, &account, &burst).await;
    for (change, result) in burst.iter().zip(&recorded) {
        let result = result.as_ref().unwrap_or_else(|e| panic!("{change:?}: {e}"));
        assert_eq!(result.changed, 1, "{change:?} inserted its link");
        assert!(result.fact.is_some(), "{change:?} appended its fact");
    }
    let transactions = db.count("SELECT count(DISTINCT xmin::text) FROM payment_links WHERE link_id <> 'plink_old'").await;
    assert!(transactions < 20, "20 links arriving together took {transactions} transactions");
    let table = links(&db).await;
    assert_eq!(table.iter().filter(|(_, _, status, _)| status == "active").count(), 20, "{table:?}");
    assert!(table.contains(&("plink_old".into(), 1, "replaced".into(), Some(1))), "{table:?}");
    assert_eq!(db.count("SELECT count(*) FROM events WHERE kind = 'payment_link.issued'").await, 21);

    // A retried burst records nothing twice.
    let again = record_links(&recorder, &account, &burst).await;
    assert!(again.iter().all(|r| r.as_ref().is_ok_and(|r| r.changed == 0 && r.fact.is_none())), "{again:?}");
    assert_eq!(db.count("SELECT count(*) FROM events WHERE kind = 'payment_link.issued'").await, 21);

    // The log replays to the same table, change by change.
    projections::rebuild(&db.pool).await.unwrap();
    assert_eq!(links(&db).await, table);
}

#[tokio::test]
async fn a_change_the_database_refuses_fails_alone_and_the_others_are_recorded() {
    let db = TestDb::new().await;
    let recorder = Recorder::spawn(db.pool.clone());
    let account = AccountSlug::from(ACCOUNT);
    // `payment_links.provider` admits stripe and lemonsqueezy only.
    let burst = [(1, "stripe", "plink_1"), (2, "paypal", "pp_2"), (3, "stripe", "plink_3"), (4, "lemonsqueezy", "ls_4")];
    let recorded = record_links(&recorder, &account, &burst).await;
    assert!(recorded[1].as_ref().is_err_and(|e| e.to_string().contains("check constraint")), "{:?}", recorded[1]);
    for i in [0, 2, 3] {
        assert_eq!(recorded[i].as_ref().unwrap().changed, 1, "{:?}", burst[i]);
    }
    assert_eq!(links(&db).await.len(), 3);
    assert_eq!(db.count("SELECT count(*) FROM events WHERE kind = 'payment_link.issued'").await, 3, "the refused link has no fact either");
}

#[tokio::test]
async fn one_link_answered_for_two_deals_at_once_is_recorded_for_one_of_them_only() {
    let db = TestDb::new().await;
    let recorder = Recorder::spawn(db.pool.clone());
    let account = AccountSlug::from(ACCOUNT);
    let recorded = record_links(&recorder, &account, &[(1, "stripe", "plink_same"), (2, "stripe", "plink_same")]).await;
    let changed: Vec<u64> = recorded.iter().map(|r| r.as_ref().unwrap().changed).collect();
    // The issuing job reads back a link it did not insert, finds another deal's, and refuses it.
    assert_eq!(changed, [1, 0], "only the first deal's link was inserted");
    assert_eq!(links(&db).await, [("plink_same".to_owned(), 1, "active".to_owned(), Some(1))]);
}
