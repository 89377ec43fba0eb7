//! io_uring backend over a regular file or a block device.
//!
//! The device is opened once and its fd shared by every channel; each channel owns its
//! own ring (`queue_depth` entries). `submit` only pushes an SQE (or parks the request in
//! a preallocated backlog when `queue_depth` requests are already in flight); `poll`
//! makes the one `io_uring_enter` that submits everything pushed since the last poll,
//! then reaps completions. Short reads and writes are resubmitted for the remainder.
//!
//! Start-up choices:
//! - Block size: a block device's logical block size (BLKSSZGET) unless a larger one is
//!   asked for; 4096 for regular files (the page and filesystem block size, so `O_DIRECT`
//!   works on any filesystem and device).
//! - `O_DIRECT` refused by the filesystem (EINVAL at open): the file is opened buffered
//!   instead, with one warning; [`UringBdev::is_direct`] tells which it got. Durability
//!   does not depend on it, because this backend reports a volatile write cache and
//!   implements Flush with `fdatasync`.
//! - Write Zeroes: `fallocate(FALLOC_FL_ZERO_RANGE)` (the kernel zeroes a block device
//!   range itself, with a fallback); where the filesystem refuses it, writes from a
//!   preallocated zero buffer, and later requests go straight to that path.
//! - Deallocate: `fallocate(PUNCH_HOLE | KEEP_SIZE)`, which reads back as zeroes on files
//!   and (through write-zeroes-with-unmap) on block devices. `supports_deallocate` is
//!   probed at open; where the device refuses at run time (EOPNOTSUPP) the request
//!   succeeds as a no-op, since deallocate is advisory.
//! - Registered buffers are not used: buffers come from the target's slabs and change
//!   per request; the gain would be small next to the work to register them.

use std::collections::VecDeque;
use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring};

use lightpool_bdev::{
    check_request, Adopter, Adoption, Bdev, BdevError, BdevInfo, Export, IoChannel, IoOp,
    IoRequest, IoStatus,
};
use serde::{Deserialize, Serialize};

/// How to open a [`UringBdev`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UringOptions {
    /// Logical block size (512 or 4096). `None`: the device's own for block devices,
    /// 4096 for regular files.
    pub block_size: Option<u32>,
    /// Open read-only; writes complete with [`IoStatus::ReadOnly`].
    pub read_only: bool,
    /// Bypass the page cache (`O_DIRECT`). Default true.
    pub direct: bool,
    /// Ring entries per channel, and requests in flight per channel (more wait in a
    /// backlog). Default 128; at most 4096.
    pub queue_depth: u32,
}

impl Default for UringOptions {
    fn default() -> Self {
        UringOptions {
            block_size: None,
            read_only: false,
            direct: true,
            queue_depth: 128,
        }
    }
}

const MAX_QUEUE_DEPTH: u32 = 4096;
/// Size of the shared zero buffer used when the filesystem cannot zero a range itself.
const ZERO_BUF_LEN: usize = 256 * 1024;
/// Largest single read or write SQE (the kernel caps one call near 2 GiB).
const MAX_RW_CHUNK: u64 = 1 << 30;
/// CQEs taken off the ring per batch (a stack array, so reaping allocates nothing).
const REAP_BATCH: usize = 64;
/// Empty polls after a completion before the channel resets its eventfd. Resetting is a
/// system call; doing it after every burst would cost one per I/O at queue depth 1, and
/// it only matters once the reactor is about to sleep (after some hundreds of
/// microseconds of idle spinning, i.e. many more polls than this). If the reactor sleeps
/// first, the stale readiness wakes it once and the next polls reset it.
pub(crate) const DRAIN_AFTER_EMPTY_POLLS: u32 = 256;

/// `_IOR(0x12, 114, size_t)`: device size in bytes. Not in libc; this is the encoding
/// on x86_64 and aarch64 (the generic ioctl layout).
const BLKGETSIZE64: libc::c_ulong = (2 << 30) | (8 << 16) | (0x12 << 8) | 114;

/// A 4096-byte-aligned, zero-filled buffer, shared read-only by every channel.
struct ZeroBuf {
    ptr: std::ptr::NonNull<u8>,
}

impl ZeroBuf {
    fn layout() -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(ZERO_BUF_LEN, 4096)
            .expect("a 256 KiB size with 4096 alignment is a valid layout")
    }

    fn new() -> Self {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::layout()) };
        let ptr = std::ptr::NonNull::new(ptr)
            .unwrap_or_else(|| std::alloc::handle_alloc_error(Self::layout()));
        ZeroBuf { ptr }
    }
}

