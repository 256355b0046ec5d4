//! Embedding executors: the threads that run the model, with dynamic batching and priority.
//!
//! There are two, each on its own OS thread with its own rayon pool:
//! - the **query** executor gathers requests for up to `model.batch_window_ms` (or until
//!   `model.batch_size` texts) and embeds them in one forward pass;
//! - the **ingest** executor embeds its batches in micro-batches of at most
//!   `model.ingest_micro_batch` texts and `model.ingest_micro_batch_tokens` tokens, and before
//!   each one waits while any search is in flight or query being embedded; inside a micro-batch
//!   its pool's threads also stop at the encoder's pause points (each weight panel past about a
//!   sixth of a task's rows, each attention head, each text tokenized) meanwhile, and for
//!   `threads.ingest_resume_us` after the last search ended.
//!   Ingest uses all cores only while no search runs; a query never queues behind an ingest
//!   batch.
//!
//! Search first, but never "ingest never": the time queries keep ingest waiting earns it turns
//! (enough for `threads.ingest_min_share` of the time, counting what it runs between queries; in
//! turns of `threads.ingest_share_window_ms` × the share) during which it runs and new query
//! passes wait for the turn to end (see [`QueryGate`]).
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
use shoal_inference::{Embedder, TextKind};

use crate::metrics::Metrics;

pub type EmbedReply = RpcReplyPort<Result<Vec<Vec<f32>>, String>>;

pub struct EmbedJob {
    pub texts: Vec<String>,
    pub reply: EmbedReply,
    pub queued: Instant,
    /// Texts embedded so far (ingest jobs report it, so their owner can tell stalled from slow).
    pub progress: Option<Arc<AtomicUsize>>,
    /// The search this job belongs to, counted among the arrivals until the executor takes it.
    pub arrival: Option<ArrivalTicket>,
    /// What the texts are (it chooses the model's prompt): queries, passages to index, or plain.
    pub kind: TextKind,
}

/// Text searches on their way to the query executor: counted from the moment a search knows it
/// needs its query embedded until the executor takes its job (or the search ends without
/// one). The executor gathers a batch only while this count says more queries are coming, so a
/// lone query is embedded at once and a busy node still fills its passes.
#[derive(Debug, Default)]
pub struct Arrivals(AtomicUsize);

impl Arrivals {
    /// Count one search until the returned ticket is dropped.
    pub fn arrive(self: &Arc<Self>) -> ArrivalTicket {
        self.0.fetch_add(1, Ordering::AcqRel);
        ArrivalTicket(self.clone())
    }

    pub fn coming(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// One search counted in [`Arrivals`]; dropping it (when the executor takes the job, or when the
/// search ends first) stops counting it.
#[derive(Debug)]
pub struct ArrivalTicket(Arc<Arrivals>);

impl Drop for ArrivalTicket {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

thread_local! {
    /// An ingest thread's CPU time when it last left [`QueryGate::wait_idle`] outside a turn.
    static RAN_FROM: std::cell::Cell<Option<Duration>> = const { std::cell::Cell::new(None) };
}

/// CPU time the calling thread has used (Linux; zero elsewhere, where ingest's running time is
/// then not counted).
fn thread_cpu_time() -> Duration {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec through a pointer to a live local.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return Duration::new(
                ts.tv_sec.max(0) as u64,
                ts.tv_nsec.clamp(0, 999_999_999) as u32,
            );
        }
    }
    Duration::ZERO
}

/// Ingest's guaranteed share while queries keep it waiting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IngestShare {
    /// Fraction of each window in which ingest runs even while queries wait (0 disables turns).
    pub min_share: f64,
    pub window: Duration,
}

/// A share of 0.1 in turns of up to 200 ms, for tests (the node's configuration defaults to a
/// share of 0.05 and 10 ms windows: see `threads.ingest_min_share`).
impl Default for IngestShare {
    fn default() -> Self {
        IngestShare {
            min_share: 0.1,
            window: Duration::from_millis(200),
        }
    }
}

/// A break this long between ingest's batches (or one window, if longer) means ingest has nothing
/// to do: what it was owed lapses.
const INGEST_IDLE_AFTER: Duration = Duration::from_millis(200);

/// Where ingest's turn stands.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
enum Turn {
    #[default]
    None,
    /// Ingest has waited long enough (since then): new query passes wait, and the turn starts
    /// once the passes in flight are done. A new pass waits for that at most one window.
    Pending(Instant),
    /// Ingest's turn is granted (at that moment, for that long), and starts when the first of its
    /// threads is back at work: waking its parked threads takes a while on cores the search path
    /// keeps busy, and a turn of half a millisecond timed from the grant lost part of itself to
    /// that. Either way it ends at the latest twice its length after the grant, so new query
    /// passes wait for it that long at most; a turn no ingest thread has taken by then lapses.
    Granted { at: Instant, len: Duration },
    /// Ingest's turn, until then: it has the cores, new query passes wait.
    Until(Instant),
}

/// The latest a turn granted at `at` for `len` ends (see [`Turn::Granted`]).
fn granted_turn_ends_by(at: Instant, len: Duration) -> Instant {
    at + 2 * len
}

#[derive(Default)]
struct GateState {
    /// Query passes in progress.
    queries: usize,
    /// Steps of searches under way ([`QueryGate::hold_in_search`]): ingest steps aside for them
    /// as for passes, but they never wait for a turn, and a new pass starts a turn due without
    /// waiting for them.
    steps: usize,
    /// Searches in flight ([`QueryGate::search`]): ingest steps aside for them as for passes.
    /// A turn due waits for them to answer, unless a new pass starts it (only passes wait for a
    /// turn).
    searches: usize,
    /// Ingest threads waiting in [`QueryGate::wait_idle`].
    parked: usize,
    /// While ingest threads wait: since when.
    blocked_since: Option<Instant>,
    /// The running time ingest is owed (seconds): its share of the time it waited, less what it
    /// ran and the turns it had (0 to one window).
    owed: f64,
    turn: Turn,
    /// After the last search in flight ended: until then ingest's threads stay parked
    /// ([`QueryGate::resuming_after`]).
    resume_at: Option<Instant>,
}

impl GateState {
    /// What ingest's threads step aside for: passes and index steps, and (for the embedding
    /// threads, not for graph inserts) searches in flight and the pause after the last one.
    fn holding(&self, searches_too: bool) -> usize {
        let passes = self.queries + self.steps;
        if !searches_too {
            return passes;
        }
        passes + self.searches + usize::from(self.pausing().is_some())
    }

