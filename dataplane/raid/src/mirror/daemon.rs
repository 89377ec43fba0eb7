//! The RAID1 array's background thread: the only writer of superblocks and bitmap
//! blocks, and the one that copies regions to recovering members.
//!
//! Each turn of its loop it takes the control path's requests (a member joins or is
//! removed), writes the superblocks when a member failed or the membership changed,
//! makes the bits writers asked for durable (bitmap block to every writable member,
//! then a flush), copies one chunk for a recovery (rate-limited), and clears the bits
//! of regions idle for a whole interval. It sleeps (parked) when there is nothing to do;
//! writers wake it when they need a bit, channels when a member fails.

use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightpool_bdev::{BdevError, IoStatus};

use super::{
    Member, Mirror, Request, INFLIGHT, PAUSED, PAUSE_ASKED, SYNCING, S_ACTIVE, S_EMPTY, S_FAULTY,
    S_RECOVERING,
};
use crate::format::{
    encode_bitmap_block, SlotState, BITMAP_BLOCK, BITMAP_OFFSET, SB_BYTES, WORDS_PER_BLOCK,
};
use crate::io::{describe, wait_all, Buf, SyncChannel};
use crate::RaidError;

/// Largest piece of a region copied at once (the region is held that long).
const CHUNK: u64 = 1 << 20;
/// How often a recovery's progress goes into the superblocks.
const CHECKPOINT: Duration = Duration::from_secs(5);
/// Sleep when there is nothing to do (writers and failures wake the thread earlier).
const IDLE: Duration = Duration::from_millis(200);

/// Starts the background thread of `m`.
pub(crate) fn spawn(m: &Arc<Mirror>) -> Result<(), BdevError> {
    let mm = m.clone();
    let h = std::thread::Builder::new()
        .name(format!("raid1-{}", m.name()))
        .spawn(move || Daemon::new(mm).run())
        .map_err(BdevError::Setup)?;
    let _ = m.ctl.thread.set(h.thread().clone());
    *m.ctl.join.lock().expect("join poisoned") = Some(h);
    Ok(())
}

/// The chunk of a region being copied.
struct Cur {
    region: u64,
    /// Bytes of the region copied so far.
    done: u64,
    /// Slots it is copied to.
    targets: u64,
}

struct Daemon {
    m: Arc<Mirror>,
    epoch: u64,
    chans: Vec<Option<SyncChannel>>,
    dev_ids: Vec<usize>,
    region_bytes: u64,
    array_bytes: u64,
    data_offset: u64,
    /// Lazy clearing: each region's completed-write count at the last pass, and
    /// whether it was sampled.
    last_done: Vec<u32>,
    sampled: Vec<u64>,
    next_clear: Instant,
    /// The last superblock write found every slot active (bits may be cleared).
    all_active_sb: bool,
    sb_dirty: bool,
    /// The failure count the superblocks last caught up with.
    sb_fail_gen: u64,
    cur: Option<Cur>,
    copy: Buf,
    rate_next: Instant,
    last_checkpoint: Instant,
    taken: Vec<(usize, u64)>,
}

impl Daemon {
    fn new(m: Arc<Mirror>) -> Daemon {
        let (region_bytes, array_bytes, data_offset) = {
            let sb = m.sb.lock().expect("sb poisoned");
            (sb.region_bytes, sb.array_bytes, sb.data_offset)
        };
        let n = m.slots.len();
        let regions = m.regions as usize;
        Daemon {
            epoch: 0,
            chans: (0..n).map(|_| None).collect(),
            dev_ids: vec![0; n],
            region_bytes,
            array_bytes,
            data_offset,
            last_done: vec![0; regions],
            sampled: vec![0; regions.div_ceil(64)],
            next_clear: Instant::now(),
            all_active_sb: false,
            sb_dirty: true,
            sb_fail_gen: 0,
            cur: None,
            copy: Buf::new(region_bytes.min(CHUNK) as usize),
            rate_next: Instant::now(),
            last_checkpoint: Instant::now(),
            taken: Vec::new(),
            m,
        }
    }

