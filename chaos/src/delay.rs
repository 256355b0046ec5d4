//! Packet delay without `tc netem`: a packet filter rule hands what a node sends to a netfilter
//! queue (`NFQUEUE`), and this program, running in the node's namespace, holds each packet for
//! the delay (give or take the jitter) before it lets it go on. Packets leave in the order they
//! came (a later one never overtakes an earlier one), as on a slow link.
//!
//! It runs as `shoal-chaos delay-packets --queue N --ms D --jitter J`, started and stopped by
//! [`crate::net::Network::delay`]. On SIGTERM or SIGINT it lets every packet it holds go at once
//! and exits, so that taking a delay away loses nothing (the campaign removes the filter rule
//! first, so nothing new comes in meanwhile).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::{Rng, SeedableRng};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
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

/// Hold the packets of netfilter queue `queue` for `delay` ± `jitter`, until a signal stops it.
pub fn run(queue: u16, delay: Duration, jitter: Duration, seed: u64) -> anyhow::Result<()> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
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
    {
        use std::io::Write;
        let mut out = std::io::stdout();
        writeln!(out, "ready")?;
        out.flush()?;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    while !STOP.load(Ordering::SeqCst) {
        // take everything that came
        loop {
            match q.recv() {
                Ok(mut msg) => {
                    msg.set_verdict(nfq::Verdict::Accept);
                    let last = held.back().map(|(t, _)| *t);
                    held.push_back((
                        release_at(Instant::now(), last, delay, jitter, &mut rng),
                        msg,
                    ));
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::Interrupted =>
                {
                    break
                }
                Err(e) => return Err(e).context("read the netfilter queue"),
            }
        }
        // let go of what is due
        let now = Instant::now();
        while held.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, msg)) = held.pop_front() {
                q.verdict(msg).context("let a packet go")?;
            }
        }
        // no way to wait on the socket itself (the crate keeps its descriptor): look again
        // within a millisecond, or when the next packet is due if that is sooner
        let wait = held
            .front()
            .map(|(t, _)| t.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(1))
            .min(Duration::from_millis(1));
        std::thread::sleep(wait);
    }
    for (_, msg) in held {
        let _ = q.verdict(msg);
    }
    Ok(())
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
