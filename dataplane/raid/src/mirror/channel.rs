//! A RAID1 channel: reads to one readable member, writes to every writable one, member
//! failures absorbed; see the module above for the ordering it keeps. Nothing here
//! takes a lock or allocates on a warm channel: requests live in a preallocated slab,
//! the lists are rings that keep their capacity, and the member channels are reopened
//! only when the array's membership changes (a reconfiguration, not the I/O path).

use std::collections::VecDeque;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;

use lightpool_bdev::{check_request, BdevInfo, DataRef, IoChannel, IoOp, IoRequest, IoStatus};

use super::{Mirror, DONE_ONE, SYNCING, S_ACTIVE};
use crate::slab::{Slab, INITIAL};
use crate::RaidBdev;

/// A member's channel as this channel holds it.
struct MemberChan {
    ch: Option<Box<dyn IoChannel>>,
    /// Identity of the device it was opened on (0: none).
    dev_id: usize,
    /// Requests of this channel in flight on it (read balancing).
    busy: u32,
    /// The slot's device generation it was opened for.
    gen: u64,
}

struct Req {
    tag: u64,
    op: IoOp,
    lba: u64,
    n: u32,
    buf: *mut u8,
    len: usize,
    /// Parts in flight on members.
    pending: u32,
    /// Members that were active when the write went out, and those that took it.
    active: u64,
    ok_mask: u64,
    /// Reads: members tried.
    tried: u64,
    /// Regions held (writes).
    r0: u64,
    r1: u64,
    held: bool,
    status: IoStatus,
}

impl Default for Req {
    fn default() -> Self {
        Req {
            tag: 0,
            op: IoOp::Read,
            lba: 0,
            n: 0,
            buf: std::ptr::null_mut(),
            len: 0,
            pending: 0,
            active: 0,
            ok_mask: 0,
            tried: 0,
            r0: 0,
            r1: 0,
            held: false,
            status: IoStatus::Success,
        }
    }
}

/// Completions gathered from a member channel: (slot or `RETIRED`, tag, status).
type Comp = (usize, u64, IoStatus);
const RETIRED: usize = usize::MAX;

pub(crate) struct MirrorChannel {
    /// Keeps the array (and its background thread) alive while the channel is.
    #[allow(dead_code)]
    dev: Arc<RaidBdev>,
    m: Arc<Mirror>,
    info: BdevInfo,
    epoch: u64,
    members: Vec<MemberChan>,
    /// Channels of devices that left the array, polled until their requests are back.
    retiring: Vec<Box<dyn IoChannel>>,
    reqs: Slab<Req>,
    /// Writes whose region is being copied: retried at each poll.
    deferred: VecDeque<u32>,
    /// Writes holding their regions, waiting for their bits to be durable.
    bitwait: VecDeque<u32>,
    /// Finished writes waiting for the superblocks to record a member failure.
    sbwait: VecDeque<u32>,
    ready: VecDeque<(u64, IoStatus)>,
    comp: Vec<Comp>,
    in_flight: usize,
    rr: usize,
}

impl MirrorChannel {
    pub fn new(dev: Arc<RaidBdev>, m: Arc<Mirror>) -> MirrorChannel {
        let n = m.slots.len();
        let mut c = MirrorChannel {
            info: m.info.clone(),
            dev,
            m,
            epoch: 0,
            members: (0..n)
                .map(|_| MemberChan {
                    ch: None,
                    dev_id: 0,
                    busy: 0,
                    gen: 0,
                })
                .collect(),
            retiring: Vec::new(),
            reqs: Slab::new(),
            deferred: VecDeque::with_capacity(INITIAL),
            bitwait: VecDeque::with_capacity(INITIAL),
            sbwait: VecDeque::with_capacity(INITIAL),
            ready: VecDeque::with_capacity(INITIAL),
            comp: Vec::with_capacity(INITIAL),
            in_flight: 0,
            rr: 0,
        };
        c.refresh();
        c
    }

