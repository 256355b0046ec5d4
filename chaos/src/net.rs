//! The network the nodes talk over, and the faults made in it.
//!
//! With [`Network::namespaces`] every node is a host of its own: a network namespace with its own
//! address, joined by a veth pair to a bridge in a switch namespace (the campaign reaches the
//! nodes through a veth pair of its own to the same bridge). A cut is a packet
//! filter (nftables) inside the sending node's namespace that drops what it sends to the other
//! node: a real, silent cut as the nodes see it (established connections stall, new ones time
//! out), and a one-way cut where only one direction drops. Packet loss is a random drop in the
//! same filter; delay is `tc netem` where the kernel has it, else a netfilter queue
//! (`NFQUEUE`) that [`crate::delay`] holds the node's packets in.
//!
//! Where namespaces cannot be made (no root, no `ip` or `nft`), [`Network::loopback`] keeps every
//! node on 127.0.0.1 and puts a fault-injecting TCP proxy in front of each ([`crate::proxy`]):
//! the nodes advertise the proxies' addresses, so every request between nodes goes through one,
//! which freezes cut connections (one way or both), holds what a node sends for its delay, and
//! charges a retransmission timeout for each "lost" chunk. The campaign's report says which
//! network it ran on.

use std::collections::BTreeSet;
use std::io::{Read, Seek, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// How the nodes are connected.
pub enum Network {
    Namespaces(Namespaces),
    /// Every node on 127.0.0.1, reached by its peers through a proxy.
    Loopback {
        ports: Vec<u16>,
        proxies: crate::proxy::Proxies,
    },
    /// The docker-compose stack's network: faults are Docker's (see [`crate::compose`]).
    Compose(crate::compose::ComposeStack),
}

/// One namespace per node, a bridge in the campaign's own namespace.
pub struct Namespaces {
    /// Short tag in every name this campaign makes (interface names have 15 characters at most).
    tag: String,
    /// The first three octets of the subnet: the bridge is `.1`, node `i` is `.(i + 2)`.
    net: [u8; 3],
    nodes: usize,
    /// How packets are delayed here.
    pub delay: DelayTool,
    /// The programs holding each node's delayed packets (with [`DelayTool::Queue`]).
    delayers: parking_lot::Mutex<Vec<Option<crate::delay::Delayer>>>,
    made: bool,
    /// Held while the campaign lives: a later campaign removes what a dead one left behind.
    lock: Lock,
}

/// How a namespace's packets are delayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DelayTool {
    /// `tc qdisc ... netem delay` (where the kernel has the module).
    Netem,
    /// A packet filter rule hands the node's packets to a netfilter queue, and this program
    /// (`shoal-chaos delay-packets`, see [`crate::delay`]) holds them.
    Queue(PathBuf),
    /// Neither works here.
    None,
}

/// The netfilter queue each node's delayed packets go through (one per namespace).
const DELAY_QUEUE: u16 = 0;

/// Subnets (/24) in 198.18.0.0/15, one per campaign.
const SUBNETS: u64 = 512;

/// The port every node listens on inside its own namespace.
pub const NODE_PORT: u16 = 7400;

