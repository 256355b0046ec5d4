//! The cluster under test: real `shoal` processes, each on its own host of the [`Network`],
//! with its own data folder, started, killed, paused and wiped by the campaign.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reqwest::blocking::Client;
use serde_json::Value;

use crate::net::Network;

/// The size of each node's disk where it has one of its own, in MiB, for a campaign of
/// `seconds`: a short one fills a small disk (the `DiskFull` fault) quickly; an hour's data
/// (its store, snapshots being built and received, graph dumps) needs more.
pub fn default_disk_mib(seconds: u64) -> u64 {
    if seconds <= 600 {
        512
    } else {
        2048
    }
}

/// The secret the campaign's cluster shares.
pub const SECRET: &str = "chaos-campaign-cluster-secret-0123456789";

/// An HTTP answer that was not a success, kept typed so that callers can tell a 404 from the
/// rest.
#[derive(Debug)]
pub struct HttpError {
    pub status: u16,
    pub body: String,
    pub what: String,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} {}", self.what, self.status, self.body)
    }
}

impl std::error::Error for HttpError {}

/// One node's process and folders.
pub struct NodeProc {
    /// 0-based place; the node's id is `index + 1`.
    pub index: usize,
    pub base: String,
    listen: String,
    pub data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// A container of the compose stack that runs (its process is Docker's).
    container_running: bool,
    pub paused: bool,
    /// Arguments after the first start (`--join` after a wipe).
    args: Vec<String>,
    bootstrap: bool,
}

impl NodeProc {
    pub fn id(&self) -> u64 {
        self.index as u64 + 1
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some() || self.container_running
    }

    /// Running and not paused: it can answer.
    pub fn is_up(&self) -> bool {
        self.is_running() && !self.paused
    }
}

pub struct ChaosCluster {
    pub net: Network,
    pub nodes: Vec<NodeProc>,
    bin: PathBuf,
    model: PathBuf,
    env: Vec<(String, String)>,
    http: Client,
    _dir: tempfile::TempDir,
    /// Pairs (from, to) whose packets are dropped (or whose connections the proxies freeze).
    pub blocked: BTreeSet<(usize, usize)>,
    /// Percent of packets each node loses.
    pub loss: Vec<u8>,
    /// Each node's data folder is a small tmpfs of its own (so that a disk can fill up).
    pub small_disks: bool,
    /// The tmpfs mounts made (unmounted on drop, whether or not all of them could be made).
    mounts: Vec<PathBuf>,
    /// Nodes found stopped by themselves (a fatal store error) since the campaign last took
    /// this list: their reads before and after are not compared.
    pub stopped_by_themselves: Vec<usize>,
    /// Compose nodes disconnected from the stack's network.
    disconnected: Vec<bool>,
    /// libfaketime, preloaded into every node so that its wall clock can be moved (see
    /// [`ChaosCluster::jump_clock`]); none where it is not installed.
    faketime: Option<PathBuf>,
}

/// How long a clock file's change may take to reach a node: libfaketime reads the file again
/// on the first wall-clock read after the second changed by more than
/// `FAKETIME_CACHE_DURATION` (1): up to two seconds. (0 would read it on every call.)
pub const CLOCK_LAG: Duration = Duration::from_millis(2100);

