//! `deal.remind`: an unpaid link is due a reminder (the scheduler's `reminders` scan): the deal's
//! manager gets a task to remind the client, and/or the trigger's reminder Salesbot messages the
//! client, unless the deal was paid, won, lost or got a new link meanwhile. Each once per
//! reminder, recorded in the log.

use std::sync::Arc;

use anyhow::anyhow;
use kommo_pay_core::payment_links;
use kommo_pay_core::queue::ClaimedJob;
use serde_json::Value;

use super::deal::{launch_once, tell_manager};
use super::{Context, db_failed, kommo_failed};
use crate::JobError;

/// Kommo's closed stages, in every pipeline.
const WON: i64 = 142;
const LOST: i64 = 143;

pub(super) async fn remind(context: Arc<Context>, job: ClaimedJob) -> Result<(), JobError> {
    let clients = context.clients(&job)?;
    let account = &clients.account;
    let link_id = job.args.get("link_id").and_then(Value::as_str).ok_or_else(|| JobError::permanent(anyhow!("a reminder without a link_id")))?;
    let number = job.args.get("reminder").and_then(Value::as_i64).unwrap_or(1);
    let Some(link) = payment_links::by_id(&context.pool, &account.slug, link_id).await.map_err(db_failed)? else {
        return Err(JobError::permanent(anyhow!("link {link_id} is not one of ours")));
    };
    if link.status != "active" {
        tracing::info!(link = link_id, status = %link.status, "no reminder: the link is no longer awaiting payment");
        return Ok(());
    }
    let Some(deal) = clients.kommo.lead(link.lead_id).await.map_err(kommo_failed)? else { return Ok(()) };
    if matches!(deal.status_id, Some(WON | LOST)) {
        tracing::info!(lead_id = deal.id.0, "no reminder: the deal is closed");
        return Ok(());
    }
    // As the link's trigger says now (a trigger no longer configured: the manager's task).
    let rule = account.trigger(&link.trigger).and_then(|t| t.reminders.as_ref());
    if let Some(bot) = rule.and_then(|r| r.salesbot_id) {
        launch_once(&context.pool, &clients.kommo, &account.slug, deal.id, job.id, bot, number).await?;
    }
    if rule.is_none_or(|r| r.task) {
        let amount = link.amount().map(|a| a.to_string()).unwrap_or_else(|| format!("{} {}", link.amount_minor, link.currency));
        let text = format!("Remind the client about payment: {amount} is still unpaid. Link: {} (reminder {number})", link.url);
        tell_manager(&context.pool, &clients.kommo, &account.slug, &deal, job.id, "payment_link.reminded", &text).await?;
    }
    Ok(())
}
