//! What the fuzz targets share: an allocator that fails an input whose handling makes
//! one allocation, or holds live memory, beyond a bound (libFuzzer's own
//! `-malloc_limit_mb` needs a sanitizer's allocator hooks, which a stable `-s none`
//! build has not); a byte stream fed from memory in the chunks the input chooses; and
//! the input's leading bytes read as choices.
//!
//! The targets are in `fuzz_targets/`; docs/fuzzing.md says what each covers and how
//! to run them (fuzz/run.sh).

pub mod host;
pub mod pool;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{RefCell, RefMut};
use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The allocator of every fuzz target: the system's, with the bounds of [`Bounded`].
pub struct Bounded;

static ARMED: AtomicBool = AtomicBool::new(false);
static MAX_ONE: AtomicUsize = AtomicUsize::new(usize::MAX);
static MAX_LIVE: AtomicUsize = AtomicUsize::new(usize::MAX);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// An input went past a bound: disarm (what follows may allocate), then panic, which
/// prints where (with RUST_BACKTRACE=1) and which libFuzzer's panic hook turns into an
/// abort before any unwinding, so nothing unwinds out of the allocator.
#[cold]
fn over(what: &str, size: usize, bound: usize) -> ! {
    ARMED.store(false, Ordering::Relaxed);
    panic!("{what}: {size} bytes, beyond the bound of {bound} for this input")
}

impl Bounded {
    fn account(size: usize) {
        if !ARMED.load(Ordering::Relaxed) {
            return;
        }
        let one = MAX_ONE.load(Ordering::Relaxed);
        if size > one {
            over("one allocation", size, one);
        }
        let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        PEAK.fetch_max(live, Ordering::Relaxed);
        let max = MAX_LIVE.load(Ordering::Relaxed);
        if live > max {
            over("live memory", live, max);
        }
    }
    fn release(size: usize) {
        if ARMED.load(Ordering::Relaxed) {
            // Memory allocated before arming and freed after counts as freed: saturate.
            let _ = LIVE.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                Some(l.saturating_sub(size))
            });
        }
    }
}

// SAFETY: every call goes to the system allocator with the caller's layout; the
// accounting around it touches only atomics and never allocates.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::account(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed through unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::account(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        Self::release(layout.size());
        // SAFETY: `ptr` came from this allocator (so from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::release(layout.size());
        Self::account(new_size);
        // SAFETY: as for `dealloc` and `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// While alive, the input being run may make no allocation larger than `one` bytes and
/// hold no more than `live` bytes beyond what was live when it was armed: what the
/// target allocates per input must not follow a length the input claims.
pub struct Armed(());

impl Armed {
    pub fn new(one: usize, live: usize) -> Armed {
        // A panic reports itself (a backtrace allocates as it likes): disarm first.
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let next = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                ARMED.store(false, Ordering::Relaxed);
                next(info)
            }));
        });
        MAX_ONE.store(one, Ordering::Relaxed);
        MAX_LIVE.store(live, Ordering::Relaxed);
        LIVE.store(0, Ordering::Relaxed);
        PEAK.store(0, Ordering::Relaxed);
        ARMED.store(true, Ordering::Relaxed);
        Armed(())
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        ARMED.store(false, Ordering::Relaxed);
    }
}

/// Declares [`Bounded`] the global allocator of a fuzz target.
#[macro_export]
macro_rules! bounded_allocator {
    () => {
        #[global_allocator]
        static ALLOC: $crate::Bounded = $crate::Bounded;
    };
}

/// The input's leading bytes as choices; what is left is the payload.
pub struct Choices<'a> {
    data: &'a [u8],
}

