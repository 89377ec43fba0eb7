//! The I/O path of a volume: one channel per queue pair, on its reactor, over a channel
//! of its own to the pool device. No lock, no allocation once warm, no blocking call.
//!
//! A request is admitted through the volume's gate (see `gate`), split at cluster
//! boundaries into pieces, and each piece goes where the map sends it:
//! - a mapped cluster: one request to the pool device, same buffer (the common case);
//! - nothing mapped, reading: zeroes, or the snapshot's cluster for a clone;
//! - nothing mapped, writing: a new cluster. Its entry is claimed (`BUSY`), a cluster
//!   taken from the shared bitmap, and then either
//!   - fresh (no snapshot data to keep): the data is written and, at the same time, the
//!     map page naming the cluster (`PENDING` until durable): free clusters read as
//!     zeroes, so whichever of the two lands first, a crash leaves nothing wrong;
//!   - copy on write: the snapshot's cluster is read, the new data laid over it, the
//!     whole cluster written (and flushed, with a volatile cache) before the map page;
//!
//!   The write is acknowledged only when the map page is durable.
//! - Write Zeroes or Deallocate of a whole cluster unmaps it (map page first), then
//!   zeroes the freed cluster (and flushes, with a volatile cache) before it can be
//!   reused; of part of a cluster, zeroes those blocks.
//!
//! Writes to an entry another request is changing wait for it (re-planned at each
//! poll); reads use the entry's value (old while `BUSY`, new while `PENDING`), which is
//! right for a read racing an unacknowledged write. Map pages are written by whichever
//! waiter holds the page's token (see `meta`).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use lightpool_bdev::{
    check_request, BdevError, BdevInfo, DataRef, IoChannel, IoOp, IoRequest, IoStatus,
};

use crate::alloc;
use crate::ctlio::Buf;
use crate::format::{BUSY, MAP_ENTRIES, PAGE, PENDING, VALUE_MASK, ZERO};
use crate::gate::ChanReg;
use crate::log;
use crate::meta::{self, Turn};
use crate::pool::Pool;
use crate::volume::VolShared;

/// Cluster-sized copy buffers a channel keeps at most (more copies wait for one).
const MAX_COW: usize = 4;
/// "No request" (metadata writes belong to no request).
const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Free,
    /// The piece's own request to the pool device.
    Base,
    /// Waiting for an entry another request is changing; planned again.
    Wait,
    /// A new zeroed cluster: its data write and its map page in flight.
    Fresh,
    /// Copy on write: waiting for a copy buffer,
    CowBuf,
    /// reading the snapshot's cluster,
    CowRead,
    /// writing the merged cluster,
    CowWrite,
    /// flushing it (volatile cache),
    CowFlush,
    /// its map page becoming durable.
    MdWait,
    /// Unmapping a whole cluster: map page first,
    UnmapMd,
    /// then zeroing the freed cluster,
    UnmapZero,
    /// then flushing that (volatile cache) before it is reused.
    UnmapFlush,
    /// A metadata page write done for everyone waiting on that page.
    MdWrite,
    MdFlush,
}

#[derive(Clone, Copy)]
struct Op {
    st: St,
    req: u32,
    io: IoOp,
    slot: u32,
    idx: u32,
    /// Byte offset of the piece in its cluster, and its length.
    off: u32,
    len: u32,
    buf: *mut u8,
    /// The entry before this op claimed it.
    old: u32,
    /// The new cluster (or, unmapping, the freed one; 0 for none).
    cluster: u32,
    /// Copy source; unmapping: the entry's new value.
    src: u32,
    page: u32,
    gen: u64,
    /// Copy or metadata buffer index.
    aux: u32,
    data_done: bool,
    md_done: bool,
    err: IoStatus,
    turn: Turn,
}

