//! The queue of documents waiting to be chunked, embedded and stored.
//!
//! It holds keys only (collection, document, version, size): the text stays in the store until a
//! worker takes the document. What a worker holds is remembered, so a worker that dies has its
//! documents put back. The queue is bounded: a request to add documents first reserves its body's
//! size ([`IngestQueue::admit`]); when the queued and reserved bytes or documents would pass the
//! configured limits it is refused (429 with a time to retry after), before its body is read.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ractor::ActorRef;
use shoal_storage::PendingDocument;

use crate::actors::ingest::IngestMsg;
use crate::metrics::Metrics;

/// The queue's limits (`ingest.max_queue_bytes`, `ingest.max_queue_documents`).
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_bytes: u64,
    pub max_documents: u64,
}

/// Why a request was not admitted, and when it may try again.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueFull {
    pub message: String,
    pub retry_after: Duration,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<PendingDocument>,
    /// Queued, in flight, or deferred.
    known: HashSet<PendingDocument>,
    /// Claimed by another node until the given time (ms since the epoch): looked at again then,
    /// in case that node is gone and its claim expires.
    deferred: Vec<(PendingDocument, u64)>,
    in_flight: HashMap<usize, Vec<PendingDocument>>,
    /// Text bytes and documents queued or in flight.
    bytes: u64,
    documents: u64,
    /// Bytes and documents reserved by requests still being read or applied.
    reserved_bytes: u64,
    reserved_documents: u64,
    /// Text bytes per second the workers have been getting through (smoothed).
    rate: f64,
    rate_since: Option<Instant>,
    rate_bytes: u64,
}

pub struct IngestQueue {
    inner: Arc<Mutex<Inner>>,
    workers: Mutex<HashMap<usize, ActorRef<IngestMsg>>>,
    limits: QueueLimits,
    metrics: Arc<Metrics>,
}

/// Room reserved in the queue for one request; given back when dropped.
pub struct Reservation {
    inner: Arc<Mutex<Inner>>,
    bytes: u64,
    documents: u64,
}

impl Reservation {
    /// Keep only `bytes` of the room reserved (a body is read: its real size is known).
    pub fn shrink_to(&mut self, bytes: u64) {
        if bytes < self.bytes {
            let mut inner = self.inner.lock();
            inner.reserved_bytes = inner.reserved_bytes.saturating_sub(self.bytes - bytes);
            self.bytes = bytes;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut inner = self.inner.lock();
        inner.reserved_bytes = inner.reserved_bytes.saturating_sub(self.bytes);
        inner.reserved_documents = inner.reserved_documents.saturating_sub(self.documents);
    }
}

impl IngestQueue {
    pub fn new(limits: QueueLimits, metrics: Arc<Metrics>) -> IngestQueue {
        IngestQueue {
            inner: Arc::new(Mutex::new(Inner::default())),
            workers: Mutex::new(HashMap::new()),
            limits,
            metrics,
        }
    }

    /// Reserve room for a request of `bytes` (its body) and `documents`, or say when to retry.
    pub fn admit(&self, bytes: u64, documents: u64) -> Result<Reservation, QueueFull> {
        let mut inner = self.inner.lock();
        let want_bytes = inner.bytes + inner.reserved_bytes + bytes;
        let want_docs = inner.documents + inner.reserved_documents + documents;
        let over = if want_bytes > self.limits.max_bytes {
            Some((
                format!(
                    "the ingest queue is full: {} MiB waiting, this request adds {} KiB, the limit is {} MiB (ingest.max_queue_bytes)",
                    (inner.bytes + inner.reserved_bytes) >> 20,
                    bytes.div_ceil(1024),
                    self.limits.max_bytes >> 20
                ),
                want_bytes - self.limits.max_bytes,
            ))
        } else if want_docs > self.limits.max_documents {
            let per_doc = inner.bytes / inner.documents.max(1);
            Some((
                format!(
                    "the ingest queue is full: {} documents waiting, this request adds {documents}, the limit is {} (ingest.max_queue_documents)",
                    inner.documents + inner.reserved_documents,
                    self.limits.max_documents
                ),
                (want_docs - self.limits.max_documents) * per_doc.max(1),
            ))
        } else {
            None
        };
        if let Some((message, excess_bytes)) = over {
            self.metrics.ingest_rejected.inc();
            // Long enough for the workers to make that much room at their recent pace.
            let rate = inner.rate.max(64.0 * 1024.0);
            let secs = (excess_bytes as f64 / rate).ceil().clamp(1.0, 60.0);
            return Err(QueueFull {
                message,
                retry_after: Duration::from_secs(secs as u64),
            });
        }
        inner.reserved_bytes += bytes;
        inner.reserved_documents += documents;
        Ok(Reservation {
            inner: self.inner.clone(),
            bytes,
            documents,
        })
    }

