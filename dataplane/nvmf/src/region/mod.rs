//! The state region: the state that must outlive a process (hot upgrade, or both
//! processes of an upgrade dying), kept in a shared-memory file from the moment each
//! object is created rather than serialized at handover time.
//!
//! Layout (all little-endian, offsets in bytes):
//!
//! ```text
//! 0      HeaderStatic   magic "LPREGION", layout, region id, length, one table
//!                       descriptor per record kind, the target's options; checksummed
//! 256    HeaderMut      checksum of the static header, owner pid, configuration
//!                       generation, discovery generation counter, two blob descriptors
//! 4096   tables         one per kind (subsystem, host, namespace, ANA group, listener,
//!                       controller, queue): `count` records of `rec_size` bytes, each
//!                       a RecHead (state, generation, sequence, CRC32C) then its body
//! len    blobs          past the mapping, by pread/pwrite: the daemon's boot blob (at
//!                       start) and the handover blob (at pause time), each with a CRC
//! ```
//!
//! Records are allocated when their object is created (a compare-and-swap on the
//! record's state, no lock), rewritten where it changes and freed when it goes away.
//! Control-path records are written seqlock style (sequence odd, body, CRC, sequence
//! even) so that a torn or damaged record is detected. A queue record's checksummed
//! part is written at creation and Connect; its SQ head, slot states and receive
//! position are plain stores by the reactor that owns the queue (the I/O path: no
//! system call, no lock, no allocation) and are checked for sense when read.

mod records;
#[cfg(test)]
mod tests;

pub use records::*;

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::MmapRaw;

/// The layout this code writes. Bump it whenever a record, the header or the meaning
/// of a field changes. 3: the boot and handover blobs are postcard, not bincode.
/// 4: controllers record the Changed Namespace List; the boot blob lists every block
/// device by name with how it was made; the handover blob carries the API socket.
pub const LAYOUT: u32 = 4;
pub const MAGIC: [u8; 8] = *b"LPREGION";

const HEADER_LEN: usize = 4096;
const MUT_OFFSET: usize = 256;
/// Room for the daemon's boot blob past the mapping.
const BOOT_CAP: u64 = 1 << 20;
const HEAD: usize = size_of::<RecHead>();
/// Within a queue record: head, QueueRec, QueueDyn, then the slots.
const QDYN_OFFSET: usize = HEAD + size_of::<QueueRec>();
const QSLOTS_OFFSET: usize = QDYN_OFFSET + size_of::<QueueDyn>();

/// Errors of the state region (never raised on the I/O path).
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("state region I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the state region does not start with the LightPool region magic")]
    BadMagic,
    #[error("state layout {found} cannot be read by this binary (it reads layout {LAYOUT})")]
    Layout { found: u32 },
    #[error("the state region is damaged: {0}")]
    Damaged(String),
    #[error("{kind:?} record {index} is damaged (checksum mismatch)")]
    Corrupt { kind: Kind, index: u32 },
    #[error("{kind:?} record {index} was being written when it was read (torn)")]
    Torn { kind: Kind, index: u32 },
    #[error("the state region has no free {0:?} record left")]
    Full(Kind),
    #[error("{field} is {len} bytes long; the state region holds at most {max}")]
    TooLong {
        field: String,
        max: usize,
        len: usize,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("this process does not own the state region yet")]
    NotOwner,
}

/// The kinds of record, one table each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Kind {
    Subsystem = 0,
    Host,
    Namespace,
    AnaGroup,
    Listener,
    Controller,
    Queue,
}

pub const KINDS: [Kind; 7] = [
    Kind::Subsystem,
    Kind::Host,
    Kind::Namespace,
    Kind::AnaGroup,
    Kind::Listener,
    Kind::Controller,
    Kind::Queue,
];

/// How many records of each kind a region holds, and the slots of a queue record.
#[derive(Debug, Clone, Copy)]
pub struct RegionSizes {
    pub counts: [u32; 7],
    pub slots_per_queue: u16,
}

impl RegionSizes {
    /// Sizes for a target: `slots` is the most slots one queue uses.
    pub fn for_target(slots: u16) -> RegionSizes {
        RegionSizes {
            counts: [64, 1024, 2048, 2048, 64, 1024, 4096],
            slots_per_queue: slots,
        }
    }
}

