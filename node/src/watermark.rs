//! How far the index shards have caught up with the store.
//!
//! The state machine commits each command to the store and moves on; the shard actors mirror the
//! command's effects afterwards, in log order. A collection's watermark is the highest log index
//! whose effects its shard has mirrored: what the store said at that index, search in that
//! collection agrees with. Readers that need the index to agree with a write (a job reading as
//! done, a write answered only once it is searchable) wait for the watermark of that write's
//! collection instead of holding a lock that every other write would queue behind; a slow or
//! broken shard holds up its own collection only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

pub struct IndexWatermark {
    inner: Mutex<Inner>,
    /// Bumped on every change, for waiters.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct Inner {
    /// The last index the state machine applied.
    applied: u64,
    /// Log index → collections (uids) whose shard has not mirrored that index yet.
    pending: BTreeMap<u64, Vec<u64>>,
    /// The same, by collection.
    by_uid: HashMap<u64, BTreeSet<u64>>,
    /// Collections whose state a snapshot replaced, until their shard reloads from it: uid →
    /// (the watermark the old shard had, the snapshot's index).
    reloading: HashMap<u64, (u64, u64)>,
}

impl Inner {
    fn watermark(&self) -> u64 {
        let mirrored = match self.pending.keys().next() {
            Some(first) => first - 1,
            None => self.applied,
        };
        self.reloading
            .values()
            .map(|(held, _)| *held)
            .fold(mirrored, u64::min)
    }

    fn watermark_of(&self, uid: u64) -> u64 {
        let mirrored = match self.by_uid.get(&uid).and_then(|s| s.first()) {
            Some(first) => first - 1,
            None => self.applied,
        };
        match self.reloading.get(&uid) {
            Some((held, _)) => mirrored.min(*held),
            None => mirrored,
        }
    }

    fn done(&mut self, index: u64, uid: u64) {
        if let Some(list) = self.pending.get_mut(&index) {
            list.retain(|u| *u != uid);
            if list.is_empty() {
                self.pending.remove(&index);
            }
        }
        if let Some(set) = self.by_uid.get_mut(&uid) {
            set.remove(&index);
            if set.is_empty() {
                self.by_uid.remove(&uid);
            }
        }
    }
}

