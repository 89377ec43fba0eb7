//! Fixed-size DMA buffers shared by the reactors through per-thread caches.
//!
//! The free list is a lock-free bounded queue of buffer indices; each thread keeps a
//! small cache of indices in front of it (`cache_size`), refilled and spilled by half a
//! cache at a time, so a reactor that takes and returns buffers at a steady rate touches
//! the shared queue once per batch. A cache goes back to the shared queue when its thread
//! exits. A buffer may be returned from any thread.

use std::cell::RefCell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use crossbeam::queue::ArrayQueue;

use crate::memory::{Backing, DmaMemory, HugePages};
use crate::{DmaError, DmaMapper};

/// How to build a [`DmaPool`].
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Bytes per buffer; a multiple of 4096.
    pub buf_size: usize,
    /// Number of buffers.
    pub count: usize,
    /// Buffers each thread keeps for itself.
    pub cache_size: usize,
    pub hugepages: HugePages,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            buf_size: 128 * 1024,
            count: 512,
            cache_size: 32,
            hugepages: HugePages::Auto,
        }
    }
}

static POOL_IDS: AtomicU64 = AtomicU64::new(1);

/// A pool of equal DMA buffers in one [`DmaMemory`].
pub struct DmaPool {
    id: u64,
    mem: DmaMemory,
    buf_size: usize,
    count: usize,
    cache_size: usize,
    free: ArrayQueue<u32>,
}

impl std::fmt::Debug for DmaPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaPool")
            .field("buf_size", &self.buf_size)
            .field("count", &self.count)
            .field("mem", &self.mem)
            .finish()
    }
}

/// How devices and fabrics reach a buffer without copying it: today its IOVA in the
/// IOMMU domain of the pool's mapper (VFIO). A pool registered with an RDMA protection
/// domain will add its memory region's keys here, so a transport or a block device
/// takes a buffer's registration from the buffer and never looks it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Registration {
    /// The device address of the buffer's first byte (IOVA-contiguous for the buffer's
    /// length), when the pool is registered with a mapper.
    pub iova: Option<u64>,
}

/// One buffer of a [`DmaPool`]. Return it with [`DmaPool::put`]; one that is dropped
/// instead is lost to the pool (never freed memory: the pool owns it).
#[derive(Debug)]
pub struct DmaBuf {
    ptr: NonNull<u8>,
    iova: Option<u64>,
    len: usize,
    index: u32,
    pool: u64,
}

// SAFETY: a DmaBuf is the exclusive handle to its slice of the pool's memory, like a
// Box<[u8]> whose allocation the pool owns.
unsafe impl Send for DmaBuf {}

impl DmaBuf {
    /// Start of the buffer, 4096-byte aligned, valid for `len()` bytes while the pool
    /// lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address of the buffer's first byte (IOVA-contiguous for `len()`
    /// bytes), when the pool is registered with a mapper.
    pub fn iova(&self) -> Option<u64> {
        self.iova
    }

    /// What devices and fabrics reach the buffer by (see [`Registration`]).
    pub fn registration(&self) -> Registration {
        Registration { iova: self.iova }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the buffer is `len` bytes of mapped, initialised (zero-filled at map
        // time) memory that only this handle gives access to.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

struct LocalCache {
    pool_id: u64,
    pool: Weak<DmaPool>,
    bufs: Vec<u32>,
}

#[derive(Default)]
struct Caches(Vec<LocalCache>);

impl Drop for Caches {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if let Some(p) = c.pool.upgrade() {
                for i in c.bufs.drain(..) {
                    // Cannot fail: the queue holds `count` indices and each is in at most
                    // one place.
                    let _ = p.free.push(i);
                }
            }
        }
    }
}

thread_local! {
    static CACHES: RefCell<Caches> = const { RefCell::new(Caches(Vec::new())) };
}

impl DmaPool {
    /// Maps `count * buf_size` bytes (see [`DmaMemory::new`] for where from), registers
    /// them with `mapper` when given, and cuts them into buffers.
    pub fn new(
        opts: &PoolOptions,
        mapper: Option<Arc<dyn DmaMapper>>,
    ) -> Result<Arc<DmaPool>, DmaError> {
        if opts.buf_size == 0 || !opts.buf_size.is_multiple_of(4096) {
            return Err(DmaError::Invalid(format!(
                "DMA buffer size {} is not a positive multiple of 4096",
                opts.buf_size
            )));
        }
        if opts.count == 0 || opts.count > u32::MAX as usize {
            return Err(DmaError::Invalid(format!(
                "a DMA pool of {} buffers was asked for; use 1 to {}",
                opts.count,
                u32::MAX
            )));
        }
        let total = opts.buf_size.checked_mul(opts.count).ok_or_else(|| {
            DmaError::Invalid(format!(
                "{} buffers of {} bytes do not fit in the address space",
                opts.count, opts.buf_size
            ))
        })?;
        let mem = DmaMemory::new(total, &opts.hugepages, mapper)?;
        Ok(Self::with_memory(opts, mem, total))
    }