/// Target options as the region records them (the successor checks they match).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct RegionOptions {
    pub max_queue_depth: u16,
    pub max_admin_queue_depth: u16,
    pub max_io_queues: u16,
    pub _pad: u16,
    pub in_capsule_data_size: u32,
    pub max_transfer_size: u32,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct TableDesc {
    offset: u64,
    rec_size: u32,
    count: u32,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct HeaderStatic {
    magic: [u8; 8],
    layout: u32,
    slots_per_queue: u32,
    region_id: u64,
    len: u64,
    tables: [TableDesc; 7],
    opts: RegionOptions,
}

#[repr(C)]
struct HeaderMut {
    static_crc: AtomicU32,
    owner_pid: AtomicU32,
    config_gen: AtomicU64,
    genctr: AtomicU64,
    blobs: [BlobDesc; 2],
    /// Per table, one past the highest record ever allocated: scans stop there, so a
    /// reader touches only the pages that were ever used.
    high: [AtomicU32; 7],
}

#[repr(C)]
struct BlobDesc {
    seq: AtomicU32,
    crc: AtomicU32,
    len: AtomicU64,
}

/// The head of every record.
#[repr(C)]
struct RecHead {
    state: AtomicU32,
    gen: AtomicU32,
    seq: AtomicU32,
    crc: AtomicU32,
}

const REC_FREE: u32 = 0;
const REC_LIVE: u32 = 1;

// SAFETY: #[repr(C)] integers without padding (sizes asserted below).
unsafe impl Pod for TableDesc {}
// SAFETY: as above.
unsafe impl Pod for HeaderStatic {}
// SAFETY: as above.
unsafe impl Pod for RegionOptions {}
const _: () = assert!(size_of::<TableDesc>() == 16);
const _: () = assert!(size_of::<RegionOptions>() == 16);
const _: () = assert!(size_of::<HeaderStatic>() == 32 + 7 * 16 + 16);
const _: () = assert!(size_of::<HeaderStatic>() <= MUT_OFFSET);
const _: () = assert!(MUT_OFFSET + size_of::<HeaderMut>() <= HEADER_LEN);

/// Which blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blob {
    /// Written by the daemon when it starts serving: what it needs to restart.
    Boot = 0,
    /// Written at pause time: what cannot live in records (bytes read and not consumed,
    /// data of held commands, descriptor indices).
    Handover = 1,
}

/// A mapped state region.
pub struct Region {
    file: File,
    map: MmapRaw,
    hdr: HeaderStatic,
    /// Whether this process may write (false in a successor until the old process lets
    /// go: it must not touch the old one's state before then).
    owned: AtomicBool,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("id", &self.hdr.region_id)
            .field("len", &self.hdr.len)
            .finish()
    }
}

fn crc(b: &[u8]) -> u32 {
    lightpool_spec::tcp::crc32c(b)
}

impl Region {
    /// Lay out a new region in `file` (empty: a fresh memfd or file) and map it; this
    /// process owns it. `layout` is what the header says (a test hook may lie).
    pub fn create(
        file: File,
        sizes: RegionSizes,
        opts: RegionOptions,
        layout: u32,
    ) -> Result<Arc<Region>, RegionError> {
        let mut tables = [TableDesc {
            offset: 0,
            rec_size: 0,
            count: 0,
        }; 7];
        let mut off = HEADER_LEN as u64;
        for k in KINDS {
            let body = match k {
                Kind::Subsystem => size_of::<SubsystemRec>(),
                Kind::Host => size_of::<HostRec>(),
                Kind::Namespace => size_of::<NamespaceRec>(),
                Kind::AnaGroup => size_of::<AnaGroupRec>(),
                Kind::Listener => size_of::<ListenerRec>(),
                Kind::Controller => size_of::<ControllerRec>(),
                Kind::Queue => {
                    size_of::<QueueRec>()
                        + size_of::<QueueDyn>()
                        + usize::from(sizes.slots_per_queue) * size_of::<SlotRec>()
                }
            };
            // Records start on cache lines: two reactors never share one.
            let rec_size = (HEAD + body).next_multiple_of(64) as u32;
            let count = sizes.counts[k as usize];
            tables[k as usize] = TableDesc {
                offset: off,
                rec_size,
                count,
            };
            off += u64::from(rec_size) * u64::from(count);
        }
        let len = off.next_multiple_of(4096);
        let mut id = [0u8; 8];
        // SAFETY: getrandom writes at most the 8 bytes of `id`.
        let got = unsafe { libc::getrandom(id.as_mut_ptr().cast(), 8, 0) };
        if got != 8 {
            // Not fatal: the id only guards against mixing up regions.
            id = (std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15).to_le_bytes();
        }
        let hdr = HeaderStatic {
            magic: MAGIC,
            layout,
            slots_per_queue: u32::from(sizes.slots_per_queue),
            region_id: u64::from_le_bytes(id),
            len,
            tables,
            opts,
        };
        file.set_len(len + BOOT_CAP)?;
        let map = MmapRaw::map_raw(&file)?;
        let r = Region {
            file,
            map,
            hdr,
            owned: AtomicBool::new(true),
        };
        // SAFETY: the mapping is at least HEADER_LEN bytes and HeaderStatic is Pod.
        unsafe {
            std::ptr::write(r.map.as_mut_ptr().cast::<HeaderStatic>(), hdr);
        }
        let m = r.mut_hdr();
        m.static_crc.store(crc(hdr.as_bytes()), Ordering::Release);
        m.owner_pid.store(std::process::id(), Ordering::Release);
        m.genctr.store(1, Ordering::Release);
        Ok(Arc::new(r))
    }

