//! Request data buffers: where they come from and how a slot holds them.
//!
//! Every queue of a target takes its request buffers from one [`BufSource`]: a pool of
//! page-aligned buffers ([`DmaPool`]). When a block device offers memory it reaches
//! without copying (a VFIO NVMe device's DMA pool, registered with the IOMMU), that pool
//! is the source, so the device reads and writes the very buffers the transport fills
//! and sends; otherwise the target makes a pool of its own (huge pages when there are
//! free ones, else ordinary memory). A buffer knows its registration (IOVA now, RDMA keys
//! later: [`Registration`]).
//!
//! A slot takes a pool buffer when a request first needs one (through the pool's
//! per-thread cache: no lock, no allocation) and keeps it for the requests after, as
//! long as its queue is busy: a warm queue touches no pool at all. Since a queue reuses
//! its most recently freed slots first, a busy queue holds about as many buffers as it
//! has requests in flight. Buffers of free slots go back to the pool once the queue
//! has been idle 100 µs and every 100 ms while it is busy (the queue's poll sees to
//! it), so idle queues hold none and a past burst does not keep its buffers. When the
//! pool has none to give (or the transfer is larger than its buffers), the slot uses
//! memory of its own ([`AlignedBuf`]), allocated once and kept for the next such time;
//! the source counts these, since a device then has to bounce them.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use lightpool_dma::{DmaBuf, DmaPool, HugePages, PoolOptions, Registration};

/// Alignment of every data buffer: a page, so O_DIRECT backends and DMA take them as
/// they are.
pub const BUF_ALIGN: usize = 4096;

/// Bytes of buffers in a target's own pool (the count follows from the buffer size).
const OWN_POOL_BYTES: usize = 32 << 20;
/// Buffers each reactor keeps for itself in front of the shared free list.
const OWN_POOL_CACHE: usize = 32;

/// Where a target's request buffers come from: see the module documentation.
pub struct BufSource {
    pool: Option<Arc<DmaPool>>,
    /// Buffers handed out that were not the pool's.
    overflows: AtomicU64,
    warned: AtomicBool,
}

impl std::fmt::Debug for BufSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufSource")
            .field("pool", &self.pool)
            .field("overflows", &self.overflows())
            .finish()
    }
}

impl BufSource {
    /// Request buffers from `pool` (a device's, or one made for the target).
    pub fn new(pool: Arc<DmaPool>) -> Arc<BufSource> {
        Arc::new(BufSource {
            pool: Some(pool),
            overflows: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        })
    }

    /// The target's own pool, for when no device offers one: buffers of `buf_size`
    /// bytes (the largest transfer), in huge pages when a hugetlbfs mount has free
    /// ones, else in ordinary memory (only the pages used are ever touched). If even
    /// that cannot be mapped, every slot uses memory of its own.
    pub fn page_aligned(buf_size: usize) -> Arc<BufSource> {
        let buf_size = buf_size.max(1).next_multiple_of(BUF_ALIGN);
        let opts = PoolOptions {
            buf_size,
            count: (OWN_POOL_BYTES / buf_size).max(64),
            cache_size: OWN_POOL_CACHE,
            hugepages: HugePages::Auto,
        };
        match DmaPool::new(&opts, None) {
            Ok(pool) => BufSource::new(pool),
            Err(e) => {
                tracing::warn!(error = %e, "no pool for request buffers: each request slot allocates its own");
                Arc::new(BufSource {
                    pool: None,
                    overflows: AtomicU64::new(0),
                    warned: AtomicBool::new(true),
                })
            }
        }
    }

    /// The pool the buffers come from.
    pub fn pool(&self) -> Option<&Arc<DmaPool>> {
        self.pool.as_ref()
    }

    /// Whether the buffers are `pool`'s (the same pool, not a copy of its options).
    pub fn is_pool(&self, pool: &Arc<DmaPool>) -> bool {
        self.pool.as_ref().is_some_and(|p| Arc::ptr_eq(p, pool))
    }

    /// How many times a slot had to use memory of its own because the pool had no
    /// buffer to give, or none large enough.
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }

    fn overflowed(&self, len: usize) {
        self.overflows.fetch_add(1, Ordering::Relaxed);
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                len,
                pool = ?self.pool,
                "the request buffer pool had no buffer for a request: it uses memory of its \
                 own, which a device must copy (said once)"
            );
        }
    }
}

/// The buffer of one request: one of the pool's, or the slot's own.
pub(crate) enum ReqBuf {
    Pool(DmaBuf),
    Own(AlignedBuf),
}

