//! The internal network, server side: `POST /internal/v1/groups/{group}/{op}` with a bincode body,
//! answered with a bincode body. Nothing here is part of the public API. Every request must carry
//! the cluster secret and the cluster id (see [`crate::network`]); a node whose secret is not set
//! answers none of them.
//!
//! | op | what |
//! |---|---|
//! | `append`, `vote`, `snapshot` | Raft RPCs |
//! | `propose` | a write forwarded to the leader; answers its index and outcome |
//! | `read-index` | the leader's read index (linearizable reads on other nodes) |
//! | `join` | add the sender as a learner (forwarded to the leader) |
//! | `membership` | promote or remove a node (on the leader) |
//! | `status` | this node's own status |

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ClusterError;
use crate::network::{HEADER_CLUSTER, HEADER_NODE, HEADER_SECRET};
use crate::node::{ClusterNode, JoinRequest, MembershipChange};
use crate::types::{decode, encode, GroupId, NodeId, TypeConfig};
use openraft::raft::AppendEntriesResponse;

/// The internal routes of `node`, to merge into the node's HTTP server.
pub fn internal_router(node: Arc<ClusterNode>) -> Router {
    let limit = node
        .settings
        .max_entry_bytes
        .saturating_mul(node.settings.max_entries_per_append as usize)
        .saturating_add(node.settings.snapshot_chunk_bytes as usize)
        .saturating_add(1 << 20);
    Router::new()
        .route("/internal/v1/groups/{group}/{op}", post(handle))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(node)
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, message.into()).into_response()
}

fn reply<T: Serialize>(value: &T) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/octet-stream")],
        encode(value),
    )
        .into_response()
}

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Response> {
    decode(bytes).map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("undecodable body: {e}")))
}

/// Whether `given` is the secret, comparing every byte whatever the first difference (the time
/// taken tells nothing of where the two differ; only of the secret's length).
pub fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    let mut diff = given.len() ^ secret.len();
    for (i, s) in secret.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ s);
    }
    diff == 0
}

fn check(node: &ClusterNode, headers: &HeaderMap, op: &str) -> Result<Option<NodeId>, Response> {
    let Some(secret) = &node.client.credentials.secret else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "this node takes no internal requests: cluster.secret is not set",
        ));
    };
    let given = headers
        .get(HEADER_SECRET)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !same_secret(given, secret.as_bytes()) {
        tracing::warn!(
            op,
            "an internal request with a wrong or missing cluster secret was refused"
        );
        return Err(refuse(StatusCode::UNAUTHORIZED, "wrong cluster secret"));
    }
    let from: Option<NodeId> = headers
        .get(HEADER_NODE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if let Some(f) = from {
        if node.client.faults.is_cut(f) {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the link from node {f} is cut (fault injection)"),
            ));
        }
    }
    let cluster = headers
        .get(HEADER_CLUSTER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // A node asking to join may belong to no cluster yet; the join itself checks its id.
    if !(op == "join" && cluster.is_empty()) {
        if let Err(why) = node.accept_cluster(cluster) {
            tracing::warn!(op, reason = %why, "an internal request from another cluster was refused");
            return Err(refuse(StatusCode::FORBIDDEN, why));
        }
    }
    Ok(from)
}

async fn handle(
    State(node): State<Arc<ClusterNode>>,
    Path((group, op)): Path<(GroupId, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    if group != node.group {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("this node serves group {}, not {group}", node.group),
        );
    }
    if let Err(r) = check(&node, &headers, &op) {
        return r;
    }
    match dispatch(&node, &op, &bytes).await {
        Ok(r) | Err(r) => r,
    }
}

async fn dispatch(node: &Arc<ClusterNode>, op: &str, bytes: &[u8]) -> Result<Response, Response> {
    let raft = &node.raft;
    Ok(match op {
        "append" => {
            let rpc: openraft::raft::AppendEntriesRequest<TypeConfig> = body(bytes)?;
            let leader_commit = rpc.leader_commit.map(|l| l.index).unwrap_or(0);
            let r = raft.append_entries(rpc).await;
            // (a sender with an older vote is not this node's leader)
            if matches!(&r, Ok(a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
                node.heard_from_leader(leader_commit);
            }
            reply(&r)
        }
        "vote" => {
            if node.is_rejoining() {
                // Its vote was lost with its data folder: it must not vote twice in a term.
                return Err(refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this node's data folder is new: it does not vote until it has joined the cluster again",
                ));
            }
            reply(&raft.vote(body(bytes)?).await)
        }
        "snapshot" => {
            let r = raft.install_snapshot(body(bytes)?).await;
            if r.is_ok() {
                *node.leader_contact.lock() = Some(Instant::now());
            }
            reply(&r)
        }
        "propose" => {
            let command = body(bytes)?;
            let r = if node.is_leader() {
                let deadline =
                    Instant::now() + Duration::from_millis(node.settings.write_timeout_ms);
                node.write_here(command, deadline).await
            } else {
                Err(ClusterError::NotLeader {
                    node: node.id,
                    leader: node.leader().map(|(id, _)| id),
                })
            };
            reply(&r)
        }
        "read-index" => {
            let r = if node.is_leader() {
                let deadline =
                    Instant::now() + Duration::from_millis(node.settings.write_timeout_ms);
                node.read_index_here(deadline).await
            } else {
                Err(ClusterError::NotLeader {
                    node: node.id,
                    leader: node.leader().map(|(id, _)| id),
                })
            };
            reply(&r)
        }
        "join" => {
            let req: JoinRequest = body(bytes)?;
            reply(&node.handle_join(req).await)
        }
        "membership" => {
            let change: MembershipChange = body(bytes)?;
            reply(&node.handle_membership(change).await)
        }
        "status" => reply(&node.local_status().await),
        other => refuse(
            StatusCode::NOT_FOUND,
            format!("no internal operation `{other}`"),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::ClusterSettings;
    use crate::{NoEvents, NoIndex};
    use shoal_storage::Store;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_whose_folder_is_new_refuses_to_vote_until_it_has_joined_or_made_a_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let settings = ClusterSettings::for_tests(dir.path(), 3, Some("a-secret-for-the-tests"));
        let store = Store::open(&dir.path().join("store"), Default::default()).unwrap();
        let node = ClusterNode::start(settings, store, Arc::new(NoIndex), Arc::new(NoEvents))
            .await
            .unwrap();
        // a candidate of term 5 asks this node (say, a voter that lost its folder) for its vote
        let ask = openraft::raft::VoteRequest::new(
            openraft::Vote::new(5, 1),
            Some(openraft::LogId::new(
                openraft::CommittedLeaderId::new(4, 1),
                10,
            )),
        );
        let refused = dispatch(&node, "vote", &encode(&ask)).await;
        assert!(
            matches!(&refused, Err(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE),
            "a rejoining node voted"
        );
        // once it has made (or joined) a cluster, it answers votes
        node.initialize().await.unwrap();
        let answered = dispatch(&node, "vote", &encode(&ask)).await;
        assert!(matches!(&answered, Ok(r) if r.status() == StatusCode::OK));
        node.shutdown().await;
    }
}
