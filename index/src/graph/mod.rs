//! shoal's HNSW graph (Malkov and Yashunin's hierarchical navigable small world), written for
//! the way a shard uses it: searches never take a lock, inserts run beside them (and beside each
//! other when a shard is built on several cores), and every node is a number (`Slot`) into flat
//! storage.
//!
//! Layout: vectors contiguous and 32-byte aligned, padded with zeros to whole lanes of eight
//! floats (the AVX2 kernels run without a tail; the AVX-512 ones mask a last block of 8); each
//! node's bottom-layer links in one fixed block `[count, neighbour...]` of `2·m + 1` atomics;
//! upper-layer links (about one node in `m` has any) in a block allocated with the node, reached
//! through one pointer per node. A search's visited set and heaps are kept per thread and reused.
//!
//! Concurrency: a node is written (vector, id, its own links) before any other node links to it,
//! and links are stored with release and loaded with acquire ordering, so a search that reaches
//! a node through a link sees everything written before it. A node's link list is changed only
//! under its lock (one of a fixed set of striped mutexes); readers may see a list half replaced,
//! which is harmless: every id in it is a published node. Deletion is a flag: deleted nodes stay
//! in the graph as waypoints and are never returned.

mod dump;
mod storage;

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::*};

use parking_lot::Mutex;

use crate::distance::{dot, l2_squared, Kernel};
pub(crate) use dump::DumpError;
use std::sync::Arc;
pub(crate) use storage::MappedFile;
use storage::{Codes, Segmented, Vectors};

/// A node's number in its graph.
pub(crate) type Slot = u32;

/// How the distance between two vectors is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// 1 - dot product, for L2-normalised vectors (cosine similarity).
    #[default]
    Cosine,
    /// Squared euclidean distance.
    Euclidean,
}

impl Metric {
    #[inline]
    pub fn distance(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::Cosine => 1.0 - dot(a, b),
            Metric::Euclidean => l2_squared(a, b),
        }
    }
}

/// Bytes a graph holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GraphMemory {
    /// Its vectors on the heap, and their codes.
    pub vectors: usize,
    /// Its vectors mapped from a file (the page cache holds those that are read).
    pub mapped: usize,
    /// Everything else: links of every layer, ids, flags.
    pub rest: usize,
}

/// What the graph walk of a search reads to compare the query with a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// The vectors themselves (4 bytes a value).
    #[default]
    None,
    /// A copy of each vector quantised to int8 (1 byte a value and 32 per node: a quarter of
    /// the memory a walk reads), held beside the vectors; the candidates a walk ends with are
    /// then re-scored with the vectors, so hits carry exact scores. Inserts link with the
    /// vectors, so the graph is the same either way.
    Int8,
}

const MAX_LEVEL: usize = 16;
/// Nodes whose vectors a read in order asks for at a time (`Graph::read_ahead`): 1.5 MiB of
/// 384-value vectors.
const READ_AHEAD: Slot = 1024;
const NO_ENTRY: u64 = u64::MAX;
const STRIPES: usize = 1024;
/// Node flags.
const READY: u8 = 1;
const DELETED: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GraphParams {
    pub dim: usize,
    /// Links per node on the upper layers; twice as many on the bottom one.
    pub m: usize,
    pub ef_construction: usize,
    pub metric: Metric,
    pub quantization: Quantization,
}

pub(crate) struct Graph {
    params: GraphParams,
    kernel: Kernel,
    level_mult: f64,
    vectors: Vectors,
    /// The vectors quantised, for the walk of a search (`Quantization::Int8`).
    codes: Option<Codes>,
    /// `[count, neighbour; 2m]` per node.
    links0: Segmented<AtomicU32>,
    /// For nodes above the bottom layer: a block `[L, then [count, neighbour; m] for each of
    /// levels 1..=L]`, leaked from a box when the node is written and freed when the graph is
    /// dropped (null for the others).
    upper: Segmented<AtomicPtr<AtomicU32>>,
    /// The caller's id of each node.
    ids: Segmented<AtomicU64>,
    flags: Segmented<AtomicU8>,
    /// Nodes reserved (some may still be being inserted).
    len: AtomicU32,
    deleted: AtomicUsize,
    /// `level << 32 | slot` of the entry node, or NO_ENTRY.
    entry: AtomicU64,
    entry_lock: Mutex<()>,
    stripes: Box<[Mutex<()>]>,
}

/// A node and its distance to the query, ordered by distance (then slot).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Near(pub f32, pub Slot);

