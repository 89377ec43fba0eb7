//! The verbs objects an NVMe/RDMA target holds: protection domains, memory regions,
//! completion channels and queues, shared receive queues. Each owns its rdma-core
//! handle and releases it on drop.

use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::{ffi, DeviceContext, RdmaError, WorkCompletion};

/// A protection domain of one device context.
pub struct ProtectionDomain(pub(crate) NonNull<ffi::ibv_pd>, DeviceContext);

// SAFETY: verbs objects are thread-safe; the PD is deallocated once, on drop, after
// every MR and QP made in it (they hold an Arc of it or are dropped first).
unsafe impl Send for ProtectionDomain {}
// SAFETY: as above; `&self` methods only read the handles.
unsafe impl Sync for ProtectionDomain {}

/// What a device can do, of what an NVMe/RDMA target asks.
#[derive(Debug, Clone, Copy)]
pub struct DeviceLimits {
    pub max_qp_wr: u32,
    pub max_srq_wr: u32,
    pub max_cqe: u32,
    pub max_qp_rd_atom: u8,
    pub max_qp_init_rd_atom: u8,
}

impl ProtectionDomain {
    /// A PD on `ctx` (a connection identifier's [`CmId::verbs`](crate::CmId::verbs)).
    pub fn new(ctx: DeviceContext) -> Result<Arc<ProtectionDomain>, RdmaError> {
        // SAFETY: a device context librdmacm opened and keeps open.
        let pd = unsafe { ffi::ibv_alloc_pd(ctx.as_ptr()) };
        let pd = NonNull::new(pd).ok_or_else(|| RdmaError::last("ibv_alloc_pd"))?;
        Ok(Arc::new(ProtectionDomain(pd, ctx)))
    }

    pub fn context(&self) -> DeviceContext {
        self.1
    }

    pub fn limits(&self) -> Result<DeviceLimits, RdmaError> {
        let mut a = ffi::ibv_device_attr::default();
        // SAFETY: a valid context; `a` is written by the call.
        let rc = unsafe { ffi::ibv_query_device(self.1.as_ptr(), &mut a) };
        if rc != 0 {
            return Err(RdmaError::code("ibv_query_device", rc));
        }
        let clamp = |v: i32| u8::try_from(v.max(0)).unwrap_or(u8::MAX);
        Ok(DeviceLimits {
            max_qp_wr: a.max_qp_wr.max(0) as u32,
            max_srq_wr: a.max_srq_wr.max(0) as u32,
            max_cqe: a.max_cqe.max(0) as u32,
            max_qp_rd_atom: clamp(a.max_qp_rd_atom),
            max_qp_init_rd_atom: clamp(a.max_qp_init_rd_atom),
        })
    }
}

impl Drop for ProtectionDomain {
    fn drop(&mut self) {
        // SAFETY: deallocated once; everything made in it is gone (see the Send impl).
        unsafe { ffi::ibv_dealloc_pd(self.0.as_ptr()) };
    }
}

/// A registered memory region.
pub struct MemoryRegion {
    mr: NonNull<ffi::ibv_mr>,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: an MR is an immutable registration; deregistered once, on drop.
unsafe impl Send for MemoryRegion {}
// SAFETY: as above.
unsafe impl Sync for MemoryRegion {}

impl MemoryRegion {
    /// Registers `len` bytes at `addr` for local writes (receives, RDMA READ targets)
    /// and reads (sends, RDMA WRITE sources).
    ///
    /// # Safety
    /// The memory stays mapped for the region's whole life.
    pub unsafe fn register(
        pd: &Arc<ProtectionDomain>,
        addr: *mut u8,
        len: usize,
    ) -> Result<MemoryRegion, RdmaError> {
        let access = ffi::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE as i32;
        // SAFETY: a valid PD; the caller keeps the memory mapped.
        let mr = unsafe { ffi::lp_ibv_reg_mr(pd.0.as_ptr(), addr.cast(), len, access) };
        let mr = NonNull::new(mr).ok_or_else(|| RdmaError::last("ibv_reg_mr"))?;
        Ok(MemoryRegion {
            mr,
            _pd: pd.clone(),
        })
    }

