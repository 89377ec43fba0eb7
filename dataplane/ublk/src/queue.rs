//! One ublk queue, served by a poller on one reactor: its own io_uring (the kernel
//! hands this queue's requests to the thread that fetched them, and takes the answers
//! from that thread only), the queue's mapped request descriptors, one buffer per tag,
//! and the block device's I/O channel of that reactor.
//!
//! A tag goes round: FETCH (or COMMIT_AND_FETCH) sits in the kernel until a request
//! arrives; its completion says "descriptor `tag` holds a request" (for a write the
//! kernel has copied the data into the tag's buffer already); the request goes to the
//! block device with the tag's buffer; its completion becomes the tag's next
//! COMMIT_AND_FETCH (for a read the kernel copies from the buffer). The kernel's copy
//! between its request pages and the buffer is the only one: the block device reads and
//! writes the buffer itself, which comes from its DMA pool when it has one.
//!
//! A warm queue allocates nothing and takes no lock; a poll with nothing to do makes no
//! system call (completions are posted by the kernel's task work, which interrupts the
//! reactor, or wakes it from epoll through the ring's descriptor).

use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};
use lightpool_bdev::{Bdev, BdevInfo, IoChannel, IoOp, IoRequest, IoStatus};
use lightpool_dma::{DmaBuf, DmaMemory, DmaPool, HugePages};
use lightpool_reactor::{Ctx, Interest, PollStatus, Poller};

use crate::sys::{self, IoCmd, IoDesc};
use crate::UblkError;

/// One request as the block device takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    pub op: IoOp,
    pub offset_blocks: u64,
    pub num_blocks: u32,
    /// Bytes of buffer (reads and writes), 0 for the others.
    pub bytes: usize,
}

/// What descriptor `d` asks of a device of `block_size`-byte blocks, whose buffers hold
/// `max_io` bytes; or the negative errno the request ends with.
pub fn map_request(d: &IoDesc, block_size: u32, max_io: usize) -> Result<Mapped, i32> {
    let op = match (d.op_flags & 0xff) as u8 {
        sys::IO_OP_READ => IoOp::Read,
        sys::IO_OP_WRITE => IoOp::Write,
        sys::IO_OP_FLUSH => IoOp::Flush,
        sys::IO_OP_DISCARD => IoOp::Deallocate,
        sys::IO_OP_WRITE_ZEROES => IoOp::WriteZeroes,
        _ => return Err(-libc::EOPNOTSUPP),
    };
    if op == IoOp::Flush {
        return Ok(Mapped {
            op,
            offset_blocks: 0,
            num_blocks: 0,
            bytes: 0,
        });
    }
    let per_block = u64::from(block_size / 512);
    if per_block == 0
        || !d.start_sector.is_multiple_of(per_block)
        || !u64::from(d.nr_sectors).is_multiple_of(per_block)
    {
        return Err(-libc::EINVAL);
    }
    let num_blocks =
        u32::try_from(u64::from(d.nr_sectors) / per_block).map_err(|_| -libc::EINVAL)?;
    let bytes = if matches!(op, IoOp::Read | IoOp::Write) {
        let b = d.nr_sectors as usize * 512;
        if b > max_io || b == 0 {
            return Err(-libc::EINVAL);
        }
        b
    } else {
        0
    };
    Ok(Mapped {
        op,
        offset_blocks: d.start_sector / per_block,
        num_blocks,
        bytes,
    })
}

/// The result a finished request commits: bytes done for reads and writes, 0 for the
/// others, -EIO for any failure.
pub fn commit_result(status: IoStatus, bytes: usize) -> i32 {
    match status {
        IoStatus::Success => i32::try_from(bytes).unwrap_or(-libc::EIO),
        _ => -libc::EIO,
    }
}

/// How a queue is built (the device's parts every queue shares).
pub(crate) struct QueueSpec {
    pub dev_id: u32,
    pub q_id: u16,
    pub depth: u16,
    pub max_io: usize,
    pub cdev: Arc<OwnedFd>,
    pub bdev: Arc<dyn Bdev>,
    pub stop: Arc<AtomicBool>,
    /// Told once the queue has let go of everything (ring, descriptors, buffers).
    pub done: Sender<u16>,
}

/// The mapped descriptor array of one queue.
struct Descs {
    ptr: NonNull<IoDesc>,
    len: usize,
}

