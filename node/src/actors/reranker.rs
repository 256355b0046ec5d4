//! The reranker actor: scores (query, passage) pairs with the node's cross-encoder, on the query
//! pool's threads (ingest steps aside meanwhile, as for a query embedding). Present only when the
//! node is started with a reranker model.

use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::context::NodeContext;

pub enum RerankerMsg {
    /// Raw scores (logits) of `passages` for `query`, in input order.
    Score {
        query: String,
        passages: Vec<String>,
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
        *ctx.reranker_actor.write() = Some(myself);
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
                reply,
            } => {
                let Some(model) = state.ctx.reranker.clone() else {
                    let _ = reply.send(Err("this node has no reranker".into()));
                    return Ok(());
                };
                let start = Instant::now();
                let name = model.model_name().to_string();
                // Reranking is on the query path: it runs on the query pool, and ingest steps
                // aside for it as it does for a query embedding.
                let gate = state.ctx.query_gate.clone();
                let result = NodeContext::on_pool(&state.ctx.query_pool, "reranking", move || {
                    let _query = gate.hold();
                    let refs: Vec<&str> = passages.iter().map(String::as_str).collect();
                    model.score(&query, &refs)
                })
                .await;
                state
                    .ctx
                    .metrics
                    .rerank_seconds
                    .with_label_values(&[name.as_str()])
                    .observe(start.elapsed().as_secs_f64());
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
