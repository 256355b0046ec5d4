//! `shoal`: the command-line entry point. See `shoal --help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shoal_node::config::Config;

/// shoal: a semantic-search cluster in one binary. A node ingests documents, embeds them with a
/// BERT model running in process, indexes them with HNSW and serves search over HTTP; nodes
/// replicate everything through Raft, and any node serves the whole API.
///
/// Configuration comes from defaults, then the file given with --config, then environment
/// variables SHOAL_<SECTION>__<FIELD> (for example SHOAL_SERVER__LISTEN=0.0.0.0:7400), then the
/// flags below. `shoal config` prints the result.
///
/// A node started alone makes a one-member cluster. To grow it, give every node the same
/// secret (SHOAL_CLUSTER__SECRET) and start the others with `--join http://FIRST:7400`; then
/// `shoal cluster promote ID` makes a learner a voter (3 or 5 voters survive 1 or 2 failures).
#[derive(Parser, Debug)]
#[command(name = "shoal", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Debug)]
struct Common {
    /// TOML configuration file.
    #[arg(long, short, env = "SHOAL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address for the HTTP API [default: 127.0.0.1:7400].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Folder for all data [default: ./data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Embedding model folder (Hugging Face layout) [default: ./models/all-MiniLM-L6-v2].
    #[arg(long, env = "MODEL_PATH", value_name = "DIR")]
    model: Option<PathBuf>,
    /// Cross-encoder folder (Hugging Face layout) for reranking [default: none].
    #[arg(long, env = "RERANKER_MODEL_PATH", value_name = "DIR")]
    reranker_model: Option<PathBuf>,
    /// Enable fault injection: actor panics and cut links (tests and drills only).
    #[arg(long)]
    fault_injection: bool,
    /// Turn authentication off: anyone who reaches the node may read and write every collection.
    /// For local experiments only; the node warns at start. [default: auth on]
    #[arg(long)]
    insecure_no_auth: bool,
    /// At the first start, join the cluster of the node at this URL (as a learner) instead of
    /// making a new one-member cluster. Needs the cluster's secret (SHOAL_CLUSTER__SECRET).
    #[arg(long, value_name = "URL")]
    join: Option<String>,
    /// With --join: become a voter once caught up.
    #[arg(long, requires = "join")]
    voter: bool,
    /// This node's id in the cluster [default: the data folder's, or a new random one].
    #[arg(long, value_name = "ID")]
    node_id: Option<u64>,
    /// The URL other nodes reach this one at [default: http://LISTEN-ADDRESS].
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
}

