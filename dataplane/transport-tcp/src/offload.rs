//! Who did the offloadable work of this transport's connections, per reactor: the
//! framing's digests and placement (`lightpool_tcp_framing::offload`) and the steering
//! that put each flow on its reactor, with the packet engines' queue counters.
//!
//! Steering engines (each a `SteeringEngine`: [`KernelAccept`] here, the AF_XDP and
//! DPDK listeners in `xdp.rs` and `dpdk.rs`):
//! - `kernel`: kernel sockets. The kernel's RSS (or RPS) picks the CPU a flow's
//!   packets are received on; the listener's acceptor then hands each connection to a
//!   reactor in turn. A flow counts on the reactor it was handed to; no frame counts
//!   (the kernel has them, not us).
//! - `xdp`: the XDP program redirects the listener's port to the AF_XDP socket of the
//!   receive queue the NIC's RSS chose; reactor N owns queue N. Flows count on the
//!   reactor whose stack accepted them; frames and bytes are that queue's receives
//!   (every one of them came through the program's redirect), and the program's own
//!   per-CPU counters (steered, passed, no socket) are read from its BPF map.
//! - `dpdk`: the port's RSS spreads flows over one receive queue per reactor; flows and
//!   that queue's receives count as for `xdp`.
//!
//! Counting: each connection keeps plain `u64`s (its receiver's and send queue's
//! [`OffloadCounters`]) and publishes what it added into its reactor's [`Block`] at
//! most every [`PUBLISH_EVERY`] and when it closes; a block has one writer (its
//! reactor) that stores with relaxed loads and stores, as the queues' I/O counters do
//! (`lightpool_nvmf::metrics`). A scrape reads the blocks, never a reactor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lightpool_nvmf::{OffloadReport, OffloadRow, PacketEngineStats};
use lightpool_tcp_framing::offload::{
    Digest, DigestEngine, SteeredFrames, SteeringEngine, PLACEMENTS,
};
use lightpool_tcp_framing::{OffloadCounters, Placement};

/// How often a busy connection publishes its counts (a scrape sees them this late).
pub(crate) const PUBLISH_EVERY: Duration = Duration::from_millis(10);

/// A counter with one writer: a plain load and store.
#[derive(Default, Debug)]
struct Cell(AtomicU64);