    /// Reopens member channels when the membership changed (a lock and allocations,
    /// but only after a reconfiguration).
    #[inline]
    fn refresh(&mut self) {
        let e = self.m.epoch.load(SeqCst);
        if e != self.epoch {
            self.reopen(e);
        }
    }

    #[cold]
    fn reopen(&mut self, e: u64) {
        let (members, gens): (Vec<_>, Vec<u64>) = {
            let members = self.m.members.lock().expect("members poisoned");
            let gens = self
                .m
                .slots
                .iter()
                .map(|s| s.dev_gen.load(SeqCst))
                .collect();
            (members.clone(), gens)
        };
        for (s, mc) in self.members.iter_mut().enumerate() {
            let want = members[s].as_ref();
            let id = want.map_or(0, |m| Arc::as_ptr(&m.dev) as *const () as usize);
            if id == mc.dev_id && gens[s] == mc.gen {
                continue;
            }
            // A device put into the slot (even the same one again): a fresh channel,
            // so that nothing sent to its previous life counts against it.
            mc.gen = gens[s];
            if let Some(old) = mc.ch.take() {
                if old.in_flight() > 0 {
                    self.retiring.push(old);
                }
            }
            mc.busy = 0;
            mc.dev_id = id;
            if let Some(m) = want {
                match m.dev.open_channel() {
                    Ok(ch) => mc.ch = Some(ch),
                    Err(e) => {
                        mc.dev_id = 0;
                        self.m
                            .fail_slot(s, &format!("cannot open an I/O channel: {e}"));
                    }
                }
            }
        }
        self.epoch = e;
    }

    fn regions(&self, lba: u64, n: u32) -> (u64, u64) {
        let last = lba + u64::from(n.max(1)) - 1;
        (self.m.region_of(lba), self.m.region_of(last))
    }

    fn finish(&mut self, p: u32, st: IoStatus) {
        let tag = self.reqs.at(p).tag;
        self.reqs.free(p);
        self.ready.push_back((tag, st));
    }

    /// The readable member (current channel, not in `tried`) with the fewest requests
    /// of this channel in flight, taken in turn when they tie.
    #[inline]
    fn pick_reader(&mut self, lba: u64, n: u32, tried: u64) -> Option<usize> {
        let k = self.members.len();
        let start = self.rr;
        self.rr = if start + 1 == k { 0 } else { start + 1 };
        let mut best = None;
        let mut best_busy = u32::MAX;
        for i in 0..k {
            let s = if start + i >= k {
                start + i - k
            } else {
                start + i
            };
            let mc = &self.members[s];
            if mc.ch.is_none() || mc.busy >= best_busy || (tried >> s) & 1 != 0 {
                continue;
            }
            let slot = &self.m.slots[s];
            if mc.gen != slot.dev_gen.load(SeqCst) {
                continue;
            }
            let ok = match slot.state() {
                S_ACTIVE => true,
                super::S_RECOVERING => {
                    let (r0, r1) = self.regions(lba, n);
                    slot.readable_recovering(r0, r1)
                }
                _ => false,
            };
            if ok {
                best = Some(s);
                best_busy = mc.busy;
            }
        }
        best
    }

    /// Whether `lba..lba+n` is a range of the array.
    fn in_range(&self, lba: u64, n: u32) -> bool {
        n > 0
            && lba
                .checked_add(u64::from(n))
                .is_some_and(|e| e <= self.info.num_blocks)
    }

