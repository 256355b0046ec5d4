//! Pause points for graph inserts: a thread can be given a hook that [`crate::Shard::insert`]
//! calls between one point and the next, holding no lock of the shard. The node gives its
//! background threads a hook that blocks while a search runs, so that a batch of inserts steps
//! aside within one insert instead of keeping a core for the whole batch; threads without a hook
//! pay one thread-local read per point.

use std::cell::RefCell;
use std::sync::Arc;

/// What a pause point runs; it may block.
pub type InsertPauseHook = Arc<dyn Fn() + Send + Sync>;

thread_local! {
    static HOOK: RefCell<Option<InsertPauseHook>> = const { RefCell::new(None) };
}

/// Give the calling thread a pause hook (for example from a thread pool's start handler).
pub fn set_insert_pause_hook(hook: InsertPauseHook) {
    HOOK.with(|h| *h.borrow_mut() = Some(hook));
}

/// Run the calling thread's pause hook, if it has one.
#[inline]
pub(crate) fn pause_point() {
    let hook = HOOK.with(|h| h.borrow().clone());
    if let Some(hook) = hook {
        hook()
    }
}
