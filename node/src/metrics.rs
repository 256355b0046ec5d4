//! Prometheus metrics of a node, served at `GET /metrics`.

use std::path::{Path, PathBuf};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Counter, Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_seconds: HistogramVec,
    pub http_in_flight: prometheus::IntGaugeVec,
    pub actor_restarts: IntCounterVec,
    /// All restarts, for this node's cluster status (the console shows them per member).
    pub actor_restarts_total: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub ingest_documents: IntCounterVec,
    pub ingest_chunks: IntCounter,
    pub ingest_queue: IntGauge,
    pub ingest_queue_bytes: IntGauge,
    pub ingest_rejected: IntCounter,
    pub index_loads: IntCounterVec,
    pub index_watermark_lag: IntGauge,
    pub pool_queued_tasks: prometheus::IntGaugeVec,
    pub ingest_turns: IntCounter,
    pub ingest_turns_lapsed: IntCounter,
    pub cancelled_work: IntCounterVec,
    pub embed_seconds: HistogramVec,
    pub embed_texts: IntCounterVec,
    pub embed_queue_wait_seconds: HistogramVec,
    pub search_seconds: HistogramVec,
    pub search_empty: IntCounterVec,
    pub embed_batch_size: HistogramVec,
    pub rerank_batch_size: HistogramVec,
    pub collection_documents: GaugeVec,
    pub collection_chunks: GaugeVec,
    pub index_points: GaugeVec,
    pub index_tombstones: GaugeVec,
    pub compactions: IntCounterVec,
    pub ready: Gauge,
    pub query_cache_hits: IntCounter,
    pub query_cache_misses: IntCounter,
    pub rerank_seconds: HistogramVec,
    pub cluster_forwarded_writes: IntCounter,
    pub reranks_forwarded: IntCounter,
    pub cluster_snapshots: IntCounterVec,
    pub cluster_claims: IntCounterVec,
    pub cluster_term: IntGauge,
    pub cluster_leader: IntGauge,
    pub cluster_is_leader: IntGauge,
    pub cluster_commit_index: IntGauge,
    pub cluster_applied_index: IntGauge,
    pub cluster_replication_lag: GaugeVec,
    pub cluster_stale: IntGauge,
}

