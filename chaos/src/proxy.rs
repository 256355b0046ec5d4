//! A fault-injecting TCP proxy between nodes on loopback, for machines where network namespaces
//! cannot be made.
//!
//! Every node listens on a port of its own and advertises another one: a proxy in front of it
//! (its "front"). Its peers reach it only through that front, while the campaign's clients talk
//! to its own port. A node's requests to its peers carry its id in the `x-shoal-node-id` header
//! (the internal routes need it anyway), so the proxy reads the head of the first request of each
//! connection to learn which node opened it, and from then on copies bytes both ways.
//!
//! Faults, as close as a proxy can come to the same faults in a network:
//! - **cut** (`from` → `to` blocked): a connection `from` opens to `to` freezes: the proxy reads
//!   on (up to a bound) but delivers nothing either way until the cut heals, then delivers what it
//!   held, in order: a stalled TCP connection whose segments go through once the link is back. A
//!   new connection is accepted (the kernel answers the handshake on loopback, where a cut network
//!   would drop it) and held the same way. As with the namespaces' filter, a one-way cut freezes
//!   only the connections `from` opens.
//! - **loss**: a percentage of what a node sends is "lost": the chunk is held for a
//!   retransmission timeout (200 ms, doubled for each further loss of the same chunk), which is
//!   what a lost segment costs a TCP connection.
//! - **delay**: what a node sends is held for the delay, give or take a quarter, in order.
//! - **a node down**: when the node's port refuses the proxy, the proxy closes its front until
//!   the port answers again, so that its peers' connections are refused as they would be by the
//!   address of a host whose process died (the connections that came before the front closed are
//!   accepted, then closed: their senders see a lost connection, not a refused one).
//!
//! A connection whose first request names no node (a request another part of a node makes
//! without the header) is never faulted; the proxy counts them, and the campaign reports it, apart
//! from a node's connections to its own front.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use parking_lot::{Condvar, Mutex};

/// The header a node's requests to its peers carry its id in (`HEADER_NODE` in
/// cluster/src/network.rs; a test checks they agree).
pub const NODE_HEADER: &str = "x-shoal-node-id";

/// Largest request head read to find the header.
const MAX_HEAD: usize = 64 * 1024;

/// Chunks held per direction of a connection before the proxy stops reading from the sender
/// (with 64 KiB reads: at most 4 MiB held per direction).
const HELD_CHUNKS: usize = 64;

/// How often blocked reads and waits look at the stop flag.
const TICK: Duration = Duration::from_millis(100);

/// How long a write to a side that reads nothing may block before the connection is dropped
/// (longer than the campaign's default holds, 1-4 s).
const WRITE_LIMIT: Duration = Duration::from_secs(30);

/// A retransmission timeout: what a lost segment first costs (Linux's minimum RTO).
const RTO: Duration = Duration::from_millis(200);

/// Losses of one chunk counted at most (200 + 400 + 800 + 1,600 ms: a connection that loses
/// more than that is as good as cut, which the cut faults make).
const MAX_LOSSES: u32 = 4;

/// The faults in force, shared by every proxy thread.
struct Faults {
    /// (from, to) node indices: connections `from` opens to `to` are frozen.
    blocked: Mutex<BTreeSet<(usize, usize)>>,
    /// Woken when a cut heals (and at stop).
    healed: Condvar,
    /// Percent of each node's chunks lost.
    loss: Vec<AtomicU8>,
    /// Each node's delay in ms (0: none).
    delay_ms: Vec<AtomicU32>,
    stop: AtomicBool,
    /// Each node's port was found refusing: its front is closed until the port answers.
    down: Vec<AtomicBool>,
    /// Each front's opening, counted: a connection accepted by an earlier opening does not close
    /// a later one.
    opening: Vec<AtomicU64>,
    /// Connections made through the proxies.
    connections: AtomicU64,
    /// Of those, the ones whose first request named no node (never faulted)...
    unnamed: AtomicU64,
    /// ... and those a node opened to its own front (never faulted either).
    own: AtomicU64,
}

impl Faults {
    fn is_cut(&self, from: usize, to: usize) -> bool {
        self.blocked.lock().contains(&(from, to))
    }