    /// The end of the pause after the last search, while it lasts.
    fn pausing(&self) -> Option<Instant> {
        self.resume_at
            .filter(|u| self.searches == 0 && Instant::now() < *u)
    }
}

/// Events the gate counts, and a metric that counts them too, if set.
#[derive(Default)]
struct Count {
    n: AtomicUsize,
    metric: Option<prometheus::IntCounter>,
}

impl Count {
    fn inc(&self) {
        self.n.fetch_add(1, Ordering::Relaxed);
        if let Some(metric) = &self.metric {
            metric.inc();
        }
    }

    fn get(&self) -> usize {
        self.n.load(Ordering::Relaxed)
    }
}

/// Counts queries being embedded, and searches in flight. Ingest waits for both to reach zero
/// between micro-batches and, inside a forward pass or between graph inserts, at every pause point
/// of its threads (see [`QueryGate::pause_hook`]). A search steps ingest aside for its whole
/// course, not only for its passes: what lies between them (the hop to the embedder and back,
/// reading the hits from the store) ran beside ingest and took most of the tail it added. So
/// does a short pause after the last search ([`QueryGate::resuming_after`]).
///
/// Search first, never "ingest never": the gate keeps an account of ingest's time while it has
/// work. Ingest is owed `min_share / (1 − min_share)` of the time it waited, less the time it ran
/// in the gaps between query passes and the turns it had, so that it gets at least `min_share` of
/// the time; once it is owed a turn's worth (`min_share` × window), it takes a turn
/// ([`IngestShare`]): new query passes wait while those in flight finish (at most one window,
/// then the turn starts beside them), then ingest has the cores for what it is owed (at most one
/// window). A turn due starts when a new pass comes with no other pass in flight (that pass waits
/// for it), when nothing is under way, or after one window; not merely because a pass ended while
/// its search is still to answer: ingest taking both cores there held the answer back, and the
/// client's next search after it. A query load that leaves ingest gaps enough never waits for a
/// turn. Turns are exclusive because a query pass in flight beside ingest at a lower priority
/// would leave ingest next to nothing of its turn; and the account is of time, not of breaks in
/// the query load, because back-to-back passes leave gaps too short for a parked ingest thread to
/// use.
#[derive(Default)]
pub struct QueryGate {
    state: Mutex<GateState>,
    changed: Condvar,
    /// Whether ingest should step aside (see [`GateState::holding`]), for a lock-free check at
    /// pause points; during the pause after a search it stays set until an ingest thread finds
    /// the pause over.
    busy: AtomicBool,
    share: IngestShare,
    /// Ingest turns taken.
    turns: Count,
    /// Granted turns that no ingest thread took in time (they are counted in `turns` too).
    lapsed: Count,
    /// Threads in the ingest pool: what they run together is taken off ingest's account as the
    /// wall time it would take on all of them.
    ingest_threads: usize,
    /// How long ingest's embedding threads stay parked after the last search in flight ended.
    resume_after: Duration,
    /// Bumped as ingest moves on (every 64 pause points a thread passes, and whenever it passes
    /// the gate while a query runs): with the batch's own progress counter, how the owner of an
    /// ingest batch tells a slow executor from a stuck one.
    heartbeat: AtomicUsize,
}

impl QueryGate {
    pub fn new(share: IngestShare) -> QueryGate {
        QueryGate {
            share,
            ..QueryGate::default()
        }
    }

    /// The ingest pool has `n` threads (see the field).
    pub fn with_ingest_threads(mut self, n: usize) -> QueryGate {
        self.ingest_threads = n;
        self
    }

    /// Ingest's embedding threads stay parked for `pause` after the last search in flight ends, so
    /// that a client's next search, on its way already, finds the cores free. Waking them at once
    /// cost every search of a client searching back to back: woken at the answer, they took a
    /// core from the thread writing it, and they held both when the next request arrived, each
    /// time for up to a scheduler tick. The pause is waiting time like any other: it earns ingest
    /// its turns.
    pub fn resuming_after(mut self, pause: Duration) -> QueryGate {
        self.resume_after = pause;
        self
    }

    /// Count the turns in `turns` as well, and those that lapsed in `lapsed`.
    pub fn counting_turns_in(
        mut self,
        turns: prometheus::IntCounter,
        lapsed: prometheus::IntCounter,
    ) -> QueryGate {
        self.turns.metric = Some(turns);
        self.lapsed.metric = Some(lapsed);
        self
    }

    /// A granted turn lapsed: no ingest thread was back at work before it would have ended.
    fn turn_lapsed(&self, st: &mut GateState) {
        st.turn = Turn::None;
        self.lapsed.inc();
    }

    /// A query pass starts: it waits while ingest's turn is due or running (for the passes in
    /// flight, at most one window, then for one turn, at most twice its length; a turn is at most
    /// one window long).
    fn enter(&self) {
        let mut st = self.state.lock();
        loop {
            let now = Instant::now();
            match st.turn {
                Turn::None => break,
                Turn::Until(until) if now >= until => {
                    st.turn = Turn::None;
                    break;
                }
                Turn::Until(until) => {
                    self.changed.wait_until(&mut st, until);
                }
                // Ingest's threads did not come back in time: the turn lapses.
                Turn::Granted { at, len } if now >= granted_turn_ends_by(at, len) => {
                    self.turn_lapsed(&mut st);
                    break;
                }
                Turn::Granted { at, len } => {
                    self.changed
                        .wait_until(&mut st, granted_turn_ends_by(at, len));
                }
                // The passes in flight end soon; the last one starts the turn.
                Turn::Pending(_) if st.queries == 0 => self.start_turn(&mut st),
                // Passes in flight that keep going (one query source after another) must not
                // put the turn off for ever: after a window, it starts beside them.
                Turn::Pending(since) if now >= since + self.share.window => {
                    self.start_turn(&mut st)
                }
                Turn::Pending(since) => {
                    self.changed.wait_until(&mut st, since + self.share.window);
                }
            }
        }
        st.queries += 1;
        self.busy.store(true, Ordering::Release);
    }

    fn exit(&self) {
        let mut st = self.state.lock();
        st.queries = st.queries.saturating_sub(1);
        let none_left = st.queries == 0;
        self.ended(&mut st, none_left);
    }

