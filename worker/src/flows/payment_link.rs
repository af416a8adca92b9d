//! `payment_link.issue`: a deal entered a trigger stage; give it a Stripe Payment Link or a
//! Lemon Squeezy checkout.
//!
//! Every step is safe to repeat, so a retry after any failure finishes the work once:
//! the Stripe create carries an idempotency key of the job and the request's parameters (Lemon
//! Squeezy has none: a retried create may leave an unused checkout behind, which is harmless,
//! and so may a Stripe retry whose deal changed between attempts); the link is recorded
//! before anything uses it, and its record is the decision that the flow applies (a retry finishes
//! a link this job issued whatever the deal's stage is by then); the card's PATCH is skipped when
//! the card already shows it; the note and the Salesbot launch are recorded on the link and
//! skipped once done.

use std::sync::Arc;

use anyhow::anyhow;
use kommo_pay_core::config::{FieldsSection, Trigger, TriggerProvider};
use kommo_pay_core::ids::{ContactId, JobId, LeadId};
use kommo_pay_core::kommo::client::KommoClient;
use kommo_pay_core::kommo::lead::{FieldValue, Lead, LeadChanges};
use kommo_pay_core::lemonsqueezy::client::NewCheckout;
use kommo_pay_core::payment_links::{self, Issued, Lease, PaymentLink};
use kommo_pay_core::queue::ClaimedJob;
use kommo_pay_core::stripe::client::NewPaymentLink;
use serde_json::Value;

use super::deal::{amount_due, tell_manager};
use super::{Context, RequiredClients, db_failed, kommo_failed, lemonsqueezy_failed, stripe_failed};
use crate::JobError;

pub(super) async fn issue(context: Arc<Context>, job: ClaimedJob) -> Result<(), JobError> {
    let lead_id = job.lead_id.ok_or_else(|| JobError::permanent(anyhow!("the job names no lead")))?;
    // One job at a time per deal: two stage changes arriving together would otherwise both find
    // no active link and create two. The later one runs again after the first, and reuses its link.
    let Some(lease) = payment_links::start_issuing(&context.pool, &job.account, lead_id, job.id).await.map_err(db_failed)? else {
        return Err(JobError::retryable(anyhow!("another job is issuing this deal's link; trying again after it")));
    };
    let outcome = issue_alone(&context, &job, lead_id, lease).await;
    payment_links::stop_issuing(&context.pool, &job.account, lead_id, job.id).await.map_err(db_failed)?;
    outcome
}

