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

use std::sync::atomic::{AtomicBool, Ordering};
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
}

/// Lower the scheduling priority of the calling thread to `nice` (Linux: per thread; at 19 the
/// thread also moves to SCHED_IDLE). Ingest threads run at a low priority so that, when a query
/// is being embedded at the same time, the kernel gives the query's threads the cores.
pub fn lower_thread_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority only read their arguments; a failure leaves the thread's
        // priority unchanged, which is harmless.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            let _ = libc::setpriority(libc::PRIO_PROCESS, tid, nice);
            if nice >= 19 {
                // The lowest class: runs only on cores nothing else wants.
                let param = libc::sched_param { sched_priority: 0 };
                let _ = libc::sched_setscheduler(tid as libc::pid_t, libc::SCHED_IDLE, &param);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// Counts queries being embedded. Ingest waits for it to reach zero between micro-batches and,
/// inside a forward pass, at every pause point of its threads (see [`QueryGate::pause_hook`]).
#[derive(Default)]
pub struct QueryGate {
    active: Mutex<usize>,
    idle: Condvar,
    /// Mirrors `active > 0`, for a lock-free check at pause points.
    busy: AtomicBool,
}

impl QueryGate {
    fn enter(&self) {
        let mut n = self.active.lock();
        *n += 1;
        self.busy.store(true, Ordering::Release);
    }

    fn exit(&self) {
        let mut n = self.active.lock();
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.busy.store(false, Ordering::Release);
            self.idle.notify_all();
        }
    }

    fn wait_idle(&self) {
        if !self.busy.load(Ordering::Acquire) {
            return;
        }
        let mut n = self.active.lock();
        while *n > 0 {
            self.idle.wait(&mut n);
        }
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
                let refs: Vec<&str> = part.iter().map(String::as_str).collect();
                match self.embed(&refs) {
                    Ok(v) => out.extend(v),
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