impl Op {
    const FREE: Op = Op {
        st: St::Free,
        req: NONE,
        io: IoOp::Read,
        slot: 0,
        idx: 0,
        off: 0,
        len: 0,
        buf: std::ptr::null_mut(),
        old: 0,
        cluster: 0,
        src: 0,
        page: 0,
        gen: 0,
        aux: 0,
        data_done: false,
        md_done: false,
        err: IoStatus::Success,
        turn: Turn { seq: 0, snap: 0 },
    };
}

struct Req {
    tag: u64,
    pending: u32,
    status: IoStatus,
}

/// A volume's channel.
pub(crate) struct VolChannel {
    pool: Arc<Pool>,
    vol: Arc<VolShared>,
    reg: Arc<ChanReg>,
    st: State,
}

/// Everything a channel changes (apart from the pool, so that both can be borrowed).
struct State {
    base: Box<dyn IoChannel>,
    info: BdevInfo,
    reqs: Vec<Req>,
    free_reqs: Vec<u32>,
    ops: Vec<Op>,
    free_ops: Vec<u32>,
    waiting: Vec<u32>,
    scratch: Vec<u32>,
    turned_away: VecDeque<IoRequest>,
    ready: VecDeque<(u64, IoStatus)>,
    comps: Vec<(u64, IoStatus)>,
    cow: Vec<Buf>,
    free_cow: Vec<u32>,
    md: Vec<Buf>,
    free_md: Vec<u32>,
    cursor: usize,
    in_flight: usize,
}

impl VolChannel {
    pub fn new(
        pool: Arc<Pool>,
        vol: Arc<VolShared>,
        info: &BdevInfo,
    ) -> Result<VolChannel, BdevError> {
        let base = pool.dev.open_channel()?;
        let reg = vol.gate.register();
        let cursor =
            (reg.as_ref() as *const ChanReg as usize >> 6) % pool.arena.bitmap_words().max(1);
        Ok(VolChannel {
            st: State {
                base,
                info: info.clone(),
                reqs: Vec::with_capacity(64),
                free_reqs: Vec::with_capacity(64),
                ops: Vec::with_capacity(64),
                free_ops: Vec::with_capacity(64),
                waiting: Vec::with_capacity(64),
                scratch: Vec::with_capacity(64),
                turned_away: VecDeque::with_capacity(64),
                ready: VecDeque::with_capacity(256),
                comps: Vec::with_capacity(256),
                cow: Vec::new(),
                free_cow: Vec::new(),
                md: Vec::new(),
                free_md: Vec::new(),
                cursor,
                in_flight: 0,
            },
            pool,
            vol,
            reg,
        })
    }
}

impl Drop for VolChannel {
    fn drop(&mut self) {
        self.vol.gate.unregister(&self.reg);
    }
}

impl State {
    fn new_req(&mut self, tag: u64) -> u32 {
        let r = Req {
            tag,
            pending: 1,
            status: IoStatus::Success,
        };
        match self.free_reqs.pop() {
            Some(i) => {
                self.reqs[i as usize] = r;
                i
            }
            None => {
                self.reqs.push(r);
                (self.reqs.len() - 1) as u32
            }
        }
    }

    fn new_op(&mut self, op: Op) -> u32 {
        match self.free_ops.pop() {
            Some(i) => {
                self.ops[i as usize] = op;
                i
            }
            None => {
                self.ops.push(op);
                (self.ops.len() - 1) as u32
            }
        }
    }

    fn free_op(&mut self, o: u32) {
        self.ops[o as usize].st = St::Free;
        self.free_ops.push(o);
    }

    /// One piece of a request ended.
    fn piece_done(&mut self, vol: &VolShared, reg: &ChanReg, o: u32, st: IoStatus) {
        let r = self.ops[o as usize].req;
        self.free_op(o);
        self.req_step(vol, reg, r, st);
    }

    fn req_step(&mut self, vol: &VolShared, reg: &ChanReg, r: u32, st: IoStatus) {
        let q = &mut self.reqs[r as usize];
        if st != IoStatus::Success && q.status == IoStatus::Success {
            q.status = st;
        }
        q.pending -= 1;
        if q.pending == 0 {
            self.ready.push_back((q.tag, q.status));
            self.free_reqs.push(r);
            vol.gate.leave(reg);
        }
    }

