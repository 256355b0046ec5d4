use super::*;
use crate::{dot, normalize};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;

const DIM: usize = 32;

fn random_unit(rng: &mut StdRng) -> Vec<f32> {
    let mut v: Vec<f32> = (0..DIM).map(|_| rng.gen_range(-1.0..1.0)).collect();
    normalize(&mut v);
    v
}

fn points(n: usize, seed: u64) -> Vec<Point> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n as u64)
        .map(|id| Point {
            id,
            vector: random_unit(&mut rng),
            payload: Arc::new(Payload {
                doc_id: format!("doc-{}", id / 3),
                metadata: json!({"bucket": id % 100, "even": id % 2 == 0})
                    .as_object()
                    .unwrap()
                    .clone(),
            }),
            // words for keyword search: its bucket and parity, and one of five colours
            text: format!(
                "bucket{} {} {}",
                id % 100,
                if id % 2 == 0 { "even" } else { "odd" },
                ["red", "green", "blue", "cyan", "magenta"][id as usize % 5]
            ),
        })
        .collect()
}

fn params() -> ShardParams {
    ShardParams {
        exact_below: 100,
        ..ShardParams::new(DIM)
    }
}

fn ids(hits: &[Hit]) -> Vec<PointId> {
    hits.iter().map(|h| h.id).collect()
}

fn scored(hits: &[Hit]) -> Vec<(PointId, f32)> {
    hits.iter().map(|h| (h.id, h.score)).collect()
}

fn search(
    shard: &Shard,
    q: &[f32],
    k: usize,
    filter: Option<&Filter>,
    mode: SearchMode,
) -> Vec<Hit> {
    shard
        .search(&SearchRequest {
            vector: q,
            k,
            filter,
            mode,
            ef: None,
            max_scan: None,
        })
        .unwrap()
}

/// The true 10 nearest of `points` (brute force, outside the shard) that pass `filter`.
fn truth(points: &[Point], q: &[f32], filter: Option<&Filter>) -> Vec<PointId> {
    let mut scored: Vec<(PointId, f32)> = points
        .iter()
        .filter(|p| filter.is_none_or(|f| f.matches(&p.payload.doc_id, &p.payload.metadata)))
        .map(|p| (p.id, dot(q, &p.vector)))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.into_iter().take(10).map(|(id, _)| id).collect()
}

/// Recall@10 of the shard's search in `mode` against brute force over `points` (the shard's
/// live points).
fn recall_in(
    shard: &Shard,
    points: &[Point],
    queries: &[Vec<f32>],
    filter: Option<&Filter>,
    mode: SearchMode,
) -> f64 {
    let mut found = 0;
    let mut total = 0;
    for q in queries {
        let want: HashSet<PointId> = truth(points, q, filter).into_iter().collect();
        let got = search(shard, q, 10, filter, mode);
        assert_eq!(got.len(), want.len(), "a search returned too few hits");
        if let Some(f) = filter {
            assert!(got
                .iter()
                .all(|h| f.matches(&h.payload.doc_id, &h.payload.metadata)));
        }
        found += got.iter().filter(|h| want.contains(&h.id)).count();
        total += want.len();
    }
    found as f64 / total as f64
}

fn recall(shard: &Shard, points: &[Point], queries: &[Vec<f32>], filter: Option<&Filter>) -> f64 {
    recall_in(shard, points, queries, filter, SearchMode::Auto)
}

fn queries(n: usize) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(99);
    (0..n).map(|_| random_unit(&mut rng)).collect()
}

#[test]
fn graph_search_recall_and_exact_order() {
    let pts = points(3000, 1);
    let (shard, report) = Shard::open(params(), pts.clone(), None, 0).unwrap();
    assert!(!report.reloaded);
    let qs = queries(50);
    let r = recall(&shard, &pts, &qs, None);
    assert!(r >= 0.95, "recall {r}");
    assert_eq!(recall_in(&shard, &pts, &qs, None, SearchMode::Exact), 1.0);
    let hits = search(&shard, &qs[0], 10, None, SearchMode::Exact);
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    // a stored point finds itself first with score ~1
    let p = &points(3000, 1)[17];
    let top = search(&shard, &p.vector, 1, None, SearchMode::Auto);
    assert_eq!(top[0].id, 17);
    assert!((top[0].score - 1.0).abs() < 1e-4);
}

#[test]
fn memory_counts_the_vectors_links_and_keyword_index_a_shard_holds() {
    let empty = Shard::open(params(), Vec::new(), None, 0)
        .unwrap()
        .0
        .memory();
    assert_eq!(empty.keyword, 0, "no text yet: no keyword index");
    let n = 3000usize;
    let (shard, _) = Shard::open(params(), points(n, 3), None, 0).unwrap();
    let m = shard.memory();
    // every vector (DIM floats, a whole number of 8-float lanes here), in whole segments
    assert!(m.vectors as usize >= n * DIM * 4, "{m:?}");
    assert!((m.vectors as usize) < 4 * n * DIM * 4, "{m:?}");
    // the bottom layer's [count, 2·m neighbours] and an 8-byte id per node at least, plus the
    // upper layers' blocks (about one node in m has one)
    let bottom = n * (2 * shard.params().m + 1) * 4 + n * 8;
    assert!(m.graph as usize > bottom, "{m:?}");
    assert!((m.graph as usize) < 4 * bottom, "{m:?}");
    assert!(m.keyword > 0, "{m:?}");
    // more points, more memory
    shard.insert(points(2 * n, 3).split_off(n)).unwrap();
    let more = shard.memory();
    assert!(
        more.graph > m.graph && more.vectors >= m.vectors,
        "{more:?}"
    );
}

