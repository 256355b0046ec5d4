//! The apply loop: the one thread that writes the store.
//!
//! Every change of state is a [`Command`] sent to this loop over a bounded channel. The loop
//! applies commands one at a time, in the order they arrive, each as log entry `index` (the store's
//! deterministic [`Store::apply`]), makes a group of them durable with one `fsync`, then hands
//! their effects to the index mirror and answers each caller. A caller that goes away (a client
//! disconnects, the request times out, its task is aborted) only drops its answer: the command is
//! applied whole or, if it never reached the loop, not at all, and the log index always advances
//! with the store. The index shards follow behind the [`IndexWatermark`].
//!
//! The cluster work replaces this loop with Raft's apply of committed entries; the commands, the
//! store's `apply` and the mirror stay the same.

use std::sync::Arc;

use shoal_storage::{Applied, Command, Effect, Outcome, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::error::NodeError;
use crate::watermark::IndexWatermark;

/// What the loop applies commands to: the store (a trait so that tests can make it fail).
pub trait ApplyTarget: Send + 'static {
    fn applied_index(&self) -> Result<u64, StoreError>;
    /// Apply one command as log entry `index` (see [`Store::apply`]).
    fn apply(&self, index: u64, command: &Command) -> Result<Applied, StoreError>;
    /// Make what was applied durable.
    fn sync(&self) -> Result<(), StoreError>;
}

impl ApplyTarget for Store {
    fn applied_index(&self) -> Result<u64, StoreError> {
        Store::applied_index(self)
    }
    fn apply(&self, index: u64, command: &Command) -> Result<Applied, StoreError> {
        Store::apply(self, index, command)
    }
    fn sync(&self) -> Result<(), StoreError> {
        Store::sync(self)
    }
}

/// Commands applied together before one `fsync` (group commit).
const MAX_GROUP: usize = 64;
/// Commands waiting for the loop; senders wait for room beyond this.
const QUEUE: usize = 1024;

/// A command the store applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// Its log index.
    pub index: u64,
    pub outcome: Outcome,
}

/// Something a caller keeps alive until the effects of its command have been handled (the
/// room a request reserved in the ingest queue, until the mirror has queued its documents).
pub type Hold = Box<dyn std::any::Any + Send>;

/// What the mirror receives for each applied command: its index, the effects the index must
/// mirror (in log order), and the caller's hold, to drop once they are handled.
pub struct EffectBatch {
    pub index: u64,
    pub effects: Vec<Effect>,
    pub hold: Option<Hold>,
}

struct Request {
    command: Command,
    hold: Option<Hold>,
    reply: oneshot::Sender<Result<Committed, NodeError>>,
}

/// The handle callers use; cheap to clone.
#[derive(Clone)]
pub struct ApplyLoop {
    tx: mpsc::Sender<Request>,
}

/// Called once if the store fails or the loop's thread panics: the node cannot go on.
pub type FatalHook = Box<dyn Fn(String) + Send>;

impl ApplyLoop {
    /// Start the loop's thread. `effects` receives the effects of every applied command, in log
    /// order; `on_fatal` is called if the store fails (after which every caller gets an error).
    pub fn start(
        store: impl ApplyTarget,
        watermark: Arc<IndexWatermark>,
        effects: mpsc::UnboundedSender<EffectBatch>,
        on_fatal: FatalHook,
    ) -> Result<ApplyLoop, NodeError> {
        let next = store.applied_index()? + 1;
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("apply".into())
            .spawn(move || {
                let lp = Loop {
                    store,
                    watermark,
                    effects,
                    next,
                };
                // A panic (a bug, or one inside sled) must stop the node like a store failure,
                // not leave it answering every write with an error while it reports healthy.
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(lp, rx, &on_fatal)
                }));
                if let Err(panic) = ran {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(panic = %what, "the apply thread panicked");
                    on_fatal(format!("the apply thread panicked: {what}"));
                }
            })
            .map_err(|e| NodeError::Internal(format!("cannot start the apply thread: {e}")))?;
        Ok(ApplyLoop { tx })
    }

    /// Apply `command` and wait for its outcome. Dropping the future before it finishes leaves
    /// the command applied whole or not at all.
    pub async fn apply(&self, command: Command) -> Result<Committed, NodeError> {
        self.apply_holding(command, None).await
    }

    /// [`ApplyLoop::apply`], keeping `hold` alive until the command's effects have been handled
    /// (or the command failed), whether or not the caller is still waiting.
    pub async fn apply_holding(
        &self,
        command: Command,
        hold: Option<Hold>,
    ) -> Result<Committed, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                command,
                hold,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

fn stopped() -> NodeError {
    NodeError::Internal("the store has stopped accepting writes (see the node's log)".into())
}

struct Loop<T> {
    store: T,
    watermark: Arc<IndexWatermark>,
    effects: mpsc::UnboundedSender<EffectBatch>,
    /// The index the next command gets.
    next: u64,
}

