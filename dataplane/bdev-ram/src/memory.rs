//! The memory of a RAM device: which pages it is made of, how it is mapped, and how it
//! is populated so that no page fault lands on the I/O path.
//!
//! Huge pages (2 MiB) are used whenever enough are free ([`Pages::Auto`]): random reads
//! over a large namespace in 4 KiB pages miss the TLB on nearly every block, and the
//! page walks cost the reactor more than the copy. A device without a file is an
//! `MFD_HUGETLB` memfd (no hugetlbfs mount needed); a device kept in a state directory
//! (a tmpfs) keeps its data in a file on a mounted hugetlbfs instead, and the state
//! directory holds a symbolic link to it, so that recovery and hot upgrade find it
//! where they always look. When huge pages cannot be had, ordinary memory is used and
//! the first such device says why, with the command that reserves pages.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// Huge page size of `MFD_HUGETLB` memory and of the hugetlbfs mount used (the system
/// default, 2 MiB on x86-64).
pub const HUGE_PAGE: usize = 2 << 20;

/// Which pages a RAM device asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pages {
    /// 2 MiB huge pages when enough are free (and, for a device kept in a file, a
    /// hugetlbfs is mounted), else ordinary memory, said once with the reason.
    #[default]
    Auto,
    /// Huge pages, or an error that says how to reserve them.
    Huge,
    /// Ordinary 4 KiB pages.
    Ordinary,
}

/// What a RAM device's memory is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// 2 MiB huge pages.
    Huge,
    /// Ordinary pages, with the reason huge pages were not used.
    Ordinary { reason: String },
}

/// The first fallback to ordinary memory is a warning, later ones are not.
static FALLBACK_SAID: AtomicBool = AtomicBool::new(false);
/// The first device too large to populate says so, later ones do not.
static UNPOPULATED_SAID: AtomicBool = AtomicBool::new(false);

/// The shared mapping behind a RAM device, and the file (memfd, tmpfs or hugetlbfs
/// file) it maps.
pub(crate) struct Mapping {
    pub(crate) ptr: NonNull<u8>,
    pub(crate) len: usize,
    pub(crate) fd: OwnedFd,
    /// Whether the memory is huge pages (hugetlbfs: a hole punched there gives up its
    /// page reservation, so zeroing writes zeroes instead).
    pub(crate) huge: bool,
}

