//! The index mirror: hands the effects of applied commands to the shard actors, in log order.
//!
//! One task reads the apply loop's effects and, for each command, starts or stops shard actors
//! and sends each affected shard one message with that command's point changes. It never waits
//! for a shard to finish: the shard reports to the [`crate::watermark::IndexWatermark`] when it
//! has. A shard that cannot take its message (it is being restarted) loses nothing: it reloads
//! from the store, which already holds the change.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_storage::Effect;
use tokio::sync::mpsc;

use crate::actors::ask;
use crate::actors::shard::{ShardMsg, ShardOp};
use crate::actors::supervisor::SupervisorMsg;
use crate::apply_loop::EffectBatch;
use crate::context::{to_index_points, NodeContext};

/// How long the mirror waits for the supervisor to start or stop a shard actor.
const SUPERVISOR_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(ctx: Arc<NodeContext>, mut effects: mpsc::UnboundedReceiver<EffectBatch>) {
    while let Some((index, batch)) = effects.recv().await {
        mirror(&ctx, index, batch).await;
    }
}

async fn mirror(ctx: &Arc<NodeContext>, index: u64, effects: Vec<Effect>) {
    // Point changes of one command, per collection, in the command's order.
    let mut ops: BTreeMap<u64, (String, Vec<ShardOp>)> = BTreeMap::new();
    for effect in effects {
        match effect {
            Effect::CollectionCreated(record) => {
                // The new actor loads from the store as of an index at or after this one, which
                // tells the watermark.
                let name = record.name.clone();
                let result = match ctx.supervisor() {
                    Ok(sup) => ask(sup, "supervisor", SUPERVISOR_TIMEOUT, |reply| {
                        SupervisorMsg::StartShard(record, reply)
                    })
                    .await
                    .and_then(|r| r.map_err(crate::error::NodeError::Internal)),
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    tracing::error!(collection = %name, error = %e, "could not start the shard actor");
                }
            }
            Effect::CollectionDropped { name, uid } => {
                ctx.ingest.drop_collection(uid);
                for gauge in [&ctx.metrics.index_points, &ctx.metrics.index_tombstones] {
                    let _ = gauge.remove_label_values(&[name.as_str()]);
                }
                ctx.shards.remove(&name, uid);
                if let Ok(sup) = ctx.supervisor() {
                    let stopped = ask(sup, "supervisor", SUPERVISOR_TIMEOUT, |reply| {
                        SupervisorMsg::StopShard {
                            name: name.clone(),
                            uid,
                            reply,
                        }
                    })
                    .await;
                    if let Err(e) = stopped {
                        tracing::warn!(collection = %name, error = %e, "could not stop the shard actor");
                    }
                }
                ctx.remove_dump(&name, uid).await;
                ctx.watermark.forget(uid);
                ops.remove(&uid);
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
            // The actor is restarting: its next load reads the store, which has this change.
            tracing::debug!(collection = %collection, index, error = %e, "shard actor unavailable; it reloads from the store");
        }
    }
}