impl IndexWatermark {
    /// A watermark for a store whose last applied index is `applied` (what came before a start
    /// is in the shards once they have loaded).
    pub fn new(applied: u64) -> IndexWatermark {
        IndexWatermark {
            inner: Mutex::new(Inner {
                applied,
                ..Inner::default()
            }),
            changed: watch::Sender::new(0),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Inner)) {
        f(&mut self.inner.lock());
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The state machine applied entry `index`; the shards of `uids` must mirror its effects.
    /// Called in log order.
    pub fn applied(&self, index: u64, uids: &[u64]) {
        self.update(|inner| {
            inner.applied = inner.applied.max(index);
            if !uids.is_empty() {
                let mut list = uids.to_vec();
                list.sort_unstable();
                list.dedup();
                for uid in &list {
                    inner.by_uid.entry(*uid).or_default().insert(index);
                }
                inner.pending.insert(index, list);
            }
        });
    }

    /// The shard of collection `uid` mirrored the effects of `index`.
    pub fn mirrored(&self, index: u64, uid: u64) {
        self.update(|inner| inner.done(index, uid));
    }

    /// The shard of collection `uid` (re)loaded from the store as of index `through`: everything
    /// of that collection up to there is in it.
    pub fn loaded(&self, uid: u64, through: u64) {
        self.update(|inner| {
            let done: Vec<u64> = inner
                .by_uid
                .get(&uid)
                .map(|s| s.range(..=through).copied().collect())
                .unwrap_or_default();
            for index in done {
                inner.done(index, uid);
            }
            if inner
                .reloading
                .get(&uid)
                .is_some_and(|(_, snapshot)| through >= *snapshot)
            {
                inner.reloading.remove(&uid);
            }
        });
    }

    /// The whole state was replaced by a snapshot as of `index`, and `uids` are its collections.
    /// Until it has reloaded from the new state ([`IndexWatermark::loaded`] at or past `index`),
    /// each of their shards still holds what it held before, so its watermark stays where it was
    /// (a collection the old state did not have stays at the old applied index): a read at any
    /// index the old shard had not mirrored, the snapshot's own included, waits for the reload.
    /// Called on the state machine's thread, before any later entry is registered.
    pub fn replaced(&self, index: u64, uids: &[u64]) {
        self.update(|inner| {
            for uid in uids {
                let held = inner.watermark_of(*uid).min(index);
                inner.reloading.insert(*uid, (held, index));
            }
            inner.applied = inner.applied.max(index);
        });
    }

    /// Collection `uid` is gone: nothing of it is awaited any more.
    pub fn forget(&self, uid: u64) {
        self.loaded(uid, u64::MAX);
    }

    /// The highest index whose effects every shard has mirrored.
    pub fn current(&self) -> u64 {
        self.inner.lock().watermark()
    }

    /// The highest index whose effects the shard of collection `uid` has mirrored.
    pub fn current_for(&self, uid: u64) -> u64 {
        self.inner.lock().watermark_of(uid)
    }

    /// The last index the store committed.
    pub fn applied_index(&self) -> u64 {
        self.inner.lock().applied
    }

    /// Wait until every shard has mirrored `index`, at most `limit`. Returns whether it has.
    pub async fn wait_for(&self, index: u64, limit: Duration) -> bool {
        self.wait_until(limit, |inner| inner.watermark() >= index)
            .await
    }

    /// Wait until the shard of collection `uid` has mirrored `index`, at most `limit`.
    pub async fn wait_for_collection(&self, uid: u64, index: u64, limit: Duration) -> bool {
        self.wait_until(limit, |inner| inner.watermark_of(uid) >= index)
            .await
    }

    async fn wait_until(&self, limit: Duration, done: impl Fn(&Inner) -> bool) -> bool {
        let mut rx = self.changed.subscribe();
        let wait = async {
            loop {
                // Marked seen before the check: a change after it wakes the wait below.
                rx.borrow_and_update();
                if done(&self.inner.lock()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

/// Collections whose shards must mirror these effects.
pub fn shard_uids(effects: &[shoal_storage::Effect]) -> Vec<u64> {
    use shoal_storage::Effect;
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::CollectionCreated(c) | Effect::CollectionUpdated(c) => Some(c.uid),
            Effect::CollectionDropped { uid, .. }
            | Effect::PointsAdded { uid, .. }
            | Effect::PointsRemoved { uid, .. } => Some(*uid),
            Effect::DocumentsPending(_) | Effect::DocumentsDone(_) => None,
        })
        .collect()
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

    #[test]
    fn after_a_snapshot_install_a_collection_waits_for_its_shard_to_reload() {
        let w = IndexWatermark::new(0);
        w.applied(1, &[7]);
        w.mirrored(1, 7);
        assert_eq!(w.current_for(7), 1);
        // a snapshot at 50 replaces the state: until they reload, the shards still hold what
        // they held before (7: index 1; 9, new in the snapshot: nothing past the old applied 1)
        w.replaced(50, &[7, 9]);
        w.applied(51, &[9]);
        assert_eq!((w.current_for(7), w.current_for(9)), (1, 1));
        assert_eq!((w.current(), w.applied_index()), (1, 51));
        // 9's shard mirrors 51 before it has reloaded: still behind the snapshot
        w.mirrored(51, 9);
        assert_eq!(w.current_for(9), 1);
        w.loaded(9, 50);
        assert_eq!(w.current_for(9), 51);
        w.loaded(7, 51);
        assert_eq!((w.current_for(7), w.current()), (51, 51));
        // a shard with a change still to mirror stays below it, and mirroring it does not
        // count as the reload
        w.applied(52, &[7]);
        w.replaced(60, &[7]);
        assert_eq!(w.current_for(7), 51);
        w.mirrored(52, 7);
        assert_eq!(w.current_for(7), 51, "still the old shard until it reloads");
        w.loaded(7, 60);
        assert_eq!(w.current_for(7), 60);
    }

    #[test]
    fn a_stuck_shard_holds_up_its_own_collection_only() {
        let w = IndexWatermark::new(0);
        w.applied(1, &[7]); // collection 7's shard never mirrors this
        w.applied(2, &[8]);
        w.applied(3, &[8]);
        w.mirrored(2, 8);
        w.mirrored(3, 8);
        assert_eq!(w.current_for(8), 3);
        assert_eq!(
            w.current_for(9),
            3,
            "a collection with nothing pending is up to date"
        );
        assert_eq!(w.current_for(7), 0);
        assert_eq!(w.current(), 0);
        w.loaded(7, 1);
        assert_eq!((w.current_for(7), w.current()), (3, 3));
    }

    #[tokio::test]
    async fn waiters_wake_when_the_shards_catch_up() {
        let w = std::sync::Arc::new(IndexWatermark::new(0));
        w.applied(1, &[7]);
        w.applied(2, &[8]);
        assert!(!w.wait_for(1, Duration::from_millis(20)).await);
        let w2 = w.clone();
        let all = tokio::spawn(async move { w2.wait_for(2, Duration::from_secs(10)).await });
        let w3 = w.clone();
        let eight =
            tokio::spawn(
                async move { w3.wait_for_collection(8, 2, Duration::from_secs(10)).await },
            );
        tokio::task::yield_now().await;
        w.mirrored(2, 8);
        assert!(eight.await.unwrap());
        w.mirrored(1, 7);
        assert!(all.await.unwrap());
        assert!(w.wait_for(0, Duration::ZERO).await);
    }
}
