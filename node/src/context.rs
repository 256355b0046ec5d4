//! What every part of a node shares. Every change of state goes through [`NodeContext::apply`]:
//! the command is proposed to the Raft group ([`shoal_cluster::ClusterNode::propose`], forwarded
//! to the leader when this node is not it), committed, applied by the state machine to the store
//! on every replica, the mirror ([`crate::mirror`]) hands its effects to the shard actors, and the
//! [`crate::watermark::IndexWatermark`] says how far the shards have caught up.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_cluster::ClusterNode;
use shoal_index::{Payload, Point, ShardParams};
use shoal_storage::{CollectionRecord, Command, Outcome, Store, StoredPoint};

use crate::actors::registry::Actors;
use crate::config::Config;
use crate::error::NodeError;
use crate::ingest_queue::{IngestQueue, QueueLimits};
use crate::runtime::Runtime;
use crate::watermark::IndexWatermark;

/// A node's parts: its configuration and store, what it computes with ([`Runtime`]), where its
/// actors are ([`Actors`]), its membership in the cluster (every write is proposed through it),
/// and how far its index has caught up.
pub struct NodeContext {
    pub config: Config,
    pub store: Store,
    pub runtime: Runtime,
    pub actors: Actors,
    /// This node's part in the cluster: every write is proposed through it (a single node is a
    /// one-member cluster).
    pub cluster: Arc<ClusterNode>,
    /// How far the shards have caught up with the store.
    pub watermark: Arc<IndexWatermark>,
    /// The last log index whose effects the mirror has handed on.
    pub mirrored: tokio::sync::watch::Sender<u64>,
    pub index_dir: PathBuf,
    pub started: Instant,
    pub warm: AtomicBool,
    pub reranker_warm: AtomicBool,
    /// Who may call the API.
    pub access: crate::access::Access,
    /// The node's own search events, and their writer.
    pub events: Arc<shoal_storage::EventLog>,
    pub recorder: crate::analytics::Recorder,
    /// Uploaded files whose text is being extracted at once.
    pub extract_slots: Arc<tokio::sync::Semaphore>,
    /// What each collection took when last measured.
    pub storage_measured: StorageMeasurements,
}

/// What each collection took when last measured (by uid), and when: a measurement is reused for
/// [`crate::service::STORAGE_MEASURE_EVERY`], and only one made with the collection's shard
/// loaded is kept. One made while the shard loads (after a restart) has no memory to read: kept,
/// its zeros would be the answer for the whole period after the load.
#[derive(Default)]
pub struct StorageMeasurements(
    parking_lot::Mutex<
        std::collections::HashMap<u64, (Instant, shoal_api::dto::CollectionStorage)>,
    >,
);

impl StorageMeasurements {
    /// Collection `uid`'s last measurement, if it is at most `max_age` old.
    pub fn fresh(&self, uid: u64, max_age: Duration) -> Option<shoal_api::dto::CollectionStorage> {
        self.0
            .lock()
            .get(&uid)
            .filter(|(at, _)| at.elapsed() < max_age)
            .map(|(_, s)| *s)
    }

    /// Keep collection `uid`'s measurement if its shard was loaded when it was made; drop the
    /// measurements of collections that `live` says are gone.
    pub fn keep(
        &self,
        uid: u64,
        measured: shoal_api::dto::CollectionStorage,
        shard_loaded: bool,
        live: impl Fn(u64) -> bool,
    ) {
        let mut all = self.0.lock();
        all.retain(|uid, _| live(*uid));
        // (a collection dropped while it was measured is not kept either)
        if shard_loaded && live(uid) {
            all.insert(uid, (Instant::now(), measured));
        }
    }
}

/// A command committed and applied: its log index and what it did.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub index: u64,
    pub outcome: Outcome,
}

/// Something a caller keeps alive until the effects of its command have been handed on (the
/// room a request reserved in the ingest queue, until the mirror has queued its documents).
pub type Hold = Box<dyn std::any::Any + Send>;

