//! Embedding executors: the threads that run the model, with dynamic batching and priority.
//!
//! There are two, each on its own OS thread with its own rayon pool:
//! - the **query** executor gathers requests for up to `model.batch_window_ms` (or until
//!   `model.batch_size` texts) and embeds them in one forward pass;
//! - the **ingest** executor embeds its batches in micro-batches of `model.ingest_micro_batch`
//!   texts, and before each one waits while any query is being embedded; inside a micro-batch its
//!   pool's threads also stop at the encoder's pause points (every weight panel, every attention
//!   head) while a query is embedded. Ingest uses all cores only while no query is waiting; a
//!   query never queues behind an ingest batch.
//!
//! Search first, but never "ingest never": when queries have kept ingest waiting for a whole
//! stretch, ingest gets a turn (`threads.ingest_min_share` of every `threads.ingest_share_window_ms`)
//! during which it runs and new query passes wait for the turn to end (see [`QueryGate`]).
//!
//! Work whose answer nobody waits for any more (a request that timed out or whose client left) is
//! dropped before its forward pass, or between an ingest batch's micro-batches.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use ractor::RpcReplyPort;
use shoal_inference::Embedder;

use crate::metrics::Metrics;

pub type EmbedReply = RpcReplyPort<Result<Vec<Vec<f32>>, String>>;

pub struct EmbedJob {
    pub texts: Vec<String>,
    pub reply: EmbedReply,
    pub queued: Instant,
    /// Texts embedded so far (ingest jobs report it, so their owner can tell stalled from slow).
    pub progress: Option<Arc<AtomicUsize>>,
}

/// Lower the scheduling priority of the calling thread to `nice` (Linux: per thread). Ingest
/// threads run at a low priority so that, when a query is being embedded at the same time, the
/// kernel gives the query's threads the cores. They stay in the normal scheduling class (never
/// SCHED_IDLE): another busy process on the machine must not be able to stop ingest altogether.
pub fn lower_thread_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority only read their arguments; a failure leaves the thread's
        // priority unchanged, which is harmless.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            let _ = libc::setpriority(libc::PRIO_PROCESS, tid, nice);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// Ingest's guaranteed share while queries keep it waiting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IngestShare {
    /// Fraction of each window in which ingest runs even while queries wait (0 disables turns).
    pub min_share: f64,
    pub window: Duration,
}

impl Default for IngestShare {
    fn default() -> Self {
        IngestShare {
            min_share: 0.1,
            window: Duration::from_millis(200),
        }
    }
}

impl IngestShare {
    /// How long ingest waits for queries before it takes a turn.
    fn patience(&self) -> Option<Duration> {
        (self.min_share > 0.0).then(|| self.window.mul_f64(1.0 - self.min_share.min(1.0)))
    }

    fn turn(&self) -> Duration {
        self.window.mul_f64(self.min_share.clamp(0.0, 1.0))
    }
}

#[derive(Default)]
struct GateState {
    /// Query passes in progress.
    queries: usize,
    /// Since when ingest has been waiting for queries without a break.
    waiting_since: Option<Instant>,
    /// Ingest's turn: until then it runs, and new query passes wait.
    turn_until: Option<Instant>,
}

/// Counts queries being embedded. Ingest waits for it to reach zero between micro-batches and,
/// inside a forward pass, at every pause point of its threads (see [`QueryGate::pause_hook`]);
/// once it has waited a whole stretch it takes a turn ([`IngestShare`]).
#[derive(Default)]
pub struct QueryGate {
    state: Mutex<GateState>,
    changed: Condvar,
    /// Mirrors `queries > 0`, for a lock-free check at pause points.
    busy: AtomicBool,
    share: IngestShare,
    /// Ingest turns taken.
    turns: AtomicUsize,
}

impl QueryGate {
    pub fn new(share: IngestShare) -> QueryGate {
        QueryGate {
            share,
            ..QueryGate::default()
        }
    }

    /// A query pass starts: it waits for the end of an ingest turn in progress (at most one turn).
    fn enter(&self) {
        let mut st = self.state.lock();
        while let Some(until) = st.turn_until {
            if Instant::now() >= until {
                st.turn_until = None;
                break;
            }
            self.changed.wait_until(&mut st, until);
        }
        st.queries += 1;
        self.busy.store(true, Ordering::Release);
    }

    fn exit(&self) {
        let mut st = self.state.lock();
        st.queries = st.queries.saturating_sub(1);
        if st.queries == 0 {
            st.waiting_since = None;
            self.busy.store(false, Ordering::Release);
            self.changed.notify_all();
        }
    }

