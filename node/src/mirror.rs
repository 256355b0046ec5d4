//! The index mirror: hands the effects of applied commands to the shard actors, in log order.
//!
//! The state machine ([`shoal_cluster::state_machine`]) calls the [`NodeSink`] for every entry
//! it applies; the sink registers the entry with the [`IndexWatermark`] and passes its effects to
//! one task that, for each command, starts or stops shard actors and sends each affected shard
//! one message with that command's point changes. It never waits for a shard to finish: the shard
//! reports to the watermark when it has. A shard that cannot take its message (it is being
//! restarted) loses nothing: it reloads from the store, which already holds the change. When a
//! snapshot replaces the whole state, every shard is rebuilt from the new store.

use std::collections::BTreeMap;
use std::sync::Arc;

use ractor::ActorRef;
use shoal_cluster::IndexSink;
use shoal_storage::Effect;
use tokio::sync::mpsc;

use crate::actors::shard::{ShardMsg, ShardOp};
use crate::actors::supervisor::SupervisorMsg;
use crate::context::{to_index_points, NodeContext};
use crate::watermark::IndexWatermark;

/// How long a node waits before it tries to claim a document another node is preferred for.
const OTHERS_WAIT_MS: u64 = 300;

/// What the state machine tells the mirror.
pub enum MirrorMsg {
    /// The effects of the command applied at `index`.
    Effects { index: u64, effects: Vec<Effect> },
    /// A snapshot replaced the whole state as of `index`.
    Replaced { index: u64 },
    /// The new state's collections could not be read: the node must stop.
    Failed { reason: String },
}

/// The state machine's view of the index: the watermark learns of every applied entry (in log
/// order, before its effects are handled), the mirror task gets the effects.
pub struct NodeSink {
    pub watermark: Arc<IndexWatermark>,
    pub tx: mpsc::UnboundedSender<MirrorMsg>,
    /// To read the new state's collections when a snapshot replaces it.
    pub store: shoal_storage::Store,
}

impl IndexSink for NodeSink {
    fn applied(&self, index: u64, effects: Vec<Effect>) {
        self.watermark
            .applied(index, &crate::watermark::shard_uids(&effects));
        if !effects.is_empty() {
            let _ = self.tx.send(MirrorMsg::Effects { index, effects });
        }
    }

    fn replaced(&self, index: u64) {
        // Before any later entry registers: every collection of the new state waits for its
        // shard to reload from it.
        match self.store.collections() {
            Ok(c) => {
                let uids: Vec<u64> = c.iter().map(|c| c.uid).collect();
                self.watermark.replaced(index, &uids);
            }
            Err(e) => {
                let _ = self.tx.send(MirrorMsg::Failed {
                    reason: format!("cannot read the collections a snapshot installed: {e}"),
                });
                return;
            }
        }
        let _ = self.tx.send(MirrorMsg::Replaced { index });
    }
}

/// Hand every applied command's effects on, in log order. Never waits for an actor or the
/// file system: one slow collection cannot hold up the others' mirroring.
pub async fn run(ctx: Arc<NodeContext>, mut rx: mpsc::UnboundedReceiver<MirrorMsg>) {
    while let Some(msg) = rx.recv().await {
        let index = match msg {
            MirrorMsg::Effects { index, effects } => {
                mirror(&ctx, index, effects);
                index
            }
            MirrorMsg::Replaced { index } => {
                rebuild(&ctx, index).await;
                index
            }
            MirrorMsg::Failed { reason } => {
                ctx.cluster.fail(reason);
                continue;
            }
        };
        // Callers holding room in the ingest queue for a command let go once this is past it.
        ctx.mirrored.send_modify(|m| *m = (*m).max(index));
    }
}

/// The store was replaced by a snapshot: stop every shard, rebuild each from the new store, and
/// queue the new state's pending documents.
async fn rebuild(ctx: &Arc<NodeContext>, index: u64) {
    tracing::info!(
        index,
        "the state was replaced by a snapshot; rebuilding the index"
    );
    ctx.actors.ingest.clear();
    // The shards of the new state's collections wait for this reload (the watermark holds their
    // reads back): a node that cannot do it cannot serve them, and stops; a restart reloads
    // every shard from the store.
    let sup = match ctx.actors.supervisor() {
        Ok(s) => s.clone(),
        Err(e) => {
            ctx.cluster.fail(format!(
                "no supervisor to rebuild the shards after a snapshot: {e}"
            ));
            return;
        }
    };
    let store = ctx.store.clone();
    let read = tokio::task::spawn_blocking(move || {
        Ok::<_, shoal_storage::StoreError>((store.collections()?, store.pending_documents()?))
    })
    .await;
    let (collections, pending) = match read {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            ctx.cluster
                .fail(format!("cannot read the state a snapshot installed: {e}"));
            return;
        }
        Err(e) => {
            ctx.cluster.fail(format!(
                "reading the state a snapshot installed failed: {e}"
            ));
            return;
        }
    };
    // Shards of collections the new state still has reload from it (the old shard serves
    // searches until the new one is published); the others stop; new ones start.
    let keep: std::collections::HashSet<(String, u64)> = collections
        .iter()
        .map(|c| (c.name.clone(), c.uid))
        .collect();
    let had: std::collections::HashSet<(String, u64)> =
        ctx.actors.shards.all().into_iter().collect();
    for (name, uid) in had.difference(&keep) {
        ctx.actors.shards.remove(name, *uid);
        ctx.watermark.forget(*uid);
        let _ = sup.cast(SupervisorMsg::StopShard {
            name: name.clone(),
            uid: *uid,
        });
    }
    for c in collections {
        match shard_actor(ctx, &c.name, c.uid) {
            Some(a) if had.contains(&(c.name.clone(), c.uid)) => {
                if a.cast(ShardMsg::Load).is_err() {
                    // It is restarting: its restart loads from the new store anyway.
                    tracing::debug!(collection = %c.name, "shard actor restarting during a rebuild");
                }
            }
            _ => {
                let _ = sup.cast(SupervisorMsg::StartShard(c));
            }
        }
    }
    ctx.actors.ingest.enqueue(pending);
    if let Err(e) = ctx.remove_orphan_dumps() {
        tracing::warn!(error = %e, "could not remove the dumps of dropped collections");
    }
}

