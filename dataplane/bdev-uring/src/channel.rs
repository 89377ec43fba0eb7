//! One channel: a ring per reactor (see the crate's documentation for the model).

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use io_uring::{opcode, squeue, types};
use lightpool_bdev::{check_request, IoChannel, IoOp, IoRequest, IoStatus};

use crate::ring::Ring;
use crate::{errno, Shared, MAX_RW_CHUNK, ZERO_BUF_LEN};

/// CQEs taken off the ring per batch (a stack array, so reaping allocates nothing).
const REAP_BATCH: usize = 64;
/// Empty polls after a completion before the channel resets its eventfd. Resetting is a
/// system call; doing it after every burst would cost one per I/O at queue depth 1, and
/// it only matters once the reactor is about to sleep (after some hundreds of
/// microseconds of idle spinning, i.e. many more polls than this). If the reactor sleeps
/// first, the stale readiness wakes it once and the next polls reset it.
pub(crate) const DRAIN_AFTER_EMPTY_POLLS: u32 = 256;
/// Empty polls after which a silenced eventfd (see [`RingOptions::quiet_eventfd`])
/// speaks again: fewer than the idle iterations a reactor makes before it sleeps
/// (`lightpool_reactor`'s 64), so none sleeps on a silent eventfd with requests out.
pub(crate) const QUIET_EMPTY_POLLS: u32 = 32;
/// `io_uring_enter` flag: post completions (the kernel ABI's value; the io-uring crate
/// keeps its copy private).
const IORING_ENTER_GETEVENTS: u32 = 1;

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

pub(crate) struct UringChannel {
    shared: Arc<Shared>,
    ring: Ring,
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
    /// The eventfd is silenced (see [`RingOptions::quiet_eventfd`]).
    quiet: bool,
}

impl UringChannel {
    pub(crate) fn new(shared: Arc<Shared>) -> Result<Self, lightpool_bdev::BdevError> {
        let depth = shared.queue_depth;
        let ring = Ring::new(depth, shared.fd.as_raw_fd(), &shared.ring)
            .map_err(lightpool_bdev::BdevError::Setup)?;
        // SAFETY: eventfd takes no pointers; a non-negative return is an fd we own.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(lightpool_bdev::BdevError::Setup(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `efd` was just created and is owned by nobody else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.ring
            .submitter()
            .register_eventfd(eventfd.as_raw_fd())
            .map_err(lightpool_bdev::BdevError::Setup)?;
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
            quiet: false,
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
        let raw = self.shared.fd.as_raw_fd();
        let fixed_file = self.ring.fixed_file;
        let zero = self.shared.zero_buf.ptr.as_ptr();
        let slot = &mut self.slots[index];
        if matches!(slot.op, IoOp::Read | IoOp::Write) {
            slot.chunk = slot.remaining.min(MAX_RW_CHUNK);
        }
        let fixed_buf = self.ring.buf_index(slot.buf, slot.chunk);
        // The same SQE with the device's descriptor as the ring's registered file 0 or
        // as itself (two types, so the builder is written once for each).
        macro_rules! with_fd {
            (|$fd:ident| $build:expr) => {
                if fixed_file {
                    let $fd = types::Fixed(0);
                    $build
                } else {
                    let $fd = types::Fd(raw);
                    $build
                }
            };
        }
        let entry: squeue::Entry = with_fd!(|fd| match slot.op {
            IoOp::Read => match fixed_buf {
                Some(i) => opcode::ReadFixed::new(fd, slot.buf, slot.chunk as u32, i)
                    .offset(slot.offset)
                    .build(),
                None => opcode::Read::new(fd, slot.buf, slot.chunk as u32)
                    .offset(slot.offset)
                    .build(),
            },
            IoOp::Write => match fixed_buf {
                Some(i) => opcode::WriteFixed::new(fd, slot.buf, slot.chunk as u32, i)
                    .offset(slot.offset)
                    .build(),
                None => opcode::Write::new(fd, slot.buf, slot.chunk as u32)
                    .offset(slot.offset)
                    .build(),
            },
            IoOp::WriteZeroes if slot.zero_writes => {
                slot.chunk = slot.remaining.min(ZERO_BUF_LEN as u64);
                opcode::Write::new(fd, zero, slot.chunk as u32)
                    .offset(slot.offset)
                    .build()
            }
            IoOp::WriteZeroes => {
                slot.chunk = slot.remaining;
                // A file gives the range back (a hole reads as zeroes), so a thin
                // device on a sparse file stays sparse; a block device zeroes it.
                let mode = if self.shared.kind == crate::Kind::File {
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
                } else {
                    libc::FALLOC_FL_ZERO_RANGE
                };
                opcode::Fallocate::new(fd, slot.remaining)
                    .offset(slot.offset)
                    .mode(mode)
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
        })
        .user_data(index as u64);
        // SAFETY: the SQE's buffer is either the caller's, which `submit`'s contract keeps
        // valid until we return its completion (the slot stays taken until then), or the
        // shared zero buffer, which lives as long as `self.shared`; the fd lives as long
        // as `self.shared` too, and Drop waits for every SQE before either goes.
        let pushed = unsafe { self.ring.ring.submission().push(&entry) };
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

    /// One `io_uring_enter` for everything pushed since the last one (when the batch
    /// policy says so), which also posts deferred completions.
    fn submit_pending(&mut self, get_events: bool) {
        let in_kernel = self.slots_in_use() - self.unsubmitted.min(self.slots_in_use());
        let batch = self.shared.ring.batch as usize;
        let submit = self.unsubmitted > 0
            && (batch <= 1 || self.unsubmitted >= batch || self.unsubmitted >= in_kernel);
        // Completions the kernel holds back until the channel enters it: always with
        // deferred task running, when the ring's flag says so with cooperative.
        let post = get_events
            && in_kernel > 0
            && (self.ring.defer_taskrun
                || (self.ring.taskrun_flag && self.ring.ring.submission().taskrun()));
        let res = if post {
            // Deferred completions are posted only when asked for.
            let n = if submit { self.unsubmitted as u32 } else { 0 };
            // SAFETY: no signal mask or argument is passed; the SQEs submitted were
            // pushed with buffers kept valid as `push_sqe` says.
            unsafe {
                self.ring.ring.submitter().enter::<libc::sigset_t>(
                    n,
                    0,
                    IORING_ENTER_GETEVENTS,
                    None,
                )
            }
        } else if submit {
            self.ring.ring.submit()
        } else {
            return;
        };
        match res {
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
            for cqe in self.ring.ring.completion().take(REAP_BATCH) {
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
                            "fallocate cannot zero a range here; writing zeroes instead"
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
        self.submit_pending(true);
        n += self.reap(done);
        if n > 0 {
            self.empty_polls = 0;
            if self.shared.ring.quiet_eventfd && !self.quiet {
                self.ring.ring.completion().disable_eventfd();
                self.quiet = true;
            }
        } else if self.quiet || self.maybe_signaled {
            self.empty_polls += 1;
            if self.quiet && self.empty_polls >= QUIET_EMPTY_POLLS {
                // Idle for a few polls: the eventfd speaks again before a reactor could
                // go to sleep on it, and the ring is looked at once more, because a CQE
                // posted while it was quiet signalled nothing.
                self.ring.ring.completion().enable_eventfd();
                self.quiet = false;
                n += self.reap(done);
            }
            if self.maybe_signaled && self.empty_polls >= DRAIN_AFTER_EMPTY_POLLS {
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
        self.submit_pending(false);
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
            if let Err(e) = self.ring.ring.submit_and_wait(1) {
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
