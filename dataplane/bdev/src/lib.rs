//! Block devices for the LightPool dataplane.
//!
//! A [`Bdev`] is shared by every reactor (it is `Send + Sync`); I/O goes through an
//! [`IoChannel`] that one queue pair opens on its own reactor and never hands to another
//! thread. A channel is submit-then-poll: [`IoChannel::submit`] queues a request and
//! returns at once, [`IoChannel::poll`] reaps what has finished. Nothing on that path takes
//! a lock or allocates once the channel is warm.
//!
//! A channel whose data lives in this process's memory may also serve an I/O in place,
//! completed at once: a read by reference to its own bytes ([`IoChannel::read_in_place`],
//! sent from there with no buffer and no copy) and a write copied straight in from the
//! caller's bytes ([`IoChannel::write_in_place`], the transport's receive buffer). The
//! caller asks first and submits when the channel declines: one path, whatever the
//! device. A device that reaches only some memory without copying (DMA) names it
//! ([`Bdev::dma_pool`]) so that request buffers come from there.
//!
//! This crate is the interface only: what the NVMe-oF core and every stacked device
//! (pools, volumes, RAID, the remote device of migration) depend on. Backends are
//! crates of their own: `lightpool-bdev-ram` (RAM), `lightpool-bdev-uring` (a file or
//! block device through io_uring), `lightpool-bdev-nvme-vfio` (an NVMe SSD driven from
//! userspace through VFIO), `lightpool-bdev-passthru` (a stacked pass-through that
//! counts I/O). Hot upgrade goes through [`Bdev::export`] and an [`Adopter`] per kind
//! of device (see the `persist` module): no list of backends lives here.
//!
//! With the `testing` feature, [`testing`] holds the checks every backend must pass.
//!
//! Buffers handed to channels are 4096-byte aligned (the target allocates its request
//! buffers that way); backends that open their device with `O_DIRECT` rely on it.

use std::os::fd::RawFd;

mod persist;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use persist::{Adopter, Adopters, Adoption, DeviceGraph, DeviceRecord, Export, PersistError};

/// What a block device tells the target about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BdevInfo {
    /// Human-readable name (path for files, "ram" for RAM devices).
    pub name: String,
    /// Logical block size in bytes: 512 or 4096.
    pub block_size: u32,
    /// Capacity in logical blocks.
    pub num_blocks: u64,
    /// Writes are refused (opened read-only).
    pub read_only: bool,
    /// The device has a volatile write cache that Flush drains.
    pub volatile_write_cache: bool,
    /// Deallocate (discard) does something; reads of deallocated blocks return zeroes.
    pub supports_deallocate: bool,
}

/// What a device that counts its I/O has served (see [`Bdev::io_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IoStats {
    pub reads: u64,
    pub writes: u64,
    /// Flush, Write Zeroes, Deallocate.
    pub other: u64,
    pub blocks_read: u64,
    pub blocks_written: u64,
}

impl IoStats {
    /// Counts `req`.
    pub fn count(&mut self, req: &IoRequest) {
        let n = u64::from(req.num_blocks);
        match req.op {
            IoOp::Read => {
                self.reads += 1;
                self.blocks_read += n;
            }
            IoOp::Write => {
                self.writes += 1;
                self.blocks_written += n;
            }
            _ => self.other += 1,
        }
    }

    /// The sum of two counts.
    pub fn plus(&self, o: &IoStats) -> IoStats {
        IoStats {
            reads: self.reads + o.reads,
            writes: self.writes + o.writes,
            other: self.other + o.other,
            blocks_read: self.blocks_read + o.blocks_read,
            blocks_written: self.blocks_written + o.blocks_written,
        }
    }
}

/// The operation of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Read `num_blocks` blocks at `offset_blocks` into the buffer.
    Read,
    /// Write the buffer to `num_blocks` blocks at `offset_blocks`.
    Write,
    /// Make every completed write durable.
    Flush,
    /// Write zeroes to the range (no buffer).
    WriteZeroes,
    /// Deallocate (discard) the range (no buffer).
    Deallocate,
}

/// One request. The buffer is a raw pointer because it lives in the queue pair's
/// preallocated request slab (later: registered DMA memory), not in the channel.
#[derive(Debug, Clone, Copy)]
pub struct IoRequest {
    pub op: IoOp,
    pub offset_blocks: u64,
    pub num_blocks: u32,
    /// Start of the data buffer for Read/Write; null for the others. 4096-byte aligned
    /// (`O_DIRECT` backends need at least the device's logical block size).
    pub buf: *mut u8,
    /// Length of the buffer in bytes: `num_blocks * block_size` for Read/Write, 0 otherwise.
    pub len: usize,
    /// Opaque to the channel; handed back with the completion.
    pub tag: u64,
}

