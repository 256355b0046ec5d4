//! Embedder actors: one per queue ("query" and "ingest"), sharing the model weights. Each owns an
//! [`EmbedExecutor`] thread that runs the model (see `embed_exec` for batching and priority); a
//! restarted actor starts a fresh executor.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use shoal_inference::TextKind;

use crate::context::NodeContext;
use crate::embed_exec::{ArrivalTicket, EmbedExecutor, EmbedJob, Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmbedQueue {
    Query,
    Ingest,
}

impl EmbedQueue {
    pub fn name(self) -> &'static str {
        match self {
            EmbedQueue::Query => "query",
            EmbedQueue::Ingest => "ingest",
        }
    }

    pub fn actor_name(self) -> String {
        format!("embedder-{}", self.name())
    }
}

pub enum EmbedderMsg {
    Embed {
        texts: Vec<String>,
        reply: RpcReplyPort<Result<Vec<Vec<f32>>, String>>,
        /// Texts embedded so far, for callers that tell a stalled job from a slow one.
        progress: Option<Arc<AtomicUsize>>,
        /// A search's place among the query embedder's arrivals (see `embed_exec::Arrivals`).
        arrival: Option<ArrivalTicket>,
        /// Queries, passages to index, or plain texts (the model's prompt for them).
        kind: TextKind,
    },
    /// Fault injection: panic inside the handler.
    Panic,
}

pub struct EmbedderActor;

pub struct EmbedderArgs {
    pub queue: EmbedQueue,
    pub ctx: Arc<NodeContext>,
}

pub struct EmbedderState {
    queue: EmbedQueue,
    /// The thread that runs the model for this queue (dynamic batching or micro-batches).
    exec: EmbedExecutor,
}

impl Actor for EmbedderActor {
    type Msg = EmbedderMsg;
    type State = EmbedderState;
    type Arguments = EmbedderArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: EmbedderArgs,
    ) -> Result<EmbedderState, ActorProcessingErr> {
        let ctx = &args.ctx;
        let cfg = &ctx.config.model;
        let (role, pool) = match args.queue {
            EmbedQueue::Query => (
                Role::Query {
                    window: Duration::from_micros((cfg.batch_window_ms * 1000.0) as u64),
                    max_texts: cfg.batch_size,
                    adaptive: cfg.adaptive_batching,
                    slice_us: ctx.config.threads.query_slice_us,
                },
                ctx.runtime.query_pool.clone(),
            ),
            EmbedQueue::Ingest => (
                Role::Ingest {
                    micro: cfg.ingest_micro_batch,
                    micro_tokens: cfg.ingest_micro_batch_tokens,
                    nice: ctx.config.threads.ingest_nice,
                },
                ctx.runtime.ingest_pool.clone(),
            ),
        };
        let exec = EmbedExecutor::start(
            role,
            ctx.runtime.embedder.clone(),
            pool,
            ctx.runtime.query_gate.clone(),
            ctx.runtime.arrivals.clone(),
            ctx.runtime.metrics.clone(),
        )?;
        ctx.actors.embedders.write().insert(args.queue, myself);
        Ok(EmbedderState {
            queue: args.queue,
            exec,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: EmbedderMsg,
        state: &mut EmbedderState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EmbedderMsg::Embed {
                texts,
                reply,
                progress,
                arrival,
                kind,
            } => {
                // Queued for the executor; the actor is free for the next request at once.
                state.exec.submit(EmbedJob {
                    texts,
                    reply,
                    queued: Instant::now(),
                    progress,
                    arrival,
                    kind,
                })?;
            }
            EmbedderMsg::Panic => panic!("fault injection: embedder-{} panics", state.queue.name()),
        }
        Ok(())
    }
}
