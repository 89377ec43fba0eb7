//! One NVMe/RDMA queue pair: its RDMA resources and the command flow over them.
//!
//! Capsules arrive in receives posted on the connection's own queue pair (per-QP
//! receives, one buffer of 64 + in-capsule bytes per host submission queue entry);
//! host-to-controller data that is not in the capsule is fetched with an RDMA READ
//! into the request's buffer, controller-to-host data goes out with an RDMA WRITE from
//! it, and each response is a SEND (Send with Invalidate when the host's keyed SGL
//! asked for it) from a small response area. Request buffers are the target's buffer
//! pool, registered once per device ([`Device`]); the receive and response areas are
//! registered once per connection, when it is accepted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lightpool_nvmf::queue::QueueState;
use lightpool_nvmf::{NvmfQueue, Target, Xfer};
use lightpool_rdma_sys::ffi::{ibv_wc_status, ibv_wr_opcode};
use lightpool_rdma_sys::{
    CmId, CompChannel, CompletionQueue, DeviceLimits, MemoryRegion, ProtectionDomain,
    WorkCompletion,
};
use lightpool_spec::nvme::{Sqe, CQE_SIZE, SQE_SIZE};
use lightpool_spec::rdma::KeyedSgl;
use lightpool_spec::status::{generic, Status};

use crate::srq::ReactorSrq;
use crate::stall::{Outstanding, STALL_LIMIT};
use crate::warn_limit::WarnLimit;

/// One RDMA device the transport serves on, with one buffer pool of the target's
/// registered in it (once, when the first connection on it came).
pub struct Device {
    /// The pool's registration; `None` when the target has no pool (then no command
    /// that moves data outside the capsule can run: each gets a retryable error).
    pub pool_mr: Option<MemoryRegion>,
    pub pd: Arc<ProtectionDomain>,
    pub limits: DeviceLimits,
    /// Which pool (its address), and the pool itself, kept mapped as long as the MR.
    pub pool_id: usize,
    pub _pool: Option<Arc<lightpool_dma::DmaPool>>,
}

impl Device {
    /// The local key of `[addr, addr + len)` if it is registered memory.
    fn lkey_of(&self, addr: *const u8, len: usize) -> Option<u32> {
        self.pool_mr
            .as_ref()
            .filter(|mr| mr.contains(addr, len))
            .map(|mr| mr.lkey())
    }
}

/// Work request kinds, in the upper half of a work request ID (the lower half is the
/// receive index or the request slot).
pub(crate) const WR_RECV: u64 = 1 << 32;
const WR_SEND: u64 = 2 << 32;
const WR_READ: u64 = 3 << 32;
const WR_WRITE: u64 = 4 << 32;

/// Completions taken from the CQ per poll.
const POLL_BATCH: usize = 32;
/// Empty polls in a row before the CQ is armed for a wake-up: well under the
/// reactor's minimum idle loops before it sleeps (64), so it never sleeps unarmed.
const ARM_AFTER: u32 = 8;
/// How long a closing connection waits for its block devices before it is dropped
/// anyway (its queue pair is already in error: nothing reaches the host).
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Transport state of one request.
#[derive(Default)]
pub struct RdmaReq {
    /// The host's buffer: address and key of its keyed SGL data block.
    remote: (u64, u32),
    /// The key to invalidate with the response (Send with Invalidate), 0: none.
    invalidate: u32,
    invalidate_set: bool,
}

/// What is built for a connection on the listener's reactor, before it is accepted,
/// and handed to the reactor that will own it.
pub(crate) struct Setup {
    // Drop order: the identifier (and its QP) before the CQ, the CQ before its channel,
    // the QP before the memory it receives into.
    pub id: CmId,
    /// The reactor's shared receive queue the QP receives from; `None`: its own
    /// receives, in `ring`.
    pub srq: Option<Arc<ReactorSrq>>,
    pub cq: CompletionQueue,
    pub ch: CompChannel,
    pub ring_mr: MemoryRegion,
    pub ring: Box<[u8]>,
    pub dev: Arc<Device>,
    /// The transport's shared state; it keeps the identifier's event channel alive.
    pub(crate) shared: Arc<crate::Shared>,
    pub recv_size: usize,
    pub nrecv: usize,
    pub nrsp: usize,
    /// The queue ID of the connect request's private data: the Connect command must
    /// name the same.
    pub qid: u16,
    pub peer: String,
    pub local: String,
}

