//! One HNSW shard: our point table (payloads, and where each point's vector sits in the graph),
//! the hnsw_rs graph, tombstones, compaction, exact and filtered search, dump and reload.
//!
//! Each vector is held once, by hnsw_rs (which keeps its own copy of everything it indexes); the
//! table records each point's place in the graph (hnsw_rs's layer and rank) and reads the vector
//! from there for exact scans and compaction.

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::PointId as Slot;
use hnsw_rs::hnswio::HnswIo;
use hnsw_rs::prelude::Hnsw;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::distance::{dot, CosineDistance};
use crate::{Filter, IndexError, Metadata, PointId};

/// Tuning of one shard. Defaults follow common HNSW practice (Qdrant uses m=16, ef_construct=100).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShardParams {
    pub dimension: usize,
    /// Links per node.
    pub m: usize,
    pub ef_construction: usize,
    /// Candidate list width while searching (raised to k when k is larger).
    pub ef_search: usize,
    /// Shards with at most this many live points are always searched exactly.
    pub exact_below: usize,
    /// A filter matching at most this fraction of the live points is answered by an exact scan
    /// over the matches (graph search loses recall under selective filters).
    pub exact_filter_fraction: f64,
    /// Compact once tombstones exceed this fraction of the graph ...
    pub compaction_ratio: f64,
    /// ... and number at least this many.
    pub compaction_min_tombstones: usize,
}

impl ShardParams {
    pub fn new(dimension: usize) -> ShardParams {
        ShardParams {
            dimension,
            m: 16,
            ef_construction: 100,
            ef_search: 64,
            exact_below: 1_000,
            exact_filter_fraction: 0.1,
            compaction_ratio: 0.2,
            compaction_min_tombstones: 100,
        }
    }
}

/// How a filtered search is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilteredPlan {
    /// Exact scan over the points the filter matches.
    Scan,
    /// Graph search with the filter and a beam this wide.
    Graph { beam: usize },
}

