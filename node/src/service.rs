//! The node's implementation of the HTTP API ([`ShoalService`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use shoal_api::auth::{Credentials, Principal};
use shoal_api::dto::*;
use shoal_api::{ApiError, ShoalService, SnapshotDownload};
use shoal_index::{
    fuse, normalize, Filter, FilterLimits, FusedHit, Fusion, SearchMode,
    SearchRequest as IndexSearch,
};
use shoal_inference::sigmoid;
use shoal_storage::{
    ApiKeyRecord, CollectionRecord, CollectionSpec, Command, DocumentInput as StoredInput,
    DocumentStatus, HnswParams, JobRecord, Outcome, UserChange, UserRecord,
};

use crate::access;
use crate::actors::ask;
use crate::actors::embedder::{EmbedQueue, EmbedderMsg};
use crate::actors::ingest::now_ms;
use crate::actors::reranker::RerankerMsg;
use crate::actors::supervisor::SupervisorMsg;
use crate::analytics;
use crate::context::NodeContext;
use crate::embed_exec::ArrivalTicket;
use crate::error::NodeError;
use crate::ingest_queue::Reservation;
use shoal_inference::TextKind;

const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
const NO_RERANKER: &str = "this node has no reranker, and no other node of the cluster offers one; start a node with --reranker-model DIR (or RERANKER_MODEL_PATH)";
/// How long a search (or a collection create) waits for a shard's first load before 503.
const SHARD_LOAD_WAIT: Duration = Duration::from_secs(5);
/// How many times a search searches again when hits' chunks are missing from the store although
/// its shard has reached the store's index (waiting cannot help: see `search`).
const MAX_STUCK_ROUNDS: u32 = 3;
/// How long a write's answer waits for the index to mirror it (so that a search right after it
/// sees it). The write is committed either way; past this the answer goes out without waiting.
const VISIBLE_WAIT: Duration = Duration::from_secs(10);

/// Sets its flag when dropped: the request it belongs to is gone (answered, timed out or
/// disconnected), so work still running for it can stop.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[derive(Clone)]
pub struct Node {
    pub ctx: Arc<NodeContext>,
}

type Result<T> = std::result::Result<T, ApiError>;

/// A quantization as the API names it, as the store keeps it.
fn stored_quantization(q: Quantization) -> shoal_storage::Quantization {
    match q {
        Quantization::None => shoal_storage::Quantization::None,
        Quantization::Int8 => shoal_storage::Quantization::Int8,
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

impl Node {
    /// The shard of collection `c` on this node, once it is loaded.
    fn loaded_shard(&self, c: &CollectionRecord) -> Option<Arc<shoal_index::Shard>> {
        // (by uid too: a collection dropped and made again under the same name is another)
        self.ctx
            .actors
            .shards
            .get(&c.name)
            .filter(|s| s.uid == c.uid)
            .and_then(|s| s.shard)
    }

    /// The collection as a create or an update at log `index` answers it: once this node's
    /// shard reflects that index (or after the wait a new shard's load gets), with the index.
    async fn once_loaded(&self, record: &CollectionRecord, index: u64) -> CollectionInfo {
        self.ctx
            .wait_searchable(record.uid, index, SHARD_LOAD_WAIT)
            .await;
        let mut info = self.collection_info(record);
        info.log_index = Some(index);
        info
    }

    /// The figures of the collection's loaded shard on this node, if it is loaded.
    fn shard_stats(&self, c: &CollectionRecord) -> Option<shoal_index::ShardStats> {
        self.loaded_shard(c).map(|s| s.stats())
    }

    /// Fault injection answers only on a node started with it; elsewhere its routes are 404.
    fn require_fault_injection(&self) -> Result<()> {
        if self.ctx.config.debug.fault_injection {
            Ok(())
        } else {
            Err(ApiError::NotFound(
                "fault injection is disabled (start the node with --fault-injection)".into(),
            ))
        }
    }

    fn collection_info(&self, c: &CollectionRecord) -> CollectionInfo {
        let stats = self.shard_stats(c);
        CollectionInfo {
            name: c.name.clone(),
            dimension: c.spec.dimension,
            documents: c.documents,
            chunks: c.chunks,
            created_at: c.created_at_ms,
            index: IndexInfo {
                m: c.spec.hnsw.m,
                ef_construction: c.spec.hnsw.ef_construction,
                quantization: match c.spec.quantization {
                    shoal_storage::Quantization::None => Quantization::None,
                    shoal_storage::Quantization::Int8 => Quantization::Int8,
                },
                vectors_on_disk: c.spec.vectors_on_disk,
                live_points: stats.map(|s| s.live_points as u64).unwrap_or(0),
                tombstones: stats.map(|s| s.tombstones as u64).unwrap_or(0),
            },
            log_index: None,
            storage: None,
        }
    }

    /// What collection `c` takes on this node: its records in the store and its index's files,
    /// measured by walking them (so at most every [`STORAGE_MEASURE_EVERY`] per collection).
    async fn collection_storage(&self, c: &CollectionRecord) -> Result<CollectionStorage> {
        if let Some(s) = self
            .ctx
            .storage_measured
            .fresh(c.uid, STORAGE_MEASURE_EVERY)
        {
            return Ok(s);
        }
        let uid = c.uid;
        let dump_dir = self.ctx.shard_dump_dir(c);
        let shard = self.loaded_shard(c);
        let shard_loaded = shard.is_some();
        let measured = self
            .read(move |ctx| {
                let (documents_bytes, chunks_bytes) = ctx.store.collection_bytes(uid)?;
                let index_files_bytes = std::fs::read_dir(&dump_dir)
                    .map(|entries| {
                        entries
                            .flatten()
                            .filter_map(|e| e.metadata().ok())
                            .filter(|m| m.is_file())
                            .map(|m| m.len())
                            .sum()
                    })
                    .unwrap_or(0);
                // (a walk over the graph's nodes: this runs on a blocking thread)
                let memory = shard.map(|s| s.memory());
                Ok(CollectionStorage {
                    documents_bytes,
                    chunks_bytes,
                    index_files_bytes,
                    vectors_memory_bytes: memory.map_or(0, |m| m.vectors),
                    vectors_mapped_bytes: memory.map_or(0, |m| m.vectors_mapped),
                    graph_memory_bytes: memory.map_or(0, |m| m.graph),
                    keyword_memory_bytes: memory.map_or(0, |m| m.keyword),
                })
            })
            .await?;
        // (dropped collections' figures go when a measurement is next kept)
        let live: std::collections::HashSet<u64> = self
            .ctx
            .store
            .collections()
            .map(|all| all.into_iter().map(|c| c.uid).collect())
            .unwrap_or_default();
        self.ctx
            .storage_measured
            .keep(c.uid, measured, shard_loaded, |uid| live.contains(&uid));
        Ok(measured)
    }

    /// Wait until this node's shard of collection `uid` reflects log index `index` (applied to
    /// the store and mirrored by the index), until `deadline`.
    async fn wait_for_index(
        &self,
        uid: u64,
        index: u64,
        deadline: Instant,
        what: &str,
    ) -> Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if !self.ctx.wait_searchable(uid, index, left).await {
            return Err(ApiError::NotReady(format!(
                "{what}: this node's index has reached {} of {index} within {} ms (cluster.read_wait_ms)",
                self.ctx.watermark.current_for(uid),
                self.ctx.config.cluster.read_wait_ms
            )));
        }
        Ok(())
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&NodeContext) -> std::result::Result<T, NodeError> + Send + 'static,
    ) -> Result<T> {
        let ctx = self.ctx.clone();
        let read = tokio::task::spawn_blocking(move || f(&ctx))
            .await
            .map_err(NodeError::from)?;
        read.map_err(|e| self.not_here_yet(e.into()))
    }

    /// A request to another node's public API, made as a member of the cluster: the cluster
    /// secret is its credential, and it names this node (as the cluster's own requests do).
    fn as_member(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let req = req.header(
            shoal_cluster::network::HEADER_NODE,
            self.ctx.cluster.id.to_string(),
        );
        match &self.ctx.config.cluster.secret {
            Some(secret) => req.header(shoal_cluster::network::HEADER_SECRET, &secret.0),
            None => req,
        }
    }

    /// Create or change a user; answers the user as the command left it.
    async fn commit_user(&self, command: Command) -> Result<UserInfo> {
        let committed = self.ctx.apply(command).await?;
        match committed.outcome {
            Outcome::UserPut(u) => Ok(user_info(u)),
            other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }

    /// A node still catching up with the cluster (just joined, restarted or wiped) may lack
    /// what the cluster has: what it does not find is 503 with the reason, for the client to
    /// retry (or ask another node), not 404.
    fn not_here_yet(&self, e: ApiError) -> ApiError {
        match e {
            ApiError::NotFound(what) => match self.ctx.cluster.catching_up() {
                Some(why) => {
                    ApiError::NotReady(format!("{what} on this node, which is {why}; retry"))
                }
                None => ApiError::NotFound(what),
            },
            other => other,
        }
    }

    fn require_collection(&self, name: &str) -> Result<CollectionRecord> {
        self.ctx
            .store
            .collection(name)
            .map_err(NodeError::from)?
            .ok_or_else(|| {
                self.not_here_yet(ApiError::NotFound(format!("collection `{name}` not found")))
            })
    }

    fn require_model_dimension(&self, c: &CollectionRecord, what: &str) -> Result<()> {
        let model = self.ctx.runtime.embedder.dimension();
        if c.spec.dimension as usize != model {
            return Err(bad(format!(
                "collection `{}` has dimension {}, but the node's model makes {model}-dimensional vectors: {what}",
                c.name, c.spec.dimension
            )));
        }
        Ok(())
    }

    /// The index step of a search: the graph (or a scan), the keyword index or both, while
    /// ingest steps aside, then each hit's chunk from the store. Returns the hits and how many
    /// points had no chunk in the store any more.
    ///
    /// A plain graph search (a quarter of a millisecond on 100k vectors at the default beam, with
    /// at most `QUICK_FETCH` hits to read) runs where the request is, when the query gate lets it
    /// in at once: the hop to a blocking thread and back cost two thread wake-ups, as much as the
    /// walk itself. Wide beams, scans, filters (finding a filter's matches may take a while),
    /// keyword searches (which may commit the keyword index) and a gate that makes queries wait
    /// go to a blocking thread.
    async fn search_shard(&self, step: IndexStep) -> Result<(Vec<SearchHit>, usize)> {
        let gate = self.ctx.runtime.query_gate.clone();
        let cfg = &self.ctx.config.search;
        let quick = matches!(step.retrieval, Retrieval::Vector(_))
            && step.filter.is_none()
            && step.mode == SearchMode::Auto
            && step.ef.unwrap_or(cfg.ef_search) <= cfg.ef_search.max(QUICK_EF)
            && step.fetch <= QUICK_FETCH;
        // Ingest steps aside for the index step too, as it does for the query's embedding; the
        // step never waits for an ingest turn (the search is under way).
        if quick {
            let _query = gate.hold_in_search();
            // (a panic is the request's 500, as it is from a blocking thread)
            return std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step.run()))
                .map_err(|_| ApiError::Internal("the index step panicked".into()))?
                .map_err(ApiError::from);
        }
        let found = tokio::task::spawn_blocking(move || {
            let _query = gate.hold_in_search();
            step.run()
        })
        .await
        .map_err(NodeError::from)??;
        Ok(found)
    }

    /// Embed a search query, through the query cache. `arrival` counts the search among those on
    /// their way to the query embedder until its job is taken (or it is answered from the cache).
    async fn embed_query(&self, text: String, arrival: ArrivalTicket) -> Result<Arc<Vec<f32>>> {
        if let Some(cache) = &self.ctx.runtime.query_cache {
            if let Some(v) = cache.lock().get(&text).cloned() {
                self.ctx.runtime.metrics.query_cache_hits.inc();
                return Ok(v);
            }
            self.ctx.runtime.metrics.query_cache_misses.inc();
        }
        let v = Arc::new(
            self.embed_texts_as(vec![text.clone()], TextKind::Query, Some(arrival))
                .await?
                .pop()
                .ok_or_else(|| ApiError::Internal("the embedder returned no vector".into()))?,
        );
        if let Some(cache) = &self.ctx.runtime.query_cache {
            cache.lock().put(text, v.clone());
        }
        Ok(v)
    }

    /// Embed texts on the query embedder (the one ingest never occupies).
    async fn embed_texts(&self, texts: Vec<String>, kind: TextKind) -> Result<Vec<Vec<f32>>> {
        self.embed_texts_as(texts, kind, None).await
    }

    async fn embed_texts_as(
        &self,
        texts: Vec<String>,
        kind: TextKind,
        arrival: Option<ArrivalTicket>,
    ) -> Result<Vec<Vec<f32>>> {
        if !self.ctx.is_warm() {
            return Err(ApiError::NotReady(
                "the embedding model is warming up".into(),
            ));
        }
        let actor = self
            .ctx
            .actors
            .embedders
            .read()
            .get(&EmbedQueue::Query)
            .cloned()
            .ok_or_else(|| ApiError::NotReady("the query embedder is restarting; retry".into()))?;
        let timeout = Duration::from_millis(self.ctx.config.model.timeout_ms);
        let n = texts.len();
        let v = ask(&actor, "query embedder", timeout, |reply| {
            EmbedderMsg::Embed {
                texts,
                reply,
                progress: None,
                arrival,
                kind,
            }
        })
        .await?
        .map_err(|e| ApiError::Internal(format!("embedding failed: {e}")))?;
        if v.len() != n {
            return Err(ApiError::Internal(
                "the embedder returned the wrong number of vectors".into(),
            ));
        }
        Ok(v)
    }

    /// Raw reranker scores of `passages` for `query`, in input order.
    async fn rerank_scores(&self, query: String, passages: Vec<String>) -> Result<Vec<f32>> {
        if self.ctx.runtime.reranker.is_none() {
            return self.remote_rerank(query, passages).await.map(|(_, s)| s);
        }
        if !self
            .ctx
            .reranker_warm
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(ApiError::NotReady("the reranker is warming up".into()));
        }
        let actor = self
            .ctx
            .actors
            .reranker_actor
            .read()
            .clone()
            .ok_or_else(|| ApiError::NotReady("the reranker is restarting; retry".into()))?;
        let timeout = Duration::from_millis(self.ctx.config.model.timeout_ms);
        let n = passages.len();
        let cancelled = Arc::new(AtomicBool::new(false));
        let _cancel_when_gone = CancelOnDrop(cancelled.clone());
        let scores = ask(&actor, "reranker", timeout, |reply| RerankerMsg::Score {
            query,
            passages,
            cancelled,
            reply,
        })
        .await?
        .map_err(|e| ApiError::Internal(format!("reranking failed: {e}")))?;
        if scores.len() != n {
            return Err(ApiError::Internal(
                "the reranker returned the wrong number of scores".into(),
            ));
        }
        Ok(scores)
    }

    /// Rerank on another node of the cluster that has a reranker (this one has none): its raw
    /// scores, in input order, and its model's name.
    async fn remote_rerank(
        &self,
        query: String,
        passages: Vec<String>,
    ) -> Result<(String, Vec<f32>)> {
        let offers = self.ctx.cluster.members_offering("reranker").await;
        if offers.is_empty() {
            return Err(bad(NO_RERANKER));
        }
        let timeout = Duration::from_millis(self.ctx.config.model.timeout_ms);
        let n = passages.len();
        let body = serde_json::json!({ "query": query, "texts": passages, "raw_scores": true });
        let mut last_error = String::new();
        for (id, addr) in offers {
            let req = self
                .ctx
                .runtime
                .http
                .post(format!("{addr}/v1/rerank"))
                .timeout(timeout)
                .json(&body);
            let sent = self.as_member(req).send().await;
            let answer = match sent {
                Ok(r) if r.status().is_success() => r.json::<Vec<Value>>().await,
                Ok(r) => {
                    last_error = format!("node {id} answered {}", r.status());
                    continue;
                }
                Err(e) => {
                    last_error = format!("node {id}: {e}");
                    continue;
                }
            };
            let Ok(items) = answer else {
                last_error = format!("node {id} answered something else than scores");
                continue;
            };
            let mut scores = vec![f32::NAN; n];
            for item in &items {
                if let (Some(i), Some(s)) = (item["index"].as_u64(), item["score"].as_f64()) {
                    if let Some(slot) = scores.get_mut(i as usize) {
                        *slot = s as f32;
                    }
                }
            }
            if scores.iter().any(|s| s.is_nan()) {
                last_error = format!("node {id} did not score every passage");
                continue;
            }
            self.ctx.runtime.metrics.reranks_forwarded.inc();
            return Ok((self.remote_reranker_model(id, &addr).await, scores));
        }
        Err(ApiError::NotReady(format!(
            "no node with a reranker answered: {last_error}"
        )))
    }

    /// The name of the reranker model of the member at `addr` (asked once, then remembered).
    async fn remote_reranker_model(&self, id: u64, addr: &str) -> String {
        if let Some(m) = self.ctx.runtime.remote_rerankers.lock().get(addr) {
            return m.clone();
        }
        let health = self
            .ctx
            .runtime
            .http
            .get(format!("{addr}/api/health"))
            .timeout(Duration::from_secs(2));
        let health = self.as_member(health).send().await;
        let model = match health {
            Ok(r) => r.json::<Value>().await.ok(),
            Err(_) => None,
        }
        .and_then(|h| h["reranker"]["model"].as_str().map(str::to_owned));
        match model {
            Some(m) => {
                self.ctx
                    .runtime
                    .remote_rerankers
                    .lock()
                    .insert(addr.to_string(), m.clone());
                m
            }
            None => format!("node {id}'s reranker"),
        }
    }

    fn model_states(&self) -> (ModelState, ModelState) {
        let embedder = ModelState {
            state: if self.ctx.is_warm() {
                "ready"
            } else {
                "warming_up"
            }
            .into(),
            model: Some(self.ctx.runtime.embedder.model_name().to_string()),
        };
        let reranker = match &self.ctx.runtime.reranker {
            None => ModelState {
                state: "disabled".into(),
                model: None,
            },
            Some(r) => ModelState {
                state: if self
                    .ctx
                    .reranker_warm
                    .load(std::sync::atomic::Ordering::Acquire)
                {
                    "ready"
                } else {
                    "warming_up"
                }
                .into(),
                model: Some(r.model_name().to_string()),
            },
        };
        (embedder, reranker)
    }
}