    /// Submits `op` of piece `o` to the pool device at byte `at`.
    fn base_io(&mut self, pool: &Pool, o: u32, op: IoOp, at: u64, len: u64, buf: *mut u8) {
        let req = IoRequest {
            op,
            offset_blocks: at >> pool.bs_shift,
            num_blocks: (len >> pool.bs_shift) as u32,
            buf,
            len: if buf.is_null() { 0 } else { len as usize },
            tag: u64::from(o),
        };
        // SAFETY: the buffer is the host's (valid until its request completes, which
        // waits for this piece) or one of this channel's own buffers (kept until the op
        // that uses it ends).
        unsafe { self.base.submit(req) };
    }

    fn flush_base(&mut self, o: u32) {
        // SAFETY: no buffer.
        unsafe {
            self.base
                .submit(IoRequest::no_data(IoOp::Flush, 0, 0, u64::from(o)))
        };
    }

    /// Admits and starts a request (or turns it away while the gate is closed).
    fn admit(&mut self, pool: &Pool, vol: &VolShared, reg: &ChanReg, req: IoRequest) {
        if !vol.gate.enter(reg) {
            self.turned_away.push_back(req);
            return;
        }
        let r = self.new_req(req.tag);
        if let Err(st) = check_request(&self.info, &req) {
            self.req_step(vol, reg, r, st);
            return;
        }
        if req.op == IoOp::Flush {
            self.reqs[r as usize].pending += 1;
            let o = self.new_op(Op {
                st: St::Base,
                req: r,
                io: IoOp::Flush,
                ..Op::FREE
            });
            self.flush_base(o);
            self.req_step(vol, reg, r, IoStatus::Success);
            return;
        }
        let slot = vol.cur.load(Ordering::Acquire);
        let mut byte = req.offset_blocks << pool.bs_shift;
        let end = byte + (u64::from(req.num_blocks) << pool.bs_shift);
        let mut buf = req.buf;
        while byte < end {
            let idx = byte >> pool.cs_shift;
            let off = byte & (pool.cs - 1);
            let len = (end - byte).min(pool.cs - off);
            self.reqs[r as usize].pending += 1;
            let o = self.new_op(Op {
                st: St::Wait,
                req: r,
                io: req.op,
                slot,
                idx: idx as u32,
                off: off as u32,
                len: len as u32,
                buf,
                ..Op::FREE
            });
            self.plan(pool, vol, reg, o);
            byte += len;
            if !buf.is_null() {
                // SAFETY: still inside the request's buffer (its length was checked
                // against the block count).
                buf = unsafe { buf.add(len as usize) };
            }
        }
        self.req_step(vol, reg, r, IoStatus::Success);
    }

    /// Decides what piece `o` does now.
    fn plan(&mut self, pool: &Pool, vol: &VolShared, reg: &ChanReg, o: u32) {
        let op = self.ops[o as usize];
        match op.io {
            IoOp::Read => {
                let c = pool.resolve(op.slot, op.idx as usize);
                if c != 0 {
                    self.ops[o as usize].st = St::Base;
                    let at = (u64::from(c) << pool.cs_shift) + u64::from(op.off);
                    self.base_io(pool, o, IoOp::Read, at, u64::from(op.len), op.buf);
                } else {
                    // SAFETY: the piece lies inside the host's buffer.
                    unsafe { std::ptr::write_bytes(op.buf, 0, op.len as usize) };
                    self.piece_done(vol, reg, o, IoStatus::Success);
                }
            }
            IoOp::Write => self.plan_write(pool, vol, reg, o),
            IoOp::WriteZeroes | IoOp::Deallocate => {
                if op.off == 0 && u64::from(op.len) == addressable(pool, op.slot, op.idx) {
                    self.plan_unmap(pool, vol, reg, o);
                } else {
                    self.plan_write(pool, vol, reg, o);
                }
            }
            IoOp::Flush => unreachable!("flushes are not split into pieces"),
        }
    }

