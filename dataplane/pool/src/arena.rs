//! The pool's in-memory state that changes while serving, in one shared memory region
//! (a memfd) from the moment the pool is opened: the cluster allocation bitmap and
//! free count, each metadata page's sequence number and write token, the volume
//! records and every volume's cluster map.
//!
//! A hot upgrade hands the memfd to the successor, which maps the same pages: what
//! the predecessor allocated up to the last request it served is what the successor
//! sees, and nothing proportional to the pool's size is copied at the pause. Every
//! field is an atomic at a fixed offset (no pointers), so two processes read the same
//! thing. Only one process writes at a time: the successor writes nothing before its
//! predecessor has let go.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::format::{Super, MAX_NAME};

/// Layout version of the arena (a successor refuses another). 2: the mapping log.
pub const LAYOUT: u32 = 2;
const MAGIC: u64 = u64::from_le_bytes(*b"LPPLAREN");
const HEADER_BYTES: usize = 4096;
/// Granule of the map area: extents start on a cache line.
pub const GRANULE: u64 = 64;

/// The header: the pool's geometry and its few global counters.
#[repr(C)]
pub struct ArenaHeader {
    magic: AtomicU64,
    layout: AtomicU32,
    nslots: AtomicU32,
    md_pages: AtomicU32,
    table_pages: AtomicU32,
    first_data_cluster: AtomicU32,
    block_size: AtomicU32,
    cluster_size: AtomicU32,
    overcommit: AtomicU32,
    num_clusters: AtomicU64,
    device_blocks: AtomicU64,
    maps_len: AtomicU64,
    created: AtomicU64,
    pool: [AtomicU64; 2],
    name_len: AtomicU32,
    /// The process that owns the pool (writes its metadata and may close it).
    pub owner_pid: AtomicU32,
    /// Data clusters not allocated.
    pub free_clusters: AtomicU64,
    /// Set when an I/O error left a cluster whose contents are unknown: the pool is
    /// then not closed cleanly, so the next open zeroes every free cluster.
    pub tainted: AtomicU32,
    log_pages: AtomicU32,
    name: [AtomicU64; 32],
    /// The mapping log's next position: log page number << 16 | record index.
    pub log_tail: AtomicU64,
    /// Log pages numbered below this one hold nothing that the map pages on the device
    /// do not (a checkpoint folded them); the ring may reuse their places.
    pub log_folded: AtomicU64,
}

/// One mapping-log record as the I/O path fills it: `number` (the log page number it
/// belongs to) is stored last, so a record whose number matches is complete.
#[repr(C)]
pub struct LogRec {
    pub number: AtomicU64,
    pub id: AtomicU64,
    pub idx: AtomicU32,
    pub value: AtomicU32,
}

/// One place of the log ring: the log page number it holds now, and its records.
#[repr(C)]
pub struct LogSlot {
    pub number: AtomicU64,
    pub recs: [LogRec; crate::format::LOG_RECS],
}

/// One page's synchronisation record: its sequence number (on disk, the newer slot's)
/// and the token and generations of the write protocol (see `meta`).
#[repr(C)]
pub struct PageRec {
    pub seq: AtomicU64,
    /// Taken (1) by whoever writes the page now.
    pub token: AtomicU64,
    /// Bumped by every change that wants the page written.
    pub requested: AtomicU64,
    /// The highest generation known durable.
    pub durable: AtomicU64,
}

/// One volume (or snapshot) record. Slot `i` is entry `i` of the volume table.
#[repr(C)]
pub struct SlotRec {
    /// 0 free, 1 live.
    pub state: AtomicU32,
    pub flags: AtomicU32,
    /// Parent's slot + 1; 0 for none.
    pub parent: AtomicU32,
    /// Entries of the map (clusters of the volume).
    pub clusters: AtomicU32,
    pub map_pages: AtomicU32,
    pub head: AtomicU32,
    pub ext_pages: AtomicU32,
    pub name_len: AtomicU32,
    pub id: AtomicU64,
    pub size: AtomicU64,
    /// Byte offset of the volume's extent in the arena: map-page numbers, continuation
    /// page numbers, then the map entries.
    pub extent: AtomicU64,
    pub extent_len: AtomicU64,
    /// Clusters this volume owns.
    pub used: AtomicU64,
    pub transfer_to: AtomicU64,
    pub created: AtomicU64,
    pub uuid: [AtomicU64; 2],
    pub name: [AtomicU64; 32],
}

