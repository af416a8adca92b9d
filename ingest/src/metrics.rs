//! Counters of accepted and rejected deliveries, exposed at `/metrics` in Prometheus format.

use crate::IngestError;

#[derive(Clone)]
pub(crate) struct Metrics;

impl Metrics {
    /// Makes sure the process's recorder is installed.
    pub(crate) fn install() -> Metrics {
        kommo_pay_core::telemetry::metrics();
        Metrics
    }

    /// How long a delivery took from its request to its answer, by source and outcome.
    pub(crate) fn latency(&self, source: &'static str, outcome: &'static str, started: std::time::Instant) {
        metrics::histogram!("kommo_pay_ingest_seconds", "source" => source, "outcome" => outcome).record(started.elapsed().as_secs_f64());
    }

    pub(crate) fn accepted(&self, source: &'static str, account: &str, accepted: usize, duplicates: usize) {
        let labels = [("source", source.to_owned()), ("account", account.to_owned())];
        metrics::counter!("kommo_pay_events_appended_total", &labels).increment(accepted as u64);
        metrics::counter!("kommo_pay_events_duplicate_total", &labels).increment(duplicates as u64);
    }

    /// `account` is the slug only when it names a configured account: a URL's made-up slug must
    /// not create a metric series of its own.
    pub(crate) fn rejected(&self, source: &'static str, account: Option<&str>, error: &IngestError) {
        metrics::counter!(
            "kommo_pay_webhooks_rejected_total",
            "source" => source,
            "account" => account.unwrap_or("unknown").to_owned(),
            "reason" => error.reason(),
        )
        .increment(1);
    }
}
