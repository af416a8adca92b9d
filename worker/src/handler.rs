//! What a job handler is, and how it tells the executor what went wrong.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use kommo_pay_core::queue::ClaimedJob;

/// Why an attempt failed. Handlers never retry by themselves: they return one of these and the
/// executor decides the job's fate ([`crate::executor::fate`]).
#[derive(Debug)]
pub enum JobError {
    /// Worth another attempt later (a provider outage, a timeout, a 5xx, a 429).
    Retryable(anyhow::Error),
    /// No retry can fix it (Kommo blocked the account, credentials were revoked, a payment names
    /// no deal, a malformed event): the job is dead-lettered at once, for an operator to replay
    /// once the cause is fixed.
    Permanent(anyhow::Error),
    /// Not a failure: `waiting_for`'s budget for the account has no slot soon (its rate limit, or
    /// the pause after a 429). The job gives its worker slot back and runs again `after` this
    /// long; no attempt is used and no error written.
    Deferred { after: std::time::Duration, waiting_for: &'static str },
}

impl JobError {
    pub fn retryable(error: impl Into<anyhow::Error>) -> Self {
        JobError::Retryable(error.into())
    }
    pub fn permanent(error: impl Into<anyhow::Error>) -> Self {
        JobError::Permanent(error.into())
    }
}

type HandlerFn = Arc<dyn Fn(ClaimedJob) -> BoxFuture<'static, Result<(), JobError>> + Send + Sync>;

/// The handler of each job kind. A worker claims only the kinds it has a handler for, so jobs of
/// a kind this build does not know wait for one that does.
#[derive(Clone, Default)]
pub struct Handlers(HashMap<String, HandlerFn>);

impl Handlers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for jobs of `kind`.
    pub fn on<F, Fut>(mut self, kind: &str, handler: F) -> Self
    where
        F: Fn(ClaimedJob) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        self.0.insert(kind.to_owned(), Arc::new(move |job| Box::pin(handler(job))));
        self
    }

    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.0.keys().cloned().collect();
        kinds.sort();
        kinds
    }

    pub(crate) fn get(&self, kind: &str) -> Option<&HandlerFn> {
        self.0.get(kind)
    }
}
