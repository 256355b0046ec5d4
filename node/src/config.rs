//! Node configuration: defaults, then a TOML file, then `SHOAL_*` environment variables, then
//! command-line flags. Every field and its default is listed in docs/operations.md.

use shoal_inference::{Engine, Precision};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::error::NodeError;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub model: ModelConfig,
    pub reranker: RerankerConfig,
    pub ingest: IngestConfig,
    pub search: SearchConfig,
    pub index: IndexConfig,
    pub supervisor: SupervisorConfig,
    pub threads: ThreadsConfig,
    pub cluster: ClusterConfig,
    pub auth: AuthConfig,
    pub analytics: AnalyticsConfig,
    pub debug: DebugConfig,
}

/// The node's own record of the searches it answered (`GET /api/v1/analytics/searches`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyticsConfig {
    /// How long search events are kept (s).
    pub retention_s: u64,
    /// Most search events kept (the oldest go first).
    pub max_events: usize,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        AnalyticsConfig {
            retention_s: 7 * 86_400,
            max_events: 1_000_000,
        }
    }
}

/// Who may call the API. With auth on (the default), every route but health, readiness,
/// metrics and sign-in needs `Authorization: Bearer <token or API key>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Off: anyone may read and write every collection (`--insecure-no-auth`, for local
    /// experiments; the node warns at start).
    pub enabled: bool,
    /// An admin credential given in configuration and never stored (as Meilisearch's master
    /// key): send it as a bearer credential. When set, the first start makes no admin user.
    /// At least 16 characters. Never printed.
    pub admin_key: Option<Secret>,
    /// The HS256 secret of the tokens the cluster issues (at least 32 bytes). Unset: one made at
    /// the cluster's first start and replicated to every node (a token from any node is valid on
    /// every node). Set it on every node alike, or on none.
    pub jwt_secret: Option<Secret>,
    /// How long a token from `POST /api/v1/auth/token` is valid (s).
    pub token_ttl_s: u64,
    /// Public keys of an outside identity provider whose tokens the node accepts (RS256/384/512,
    /// PS256/384/512, ES256/384 or EdDSA). Such a token names its role in a `role` claim and its
    /// collections in `collections`.
    pub jwt_public_keys: Vec<PublicKeyConfig>,
    /// The `iss` an outside token must carry (required with `jwt_public_keys`).
    pub jwt_issuer: Option<String>,
    /// The `aud` an outside token must carry, if set.
    pub jwt_audience: Option<String>,
    /// Clock difference allowed when checking `exp` and `nbf` (s).
    pub leeway_s: u64,
    /// Failed sign-ins allowed per user within `failed_login_window_s`; past it, the user's
    /// sign-in answers 429 until the window ends.
    pub max_failed_logins: u32,
    /// Failed sign-ins allowed per client address within the window (one address may be many
    /// people behind a NAT, so more than per user).
    pub max_failed_logins_per_address: u32,
    pub failed_login_window_s: u64,
    /// `GET /metrics` needs an admin credential (its labels name collections: set this where
    /// tenants must not learn each other's collection names and Prometheus can send a key).
    pub protect_metrics: bool,
}

/// One public key of an outside identity provider.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    /// `RS256`, `RS384`, `RS512`, `PS256`, `PS384`, `PS512`, `ES256`, `ES384` or `EdDSA`.
    pub algorithm: String,
    /// A PEM file with the public key.
    pub pem_file: PathBuf,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: true,
            admin_key: None,
            jwt_secret: None,
            token_ttl_s: 3600,
            jwt_public_keys: Vec::new(),
            jwt_issuer: None,
            jwt_audience: None,
            leeway_s: 5,
            max_failed_logins: 5,
            max_failed_logins_per_address: 20,
            failed_login_window_s: 300,
            protect_metrics: false,
        }
    }
}