/// Batch sizes (texts per forward pass, documents per rerank).
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static: a failure here is a programming error caught by the tests.
    r.unwrap_or_else(|e| panic!("invalid metric definition: {e}"))
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("shoal".into()), None)
            .unwrap_or_else(|e| panic!("metric registry: {e}"));
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str]| {
            let h = must(HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            ));
            must(registry.register(Box::new(h.clone())));
            h
        };
        let size_histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = must(HistogramVec::new(
                HistogramOpts::new(name, help).buckets(SIZE_BUCKETS.to_vec()),
                labels,
            ));
            must(registry.register(Box::new(h.clone())));
            h
        };
        let build_info = must(GaugeVec::new(
            Opts::new("build_info", "1, with the version of shoal this node runs"),
            &["version"],
        ));
        must(registry.register(Box::new(build_info.clone())));
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = must(GaugeVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let ingest_chunks = must(IntCounter::new(
            "ingest_chunks_total",
            "Chunks embedded and stored",
        ));
        must(registry.register(Box::new(ingest_chunks.clone())));
        let ingest_queue = must(IntGauge::new(
            "ingest_queue_documents",
            "Documents waiting for ingest",
        ));
        must(registry.register(Box::new(ingest_queue.clone())));
        let ingest_queue_bytes = must(IntGauge::new(
            "ingest_queue_bytes",
            "Text bytes of the documents waiting for ingest or in flight",
        ));
        must(registry.register(Box::new(ingest_queue_bytes.clone())));
        let ingest_rejected = must(IntCounter::new(
            "ingest_rejected_total",
            "Requests to add documents refused with 429 because the ingest queue was full",
        ));
        must(registry.register(Box::new(ingest_rejected.clone())));
        let index_watermark_lag = must(IntGauge::new(
            "index_watermark_lag",
            "Log entries the store has committed that the index shards have not mirrored yet",
        ));
        must(registry.register(Box::new(index_watermark_lag.clone())));
        let ingest_turns = must(IntCounter::new(
            "ingest_turns_total",
            "Turns ingest has taken while queries kept it waiting (threads.ingest_min_share), since the start",
        ));
        must(registry.register(Box::new(ingest_turns.clone())));
        let ingest_turns_lapsed = must(IntCounter::new(
            "ingest_turns_lapsed_total",
            "Of ingest's turns, those that lapsed: granted, but no ingest thread was back at work within twice the turn's length, so queries waited for nothing",
        ));
        must(registry.register(Box::new(ingest_turns_lapsed.clone())));
        let ready = must(Gauge::new("ready", "1 when the node is ready to serve"));
        let query_cache_hits = must(IntCounter::new(
            "query_cache_hits_total",
            "Query embeddings served from the cache",
        ));
        must(registry.register(Box::new(query_cache_hits.clone())));
        let query_cache_misses = must(IntCounter::new(
            "query_cache_misses_total",
            "Query embeddings computed (not in the cache)",
        ));
        must(registry.register(Box::new(query_cache_misses.clone())));
        must(registry.register(Box::new(ready.clone())));
        let int_gauge = |name: &str, help: &str| {
            let g = must(IntGauge::new(name, help));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let cluster_forwarded_writes = must(IntCounter::new(
            "cluster_forwarded_writes_total",
            "Writes (from clients, and this node's own ingest claims and chunks) proposed while this node was not the leader, forwarded to it",
        ));
        must(registry.register(Box::new(cluster_forwarded_writes.clone())));
        let reranks_forwarded = must(IntCounter::new(
            "cluster_forwarded_reranks_total",
            "Rerank steps this node (which has no reranker) sent to a node of the cluster that has one",
        ));
        must(registry.register(Box::new(reranks_forwarded.clone())));
        let pool_queued_tasks = must(prometheus::IntGaugeVec::new(
            Opts::new(
                "pool_queued_tasks",
                "Tasks waiting for a thread of the background pool (shard inserts and deletes) or the maintenance pool (compactions, graph dumps)",
            ),
            &["pool"],
        ));
        must(registry.register(Box::new(pool_queued_tasks.clone())));
        let http_in_flight = must(prometheus::IntGaugeVec::new(
            Opts::new(
                "http_requests_in_flight",
                "HTTP requests being served, by method and route",
            ),
            &["method", "route"],
        ));
        must(registry.register(Box::new(http_in_flight.clone())));
        let m = Metrics {
            http_in_flight,
            pool_queued_tasks,
            cluster_forwarded_writes,
            reranks_forwarded,
            cluster_snapshots: counter_vec(
                "cluster_snapshots_total",
                "Raft snapshots this node built (event=built) or installed from the leader (event=installed)",
                &["event"],
            ),
            cluster_claims: counter_vec(
                "cluster_claims_total",
                "Document claims of this node's ingest workers: granted, taken_over (another node's had expired), held_elsewhere (refused: another node holds it), lost (chunks refused: another node took the claim over)",
                &["event"],
            ),
            cluster_term: int_gauge("cluster_term", "The Raft term this node is in"),
            cluster_leader: int_gauge(
                "cluster_leader_id",
                "The id of the leader this node knows (0: none)",
            ),
            cluster_is_leader: int_gauge("cluster_is_leader", "1 while this node is the leader"),
            cluster_commit_index: int_gauge(
                "cluster_commit_index",
                "The last log index this node knows to be committed",
            ),
            cluster_applied_index: int_gauge(
                "cluster_applied_index",
                "The last log index this node has applied to its store",
            ),
            cluster_replication_lag: gauge_vec(
                "cluster_replication_lag_entries",
                "On the leader: log entries each member has not received yet",
                &["node"],
            ),
            cluster_stale: int_gauge(
                "cluster_stale",
                "1 when this node cannot vouch that its data is current (no leader, or no quorum)",
            ),
            http_requests: counter_vec(
                "http_requests_total",
                "HTTP requests by method, route and status",
                &["method", "route", "status"],
            ),
            http_seconds: histogram_vec(
                "http_request_duration_seconds",
                "HTTP request latency",
                &["method", "route"],
            ),
            actor_restarts: counter_vec(
                "actor_restarts_total",
                "Actors restarted by the supervisor after a failure",
                &["actor"],
            ),
            actor_restarts_total: Default::default(),
            ingest_documents: counter_vec(
                "ingest_documents_total",
                "Documents finished by ingest, by outcome",
                &["outcome"],
            ),
            ingest_chunks,
            ingest_queue,
            ingest_queue_bytes,
            ingest_rejected,
            index_watermark_lag,
            ingest_turns,
            ingest_turns_lapsed,
            index_loads: counter_vec(
                "index_shard_loads_total",
                "Shard loads, by collection and by source (`dump`: the graph was reloaded, `rebuilt`: built from the stored vectors)",
                &["collection", "source"],
            ),
            cancelled_work: counter_vec(
                "cancelled_work_total",
                "Model work stopped because its request had gone (timed out or disconnected), by kind",
                &["kind"],
            ),
            embed_seconds: histogram_vec(
                "embed_batch_duration_seconds",
                "Time to embed one batch, by queue (query or ingest)",
                &["queue"],
            ),
            embed_texts: counter_vec("embed_texts_total", "Texts embedded, by queue", &["queue"]),
            embed_queue_wait_seconds: histogram_vec(
                "embed_queue_wait_seconds",
                "Time a request waited before its forward pass started, by queue",
                &["queue"],
            ),
            search_seconds: histogram_vec(
                "search_duration_seconds",
                "Search latency inside the node (embedding and reranking included), by collection and mode (baseline, rerank)",
                &["collection", "mode"],
            ),
            search_empty: counter_vec(
                "search_empty_results_total",
                "Searches that found no hit, by collection and mode (baseline, rerank)",
                &["collection", "mode"],
            ),
            embed_batch_size: size_histogram(
                "embed_batch_size",
                "Texts per forward pass of the embedder, by queue (query or ingest)",
                &["queue"],
            ),
            rerank_batch_size: size_histogram(
                "rerank_batch_size",
                "Passages scored per rerank request",
                &["model"],
            ),
            collection_documents: gauge_vec(
                "collection_documents",
                "Documents per collection in this node's store (every state)",
                &["collection"],
            ),
            collection_chunks: gauge_vec(
                "collection_chunks",
                "Searchable chunks per collection in this node's store",
                &["collection"],
            ),
            index_points: gauge_vec(
                "index_points",
                "Live points per collection",
                &["collection"],
            ),
            index_tombstones: gauge_vec(
                "index_tombstones",
                "Deleted points still in the graph, per collection",
                &["collection"],
            ),
            compactions: counter_vec(
                "index_compactions_total",
                "Shard compactions",
                &["collection"],
            ),
            ready,
            query_cache_hits,
            query_cache_misses,
            rerank_seconds: histogram_vec(
                "rerank_batch_duration_seconds",
                "Time to score one rerank request",
                &["model"],
            ),
            registry,
        };
        // Series with known label values exist from the start (at 0), so that `rate()` and
        // the alert rules see their first increase.
        for pool in ["background", "maintenance"] {
            m.pool_queued_tasks.with_label_values(&[pool]);
        }
        for kind in ["query_embedding", "ingest_embedding", "reranking"] {
            m.cancelled_work.with_label_values(&[kind]);
        }
        for outcome in ["indexed", "failed"] {
            m.ingest_documents.with_label_values(&[outcome]);
        }
        for event in ["built", "installed"] {
            m.cluster_snapshots.with_label_values(&[event]);
        }
        for event in ["granted", "taken_over", "held_elsewhere", "lost"] {
            m.cluster_claims.with_label_values(&[event]);
        }
        for queue in ["query", "ingest"] {
            m.embed_texts.with_label_values(&[queue]);
        }
        m
    }

    /// Also export the process's figures (resident memory, CPU time, open files) and the disk
    /// use under `data_dir`, read when `/metrics` is scraped.
    pub fn watch_system(&self, data_dir: PathBuf) {
        must(
            self.registry
                .register(Box::new(SystemCollector::new(data_dir))),
        );
    }

    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

/// Figures of the process and of the disk under the data folder, read from `/proc` and `statvfs`
/// at each scrape (Linux; elsewhere the families are absent).
struct SystemCollector {
    data_dir: PathBuf,
    descs: Vec<Desc>,
}

/// (name, help, is a counter)
const SYSTEM_FAMILIES: &[(&str, &str, bool)] = &[
    (
        "process_resident_memory_bytes",
        "Resident memory of the process",
        false,
    ),
    (
        "process_virtual_memory_bytes",
        "Virtual memory of the process",
        false,
    ),
    (
        "process_cpu_seconds_total",
        "CPU time (user and system) the process has used",
        true,
    ),
    ("process_open_fds", "Open file descriptors", false),
    (
        "process_max_fds",
        "The limit on open file descriptors (RLIMIT_NOFILE)",
        false,
    ),
    ("process_threads", "Threads of the process", false),
    (
        "data_dir_bytes",
        "Bytes of the files under the node's data folder",
        false,
    ),
    (
        "disk_free_bytes",
        "Bytes available to the node on the filesystem that holds its data folder",
        false,
    ),
    (
        "disk_total_bytes",
        "Size of the filesystem that holds the node's data folder",
        false,
    ),
];

impl SystemCollector {
    fn new(data_dir: PathBuf) -> SystemCollector {
        let descs = SYSTEM_FAMILIES
            .iter()
            .map(|(name, help, _)| {
                must(Desc::new(
                    (*name).to_owned(),
                    (*help).to_owned(),
                    vec![],
                    Default::default(),
                ))
            })
            .collect();
        SystemCollector { data_dir, descs }
    }

    fn read(&self) -> Vec<(&'static str, f64)> {
        let mut out = Vec::new();
        if let Some(m) = crate::memory::process_memory() {
            out.push(("process_virtual_memory_bytes", m.virtual_bytes as f64));
            out.push(("process_resident_memory_bytes", m.resident_bytes as f64));
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may hold spaces and ends with ')'):
            // utime and stime are fields 14 and 15 of the whole line, threads is 20.
            if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
                if let (Some(u), Some(s)) = (field(14), field(15)) {
                    out.push((
                        "process_cpu_seconds_total",
                        (u + s) / sysconf_or(libc::_SC_CLK_TCK, 100.0),
                    ));
                }
                if let Some(t) = field(20) {
                    out.push(("process_threads", t));
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            out.push(("process_open_fds", dir.count() as f64));
        }
        if let Some(max) = max_fds() {
            out.push(("process_max_fds", max));
        }
        out.push(("data_dir_bytes", dir_bytes(&self.data_dir) as f64));
        if let Some((free, total)) = disk_space(&self.data_dir) {
            out.push(("disk_free_bytes", free));
            out.push(("disk_total_bytes", total));
        }
        out
    }
}

impl Collector for SystemCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let values = self.read();
        let mut families = Vec::new();
        for (name, help, counter) in SYSTEM_FAMILIES {
            let Some((_, v)) = values.iter().find(|(n, _)| n == name) else {
                continue;
            };
            let opts = Opts::new(*name, *help);
            let family = if *counter {
                let c = must(Counter::with_opts(opts));
                c.inc_by(v.max(0.0));
                c.collect()
            } else {
                let g = must(Gauge::with_opts(opts));
                g.set(*v);
                g.collect()
            };
            families.extend(family);
        }
        families
    }
}

