//! One actor per index shard: the shard's only writer. It loads the shard (reloading the dumped
//! graph or rebuilding it from storage), applies inserts and deletes, compacts when tombstones
//! pile up, and dumps the graph to disk some time after it changed. Searches do not pass through
//! the actor: they read the published [`Shard`] directly, so they never wait behind a write.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use shoal_index::{Point, PointId, Shard};
use shoal_storage::CollectionRecord;

use crate::context::{to_index_points, NodeContext};

pub enum ShardMsg {
    /// First message of every incarnation: build the shard from storage.
    Load,
    Insert(Vec<Point>, RpcReplyPort<Result<(), String>>),
    Delete(Vec<PointId>, RpcReplyPort<Result<(), String>>),
    /// Dump the graph if it changed since the last dump.
    Persist,
    /// Fault injection: panic inside the handler.
    Panic,
}

pub struct ShardActor;

pub struct ShardArgs {
    pub collection: CollectionRecord,
    pub ctx: Arc<NodeContext>,
}

pub struct ShardState {
    collection: CollectionRecord,
    ctx: Arc<NodeContext>,
    shard: Option<Arc<Shard>>,
    dirty: bool,
    persist_scheduled: bool,
}

impl ShardState {
    fn shard(&self) -> Result<Arc<Shard>, String> {
        self.shard
            .clone()
            .ok_or_else(|| format!("shard `{}` is not loaded", self.collection.name))
    }

    fn changed(&mut self, myself: &ActorRef<ShardMsg>) {
        self.dirty = true;
        if !self.persist_scheduled {
            self.persist_scheduled = true;
            let delay = Duration::from_millis(self.ctx.config.index.persist_interval_ms);
            myself.send_after(delay, || ShardMsg::Persist);
        }
        self.update_gauges();
    }

    fn update_gauges(&self) {
        if let Some(shard) = &self.shard {
            let stats = shard.stats();
            let name = self.collection.name.as_str();
            let m = &self.ctx.metrics;
            m.index_points
                .with_label_values(&[name])
                .set(stats.live_points as f64);
            m.index_tombstones
                .with_label_values(&[name])
                .set(stats.tombstones as f64);
        }
    }

    async fn persist(&mut self) -> Result<(), ActorProcessingErr> {
        self.persist_scheduled = false;
        if !self.dirty {
            return Ok(());
        }
        let Some(shard) = self.shard.clone() else {
            return Ok(());
        };
        if !self
            .ctx
            .shards
            .is_current(&self.collection.name, self.collection.uid)
        {
            return Ok(()); // dropped meanwhile
        }
        let dir = self.ctx.shard_dump_dir(&self.collection);
        let start = Instant::now();
        self.ctx.background(move || shard.dump(&dir)).await??;
        self.dirty = false;
        tracing::debug!(collection = %self.collection.name, ms = start.elapsed().as_millis() as u64, "shard dumped");
        Ok(())
    }
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ShardMsg>,
        args: ShardArgs,
    ) -> Result<ShardState, ActorProcessingErr> {
        // Load goes first into the mailbox; every write sent after we attach queues behind it.
        // Writes that reach the store before the load reads it arrive twice, which the shard
        // ignores (point ids are never reused).
        myself.send_message(ShardMsg::Load)?;
        let c = &args.collection;
        args.ctx.shards.attach_actor(&c.name, c.uid, myself);
        Ok(ShardState {
            collection: args.collection,
            ctx: args.ctx,
            shard: None,
            dirty: false,
            persist_scheduled: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ShardMsg>,
        msg: ShardMsg,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Load => {
                let start = Instant::now();
                let ctx = state.ctx.clone();
                let coll = state.collection.clone();
                let (shard, report) = tokio::task::spawn_blocking(move || {
                    let points = to_index_points(ctx.store.points(&coll.name)?);
                    let dir = ctx.shard_dump_dir(&coll);
                    let opened = Shard::open(ctx.shard_params(&coll), points, Some(&dir))?;
                    Ok::<_, ActorProcessingErr>(opened)
                })
                .await??;
                let shard = Arc::new(shard);
                let c = &state.collection;
                state.ctx.shards.publish(&c.name, c.uid, shard.clone());
                state.shard = Some(shard);
                tracing::info!(
                    collection = %c.name,
                    reloaded_graph = report.reloaded,
                    inserted = report.inserted,
                    tombstoned = report.tombstoned,
                    ms = start.elapsed().as_millis() as u64,
                    "shard loaded"
                );
                if report.inserted > 0 || report.tombstoned > 0 {
                    state.changed(&myself);
                } else {
                    state.update_gauges();
                }
            }
            ShardMsg::Insert(points, reply) => {
                let result = match state.shard() {
                    Ok(shard) => state
                        .ctx
                        .background(move || shard.insert(points))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string())),
                    Err(e) => Err(e),
                };
                if result.is_ok() {
                    state.changed(&myself);
                }
                let _ = reply.send(result);
            }
            ShardMsg::Delete(ids, reply) => {
                let result = match state.shard() {
                    Ok(shard) => {
                        shard.delete(&ids);
                        if shard.needs_compaction() {
                            let start = Instant::now();
                            let s = shard.clone();
                            let removed = state.ctx.background(move || s.compact()).await?;
                            let name = state.collection.name.as_str();
                            state
                                .ctx
                                .metrics
                                .compactions
                                .with_label_values(&[name])
                                .inc();
                            tracing::info!(
                                collection = name,
                                removed,
                                ms = start.elapsed().as_millis() as u64,
                                "shard compacted"
                            );
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                if result.is_ok() {
                    state.changed(&myself);
                }
                let _ = reply.send(result);
            }
            ShardMsg::Persist => state.persist().await?,
            ShardMsg::Panic => panic!("fault injection: shard `{}` panics", state.collection.name),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ShardMsg>,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        // Clean stop (shutdown): keep the graph so the next start reloads instead of rebuilding.
        if let Err(e) = state.persist().await {
            tracing::warn!(collection = %state.collection.name, error = %e, "could not dump shard on stop");
        }
        Ok(())
    }
}