/// How the node takes part in a cluster. A node alone is a one-member cluster (it makes one at
/// its first start, unless `bootstrap` is off or it joins another).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id; 0: the one its data folder was made with, or a new random one.
    pub node_id: u64,
    /// The address other nodes and clients reach this node at (`http://host:port`); default:
    /// the address the API listens on.
    pub advertise: Option<String>,
    /// The secret every node of the cluster shares; internal requests without it are refused.
    /// Needed as soon as there is more than one node. Never printed.
    pub secret: Option<Secret>,
    /// At the first start, join the cluster of the node at this address (as a learner) instead of
    /// making a new one.
    pub join: Option<String>,
    /// After joining, ask to become a voter once caught up.
    pub join_as_voter: bool,
    /// At the first start, with no `join`, make a new one-member cluster. Unset: only when no
    /// `secret` is set (a node alone). A node given the cluster's secret is meant to be part of a
    /// cluster, and one whose data folder was lost must not make a cluster of its own: it waits
    /// for `shoal cluster init` (the first node) or joins with `join`.
    pub bootstrap: Option<bool>,
    /// Leader heartbeat interval (ms). openraft gives each replication request this long to
    /// arrive and be made durable on the follower (a request carries at most 1 MiB of entries,
    /// or one larger entry): raise it on slow links or disks.
    pub heartbeat_ms: u64,
    /// A follower that has heard nothing from its leader for a random time between these two
    /// (ms) starts an election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (after which the log is compacted) every this many entries.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind the last snapshot.
    pub keep_entries_after_snapshot: u64,
    /// Bytes per snapshot chunk sent to a node that catches up.
    pub snapshot_chunk_bytes: u64,
    /// Longest a snapshot chunk may take to arrive (ms).
    pub install_snapshot_timeout_ms: u64,
    /// Longest a backup (`shoal snapshot create`) waits for its snapshot to be written (ms):
    /// writes wait while the state is copied, about 1 s per GB.
    pub backup_timeout_ms: u64,
    /// Entries per replication request.
    pub max_entries_per_append: u64,
    /// Largest command in one log entry (bytes of text and vectors); larger ingests are split.
    pub max_entry_bytes: usize,
    /// How long a write waits for the leader to commit it before 503 (ms).
    pub write_timeout_ms: u64,
    /// A node that has not heard from its leader (a leader: from a majority) for this long marks
    /// its answers stale and refuses writes (ms).
    pub stale_after_ms: u64,
    /// How long a search with `min_index` or `consistency: strong` waits for this node to catch
    /// up before 503 (ms).
    pub read_wait_ms: u64,
    /// How long an ingest worker's claim on a document lasts before another node may take it (ms).
    pub claim_ttl_ms: u64,
}

/// A secret: read from configuration, never shown (its `Debug` and `shoal config` hide it).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: 0,
            advertise: None,
            secret: None,
            join: None,
            join_as_voter: false,
            bootstrap: None,
            heartbeat_ms: 100,
            election_timeout_min_ms: 200,
            election_timeout_max_ms: 400,
            snapshot_after_entries: 2_000,
            keep_entries_after_snapshot: 500,
            snapshot_chunk_bytes: 4 << 20,
            install_snapshot_timeout_ms: 60_000,
            backup_timeout_ms: 600_000,
            max_entries_per_append: 32,
            max_entry_bytes: 4 << 20,
            write_timeout_ms: 5_000,
            stale_after_ms: 2_000,
            read_wait_ms: 10_000,
            claim_ttl_ms: 60_000,
        }
    }
}

/// Thread counts; 0 means one per core. The query and ingest embedders have pools of their own,
/// so ingest never takes the query pool's threads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ThreadsConfig {
    /// Threads of the query embedder's pool.
    pub query_inference: usize,
    /// Threads of the ingest embedder's pool.
    pub ingest_inference: usize,
    /// Global rayon pool: HNSW graph builds at load.
    pub index: usize,
    /// Tokio worker threads (HTTP and actors; CPU work never runs on them).
    pub http: usize,
    /// Scheduling priority (nice, 0..19) of the ingest embedder's threads and of the background
    /// threads: while a query is embedded, the kernel gives the cores to the query (Linux). They
    /// stay in the normal scheduling class, so another busy process cannot stop ingest.
    pub ingest_nice: i32,
    /// Background threads, at `ingest_nice`: chunking and HNSW inserts.
    pub background: usize,
    /// Maintenance threads, at `ingest_nice`: shard compactions and graph dumps.
    pub maintenance: usize,
    /// Ingest's minimum share of its time while queries keep coming (0, or 0.01 to 0.9): that time earns
    /// ingest turns during which new query passes wait. 0: ingest waits for as long as queries
    /// keep coming. The default, 0.05, kept a one-client search's p95 during ingest at a median of
    /// 1.22x idle on 2 cores, against 1.44x at 0.1, which gives ingest about three times as much
    /// under a saturating search load (docs/benchmarks.md, "Pause points about 0.1 ms apart").
    pub ingest_min_share: f64,
    /// The longest ingest turn (ms), and the longest a new query pass waits for the passes in
    /// flight before a turn; turns are at least `ingest_min_share` × this.
    pub ingest_share_window_ms: u64,
    /// How long ingest's embedding threads stay parked after the last search in flight ends (µs,
    /// at most 100000; 0: they resume at once), so that a client's next search finds the cores
    /// free. Time ingest waits earns it turns all the same.
    pub ingest_resume_us: u64,
    /// Time slice (µs, 100 to 100000; 0: the kernel's default) that the threads a search passes
    /// through (HTTP workers, the query embedder and its pool) ask for, so that they get a core
    /// at once when they wake beside ingest threads (Linux 6.12 and later; ignored before).
    pub query_slice_us: u32,
}

