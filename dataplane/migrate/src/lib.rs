//! Live migration's copy engine, on the source node: a block device stacked on the
//! volume that moves ([`MirrorBdev`], served in its place while the volume moves) and
//! the destination (any block device: in practice the remote NVMe/TCP device,
//! `lightpool-bdev-nvmf-tcp`), and a copier thread ([`Migration::start`]).
//!
//! - Every write, Write Zeroes and Deallocate served by the mirror goes to both the
//!   source and the destination, and completes once both have; reads come from the
//!   source. Flush goes to both.
//! - The copier walks the volume in regions: round 1 copies every region, later
//!   rounds the regions the dirty map holds. A region being copied is marked by an odd
//!   generation; a write that overlaps a region whose generation was odd, or changed,
//!   between the write's submission and its completion marks the region dirty again
//!   (the copy may have read the source before the write and written the destination
//!   after it), so the next round copies it again. Nothing else dirties a region: the
//!   mirror keeps the destination current for every write the copy does not race.
//! - Convergence: once the dirty bytes are at most `final_dirty_bytes` and their copy
//!   fits `max_pause`, or after `max_rounds`, the copier pauses new writes (they wait
//!   in their channels, no I/O fails), copies what is still dirty and lets the writes
//!   go: the destination then holds what the source holds, and stays so through the
//!   mirror (state [`State::Synced`]). The pause is measured and reported.
//! - The pause does not wait for the writes in flight, so a slow one cannot stretch it:
//!   a mirrored write that completes once the pause has begun (or after it) and finds
//!   that it raced a copy does not dirty its region (no later round would copy it);
//!   it writes its own data to the destination again, after any copy of its regions
//!   under way has ended, and completes only then. A copy can only have put older data
//!   on that write's blocks, and a copy begun after the write reached the source reads
//!   its data. The few writes between their look at the pause and their dirty mark
//!   (no I/O among them) are waited for, so the pause sees every mark made before it.
//! - A copy rate limit (bytes per second) bounds what the copy takes from the volume's
//!   own I/O.
//! - Writer throttle: when the dirty bytes have not shrunk for `throttle_after`
//!   rounds (writes keep racing the copy), new mirrored writes are paced to half the
//!   copy's rate of the round before, halved again each round that still does not
//!   shrink, until the copy converges (QEMU's auto-converge). Pacing is one shared
//!   clock (an atomic, no lock): each write takes its slot on it and waits in its
//!   channel until then, never longer than `max_write_delay`. The progress says
//!   whether writes are throttled; the final pause lifts it.
//! - Failure: a destination error (a mirrored write or a copy) fails the migration
//!   ([`State::Failed`], with the reason); the source keeps serving and every host
//!   write still completes with the source's status. [`Migration::cancel`] stops the
//!   copy at any point ([`State::Cancelled`]). Either way, the caller takes the mirror
//!   out and serves the source alone: nothing on the source was changed.
//!
//! Not here: connecting the destination, switching the hosts' paths (ANA), and the
//! control plane's state machine; they build on this.

mod channel;
mod copier;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::*};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lightpool_bdev::{Bdev, BdevError, BdevInfo, IoChannel};

/// Where a migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The copier walks the regions (round 1: all of them).
    Copying,
    /// New writes are held while the last dirty regions are copied.
    Pausing,
    /// The destination holds what the source holds; the mirror keeps it so.
    Synced,
    /// The destination failed: the reason is in [`Progress::error`].
    Failed,
    Cancelled,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Copying,
            1 => State::Pausing,
            2 => State::Synced,
            3 => State::Failed,
            _ => State::Cancelled,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Copying => "copying",
            State::Pausing => "pausing",
            State::Synced => "synced",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }
}

/// How a migration copies.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// Bytes per region of the dirty map (and per copy request); a multiple of the
    /// block size.
    pub region_bytes: u64,
    /// Bytes per second the copy reads at most (0: no limit).
    pub rate_limit: u64,
    /// Rounds after which the copier pauses writes whatever is still dirty.
    pub max_rounds: u32,
    /// The copier pauses writes once at most this many bytes are dirty and their copy
    /// (at what a region's copy took lately) fits `max_pause`.
    pub final_dirty_bytes: u64,
    /// The longest the final pause's copy of what is dirty is expected to take;
    /// until it fits, the copier runs another round (`max_rounds` bounds them).
    pub max_pause: Duration,
    /// Rounds without fewer dirty bytes before new writes are throttled (0: never).
    pub throttle_after: u32,
    /// The longest a throttled write is held back.
    pub max_write_delay: Duration,
}

