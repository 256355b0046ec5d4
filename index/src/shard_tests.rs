use super::*;
use crate::normalize;
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
        })
        .unwrap()
}

fn recall(shard: &Shard, queries: &[Vec<f32>], filter: Option<&Filter>) -> f64 {
    let mut found = 0;
    let mut total = 0;
    for q in queries {
        let exact: HashSet<_> = ids(&search(shard, q, 10, filter, SearchMode::Exact))
            .into_iter()
            .collect();
        let approx = search(shard, q, 10, filter, SearchMode::Auto);
        if let Some(f) = filter {
            assert!(approx
                .iter()
                .all(|h| f.matches(&h.payload.doc_id, &h.payload.metadata)));
        }
        found += approx.iter().filter(|h| exact.contains(&h.id)).count();
        total += exact.len();
    }
    found as f64 / total as f64
}

fn queries(n: usize) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(99);
    (0..n).map(|_| random_unit(&mut rng)).collect()
}

#[test]
fn graph_search_recall_and_exact_order() {
    let (shard, report) = Shard::open(params(), points(3000, 1), None).unwrap();
    assert!(!report.reloaded);
    let qs = queries(50);
    let r = recall(&shard, &qs, None);
    assert!(r >= 0.95, "recall {r}");
    let hits = search(&shard, &qs[0], 10, None, SearchMode::Exact);
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    // a stored point finds itself first with score ~1
    let p = &points(3000, 1)[17];
    let top = search(&shard, &p.vector, 1, None, SearchMode::Auto);
    assert_eq!(top[0].id, 17);
    assert!((top[0].score - 1.0).abs() < 1e-4);
}

#[test]
fn deleted_points_are_never_returned_and_compaction_drops_them() {
    let pts = points(2000, 2);
    let (shard, _) = Shard::open(params(), pts.clone(), None).unwrap();
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
    let removed = shard.compact();
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
    assert!(recall(&shard, &queries(30), None) >= 0.95);
}

#[test]
fn filtered_search_keeps_recall_when_selective_and_when_broad() {
    let (shard, _) = Shard::open(params(), points(3000, 3), None).unwrap();
    let qs = queries(30);
    // 1% of points: exact scan over the matches
    let selective = Filter::from_json(&json!({"metadata": {"bucket": 7}})).unwrap();
    assert_eq!(recall(&shard, &qs, Some(&selective)), 1.0);
    let hits = search(&shard, &qs[0], 10, Some(&selective), SearchMode::Auto);
    assert_eq!(hits.len(), 10);
    // 50% of 3,000 points: scanning the 1,500 matches is cheaper than a filtered graph search
    let broad = Filter::from_json(&json!({"metadata": {"even": true}})).unwrap();
    assert_eq!(recall(&shard, &qs, Some(&broad)), 1.0);
    // by document id
    let by_doc = Filter::from_json(&json!({"document_id": ["doc-5", "doc-9"]})).unwrap();
    let hits = search(&shard, &qs[0], 10, Some(&by_doc), SearchMode::Auto);
    let mut got = ids(&hits);
    got.sort();
    assert_eq!(got, vec![15, 16, 17, 27, 28, 29]);
}

#[test]
fn broad_filters_on_large_shards_search_the_graph() {
    // m 8: 2,500 matches are more than a beam of 128 costs (128 × 16 distances)
    let p = ShardParams { m: 8, ..params() };
    let (shard, _) = Shard::open(p, points(5_000, 8), None).unwrap();
    let broad = Filter::from_json(&json!({"metadata": {"even": true}})).unwrap();
    assert_eq!(
        p.filtered_plan(2_500, 5_000, p.ef_search),
        FilteredPlan::Graph { beam: 128 }
    );
    let r = recall(&shard, &queries(30), Some(&broad));
    assert!(r >= 0.9, "recall {r}");
}

#[test]
fn filtered_plan_scans_when_cheaper() {
    let p = ShardParams::new(DIM); // m 16, ef 64, exact below 1,000, fraction 0.1
    assert_eq!(p.filtered_plan(900, 1_000_000, 64), FilteredPlan::Scan); // few matches
    assert_eq!(p.filtered_plan(90_000, 1_000_000, 64), FilteredPlan::Scan); // 9%
                                                                            // 15% of 10,000: a beam of 426 would cost ~13,600 distances, the scan 1,500
    assert_eq!(p.filtered_plan(1_500, 10_000, 64), FilteredPlan::Scan);
    // 15% of a million: the graph, with the beam widened to 426
    assert_eq!(
        p.filtered_plan(150_000, 1_000_000, 64),
        FilteredPlan::Graph { beam: 426 }
    );
    // 3% (under the 5% floor) and above the scan fraction when it is set low: beam capped at 10×
    let low = ShardParams {
        exact_filter_fraction: 0.01,
        ..p
    };
    assert_eq!(
        low.filtered_plan(30_000, 1_000_000, 64),
        FilteredPlan::Graph { beam: 640 }
    );
}

#[test]
fn insert_after_open_and_dimension_checks() {
    let shard = Shard::new(params());
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
            ef: None
        })
        .is_err());
}

#[test]
fn dump_and_reload_applies_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("shard");
    let pts = points(1500, 5);
    let (shard, _) = Shard::open(params(), pts.clone(), None).unwrap();
    shard.dump(&dump).unwrap();
    shard.dump(&dump).unwrap(); // replacing an existing dump works
    drop(shard);

    // after the dump: 100 points deleted, 200 new ones
    let mut now: Vec<Point> = pts[100..].to_vec();
    let extra = points(1700, 6).split_off(1500);
    now.extend(extra);
    let (shard, report) = Shard::open(params(), now.clone(), Some(&dump)).unwrap();
    assert_eq!(
        report,
        OpenReport {
            reloaded: true,
            inserted: 200,
            tombstoned: 100
        }
    );
    assert_eq!(shard.stats().live_points, 1600);
    for p in now.iter().step_by(97) {
        let top = search(&shard, &p.vector, 1, None, SearchMode::Auto);
        assert_eq!(top[0].id, p.id);
    }
    for p in pts[..100].iter() {
        let hits = search(&shard, &p.vector, 5, None, SearchMode::Auto);
        assert!(hits.iter().all(|h| h.id >= 100 || h.id >= 1500));
    }

    // a corrupt dump is rebuilt, not trusted
    std::fs::write(dump.join("graph.hnsw.graph"), b"garbage").unwrap();
    let (_, report) = Shard::open(params(), now, Some(&dump)).unwrap();
    assert!(!report.reloaded);
}
