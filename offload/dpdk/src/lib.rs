//! The DPDK packet engine (with the `dpdk` feature; without it the crate is empty and
//! a build needs no DPDK).
//!
//! - [`Eal`]: the Environment Abstraction Layer, started once per process from an
//!   argument list ([`EalConfig`] makes one: `--in-memory --no-pci`, or `--no-huge -m 512`
//!   when the machine has too few free hugepages, `--vdev` for virtual devices, and
//!   `--lcores` putting EAL's main lcore on the reactors' cores).
//! - [`register_thread`]: reactor threads are not EAL lcores; each registers itself
//!   (`rte_thread_register`) so that the mempool's per-lcore cache serves it.
//! - [`Mempool`]: packet buffers (mbufs).
//! - [`Port`]: an ethdev with one RX/TX queue pair per reactor (RSS where the device
//!   has it), start/stop, link state, MAC, statistics.
//! - [`Queue`]: one queue pair, owned by one reactor; it implements
//!   [`smoltcp::phy::Device`] (an RX token is the received mbuf, freed once consumed;
//!   a TX token fills a fresh mbuf in place, sent with the next burst), and offers
//!   raw bursts of [`Mbuf`]s for engines that do not need a TCP stack.
//!
//! Errors are [`DpdkError`]s that say what to change; nothing here panics on a DPDK
//! failure.

#[cfg(feature = "dpdk")]
mod eal;
#[cfg(feature = "dpdk")]
mod error;
#[cfg(feature = "dpdk")]
mod mbuf;
#[cfg(feature = "dpdk")]
mod port;
#[cfg(feature = "dpdk")]
mod queue;

#[cfg(feature = "dpdk")]
pub use eal::{current_affinity, register_thread, Eal, EalConfig, Hugepages, ThreadRegistration};
#[cfg(feature = "dpdk")]
pub use error::DpdkError;
#[cfg(feature = "dpdk")]
pub use mbuf::{Mbuf, Mempool};
#[cfg(feature = "dpdk")]
pub use port::{Link, Port, PortConfig, PortStats};
#[cfg(feature = "dpdk")]
pub use queue::{Queue, QueueStats, RxToken, TxToken};