impl Default for MigrateOptions {
    fn default() -> MigrateOptions {
        MigrateOptions {
            region_bytes: 1 << 20,
            rate_limit: 0,
            max_rounds: 16,
            final_dirty_bytes: 8 << 20,
            max_pause: Duration::from_millis(5),
            throttle_after: 2,
            max_write_delay: Duration::from_millis(10),
        }
    }
}

/// What a migration has done.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub state: State,
    /// The round under way (1 is the full copy).
    pub round: u32,
    /// Bytes the copier has copied, all rounds.
    pub copied_bytes: u64,
    pub total_bytes: u64,
    /// Bytes the dirty map holds now (round 1: what is not copied yet counts too).
    pub dirty_bytes: u64,
    /// How long writes were held at the pause.
    pub pause: Option<Duration>,
    pub elapsed: Duration,
    /// At the copy rate so far, until the dirty bytes are copied.
    pub eta: Option<Duration>,
    pub error: Option<String>,
    /// New writes are slowed down: the copy did not converge.
    pub throttled: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Bdev(#[from] BdevError),
}

/// The state the mirror's channels and the copier share.
pub(crate) struct Shared {
    pub(crate) source: Arc<dyn Bdev>,
    pub(crate) dest: Arc<dyn Bdev>,
    pub(crate) opts: MigrateOptions,
    pub(crate) region_blocks: u64,
    pub(crate) regions: u64,
    /// One bit per region.
    pub(crate) dirty: Vec<AtomicU64>,
    /// Per region: odd while the copier copies it.
    pub(crate) gen: Vec<AtomicU32>,
    pub(crate) state: AtomicU8,
    /// Writes are held (the final pause).
    pub(crate) paused: AtomicBool,
    /// Mirrored writes between their look at the pause and their dirty mark.
    pub(crate) completing: AtomicU64,
    /// Writes that raced a copy once no round would follow and wrote their data to the
    /// destination again.
    pub(crate) resent: AtomicU64,
    pub(crate) round: AtomicU32,
    pub(crate) copied: AtomicU64,
    /// Regions round 1 has not reached yet.
    pub(crate) uncopied: AtomicU64,
    pub(crate) cancel: AtomicBool,
    pub(crate) error: Mutex<Option<String>>,
    pub(crate) pause: Mutex<Option<Duration>>,
    pub(crate) started: Instant,
    /// Writer throttle: nanoseconds of the shared clock each KiB written takes
    /// (0: not throttled).
    pub(crate) throttle_ns_per_kib: AtomicU64,
    /// The shared clock: nanoseconds since `started` from which the next write may go.
    pub(crate) throttle_next: AtomicU64,
    /// How many times the copier polled its channels (it sleeps between polls).
    pub(crate) copy_polls: AtomicU64,
    /// Regions dirty when the final pause began.
    pub(crate) pause_regions: AtomicU64,
}

impl Shared {
    pub(crate) fn state(&self) -> State {
        State::from_u8(self.state.load(Acquire))
    }

    pub(crate) fn set_state(&self, s: State) {
        self.state.store(s as u8, Release);
    }

    /// The migration failed; the first reason stays.
    pub(crate) fn fail(&self, why: String) {
        let mut e = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if e.is_none() {
            tracing::warn!(why, "migration failed; the source serves on");
            *e = Some(why);
        }
        drop(e);
        self.throttle(0);
        self.set_state(State::Failed);
        self.paused.store(false, Release);
    }

    pub(crate) fn active(&self) -> bool {
        matches!(
            self.state(),
            State::Copying | State::Pausing | State::Synced
        )
    }

    /// No round follows any more (the final pause has begun, or the copy is synced):
    /// a write that raced a copy sends its data to the destination again instead of
    /// dirtying its region.
    pub(crate) fn late(&self) -> bool {
        self.paused.load(SeqCst) || self.state() == State::Synced
    }

    /// Whether no copy of regions `first..=last` is under way (every generation even).
    pub(crate) fn uncopied_now(&self, first: u64, last: u64) -> bool {
        (first..=last).all(|r| self.gen[r as usize].load(SeqCst).is_multiple_of(2))
    }