impl NodeContext {
    pub fn new(
        config: Config,
        store: Store,
        runtime: Runtime,
        cluster: Arc<ClusterNode>,
        watermark: Arc<IndexWatermark>,
        access: crate::access::Access,
        events: Arc<shoal_storage::EventLog>,
    ) -> NodeContext {
        let extract_workers = config.ingest.extract_workers;
        let ingest = IngestQueue::new(
            QueueLimits {
                max_bytes: config.ingest.max_queue_bytes,
                max_documents: config.ingest.max_queue_documents,
            },
            runtime.metrics.clone(),
        );
        let recorder = crate::analytics::Recorder::start(
            events.clone(),
            std::time::Duration::from_secs(config.analytics.retention_s),
            config.analytics.max_events,
        );
        NodeContext {
            index_dir: config.storage.data_dir.join("index"),
            config,
            store,
            runtime,
            actors: Actors::new(ingest),
            cluster,
            watermark,
            mirrored: tokio::sync::watch::Sender::new(0),
            started: Instant::now(),
            access,
            recorder,
            events,
            extract_slots: Arc::new(tokio::sync::Semaphore::new(extract_workers)),
            storage_measured: Default::default(),
            warm: AtomicBool::new(false),
            reranker_warm: AtomicBool::new(false),
        }
    }

    pub fn is_warm(&self) -> bool {
        self.warm.load(Ordering::Acquire)
    }

    /// Ready to serve: the embedder is warm, every shard is loaded, and the reranker (if any) is warm.
    pub fn is_ready(&self) -> bool {
        self.is_warm()
            && self.actors.shards.loading().is_empty()
            && (self.runtime.reranker.is_none() || self.reranker_warm.load(Ordering::Acquire))
    }

    pub fn shard_params(&self, coll: &CollectionRecord) -> ShardParams {
        let s = &self.config.search;
        let i = &self.config.index;
        ShardParams {
            dimension: coll.spec.dimension as usize,
            metric: shoal_index::Metric::Cosine,
            m: coll.spec.hnsw.m as usize,
            ef_construction: coll.spec.hnsw.ef_construction as usize,
            ef_search: s.ef_search,
            exact_below: s.exact_below,
            exact_filter_fraction: s.exact_filter_fraction,
            walk_step_floats: ShardParams::new(0).walk_step_floats,
            quantization: match coll.spec.quantization {
                shoal_storage::Quantization::None => shoal_index::Quantization::None,
                shoal_storage::Quantization::Int8 => shoal_index::Quantization::Int8,
            },
            // (the index folder: the file has no name there, and goes with the process)
            vectors_dir: coll.spec.vectors_on_disk.then(|| self.index_dir.clone()),
            compaction_ratio: i.compaction_ratio,
            compaction_min_tombstones: i.compaction_min_tombstones,
        }
    }

    pub fn shard_dump_dir(&self, coll: &CollectionRecord) -> PathBuf {
        self.dump_dir(&coll.name, coll.uid)
    }

    fn dump_dir(&self, collection: &str, uid: u64) -> PathBuf {
        self.index_dir.join(format!("{collection}-{uid}"))
    }

