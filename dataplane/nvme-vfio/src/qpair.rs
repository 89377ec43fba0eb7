//! One I/O submission/completion queue pair, polled by the thread that owns it.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightpool_dma::{DmaMapper, DmaMemory};
use lightpool_spec::nvme::{io_opcode, Sqe, CQE_SIZE, SQE_SIZE};
use lightpool_spec::status::Status;

use crate::ctrlr::{check_queue_state, MemState, ParkedQueue, QueueState};
use crate::prp::{self, PrpError, ENTRIES_PER_LIST_PAGE, PAGE_SIZE};
use crate::ring::{CqRing, SqRing};
use crate::{Controller, NvmeError};

/// One NVMe I/O command, before the queue gives it a CID and PRPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoCmd {
    pub opcode: u8,
    pub nsid: u32,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    /// IOVA and length of the data, IOVA-contiguous.
    pub data: Option<(u64, usize)>,
}

impl IoCmd {
    fn rw(opcode: u8, nsid: u32, slba: u64, nlb: u32, iova: u64, len: usize) -> IoCmd {
        IoCmd {
            opcode,
            nsid,
            cdw10: slba as u32,
            cdw11: (slba >> 32) as u32,
            cdw12: nlb.saturating_sub(1) & 0xFFFF,
            cdw13: 0,
            data: Some((iova, len)),
        }
    }

    /// Read `nlb` (1..=65536) blocks at `slba` into `len` bytes at `iova`.
    pub fn read(nsid: u32, slba: u64, nlb: u32, iova: u64, len: usize) -> IoCmd {
        IoCmd::rw(io_opcode::READ, nsid, slba, nlb, iova, len)
    }

    /// Write `nlb` (1..=65536) blocks at `slba` from `len` bytes at `iova`.
    pub fn write(nsid: u32, slba: u64, nlb: u32, iova: u64, len: usize) -> IoCmd {
        IoCmd::rw(io_opcode::WRITE, nsid, slba, nlb, iova, len)
    }

    pub fn flush(nsid: u32) -> IoCmd {
        IoCmd {
            opcode: io_opcode::FLUSH,
            nsid,
            cdw10: 0,
            cdw11: 0,
            cdw12: 0,
            cdw13: 0,
            data: None,
        }
    }

    /// Write Zeroes of `nlb` (1..=65536) blocks at `slba`.
    pub fn write_zeroes(nsid: u32, slba: u64, nlb: u32) -> IoCmd {
        IoCmd {
            data: None,
            ..IoCmd::rw(io_opcode::WRITE_ZEROES, nsid, slba, nlb, 0, 0)
        }
    }

    /// Dataset Management, Attribute Deallocate, over `nr` (1..=256) ranges whose
    /// 16-byte descriptors are at `iova`.
    pub fn deallocate(nsid: u32, nr: u32, iova: u64) -> IoCmd {
        IoCmd {
            opcode: io_opcode::DATASET_MANAGEMENT,
            nsid,
            cdw10: nr.saturating_sub(1) & 0xFF,
            cdw11: 1 << 2,
            cdw12: 0,
            cdw13: 0,
            data: Some((iova, nr as usize * 16)),
        }
    }
}

/// Why a command did not complete successfully.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CmdError {
    #[error("the controller completed the command with status {0}")]
    Status(Status),
    #[error("the command timed out and was aborted")]
    TimedOut,
    #[error("the controller was reset while the command was outstanding")]
    Reset,
}

/// Why a command could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the queue is full")]
    Full,
    #[error("the queue is gone (the controller failed)")]
    Dead,
    #[error(transparent)]
    Prp(#[from] PrpError),
}

/// What a hot upgrade needs of a live queue pair, readable from another thread: the
/// owning thread keeps the ring positions here with relaxed stores (no lock on the I/O
/// path); the exporting thread reads them after the owner has drained and stopped (the
/// message that says so orders the accesses).
pub(crate) struct QueueShadow {
    qid: u16,
    depth: u16,
    cq_off: usize,
    prp_off: usize,
    mem: MemState,
    /// A duplicate of the queue memory's descriptor.
    mem_fd: OwnedFd,
    sq_tail: AtomicU16,
    sq_head: AtomicU16,
    cq_head: AtomicU16,
    cq_phase: AtomicBool,
    in_flight: AtomicU32,
    /// The queue was lost to a reset or failure and is not created in the controller.
    gone: AtomicBool,
}