#[test]
fn a_shard_with_its_vectors_on_disk_answers_as_one_with_them_on_the_heap() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("vectors");
    let pts = points(3000, 21);
    let qs = queries(40);
    for quantization in [Quantization::None, Quantization::Int8] {
        let heap_params = ShardParams {
            quantization,
            ..params()
        };
        let disk_params = ShardParams {
            vectors_dir: Some(files.clone()),
            ..heap_params.clone()
        };
        let (heap, _) = Shard::open(heap_params, pts.clone(), None, 0).unwrap();
        let (disk, _) = Shard::open(disk_params.clone(), pts.clone(), None, 0).unwrap();
        // (graphs built on several threads differ from build to build: exact scans answer
        // alike, graph searches find as much)
        let same = |disk: &Shard, live: &[Point], what: &str| {
            for q in &qs {
                let (a, b) = (
                    search(&heap, q, 10, None, SearchMode::Exact),
                    search(disk, q, 10, None, SearchMode::Exact),
                );
                assert_eq!(scored(&a), scored(&b), "{what}, {quantization:?}");
            }
            let (a, b) = (
                recall(&heap, live, &qs, None),
                recall(disk, live, &qs, None),
            );
            assert!(
                b >= 0.95 && b >= a - 0.02,
                "{what}, {quantization:?}: {b} against {a}"
            );
        };
        same(&disk, &pts, "built");
        // the vectors are in the mapped file, not on the heap (only the codes, if any, are)
        let (h, d) = (heap.memory(), disk.memory());
        assert_eq!((h.vectors_mapped, h.graph), (0, d.graph), "{h:?} {d:?}");
        // (3,000 nodes: the segments of 1,024 and 2,048)
        assert_eq!(d.vectors_mapped, 4 * 1024 * (1 + 2) * DIM as u64);
        // (a heap segment has 32 bytes more, to align it; there are two)
        let moved = |heap: ShardMemory, disk: ShardMemory| {
            let slack = 2 * 32;
            assert_eq!(
                heap.vectors,
                disk.vectors + disk.vectors_mapped + slack,
                "{heap:?} {disk:?}"
            );
        };
        moved(h, d);
        // a dump read back maps its vectors too; compaction moves them to a new file
        let dump = dir.path().join(format!("dump-{quantization:?}"));
        disk.dump(&dump, 5).unwrap();
        let (reloaded, report) =
            Shard::open(disk_params.clone(), pts.clone(), Some(&dump), 5).unwrap();
        assert!(report.reloaded, "{report:?}");
        assert_eq!(reloaded.memory(), d);
        same(&reloaded, &pts, "reloaded");
        for q in &qs {
            let (a, b) = (
                search(&disk, q, 10, None, SearchMode::Auto),
                search(&reloaded, q, 10, None, SearchMode::Auto),
            );
            assert_eq!(
                scored(&a),
                scored(&b),
                "the same graph, reloaded, {quantization:?}"
            );
        }
        let gone: Vec<PointId> = (0..3000).step_by(3).collect();
        for shard in [&heap, &reloaded] {
            shard.delete(&gone);
            shard.compact().unwrap();
        }
        let live: Vec<Point> = pts.iter().filter(|p| p.id % 3 != 0).cloned().collect();
        same(&reloaded, &live, "compacted");
        moved(heap.memory(), reloaded.memory());
    }
    // the files have no names: nothing is left in their folder, before or after the shards go
    assert_eq!(std::fs::read_dir(&files).unwrap().count(), 0);
    // a folder that cannot be made is an error, not a shard
    let blocked = dir.path().join("a-file");
    std::fs::write(&blocked, b"").unwrap();
    let bad = ShardParams {
        vectors_dir: Some(blocked.join("vectors")),
        ..params()
    };
    let err = Shard::open(bad.clone(), pts.clone(), None, 0)
        .err()
        .unwrap();
    assert!(err.to_string().contains("a file for the vectors"), "{err}");
    // and a sound dump that finds no room for its vectors is kept for a later load, not
    // discarded as a damaged one
    let dump = dir.path().join("dump-kept");
    let (heap, _) = Shard::open(params(), pts.clone(), None, 0).unwrap();
    heap.dump(&dump, 5).unwrap();
    assert!(Shard::open(bad, pts.clone(), Some(&dump), 5).is_err());
    assert!(dump.join(MANIFEST).exists(), "the dump was removed");
    let (_, report) = Shard::open(params(), pts, Some(&dump), 5).unwrap();
    assert!(report.reloaded, "{report:?}");
}