impl<'a> Choices<'a> {
    pub fn new(data: &'a [u8]) -> Choices<'a> {
        Choices { data }
    }
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// A byte stream from memory: each read hands out at most the next chunk size of a
/// cycle the input chose (so a PDU is split or coalesced anywhere), `WouldBlock` when
/// empty (or end of stream once `eof` is set); each write takes at most one chunk (a
/// slow reader). A handle: clones share the [`Pipe`], so the harness keeps one while a
/// connection owns another.
#[derive(Clone)]
pub struct Mem(Rc<RefCell<Pipe>>);

/// What a [`Mem`] holds.
pub struct Pipe {
    pub input: VecDeque<u8>,
    chunks: Vec<usize>,
    next: usize,
    pub eof: bool,
    pub out: Vec<u8>,
}

impl Mem {
    /// Chunk sizes from `spec` (each byte + 1; an empty spec: unlimited).
    pub fn new(spec: &[u8]) -> Mem {
        Mem(Rc::new(RefCell::new(Pipe {
            input: VecDeque::new(),
            chunks: spec.iter().map(|&b| usize::from(b) + 1).collect(),
            next: 0,
            eof: false,
            out: Vec::new(),
        })))
    }

    /// From now on, reads and writes move the chunk sizes of `spec` (as [`Mem::new`]).
    pub fn set_chunks(&self, spec: &[u8]) {
        self.set_chunks_in(spec, 1);
    }

    /// As [`Mem::set_chunks`], each chunk `unit` times as large (`unit` to 256 `unit`s).
    pub fn set_chunks_in(&self, spec: &[u8], unit: usize) {
        let mut p = self.pipe();
        p.chunks = spec.iter().map(|&b| (usize::from(b) + 1) * unit).collect();
        p.next = 0;
    }

    pub fn pipe(&self) -> RefMut<'_, Pipe> {
        self.0.borrow_mut()
    }
}

impl Pipe {
    fn chunk(&mut self) -> usize {
        if self.chunks.is_empty() {
            return usize::MAX;
        }
        let c = self.chunks[self.next % self.chunks.len()];
        self.next += 1;
        c
    }
}

impl lightpool_tcp_framing::Stream for Mem {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_vectored(&mut [IoSliceMut::new(buf)])
    }
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        let mut p = self.pipe();
        if p.input.is_empty() {
            return if p.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let limit = p.chunk();
        let mut n = 0;
        // Whole slices at a time: a byte-by-byte loop was most of what the connection
        // targets' executions cost (its comparisons are traced like the target's).
        for b in bufs.iter_mut() {
            let take = b.len().min(limit - n).min(p.input.len());
            let (front, back) = p.input.as_slices();
            let first = take.min(front.len());
            b[..first].copy_from_slice(&front[..first]);
            b[first..take].copy_from_slice(&back[..take - first]);
            p.input.drain(..take);
            n += take;
            if n == limit || p.input.is_empty() {
                break;
            }
        }
        Ok(n)
    }
    fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut p = self.pipe();
        let limit = p.chunk();
        let mut n = 0;
        for s in iov {
            let take = s.len().min(limit - n);
            p.out.extend_from_slice(&s[..take]);
            n += take;
            if n == limit {
                break;
            }
        }
        Ok(n)
    }
}

/// CRC32C, as the NVMe/TCP digests and both on-disk formats use it.
pub fn crc32c(b: &[u8]) -> u32 {
    crc32c::crc32c(b)
}

/// Walks `stream` as NVMe/TCP PDUs (each common header's PLEN to the next) and writes
/// the right header digest into each PDU whose HDGSTF is set, and the right data digest
/// into each whose DDGSTF is set, as far as the bytes go: so that mutated PDUs get past
/// the digest checks to what lies behind them. Stops at a PLEN shorter than a header.
pub fn fix_digests(stream: &mut [u8]) {
    use lightpool_spec::tcp::{flags, CommonHeader, COMMON_HEADER_SIZE, DIGEST_SIZE};
    let mut at = 0;
    while at + COMMON_HEADER_SIZE <= stream.len() {
        let ch = CommonHeader::parse(
            stream[at..at + COMMON_HEADER_SIZE]
                .try_into()
                .expect("8 bytes"),
        );
        let plen = ch.plen as usize;
        let hlen = usize::from(ch.hlen);
        if plen < COMMON_HEADER_SIZE || hlen < COMMON_HEADER_SIZE {
            return;
        }
        let end = (at + plen).min(stream.len());
        let p = &mut stream[at..end];
        if ch.flags & flags::HDGSTF != 0 && hlen + DIGEST_SIZE <= p.len() {
            let d = crc32c::crc32c(&p[..hlen]);
            p[hlen..hlen + DIGEST_SIZE].copy_from_slice(&d.to_le_bytes());
        }
        let pdo = usize::from(ch.pdo);
        if ch.flags & flags::DDGSTF != 0 && plen == p.len() && pdo + DIGEST_SIZE < plen {
            let d = crc32c::crc32c(&p[pdo..plen - DIGEST_SIZE]);
            p[plen - DIGEST_SIZE..].copy_from_slice(&d.to_le_bytes());
        }
        at += plen;
    }
}
