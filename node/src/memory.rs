//! Handing freed memory back to the system after a burst of work.
//!
//! glibc's allocator keeps what its per-thread arenas freed for the next allocation instead of
//! returning it, so a node that has ingested stays at the size of its ingest's working set:
//! 1.19 GB of resident memory after 111,553 chunks were ingested, of which 460 MB went back at
//! one `malloc_trim` (docs/benchmarks.md). The trimmer waits until the work that asked for it has
//! been quiet for a while (an ingest that drains and starts again asks again) and none of it is
//! under way (a batch still being processed holds a [`Working`]), then trims once on a thread of
//! its own, and at most once a minute. It is not done periodically: a trim locks each arena while
//! it walks it, and the search path should not meet that while it is busy. Only where the
//! allocator is glibc's (elsewhere the trimmer does nothing).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// How long the work must have been quiet before memory is trimmed.
pub const QUIET: Duration = Duration::from_secs(5);
/// Least time between two trims (small uploads that each drain the queue ask every few seconds).
pub const MIN_GAP: Duration = Duration::from_secs(60);
/// Searches per trim request (see [`MemoryTrimmer::searched`]).
pub const SEARCHES_PER_REQUEST: u64 = 256;

pub struct MemoryTrimmer {
    /// Requests made so far, and trims done.
    state: Mutex<Counts>,
    wake: Condvar,
    /// Work under way (see [`MemoryTrimmer::working`]): no trim meanwhile.
    busy: AtomicUsize,
    /// Searches so far (see [`MemoryTrimmer::searched`]).
    searches: AtomicU64,
}

/// Work under way, until dropped.
pub struct Working<'a>(&'a MemoryTrimmer);

impl Drop for Working<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Default, Clone, Copy)]
struct Counts {
    requested: u64,
    trims: u64,
}

impl MemoryTrimmer {
    /// Start the trimmer's thread: a trim follows each burst of requests once none came for
    /// `quiet` and no work is under way, at least `min_gap` after the last one.
    pub fn start(quiet: Duration, min_gap: Duration) -> Arc<MemoryTrimmer> {
        let trimmer = Arc::new(MemoryTrimmer {
            state: Mutex::new(Counts::default()),
            wake: Condvar::new(),
            busy: AtomicUsize::new(0),
            searches: AtomicU64::new(0),
        });
        if !cfg!(all(target_os = "linux", target_env = "gnu")) {
            return trimmer; // nothing to hand back with another allocator
        }
        let t = Arc::downgrade(&trimmer);
        let spawned = std::thread::Builder::new()
            .name("memory-trim".into())
            .spawn(move || {
                let mut done = 0;
                let mut last_trim: Option<Instant> = None;
                while let Some(t) = t.upgrade() {
                    let mut s = t.state.lock();
                    if s.requested == done {
                        // nothing asked: look again now and then (the trimmer may be gone)
                        t.wake.wait_for(&mut s, Duration::from_secs(1));
                        continue;
                    }
                    // wait until no request came for `quiet`, nothing is under way, and the last
                    // trim is `min_gap` old
                    loop {
                        let seen = s.requested;
                        let timed_out = t.wake.wait_for(&mut s, quiet).timed_out();
                        let gap_kept = last_trim.is_none_or(|at| at.elapsed() >= min_gap);
                        if timed_out
                            && s.requested == seen
                            && t.busy.load(Ordering::Acquire) == 0
                            && gap_kept
                        {
                            break;
                        }
                    }
                    done = s.requested;
                    drop(s);
                    trim_now();
                    last_trim = Some(Instant::now());
                    t.state.lock().trims += 1;
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the memory trimmer; freed memory stays with the allocator");
        }
        trimmer
    }

    /// Ask for a trim once the work has been quiet for a while.
    pub fn request(&self) {
        self.state.lock().requested += 1;
        self.wake.notify_one();
    }

    /// A search was made. Every [`SEARCHES_PER_REQUEST`]th asks for a trim, so that a burst of
    /// searches (whose threads' allocator arenas keep what they freed: a node grew from 753 to
    /// 847 MiB between two runs of 16 connections) is followed by one once searches have been
    /// quiet for the quiet time; a steady load keeps asking, so none comes while it lasts. Not
    /// every search: a request takes the trimmer's lock.
    pub fn searched(&self) {
        if self.searches.fetch_add(1, Ordering::Relaxed) % SEARCHES_PER_REQUEST
            == SEARCHES_PER_REQUEST - 1
        {
            self.request();
        }
    }

    /// Mark work under way until the answer is dropped: no trim meanwhile (a trim asked for
    /// waits for it, then for the quiet time again).
    pub fn working(&self) -> Working<'_> {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Working(self)
    }

    /// Trims done so far.
    pub fn trims(&self) -> u64 {
        self.state.lock().trims
    }
}

/// Give the allocator's free memory back to the system now; logs what it gave and how long it
/// took.
pub fn trim_now() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let before = resident_bytes();
        let start = Instant::now();
        // SAFETY: malloc_trim only releases memory that is free.
        unsafe {
            libc::malloc_trim(0);
        }
        let after = resident_bytes();
        tracing::info!(
            resident_mb_before = before >> 20,
            resident_mb_after = after >> 20,
            ms = start.elapsed().as_millis() as u64,
            "freed memory handed back to the system"
        );
    }
}

