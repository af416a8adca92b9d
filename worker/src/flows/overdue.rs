//! Failed subscription charges and overdue deals (see `kommo_pay_core::dunning`).
//!
//! A failed charge opens a run of failures and puts a note in the deal's feed: the provider
//! retries the card for days, and most retries succeed. `deal.overdue` (enqueued by the
//! scheduler when a run outlasts the grace period) marks the deal Overdue and gives its manager a
//! task, unless a payment ended the run meanwhile.

use std::sync::Arc;

use anyhow::anyhow;
use kommo_pay_core::dunning::{self, Failure, Run};
use kommo_pay_core::queue::ClaimedJob;
use serde_json::Value;

use super::deal::{Tell, mark_and_tell, note_once};
use super::{AccountClients, Context, db_failed};
use crate::JobError;

/// A subscription charge failed: open (or continue) the subscription's run of failures and say
/// so in the deal's feed.
pub(super) async fn charge_failed(context: &Context, clients: &AccountClients, job: &ClaimedJob, failure: Failure<'_>) -> Result<(), JobError> {
    if dunning::record_failure(&context.pool, &failure, job.id).await.map_err(db_failed)? == Run::Overtaken {
        tracing::info!(lead_id = failure.lead_id.0, what = failure.what, "a payment stands after this failure: nothing is unpaid");
        return Ok(());
    }
    let provider = failure.provider.title();
    let deadline = (failure.failed_at + clients.account.overdue_grace).format("%Y-%m-%d");
    let text =
        format!("The subscription payment of {} failed. {provider} retries the card; unless it is paid by {deadline}, the deal becomes Overdue.", failure.what);
    note_once(&context.pool, &clients.kommo, &clients.account.slug, failure.lead_id, job.id, "payment.failed", &text).await
}

/// `deal.overdue`: a run of failures outlasted the grace period.
pub(super) async fn mark(context: Arc<Context>, job: ClaimedJob) -> Result<(), JobError> {
    let clients = context.clients(&job)?;
    let account = &clients.account;
    let run_id = job.args.get("run_id").and_then(Value::as_str).and_then(|id| id.parse().ok());
    let run_id = run_id.ok_or_else(|| JobError::permanent(anyhow!("a deal.overdue job without a run_id")))?;
    let Some(run) = dunning::find(&context.pool, &account.slug, run_id).await.map_err(db_failed)? else {
        tracing::info!(%run_id, "paid since the scan: the deal is not overdue");
        return Ok(());
    };
    let days = account.overdue_grace.num_days();
    let text = format!(
        "The client's subscription is overdue: the payment of {} failed on {} and is still unpaid after {days} days. Contact the client.",
        run.what,
        run.failed_at.format("%Y-%m-%d")
    );
    mark_and_tell(&context, clients, &job, run.lead_id, |s| s.overdue, Tell { kind: "subscription.overdue", text: &text, to: None }).await
}
