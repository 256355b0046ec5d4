//! A node's membership in the cluster: its Raft instance, and what the rest of shoal asks of it
//! (propose a command and learn its outcome, a linearizable read index, waiting for local apply,
//! joining, membership changes, status).
//!
//! Writes go to the leader: on the leader `propose` is `raft.client_write`; on any other node it
//! is forwarded over the internal network and answered with the leader's outcome. A request that
//! provably never reached a leader (no leader, not the leader, connection refused) is retried
//! until a leader answers or `write_timeout_ms` passes; one that may have reached it is not
//! retried (it could apply twice) and fails as "outcome unknown".

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError as CWE, RaftError as RE};
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use shoal_storage::{Command, Outcome, Store, StoreError};
use tokio::sync::watch;

use crate::error::ClusterError;
use crate::log_store::LogStore;
use crate::network::{Client, Credentials, Network, NetworkFaults};
use crate::state_machine::{members, IndexSink, RaftStateMachineStore, StateMachine};
use crate::types::{
    ApplyResponse, CheckIsLeaderError, ClientWriteError, GroupId, NodeId, NodeInfo, Raft, RaftError,
};
use crate::ClusterEvents;

pub(crate) const NODE_ID: &str = "node_id";
pub(crate) const CLUSTER_ID: &str = "cluster_id";
/// Set while a node whose data folder was new has not yet joined (or made) a cluster: it does not
/// vote meanwhile (a voter that lost its folder lost its vote, and could vote twice in a term).
pub(crate) const REJOINING: &str = "rejoining";
/// Set while `shoal snapshot restore` writes a data folder: a node does not start on it.
pub(crate) const RESTORING: &str = "restoring";
/// Set while a node that joined asking to vote waits to be promoted (kept across restarts).
pub(crate) const PROMOTE_PENDING: &str = "promote_pending";

/// How a node takes part in consensus (the node's `[cluster]` configuration).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub group: GroupId,
    /// This node's id; None: the one in the data folder, or a new random one.
    pub node_id: Option<NodeId>,
    /// The address other nodes reach this one at (`http://host:port`).
    pub advertise: String,
    /// The shared secret of internal requests; None: this node runs alone.
    pub secret: Option<String>,
    /// Where snapshots are kept.
    pub snapshot_dir: PathBuf,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and let the log be compacted) after this many entries.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot (for followers that are only a little behind).
    pub keep_entries_after_snapshot: u64,
    pub snapshot_chunk_bytes: u64,
    pub install_snapshot_timeout_ms: u64,
    /// Entries per append request.
    pub max_entries_per_append: u64,
    /// Largest command (text and vectors) in one entry.
    pub max_entry_bytes: usize,
    /// How long a write waits for a leader to commit it.
    pub write_timeout_ms: u64,
    /// A node that has not heard from its leader (a leader: from a majority) for this long
    /// answers reads marked stale and refuses writes.
    pub stale_after_ms: u64,
    /// What this node offers the others (for example `reranker`): shown in its status, so that
    /// a node without it can send that work to one that has it.
    pub capabilities: Vec<String>,
    /// Restarts of this node's actors so far (its supervisor counts them): shown in its status.
    pub actor_restarts: Arc<std::sync::atomic::AtomicU64>,
}

impl ClusterSettings {
    /// Settings for a node on loopback with quick timers (tests).
    #[doc(hidden)]
    pub fn for_tests(dir: &std::path::Path, node_id: NodeId, secret: Option<&str>) -> Self {
        ClusterSettings {
            group: 0,
            node_id: Some(node_id),
            advertise: format!("http://127.0.0.1:{node_id}"),
            secret: secret.map(str::to_owned),
            snapshot_dir: dir.join("snapshots"),
            heartbeat_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            snapshot_after_entries: 1000,
            keep_entries_after_snapshot: 10,
            snapshot_chunk_bytes: 1 << 20,
            install_snapshot_timeout_ms: 5000,
            max_entries_per_append: 8,
            max_entry_bytes: 1 << 20,
            write_timeout_ms: 5000,
            stale_after_ms: 2000,
            capabilities: vec![],
            actor_restarts: Default::default(),
        }
    }

    fn raft_config(&self) -> Result<openraft::Config, ClusterError> {
        let config = openraft::Config {
            cluster_name: "shoal".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            max_payload_entries: self.max_entries_per_append,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_after_entries),
            max_in_snapshot_log_to_keep: self.keep_entries_after_snapshot,
            snapshot_max_chunk_size: self.snapshot_chunk_bytes,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| ClusterError::BadRequest(format!("cluster configuration: {e}")))
    }
}

/// A member as a status lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    pub id: NodeId,
    pub addr: String,
    /// leader, follower, candidate, learner, shutdown
    pub state: String,
    pub cluster_id: Option<String>,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: u64,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub nodes: BTreeMap<NodeId, String>,
    /// On the leader: each member's last replicated index.
    pub replication: Option<BTreeMap<NodeId, Option<u64>>>,
    /// Why this node cannot vouch that its data is current (None when it can).
    pub stale: Option<String>,
    /// What this node offers the others (`reranker`, ...).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Restarts of its actors since it started.
    #[serde(default)]
    pub actor_restarts: u64,
}