    /// Map an existing region and check its header: magic, a layout this binary reads,
    /// the header checksum, and that the file is as long as the header says. The
    /// process does not own it until [`Region::take_ownership`].
    pub fn open(file: File) -> Result<Arc<Region>, RegionError> {
        let flen = file.metadata()?.len();
        if flen < HEADER_LEN as u64 {
            return Err(RegionError::Damaged(format!(
                "{flen} bytes is shorter than the region header"
            )));
        }
        let mut raw = [0u8; size_of::<HeaderStatic>()];
        file.read_exact_at(&mut raw, 0)?;
        // SAFETY: HeaderStatic is Pod and `raw` is exactly its size.
        let hdr: HeaderStatic = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
        if hdr.magic != MAGIC {
            return Err(RegionError::BadMagic);
        }
        if hdr.layout != LAYOUT {
            return Err(RegionError::Layout { found: hdr.layout });
        }
        let mut c = [0u8; 4];
        file.read_exact_at(&mut c, MUT_OFFSET as u64)?;
        if u32::from_le_bytes(c) != crc(hdr.as_bytes()) {
            return Err(RegionError::Damaged("header checksum mismatch".into()));
        }
        if flen < hdr.len {
            return Err(RegionError::Damaged(format!(
                "{flen} bytes, the header says {}",
                hdr.len
            )));
        }
        let mut end = HEADER_LEN as u64;
        for (i, t) in hdr.tables.iter().enumerate() {
            let body_min = match KINDS[i] {
                Kind::Queue => QSLOTS_OFFSET + hdr.slots_per_queue as usize * 4,
                _ => HEAD,
            };
            if t.offset != end || (t.rec_size as usize) < body_min || t.rec_size % 64 != 0 {
                return Err(RegionError::Damaged(format!(
                    "table {:?} is out of place",
                    KINDS[i]
                )));
            }
            end += u64::from(t.rec_size) * u64::from(t.count);
        }
        if end > hdr.len {
            return Err(RegionError::Damaged("tables run past the end".into()));
        }
        let map = MmapRaw::map_raw(&file)?;
        Ok(Arc::new(Region {
            file,
            map,
            hdr,
            owned: AtomicBool::new(false),
        }))
    }

    pub fn id(&self) -> u64 {
        self.hdr.region_id
    }

    pub fn layout(&self) -> u32 {
        self.hdr.layout
    }

    pub fn options(&self) -> RegionOptions {
        self.hdr.opts
    }

    pub fn slots_per_queue(&self) -> u16 {
        self.hdr.slots_per_queue as u16
    }

    pub fn count(&self, k: Kind) -> u32 {
        self.hdr.tables[k as usize].count
    }

