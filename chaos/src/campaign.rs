//! A campaign: start a cluster, run the clients, inject a seeded schedule of faults (each held a
//! while, then healed and the cluster let settle), stop the clients, settle, read every node's
//! final state and check it all. The same seed gives the same schedule of faults (which node is
//! hit depends on who leads at that moment, as it must).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

use crate::checker::{check_final, check_history, Anomaly, FinalDoc, FinalNode, Reset};
use crate::cluster::{ChaosCluster, HttpError};
use crate::history::{Op, OpKind, Outcome, COLLECTION};
use crate::net::Network;
use crate::workload::{Targets, Workload};

/// The calm start before the first fault.
const CALM: Duration = Duration::from_secs(5);

pub struct Config {
    pub nodes: usize,
    pub clients: usize,
    pub seed: u64,
    /// How long the clients run (faults are injected until then).
    pub duration: Duration,
    /// How long each fault is held, in ms (a range).
    pub hold_ms: (u64, u64),
    pub bin: PathBuf,
    pub model: PathBuf,
    /// Use loopback and the proxies even where namespaces could be made.
    pub loopback: bool,
    /// Keep the nodes' logs here when the campaign finds an anomaly or fails.
    pub keep_logs: Option<PathBuf>,
    /// Each node's disk (where it has one of its own), in MiB.
    pub disk_mib: u64,
    /// The kinds of fault the schedule draws from (all of [`ALL_FAULTS`] unless narrowed).
    pub faults: Vec<FaultKind>,
    /// Take the kinds of `faults` in turn (the hold and the nodes hit still drawn from the
    /// seed) instead of drawing them.
    pub in_turn: bool,
    /// Run against the docker-compose stack instead of processes of `bin`.
    pub compose: Option<ComposeSetup>,
    /// The program that holds delayed packets where the kernel has no netem (`shoal-chaos`
    /// itself, with its `delay-packets` command); none: no delay there.
    pub delayer: Option<PathBuf>,
}

/// The docker-compose stack to run a campaign against.
#[derive(Clone, Debug)]
pub struct ComposeSetup {
    /// docker-compose.yml.
    pub file: PathBuf,
    /// The shoal image (`shoal:latest`, as scripts/docker-images.sh makes it).
    pub image: String,
}

/// What Docker can do to the compose stack's nodes: `docker kill` (and start), `docker pause`
/// (and unpause), `docker stop` (and start), `docker network disconnect` (and connect) of the
/// leader alone or of a follower, and an actor panic through the fault switch.
pub const COMPOSE_FAULTS: &[FaultKind] = &[
    FaultKind::KillLeader,
    FaultKind::KillFollower,
    FaultKind::PauseLeader,
    FaultKind::PauseFollower,
    FaultKind::IsolateLeader,
    FaultKind::PartitionMinority,
    FaultKind::GracefulRestart,
    FaultKind::ActorPanic,
];

/// The kinds of fault the schedule draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    KillLeader,
    KillFollower,
    PauseLeader,
    PauseFollower,
    IsolateLeader,
    PartitionMinority,
    Bridge,
    OneWayFromLeader,
    PacketLoss,
    Delay,
    GracefulRestart,
    WipeFollower,
    ActorPanic,
    DiskFull,
    RemoveAndRejoin,
    ClockJump,
}

impl FaultKind {
    /// Its name in reports and on the command line (`kill_leader`, `clock_jump`, ...).
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    }

    /// The kind called `name`.
    pub fn parse(name: &str) -> Option<FaultKind> {
        ALL_FAULTS.iter().copied().find(|k| k.name() == name)
    }

    /// Whether the nodes it hits may come back with less state than they had (killed before
    /// their last writes reached the disk, wiped, a full disk).
    fn may_lose_state(self) -> bool {
        matches!(
            self,
            FaultKind::KillLeader
                | FaultKind::KillFollower
                | FaultKind::GracefulRestart
                | FaultKind::WipeFollower
                | FaultKind::DiskFull
                | FaultKind::RemoveAndRejoin
        )
    }
}

/// Every kind of fault, in the order the schedule draws from.
pub const ALL_FAULTS: &[FaultKind] = &[
    FaultKind::KillLeader,
    FaultKind::KillFollower,
    FaultKind::PauseLeader,
    FaultKind::PauseFollower,
    FaultKind::IsolateLeader,
    FaultKind::PartitionMinority,
    FaultKind::Bridge,
    FaultKind::OneWayFromLeader,
    FaultKind::PacketLoss,
    FaultKind::Delay,
    FaultKind::GracefulRestart,
    FaultKind::WipeFollower,
    FaultKind::ActorPanic,
    FaultKind::DiskFull,
    FaultKind::RemoveAndRejoin,
    FaultKind::ClockJump,
];

