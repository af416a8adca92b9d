//! Request pacing per provider and account. Kommo's and Lemon Squeezy's budgets are shared by
//! every process through PostgreSQL (`api_limits`, docs/adr/0006): each request reserves the
//! next send slot with one upsert and waits for it (and, in its process, for the window of its
//! last sends, timed by when they went); a 429 pauses the account for everyone; a
//! block stops it until an operator acts. Stripe's far larger budget is paced in the process
//! ([`Pacer`]): a slot per request in PostgreSQL would cost more than Stripe's 429, which its
//! client retries.

use crate::ids::AccountSlug;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::types::PgInterval;

use crate::provider::Provider;

/// Slots further away than this are not taken: the caller's job is deferred (ADR 15) and gives
/// its worker slot to other accounts instead of holding it while it waits.
const MAX_WAIT: Duration = Duration::from_secs(5);
/// Spacing margin over 1/rate, so that network jitter never lands rate + 1 requests in a second.
const SPACING_MARGIN: f64 = 1.05;

pub struct RateLimiter {
    pool: PgPool,
    provider: Provider,
    account: AccountSlug,
    spacing: Duration,
    /// This process's own sends, by when they went: a request that woke late for its slot (a
    /// busy CPU, a slow answer to the reservation) must not let the next ones crowd the window.
    sent: Pacer,
}

/// What the limiter says about the next request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Send now (any wait is over).
    Go,
    /// The account's next free slot is this far away; try again later.
    TooFar(Duration),
    /// The account is blocked.
    Blocked { since: DateTime<Utc>, reason: String },
}

impl RateLimiter {
    pub fn new(pool: PgPool, provider: Provider, account: &AccountSlug, requests_per_second: f64) -> RateLimiter {
        let spacing = Duration::from_secs_f64(SPACING_MARGIN / requests_per_second);
        RateLimiter { pool, provider, account: account.clone(), spacing, sent: Pacer::new(requests_per_second) }
    }

    /// Reserves the account's next send slot and waits for it. A slot more than [`MAX_WAIT`]
    /// away is not reserved (`TooFar`): a request that gives up takes no budget from the ones
    /// that go.
    pub async fn acquire(&self) -> Result<Slot, sqlx::Error> {
        let spacing = PgInterval::try_from(self.spacing).expect("a spacing fits an interval");
        let max_wait = PgInterval::try_from(MAX_WAIT).expect("the longest wait fits an interval");
        let (wait, reserved, blocked_at, blocked_reason): (f64, bool, Option<DateTime<Utc>>, Option<String>) = sqlx::query_as(
            // In SET every expression reads the row as it was: the offer is computed once.
            "INSERT INTO api_limits AS s (provider, account, next_slot, offered_slot, window_requests) VALUES ($1, $2, now() + $3, now(), 1)
             ON CONFLICT (provider, account) DO UPDATE SET
                 offered_slot = greatest(s.next_slot, now(), coalesce(s.paused_until, now())),
                 next_slot = CASE WHEN s.blocked_at IS NULL AND greatest(s.next_slot, now(), coalesce(s.paused_until, now())) <= now() + $4
                                  THEN greatest(s.next_slot, now(), coalesce(s.paused_until, now())) + $3
                                  ELSE s.next_slot END,
                 -- Requests in ten-second windows, for the console's requests per second.
                 last_window_requests = CASE WHEN s.window_start > now() - interval '10 seconds' THEN s.last_window_requests
                                             WHEN s.window_start > now() - interval '20 seconds' THEN s.window_requests
                                             ELSE 0 END,
                 window_requests = CASE WHEN s.window_start > now() - interval '10 seconds' THEN s.window_requests ELSE 0 END
                                   + CASE WHEN s.blocked_at IS NULL AND greatest(s.next_slot, now(), coalesce(s.paused_until, now())) <= now() + $4
                                          THEN 1 ELSE 0 END,
                 window_start = CASE WHEN s.window_start > now() - interval '10 seconds' THEN s.window_start ELSE now() END
             RETURNING greatest(extract(epoch FROM offered_slot - now())::float8, 0), offered_slot <= now() + $4, blocked_at, blocked_reason",
        )
        .bind(self.provider)
        .bind(&self.account)
        .bind(spacing)
        .bind(max_wait)
        .fetch_one(&self.pool)
        .await?;
        if let Some(since) = blocked_at {
            return Ok(Slot::Blocked { since, reason: blocked_reason.unwrap_or_default() });
        }
        let wait = Duration::from_secs_f64(wait);
        if !reserved {
            return Ok(Slot::TooFar(wait));
        }
        if !wait.is_zero() {
            metrics::histogram!("kommo_pay_rate_limit_wait_seconds", "provider" => self.provider.as_str(), "account" => self.account.to_string())
                .record(wait.as_secs_f64());
            tokio::time::sleep(wait).await;
        }
        self.sent.wait().await;
        Ok(Slot::Go)
    }

