//! The mirror's channel: reads from the source, writes to both devices (completing
//! once both have), writes held during the final pause or paced by the writer
//! throttle, and the check that dirties a region a write raced the copier on (or, once
//! no round follows, sends the write to the destination again).

use std::collections::VecDeque;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;

use lightpool_bdev::{BdevError, DataRef, IoChannel, IoOp, IoRequest, IoStatus};

use crate::Shared;

/// Regions a write remembers generations for; a longer write dirties every region it
/// covers when it raced the copier anywhere.
const GENS: usize = 4;

#[derive(Clone, Copy)]
struct Slot {
    /// The caller's request (its tag is the caller's).
    req: IoRequest,
    tag: u64,
    /// Inner completions still to come.
    left: u8,
    status: IoStatus,
    /// A write sent to both devices (its regions are checked at completion).
    mirrored: bool,
    /// Sent to the destination again (it raced a copy after the last round), or
    /// waiting to be.
    resending: bool,
    first: u64,
    last: u64,
    gens: [u32; GENS],
}

pub(crate) struct MirrorChannel {
    sh: Arc<Shared>,
    src: Box<dyn IoChannel>,
    /// `None` when the destination could not be reached at open (the migration
    /// failed then): this channel serves the source alone.
    dst: Option<Box<dyn IoChannel>>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Writes that arrived during the final pause.
    held: VecDeque<IoRequest>,
    /// Throttled writes and when (the shared clock's time) each may go.
    delayed: VecDeque<(u64, IoRequest)>,
    /// Slots whose write raced a copy after the last round, waiting for the copies of
    /// their regions under way to end before they go to the destination again.
    resend: VecDeque<u32>,
    done: VecDeque<(u64, IoStatus)>,
    /// Inner completions of one poll.
    events: Vec<(u64, IoStatus, bool)>,
}

fn writes(op: IoOp) -> bool {
    matches!(op, IoOp::Write | IoOp::WriteZeroes | IoOp::Deallocate)
}

impl MirrorChannel {
    pub(crate) fn new(sh: Arc<Shared>) -> Result<MirrorChannel, BdevError> {
        let src = sh.source.open_channel()?;
        // The host's I/O must not depend on the destination: one that cannot be
        // reached fails the migration, not the channel.
        let dst = match sh.dest.open_channel() {
            Ok(d) => Some(d),
            Err(e) => {
                sh.fail(format!("the destination cannot be reached: {e}"));
                None
            }
        };
        Ok(MirrorChannel {
            sh,
            src,
            dst,
            slots: Vec::with_capacity(256),
            free: Vec::with_capacity(256),
            held: VecDeque::with_capacity(256),
            delayed: VecDeque::with_capacity(256),
            resend: VecDeque::with_capacity(64),
            done: VecDeque::with_capacity(256),
            events: Vec::with_capacity(256),
        })
    }

