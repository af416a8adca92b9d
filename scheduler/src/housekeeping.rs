//! Housekeeping:
//! - completed and discarded jobs leave the queue table after the retention period, so that
//!   claims stay fast. Their events, and the facts the jobs recorded, stay in the log for good;
//!   dead-lettered jobs stay until an operator replays or discards them.
//! - Kommo OAuth tokens are refreshed before they expire, also for accounts with no traffic: an
//!   access token lives a day, and a refresh token unused for three months is gone for good
//!   (the integration would have to be authorised again).

use chrono::{DateTime, Duration, Utc};
use std::sync::Arc;

use kommo_pay_core::clients::AccountClients;
use kommo_pay_core::config::KommoAuth;
use sqlx::PgPool;

/// Rows deleted per statement, so that one round never holds long locks.
const BATCH: i64 = 5_000;

pub struct Housekeeping {
    pool: PgPool,
    retention: Duration,
    /// The accounts' clients (those with OAuth credentials get their tokens refreshed).
    accounts: Arc<[AccountClients]>,
    /// How long a token must stay valid after a round: past the next round, with room to spare.
    token_margin: std::time::Duration,
}

impl Housekeeping {
    /// `every` is the time between rounds.
    pub fn new(pool: PgPool, accounts: Arc<[AccountClients]>, retention: Duration, every: std::time::Duration) -> Housekeeping {
        let token_margin = every * 2 + std::time::Duration::from_secs(600);
        Housekeeping { pool, retention, accounts, token_margin }
    }

    /// One round at `now`: prunes finished jobs and keeps OAuth tokens fresh; returns how many jobs
    /// were pruned. A token refresh that fails is logged (and retried next round); an account
    /// whose refresh token Kommo refuses needs an operator to authorise the integration again.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<usize, sqlx::Error> {
        let oauth = self.accounts.iter().filter(|clients| matches!(clients.account.kommo.auth, KommoAuth::Oauth { .. }));
        for clients in oauth {
            let account = &clients.account.slug;
            if let Err(error) = clients.kommo.refresh_ahead(self.token_margin).await {
                tracing::error!(%account, %error, "could not refresh the account's Kommo OAuth tokens ahead of expiry");
                metrics::counter!("kommo_pay_kommo_token_refresh_failures_total", "account" => account.to_string()).increment(1);
            }
        }
        self.prune(now).await
    }

    /// Deletes the jobs finished before `now - retention`; returns how many.
    async fn prune(&self, now: DateTime<Utc>) -> Result<usize, sqlx::Error> {
        let mut pruned = 0;
        loop {
            let deleted = sqlx::query(
                "DELETE FROM jobs WHERE id IN (
                     SELECT id FROM jobs WHERE state IN ('completed', 'discarded') AND finished_at < $1
                       AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.replay_of = jobs.id) LIMIT $2)",
            )
            .bind(now - self.retention)
            .bind(BATCH)
            .execute(&self.pool)
            .await?
            .rows_affected();
            pruned += deleted as usize;
            if deleted < BATCH as u64 {
                break;
            }
        }
        if pruned > 0 {
            tracing::info!(pruned, "finished jobs pruned from the queue table");
        }
        Ok(pruned)
    }
}
