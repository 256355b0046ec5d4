use super::dump::DumpError;
use super::*;
use crate::normalize;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::HashSet;
use std::sync::Arc;

/// Points around a few hundred centres (real embeddings cluster; uniform random vectors in many
/// dimensions have no near neighbours to speak of).
fn clustered(n: usize, dim: usize, seed: u64, unit: bool) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..200)
        .map(|_| (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect())
        .collect();
    (0..n)
        .map(|_| {
            let c = &centres[rng.gen_range(0..centres.len())];
            let mut v: Vec<f32> = c.iter().map(|x| x + rng.gen_range(-0.3..0.3)).collect();
            if unit {
                normalize(&mut v);
            }
            v
        })
        .collect()
}

fn params(dim: usize, metric: Metric) -> GraphParams {
    GraphParams {
        dim,
        m: 16,
        ef_construction: 100,
        metric,
        quantization: Quantization::None,
    }
}

fn exact(
    points: &[Vec<f32>],
    q: &[f32],
    k: usize,
    metric: Metric,
    skip: &HashSet<usize>,
) -> Vec<u64> {
    let mut d: Vec<(f32, usize)> = points
        .iter()
        .enumerate()
        .filter(|(i, _)| !skip.contains(i))
        .map(|(i, p)| (metric.distance(q, p), i))
        .collect();
    d.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    d.iter().take(k).map(|x| x.1 as u64).collect()
}

fn build(points: &[Vec<f32>], p: GraphParams, threads: usize) -> Graph {
    let g = Graph::new(p);
    let batch: Vec<(u64, &[f32])> = points
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u64, v.as_slice()))
        .collect();
    assert_eq!(g.insert_many(&batch, threads), 0);
    g
}

fn recall(
    g: &Graph,
    points: &[Vec<f32>],
    queries: &[Vec<f32>],
    ef: usize,
    skip: &HashSet<usize>,
) -> f64 {
    let mut found = 0;
    for q in queries {
        let truth = exact(points, q, 10, g.params.metric, skip);
        let got: Vec<u64> = g
            .search(q, 10, ef, |_| true)
            .iter()
            .map(|n| g.id(n.1))
            .collect();
        assert!(
            got.iter().all(|id| !skip.contains(&(*id as usize))),
            "a deleted node was returned"
        );
        found += got.iter().filter(|id| truth.contains(id)).count();
    }
    found as f64 / (queries.len() * 10) as f64
}

#[test]
fn finds_the_exact_neighbours_for_both_metrics_built_on_one_and_on_two_threads() {
    for (metric, unit) in [(Metric::Cosine, true), (Metric::Euclidean, false)] {
        let pts = clustered(5000, 40, 1, unit);
        let queries = clustered(200, 40, 2, unit);
        for threads in [1, 2] {
            let g = build(&pts, params(40, metric), threads);
            assert_eq!(g.len(), 5000);
            let r = recall(&g, &pts, &queries, 64, &HashSet::new());
            assert!(r >= 0.95, "{metric:?} on {threads} threads: recall {r}");
            // a wider beam finds more, and every point finds itself
            assert!(recall(&g, &pts, &queries, 256, &HashSet::new()) >= r);
            for i in (0..5000).step_by(101) {
                let top = g.search(&pts[i], 1, 64, |_| true);
                assert_eq!(
                    g.id(top[0].1),
                    i as u64,
                    "{metric:?}: point {i} did not find itself"
                );
            }
        }
    }
}

#[test]
fn links_stay_within_capacity_and_every_node_is_reachable() {
    // (two threads: an insert can reach a node that is being inserted beside it and link to it;
    // such links once got lost, leaving 6 to 9 of these nodes unreachable)
    let pts = clustered(3000, 16, 3, true);
    let g = build(&pts, params(16, Metric::Cosine), 2);
    let (entry, top_level) = unpack(g.entry.load(Acquire));
    assert_eq!(g.level(entry), top_level);
    assert!((0..3000).all(|s| g.level(s as Slot) <= top_level));
    let mut seen = vec![false; 3000];
    let mut stack = vec![entry];
    seen[entry as usize] = true;
    while let Some(s) = stack.pop() {
        let links = g.links(s, 0);
        let count = links[0].load(Acquire) as usize;
        assert!((1..=32).contains(&count), "node {s} has {count} links");
        for l in &links[1..=count] {
            let n = l.load(Acquire) as usize;
            assert!(n < 3000 && n != s as usize);
            if !seen[n] {
                seen[n] = true;
                stack.push(n as Slot);
            }
        }
        for level in 1..=g.level(s) {
            let up = g.links(s, level);
            assert_eq!(up.len(), 17);
            assert!(up[0].load(Acquire) as usize <= 16);
        }
    }
    let unreached = seen.iter().filter(|&&s| !s).count();
    assert!(
        unreached == 0,
        "{unreached} nodes cannot be reached from the entry"
    );
    // levels follow HNSW's distribution: about 1/m of the nodes above the bottom layer
    let upper = (0..3000).filter(|&s| g.level(s) > 0).count();
    assert!((100..300).contains(&upper), "{upper} nodes above layer 0");
}

