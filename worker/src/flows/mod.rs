//! The payment flows: what each job kind does to deals, Kommo and the providers.

mod alert;
mod checkout_fields;
mod deal;
mod lemonsqueezy_order;
mod lemonsqueezy_subscription;
mod overdue;
mod payment_link;
mod reminder;
mod settle;
mod stripe_payment;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::anyhow;
use kommo_pay_core::clients::AccountClients;
use kommo_pay_core::config::Accounts;
use kommo_pay_core::http::Failed;
use kommo_pay_core::ids::AccountSlug;
use kommo_pay_core::jobs::JobKind;
use kommo_pay_core::kommo::client::KommoError;
use kommo_pay_core::lemonsqueezy::client::{LemonSqueezyClient, LemonSqueezyError};
use kommo_pay_core::lemonsqueezy::webhook::LemonSqueezyEvent;
use kommo_pay_core::provider::Provider;
use kommo_pay_core::queue::ClaimedJob;
use kommo_pay_core::recorder::Recorder;
use kommo_pay_core::stripe::client::{StripeClient, StripeError};
use kommo_pay_core::stripe::webhook::StripeEvent;
use serde_json::Value;
use sqlx::PgPool;

use crate::{Handlers, JobError};

/// What the handlers share: the database and one client per provider per account.
pub struct Context {
    pool: PgPool,
    /// Records the flows' frequent changes (a group's new links, their notes) together.
    recorder: Recorder,
    accounts: HashMap<AccountSlug, AccountClients>,
}

impl Context {
    pub fn new(pool: PgPool, accounts: &Accounts) -> Arc<Context> {
        let accounts = accounts.iter().map(|account| (account.slug.clone(), AccountClients::new(&pool, account))).collect();
        Arc::new(Context { recorder: Recorder::spawn(pool.clone()), pool, accounts })
    }

    fn clients(&self, job: &ClaimedJob) -> Result<&AccountClients, JobError> {
        self.accounts.get(&job.account).ok_or_else(|| JobError::permanent(anyhow!("account {:?} is no longer configured", job.account)))
    }
}

/// The providers an account must have for a job that needs them.
trait RequiredClients {
    fn stripe(&self) -> Result<&StripeClient, JobError>;
    fn lemonsqueezy(&self) -> Result<&LemonSqueezyClient, JobError>;
}

impl RequiredClients for AccountClients {
    fn stripe(&self) -> Result<&StripeClient, JobError> {
        self.stripe.as_ref().ok_or_else(|| JobError::permanent(anyhow!("account {} has no [accounts.stripe] section", self.account.slug)))
    }

    fn lemonsqueezy(&self) -> Result<&LemonSqueezyClient, JobError> {
        self.lemonsqueezy.as_ref().ok_or_else(|| JobError::permanent(anyhow!("account {} has no [accounts.lemonsqueezy] section", self.account.slug)))
    }
}

type HandlerFuture = futures_util::future::BoxFuture<'static, Result<(), JobError>>;

