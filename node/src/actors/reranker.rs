//! The reranker actor: scores (query, passage) pairs with the node's cross-encoder, on the query
//! pool's threads (ingest steps aside meanwhile, as for a query embedding). Present only when the
//! node is started with a reranker model.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use shoal_inference::InferenceError;

use crate::context::NodeContext;

pub enum RerankerMsg {
    /// Raw scores (logits) of `passages` for `query`, in input order.
    Score {
        query: String,
        passages: Vec<String>,
        /// Set when the request is gone: scoring stops at its next forward pass.
        cancelled: Arc<AtomicBool>,
        reply: RpcReplyPort<Result<Vec<f32>, String>>,
    },
    /// Fault injection: panic inside the handler.
    Panic,
}

pub struct RerankerActor;

pub struct RerankerState {
    ctx: Arc<NodeContext>,
}

impl Actor for RerankerActor {
    type Msg = RerankerMsg;
    type State = RerankerState;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<RerankerMsg>,
        ctx: Arc<NodeContext>,
    ) -> Result<RerankerState, ActorProcessingErr> {
        *ctx.actors.reranker_actor.write() = Some(myself);
        Ok(RerankerState { ctx })
    }

    async fn handle(
        &self,
        _myself: ActorRef<RerankerMsg>,
        msg: RerankerMsg,
        state: &mut RerankerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RerankerMsg::Score {
                query,
                passages,
                cancelled,
                reply,
            } => {
                let Some(model) = state.ctx.runtime.reranker.clone() else {
                    let _ = reply.send(Err("this node has no reranker".into()));
                    return Ok(());
                };
                if cancelled.load(Ordering::Acquire) || reply.is_closed() {
                    state
                        .ctx
                        .runtime
                        .metrics
                        .cancelled_work
                        .with_label_values(&["reranking"])
                        .inc();
                    return Ok(());
                }
                let start = Instant::now();
                let name = model.model_name().to_string();
                let passages_len = passages.len();
                // Reranking is on the query path: it runs on the query pool, and ingest steps
                // aside for it as it does for a query embedding.
                // The gate is entered before the pool is: a pool thread that waited in the
                // gate (for an ingest turn) could be the one the query pass in flight needs.
                let gate = state.ctx.runtime.query_gate.clone();
                let query_guard = match tokio::task::spawn_blocking(move || gate.hold()).await {
                    Ok(guard) => guard,
                    Err(e) => {
                        let _ = reply.send(Err(format!("reranking: {e}")));
                        return Ok(());
                    }
                };
                let stop = cancelled.clone();
                let result = crate::runtime::Runtime::on_pool(
                    &state.ctx.runtime.query_pool,
                    "reranking",
                    move || {
                        let _query = query_guard;
                        let refs: Vec<&str> = passages.iter().map(String::as_str).collect();
                        model.score_cancellable(&query, &refs, &|| stop.load(Ordering::Acquire))
                    },
                )
                .await;
                if matches!(result, Ok(Err(InferenceError::Cancelled))) {
                    state
                        .ctx
                        .runtime
                        .metrics
                        .cancelled_work
                        .with_label_values(&["reranking"])
                        .inc();
                }
                state
                    .ctx
                    .runtime
                    .metrics
                    .rerank_seconds
                    .with_label_values(&[name.as_str()])
                    .observe(start.elapsed().as_secs_f64());
                state
                    .ctx
                    .runtime
                    .metrics
                    .rerank_batch_size
                    .with_label_values(&[name.as_str()])
                    .observe(passages_len as f64);
                let answer = match result {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let _ = reply.send(answer);
            }
            RerankerMsg::Panic => panic!("fault injection: reranker panics"),
        }
        Ok(())
    }
}