/// A caller, the index its command got, and what became of it.
struct Answer {
    reply: oneshot::Sender<Result<Committed, NodeError>>,
    index: u64,
    hold: Option<Hold>,
    result: Result<(Outcome, Vec<Effect>), NodeError>,
}

fn run<T: ApplyTarget>(mut lp: Loop<T>, mut rx: mpsc::Receiver<Request>, on_fatal: &FatalHook) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let mut answers: Vec<Answer> = Vec::with_capacity(group.len());
        let mut fatal: Option<String> = None;
        let mut wrote = false;
        for Request {
            command,
            hold,
            reply,
        } in group
        {
            if fatal.is_some() {
                let _ = reply.send(Err(stopped()));
                continue;
            }
            let index = lp.next;
            let result = match lp.store.apply(index, &command) {
                Ok(applied) => Ok((applied.outcome, applied.effects)),
                Err(e) if !e.is_storage_failure() => {
                    // Refused, or a record it needed did not decode: only the applied index was
                    // written; the node goes on.
                    if !e.is_rejection() {
                        tracing::error!(index, kind = command.kind(), error = %e, "a command failed on a record it could not read");
                    }
                    Err(e.into())
                }
                Err(e) => {
                    tracing::error!(index, kind = command.kind(), error = %e, "the store failed to apply a command");
                    fatal = Some(e.to_string());
                    let _ = reply.send(Err(e.into()));
                    continue;
                }
            };
            lp.next += 1;
            wrote = true;
            answers.push(Answer {
                reply,
                index,
                hold,
                result,
            });
        }
        if wrote && fatal.is_none() {
            if let Err(e) = lp.store.sync() {
                tracing::error!(error = %e, "the store failed to sync");
                fatal = Some(e.to_string());
            }
        }
        if let Some(reason) = fatal {
            // The earlier commands of this group were applied but are not known to be durable:
            // their outcome is unknown (they may be there after a restart). Stop taking
            // commands and let the node stop.
            for a in answers {
                let _ = a.reply.send(Err(NodeError::Store(StoreError::Fatal(format!(
                    "{reason}; this write's outcome is unknown (it may be there after a restart)"
                )))));
            }
            rx.close();
            while let Ok(r) = rx.try_recv() {
                let _ = r.reply.send(Err(stopped()));
            }
            on_fatal(reason);
            return;
        }
        // Durable now: register what the shards must mirror, hand them the effects, answer.
        for a in answers {
            let answer = match a.result {
                Ok((outcome, effects)) => {
                    lp.watermark.applied(a.index, &shard_uids(&effects));
                    if !effects.is_empty() || a.hold.is_some() {
                        let _ = lp.effects.send(EffectBatch {
                            index: a.index,
                            effects,
                            hold: a.hold,
                        });
                    }
                    Ok(Committed {
                        index: a.index,
                        outcome,
                    })
                }
                Err(e) => {
                    lp.watermark.applied(a.index, &[]);
                    Err(e)
                }
            };
            let _ = a.reply.send(answer);
        }
    }
}