    /// A pass or a step has ended, the last of its kind if `none_left`: a turn due starts if
    /// nothing else is under way (not while a search that had this pass or step is still to
    /// answer: see the type's doc), and the threads waiting for it (ingest's, a pass waiting for
    /// the passes in flight before a turn) look again.
    fn ended(&self, st: &mut GateState, none_left: bool) {
        if none_left {
            if matches!(st.turn, Turn::Pending(_)) && st.holding(true) == 0 {
                self.start_turn(st);
            }
            self.publish_busy(st);
            self.changed.notify_all();
        }
    }

    /// A search ends (see [`QueryGate::search`]).
    fn search_ended(&self) {
        let mut st = self.state.lock();
        st.searches = st.searches.saturating_sub(1);
        if st.searches == 0 && !self.resume_after.is_zero() {
            st.resume_at = Some(Instant::now() + self.resume_after);
        }
        // (during the pause `busy` stays set; the first ingest thread past it clears it)
        if st.holding(true) == 0 {
            self.publish_busy(&st);
        }
        if st.searches == 0 {
            // Parked threads work out their wait again: until the end of the pause (a turn due
            // starts then, unless a new pass starts it first).
            self.changed.notify_all();
        }
    }

    /// `busy` mirrors whether ingest should step aside.
    fn publish_busy(&self, st: &GateState) {
        self.busy.store(st.holding(true) > 0, Ordering::Release);
    }

    /// Ingest's minimum share (queries keep at least a tenth: see the configuration's check).
    fn min_share(&self) -> f64 {
        self.share.min_share.clamp(0.0, 0.9)
    }

    /// Ingest's share of waited time, as running time owed per second waited.
    fn ratio(&self) -> f64 {
        let s = self.min_share();
        s / (1.0 - s)
    }

    /// The shortest turn: `min_share` of a window.
    fn min_turn(&self) -> Duration {
        self.share.window.mul_f64(self.min_share())
    }

    /// What ingest is owed at `now` (its account plus the wait in progress).
    fn owed_at(&self, st: &GateState, now: Instant) -> f64 {
        st.owed
            + st.blocked_since.map_or(0.0, |b| {
                now.saturating_duration_since(b).as_secs_f64() * self.ratio()
            })
    }

    fn start_turn(&self, st: &mut GateState) {
        let now = Instant::now();
        let owed = self.owed_at(st, now);
        let turn = Duration::from_secs_f64(owed.max(0.0)).clamp(self.min_turn(), self.share.window);
        // Settled now and paid in advance: the turn itself is not waiting time.
        st.owed = owed - turn.as_secs_f64();
        if st.blocked_since.is_some() {
            st.blocked_since = Some(now + turn);
        }
        st.turn = Turn::Granted { at: now, len: turn };
        // (ingest's threads at work check the gate at their next pause point, where the turn
        // starts)
        self.busy.store(true, Ordering::Release);
        self.turns.inc();
        self.changed.notify_all();
    }

    /// An ingest thread is back at work: a granted turn starts now (the query passes waiting for
    /// it look again, to wait until its end).
    fn begin_granted_turn(&self, st: &mut GateState) {
        if let Turn::Granted { at, len } = st.turn {
            let now = Instant::now();
            // (not past what queries were promised)
            let until = (now + len).min(granted_turn_ends_by(at, len));
            if now < until {
                st.turn = Turn::Until(until);
            } else {
                self.turn_lapsed(st);
            }
            if st.blocked_since.is_some() {
                st.blocked_since = Some(until.max(now));
            }
            self.changed.notify_all();
        }
    }

    /// Ingest's side: return when no query is being embedded or index step run and
    /// (`searches_too`) no search is in flight and the pause after the last one is over, or when
    /// it is ingest's turn. The embedding threads step aside for searches too; graph inserts only
    /// for passes and index steps: searches may wait for this node's index to catch up (a write
    /// waits until its effects are searchable, a `min_index` read until the index has them), and
    /// under a search load that never lets up the inserts would then move only in turns.
    fn wait_idle(&self, searches_too: bool) {
        // A shared counter bumped at every pause point would bounce its cache line between
        // the ingest threads: count locally, publish every 64 steps.
        thread_local! {
            static STEPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
        }
        if STEPS.with(|s| {
            s.set(s.get().wrapping_add(1));
            s.get().is_multiple_of(64)
        }) {
            self.heartbeat.fetch_add(1, Ordering::Relaxed);
        }
        if !self.busy.load(Ordering::Acquire) {
            return;
        }
        self.heartbeat.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock();
        self.begin_granted_turn(&mut st);
        if st.holding(searches_too) == 0 || matches!(st.turn, Turn::Until(u) if Instant::now() < u)
        {
            self.publish_busy(&st);
            return;
        }
        let cpu = thread_cpu_time();
        // What this thread ran since it last waited (outside turns, which are paid for) counts
        // towards ingest's share: a query load that leaves ingest gaps enough owes it no turn.
        // CPU time, not wall time: in the gaps ingest competes with the rest of the search path
        // at a lower priority and may get little of them.
        if let Some(from) = RAN_FROM.take() {
            let ran = cpu.saturating_sub(from).as_secs_f64() / self.ingest_threads.max(1) as f64;
            st.owed = (st.owed - ran).max(0.0);
        }
        // Ingest's wait starts here.
        if st.parked == 0 {
            st.blocked_since = Some(Instant::now());
        }
        st.parked += 1;
        let min_turn = self.min_turn().as_secs_f64();
        loop {
            let now = Instant::now();
            match st.turn {
                // Back at work: the turn starts (or, taken too late, has lapsed: look again).
                Turn::Granted { .. } => {
                    self.begin_granted_turn(&mut st);
                    continue;
                }
                Turn::Until(until) if now < until => break,
                Turn::Until(_) => {
                    // The turn is over: queries go first again.
                    st.turn = Turn::None;
                    self.changed.notify_all();
                }
                // Nothing under way: the turn starts now.
                Turn::Pending(_) if st.holding(true) == 0 => {
                    self.start_turn(&mut st);
                    continue;
                }
                // Passes and searches in flight that keep going hold ingest back at most one
                // window.
                Turn::Pending(since) if now >= since + self.share.window => {
                    self.start_turn(&mut st);
                    continue;
                }
                // Until then, or the end of the pause after the last search (a new pass may
                // start the turn before either).
                Turn::Pending(since) => {
                    let deadline = since + self.share.window;
                    let until = st.pausing().map_or(deadline, |u| u.min(deadline));
                    self.changed.wait_until(&mut st, until);
                    continue;
                }
                Turn::None => {}
            }
            if st.holding(searches_too) == 0 {
                break;
            }
            // Parked for the pause after a search: until it ends, at the latest.
            let resume_at = st.pausing();
            if self.min_share() <= 0.0 {
                match resume_at {
                    Some(u) => {
                        self.changed.wait_until(&mut st, u);
                    }
                    None => self.changed.wait(&mut st),
                }
                continue;
            }
            let owed = self.owed_at(&st, now);
            if owed >= min_turn {
                st.turn = Turn::Pending(now);
                continue;
            }
            // Until it is owed a turn (or something changes).
            let wait = Duration::from_secs_f64((min_turn - owed) / self.ratio());
            let until = resume_at.map_or(now + wait, |u| u.min(now + wait));
            self.changed.wait_until(&mut st, until);
        }
        // Ingest runs again: settle the time it waited (at most one window of credit).
        st.parked -= 1;
        if st.parked == 0 {
            let now = Instant::now();
            let owed = self.owed_at(&st, now);
            st.owed = owed.min(self.share.window.as_secs_f64());
            st.blocked_since = None;
        }
        // A turn is paid for already: what counts is what this thread runs outside turns.
        let in_turn = matches!(st.turn, Turn::Until(u) if Instant::now() < u);
        // (the pause after a search may have ended without anyone clearing `busy`)
        self.publish_busy(&st);
        drop(st);
        RAN_FROM.set((!in_turn).then(thread_cpu_time));
    }

