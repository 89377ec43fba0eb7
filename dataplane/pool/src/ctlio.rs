//! I/O on the pool device from the control path (opening, recovering, and the pool's
//! operations): a channel of the calling thread, driven until each batch completes.
//! Never used on a reactor.

use std::alloc::Layout;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightpool_bdev::{Bdev, IoChannel, IoOp, IoRequest, IoStatus};

use crate::PoolError;

/// How long one control-path I/O may take before the operation gives up.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests kept in flight by batched reads and writes.
const DEPTH: usize = 32;
/// Largest Write Zeroes issued at once (in bytes).
const ZERO_CHUNK: u64 = 1 << 30;

/// A 4096-byte-aligned, zeroed buffer.
pub struct Buf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: a plain heap allocation owned by this struct.
unsafe impl Send for Buf {}

impl Buf {
    pub fn new(len: usize) -> Buf {
        let layout = Layout::from_size_align(len.max(1), 4096).expect("valid layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Buf { ptr, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes (alloc_zeroed), borrowed with self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len.max(1), 4096).expect("valid layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

/// A control-path channel to the pool device.
pub struct CtlIo {
    ch: Box<dyn IoChannel>,
    bs: u64,
    dev: String,
}

impl CtlIo {
    pub fn open(dev: &Arc<dyn Bdev>) -> Result<CtlIo, PoolError> {
        let name = dev.info().name.clone();
        let ch = dev.open_channel().map_err(|source| PoolError::Device {
            device: name.clone(),
            source,
        })?;
        Ok(CtlIo {
            ch,
            bs: u64::from(dev.info().block_size),
            dev: name,
        })
    }

    fn fail(&self, what: String, status: IoStatus) -> PoolError {
        PoolError::Io {
            device: self.dev.clone(),
            what,
            status,
        }
    }

    /// Runs `reqs` (tags are their indices), at most [`DEPTH`] at a time; the first
    /// failure is returned once everything submitted has completed.
    ///
    /// # Safety
    /// Each request's buffer must stay valid until this returns.
    unsafe fn run(&mut self, reqs: &[IoRequest], what: &str) -> Result<(), PoolError> {
        let mut next = 0;
        let mut done = 0;
        let mut err: Option<(u64, IoStatus)> = None;
        let mut deadline = Instant::now() + IO_TIMEOUT;
        while done < reqs.len() {
            while next < reqs.len() && next - done < DEPTH && err.is_none() {
                let mut r = reqs[next];
                r.tag = next as u64;
                // SAFETY: buffers outlive this call (caller's contract), which waits
                // for every completion.
                unsafe { self.ch.submit(r) };
                next += 1;
            }
            let n = self.ch.poll(&mut |tag, st| {
                if st != IoStatus::Success && err.is_none() {
                    err = Some((tag, st));
                }
            });
            done += n;
            if err.is_some() && done == next {
                break;
            }
            if n > 0 {
                deadline = Instant::now() + IO_TIMEOUT;
            } else if Instant::now() > deadline {
                // The requests still hold our buffers: we cannot return them, so the
                // only safe way out is to never free them.
                std::mem::forget(std::mem::replace(&mut self.ch, Box::new(Dead)));
                return Err(self.fail(
                    format!("{what}: no completion within {IO_TIMEOUT:?}"),
                    IoStatus::Io(libc::ETIMEDOUT),
                ));
            } else {
                std::thread::yield_now();
            }
        }
        match err {
            Some((tag, st)) => {
                let r = &reqs[tag as usize];
                Err(self.fail(
                    format!(
                        "{what} ({:?} of {} bytes at byte {})",
                        r.op,
                        u64::from(r.num_blocks) * self.bs,
                        r.offset_blocks * self.bs
                    ),
                    st,
                ))
            }
            None => Ok(()),
        }
    }

    fn rw(&self, op: IoOp, off: u64, ptr: *mut u8, len: usize) -> IoRequest {
        debug_assert!(off.is_multiple_of(self.bs) && (len as u64).is_multiple_of(self.bs));
        IoRequest::rw(
            op,
            off / self.bs,
            (len as u64 / self.bs) as u32,
            ptr,
            len,
            0,
        )
    }

    /// Reads `buf.len()` bytes at byte `off`.
    pub fn read(&mut self, off: u64, buf: &mut Buf, what: &str) -> Result<(), PoolError> {
        let r = self.rw(IoOp::Read, off, buf.ptr(), buf.len());
        // SAFETY: `buf` is borrowed for the whole call.
        unsafe { self.run(&[r], what) }
    }

    /// Reads many pieces of `len` bytes: piece `i` at `offs[i]` lands in
    /// `buf[i*len..(i+1)*len]`.
    pub fn read_many(
        &mut self,
        offs: &[u64],
        len: usize,
        buf: &mut Buf,
        what: &str,
    ) -> Result<(), PoolError> {
        assert!(buf.len() >= offs.len() * len);
        let base = buf.ptr();
        let reqs: Vec<IoRequest> = offs
            .iter()
            .enumerate()
            // SAFETY: each piece lies inside `buf` (asserted above).
            .map(|(i, &o)| self.rw(IoOp::Read, o, unsafe { base.add(i * len) }, len))
            .collect();
        // SAFETY: `buf` is borrowed for the whole call.
        unsafe { self.run(&reqs, what) }
    }

    /// Writes `buf` at byte `off`.
    pub fn write(&mut self, off: u64, buf: &Buf, what: &str) -> Result<(), PoolError> {
        let r = self.rw(IoOp::Write, off, buf.ptr(), buf.len());
        // SAFETY: `buf` is borrowed for the whole call.
        unsafe { self.run(&[r], what) }
    }

    /// Writes several buffers, each at its offset, in parallel.
    pub fn write_many(&mut self, pieces: &[(u64, &Buf)], what: &str) -> Result<(), PoolError> {
        let reqs: Vec<IoRequest> = pieces
            .iter()
            .map(|(o, b)| self.rw(IoOp::Write, *o, b.ptr(), b.len()))
            .collect();
        // SAFETY: the buffers are borrowed for the whole call.
        unsafe { self.run(&reqs, what) }
    }

    /// Makes `len` bytes at `off` read as zeroes (Write Zeroes, in pieces).
    pub fn zeroes(&mut self, off: u64, len: u64, what: &str) -> Result<(), PoolError> {
        self.zero_ranges(&[(off, len)], what)
    }

    /// Zeroes several byte ranges, in parallel.
    pub fn zero_ranges(&mut self, ranges: &[(u64, u64)], what: &str) -> Result<(), PoolError> {
        let mut reqs = Vec::new();
        for &(off, len) in ranges {
            let mut at = off;
            while at < off + len {
                let n = (off + len - at).min(ZERO_CHUNK);
                reqs.push(IoRequest::no_data(
                    IoOp::WriteZeroes,
                    at / self.bs,
                    (n / self.bs) as u32,
                    0,
                ));
                at += n;
            }
        }
        // SAFETY: no buffers.
        unsafe { self.run(&reqs, what) }
    }

    /// Makes every completed write durable.
    pub fn flush(&mut self, what: &str) -> Result<(), PoolError> {
        let r = IoRequest::no_data(IoOp::Flush, 0, 0, 0);
        // SAFETY: no buffer.
        unsafe { self.run(&[r], what) }
    }
}

/// What stands in for a channel given up on (its requests never completed).
struct Dead;

impl IoChannel for Dead {
    unsafe fn submit(&mut self, _req: IoRequest) {}
    fn poll(&mut self, _done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        0
    }
    fn in_flight(&self) -> usize {
        0
    }
}
