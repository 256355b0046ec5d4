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

use shoal_storage::{Command, Effect, Outcome, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::error::NodeError;
use crate::watermark::IndexWatermark;

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

/// What the mirror receives for each applied command: its index and the effects the index must
/// mirror, in log order.
pub type EffectBatch = (u64, Vec<Effect>);

type Reader = Box<dyn FnOnce(&Store, u64) + Send>;

enum Request {
    Apply {
        command: Command,
        reply: oneshot::Sender<Result<Committed, NodeError>>,
    },
    /// Run a read between two commands: a consistent view of the store as of an index.
    Read(Reader),
}

/// The handle callers use; cheap to clone.
#[derive(Clone)]
pub struct ApplyLoop {
    tx: mpsc::Sender<Request>,
}

/// Called once if the store fails: the node cannot go on.
pub type FatalHook = Box<dyn Fn(String) + Send>;

impl ApplyLoop {
    /// Start the loop's thread. `effects` receives the effects of every applied command, in log
    /// order; `on_fatal` is called if the store fails (after which every caller gets an error).
    pub fn start(
        store: Store,
        watermark: Arc<IndexWatermark>,
        effects: mpsc::UnboundedSender<EffectBatch>,
        on_fatal: FatalHook,
    ) -> Result<ApplyLoop, NodeError> {
        let next = store.applied_index()? + 1;
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("apply".into())
            .spawn(move || {
                run(
                    Loop {
                        store,
                        watermark,
                        effects,
                        next,
                    },
                    rx,
                    on_fatal,
                )
            })
            .map_err(|e| NodeError::Internal(format!("cannot start the apply thread: {e}")))?;
        Ok(ApplyLoop { tx })
    }

    /// Apply `command` and wait for its outcome. Dropping the future before it finishes leaves
    /// the command applied whole or not at all.
    pub async fn apply(&self, command: Command) -> Result<Committed, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Apply { command, reply })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Read the store between two commands: `f` sees every command up to the index it is given
    /// and none after. It runs on the apply thread, so it holds up writes while it runs: keep it
    /// to what needs a consistent view (loading a shard).
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store, u64) -> T + Send + 'static,
    ) -> Result<T, NodeError> {
        let (reply, rx) = oneshot::channel();
        let reader: Reader = Box::new(move |store, index| {
            let _ = reply.send(f(store, index));
        });
        self.tx
            .send(Request::Read(reader))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }
}

fn stopped() -> NodeError {
    NodeError::Internal("the store has stopped accepting writes (see the node's log)".into())
}

struct Loop {
    store: Store,
    watermark: Arc<IndexWatermark>,
    effects: mpsc::UnboundedSender<EffectBatch>,
    /// The index the next command gets.
    next: u64,
}

/// A caller, the index its command got, and what became of it.
type Answer = (
    oneshot::Sender<Result<Committed, NodeError>>,
    u64,
    Result<(Outcome, Vec<Effect>), NodeError>,
);

