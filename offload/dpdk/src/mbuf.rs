//! Packet buffers: the mempool and an owned mbuf.

use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Arc;

use lightpool_dpdk_sys::ffi;

use crate::eal::Eal;
use crate::error::{rte_errno, strerror, DpdkError};

/// A pool of packet buffers (`rte_pktmbuf_pool_create`), freed when the last user
/// (ports, queues, mbufs hold it through [`Arc`]) lets go.
pub struct Mempool {
    ptr: NonNull<ffi::rte_mempool>,
    name: String,
    size: u32,
    data_room: u16,
}

// SAFETY: a DPDK mempool is safe to use from many threads (its default ops are the
// multi-producer/multi-consumer ring; the per-lcore caches are per thread).
unsafe impl Send for Mempool {}
// SAFETY: as above; every method takes &self and DPDK synchronises.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// `size` mbufs, each with `data_room` bytes after DPDK's 128-byte headroom (2048
    /// holds a 1500-byte-MTU frame; 9216 a jumbo one), a per-lcore cache of
    /// `cache_size` (at most 512; 0 for none).
    pub fn new(
        _eal: &Eal,
        name: &str,
        size: u32,
        cache_size: u32,
        data_room: usize,
    ) -> Result<Arc<Mempool>, DpdkError> {
        // SAFETY: plain read of a constant the shim exports.
        let headroom = usize::from(unsafe { ffi::lp_rte_pktmbuf_headroom });
        let room =
            u16::try_from(data_room + headroom).map_err(|_| DpdkError::DataRoom(data_room))?;
        let cname = CString::new(name).map_err(|_| DpdkError::BadArgument(name.to_string()))?;
        // SAFETY: EAL runs (&Eal); the name is NUL-terminated and copied by DPDK.
        let p = unsafe {
            ffi::rte_pktmbuf_pool_create(
                cname.as_ptr(),
                size,
                cache_size,
                0,
                room,
                ffi::rte_socket_id() as i32,
            )
        };
        let Some(ptr) = NonNull::new(p) else {
            let errno = rte_errno();
            let hint = match errno {
                libc::ENOMEM => {
                    "not enough EAL memory: fewer or smaller mbufs, or a larger -m (memory_mb)"
                }
                libc::EEXIST => "a mempool of that name exists: pick another name",
                libc::EINVAL => "cache_size must be at most 512 and at most size / 1.5",
                libc::ENOSPC => "DPDK's memzone table is full",
                _ => "the mempool ring driver may be missing: install Debian's dpdk package",
            };
            return Err(DpdkError::Mempool {
                name: name.to_string(),
                errno,
                reason: strerror(errno),
                hint,
            });
        };
        Ok(Arc::new(Mempool {
            ptr,
            name: name.to_string(),
            size,
            data_room: room - headroom as u16,
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Mbufs the pool was made with.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Bytes of packet data one mbuf holds.
    pub fn data_room(&self) -> usize {
        usize::from(self.data_room)
    }

    /// Mbufs free (in the pool's ring and in every lcore's cache).
    pub fn available(&self) -> u32 {
        // SAFETY: a valid mempool; read-only.
        unsafe { ffi::rte_mempool_avail_count(self.ptr.as_ptr()) }
    }

    /// Mbufs out of the pool (held by queues, devices, or [`Mbuf`]s).
    pub fn in_use(&self) -> u32 {
        // SAFETY: a valid mempool; read-only.
        unsafe { ffi::rte_mempool_in_use_count(self.ptr.as_ptr()) }
    }

    pub(crate) fn as_ptr(&self) -> *mut ffi::rte_mempool {
        self.ptr.as_ptr()
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        // SAFETY: nothing uses the pool any more: ports, queues and mbufs hold an Arc.
        unsafe { ffi::rte_mempool_free(self.ptr.as_ptr()) };
    }
}

/// One packet buffer, owned: freed back to its pool on drop, unless handed to a
/// device by [`crate::Queue::tx_burst`]. Single-segment.
#[repr(transparent)]
pub struct Mbuf(NonNull<ffi::rte_mbuf>);

// SAFETY: an mbuf owned by one holder can move between threads (freeing from any
// thread is safe; see Mempool).
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// A fresh, empty mbuf from `pool`; `None` when the pool is empty.
    ///
    /// The pool must outlive the mbuf; [`crate::Queue`] and [`crate::Port`] keep
    /// theirs alive.
    pub fn alloc(pool: &Mempool) -> Option<Mbuf> {
        // SAFETY: a valid mempool.
        NonNull::new(unsafe { ffi::lp_rte_pktmbuf_alloc(pool.as_ptr()) }).map(Mbuf)
    }

    /// Takes ownership of a raw mbuf.
    ///
    /// # Safety
    /// `p` is a valid mbuf nobody else owns.
    pub(crate) unsafe fn from_raw(p: NonNull<ffi::rte_mbuf>) -> Mbuf {
        Mbuf(p)
    }

    /// Length of this (first) segment's data.
    pub fn len(&self) -> usize {
        // SAFETY: a valid mbuf.
        usize::from(unsafe { ffi::lp_rte_pktmbuf_data_len(self.0.as_ptr()) })
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Segments of the packet (1 unless the device scattered it).
    pub fn segments(&self) -> u16 {
        // SAFETY: a valid mbuf.
        unsafe { ffi::lp_rte_pktmbuf_nb_segs(self.0.as_ptr()) }
    }

    /// The first segment's data.
    pub fn data(&self) -> &[u8] {
        // SAFETY: mtod points at data_len initialised bytes inside the mbuf, owned by
        // self for the borrow's life.
        unsafe {
            std::slice::from_raw_parts(
                ffi::lp_rte_pktmbuf_mtod(self.0.as_ptr()) as *const u8,
                self.len(),
            )
        }
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        let len = self.len();
        // SAFETY: as data(), exclusively borrowed.
        unsafe {
            std::slice::from_raw_parts_mut(
                ffi::lp_rte_pktmbuf_mtod(self.0.as_ptr()) as *mut u8,
                len,
            )
        }
    }

    /// Grows the data by `len` bytes and returns them (uninitialised contents from an
    /// earlier packet, never freed memory); `None` when the tailroom is too small.
    pub fn append(&mut self, len: usize) -> Option<&mut [u8]> {
        let len16 = u16::try_from(len).ok()?;
        // SAFETY: a valid mbuf we own.
        let p = unsafe { ffi::lp_rte_pktmbuf_append(self.0.as_ptr(), len16) };
        if p.is_null() {
            return None;
        }
        // SAFETY: append returned len bytes inside this mbuf's buffer.
        Some(unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len) })
    }

    /// Empties the data (keeps the buffer).
    pub fn reset(&mut self) {
        // SAFETY: a valid mbuf we own.
        unsafe { ffi::lp_rte_pktmbuf_reset(self.0.as_ptr()) }
    }

    pub(crate) fn into_raw(self) -> *mut ffi::rte_mbuf {
        let p = self.0.as_ptr();
        std::mem::forget(self);
        p
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own it; returns it (and any further segments) to its pool.
        unsafe { ffi::lp_rte_pktmbuf_free(self.0.as_ptr()) }
    }
}
