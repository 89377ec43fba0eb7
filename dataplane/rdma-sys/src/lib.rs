//! rdma-core for LightPool: [`ffi`], bindings bindgen makes from Debian's
//! `infiniband/verbs.h` and `rdma/rdma_cma.h` at build time (plus a C shim for the verbs
//! the headers define inline), and a thin safe layer over what an NVMe/RDMA target
//! uses: the RDMA_CM event channel and identifiers ([`EventChannel`], [`CmId`]), and the
//! verbs objects ([`ProtectionDomain`], [`MemoryRegion`], [`CompletionQueue`]) with
//! posting of work requests on a connection's queue pair.
//!
//! Every object owns its rdma-core handle and releases it on drop. Verbs objects are
//! safe to use from any thread (libibverbs serialises per object), so they are `Send`;
//! the posting calls take `&self` of the identifier whose queue pair they post on.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::ptr::NonNull;

#[allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]
pub mod ffi {
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

    // The shim (src/shim.c): the static inline verbs of the headers.
    unsafe extern "C" {
        pub fn lp_ibv_post_send(
            qp: *mut ibv_qp,
            wr: *mut ibv_send_wr,
            bad_wr: *mut *mut ibv_send_wr,
        ) -> ::std::os::raw::c_int;
        pub fn lp_ibv_post_recv(
            qp: *mut ibv_qp,
            wr: *mut ibv_recv_wr,
            bad_wr: *mut *mut ibv_recv_wr,
        ) -> ::std::os::raw::c_int;
        pub fn lp_ibv_poll_cq(
            cq: *mut ibv_cq,
            num_entries: ::std::os::raw::c_int,
            wc: *mut ibv_wc,
        ) -> ::std::os::raw::c_int;
        pub fn lp_ibv_req_notify_cq(
            cq: *mut ibv_cq,
            solicited_only: ::std::os::raw::c_int,
        ) -> ::std::os::raw::c_int;
        pub fn lp_ibv_reg_mr(
            pd: *mut ibv_pd,
            addr: *mut ::std::os::raw::c_void,
            length: usize,
            access: ::std::os::raw::c_int,
        ) -> *mut ibv_mr;
        pub fn lp_ibv_query_port(
            context: *mut ibv_context,
            port_num: u8,
            port_attr: *mut ibv_port_attr,
        ) -> ::std::os::raw::c_int;
        pub fn lp_ibv_post_srq_recv(
            srq: *mut ibv_srq,
            wr: *mut ibv_recv_wr,
            bad_wr: *mut *mut ibv_recv_wr,
        ) -> ::std::os::raw::c_int;
        pub fn lp_rdma_local_addr(id: *mut rdma_cm_id) -> *mut sockaddr;
        pub fn lp_rdma_peer_addr(id: *mut rdma_cm_id) -> *mut sockaddr;
    }
}

pub use ffi::ibv_wc as WorkCompletion;

/// Errors of the rdma-core calls: the call and the `errno` it left.
#[derive(Debug, thiserror::Error)]
pub enum RdmaError {
    #[error("{call}: {source}")]
    Call {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no RDMA device for this address")]
    NoDevice(&'static str),
}

impl RdmaError {
    fn last(call: &'static str) -> RdmaError {
        RdmaError::Call {
            call,
            source: std::io::Error::last_os_error(),
        }
    }

    /// For verbs that return the error number itself (the posting verbs).
    fn code(call: &'static str, rc: i32) -> RdmaError {
        RdmaError::Call {
            call,
            source: std::io::Error::from_raw_os_error(rc),
        }
    }
}

/// Puts a channel's descriptor (the caller's, open) in non-blocking mode; `call` names
/// the step in the error.
pub(crate) fn set_nonblocking(fd: RawFd, call: &'static str) -> Result<(), RdmaError> {
    // SAFETY: fcntl on an open descriptor the caller's channel owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(RdmaError::last(call));
    }
    Ok(())
}

fn check(call: &'static str, rc: i32) -> Result<(), RdmaError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(RdmaError::last(call))
    }
}

/// A device context librdmacm opened (and keeps open as long as it runs): what a
/// connection's identifier is bound to, from [`CmId::verbs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceContext(NonNull<ffi::ibv_context>);