#[test]
fn deleted_points_are_never_returned_and_compaction_drops_them() {
    let pts = points(2000, 2);
    let (shard, _) = Shard::open(params(), pts.clone(), None, 0).unwrap();
    let deleted: Vec<PointId> = (0..2000).filter(|i| i % 3 == 0).collect();
    assert_eq!(shard.delete(&deleted), deleted.len());
    assert_eq!(shard.delete(&deleted), 0, "second delete is a no-op");
    let gone: HashSet<PointId> = deleted.iter().copied().collect();
    for mode in [SearchMode::Auto, SearchMode::Exact] {
        // query with the deleted vectors themselves: the most likely to come back
        for id in deleted.iter().take(50) {
            let hits = search(&shard, &pts[*id as usize].vector, 10, None, mode);
            assert_eq!(hits.len(), 10);
            assert!(hits.iter().all(|h| !gone.contains(&h.id)));
        }
    }
    assert!(shard.needs_compaction());
    let removed = shard.compact().unwrap();
    assert_eq!(removed, deleted.len());
    let stats = shard.stats();
    assert_eq!(stats.tombstones, 0);
    assert_eq!(stats.graph_points, 2000 - deleted.len());
    assert!(!shard.needs_compaction());
    for id in deleted.iter().take(50) {
        let hits = search(
            &shard,
            &pts[*id as usize].vector,
            10,
            None,
            SearchMode::Auto,
        );
        assert!(hits.iter().all(|h| !gone.contains(&h.id)));
    }
    let live: Vec<Point> = pts
        .iter()
        .filter(|p| !gone.contains(&p.id))
        .cloned()
        .collect();
    assert!(recall(&shard, &live, &queries(30), None) >= 0.95);
    // exact scans read each vector from the new graph: every point finds itself
    assert_eq!(
        recall_in(&shard, &live, &queries(20), None, SearchMode::Exact),
        1.0
    );
    for p in live.iter().step_by(50) {
        let top = search(&shard, &p.vector, 1, None, SearchMode::Exact);
        assert_eq!(top[0].id, p.id);
        assert!((top[0].score - 1.0).abs() < 1e-4);
    }
    // and points inserted after the compaction too
    let more: Vec<Point> = points(2100, 12).split_off(2000);
    shard.insert(more.clone()).unwrap();
    for p in &more {
        let top = search(&shard, &p.vector, 1, None, SearchMode::Exact);
        assert_eq!((top[0].id, top.len()), (p.id, 1));
    }
}

#[test]
fn filtered_search_keeps_recall_when_selective_and_when_broad() {
    let pts = points(3000, 3);
    let (shard, _) = Shard::open(params(), pts.clone(), None, 0).unwrap();
    let qs = queries(30);
    // 1% of points: exact scan over the matches
    let selective = Filter::from_json(&json!({"metadata": {"bucket": 7}})).unwrap();
    assert_eq!(recall(&shard, &pts, &qs, Some(&selective)), 1.0);
    assert_eq!(shard.matching(&selective).len(), 30);
    // 50% of 3,000 points: scanning the 1,500 matches is cheaper than a filtered graph search
    let broad = Filter::from_json(&json!({"metadata": {"even": true}})).unwrap();
    assert_eq!(recall(&shard, &pts, &qs, Some(&broad)), 1.0);
    assert_eq!(shard.matching(&broad).len(), 1500);
    // nothing matches: no hits at all
    let none = Filter::from_json(&json!({"metadata": {"bucket": 1000}})).unwrap();
    assert!(search(&shard, &qs[0], 10, Some(&none), SearchMode::Auto).is_empty());
    // by document id
    let by_doc = Filter::from_json(&json!({"document_id": ["doc-5", "doc-9"]})).unwrap();
    let hits = search(&shard, &qs[0], 10, Some(&by_doc), SearchMode::Auto);
    let mut got = ids(&hits);
    got.sort();
    assert_eq!(got, vec![15, 16, 17, 27, 28, 29]);
}

