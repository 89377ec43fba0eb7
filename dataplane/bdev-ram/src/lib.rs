//! RAM block device: one shared-memory mapping (a memfd) shared by every channel.
//!
//! The memory is a memfd so that it outlives the process that made it: a hot upgrade
//! hands the descriptor to the next binary, which maps the same pages
//! ([`MallocBdev::from_memfd`]), and nothing the host wrote is lost. The mapping is
//! `MAP_NORESERVE` and untouched pages read as zeroes, so a large device costs nothing
//! until it is written. Channels copy synchronously at submit and queue the
//! completion in a preallocated ring that the next `poll` hands back.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use lightpool_bdev::{
    check_request, Adopter, Adoption, Bdev, BdevError, BdevInfo, DataRef, Export, IoChannel, IoOp,
    IoRequest, IoStatus,
};
use serde::{Deserialize, Serialize};

/// Ranges at least this long are zeroed by dropping their whole pages
/// (`MADV_DONTNEED`) rather than by writing zeroes; shorter ones are memset.
const MADVISE_MIN: usize = 64 * 1024;

/// Completions a channel can hold between two polls before its ring grows.
const COMPLETION_RING: usize = 1024;

/// The shared mapping behind a [`MallocBdev`], and the memfd it maps.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
    /// Page size of the memory: the unit a hole can be punched in.
    page: usize,
}

/// Huge page size of `MFD_HUGETLB` memory (the system default, 2 MiB on x86-64).
pub const HUGE_PAGE: usize = 2 << 20;

