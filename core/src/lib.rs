//! The kommo-pay domain: configuration, the event log, the job queue and the providers' webhook
//! formats. The ingest, worker and scheduler roles are built on it.

pub mod batching;
pub mod clients;
pub mod config;
pub mod db;
pub mod dunning;
pub mod event_log;
pub mod form;
pub mod http;
pub mod ids;
pub mod jobs;
pub mod kommo;
pub mod lemonsqueezy;
pub mod money;
pub mod ops;
pub mod payment_links;
pub mod payments;
pub mod projections;
pub mod provider;
pub mod queue;
pub mod rate_limit;
pub mod recorder;
pub mod retry_policy;
pub mod self_serve;
pub mod signature;
pub mod stripe;
pub mod subscriptions;
pub mod telemetry;
pub mod wire;

/// A JSON value as a person reads it: a string without its quotes, anything else as JSON
/// (provider metadata and Kommo's values arrive as either).
pub fn plain_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