    /// Ingest's side: return when no query is being embedded, or when it is ingest's turn.
    fn wait_idle(&self) {
        if !self.busy.load(Ordering::Acquire) {
            return;
        }
        let mut st = self.state.lock();
        loop {
            if st.queries == 0 {
                return;
            }
            let now = Instant::now();
            if let Some(until) = st.turn_until {
                if now < until {
                    return;
                }
                // The turn is over: queries go first again, and the wait starts anew.
                st.turn_until = None;
                st.waiting_since = Some(now);
                self.changed.notify_all();
            }
            let since = *st.waiting_since.get_or_insert(now);
            match self.share.patience() {
                None => self.changed.wait(&mut st),
                Some(patience) if now.duration_since(since) >= patience => {
                    st.turn_until = Some(now + self.share.turn());
                    st.waiting_since = None;
                    self.turns.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(patience) => {
                    self.changed.wait_until(&mut st, since + patience);
                }
            }
        }
    }

    /// Turns ingest has taken while queries were waiting.
    pub fn ingest_turns(&self) -> usize {
        self.turns.load(Ordering::Relaxed)
    }

    /// Count a query-path model pass (a reranking) as a query for as long as the guard lives.
    pub fn hold(self: &Arc<Self>) -> QueryGuard {
        self.enter();
        QueryGuard(self.clone())
    }

    /// A pause hook for the ingest pool's threads: they sleep while a query is embedded. Parked
    /// threads leave the cores to the query's threads at once; threads that merely run at a low
    /// priority would still get a core whenever a query thread yields while it waits for work
    /// (rayon does), and then keep it until the next scheduler tick, which left a two-thread
    /// query pass at about the speed of one during ingest.
    pub fn pause_hook(self: &Arc<Self>) -> shoal_inference::PauseHook {
        let gate = self.clone();
        Arc::new(move || gate.wait_idle())
    }
}

/// Ingest steps aside while this lives (see [`QueryGate::hold`]).
pub struct QueryGuard(Arc<QueryGate>);

impl Drop for QueryGuard {
    fn drop(&mut self) {
        self.0.exit();
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// Dynamic batching: wait up to `window` for more requests, at most `max_texts` per pass.
    Query { window: Duration, max_texts: usize },
    /// Micro-batches of `micro` texts, yielding to queries in between, at priority `nice`.
    Ingest { micro: usize, nice: i32 },
}

impl Role {
    fn name(&self) -> &'static str {
        match self {
            Role::Query { .. } => "query",
            Role::Ingest { .. } => "ingest",
        }
    }
}

/// A running executor; dropping it closes its queue and lets the thread finish what it holds.
pub struct EmbedExecutor {
    tx: Sender<EmbedJob>,
    _thread: JoinHandle<()>,
}

impl EmbedExecutor {
    pub fn start(
        role: Role,
        embedder: Embedder,
        pool: Arc<rayon::ThreadPool>,
        gate: Arc<QueryGate>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<EmbedExecutor> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("embed-{}", role.name()))
            .spawn(move || {
                if let Role::Ingest { nice, .. } = role {
                    lower_thread_priority(nice);
                }
                let exec = Exec {
                    embedder,
                    pool,
                    gate,
                    metrics,
                    role,
                };
                match role {
                    Role::Query { window, max_texts } => exec.run_queries(rx, window, max_texts),
                    Role::Ingest { micro, .. } => exec.run_ingest(rx, micro),
                }
            })?;
        Ok(EmbedExecutor {
            tx,
            _thread: thread,
        })
    }

    /// Queue a job. If the executor thread is gone, the job is answered with an error and the
    /// error is returned (the owning actor then fails and is restarted).
    pub fn submit(&self, job: EmbedJob) -> Result<(), String> {
        self.tx.send(job).map_err(|mpsc::SendError(job)| {
            let msg = "the embedding executor has stopped".to_string();
            let _ = job.reply.send(Err(msg.clone()));
            msg
        })
    }
}

struct Exec {
    embedder: Embedder,
    pool: Arc<rayon::ThreadPool>,
    gate: Arc<QueryGate>,
    metrics: Arc<Metrics>,
    role: Role,
}