impl ReqBuf {
    pub(crate) fn len(&self) -> usize {
        match self {
            ReqBuf::Pool(b) => b.len(),
            ReqBuf::Own(b) => b.len(),
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            ReqBuf::Pool(b) => b.as_slice(),
            ReqBuf::Own(b) => b.as_slice(),
        }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            ReqBuf::Pool(b) => b.as_mut_slice(),
            ReqBuf::Own(b) => b.as_mut_slice(),
        }
    }

    pub(crate) fn registration(&self) -> Registration {
        match self {
            ReqBuf::Pool(b) => b.registration(),
            ReqBuf::Own(_) => Registration::default(),
        }
    }
}

/// One buffer place of a slot (its data buffer, or the second buffer a Compare reads
/// the media into): the buffer in use, if any, and memory of the slot's own kept from an
/// earlier overflow.
#[derive(Default)]
pub(crate) struct BufSlot {
    cur: Option<ReqBuf>,
    spare: Option<AlignedBuf>,
}

impl BufSlot {
    /// The buffer in use.
    pub(crate) fn get(&self) -> Option<&ReqBuf> {
        self.cur.as_ref()
    }

    /// Whether the buffer in use holds at least `len` bytes.
    #[inline]
    fn holds(&self, len: usize) -> bool {
        self.cur.as_ref().is_some_and(|b| b.len() >= len)
    }

    /// The buffer in use, at least `len` bytes: the one the slot has, else a pool buffer
    /// (this thread's cache), else the slot's own memory.
    #[inline]
    pub(crate) fn take(&mut self, src: &BufSource, len: usize) -> &mut ReqBuf {
        if !self.holds(len) {
            self.fill(src, len);
        }
        self.cur.as_mut().expect("filled just above")
    }

    /// Gives the slot a buffer of at least `len` bytes. One too small (for a longer
    /// transfer) goes back to the pool first.
    #[cold]
    fn fill(&mut self, src: &BufSource, len: usize) {
        self.release_to(src);
        if let Some(pool) = &src.pool {
            if len <= pool.buf_size() {
                if let Some(b) = pool.get() {
                    self.cur = Some(ReqBuf::Pool(b));
                    return;
                }
            }
        }
        src.overflowed(len);
        let own = match self.spare.take() {
            Some(b) if b.len() >= len => b,
            _ => AlignedBuf::new(len),
        };
        self.cur = Some(ReqBuf::Own(own));
    }

    /// The buffer in use, at least `len` bytes, in memory of the slot's own whatever
    /// the pool has: for data a hot upgrade brings over. A device's pool may be pages
    /// the predecessor process maps too, and it uses its buffers again if the upgrade
    /// fails; until the predecessor has let go, the successor writes none of them.
    pub(crate) fn take_own(&mut self, src: &BufSource, len: usize) -> &mut ReqBuf {
        if !matches!(&self.cur, Some(ReqBuf::Own(b)) if b.len() >= len) {
            self.release_to(src);
            let own = match self.spare.take() {
                Some(b) if b.len() >= len => b,
                _ => AlignedBuf::new(len),
            };
            self.cur = Some(ReqBuf::Own(own));
        }
        self.cur.as_mut().expect("set just above")
    }

    /// Gives a pool buffer back to `src`'s pool (the slot is free, or its queue goes
    /// away); memory of the slot's own is kept.
    #[inline]
    pub(crate) fn release_to(&mut self, src: &BufSource) {
        if self.cur.is_none() {
            return;
        }
        if let (Some(b), Some(p)) = (self.release(), &src.pool) {
            p.put(b);
        }
    }

    /// The pool buffer, to give back; memory of the slot's own is kept for the next
    /// overflow.
    #[must_use]
    fn release(&mut self) -> Option<DmaBuf> {
        match self.cur.take() {
            Some(ReqBuf::Pool(b)) => Some(b),
            Some(ReqBuf::Own(b)) if self.spare.as_ref().is_none_or(|s| s.len() < b.len()) => {
                self.spare = Some(b);
                None
            }
            // No buffer, or a smaller one than the spare: nothing to keep.
            _ => None,
        }
    }
}