/// Where each part of the arena lies.
#[derive(Debug, Clone, Copy)]
struct Layout {
    bitmap: usize,
    bitmap_words: usize,
    md_bitmap: usize,
    md_words: usize,
    pages: usize,
    slots: usize,
    nslots: usize,
    log: usize,
    log_pages: usize,
    maps: usize,
    maps_len: usize,
    total: usize,
}

fn align(v: usize, to: usize) -> usize {
    v.div_ceil(to) * to
}

impl Layout {
    fn new(
        num_clusters: u64,
        md_pages: u32,
        nslots: usize,
        maps_len: u64,
        log_pages: u32,
    ) -> Layout {
        let bitmap = HEADER_BYTES;
        let bitmap_words = (num_clusters as usize).div_ceil(64);
        let md_bitmap = align(bitmap + bitmap_words * 8, 64);
        let md_words = (md_pages as usize).div_ceil(64);
        let pages = align(md_bitmap + md_words * 8, 64);
        let slots = align(pages + md_pages as usize * size_of::<PageRec>(), 64);
        let log = align(slots + nslots * size_of::<SlotRec>(), 64);
        let log_pages = log_pages as usize;
        let maps = align(log + log_pages * size_of::<LogSlot>(), 4096);
        let maps_len = align(maps_len as usize, 4096);
        Layout {
            bitmap,
            bitmap_words,
            md_bitmap,
            md_words,
            pages,
            slots,
            nslots,
            log,
            log_pages,
            maps,
            maps_len,
            total: maps + maps_len,
        }
    }
}

/// Errors making or mapping an arena.
#[derive(Debug, thiserror::Error)]
pub enum ArenaError {
    #[error("cannot make the pool's shared memory: {0}")]
    Create(#[source] std::io::Error),
    #[error("cannot map the pool's shared memory: {0}")]
    Map(#[source] std::io::Error),
    #[error("the handed-over pool memory is not a pool arena of layout {LAYOUT} ({0})")]
    Foreign(String),
}

/// The mapped arena.
pub struct Arena {
    ptr: NonNull<u8>,
    lay: Layout,
    fd: OwnedFd,
}

// SAFETY: the mapping is shared memory owned by this struct until Drop; every access
// goes through atomics at offsets inside it (checked against the layout).
unsafe impl Send for Arena {}
// SAFETY: as for Send: all shared access is atomic.
unsafe impl Sync for Arena {}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; nothing borrowed from it
        // outlives the arena (every user holds the pool, which holds the arena).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.lay.total);
        }
    }
}

/// Bytes the map area gets: room for every volume the over-commit limit allows, many
/// times over (snapshots keep maps of their own), and for small volumes' extents.
/// Virtual only: untouched pages of the memfd cost nothing.
pub fn maps_len_for(s: &Super, nslots: usize) -> u64 {
    let data = s.num_clusters - u64::from(s.first_data_cluster);
    let promised = data * u64::from(s.overcommit.max(100)) / 100;
    promised * 4 * 16 + nslots as u64 * 8192 + (64 << 20)
}