impl Drop for ZeroBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout; every channel that could have
        // an SQE pointing here holds the `Arc<Shared>` and waits for its SQEs on drop.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout()) }
    }
}

// SAFETY: the buffer is never written after `new` (the kernel only reads it for write
// SQEs), so sharing it between threads is sharing immutable memory.
unsafe impl Send for ZeroBuf {}
// SAFETY: as for Send.
unsafe impl Sync for ZeroBuf {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    BlockDevice,
}

struct Shared {
    info: BdevInfo,
    fd: OwnedFd,
    queue_depth: u32,
    direct: bool,
    kind: Kind,
    /// `fallocate(ZERO_RANGE)` has not been refused yet.
    zero_range: AtomicBool,
    /// A run-time EOPNOTSUPP on deallocate has been logged.
    dealloc_warned: AtomicBool,
    zero_buf: ZeroBuf,
}

/// A regular file or block device driven through io_uring.
pub struct UringBdev {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for UringBdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringBdev")
            .field("info", &self.shared.info)
            .field("direct", &self.shared.direct)
            .field("kind", &self.shared.kind)
            .finish()
    }
}

fn invalid(msg: String) -> BdevError {
    BdevError::Invalid(msg)
}

fn check_queue_depth(name: &str, opts: &UringOptions) -> Result<(), BdevError> {
    if opts.queue_depth == 0 || opts.queue_depth > MAX_QUEUE_DEPTH {
        return Err(invalid(format!(
            "{name}: queue depth {} is out of range; use 1 to {MAX_QUEUE_DEPTH}",
            opts.queue_depth
        )));
    }
    Ok(())
}