    /// Sends read `p` to the readable member with the fewest reads in flight here.
    fn start_read(&mut self, p: u32) {
        let (lba, n, tried) = {
            let r = self.reqs.at(p);
            (r.lba, r.n, r.tried)
        };
        let Some(s) = self.pick_reader(lba, n, tried) else {
            let st = self.reqs.at(p).status;
            self.finish(
                p,
                if st == IoStatus::Success {
                    IoStatus::Io(libc::EIO)
                } else {
                    st
                },
            );
            return;
        };
        let r = self.reqs.get(p);
        r.tried |= 1 << s;
        r.pending = 1;
        let req = IoRequest::rw(
            IoOp::Read,
            self.m.data_offset + lba,
            n,
            r.buf,
            r.len,
            p.into(),
        );
        let mc = &mut self.members[s];
        mc.busy += 1;
        // SAFETY: the caller of `submit` keeps the buffer valid until this request's
        // completion, which comes after the member's.
        unsafe { mc.ch.as_mut().expect("checked above").submit(req) };
    }

    /// Takes the regions of write `p` and sends it on once their bits are durable;
    /// defers it while the background thread copies one of them.
    fn start_write(&mut self, p: u32) {
        let (lba, n) = {
            let r = self.reqs.at(p);
            (r.lba, r.n)
        };
        let (r0, r1) = self.regions(lba, n);
        for r in r0..=r1 {
            let old = self.m.region_state[r as usize].fetch_add(1, SeqCst);
            if old & SYNCING != 0 {
                for q in r0..=r {
                    self.m.region_state[q as usize].fetch_sub(1, SeqCst);
                }
                self.deferred.push_back(p);
                return;
            }
        }
        let rq = self.reqs.get(p);
        rq.r0 = r0;
        rq.r1 = r1;
        rq.held = true;
        let mut ready = true;
        for r in r0..=r1 {
            if !self.m.bit_set(r) {
                self.m.want_bit(r);
                ready = false;
            }
        }
        if ready {
            self.fan_out(p);
        } else {
            self.bitwait.push_back(p);
        }
    }

    /// Sends write (or flush) `p` to every writable member.
    fn fan_out(&mut self, p: u32) {
        // Membership read after the regions were taken (see the module's ordering, 4).
        self.refresh();
        let r = self.reqs.get(p);
        let mut sent = 0;
        for (s, mc) in self.members.iter_mut().enumerate() {
            let Some(ch) = mc.ch.as_mut() else { continue };
            if mc.gen != self.m.slots[s].dev_gen.load(SeqCst) {
                // Opened on a device that has left the slot since (ordering, 4: the
                // regions of this write are copied to the new one).
                continue;
            }
            let st = self.m.slots[s].state();
            if st != S_ACTIVE && st != super::S_RECOVERING {
                continue;
            }
            if st == S_ACTIVE {
                r.active |= 1 << s;
            }
            let req = IoRequest {
                op: r.op,
                offset_blocks: if r.op == IoOp::Flush {
                    0
                } else {
                    self.m.data_offset + r.lba
                },
                num_blocks: r.n,
                buf: r.buf,
                len: r.len,
                tag: p.into(),
            };
            mc.busy += 1;
            sent += 1;
            // SAFETY: as in start_read: the parent's buffer outlives every part.
            unsafe { ch.submit(req) };
        }
        r.pending = sent;
        if sent == 0 {
            self.done_write(p);
        }
    }

    /// Every part of write `p` is back: it completes once every member the durable
    /// superblocks call in sync has it (ordering, 3); until then it keeps its regions
    /// (so no recovery copies them under it) and waits for the superblocks.
    fn done_write(&mut self, p: u32) {
        let r = self.reqs.get(p);
        if r.ok_mask & r.active == 0 {
            r.status = IoStatus::Io(libc::EIO);
        }
        let missing = self.m.sb_active.load(SeqCst) & !r.ok_mask;
        if missing != 0 && r.status == IoStatus::Success && !self.m.failed.load(SeqCst) {
            self.sbwait.push_back(p);
            self.m.ctl.wake();
        } else {
            let st = r.status;
            self.release_finish(p, st);
        }
    }