impl IoRequest {
    /// A Read or Write of `num_blocks` blocks at `offset_blocks` into/from `buf`
    /// (`len` bytes).
    pub fn rw(
        op: IoOp,
        offset_blocks: u64,
        num_blocks: u32,
        buf: *mut u8,
        len: usize,
        tag: u64,
    ) -> Self {
        IoRequest {
            op,
            offset_blocks,
            num_blocks,
            buf,
            len,
            tag,
        }
    }

    /// A request without data (Flush, WriteZeroes, Deallocate).
    pub fn no_data(op: IoOp, offset_blocks: u64, num_blocks: u32, tag: u64) -> Self {
        IoRequest {
            op,
            offset_blocks,
            num_blocks,
            buf: std::ptr::null_mut(),
            len: 0,
            tag,
        }
    }
}

/// The byte range of a request after checking it against the device, or how it ends
/// at once. Shared by the backends so they refuse the same things the same way.
pub fn check_request(info: &BdevInfo, req: &IoRequest) -> Result<(u64, u64), IoStatus> {
    let writes = matches!(req.op, IoOp::Write | IoOp::WriteZeroes | IoOp::Deallocate);
    if writes && info.read_only {
        return Err(IoStatus::ReadOnly);
    }
    if req.op == IoOp::Flush {
        return Ok((0, 0));
    }
    let end = req.offset_blocks.checked_add(u64::from(req.num_blocks));
    match end {
        Some(end) if end <= info.num_blocks => {}
        _ => return Err(IoStatus::OutOfRange),
    }
    let bs = u64::from(info.block_size);
    let offset = req.offset_blocks * bs;
    let len = u64::from(req.num_blocks) * bs;
    if matches!(req.op, IoOp::Read | IoOp::Write) && (req.buf.is_null() || req.len as u64 != len) {
        return Err(IoStatus::Io(libc::EINVAL));
    }
    Ok((offset, len))
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoStatus {
    Success,
    /// The range lies (partly) beyond the device.
    OutOfRange,
    /// Write to a read-only device.
    ReadOnly,
    /// A thin-provisioned device has no free space left for this write (it needed
    /// space the device does not have; nothing else was harmed). NVMe: Capacity
    /// Exceeded.
    CapacityExceeded,
    /// The backend failed; the errno it saw.
    Io(i32),
}

/// Errors opening or using a block device.
#[derive(Debug, thiserror::Error)]
pub enum BdevError {
    #[error("{path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("I/O setup failed: {0}")]
    Setup(#[source] std::io::Error),
}

/// Bytes of a device's own memory lent by reference ([`IoChannel::read_in_place`]): the
/// caller sends them from where they are (a socket copies straight from them) instead of
/// reading them into a buffer first.
///
/// Valid for as long as the channel that returned it lives: a device keeps the memory
/// mapped while any of its channels is open, and a device stacked on another passes on
/// the other's reference, valid while its own channel (which holds the other's) lives.
#[derive(Debug, Clone, Copy)]
pub struct DataRef {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: a view of memory that the device behind the channel keeps mapped; it is read
// only through `as_slice`, whose contract bounds the access in time.
unsafe impl Send for DataRef {}

impl DataRef {
    /// # Safety
    /// `ptr..ptr+len` is mapped memory that stays mapped for as long as the channel
    /// returning this reference lives.
    pub unsafe fn new(ptr: std::ptr::NonNull<u8>, len: usize) -> DataRef {
        DataRef { ptr, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    ///
    /// # Safety
    /// The channel that returned this reference must outlive the slice. Other channels
    /// (other reactors, or a write on this one once the slice is no longer used) may
    /// change those bytes: as on a disk, concurrent I/O to the same blocks is the host's
    /// race, and the caller must only copy the bytes out (send them), never rely on them
    /// staying the same.
    pub unsafe fn as_slice<'a>(&self) -> &'a [u8] {
        // SAFETY: mapped for `len` bytes while the channel lives (constructor's
        // contract), which the caller guarantees for 'a.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

/// A block device shared by all reactors.
pub trait Bdev: Send + Sync {
    fn info(&self) -> &BdevInfo;
    /// What kind of device this is ("ram", "uring", "nvme-vfio", ...): the key of the
    /// [`Adopter`] that rebuilds it after a hot upgrade, and what listings show.
    fn kind(&self) -> &'static str;
    /// Memory the device reads and writes without copying, when not any page-aligned
    /// memory will do: a VFIO NVMe device's DMA pool, registered with its IOMMU (an RDMA
    /// device's registered pool, later). A target that takes its request buffers from
    /// it spares the device a bounce copy per request. By default, the first such pool
    /// of the devices this one is stacked on (a device that passes buffers down as they
    /// are); `None` when there is none. Control path only.
    fn dma_pool(&self) -> Option<std::sync::Arc<lightpool_dma::DmaPool>> {
        self.children().iter().find_map(|c| c.dma_pool())
    }
    /// The block devices this one is stacked on (a pool's members, a volume's pool),
    /// in the order [`Adopter::adopt`] gets them back. Empty for a device over hardware,
    /// a file or memory.
    fn children(&self) -> Vec<std::sync::Arc<dyn Bdev>> {
        Vec::new()
    }
    /// Hot upgrade, old process: what a successor needs to take this device over (its
    /// own state and descriptors; the devices it is stacked on export themselves).
    /// Called on a drained target when [`Bdev::export_at_pause`] says so, otherwise
    /// possibly while serving.
    fn export(&self) -> Result<Export, BdevError> {
        Err(BdevError::Invalid(format!(
            "{} has no hot-upgrade support",
            self.info().name
        )))
    }
    /// Whether [`Bdev::export`] describes state that changes while serving (a VFIO
    /// controller's queues), so it is taken only at pause time, on a drained target;
    /// otherwise a successor may adopt the device before the pause. A device stacked on
    /// one that exports at pause exports at pause too (the graph walk sees to it).
    fn export_at_pause(&self) -> bool {
        false
    }
    /// Hot upgrade, new process: the predecessor has let go; from now on the device is
    /// this process's alone (until then an adopted device must leave the hardware as
    /// the predecessor may take it back). Called once per device of the graph.
    fn adopted(&self) {}
    /// What the device has served, if it counts (listings and metrics show it).
    fn io_stats(&self) -> Option<IoStats> {
        None
    }
    /// Open an I/O channel for use on the calling thread only.
    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError>;
}

/// A per-reactor (per-queue-pair) path to a block device. Not `Send`: it stays on the
/// reactor that opened it.
pub trait IoChannel {
    /// Queue one request. Never fails for lack of room: the channel keeps a backlog
    /// (preallocated) and submits it as completions free slots.
    ///
    /// # Safety
    /// `req.buf..req.buf+req.len` must stay valid, and must not be read or written by
    /// anyone else, until the completion for `req.tag` has been returned by [`poll`].
    ///
    /// [`poll`]: IoChannel::poll
    unsafe fn submit(&mut self, req: IoRequest);
    /// A read served by reference, completed now: the device's own bytes for
    /// `num_blocks` blocks at `offset_blocks`, which the caller sends from where they
    /// are (no buffer, no copy, no completion to poll for). `None` when the device does
    /// not serve this read that way: its data is not in this process's memory, or not
    /// these blocks, or it would refuse the read (out of range); the caller then submits
    /// it, and the submitted request says how it ends.
    ///
    /// A device stacked on another passes the call on, translating the range, when its
    /// blocks lie in one piece of the other; RAM offers it; devices behind DMA do not.
    fn read_in_place(&mut self, _offset_blocks: u64, _num_blocks: u32) -> Option<DataRef> {
        None
    }
    /// A write copied straight onto the device from `data` (the transport's receive
    /// buffer, say) and completed now: `data` is `num_blocks` blocks for
    /// `offset_blocks`, and is only read during the call. `false` when the device does
    /// not take this write that way (as for [`IoChannel::read_in_place`]): nothing was
    /// written, and the caller puts the data in a request buffer and submits it.
    fn write_in_place(&mut self, _offset_blocks: u64, _num_blocks: u32, _data: &[u8]) -> bool {
        false
    }
    /// Hand every finished request to `done` (tag, status); returns how many.
    ///
    /// Call it every reactor iteration while the channel is in use: a poll with nothing
    /// to do makes no system call. A poller that submitted requests must not report
    /// itself idle before it has polled the channel again (submissions may only reach the
    /// device, and synchronous completions only be returned, at the next poll).
    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize;
    /// Requests submitted whose completion has not been returned yet.
    fn in_flight(&self) -> usize;
    /// A file descriptor that becomes readable when a completion is ready, for a reactor
    /// that sleeps in epoll when idle (register it level-triggered, readable). The
    /// channel resets it itself from `poll` once it has been idle for a while, so the
    /// owner must not read it, and must keep polling while it is registered, or a stale
    /// readiness keeps the reactor awake. `None` when completions are always synchronous
    /// (ready by the next `poll`).
    fn completion_fd(&self) -> Option<RawFd> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_constructors() {
        let r = IoRequest::no_data(IoOp::Flush, 1, 2, 3);
        assert!(r.buf.is_null());
        assert_eq!((r.offset_blocks, r.num_blocks, r.len, r.tag), (1, 2, 0, 3));
    }
}