/// A regular file or a block device; `None` for anything else.
fn kind_of(meta: &std::fs::Metadata) -> Option<Kind> {
    let ft = meta.file_type();
    if ft.is_block_device() {
        Some(Kind::BlockDevice)
    } else if ft.is_file() {
        Some(Kind::File)
    } else {
        None
    }
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

impl UringBdev {
    /// Opens `path` (a regular file or a block device) and checks it can serve as a
    /// block device: exists, right type, non-empty, size a whole number of blocks,
    /// writable unless `read_only`.
    pub fn open(path: &Path, opts: UringOptions) -> Result<Arc<UringBdev>, BdevError> {
        let name = path.display().to_string();
        check_queue_depth(&name, &opts)?;
        if let Some(bs) = opts.block_size {
            if bs != 512 && bs != 4096 {
                return Err(invalid(format!(
                    "{name}: block size {bs} is not supported; use 512 or 4096"
                )));
            }
        }
        let meta = std::fs::metadata(path).map_err(|source| BdevError::Open {
            path: name.clone(),
            source,
        })?;
        if meta.file_type().is_dir() {
            return Err(invalid(format!(
                "{name} is a directory; give a regular file or a block device"
            )));
        }
        let kind = kind_of(&meta).ok_or_else(|| {
            invalid(format!(
                "{name} is neither a regular file nor a block device"
            ))
        })?;

        let (file, direct) = open_file(path, &name, &opts)?;
        Self::with_fd(file.into(), name, kind, &meta, direct, &opts)
    }

    /// Hot upgrade, new process: the same open file or block device the predecessor
    /// served (its descriptor, with its access mode and `O_DIRECT` or not), so that a
    /// file renamed or unlinked since it was opened is still the one served. `name` is
    /// the path it was opened by, for messages and the next handover.
    pub fn adopt(fd: OwnedFd, name: &str, opts: UringOptions) -> Result<Arc<UringBdev>, BdevError> {
        check_queue_depth(name, &opts)?;
        let file = std::fs::File::from(fd);
        let meta = file.metadata().map_err(|source| BdevError::Open {
            path: name.to_string(),
            source,
        })?;
        let kind = kind_of(&meta).ok_or_else(|| {
            invalid(format!(
                "{name}: the descriptor handed over is neither a regular file nor a block device"
            ))
        })?;
        // SAFETY: F_GETFL takes no argument and only reads the descriptor's flags.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(BdevError::Setup(std::io::Error::last_os_error()));
        }
        let writable = flags & libc::O_ACCMODE == libc::O_RDWR;
        if !opts.read_only && !writable {
            return Err(invalid(format!(
                "{name}: the descriptor handed over is not open for writing"
            )));
        }
        let direct = flags & libc::O_DIRECT != 0;
        Self::with_fd(file.into(), name.to_string(), kind, &meta, direct, &opts)
    }

    /// Checks the open file or device and builds the block device over it.
    fn with_fd(
        fd: OwnedFd,
        name: String,
        kind: Kind,
        meta: &std::fs::Metadata,
        direct: bool,
        opts: &UringOptions,
    ) -> Result<Arc<UringBdev>, BdevError> {
        let (size, block_size) = match kind {
            Kind::File => {
                // The open file's size (fstat), not the path's: a path may name another
                // file by now.
                let size = std::fs::File::from(fd.try_clone().map_err(BdevError::Setup)?)
                    .metadata()
                    .map_err(|source| BdevError::Open {
                        path: name.clone(),
                        source,
                    })?
                    .len();
                let bs = opts.block_size.unwrap_or(4096);
                if direct {
                    check_dio_alignment(&fd, &name, bs)?;
                }
                (size, bs)
            }
            Kind::BlockDevice => {
                let size = blkdev_size(&fd).map_err(|source| BdevError::Open {
                    path: name.clone(),
                    source,
                })?;
                let lbs = blkdev_logical_block_size(&fd).map_err(|source| BdevError::Open {
                    path: name.clone(),
                    source,
                })?;
                let bs = match opts.block_size {
                    None if lbs == 512 || lbs == 4096 => lbs,
                    None => {
                        return Err(invalid(format!(
                            "{name}: the device's {lbs}-byte logical block size is not supported; LightPool serves 512 or 4096"
                        )))
                    }
                    Some(bs) if bs < lbs => {
                        return Err(invalid(format!(
                            "{name}: block size {bs} is smaller than the device's {lbs}-byte logical block"
                        )))
                    }
                    Some(bs) => bs,
                };
                (size, bs)
            }
        };
        if size == 0 {
            return Err(invalid(format!(
                "{name}: size is 0 bytes; it must hold at least one {block_size}-byte block"
            )));
        }
        if !size.is_multiple_of(u64::from(block_size)) {
            return Err(invalid(format!(
                "{name}: size {size} bytes is not a multiple of the {block_size}-byte block size"
            )));
        }

        let supports_deallocate = !opts.read_only
            && match kind {
                Kind::File => probe_punch_hole(&fd, size, block_size),
                Kind::BlockDevice => {
                    sysfs_queue_u64(meta, "write_zeroes_max_bytes").unwrap_or(0) > 0
                }
            };
        // Files: data may sit in the page cache or wait on metadata (allocation) until
        // fdatasync. Block devices: whatever the kernel says about the device's cache.
        let volatile_write_cache = match kind {
            Kind::File => true,
            Kind::BlockDevice => {
                sysfs_queue_string(meta, "write_cache").is_none_or(|s| s.trim() != "write through")
            }
        };

        Ok(Arc::new(UringBdev {
            shared: Arc::new(Shared {
                info: BdevInfo {
                    name,
                    block_size,
                    num_blocks: size / u64::from(block_size),
                    read_only: opts.read_only,
                    volatile_write_cache,
                    supports_deallocate,
                },
                fd,
                queue_depth: opts.queue_depth,
                direct,
                kind,
                zero_range: AtomicBool::new(true),
                dealloc_warned: AtomicBool::new(false),
                zero_buf: ZeroBuf::new(),
            }),
        }))
    }

    /// True when the device is opened with `O_DIRECT` (false after a fallback).
    pub fn is_direct(&self) -> bool {
        self.shared.direct
    }

    /// True for a block device, false for a regular file.
    pub fn is_block_device(&self) -> bool {
        self.shared.kind == Kind::BlockDevice
    }
}

