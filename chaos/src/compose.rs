//! The cluster as the docker-compose stack runs it (`docker-compose.yml`: three voters, one
//! container each, the images of `scripts/docker-images.sh`), for a campaign whose faults are
//! Docker's own: `docker kill` (SIGKILL), `docker pause` (the cgroup freezer), `docker stop`
//! (SIGTERM, then start), and `docker network disconnect` (the container loses its network: its
//! peers' names no longer resolve to it, and it reaches none of them), each healed by its
//! opposite.
//!
//! The stack is started under a project name of its own with an override file that the campaign
//! writes: a fixed subnet and address per node (so a node keeps its address across restarts and
//! reconnections, and the campaign's clients reach it there from the host), no restart policy
//! (the campaign decides when a node comes back), the fault-injection switch on (actor panics),
//! and the campaign's snapshot settings. `down -v` removes it all when the campaign ends.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// The port the nodes listen on inside their containers.
pub const NODE_PORT: u16 = 7400;

pub struct ComposeStack {
    /// `docker-compose` or `docker compose`.
    compose: Vec<String>,
    project: String,
    /// The repository's docker-compose.yml and the campaign's override.
    files: Vec<PathBuf>,
    /// The environment the compose file reads (images, the secret).
    env: Vec<(String, String)>,
    /// Each node's container id.
    containers: Vec<String>,
    /// Each node's address on the stack's network.
    addrs: Vec<String>,
    /// The stack's network (the project's `default`).
    network: String,
    /// Whether `down` is still to do.
    up: bool,
    /// Holds the override file (compose reads it again for every command).
    _dir: Option<tempfile::TempDir>,
    /// Held while the campaign lives: a later campaign on this host takes the stack down when
    /// no live process holds it (see [`sweep_stale`]).
    lock: Option<LockFile>,
}

/// Which compose command this machine has, if any (and a Docker engine that answers).
pub fn compose_command() -> anyhow::Result<Vec<String>> {
    let ok = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !ok(&["docker", "info"]) {
        bail!("no Docker engine answers (`docker info` failed)");
    }
    if ok(&["docker-compose", "version"]) {
        return Ok(vec!["docker-compose".into()]);
    }
    if ok(&["docker", "compose", "version"]) {
        return Ok(vec!["docker".into(), "compose".into()]);
    }
    bail!("neither docker-compose nor `docker compose` is installed")
}

impl ComposeStack {
    /// Start shoal1..shoal`nodes` and the one-shot that makes them a cluster, from
    /// `compose_file`, with `image` as the shoal image, `secret` as the cluster's secret and
    /// `env` added to every node's environment. Returns once every container runs (the cluster
    /// may still be forming).
    pub fn start(
        compose_file: &Path,
        image: &str,
        nodes: usize,
        secret: &str,
        env: &[(String, String)],
        seed: u64,
    ) -> anyhow::Result<ComposeStack> {
        if nodes != 3 {
            bail!("the compose stack has three nodes (--nodes 3)");
        }
        let compose = compose_command()?;
        let host = hostname();
        sweep_stale(&host);
        let dir = tempfile::tempdir()?;
        // unique on the Docker engine, which other machines' or containers' campaigns may share
        let project = format!(
            "{PROJECT_PREFIX}{}x{seed}x{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let lock = take_lock(&project)?;
        // a /24 of 10.213.0.0/16 (private; Docker's own default pools are 172.17-31 and
        // 192.168), drawn per process and seed; tried again on another if Docker refuses it
        let mut stack = None;
        let mut last = None;
        for attempt in 0..8u64 {
            let net = ((std::process::id() as u64).wrapping_mul(31) ^ seed.rotate_left(7))
                .wrapping_add(attempt * 37)
                % 250
                + 1;
            let addrs: Vec<String> = (0..nodes)
                .map(|i| format!("10.213.{net}.{}", 11 + i))
                .collect();
            let override_file = dir.path().join(format!("chaos-override-{attempt}.yml"));
            std::fs::write(&override_file, override_yaml(net, &addrs, env, &host))?;
            let mut s = ComposeStack {
                compose: compose.clone(),
                project: project.clone(),
                files: vec![compose_file.to_path_buf(), override_file],
                env: vec![
                    ("SHOAL_IMAGE".into(), image.into()),
                    ("SHOAL_CLUSTER__SECRET".into(), secret.into()),
                    ("SHOAL_AUTH__ADMIN_KEY".into(), format!("{secret}-admin")),
                    ("SHOAL_HTTP_BIND".into(), "127.0.0.1".into()),
                ],
                containers: Vec::new(),
                addrs,
                network: format!("{project}_default"),
                up: true,
                _dir: None,
                lock: None,
            };
            let mut services: Vec<String> = (1..=nodes).map(|i| format!("shoal{i}")).collect();
            services.push("shoal-init".into());
            let mut args = vec!["up", "-d", "--no-build"];
            args.extend(services.iter().map(String::as_str));
            match s.dc(&args) {
                Ok(_) => {
                    stack = Some(s);
                    break;
                }
                Err(e) => {
                    // take down what was made; another subnet only if Docker's answer was
                    // that this one is taken
                    let _ = s.dc(&["down", "-v", "-t", "1"]);
                    s.up = false;
                    let taken = format!("{e:#}").to_lowercase().contains("overlap");
                    last = Some(e);
                    if !taken {
                        break;
                    }
                }
            }
        }
        let Some(mut stack) = stack else {
            return Err(last
                .unwrap_or_else(|| anyhow::anyhow!("no subnet"))
                .context("start the compose stack"));
        };
        stack._dir = Some(dir);
        stack.lock = Some(lock);
        for i in 1..=nodes {
            let id = stack.dc(&["ps", "-q", &format!("shoal{i}")])?;
            let id = id.trim().to_string();
            if id.is_empty() {
                bail!("no container for shoal{i}");
            }
            stack.containers.push(id);
        }
        Ok(stack)
    }

    /// Run the compose command on this stack; its stdout.
    fn dc(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..]).args(["-p", &self.project]);
        for f in &self.files {
            cmd.arg("-f").arg(f);
        }
        cmd.args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        output(
            cmd,
            &format!("{} {}", self.compose.join(" "), args.join(" ")),
        )
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    /// Node `i`'s address (`host:port`) as the host reaches it.
    pub fn listen(&self, i: usize) -> String {
        format!("{}:{NODE_PORT}", self.addrs[i])
    }