impl Eq for Near {}
impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Near {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// Per-thread search state, reused from one search to the next.
#[derive(Default)]
struct Scratch {
    visited: Visited,
    candidates: BinaryHeap<Reverse<Near>>,
    found: BinaryHeap<Near>,
    batch: Vec<Slot>,
    query: Vec<f32>,
}

/// Visited marks by epoch: clearing is a counter increment, not a pass over the nodes.
#[derive(Default)]
struct Visited {
    marks: Vec<u16>,
    epoch: u16,
}

impl Visited {
    fn reset(&mut self, nodes: usize) {
        if self.marks.len() < nodes {
            self.marks.resize(nodes, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.fill(0);
            self.epoch = 1;
        }
    }

    #[inline]
    fn prefetch(&self, slot: Slot) {
        if let Some(m) = self.marks.get(slot as usize) {
            prefetch(m as *const u16 as *const f32);
        }
    }

    /// Mark `slot`; false if it was marked already.
    #[inline]
    fn insert(&mut self, slot: Slot) -> bool {
        let i = slot as usize;
        if i >= self.marks.len() {
            // a node inserted since the search began
            self.marks.resize(i + 1024, 0);
        }
        let fresh = self.marks[i] != self.epoch;
        self.marks[i] = self.epoch;
        fresh
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// Run `f` with this thread's scratch (a fresh one if it is in use further up the stack).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::default()),
    })
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[inline]
fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Prefetch the `bytes` from `p` on: every cache line they touch.
#[inline]
fn prefetch_lines(p: *const f32, bytes: usize) {
    const LINE: usize = 64;
    let start = p as usize;
    let mut line = start & !(LINE - 1);
    while line < start + bytes {
        // (wrapping: the address is only a hint and is never read through)
        prefetch(p.wrapping_byte_add(line.wrapping_sub(start)));
        line += LINE;
    }
}

impl Graph {
    #[cfg(test)]
    pub fn new(params: GraphParams) -> Graph {
        Graph::new_in(params, None)
    }

    /// A graph whose vectors are mapped from `file` (none: on the heap).
    pub fn new_in(params: GraphParams, file: Option<Arc<MappedFile>>) -> Graph {
        let m = params.m.max(2);
        let m0 = 2 * m;
        Graph {
            params: GraphParams { m, ..params },
            kernel: crate::distance::kernel(),
            level_mult: 1.0 / (m as f64).ln(),
            vectors: Vectors::new(params.dim, file),
            codes: (params.quantization == Quantization::Int8).then(|| Codes::new(params.dim)),
            links0: Segmented::zeroed(m0 + 1),
            upper: Segmented::zeroed(1),
            ids: Segmented::zeroed(1),
            flags: Segmented::zeroed(1),
            len: AtomicU32::new(0),
            deleted: AtomicUsize::new(0),
            entry: AtomicU64::new(NO_ENTRY),
            entry_lock: Mutex::new(()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    /// Ask for the mapped vectors' pages ahead of a read of every node in order, at node
    /// `slot` of `len` (a window of `READ_AHEAD` nodes at each window's start). The mapping is
    /// `MADV_RANDOM`, so that a search's fault reads its own page only; a dump or a scan of
    /// every node would otherwise wait on one fault per page. Nothing for vectors on the heap.
    #[inline]
    fn read_ahead(&self, slot: Slot, len: Slot) {
        if slot.is_multiple_of(READ_AHEAD) {
            self.vectors
                .will_need(slot, slot.saturating_add(2 * READ_AHEAD).min(len));
        }
    }

    /// Nodes reserved, including deleted ones and any still being inserted.
    pub fn len(&self) -> usize {
        self.len.load(Acquire) as usize
    }

    #[cfg(test)]
    pub fn deleted(&self) -> usize {
        self.deleted.load(Relaxed)
    }

    /// The caller's id of `slot`.
    #[inline]
    pub fn id(&self, slot: Slot) -> u64 {
        self.ids
            .get(slot)
            .first()
            .map_or(u64::MAX, |a| a.load(Relaxed))
    }

    /// The vector of a node (empty while it is still being written).
    pub fn vector(&self, slot: Slot) -> &[f32] {
        if self.flags(slot) & READY == 0 {
            return &[];
        }
        self.vectors.get(slot)
    }

    fn flags(&self, slot: Slot) -> u8 {
        self.flags.get(slot).first().map_or(0, |f| f.load(Acquire))
    }

    /// The node's vector is written (it may not be linked yet).
    #[cfg(test)]
    pub fn is_ready(&self, slot: Slot) -> bool {
        self.flags(slot) & READY != 0
    }

    pub fn is_deleted(&self, slot: Slot) -> bool {
        self.flags(slot) & DELETED != 0
    }

    /// Never return `slot` again (it stays in the graph as a waypoint).
    pub fn delete(&self, slot: Slot) {
        if let Some(f) = self.flags.get(slot).first() {
            if f.fetch_or(DELETED, AcqRel) & DELETED == 0 {
                self.deleted.fetch_add(1, Relaxed);
            }
        }
    }

    /// Store node `slot`'s vector, and its codes where the graph keeps them.
    ///
    /// # Safety
    /// As `Vectors::write`: `slot` reserved, written by this caller only, once, and read by no
    /// one until published with release ordering.
    unsafe fn write_vector(&self, slot: Slot, vector: &[f32]) {
        // SAFETY: the caller's.
        unsafe {
            self.vectors.write(slot, vector);
            if let Some(codes) = &self.codes {
                codes.write(slot, vector);
            }
        }
    }

    /// The distance a walk compares by: from the codes where the graph keeps them (cosine: 1 -
    /// the dot product; euclidean: the squared distance less the query's squared length, the
    /// same for every node of one search), else the exact `distance`.
    #[inline]
    fn walk_distance<const QUANT: bool>(&self, q: &[f32], slot: Slot) -> f32 {
        match &self.codes {
            Some(codes) if QUANT => {
                let c = codes.get(slot);
                let dot = c.scale * self.kernel.dot_i8(q, c.codes);
                match self.params.metric {
                    Metric::Cosine => 1.0 - dot,
                    Metric::Euclidean => c.sq_norm - 2.0 * dot,
                }
            }
            _ => self.distance(q, slot),
        }
    }

    /// Prefetch what `walk_distance` will read of `slot`: every line of its codes (a few; the
    /// walk goes to them next), or the first line of its vector (the hardware follows).
    #[inline]
    fn prefetch_node<const QUANT: bool>(&self, slot: Slot) {
        match &self.codes {
            Some(codes) if QUANT => {
                prefetch_lines(codes.as_ptr(slot) as *const f32, codes.node_bytes())
            }
            _ => prefetch(self.vectors.as_ptr(slot)),
        }
    }

    /// Distance from a padded query to a node.
    #[inline]
    fn distance(&self, q: &[f32], slot: Slot) -> f32 {
        let v = self.vectors.padded(slot);
        match self.params.metric {
            Metric::Cosine => 1.0 - self.kernel.dot(q, v),
            Metric::Euclidean => self.kernel.l2_squared(q, v),
        }
    }

    /// The level a node gets: drawn from an exponential distribution (HNSW's `1/ln m`), from a
    /// hash of its slot so that a graph built twice from the same points has the same layers.
    fn level_of(&self, slot: Slot) -> usize {
        let r = splitmix64(0x5E01_0A11 ^ (slot as u64));
        let u = ((r >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        ((-u.ln() * self.level_mult) as usize).min(MAX_LEVEL)
    }

    /// Bytes the graph holds. Walks the nodes once (for their upper-layer blocks).
    pub fn memory_bytes(&self) -> GraphMemory {
        let upper_blocks: usize = (0..self.len() as Slot)
            .map(|slot| {
                let links = self.upper_links(slot).len();
                if links == 0 {
                    0
                } else {
                    (links + 1) * std::mem::size_of::<AtomicU32>()
                }
            })
            .sum();
        let rest = self.links0.allocated_bytes()
            + self.upper.allocated_bytes()
            + upper_blocks
            + self.ids.allocated_bytes()
            + self.flags.allocated_bytes();
        let codes = self.codes.as_ref().map_or(0, Codes::allocated_bytes);
        let (vectors, mapped) = self.vectors.bytes();
        GraphMemory {
            vectors: vectors + codes,
            mapped,
            rest,
        }
    }

    fn level(&self, slot: Slot) -> usize {
        self.upper_links(slot).len() / (self.params.m + 1)
    }

    /// The node's upper-layer link lists, level 1 first (empty for a bottom-layer node).
    #[inline]
    fn upper_links(&self, slot: Slot) -> &[AtomicU32] {
        let Some(ptr) = self.upper.get(slot).first().map(|p| p.load(Acquire)) else {
            return &[];
        };
        if ptr.is_null() {
            return &[];
        }
        // SAFETY: a non-null pointer comes from `set_upper`: a leaked boxed slice of
        // 1 + L·(m + 1) atomics whose first holds L, published with release ordering (observed
        // here with acquire) and freed only when the graph is dropped, after every borrow of it.
        unsafe {
            let levels = (*ptr).load(Relaxed) as usize;
            std::slice::from_raw_parts(ptr.add(1), levels * (self.params.m + 1))
        }
    }

    /// Give a new node (not yet published) link lists for levels 1..=`levels`.
    fn set_upper(&self, slot: Slot, levels: usize) {
        let Some(p) = self.upper.get(slot).first() else {
            return;
        };
        let block: Box<[AtomicU32]> = (0..1 + levels * (self.params.m + 1))
            .map(|_| AtomicU32::new(0))
            .collect();
        block[0].store(levels as u32, Relaxed);
        let ptr = Box::into_raw(block) as *mut AtomicU32;
        if let Err(ptr) = p.compare_exchange(std::ptr::null_mut(), ptr, Release, Relaxed) {
            // never happens (a node is written once); do not leak if it did
            // SAFETY: `ptr` was just made from this box, and nothing else has seen it.
            drop(unsafe {
                Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    ptr,
                    1 + levels * (self.params.m + 1),
                ))
            });
        }
    }

    /// `[count, neighbour...]` of `slot` on `level` (empty if it has no such level).
    #[inline]
    fn links(&self, slot: Slot, level: usize) -> &[AtomicU32] {
        if level == 0 {
            return self.links0.get(slot);
        }
        let stride = self.params.m + 1;
        self.upper_links(slot)
            .get((level - 1) * stride..level * stride)
            .unwrap_or(&[])
    }

    /// Make room for the next `n` nodes where it can fail: the segments of vectors mapped from
    /// a file (everything else is allocated as nodes are reserved). Inserts of `n` nodes (by one
    /// writer) that follow find their room made.
    pub fn make_room(&self, n: usize) -> std::io::Result<()> {
        let first = self.len.load(Acquire);
        let last = first.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        for s in first..last {
            self.vectors.try_reserve(s)?;
        }
        Ok(())
    }

    /// Reserve `n` new nodes; returns the first one's slot.
    fn reserve(&self, n: usize) -> Slot {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let first = self.len.fetch_add(n, AcqRel);
        let last = first.saturating_add(n);
        // one reservation per segment boundary crossed is enough, but each is a cheap check
        for s in first..last {
            self.vectors.reserve(s);
            self.links0.reserve(s);
            self.upper.reserve(s);
            self.ids.reserve(s);
            self.flags.reserve(s);
            if let Some(codes) = &self.codes {
                codes.reserve(s);
            }
        }
        first
    }

    /// Insert one point; returns its slot.
    pub fn insert(&self, id: u64, vector: &[f32]) -> Slot {
        let slot = self.reserve(1);
        self.link(slot, id, vector);
        slot
    }

    /// Insert points on `threads` threads; point `i` gets slot `first + i` (returned: `first`).
    pub fn insert_many(&self, points: &[(u64, &[f32])], threads: usize) -> Slot {
        let first = self.reserve(points.len());
        let next = AtomicUsize::new(0);
        let work = || loop {
            let i = next.fetch_add(1, Relaxed);
            let Some((id, v)) = points.get(i) else { break };
            self.link(first + i as Slot, *id, v);
        };
        let threads = threads.clamp(1, 64).min(points.len().div_ceil(256).max(1));
        if threads == 1 {
            work();
        } else {
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(work);
                }
            });
        }
        first
    }

    /// Write node `slot` (reserved by this caller) and link it into the graph.
    fn link(&self, slot: Slot, id: u64, vector: &[f32]) {
        // SAFETY: `slot` was reserved for this call alone and no other node links to it yet.
        unsafe { self.write_vector(slot, vector) };
        if let Some(a) = self.ids.get(slot).first() {
            a.store(id, Relaxed);
        }
        let level = self.level_of(slot);
        if level > 0 {
            self.set_upper(slot, level);
        }
        if let Some(f) = self.flags.get(slot).first() {
            f.fetch_or(READY, Release);
        }

        // A node that will be the new top of the graph holds the entry lock for its whole
        // insert (as hnswlib does), so that two such nodes never both link only below the top
        // they saw and leave their own upper levels unreachable.
        let mut top_guard = None;
        let entry = loop {
            let e = self.entry.load(Acquire);
            if e == NO_ENTRY {
                let _g = self.entry_lock.lock();
                if self.entry.load(Acquire) == NO_ENTRY {
                    self.entry.store(pack(slot, level), Release);
                    return;
                }
                continue;
            }
            if level <= unpack(e).1 {
                break e;
            }
            let g = self.entry_lock.lock();
            let e = self.entry.load(Acquire);
            if level > unpack(e).1 {
                top_guard = Some(g);
                break e;
            }
        };
        let (ep, ep_level) = unpack(entry);
        let q = self.vectors.padded(slot);
        // Two phases: first the node's own links on every level, top down (no other node links
        // to it yet, so no search can reach it half linked), then the links to it, bottom up.
        let mut chosen_per_level: Vec<Vec<Slot>> = vec![Vec::new(); level.min(ep_level) + 1];
        with_scratch(|s| {
            let mut cur = Near(self.distance(q, ep), ep);
            for l in (level + 1..=ep_level).rev() {
                cur = self.greedy(q, cur, l);
            }
            let mut entries = vec![cur];
            let mut found = Vec::new();
            for l in (0..=level.min(ep_level)).rev() {
                self.search_layer(
                    s,
                    q,
                    &entries,
                    self.params.ef_construction,
                    l,
                    |n| n != slot,
                    &mut found,
                );
                let chosen = self.select(&found, self.params.m);
                self.set_links(slot, q, l, &chosen);
                chosen_per_level[l] = chosen;
                std::mem::swap(&mut entries, &mut found);
            }
        });
        for (l, chosen) in chosen_per_level.iter().enumerate() {
            for &n in chosen {
                self.add_link(n, slot, l);
            }
        }
        if top_guard.is_some() {
            self.entry.store(pack(slot, level), Release);
        }
    }

    /// Give the new node `slot` (vector `v`) its links on `level`. Should another insert have
    /// linked the node to itself already, those links are kept, not overwritten (that other node
    /// could be left with no link pointing to it); with links to a node added only after all of
    /// its own are set, this does not happen, but costs nothing to guard.
    fn set_links(&self, slot: Slot, v: &[f32], level: usize, chosen: &[Slot]) {
        let _g = self.stripes[slot as usize % STRIPES].lock();
        let links = self.links(slot, level);
        let Some(count) = links.first().map(|c| c.load(Relaxed) as usize) else {
            return;
        };
        if count == 0 {
            store_links(links, chosen);
            return;
        }
        let mut all: Vec<Slot> = chosen.to_vec();
        for l in links.iter().skip(1).take(count) {
            let n = l.load(Relaxed);
            if !all.contains(&n) {
                all.push(n);
            }
        }
        if all.len() >= links.len() {
            let mut near: Vec<Near> = all.iter().map(|&n| Near(self.distance(v, n), n)).collect();
            near.sort_unstable();
            all = self.select(&near, links.len() - 1);
        }
        store_links(links, &all);
    }

    /// Link `from` to `to` on `level`; a full list keeps the best by the selection heuristic.
    fn add_link(&self, from: Slot, to: Slot, level: usize) {
        if from == to {
            return;
        }
        let _g = self.stripes[from as usize % STRIPES].lock();
        let links = self.links(from, level);
        if links.is_empty() {
            return;
        }
        let cap = links.len() - 1;
        let count = (links[0].load(Relaxed) as usize).min(cap);
        if links[1..=count].iter().any(|l| l.load(Relaxed) == to) {
            return;
        }
        if count < cap {
            links[1 + count].store(to, Release);
            links[0].store(count as u32 + 1, Release);
            return;
        }
        let v = self.vectors.padded(from);
        let mut candidates: Vec<Near> = links[1..=count]
            .iter()
            .map(|l| l.load(Relaxed))
            .chain(std::iter::once(to))
            .map(|n| Near(self.distance(v, n), n))
            .collect();
        candidates.sort_unstable();
        let chosen = self.select(&candidates, cap);
        store_links(links, &chosen);
    }

    /// HNSW's neighbour selection heuristic: closest first, skipping a candidate that is closer
    /// to an already chosen neighbour than to the node (keeps links pointing in varied
    /// directions). `candidates` are sorted by distance.
    fn select(&self, candidates: &[Near], max: usize) -> Vec<Slot> {
        if candidates.len() <= max {
            return candidates.iter().map(|n| n.1).collect();
        }
        let mut chosen: Vec<Slot> = Vec::with_capacity(max);
        for &Near(d, c) in candidates {
            if chosen.len() >= max {
                break;
            }
            let vc = self.vectors.padded(c);
            if chosen.iter().all(|&s| self.distance(vc, s) >= d) {
                chosen.push(c);
            }
        }
        chosen
    }

    /// Walk `level` greedily towards `q` from `cur`.
    fn greedy(&self, q: &[f32], mut cur: Near, level: usize) -> Near {
        loop {
            let links = self.links(cur.1, level);
            let count = links
                .first()
                .map_or(0, |c| (c.load(Acquire) as usize).min(links.len() - 1));
            let mut moved = false;
            for l in links.iter().skip(1).take(count) {
                let n = l.load(Acquire);
                let d = self.distance(q, n);
                if d < cur.0 {
                    cur = Near(d, n);
                    moved = true;
                }
            }
            if !moved {
                return cur;
            }
        }
    }

    /// Beam search of width `ef` on `level` from `entries`; the accepted nodes found, best first,
    /// go to `out`. Rejected nodes are walked through but never returned.
    #[allow(clippy::too_many_arguments)]
    fn search_layer(
        &self,
        s: &mut Scratch,
        q: &[f32],
        entries: &[Near],
        ef: usize,
        level: usize,
        accept: impl Fn(Slot) -> bool,
        out: &mut Vec<Near>,
    ) {
        self.beam_search::<false, false>(s, q, entries, ef, level, |_| true, accept, out)
    }

    /// Beam search of width `ef` on `level` from `entries` through the nodes `walk` allows; the
    /// accepted ones (a subset) found, best first, go to `out`.
    ///
    /// `TWO_HOP`: a neighbour `walk` refuses is not a dead end but a bridge: its own neighbours
    /// that `walk` allows are taken in its place (ACORN's expansion; `gather_two_hop`). A filter
    /// that leaves a tenth of the points leaves about three of a node's 32 bottom-layer
    /// neighbours; through two hops there are a hundred, so the walk stays connected without
    /// computing a distance to any node the filter refuses. Without it every neighbour is walked.
    ///
    /// `QUANT`: distances are `walk_distance`s (from the codes, where the graph keeps them), the
    /// entries' included; the caller re-scores what it keeps (`rescore`).
    #[allow(clippy::too_many_arguments)]
    fn beam_search<const TWO_HOP: bool, const QUANT: bool>(
        &self,
        s: &mut Scratch,
        q: &[f32],
        entries: &[Near],
        ef: usize,
        level: usize,
        walk: impl Fn(Slot) -> bool,
        accept: impl Fn(Slot) -> bool,
        out: &mut Vec<Near>,
    ) {
        let ef = ef.max(1);
        s.visited.reset(self.len());
        s.candidates.clear();
        s.found.clear();
        for &e in entries {
            if s.visited.insert(e.1) {
                s.candidates.push(Reverse(e));
                if accept(e.1) {
                    s.found.push(e);
                }
            }
        }
        while s.found.len() > ef {
            s.found.pop();
        }
        let mut bound = if s.found.len() >= ef {
            s.found.peek().map_or(f32::INFINITY, |n| n.0)
        } else {
            f32::INFINITY
        };
        while let Some(Reverse(c)) = s.candidates.pop() {
            if c.0 > bound {
                break;
            }
            let links = self.links(c.1, level);
            let count = links
                .first()
                .map_or(0, |n| (n.load(Acquire) as usize).min(links.len() - 1));
            // Three passes over the neighbours, so that the memory each needs is fetched for
            // all of them at once: their visited marks, then their vectors, then the distances.
            s.batch.clear();
            if TWO_HOP {
                self.gather_two_hop::<QUANT>(s, links, count, level, &walk);
            } else {
                for l in links.iter().skip(1).take(count) {
                    let n = l.load(Acquire);
                    s.visited.prefetch(n);
                    s.batch.push(n);
                }
                let visited = &mut s.visited;
                s.batch.retain(|&n| {
                    let fresh = visited.insert(n);
                    if fresh {
                        self.prefetch_node::<QUANT>(n);
                    }
                    fresh
                });
            }
            for &n in &s.batch {
                let d = self.walk_distance::<QUANT>(q, n);
                if s.found.len() < ef || d < bound {
                    s.candidates.push(Reverse(Near(d, n)));
                    if accept(n) {
                        s.found.push(Near(d, n));
                        if s.found.len() > ef {
                            s.found.pop();
                        }
                        if s.found.len() >= ef {
                            bound = s.found.peek().map_or(f32::INFINITY, |n| n.0);
                        }
                    }
                }
            }
        }
        out.clear();
        out.extend(s.found.drain());
        out.sort_unstable();
    }

    /// The `k` nearest nodes to `query` that are not deleted and that `accept` takes, best first,
    /// searching with a beam of `ef` (at least `k`).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: impl Fn(Slot) -> bool,
    ) -> Vec<Near> {
        self.descend_then(query, k, |s, q, entry, out| {
            let ef = ef.max(k);
            if self.codes.is_some() {
                self.bottom_walk::<true>(s, q, entry, ef, &accept, out);
                self.rescore(q, out);
            } else {
                self.bottom_walk::<false>(s, q, entry, ef, &accept, out);
            }
        })
    }

    /// A search's walk of the bottom layer from `entry` (see `beam_search` for `QUANT`).
    fn bottom_walk<const QUANT: bool>(
        &self,
        s: &mut Scratch,
        q: &[f32],
        entry: Near,
        ef: usize,
        accept: &impl Fn(Slot) -> bool,
        out: &mut Vec<Near>,
    ) {
        let entry = self.walk_entry::<QUANT>(q, entry);
        // Every node a search can reach is ready (nodes are linked after they are written);
        // the deleted flags are read only when there are any.
        if self.deleted.load(Relaxed) > 0 {
            let live = |n| self.flags(n) & DELETED == 0 && accept(n);
            self.beam_search::<false, QUANT>(s, q, &entry, ef, 0, |_| true, live, out);
        } else {
            self.beam_search::<false, QUANT>(s, q, &entry, ef, 0, |_| true, accept, out);
        }
    }

    /// A walk's first node, its distance measured as the walk measures (`walk_distance`).
    fn walk_entry<const QUANT: bool>(&self, q: &[f32], entry: Near) -> [Near; 1] {
        if QUANT {
            [Near(self.walk_distance::<true>(q, entry.1), entry.1)]
        } else {
            [entry]
        }
    }

    /// Exact distances for `found` (a walk's, from the codes), best first.
    fn rescore(&self, q: &[f32], found: &mut [Near]) {
        for n in found.iter_mut() {
            n.0 = self.distance(q, n.1);
        }
        found.sort_unstable();
    }

    /// `query` into `q`, padded with zeros to the stored vectors' length, and to the codes'
    /// (whose blocks may be longer than the vectors' lanes).
    fn pad_query(&self, query: &[f32], q: &mut Vec<f32>) {
        q.clear();
        q.extend_from_slice(&query[..query.len().min(self.params.dim)]);
        let codes_dim = self.codes.as_ref().map_or(0, Codes::padded_dim);
        q.resize(self.vectors.padded_dim().max(codes_dim), 0.0);
    }

    /// A search's frame: `query` padded to the stored vectors' length, the greedy descent
    /// through the upper layers to the bottom layer's entry, then `bottom` with the thread's
    /// scratch, the padded query and that entry fills the hits; the best `k` are returned
    /// (none from an empty graph).
    fn descend_then(
        &self,
        query: &[f32],
        k: usize,
        bottom: impl FnOnce(&mut Scratch, &[f32], Near, &mut Vec<Near>),
    ) -> Vec<Near> {
        let entry = self.entry.load(Acquire);
        if entry == NO_ENTRY || k == 0 {
            return Vec::new();
        }
        let (ep, ep_level) = unpack(entry);
        with_scratch(|s| {
            let mut q = std::mem::take(&mut s.query);
            self.pad_query(query, &mut q);
            let mut cur = Near(self.distance(&q, ep), ep);
            for l in (1..=ep_level).rev() {
                cur = self.greedy(&q, cur, l);
            }
            let mut out = Vec::new();
            bottom(s, &q, cur, &mut out);
            s.query = q;
            out.truncate(k);
            out
        })
    }

    /// The unvisited neighbours `walk` allows of a node whose links are `links` (`count` of them)
    /// into `s.batch`, marked visited: its allowed neighbours, then those of its refused ones
    /// (each crossed once), up to as many as a node has links, so that a step costs about the
    /// distances an unfiltered one does.
    fn gather_two_hop<const QUANT: bool>(
        &self,
        s: &mut Scratch,
        links: &[AtomicU32],
        count: usize,
        level: usize,
        walk: &impl Fn(Slot) -> bool,
    ) {
        let cap = links.len() - 1;
        for l in links.iter().skip(1).take(count) {
            let n = l.load(Acquire);
            if !walk(n) {
                // a bridge, probably: its links are read next, all of them (with m 16 a
                // bottom-layer block of 33 words spans up to three cache lines; fetching only
                // the first left the second pass waiting on the others: 11-27% more filtered
                // searches per second at ef 64 on 100k MiniLM vectors)
                let block = self.links(n, level);
                prefetch_lines(block.as_ptr() as *const f32, std::mem::size_of_val(block));
            } else if s.visited.insert(n) {
                self.prefetch_node::<QUANT>(n);
                s.batch.push(n);
            }
        }
        for l in links.iter().skip(1).take(count) {
            if s.batch.len() >= cap {
                return;
            }
            let n = l.load(Acquire);
            if walk(n) || !s.visited.insert(n) {
                continue;
            }
            let next = self.links(n, level);
            let count = next
                .first()
                .map_or(0, |c| (c.load(Acquire) as usize).min(next.len() - 1));
            for l in next.iter().skip(1).take(count) {
                let m = l.load(Acquire);
                if walk(m) && s.visited.insert(m) {
                    self.prefetch_node::<QUANT>(m);
                    s.batch.push(m);
                    if s.batch.len() >= cap {
                        return;
                    }
                }
            }
        }
    }

    /// The `k` nearest nodes to `query` among those `allowed` takes (and not deleted), best
    /// first, with a beam of `ef` (at least `k`) that walks only allowed nodes, bridging the
    /// others by two hops (see `beam_search`). For filters that leave a fair share of the nodes
    /// (a few percent and up): below that, scanning the allowed nodes costs less. When the walk
    /// finds fewer than `k`, the search walks again through every node (fewer matches than `k`
    /// are returned only when there are no more).
    pub fn search_filtered(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        allowed: impl Fn(Slot) -> bool,
    ) -> Vec<Near> {
        self.descend_then(query, k, |s, q, entry, out| {
            let check_deleted = self.deleted.load(Relaxed) > 0;
            let accept = |n| allowed(n) && (!check_deleted || self.flags(n) & DELETED == 0);
            let ef = ef.max(k);
            if self.codes.is_some() {
                self.filtered_walk::<true>(s, q, entry, k, ef, &allowed, &accept, out);
                self.rescore(q, out);
            } else {
                self.filtered_walk::<false>(s, q, entry, k, ef, &allowed, &accept, out);
            }
        })
    }

    /// A filtered search's walk of the bottom layer from `entry`, as `search_filtered` asks for
    /// it (see `beam_search` for `QUANT`).
    #[allow(clippy::too_many_arguments)]
    fn filtered_walk<const QUANT: bool>(
        &self,
        s: &mut Scratch,
        q: &[f32],
        entry: Near,
        k: usize,
        ef: usize,
        allowed: &impl Fn(Slot) -> bool,
        accept: &impl Fn(Slot) -> bool,
        out: &mut Vec<Near>,
    ) {
        let entry = self.walk_entry::<QUANT>(q, entry);
        self.beam_search::<true, QUANT>(s, q, &entry, ef, 0, allowed, accept, out);
        if out.len() < k {
            // The matches two hops around the query were too few, or none (a filter whose
            // matches lie together elsewhere): walk through every node instead, as far as it
            // takes to find them.
            self.beam_search::<false, QUANT>(s, q, &entry, ef, 0, |_| true, accept, out);
        }
    }

    /// The `k` nearest of `slots` to `query`, best first, by distances as `by` says; deleted
    /// nodes and any still being written are skipped.
    ///
    /// The nodes a filter matches lie scattered, so the hardware cannot guess the next node:
    /// the one 2 to 16 places ahead (about 2 KiB ahead) is prefetched, every cache line of it
    /// up to its first KiB (the hardware follows a longer one by itself once it is read). On
    /// GloVe's 50 dimensions, with 10,000 matches out of cache, prefetching only the first line
    /// of the fourth vector ahead left the scan waiting on memory.
    pub fn scan(&self, query: &[f32], k: usize, slots: &[Slot], by: ScanBy) -> Vec<Near> {
        let codes = match by {
            ScanBy::Codes { .. } => self.codes.as_ref(),
            ScanBy::Vectors => None,
        };
        let node_bytes = codes.map_or(self.vectors.padded_dim() * size_of::<f32>(), |c| {
            c.node_bytes()
        });
        let ahead = (2048 / node_bytes.max(1)).clamp(2, 16);
        let prefetched = node_bytes.min(1024);
        let check_deleted = self.deleted.load(Relaxed) > 0;
        self.top_k(query, k, by, |consider| {
            for (i, &slot) in slots.iter().enumerate() {
                if let Some(&next) = slots.get(i + ahead) {
                    match codes {
                        Some(c) => prefetch_lines(c.as_ptr(next) as *const f32, prefetched),
                        None => prefetch_lines(self.vectors.as_ptr(next), prefetched),
                    }
                }
                // (ready: a node is read only once its vector is written)
                let flags = self.flags(slot);
                if flags & READY != 0 && (!check_deleted || flags & DELETED == 0) {
                    consider(slot);
                }
            }
        })
    }

    /// The `k` nearest nodes to `query`, best first, by distances as `by` says (every node in
    /// storage order, skipping deleted ones and any still being written).
    pub fn scan_all(&self, query: &[f32], k: usize, by: ScanBy) -> Vec<Near> {
        // (every vector read in order, where the codes are not read instead)
        let vectors = by == ScanBy::Vectors || self.codes.is_none();
        self.top_k(query, k, by, |consider| {
            let len = self.len() as Slot;
            for slot in 0..len {
                if vectors {
                    self.read_ahead(slot, len);
                }
                if self.flags(slot) & (DELETED | READY) == READY {
                    consider(slot);
                }
            }
        })
    }

    /// The `k` nearest to `query` of the nodes `walk` hands to its callback, by distances as
    /// `by` says.
    fn top_k(
        &self,
        query: &[f32],
        k: usize,
        by: ScanBy,
        walk: impl FnOnce(&mut dyn FnMut(Slot)),
    ) -> Vec<Near> {
        if k == 0 {
            return Vec::new();
        }
        let mut q = Vec::new();
        self.pad_query(query, &mut q);
        match (by, &self.codes) {
            (ScanBy::Codes { pool }, Some(_)) => {
                let mut found = self.nearest::<true>(&q, pool.max(k), walk);
                self.rescore(&q, &mut found);
                found.truncate(k);
                found
            }
            _ => self.nearest::<false>(&q, k, walk),
        }
    }

    /// The `k` nearest to a padded query of the nodes `walk` hands to its callback, by
    /// `walk_distance`s.
    fn nearest<const QUANT: bool>(
        &self,
        q: &[f32],
        k: usize,
        walk: impl FnOnce(&mut dyn FnMut(Slot)),
    ) -> Vec<Near> {
        // (k may be any caller's ef: the heap grows only as far as there are nodes)
        let mut top: BinaryHeap<Near> = BinaryHeap::with_capacity(k.min(self.len()) + 1);
        let mut worst = f32::INFINITY;
        walk(&mut |slot| {
            let d = self.walk_distance::<QUANT>(q, slot);
            if top.len() < k {
                top.push(Near(d, slot));
            } else if d.total_cmp(&worst).is_le() && top.peek().is_some_and(|w| Near(d, slot) < *w)
            {
                top.pop();
                top.push(Near(d, slot));
            } else {
                return;
            }
            if top.len() == k {
                worst = top.peek().map_or(f32::INFINITY, |w| w.0);
            }
        });
        top.into_sorted_vec()
    }
}

/// How a scan measures its distances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanBy {
    /// Exactly, from the vectors.
    Vectors,
    /// Where the graph keeps int8 codes: the best `pool` (at least k) by the codes, re-scored
    /// from the vectors, as a quantized walk re-scores its beam. A quarter of the bytes are
    /// read per node, and with vectors on disk only the pool's pages. Without codes: exactly.
    /// (A pool of k, a search's `ef` no larger than k, is the codes' own top k re-ordered: as
    /// with the walk, `ef` is the number of candidates re-scored.)
    Codes { pool: usize },
}

