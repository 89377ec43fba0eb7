//! One NVMe-oF queue (admin or I/O) as the target sees it, whatever the transport: the
//! preallocated request slab (tag = slab index), the one dispatch point, and the bdev
//! channels the queue's I/O goes through. A transport owns one of these per connection,
//! on one reactor, for the connection's whole life.
//!
//! Request lifecycle, driven by the transport:
//! `alloc` (capsule header arrived) -> `prepare` (what data moves, validated before any
//! buffer is used) -> the transport fills the buffer for host-to-controller data ->
//! `execute` -> completion appears in `next_done` (at once, or after `poll` reaps the
//! bdev) -> the transport sends data and response -> `free`.

pub mod admin;
mod auth;
pub mod fabrics;
pub mod io;
mod sgl;
mod status;

use sgl::{classify, classify_keyed};
pub(crate) use status::NAMESPACE_WRITE_PROTECTED;
use status::{bdev_status, compare_result};
pub(crate) mod record;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightpool_bdev::{DataRef, IoChannel, IoOp, IoRequest, IoStatus};
use lightpool_spec::nvme::{self, Cqe, Sqe};
use lightpool_spec::status::{generic, Status};

use crate::buf::{BufSlot, BufSource};
use crate::ctrlr::{Controller, QueueStats};
use crate::metrics::QueueMetrics;
use crate::region::{slot as rslot, QueueShm};
use crate::subsystem::Namespace;
use crate::target::Target;

/// Sizes a queue works with, taken from the target's options.
#[derive(Debug, Clone, Copy)]
pub struct QueueOptions {
    pub in_capsule: u32,
    pub max_transfer: u32,
    /// The fabric moves data by keyed SGL data blocks (NVMe/RDMA: the host's memory
    /// read and written by RDMA, named by key): those are the descriptors it takes
    /// besides in-capsule data, and reads land in the request's buffer (the memory the
    /// transport registered), never lent by reference from a device.
    pub keyed_sgl: bool,
}

impl QueueOptions {
    pub fn from_target(t: &Target) -> QueueOptions {
        QueueOptions {
            in_capsule: t.opts.in_capsule_data_size,
            max_transfer: t.opts.max_transfer_size,
            keyed_sgl: false,
        }
    }
}