/// A job as the API shows it. `mirrored` is the index watermark: a job the store has finished
/// reads as running until the index has mirrored its last change (its chunks are searchable).
fn document_state(s: &DocumentStatus) -> (DocumentState, Option<String>) {
    match s {
        DocumentStatus::Pending => (DocumentState::Pending, None),
        DocumentStatus::Indexed => (DocumentState::Indexed, None),
        DocumentStatus::Failed { reason } => (DocumentState::Failed, Some(reason.clone())),
    }
}

/// A job state as the API names it.
fn job_state_name(s: &JobState) -> &'static str {
    match s {
        JobState::Running => "running",
        JobState::Completed => "completed",
        JobState::CompletedWithErrors => "completed_with_errors",
        JobState::Cancelled => "cancelled",
    }
}

fn user_info(u: UserRecord) -> UserInfo {
    UserInfo {
        username: u.name,
        role: access::api_role(u.role),
        collections: u.collections,
        created_at: u.created_at_ms,
        updated_at: u.updated_at_ms,
    }
}

fn key_info(k: ApiKeyRecord) -> ApiKeyInfo {
    ApiKeyInfo {
        id: k.id,
        name: k.name,
        role: access::api_role(k.role),
        collections: k.collections,
        created_by: k.created_by,
        created_at: k.created_at_ms,
        expires_at: k.expires_at_ms,
    }
}

/// The state a job reads as: running until its collection's shard has mirrored its last change.
fn job_api_state(j: &JobRecord, mirrored: u64) -> JobState {
    match j.state() {
        shoal_storage::JobState::Running => JobState::Running,
        _ if j.last_index > mirrored => JobState::Running,
        shoal_storage::JobState::Completed => JobState::Completed,
        shoal_storage::JobState::CompletedWithErrors => JobState::CompletedWithErrors,
        shoal_storage::JobState::Cancelled => JobState::Cancelled,
    }
}

fn job_info(j: JobRecord, mirrored: u64) -> JobInfo {
    let state = job_api_state(&j, mirrored);
    JobInfo {
        id: j.id,
        collection: j.collection,
        state,
        total: j.total,
        indexed: j.indexed,
        failed: j.failed,
        superseded: j.superseded,
        errors: j
            .errors
            .into_iter()
            .map(|e| JobDocumentError {
                document_id: e.doc_id,
                reason: e.reason,
            })
            .collect(),
        created_at: j.created_at_ms,
        updated_at: j.updated_at_ms,
        index: j.last_index,
    }
}

