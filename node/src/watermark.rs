//! How far the index shards have caught up with the store.
//!
//! The apply loop commits each command to the store and moves on; the shard actors mirror the
//! command's effects afterwards, in log order. The watermark is the highest log index whose
//! effects every shard has mirrored: what the store said at that index, search agrees with.
//! Readers that need the index to agree with a write (a job reading as done, a write answered
//! only once it is searchable) wait for the watermark instead of holding a lock that every other
//! write would queue behind.

use std::collections::BTreeMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

pub struct IndexWatermark {
    inner: Mutex<Inner>,
    /// The watermark, for waiters.
    mirrored: watch::Sender<u64>,
}

struct Inner {
    /// The last index the apply loop committed.
    applied: u64,
    /// Log index → collections (uids) whose shard has not mirrored that index yet.
    pending: BTreeMap<u64, Vec<u64>>,
}

impl Inner {
    fn watermark(&self) -> u64 {
        match self.pending.keys().next() {
            Some(first) => first - 1,
            None => self.applied,
        }
    }
}

impl IndexWatermark {
    /// A watermark for a store whose last applied index is `applied` (everything before a start
    /// is in the shards once they have loaded, which the shards' own registrations account for).
    pub fn new(applied: u64) -> IndexWatermark {
        IndexWatermark {
            inner: Mutex::new(Inner {
                applied,
                pending: BTreeMap::new(),
            }),
            mirrored: watch::Sender::new(applied),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Inner)) {
        let mut inner = self.inner.lock();
        f(&mut inner);
        let w = inner.watermark();
        drop(inner);
        self.mirrored.send_if_modified(|cur| {
            if *cur != w {
                *cur = w;
                true
            } else {
                false
            }
        });
    }

    /// The apply loop committed command `index`; the shards of `uids` must mirror its effects.
    /// Called in log order.
    pub fn applied(&self, index: u64, uids: &[u64]) {
        self.update(|inner| {
            inner.applied = inner.applied.max(index);
            if !uids.is_empty() {
                let mut list = uids.to_vec();
                list.sort_unstable();
                list.dedup();
                inner.pending.insert(index, list);
            }
        });
    }

    /// The shard of collection `uid` mirrored the effects of `index`.
    pub fn mirrored(&self, index: u64, uid: u64) {
        self.update(|inner| {
            if let Some(list) = inner.pending.get_mut(&index) {
                list.retain(|u| *u != uid);
                if list.is_empty() {
                    inner.pending.remove(&index);
                }
            }
        });
    }

    /// The shard of collection `uid` (re)loaded from the store as of index `through`: everything
    /// of that collection up to there is in it.
    pub fn loaded(&self, uid: u64, through: u64) {
        self.update(|inner| {
            inner.pending.retain(|index, list| {
                if *index <= through {
                    list.retain(|u| *u != uid);
                }
                !list.is_empty()
            });
        });
    }

    /// Collection `uid` is gone: nothing of it is awaited any more.
    pub fn forget(&self, uid: u64) {
        self.loaded(uid, u64::MAX);
    }

    /// The highest index whose effects every shard has mirrored.
    pub fn current(&self) -> u64 {
        *self.mirrored.borrow()
    }

    /// The last index the store committed.
    pub fn applied_index(&self) -> u64 {
        self.inner.lock().applied
    }

    /// Wait until the shards have mirrored `index`, at most `limit`. Returns whether they have.
    pub async fn wait_for(&self, index: u64, limit: Duration) -> bool {
        let mut rx = self.mirrored.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|w| *w >= index))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_stops_below_the_first_unmirrored_index() {
        let w = IndexWatermark::new(10);
        assert_eq!(w.current(), 10);
        w.applied(11, &[1]);
        w.applied(12, &[]);
        w.applied(13, &[1, 2]);
        assert_eq!(w.current(), 10);
        assert_eq!(w.applied_index(), 13);
        w.mirrored(11, 1);
        assert_eq!(w.current(), 12);
        w.mirrored(13, 2);
        assert_eq!(w.current(), 12);
        // shard 1 reloads from the store as of 13
        w.loaded(1, 13);
        assert_eq!(w.current(), 13);
        w.applied(14, &[3]);
        w.forget(3);
        assert_eq!(w.current(), 14);
    }

    #[tokio::test]
    async fn waiters_wake_when_the_shards_catch_up() {
        let w = std::sync::Arc::new(IndexWatermark::new(0));
        w.applied(1, &[7]);
        assert!(!w.wait_for(1, Duration::from_millis(20)).await);
        let w2 = w.clone();
        let waiter = tokio::spawn(async move { w2.wait_for(1, Duration::from_secs(10)).await });
        tokio::task::yield_now().await;
        w.mirrored(1, 7);
        assert!(waiter.await.unwrap());
        assert!(w.wait_for(0, Duration::ZERO).await);
    }
}