/// Sizes of a connection's rings, from the host's queue size.
pub struct RingSizes {
    pub recv_size: usize,
    pub nrecv: usize,
    pub nrsp: usize,
}

impl RingSizes {
    pub fn new(target: &Target, queue_size: u16) -> RingSizes {
        let nrecv = usize::from(queue_size);
        RingSizes {
            recv_size: SQE_SIZE + target.opts.in_capsule_data_size as usize,
            nrecv,
            // Slots are numbered up to the queue size plus the few a queue has before
            // Connect (its slab keeps them): a slot still waiting for its SEND while
            // the host sends the next command makes the queue take one of those.
            nrsp: nrecv + lightpool_nvmf::target::PRECONNECT_SLOTS,
        }
    }

    /// The connection's ring: its receives (unless it receives from a shared receive
    /// queue) and its responses.
    pub fn bytes(&self, srq: bool) -> usize {
        let recv = if srq { 0 } else { self.recv_size * self.nrecv };
        recv + CQE_SIZE * self.nrsp
    }
}

impl Setup {
    /// Posts every receive (before the connection is accepted).
    pub fn post_receives(&mut self) -> Result<(), lightpool_rdma_sys::RdmaError> {
        if self.srq.is_some() {
            return Ok(());
        }
        let lkey = self.ring_mr.lkey();
        for i in 0..self.nrecv {
            let p = self.ring[i * self.recv_size..].as_mut_ptr();
            self.id
                .post_recv(WR_RECV | i as u64, p, self.recv_size as u32, lkey)?;
        }
        Ok(())
    }

    /// Where the responses start in the ring.
    fn rsp_base(&self) -> usize {
        if self.srq.is_some() {
            0
        } else {
            self.recv_size * self.nrecv
        }
    }

