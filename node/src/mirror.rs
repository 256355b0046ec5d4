//! The index mirror: hands the effects of applied commands to the shard actors, in log order.
//!
//! One task reads the apply loop's effects and, for each command, starts or stops shard actors
//! and sends each affected shard one message with that command's point changes. It never waits
//! for a shard to finish: the shard reports to the [`crate::watermark::IndexWatermark`] when it
//! has. A shard that cannot take its message (it is being restarted) loses nothing: it reloads
//! from the store, which already holds the change.

use std::collections::BTreeMap;
use std::sync::Arc;

use shoal_storage::Effect;
use tokio::sync::mpsc;

use crate::actors::shard::{ShardMsg, ShardOp};
use crate::actors::supervisor::SupervisorMsg;
use crate::apply_loop::EffectBatch;
use crate::context::{to_index_points, NodeContext};

/// Hand every applied command's effects on, in log order. Never waits for an actor or the
/// file system: one slow collection cannot hold up the others' mirroring.
pub async fn run(ctx: Arc<NodeContext>, mut effects: mpsc::UnboundedReceiver<EffectBatch>) {
    while let Some(batch) = effects.recv().await {
        mirror(&ctx, batch.index, batch.effects);
        // The caller's hold (its room in the ingest queue) goes now that its documents are queued.
        drop(batch.hold);
    }
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
                match ctx.supervisor() {
                    Ok(sup) => {
                        if let Err(e) = sup.cast(SupervisorMsg::StartShard(record)) {
                            tracing::error!(error = %e, "could not ask for a shard actor");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "no supervisor to start a shard actor"),
                }
            }
            Effect::CollectionDropped { name, uid } => {
                ctx.ingest.drop_collection(uid);
                for gauge in [&ctx.metrics.index_points, &ctx.metrics.index_tombstones] {
                    let _ = gauge.remove_label_values(&[name.as_str()]);
                }
                ctx.shards.remove(&name, uid);
                ctx.watermark.forget(uid);
                ops.remove(&uid);
                if let Ok(sup) = ctx.supervisor() {
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
            Effect::DocumentsPending(docs) => ctx.ingest.enqueue(docs),
        }
    }
    for (uid, (collection, ops)) in ops {
        let actor = ctx
            .shards
            .get(&collection)
            .filter(|s| s.uid == uid)
            .and_then(|s| s.actor);
        let sent = match actor {
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