/// The data a command moves, as its SGL and opcode say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Xfer {
    None,
    /// Host to controller: `len` bytes, in the capsule or fetched by the transport (R2T).
    H2C {
        len: u32,
        in_capsule: bool,
    },
    /// Controller to host: up to `len` bytes.
    C2H {
        len: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotState {
    Free,
    Allocated,
    Executing,
    /// An Asynchronous Event Request waiting for an event.
    Parked,
    /// Received while the queue was quiesced (hot upgrade): runs once it resumes.
    Held,
    Done,
}

/// One entry of the request slab.
pub struct Request<T> {
    pub sqe: Sqe,
    pub cqe: Cqe,
    pub xfer: Xfer,
    /// Bytes of controller-to-host data in the buffer once the request is done.
    pub c2h_len: u32,
    /// Controller-to-host data a device lent by reference (a read served in place, sent
    /// from the device's own memory) rather than in `buf`; `None` otherwise.
    pub(crate) c2h_ext: Option<DataRef>,
    /// Where `buf` and `aux` come from (the target's, when the queue was made).
    src: Arc<BufSource>,
    pub(crate) buf: BufSlot,
    /// A Compare's second buffer: the media's data.
    aux: BufSlot,
    pending: u16,
    pub(crate) state: SlotState,
    /// Transport-private per-request state (R2T progress, send position, ...).
    pub tr: T,
}

impl<T: Default> Request<T> {
    fn new(src: Arc<BufSource>) -> Self {
        Request {
            sqe: Sqe::default(),
            cqe: Cqe::default(),
            xfer: Xfer::None,
            c2h_len: 0,
            c2h_ext: None,
            src,
            buf: BufSlot::default(),
            aux: BufSlot::default(),
            pending: 0,
            state: SlotState::Free,
            tr: T::default(),
        }
    }
}

impl<T> Request<T> {
    /// The data buffer, at least `len` bytes: the one the slot has, else one from the
    /// target's buffer pool (see [`crate::buf`]), which the slot keeps while its queue
    /// is busy. Bytes not written for this request hold whatever an earlier one left
    /// there.
    #[inline]
    pub fn buf_mut(&mut self, len: usize) -> &mut [u8] {
        &mut self.buf.take(&self.src, len).as_mut_slice()[..len]
    }

    /// As [`Request::buf_mut`], in memory of the slot's own (see `BufSlot::take_own`).
    pub(crate) fn own_buf_mut(&mut self, len: usize) -> &mut [u8] {
        &mut self.buf.take_own(&self.src, len).as_mut_slice()[..len]
    }

    /// The first `len` bytes of the data buffer.
    pub fn buf(&mut self, len: usize) -> &[u8] {
        self.buf_mut(len)
    }

    /// How devices and fabrics reach the data buffer without copying it (IOVA now, RDMA
    /// keys later); the default (none) when the request has no buffer or one of the
    /// slot's own.
    pub fn buf_registration(&self) -> lightpool_dma::Registration {
        self.buf.get().map(|b| b.registration()).unwrap_or_default()
    }

    /// Controller-to-host data ready to send.
    pub fn c2h_data(&self) -> &[u8] {
        // A reference is exactly the read's data (`c2h_len` bytes).
        if let Some(d) = &self.c2h_ext {
            // SAFETY: the reference came from one of the queue's channels, which live as
            // long as the queue and so outlast this borrow of one of its slots; the
            // bytes are only sent (copied into the socket), and a concurrent write to
            // the same blocks from another queue is the host's race, as on a disk.
            return unsafe { d.as_slice() };
        }
        match self.buf.get() {
            Some(b) => &b.as_slice()[..self.c2h_len as usize],
            None => &[],
        }
    }

    fn complete(&mut self, status: Status) {
        self.cqe.cid = self.sqe.cid;
        self.cqe.status = status;
        self.state = SlotState::Done;
    }
}

impl<T> Drop for Request<T> {
    fn drop(&mut self) {
        self.buf.release_to(&self.src);
        self.aux.release_to(&self.src);
    }
}

/// Where a queue stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueState {
    /// No Connect yet.
    Connecting,
    Live,
    /// The host asked to disconnect this queue; close after the response goes out.
    Disconnecting,
    /// The controller failed (keep-alive expired, admin queue gone): close now.
    Failed,
}

/// Bits of [`NvmfQueue`]'s gate.
pub(crate) mod gate {
    /// Hot upgrade: commands are received but not started.
    pub const QUIESCED: u8 = 1 << 0;
    /// Connected to a host that must authenticate (DH-HMAC-CHAP) and has not yet.
    pub const UNAUTHENTICATED: u8 = 1 << 1;
}

/// Outcome of `execute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exec {
    /// The response is ready (it is also queued in `next_done`).
    Done,
    /// Waiting on a block device or an event; `poll` will finish it.
    Pending,
}

pub(crate) use crate::target::PRECONNECT_SLOTS;

/// How long a queue stays idle before its free slots give their buffers back: under
/// the reactor's default idle spin (200 µs), so they are back before it sleeps.
const IDLE_TRIM: Duration = Duration::from_micros(100);
/// How often a busy queue's free slots give theirs back (what a past burst took).
const BUSY_TRIM: Duration = Duration::from_millis(100);

/// Where a queue stands in giving buffers back.
#[derive(Default)]
struct Trim {
    idle_since: Option<Instant>,
    idle_trimmed: bool,
    busy_at: Option<Instant>,
}

