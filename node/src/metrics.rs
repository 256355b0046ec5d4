//! Prometheus metrics of a node, served at `GET /metrics`.

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_seconds: HistogramVec,
    pub http_in_flight: prometheus::IntGaugeVec,
    pub actor_restarts: IntCounterVec,
    pub ingest_documents: IntCounterVec,
    pub ingest_chunks: IntCounter,
    pub ingest_queue: IntGauge,
    pub ingest_queue_bytes: IntGauge,
    pub ingest_rejected: IntCounter,
    pub index_loads: IntCounterVec,
    pub index_watermark_lag: IntGauge,
    pub pool_queued_tasks: prometheus::IntGaugeVec,
    pub ingest_turns: IntCounter,
    pub cancelled_work: IntCounterVec,
    pub embed_seconds: HistogramVec,
    pub embed_texts: IntCounterVec,
    pub embed_queue_wait_seconds: HistogramVec,
    pub search_seconds: HistogramVec,
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
        Metrics {
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
                "Search latency inside the node (embedding included)",
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
        }
    }

    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
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
    }
}