    /// Releases the regions write `p` holds, then completes it.
    fn release_finish(&mut self, p: u32, st: IoStatus) {
        let r = self.reqs.get(p);
        if r.held {
            for q in r.r0..=r.r1 {
                self.m.region_state[q as usize].fetch_add(DONE_ONE, SeqCst);
            }
            r.held = false;
        }
        self.finish(p, st);
    }

    fn on_completion(&mut self, s: usize, p: u32, st: IoStatus) {
        let mut s = s;
        if s != RETIRED {
            let mc = &mut self.members[s];
            mc.busy = mc.busy.saturating_sub(1);
            if mc.gen != self.m.slots[s].dev_gen.load(SeqCst) {
                // A device that has left the slot: its errors are not the slot's.
                s = RETIRED;
            }
        }
        let r = self.reqs.get(p);
        r.pending -= 1;
        if r.op == IoOp::Read {
            if st == IoStatus::Success {
                self.finish(p, st);
                return;
            }
            r.status = st;
            if s != RETIRED {
                self.m.fail_slot(s, &format!("read failed: {st:?}"));
            }
            // Another member, if one can serve it.
            self.start_read(p);
            return;
        }
        if st == IoStatus::Success {
            if s != RETIRED {
                r.ok_mask |= 1 << s;
            }
        } else if s != RETIRED {
            self.m.fail_slot(s, &format!("{:?} failed: {st:?}", r.op));
        }
        if r.pending == 0 {
            self.done_write(p);
        }
    }

    /// Retries deferred writes, sends those whose bits are durable, completes those
    /// the superblocks have caught up with.
    fn progress(&mut self) {
        for _ in 0..self.deferred.len() {
            let p = self.deferred.pop_front().expect("counted");
            self.start_write(p);
        }
        for _ in 0..self.bitwait.len() {
            let p = self.bitwait.pop_front().expect("counted");
            let (r0, r1) = {
                let r = self.reqs.at(p);
                (r.r0, r.r1)
            };
            if (r0..=r1).all(|r| self.m.bit_set(r)) {
                self.fan_out(p);
            } else if self.m.failed.load(Relaxed) {
                self.release_finish(p, IoStatus::Io(libc::EIO));
            } else {
                self.bitwait.push_back(p);
            }
        }
        if !self.sbwait.is_empty() {
            let in_sync = self.m.sb_active.load(SeqCst);
            let failed = self.m.failed.load(SeqCst);
            for _ in 0..self.sbwait.len() {
                let p = self.sbwait.pop_front().expect("counted");
                let r = self.reqs.at(p);
                if in_sync & !r.ok_mask == 0 {
                    let st = r.status;
                    self.release_finish(p, st);
                } else if failed {
                    self.release_finish(p, IoStatus::Io(libc::EIO));
                } else {
                    self.sbwait.push_back(p);
                }
            }
        }
    }
}

impl IoChannel for MirrorChannel {
    /// From one readable member, passed on (a RAM member's bytes by reference).
    fn read_in_place(&mut self, offset_blocks: u64, num_blocks: u32) -> Option<DataRef> {
        if !self.in_range(offset_blocks, num_blocks) || self.m.failed.load(Relaxed) {
            return None;
        }
        self.refresh();
        let s = self.pick_reader(offset_blocks, num_blocks, 0)?;
        let ch = self.members[s].ch.as_mut()?;
        ch.read_in_place(self.m.data_offset + offset_blocks, num_blocks)
    }