impl Network {
    /// A namespace per node, or an error saying why they cannot be made here. `delayer` is the
    /// program that holds delayed packets where the kernel has no netem (this binary, with its
    /// `delay-packets` command).
    pub fn namespaces(
        nodes: usize,
        seed: u64,
        delayer: Option<PathBuf>,
    ) -> anyhow::Result<Network> {
        for tool in ["ip", "nft"] {
            let ok = Command::new(tool)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                bail!("`{tool}` is not installed");
            }
        }
        sweep_stale();
        // A subnet of 198.18.0.0/15 (set aside for network tests, RFC 2544: no real network of
        // the host uses them) picked per process, seed and moment; the tag in every name is the
        // subnet's number, and its lock file is held while the campaign lives, so two campaigns
        // side by side never share names or addresses.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
        let salt =
            (std::process::id() as u64).wrapping_mul(0x9E37_79B9) ^ seed.rotate_left(17) ^ nanos;
        let dir = Lock::dir()?;
        let mut taken = None;
        let mut last_error = None;
        for attempt in 0..SUBNETS {
            let n = (salt.wrapping_add(attempt) % SUBNETS) as u16;
            let tag = format!("{n:03x}");
            match Lock::take(&dir, &tag) {
                Ok(Some(lock)) => {
                    taken = Some((n, tag, lock));
                    break;
                }
                Ok(None) => {}
                Err(e) => last_error = Some(e),
            }
        }
        let Some((n, tag, lock)) = taken else {
            match last_error {
                Some(e) => return Err(e.context("no chaos subnet could be taken")),
                None => bail!("every chaos subnet is held by a live campaign"),
            }
        };
        let net = [198, 18 + (n >> 8) as u8, (n & 0xff) as u8];
        let mut ns = Namespaces {
            tag,
            net,
            nodes,
            delay: DelayTool::None,
            delayers: parking_lot::Mutex::new((0..nodes).map(|_| None).collect()),
            made: false,
            lock,
        };
        ns.make()?;
        ns.delay = if ns.probe_netem() {
            DelayTool::Netem
        } else {
            match delayer {
                Some(program) if ns.probe_queue(&program) => DelayTool::Queue(program),
                _ => DelayTool::None,
            }
        };
        Ok(Network::Namespaces(ns))
    }

    /// Every node on 127.0.0.1, on ports free now, each behind a proxy of its own.
    pub fn loopback(nodes: usize) -> anyhow::Result<Network> {
        let mut ports = Vec::new();
        let mut held = Vec::new();
        for _ in 0..nodes {
            let l = TcpListener::bind("127.0.0.1:0").context("find a free port")?;
            ports.push(l.local_addr()?.port());
            held.push(l);
        }
        // the fronts bound while the nodes' ports are still held, so that none takes one of them
        let proxies = crate::proxy::Proxies::start(&ports)?;
        drop(held);
        Ok(Network::Loopback { ports, proxies })
    }

    pub fn describe(&self) -> String {
        match self {
            Network::Namespaces(ns) => format!(
                "a network namespace per node ({}.{}.{}.0/24), cuts and loss by nftables, delay {}",
                ns.net[0],
                ns.net[1],
                ns.net[2],
                match ns.delay {
                    DelayTool::Netem => "by tc netem",
                    DelayTool::Queue(_) =>
                        "by a netfilter queue (this kernel has no netem; shoal-chaos delay-packets)",
                    DelayTool::None => "not available (no netem, no netfilter queue)",
                }
            ),
            Network::Loopback { .. } => {
                "loopback, a fault-injecting TCP proxy in front of each node (cuts freeze connections; loss costs retransmission timeouts; delay)"
                    .into()
            }
            Network::Compose(stack) => stack.describe(),
        }
    }

    /// The compose stack, when the nodes are its containers.
    pub fn compose(&self) -> Option<&crate::compose::ComposeStack> {
        match self {
            Network::Compose(stack) => Some(stack),
            _ => None,
        }
    }

    /// Note a mount point to undo if this campaign dies without its destructors.
    pub fn note_mount(&self, path: &std::path::Path) {
        if let Network::Namespaces(ns) = self {
            ns.lock.note_mount(path);
        }
    }

    /// The address node `i` listens on.
    pub fn listen(&self, i: usize) -> String {
        match self {
            Network::Namespaces(ns) => format!("{}:{NODE_PORT}", ns.addr(i)),
            Network::Loopback { ports, .. } => format!("127.0.0.1:{}", ports[i]),
            Network::Compose(stack) => stack.listen(i),
        }
    }

    /// The address node `i`'s peers reach it at (behind its proxy on loopback).
    pub fn advertise(&self, i: usize) -> String {
        match self {
            Network::Loopback { proxies, .. } => proxies.front(i).to_string(),
            _ => self.listen(i),
        }
    }

    /// Connections between nodes through the proxies, how many named no node and how many a
    /// node opened to itself (neither could be faulted); None off loopback.
    pub fn proxied(&self) -> Option<(u64, u64, u64)> {
        match self {
            Network::Loopback { proxies, .. } => Some(proxies.counts()),
            _ => None,
        }
    }

    /// Whether each node runs in a namespace of its own (and the campaign is root).
    pub fn is_namespaces(&self) -> bool {
        matches!(self, Network::Namespaces(_))
    }

    /// The command prefix that runs a program on node `i`'s host.
    pub fn wrap(&self, i: usize) -> Vec<String> {
        match self {
            Network::Namespaces(ns) => {
                vec!["ip".into(), "netns".into(), "exec".into(), ns.name(i)]
            }
            Network::Loopback { .. } | Network::Compose(_) => Vec::new(),
        }
    }

    /// Whether the campaign cuts links between nodes (a filter or a proxy), one way or both;
    /// the compose stack only cuts a whole node off.
    pub fn cuts_in_network(&self) -> bool {
        matches!(self, Network::Namespaces(_) | Network::Loopback { .. })
    }

    pub fn can_lose_packets(&self) -> bool {
        matches!(self, Network::Namespaces(_) | Network::Loopback { .. })
    }

    pub fn can_delay(&self) -> bool {
        match self {
            Network::Namespaces(ns) => ns.delay != DelayTool::None,
            Network::Loopback { .. } => true,
            Network::Compose(_) => false,
        }
    }

    /// Make node `i`'s filter drop what it sends to each node `j` of `blocked` (pairs `(i, j)`),
    /// and a random `loss` percent of everything it sends. A pair blocked one way only (not
    /// `(j, i)` too) drops only the connections `i` opens: over TCP, dropping `i`'s answers
    /// would cut the connections `j` opens as well, and the cut would be two-way.
    pub fn apply(&self, blocked: &BTreeSet<(usize, usize)>, loss: &[u8]) -> anyhow::Result<()> {
        match self {
            Network::Namespaces(ns) => ns.filter(blocked, loss),
            Network::Loopback { proxies, .. } => {
                proxies.set(blocked, loss);
                Ok(())
            }
            Network::Compose(_) => bail!("the compose stack's cuts are Docker's"),
        }
    }

    /// Delay everything node `i` sends by `ms`, give or take a quarter (0: none).
    pub fn delay(&self, i: usize, ms: u32) -> anyhow::Result<()> {
        match self {
            Network::Namespaces(ns) => ns.set_delay(i, ms),
            Network::Loopback { proxies, .. } => {
                proxies.delay(i, ms);
                Ok(())
            }
            Network::Compose(_) => bail!("no delay in the compose stack"),
        }
    }
}

