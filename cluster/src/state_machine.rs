//! The state machine: every committed entry goes to the store's deterministic `apply`, in log
//! order, and its effects to the index sink (the node's shard actors). The applied log id and the
//! membership are written in the same sled batch as the state they describe, so after a crash the
//! store says exactly which entry it reflects.
//!
//! [`StateMachine`] is plain and synchronous (no tokio, HTTP or actors), so `apply` is tested on
//! its own; [`RaftStateMachineStore`] adapts it to openraft: applies run on a blocking thread,
//! snapshots are files under the node's `snapshots/` folder, built from a consistent view (the
//! export runs while openraft's apply task waits for it: nothing applies meanwhile) and installed
//! in place of the whole state.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use shoal_storage::{Effect, Store, StoreError};

use crate::types::{
    decode, encode, ApplyResponse, Entry, LogId, NodeId, Rejection, Snapshot, SnapshotMeta,
    StorageError, StoredMembership, TypeConfig,
};
use crate::ClusterEvents;

/// Where the effects of applied entries go (the node mirrors them in its index shards).
pub trait IndexSink: Send + Sync + 'static {
    /// Entry `index` was applied (called for every entry, in log order); `effects` are what the
    /// index must mirror (none for refused commands and consensus entries).
    fn applied(&self, index: u64, effects: Vec<Effect>);
    /// The whole state was replaced by a snapshot whose last entry is `index`: rebuild the
    /// index from the store.
    fn replaced(&self, index: u64);
}

/// The consensus layer's record of the last applied entry, kept in the store (`m/raft`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppliedMeta {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// The store and the index sink, applying entries one at a time.
pub struct StateMachine {
    store: Store,
    sink: Arc<dyn IndexSink>,
    meta: Mutex<AppliedMeta>,
    /// Tests of the failure path: the next apply fails as a broken disk would.
    fail_next: std::sync::atomic::AtomicBool,
}