/// A queue: see the module documentation.
pub struct NvmfQueue<T> {
    pub(crate) target: Arc<Target>,
    pub(crate) opts: QueueOptions,
    pub(crate) qid: u16,
    pub(crate) entries: u16,
    pub(crate) sqhd: u16,
    pub(crate) ctrlr: Option<Arc<Controller>>,
    pub(crate) state: QueueState,
    pub(crate) sq_flow_disabled: bool,
    pub(crate) slots: Vec<Request<T>>,
    pub(crate) free: Vec<u16>,
    done: VecDeque<u16>,
    pub(crate) aers: Vec<u16>,
    /// Namespaces by NSID - 1, cached from the subsystem's table (the I/O path never
    /// locks the subsystem) and taken again when its generation moves.
    pub(crate) namespaces: Vec<Option<Arc<Namespace>>>,
    /// The generation of the subsystem's namespace table `namespaces` was taken at.
    ns_gen: u64,
    channels: Vec<Option<Box<dyn IoChannel>>>,
    open_channels: Vec<usize>,
    /// Channels of namespaces removed (or moved to another device) that still run
    /// requests: polled until they have none, then closed, and the device let go.
    retiring: Vec<(Box<dyn IoChannel>, Arc<Namespace>)>,
    bdev_in_flight: usize,
    pub(crate) ka_deadline: Option<Instant>,
    pub(crate) stats: Arc<QueueStats>,
    /// Where the slots' buffers come from.
    bufs: Arc<BufSource>,
    /// When free slots give their buffers back (see [`crate::buf`]).
    trim: Trim,
    /// Why commands may not simply run ([`gate`] bits; zero on a live queue): the one
    /// check the dispatch makes for a quiesced or not yet authenticated queue.
    pub(crate) gate: u8,
    /// The queue's DH-HMAC-CHAP transaction, once the host started one.
    pub(crate) auth: Option<Box<crate::auth::Exchange>>,
    /// When the authentication under way (or awaited) runs out of time (see
    /// `queue::auth`); `None` when none is.
    pub(crate) auth_deadline: Option<Instant>,
    pub(crate) held: VecDeque<u16>,
    /// While [`NvmfQueue::execute_write_from`] runs: the write's data, still in the
    /// transport's receive buffer (start, length).
    pub(crate) direct_data: Option<(*const u8, usize)>,
    /// This queue's record in the state region (plain stores; see `region`).
    pub(crate) shm: Option<QueueShm>,
    /// The reactor that owns it.
    pub(crate) reactor: u16,
    /// Its share of the metrics endpoint's counters (see [`crate::metrics`]).
    metrics: QueueMetrics,
}

impl<T: Default> NvmfQueue<T> {
    /// A queue on reactor `reactor` (the one whose thread will own it; recorded in the
    /// state region so a successor places it there again).
    pub fn new(target: Arc<Target>, reactor: usize) -> Self {
        let opts = QueueOptions::from_target(&target);
        let bufs = target.buffers();
        let mut q = NvmfQueue {
            target,
            opts,
            qid: 0,
            entries: 0,
            sqhd: 0,
            ctrlr: None,
            state: QueueState::Connecting,
            sq_flow_disabled: false,
            slots: Vec::new(),
            free: Vec::new(),
            done: VecDeque::new(),
            aers: Vec::new(),
            namespaces: Vec::new(),
            ns_gen: 0,
            channels: Vec::new(),
            open_channels: Vec::new(),
            retiring: Vec::new(),
            bdev_in_flight: 0,
            ka_deadline: None,
            auth_deadline: None,
            stats: Arc::new(QueueStats::default()),
            bufs,
            trim: Trim::default(),
            gate: 0,
            auth: None,
            held: VecDeque::new(),
            direct_data: None,
            shm: None,
            reactor: u16::try_from(reactor).unwrap_or(u16::MAX),
            metrics: QueueMetrics::new(),
        };
        q.shm = record::new_queue_record(&q.target, q.reactor);
        q.grow_slots(PRECONNECT_SLOTS);
        q
    }

    /// For a fabric that moves data by keyed SGL data blocks (NVMe/RDMA): see
    /// [`QueueOptions::keyed_sgl`]. Set once, before the first command.
    pub fn use_keyed_sgl(&mut self) {
        self.opts.keyed_sgl = true;
    }

