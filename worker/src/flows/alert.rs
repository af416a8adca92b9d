//! `deal.alert`: a job about a deal was dead-lettered; its manager gets a task
//! saying what failed, so that nothing fails in silence.

use std::sync::Arc;

use anyhow::anyhow;
use kommo_pay_core::queue::ClaimedJob;
use serde_json::Value;

use super::deal::tell_manager;
use super::{Context, kommo_failed};
use crate::JobError;

pub(super) async fn tell(context: Arc<Context>, job: ClaimedJob) -> Result<(), JobError> {
    let clients = context.clients(&job)?;
    let kommo = &clients.kommo;
    let lead_id = job.lead_id.ok_or_else(|| JobError::permanent(anyhow!("an alert without a deal")))?;
    let failed_job = job.args.get("job_id").and_then(Value::as_i64).unwrap_or_default();
    let kind = job.args.get("job_kind").and_then(Value::as_str).unwrap_or("?");
    let error = job.args.get("error").and_then(Value::as_str).unwrap_or("no error text");
    let Some(lead) = kommo.lead(lead_id).await.map_err(kommo_failed)? else {
        tracing::warn!(lead_id = lead_id.0, failed_job, "the deal of a failed job no longer exists; no task");
        return Ok(());
    };
    let text = format!(
        "kommo-pay could not finish \"{}\" for this deal and gave up: {error}. Operators can replay it once the cause is fixed (job {failed_job}).",
        describe(kind)
    );
    tell_manager(&context.pool, kommo, &clients.account.slug, &lead, job.id, "deal.alerted", &text).await
}

/// What a job kind does, in a manager's words.
fn describe(kind: &str) -> &str {
    match kind {
        "payment_link.issue" => "issue the payment link",
        "stripe.payment" => "record the Stripe payment",
        "stripe.invoice" => "record the subscription invoice",
        "stripe.refund" => "record the refund",
        "stripe.subscription_ended" => "record the cancelled subscription",
        "stripe.subscription_updated" => "record the unpaid subscription",
        other => other,
    }
}
