//! Embedder actors: one per queue ("query" and "ingest"), sharing the model weights, so a query
//! never waits behind an ingest batch. The forward pass runs on a blocking thread.

use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::context::NodeContext;

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
    ctx: Arc<NodeContext>,
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
        args.ctx.embedders.write().insert(args.queue, myself);
        Ok(EmbedderState {
            queue: args.queue,
            ctx: args.ctx,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: EmbedderMsg,
        state: &mut EmbedderState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EmbedderMsg::Embed { texts, reply } => {
                let embedder = state.ctx.embedder.clone();
                let start = Instant::now();
                let n = texts.len();
                let result = tokio::task::spawn_blocking(move || {
                    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                    embedder.embed(&refs)
                })
                .await;
                let queue = state.queue.name();
                let m = &state.ctx.metrics;
                m.embed_seconds
                    .with_label_values(&[queue])
                    .observe(start.elapsed().as_secs_f64());
                m.embed_texts.with_label_values(&[queue]).inc_by(n as u64);
                let answer = match result {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(format!("embedding task failed: {e}")),
                };
                // The caller may have given up (timeout); that is not our failure.
                let _ = reply.send(answer);
            }
            EmbedderMsg::Panic => panic!("fault injection: embedder-{} panics", state.queue.name()),
        }
        Ok(())
    }
}
