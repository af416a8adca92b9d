//! Batched writes: Kommo takes leads, notes and tasks in arrays (the vendor recommends at most 50
//! per request). One sender per account and endpoint sends whatever has gathered while its
//! previous request waited for a rate-limit slot or an answer, so there is no added delay when
//! writes are rare, and a bulk move of many deals costs a fraction of the requests.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::client::{Api, KommoError};

const MAX_BATCH: usize = 50;

type Reply = oneshot::Sender<Result<(), KommoError>>;

/// An item, who waits for its answer, and the span it was submitted in.
type Submitted = (Value, Reply, tracing::Span);

pub(super) struct Batcher {
    queue: mpsc::Sender<Submitted>,
}

impl Batcher {
    pub(super) fn spawn(api: Arc<Api>, method: reqwest::Method, path: &'static str) -> Batcher {
        let (queue, mut incoming) = mpsc::channel::<Submitted>(1024);
        tokio::spawn(async move {
            while let Some(batch) = crate::batching::next_batch(&mut incoming, MAX_BATCH).await {
                let items = Value::Array(batch.iter().map(|(item, _, _)| item.clone()).collect());
                // The request belongs to the first item's trace (a batch can serve several jobs).
                let span = batch[0].2.clone();
                match api.call::<Value>(method.clone(), path, Some(&items)).instrument(span).await {
                    Ok(_) => batch.into_iter().for_each(|(_, reply, _)| drop(reply.send(Ok(())))),
                    // Kommo refuses the whole array for one bad item: send each on its own, so
                    // only the bad one fails.
                    Err(KommoError::Refused { .. }) if batch.len() > 1 => {
                        for (item, reply, span) in batch {
                            let alone = api.call::<Value>(method.clone(), path, Some(&Value::Array(vec![item]))).instrument(span).await.map(drop);
                            let _ = reply.send(alone);
                        }
                    }
                    Err(error) => batch.into_iter().for_each(|(_, reply, _)| drop(reply.send(Err(error.replicate())))),
                }
            }
        });
        Batcher { queue }
    }

    /// Sends `item` with the next batch; returns when Kommo has answered for it.
    pub(super) async fn submit(&self, item: Value) -> Result<(), KommoError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || KommoError::Unavailable("the Kommo client is shutting down".into());
        self.queue.send((item, reply, tracing::Span::current())).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}
