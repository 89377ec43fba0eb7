//! RAM block device: one shared-memory mapping shared by every channel.
//!
//! The memory is a file (a memfd, or a file in a state directory) so that it outlives
//! the process that made it: a hot upgrade hands the descriptor to the next binary,
//! which maps the same pages ([`MallocBdev::from_memfd`]), and nothing the host wrote
//! is lost. Which pages it is made of (2 MiB huge pages whenever enough are free) and
//! how it is populated before the first I/O is [`memory`]'s business. Channels copy
//! synchronously at submit and queue the completion in a preallocated ring that the
//! next `poll` hands back.

mod memory;

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use lightpool_bdev::{
    check_request, Adopter, Adoption, Bdev, BdevError, BdevInfo, DataRef, Export, IoChannel, IoOp,
    IoRequest, IoStatus,
};
use serde::{Deserialize, Serialize};

use memory::Mapping;
pub use memory::{remove_state_file, Backing, Pages, HUGE_PAGE};

/// Ranges at least this long are zeroed by punching a hole in ordinary memory (its
/// pages go back to the system) rather than by writing zeroes; shorter ones are memset.
const MADVISE_MIN: usize = 64 * 1024;

/// Completions a channel can hold between two polls before its ring grows.
const COMPLETION_RING: usize = 1024;

/// How a RAM device is made: see [`MallocBdev::with_options`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamOptions {
    /// Huge pages when free (the default), always, or never.
    pub pages: Pages,
    /// Fault every page in at creation, so that no I/O meets a page fault (the
    /// default). Ordinary memory larger than half of what is available is left to
    /// fault in as written, said once.
    pub populate: bool,
    /// A file (in a state directory on tmpfs) that keeps the data beyond every process:
    /// created if missing, reattached if present. In huge pages, the data lives in a
    /// file on a mounted hugetlbfs and `file` is a symbolic link to it.
    pub file: Option<PathBuf>,
}

impl Default for RamOptions {
    fn default() -> Self {
        RamOptions {
            pages: Pages::Auto,
            populate: true,
            file: None,
        }
    }
}

impl Mapping {
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

    /// Zeroes `len` bytes at `offset`: in ordinary memory, whole pages are punched out
    /// of the file (they read back as zeroes and give their memory back) and the partial
    /// pages at either end are memset; huge pages are memset.
    ///
    /// # Safety
    /// `offset + len <= self.len`.
    unsafe fn zero(&self, offset: usize, len: usize) {
        let page = self.page();
        let start = offset;
        let end = offset + len;
        let first_page = start.div_ceil(page) * page;
        let last_page = end / page * page;
        let base = self.ptr.as_ptr();
        // Huge pages are always written: a hole punched in hugetlbfs gives up the pages'
        // reservation, and writing there later could then fault with SIGBUS.
        if !self.huge && len >= MADVISE_MIN && first_page < last_page {
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

/// A block device in RAM.
pub struct MallocBdev {
    info: BdevInfo,
    mem: Arc<Mapping>,
    backing: Backing,
    /// The state-directory file holding the memory, when it is a named one.
    path: Option<String>,
}

impl std::fmt::Debug for MallocBdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MallocBdev")
            .field("info", &self.info)
            .field("backing", &self.backing)
            .finish()
    }
}

/// Checks a RAM device's geometry; its length in bytes.
fn check_geometry(name: &str, size_bytes: u64, block_size: u32) -> Result<usize, BdevError> {
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
    usize::try_from(size_bytes).map_err(|_| {
        BdevError::Invalid(format!(
            "RAM device {name}: size {size_bytes} bytes does not fit in this machine's address space"
        ))
    })
}

impl MallocBdev {
    /// Creates a RAM device of `size_bytes` bytes in blocks of `block_size` (512 or
    /// 4096) bytes, in ordinary memory reserved lazily: untouched blocks cost nothing.
    /// For tests and tools; a target makes its devices with
    /// [`MallocBdev::with_options`].
    pub fn new(name: &str, size_bytes: u64, block_size: u32) -> Result<Arc<MallocBdev>, BdevError> {
        let opts = RamOptions {
            pages: Pages::Ordinary,
            populate: false,
            file: None,
        };
        Self::with_options(name, size_bytes, block_size, &opts)
    }

    /// As [`MallocBdev::new`], in huge pages (2 MiB), populated: random reads then miss
    /// the TLB far less. `size_bytes` must be a multiple of 2 MiB and the system must
    /// have that many free huge pages (`hugepage-setup reserve`), or this fails saying
    /// so.
    pub fn new_hugepages(
        name: &str,
        size_bytes: u64,
        block_size: u32,
    ) -> Result<Arc<MallocBdev>, BdevError> {
        let opts = RamOptions {
            pages: Pages::Huge,
            populate: true,
            file: None,
        };
        Self::with_options(name, size_bytes, block_size, &opts)
    }