    fn run(mut self) {
        loop {
            if self.m.ctl.stop.load(SeqCst) {
                self.shutdown();
                return;
            }
            if self.m.ctl.pause.load(SeqCst) == PAUSE_ASKED {
                self.m.ctl.pause.store(PAUSED, SeqCst);
                while self.m.ctl.pause.load(SeqCst) == PAUSED && !self.m.ctl.stop.load(SeqCst) {
                    std::thread::park_timeout(Duration::from_millis(100));
                }
                continue;
            }
            self.refresh();
            self.requests();
            self.superblocks();
            self.bitmap();
            let wait = self.recover();
            self.clear();
            self.superblocks();
            if !wait.is_zero() {
                let until_clear = self.next_clear.saturating_duration_since(Instant::now());
                std::thread::park_timeout(wait.min(until_clear).max(Duration::from_micros(50)));
            }
        }
    }

    /// Reopens the channels of devices that changed.
    fn refresh(&mut self) {
        let e = self.m.epoch.load(SeqCst);
        if e == self.epoch {
            return;
        }
        let members = self.m.members.lock().expect("members poisoned").clone();
        for (s, want) in members.iter().enumerate() {
            let id = want
                .as_ref()
                .map_or(0, |m| Arc::as_ptr(&m.dev) as *const () as usize);
            if id == self.dev_ids[s] {
                continue;
            }
            self.chans[s] = None;
            self.dev_ids[s] = id;
            if let Some(m) = want {
                match SyncChannel::open(m.dev.clone()) {
                    Ok(c) => self.chans[s] = Some(c),
                    Err(e) => {
                        self.dev_ids[s] = 0;
                        self.m
                            .fail_slot(s, &format!("cannot open an I/O channel: {e}"));
                    }
                }
            }
        }
        self.epoch = e;
    }

    /// Slots that get writes (and superblocks, and bitmap blocks), with a channel.
    fn writable(&self) -> Vec<usize> {
        (0..self.m.slots.len())
            .filter(|&s| self.m.slots[s].writable() && self.chans[s].is_some())
            .collect()
    }

    /// Runs `start` on the channel of each of `slots` in parallel, waits, and fails the
    /// members whose request failed. Returns the slots that succeeded.
    fn each(
        &mut self,
        slots: &[usize],
        what: &str,
        mut start: impl FnMut(usize, &mut SyncChannel),
    ) -> Vec<usize> {
        let mut chs: Vec<(usize, &mut SyncChannel)> = Vec::with_capacity(slots.len());
        for (s, c) in self.chans.iter_mut().enumerate() {
            if let Some(c) = c.as_mut() {
                if slots.contains(&s) {
                    chs.push((s, c));
                }
            }
        }
        for (s, c) in chs.iter_mut() {
            start(*s, c);
        }
        {
            let mut refs: Vec<&mut SyncChannel> = chs.iter_mut().map(|(_, c)| &mut **c).collect();
            wait_all(&mut refs);
        }
        let mut ok = Vec::with_capacity(slots.len());
        let mut failed = Vec::new();
        for (s, c) in chs.iter_mut() {
            match c.status() {
                IoStatus::Success => ok.push(*s),
                st => failed.push((*s, st)),
            }
        }
        for (s, st) in failed {
            self.m
                .fail_slot(s, &format!("{what} failed: {}", describe(st)));
        }
        ok
    }

    /// Flushes `slots` (those with a volatile cache).
    fn flush(&mut self, slots: &[usize]) {
        let cached: Vec<usize> = slots
            .iter()
            .copied()
            .filter(|&s| {
                self.chans[s]
                    .as_ref()
                    .is_some_and(|c| c.dev.info().volatile_write_cache)
            })
            .collect();
        if !cached.is_empty() {
            self.each(&cached, "flush", |_, c| c.start_flush());
        }
    }

    /// Writes the superblocks if a member failed or the membership changed, until
    /// they agree with the slots' states.
    fn superblocks(&mut self) {
        if !self.sb_dirty && self.m.fail_gen.load(SeqCst) == self.sb_fail_gen {
            return;
        }
        loop {
            let fg = self.m.fail_gen.load(SeqCst);
            self.check_source();
            self.write_superblocks(false);
            if self.m.fail_gen.load(SeqCst) == fg || self.m.failed.load(SeqCst) {
                self.sb_fail_gen = fg;
                break;
            }
        }
        self.sb_dirty = false;
        self.last_checkpoint = Instant::now();
    }

    /// With no active member left, a recovering one whose data is the array's (after
    /// an unclean stop) takes over; without one, the array has failed.
    fn check_source(&mut self) {
        if self.m.has_source() || self.m.failed.load(SeqCst) {
            return;
        }
        for (s, slot) in self.m.slots.iter().enumerate() {
            if slot.state() == S_RECOVERING && slot.valid.load(SeqCst) {
                slot.state.store(S_ACTIVE, SeqCst);
                tracing::warn!(array = %self.m.name(), slot = s, "no active member left: a member being made consistent takes over");
                return;
            }
        }
        self.m.failed.store(true, SeqCst);
        tracing::error!(array = %self.m.name(), "RAID1 array failed: no member holds its data");
    }

