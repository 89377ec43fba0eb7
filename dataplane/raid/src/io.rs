//! Blocking I/O for the control path and the RAID1 background thread: reading and
//! writing superblocks and bitmap blocks, copying regions. Never used on a reactor.
//!
//! A [`SyncChannel`] is an ordinary I/O channel opened on the calling thread; waiting
//! sleeps on the channel's completion descriptor when it has one (io_uring), and polls
//! otherwise (RAM and other synchronous devices complete by the next poll).

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use lightpool_bdev::{Bdev, BdevError, IoChannel, IoOp, IoRequest, IoStatus};

/// A 4096-byte-aligned, zeroed buffer (what `O_DIRECT` devices need).
pub struct Buf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: the buffer is plain memory owned by this value; it moves between threads
// only as a whole (the daemon's buffers live on its thread).
unsafe impl Send for Buf {}

impl Buf {
    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len.max(4096), 4096).expect("4096 alignment is a valid layout")
    }

    pub fn new(len: usize) -> Buf {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Buf { ptr, len, cap: len }
    }

    /// Uses the first `len` bytes (at most what it was made with) from now on.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "a buffer does not grow");
        self.len = len;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes (alloc_zeroed) owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
    }
}

/// A channel used by one blocking thread: one request at a time per call, or several
/// in parallel through [`SyncChannel::start`] and [`wait_all`].
pub struct SyncChannel {
    pub dev: Arc<dyn Bdev>,
    ch: Box<dyn IoChannel>,
    bs: u64,
    next_tag: u64,
    /// Status of the request started last, once it has completed.
    done: Option<IoStatus>,
    /// A request is in flight.
    started: bool,
}

impl SyncChannel {
    pub fn open(dev: Arc<dyn Bdev>) -> Result<SyncChannel, BdevError> {
        let ch = dev.open_channel()?;
        let bs = u64::from(dev.info().block_size);
        Ok(SyncChannel {
            dev,
            ch,
            bs,
            next_tag: 1,
            done: None,
            started: false,
        })
    }

    /// Starts a read or write of `buf` at byte `offset` (both whole blocks), or a
    /// request without data (`buf` None: Flush, Write Zeroes of `zero_len` bytes).
    ///
    /// # Safety
    /// `buf` must stay alive and untouched until [`SyncChannel::finish`] (or
    /// [`wait_all`]) has returned for this request.
    unsafe fn start_raw(&mut self, op: IoOp, offset: u64, buf: Option<&Buf>, zero_len: u64) {
        assert!(!self.started, "one request at a time per channel");
        let tag = self.next_tag;
        self.next_tag += 1;
        let req = match buf {
            Some(b) => IoRequest::rw(
                op,
                offset / self.bs,
                (b.len() as u64 / self.bs) as u32,
                b.ptr(),
                b.len(),
                tag,
            ),
            None => IoRequest::no_data(op, offset / self.bs, (zero_len / self.bs) as u32, tag),
        };
        self.done = None;
        self.started = true;
        // SAFETY: the caller keeps `buf` alive and unshared until the completion.
        unsafe { self.ch.submit(req) };
    }

    /// Starts a read into `buf`.
    ///
    /// # Safety
    /// `buf` must stay alive, and be neither read nor written, until this request has
    /// been waited for ([`SyncChannel::finish`] or [`wait_all`]).
    pub unsafe fn start_read(&mut self, offset: u64, buf: &mut Buf) {
        // SAFETY: the caller's contract.
        unsafe { self.start_raw(IoOp::Read, offset, Some(buf), 0) }
    }

    /// Starts a write of `buf`.
    ///
    /// # Safety
    /// `buf` must stay alive, and must not be written, until this request has been
    /// waited for ([`SyncChannel::finish`] or [`wait_all`]).
    pub unsafe fn start_write(&mut self, offset: u64, buf: &Buf) {
        // SAFETY: the caller's contract.
        unsafe { self.start_raw(IoOp::Write, offset, Some(buf), 0) }
    }

    pub fn start_flush(&mut self) {
        // SAFETY: no buffer.
        unsafe { self.start_raw(IoOp::Flush, 0, None, 0) }
    }

    pub fn start_zeroes(&mut self, offset: u64, len: u64) {
        // SAFETY: no buffer.
        unsafe { self.start_raw(IoOp::WriteZeroes, offset, None, len) }
    }

    /// Whether the request started last has completed (polls once).
    fn try_finish(&mut self) -> bool {
        if !self.started {
            return true;
        }
        let done = &mut self.done;
        self.ch.poll(&mut |_, st| *done = Some(st));
        if self.done.is_some() {
            self.started = false;
            return true;
        }
        false
    }

    fn sleep_fd(&self) -> Option<std::os::fd::RawFd> {
        self.ch.completion_fd()
    }

    /// Waits for the request started last.
    pub fn finish(&mut self) -> IoStatus {
        wait_all(&mut [self]);
        self.done.take().unwrap_or(IoStatus::Success)
    }

    /// The status of the last request once [`wait_all`] has returned.
    pub fn status(&mut self) -> IoStatus {
        self.done.take().unwrap_or(IoStatus::Success)
    }

    pub fn read(&mut self, offset: u64, buf: &mut Buf) -> IoStatus {
        // SAFETY: waited for before the borrow of `buf` ends.
        unsafe { self.start_read(offset, buf) };
        self.finish()
    }

    pub fn write(&mut self, offset: u64, buf: &Buf) -> IoStatus {
        // SAFETY: waited for before the borrow of `buf` ends.
        unsafe { self.start_write(offset, buf) };
        self.finish()
    }

    pub fn flush(&mut self) -> IoStatus {
        self.start_flush();
        self.finish()
    }
}

/// Waits until the request started last on each channel has completed; sleeps on
/// completion descriptors between polls (at most 1 ms, so synchronous devices among
/// them are polled too).
pub fn wait_all(chs: &mut [&mut SyncChannel]) {
    let mut spins = 0u32;
    loop {
        let mut pending = false;
        for c in chs.iter_mut() {
            if !c.try_finish() {
                pending = true;
            }
        }
        if !pending {
            return;
        }
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
            continue;
        }
        let mut fds: Vec<libc::pollfd> = chs
            .iter()
            .filter(|c| c.started)
            .filter_map(|c| c.sleep_fd())
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if fds.is_empty() {
            std::thread::sleep(Duration::from_micros(20));
        } else {
            // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1) };
        }
    }
}

/// Reads `len` bytes at byte `offset` of `dev` through a channel opened for it.
pub fn read_at(dev: &Arc<dyn Bdev>, offset: u64, len: usize) -> Result<Buf, String> {
    let mut ch = SyncChannel::open(dev.clone()).map_err(|e| e.to_string())?;
    let mut buf = Buf::new(len);
    match ch.read(offset, &mut buf) {
        IoStatus::Success => Ok(buf),
        st => Err(describe(st)),
    }
}

/// A request status in words.
pub fn describe(st: IoStatus) -> String {
    match st {
        IoStatus::Io(e) => std::io::Error::from_raw_os_error(e).to_string(),
        IoStatus::OutOfRange => "the range lies beyond the device".into(),
        IoStatus::ReadOnly => "the device is read-only".into(),
        // Success, and what the interface may add.
        other => format!("{other:?}"),
    }
}