/// With int8 codes an automatic scan (a selective filter, a small shard) reads the codes and
/// re-scores its best `ef` from the vectors: its hits carry exact scores and find what the exact
/// scan does; an exact search still scans the vectors.
#[test]
fn quantized_scans_read_the_codes_and_rescore() {
    let pts = points(3000, 21);
    let int8 = ShardParams {
        quantization: Quantization::Int8,
        ..params()
    };
    let (shard, _) = Shard::open(int8, pts.clone(), None, 0).unwrap();
    let (float, _) = Shard::open(params(), pts.clone(), None, 0).unwrap();
    let selective = Filter::from_json(&json!({"metadata": {"bucket": 7}})).unwrap();
    let broad = Filter::from_json(&json!({"metadata": {"even": true}})).unwrap();
    let qs = queries(30);
    for filter in [&selective, &broad] {
        assert_eq!(
            shard
                .params
                .filtered_plan(shard.matching(filter).len(), 3000, 64),
            FilteredPlan::Scan
        );
        let mut found = 0;
        for q in &qs {
            let exact = search(&float, q, 10, Some(filter), SearchMode::Exact);
            assert_eq!(
                scored(&search(&shard, q, 10, Some(filter), SearchMode::Exact)),
                scored(&exact)
            );
            let hits = search(&shard, q, 10, Some(filter), SearchMode::Auto);
            assert_eq!(hits.len(), 10);
            for h in &hits {
                let want = dot(q, &pts[h.id as usize].vector);
                assert!((h.score - want).abs() < 1e-5, "{} against {want}", h.score);
            }
            found += ids(&hits)
                .iter()
                .filter(|id| ids(&exact).contains(id))
                .count();
        }
        let r = found as f64 / (10 * qs.len()) as f64;
        assert!(r >= 0.97, "recall {r}");
    }

    // Near ties the codes misorder (clusters of 20 points closer together than the codes tell
    // apart), in a shard small enough to be scanned: a scan whose ef is k answers the codes' own
    // top k, and a deeper ef re-scores enough to find the exact top k.
    let mut rng = StdRng::seed_from_u64(22);
    let centres: Vec<Vec<f32>> = (0..100).map(|_| random_unit(&mut rng)).collect();
    let close: Vec<Point> = (0..2000u64)
        .map(|id| {
            let mut vector: Vec<f32> = centres[id as usize % 100]
                .iter()
                .map(|x| x + rng.gen_range(-0.01..0.01))
                .collect();
            normalize(&mut vector);
            Point {
                id,
                vector,
                ..pts[0].clone()
            }
        })
        .collect();
    let scanned = ShardParams {
        exact_below: 10_000,
        ..params()
    };
    let int8 = ShardParams {
        quantization: Quantization::Int8,
        ..scanned.clone()
    };
    let (shard, _) = Shard::open(int8, close.clone(), None, 0).unwrap();
    let (float, _) = Shard::open(scanned, close, None, 0).unwrap();
    let recall_at = |ef: usize| {
        let mut found = 0;
        for q in &centres[..30] {
            let exact = ids(&search(&float, q, 10, None, SearchMode::Exact));
            let got = shard
                .search(&SearchRequest {
                    vector: q,
                    k: 10,
                    filter: None,
                    mode: SearchMode::Auto,
                    ef: Some(ef),
                    max_scan: None,
                })
                .unwrap();
            found += ids(&got).iter().filter(|id| exact.contains(id)).count();
        }
        found as f64 / 300.0
    };
    let (shallow, deep) = (recall_at(10), recall_at(64));
    eprintln!("recall: {shallow} at ef 10, {deep} at ef 64");
    assert!(deep >= 0.99, "recall {deep} at ef 64");
    assert!(
        deep >= shallow + 0.05,
        "{shallow} at ef 10, {deep} at ef 64: the codes were not what was scanned"
    );
}

#[test]
fn broad_filters_on_large_shards_search_the_graph() {
    // m 8, the walk's link reads not counted: 2,500 matches of 32 dimensions cost more to scan
    // than a walk's 64 · 8 · 32 floats
    let p = ShardParams {
        m: 8,
        walk_step_floats: 0,
        ..params()
    };
    let pts = points(5_000, 8);
    let (shard, _) = Shard::open(p.clone(), pts.clone(), None, 0).unwrap();
    let broad = Filter::from_json(&json!({"metadata": {"even": true}})).unwrap();
    assert_eq!(
        p.filtered_plan(2_500, 5_000, p.ef_search),
        FilteredPlan::Graph { beam: 64 }
    );
    let r = recall(&shard, &pts, &queries(30), Some(&broad));
    assert!(r >= 0.9, "recall {r}");
}

#[test]
fn filtered_plan_scans_when_cheaper() {
    // m 16, ef 64, exact below 1,000, fraction 0.01; the walk as dear as 870 floats a step
    let p = ShardParams::new(384);
    let low = ShardParams::new(50);
    let int8 = ShardParams {
        quantization: Quantization::Int8,
        ..ShardParams::new(384)
    };
    let graph = FilteredPlan::Graph { beam: 64 };
    let scan = FilteredPlan::Scan;
    for (params, matches, live, ef, want, why) in [
        (&p, 900, 1_000_000, 64, scan, "few matches"),
        (&p, 9_000, 1_000_000, 64, scan, "0.9%: too sparse"),
        // 384 dimensions: a walk costs as much as scanning 64 · 16 · 1,254 / 384 = 3,344 matches
        (&p, 3_000, 10_000, 64, scan, "cheaper to scan"),
        (&p, 10_000, 100_000, 64, graph, "cheaper to walk"),
        (&p, 100_000, 1_000_000, 64, graph, "cheaper to walk"),
        (&p, 4_000, 100_000, 64, graph, "cheaper to walk"),
        // a wider beam costs the walk more
        (&p, 5_000, 100_000, 128, scan, "a wide beam"),
        // 50 dimensions: scanning 10,000 matches reads less than a walk's links (18,800)
        (&low, 10_000, 100_000, 64, scan, "short vectors"),
        (
            &low,
            20_000,
            100_000,
            64,
            graph,
            "short vectors, more matches",
        ),
        // int8 codes: a scan reads 0.6 of a float per dimension, the walk a quarter, so a walk
        // costs as much as scanning 64 · 16 · (96 + 870) / 230.4 = 4,293 matches
        (&int8, 4_000, 100_000, 64, scan, "codes, cheaper to scan"),
        (&int8, 4_600, 100_000, 64, graph, "codes, cheaper to walk"),
    ] {
        assert_eq!(
            params.filtered_plan(matches, live, ef),
            want,
            "{why}: {matches} of {live} at ef {ef}, {} dimensions, {:?}",
            params.dimension,
            params.quantization
        );
    }
}

