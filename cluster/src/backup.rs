//! Backups: a consistent snapshot of a running node's state, and a new node made from one.
//!
//! A backup is a snapshot file of the store (the format of `shoal_storage::snapshot`), the same
//! file Raft sends a node that catches up: it holds every collection, document, chunk and job,
//! and the log position and membership it was taken at. Restoring it makes a node that is the
//! only member of a new cluster (a new cluster id), at the backup's log position: other nodes
//! then join it as they would any first node.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use openraft::Membership;
use shoal_storage::Store;

use crate::log_store::{LogStore, PURGED, VOTE};
use crate::node::{CLUSTER_ID, NODE_ID};
use crate::state_machine::{read_meta, set_current, AppliedMeta};
use crate::types::{encode, NodeId, NodeInfo, SnapshotMeta, StoredMembership, Vote};
use crate::{ClusterError, ClusterNode};

/// A snapshot file of this node's state, taken by Raft's apply task (so nothing applied while it
/// was written).
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub path: PathBuf,
    /// The last log index the state holds.
    pub applied_index: u64,
    pub snapshot_id: String,
}

impl ClusterNode {
    /// Build a snapshot that holds at least everything this node had applied when asked, and
    /// return its file (open it at once: a later snapshot replaces it).
    pub async fn fresh_snapshot(&self, limit: Duration) -> Result<SnapshotFile, ClusterError> {
        let want = self.applied_index();
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| ClusterError::Fatal(e.to_string()))?;
        let deadline = Instant::now() + limit;
        let mut rx = self.raft.metrics();
        loop {
            let taken = rx
                .borrow_and_update()
                .snapshot
                .map(|l| l.index)
                .unwrap_or(0);
            if taken >= want {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClusterError::Timeout(format!(
                    "no snapshot at log index {want} after {} ms (the last one is at {taken})",
                    limit.as_millis()
                )));
            }
            if tokio::time::timeout(left, rx.changed())
                .await
                .is_ok_and(|r| r.is_err())
            {
                return Err(ClusterError::Fatal("consensus has stopped".into()));
            }
        }
        let dir = &self.settings.snapshot_dir;
        let id = std::fs::read_to_string(dir.join("current"))
            .map_err(|e| ClusterError::Internal(format!("the current snapshot: {e}")))?;
        let meta: SnapshotMeta = std::fs::read(dir.join(format!("{id}.meta")))
            .map_err(|e| e.to_string())
            .and_then(|b| crate::types::decode(&b))
            .map_err(|e| ClusterError::Internal(format!("the current snapshot's meta: {e}")))?;
        Ok(SnapshotFile {
            path: dir.join(format!("{id}.snap")),
            applied_index: meta.last_log_id.map(|l| l.index).unwrap_or(0),
            snapshot_id: id,
        })
    }
}

/// What a restore made.
#[derive(Debug, Clone)]
pub struct Restored {
    pub node_id: NodeId,
    pub cluster_id: String,
    /// The log index the backup was taken at (the new cluster goes on from there).
    pub applied_index: u64,
}

/// Make the state in `backup` the state of a new node in `store` (whose data folder must be new):
/// the one member (a voter, reached at `addr`) of a new cluster, at the backup's log position.
/// The backup is checked whole (its checksum) before anything is kept.
pub fn restore_as_new_cluster(
    store: &Store,
    backup: &Path,
    group: u32,
    snapshot_dir: &Path,
    node_id: Option<NodeId>,
    addr: String,
) -> Result<Restored, ClusterError> {
    let node_id = node_id.unwrap_or_else(crate::node::random_node_id);
    let internal = |e: shoal_storage::StoreError| ClusterError::Internal(e.to_string());
    let log = LogStore::open(store, group).map_err(internal)?;
    if store.applied_index().map_err(internal)? != 0
        || !log.is_empty()
        || log.tree().get_meta(VOTE).map_err(internal)?.is_some()
        || log.tree().get_meta(PURGED).map_err(internal)?.is_some()
    {
        return Err(ClusterError::Conflict(
            "the data folder already holds a node's state: restore into a new folder".into(),
        ));
    }
    let applied = store
        .install_snapshot(backup)
        .map_err(|e| ClusterError::BadRequest(format!("{}: {e}", backup.display())))?;
    let old = read_meta(store).map_err(internal)?;
    let last = old
        .last_applied
        .ok_or_else(|| ClusterError::BadRequest("the backup holds no applied log entry".into()))?;
    // The backup's members are another cluster's: this node is the only one of the new one.
    let membership = Membership::new(
        vec![BTreeSet::from([node_id])],
        BTreeMap::from([(node_id, NodeInfo { addr })]),
    );
    let meta = AppliedMeta {
        last_applied: Some(last),
        membership: StoredMembership::new(Some(last), membership),
    };
    store
        .advance(applied, Some(&encode(&meta)))
        .map_err(internal)?;
    store.sync().map_err(internal)?;
    // The log starts after the backup's last entry; the vote is in its term, so the first
    // election of the new cluster is in a later one.
    let tree = log.tree();
    tree.put_meta(NODE_ID, &node_id.to_be_bytes())
        .map_err(internal)?;
    tree.purge_through(last.index, (PURGED, &encode(&last)))
        .map_err(internal)?;
    tree.put_meta(VOTE, &encode(&Vote::new(last.leader_id.term, node_id)))
        .map_err(internal)?;
    let cluster_id = uuid::Uuid::new_v4().to_string();
    tree.put_meta(CLUSTER_ID, cluster_id.as_bytes())
        .map_err(internal)?;
    tree.flush().map_err(internal)?;
    // A snapshot of the restored state, for the nodes that join it.
    std::fs::create_dir_all(snapshot_dir)
        .map_err(|e| ClusterError::Internal(format!("{}: {e}", snapshot_dir.display())))?;
    let id = format!(
        "{}-{}-{}-restored",
        last.leader_id.term, last.leader_id.node_id, last.index
    );
    store
        .export_snapshot(&snapshot_dir.join(format!("{id}.snap")))
        .map_err(internal)?;
    let snap_meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: meta.membership.clone(),
        snapshot_id: id.clone(),
    };
    set_current(snapshot_dir, &id, &snap_meta)
        .map_err(|e| ClusterError::Internal(format!("{}: {e}", snapshot_dir.display())))?;
    Ok(Restored {
        node_id,
        cluster_id,
        applied_index: applied,
    })
}