/// Opens with the access the options ask for, turning the errors a user can fix into
/// sentences. Returns the file and whether it is `O_DIRECT`.
fn open_file(
    path: &Path,
    name: &str,
    opts: &UringOptions,
) -> Result<(std::fs::File, bool), BdevError> {
    let try_open = |direct: bool| {
        let mut o = OpenOptions::new();
        o.read(true).write(!opts.read_only);
        o.custom_flags(libc::O_CLOEXEC | if direct { libc::O_DIRECT } else { 0 });
        o.open(path)
    };
    let mut direct = opts.direct;
    let mut res = try_open(direct);
    if direct {
        if let Err(e) = &res {
            if errno(e) == libc::EINVAL {
                tracing::warn!(
                    path = name,
                    "the filesystem does not support O_DIRECT; using buffered I/O (Flush still makes writes durable)"
                );
                direct = false;
                res = try_open(false);
            }
        }
    }
    match res {
        Ok(f) => Ok((f, direct)),
        Err(e) => {
            let code = errno(&e);
            let read_only_file = matches!(
                code,
                libc::EACCES | libc::EROFS | libc::EPERM | libc::ETXTBSY
            );
            if !opts.read_only && read_only_file {
                // Only blame read-only-ness if the file can in fact be read.
                let readable = OpenOptions::new().read(true).open(path).is_ok();
                if readable {
                    return Err(invalid(format!(
                        "{name}: opened read-write but the file is read-only ({e}); set read_only = true"
                    )));
                }
            }
            Err(BdevError::Open {
                path: name.to_string(),
                source: e,
            })
        }
    }
}

/// Refuses a block size the filesystem cannot do `O_DIRECT` at (statx DIOALIGN, Linux
/// 6.1+; older kernels skip the check and fail at the first misaligned I/O).
fn check_dio_alignment(fd: &OwnedFd, name: &str, bs: u32) -> Result<(), BdevError> {
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let empty = CString::default();
    // SAFETY: `empty` is a valid C string, `stx` a live local the kernel writes into,
    // and the fd is open.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return Ok(());
    }
    let align = stx.stx_dio_offset_align;
    if align != 0 && !bs.is_multiple_of(align) {
        return Err(invalid(format!(
            "{name}: block size {bs} is not a multiple of the {align}-byte alignment O_DIRECT needs here; use a larger block size or direct = false"
        )));
    }
    Ok(())
}

fn blkdev_size(fd: &OwnedFd) -> std::io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 into the live local; the fd is an open block
    // device.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), BLKGETSIZE64 as _, &mut size) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}

fn blkdev_logical_block_size(fd: &OwnedFd) -> std::io::Result<u32> {
    let mut lbs: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int into the live local; the fd is an open block
    // device.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::BLKSSZGET as _, &mut lbs) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    u32::try_from(lbs).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

fn sysfs_queue_string(meta: &std::fs::Metadata, attr: &str) -> Option<String> {
    let rdev = meta.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    // A partition has no queue/ of its own; its parent's is one level up.
    let base = format!("/sys/dev/block/{major}:{minor}");
    std::fs::read_to_string(format!("{base}/queue/{attr}"))
        .or_else(|_| std::fs::read_to_string(format!("{base}/../queue/{attr}")))
        .ok()
}

fn sysfs_queue_u64(meta: &std::fs::Metadata, attr: &str) -> Option<u64> {
    sysfs_queue_string(meta, attr)?.trim().parse().ok()
}

/// Punches a hole past the end of the file (with KEEP_SIZE that changes nothing) to
/// learn whether the filesystem supports it.
fn probe_punch_hole(fd: &OwnedFd, size: u64, block_size: u32) -> bool {
    let Ok(off) = libc::off_t::try_from(size) else {
        return false;
    };
    let len = libc::off_t::from(block_size);
    // SAFETY: fallocate takes no pointers; the range lies past EOF and KEEP_SIZE keeps
    // the file as it is.
    let rc = unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    };
    rc == 0
}

/// [`Bdev::kind`] of io_uring devices.
pub const KIND: &str = "uring";

/// What a successor needs besides the open descriptor.
#[derive(Debug, Serialize, Deserialize)]
struct UringState {
    /// The path it was opened by (recovery reopens it).
    path: String,
    opts: UringOptions,
}

impl Bdev for UringBdev {
    fn info(&self) -> &BdevInfo {
        &self.shared.info
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    /// The open descriptor (nothing is buffered in this process: every acknowledged
    /// write has reached the kernel), so the successor serves the same file even when
    /// the path names another one by now. The io_uring rings are not handed over: they
    /// belong to channels, which hold no request once the target has drained, and the
    /// successor's channels make their own.
    fn export(&self) -> Result<Export, BdevError> {
        let s = &self.shared;
        let st = UringState {
            path: s.info.name.clone(),
            opts: UringOptions {
                block_size: Some(s.info.block_size),
                read_only: s.info.read_only,
                direct: s.direct,
                queue_depth: s.queue_depth,
            },
        };
        Ok(Export {
            state: postcard::to_stdvec(&st)
                .map_err(|e| invalid(format!("{}: state: {e}", s.info.name)))?,
            fds: vec![s
                .fd
                .as_fd()
                .try_clone_to_owned()
                .map_err(BdevError::Setup)?],
        })
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(UringChannel::new(self.shared.clone())?))
    }
}

