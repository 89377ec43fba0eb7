//! Arrays over several block devices, each itself a block device: concat, RAID0
//! (striped) and RAID1 (mirrored).
//!
//! Written only against the `lightpool-bdev` interface: an array's members are any
//! [`Bdev`]s (RAM, io_uring files and block devices, VFIO namespaces, other stacked
//! devices), named in [`Bdev::children`], and the array hands itself over in a hot
//! upgrade through [`Bdev::export`] and the [`RaidAdopter`] of its kind.
//!
//! - Concat and RAID0 split a request that crosses members and complete it when every
//!   part has (see `striped`).
//! - RAID1 reads from one member, writes to all, drops a member that fails without
//!   failing the request, keeps a write-intent bitmap on the members so that a member
//!   that returns is resynced by copying only what changed while it was away (and an
//!   unclean stop needs no full resync), and rebuilds a replacement in the background
//!   while serving (see `mirror`).
//! - Every member carries a superblock (array UUID, role, events, clean flag, slot
//!   table, geometry; checksummed, in two alternating copies): arrays are assembled
//!   from them ([`RaidBdev::open`]), and assembly refuses, naming the device and what is
//!   wrong, what it cannot trust. The format is in docs/raid-format.md.
//! - [`RaidBdev`]'s methods are the typed interface the daemon's configuration calls at
//!   start and the management API calls at run time: create, assemble, status, fail,
//!   remove, add (a returning member or a replacement). A [`Registry`] finds arrays by
//!   name.
//!
//! Nothing on the I/O path takes a lock, allocates on a warm channel or blocks.

mod assemble;
pub mod format;
mod io;
mod manage;
mod mirror;
mod persist;
mod slab;
mod striped;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use lightpool_bdev::{Bdev, BdevError, BdevInfo, Export, IoChannel};

pub use format::Level;
pub use manage::{ArrayState, MemberState, MemberStatus, RaidStatus, Recovery};
pub use persist::RaidAdopter;

/// The [`Bdev::kind`]s of arrays, one per level.
pub const KINDS: [&str; 3] = ["concat", "raid0", "raid1"];

/// Errors creating, assembling or managing an array.
#[derive(Debug, thiserror::Error)]
pub enum RaidError {
    /// A member cannot be used; names the array, the device and why.
    #[error("array {array}: {device}: {reason}")]
    Member {
        array: String,
        device: String,
        reason: String,
    },
    /// The array refuses the operation (too few members, a slot in use, ...).
    #[error("{0}")]
    Refused(String),
    /// The options make no sense.
    #[error("{0}")]
    Invalid(String),
    /// The array cannot do this now (being handed over in a hot upgrade).
    #[error("{0}")]
    Busy(String),
    #[error("array {array}: {source}")]
    Device {
        array: String,
        #[source]
        source: BdevError,
    },
}

impl From<RaidError> for BdevError {
    fn from(e: RaidError) -> BdevError {
        BdevError::Invalid(e.to_string())
    }
}

/// How to create or assemble an array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayOptions {
    /// The array's name (at most 32 bytes): the block device's name, and what the
    /// superblocks record.
    pub name: String,
    pub level: Level,
    /// RAID0: bytes per strip (a multiple of the block size). Default 64 KiB.
    pub strip_bytes: u64,
    /// RAID1: bytes one bitmap bit covers, a power of two of 4 KiB or more; `None`:
    /// 1 MiB, or more for arrays beyond 1 TiB (at most about a million regions).
    pub region_bytes: Option<u64>,
    /// RAID1: bytes per second a resync or rebuild copies at most (0: no limit).
    pub rebuild_rate: u64,
    /// RAID1: how long a region must stay idle before its bitmap bit is cleared.
    pub bitmap_clear_delay: Duration,
    /// RAID1: start without members the array last saw active (they may hold newer
    /// data: starting without them could roll writes back).
    pub allow_degraded: bool,
    /// RAID1 creation: the members' data areas are known to be identical (freshly
    /// created files, say); otherwise they are zeroed (Write Zeroes) at creation.
    pub assume_clean: bool,
}

impl ArrayOptions {
    pub fn new(name: &str, level: Level) -> ArrayOptions {
        ArrayOptions {
            name: name.to_string(),
            level,
            strip_bytes: 64 << 10,
            region_bytes: None,
            rebuild_rate: 200 << 20,
            bitmap_clear_delay: Duration::from_secs(5),
            allow_degraded: false,
            assume_clean: false,
        }
    }
}

