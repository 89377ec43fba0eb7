//! The AF_XDP packet engine.
//!
//! An XDP program (bpf/steer.c, compiled by build.rs with clang for the BPF target)
//! sits on the interface and sends TCP segments for the NVMe/TCP listener's port to the
//! AF_XDP socket of the queue they arrived on; everything else, ARP and ICMP included,
//! goes on to the kernel, which keeps the interface's address. [`Steering`] loads and
//! attaches it (generic or native mode) and reads its counters; [`XskQueue`] is one
//! queue's AF_XDP socket in copy mode, a [`lightpool_netstack::PacketEngine`] the
//! userspace stack runs over.
//!
//! All of it is behind the feature `af_xdp`: without it the crate is empty and the
//! build needs neither clang nor the kernel headers.

#[cfg(feature = "af_xdp")]
mod program;
#[cfg(feature = "af_xdp")]
mod queue;

#[cfg(feature = "af_xdp")]
pub use program::{Mode, Steering, SteeringCounters};
#[cfg(feature = "af_xdp")]
pub use queue::{interface_ipv4, rx_queues, QueueConfig, XskQueue};
#[cfg(feature = "af_xdp")]
pub mod testing;