/// One request in flight on the ring. `user_data` of its SQE is its slot index.
#[derive(Clone, Copy)]
struct Slot {
    tag: u64,
    op: IoOp,
    /// Next byte offset on the device.
    offset: u64,
    /// Next byte of the caller's buffer (Read/Write).
    buf: *mut u8,
    /// Bytes still to transfer or zero.
    remaining: u64,
    /// Bytes asked for by the SQE in flight.
    chunk: u64,
    /// WriteZeroes by writing the zero buffer.
    zero_writes: bool,
}

impl Slot {
    const EMPTY: Slot = Slot {
        tag: 0,
        op: IoOp::Flush,
        offset: 0,
        buf: std::ptr::null_mut(),
        remaining: 0,
        chunk: 0,
        zero_writes: false,
    };
}

struct UringChannel {
    shared: Arc<Shared>,
    ring: IoUring,
    eventfd: OwnedFd,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Requests waiting for a free slot.
    backlog: VecDeque<IoRequest>,
    /// Requests finished without reaching the ring (range errors, read-only).
    ready: VecDeque<(u64, IoStatus)>,
    /// SQEs pushed since the last `io_uring_enter`.
    unsubmitted: usize,
    /// A CQE was reaped since the eventfd was last drained, so it may be readable.
    maybe_signaled: bool,
    /// Consecutive polls that returned nothing.
    empty_polls: u32,
}