/// Collections whose shards must mirror these effects.
pub fn shard_uids(effects: &[Effect]) -> Vec<u64> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::CollectionCreated(c) => Some(c.uid),
            Effect::CollectionDropped { uid, .. }
            | Effect::PointsAdded { uid, .. }
            | Effect::PointsRemoved { uid, .. } => Some(*uid),
            Effect::DocumentsPending(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_storage::{CollectionSpec, HnswParams};

    fn create(name: &str) -> Command {
        Command::CreateCollection {
            name: name.into(),
            spec: CollectionSpec {
                dimension: 2,
                hnsw: HnswParams::default(),
            },
            at_ms: 1,
        }
    }

    fn start(
        store: &Store,
    ) -> (
        ApplyLoop,
        Arc<IndexWatermark>,
        mpsc::UnboundedReceiver<EffectBatch>,
    ) {
        let watermark = Arc::new(IndexWatermark::new(store.applied_index().unwrap()));
        let (tx, rx) = mpsc::unbounded_channel();
        let applier =
            ApplyLoop::start(store.clone(), watermark.clone(), tx, Box::new(|_| {})).unwrap();
        (applier, watermark, rx)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_and_abandoned_commands_get_one_index_each_in_order() {
        let store = Store::temporary().unwrap();
        let (applier, watermark, mut effects) = start(&store);
        let mut tasks = Vec::new();
        for i in 0..200 {
            let a = applier.clone();
            tasks.push(tokio::spawn(async move {
                a.apply(create(&format!("c{i}"))).await
            }));
        }
        // half of another 200 are abandoned right away: their commands still apply whole or not at all
        for i in 200..400 {
            let a = applier.clone();
            let t = tokio::spawn(async move { a.apply(create(&format!("c{i}"))).await });
            if i % 2 == 0 {
                t.abort();
            } else {
                tasks.push(t);
            }
        }
        let mut indexes = Vec::new();
        for t in tasks {
            indexes.push(t.await.unwrap().unwrap().index);
        }
        // a refused command takes an index too
        let dup = applier.apply(create("c0")).await;
        assert!(matches!(
            dup,
            Err(NodeError::Store(StoreError::CollectionExists(_)))
        ));
        let last = store.applied_index().unwrap();
        let collections = store.collections().unwrap();
        // every command that reached the loop was applied whole, each under its own index
        assert_eq!(last, collections.len() as u64 + 1);
        indexes.sort_unstable();
        indexes.dedup();
        assert_eq!(indexes.len(), 300);
        let uids: std::collections::HashSet<u64> = collections.iter().map(|c| c.uid).collect();
        assert_eq!(uids.len(), collections.len(), "two collections got one uid");
        // the effects came in log order, one batch per applied command
        let mut seen = Vec::new();
        while let Ok(batch) = effects.try_recv() {
            seen.push(batch.index);
        }
        assert_eq!(seen.len(), collections.len());
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        // nothing mirrored them yet: the watermark waits for the first collection's shard
        assert_eq!(watermark.applied_index(), last);
        assert_eq!(watermark.current(), seen[0] - 1);
    }

    /// A store whose sync fails, or whose apply panics, on demand.
    struct Failing {
        store: Store,
        fail_sync: Arc<std::sync::atomic::AtomicBool>,
        panic_apply: Arc<std::sync::atomic::AtomicBool>,
    }

    impl ApplyTarget for Failing {
        fn applied_index(&self) -> Result<u64, StoreError> {
            self.store.applied_index()
        }
        fn apply(&self, index: u64, command: &Command) -> Result<Applied, StoreError> {
            if self.panic_apply.load(std::sync::atomic::Ordering::SeqCst) {
                panic!("a bug inside apply");
            }
            self.store.apply(index, command)
        }
        fn sync(&self) -> Result<(), StoreError> {
            if self.fail_sync.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Fatal("no space left on device".into()));
            }
            self.store.sync()
        }
    }

    fn failing() -> (
        ApplyLoop,
        Store,
        [Arc<std::sync::atomic::AtomicBool>; 2],
        std::sync::mpsc::Receiver<String>,
    ) {
        let store = Store::temporary().unwrap();
        let flags = [Arc::default(), Arc::default()];
        let target = Failing {
            store: store.clone(),
            fail_sync: Arc::clone(&flags[0]),
            panic_apply: Arc::clone(&flags[1]),
        };
        let (tx, _) = mpsc::unbounded_channel();
        let (fatal_tx, fatal_rx) = std::sync::mpsc::channel();
        let applier = ApplyLoop::start(
            target,
            Arc::new(IndexWatermark::new(0)),
            tx,
            Box::new(move |reason| {
                let _ = fatal_tx.send(reason);
            }),
        )
        .unwrap();
        (applier, store, flags, fatal_rx)
    }

    #[tokio::test]
    async fn a_record_that_does_not_decode_fails_its_command_only() {
        let (applier, store, _, fatal) = failing();
        applier.apply(create("a")).await.unwrap();
        store.corrupt_for_tests("c/a");
        let e = applier
            .apply(Command::DropCollection {
                name: "a".into(),
                at_ms: 2,
            })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");
        // it took its index, and the node goes on
        assert_eq!(store.applied_index().unwrap(), 2);
        assert_eq!(applier.apply(create("b")).await.unwrap().index, 3);
        assert!(fatal.try_recv().is_err(), "not a reason to stop");
    }

    #[tokio::test]
    async fn a_failing_sync_stops_the_loop_and_says_so() {
        let (applier, _, [fail_sync, _], fatal) = failing();
        applier.apply(create("a")).await.unwrap();
        fail_sync.store(true, std::sync::atomic::Ordering::SeqCst);
        let e = applier.apply(create("b")).await.unwrap_err();
        assert!(e.to_string().contains("outcome is unknown"), "{e}");
        let reason = fatal
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the fatal hook was called");
        assert!(reason.contains("no space left"), "{reason}");
        let after = applier.apply(create("c")).await.unwrap_err();
        assert!(
            after.to_string().contains("stopped accepting writes"),
            "{after}"
        );
    }

    #[tokio::test]
    async fn a_panic_in_the_loop_stops_the_node_instead_of_failing_every_write() {
        let (applier, _, [_, panic_apply], fatal) = failing();
        applier.apply(create("a")).await.unwrap();
        panic_apply.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(applier.apply(create("b")).await.is_err());
        let reason = fatal
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the fatal hook was called");
        assert!(
            reason.contains("panicked") && reason.contains("a bug inside apply"),
            "{reason}"
        );
    }
}