/// Which node an admin command talks to, and how it answers.
#[derive(clap::Args, Debug)]
struct Target {
    /// Any node of the cluster. Requests carry the cluster secret from SHOAL_CLUSTER__SECRET and
    /// a token or API key from SHOAL_TOKEN, when they are set.
    #[arg(
        long,
        env = "SHOAL_NODE",
        default_value = "http://127.0.0.1:7400",
        value_name = "URL"
    )]
    node: String,
    /// Print the node's JSON answer instead of a sentence or a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Make the node (not yet in a cluster) a new one-member cluster.
    Init {
        #[command(flatten)]
        target: Target,
    },
    /// Make the node join the cluster of the node at SEED, as a learner.
    Join {
        /// Any member of the cluster to join.
        seed: String,
        /// Become a voter once caught up.
        #[arg(long)]
        voter: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Members, roles, leader, term, commit and applied index per node, lag, snapshots.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Make learner ID a voter.
    Promote {
        id: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Remove node ID from the cluster (a voter first stops voting).
    Remove {
        id: u64,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand, Debug)]
enum SnapshotCmd {
    /// Save a consistent snapshot of a running node's whole state (a backup) to FILE; the node
    /// keeps serving meanwhile. Any caught-up node of a cluster holds the cluster's state.
    Create {
        /// The file to write (written beside it first, then renamed).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Make a new node from a backup: the data folder (which must be new) gets the backup's
    /// state, and the node starts as the only member of a new cluster, which others can join.
    Restore {
        /// A file written by `shoal snapshot create`.
        file: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a node.
    Serve(Common),
    /// Print the effective configuration as TOML and exit (secrets hidden).
    Config(Common),
    /// Run the cluster: init, join, status, promote, remove (talks to a node's admin API).
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Measure search quality on a labelled set (BEIR layout) against a running node: nDCG@k and
    /// recall@k with and without reranking, and the reranker's pairwise accuracy.
    Eval {
        /// Folder with corpus.jsonl, queries.jsonl and qrels.tsv.
        #[arg(long, value_name = "DIR")]
        dataset: PathBuf,
        /// The collection that holds the corpus.
        #[arg(long, default_value = "eval")]
        collection: String,
        /// Create the collection and add the corpus first (it must not exist).
        #[arg(long)]
        ingest: bool,
        /// Rank cut-off of nDCG and recall.
        #[arg(long, default_value_t = 10)]
        k: usize,
        /// Vector candidates per query (what the reranker reorders).
        #[arg(long, default_value_t = 50)]
        candidates: usize,
        /// Search modes to measure besides the vector baseline, comma separated: keyword,
        /// hybrid (reciprocal rank fusion), weighted or weighted:ALPHA (the vector side's weight).
        #[arg(long, value_name = "MODES", value_delimiter = ',', value_parser = eval_mode)]
        modes: Vec<shoal_node::eval::SearchMode>,
        #[command(flatten)]
        target: Target,
    },
    /// Back up a running node's state (create), or make a new node from a backup (restore).
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Load generator: N clients search a collection back to back over HTTP for a duration or a
    /// number of requests, optionally beside an ingest stream at a set rate; prints a progress
    /// line each second, then throughput, latency percentiles (p50, p95, p99, max) and errors.
    ///
    /// QUERIES holds one query per line: plain text, a JSON array of numbers (a vector query), or
    /// a JSON search body. Example: shoal bench --collection docs --queries q.txt --clients 16
    /// --duration 30s
    Bench {
        /// The collection to search.
        #[arg(long)]
        collection: String,
        /// File of queries, one per line (cycled).
        #[arg(long, value_name = "FILE")]
        queries: PathBuf,
        /// Concurrent clients, each with one request in flight.
        #[arg(long, short = 'c', default_value_t = 1)]
        clients: usize,
        /// How long to measure (after the warm-up), e.g. 30s, 2m, 500ms [default: 10s unless
        /// --requests is given].
        #[arg(long, short = 'd', value_parser = parse_duration)]
        duration: Option<std::time::Duration>,
        /// Stop after this many searches (whichever of --duration and --requests comes first).
        #[arg(long, short = 'n')]
        requests: Option<u64>,
        /// Searches sent before measuring starts, for this long.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        warmup: std::time::Duration,
        /// Hits per search.
        #[arg(long, default_value_t = 10)]
        top_k: usize,
        /// Rerank each search's candidates with the node's cross-encoder (text queries only).
        #[arg(long)]
        rerank: bool,
        /// Search beam width [default: the node's].
        #[arg(long)]
        ef: Option<usize>,
        /// Ingest this many documents per second beside the searches (needs --ingest-file).
        #[arg(long, default_value_t = 0.0)]
        ingest_rate: f64,
        /// Texts to ingest, one document per line (cycled, each sent with a new id).
        #[arg(long, value_name = "FILE")]
        ingest_file: Option<PathBuf>,
        /// Documents per ingest request.
        #[arg(long, default_value_t = 10)]
        ingest_batch: usize,
        /// Per-request timeout.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: std::time::Duration,
        /// More nodes to spread the clients over (the first is --node).
        #[arg(long = "also", value_name = "URL")]
        also: Vec<String>,
        /// No progress line.
        #[arg(long, short)]
        quiet: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Extract the text of one uploaded file (a node runs this for each file it is sent; it reads
    /// a job line and the file on standard input and answers in JSON).
    #[command(hide = true)]
    ExtractWorker,
    /// Build the seeded test cross-encoder from a BERT model folder (for tests; it ranks nothing well).
    #[command(hide = true)]
    MakeTestReranker {
        /// BERT model folder to start from.
        #[arg(long)]
        from: PathBuf,
        /// Folder to write.
        #[arg(long)]
        out: PathBuf,
    },
}

/// A duration as people write it: `30s`, `2m`, `500ms`, `1h`, or plain seconds.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (30s, 2m, 500ms)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown unit `{other}` in `{s}` (ms, s, m, h)")),
    };
    std::time::Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

fn load(common: &Common) -> Result<Config, String> {
    // checked once the flags are in: a flag may make a configuration from the environment whole
    let mut config = Config::load_unchecked(common.config.as_deref()).map_err(|e| e.to_string())?;
    if let Some(l) = common.listen {
        config.server.listen = l;
    }
    if let Some(d) = &common.data_dir {
        config.storage.data_dir = d.clone();
    }
    if let Some(m) = &common.model {
        config.model.path = m.clone();
    }
    if let Some(r) = &common.reranker_model {
        config.reranker.path = Some(r.clone());
    }
    if common.fault_injection {
        config.debug.fault_injection = true;
    }
    if common.insecure_no_auth {
        config.auth.enabled = false;
    }
    if let Some(j) = &common.join {
        config.cluster.join = Some(j.clone());
    }
    if common.voter {
        config.cluster.join_as_voter = true;
    }
    if let Some(id) = common.node_id {
        config.cluster.node_id = id;
    }
    if let Some(a) = &common.advertise {
        config.cluster.advertise = Some(a.clone());
    }
    config
        .validate()
        .map_err(|e| format!("configuration: {e}"))?;
    Ok(config)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Cmd::ExtractWorker) {
        return shoal_node::uploads::worker_main();
    }
    if !matches!(cli.command, Cmd::Serve(_)) {
        // A command whose reader went away (`shoal cluster status --json | head`) ends quietly,
        // as other command-line tools do, instead of panicking on the failed write. The server
        // keeps Rust's default (the signal ignored: a client gone is an error it handles).
        // SAFETY: setting a signal's disposition to its default, before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let (common, serve) = match &cli.command {
        Cmd::Serve(c) => (c, true),
        Cmd::Config(c) => (c, false),
        Cmd::Cluster(cmd) => return cluster_command(cmd),
        Cmd::Snapshot(cmd) => return snapshot_command(cmd),
        Cmd::Eval {
            dataset,
            collection,
            ingest,
            k,
            candidates,
            modes,
            target,
        } => {
            use shoal_node::eval;
            let result = eval::EvalSet::load(dataset).and_then(|set| {
                let options = eval::EvalOptions {
                    node: target.node.clone(),
                    collection: collection.clone(),
                    k: *k,
                    candidates: (*candidates).max(*k),
                    ingest: *ingest,
                    rerank: eval::node_has_reranker(&target.node)?,
                    modes: modes.clone(),
                };
                eval::run(&set, &options)
            });
            return match result {
                Ok(report) if target.json => {
                    println!("{}", report.to_json());
                    ExitCode::SUCCESS
                }
                Ok(report) => {
                    print!("{}", report.table());
                    if report.rerank_ndcg.is_none() {
                        println!("(the node has no reranker: start it with --reranker-model)");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("shoal: {}", e.message);
                    ExitCode::from(e.code)
                }
            };
        }
        Cmd::Bench {
            collection,
            queries,
            clients,
            duration,
            requests,
            warmup,
            top_k,
            rerank,
            ef,
            ingest_rate,
            ingest_file,
            ingest_batch,
            timeout,
            also,
            quiet,
            target,
        } => {
            let mut nodes = vec![target.node.clone()];
            nodes.extend(also.iter().cloned());
            let options = shoal_node::bench::BenchOptions {
                nodes,
                collection: collection.clone(),
                queries: queries.clone(),
                clients: *clients,
                duration: duration.or(requests
                    .is_none()
                    .then_some(std::time::Duration::from_secs(10))),
                requests: *requests,
                warmup: *warmup,
                top_k: *top_k,
                rerank: *rerank,
                ef: *ef,
                ingest_rate: *ingest_rate,
                ingest_file: ingest_file.clone(),
                ingest_batch: *ingest_batch,
                timeout: *timeout,
                progress: !*quiet,
            };
            return match shoal_node::bench::run(options) {
                Ok(report) if target.json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Ok(report) => {
                    print!("{}", report.render());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("shoal: {}", e.message);
                    ExitCode::from(e.code)
                }
            };
        }
        Cmd::ExtractWorker => unreachable!("handled above"),
        Cmd::MakeTestReranker { from, out } => {
            return match shoal_inference::test_model::build_test_cross_encoder(from, out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("shoal: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    let config = match load(common) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shoal: {e}");
            return ExitCode::from(2);
        }
    };
    if !serve {
        match toml_string(&config.redacted()) {
            Ok(s) => {
                print!("{s}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("shoal: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                // openraft logs every failed heartbeat to an unreachable peer; shoal logs the
                // change (peer unreachable / reachable again) instead. tantivy logs every file
                // of every keyword-index commit at info.
                tracing_subscriber::EnvFilter::new("info,openraft=off,tantivy=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    // A panicking actor is restarted by the supervisor; log the panic as one line instead of the
    // default multi-line dump (RUST_BACKTRACE=1 still prints a backtrace).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("?"), "panic: {info}");
        if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
            default_hook(info);
        }
    }));
    let index_threads = shoal_node::config::ThreadsConfig::resolve(config.threads.index);
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .num_threads(index_threads)
        .thread_name(|i| format!("index-{i}"))
        .build_global()
    {
        eprintln!("shoal: cannot size the index thread pool: {e}");
    }
    let http_threads = shoal_node::config::ThreadsConfig::resolve(config.threads.http);
    let slice_us = config.threads.query_slice_us;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(http_threads)
        // searches pass through these threads: short slices (see thread_sched)
        .on_thread_start(move || {
            shoal_node::thread_sched::request_slice(slice_us);
        })
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shoal: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(shoal_node::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cluster_command(cmd: &ClusterCmd) -> ExitCode {
    use serde_json::{json, Value};
    use shoal_node::admin_cli::{call, status_table};
    /// How a successful answer is told, as a sentence or a table.
    type Say = Box<dyn Fn(&Value) -> String>;
    let (target, result, say): (&Target, _, Say) = match cmd {
        ClusterCmd::Init { target } => (
            target,
            call(&target.node, "POST", "/api/v1/cluster/init", None),
            Box::new(|v: &Value| {
                format!(
                    "node {} is now the one member of cluster {}",
                    v["node_id"],
                    v["cluster_id"].as_str().unwrap_or("?")
                )
            }),
        ),
        ClusterCmd::Join {
            seed,
            voter,
            target,
        } => {
            let voter = *voter;
            (
                target,
                call(
                    &target.node,
                    "POST",
                    "/api/v1/cluster/join",
                    Some(json!({ "seed": seed, "voter": voter })),
                ),
                Box::new(move |v: &Value| {
                    format!(
                        "node {} joined cluster {} as a learner{}",
                        v["node_id"],
                        v["cluster_id"].as_str().unwrap_or("?"),
                        if voter {
                            "; it becomes a voter once caught up"
                        } else {
                            ""
                        }
                    )
                }),
            )
        }
        ClusterCmd::Status { target } => (
            target,
            call(&target.node, "GET", "/api/v1/cluster", None),
            Box::new(status_table),
        ),
        ClusterCmd::Promote { id, target } => {
            let id = *id;
            (
                target,
                call(
                    &target.node,
                    "POST",
                    &format!("/api/v1/cluster/nodes/{id}/promote"),
                    None,
                ),
                Box::new(move |_: &Value| format!("node {id} is a voter")),
            )
        }
        ClusterCmd::Remove { id, target } => {
            let id = *id;
            (
                target,
                call(
                    &target.node,
                    "DELETE",
                    &format!("/api/v1/cluster/nodes/{id}"),
                    None,
                ),
                Box::new(move |_: &Value| format!("node {id} was removed from the cluster")),
            )
        }
    };
    match result {
        Ok(v) => {
            let text = if target.json {
                serde_json::to_string_pretty(&v).unwrap_or_default()
            } else {
                say(&v)
            };
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shoal: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

fn snapshot_command(cmd: &SnapshotCmd) -> ExitCode {
    match cmd {
        SnapshotCmd::Create { out, target } => {
            match shoal_node::admin_cli::download_snapshot(&target.node, out) {
                Ok((applied, bytes)) => {
                    if target.json {
                        println!(
                            "{}",
                            serde_json::json!({"file": out, "applied_index": applied, "bytes": bytes})
                        );
                    } else {
                        println!(
                            "saved the state of {} at log index {applied} to {} ({bytes} bytes)",
                            target.node,
                            out.display()
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("shoal: {}", e.message);
                    ExitCode::from(e.code)
                }
            }
        }
        SnapshotCmd::Restore { file, common } => {
            let config = match load(common) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("shoal: {e}");
                    return ExitCode::from(2);
                }
            };
            if !file.is_file() {
                eprintln!("shoal: {} is not a file", file.display());
                return ExitCode::from(2);
            }
            match shoal_node::restore_backup(&config, file) {
                Ok(r) => {
                    println!(
                        "restored {} into {}: node {} is the only member of the new cluster {} at log index {}; start it with `shoal serve` and the same --data-dir",
                        file.display(),
                        config.storage.data_dir.display(),
                        r.node_id,
                        r.cluster_id,
                        r.applied_index
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("shoal: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn toml_string(config: &Config) -> Result<String, String> {
    toml::to_string(config).map_err(|e| e.to_string())
}

fn eval_mode(s: &str) -> Result<shoal_node::eval::SearchMode, String> {
    shoal_node::eval::SearchMode::parse(s)
}
