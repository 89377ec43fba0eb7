//! DMA memory for the LightPool dataplane.
//!
//! Devices that the dataplane drives itself (NVMe over VFIO) read and write memory by
//! I/O virtual address (IOVA): the memory must be pinned and entered in the device's
//! IOMMU domain. This crate provides that memory:
//!
//! - [`DmaMemory`]: one mapping, from a hugetlbfs file (2 MiB or 1 GiB pages, found in
//!   /proc/mounts) or, when there are no hugepages, from ordinary anonymous memory;
//!   registered with a [`DmaMapper`] (a VFIO container) when one is given.
//! - [`DmaPool`]: fixed-size buffers carved out of one [`DmaMemory`], shared by every
//!   reactor through per-thread caches, so that taking and returning a buffer on the
//!   I/O path touches the shared free list only once per batch.
//!
//! Without hugepages, or without a mapper, the same pool works for the socket and
//! io_uring paths (they need page-aligned memory, not IOVAs): the NVMe-oF target takes
//! its request buffers from such a pool when no device offers one. The first device
//! pool that falls back to ordinary memory says so once, with the reason, at start-up.
//!
//! A buffer knows its [`Registration`] (IOVA today; RDMA keys later), so whoever
//! hands it to a device or a fabric needs no lookup.

mod hugetlbfs;
mod memory;
mod pool;

pub use hugetlbfs::{find_hugetlbfs, parse_mounts, HugetlbfsMount};
pub use memory::{Backing, DmaMemory, HugePages};
pub use pool::{DmaBuf, DmaPool, PoolOptions, Registration};

/// Makes memory reachable by devices: for VFIO, an entry in the container's IOMMU
/// domain (`VFIO_IOMMU_MAP_DMA`, which also pins the pages).
pub trait DmaMapper: Send + Sync {
    /// Maps `len` bytes at virtual address `vaddr` (both multiples of 4096) and returns
    /// the IOVA that devices use for `vaddr`; the range is IOVA-contiguous.
    fn map(&self, vaddr: usize, len: usize) -> Result<u64, std::io::Error>;
    /// Removes a mapping made by [`DmaMapper::map`].
    fn unmap(&self, iova: u64, len: usize) -> Result<(), std::io::Error>;
}

/// Errors setting up DMA memory.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    #[error("could not map {len} bytes of memory: {source}")]
    Map {
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("could not register {len} bytes of DMA memory with the IOMMU: {source}")]
    Register {
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}