    /// Queue documents (already queued ones are skipped) and wake the workers. Documents the
    /// store has accepted are always queued, whatever the limits.
    pub fn enqueue(&self, docs: Vec<PendingDocument>) {
        {
            let mut inner = self.inner.lock();
            for d in docs {
                if inner.known.insert(d.clone()) {
                    inner.bytes += d.bytes;
                    inner.documents += 1;
                    inner.queue.push_back(d);
                }
            }
            self.update_gauges(&inner);
        }
        self.wake();
    }

    fn update_gauges(&self, inner: &Inner) {
        self.metrics.ingest_queue.set(inner.queue.len() as i64);
        self.metrics.ingest_queue_bytes.set(inner.bytes as i64);
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
        self.update_gauges(&inner);
    }

    /// Take documents for `worker`, at least one, until `byte_budget` of text is reached.
    pub fn take(&self, worker: usize, byte_budget: u64) -> Vec<PendingDocument> {
        let mut inner = self.inner.lock();
        let mut out = Vec::new();
        let mut bytes = 0;
        while bytes < byte_budget {
            let Some(d) = inner.queue.pop_front() else {
                break;
            };
            // Done meanwhile (another node stored it): nothing to take.
            if !inner.known.contains(&d) {
                continue;
            }
            bytes += d.bytes;
            out.push(d);
        }
        inner
            .in_flight
            .entry(worker)
            .or_default()
            .extend(out.iter().cloned());
        self.update_gauges(&inner);
        out
    }

    /// The worker finished everything it took.
    pub fn finish(&self, worker: usize) {
        let mut inner = self.inner.lock();
        let Some(held) = inner.in_flight.remove(&worker) else {
            return;
        };
        // The rate counts what the worker got through, whether or not a done effect (its own
        // stored chunks) took the documents off the books first.
        let done: u64 = held.iter().map(|d| d.bytes).sum();
        for d in &held {
            if inner.known.remove(d) {
                inner.bytes = inner.bytes.saturating_sub(d.bytes);
                inner.documents = inner.documents.saturating_sub(1);
            }
        }
        // Smoothed rate over windows of at least a second.
        let now = Instant::now();
        let since = *inner.rate_since.get_or_insert(now);
        inner.rate_bytes += done;
        let elapsed = now.duration_since(since).as_secs_f64();
        if elapsed >= 1.0 {
            let r = inner.rate_bytes as f64 / elapsed;
            inner.rate = if inner.rate == 0.0 {
                r
            } else {
                0.7 * inner.rate + 0.3 * r
            };
            inner.rate_since = Some(now);
            inner.rate_bytes = 0;
        }
        self.update_gauges(&inner);
    }

    /// Queue documents (like [`IngestQueue::enqueue`]) to be taken only from `until_ms` on.
    pub fn enqueue_later(&self, docs: Vec<PendingDocument>, until_ms: u64) {
        let mut inner = self.inner.lock();
        for d in docs {
            if inner.known.insert(d.clone()) {
                inner.bytes += d.bytes;
                inner.documents += 1;
                inner.deferred.push((d, until_ms));
            }
        }
        self.update_gauges(&inner);
    }

    /// These versions are done (on this node or another): forget them, wherever they wait; a
    /// worker holding one finds it done when it reads it.
    pub fn done(&self, docs: &[PendingDocument]) {
        let mut inner = self.inner.lock();
        for d in docs {
            if inner.known.remove(d) {
                inner.bytes = inner.bytes.saturating_sub(d.bytes);
                inner.documents = inner.documents.saturating_sub(1);
            }
        }
        self.update_gauges(&inner);
    }

    /// `worker` found these of its documents claimed by other nodes until the given times: they
    /// leave its hands and wait until then (see [`IngestQueue::release_due`]).
    pub fn defer(&self, worker: usize, docs: Vec<(PendingDocument, u64)>) {
        let mut inner = self.inner.lock();
        if let Some(held) = inner.in_flight.get_mut(&worker) {
            held.retain(|d| !docs.iter().any(|(x, _)| x == d));
        }
        inner.deferred.extend(docs);
    }

    /// Queue again the deferred documents whose other claim has expired by `now_ms` (if that
    /// node finished them meanwhile, the worker that takes them finds them done).
    pub fn release_due(&self, now_ms: u64) -> usize {
        let released = {
            let mut inner = self.inner.lock();
            let deferred = std::mem::take(&mut inner.deferred);
            let (due, wait): (Vec<_>, Vec<_>) = deferred
                .into_iter()
                .filter(|(d, _)| inner.known.contains(d))
                .partition(|(_, until)| *until <= now_ms);
            inner.deferred = wait;
            let n = due.len();
            for (d, _) in due {
                inner.queue.push_back(d);
            }
            self.update_gauges(&inner);
            n
        };
        if released > 0 {
            self.wake();
        }
        released
    }