    /// One superblock write to every writable member (events + 1).
    fn write_superblocks(&mut self, clean: bool) {
        let members = self.m.members.lock().expect("members poisoned").clone();
        let mut sb = self.m.sb.lock().expect("sb poisoned").clone();
        sb.events += 1;
        sb.clean = clean;
        let mut all_active = true;
        let mut in_sync = 0u64;
        for (s, slot) in self.m.slots.iter().enumerate() {
            let e = &mut sb.table[s];
            e.member_uuid = members[s].as_ref().map_or([0; 16], |m| m.uuid);
            let st = slot.state();
            all_active &= st == S_ACTIVE;
            (e.state, e.full_from) = match st {
                S_ACTIVE => (SlotState::Active, u64::MAX),
                S_RECOVERING if slot.valid.load(SeqCst) => (SlotState::Active, u64::MAX),
                S_RECOVERING => {
                    let f = slot.full_from.load(SeqCst);
                    let c = slot.cursor.load(SeqCst);
                    (
                        SlotState::Recovering,
                        if f == u64::MAX { f } else { f.max(c) },
                    )
                }
                S_FAULTY => (SlotState::Faulty, u64::MAX),
                _ => (SlotState::Empty, u64::MAX),
            };
            if e.state == SlotState::Active {
                in_sync |= 1 << s;
            }
        }
        if all_active {
            sb.events_cleared = sb.events;
        }
        let targets = self.writable();
        if targets.is_empty() {
            self.m.failed.store(true, SeqCst);
            return;
        }
        let bufs: Vec<(usize, Buf)> = targets
            .iter()
            .map(|&s| {
                let mut one = sb.clone();
                one.role = s as u32;
                one.member_uuid = sb.table[s].member_uuid;
                let mut b = Buf::new(SB_BYTES);
                one.encode(b.as_mut_slice());
                (s, b)
            })
            .collect();
        let off = sb.slot_offset();
        // While it is written the members may hold the old or the new table.
        self.m.sb_active.fetch_or(in_sync, SeqCst);
        let ok = self.each(&targets, "superblock write", |s, c| {
            let b = &bufs
                .iter()
                .find(|(t, _)| *t == s)
                .expect("one per target")
                .1;
            // SAFETY: `bufs` outlives the wait inside `each`.
            unsafe { c.start_write(off, b) }
        });
        self.flush(&ok);
        if ok.is_empty() {
            self.m.failed.store(true, SeqCst);
        } else {
            // Durable: a member that missed this write failed (the next write records
            // it); the table written is what a restart reads.
            self.m.sb_active.store(in_sync, SeqCst);
        }
        self.all_active_sb = all_active && ok.len() == targets.len();
        *self.m.sb.lock().expect("sb poisoned") = sb;
    }

    /// The image of bitmap block `b` from `ondisk`, with `extra` bits set.
    fn block_image(&self, b: usize, extra: &[(usize, u64)]) -> Buf {
        let first = b * WORDS_PER_BLOCK;
        let mut words = [0u64; WORDS_PER_BLOCK];
        for (i, w) in words.iter_mut().enumerate() {
            if let Some(a) = self.m.ondisk.get(first + i) {
                *w = a.load(SeqCst);
            }
        }
        for &(w, bits) in extra {
            if w >= first && w < first + WORDS_PER_BLOCK {
                words[w - first] |= bits;
            }
        }
        let mut buf = Buf::new(BITMAP_BLOCK);
        encode_bitmap_block(&words, 0, buf.as_mut_slice());
        buf
    }

    /// Writes bitmap blocks `blocks` (images from `ondisk` plus `extra`) to `slots`.
    fn write_blocks(&mut self, blocks: &[usize], extra: &[(usize, u64)], slots: &[usize]) {
        let imgs: Vec<(usize, Buf)> = blocks
            .iter()
            .map(|&b| (b, self.block_image(b, extra)))
            .collect();
        let mut slots = slots.to_vec();
        for (b, img) in &imgs {
            let off = BITMAP_OFFSET + (*b * BITMAP_BLOCK) as u64;
            // SAFETY: `imgs` outlives the wait inside `each`.
            slots = self.each(&slots, "bitmap write", |_, c| unsafe {
                c.start_write(off, img)
            });
        }
    }

