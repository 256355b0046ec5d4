//! Packet delay without `tc netem`: a packet filter rule hands what a node sends to a netfilter
//! queue (`NFQUEUE`), and a program running in the node's namespace holds each packet for the
//! delay (give or take the jitter) before it lets it go on. Packets leave in the order they came
//! (a later one never overtakes an earlier one), as on a slow link.
//!
//! The program is `shoal-chaos delay-packets --queue N --ms D --jitter J` ([`run`]); the campaign
//! drives it through a [`Delayer`]:
//! - it says `ready` on stdout once it holds the queue; then the rule goes in;
//! - SIGUSR1: it lets go of everything it holds, in order, says `passing`, and from then on lets
//!   each packet go as it comes; then the rule is taken away (no packet that skips the queue can
//!   overtake one still held);
//! - SIGTERM (or SIGINT): it takes what is still queued in the kernel, lets it all go and exits.
//!
//! Whatever way it ends (an error too), it first lets go of what it holds: a packet the kernel
//! queued for a program that is gone is dropped. (Only a SIGKILL skips that: the campaign's own
//! death, through PR_SET_PDEATHSIG, or a delayer that did not end within two seconds of being
//! told to.)
//!
//! One reordering is left: a packet caught in the queue as the rule goes (the program takes it
//! within some 20 µs) can be overtaken by one sent right after, which no longer waits. TCP puts
//! such pairs back in order, as it does for netem's jitter.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};

static STOP: AtomicBool = AtomicBool::new(false);
static PASS: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

extern "C" fn on_pass(_: libc::c_int) {
    PASS.store(true, Ordering::SeqCst);
}

/// When a packet that came at `now` leaves: `delay` plus a uniform draw in `[-jitter, jitter]`,
/// never before the packet ahead of it (`last`), never before it came.
pub fn release_at(
    now: Instant,
    last: Option<Instant>,
    delay: Duration,
    jitter: Duration,
    rng: &mut impl Rng,
) -> Instant {
    let j = jitter.as_micros() as i64;
    let shift = if j > 0 { rng.gen_range(-j..=j) } else { 0 };
    let hold = (delay.as_micros() as i64 + shift).max(0) as u64;
    let at = now + Duration::from_micros(hold);
    match last {
        Some(l) if l > at => l,
        _ => at,
    }
}

/// The packets held, in the order they came.
struct Held {
    q: nfq::Queue,
    packets: VecDeque<(Instant, nfq::Message)>,
}

impl Held {
    /// Let go of every packet due by `now` (all of them with `None`).
    fn release(&mut self, now: Option<Instant>) -> std::io::Result<()> {
        while self
            .packets
            .front()
            .is_some_and(|(t, _)| now.is_none_or(|n| *t <= n))
        {
            if let Some((_, msg)) = self.packets.pop_front() {
                self.q.verdict(msg)?;
            }
        }
        Ok(())
    }

    /// Take every packet the kernel has queued: held (`Some(delay, jitter)`) or let go at once.
    fn take(
        &mut self,
        hold: Option<(Duration, Duration)>,
        rng: &mut impl Rng,
    ) -> anyhow::Result<()> {
        loop {
            match self.q.recv() {
                Ok(mut msg) => {
                    msg.set_verdict(nfq::Verdict::Accept);
                    match hold {
                        Some((delay, jitter)) => {
                            let last = self.packets.back().map(|(t, _)| *t);
                            let at = release_at(Instant::now(), last, delay, jitter, rng);
                            self.packets.push_back((at, msg));
                        }
                        None => {
                            // nothing may overtake what is still held
                            self.release(None)?;
                            self.q.verdict(msg)?;
                        }
                    }
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::Interrupted =>
                {
                    return Ok(())
                }
                Err(e) => return Err(e).context("read the netfilter queue"),
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // an error or a panic still lets go of what is held (the kernel drops what a closed
        // queue held)
        let _ = self.release(None);
    }
}

/// Hold the packets of netfilter queue `queue` for `delay` ± `jitter` until SIGUSR1 (then let
/// them through) or SIGTERM (then stop).
pub fn run(queue: u16, delay: Duration, jitter: Duration, seed: u64) -> anyhow::Result<()> {
    // SAFETY: the handlers only store to atomics, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGUSR1, on_pass as *const () as libc::sighandler_t);
    }
    let mut q = nfq::Queue::open().context("open a netfilter queue socket (root needed)")?;
    q.bind(queue)
        .with_context(|| format!("bind netfilter queue {queue}"))?;
    // a full queue lets packets through rather than dropping them: the fault is delay, not loss
    q.set_fail_open(queue, true)?;
    q.set_queue_max_len(queue, 65536)?;
    // whole (GSO) packets, as the stack made them: no segmenting on the way to this program
    q.set_recv_gso(queue, true)?;
    // only the packet's metadata comes up: it goes on unchanged
    q.set_copy_range(queue, 0)?;
    q.set_nonblocking(true);
    let mut held = Held {
        q,
        packets: VecDeque::new(),
    };
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut passing = false;
    while !STOP.load(Ordering::SeqCst) {
        if !passing && PASS.load(Ordering::SeqCst) {
            held.take(Some((delay, jitter)), &mut rng)?;
            held.release(None)?;
            passing = true;
            writeln!(out, "passing")?;
            out.flush()?;
        }
        held.take((!passing).then_some((delay, jitter)), &mut rng)?;
        let now = Instant::now();
        held.release(Some(now))?;
        // no way to wait on the socket itself (the crate keeps its descriptor): look again
        // within a millisecond, or when the next packet is due if that is sooner; while passing
        // (the few ms until the rule is gone), at once: a packet still caught in the queue when
        // the rule goes can be overtaken by the next one, which no longer waits
        let wait = if passing {
            Duration::from_micros(20)
        } else {
            held.packets
                .front()
                .map(|(t, _)| t.saturating_duration_since(now))
                .unwrap_or(Duration::from_millis(1))
                .min(Duration::from_millis(1))
        };
        std::thread::sleep(wait);
    }
    // what the kernel still queued (the rule is gone by now), then everything
    held.take(None, &mut rng)?;
    held.release(None)?;
    Ok(())
}

/// The iptables rule, in namespace `ns`, that hands what is sent on `dev` to netfilter queue
/// `queue` (`op`: `-A` to add, `-D` to remove); `--queue-bypass` lets packets through while no
/// program holds the queue.
pub fn queue_rule(ns: &str, dev: &str, queue: u16, op: &str) -> anyhow::Result<()> {
    let q = queue.to_string();
    crate::net::run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "iptables",
        "-w",
        "-t",
        "mangle",
        op,
        "OUTPUT",
        "-o",
        dev,
        "-j",
        "NFQUEUE",
        "--queue-num",
        &q,
        "--queue-bypass",
    ])
}