    pub fn describe(&self) -> String {
        format!(
            "the docker-compose stack (project {}, network {}, nodes at {}): faults by docker kill, pause, stop and network disconnect",
            self.project,
            self.network,
            self.addrs.join(", ")
        )
    }

    fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new("docker");
        cmd.args(args);
        output(cmd, &format!("docker {}", args.join(" ")))
    }

    /// `docker kill` (SIGKILL) node `i`'s container.
    pub fn kill(&self, i: usize) -> anyhow::Result<()> {
        self.docker(&["kill", &self.containers[i]]).map(drop)
    }

    /// `docker stop` (SIGTERM, then SIGKILL after `grace_s`).
    pub fn stop(&self, i: usize, grace_s: u32) -> anyhow::Result<()> {
        self.docker(&["stop", "-t", &grace_s.to_string(), &self.containers[i]])
            .map(drop)
    }

    /// `docker start` node `i`'s container again (same volume, same address).
    pub fn start_node(&self, i: usize) -> anyhow::Result<()> {
        self.docker(&["start", &self.containers[i]]).map(drop)
    }

    pub fn pause(&self, i: usize) -> anyhow::Result<()> {
        self.docker(&["pause", &self.containers[i]]).map(drop)
    }

    pub fn unpause(&self, i: usize) -> anyhow::Result<()> {
        self.docker(&["unpause", &self.containers[i]]).map(drop)
    }

    /// `docker network disconnect`: the container has no network until [`Self::connect`].
    pub fn disconnect(&self, i: usize) -> anyhow::Result<()> {
        self.docker(&["network", "disconnect", &self.network, &self.containers[i]])
            .map(drop)
    }

    /// Connect node `i` again, at its address and under its service name.
    pub fn connect(&self, i: usize) -> anyhow::Result<()> {
        let alias = format!("shoal{}", i + 1);
        self.docker(&[
            "network",
            "connect",
            "--ip",
            &self.addrs[i],
            "--alias",
            &alias,
            &self.network,
            &self.containers[i],
        ])
        .map(drop)
    }

    /// Whether node `i`'s container runs (paused counts as running).
    pub fn running(&self, i: usize) -> anyhow::Result<bool> {
        self.docker(&["inspect", "-f", "{{.State.Running}}", &self.containers[i]])
            .map(|s| s.trim() == "true")
    }

    /// Why node `i`'s container stopped, if it did (`exit code N`).
    pub fn exit_status(&self, i: usize) -> String {
        self.docker(&[
            "inspect",
            "-f",
            "exit code {{.State.ExitCode}}",
            &self.containers[i],
        ])
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
    }

    /// The last `lines` of node `i`'s log.
    pub fn logs(&self, i: usize, lines: Option<usize>) -> String {
        let tail = lines.map(|n| n.to_string()).unwrap_or("all".into());
        let out = Command::new("docker")
            .args(["logs", "--tail", &tail, &self.containers[i]])
            .output();
        match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("(no log: {e})"),
        }
    }

    /// `down -v`: the containers, the network and the volumes go.
    pub fn down(&mut self) {
        if self.up {
            let _ = self.dc(&["down", "-v", "-t", "5", "--remove-orphans"]);
            self.up = false;
        }
        // gone with its lock file (LockFile's drop)
        self.lock = None;
    }
}

impl Drop for ComposeStack {
    fn drop(&mut self) {
        self.down();
    }
}

/// Projects of this campaign's name shape are `shoalchaos{pid}x{seed}x{random}`.
const PROJECT_PREFIX: &str = "shoalchaos";

/// The label naming the host whose campaign made a container.
const HOST_LABEL: &str = "org.shoal.chaos.host";

