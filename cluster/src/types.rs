//! openraft's type configuration for shoal, and the small types that cross the wire.

use std::fmt;

use serde::{Deserialize, Serialize};
use shoal_storage::{Command, Outcome, StoreError};

/// A node's id in the cluster (random, or set in `cluster.node_id`).
pub type NodeId = u64;

/// One Raft group. Every collection lives in group 0 today; the id is in every internal route and
/// storage key so that a later version can split collections over several groups.
pub type GroupId = u32;

/// The group that carries everything today.
pub const DEFAULT_GROUP: GroupId = 0;

/// What the cluster knows of a member: where to reach it (its HTTP base address, for example
/// `http://10.0.0.2:7400`; the public API and the internal routes share it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// Why the state machine refused a command: an answer to the proposer, not a failure. The same on
/// every replica (apply is deterministic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    CollectionNotFound(String),
    CollectionExists(String),
    DocumentNotFound {
        collection: String,
        doc: String,
    },
    Invalid(String),
    UserExists(String),
    UserNotFound(String),
    ApiKeyNotFound(String),
    /// A record the command needed did not decode (the command failed, the node goes on).
    Unreadable(String),
}

impl Rejection {
    pub fn from_store(e: &StoreError) -> Rejection {
        match e {
            StoreError::CollectionNotFound(c) => Rejection::CollectionNotFound(c.clone()),
            StoreError::CollectionExists(c) => Rejection::CollectionExists(c.clone()),
            StoreError::DocumentNotFound { collection, doc } => Rejection::DocumentNotFound {
                collection: collection.clone(),
                doc: doc.clone(),
            },
            StoreError::InvalidCommand(m) => Rejection::Invalid(m.clone()),
            StoreError::UserExists(u) => Rejection::UserExists(u.clone()),
            StoreError::UserNotFound(u) => Rejection::UserNotFound(u.clone()),
            StoreError::ApiKeyNotFound(k) => Rejection::ApiKeyNotFound(k.clone()),
            other => Rejection::Unreadable(other.to_string()),
        }
    }

    /// Back into the storage error it stands for (so callers map it to HTTP as before).
    pub fn into_store_error(self) -> StoreError {
        match self {
            Rejection::CollectionNotFound(c) => StoreError::CollectionNotFound(c),
            Rejection::CollectionExists(c) => StoreError::CollectionExists(c),
            Rejection::DocumentNotFound { collection, doc } => {
                StoreError::DocumentNotFound { collection, doc }
            }
            Rejection::Invalid(m) => StoreError::InvalidCommand(m),
            Rejection::UserExists(u) => StoreError::UserExists(u),
            Rejection::UserNotFound(u) => StoreError::UserNotFound(u),
            Rejection::ApiKeyNotFound(k) => StoreError::ApiKeyNotFound(k),
            Rejection::Unreadable(m) => StoreError::Corrupt {
                key: "(see the node's log)".into(),
                reason: m,
            },
        }
    }
}

/// What applying one log entry answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ApplyResponse {
    Applied(Outcome),
    Rejected(Rejection),
    /// A blank or membership entry: no command.
    Nothing,
}

openraft::declare_raft_types!(
    /// shoal's Raft: commands of the store as log entries, snapshots as files on disk.
    pub TypeConfig:
        D = Command,
        R = ApplyResponse,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type Membership = openraft::Membership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
pub type RpcError<E = openraft::error::Infallible> =
    openraft::error::RPCError<NodeId, NodeInfo, RaftError<E>>;
pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, NodeInfo>;
pub type CheckIsLeaderError = openraft::error::CheckIsLeaderError<NodeId, NodeInfo>;

/// bincode (standard configuration) for everything the cluster writes or sends.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .unwrap_or_else(|e| unreachable!("bincode encode into Vec failed: {e}"))
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (v, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!("{} trailing bytes", bytes.len() - used));
    }
    Ok(v)
}