#[test]
fn insert_after_open_and_dimension_checks() {
    let shard = Shard::new(params()).unwrap();
    let pts = points(500, 4);
    shard.insert(pts[..250].to_vec()).unwrap();
    shard.insert(pts[250..].to_vec()).unwrap();
    shard.insert(pts[..10].to_vec()).unwrap(); // known ids are ignored
    assert_eq!(shard.stats().live_points, 500);
    assert_eq!(shard.stats().graph_points, 500);
    assert!(shard.contains(499));
    let bad = Point {
        id: 1000,
        vector: vec![1.0; DIM + 1],
        payload: pts[0].payload.clone(),
        text: String::new(),
    };
    assert!(matches!(
        shard.insert(vec![bad]),
        Err(IndexError::Dimension { .. })
    ));
    let q = vec![0.0; 3];
    assert!(shard
        .search(&SearchRequest {
            vector: &q,
            k: 1,
            filter: None,
            mode: SearchMode::Auto,
            ef: None,
            max_scan: None,
        })
        .is_err());
}

#[test]
fn exact_search_refuses_to_scan_more_than_allowed() {
    let pts = points(2000, 9);
    let (shard, _) = Shard::open(params(), pts.clone(), None, 0).unwrap();
    let q = &pts[3].vector;
    let req = |filter, max_scan| SearchRequest {
        vector: q,
        k: 5,
        filter,
        mode: SearchMode::Exact,
        ef: None,
        max_scan,
    };
    let e = shard.search(&req(None, Some(1000))).unwrap_err();
    assert!(
        matches!(
            e,
            IndexError::ScanTooLarge {
                points: 2000,
                limit: 1000
            }
        ),
        "{e}"
    );
    // a filter that leaves few enough points makes it affordable
    let f = Filter::from_json(&json!({"metadata": {"even": true}})).unwrap();
    let hits = shard.search(&req(Some(&f), Some(1000))).unwrap();
    assert_eq!(ids(&hits), truth(&pts, q, Some(&f))[..5].to_vec());
    assert!(shard.search(&req(None, None)).is_ok());
    // the automatic plan is never refused
    let auto = SearchRequest {
        mode: SearchMode::Auto,
        ..req(None, Some(10))
    };
    assert_eq!(shard.search(&auto).unwrap().len(), 5);
}

/// `n` points (seed `seed`) dumped to `dump` at log index 10, and the points since: the first
/// `deleted` gone, `added` new ones (seed `seed + 1`).
fn dumped_then_changed(
    dump: &std::path::Path,
    n: usize,
    seed: u64,
    deleted: usize,
    added: usize,
) -> (Vec<Point>, Vec<Point>) {
    let pts = points(n, seed);
    let (shard, _) = Shard::open(params(), pts.clone(), None, 10).unwrap();
    shard.dump(dump, 10).unwrap();
    shard.dump(dump, 10).unwrap(); // replacing an existing dump works
    drop(shard);
    let mut now: Vec<Point> = pts[deleted..].to_vec();
    now.extend(points(n + added, seed + 1).split_off(n));
    (pts, now)
}

#[test]
fn dump_and_reload_applies_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("shard");
    // after the dump: 100 points deleted, 200 new ones
    let (pts, now) = dumped_then_changed(&dump, 1500, 5, 100, 200);
    let (shard, report) = Shard::open(params(), now.clone(), Some(&dump), 12).unwrap();
    assert_eq!(
        report,
        OpenReport {
            reloaded: true,
            inserted: 200,
            tombstoned: 100,
            discarded_dump: false,
        }
    );
    assert_eq!(shard.stats().live_points, 1600);
    for p in now.iter().step_by(97) {
        for mode in [SearchMode::Auto, SearchMode::Exact] {
            let top = search(&shard, &p.vector, 1, None, mode);
            assert_eq!(top[0].id, p.id);
            assert!((top[0].score - 1.0).abs() < 1e-4);
        }
    }
    // the points deleted since the dump never come back, even queried with their own vectors
    for p in pts[..100].iter() {
        let hits = search(&shard, &p.vector, 5, None, SearchMode::Auto);
        assert_eq!(hits.len(), 5);
        assert!(hits.iter().all(|h| h.id >= 100), "{:?}", ids(&hits));
    }
    drop(shard);

    // a corrupt dump is rebuilt, not trusted
    std::fs::write(dump.join("graph.bin"), b"garbage").unwrap();
    let (_, report) = Shard::open(params(), now.clone(), Some(&dump), 12).unwrap();
    assert!(!report.reloaded && report.discarded_dump, "{report:?}");
    assert!(!dump.exists(), "a discarded dump is removed");
    // (the good dump again)
    let (shard, _) = Shard::open(params(), pts.clone(), None, 10).unwrap();
    shard.dump(&dump, 10).unwrap();
    drop(shard);

    // a dump ahead of the store (the store lost its last writes): rebuilt, never trusted, and
    // removed, so that it cannot be trusted later either, once the store has passed its index
    let (shard, report) = Shard::open(params(), now.clone(), Some(&dump), 9).unwrap();
    assert!(!report.reloaded && report.discarded_dump, "{report:?}");
    assert_eq!(shard.stats().graph_points, 1600);
    assert!(!dump.exists(), "a dump ahead of the store is removed");
    drop(shard);
    let (_, report) = Shard::open(params(), now, Some(&dump), 20).unwrap();
    assert!(!report.reloaded && !report.discarded_dump, "{report:?}");
}