/// A system constant (`sysconf`), or `default` where the system does not say.
fn sysconf_or(name: libc::c_int, default: f64) -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let n = unsafe { libc::sysconf(name) };
    if n > 0 {
        n as f64
    } else {
        default
    }
}

fn max_fds() -> Option<f64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and pass by pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur as f64)
}

/// Bytes available to an unprivileged user and the size of the filesystem that holds `path`.
fn disk_space(path: &Path) -> Option<(f64, f64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statvfs is a valid value of a plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a struct we own.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as f64;
    Some((st.f_bavail as f64 * frsize, st.f_blocks as f64 * frsize))
}

/// Bytes of the regular files under `dir` (links are not followed).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_all_families() {
        let m = super::Metrics::new();
        m.actor_restarts
            .with_label_values(&["embedder-query"])
            .inc();
        m.http_requests
            .with_label_values(&["GET", "/api/health", "200"])
            .inc();
        let text = m.render().unwrap();
        assert!(text.contains("shoal_actor_restarts_total{actor=\"embedder-query\"} 1"));
        assert!(text.contains("shoal_http_requests_total"));
        assert!(text.contains("shoal_ready 0"));
        assert!(text.contains("shoal_build_info{version=\""));
    }

    #[test]
    fn reads_the_process_and_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), vec![0u8; 3000]).unwrap();
        std::fs::write(dir.path().join("g"), vec![0u8; 1000]).unwrap();
        let m = super::Metrics::new();
        m.watch_system(dir.path().to_path_buf());
        let text = m.render().unwrap();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("shoal_{name} ")))
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
                .parse()
                .unwrap()
        };
        assert_eq!(value("data_dir_bytes"), 4000.0);
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("disk_total_bytes") >= value("disk_free_bytes"));
        assert!(value("disk_free_bytes") > 0.0);
        assert!(text.contains("# TYPE shoal_process_cpu_seconds_total counter"));
        assert!(value("process_threads") >= 1.0);
    }
}
