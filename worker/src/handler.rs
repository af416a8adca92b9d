//! What a job handler is, and how it tells the executor what went wrong.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use kommo_pay_core::ids::{AccountSlug, LeadId};
use kommo_pay_core::kommo::client::KommoError;
use kommo_pay_core::kommo::lead::Lead;
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
    Deferred { after: std::time::Duration, waiting_for: kommo_pay_core::provider::Provider },
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

/// What a group's read of its deals found: the leads Kommo has, or why the read failed (each
/// job's first read then fails the same way, as its own read would have).
pub type GroupDeals = Arc<Result<HashMap<LeadId, Lead>, KommoError>>;

/// Reads the deals of a group of one account's jobs at once (`account`, lead ids), in list
/// requests of up to 250; `None` for an account this build has no clients for.
pub type ReadAhead = Arc<dyn Fn(AccountSlug, Vec<LeadId>) -> BoxFuture<'static, Option<GroupDeals>> + Send + Sync>;

/// The handler of each job kind. A worker claims only the kinds it has a handler for, so jobs of
/// a kind this build does not know wait for one that does.
#[derive(Clone, Default)]
pub struct Handlers {
    handlers: HashMap<String, HandlerFn>,
    /// The kinds whose jobs read their deal first, and how a group of them reads ahead.
    reads_ahead: HashSet<String>,
    read_ahead: Option<ReadAhead>,
}

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
        self.handlers.insert(kind.to_owned(), Arc::new(move |job| Box::pin(handler(job))));
        self
    }

    /// Jobs of `kinds` read their deal first: the jobs of one account and kind claimed together
    /// read theirs in one list request per 250 (`read`), each job's first read answered from it.
    pub fn reading_deals_ahead<F, Fut>(mut self, kinds: &[&str], read: F) -> Self
    where
        F: Fn(AccountSlug, Vec<LeadId>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<GroupDeals>> + Send + 'static,
    {
        self.reads_ahead.extend(kinds.iter().map(|kind| kind.to_string()));
        self.read_ahead = Some(Arc::new(move |account, ids| Box::pin(read(account, ids))));
        self
    }

    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.handlers.keys().cloned().collect();
        kinds.sort();
        kinds
    }

    pub(crate) fn get(&self, kind: &str) -> Option<&HandlerFn> {
        self.handlers.get(kind)
    }

    /// How jobs of `kind` read ahead, if they do.
    pub(crate) fn read_ahead(&self, kind: &str) -> Option<&ReadAhead> {
        self.read_ahead.as_ref().filter(|_| self.reads_ahead.contains(kind))
    }
}
