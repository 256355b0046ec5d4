//! How the kernel schedules shoal's threads (Linux; elsewhere these do nothing).
//!
//! Two levers, both open to an unprivileged process:
//! - ingest threads run at a lower priority (`nice`), in the normal class, so that another busy
//!   process cannot stop ingest altogether;
//! - the threads a search passes through (the HTTP workers, the query embedder and its pool) ask
//!   for a short time slice (Linux 6.12 and later: `sched_setattr` with `sched_runtime` on a
//!   normal thread). The kernel lets a task that has run less than its slice keep its core
//!   against a waking one; a waking thread with a shorter slice than the running one may take the
//!   core at once. With the default slice a search's thread could wait up to a scheduler tick
//!   (4 ms) behind an ingest thread at every hop of its path. Older kernels ignore the request.

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

/// The kernel's `struct sched_attr` (its first version, 48 bytes).
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// Shortest and longest slice the kernel accepts (µs).
pub const SLICE_US: std::ops::RangeInclusive<u32> = 100..=100_000;

/// The fair scheduling classes (normal, batch, idle): the ones with time slices.
#[cfg(target_os = "linux")]
fn fair(policy: u32) -> bool {
    [libc::SCHED_OTHER, libc::SCHED_BATCH, libc::SCHED_IDLE].contains(&(policy as i32))
}

/// The calling thread's scheduling attributes (pid 0: the calling thread).
#[cfg(target_os = "linux")]
fn get_attr() -> Option<SchedAttr> {
    let mut attr = SchedAttr::default();
    // SAFETY: sched_getattr writes at most `size` (its third argument) bytes into the live local
    // it is given.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0 as libc::pid_t,
            &mut attr as *mut SchedAttr,
            std::mem::size_of::<SchedAttr>() as u32,
            0u32,
        )
    };
    (r == 0).then_some(attr)
}

/// Ask for a time slice of `us` microseconds for the calling thread, or (0) go back to the
/// kernel's default, keeping its policy and nice value; threads made by this one inherit it.
/// Returns the slice the kernel reports afterwards, in µs (None where it reports none: other
/// systems, kernels before 6.12, or a thread outside the fair classes, which is left alone).
pub fn request_slice(us: u32) -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        let now = get_attr().filter(|a| fair(a.policy))?;
        let runtime = if us == 0 {
            0
        } else {
            u64::from(us.clamp(*SLICE_US.start(), *SLICE_US.end())) * 1000
        };
        let attr = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            policy: now.policy,
            flags: now.flags & SCHED_FLAG_RESET_ON_FORK,
            nice: now.nice,
            runtime,
            ..SchedAttr::default()
        };
        // SAFETY: sched_setattr reads one SchedAttr through a pointer to a live local whose size
        // field says how much to read.
        let r = unsafe {
            libc::syscall(
                libc::SYS_sched_setattr,
                0 as libc::pid_t,
                &attr as *const SchedAttr,
                0u32,
            )
        };
        if r != 0 {
            return None;
        }
        current_slice()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = us;
        None
    }
}

#[cfg(target_os = "linux")]
const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;

/// The calling thread's time slice as the kernel reports it (µs; None where it reports none).
pub fn current_slice() -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        get_attr()
            .filter(|a| fair(a.policy) && a.runtime > 0)
            .map(|a| (a.runtime / 1000) as u32)
    }
    #[cfg(not(target_os = "linux"))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requested_slice_is_the_one_the_kernel_reports_where_it_reports_one() {
        std::thread::spawn(|| {
            let before = current_slice();
            match request_slice(300) {
                // Linux 6.12 and later: the slice asked for
                Some(us) => {
                    assert_eq!(us, 300);
                    assert_eq!(current_slice(), Some(300));
                    // out of the kernel's range: clamped, never refused
                    assert_eq!(request_slice(10), Some(100));
                    // a thread made by this one inherits it; 0 gives it the default again
                    let child = std::thread::spawn(|| (current_slice(), request_slice(0)));
                    let (inherited, reset) = child.join().unwrap();
                    assert_eq!(inherited, Some(100));
                    assert_eq!(reset, before);
                }
                // Older kernels report no slice; nothing changed.
                None => assert_eq!(current_slice(), before),
            }
        })
        .join()
        .unwrap();
    }

    /// (Meaningful where raising the priority back would be allowed, as root: a request that
    /// reset the nice value to 0 would succeed there.)
    #[test]
    fn a_slice_request_keeps_the_threads_nice_value() {
        std::thread::spawn(|| {
            lower_thread_priority(7);
            request_slice(200);
            #[cfg(target_os = "linux")]
            assert_eq!(get_attr().map(|a| a.nice), Some(7));
            request_slice(0);
            #[cfg(target_os = "linux")]
            assert_eq!(get_attr().map(|a| a.nice), Some(7));
        })
        .join()
        .unwrap();
    }
}
