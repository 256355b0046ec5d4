//! `shoal`: the command-line entry point. See `shoal --help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shoal_node::config::Config;

/// shoal: a semantic-search node. It ingests documents, embeds them with a BERT model running
/// in process, indexes them with HNSW and serves search over HTTP.
///
/// Configuration comes from defaults, then the file given with --config, then environment
/// variables SHOAL_<SECTION>__<FIELD> (for example SHOAL_SERVER__LISTEN=0.0.0.0:7400), then the
/// flags below. `shoal config` prints the result.
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
    /// Enable POST /api/v1/admin/actors/{name}/panic (tests and drills only).
    #[arg(long)]
    fault_injection: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a node.
    Serve(Common),
    /// Print the effective configuration as TOML and exit.
    Config(Common),
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
        match toml_string(&config) {
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
                tracing_subscriber::EnvFilter::new("info,hnsw_rs=warn,anndists=warn")
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

fn toml_string(config: &Config) -> Result<String, String> {
    toml::to_string(config).map_err(|e| e.to_string())
}
