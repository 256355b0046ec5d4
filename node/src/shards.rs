//! Where the node finds each collection's shard: the live [`Shard`] (searched directly from any
//! thread) and the shard actor (the only writer).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use ractor::ActorRef;
use shoal_index::Shard;

use crate::actors::shard::ShardMsg;

#[derive(Clone)]
pub struct ShardSlot {
    pub uid: u64,
    pub actor: Option<ActorRef<ShardMsg>>,
    /// None until the first load finishes. After an actor restart the previous shard keeps
    /// serving searches until the reloaded one replaces it.
    pub shard: Option<Arc<Shard>>,
}

/// The right to write, read or remove one collection's graph dump folder (see
/// [`ShardRegistry::dump_files`]).
#[must_use = "the folder is free again as soon as this is dropped"]
pub struct DumpFiles {
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

#[derive(Default)]
pub struct ShardRegistry {
    slots: RwLock<HashMap<String, ShardSlot>>,
    /// Woken whenever a shard is published or removed.
    changed: tokio::sync::Notify,
    /// Per collection uid: held while its graph dump is written, read or removed, so that an
    /// actor restarting never reads a dump its predecessor is still writing.
    dump_locks: parking_lot::Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
}

impl ShardRegistry {
    fn dump_lock(&self, uid: u64) -> Arc<tokio::sync::Mutex<()>> {
        self.dump_locks.lock().entry(uid).or_default().clone()
    }

    /// Collection `uid`'s graph dump folder to the caller alone, once any dump, load or removal
    /// of it in progress has ended. Move the guard into the blocking work that touches the
    /// folder: held by that work rather than by a future awaiting it, the folder stays locked
    /// until the work ends even when the future is dropped (a restarted shard actor never reads
    /// a dump its predecessor is still writing).
    pub async fn dump_files(&self, uid: u64) -> DumpFiles {
        DumpFiles {
            _guard: self.dump_lock(uid).lock_owned().await,
        }
    }

    /// The collection is gone; its dump lock is no longer needed.
    pub fn forget_dump_lock(&self, uid: u64) {
        self.dump_locks.lock().remove(&uid);
    }

    pub fn get(&self, collection: &str) -> Option<ShardSlot> {
        self.slots.read().get(collection).cloned()
    }

    /// The collection's slot once its shard has finished loading, waiting at most `wait`.
    /// `None` when the collection is gone; a slot without shard when it is still loading
    /// after `wait`.
    pub async fn get_loaded(&self, collection: &str, wait: Duration) -> Option<ShardSlot> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a publish between the check and the wait wakes us.
            notified.as_mut().enable();
            let slot = self.get(collection)?;
            if slot.shard.is_some() {
                return Some(slot);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.get(collection);
            }
        }
    }

    /// A shard actor announces itself. On its first start (`fresh`) it makes the collection's
    /// slot; a restarted one only takes over the slot of its own collection uid, and is told
    /// (false) when there is none: the collection was dropped meanwhile.
    pub fn attach_actor(
        &self,
        collection: &str,
        uid: u64,
        actor: ActorRef<ShardMsg>,
        fresh: bool,
    ) -> bool {
        let mut slots = self.slots.write();
        match slots.get_mut(collection) {
            Some(slot) if slot.uid == uid => {
                slot.actor = Some(actor);
                true
            }
            _ if fresh => {
                slots.insert(
                    collection.to_string(),
                    ShardSlot {
                        uid,
                        actor: Some(actor),
                        shard: None,
                    },
                );
                true
            }
            _ => false,
        }
    }

    /// The shard actor finished loading.
    pub fn publish(&self, collection: &str, uid: u64, shard: Arc<Shard>) {
        if let Some(slot) = self.slots.write().get_mut(collection) {
            if slot.uid == uid {
                slot.shard = Some(shard);
            }
        }
        self.changed.notify_waiters();
    }

    pub fn remove(&self, collection: &str, uid: u64) -> Option<ShardSlot> {
        let mut slots = self.slots.write();
        if slots.get(collection).is_some_and(|s| s.uid == uid) {
            let removed = slots.remove(collection);
            drop(slots);
            self.changed.notify_waiters();
            return removed;
        }
        None
    }

    pub fn is_current(&self, collection: &str, uid: u64) -> bool {
        self.slots
            .read()
            .get(collection)
            .is_some_and(|s| s.uid == uid)
    }

    /// Every collection with a slot, and its uid.
    pub fn all(&self) -> Vec<(String, u64)> {
        self.slots
            .read()
            .iter()
            .map(|(n, s)| (n.clone(), s.uid))
            .collect()
    }

    /// Collections whose shard has not finished its first load.
    pub fn loading(&self) -> Vec<String> {
        self.slots
            .read()
            .iter()
            .filter(|(_, s)| s.shard.is_none())
            .map(|(n, _)| n.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard actor's dump (its `persist`, or `post_stop` on a clean stop) whose future is
    /// dropped while the dump is written: a restarted actor's load must wait for the write to end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dump_whose_future_is_dropped_keeps_the_folder_until_its_write_ends() {
        let shards = Arc::new(ShardRegistry::default());
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (finish_tx, finish_rx) = std::sync::mpsc::channel::<()>();
        // As `ShardState::persist` does: the folder's guard moves into the blocking write.
        let dumping = tokio::spawn({
            let shards = shards.clone();
            async move {
                let files = shards.dump_files(7).await;
                tokio::task::spawn_blocking(move || {
                    let _files = files;
                    started_tx.send(()).unwrap();
                    // the write goes on until the test lets it end
                    finish_rx.recv_timeout(Duration::from_secs(30)).unwrap();
                })
                .await
            }
        });
        started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        dumping.abort();
        assert!(dumping.await.unwrap_err().is_cancelled());

        // The future is gone, the write is not: a load of the same folder waits.
        let load = tokio::spawn({
            let shards = shards.clone();
            async move { drop(shards.dump_files(7).await) }
        });
        assert!(
            shards.dump_lock(7).try_lock().is_err(),
            "the folder was free while its dump was still being written"
        );
        // Another collection's folder is not held up.
        let other = tokio::time::timeout(Duration::from_secs(10), shards.dump_files(8))
            .await
            .expect("another collection's folder is free");
        drop(other);

        finish_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), load)
            .await
            .expect("the load goes on once the write has ended")
            .unwrap();
    }
}