/// The environment that preloads libfaketime (`lib`) with its offset read from `clock` (a file
/// holding `+N` or `-N` seconds), moving the wall clock only.
pub fn faketime_env(lib: &Path, clock: &Path) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), lib.display().to_string()),
        (
            "FAKETIME_TIMESTAMP_FILE".into(),
            clock.display().to_string(),
        ),
        ("FAKETIME_CACHE_DURATION".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// Where libfaketime's thread-safe library is (Debian's package `libfaketime`), if installed.
pub fn find_faketime() -> Option<PathBuf> {
    let lib = std::fs::read_dir("/usr/lib").ok()?;
    lib.flatten()
        .map(|e| e.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.is_file())
}

impl ChaosCluster {
    /// Start `voters` nodes: node 1 makes the cluster, the others join it and become voters.
    /// Where namespaces are made, each node's data folder is a tmpfs of `disk_mib` MiB.
    pub fn start(
        net: Network,
        voters: usize,
        bin: &Path,
        model: &Path,
        env: &[(String, String)],
        disk_mib: u64,
        clocks: bool,
    ) -> anyhow::Result<ChaosCluster> {
        let dir = tempfile::tempdir()?;
        let mut c = ChaosCluster {
            net,
            nodes: Vec::new(),
            bin: bin.to_path_buf(),
            model: model.to_path_buf(),
            env: env.to_vec(),
            http: Client::builder().timeout(Duration::from_secs(10)).build()?,
            _dir: dir,
            blocked: BTreeSet::new(),
            loss: vec![0; voters],
            small_disks: false,
            mounts: Vec::new(),
            stopped_by_themselves: Vec::new(),
            disconnected: vec![false; voters],
            // a container's clock is not the campaign's to move
            faketime: None,
        };
        let compose = c.net.compose().is_some();
        // only where clocks will jump: libfaketime wraps every wall-clock read (a lock and two
        // signal-mask calls each) and more (poll, sleeps, stat), which the other faults need not
        // measure through
        if clocks && !compose {
            c.faketime = find_faketime();
        }
        // root can give each node a disk of its own that can fill up
        if c.net.is_namespaces() {
            c.small_disks = true;
            for i in 0..voters {
                let dir = c._dir.path().join(format!("node-{}", i + 1));
                std::fs::create_dir_all(&dir)?;
                let ok = Command::new("mount")
                    .args(["-t", "tmpfs", "-o", &format!("size={disk_mib}m"), "tmpfs"])
                    .arg(&dir)
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if ok {
                    c.net.note_mount(&dir);
                    c.mounts.push(dir);
                }
                c.small_disks &= ok;
            }
        }
        // joins go through the seed's proxy on loopback, as the nodes' other requests do
        let first = format!("http://{}", c.net.advertise(0));
        for i in 0..voters {
            let listen = c.net.listen(i);
            let args = if i == 0 {
                Vec::new()
            } else {
                vec!["--join".into(), first.clone(), "--voter".into()]
            };
            c.nodes.push(NodeProc {
                index: i,
                base: format!("http://{listen}"),
                listen,
                data: c._dir.path().join(format!("node-{}", i + 1)),
                log: c._dir.path().join(format!("node-{}.log", i + 1)),
                child: None,
                container_running: compose,
                paused: false,
                args,
                bootstrap: i == 0,
            });
            if !compose {
                c.spawn(i)?;
            }
        }
        c.wait_members(voters, Duration::from_secs(120))?;
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(stack) = self.net.compose() {
            stack.start_node(i)?;
            let n = &mut self.nodes[i];
            n.container_running = true;
            n.paused = false;
            return Ok(());
        }
        let n = &self.nodes[i];
        let wrap = self.net.wrap(i);
        let mut cmd = match wrap.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("serve")
            .arg("--listen")
            .arg(&n.listen)
            .arg("--advertise")
            .arg(format!("http://{}", self.net.advertise(i)))
            .arg("--data-dir")
            .arg(&n.data)
            .arg("--model")
            .arg(&self.model)
            .arg("--node-id")
            .arg(n.id().to_string())
            .arg("--fault-injection")
            .args(&n.args)
            .env("SHOAL_CLUSTER__SECRET", SECRET)
            .env(
                "RUST_LOG",
                std::env::var("SHOAL_CHAOS_NODE_LOG")
                    .unwrap_or("warn,shoal_node=info,shoal_cluster=info,openraft=off".into()),
            );
        if n.bootstrap {
            cmd.env("SHOAL_CLUSTER__BOOTSTRAP", "true");
        }
        if let Some(lib) = &self.faketime {
            // the wall clock (CLOCK_REALTIME: SystemTime, the leader's stamp on claims, token
            // and key expiry, the Date header) follows the offset in the node's clock file;
            // monotonic time (timeouts, elections) is the real one, as an NTP step leaves it
            let clock = self.clock_file(i);
            if !clock.exists() {
                std::fs::write(&clock, "+0\n").context("write the node's clock file")?;
            }
            cmd.env_remove("FAKETIME");
            for (k, v) in faketime_env(lib, &clock) {
                cmd.env(k, v);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&n.log)
            .context("open the node's log")?;
        cmd.stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null());
        crate::net::die_with_campaign(&mut cmd);
        let child = cmd.spawn().context("start shoal")?;
        let n = &mut self.nodes[i];
        n.child = Some(child);
        n.paused = false;
        Ok(())
    }

    fn clock_file(&self, i: usize) -> PathBuf {
        self._dir.path().join(format!("node-{}.clock", i + 1))
    }

    /// Whether node clocks can be moved here (libfaketime is installed).
    pub fn can_jump_clocks(&self) -> bool {
        self.faketime.is_some()
    }

    /// Set node `i`'s wall clock `secs` away from the real one (0: the real time again). The
    /// node sees the jump within [`CLOCK_LAG`].
    pub fn jump_clock(&self, i: usize, secs: i64) -> anyhow::Result<()> {
        if self.faketime.is_none() {
            bail!("no libfaketime here: clocks cannot be moved");
        }
        let file = self.clock_file(i);
        let tmp = file.with_extension("clock.new");
        std::fs::write(&tmp, format!("{secs:+}\n"))?;
        std::fs::rename(&tmp, &file).context("move the node's clock")?;
        Ok(())
    }

    /// Every node's clock back to the real time.
    pub fn reset_clocks(&self) -> anyhow::Result<()> {
        if self.faketime.is_some() {
            for i in 0..self.nodes.len() {
                self.jump_clock(i, 0)?;
            }
        }
        Ok(())
    }

    /// The last lines of node `i`'s log (for a failure's message).
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        if let Some(stack) = self.net.compose() {
            return stack.logs(i, Some(lines));
        }
        let text = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Copy every node's log to `dir` (kept when a campaign fails).
    pub fn keep_logs(&self, dir: &Path) {
        let _ = std::fs::create_dir_all(dir);
        if let Some(stack) = self.net.compose() {
            for i in 0..self.nodes.len() {
                let _ =
                    std::fs::write(dir.join(format!("node-{}.log", i + 1)), stack.logs(i, None));
            }
            return;
        }
        for n in &self.nodes {
            let _ = std::fs::copy(&n.log, dir.join(format!("node-{}.log", n.id())));
        }
    }

    pub fn get(&self, i: usize, path: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.nodes[i].base))
            .header("x-shoal-cluster-secret", SECRET)
            .send()?;
        let status = r.status();
        let text = r.text().unwrap_or_default();
        if !status.is_success() {
            return Err(HttpError {
                status: status.as_u16(),
                body: text,
                what: format!("GET {path} on node {}", i + 1),
            }
            .into());
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn send(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let m = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self
            .http
            .request(m, format!("{}{path}", self.nodes[i].base))
            .header("x-shoal-cluster-secret", SECRET);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send()?;
        let status = r.status();
        let text = r.text().unwrap_or_default();
        if !status.is_success() {
            return Err(HttpError {
                status: status.as_u16(),
                body: text,
                what: format!("{method} {path} on node {}", i + 1),
            }
            .into());
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Note the nodes whose process ended by itself (a node stops when its store fails); returns
    /// each one's exit status.
    pub fn reap(&mut self) -> Vec<(usize, String)> {
        let mut ended = Vec::new();
        if let Some(stack) = self.net.compose() {
            for n in &mut self.nodes {
                // (a docker inspect that fails says nothing: asked again next time)
                if n.container_running && stack.running(n.index).is_ok_and(|r| !r) {
                    ended.push((n.index, stack.exit_status(n.index)));
                    self.stopped_by_themselves.push(n.index);
                    n.container_running = false;
                    n.paused = false;
                }
            }
            return ended;
        }
        for n in &mut self.nodes {
            if let Some(c) = &mut n.child {
                if let Ok(Some(status)) = c.try_wait() {
                    ended.push((n.index, status.to_string()));
                    self.stopped_by_themselves.push(n.index);
                    n.child = None;
                    n.paused = false;
                }
            }
        }
        ended
    }

    /// Fill node `i`'s disk (a file over all its free space but `leave` bytes). Returns the
    /// file, to remove when the fault heals.
    pub fn fill_disk(&self, i: usize, leave: u64) -> anyhow::Result<PathBuf> {
        let dir = &self.nodes[i].data;
        let path = dir.join("chaos-ballast");
        // SAFETY: statvfs fills the struct it is given; the path is a NUL-terminated copy.
        let free = unsafe {
            let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
            let mut st: libc::statvfs = std::mem::zeroed();
            if libc::statvfs(c.as_ptr(), &mut st) != 0 {
                bail!("statvfs {}", dir.display());
            }
            st.f_bavail as u64 * st.f_frsize as u64
        };
        let size = free.saturating_sub(leave);
        let f = File::create(&path)?;
        // written, not only sized: tmpfs gives pages as they are written
        use std::io::Write;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let block = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            if w.write_all(&block[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
        let _ = w.flush();
        Ok(path)
    }

    /// Nodes that can answer.
    pub fn up(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_up())
            .collect()
    }

    /// Wait until a node's view has `voters` voters, no learner and a leader.
    pub fn wait_members(&self, voters: usize, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut last = Value::Null;
        while start.elapsed() < limit {
            for i in self.up() {
                if let Ok(s) = self.get(i, "/api/v1/cluster") {
                    let members = s["members"].as_array().cloned().unwrap_or_default();
                    let count = |role: &str| members.iter().filter(|m| m["role"] == role).count();
                    if count("voter") == voters && count("learner") == 0 && !s["leader"].is_null() {
                        return Ok(());
                    }
                    last = s;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("the cluster did not have {voters} voters within {limit:?}: {last}")
    }

    /// The leader the nodes that answer agree on, if they do.
    pub fn leader(&self) -> Option<usize> {
        let mut views = Vec::new();
        for i in self.up() {
            let s = self.get(i, "/api/v1/cluster").ok()?;
            views.push(s["leader"].as_u64());
        }
        let first = *views.first()?;
        let id = first?;
        if views.iter().all(|v| *v == Some(id)) {
            let i = id as usize - 1;
            self.nodes.get(i).filter(|n| n.is_up()).map(|_| i)
        } else {
            None
        }
    }

    pub fn wait_leader(&self, limit: Duration) -> anyhow::Result<usize> {
        let start = Instant::now();
        loop {
            if let Some(l) = self.leader() {
                return Ok(l);
            }
            if start.elapsed() > limit {
                bail!("no leader the nodes agree on within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL node `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(stack) = self.net.compose() {
            if self.nodes[i].container_running {
                if let Err(e) = stack.kill(i) {
                    eprintln!("chaos: docker kill of node {}: {e:#}", i + 1);
                }
            }
            self.nodes[i].container_running = false;
        }
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.nodes[i].paused = false;
    }

    /// SIGTERM node `i` and wait (at most 60 s) for it to exit.
    pub fn terminate(&mut self, i: usize) {
        if let Some(stack) = self.net.compose() {
            if self.nodes[i].container_running {
                if self.nodes[i].paused {
                    let _ = stack.unpause(i);
                }
                if let Err(e) = stack.stop(i, 60) {
                    eprintln!("chaos: docker stop of node {}: {e:#}", i + 1);
                }
            }
            self.nodes[i].container_running = false;
        }
        if let Some(mut c) = self.nodes[i].child.take() {
            if self.nodes[i].paused {
                signal(c.id(), libc::SIGCONT);
            }
            signal(c.id(), libc::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.nodes[i].paused = false;
    }

    /// SIGSTOP node `i`: it stops answering and wakes later with an old view of the cluster.
    pub fn pause(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(stack) = self.net.compose() {
            if self.nodes[i].container_running {
                stack.pause(i)?;
                self.nodes[i].paused = true;
            }
            return Ok(());
        }
        if let Some(c) = &self.nodes[i].child {
            signal(c.id(), libc::SIGSTOP);
            self.nodes[i].paused = true;
        }
        Ok(())
    }

    pub fn resume(&mut self, i: usize) {
        if let Some(stack) = self.net.compose() {
            if self.nodes[i].paused {
                if let Err(e) = stack.unpause(i) {
                    eprintln!("chaos: docker unpause of node {}: {e:#}", i + 1);
                }
            }
            self.nodes[i].paused = false;
            return;
        }
        if let Some(c) = &self.nodes[i].child {
            signal(c.id(), libc::SIGCONT);
        }
        self.nodes[i].paused = false;
    }

    /// Start node `i` again on its folder (after a kill), and wait until it listens.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill9(i);
        self.spawn(i)?;
        self.wait_listening(i, Duration::from_secs(60))
    }

    /// Kill node `i`, remove its data folder and start it again joining through `seed`: it
    /// comes back as a learner and catches up from a snapshot (the campaign promotes it).
    pub fn wipe(&mut self, i: usize, seed: usize) -> anyhow::Result<()> {
        if self.net.compose().is_some() {
            bail!("a compose node's data is a Docker volume: not wiped by the campaign");
        }
        self.kill9(i);
        // its contents: the folder may be a mount point
        if let Ok(entries) = std::fs::read_dir(&self.nodes[i].data) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
        let seed_url = format!("http://{}", self.net.advertise(seed));
        let n = &mut self.nodes[i];
        n.bootstrap = false;
        n.args = vec!["--join".into(), seed_url];
        self.spawn(i)?;
        self.wait_listening(i, Duration::from_secs(60))
    }

    fn wait_listening(&self, i: usize, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self
                .http
                .get(format!("{}/api/health", self.nodes[i].base))
                .timeout(Duration::from_secs(2))
                .send()
                .is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "node {} did not listen within {limit:?}:\n{}",
            i + 1,
            self.log_tail(i, 30)
        )
    }

    /// Drop what `from` sends to `to` (and the same back when `both`).
    pub fn block(&mut self, from: usize, to: usize, both: bool) {
        self.blocked.insert((from, to));
        if both {
            self.blocked.insert((to, from));
        }
    }

    /// Put the cuts and losses in place.
    pub fn apply_network(&mut self) -> anyhow::Result<()> {
        if let Some(stack) = self.net.compose() {
            // Docker cuts a whole container off its network, nothing finer: a node is cut off
            // when it is blocked from every other node both ways
            let n = self.nodes.len();
            let alone: Vec<bool> = (0..n)
                .map(|i| {
                    (0..n)
                        .filter(|j| *j != i)
                        .all(|j| self.blocked.contains(&(i, j)) && self.blocked.contains(&(j, i)))
                })
                .collect();
            let explained = self.blocked.iter().all(|(a, b)| alone[*a] || alone[*b]);
            if !explained {
                bail!("the compose stack cuts whole nodes off its network only (docker network disconnect)");
            }
            for (i, cut_off) in alone.into_iter().enumerate() {
                if cut_off && !self.disconnected[i] {
                    stack.disconnect(i)?;
                    self.disconnected[i] = true;
                } else if !cut_off && self.disconnected[i] {
                    stack.connect(i)?;
                    self.disconnected[i] = false;
                }
            }
            return Ok(());
        }
        self.net.apply(&self.blocked, &self.loss)
    }

    /// Remove every cut, loss and delay.
    pub fn heal_network(&mut self) -> anyhow::Result<()> {
        self.blocked.clear();
        self.loss.iter_mut().for_each(|l| *l = 0);
        if self.net.can_delay() {
            for i in 0..self.nodes.len() {
                self.net.delay(i, 0)?;
            }
        }
        self.apply_network()
    }

    /// Each answering node's (applied index, store digest).
    pub fn digests(&self) -> Vec<(usize, u64, String)> {
        self.up()
            .into_iter()
            .filter_map(|i| {
                let d = self.get(i, "/api/v1/admin/digest").ok()?;
                Some((
                    i,
                    d["applied_index"].as_u64().unwrap_or(0),
                    d["digest"].as_str().unwrap_or_default().to_string(),
                ))
            })
            .collect()
    }
}

impl Drop for ChaosCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused {
                self.resume(i);
            }
            self.kill9(i);
        }
        for m in &self.mounts {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child process id this harness started and has not reaped yet.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real time, in seconds since the epoch (this test process has no libfaketime).
    fn real() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    /// The environment moves a process's wall clock by the file's offset (where libfaketime is
    /// installed: scripts/chaos-deps.sh, which the test command runs first).
    #[test]
    fn the_faketime_environment_moves_the_wall_clock_by_the_files_offset() {
        let Some(lib) = find_faketime() else {
            eprintln!("skipped: no libfaketime here");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let clock = dir.path().join("node.clock");
        let now_there = |offset: &str| -> i64 {
            std::fs::write(&clock, format!("{offset}\n")).unwrap();
            let out = Command::new("date")
                .arg("+%s")
                .envs(faketime_env(&lib, &clock))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let ahead = now_there("+120") - real();
        assert!((118..=122).contains(&ahead), "+120 gave {ahead}");
        let behind = now_there("-3600") - real();
        assert!((-3602..=-3598).contains(&behind), "-3600 gave {behind}");
        let none = now_there("+0") - real();
        assert!((-2..=2).contains(&none), "+0 gave {none}");
    }

    /// A running process (as a node is) sees its clock file's change within CLOCK_LAG.
    #[test]
    fn a_running_process_sees_the_jump_within_the_clock_lag() {
        let Some(lib) = find_faketime() else {
            eprintln!("skipped: no libfaketime here");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let clock = dir.path().join("node.clock");
        std::fs::write(&clock, "+0\n").unwrap();
        // its wall clock, each time a line comes in (python's own sleep fails under
        // libfaketime: clock_nanosleep on an absolute monotonic time gives EINVAL)
        let mut child = Command::new("python3")
            .args([
                "-u",
                "-c",
                "import sys, time\nfor _ in sys.stdin:\n    print(int(time.time()), flush=True)",
            ])
            .envs(faketime_env(&lib, &clock))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut input = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            for _ in 0..80 {
                if input.write_all(b"\n").and_then(|_| input.flush()).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((Instant::now(), line.trim().parse::<i64>().unwrap_or(0)));
            }
        });
        // running, on the real clock
        let (_, first) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a first line");
        assert!((first - real()).abs() <= 2, "started off the real clock");
        std::fs::write(&clock, "+600\n").unwrap();
        let written = Instant::now();
        let seen = loop {
            let (at, t) = rx
                .recv_timeout(Duration::from_secs(5))
                .expect("the process went on printing");
            if t - real() >= 590 {
                break at;
            }
            assert!(
                at < written + CLOCK_LAG + Duration::from_millis(500),
                "jump not seen"
            );
        };
        assert!(seen <= written + CLOCK_LAG + Duration::from_millis(300));
        let _ = child.kill();
        let _ = child.wait();
    }
}