impl QueueShadow {
    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn export(&self) -> Result<(QueueState, OwnedFd), String> {
        if self.gone.load(Ordering::Relaxed) {
            return Err(format!("I/O queue {} is not usable", self.qid));
        }
        let fd = self
            .mem_fd
            .try_clone()
            .map_err(|e| format!("duplicating a queue memory descriptor: {e}"))?;
        Ok((
            QueueState {
                qid: self.qid,
                depth: self.depth,
                sq_tail: self.sq_tail.load(Ordering::Relaxed),
                sq_head: self.sq_head.load(Ordering::Relaxed),
                cq_head: self.cq_head.load(Ordering::Relaxed),
                cq_phase: self.cq_phase.load(Ordering::Relaxed),
                mem: self.mem.clone(),
                cq_off: self.cq_off,
                prp_off: self.prp_off,
            },
            fd,
        ))
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    ctx: u64,
    busy: bool,
    aborted: bool,
    since: Option<Instant>,
}

/// An I/O queue pair: SQ and CQ memory, one PRP list page per command slot, and the
/// slot table (the slot index is the CID). Not `Sync`; owned by one thread.
pub struct IoQueuePair {
    ctrl: Arc<Controller>,
    qid: u16,
    mem: DmaMemory,
    cq_off: usize,
    prp_off: usize,
    sq: SqRing,
    cq: CqRing,
    slots: Vec<Slot>,
    free: Vec<u16>,
    generation: u64,
    doorbell_due: bool,
    timeout: Duration,
    next_check: Instant,
    dead: bool,
    shadow: Arc<QueueShadow>,
}

impl std::fmt::Debug for IoQueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoQueuePair")
            .field("ctrl", &self.ctrl.addr())
            .field("qid", &self.qid)
            .field("depth", &self.sq.size())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl IoQueuePair {
    /// Creates an I/O queue pair on `ctrl` with the controller's queue depth, or takes
    /// over one that a predecessor process handed over (hot upgrade) and no thread has
    /// taken yet: then nothing is sent to the controller, the queue carries on with its
    /// ID, memory, tail, head and phase.
    pub fn new(ctrl: Arc<Controller>) -> Result<IoQueuePair, NvmeError> {
        if let Some(p) = ctrl.take_parked() {
            return Self::adopt(ctrl, p);
        }
        let depth = ctrl.info().io_queue_depth;
        let qid = ctrl.alloc_qid().ok_or_else(|| NvmeError::Unsupported {
            addr: ctrl.addr().to_string(),
            reason: format!(
                "all {} I/O queues the controller granted are in use",
                ctrl.info().io_queues
            ),
        })?;
        let sq_bytes = (usize::from(depth) * SQE_SIZE).next_multiple_of(PAGE_SIZE);
        let cq_bytes = (usize::from(depth) * CQE_SIZE).next_multiple_of(PAGE_SIZE);
        let slots = usize::from(depth) - 1;
        let mapper: Arc<dyn DmaMapper> = ctrl.container().clone();
        let mem = match DmaMemory::new(
            sq_bytes + cq_bytes + slots * PAGE_SIZE,
            &ctrl.options().hugepages,
            Some(mapper),
        ) {
            Ok(m) => m,
            Err(e) => {
                ctrl.release_qid(qid);
                return Err(e.into());
            }
        };
        let mut qp = match Self::assemble(
            ctrl.clone(),
            qid,
            mem,
            sq_bytes,
            sq_bytes + cq_bytes,
            SqRing::new(depth),
            CqRing::new(depth),
        ) {
            Ok(qp) => qp,
            Err(e) => {
                ctrl.release_qid(qid);
                return Err(e);
            }
        };
        if let Err(e) = qp.create() {
            qp.dead = true;
            qp.shadow.gone.store(true, Ordering::Relaxed);
            return Err(e);
        }
        Ok(qp)
    }

    fn adopt(ctrl: Arc<Controller>, p: ParkedQueue) -> Result<IoQueuePair, NvmeError> {
        let q = &p.state;
        let bad = |reason: String| NvmeError::Unsupported {
            addr: ctrl.addr().to_string(),
            reason,
        };
        check_queue_state(q).map_err(bad)?;
        let sq = SqRing::restore((q.depth, q.sq_tail, q.sq_head))
            .ok_or_else(|| bad("ring state out of range".into()))?;
        let cq = CqRing::restore(q.depth, q.cq_head, q.cq_phase)
            .ok_or_else(|| bad("ring state out of range".into()))?;
        tracing::info!(
            addr = %ctrl.addr(),
            qid = q.qid,
            sq_tail = q.sq_tail,
            cq_head = q.cq_head,
            phase = q.cq_phase,
            "hardware I/O queue pair taken over (not re-created)"
        );
        Self::assemble(ctrl, q.qid, p.mem, q.cq_off, q.prp_off, sq, cq)
    }

    fn assemble(
        ctrl: Arc<Controller>,
        qid: u16,
        mem: DmaMemory,
        cq_off: usize,
        prp_off: usize,
        sq: SqRing,
        cq: CqRing,
    ) -> Result<IoQueuePair, NvmeError> {
        let depth = sq.size();
        let slots = usize::from(depth) - 1;
        let unusable = |reason: String| NvmeError::Unsupported {
            addr: ctrl.addr().to_string(),
            reason,
        };
        let mem_state = MemState {
            len: mem.len(),
            iova: mem
                .iova()
                .ok_or_else(|| unusable("queue memory without an IOVA".into()))?,
            backing: mem.backing().clone(),
        };
        let mem_fd = mem
            .file()
            .ok_or_else(|| unusable("queue memory without a file".into()))?
            .try_clone_to_owned()
            .map_err(|e| unusable(format!("duplicating the queue memory's descriptor: {e}")))?;
        let (_, sq_tail, sq_head) = sq.state();
        let shadow = Arc::new(QueueShadow {
            qid,
            depth,
            cq_off,
            prp_off,
            mem: mem_state,
            mem_fd,
            sq_tail: AtomicU16::new(sq_tail),
            sq_head: AtomicU16::new(sq_head),
            cq_head: AtomicU16::new(cq.head()),
            cq_phase: AtomicBool::new(cq.phase()),
            in_flight: AtomicU32::new(0),
            gone: AtomicBool::new(false),
        });
        ctrl.register_shadow(&shadow);
        let timeout = ctrl.options().command_timeout;
        Ok(IoQueuePair {
            generation: ctrl.generation(),
            ctrl,
            qid,
            mem,
            cq_off,
            prp_off,
            sq,
            cq,
            slots: vec![Slot::default(); slots],
            free: (0..slots as u16).rev().collect(),
            doorbell_due: false,
            timeout,
            next_check: Instant::now(),
            dead: false,
            shadow,
        })
    }

    fn create(&mut self) -> Result<(), NvmeError> {
        let sq_iova = self.iova(0);
        let cq_iova = self.iova(self.cq_off);
        self.ctrl
            .create_io_queues(self.qid, self.sq.size(), sq_iova, cq_iova)
    }

    fn iova(&self, off: usize) -> u64 {
        self.mem
            .iova_at(off)
            .expect("queue memory is registered with the controller's container")
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }

    pub fn controller(&self) -> &Arc<Controller> {
        &self.ctrl
    }

    /// Commands queued and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Commands that can be outstanding at once (queue depth - 1).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Queues `cmd`; `ctx` comes back with its completion from [`poll`]. The doorbell
    /// is rung by the next [`poll`] or [`ring`].
    ///
    /// [`poll`]: IoQueuePair::poll
    /// [`ring`]: IoQueuePair::ring
    pub fn submit(&mut self, cmd: &IoCmd, ctx: u64) -> Result<(), SubmitError> {
        if self.dead {
            return Err(SubmitError::Dead);
        }
        if self.sq.is_full() {
            return Err(SubmitError::Full);
        }
        let Some(&cid) = self.free.last() else {
            return Err(SubmitError::Full);
        };
        let mut sqe = Sqe {
            opcode: cmd.opcode,
            cid,
            nsid: cmd.nsid,
            cdw10: cmd.cdw10,
            cdw11: cmd.cdw11,
            cdw12: cmd.cdw12,
            cdw13: cmd.cdw13,
            ..Sqe::default()
        };
        if let Some((iova, len)) = cmd.data {
            let list_off = self.prp_off + usize::from(cid) * PAGE_SIZE;
            let list_iova = self.iova(list_off);
            // SAFETY: slot `cid` is free, so its PRP list page (inside `mem`, 4096-byte
            // aligned) is read by no outstanding command; we are its only writer.
            let list = unsafe {
                std::slice::from_raw_parts_mut(
                    self.mem.as_ptr().add(list_off).cast::<u64>(),
                    ENTRIES_PER_LIST_PAGE,
                )
            };
            let p = prp::build(iova, len, list, list_iova)?;
            sqe.dptr[..8].copy_from_slice(&p.prp1.to_le_bytes());
            sqe.dptr[8..].copy_from_slice(&p.prp2.to_le_bytes());
        }
        self.free.pop();
        let at = self.sq.push().expect("checked not full above");
        // SAFETY: `at` < depth, so the entry lies inside the SQ part of `mem`; the
        // controller reads it only after the tail doorbell that covers it.
        unsafe {
            std::ptr::write_volatile(
                self.mem
                    .as_ptr()
                    .add(usize::from(at) * SQE_SIZE)
                    .cast::<[u8; SQE_SIZE]>(),
                sqe.to_bytes(),
            )
        };
        self.slots[usize::from(cid)] = Slot {
            ctx,
            busy: true,
            aborted: false,
            since: None,
        };
        self.doorbell_due = true;
        self.shadow
            .in_flight
            .store(self.in_flight() as u32, Ordering::Relaxed);
        Ok(())
    }

    /// Rings the SQ tail doorbell if commands were queued since the last ring.
    pub fn ring(&mut self) {
        if self.doorbell_due {
            // The SQEs must be in memory before the controller hears of them.
            std::sync::atomic::fence(Ordering::SeqCst);
            self.ctrl.ring_sq(self.qid, self.sq.tail());
            self.doorbell_due = false;
            self.shadow.sq_tail.store(self.sq.tail(), Ordering::Relaxed);
        }
    }

    /// Rings the doorbell, reaps completions (handing each `ctx` and result to `done`),
    /// and enforces timeouts. Returns how many commands completed.
    pub fn poll(&mut self, done: &mut dyn FnMut(u64, Result<u32, CmdError>)) -> usize {
        self.ring();
        if self.ctrl.generation() != self.generation {
            return self.recover(done);
        }
        let mut n = 0;
        let mut consumed = false;
        // SAFETY: the CQ part of `mem` holds `depth` entries and stays mapped.
        while let Some(c) = unsafe { self.cq.peek(self.mem.as_ptr().add(self.cq_off)) } {
            self.cq.advance();
            self.sq.set_head(c.sqhd);
            consumed = true;
            let Some(slot) = self.slots.get_mut(usize::from(c.cid)).filter(|s| s.busy) else {
                tracing::warn!(
                    qid = self.qid,
                    cid = c.cid,
                    "completion for a command not outstanding"
                );
                continue;
            };
            slot.busy = false;
            self.free.push(c.cid);
            let r = if c.status.is_success() {
                Ok(c.dw0)
            } else if slot.aborted {
                Err(CmdError::TimedOut)
            } else {
                Err(CmdError::Status(c.status))
            };
            done(slot.ctx, r);
            n += 1;
        }
        if consumed {
            self.ctrl.ring_cq(self.qid, self.cq.head());
            let sh = &self.shadow;
            sh.cq_head.store(self.cq.head(), Ordering::Relaxed);
            sh.cq_phase.store(self.cq.phase(), Ordering::Relaxed);
            sh.sq_head.store(self.sq.state().2, Ordering::Relaxed);
            sh.in_flight
                .store(self.in_flight() as u32, Ordering::Relaxed);
        }
        if self.in_flight() > 0 {
            n += self.check_timeouts(done);
        }
        n
    }

    /// Every so often: stamps new commands, aborts those past the timeout, and resets
    /// the controller for one that an abort did not end.
    fn check_timeouts(&mut self, done: &mut dyn FnMut(u64, Result<u32, CmdError>)) -> usize {
        let now = Instant::now();
        if now < self.next_check {
            return 0;
        }
        self.next_check =
            now + (self.timeout / 16).clamp(Duration::from_millis(1), Duration::from_secs(1));
        let mut reset = false;
        for (cid, s) in self.slots.iter_mut().enumerate() {
            if !s.busy {
                continue;
            }
            let Some(since) = s.since else {
                // Stamped at the first check after submission: the timeout is counted
                // from then, at most one check interval late.
                s.since = Some(now);
                continue;
            };
            if now.duration_since(since) < self.timeout {
                continue;
            }
            if s.aborted {
                reset = true;
                continue;
            }
            tracing::warn!(
                addr = %self.ctrl.addr(),
                qid = self.qid,
                cid,
                timeout_ms = self.timeout.as_millis() as u64,
                "NVMe command timed out; aborting it"
            );
            s.aborted = true;
            s.since = Some(now);
            if let Err(e) = self.ctrl.abort(self.qid, cid as u16) {
                tracing::warn!(error = %e, "Abort failed");
                reset = true;
            }
        }
        if reset {
            self.ctrl.reset(self.generation);
            return self.recover(done);
        }
        0
    }

    /// After a controller reset: fails every outstanding command and re-creates the
    /// queues with the same ID.
    fn recover(&mut self, done: &mut dyn FnMut(u64, Result<u32, CmdError>)) -> usize {
        let mut n = 0;
        for (cid, s) in self.slots.iter_mut().enumerate() {
            if s.busy {
                s.busy = false;
                self.free.push(cid as u16);
                done(s.ctx, Err(CmdError::Reset));
                n += 1;
            }
        }
        self.generation = self.ctrl.generation();
        self.sq.reset();
        self.cq.reset();
        self.doorbell_due = false;
        // SAFETY: the controller was reset, so it writes no completion into this queue
        // until it is created again below; the CQ lies inside `mem`.
        unsafe {
            std::ptr::write_bytes(
                self.mem.as_ptr().add(self.cq_off),
                0,
                usize::from(self.cq.size()) * CQE_SIZE,
            )
        };
        if self.ctrl.has_failed() {
            self.dead = true;
        } else if let Err(e) = self.create() {
            tracing::error!(qid = self.qid, error = %e, "could not re-create an I/O queue after a reset");
            self.dead = true;
        }
        let sh = &self.shadow;
        sh.sq_tail.store(0, Ordering::Relaxed);
        sh.sq_head.store(0, Ordering::Relaxed);
        sh.cq_head.store(0, Ordering::Relaxed);
        sh.cq_phase.store(true, Ordering::Relaxed);
        sh.in_flight.store(0, Ordering::Relaxed);
        sh.gone.store(self.dead, Ordering::Relaxed);
        n
    }
}

impl Drop for IoQueuePair {
    fn drop(&mut self) {
        self.shadow.gone.store(true, Ordering::Relaxed);
        // A controller still shared with a predecessor process keeps its queues.
        if self.ctrl.owns_device() && !self.dead && self.ctrl.generation() == self.generation {
            if let Err(e) = self.ctrl.delete_io_queues(self.qid) {
                tracing::warn!(qid = self.qid, error = %e, "deleting an I/O queue pair");
            }
        }
        self.ctrl.release_qid(self.qid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_fields() {
        let r = IoCmd::read(1, 0x1_0000_0002, 8, 0x1000, 4096);
        assert_eq!((r.opcode, r.cdw10, r.cdw11, r.cdw12), (0x02, 2, 1, 7));
        let w = IoCmd::write(1, 5, 65536, 0x1000, 1 << 25);
        assert_eq!((w.opcode, w.cdw12), (0x01, 0xFFFF));
        let z = IoCmd::write_zeroes(3, 9, 1);
        assert_eq!(
            (z.opcode, z.nsid, z.cdw10, z.cdw12, z.data),
            (0x08, 3, 9, 0, None)
        );
        let d = IoCmd::deallocate(1, 2, 0x2000);
        assert_eq!(
            (d.opcode, d.cdw10, d.cdw11, d.data),
            (0x09, 1, 4, Some((0x2000, 32)))
        );
        assert_eq!(IoCmd::flush(1).opcode, 0x00);
    }
}