// SAFETY: a device context is usable from any thread; librdmacm keeps it open while
// any identifier uses it.
unsafe impl Send for DeviceContext {}
// SAFETY: as above.
unsafe impl Sync for DeviceContext {}

impl DeviceContext {
    pub fn as_ptr(&self) -> *mut ffi::ibv_context {
        self.0.as_ptr()
    }
}

/// An RDMA_CM event channel, read without blocking.
pub struct EventChannel(NonNull<ffi::rdma_event_channel>);

// SAFETY: librdmacm's channel is a file descriptor with no thread affinity; reads of it
// is one read(2) of the descriptor, safe from any thread.
unsafe impl Send for EventChannel {}
// SAFETY: as for Send: reading events is a read(2) of the descriptor.
unsafe impl Sync for EventChannel {}

/// What an RDMA_CM event said, copied out before the event is acknowledged (so that no
/// identifier's destruction ever waits for an acknowledgement).
#[derive(Debug, Clone)]
pub struct CmEvent {
    pub kind: ffi::rdma_cm_event_type::Type,
    /// The identifier the event is about (a new one, for a connect request: owned by
    /// the receiver from then on, see [`CmId::from_request`]).
    pub id: *mut ffi::rdma_cm_id,
    /// The listening identifier, for a connect request.
    pub listen_id: *mut ffi::rdma_cm_id,
    pub status: i32,
    pub private_data: Vec<u8>,
    pub responder_resources: u8,
    pub initiator_depth: u8,
}

impl CmEvent {
    /// The event's name as librdmacm spells it.
    pub fn name(&self) -> String {
        event_name(self.kind)
    }
}

/// The name of RDMA_CM event `kind` as librdmacm spells it.
pub fn event_name(kind: u32) -> String {
    // SAFETY: rdma_event_str returns a static NUL-terminated string for any value.
    unsafe { std::ffi::CStr::from_ptr(ffi::rdma_event_str(kind)) }
        .to_string_lossy()
        .into_owned()
}

impl EventChannel {
    /// A new channel, its descriptor set nonblocking.
    pub fn new() -> Result<EventChannel, RdmaError> {
        // SAFETY: no arguments; a null return is the error.
        let ch = unsafe { ffi::rdma_create_event_channel() };
        let ch = NonNull::new(ch).ok_or_else(|| RdmaError::last("rdma_create_event_channel"))?;
        let ch = EventChannel(ch);
        set_nonblocking(ch.fd(), "fcntl(O_NONBLOCK) on the RDMA_CM channel")?;
        Ok(ch)
    }

    pub fn fd(&self) -> RawFd {
        // SAFETY: the channel is valid while self lives.
        unsafe { self.0.as_ref().fd }
    }

    pub fn as_ptr(&self) -> *mut ffi::rdma_event_channel {
        self.0.as_ptr()
    }

    /// The next event, waiting for it at most `timeout` (a client's connection steps).
    pub fn wait_event(&self, timeout: std::time::Duration) -> Result<Option<CmEvent>, RdmaError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.next_event()? {
                return Ok(Some(e));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the channel's descriptor.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        }
    }

    /// The next event, acknowledged; `None` when there is none now.
    pub fn next_event(&self) -> Result<Option<CmEvent>, RdmaError> {
        let mut ev: *mut ffi::rdma_cm_event = std::ptr::null_mut();
        // SAFETY: the channel is valid; `ev` receives an event librdmacm owns until it
        // is acknowledged below.
        let rc = unsafe { ffi::rdma_get_cm_event(self.0.as_ptr(), &mut ev) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(RdmaError::Call {
                call: "rdma_get_cm_event",
                source: e,
            });
        }
        // SAFETY: rdma_get_cm_event succeeded, so `ev` points at a valid event; for
        // connection events `param.conn` is the member in use, and its private data
        // (when not null) is `private_data_len` bytes that live until the ack.
        let out = unsafe {
            let e = &*ev;
            let conn = e.param.conn;
            let private_data = if conn.private_data.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(
                    conn.private_data.cast::<u8>(),
                    usize::from(conn.private_data_len),
                )
                .to_vec()
            };
            CmEvent {
                kind: e.event,
                id: e.id,
                listen_id: e.listen_id,
                status: e.status,
                private_data,
                responder_resources: conn.responder_resources,
                initiator_depth: conn.initiator_depth,
            }
        };
        // SAFETY: `ev` came from rdma_get_cm_event and is acknowledged once.
        unsafe { ffi::rdma_ack_cm_event(ev) };
        Ok(Some(out))
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        // SAFETY: every identifier on the channel is destroyed before it (their owners
        // hold an Arc of the channel's owner).
        unsafe { ffi::rdma_destroy_event_channel(self.0.as_ptr()) }
    }
}

