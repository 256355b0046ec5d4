use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::types::NodeId;

/// Everything that can go wrong in the cluster layer. It travels between nodes (a forwarded write
/// answers with it), so it is plain data.
#[derive(Debug, Clone, Error, PartialEq, Serialize, Deserialize)]
pub enum ClusterError {
    /// No leader is known (an election is running, or this node is cut off from the others).
    #[error("no leader: {0}")]
    NoLeader(String),
    /// The leader cannot reach a majority of the voters, so nothing can commit.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// This node is not the leader (answered to a forwarded request; the caller tries the leader).
    #[error("node {node} is not the leader (leader: {leader:?})")]
    NotLeader {
        node: NodeId,
        leader: Option<NodeId>,
    },
    /// Another node could not be reached.
    #[error("cannot reach {0}")]
    Unreachable(String),
    /// Another node refused an internal request (wrong secret, another cluster).
    #[error("refused: {0}")]
    Refused(String),
    /// An admin request that cannot be done as asked (removing the last voter, ...).
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// The node is already initialized, or belongs to another cluster.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// A request sent to the leader got no answer in time: it may or may not have been applied.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Consensus stopped on this node (its storage failed): the node stops.
    #[error("consensus stopped: {0}")]
    Fatal(String),
    #[error("{0}")]
    Internal(String),
    /// Consensus had stopped on this node (its storage failed) before the request did anything:
    /// another node can take it. (A write that consensus had already taken when it stopped answers
    /// [`ClusterError::Timeout`].) Last, so that the variants before it keep their numbers on the
    /// wire.
    #[error("consensus stopped: {0}")]
    Stopped(String),
}

impl ClusterError {
    /// Nothing was proposed: the same request may be sent again (to the new leader).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClusterError::NoLeader(_) | ClusterError::NotLeader { .. }
        )
    }
}