#[test]
fn a_reload_needs_only_the_vectors_the_dump_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("shard");
    // since the dump: 50 points deleted, 100 new ones
    let (_, now) = dumped_then_changed(&dump, 1200, 7, 50, 100);
    let read = ShardDump::read(&params(), &dump, 12);
    // given as a reload reads them: no vector where the dump has one
    let given: Vec<Point> = now
        .iter()
        .map(|p| Point {
            vector: if read.has(p.id) {
                Vec::new()
            } else {
                p.vector.clone()
            },
            ..p.clone()
        })
        .collect();
    assert_eq!(given.iter().filter(|p| !p.vector.is_empty()).count(), 100);
    let (shard, report) = Shard::open_with(params(), given.clone(), read).unwrap();
    assert_eq!(
        report,
        OpenReport {
            reloaded: true,
            inserted: 100,
            tombstoned: 50,
            discarded_dump: false,
        }
    );
    assert_eq!(shard.stats().live_points, 1250);
    for p in now.iter().step_by(41) {
        let top = search(&shard, &p.vector, 1, None, SearchMode::Exact);
        assert_eq!(top[0].id, p.id);
        assert!((top[0].score - 1.0).abs() < 1e-4);
    }
    drop(shard);
    // a point the dump lacks, given without its vector: refused, not indexed wrong
    let mut lacking = given.clone();
    let new_one = lacking.iter_mut().find(|p| !p.vector.is_empty()).unwrap();
    new_one.vector = Vec::new();
    let read = ShardDump::read(&params(), &dump, 12);
    assert!(read.has_graph());
    let err = Shard::open_with(params(), lacking, read).err().unwrap();
    assert!(err.to_string().contains("without its vector"), "{err}");
    // without a usable dump, every point needs its vector
    let ahead = ShardDump::read(&params(), &dump, 9);
    assert!(!ahead.has_graph());
    assert!(!ahead.has(now[0].id));
    assert!(Shard::open_with(params(), given.clone(), ahead).is_err());
    assert!(Shard::open_with(params(), given, ShardDump::none()).is_err());
}

#[test]
fn a_dump_ahead_of_the_store_cannot_resurrect_a_reused_point_id() {
    // The dump holds point 7 with one vector; the store lost that write in a crash and later gave
    // id 7 to another chunk. Reloading must serve the store's vector for id 7.
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("shard");
    let mut pts = points(300, 11);
    let (shard, _) = Shard::open(params(), pts.clone(), None, 20).unwrap();
    shard.dump(&dump, 20).unwrap();
    drop(shard);
    let mut rng = StdRng::seed_from_u64(1234);
    pts[7].vector = random_unit(&mut rng); // the store's id 7 now
    let (shard, _) = Shard::open(params(), pts.clone(), Some(&dump), 15).unwrap();
    let top = search(&shard, &pts[7].vector, 1, None, SearchMode::Auto);
    assert_eq!(top[0].id, 7);
    assert!(
        (top[0].score - 1.0).abs() < 1e-4,
        "stale vector served for id 7"
    );
}

#[test]
fn inserts_pause_between_points_holding_no_lock_of_the_shard() {
    let shard = Shard::new(params()).unwrap();
    let pts = points(200, 9);
    shard.insert(pts[..100].to_vec()).unwrap();
    let calls = std::cell::Cell::new(0);
    let locked = std::cell::Cell::new(0);
    shard
        .insert_pausing(pts[100..].to_vec(), &|| {
            calls.set(calls.get() + 1);
            // A pause that waits for a search must find the graph and the table free.
            if shard.graph.try_write().is_none() || shard.table.try_write().is_none() {
                locked.set(locked.get() + 1);
            }
        })
        .unwrap();
    assert_eq!(calls.get(), 100, "one pause point per point");
    assert_eq!(locked.get(), 0, "a lock was held at a pause point");
    assert_eq!(shard.stats().live_points, 200);
}

#[test]
fn filters_stay_exact_as_points_come_and_go_after_their_fields_are_indexed() {
    let pts = points(3000, 21);
    let (shard, _) = Shard::open(params(), pts[..2000].to_vec(), None, 0).unwrap();
    let filters = [
        json!({"metadata": {"bucket": {"in": [3, 4, 50]}}}),
        json!({"metadata": {"bucket": {"gte": 10, "lt": 12}, "even": true}}),
        json!({"document_id": ["doc-5", "doc-700", "doc-900"]}),
        json!({"metadata": {"even": {"ne": true}, "bucket": {"lte": 1}}}),
    ]
    .map(|f| Filter::from_json(&f).unwrap());
    let want = |live: &[&Point], f: &Filter| -> Vec<PointId> {
        let mut ids: Vec<PointId> = live
            .iter()
            .filter(|p| f.matches(&p.payload.doc_id, &p.payload.metadata))
            .map(|p| p.id)
            .collect();
        ids.sort_unstable();
        ids
    };
    let before: Vec<&Point> = pts[..2000].iter().collect();
    for f in &filters {
        assert_eq!(shard.matching(f), want(&before, f));
        // the fields it uses are indexed now
        assert!(shard.table.read().index.missing(f).is_empty());
    }
    // points added and deleted after the indexes were built
    shard.insert(pts[2000..].to_vec()).unwrap();
    let deleted: Vec<PointId> = (0..3000).step_by(7).collect();
    shard.delete(&deleted);
    let live: Vec<&Point> = pts.iter().filter(|p| p.id % 7 != 0).collect();
    for f in &filters {
        let ids = want(&live, f);
        assert!(!ids.is_empty());
        assert_eq!(shard.matching(f), ids);
        let q = &pts[ids[0] as usize].vector;
        let hits = search(&shard, q, 5, Some(f), SearchMode::Auto);
        assert_eq!(hits[0].id, ids[0]);
        assert!(hits.iter().all(|h| ids.binary_search(&h.id).is_ok()));
    }
}