impl Arena {
    /// A fresh arena for the pool `s` (every counter zero, every slot free).
    pub fn create(s: &Super) -> Result<Arena, ArenaError> {
        let nslots = s.table_pages as usize * crate::format::TABLE_ENTRIES;
        let lay = Layout::new(
            s.num_clusters,
            s.md_pages,
            nslots,
            maps_len_for(s, nslots),
            s.log_pages,
        );
        let name = std::ffi::CString::new(format!("lightpool-pool-{}", s.name).replace('\0', "_"))
            .expect("NUL bytes were replaced");
        // SAFETY: memfd_create reads a NUL-terminated name and returns a new descriptor.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(ArenaError::Create(std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a descriptor we just created and own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ftruncate on our own memfd; the size is checked by the kernel.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), lay.total as libc::off_t) } != 0 {
            return Err(ArenaError::Create(std::io::Error::last_os_error()));
        }
        let a = Self::map(fd, lay)?;
        let h = a.header();
        h.layout.store(LAYOUT, Ordering::Relaxed);
        h.nslots.store(nslots as u32, Ordering::Relaxed);
        h.md_pages.store(s.md_pages, Ordering::Relaxed);
        h.table_pages.store(s.table_pages, Ordering::Relaxed);
        h.first_data_cluster
            .store(s.first_data_cluster, Ordering::Relaxed);
        h.block_size.store(s.block_size, Ordering::Relaxed);
        h.cluster_size.store(s.cluster_size, Ordering::Relaxed);
        h.overcommit.store(s.overcommit, Ordering::Relaxed);
        h.log_pages.store(s.log_pages, Ordering::Relaxed);
        h.num_clusters.store(s.num_clusters, Ordering::Relaxed);
        h.device_blocks.store(s.device_blocks, Ordering::Relaxed);
        h.maps_len.store(lay.maps_len as u64, Ordering::Relaxed);
        h.created.store(s.created, Ordering::Relaxed);
        h.pool[0].store(
            u64::from_le_bytes(s.pool[..8].try_into().expect("8")),
            Ordering::Relaxed,
        );
        h.pool[1].store(
            u64::from_le_bytes(s.pool[8..].try_into().expect("8")),
            Ordering::Relaxed,
        );
        store_bytes(&h.name, &h.name_len, s.name.as_bytes());
        h.magic.store(MAGIC, Ordering::Release);
        Ok(a)
    }

    /// Maps an arena handed over by a predecessor.
    pub fn adopt(fd: OwnedFd) -> Result<Arena, ArenaError> {
        // SAFETY: fstat fills a plain struct for a descriptor we own.
        let size = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
                return Err(ArenaError::Map(std::io::Error::last_os_error()));
            }
            st.st_size as usize
        };
        if size < HEADER_BYTES {
            return Err(ArenaError::Foreign(format!("{size} bytes")));
        }
        // Map the header first to learn the layout.
        let head = Self::map(
            fd.try_clone().map_err(ArenaError::Map)?,
            Layout {
                bitmap: 0,
                bitmap_words: 0,
                md_bitmap: 0,
                md_words: 0,
                pages: 0,
                slots: 0,
                nslots: 0,
                log: 0,
                log_pages: 0,
                maps: 0,
                maps_len: 0,
                total: HEADER_BYTES,
            },
        )?;
        let h = head.header();
        if h.magic.load(Ordering::Acquire) != MAGIC {
            return Err(ArenaError::Foreign("no arena magic".into()));
        }
        let layout = h.layout.load(Ordering::Relaxed);
        if layout != LAYOUT {
            return Err(ArenaError::Foreign(format!("it has layout {layout}")));
        }
        let lay = Layout::new(
            h.num_clusters.load(Ordering::Relaxed),
            h.md_pages.load(Ordering::Relaxed),
            h.nslots.load(Ordering::Relaxed) as usize,
            h.maps_len.load(Ordering::Relaxed),
            h.log_pages.load(Ordering::Relaxed),
        );
        drop(head);
        if lay.total != size {
            return Err(ArenaError::Foreign(format!(
                "{size} bytes where its header describes {}",
                lay.total
            )));
        }
        Self::map(fd, lay)
    }

    fn map(fd: OwnedFd, lay: Layout) -> Result<Arena, ArenaError> {
        // SAFETY: a fresh shared mapping of `lay.total` bytes of a memfd that long; no
        // existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                lay.total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(ArenaError::Map(std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).expect("mmap never returns null on success");
        Ok(Arena { ptr, lay, fd })
    }

    /// The memfd, for a successor.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// A `T` at byte `off`.
    ///
    /// # Safety
    /// `off + size_of::<T>() <= total`, `off` aligned for `T`, and `T` made of atomics
    /// (valid for any bit pattern, shared access only through atomic operations).
    unsafe fn at<T>(&self, off: usize) -> &T {
        debug_assert!(off + size_of::<T>() <= self.lay.total);
        debug_assert!(off.is_multiple_of(align_of::<T>()));
        // SAFETY: in bounds and aligned (caller's contract); the memory is a live
        // shared mapping of atomics.
        unsafe { &*self.ptr.as_ptr().add(off).cast::<T>() }
    }

    pub fn header(&self) -> &ArenaHeader {
        // SAFETY: the header is at 0, inside the mapping, and made of atomics.
        unsafe { self.at(0) }
    }

    /// Word `w` of the cluster allocation bitmap.
    pub fn bitmap_word(&self, w: usize) -> &AtomicU64 {
        assert!(w < self.lay.bitmap_words, "bitmap word {w} out of range");
        // SAFETY: checked in range; 8-byte aligned (the bitmap starts at 4096).
        unsafe { self.at(self.lay.bitmap + 8 * w) }
    }

    pub fn bitmap_words(&self) -> usize {
        self.lay.bitmap_words
    }

    /// Word `w` of the metadata-page allocation bitmap (control path only).
    pub fn md_word(&self, w: usize) -> &AtomicU64 {
        assert!(w < self.lay.md_words, "md bitmap word {w} out of range");
        // SAFETY: checked in range; aligned to 64.
        unsafe { self.at(self.lay.md_bitmap + 8 * w) }
    }

    /// Logical metadata pages of the pool.
    pub fn md_pages(&self) -> u32 {
        self.header().md_pages.load(Ordering::Relaxed)
    }

    pub fn md_words(&self) -> usize {
        self.lay.md_words
    }

    /// The record of logical metadata page `p`.
    pub fn page(&self, p: u32) -> &PageRec {
        let md = self.header().md_pages.load(Ordering::Relaxed);
        assert!(p < md, "metadata page {p} out of range ({md})");
        // SAFETY: checked in range; records are 32 bytes from a 64-aligned start.
        unsafe { self.at(self.lay.pages + p as usize * size_of::<PageRec>()) }
    }

    pub fn nslots(&self) -> usize {
        self.lay.nslots
    }

    /// Volume record `i`.
    pub fn slot(&self, i: u32) -> &SlotRec {
        assert!((i as usize) < self.lay.nslots, "slot {i} out of range");
        // SAFETY: checked in range; records are a multiple of 8 bytes from a
        // 64-aligned start.
        unsafe { self.at(self.lay.slots + i as usize * size_of::<SlotRec>()) }
    }

    /// Place `q` of the mapping log's ring.
    pub fn log_slot(&self, q: usize) -> &LogSlot {
        assert!(q < self.lay.log_pages, "log place {q} out of range");
        // SAFETY: checked in range; a LogSlot is a multiple of 8 bytes from a
        // 64-aligned start, and made of atomics.
        unsafe { self.at(self.lay.log + q * size_of::<LogSlot>()) }
    }

    /// Start and length of the map area (byte offsets in the arena).
    pub fn maps_area(&self) -> (u64, u64) {
        (self.lay.maps as u64, self.lay.maps_len as u64)
    }

    /// `n` u32 atomics at byte offset `off` of the map area.
    pub fn u32s(&self, off: u64, n: usize) -> &[AtomicU32] {
        let off = off as usize;
        assert!(
            off >= self.lay.maps && off + 4 * n <= self.lay.maps + self.lay.maps_len,
            "map extent out of range"
        );
        assert!(off.is_multiple_of(4));
        // SAFETY: inside the map area (checked), 4-aligned; AtomicU32 has the layout
        // of u32 and the memory lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off).cast::<AtomicU32>(), n) }
    }

    /// Zeroes `len` bytes of the map area at `off` (a new extent).
    pub fn zero(&self, off: u64, len: u64) {
        for a in self.u32s(off, (len / 4) as usize) {
            a.store(0, Ordering::Relaxed);
        }
    }

    /// The pool's geometry as the header records it.
    pub fn geometry(&self) -> Super {
        let h = self.header();
        let mut pool = [0u8; 16];
        pool[..8].copy_from_slice(&h.pool[0].load(Ordering::Relaxed).to_le_bytes());
        pool[8..].copy_from_slice(&h.pool[1].load(Ordering::Relaxed).to_le_bytes());
        Super {
            pool,
            name: String::from_utf8_lossy(&load_bytes(&h.name, &h.name_len)).into_owned(),
            block_size: h.block_size.load(Ordering::Relaxed),
            cluster_size: h.cluster_size.load(Ordering::Relaxed),
            md_pages: h.md_pages.load(Ordering::Relaxed),
            table_pages: h.table_pages.load(Ordering::Relaxed),
            first_data_cluster: h.first_data_cluster.load(Ordering::Relaxed),
            num_clusters: h.num_clusters.load(Ordering::Relaxed),
            device_blocks: h.device_blocks.load(Ordering::Relaxed),
            overcommit: h.overcommit.load(Ordering::Relaxed),
            clean: false,
            created: h.created.load(Ordering::Relaxed),
            log_pages: h.log_pages.load(Ordering::Relaxed),
        }
    }
}

