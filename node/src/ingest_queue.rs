//! The queue of documents waiting to be chunked, embedded and stored. Workers take batches from
//! it; what a worker holds is remembered, so a worker that dies has its documents put back.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use ractor::ActorRef;
use shoal_storage::PendingDocument;

use crate::actors::ingest::IngestMsg;
use crate::metrics::Metrics;

type Key = (String, String, u64);

fn key(d: &PendingDocument) -> Key {
    (d.collection.clone(), d.doc_id.clone(), d.version)
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<PendingDocument>,
    /// Queued or in flight.
    known: HashSet<Key>,
    in_flight: HashMap<usize, Vec<PendingDocument>>,
}

pub struct IngestQueue {
    inner: Mutex<Inner>,
    workers: Mutex<HashMap<usize, ActorRef<IngestMsg>>>,
    metrics: Arc<Metrics>,
}

impl IngestQueue {
    pub fn new(metrics: Arc<Metrics>) -> IngestQueue {
        IngestQueue {
            inner: Mutex::new(Inner::default()),
            workers: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Queue documents (already queued ones are skipped) and wake the workers.
    pub fn enqueue(&self, docs: Vec<PendingDocument>) {
        {
            let mut inner = self.inner.lock();
            for d in docs {
                if inner.known.insert(key(&d)) {
                    inner.queue.push_back(d);
                }
            }
            self.metrics.ingest_queue.set(inner.queue.len() as i64);
        }
        self.wake();
    }

    fn wake(&self) {
        for w in self.workers.lock().values() {
            let _ = w.cast(IngestMsg::Work);
        }
    }

    /// A (re)started worker announces itself; whatever its previous incarnation held is queued again.
    pub fn attach_worker(&self, id: usize, worker: ActorRef<IngestMsg>) {
        self.workers.lock().insert(id, worker);
        self.retry(id);
        self.wake();
    }

    /// Put what `worker` holds back at the front of the queue.
    pub fn retry(&self, worker: usize) {
        let mut inner = self.inner.lock();
        if let Some(held) = inner.in_flight.remove(&worker) {
            for d in held.into_iter().rev() {
                inner.queue.push_front(d);
            }
        }
        self.metrics.ingest_queue.set(inner.queue.len() as i64);
    }

    /// Take documents for `worker`, at least one, until `byte_budget` of text is reached.
    pub fn take(&self, worker: usize, byte_budget: usize) -> Vec<PendingDocument> {
        let mut inner = self.inner.lock();
        let mut out = Vec::new();
        let mut bytes = 0;
        while bytes < byte_budget {
            let Some(d) = inner.queue.pop_front() else {
                break;
            };
            bytes += d.text.len();
            out.push(d);
        }
        inner
            .in_flight
            .entry(worker)
            .or_default()
            .extend(out.iter().cloned());
        self.metrics.ingest_queue.set(inner.queue.len() as i64);
        out
    }

    /// The worker finished everything it took.
    pub fn finish(&self, worker: usize) {
        let mut inner = self.inner.lock();
        if let Some(held) = inner.in_flight.remove(&worker) {
            for d in &held {
                inner.known.remove(&key(d));
            }
        }
    }

    /// Forget queued documents of a dropped collection.
    pub fn drop_collection(&self, collection: &str) {
        let mut inner = self.inner.lock();
        let Inner { queue, known, .. } = &mut *inner;
        queue.retain(|d| {
            let keep = d.collection != collection;
            if !keep {
                known.remove(&key(d));
            }
            keep
        });
        self.metrics.ingest_queue.set(queue.len() as i64);
    }

    pub fn len(&self) -> usize {
        self.inner.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, v: u64) -> PendingDocument {
        PendingDocument {
            collection: "c".into(),
            doc_id: id.into(),
            version: v,
            text: "x".repeat(10),
        }
    }

    #[test]
    fn take_finish_and_dedupe() {
        let q = IngestQueue::new(Arc::new(Metrics::new()));
        q.enqueue(vec![doc("a", 1), doc("b", 1), doc("a", 1), doc("c", 1)]);
        assert_eq!(q.len(), 3);
        let got = q.take(0, 15);
        assert_eq!(got.len(), 2);
        // in flight: not queued again
        q.enqueue(vec![doc("a", 1)]);
        assert_eq!(q.len(), 1);
        q.finish(0);
        q.enqueue(vec![doc("a", 1)]);
        assert_eq!(q.len(), 2);
        q.drop_collection("c");
        assert!(q.is_empty());
    }
}
