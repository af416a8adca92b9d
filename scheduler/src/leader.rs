//! Leadership: any number of schedulers run; the one holding a PostgreSQL session advisory lock
//! leads.
//!
//! ```text
//!   follower --(pg_try_advisory_lock = true)--> leader
//!   leader   --(the connection fails a check)--> follower   (the lock died with the session)
//!   leader   --(the process dies)------------->  the lock is released with its connection;
//!                                                 another follower takes it at its next try
//! ```
//! The lock lives in a dedicated connection's session, so losing the connection ends the
//! leadership at once on both sides: the database drops the lock, and the next check here fails.
//! A brief overlap while a dead connection goes unnoticed is harmless: every scan's work is
//! idempotent (unique keys).

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;

use kommo_pay_core::db::SCHEDULER_LOCK_KEY as LOCK_KEY;

/// Whether this process leads, updated by a background task until dropped.
pub struct Leadership {
    leading: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Starts trying to lead, checking every `check_every`.
    pub fn spawn(pool: &PgPool, check_every: Duration) -> Leadership {
        // Named for operators: `pg_stat_activity` joined to `pg_locks` shows which process leads.
        let options = pool.connect_options().as_ref().clone().application_name(&format!("kommo-pay scheduler pid {}", std::process::id()));
        let (tx, leading) = watch::channel(false);
        // Followers report 0 from the start, not nothing: "exactly one process reports 1" is
        // what alerts check.
        metrics::gauge!("kommo_pay_scheduler_leader").set(0.0);
        let task = tokio::spawn(async move {
            loop {
                match PgConnection::connect_with(&options).await {
                    Ok(mut connection) => loop {
                        let check = if *tx.borrow() {
                            sqlx::query("SELECT 1").execute(&mut connection).await.map(|_| true)
                        } else {
                            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(LOCK_KEY).fetch_one(&mut connection).await
                        };
                        match check {
                            Ok(lead) => set_leading(&tx, lead),
                            Err(error) => {
                                tracing::warn!(%error, "lost the leadership connection; following until it is back");
                                break;
                            }
                        }
                        tokio::time::sleep(check_every).await;
                    },
                    Err(error) => tracing::warn!(%error, "cannot open the leadership connection"),
                }
                // Without the connection there is no lock: whatever happened, this process follows.
                set_leading(&tx, false);
                tokio::time::sleep(check_every).await;
            }
        });
        Leadership { leading, task }
    }

    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }
}

/// The one place leadership changes: the watch the scans read and the gauge operators alert on
/// move together, so a process never reports a leadership it no longer has.
fn set_leading(tx: &watch::Sender<bool>, lead: bool) {
    if lead != *tx.borrow() {
        tracing::info!(leading = lead, "scheduler leadership changed");
    }
    metrics::gauge!("kommo_pay_scheduler_leader").set(if lead { 1.0 } else { 0.0 });
    tx.send_replace(lead);
}

impl Drop for Leadership {
    /// Stops trying; the connection closes and, if it led, the lock goes with it.
    fn drop(&mut self) {
        self.task.abort();
    }
}