    /// Forget everything queued or deferred (the state was replaced; the caller queues the new
    /// state's pending documents). What workers hold stays theirs until they finish.
    pub fn clear(&self) {
        let mut inner = self.inner.lock();
        inner.queue.clear();
        inner.deferred.clear();
        let held: HashSet<PendingDocument> = inner.in_flight.values().flatten().cloned().collect();
        inner.bytes = held.iter().map(|d| d.bytes).sum();
        inner.documents = held.len() as u64;
        inner.known = held;
        self.update_gauges(&inner);
    }

    /// Forget queued documents of a dropped collection.
    pub fn drop_collection(&self, uid: u64) {
        let mut inner = self.inner.lock();
        let Inner {
            queue,
            known,
            bytes,
            documents,
            deferred,
            ..
        } = &mut *inner;
        let mut forget = |d: &PendingDocument| {
            let keep = d.uid != uid;
            if !keep && known.remove(d) {
                *bytes = bytes.saturating_sub(d.bytes);
                *documents = documents.saturating_sub(1);
            }
            keep
        };
        queue.retain(&mut forget);
        deferred.retain(|(d, _)| forget(d));
        self.update_gauges(&inner);
    }

    /// Documents waiting (not in flight).
    pub fn len(&self) -> usize {
        self.inner.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Text bytes queued or in flight.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, v: u64) -> PendingDocument {
        PendingDocument {
            collection: "c".into(),
            uid: 1,
            doc_id: id.into(),
            version: v,
            bytes: 10,
        }
    }

    fn queue(max_bytes: u64, max_documents: u64) -> IngestQueue {
        IngestQueue::new(
            QueueLimits {
                max_bytes,
                max_documents,
            },
            Arc::new(Metrics::new()),
        )
    }

    #[test]
    fn take_finish_and_dedupe() {
        let q = queue(1 << 20, 1000);
        q.enqueue(vec![doc("a", 1), doc("b", 1), doc("a", 1), doc("c", 1)]);
        assert_eq!(q.len(), 3);
        assert_eq!(q.bytes(), 30);
        let got = q.take(0, 15);
        assert_eq!(got.len(), 2);
        // in flight: not queued again
        q.enqueue(vec![doc("a", 1)]);
        assert_eq!(q.len(), 1);
        q.finish(0);
        assert_eq!(q.bytes(), 10);
        q.enqueue(vec![doc("a", 1)]);
        assert_eq!(q.len(), 2);
        q.drop_collection(1);
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn documents_claimed_elsewhere_wait_until_that_claim_expires() {
        let q = queue(1 << 20, 1000);
        q.enqueue(vec![doc("a", 1), doc("b", 1)]);
        let got = q.take(0, 1000);
        assert_eq!(got.len(), 2);
        q.defer(0, vec![(doc("b", 1), 500)]);
        q.finish(0);
        // `b` is still known (not queued twice) and counted
        q.enqueue(vec![doc("b", 1)]);
        assert_eq!((q.len(), q.bytes()), (0, 10));
        assert_eq!(q.release_due(499), 0);
        assert_eq!(q.release_due(500), 1);
        assert_eq!(q.take(0, 1000), vec![doc("b", 1)]);
        q.finish(0);
        assert_eq!(q.bytes(), 0);
        // a version done elsewhere leaves the queue and its room is given back
        q.enqueue(vec![doc("e", 1)]);
        q.defer(9, vec![(doc("f", 1), u64::MAX)]);
        q.enqueue(vec![doc("f", 1)]);
        q.done(&[doc("e", 1), doc("f", 1)]);
        assert_eq!(q.bytes(), 0);
        assert!(q.take(0, 1000).is_empty());
        assert_eq!(q.release_due(u64::MAX), 0);
        // clear keeps only what workers hold
        q.enqueue(vec![doc("c", 1), doc("d", 1)]);
        q.take(1, 5);
        q.clear();
        assert_eq!((q.len(), q.bytes()), (0, 10));
    }

    #[test]
    fn admission_is_refused_past_the_limits_and_reservations_are_given_back() {
        let q = queue(100, 5);
        let a = q.admit(60, 2).unwrap();
        // reserved bytes count: 60 + 50 > 100
        let full = q.admit(50, 1).map(|_| ()).unwrap_err();
        assert!(
            full.message.contains("ingest.max_queue_bytes"),
            "{}",
            full.message
        );
        assert!(full.retry_after >= Duration::from_secs(1));
        drop(a);
        let b = q.admit(50, 1).unwrap();
        // queued documents count too
        q.enqueue(vec![doc("a", 1), doc("b", 1), doc("c", 1), doc("d", 1)]);
        let full = q.admit(0, 1).map(|_| ()).unwrap_err();
        assert!(
            full.message.contains("ingest.max_queue_documents"),
            "{}",
            full.message
        );
        drop(b);
        assert!(q.admit(10, 1).is_ok());
        // finished work makes room
        q.take(0, 1000);
        q.finish(0);
        assert!(q.admit(100, 5).is_ok());
    }
}