/// A running `delay-packets` program in a namespace, and its rule.
pub struct Delayer {
    child: Child,
    out: BufReader<ChildStdout>,
    ns: String,
    dev: String,
    queue: u16,
}

impl Delayer {
    /// Start `program delay-packets` in namespace `ns` and, once it holds queue `queue`, put the
    /// rule sending what `dev` sends there in place.
    pub fn start(
        program: &std::path::Path,
        ns: &str,
        dev: &str,
        queue: u16,
        delay_ms: u32,
        jitter_ms: u32,
        seed: u64,
    ) -> anyhow::Result<Delayer> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(program)
            .args([
                "delay-packets",
                "--queue",
                &queue.to_string(),
                "--ms",
                &delay_ms.to_string(),
                "--jitter",
                &jitter_ms.to_string(),
                "--seed",
                &seed.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        crate::net::die_with_campaign(&mut cmd);
        let mut child = cmd.spawn().context("start the packet delayer")?;
        let Some(out) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the packet delayer has no stdout");
        };
        let mut d = Delayer {
            child,
            out: BufReader::new(out),
            ns: ns.into(),
            dev: dev.into(),
            queue,
        };
        // it says `ready` once it holds the queue (or ends, having said why on stderr)
        if let Err(e) = d.expect("ready") {
            let _ = d.child.kill();
            let status = d.child.wait()?;
            return Err(e.context(format!("the packet delayer did not start ({status})")));
        }
        if let Err(e) = queue_rule(ns, dev, queue, "-A") {
            let _ = d.child.kill();
            let _ = d.child.wait();
            return Err(e);
        }
        Ok(d)
    }

    fn expect(&mut self, word: &str) -> anyhow::Result<()> {
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        if line.trim() != word {
            bail!("the packet delayer said {line:?}, not {word:?}");
        }
        Ok(())
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on a child this process started and has not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Take the delay away without losing or reordering a packet: the program lets go of what
    /// it holds and passes the rest, the rule goes, the program stops. An error if it did not
    /// end well (packets may then have been dropped).
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.signal(libc::SIGUSR1);
        let passing = self.expect("passing");
        let removed = queue_rule(&self.ns, &self.dev, self.queue, "-D");
        self.signal(libc::SIGTERM);
        let status = self.child.wait()?;
        passing?;
        removed?;
        if !status.success() {
            bail!("the packet delayer ended with {status}");
        }
        Ok(())
    }
}

impl Drop for Delayer {
    /// Not stopped (the campaign ends or failed): the rule goes, then the program is asked to
    /// end (letting go of what it holds), and killed if it has not within two seconds.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = queue_rule(&self.ns, &self.dev, self.queue, "-D");
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_leave_in_order_within_the_delay_and_jitter() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let start = Instant::now();
        let delay = Duration::from_millis(100);
        let jitter = Duration::from_millis(25);
        let mut last = None;
        for i in 0..1000u64 {
            let came = start + Duration::from_micros(i * 100);
            let at = release_at(came, last, delay, jitter, &mut rng);
            assert!(at >= came + Duration::from_millis(75), "left too early");
            if let Some(l) = last {
                assert!(at >= l, "overtook the packet ahead");
                // held back only by the packet ahead, never beyond it
                assert!(at <= (came + Duration::from_millis(125)).max(l));
            } else {
                assert!(at <= came + Duration::from_millis(125));
            }
            last = Some(at);
        }
    }

    #[test]
    fn no_jitter_is_the_delay_exactly() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let now = Instant::now();
        let at = release_at(
            now,
            None,
            Duration::from_millis(50),
            Duration::ZERO,
            &mut rng,
        );
        assert_eq!(at - now, Duration::from_millis(50));
    }
}
