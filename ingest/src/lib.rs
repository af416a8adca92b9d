//! The ingest role: an HTTP server that authenticates webhooks from Kommo, Stripe and Lemon
//! Squeezy, appends them to the event log together with the jobs they imply, commits, and only
//! then answers. It makes no outbound calls, so it answers fast (Kommo gives up after 2 s).
//!
//! | answer | when |
//! |---|---|
//! | 200 | accepted, or a duplicate of an event already in the log |
//! | 400 | authentic but malformed or unstorable, or a Stripe signature older/newer than the tolerance |
//! | 401 | missing or wrong signature or URL secret, or a Kommo `account[id]` of another account |
//! | 404 | no such account, or the account does not use that provider |
//! | 413 | body over `server.body_limit_bytes` |
//! | 503 | the event could not be committed: the provider will retry |

mod appender;
mod console;
mod error;
mod metrics;
mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt;
use kommo_pay_core::config::{Account, Accounts, Config, JobPolicies, OpsToken};
use kommo_pay_core::event_log::NewEvent;
use kommo_pay_core::{jobs, queue};
use sqlx::PgPool;
use tokio::net::TcpListener;

pub use error::IngestError;

/// How often, at most, committed jobs wake the workers.
const WAKE_INTERVAL: Duration = Duration::from_millis(5);

/// What every request handler shares (behind an `Arc`: axum clones the state for each request).
pub(crate) struct AppState {
    pool: PgPool,
    accounts: Accounts,
    job_policies: JobPolicies,
    ops_tokens: Vec<OpsToken>,
    appender: appender::Appender,
    metrics: metrics::Metrics,
    console: console::ConsoleState,
}

/// What an accepted delivery gets back.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Accepted {
    /// Events new to the log.
    accepted: usize,
    /// Events the log already had (redeliveries).
    duplicates: usize,
}

impl AppState {
    /// Appends `events` of `account` and the jobs they imply, committed together (with other
    /// deliveries arriving at the same time); wakes the workers after the commit.
    async fn append(&self, account: &Account, events: Vec<NewEvent>) -> Result<Accepted, IngestError> {
        let jobs: Vec<_> = events.iter().flat_map(|event| jobs::implied_by(event, account, &self.job_policies)).collect();
        self.appender.append(events, jobs).await
    }
}

/// The ingest server, bound to its port but not yet serving.
pub struct Application {
    listener: TcpListener,
    router: Router,
}

impl Application {
    /// Binds `config.server.listen` (port 0 picks a free port) and builds the router over `pool`.
    pub async fn build(config: &Config, pool: PgPool) -> anyhow::Result<Application> {
        let listener = TcpListener::bind(config.server.listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.listen))?;
        let waker = queue::Waker::spawn(pool.clone(), WAKE_INTERVAL);
        let state = AppState {
            appender: appender::Appender::spawn(pool.clone(), waker, config.database.ingest_concurrent_appends, config.database.acquire_timeout),
            pool,
            accounts: config.accounts.clone(),
            job_policies: config.jobs.clone(),
            ops_tokens: config.ops_tokens.clone(),
            metrics: metrics::Metrics::install(),
            console: console::ConsoleState { idle: config.console_idle, throttle: console::Throttle::new(), runs: console::Runs::default() },
        };
        Ok(Application { listener, router: routes::router(std::sync::Arc::new(state), config.server.body_limit_bytes, &config.metrics.path) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        tracing::info!(address = %self.local_addr(), "ingest listening");
        // Answers go out as soon as they are written, not held back for a delayed ACK (Nagle).
        let listener = self.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, self.router).with_graceful_shutdown(shutdown).await
    }
}

/// Serves `path` (the metrics) and `/healthz` on `listen` until `shutdown` completes: how worker
/// and scheduler processes, which have no server of their own, are scraped.
pub async fn serve_metrics(listen: SocketAddr, path: &str, pool: PgPool, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    use axum::routing::get;
    let listener = TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("cannot listen for metrics on {listen}: {e}"))?;
    kommo_pay_core::telemetry::metrics();
    let router = Router::new()
        .route(path, get(async move |axum::extract::State(pool): axum::extract::State<PgPool>| kommo_pay_core::telemetry::render_metrics(&pool).await))
        .route("/healthz", get(async || "ok"))
        .with_state(pool);
    tracing::info!(address = %listen, path, "metrics listening");
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await?;
    Ok(())
}