/// One member in a cluster-wide status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberStatus {
    pub id: NodeId,
    pub addr: String,
    /// voter or learner
    pub role: String,
    /// Entries the leader has that this member has not got (leader's view).
    pub lag: Option<u64>,
    /// The member's own report (None when it could not be reached).
    pub status: Option<NodeStatus>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterStatus {
    pub cluster_id: Option<String>,
    pub group: GroupId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub members: Vec<MemberStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JoinRequest {
    pub node_id: NodeId,
    pub addr: String,
    pub cluster_id: Option<String>,
    /// The node's data folder is new (its log and vote are empty): if its id is already a voter,
    /// the node lost its data, and it votes again only once caught up (it is made a learner).
    pub fresh: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JoinReply {
    pub cluster_id: String,
    pub leader: NodeId,
    pub commit_index: u64,
}

/// Membership changes, run on the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum MembershipChange {
    Promote(NodeId),
    Remove(NodeId),
    /// A member now listens at another address (it restarted elsewhere).
    Readdress(NodeId, String),
}

/// The outcome of a proposed command, with the log index it was applied at.
#[derive(Debug)]
pub struct Proposed {
    pub index: u64,
    pub outcome: Result<Outcome, StoreError>,
}

/// See [`ClusterNode::catching_up`].
#[derive(Debug, Default)]
struct CatchUp {
    /// The leader's commit index in the first append this node accepted since it started.
    target: Option<u64>,
    /// It has applied that far (or has led) once.
    done: bool,
}

impl CatchUp {
    fn check(&self, leader: bool, applied: u64) -> Option<String> {
        if self.done || leader {
            return None;
        }
        match self.target {
            None => Some("catching up: it has not heard from a leader since it started".into()),
            Some(t) if applied < t => Some(format!(
                "catching up: it has applied {applied} of the {t} entries the leader had \
                 committed when it first heard from it"
            )),
            Some(_) => None,
        }
    }
}

/// When members offering a capability were last asked, and which did (id, address).
type Offers = (Instant, Vec<(NodeId, String)>);

pub struct ClusterNode {
    pub id: NodeId,
    pub group: GroupId,
    pub(crate) raft: Raft,
    pub(crate) settings: ClusterSettings,
    pub(crate) client: Arc<Client>,
    pub(crate) log: LogStore,
    /// When an append (heartbeat) from the leader last arrived.
    pub(crate) leader_contact: Mutex<Option<Instant>>,
    /// Whether this node has caught up with the cluster since it started: applied what the
    /// leader had committed when it first heard from it (the index, once heard).
    catch_up: Mutex<CatchUp>,
    /// Consensus is being stopped on purpose ([`ClusterNode::shutdown`]), not by a failure.
    stopping: std::sync::atomic::AtomicBool,
    /// When this node last became the leader (its peers have not answered it yet at first).
    leader_since: Mutex<Option<Instant>>,
    leadership: watch::Sender<bool>,
    fatal: watch::Sender<Option<String>>,
    pub(crate) events: Arc<dyn ClusterEvents>,
    /// This node had never taken part in a cluster at this start (no log, no vote).
    fresh: bool,
    /// It has not joined or made a cluster since its data folder was new: it does not vote.
    rejoining: std::sync::atomic::AtomicBool,
    /// The state machine (for tests of its failure path).
    sm: Arc<StateMachine>,
    /// Members that offer a capability, as last asked (and when).
    offers: Mutex<std::collections::HashMap<String, Offers>>,
}

impl ClusterNode {
    /// Start this node's Raft over `store` (the log in its own tree of the same database).
    /// The node is not yet part of any cluster unless it was before; see
    /// [`ClusterNode::initialize`] and [`ClusterNode::join`].
    pub async fn start(
        settings: ClusterSettings,
        store: Store,
        sink: Arc<dyn IndexSink>,
        events: Arc<dyn ClusterEvents>,
    ) -> Result<Arc<ClusterNode>, ClusterError> {
        let internal = |e: StoreError| ClusterError::Internal(e.to_string());
        let log = LogStore::open(&store, settings.group).map_err(internal)?;
        if log.tree().get_meta(RESTORING).map_err(internal)?.is_some() {
            return Err(ClusterError::Conflict(
                "a `shoal snapshot restore` into this data folder did not finish: run it again"
                    .into(),
            ));
        }
        let (id, _) = node_identity(&log, settings.node_id)?;
        // Never took part: no entry, no vote, nothing purged (a new or wiped data folder).
        let fresh = log.is_empty()
            && log
                .tree()
                .get_meta(crate::log_store::VOTE)
                .map_err(internal)?
                .is_none()
            && log
                .tree()
                .get_meta(crate::log_store::PURGED)
                .map_err(internal)?
                .is_none();
        if fresh {
            log.tree().put_meta(REJOINING, b"1").map_err(internal)?;
        }
        let rejoining = log.tree().get_meta(REJOINING).map_err(internal)?.is_some();
        let cluster_id = log
            .tree()
            .get_meta(CLUSTER_ID)
            .map_err(internal)?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let credentials = Arc::new(Credentials {
            node_id: id,
            secret: settings.secret.clone(),
            cluster_id: parking_lot::RwLock::new(cluster_id),
        });
        let client = Arc::new(Client::new(
            credentials,
            Arc::new(NetworkFaults::default()),
            settings.group,
        ));
        let sm = Arc::new(StateMachine::new(store, sink).map_err(internal)?);
        let sm_store =
            RaftStateMachineStore::new(sm.clone(), settings.snapshot_dir.clone(), events.clone())
                .map_err(|e| ClusterError::Internal(format!("snapshot folder: {e}")))?;
        let config = Arc::new(settings.raft_config()?);
        let raft = Raft::new(
            id,
            config,
            Network {
                client: client.clone(),
            },
            log.clone(),
            sm_store,
        )
        .await
        .map_err(|e| ClusterError::Fatal(e.to_string()))?;
        let node = Arc::new(ClusterNode {
            id,
            group: settings.group,
            raft,
            settings,
            client,
            log,
            leader_contact: Mutex::new(None),
            catch_up: Mutex::new(CatchUp::default()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            leader_since: Mutex::new(None),
            leadership: watch::Sender::new(false),
            fatal: watch::Sender::new(None),
            events,
            fresh,
            rejoining: std::sync::atomic::AtomicBool::new(rejoining),
            sm,
            offers: Mutex::new(Default::default()),
        });
        if node.is_rejoining() {
            // It must neither vote nor stand for election with a vote history it lost.
            node.raft.runtime_config().elect(false);
        }
        tokio::spawn(watch_metrics(node.clone()));
        Ok(node)
    }

    /// Make the state machine's next apply fail as a broken disk would (tests: the node must
    /// stop, not go on with a state it cannot vouch for).
    #[doc(hidden)]
    pub fn inject_storage_failure(&self) {
        self.sm.fail_next_apply();
    }

    /// The Raft instance (for the internal routes).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn faults(&self) -> &NetworkFaults {
        &self.client.faults
    }

    /// Resolves with the reason once consensus stops on this node (its storage failed).
    pub fn failed(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.fatal.subscribe();
        async move {
            match rx.wait_for(Option::is_some).await {
                Ok(r) => r.clone().unwrap_or_default(),
                Err(_) => "consensus stopped".into(),
            }
        }
    }

    /// Stop this node for good: its state cannot be trusted (a store that could not be read
    /// after a snapshot replaced it). [`ClusterNode::failed`] resolves with `reason`; the process
    /// stops and a restart reloads everything from the store.
    pub fn fail(&self, reason: String) {
        tracing::error!(reason = %reason, "this node must stop");
        self.fatal.send_if_modified(|f| {
            if f.is_none() {
                *f = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// True while this node is the leader; changes when leadership does.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leadership.subscribe()
    }

    pub fn is_leader(&self) -> bool {
        *self.leadership.borrow()
    }

    pub fn cluster_id(&self) -> Option<String> {
        self.client.credentials.cluster_id.read().clone()
    }

    fn set_cluster_id(&self, id: &str) -> Result<(), ClusterError> {
        self.log
            .tree()
            .put_meta(CLUSTER_ID, id.as_bytes())
            .map_err(|e| ClusterError::Internal(e.to_string()))?;
        *self.client.credentials.cluster_id.write() = Some(id.to_string());
        Ok(())
    }

    /// An internal request from a node of cluster `theirs` arrived: a node that belongs to no
    /// cluster yet (added by a leader, or wiped) takes the cluster's id. Returns whether the
    /// request may go on.
    pub(crate) fn accept_cluster(&self, theirs: &str) -> Result<(), String> {
        let ours = self.cluster_id();
        match ours {
            Some(o) if o == theirs => Ok(()),
            Some(o) => Err(format!(
                "this node belongs to cluster {o}, the request comes from cluster {}",
                if theirs.is_empty() { "(none)" } else { theirs }
            )),
            None if theirs.is_empty() => Ok(()),
            None => self.set_cluster_id(theirs).map_err(|e| e.to_string()),
        }
    }

    pub fn applied_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0)
    }

    /// Every member's id, in order.
    fn member_ids(&self) -> Vec<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect()
    }

    /// The other members and their addresses, by id.
    pub fn other_members(&self) -> BTreeMap<NodeId, String> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// This node's place among the members (sorted by id) and how many there are: nodes that
    /// share work start at different places of it.
    pub fn member_position(&self) -> (usize, usize) {
        let ids: Vec<NodeId> = self.member_ids();
        let pos = ids.iter().position(|id| *id == self.id).unwrap_or(0);
        (pos, ids.len().max(1))
    }

    /// The current leader and its address.
    pub fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        let rx = self.raft.metrics();
        let m = rx.borrow();
        let id = m.current_leader?;
        let info = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, info))
    }

    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    /// True until a node whose data folder was new has joined or made a cluster; it does not
    /// vote meanwhile.
    pub fn is_rejoining(&self) -> bool {
        self.rejoining.load(std::sync::atomic::Ordering::Acquire)
    }

    fn joined(&self) -> Result<(), ClusterError> {
        self.log
            .tree()
            .remove_meta(REJOINING)
            .map_err(|e| ClusterError::Internal(e.to_string()))?;
        self.rejoining
            .store(false, std::sync::atomic::Ordering::Release);
        self.raft.runtime_config().elect(true);
        Ok(())
    }

    /// A node that died between making its cluster and naming it: finish the job (it is a
    /// one-member cluster with no id, and nobody else knows it).
    pub async fn finish_initialize(&self) -> Result<bool, ClusterError> {
        let members: Vec<NodeId> = self.member_ids();
        if !(self.is_rejoining() && self.cluster_id().is_none() && members == [self.id]) {
            return Ok(false);
        }
        let cluster_id = uuid::Uuid::new_v4().to_string();
        self.set_cluster_id(&cluster_id)?;
        self.joined()?;
        tracing::warn!(cluster = %cluster_id, "finished making a cluster that a crash interrupted");
        Ok(true)
    }

    /// Whether this node joined asking to vote and has not been promoted yet.
    pub fn promotion_pending(&self) -> bool {
        self.log
            .tree()
            .get_meta(PROMOTE_PENDING)
            .ok()
            .flatten()
            .is_some()
    }

    /// Make this node a one-member cluster (a new cluster id). Refused if it belongs to one.
    pub async fn initialize(&self) -> Result<String, ClusterError> {
        if self.is_initialized().await {
            return Err(ClusterError::Conflict(format!(
                "node {} already belongs to cluster {}",
                self.id,
                self.cluster_id().unwrap_or_else(|| "(unknown)".into())
            )));
        }
        let cluster_id = uuid::Uuid::new_v4().to_string();
        let members = BTreeMap::from([(
            self.id,
            NodeInfo {
                addr: self.settings.advertise.clone(),
            },
        )]);
        self.raft.initialize(members).await.map_err(|e| match e {
            RE::APIError(e) => ClusterError::Conflict(e.to_string()),
            RE::Fatal(f) => ClusterError::Fatal(f.to_string()),
        })?;
        // Named only once it is made: a refused initialize leaves the node free to join another.
        self.set_cluster_id(&cluster_id)?;
        self.joined()?;
        tracing::info!(node = self.id, cluster = %cluster_id, "initialized a new cluster");
        Ok(cluster_id)
    }

    /// Ask the cluster that `seed` (any member's address) belongs to for this node to join as a
    /// learner. Returns the cluster id and the commit index at the time of joining.
    pub async fn join(&self, seed: &str, voter: bool) -> Result<(String, u64), ClusterError> {
        let req = JoinRequest {
            node_id: self.id,
            addr: self.settings.advertise.clone(),
            cluster_id: self.cluster_id(),
            // A node whose folder was new is still "fresh" if it restarted before its join
            // went through (a leader may have reached it meanwhile).
            fresh: self.fresh || self.is_rejoining(),
        };
        let reply: JoinReply = self
            .client
            .ask(
                None,
                seed,
                "join",
                &req,
                Duration::from_secs(30),
                &format!("joining through {seed}"),
            )
            .await?;
        self.accept_cluster(&reply.cluster_id)
            .map_err(ClusterError::Conflict)?;
        // The leader has made it a learner (a voter that lost its folder included): it may vote
        // again once promoted.
        if voter {
            self.log
                .tree()
                .put_meta(PROMOTE_PENDING, b"1")
                .map_err(|e| ClusterError::Internal(e.to_string()))?;
        }
        self.joined()?;
        self.catch_up
            .lock()
            .target
            .get_or_insert(reply.commit_index);
        tracing::info!(node = self.id, cluster = %reply.cluster_id, leader = reply.leader, "joined as a learner");
        Ok((reply.cluster_id, reply.commit_index))
    }

    /// Run a join on the leader (forwarded there if this node is not it).
    pub(crate) async fn handle_join(&self, req: JoinRequest) -> Result<JoinReply, ClusterError> {
        if !(req.addr.starts_with("http://") || req.addr.starts_with("https://")) {
            return Err(ClusterError::BadRequest(format!(
                "a joining node's address must be a URL such as http://10.0.0.2:7400, got `{}`",
                req.addr
            )));
        }
        if !self.is_leader() {
            let (leader, info) = self.wait_for_leader().await?;
            if leader != self.id {
                return self
                    .client
                    .ask(
                        Some(leader),
                        &info.addr,
                        "join",
                        &req,
                        Duration::from_secs(30),
                        "forwarding a join to the leader",
                    )
                    .await;
            }
        }
        let ours = self
            .cluster_id()
            .ok_or_else(|| ClusterError::Internal("the leader has no cluster id".into()))?;
        if let Some(theirs) = &req.cluster_id {
            if *theirs != ours {
                return Err(ClusterError::Conflict(format!(
                    "node {} belongs to cluster {theirs}; this is cluster {ours}: a node joins one cluster only (wipe its data folder to move it)",
                    req.node_id
                )));
            }
        }
        let m = self.raft.metrics().borrow().clone();
        let info = NodeInfo {
            addr: req.addr.clone(),
        };
        if let Some(existing) = m.membership_config.membership().get_node(&req.node_id) {
            let live = req.node_id != self.id
                && self.client.last_ack(req.node_id).is_some_and(|t| {
                    t.elapsed() < Duration::from_millis(self.settings.stale_after_ms)
                });
            if req.fresh && existing.addr != req.addr && live {
                return Err(ClusterError::Conflict(format!(
                    "node id {} is in use by a live member at {}: give the new node another id",
                    req.node_id, existing.addr
                )));
            }
        }
        let voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == req.node_id);
        if voter && req.fresh {
            // A voter that lost its data folder has lost its vote too: it could vote twice in a
            // term. It becomes a learner and votes again once promoted after catching up.
            tracing::warn!(
                node = req.node_id,
                "a voter rejoined with a new data folder: it is a learner until promoted again"
            );
            self.change_membership(
                ChangeMembers::RemoveVoters(BTreeSet::from([req.node_id])),
                true,
            )
            .await?;
        }
        let m = self.raft.metrics().borrow().clone();
        let change = match m.membership_config.membership().get_node(&req.node_id) {
            Some(existing) if *existing == info => None,
            Some(_) => Some(ChangeMembers::SetNodes(BTreeMap::from([(
                req.node_id,
                info.clone(),
            )]))),
            None => Some(ChangeMembers::AddNodes(BTreeMap::from([(
                req.node_id,
                info.clone(),
            )]))),
        };
        if let Some(change) = change {
            self.change_membership(change, false).await?;
        }
        let commit_index = self
            .raft
            .with_raft_state(|st| st.committed.map(|c| c.index).unwrap_or(0))
            .await
            .map_err(|e| ClusterError::Fatal(e.to_string()))?;
        tracing::info!(node = req.node_id, addr = %req.addr, "a node joined as a learner");
        Ok(JoinReply {
            cluster_id: ours,
            leader: self.id,
            commit_index,
        })
    }

    /// Commit a membership change; `retain`: voters it removes stay as learners.
    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, NodeInfo>,
        retain: bool,
    ) -> Result<(), ClusterError> {
        let timeout = Duration::from_millis(self.settings.write_timeout_ms.max(10_000));
        match tokio::time::timeout(timeout, self.raft.change_membership(change, retain)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(client_write_error(self.id, e)),
            Err(_) => Err(ClusterError::Timeout(format!(
                "the membership change was not committed within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    /// Wait until this node has caught up with the leader's commit index, then ask to vote
    /// (retrying until it is a voter). Clears the pending promotion when done.
    pub async fn promote_self_when_caught_up(&self) {
        let mut delay = Duration::from_millis(200);
        loop {
            let caught_up = match self.read_index().await {
                Ok(index) => self
                    .wait_applied(index, Duration::from_secs(60))
                    .await
                    .is_ok(),
                Err(_) => false,
            };
            if caught_up {
                match self.promote(self.id).await {
                    Ok(()) => {
                        let _ = self.log.tree().remove_meta(PROMOTE_PENDING);
                        tracing::info!(node = self.id, "now a voter");
                        return;
                    }
                    Err(e @ ClusterError::NotFound(_)) => {
                        // Removed from the cluster meanwhile: nothing to promote.
                        let _ = self.log.tree().remove_meta(PROMOTE_PENDING);
                        tracing::warn!(error = %e, "not promoted: this node is no longer a member");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "could not become a voter yet; retrying"),
                }
            } else {
                tracing::info!(
                    applied = self.applied_index(),
                    "catching up before asking to vote"
                );
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Make learner `id` a voter.
    pub async fn promote(&self, id: NodeId) -> Result<(), ClusterError> {
        self.on_leader(MembershipChange::Promote(id)).await
    }

    /// Remove node `id` from the cluster (a voter first stops voting).
    pub async fn remove(&self, id: NodeId) -> Result<(), ClusterError> {
        self.on_leader(MembershipChange::Remove(id)).await
    }

    /// A member restarted at another address: tell the cluster (through the leader), so that
    /// the others reach it there. Nothing happens when the membership already has this address.
    pub async fn update_address(&self) -> Result<(), ClusterError> {
        let known = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&self.id)
            .map(|n| n.addr.clone());
        match known {
            Some(addr) if addr != self.settings.advertise => {
                tracing::info!(old = %addr, new = %self.settings.advertise, "this node's address changed; telling the cluster");
                let change = MembershipChange::Readdress(self.id, self.settings.advertise.clone());
                // The leader cannot reach this node yet, so it may know of no leader: ask the
                // members straight away then.
                if self.leader().is_some_and(|(l, _)| l != self.id) || self.is_leader() {
                    self.on_leader(change).await
                } else {
                    self.ask_members(change, ClusterError::NoLeader("no member answered".into()))
                        .await
                }
            }
            _ => Ok(()),
        }
    }

    async fn on_leader(&self, change: MembershipChange) -> Result<(), ClusterError> {
        let (leader, info) = match self.wait_for_leader().await {
            Ok(l) => l,
            // This node hears from no leader (it may be the one the others cannot reach): ask
            // the members it knows, and the leader they name.
            Err(e @ ClusterError::NoLeader(_)) => return self.ask_members(change, e).await,
            Err(e) => return Err(e),
        };
        if leader == self.id {
            return self.handle_membership(change).await;
        }
        self.client
            .ask(
                Some(leader),
                &info.addr,
                "membership",
                &change,
                Duration::from_secs(60),
                "forwarding a membership change to the leader",
            )
            .await
    }

    async fn ask_members(
        &self,
        change: MembershipChange,
        no_leader: ClusterError,
    ) -> Result<(), ClusterError> {
        let nodes: BTreeMap<NodeId, String> = self.other_members().into_iter().collect();
        let mut tried = BTreeSet::new();
        let mut queue: Vec<NodeId> = nodes.keys().copied().collect();
        while let Some(id) = queue.pop() {
            if !tried.insert(id) {
                continue;
            }
            let Some(addr) = nodes.get(&id) else {
                continue;
            };
            let r: Result<Result<(), ClusterError>, _> = self
                .client
                .call(
                    Some(id),
                    addr,
                    "membership",
                    &change,
                    Duration::from_secs(30),
                )
                .await;
            match r {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(ClusterError::NotLeader {
                    leader: Some(l), ..
                })) => queue.push(l),
                Ok(Err(e)) if !e.is_retryable() => return Err(e),
                _ => {}
            }
        }
        Err(no_leader)
    }

    pub(crate) async fn handle_membership(
        &self,
        change: MembershipChange,
    ) -> Result<(), ClusterError> {
        if !self.is_leader() {
            return Err(ClusterError::NotLeader {
                node: self.id,
                leader: self.leader().map(|(id, _)| id),
            });
        }
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        match change {
            MembershipChange::Promote(id) => {
                if membership.get_node(&id).is_none() {
                    return Err(ClusterError::NotFound(format!(
                        "no node with id {id} in the cluster (members: {})",
                        list(membership.nodes().map(|(id, _)| *id))
                    )));
                }
                if voters.contains(&id) {
                    return Ok(());
                }
                self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await?;
                tracing::info!(node = id, "promoted to voter");
            }
            MembershipChange::Readdress(id, addr) => {
                if membership.get_node(&id).is_none() {
                    return Err(ClusterError::NotFound(format!(
                        "no node with id {id} in the cluster"
                    )));
                }
                self.change_membership(
                    ChangeMembers::SetNodes(BTreeMap::from([(id, NodeInfo { addr })])),
                    false,
                )
                .await?;
            }
            MembershipChange::Remove(id) => {
                if membership.get_node(&id).is_none() {
                    return Err(ClusterError::NotFound(format!(
                        "no node with id {id} in the cluster"
                    )));
                }
                if voters.contains(&id) {
                    if voters.len() == 1 {
                        return Err(ClusterError::BadRequest(format!(
                            "node {id} is the last voter: a cluster needs one (promote another node first)"
                        )));
                    }
                    self.change_membership(
                        ChangeMembers::RemoveVoters(BTreeSet::from([id])),
                        false,
                    )
                    .await?;
                } else {
                    self.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await?;
                }
                tracing::info!(node = id, "removed from the cluster");
            }
        }
        Ok(())
    }

    /// The leader, waiting (at most `write_timeout_ms`) while an election runs.
    async fn wait_for_leader(&self) -> Result<(NodeId, NodeInfo), ClusterError> {
        let deadline = Instant::now() + Duration::from_millis(self.settings.write_timeout_ms);
        let mut rx = self.raft.metrics();
        loop {
            if let Some(l) = self.leader() {
                return Ok(l);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
                return Err(ClusterError::NoLeader(format!(
                    "no leader is known after {} ms (is a majority of the voters up and reachable?)",
                    self.settings.write_timeout_ms
                )));
            }
        }
    }

    /// An append from the leader was accepted: note its commit index if it is the first since
    /// this node started.
    pub(crate) fn heard_from_leader(&self, leader_commit: u64) {
        *self.leader_contact.lock() = Some(Instant::now());
        self.catch_up.lock().target.get_or_insert(leader_commit);
    }

    /// Why this node is still catching up with the cluster since it started (joined, restarted,
    /// wiped), if it is: it has not yet applied what the leader had committed when it first
    /// heard from it. Until then it may not know collections and documents the cluster has, so
    /// it is not ready and does not call them missing. Once caught up it stays so (later lag is
    /// what `stale` and the applied index in every answer are for).
    pub fn catching_up(&self) -> Option<String> {
        let mut c = self.catch_up.lock();
        if c.done {
            return None;
        }
        let (leader, applied) = {
            let rx = self.raft.metrics();
            let m = rx.borrow();
            // a new leader has every committed entry only once it has applied one of its own
            // term (the blank entry it commits first)
            (
                m.state == ServerState::Leader
                    && m.last_applied
                        .is_some_and(|l| l.leader_id.term == m.current_term),
                m.last_applied.map(|l| l.index).unwrap_or(0),
            )
        };
        let why = c.check(leader, applied);
        if why.is_none() {
            c.done = true;
        }
        why
    }

    /// Why this node cannot vouch that its data is current, if it cannot.
    pub fn stale(&self) -> Option<String> {
        // Read in place (every search asks): the metrics are not copied.
        let rx = self.raft.metrics();
        let m = rx.borrow();
        let limit = Duration::from_millis(self.settings.stale_after_ms);
        match m.state {
            ServerState::Leader => {
                // A new leader's peers have not answered it yet: give them the time they have.
                if self
                    .leader_since
                    .lock()
                    .is_some_and(|t| t.elapsed() < limit)
                {
                    return None;
                }
                let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
                let fresh = voters
                    .iter()
                    .filter(|v| {
                        **v == self.id
                            || self
                                .client
                                .last_ack(**v)
                                .is_some_and(|t| t.elapsed() < limit)
                    })
                    .count();
                (fresh * 2 <= voters.len()).then(|| {
                    format!(
                        "the leader has heard from {fresh} of {} voters in the last {} ms (no quorum)",
                        voters.len(),
                        limit.as_millis()
                    )
                })
            }
            ServerState::Shutdown => Some("consensus has stopped on this node".into()),
            _ if m.current_leader.is_none() => Some("no leader is known".into()),
            _ => match *self.leader_contact.lock() {
                Some(t) if t.elapsed() < limit => None,
                Some(t) => Some(format!(
                    "no word from the leader for {} ms",
                    t.elapsed().as_millis()
                )),
                None => Some("no word from the leader since this node started".into()),
            },
        }
    }

    /// Propose `command` through the leader; the answer is its log index and outcome. Only a
    /// command that is committed and applied (on the leader) answers Ok.
    pub async fn propose(&self, command: Command) -> Result<Proposed, ClusterError> {
        let size = command.payload_bytes();
        if size > self.settings.max_entry_bytes {
            return Err(ClusterError::TooLarge(format!(
                "a {} command of {size} bytes is larger than one log entry may be ({} bytes, cluster.max_entry_bytes)",
                command.kind(),
                self.settings.max_entry_bytes
            )));
        }
        let deadline = Instant::now() + Duration::from_millis(self.settings.write_timeout_ms);
        let mut counted = false;
        loop {
            if let Some(refused) = self.stopped() {
                return Err(refused);
            }
            if !counted && self.leader().is_some_and(|(l, _)| l != self.id) {
                // Once per write, however many times it is sent.
                self.events.forwarded_write();
                counted = true;
            }
            let attempt = self.propose_once(&command, deadline).await;
            match attempt {
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    // An election is running, or the leader moved: ask again shortly.
                    let mut rx = self.raft.metrics();
                    let left = deadline.saturating_duration_since(Instant::now());
                    let _ =
                        tokio::time::timeout(left.min(Duration::from_millis(200)), rx.changed())
                            .await;
                }
                Err(ClusterError::Unreachable(e)) if Instant::now() < deadline => {
                    // Refused before it was sent: nothing happened there; the leader may be gone.
                    tracing::debug!(error = %e, "the leader is unreachable; waiting for another");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e @ ClusterError::Stopped(_)) if self.fatal.borrow().is_some() => {
                    // this node's own consensus stopped: nothing was done
                    return Err(e);
                }
                Err(ClusterError::Stopped(e)) if Instant::now() < deadline => {
                    // The leader's consensus had stopped before it took the write (once it has
                    // taken one, a stop answers Timeout): nothing was done; another leader comes.
                    tracing::debug!(error = %e, "the leader has stopped; waiting for another");
                    let mut rx = self.raft.metrics();
                    let left = deadline.saturating_duration_since(Instant::now());
                    let _ =
                        tokio::time::timeout(left.min(Duration::from_millis(200)), rx.changed())
                            .await;
                }
                Err(ClusterError::Fatal(e)) => {
                    // A leader of an earlier version answers Fatal for a write its consensus may
                    // have taken before it stopped: the outcome is unknown.
                    return Err(ClusterError::Timeout(format!(
                        "the leader's consensus stopped while the write was on its way ({e}): its outcome is unknown, it may have been applied"
                    )));
                }
                other => {
                    let (index, response) = other?;
                    let outcome = match response {
                        ApplyResponse::Applied(o) => Ok(o),
                        ApplyResponse::Rejected(r) => Err(r.into_store_error()),
                        ApplyResponse::Nothing => Err(StoreError::InvalidCommand(
                            "the entry carried no command".into(),
                        )),
                    };
                    return Ok(Proposed { index, outcome });
                }
            }
        }
    }

    async fn propose_once(
        &self,
        command: &Command,
        deadline: Instant,
    ) -> Result<(u64, ApplyResponse), ClusterError> {
        let Some((leader, info)) = self.leader() else {
            return Err(ClusterError::NoLeader(
                "no leader is known (an election may be running, or this node is cut off)".into(),
            ));
        };
        if leader == self.id {
            return self.write_here(command.clone(), deadline).await;
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        self.client
            .ask(
                Some(leader),
                &info.addr,
                "propose",
                command,
                left,
                &format!("the leader (node {leader})"),
            )
            .await
    }

    /// Write on this node, the leader.
    pub(crate) async fn write_here(
        &self,
        mut command: Command,
        deadline: Instant,
    ) -> Result<(u64, ApplyResponse), ClusterError> {
        command.stamp_time(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        );
        // Nothing is proposed yet: a node whose consensus stopped says so (the caller may try
        // another leader).
        if let Some(refused) = self.stopped() {
            return Err(refused);
        }
        // A leader that cannot hear from a majority would only queue the write: wait (nothing
        // is proposed yet) for the quorum to answer, or refuse.
        while let Some(why) = self.stale() {
            if let Some(reason) = self.fatal.borrow().clone() {
                return Err(consensus_stopped(&reason));
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::NoQuorum(why));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            if !self.is_leader() {
                return Err(ClusterError::NotLeader {
                    node: self.id,
                    leader: self.leader().map(|(id, _)| id),
                });
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.raft.client_write(command)).await {
            Ok(Ok(resp)) => Ok((resp.log_id.index, resp.data)),
            Ok(Err(e)) => Err(client_write_error(self.id, e)),
            Err(_) => Err(ClusterError::Timeout(format!(
                "the write was not committed within {} ms (cluster.write_timeout_ms): its outcome is unknown, it may still be applied once a majority answers",
                self.settings.write_timeout_ms
            ))),
        }
    }

    /// A read index: once this node has applied it, a read here sees every write committed
    /// before the call (the leader confirms its leadership with a quorum first).
    pub async fn read_index(&self) -> Result<u64, ClusterError> {
        if self.is_stopping() {
            return Err(stopping());
        }
        let deadline = Instant::now() + Duration::from_millis(self.settings.write_timeout_ms);
        loop {
            if let Some(reason) = self.fatal.borrow().clone() {
                return Err(consensus_stopped(&reason));
            }
            let attempt = match self.leader() {
                None => Err(ClusterError::NoLeader("no leader is known".into())),
                Some((leader, _)) if leader == self.id => self.read_index_here(deadline).await,
                Some((leader, info)) => {
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(100));
                    let r: Result<u64, ClusterError> = self
                        .client
                        .call(Some(leader), &info.addr, "read-index", &(), left)
                        .await
                        .map_err(|e| match e {
                            // A read changes nothing: a lost answer is just no answer.
                            crate::network::Transport::Lost(m) => ClusterError::Unreachable(
                                format!("the leader (node {leader}) did not answer: {m}"),
                            ),
                            other => {
                                other.into_cluster_error(&format!("the leader (node {leader})"))
                            }
                        })?;
                    r
                }
            };
            match attempt {
                Err(e)
                    // (a read changes nothing: a leader whose consensus stopped, whatever its
                    // version answers, is one to wait out)
                    if (e.is_retryable()
                        || matches!(
                            e,
                            ClusterError::Unreachable(_)
                                | ClusterError::Stopped(_)
                                | ClusterError::Fatal(_)
                        ))
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    pub(crate) async fn read_index_here(&self, deadline: Instant) -> Result<u64, ClusterError> {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.raft.get_read_log_id()).await {
            Ok(Ok((read, _))) => Ok(read.map(|l| l.index).unwrap_or(0)),
            Ok(Err(RE::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(ClusterError::NotLeader {
                    node: self.id,
                    leader: f.leader_id,
                })
            }
            Ok(Err(RE::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
                Err(ClusterError::NoQuorum(q.to_string()))
            }
            // a read changes nothing
            Ok(Err(RE::Fatal(f))) => Err(consensus_stopped(&f.to_string())),
            Err(_) => Err(ClusterError::NoQuorum(format!(
                "the leader could not confirm its leadership within {} ms",
                self.settings.write_timeout_ms
            ))),
        }
    }

    /// Wait (at most `limit`) until this node has applied `index`.
    pub async fn wait_applied(&self, index: u64, limit: Duration) -> Result<(), ClusterError> {
        if self.applied_index() >= index {
            return Ok(());
        }
        self.raft
            .wait(Some(limit))
            .applied_index_at_least(Some(index), "wait for local apply")
            .await
            .map(|_| ())
            .map_err(|_| {
                ClusterError::Timeout(format!(
                    "this node has applied {} of {index} after {} ms",
                    self.applied_index(),
                    limit.as_millis()
                ))
            })
    }

    /// This node's own view.
    pub async fn local_status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        let commit_index = self
            .raft
            .with_raft_state(|st| st.committed.map(|c| c.index))
            .await
            .ok()
            .flatten();
        let (voters, learners) = members(&m.membership_config);
        NodeStatus {
            id: self.id,
            addr: self.settings.advertise.clone(),
            state: state_name(m.state).into(),
            cluster_id: self.cluster_id(),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            commit_index,
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            voters,
            learners,
            nodes: m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
            replication: m.replication.map(|r| {
                r.into_iter()
                    .map(|(id, l)| (id, l.map(|l| l.index)))
                    .collect()
            }),
            stale: self.stale(),
            capabilities: self.settings.capabilities.clone(),
            actor_restarts: self
                .settings
                .actor_restarts
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Other members that offer `capability` and answered just now (their addresses), asked
    /// at most every few seconds.
    pub async fn members_offering(&self, capability: &str) -> Vec<(NodeId, String)> {
        const FRESH: Duration = Duration::from_secs(5);
        if let Some((at, list)) = self.offers.lock().get(capability) {
            if at.elapsed() < FRESH {
                return list.clone();
            }
        }
        let nodes: Vec<(NodeId, String)> = self.other_members().into_iter().collect();
        let mut found = Vec::new();
        for (id, addr) in nodes {
            let status: Result<NodeStatus, _> = self
                .client
                .call(Some(id), &addr, "status", &(), Duration::from_millis(500))
                .await;
            if status.is_ok_and(|s| s.capabilities.iter().any(|c| c == capability)) {
                found.push((id, addr));
            }
        }
        self.offers
            .lock()
            .insert(capability.to_string(), (Instant::now(), found.clone()));
        found
    }

    /// Every member's view (each asked over the internal network, a second at most).
    pub async fn status(&self) -> ClusterStatus {
        let local = self.local_status().await;
        // The leader knows the replication of everyone; ask it when this node is not it.
        let leader_view = match local.leader {
            Some(l) if l != self.id => {
                let addr = local.nodes.get(&l).cloned().unwrap_or_default();
                self.client
                    .call::<_, NodeStatus>(Some(l), &addr, "status", &(), Duration::from_secs(1))
                    .await
                    .ok()
            }
            _ => Some(local.clone()),
        };
        let last = leader_view
            .as_ref()
            .and_then(|l| l.last_log_index)
            .unwrap_or(0);
        let replication = leader_view.as_ref().and_then(|l| l.replication.clone());
        let mut members = Vec::new();
        for (id, addr) in &local.nodes {
            let role = if local.voters.contains(id) {
                "voter"
            } else {
                "learner"
            };
            let (status, error) = if *id == self.id {
                (Some(local.clone()), None)
            } else {
                match self
                    .client
                    .call::<_, NodeStatus>(Some(*id), addr, "status", &(), Duration::from_secs(1))
                    .await
                {
                    Ok(s) => (Some(s), None),
                    Err(e) => (None, Some(e.into_cluster_error("status").to_string())),
                }
            };
            let lag = replication
                .as_ref()
                .and_then(|r| r.get(id).map(|m| last.saturating_sub(m.unwrap_or(0))));
            members.push(MemberStatus {
                id: *id,
                addr: addr.clone(),
                role: role.into(),
                lag,
                status,
                error,
            });
        }
        ClusterStatus {
            cluster_id: local.cluster_id.clone(),
            group: self.group,
            leader: local.leader,
            term: local.term,
            members,
        }
    }

    /// Cut (or heal, with an empty set) the links to `nodes` (fault injection).
    pub fn cut_links(&self, nodes: HashSet<NodeId>) {
        tracing::warn!(nodes = ?nodes, "fault injection: links cut");
        self.client.faults.set_cut(nodes);
    }

    /// What a request that has done nothing yet answers on a node whose consensus is stopping
    /// (it is shutting down) or has stopped (its storage failed); None while it runs.
    fn stopped(&self) -> Option<ClusterError> {
        if self.is_stopping() {
            return Some(stopping());
        }
        self.fatal.borrow().as_deref().map(consensus_stopped)
    }

    /// Whether consensus is being stopped on purpose (the node is shutting down).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stop consensus on this node (it is shutting down); again is harmless.
    pub async fn shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        let _ = self.raft.shutdown().await;
    }
}

/// What a node that is stopping answers to a request it has not sent on: nothing was done.
fn stopping() -> ClusterError {
    ClusterError::NoLeader("this node is stopping; send the request to another node".into())
}

fn list(ids: impl Iterator<Item = NodeId>) -> String {
    ids.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

fn state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// What a request answers once consensus has stopped on this node, before it did anything.
fn consensus_stopped(reason: &str) -> ClusterError {
    ClusterError::Stopped(format!(
        "{reason}; nothing was done: send the request to another node"
    ))
}

/// A write (or membership change) handed to consensus that fails. Once openraft has taken it,
/// a stop of consensus does not say whether the entry was appended and replicated before it:
/// its outcome is unknown.
fn client_write_error(id: NodeId, e: RaftError<ClientWriteError>) -> ClusterError {
    match e {
        RE::Fatal(f) => ClusterError::Timeout(format!(
            "consensus stopped on node {id} while the change was being committed ({f}): its outcome is unknown, it may have been applied"
        )),
        RE::APIError(CWE::ForwardToLeader(f)) => ClusterError::NotLeader {
            node: id,
            leader: f.leader_id,
        },
        RE::APIError(CWE::ChangeMembershipError(e)) => ClusterError::BadRequest(e.to_string()),
    }
}

/// This node's id: the one its data folder was made with, else the configured one, else a new
/// random one (kept in the folder); and whether the folder is new.
/// A new node id: small enough to type, never 0.
pub(crate) fn random_node_id() -> NodeId {
    loop {
        let id = rand::random::<u64>() % 1_000_000_000;
        if id != 0 {
            break id;
        }
    }
}

fn node_identity(
    log: &LogStore,
    configured: Option<NodeId>,
) -> Result<(NodeId, bool), ClusterError> {
    let internal = |e: StoreError| ClusterError::Internal(e.to_string());
    let stored = log
        .tree()
        .get_meta(NODE_ID)
        .map_err(internal)?
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(u64::from_be_bytes);
    match (stored, configured) {
        (Some(s), Some(c)) if s != c => Err(ClusterError::Conflict(format!(
            "this data folder belongs to node {s}, but cluster.node_id is {c}"
        ))),
        (Some(s), _) => Ok((s, false)),
        (None, c) => {
            let id = c.unwrap_or_else(random_node_id);
            log.tree()
                .put_meta(NODE_ID, &id.to_be_bytes())
                .map_err(internal)?;
            Ok((id, true))
        }
    }
}

/// Follow openraft's metrics: leadership changes, and a stop (a storage failure) is fatal.
async fn watch_metrics(node: Arc<ClusterNode>) {
    let mut rx = node.raft.metrics();
    let mut known: (Option<NodeId>, u64) = (None, 0);
    loop {
        let (leader, fatal, current) = {
            let m = rx.borrow_and_update();
            (
                m.state == ServerState::Leader,
                m.running_state.as_ref().err().map(|e| e.to_string()),
                (m.current_leader, m.current_term),
            )
        };
        if current.0 != known.0 {
            match current.0 {
                Some(l) if l == node.id => {
                    tracing::info!(term = current.1, "this node is the leader")
                }
                Some(l) => tracing::info!(leader = l, term = current.1, "following a new leader"),
                None => tracing::info!(term = current.1, "no leader known"),
            }
        }
        known = current;
        let became = node.leadership.send_if_modified(|l| {
            let changed = *l != leader;
            *l = leader;
            changed
        });
        if became && leader {
            *node.leader_since.lock() = Some(Instant::now());
        }
        if let Some(reason) = fatal {
            if node.is_stopping() {
                tracing::info!("consensus stopped");
            } else {
                tracing::error!(reason = %reason, "consensus stopped");
            }
            let _ = node.fatal.send(Some(reason));
            return;
        }
        if rx.changed().await.is_err() {
            let _ = node.fatal.send(Some("consensus stopped".into()));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NoEvents, NoIndex};

    async fn leader(dir: &std::path::Path) -> Arc<ClusterNode> {
        let settings = ClusterSettings::for_tests(dir, 1, Some("a-secret-for-the-tests"));
        let store = Store::open(&dir.join("store"), Default::default()).unwrap();
        let node = ClusterNode::start(settings, store, Arc::new(NoIndex), Arc::new(NoEvents))
            .await
            .unwrap();
        assert!(
            node.is_rejoining(),
            "a new folder does not vote before it joins or inits"
        );
        node.initialize().await.unwrap();
        assert!(!node.is_rejoining());
        node.wait_for_leader().await.unwrap();
        node
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_leader_refuses_a_node_of_another_cluster_and_a_new_node_under_a_live_id() {
        let dir = tempfile::tempdir().unwrap();
        let node = leader(dir.path()).await;
        let foreign = node
            .handle_join(JoinRequest {
                node_id: 2,
                addr: "http://127.0.0.1:2".into(),
                cluster_id: Some("another-cluster".into()),
                fresh: false,
            })
            .await;
        assert!(
            matches!(&foreign, Err(ClusterError::Conflict(m)) if m.contains("belongs to cluster another-cluster")),
            "{foreign:?}"
        );
        // a learner joins (nothing answers at its address, which is fine for a learner)
        let ours = node.cluster_id().unwrap();
        node.handle_join(JoinRequest {
            node_id: 2,
            addr: "http://127.0.0.1:2".into(),
            cluster_id: Some(ours.clone()),
            fresh: true,
        })
        .await
        .unwrap();
        // another new process that claims id 2 from elsewhere while 2 answers is refused
        node.client.acks_for_tests(2);
        let clash = node
            .handle_join(JoinRequest {
                node_id: 2,
                addr: "http://127.0.0.1:3".into(),
                cluster_id: None,
                fresh: true,
            })
            .await;
        assert!(
            matches!(&clash, Err(ClusterError::Conflict(m)) if m.contains("in use by a live member")),
            "{clash:?}"
        );
        // promoting an unknown id, removing the last voter: refused
        assert!(matches!(
            node.promote(9).await,
            Err(ClusterError::NotFound(_))
        ));
        assert!(matches!(
            node.remove(1).await,
            Err(ClusterError::BadRequest(_))
        ));
        node.shutdown().await;
    }

    #[test]
    fn a_node_catches_up_once_it_applied_what_the_leader_had_committed_when_first_heard() {
        let mut c = CatchUp::default();
        let why = c.check(false, 0).unwrap();
        assert!(why.contains("has not heard from a leader"), "{why}");
        // a leader (a one-member cluster) is never behind itself
        assert_eq!(c.check(true, 0), None);
        c.target = Some(40);
        let why = c.check(false, 12).unwrap();
        assert!(why.contains("applied 12 of the 40"), "{why}");
        assert_eq!(c.check(false, 40), None);
        c.done = true;
        assert_eq!(c.check(false, 0), None, "caught up once, it stays so");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_told_to_fail_reports_its_first_reason() {
        let dir = tempfile::tempdir().unwrap();
        let node = leader(dir.path()).await;
        // a one-member cluster's leader is caught up once it applied an entry of its term
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(why) = node.catching_up() {
            assert!(
                Instant::now() < deadline,
                "the leader never caught up: {why}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let failed = node.failed();
        tokio::pin!(failed);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut failed)
                .await
                .is_err(),
            "a healthy node has not failed"
        );
        node.fail("the snapshot's state could not be read".into());
        node.fail("a later reason".into());
        let reason = tokio::time::timeout(Duration::from_secs(5), failed)
            .await
            .expect("failed() resolves once the node is told to fail");
        assert_eq!(reason, "the snapshot's state could not be read");
        node.shutdown().await;
    }
}
