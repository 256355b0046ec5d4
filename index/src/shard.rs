//! One HNSW shard: our point table (payloads, and where each point's vector sits in the graph),
//! the graph (`crate::graph`), tombstones, compaction, exact and filtered search, dump and reload.
//!
//! Each vector is held once, by the graph; the table records each point's node in it and exact
//! scans and compaction read the vectors from there.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::graph::{
    DumpError, Graph, GraphParams, MappedFile, Metric, Near, Quantization, ScanBy, Slot,
};
use crate::keyword::KeywordIndex;
use crate::live::{Entry, IdMap, Live};
use crate::payload_index::{Narrowed, PayloadIndex};
use crate::{Filter, IndexError, Metadata, PointId};

/// Tuning of one shard. Defaults follow common HNSW practice (Qdrant uses m=16, ef_construct=100).
#[derive(Debug, Clone, PartialEq)]
pub struct ShardParams {
    pub dimension: usize,
    /// How vectors are compared (cosine expects L2-normalised vectors).
    pub metric: Metric,
    /// Links per node.
    pub m: usize,
    pub ef_construction: usize,
    /// Candidate list width while searching (raised to k when k is larger).
    pub ef_search: usize,
    /// Shards with at most this many live points are always scanned (exactly; with int8 codes,
    /// by the codes, the best `ef` re-scored: `ScanBy::Codes`).
    pub exact_below: usize,
    /// A filter matching at most this fraction of the live points is answered by a scan over
    /// the matches (as `exact_below`'s) (graph search loses recall under selective filters).
    pub exact_filter_fraction: f64,
    /// What one step of a filtered graph walk costs beside its distances, as the floats a scan
    /// reads in that time (its link reads: ~870 measured on 384- and 50-dimensional vectors).
    /// With it the plan scans low-dimensional matches longer than high-dimensional ones.
    pub walk_step_floats: usize,
    /// What a search's graph walk reads (`Quantization::Int8`: int8 copies of the vectors,
    /// the final candidates re-scored with the vectors).
    pub quantization: Quantization,
    /// Where the vectors are kept: none, on the heap; a folder, in a file there without a name,
    /// mapped (the page cache holds the pages searches read, and lets them go under memory
    /// pressure). The codes, links and payloads stay on the heap.
    pub vectors_dir: Option<PathBuf>,
    /// Compact once tombstones exceed this fraction of the graph ...
    pub compaction_ratio: f64,
    /// ... and number at least this many.
    pub compaction_min_tombstones: usize,
}

impl ShardParams {
    pub fn new(dimension: usize) -> ShardParams {
        ShardParams {
            dimension,
            metric: Metric::Cosine,
            m: 16,
            ef_construction: 100,
            ef_search: 64,
            exact_below: 1_000,
            exact_filter_fraction: 0.01,
            walk_step_floats: 870,
            quantization: Quantization::None,
            vectors_dir: None,
            compaction_ratio: 0.2,
            compaction_min_tombstones: 100,
        }
    }
}

/// How a filtered search is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilteredPlan {
    /// A scan over the points the filter matches (exact; by the codes, the best `ef` re-scored,
    /// where the graph keeps int8 codes).
    Scan,
    /// Graph search with the filter, until it has this many matches (the nodes it rejects are
    /// walked through, so it widens by itself as the filter narrows).
    Graph { beam: usize },
}

impl ShardParams {
    /// Scan or graph for a filter matching `matches` of `live` points, at beam width `ef`.
    ///
    /// A graph search with a filter walks only the nodes it matches, bridging the others by two
    /// hops (`Graph::search_filtered`), so it costs about what an unfiltered search does while
    /// the matches are dense enough to stay connected through two hops. Filters that leave fewer
    /// (`exact_filter_fraction`, `exact_below`), and those whose matches are few enough to
    /// scan for less than the walk costs, are scanned (exactly; with int8 codes, by the codes,
    /// the best `ef` re-scored: `ScanBy::Codes`).
    pub fn filtered_plan(&self, matches: usize, live: usize, ef: usize) -> FilteredPlan {
        let selective = matches as f64 <= self.exact_filter_fraction * live as f64
            || matches <= self.exact_below;
        // The filtered walk computes about as many distances as an unfiltered one, at
        // scattered places in memory, and reads links besides; a scan reads its vectors in
        // order. Measured (the ANN benchmark's 10% filters): a scan ~0.33 ns per float, the walk
        // ~5.2 ns per ef × (dimension + `walk_step_floats`), i.e. about m times as much with m 16.
        // With int8 codes both compute their distances from the codes (and re-score `ef`
        // candidates alike, so that part cancels): a dimension costs a scan about 0.6 of a
        // float's, the walk about a quarter, its link reads the same (MiniLM 100k, 10% filters
        // scanned and walked: docs/benchmarks.md, "Scans by the codes").
        let (scan_dim, walk_dim) = match self.quantization {
            Quantization::None => (1.0, 1.0),
            Quantization::Int8 => (0.6, 0.25),
        };
        let dimension = self.dimension as f64;
        let scan = matches as f64 * dimension * scan_dim;
        let walk = (ef * self.m) as f64 * (dimension * walk_dim + self.walk_step_floats as f64);
        if selective || scan <= walk {
            FilteredPlan::Scan
        } else {
            FilteredPlan::Graph { beam: ef }
        }
    }
}