#[test]
fn deleted_and_rejected_nodes_are_walked_through_but_never_returned() {
    let pts = clustered(4000, 24, 4, true);
    let queries = clustered(100, 24, 5, true);
    let g = build(&pts, params(24, Metric::Cosine), 1);
    let deleted: HashSet<usize> = (0..4000).filter(|i| i % 3 == 0).collect();
    for &i in &deleted {
        g.delete(i as Slot);
        g.delete(i as Slot); // twice counts once
    }
    assert_eq!(g.deleted(), deleted.len());
    let r = recall(&g, &pts, &queries, 64, &deleted);
    assert!(r >= 0.9, "recall with a third deleted: {r}");
    // a filter: only even slots
    for q in &queries[..20] {
        let got = g.search(q, 10, 64, |s| s % 2 == 0);
        assert_eq!(got.len(), 10);
        assert!(got.iter().all(|n| n.1 % 2 == 0 && n.1 % 3 != 0));
        assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "not best first");
    }
    // a filter nothing passes
    assert!(g.search(&queries[0], 10, 64, |_| false).is_empty());
}

#[test]
fn scan_is_exact() {
    // (a graph with int8 codes scans exactly too when asked to, and a scan by codes of a graph
    // without them is exact)
    for (quantization, by) in [
        (Quantization::None, ScanBy::Vectors),
        (Quantization::None, ScanBy::Codes { pool: 10 }),
        (Quantization::Int8, ScanBy::Vectors),
    ] {
        let pts = clustered(2000, 20, 6, false);
        let g = build(
            &pts,
            GraphParams {
                quantization,
                ..params(20, Metric::Euclidean)
            },
            2,
        );
        g.delete(7);
        let skip: HashSet<usize> = [7].into();
        for q in clustered(20, 20, 7, false) {
            let want = exact(&pts, &q, 10, Metric::Euclidean, &skip);
            let got: Vec<u64> = g.scan_all(&q, 10, by).iter().map(|n| g.id(n.1)).collect();
            assert_eq!(got, want);
            let all: Vec<Slot> = (0..2000).rev().collect();
            let got: Vec<u64> = g.scan(&q, 10, &all, by).iter().map(|n| g.id(n.1)).collect();
            assert_eq!(got, want);
        }
        assert!(g.scan_all(&pts[0], 0, by).is_empty());
        assert_eq!(g.scan(&pts[0], 5, &[3, 7, 9], by).len(), 2);
    }
}

/// A scan by int8 codes keeps the best `pool` by the codes and answers them re-scored exactly,
/// best first: the codes misorder near ties, and a pool deeper than k finds what an exact scan
/// does.
#[test]
fn scan_by_codes_rescores_its_pool() {
    // tight clusters of about 15 points, closer together than the codes can tell apart
    let mut rng = StdRng::seed_from_u64(16);
    let centres = clustered(200, 48, 15, true);
    let pts: Vec<Vec<f32>> = (0..3000)
        .map(|i| {
            let mut v: Vec<f32> = centres[i % 200]
                .iter()
                .map(|x| x + rng.gen_range(-0.01..0.01))
                .collect();
            normalize(&mut v);
            v
        })
        .collect();
    let g = build(
        &pts,
        GraphParams {
            quantization: Quantization::Int8,
            ..params(48, Metric::Cosine)
        },
        2,
    );
    g.delete(11);
    let skip: HashSet<usize> = [11].into();
    let queries: Vec<Vec<f32>> = centres[..50].to_vec();
    let all: Vec<Slot> = (0..3000).collect();
    let recall = |pool: usize| {
        let mut found = 0;
        for q in &queries {
            let want = exact(&pts, q, 10, Metric::Cosine, &skip);
            let got = g.scan(q, 10, &all, ScanBy::Codes { pool });
            assert_eq!(got.len(), 10);
            assert!(got.windows(2).all(|w| w[0] <= w[1]), "not best first");
            for n in &got {
                // exact distances, not the codes'
                let d = Metric::Cosine.distance(q, &pts[g.id(n.1) as usize]);
                assert!((n.0 - d).abs() < 1e-5, "{} is not the exact {d}", n.0);
            }
            let all_got = g.scan_all(q, 10, ScanBy::Codes { pool });
            assert_eq!(all_got, got);
            found += got.iter().filter(|n| want.contains(&g.id(n.1))).count();
        }
        found as f64 / (10 * queries.len()) as f64
    };
    // a pool smaller than k is k: the codes' own top 10
    let shallow = recall(1);
    let deep = recall(64);
    eprintln!("recall: {shallow} with a pool of k, {deep} with 64");
    assert!(deep >= 0.99, "recall {deep} with a pool of 64");
    assert!(
        deep >= shallow + 0.05,
        "{deep} against {shallow}: the pool made no difference"
    );
}

