//! shoal's index layer on a vector dataset, for `scripts/ann_bench.py`, which runs hnswlib and
//! FAISS on the same files in the same run: builds one shard (cosine, on vectors the script
//! normalised, or euclidean) as the node builds it, then searches every query on one thread at each ef, and
//! prints one JSON line per ef: recall@10 against the exact neighbours, QPS, p50/p99 latency,
//! plus the build time and the resident memory the shard added per vector.
//!
//! Usage: shoal-ann-bench BASE.f32 QUERIES.f32 TRUTH.i32 DIM M EF_CONSTRUCTION EF[,EF...] [cosine|euclidean] [none|int8] [heap|disk]
//! (`int8`: the shard walks on int8 codes, `ShardParams::quantization`; its engines are named
//! `shoal int8`. `disk`: the shard keeps its vectors in a mapped file in BASE's folder,
//! `ShardParams::vectors_dir`; its engines' names end in `disk`. Every line gives the resident
//! memory the shard added per vector, `bytes_per_vector`, and its two parts: `heap_per_vector`,
//! anonymous memory, and `mapped_per_vector`, the mapped file's pages that are resident, which
//! the page cache may write back and let go.)
//! (raw little-endian files: n×DIM floats, nq×DIM floats, nq×K neighbour ids).
//! `SHOAL_ANN_BENCH_SCAN_FRACTION=F` sets `ShardParams::exact_filter_fraction` (filters that
//! match at most that fraction are scanned; 0.11 scans the 10% filters too): what the filtered
//! plan's costs were measured with.

use std::sync::Arc;
use std::time::Instant;

use shoal_index::{Payload, Point, SearchMode, SearchRequest, Shard, ShardParams};