impl Descs {
    fn map(cdev: &OwnedFd, q_id: u16, depth: u16) -> Result<Descs, UblkError> {
        let len = (usize::from(depth) * std::mem::size_of::<IoDesc>()).div_ceil(4096) * 4096;
        let off = libc::off_t::try_from(usize::from(q_id) * sys::MAX_CMD_BUF).map_err(|_| {
            UblkError::Invalid(format!("queue {q_id} is beyond what can be mapped"))
        })?;
        // SAFETY: a fresh shared read-only mapping of the queue's descriptors from the
        // char device; nothing else is mapped at the address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                cdev.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(UblkError::Sys(
                "mapping the queue's descriptors",
                std::io::Error::last_os_error(),
            ));
        }
        let ptr = NonNull::new(p.cast::<IoDesc>()).ok_or_else(|| {
            UblkError::Sys(
                "mapping the queue's descriptors",
                std::io::Error::other("null"),
            )
        })?;
        Ok(Descs { ptr, len })
    }

    /// The descriptor of `tag` (< depth), as the kernel wrote it before completing the
    /// tag's fetch.
    #[inline]
    fn get(&self, tag: u16) -> IoDesc {
        // SAFETY: the mapping holds `depth` descriptors and callers pass tags below
        // depth; the kernel wrote this one before the CQE we reaped (the CQ tail is read
        // with acquire ordering), and does not touch it again until we commit the tag.
        unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(usize::from(tag))) }
    }
}