// SAFETY: the mapping is plain memory owned by this struct until Drop; every access goes
// through raw-pointer copies bounded by `len`. Concurrent access to the same bytes from
// several channels is the host's race, as on a real disk, and never touches memory
// outside the mapping.
unsafe impl Send for Mapping {}
// SAFETY: as for Send: shared access is only through bounded raw copies.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(name: &str, len: usize, huge: bool) -> std::io::Result<Self> {
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

    fn map(fd: OwnedFd, len: usize) -> std::io::Result<Self> {
        let huge = is_hugetlb(&fd);
        // Huge pages are reserved when mapped (so a shortage is an error now, not a
        // SIGBUS on first touch); ordinary memory is allocated as it is written.
        let noreserve = if huge { 0 } else { libc::MAP_NORESERVE };
        // SAFETY: a fresh shared mapping of `len` bytes of a memfd at least that long;
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
        let page = if huge { HUGE_PAGE } else { page_size() };
        Ok(Mapping { ptr, len, fd, page })
    }

    /// Copies `len` bytes at `offset` into `dst`.
    ///
    /// # Safety
    /// `offset + len <= self.len`, and `dst` is valid for `len` bytes of writes.
    unsafe fn read(&self, offset: usize, dst: *mut u8, len: usize) {
        // SAFETY: the caller keeps the range inside the mapping and `dst` valid; the two
        // cannot overlap because `dst` is the caller's buffer, not the mapping.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), dst, len) }
    }

    /// Copies `len` bytes from `src` to `offset`.
    ///
    /// # Safety
    /// `offset + len <= self.len`, and `src` is valid for `len` bytes of reads.
    unsafe fn write(&self, offset: usize, src: *const u8, len: usize) {
        // SAFETY: as in `read`, with the direction reversed.
        unsafe { std::ptr::copy_nonoverlapping(src, self.ptr.as_ptr().add(offset), len) }
    }

    /// Zeroes `len` bytes at `offset`: whole pages are punched out of the memfd (they
    /// read back as zeroes and give their memory back), the partial pages at either end
    /// are memset.
    ///
    /// # Safety
    /// `offset + len <= self.len`.
    unsafe fn zero(&self, offset: usize, len: usize) {
        let page = self.page;
        let start = offset;
        let end = offset + len;
        let first_page = start.div_ceil(page) * page;
        let last_page = end / page * page;
        let base = self.ptr.as_ptr();
        if len >= MADVISE_MIN && first_page < last_page {
            // SAFETY: both partial ranges lie inside [offset, offset+len), inside the
            // mapping; the punched range is page-aligned inside the memfd, and punching
            // a hole in a shared memfd makes those pages read as zeroes in every mapping.
            unsafe {
                std::ptr::write_bytes(base.add(start), 0, first_page - start);
                std::ptr::write_bytes(base.add(last_page), 0, end - last_page);
                let rc = libc::fallocate(
                    self.fd.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    first_page as libc::off_t,
                    (last_page - first_page) as libc::off_t,
                );
                if rc != 0 {
                    std::ptr::write_bytes(base.add(first_page), 0, last_page - first_page);
                }
            }
        } else {
            // SAFETY: the range is inside the mapping (caller's contract).
            unsafe { std::ptr::write_bytes(base.add(start), 0, len) }
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; no channel outlives it
        // because each holds an `Arc<Mapping>`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Whether `fd` is hugetlbfs memory (a `MFD_HUGETLB` memfd, or a file there).
fn is_hugetlb(fd: &OwnedFd) -> bool {
    // SAFETY: fstatfs fills a plain struct for a descriptor we own.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::fstatfs(fd.as_raw_fd(), &mut st) == 0 && st.f_type == libc::HUGETLBFS_MAGIC
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf takes no pointers.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// A block device in RAM.
pub struct MallocBdev {
    info: BdevInfo,
    mem: Arc<Mapping>,
    /// The tmpfs file holding the memory, when it is a named one.
    path: Option<String>,
}

impl std::fmt::Debug for MallocBdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MallocBdev")
            .field("info", &self.info)
            .finish()
    }
}

impl MallocBdev {
    /// Creates a RAM device of `size_bytes` bytes in blocks of `block_size` (512 or
    /// 4096) bytes. Memory is reserved lazily: untouched blocks cost nothing.
    pub fn new(name: &str, size_bytes: u64, block_size: u32) -> Result<Arc<MallocBdev>, BdevError> {
        Self::create(name, size_bytes, block_size, false)
    }

    /// As [`MallocBdev::new`], in huge pages (`MFD_HUGETLB`, 2 MiB): random reads then
    /// miss the TLB far less. The pages are reserved at once, so `size_bytes` must be a
    /// multiple of 2 MiB and the system must have that many free huge pages
    /// (`hugepage-setup reserve`), or this fails saying so.
    pub fn new_hugepages(
        name: &str,
        size_bytes: u64,
        block_size: u32,
    ) -> Result<Arc<MallocBdev>, BdevError> {
        if !size_bytes.is_multiple_of(HUGE_PAGE as u64) {
            return Err(BdevError::Invalid(format!(
                "RAM device {name}: size {size_bytes} bytes is not a multiple of the 2 MiB huge page"
            )));
        }
        Self::create(name, size_bytes, block_size, true)
    }

    fn create(
        name: &str,
        size_bytes: u64,
        block_size: u32,
        huge: bool,
    ) -> Result<Arc<MallocBdev>, BdevError> {
        if block_size != 512 && block_size != 4096 {
            return Err(BdevError::Invalid(format!(
                "RAM device {name}: block size {block_size} is not supported; use 512 or 4096"
            )));
        }
        if size_bytes == 0 {
            return Err(BdevError::Invalid(format!(
                "RAM device {name}: size is 0 bytes; it must hold at least one {block_size}-byte block"
            )));
        }
        if !size_bytes.is_multiple_of(u64::from(block_size)) {
            return Err(BdevError::Invalid(format!(
                "RAM device {name}: size {size_bytes} bytes is not a multiple of the {block_size}-byte block size"
            )));
        }
        let len = usize::try_from(size_bytes).map_err(|_| {
            BdevError::Invalid(format!(
                "RAM device {name}: size {size_bytes} bytes does not fit in this machine's address space"
            ))
        })?;
        let mem = Mapping::new(name, len, huge).map_err(|e| {
            if huge {
                BdevError::Invalid(format!(
                    "RAM device {name}: could not reserve {} huge pages of 2 MiB ({e}); reserve them first, e.g. hugepage-setup reserve",
                    size_bytes / HUGE_PAGE as u64
                ))
            } else {
                BdevError::Invalid(format!(
                    "RAM device {name}: could not map {size_bytes} bytes of memory: {e}"
                ))
            }
        })?;
        Ok(Arc::new(MallocBdev {
            info: BdevInfo {
                name: name.to_string(),
                block_size,
                num_blocks: size_bytes / u64::from(block_size),
                read_only: false,
                volatile_write_cache: false,
                supports_deallocate: true,
            },
            mem: Arc::new(mem),
            path: None,
        }))
    }

    /// Adopts the memory of a RAM device made by another process (hot upgrade): `fd` is
    /// the memfd that [`MallocBdev::memfd`] exposed there. Its size gives the capacity.
    pub fn from_memfd(
        name: &str,
        fd: OwnedFd,
        block_size: u32,
    ) -> Result<Arc<MallocBdev>, BdevError> {
        if block_size != 512 && block_size != 4096 {
            return Err(BdevError::Invalid(format!(
                "RAM device {name}: block size {block_size} is not supported; use 512 or 4096"
            )));
        }
        // SAFETY: fstat fills a plain struct for a descriptor we own.
        let size = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
                return Err(BdevError::Setup(std::io::Error::last_os_error()));
            }
            st.st_size as u64
        };
        if size == 0 || !size.is_multiple_of(u64::from(block_size)) {
            return Err(BdevError::Invalid(format!(
                "RAM device {name}: handed-over memory of {size} bytes is not a whole number of {block_size}-byte blocks"
            )));
        }
        let mem = Mapping::map(fd, size as usize).map_err(BdevError::Setup)?;
        Ok(Arc::new(MallocBdev {
            info: BdevInfo {
                name: name.to_string(),
                block_size,
                num_blocks: size / u64::from(block_size),
                read_only: false,
                volatile_write_cache: false,
                supports_deallocate: true,
            },
            mem: Arc::new(mem),
            path: None,
        }))
    }

    /// A RAM device whose memory is the file `path` on a tmpfs (e.g. /dev/shm), created
    /// at `size_bytes` if missing and reattached if present (its size must match): the
    /// data then outlives every process, so a target that crashes, or a hot upgrade
    /// whose both sides die, loses nothing acknowledged.
    pub fn open_shared(
        name: &str,
        path: &std::path::Path,
        size_bytes: u64,
        block_size: u32,
    ) -> Result<Arc<MallocBdev>, BdevError> {
        let shown = path.display().to_string();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| BdevError::Open {
                path: shown.clone(),
                source,
            })?;
        let len = f.metadata().map_err(BdevError::Setup)?.len();
        if len == 0 {
            f.set_len(size_bytes).map_err(BdevError::Setup)?;
        } else if len != size_bytes {
            return Err(BdevError::Invalid(format!(
                "RAM device {name}: {shown} holds {len} bytes but the device is configured with {size_bytes}; remove the file or fix the size"
            )));
        }
        Self::from_memfd_at(name, f.into(), block_size, Some(shown))
    }

    fn from_memfd_at(
        name: &str,
        fd: OwnedFd,
        block_size: u32,
        path: Option<String>,
    ) -> Result<Arc<MallocBdev>, BdevError> {
        let mut b = Self::from_memfd(name, fd, block_size)?;
        Arc::get_mut(&mut b)
            .expect("just created, not shared yet")
            .path = path;
        Ok(b)
    }

    /// The tmpfs file behind the device, if it has one.
    pub fn shared_path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// The memfd holding the device's data, for handing to a successor process.
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.mem.fd.as_fd()
    }

    fn check_bytes(&self, offset: u64, len: usize) -> Result<usize, IoStatus> {
        let end = offset.checked_add(len as u64).ok_or(IoStatus::OutOfRange)?;
        if end > self.mem.len as u64 {
            return Err(IoStatus::OutOfRange);
        }
        Ok(offset as usize)
    }

    /// Copies device bytes at `offset` into `buf`. For tests and tools (e.g. to check
    /// what a host wrote), not for the I/O path; it does not order against in-flight
    /// requests.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoStatus> {
        let off = self.check_bytes(offset, buf.len())?;
        // SAFETY: `check_bytes` keeps the range inside the mapping; `buf` is a live
        // exclusive slice of exactly `buf.len()` bytes.
        unsafe { self.mem.read(off, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `data` onto the device at `offset`. For tests and tools (e.g. to corrupt a
    /// block on purpose), not for the I/O path; it does not order against in-flight
    /// requests.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), IoStatus> {
        let off = self.check_bytes(offset, data.len())?;
        // SAFETY: `check_bytes` keeps the range inside the mapping; `data` is a live slice.
        unsafe { self.mem.write(off, data.as_ptr(), data.len()) };
        Ok(())
    }
}

/// [`Bdev::kind`] of RAM devices.
pub const KIND: &str = "ram";

/// What a successor needs besides the memfd.
#[derive(Debug, Serialize, Deserialize)]
struct RamState {
    block_size: u32,
    /// The tmpfs file behind the memory, if any: recovery reopens it.
    path: Option<String>,
}

impl Bdev for MallocBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    /// The memfd (the tmpfs file's descriptor when the device lives in the state
    /// directory): the successor maps the same pages.
    fn export(&self) -> Result<Export, BdevError> {
        let st = RamState {
            block_size: self.info.block_size,
            path: self.path.clone(),
        };
        Ok(Export {
            state: postcard::to_stdvec(&st)
                .map_err(|e| BdevError::Invalid(format!("RAM device state: {e}")))?,
            fds: vec![self
                .memfd()
                .try_clone_to_owned()
                .map_err(BdevError::Setup)?],
        })
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(MallocChannel {
            base: self.mem.ptr,
            blocks: self.info.num_blocks,
            shift: self.info.block_size.trailing_zeros(),
            read_only: self.info.read_only,
            info: self.info.clone(),
            mem: self.mem.clone(),
            done: VecDeque::with_capacity(COMPLETION_RING),
        }))
    }
}

