//! Reconciliation: read each provider's recent history and append what no webhook delivered.
//!
//! Kommo drops status hooks now and then, Lemon Squeezy gives up after about 2.5 minutes, and any
//! endpoint can be down longer than a provider retries. Every round reads, per account and
//! provider, from a stored cursor (`reconcile_cursors`) and appends through the same path as
//! ingest, with the same dedup keys wherever the provider gives the same identity: a fact that
//! was delivered already changes nothing, and a webhook arriving after its fact was reconciled
//! is a duplicate. The cursor moves only after a provider's round succeeded.
//!
//! - Stripe: the events API (`stripe.rs`).
//! - Lemon Squeezy: orders and subscriptions (`lemonsqueezy.rs`).
//! - Kommo: stage changes into trigger stages, and webhooks Kommo disabled (`kommo.rs`).

mod kommo;
mod lemonsqueezy;
mod stripe;

use chrono::{DateTime, Duration, Utc};
use kommo_pay_core::clients::AccountClients;
use kommo_pay_core::ids::AccountSlug;
use kommo_pay_core::provider::Provider;
use std::sync::Arc;

use kommo_pay_core::config::JobPolicies;
use kommo_pay_core::event_log::{self, NewEvent};
use kommo_pay_core::jobs;
use serde_json::json;
use sqlx::PgPool;

/// Each round rereads this much before its cursor: a provider may list an event a little after
/// the time it carries. Rereading is harmless (dedup).
const OVERLAP: Duration = Duration::minutes(10);

pub struct Reconciler {
    pool: PgPool,
    accounts: Arc<[AccountClients]>,
    policies: JobPolicies,
    /// How far back an account's first round reads.
    lookback: Duration,
}

impl Reconciler {
    pub fn new(pool: PgPool, accounts: Arc<[AccountClients]>, policies: JobPolicies, lookback: Duration) -> Reconciler {
        Reconciler { pool, accounts, policies, lookback }
    }

    /// One round over every account and provider at `now`; returns how many events were missing
    /// from the log and are now in it. A provider that fails is logged and read again from the
    /// same cursor next round; the others go on.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<usize, sqlx::Error> {
        let mut recovered = 0;
        for clients in self.accounts.iter() {
            let slug = &clients.account.slug;
            let mut providers = vec![Provider::Kommo];
            providers.extend(clients.stripe.as_ref().map(|_| Provider::Stripe));
            providers.extend(clients.lemonsqueezy.as_ref().map(|_| Provider::LemonSqueezy));
            for provider in providers {
                let cursor = self.cursor(slug, provider).await?.unwrap_or(now - self.lookback);
                let from = cursor - OVERLAP;
                let missed = match provider {
                    Provider::Stripe => stripe::missed(clients, from, now).await,
                    Provider::LemonSqueezy => lemonsqueezy::missed(&self.pool, clients, from).await,
                    Provider::Kommo => kommo::missed(&self.pool, clients, from).await,
                };
                let events = match missed {
                    Ok(events) => events,
                    Err(error) => {
                        tracing::warn!(
                            account = slug.as_str(),
                            provider = provider.as_str(),
                            error = format!("{error:#}"),
                            "reconciliation failed; reading from the same cursor next round"
                        );
                        metrics::counter!("kommo_pay_reconcile_failures_total", "account" => slug.to_string(), "provider" => provider.as_str()).increment(1);
                        continue;
                    }
                };
                let appended = self.append(clients, provider, events).await?;
                if appended > 0 {
                    tracing::warn!(
                        account = slug.as_str(),
                        provider = provider.as_str(),
                        events = appended,
                        "reconciliation found events no webhook delivered"
                    );
                    metrics::counter!("kommo_pay_reconciled_events_total", "account" => slug.to_string(), "provider" => provider.as_str())
                        .increment(appended as u64);
                }
                recovered += appended;
                self.advance(slug, provider, now).await?;
            }
        }
        Ok(recovered)
    }

    /// Appends the events with the jobs they imply, as ingest does; returns how many were new.
    async fn append(&self, clients: &AccountClients, provider: Provider, mut events: Vec<NewEvent>) -> Result<usize, sqlx::Error> {
        let mut appended = 0;
        for event in &mut events {
            event.headers = json!({ "x-kommo-pay-reconciled": provider.as_str() });
        }
        for chunk in events.chunks(500) {
            let jobs: Vec<_> = chunk.iter().flat_map(|event| jobs::implied_by(event, &clients.account, &self.policies)).collect();
            appended += event_log::append(&self.pool, chunk, &jobs).await?.new_events.len();
        }
        Ok(appended)
    }

    async fn cursor(&self, account: &AccountSlug, provider: Provider) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        sqlx::query_scalar("SELECT read_until FROM reconcile_cursors WHERE account = $1 AND provider = $2")
            .bind(account)
            .bind(provider.as_str())
            .fetch_optional(&self.pool)
            .await
    }

    /// Moves the cursor forward (never back: two leaders overlapping briefly cannot rewind it).
    async fn advance(&self, account: &AccountSlug, provider: Provider, to: DateTime<Utc>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO reconcile_cursors AS c (account, provider, read_until) VALUES ($1, $2, $3)
             ON CONFLICT (account, provider) DO UPDATE SET read_until = greatest(c.read_until, excluded.read_until), updated_at = now()",
        )
        .bind(account)
        .bind(provider.as_str())
        .bind(to)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