/// What a point carries besides its vector: used by filters and returned with hits.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    pub doc_id: String,
    pub metadata: Metadata,
}

#[derive(Debug, Clone)]
pub struct Point {
    pub id: PointId,
    /// Must be L2-normalised.
    pub vector: Vec<f32>,
    pub payload: Arc<Payload>,
    /// The chunk's text, for keyword search (empty: none; only the vector is searched).
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SearchMode {
    /// A scan for small shards and selective filters (exact; by the codes, the best `ef`
    /// re-scored, where the graph keeps int8 codes), graph search otherwise.
    #[default]
    Auto,
    /// Always scan every (matching) point.
    Exact,
}

#[derive(Debug, Clone)]
pub struct SearchRequest<'a> {
    /// L2-normalised query vector.
    pub vector: &'a [f32],
    pub k: usize,
    pub filter: Option<&'a Filter>,
    pub mode: SearchMode,
    /// Overrides [`ShardParams::ef_search`].
    pub ef: Option<usize>,
    /// [`SearchMode::Exact`] refuses to scan more points than this ([`IndexError::ScanTooLarge`]).
    pub max_scan: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Hit {
    pub id: PointId,
    /// Cosine similarity (for the euclidean metric: the squared distance, negated, so that a
    /// higher score is always better).
    pub score: f32,
    pub payload: Arc<Payload>,
}

/// What a shard holds in memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ShardMemory {
    /// The graph's vectors on the heap (allocated a segment at a time, padded to whole lanes),
    /// and their int8 codes where it keeps them.
    pub vectors: u64,
    /// The graph's vectors mapped from a file (`ShardParams::vectors_dir`): the page cache holds
    /// those searches read.
    pub vectors_mapped: u64,
    /// The graph's links on every layer, its nodes' ids and flags, and the nodes by point id
    /// (the flat array filtered searches look them up in).
    pub graph: u64,
    /// The keyword index's segments (the changes not committed yet are committed first).
    pub keyword: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ShardStats {
    pub live_points: usize,
    pub tombstones: usize,
    pub graph_points: usize,
}

struct Table {
    live: Live,
    /// Points still in the graph but deleted.
    tombstones: usize,
    /// Metadata values of the live points, for the fields filters have used.
    index: PayloadIndex,
    /// Counts changes to the live points or their slots: a filter's matches computed at one
    /// generation hold while it lasts.
    generation: u64,
    /// Counts graph swaps (compactions): slots belong to one graph.
    graph_epoch: u64,
}

/// The live points a filter matches, as of a table generation: their ids (the keyword index
/// filters by them) and their nodes of the current graph (a bit per slot: the vector side).
struct Matched {
    generation: u64,
    graph_epoch: u64,
    /// Nodes in `bits`.
    count: usize,
    bits: Vec<u64>,
    /// Sorted.
    ids: Arc<Vec<PointId>>,
}

impl Matched {
    /// `ids` (sorted live points of `table`) and their slots (those not in the graph yet have
    /// none).
    fn new(ids: Vec<PointId>, table: &Table) -> Matched {
        let mut bits: Vec<u64> = Vec::new();
        let mut count = 0;
        for id in &ids {
            if let Some(slot) = table.live.slot(*id) {
                let word = slot as usize / 64;
                if bits.len() <= word {
                    bits.resize(word + 1, 0);
                }
                bits[word] |= 1 << (slot % 64);
                count += 1;
            }
        }
        Matched {
            generation: table.generation,
            graph_epoch: table.graph_epoch,
            count,
            bits,
            ids: Arc::new(ids),
        }
    }

    fn contains(&self, slot: Slot) -> bool {
        self.bits
            .get(slot as usize / 64)
            .is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }

    fn slots(&self) -> Vec<Slot> {
        let mut out = Vec::with_capacity(self.count);
        for (i, &w) in self.bits.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                out.push((i * 64) as Slot + w.trailing_zeros());
                w &= w - 1;
            }
        }
        out
    }
}

/// Filters whose matches are kept, most recently used last: searches that repeat a filter (a
/// tenant's, a category's) skip finding its matches again while the shard is unchanged.
const CACHED_FILTERS: usize = 8;

/// The shard's keyword index.
#[derive(Clone)]
enum Keyword {
    /// No point has had text yet.
    None,
    Ready(Arc<KeywordIndex>),
    /// It failed (tantivy could not start a thread, say): keyword searches say so, while the
    /// vectors go on being searched and changed.
    Broken(String),
}

