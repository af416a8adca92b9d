//! Wake-ups: a LISTEN connection that pokes the worker loop when ingest commits jobs.
//!
//! LISTEN connections die silently (half-open TCP, a restarted database); the worker also polls,
//! so a dead listener costs latency, never work. After any loss the listener reconnects and pokes
//! the loop once, since notifications sent meanwhile are gone.

use std::sync::Arc;
use std::time::Duration;

use kommo_pay_core::queue::WAKE_CHANNEL;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

pub(crate) async fn listen(pool: PgPool, wake: Arc<Notify>) {
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(WAKE_CHANNEL).await {
                Ok(()) => loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => wake.notify_one(),
                        // The connection was lost and re-established: anything sent meanwhile is lost.
                        Ok(None) => wake.notify_one(),
                        Err(error) => {
                            tracing::warn!(%error, "job wake-up listener failed; polling until it is back");
                            break;
                        }
                    }
                },
                Err(error) => tracing::warn!(%error, "cannot LISTEN for job wake-ups; polling until it works"),
            },
            Err(error) => tracing::warn!(%error, "cannot connect the job wake-up listener; polling until it works"),
        }
        wake.notify_one();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