    /// Hot upgrade, new process: a pool over memory adopted from the predecessor
    /// ([`DmaMemory::adopt`]), every buffer free (the predecessor drained its devices
    /// before it handed the memory over).
    pub fn adopt(opts: &PoolOptions, mem: DmaMemory) -> Result<Arc<DmaPool>, DmaError> {
        let total = opts
            .buf_size
            .checked_mul(opts.count)
            .filter(|&t| opts.buf_size > 0 && opts.count > 0 && t <= mem.len())
            .ok_or_else(|| {
                DmaError::Invalid(format!(
                    "{} buffers of {} bytes do not fit in the {} bytes of DMA memory handed over",
                    opts.count,
                    opts.buf_size,
                    mem.len()
                ))
            })?;
        if !opts.buf_size.is_multiple_of(4096) || opts.count > u32::MAX as usize {
            return Err(DmaError::Invalid(format!(
                "a DMA pool of {} buffers of {} bytes cannot be adopted",
                opts.count, opts.buf_size
            )));
        }
        Ok(Self::with_memory(opts, mem, total))
    }

    fn with_memory(opts: &PoolOptions, mem: DmaMemory, total: usize) -> Arc<DmaPool> {
        let free = ArrayQueue::new(opts.count);
        for i in 0..opts.count {
            // Cannot fail: the queue was made with room for exactly `count` entries.
            let _ = free.push(i as u32);
        }
        let pool = Arc::new(DmaPool {
            id: POOL_IDS.fetch_add(1, Ordering::Relaxed),
            mem,
            buf_size: opts.buf_size,
            count: opts.count,
            cache_size: opts.cache_size.max(1),
            free,
        });
        match pool.mem.backing() {
            Backing::Hugepages { mount, page_size } => tracing::info!(
                bytes = total,
                page_kib = page_size >> 10,
                mount = %if mount.as_os_str().is_empty() { "(memfd)".into() } else { mount.display().to_string() },
                registered = pool.mem.iova_at(0).is_some(),
                "DMA pool on hugepages"
            ),
            Backing::Ordinary { reason } => tracing::info!(
                bytes = total,
                registered = pool.mem.iova_at(0).is_some(),
                %reason,
                "DMA pool on ordinary memory"
            ),
        }
        pool
    }

    /// The memory the buffers are cut from (for a hot upgrade's handover).
    pub fn memory(&self) -> &DmaMemory {
        &self.mem
    }

    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn backing(&self) -> &Backing {
        self.mem.backing()
    }

    /// Whether the buffers have IOVAs (the pool is registered with a mapper).
    pub fn is_registered(&self) -> bool {
        self.mem.iova_at(0).is_some()
    }

    /// Buffers in the shared free list (not counting those in thread caches).
    pub fn shared_free(&self) -> usize {
        self.free.len()
    }

    /// The IOVA of `ptr` when `ptr..ptr+len` lies inside one buffer of this pool and the
    /// pool is registered: memory a device can reach without copying.
    pub fn iova_of(&self, ptr: *const u8, len: usize) -> Option<u64> {
        let off = self.mem.offset_of(ptr, len)?;
        if off / self.buf_size != (off + len.max(1) - 1) / self.buf_size {
            return None;
        }
        self.mem.iova_at(off)
    }

    fn buf(&self, index: u32) -> DmaBuf {
        let off = index as usize * self.buf_size;
        DmaBuf {
            // SAFETY: index < count, so the offset lies inside the mapping.
            ptr: unsafe { NonNull::new_unchecked(self.mem.as_ptr().add(off)) },
            iova: self.mem.iova_at(off),
            len: self.buf_size,
            index,
            pool: self.id,
        }
    }

    /// A buffer from the calling thread's cache (refilled from the shared list when
    /// empty), or `None` when the pool is exhausted.
    pub fn get(self: &Arc<Self>) -> Option<DmaBuf> {
        let got = CACHES.try_with(|c| {
            let mut c = c.borrow_mut();
            let cache = self.local(&mut c.0);
            if cache.bufs.is_empty() {
                for _ in 0..self.cache_size.div_ceil(2) {
                    match self.free.pop() {
                        Some(i) => cache.bufs.push(i),
                        None => break,
                    }
                }
            }
            cache.bufs.pop()
        });
        let index = match got {
            Ok(i) => i,
            // The thread is exiting and its cache is gone: use the shared list.
            Err(_) => self.free.pop(),
        }?;
        Some(self.buf(index))
    }