    /// Makes the bits writers asked for durable on every writable member.
    fn bitmap(&mut self) {
        let mut changed = Vec::new();
        let mut taken = std::mem::take(&mut self.taken);
        let words = self.m.want.len();
        for (b, hint) in self.m.hints.iter().enumerate() {
            if !hint.swap(false, SeqCst) {
                continue;
            }
            let first = b * WORDS_PER_BLOCK;
            let mut any = false;
            for w in first..(first + WORDS_PER_BLOCK).min(words) {
                let t = self.m.want[w].swap(0, SeqCst);
                if t != 0 {
                    taken.push((w, t));
                    any = true;
                }
            }
            if any {
                changed.push(b);
            }
        }
        if !changed.is_empty() {
            let slots = self.writable();
            self.write_blocks(&changed, &taken, &slots);
            let slots = self.writable();
            self.flush(&slots);
            for &(w, t) in &taken {
                self.m.ondisk[w].fetch_or(t, SeqCst);
            }
            self.m
                .stats
                .bitmap_sets
                .fetch_add(changed.len() as u64, Relaxed);
        }
        taken.clear();
        self.taken = taken;
    }

    /// Takes region `r` for copying: no write may start on it, and those in flight
    /// finish first (bits they wait for are made durable meanwhile).
    fn hold(&mut self, r: u64) {
        let rs = &self.m.region_state[r as usize];
        rs.fetch_or(SYNCING, SeqCst);
        // Writes in flight may wait for bits, or for the superblocks (holding the
        // region): both are this thread's to write.
        while self.m.region_state[r as usize].load(SeqCst) & INFLIGHT != 0 {
            self.bitmap();
            self.superblocks();
            std::thread::park_timeout(Duration::from_micros(50));
        }
    }

    fn release(&self, r: u64) {
        self.m.region_state[r as usize].fetch_and(!SYNCING, SeqCst);
    }

    /// The next region slot `s` must be sent, if any.
    fn next_region(&self, s: usize) -> Option<u64> {
        let slot = &self.m.slots[s];
        let c = slot.cursor.load(SeqCst);
        let f = slot.full_from.load(SeqCst).min(self.m.regions);
        if c >= self.m.regions {
            return None;
        }
        if c >= f {
            return Some(c);
        }
        let mut w = (c / 64) as usize;
        let mut mask = !0u64 << (c % 64);
        while (w as u64) * 64 < f {
            let bits = slot.snap[w].load(Relaxed) & mask;
            if bits != 0 {
                let r = w as u64 * 64 + u64::from(bits.trailing_zeros());
                return Some(if r < f { r } else { f }).filter(|&r| r < self.m.regions);
            }
            w += 1;
            mask = !0;
        }
        Some(f).filter(|&r| r < self.m.regions)
    }