/// An HNSW shard. Searches run concurrently from any thread and never wait for inserts (the
/// graph's searches take no lock); mutations are serialised by an internal writer lock.
pub struct Shard {
    params: ShardParams,
    graph: RwLock<Graph>,
    table: RwLock<Table>,
    writer: Mutex<()>,
    /// BM25 over the points' text; made with the first point that has text.
    keyword: RwLock<Keyword>,
    /// The matches of the filters used last (`CACHED_FILTERS`).
    filters: Mutex<Vec<(Filter, Arc<Matched>)>>,
}

const GRAPH_FILE: &str = "graph.bin";
const MANIFEST: &str = "manifest.json";

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Manifest {
    format: u32,
    dimension: usize,
    m: usize,
    #[serde(default)]
    metric: Metric,
    points: usize,
    /// The store's log index the dumped graph reflects: a dump ahead of the store (the store lost
    /// its last writes in a crash) is never used.
    applied: u64,
}

/// 3: shoal's own graph file (2 was hnsw_rs's dump, rebuilt on first start).
const MANIFEST_FORMAT: u32 = 3;

/// A shard's dumped graph, read before the shard's points are (see [`Shard::open_with`]).
pub struct ShardDump {
    graph: Option<Graph>,
    /// The dumped graph's nodes by point id (the first node of an id found twice).
    slots: HashMap<PointId, Slot>,
    /// Its nodes deleted already or repeating an id (tombstones from the start).
    tombstoned: usize,
    /// A dump was found but is not used.
    discarded: bool,
}

impl ShardDump {
    /// No dump: every point is inserted.
    pub fn none() -> ShardDump {
        ShardDump {
            graph: None,
            slots: HashMap::new(),
            tombstoned: 0,
            discarded: false,
        }
    }

    /// The graph dumped in `dir`, if there is one, it fits `params` and is not ahead of the
    /// store's points as of log index `applied`. A dump found but not usable is removed.
    /// A dump that could not be read for want of room for its vectors (a full disk, where they
    /// are kept in a file) is kept, for a later load.
    pub fn read(params: &ShardParams, dir: &Path, applied: u64) -> ShardDump {
        let loaded = match load_dump(params, dir, applied) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "no room for the index dump's vectors; the dump is kept for a later load");
                return ShardDump::none();
            }
        };
        let Some(graph) = loaded else {
            let discarded = dir.join(MANIFEST).exists();
            if discarded {
                // Never again: a dump ahead of the store stays ahead-looking no longer once the
                // store passes its index, and would then be trusted with ids it reassigned.
                if let Err(e) = std::fs::remove_dir_all(dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "could not remove a discarded index dump");
                }
            }
            return ShardDump {
                discarded,
                ..ShardDump::none()
            };
        };
        let mut slots: HashMap<PointId, Slot> = HashMap::with_capacity(graph.len());
        let mut tombstoned = 0;
        for slot in 0..graph.len() as Slot {
            if graph.is_deleted(slot) {
                tombstoned += 1;
                continue;
            }
            match slots.entry(graph.id(slot)) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(slot);
                }
                std::collections::hash_map::Entry::Occupied(_) => {
                    graph.delete(slot);
                    tombstoned += 1;
                }
            }
        }
        ShardDump {
            graph: Some(graph),
            slots,
            tombstoned,
            discarded: false,
        }
    }

    /// Whether the dump holds point `id` (with its vector).
    pub fn has(&self, id: PointId) -> bool {
        self.slots.contains_key(&id)
    }

    /// Whether there is a usable dump (false: every point needs its vector).
    pub fn has_graph(&self) -> bool {
        self.graph.is_some()
    }
}

/// How a shard came up in [`Shard::open`] or [`Shard::open_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenReport {
    /// The graph was reloaded from a dump (false: rebuilt from the points).
    pub reloaded: bool,
    /// Points inserted on top of the reloaded graph (or all points when rebuilt).
    pub inserted: usize,
    /// Points of the dump that are no longer live.
    pub tombstoned: usize,
    /// A dump was found but not used (ahead of the store, other parameters, unreadable).
    pub discarded_dump: bool,
}

impl Shard {
    pub fn new(params: ShardParams) -> Result<Shard, IndexError> {
        Ok(Shard {
            graph: RwLock::new(new_graph(&params)?),
            params,
            table: RwLock::new(Table {
                live: Live::default(),
                tombstones: 0,
                index: PayloadIndex::default(),
                generation: 0,
                graph_epoch: 0,
            }),
            writer: Mutex::new(()),
            keyword: RwLock::new(Keyword::None),
            filters: Mutex::new(Vec::new()),
        })
    }

    /// Build a shard holding `points`, the store's points as of log index `applied`: reload the
    /// graph dumped in `dump_dir` when there is a usable one (then only the difference to `points`
    /// is applied), otherwise build it from scratch on every core. A dump made at a later index
    /// than `applied` is not usable: it may hold point ids the store lost and will hand out again.
    pub fn open(
        params: ShardParams,
        points: Vec<Point>,
        dump_dir: Option<&Path>,
        applied: u64,
    ) -> Result<(Shard, OpenReport), IndexError> {
        let dump = match dump_dir {
            Some(dir) => ShardDump::read(&params, dir, applied),
            None => ShardDump::none(),
        };
        Shard::open_with(params, points, dump)
    }

