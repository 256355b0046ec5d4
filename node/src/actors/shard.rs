//! One actor per index shard: the shard's only writer. It loads the shard (reloading the dumped
//! graph or rebuilding it from storage), applies the point changes of each command after the
//! store has committed it, compacts when tombstones pile up, and dumps the graph to disk some time
//! after it changed. Searches do not pass through the actor: they read the published [`Shard`]
//! directly, so they never wait behind a write.
//!
//! The actor knows the log index its shard reflects (`applied`): it loads the store's points as of
//! at least an index `L` (the store's applied index when the load starts; commands applied while
//! it reads may show too), skips changes at or below `L` and replays those above it (inserting a
//! point it already has and deleting one it lacks change nothing), reports every change it mirrors
//! to the watermark, and writes the index into every graph dump, so that a dump newer than the
//! store (lost writes after a crash without `sync_writes`) is never used. The load reads chunks
//! before documents: a chunk replaced while it reads can carry its new document's metadata only
//! until the replacement's removal of it, which comes after `L`, is replayed. A chunk removed or
//! stored in the middle of the read (between its record and its vector) is left out, not taken for
//! corruption (`Store::points_at`): its change too comes after `L`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use shoal_index::{Point, PointId, Shard, ShardDump};
use shoal_storage::{CollectionRecord, StoreError, WithVectors};

use crate::context::{to_index_points, NodeContext};
use crate::error::NodeError;

/// One change of a shard's points, as a command made it.
#[derive(Debug)]
pub enum ShardOp {
    Insert(Vec<Point>),
    Delete(Vec<PointId>),
}

pub enum ShardMsg {
    /// First message of every incarnation: build the shard from storage.
    Load,
    /// The point changes of the command at log index `index`, in order.
    Apply { index: u64, ops: Vec<ShardOp> },
    /// Dump the graph if it changed since the last dump.
    Persist,
    /// Fault injection: panic inside the handler.
    Panic,
}

pub struct ShardActor;

pub struct ShardArgs {
    pub collection: CollectionRecord,
    pub ctx: Arc<NodeContext>,
    /// The actor's first start (see [`crate::shards::ShardRegistry::attach_actor`]).
    pub fresh: bool,
}

pub struct ShardState {
    collection: CollectionRecord,
    ctx: Arc<NodeContext>,
    shard: Option<Arc<Shard>>,
    /// The log index the shard reflects.
    applied: u64,
    dirty: bool,
    persist_scheduled: bool,
    /// A change failed half-way: the shard no longer matches `applied`, so it is never dumped.
    failed: bool,
}