/// Stores up to 256 bytes into atomic words, with their length.
pub fn store_bytes(words: &[AtomicU64; 32], len: &AtomicU32, b: &[u8]) {
    let n = b.len().min(MAX_NAME);
    let mut buf = [0u8; 256];
    buf[..n].copy_from_slice(&b[..n]);
    for (i, w) in words.iter().enumerate() {
        w.store(
            u64::from_le_bytes(buf[8 * i..8 * i + 8].try_into().expect("8")),
            Ordering::Relaxed,
        );
    }
    len.store(n as u32, Ordering::Release);
}

/// The bytes [`store_bytes`] stored.
pub fn load_bytes(words: &[AtomicU64; 32], len: &AtomicU32) -> Vec<u8> {
    let n = (len.load(Ordering::Acquire) as usize).min(MAX_NAME);
    let mut buf = Vec::with_capacity(256);
    for w in words {
        buf.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
    }
    buf.truncate(n);
    buf
}

impl SlotRec {
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&load_bytes(&self.name, &self.name_len)).into_owned()
    }

    pub fn set_name(&self, n: &str) {
        store_bytes(&self.name, &self.name_len, n.as_bytes());
    }

    pub fn uuid(&self) -> [u8; 16] {
        let mut u = [0u8; 16];
        u[..8].copy_from_slice(&self.uuid[0].load(Ordering::Relaxed).to_le_bytes());
        u[8..].copy_from_slice(&self.uuid[1].load(Ordering::Relaxed).to_le_bytes());
        u
    }

    pub fn set_uuid(&self, u: &[u8; 16]) {
        self.uuid[0].store(
            u64::from_le_bytes(u[..8].try_into().expect("8")),
            Ordering::Relaxed,
        );
        self.uuid[1].store(
            u64::from_le_bytes(u[8..].try_into().expect("8")),
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> Super {
        Super {
            pool: [1; 16],
            name: "arena-test".into(),
            block_size: 512,
            cluster_size: 1 << 20,
            md_pages: 300,
            table_pages: 1,
            first_data_cluster: 3,
            num_clusters: 1000,
            device_blocks: 1000 << 11,
            overcommit: 200,
            clean: false,
            created: 1,
            log_pages: 8,
        }
    }

    /// What one process writes, another process mapping the same memfd reads: the
    /// geometry, the counters, a slot and a map.
    #[test]
    fn a_successor_sees_the_same_state() {
        let a = Arena::create(&sb()).expect("arena");
        a.header().free_clusters.store(997, Ordering::Relaxed);
        a.bitmap_word(3).store(0xF0, Ordering::Relaxed);
        a.page(299).seq.store(12, Ordering::Relaxed);
        let s = a.slot(5);
        s.set_name("vol-five");
        s.set_uuid(&[9; 16]);
        let (maps, len) = a.maps_area();
        assert!(len >= 64 << 20);
        a.u32s(maps + 64, 4)[2].store(77, Ordering::Relaxed);
        let b = Arena::adopt(a.fd().try_clone().expect("dup")).expect("adopt");
        assert_eq!(b.geometry(), sb());
        assert_eq!(b.header().free_clusters.load(Ordering::Relaxed), 997);
        assert_eq!(b.bitmap_word(3).load(Ordering::Relaxed), 0xF0);
        assert_eq!(b.page(299).seq.load(Ordering::Relaxed), 12);
        assert_eq!(b.slot(5).name(), "vol-five");
        assert_eq!(b.slot(5).uuid(), [9; 16]);
        assert_eq!(b.u32s(maps + 64, 4)[2].load(Ordering::Relaxed), 77);
        // And the other way round.
        b.slot(5).set_name("renamed");
        assert_eq!(a.slot(5).name(), "renamed");
    }

    #[test]
    fn memory_that_is_not_an_arena_is_refused() {
        // SAFETY: memfd_create with a static name.
        let raw = unsafe { libc::memfd_create(c"x".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: ours.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: our memfd.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), 8192) }, 0);
        let e = Arena::adopt(fd).err().expect("refused").to_string();
        assert!(e.contains("magic"), "{e}");
    }
}