    /// Receive `ri` again, its capsule consumed.
    fn repost(&mut self, ri: usize) -> Result<(), lightpool_rdma_sys::RdmaError> {
        if let Some(srq) = &self.srq {
            return srq.post(ri, WR_RECV | ri as u64);
        }
        let p = self.ring[ri * self.recv_size..].as_mut_ptr();
        self.id.post_recv(
            WR_RECV | ri as u64,
            p,
            self.recv_size as u32,
            self.ring_mr.lkey(),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Active,
    Closing { deadline: Option<Instant> },
    Closed,
}

/// One connection (queue pair) on the reactor that owns it.
pub struct Conn {
    s: Setup,
    q: NvmfQueue<RdmaReq>,
    /// Signaled sends and reads posted and not completed, and since when none
    /// completed (the bound on a host gone without a disconnect, [`crate::stall`]).
    outstanding: Outstanding,
    phase: Phase,
    armed: bool,
    empty_polls: u32,
    /// The queue is connected and its QID matched the connect request's.
    qid_checked: bool,
    /// Host data came in the capsule / by RDMA READ on this connected I/O queue (said
    /// once each, at debug level: which ways a host uses).
    seen_in_capsule: bool,
    seen_read: bool,
    /// Capsules (receive index, length) that arrived while every slot still waited for
    /// its response's SEND to complete: a host may send a command as soon as it has
    /// the response of another, before this side has reaped that SEND. They run, in
    /// order, as SENDs complete. Capacity: one per receive (never grows).
    deferred: std::collections::VecDeque<(usize, usize)>,
    /// Requests that found no registered buffer: one warning per interval.
    unregistered_warn: WarnLimit,
    wcs: Box<[WorkCompletion]>,
}

impl Conn {
    /// On the owning reactor (`reactor`): the queue is made here, since its device
    /// channels belong to this thread.
    pub(crate) fn new(s: Setup, target: Arc<Target>, reactor: usize) -> Conn {
        let mut q = NvmfQueue::new(target, reactor);
        q.use_keyed_sgl();
        let s_nrecv = s.nrecv;
        Conn {
            s,
            q,
            outstanding: Outstanding::new(Instant::now()),
            phase: Phase::Active,
            armed: false,
            empty_polls: 0,
            qid_checked: false,
            seen_in_capsule: false,
            seen_read: false,
            deferred: std::collections::VecDeque::with_capacity(s_nrecv),
            unregistered_warn: WarnLimit::default(),
            wcs: vec![WorkCompletion::default(); POLL_BATCH].into_boxed_slice(),
        }
    }

    pub fn queue(&self) -> &NvmfQueue<RdmaReq> {
        &self.q
    }

    pub fn peer(&self) -> &str {
        &self.s.peer
    }

    pub fn local(&self) -> &str {
        &self.s.local
    }

    /// The completion channel's descriptor (the reactor watches it while asleep).
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.s.ch.fd()
    }

    /// The identifier's address: how RDMA_CM events name the connection.
    pub fn key(&self) -> usize {
        self.s.id.as_ptr() as usize
    }

    pub(crate) fn shared(&self) -> &Arc<crate::Shared> {
        &self.s.shared
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Whether nothing runs and nothing is left to send (hot upgrade).
    pub fn is_drained(&self) -> bool {
        self.q.bdev_in_flight() == 0 && self.outstanding.count() == 0
    }

    /// Ends the connection: the queue pair is disconnected (the host sees it at once),
    /// what the block devices still run finishes, then the queue closes (its controller
    /// fails if it was the admin queue).
    pub fn close(&mut self, why: &str) {
        if self.phase == Phase::Active {
            tracing::debug!(peer = %self.s.peer, qid = self.q.qid(), why, "closing NVMe/RDMA connection");
            self.s.id.disconnect();
            self.phase = Phase::Closing { deadline: None };
        }
    }

    /// Hot upgrade: start no more commands.
    pub fn quiesce(&mut self) {
        self.q.quiesce();
    }

    pub fn resume(&mut self, now: Instant) {
        self.q.resume(now);
    }

    /// One pass: completions, device completions, responses. Returns the work done.
    pub fn poll(&mut self, now: Instant) -> usize {
        let mut work = 0;
        match self.phase {
            Phase::Active => {
                work += self.poll_cq(now);
                work += self.q.poll(now);
                work += self.respond(now);
                if self.phase == Phase::Active && self.outstanding.stalled(now) {
                    tracing::warn!(peer = %self.s.peer, qid = self.q.qid(), rdma = self.outstanding.count(), limit_s = STALL_LIMIT.as_secs(), "NVMe/RDMA work requests not completed in time (host gone without a disconnect?): ending the queue");
                    self.close("work requests not completed in time");
                }
                match self.q.state() {
                    QueueState::Live if !self.qid_checked => {
                        self.qid_checked = true;
                        if self.q.qid() != self.s.qid {
                            tracing::warn!(peer = %self.s.peer, connect = self.q.qid(), cm = self.s.qid, "Connect names another queue than the connect request");
                            self.close("Connect QID differs from the RDMA_CM request's");
                        }
                    }
                    QueueState::Failed => self.close("controller failed"),
                    QueueState::Disconnecting if self.outstanding.count() == 0 => {
                        self.close("host disconnected the queue")
                    }
                    _ => {}
                }
            }
            Phase::Closing { deadline } => {
                // Flushed work requests: counted, so that no request buffer goes back
                // to the pool while a READ may still land in it.
                while let Ok(n) = self.s.cq.poll(&mut self.wcs) {
                    if n == 0 {
                        break;
                    }
                    for i in 0..n {
                        let wc = self.wcs[i];
                        self.retire(&wc);
                    }
                    work += n;
                }
                work += self.q.poll(now);
                while let Some(slot) = self.q.next_done() {
                    self.q.free(slot);
                    work += 1;
                }
                let give_up = deadline.is_some_and(|d| now > d);
                if (self.q.bdev_in_flight() == 0 && self.outstanding.count() == 0) || give_up {
                    if give_up {
                        tracing::warn!(peer = %self.s.peer, device = self.q.bdev_in_flight(), rdma = self.outstanding.count(), "closing with device I/O or RDMA work requests still outstanding");
                    }
                    let suppressed = self.unregistered_warn.take_suppressed();
                    if suppressed > 0 {
                        tracing::warn!(peer = %self.s.peer, qid = self.q.qid(), suppressed, "more requests found no registered buffer than were logged");
                    }
                    tracing::info!(peer = %self.s.peer, qid = self.q.qid(), "NVMe/RDMA queue ended, its requests released");
                    self.q.close();
                    while let Some((ri, _)) = self.deferred.pop_front() {
                        self.release_shared(ri);
                    }
                    self.phase = Phase::Closed;
                    work += 1;
                } else if deadline.is_none() {
                    self.phase = Phase::Closing {
                        deadline: Some(now + CLOSE_LINGER),
                    };
                }
            }
            Phase::Closed => {}
        }
        work
    }

    /// When this connection must be polled again, however quiet: its work requests'
    /// stall deadline ([`crate::stall`]), while it is active and has some posted.
    pub fn stall_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Active => self.outstanding.deadline(),
            _ => None,
        }
    }