impl ShardState {
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
            let m = &self.ctx.runtime.metrics;
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
        if !self.dirty || self.failed {
            return Ok(());
        }
        let Some(shard) = self.shard.clone() else {
            return Ok(());
        };
        let c = &self.collection;
        if !self.ctx.actors.shards.is_current(&c.name, c.uid) {
            return Ok(()); // dropped meanwhile
        }
        let dir = self.ctx.shard_dump_dir(c);
        let start = Instant::now();
        let applied = self.applied;
        // One dump or load of this folder at a time (an actor restarting after this one).
        let files = self.ctx.actors.shards.dump_files(c.uid).await;
        let (ctx, name, uid) = (self.ctx.clone(), c.name.clone(), c.uid);
        self.ctx
            .maintenance(move || {
                let _files = files;
                // Dropped while this waited for the folder: its removal may have run already,
                // and a dump written now would stay behind.
                if !ctx.actors.shards.is_current(&name, uid) {
                    return Ok(());
                }
                shard.dump(&dir, applied)
            })
            .await??;
        self.dirty = false;
        tracing::debug!(collection = %c.name, applied, ms = start.elapsed().as_millis() as u64, "shard dumped");
        Ok(())
    }

    /// The collection was dropped before its shard loaded: forget it (false: the actor stops).
    fn dropped_before_load(&mut self) -> bool {
        let coll = &self.collection;
        tracing::debug!(collection = %coll.name, "collection dropped before its shard loaded");
        // Nothing of it is awaited, and nobody restarts it.
        self.ctx.watermark.forget(coll.uid);
        self.ctx.actors.shards.remove(&coll.name, coll.uid);
        false
    }

    async fn load(&mut self, myself: &ActorRef<ShardMsg>) -> Result<bool, ActorProcessingErr> {
        let start = Instant::now();
        let ctx = self.ctx.clone();
        // A collection dropped (or dropped and made again) before its shard loaded: nothing to
        // load, and no dump lock to take for it. Its record as it is now: the shard loads with
        // its spec (a load after an update takes the new one). `spec_at`: the store's applied
        // index before the record was read, so the record reflects every update up to there
        // (one after it has its own load queued behind this one).
        let (store, name, uid) = (
            ctx.store.clone(),
            self.collection.name.clone(),
            self.collection.uid,
        );
        let (current, spec_at) = tokio::task::spawn_blocking(move || {
            let spec_at = store.applied_index()?;
            Ok::<_, StoreError>((store.collection(&name)?.filter(|c| c.uid == uid), spec_at))
        })
        .await??;
        let Some(coll) = current else {
            return Ok(self.dropped_before_load());
        };
        self.collection = coll.clone();
        // One dump or load of this folder at a time (an actor restarting after this one).
        let files = ctx.actors.shards.dump_files(coll.uid).await;
        // At normal priority: a shard that is loading cannot be searched.
        let opened = tokio::task::spawn_blocking(move || {
            let _files = files;
            // The dumped graph first: the points it holds are read without their vectors.
            let params = ctx.shard_params(&coll);
            let dump = ShardDump::read(
                &params,
                &ctx.shard_dump_dir(&coll),
                ctx.store.applied_index()?,
            );
            let unread = |id| !dump.has(id);
            let vectors = if dump.has_graph() {
                WithVectors::Only(&unread)
            } else {
                WithVectors::All
            };
            // The points as of at least `through` (see the module docs), read off the apply
            // thread: writes go on meanwhile. One state tree for the collection, its points and
            // their index, even while a snapshot is installed; a collection of another uid is a
            // drop.
            let opened = match ctx.store.points_at(&coll.name, Some(coll.uid), vectors) {
                Ok((points, through)) => Shard::open_with(params, to_index_points(points), dump)
                    .map(|opened| Some((opened, through)))
                    .map_err(NodeError::from),
                Err(StoreError::CollectionNotFound(_)) => Ok(None),
                Err(e) => Err(NodeError::from(e)),
            };
            // The points were copied into the graph and freed: hand the freed pages back, so
            // that the node's resident memory is what its shards hold, not allocator slack.
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim only releases memory that is free.
            unsafe {
                libc::malloc_trim(0);
            }
            opened
        })
        .await??;
        let Some(((shard, report), through)) = opened else {
            return Ok(self.dropped_before_load());
        };
        let shard = Arc::new(shard);
        let c = &self.collection;
        self.ctx
            .actors
            .shards
            .publish(&c.name, c.uid, shard.clone());
        self.shard = Some(shard);
        self.applied = through;
        // Released up to where both its points and its spec are known to be current: the
        // changes of points after `spec_at` are mirrored at once when their messages come
        // (they are in `applied`), an update's by its own load.
        self.ctx.watermark.loaded(c.uid, through.min(spec_at));
        let source = if report.reloaded { "dump" } else { "rebuilt" };
        self.ctx
            .runtime
            .metrics
            .index_loads
            .with_label_values(&[c.name.as_str(), source])
            .inc();
        tracing::info!(
            collection = %c.name,
            quantization = ?c.spec.quantization,
            reloaded_graph = report.reloaded,
            inserted = report.inserted,
            tombstoned = report.tombstoned,
            through,
            ms = start.elapsed().as_millis() as u64,
            "shard loaded"
        );
        if report.inserted > 0 || report.tombstoned > 0 {
            self.changed(myself);
        } else {
            self.update_gauges();
        }
        Ok(true)
    }

    /// Mirror one command's point changes. An error leaves the shard behind the store: the
    /// caller restarts the actor, which reloads.
    async fn apply(&mut self, index: u64, ops: Vec<ShardOp>) -> Result<(), NodeError> {
        let shard = self.shard.clone().ok_or_else(|| {
            NodeError::Internal(format!("shard `{}` is not loaded", self.collection.name))
        })?;
        // A command's inserts go in before its deletes. Point ids are never reused, so the end
        // state is the same; in between, a search sees a replaced document at both versions (the
        // old one's chunks are gone from the store, so the search waits for this shard and
        // searches again) instead of at neither, which nothing could tell from a true absence.
        let (inserts, deletes): (Vec<_>, Vec<_>) = ops
            .into_iter()
            .partition(|op| matches!(op, ShardOp::Insert(_)));
        for op in inserts.into_iter().chain(deletes) {
            let s = shard.clone();
            match op {
                ShardOp::Insert(points) => {
                    // Inserts step aside between points while a query is embedded or an index
                    // step runs (not for whole searches: one may be waiting for these inserts).
                    let pause = self.ctx.runtime.query_gate.insert_pause_hook();
                    self.ctx
                        .background(move || s.insert_pausing(points, &*pause))
                        .await??
                }
                ShardOp::Delete(ids) => {
                    self.ctx.background(move || s.delete(&ids)).await?;
                }
            }
        }
        self.applied = index;
        Ok(())
    }

    /// Rebuild the graph without its tombstones once they pass the threshold. The deletes are
    /// already in effect (and reported); this only reclaims their room, on the maintenance
    /// threads. Later changes of this collection wait for it; other collections do not.
    async fn compact_if_needed(&mut self) -> Result<(), NodeError> {
        let Some(shard) = self.shard.clone() else {
            return Ok(());
        };
        if !shard.needs_compaction() {
            return Ok(());
        }
        let start = Instant::now();
        let removed = self.ctx.maintenance(move || shard.compact()).await??;
        let name = self.collection.name.as_str();
        self.ctx
            .runtime
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
        // Load goes first into the mailbox; changes sent after we attach queue behind it, and
        // those the load already saw (index at or below its view) are skipped.
        myself.send_message(ShardMsg::Load)?;
        let c = &args.collection;
        if !args
            .ctx
            .actors
            .shards
            .attach_actor(&c.name, c.uid, myself, args.fresh)
        {
            return Err(format!("collection `{}` was dropped", c.name).into());
        }
        Ok(ShardState {
            collection: args.collection,
            ctx: args.ctx,
            shard: None,
            applied: 0,
            dirty: false,
            persist_scheduled: false,
            failed: false,
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
                if !state.load(&myself).await? {
                    myself.stop(Some("collection dropped".into()));
                }
            }
            ShardMsg::Apply { index, ops } => {
                let uid = state.collection.uid;
                if state.shard.is_some() && index <= state.applied {
                    // Already in the view the shard was loaded from.
                    state.ctx.watermark.mirrored(index, uid);
                    return Ok(());
                }
                // A failure stops the actor; its restart reloads from the store (which has
                // this change) and releases the watermark then.
                if let Err(e) = state.apply(index, ops).await {
                    state.failed = true;
                    return Err(format!("index update at {index} failed: {e}").into());
                }
                state.ctx.watermark.mirrored(index, uid);
                state.changed(&myself);
                if let Err(e) = state.compact_if_needed().await {
                    state.failed = true;
                    return Err(format!("compaction failed: {e}").into());
                }
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