impl ShardParams {
    /// Scan or graph for a filter matching `matches` of `live` points, at beam width `ef`.
    ///
    /// Selective filters (`exact_filter_fraction`, `exact_below`) are scanned. Otherwise the graph
    /// search needs its beam widened by the selectivity (only that fraction of the visited nodes
    /// qualify; at most 10 × `ef`), and each node it expands costs about 2·m distances on the
    /// bottom layer: when that is more than the matches, scanning them is cheaper, and exact.
    pub fn filtered_plan(&self, matches: usize, live: usize, ef: usize) -> FilteredPlan {
        let selective = matches as f64 <= self.exact_filter_fraction * live as f64
            || matches <= self.exact_below;
        let fraction = matches as f64 / live.max(1) as f64;
        let beam = ((ef as f64 / fraction.max(0.05)) as usize).min(ef * 10);
        if selective || matches <= beam * 2 * self.m {
            FilteredPlan::Scan
        } else {
            FilteredPlan::Graph { beam }
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SearchMode {
    /// Exact for small shards and selective filters, graph search otherwise.
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
    /// Cosine similarity.
    pub score: f32,
    pub payload: Arc<Payload>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ShardStats {
    pub live_points: usize,
    pub tombstones: usize,
    pub graph_points: usize,
}

struct Entry {
    /// Where the point sits in the current graph (its vector is read from there); None for the
    /// moment between its entry in the table and its insertion in the graph.
    slot: Option<Slot>,
    payload: Arc<Payload>,
}

struct Table {
    live: HashMap<PointId, Entry>,
    /// Points still in the graph but deleted.
    tombstones: usize,
}

type Graph = Hnsw<'static, f32, CosineDistance>;

/// An HNSW shard. Searches run concurrently from any thread and never wait for inserts (hnsw_rs
/// inserts take only per-node locks); mutations are serialised by an internal writer lock.
pub struct Shard {
    params: ShardParams,
    graph: RwLock<Graph>,
    table: RwLock<Table>,
    writer: Mutex<()>,
}

const MAX_LAYERS: usize = 16;
const DUMP_BASENAME: &str = "graph";
const MANIFEST: &str = "manifest.json";

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Manifest {
    format: u32,
    dimension: usize,
    m: usize,
    points: usize,
    /// The store's log index the dumped graph reflects: a dump ahead of the store (the store lost
    /// its last writes in a crash) is never used.
    applied: u64,
}

const MANIFEST_FORMAT: u32 = 2;

/// How a shard came up in [`Shard::open`].
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
    pub fn new(params: ShardParams) -> Shard {
        Shard {
            graph: RwLock::new(new_graph(&params, 1024)),
            params,
            table: RwLock::new(Table {
                live: HashMap::new(),
                tombstones: 0,
            }),
            writer: Mutex::new(()),
        }
    }

    /// Build a shard holding `points`, the store's points as of log index `applied`: reload the
    /// graph dumped in `dump_dir` when there is a usable one (then only the difference to `points`
    /// is applied), otherwise build it from scratch. A dump made at a later index than `applied`
    /// is not usable: it may hold point ids the store lost and will hand out again.
    pub fn open(
        params: ShardParams,
        points: Vec<Point>,
        dump_dir: Option<&Path>,
        applied: u64,
    ) -> Result<(Shard, OpenReport), IndexError> {
        for p in &points {
            check_dimension(&params, &p.vector)?;
        }
        let dump = dump_dir.map(|d| (d, load_dump(&params, d, applied)));
        let discarded_dump = matches!(dump, Some((d, None)) if d.join(MANIFEST).exists());
        if let (true, Some(dir)) = (discarded_dump, dump_dir) {
            // Never again: a dump ahead of the store stays ahead-looking no longer once the
            // store passes its index, and would then be trusted with ids it reassigned.
            if let Err(e) = std::fs::remove_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a discarded index dump");
            }
        }
        if let Some((_, Some(graph))) = dump {
            let mut slots = slots_of(&graph);
            let live_ids: HashSet<PointId> = points.iter().map(|p| p.id).collect();
            let tombstoned = slots.keys().filter(|id| !live_ids.contains(id)).count();
            let mut inserted = 0;
            for p in &points {
                if let std::collections::hash_map::Entry::Vacant(e) = slots.entry(p.id) {
                    e.insert(insert_point(&graph, &p.vector, p.id)?);
                    inserted += 1;
                }
            }
            let report = OpenReport {
                reloaded: true,
                inserted,
                tombstoned,
                discarded_dump: false,
            };
            let shard = Shard::from_parts(params, graph, slots, points, tombstoned)?;
            return Ok((shard, report));
        }
        let graph = build_graph(&params, &points, true);
        let report = OpenReport {
            reloaded: false,
            inserted: points.len(),
            tombstoned: 0,
            discarded_dump,
        };
        let slots = slots_of(&graph);
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
            table: RwLock::new(Table { live, tombstones }),
            writer: Mutex::new(()),
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
            graph_points: self.graph.read().get_nb_point(),
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
            check_dimension(&self.params, &p.vector)?;
        }
        let _w = self.writer.lock();
        let points: Vec<Point> = {
            let t = self.table.read();
            points
                .into_iter()
                .filter(|p| !t.live.contains_key(&p.id))
                .collect()
        };
        if points.is_empty() {
            return Ok(());
        }
        // The table first (a graph search that finds a new point can map it to its payload),
        // then the graph, then the points' places in it: two short table writes per batch, so
        // searches, which give way to a waiting writer, queue behind a writer twice per batch.
        {
            let mut t = self.table.write();
            for p in &points {
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
        let mut failed = None;
        for p in &points {
            // Between two points, holding no lock of the shard (a pause that waits for a search
            // must not hold up that search, nor a compaction it would queue behind).
            pause();
            let inserted = insert_point(&self.graph.read(), &p.vector, p.id);
            match inserted {
                Ok(slot) => slots.push((p.id, slot)),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let mut t = self.table.write();
        for (id, slot) in slots {
            if let Some(e) = t.live.get_mut(&id) {
                e.slot = Some(slot);
            }
        }
        match failed {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Tombstone points; they are never returned again. Returns how many were live.
    pub fn delete(&self, ids: &[PointId]) -> usize {
        let _w = self.writer.lock();
        let mut t = self.table.write();
        let mut removed = 0;
        for id in ids {
            if t.live.remove(id).is_some() {
                removed += 1;
            }
        }
        t.tombstones += removed;
        removed
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
        let (points, tombstones) = {
            let t = self.table.read();
            let graph = self.graph.read();
            let mut pts: Vec<(PointId, Vec<f32>)> = Vec::with_capacity(t.live.len());
            for (id, e) in &t.live {
                let slot = e
                    .slot
                    .as_ref()
                    .ok_or_else(|| IndexError::Graph(format!("point {id} is not in the graph")))?;
                pts.push((*id, vector_at(&graph, slot, *id)?));
            }
            (pts, t.tombstones)
        };
        let fresh = new_graph(&self.params, points.len());
        let mut slots = HashMap::with_capacity(points.len());
        for (id, v) in points {
            slots.insert(id, insert_point(&fresh, &v, id)?);
        }
        // Both at once (table, then graph: the order searches take them), so no search sees a
        // slot of one graph applied to the other.
        let mut t = self.table.write();
        let mut graph = self.graph.write();
        *graph = fresh;
        for (id, e) in t.live.iter_mut() {
            e.slot = slots.get(id).copied();
        }
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
        graph
            .file_dump(&tmp, DUMP_BASENAME)
            .map_err(|e| IndexError::Dump(e.to_string()))?;
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            dimension: self.params.dimension,
            m: self.params.m,
            points: graph.get_nb_point(),
            applied,
        };
        drop(graph);
        let body = serde_json::to_vec(&manifest).map_err(|e| IndexError::Dump(e.to_string()))?;
        std::fs::write(tmp.join(MANIFEST), body)?;
        for f in std::fs::read_dir(&tmp)? {
            std::fs::File::open(f?.path())?.sync_all()?;
        }
        let _ = std::fs::remove_dir_all(&old);
        if dir.exists() {
            std::fs::rename(dir, &old)?;
        }
        std::fs::rename(&tmp, dir)?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    /// The live points a filter matches, sorted. The filter is evaluated outside the table's
    /// lock (on a list of the points' payloads taken under it), so a costly filter never holds up
    /// writers, nor the searches that would queue behind a waiting writer.
    pub fn matching(&self, filter: &Filter) -> Vec<PointId> {
        let payloads: Vec<(PointId, Arc<Payload>)> = {
            let t = self.table.read();
            t.live
                .iter()
                .map(|(id, e)| (*id, e.payload.clone()))
                .collect()
        };
        let mut ids: Vec<PointId> = payloads
            .iter()
            .filter(|(_, p)| filter.matches(&p.doc_id, &p.metadata))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// k nearest live points to the query, best first.
    pub fn search(&self, req: &SearchRequest<'_>) -> Result<Vec<Hit>, IndexError> {
        check_dimension(&self.params, req.vector)?;
        if req.k == 0 {
            return Ok(Vec::new());
        }
        let filter = req.filter.filter(|f| !f.is_empty());
        let exact_mode = req.mode == SearchMode::Exact;
        let ef = req.ef.unwrap_or(self.params.ef_search).max(req.k);
        let candidates: Option<Vec<PointId>> = filter.map(|f| self.matching(f));

        let table = self.table.read();
        let live_count = table.live.len();
        if exact_mode {
            let points = candidates.as_ref().map_or(live_count, Vec::len);
            if let Some(limit) = req.max_scan.filter(|l| points > *l) {
                return Err(IndexError::ScanTooLarge { points, limit });
            }
        }
        let plan = match &candidates {
            Some(ids) if exact_mode => FilteredPlan::Scan,
            Some(ids) => match self.params.filtered_plan(ids.len(), live_count, ef) {
                // The automatic plan never scans more than an exact search may.
                FilteredPlan::Scan if req.max_scan.is_some_and(|l| ids.len() > l) => {
                    FilteredPlan::Graph { beam: ef * 10 }
                }
                plan => plan,
            },
            None if exact_mode || live_count <= self.params.exact_below => FilteredPlan::Scan,
            None => FilteredPlan::Graph { beam: ef },
        };
        let scored: Vec<(PointId, f32)> = match (plan, candidates) {
            (FilteredPlan::Scan, candidates) => {
                // Read the points' places under the table lock, score them outside it (with
                // the graph held, so that a compaction cannot swap it meanwhile): a long scan
                // never holds up a writer, nor the searches queued behind a waiting writer.
                let graph = self.graph.read();
                let places: Vec<(PointId, Slot)> = match &candidates {
                    Some(ids) => ids
                        .iter()
                        .filter_map(|id| Some((*id, table.live.get(id)?.slot?)))
                        .collect(),
                    None => table
                        .live
                        .iter()
                        .filter_map(|(id, e)| Some((*id, e.slot?)))
                        .collect(),
                };
                drop(table);
                let top = exact_top_k(&graph, req.vector, req.k, &places)?;
                drop(graph);
                let table = self.table.read();
                return Ok(hits(&table.live, top));
            }
            (FilteredPlan::Graph { beam }, Some(ids)) => {
                let allowed: Vec<usize> = ids.iter().map(|&id| id as usize).collect();
                self.graph_search(req.vector, req.k, beam, Some(&allowed))
            }
            (FilteredPlan::Graph { beam }, None) if table.tombstones > 0 => {
                let is_live = |id: &usize| table.live.contains_key(&(*id as PointId));
                self.graph_search(req.vector, req.k, beam, Some(&is_live))
            }
            (FilteredPlan::Graph { beam }, None) => {
                self.graph_search(req.vector, req.k, beam, None)
            }
        };
        Ok(hits(&table.live, scored))
    }

    fn graph_search(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        filter: Option<&dyn hnsw_rs::prelude::FilterT>,
    ) -> Vec<(PointId, f32)> {
        let graph = self.graph.read();
        graph
            .search_filter(q, k, ef, filter)
            .into_iter()
            .map(|n| (n.d_id as PointId, 1.0 - n.distance))
            .collect()
    }
}

/// The vector of point `id` at `slot` of `graph` (a copy: hnsw_rs lends none).
fn vector_at(graph: &Graph, slot: &Slot, id: PointId) -> Result<Vec<f32>, IndexError> {
    graph
        .get_point_indexation()
        .get_point_data(slot)
        .ok_or_else(|| IndexError::Graph(format!("point {id} has no vector at {slot:?}")))
}

/// Where each point of `graph` sits, by our id.
fn slots_of(graph: &Graph) -> HashMap<PointId, Slot> {
    let points = graph.get_point_indexation();
    let mut out = HashMap::with_capacity(graph.get_nb_point());
    // Layer by layer: hnsw_rs's whole-graph iterator takes its lock twice and panics on an
    // empty graph; the layer iterators do neither.
    for layer in 0..MAX_LAYERS {
        for p in points.get_layer_iterator(layer) {
            out.insert(p.get_origin_id() as PointId, p.get_point_id());
        }
    }
    out
}

/// Insert one point into `graph` and return its place. hnsw_rs does not say where it put a
/// point, but it appends each new point to the layer it drew for it: the one layer that grew.
/// Callers hold the shard's writer lock, so no other insert runs meanwhile.
fn insert_point(graph: &Graph, vector: &[f32], id: PointId) -> Result<Slot, IndexError> {
    let points = graph.get_point_indexation();
    let before: [usize; MAX_LAYERS] = std::array::from_fn(|l| points.get_layer_nb_point(l));
    graph.insert_slice((vector, id as usize));
    (0..MAX_LAYERS)
        .find(|&l| points.get_layer_nb_point(l) > before[l])
        .map(|l| Slot(l as u8, before[l] as i32))
        .ok_or_else(|| IndexError::Graph(format!("point {id} landed in no layer")))
}

/// Scored points that are still live, with their payloads, in the order given.
fn hits(live: &HashMap<PointId, Entry>, scored: Vec<(PointId, f32)>) -> Vec<Hit> {
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

fn exact_top_k(
    graph: &Graph,
    q: &[f32],
    k: usize,
    points: &[(PointId, Slot)],
) -> Result<Vec<(PointId, f32)>, IndexError> {
    let mut scored: Vec<(PointId, f32)> = points
        .iter()
        .map(|(id, slot)| Ok((*id, dot(q, &vector_at(graph, slot, *id)?))))
        .collect::<Result<_, IndexError>>()?;
    let by_score = |a: &(PointId, f32), b: &(PointId, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if scored.len() > k {
        scored.select_nth_unstable_by(k - 1, by_score);
        scored.truncate(k);
    }
    scored.sort_by(by_score);
    Ok(scored)
}

fn check_dimension(params: &ShardParams, v: &[f32]) -> Result<(), IndexError> {
    if v.len() != params.dimension {
        return Err(IndexError::Dimension {
            expected: params.dimension,
            got: v.len(),
        });
    }
    Ok(())
}

fn new_graph(params: &ShardParams, capacity: usize) -> Graph {
    Hnsw::new(
        params.m,
        capacity.max(1024),
        MAX_LAYERS,
        params.ef_construction,
        CosineDistance,
    )
}

fn build_graph(params: &ShardParams, points: &[Point], parallel: bool) -> Graph {
    let graph = new_graph(params, points.len());
    if parallel && points.len() > 1_000 {
        let data: Vec<(&[f32], usize)> = points
            .iter()
            .map(|p| (p.vector.as_slice(), p.id as usize))
            .collect();
        graph.parallel_insert_slice(&data);
    } else {
        for p in points {
            graph.insert_slice((&p.vector, p.id as usize));
        }
    }
    graph
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
/// index. Any problem means "rebuild instead".
fn load_dump(params: &ShardParams, dir: &Path, applied: u64) -> Option<Graph> {
    let bytes = std::fs::read(dir.join(MANIFEST)).ok()?;
    let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes) else {
        tracing::info!(dir = %dir.display(), "index dump of an older format; rebuilding");
        return None;
    };
    if manifest.dimension != params.dimension
        || manifest.m != params.m
        || manifest.format != MANIFEST_FORMAT
    {
        tracing::info!(dir = %dir.display(), "index dump does not match the shard parameters; rebuilding");
        return None;
    }
    if manifest.applied > applied {
        tracing::warn!(
            dir = %dir.display(),
            dump = manifest.applied,
            store = applied,
            "index dump is ahead of the store (writes lost in a crash); rebuilding"
        );
        return None;
    }
    // hnsw_rs ties the reloaded graph's lifetime to its loader. Without mmap the loader holds no
    // data, so leaking it (a few hundred bytes, once per shard load) gives a 'static graph.
    // hnsw_rs asserts on malformed files: treat a panic like any other unusable dump.
    let load = || {
        let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, DUMP_BASENAME)));
        io.load_hnsw::<f32, CosineDistance>()
    };
    match catch_unwind(AssertUnwindSafe(load)) {
        Ok(Ok(graph)) if graph.get_nb_point() == manifest.points => Some(graph),
        Ok(Ok(_)) => {
            tracing::warn!(dir = %dir.display(), "index dump is incomplete; rebuilding");
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(dir = %dir.display(), error = %e, "index dump unreadable; rebuilding");
            None
        }
        Err(_) => {
            tracing::warn!(dir = %dir.display(), "index dump corrupt; rebuilding");
            None
        }
    }
}

#[cfg(test)]
#[path = "shard_tests.rs"]
mod tests;