    /// One past the highest record of kind `k` ever allocated (what scans look at).
    pub fn high(&self, k: Kind) -> u32 {
        self.mut_hdr().high[k as usize]
            .load(Ordering::Acquire)
            .min(self.count(k))
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The successor, once the old process has let go: from now on this process writes.
    pub fn take_ownership(&self) {
        self.owned.store(true, Ordering::Release);
        self.mut_hdr()
            .owner_pid
            .store(std::process::id(), Ordering::Release);
    }

    pub fn owned(&self) -> bool {
        self.owned.load(Ordering::Acquire)
    }

    pub fn owner_pid(&self) -> u32 {
        self.mut_hdr().owner_pid.load(Ordering::Acquire)
    }

    fn mut_hdr(&self) -> &HeaderMut {
        // SAFETY: HeaderMut lies inside the mapped header page, is made of atomics (any
        // bit pattern is valid), and the mapping lives as long as `self`.
        unsafe { &*self.map.as_ptr().add(MUT_OFFSET).cast::<HeaderMut>() }
    }

    /// Bumped on every change of subsystems, namespaces, ANA states or listeners, so a
    /// successor that read them early knows whether to read them again.
    pub fn config_gen(&self) -> u64 {
        self.mut_hdr().config_gen.load(Ordering::Acquire)
    }

    pub(crate) fn bump_config_gen(&self) {
        if self.owned() {
            self.mut_hdr().config_gen.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn discovery_genctr(&self) -> u64 {
        self.mut_hdr().genctr.load(Ordering::Acquire)
    }

    pub(crate) fn set_discovery_genctr(&self, g: u64) {
        if self.owned() {
            self.mut_hdr().genctr.store(g, Ordering::Release);
        }
    }

    fn rec_ptr(&self, k: Kind, i: u32) -> *mut u8 {
        let t = &self.hdr.tables[k as usize];
        assert!(i < t.count, "{k:?} record {i} is out of range");
        let off = t.offset as usize + i as usize * t.rec_size as usize;
        // SAFETY: open/create checked that every table lies inside the mapping.
        unsafe { self.map.as_mut_ptr().add(off) }
    }

    fn head(&self, k: Kind, i: u32) -> &RecHead {
        // SAFETY: records start on 64-byte boundaries inside the mapping; RecHead is
        // atomics only; the mapping lives as long as `self`.
        unsafe { &*self.rec_ptr(k, i).cast::<RecHead>() }
    }

    /// Take a free record (compare-and-swap on its state; no lock). Returns its index.
    pub fn alloc(&self, k: Kind) -> Result<u32, RegionError> {
        if !self.owned() {
            return Err(RegionError::NotOwner);
        }
        for i in 0..self.count(k) {
            let h = self.head(k, i);
            if h.state.load(Ordering::Relaxed) == REC_FREE
                && h.state
                    .compare_exchange(REC_FREE, REC_LIVE, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                h.gen.fetch_add(1, Ordering::AcqRel);
                self.mut_hdr().high[k as usize].fetch_max(i + 1, Ordering::AcqRel);
                return Ok(i);
            }
        }
        Err(RegionError::Full(k))
    }

    /// Give a record back.
    pub fn free(&self, k: Kind, i: u32) {
        if self.owned() {
            self.head(k, i).state.store(REC_FREE, Ordering::Release);
        }
    }

    /// The generation of a record (bumped each time it is allocated).
    pub fn gen(&self, k: Kind, i: u32) -> u32 {
        self.head(k, i).gen.load(Ordering::Acquire)
    }

    pub fn is_live(&self, k: Kind, i: u32) -> bool {
        self.head(k, i).state.load(Ordering::Acquire) == REC_LIVE
    }

    /// Write a record's checksummed body. Writers of one record must not overlap (each
    /// record has one writer, or its writers hold a lock of their own).
    pub fn write<T: Pod>(&self, k: Kind, i: u32, body: &T) {
        if !self.owned() {
            return;
        }
        let t = &self.hdr.tables[k as usize];
        assert!(
            HEAD + size_of::<T>() <= t.rec_size as usize,
            "{k:?} body too large"
        );
        let h = self.head(k, i);
        h.seq.fetch_add(1, Ordering::AcqRel);
        std::sync::atomic::fence(Ordering::Release);
        // SAFETY: the body fits the record (asserted), the record is inside the mapping,
        // and T is Pod (no alignment beyond 8; records are 64-byte aligned).
        unsafe { std::ptr::write_volatile(self.rec_ptr(k, i).add(HEAD).cast::<T>(), *body) };
        h.crc.store(crc(body.as_bytes()), Ordering::Release);
        h.seq.fetch_add(1, Ordering::AcqRel);
    }

    /// Read a record: `None` if free; an error if it is torn or its checksum is wrong.
    /// Returns its generation beside the body.
    pub fn read<T: Pod>(&self, k: Kind, i: u32) -> Result<Option<(u32, T)>, RegionError> {
        let t = &self.hdr.tables[k as usize];
        assert!(
            HEAD + size_of::<T>() <= t.rec_size as usize,
            "{k:?} body too large"
        );
        let h = self.head(k, i);
        if h.state.load(Ordering::Acquire) != REC_LIVE {
            return Ok(None);
        }
        let s1 = h.seq.load(Ordering::Acquire);
        // SAFETY: as in `write`; T is Pod, so whatever bytes are there are a value.
        let body: T = unsafe { std::ptr::read_volatile(self.rec_ptr(k, i).add(HEAD).cast::<T>()) };
        std::sync::atomic::fence(Ordering::Acquire);
        let c = h.crc.load(Ordering::Acquire);
        let s2 = h.seq.load(Ordering::Acquire);
        if s1 % 2 == 1 || s1 != s2 {
            return Err(RegionError::Torn { kind: k, index: i });
        }
        if c != crc(body.as_bytes()) {
            return Err(RegionError::Corrupt { kind: k, index: i });
        }
        Ok(Some((h.gen.load(Ordering::Acquire), body)))
    }

    /// Live records of a kind, in index order, each read and checked.
    pub fn live<T: Pod>(&self, k: Kind) -> Vec<Result<(u32, u32, T), RegionError>> {
        (0..self.high(k))
            .filter_map(|i| match self.read::<T>(k, i) {
                Ok(Some((g, b))) => Some(Ok((i, g, b))),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            })
            .collect()
    }

    /// The plain-store part of queue record `i`: its dynamic state and slots.
    pub fn queue_dyn(&self, i: u32) -> (QueueDyn, Vec<SlotRec>) {
        let p = self.rec_ptr(Kind::Queue, i);
        let n = self.slots_per_queue() as usize;
        // SAFETY: the queue record holds QueueDyn then `n` slots (checked at open).
        unsafe {
            let d = std::ptr::read_volatile(p.add(QDYN_OFFSET).cast::<QueueDyn>());
            let s = p.add(QSLOTS_OFFSET).cast::<SlotRec>();
            (
                d,
                (0..n).map(|j| std::ptr::read_volatile(s.add(j))).collect(),
            )
        }
    }

    /// A handle through which the owning reactor stores queue `i`'s dynamic state.
    /// With `free_on_drop`, dropping it frees the record (if this process owns it).
    pub fn queue_handle(self: &Arc<Self>, i: u32, free_on_drop: bool) -> QueueShm {
        let p = self.rec_ptr(Kind::Queue, i);
        QueueShm {
            // SAFETY: offsets inside the record (see queue_dyn).
            dyn_: unsafe { p.add(QDYN_OFFSET).cast() },
            // SAFETY: as above.
            slots: unsafe { p.add(QSLOTS_OFFSET).cast() },
            nslots: self.slots_per_queue(),
            index: i,
            free_on_drop,
            region: self.clone(),
        }
    }

    /// Store a blob past the mapping (system calls: never on the I/O path).
    pub fn write_blob(&self, which: Blob, data: &[u8]) -> Result<(), RegionError> {
        if !self.owned() {
            return Err(RegionError::NotOwner);
        }
        let off = match which {
            Blob::Boot => {
                if data.len() as u64 > BOOT_CAP {
                    return Err(RegionError::TooLong {
                        field: "the boot blob".into(),
                        max: BOOT_CAP as usize,
                        len: data.len(),
                    });
                }
                self.hdr.len
            }
            Blob::Handover => self.hdr.len + BOOT_CAP,
        };
        let d = &self.mut_hdr().blobs[which as usize];
        d.seq.fetch_add(1, Ordering::AcqRel);
        self.file.write_all_at(data, off)?;
        d.len.store(data.len() as u64, Ordering::Release);
        d.crc.store(crc(data), Ordering::Release);
        d.seq.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Read a blob back; `None` if it was never written.
    pub fn read_blob(&self, which: Blob) -> Result<Option<Vec<u8>>, RegionError> {
        let d = &self.mut_hdr().blobs[which as usize];
        let s1 = d.seq.load(Ordering::Acquire);
        if s1 == 0 {
            return Ok(None);
        }
        let len = d.len.load(Ordering::Acquire);
        let off = match which {
            Blob::Boot => self.hdr.len,
            Blob::Handover => self.hdr.len + BOOT_CAP,
        };
        if len > (1 << 32) {
            return Err(RegionError::Damaged(format!(
                "{which:?} blob of {len} bytes"
            )));
        }
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, off)?;
        let c = d.crc.load(Ordering::Acquire);
        if s1 % 2 == 1 || d.seq.load(Ordering::Acquire) != s1 {
            return Err(RegionError::Damaged(format!(
                "{which:?} blob was being written"
            )));
        }
        if crc(&buf) != c {
            return Err(RegionError::Damaged(format!(
                "{which:?} blob checksum mismatch"
            )));
        }
        Ok(Some(buf))
    }
}

/// The owning reactor's handle on one queue record: plain stores into the mapping.
/// Not `Send` (raw pointers): it stays on the reactor that owns the queue.
pub struct QueueShm {
    dyn_: *mut QueueDyn,
    slots: *mut SlotRec,
    nslots: u16,
    index: u32,
    free_on_drop: bool,
    region: Arc<Region>,
}

impl QueueShm {
    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// Record a slot's state and command ID.
    #[inline]
    pub fn set_slot(&self, slot: u16, state: u8, cid: u16) {
        if slot < self.nslots {
            // SAFETY: slot < nslots, inside this queue's record; only the owning reactor
            // writes it (one writer), and readers read while it is frozen.
            unsafe {
                std::ptr::write_volatile(
                    self.slots.add(usize::from(slot)),
                    SlotRec {
                        state,
                        _pad: 0,
                        cid,
                    },
                )
            };
        }
    }

    /// Record a slot's state, keeping its command ID.
    #[inline]
    pub fn set_slot_state(&self, slot: u16, state: u8) {
        if slot < self.nslots {
            // SAFETY: as in set_slot.
            unsafe {
                std::ptr::write_volatile(
                    std::ptr::addr_of_mut!((*self.slots.add(usize::from(slot))).state),
                    state,
                )
            };
        }
    }

    #[inline]
    pub fn set_sqhd(&self, sqhd: u16) {
        // SAFETY: dyn_ points into this queue's record; one writer (see set_slot).
        unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*self.dyn_).sqhd), sqhd) };
    }

    #[inline]
    pub fn set_rx(&self, rx: &RxPos) {
        // SAFETY: as in set_sqhd.
        unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*self.dyn_).rx), *rx) };
    }

    /// Queue state and SQ flow control (control path: Connect, Disconnect).
    /// The queue's state code and flags: SQ flow control disabled (bit 0 of the
    /// `sq_flow_disabled` byte), host not yet authenticated (bit 1).
    pub fn set_flags(&self, state: u8, sq_flow_disabled: bool, authenticating: bool) {
        // SAFETY: as in set_sqhd.
        unsafe {
            std::ptr::write_volatile(std::ptr::addr_of_mut!((*self.dyn_).state), state);
            std::ptr::write_volatile(
                std::ptr::addr_of_mut!((*self.dyn_).sq_flow_disabled),
                u8::from(sq_flow_disabled) | (u8::from(authenticating) << 1),
            );
        }
    }

    /// Forget every slot (a fresh queue).
    pub fn clear(&self) {
        for i in 0..self.nslots {
            self.set_slot(i, slot::FREE, 0);
        }
        self.set_sqhd(0);
        self.set_flags(0, false, false);
        self.set_rx(&RxPos::default());
    }

    /// Rewrite the checksummed part (creation, Connect).
    pub fn write_static(&self, rec: &QueueRec) {
        self.region.write(Kind::Queue, self.index, rec);
    }

    /// From now on, dropping the handle frees the record.
    pub fn set_free_on_drop(&mut self) {
        self.free_on_drop = true;
    }
}

impl Drop for QueueShm {
    fn drop(&mut self) {
        if self.free_on_drop {
            self.region.free(Kind::Queue, self.index);
        }
    }
}
