//! `shoal-chaos`: run seeded fault campaigns against a cluster of real shoal processes and check
//! what the clients saw. Exits 0 when every campaign found no anomaly, 1 when one did, 2 when a
//! campaign could not run (the cluster never settled, a node would not start).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use shoal_chaos::campaign::{self, Config, Report};

#[derive(Parser, Debug)]
#[command(
    about = "Seeded fault campaigns against a shoal cluster, with a checker of every acknowledged write and read",
    long_about = "Starts a cluster of real shoal processes (each in a network namespace of its own where \
the machine allows it, else on loopback behind fault-injecting TCP proxies), runs clients that ingest, replace, delete, search and \
create and drop collections on every node, and injects a seeded schedule of faults: kill -9, \
SIGSTOP, partitions (minority, leader alone, bridge, one-way), packet loss, delay, restarts, a \
wiped data folder, a full disk, actor panics, wall-clock jumps. Then it heals everything, lets the cluster settle and checks the \
history and every node's final state. A failing run is replayed with its seed."
)]
struct Args {
    /// Seeds to run, one campaign each (`random` draws one and prints it).
    #[arg(long, value_delimiter = ',', default_value = "random")]
    seed: Vec<String>,
    /// Nodes in the cluster (all voters).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// How long each campaign injects faults, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Shortest and longest time a fault is held, in ms.
    #[arg(long, default_value = "1000,4000", value_delimiter = ',')]
    hold_ms: Vec<u64>,
    /// The shoal binary [default: $SHOAL_BIN, else target/debug/shoal].
    #[arg(long, value_name = "FILE")]
    bin: Option<PathBuf>,
    /// The embedding model folder [default: $SHOAL_MODEL_DIR, else models/all-MiniLM-L6-v2].
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Stay on loopback, with a fault-injecting TCP proxy in front of each node, even where
    /// namespaces can be made.
    #[arg(long)]
    loopback: bool,
    /// Write the reports (a JSON list) here.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Also write the summaries, as Markdown, here (for docs/chaos.md).
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Keep the nodes' logs of a failing campaign here [default: chaos-logs/seed-N].
    #[arg(long, value_name = "DIR")]
    logs: Option<PathBuf>,
    /// Each node's disk where it has one of its own (a tmpfs), in MiB [default: 512 for up to
    /// 10 minutes of faults, 2048 beyond].
    #[arg(long, value_name = "MIB")]
    disk_mib: Option<u64>,
    /// Draw faults only of these kinds (comma-separated: kill_leader, kill_follower,
    /// pause_leader, pause_follower, isolate_leader, partition_minority, bridge,
    /// one_way_from_leader, packet_loss, delay, graceful_restart, wipe_follower, actor_panic,
    /// disk_full, remove_and_rejoin, clock_jump) [default: every kind].
    #[arg(long, value_delimiter = ',', value_name = "KIND")]
    faults: Vec<String>,
    /// Take the kinds of --faults in turn, in the order given, instead of drawing them (the
    /// hold and the nodes hit are still drawn from the seed).
    #[arg(long)]
    in_turn: bool,
    /// Run against the docker-compose stack (three containers of the shoal image, from this
    /// compose file) instead of processes: faults by docker kill, pause, stop and network
    /// disconnect (scripts/chaos-compose.sh builds the images and runs this).
    #[arg(long, value_name = "COMPOSE_FILE", num_args = 0..=1, default_missing_value = "docker-compose.yml")]
    compose: Option<PathBuf>,
    /// The shoal image of --compose [default: $SHOAL_IMAGE, else shoal:latest].
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
    #[command(subcommand)]
    command: Option<Tool>,
}

