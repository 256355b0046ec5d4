//! Consensus for shoal: one Raft group (openraft) carries every command of the store.
//!
//! - [`types`]: openraft's type configuration (commands as entries, snapshots as files).
//! - [`log_store`]: the Raft log in its own tree of the store's sled database.
//! - [`state_machine`]: committed entries into the store's deterministic `apply`, effects into
//!   the node's index; snapshots built from a consistent view and installed in place.
//! - [`network`] and [`server`]: the internal network (HTTP, bincode bodies, a cluster secret).
//! - [`node`]: a node's membership: propose (forwarded to the leader), read index, join,
//!   promote, remove, status.
//!
//! A single node is a one-member cluster of the same code.

// openraft's trait signatures return its `StorageError` (over 200 bytes) and the internal routes
// answer axum `Response`s as errors; boxing them would only fight the APIs they come from.
#![allow(clippy::result_large_err)]

pub mod backup;
pub mod error;
pub mod log_store;
pub mod network;
pub mod node;
pub mod server;
pub mod state_machine;
pub mod types;

pub use error::ClusterError;
pub use node::{ClusterNode, ClusterSettings, ClusterStatus, MemberStatus, NodeStatus, Proposed};
pub use server::internal_router;
pub use state_machine::IndexSink;
pub use types::{GroupId, NodeId, NodeInfo, DEFAULT_GROUP};

/// Things the cluster layer counts; the node turns them into metrics.
pub trait ClusterEvents: Send + Sync + 'static {
    /// A write arrived on a node that is not the leader and was forwarded to it.
    fn forwarded_write(&self) {}
    fn snapshot_built(&self) {}
    fn snapshot_installed(&self) {}
}

/// Counts nothing.
pub struct NoEvents;

impl ClusterEvents for NoEvents {}

/// An index that mirrors nothing (a store used without shards: tests, tools).
#[doc(hidden)]
pub struct NoIndex;

impl IndexSink for NoIndex {
    fn applied(&self, _: u64, _: Vec<shoal_storage::Effect>) {}
    fn replaced(&self, _: u64) {}
}