impl Drop for Descs {
    fn drop(&mut self) {
        // SAFETY: our own mapping of `len` bytes, no longer read.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One buffer per tag: from the device's DMA pool when it offers one large enough with
/// room to spare, else memory of the queue's own.
enum Buffers {
    Pool(Arc<DmaPool>, Vec<DmaBuf>),
    Own { _mem: DmaMemory },
}

impl Buffers {
    fn new(bdev: &dyn Bdev, depth: u16, max_io: usize) -> Result<(Buffers, Vec<usize>), UblkError> {
        let n = usize::from(depth);
        if let Some(pool) = bdev.dma_pool() {
            if pool.buf_size() >= max_io && pool.shared_free() >= 2 * n {
                let mut bufs = Vec::with_capacity(n);
                while bufs.len() < n {
                    match pool.get() {
                        Some(b) => bufs.push(b),
                        None => break,
                    }
                }
                if bufs.len() == n {
                    let addrs = bufs.iter().map(|b| b.as_ptr() as usize).collect();
                    return Ok((Buffers::Pool(pool, bufs), addrs));
                }
                for b in bufs {
                    pool.put(b);
                }
            }
        }
        let mem = DmaMemory::new(n * max_io, &HugePages::Auto, None)
            .map_err(|e| UblkError::Invalid(format!("no memory for the queue's buffers: {e}")))?;
        let base = mem.as_ptr() as usize;
        let addrs = (0..n).map(|i| base + i * max_io).collect();
        Ok((Buffers::Own { _mem: mem }, addrs))
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        if let Buffers::Pool(pool, bufs) = self {
            for b in bufs.drain(..) {
                pool.put(b);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    /// A FETCH or COMMIT_AND_FETCH of this tag is in the kernel.
    InKernel,
    /// The request is at the block device; `bytes` to commit when it succeeds.
    AtDevice { bytes: usize },
    /// The kernel ended the tag (the device is going away).
    Gone,
}

/// A ublk queue on its reactor. Field order is drop order: the ring goes first (its
/// pending commands are cancelled when it closes), then the channel, the descriptors
/// and the buffers.
pub(crate) struct Queue {
    ring: IoUring,
    chan: Box<dyn IoChannel>,
    descs: Descs,
    _buffers: Buffers,
    addrs: Vec<usize>,
    tags: Vec<Tag>,
    /// Tags whose command is in the kernel.
    in_kernel: usize,
    info: BdevInfo,
    dev_id: u32,
    q_id: u16,
    max_io: usize,
    cdev: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    registered: Vec<i32>,
    /// The channel's completions of one poll (capacity `depth`, never outgrown).
    completed: Vec<(u16, IoStatus, i32)>,
    errors_logged: u64,
    _done: DoneOnDrop,
}

impl Queue {
    /// Builds the queue on the calling reactor and sends every tag's FETCH (submitted
    /// before this returns, so START_DEV finds the queue ready).
    pub(crate) fn new(s: QueueSpec, ctx: &mut Ctx) -> Result<Queue, UblkError> {
        let depth = u32::from(s.depth);
        // Cooperative task running: a request arriving does not interrupt the polling
        // reactor; the kernel raises IORING_SQ_TASKRUN and the next poll enters the
        // kernel to post it (a sleeping reactor is woken all the same).
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(depth.next_power_of_two())
            .map_err(|e| UblkError::Sys("creating the queue's ring", e))?;
        let chan = s
            .bdev
            .open_channel()
            .map_err(|e| UblkError::Invalid(format!("opening the device's channel: {e}")))?;
        let descs = Descs::map(&s.cdev, s.q_id, s.depth)?;
        let (buffers, addrs) = Buffers::new(s.bdev.as_ref(), s.depth, s.max_io)?;
        tracing::info!(
            dev = s.dev_id,
            queue = s.q_id,
            reactor = ctx.id(),
            depth = s.depth,
            buffers = match buffers {
                Buffers::Pool(..) => "the device's DMA pool",
                Buffers::Own { .. } => "the queue's own memory",
            },
            "ublk queue ready"
        );
        let mut q = Queue {
            ring,
            chan,
            descs,
            _buffers: buffers,
            addrs,
            tags: vec![Tag::InKernel; usize::from(s.depth)],
            in_kernel: 0,
            info: s.bdev.info().clone(),
            dev_id: s.dev_id,
            q_id: s.q_id,
            max_io: s.max_io,
            cdev: s.cdev,
            stop: s.stop,
            registered: Vec::new(),
            completed: Vec::with_capacity(usize::from(s.depth)),
            errors_logged: 0,
            _done: DoneOnDrop(s.done, s.q_id),
        };
        for tag in 0..s.depth {
            q.push_cmd(sys::U_IO_FETCH_REQ, tag, 0)?;
        }
        q.ring
            .submit()
            .map_err(|e| UblkError::Sys("sending the queue's fetches", e))?;
        let mut fds = vec![q.ring.as_raw_fd()];
        fds.extend(q.chan.completion_fd());
        for fd in fds {
            ctx.register_fd(fd, Interest::READABLE)
                .map_err(|e| UblkError::Sys("registering the queue with its reactor", e))?;
            q.registered.push(fd);
        }
        Ok(q)
    }

    /// Queues a FETCH or COMMIT_AND_FETCH for `tag` (submitted at the end of the poll).
    fn push_cmd(&mut self, op: u32, tag: u16, result: i32) -> Result<(), UblkError> {
        let cmd = IoCmd {
            q_id: self.q_id,
            tag,
            result,
            addr: self.addrs[usize::from(tag)] as u64,
        };
        let sqe = opcode::UringCmd16::new(types::Fd(self.cdev.as_raw_fd()), op)
            .cmd(sys::cmd_bytes(&cmd))
            .build()
            .user_data(u64::from(tag));
        loop {
            // SAFETY: the command carries its data inline; the buffer it names
            // (`addrs[tag]`) lives as long as the queue, which outlives the ring.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                break;
            }
            // Cannot happen with one entry per tag at most; submit and retry if it does.
            self.ring
                .submit()
                .map_err(|e| UblkError::Sys("submitting the queue's commands", e))?;
        }
        self.tags[usize::from(tag)] = Tag::InKernel;
        self.in_kernel += 1;
        Ok(())
    }

    fn commit(&mut self, tag: u16, result: i32) {
        if let Err(e) = self.push_cmd(sys::U_IO_COMMIT_AND_FETCH_REQ, tag, result) {
            tracing::error!(dev = self.dev_id, queue = self.q_id, tag, error = %e, "ublk: commit not sent");
            self.tags[usize::from(tag)] = Tag::Gone;
        }
    }

    /// A request arrived at `tag`: to the device, or answered now if it cannot go.
    fn start(&mut self, tag: u16) {
        let d = self.descs.get(tag);
        match map_request(&d, self.info.block_size, self.max_io) {
            Ok(m) => {
                let buf = if m.bytes > 0 {
                    self.addrs[usize::from(tag)] as *mut u8
                } else {
                    std::ptr::null_mut()
                };
                let req = IoRequest {
                    op: m.op,
                    offset_blocks: m.offset_blocks,
                    num_blocks: m.num_blocks,
                    buf,
                    len: m.bytes,
                    tag: u64::from(tag),
                };
                self.tags[usize::from(tag)] = Tag::AtDevice { bytes: m.bytes };
                // SAFETY: the tag's buffer (`max_io` bytes, at least `m.bytes`) is used
                // by nothing else until this request's completion comes back from the
                // channel: the kernel does not touch it while the tag is with us.
                unsafe { self.chan.submit(req) };
            }
            Err(errno) => {
                self.log_error(tag, &d, errno, "refused");
                self.commit(tag, errno);
            }
        }
    }

    #[cold]
    fn log_error(&mut self, tag: u16, d: &IoDesc, errno: i32, what: &str) {
        self.errors_logged += 1;
        // Every error up to 16, then one in 1024, so a failing device cannot flood the log.
        if self.errors_logged <= 16 || self.errors_logged.is_multiple_of(1024) {
            tracing::error!(
                dev = self.dev_id,
                queue = self.q_id,
                tag,
                op = d.op_flags & 0xff,
                sector = d.start_sector,
                sectors = d.nr_sectors,
                errno,
                errors = self.errors_logged,
                "ublk: request {what}"
            );
        }
    }

    /// Reaps the kernel's completions: new requests, or tags ended.
    fn reap(&mut self) -> usize {
        let mut n = 0;
        loop {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            n += 1;
            let Ok(tag) = u16::try_from(cqe.user_data()) else {
                continue;
            };
            if usize::from(tag) >= self.tags.len() {
                continue;
            }
            self.in_kernel -= 1;
            match cqe.result() {
                sys::IO_RES_OK => self.start(tag),
                sys::IO_RES_ABORT => self.tags[usize::from(tag)] = Tag::Gone,
                res => {
                    tracing::error!(
                        dev = self.dev_id,
                        queue = self.q_id,
                        tag,
                        errno = -res,
                        "ublk: the kernel refused a command; the tag is ended"
                    );
                    self.tags[usize::from(tag)] = Tag::Gone;
                }
            }
        }
        n
    }

    /// Answers the requests the device finished.
    fn finish(&mut self) -> usize {
        let Queue {
            chan,
            tags,
            completed,
            ..
        } = self;
        completed.clear();
        chan.poll(&mut |tag, status| {
            let t = tag as u16;
            let bytes = match tags.get(usize::from(t)) {
                Some(Tag::AtDevice { bytes }) => *bytes,
                _ => 0,
            };
            // At most `depth` requests are at the device: no growth past the capacity.
            completed.push((t, status, commit_result(status, bytes)));
        });
        let n = self.completed.len();
        for i in 0..n {
            let (tag, status, res) = self.completed[i];
            if res < 0 {
                let d = self.descs.get(tag);
                self.log_error(tag, &d, res, "failed at the block device");
                tracing::debug!(?status, "ublk: the block device's status");
            }
            self.commit(tag, res);
        }
        n
    }
}

impl Poller for Queue {
    fn poll(&mut self, ctx: &mut Ctx) -> PollStatus {
        let mut work = self.reap();
        work += self.finish();
        let sq = self.ring.submission();
        let (waiting, taskrun) = (!sq.is_empty(), sq.taskrun());
        drop(sq);
        if waiting || taskrun {
            // Submits what was pushed; entering the kernel also runs the task work
            // that posts the completions the TASKRUN flag announced.
            match self.ring.submit() {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(e) => {
                    tracing::error!(dev = self.dev_id, queue = self.q_id, error = %e, "ublk: submitting to the kernel failed")
                }
            }
            work += 1;
        }
        if self.stop.load(Ordering::Acquire) && self.chan.in_flight() == 0 {
            for fd in self.registered.drain(..) {
                ctx.unregister_fd(fd);
            }
            tracing::debug!(dev = self.dev_id, queue = self.q_id, "ublk queue let go");
            return PollStatus::Finished;
        }
        queue_status(work, self.chan.in_flight())
    }
}

/// Busy while anything was done or a request is still at the block device. The second
/// is not only for speed: a channel's request may wait on something no descriptor
/// announces (a pool volume's write waiting for a map page that a channel on another
/// reactor is writing, which it sees only by polling), so a reactor that slept with
/// requests at the device could sleep forever with them (seen: fio stuck with 16
/// writes in flight on a fresh volume, both reactors in epoll_wait). The transports
/// keep their reactors busy the same way (`has_pending_work`).
fn queue_status(work: usize, in_flight: usize) -> PollStatus {
    if work > 0 || in_flight > 0 {
        PollStatus::Busy
    } else {
        PollStatus::Idle
    }
}

/// Tells the device's owner that a queue let go of everything (ring, descriptors,
/// buffers, its hold on /dev/ublkcN), however it went: declared last in [`Queue`], so
/// dropped last.
pub(crate) struct DoneOnDrop(pub Sender<u16>, pub u16);

impl Drop for DoneOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(self.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(op: u8, sector: u64, sectors: u32) -> IoDesc {
        IoDesc {
            op_flags: u32::from(op) | (1 << 13),
            nr_sectors: sectors,
            start_sector: sector,
            addr: 0,
        }
    }

    #[test]
    fn requests_map_to_the_device_operations() {
        let m = map_request(&desc(sys::IO_OP_READ, 16, 8), 4096, 128 << 10).unwrap();
        assert_eq!(
            m,
            Mapped {
                op: IoOp::Read,
                offset_blocks: 2,
                num_blocks: 1,
                bytes: 4096
            }
        );
        let m = map_request(&desc(sys::IO_OP_WRITE, 7, 3), 512, 128 << 10).unwrap();
        assert_eq!(
            (m.op, m.offset_blocks, m.num_blocks, m.bytes),
            (IoOp::Write, 7, 3, 1536)
        );
        let m = map_request(&desc(sys::IO_OP_FLUSH, 0, 0), 4096, 128 << 10).unwrap();
        assert_eq!((m.op, m.bytes), (IoOp::Flush, 0));
        let m = map_request(&desc(sys::IO_OP_DISCARD, 1 << 20, 1 << 21), 4096, 128 << 10).unwrap();
        assert_eq!(
            (m.op, m.offset_blocks, m.num_blocks, m.bytes),
            (IoOp::Deallocate, 1 << 17, 1 << 18, 0)
        );
        let m = map_request(&desc(sys::IO_OP_WRITE_ZEROES, 8, 8), 4096, 128 << 10).unwrap();
        assert_eq!(
            (m.op, m.offset_blocks, m.num_blocks),
            (IoOp::WriteZeroes, 1, 1)
        );
    }

    #[test]
    fn requests_the_device_cannot_take_are_refused() {
        assert_eq!(
            map_request(&desc(sys::IO_OP_WRITE_SAME, 0, 8), 4096, 1 << 17),
            Err(-libc::EOPNOTSUPP)
        );
        assert_eq!(
            map_request(&desc(0x7f, 0, 8), 4096, 1 << 17),
            Err(-libc::EOPNOTSUPP)
        );
        // Not on the device's block boundary.
        assert_eq!(
            map_request(&desc(sys::IO_OP_READ, 3, 8), 4096, 1 << 17),
            Err(-libc::EINVAL)
        );
        assert_eq!(
            map_request(&desc(sys::IO_OP_READ, 8, 5), 4096, 1 << 17),
            Err(-libc::EINVAL)
        );
        // Larger than the tag's buffer, or empty.
        assert_eq!(
            map_request(&desc(sys::IO_OP_WRITE, 0, 512), 512, 1 << 17),
            Err(-libc::EINVAL)
        );
        assert_eq!(
            map_request(&desc(sys::IO_OP_READ, 0, 0), 512, 1 << 17),
            Err(-libc::EINVAL)
        );
    }

    #[test]
    fn a_queue_with_requests_at_the_device_stays_busy() {
        assert_eq!(queue_status(0, 0), PollStatus::Idle);
        assert_eq!(queue_status(0, 3), PollStatus::Busy);
        assert_eq!(queue_status(2, 0), PollStatus::Busy);
    }

    #[test]
    fn results_commit_bytes_or_eio() {
        assert_eq!(commit_result(IoStatus::Success, 4096), 4096);
        assert_eq!(commit_result(IoStatus::Success, 0), 0);
        assert_eq!(commit_result(IoStatus::Io(libc::ENOSPC), 4096), -libc::EIO);
        assert_eq!(commit_result(IoStatus::OutOfRange, 4096), -libc::EIO);
        assert_eq!(commit_result(IoStatus::CapacityExceeded, 4096), -libc::EIO);
    }
}