    /// The queue's record in the state region, if it has one.
    pub fn shm(&self) -> Option<&QueueShm> {
        self.shm.as_ref()
    }

    pub(crate) fn grow_slots(&mut self, n: usize) {
        while self.slots.len() < n {
            self.free.insert(0, self.slots.len() as u16);
            self.slots.push(Request::new(self.bufs.clone()));
        }
        self.metrics.grow(n);
        self.done.reserve(n.saturating_sub(self.done.capacity()));
    }
}

impl<T: Default> NvmfQueue<T> {
    pub fn qid(&self) -> u16 {
        self.qid
    }

    pub fn state(&self) -> QueueState {
        self.state
    }

    pub fn controller(&self) -> Option<&Arc<Controller>> {
        self.ctrlr.as_ref()
    }

    pub fn options(&self) -> QueueOptions {
        self.opts
    }

    /// Whether the host turned SQ flow control off at Connect (then a C2H data PDU may
    /// carry the completion and no response capsule is needed).
    pub fn sq_flow_disabled(&self) -> bool {
        self.sq_flow_disabled
    }

    /// Requests the block devices still own buffers of; the transport keeps polling
    /// until this is zero before it drops the queue.
    pub fn bdev_in_flight(&self) -> usize {
        self.bdev_in_flight
    }

    /// Take a slot for a newly arrived command. `None` when the host has more commands
    /// outstanding than the queue has entries.
    pub fn alloc(&mut self, sqe: &Sqe) -> Option<u16> {
        let slot = self.free.pop()?;
        let r = &mut self.slots[usize::from(slot)];
        r.sqe = *sqe;
        r.cqe = Cqe::default();
        r.xfer = Xfer::None;
        r.c2h_len = 0;
        r.c2h_ext = None;
        r.pending = 0;
        r.state = SlotState::Allocated;
        if self.entries > 0 {
            self.sqhd = (self.sqhd + 1) % self.entries;
        }
        if let Some(m) = &self.shm {
            m.set_slot(slot, rslot::ALLOCATED, sqe.cid);
            m.set_sqhd(self.sqhd);
        }
        Some(slot)
    }

    /// A request that is in use (not free), if `slot` names one: for tags that come from
    /// the network (an H2CData transfer tag), which must be checked, not trusted.
    pub fn try_req(&mut self, slot: u16) -> Option<&mut Request<T>> {
        self.slots
            .get_mut(usize::from(slot))
            .filter(|r| r.state != SlotState::Free)
    }

    pub fn req_ref(&self, slot: u16) -> &Request<T> {
        &self.slots[usize::from(slot)]
    }

    /// Controller-to-host data of a finished request.
    pub fn c2h_of(&self, slot: u16) -> &[u8] {
        self.slots[usize::from(slot)].c2h_data()
    }

    pub fn req(&mut self, slot: u16) -> &mut Request<T> {
        &mut self.slots[usize::from(slot)]
    }

    /// Return a slot whose response has been sent.
    pub fn free(&mut self, slot: u16) {
        let r = &mut self.slots[usize::from(slot)];
        debug_assert!(r.state != SlotState::Free, "slot {slot} freed twice");
        r.state = SlotState::Free;
        self.free.push(slot);
        if let Some(m) = &self.shm {
            m.set_slot_state(slot, rslot::FREE);
        }
    }

    /// Decide what data the command moves, from its opcode and SGL, and check it against
    /// the queue's limits before any buffer is touched. On error the request is already
    /// completed with the status the specification gives (the transport still has to
    /// consume any in-capsule data that follows).
    pub fn prepare(&mut self, slot: u16, incapsule_len: u32) -> Result<Xfer, Status> {
        let max_transfer = self.opts.max_transfer;
        let in_capsule_max = self.opts.in_capsule;
        let r = &mut self.slots[usize::from(slot)];
        let res = if self.opts.keyed_sgl {
            classify_keyed(&r.sqe, incapsule_len, in_capsule_max, max_transfer)
        } else {
            classify(&r.sqe, incapsule_len, in_capsule_max, max_transfer)
        };
        match res {
            Ok(x) => {
                r.xfer = x;
                Ok(x)
            }
            Err(st) => {
                r.xfer = Xfer::None;
                self.finish(slot, st);
                Err(st)
            }
        }
    }