    /// Creates a RAM device of `size_bytes` bytes in blocks of `block_size` (512 or
    /// 4096) bytes as `opts` say: by default in 2 MiB huge pages when enough are free
    /// (else ordinary memory, said once with the reason and the command that reserves
    /// pages), every page faulted in now, and kept in `opts.file` when one is given (see
    /// [`RamOptions`]). [`MallocBdev::backing`] tells what it got.
    pub fn with_options(
        name: &str,
        size_bytes: u64,
        block_size: u32,
        opts: &RamOptions,
    ) -> Result<Arc<MallocBdev>, BdevError> {
        let len = check_geometry(name, size_bytes, block_size)?;
        let (mem, backing) = match &opts.file {
            None => Self::anonymous(name, len, opts)?,
            Some(path) => Self::in_file(name, path, len, opts)?,
        };
        if opts.populate && !mem.huge && memory::may_populate_ordinary(name, len) {
            // Ordinary memory that cannot be populated still works: each first write
            // pays a page fault, as before.
            if let Err(e) = mem.populate() {
                tracing::warn!(device = name, error = %e, "RAM device: pages not populated");
            }
        }
        Ok(Self::assemble(
            name,
            block_size,
            mem,
            backing,
            opts.file.as_ref().map(|p| p.display().to_string()),
        ))
    }

    fn assemble(
        name: &str,
        block_size: u32,
        mem: Mapping,
        backing: Backing,
        path: Option<String>,
    ) -> Arc<MallocBdev> {
        Arc::new(MallocBdev {
            info: BdevInfo {
                name: name.to_string(),
                block_size,
                num_blocks: mem.len as u64 / u64::from(block_size),
                read_only: false,
                volatile_write_cache: false,
                supports_deallocate: true,
            },
            mem: Arc::new(mem),
            backing,
            path,
        })
    }

    /// Huge pages as asked: `Ok(Some)` when had, `Ok(None)` with `reason` set when
    /// ordinary memory must do, an error when huge pages were required.
    fn huge_or_reason(
        name: &str,
        len: usize,
        opts: &RamOptions,
        attempt: impl FnOnce() -> Result<Mapping, String>,
        reason: &mut String,
    ) -> Result<Option<Mapping>, BdevError> {
        if opts.pages == Pages::Ordinary {
            *reason = "ordinary pages were asked for".into();
            return Ok(None);
        }
        match memory::huge_pages_unavailable(len).map_or_else(attempt, Err) {
            Ok(m) => return Ok(Some(m)),
            Err(r) => *reason = r,
        }
        if opts.pages == Pages::Huge {
            return Err(BdevError::Invalid(format!(
                "RAM device {name}: no 2 MiB huge pages: {reason}; reserve them first: {}",
                memory::reserve_hint(len)
            )));
        }
        Ok(None)
    }

    /// Mapped and, when asked, populated: a huge page the kernel cannot give fails here.
    fn populated(m: Mapping, opts: &RamOptions) -> Result<Mapping, String> {
        if opts.populate {
            m.populate()
                .map_err(|e| format!("the kernel could not fault the huge pages in ({e})"))?;
        }
        Ok(m)
    }

    /// A device in a memfd: huge pages when free, else ordinary memory.
    fn anonymous(
        name: &str,
        len: usize,
        opts: &RamOptions,
    ) -> Result<(Mapping, Backing), BdevError> {
        let mut reason = String::new();
        let attempt = || {
            Mapping::memfd(name, len, true)
                .map_err(|e| format!("the kernel gave no huge pages ({e})"))
                .and_then(|m| Self::populated(m, opts))
        };
        if let Some(m) = Self::huge_or_reason(name, len, opts, attempt, &mut reason)? {
            return Ok((m, Backing::Huge));
        }
        let m = Mapping::memfd(name, len, false).map_err(|e| {
            BdevError::Invalid(format!(
                "RAM device {name}: could not map {len} bytes of memory: {e}"
            ))
        })?;
        if opts.pages == Pages::Auto {
            memory::say_fallback(name, len, &reason, false);
        }
        Ok((m, Backing::Ordinary { reason }))
    }