    /// Remove graph dumps of collections that no longer exist (left by a crash during a drop).
    pub fn remove_orphan_dumps(&self) -> Result<(), NodeError> {
        let keep: std::collections::HashSet<PathBuf> = self
            .store
            .collections()?
            .iter()
            .map(|c| self.shard_dump_dir(c))
            .collect();
        let Ok(entries) = std::fs::read_dir(&self.index_dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && !keep.contains(&path) {
                tracing::info!(dir = %path.display(), "removing the graph dump of a dropped collection");
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    tracing::warn!(dir = %path.display(), error = %e, "could not remove");
                }
            }
        }
        Ok(())
    }

    /// Remove a dropped collection's graph dump (after any dump of it in progress).
    pub async fn remove_dump(&self, collection: &str, uid: u64) {
        let files = self.actors.shards.dump_files(uid).await;
        let dir = self.dump_dir(collection, uid);
        let removed = tokio::task::spawn_blocking(move || {
            let _files = files;
            if dir.exists() {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "could not remove index dump");
                }
            }
        })
        .await;
        if let Err(e) = removed {
            tracing::warn!(error = %e, "removing an index dump failed");
        }
        self.actors.shards.forget_dump_lock(uid);
    }

    /// This node's id in the cluster.
    pub fn node_id(&self) -> u64 {
        self.cluster.id
    }

    /// Apply one command: propose it to the cluster (through the leader) and wait until it is
    /// committed, applied by the leader (whose outcome this is) and applied on this node too, so
    /// that a read here right after sees it. Dropping the future leaves the command applied
    /// whole or not at all. The index mirrors it shortly after (see
    /// [`NodeContext::wait_searchable`]).
    pub async fn apply(&self, command: Command) -> Result<Committed, NodeError> {
        let kind = command.kind();
        let proposed = self.cluster.propose(command).await?;
        let wait = Duration::from_millis(self.config.cluster.write_timeout_ms);
        if let Err(e) = self.cluster.wait_applied(proposed.index, wait).await {
            // Committed, so it will be applied here; the answer goes out anyway.
            tracing::warn!(index = proposed.index, kind, error = %e, "a committed write is not applied here yet");
        }
        tracing::debug!(index = proposed.index, kind, "applied");
        Ok(Committed {
            index: proposed.index,
            outcome: proposed.outcome?,
        })
    }

    /// [`NodeContext::apply`], keeping `hold` alive until the command's effects have been handed
    /// on by the mirror (or the command failed), whether or not the caller is still waiting.
    pub async fn apply_holding(
        self: &Arc<Self>,
        command: Command,
        hold: Hold,
    ) -> Result<Committed, NodeError> {
        let ctx = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // The task owns the command and the hold: the caller may go, the room stays held until
        // the mirror has handed the effects on (at most 10 s), and the answer goes out at once.
        tokio::spawn(async move {
            let result = ctx.apply(command).await;
            let index = result.as_ref().ok().map(|c| c.index);
            let _ = tx.send(result);
            if let Some(index) = index {
                let mut rx = ctx.mirrored.subscribe();
                let _ = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|m| *m >= index))
                    .await;
            }
            drop(hold);
        });
        rx.await
            .map_err(|_| NodeError::Internal("the write's task ended without an answer".into()))?
    }

    /// Wait (at most `limit`) until the shard of collection `uid` has mirrored log index
    /// `index`; returns whether it has.
    pub async fn wait_searchable(&self, uid: u64, index: u64, limit: Duration) -> bool {
        self.watermark.wait_for_collection(uid, index, limit).await
    }

    /// See [`Runtime::background`].
    pub async fn background<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NodeError> {
        self.runtime.background(f).await
    }

    /// See [`Runtime::maintenance`].
    pub async fn maintenance<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NodeError> {
        self.runtime.maintenance(f).await
    }
}

/// The index's view of stored points. Points of one document share one payload.
pub fn to_index_points(points: Vec<StoredPoint>) -> Vec<Point> {
    let mut last: Option<(String, String, Arc<Payload>)> = None;
    points
        .into_iter()
        .map(|p| {
            let payload = match &last {
                Some((doc, meta, payload)) if *doc == p.doc_id && *meta == p.metadata_json => {
                    payload.clone()
                }
                _ => {
                    let metadata = serde_json::from_str::<serde_json::Value>(&p.metadata_json)
                        .ok()
                        .and_then(|v| v.as_object().cloned())
                        .unwrap_or_default();
                    let payload = Arc::new(Payload {
                        doc_id: p.doc_id.clone(),
                        metadata,
                    });
                    last = Some((p.doc_id, p.metadata_json, payload.clone()));
                    payload
                }
            };
            Point {
                id: p.id,
                vector: p.vector,
                payload,
                text: p.text,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::dto::CollectionStorage;

    fn storage(vectors: u64) -> CollectionStorage {
        CollectionStorage {
            documents_bytes: 10,
            chunks_bytes: 20,
            index_files_bytes: 0,
            vectors_memory_bytes: vectors,
            vectors_mapped_bytes: 0,
            graph_memory_bytes: vectors / 2,
            keyword_memory_bytes: 1,
        }
    }

    #[test]
    fn a_measurement_made_while_the_shard_loads_is_not_reused() {
        let m = StorageMeasurements::default();
        let age = Duration::from_secs(10);
        // asked while the shard loads: its memory reads 0, and the next question measures again
        m.keep(7, storage(0), false, |_| true);
        assert_eq!(m.fresh(7, age), None);
        // loaded: reused for the period
        m.keep(7, storage(4096), true, |_| true);
        assert_eq!(m.fresh(7, age), Some(storage(4096)));
        assert_eq!(m.fresh(7, Duration::ZERO), None, "older than the period");
    }

    #[test]
    fn measurements_of_dropped_collections_go_when_another_is_kept() {
        let m = StorageMeasurements::default();
        let age = Duration::from_secs(10);
        m.keep(1, storage(1), true, |_| true);
        m.keep(2, storage(2), true, |uid| uid != 1);
        assert_eq!(m.fresh(1, age), None);
        assert_eq!(m.fresh(2, age), Some(storage(2)));
        // dropped while it was being measured
        m.keep(3, storage(3), true, |uid| uid != 3);
        assert_eq!(m.fresh(3, age), None);
    }
}