/// `lease`: what the job found on taking the deal (whether an abandoned job held it before and
/// may have written to it; the deal's links).
async fn issue_alone(context: &Context, job: &ClaimedJob, lead_id: LeadId, lease: Lease) -> Result<(), JobError> {
    let Lease { resumed, known } = lease;
    let clients = context.clients(job)?;
    let account = &clients.account;
    let pool = &context.pool;
    let trigger_name = job.args.get("trigger").and_then(Value::as_str).unwrap_or_default();
    let trigger = account.trigger(trigger_name).ok_or_else(|| JobError::permanent(anyhow!("trigger {trigger_name:?} is no longer configured")))?;
    let fields = account.kommo.fields.as_ref().ok_or_else(|| JobError::permanent(anyhow!("the account has no kommo.fields")))?;
    let kommo = &clients.kommo;

    // The webhook was a snapshot: act on the deal as it is now.
    let Some(deal) = kommo.lead(lead_id).await.map_err(kommo_failed)? else {
        tracing::info!(lead_id = lead_id.0, "the deal no longer exists; no link issued");
        return Ok(());
    };
    let in_trigger_stage = deal.stage() == (trigger.pipeline_id, trigger.status_id);

    // Whether the flow applies is decided once, and recorded with the link: a link this job
    // issued means an earlier attempt decided, so its remaining steps are finished whatever the
    // deal's stage is now (the link's own PATCH may have moved it on, or the client paid).
    let link = match known.issued_by_job {
        Some(link) => link,
        None if !in_trigger_stage => {
            tracing::info!(lead_id = lead_id.0, "the deal left the trigger stage before its link was issued; nothing to do");
            return Ok(());
        }
        None => match decide(context, clients, job, trigger, fields, &deal, known.active).await? {
            Some(link) => link,
            None => return Ok(()),
        },
    };
    // A link paid (or replaced) by the time a retry finishes it is no longer offered: the card
    // keeps what it shows now and the client gets no message about it. Its note stays a record.
    let offered = link.status == "active";
    // Stripe links the new one replaced must not stay payable.
    for old in payment_links::replaced(pool, &account.slug, lead_id).await.map_err(db_failed)? {
        let stripe = clients.stripe()?;
        stripe.deactivate_payment_link(&old, &format!("kommo-pay:deactivate:{old}")).await.map_err(stripe_failed)?;
        payment_links::set_status(pool, &account.slug, lead_id, job.id, &old, "deactivated").await.map_err(db_failed)?;
    }

    let changes = LeadChanges {
        // The stage move belongs to the decision only while the deal is where it was decided: a
        // deal that moved on (paid, or moved by its manager) keeps its stage.
        status_id: trigger.move_to_status_id.filter(|_| in_trigger_stage),
        custom_fields_values: vec![
            FieldValue::value(fields.payment_link, link.url.as_str()),
            FieldValue::option(fields.payment_status, fields.statuses.awaiting),
        ],
    };
    if !offered {
        tracing::info!(lead_id = lead_id.0, status = %link.status, "the link is no longer active; the card keeps what it shows");
    } else if deal.shows(&changes) {
        tracing::info!(lead_id = lead_id.0, "the card already shows the link: an earlier attempt wrote it");
    } else {
        kommo.update_lead(lead_id, &changes).await.map_err(kommo_failed)?;
    }
    fail::fail_point!("payment_link.card_written");

    let amount = link.amount().ok_or_else(|| JobError::permanent(anyhow!("link {} has an unknown currency {:?}", link.link_id, link.currency)))?;
    if trigger.add_note && link.note_added_at.is_none() {
        let text = format!("Payment link for {amount}: {}", link.url);
        kommo.add_lead_note_once(lead_id, &text, job.attempt > 0 || resumed).await.map_err(kommo_failed)?;
        fail::fail_point!("payment_link.note_added");
        payment_links::mark_note_added(&context.recorder, &account.slug, &link, job.id).await.map_err(db_failed)?;
        fail::fail_point!("payment_link.note_recorded");
    }
    if let Some(bot) = trigger.salesbot_id.filter(|_| offered && link.salesbot_run_at.is_none()) {
        kommo.run_salesbot(bot, lead_id).await.map_err(kommo_failed)?;
        // The one step that is at least once: Kommo cannot be asked whether a bot ran, and a
        // message twice beats a link the client never gets (ADR 16).
        fail::fail_point!("payment_link.salesbot_launched");
        payment_links::mark_salesbot_run(&context.recorder, &account.slug, &link, job.id).await.map_err(db_failed)?;
    }
    tracing::info!(lead_id = lead_id.0, link = %link.link_id, %amount, "payment link in the deal's card");
    Ok(())
}