/// A page-aligned, fixed-size byte buffer of a slot's own (see the module
/// documentation).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// Allocate `len` zeroed bytes (rounded up to a page).
    pub fn new(len: usize) -> AlignedBuf {
        let len = len.max(1).next_multiple_of(BUF_ALIGN);
        let layout = Layout::from_size_align(len, BUF_ALIGN).expect("page-aligned layout is valid");
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes (zeroed at allocation) for our lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout =
            Layout::from_size_align(self.len, BUF_ALIGN).expect("same layout as at allocation");
        // SAFETY: ptr was allocated with exactly this layout and is freed once.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(buf_size: usize, count: usize) -> Arc<BufSource> {
        let pool = DmaPool::new(
            &PoolOptions {
                buf_size,
                count,
                cache_size: 2,
                hugepages: HugePages::Off,
            },
            None,
        )
        .expect("pool");
        BufSource::new(pool)
    }

    /// Every buffer of the pool, taken on this thread (the per-thread cache included).
    fn drain(pool: &Arc<DmaPool>) -> Vec<DmaBuf> {
        std::iter::from_fn(|| pool.get()).collect()
    }

    #[test]
    fn aligned_and_zeroed() {
        let mut b = AlignedBuf::new(5000);
        assert_eq!(b.len(), 8192);
        assert_eq!(b.as_ptr() as usize % BUF_ALIGN, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[8191] = 7;
        assert_eq!(b.as_slice()[8191], 7);
    }

    #[test]
    fn slots_keep_a_pool_buffer_until_released() {
        let src = source(16384, 4);
        let pool = src.pool().expect("a pool").clone();
        let (mut a, mut b) = (BufSlot::default(), BufSlot::default());
        let pa = a.take(&src, 4096).as_mut_slice().as_ptr();
        assert!(matches!(a.get(), Some(ReqBuf::Pool(_))));
        assert_eq!(pa as usize % BUF_ALIGN, 0);
        // The same request asks again, for its whole transfer, and the next request of
        // the slot too: the same buffer, no pool touched.
        assert_eq!(a.take(&src, 16384).as_mut_slice().as_ptr(), pa);
        b.take(&src, 100);
        assert!(matches!(b.get(), Some(ReqBuf::Pool(_))));
        assert_ne!(b.get().expect("buffer").as_slice().as_ptr(), pa);
        let rest = drain(&pool);
        assert_eq!(rest.len(), 2, "the slots hold the other two");
        assert_eq!(src.overflows(), 0);
        a.release_to(&src);
        b.release_to(&src);
        assert!(a.get().is_none() && b.get().is_none());
        assert_eq!(drain(&pool).len(), 2, "both back in the pool");
        for x in rest {
            pool.put(x);
        }
    }

    #[test]
    fn an_empty_pool_or_a_long_transfer_uses_the_slots_own_memory_once() {
        let src = source(8192, 1);
        let pool = src.pool().expect("a pool").clone();
        let (mut a, mut b) = (BufSlot::default(), BufSlot::default());
        a.take(&src, 8192);
        // The pool's one buffer is taken: the next slot uses its own memory.
        let own = b.take(&src, 8192).as_mut_slice().as_ptr();
        assert!(matches!(b.get(), Some(ReqBuf::Own(_))));
        assert_eq!(
            b.get().expect("buffer").registration(),
            Registration::default()
        );
        assert_eq!(src.overflows(), 1);
        b.release_to(&src);
        // Kept as a spare, used again without allocating while the pool stays empty.
        assert_eq!(b.take(&src, 4096).as_mut_slice().as_ptr(), own);
        b.release_to(&src);
        a.release_to(&src);
        // The pool has a buffer again: preferred over the spare.
        b.take(&src, 4096);
        assert!(matches!(b.get(), Some(ReqBuf::Pool(_))));
        // Longer than any pool buffer: the slot's own memory, grown to fit; the short
        // buffer goes back to the pool.
        let long = b.take(&src, 20000);
        assert!(long.len() >= 20000);
        assert!(matches!(b.get(), Some(ReqBuf::Own(_))));
        assert_eq!(src.overflows(), 3);
        let all = drain(&pool);
        assert_eq!(all.len(), 1, "no buffer lost");
        for x in all {
            pool.put(x);
        }
    }

    #[test]
    fn registered_pool_buffers_carry_their_iova() {
        struct Mapper;
        impl lightpool_dma::DmaMapper for Mapper {
            fn map(&self, _vaddr: usize, _len: usize) -> Result<u64, std::io::Error> {
                Ok(1 << 40)
            }
            fn unmap(&self, _iova: u64, _len: usize) -> Result<(), std::io::Error> {
                Ok(())
            }
        }
        let pool = DmaPool::new(
            &PoolOptions {
                buf_size: 8192,
                count: 4,
                cache_size: 2,
                hugepages: HugePages::Off,
            },
            Some(Arc::new(Mapper)),
        )
        .expect("pool");
        let src = BufSource::new(pool.clone());
        assert!(src.is_pool(&pool));
        let mut a = BufSlot::default();
        let ptr = a.take(&src, 4096).as_mut_slice().as_ptr();
        let reg = a.get().expect("buffer").registration();
        assert_eq!(reg.iova, pool.iova_of(ptr, 8192));
        assert!(reg.iova.is_some_and(|i| i >= 1 << 40));
        a.release_to(&src);
    }

    #[test]
    fn the_targets_own_pool_is_page_aligned() {
        let src = BufSource::page_aligned(128 * 1024);
        let pool = src.pool().expect("ordinary memory at least");
        assert_eq!(pool.buf_size(), 128 * 1024);
        assert!(pool.count() >= 64);
        assert!(!pool.is_registered());
        let mut a = BufSlot::default();
        let p = a.take(&src, 128 * 1024).as_mut_slice().as_ptr();
        assert_eq!(p as usize % BUF_ALIGN, 0);
        a.release_to(&src);
    }
}
