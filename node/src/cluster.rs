//! The node's side of the cluster: its settings from `[cluster]`, the counters the cluster layer
//! reports, and how a node becomes a member at its first start (a new one-member cluster, or a
//! join through another node).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use shoal_cluster::{ClusterEvents, ClusterNode, ClusterSettings, IndexSink, DEFAULT_GROUP};
use shoal_storage::Store;

use crate::config::Config;
use crate::context::NodeContext;
use crate::metrics::Metrics;

impl ClusterEvents for Metrics {
    fn forwarded_write(&self) {
        self.cluster_forwarded_writes.inc();
    }
    fn snapshot_built(&self) {
        self.cluster_snapshots.with_label_values(&["built"]).inc();
    }
    fn snapshot_installed(&self) {
        self.cluster_snapshots
            .with_label_values(&["installed"])
            .inc();
    }
}

/// The cluster layer's settings for this node.
pub fn settings(config: &Config) -> ClusterSettings {
    let c = &config.cluster;
    ClusterSettings {
        group: DEFAULT_GROUP,
        node_id: (c.node_id != 0).then_some(c.node_id),
        advertise: c
            .advertise
            .clone()
            .unwrap_or_else(|| format!("http://{}", config.server.listen)),
        secret: c.secret.as_ref().map(|s| s.0.clone()),
        snapshot_dir: config.storage.data_dir.join("snapshots"),
        heartbeat_ms: c.heartbeat_ms,
        election_timeout_min_ms: c.election_timeout_min_ms,
        election_timeout_max_ms: c.election_timeout_max_ms,
        snapshot_after_entries: c.snapshot_after_entries,
        keep_entries_after_snapshot: c.keep_entries_after_snapshot,
        snapshot_chunk_bytes: c.snapshot_chunk_bytes,
        install_snapshot_timeout_ms: c.install_snapshot_timeout_ms,
        max_entries_per_append: c.max_entries_per_append,
        max_entry_bytes: c.max_entry_bytes,
        write_timeout_ms: c.write_timeout_ms,
        stale_after_ms: c.stale_after_ms,
        capabilities: if config.reranker.path.is_some() {
            vec!["reranker".into()]
        } else {
            Vec::new()
        },
        actor_restarts: Default::default(),
    }
}

/// Start this node's Raft over the store.
pub async fn start(
    config: &Config,
    store: Store,
    sink: Arc<dyn IndexSink>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Arc<ClusterNode>> {
    let mut settings = settings(config);
    settings.actor_restarts = metrics.actor_restarts_total.clone();
    let node = ClusterNode::start(settings, store, sink, metrics)
        .await
        .context("cannot start consensus")?;
    tracing::info!(node = node.id, cluster = ?node.cluster_id(), "consensus started");
    Ok(node)
}

/// At the first start: join the cluster of `cluster.join`, or make a new one-member cluster
/// (`cluster.bootstrap`), or wait to be added. A node that already belongs to a cluster just runs
/// (telling the cluster if its address changed). A node whose data folder is new joins even if
/// a leader reached it first (it must not vote before the leader has made it a learner). A node
/// that joined asking to vote is promoted once caught up, across restarts.
pub async fn bootstrap_or_join(ctx: Arc<NodeContext>) {
    let cluster = ctx.cluster.clone();
    let c = &ctx.config.cluster;
    match cluster.finish_initialize().await {
        Ok(true) => return,
        Ok(false) => {}
        Err(e) => tracing::error!(error = %e, "could not finish making the cluster"),
    }
    if cluster.is_initialized().await && !cluster.is_rejoining() {
        // A member that restarted at another address tells the others where it is now.
        let mut delay = Duration::from_millis(200);
        while let Err(e) = cluster.update_address().await {
            tracing::warn!(error = %e, retry_ms = delay.as_millis() as u64, "could not tell the cluster this node's new address yet");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        if cluster.promotion_pending() {
            cluster.promote_self_when_caught_up().await;
        }
        return;
    }
    let Some(seed) = c.join.clone() else {
        if cluster.is_initialized().await {
            tracing::warn!(
                node = cluster.id,
                "this node's data folder is new but it is a member of a cluster: it does not vote until it joins again (shoal cluster join, or --join)"
            );
        } else if c.bootstrap.unwrap_or(c.secret.is_none()) {
            match cluster.initialize().await {
                Ok(id) => tracing::info!(cluster = %id, "made a new one-member cluster"),
                Err(e) => tracing::error!(error = %e, "could not make a new cluster"),
            }
        } else {
            tracing::warn!(
                node = cluster.id,
                "not part of a cluster yet: run `shoal cluster init` on the first node, or start the others with --join"
            );
        }
        return;
    };
    let mut delay = Duration::from_millis(200);
    // A clash with this node's own previous process (its last answers are still fresh on the
    // leader) clears up within `stale_after_ms`: retry that long before giving up.
    let clash_until = std::time::Instant::now() + Duration::from_millis(c.stale_after_ms * 2);
    loop {
        match cluster.join(&seed, c.join_as_voter).await {
            Ok(_) => break,
            Err(e @ shoal_cluster::ClusterError::Conflict(_))
                if !e.to_string().contains("in use by a live member")
                    || std::time::Instant::now() >= clash_until =>
            {
                tracing::error!(error = %e, seed = %seed, "cannot join this cluster");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, seed = %seed, retry_ms = delay.as_millis() as u64, "could not join yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    if c.join_as_voter {
        cluster.promote_self_when_caught_up().await;
    }
}