/// Decides whether and which link the deal gets (its amount, the active link reused or a new
/// one created and recorded): the decision the link's record keeps. `None` when none can be
/// issued; the manager was told why.
async fn decide(
    context: &Context,
    clients: &super::AccountClients,
    job: &ClaimedJob,
    trigger: &Trigger,
    fields: &FieldsSection,
    deal: &Lead,
    active: Option<PaymentLink>,
) -> Result<Option<PaymentLink>, JobError> {
    let account = &clients.account;
    let pool = &context.pool;
    let lead_id = deal.id;
    let amount = match amount_due(deal, fields, account.default_currency) {
        Ok(amount) => amount,
        Err(problem) => {
            let text = format!("No payment link was issued: {problem}. Fix it, then move the deal into the stage again.");
            not_issued(context, clients, deal, job.id, &text).await?;
            return Ok(None);
        }
    };

    // The same amount reuses the deal's active link; a new amount gets a new link.
    let provider = trigger.provider.provider();
    let link = match active.filter(|link| link.amount() == Some(amount) && link.provider == provider.as_str()) {
        Some(link) => link,
        None => {
            // The client: their contact id travels with the payment, their email prefills the page.
            let contact = main_contact(&clients.kommo, deal).await?;
            // Configured extras first, so that they can never overwrite the deal's own keys.
            let mut metadata = trigger.custom.clone();
            metadata.extend([
                ("kommo_account_id".to_owned(), account.kommo.account_id.to_string()),
                ("kommo_lead_id".to_owned(), lead_id.to_string()),
                ("kommo_pay_account".to_owned(), account.slug.to_string()),
            ]);
            if let Some(contact) = &contact {
                metadata.insert("kommo_contact_id".to_owned(), contact.id.to_string());
            }
            let email = contact.as_ref().and_then(|c| c.email.clone());
            let product_name = match &trigger.product_name {
                Some(name) => name.clone(),
                None if deal.name().trim().is_empty() => format!("Deal #{lead_id}"),
                None => deal.name().to_owned(),
            };
            let created = match &trigger.provider {
                TriggerProvider::Stripe => {
                    let request = NewPaymentLink { product_name, amount, recurring: trigger.recurring, metadata, redirect_url: trigger.redirect_url.clone() };
                    let key = request.idempotency_key(&format!("kommo-pay:plink:{}:{lead_id}:job-{}", account.slug, job.id));
                    match clients.stripe()?.create_payment_link(&request, &key).await {
                        Ok(created) => (created.id.clone(), created.prefilled_for(email.as_deref())),
                        Err(error) if error.is_retryable() => return Err(stripe_failed(error)),
                        Err(error) => {
                            let text = format!("No payment link was issued for {amount}: Stripe refused it: {error}");
                            not_issued(context, clients, deal, job.id, &text).await?;
                            return Ok(None);
                        }
                    }
                }
                TriggerProvider::LemonSqueezy { store_id, variant_id, expires_hours } => {
                    let name = contact.and_then(|c| c.name);
                    let request = NewCheckout {
                        store_id: store_id.clone(),
                        variant_id: variant_id.clone(),
                        custom_price: amount,
                        custom: metadata,
                        email,
                        name,
                        product_name: Some(product_name),
                        description: trigger.description.clone(),
                        redirect_url: trigger.redirect_url.clone(),
                        expires_at: expires_hours.map(|h| chrono::Utc::now() + chrono::Duration::hours(i64::from(h))),
                        test_mode: account.lemonsqueezy.as_ref().is_some_and(|l| l.test_mode),
                    };
                    match clients.lemonsqueezy()?.create_checkout(&request).await {
                        Ok(created) => (created.id, created.url),
                        Err(error) if error.is_retryable() => return Err(lemonsqueezy_failed(error)),
                        Err(error) => {
                            let text = format!("No checkout was issued for {amount}: Lemon Squeezy refused it: {error}");
                            not_issued(context, clients, deal, job.id, &text).await?;
                            return Ok(None);
                        }
                    }
                }
            };
            let issued =
                Issued { account: &account.slug, provider, lead_id, trigger: &trigger.name, link_id: &created.0, url: &created.1, amount, job_id: job.id };
            fail::fail_point!("payment_link.created");
            let link = payment_links::record_issued(pool, &context.recorder, &issued).await.map_err(db_failed)?;
            fail::fail_point!("payment_link.recorded");
            // A provider that answered with another deal's link must not put it in this card.
            if link.lead_id != lead_id {
                return Err(JobError::permanent(anyhow!(
                    "{provider} answered with link {} of deal {}, not a new one for deal {lead_id}",
                    link.link_id,
                    link.lead_id
                )));
            }
            link
        }
    };
    Ok(Some(link))
}

/// A link could not be issued for a reason no retry fixes: Payment Status stays "Not issued",
/// and the manager gets a task saying why. The job is done.
async fn not_issued(context: &Context, clients: &super::AccountClients, deal: &Lead, job_id: JobId, text: &str) -> Result<(), JobError> {
    let kommo = &clients.kommo;
    if let Some(fields) = &clients.account.kommo.fields {
        let changes = LeadChanges::fields(vec![FieldValue::option(fields.payment_status, fields.statuses.not_issued)]);
        kommo.update_lead(deal.id, &changes).await.map_err(kommo_failed)?;
    }
    tell_manager(&context.pool, kommo, &clients.account.slug, deal, job_id, "payment_link.failed", text).await
}

/// The deal's main contact, as a payment page knows the client.
struct Contact {
    id: ContactId,
    email: Option<String>,
    name: Option<String>,
}

/// The deal's main contact (its first one when none is marked main); `None` for a deal without.
async fn main_contact(kommo: &KommoClient, deal: &Lead) -> Result<Option<Contact>, JobError> {
    let Some(id) = deal.main_contact_id() else { return Ok(None) };
    let Some(contact) = kommo.contact(id).await.map_err(kommo_failed)? else { return Ok(Some(Contact { id, email: None, name: None })) };
    Ok(Some(Contact { id, email: contact.email(), name: contact.name().map(str::to_owned) }))
}
