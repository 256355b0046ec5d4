//! Ingest workers: take documents from the queue, read their text from the store, chunk them,
//! embed the chunks on the ingest embedder, and apply one `StoreChunks` command per document.
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
use shoal_storage::{ChunkInput, Command, PendingDocument, StoreError};

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
        args.ctx.ingest.attach_worker(args.id, myself);
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
                let docs = ctx.ingest.take(state.id, budget);
                if docs.is_empty() {
                    return Ok(());
                }
                match process(&ctx, &mut state.last_stored, docs).await {
                    Processed::Done => {
                        ctx.ingest.finish(state.id);
                        if !ctx.ingest.is_empty() {
                            myself.send_message(IngestMsg::Work)?;
                        }
                    }
                    Processed::Retry => {
                        // The embedder is restarting or stalled: put the batch back and try
                        // again shortly.
                        ctx.ingest.retry(state.id);
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
/// Longest a worker waits for the shards to mirror its previous batch before storing the next.
const MIRROR_WAIT: Duration = Duration::from_secs(60);

enum Processed {
    Done,
    Retry,
}

async fn process(
    ctx: &Arc<NodeContext>,
    last_stored: &mut HashMap<u64, u64>,
    keys: Vec<PendingDocument>,
) -> Processed {
    // The texts, from the store: versions replaced, deleted or dropped meanwhile are skipped.
    let store = ctx.store.clone();
    let read = tokio::task::spawn_blocking(move || {
        keys.into_iter()
            .map(|k| {
                let text = store.pending_text(k.uid, &k.doc_id, k.version);
                (k, text)
            })
            .collect::<Vec<_>>()
    })
    .await;
    let mut docs: Vec<(PendingDocument, String)> = Vec::new();
    match read {
        Ok(all) => {
            for (key, text) in all {
                match text {
                    Ok(Some(t)) => docs.push((key, t)),
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

    let chunker = ctx.chunker.clone();
    let texts: Vec<String> = docs.iter().map(|(_, t)| t.clone()).collect();
    let chunked = ctx
        .background(move || {
            texts
                .iter()
                .map(|t| chunker.chunk(t).map_err(|e| e.to_string()))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_else(|e| vec![Err(format!("chunking failed: {e}")); docs.len()]);

    // Embed every chunk of the batch together, in groups of `batch_chunks`.
    let all: Vec<String> = chunked
        .iter()
        .filter_map(|c| c.as_ref().ok())
        .flat_map(|cs| cs.iter().map(|c| c.text.clone()))
        .collect();
    let vectors = embed_all(ctx, all).await;

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
    // Back-pressure: the shards of this batch's collections have mirrored this worker's previous
    // chunks for them before it stores more.
    let uids: std::collections::BTreeSet<u64> = docs.iter().map(|(d, _)| d.uid).collect();
    for uid in uids {
        if let Some(&index) = last_stored.get(&uid) {
            if !ctx.wait_searchable(uid, index, MIRROR_WAIT).await {
                tracing::warn!(
                    index,
                    "the index is more than a batch behind the store; storing anyway"
                );
            }
        }
    }
    for ((doc, _), chunks) in docs.iter().zip(chunked) {
        let chunks: Vec<Chunk> = match chunks {
            Ok(c) if c.is_empty() => {
                fail(ctx, doc, "the text has no indexable content").await;
                continue;
            }
            Ok(c) => c,
            Err(e) => {
                fail(ctx, doc, &format!("chunking failed: {e}")).await;
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
                vector,
            })
            .collect();
        let n = inputs.len();
        let result = ctx
            .apply(Command::StoreChunks {
                collection: doc.collection.clone(),
                doc_id: doc.doc_id.clone(),
                version: doc.version,
                chunks: inputs,
                at_ms: now_ms(),
            })
            .await;
        match result {
            Ok(committed) => {
                last_stored.insert(doc.uid, committed.index);
                ctx.metrics
                    .ingest_documents
                    .with_label_values(&["indexed"])
                    .inc();
                ctx.metrics.ingest_chunks.inc_by(n as u64);
            }
            // Dropped collection: nothing to do.
            Err(NodeError::Store(StoreError::CollectionNotFound(_))) => {}
            Err(e) => {
                tracing::error!(collection = %doc.collection, doc = %doc.doc_id, error = %e, "storing chunks failed");
                fail(ctx, doc, &format!("storing chunks failed: {e}")).await;
            }
        }
    }
    Processed::Done
}

async fn embed_all(ctx: &Arc<NodeContext>, texts: Vec<String>) -> Result<Vec<Vec<f32>>, NodeError> {
    let mut out = Vec::with_capacity(texts.len());
    for group in texts.chunks(ctx.config.ingest.batch_chunks) {
        out.extend(embed_group(ctx, group.to_vec()).await?);
    }
    Ok(out)
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
        })
        .map_err(|e| NodeError::Actor(format!("the ingest embedder is unavailable: {e}")))?;
    let moved = || progress.load(Ordering::Acquire) + ctx.query_gate.heartbeat();
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
                    ctx.metrics
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

async fn fail(ctx: &Arc<NodeContext>, doc: &PendingDocument, reason: &str) {
    ctx.metrics
        .ingest_documents
        .with_label_values(&["failed"])
        .inc();
    let result = ctx
        .apply(Command::FailDocument {
            collection: doc.collection.clone(),
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