    pub(crate) fn mark_dirty(&self, region: u64) {
        self.dirty[(region / 64) as usize].fetch_or(1 << (region % 64), AcqRel);
    }

    /// Takes region `r`'s dirty bit: whether it was set.
    pub(crate) fn take_dirty(&self, r: u64) -> bool {
        let bit = 1u64 << (r % 64);
        self.dirty[(r / 64) as usize].fetch_and(!bit, AcqRel) & bit != 0
    }

    pub(crate) fn dirty_regions(&self) -> u64 {
        self.dirty
            .iter()
            .map(|w| u64::from(w.load(Acquire).count_ones()))
            .sum()
    }

    pub(crate) fn region_of(&self, lba: u64) -> u64 {
        lba / self.region_blocks
    }

    pub(crate) fn region_bytes(&self) -> u64 {
        self.opts.region_bytes
    }

    /// Nanoseconds since the migration started.
    pub(crate) fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// A throttled write of `bytes` takes its slot on the shared clock: when (in
    /// [`Shared::now_ns`] time) it may go; `None` when writes are not throttled or it
    /// may go now.
    pub(crate) fn throttle_slot(&self, bytes: u64) -> Option<u64> {
        let per_kib = self.throttle_ns_per_kib.load(Relaxed);
        if per_kib == 0 {
            return None;
        }
        let now = self.now_ns();
        let cost = bytes.saturating_mul(per_kib) / 1024;
        let max = self.opts.max_write_delay.as_nanos() as u64;
        let mut next = self.throttle_next.load(Relaxed);
        loop {
            // Its slot: after the last one taken, never further than the bound.
            let start = next.max(now).min(now + max);
            match self
                .throttle_next
                .compare_exchange_weak(next, start + cost, AcqRel, Relaxed)
            {
                Ok(_) => return (start > now).then_some(start),
                Err(n) => next = n,
            }
        }
    }

    /// Throttles new writes to `bytes_per_s` (0: no more).
    pub(crate) fn throttle(&self, bytes_per_s: u64) {
        let per_kib = (1_000_000_000u64 * 1024)
            .checked_div(bytes_per_s)
            .map_or(0, |n| n.max(1));
        self.throttle_ns_per_kib.store(per_kib, Release);
    }
}

/// A migration under way: the copier thread and what it shares with the mirror.
pub struct Migration {
    sh: Arc<Shared>,
    copier: Mutex<Option<JoinHandle<()>>>,
}

/// The block device served in the volume's place while it moves.
pub struct MirrorBdev {
    sh: Arc<Shared>,
    info: BdevInfo,
}

impl Migration {
    /// Serves `source` through the returned mirror (put it where the source was
    /// served) and starts copying it to `dest`, which must be at least as large and
    /// have the same block size.
    pub fn start(
        name: &str,
        source: Arc<dyn Bdev>,
        dest: Arc<dyn Bdev>,
        opts: MigrateOptions,
    ) -> Result<(Arc<Migration>, Arc<MirrorBdev>), MigrateError> {
        let (m, mirror) = Migration::prepare(name, source, dest, opts)?;
        m.go()?;
        Ok((m, mirror))
    }

