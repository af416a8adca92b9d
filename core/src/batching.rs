//! Drain up to N, then go: what every batching loop shares (ingest's appender, the Kommo
//! batchers, the worker's completer). A batch waits for its first item only, then takes whatever else is
//! ready, so an idle system sends each item alone with no added latency, and a busy one sends
//! full batches.

use tokio::sync::mpsc;

/// The next batch from `incoming`: waits for one item, then takes up to `max` in all of those
/// already waiting. `None` when every sender is gone.
pub async fn next_batch<T>(incoming: &mut mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let first = incoming.recv().await?;
    let mut batch = vec![first];
    fill(&mut batch, incoming, max);
    Some(batch)
}

/// Adds to `batch` the items already waiting in `incoming`, up to `max` in all; never waits.
pub fn fill<T>(batch: &mut Vec<T>, incoming: &mut mpsc::Receiver<T>, max: usize) {
    fill_weighed(batch, incoming, max, |_| 1);
}

/// [`fill`] for items of different sizes (a delivery of many events): takes waiting items while
/// the batch's total `weight` is below `max`, so one item may take it past `max`.
pub fn fill_weighed<T>(batch: &mut Vec<T>, incoming: &mut mpsc::Receiver<T>, max: usize, weight: impl Fn(&T) -> usize) {
    let mut total: usize = batch.iter().map(&weight).sum();
    while total < max {
        let Ok(next) = incoming.try_recv() else { break };
        total += weight(&next);
        batch.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_takes_what_is_waiting_up_to_the_most_and_never_waits_for_more() {
        let (sender, mut incoming) = mpsc::channel(16);
        for i in 0..5 {
            sender.send(i).await.unwrap();
        }
        assert_eq!(next_batch(&mut incoming, 3).await, Some(vec![0, 1, 2]));
        assert_eq!(next_batch(&mut incoming, 3).await, Some(vec![3, 4]), "what is left, at once");
        drop(sender);
        assert_eq!(next_batch(&mut incoming, 3).await, None);
    }

    #[tokio::test]
    async fn a_weighed_batch_stops_once_its_weight_reaches_the_most() {
        let (sender, mut incoming) = mpsc::channel(16);
        for size in [2, 2, 1, 5] {
            sender.send(size).await.unwrap();
        }
        let mut batch = vec![1];
        fill_weighed(&mut batch, &mut incoming, 4, |size| *size);
        assert_eq!(batch, vec![1, 2, 2], "1 + 2 is under 4, so the next 2 joins; 5 is not reached");
        assert_eq!(incoming.try_recv().ok(), Some(1));
    }
}