    /// Complete a request with `status` now (used by transports for transport-level
    /// failures such as a data digest error).
    pub fn finish(&mut self, slot: u16, status: Status) {
        let sqhd = self.sqhd;
        let qid = self.qid;
        let r = &mut self.slots[usize::from(slot)];
        r.cqe.sqhd = sqhd;
        r.cqe.sqid = qid;
        r.complete(status);
        self.done.push_back(slot);
    }

    /// The next request whose response can be sent, in completion order.
    pub fn next_done(&mut self) -> Option<u16> {
        let slot = self.done.pop_front()?;
        self.metrics.complete(slot, &self.slots[usize::from(slot)]);
        Some(slot)
    }

    /// Run a Write whose data is `data` (in the transport's receive buffer, say): when
    /// the namespace's channel takes writes in place (RAM), the data goes straight from
    /// there to the device, with no copy into the request's buffer; otherwise it is
    /// copied into the buffer and submitted. `None` (nothing done) for another command
    /// or a quiesced queue: then the caller puts the data in the buffer and calls
    /// [`NvmfQueue::execute`].
    pub fn execute_write_from(&mut self, slot: u16, data: &[u8], now: Instant) -> Option<Exec> {
        let sqe = &self.slots[usize::from(slot)].sqe;
        if self.gate != 0 || self.qid == 0 || sqe.opcode != nvme::io_opcode::WRITE {
            return None;
        }
        self.direct_data = Some((data.as_ptr(), data.len()));
        let e = self.execute(slot, now);
        self.direct_data = None;
        Some(e)
    }

    /// Run a command whose host-to-controller data (if any) is in its buffer. While
    /// the queue is quiesced the command is held instead and runs on `resume`.
    pub fn execute(&mut self, slot: u16, now: Instant) -> Exec {
        self.metrics.clock(now);
        self.metrics.start(slot);
        if self.gate != 0 {
            if let Some(e) = self.gated(slot) {
                return e;
            }
        }
        self.slots[usize::from(slot)].state = SlotState::Executing;
        if let Some(m) = &self.shm {
            m.set_slot_state(slot, rslot::EXECUTING);
        }
        let sqe = self.slots[usize::from(slot)].sqe;
        let outcome = if sqe.opcode == nvme::admin_opcode::FABRICS {
            let o = self.exec_fabrics(slot, now);
            self.publish_record();
            o
        } else if self.ctrlr.is_none() {
            Err(Status::generic(generic::COMMAND_SEQUENCE_ERROR).with_dnr())
        } else if self.qid == 0 {
            let o = self.exec_admin(slot, now);
            self.publish_record();
            o
        } else {
            self.exec_io(slot)
        };
        match outcome {
            Ok(Exec::Pending) => Exec::Pending,
            Ok(Exec::Done) => {
                self.finish(slot, Status::SUCCESS);
                Exec::Done
            }
            Err(st) => {
                self.finish(slot, st);
                Exec::Done
            }
        }
    }

    /// Reap block-device completions, deliver async events, enforce keep-alive. Returns
    /// how much work it did.
    pub fn poll(&mut self, now: Instant) -> usize {
        self.metrics.clock(now);
        let mut work = 0;
        if self.bdev_in_flight > 0 {
            work += self.poll_bdevs();
        }
        self.trim_bufs(now);
        self.check_namespaces();
        if self.auth_deadline.is_some_and(|dl| now > dl) {
            self.auth_expired();
        }
        let Some(c) = &self.ctrlr else { return work };
        if c.is_failed() {
            self.state = QueueState::Failed;
            return work;
        }
        if self.qid == 0 {
            if let Some(dl) = self.ka_deadline {
                if now > dl {
                    tracing::warn!(cntlid = c.cntlid, host = %c.hostnqn, "keep-alive timeout expired: controller failed");
                    c.fail();
                    self.state = QueueState::Failed;
                    return work;
                }
            }
            if !self.aers.is_empty() && c.has_events() {
                work += self.deliver_events();
            }
        }
        work
    }

