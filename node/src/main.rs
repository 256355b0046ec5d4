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
    /// Any node of the cluster. Changes carry the cluster secret from SHOAL_CLUSTER__SECRET.
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
enum Cmd {
    /// Run a node.
    Serve(Common),
    /// Print the effective configuration as TOML and exit (secrets hidden).
    Config(Common),
    /// Run the cluster: init, join, status, promote, remove (talks to a node's admin API).
    #[command(subcommand)]
    Cluster(ClusterCmd),
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

fn load(common: &Common) -> Result<Config, String> {
    let mut config = Config::load(common.config.as_deref()).map_err(|e| e.to_string())?;
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
    let (common, serve) = match &cli.command {
        Cmd::Serve(c) => (c, true),
        Cmd::Config(c) => (c, false),
        Cmd::Cluster(cmd) => return cluster_command(cmd),
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
                // change (peer unreachable / reachable again) instead.
                tracing_subscriber::EnvFilter::new("info,hnsw_rs=warn,anndists=warn,openraft=off")
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(http_threads)
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

fn toml_string(config: &Config) -> Result<String, String> {
    toml::to_string(config).map_err(|e| e.to_string())
}