struct MallocChannel {
    /// `mem`'s start, capacity in blocks, log2(block size) and whether writes are
    /// refused, at hand for I/O in place.
    base: NonNull<u8>,
    blocks: u64,
    shift: u32,
    read_only: bool,
    info: BdevInfo,
    mem: Arc<Mapping>,
    /// Completions not yet handed to `poll`.
    done: VecDeque<(u64, IoStatus)>,
}

impl MallocChannel {
    /// The byte range of `num_blocks` blocks at `offset_blocks`, when they lie on the
    /// device.
    #[inline]
    fn bytes(&self, offset_blocks: u64, num_blocks: u32) -> Option<(usize, usize)> {
        let end = offset_blocks.checked_add(u64::from(num_blocks))?;
        // The device (the mapping) fits in the address space, so its offsets in usize.
        (end <= self.blocks).then(|| {
            (
                (offset_blocks << self.shift) as usize,
                (num_blocks as usize) << self.shift,
            )
        })
    }

    /// # Safety
    /// As [`IoChannel::submit`]: the buffer of a Read/Write is valid for `req.len` bytes.
    unsafe fn execute(&self, req: &IoRequest) -> IoStatus {
        let (offset, len) = match check_request(&self.info, req) {
            Ok(r) => r,
            Err(status) => return status,
        };
        // `check_request` bounded the range by the device size, which fits in usize.
        let (offset, len) = (offset as usize, len as usize);
        match req.op {
            // SAFETY: range checked against the device (= mapping) size above; the
            // buffer is `len` bytes by the submit contract and `check_request`.
            IoOp::Read => unsafe { self.mem.read(offset, req.buf, len) },
            // SAFETY: as for Read.
            IoOp::Write => unsafe { self.mem.write(offset, req.buf, len) },
            // SAFETY: range checked against the mapping size above.
            IoOp::WriteZeroes | IoOp::Deallocate => unsafe { self.mem.zero(offset, len) },
            IoOp::Flush => {}
        }
        IoStatus::Success
    }
}