impl Default for ThreadsConfig {
    fn default() -> Self {
        ThreadsConfig {
            query_inference: 0,
            ingest_inference: 0,
            index: 0,
            http: 0,
            ingest_nice: 10,
            background: 1,
            maintenance: 1,
            ingest_min_share: 0.05,
            ingest_share_window_ms: 10,
            ingest_resume_us: 500,
            query_slice_us: 100,
        }
    }
}

impl ThreadsConfig {
    pub fn resolve(n: usize) -> usize {
        if n > 0 {
            n
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Largest request body accepted (bytes).
    pub max_body_bytes: usize,
    /// Requests taking longer are answered 504.
    pub request_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Everything the node stores lives under this folder.
    pub data_dir: PathBuf,
    /// fsync every append to the Raft log (an acknowledged write survives kill -9). Only a node
    /// alone may turn it off.
    pub sync_writes: bool,
    /// sled's page cache (MiB): the store's records held decoded in memory. A read that misses
    /// it is served from the operating system's file cache and decoded again.
    pub cache_mb: u64,
    /// How long a start waits for the store's lock while a previous process still holds it (ms).
    pub lock_wait_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Hugging Face-style folder with config.json, tokenizer.json and model.safetensors.
    pub path: PathBuf,
    /// Token limit per text (special tokens included), capped by the model.
    pub max_tokens: usize,
    /// Texts per forward pass.
    pub batch_size: usize,
    /// Tokens per forward pass (real tokens with the native engine, which packs texts without
    /// padding; texts × longest with candle): long texts go in small batches.
    pub max_batch_tokens: usize,
    /// What runs the model: `native` (shoal's kernels, AVX-512 where present) or `candle`.
    pub engine: Engine,
    /// `f32` (exact, the default) or `bf16` (opt-in, native engine only: about 1.6x the f32
    /// passage rate measured with AVX512-BF16 or AMX, cosine to f32 ≥ 0.9999 on MiniLM).
    pub precision: Precision,
    /// Longest a request waits for the model (ms); at most `server.request_timeout_ms`. Ingest
    /// gives up a batch (and retries it later) when it makes no progress for this long.
    pub timeout_ms: u64,
    /// The longest the query embedder gathers requests into one forward pass (ms).
    pub batch_window_ms: f64,
    /// Gather only while more text searches are on their way (true), or always for the whole
    /// window (false, the behaviour before adaptive batching; kept for comparison).
    pub adaptive_batching: bool,
    /// Most texts per forward pass of the ingest embedder; between two, it yields to queries.
    pub ingest_micro_batch: usize,
    /// Most tokens (estimated at 4 bytes each) per forward pass of the ingest embedder, so that
    /// passages go a few at a time and short texts many at a time.
    pub ingest_micro_batch_tokens: usize,
    /// Query embeddings kept in memory (LRU); 0 disables the cache.
    pub query_cache_size: usize,
    /// Texts per `POST /v1/embeddings` request.
    pub max_inputs_per_request: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RerankerConfig {
    /// Hugging Face cross-encoder folder; none means the node has no reranker.
    pub path: Option<PathBuf>,
    /// Token limit per (query, passage) pair, capped by the model.
    pub max_tokens: usize,
    /// Pairs per forward pass.
    pub batch_size: usize,
    /// Tokens per forward pass (real tokens with the native engine, pairs × longest with candle).
    pub max_batch_tokens: usize,
    /// `native` or `candle` for BERT cross-encoders (XLM-RoBERTa ones always run on candle).
    pub engine: Engine,
    /// `f32` or `bf16` (native engine only).
    pub precision: Precision,
    /// Hits rescored when a search asks for `rerank` without `rerank_candidates`.
    pub default_candidates: usize,
    /// Largest `rerank_candidates`, and most documents per `POST /v1/rerank`.
    pub max_candidates: usize,
    /// Size of a rerank query (bytes).
    pub max_query_bytes: usize,
    /// Size of one document of a `POST /v1/rerank` (bytes).
    pub max_document_bytes: usize,
}

impl Default for RerankerConfig {
    fn default() -> Self {
        RerankerConfig {
            path: None,
            max_tokens: 512,
            batch_size: 16,
            max_batch_tokens: 2048,
            engine: Engine::Native,
            precision: Precision::F32,
            default_candidates: 50,
            max_candidates: 1_000,
            max_query_bytes: 8 * 1024,
            max_document_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Ingest worker actors (each claims, chunks and embeds one batch at a time); 0: this node
    /// embeds nothing (the other nodes of the cluster do), for example a learner kept for search.
    pub workers: usize,
    /// Chunks embedded together by one worker.
    pub batch_chunks: usize,
    /// Target chunk size in tokens.
    pub chunk_tokens: usize,
    /// Tokens of whole sentences repeated at the start of the next chunk.
    pub chunk_overlap_tokens: usize,
    /// Documents per request.
    pub max_documents_per_request: usize,
    /// Size of one document's text (bytes).
    pub max_document_bytes: usize,
    /// Longest the text of one uploaded file may take to extract (ms, and never longer than
    /// `server.request_timeout_ms`); past it the file fails with a timeout reason and the rest of
    /// the upload goes on.
    pub extract_timeout_ms: u64,
    /// Address space an extraction worker (one process per uploaded file) may use beyond the
    /// program's own, in bytes; a file that needs more fails with a reason (a decompression
    /// bomb, a hostile PDF).
    pub extract_memory_bytes: u64,
    /// Uploaded files read at once (one worker process each); the others wait for a turn
    /// within their request's time.
    pub extract_workers: usize,
    /// Pages of one uploaded PDF.
    pub max_pages_per_document: usize,
    /// Records of one uploaded JSON or JSONL file.
    pub max_records_per_file: usize,
    /// Bytes a compressed part of an uploaded file (a PDF stream, a DOCX member) may inflate to.
    pub max_inflated_bytes: usize,
    /// Chunks one document may make; a document that makes more fails with a reason.
    pub max_chunks_per_document: usize,
    /// Text bytes waiting for ingest (queued, in flight, and in requests being read); past it,
    /// adding documents is answered 429 with Retry-After.
    pub max_queue_bytes: u64,
    /// Documents waiting for ingest; past it, 429.
    pub max_queue_documents: u64,
    /// Finished jobs are forgotten this long after their last change (s); 0 keeps them forever.
    pub job_retention_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    pub default_top_k: usize,
    pub max_top_k: usize,
    /// Size of a text query (bytes).
    pub max_query_bytes: usize,
    /// Default HNSW search beam.
    pub ef_search: usize,
    /// Largest `ef` a request may ask for.
    pub max_ef: usize,
    /// Shards with at most this many points are scanned (exactly; an int8 collection's by its
    /// codes, the best `ef` re-scored).
    pub exact_below: usize,
    /// Filters matching at most this fraction of a shard are answered by a scan of their matches
    /// (as `exact_below`'s).
    pub exact_filter_fraction: f64,
    /// Most points an `exact: true` search may scan (after its filter); larger ones are refused.
    pub max_exact_points: usize,
    /// Metadata conditions in one filter.
    pub max_filter_conditions: usize,
    /// Values in one filter list (`in`, `document_id`).
    pub max_filter_values: usize,
    /// Hits each side of a `hybrid` search fetches before they are fused (at least the hits the
    /// search returns).
    pub hybrid_candidates: usize,
    /// Reciprocal rank fusion's constant: each ranking adds 1 / (rrf_k + rank).
    pub rrf_k: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    /// Default HNSW links per node for new collections.
    pub m: u32,
    /// Default HNSW build beam for new collections.
    pub ef_construction: u32,
    /// Rebuild a shard once tombstones exceed this fraction of its graph.
    pub compaction_ratio: f64,
    /// ... and at least this many.
    pub compaction_min_tombstones: usize,
    /// Dump a changed shard's graph to disk after this long (ms), so restarts reload it.
    pub persist_interval_ms: u64,
    /// What new collections' searches walk the graph with, where their create request does not
    /// say: `none` (the vectors) or `int8` (a quantised copy of each vector, a quarter of the
    /// bytes a walk reads, held beside the vectors; the final candidates are re-scored with the
    /// vectors). A collection keeps what it was created with.
    pub quantization: shoal_storage::Quantization,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorConfig {
    /// First restart delay of a failed actor (ms); doubles on each further failure.
    pub restart_base_ms: u64,
    /// Longest restart delay (ms).
    pub restart_max_ms: u64,
    /// A child that stays up this long (ms) has its backoff reset.
    pub restart_reset_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DebugConfig {
    /// Enables `POST /api/v1/admin/actors/{name}/panic` (for tests and drills; off in production).
    pub fault_injection: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            max_body_bytes: 32 * 1024 * 1024,
            request_timeout_ms: 30_000,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./data"),
            sync_writes: true,
            cache_mb: 16,
            lock_wait_ms: 10_000,
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            path: PathBuf::from("./models/all-MiniLM-L6-v2"),
            max_tokens: 256,
            batch_size: 32,
            max_batch_tokens: 2048,
            engine: Engine::Native,
            precision: Precision::F32,
            timeout_ms: 20_000,
            batch_window_ms: 2.0,
            adaptive_batching: true,
            ingest_micro_batch: 32,
            ingest_micro_batch_tokens: 900,
            query_cache_size: 10_000,
            max_inputs_per_request: 256,
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            workers: 1,
            batch_chunks: 32,
            chunk_tokens: 200,
            chunk_overlap_tokens: 40,
            max_documents_per_request: 1_000,
            max_document_bytes: 1024 * 1024,
            extract_timeout_ms: 20_000,
            extract_memory_bytes: 2 << 30,
            extract_workers: 2,
            max_pages_per_document: 2_000,
            max_records_per_file: 1_000,
            max_inflated_bytes: 64 << 20,
            max_chunks_per_document: 10_000,
            max_queue_bytes: 256 * 1024 * 1024,
            max_queue_documents: 200_000,
            job_retention_s: 7 * 24 * 3600,
        }
    }
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            default_top_k: 10,
            max_top_k: 1_000,
            max_query_bytes: 8 * 1024,
            ef_search: 64,
            max_ef: 4_096,
            exact_below: 1_000,
            exact_filter_fraction: 0.01,
            max_exact_points: 20_000,
            max_filter_conditions: 64,
            max_filter_values: 1_024,
            hybrid_candidates: 50,
            rrf_k: 60.0,
        }
    }
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            m: 16,
            ef_construction: 100,
            compaction_ratio: 0.2,
            compaction_min_tombstones: 100,
            persist_interval_ms: 5_000,
            quantization: shoal_storage::Quantization::None,
        }
    }
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            restart_base_ms: 100,
            restart_max_ms: 10_000,
            restart_reset_ms: 60_000,
        }
    }
}