/// An array: a block device over its members.
pub struct RaidBdev {
    me: Weak<RaidBdev>,
    info: BdevInfo,
    level: Level,
    uuid: [u8; 16],
    inner: Inner,
}

pub(crate) enum Inner {
    Striped(Box<striped::Striped>),
    Mirror(Arc<mirror::Mirror>),
}

impl RaidBdev {
    fn build(info: BdevInfo, level: Level, uuid: [u8; 16], inner: Inner) -> Arc<RaidBdev> {
        Arc::new_cyclic(|me| RaidBdev {
            me: me.clone(),
            info,
            level,
            uuid,
            inner,
        })
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// The array's UUID as 8-4-4-4-12 hex.
    pub fn uuid(&self) -> String {
        format_uuid(&self.uuid)
    }

    /// Starts the RAID1 background thread (once).
    fn start(&self) -> Result<(), BdevError> {
        if let Inner::Mirror(m) = &self.inner {
            if m.ctl.thread.get().is_none() {
                mirror::spawn(m)?;
            }
        }
        Ok(())
    }
}

impl Drop for RaidBdev {
    /// RAID1: the background thread stops and, unless the array was handed to a
    /// successor, marks it clean on its members.
    fn drop(&mut self) {
        if let Inner::Mirror(m) = &self.inner {
            m.stop();
        }
    }
}

impl Bdev for RaidBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn kind(&self) -> &'static str {
        self.level.name()
    }

    fn children(&self) -> Vec<Arc<dyn Bdev>> {
        match &self.inner {
            Inner::Striped(s) => s.members.clone(),
            Inner::Mirror(m) => m.devices(),
        }
    }

    fn export(&self) -> Result<Export, BdevError> {
        persist::export(self)
    }

    /// RAID1: the bitmap, the members' states and recovery progress change while
    /// serving, so they are exported on the drained target (the background thread is
    /// stopped then). Concat and RAID0 hold nothing that changes.
    fn export_at_pause(&self) -> bool {
        matches!(self.inner, Inner::Mirror(_))
    }

    fn adopted(&self) {
        if let Err(e) = self.start() {
            tracing::error!(array = %self.info.name, error = %e, "cannot start the array's background thread");
        }
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        let me = self.me.upgrade().ok_or_else(|| {
            BdevError::Invalid(format!("{}: array is being dropped", self.info.name))
        })?;
        match &self.inner {
            Inner::Striped(s) => s.open_channel(me),
            Inner::Mirror(m) => Ok(m.open_channel(me, m.clone())),
        }
    }
}

/// The arrays of a process, by name, for the control path (configuration, management
/// API, adopters). Holds them weakly: an array lives as long as what serves it.
#[derive(Default)]
pub struct Registry {
    arrays: Mutex<BTreeMap<String, Weak<RaidBdev>>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Records `a` under its name; refused when a live array has that name.
    pub fn insert(&self, a: &Arc<RaidBdev>) -> Result<(), RaidError> {
        let mut m = self.arrays.lock().expect("registry poisoned");
        if m.get(a.name()).is_some_and(|w| w.strong_count() > 0) {
            return Err(RaidError::Refused(format!(
                "an array named {} exists already",
                a.name()
            )));
        }
        m.insert(a.name().to_string(), Arc::downgrade(a));
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<Arc<RaidBdev>> {
        self.arrays
            .lock()
            .expect("registry poisoned")
            .get(name)
            .and_then(Weak::upgrade)
    }

    /// Every live array, by name.
    pub fn list(&self) -> Vec<Arc<RaidBdev>> {
        let mut m = self.arrays.lock().expect("registry poisoned");
        m.retain(|_, w| w.strong_count() > 0);
        m.values().filter_map(Weak::upgrade).collect()
    }
}

pub(crate) fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// 16 random bytes (array and member UUIDs), version 4 style.
pub(crate) fn new_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    // SAFETY: getrandom writes at most `u.len()` bytes into `u`.
    let n = unsafe { libc::getrandom(u.as_mut_ptr().cast(), u.len(), 0) };
    if n != u.len() as isize {
        // No entropy source: time and a counter still make arrays distinct here.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        u[..8].copy_from_slice(&t.to_le_bytes());
        let c =
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed) ^ u64::from(std::process::id());
        u[8..].copy_from_slice(&c.to_le_bytes());
    }
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

#[cfg(test)]
mod tests;