impl Drop for Graph {
    fn drop(&mut self) {
        for slot in 0..*self.len.get_mut() {
            let Some(p) = self.upper.get(slot).first() else {
                continue;
            };
            let ptr = p.swap(std::ptr::null_mut(), Relaxed);
            if !ptr.is_null() {
                // SAFETY: made by `set_upper` from a boxed slice of 1 + L·(m + 1) atomics whose
                // first holds L; swapped out, so freed once; no borrow outlives the graph.
                unsafe {
                    let len = 1 + (*ptr).load(Relaxed) as usize * (self.params.m + 1);
                    drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)));
                }
            }
        }
    }
}

fn pack(slot: Slot, level: usize) -> u64 {
    (level as u64) << 32 | slot as u64
}

fn unpack(e: u64) -> (Slot, usize) {
    (e as u32, (e >> 32) as usize)
}

/// Replace a link list (the caller holds its node's lock).
fn store_links(links: &[AtomicU32], chosen: &[Slot]) {
    if links.is_empty() {
        return;
    }
    let n = chosen.len().min(links.len() - 1);
    for (l, &c) in links[1..].iter().zip(&chosen[..n]) {
        l.store(c, Release);
    }
    links[0].store(n as u32, Release);
}

#[cfg(test)]
mod tests;
