//! Logs: human-readable or JSON lines, filtered by the configuration or `RUST_LOG`.
//!
//! Secrets, signature headers and request bodies are never logged above debug level; the ingest
//! server logs the route template, never the URI (Kommo's URL carries the account's secret).

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSection};

/// Installs the global subscriber. Call once, at start-up.
pub fn init(log: &LogSection) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match log.format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
    }
}