#[derive(clap::Subcommand, Debug)]
enum Tool {
    /// Hold the packets of a netfilter queue for a while, then let them go (what the campaign
    /// runs in a node's namespace to delay its packets where the kernel has no netem; stops,
    /// letting go of everything it holds, on SIGTERM). Says `ready` once it holds the queue.
    #[command(hide = true)]
    DelayPackets {
        /// The netfilter queue number.
        #[arg(long)]
        queue: u16,
        /// The delay, in ms.
        #[arg(long)]
        ms: u64,
        /// Each packet's delay is drawn from [ms - jitter, ms + jitter] (never overtaking the
        /// packet ahead).
        #[arg(long, default_value_t = 0)]
        jitter: u64,
        /// The seed of the draws.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Tool::DelayPackets {
        queue,
        ms,
        jitter,
        seed,
    }) = args.command
    {
        return match shoal_chaos::delay::run(
            queue,
            Duration::from_millis(ms),
            Duration::from_millis(jitter),
            seed,
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shoal-chaos delay-packets: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let bin = args
        .bin
        .clone()
        .or_else(|| std::env::var_os("SHOAL_BIN").map(PathBuf::from))
        .unwrap_or_else(|| root.join("target/debug/shoal"));
    let model = args
        .model
        .clone()
        .or_else(|| std::env::var_os("SHOAL_MODEL_DIR").map(PathBuf::from))
        .unwrap_or_else(|| root.join("models/all-MiniLM-L6-v2"));
    if args.compose.is_none() && !bin.is_file() {
        eprintln!(
            "shoal-chaos: no shoal binary at {} (cargo build --bin shoal, or --bin)",
            bin.display()
        );
        return ExitCode::from(2);
    }
    if args.compose.is_none() && !model.join("model.safetensors").is_file() {
        eprintln!(
            "shoal-chaos: no model at {} (scripts/fetch-model.sh, or --model)",
            model.display()
        );
        return ExitCode::from(2);
    }
    if args.hold_ms.len() != 2 || args.hold_ms[0] > args.hold_ms[1] || args.nodes < 3 {
        eprintln!("shoal-chaos: --hold-ms takes MIN,MAX and --nodes at least 3");
        return ExitCode::from(2);
    }
    let mut faults = Vec::new();
    for name in &args.faults {
        match campaign::FaultKind::parse(name) {
            Some(k) => faults.push(k),
            None => {
                let known: Vec<String> = campaign::ALL_FAULTS.iter().map(|k| k.name()).collect();
                eprintln!(
                    "shoal-chaos: --faults: no fault kind {name:?} (kinds: {})",
                    known.join(", ")
                );
                return ExitCode::from(2);
            }
        }
    }
    if faults.is_empty() {
        faults = if args.compose.is_some() {
            campaign::COMPOSE_FAULTS.to_vec()
        } else {
            campaign::ALL_FAULTS.to_vec()
        };
    }
    let compose = args.compose.as_ref().map(|file| campaign::ComposeSetup {
        file: if file.is_absolute() {
            file.clone()
        } else {
            std::env::current_dir().unwrap_or_default().join(file)
        },
        image: args
            .image
            .clone()
            .or_else(|| std::env::var("SHOAL_IMAGE").ok())
            .unwrap_or_else(|| "shoal:latest".into()),
    });
    if compose.is_some() {
        let usable = faults.iter().any(|k| campaign::COMPOSE_FAULTS.contains(k));
        if !usable {
            let names: Vec<String> = campaign::COMPOSE_FAULTS.iter().map(|k| k.name()).collect();
            eprintln!(
                "shoal-chaos: --compose makes only these faults: {}",
                names.join(", ")
            );
            return ExitCode::from(2);
        }
    }
    if let Some(setup) = &compose {
        if !setup.file.is_file() {
            eprintln!("shoal-chaos: no compose file at {}", setup.file.display());
            return ExitCode::from(2);
        }
        if args.nodes != 3 {
            eprintln!("shoal-chaos: the compose stack has three nodes (--nodes 3)");
            return ExitCode::from(2);
        }
    }
    let mut reports: Vec<Report> = Vec::new();
    let mut failed = false;
    let mut broken = false;
    for s in &args.seed {
        let seed = if s == "random" {
            rand::random::<u32>() as u64
        } else {
            match s.parse::<u64>() {
                Ok(v) => v,
                Err(_) => {
                    eprintln!("shoal-chaos: --seed takes numbers or `random`, not {s:?}");
                    return ExitCode::from(2);
                }
            }
        };
        let disk_mib = args
            .disk_mib
            .unwrap_or_else(|| shoal_chaos::cluster::default_disk_mib(args.seconds));
        let narrowed = if args.faults.is_empty() {
            String::new()
        } else {
            format!(" --faults {}", args.faults.join(","))
        };
        let narrowed = if args.in_turn {
            format!("{narrowed} --in-turn")
        } else {
            narrowed
        };
        let narrowed = match &compose {
            Some(s) => format!(
                "{narrowed} --compose {} --image {}",
                s.file.display(),
                s.image
            ),
            None if args.loopback => format!("{narrowed} --loopback"),
            None => narrowed,
        };
        println!("== chaos campaign, seed {seed} (replay: shoal-chaos --seed {seed} --nodes {} --clients {} --seconds {} --disk-mib {disk_mib}{narrowed})", args.nodes, args.clients, args.seconds);
        let cfg = Config {
            nodes: args.nodes,
            clients: args.clients,
            seed,
            duration: Duration::from_secs(args.seconds),
            hold_ms: (args.hold_ms[0], args.hold_ms[1]),
            bin: bin.clone(),
            model: model.clone(),
            loopback: args.loopback,
            disk_mib,
            delayer: std::env::current_exe().ok(),
            faults: faults.clone(),
            compose: compose.clone(),
            in_turn: args.in_turn,
            keep_logs: Some(
                args.logs
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("chaos-logs"))
                    .join(format!("seed-{seed}")),
            ),
        };
        match campaign::run(&cfg) {
            Ok(r) => {
                println!("{}", r.summary());
                failed |= !r.anomalies.is_empty();
                broken |= r.harness_error.is_some();
                reports.push(r);
            }
            Err(e) => {
                eprintln!("shoal-chaos: the campaign with seed {seed} could not run: {e:#}");
                broken = true;
            }
        }
    }
    if let Some(path) = &args.report {
        match serde_json::to_string_pretty(&reports) {
            Ok(j) => {
                if let Err(e) = std::fs::write(path, j) {
                    eprintln!("shoal-chaos: cannot write {}: {e}", path.display());
                }
            }
            Err(e) => eprintln!("shoal-chaos: cannot encode the report: {e}"),
        }
    }
    if let Some(path) = &args.markdown {
        let mut md = String::new();
        for r in &reports {
            md.push_str("```\n");
            md.push_str(&r.summary());
            md.push_str("```\n\n");
        }
        if let Err(e) = std::fs::write(path, md) {
            eprintln!("shoal-chaos: cannot write {}: {e}", path.display());
        }
    }
    if broken {
        ExitCode::from(2)
    } else if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