impl IoChannel for MallocChannel {
    unsafe fn submit(&mut self, req: IoRequest) {
        // SAFETY: forwarded from our caller's contract on `req.buf`.
        let status = unsafe { self.execute(&req) };
        self.done.push_back((req.tag, status));
    }

    /// Every read: the device's bytes are in this process's memory.
    fn read_in_place(&mut self, offset_blocks: u64, num_blocks: u32) -> Option<DataRef> {
        // Out of range: submitted, and refused there.
        let (off, len) = self.bytes(offset_blocks, num_blocks)?;
        // SAFETY: the range lies inside the mapping (`bytes` checked it against the
        // device size, which is the mapping's), so `base + off` is inside it and not
        // null; this channel holds the mapping (an Arc), so it stays mapped while the
        // channel lives.
        Some(unsafe { DataRef::new(NonNull::new_unchecked(self.base.as_ptr().add(off)), len) })
    }

    /// Every write (a read-only device's, or one out of range, is submitted and
    /// refused there): copied into the mapping now.
    fn write_in_place(&mut self, offset_blocks: u64, num_blocks: u32, data: &[u8]) -> bool {
        if self.read_only {
            return false;
        }
        match self.bytes(offset_blocks, num_blocks) {
            Some((off, len)) if len == data.len() => {
                // SAFETY: the range lies inside the mapping (checked by `bytes`), which
                // this channel holds; `data` is a live slice of `len` bytes, the
                // caller's, not the device's, so the two do not overlap.
                unsafe {
                    std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.as_ptr().add(off), len)
                };
                true
            }
            _ => false,
        }
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        let n = self.done.len();
        for _ in 0..n {
            if let Some((tag, status)) = self.done.pop_front() {
                done(tag, status);
            }
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }
}