/// How long a collection's measured storage is reused before it is measured again.
pub const STORAGE_MEASURE_EVERY: Duration = Duration::from_secs(10);

/// Bytes of section headings one document may carry into the log (its outline, not its text).
const SECTION_BYTES: usize = 64 * 1024;

fn parse_metadata(json: &str) -> Map<String, Value> {
    serde_json::from_str::<Value>(json)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

impl ShoalService for Node {
    type Admission = Reservation;

    async fn health(&self) -> HealthResponse {
        let (embedder, reranker) = self.model_states();
        HealthResponse {
            status: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: self.ctx.started.elapsed().as_secs_f64(),
            embedder,
            reranker,
        }
    }

    async fn ready(&self) -> ReadyResponse {
        let warm = self.ctx.is_warm();
        let loading = self.ctx.actors.shards.loading();
        let embedders = self.ctx.actors.embedders.read().len();
        let mut components = Map::new();
        components.insert(
            "embedder".into(),
            Value::from(if warm { "ready" } else { "warming_up" }),
        );
        components.insert(
            "shards".into(),
            if loading.is_empty() {
                Value::from("ready")
            } else if self.ctx.access.enabled() {
                serde_json::json!({ "loading": loading.len() })
            } else {
                serde_json::json!({ "loading": loading })
            },
        );
        components.insert("embedder_actors".into(), Value::from(embedders));
        components.insert(
            "ingest_queue".into(),
            Value::from(self.ctx.actors.ingest.len()),
        );
        let (_, reranker) = self.model_states();
        let reranker_warming = reranker.state == "warming_up";
        components.insert("reranker".into(), Value::from(reranker.state));
        let cluster = &self.ctx.cluster;
        let member = cluster.is_initialized().await;
        // a member that has not caught up with the cluster yet may lack collections it has
        let catching_up = cluster.catching_up();
        let stale = cluster.stale();
        components.insert(
            "cluster".into(),
            serde_json::json!({
                "node_id": cluster.id,
                "member": member,
                "leader": cluster.leader().map(|(id, _)| id),
                "applied_index": cluster.applied_index(),
                "stale": stale,
                "catching_up": catching_up,
            }),
        );
        let mut reasons = Vec::new();
        if !warm {
            reasons.push("the embedder is warming up".to_owned());
        }
        if !loading.is_empty() {
            // Readiness is open to anyone: with auth on it names no collection.
            reasons.push(if self.ctx.access.enabled() {
                format!("loading the shards of {} collections", loading.len())
            } else {
                format!("loading the shards of {}", loading.join(", "))
            });
        }
        if reranker_warming {
            reasons.push("the reranker is warming up".to_owned());
        }
        if !member {
            reasons.push(
                "not a member of a cluster yet (`shoal cluster init`, or start with --join)"
                    .to_owned(),
            );
        } else if let Some(c) = &catching_up {
            // says "catching up: ..." and how far
            reasons.push(c.clone());
        } else if let Some(s) = &stale {
            // A node that cannot vouch for its data is taken out of a load balancer's rotation;
            // it still answers searches (marked stale) for clients that call it directly.
            reasons.push(format!("no leader or no quorum: {s}"));
        }
        let auth = if !self.ctx.access.enabled() {
            "off"
        } else if self.ctx.access.can_sign(&self.ctx.store) {
            "ready"
        } else {
            "waiting_for_signing_secret"
        };
        components.insert("auth".into(), Value::from(auth));
        if member && auth == "waiting_for_signing_secret" {
            reasons.push(
                "auth: the cluster has not made its token-signing secret yet (its leader makes it)"
                    .to_owned(),
            );
        }
        let ready = reasons.is_empty();
        self.ctx
            .runtime
            .metrics
            .ready
            .set(if ready { 1.0 } else { 0.0 });
        ReadyResponse {
            ready,
            reasons,
            components,
        }
    }

    async fn metrics(&self) -> Result<String> {
        // sets `shoal_ready` as `/api/ready` answers
        self.ready().await;
        let w = &self.ctx.watermark;
        self.ctx
            .runtime
            .metrics
            .index_watermark_lag
            .set(w.applied_index().saturating_sub(w.current()) as i64);
        let st = self.ctx.cluster.local_status().await;
        let m = &self.ctx.runtime.metrics;
        m.cluster_term.set(st.term as i64);
        m.cluster_leader.set(st.leader.unwrap_or(0) as i64);
        m.cluster_is_leader
            .set(i64::from(st.leader == Some(st.id) && st.state == "leader"));
        m.cluster_commit_index
            .set(st.commit_index.unwrap_or(0) as i64);
        m.cluster_applied_index.set(st.applied_index as i64);
        m.cluster_stale.set(i64::from(st.stale.is_some()));
        // Per-collection counts from the store; a dropped collection's series go away.
        m.collection_documents.reset();
        m.collection_chunks.reset();
        for c in self.ctx.store.collections().map_err(NodeError::from)? {
            m.collection_documents
                .with_label_values(&[c.name.as_str()])
                .set(c.documents as f64);
            m.collection_chunks
                .with_label_values(&[c.name.as_str()])
                .set(c.chunks as f64);
        }
        m.cluster_replication_lag.reset();
        if let Some(r) = &st.replication {
            let last = st.last_log_index.unwrap_or(0);
            for (node, matched) in r {
                m.cluster_replication_lag
                    .with_label_values(&[node.to_string().as_str()])
                    .set(last.saturating_sub(matched.unwrap_or(0)) as f64);
            }
        }
        self.ctx
            .runtime
            .metrics
            .render()
            .map_err(|e| ApiError::Internal(format!("metrics: {e}")))
    }

    async fn create_collection(
        &self,
        name: String,
        req: CreateCollectionRequest,
    ) -> Result<CollectionInfo> {
        let dimension = req
            .dimension
            .unwrap_or(self.ctx.runtime.embedder.dimension() as u32);
        if dimension == 0 || dimension > 65_536 {
            return Err(bad("dimension must be between 1 and 65536"));
        }
        let defaults = &self.ctx.config.index;
        let hnsw = HnswParams {
            m: req.hnsw.m.unwrap_or(defaults.m),
            ef_construction: req.hnsw.ef_construction.unwrap_or(defaults.ef_construction),
        };
        if !(2..=255).contains(&hnsw.m) {
            return Err(bad("hnsw.m must be between 2 and 255"));
        }
        if !(1..=4096).contains(&hnsw.ef_construction) {
            return Err(bad("hnsw.ef_construction must be between 1 and 4096"));
        }
        let quantization = match req.quantization {
            None => defaults.quantization,
            Some(q) => stored_quantization(q),
        };
        let committed = self
            .ctx
            .apply(Command::CreateCollection {
                name,
                spec: CollectionSpec {
                    dimension,
                    hnsw,
                    quantization,
                    vectors_on_disk: req.vectors_on_disk.unwrap_or(false),
                },
                at_ms: now_ms(),
            })
            .await?;
        match committed.outcome {
            // 201 means searchable: the new (empty) shard loads in a moment.
            Outcome::CollectionCreated(record) => {
                Ok(self.once_loaded(&record, committed.index).await)
            }
            other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn get_collection(&self, name: String) -> Result<CollectionInfo> {
        let c = self.require_collection(&name)?;
        let mut info = self.collection_info(&c);
        info.storage = Some(self.collection_storage(&c).await?);
        Ok(info)
    }

    async fn list_collections(&self) -> Result<CollectionList> {
        let all = self.ctx.store.collections().map_err(NodeError::from)?;
        Ok(CollectionList {
            collections: all.iter().map(|c| self.collection_info(c)).collect(),
        })
    }

    async fn update_collection(
        &self,
        name: String,
        req: UpdateCollectionRequest,
    ) -> Result<CollectionInfo> {
        if req.quantization.is_none() && req.vectors_on_disk.is_none() {
            return Err(bad(
                "the body names nothing to change: send \"quantization\" (\"none\" or \"int8\") or \"vectors_on_disk\" (true or false)",
            ));
        }
        let committed = self
            .ctx
            .apply(Command::UpdateCollection {
                name,
                quantization: req.quantization.map(stored_quantization),
                vectors_on_disk: req.vectors_on_disk,
            })
            .await?;
        match committed.outcome {
            // Answered once this node's shard has loaded again with the new spec, so that the
            // searches that follow use it.
            Outcome::CollectionUpdated(record) => {
                Ok(self.once_loaded(&record, committed.index).await)
            }
            other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn delete_collection(&self, name: String) -> Result<u64> {
        // Gone from the store, gone for every read: searches answer 404 at once.
        let committed = self
            .ctx
            .apply(Command::DropCollection {
                name,
                at_ms: now_ms(),
            })
            .await?;
        Ok(committed.index)
    }

    fn admit_documents(&self, body_bytes: Option<u64>) -> Result<Reservation> {
        let max = self.ctx.config.ingest.max_queue_bytes;
        let body_bytes = match body_bytes {
            Some(n) if n > max => {
                return Err(ApiError::PayloadTooLarge(format!(
                    "the request is {n} bytes, more than the whole ingest queue holds ({max} bytes, ingest.max_queue_bytes): send its documents in smaller requests"
                )))
            }
            Some(n) => n,
            // A chunked body may be as long as the body limit; the room is given back to its
            // real size once it is read.
            None => (self.ctx.config.server.max_body_bytes as u64).min(max),
        };
        self.ctx
            .actors
            .ingest
            .admit(body_bytes, 0)
            .map_err(ApiError::from)
    }

    async fn add_documents(
        &self,
        collection: String,
        req: AddDocumentsRequest,
        body: Reservation,
    ) -> Result<AddDocumentsResponse> {
        let limits = &self.ctx.config.ingest;
        if req.documents.is_empty() && req.unreadable.is_empty() {
            return Err(bad("`documents` is empty"));
        }
        if req.documents.len() > limits.max_documents_per_request {
            return Err(bad(format!(
                "{} documents in one request; the limit is {} (ingest.max_documents_per_request)",
                req.documents.len(),
                limits.max_documents_per_request
            )));
        }
        let mut documents = Vec::with_capacity(req.documents.len());
        for (i, d) in req.documents.into_iter().enumerate() {
            if d.text.trim().is_empty() {
                return Err(bad(format!("documents[{i}] (`{}`): text is empty", d.id)));
            }
            if d.text.len() > limits.max_document_bytes {
                return Err(bad(format!(
                    "documents[{i}] (`{}`): text is {} bytes; the limit is {} (ingest.max_document_bytes)",
                    d.id,
                    d.text.len(),
                    limits.max_document_bytes
                )));
            }
            let metadata = Value::Object(d.metadata.unwrap_or_default());
            // a section must begin inside the text, in order (they come from the upload's reader)
            // and their headings take at most SECTION_BYTES of the entry
            let mut budget = SECTION_BYTES;
            let mut sections: Vec<shoal_storage::Section> = d
                .sections
                .into_iter()
                .filter(|(start, _)| (*start as usize) < d.text.len())
                .take_while(|(_, heading)| {
                    budget = budget.saturating_sub(heading.len() + 8);
                    budget > 0
                })
                .map(|(start, heading)| shoal_storage::Section { start, heading })
                .collect();
            sections.sort_by_key(|s| s.start);
            documents.push(StoredInput {
                id: d.id,
                text: d.text,
                metadata_json: metadata.to_string(),
                sections,
            });
        }
        let coll = self.require_collection(&collection)?;
        self.require_model_dimension(&coll, "documents cannot be embedded into it")?;
        let job_id = uuid::Uuid::new_v4().to_string();
        let unreadable: Vec<shoal_storage::JobError> = req
            .unreadable
            .into_iter()
            .map(|u| shoal_storage::JobError {
                doc_id: u.id,
                reason: u.reason,
            })
            .collect();
        let n = documents.len() as u64;
        let text_bytes: u64 = documents.iter().map(|d| d.text.len() as u64).sum();
        // A chunked body was given room up to the queue's size; its text can be no more.
        if text_bytes > limits.max_queue_bytes {
            return Err(ApiError::PayloadTooLarge(format!(
                "the documents hold {text_bytes} bytes of text, more than the whole ingest queue holds ({} bytes, ingest.max_queue_bytes): send them in smaller requests",
                limits.max_queue_bytes
            )));
        }
        // Room for the documents too (the body's bytes are already reserved).
        let docs = self.ctx.actors.ingest.admit(0, n).map_err(ApiError::from)?;
        // The mirror queues the accepted documents for ingest, whether or not this request is
        // still waiting when the command is applied; the room reserved for them is held until
        // then, so that nothing is counted nowhere in between.
        let mut body = body;
        body.shrink_to(text_bytes);
        let hold: crate::context::Hold = Box::new((body, docs));
        // A request larger than one log entry is staged in parts under its job, then accepted
        // whole by one last command (a request dropped half-way accepts nothing; its staged parts
        // expire).
        let max = self.ctx.config.cluster.max_entry_bytes;
        let at_ms = now_ms();
        let mut parts: Vec<Vec<StoredInput>> = Vec::new();
        let mut size = 0;
        for d in documents {
            let bytes = d.payload_bytes();
            match parts.last_mut() {
                Some(last) if size + bytes <= max => {
                    size += bytes;
                    last.push(d);
                }
                _ => {
                    size = bytes;
                    parts.push(vec![d]);
                }
            }
        }
        // The unreadable files' reasons go in the last entry: room for them first.
        let failed_bytes: usize = unreadable
            .iter()
            .map(shoal_storage::JobError::payload_bytes)
            .sum();
        if failed_bytes > 0
            && parts.last().is_some_and(|last| {
                last.iter().map(StoredInput::payload_bytes).sum::<usize>() + failed_bytes > max
            })
        {
            parts.push(Vec::new());
        }
        let last = parts.pop().unwrap_or_default();
        let staged = parts.len() as u32;
        for (part, documents) in parts.into_iter().enumerate() {
            self.ctx
                .apply(Command::StageDocuments {
                    collection: collection.clone(),
                    job_id: job_id.clone(),
                    part: part as u32,
                    documents,
                    at_ms,
                })
                .await?;
        }
        let accept = if unreadable.is_empty() {
            Command::AcceptDocuments {
                collection,
                job_id: job_id.clone(),
                documents: last,
                staged_parts: staged,
                at_ms,
            }
        } else {
            Command::AcceptUpload {
                collection,
                job_id: job_id.clone(),
                documents: last,
                staged_parts: staged,
                failed: unreadable,
                at_ms,
            }
        };
        let committed = self.ctx.apply_holding(accept, hold).await?;
        Ok(AddDocumentsResponse {
            status_url: format!("/api/v1/jobs/{job_id}"),
            job_id,
            documents: n,
            index: committed.index,
        })
    }

    async fn list_jobs(&self, query: JobsQuery, viewer: Principal) -> Result<JobList> {
        let offset = query.offset.unwrap_or(0);
        let limit = query.limit.unwrap_or(100);
        let (page, next) = self
            .read(move |ctx| {
                // A caller who is not an admin sees the jobs of the collections it may see as
                // they are now: not those of an earlier collection of the same name.
                let current: std::collections::HashMap<String, u64> = ctx
                    .store
                    .collections()?
                    .into_iter()
                    .map(|c| (c.name, c.uid))
                    .collect();
                let admin = viewer.role == shoal_api::auth::Role::Admin;
                let mut jobs: Vec<(JobRecord, JobState)> = ctx
                    .store
                    .jobs()?
                    .into_iter()
                    .filter(|j| viewer.sees(&j.collection))
                    .filter(|j| admin || current.get(&j.collection) == Some(&j.collection_uid))
                    .filter(|j| query.collection.as_ref().is_none_or(|c| *c == j.collection))
                    .map(|j| {
                        // the state a job reads as (done once its shard has mirrored it), as
                        // GET /jobs/{id} says
                        let mirrored = ctx.watermark.current_for(j.collection_uid);
                        let state = job_api_state(&j, mirrored);
                        (j, state)
                    })
                    .filter(|(j, state)| match query.state.as_deref() {
                        None => true,
                        Some("failed") => j.failed > 0,
                        Some(s) => job_state_name(state) == s,
                    })
                    .collect();
                // newest first, then by id: a stable order to page through
                jobs.sort_by(|(a, _), (b, _)| {
                    b.created_at_ms
                        .cmp(&a.created_at_ms)
                        .then_with(|| a.id.cmp(&b.id))
                });
                let total = jobs.len();
                let page: Vec<JobInfo> = jobs
                    .into_iter()
                    .skip(offset)
                    .take(limit)
                    .map(|(j, _)| {
                        let mirrored = ctx.watermark.current_for(j.collection_uid);
                        job_info(j, mirrored)
                    })
                    .collect();
                let next = (offset + page.len() < total).then_some(offset + page.len());
                Ok((page, next))
            })
            .await?;
        Ok(JobList { jobs: page, next })
    }

    async fn list_documents(
        &self,
        collection: String,
        query: DocumentsQuery,
    ) -> Result<DocumentList> {
        let limit = query.limit.unwrap_or(100);
        let want = query.state.clone();
        let gone = Arc::new(AtomicBool::new(false));
        let _cancel = CancelOnDrop(gone.clone());
        let (documents, next) = self
            .read(move |ctx| {
                // Pages of records are read and turned into summaries (no text kept) until the
                // page is full or the collection ends; a filter reads at most 20 pages' worth
                // of records per request (the page then goes out shorter, with its `next`).
                let mut out: Vec<DocumentSummary> = Vec::new();
                let mut after = query.after.clone();
                let mut scanned = 0usize;
                loop {
                    if gone.load(Ordering::Acquire) {
                        return Err(NodeError::Internal("the request is gone".into()));
                    }
                    // one more than needed: whether anything follows the page
                    let batch =
                        ctx.store
                            .documents_page(&collection, after.as_deref(), limit + 1)?;
                    let more = batch.len() > limit;
                    for d in batch.into_iter().take(limit) {
                        scanned += 1;
                        after = Some(d.id.clone());
                        let (state, error) = document_state(&d.status);
                        if want.as_ref().is_some_and(|w| *w != state) {
                            continue;
                        }
                        out.push(DocumentSummary {
                            state,
                            error,
                            version: d.version,
                            job_id: d.job_id,
                            metadata: parse_metadata(&d.metadata_json),
                            chunks: d.live.map(|l| l.points.len() as u64).unwrap_or(0),
                            bytes: d.text.len() as u64,
                            accepted_at: d.accepted_at_ms,
                            id: d.id,
                        });
                        if out.len() == limit {
                            break;
                        }
                    }
                    let page_full = out.len() == limit;
                    // the last id read is where the next page starts, if anything follows it
                    let follows = more
                        || (page_full
                            && ctx
                                .store
                                .documents_page(&collection, after.as_deref(), 1)?
                                .len()
                                == 1);
                    if page_full || !more || scanned >= 20 * limit {
                        return Ok((out, if follows { after } else { None }));
                    }
                }
            })
            .await?;
        Ok(DocumentList { documents, next })
    }

    async fn extract_uploads(
        &self,
        files: Vec<UploadedFile>,
        deadline: Instant,
    ) -> Result<ExtractedUpload> {
        // what accepting the documents takes comes out of the request's time too
        let deadline = deadline
            .checked_sub(Duration::from_millis(500))
            .unwrap_or(deadline);
        crate::uploads::extract(
            files,
            &self.ctx.config,
            self.ctx.extract_slots.clone(),
            deadline,
        )
        .await
        .map_err(bad)
    }

    async fn get_document(&self, collection: String, id: String) -> Result<DocumentInfo> {
        let (d, chunks) = self
            .read(move |ctx| {
                let d = ctx.store.document(&collection, &id)?;
                let uid = ctx.store.collection(&collection)?.map(|c| c.uid);
                let mut chunks = Vec::new();
                for p in d.live.iter().flat_map(|l| &l.points) {
                    let Some(uid) = uid else { break };
                    if let Some(c) = ctx.store.chunk(uid, *p)? {
                        chunks.push(ChunkInfo {
                            chunk_index: c.chunk_index,
                            start: c.start,
                            end: c.end,
                            page: c.pages.map(|p| p.0),
                            last_page: c.pages.map(|p| p.1),
                            section: c.section,
                            text: c.text,
                        });
                    }
                }
                chunks.sort_by_key(|c| c.chunk_index);
                Ok((d, chunks))
            })
            .await?;
        let (state, error) = document_state(&d.status);
        Ok(DocumentInfo {
            id: d.id,
            state,
            error,
            version: d.version,
            job_id: d.job_id,
            metadata: parse_metadata(&d.metadata_json),
            chunks: d.live.map(|l| l.points.len() as u64).unwrap_or(0),
            text: d.text,
            claimed_by: d.claim.map(|c| c.node),
            claimed_until: d.claim.map(|c| c.until_ms),
            chunk_list: chunks,
            sections: d
                .sections
                .into_iter()
                .map(|s| SectionInfo {
                    start: s.start,
                    heading: s.heading,
                })
                .collect(),
        })
    }

    async fn retry_document(&self, collection: String, id: String) -> Result<AddDocumentsResponse> {
        let coll = self.require_collection(&collection)?;
        self.require_model_dimension(&coll, "documents cannot be embedded into it")?;
        let (c, i) = (collection.clone(), id.clone());
        let (version, status, bytes) = self
            .read(move |ctx| {
                let d = ctx.store.document(&c, &i)?;
                Ok((d.version, d.status, d.text.len() as u64))
            })
            .await?;
        if !matches!(status, DocumentStatus::Failed { .. }) {
            let state = document_state(&status).0;
            return Err(ApiError::Conflict(format!(
                "document `{id}` has not failed (it is {}): only a failed document is retried",
                serde_json::to_value(state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            )));
        }
        // room in the ingest queue, held until the accepted document is queued
        let body = self.admit_documents(Some(bytes))?;
        let docs = self.ctx.actors.ingest.admit(0, 1).map_err(ApiError::from)?;
        let hold: crate::context::Hold = Box::new((body, docs));
        let job_id = uuid::Uuid::new_v4().to_string();
        // the command checks again, in log order, that this failed version is still the
        // document's: a replacement or another retry in between makes it a 409
        let committed = self
            .ctx
            .apply_holding(
                Command::RetryDocument {
                    collection,
                    doc_id: id,
                    version,
                    job_id: job_id.clone(),
                    at_ms: now_ms(),
                },
                hold,
            )
            .await?;
        Ok(AddDocumentsResponse {
            status_url: format!("/api/v1/jobs/{job_id}"),
            job_id,
            documents: 1,
            index: committed.index,
        })
    }

    async fn delete_document(&self, collection: String, id: String) -> Result<u64> {
        let uid = self.require_collection(&collection)?.uid;
        let committed = self
            .ctx
            .apply(Command::DeleteDocument {
                collection,
                doc_id: id,
                at_ms: now_ms(),
            })
            .await?;
        self.ctx
            .wait_searchable(uid, committed.index, VISIBLE_WAIT)
            .await;
        Ok(committed.index)
    }

    async fn get_job(&self, id: String) -> Result<JobInfo> {
        // Never waits: a job reads as done once its collection's shard has mirrored its last
        // change (the watermark is read after the job, so it can only be further on).
        let job = self
            .read(move |ctx| Ok(ctx.store.job(&id)?.ok_or(id)))
            .await?;
        match job {
            Ok(j) => {
                let mirrored = self.ctx.watermark.current_for(j.collection_uid);
                Ok(job_info(j, mirrored))
            }
            Err(id) => Err(self.not_here_yet(ApiError::NotFound(format!("job `{id}` not found")))),
        }
    }

    async fn search(&self, collection: String, req: SearchRequest) -> Result<SearchResponse> {
        // (a burst of searches is followed by a memory trim once they are quiet)
        self.ctx.runtime.memory.searched();
        // A text search that reads at once counts as on its way to the query embedder from here: a
        // pass that starts meanwhile waits for it (briefly) instead of running half empty. One
        // that first waits for an index is counted once it has.
        let reads_at_once = matches!(req.consistency.unwrap_or_default(), Consistency::Local)
            && req.min_index.is_none();
        let retrieval_mode = req.mode.unwrap_or_default();
        let embeds =
            req.query.is_some() && req.vector.is_none() && retrieval_mode != RetrievalMode::Keyword;
        let arrival = (embeds && reads_at_once).then(|| self.ctx.runtime.arrivals.arrive());
        let start = Instant::now();
        let cfg = &self.ctx.config.search;
        let top_k = req.top_k.unwrap_or(cfg.default_top_k);
        if top_k == 0 || top_k > cfg.max_top_k {
            return Err(bad(format!(
                "top_k must be between 1 and {} (search.max_top_k), got {top_k}",
                cfg.max_top_k
            )));
        }
        if let Some(ef) = req.ef {
            if ef == 0 || ef > cfg.max_ef {
                return Err(bad(format!(
                    "ef must be between 1 and {} (search.max_ef)",
                    cfg.max_ef
                )));
            }
        }
        let fusion = match (retrieval_mode, req.fusion, req.alpha) {
            (RetrievalMode::Hybrid, None | Some(FusionKind::Rrf), None) => Fusion::Rrf {
                k: cfg.rrf_k as f32,
            },
            (RetrievalMode::Hybrid, Some(FusionKind::Rrf), Some(_)) => {
                return Err(bad(
                    "`alpha` weighs the sides of `weighted` fusion; `rrf` takes none",
                ))
            }
            (RetrievalMode::Hybrid, None | Some(FusionKind::Weighted), alpha) => {
                let alpha = alpha.unwrap_or(0.5);
                if !(0.0..=1.0).contains(&alpha) {
                    return Err(bad(format!("`alpha` must be between 0 and 1, got {alpha}")));
                }
                Fusion::Weighted { alpha }
            }
            (_, Some(_), _) | (_, _, Some(_)) => {
                return Err(bad("`fusion` and `alpha` apply to `mode: hybrid`"))
            }
            _ => Fusion::Rrf {
                k: cfg.rrf_k as f32,
            },
        };
        if retrieval_mode != RetrievalMode::Vector {
            let mode = if retrieval_mode == RetrievalMode::Keyword {
                "keyword"
            } else {
                "hybrid"
            };
            if req.query.is_none() {
                return Err(bad(format!("`mode: {mode}` needs a text `query`")));
            }
            if req.exact && retrieval_mode == RetrievalMode::Keyword {
                return Err(bad("`exact` applies to vector search, not `mode: keyword`"));
            }
            if req.ef.is_some() && retrieval_mode == RetrievalMode::Keyword {
                return Err(bad("`ef` applies to vector search, not `mode: keyword`"));
            }
        }
        // With reranking, the search fetches the candidates the reranker rescores.
        let fetch = if req.rerank {
            let rc = &self.ctx.config.reranker;
            let candidates = req.rerank_candidates.unwrap_or(rc.default_candidates);
            if candidates == 0 || candidates > rc.max_candidates {
                return Err(bad(format!(
                    "rerank_candidates must be between 1 and {} (reranker.max_candidates)",
                    rc.max_candidates
                )));
            }
            if req.query.is_none() {
                return Err(bad("`rerank` needs a text `query`"));
            }
            if self.ctx.runtime.reranker.is_none()
                && self
                    .ctx
                    .cluster
                    .members_offering("reranker")
                    .await
                    .is_empty()
            {
                return Err(bad(NO_RERANKER));
            }
            candidates.max(top_k)
        } else {
            if req.rerank_candidates.is_some() {
                return Err(bad("`rerank_candidates` needs `rerank: true`"));
            }
            top_k
        };
        let filter_limits = FilterLimits {
            max_conditions: cfg.max_filter_conditions,
            max_values: cfg.max_filter_values,
            ..FilterLimits::default()
        };
        let filter = match &req.filter {
            Some(f) => Some(Filter::from_json_limited(f, &filter_limits).map_err(NodeError::from)?),
            None => None,
        };
        // Read at an index: `strong` asks the leader for its commit index (a linearizable read),
        // `min_index` names one (read your writes); this node applies and indexes up to it first.
        let read_at = match req.consistency.unwrap_or_default() {
            Consistency::Strong => Some(
                self.ctx
                    .cluster
                    .read_index()
                    .await
                    .map_err(NodeError::from)?
                    .max(req.min_index.unwrap_or(0)),
            ),
            Consistency::Local => req.min_index,
        };
        // One deadline for both waits: the store's apply, then the collection's index.
        let read_deadline =
            Instant::now() + Duration::from_millis(self.ctx.config.cluster.read_wait_ms);
        if let Some(index) = read_at {
            let limit = read_deadline.saturating_duration_since(Instant::now());
            self.ctx
                .cluster
                .wait_applied(index, limit)
                .await
                .map_err(|e| ApiError::NotReady(format!("cannot read at index {index}: {e}")))?;
        }
        let coll = self.require_collection(&collection)?;
        if let Some(index) = read_at {
            let what = format!("cannot read at index {index}");
            self.wait_for_index(coll.uid, index, read_deadline, &what)
                .await?;
        }
        // From here to the answer ingest steps aside (see QueryGate::search), except while the
        // search waits for this node's index to catch up, which ingest's threads may be doing.
        let gate = self.ctx.runtime.query_gate.clone();
        let mut in_flight = Some(gate.search());
        let query_text = req.query.clone();
        let mut embed_time = Duration::ZERO;
        let hybrid_with_vector =
            retrieval_mode == RetrievalMode::Hybrid && req.query.is_some() && req.vector.is_some();
        let vector: Option<Arc<Vec<f32>>> = match (req.query, req.vector) {
            // hybrid: the caller's vector for the vector side, the text for the words
            (Some(_), Some(v)) if hybrid_with_vector => Some(request_vector(&coll, v)?),
            (Some(_), Some(_)) => {
                return Err(bad(
                    "give either `query` or `vector`, not both (both only with `mode: hybrid`)",
                ))
            }
            (None, None) => return Err(bad("give `query` (text) or `vector`")),
            (Some(q), None) => {
                if q.trim().is_empty() {
                    return Err(bad("`query` is empty"));
                }
                if q.len() > cfg.max_query_bytes {
                    return Err(bad(format!(
                        "`query` is {} bytes; the limit is {} (search.max_query_bytes)",
                        q.len(),
                        cfg.max_query_bytes
                    )));
                }
                if embeds {
                    self.require_model_dimension(&coll, "search it with `vector`")?;
                    let t = Instant::now();
                    let arrival = arrival.unwrap_or_else(|| self.ctx.runtime.arrivals.arrive());
                    let v = self.embed_query(q, arrival).await?;
                    embed_time = t.elapsed();
                    Some(v)
                } else {
                    None
                }
            }
            (None, Some(v)) => Some(request_vector(&coll, v)?),
        };
        let retrieval = match (retrieval_mode, vector, query_text.clone()) {
            (RetrievalMode::Keyword, _, Some(text)) => Retrieval::Keyword(text),
            (RetrievalMode::Hybrid, Some(vector), Some(text)) => Retrieval::Hybrid {
                vector,
                text,
                fusion,
                candidates: cfg.hybrid_candidates,
            },
            (RetrievalMode::Vector, Some(vector), _) => Retrieval::Vector(vector),
            _ => {
                return Err(ApiError::Internal(
                    "a search without what it ranks by".into(),
                ))
            }
        };
        // What the shard holds at least, read before the shard is taken: a reload in between can
        // only give a shard that holds more.
        let mut applied_index = self.ctx.watermark.current_for(coll.uid);
        // A collection created a moment ago (or reloading after a restart) is searchable as soon
        // as its shard is loaded: wait for that rather than answer 503 at once.
        let slot = self
            .ctx
            .actors
            .shards
            .get_loaded(&collection, SHARD_LOAD_WAIT)
            .await
            .ok_or_else(|| {
                self.not_here_yet(ApiError::NotFound(format!(
                    "collection `{collection}` not found"
                )))
            })?;
        let shard = slot.shard.ok_or_else(|| {
            ApiError::NotReady(format!("collection `{collection}` is still loading; retry"))
        })?;
        let mode = if req.exact {
            SearchMode::Exact
        } else {
            SearchMode::Auto
        };
        let ef = req.ef;
        let max_scan = Some(cfg.max_exact_points);
        let uid = coll.uid;
        let mut stale_reason = if read_at.is_some() && req.consistency == Some(Consistency::Strong)
        {
            None
        } else {
            self.ctx.cluster.stale()
        };
        let index_start = Instant::now();
        let mut step = IndexStep {
            ctx: self.ctx.clone(),
            shard,
            uid,
            retrieval,
            filter,
            fetch,
            mode,
            ef,
            max_scan,
        };
        let mut stuck = 0;
        let mut hits = loop {
            in_flight.get_or_insert_with(|| gate.search());
            let shard_at = self.ctx.watermark.current_for(uid);
            let store_at = self.ctx.store.applied_index().map_err(NodeError::from)?;
            let (hits, missing) = self.search_shard(step.clone()).await?;
            if missing == 0 {
                break hits;
            }
            // Some hits' chunks are gone from the store: it is ahead of this shard (a newer
            // version of their document, or its delete, is committed and not mirrored yet).
            // The shard takes a command's new points before it drops the old ones, but a new
            // version may still be on its way. Rather than answer with the document missing,
            // wait for the shard to reach the store's index and search again, until the read
            // deadline; past it, the answer says it may lack documents that were being changed.
            let target = self
                .ctx
                .store
                .applied_index()
                .map_err(NodeError::from)?
                .max(self.ctx.watermark.applied_index());
            let limit = read_deadline.saturating_duration_since(Instant::now());
            in_flight = None;
            // A shard that was already at the store's index when it was searched and still lacked
            // a hit's chunk is not behind (unless a write landed during the search): waiting
            // cannot help, so only a few such rounds are made (the deadline bounds the others).
            if shard_at >= store_at {
                stuck += 1;
            }
            let caught_up = stuck <= MAX_STUCK_ROUNDS
                && !limit.is_zero()
                && self
                    .ctx
                    .watermark
                    .wait_for_collection(uid, target, limit)
                    .await;
            // An answer with hits left out: marked stale, or refused for a strong read.
            let mut left_out = |why: String| {
                if req.consistency == Some(Consistency::Strong) {
                    return Err(ApiError::NotReady(format!("{why}; retry")));
                }
                tracing::warn!(collection = %collection, missing, stuck, "{why}");
                stale_reason.get_or_insert(why);
                Ok(())
            };
            if !caught_up {
                left_out(format!(
                    "the index of `{collection}` is behind its store: {missing} hit(s) of \
                     documents being changed were left out"
                ))?;
                break hits;
            }
            let caught_up_to = self.ctx.watermark.current_for(uid);
            let dropped = || {
                ApiError::NotFound(format!(
                    "collection `{collection}` was dropped during the search"
                ))
            };
            // the same collection (not one made again under its name), within the deadline
            if self.ctx.actors.shards.get(&collection).map(|s| s.uid) != Some(uid) {
                return Err(dropped());
            }
            let wait = read_deadline
                .saturating_duration_since(Instant::now())
                .min(SHARD_LOAD_WAIT);
            let slot = self
                .ctx
                .actors
                .shards
                .get_loaded(&collection, wait)
                .await
                .filter(|s| s.uid == uid)
                .ok_or_else(dropped)?;
            match slot.shard {
                Some(s) => {
                    // (the index of the answer only once its hits come from this shard)
                    applied_index = caught_up_to;
                    step.shard = s;
                }
                None => {
                    left_out(format!(
                        "collection `{collection}` is reloading: {missing} hit(s) of documents \
                         being changed were left out"
                    ))?;
                    break hits;
                }
            }
        };
        let index_time = index_start.elapsed();
        // (given up while the search waited for the index, if it did)
        in_flight.get_or_insert_with(|| gate.search());
        let mut rerank_time = None;
        if req.rerank && !hits.is_empty() {
            let rerank_start = Instant::now();
            let query = query_text.unwrap_or_default();
            let passages = hits.iter().map(|h| h.text.clone()).collect();
            let scores = self.rerank_scores(query, passages).await?;
            for (h, s) in hits.iter_mut().zip(scores) {
                h.rerank_score = Some(s);
            }
            hits.sort_by(|a, b| {
                b.rerank_score
                    .unwrap_or(f32::NEG_INFINITY)
                    .total_cmp(&a.rerank_score.unwrap_or(f32::NEG_INFINITY))
            });
            rerank_time = Some(rerank_start.elapsed());
        }
        hits.truncate(top_k);
        let took = start.elapsed();
        let mode = if req.rerank { "rerank" } else { "baseline" };
        tracing::debug!(
            collection = %collection,
            embed_ms = embed_time.as_secs_f64() * 1e3,
            index_ms = index_time.as_secs_f64() * 1e3,
            total_ms = took.as_secs_f64() * 1e3,
            "search timings"
        );
        self.ctx
            .runtime
            .metrics
            .search_seconds
            .with_label_values(&[collection.as_str(), mode])
            .observe(took.as_secs_f64());
        if hits.is_empty() {
            self.ctx
                .runtime
                .metrics
                .search_empty
                .with_label_values(&[collection.as_str(), mode])
                .inc();
        }
        Ok(SearchResponse {
            hits,
            took_ms: took.as_secs_f64() * 1000.0,
            timings: SearchTimings {
                embed_ms: embed_time.as_secs_f64() * 1000.0,
                index_ms: index_time.as_secs_f64() * 1000.0,
                rerank_ms: rerank_time.map(|t| t.as_secs_f64() * 1000.0),
            },
            applied_index,
            stale: stale_reason.is_some(),
            stale_reason,
        })
    }

    async fn embeddings(&self, req: EmbeddingsRequest) -> Result<EmbeddingsResponse> {
        let texts: Vec<String> = match req.input {
            Value::String(s) => vec![s],
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s),
                    Value::Array(_) => Err(bad(format!(
                        "`input[{i}]`: token arrays are not supported; send text"
                    ))),
                    other => Err(bad(format!("`input[{i}]` must be a string, got {other}"))),
                })
                .collect::<Result<_>>()?,
            other => {
                return Err(bad(format!(
                    "`input` must be a string or a list of strings, got {other}"
                )))
            }
        };
        let limit = self.ctx.config.model.max_inputs_per_request;
        if texts.is_empty() {
            return Err(bad("`input` is empty"));
        }
        if texts.len() > limit {
            return Err(bad(format!(
                "{} inputs in one request; the limit is {limit} (model.max_inputs_per_request)",
                texts.len()
            )));
        }
        if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
            return Err(bad(format!("`input[{i}]` is empty")));
        }
        if let Some(i) = texts
            .iter()
            .position(|t| t.len() > self.ctx.config.ingest.max_document_bytes)
        {
            return Err(bad(format!(
                "`input[{i}]` is longer than ingest.max_document_bytes"
            )));
        }
        let base64 = match req.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(bad(format!(
                    "encoding_format `{other}` is not supported (float, base64)"
                )))
            }
        };
        let kind = match (req.input_type.as_deref(), req.prompt_name) {
            (Some(_), Some(_)) => return Err(bad("give `input_type` or `prompt_name`, not both")),
            (None, None) => TextKind::Plain,
            (Some("query" | "search_query"), None) => TextKind::Query,
            (Some("document" | "passage" | "search_document"), None) => TextKind::Document,
            (Some(other), None) => {
                return Err(bad(format!(
                    "input_type `{other}` is not known (query, document)"
                )))
            }
            (None, Some(name)) => {
                let head = self.ctx.runtime.embedder.head();
                if !head.has_prompt(&name) {
                    let names: Vec<&str> =
                        head.prompts.by_name.keys().map(String::as_str).collect();
                    return Err(bad(format!(
                        "the model has no prompt named `{name}` (it has: {})",
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    )));
                }
                TextKind::Named(name)
            }
        };
        let dim = self.ctx.runtime.embedder.dimension();
        if let Some(d) = req.dimensions {
            if d != dim {
                return Err(bad(format!(
                    "this model makes {dim}-dimensional vectors; `dimensions` {d} is not available"
                )));
            }
        }
        let tokens: u64 = {
            let chunker = self.ctx.runtime.chunker.clone();
            let t = texts.clone();
            let max = self.ctx.runtime.embedder.max_tokens();
            tokio::task::spawn_blocking(move || {
                t.iter()
                    .map(|x| {
                        chunker
                            .count_tokens(x)
                            .map(|n| (n + 2).min(max) as u64)
                            .unwrap_or(0)
                    })
                    .sum()
            })
            .await
            .map_err(NodeError::from)?
        };
        let vectors = self.embed_texts(texts, kind).await?;
        let data = vectors
            .into_iter()
            .enumerate()
            .map(|(index, v)| EmbeddingData {
                object: "embedding".into(),
                index,
                embedding: if base64 {
                    use base64::Engine as _;
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    Value::from(v)
                },
            })
            .collect();
        Ok(EmbeddingsResponse {
            object: "list".into(),
            data,
            model: req
                .model
                .unwrap_or_else(|| self.ctx.runtime.embedder.model_name().to_string()),
            usage: EmbeddingsUsage {
                prompt_tokens: tokens,
                total_tokens: tokens,
            },
        })
    }

    async fn rerank(
        &self,
        query: String,
        documents: Vec<String>,
    ) -> Result<(String, Vec<RerankScore>)> {
        if query.trim().is_empty() {
            return Err(bad("`query` is empty"));
        }
        let max_query = self.ctx.config.reranker.max_query_bytes;
        if query.len() > max_query {
            return Err(bad(format!(
                "`query` is {} bytes; the limit is {max_query} (reranker.max_query_bytes)",
                query.len()
            )));
        }
        let max_doc = self.ctx.config.reranker.max_document_bytes;
        if let Some(i) = documents.iter().position(|d| d.len() > max_doc) {
            return Err(bad(format!(
                "documents[{i}] is {} bytes; the limit is {max_doc} (reranker.max_document_bytes)",
                documents[i].len()
            )));
        }
        if documents.is_empty() {
            return Err(bad("no documents to rerank"));
        }
        let limit = self.ctx.config.reranker.max_candidates;
        if documents.len() > limit {
            return Err(bad(format!(
                "{} documents in one request; the limit is {limit} (reranker.max_candidates)",
                documents.len()
            )));
        }
        let (model, logits) = match &self.ctx.runtime.reranker {
            Some(r) => (
                r.model_name().to_string(),
                self.rerank_scores(query, documents).await?,
            ),
            None => self.remote_rerank(query, documents).await?,
        };
        let mut scores: Vec<RerankScore> = logits
            .into_iter()
            .enumerate()
            .map(|(index, logit)| RerankScore {
                index,
                logit,
                relevance: sigmoid(logit),
            })
            .collect();
        scores.sort_by(|a, b| b.logit.total_cmp(&a.logit));
        Ok((model, scores))
    }

    async fn list_actors(&self) -> Result<ActorList> {
        let sup = self.ctx.actors.supervisor()?;
        let children = ask(
            sup,
            "supervisor",
            ADMIN_TIMEOUT,
            SupervisorMsg::ListChildren,
        )
        .await?;
        Ok(ActorList {
            actors: children
                .into_iter()
                .map(|c| ActorInfo {
                    name: c.name,
                    kind: c.kind.to_string(),
                    restarts: c.restarts,
                    uptime_s: c.uptime_s,
                })
                .collect(),
        })
    }

    async fn inject_panic(&self, actor: String) -> Result<()> {
        self.require_fault_injection()?;
        let sup = self.ctx.actors.supervisor()?;
        ask(sup, "supervisor", ADMIN_TIMEOUT, |reply| {
            SupervisorMsg::Panic(actor, reply)
        })
        .await?
        .map_err(ApiError::NotFound)
    }

    async fn authenticate(&self, creds: Credentials) -> Result<Principal> {
        self.ctx
            .access
            .authenticate(&self.ctx.store, &creds, now_ms())
    }

    fn record_search(&self, r: SearchRecord) {
        self.ctx.recorder.record(shoal_storage::SearchEvent {
            at_ms: now_ms(),
            user: r.user,
            collection: r.collection,
            rerank: r.rerank,
            latency_us: r.latency.as_micros().min(u64::MAX as u128) as u64,
            hits: r.hits,
            status: r.status,
            empty_query: r.empty_query,
        });
    }

    async fn search_analytics(&self, q: AnalyticsQuery) -> Result<Value> {
        let now = now_ms();
        let since = match &q.since {
            None => now.saturating_sub(3_600_000),
            Some(raw) => analytics::parse_time(raw, now).ok_or_else(|| {
                bad(format!(
                    "`since` must be ms since the epoch or a duration back from now (`15m`, `24h`, `7d`), got `{raw}`"
                ))
            })?,
        };
        let until = match &q.until {
            None => now,
            Some(raw) => analytics::parse_time(raw, now)
                .ok_or_else(|| bad(format!("`until` must be like `since`, got `{raw}`")))?,
        };
        if since >= until {
            return Err(bad("`since` must be before `until`"));
        }
        let step = match &q.step {
            None => None,
            Some(raw) => {
                let step = analytics::parse_duration_ms(raw)
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| {
                        bad(format!(
                        "`step` must be a length of time (`500ms`, `10s`, `5m`, `1h`), got `{raw}`"
                    ))
                    })?;
                if (until - since).div_ceil(step) > analytics::MAX_INTERVALS {
                    return Err(bad(format!(
                        "`step` {raw} cuts the range in more than {} intervals: ask for a longer step or a shorter range",
                        analytics::MAX_INTERVALS
                    )));
                }
                Some(step)
            }
        };
        let local = q.local.unwrap_or(false);
        let collection = q.collection.clone();
        let node = self.ctx.cluster.id;
        // Counted one event at a time, and stopped when the request is gone.
        let gone = Arc::new(AtomicBool::new(false));
        let _cancel = CancelOnDrop(gone.clone());
        let own = self
            .read(move |ctx| {
                let mut s = analytics::Summarizer::new(node, since, until, collection, true);
                if let Some(step) = step {
                    s = s.with_step(step);
                }
                let read = ctx
                    .events
                    .visit(since, until, analytics::MAX_SCANNED, |e| {
                        s.add(&e);
                        !gone.load(Ordering::Acquire)
                    })?;
                Ok(s.finish(read >= analytics::MAX_SCANNED))
            })
            .await?;
        let to_json = |s: &analytics::Summary| {
            serde_json::to_value(s).map_err(|e| ApiError::Internal(e.to_string()))
        };
        if local {
            return to_json(&own);
        }
        // every other member's own summary, asked with the cluster secret, at once
        let others = self.ctx.cluster.other_members();
        let asks = others.iter().map(|(id, addr)| {
            let mut req = self
                .ctx
                .runtime
                .http
                .get(format!("{addr}/api/v1/analytics/searches"))
                .query(&[
                    ("since", since.to_string()),
                    ("until", until.to_string()),
                    ("local", "true".to_string()),
                ])
                .timeout(Duration::from_secs(5));
            if let Some(c) = &q.collection {
                req = req.query(&[("collection", c)]);
            }
            if let Some(step) = step {
                req = req.query(&[("step", step.to_string())]);
            }
            let req = self.as_member(req);
            let id = *id;
            async move {
                let answer = match req.send().await {
                    Ok(r) if r.status().is_success() => r.json::<analytics::Summary>().await.ok(),
                    _ => None,
                };
                (id, answer)
            }
        });
        let mut parts = vec![own];
        let mut missing = Vec::new();
        for (id, answer) in futures_util::future::join_all(asks).await {
            match answer {
                Some(s) => parts.push(s),
                None => missing.push(id),
            }
        }
        to_json(&analytics::merge(parts, since, until, step, missing))
    }

    async fn authorize_metrics(&self, creds: Credentials) -> Result<()> {
        if !self.ctx.config.auth.protect_metrics || !self.ctx.access.enabled() {
            return Ok(());
        }
        self.authenticate(creds)
            .await?
            .require_admin("reading the metrics (auth.protect_metrics)")
    }

    async fn issue_token(
        &self,
        req: TokenRequest,
        client: Option<std::net::IpAddr>,
    ) -> Result<TokenResponse> {
        if !self.ctx.access.enabled() {
            return Err(bad(
                "authentication is off on this node (--insecure-no-auth): no token is needed",
            ));
        }
        let access = &self.ctx.access;
        // A name that cannot exist is refused before it is counted or kept anywhere.
        shoal_api::auth::validate_user_name(&req.username)?;
        let permit = access.begin_sign_in(&req.username, client, now_ms())?;
        let user = self
            .read({
                let name = req.username.clone();
                move |ctx| Ok(ctx.store.user(&name)?)
            })
            .await?;
        // An unknown user's password is checked against a decoy hash, so that it costs as much
        // as a known one's (the answer's timing does not tell which names exist).
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        let password = req.password;
        let verified = tokio::task::spawn_blocking(move || {
            // the place among the checks running at once is held by the check itself
            let _permit = permit;
            let hash = stored.unwrap_or_else(|| access::decoy_hash().to_owned());
            // a password too long for any user is checked like a wrong one
            let candidate = if password.len() <= access::MAX_PASSWORD_BYTES {
                password.as_str()
            } else {
                ""
            };
            access::verify_password(candidate, &hash) && !candidate.is_empty()
        })
        .await
        .map_err(NodeError::from)?;
        let Some(user) = user.filter(|_| verified) else {
            // the attempt already counts as a failure (begin_sign_in)
            return Err(ApiError::Unauthorized("wrong user name or password".into()));
        };
        access.signed_in(&user.name, client);
        let token = access.issue(&self.ctx.store, &user, now_ms() / 1000)?;
        Ok(TokenResponse {
            access_token: token,
            token_type: "Bearer".into(),
            expires_in: access.token_ttl_s(),
            role: access::api_role(user.role),
        })
    }

    async fn list_users(&self) -> Result<UserList> {
        let users = self.read(|ctx| Ok(ctx.store.users()?)).await?;
        Ok(UserList {
            users: users.into_iter().map(user_info).collect(),
        })
    }

    async fn create_user(&self, req: CreateUserRequest) -> Result<UserInfo> {
        access::check_new_password(&req.password)?;
        let password = req.password;
        let hash = tokio::task::spawn_blocking(move || access::hash_password(&password))
            .await
            .map_err(NodeError::from)??;
        let now = now_ms();
        let user = UserRecord {
            name: req.username,
            password_hash: hash,
            role: access::store_role(req.role),
            collections: req.collections,
            epoch: uuid::Uuid::new_v4().to_string(),
            created_at_ms: now,
            updated_at_ms: now,
        };
        self.commit_user(Command::CreateUser { user }).await
    }

    async fn update_user(&self, name: String, req: UpdateUserRequest) -> Result<UserInfo> {
        let mut change = UserChange {
            role: req.role.map(access::store_role),
            collections: req.collections,
            ..UserChange::default()
        };
        if let Some(current) = req.current_password {
            // The change goes through only if the password checked here is still the user's
            // when it is applied (the epoch it was checked under).
            let user = self
                .read({
                    let name = name.clone();
                    move |ctx| Ok(ctx.store.user(&name)?)
                })
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("user `{name}` not found")))?;
            let hash = user.password_hash.clone();
            let permit = self.ctx.access.begin_recheck(&name, now_ms())?;
            let verified = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                current.len() <= access::MAX_PASSWORD_BYTES
                    && access::verify_password(&current, &hash)
            })
            .await
            .map_err(NodeError::from)?;
            if !verified {
                return Err(ApiError::Forbidden(
                    "`current_password` is not the user's password".into(),
                ));
            }
            self.ctx.access.rechecked(&name);
            change.expected_epoch = Some(user.epoch);
        }
        if let Some(password) = req.password {
            access::check_new_password(&password)?;
            let hash = tokio::task::spawn_blocking(move || access::hash_password(&password))
                .await
                .map_err(NodeError::from)??;
            // Every token issued under the old password stops working.
            change.password = Some((hash, uuid::Uuid::new_v4().to_string()));
        }
        self.commit_user(Command::UpdateUser {
            name,
            change,
            at_ms: now_ms(),
        })
        .await
    }

    async fn delete_user(&self, name: String) -> Result<u64> {
        let committed = self
            .ctx
            .apply(Command::DeleteUser {
                name,
                at_ms: now_ms(),
            })
            .await?;
        Ok(committed.index)
    }

    async fn list_api_keys(&self) -> Result<ApiKeyList> {
        let keys = self.read(|ctx| Ok(ctx.store.api_keys()?)).await?;
        Ok(ApiKeyList {
            keys: keys.into_iter().map(key_info).collect(),
        })
    }

    async fn create_api_key(
        &self,
        by: Principal,
        req: CreateApiKeyRequest,
    ) -> Result<CreatedApiKey> {
        let (key, id, digest) = access::new_api_key();
        let now = now_ms();
        let record = ApiKeyRecord {
            id,
            name: req.name,
            secret_sha256: digest,
            role: access::store_role(req.role),
            collections: req.collections,
            created_by: by.name,
            created_at_ms: now,
            expires_at_ms: req
                .expires_in_s
                .map(|s| now.saturating_add(s.saturating_mul(1000))),
        };
        let committed = self.ctx.apply(Command::PutApiKey { key: record }).await?;
        match committed.outcome {
            Outcome::ApiKeyPut(k) => Ok(CreatedApiKey {
                key,
                info: key_info(k),
            }),
            other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn revoke_api_key(&self, id: String) -> Result<u64> {
        let committed = self.ctx.apply(Command::RevokeApiKey { id }).await?;
        Ok(committed.index)
    }

    async fn cluster_status(&self) -> Result<Value> {
        let status = self.ctx.cluster.status().await;
        let mut v = serde_json::to_value(status).map_err(|e| ApiError::Internal(e.to_string()))?;
        // which member answered (the console marks "this node")
        if let Some(o) = v.as_object_mut() {
            o.insert("this_node".into(), self.ctx.node_id().into());
        }
        Ok(v)
    }

    async fn cluster_init(&self) -> Result<Value> {
        let id = self
            .ctx
            .cluster
            .initialize()
            .await
            .map_err(NodeError::from)?;
        Ok(serde_json::json!({ "cluster_id": id, "node_id": self.ctx.node_id() }))
    }

    async fn cluster_join(&self, req: JoinClusterRequest) -> Result<Value> {
        let cluster = self.ctx.cluster.clone();
        if cluster.is_initialized().await && !cluster.is_rejoining() {
            return Err(ApiError::Conflict(format!(
                "node {} already belongs to cluster {}; remove it there and wipe its data folder to move it",
                cluster.id,
                cluster.cluster_id().unwrap_or_default()
            )));
        }
        if self.ctx.config.cluster.secret.is_none() {
            return Err(bad(
                "this node has no cluster.secret: set the cluster's secret (SHOAL_CLUSTER__SECRET) and restart it",
            ));
        }
        let (cluster_id, _) = cluster
            .join(&req.seed, req.voter)
            .await
            .map_err(NodeError::from)?;
        if req.voter {
            let c = cluster.clone();
            tokio::spawn(async move { c.promote_self_when_caught_up().await });
        }
        Ok(serde_json::json!({
            "cluster_id": cluster_id,
            "node_id": cluster.id,
            "role": "learner",
            "voter_requested": req.voter,
        }))
    }

    async fn cluster_promote(&self, id: u64) -> Result<Value> {
        self.ctx
            .cluster
            .promote(id)
            .await
            .map_err(NodeError::from)?;
        Ok(serde_json::json!({ "promoted": id }))
    }

    async fn cluster_remove(&self, id: u64) -> Result<Value> {
        self.ctx.cluster.remove(id).await.map_err(NodeError::from)?;
        Ok(serde_json::json!({ "removed": id }))
    }

    async fn store_digest(&self) -> Result<Value> {
        let ((applied, digest), (_, data)) = self
            .read(|ctx| Ok((ctx.store.digest()?, ctx.store.data_digest()?)))
            .await?;
        Ok(serde_json::json!({
            "node_id": self.ctx.node_id(),
            "applied_index": applied,
            "digest": digest,
            "data_digest": data,
        }))
    }

    async fn snapshot(&self) -> Result<SnapshotDownload> {
        let limit = Duration::from_millis(self.ctx.config.cluster.backup_timeout_ms);
        let (snap, file) = self
            .ctx
            .cluster
            .fresh_snapshot(limit)
            .await
            .map_err(NodeError::from)?;
        let file = tokio::fs::File::from_std(file);
        let bytes = file
            .metadata()
            .await
            .map_err(|e| ApiError::Internal(format!("{}: {e}", snap.path.display())))?
            .len();
        tracing::info!(
            snapshot = %snap.snapshot_id,
            applied_index = snap.applied_index,
            bytes,
            "sending a snapshot for a backup"
        );
        Ok(SnapshotDownload {
            file,
            bytes,
            applied_index: snap.applied_index,
            node_id: self.ctx.node_id(),
        })
    }

    async fn cut_links(&self, req: CutLinksRequest) -> Result<Value> {
        self.require_fault_injection()?;
        self.ctx
            .cluster
            .cut_links(req.cut.iter().copied().collect());
        Ok(serde_json::json!({ "cut": self.ctx.cluster.faults().cut() }))
    }

    async fn fail_storage(&self) -> Result<Value> {
        self.require_fault_injection()?;
        tracing::warn!("fault injection: the next entry applied here fails");
        self.ctx.cluster.inject_storage_failure();
        Ok(serde_json::json!({ "fails": "the next entry this node applies" }))
    }

    fn requests_in_flight(&self, method: &str, route: &str, delta: i64) {
        self.ctx
            .runtime
            .metrics
            .http_in_flight
            .with_label_values(&[method, route])
            .add(delta);
    }

    fn record_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let m = &self.ctx.runtime.metrics;
        m.http_requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        m.http_seconds
            .with_label_values(&[method, route])
            .observe(seconds);
    }
}

