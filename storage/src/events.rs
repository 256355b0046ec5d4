//! The node's own search events: kept beside the replicated state (in a tree of their own that no
//! snapshot, digest or backup carries), each node recording the searches it answered, with a
//! bounded retention.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sled::Tree;

use crate::codec::{decode, encode};
use crate::{Store, StoreError};

const EVENTS_TREE: &str = "node/search-events";

/// One search as the node answered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchEvent {
    pub at_ms: u64,
    /// Who searched (user, key or token subject).
    pub user: String,
    pub collection: String,
    /// Reranked (else a baseline vector search).
    pub rerank: bool,
    pub latency_us: u64,
    pub hits: u32,
    /// The HTTP status answered (499: the request was gone before its answer).
    pub status: u16,
    /// The query text, kept for searches that found nothing (cut to 256 bytes).
    pub empty_query: Option<String>,
}

/// The node's search events, oldest first by time.
pub struct EventLog {
    tree: Tree,
    seq: AtomicU64,
    /// Events in the tree (counted once at open, then kept: sled counts a tree by walking it).
    count: AtomicU64,
}

impl EventLog {
    pub fn open(store: &Store) -> Result<EventLog, StoreError> {
        let tree = store.db.open_tree(EVENTS_TREE)?;
        Ok(EventLog {
            count: AtomicU64::new(tree.len() as u64),
            tree,
            // unique across restarts too: two events of the same millisecond never share a key
            seq: AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0),
            ),
        })
    }

    fn key(&self, at_ms: u64) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&at_ms.to_be_bytes());
        k[8..].copy_from_slice(&self.seq.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        k
    }

    /// Record events (not synced: a crash may lose the last moments of analytics, never state).
    ///
    /// One insert at a time, not one batch: sled (0.34) applies a batch under a lock of the whole
    /// process that every read of every tree waits for, the records a search reads for its hits
    /// among them. A batch of a quarter second's events held each search behind it: with one
    /// client, p99 2.9 ms against 0.7 ms with no events written (docs/benchmarks.md). The events
    /// need no atomicity with each other.
    pub fn append(&self, events: &[SearchEvent]) -> Result<(), StoreError> {
        for e in events {
            if self.tree.insert(self.key(e.at_ms), encode(e))?.is_none() {
                self.count.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Events from `since_ms` (included) to `until_ms` (excluded), oldest first; at most `limit`.
    pub fn between(
        &self,
        since_ms: u64,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<SearchEvent>, StoreError> {
        let mut out = Vec::new();
        self.visit(since_ms, until_ms, limit, |e| {
            out.push(e);
            true
        })?;
        Ok(out)
    }

    /// Hand the events of `since_ms..until_ms` to `f` one at a time, oldest first, until `f`
    /// answers false or `limit` were read; answers how many were read.
    pub fn visit(
        &self,
        since_ms: u64,
        until_ms: u64,
        limit: usize,
        mut f: impl FnMut(SearchEvent) -> bool,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        let range = since_ms.to_be_bytes().to_vec()..until_ms.to_be_bytes().to_vec();
        for kv in self.tree.range(range) {
            if n >= limit {
                break;
            }
            let (k, v) = kv?;
            n += 1;
            if !f(decode(&k, &v)?) {
                break;
            }
        }
        Ok(n)
    }

    /// Forget events older than `before_ms`, and the oldest beyond `max_events`; answers how
    /// many went.
    /// (One removal at a time, as `append` inserts.)
    pub fn expire(&self, before_ms: u64, max_events: usize) -> Result<u64, StoreError> {
        let mut removed = 0;
        let mut remove = |k: sled::IVec| -> Result<(), StoreError> {
            if self.tree.remove(k)?.is_some() {
                // (never below 0: an event being appended may be removed before it is counted)
                let _ = self
                    .count
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                        Some(c.saturating_sub(1))
                    });
                removed += 1;
            }
            Ok(())
        };
        for kv in self.tree.range(..before_ms.to_be_bytes().to_vec()) {
            remove(kv?.0)?;
        }
        let len = self.len();
        if len > max_events {
            for kv in self.tree.iter().take(len - max_events) {
                remove(kv?.0)?;
            }
        }
        Ok(removed)
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at_ms: u64, status: u16) -> SearchEvent {
        SearchEvent {
            at_ms,
            user: "u".into(),
            collection: "c".into(),
            rerank: false,
            latency_us: 1000,
            hits: 3,
            status,
            empty_query: None,
        }
    }

    #[test]
    fn events_are_kept_in_time_order_and_expire() {
        let store = Store::temporary().unwrap();
        let log = EventLog::open(&store).unwrap();
        log.append(&[ev(30, 200), ev(10, 200), ev(20, 500), ev(20, 200)])
            .unwrap();
        let all = log.between(0, u64::MAX, 100).unwrap();
        let times: Vec<u64> = all.iter().map(|e| e.at_ms).collect();
        assert_eq!(times, [10, 20, 20, 30]);
        assert_eq!(log.between(20, 30, 100).unwrap().len(), 2);
        assert_eq!(log.between(0, u64::MAX, 1).unwrap().len(), 1);
        // the state is untouched: events are the node's own
        assert_eq!(store.applied_index().unwrap(), 0);
        assert_eq!(log.expire(20, 100).unwrap(), 1);
        assert_eq!(log.expire(0, 2).unwrap(), 1);
        let left: Vec<u64> = log
            .between(0, u64::MAX, 100)
            .unwrap()
            .iter()
            .map(|e| e.at_ms)
            .collect();
        assert_eq!(left, [20, 30]);
        // the count is kept as events come and go, and found again when the log is opened again
        assert_eq!(log.len(), 2);
        log.append(&[ev(40, 200)]).unwrap();
        assert_eq!(log.len(), 3);
        assert_eq!(EventLog::open(&store).unwrap().len(), 3);
        assert_eq!(log.expire(u64::MAX, 100).unwrap(), 3);
        assert!(log.is_empty());
    }
}