    /// Registers `len` bytes at `addr` as [`MemoryRegion::register`] does, and for the
    /// peer's RDMA READ and WRITE too (a host's buffers, named by keyed SGLs).
    ///
    /// # Safety
    /// The memory stays mapped for the region's whole life.
    pub unsafe fn register_remote(
        pd: &Arc<ProtectionDomain>,
        addr: *mut u8,
        len: usize,
    ) -> Result<MemoryRegion, RdmaError> {
        let access = (ffi::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
            | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_READ
            | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE) as i32;
        // SAFETY: a valid PD; the caller keeps the memory mapped.
        let mr = unsafe { ffi::lp_ibv_reg_mr(pd.0.as_ptr(), addr.cast(), len, access) };
        let mr = NonNull::new(mr).ok_or_else(|| RdmaError::last("ibv_reg_mr"))?;
        Ok(MemoryRegion {
            mr,
            _pd: pd.clone(),
        })
    }

    /// The key a peer names the region by (valid when registered for remote access).
    pub fn rkey(&self) -> u32 {
        // SAFETY: valid until drop.
        unsafe { self.mr.as_ref().rkey }
    }

    pub fn lkey(&self) -> u32 {
        // SAFETY: valid until drop.
        unsafe { self.mr.as_ref().lkey }
    }

    /// Whether `[addr, addr + len)` lies inside the region.
    pub fn contains(&self, addr: *const u8, len: usize) -> bool {
        // SAFETY: valid until drop.
        let (start, size) = unsafe { (self.mr.as_ref().addr as usize, self.mr.as_ref().length) };
        let a = addr as usize;
        a >= start && a.checked_add(len).is_some_and(|end| end <= start + size)
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: deregistered once; no work request uses it any more (its owners'
        // queue pairs are gone).
        unsafe { ffi::ibv_dereg_mr(self.mr.as_ptr()) };
    }
}

/// A completion channel: a descriptor that becomes readable when an armed
/// [`CompletionQueue`] gets a completion, so that a reactor can sleep in epoll.
pub struct CompChannel(NonNull<ffi::ibv_comp_channel>);

// SAFETY: a descriptor with no thread affinity; destroyed once, after its CQs.
unsafe impl Send for CompChannel {}

impl CompChannel {
    /// A channel on `ctx`, its descriptor nonblocking.
    pub fn new(ctx: DeviceContext) -> Result<CompChannel, RdmaError> {
        // SAFETY: a valid device context.
        let ch = unsafe { ffi::ibv_create_comp_channel(ctx.as_ptr()) };
        let ch = NonNull::new(ch).ok_or_else(|| RdmaError::last("ibv_create_comp_channel"))?;
        let ch = CompChannel(ch);
        crate::set_nonblocking(ch.fd(), "fcntl(O_NONBLOCK) on a completion channel")?;
        Ok(ch)
    }

    pub fn fd(&self) -> RawFd {
        // SAFETY: valid until drop.
        unsafe { self.0.as_ref().fd }
    }

    /// Reads and acknowledges the notifications waiting (each disarms its CQ); how many.
    pub fn drain(&self) -> usize {
        let mut n = 0;
        loop {
            let mut cq: *mut ffi::ibv_cq = std::ptr::null_mut();
            let mut ctx: *mut std::os::raw::c_void = std::ptr::null_mut();
            // SAFETY: a valid channel, nonblocking: an error means none is waiting.
            let rc = unsafe { ffi::ibv_get_cq_event(self.0.as_ptr(), &mut cq, &mut ctx) };
            if rc != 0 || cq.is_null() {
                return n;
            }
            // SAFETY: the event just read names this CQ; acknowledged once.
            unsafe { ffi::ibv_ack_cq_events(cq, 1) };
            n += 1;
        }
    }
}

impl Drop for CompChannel {
    fn drop(&mut self) {
        // SAFETY: destroyed once, after the CQs made on it (declared after them by
        // their owner, so dropped later).
        unsafe { ffi::ibv_destroy_comp_channel(self.0.as_ptr()) };
    }
}

/// A completion queue, polled, and armed on its [`CompChannel`] before a reactor may
/// sleep.
pub struct CompletionQueue(pub(crate) NonNull<ffi::ibv_cq>);

// SAFETY: verbs objects are thread-safe; destroyed once, on drop, after its QPs.
unsafe impl Send for CompletionQueue {}

impl CompletionQueue {
    pub fn new(
        ctx: DeviceContext,
        entries: u32,
        channel: &CompChannel,
    ) -> Result<CompletionQueue, RdmaError> {
        // SAFETY: a valid context and channel (which outlives the CQ: see CompChannel's
        // drop); no context pointer.
        let cq = unsafe {
            ffi::ibv_create_cq(
                ctx.as_ptr(),
                i32::try_from(entries).unwrap_or(i32::MAX),
                std::ptr::null_mut(),
                channel.0.as_ptr(),
                0,
            )
        };
        let cq = NonNull::new(cq).ok_or_else(|| RdmaError::last("ibv_create_cq"))?;
        Ok(CompletionQueue(cq))
    }

