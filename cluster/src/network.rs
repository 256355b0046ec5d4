//! The internal network, client side: Raft RPCs and the cluster's own requests (forwarded writes,
//! read indexes, joins) as HTTP POSTs with bincode bodies, on the internal routes of the peers'
//! listeners (see [`crate::server`]). Every request carries the cluster secret, the cluster id and
//! the sender's node id; the peer refuses it otherwise.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, NetworkError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ClusterError;
use crate::types::{decode, encode, GroupId, NodeId, NodeInfo, RaftError, RpcError, TypeConfig};

pub const HEADER_SECRET: &str = "x-shoal-cluster-secret";
pub const HEADER_CLUSTER: &str = "x-shoal-cluster-id";
pub const HEADER_NODE: &str = "x-shoal-node-id";

/// Who this node is on the wire, and the secret it proves membership with.
pub struct Credentials {
    pub node_id: NodeId,
    /// The shared cluster secret (`cluster.secret`); None: this node talks to nobody.
    pub secret: Option<String>,
    /// The cluster's id, once this node belongs to one.
    pub cluster_id: RwLock<Option<String>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Credentials")
            .field("node_id", &self.node_id)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("cluster_id", &*self.cluster_id.read())
            .finish()
    }
}

/// Transport faults injected for tests and drills (`debug.fault_injection`): links to the listed
/// nodes are cut both ways, as a partition would cut them.
#[derive(Default)]
pub struct NetworkFaults {
    cut: RwLock<HashSet<NodeId>>,
}

impl NetworkFaults {
    pub fn set_cut(&self, nodes: HashSet<NodeId>) {
        *self.cut.write() = nodes;
    }
    pub fn is_cut(&self, node: NodeId) -> bool {
        self.cut.read().contains(&node)
    }
    pub fn cut(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.cut.read().iter().copied().collect();
        v.sort_unstable();
        v
    }
}

/// How a request failed before an answer came.
#[derive(Debug)]
pub enum Transport {
    /// Never reached the peer (refused, no route, the link is cut): nothing happened there.
    Unreachable(String),
    /// Sent, but no (complete) answer: it may have happened.
    Lost(String),
    /// The peer refused it (HTTP status and its message).
    Refused(u16, String),
}

impl Transport {
    pub(crate) fn into_cluster_error(self, what: &str) -> ClusterError {
        match self {
            Transport::Unreachable(e) => ClusterError::Unreachable(format!("{what}: {e}")),
            Transport::Lost(e) => ClusterError::Timeout(format!(
                "{what}: {e}; the request may or may not have taken effect"
            )),
            Transport::Refused(status, m) => {
                ClusterError::Refused(format!("{what} answered {status}: {m}"))
            }
        }
    }
}

/// The client half shared by every peer connection.
pub struct Client {
    http: reqwest::Client,
    pub credentials: Arc<Credentials>,
    pub faults: Arc<NetworkFaults>,
    group: GroupId,
    /// When each peer last answered an append (heartbeats included): the leader's view of its
    /// quorum, for telling a leader cut off in a minority.
    acks: Mutex<HashMap<NodeId, Instant>>,
    /// Whether each peer answered the last request (logged when it changes: openraft's own
    /// logs repeat every failed heartbeat).
    reachable: Mutex<HashMap<NodeId, bool>>,
}