impl Config {
    /// Defaults, then `file` (if given), then `SHOAL_SECTION__FIELD` environment variables
    /// (for example `SHOAL_SERVER__LISTEN=0.0.0.0:7400`).
    pub fn load(file: Option<&Path>) -> Result<Config, NodeError> {
        let config = Self::read(file)?;
        config.validate().map_err(NodeError::Config)?;
        Ok(config)
    }

    fn read(file: Option<&Path>) -> Result<Config, NodeError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.is_file() {
                return Err(NodeError::Config(format!(
                    "config file {} does not exist",
                    f.display()
                )));
            }
            fig = fig.merge(Toml::file(f));
        }
        let config: Config = fig
            // Only sectioned variables (SHOAL_SERVER__LISTEN): SHOAL_CONFIG and the like are not config keys.
            .merge(
                Env::prefixed("SHOAL_")
                    .filter(|k| k.as_str().contains("__"))
                    .split("__"),
            )
            .extract()
            .map_err(|e| NodeError::Config(e.to_string()))?;
        Ok(config)
    }

    /// The configuration as `shoal config` prints it: secrets replaced.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        let hidden = || Some(Secret("<redacted>".into()));
        if c.cluster.secret.is_some() {
            c.cluster.secret = hidden();
        }
        if c.auth.admin_key.is_some() {
            c.auth.admin_key = hidden();
        }
        if c.auth.jwt_secret.is_some() {
            c.auth.jwt_secret = hidden();
        }
        c
    }

    /// [`Config::load`] without the final check, for callers that change the configuration
    /// further (command-line flags) and check it after.
    pub fn load_unchecked(file: Option<&Path>) -> Result<Config, NodeError> {
        Self::read(file)
    }

    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("server.max_body_bytes", self.server.max_body_bytes),
            (
                "server.request_timeout_ms",
                self.server.request_timeout_ms as usize,
            ),
            ("model.max_tokens", self.model.max_tokens),
            ("model.batch_size", self.model.batch_size),
            ("model.max_batch_tokens", self.model.max_batch_tokens),
            ("reranker.max_batch_tokens", self.reranker.max_batch_tokens),
            (
                "model.max_inputs_per_request",
                self.model.max_inputs_per_request,
            ),
            ("reranker.max_tokens", self.reranker.max_tokens),
            ("reranker.batch_size", self.reranker.batch_size),
            (
                "reranker.default_candidates",
                self.reranker.default_candidates,
            ),
            ("reranker.max_candidates", self.reranker.max_candidates),
            ("model.ingest_micro_batch", self.model.ingest_micro_batch),
            (
                "model.ingest_micro_batch_tokens",
                self.model.ingest_micro_batch_tokens,
            ),
            ("ingest.batch_chunks", self.ingest.batch_chunks),
            ("ingest.chunk_tokens", self.ingest.chunk_tokens),
            (
                "ingest.max_documents_per_request",
                self.ingest.max_documents_per_request,
            ),
            ("ingest.max_document_bytes", self.ingest.max_document_bytes),
            (
                "ingest.max_chunks_per_document",
                self.ingest.max_chunks_per_document,
            ),
            ("ingest.extract_workers", self.ingest.extract_workers),
            ("search.max_top_k", self.search.max_top_k),
            ("search.default_top_k", self.search.default_top_k),
            ("search.ef_search", self.search.ef_search),
            ("index.m", self.index.m as usize),
            ("index.ef_construction", self.index.ef_construction as usize),
            ("model.timeout_ms", self.model.timeout_ms as usize),
            ("reranker.max_query_bytes", self.reranker.max_query_bytes),
            (
                "reranker.max_document_bytes",
                self.reranker.max_document_bytes,
            ),
            (
                "ingest.max_queue_bytes",
                self.ingest.max_queue_bytes as usize,
            ),
            (
                "ingest.max_queue_documents",
                self.ingest.max_queue_documents as usize,
            ),
            (
                "search.max_filter_conditions",
                self.search.max_filter_conditions,
            ),
            ("search.max_filter_values", self.search.max_filter_values),
            ("search.hybrid_candidates", self.search.hybrid_candidates),
            (
                "threads.ingest_share_window_ms",
                self.threads.ingest_share_window_ms as usize,
            ),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        for (section, engine, precision) in [
            ("model", self.model.engine, self.model.precision),
            ("reranker", self.reranker.engine, self.reranker.precision),
        ] {
            if engine == Engine::Candle && precision != Precision::F32 {
                return Err(format!(
                    "{section}.precision `bf16` needs {section}.engine `native`"
                ));
            }
        }
        if !(0..=19).contains(&self.threads.ingest_nice) {
            return Err("threads.ingest_nice must be between 0 and 19".into());
        }
        let share = self.threads.ingest_min_share;
        if !(share == 0.0 || (0.01..=0.9).contains(&share)) {
            return Err(
                "threads.ingest_min_share must be 0 (off) or between 0.01 and 0.9 (queries keep at least a tenth)"
                    .into(),
            );
        }
        if self.threads.ingest_resume_us > 100_000 {
            return Err("threads.ingest_resume_us must be at most 100000 (µs)".into());
        }
        let slice = self.threads.query_slice_us;
        if slice != 0 && !crate::thread_sched::SLICE_US.contains(&slice) {
            return Err(
                "threads.query_slice_us must be 0 (the kernel's default) or between 100 and 100000 (µs)"
                    .into(),
            );
        }
        if !(10..=10_000).contains(&self.threads.ingest_share_window_ms) {
            return Err("threads.ingest_share_window_ms must be between 10 and 10000 (ms)".into());
        }
        if self.model.timeout_ms > self.server.request_timeout_ms {
            return Err(format!(
                "model.timeout_ms ({}) must not exceed server.request_timeout_ms ({}): a request that timed out would still cost its inference",
                self.model.timeout_ms, self.server.request_timeout_ms
            ));
        }
        if self.ingest.extract_timeout_ms == 0 {
            return Err("ingest.extract_timeout_ms must be positive".into());
        }
        if self.ingest.extract_memory_bytes < 64 << 20 {
            return Err(
                "ingest.extract_memory_bytes must be at least 67108864 (64 MiB): a worker holds its file and the text it reads"
                    .into(),
            );
        }
        if (self.ingest.max_document_bytes as u64) > self.ingest.max_queue_bytes {
            return Err("ingest.max_document_bytes must not exceed ingest.max_queue_bytes".into());
        }
        let c = &self.cluster;
        if c.heartbeat_ms == 0 || c.election_timeout_min_ms <= c.heartbeat_ms {
            return Err(
                "cluster.election_timeout_min_ms must be larger than cluster.heartbeat_ms (> 0)"
                    .into(),
            );
        }
        if c.election_timeout_max_ms <= c.election_timeout_min_ms {
            return Err(
                "cluster.election_timeout_max_ms must be larger than cluster.election_timeout_min_ms"
                    .into(),
            );
        }
        for (name, v) in [
            ("cluster.snapshot_after_entries", c.snapshot_after_entries),
            ("cluster.snapshot_chunk_bytes", c.snapshot_chunk_bytes),
            ("cluster.max_entries_per_append", c.max_entries_per_append),
            ("cluster.max_entry_bytes", c.max_entry_bytes as u64),
            ("cluster.write_timeout_ms", c.write_timeout_ms),
            ("cluster.stale_after_ms", c.stale_after_ms),
            ("cluster.read_wait_ms", c.read_wait_ms),
            ("cluster.claim_ttl_ms", c.claim_ttl_ms),
            ("cluster.backup_timeout_ms", c.backup_timeout_ms),
        ] {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if c.max_entry_bytes < (64 << 10) {
            return Err("cluster.max_entry_bytes must be at least 65536".into());
        }
        if c.secret.as_ref().is_some_and(|s| s.0.len() < 16) {
            return Err("cluster.secret must be at least 16 characters".into());
        }
        if c.join.is_some() && c.secret.is_none() {
            return Err(
                "cluster.join needs cluster.secret (the secret every node of the cluster shares)"
                    .into(),
            );
        }
        if c.max_entry_bytes < 4 * self.ingest.max_document_bytes {
            return Err(format!(
                "cluster.max_entry_bytes ({}) must be at least 4 x ingest.max_document_bytes ({}): one document's chunks with their vectors must fit in one log entry",
                c.max_entry_bytes, self.ingest.max_document_bytes
            ));
        }
        if c.secret.is_some() {
            if !self.storage.sync_writes {
                return Err(
                    "storage.sync_writes = false is for a node alone: in a cluster a voter that lost entries it acknowledged could lose committed writes"
                        .into(),
                );
            }
            if c.advertise.is_none() && self.server.listen.ip().is_unspecified() {
                return Err(format!(
                    "server.listen is {}: set cluster.advertise (--advertise) to the address other nodes reach this one at",
                    self.server.listen
                ));
            }
        }
        if let Some(a) = &c.advertise {
            if !(a.starts_with("http://") || a.starts_with("https://")) {
                return Err(format!(
                    "cluster.advertise must be a URL such as http://10.0.0.2:7400, got `{a}`"
                ));
            }
        }
        if self.index.m > 255 {
            return Err("index.m must be at most 255".into());
        }
        let a = &self.auth;
        if a.admin_key.as_ref().is_some_and(|k| k.0.len() < 16) {
            return Err("auth.admin_key must be at least 16 characters".into());
        }
        if a.jwt_secret.as_ref().is_some_and(|k| k.0.len() < 32) {
            return Err("auth.jwt_secret must be at least 32 bytes".into());
        }
        if a.token_ttl_s == 0
            || a.failed_login_window_s == 0
            || a.max_failed_logins == 0
            || a.max_failed_logins_per_address == 0
        {
            return Err(
                "auth.token_ttl_s, auth.max_failed_logins, auth.max_failed_logins_per_address and auth.failed_login_window_s must be positive"
                    .into(),
            );
        }
        if a.token_ttl_s > 30 * 86_400 {
            return Err("auth.token_ttl_s must be at most 2592000 (30 days)".into());
        }
        if a.failed_login_window_s > 86_400 || a.leeway_s > 3_600 {
            return Err(
                "auth.failed_login_window_s must be at most 86400 and auth.leeway_s at most 3600"
                    .into(),
            );
        }
        if !a.jwt_public_keys.is_empty() && a.jwt_issuer.is_none() {
            return Err(
                "auth.jwt_public_keys needs auth.jwt_issuer (the `iss` the identity provider's tokens carry)"
                    .into(),
            );
        }
        if self.search.default_top_k > self.search.max_top_k {
            return Err("search.default_top_k must not exceed search.max_top_k".into());
        }
        if !(0.0..=1e6).contains(&self.search.rrf_k) {
            return Err(format!(
                "search.rrf_k must be between 0 and 1000000, got {}",
                self.search.rrf_k
            ));
        }
        if self.ingest.chunk_tokens + 2 > self.model.max_tokens {
            return Err(format!(
                "ingest.chunk_tokens ({}) must leave room for 2 special tokens within model.max_tokens ({})",
                self.ingest.chunk_tokens, self.model.max_tokens
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_timeout_fits_inside_the_request_timeout() {
        let mut c = Config::default();
        assert!(c.model.timeout_ms <= c.server.request_timeout_ms);
        c.model.timeout_ms = 60_000;
        let e = c.validate().unwrap_err();
        assert!(e.contains("model.timeout_ms"), "{e}");
        c.server.request_timeout_ms = 90_000;
        assert!(c.validate().is_ok());
        c.threads.ingest_min_share = 0.95;
        assert!(c.validate().unwrap_err().contains("ingest_min_share"));
        c.threads.ingest_min_share = 1e-12;
        assert!(c.validate().unwrap_err().contains("ingest_min_share"));
        c.threads.ingest_min_share = 0.0;
        assert!(c.validate().is_ok());
        c.threads.ingest_share_window_ms = u64::MAX;
        assert!(c.validate().unwrap_err().contains("ingest_share_window_ms"));
    }

    #[test]
    fn the_cluster_secret_is_never_shown() {
        let mut c = Config::default();
        c.cluster.secret = Some(Secret("a-very-secret-value-123".into()));
        assert!(!format!("{c:?}").contains("a-very-secret"));
        let printed = toml::to_string(&c.redacted()).unwrap();
        assert!(!printed.contains("a-very-secret"), "{printed}");
        assert!(printed.contains("<redacted>"));
        // and it is checked: too short, or a join without one
        c.cluster.secret = Some(Secret("short".into()));
        assert!(c.validate().unwrap_err().contains("cluster.secret"));
        c.cluster.secret = None;
        c.cluster.join = Some("http://a:7400".into());
        assert!(c.validate().unwrap_err().contains("needs cluster.secret"));
        c.cluster.join = None;
        c.cluster.election_timeout_max_ms = c.cluster.election_timeout_min_ms;
        assert!(c
            .validate()
            .unwrap_err()
            .contains("election_timeout_max_ms"));
    }

    #[test]
    fn engine_and_precision_are_checked() {
        let mut c = Config::default();
        assert!(c.validate().is_ok());
        c.model.precision = Precision::Bf16;
        assert!(c.validate().is_ok());
        c.model.engine = Engine::Candle;
        let e = c.validate().unwrap_err();
        assert!(e.contains("needs model.engine `native`"), "{e}");
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn engine_and_precision_are_read_by_name() {
        figment::Jail::expect_with(|jail| {
            let file = jail.directory().join("shoal.toml");
            std::fs::write(&file, "[model]\nengine = \"candle\"\n").unwrap();
            jail.set_env("SHOAL_RERANKER__PRECISION", "bf16");
            let c = Config::load(Some(&file)).map_err(|e| e.to_string())?;
            assert_eq!(c.model.engine, Engine::Candle);
            assert_eq!(c.model.precision, Precision::F32);
            assert_eq!(c.reranker.precision, Precision::Bf16);
            std::fs::write(&file, "[model]\nengine = \"onnx\"\n").unwrap();
            let e = Config::load(Some(&file)).unwrap_err().to_string();
            assert!(
                e.contains("unknown engine `onnx`") && e.contains("engine"),
                "{e}"
            );
            jail.set_env("SHOAL_RERANKER__PRECISION", "int4");
            std::fs::write(&file, "").unwrap();
            let e = Config::load(Some(&file)).unwrap_err().to_string();
            assert!(e.contains("unknown precision `int4`"), "{e}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn index_quantization_is_read_by_name() {
        figment::Jail::expect_with(|jail| {
            let file = jail.directory().join("shoal.toml");
            std::fs::write(&file, "").unwrap();
            let c = Config::load(Some(&file)).map_err(|e| e.to_string())?;
            assert_eq!(c.index.quantization, shoal_storage::Quantization::None);
            std::fs::write(&file, "[index]\nquantization = \"int8\"\n").unwrap();
            let c = Config::load(Some(&file)).map_err(|e| e.to_string())?;
            assert_eq!(c.index.quantization, shoal_storage::Quantization::Int8);
            jail.set_env("SHOAL_INDEX__QUANTIZATION", "none");
            let c = Config::load(Some(&file)).map_err(|e| e.to_string())?;
            assert_eq!(c.index.quantization, shoal_storage::Quantization::None);
            jail.set_env("SHOAL_INDEX__QUANTIZATION", "int4");
            let e = Config::load(Some(&file)).unwrap_err().to_string();
            assert!(e.contains("int4") && e.contains("int8"), "{e}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn file_then_env_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shoal.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"127.0.0.1:9000\"\n[search]\nmax_top_k = 50\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("SHOAL_SEARCH__MAX_TOP_K", "70");
            jail.set_env("SHOAL_BIN", "/somewhere/else");
            let c = Config::load(Some(&file)).map_err(|e| e.to_string())?;
            assert_eq!(c.server.listen.port(), 9000);
            assert_eq!(c.search.max_top_k, 70);
            assert_eq!(c.ingest.chunk_tokens, 200);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn bad_values_are_refused() {
        // Inside a jail: the other test sets environment variables.
        figment::Jail::expect_with(|_| {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("shoal.toml");
            std::fs::write(&file, "[search]\nmax_top_k = 0\n").unwrap();
            let e = Config::load(Some(&file)).unwrap_err().to_string();
            assert!(e.contains("max_top_k"), "{e}");
            std::fs::write(&file, "[serch]\n").unwrap();
            assert!(Config::load(Some(&file)).is_err());
            assert!(Config::load(Some(&dir.path().join("missing.toml"))).is_err());
            Ok(())
        });
    }
}
