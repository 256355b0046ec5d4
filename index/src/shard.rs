//! One HNSW shard: our point table (vectors and payloads), the hnsw_rs graph, tombstones,
//! compaction, exact and filtered search, dump and reload.

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hnsw_rs::api::AnnT;
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
    vector: Box<[f32]>,
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
}

/// How a shard came up in [`Shard::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenReport {
    /// The graph was reloaded from a dump (false: rebuilt from the points).
    pub reloaded: bool,
    /// Points inserted on top of the reloaded graph (or all points when rebuilt).
    pub inserted: usize,
    /// Points of the dump that are no longer live.
    pub tombstoned: usize,
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

    /// Build a shard holding `points`: reload the graph dumped in `dump_dir` when there is a usable
    /// one (then only the difference to `points` is applied), otherwise build it from scratch.
    pub fn open(
        params: ShardParams,
        points: Vec<Point>,
        dump_dir: Option<&Path>,
    ) -> Result<(Shard, OpenReport), IndexError> {
        for p in &points {
            check_dimension(&params, &p.vector)?;
        }
        if let Some(graph) = dump_dir.and_then(|d| load_dump(&params, d)) {
            let in_graph: HashSet<PointId> = graph
                .get_point_indexation()
                .into_iter()
                .map(|p| p.get_origin_id() as PointId)
                .collect();
            let live_ids: HashSet<PointId> = points.iter().map(|p| p.id).collect();
            let tombstoned = in_graph.difference(&live_ids).count();
            let missing: Vec<&Point> = points
                .iter()
                .filter(|p| !in_graph.contains(&p.id))
                .collect();
            for p in &missing {
                graph.insert_slice((&p.vector, p.id as usize));
            }
            let report = OpenReport {
                reloaded: true,
                inserted: missing.len(),
                tombstoned,
            };
            let shard = Shard::from_parts(params, graph, points, tombstoned);
            return Ok((shard, report));
        }
        let graph = build_graph(&params, &points, true);
        let report = OpenReport {
            reloaded: false,
            inserted: points.len(),
            tombstoned: 0,
        };
        Ok((Shard::from_parts(params, graph, points, 0), report))
    }

    fn from_parts(
        params: ShardParams,
        graph: Graph,
        points: Vec<Point>,
        tombstones: usize,
    ) -> Shard {
        let live = points
            .into_iter()
            .map(|p| {
                (
                    p.id,
                    Entry {
                        vector: p.vector.into_boxed_slice(),
                        payload: p.payload,
                    },
                )
            })
            .collect();
        Shard {
            params,
            graph: RwLock::new(graph),
            table: RwLock::new(Table { live, tombstones }),
            writer: Mutex::new(()),
        }
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
        {
            let mut t = self.table.write();
            for p in &points {
                t.live.insert(
                    p.id,
                    Entry {
                        vector: p.vector.clone().into_boxed_slice(),
                        payload: p.payload.clone(),
                    },
                );
            }
        }
        let graph = self.graph.read();
        for p in &points {
            graph.insert_slice((&p.vector, p.id as usize));
        }
        Ok(())
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
    pub fn compact(&self) -> usize {
        let _w = self.writer.lock();
        let (points, tombstones) = {
            let t = self.table.read();
            let pts: Vec<(PointId, Box<[f32]>)> = t
                .live
                .iter()
                .map(|(id, e)| (*id, e.vector.clone()))
                .collect();
            (pts, t.tombstones)
        };
        let fresh = new_graph(&self.params, points.len());
        for (id, v) in &points {
            fresh.insert_slice((v, *id as usize));
        }
        *self.graph.write() = fresh;
        self.table.write().tombstones = 0;
        tombstones
    }

    /// Write the graph to `dir` (replaced atomically: a crash leaves the old dump or none).
    pub fn dump(&self, dir: &Path) -> Result<(), IndexError> {
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
            format: 1,
            dimension: self.params.dimension,
            m: self.params.m,
            points: graph.get_nb_point(),
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

    /// k nearest live points to the query, best first.
    pub fn search(&self, req: &SearchRequest<'_>) -> Result<Vec<Hit>, IndexError> {
        check_dimension(&self.params, req.vector)?;
        if req.k == 0 {
            return Ok(Vec::new());
        }
        let table = self.table.read();
        let live = &table.live;
        let filter = req.filter.filter(|f| !f.is_empty());
        let exact_mode = req.mode == SearchMode::Exact;
        let ef = req.ef.unwrap_or(self.params.ef_search).max(req.k);

        let candidates: Option<Vec<PointId>> = filter.map(|f| {
            let mut ids: Vec<PointId> = live
                .iter()
                .filter(|(_, e)| f.matches(&e.payload.doc_id, &e.payload.metadata))
                .map(|(id, _)| *id)
                .collect();
            ids.sort_unstable();
            ids
        });
        let scored: Vec<(PointId, f32)> = match candidates {
            Some(ids) => {
                let plan = self.params.filtered_plan(ids.len(), live.len(), ef);
                if exact_mode || plan == FilteredPlan::Scan {
                    exact_top_k(
                        req.vector,
                        req.k,
                        ids.iter().filter_map(|id| live.get_key_value(id)),
                    )
                } else {
                    let FilteredPlan::Graph { beam } = plan else {
                        unreachable!("a scan plan is handled above")
                    };
                    let allowed: Vec<usize> = ids.iter().map(|&id| id as usize).collect();
                    self.graph_search(req.vector, req.k, beam, Some(&allowed))
                }
            }
            None if exact_mode || live.len() <= self.params.exact_below => {
                exact_top_k(req.vector, req.k, live.iter())
            }
            None if table.tombstones > 0 => {
                let is_live = |id: &usize| live.contains_key(&(*id as PointId));
                self.graph_search(req.vector, req.k, ef, Some(&is_live))
            }
            None => self.graph_search(req.vector, req.k, ef, None),
        };
        Ok(scored
            .into_iter()
            .filter_map(|(id, score)| {
                live.get(&id).map(|e| Hit {
                    id,
                    score,
                    payload: e.payload.clone(),
                })
            })
            .collect())
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

fn exact_top_k<'a>(
    q: &[f32],
    k: usize,
    points: impl Iterator<Item = (&'a PointId, &'a Entry)>,
) -> Vec<(PointId, f32)> {
    let mut scored: Vec<(PointId, f32)> = points.map(|(id, e)| (*id, dot(q, &e.vector))).collect();
    let by_score = |a: &(PointId, f32), b: &(PointId, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if scored.len() > k {
        scored.select_nth_unstable_by(k - 1, by_score);
        scored.truncate(k);
    }
    scored.sort_by(by_score);
    scored
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

/// Reload a dumped graph if it exists and fits `params`. Any problem means "rebuild instead".
fn load_dump(params: &ShardParams, dir: &Path) -> Option<Graph> {
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).ok()?).ok()?;
    if manifest.dimension != params.dimension || manifest.m != params.m || manifest.format != 1 {
        tracing::info!(dir = %dir.display(), "index dump does not match the shard parameters; rebuilding");
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