/// The handlers of this build, by job kind. A kind without a handler here would wait in the
/// queue for a build that has one.
pub fn handlers(context: Arc<Context>) -> Handlers {
    let on = |handlers: Handlers, kind: JobKind, handler: fn(Arc<Context>, ClaimedJob) -> HandlerFuture| {
        let context = context.clone();
        handlers.on(kind.as_str(), move |job| handler(context.clone(), job))
    };
    let handlers = on(Handlers::new(), JobKind::IssuePaymentLink, |c, j| Box::pin(payment_link::issue(c, j)));
    let handlers = on(handlers, JobKind::AlertManager, |c, j| Box::pin(alert::tell(c, j)));
    let handlers = on(handlers, JobKind::RemindManager, |c, j| Box::pin(reminder::remind(c, j)));
    let handlers = on(handlers, JobKind::StripePayment, |c, j| Box::pin(stripe_payment::apply(c, j)));
    let handlers = on(handlers, JobKind::StripeInvoice, |c, j| Box::pin(stripe_payment::apply_invoice(c, j)));
    let handlers = on(handlers, JobKind::StripeRefund, |c, j| Box::pin(stripe_payment::apply_refund(c, j)));
    let handlers = on(handlers, JobKind::LemonSqueezyOrder, |c, j| Box::pin(lemonsqueezy_order::apply(c, j)));
    let handlers = on(handlers, JobKind::LemonSqueezySubscription, |c, j| Box::pin(lemonsqueezy_subscription::apply(c, j)));
    let handlers = on(handlers, JobKind::MarkOverdue, |c, j| Box::pin(overdue::mark(c, j)));
    let handlers = on(handlers, JobKind::StripeSubscriptionEnded, |c, j| Box::pin(stripe_payment::apply_subscription_ended(c, j)));
    let handlers = on(handlers, JobKind::StripeSubscriptionUpdated, |c, j| Box::pin(stripe_payment::apply_subscription_updated(c, j)));
    // These kinds begin with a read of their deal, so a group of them reads its deals together.
    let reading_first = [JobKind::IssuePaymentLink, JobKind::AlertManager, JobKind::RemindManager, JobKind::MarkOverdue].map(JobKind::as_str);
    handlers.reading_deals_ahead(&reading_first, move |account, leads| {
        let context = context.clone();
        async move {
            let kommo = &context.accounts.get(&account)?.kommo;
            Some(Arc::new(kommo.leads(leads).await))
        }
    })
}

fn kommo_failed(error: KommoError) -> JobError {
    if let KommoError::RateLimited { retry_after, .. } = error {
        JobError::Deferred { after: retry_after, waiting_for: Provider::Kommo }
    } else if error.needs_operator() {
        JobError::permanent(error)
    } else if error.is_retryable() {
        JobError::retryable(error)
    } else {
        JobError::permanent(error)
    }
}

fn stripe_failed(error: Failed<StripeError>) -> JobError {
    if error.is_retryable() { JobError::retryable(error) } else { JobError::permanent(error) }
}

fn lemonsqueezy_failed(error: Failed<LemonSqueezyError>) -> JobError {
    match error.error {
        LemonSqueezyError::RateLimited(after) => JobError::Deferred { after, waiting_for: Provider::LemonSqueezy },
        _ if error.is_retryable() => JobError::retryable(error),
        _ => JobError::permanent(error),
    }
}

fn db_failed(error: sqlx::Error) -> JobError {
    JobError::retryable(error)
}

/// The Stripe event a job's arguments name, decoded from the log by the parser ingest ran on the
/// delivery.
async fn causing_stripe_event(pool: &PgPool, job: &ClaimedJob) -> Result<StripeEvent, JobError> {
    let (id, payload) = causing_payload(pool, job).await?;
    StripeEvent::parse(payload.as_bytes()).map_err(|e| JobError::permanent(anyhow!("event {id}: {e}")))
}

/// The Lemon Squeezy event a job's arguments name, decoded like [`causing_stripe_event`].
async fn causing_lemonsqueezy_event(pool: &PgPool, job: &ClaimedJob) -> Result<LemonSqueezyEvent, JobError> {
    let (id, payload) = causing_payload(pool, job).await?;
    LemonSqueezyEvent::parse(payload.as_bytes()).map_err(|e| JobError::permanent(anyhow!("event {id}: {e}")))
}

/// The `event_id` a job's arguments name, and that event's payload as stored.
async fn causing_payload(pool: &PgPool, job: &ClaimedJob) -> Result<(uuid::Uuid, String), JobError> {
    let id = job
        .args
        .get("event_id")
        .and_then(Value::as_str)
        .and_then(|id| id.parse::<uuid::Uuid>().ok())
        .ok_or_else(|| JobError::permanent(anyhow!("the job's arguments name no event_id")))?;
    let payload = sqlx::query_scalar("SELECT payload::text FROM events WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(db_failed)?
        .ok_or_else(|| JobError::permanent(anyhow!("event {id} is not in the log")))?;
    Ok((id, payload))
}