    /// Nobody calls for this account during `pause`.
    pub async fn pause(&self, pause: Duration) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE api_limits SET paused_until = greatest(coalesce(paused_until, now()), now() + $3)
             WHERE provider = $1 AND account = $2",
        )
        .bind(self.provider)
        .bind(&self.account)
        .bind(PgInterval::try_from(pause).unwrap_or_default())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Nobody calls for this account until an operator clears `blocked_at`; returns since when.
    pub async fn block(&self, reason: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        block_account(&self.pool, self.provider, &self.account, reason).await
    }
}

/// Stops every call of `provider` for `account` (Kommo's 403, an uninstalled integration) until
/// the block is lifted; returns since when. The row is made if the account has none yet; a block
/// already there keeps its first time and reason (what an operator or a reconnect must clear).
pub async fn block_account<'e>(db: impl sqlx::PgExecutor<'e>, provider: Provider, account: &AccountSlug, reason: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO api_limits (provider, account, blocked_at, blocked_reason) VALUES ($1, $2, now(), $3)
         ON CONFLICT (provider, account) DO UPDATE
         SET blocked_at = coalesce(api_limits.blocked_at, now()), blocked_reason = coalesce(api_limits.blocked_reason, $3)
         RETURNING blocked_at",
    )
    .bind(provider)
    .bind(account)
    .bind(reason)
    .fetch_one(db)
    .await
}

/// Lifts `account`'s block of `provider` if its reason starts with `cause` (connecting an
/// integration again lifts the block its uninstall set, not a block of Kommo's own).
pub async fn unblock_if<'e>(db: impl sqlx::PgExecutor<'e>, provider: Provider, account: &AccountSlug, cause: &str) -> Result<bool, sqlx::Error> {
    let lifted = sqlx::query(
        "UPDATE api_limits SET blocked_at = NULL, blocked_reason = NULL
         WHERE provider = $1 AND account = $2 AND blocked_at IS NOT NULL AND starts_with(blocked_reason, $3)",
    )
    .bind(provider)
    .bind(account)
    .bind(cause)
    .execute(db)
    .await?;
    Ok(lifted.rows_affected() > 0)
}

/// In-process pacing: at most `requests_per_second` requests in any one second, each waiting for
/// its turn. A burst goes out at once up to the second's budget (a group's fifty link creations
/// take one round trip, not half a second of even spacing); only the requests beyond it wait.
/// The window is kept [`SPACING_MARGIN`] longer than the rate's, as Kommo's spacing is.
pub struct Pacer {
    /// The most requests in one window, and the window.
    most: usize,
    window: Duration,
    /// The send times of the last `most` requests, oldest first.
    sent: tokio::sync::Mutex<std::collections::VecDeque<tokio::time::Instant>>,
}

impl Pacer {
    /// A fractional rate is kept over a longer window: 2.5 a second is 2 in any 0.84 s.
    pub fn new(requests_per_second: f64) -> Pacer {
        let most = (requests_per_second.floor() as usize).max(1);
        let window = Duration::from_secs_f64(SPACING_MARGIN * most as f64 / requests_per_second);
        Pacer { most, window, sent: tokio::sync::Mutex::new(std::collections::VecDeque::with_capacity(most)) }
    }

    /// Waits for the next free slot and takes it. Callers wait their turn in order; each send is
    /// recorded when it goes, so a late wake-up moves the window on, never back.
    pub async fn wait(&self) {
        let mut sent = self.sent.lock().await;
        if sent.len() == self.most {
            // The window's budget is spent until the oldest of the last `most` leaves it.
            let oldest = sent.pop_front().expect("a full window");
            tokio::time::sleep_until(oldest + self.window).await;
        }
        sent.push_back(tokio::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_pacer_sends_a_burst_up_to_its_rate_then_waits_for_the_window() {
        let pacer = Pacer::new(100.0);
        let start = tokio::time::Instant::now();
        let mut sent = Vec::new();
        for _ in 0..250 {
            pacer.wait().await;
            sent.push(start.elapsed());
        }
        let window = Duration::from_secs_f64(SPACING_MARGIN);
        assert_eq!(sent[99], Duration::ZERO, "the first 100 go at once");
        assert_eq!(sent[100], window, "the 101st waits until the first leaves the window");
        for (i, at) in sent.iter().enumerate().skip(100) {
            assert!(*at - sent[i - 100] >= window, "request {i}: at most 100 in any window");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pacer_below_one_a_second_sends_one_per_period() {
        let pacer = Pacer::new(0.5);
        let start = tokio::time::Instant::now();
        pacer.wait().await;
        pacer.wait().await;
        assert_eq!(start.elapsed(), Duration::from_secs_f64(2.0 * SPACING_MARGIN));
    }
}
