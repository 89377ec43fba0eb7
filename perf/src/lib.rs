//! `lightpool-perf`: an NVMe/TCP initiator and load generator in the shape of
//! spdk_nvme_perf, with in-process block-device runs (`bdev`) and the transport's own
//! limit (`limit`) as yardsticks.
//!
//! - [`initiator`]: the userspace NVMe/TCP host (queue pairs, controller, discovery),
//!   the crate `lightpool-nvmf-host` (the remote block device runs it too).
//! - [`workload`]: access patterns and mixes; [`verify`]: block stamps and checks.
//! - [`engine`]: the pinned per-core load loop over any [`engine::IoQueue`].
//! - [`nvme`], [`bdev`], [`limit`]: the three kinds of queue and their runs;
//!   [`multipath`]: NVMe/TCP queues that follow a namespace's paths (`--multipath`).
//!   `rdma` (feature `rdma`): NVMe/RDMA targets, `trtype:rdma`.
//! - [`stats`], [`report`], [`plot`]: measurement and output; [`cli`]: the command line.
//! - which sockets to read comes from epoll: `lightpool_reactor::readiness`.

pub mod bdev;
pub mod cli;
pub mod engine;
pub use lightpool_nvmf_host as initiator;
pub mod limit;
pub mod multipath;
pub mod nvme;
pub mod plot;
#[cfg(feature = "rdma")]
pub mod rdma;
pub mod report;
pub mod stats;
pub mod verify;
pub mod workload;