impl Client {
    pub fn new(
        credentials: Arc<Credentials>,
        faults: Arc<NetworkFaults>,
        group: GroupId,
    ) -> Client {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(1000))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Client {
            http,
            credentials,
            faults,
            group,
            acks: Mutex::new(HashMap::new()),
            reachable: Mutex::new(HashMap::new()),
        }
    }

    fn note_reachable(&self, node: NodeId, ok: bool, why: &str) {
        let before = self.reachable.lock().insert(node, ok);
        match (before, ok) {
            (Some(false), true) => tracing::info!(node, "peer reachable again"),
            (Some(true) | None, false) => {
                tracing::warn!(node, reason = why, "peer unreachable")
            }
            _ => {}
        }
    }

    /// Record an answer from `node` now (tests).
    #[cfg(test)]
    pub(crate) fn acks_for_tests(&self, node: NodeId) {
        self.acks.lock().insert(node, Instant::now());
    }

    /// When `node` last answered an append.
    pub fn last_ack(&self, node: NodeId) -> Option<Instant> {
        self.acks.lock().get(&node).copied()
    }

    /// POST `body` to `route` (under the group's internal prefix) of the node at `addr`.
    pub(crate) async fn post(
        &self,
        target: Option<NodeId>,
        addr: &str,
        route: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, Transport> {
        if let Some(t) = target {
            if self.faults.is_cut(t) {
                return Err(Transport::Unreachable(format!(
                    "the link to node {t} is cut (fault injection)"
                )));
            }
        }
        let Some(secret) = &self.credentials.secret else {
            return Err(Transport::Unreachable(
                "cluster.secret is not set: this node cannot talk to other nodes".into(),
            ));
        };
        let url = format!(
            "{}/internal/v1/groups/{}/{route}",
            addr.trim_end_matches('/'),
            self.group
        );
        let cluster = self
            .credentials
            .cluster_id
            .read()
            .clone()
            .unwrap_or_default();
        let req = self
            .http
            .post(url)
            .header(HEADER_SECRET, secret.as_str())
            .header(HEADER_CLUSTER, cluster)
            .header(HEADER_NODE, self.credentials.node_id.to_string())
            .header("content-type", "application/octet-stream")
            .timeout(timeout)
            .body(body);
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                Transport::Unreachable(e.to_string())
            } else {
                Transport::Lost(e.to_string())
            }
        })?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Transport::Lost(e.to_string()))?;
        if status != 200 {
            return Err(Transport::Refused(
                status,
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
        Ok(bytes.to_vec())
    }

    /// A request whose answer is a bincode value.
    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: Option<NodeId>,
        addr: &str,
        route: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, Transport> {
        let bytes = self.post(target, addr, route, encode(req), timeout).await?;
        decode(&bytes).map_err(|e| Transport::Lost(format!("undecodable answer: {e}")))
    }
}

impl Client {
    /// A request to another node whose answer is the cluster's own `Result` (a forwarded write,
    /// a join, a membership change): transport failures and the node's refusal come back as one
    /// [`ClusterError`], saying `what` was asked.
    pub(crate) async fn ask<Req: Serialize, T: DeserializeOwned>(
        &self,
        target: Option<NodeId>,
        addr: &str,
        route: &str,
        req: &Req,
        timeout: Duration,
        what: &str,
    ) -> Result<T, ClusterError> {
        self.call::<_, Result<T, ClusterError>>(target, addr, route, req, timeout)
            .await
            .map_err(|e| e.into_cluster_error(what))?
    }
}

/// openraft's view of the network: one [`Peer`] per target node.
#[derive(Clone)]
pub struct Network {
    pub client: Arc<Client>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            client: self.client.clone(),
        }
    }
}

pub struct Peer {
    target: NodeId,
    addr: String,
    client: Arc<Client>,
}

impl Peer {
    async fn rpc<Req: Serialize, Resp: DeserializeOwned, E>(
        &self,
        route: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcError<E>>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Result<Resp, RaftError<E>>, Transport> = self
            .client
            .call(Some(self.target), &self.addr, route, req, option.hard_ttl())
            .await;
        match &answer {
            Ok(_) => self.client.note_reachable(self.target, true, ""),
            Err(Transport::Unreachable(e) | Transport::Lost(e)) => {
                self.client.note_reachable(self.target, false, e)
            }
            Err(Transport::Refused(_, m)) => self.client.note_reachable(self.target, false, m),
        }
        match answer {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RpcError::RemoteError(RemoteError::new(self.target, remote))),
            Err(Transport::Unreachable(e)) => Err(RpcError::Unreachable(Unreachable::new(
                &std::io::Error::other(e),
            ))),
            Err(Transport::Lost(e)) => Err(RpcError::Network(NetworkError::new(
                &std::io::Error::other(e),
            ))),
            Err(Transport::Refused(status, m)) => {
                if status == 401 || status == 403 {
                    tracing::warn!(target = self.target, status, message = %m, "a peer refused this node's request");
                }
                Err(RpcError::Unreachable(Unreachable::new(
                    &std::io::Error::other(format!("{status}: {m}")),
                )))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        let resp: AppendEntriesResponse<NodeId> = self.rpc("append", &rpc, &option).await?;
        self.client.acks.lock().insert(self.target, Instant::now());
        Ok(resp)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        self.rpc("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        self.rpc("vote", &rpc, &option).await
    }
}
