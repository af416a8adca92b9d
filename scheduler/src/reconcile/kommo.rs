//! Kommo: stage changes into trigger stages that no status hook delivered, and webhooks that
//! Kommo disabled.
//!
//! Kommo's events API (`lead_status_changed`) has ids of its own that webhooks do not carry, so a
//! change is appended only when the log holds no status event of that lead entering that stage
//! since the change. Should its hook still arrive later, the link job it implies finds the
//! link issued and the card written, and changes nothing.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use kommo_pay_core::clients::AccountClients;
use kommo_pay_core::event_log::{NewEvent, Source};
use kommo_pay_core::ids::{AccountSlug, LeadId};
use sqlx::PgPool;

pub(super) async fn missed(pool: &PgPool, clients: &AccountClients, from: DateTime<Utc>) -> anyhow::Result<Vec<NewEvent>> {
    check_webhooks(pool, clients).await?;
    let account = &clients.account;
    if account.triggers.is_empty() {
        return Ok(Vec::new());
    }
    let changes = clients.kommo.stage_changes_since(from.timestamp()).await.context("listing Kommo stage changes")?;
    let mut missed = Vec::new();
    for change in changes {
        let (lead_id, (_, status_id)) = (change.lead_id, change.to);
        if account.trigger_for(change.to).is_none() || delivered(pool, &account.slug, lead_id, status_id, change.at).await? {
            continue;
        }
        let payload = change.as_status_hook(account.kommo.account_id);
        missed.push(NewEvent::new(&account.slug, Source::Kommo, "leads.status".into(), change.dedup_key(), Some(lead_id), payload));
    }
    Ok(missed)
}

/// Whether the log holds the lead entering `status_id`, received no earlier than a minute before
/// the change happened (Kommo's clock and ours may differ a little).
async fn delivered(pool: &PgPool, account: &AccountSlug, lead_id: LeadId, status_id: i64, at: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM events WHERE account = $1 AND lead_id = $2 AND source = $5
             AND kind IN ('leads.status', 'leads.add') AND payload #>> '{item,status_id}' = $3
             AND received_at >= to_timestamp($4) - interval '1 minute')",
    )
    .bind(account)
    .bind(lead_id)
    .bind(status_id.to_string())
    .bind(at as f64)
    .bind(Source::Kommo.as_str())
    .fetch_one(pool)
    .await
}

/// Kommo disables a hook that keeps failing, and after an API block; nothing arrives until an
/// admin saves it again. Says so in the log and the metric on every round while it lasts.
async fn check_webhooks(pool: &PgPool, clients: &AccountClients) -> anyhow::Result<()> {
    let hooks = clients.kommo.webhooks().await.context("listing Kommo webhooks")?;
    let disabled: Vec<String> = hooks.iter().filter(|hook| hook.disabled).map(|hook| hook.id.to_string()).collect();
    let account = clients.account.slug.clone();
    metrics::gauge!("kommo_pay_kommo_webhooks_disabled", "account" => account.to_string()).set(disabled.len() as f64);
    kommo_pay_core::ops::accounts::record_webhook_check(pool, &account, &disabled).await?;
    if !disabled.is_empty() {
        // Ids only: a destination holds our URL secret.
        tracing::error!(%account, hooks = ?disabled, "Kommo disabled webhooks of this account: open Settings → Integrations and save the webhook again");
    }
    Ok(())
}
