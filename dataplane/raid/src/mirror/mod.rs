//! RAID1: every member holds all the data. Reads go to one readable member (the one
//! with the fewest reads in flight on the channel), writes to every writable one. A
//! member that fails is dropped without failing the request; the array keeps serving.
//!
//! What is shared by the channels (one per reactor), the background thread and the
//! control path lives in [`Mirror`], in atomics the I/O path reads without a lock:
//!
//! - per slot: its state (active, faulty, recovering, empty) and, while it recovers, its
//!   cursor (regions below are in sync), the region from which everything is copied
//!   (`full_from`), and the regions it must be sent below that (`snap`: the bitmap as it
//!   was when it started recovering);
//! - per region: writes in flight, whether the background thread holds it to copy it
//!   (`SYNCING`), and a count of writes completed (which the lazy bitmap clearing reads);
//! - the write-intent bitmap: `ondisk` (bits durable on every writable member: a write
//!   may go ahead), `want` (bits writers asked for), and a hint per bitmap block.
//!
//! The ordering that keeps mirrors consistent:
//! 1. A write takes its regions (increments their count; a region held for copying
//!    sends it to the channel's deferred list), then waits until their bits are durable
//!    before it goes to any member. Bits are set only by the background thread, which
//!    writes the bitmap block to every writable member and flushes them first.
//! 2. Bits are cleared lazily (a region idle for a whole interval), only while every
//!    slot is active, and never for a region with a write in flight: the clearer drops
//!    the bit, then reads the region's count again and puts the bit back if anything
//!    moved (a writer increments before it reads the bit).
//! 3. A write completes only once every member the durable superblocks call in sync
//!    has it (`sb_active`): one that failed or was skipped is marked faulty, and the
//!    write waits, holding its regions, until the superblocks of the others say so. A
//!    restart must never take a member that missed an acknowledged write for a source.
//! 4. A member that (re)joins becomes writable first; its `snap` is taken after, so a
//!    write either reaches it or its region is in `snap` and is copied (the copy waits
//!    for the region's writes to drain and holds it while it copies).
//! 5. A recovering member is read only where it is in sync: below its cursor, or below
//!    `full_from` where `snap` has no bit.

mod channel;
mod daemon;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::*};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use lightpool_bdev::{Bdev, BdevError, BdevInfo, IoChannel};

use crate::format::{SlotState, Superblock, BITS_PER_BLOCK};
use crate::{RaidBdev, RaidError};

pub(crate) use daemon::spawn;

/// Region count bits: writes in flight.
pub(crate) const INFLIGHT: u64 = (1 << 31) - 1;
/// Region held by the background thread while it copies it.
pub(crate) const SYNCING: u64 = 1 << 31;
/// Added when a write completes: one less in flight, one more completed (bits 32..64).
pub(crate) const DONE_ONE: u64 = (1 << 32) - 1;

pub(crate) const S_EMPTY: u8 = 0;
pub(crate) const S_ACTIVE: u8 = 1;
pub(crate) const S_FAULTY: u8 = 2;
pub(crate) const S_RECOVERING: u8 = 3;

pub(crate) fn state_code(s: SlotState) -> u8 {
    match s {
        SlotState::Empty => S_EMPTY,
        SlotState::Active => S_ACTIVE,
        SlotState::Faulty => S_FAULTY,
        SlotState::Recovering => S_RECOVERING,
    }
}

/// One member slot (role) as the I/O path sees it.
pub(crate) struct Slot {
    pub state: AtomicU8,
    /// Incremented (under the members' lock) whenever a device is put into or taken out
    /// of the slot: a channel opened on an older device neither sends the slot I/O nor
    /// fails it for that device's errors.
    pub dev_gen: AtomicU64,
    /// Recovering: regions below are in sync.
    pub cursor: AtomicU64,
    /// Recovering: regions from here on are copied whatever their bit.
    pub full_from: AtomicU64,
    /// Recovering: its data is the array's (it is only being made identical after an
    /// unclean stop), so it may become a source if every active member fails.
    pub valid: AtomicBool,
    /// Recovering: regions below `full_from` it must be sent (the bitmap when it
    /// started).
    pub snap: Box<[AtomicU64]>,
    /// Bytes planned and copied to it in its current recovery.
    pub to_copy: AtomicU64,
    pub copied: AtomicU64,
}

