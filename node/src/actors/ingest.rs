//! Ingest workers: take documents from the queue, claim them for this node through the log (so
//! that a document is embedded by one node of the cluster), read their text from the store, chunk
//! them, embed the chunks on the ingest embedder, and store the chunks of the whole batch in one
//! `StoreChunks` command per collection (split only where one log entry would be too large).
//! Documents another node holds wait until its claim expires; chunks made under a claim that
//! another node took over meanwhile are refused by apply, so no document is indexed twice.
//!
//! A batch has one owner at a time. If the embedder makes no progress on it for
//! `model.timeout_ms`, the worker gives it up (the executor sees its answer is no longer wanted
//! and drops the batch at its next step) and queues it again; it never runs twice at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use shoal_inference::Chunk;
use shoal_storage::{
    ChunkInput, Command, DocumentChunks, DocumentVersion, Outcome, PendingDocument, StoreError,
};

use crate::actors::embedder::{EmbedQueue, EmbedderMsg};
use crate::context::NodeContext;
use crate::error::NodeError;

pub enum IngestMsg {
    /// Take a batch from the queue (sent whenever documents arrive).
    Work,
    /// Fault injection: panic inside the handler.
    Panic,
}

pub struct IngestWorker;

pub struct IngestArgs {
    pub id: usize,
    pub ctx: Arc<NodeContext>,
}