    /// One chunk of recovery; returns how long to wait before the next.
    fn recover(&mut self) -> Duration {
        let rec: Vec<usize> = (0..self.m.slots.len())
            .filter(|&s| self.m.slots[s].state() == S_RECOVERING)
            .collect();
        if rec.is_empty() {
            self.cur = None;
            return IDLE;
        }
        for &s in &rec {
            if self.chans[s].is_none() {
                self.m.fail_slot(s, "no I/O channel to recover it through");
            }
        }
        let now = Instant::now();
        if now < self.rate_next {
            return self.rate_next - now;
        }
        if self.cur.is_none() {
            let mut best: Option<u64> = None;
            let mut targets = 0u64;
            for &s in &rec {
                match self.next_region(s) {
                    Some(r) if best.is_none_or(|b| r < b) => {
                        best = Some(r);
                        targets = 1 << s;
                    }
                    Some(r) if best == Some(r) => targets |= 1 << s,
                    Some(_) => {}
                    None => self.recovered(s),
                }
            }
            let Some(region) = best else {
                return Duration::ZERO;
            };
            self.cur = Some(Cur {
                region,
                done: 0,
                targets,
            });
        }
        let Some(source) = (0..self.m.slots.len())
            .find(|&s| self.m.slots[s].state() == S_ACTIVE && self.chans[s].is_some())
        else {
            self.check_source();
            return IDLE;
        };
        let (r, done, targets) = {
            let c = self.cur.as_ref().expect("set above");
            (c.region, c.done, c.targets)
        };
        let start = r * self.region_bytes;
        let end = (start + self.region_bytes).min(self.array_bytes);
        let off = start + done;
        let len = (end - off).min(CHUNK);
        self.copy.set_len(len as usize);
        self.hold(r);
        let src_off = self.data_offset + off;
        let ch = self.chans[source].as_mut().expect("found above");
        let st = ch.read(src_off, &mut self.copy);
        if st != IoStatus::Success {
            self.release(r);
            self.m.fail_slot(
                source,
                &format!("read for recovery failed: {}", describe(st)),
            );
            return Duration::ZERO;
        }
        let tslots: Vec<usize> = (0..self.m.slots.len())
            .filter(|&s| targets & (1 << s) != 0 && self.m.slots[s].state() == S_RECOVERING)
            .collect();
        let copy = std::mem::replace(&mut self.copy, Buf::new(0));
        // SAFETY: `copy` is kept until `each` has waited for every write.
        let ok = self.each(&tslots, "recovery write", |_, c| unsafe {
            c.start_write(src_off, &copy)
        });
        self.copy = copy;
        self.release(r);
        for &s in &ok {
            self.m.slots[s].copied.fetch_add(len, Relaxed);
        }
        self.m
            .stats
            .copied_total
            .fetch_add(len * ok.len() as u64, Relaxed);
        let cur = self.cur.as_mut().expect("set above");
        cur.done += len;
        if off + len >= end {
            for &s in &ok {
                let slot = &self.m.slots[s];
                if slot.state() == S_RECOVERING {
                    slot.cursor.store(r + 1, Release);
                }
            }
            self.cur = None;
        }
        let rate = self.m.tun.rate.load(Relaxed);
        if rate > 0 {
            let step = Duration::from_secs_f64(len as f64 / rate as f64);
            self.rate_next = self.rate_next.max(now) + step;
        }
        if self.last_checkpoint.elapsed() > CHECKPOINT {
            self.sb_dirty = true;
        }
        Duration::ZERO
    }

    /// Slot `s` has everything: it becomes active.
    fn recovered(&mut self, s: usize) {
        let slot = &self.m.slots[s];
        slot.full_from.store(u64::MAX, SeqCst);
        slot.valid.store(false, SeqCst);
        slot.state.store(S_ACTIVE, SeqCst);
        self.m.stats.recoveries.fetch_add(1, Relaxed);
        self.sb_dirty = true;
        tracing::info!(
            array = %self.m.name(),
            slot = s,
            copied_bytes = slot.copied.load(Relaxed),
            "RAID1 member in sync"
        );
    }

    /// Clears the bits of regions that stayed idle for a whole interval.
    fn clear(&mut self) {
        let now = Instant::now();
        if now < self.next_clear {
            return;
        }
        let delay = Duration::from_millis(self.m.tun.clear_delay_ms.load(Relaxed));
        self.next_clear = now + delay.max(Duration::from_millis(10));
        let all_active = self.m.slots.iter().all(|s| s.state() == S_ACTIVE);
        if !all_active || !self.all_active_sb || self.m.failed.load(SeqCst) {
            self.sampled.fill(0);
            return;
        }
        let mut changed = Vec::new();
        for w in 0..self.m.ondisk.len() {
            let mut bits = self.m.ondisk[w].load(SeqCst);
            let mut cleared = false;
            while bits != 0 {
                let i = bits.trailing_zeros();
                bits &= bits - 1;
                let r = w * 64 + i as usize;
                let bit = 1u64 << i;
                let s = self.m.region_state[r].load(SeqCst);
                let done = (s >> 32) as u32;
                let idle = s & (INFLIGHT | SYNCING) == 0;
                if idle && self.sampled[w] & bit != 0 && self.last_done[r] == done {
                    self.m.ondisk[w].fetch_and(!bit, SeqCst);
                    if self.m.region_state[r].load(SeqCst) != s {
                        // A writer came meanwhile: the bit stays.
                        self.m.ondisk[w].fetch_or(bit, SeqCst);
                        continue;
                    }
                    self.sampled[w] &= !bit;
                    cleared = true;
                } else {
                    self.last_done[r] = done;
                    self.sampled[w] |= bit;
                }
            }
            let b = w / WORDS_PER_BLOCK;
            if cleared && changed.last() != Some(&b) {
                changed.push(b);
            }
        }
        if !changed.is_empty() {
            let slots = self.writable();
            self.write_blocks(&changed, &[], &slots);
            self.m
                .stats
                .bitmap_clears
                .fetch_add(changed.len() as u64, Relaxed);
        }
    }

