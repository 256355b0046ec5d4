//! The node supervisor and its restart strategy.
//!
//! ractor leaves restarting to the supervisor (its default handler stops the supervisor when a
//! child dies). Ours restarts every failed child with exponential backoff: the first restart
//! waits `restart_base_ms`, each further failure doubles the wait up to `restart_max_ms`, and a
//! child that stayed up for `restart_reset_ms` starts again from the base delay. Every restart is
//! logged and counted in `shoal_actor_restarts_total{actor}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use serde::Serialize;
use shoal_storage::CollectionRecord;

use crate::actors::embedder::{EmbedQueue, EmbedderActor, EmbedderArgs, EmbedderMsg};
use crate::actors::ingest::{IngestArgs, IngestMsg, IngestWorker};
use crate::actors::reranker::{RerankerActor, RerankerMsg};
use crate::actors::shard::{ShardActor, ShardArgs, ShardMsg};
use crate::config::SupervisorConfig;
use crate::context::NodeContext;

pub enum SupervisorMsg {
    /// A collection was created: start its shard actor (retried with backoff if that fails).
    StartShard(CollectionRecord),
    /// A collection was dropped: stop its shard actor for good.
    StopShard {
        name: String,
        uid: u64,
    },
    /// Backoff elapsed: start this child again.
    Restart(ChildSpec),
    ListChildren(RpcReplyPort<Vec<ChildInfo>>),
    /// Fault injection: make the named child panic.
    Panic(String, RpcReplyPort<Result<(), String>>),
    /// Stop every child cleanly (shards dump their graphs) and restart none of them.
    Shutdown(RpcReplyPort<()>),
}

/// What a child is, enough to start it again.
#[derive(Clone)]
pub enum ChildSpec {
    Embedder(EmbedQueue),
    Reranker,
    IngestWorker(usize),
    Shard(CollectionRecord),
}

impl ChildSpec {
    pub fn name(&self) -> String {
        match self {
            ChildSpec::Embedder(q) => q.actor_name(),
            ChildSpec::Reranker => "reranker".into(),
            ChildSpec::IngestWorker(i) => format!("ingest-worker-{i}"),
            ChildSpec::Shard(c) => format!("shard-{}", c.name),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ChildSpec::Embedder(_) => "embedder",
            ChildSpec::Reranker => "reranker",
            ChildSpec::IngestWorker(_) => "ingest_worker",
            ChildSpec::Shard(_) => "shard",
        }
    }
}

#[derive(Clone)]
enum ChildRef {
    Embedder(ActorRef<EmbedderMsg>),
    Reranker(ActorRef<RerankerMsg>),
    Ingest(ActorRef<IngestMsg>),
    Shard(ActorRef<ShardMsg>),
}

impl ChildRef {
    fn cell(&self) -> ActorCell {
        match self {
            ChildRef::Embedder(a) => a.get_cell(),
            ChildRef::Reranker(a) => a.get_cell(),
            ChildRef::Ingest(a) => a.get_cell(),
            ChildRef::Shard(a) => a.get_cell(),
        }
    }

    fn panic(&self) -> Result<(), String> {
        match self {
            ChildRef::Embedder(a) => a
                .send_message(EmbedderMsg::Panic)
                .map_err(|e| e.to_string()),
            ChildRef::Ingest(a) => a.send_message(IngestMsg::Panic).map_err(|e| e.to_string()),
            ChildRef::Shard(a) => a.send_message(ShardMsg::Panic).map_err(|e| e.to_string()),
            ChildRef::Reranker(a) => a
                .send_message(RerankerMsg::Panic)
                .map_err(|e| e.to_string()),
        }
    }
}

struct Child {
    spec: ChildSpec,
    actor: ChildRef,
    started: Instant,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChildInfo {
    pub name: String,
    pub kind: &'static str,
    pub restarts: u64,
    pub uptime_s: f64,
}

/// Consecutive failures of one child name, for its backoff.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    total_restarts: u64,
}

impl Backoff {
    /// The child failed after running for `uptime`: how long to wait before restarting it.
    /// `restart_base_ms × 2^(earlier consecutive failures)`, at most `restart_max_ms`; a child
    /// that had stayed up for `restart_reset_ms` starts again from the base.
    fn next_delay(&mut self, cfg: &SupervisorConfig, uptime: Duration) -> Duration {
        if uptime >= Duration::from_millis(cfg.restart_reset_ms) {
            self.failures = 0;
        }
        let exp = self.failures.min(30);
        self.failures = self.failures.saturating_add(1);
        self.total_restarts += 1;
        let ms = cfg
            .restart_base_ms
            .saturating_mul(1u64 << exp)
            .min(cfg.restart_max_ms);
        Duration::from_millis(ms)
    }
}