    /// Ingest has nothing left to do: a turn due or running ends (queries need not wait for
    /// cores nobody uses), and what ingest was owed lapses.
    fn ingest_idle(&self) {
        let mut st = self.state.lock();
        if st.turn != Turn::None {
            st.turn = Turn::None;
            self.changed.notify_all();
        }
        st.owed = 0.0;
    }

    /// How many times ingest has moved on (see the field).
    pub fn heartbeat(&self) -> usize {
        self.heartbeat.load(Ordering::Relaxed)
    }

    /// Turns ingest has taken while queries were waiting.
    pub fn ingest_turns(&self) -> usize {
        self.turns.get()
    }

    /// Of those, the turns that lapsed: granted, but no ingest thread was back at work in time.
    pub fn lapsed_turns(&self) -> usize {
        self.lapsed.get()
    }

    /// Count a query-path model pass (a reranking) as a query for as long as the guard lives.
    pub fn hold(self: &Arc<Self>) -> QueryGuard {
        self.enter();
        QueryGuard(self.clone())
    }

    /// Ingest steps aside while the returned guard lives, as for a pass, from a search's start
    /// to its answer, and for the pause after the last search; unlike [`QueryGate::hold`] it
    /// never waits (its passes wait for a turn due or running).
    pub fn search(self: &Arc<Self>) -> SearchGuard {
        let mut st = self.state.lock();
        st.searches += 1;
        st.resume_at = None;
        self.publish_busy(&st);
        SearchGuard(self.clone())
    }

    /// For a step of a search in flight (its index step): ingest steps aside as for a pass, but the
    /// step never waits for ingest's turn. A search that has had its pass goes on to its answer;
    /// only new passes wait for turns.
    pub fn hold_in_search(self: &Arc<Self>) -> StepGuard {
        let mut st = self.state.lock();
        st.steps += 1;
        self.busy.store(true, Ordering::Release);
        StepGuard(self.clone())
    }

    /// A step of a search under way ends (see [`QueryGate::hold_in_search`]).
    fn step_ended(&self) {
        let mut st = self.state.lock();
        st.steps = st.steps.saturating_sub(1);
        let none_left = st.steps == 0;
        self.ended(&mut st, none_left);
    }

    /// A pause hook for the ingest pool's threads: they sleep while a query is embedded or a
    /// search is in flight (see [`QueryGate::wait_idle`]). Parked
    /// threads leave the cores to the query's threads at once; threads that merely run at a low
    /// priority would still get a core whenever a query thread yields while it waits for work
    /// (rayon does), and then keep it until the next scheduler tick, which left a two-thread
    /// query pass at about the speed of one during ingest.
    pub fn pause_hook(self: &Arc<Self>) -> shoal_inference::PauseHook {
        let gate = self.clone();
        Arc::new(move || gate.wait_idle(true))
    }

    /// A pause hook for graph inserts: they step aside while a query is embedded or an index step
    /// runs, not for whole searches (see [`QueryGate::wait_idle`]).
    pub fn insert_pause_hook(self: &Arc<Self>) -> shoal_inference::PauseHook {
        let gate = self.clone();
        Arc::new(move || gate.wait_idle(false))
    }
}

/// Ingest steps aside while this lives (see [`QueryGate::hold`]).
pub struct QueryGuard(Arc<QueryGate>);

/// A search in flight (see [`QueryGate::search`]).
pub struct SearchGuard(Arc<QueryGate>);

/// A step of a search under way (see [`QueryGate::hold_in_search`]).
pub struct StepGuard(Arc<QueryGate>);

impl Drop for StepGuard {
    fn drop(&mut self) {
        self.0.step_ended();
    }
}

impl Drop for SearchGuard {
    fn drop(&mut self) {
        self.0.search_ended();
    }
}

