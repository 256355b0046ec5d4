//! Ingest workers: take documents from the queue, chunk them, embed the chunks on the ingest
//! embedder, and apply one `StoreChunks` command per document.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use shoal_inference::Chunk;
use shoal_storage::{ChunkInput, Command, PendingDocument, StoreError};

use crate::actors::ask;
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
                let ctx = &state.ctx;
                // About one embedding batch of text (a chunk is ~4 bytes per token).
                let budget = ctx.config.ingest.batch_chunks * ctx.config.ingest.chunk_tokens * 4;
                let docs = ctx.ingest.take(state.id, budget);
                if docs.is_empty() {
                    return Ok(());
                }
                match process(ctx, docs).await {
                    Processed::Done => {
                        ctx.ingest.finish(state.id);
                        if !ctx.ingest.is_empty() {
                            myself.send_message(IngestMsg::Work)?;
                        }
                    }
                    Processed::Retry => {
                        // The embedder is restarting: put the batch back and try again shortly.
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

enum Processed {
    Done,
    Retry,
}

async fn process(ctx: &Arc<NodeContext>, docs: Vec<PendingDocument>) -> Processed {
    let chunker = ctx.chunker.clone();
    let texts: Vec<String> = docs.iter().map(|d| d.text.clone()).collect();
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
            tracing::warn!(error = %e, "embedder unavailable; ingest batch will be retried");
            return Processed::Retry;
        }
        Err(e) => {
            for d in &docs {
                fail(ctx, d, &format!("embedding failed: {e}")).await;
            }
            return Processed::Done;
        }
    };
    for (doc, chunks) in docs.iter().zip(chunked) {
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
            Ok(_) => {
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
    let timeout = Duration::from_millis(ctx.config.model.timeout_ms);
    let mut out = Vec::with_capacity(texts.len());
    for group in texts.chunks(ctx.config.ingest.batch_chunks) {
        let actor = ctx
            .embedders
            .read()
            .get(&EmbedQueue::Ingest)
            .cloned()
            .ok_or_else(|| NodeError::Actor("the ingest embedder is not running".into()))?;
        let texts = group.to_vec();
        let v = ask(&actor, "ingest embedder", timeout, |reply| {
            EmbedderMsg::Embed { texts, reply }
        })
        .await?
        .map_err(NodeError::Internal)?;
        out.extend(v);
    }
    Ok(out)
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