impl UringChannel {
    fn new(shared: Arc<Shared>) -> Result<Self, BdevError> {
        let depth = shared.queue_depth;
        let ring = IoUring::new(depth).map_err(BdevError::Setup)?;
        // SAFETY: eventfd takes no pointers; a non-negative return is an fd we own.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(BdevError::Setup(std::io::Error::last_os_error()));
        }
        // SAFETY: `efd` was just created and is owned by nobody else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.submitter()
            .register_eventfd(eventfd.as_raw_fd())
            .map_err(BdevError::Setup)?;
        let depth = depth as usize;
        Ok(UringChannel {
            shared,
            ring,
            eventfd,
            slots: vec![Slot::EMPTY; depth],
            free: (0..depth).rev().collect(),
            backlog: VecDeque::with_capacity(depth * 4),
            ready: VecDeque::with_capacity(depth),
            unsubmitted: 0,
            maybe_signaled: false,
            empty_polls: 0,
        })
    }

    /// Checks a request and gives it a slot, or finishes it at once, or parks it.
    fn start(&mut self, req: IoRequest) {
        let (offset, len) = match check_request(&self.shared.info, &req) {
            Ok(r) => r,
            Err(status) => {
                self.ready.push_back((req.tag, status));
                return;
            }
        };
        if len == 0 && req.op != IoOp::Flush {
            self.ready.push_back((req.tag, IoStatus::Success));
            return;
        }
        let Some(index) = self.free.pop() else {
            self.backlog.push_back(req);
            return;
        };
        self.slots[index] = Slot {
            tag: req.tag,
            op: req.op,
            offset,
            buf: req.buf,
            remaining: len,
            chunk: 0,
            zero_writes: req.op == IoOp::WriteZeroes
                && !self.shared.zero_range.load(Ordering::Relaxed),
        };
        self.push_sqe(index);
    }

    /// Pushes the next SQE of the request in slot `index`.
    fn push_sqe(&mut self, index: usize) {
        let fd = types::Fd(self.shared.fd.as_raw_fd());
        let slot = &mut self.slots[index];
        let entry: squeue::Entry = match slot.op {
            IoOp::Read => {
                slot.chunk = slot.remaining.min(MAX_RW_CHUNK);
                opcode::Read::new(fd, slot.buf, slot.chunk as u32)
                    .offset(slot.offset)
                    .build()
            }
            IoOp::Write => {
                slot.chunk = slot.remaining.min(MAX_RW_CHUNK);
                opcode::Write::new(fd, slot.buf, slot.chunk as u32)
                    .offset(slot.offset)
                    .build()
            }
            IoOp::WriteZeroes if slot.zero_writes => {
                slot.chunk = slot.remaining.min(ZERO_BUF_LEN as u64);
                opcode::Write::new(fd, self.shared.zero_buf.ptr.as_ptr(), slot.chunk as u32)
                    .offset(slot.offset)
                    .build()
            }
            IoOp::WriteZeroes => {
                slot.chunk = slot.remaining;
                opcode::Fallocate::new(fd, slot.remaining)
                    .offset(slot.offset)
                    .mode(libc::FALLOC_FL_ZERO_RANGE)
                    .build()
            }
            IoOp::Deallocate => {
                slot.chunk = slot.remaining;
                opcode::Fallocate::new(fd, slot.remaining)
                    .offset(slot.offset)
                    .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                    .build()
            }
            IoOp::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(index as u64);
        // SAFETY: the SQE's buffer is either the caller's, which `submit`'s contract keeps
        // valid until we return its completion (the slot stays taken until then), or the
        // shared zero buffer, which lives as long as `self.shared`; the fd lives as long
        // as `self.shared` too, and Drop waits for every SQE before either goes.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        match pushed {
            Ok(()) => self.unsubmitted += 1,
            Err(_) => {
                // Cannot happen: at most `queue_depth` slots are taken, each with at most
                // one SQE, and the SQ has at least `queue_depth` entries.
                debug_assert!(false, "io_uring submission queue full");
                let tag = self.slots[index].tag;
                self.free.push(index);
                self.ready.push_back((tag, IoStatus::Io(libc::EBUSY)));
            }
        }
    }

    /// One `io_uring_enter` for everything pushed since the last one.
    fn submit_pending(&mut self) {
        if self.unsubmitted == 0 {
            return;
        }
        match self.ring.submit() {
            Ok(n) => self.unsubmitted = self.unsubmitted.saturating_sub(n),
            Err(e) => match errno(&e) {
                // Transient: the kernel is short of memory or completions; retry next poll.
                libc::EAGAIN | libc::EBUSY | libc::EINTR => {}
                _ => {
                    tracing::error!(device = %self.shared.info.name, error = %e, "io_uring submit failed")
                }
            },
        }
    }

    /// Moves parked requests into free slots.
    fn fill_from_backlog(&mut self) {
        while !self.free.is_empty() {
            let Some(req) = self.backlog.pop_front() else {
                break;
            };
            self.start(req);
        }
    }

    /// Reaps every CQE on the ring. Returns how many requests finished.
    fn reap(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        let mut finished = 0;
        let mut batch = [(0u64, 0i32); REAP_BATCH];
        loop {
            let mut n = 0;
            for cqe in self.ring.completion().take(REAP_BATCH) {
                batch[n] = (cqe.user_data(), cqe.result());
                n += 1;
            }
            if n == 0 {
                break;
            }
            self.maybe_signaled = true;
            for &(user_data, res) in &batch[..n] {
                if let Some(status) = self.advance(user_data as usize, res) {
                    let tag = self.slots[user_data as usize].tag;
                    self.free.push(user_data as usize);
                    done(tag, status);
                    finished += 1;
                }
            }
        }
        finished
    }

    /// Applies one CQE to its request: `Some(status)` when the request is finished,
    /// `None` when another SQE was pushed for it.
    fn advance(&mut self, index: usize, res: i32) -> Option<IoStatus> {
        let slot = &mut self.slots[index];
        match slot.op {
            IoOp::Read | IoOp::Write => {
                if res < 0 {
                    return Some(IoStatus::Io(-res));
                }
                if res == 0 {
                    // No progress (end of file, e.g. truncated under us): do not spin.
                    return Some(IoStatus::Io(libc::EIO));
                }
                let n = u64::from(res.unsigned_abs()).min(slot.chunk);
                slot.offset += n;
                // SAFETY: `n <= remaining`, so the pointer stays inside (or one past the
                // end of) the caller's buffer.
                slot.buf = unsafe { slot.buf.add(n as usize) };
                slot.remaining -= n;
            }
            IoOp::WriteZeroes if slot.zero_writes => {
                if res < 0 {
                    return Some(IoStatus::Io(-res));
                }
                if res == 0 {
                    return Some(IoStatus::Io(libc::EIO));
                }
                let n = u64::from(res.unsigned_abs()).min(slot.chunk);
                slot.offset += n;
                slot.remaining -= n;
            }
            IoOp::WriteZeroes => {
                if res == -libc::EOPNOTSUPP || res == -libc::EINVAL {
                    if self.shared.zero_range.swap(false, Ordering::Relaxed) {
                        tracing::info!(
                            device = %self.shared.info.name,
                            "fallocate(ZERO_RANGE) not supported; writing zeroes instead"
                        );
                    }
                    slot.zero_writes = true;
                } else if res < 0 {
                    return Some(IoStatus::Io(-res));
                } else {
                    return Some(IoStatus::Success);
                }
            }
            IoOp::Deallocate => {
                if res == -libc::EOPNOTSUPP {
                    if !self.shared.dealloc_warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            device = %self.shared.info.name,
                            "deallocate not supported by the device; completing it as a no-op"
                        );
                    }
                    return Some(IoStatus::Success);
                }
                return Some(if res < 0 {
                    IoStatus::Io(-res)
                } else {
                    IoStatus::Success
                });
            }
            IoOp::Flush => {
                return Some(if res < 0 {
                    IoStatus::Io(-res)
                } else {
                    IoStatus::Success
                });
            }
        }
        if self.slots[index].remaining == 0 {
            return Some(IoStatus::Success);
        }
        self.push_sqe(index);
        None
    }

    fn drain_eventfd(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live local; the eventfd is open and
        // non-blocking.
        let _ = unsafe { libc::read(self.eventfd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    fn slots_in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

impl IoChannel for UringChannel {
    unsafe fn submit(&mut self, req: IoRequest) {
        self.start(req);
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        let mut n = 0;
        let ready = self.ready.len();
        for _ in 0..ready {
            if let Some((tag, status)) = self.ready.pop_front() {
                done(tag, status);
                n += 1;
            }
        }
        self.submit_pending();
        n += self.reap(done);
        if n > 0 {
            self.empty_polls = 0;
        } else if self.maybe_signaled {
            self.empty_polls += 1;
            if self.empty_polls >= DRAIN_AFTER_EMPTY_POLLS {
                // Idle for a while: consume the eventfd's count so a sleeping reactor is
                // not woken for completions already reaped, then look again, because a
                // CQE posted just before the read would otherwise wake nobody.
                self.drain_eventfd();
                self.maybe_signaled = false;
                self.empty_polls = 0;
                n += self.reap(done);
            }
        }
        // Slots freed by reaping take parked requests; next chunks and fallbacks were
        // pushed while reaping. Both go out now rather than waiting a poll.
        self.fill_from_backlog();
        self.submit_pending();
        n
    }

    fn in_flight(&self) -> usize {
        self.slots_in_use() + self.backlog.len() + self.ready.len()
    }

    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.eventfd.as_raw_fd())
    }
}

impl Drop for UringChannel {
    fn drop(&mut self) {
        // The kernel may still read or write the buffers of SQEs in flight: wait for all
        // of them, so nobody frees a buffer (or the zero buffer) under the kernel.
        while self.slots_in_use() > 0 {
            let waiting = self.slots_in_use();
            if let Err(e) = self.ring.submit_and_wait(1) {
                if errno(&e) != libc::EINTR {
                    tracing::error!(device = %self.shared.info.name, error = %e,
                        "io_uring wait failed while closing a channel with {waiting} requests in flight");
                    return;
                }
            }
            let mut discard = |_: u64, _: IoStatus| {};
            self.reap(&mut discard);
            // Parked requests are abandoned: their owner is going away with us.
            self.backlog.clear();
        }
    }
}

/// Rebuilds io_uring devices in a successor: from the descriptor handed over
/// ([`UringBdev::adopt`]), or (recovery) by opening the path again.
pub struct UringAdopter;

impl Adopter for UringAdopter {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn adopt(&self, a: Adoption<'_>) -> Result<Arc<dyn Bdev>, BdevError> {
        let st: UringState = postcard::from_bytes(a.state)
            .map_err(|e| invalid(format!("{}: unreadable state: {e}", a.name)))?;
        let dev = match a.fds {
            Some(mut fds) if fds.len() == 1 => {
                UringBdev::adopt(fds.pop().expect("length checked"), &st.path, st.opts)?
            }
            Some(fds) => {
                return Err(invalid(format!(
                    "{}: {} descriptors handed over, expected one",
                    a.name,
                    fds.len()
                )))
            }
            None => UringBdev::open(Path::new(&st.path), st.opts)?,
        };
        Ok(dev)
    }
}

#[cfg(test)]
mod tests;