    /// [`Shard::open`] with the dump read first ([`ShardDump::read`]): a point the dump holds
    /// may come without its vector (an empty one), so that a reload need not read the vectors
    /// from the store; every other point needs its vector.
    pub fn open_with(
        params: ShardParams,
        points: Vec<Point>,
        dump: ShardDump,
    ) -> Result<(Shard, OpenReport), IndexError> {
        for p in &points {
            if !p.vector.is_empty() {
                check_vector(&params, &p.vector)?;
            } else if !dump.has(p.id) {
                return Err(IndexError::Graph(format!(
                    "point {} came without its vector, and the dump does not hold it",
                    p.id
                )));
            }
        }
        // each id once (the first), as inserts take them
        let mut live_ids = HashSet::with_capacity(points.len());
        let points: Vec<Point> = points
            .into_iter()
            .filter(|p| live_ids.insert(p.id))
            .collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let ShardDump {
            graph,
            mut slots,
            mut tombstoned,
            discarded,
        } = dump;
        if let Some(graph) = graph {
            // The dump's nodes that are still live keep their place; the others become
            // tombstones; live points the dump lacks are inserted.
            slots.retain(|id, slot| {
                let live = live_ids.contains(id);
                if !live {
                    graph.delete(*slot);
                    tombstoned += 1;
                }
                live
            });
            drop(live_ids);
            let missing: Vec<(PointId, &[f32])> = points
                .iter()
                .filter(|p| !slots.contains_key(&p.id))
                .map(|p| (p.id, p.vector.as_slice()))
                .collect();
            check_room(&graph, missing.len())?;
            let first = graph.insert_many(&missing, threads);
            for (i, (id, _)) in missing.iter().enumerate() {
                slots.insert(*id, first + i as Slot);
            }
            let report = OpenReport {
                reloaded: true,
                inserted: missing.len(),
                tombstoned,
                discarded_dump: false,
            };
            let shard = Shard::from_parts(params, graph, slots, points, tombstoned)?;
            return Ok((shard, report));
        }
        drop(live_ids);
        let graph = new_graph(&params)?;
        let batch: Vec<(PointId, &[f32])> =
            points.iter().map(|p| (p.id, p.vector.as_slice())).collect();
        check_room(&graph, batch.len())?;
        let first = graph.insert_many(&batch, threads);
        let slots = points
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id, first + i as Slot))
            .collect();
        let report = OpenReport {
            reloaded: false,
            inserted: points.len(),
            tombstoned: 0,
            discarded_dump: discarded,
        };
        Ok((Shard::from_parts(params, graph, slots, points, 0)?, report))
    }

    /// The shard over `graph`, whose points sit at `slots`; `points` are the live ones (their
    /// vectors are dropped here: the graph holds them).
    fn from_parts(
        params: ShardParams,
        graph: Graph,
        slots: HashMap<PointId, Slot>,
        points: Vec<Point>,
        tombstones: usize,
    ) -> Result<Shard, IndexError> {
        let keyword = if points.iter().any(|p| !p.text.is_empty()) {
            let built = KeywordIndex::new().and_then(|k| {
                k.add(points.iter().map(|p| (p.id, p.text.as_str())))?;
                k.refresh()?;
                Ok(k)
            });
            match built {
                Ok(k) => Keyword::Ready(Arc::new(k)),
                Err(e) => {
                    tracing::error!(error = %e, "keyword index could not be built; keyword search is off for this shard");
                    Keyword::Broken(e.to_string())
                }
            }
        } else {
            Keyword::None
        };
        let live = points
            .into_iter()
            .map(|p| {
                let slot = *slots.get(&p.id).ok_or_else(|| {
                    IndexError::Graph(format!("point {} is missing from the graph", p.id))
                })?;
                Ok((
                    p.id,
                    Entry {
                        slot: Some(slot),
                        payload: p.payload,
                    },
                ))
            })
            .collect::<Result<_, IndexError>>()?;
        Ok(Shard {
            params,
            graph: RwLock::new(graph),
            table: RwLock::new(Table {
                live,
                tombstones,
                index: PayloadIndex::default(),
                generation: 0,
                graph_epoch: 0,
            }),
            writer: Mutex::new(()),
            keyword: RwLock::new(keyword),
            filters: Mutex::new(Vec::new()),
        })
    }

    pub fn params(&self) -> &ShardParams {
        &self.params
    }

    pub fn stats(&self) -> ShardStats {
        let t = self.table.read();
        ShardStats {
            live_points: t.live.len(),
            tombstones: t.tombstones,
            graph_points: self.graph.read().len(),
        }
    }

    /// What the shard holds in memory (walks the graph's nodes once: call it now and then).
    pub fn memory(&self) -> ShardMemory {
        let graph = self.graph.read().memory_bytes();
        let by_id = self.table.read().live.flat_bytes();
        let keyword = match &*self.keyword.read() {
            Keyword::Ready(k) => k.bytes(),
            _ => 0,
        };
        ShardMemory {
            vectors: graph.vectors as u64,
            vectors_mapped: graph.mapped as u64,
            graph: (graph.rest + by_id) as u64,
            keyword,
        }
    }

    pub fn contains(&self, id: PointId) -> bool {
        self.table.read().live.contains_key(&id)
    }

    /// Add points (ids must be new). Points become searchable as they are inserted.
    pub fn insert(&self, points: Vec<Point>) -> Result<(), IndexError> {
        self.insert_pausing(points, &|| {})
    }

    /// [`Shard::insert`], calling `pause` before each point, holding no lock of the shard (it may
    /// block: the node's waits while a search runs, so that a batch of inserts steps aside within
    /// one insert instead of keeping a core for the whole batch).
    pub fn insert_pausing(&self, points: Vec<Point>, pause: &dyn Fn()) -> Result<(), IndexError> {
        for p in &points {
            check_vector(&self.params, &p.vector)?;
        }
        let _w = self.writer.lock();
        let points: Vec<Point> = {
            // New ids only, each once (a later duplicate in the batch is dropped like an id that
            // is live already).
            let t = self.table.read();
            let mut seen = HashSet::with_capacity(points.len());
            points
                .into_iter()
                .filter(|p| !t.live.contains_key(&p.id) && seen.insert(p.id))
                .collect()
        };
        if points.is_empty() {
            return Ok(());
        }
        check_room(&self.graph.read(), points.len())?;
        // The table first (a graph search that finds a new point can map it to its payload),
        // then the graph, then the points' places in it: two short table writes per batch, so
        // searches, which give way to a waiting writer, queue behind a writer twice per batch.
        {
            let mut t = self.table.write();
            t.generation += 1;
            for p in &points {
                t.index.change(p.id, &p.payload, true);
                t.live.insert(
                    p.id,
                    Entry {
                        slot: None,
                        payload: p.payload.clone(),
                    },
                );
            }
        }
        let mut slots = Vec::with_capacity(points.len());
        for p in &points {
            // Between two points, holding no lock of the shard (a pause that waits for a search
            // must not hold up that search, nor a compaction it would queue behind).
            pause();
            let slot = self.graph.read().insert(p.id, &p.vector);
            slots.push((p.id, slot));
        }
        let mut t = self.table.write();
        t.generation += 1;
        for (id, slot) in slots {
            t.live.place(id, slot);
        }
        drop(t);
        self.keyword_add(&points);
        Ok(())
    }

    /// Index the points' text for keyword search (making the keyword index if there is none). A
    /// failure turns keyword search off for the shard (searches say so) rather than failing the
    /// insert, whose points are in the table and the graph already.
    fn keyword_add(&self, points: &[Point]) {
        if points.iter().all(|p| p.text.is_empty()) {
            return;
        }
        let mut state = self.keyword.write();
        let keyword = match &*state {
            Keyword::Ready(k) => k.clone(),
            Keyword::Broken(_) => return,
            Keyword::None => match KeywordIndex::new() {
                Ok(k) => {
                    let k = Arc::new(k);
                    *state = Keyword::Ready(k.clone());
                    k
                }
                Err(e) => {
                    tracing::error!(error = %e, "keyword index could not be made; keyword search is off for this shard");
                    *state = Keyword::Broken(e.to_string());
                    return;
                }
            },
        };
        drop(state);
        if let Err(e) = keyword.add(points.iter().map(|p| (p.id, p.text.as_str()))) {
            tracing::error!(error = %e, "keyword index failed; keyword search is off for this shard until it reloads");
            *self.keyword.write() = Keyword::Broken(e.to_string());
        }
    }

    /// Tombstone points; they are never returned again. Returns how many were live.
    pub fn delete(&self, ids: &[PointId]) -> usize {
        let _w = self.writer.lock();
        let mut t = self.table.write();
        t.generation += 1;
        let graph = self.graph.read();
        let mut removed = 0;
        for id in ids {
            if let Some(e) = t.live.remove(*id) {
                t.index.change(*id, &e.payload, false);
                if let Some(slot) = e.slot {
                    graph.delete(slot);
                }
                removed += 1;
            }
        }
        t.tombstones += removed;
        drop(graph);
        drop(t);
        let state = self.keyword.read().clone();
        if let (Keyword::Ready(keyword), true) = (state, removed > 0) {
            // (a point it still held would be dropped from keyword hits anyway: they are looked
            // up in the table; but its words would weigh in BM25's statistics)
            if let Err(e) = keyword.delete(ids) {
                tracing::error!(error = %e, "keyword index failed; keyword search is off for this shard until it reloads");
                *self.keyword.write() = Keyword::Broken(e.to_string());
            }
        }
        removed
    }

    /// The `k` live points whose text ranks best for `query` by BM25 (score), best first, among
    /// those `filter` matches. Empty when no point has text.
    pub fn keyword_search(
        &self,
        query: &str,
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<Hit>, IndexError> {
        let keyword = match self.keyword.read().clone() {
            Keyword::None => return Ok(Vec::new()),
            Keyword::Ready(k) => k,
            Keyword::Broken(why) => {
                return Err(IndexError::Keyword(format!(
                    "keyword search is unavailable on this shard until it reloads: {why}"
                )))
            }
        };
        // (through the kept matches: a hybrid search finds them once for both sides)
        let allowed = filter
            .filter(|f| !f.is_empty())
            .map(|f| self.matched(f).ids.clone());
        let found = keyword.search(query, k, allowed)?;
        let table = self.table.read();
        Ok(hits(&table.live, found))
    }

    /// True when tombstones have passed the compaction threshold.
    pub fn needs_compaction(&self) -> bool {
        let t = self.table.read();
        let graph_points = t.live.len() + t.tombstones;
        t.tombstones >= self.params.compaction_min_tombstones
            && t.tombstones as f64 > self.params.compaction_ratio * graph_points as f64
    }

    /// Rebuild the graph from the live points, dropping every tombstone. Searches keep using the
    /// old graph until the new one is swapped in. Returns the number of tombstones removed.
    pub fn compact(&self) -> Result<usize, IndexError> {
        let _w = self.writer.lock();
        let (places, tombstones) = {
            let t = self.table.read();
            let mut places: Vec<(PointId, Slot)> = Vec::with_capacity(t.live.len());
            for (id, e) in t.live.iter() {
                let slot = e
                    .slot
                    .ok_or_else(|| IndexError::Graph(format!("point {id} is not in the graph")))?;
                places.push((*id, slot));
            }
            (places, t.tombstones)
        };
        // In the old graph's order, so that the new one is laid out alike. No insert runs
        // (the writer lock is held): the old graph can be read without its lock being held
        // for the whole rebuild, but a read guard is cheap and keeps it simple.
        let mut places = places;
        places.sort_unstable_by_key(|p| p.1);
        let fresh = new_graph(&self.params)?;
        check_room(&fresh, places.len())?;
        let slots: HashMap<PointId, Slot> = {
            let old = self.graph.read();
            let batch: Vec<(PointId, &[f32])> =
                places.iter().map(|(id, s)| (*id, old.vector(*s))).collect();
            let first = fresh.insert_many(&batch, 1);
            places
                .iter()
                .enumerate()
                .map(|(i, (id, _))| (*id, first + i as Slot))
                .collect()
        };
        // Both at once (table, then graph: the order searches take them), so no search sees a
        // slot of one graph applied to the other.
        let mut t = self.table.write();
        let mut graph = self.graph.write();
        *graph = fresh;
        t.generation += 1;
        t.graph_epoch += 1;
        t.live.replace_slots(|id| slots.get(&id).copied());
        t.tombstones = 0;
        Ok(tombstones)
    }

    /// Write the graph to `dir` (replaced atomically: a crash leaves the old dump or none), marked
    /// as reflecting the store's log index `applied`.
    pub fn dump(&self, dir: &Path, applied: u64) -> Result<(), IndexError> {
        let _w = self.writer.lock();
        let tmp = sibling(dir, "tmp");
        let old = sibling(dir, "old");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let graph = self.graph.read();
        let file = std::fs::File::create(tmp.join(GRAPH_FILE))?;
        graph
            .write_to(&file)
            .map_err(|e| IndexError::Dump(e.to_string()))?;
        file.sync_all()?;
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            dimension: self.params.dimension,
            m: self.params.m,
            metric: self.params.metric,
            points: graph.len(),
            applied,
        };
        drop(graph);
        let body = serde_json::to_vec(&manifest).map_err(|e| IndexError::Dump(e.to_string()))?;
        std::fs::write(tmp.join(MANIFEST), body)?;
        std::fs::File::open(tmp.join(MANIFEST))?.sync_all()?;
        let _ = std::fs::remove_dir_all(&old);
        if dir.exists() {
            std::fs::rename(dir, &old)?;
        }
        std::fs::rename(&tmp, dir)?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    /// The live points and graph nodes `filter` matches: kept from an earlier search with the same filter while
    /// the shard has not changed since, otherwise found (`matching`) and kept if no write ran
    /// meanwhile.
    fn matched(&self, filter: &Filter) -> Arc<Matched> {
        let generation = self.table.read().generation;
        {
            let mut cache = self.filters.lock();
            if let Some(at) = cache.iter().position(|(f, _)| f == filter) {
                let entry = cache.remove(at);
                if entry.1.generation == generation {
                    let m = entry.1.clone();
                    cache.push(entry);
                    return m;
                }
            }
        }
        let ids = self.matching(filter);
        let table = self.table.read();
        let m = Arc::new(Matched::new(ids, &table));
        let unchanged = table.generation == generation;
        drop(table);
        if unchanged {
            let mut cache = self.filters.lock();
            // (another search may have found it meanwhile)
            cache.retain(|(f, _)| f != filter);
            if cache.len() >= CACHED_FILTERS {
                cache.remove(0);
            }
            cache.push((filter.clone(), m.clone()));
        }
        m
    }

    /// The live points a filter matches, sorted. The payload index narrows them down where it
    /// can; whatever is left to evaluate is evaluated outside the table's lock (on a list of the
    /// points' payloads taken under it), so a costly filter never holds up writers, nor the
    /// searches that would queue behind a waiting writer.
    pub fn matching(&self, filter: &Filter) -> Vec<PointId> {
        self.index_fields(filter);
        let payloads: Vec<(PointId, Arc<Payload>)> = {
            let t = self.table.read();
            let payload = |id: &PointId| Some((*id, t.live.get(id)?.payload.clone()));
            match t.index.narrow(filter) {
                // (the index follows every insert and delete: its ids are all live)
                Some(Narrowed::Exact(ids)) => return ids,
                Some(Narrowed::Candidates(ids)) => ids.iter().filter_map(payload).collect(),
                None => t.live.keys().filter_map(payload).collect(),
            }
        };
        let mut ids: Vec<PointId> = payloads
            .iter()
            .filter(|(_, p)| filter.matches(&p.doc_id, &p.metadata))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Index the fields `filter` uses that are not indexed yet, from the live points' payloads
    /// (built outside the table's lock). No insert or delete may run between reading the
    /// payloads and installing the index: while one runs, this is left to a later search.
    fn index_fields(&self, filter: &Filter) {
        let missing = self.table.read().index.missing(filter);
        if missing.is_empty() {
            return;
        }
        let Some(_w) = self.writer.try_lock() else {
            return;
        };
        let payloads: Vec<(PointId, Arc<Payload>)> = {
            let t = self.table.read();
            t.live
                .iter()
                .map(|(id, e)| (*id, e.payload.clone()))
                .collect()
        };
        let built = PayloadIndex::build(&missing, payloads.iter().map(|(id, p)| (*id, &**p)));
        self.table.write().index.install(built);
    }

    /// k nearest live points to the query, best first.
    pub fn search(&self, req: &SearchRequest<'_>) -> Result<Vec<Hit>, IndexError> {
        check_vector(&self.params, req.vector)?;
        if req.k == 0 {
            return Ok(Vec::new());
        }
        let filter = req.filter.filter(|f| !f.is_empty());
        let exact_mode = req.mode == SearchMode::Exact;
        let ef = req.ef.unwrap_or(self.params.ef_search).max(req.k);
        let matched: Option<Arc<Matched>> = filter.map(|f| self.matched(f));

        let mut table = self.table.read();
        let matched = match matched {
            // A compaction since: the matches' slots belong to the old graph. Found again with
            // the table held from here on, so the graph taken below is the one they belong to.
            Some(m) if m.graph_epoch != table.graph_epoch => {
                drop(table);
                let ids = filter.map(|f| self.matching(f)).unwrap_or_default();
                table = self.table.read();
                Some(Arc::new(Matched::new(ids, &table)))
            }
            m => m,
        };
        let live_count = table.live.len();
        if exact_mode {
            let points = matched.as_ref().map_or(live_count, |m| m.count);
            if let Some(limit) = req.max_scan.filter(|l| points > *l) {
                return Err(IndexError::ScanTooLarge { points, limit });
            }
        }
        let plan = match &matched {
            Some(_) if exact_mode => FilteredPlan::Scan,
            Some(m) => match self.params.filtered_plan(m.count, live_count, ef) {
                // The automatic plan never scans more than an exact search may.
                FilteredPlan::Scan if req.max_scan.is_some_and(|l| m.count > l) => {
                    FilteredPlan::Graph { beam: ef }
                }
                plan => plan,
            },
            None if exact_mode || live_count <= self.params.exact_below => FilteredPlan::Scan,
            None => FilteredPlan::Graph { beam: ef },
        };
        // Scoring runs outside the table lock, with the graph held (taken before the table is
        // let go, so that a compaction cannot swap in a graph the slots do not belong to): a long
        // search never holds up a writer, nor the searches queued behind a waiting writer.
        // Points deleted meanwhile are dropped by `hits`.
        let graph = self.graph.read();
        drop(table);
        // An automatic scan reads what a walk would, the int8 codes where the graph keeps them
        // (the best `ef` re-scored from the vectors); an exact search reads the vectors.
        let by = if exact_mode {
            ScanBy::Vectors
        } else {
            ScanBy::Codes { pool: ef }
        };
        let found = match (plan, matched) {
            (FilteredPlan::Scan, Some(m)) => graph.scan(req.vector, req.k, &m.slots(), by),
            (FilteredPlan::Scan, None) => graph.scan_all(req.vector, req.k, by),
            (FilteredPlan::Graph { beam }, Some(m)) => {
                graph.search_filtered(req.vector, req.k, beam, |s| m.contains(s))
            }
            (FilteredPlan::Graph { beam }, None) => graph.search(req.vector, req.k, beam, |_| true),
        };
        let scored: Vec<(PointId, f32)> = found
            .iter()
            .map(|&Near(d, s)| (graph.id(s), score(self.params.metric, d)))
            .collect();
        drop(graph);
        let table = self.table.read();
        Ok(hits(&table.live, scored))
    }
}

/// A hit's score from its graph distance: higher is better.
fn score(metric: Metric, distance: f32) -> f32 {
    match metric {
        Metric::Cosine => 1.0 - distance,
        Metric::Euclidean => -distance,
    }
}

/// A new, empty graph for these parameters.
fn new_graph(params: &ShardParams) -> Result<Graph, IndexError> {
    Ok(Graph::new_in(graph_params(params), vectors_file(params)?))
}

/// A new file for a graph's vectors, where the parameters keep them in one.
fn vectors_file(params: &ShardParams) -> std::io::Result<Option<Arc<MappedFile>>> {
    let Some(dir) = &params.vectors_dir else {
        return Ok(None);
    };
    MappedFile::create_in(dir)
        .map(|f| Some(Arc::new(f)))
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("a file for the vectors in {}: {e}", dir.display()),
            )
        })
}