#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    /// Nodes hit (1-based ids).
    pub nodes: Vec<u64>,
    /// Nodes found stopped by themselves (a fatal store error) while this fault was made or
    /// healed, and started again (1-based ids).
    pub restarted: Vec<u64>,
    pub detail: String,
    pub start_ms: f64,
    pub healed_ms: f64,
    /// When the cluster had settled again (a leader, every voter back).
    pub settled_ms: f64,
    /// The longest stretch after the fault began in which the probers of the nodes it spared
    /// (of every node, where it hit them all) had no successful write / strong search.
    pub writes_unavailable_ms: f64,
    pub searches_unavailable_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seed: u64,
    pub nodes: usize,
    pub clients: usize,
    pub network: String,
    pub duration_s: f64,
    pub faults: Vec<FaultRecord>,
    /// Operation kind → outcome → count.
    pub operations: BTreeMap<String, BTreeMap<String, usize>>,
    /// Why operations were refused or went unanswered: "kind: status or error" → (count, the
    /// first such answer).
    pub failures: BTreeMap<String, (usize, String)>,
    /// The same measure as each fault's unavailability, over the calm start before the first
    /// fault: what this machine gives with no fault at all.
    pub calm_writes_gap_ms: f64,
    pub calm_searches_gap_ms: f64,
    pub documents_checked: usize,
    pub anomalies: Vec<Anomaly>,
    /// Faults the schedule could not make here (and why).
    pub skipped: Vec<String>,
    /// Set when the campaign could not finish (the cluster never settled after a fault, a node
    /// would not start): the history up to then was still checked.
    pub harness_error: Option<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.anomalies.is_empty() && self.harness_error.is_none()
    }

    /// A summary a person reads.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "chaos campaign: seed {}, {} nodes, {} clients, {:.0} s, network: {}\n",
            self.seed, self.nodes, self.clients, self.duration_s, self.network
        ));
        s.push_str(&format!("faults injected: {}\n", self.faults.len()));
        s.push_str("  kind                  nodes   held ms  settled ms  writes unavailable ms  searches unavailable ms\n");
        for f in &self.faults {
            // (a fault after which the cluster never settled has no settle time)
            let settled = if f.settled_ms > 0.0 {
                format!("{:.0}", f.settled_ms - f.start_ms)
            } else {
                "never".into()
            };
            s.push_str(&format!(
                "  {:<21} {:<7} {:>7.0}  {:>10}  {:>21.0}  {:>23.0}  {}\n",
                format!("{:?}", f.kind),
                f.nodes
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                f.healed_ms - f.start_ms,
                settled,
                f.writes_unavailable_ms,
                f.searches_unavailable_ms,
                if f.restarted.is_empty() {
                    f.detail.clone()
                } else {
                    format!(
                        "{}; stopped by itself and started again: node {:?}",
                        f.detail, f.restarted
                    )
                }
            ));
        }
        s.push_str(&format!(
            "  (with no fault, over the calm start: {:.0} ms between writes, {:.0} ms between searches)\n",
            self.calm_writes_gap_ms, self.calm_searches_gap_ms
        ));
        for k in &self.skipped {
            s.push_str(&format!("  not made here: {k}\n"));
        }
        s.push_str("operations (ok / fail / unknown):\n");
        for (kind, by) in &self.operations {
            s.push_str(&format!(
                "  {:<18} {:>6} / {:>5} / {:>5}\n",
                kind,
                by.get("ok").copied().unwrap_or(0),
                by.get("fail").copied().unwrap_or(0),
                by.get("unknown").copied().unwrap_or(0)
            ));
        }
        if !self.failures.is_empty() {
            let list: Vec<String> = self
                .failures
                .iter()
                .map(|(k, (n, _))| format!("{k} x{n}"))
                .collect();
            s.push_str(&format!("refused or unanswered: {}\n", list.join(", ")));
        }
        s.push_str(&format!(
            "documents checked on every node: {}\n",
            self.documents_checked
        ));
        if let Some(e) = &self.harness_error {
            s.push_str(&format!("THE CAMPAIGN COULD NOT FINISH: {e}\n"));
        }
        if self.anomalies.is_empty() {
            s.push_str("anomalies: none\n");
        } else {
            s.push_str(&format!("anomalies: {}\n", self.anomalies.len()));
            for a in self.anomalies.iter().take(30) {
                s.push_str(&format!("  {}: {}\n", a.kind, a.detail));
            }
        }
        s
    }
}