    /// Gives a buffer back (to the calling thread's cache).
    pub fn put(self: &Arc<Self>, buf: DmaBuf) {
        if buf.pool != self.id || buf.index as usize >= self.count {
            debug_assert!(false, "a DMA buffer was returned to a pool it is not from");
            return;
        }
        let index = buf.index;
        let cached = CACHES.try_with(|c| {
            let mut c = c.borrow_mut();
            let cache = self.local(&mut c.0);
            cache.bufs.push(index);
            if cache.bufs.len() > self.cache_size {
                let keep = self.cache_size / 2;
                for i in cache.bufs.drain(keep..) {
                    let _ = self.free.push(i);
                }
            }
        });
        if cached.is_err() {
            let _ = self.free.push(index);
        }
    }

    fn local<'a>(self: &Arc<Self>, caches: &'a mut Vec<LocalCache>) -> &'a mut LocalCache {
        let at = match caches.iter().position(|c| c.pool_id == self.id) {
            Some(at) => at,
            None => {
                // Caches of pools that are gone are dropped when a new one is made.
                caches.retain(|c| c.pool.strong_count() > 0);
                caches.push(LocalCache {
                    pool_id: self.id,
                    pool: Arc::downgrade(self),
                    bufs: Vec::with_capacity(self.cache_size + 1),
                });
                caches.len() - 1
            }
        };
        &mut caches[at]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(count: usize, cache: usize) -> Arc<DmaPool> {
        DmaPool::new(
            &PoolOptions {
                buf_size: 8192,
                count,
                cache_size: cache,
                hugepages: HugePages::Off,
            },
            None,
        )
        .expect("pool")
    }

    #[test]
    fn distinct_aligned_buffers_until_exhausted() {
        let p = pool(8, 4);
        let mut bufs: Vec<DmaBuf> = (0..8).map(|_| p.get().expect("a buffer")).collect();
        assert!(p.get().is_none(), "the ninth buffer of eight");
        let mut addrs: Vec<usize> = bufs.iter().map(|b| b.as_ptr() as usize).collect();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), 8);
        assert!(addrs.iter().all(|a| a % 4096 == 0));
        assert!(matches!(p.backing(), Backing::Ordinary { .. }));
        assert!(!p.is_registered());
        bufs[0].as_mut_slice()[8191] = 7;
        assert_eq!(bufs[0].as_slice()[8191], 7);
        for b in bufs.drain(..) {
            p.put(b);
        }
        assert!(p.get().is_some());
    }

    #[test]
    fn caches_spill_to_the_shared_list_and_other_threads_get_them() {
        let p = pool(16, 4);
        let bufs: Vec<DmaBuf> = (0..16).map(|_| p.get().expect("buffer")).collect();
        assert_eq!(p.shared_free(), 0);
        for b in bufs {
            p.put(b);
        }
        // This thread keeps at most `cache_size` of them.
        assert!(p.shared_free() >= 12, "shared {}", p.shared_free());
        let p2 = p.clone();
        let got = std::thread::spawn(move || {
            let v: Vec<DmaBuf> = std::iter::from_fn(|| p2.get()).collect();
            let n = v.len();
            for b in v {
                p2.put(b);
            }
            n
        })
        .join()
        .expect("thread");
        assert!(got >= 12);
        // The other thread's cache went back when it exited.
        assert!(p.shared_free() >= 12);
    }

    #[test]
    fn buffers_returned_from_another_thread() {
        let p = pool(4, 2);
        let b = p.get().expect("buffer");
        let p2 = p.clone();
        std::thread::spawn(move || p2.put(b))
            .join()
            .expect("thread");
        let all: Vec<DmaBuf> = std::iter::from_fn(|| p.get()).collect();
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn iova_of_finds_registered_buffers() {
        let mapper = Arc::new(crate::memory::tests::FakeMapper::default());
        let p = DmaPool::new(
            &PoolOptions {
                buf_size: 8192,
                count: 4,
                cache_size: 2,
                hugepages: HugePages::Off,
            },
            Some(mapper.clone()),
        )
        .expect("pool");
        assert!(p.is_registered());
        let b = p.get().expect("buffer");
        let iova = b.iova().expect("registered");
        assert_eq!(p.iova_of(b.as_ptr(), 8192), Some(iova));
        assert_eq!(
            p.iova_of(b.as_ptr().wrapping_add(4096), 4096),
            Some(iova + 4096)
        );
        // Across two buffers, or outside the pool: not usable as one transfer.
        assert_eq!(p.iova_of(b.as_ptr().wrapping_add(4096), 8192), None);
        let outside = [0u8; 16];
        assert_eq!(p.iova_of(outside.as_ptr(), 16), None);
        p.put(b);
    }

    #[test]
    fn bad_options_are_refused() {
        let e = DmaPool::new(
            &PoolOptions {
                buf_size: 1000,
                ..PoolOptions::default()
            },
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("multiple of 4096"), "{e}");
    }
}