    /// Wait while `from` → `to` is cut; false if the proxy stopped meanwhile, or `opener` (a
    /// connection held before it reached the node) was closed by the node that opened it.
    fn wait_open(&self, from: usize, to: usize, opener: Option<&TcpStream>) -> bool {
        loop {
            {
                let mut blocked = self.blocked.lock();
                if !blocked.contains(&(from, to)) {
                    break;
                }
                self.healed.wait_for(&mut blocked, TICK);
            }
            // (outside the lock, which every chunk's delivery takes)
            if self.stop.load(Ordering::Acquire) || opener.is_some_and(closed) {
                return false;
            }
        }
        !self.stop.load(Ordering::Acquire)
    }

    /// How long a chunk `sender` sends is held: its delay (± a quarter) and its losses.
    fn hold(&self, sender: usize) -> Duration {
        let mut held = Duration::ZERO;
        let d = self.delay_ms[sender].load(Ordering::Relaxed);
        if d > 0 {
            let quarter = d / 4;
            let jitter = rand::random::<u32>() % (2 * quarter + 1);
            held += Duration::from_millis(u64::from(d - quarter + jitter));
        }
        let loss = u32::from(self.loss[sender].load(Ordering::Relaxed));
        let mut rto = RTO;
        for _ in 0..MAX_LOSSES {
            if loss == 0 || rand::random::<u32>() % 100 >= loss {
                break;
            }
            held += rto;
            rto *= 2;
        }
        held
    }
}

