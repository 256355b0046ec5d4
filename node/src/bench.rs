//! `shoal bench`: a load generator that drives a node (or several nodes of a cluster) over HTTP,
//! as pgbench and redis-benchmark do: N clients each send one search at a time, back to back,
//! for a duration or a number of requests; optionally an ingest stream runs beside them at a set
//! rate. It prints a progress line every second and, at the end, throughput, latency percentiles
//! and errors by kind (`--json` for a machine-readable report).
//!
//! Queries come from a file, one per line: plain text (embedded by the node), a JSON array of
//! numbers (a vector query), or a JSON object used as the search body as it is (its `top_k`,
//! `rerank` and the rest are filled from the flags where it has none).

use std::io::{BufRead, IsTerminal, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Map, Value};

use crate::admin_cli::CliError;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Base URLs of the nodes; clients are spread over them round robin.
    pub nodes: Vec<String>,
    pub collection: String,
    pub queries: PathBuf,
    pub clients: usize,
    /// Stop after this long (measured part, warm-up not counted) ...
    pub duration: Option<Duration>,
    /// ... or after this many searches, whichever comes first.
    pub requests: Option<u64>,
    pub warmup: Duration,
    pub top_k: usize,
    pub rerank: bool,
    pub ef: Option<usize>,
    /// Documents per second sent for ingest beside the searches (0: none).
    pub ingest_rate: f64,
    /// Texts to ingest, one document per line (cycled; ids are made unique).
    pub ingest_file: Option<PathBuf>,
    /// Documents per ingest request.
    pub ingest_batch: usize,
    pub timeout: Duration,
    pub progress: bool,
}

/// Search latencies (µs) and outcomes, shared by the clients.
#[derive(Default)]
struct Tally {
    latencies_us: Mutex<Vec<u32>>,
    ok: AtomicU64,
    /// status code or kind of failure → count
    errors: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Tally {
    fn error(&self, kind: String) {
        *self.errors.lock().entry(kind).or_default() += 1;
    }
    fn errors_total(&self) -> u64 {
        self.errors.lock().values().sum()
    }
}

#[derive(Default)]
struct IngestTally {
    sent_docs: AtomicU64,
    accepted_docs: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

/// One query as sent: the search body without the flags' defaults.
fn parse_query_line(line: &str) -> Result<Map<String, Value>, String> {
    let t = line.trim();
    // `[...]` is a vector and `{...}` a body; anything else (a sentence that begins with a
    // bracket included) is text.
    if t.starts_with('[') && t.ends_with(']') {
        let v: Vec<f32> = serde_json::from_str(t).map_err(|e| format!("vector: {e}"))?;
        let mut m = Map::new();
        m.insert("vector".into(), json!(v));
        return Ok(m);
    }
    if t.starts_with('{') && t.ends_with('}') {
        return match serde_json::from_str::<Value>(t).map_err(|e| e.to_string())? {
            Value::Object(m) => Ok(m),
            _ => Err("not an object".into()),
        };
    }
    let mut m = Map::new();
    m.insert("query".into(), json!(t));
    Ok(m)
}

fn read_lines(path: &std::path::Path) -> Result<Vec<String>, CliError> {
    let file = std::fs::File::open(path).map_err(|e| CliError {
        message: format!("cannot read {}: {e}", path.display()),
        code: 2,
    })?;
    let mut out = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|e| CliError {
            message: format!("{}: {e}", path.display()),
            code: 2,
        })?;
        if !line.trim().is_empty() {
            out.push(line);
        }
    }
    if out.is_empty() {
        return Err(CliError {
            message: format!("{} holds no lines", path.display()),
            code: 2,
        });
    }
    Ok(out)
}

/// The search bodies, serialised once (clients cycle through them).
fn query_bodies(opts: &BenchOptions) -> Result<Vec<Vec<u8>>, CliError> {
    let lines = read_lines(&opts.queries)?;
    let mut bodies = Vec::with_capacity(lines.len());
    for (n, line) in lines.iter().enumerate() {
        let mut m = parse_query_line(line).map_err(|e| CliError {
            message: format!("{} line {}: {e}", opts.queries.display(), n + 1),
            code: 2,
        })?;
        m.entry("top_k").or_insert(json!(opts.top_k));
        if opts.rerank {
            m.entry("rerank").or_insert(json!(true));
        }
        if let Some(ef) = opts.ef {
            m.entry("ef").or_insert(json!(ef));
        }
        bodies.push(serde_json::to_vec(&Value::Object(m)).unwrap_or_default());
    }
    Ok(bodies)
}