/// Where the campaigns' lock files are: `/run/shoal-chaos` for root (as for the namespaces:
/// see `net.rs`), else the user's runtime folder (`$XDG_RUNTIME_DIR/shoal-chaos`) or
/// `/tmp/shoal-chaos-UID` (a member of the docker group runs campaigns too).
fn lock_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/shoal-chaos");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("shoal-chaos"),
        _ => std::env::temp_dir().join(format!("shoal-chaos-{uid}")),
    }
}

/// A campaign's lock: held (flock) while it lives, removed when it ends; left behind (and
/// free) when the process dies without ending, which is how the sweep tells a dead campaign.
struct LockFile {
    file: Option<std::fs::File>,
    path: PathBuf,
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // the project's name is this campaign's alone: no other process takes this file but a
        // sweep, which needs the lock first
        let _ = std::fs::remove_file(&self.path);
        self.file = None;
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn lock_path(project: &str) -> PathBuf {
    lock_dir().join(format!("compose-{project}.lock"))
}

/// Try to take the lock at `path` without waiting: the open file if taken, None if a live
/// process holds it (or it cannot be opened).
fn try_lock(path: &Path) -> Option<std::fs::File> {
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ok()?;
    crate::net::flock(&file, false).then_some(file)
}

fn take_lock(project: &str) -> anyhow::Result<LockFile> {
    let dir = lock_dir();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("make the campaigns' lock folder {}", dir.display()))?;
    let path = lock_path(project);
    let file =
        try_lock(&path).with_context(|| format!("take the campaign's lock {}", path.display()))?;
    Ok(LockFile {
        file: Some(file),
        path,
    })
}

/// Remove the stacks that campaigns of this host left when they died (killed, or stopped by
/// Ctrl-C, which skips destructors): their containers, network and volumes, found by Compose's
/// project label. A stack counts as left when its containers carry this host's name and no live
/// process holds its project's lock (another machine's or container's campaigns, sharing the
/// Docker engine, are left alone: they carry their own host's name).
fn sweep_stale(host: &str) {
    // (a folder emptied by a reboot: its stacks' locks are free)
    let _ = std::fs::create_dir_all(lock_dir());
    let Ok(out) = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label={HOST_LABEL}={host}"),
            "--format",
            "{{.Label \"com.docker.compose.project\"}}",
        ])
        .output()
    else {
        return;
    };
    let mut projects: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|p| p.starts_with(PROJECT_PREFIX))
        .map(String::from)
        .collect();
    projects.sort();
    projects.dedup();
    for project in projects {
        let path = lock_path(&project);
        let Some(held) = try_lock(&path) else {
            continue;
        };
        eprintln!("chaos: removing the compose stack {project}, left by a campaign that died");
        let label = format!("label=com.docker.compose.project={project}");
        let ids = |what: &[&str]| -> Vec<String> {
            Command::new("docker")
                .args(what)
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default()
        };
        let containers = ids(&["ps", "-aq", "--filter", &label]);
        if !containers.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&containers)
                .output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &format!("{project}_default")])
            .output();
        let volumes = ids(&["volume", "ls", "-q", "--filter", &label]);
        if !volumes.is_empty() {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f"])
                .args(&volumes)
                .output();
        }
        let _ = std::fs::remove_file(&path);
        drop(held);
    }
}

/// The campaign's override of docker-compose.yml.
fn override_yaml(net: u64, addrs: &[String], env: &[(String, String)], host: &str) -> String {
    let mut y = String::from("# written by shoal-chaos for one campaign\nservices:\n");
    for (i, addr) in addrs.iter().enumerate() {
        y.push_str(&format!(
            "  shoal{}:\n    restart: \"no\"\n    labels:\n      {HOST_LABEL}: \"{host}\"\n    environment:\n      SHOAL_DEBUG__FAULT_INJECTION: \"true\"\n",
            i + 1
        ));
        for (k, v) in env {
            y.push_str(&format!("      {k}: \"{v}\"\n"));
        }
        y.push_str(&format!(
            "    networks:\n      default:\n        ipv4_address: {addr}\n"
        ));
    }
    y.push_str(&format!(
        "  shoal-init:\n    labels:\n      {HOST_LABEL}: \"{host}\"\n"
    ));
    y.push_str(&format!(
        "networks:\n  default:\n    ipam:\n      config:\n        - subnet: 10.213.{net}.0/24\n"
    ));
    y
}

fn output(mut cmd: Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!(
            "`{what}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_override_pins_addresses_and_adds_the_environment() {
        let y = override_yaml(
            42,
            &["10.213.42.11".into(), "10.213.42.12".into()],
            &[("SHOAL_X".into(), "1".into())],
            "box",
        );
        assert!(y.contains("    labels:\n      org.shoal.chaos.host: \"box\"\n"));
        assert!(y.contains("  shoal2:\n    restart: \"no\"\n"));
        assert!(y.contains("        ipv4_address: 10.213.42.12\n"));
        assert_eq!(y.matches("      SHOAL_X: \"1\"\n").count(), 2);
        assert!(y.contains("        - subnet: 10.213.42.0/24\n"));
    }
}