pub struct NodeSupervisor;

pub struct SupervisorState {
    ctx: Arc<NodeContext>,
    shutting_down: bool,
    children: HashMap<ActorId, Child>,
    backoff: HashMap<String, Backoff>,
}

impl SupervisorState {
    fn delay_for(&mut self, name: &str, uptime: Duration) -> Duration {
        let cfg = &self.ctx.config.supervisor;
        self.backoff
            .entry(name.to_string())
            .or_default()
            .next_delay(cfg, uptime)
    }

    /// Start a child. `fresh`: its first start (a shard actor then creates its registry slot;
    /// a restarted one only takes over an existing slot, so that a collection dropped meanwhile
    /// cannot come back).
    async fn start(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        spec: ChildSpec,
        fresh: bool,
    ) -> Result<(), String> {
        let cell = myself.get_cell();
        let ctx = self.ctx.clone();
        let name = spec.name();
        let actor = match &spec {
            ChildSpec::Embedder(queue) => {
                let args = EmbedderArgs { queue: *queue, ctx };
                ChildRef::Embedder(
                    Actor::spawn_linked(None, EmbedderActor, args, cell)
                        .await
                        .map_err(|e| e.to_string())?
                        .0,
                )
            }
            ChildSpec::Reranker => ChildRef::Reranker(
                Actor::spawn_linked(None, RerankerActor, ctx, cell)
                    .await
                    .map_err(|e| e.to_string())?
                    .0,
            ),
            ChildSpec::IngestWorker(id) => {
                let args = IngestArgs { id: *id, ctx };
                ChildRef::Ingest(
                    Actor::spawn_linked(None, IngestWorker, args, cell)
                        .await
                        .map_err(|e| e.to_string())?
                        .0,
                )
            }
            ChildSpec::Shard(collection) => {
                let args = ShardArgs {
                    collection: collection.clone(),
                    ctx,
                    fresh,
                };
                ChildRef::Shard(
                    Actor::spawn_linked(None, ShardActor, args, cell)
                        .await
                        .map_err(|e| e.to_string())?
                        .0,
                )
            }
        };
        tracing::debug!(child = %name, "child started");
        self.children.insert(
            actor.cell().get_id(),
            Child {
                spec,
                actor,
                started: Instant::now(),
            },
        );
        Ok(())
    }

    fn has_shard(&self, name: &str, uid: u64) -> bool {
        self.find(|s| matches!(s, ChildSpec::Shard(c) if c.name == name && c.uid == uid))
            .is_some()
    }

    fn find(&self, pred: impl Fn(&ChildSpec) -> bool) -> Option<(ActorId, &Child)> {
        self.children
            .iter()
            .find(|(_, c)| pred(&c.spec))
            .map(|(id, c)| (*id, c))
    }
}

pub struct SupervisorArgs {
    pub ctx: Arc<NodeContext>,
}