/// The running actor of the shard of collection `name` of this `uid`, if any.
fn shard_actor(ctx: &NodeContext, name: &str, uid: u64) -> Option<ActorRef<ShardMsg>> {
    ctx.actors
        .shards
        .get(name)
        .filter(|s| s.uid == uid)
        .and_then(|s| s.actor)
}

fn mirror(ctx: &Arc<NodeContext>, index: u64, effects: Vec<Effect>) {
    // Point changes of one command, per collection, in the command's order.
    let mut ops: BTreeMap<u64, (String, Vec<ShardOp>)> = BTreeMap::new();
    for effect in effects {
        match effect {
            Effect::CollectionCreated(record) => {
                // The new actor attaches before it loads, and loads from the store as of an index
                // at or after this one (which tells the watermark); changes sent before it has
                // attached are in that load.
                match ctx.actors.supervisor() {
                    Ok(sup) => {
                        if let Err(e) = sup.cast(SupervisorMsg::StartShard(record)) {
                            tracing::error!(error = %e, "could not ask for a shard actor");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "no supervisor to start a shard actor"),
                }
            }
            Effect::CollectionUpdated(record) => {
                // The shard loads again with the new spec (searches go to the one it has until
                // then), and that load releases the watermark at this index. An actor that is
                // restarting loads with it anyway.
                match shard_actor(ctx, &record.name, record.uid) {
                    Some(a) => {
                        if a.cast(ShardMsg::Load).is_err() {
                            tracing::debug!(collection = %record.name, "shard actor restarting during an update");
                        }
                    }
                    None => {
                        tracing::debug!(collection = %record.name, "no shard actor to update: it loads with the new spec when it starts")
                    }
                }
            }
            Effect::CollectionDropped { name, uid } => {
                ctx.actors.ingest.drop_collection(uid);
                for gauge in [
                    &ctx.runtime.metrics.index_points,
                    &ctx.runtime.metrics.index_tombstones,
                ] {
                    let _ = gauge.remove_label_values(&[name.as_str()]);
                }
                ctx.actors.shards.remove(&name, uid);
                ctx.watermark.forget(uid);
                ops.remove(&uid);
                if let Ok(sup) = ctx.actors.supervisor() {
                    let _ = sup.cast(SupervisorMsg::StopShard {
                        name: name.clone(),
                        uid,
                    });
                }
                // After any dump of it in progress.
                let c = ctx.clone();
                tokio::spawn(async move { c.remove_dump(&name, uid).await });
            }
            Effect::PointsAdded {
                collection,
                uid,
                points,
            } => ops
                .entry(uid)
                .or_insert_with(|| (collection, Vec::new()))
                .1
                .push(ShardOp::Insert(to_index_points(points))),
            Effect::PointsRemoved {
                collection,
                uid,
                ids,
            } => ops
                .entry(uid)
                .or_insert_with(|| (collection, Vec::new()))
                .1
                .push(ShardOp::Delete(ids)),
            Effect::DocumentsPending(docs) => {
                // Every node queues every pending document. Each document has a preferred node
                // (by the entry's index and its place in it), which takes it at once; the others
                // wait a moment before they try, and by then usually find it claimed. One
                // document alone is spread the same way, request after request.
                let (pos, members) = ctx.cluster.member_position();
                if members <= 1 {
                    ctx.actors.ingest.enqueue(docs);
                } else {
                    let (mine, others): (Vec<_>, Vec<_>) = docs
                        .into_iter()
                        .enumerate()
                        .partition(|(i, _)| (index as usize + i) % members == pos);
                    ctx.actors
                        .ingest
                        .enqueue(mine.into_iter().map(|(_, d)| d).collect());
                    ctx.actors.ingest.enqueue_later(
                        others.into_iter().map(|(_, d)| d).collect(),
                        crate::actors::ingest::now_ms() + OTHERS_WAIT_MS,
                    );
                }
            }
            Effect::DocumentsDone(docs) => ctx.actors.ingest.done(&docs),
        }
    }
    for (uid, (collection, ops)) in ops {
        let sent = match shard_actor(ctx, &collection, uid) {
            Some(actor) => actor
                .cast(ShardMsg::Apply { index, ops })
                .map_err(|e| e.to_string()),
            None => Err("no shard actor".to_string()),
        };
        if let Err(e) = sent {
            // The actor is (re)starting: its load reads the store, which has this change.
            tracing::debug!(collection = %collection, index, error = %e, "shard actor unavailable; it reloads from the store");
        }
    }
}