/// A file of little-endian 4-byte values.
fn words<T>(path: &str, from: fn([u8; 4]) -> T) -> Vec<T> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    bytes
        .chunks_exact(4)
        .map(|b| from([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn floats(path: &str) -> Vec<f32> {
    words(path, f32::from_le_bytes)
}

fn ints(path: &str) -> Vec<i32> {
    words(path, i32::from_le_bytes)
}

/// A figure of this process's memory in /proc/self/status (`VmRSS`, `RssAnon`, `RssFile`), in bytes.
fn status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !(8..=11).contains(&args.len()) {
        eprintln!("usage: shoal-ann-bench BASE.f32 QUERIES.f32 TRUTH.i32 DIM M EF_CONSTRUCTION EF[,EF...] [cosine|euclidean] [none|int8] [heap|disk]");
        std::process::exit(2);
    }
    let metric = match args.get(8).map(String::as_str) {
        None | Some("cosine") => shoal_index::Metric::Cosine,
        Some("euclidean") => shoal_index::Metric::Euclidean,
        Some(other) => {
            eprintln!("unknown metric {other}");
            std::process::exit(2);
        }
    };
    let quantization = match args.get(9).map(String::as_str) {
        None | Some("none") => shoal_index::Quantization::None,
        Some("int8") => shoal_index::Quantization::Int8,
        Some(other) => {
            eprintln!("unknown quantization {other}");
            std::process::exit(2);
        }
    };
    let on_disk = match args.get(10).map(String::as_str) {
        None | Some("heap") => false,
        Some("disk") => true,
        Some(other) => {
            eprintln!("unknown place for the vectors {other} (heap or disk)");
            std::process::exit(2);
        }
    };
    let shoal = match (quantization, on_disk) {
        (shoal_index::Quantization::None, false) => "shoal",
        (shoal_index::Quantization::Int8, false) => "shoal int8",
        (shoal_index::Quantization::None, true) => "shoal disk",
        (shoal_index::Quantization::Int8, true) => "shoal int8 disk",
    };
    let dim: usize = args[4].parse().expect("DIM");
    let m: usize = args[5].parse().expect("M");
    let efc: usize = args[6].parse().expect("EF_CONSTRUCTION");
    let efs: Vec<usize> = args[7].split(',').map(|e| e.parse().expect("EF")).collect();
    let queries = floats(&args[2]);
    let truth = ints(&args[3]);
    let nq = queries.len() / dim;
    let k_truth = truth.len() / nq;

    let before = ["VmRSS", "RssAnon", "RssFile"].map(status_bytes);
    let base = floats(&args[1]);
    let n = base.len() / dim;
    let mut params = ShardParams::new(dim);
    params.m = m;
    params.ef_construction = efc;
    params.metric = metric;
    params.quantization = quantization;
    if let Ok(f) = std::env::var("SHOAL_ANN_BENCH_SCAN_FRACTION") {
        params.exact_filter_fraction = f.parse().expect("SHOAL_ANN_BENCH_SCAN_FRACTION");
    }
    if on_disk {
        params.vectors_dir = Some(
            std::path::Path::new(&args[1])
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join(".shoal-vectors"),
        );
    }
    // groups of points for filtered searches: metadata `g` (i mod 10) for 10% selectivity and
    // `h` (i mod 100) for 1%
    let payloads: Vec<Arc<Payload>> = (0..100)
        .map(|h| {
            let mut metadata = shoal_index::Metadata::new();
            metadata.insert("g".into(), serde_json::json!(h % 10));
            metadata.insert("h".into(), serde_json::json!(h));
            Arc::new(Payload {
                doc_id: String::new(),
                metadata,
            })
        })
        .collect();
    let points: Vec<Point> = (0..n)
        .map(|i| Point {
            id: i as u64,
            vector: base[i * dim..(i + 1) * dim].to_vec(),
            payload: payloads[i % 100].clone(),
            text: String::new(),
        })
        .collect();
    // exact neighbours among the points of one group (index mod `step` = `group(q)`), for the
    // filtered searches' recall
    let group_truth = |step: usize, group: &dyn Fn(usize) -> usize| -> Vec<Vec<u64>> {
        (0..nq)
            .map(|q| {
                let v = &queries[q * dim..(q + 1) * dim];
                let mut scored: Vec<(f32, u64)> = (group(q)..n)
                    .step_by(step)
                    .map(|i| {
                        let b = &base[i * dim..(i + 1) * dim];
                        let distance = match metric {
                            shoal_index::Metric::Cosine => -shoal_index::dot(v, b),
                            shoal_index::Metric::Euclidean => shoal_index::l2_squared(v, b),
                        };
                        (distance, i as u64)
                    })
                    .collect();
                scored.sort_by(|a, b| a.0.total_cmp(&b.0));
                scored.iter().take(10).map(|s| s.1).collect()
            })
            .collect()
    };
    let truth_10 = group_truth(10, &|_| 0);
    let truth_1 = group_truth(100, &|_| 0);
    let truth_cycled = group_truth(10, &|q| q % 10);
    drop(base); // one large allocation: handed back to the system
    let truth: Vec<Vec<u64>> = (0..nq)
        .map(|q| {
            truth[q * k_truth..q * k_truth + 10]
                .iter()
                .map(|&i| i as u64)
                .collect()
        })
        .collect();
    let query = |q: usize| &queries[q * dim..(q + 1) * dim];

    // as a node builds a shard at start (from the store's points, inserting on all cores); ingest
    // afterwards inserts one point at a time per shard
    let t = Instant::now();
    let (shard, _) = Shard::open(params, points, None, 0).expect("build");
    let build_s = t.elapsed().as_secs_f64();
    // The points handed to the shard were freed into the allocator's free lists: hand those
    // pages back, so that what is measured is what the shard holds (a node does the same after
    // building its shards).
    // SAFETY: malloc_trim only releases free memory.
    unsafe { libc::malloc_trim(0) };
    let [bytes_per_vector, heap_per_vector, mapped_per_vector] = ["VmRSS", "RssAnon", "RssFile"]
        .map(status_bytes)
        .iter()
        .zip(before)
        .map(|(after, before)| after.saturating_sub(before) as f64 / n as f64)
        .collect::<Vec<f64>>()[..]
    else {
        unreachable!("three figures")
    };
    eprintln!(
        "{shoal}: built {n} vectors of {dim} in {build_s:.1} s, {bytes_per_vector:.0} bytes/vector resident: {heap_per_vector:.0} on the heap, {mapped_per_vector:.0} of a mapped file"
    );

    let filter_10 =
        shoal_index::Filter::from_json(&serde_json::json!({"metadata": {"g": 0}})).expect("filter");
    let filter_1 =
        shoal_index::Filter::from_json(&serde_json::json!({"metadata": {"h": 0}})).expect("filter");
    // ten filters in turn, more than a shard keeps the matches of: each search finds its own
    let cycled: Vec<shoal_index::Filter> = (0..10)
        .map(|g| {
            shoal_index::Filter::from_json(&serde_json::json!({"metadata": {"g": g}}))
                .expect("filter")
        })
        .collect();
    for (engine, filters, truth) in [
        (format!("{shoal}, filter 10%"), vec![&filter_10], &truth_10),
        (
            format!("{shoal}, filter 10%, another each query"),
            cycled.iter().collect(),
            &truth_cycled,
        ),
        (format!("{shoal}, filter 1%"), vec![&filter_1], &truth_1),
        (shoal.to_string(), vec![], &truth),
    ] {
        for &ef in &efs {
            let r = measure(truth, |q| {
                shard
                    .search(&SearchRequest {
                        vector: query(q),
                        k: 10,
                        filter: (!filters.is_empty()).then(|| filters[q % filters.len()]),
                        mode: SearchMode::Auto,
                        ef: Some(ef),
                        max_scan: None,
                    })
                    .expect("search")
                    .iter()
                    .map(|h| h.id)
                    .collect()
            });
            println!(
                "{{\"engine\": \"{engine}\", \"ef\": {ef}, \"recall\": {:.4}, \"qps\": {:.0}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"build_s\": {build_s:.2}, \"bytes_per_vector\": {bytes_per_vector:.0}, \"heap_per_vector\": {heap_per_vector:.0}, \"mapped_per_vector\": {mapped_per_vector:.0}}}",
                r.recall, r.qps, r.p50_ms, r.p99_ms,
            );
        }
    }
}

struct Measured {
    recall: f64,
    qps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Answer every query with `search` (the ids of its top 10) on this thread, against `exact` (each
/// query's true top 10): recall@10, queries per second and latency percentiles.
fn measure(exact: &[Vec<u64>], mut search: impl FnMut(usize) -> Vec<u64>) -> Measured {
    let mut lat = Vec::with_capacity(exact.len());
    let mut found = 0usize;
    let t = Instant::now();
    for (q, exact) in exact.iter().enumerate() {
        let s = Instant::now();
        let hits = search(q);
        lat.push(s.elapsed().as_secs_f64() * 1e3);
        found += hits.iter().filter(|h| exact.contains(h)).count();
    }
    let total = t.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((p / 100.0) * (lat.len() - 1) as f64).round() as usize];
    Measured {
        recall: found as f64 / (exact.len() * 10) as f64,
        qps: exact.len() as f64 / total,
        p50_ms: pct(50.0),
        p99_ms: pct(99.0),
    }
}
