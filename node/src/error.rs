//! The node's error type, and how it maps onto the API's error kinds.

use shoal_api::ApiError;
use shoal_cluster::ClusterError;
use shoal_index::IndexError;
use shoal_inference::InferenceError;
use shoal_storage::StoreError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotReady(String),
    /// An actor did not answer (stopped, restarting, or timed out).
    #[error("{0}")]
    Actor(String),
    #[error("{0}")]
    Internal(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl From<tokio::task::JoinError> for NodeError {
    fn from(e: tokio::task::JoinError) -> Self {
        NodeError::Internal(format!("background task failed: {e}"))
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let msg = e.to_string();
        match e {
            NodeError::Store(StoreError::CollectionNotFound(_))
            | NodeError::Store(StoreError::DocumentNotFound { .. })
            | NodeError::Store(StoreError::UserNotFound(_))
            | NodeError::Store(StoreError::ApiKeyNotFound(_))
            | NodeError::NotFound(_) => ApiError::NotFound(msg),
            NodeError::Store(StoreError::CollectionExists(_))
            | NodeError::Store(StoreError::UserExists(_))
            | NodeError::Store(StoreError::DocumentChanged(_)) => ApiError::Conflict(msg),
            NodeError::Store(StoreError::InvalidCommand(_))
            | NodeError::Index(IndexError::Dimension { .. })
            | NodeError::Index(IndexError::ZeroVector)
            | NodeError::Index(IndexError::Filter(_))
            | NodeError::Index(IndexError::ScanTooLarge { .. })
            | NodeError::Inference(InferenceError::Input(_))
            | NodeError::BadRequest(_) => ApiError::BadRequest(msg),
            // (the shard's keyword index failed: vector search still answers)
            NodeError::NotReady(_)
            | NodeError::Actor(_)
            | NodeError::Index(IndexError::Keyword(_)) => ApiError::NotReady(msg),
            // Work stopped because its request was gone: nobody reads this answer.
            NodeError::Inference(InferenceError::Cancelled) => ApiError::Timeout(msg),
            NodeError::Cluster(c) => match c {
                // Nothing was done: retry.
                ClusterError::NoLeader(_)
                | ClusterError::NoQuorum(_)
                | ClusterError::NotLeader { .. }
                | ClusterError::Unreachable(_)
                | ClusterError::Refused(_)
                // (this node's consensus had stopped before the request did anything)
                | ClusterError::Stopped(_) => ApiError::NotReady(msg),
                // It may have been done: the outcome is unknown.
                ClusterError::Timeout(_) => ApiError::Timeout(msg),
                ClusterError::BadRequest(_) => ApiError::BadRequest(msg),
                ClusterError::NotFound(_) => ApiError::NotFound(msg),
                ClusterError::Conflict(_) => ApiError::Conflict(msg),
                ClusterError::TooLarge(_) => ApiError::PayloadTooLarge(msg),
                ClusterError::Fatal(_) | ClusterError::Internal(_) => ApiError::Internal(msg),
            },
            NodeError::Store(_)
            | NodeError::Index(_)
            | NodeError::Inference(_)
            | NodeError::Internal(_)
            | NodeError::Config(_) => ApiError::Internal(msg),
        }
    }
}

/// A full ingest queue: 429 with when to come back.
impl From<crate::ingest_queue::QueueFull> for ApiError {
    fn from(full: crate::ingest_queue::QueueFull) -> Self {
        ApiError::TooManyRequests {
            message: full.message,
            retry_after_s: full.retry_after.as_secs().max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn status(e: ClusterError) -> StatusCode {
        ApiError::from(NodeError::Cluster(e)).status()
    }

    #[test]
    fn a_stopped_consensus_answers_503_and_a_write_it_had_taken_504() {
        // nothing was done: another node (or a later try) can take the request
        assert_eq!(
            status(ClusterError::Stopped(
                "raft stopped; nothing was done".into()
            )),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(ClusterError::NoLeader("stopping".into())),
            StatusCode::SERVICE_UNAVAILABLE
        );
        // consensus failed here in a way that says nothing of the outcome (joining, starting)
        assert_eq!(
            status(ClusterError::Fatal("raft stopped".into())),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        // it may have been done: the outcome is unknown
        assert_eq!(
            status(ClusterError::Timeout("outcome is unknown".into())),
            StatusCode::GATEWAY_TIMEOUT
        );
    }
}