/// Rebuilds RAM devices in a successor: from the memfd handed over, or (recovery) from
/// the tmpfs file in the state directory; a RAM device that lived only in its memfd did
/// not survive the processes that held it.
pub struct RamAdopter;

impl Adopter for RamAdopter {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn adopt(&self, a: Adoption<'_>) -> Result<Arc<dyn Bdev>, BdevError> {
        let st: RamState = postcard::from_bytes(a.state).map_err(|e| {
            BdevError::Invalid(format!("RAM device {}: unreadable state: {e}", a.name))
        })?;
        let dev = match (a.fds, st.path) {
            (Some(mut fds), path) if fds.len() == 1 => {
                let fd = fds.pop().expect("length checked");
                MallocBdev::from_memfd_at(a.name, fd, st.block_size, path)?
            }
            (Some(fds), _) => {
                return Err(BdevError::Invalid(format!(
                    "RAM device {}: {} descriptors handed over, expected its memfd only",
                    a.name,
                    fds.len()
                )))
            }
            (None, Some(p)) => {
                let len = std::fs::metadata(&p)
                    .map_err(|source| BdevError::Open {
                        path: p.clone(),
                        source,
                    })?
                    .len();
                MallocBdev::open_shared(a.name, std::path::Path::new(&p), len, st.block_size)?
            }
            (None, None) => {
                return Err(BdevError::Invalid(format!(
                    "RAM device {} lived outside the state directory: its data did not survive",
                    a.name
                )))
            }
        };
        Ok(dev)
    }
}

#[cfg(test)]
mod tests;
