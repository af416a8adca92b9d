//! Counters of accepted and rejected deliveries, exposed at `/metrics` in Prometheus format.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::IngestError;

#[derive(Clone)]
pub(crate) struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// The process-wide recorder, installed on first use (several servers in one test process
    /// share it).
    pub(crate) fn install() -> Metrics {
        static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
        let handle = HANDLE.get_or_init(|| {
            PrometheusBuilder::new().install_recorder().expect("no other metrics recorder is installed")
        });
        Metrics { handle: handle.clone() }
    }

    pub(crate) fn render(&self) -> String {
        self.handle.render()
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