fn run(mut lp: Loop, mut rx: mpsc::Receiver<Request>, on_fatal: FatalHook) {
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
        for request in group {
            match request {
                Request::Read(f) => f(&lp.store, lp.next - 1),
                Request::Apply { reply, .. } if fatal.is_some() => {
                    answers.push((reply, 0, Err(stopped())));
                }
                Request::Apply { command, reply } => {
                    let index = lp.next;
                    match lp.store.apply(index, &command) {
                        Ok(applied) => {
                            lp.next += 1;
                            wrote = true;
                            answers.push((reply, index, Ok((applied.outcome, applied.effects))));
                        }
                        // Refused: only the applied index was written.
                        Err(e) if e.is_rejection() => {
                            lp.next += 1;
                            wrote = true;
                            answers.push((reply, index, Err(e.into())));
                        }
                        Err(e) => {
                            tracing::error!(index, kind = command.kind(), error = %e, "the store failed to apply a command");
                            fatal = Some(e.to_string());
                            answers.push((reply, index, Err(e.into())));
                        }
                    }
                }
            }
        }
        if wrote && fatal.is_none() {
            if let Err(e) = lp.store.sync() {
                tracing::error!(error = %e, "the store failed to sync");
                fatal = Some(e.to_string());
            }
        }
        if let Some(reason) = fatal {
            // Nothing of this group is known to be durable: answer every caller with the error,
            // stop taking commands, and let the node stop.
            for (reply, _, _) in answers {
                let _ = reply.send(Err(NodeError::Store(StoreError::Fatal(reason.clone()))));
            }
            rx.close();
            while let Ok(r) = rx.try_recv() {
                if let Request::Apply { reply, .. } = r {
                    let _ = reply.send(Err(stopped()));
                }
            }
            on_fatal(reason);
            return;
        }
        // Durable now: register what the shards must mirror, hand them the effects, answer.
        for (reply, index, result) in answers {
            let answer = match result {
                Ok((outcome, effects)) => {
                    lp.watermark.applied(index, &shard_uids(&effects));
                    if !effects.is_empty() {
                        let _ = lp.effects.send((index, effects));
                    }
                    Ok(Committed { index, outcome })
                }
                Err(e) => {
                    lp.watermark.applied(index, &[]);
                    Err(e)
                }
            };
            let _ = reply.send(answer);
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
        while let Ok((i, _)) = effects.try_recv() {
            seen.push(i);
        }
        assert_eq!(seen.len(), collections.len());
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        // nothing mirrored them yet: the watermark waits for the first collection's shard
        assert_eq!(watermark.applied_index(), last);
        assert_eq!(watermark.current(), seen[0] - 1);
    }

    #[tokio::test]
    async fn a_read_sees_the_store_between_two_commands() {
        let store = Store::temporary().unwrap();
        let (applier, _, _effects) = start(&store);
        // creates and reads interleaved: each create adds one collection and takes one index, so
        // a view taken between two commands has exactly as many collections as its index
        let mut writes = Vec::new();
        let mut reads = Vec::new();
        for i in 0..60 {
            let a = applier.clone();
            writes.push(tokio::spawn(async move {
                a.apply(create(&format!("c{i}"))).await
            }));
            if i % 3 == 0 {
                let a = applier.clone();
                reads.push(tokio::spawn(async move {
                    a.read(|s, index| (s.collections().unwrap().len() as u64, index))
                        .await
                        .unwrap()
                }));
            }
        }
        for r in reads {
            let (collections, index) = r.await.unwrap();
            assert_eq!(collections, index);
        }
        for w in writes {
            w.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn a_failing_store_stops_the_loop_and_says_so() {
        let store = Store::temporary().unwrap();
        let watermark = Arc::new(IndexWatermark::new(0));
        let (tx, _rx) = mpsc::unbounded_channel();
        let (fatal_tx, fatal_rx) = std::sync::mpsc::channel();
        let applier = ApplyLoop::start(
            store.clone(),
            watermark,
            tx,
            Box::new(move |reason| {
                let _ = fatal_tx.send(reason);
            }),
        )
        .unwrap();
        applier.apply(create("a")).await.unwrap();
        // a corrupt record makes the next apply fail inside the store, not as a refusal
        store.corrupt_for_tests("c/a");
        let e = applier
            .apply(Command::DropCollection {
                name: "a".into(),
                at_ms: 2,
            })
            .await
            .unwrap_err();
        assert!(
            !matches!(e, NodeError::Store(ref s) if s.is_rejection()),
            "{e}"
        );
        let reason = fatal_rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the fatal hook was called");
        assert!(reason.contains("corrupt"), "{reason}");
        let after = applier.apply(create("b")).await.unwrap_err();
        assert!(
            after.to_string().contains("stopped accepting writes"),
            "{after}"
        );
    }
}