/// Run one campaign. An error is a harness failure (the cluster never settled, a node would not
/// start); anomalies are in the report.
pub fn run(cfg: &Config) -> anyhow::Result<Report> {
    let env: Vec<(String, String)> = vec![
        // snapshots and compaction happen during the campaign, not only at its end
        ("SHOAL_CLUSTER__SNAPSHOT_AFTER_ENTRIES".into(), "200".into()),
        (
            "SHOAL_CLUSTER__KEEP_ENTRIES_AFTER_SNAPSHOT".into(),
            "50".into(),
        ),
    ];
    let net = if let Some(setup) = &cfg.compose {
        Network::Compose(crate::compose::ComposeStack::start(
            &setup.file,
            &setup.image,
            cfg.nodes,
            crate::cluster::SECRET,
            &env,
            cfg.seed,
        )?)
    } else if cfg.loopback {
        Network::loopback(cfg.nodes)?
    } else {
        match Network::namespaces(cfg.nodes, cfg.seed, cfg.delayer.clone()) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("chaos: network namespaces cannot be made here ({e:#}); falling back to loopback with a fault-injecting TCP proxy in front of each node");
                Network::loopback(cfg.nodes)?
            }
        }
    };
    let network = net.describe();
    eprintln!("chaos: seed {} on {network}", cfg.seed);
    let clocks = cfg.faults.contains(&FaultKind::ClockJump);
    let mut c = ChaosCluster::start(
        net,
        cfg.nodes,
        &cfg.bin,
        &cfg.model,
        &env,
        cfg.disk_mib,
        clocks,
    )?;
    let result = campaign(cfg, &mut c, network);
    match &result {
        Ok(r) if r.passed() => {}
        _ => {
            if let Some(dir) = &cfg.keep_logs {
                c.keep_logs(dir);
                eprintln!("chaos: the nodes' logs are in {}", dir.display());
            }
        }
    }
    result
}