/// The widest beam and the most hits a search's index step may have to run on the request's
/// thread (see `Node::search_shard`).
const QUICK_EF: usize = 128;
const QUICK_FETCH: usize = 100;

/// What the index step of a search needs (see `Node::search_shard`).
#[derive(Clone)]
struct IndexStep {
    ctx: Arc<NodeContext>,
    shard: Arc<shoal_index::Shard>,
    uid: u64,
    retrieval: Retrieval,
    filter: Option<Filter>,
    fetch: usize,
    mode: SearchMode,
    ef: Option<usize>,
    max_scan: Option<usize>,
}

impl IndexStep {
    /// The hits, and how many points had no chunk in the store any more.
    fn run(self) -> std::result::Result<(Vec<SearchHit>, usize), NodeError> {
        let by_vector = |vector: &[f32], k: usize| {
            self.shard.search(&IndexSearch {
                vector,
                k,
                filter: self.filter.as_ref(),
                mode: self.mode,
                ef: self.ef,
                max_scan: self.max_scan,
            })
        };
        let hits: Vec<FusedHit> = match &self.retrieval {
            Retrieval::Vector(vector) => by_vector(vector, self.fetch)?
                .into_iter()
                .map(|hit| FusedHit {
                    hit,
                    vector_score: None,
                    keyword_score: None,
                })
                .collect(),
            Retrieval::Keyword(text) => self
                .shard
                .keyword_search(text, self.fetch, self.filter.as_ref())?
                .into_iter()
                .map(|hit| FusedHit {
                    keyword_score: Some(hit.score),
                    hit,
                    vector_score: None,
                })
                .collect(),
            Retrieval::Hybrid {
                vector,
                text,
                fusion,
                candidates,
            } => {
                let k = self.fetch.max(*candidates);
                let by_meaning = by_vector(vector, k)?;
                let by_words = self.shard.keyword_search(text, k, self.filter.as_ref())?;
                fuse(by_meaning, by_words, *fusion, self.fetch)
            }
        };
        let mut out = Vec::with_capacity(hits.len());
        let mut missing = 0;
        for FusedHit {
            hit: h,
            vector_score,
            keyword_score,
        } in hits
        {
            let Some(chunk) = self.ctx.store.chunk(self.uid, h.id)? else {
                missing += 1;
                continue;
            };
            let mut metadata = h.payload.metadata.clone();
            match chunk.pages {
                // the chunk's own pages; what the uploader called `page` stays theirs
                Some((first, last))
                    if !metadata.contains_key("page") && !metadata.contains_key("last_page") =>
                {
                    metadata.insert("page".into(), first.into());
                    metadata.insert("last_page".into(), last.into());
                }
                _ => {}
            }
            if let Some(section) = chunk.section {
                // the heading the chunk is under; an uploader's own `section` stays theirs
                metadata.entry("section").or_insert(section.into());
            }
            out.push(SearchHit {
                document_id: h.payload.doc_id.clone(),
                chunk_index: chunk.chunk_index,
                text: chunk.text,
                score: h.score,
                vector_score,
                keyword_score,
                rerank_score: None,
                metadata,
            });
        }
        Ok((out, missing))
    }
}

/// What a search ranks by (see `SearchRequest::mode`).
#[derive(Clone)]
enum Retrieval {
    Vector(Arc<Vec<f32>>),
    Keyword(String),
    Hybrid {
        vector: Arc<Vec<f32>>,
        text: String,
        fusion: Fusion,
        /// Hits each side fetches.
        candidates: usize,
    },
}

/// A query vector given in a search request: of the collection's dimension, normalised.
fn request_vector(coll: &CollectionRecord, mut v: Vec<f32>) -> Result<Arc<Vec<f32>>> {
    if v.len() != coll.spec.dimension as usize {
        return Err(bad(format!(
            "`vector` has dimension {}, collection `{}` has {}",
            v.len(),
            coll.name,
            coll.spec.dimension
        )));
    }
    if !normalize(&mut v) {
        return Err(bad("`vector` must be finite and not all zeros"));
    }
    Ok(Arc::new(v))
}