    fn requests(&mut self) {
        loop {
            let req = self
                .m
                .ctl
                .requests
                .lock()
                .expect("requests poisoned")
                .pop_front();
            let Some(req) = req else { return };
            match req {
                Request::Join {
                    slot,
                    member,
                    bitmap_only,
                    reply,
                } => {
                    let r = self.join(slot, member, bitmap_only);
                    let _ = reply.send(r);
                }
                Request::Remove { slot, reply } => {
                    let r = self.remove(slot);
                    let _ = reply.send(r);
                }
            }
        }
    }

    /// Puts `member` into `slot` and starts recovering it (see the module's ordering, 4).
    fn join(&mut self, s: usize, member: Member, bitmap_only: bool) -> Result<String, RaidError> {
        let slot = &self.m.slots[s];
        let st = slot.state();
        if st != S_EMPTY && st != S_FAULTY {
            return Err(RaidError::Refused(format!(
                "{}: slot {s} is in use",
                self.m.name()
            )));
        }
        let name = member.dev.info().name.clone();
        {
            let mut members = self.m.members.lock().expect("members poisoned");
            members[s] = Some(member);
            self.m.slots[s].dev_gen.fetch_add(1, SeqCst);
        }
        self.m.epoch.fetch_add(1, SeqCst);
        self.refresh();
        if self.chans[s].is_none() {
            return Err(RaidError::Refused(format!(
                "{}: cannot open an I/O channel to {name}",
                self.m.name()
            )));
        }
        let slot = &self.m.slots[s];
        slot.cursor.store(0, SeqCst);
        slot.full_from
            .store(if bitmap_only { u64::MAX } else { 0 }, SeqCst);
        slot.valid.store(false, SeqCst);
        slot.copied.store(0, SeqCst);
        slot.state.store(S_RECOVERING, SeqCst);
        // After it is writable (ordering, 4): what it must be sent.
        let mut dirty = 0u64;
        for (d, w) in slot.snap.iter().zip(self.m.ondisk.iter()) {
            let v = if bitmap_only { w.load(SeqCst) } else { 0 };
            dirty += u64::from(v.count_ones());
            d.store(v, SeqCst);
        }
        let to_copy = if bitmap_only {
            (dirty * self.region_bytes).min(self.array_bytes)
        } else {
            self.array_bytes
        };
        slot.to_copy.store(to_copy, SeqCst);
        // Its own copy of the bitmap, then the superblocks naming it.
        let blocks: Vec<usize> = (0..self.m.hints.len()).collect();
        self.write_blocks(&blocks, &[], &[s]);
        self.flush(&[s]);
        self.sb_dirty = true;
        self.superblocks();
        if self.m.slots[s].state() != S_RECOVERING {
            return Err(RaidError::Refused(format!(
                "{}: {name} failed while joining",
                self.m.name()
            )));
        }
        let how = if bitmap_only {
            format!("resync of {dirty} dirty region(s), {to_copy} bytes")
        } else {
            format!("full rebuild, {to_copy} bytes")
        };
        tracing::info!(array = %self.m.name(), slot = s, device = %name, "RAID1 member joining: {how}");
        Ok(format!(
            "{name} joined {} in slot {s}: {how}",
            self.m.name()
        ))
    }

    fn remove(&mut self, s: usize) -> Result<String, RaidError> {
        let slot = &self.m.slots[s];
        if slot.state() != S_FAULTY {
            return Err(RaidError::Refused(format!(
                "{}: slot {s} is not failed; fail it first",
                self.m.name()
            )));
        }
        let old = {
            let mut members = self.m.members.lock().expect("members poisoned");
            slot.dev_gen.fetch_add(1, SeqCst);
            members[s].take()
        };
        slot.state.store(S_EMPTY, SeqCst);
        self.m.epoch.fetch_add(1, SeqCst);
        self.refresh();
        self.sb_dirty = true;
        self.superblocks();
        let name = old.map(|m| m.dev.info().name.clone()).unwrap_or_default();
        Ok(format!("{name} removed from {} (slot {s})", self.m.name()))
    }

    /// An orderly stop: everything flushed, the array marked clean.
    fn shutdown(&mut self) {
        if self.m.ctl.handed_over.load(SeqCst) || self.m.failed.load(SeqCst) {
            return;
        }
        self.refresh();
        let slots = self.writable();
        self.flush(&slots);
        self.write_superblocks(true);
    }
}