#[test]
fn searches_run_while_points_are_inserted() {
    // (with int8 codes too: a search must never read a node's codes before they are written)
    for quantization in [Quantization::None, Quantization::Int8] {
        searches_run_while_points_are_inserted_with(quantization);
    }
}

fn searches_run_while_points_are_inserted_with(quantization: Quantization) {
    let pts = clustered(6000, 32, 8, true);
    let p = GraphParams {
        quantization,
        ..params(32, Metric::Cosine)
    };
    let g = Arc::new(build(&pts[..1000], p, 1));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let searchers: Vec<_> = (0..2)
        .map(|t| {
            let (g, stop, pts) = (g.clone(), stop.clone(), pts.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Relaxed) || n < 10 {
                    let q = &pts[(n * 37 + t) % pts.len()];
                    // a full answer: a search never meets a node that is reachable but not
                    // yet linked (it once could, through the new node's top level)
                    let hits = g.search(q, 10, 32, |_| true);
                    assert_eq!(hits.len(), 10);
                    assert!(hits
                        .iter()
                        .all(|h| (h.1 as usize) < g.len() && g.is_ready(h.1)));
                    n += 1;
                }
                n
            })
        })
        .collect();
    for (i, p) in pts.iter().enumerate().skip(1000) {
        assert_eq!(g.insert(i as u64, p), i as Slot);
    }
    stop.store(true, Relaxed);
    for s in searchers {
        assert!(s.join().unwrap() >= 10);
    }
    let queries = clustered(100, 32, 9, true);
    let r = recall(&g, &pts, &queries, 64, &HashSet::new());
    assert!(r >= 0.95, "recall after concurrent inserts {r}");
}

#[test]
fn a_dump_reads_back_the_same_graph_and_damage_is_refused() {
    let pts = clustered(2500, 12, 10, true);
    let g = build(&pts, params(12, Metric::Cosine), 2);
    g.delete(5);
    let mut bytes = Vec::new();
    g.write_to(&mut bytes).unwrap();
    // read back with its vectors on the heap, and mapped from a file
    let dir = tempfile::tempdir().unwrap();
    let file = std::sync::Arc::new(MappedFile::create_in(dir.path()).unwrap());
    for file in [None, Some(file)] {
        let mapped = file.is_some();
        let back = Graph::read_from(
            params(12, Metric::Cosine),
            file,
            bytes.as_slice(),
            bytes.len() as u64,
        )
        .unwrap();
        assert_eq!(back.len(), 2500);
        assert_eq!(back.deleted(), 1);
        assert!(back.is_deleted(5));
        for q in clustered(30, 12, 11, true) {
            let a: Vec<Near> = g.search(&q, 10, 40, |_| true);
            assert_eq!(a, back.search(&q, 10, 40, |_| true), "mapped: {mapped}");
        }
        for slot in [0, 1, 1023, 1024, 2499] {
            assert_eq!(back.vector(slot), g.vector(slot), "mapped: {mapped}");
        }
        // the copy keeps growing like the original
        back.insert(9999, &pts[0]);
        assert_eq!(back.id(2500), 9999);
        assert_eq!(back.vector(2500), g.vector(0));
        let memory = back.memory_bytes();
        assert_eq!(memory.mapped > 0, mapped, "{memory:?}");
        if mapped {
            // (the segments of 1,024, 2,048 nodes, 12 floats padded to 16 each)
            assert_eq!(memory.mapped, (1024 + 2048) * 16 * 4, "{memory:?}");
            assert_eq!(memory.vectors, 0, "{memory:?}");
        }
    }
    // the mapped file has no name: nothing is left in its folder
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    let read = |b: &[u8]| Graph::read_from(params(12, Metric::Cosine), None, b, b.len() as u64);
    assert!(read(&bytes[..bytes.len() - 1]).is_err(), "truncated");
    assert!(
        read(&[bytes.as_slice(), &[0]].concat()).is_err(),
        "trailing byte"
    );
    for at in [3, 30, 40, 5000, bytes.len() / 2, bytes.len() - 3] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x40;
        assert!(read(&bad).is_err(), "flipped byte at {at}");
    }
    // a header that claims more nodes than the file holds is refused before allocating them
    let mut huge = bytes.clone();
    huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(read(&huge), Err(DumpError::Invalid(_))));
    // other parameters
    assert!(Graph::read_from(
        params(13, Metric::Cosine),
        None,
        bytes.as_slice(),
        bytes.len() as u64
    )
    .is_err());
    assert!(Graph::read_from(
        params(12, Metric::Euclidean),
        None,
        bytes.as_slice(),
        bytes.len() as u64
    )
    .is_err());
    // an empty graph round-trips too
    let empty = Graph::new(params(12, Metric::Cosine));
    let mut b = Vec::new();
    empty.write_to(&mut b).unwrap();
    let e = read(&b).unwrap();
    assert_eq!(e.len(), 0);
    assert!(e.search(&pts[0], 3, 10, |_| true).is_empty());
}

