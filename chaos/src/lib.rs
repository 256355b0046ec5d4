//! Fault injection and its checkers: a seeded campaign of real faults (process kills and pauses,
//! network cuts of every shape, packet loss and delay, wiped and full disks, actor panics, wall
//! clocks that jump) against a cluster of real `shoal` processes, each on a host of its own,
//! while clients write and read; then a checker that proves nothing acknowledged was lost, no
//! deleted document came back, reads were as fresh as they claimed, and every replica ended the
//! same.
//!
//! - [`net`]: the nodes' network (a namespace per node, or loopback) and its faults;
//! - [`proxy`]: the fault-injecting TCP proxy between nodes on loopback;
//! - [`delay`]: packet delay through a netfilter queue, where the kernel has no netem;
//! - [`cluster`]: the processes (or the docker-compose stack's containers: [`compose`]);
//! - [`workload`]: the clients, which record the [`history`];
//! - [`checker`]: what the history and the settled cluster must satisfy;
//! - [`campaign`]: the schedule of faults, settling, the final reads and the report.
//!
//! Run it with `shoal-chaos` (see `docs/chaos.md`).

pub mod campaign;
pub mod checker;
pub mod cluster;
pub mod compose;
pub mod delay;
pub mod history;
pub mod net;
pub mod proxy;
pub mod workload;
