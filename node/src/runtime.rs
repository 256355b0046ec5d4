//! What a node computes with: the models, the thread pools they run on, the query gate between
//! query and ingest work, the query cache and the metrics. No actors and no consensus here.

use std::sync::Arc;
use std::time::Duration;

use shoal_inference::{Chunker, CrossEncoder, Embedder, PauseHook};

use crate::config::{Config, ThreadsConfig};
use crate::embed_exec::{IngestShare, QueryGate};
use crate::error::NodeError;
use crate::metrics::Metrics;

pub struct Runtime {
    pub embedder: Embedder,
    /// The cross-encoder, when the node has one.
    pub reranker: Option<CrossEncoder>,
    pub chunker: Chunker,
    pub metrics: Arc<Metrics>,
    /// Recent query embeddings (None when `model.query_cache_size` is 0).
    pub query_cache: Option<parking_lot::Mutex<lru::LruCache<String, Arc<Vec<f32>>>>>,
    pub query_pool: Arc<rayon::ThreadPool>,
    pub ingest_pool: Arc<rayon::ThreadPool>,
    /// Low-priority threads for ingest work that is not embedding (see [`Runtime::background`]).
    pub background_pool: Arc<rayon::ThreadPool>,
    /// Low-priority threads for shard upkeep: compactions and graph dumps (see
    /// [`Runtime::maintenance`]), apart from inserts so that one collection's compaction never
    /// holds up another's ingest.
    pub maintenance_pool: Arc<rayon::ThreadPool>,
    pub query_gate: Arc<QueryGate>,
    /// Text searches on their way to the query embedder (its batches gather only while some are).
    pub arrivals: Arc<crate::embed_exec::Arrivals>,
    /// For requests to other nodes' public API (reranking on a node that has a reranker).
    pub http: reqwest::Client,
    /// The reranker model of each member that reranks for this node (by address), once asked.
    pub remote_rerankers: parking_lot::Mutex<std::collections::HashMap<String, String>>,
    /// Hands the memory a burst of work freed back to the system once it is over.
    pub memory: Arc<crate::memory::MemoryTrimmer>,
}

impl Runtime {
    pub fn new(
        config: &Config,
        embedder: Embedder,
        reranker: Option<CrossEncoder>,
        chunker: Chunker,
        metrics: Arc<Metrics>,
    ) -> Result<Runtime, NodeError> {
        let threads = &config.threads;
        let query_cache = std::num::NonZeroUsize::new(config.model.query_cache_size)
            .map(|n| parking_lot::Mutex::new(lru::LruCache::new(n)));
        let query_gate = Arc::new(
            QueryGate::new(IngestShare {
                min_share: threads.ingest_min_share,
                window: Duration::from_millis(threads.ingest_share_window_ms),
            })
            .resuming_after(Duration::from_micros(threads.ingest_resume_us))
            .counting_turns_in(
                metrics.ingest_turns.clone(),
                metrics.ingest_turns_lapsed.clone(),
            )
            .with_ingest_threads(ThreadsConfig::resolve(threads.ingest_inference)),
        );
        // (name, threads, nice, slice in µs, pause hook)
        let pool =
            |name: &'static str, n: usize, nice: i32, slice_us: u32, pause: Option<PauseHook>| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(ThreadsConfig::resolve(n))
                    .thread_name(move |i| format!("{name}-{i}"))
                    .start_handler(move |_| {
                        if nice != 0 {
                            crate::thread_sched::lower_thread_priority(nice);
                        }
                        // (0: the kernel's default, also where the maker had a short one)
                        crate::thread_sched::request_slice(slice_us);
                        if let Some(hook) = &pause {
                            shoal_inference::set_pause_hook(hook.clone());
                        }
                    })
                    .build()
                    .map(Arc::new)
                    .map_err(|e| {
                        NodeError::Internal(format!("cannot start the {name} thread pool: {e}"))
                    })
            };
        // The query path's threads ask for short slices (see crate::thread_sched).
        let query_pool = pool(
            "infer-query",
            threads.query_inference,
            0,
            threads.query_slice_us,
            None,
        )?;
        // Ingest threads step aside inside their forward passes while a query is embedded.
        let ingest_pool = pool(
            "infer-ingest",
            threads.ingest_inference,
            threads.ingest_nice,
            0,
            Some(query_gate.pause_hook()),
        )?;
        let background_pool = pool(
            "background",
            threads.background,
            threads.ingest_nice,
            0,
            None,
        )?;
        let maintenance_pool = pool(
            "maintenance",
            threads.maintenance,
            threads.ingest_nice,
            0,
            None,
        )?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .build()
            .map_err(|e| NodeError::Internal(format!("cannot make an HTTP client: {e}")))?;
        Ok(Runtime {
            embedder,
            reranker,
            chunker,
            metrics,
            query_cache,
            query_pool,
            ingest_pool,
            background_pool,
            maintenance_pool,
            query_gate,
            arrivals: Arc::default(),
            http,
            remote_rerankers: Default::default(),
            memory: crate::memory::MemoryTrimmer::start(
                crate::memory::QUIET,
                crate::memory::MIN_GAP,
            ),
        })
    }

    /// Run CPU work that belongs to ingest (chunking, HNSW inserts) on the low-priority
    /// background threads, so that it never takes a core from a search. A panic in `f` comes
    /// back as an error.
    pub async fn background<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NodeError> {
        self.on_counted_pool(&self.background_pool, "background", f)
            .await
    }

    /// Run shard upkeep (a compaction, a graph dump) on the low-priority maintenance threads.
    pub async fn maintenance<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NodeError> {
        self.on_counted_pool(&self.maintenance_pool, "maintenance", f)
            .await
    }

    /// [`Runtime::on_pool`], with the task counted in `shoal_pool_queued_tasks{pool=what}` until
    /// a thread takes it.
    async fn on_counted_pool<T: Send + 'static>(
        &self,
        pool: &rayon::ThreadPool,
        what: &'static str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NodeError> {
        let queued = self.metrics.pool_queued_tasks.with_label_values(&[what]);
        queued.inc();
        // Counted off when it starts (the pools live as long as the runtime: none is shut down
        // with tasks in it).
        let waiting = QueuedTask(queued);
        Self::on_pool(pool, what, move || {
            drop(waiting);
            f()
        })
        .await
    }

    /// Tasks waiting for a thread of the pool named `what` (`background` or `maintenance`).
    pub fn queued_tasks(&self, what: &str) -> i64 {
        self.metrics
            .pool_queued_tasks
            .with_label_values(&[what])
            .get()
    }

    /// Run `f` on one of `pool`'s threads and await it without occupying a tokio thread. A panic
    /// in `f` comes back as an error naming `what`.
    pub async fn on_pool<T: Send + 'static>(
        pool: &rayon::ThreadPool,
        what: &'static str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NodeError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        pool.spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(result);
        });
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(NodeError::Internal(format!("{what} task panicked"))),
            Err(_) => Err(NodeError::Internal(format!("{what} task was dropped"))),
        }
    }
}

/// A queued task's place in its pool's gauge, given back when the task starts or is dropped.
struct QueuedTask(prometheus::IntGauge);

impl Drop for QueuedTask {
    fn drop(&mut self) {
        self.0.dec();
    }
}