    /// Free slots give their pool buffers back once the queue has been idle for
    /// [`IDLE_TRIM`], and every [`BUSY_TRIM`] while it is busy (see [`crate::buf`]).
    #[inline]
    fn trim_bufs(&mut self, now: Instant) {
        let t = &mut self.trim;
        if self.free.len() + self.aers.len() == self.slots.len() {
            if t.idle_trimmed {
                return;
            }
            match t.idle_since {
                None => t.idle_since = Some(now),
                Some(since) if now.saturating_duration_since(since) >= IDLE_TRIM => {
                    t.idle_trimmed = true;
                    self.release_free_bufs();
                }
                Some(_) => {}
            }
        } else {
            t.idle_since = None;
            t.idle_trimmed = false;
            if t.busy_at.is_none_or(|at| now >= at) {
                t.busy_at = Some(now + BUSY_TRIM);
                self.release_free_bufs();
            }
        }
    }

    #[cold]
    fn release_free_bufs(&mut self) {
        for &slot in &self.free {
            let r = &mut self.slots[usize::from(slot)];
            r.buf.release_to(&self.bufs);
            r.aux.release_to(&self.bufs);
        }
    }

    fn deliver_events(&mut self) -> usize {
        let Some(c) = self.ctrlr.clone() else {
            return 0;
        };
        let mut n = 0;
        while let Some(&slot) = self.aers.last() {
            let Some(dw0) = c.take_event() else { break };
            self.aers.pop();
            self.slots[usize::from(slot)].cqe.dw0 = dw0;
            self.finish(slot, Status::SUCCESS);
            n += 1;
        }
        self.publish_aers();
        n
    }

    /// The controller's record, after an admin or fabrics command (control path).
    fn publish_record(&mut self) {
        if let Some(c) = &self.ctrlr {
            c.publish();
        }
    }

    fn publish_aers(&mut self) {
        if let Some(c) = &self.ctrlr {
            let slots = &self.slots;
            c.set_aer_cids(self.aers.iter().map(|&s| slots[usize::from(s)].sqe.cid));
            c.publish();
        }
    }

    pub(crate) fn park_aer(&mut self, slot: u16) -> Result<Exec, Status> {
        if self.aers.len() > usize::from(crate::queue::admin::AERL) {
            return Err(Status::command_specific(
                lightpool_spec::status::command_specific::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED,
            )
            .with_dnr());
        }
        self.slots[usize::from(slot)].state = SlotState::Parked;
        self.aers.push(slot);
        if let Some(m) = &self.shm {
            m.set_slot_state(slot, rslot::PARKED);
        }
        if let Some(c) = &self.ctrlr {
            let slots = &self.slots;
            c.set_aer_cids(self.aers.iter().map(|&s| slots[usize::from(s)].sqe.cid));
        }
        if self.ctrlr.as_ref().is_some_and(|c| c.has_events()) {
            self.deliver_events();
        }
        Ok(Exec::Pending)
    }

    pub(crate) fn reset_keep_alive(&mut self, now: Instant) {
        self.ka_deadline = self.ctrlr.as_ref().and_then(|c| {
            let ms = c.kato_ms();
            // The host is given the timeout plus a grace period for its own timer's slack,
            // as Linux nvmet and SPDK do.
            (ms != 0).then(|| {
                now + Duration::from_millis(u64::from(ms))
                    + Duration::from_millis(u64::from(ms) / 2 + 1000)
            })
        });
    }