    /// Whether the connection must be polled even when its CQ is quiet.
    pub fn has_pending_work(&self) -> bool {
        self.q.bdev_in_flight() > 0 || matches!(self.phase, Phase::Closing { .. })
    }

    fn poll_cq(&mut self, now: Instant) -> usize {
        let mut work = 0;
        loop {
            let n = match self.s.cq.poll(&mut self.wcs) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(peer = %self.s.peer, error = %e, "cannot poll the completion queue");
                    self.close("completion queue failed");
                    return work + 1;
                }
            };
            if n == 0 {
                self.empty_polls += 1;
                if !self.armed && self.empty_polls >= ARM_AFTER {
                    // Arm, then look once more: a completion that came in between
                    // would otherwise wait for the next one.
                    if self.s.cq.arm().is_ok() {
                        self.armed = true;
                        continue;
                    }
                }
                return work;
            }
            self.empty_polls = 0;
            if self.armed {
                self.s.ch.drain();
                self.armed = false;
            }
            for i in 0..n {
                let wc = self.wcs[i];
                self.complete(&wc, now);
                if self.phase != Phase::Active {
                    // The rest of the batch only counts (the closing phase reaps the
                    // flushed ones that follow).
                    for j in i + 1..n {
                        let wc = self.wcs[j];
                        self.retire(&wc);
                    }
                    return work + 1;
                }
            }
            work += n;
            if n < POLL_BATCH {
                return work;
            }
        }
    }

    fn complete(&mut self, wc: &WorkCompletion, now: Instant) {
        let kind = wc.wr_id & !0xFFFF_FFFF;
        let index = (wc.wr_id & 0xFFFF_FFFF) as u16;
        if wc.status != ibv_wc_status::IBV_WC_SUCCESS {
            // A work request failed: the queue pair is in error (a host that went away,
            // an access outside the host's registration). The spec ends the queue.
            tracing::warn!(
                peer = %self.s.peer,
                qid = self.q.qid(),
                status = wc.status,
                kind = kind >> 32,
                "NVMe/RDMA work request failed: ending the queue"
            );
            self.retire(wc);
            self.close("queue pair in error");
            return;
        }
        match kind {
            WR_RECV => {
                let (ri, len) = (usize::from(index), wc.byte_len as usize);
                if self.deferred.is_empty() {
                    self.on_capsule(ri, len, now);
                } else {
                    self.defer(ri, len);
                }
            }
            WR_READ => {
                self.outstanding.completed(now);
                self.q.execute(index, now);
            }
            WR_SEND => {
                self.outstanding.completed(now);
                self.q.free(index);
                if let Some((ri, len)) = self.deferred.pop_front() {
                    self.on_capsule(ri, len, now);
                }
            }
            _ => {}
        }
    }

    /// A completion taken while the connection ends (flushed, failed, or after a
    /// failure in the same batch): a signaled READ or SEND is no longer outstanding.
    fn retire(&mut self, wc: &WorkCompletion) {
        let kind = wc.wr_id & !0xFFFF_FFFF;
        if kind == WR_READ || kind == WR_SEND {
            self.outstanding.retired();
        }
        // A receive that completed (a capsule that will not run, or an error): a shared
        // buffer goes back to the SRQ (a QP's own receives go with it; an SRQ's others
        // are not flushed by the QP's error).
        if kind == WR_RECV {
            self.release_shared((wc.wr_id & 0xFFFF_FFFF) as usize);
        }
    }

    /// Gives receive `ri` back to the shared receive queue (nothing for per-QP receives).
    fn release_shared(&mut self, ri: usize) {
        if self.s.srq.is_some() {
            if let Err(e) = self.s.repost(ri) {
                tracing::warn!(peer = %self.s.peer, error = %e, "cannot post a shared receive");
            }
        }
    }

    /// Queues a capsule behind those deferred before it; more than the receives posted
    /// cannot be (the host overran its queue).
    fn defer(&mut self, ri: usize, len: usize) {
        if self.deferred.len() >= self.s.nrecv {
            self.close("more commands outstanding than the queue has entries");
            return;
        }
        self.deferred.push_back((ri, len));
    }

    /// A command capsule arrived in receive `ri`, `len` bytes: it runs (or is deferred
    /// until a slot is free), and the receive is posted again once it is consumed.
    fn on_capsule(&mut self, ri: usize, len: usize, now: Instant) {
        if !self.run_capsule(ri, len, now) {
            return;
        }
        if self.phase != Phase::Active {
            // The queue ends: a QP's own receive would only be flushed, a shared one
            // goes back for the reactor's other queues.
            self.release_shared(ri);
            return;
        }
        if let Err(e) = self.s.repost(ri) {
            tracing::warn!(peer = %self.s.peer, error = %e, "cannot post a receive");
            self.close("cannot post a receive");
        }
    }

    /// The capsule's bytes: `len` of receive `ri`.
    fn capsule(&self, ri: usize, len: usize) -> &[u8] {
        match &self.s.srq {
            Some(srq) => srq.capsule(ri, len),
            None => &self.s.ring[ri * self.s.recv_size..][..len],
        }
    }

    /// Runs the capsule; `false` when it is deferred (its receive stays taken).
    fn run_capsule(&mut self, ri: usize, len: usize, now: Instant) -> bool {
        if len < SQE_SIZE {
            self.close("capsule shorter than a command");
            return true;
        }
        if len > self.s.recv_size {
            self.close("capsule larger than a receive");
            return true;
        }
        let sqe_bytes: &[u8; SQE_SIZE] = self
            .capsule(ri, SQE_SIZE)
            .try_into()
            .expect("a receive holds a whole command");
        let sqe = Sqe::from_bytes(sqe_bytes);
        let Some(slot) = self.q.alloc(&sqe) else {
            if self.outstanding.count() > 0 {
                // Slots wait for their SENDs: the command runs when one completes.
                self.deferred.push_front((ri, len));
                return false;
            }
            self.close("more commands outstanding than the queue has entries");
            return true;
        };
        if usize::from(slot) >= self.s.nrsp {
            self.close("queue larger than the connection's response area");
            return true;
        }
        let keyed = KeyedSgl::from_bytes(&sqe.dptr);
        {
            let tr = &mut self.q.req(slot).tr;
            tr.remote = (keyed.address, keyed.key);
            tr.invalidate_set = KeyedSgl::is_keyed(keyed.id) && keyed.invalidate();
            tr.invalidate = keyed.key;
        }
        let incapsule = (len - SQE_SIZE) as u32;
        match self.q.prepare(slot, incapsule) {
            // Completed with the status the spec gives; the response goes out below.
            Err(_) => {}
            Ok(Xfer::H2C {
                len,
                in_capsule: true,
            }) => {
                if !self.seen_in_capsule && self.q.qid() != 0 {
                    self.seen_in_capsule = true;
                    tracing::debug!(peer = %self.s.peer, qid = self.q.qid(), len, "first in-capsule data on the queue");
                }
                let data = match &self.s.srq {
                    Some(srq) => &srq.capsule(ri, SQE_SIZE + len as usize)[SQE_SIZE..],
                    None => {
                        let off = ri * self.s.recv_size;
                        &self.s.ring[off + SQE_SIZE..off + SQE_SIZE + len as usize]
                    }
                };
                if self.q.execute_write_from(slot, data, now).is_none() {
                    self.q.req(slot).buf_mut(len as usize).copy_from_slice(data);
                    self.q.execute(slot, now);
                }
            }
            Ok(Xfer::H2C { len, .. }) => {
                if !self.seen_read && self.q.qid() != 0 {
                    self.seen_read = true;
                    tracing::debug!(peer = %self.s.peer, qid = self.q.qid(), len, "first RDMA READ of host data on the queue");
                }
                self.fetch(slot, len as usize, now)
            }
            Ok(Xfer::C2H { len }) => {
                let p = self.q.req(slot).buf_mut(len as usize).as_ptr();
                if self.s.dev.lkey_of(p, len as usize).is_none() {
                    self.unregistered(slot, now);
                } else {
                    self.q.execute(slot, now);
                }
            }
            Ok(Xfer::None) => {
                self.q.execute(slot, now);
            }
        }
        // The capsule is consumed (executed, or its data copied).
        true
    }

    /// A request buffer outside the registered pool (the pool ran dry and the slot
    /// used memory of its own): the command ends with a status the host retries.
    /// Said once per queue per interval, with the count of those not said since the
    /// last line (`suppressed`; the rest when the queue ends).
    #[cold]
    fn unregistered(&mut self, slot: u16, now: Instant) {
        if let Some(suppressed) = self.unregistered_warn.hit(now) {
            tracing::warn!(peer = %self.s.peer, qid = self.q.qid(), suppressed, "no registered buffer for a request: the host retries it");
        }
        self.q
            .finish(slot, Status::generic(generic::COMMAND_INTERRUPTED));
    }

    /// Host-to-controller data in the host's memory: RDMA READ it into the request's
    /// buffer; the command runs when the read completes.
    fn fetch(&mut self, slot: u16, len: usize, now: Instant) {
        let r = self.q.req(slot);
        let remote = r.tr.remote;
        let p = r.buf_mut(len).as_mut_ptr();
        let Some(lkey) = self.s.dev.lkey_of(p, len) else {
            self.unregistered(slot, now);
            return;
        };
        match self.s.id.post_send(
            WR_READ | u64::from(slot),
            ibv_wr_opcode::IBV_WR_RDMA_READ,
            p,
            len as u32,
            lkey,
            remote,
            0,
            true,
        ) {
            Ok(()) => self.outstanding.posted(now),
            Err(e) => {
                tracing::warn!(peer = %self.s.peer, error = %e, "cannot post an RDMA READ");
                self.close("cannot post an RDMA READ");
            }
        }
    }

    /// Sends the responses of finished requests, each after its data (RDMA WRITE).
    fn respond(&mut self, now: Instant) -> usize {
        let mut work = 0;
        while let Some(slot) = self.q.next_done() {
            work += 1;
            if let Err(e) = self.send_response(slot, now) {
                tracing::warn!(peer = %self.s.peer, error = %e, "cannot post a response");
                self.close("cannot post a response");
                return work;
            }
        }
        work
    }

    fn send_response(
        &mut self,
        slot: u16,
        now: Instant,
    ) -> Result<(), lightpool_rdma_sys::RdmaError> {
        let r = self.q.req_ref(slot);
        let (remote, invalidate) = (r.tr.remote, r.tr.invalidate_set.then_some(r.tr.invalidate));
        if let Xfer::C2H { len } = r.xfer {
            if r.cqe.status == Status::SUCCESS && r.c2h_len > 0 {
                let data = r.c2h_data();
                let n = data.len().min(len as usize);
                // Checked before the command ran (the buffer is the same).
                if let Some(lkey) = self.s.dev.lkey_of(data.as_ptr(), n) {
                    // Unsignaled: the SEND after it completes only once it has.
                    self.s.id.post_send(
                        WR_WRITE | u64::from(slot),
                        ibv_wr_opcode::IBV_WR_RDMA_WRITE,
                        data.as_ptr(),
                        n as u32,
                        lkey,
                        remote,
                        0,
                        false,
                    )?;
                }
            }
        }
        let cqe = r.cqe.to_bytes();
        let off = self.s.rsp_base() + CQE_SIZE * usize::from(slot);
        self.s.ring[off..off + CQE_SIZE].copy_from_slice(&cqe);
        let (op, key) = match invalidate {
            Some(k) => (ibv_wr_opcode::IBV_WR_SEND_WITH_INV, k),
            None => (ibv_wr_opcode::IBV_WR_SEND, 0),
        };
        self.s.id.post_send(
            WR_SEND | u64::from(slot),
            op,
            self.s.ring[off..].as_ptr(),
            CQE_SIZE as u32,
            self.s.ring_mr.lkey(),
            (0, 0),
            key,
            true,
        )?;
        self.outstanding.posted(now);
        Ok(())
    }
}