impl Cell {
    #[inline]
    fn add(&self, n: u64) {
        if n != 0 {
            self.0.store(
                self.0.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        }
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One reactor's counts for the connections of one steering engine.
#[derive(Debug)]
pub struct Block {
    reactor: usize,
    steering: &'static str,
    digests: Cell,
    digest_bytes: Cell,
    placements: [Cell; PLACEMENTS],
    placed_bytes: [Cell; PLACEMENTS],
    flows: Cell,
}

impl Block {
    /// A flow was put on this block's reactor.
    pub(crate) fn flow(&self) {
        self.flows.add(1);
    }

    fn add(&self, d: &OffloadCounters) {
        self.digests.add(d.digests);
        self.digest_bytes.add(d.digest_bytes);
        for i in 0..PLACEMENTS {
            self.placements[i].add(d.placements[i]);
            self.placed_bytes[i].add(d.placed_bytes[i]);
        }
    }
}

/// One reactor's queue of a packet engine, its counters as last published.
#[derive(Debug)]
pub(crate) struct EngineSlot {
    reactor: usize,
    /// The steering engine that feeds the queue.
    steering: &'static str,
    stats: Mutex<PacketEngineStats>,
}

impl EngineSlot {
    #[cfg_attr(not(any(feature = "af_xdp", feature = "dpdk")), allow(dead_code))]
    pub(crate) fn set(&self, s: PacketEngineStats) {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }
}

/// Every block and engine slot of one transport.
#[derive(Debug, Default)]
pub struct Registry {
    blocks: Mutex<Vec<Arc<Block>>>,
    engines: Mutex<Vec<Arc<EngineSlot>>>,
}

impl Registry {
    /// The block of `reactor` for connections steered by `steering` (made on first
    /// use; called when a connection or queue is set up, not per PDU).
    pub(crate) fn block(&self, reactor: usize, steering: &'static str) -> Arc<Block> {
        let mut b = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(x) = b
            .iter()
            .find(|x| x.reactor == reactor && x.steering == steering)
        {
            return x.clone();
        }
        let x = Arc::new(Block {
            reactor,
            steering,
            digests: Cell::default(),
            digest_bytes: Cell::default(),
            placements: Default::default(),
            placed_bytes: Default::default(),
            flows: Cell::default(),
        });
        b.push(x.clone());
        x
    }

    /// A slot for one reactor's queue of a packet engine.
    #[cfg_attr(not(any(feature = "af_xdp", feature = "dpdk")), allow(dead_code))]
    pub(crate) fn engine_slot(&self, reactor: usize, steering: &'static str) -> Arc<EngineSlot> {
        let s = Arc::new(EngineSlot {
            reactor,
            steering,
            stats: Mutex::new(PacketEngineStats::default()),
        });
        self.engines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(s.clone());
        s
    }

    /// The counts now: digests and placement by the framing's engines, flows (and
    /// frames, for the packet engines) by steering engine, per reactor; and each packet
    /// engine queue's counters.
    pub fn report(&self) -> OffloadReport {
        let mut out = OffloadReport::default();
        let blocks = self
            .blocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let slots = self
            .engines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let engines: Vec<PacketEngineStats> = slots
            .iter()
            .map(|s| {
                let mut st = s.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
                st.reactor = s.reactor;
                st
            })
            .collect();
        // Digests and placement of every steering engine's connections, summed per
        // reactor (the framing does the same work whatever brought the bytes).
        let mut reactors: Vec<usize> = blocks.iter().map(|b| b.reactor).collect();
        reactors.sort_unstable();
        reactors.dedup();
        for r in reactors {
            let mine = || blocks.iter().filter(move |b| b.reactor == r);
            out.work.push(OffloadRow {
                work: "digest",
                engine: <Digest as DigestEngine>::NAME,
                reactor: r,
                operations: mine().map(|b| b.digests.get()).sum(),
                bytes: mine().map(|b| b.digest_bytes.get()).sum(),
            });
            for p in Placement::ALL {
                let ops: u64 = mine().map(|b| b.placements[p as usize].get()).sum();
                if ops == 0 && p == Placement::Device {
                    // No engine of this build places by device: no row that is always 0.
                    continue;
                }
                out.work.push(OffloadRow {
                    work: "placement",
                    engine: p.name(),
                    reactor: r,
                    operations: ops,
                    bytes: mine().map(|b| b.placed_bytes[p as usize].get()).sum(),
                });
            }
        }
        for b in &blocks {
            // Frames a packet engine's queue on this reactor received: all of them were
            // steered there (by the XDP program's redirect, by DPDK's RSS).
            let frames_bytes: u64 = slots
                .iter()
                .zip(&engines)
                .filter(|(s, _)| s.reactor == b.reactor && s.steering == b.steering)
                .map(|(_, e)| e.rx_bytes)
                .sum();
            out.work.push(OffloadRow {
                work: "steering",
                engine: b.steering,
                reactor: b.reactor,
                operations: b.flows.get(),
                bytes: frames_bytes,
            });
        }
        out.engines = engines;
        out
    }
}

/// Kernel sockets' steering: the kernel's RSS picks the CPU, the listener's acceptor
/// the reactor (round robin). It sees no frames of its own.
pub(crate) struct KernelAccept;

impl SteeringEngine for KernelAccept {
    const NAME: &'static str = "kernel";
    fn frames(&self) -> Option<SteeredFrames> {
        None
    }
}

/// A connection's link to its reactor's block: what it published last, and when next.
#[derive(Debug)]
pub(crate) struct Publisher {
    block: Arc<Block>,
    published: OffloadCounters,
    next: Option<Instant>,
}

impl Publisher {
    pub(crate) fn new(block: Arc<Block>) -> Publisher {
        Publisher {
            block,
            published: OffloadCounters::default(),
            next: None,
        }
    }

    /// Publish the connection's counts (its receiver's and send queue's) if it is
    /// time, or if `force` (the connection closes). Only the time check is inline.
    #[inline(always)]
    pub(crate) fn tick(
        &mut self,
        now: Instant,
        force: bool,
        rx: &OffloadCounters,
        tx: &OffloadCounters,
    ) {
        if force || self.next.is_none_or(|t| now >= t) {
            self.publish(now, rx, tx);
        }
    }

    #[cold]
    #[inline(never)]
    fn publish(&mut self, now: Instant, rx: &OffloadCounters, tx: &OffloadCounters) {
        self.next = Some(now + PUBLISH_EVERY);
        let mut c = *rx;
        c.merge(tx);
        self.block.add(&c.since(&self.published));
        self.published = c;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_counts_sum_per_reactor_and_engine() {
        let reg = Registry::default();
        let a = reg.block(0, KernelAccept::NAME);
        let b = reg.block(1, KernelAccept::NAME);
        let x = reg.block(1, "xdp");
        assert!(Arc::ptr_eq(&a, &reg.block(0, "kernel")));
        assert_eq!(KernelAccept::NAME, "kernel");
        assert_eq!(
            KernelAccept.frames(),
            None,
            "the kernel's accept sees no frames"
        );
        a.flow();
        b.flow();
        x.flow();
        x.flow();
        let t0 = Instant::now();
        let mut p = Publisher::new(a.clone());
        let mut c = OffloadCounters::default();
        c.digest(24);
        c.place(Placement::Recv, 8192);
        let none = OffloadCounters::default();
        p.tick(t0, false, &c, &none);
        c.place(Placement::Staged, 512);
        // Not yet time: nothing more published.
        p.tick(t0, false, &c, &none);
        let r = reg.report();
        let row = |work: &str, engine: &str, reactor: usize| {
            r.work
                .iter()
                .find(|w| w.work == work && w.engine == engine && w.reactor == reactor)
                .map(|w| (w.operations, w.bytes))
        };
        assert_eq!(row("digest", "software", 0), Some((1, 24)));
        assert_eq!(row("placement", "recv", 0), Some((1, 8192)));
        assert_eq!(row("placement", "staged_copy", 0), Some((0, 0)));
        assert_eq!(row("placement", "device", 0), None);
        assert_eq!(row("steering", "kernel", 0), Some((1, 0)));
        assert_eq!(row("steering", "kernel", 1), Some((1, 0)));
        assert_eq!(row("steering", "xdp", 1), Some((2, 0)));
        // Closing publishes the rest whatever the time.
        p.tick(t0, true, &c, &none);
        let r = reg.report();
        let staged = r
            .work
            .iter()
            .find(|w| w.work == "placement" && w.engine == "staged_copy" && w.reactor == 0)
            .expect("row");
        assert_eq!((staged.operations, staged.bytes), (1, 512));
    }

    #[test]
    fn engine_queue_bytes_count_as_steered_frames() {
        let reg = Registry::default();
        reg.block(2, "xdp").flow();
        reg.engine_slot(2, "xdp").set(PacketEngineStats {
            engine: "af_xdp",
            interface: "veth0".into(),
            rx_frames: 10,
            rx_bytes: 6000,
            ..Default::default()
        });
        let r = reg.report();
        let s = r
            .work
            .iter()
            .find(|w| w.work == "steering" && w.engine == "xdp")
            .expect("row");
        assert_eq!((s.reactor, s.operations, s.bytes), (2, 1, 6000));
        assert_eq!(r.engines.len(), 1);
        assert_eq!(r.engines[0].reactor, 2);
    }
}