/// The process's resident memory in bytes (0 where it cannot be read).
pub fn resident_bytes() -> u64 {
    process_memory().map_or(0, |m| m.resident_bytes)
}

/// The process's memory as the kernel counts it.
#[derive(Debug, Clone, Copy)]
pub struct ProcessMemory {
    /// Its address space.
    pub virtual_bytes: u64,
    pub resident_bytes: u64,
}

/// The process's memory (from `/proc/self/statm`; None where it cannot be read).
pub fn process_memory() -> Option<ProcessMemory> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut pages = statm.split_whitespace().map(|v| v.parse::<u64>().ok());
    let (size, resident) = (pages.next()??, pages.next()??);
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|p| *p > 0)
        .unwrap_or(4096);
    Some(ProcessMemory {
        virtual_bytes: size * page,
        resident_bytes: resident * page,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for_trims(t: &MemoryTrimmer, n: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        while t.trims() < n {
            assert!(Instant::now() < deadline, "{} trims of {n}", t.trims());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The tests trim the whole process and measure its resident memory: one at a time.
    static ONE_AT_A_TIME: Mutex<()> = parking_lot::const_mutex(());

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_burst_of_requests_is_one_trim_after_it_is_quiet_and_idle() {
        let _turn = ONE_AT_A_TIME.lock();
        let t = MemoryTrimmer::start(Duration::from_millis(300), Duration::ZERO);
        let start = Instant::now();
        for _ in 0..5 {
            t.request();
            std::thread::sleep(Duration::from_millis(50));
        }
        wait_for_trims(&t, 1, Duration::from_secs(10));
        // not before the burst had been quiet for the quiet time
        assert!(start.elapsed() >= Duration::from_millis(500));
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(t.trims(), 1, "one burst, one trim");
        // a later burst, a later trim
        t.request();
        wait_for_trims(&t, 2, Duration::from_secs(10));
        // not while work is under way: after it, and the quiet time
        let busy = t.working();
        t.request();
        std::thread::sleep(Duration::from_millis(900));
        assert_eq!(t.trims(), 2, "trimmed while work was under way");
        drop(busy);
        wait_for_trims(&t, 3, Duration::from_secs(10));
    }

    /// A trim follows a burst of searches once they are quiet, and only once the burst has
    /// made `SEARCHES_PER_REQUEST` of them.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_burst_of_searches_is_followed_by_a_trim() {
        let _turn = ONE_AT_A_TIME.lock();
        let t = MemoryTrimmer::start(Duration::from_millis(200), Duration::ZERO);
        for _ in 0..SEARCHES_PER_REQUEST - 1 {
            t.searched();
        }
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(t.trims(), 0, "a trim before the burst made enough searches");
        t.searched();
        wait_for_trims(&t, 1, Duration::from_secs(10));
        for _ in 0..3 * SEARCHES_PER_REQUEST {
            t.searched();
        }
        wait_for_trims(&t, 2, Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(t.trims(), 2, "one burst, one trim");
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn trims_are_a_gap_apart() {
        let _turn = ONE_AT_A_TIME.lock();
        let t = MemoryTrimmer::start(Duration::from_millis(100), Duration::from_secs(2));
        t.request();
        wait_for_trims(&t, 1, Duration::from_secs(10));
        let first = Instant::now();
        t.request();
        wait_for_trims(&t, 2, Duration::from_secs(10));
        assert!(
            first.elapsed() >= Duration::from_millis(1_900),
            "{:?}",
            first.elapsed()
        );
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_trim_hands_back_what_the_allocator_kept() {
        let _turn = ONE_AT_A_TIME.lock();
        // 256 MB in blocks the allocator serves from its heap (below its mmap threshold), each
        // pinned behind by a small block that stays: freeing the big ones leaves them with the
        // allocator, not the system
        let mut big = Vec::new();
        let mut pins = Vec::new();
        for _ in 0..4096 {
            big.push(vec![1u8; 64 << 10]);
            pins.push(vec![2u8; 64]);
        }
        let full = resident_bytes();
        drop(big);
        let kept = resident_bytes();
        trim_now();
        let trimmed = resident_bytes();
        assert!(kept > full / 2, "freed without a trim: {full} -> {kept}");
        assert!(
            trimmed + (128 << 20) < kept,
            "the trim gave back too little: {kept} -> {trimmed}"
        );
        drop(pins);
    }
}