impl Slot {
    fn new(words: usize, state: u8) -> Slot {
        Slot {
            state: AtomicU8::new(state),
            dev_gen: AtomicU64::new(1),
            cursor: AtomicU64::new(0),
            full_from: AtomicU64::new(u64::MAX),
            valid: AtomicBool::new(false),
            snap: (0..words).map(|_| AtomicU64::new(0)).collect(),
            to_copy: AtomicU64::new(0),
            copied: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> u8 {
        self.state.load(SeqCst)
    }

    pub fn writable(&self) -> bool {
        matches!(self.state(), S_ACTIVE | S_RECOVERING)
    }

    fn snapped(&self, r: u64) -> bool {
        self.snap[(r / 64) as usize].load(Relaxed) & (1 << (r % 64)) != 0
    }

    /// Whether regions `r0..=r1` can be read from this member, which is recovering.
    pub fn readable_recovering(&self, r0: u64, r1: u64) -> bool {
        let c = self.cursor.load(Acquire);
        let f = self.full_from.load(Acquire);
        (r0..=r1).all(|r| r < c || (r < f && !self.snapped(r)))
    }
}

/// A member device and its identity.
#[derive(Clone)]
pub(crate) struct Member {
    pub dev: Arc<dyn Bdev>,
    pub uuid: [u8; 16],
}

/// What the control path asks the background thread to do (it serializes every
/// superblock write).
pub(crate) enum Request {
    /// Put `dev` (whose superblock said `returning`: it was this slot's member) into
    /// `slot` and recover it.
    Join {
        slot: usize,
        member: Member,
        /// Resync from the bitmap (a returning member) or copy everything.
        bitmap_only: bool,
        reply: mpsc::Sender<Result<String, RaidError>>,
    },
    /// Take the (faulty) device out of `slot`.
    Remove {
        slot: usize,
        reply: mpsc::Sender<Result<String, RaidError>>,
    },
}

pub(crate) const RUNNING: u8 = 0;
pub(crate) const PAUSE_ASKED: u8 = 1;
pub(crate) const PAUSED: u8 = 2;

/// The background thread's handle and its controls.
#[derive(Default)]
pub(crate) struct Ctl {
    pub thread: OnceLock<Thread>,
    pub join: Mutex<Option<JoinHandle<()>>>,
    pub stop: AtomicBool,
    /// RUNNING, PAUSE_ASKED, PAUSED.
    pub pause: AtomicU8,
    /// Handed to a successor: the background thread must not write anything more, nor
    /// mark the array clean when it stops.
    pub handed_over: AtomicBool,
    pub requests: Mutex<VecDeque<Request>>,
}

impl Ctl {
    pub fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// What the background thread reports.
#[derive(Default)]
pub(crate) struct Stats {
    /// Bytes copied to recovering members since the array started in this process
    /// (and its predecessors).
    pub copied_total: AtomicU64,
    /// Recoveries finished.
    pub recoveries: AtomicU64,
    /// Bitmap blocks written to set bits, and to clear them.
    pub bitmap_sets: AtomicU64,
    pub bitmap_clears: AtomicU64,
}

/// Tunables that may change while serving.
pub(crate) struct Tunables {
    /// Bytes per second a recovery copies at most (0: no limit).
    pub rate: AtomicU64,
    /// Milliseconds a region must stay idle before its bit is cleared.
    pub clear_delay_ms: AtomicU64,
}

/// The state of a RAID1 array shared by its channels, its background thread and the
/// control path.
pub(crate) struct Mirror {
    pub info: BdevInfo,
    /// Where the data starts on every member, in blocks.
    pub data_offset: u64,
    /// Blocks per region, as a shift (regions are a power of two bytes).
    pub region_shift: u32,
    pub regions: u64,
    pub slots: Box<[Slot]>,
    pub members: Mutex<Vec<Option<Member>>>,
    /// Incremented whenever `members` changes; channels reopen their member channels.
    pub epoch: AtomicU64,
    pub region_state: Box<[AtomicU64]>,
    pub ondisk: Box<[AtomicU64]>,
    pub want: Box<[AtomicU64]>,
    pub hints: Box<[AtomicBool]>,
    /// Incremented before a member is marked faulty: the background thread writes the
    /// superblocks when it changes.
    pub fail_gen: AtomicU64,
    /// The slots the superblocks on the members may call in sync (a restart could take
    /// any of them for a source): a write completes only once every one of them has it
    /// (ordering, 3). Widened before a superblock write, narrowed once it is durable.
    pub sb_active: AtomicU64,
    /// No member holds the array's data any more: every request fails.
    pub failed: AtomicBool,
    /// The superblock as last written (events, table), and the rest of its fields.
    pub sb: Mutex<Superblock>,
    pub ctl: Ctl,
    pub stats: Stats,
    pub tun: Tunables,
}

/// How a RAID1 array starts: what assembly (or an adopter) decided.
pub(crate) struct Init {
    pub info: BdevInfo,
    pub sb: Superblock,
    pub members: Vec<Option<Member>>,
    pub states: Vec<SlotInit>,
    /// The bitmap read from the members (or handed over), 64 regions a word.
    pub bits: Vec<u64>,
    pub rate: u64,
    pub clear_delay: Duration,
    pub copied_total: u64,
    pub recoveries: u64,
}

/// One slot's state at start.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct SlotInit {
    pub state: SlotState,
    pub cursor: u64,
    pub full_from: u64,
    pub valid: bool,
    /// Regions to send below `full_from`; `None`: the bitmap as it is.
    pub snap: Option<Vec<u64>>,
    pub to_copy: u64,
    pub copied: u64,
}

impl Mirror {
    pub fn new(init: Init) -> Arc<Mirror> {
        let sb = init.sb;
        let bs = u64::from(sb.block_size);
        let regions = sb.regions();
        let words = (regions as usize).div_ceil(64);
        let nblocks = (regions.div_ceil(BITS_PER_BLOCK)) as usize;
        let atomics = |v: &[u64]| -> Box<[AtomicU64]> {
            (0..words)
                .map(|i| AtomicU64::new(v.get(i).copied().unwrap_or(0)))
                .collect()
        };
        let slots: Box<[Slot]> = init
            .states
            .iter()
            .map(|s| {
                let slot = Slot::new(words, state_code(s.state));
                slot.cursor.store(s.cursor, SeqCst);
                slot.full_from.store(s.full_from, SeqCst);
                slot.valid.store(s.valid, SeqCst);
                let snap = s.snap.as_deref().unwrap_or(&init.bits);
                for (w, v) in slot.snap.iter().zip(snap) {
                    w.store(*v, SeqCst);
                }
                slot.to_copy.store(s.to_copy, SeqCst);
                slot.copied.store(s.copied, SeqCst);
                slot
            })
            .collect();
        // What the superblocks on the members say now: slots in sync (or whose data is
        // the array's, being made identical after an unclean stop).
        let sb_active = init
            .states
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.state == SlotState::Active || (s.state == SlotState::Recovering && s.valid)
            })
            .fold(0u64, |m, (i, _)| m | (1 << i));
        let m = Mirror {
            info: init.info,
            data_offset: sb.data_offset / bs,
            region_shift: (sb.region_bytes / bs).trailing_zeros(),
            regions,
            slots,
            members: Mutex::new(init.members),
            epoch: AtomicU64::new(1),
            region_state: (0..regions).map(|_| AtomicU64::new(0)).collect(),
            ondisk: atomics(&init.bits),
            want: atomics(&[]),
            hints: (0..nblocks).map(|_| AtomicBool::new(false)).collect(),
            fail_gen: AtomicU64::new(0),
            sb_active: AtomicU64::new(sb_active),
            failed: AtomicBool::new(false),
            sb: Mutex::new(sb),
            ctl: Ctl::default(),
            stats: Stats::default(),
            tun: Tunables {
                rate: AtomicU64::new(init.rate),
                clear_delay_ms: AtomicU64::new(init.clear_delay.as_millis() as u64),
            },
        };
        m.stats.copied_total.store(init.copied_total, SeqCst);
        m.stats.recoveries.store(init.recoveries, SeqCst);
        Arc::new(m)
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    pub fn region_of(&self, lba: u64) -> u64 {
        lba >> self.region_shift
    }

    pub fn bit_set(&self, r: u64) -> bool {
        self.ondisk[(r / 64) as usize].load(SeqCst) & (1 << (r % 64)) != 0
    }

    /// Asks the background thread to make region `r`'s bit durable.
    pub fn want_bit(&self, r: u64) {
        let bit = 1u64 << (r % 64);
        let old = self.want[(r / 64) as usize].fetch_or(bit, SeqCst);
        if old & bit == 0 {
            self.hints[(r / BITS_PER_BLOCK) as usize].store(true, SeqCst);
            self.ctl.wake();
        }
    }

    /// Marks slot `s` faulty (if it was in use) and wakes the background thread to
    /// record it in the superblocks.
    pub fn fail_slot(&self, s: usize, why: &str) {
        let slot = &self.slots[s];
        let st = slot.state();
        if st != S_ACTIVE && st != S_RECOVERING {
            return;
        }
        // Counted before the state changes: a write that sees the member faulty also
        // sees that the superblocks are behind (and waits for them).
        self.fail_gen.fetch_add(1, SeqCst);
        if slot
            .state
            .compare_exchange(st, S_FAULTY, SeqCst, SeqCst)
            .is_ok()
        {
            let dev = self.members.lock().expect("members poisoned")[s]
                .as_ref()
                .map(|m| m.dev.info().name.clone())
                .unwrap_or_default();
            tracing::error!(array = %self.name(), slot = s, device = %dev, why, "RAID1 member failed; the array is degraded and keeps serving");
        }
        self.ctl.wake();
    }

    /// Whether some member holds the array's data.
    pub fn has_source(&self) -> bool {
        self.slots.iter().any(|s| s.state() == S_ACTIVE)
    }

    pub fn open_channel(&self, dev: Arc<RaidBdev>, me: Arc<Mirror>) -> Box<dyn IoChannel> {
        Box::new(channel::MirrorChannel::new(dev, me))
    }

    /// Every device currently in a slot (the array's children).
    pub fn devices(&self) -> Vec<Arc<dyn Bdev>> {
        self.members
            .lock()
            .expect("members poisoned")
            .iter()
            .flatten()
            .map(|m| m.dev.clone())
            .collect()
    }

    /// Hands a request to the background thread and waits for its answer.
    pub fn ask(
        &self,
        make: impl FnOnce(mpsc::Sender<Result<String, RaidError>>) -> Request,
    ) -> Result<String, RaidError> {
        if self.ctl.pause.load(SeqCst) != RUNNING || self.ctl.thread.get().is_none() {
            return Err(RaidError::Busy(format!(
                "{}: the array is being handed over (hot upgrade); try again",
                self.name()
            )));
        }
        let (tx, rx) = mpsc::channel();
        self.ctl
            .requests
            .lock()
            .expect("requests poisoned")
            .push_back(make(tx));
        self.ctl.wake();
        rx.recv_timeout(Duration::from_secs(600)).map_err(|_| {
            RaidError::Busy(format!(
                "{}: the array's background thread did not answer",
                self.name()
            ))
        })?
    }

    /// Stops the background thread for a hot upgrade and waits until it has (nothing
    /// of its in flight). It resumes by itself if this process serves on (the next
    /// request on a channel, see [`Mirror::resume_if_paused`]).
    pub fn pause(&self) -> Result<(), BdevError> {
        if self.ctl.thread.get().is_none() {
            return Ok(());
        }
        self.ctl.pause.store(PAUSE_ASKED, SeqCst);
        self.ctl.wake();
        let t0 = std::time::Instant::now();
        while self.ctl.pause.load(SeqCst) != PAUSED {
            if t0.elapsed() > Duration::from_secs(10) {
                self.ctl.pause.store(RUNNING, SeqCst);
                return Err(BdevError::Invalid(format!(
                    "{}: the background thread did not pause within 10 s",
                    self.name()
                )));
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        Ok(())
    }

    /// A request after a pause means the hot upgrade did not happen and this process
    /// serves on: the background thread resumes.
    pub fn resume_if_paused(&self) {
        if self.ctl.pause.load(Relaxed) != RUNNING {
            self.ctl.handed_over.store(false, SeqCst);
            self.ctl.pause.store(RUNNING, SeqCst);
            self.ctl.wake();
        }
    }

    /// Stops the background thread (it marks the array clean unless handed over).
    pub fn stop(&self) {
        self.ctl.stop.store(true, SeqCst);
        self.ctl.wake();
        let h = self.ctl.join.lock().expect("join poisoned").take();
        if let Some(h) = h {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}
