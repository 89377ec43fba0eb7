//! Block devices for the LightPool dataplane.
//!
//! A [`Bdev`] is shared by every reactor (it is `Send + Sync`); I/O goes through an
//! [`IoChannel`] that one queue pair opens on its own reactor and never hands to another
//! thread. A channel is submit-then-poll: [`IoChannel::submit`] queues a request and
//! returns at once, [`IoChannel::poll`] reaps what has finished. Nothing on that path takes
//! a lock or allocates once the channel is warm.

use std::os::fd::RawFd;

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
    /// Start of the data buffer for Read/Write; null for the others.
    pub buf: *mut u8,
    /// Length of the buffer in bytes: `num_blocks * block_size` for Read/Write, 0 otherwise.
    pub len: usize,
    /// Opaque to the channel; handed back with the completion.
    pub tag: u64,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoStatus {
    Success,
    /// The range lies (partly) beyond the device.
    OutOfRange,
    /// Write to a read-only device.
    ReadOnly,
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

/// A block device shared by all reactors.
pub trait Bdev: Send + Sync {
    fn info(&self) -> &BdevInfo;
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
    /// Hand every finished request to `done` (tag, status); returns how many.
    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize;
    /// Requests submitted whose completion has not been returned yet.
    fn in_flight(&self) -> usize;
    /// A file descriptor that becomes readable when a completion is ready, for a reactor
    /// that sleeps in epoll when idle. `None` when completions are always synchronous.
    fn completion_fd(&self) -> Option<RawFd> {
        None
    }
}
