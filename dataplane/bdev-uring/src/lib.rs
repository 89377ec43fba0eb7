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
//! - Write Zeroes: on a block device `fallocate(FALLOC_FL_ZERO_RANGE)` (the kernel zeroes
//!   the range itself, with a fallback); on a regular file `fallocate(PUNCH_HOLE |
//!   KEEP_SIZE)`, which reads back as zeroes and gives the space back, so a pool
//!   formatted on a sparse file stays sparse. Where the filesystem refuses either,
//!   writes from a preallocated zero buffer, and later requests go straight to that
//!   path.
//! - Deallocate: `fallocate(PUNCH_HOLE | KEEP_SIZE)`, which reads back as zeroes on files
//!   and (through write-zeroes-with-unmap) on block devices. `supports_deallocate` is
//!   probed at open; where the device refuses at run time (EOPNOTSUPP) the request
//!   succeeds as a no-op, since deallocate is advisory.
//! - The ring ([`RingOptions`], module `ring`): the device's descriptor and a buffer
//!   pool are registered with each ring (the device offers the pool as its
//!   [`Bdev::dma_pool`], so a target takes its request buffers from it), completions
//!   interrupt nobody (`COOP_TASKRUN`), and the completion eventfd is quiet while the
//!   channel is polled busily.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use lightpool_bdev::{Adopter, Adoption, Bdev, BdevError, BdevInfo, Export, IoChannel};
use serde::{Deserialize, Serialize};

mod channel;
mod ring;

use channel::UringChannel;
#[cfg(test)]
pub(crate) use channel::DRAIN_AFTER_EMPTY_POLLS;
pub use ring::RingOptions;

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
pub(crate) enum Kind {
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
    ring: RingOptions,
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
        Self::open_with(path, opts, RingOptions::default())
    }

    /// As [`UringBdev::open`], with each channel's ring set up as `ring` says.
    pub fn open_with(
        path: &Path,
        opts: UringOptions,
        ring: RingOptions,
    ) -> Result<Arc<UringBdev>, BdevError> {
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
        Self::with_fd(file.into(), name, kind, &meta, direct, &opts, ring)
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
        Self::with_fd(
            file.into(),
            name.to_string(),
            kind,
            &meta,
            direct,
            &opts,
            RingOptions::default(),
        )
    }

    /// Checks the open file or device and builds the block device over it.
    fn with_fd(
        fd: OwnedFd,
        name: String,
        kind: Kind,
        meta: &std::fs::Metadata,
        direct: bool,
        opts: &UringOptions,
        ring: RingOptions,
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
                ring,
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

    /// The buffer pool every io_uring ring registers (see [`RingOptions::fixed_buffers`]):
    /// requests whose buffers come from it skip the page pinning of `O_DIRECT`.
    fn dma_pool(&self) -> Option<Arc<lightpool_dma::DmaPool>> {
        if self.shared.ring.fixed_buffers {
            ring::shared_pool()
        } else {
            None
        }
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(UringChannel::new(self.shared.clone())?))
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