    /// A device kept in `path` (a state directory): reattached if there, else made in
    /// huge pages on a hugetlbfs (`path` a link to it) when free, else a tmpfs file.
    fn in_file(
        name: &str,
        path: &Path,
        len: usize,
        opts: &RamOptions,
    ) -> Result<(Mapping, Backing), BdevError> {
        let shown = path.display().to_string();
        let open_err = |source| BdevError::Open {
            path: shown.clone(),
            source,
        };
        if let Some(f) = memory::open_existing(path).map_err(open_err)? {
            return Self::reattach(name, &shown, f, len, opts);
        }
        let mut reason = String::new();
        let attempt = || match memory::hugetlbfs_mount() {
            None => Err(
                "no hugetlbfs of 2 MiB pages is mounted to keep the state directory's file in"
                    .to_string(),
            ),
            Some(mount) => {
                let huge = memory::huge_file_for(&mount, path);
                memory::create_huge_file(path, &huge, len)
                    .map_err(|e| {
                        format!("no huge pages could be had from {}: {e}", mount.display())
                    })
                    .and_then(|m| {
                        Self::populated(m, opts).inspect_err(|_| {
                            let _ = memory::remove_state_file(path);
                        })
                    })
            }
        };
        if let Some(m) = Self::huge_or_reason(name, len, opts, attempt, &mut reason)? {
            return Ok((m, Backing::Huge));
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(open_err)?;
        f.set_len(len as u64).map_err(BdevError::Setup)?;
        let m = Mapping::map(f.into(), len).map_err(BdevError::Setup)?;
        if opts.pages == Pages::Auto {
            memory::say_fallback(name, len, &reason, true);
        }
        Ok((m, Backing::Ordinary { reason }))
    }

    /// The device's file exists (a restart, or recovery): its data is kept, in whatever
    /// pages it was made of.
    fn reattach(
        name: &str,
        shown: &str,
        f: std::fs::File,
        len: usize,
        opts: &RamOptions,
    ) -> Result<(Mapping, Backing), BdevError> {
        let have = f.metadata().map_err(BdevError::Setup)?.len();
        if have != len as u64 {
            return Err(BdevError::Invalid(format!(
                "RAM device {name}: {shown} holds {have} bytes but the device is configured with {len}; remove the file or fix the size"
            )));
        }
        let m = Mapping::map(f.into(), len).map_err(BdevError::Setup)?;
        if m.huge {
            Self::populated(m, opts)
                .map(|m| (m, Backing::Huge))
                .map_err(|e| BdevError::Invalid(format!("RAM device {name}: {shown}: {e}")))
        } else if opts.pages == Pages::Huge {
            Err(BdevError::Invalid(format!(
                "RAM device {name}: huge pages were asked for, but {shown} keeps its data in ordinary memory; remove it to start afresh"
            )))
        } else {
            let reason = format!("its data is kept in {shown}, made in ordinary memory earlier");
            if opts.pages == Pages::Auto {
                memory::say_fallback(name, len, &reason, true);
            }
            Ok((m, Backing::Ordinary { reason }))
        }
    }

    /// Adopts the memory of a RAM device made by another process (hot upgrade): `fd` is
    /// the memfd that [`MallocBdev::memfd`] exposed there. Its size gives the capacity.
    pub fn from_memfd(
        name: &str,
        fd: OwnedFd,
        block_size: u32,
    ) -> Result<Arc<MallocBdev>, BdevError> {
        Self::from_memfd_at(name, fd, block_size, None, false)
    }

    /// A RAM device whose memory is the file `path` on a tmpfs (e.g. /dev/shm), in
    /// ordinary memory, created at `size_bytes` if missing and reattached if present
    /// (its size must match): the data then outlives every process, so a target that
    /// crashes, or a hot upgrade whose both sides die, loses nothing acknowledged.
    pub fn open_shared(
        name: &str,
        path: &Path,
        size_bytes: u64,
        block_size: u32,
    ) -> Result<Arc<MallocBdev>, BdevError> {
        let opts = RamOptions {
            pages: Pages::Ordinary,
            populate: false,
            file: Some(path.to_path_buf()),
        };
        Self::with_options(name, size_bytes, block_size, &opts)
    }

    fn from_memfd_at(
        name: &str,
        fd: OwnedFd,
        block_size: u32,
        path: Option<String>,
        populate: bool,
    ) -> Result<Arc<MallocBdev>, BdevError> {
        if block_size != 512 && block_size != 4096 {
            return Err(BdevError::Invalid(format!(
                "RAM device {name}: block size {block_size} is not supported; use 512 or 4096"
            )));
        }
        let size = std::fs::File::from(fd.try_clone().map_err(BdevError::Setup)?)
            .metadata()
            .map_err(BdevError::Setup)?
            .len();
        if size == 0 || !size.is_multiple_of(u64::from(block_size)) {
            return Err(BdevError::Invalid(format!(
                "RAM device {name}: handed-over memory of {size} bytes is not a whole number of {block_size}-byte blocks"
            )));
        }
        let len = check_geometry(name, size, block_size)?;
        let mem = Mapping::map(fd, len).map_err(BdevError::Setup)?;
        let backing = if mem.huge {
            Backing::Huge
        } else {
            Backing::Ordinary {
                reason: "the memory handed over is ordinary memory".into(),
            }
        };
        // The predecessor's pages, entered in this process's page tables now rather than
        // by the first I/O to each.
        if populate && (mem.huge || memory::may_populate_ordinary(name, len)) {
            if let Err(e) = mem.populate() {
                tracing::warn!(device = name, error = %e, "RAM device: pages not populated");
            }
        }
        Ok(Self::assemble(name, block_size, mem, backing, path))
    }

    /// What the device's memory is made of.
    pub fn backing(&self) -> &Backing {
        &self.backing
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
                MallocBdev::from_memfd_at(a.name, fd, st.block_size, path, true)?
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
                // The file is there (checked just above), so it is reattached as it is,
                // in huge pages or not.
                let opts = RamOptions {
                    file: Some(PathBuf::from(&p)),
                    ..RamOptions::default()
                };
                MallocBdev::with_options(a.name, len, st.block_size, &opts)?
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
