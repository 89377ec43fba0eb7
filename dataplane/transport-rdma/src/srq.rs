//! Receives: per queue pair (the default) or one shared receive queue (SRQ) per reactor
//! and RDMA device.
//!
//! Per-QP receives give every connection its own ring of `queue size` receive buffers
//! (64 bytes plus the in-capsule data size each), registered when it is accepted: the
//! registered receive memory grows with the number of queues and their depth. With
//! `[target] rdma_srq = true`, each reactor has one SRQ per device with a fixed number
//! of buffers ([`SRQ_RECEIVES`], fewer if the device allows fewer) that every queue
//! pair the reactor owns receives from; the memory is then per reactor, whatever the
//! number of queues. A queue pair made on an SRQ still completes its receives on its
//! own completion queue, so the connection that polls a receive completion is the one
//! the capsule came on (the completion's QP); the work request ID names the SRQ buffer,
//! which goes back to the SRQ once its capsule is consumed, also when its queue ends.
//! A burst beyond the SRQ's buffers is held back by the hosts' receiver-not-ready
//! retries (RNR NAK), not lost.
//!
//! docs/architecture.md (NVMe/RDMA) has the measurement that chose the default.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lightpool_rdma_sys::{MemoryRegion, ProtectionDomain, RdmaError, SharedReceiveQueue};

/// Receive buffers of one reactor's SRQ on one device (capped by the device's
/// `max_srq_wr`).
pub const SRQ_RECEIVES: u32 = 512;

/// Which SRQ: the protection domain's address and the reactor.
pub(crate) type SrqKey = (usize, usize);

static USE_SRQ: AtomicBool = AtomicBool::new(false);

/// Whether connections accepted from now on take their receives from their reactor's
/// SRQ (`[target] rdma_srq`); set once at startup.
pub fn set_shared_receive_queue(on: bool) {
    USE_SRQ.store(on, Ordering::Relaxed);
}

pub fn shared_receive_queue() -> bool {
    USE_SRQ.load(Ordering::Relaxed)
}

/// One reactor's SRQ on one device, with its receive buffers.
pub struct ReactorSrq {
    // Drop order: the SRQ (its posted receives) before the region, the region before
    // the memory.
    srq: SharedReceiveQueue,
    mr: MemoryRegion,
    /// The buffers' memory, written by the device: only ever read through `base`.
    _mem: Box<[u8]>,
    base: *mut u8,
    pub recv_size: usize,
    pub receives: usize,
}

// SAFETY: the buffers are written by the device and read by the one reactor that owns
// the SRQ's connections; the pointer is into `_mem`, which never moves.
unsafe impl Send for ReactorSrq {}
// SAFETY: as above.
unsafe impl Sync for ReactorSrq {}

impl ReactorSrq {
    /// An SRQ of `receives` buffers of `recv_size` bytes, every one posted.
    pub fn new(
        pd: &Arc<ProtectionDomain>,
        receives: u32,
        recv_size: usize,
    ) -> Result<ReactorSrq, RdmaError> {
        let srq = SharedReceiveQueue::new(pd, receives)?;
        let mut mem = vec![0u8; recv_size * receives as usize].into_boxed_slice();
        let base = mem.as_mut_ptr();
        // SAFETY: `mem` is a heap allocation kept (never moved or resized) as long as
        // the region (field order).
        let mr = unsafe { MemoryRegion::register(pd, base, mem.len())? };
        let s = ReactorSrq {
            srq,
            mr,
            _mem: mem,
            base,
            recv_size,
            receives: receives as usize,
        };
        for i in 0..s.receives {
            s.post(i, crate::conn::WR_RECV | i as u64)?;
        }
        Ok(s)
    }

    /// Registered bytes of its buffers.
    pub fn bytes(&self) -> usize {
        self.recv_size * self.receives
    }

    /// Posts buffer `i` again (its capsule consumed).
    pub fn post(&self, i: usize, wr_id: u64) -> Result<(), RdmaError> {
        debug_assert!(i < self.receives);
        // SAFETY: inside `_mem` (i < receives).
        let p = unsafe { self.base.add(i * self.recv_size) };
        self.srq
            .post_recv(wr_id, p, self.recv_size as u32, self.mr.lkey())
    }

    /// The first `len` bytes of buffer `i`, which holds a received capsule (not
    /// posted: the device does not write it until it is posted again).
    pub fn capsule(&self, i: usize, len: usize) -> &[u8] {
        assert!(i < self.receives && len <= self.recv_size);
        // SAFETY: inside `_mem`; the buffer is not posted, so nothing writes it.
        unsafe { std::slice::from_raw_parts(self.base.add(i * self.recv_size), len) }
    }

    pub fn as_srq(&self) -> &SharedReceiveQueue {
        &self.srq
    }
}
