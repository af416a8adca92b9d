//! Batched requests: Kommo takes leads, notes and tasks in arrays, Salesbot launches in arrays
//! of up to 100, and reads leads and contacts by id in lists of up to 250. One sender per
//! account and endpoint takes the account's next rate-limit slot as soon as an item arrives, and
//! when it has the slot sends that item with every other that arrived meanwhile: no added delay
//! when work is rare, and a bulk move of many deals costs a fraction of the requests. The next
//! batch also gathers while the one before is answered, but for a second at most: a request goes
//! out on its own task, so a hung answer holds up no other.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::client::{Api, KommoError};

/// The most items of one write (the vendor recommends at most 50 leads, notes or tasks).
pub(super) const MOST_WRITES: usize = 50;
/// The most Salesbot launches in one `POST /api/v2/salesbot/run`.
pub(super) const MOST_LAUNCHES: usize = 100;
/// The most entities one list request returns (`limit=250`, Kommo's page size).
pub(super) const MOST_READS: usize = 250;

type Reply<T> = oneshot::Sender<Result<T, KommoError>>;

/// An item, who waits for its answer, and the span it was submitted in.
type Submitted = (Value, Reply<()>, tracing::Span);

/// Writes of one endpoint, sent as arrays.
pub(super) struct Batcher {
    queue: mpsc::Sender<Submitted>,
}

impl Batcher {
    pub(super) fn spawn(api: Arc<Api>, method: reqwest::Method, path: &'static str, most: usize) -> Batcher {
        let (queue, mut incoming) = mpsc::channel::<Submitted>(1024);
        tokio::spawn(async move {
            while let Some((batch, slot)) = in_slot(&api, &mut incoming, most).await {
                match slot {
                    Ok(()) => answered_or_slow(tokio::spawn(send_writes(api.clone(), method.clone(), path, batch))).await,
                    Err(error) => batch.into_iter().for_each(|(_, reply, _)| drop(reply.send(Err(error.replicate())))),
                }
            }
        });
        Batcher { queue }
    }

    /// Sends `item` with the next batch; returns when Kommo has answered for it.
    pub(super) async fn submit(&self, item: Value) -> Result<(), KommoError> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((item, reply, tracing::Span::current())).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// How long the next batch waits for the answer to the one before.
const SLOW_ANSWER: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits for `sending` to be answered, or [`SLOW_ANSWER`] (it then goes on alone).
async fn answered_or_slow(sending: tokio::task::JoinHandle<()>) {
    let _ = tokio::time::timeout(SLOW_ANSWER, sending).await;
}

/// The next batch and the slot it goes out in: waits for one item, then for the account's next
/// slot, then takes what else has arrived, up to `most`. `None` when every sender is gone.
async fn in_slot<T>(api: &Api, incoming: &mut mpsc::Receiver<T>, most: usize) -> Option<(Vec<T>, Result<(), KommoError>)> {
    let first = incoming.recv().await?;
    let slot = api.slot().await;
    let mut batch = vec![first];
    crate::batching::fill(&mut batch, incoming, most);
    Some((batch, slot))
}

/// Sends `batch` in the slot its sender took.
async fn send_writes(api: Arc<Api>, method: reqwest::Method, path: &'static str, batch: Vec<Submitted>) {
    let items = Value::Array(batch.iter().map(|(item, _, _)| item.clone()).collect());
    // The request belongs to the first item's trace (a batch can serve several jobs).
    let span = batch[0].2.clone();
    match api.call_in_slot::<Value>(method.clone(), path, Some(&items)).instrument(span).await {
        Ok(_) => batch.into_iter().for_each(|(_, reply, _)| drop(reply.send(Ok(())))),
        // Kommo refuses the whole array for one bad item: send each on its own, so only the bad
        // one fails.
        Err(KommoError::Refused { .. }) if batch.len() > 1 => {
            for (item, reply, span) in batch {
                let alone = api.call::<Value>(method.clone(), path, Some(&Value::Array(vec![item]))).instrument(span).await.map(drop);
                let _ = reply.send(alone);
            }
        }
        Err(error) => batch.into_iter().for_each(|(_, reply, _)| drop(reply.send(Err(error.replicate())))),
    }
}

/// Ids to read, who waits for them, and the span they were asked for in.
type Asked = (Vec<i64>, Reply<HashMap<i64, Vec<Value>>>, tracing::Span);

/// A list endpoint read by ids: `GET {path}?{query}&filter[{by}][]=…&limit=250&page=…`, its
/// entities under `_embedded.{embedded}`, each belonging to the id in its field `by`.
#[derive(Debug, Clone, Copy)]
pub(super) struct List {
    pub path: &'static str,
    pub query: &'static str,
    pub by: &'static str,
    pub embedded: &'static str,
}

/// Reads of one list endpoint by ids: the ids asked for while the previous list waited for its
/// slot go out together.
pub(super) struct Reader {
    queue: mpsc::Sender<Asked>,
}

impl Reader {
    pub(super) fn spawn(api: Arc<Api>, list: List) -> Reader {
        let (queue, mut incoming) = mpsc::channel::<Asked>(1024);
        tokio::spawn(async move {
            while let Some((asked, slot)) = in_slot(&api, &mut incoming, MOST_READS).await {
                match slot {
                    Ok(()) => answered_or_slow(tokio::spawn(send_reads(api.clone(), list, asked))).await,
                    Err(error) => asked.into_iter().for_each(|(_, reply, _)| drop(reply.send(Err(error.replicate())))),
                }
            }
        });
        Reader { queue }
    }

