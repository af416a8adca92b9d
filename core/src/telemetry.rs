//! Logs (human-readable or JSON lines, filtered by the configuration or `RUST_LOG`) and metrics
//! (one Prometheus recorder per process, rendered by whichever `/metrics` endpoint it serves).
//!
//! Secrets, signature headers and request bodies are never logged above debug level; the ingest
//! server logs the route template, never the URI (Kommo's URL carries the account's secret).

use std::collections::HashMap;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use sqlx::PgPool;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, LogSection};

/// What [`init`] set up; [`Tracing::shutdown`] sends the spans still buffered.
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Tracing {
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("could not send the last spans: {error}");
        }
    }
}

/// Installs the global subscriber: logs, and spans over OTLP (HTTP) when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the exporter reads the other `OTEL_*` variables).
/// Without it no OpenTelemetry layer exists, so spans cost nothing extra. Call once, at start-up.
pub fn init(log: &LogSection) -> Tracing {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.filter));
    let provider = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|v| !v.is_empty()).and_then(|_| {
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build().map_err(|error| eprintln!("OpenTelemetry is off: {error}")).ok()?;
        let resource = opentelemetry_sdk::Resource::builder().with_service_name("kommo-pay").build();
        Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
    });
    let spans = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("kommo-pay")));
    let registry = tracing_subscriber::registry().with(filter).with(spans);
    let format = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match log.format {
        LogFormat::Human => registry.with(format).init(),
        LogFormat::Json => registry.with(format.json().with_current_span(true).with_span_list(false)).init(),
    }
    if let Some(provider) = &provider {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    Tracing { provider }
}

/// The current span's trace context as a W3C `traceparent`, to store with an event or a job so
/// that whoever handles it continues the trace; `None` when tracing is off.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.inject_context(&context, &mut carrier));
    carrier.remove("traceparent")
}

/// Makes `span` continue the trace `traceparent` names (stored by [`current_traceparent`]).
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let context = opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&carrier));
    let _ = span.set_parent(context);
}

/// The process's metrics recorder, installed on first use (several servers in one test process
/// share it).
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().expect("no other metrics recorder is installed")).clone()
}

/// The metrics in Prometheus text, the queue's gauges read from the database first:
/// `kommo_pay_jobs{state}`, `kommo_pay_dead_letters` and `kommo_pay_oldest_runnable_job_seconds`.
/// A database that does not answer leaves the gauges as they were (the scrape still succeeds).
pub async fn render_metrics(pool: &PgPool) -> String {
    let handle = metrics();
    match queue_gauges(pool).await {
        Ok(()) => {}
        Err(error) => tracing::debug!(%error, "queue gauges not refreshed"),
    }
    handle.render()
}

async fn queue_gauges(pool: &PgPool) -> Result<(), sqlx::Error> {
    let (states, oldest) = crate::ops::queue_stats::depth(pool).await?;
    // Every state, so that a state that emptied shows 0 rather than its last count.
    for state in ["available", "running", "retryable", "completed", "dead", "discarded", "replayed"] {
        let count = states.iter().find(|c| c.state == state).map_or(0, |c| c.count);
        metrics::gauge!("kommo_pay_jobs", "state" => state).set(count as f64);
        if state == "dead" {
            metrics::gauge!("kommo_pay_dead_letters").set(count as f64);
        }
    }
    metrics::gauge!("kommo_pay_oldest_runnable_job_seconds").set(oldest);
    // Every provider with a budget, so that one nobody waits for shows 0.
    let waiting = crate::ops::queue_stats::waiting(pool).await?;
    for provider in [crate::provider::Provider::Kommo, crate::provider::Provider::LemonSqueezy] {
        let count: i64 = waiting.iter().filter(|w| w.provider == provider.as_str()).map(|w| w.count).sum();
        metrics::gauge!("kommo_pay_jobs_waiting_for_rate_limit", "provider" => provider.as_str()).set(count as f64);
    }
    // 1 while an account's calls to a provider are stopped (a 403 block, an uninstall).
    for (provider, account, blocked) in crate::ops::queue_stats::blocks(pool).await? {
        metrics::gauge!("kommo_pay_provider_blocked", "provider" => provider, "account" => account).set(if blocked.is_some() { 1.0 } else { 0.0 });
    }
    Ok(())
}