fn campaign(cfg: &Config, c: &mut ChaosCluster, network: String) -> anyhow::Result<Report> {
    let leader = c.wait_leader(Duration::from_secs(30))?;
    c.send(
        leader,
        "PUT",
        &format!("/api/v1/collections/{COLLECTION}"),
        Some(json!({})),
    )
    .context("create the campaign's collection")?;
    let t0 = Instant::now();
    let workload = Workload::start(
        Targets {
            bases: c.nodes.iter().map(|n| n.base.clone()).collect(),
        },
        cfg.clients,
        cfg.seed,
        t0,
    );
    let ms = || t0.elapsed().as_secs_f64() * 1000.0;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut faults = Vec::new();
    let mut skipped = Vec::new();
    // the clients warm up before the first fault (and time a calm stretch)
    std::thread::sleep(CALM);
    let mut harness_error = None;
    let mut turn = 0;
    // kinds found unavailable since the last fault made, and how many times in a row
    let mut unavailable = std::collections::BTreeSet::new();
    let mut in_a_row = 0;
    while t0.elapsed() < cfg.duration {
        let drawn = cfg.faults[rng.gen_range(0..cfg.faults.len())];
        let kind = if cfg.in_turn {
            turn += 1;
            cfg.faults[(turn - 1) % cfg.faults.len()]
        } else {
            drawn
        };
        let hold = Duration::from_millis(rng.gen_range(cfg.hold_ms.0..=cfg.hold_ms.1));
        let pick: u64 = rng.gen();
        match inject(c, kind, hold, pick, &ms) {
            Ok(Some(mut f)) => {
                unavailable.clear();
                in_a_row = 0;
                let settled = settle(c, Duration::from_secs(90), false);
                f.restarted = std::mem::take(&mut c.stopped_by_themselves)
                    .into_iter()
                    .map(|i| i as u64 + 1)
                    .collect();
                if let Err(e) = settled {
                    harness_error = Some(e.context(format!("settling after {kind:?}")));
                    faults.push(f);
                    break;
                }
                f.settled_ms = ms();
                eprintln!(
                    "chaos: {kind:?} on {:?} ({}) held {:.0} ms, settled after {:.0} ms",
                    f.nodes,
                    f.detail,
                    f.healed_ms - f.start_ms,
                    f.settled_ms - f.start_ms
                );
                faults.push(f);
            }
            Ok(None) => {
                let what = format!("{kind:?} (not available on this network or node)");
                if !skipped.contains(&what) {
                    skipped.push(what);
                }
                unavailable.insert(kind);
                in_a_row += 1;
                // every kind asked for, each found unavailable (not only once: an actor panic
                // finds no actor to hit while a node restarts), and none made meanwhile
                if in_a_row >= 3 * cfg.faults.len()
                    && cfg.faults.iter().all(|k| unavailable.contains(k))
                {
                    harness_error = Some(anyhow::anyhow!(
                        "none of the faults asked for can be made here: {}",
                        skipped.join(", ")
                    ));
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(e) => {
                harness_error = Some(e.context(format!("injecting {kind:?}")));
                break;
            }
        }
        // calm between faults
        std::thread::sleep(Duration::from_millis(rng.gen_range(500..1500)));
    }
    let history = workload.finish();
    let duration_s = t0.elapsed().as_secs_f64();
    // a node's reads are compared across time except where it may have lost or rebuilt its
    // state (a pause, a cut, lost packets or an actor's panic lose nothing: its reads must not
    // go back across them)
    let resets: Vec<Reset> = faults
        .iter()
        .flat_map(|f| {
            let hit: &[u64] = if f.kind.may_lose_state() {
                &f.nodes
            } else {
                &[]
            };
            hit.iter().chain(&f.restarted).map(move |id| Reset {
                node: *id as usize - 1,
                from_ms: f.start_ms,
                to_ms: if f.settled_ms > 0.0 {
                    f.settled_ms
                } else {
                    f64::MAX
                },
            })
        })
        .collect();
    let mut anomalies = check_history(&history, &resets);
    let finals = match harness_error {
        Some(e) => Err(e),
        None => settle(c, Duration::from_secs(120), true).and_then(|()| final_state(c, &history)),
    };
    let (finals, harness_error) = match finals {
        Ok(f) => (f, None),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    anomalies.extend(check_final(&history, &finals));
    let mut operations: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut failures: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for op in &history {
        *operations
            .entry(op.kind.name().into())
            .or_default()
            .entry(op.outcome.label().into())
            .or_default() += 1;
        let why = match &op.outcome {
            Outcome::Ok { .. } => continue,
            Outcome::Fail { status: 0, .. } => "not connected".to_string(),
            Outcome::Fail { status, .. } => status.to_string(),
            Outcome::Unknown { message } => match message.split_whitespace().next() {
                Some(code) if code.parse::<u16>().is_ok() => code.to_string(),
                _ if message.contains("timed out") => "timed out".into(),
                _ => "connection lost".into(),
            },
        };
        let message = match &op.outcome {
            Outcome::Fail { message, .. } | Outcome::Unknown { message } => message.clone(),
            Outcome::Ok { .. } => String::new(),
        };
        let e = failures
            .entry(format!("{}: {why}", op.kind.name()))
            .or_insert((0, message.chars().take(300).collect()));
        e.0 += 1;
    }
    let all: Vec<usize> = (0..cfg.nodes).collect();
    let calm_until = faults
        .first()
        .map(|f| f.start_ms)
        .unwrap_or(end_of(&history));
    let calm_from = 1000.0;
    let calm_writes_gap_ms = longest_gap(&history, calm_from, calm_until, true, &all, cfg.clients);
    let calm_searches_gap_ms =
        longest_gap(&history, calm_from, calm_until, false, &all, cfg.clients);
    // unavailability, from the history
    let end = end_of(&history);
    for i in 0..faults.len() {
        let until = faults
            .get(i + 1)
            .map(|f: &FaultRecord| f.start_ms)
            .unwrap_or(end);
        let from = faults[i].start_ms;
        let hit: Vec<usize> = faults[i].nodes.iter().map(|id| *id as usize - 1).collect();
        let spared: Vec<usize> = (0..cfg.nodes).filter(|n| !hit.contains(n)).collect();
        // as a client of the nodes the fault spared sees it (all nodes where it hit all)
        let through = if spared.is_empty() {
            (0..cfg.nodes).collect()
        } else {
            spared
        };
        faults[i].writes_unavailable_ms =
            longest_gap(&history, from, until, true, &through, cfg.clients);
        faults[i].searches_unavailable_ms =
            longest_gap(&history, from, until, false, &through, cfg.clients);
    }
    // on loopback: how much went through the proxies, and what they could not fault
    let network = match c.net.proxied() {
        Some((made, unnamed, own)) => format!(
            "{network}; {made} connections through the proxies, {unnamed} of them naming no node and {own} from a node to itself (neither faulted)"
        ),
        None => network,
    };
    Ok(Report {
        seed: cfg.seed,
        nodes: cfg.nodes,
        clients: cfg.clients,
        network,
        duration_s,
        faults,
        operations,
        failures,
        calm_writes_gap_ms,
        calm_searches_gap_ms,
        documents_checked: finals.first().map(|n| n.docs.len()).unwrap_or(0),
        anomalies,
        skipped,
        harness_error,
    })
}

/// The longest time in [from, until) in which the probers of the nodes `through` (clients from
/// `first_prober` on) had no successful write (or search), counted from `from`.
fn longest_gap(
    history: &[Op],
    from: f64,
    until: f64,
    writes: bool,
    through: &[usize],
    first_prober: usize,
) -> f64 {
    let mut ends: Vec<f64> = history
        .iter()
        .filter(|o| o.client >= first_prober && through.contains(&o.node))
        .filter(|o| {
            if writes {
                matches!(o.kind, OpKind::Ingest { .. } | OpKind::Delete { .. })
            } else {
                matches!(o.kind, OpKind::Search { .. })
            }
        })
        .filter(|o| matches!(o.outcome, Outcome::Ok { .. }))
        .map(|o| o.end_ms)
        .filter(|t| *t >= from && *t < until)
        .collect();
    ends.sort_by(f64::total_cmp);
    let mut last = from;
    let mut gap: f64 = 0.0;
    for t in ends {
        gap = gap.max(t - last);
        last = t;
    }
    gap.max(until - last)
}

fn end_of(history: &[Op]) -> f64 {
    history.iter().map(|o| o.end_ms).fold(0.0, f64::max)
}

fn others(c: &ChaosCluster, not: usize) -> Vec<usize> {
    (0..c.nodes.len()).filter(|i| *i != not).collect()
}

/// Inject one fault, hold it, heal it. None: this network cannot make it.
fn inject(
    c: &mut ChaosCluster,
    kind: FaultKind,
    hold: Duration,
    pick: u64,
    ms: &dyn Fn() -> f64,
) -> anyhow::Result<Option<FaultRecord>> {
    if c.net.compose().is_some() && !COMPOSE_FAULTS.contains(&kind) {
        return Ok(None);
    }
    let docker = c.net.compose().is_some();
    let leader = c.wait_leader(Duration::from_secs(30))?;
    let n = c.nodes.len();
    let followers = others(c, leader);
    let follower = followers[pick as usize % followers.len()];
    let start = ms();
    let mut hit = Vec::new();
    let detail;
    match kind {
        FaultKind::KillLeader | FaultKind::KillFollower => {
            let v = if kind == FaultKind::KillLeader {
                leader
            } else {
                follower
            };
            c.kill9(v);
            hit.push(v);
            detail = if docker {
                "docker kill, then docker start".into()
            } else {
                "kill -9, then restarted".into()
            };
            std::thread::sleep(hold);
            c.restart(v)?;
        }
        FaultKind::PauseLeader | FaultKind::PauseFollower => {
            let v = if kind == FaultKind::PauseLeader {
                leader
            } else {
                follower
            };
            c.pause(v)?;
            hit.push(v);
            detail = if docker {
                "docker pause, then unpause".into()
            } else {
                "SIGSTOP, then SIGCONT".into()
            };
            std::thread::sleep(hold);
            c.resume(v);
        }
        FaultKind::IsolateLeader | FaultKind::PartitionMinority => {
            // the minority: the leader alone, or (in larger clusters) followers
            let minority: Vec<usize> = if kind == FaultKind::IsolateLeader {
                vec![leader]
            } else {
                let size = (n - 1) / 2;
                let mut f = followers.clone();
                let turn = pick as usize % f.len();
                f.rotate_left(turn);
                f.truncate(size.max(1));
                f
            };
            for a in &minority {
                for b in 0..n {
                    if !minority.contains(&b) {
                        c.block(*a, b, true);
                    }
                }
            }
            hit = minority;
            detail = if docker {
                "docker network disconnect, then connect".into()
            } else {
                "cut off from the majority".into()
            };
            c.apply_network()?;
            std::thread::sleep(hold);
            c.heal_network()?;
        }
        FaultKind::Bridge => {
            // one node sees both sides; the sides do not see each other
            let bridge = (pick as usize) % n;
            let rest = others(c, bridge);
            let (left, right) = rest.split_at(rest.len() / 2);
            for a in left {
                for b in right {
                    c.block(*a, *b, true);
                }
            }
            hit = vec![bridge];
            detail = format!(
                "node {} bridges {:?} and {:?}",
                bridge + 1,
                left.iter().map(|i| i + 1).collect::<Vec<_>>(),
                right.iter().map(|i| i + 1).collect::<Vec<_>>()
            );
            c.apply_network()?;
            std::thread::sleep(hold);
            c.heal_network()?;
        }
        FaultKind::OneWayFromLeader => {
            if !c.net.cuts_in_network() {
                return Ok(None);
            }
            c.block(leader, follower, false);
            hit = vec![leader, follower];
            detail = format!("node {} cannot send to node {}", leader + 1, follower + 1);
            c.apply_network()?;
            std::thread::sleep(hold);
            c.heal_network()?;
        }
        FaultKind::PacketLoss => {
            if !c.net.can_lose_packets() {
                return Ok(None);
            }
            let pct = 10 + (pick % 31) as u8;
            c.loss.iter_mut().for_each(|l| *l = pct);
            hit = (0..n).collect();
            detail = format!("{pct}% of packets lost");
            c.apply_network()?;
            std::thread::sleep(hold);
            c.heal_network()?;
        }
        FaultKind::Delay => {
            if !c.net.can_delay() {
                return Ok(None);
            }
            // half the time a delay the cluster's timers allow for (a round trip well under the
            // heartbeat, 100 ms by default: openraft gives each replication request that long),
            // during which writes and searches should go on; half the time one beyond it (a
            // slow WAN link), during which writes stall, and nothing may be lost
            let d = if pick & 1 == 0 {
                5 + ((pick >> 1) % 26) as u32
            } else {
                60 + ((pick >> 1) % 191) as u32
            };
            for i in 0..n {
                c.net.delay(i, d)?;
            }
            hit = (0..n).collect();
            detail = format!("{d} ms delay");
            std::thread::sleep(hold);
            c.heal_network()?;
        }
        FaultKind::GracefulRestart => {
            let v = (pick as usize) % n;
            c.terminate(v);
            hit.push(v);
            detail = if docker {
                "docker stop, then docker start".into()
            } else {
                "SIGTERM, then started".into()
            };
            std::thread::sleep(hold / 2);
            c.restart(v)?;
        }
        FaultKind::WipeFollower => {
            c.wipe(follower, leader)?;
            hit.push(follower);
            detail = "data folder wiped; rejoined as a learner and promoted".into();
            // promoted once it has caught up (in settle)
            std::thread::sleep(hold);
        }
        FaultKind::RemoveAndRejoin => {
            // a membership change while the clients write: a voter leaves the cluster, and
            // comes back as a new, empty node that catches up and is promoted
            let id = follower as u64 + 1;
            c.send(
                leader,
                "DELETE",
                &format!("/api/v1/cluster/nodes/{id}"),
                None,
            )?;
            c.wipe(follower, leader)?;
            hit.push(follower);
            detail = "removed from the cluster, wiped, joined again and promoted".into();
            std::thread::sleep(hold);
        }
        FaultKind::DiskFull => {
            if !c.small_disks {
                return Ok(None);
            }
            let v = (pick as usize) % n;
            let ballast = c.fill_disk(v, 64 * 1024)?;
            hit.push(v);
            std::thread::sleep(hold);
            let _ = std::fs::remove_file(&ballast);
            let ended = c.reap();
            detail = match ended.iter().find(|(i, _)| *i == v) {
                Some((_, status)) => {
                    format!("disk full; the node stopped ({status}) and was started again")
                }
                None => "disk full, then freed".into(),
            };
        }
        FaultKind::ClockJump => {
            if !c.can_jump_clocks() {
                return Ok(None);
            }
            // the leader (whose clock stamps claims) or a follower, 20 s to 5 min ahead or back,
            // as a badly set clock or an NTP step would move it; then the real time again, a
            // second jump the other way
            // (bits of `pick` apart from the follower's, which takes its low bits)
            let v = if (pick >> 40) & 1 == 0 {
                leader
            } else {
                follower
            };
            let secs = 20 + ((pick >> 8) % 281) as i64;
            let secs = if (pick >> 41) & 1 == 0 { secs } else { -secs };
            c.jump_clock(v, secs)?;
            hit.push(v);
            detail = format!(
                "wall clock {} s {}, then back",
                secs.abs(),
                if secs > 0 { "ahead" } else { "back" }
            );
            // the node sees a change of its clock file within CLOCK_LAG: the jump is in effect
            // for at least two seconds, and the fault ends once the node is surely back
            std::thread::sleep(hold.max(crate::cluster::CLOCK_LAG + Duration::from_secs(2)));
            c.jump_clock(v, 0)?;
            std::thread::sleep(crate::cluster::CLOCK_LAG);
        }
        FaultKind::ActorPanic => {
            let v = (pick as usize) % n;
            let actors = c.get(v, "/api/v1/admin/actors")?;
            let names: Vec<String> = actors["actors"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|a| a["name"].as_str().map(String::from))
                .collect();
            if names.is_empty() {
                return Ok(None);
            }
            let name = &names[(pick as usize / 7) % names.len()];
            c.send(
                v,
                "POST",
                &format!("/api/v1/admin/actors/{name}/panic"),
                None,
            )?;
            hit.push(v);
            detail = format!("actor {name} panicked");
            std::thread::sleep(hold);
        }
    }
    Ok(Some(FaultRecord {
        kind,
        nodes: hit.iter().map(|i| *i as u64 + 1).collect(),
        restarted: Vec::new(),
        detail,
        start_ms: start,
        healed_ms: ms(),
        settled_ms: 0.0,
        writes_unavailable_ms: 0.0,
        searches_unavailable_ms: 0.0,
    }))
}

/// Heal everything, bring every node back and wait until the cluster has a leader and every node
/// is a voter again (promoting learners that caught up); with `converge`, also until every
/// replica has the same store (only once the clients have stopped writing).
fn settle(c: &mut ChaosCluster, limit: Duration, converge: bool) -> anyhow::Result<()> {
    for (i, status) in c.reap() {
        eprintln!(
            "chaos: node {} had stopped by itself ({status}); starting it again",
            i + 1
        );
    }
    c.heal_network()?;
    c.reset_clocks()?;
    for i in 0..c.nodes.len() {
        if c.nodes[i].paused {
            c.resume(i);
        }
        if !c.nodes[i].is_running() {
            c.restart(i)?;
        }
    }
    let start = Instant::now();
    let voters = c.nodes.len();
    loop {
        // a node whose store failed stops by itself, maybe only after it seemed up: start it
        // again whenever that happens
        for (i, status) in c.reap() {
            eprintln!(
                "chaos: node {} had stopped by itself ({status}); starting it again",
                i + 1
            );
            c.restart(i)?;
        }
        if start.elapsed() > limit {
            let views: Vec<String> = c
                .up()
                .iter()
                .map(|i| {
                    let s = c.get(*i, "/api/v1/cluster").unwrap_or(Value::Null);
                    let roles: Vec<String> = s["members"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|m| {
                            format!("{}:{}@{}", m["id"], m["role"], m["status"]["applied_index"])
                        })
                        .collect();
                    format!(
                        "node {} sees leader {} and {}",
                        i + 1,
                        s["leader"],
                        roles.join(" ")
                    )
                })
                .collect();
            bail!(
                "the cluster did not settle within {limit:?}: {}; digests {:?}",
                views.join("; "),
                c.digests()
            );
        }
        let Ok(leader) = c.wait_leader(Duration::from_secs(5)) else {
            continue;
        };
        let Ok(status) = c.get(leader, "/api/v1/cluster") else {
            continue;
        };
        let members = status["members"].as_array().cloned().unwrap_or_default();
        let learners: Vec<u64> = members
            .iter()
            .filter(|m| m["role"] == "learner")
            .filter_map(|m| m["id"].as_u64())
            .collect();
        for id in &learners {
            // refused until it has caught up; asked again next round
            let _ = c.send(
                leader,
                "POST",
                &format!("/api/v1/cluster/nodes/{id}/promote"),
                None,
            );
        }
        let voter_count = members.iter().filter(|m| m["role"] == "voter").count();
        if voter_count == voters && learners.is_empty() {
            if !converge {
                return Ok(());
            }
            let d = c.digests();
            if d.len() == voters && d.windows(2).all(|w| w[0].1 == w[1].1 && w[0].2 == w[1].2) {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every node's view of every document and collection of the history, once no document is
/// pending any more.
fn final_state(c: &mut ChaosCluster, history: &[Op]) -> anyhow::Result<Vec<FinalNode>> {
    let mut ids: Vec<String> = history
        .iter()
        .flat_map(|o| match &o.kind {
            OpKind::Ingest { docs } => docs.iter().map(|(id, _)| id.clone()).collect(),
            OpKind::Delete { doc } => vec![doc.clone()],
            _ => Vec::new(),
        })
        .collect();
    ids.sort();
    ids.dedup();
    let start = Instant::now();
    let limit = Duration::from_secs(180);
    loop {
        // a round reads every node; an error (a shard still loading after a restart) or a
        // document still pending means another round, until the limit
        let round = (0..c.nodes.len())
            .map(|i| read_node(c, i, &ids))
            .collect::<anyhow::Result<Vec<(FinalNode, usize)>>>();
        match round {
            Ok(nodes) => {
                let pending: usize = nodes.iter().map(|(_, p)| p).sum();
                let nodes: Vec<FinalNode> = nodes.into_iter().map(|(n, _)| n).collect();
                let same = nodes.windows(2).all(|w| {
                    (w[0].applied_index, &w[0].digest) == (w[1].applied_index, &w[1].digest)
                });
                if (pending == 0 && same) || start.elapsed() > limit {
                    return Ok(nodes);
                }
            }
            Err(e) if start.elapsed() > limit => {
                return Err(e.context("reading the nodes' final state"))
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Node `i`'s final state and how many documents it still holds pending. Its searches wait until
/// its index has caught up with its store (`min_index` at the store's applied index).
fn read_node(c: &ChaosCluster, i: usize, ids: &[String]) -> anyhow::Result<(FinalNode, usize)> {
    let d = c.get(i, "/api/v1/admin/digest")?;
    let mut n = FinalNode {
        node: i,
        applied_index: d["applied_index"].as_u64().unwrap_or(0),
        digest: d["digest"].as_str().unwrap_or_default().to_string(),
        ..FinalNode::default()
    };
    let mut pending = 0;
    for id in ids {
        let doc = match c.get(
            i,
            &format!("/api/v1/collections/{COLLECTION}/documents/{id}"),
        ) {
            Ok(d) => Some(FinalDoc {
                state: d["state"].as_str().unwrap_or_default().to_string(),
                text: d["text"].as_str().unwrap_or_default().to_string(),
                chunks: d["chunks"].as_u64().unwrap_or(0),
            }),
            // the document is not there (the collection is: never dropped)
            Err(e)
                if e.downcast_ref::<HttpError>()
                    .is_some_and(|h| h.status == 404 && h.body.contains("document `")) =>
            {
                None
            }
            Err(e) => return Err(e),
        };
        if doc.as_ref().is_some_and(|d| d.state == "pending") {
            pending += 1;
        }
        n.docs.insert(id.clone(), doc);
    }
    for batch in ids.chunks(100) {
        let r = c.send(
            i,
            "POST",
            &format!("/api/v1/collections/{COLLECTION}/search"),
            Some(json!({
                "query": "tells of the river",
                "top_k": 1000,
                "filter": {"document_id": batch},
                "min_index": n.applied_index,
            })),
        )?;
        for h in r["hits"].as_array().cloned().unwrap_or_default() {
            let doc = h["document_id"].as_str().unwrap_or_default().to_string();
            n.hits
                .entry(doc.clone())
                .or_default()
                .push(crate::history::Hit {
                    doc,
                    chunk: h["chunk_index"].as_u64().unwrap_or(0) as u32,
                    text: h["text"].as_str().unwrap_or_default().to_string(),
                });
        }
    }
    let cols = c.get(i, "/api/v1/collections")?;
    let list = cols
        .as_array()
        .cloned()
        .or_else(|| cols["collections"].as_array().cloned())
        .unwrap_or_default();
    n.collections = list
        .iter()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    // nothing may have changed while it was read
    let after = c.get(i, "/api/v1/admin/digest")?;
    if after["digest"].as_str() != Some(n.digest.as_str()) {
        anyhow::bail!("node {} changed while it was read", i + 1);
    }
    Ok((n, pending))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_kinds_are_named_as_in_reports_and_parse_back() {
        for k in ALL_FAULTS {
            let name = k.name();
            assert!(!name.is_empty());
            assert_eq!(FaultKind::parse(&name), Some(*k), "{name}");
        }
        assert_eq!(FaultKind::name(FaultKind::ClockJump), "clock_jump");
        assert_eq!(FaultKind::parse("ClockJump"), None);
        assert_eq!(FaultKind::parse("nonsense"), None);
    }
}