#[test]
fn duplicate_ids_in_a_batch_and_non_finite_vectors() {
    let pts = points(1500, 31);
    let (shard, _) = Shard::open(params(), pts[..1000].to_vec(), None, 0).unwrap();
    // the same new id twice in one batch: inserted once (the first), deleted for good by one
    // delete, and never left behind in a filter's postings
    let f = Filter::from_json(&json!({"metadata": {"bucket": 7}})).unwrap();
    assert!(!shard.matching(&f).is_empty()); // the field is indexed from here on
    let mut twice = pts[1200].clone();
    twice.id = 5000;
    let mut again = pts[1300].clone();
    again.id = 5000;
    shard.insert(vec![twice.clone(), again]).unwrap();
    assert_eq!(shard.stats().live_points, 1001);
    assert_eq!(shard.stats().graph_points, 1001);
    let hits = search(&shard, &twice.vector, 5, None, SearchMode::Auto);
    assert_eq!(hits.iter().filter(|h| h.id == 5000).count(), 1);
    assert!((hits[0].score - 1.0).abs() < 1e-4 && hits[0].id == 5000);
    assert_eq!(shard.delete(&[5000]), 1);
    assert!(!shard.matching(&f).contains(&5000));
    let hits = search(&shard, &twice.vector, 5, None, SearchMode::Auto);
    assert!(hits.iter().all(|h| h.id != 5000));
    // open keeps the first of two points with one id
    let mut dup = pts[..10].to_vec();
    let mut second = pts[500].clone();
    second.id = 3;
    dup.push(second);
    let (small, _) = Shard::open(params(), dup, None, 0).unwrap();
    assert_eq!(small.stats().live_points, 10);
    let top = search(&small, &pts[3].vector, 1, None, SearchMode::Exact);
    assert!(top[0].id == 3 && (top[0].score - 1.0).abs() < 1e-4);

    // a NaN or infinite value is refused, in a point and in a query
    for bad in [f32::NAN, f32::INFINITY] {
        let mut p = pts[1400].clone();
        p.id = 6000;
        p.vector[3] = bad;
        assert!(matches!(
            shard.insert(vec![p.clone()]),
            Err(IndexError::ZeroVector)
        ));
        assert!(Shard::open(params(), vec![p.clone()], None, 0).is_err());
        let req = SearchRequest {
            vector: &p.vector,
            k: 3,
            filter: None,
            mode: SearchMode::Auto,
            ef: None,
            max_scan: None,
        };
        assert!(matches!(shard.search(&req), Err(IndexError::ZeroVector)));
    }
    assert!(!shard.contains(6000));
}