impl StateMachine {
    pub fn new(store: Store, sink: Arc<dyn IndexSink>) -> Result<StateMachine, StoreError> {
        let meta = read_meta(&store)?;
        Ok(StateMachine {
            store,
            sink,
            meta: Mutex::new(meta),
            fail_next: Default::default(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Make the next apply fail as a broken disk would (tests of the failure path).
    #[doc(hidden)]
    pub fn fail_next_apply(&self) {
        self.fail_next
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The last applied entry and the membership it knew.
    pub fn applied_state(&self) -> AppliedMeta {
        self.meta.lock().clone()
    }

    /// Re-read the record after the store was replaced.
    fn reload(&self) -> Result<AppliedMeta, StoreError> {
        let meta = read_meta(&self.store)?;
        *self.meta.lock() = meta.clone();
        Ok(meta)
    }

    /// Apply one committed entry. A refused command is an answer ([`ApplyResponse::Rejected`]);
    /// an error means the store itself failed, and the node must stop.
    pub fn apply(&self, entry: &Entry) -> Result<ApplyResponse, StoreError> {
        if self
            .fail_next
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            return Err(StoreError::Fatal("injected storage failure".into()));
        }
        let index = entry.log_id.index;
        let mut meta = self.meta.lock().clone();
        meta.last_applied = Some(entry.log_id);
        let response = match &entry.payload {
            EntryPayload::Blank => {
                self.store.advance(index, Some(&encode(&meta)))?;
                self.sink.applied(index, Vec::new());
                ApplyResponse::Nothing
            }
            EntryPayload::Membership(m) => {
                meta.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                self.store.advance(index, Some(&encode(&meta)))?;
                self.sink.applied(index, Vec::new());
                ApplyResponse::Nothing
            }
            EntryPayload::Normal(command) => {
                match self
                    .store
                    .apply_logged(index, command, Some(&encode(&meta)))
                {
                    Ok(applied) => {
                        self.sink.applied(index, applied.effects);
                        ApplyResponse::Applied(applied.outcome)
                    }
                    Err(e) if e.is_rejection() => {
                        self.sink.applied(index, Vec::new());
                        ApplyResponse::Rejected(Rejection::from_store(&e))
                    }
                    // A storage failure, or a record this replica cannot read (corrupt here,
                    // maybe fine elsewhere): going on would let it differ from the others.
                    // The node stops; wiped, it catches up from a snapshot.
                    Err(e) => {
                        tracing::error!(index, kind = command.kind(), error = %e, "applying a command failed");
                        return Err(e);
                    }
                }
            }
        };
        *self.meta.lock() = meta;
        Ok(response)
    }
}

pub(crate) fn read_meta(store: &Store) -> Result<AppliedMeta, StoreError> {
    match store.log_meta()? {
        Some(bytes) => decode(&bytes).map_err(|e| StoreError::Corrupt {
            key: "m/raft".into(),
            reason: e,
        }),
        None => Ok(AppliedMeta::default()),
    }
}

fn sm_error(verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        verb,
        openraft::AnyError::error(e.to_string()),
    )
    .into()
}

fn snapshot_error(verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageIOError::new(
        ErrorSubject::Snapshot(None),
        verb,
        openraft::AnyError::error(e.to_string()),
    )
    .into()
}

/// How long the state a snapshot replaced stays on disk (reads that started on it finish first).
const REPLACED_STATE_GRACE: Duration = Duration::from_secs(60);

/// The state machine as openraft sees it.
pub struct RaftStateMachineStore {
    sm: Arc<StateMachine>,
    snapshots: PathBuf,
    /// The snapshot file being received, if any.
    receiving: Option<PathBuf>,
    /// When a snapshot last replaced the state, and which install it was (the old tree is
    /// cleared a while later, unless another install came since).
    replaced_at: Option<(Instant, u64)>,
    events: Arc<dyn ClusterEvents>,
}

impl RaftStateMachineStore {
    pub fn new(
        sm: Arc<StateMachine>,
        snapshots: PathBuf,
        events: Arc<dyn ClusterEvents>,
    ) -> std::io::Result<RaftStateMachineStore> {
        std::fs::create_dir_all(&snapshots)?;
        // Leftovers of transfers or builds that never finished.
        for entry in std::fs::read_dir(&snapshots)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".part") || name.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(RaftStateMachineStore {
            sm,
            snapshots,
            receiving: None,
            replaced_at: None,
            events,
        })
    }

    fn current(&self) -> Option<(SnapshotMeta, PathBuf)> {
        current_snapshot(&self.snapshots)
    }
}

/// The newest snapshot in `dir`: its meta and data file.
pub(crate) fn current_snapshot(dir: &Path) -> Option<(SnapshotMeta, PathBuf)> {
    let id = std::fs::read_to_string(dir.join("current")).ok()?;
    let id = id.trim();
    let meta: SnapshotMeta = decode(&std::fs::read(dir.join(format!("{id}.meta"))).ok()?).ok()?;
    let data = dir.join(format!("{id}.snap"));
    data.is_file().then_some((meta, data))
}

/// Make `id` (with its `.snap` and `.meta` in `dir`) the current snapshot and remove older ones.
pub(crate) fn set_current(dir: &Path, id: &str, meta: &SnapshotMeta) -> std::io::Result<()> {
    let meta_tmp = dir.join(format!("{id}.meta.tmp"));
    std::fs::write(&meta_tmp, encode(meta))?;
    std::fs::rename(&meta_tmp, dir.join(format!("{id}.meta")))?;
    let tmp = dir.join("current.tmp");
    std::fs::write(&tmp, id)?;
    std::fs::rename(&tmp, dir.join("current"))?;
    // Older snapshots (a follower still streaming one keeps its open file).
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stem = name
            .strip_suffix(".snap")
            .or_else(|| name.strip_suffix(".meta"));
        if stem.is_some_and(|s| s != id) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

fn safe_id(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A snapshot already exported (openraft builds it on another task; the export itself ran while
/// applies waited).
pub struct Built {
    result: Result<(SnapshotMeta, PathBuf), StorageError>,
    events: Arc<dyn ClusterEvents>,
}

impl RaftSnapshotBuilder<TypeConfig> for Built {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (meta, path) = self.result.clone()?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| snapshot_error(ErrorVerb::Read, e))?;
        self.events.snapshot_built();
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for RaftStateMachineStore {
    type SnapshotBuilder = Built;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let m = self.sm.applied_state();
        Ok((m.last_applied, m.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let sm = self.sm.clone();
        let clear_replaced = self
            .replaced_at
            .filter(|(t, _)| t.elapsed() >= REPLACED_STATE_GRACE)
            .map(|(_, install)| install);
        if let Some(install) = clear_replaced {
            self.replaced_at = None;
            // Beside the applies (it may take a while); an install waits for it.
            let store = sm.store().clone();
            let _ = std::thread::Builder::new()
                .name("clear-replaced".into())
                .spawn(move || {
                    if let Err(e) = store.clear_replaced_state(install) {
                        tracing::warn!(error = %e, "could not clear the state a snapshot replaced");
                    }
                });
        }
        tokio::task::spawn_blocking(move || {
            entries
                .iter()
                .map(|e| sm.apply(e))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| sm_error(ErrorVerb::Write, e))?
        .map_err(|e| sm_error(ErrorVerb::Write, e))
    }

    async fn get_snapshot_builder(&mut self) -> Built {
        // Export now, on openraft's apply task: nothing applies until it is done.
        let sm = self.sm.clone();
        let dir = self.snapshots.clone();
        let result = tokio::task::spawn_blocking(move || {
            let meta = sm.applied_state();
            let last = meta.last_applied;
            let id = match last {
                Some(l) => format!(
                    "{}-{}-{}-{:08x}",
                    l.leader_id.term,
                    l.leader_id.node_id,
                    l.index,
                    rand::random::<u32>()
                ),
                None => format!("0-0-0-{:08x}", rand::random::<u32>()),
            };
            let path = dir.join(format!("{id}.snap"));
            let info = sm
                .store()
                .export_snapshot(&path)
                .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
            let snap_meta = SnapshotMeta {
                last_log_id: last,
                last_membership: meta.membership,
                snapshot_id: id.clone(),
            };
            set_current(&dir, &id, &snap_meta).map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
            tracing::info!(
                snapshot = %id,
                records = info.records,
                bytes = info.bytes,
                "snapshot built"
            );
            Ok((snap_meta, path))
        })
        .await
        .unwrap_or_else(|e| Err(snapshot_error(ErrorVerb::Write, e)));
        Built {
            result,
            events: self.events.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self
            .snapshots
            .join(format!("incoming-{}.part", uuid::Uuid::new_v4().simple()));
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
        if let Some(old) = self.receiving.replace(path) {
            let _ = tokio::fs::remove_file(old).await;
        }
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let start = Instant::now();
        snapshot
            .sync_all()
            .await
            .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
        drop(snapshot);
        let part = self
            .receiving
            .take()
            .ok_or_else(|| snapshot_error(ErrorVerb::Write, "no snapshot was being received"))?;
        let sm = self.sm.clone();
        let dir = self.snapshots.clone();
        let meta = meta.clone();
        let expected = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        let applied = tokio::task::spawn_blocking(move || {
            let applied = sm
                .store()
                .install_snapshot(&part)
                .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
            let reloaded = sm.reload().map_err(|e| sm_error(ErrorVerb::Read, e))?;
            if applied != expected || reloaded.last_applied != meta.last_log_id {
                return Err(snapshot_error(
                    ErrorVerb::Write,
                    format!("the snapshot's state is at {applied}, its meta says {expected}"),
                ));
            }
            let id = safe_id(&meta.snapshot_id);
            std::fs::rename(&part, dir.join(format!("{id}.snap")))
                .and_then(|_| set_current(&dir, &id, &meta))
                .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
            Ok::<_, StorageError>(applied)
        })
        .await
        .map_err(|e| snapshot_error(ErrorVerb::Write, e))??;
        self.replaced_at = Some((Instant::now(), self.sm.store().installs()));
        self.sm.sink.replaced(applied);
        self.events.snapshot_installed();
        tracing::info!(
            applied,
            ms = start.elapsed().as_millis() as u64,
            "snapshot installed"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let Some((meta, path)) = self.current() else {
            return Ok(None);
        };
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| snapshot_error(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}

/// Node ids of the voters and learners of a membership.
pub fn members(m: &StoredMembership) -> (Vec<NodeId>, Vec<NodeId>) {
    let voters: Vec<NodeId> = m.membership().voter_ids().collect();
    let learners: Vec<NodeId> = m.membership().learner_ids().collect();
    (voters, learners)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeInfo;
    use openraft::{CommittedLeaderId, Membership};
    use shoal_storage::{CollectionSpec, Command, HnswParams, Outcome};
    use std::collections::{BTreeMap, BTreeSet};

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, usize)>>);

    impl IndexSink for Recorder {
        fn applied(&self, index: u64, effects: Vec<Effect>) {
            self.0.lock().push((index, effects.len()));
        }
        fn replaced(&self, _: u64) {}
    }

    fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(3, 1), index),
            payload,
        }
    }

    fn create(name: &str) -> Command {
        Command::CreateCollection {
            name: name.into(),
            spec: CollectionSpec {
                dimension: 2,
                hnsw: HnswParams::default(),
                quantization: Default::default(),
                vectors_on_disk: false,
            },
            at_ms: 1,
        }
    }

    #[test]
    fn entries_apply_in_order_with_their_log_id_and_membership_in_the_store() {
        let store = Store::temporary().unwrap();
        let sink = Arc::new(Recorder::default());
        let sm = StateMachine::new(store.clone(), sink.clone()).unwrap();
        assert_eq!(sm.applied_state(), AppliedMeta::default());

        let membership = Membership::new(
            vec![BTreeSet::from([1])],
            BTreeMap::from([(1, NodeInfo { addr: "a".into() })]),
        );
        assert_eq!(
            sm.apply(&entry(1, EntryPayload::Membership(membership.clone())))
                .unwrap(),
            ApplyResponse::Nothing
        );
        assert_eq!(
            sm.apply(&entry(2, EntryPayload::Blank)).unwrap(),
            ApplyResponse::Nothing
        );
        let created = sm
            .apply(&entry(3, EntryPayload::Normal(create("c"))))
            .unwrap();
        assert!(matches!(
            created,
            ApplyResponse::Applied(Outcome::CollectionCreated(_))
        ));
        // a business refusal is an answer, and still advances everything
        let dup = sm
            .apply(&entry(4, EntryPayload::Normal(create("c"))))
            .unwrap();
        assert_eq!(
            dup,
            ApplyResponse::Rejected(Rejection::CollectionExists("c".into()))
        );
        assert_eq!(store.applied_index().unwrap(), 4);
        assert_eq!(
            *sink.0.lock(),
            vec![(1, 0), (2, 0), (3, 1), (4, 0)],
            "the sink hears every entry, in order, with its effects"
        );

        // what the store holds is what a restarted node reads back
        let again = StateMachine::new(store.clone(), sink).unwrap();
        let meta = again.applied_state();
        assert_eq!(meta.last_applied.map(|l| l.index), Some(4));
        assert_eq!(meta.membership.log_id().map(|l| l.index), Some(1));
        assert_eq!(meta.membership.membership(), &membership);
    }

    #[test]
    fn a_record_that_does_not_decode_or_a_storage_failure_stops_apply() {
        let store = Store::temporary().unwrap();
        let sm = StateMachine::new(store.clone(), Arc::new(Recorder::default())).unwrap();
        sm.apply(&entry(1, EntryPayload::Normal(create("a"))))
            .unwrap();
        store.corrupt_for_tests("c/a");
        let drop = Command::DropCollection {
            name: "a".into(),
            at_ms: 2,
        };
        // a replica that cannot read its own record must not answer otherwise than the others
        // would: apply fails (the node stops), and nothing of the entry is applied
        let e = sm.apply(&entry(2, EntryPayload::Normal(drop))).unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");
        assert_eq!(store.applied_index().unwrap(), 1);
        assert_eq!(sm.applied_state().last_applied.map(|l| l.index), Some(1));
        // the entry's index is still free: the next one applies there
        let dup = sm
            .apply(&entry(2, EntryPayload::Normal(create("b"))))
            .unwrap();
        assert!(matches!(dup, ApplyResponse::Applied(_)));
        // a failing store is an error too, and changes nothing
        sm.fail_next_apply();
        let e = sm
            .apply(&entry(3, EntryPayload::Normal(create("c"))))
            .unwrap_err();
        assert!(e.is_storage_failure(), "{e}");
        assert_eq!(store.applied_index().unwrap(), 2);
        assert_eq!(sm.applied_state().last_applied.map(|l| l.index), Some(2));
    }
}