/// One proxy in front of each node, and the faults they make.
pub struct Proxies {
    faults: Arc<Faults>,
    /// The fronts' addresses (what each node advertises).
    fronts: Vec<SocketAddr>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Proxies {
    /// Start a proxy in front of each node: node `i` listens on `127.0.0.1:ports[i]`, and its
    /// peers reach it through [`Proxies::front`]`(i)`.
    pub fn start(ports: &[u16]) -> anyhow::Result<Proxies> {
        let n = ports.len();
        let faults = Arc::new(Faults {
            blocked: Mutex::new(BTreeSet::new()),
            healed: Condvar::new(),
            loss: (0..n).map(|_| AtomicU8::new(0)).collect(),
            delay_ms: (0..n).map(|_| AtomicU32::new(0)).collect(),
            stop: AtomicBool::new(false),
            down: (0..n).map(|_| AtomicBool::new(false)).collect(),
            opening: (0..n).map(|_| AtomicU64::new(0)).collect(),
            connections: AtomicU64::new(0),
            unnamed: AtomicU64::new(0),
            own: AtomicU64::new(0),
        });
        // built a front at a time, so that a failure part way stops the fronts already made
        let mut proxies = Proxies {
            faults,
            fronts: Vec::new(),
            threads: Vec::new(),
        };
        for (to, port) in ports.iter().enumerate() {
            // each front on a loopback address of its own: its port, closed while the node is
            // down, cannot be taken meanwhile as the source port of a connection from 127.0.0.1
            let addr = std::net::Ipv4Addr::new(127, 0, 0, 2 + (to % 250) as u8);
            let listener = TcpListener::bind((addr, 0)).context("bind a proxy's front")?;
            let front = listener.local_addr()?;
            proxies.fronts.push(front);
            let upstream = SocketAddr::from(([127, 0, 0, 1], *port));
            let faults = proxies.faults.clone();
            proxies.threads.push(
                std::thread::Builder::new()
                    .name(format!("proxy-{}", to + 1))
                    .spawn(move || accept_loop(listener, front, to, upstream, faults))?,
            );
        }
        Ok(proxies)
    }

    /// The address node `i`'s peers reach it at.
    pub fn front(&self, i: usize) -> SocketAddr {
        self.fronts[i]
    }

    /// Freeze the connections each `(from, to)` of `blocked` opens, and lose `loss[i]` percent
    /// of what node `i` sends; everything else flows.
    pub fn set(&self, blocked: &BTreeSet<(usize, usize)>, loss: &[u8]) {
        for (i, l) in self.faults.loss.iter().enumerate() {
            l.store(
                loss.get(i).copied().unwrap_or(0).min(100),
                Ordering::Relaxed,
            );
        }
        *self.faults.blocked.lock() = blocked.clone();
        self.faults.healed.notify_all();
    }

    /// Hold what node `i` sends for `ms`, give or take a quarter (0: no delay).
    pub fn delay(&self, i: usize, ms: u32) {
        self.faults.delay_ms[i].store(ms, Ordering::Relaxed);
    }

    /// Connections made through the proxies, how many of them named no node, and how many a
    /// node opened to its own front (neither is ever faulted).
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.faults.connections.load(Ordering::Relaxed),
            self.faults.unnamed.load(Ordering::Relaxed),
            self.faults.own.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        self.faults.stop.store(true, Ordering::Release);
        self.faults.healed.notify_all();
        // wake each accept loop
        for front in &self.fronts {
            let _ = TcpStream::connect_timeout(front, Duration::from_secs(1));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Accept connections at `front` for node `to`; while the node's port refuses, keep the front
/// closed (its peers are refused) and watch the port.
fn accept_loop(
    listener: TcpListener,
    front: SocketAddr,
    to: usize,
    upstream: SocketAddr,
    faults: Arc<Faults>,
) {
    let mut listener = Some(listener);
    let mut closed_since: Option<Instant> = None;
    while !faults.stop.load(Ordering::Acquire) {
        if faults.down[to].load(Ordering::Acquire) {
            drop(listener.take());
            // until the node listens again (or the proxy stops)
            while !faults.stop.load(Ordering::Acquire)
                && TcpStream::connect_timeout(&upstream, TICK).is_err()
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            faults.opening[to].fetch_add(1, Ordering::AcqRel);
            faults.down[to].store(false, Ordering::Release);
            continue;
        }
        let Some(l) = listener.as_ref() else {
            // the front again, at the same address
            match TcpListener::bind(front) {
                Ok(l) => {
                    listener = Some(l);
                    closed_since = None;
                }
                Err(e) => {
                    let since = *closed_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(5) {
                        eprintln!(
                            "chaos: node {}'s proxy cannot open its front {front} again: {e}",
                            to + 1
                        );
                        closed_since = Some(Instant::now());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            continue;
        };
        if !readable(l, TICK) {
            continue;
        }
        let conn = match l.accept() {
            Ok((c, _)) => c,
            // (out of descriptors, or the connection went before it was taken)
            Err(_) => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        if faults.stop.load(Ordering::Acquire) {
            return;
        }
        let faults = faults.clone();
        let opening = faults.opening[to].load(Ordering::Acquire);
        let _ = std::thread::Builder::new()
            .name(format!("proxy-{}-conn", to + 1))
            .spawn(move || {
                let _ = serve(conn, to, upstream, opening, &faults);
            });
    }
}

/// The events of `events` (and errors, hang-ups) that `socket` has within `limit` (0: none).
fn poll(
    socket: &impl std::os::fd::AsRawFd,
    events: libc::c_short,
    limit: Duration,
) -> libc::c_short {
    let mut fd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the length given; the socket outlives the call.
    let n = unsafe { libc::poll(&mut fd, 1, limit.as_millis() as libc::c_int) };
    if n > 0 {
        fd.revents
    } else {
        0
    }
}

/// Whether `listener` has a connection to accept within `limit`.
fn readable(listener: &TcpListener, limit: Duration) -> bool {
    poll(listener, libc::POLLIN, limit) & libc::POLLIN != 0
}

/// Whether the peer of `conn` has closed it (without reading what it may have sent: the
/// hang-up is seen even behind unread bytes, a request's body the proxy has not read).
fn closed(conn: &TcpStream) -> bool {
    poll(conn, libc::POLLRDHUP, Duration::ZERO) & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR)
        != 0
}

/// One connection to node `to`: learn who opened it, then copy both ways with the faults.
fn serve(
    client: TcpStream,
    to: usize,
    upstream: SocketAddr,
    opening: u64,
    faults: &Arc<Faults>,
) -> std::io::Result<()> {
    faults.connections.fetch_add(1, Ordering::Relaxed);
    client.set_nodelay(true)?;
    client.set_read_timeout(Some(TICK))?;
    let mut head = Vec::new();
    let from = loop {
        if faults.stop.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut buf = [0u8; 8192];
        match (&client).read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(k) => head.extend_from_slice(&buf[..k]),
            Err(e) if timed_out(&e) => continue,
            Err(e) => return Err(e),
        }
        if let Some(end) = find(&head, b"\r\n\r\n") {
            break node_in_head(&head[..end]);
        }
        if head.len() > MAX_HEAD {
            break None;
        }
    };
    // the node whose faults the connection takes (none: never faulted)
    let opener = match from {
        Some(f) if f == to => {
            faults.own.fetch_add(1, Ordering::Relaxed);
            None
        }
        Some(f) if f < faults.loss.len() => Some(f),
        _ => {
            faults.unnamed.fetch_add(1, Ordering::Relaxed);
            None
        }
    };
    pipe(client, head, to, opener, upstream, opening, faults)
}

/// Copy `client` ⇄ node `to` (at `upstream`), starting with the bytes already read; `from` is the
/// node that opened the connection, if it said.
fn pipe(
    client: TcpStream,
    head: Vec<u8>,
    to: usize,
    from: Option<usize>,
    upstream: SocketAddr,
    opening: u64,
    faults: &Arc<Faults>,
) -> std::io::Result<()> {
    // a cut holds the connection before it reaches the node, as a dropped handshake would (and
    // lets it go if its opener gives up meanwhile)
    if let Some(f) = from {
        if !faults.wait_open(f, to, Some(&client)) {
            return Ok(());
        }
    }
    let server = match TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) => {
            // Refused: the node is down. Close the front until it listens again (unless it has
            // been closed and opened since this connection came), so that the next connections
            // are refused as its address would refuse them. (Not for a timeout: a paused node
            // whose backlog is full is unresponsive, not gone.)
            if e.kind() == std::io::ErrorKind::ConnectionRefused
                && faults.opening[to].load(Ordering::Acquire) == opening
            {
                faults.down[to].store(true, Ordering::Release);
            }
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }
    };
    server.set_nodelay(true)?;
    server.set_read_timeout(Some(TICK))?;
    server.set_write_timeout(Some(WRITE_LIMIT))?;
    client.set_write_timeout(Some(WRITE_LIMIT))?;
    // the opener's bytes (held for its faults), then the node's answers (held for its own)
    let up = Direction {
        read: client.try_clone()?,
        write: server.try_clone()?,
        sender: from,
        link: from.map(|f| (f, to)),
    };
    let down = Direction {
        read: server,
        write: client,
        sender: from.map(|_| to),
        link: from.map(|f| (f, to)),
    };
    let faults2 = faults.clone();
    let t = std::thread::Builder::new()
        .name(format!("proxy-{}-up", to + 1))
        .spawn(move || up.run(head, &faults2))?;
    down.run(Vec::new(), faults);
    let _ = t.join();
    Ok(())
}

/// One direction of a connection.
struct Direction {
    read: TcpStream,
    write: TcpStream,
    /// The node whose bytes these are (for loss and delay); None: never faulted.
    sender: Option<usize>,
    /// The connection's (opener, node): frozen while it is cut.
    link: Option<(usize, usize)>,
}

/// Bytes read, and when they are due to be written.
type Chunk = (Vec<u8>, Instant);

impl Direction {
    /// Read into a bounded queue; a second thread writes each chunk once it is due.
    fn run(self, first: Vec<u8>, faults: &Arc<Faults>) {
        let (tx, rx) = sync_channel::<Chunk>(HELD_CHUNKS);
        let write = self.write;
        let link = self.link;
        let f = faults.clone();
        let writer = std::thread::Builder::new()
            .name("proxy-write".into())
            .spawn(move || deliver(rx, write, link, &f));
        let Ok(writer) = writer else { return };
        let mut due = Instant::now();
        let mut send = |bytes: Vec<u8>, tx: &SyncSender<Chunk>| -> bool {
            let held = self.sender.map(|s| faults.hold(s)).unwrap_or_default();
            // in order: never before the chunk ahead of it
            due = due.max(Instant::now() + held);
            tx.send((bytes, due)).is_ok()
        };
        if !first.is_empty() && !send(first, &tx) {
            return;
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if faults.stop.load(Ordering::Acquire) {
                break;
            }
            match (&self.read).read(&mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    if !send(buf[..k].to_vec(), &tx) {
                        break;
                    }
                }
                Err(e) if timed_out(&e) => continue,
                Err(_) => break,
            }
        }
        // (the writer delivers what is queued, then sees the end)
        drop(tx);
        let _ = writer.join();
    }
}

/// Write each chunk when it is due and its link is open; at the end, pass the close on.
fn deliver(
    rx: Receiver<Chunk>,
    mut write: TcpStream,
    link: Option<(usize, usize)>,
    faults: &Faults,
) {
    loop {
        let (bytes, due) = match rx.recv_timeout(TICK) {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout) => {
                if faults.stop.load(Ordering::Acquire) {
                    break;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        loop {
            let now = Instant::now();
            if now >= due || faults.stop.load(Ordering::Acquire) {
                break;
            }
            std::thread::sleep((due - now).min(TICK));
        }
        if let Some((f, t)) = link {
            if faults.is_cut(f, t) && !faults.wait_open(f, t, None) {
                break;
            }
        }
        if write.write_all(&bytes).is_err() {
            break;
        }
    }
    let _ = write.shutdown(Shutdown::Write);
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The node index named by the head's `x-shoal-node-id` header (node ids are index + 1).
fn node_in_head(head: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case(NODE_HEADER) {
            return None;
        }
        let id: usize = value.trim().parse().ok()?;
        id.checked_sub(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    /// A node stand-in: answers each line it reads with the same line, on every connection.
    fn echo_server() -> (u16, std::thread::JoinHandle<()>) {
        echo_on(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    fn echo_on(l: TcpListener) -> (u16, std::thread::JoinHandle<()>) {
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { return };
                std::thread::spawn(move || {
                    let mut r = std::io::BufReader::new(c.try_clone().unwrap());
                    let mut w = c;
                    let mut line = String::new();
                    while r.read_line(&mut line).map(|k| k > 0).unwrap_or(false) {
                        if w.write_all(line.as_bytes()).is_err() {
                            return;
                        }
                        line.clear();
                    }
                });
            }
        });
        (port, t)
    }

    /// A connection to `front` as node `from` (None: naming no node), with its head sent.
    fn open(front: SocketAddr, from: Option<usize>) -> (TcpStream, std::io::BufReader<TcpStream>) {
        let c = TcpStream::connect(front).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let named = from
            .map(|f| format!("{NODE_HEADER}: {}\r\n", f + 1))
            .unwrap_or_default();
        let head = format!("POST /x HTTP/1.1\r\nhost: a\r\n{named}\r\n");
        (&c).write_all(head.as_bytes()).unwrap();
        let mut r = std::io::BufReader::new(c.try_clone().unwrap());
        // the head comes back line by line
        for _ in 0..head.matches("\r\n").count() {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
        }
        (c, r)
    }

    /// Send a line and time its echo; None if none came within `limit`.
    fn round_trip(
        c: &mut TcpStream,
        r: &mut std::io::BufReader<TcpStream>,
        limit: Duration,
    ) -> Option<Duration> {
        c.set_read_timeout(Some(limit)).unwrap();
        let start = Instant::now();
        c.write_all(b"ping\n").unwrap();
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(k) if k > 0 => {
                assert_eq!(line, "ping\n");
                Some(start.elapsed())
            }
            _ => None,
        }
    }

    #[test]
    fn the_head_names_the_node_that_opened_the_connection() {
        assert_eq!(
            node_in_head(b"POST /internal/x HTTP/1.1\r\nX-Shoal-Node-Id: 3\r\nhost: h"),
            Some(2)
        );
        assert_eq!(node_in_head(b"GET / HTTP/1.1\r\nhost: h"), None);
        assert_eq!(node_in_head(b"GET / HTTP/1.1\r\nx-shoal-node-id: 0"), None);
        assert_eq!(
            node_in_head(b"GET / HTTP/1.1\r\nx-shoal-node-id: two"),
            None
        );
    }

    #[test]
    fn a_cut_freezes_the_connections_its_sender_opens_and_the_heal_delivers_what_it_held() {
        let (port, _server) = echo_server();
        // node 0 is the echo server; nodes 1 and 2 only open connections to it
        let proxies = Proxies::start(&[port, port, port]).unwrap();
        let front = proxies.front(0);
        let (mut c1, mut r1) = open(front, Some(1));
        let (mut c2, mut r2) = open(front, Some(2));
        assert!(round_trip(&mut c1, &mut r1, Duration::from_secs(5)).is_some());

        // 1 cannot send to 0 (one way): its connection stalls, 2's does not, nor do the
        // connections 0 opens to 1
        let (mut c5, mut r5) = open(proxies.front(1), Some(0));
        proxies.set(&BTreeSet::from([(1, 0)]), &[0, 0, 0]);
        assert_eq!(
            round_trip(&mut c1, &mut r1, Duration::from_millis(500)),
            None,
            "a cut connection answers nothing"
        );
        // more from 1 while it is cut, in chunks of their own
        for line in ["a\n", "b\n", "c\n"] {
            c1.write_all(line.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(round_trip(&mut c2, &mut r2, Duration::from_secs(5)).is_some());
        assert!(
            round_trip(&mut c5, &mut r5, Duration::from_secs(5)).is_some(),
            "the other way is open"
        );
        // a new connection from 1 is held before it reaches the node
        let c3 = TcpStream::connect(front).unwrap();
        (&c3)
            .write_all(b"POST /x HTTP/1.1\r\nx-shoal-node-id: 2\r\n\r\nlate\n")
            .unwrap();
        c3.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut got = [0u8; 1];
        assert!((&c3).read(&mut got).is_err(), "held while the cut lasts");
        // a connection naming no node is never faulted
        let (mut c4, mut r4) = open(front, None);
        assert!(round_trip(&mut c4, &mut r4, Duration::from_secs(5)).is_some());

        // healed: what was held arrives, in order, and the connections go on
        proxies.set(&BTreeSet::new(), &[0, 0, 0]);
        r1.get_mut()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        for want in ["ping\n", "a\n", "b\n", "c\n"] {
            let mut line = String::new();
            r1.read_line(&mut line).unwrap();
            assert_eq!(
                line, want,
                "what was held is delivered after the heal, in order"
            );
        }
        assert!(round_trip(&mut c1, &mut r1, Duration::from_secs(5)).is_some());
        let mut r3 = std::io::BufReader::new(c3.try_clone().unwrap());
        r3.get_mut()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut echoed = String::new();
        while !echoed.ends_with("late\n") {
            let mut l = String::new();
            assert!(
                r3.read_line(&mut l).unwrap() > 0,
                "the held connection is made"
            );
            echoed.push_str(&l);
        }
        assert_eq!(proxies.counts(), (5, 1, 0));
    }

    #[test]
    fn a_cut_freezes_the_answers_too_and_loses_none() {
        // a node that talks without being asked: numbered lines every 5 ms
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                std::thread::spawn(move || {
                    for n in 0u64.. {
                        if c.write_all(format!("{n}\n").as_bytes()).is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                });
            }
        });
        let proxies = Proxies::start(&[port, port]).unwrap();
        let c = TcpStream::connect(proxies.front(0)).unwrap();
        (&c).write_all(b"GET / HTTP/1.1\r\nx-shoal-node-id: 2\r\n\r\n")
            .unwrap();
        let mut r = std::io::BufReader::new(c.try_clone().unwrap());
        let mut next = 0u64;
        let mut read = |limit: Duration| -> Option<u64> {
            r.get_mut().set_read_timeout(Some(limit)).unwrap();
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(k) if k > 0 => Some(line.trim().parse().unwrap()),
                _ => None,
            }
        };
        for _ in 0..10 {
            assert_eq!(read(Duration::from_secs(5)), Some(next));
            next += 1;
        }
        proxies.set(&BTreeSet::from([(1, 0)]), &[0, 0]);
        // what was on its way before the cut still comes (at most what was read before it);
        // then nothing
        let cut = Instant::now();
        while let Some(n) = read(Duration::from_millis(300)) {
            assert_eq!(n, next);
            next += 1;
            assert!(
                cut.elapsed() < Duration::from_secs(3),
                "the node's answers still flow through a cut"
            );
        }
        proxies.set(&BTreeSet::new(), &[0, 0]);
        for _ in 0..20 {
            assert_eq!(
                read(Duration::from_secs(5)),
                Some(next),
                "none lost, in order"
            );
            next += 1;
        }
    }

    #[test]
    fn a_node_down_is_refused_at_its_front_until_it_listens_again() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let proxies = Proxies::start(&[port, port]).unwrap();
        drop(l);
        let front = proxies.front(0);
        // the first connection finds it down, and is closed
        let c = TcpStream::connect(front).unwrap();
        (&c).write_all(b"POST /x HTTP/1.1\r\nx-shoal-node-id: 2\r\n\r\n")
            .unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        assert!(matches!((&c).read(&mut buf), Ok(0) | Err(_)));
        // then the front refuses, as a dead process's address does
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(front).is_ok() {
            assert!(Instant::now() < deadline, "the front still accepts");
            std::thread::sleep(Duration::from_millis(20));
        }
        // the node back: the front opens again at the same address
        let (_port, _server) = echo_on(TcpListener::bind(("127.0.0.1", port)).unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut c, mut r) = loop {
            if let Ok(probe) = TcpStream::connect(front) {
                drop(probe);
                break open(front, Some(1));
            }
            assert!(Instant::now() < deadline, "the front never opened again");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(round_trip(&mut c, &mut r, Duration::from_secs(5)).is_some());
    }

    #[test]
    fn the_header_is_the_one_the_nodes_send() {
        let cluster = include_str!("../../cluster/src/network.rs");
        assert!(
            cluster.contains(&format!("pub const HEADER_NODE: &str = \"{NODE_HEADER}\";")),
            "cluster/src/network.rs names the node with another header"
        );
    }

    #[test]
    fn delay_and_loss_hold_what_a_node_sends() {
        let (port, _server) = echo_server();
        let proxies = Proxies::start(&[port, port]).unwrap();
        let (mut c, mut r) = open(proxies.front(0), Some(1));
        assert!(round_trip(&mut c, &mut r, Duration::from_secs(5)).is_some());
        // 1's requests wait 80 ± 20 ms, and 0's answers 40 ± 10
        proxies.delay(1, 80);
        proxies.delay(0, 40);
        for _ in 0..5 {
            let rt = round_trip(&mut c, &mut r, Duration::from_secs(5)).unwrap();
            assert!(rt >= Duration::from_millis(90), "{rt:?}");
        }
        proxies.delay(1, 0);
        proxies.delay(0, 0);
        // everything 1 sends is lost (and sent again) as often as counted: 200+400+800+1600 ms
        proxies.set(&BTreeSet::new(), &[0, 100]);
        assert_eq!(proxies.faults.hold(1), Duration::from_millis(3000));
        assert_eq!(proxies.faults.hold(0), Duration::ZERO);
        let rt = round_trip(&mut c, &mut r, Duration::from_secs(10)).unwrap();
        assert!(rt >= Duration::from_millis(3000), "{rt:?}");
        // a share of it: each chunk held 0 or a multiple of the timeout
        proxies.set(&BTreeSet::new(), &[0, 30]);
        let held: Vec<Duration> = (0..2000).map(|_| proxies.faults.hold(1)).collect();
        let lost = held.iter().filter(|h| !h.is_zero()).count();
        assert!((450..750).contains(&lost), "{lost} of 2000 lost at 30%");
        proxies.set(&BTreeSet::new(), &[0, 0]);
        let rt = round_trip(&mut c, &mut r, Duration::from_secs(5)).unwrap();
        assert!(rt < Duration::from_millis(1000), "{rt:?}");
    }
}