#[test]
fn keyword_search_follows_inserts_deletes_filters_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("shard");
    let pts = points(1000, 41);
    let (shard, _) = Shard::open(params(), pts[..600].to_vec(), None, 5).unwrap();
    let kw = |shard: &Shard, q: &str, k: usize, f: Option<&Filter>| -> Vec<PointId> {
        let mut ids: Vec<PointId> = ids(&shard.keyword_search(q, k, f).unwrap());
        ids.sort_unstable();
        ids
    };
    // "bucket7" is in points 7, 107, ..., 507 of the first 600
    let want_in =
        |bucket: u64| -> Vec<PointId> { (0..1000).filter(|i| i % 100 == bucket).collect() };
    let want = |upto: u64, gone: &[u64]| -> Vec<PointId> {
        (0..upto)
            .filter(|i| i % 100 == 7 && !gone.contains(i))
            .collect()
    };
    assert_eq!(kw(&shard, "Bucket7", 50, None), want(600, &[]));
    // the BM25 order: the rarer word counts more (no point has both: bucket7, 1 in 100,
    // outranks magenta, 1 in 5)
    let top = shard.keyword_search("bucket7 magenta", 3, None).unwrap();
    assert!(top.iter().all(|h| h.id % 100 == 7), "{:?}", ids(&top));
    assert!(top.windows(2).all(|w| w[0].score >= w[1].score));
    // inserted points are found at once
    shard.insert(pts[600..].to_vec()).unwrap();
    assert_eq!(kw(&shard, "bucket7", 50, None), want(1000, &[]));
    // deleted ones never again
    shard.delete(&[107, 707]);
    assert_eq!(kw(&shard, "bucket7", 50, None), want(1000, &[107, 707]));
    // within a filter's matches only (and k is respected)
    let f = Filter::from_json(&json!({"metadata": {"bucket": {"in": [7, 8]}}, "document_id": ["doc-169", "doc-69", "doc-2"]})).unwrap();
    assert_eq!(
        kw(&shard, "bucket7 bucket8", 50, Some(&f)),
        vec![7, 8, 207, 208, 507, 508]
    );
    // a keyword search keeps its filter's matches for the vector side of the same (hybrid)
    // search, and takes the ones the vector side kept
    let g = Filter::from_json(&json!({"metadata": {"bucket": 9}})).unwrap();
    let kept = |f: &Filter| shard.filters.lock().iter().any(|(x, _)| x == f);
    assert!(!kept(&g));
    assert_eq!(kw(&shard, "bucket9", 50, Some(&g)), want_in(9));
    assert!(kept(&g));
    let vector_side = shard.matched(&f);
    assert_eq!(kw(&shard, "bucket7", 50, Some(&f)), vec![7, 207, 507]);
    assert!(Arc::ptr_eq(&vector_side, &shard.matched(&f)));
    assert_eq!(shard.keyword_search("bucket7", 2, None).unwrap().len(), 2);
    // nothing to find
    assert!(shard.keyword_search("purple", 10, None).unwrap().is_empty());
    // compaction keeps it; a reload from a dump rebuilds it from the points
    shard.compact().unwrap();
    assert_eq!(kw(&shard, "bucket7", 50, None), want(1000, &[107, 707]));
    shard.dump(&dump, 9).unwrap();
    drop(shard);
    let now: Vec<Point> = pts
        .iter()
        .filter(|p| p.id != 107 && p.id != 707 && p.id != 307)
        .cloned()
        .collect();
    let (shard, report) = Shard::open(params(), now, Some(&dump), 9).unwrap();
    assert!(report.reloaded);
    assert_eq!(
        kw(&shard, "bucket7", 50, None),
        want(1000, &[107, 707, 307])
    );
    // a shard whose points have no text has no keyword hits (and no error)
    let mut silent = pts[..50].to_vec();
    silent.iter_mut().for_each(|p| p.text.clear());
    let (shard, _) = Shard::open(params(), silent, None, 0).unwrap();
    assert!(shard
        .keyword_search("bucket7", 10, None)
        .unwrap()
        .is_empty());
}

#[test]
fn a_repeated_filter_sees_every_insert_delete_and_compaction() {
    let pts = points(12_000, 31);
    // (the walk's link reads not counted, so that the broad filter's 32-dimensional matches are
    // not scanned)
    let p = ShardParams {
        walk_step_floats: 0,
        ..params()
    };
    let (shard, _) = Shard::open(p.clone(), pts[..9_000].to_vec(), None, 0).unwrap();
    // a broad filter (the graph walks it) and a selective one (scanned)
    let broad = Filter::from_json(&json!({"metadata": {"bucket": {"lt": 60}}})).unwrap();
    let narrow = Filter::from_json(&json!({"metadata": {"bucket": 7}})).unwrap();
    let live = |gone: &HashSet<PointId>, upto: usize| -> Vec<Point> {
        pts[..upto]
            .iter()
            .filter(|p| !gone.contains(&p.id))
            .cloned()
            .collect()
    };
    let check = |live: &[Point], what: &str| {
        let plan = |f: &Filter| {
            let stats = shard.stats();
            p.filtered_plan(shard.matched(f).count, stats.live_points, 64)
        };
        assert_eq!(plan(&broad), FilteredPlan::Graph { beam: 64 }, "{what}");
        assert_eq!(plan(&narrow), FilteredPlan::Scan, "{what}");
        for f in [&broad, &narrow] {
            // each query twice: the second finds the filter's matches kept by the first
            for q in queries(20).iter().chain(queries(20).iter()) {
                let want = truth(live, q, Some(f));
                let got = ids(&search(&shard, q, 10, Some(f), SearchMode::Auto));
                let overlap = got.iter().filter(|id| want.contains(id)).count();
                assert!(overlap >= 8, "{what}: {got:?} against {want:?}");
                assert!(got.iter().all(|id| live.iter().any(|p| p.id == *id)));
            }
            // and the points' own vectors: each finds itself first
            for p in live
                .iter()
                .filter(|p| f.matches(&p.payload.doc_id, &p.payload.metadata))
                .step_by(37)
            {
                let top = search(&shard, &p.vector, 1, Some(f), SearchMode::Auto);
                assert_eq!(top[0].id, p.id, "{what}");
            }
        }
    };
    let mut gone = HashSet::new();
    check(&live(&gone, 9_000), "at first");
    // the matches are kept between searches while the shard is unchanged
    let kept = shard.matched(&broad);
    assert!(Arc::ptr_eq(&kept, &shard.matched(&broad)));
    shard.insert(pts[9_000..].to_vec()).unwrap();
    assert!(!Arc::ptr_eq(&kept, &shard.matched(&broad)));
    check(&live(&gone, 12_000), "after an insert");
    gone.extend((0..12_000).filter(|i| i % 3 == 0));
    shard.delete(&gone.iter().copied().collect::<Vec<_>>());
    check(&live(&gone, 12_000), "after a delete");
    shard.compact().unwrap();
    check(&live(&gone, 12_000), "after a compaction");
}
