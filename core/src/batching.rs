//! Drain up to N, then go: what every batching loop shares (the Kommo write batcher, the
//! worker's completer). A batch waits for its first item only, then takes whatever else is
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
    while batch.len() < max {
        let Ok(next) = incoming.try_recv() else { break };
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
}