    /// Asks for a notification on the channel at the next completion.
    pub fn arm(&self) -> Result<(), RdmaError> {
        // SAFETY: a valid CQ.
        let rc = unsafe { ffi::lp_ibv_req_notify_cq(self.0.as_ptr(), 0) };
        if rc != 0 {
            return Err(RdmaError::code("ibv_req_notify_cq", rc));
        }
        Ok(())
    }

    /// Fills `out` with completions; how many.
    pub fn poll(&self, out: &mut [WorkCompletion]) -> Result<usize, RdmaError> {
        // SAFETY: a valid CQ; `out` has room for the count passed.
        let n = unsafe {
            ffi::lp_ibv_poll_cq(
                self.0.as_ptr(),
                i32::try_from(out.len()).unwrap_or(i32::MAX),
                out.as_mut_ptr(),
            )
        };
        if n < 0 {
            return Err(RdmaError::code("ibv_poll_cq", -n));
        }
        Ok(n as usize)
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        // SAFETY: destroyed once, after the QP that used it (its owner drops the
        // identifier first).
        unsafe { ffi::ibv_destroy_cq(self.0.as_ptr()) };
    }
}

/// A shared receive queue: receives posted once for every queue pair made on it (each
/// still completes them on its own completion queue, the work request ID naming the
/// buffer).
pub struct SharedReceiveQueue {
    pub(crate) srq: NonNull<ffi::ibv_srq>,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: verbs objects are thread-safe (posting to an SRQ takes the provider's lock);
// destroyed once, on drop, after the queue pairs made on it (their owners hold it).
unsafe impl Send for SharedReceiveQueue {}
// SAFETY: as above; `&self` methods only post.
unsafe impl Sync for SharedReceiveQueue {}

impl SharedReceiveQueue {
    /// An SRQ in `pd` with room for `max_wr` receives of one SGE each.
    pub fn new(pd: &Arc<ProtectionDomain>, max_wr: u32) -> Result<SharedReceiveQueue, RdmaError> {
        let mut attr = ffi::ibv_srq_init_attr {
            attr: ffi::ibv_srq_attr {
                max_wr,
                max_sge: 1,
                srq_limit: 0,
            },
            ..Default::default()
        };
        // SAFETY: a valid PD; `attr` is read (and its limits written back) by the call.
        let srq = unsafe { ffi::ibv_create_srq(pd.0.as_ptr(), &mut attr) };
        let srq = NonNull::new(srq).ok_or_else(|| RdmaError::last("ibv_create_srq"))?;
        Ok(SharedReceiveQueue {
            srq,
            _pd: pd.clone(),
        })
    }

    /// Posts one receive of `len` bytes at `addr` (registered memory, `lkey`).
    pub fn post_recv(
        &self,
        wr_id: u64,
        addr: *mut u8,
        len: u32,
        lkey: u32,
    ) -> Result<(), RdmaError> {
        let srq = self.srq.as_ptr();
        post_one_recv("ibv_post_srq_recv", wr_id, addr, len, lkey, |wr, bad| {
            // SAFETY: a valid SRQ; the WR and its SGE live through the call, which copies
            // them; the caller keeps the buffer registered while the receive is posted.
            unsafe { ffi::lp_ibv_post_srq_recv(srq, wr, bad) }
        })
    }
}

/// One receive work request of one SGE, handed to `post` (a QP's or an SRQ's).
pub(crate) fn post_one_recv(
    call: &'static str,
    wr_id: u64,
    addr: *mut u8,
    len: u32,
    lkey: u32,
    post: impl FnOnce(*mut ffi::ibv_recv_wr, *mut *mut ffi::ibv_recv_wr) -> std::os::raw::c_int,
) -> Result<(), RdmaError> {
    let mut sge = ffi::ibv_sge {
        addr: addr as u64,
        length: len,
        lkey,
    };
    let mut wr = ffi::ibv_recv_wr {
        wr_id,
        next: std::ptr::null_mut(),
        sg_list: &mut sge,
        num_sge: 1,
    };
    let mut bad = std::ptr::null_mut();
    let rc = post(&mut wr, &mut bad);
    if rc != 0 {
        return Err(RdmaError::code(call, rc));
    }
    Ok(())
}

impl Drop for SharedReceiveQueue {
    fn drop(&mut self) {
        // SAFETY: destroyed once, after every queue pair made on it (each owner holds
        // the SRQ longer than its identifier).
        unsafe { ffi::ibv_destroy_srq(self.srq.as_ptr()) };
    }
}