// SAFETY: the mapping is plain memory owned by this struct until Drop; every access goes
// through raw-pointer copies bounded by `len`. Concurrent access to the same bytes from
// several channels is the host's race, as on a real disk, and never touches memory
// outside the mapping.
unsafe impl Send for Mapping {}
// SAFETY: as for Send: shared access is only through bounded raw copies.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// A new memfd of `len` bytes, in huge pages if `huge` (reserved now: a shortage is
    /// an error here, never a SIGBUS later).
    pub(crate) fn memfd(name: &str, len: usize, huge: bool) -> std::io::Result<Self> {
        let cname = std::ffi::CString::new(format!("lightpool-ram-{name}").replace('\0', "_"))
            .expect("NUL bytes were replaced");
        let flags = libc::MFD_CLOEXEC | if huge { libc::MFD_HUGETLB } else { 0 };
        // SAFETY: memfd_create reads a NUL-terminated name and returns a new descriptor.
        let raw = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just created and own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ftruncate on our own memfd; the size is checked by the kernel.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Self::map(fd, len)
    }

    /// Maps `len` bytes of `fd` shared.
    pub(crate) fn map(fd: OwnedFd, len: usize) -> std::io::Result<Self> {
        let huge = is_hugetlb(fd.as_raw_fd());
        // Huge pages are reserved when mapped (so a shortage is an error now, not a
        // SIGBUS on first touch); ordinary memory is allocated as it is written.
        let noreserve = if huge { 0 } else { libc::MAP_NORESERVE };
        // SAFETY: a fresh shared mapping of `len` bytes of a file at least that long;
        // no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | noreserve,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).expect("mmap never returns null on success");
        Ok(Mapping { ptr, len, fd, huge })
    }

    /// Page size of the memory: the unit a hole can be punched in.
    pub(crate) fn page(&self) -> usize {
        if self.huge {
            HUGE_PAGE
        } else {
            page_size()
        }
    }

    /// Faults every page in for writing, so that no I/O meets a page fault (and, for
    /// huge pages, so that a page the kernel cannot give fails here, not later). The
    /// contents are kept: a page already there is only entered in the page tables.
    pub(crate) fn populate(&self) -> std::io::Result<()> {
        // SAFETY: the range is exactly this mapping; MADV_POPULATE_WRITE faults pages in
        // as a write would, without changing their contents.
        let rc = unsafe {
            libc::madvise(
                self.ptr.as_ptr().cast(),
                self.len,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
        // Before Linux 5.14: touch one byte of each page with an atomic no-op, which
        // loses no write made meanwhile by another mapping (a hot upgrade's predecessor).
        let page = self.page();
        for off in (0..self.len).step_by(page) {
            // SAFETY: `off` is inside the mapping, which is writable; an AtomicU8 has the
            // size and alignment of a u8, and every access to these bytes from this
            // process is a plain copy or this atomic, never a reference held across it.
            unsafe { AtomicU8::from_ptr(self.ptr.as_ptr().add(off)) }
                .fetch_or(0, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `map`; no channel outlives it
        // because each holds an `Arc<Mapping>`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Whether `fd` is hugetlbfs memory (a `MFD_HUGETLB` memfd, or a file there).
pub(crate) fn is_hugetlb(fd: impl AsRawFd) -> bool {
    // SAFETY: fstatfs fills a plain struct for a descriptor we own.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::fstatfs(fd.as_raw_fd(), &mut st) == 0 && st.f_type == libc::HUGETLBFS_MAGIC
    }
}

pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf takes no pointers.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// One number from /proc/meminfo (kB or a count), 0 when absent.
fn meminfo(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Huge pages free and not promised to a mapping already, and the number reserved.
fn huge_pages_free() -> (u64, u64) {
    let free = meminfo("HugePages_Free").saturating_sub(meminfo("HugePages_Rsvd"));
    (free, meminfo("HugePages_Total"))
}

/// Why `len` bytes cannot be huge pages right now, or `None` when they may be (the
/// mapping itself is the final word: it reserves the pages or fails).
pub(crate) fn huge_pages_unavailable(len: usize) -> Option<String> {
    if !len.is_multiple_of(HUGE_PAGE) {
        return Some(format!(
            "its size, {len} bytes, is not a multiple of the 2 MiB huge page"
        ));
    }
    let need = (len / HUGE_PAGE) as u64;
    let (free, _) = huge_pages_free();
    (free < need).then(|| format!("{need} free 2 MiB huge pages are needed, {free} are free"))
}

/// The command that reserves what `len` bytes of huge pages need, on top of what is
/// reserved and used now.
pub(crate) fn reserve_hint(len: usize) -> String {
    let need = len.div_ceil(HUGE_PAGE) as u64;
    let (free, total) = huge_pages_free();
    let pages = total + need.saturating_sub(free);
    format!("hugepage-setup reserve --pages {pages} (or: echo {pages} > /proc/sys/vm/nr_hugepages)")
}

/// A mounted hugetlbfs of 2 MiB pages, for devices kept in a file.
pub(crate) fn hugetlbfs_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/mounts").ok()?;
    lightpool_dma::parse_mounts(&text)
        .into_iter()
        .find(|m| m.page_size == HUGE_PAGE)
        .map(|m| m.path)
}

/// Says, once per process, that a RAM device uses ordinary memory and why; later ones
/// are logged at info level.
pub(crate) fn say_fallback(name: &str, len: usize, reason: &str, file: bool) {
    let mount = if file && hugetlbfs_mount().is_none() {
        " and mount hugetlbfs (hugepage-setup reserve does both)"
    } else {
        ""
    };
    if !FALLBACK_SAID.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "RAM device {name}: ordinary memory, not 2 MiB huge pages, because {reason}; random \
             I/O then misses the TLB far more often. To have huge pages, reserve them{mount}: {}",
            reserve_hint(len)
        );
    } else {
        tracing::info!(device = name, %reason, "RAM device in ordinary memory");
    }
}

/// Whether ordinary memory of `len` bytes may be populated at start: only when it
/// takes at most half of the memory available, so that a large, sparsely used device
/// does not push the machine out of memory. One that is not populated says so once.
pub(crate) fn may_populate_ordinary(name: &str, len: usize) -> bool {
    let available = meminfo("MemAvailable").saturating_mul(1024);
    if len as u64 <= available / 2 {
        return true;
    }
    if !UNPOPULATED_SAID.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "RAM device {name}: {len} bytes is more than half the memory available \
             ({available} bytes): its pages are allocated as they are first written, each \
             first write paying a page fault"
        );
    }
    false
}

/// The file on `mount` that holds the data of the state-directory file `path` (the
/// state directory keeps a symbolic link to it): named after `path`, so that two state
/// directories never share one.
pub(crate) fn huge_file_for(mount: &Path, path: &Path) -> PathBuf {
    let full = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    // FNV-1a: a stable, dependency-free hash; only the name's uniqueness matters.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in full.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    mount.join(format!("lightpool-{h:016x}-{base}"))
}

/// Creates the hugetlbfs file `huge` of `len` bytes and maps it (reserving its pages),
/// then links `path` to it. On failure nothing is left behind.
pub(crate) fn create_huge_file(path: &Path, huge: &Path, len: usize) -> std::io::Result<Mapping> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(huge)?;
    let made = f
        .set_len(len as u64)
        .and_then(|()| Mapping::map(OwnedFd::from(f), len))
        .and_then(|m| std::os::unix::fs::symlink(huge, path).map(|()| m));
    if made.is_err() {
        let _ = std::fs::remove_file(huge);
    }
    made
}

/// Opens the file of a device kept in a state directory (following its link to a
/// hugetlbfs file, if it is one). `Ok(None)` when there is none, or only a link whose
/// file is gone (removed: the data is lost either way).
pub(crate) fn open_existing(path: &Path) -> std::io::Result<Option<File>> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
        Ok(m) if m.file_type().is_symlink() && std::fs::metadata(path).is_err() => {
            std::fs::remove_file(path)?;
            return Ok(None);
        }
        Ok(_) => {}
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(Some)
}

/// Removes the file of a RAM device kept in a state directory: the link and the
/// hugetlbfs file it points to, or the tmpfs file. Gone already is fine.
pub fn remove_state_file(path: &Path) -> std::io::Result<()> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.file_type().is_symlink() {
            if let Ok(target) = std::fs::read_link(path) {
                match std::fs::remove_file(&target) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