/// An RDMA_CM identifier (a listener, or one connection and its queue pair).
pub struct CmId {
    id: NonNull<ffi::rdma_cm_id>,
    has_qp: bool,
}

// SAFETY: librdmacm identifiers have no thread affinity; the verbs on their queue pair
// are thread-safe, and the identifier is destroyed once, by its owner.
unsafe impl Send for CmId {}

fn sockaddr_of(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            (
                ss,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            (
                ss,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

/// # Safety
/// `sa` is null or points at a valid socket address of its family.
unsafe fn socket_addr(sa: *const ffi::sockaddr) -> Option<SocketAddr> {
    if sa.is_null() {
        return None;
    }
    let sa = sa.cast::<libc::sockaddr>();
    // SAFETY: the caller's promise; the family says which structure it is.
    unsafe {
        match i32::from((*sa).sa_family) {
            libc::AF_INET => {
                let sin = &*sa.cast::<libc::sockaddr_in>();
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
            }
            libc::AF_INET6 => {
                let sin6 = &*sa.cast::<libc::sockaddr_in6>();
                let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::from((ip, u16::from_be(sin6.sin6_port))))
            }
            _ => None,
        }
    }
}

/// Sizes of a connection's queue pair.
#[derive(Debug, Clone, Copy)]
pub struct QpSizes {
    pub send_wr: u32,
    pub recv_wr: u32,
    pub send_sge: u32,
    pub recv_sge: u32,
}

/// How a connection is accepted (the connect exchange's parameters).
#[derive(Debug, Clone, Copy)]
pub struct AcceptParams {
    pub responder_resources: u8,
    pub initiator_depth: u8,
}

impl CmId {
    /// A listening identifier on `addr` (port 0: any free port), events on `ch`.
    pub fn listen(ch: &EventChannel, addr: SocketAddr, backlog: i32) -> Result<CmId, RdmaError> {
        let mut id: *mut ffi::rdma_cm_id = std::ptr::null_mut();
        // SAFETY: the channel is valid; `id` receives a new identifier.
        let rc = unsafe {
            ffi::rdma_create_id(
                ch.as_ptr(),
                &mut id,
                std::ptr::null_mut(),
                ffi::rdma_port_space::RDMA_PS_TCP,
            )
        };
        check("rdma_create_id", rc)?;
        let id = CmId {
            id: NonNull::new(id).ok_or(RdmaError::NoDevice("rdma_create_id"))?,
            has_qp: false,
        };
        let (mut ss, _) = sockaddr_of(addr);
        // SAFETY: the identifier is valid; `ss` holds a socket address of its family.
        let rc = unsafe {
            ffi::rdma_bind_addr(
                id.id.as_ptr(),
                (&mut ss as *mut libc::sockaddr_storage).cast(),
            )
        };
        check("rdma_bind_addr", rc)?;
        // SAFETY: a bound identifier.
        let rc = unsafe { ffi::rdma_listen(id.id.as_ptr(), backlog) };
        check("rdma_listen", rc)?;
        Ok(id)
    }

    /// An identifier for an active (client) connection, events on `ch`: then
    /// [`CmId::resolve_addr`], [`CmId::resolve_route`], a QP, [`CmId::connect`].
    pub fn new(ch: &EventChannel) -> Result<CmId, RdmaError> {
        let mut id: *mut ffi::rdma_cm_id = std::ptr::null_mut();
        // SAFETY: the channel is valid; `id` receives a new identifier.
        let rc = unsafe {
            ffi::rdma_create_id(
                ch.as_ptr(),
                &mut id,
                std::ptr::null_mut(),
                ffi::rdma_port_space::RDMA_PS_TCP,
            )
        };
        check("rdma_create_id", rc)?;
        Ok(CmId {
            id: NonNull::new(id).ok_or(RdmaError::NoDevice("rdma_create_id"))?,
            has_qp: false,
        })
    }

    /// Starts resolving `dst` to a device and port (event ADDR_RESOLVED).
    pub fn resolve_addr(&self, dst: SocketAddr, timeout_ms: i32) -> Result<(), RdmaError> {
        let (mut ss, _) = sockaddr_of(dst);
        // SAFETY: a valid identifier; `ss` holds a socket address of its family, which
        // the call copies.
        let rc = unsafe {
            ffi::rdma_resolve_addr(
                self.id.as_ptr(),
                std::ptr::null_mut(),
                (&mut ss as *mut libc::sockaddr_storage).cast(),
                timeout_ms,
            )
        };
        check("rdma_resolve_addr", rc)
    }

    /// Starts resolving the route (event ROUTE_RESOLVED).
    pub fn resolve_route(&self, timeout_ms: i32) -> Result<(), RdmaError> {
        // SAFETY: an identifier whose address is resolved.
        let rc = unsafe { ffi::rdma_resolve_route(self.id.as_ptr(), timeout_ms) };
        check("rdma_resolve_route", rc)
    }

    /// Connects with `private_data` (event ESTABLISHED, or REJECTED with the peer's
    /// reject data).
    pub fn connect(&self, private_data: &[u8], p: AcceptParams) -> Result<(), RdmaError> {
        let mut param = ffi::rdma_conn_param {
            private_data: private_data.as_ptr().cast(),
            private_data_len: u8::try_from(private_data.len()).unwrap_or(u8::MAX),
            responder_resources: p.responder_resources,
            initiator_depth: p.initiator_depth,
            flow_control: 1,
            retry_count: 7,
            rnr_retry_count: 7,
            ..Default::default()
        };
        // SAFETY: an identifier with a resolved route and a QP; the data is copied.
        let rc = unsafe { ffi::rdma_connect(self.id.as_ptr(), &mut param) };
        check("rdma_connect", rc)
    }

    /// Takes ownership of the new identifier of a connect request.
    ///
    /// # Safety
    /// `id` is the `id` of a connect request event, owned by no one else, destroyed only
    /// by the returned value.
    pub unsafe fn from_request(id: *mut ffi::rdma_cm_id) -> Option<CmId> {
        NonNull::new(id).map(|id| CmId { id, has_qp: false })
    }

    pub fn as_ptr(&self) -> *mut ffi::rdma_cm_id {
        self.id.as_ptr()
    }

    /// The device context the identifier is bound to (none for a wildcard listener).
    pub fn verbs(&self) -> Option<DeviceContext> {
        // SAFETY: the identifier is valid while self lives.
        NonNull::new(unsafe { self.id.as_ref().verbs }).map(DeviceContext)
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        // SAFETY: the identifier is valid; the shim returns its source address.
        unsafe { socket_addr(ffi::lp_rdma_local_addr(self.id.as_ptr())) }
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        // SAFETY: the identifier is valid; the shim returns its destination address.
        unsafe { socket_addr(ffi::lp_rdma_peer_addr(self.id.as_ptr())) }
    }

    /// A reliable-connected queue pair on the identifier, both queues completing on `cq`.
    pub fn create_qp(
        &mut self,
        pd: &ProtectionDomain,
        cq: &CompletionQueue,
        sizes: QpSizes,
    ) -> Result<(), RdmaError> {
        self.create_qp_srq(pd, cq, sizes, None)
    }

    /// As [`CmId::create_qp`]; with `srq`, the queue pair takes its receives from that
    /// shared receive queue (which must outlive it; `sizes.recv_wr` is then unused), and
    /// still completes them on `cq`.
    pub fn create_qp_srq(
        &mut self,
        pd: &ProtectionDomain,
        cq: &CompletionQueue,
        sizes: QpSizes,
        srq: Option<&SharedReceiveQueue>,
    ) -> Result<(), RdmaError> {
        let mut attr = ffi::ibv_qp_init_attr {
            srq: srq.map_or(std::ptr::null_mut(), |s| s.srq.as_ptr()),
            send_cq: cq.0.as_ptr(),
            recv_cq: cq.0.as_ptr(),
            cap: ffi::ibv_qp_cap {
                max_send_wr: sizes.send_wr,
                max_recv_wr: if srq.is_some() { 0 } else { sizes.recv_wr },
                max_send_sge: sizes.send_sge,
                max_recv_sge: sizes.recv_sge,
                max_inline_data: 0,
            },
            qp_type: ffi::ibv_qp_type::IBV_QPT_RC,
            ..Default::default()
        };
        // SAFETY: identifier, PD and CQ are valid; the QP is destroyed in drop, before
        // the CQ (the owner drops this identifier first).
        let rc = unsafe { ffi::rdma_create_qp(self.id.as_ptr(), pd.0.as_ptr(), &mut attr) };
        check("rdma_create_qp", rc)?;
        self.has_qp = true;
        Ok(())
    }

    pub fn accept(&self, private_data: &[u8], p: AcceptParams) -> Result<(), RdmaError> {
        let mut param = ffi::rdma_conn_param {
            private_data: private_data.as_ptr().cast(),
            private_data_len: u8::try_from(private_data.len()).unwrap_or(u8::MAX),
            responder_resources: p.responder_resources,
            initiator_depth: p.initiator_depth,
            retry_count: 7,
            rnr_retry_count: 7,
            ..Default::default()
        };
        // SAFETY: a connect request's identifier with a QP; the private data outlives
        // the call, which copies it.
        let rc = unsafe { ffi::rdma_accept(self.id.as_ptr(), &mut param) };
        check("rdma_accept", rc)
    }

    pub fn reject(&self, private_data: &[u8]) -> Result<(), RdmaError> {
        // SAFETY: a connect request's identifier; the data is copied by the call.
        let rc = unsafe {
            ffi::rdma_reject(
                self.id.as_ptr(),
                private_data.as_ptr().cast(),
                u8::try_from(private_data.len()).unwrap_or(u8::MAX),
            )
        };
        check("rdma_reject", rc)
    }

    /// Starts the disconnect (the QP moves to error; outstanding work completes with
    /// flush errors). Harmless when already disconnected.
    pub fn disconnect(&self) {
        // SAFETY: a valid identifier; an error (not connected) changes nothing.
        unsafe { ffi::rdma_disconnect(self.id.as_ptr()) };
    }

    /// Destroys the queue pair alone, without a disconnect: the peer hears nothing
    /// until its own work requests find the QP gone (a hostile or crashed host, for
    /// tests). Harmless when there is none.
    pub fn destroy_qp(&mut self) {
        if self.has_qp {
            // SAFETY: the QP was made on this identifier and is destroyed once (the
            // drop skips it from here).
            unsafe { ffi::rdma_destroy_qp(self.id.as_ptr()) };
            self.has_qp = false;
        }
    }

    /// The queue pair, if one was made and not destroyed.
    fn qp(&self, call: &'static str) -> Result<*mut ffi::ibv_qp, RdmaError> {
        if !self.has_qp {
            return Err(RdmaError::code(call, libc::EINVAL));
        }
        // SAFETY: the identifier is valid while self lives.
        Ok(unsafe { self.id.as_ref().qp })
    }

    /// Posts one receive of `len` bytes at `addr` (in `mr`).
    pub fn post_recv(
        &self,
        wr_id: u64,
        addr: *mut u8,
        len: u32,
        lkey: u32,
    ) -> Result<(), RdmaError> {
        let qp = self.qp("ibv_post_recv")?;
        post_one_recv("ibv_post_recv", wr_id, addr, len, lkey, |wr, bad| {
            // SAFETY: the QP is valid (has_qp); the WR and its SGE live through the
            // call, which copies them; the buffer is registered memory the caller keeps
            // for the receive's life.
            unsafe { ffi::lp_ibv_post_recv(qp, wr, bad) }
        })
    }

    /// Posts one send work request: `op` (SEND, SEND_WITH_INV, RDMA_READ, RDMA_WRITE)
    /// of `len` bytes of local memory at `addr` (`lkey`), to or from the host's
    /// `remote` (address, rkey) for RDMA operations; `invalidate` is the rkey a
    /// SEND_WITH_INV invalidates. Signaled when `signaled`.
    #[allow(clippy::too_many_arguments)]
    pub fn post_send(
        &self,
        wr_id: u64,
        op: ffi::ibv_wr_opcode::Type,
        addr: *const u8,
        len: u32,
        lkey: u32,
        remote: (u64, u32),
        invalidate: u32,
        signaled: bool,
    ) -> Result<(), RdmaError> {
        let mut sge = ffi::ibv_sge {
            addr: addr as u64,
            length: len,
            lkey,
        };
        let mut wr = ffi::ibv_send_wr {
            wr_id,
            sg_list: &mut sge,
            num_sge: if len == 0 { 0 } else { 1 },
            opcode: op,
            send_flags: if signaled {
                ffi::ibv_send_flags::IBV_SEND_SIGNALED
            } else {
                0
            },
            ..Default::default()
        };
        wr.__bindgen_anon_1.invalidate_rkey = invalidate;
        wr.wr.rdma = ffi::ibv_send_wr__bindgen_ty_2__bindgen_ty_1 {
            remote_addr: remote.0,
            rkey: remote.1,
        };
        let mut bad = std::ptr::null_mut();
        let qp = self.qp("ibv_post_send")?;
        // SAFETY: as in post_recv; the local memory is registered and kept by the
        // caller until the work request completes (or the QP is destroyed).
        let rc = unsafe { ffi::lp_ibv_post_send(qp, &mut wr, &mut bad) };
        if rc != 0 {
            return Err(RdmaError::code("ibv_post_send", rc));
        }
        Ok(())
    }
}

impl CmId {
    /// Posts one signaled SEND gathered from `parts` (address, length), all in the
    /// region of `lkey`: a command capsule and its in-capsule data without copying
    /// them together. At most as many parts as the QP's `send_sge`, and at most 4.
    pub fn post_send_gather(
        &self,
        wr_id: u64,
        parts: &[(*const u8, u32)],
        lkey: u32,
    ) -> Result<(), RdmaError> {
        let mut sges = [ffi::ibv_sge::default(); 4];
        let n = parts.len().min(sges.len());
        for (s, &(addr, length)) in sges.iter_mut().zip(&parts[..n]) {
            *s = ffi::ibv_sge {
                addr: addr as u64,
                length,
                lkey,
            };
        }
        let mut wr = ffi::ibv_send_wr {
            wr_id,
            sg_list: sges.as_mut_ptr(),
            num_sge: n as i32,
            opcode: ffi::ibv_wr_opcode::IBV_WR_SEND,
            send_flags: ffi::ibv_send_flags::IBV_SEND_SIGNALED,
            ..Default::default()
        };
        let mut bad = std::ptr::null_mut();
        let qp = self.qp("ibv_post_send")?;
        // SAFETY: as in post_send: the QP is valid, the WR and its SGEs live through
        // the call, which copies them; the memory is registered and kept by the caller
        // until the work request completes.
        let rc = unsafe { ffi::lp_ibv_post_send(qp, &mut wr, &mut bad) };
        if rc != 0 {
            return Err(RdmaError::code("ibv_post_send", rc));
        }
        Ok(())
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        // SAFETY: the identifier (and its QP, if made) is destroyed once, here; its
        // events were acknowledged as they were read (EventChannel::next_event), so
        // rdma_destroy_id does not wait.
        unsafe {
            if self.has_qp {
                ffi::rdma_destroy_qp(self.id.as_ptr());
            }
            ffi::rdma_destroy_id(self.id.as_ptr());
        }
    }
}

mod verbs;
use verbs::post_one_recv;
pub use verbs::{
    CompChannel, CompletionQueue, DeviceLimits, MemoryRegion, ProtectionDomain, SharedReceiveQueue,
};