pub struct IngestState {
    id: usize,
    ctx: Arc<NodeContext>,
    /// Per collection uid, the log index of this worker's last stored chunks: before storing more
    /// into a collection, the worker waits (at most a minute) for its shard to mirror these, so
    /// that ingest does not run far ahead of the index.
    last_stored: HashMap<u64, u64>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Actor for IngestWorker {
    type Msg = IngestMsg;
    type State = IngestState;
    type Arguments = IngestArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<IngestMsg>,
        args: IngestArgs,
    ) -> Result<IngestState, ActorProcessingErr> {
        args.ctx.actors.ingest.attach_worker(args.id, myself);
        Ok(IngestState {
            id: args.id,
            ctx: args.ctx,
            last_stored: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<IngestMsg>,
        msg: IngestMsg,
        state: &mut IngestState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            IngestMsg::Work => {
                let ctx = state.ctx.clone();
                // About one embedding batch of text (a chunk is ~4 bytes per token).
                let budget =
                    (ctx.config.ingest.batch_chunks * ctx.config.ingest.chunk_tokens * 4) as u64;
                let docs = ctx.actors.ingest.take(state.id, budget);
                if docs.is_empty() {
                    return Ok(());
                }
                // no memory trim while a batch is under way (another worker may have drained
                // the queue and asked for one)
                let busy = ctx.runtime.memory.working();
                let processed = process(&ctx, state.id, &mut state.last_stored, docs).await;
                drop(busy);
                match processed {
                    Processed::Done => {
                        ctx.actors.ingest.finish(state.id);
                        if !ctx.actors.ingest.is_empty() {
                            myself.send_message(IngestMsg::Work)?;
                        } else {
                            // the queue drained: once the ingest has been quiet for a while,
                            // what its batches held goes back to the system
                            ctx.runtime.memory.request();
                        }
                    }
                    Processed::Retry => {
                        // The embedder is restarting or stalled: put the batch back and try
                        // again shortly.
                        ctx.actors.ingest.retry(state.id);
                        myself.send_after(RETRY_DELAY, || IngestMsg::Work);
                    }
                }
            }
            IngestMsg::Panic => panic!("fault injection: ingest-worker-{} panics", state.id),
        }
        Ok(())
    }
}

const RETRY_DELAY: Duration = Duration::from_millis(500);
/// Longest a worker waits for the shards to mirror its previous batch before storing the next
/// (and at most half its claim's time).
const MIRROR_WAIT: Duration = Duration::from_secs(60);

enum Processed {
    Done,
    Retry,
}

/// Claim `docs` (pending versions) for this node; returns those granted. Those another node
/// holds are deferred in the queue until that claim expires.
async fn claim(
    ctx: &Arc<NodeContext>,
    worker: usize,
    docs: Vec<PendingDocument>,
) -> Result<Vec<PendingDocument>, NodeError> {
    // What this replica already knows: versions no longer pending are done, versions another
    // node holds (by this node's clock) wait until its claim ends, with no proposal.
    let me = ctx.node_id();
    let now = now_ms();
    let store = ctx.store.clone();
    let checked = tokio::task::spawn_blocking(move || {
        docs.into_iter()
            .map(|d| {
                let state = store.pending_claim(d.uid, &d.doc_id, d.version);
                (d, state)
            })
            .collect::<Vec<_>>()
    })
    .await?;
    let mut by_collection: std::collections::BTreeMap<String, Vec<PendingDocument>> =
        Default::default();
    let mut held_here = Vec::new();
    for (d, state) in checked {
        match state? {
            None => {}
            Some(Some(c)) if c.node != me && c.until_ms > now => held_here.push((d, c.until_ms)),
            Some(_) => by_collection
                .entry(d.collection.clone())
                .or_default()
                .push(d),
        }
    }
    if !held_here.is_empty() {
        ctx.runtime
            .metrics
            .cluster_claims
            .with_label_values(&["held_elsewhere"])
            .inc_by(held_here.len() as u64);
        ctx.actors.ingest.defer(worker, held_here);
    }
    let mut granted = Vec::new();
    for (collection, docs) in by_collection {
        let now = now_ms();
        let result = ctx
            .apply(Command::ClaimDocuments {
                collection,
                node: ctx.node_id(),
                documents: docs
                    .iter()
                    .map(|d| DocumentVersion {
                        doc_id: d.doc_id.clone(),
                        version: d.version,
                    })
                    .collect(),
                until_ms: now + ctx.config.cluster.claim_ttl_ms,
                at_ms: now,
            })
            .await;
        let outcome = match result {
            Ok(c) => c.outcome,
            // Dropped collection: nothing to do.
            Err(NodeError::Store(StoreError::CollectionNotFound(_))) => continue,
            Err(e) => return Err(e),
        };
        let Outcome::Claimed {
            granted: ok,
            held,
            taken_over,
        } = outcome
        else {
            return Err(NodeError::Internal(format!("a claim answered {outcome:?}")));
        };
        let claims = &ctx.runtime.metrics.cluster_claims;
        claims
            .with_label_values(&["granted"])
            .inc_by(ok.len() as u64);
        claims
            .with_label_values(&["taken_over"])
            .inc_by(u64::from(taken_over));
        claims
            .with_label_values(&["held_elsewhere"])
            .inc_by(held.len() as u64);
        let held: Vec<(PendingDocument, u64)> = held
            .into_iter()
            .filter_map(|h| {
                docs.iter()
                    .find(|d| d.doc_id == h.document.doc_id && d.version == h.document.version)
                    .map(|d| (d.clone(), h.until_ms))
            })
            .collect();
        if !held.is_empty() {
            ctx.actors.ingest.defer(worker, held);
        }
        granted.extend(docs.into_iter().filter(|d| {
            ok.iter()
                .any(|g| g.doc_id == d.doc_id && g.version == d.version)
        }));
    }
    Ok(granted)
}

async fn process(
    ctx: &Arc<NodeContext>,
    worker: usize,
    last_stored: &mut HashMap<u64, u64>,
    keys: Vec<PendingDocument>,
) -> Processed {
    // Back-pressure: before this batch's chunks are stored, the shards of its collections have
    // mirrored this worker's previous chunks for them. Awaited beside the embedding, so that the
    // graph inserts of one batch overlap the embedding of the next.
    let previous: Vec<(u64, u64)> = keys
        .iter()
        .map(|d| d.uid)
        .collect::<std::collections::BTreeSet<u64>>()
        .into_iter()
        .filter_map(|uid| last_stored.get(&uid).map(|&index| (uid, index)))
        .collect();
    // This node's claim: a document is embedded by one node of the cluster.
    let keys = match claim(ctx, worker, keys).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "could not claim documents for ingest; the batch will be retried");
            return Processed::Retry;
        }
    };
    if keys.is_empty() {
        return Processed::Done;
    }
    // The back-pressure wait ends in time for the chunks to be stored well within the claim (a
    // claim that lapsed could be taken over, and this batch's embedding would be wasted).
    let mirror_deadline = tokio::time::Instant::now()
        + MIRROR_WAIT.min(Duration::from_millis(ctx.config.cluster.claim_ttl_ms / 2));
    // The texts, from the store: versions replaced, deleted or dropped meanwhile are skipped.
    let store = ctx.store.clone();
    let read = tokio::task::spawn_blocking(move || {
        keys.into_iter()
            .map(|k| {
                let content = store.pending_content(k.uid, &k.doc_id, k.version);
                (k, content)
            })
            .collect::<Vec<_>>()
    })
    .await;
    let mut docs: Vec<(PendingDocument, String)> = Vec::new();
    let mut sections: Vec<Vec<shoal_storage::Section>> = Vec::new();
    match read {
        Ok(all) => {
            for (key, content) in all {
                match content {
                    Ok(Some((t, s))) => {
                        docs.push((key, t));
                        sections.push(s);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(doc = %key.doc_id, error = %e, "cannot read a pending document");
                        return Processed::Retry;
                    }
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "reading pending documents failed");
            return Processed::Retry;
        }
    }
    if docs.is_empty() {
        return Processed::Done;
    }

    let chunker = ctx.runtime.chunker.clone();
    let max_chunks = ctx.config.ingest.max_chunks_per_document;
    let texts: Vec<String> = docs.iter().map(|(_, t)| t.clone()).collect();
    // On the ingest threads (the background thread may still be inserting the last batch),
    // stepping aside between documents while a search runs, as their forward passes do.
    let chunked =
        crate::runtime::Runtime::on_pool(&ctx.runtime.ingest_pool, "chunking", move || {
            texts
                .iter()
                .map(|t| {
                    shoal_inference::pause_point();
                    match chunker.chunk(t) {
                        Ok(cs) if cs.len() > max_chunks => Err(format!(
                            "the document makes {} chunks; a document may have at most {max_chunks} (ingest.max_chunks_per_document): split it",
                            cs.len()
                        )),
                        other => other.map_err(|e| format!("chunking failed: {e}")),
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_else(|e| vec![Err(format!("chunking failed: {e}")); docs.len()]);

    // Embed every chunk of the batch together.
    let all: Vec<String> = chunked
        .iter()
        .filter_map(|c| c.as_ref().ok())
        .flat_map(|cs| cs.iter().map(|c| c.text.clone()))
        .collect();
    let vectors = {
        let embed = embed_all(ctx, all);
        let wait = wait_mirrored(ctx, &previous, mirror_deadline);
        tokio::pin!(embed, wait);
        tokio::select! {
            v = &mut embed => match v {
                // Nothing to store: no reason to wait for the index.
                Err(e) => Err(e),
                Ok(v) => {
                    wait.await;
                    Ok(v)
                }
            },
            () = &mut wait => embed.await,
        }
    };

    let mut vectors = match vectors {
        Ok(v) => v.into_iter(),
        Err(e @ NodeError::Actor(_)) => {
            tracing::warn!(error = %e, "ingest embedding unavailable; the batch will be retried");
            return Processed::Retry;
        }
        Err(e) => {
            for (d, _) in &docs {
                fail(ctx, d, &format!("embedding failed: {e}")).await;
            }
            return Processed::Done;
        }
    };
    // The chunks of the whole batch, per collection, as few commands as the entry size allows.
    let mut ready: std::collections::BTreeMap<(String, u64), Vec<DocumentChunks>> =
        Default::default();
    for (((doc, _), chunks), sections) in docs.iter().zip(chunked).zip(&sections) {
        let chunks: Vec<Chunk> = match chunks {
            Ok(c) if c.is_empty() => {
                fail(ctx, doc, "the text has no indexable content").await;
                continue;
            }
            Ok(c) => c,
            Err(reason) => {
                fail(ctx, doc, &reason).await;
                continue;
            }
        };
        let inputs: Vec<ChunkInput> = chunks
            .into_iter()
            .zip(vectors.by_ref())
            .map(|(c, vector)| ChunkInput {
                text: c.text,
                start: c.start as u32,
                end: c.end as u32,
                pages: c.pages,
                section: shoal_storage::Section::heading_at(sections, c.start as u32)
                    .map(str::to_owned),
                vector,
            })
            .collect();
        ready
            .entry((doc.collection.clone(), doc.uid))
            .or_default()
            .push(DocumentChunks {
                doc_id: doc.doc_id.clone(),
                version: doc.version,
                chunks: inputs,
            });
    }
    let max_bytes = ctx.config.cluster.max_entry_bytes;
    for ((collection, uid), documents) in ready {
        for part in split_by_size(documents, max_bytes) {
            let n: usize = part.iter().map(|d| d.chunks.len()).sum();
            let versions: Vec<(String, u64)> =
                part.iter().map(|d| (d.doc_id.clone(), d.version)).collect();
            let result = ctx
                .apply(Command::StoreChunks {
                    collection: collection.clone(),
                    node: ctx.node_id(),
                    documents: part,
                    at_ms: now_ms(),
                })
                .await;
            match result {
                Ok(committed) => {
                    last_stored.insert(uid, committed.index);
                    if let Outcome::ChunksStored { stored, lost, .. } = committed.outcome {
                        let m = &ctx.runtime.metrics;
                        m.ingest_documents
                            .with_label_values(&["indexed"])
                            .inc_by(stored.len() as u64);
                        m.cluster_claims
                            .with_label_values(&["lost"])
                            .inc_by(lost.len() as u64);
                        if !stored.is_empty() {
                            m.ingest_chunks.inc_by(n as u64);
                        }
                    }
                }
                // Dropped collection: nothing to do.
                Err(NodeError::Store(StoreError::CollectionNotFound(_))) => {}
                Err(NodeError::Cluster(shoal_cluster::ClusterError::TooLarge(why))) => {
                    // One document's chunks alone are larger than a log entry may be.
                    let reason = format!("its chunks are too large to store: {why}");
                    fail_versions(ctx, &docs, &versions, &reason).await;
                }
                Err(e @ NodeError::Cluster(_)) => {
                    // Not stored (no leader, no quorum): the documents stay pending and are
                    // taken again later.
                    tracing::warn!(collection = %collection, error = %e, "storing chunks failed; the batch will be retried");
                    return Processed::Retry;
                }
                Err(e) => {
                    // Refused by apply (it would be refused again): the documents fail.
                    tracing::error!(collection = %collection, error = %e, "storing chunks failed");
                    fail_versions(
                        ctx,
                        &docs,
                        &versions,
                        &format!("storing chunks failed: {e}"),
                    )
                    .await;
                }
            }
        }
    }
    Processed::Done
}

/// Wait until the shard of each `(collection uid, log index)` has mirrored that index, at most
/// until `deadline`.
async fn wait_mirrored(
    ctx: &Arc<NodeContext>,
    stored: &[(u64, u64)],
    deadline: tokio::time::Instant,
) {
    for &(uid, index) in stored {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !ctx.wait_searchable(uid, index, left).await {
            tracing::warn!(
                index,
                "the index is more than a batch behind the store; storing anyway"
            );
        }
    }
}

/// Parts of at most `max_bytes` (a document larger than that alone in its part: the text of one
/// document is bounded by `ingest.max_document_bytes`, well below an entry).
fn split_by_size(documents: Vec<DocumentChunks>, max_bytes: usize) -> Vec<Vec<DocumentChunks>> {
    let size = |d: &DocumentChunks| {
        d.chunks
            .iter()
            .map(|c| c.text.len() + c.vector.len() * 4 + 16)
            .sum::<usize>()
            + d.doc_id.len()
    };
    let mut parts: Vec<Vec<DocumentChunks>> = Vec::new();
    let mut bytes = 0;
    for d in documents {
        let s = size(&d);
        match parts.last_mut() {
            Some(last) if bytes + s <= max_bytes => {
                bytes += s;
                last.push(d);
            }
            _ => {
                bytes = s;
                parts.push(vec![d]);
            }
        }
    }
    parts
}

/// Embed the chunks of a batch on the ingest embedder. They go as one job: the executor cuts it
/// into micro-batches (`model.ingest_micro_batch*`) and runs them back to back, where groups sent
/// one after the other would leave it idle between each answer and the next group.
async fn embed_all(ctx: &Arc<NodeContext>, texts: Vec<String>) -> Result<Vec<Vec<f32>>, NodeError> {
    if texts.is_empty() {
        return Ok(Vec::new());
    }
    embed_group(ctx, texts).await
}

/// Embed one group on the ingest embedder. If the ingest executor does not move on at all for
/// `model.timeout_ms` (neither this group's texts nor any step of the forward pass it runs,
/// ours or another worker's queued before it), the group is given up (dropping the answer's
/// receiver tells the executor to drop the group at its next step) and the caller retries it
/// later. A slow executor, or one that queries keep waiting between its turns, is not stuck.
async fn embed_group(
    ctx: &Arc<NodeContext>,
    texts: Vec<String>,
) -> Result<Vec<Vec<f32>>, NodeError> {
    let actor = ctx
        .actors
        .embedders
        .read()
        .get(&EmbedQueue::Ingest)
        .cloned()
        .ok_or_else(|| NodeError::Actor("the ingest embedder is not running".into()))?;
    let stall = Duration::from_millis(ctx.config.model.timeout_ms);
    let progress = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    actor
        .cast(EmbedderMsg::Embed {
            texts,
            reply: tx.into(),
            progress: Some(progress.clone()),
            arrival: None,
            kind: shoal_inference::TextKind::Document,
        })
        .map_err(|e| NodeError::Actor(format!("the ingest embedder is unavailable: {e}")))?;
    let moved = || progress.load(Ordering::Acquire) + ctx.runtime.query_gate.heartbeat();
    let mut seen = moved();
    loop {
        match tokio::time::timeout(stall, &mut rx).await {
            Ok(Ok(result)) => return result.map_err(NodeError::Internal),
            Ok(Err(_)) => {
                return Err(NodeError::Actor(
                    "the ingest embedder stopped before answering".into(),
                ))
            }
            Err(_) => {
                let now = moved();
                if now == seen {
                    ctx.runtime
                        .metrics
                        .cancelled_work
                        .with_label_values(&["ingest_embedding"])
                        .inc();
                    return Err(NodeError::Actor(format!(
                        "ingest embedding made no progress for {} ms (model.timeout_ms)",
                        stall.as_millis()
                    )));
                }
                seen = now;
            }
        }
    }
}

/// Record the failure of each of `versions` (of `docs`).
async fn fail_versions(
    ctx: &Arc<NodeContext>,
    docs: &[(PendingDocument, String)],
    versions: &[(String, u64)],
    reason: &str,
) {
    for (doc_id, version) in versions {
        if let Some((d, _)) = docs
            .iter()
            .find(|(d, _)| d.doc_id == *doc_id && d.version == *version)
        {
            fail(ctx, d, reason).await;
        }
    }
}

async fn fail(ctx: &Arc<NodeContext>, doc: &PendingDocument, reason: &str) {
    ctx.runtime
        .metrics
        .ingest_documents
        .with_label_values(&["failed"])
        .inc();
    let result = ctx
        .apply(Command::FailDocument {
            collection: doc.collection.clone(),
            node: ctx.node_id(),
            doc_id: doc.doc_id.clone(),
            version: doc.version,
            reason: reason.to_string(),
            at_ms: now_ms(),
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(doc = %doc.doc_id, error = %e, "could not record the failure of a document");
    }
}
