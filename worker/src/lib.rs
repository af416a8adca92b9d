//! The worker role: claims jobs from the queue and runs their handlers.
//!
//! This version has no job handlers yet: jobs that ingest enqueues stay `available` in the
//! queue, durable, until a worker version that handles their kind runs.

use std::future::Future;

/// Runs the worker role until `shutdown` completes.
pub async fn run(shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    tracing::warn!("worker role: this version has no job handlers; enqueued jobs stay queued");
    shutdown.await;
    Ok(())
}
