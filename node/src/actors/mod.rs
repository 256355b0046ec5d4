//! The supervision tree: one [`supervisor::NodeSupervisor`] over the embedder actors, the
//! reranker actor (when configured), one actor per index shard and the ingest workers.

pub mod embedder;
pub mod ingest;
pub mod registry;
pub mod reranker;
pub mod shard;
pub mod supervisor;

use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};

use crate::error::NodeError;

/// Ask an actor and wait for its answer, mapping every failure to a [`NodeError::Actor`].
pub async fn ask<M, T>(
    actor: &ActorRef<M>,
    what: &str,
    timeout: Duration,
    make: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Result<T, NodeError>
where
    M: ractor::Message,
    T: Send + 'static,
{
    match actor.call(make, Some(timeout)).await {
        Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
        Ok(ractor::rpc::CallResult::Timeout) => Err(NodeError::Actor(format!(
            "{what} did not answer within {} ms",
            timeout.as_millis()
        ))),
        Ok(ractor::rpc::CallResult::SenderError) => Err(NodeError::Actor(format!(
            "{what} stopped before answering (it is being restarted; retry)"
        ))),
        Err(e) => Err(NodeError::Actor(format!("{what} is unavailable: {e}"))),
    }
}
