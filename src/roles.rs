//! The long-running roles (ingest, worker, scheduler) and the metrics listener, in one process
//! or one each, until SIGTERM or Ctrl-C.

use anyhow::Context;
use kommo_pay_core::config::Config;
use sqlx::PgPool;
use tokio::sync::watch;

/// Which roles a process runs.
#[derive(Debug, Clone, Copy)]
pub struct Roles {
    pub ingest: bool,
    pub worker: bool,
    pub scheduler: bool,
}

impl Roles {
    pub const ALL: Roles = Roles { ingest: true, worker: true, scheduler: true };
    pub const INGEST: Roles = Roles { ingest: true, worker: false, scheduler: false };
    pub const WORKER: Roles = Roles { ingest: false, worker: true, scheduler: false };
    pub const SCHEDULER: Roles = Roles { ingest: false, worker: false, scheduler: true };
}

/// Runs `roles` (and the metrics listener, when configured) until a shutdown signal, or until
/// one of them fails.
pub async fn run(roles: Roles, config: &Config, pool: &PgPool) -> anyhow::Result<()> {
    if config.database.migrate_on_start {
        kommo_pay_core::db::migrate(pool).await?;
    }
    let stop = shutdown_signal();
    let ingest = async {
        if roles.ingest {
            let app = kommo_pay_ingest::Application::build(config, pool.clone()).await?;
            app.run_until_stopped(stopped(stop.clone())).await.context("the ingest server failed")?;
        }
        anyhow::Ok(())
    };
    let worker = async {
        if roles.worker {
            let context = kommo_pay_worker::Context::new(pool.clone(), &config.accounts);
            let handlers = kommo_pay_worker::handlers(context);
            let runner = kommo_pay_worker::Worker::new(pool.clone(), handlers, config.worker.clone(), config.jobs.clone());
            runner.run(stopped(stop.clone())).await?;
        }
        anyhow::Ok(())
    };
    let scheduler = async {
        if roles.scheduler {
            kommo_pay_scheduler::run(pool.clone(), config.accounts.clone(), config.jobs.clone(), &config.scheduler, stopped(stop.clone())).await?;
        }
        anyhow::Ok(())
    };
    let metrics = async {
        if let Some(listen) = config.metrics.listen {
            kommo_pay_ingest::serve_metrics(listen, &config.metrics.path, pool.clone(), stopped(stop.clone())).await?;
        }
        anyhow::Ok(())
    };
    let ran = tokio::try_join!(ingest, worker, scheduler, metrics);
    tracing::info!("stopped");
    ran.map(drop)
}

/// Flips to `true` on SIGTERM or Ctrl-C.
fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested");
        let _ = tx.send(true);
    });
    rx
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
