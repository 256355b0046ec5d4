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
use crate::node::{CLUSTER_ID, NODE_ID, PROMOTE_PENDING, REJOINING, RESTORING};
use crate::state_machine::{current_snapshot, read_meta, set_current, AppliedMeta};
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
    /// A snapshot that holds at least everything this node had applied when asked: the current
    /// one when it does, else one built now (by Raft's apply task, so nothing applies while it is
    /// written). Returns its file, opened, so that a newer snapshot replacing it on disk cannot
    /// take it away.
    pub async fn fresh_snapshot(
        &self,
        limit: Duration,
    ) -> Result<(SnapshotFile, std::fs::File), ClusterError> {
        if !self.is_initialized().await || self.is_rejoining() {
            return Err(ClusterError::NoLeader(
                "this node is not a member of a cluster yet: it has no state to back up".into(),
            ));
        }
        let want = self.applied_index();
        let deadline = Instant::now() + limit;
        let mut triggered = false;
        loop {
            if let Some(found) = self.current_snapshot()? {
                if found.0.applied_index >= want {
                    return Ok(found);
                }
            }
            // None covers what was applied (or a newer one replaced it as it was opened): build
            // one, once, and wait for it.
            if !triggered {
                self.raft
                    .trigger()
                    .snapshot()
                    .await
                    // (a backup changes nothing: another node can make it)
                    .map_err(|e| ClusterError::Stopped(e.to_string()))?;
                triggered = true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClusterError::Timeout(format!(
                    "no snapshot at log index {want} after {} ms (cluster.backup_timeout_ms)",
                    limit.as_millis()
                )));
            }
            let mut rx = self.raft.metrics();
            let changed = tokio::time::timeout(left.min(Duration::from_millis(500)), async {
                rx.changed().await
            })
            .await;
            if matches!(changed, Ok(Err(_))) {
                return Err(ClusterError::Stopped("consensus has stopped".into()));
            }
        }
    }

    /// The current snapshot, opened: None when there is none, or when a newer one replaced it
    /// between reading its name and opening it (the caller asks again). A snapshot's files never
    /// change under its id, so the file opened is the one the meta describes.
    fn current_snapshot(&self) -> Result<Option<(SnapshotFile, std::fs::File)>, ClusterError> {
        let Some((meta, path)) = current_snapshot(&self.settings.snapshot_dir) else {
            return Ok(None);
        };
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ClusterError::Internal(format!(
                    "the current snapshot {}: {e}",
                    path.display()
                )))
            }
        };
        Ok(Some((
            SnapshotFile {
                path,
                applied_index: meta.last_log_id.map(|l| l.index).unwrap_or(0),
                snapshot_id: meta.snapshot_id,
            },
            file,
        )))
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
    let tree = log.tree();
    // A restore that stopped half way left its marker: it is done again from the start.
    let interrupted = tree.get_meta(RESTORING).map_err(internal)?.is_some();
    let mut used = store.applied_index().map_err(internal)? != 0 || !log.is_empty();
    for key in [
        VOTE,
        PURGED,
        NODE_ID,
        CLUSTER_ID,
        REJOINING,
        PROMOTE_PENDING,
    ] {
        used |= tree.get_meta(key).map_err(internal)?.is_some();
    }
    if used && !interrupted {
        return Err(ClusterError::Conflict(
            "the data folder already holds a node's state: restore into a new folder".into(),
        ));
    }
    // Until the marker is removed at the end, the node refuses to start on this folder.
    tree.put_meta(RESTORING, b"1").map_err(internal)?;
    tree.flush().map_err(internal)?;
    for key in [REJOINING, PROMOTE_PENDING] {
        tree.remove_meta(key).map_err(internal)?;
    }
    let applied = store
        .install_snapshot(backup)
        .map_err(|e| ClusterError::BadRequest(format!("{}: {e}", backup.display())))?;
    let old = read_meta(store).map_err(internal)?;
    let last = old
        .last_applied
        .filter(|l| l.index == applied)
        .ok_or_else(|| {
            ClusterError::BadRequest(format!(
                "the backup's log record does not match its state (at {applied})"
            ))
        })?;
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
    tree.remove_meta(RESTORING).map_err(internal)?;
    tree.flush().map_err(internal)?;
    Ok(Restored {
        node_id,
        cluster_id,
        applied_index: applied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{decode, LogId};
    use openraft::CommittedLeaderId;
    use shoal_storage::{CollectionSpec, Command, HnswParams};

    /// A backup file of a store at log index 2 of term 4, made by members 1 and 2.
    fn backup(dir: &Path) -> PathBuf {
        let source = Store::temporary().unwrap();
        source
            .apply(
                1,
                &Command::CreateCollection {
                    name: "c".into(),
                    spec: CollectionSpec {
                        dimension: 2,
                        hnsw: HnswParams::default(),
                        quantization: Default::default(),
                        vectors_on_disk: false,
                    },
                    at_ms: 1,
                },
            )
            .unwrap();
        let last = LogId::new(CommittedLeaderId::new(4, 2), 2);
        let old = Membership::new(
            vec![BTreeSet::from([1, 2])],
            BTreeMap::from([
                (1, NodeInfo { addr: "a".into() }),
                (2, NodeInfo { addr: "b".into() }),
            ]),
        );
        let meta = AppliedMeta {
            last_applied: Some(last),
            membership: StoredMembership::new(Some(last), old),
        };
        source.advance(2, Some(&encode(&meta))).unwrap();
        let path = dir.join("backup");
        source.export_snapshot(&path).unwrap();
        path
    }

    fn restore(store: &Store, backup: &Path, snaps: &Path) -> Result<Restored, ClusterError> {
        restore_as_new_cluster(store, backup, 0, snaps, Some(9), "http://new:1".into())
    }

    #[test]
    fn a_restored_folder_is_the_one_voter_of_a_new_cluster_in_a_later_term() {
        let dir = tempfile::tempdir().unwrap();
        let file = backup(dir.path());
        let store = Store::temporary().unwrap();
        let r = restore(&store, &file, &dir.path().join("snaps")).unwrap();
        assert_eq!((r.node_id, r.applied_index), (9, 2));
        let meta = read_meta(&store).unwrap();
        let members: Vec<NodeId> = meta.membership.membership().voter_ids().collect();
        assert_eq!(members, [9]);
        let log = LogStore::open(&store, 0).unwrap();
        let vote: Vote = decode(&log.tree().get_meta(VOTE).unwrap().unwrap()).unwrap();
        assert_eq!(vote.leader_id().term, 4);
        assert!(log.tree().get_meta(RESTORING).unwrap().is_none());
        assert!(log.tree().get_meta(CLUSTER_ID).unwrap().is_some());
        assert!(dir.path().join("snaps/current").is_file());
        // a second restore into it is refused
        let e = restore(&store, &file, &dir.path().join("snaps")).unwrap_err();
        assert!(e.to_string().contains("new folder"), "{e}");
    }

    #[test]
    fn a_folder_a_node_started_in_is_refused_and_an_interrupted_restore_is_done_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = backup(dir.path());
        // `serve` ran once and never joined: an id and the rejoining mark, nothing else
        let store = Store::temporary().unwrap();
        let log = LogStore::open(&store, 0).unwrap();
        log.tree().put_meta(NODE_ID, &5u64.to_be_bytes()).unwrap();
        log.tree().put_meta(REJOINING, b"1").unwrap();
        let e = restore(&store, &file, &dir.path().join("s1")).unwrap_err();
        assert!(e.to_string().contains("new folder"), "{e}");

        // a restore that stopped half way (a damaged file here) leaves its mark, and is redone
        let store = Store::temporary().unwrap();
        let damaged = dir.path().join("damaged");
        let mut bytes = std::fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(&damaged, bytes).unwrap();
        assert!(restore(&store, &damaged, &dir.path().join("s2")).is_err());
        let log = LogStore::open(&store, 0).unwrap();
        assert!(log.tree().get_meta(RESTORING).unwrap().is_some());
        let r = restore(&store, &file, &dir.path().join("s2")).unwrap();
        assert_eq!(r.applied_index, 2);
        assert!(log.tree().get_meta(RESTORING).unwrap().is_none());
    }
}
