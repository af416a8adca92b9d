//! Scheduler leadership: exactly one leads; when it dies, another takes over.

use std::time::Duration;

use kommo_pay_scheduler::Leadership;

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