    pub(crate) fn set_connected(
        &mut self,
        ctrlr: Arc<Controller>,
        qid: u16,
        entries: u16,
        now: Instant,
    ) {
        self.qid = qid;
        self.entries = entries;
        let (gen, table) = ctrlr.subsys.ns_table();
        self.namespaces = table.by_idx.clone();
        self.ns_gen = gen;
        self.channels = (0..self.namespaces.len()).map(|_| None).collect();
        ctrlr.register_stats(self.stats.clone());
        self.metrics.connect(
            &ctrlr.target.metrics,
            usize::from(self.reactor),
            &ctrlr.subsys.nqn,
            ctrlr.subsys.namespaces().iter().map(|n| n.nsid),
            ctrlr.cntlid,
            qid,
        );
        self.ctrlr = Some(ctrlr);
        self.state = QueueState::Live;
        self.grow_slots(usize::from(entries) + PRECONNECT_SLOTS);
        if qid == 0 {
            self.reset_keep_alive(now);
        }
        self.publish_queue_static();
    }

    /// The checksummed part of the queue's record and its flags (creation, Connect,
    /// Disconnect: never the I/O path).
    pub(crate) fn publish_queue_static(&self) {
        if let Some(m) = &self.shm {
            record::write_queue_static(m, self);
        }
    }

    pub(crate) fn set_disconnecting(&mut self) {
        self.state = QueueState::Disconnecting;
        self.publish_queue_static();
    }

    pub(crate) fn slot_pending(&self, slot: u16) -> u16 {
        self.slots[usize::from(slot)].pending
    }

    /// Submit one block-device operation for a request.
    pub(crate) fn submit_bdev(
        &mut self,
        slot: u16,
        ns_idx: usize,
        op: IoOp,
        lba: u64,
        nblocks: u32,
        use_aux: bool,
    ) -> Result<(), Status> {
        let ch = channel_of(
            &mut self.channels,
            &mut self.open_channels,
            &self.namespaces,
            ns_idx,
        )?;
        let block_shift = self.namespaces[ns_idx]
            .as_ref()
            .map_or(9, |n| n.block_shift);
        let r = &mut self.slots[usize::from(slot)];
        let len = if matches!(op, IoOp::Read | IoOp::Write) {
            (nblocks as usize) << block_shift
        } else {
            0
        };
        let buf = if len == 0 {
            std::ptr::null_mut()
        } else if use_aux {
            r.aux.take(&r.src, len).as_mut_slice().as_mut_ptr()
        } else {
            r.buf_mut(len).as_mut_ptr()
        };
        r.pending += 1;
        self.bdev_in_flight += 1;
        let req = IoRequest {
            op,
            offset_blocks: lba,
            num_blocks: nblocks,
            buf,
            len,
            tag: u64::from(slot),
        };
        // SAFETY: the buffer belongs to slot `slot`, which stays Executing (never freed,
        // never handed to the transport) until the channel returns this tag from poll();
        // the queue is not dropped while bdev_in_flight > 0 (transports wait for it).
        unsafe { ch.submit(req) };
        Ok(())
    }

    /// Whether the subsystem's namespaces changed since this queue took them: one
    /// atomic load (the I/O path's only cost of namespaces changing at run time).
    #[inline(always)]
    pub(crate) fn check_namespaces(&mut self) {
        if let Some(c) = &self.ctrlr {
            if c.subsys.ns_generation() != self.ns_gen {
                self.refresh_namespaces();
            }
        }
    }

    /// The subsystem's namespace table moved: take it, and let go of the channels of
    /// namespaces that are gone or now on another device (at once when idle, else once
    /// their requests have finished). Off the I/O path: once per change.
    #[cold]
    fn refresh_namespaces(&mut self) {
        let Some(c) = &self.ctrlr else { return };
        let (gen, table) = c.subsys.ns_table();
        for (idx, new) in table.by_idx.iter().enumerate() {
            let old = self.namespaces.get(idx).cloned().flatten();
            let same_device = match (&old, new) {
                (Some(a), Some(b)) => Arc::ptr_eq(&a.bdev, &b.bdev) && a.block_size == b.block_size,
                (None, None) => true,
                _ => false,
            };
            if !same_device {
                if let Some(ch) = self.channels.get_mut(idx).and_then(Option::take) {
                    self.open_channels.retain(|&i| i != idx);
                    if ch.in_flight() > 0 {
                        if let Some(ns) = old {
                            self.retiring.push((ch, ns));
                        }
                    }
                }
            }
        }
        self.namespaces = table.by_idx.clone();
        if self.channels.len() < self.namespaces.len() {
            self.channels.resize_with(self.namespaces.len(), || None);
        }
        self.ns_gen = gen;
    }