#[test]
fn filtered_search_walks_allowed_nodes_and_finds_their_neighbours() {
    let pts = clustered(20_000, 40, 5, true);
    let queries = clustered(100, 40, 6, true);
    let g = build(&pts, params(40, Metric::Cosine), 2);
    // a tenth and a quarter of the nodes, as a filter would leave them; and, with some of the
    // allowed ones deleted, never those
    for (share, deleted) in [(10, false), (4, false), (10, true)] {
        let skip: HashSet<usize> = (0..pts.len())
            .filter(|i| !i.is_multiple_of(share) || (deleted && i.is_multiple_of(share * 7)))
            .collect();
        if deleted {
            for i in (0..pts.len()).step_by(share * 7) {
                g.delete(i as Slot);
            }
        }
        let mut found = 0;
        for q in &queries {
            let truth = exact(&pts, q, 10, Metric::Cosine, &skip);
            let got: Vec<u64> = g
                .search_filtered(q, 10, 64, |s| (s as usize).is_multiple_of(share))
                .iter()
                .map(|n| g.id(n.1))
                .collect();
            assert_eq!(got.len(), 10, "1/{share}: too few hits");
            assert!(
                got.iter().all(|id| !skip.contains(&(*id as usize))),
                "1/{share}: a node the filter refuses (or a deleted one) was returned"
            );
            found += got.iter().filter(|id| truth.contains(id)).count();
        }
        let r = found as f64 / (queries.len() * 10) as f64;
        assert!(r >= 0.95, "1/{share} (deleted: {deleted}): recall {r}");
    }
}

#[test]
fn a_filter_whose_matches_lie_far_from_the_query_still_gets_its_k_nearest() {
    // the matches: the 400 points nearest to one point, a region of their own; the queries come
    // from everywhere else, where the two-hop walk finds no match to start from
    let pts = clustered(20_000, 40, 7, true);
    let g = build(&pts, params(40, Metric::Cosine), 2);
    let region: HashSet<usize> = exact(&pts, &pts[0], 400, Metric::Cosine, &HashSet::new())
        .into_iter()
        .map(|i| i as usize)
        .collect();
    let skip: HashSet<usize> = (0..pts.len()).filter(|i| !region.contains(i)).collect();
    let mut found = 0;
    let queries = clustered(50, 40, 8, true);
    for q in &queries {
        let truth = exact(&pts, q, 10, Metric::Cosine, &skip);
        let got: Vec<u64> = g
            .search_filtered(q, 10, 64, |s| region.contains(&(s as usize)))
            .iter()
            .map(|n| g.id(n.1))
            .collect();
        assert_eq!(got.len(), 10, "too few hits");
        assert!(got.iter().all(|id| region.contains(&(*id as usize))));
        found += got.iter().filter(|id| truth.contains(id)).count();
    }
    let r = found as f64 / (queries.len() * 10) as f64;
    assert!(r >= 0.9, "recall {r}");
}