impl Exec {
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        let start = Instant::now();
        let result = self
            .pool
            .install(|| self.embedder.embed(texts))
            .map_err(|e| e.to_string());
        let queue = self.role.name();
        let took = start.elapsed().as_secs_f64();
        self.metrics
            .embed_seconds
            .with_label_values(&[queue])
            .observe(took);
        tracing::trace!(queue, texts = texts.len(), ms = took * 1e3, "forward pass");
        self.metrics
            .embed_texts
            .with_label_values(&[queue])
            .inc_by(texts.len() as u64);
        result
    }

    /// Whether a job's answer is still wanted; counts the ones that are not.
    fn wanted(&self, job: &EmbedJob) -> bool {
        if job.reply.is_closed() {
            self.metrics
                .cancelled_work
                .with_label_values(&[match self.role {
                    Role::Query { .. } => "query_embedding",
                    Role::Ingest { .. } => "ingest_embedding",
                }])
                .inc();
            return false;
        }
        true
    }

    fn run_queries(&self, rx: Receiver<EmbedJob>, window: Duration, max_texts: usize) {
        while let Ok(first) = rx.recv() {
            // Released when this batch is answered, or if the pass panics.
            let _query = self.gate.hold();
            let deadline = first.queued + window;
            let mut n = first.texts.len();
            let mut jobs = vec![first];
            while n < max_texts {
                let now = Instant::now();
                if now >= deadline {
                    // Take what is already queued, without waiting.
                    match rx.try_recv() {
                        Ok(j) => {
                            n += j.texts.len();
                            jobs.push(j);
                            continue;
                        }
                        Err(_) => break,
                    }
                }
                match rx.recv_timeout(deadline - now) {
                    Ok(j) => {
                        n += j.texts.len();
                        jobs.push(j);
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            let waited = jobs[0].queued.elapsed().as_secs_f64();
            self.metrics
                .embed_queue_wait_seconds
                .with_label_values(&["query"])
                .observe(waited);
            // Requests that are gone (timed out, client left) cost no forward pass.
            jobs.retain(|j| self.wanted(j));
            if jobs.is_empty() {
                continue;
            }
            let texts: Vec<&str> = jobs
                .iter()
                .flat_map(|j| j.texts.iter().map(String::as_str))
                .collect();
            match self.embed(&texts) {
                Ok(mut vectors) => {
                    // Hand each job its slice, in order.
                    for job in jobs.into_iter().rev() {
                        let tail = vectors.split_off(vectors.len() - job.texts.len());
                        let _ = job.reply.send(Ok(tail));
                    }
                }
                Err(e) => {
                    for job in jobs {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    fn run_ingest(&self, rx: Receiver<EmbedJob>, micro: usize) {
        while let Ok(job) = rx.recv() {
            self.metrics
                .embed_queue_wait_seconds
                .with_label_values(&["ingest"])
                .observe(job.queued.elapsed().as_secs_f64());
            let mut out = Vec::with_capacity(job.texts.len());
            let mut failed = None;
            for part in job.texts.chunks(micro.max(1)) {
                self.gate.wait_idle();
                // Its owner gave it up (no progress for too long): drop it, never run it twice.
                if !self.wanted(&job) {
                    failed = Some("cancelled".to_string());
                    break;
                }
                let refs: Vec<&str> = part.iter().map(String::as_str).collect();
                match self.embed(&refs) {
                    Ok(v) => {
                        out.extend(v);
                        if let Some(p) = &job.progress {
                            p.fetch_add(part.len(), Ordering::Release);
                        }
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            let _ = job.reply.send(match failed {
                Some(e) => Err(e),
                None => Ok(out),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_blocks_until_queries_leave() {
        let gate = Arc::new(QueryGate::default());
        gate.enter();
        let g = gate.clone();
        let waiter = std::thread::spawn(move || {
            let t = Instant::now();
            g.wait_idle();
            t.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        gate.exit();
        let waited = waiter.join().unwrap();
        assert!(waited >= Duration::from_millis(40), "{waited:?}");
        gate.wait_idle(); // idle now: returns at once
    }

    #[test]
    fn a_query_pass_that_panics_still_lets_ingest_go_on() {
        let gate = Arc::new(QueryGate::default());
        let g = gate.clone();
        let crashed = std::thread::spawn(move || {
            let _query = g.hold();
            panic!("a bug in a forward pass");
        })
        .join();
        assert!(crashed.is_err());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            gate.wait_idle();
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(5)).is_ok(),
            "ingest still held"
        );
    }

    #[test]
    fn ingest_gets_its_turn_while_queries_never_stop() {
        let gate = Arc::new(QueryGate::new(IngestShare {
            min_share: 0.2,
            window: Duration::from_millis(100),
        }));
        gate.enter(); // a query load that never lets up
        let g = gate.clone();
        let start = Instant::now();
        let ingest = std::thread::spawn(move || {
            let mut steps = 0;
            while start.elapsed() < Duration::from_millis(600) {
                g.wait_idle();
                steps += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            steps
        });
        let steps = ingest.join().unwrap();
        // ~6 turns of 20 ms in 600 ms; each lets several 2 ms steps through
        assert!(gate.ingest_turns() >= 3, "{} turns", gate.ingest_turns());
        assert!(steps >= 10, "{steps} steps");
    }

    #[test]
    fn without_a_share_ingest_waits_for_queries() {
        let gate = Arc::new(QueryGate::new(IngestShare {
            min_share: 0.0,
            window: Duration::from_millis(50),
        }));
        gate.enter();
        let (tx, rx) = mpsc::channel();
        let g = gate.clone();
        std::thread::spawn(move || {
            g.wait_idle();
            let _ = tx.send(());
        });
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        gate.exit();
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
        assert_eq!(gate.ingest_turns(), 0);
    }

    #[test]
    fn a_new_query_pass_waits_for_the_end_of_an_ingest_turn() {
        let gate = Arc::new(QueryGate::new(IngestShare {
            min_share: 0.5,
            window: Duration::from_millis(200),
        }));
        gate.enter();
        // ingest waits 100 ms, then takes a 100 ms turn
        gate.wait_idle();
        assert_eq!(gate.ingest_turns(), 1);
        let turn_end = gate.state.lock().turn_until.expect("a turn");
        let _q = gate.hold();
        assert!(
            Instant::now() >= turn_end,
            "the query pass started inside the turn"
        );
    }

    fn model() -> Embedder {
        let dir = std::env::var_os("SHOAL_MODEL_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../models/all-MiniLM-L6-v2")
            });
        let files = shoal_inference::ModelFiles::locate(&dir).unwrap_or_else(|e| {
            panic!(
                "model at {}: {e} (run scripts/fetch-model.sh)",
                dir.display()
            )
        });
        Embedder::load(&files, shoal_inference::EmbedderOptions::default()).unwrap()
    }

    type Answer = tokio::sync::oneshot::Receiver<Result<Vec<Vec<f32>>, String>>;

    fn job(n: usize) -> (EmbedJob, Answer) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let texts = (0..n).map(|i| format!("text number {i}")).collect();
        (
            EmbedJob {
                texts,
                reply: tx.into(),
                queued: Instant::now(),
                progress: Some(Arc::new(AtomicUsize::new(0))),
            },
            rx,
        )
    }

    fn texts_embedded(metrics: &Metrics, queue: &str) -> u64 {
        metrics.embed_texts.with_label_values(&[queue]).get()
    }

    #[test]
    fn an_ingest_batch_given_up_by_its_owner_is_never_run() {
        let embedder = model();
        let metrics = Arc::new(Metrics::new());
        let gate = Arc::new(QueryGate::new(IngestShare {
            min_share: 0.0,
            window: Duration::from_millis(100),
        }));
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap(),
        );
        gate.enter(); // queries keep ingest parked
        let exec = EmbedExecutor::start(
            Role::Ingest { micro: 2, nice: 0 },
            embedder,
            pool,
            gate.clone(),
            metrics.clone(),
        )
        .unwrap();
        let (first, first_rx) = job(4);
        exec.submit(first).unwrap();
        // its owner saw no progress for too long and gave it up, then queued it again
        drop(first_rx);
        let (again, again_rx) = job(4);
        exec.submit(again).unwrap();
        gate.exit();
        let vectors = again_rx.blocking_recv().unwrap().unwrap();
        assert_eq!(vectors.len(), 4);
        assert_eq!(
            texts_embedded(&metrics, "ingest"),
            4,
            "the given-up batch ran too"
        );
        assert_eq!(
            metrics
                .cancelled_work
                .with_label_values(&["ingest_embedding"])
                .get(),
            1
        );
    }

    #[test]
    fn a_query_whose_request_is_gone_costs_no_forward_pass() {
        let embedder = model();
        let metrics = Arc::new(Metrics::new());
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap(),
        );
        let exec = EmbedExecutor::start(
            Role::Query {
                window: Duration::from_millis(1),
                max_texts: 32,
            },
            embedder,
            pool,
            Arc::new(QueryGate::default()),
            metrics.clone(),
        )
        .unwrap();
        let (gone, gone_rx) = job(3);
        drop(gone_rx);
        exec.submit(gone).unwrap();
        let (live, live_rx) = job(1);
        exec.submit(live).unwrap();
        assert_eq!(live_rx.blocking_recv().unwrap().unwrap().len(), 1);
        assert_eq!(texts_embedded(&metrics, "query"), 1);
    }

    #[test]
    fn the_pause_hook_holds_ingest_threads_while_a_query_is_embedded() {
        let gate = Arc::new(QueryGate::default());
        let hook = gate.pause_hook();
        hook(); // no query: returns at once
        gate.enter();
        let waiter = std::thread::spawn(move || {
            let t = Instant::now();
            hook();
            t.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        gate.exit();
        let waited = waiter.join().unwrap();
        assert!(waited >= Duration::from_millis(40), "{waited:?}");
    }
}