fn graph_params(params: &ShardParams) -> GraphParams {
    GraphParams {
        dim: params.dimension,
        m: params.m,
        ef_construction: params.ef_construction,
        metric: params.metric,
        quantization: params.quantization,
    }
}

/// Scored points that are still live, with their payloads, in the order given.
fn hits(live: &IdMap<Entry>, scored: Vec<(PointId, f32)>) -> Vec<Hit> {
    scored
        .into_iter()
        .filter_map(|(id, score)| {
            live.get(&id).map(|e| Hit {
                id,
                score,
                payload: e.payload.clone(),
            })
        })
        .collect()
}

/// A vector of the shard's dimension, every value a finite number (a NaN distance would break
/// the ordering every search relies on).
fn check_vector(params: &ShardParams, v: &[f32]) -> Result<(), IndexError> {
    if v.len() != params.dimension {
        return Err(IndexError::Dimension {
            expected: params.dimension,
            got: v.len(),
        });
    }
    if !v.iter().all(|x| x.is_finite()) {
        return Err(IndexError::ZeroVector);
    }
    Ok(())
}

/// Room in `graph` for `more` points: within a graph's node numbers (u32s), and its vectors' segments
/// mapped where they are kept in a file (a full disk is an error here, before any of them is
/// inserted).
fn check_room(graph: &Graph, more: usize) -> Result<(), IndexError> {
    if graph.len().saturating_add(more) >= u32::MAX as usize {
        return Err(IndexError::Graph(format!(
            "a shard holds at most {} points (tombstones included): compact or split the collection",
            u32::MAX - 1
        )));
    }
    graph.make_room(more)?;
    Ok(())
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

/// Reload a dumped graph if it exists, fits `params` and is not ahead of the store's `applied`
/// index. Any problem with the dump means "rebuild instead" (`Ok(None)`); no room for its
/// vectors (a full disk, where they are kept in a file) is an error, the dump being sound.
fn load_dump(params: &ShardParams, dir: &Path, applied: u64) -> std::io::Result<Option<Graph>> {
    let Ok(bytes) = std::fs::read(dir.join(MANIFEST)) else {
        return Ok(None);
    };
    let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes) else {
        tracing::info!(dir = %dir.display(), "index dump of an older format; rebuilding");
        return Ok(None);
    };
    if manifest.format != MANIFEST_FORMAT {
        tracing::info!(dir = %dir.display(), "index dump of an older format; rebuilding");
        return Ok(None);
    }
    if manifest.dimension != params.dimension
        || manifest.m != params.m
        || manifest.metric != params.metric
    {
        tracing::info!(dir = %dir.display(), "index dump does not match the shard parameters; rebuilding");
        return Ok(None);
    }
    if manifest.applied > applied {
        tracing::warn!(
            dir = %dir.display(),
            dump = manifest.applied,
            store = applied,
            "index dump is ahead of the store (writes lost in a crash); rebuilding"
        );
        return Ok(None);
    }
    let vectors = vectors_file(params)?;
    let read = || -> Result<Graph, DumpError> {
        let file = std::fs::File::open(dir.join(GRAPH_FILE))?;
        let size = file.metadata()?.len();
        Graph::read_from(graph_params(params), vectors, file, size)
    };
    match read() {
        Ok(graph) if graph.len() == manifest.points => Ok(Some(graph)),
        Ok(_) => {
            tracing::warn!(dir = %dir.display(), "index dump is incomplete; rebuilding");
            Ok(None)
        }
        Err(DumpError::Room(e)) => Err(e),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "index dump unreadable; rebuilding");
            Ok(None)
        }
    }
}

#[cfg(test)]
#[path = "shard_tests.rs"]
mod tests;