/// The figures of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub clients: usize,
    pub seconds: f64,
    pub searches: u64,
    pub qps: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    pub errors: std::collections::BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingest: Option<IngestReport>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct IngestReport {
    pub target_docs_per_s: f64,
    pub sent_docs: u64,
    pub accepted_docs: u64,
    pub accepted_docs_per_s: f64,
    /// Requests refused with 429 (queue full).
    pub refused_requests: u64,
    pub failed_requests: u64,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

impl BenchReport {
    /// The report as a person reads it.
    pub fn render(&self) -> String {
        let mut s = format!(
            "clients {}  duration {:.1} s  searches {}  errors {}\n\
             throughput {:.1} req/s\n\
             latency ms  p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}  mean {:.2}\n",
            self.clients,
            self.seconds,
            self.searches,
            self.errors.values().sum::<u64>(),
            self.qps,
            self.p50_ms,
            self.p95_ms,
            self.p99_ms,
            self.max_ms,
            self.mean_ms,
        );
        for (kind, n) in &self.errors {
            s.push_str(&format!("  error {kind}: {n}\n"));
        }
        if let Some(i) = &self.ingest {
            s.push_str(&format!(
                "ingest: {:.1} docs/s asked, {} sent, {} accepted ({:.1} docs/s), {} requests refused (429), {} failed\n",
                i.target_docs_per_s,
                i.sent_docs,
                i.accepted_docs,
                i.accepted_docs_per_s,
                i.refused_requests,
                i.failed_requests
            ));
        }
        s
    }
}

fn auth(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match std::env::var("SHOAL_TOKEN") {
        Ok(token) if !token.is_empty() => req.bearer_auth(token),
        _ => req,
    }
}

/// Run the benchmark and return its report.
pub fn run(opts: BenchOptions) -> Result<BenchReport, CliError> {
    if opts.clients == 0 {
        return Err(CliError {
            message: "--clients must be at least 1".into(),
            code: 2,
        });
    }
    if opts.duration.is_none() && opts.requests.is_none() {
        return Err(CliError {
            message: "give --duration or --requests".into(),
            code: 2,
        });
    }
    if opts.requests == Some(0) {
        return Err(CliError {
            message: "--requests must be at least 1".into(),
            code: 2,
        });
    }
    if !opts.ingest_rate.is_finite()
        || opts.ingest_rate < 0.0
        || (opts.ingest_rate > 0.0 && opts.ingest_rate < 0.01)
    {
        return Err(CliError {
            message: format!(
                "--ingest-rate {} is not a rate (0, or 0.01 documents per second and more)",
                opts.ingest_rate
            ),
            code: 2,
        });
    }
    if opts.ingest_rate > 0.0 && opts.ingest_file.is_none() {
        return Err(CliError {
            message: "--ingest-rate needs --ingest-file".into(),
            code: 2,
        });
    }
    let bodies = Arc::new(query_bodies(&opts)?);
    let ingest_texts = match &opts.ingest_file {
        Some(p) if opts.ingest_rate > 0.0 => Some(Arc::new(read_lines(p)?)),
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError {
            message: format!("cannot start the runtime: {e}"),
            code: 1,
        })?;
    runtime.block_on(run_async(opts, bodies, ingest_texts))
}

async fn run_async(
    opts: BenchOptions,
    bodies: Arc<Vec<Vec<u8>>>,
    ingest_texts: Option<Arc<Vec<String>>>,
) -> Result<BenchReport, CliError> {
    let client = reqwest::Client::builder()
        .timeout(opts.timeout)
        .pool_max_idle_per_host(opts.clients + 4)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| CliError {
            message: format!("cannot make an HTTP client: {e}"),
            code: 1,
        })?;
    // The collection must exist: a clear error instead of a run of 404s.
    let first = opts.nodes[0].trim_end_matches('/').to_string();
    let probe = auth(client.get(format!("{first}/api/v1/collections/{}", opts.collection)))
        .send()
        .await
        .map_err(|e| CliError {
            message: format!("cannot reach the node at {first}: {e}"),
            code: 2,
        })?;
    if !probe.status().is_success() {
        let status = probe.status();
        let text = probe.text().await.unwrap_or_default();
        return Err(CliError {
            message: format!("collection `{}`: {status} {text}", opts.collection),
            code: 1,
        });
    }

    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicUsize::new(0));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(opts.warmup.is_zero()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // rung by the client that completes the last of --requests
    let done_signal = Arc::new(tokio::sync::Notify::new());
    let started = Arc::new(Mutex::new(Instant::now()));
    let searches = Arc::new(AtomicU64::new(0));

    let mut clients = Vec::new();
    for c in 0..opts.clients {
        let base = opts.nodes[c % opts.nodes.len()]
            .trim_end_matches('/')
            .to_string();
        let url = format!("{base}/api/v1/collections/{}/search", opts.collection);
        let (client, bodies, tally, next, measuring, stop, searches, done_signal) = (
            client.clone(),
            bodies.clone(),
            tally.clone(),
            next.clone(),
            measuring.clone(),
            stop.clone(),
            searches.clone(),
            done_signal.clone(),
        );
        let limit = opts.requests;
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let body = bodies[next.fetch_add(1, Ordering::Relaxed) % bodies.len()].clone();
                let t = Instant::now();
                let result = auth(client.post(&url))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let outcome = match result {
                    Ok(resp) => {
                        let status = resp.status();
                        // The whole answer is read: its transfer is part of the latency.
                        match resp.bytes().await {
                            Ok(_) if status.is_success() => Ok(()),
                            Ok(_) => Err(format!("HTTP {}", status.as_u16())),
                            Err(e) => Err(error_kind(&e)),
                        }
                    }
                    Err(e) => Err(error_kind(&e)),
                };
                let took = t.elapsed();
                if !measuring.load(Ordering::Relaxed) {
                    continue;
                }
                match outcome {
                    Ok(()) => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        tally
                            .latencies_us
                            .lock()
                            .push(took.as_micros().min(u32::MAX as u128) as u32);
                    }
                    Err(kind) => tally.error(kind),
                }
                let done = searches.fetch_add(1, Ordering::Relaxed) + 1;
                if limit.is_some_and(|l| done >= l) {
                    stop.store(true, Ordering::Relaxed);
                    done_signal.notify_one();
                }
            }
        }));
    }

    let ingest = Arc::new(IngestTally::default());
    let ingest_task = ingest_texts.map(|texts| {
        let (client, ingest, stop, measuring) = (
            client.clone(),
            ingest.clone(),
            stop.clone(),
            measuring.clone(),
        );
        let nodes = opts.nodes.clone();
        let collection = opts.collection.clone();
        let rate = opts.ingest_rate;
        let batch = opts.ingest_batch.max(1);
        tokio::spawn(async move {
            let run_id = std::process::id();
            let begin = Instant::now();
            let mut sent = 0u64;
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                // Keep to the rate: send a batch once its documents are due.
                let due = begin + Duration::from_secs_f64((sent + batch as u64) as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let docs: Vec<Value> = (0..batch)
                    .map(|i| {
                        let k = n + i;
                        json!({"id": format!("bench-{run_id}-{k}"), "text": texts[k % texts.len()]})
                    })
                    .collect();
                n += batch;
                sent += batch as u64;
                let base = nodes[(n / batch) % nodes.len()].trim_end_matches('/');
                let counting = measuring.load(Ordering::Relaxed);
                let resp =
                    auth(client.post(format!("{base}/api/v1/collections/{collection}/documents")))
                        .json(&json!({ "documents": docs }))
                        .send()
                        .await;
                if !counting {
                    continue;
                }
                ingest.sent_docs.fetch_add(batch as u64, Ordering::Relaxed);
                match resp.map(|r| r.status()) {
                    Ok(s) if s.is_success() => {
                        ingest
                            .accepted_docs
                            .fetch_add(batch as u64, Ordering::Relaxed);
                    }
                    Ok(s) if s.as_u16() == 429 => {
                        ingest.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        ingest.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    });

    // Warm-up, then the measured part with a progress line each second.
    if !opts.warmup.is_zero() {
        tokio::time::sleep(opts.warmup).await;
        tally.latencies_us.lock().clear();
        measuring.store(true, Ordering::Relaxed);
    }
    *started.lock() = Instant::now();
    let begin = *started.lock();
    let tty = std::io::stderr().is_terminal();
    let mut last = (begin, 0u64);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = done_signal.notified() => {}
        }
        let now = Instant::now();
        let over = opts.duration.is_some_and(|d| now >= begin + d);
        if over {
            stop.store(true, Ordering::Relaxed);
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if opts.progress && now.duration_since(last.0) >= Duration::from_secs(1) {
            let done = searches.load(Ordering::Relaxed);
            let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            let line = format!(
                "[{:>5.1} s] {done} searches  {rate:.0} req/s  errors {}  accepted docs {}",
                now.duration_since(begin).as_secs_f64(),
                tally.errors_total(),
                ingest.accepted_docs.load(Ordering::Relaxed),
            );
            let mut err = std::io::stderr();
            let _ = if tty {
                write!(err, "\r{line}   ")
            } else {
                writeln!(err, "{line}")
            };
            last = (now, done);
        }
    }
    // Requests in flight when the run stops are finished and counted, and so is their time.
    for c in clients {
        let _ = c.await;
    }
    let seconds = begin.elapsed().as_secs_f64();
    if let Some(t) = ingest_task {
        t.abort();
    }
    if opts.progress && tty {
        eprintln!();
    }
    let mut lat = std::mem::take(&mut *tally.latencies_us.lock());
    lat.sort_unstable();
    let ok = lat.len() as u64;
    let mean_ms = if lat.is_empty() {
        0.0
    } else {
        lat.iter().map(|&v| v as f64).sum::<f64>() / lat.len() as f64 / 1000.0
    };
    let errors = tally.errors.lock().clone();
    let ingest_report = (opts.ingest_rate > 0.0).then(|| IngestReport {
        target_docs_per_s: opts.ingest_rate,
        sent_docs: ingest.sent_docs.load(Ordering::Relaxed),
        accepted_docs: ingest.accepted_docs.load(Ordering::Relaxed),
        accepted_docs_per_s: ingest.accepted_docs.load(Ordering::Relaxed) as f64 / seconds,
        refused_requests: ingest.refused.load(Ordering::Relaxed),
        failed_requests: ingest.failed.load(Ordering::Relaxed),
    });
    Ok(BenchReport {
        clients: opts.clients,
        seconds,
        searches: ok + errors.values().sum::<u64>(),
        qps: ok as f64 / seconds,
        p50_ms: percentile(&lat, 50.0),
        p95_ms: percentile(&lat, 95.0),
        p99_ms: percentile(&lat, 99.0),
        max_ms: lat.last().map(|&v| v as f64 / 1000.0).unwrap_or(0.0),
        mean_ms,
        errors,
        ingest: ingest_report,
    })
}

fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        "transport".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_lines_are_text_vectors_or_bodies() {
        assert_eq!(
            parse_query_line("how do tides work").unwrap()["query"],
            json!("how do tides work")
        );
        assert_eq!(
            parse_query_line("[0.5, -1, 25e-2]").unwrap()["vector"],
            json!([0.5, -1.0, 0.25])
        );
        let m = parse_query_line(r#"{"query": "x", "top_k": 3}"#).unwrap();
        assert_eq!(m["top_k"], json!(3));
        assert!(parse_query_line("[1, 2,]").is_err());
        assert!(parse_query_line("{\"a\": }").is_err());
        assert_eq!(
            parse_query_line("[citation needed] tides follow the moon").unwrap()["query"],
            json!("[citation needed] tides follow the moon")
        );
    }

    #[test]
    fn percentiles_take_the_rounded_linear_rank() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile(&v, 50.0), 51.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