    /// As [`Migration::start`], without starting the copy: the mirror mirrors from
    /// now on, and [`Migration::go`] starts the copy once no write reaches the source
    /// any more except through the mirror (a namespace switched to the mirror has let
    /// go of its channels to the source).
    pub fn prepare(
        name: &str,
        source: Arc<dyn Bdev>,
        dest: Arc<dyn Bdev>,
        opts: MigrateOptions,
    ) -> Result<(Arc<Migration>, Arc<MirrorBdev>), MigrateError> {
        let (si, di) = (source.info().clone(), dest.info().clone());
        if si.block_size != di.block_size {
            return Err(MigrateError::Invalid(format!(
                "{name}: the destination's blocks are {} bytes, the source's {}",
                di.block_size, si.block_size
            )));
        }
        if di.num_blocks < si.num_blocks || di.read_only {
            return Err(MigrateError::Invalid(format!(
                "{name}: the destination ({} blocks{}) cannot take the source's {} blocks",
                di.num_blocks,
                if di.read_only { ", read-only" } else { "" },
                si.num_blocks
            )));
        }
        let bs = u64::from(si.block_size);
        if opts.region_bytes == 0
            || !opts.region_bytes.is_multiple_of(bs)
            || opts.region_bytes > 64 << 20
        {
            return Err(MigrateError::Invalid(format!(
                "{name}: a region of {} bytes is not a whole number of {bs}-byte blocks up to 64 MiB",
                opts.region_bytes
            )));
        }
        let region_blocks = opts.region_bytes / bs;
        let regions = si.num_blocks.div_ceil(region_blocks);
        let sh = Arc::new(Shared {
            source,
            dest,
            region_blocks,
            regions,
            dirty: (0..regions.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            gen: (0..regions).map(|_| AtomicU32::new(0)).collect(),
            state: AtomicU8::new(State::Copying as u8),
            paused: AtomicBool::new(false),
            completing: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            round: AtomicU32::new(1),
            copied: AtomicU64::new(0),
            uncopied: AtomicU64::new(regions),
            cancel: AtomicBool::new(false),
            error: Mutex::new(None),
            pause: Mutex::new(None),
            started: Instant::now(),
            throttle_ns_per_kib: AtomicU64::new(0),
            throttle_next: AtomicU64::new(0),
            copy_polls: AtomicU64::new(0),
            pause_regions: AtomicU64::new(0),
            opts,
        });
        let info = BdevInfo {
            name: format!("{name} (migrating)"),
            ..si
        };
        let mirror = Arc::new(MirrorBdev {
            sh: sh.clone(),
            info,
        });
        Ok((
            Arc::new(Migration {
                sh,
                copier: Mutex::new(None),
            }),
            mirror,
        ))
    }

    /// Starts the copy (once).
    pub fn go(&self) -> Result<(), MigrateError> {
        let mut c = self.copier.lock().unwrap_or_else(|e| e.into_inner());
        if c.is_some() {
            return Ok(());
        }
        let sh = self.sh.clone();
        *c = Some(
            std::thread::Builder::new()
                .name("lp-migrate".into())
                .spawn(move || copier::run(&sh))
                .map_err(|e| MigrateError::Invalid(format!("no copier thread: {e}")))?,
        );
        Ok(())
    }

    /// The device being moved and the one it moves to.
    pub fn devices(&self) -> (Arc<dyn Bdev>, Arc<dyn Bdev>) {
        (self.sh.source.clone(), self.sh.dest.clone())
    }

    pub fn progress(&self) -> Progress {
        let sh = &self.sh;
        let rb = sh.region_bytes();
        let total = sh.regions * rb;
        let dirty = (sh.dirty_regions() + sh.uncopied.load(Acquire)) * rb;
        let copied = sh.copied.load(Acquire);
        let elapsed = sh.started.elapsed();
        let rate = copied as f64 / elapsed.as_secs_f64().max(1e-3);
        let state = sh.state();
        Progress {
            state,
            round: sh.round.load(Acquire),
            copied_bytes: copied,
            total_bytes: total,
            dirty_bytes: dirty,
            pause: *sh.pause.lock().unwrap_or_else(|e| e.into_inner()),
            elapsed,
            eta: (rate > 0.0 && matches!(state, State::Copying | State::Pausing))
                .then(|| Duration::from_secs_f64(dirty as f64 / rate)),
            error: sh.error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            throttled: sh.throttle_ns_per_kib.load(Acquire) != 0,
        }
    }

    /// Stops the copy (the mirror keeps serving the source; take it out).
    pub fn cancel(&self) {
        self.sh.cancel.store(true, Release);
    }

    /// Waits for the copier to end (synced, failed or cancelled) and says how.
    pub fn wait(&self) -> Progress {
        let h = self.copier.lock().unwrap_or_else(|e| e.into_inner()).take();
        match h {
            Some(h) => {
                let _ = h.join();
            }
            // Never started: nothing to wait for.
            None if self.sh.active() && self.sh.cancel.load(Acquire) => {
                self.sh.set_state(State::Cancelled)
            }
            None => {}
        }
        self.progress()
    }
}

impl Drop for Migration {
    fn drop(&mut self) {
        self.cancel();
        let _ = self.wait();
    }
}

impl Bdev for MirrorBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn kind(&self) -> &'static str {
        "migration"
    }

    fn children(&self) -> Vec<Arc<dyn Bdev>> {
        vec![self.sh.source.clone(), self.sh.dest.clone()]
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(channel::MirrorChannel::new(self.sh.clone())?))
    }
}
