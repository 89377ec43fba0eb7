//! The packet-engine seam and the userspace TCP stack that kernel-bypass engines share.
//!
//! A packet engine (AF_XDP here, DPDK beside it) gives each reactor one queue of
//! Ethernet frames. That queue is a [`smoltcp::phy::Device`]; what the transport needs
//! besides (a name for logs, the MAC, counters, a descriptor to sleep on) is
//! [`PacketEngine`]. Over any such queue, [`Stack`] runs smoltcp's TCP: one interface,
//! listeners with a backlog of listening sockets re-armed as they accept, and
//! connections ([`TcpConn`]) that are a [`lightpool_tcp_framing::Stream`], so the
//! NVMe/TCP connection code reads and writes them as it does kernel sockets.
//!
//! Everything here is single-threaded: a stack belongs to the reactor that owns its
//! queue, and its connections share it through an `Rc`.

mod conn;
mod learn;
mod stack;

pub use conn::TcpConn;
pub use learn::Learn;
pub use stack::{Stack, StackConfig};

use std::os::fd::RawFd;

/// Frames and bytes a queue moved, and what it could not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineCounters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames the queue dropped on receive (ring full, bad descriptor).
    pub rx_dropped: u64,
    /// Times the stack wanted to send and the queue had no room.
    pub tx_full: u64,
    /// Where the engine has them (AF_XDP's XDP_STATISTICS): receives dropped because
    /// the RX ring was full, or because the fill ring had no frame to receive into.
    pub rx_ring_full: u64,
    pub rx_fill_empty: u64,
    /// Descriptors the kernel refused on TX.
    pub tx_invalid: u64,
    /// TX kicks (a syscall each, in AF_XDP copy mode), and those after which frames
    /// were still waiting on the TX ring (the kernel sends a bounded batch per kick)
    /// or that the kernel failed (a frame dropped by the device).
    pub tx_kicks: u64,
    pub tx_kick_again: u64,
    pub tx_kick_errors: u64,
}

/// What the transport needs from a packet engine's per-reactor queue besides the
/// frames themselves (which it moves through `smoltcp::phy::Device`).
pub trait PacketEngine: smoltcp::phy::Device {
    /// A name for logs: the engine, the interface and the queue.
    fn name(&self) -> &str;
    /// The interface's MAC address: the stack answers with it.
    fn mac(&self) -> [u8; 6];
    /// Counters so far.
    fn counters(&self) -> EngineCounters;
    /// A descriptor that turns readable when frames arrive, where the engine has one
    /// (an AF_XDP socket does; a polled DPDK queue does not, and its reactor never
    /// sleeps while the queue is open).
    fn wake_fd(&self) -> Option<RawFd> {
        None
    }
    /// Push out frames the queue holds back for batching (a TX kick). Called after
    /// each poll of the stack.
    fn flush(&mut self) {}
}

/// smoltcp's loopback device as an engine, for tests and for trying the stack without
/// a network.
impl PacketEngine for smoltcp::phy::Loopback {
    fn name(&self) -> &str {
        "loopback"
    }
    fn mac(&self) -> [u8; 6] {
        [0x02, 0, 0, 0, 0, 1]
    }
    fn counters(&self) -> EngineCounters {
        EngineCounters::default()
    }
}