    /// The one entity with `id` (a lead, a contact), if Kommo has it.
    pub(super) async fn read_one(&self, id: i64) -> Result<Option<Value>, KommoError> {
        Ok(self.read(vec![id]).await?.remove(&id).and_then(|found| found.into_iter().next()))
    }

    /// The entities of each of `ids` (an id with none is missing from the map).
    pub(super) async fn read(&self, ids: Vec<i64>) -> Result<HashMap<i64, Vec<Value>>, KommoError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let (reply, answer) = oneshot::channel();
        self.queue.send((ids, reply, tracing::Span::current())).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Reads every id `asked` for, 250 ids a list, every page of it (the first request in the slot
/// its sender took), and answers each asker with its own.
async fn send_reads(api: Arc<Api>, list: List, asked: Vec<Asked>) {
    let ids: Vec<i64> = asked.iter().flat_map(|(ids, _, _)| ids.iter().copied()).collect::<BTreeSet<_>>().into_iter().collect();
    let span = asked[0].2.clone();
    let read = async {
        let mut found: HashMap<i64, Vec<Value>> = HashMap::new();
        let mut in_slot = true;
        for chunk in ids.chunks(MOST_READS) {
            let filter: String = chunk.iter().map(|id| format!("&filter[{}][]={id}", list.by)).collect();
            for page in 1.. {
                let query = if list.query.is_empty() { String::new() } else { format!("&{}", list.query) };
                let url = format!("{}?limit={MOST_READS}&page={page}{query}{filter}", list.path);
                let answer = if std::mem::take(&mut in_slot) {
                    api.call_in_slot::<Page>(reqwest::Method::GET, &url, None).await?
                } else {
                    api.call(reqwest::Method::GET, &url, None).await?
                };
                let Some(answer) = answer else { break };
                let last = !answer.has_next();
                for entity in answer.entities(list.embedded) {
                    if let Some(id) = entity.get(list.by).and_then(crate::wire::lenient_id) {
                        found.entry(id).or_default().push(entity);
                    }
                }
                if last {
                    break;
                }
            }
        }
        Ok::<_, KommoError>(found)
    };
    let found = read.instrument(span).await;
    for (ids, reply, _) in asked {
        let answer = match &found {
            Err(error) => Err(error.replicate()),
            Ok(found) => Ok(ids.iter().filter_map(|id| found.get(id).map(|entities| (*id, entities.clone()))).collect()),
        };
        let _ = reply.send(answer);
    }
}

/// One page of a Kommo list: `{"_embedded": {"<entities>": […]}, "_links": {"next"?}}`.
#[derive(serde::Deserialize)]
pub(super) struct Page {
    #[serde(default, rename = "_embedded")]
    embedded: HashMap<String, Value>,
    #[serde(default, rename = "_links")]
    links: HashMap<String, Value>,
}

impl Page {
    /// The page's `entities` (`leads`, `notes`, …) as Kommo sent them.
    pub(super) fn entities(mut self, entities: &str) -> Vec<Value> {
        match self.embedded.remove(entities) {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        }
    }

    /// The page's `entities` as `T`; items not of the shape are left out.
    pub(super) fn items<T: serde::de::DeserializeOwned>(self, entities: &str) -> Vec<T> {
        self.entities(entities).into_iter().filter_map(|item| serde_json::from_value(item).ok()).collect()
    }

    /// Whether another page follows.
    pub(super) fn has_next(&self) -> bool {
        self.links.contains_key("next")
    }
}

fn stopped() -> KommoError {
    KommoError::Unavailable("the Kommo client is shutting down".into())
}