/// With `Quantization::Int8` a search walks on the codes and re-scores what it found with the
/// vectors: for both metrics it finds about what the float walk finds (the graph is the same:
/// inserts link with the vectors), filtered too, with deleted nodes, and after a dump is read
/// back (the codes are made again from the dumped vectors); every hit carries its exact distance.
#[test]
fn an_int8_walk_finds_what_the_float_walk_finds_and_scores_exactly() {
    let int8 = |dim, metric| GraphParams {
        quantization: Quantization::Int8,
        ..params(dim, metric)
    };
    for (metric, unit) in [(Metric::Cosine, true), (Metric::Euclidean, false)] {
        // 50 values: the codes' blocks (64) are longer than the vectors' lanes (56)
        let pts = clustered(6000, 50, 12, unit);
        let queries = clustered(200, 50, 13, unit);
        let float_graph = build(&pts, params(50, metric), 1);
        let g = build(&pts, int8(50, metric), 1);
        let none = HashSet::new();
        let (rf, ri) = (
            recall(&float_graph, &pts, &queries, 64, &none),
            recall(&g, &pts, &queries, 64, &none),
        );
        assert!(
            ri >= 0.9 && ri >= rf - 0.01,
            "{metric:?}: int8 recall {ri}, float {rf}"
        );
        let exact_distance = |q: &[f32], n: &Near| metric.distance(q, &pts[g.id(n.1) as usize]);
        for q in &queries[..50] {
            let got = g.search(q, 10, 64, |_| true);
            assert_eq!(got.len(), 10);
            for n in &got {
                let d = exact_distance(q, n);
                assert!(
                    (n.0 - d).abs() <= 1e-5 * (1.0 + d.abs()),
                    "{metric:?}: {} vs {d}",
                    n.0
                );
            }
            assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "not best first");
        }
        // what the walk compares by is the exact distance within the codes' rounding (half a
        // step a value: 0.5 · scale · Σ|q|; euclidean less |q|², and twice that)
        let mut padded = Vec::new();
        for q in &queries[..20] {
            padded.clear();
            padded.extend_from_slice(q);
            padded.resize(64, 0.0);
            let q_abs: f32 = q.iter().map(|x| x.abs()).sum();
            let q_sq: f32 = q.iter().map(|x| x * x).sum();
            for slot in (0..pts.len() as Slot).step_by(97) {
                let scale = g.codes.as_ref().unwrap().get(slot).scale;
                let walk = g.walk_distance::<true>(&padded, slot);
                let exact = metric.distance(q, &pts[slot as usize]);
                let (want, bound) = match metric {
                    Metric::Cosine => (exact, 0.5 * scale * q_abs),
                    Metric::Euclidean => (exact - q_sq, scale * q_abs),
                };
                assert!(
                    (walk - want).abs() <= bound * 1.001 + 1e-5,
                    "{metric:?} node {slot}: walk {walk}, exact {want}, bound {bound}"
                );
            }
        }
        // deleted nodes are never returned, unfiltered or filtered (a tenth of the nodes)
        let deleted: Vec<usize> = (0..pts.len()).step_by(70).collect();
        for &i in &deleted {
            g.delete(i as Slot);
        }
        for q in &queries[..50] {
            let got = g.search(q, 10, 64, |_| true);
            assert_eq!(got.len(), 10);
            assert!(got.iter().all(|n| !(g.id(n.1) as usize).is_multiple_of(70)));
        }
        let skip: HashSet<usize> = (0..pts.len())
            .filter(|i| !i.is_multiple_of(10) || i.is_multiple_of(70))
            .collect();
        let mut found = 0;
        for q in &queries {
            let truth = exact(&pts, q, 10, metric, &skip);
            let got = g.search_filtered(q, 10, 64, |s| (s as usize).is_multiple_of(10));
            assert_eq!(got.len(), 10);
            for n in &got {
                assert!(!skip.contains(&(g.id(n.1) as usize)), "refused or deleted");
                let d = exact_distance(q, n);
                assert!((n.0 - d).abs() <= 1e-5 * (1.0 + d.abs()));
            }
            found += got.iter().filter(|n| truth.contains(&g.id(n.1))).count();
        }
        let r = found as f64 / (queries.len() * 10) as f64;
        eprintln!("{metric:?}: recall {ri} (float {rf}), filtered {r}");
        assert!(r >= 0.9, "{metric:?}: filtered int8 recall {r}");
        // read back from a dump: the same answers
        let mut bytes = Vec::new();
        g.write_to(&mut bytes).unwrap();
        let back =
            Graph::read_from(int8(50, metric), None, bytes.as_slice(), bytes.len() as u64).unwrap();
        for q in &queries[..30] {
            assert_eq!(
                g.search(q, 10, 64, |_| true),
                back.search(q, 10, 64, |_| true)
            );
        }
        // the codes are memory of their own: a quarter of the vectors' and a block per node
        let vectors_f = float_graph.memory_bytes().vectors;
        let vectors_i = g.memory_bytes().vectors;
        assert!(
            vectors_i > vectors_f && vectors_i < vectors_f * 2,
            "{vectors_i} vs {vectors_f}"
        );
    }
}