impl Actor for NodeSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut state = SupervisorState {
            ctx: args.ctx.clone(),
            shutting_down: false,
            children: HashMap::new(),
            backoff: HashMap::new(),
        };
        let mut specs = vec![
            ChildSpec::Embedder(EmbedQueue::Query),
            ChildSpec::Embedder(EmbedQueue::Ingest),
        ];
        if args.ctx.runtime.reranker.is_some() {
            specs.push(ChildSpec::Reranker);
        }
        specs.extend((0..args.ctx.config.ingest.workers).map(ChildSpec::IngestWorker));
        specs.extend(
            args.ctx
                .store
                .collections()?
                .into_iter()
                .map(ChildSpec::Shard),
        );
        for spec in specs {
            let name = spec.name();
            state
                .start(&myself, spec, true)
                .await
                .map_err(|e| format!("could not start {name}: {e}"))?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::StartShard(record) => {
                // One actor per collection: a start asked for twice (entries re-applied at
                // start-up, a rebuild after a snapshot) starts it once.
                if state.has_shard(&record.name, record.uid) {
                    return Ok(());
                }
                let spec = ChildSpec::Shard(record);
                if let Err(e) = state.start(&myself, spec.clone(), true).await {
                    let name = spec.name();
                    let delay = state.delay_for(&name, Duration::ZERO);
                    tracing::error!(child = %name, error = %e, retry_ms = delay.as_millis() as u64, "could not start a shard actor");
                    myself.send_after(delay, move || SupervisorMsg::Restart(spec));
                }
            }
            SupervisorMsg::StopShard { name, uid } => {
                let found = state
                    .find(|s| matches!(s, ChildSpec::Shard(c) if c.name == name && c.uid == uid))
                    .map(|(id, _)| id);
                if let Some(id) = found {
                    // Removed first, so its termination is not taken for a failure.
                    if let Some(child) = state.children.remove(&id) {
                        child.actor.cell().stop(Some("collection dropped".into()));
                    }
                }
                // An actor started after the drop was mirrored may have made a slot again.
                state.ctx.actors.shards.remove(&name, uid);
            }
            SupervisorMsg::Shutdown(reply) => {
                state.shutting_down = true;
                state.children.clear();
                myself
                    .stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(30)))
                    .await;
                let _ = reply.send(());
            }
            SupervisorMsg::Restart(_) if state.shutting_down => {}
            SupervisorMsg::Restart(spec) => {
                // A shard of a collection dropped meanwhile stays down; one started meanwhile
                // (a rebuild) is not started twice.
                if let ChildSpec::Shard(c) = &spec {
                    if !state.ctx.actors.shards.is_current(&c.name, c.uid)
                        || state.has_shard(&c.name, c.uid)
                    {
                        return Ok(());
                    }
                }
                let name = spec.name();
                if let Err(e) = state.start(&myself, spec.clone(), false).await {
                    let delay = state.delay_for(&name, Duration::ZERO);
                    tracing::error!(child = %name, error = %e, retry_ms = delay.as_millis() as u64, "restart failed");
                    myself.send_after(delay, move || SupervisorMsg::Restart(spec));
                }
            }
            SupervisorMsg::ListChildren(reply) => {
                let mut list: Vec<ChildInfo> = state
                    .children
                    .values()
                    .map(|c| {
                        let name = c.spec.name();
                        ChildInfo {
                            restarts: state
                                .backoff
                                .get(&name)
                                .map(|b| b.total_restarts)
                                .unwrap_or(0),
                            kind: c.spec.kind(),
                            uptime_s: c.started.elapsed().as_secs_f64(),
                            name,
                        }
                    })
                    .collect();
                list.sort_by(|a, b| a.name.cmp(&b.name));
                let _ = reply.send(list);
            }
            SupervisorMsg::Panic(name, reply) => {
                let target = state
                    .find(|s| s.name() == name)
                    .map(|(_, c)| c.actor.clone());
                let r = match target {
                    Some(actor) => actor.panic(),
                    None => Err(format!("no actor named `{name}`")),
                };
                let _ = reply.send(r);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                format!("stopped: {}", reason.unwrap_or_else(|| "no reason".into())),
            ),
            _ => return Ok(()),
        };
        // Children we stopped on purpose were removed before; anything else is restarted.
        let Some(child) = state.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        let name = child.spec.name();
        let delay = state.delay_for(&name, child.started.elapsed());
        state
            .ctx
            .runtime
            .metrics
            .actor_restarts
            .with_label_values(&[name.as_str()])
            .inc();
        state
            .ctx
            .runtime
            .metrics
            .actor_restarts_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(child = %name, reason = %why, restart_in_ms = delay.as_millis() as u64, "child actor died; restarting");
        let spec = child.spec;
        myself.send_after(delay, move || SupervisorMsg::Restart(spec));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets_after_a_good_run() {
        let cfg = SupervisorConfig {
            restart_base_ms: 100,
            restart_max_ms: 5_000,
            restart_reset_ms: 60_000,
        };
        let mut b = Backoff::default();
        let quick = Duration::from_millis(10);
        let d: Vec<u64> = (0..8)
            .map(|_| b.next_delay(&cfg, quick).as_millis() as u64)
            .collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        // many more failures never overflow
        for _ in 0..100 {
            assert_eq!(b.next_delay(&cfg, quick).as_millis(), 5_000);
        }
        // a child that stayed up past restart_reset_ms starts from the base again
        assert_eq!(b.next_delay(&cfg, Duration::from_secs(61)).as_millis(), 100);
        assert_eq!(b.next_delay(&cfg, quick).as_millis(), 200);
        assert_eq!(b.total_restarts, 110);
    }
}