    /// A write (or a zeroing of part of a cluster).
    fn plan_write(&mut self, pool: &Pool, vol: &VolShared, reg: &ChanReg, o: u32) {
        let op = self.ops[o as usize];
        let entry = &pool.entries(op.slot)[op.idx as usize];
        loop {
            let e = entry.load(Ordering::Acquire);
            if e & (BUSY | PENDING) != 0 {
                self.ops[o as usize].st = St::Wait;
                self.waiting.push(o);
                return;
            }
            let v = e & VALUE_MASK;
            if v != 0 && v != ZERO {
                self.ops[o as usize].st = St::Base;
                let at = (u64::from(v) << pool.cs_shift) + u64::from(op.off);
                let bop = if op.io == IoOp::Write {
                    IoOp::Write
                } else {
                    IoOp::WriteZeroes
                };
                let buf = if op.io == IoOp::Write {
                    op.buf
                } else {
                    std::ptr::null_mut()
                };
                self.base_io(pool, o, bop, at, u64::from(op.len), buf);
                return;
            }
            let full = op.off == 0 && u64::from(op.len) == addressable(pool, op.slot, op.idx);
            let src = match (v, full, pool.parent(op.slot)) {
                (0, false, Some(p)) => pool.resolve(p, op.idx as usize),
                _ => 0,
            };
            if op.io != IoOp::Write && src == 0 {
                // Zeroing blocks that read as zeroes already.
                self.piece_done(vol, reg, o, IoStatus::Success);
                return;
            }
            if entry
                .compare_exchange(e, BUSY | v, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            if !alloc::reserve(&pool.arena, 1) {
                entry.store(e, Ordering::Release);
                self.piece_done(vol, reg, o, IoStatus::CapacityExceeded);
                return;
            }
            let y = alloc::take(&pool.arena, &mut self.cursor);
            let page =
                pool.map_page_nums(op.slot)[op.idx as usize / MAP_ENTRIES].load(Ordering::Relaxed);
            let x = &mut self.ops[o as usize];
            x.old = e;
            x.cluster = y;
            x.src = src;
            x.page = page;
            if src == 0 {
                entry.store(y | PENDING, Ordering::Release);
                x.st = St::Fresh;
                x.data_done = false;
                x.md_done = false;
                x.err = IoStatus::Success;
                self.md_change(pool, o);
                let at = (u64::from(y) << pool.cs_shift) + u64::from(op.off);
                self.base_io(pool, o, IoOp::Write, at, u64::from(op.len), op.buf);
                self.waiting.push(o);
            } else {
                x.st = St::CowBuf;
                self.start_cow(pool, o);
            }
            return;
        }
    }

    /// Write Zeroes or Deallocate of a whole cluster: unmap it.
    fn plan_unmap(&mut self, pool: &Pool, vol: &VolShared, reg: &ChanReg, o: u32) {
        let op = self.ops[o as usize];
        let entry = &pool.entries(op.slot)[op.idx as usize];
        let parent = pool.parent(op.slot);
        loop {
            let e = entry.load(Ordering::Acquire);
            if e & (BUSY | PENDING) != 0 {
                self.ops[o as usize].st = St::Wait;
                self.waiting.push(o);
                return;
            }
            let v = e & VALUE_MASK;
            let target = match parent {
                Some(p) if pool.resolve(p, op.idx as usize) != 0 => ZERO,
                _ => 0,
            };
            if v == ZERO || v == target {
                self.piece_done(vol, reg, o, IoStatus::Success);
                return;
            }
            if entry
                .compare_exchange(e, target | PENDING, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            let page =
                pool.map_page_nums(op.slot)[op.idx as usize / MAP_ENTRIES].load(Ordering::Relaxed);
            let x = &mut self.ops[o as usize];
            x.old = e;
            x.cluster = v;
            x.src = target;
            x.page = page;
            x.st = St::UnmapMd;
            self.md_change(pool, o);
            self.waiting.push(o);
            return;
        }
    }

    /// Starts (or queues) a copy on write.
    fn start_cow(&mut self, pool: &Pool, o: u32) {
        let b = match self.free_cow.pop() {
            Some(b) => b,
            None if self.cow.len() < MAX_COW => {
                self.cow.push(Buf::new(pool.cs as usize));
                (self.cow.len() - 1) as u32
            }
            None => {
                self.waiting.push(o);
                return;
            }
        };
        let x = &mut self.ops[o as usize];
        x.aux = b;
        x.st = St::CowRead;
        let src = x.src;
        let ptr = self.cow[b as usize].ptr();
        self.base_io(
            pool,
            o,
            IoOp::Read,
            u64::from(src) << pool.cs_shift,
            pool.cs,
            ptr,
        );
    }

    /// Takes a metadata buffer.
    fn md_buf(&mut self) -> u32 {
        match self.free_md.pop() {
            Some(b) => b,
            None => {
                self.md.push(Buf::new(PAGE));
                (self.md.len() - 1) as u32
            }
        }
    }

    /// Op `o` changed its entry in memory (its state says to what): the write that
    /// makes the change durable. Without a log (version 1), its map page's; with one,
    /// a log record's (the map page only marked dirty for the next checkpoint).
    fn md_change(&mut self, pool: &Pool, o: u32) {
        let op = self.ops[o as usize];
        if pool.geo.log_pages == 0 {
            let page =
                pool.map_page_nums(op.slot)[op.idx as usize / MAP_ENTRIES].load(Ordering::Relaxed);
            let x = &mut self.ops[o as usize];
            x.page = page;
            x.gen = meta::request(pool.arena.page(page));
            return;
        }
        self.log_append(pool, o);
    }

    /// Appends op `o`'s log record; false (the op's page left at [`NONE`]) while the
    /// log is full.
    fn log_append(&mut self, pool: &Pool, o: u32) -> bool {
        let op = self.ops[o as usize];
        let value = match op.st {
            St::UnmapMd => op.src,
            _ => op.cluster,
        };
        let x = &mut self.ops[o as usize];
        match log::append(pool, op.slot, op.idx, value) {
            Some((page, gen)) => {
                x.page = page;
                x.gen = gen;
                true
            }
            None => {
                x.page = NONE;
                false
            }
        }
    }

    /// Writes metadata page `page` (a map page of `slot`, holding entry `idx`, or a
    /// log page) if nobody is writing it.
    fn drive_md(&mut self, pool: &Pool, page: u32, slot: u32, idx: u32) {
        let Some(turn) = meta::try_take(pool.arena.page(page)) else {
            return;
        };
        let b = self.md_buf();
        match log::ring_of(pool, page) {
            Some(q) => log::build_page(pool, q, turn.seq, self.md[b as usize].as_mut_slice()),
            None => pool.build_map_page(
                slot,
                idx as usize / MAP_ENTRIES,
                turn.seq,
                self.md[b as usize].as_mut_slice(),
            ),
        }
        let o = self.new_op(Op {
            st: St::MdWrite,
            page,
            aux: b,
            turn,
            ..Op::FREE
        });
        let ptr = self.md[b as usize].ptr();
        self.base_io(
            pool,
            o,
            IoOp::Write,
            meta::slot_offset(page, turn.seq),
            PAGE as u64,
            ptr,
        );
    }

    /// Re-examines every waiting op.
    fn run_waiting(&mut self, pool: &Pool, vol: &VolShared, reg: &ChanReg) -> usize {
        if self.waiting.is_empty() {
            return 0;
        }
        std::mem::swap(&mut self.waiting, &mut self.scratch);
        let n = self.scratch.len();
        for k in 0..n {
            let o = self.scratch[k];
            let op = self.ops[o as usize];
            match op.st {
                St::Wait => self.plan(pool, vol, reg, o),
                St::CowBuf => self.start_cow(pool, o),
                St::Fresh | St::MdWait | St::UnmapMd => {
                    if op.page == NONE && !self.log_append(pool, o) {
                        if pool.md_failed.load(Ordering::Acquire) {
                            self.md_lost(pool, vol, reg, o);
                        } else {
                            self.waiting.push(o);
                        }
                        continue;
                    }
                    let op = self.ops[o as usize];
                    if pool.md_failed.load(Ordering::Acquire)
                        && !meta::is_durable(pool.arena.page(op.page), op.gen)
                    {
                        self.md_lost(pool, vol, reg, o);
                    } else if meta::is_durable(pool.arena.page(op.page), op.gen) {
                        self.md_durable(pool, vol, reg, o);
                    } else {
                        self.drive_md(pool, op.page, op.slot, op.idx);
                        self.waiting.push(o);
                    }
                }
                s => unreachable!("op in state {s:?} was waiting"),
            }
        }
        self.scratch.clear();
        n
    }

    /// The map page naming op `o`'s change is durable.
    fn md_durable(&mut self, pool: &Pool, vol: &VolShared, reg: &ChanReg, o: u32) {
        let op = self.ops[o as usize];
        let entry = &pool.entries(op.slot)[op.idx as usize];
        match op.st {
            St::Fresh => {
                self.ops[o as usize].md_done = true;
                if op.data_done {
                    self.finish_fresh(pool, vol, reg, o);
                }
            }
            St::MdWait => {
                entry.store(op.cluster, Ordering::Release);
                pool.slot(op.slot).used.fetch_add(1, Ordering::AcqRel);
                self.free_cow.push(op.aux);
                self.piece_done(vol, reg, o, IoStatus::Success);
            }
            St::UnmapMd => {
                entry.store(op.src, Ordering::Release);
                if op.cluster == 0 {
                    self.piece_done(vol, reg, o, IoStatus::Success);
                } else {
                    pool.slot(op.slot).used.fetch_sub(1, Ordering::AcqRel);
                    self.ops[o as usize].st = St::UnmapZero;
                    self.base_io(
                        pool,
                        o,
                        IoOp::WriteZeroes,
                        u64::from(op.cluster) << pool.cs_shift,
                        pool.cs,
                        std::ptr::null_mut(),
                    );
                }
            }
            s => unreachable!("{s:?} has no map page to wait for"),
        }
    }

    /// A metadata write failed for good: op `o`'s change is given up (its entry goes
    /// back; its new cluster, which may be named on the device, is never reused).
    fn md_lost(&mut self, pool: &Pool, vol: &VolShared, reg: &ChanReg, o: u32) {
        let op = self.ops[o as usize];
        if op.st == St::Fresh && !op.data_done {
            // The data write is still in flight: finish when it completes.
            self.ops[o as usize].md_done = true;
            self.ops[o as usize].err = IoStatus::Io(libc::EIO);
            return;
        }
        pool.entries(op.slot)[op.idx as usize].store(op.old, Ordering::Release);
        pool.arena.header().tainted.store(1, Ordering::Release);
        if op.st == St::MdWait {
            self.free_cow.push(op.aux);
        }
        self.piece_done(vol, reg, o, IoStatus::Io(libc::EIO));
    }

    fn finish_fresh(&mut self, pool: &Pool, vol: &VolShared, reg: &ChanReg, o: u32) {
        let op = self.ops[o as usize];
        let entry = &pool.entries(op.slot)[op.idx as usize];
        if op.err != IoStatus::Success {
            entry.store(op.old, Ordering::Release);
            pool.arena.header().tainted.store(1, Ordering::Release);
            self.piece_done(vol, reg, o, op.err);
            return;
        }
        entry.store(op.cluster, Ordering::Release);
        pool.slot(op.slot).used.fetch_add(1, Ordering::AcqRel);
        self.piece_done(vol, reg, o, IoStatus::Success);
    }

    /// A request of op `o` to the pool device completed.
    fn on_base(&mut self, pool: &Pool, vol: &VolShared, reg: &ChanReg, o: u32, st: IoStatus) {
        let op = self.ops[o as usize];
        let ok = st == IoStatus::Success;
        match op.st {
            St::Base => self.piece_done(vol, reg, o, st),
            St::Fresh => {
                let x = &mut self.ops[o as usize];
                x.data_done = true;
                if !ok {
                    x.err = st;
                }
                if x.md_done {
                    self.finish_fresh(pool, vol, reg, o);
                }
            }
            St::CowRead => {
                if !ok {
                    // Nothing written to the new cluster: it is still zeroes.
                    pool.entries(op.slot)[op.idx as usize].store(op.old, Ordering::Release);
                    alloc::release(&pool.arena, op.cluster);
                    self.free_cow.push(op.aux);
                    self.piece_done(vol, reg, o, st);
                    return;
                }
                let b = &mut self.cow[op.aux as usize];
                let at = op.off as usize;
                let dst = &mut b.as_mut_slice()[at..at + op.len as usize];
                if op.io == IoOp::Write {
                    // SAFETY: the host's buffer holds `len` bytes for this piece and
                    // stays valid until its request completes.
                    dst.copy_from_slice(unsafe {
                        std::slice::from_raw_parts(op.buf, op.len as usize)
                    });
                } else {
                    dst.fill(0);
                }
                self.ops[o as usize].st = St::CowWrite;
                let ptr = self.cow[op.aux as usize].ptr();
                self.base_io(
                    pool,
                    o,
                    IoOp::Write,
                    u64::from(op.cluster) << pool.cs_shift,
                    pool.cs,
                    ptr,
                );
            }
            St::CowWrite | St::CowFlush if !ok => {
                pool.entries(op.slot)[op.idx as usize].store(op.old, Ordering::Release);
                pool.arena.header().tainted.store(1, Ordering::Release);
                self.free_cow.push(op.aux);
                self.piece_done(vol, reg, o, st);
            }
            St::CowWrite if pool.volatile => {
                // The copy must be durable before the map page that names it.
                self.ops[o as usize].st = St::CowFlush;
                self.flush_base(o);
            }
            St::CowWrite | St::CowFlush => {
                pool.entries(op.slot)[op.idx as usize]
                    .store(op.cluster | PENDING, Ordering::Release);
                self.ops[o as usize].st = St::MdWait;
                self.md_change(pool, o);
                self.waiting.push(o);
            }
            St::UnmapZero if ok && pool.volatile => {
                self.ops[o as usize].st = St::UnmapFlush;
                self.flush_base(o);
            }
            St::UnmapZero | St::UnmapFlush => {
                if ok {
                    alloc::release(&pool.arena, op.cluster);
                } else {
                    // Unmapped, but its old data may remain: never reused in this run.
                    pool.arena.header().tainted.store(1, Ordering::Release);
                }
                self.piece_done(vol, reg, o, IoStatus::Success);
            }
            St::MdWrite if ok && pool.volatile => {
                self.ops[o as usize].st = St::MdFlush;
                self.flush_base(o);
            }
            St::MdWrite | St::MdFlush => {
                let rec = pool.arena.page(op.page);
                if ok {
                    meta::publish(rec, op.turn);
                } else {
                    meta::give_up(rec);
                    pool.md_failed.store(true, Ordering::Release);
                    tracing::error!(pool = %pool.name, page = op.page, ?st, "a metadata write failed: new clusters are refused until the pool is opened again");
                }
                self.free_md.push(op.aux);
                self.free_op(o);
            }
            s => unreachable!("completion for an op in state {s:?}"),
        }
    }
}

/// Bytes of cluster `idx` of slot `slot` that lie inside the volume.
#[inline]
fn addressable(pool: &Pool, slot: u32, idx: u32) -> u64 {
    let size = pool.slot(slot).size.load(Ordering::Acquire);
    (size - (u64::from(idx) << pool.cs_shift)).min(pool.cs)
}

impl VolChannel {
    /// Where `num_blocks` blocks at `offset_blocks` lie on the pool device, in blocks,
    /// when they lie in one cluster that holds data of its own (or, for a read, its
    /// snapshot's); `None` otherwise (out of range, across clusters, unallocated, or
    /// being changed: a write there needs the full path). The caller holds the gate
    /// (entered, like any request that reads the map) until the pool device's in-place
    /// call has returned: a snapshot taken between the lookup and an in-place write
    /// would otherwise get that write in the cluster it now owns.
    #[inline]
    fn in_place(&self, offset_blocks: u64, num_blocks: u32, write: bool) -> Option<u64> {
        let info = &self.st.info;
        let end = offset_blocks.checked_add(u64::from(num_blocks))?;
        if num_blocks == 0 || end > info.num_blocks || (write && info.read_only) {
            return None;
        }
        let pool = &*self.pool;
        let byte = offset_blocks << pool.bs_shift;
        let off = byte & (pool.cs - 1);
        if off + (u64::from(num_blocks) << pool.bs_shift) > pool.cs {
            return None;
        }
        let slot = self.vol.cur.load(Ordering::Acquire);
        let idx = (byte >> pool.cs_shift) as usize;
        let c = if write {
            let e = pool.entries(slot)[idx].load(Ordering::Acquire);
            let v = e & VALUE_MASK;
            if e & (BUSY | PENDING) == 0 && v != 0 && v != ZERO {
                v
            } else {
                0
            }
        } else {
            pool.resolve(slot, idx)
        };
        (c != 0).then(|| ((u64::from(c) << pool.cs_shift) + off) >> pool.bs_shift)
    }
}

impl IoChannel for VolChannel {
    unsafe fn submit(&mut self, req: IoRequest) {
        self.st.in_flight += 1;
        self.st.admit(&self.pool, &self.vol, &self.reg, req);
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        let (pool, vol, reg) = (&*self.pool, &*self.vol, &*self.reg);
        let s = &mut self.st;
        let mut comps = std::mem::take(&mut s.comps);
        s.base.poll(&mut |tag, st| comps.push((tag, st)));
        for &(tag, st) in &comps {
            s.on_base(pool, vol, reg, tag as u32, st);
        }
        comps.clear();
        s.comps = comps;
        s.run_waiting(pool, vol, reg);
        if !s.turned_away.is_empty() && !vol.gate.is_closed() {
            for _ in 0..s.turned_away.len() {
                let Some(req) = s.turned_away.pop_front() else {
                    break;
                };
                s.admit(pool, vol, reg, req);
            }
        }
        let mut n = 0;
        while let Some((tag, st)) = s.ready.pop_front() {
            s.in_flight -= 1;
            done(tag, st);
            n += 1;
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.st.in_flight
    }

    /// Blocks in one cluster with data: the pool device's own in-place read (a RAM
    /// pool's memory, sent from where it is).
    fn read_in_place(&mut self, offset_blocks: u64, num_blocks: u32) -> Option<DataRef> {
        if !self.vol.gate.enter(&self.reg) {
            return None;
        }
        let r = self
            .in_place(offset_blocks, num_blocks, false)
            .and_then(|at| self.st.base.read_in_place(at, num_blocks));
        self.vol.gate.leave(&self.reg);
        r
    }

    /// Blocks of one cluster the volume owns (durably mapped): the pool device's own
    /// in-place write. A write that needs a cluster takes the full path.
    fn write_in_place(&mut self, offset_blocks: u64, num_blocks: u32, data: &[u8]) -> bool {
        if data.len() as u64 != u64::from(num_blocks) << self.pool.bs_shift {
            return false;
        }
        if !self.vol.gate.enter(&self.reg) {
            return false;
        }
        let done = match self.in_place(offset_blocks, num_blocks, true) {
            Some(at) => self.st.base.write_in_place(at, num_blocks, data),
            None => false,
        };
        self.vol.gate.leave(&self.reg);
        done
    }

    fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        self.st.base.completion_fd()
    }
}