    /// To every writable member, when each takes it in place and the regions' bits are
    /// durable already (the warm path); otherwise declined, and the submitted write
    /// does the rest. A member that took it before another declined holds the same
    /// bytes the submitted write brings again; likewise when a member the superblocks
    /// call in sync did not get it (the submitted write then waits for them).
    fn write_in_place(&mut self, offset_blocks: u64, num_blocks: u32, data: &[u8]) -> bool {
        if !self.in_range(offset_blocks, num_blocks)
            || self.info.read_only
            || data.len() as u64 != u64::from(num_blocks) * u64::from(self.info.block_size)
            || self.m.failed.load(Relaxed)
        {
            return false;
        }
        self.m.resume_if_paused();
        let (r0, r1) = self.regions(offset_blocks, num_blocks);
        for r in r0..=r1 {
            let old = self.m.region_state[r as usize].fetch_add(1, SeqCst);
            if old & SYNCING != 0 || !self.m.bit_set(r) {
                for q in r0..=r {
                    self.m.region_state[q as usize].fetch_sub(1, SeqCst);
                }
                return false;
            }
        }
        self.refresh();
        let (mut written, mut active) = (0u64, 0u64);
        let mut all = true;
        for (s, mc) in self.members.iter_mut().enumerate() {
            let Some(ch) = mc.ch.as_mut() else { continue };
            let slot = &self.m.slots[s];
            if mc.gen != slot.dev_gen.load(SeqCst) || !slot.writable() {
                continue;
            }
            if slot.state() == S_ACTIVE {
                active |= 1 << s;
            }
            if ch.write_in_place(self.m.data_offset + offset_blocks, num_blocks, data) {
                written |= 1 << s;
            } else {
                all = false;
                break;
            }
        }
        // Complete only as a submitted write would (ordering, 3); otherwise the
        // submitted write brings the same bytes again and waits.
        let done = all && written & active != 0 && self.m.sb_active.load(SeqCst) & !written == 0;
        for r in r0..=r1 {
            self.m.region_state[r as usize].fetch_add(DONE_ONE, SeqCst);
        }
        done
    }

    unsafe fn submit(&mut self, req: IoRequest) {
        self.in_flight += 1;
        self.m.resume_if_paused();
        if let Err(st) = check_request(&self.info, &req) {
            self.ready.push_back((req.tag, st));
            return;
        }
        if self.m.failed.load(Relaxed) {
            self.ready.push_back((req.tag, IoStatus::Io(libc::EIO)));
            return;
        }
        if req.op == IoOp::Deallocate && !self.info.supports_deallocate {
            // Advisory, and some member would keep its data: mirrors must not differ.
            self.ready.push_back((req.tag, IoStatus::Success));
            return;
        }
        self.refresh();
        let p = self.reqs.alloc();
        let r = self.reqs.get(p);
        r.tag = req.tag;
        r.op = req.op;
        r.lba = req.offset_blocks;
        r.n = req.num_blocks;
        r.buf = req.buf;
        r.len = req.len;
        match req.op {
            IoOp::Read => self.start_read(p),
            IoOp::Flush => self.fan_out(p),
            IoOp::Write | IoOp::WriteZeroes | IoOp::Deallocate => {
                if req.num_blocks == 0 {
                    self.finish(p, IoStatus::Success);
                } else {
                    self.start_write(p);
                }
            }
        }
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        if self.in_flight == 0 {
            // Nothing of ours anywhere: parts on members (retiring channels too) and
            // waiting requests all count in it.
            return 0;
        }
        self.refresh();
        let mut comp = std::mem::take(&mut self.comp);
        for (s, mc) in self.members.iter_mut().enumerate() {
            if let Some(ch) = mc.ch.as_mut() {
                ch.poll(&mut |tag, st| comp.push((s, tag, st)));
            }
        }
        if !self.retiring.is_empty() {
            for ch in self.retiring.iter_mut() {
                ch.poll(&mut |tag, st| comp.push((RETIRED, tag, st)));
            }
            self.retiring.retain(|c| c.in_flight() > 0);
        }
        for &(s, tag, st) in &comp {
            self.on_completion(s, tag as u32, st);
        }
        comp.clear();
        self.comp = comp;
        if !(self.deferred.is_empty() && self.bitwait.is_empty() && self.sbwait.is_empty()) {
            self.progress();
        }
        let mut n = 0;
        while let Some((tag, st)) = self.ready.pop_front() {
            self.in_flight -= 1;
            done(tag, st);
            n += 1;
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }
}
