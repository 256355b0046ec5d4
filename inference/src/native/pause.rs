//! Pause points: a thread can be given a hook that the encoder calls between small units of work
//! (a weight panel past about a sixth of a task's rows, an attention head, some 64K values of a
//! row-wise operation, a text to tokenize). The node gives its ingest threads a hook that blocks
//! while a query is being embedded, so that ingest steps aside within about 0.1 ms (a long text's
//! tokenizing: 0.5 ms) instead of at the end of its batch; threads without a hook pay one
//! thread-local read per unit.

use std::cell::RefCell;
use std::sync::Arc;

/// What a pause point runs; it may block.
pub type PauseHook = Arc<dyn Fn() + Send + Sync>;

thread_local! {
    static HOOK: RefCell<Option<PauseHook>> = const { RefCell::new(None) };
}

/// Give the calling thread a pause hook (for example from a rayon pool's start handler).
pub fn set_pause_hook(hook: PauseHook) {
    HOOK.with(|h| *h.borrow_mut() = Some(hook));
}

/// Run the calling thread's pause hook, if it has one (the encoder calls it; so may other work
/// that runs on the same threads, between its own small units).
#[inline]
pub fn pause_point() {
    HOOK.with(|h| {
        if let Some(hook) = h.borrow().as_ref() {
            hook()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn only_threads_with_a_hook_run_it() {
        let calls = Arc::new(AtomicUsize::new(0));
        pause_point(); // no hook: nothing happens
        let c = calls.clone();
        std::thread::spawn(move || {
            set_pause_hook(Arc::new(move || {
                c.fetch_add(1, Ordering::Relaxed);
            }));
            pause_point();
            pause_point();
        })
        .join()
        .unwrap();
        pause_point();
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }
}