    fn poll_bdevs(&mut self) -> usize {
        let mut n = 0;
        let slots = &mut self.slots;
        let done = &mut self.done;
        let in_flight = &mut self.bdev_in_flight;
        let sqhd = self.sqhd;
        let qid = self.qid;
        let mut reap = |tag: u64, st: IoStatus| {
            *in_flight -= 1;
            let r = &mut slots[tag as usize];
            if st != IoStatus::Success && r.cqe.status.is_success() {
                r.cqe.status = bdev_status(st, r.sqe.opcode);
            }
            r.pending -= 1;
            if r.pending == 0 {
                let mut status = r.cqe.status;
                if status.is_success() && r.sqe.opcode == nvme::io_opcode::COMPARE {
                    status = compare_result(r);
                }
                r.cqe.sqhd = sqhd;
                r.cqe.sqid = qid;
                r.complete(status);
                done.push_back(tag as u16);
            }
        };
        for &idx in &self.open_channels {
            let Some(ch) = self.channels[idx].as_mut() else {
                continue;
            };
            n += ch.poll(&mut reap);
        }
        if !self.retiring.is_empty() {
            for (ch, _) in &mut self.retiring {
                n += ch.poll(&mut reap);
            }
            // The channel closes before its namespace (and maybe the device) goes.
            self.retiring.retain(|(ch, _)| ch.in_flight() > 0);
        }
        n
    }

    /// Stop starting commands (hot upgrade): new ones are held, what is running finishes.
    pub fn quiesce(&mut self) {
        self.gate |= gate::QUIESCED;
    }

    /// Whether nothing is running: no block-device I/O and no response waiting to be
    /// taken by the transport. Held commands and parked AERs do not count.
    pub fn is_drained(&self) -> bool {
        self.bdev_in_flight == 0 && self.done.is_empty()
    }

    /// Start the held commands and take new ones again.
    pub fn resume(&mut self, now: Instant) {
        self.gate &= !gate::QUIESCED;
        while let Some(slot) = self.held.pop_front() {
            self.execute(slot, now);
        }
    }

    /// Tear down: fail the controller if this is its admin queue, give back the I/O
    /// queue ID otherwise. The transport calls this once, when the connection ends.
    pub fn close(&mut self) {
        if let Some(c) = self.ctrlr.take() {
            self.note_unauthenticated_close(&c);
            if self.qid == 0 {
                c.fail();
                c.unregister();
            } else {
                c.release_io_queue(self.qid);
            }
        }
    }
}

/// The I/O channel of namespace `ns_idx` (which exists), opened on its first use. A
/// function of the fields it needs, so that a caller may hold a slot meanwhile.
#[inline(always)]
pub(crate) fn channel_of<'a>(
    channels: &'a mut [Option<Box<dyn IoChannel>>],
    open: &mut Vec<usize>,
    namespaces: &[Option<Arc<Namespace>>],
    ns_idx: usize,
) -> Result<&'a mut dyn IoChannel, Status> {
    let ch = &mut channels[ns_idx];
    if ch.is_none() {
        *ch = Some(open_channel(namespaces, ns_idx)?);
        open.push(ns_idx);
    }
    Ok(ch.as_deref_mut().expect("opened just above"))
}

#[cold]
fn open_channel(
    namespaces: &[Option<Arc<Namespace>>],
    ns_idx: usize,
) -> Result<Box<dyn IoChannel>, Status> {
    let ns = namespaces[ns_idx]
        .as_ref()
        .expect("caller checked the namespace exists");
    ns.bdev.open_channel().map_err(|e| {
        tracing::error!(nsid = ns.nsid, error = %e, "cannot open an I/O channel");
        Status::generic(generic::INTERNAL_ERROR)
    })
}
