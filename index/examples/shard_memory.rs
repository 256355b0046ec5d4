//! Heap bytes a shard holds per point: builds a shard of N random 384-d unit vectors (the
//! parallel build used at load), then inserts N/10 more one batch at a time (the ingest path), and
//! prints the live heap bytes per point counted by a global allocator.
//!
//! `cargo run --release -p shoal-index --example shard_memory -- [N]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::{rngs::StdRng, Rng, SeedableRng};
use shoal_index::{normalize, Payload, Point, Shard, ShardParams};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts the bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's layout contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const DIM: usize = 384;

fn points(range: std::ops::Range<u64>, rng: &mut StdRng) -> Vec<Point> {
    let payload = Arc::new(Payload {
        doc_id: "doc".into(),
        metadata: Default::default(),
    });
    range
        .map(|id| {
            let mut v: Vec<f32> = (0..DIM).map(|_| rng.gen_range(-1.0..1.0)).collect();
            normalize(&mut v);
            Point {
                id,
                vector: v,
                payload: payload.clone(),
                text: String::new(),
            }
        })
        .collect()
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let mut rng = StdRng::seed_from_u64(42);
    let base = LIVE.load(Ordering::Relaxed);
    let pts = points(0..n, &mut rng);
    let (shard, _) = Shard::open(ShardParams::new(DIM), pts, None, 0).expect("open");
    let built = LIVE.load(Ordering::Relaxed) - base;
    let extra = n / 10;
    let more = points(n..n + extra, &mut rng);
    for batch in more.chunks(32) {
        shard.insert(batch.to_vec()).expect("insert");
    }
    drop(more);
    let total = LIVE.load(Ordering::Relaxed) - base;
    let stats = shard.stats();
    println!(
        "{} points of {DIM} dimensions (m 16): {:.0} heap bytes per point after the build, {:.0} after {extra} more inserted in batches of 32 (a vector alone is {} bytes)",
        stats.live_points,
        built as f64 / n as f64,
        total as f64 / stats.live_points as f64,
        DIM * 4
    );
}