    fn slot(&mut self, s: Slot) -> u64 {
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = s;
                u64::from(i)
            }
            None => {
                self.slots.push(s);
                (self.slots.len() - 1) as u64
            }
        }
    }

    /// `paced`: a throttled write whose time has come.
    ///
    /// # Safety
    /// As [`IoChannel::submit`].
    unsafe fn start(&mut self, req: IoRequest, paced: bool) {
        // A field borrow, not a clone: no reference count touched per request.
        let sh = &*self.sh;
        let write = writes(req.op);
        let mirror = (write || req.op == IoOp::Flush) && sh.active() && self.dst.is_some();
        if write && mirror && !paced && req.op == IoOp::Write {
            let bytes = u64::from(req.num_blocks) * (sh.opts.region_bytes / sh.region_blocks);
            if let Some(at) = sh.throttle_slot(bytes) {
                self.delayed.push_back((at, req));
                return;
            }
        }
        if write && mirror && sh.paused.load(SeqCst) {
            self.held.push_back(req);
            return;
        }
        let mut s = Slot {
            req,
            tag: req.tag,
            left: if mirror { 2 } else { 1 },
            status: IoStatus::Success,
            mirrored: write && mirror,
            resending: false,
            first: 0,
            last: 0,
            gens: [0; GENS],
        };
        if s.mirrored {
            s.first = sh.region_of(req.offset_blocks);
            s.last = sh.region_of(req.offset_blocks + u64::from(req.num_blocks.max(1)) - 1);
            for (i, r) in (s.first..=s.last).take(GENS).enumerate() {
                s.gens[i] = sh.gen[r as usize].load(SeqCst);
            }
        }
        let i = self.slot(s);
        let mut r = req;
        r.tag = i * 2;
        // SAFETY: the caller's buffer contract is passed on to both devices; the
        // caller's completion is returned only once both have completed.
        unsafe { self.src.submit(r) };
        if let (true, Some(dst)) = (mirror, self.dst.as_mut()) {
            r.tag = i * 2 + 1;
            // SAFETY: as above; the destination only reads the buffer of a write.
            unsafe { dst.submit(r) };
        }
    }

    /// One inner completion of slot `i` (`dest`: from the destination).
    fn inner_done(&mut self, i: usize, st: IoStatus, dest: bool) {
        let sh = &*self.sh;
        let s = &mut self.slots[i];
        if dest {
            if st != IoStatus::Success && sh.active() {
                sh.fail(format!("the destination failed a mirrored request: {st:?}"));
            }
        } else {
            s.status = st;
        }
        s.left -= 1;
        if s.left > 0 {
            return;
        }
        if s.mirrored && !s.resending {
            // Between the look at the pause and the marks: the copier, which sets the
            // pause and then waits for this count to be zero, sees these marks, or this
            // write sees the pause.
            sh.completing.fetch_add(1, SeqCst);
            let late = sh.late();
            let n = s.last - s.first + 1;
            let mut raced_any = false;
            for (k, r) in (s.first..=s.last).enumerate() {
                let g = sh.gen[r as usize].load(SeqCst);
                let raced = k >= GENS || g != s.gens[k] || g % 2 == 1;
                if raced || n as usize > GENS {
                    raced_any = true;
                    if !late {
                        sh.mark_dirty(r);
                    }
                }
            }
            sh.completing.fetch_sub(1, SeqCst);
            if late && raced_any && sh.active() && self.dst.is_some() {
                // No round will copy these regions again: the write's own data goes to
                // the destination once more, after the copies under way (poll).
                s.resending = true;
                s.left = 1;
                sh.resent.fetch_add(1, Relaxed);
                self.resend.push_back(i as u32);
                return;
            }
        }
        self.done.push_back((s.tag, s.status));
        self.free.push(i as u32);
    }

    /// Sends the writes waiting in `resend` whose regions no copy is under way on.
    fn resend_due(&mut self) {
        for _ in 0..self.resend.len() {
            let Some(i) = self.resend.pop_front() else {
                break;
            };
            let s = self.slots[i as usize];
            let Some(dst) = self.dst.as_mut() else {
                break;
            };
            if !self.sh.active() {
                // Failed or cancelled meanwhile: the source's status stands.
                self.done.push_back((s.tag, s.status));
                self.free.push(i);
                continue;
            }
            if !self.sh.uncopied_now(s.first, s.last) {
                self.resend.push_back(i);
                continue;
            }
            let mut r = s.req;
            r.tag = u64::from(i) * 2 + 1;
            // SAFETY: the caller's request, not completed yet: its buffer holds the
            // data it wrote, for as long as this takes.
            unsafe { dst.submit(r) };
        }
    }
}

impl IoChannel for MirrorChannel {
    unsafe fn submit(&mut self, req: IoRequest) {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.start(req, false) }
    }

    /// Reads come from the source: its reads by reference are passed on.
    fn read_in_place(&mut self, offset_blocks: u64, num_blocks: u32) -> Option<DataRef> {
        self.src.read_in_place(offset_blocks, num_blocks)
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        if !self.held.is_empty() && !self.sh.paused.load(SeqCst) {
            for _ in 0..self.held.len() {
                if let Some(r) = self.held.pop_front() {
                    // SAFETY: held requests keep the contract they were submitted with.
                    unsafe { self.start(r, true) };
                }
            }
        }
        if !self.delayed.is_empty() {
            let now = self.sh.now_ns();
            // Slots are taken in order: the first not due ends the walk.
            while self.delayed.front().is_some_and(|(at, _)| *at <= now) {
                if let Some((_, r)) = self.delayed.pop_front() {
                    // SAFETY: delayed requests keep the contract they were submitted with.
                    unsafe { self.start(r, true) };
                }
            }
        }
        if !self.resend.is_empty() {
            self.resend_due();
        }
        let mut ev = std::mem::take(&mut self.events);
        self.src.poll(&mut |t, st| ev.push((t, st, false)));
        if let Some(dst) = self.dst.as_mut() {
            dst.poll(&mut |t, st| ev.push((t, st, true)));
        }
        for (t, st, dest) in ev.drain(..) {
            self.inner_done((t / 2) as usize, st, dest);
        }
        self.events = ev;
        let mut n = 0;
        while let Some((tag, st)) = self.done.pop_front() {
            done(tag, st);
            n += 1;
        }
        n
    }

    fn in_flight(&self) -> usize {
        // Slots waiting to be sent again are in use: counted with the slots.
        self.slots.len() - self.free.len() + self.held.len() + self.delayed.len() + self.done.len()
    }
}