impl Namespaces {
    /// Each node's packet filter (see [`Network::apply`]): an nftables table in its namespace.
    fn filter(&self, blocked: &BTreeSet<(usize, usize)>, loss: &[u8]) -> anyhow::Result<()> {
        for i in 0..self.nodes {
            let mut rules = String::new();
            for (_, j) in blocked.iter().filter(|(from, _)| *from == i) {
                if blocked.contains(&(*j, i)) {
                    rules.push_str(&format!("    ip daddr {} drop\n", self.addr(*j)));
                } else {
                    rules.push_str(&format!(
                        "    ip daddr {} ct direction original drop\n",
                        self.addr(*j)
                    ));
                }
            }
            let l = loss.get(i).copied().unwrap_or(0);
            if l > 0 {
                rules.push_str(&format!("    numgen random mod 100 < {l} drop\n"));
            }
            // only this table is replaced: the delay's queue rule (iptables' own table) stays
            let script = format!(
                "table inet chaos\ndelete table inet chaos\ntable inet chaos {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n{rules}  }}\n}}\n"
            );
            run_stdin(
                &["ip", "netns", "exec", &self.name(i), "nft", "-f", "-"],
                &script,
            )
            .with_context(|| format!("set node {i}'s packet filter"))?;
        }
        Ok(())
    }

    /// Delay what node `i` sends (see [`Network::delay`]) with the tool this kernel has.
    fn set_delay(&self, i: usize, ms: u32) -> anyhow::Result<()> {
        match &self.delay {
            DelayTool::Netem => self.netem_delay(i, ms),
            DelayTool::Queue(program) => self.queue_delay(i, ms, program),
            DelayTool::None => bail!("no way to delay packets here"),
        }
    }

    fn name(&self, i: usize) -> String {
        format!("shoal-{}-{i}", self.tag)
    }

    /// The switch: a namespace of its own holding the bridge, so that the host's firewall
    /// (which may drop forwarded and bridged packets, as Docker's does) never sees the nodes'
    /// traffic.
    fn switch(&self) -> String {
        format!("shoal-{}-sw", self.tag)
    }

    /// The campaign's end of the link to the switch.
    fn uplink(&self) -> String {
        format!("shh{}", self.tag)
    }

    fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], i as u8 + 2)
    }

    fn make(&mut self) -> anyhow::Result<()> {
        let [a, b, c] = self.net;
        let sw = self.switch();
        run(&["ip", "netns", "add", &sw]).context("make a network namespace (root needed)")?;
        self.made = true;
        let in_sw = |args: &[&str]| {
            let mut full = vec!["ip", "netns", "exec", sw.as_str()];
            full.extend_from_slice(args);
            run(&full)
        };
        in_sw(&["ip", "link", "add", "br0", "type", "bridge"])?;
        in_sw(&["ip", "link", "set", "br0", "up"])?;
        in_sw(&["ip", "link", "set", "lo", "up"])?;
        // the campaign (in its own namespace) reaches every node through the switch
        let up = self.uplink();
        run(&[
            "ip", "link", "add", &up, "type", "veth", "peer", "name", "host", "netns", &sw,
        ])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{a}.{b}.{c}.1/24"),
            "dev",
            &up,
        ])?;
        run(&["ip", "link", "set", &up, "up"])?;
        in_sw(&["ip", "link", "set", "host", "master", "br0", "up"])?;
        for i in 0..self.nodes {
            let ns = self.name(i);
            run(&["ip", "netns", "add", &ns])?;
            let port = format!("n{i}");
            in_sw(&[
                "ip", "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            in_sw(&["ip", "link", "set", &port, "master", "br0", "up"])?;
            let inside = |args: &[&str]| {
                let mut full = vec!["ip", "netns", "exec", ns.as_str()];
                full.extend_from_slice(args);
                run(&full)
            };
            inside(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", self.addr(i)),
                "dev",
                "eth0",
            ])?;
            inside(&["ip", "link", "set", "eth0", "up"])?;
            inside(&["ip", "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    fn netem_delay(&self, i: usize, ms: u32) -> anyhow::Result<()> {
        let name = self.name(i);
        let _ = run(&[
            "ip", "netns", "exec", &name, "tc", "qdisc", "del", "dev", "eth0", "root",
        ]);
        if ms > 0 {
            run(&[
                "ip",
                "netns",
                "exec",
                &name,
                "tc",
                "qdisc",
                "add",
                "dev",
                "eth0",
                "root",
                "netem",
                "delay",
                &format!("{ms}ms"),
                &format!("{}ms", ms / 4 + 1),
            ])?;
        }
        Ok(())
    }

    /// Start (or stop, with `ms` 0) holding node `i`'s packets for `ms` give or take a
    /// quarter: see [`crate::delay::Delayer`] for how neither start nor stop loses or reorders
    /// a packet.
    fn queue_delay(&self, i: usize, ms: u32, program: &std::path::Path) -> anyhow::Result<()> {
        let mut delayers = self.delayers.lock();
        if let Some(old) = delayers[i].take() {
            old.stop()
                .with_context(|| format!("take node {i}'s delay away"))?;
        }
        if ms == 0 {
            return Ok(());
        }
        delayers[i] = Some(
            crate::delay::Delayer::start(
                program,
                &self.name(i),
                "eth0",
                DELAY_QUEUE,
                ms,
                ms / 4 + 1,
                i as u64 * 7919 + ms as u64,
            )
            .with_context(|| format!("delay node {i}'s packets"))?,
        );
        Ok(())
    }

    /// Whether packets can be delayed through a netfilter queue here: the delayer started and
    /// stopped once in node 0's namespace (the kernel's NFQUEUE target, iptables, the program).
    fn probe_queue(&self, program: &std::path::Path) -> bool {
        match crate::delay::Delayer::start(program, &self.name(0), "eth0", DELAY_QUEUE, 1, 0, 0) {
            Ok(d) => d.stop().is_ok(),
            Err(_) => false,
        }
    }

    fn probe_netem(&self) -> bool {
        let ns = self.name(0);
        let ok = run(&[
            "ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem",
            "delay", "1ms",
        ])
        .is_ok();
        if ok {
            let _ = run(&[
                "ip", "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "eth0", "root",
            ]);
        }
        ok
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        if !self.made {
            return;
        }
        // each takes its rule away and ends (Delayer's drop)
        self.delayers.get_mut().clear();
        for i in 0..self.nodes {
            let _ = run(&["ip", "netns", "del", &self.name(i)]);
        }
        let _ = run(&["ip", "link", "del", &self.uplink()]);
        let _ = run(&["ip", "netns", "del", &self.switch()]);
        self.lock.forget_mounts();
    }
}

/// Run a command; an error naming it and its stderr if it fails.
pub(crate) fn run(args: &[&str]) -> anyhow::Result<()> {
    run_stdin(args, "")
}

fn run_stdin(args: &[&str], input: &str) -> anyhow::Result<()> {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {}", args.join(" ")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Make the program `cmd` starts die with the campaign, however the campaign dies (a process
/// started through `ip netns exec` too: it execs the program in place).
pub(crate) fn die_with_campaign(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent's.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A lock file per campaign tag (`/run/shoal-chaos/TAG.lock`), held with flock while the
/// campaign lives. The kernel lets go of it when the process dies however it dies, so a later
/// campaign can tell what a dead one left behind (namespaces, the uplink, and the tmpfs mounts it
/// lists in the file). Lock files are never removed: one removed while another process opens it
/// would let two processes each hold "the" lock of one tag.
pub(crate) struct Lock {
    file: std::fs::File,
}

impl Lock {
    /// One folder for every campaign of the machine (not under `TMPDIR`, which differs between
    /// processes): making namespaces needs root, which can write it.
    const DIR: &'static str = "/run/shoal-chaos";

    fn dir() -> anyhow::Result<std::path::PathBuf> {
        let dir = std::path::PathBuf::from(Self::DIR);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("make the campaigns' lock folder {}", dir.display()))?;
        Ok(dir)
    }

    /// Take the lock of `tag`, first removing what a dead campaign of that tag left behind;
    /// `None` when a live campaign holds it.
    fn take(dir: &std::path::Path, tag: &str) -> anyhow::Result<Option<Lock>> {
        let path = dir.join(format!("{tag}.lock"));
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("create the campaign's lock file {}", path.display()))?;
        if !flock(&file, false) {
            return Ok(None);
        }
        let lock = Lock { file };
        lock.clean_up(tag);
        Ok(Some(lock))
    }

    /// Remove what a campaign of `tag` left behind (the caller holds its lock): the mounts the
    /// file lists, the uplink, the namespaces.
    fn clean_up(&self, tag: &str) {
        let mut listed = String::new();
        let _ = (&self.file).read_to_string(&mut listed);
        let leftovers = namespaces_of(tag);
        if listed.trim().is_empty() && leftovers.is_empty() {
            return;
        }
        eprintln!("chaos: removing what a dead campaign left behind (tag {tag})");
        for mount in listed.lines().filter(|l| !l.trim().is_empty()) {
            let _ = Command::new("umount").args(["-l", mount]).status();
        }
        let _ = run(&["ip", "link", "del", &format!("shh{tag}")]);
        for name in leftovers {
            let _ = run(&["ip", "netns", "del", &name]);
        }
        self.forget_mounts();
    }

    /// Note a mount point to undo if this campaign dies.
    pub(crate) fn note_mount(&self, path: &std::path::Path) {
        let mut f = &self.file;
        let _ = f.seek(std::io::SeekFrom::End(0));
        let _ = writeln!(f, "{}", path.display());
    }

    /// The mounts are undone: nothing is left to clean up.
    fn forget_mounts(&self) {
        let _ = self.file.set_len(0);
    }
}

/// Take an exclusive flock on `file` (without waiting when `!wait`); whether it was taken.
pub(crate) fn flock(file: &std::fs::File, wait: bool) -> bool {
    use std::os::fd::AsRawFd;
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // SAFETY: flock on a file descriptor this process owns.
    unsafe { libc::flock(file.as_raw_fd(), op) == 0 }
}

/// The network namespaces named for campaign `tag`.
fn namespaces_of(tag: &str) -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    let prefix = format!("shoal-{tag}-");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Remove what campaigns that died (SIGKILL, a CI timeout) left behind: for every tag with
/// namespaces whose lock file no live process holds, its namespaces, uplink and listed mounts.
/// A tag without a lock file is not ours to touch.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let mut tags = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if let Some(rest) = name.strip_prefix("shoal-") {
            if let Some((tag, _)) = rest.split_once('-') {
                tags.insert(tag.to_string());
            }
        }
    }
    for tag in tags {
        let path = std::path::Path::new(Lock::DIR).join(format!("{tag}.lock"));
        let Ok(file) = std::fs::File::options().read(true).write(true).open(&path) else {
            continue;
        };
        if !flock(&file, false) {
            continue; // a live campaign
        }
        // held until dropped here (a campaign starting meanwhile picks another tag)
        Lock { file }.clean_up(&tag);
    }
}