impl Drop for QueryGuard {
    fn drop(&mut self) {
        self.0.exit();
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// Adaptive batching: take what is queued; wait for more, up to `window` after the first
    /// job was queued, only while [`Arrivals`] says more searches are on their way; at most
    /// `max_texts` per pass.
    Query {
        window: Duration,
        max_texts: usize,
        /// False: always wait the whole window (the fixed window, for comparison).
        adaptive: bool,
        /// The executor thread's time slice (µs; 0: the kernel's default): see
        /// [`crate::thread_sched`].
        slice_us: u32,
    },
    /// Micro-batches of at most `micro` texts and `micro_tokens` tokens, yielding to queries in
    /// between, at priority `nice`.
    Ingest {
        micro: usize,
        micro_tokens: usize,
        nice: i32,
    },
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
        arrivals: Arc<Arrivals>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<EmbedExecutor> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("embed-{}", role.name()))
            .spawn(move || {
                // (a thread inherits its maker's slice: an ingest thread made on an HTTP worker
                // goes back to the kernel's default)
                let slice_us = match role {
                    Role::Ingest { nice, .. } => {
                        crate::thread_sched::lower_thread_priority(nice);
                        0
                    }
                    Role::Query { slice_us, .. } => slice_us,
                };
                crate::thread_sched::request_slice(slice_us);
                let exec = Exec {
                    embedder,
                    pool,
                    gate,
                    arrivals,
                    metrics,
                    role,
                };
                match role {
                    Role::Query {
                        window,
                        max_texts,
                        adaptive,
                        ..
                    } => exec.run_queries(rx, window, max_texts, adaptive),
                    Role::Ingest {
                        micro,
                        micro_tokens,
                        ..
                    } => exec.run_ingest(rx, micro, micro_tokens),
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
    arrivals: Arc<Arrivals>,
    metrics: Arc<Metrics>,
    role: Role,
}

impl Exec {
    fn embed(&self, kind: &TextKind, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        let start = Instant::now();
        let result = self
            .pool
            .install(|| self.embedder.embed_as(kind, texts, &|| false))
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
        self.metrics
            .embed_batch_size
            .with_label_values(&[queue])
            .observe(texts.len() as f64);
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

    fn run_queries(
        &self,
        rx: Receiver<EmbedJob>,
        window: Duration,
        max_texts: usize,
        adaptive: bool,
    ) {
        while let Ok(mut first) = rx.recv() {
            // Released when this batch is answered, or if the pass panics.
            let _query = self.gate.hold();
            first.arrival = None;
            let deadline = first.queued + window;
            let mut n = first.texts.len();
            let mut jobs = vec![first];
            let take = |mut j: EmbedJob, n: &mut usize, jobs: &mut Vec<EmbedJob>| {
                j.arrival = None;
                *n += j.texts.len();
                jobs.push(j);
            };
            'gather: while n < max_texts {
                // Take what is already queued, without waiting.
                while let Ok(j) = rx.try_recv() {
                    take(j, &mut n, &mut jobs);
                    if n >= max_texts {
                        break 'gather;
                    }
                }
                // Wait only while more searches are on their way, and not past the window.
                let now = Instant::now();
                if (adaptive && self.arrivals.coming() == 0) || now >= deadline {
                    break;
                }
                // Short waits, so that a search that ends without a job stops the gathering.
                let wait = if adaptive {
                    (deadline - now).min(Duration::from_micros(200))
                } else {
                    deadline - now
                };
                match rx.recv_timeout(wait) {
                    Ok(j) => take(j, &mut n, &mut jobs),
                    Err(RecvTimeoutError::Timeout) => {}
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
            // One pass per kind of text (queries and plain texts get different prompts in
            // some models); nearly always one.
            while !jobs.is_empty() {
                let kind = jobs[0].kind.clone();
                let (same, rest): (Vec<EmbedJob>, Vec<EmbedJob>) =
                    jobs.into_iter().partition(|j| j.kind == kind);
                jobs = rest;
                self.answer(kind, same);
            }
        }
    }

    /// Embed the jobs' texts in one pass and hand each job its vectors.
    fn answer(&self, kind: TextKind, jobs: Vec<EmbedJob>) {
        let texts: Vec<&str> = jobs
            .iter()
            .flat_map(|j| j.texts.iter().map(String::as_str))
            .collect();
        match self.embed(&kind, &texts) {
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

    fn run_ingest(&self, rx: Receiver<EmbedJob>, micro: usize, micro_tokens: usize) {
        loop {
            let job = match rx.try_recv() {
                Ok(job) => job,
                // Between one batch and the next of a stream there is a short break (the batch
                // before is stored, the next one chunked, both stepping aside for searches); only
                // a longer one means ingest has nothing to do.
                Err(mpsc::TryRecvError::Empty) => {
                    match rx.recv_timeout(self.gate.share.window.max(INGEST_IDLE_AFTER)) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout) => {
                            self.gate.ingest_idle();
                            match rx.recv() {
                                Ok(job) => job,
                                Err(_) => break,
                            }
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                Err(mpsc::TryRecvError::Disconnected) => break,
            };
            self.metrics
                .embed_queue_wait_seconds
                .with_label_values(&["ingest"])
                .observe(job.queued.elapsed().as_secs_f64());
            let mut out = Vec::with_capacity(job.texts.len());
            let mut failed = None;
            for range in micro_batches(&job.texts, micro, micro_tokens) {
                let part = &job.texts[range];
                self.gate.wait_idle(true);
                // Its owner gave it up (no progress for too long): drop it, never run it twice.
                if !self.wanted(&job) {
                    failed = Some("cancelled".to_string());
                    break;
                }
                let refs: Vec<&str> = part.iter().map(String::as_str).collect();
                match self.embed(&job.kind, &refs) {
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

/// Split `texts` into consecutive micro-batches of at most `max_texts` texts and, where it can
/// (a text is never split), at most `max_tokens` tokens, estimated at 4 bytes a token: passages go
/// a few at a time, short texts many at a time (a pass of a few short texts wastes the kernels).
fn micro_batches(
    texts: &[String],
    max_texts: usize,
    max_tokens: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut tokens = 0;
    for (i, t) in texts.iter().enumerate() {
        let est = t.len().div_ceil(4) + 2;
        if i > start && (i - start >= max_texts.max(1) || tokens + est > max_tokens) {
            out.push(start..i);
            start = i;
            tokens = 0;
        }
        tokens += est;
    }
    if start < texts.len() {
        out.push(start..texts.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_batches_take_many_short_texts_and_few_long_ones() {
        let short: Vec<String> = (0..100).map(|i| format!("short text {i}")).collect();
        let b = micro_batches(&short, 32, 800);
        assert_eq!(
            b.iter().map(|r| r.len()).collect::<Vec<_>>(),
            [32, 32, 32, 4]
        );
        let long: Vec<String> = (0..10).map(|_| "x".repeat(800)).collect(); // ~200 tokens each
        let b = micro_batches(&long, 32, 800);
        assert!(b.iter().all(|r| r.len() == 3 || r.len() == 1), "{b:?}");
        assert_eq!(b.iter().map(|r| r.len()).sum::<usize>(), 10);
        // a text over the token budget still goes, alone
        let huge = vec!["y".repeat(10_000), "z".into()];
        assert_eq!(micro_batches(&huge, 32, 800), vec![0..1, 1..2]);
        assert!(micro_batches(&[], 32, 800).is_empty());
    }

    #[test]
    fn gate_blocks_until_queries_leave() {
        let gate = Arc::new(QueryGate::default());
        gate.enter();
        let g = gate.clone();
        let waiter = std::thread::spawn(move || {
            let t = Instant::now();
            g.wait_idle(true);
            t.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        gate.exit();
        let waited = waiter.join().unwrap();
        assert!(waited >= Duration::from_millis(40), "{waited:?}");
        gate.wait_idle(true); // idle now: returns at once
    }

    #[test]
    fn a_search_in_flight_parks_ingest_but_not_its_graph_inserts() {
        // ingest waits while a search is in flight, as it does for a pass (no turns here)
        let gate = shared_gate(0.0, Duration::from_millis(200));
        let search = gate.search();
        assert!(gate.busy.load(Ordering::Acquire));
        let rx = parked(&gate, true);
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        // graph inserts do not wait for a search (it may be waiting for them), only for passes
        gate.wait_idle(false);
        // a pass of the same search ends: ingest still waits for the search
        drop(gate.hold());
        assert!(gate.busy.load(Ordering::Acquire));
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        drop(search);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("ingest still waits after the search ended");
        assert!(!gate.busy.load(Ordering::Acquire));
    }

    #[test]
    fn graph_inserts_go_on_when_a_step_ends_while_its_search_is_still_in_flight() {
        // no turns (share 0): nothing but a wake-up lets the inserts go on
        let gate = shared_gate(0.0, Duration::from_millis(200));
        let search = gate.search();
        let step = gate.hold_in_search();
        let inserts = parked(&gate, false);
        assert!(inserts.recv_timeout(Duration::from_millis(50)).is_err());
        drop(step);
        inserts
            .recv_timeout(Duration::from_secs(5))
            .expect("graph inserts still wait after the index step ended");
        drop(search);
    }

    #[test]
    fn ingest_stays_parked_for_the_pause_after_a_search() {
        // no turns (share 0): only searches and the pause hold ingest
        let pause = Duration::from_millis(150);
        let gate = Arc::new(
            QueryGate::new(IngestShare {
                min_share: 0.0,
                window: Duration::from_millis(200),
            })
            .resuming_after(pause),
        );
        let search = gate.search();
        let rx = parked(&gate, true);
        std::thread::sleep(Duration::from_millis(20));
        // the next search comes within the pause: ingest stays parked through both
        drop(search);
        assert!(
            rx.recv_timeout(Duration::from_millis(50)).is_err(),
            "ingest resumed between two searches"
        );
        let next = gate.search();
        std::thread::sleep(Duration::from_millis(20));
        // graph inserts never wait for the pause
        gate.wait_idle(false);
        drop(next);
        let ended = Instant::now();
        let resumed = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("ingest still parked long after the pause");
        let after = resumed.saturating_duration_since(ended);
        assert!(
            after >= pause - Duration::from_millis(10) && after < pause * 3,
            "ingest resumed {after:?} after the last search"
        );
        assert_eq!(gate.ingest_turns(), 0);
        // the thread past the pause cleared `busy`
        assert!(!gate.busy.load(Ordering::Acquire));
        // without a pause: at once
        let gate = shared_gate(0.0, Duration::from_millis(200));
        let search = gate.search();
        let rx = parked(&gate, true);
        std::thread::sleep(Duration::from_millis(20));
        drop(search);
        let ended = Instant::now();
        let resumed = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("ingest still parked after the search");
        assert!(resumed.saturating_duration_since(ended) < Duration::from_millis(100));
    }

    #[test]
    fn a_due_turn_waits_for_the_search_in_flight_to_answer() {
        // Ingest is owed a turn (share 0.5: after 500 ms of waiting) while a search is between
        // its pass and its answer: the turn does not start there, where ingest taking the cores
        // would hold the answer back, but as soon as the search has answered.
        let window = Duration::from_secs(1);
        let gate = shared_gate(0.5, window);
        let search = gate.search();
        let pass = gate.hold();
        let ingest = parked(&gate, true);
        wait_for(|| matches!(gate.state.lock().turn, Turn::Pending(_)));
        // its pass ends: still no turn (the window would start it 1 s after it fell due)
        drop(pass);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(gate.ingest_turns(), 0);
        assert!(ingest.try_recv().is_err());
        drop(search);
        let answered = Instant::now();
        let resumed = ingest
            .recv_timeout(Duration::from_secs(10))
            .expect("no turn after the search answered");
        assert_eq!(gate.ingest_turns(), 1);
        assert!(resumed.saturating_duration_since(answered) < Duration::from_millis(300));
        // a search that never ends holds the turn off one window at most
        let gate = shared_gate(0.5, Duration::from_millis(200));
        let _search = gate.search();
        let g = gate.clone();
        let t = Instant::now();
        std::thread::spawn(move || g.wait_idle(true))
            .join()
            .unwrap();
        assert_eq!(gate.ingest_turns(), 1);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn a_new_pass_starts_a_due_turn_and_waits_for_it() {
        // a search in flight, ingest owed a turn of 500 ms: the next search's pass starts it
        let gate = shared_gate(0.5, Duration::from_secs(1));
        let search = gate.search();
        let ingest = parked(&gate, true);
        wait_for(|| matches!(gate.state.lock().turn, Turn::Pending(_)));
        let t = Instant::now();
        let pass = gate.hold();
        let turn_started = ingest
            .recv_timeout(Duration::from_secs(10))
            .expect("the pass did not start the turn");
        assert!(turn_started >= t);
        assert_eq!(gate.ingest_turns(), 1);
        assert!(
            t.elapsed() >= Duration::from_millis(450),
            "the pass went ahead inside the turn"
        );
        drop(pass);
        drop(search);
    }

    #[test]
    fn a_step_of_a_search_under_way_never_waits_for_a_turn() {
        // no turn: counted like a pass, and ingest waits for it
        let gate = Arc::new(QueryGate::default());
        let held = gate.hold_in_search();
        assert!(gate.busy.load(Ordering::Acquire));
        let rx = parked(&gate, true);
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        drop(held);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("ingest still waits after the step ended");
        // a turn running (1 s): a new pass would wait for it, the step goes ahead at once
        let (gate, ingest) = a_due_turn(Duration::from_secs(2));
        gate.exit();
        ingest.join().unwrap();
        assert!(matches!(gate.state.lock().turn, Turn::Until(_)));
        let t = Instant::now();
        drop(gate.hold_in_search());
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(gate.state.lock().steps, 0);
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
            gate.wait_idle(true);
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(5)).is_ok(),
            "ingest still held"
        );
    }

    /// Query passes of `pass` each, back to back from `threads` threads, until `stop`.
    fn query_load(
        gate: &Arc<QueryGate>,
        threads: usize,
        pass: Duration,
        stop: &Arc<AtomicBool>,
    ) -> Vec<std::thread::JoinHandle<usize>> {
        (0..threads)
            .map(|_| {
                let (gate, stop) = (gate.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut passes = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let _q = gate.hold();
                        std::thread::sleep(pass);
                        passes += 1;
                    }
                    passes
                })
            })
            .collect()
    }

    #[test]
    fn ingest_gets_its_turn_while_queries_never_stop() {
        let gate = shared_gate(0.2, Duration::from_millis(100));
        // overlapping passes from two threads: the gate is never idle on its own
        let stop = Arc::new(AtomicBool::new(false));
        let load = query_load(&gate, 2, Duration::from_millis(3), &stop);
        std::thread::sleep(Duration::from_millis(20));
        let start = Instant::now();
        let mut steps = 0;
        let mut ran = Duration::ZERO;
        while start.elapsed() < Duration::from_millis(800) {
            gate.wait_idle(true);
            // a step of ingest work
            let t = Instant::now();
            std::thread::sleep(Duration::from_millis(2));
            ran += t.elapsed();
            steps += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let passes: usize = load.into_iter().map(|h| h.join().unwrap()).sum();
        // ~8 turns of 20 ms in 800 ms: ingest ran for a good part of its share, queries the rest
        assert!(gate.ingest_turns() >= 4, "{} turns", gate.ingest_turns());
        assert!(
            ran >= Duration::from_millis(60),
            "ingest ran {ran:?} in {steps} steps"
        );
        assert!(passes >= 100, "{passes} query passes");
    }

    #[test]
    fn without_a_share_ingest_waits_for_queries() {
        let gate = shared_gate(0.0, Duration::from_millis(50));
        gate.enter();
        let (tx, rx) = mpsc::channel();
        let g = gate.clone();
        std::thread::spawn(move || {
            g.wait_idle(true);
            let _ = tx.send(());
        });
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        gate.exit();
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
        assert_eq!(gate.ingest_turns(), 0);
    }

    #[test]
    fn query_passes_wait_for_ingest_turns_and_turns_wait_for_passes_in_flight() {
        let gate = shared_gate(0.5, Duration::from_millis(200));
        // a pass in flight for 150 ms
        let g = gate.clone();
        let in_flight = std::thread::spawn(move || {
            let _q = g.hold();
            std::thread::sleep(Duration::from_millis(150));
            Instant::now()
        });
        std::thread::sleep(Duration::from_millis(10));
        // a second pass arrives after ingest's patience (100 ms) ran out: it waits for the turn
        let g = gate.clone();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(120));
            let _q = g.hold();
            Instant::now()
        });
        // ingest waits 100 ms, then for the pass in flight, then has its 100 ms turn
        let start = Instant::now();
        gate.wait_idle(true);
        let turn_start = Instant::now();
        let first_done = in_flight.join().unwrap();
        assert!(
            turn_start >= first_done,
            "the turn began before the pass in flight ended"
        );
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert_eq!(gate.ingest_turns(), 1);
        let late_started = late.join().unwrap();
        assert!(
            late_started >= turn_start + Duration::from_millis(90),
            "a query pass started inside ingest's turn"
        );
    }

    #[test]
    fn a_query_pass_waits_for_a_due_turn_at_most_one_window() {
        // The pass in flight does not end (it waits for the next one, as a query executor would
        // for the only thread of its pool taken by a pass waiting in the gate, or it is one of
        // several query sources that keep passes in flight): after a window the turn starts
        // beside it, and the new pass goes ahead after the turn instead of waiting for ever.
        let (gate, ingest) = a_due_turn(Duration::from_millis(100));
        let t = Instant::now();
        let (tx, rx) = mpsc::channel();
        let g = gate.clone();
        std::thread::spawn(move || {
            let _q = g.hold();
            tx.send(()).unwrap();
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the second pass is still waiting");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        ingest.join().unwrap();
        assert_eq!(gate.ingest_turns(), 1);
        gate.exit();
    }

    /// A due turn whose pass starts it now (nothing in flight), for `owed` seconds of ingest.
    fn a_query_pass_starting_a_due_turn(
        gate: &Arc<QueryGate>,
        owed: f64,
    ) -> std::thread::JoinHandle<Instant> {
        {
            let mut st = gate.state.lock();
            st.owed = owed;
            st.turn = Turn::Pending(Instant::now());
        }
        let gate = gate.clone();
        std::thread::spawn(move || {
            gate.enter();
            let entered = Instant::now();
            gate.exit();
            entered
        })
    }

    #[test]
    fn a_turn_is_timed_from_when_ingest_is_back_at_work() {
        // Ingest's thread is slow to come back (60 ms here; a wake-up on busy cores in earnest):
        // its turn of 100 ms still runs in full, so the pass that waits for it waits 160 ms.
        let gate = Arc::new(QueryGate::default());
        let granted = Instant::now();
        let pass = a_query_pass_starting_a_due_turn(&gate, 0.1);
        std::thread::sleep(Duration::from_millis(60));
        let back = Instant::now();
        gate.wait_idle(true);
        let entered = pass.join().unwrap();
        assert!(
            entered >= back + Duration::from_millis(100),
            "the pass went ahead {:?} after the grant, {:?} after ingest was back",
            entered - granted,
            entered.saturating_duration_since(back)
        );
        assert_eq!((gate.ingest_turns(), gate.lapsed_turns()), (1, 0));
    }

    #[test]
    fn a_granted_turn_lapses_when_ingest_does_not_come_back() {
        // A turn of 50 ms that no ingest thread takes: the pass waits twice that, not a window.
        let gate = Arc::new(QueryGate::default());
        let granted = Instant::now();
        let entered = a_query_pass_starting_a_due_turn(&gate, 0.05)
            .join()
            .unwrap();
        assert!(entered >= granted + Duration::from_millis(95));
        assert_eq!(gate.state.lock().turn, Turn::None);
        assert_eq!((gate.ingest_turns(), gate.lapsed_turns()), (1, 1));
    }

    #[test]
    fn a_turn_taken_too_late_has_lapsed_and_ingest_waits_again() {
        // A pass is in flight; ingest's parked thread is woken to a turn granted 300 ms ago for
        // 100 ms: the turn is over, so the thread does not run beside the pass.
        let gate = Arc::new(QueryGate::default());
        let held = gate.hold();
        let rx = parked(&gate, true);
        wait_for(|| gate.state.lock().parked == 1);
        gate.state.lock().turn = Turn::Granted {
            at: Instant::now() - Duration::from_millis(300),
            len: Duration::from_millis(100),
        };
        gate.changed.notify_all();
        assert!(
            rx.recv_timeout(Duration::from_millis(50)).is_err(),
            "ingest ran beside a pass, on a turn long lapsed"
        );
        assert_eq!(gate.state.lock().turn, Turn::None);
        assert_eq!(gate.lapsed_turns(), 1);
        drop(held);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("ingest still waits after the pass ended");
    }

    #[test]
    fn a_turn_ends_when_ingest_has_nothing_left_to_do() {
        // ingest is owed a turn after waiting 1 s; the pass in flight ends and the turn starts
        let (gate, ingest) = a_due_turn(Duration::from_secs(2));
        gate.exit();
        ingest.join().unwrap();
        assert!(matches!(gate.state.lock().turn, Turn::Until(_)));
        // ingest is done long before its turn is: new passes need not wait for the rest
        gate.ingest_idle();
        let t = Instant::now();
        let _q = gate.hold();
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        assert!(gate.state.lock().owed <= 0.0);
    }

    #[test]
    fn a_query_load_with_gaps_enough_for_ingest_owes_it_no_turn() {
        let gate = shared_gate(0.2, Duration::from_millis(100));
        // one client: query passes of 5 ms with 3 ms between them, where ingest runs
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (gate.clone(), stop.clone());
        let client = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                {
                    let _q = g.hold();
                    std::thread::sleep(Duration::from_millis(5));
                }
                std::thread::sleep(Duration::from_millis(3));
            }
        });
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(800) {
            gate.wait_idle(true);
            // a step of ingest work: 1 ms of CPU
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(1) {
                std::hint::spin_loop();
            }
        }
        stop.store(true, Ordering::Relaxed);
        client.join().unwrap();
        // ingest ran ~3/8 of the time, above its 20%: no query ever waited for a turn (counting
        // the waits alone would have owed it ~7 turns)
        assert_eq!(gate.ingest_turns(), 0);
    }

    /// A gate (share 0.5 of `window`) with a query pass in flight and an ingest thread waiting,
    /// once that thread's turn is due.
    fn a_due_turn(window: Duration) -> (Arc<QueryGate>, std::thread::JoinHandle<()>) {
        let gate = shared_gate(0.5, window);
        gate.enter();
        let g = gate.clone();
        let ingest = std::thread::spawn(move || g.wait_idle(true));
        wait_for(|| matches!(gate.state.lock().turn, Turn::Pending(_)));
        (gate, ingest)
    }

    /// An ingest thread (`searches_too`: an embedding thread, else graph inserts) waiting at a
    /// pause point of `gate`; it says when it goes on.
    fn parked(gate: &Arc<QueryGate>, searches_too: bool) -> mpsc::Receiver<Instant> {
        let g = gate.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            g.wait_idle(searches_too);
            let _ = tx.send(Instant::now());
        });
        rx
    }

    /// A gate that owes ingest `min_share` in turns of at most `window`.
    fn shared_gate(min_share: f64, window: Duration) -> Arc<QueryGate> {
        Arc::new(QueryGate::new(IngestShare { min_share, window }))
    }

    /// Wait (at most 10 s) for `cond`.
    fn wait_for(mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(1));
        }
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
                arrival: None,
                kind: TextKind::Plain,
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
        let gate = shared_gate(0.0, Duration::from_millis(100));
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap(),
        );
        gate.enter(); // queries keep ingest parked
        let exec = EmbedExecutor::start(
            Role::Ingest {
                micro: 2,
                micro_tokens: 100_000,
                nice: 0,
            },
            embedder,
            pool,
            gate.clone(),
            Arc::default(),
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
        let (exec, _arrivals, metrics) = query_exec(Duration::from_millis(1));
        let (gone, gone_rx) = job(3);
        drop(gone_rx);
        exec.submit(gone).unwrap();
        let (live, live_rx) = job(1);
        exec.submit(live).unwrap();
        assert_eq!(live_rx.blocking_recv().unwrap().unwrap().len(), 1);
        assert_eq!(texts_embedded(&metrics, "query"), 1);
    }

    /// A query executor (one thread, at most 32 texts a pass, adaptive gathering up to `window`),
    /// its arrivals and its metrics.
    fn query_exec(window: Duration) -> (EmbedExecutor, Arc<Arrivals>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let arrivals = Arc::new(Arrivals::default());
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap(),
        );
        let exec = EmbedExecutor::start(
            Role::Query {
                window,
                max_texts: 32,
                adaptive: true,
                slice_us: 0,
            },
            model(),
            pool,
            Arc::new(QueryGate::default()),
            arrivals.clone(),
            metrics.clone(),
        )
        .unwrap();
        (exec, arrivals, metrics)
    }

    fn passes(metrics: &Metrics) -> (u64, f64) {
        let h = metrics.embed_batch_size.with_label_values(&["query"]);
        (h.get_sample_count(), h.get_sample_sum())
    }

    #[test]
    fn a_lone_query_is_embedded_without_waiting_for_the_window() {
        let (exec, _arrivals, metrics) = query_exec(Duration::from_secs(30));
        let t = Instant::now();
        let (one, rx) = job(1);
        exec.submit(one).unwrap();
        assert_eq!(rx.blocking_recv().unwrap().unwrap().len(), 1);
        // before the change it waited the whole window (30 s) for company
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
        assert_eq!(passes(&metrics), (1, 1.0));
    }

    #[test]
    fn queries_on_their_way_are_gathered_into_one_pass() {
        let (exec, arrivals, metrics) = query_exec(Duration::from_secs(30));
        let first_ticket = arrivals.arrive();
        let second_ticket = arrivals.arrive();
        let (mut first, first_rx) = job(1);
        first.arrival = Some(first_ticket);
        exec.submit(first).unwrap();
        // the executor holds the first job and waits: one more search is on its way
        let (mut second, second_rx) = job(2);
        second.arrival = Some(second_ticket);
        exec.submit(second).unwrap();
        assert_eq!(first_rx.blocking_recv().unwrap().unwrap().len(), 1);
        assert_eq!(second_rx.blocking_recv().unwrap().unwrap().len(), 2);
        assert_eq!(passes(&metrics), (1, 3.0), "one pass of both jobs");
        assert_eq!(arrivals.coming(), 0);
    }

    #[test]
    fn a_search_that_ends_before_its_job_stops_the_gathering() {
        let (exec, arrivals, metrics) = query_exec(Duration::from_secs(30));
        let ticket = arrivals.arrive(); // a search that will be answered from the cache
        let t = Instant::now();
        let (one, rx) = job(1);
        exec.submit(one).unwrap();
        // the search ends (its answer came from elsewhere) while the executor gathers
        drop(ticket);
        assert_eq!(rx.blocking_recv().unwrap().unwrap().len(), 1);
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
        assert_eq!(passes(&metrics), (1, 1.0));
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
