//! Typed errors of the DPDK engine; each says what to change.

use std::ffi::CStr;

use lightpool_dpdk_sys::ffi;

/// What went wrong, with DPDK's reason and a hint for the operator.
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    #[error("EAL init failed ({reason}); {hint}")]
    EalInit {
        errno: i32,
        reason: String,
        hint: &'static str,
    },
    #[error(
        "EAL was already started in this process, successfully or not (DPDK starts it only \
         once per process): share the first Eal, or start another process"
    )]
    EalAlreadyInitialised,
    #[error("EAL argument {0:?} contains a NUL byte: remove it")]
    BadArgument(String),
    #[error("mempool {name:?}: {reason}; {hint}")]
    Mempool {
        name: String,
        errno: i32,
        reason: String,
        hint: &'static str,
    },
    #[error(
        "no DPDK port named {0:?}: create it with --vdev (net_tap0,iface=..., \
         net_af_packet0,iface=..., net_ring0) or check the name"
    )]
    NoSuchPort(String),
    #[error(
        "port {port}: {asked} queue pairs asked, the device has {max}; ask for fewer, or \
         give the device more (net_af_packet: qpairs=N in its --vdev; net_tap has up to 16; net_ring up to 16)"
    )]
    TooManyQueues { port: String, asked: u16, max: u16 },
    #[error("port {port}: {call} failed ({reason}); {hint}")]
    Port {
        port: String,
        call: &'static str,
        errno: i32,
        reason: String,
        hint: &'static str,
    },
    #[error(
        "rte_thread_register failed ({reason}): all {max} EAL lcore ids are taken; \
         register fewer threads or start EAL with fewer --lcores"
    )]
    ThreadRegister { reason: String, max: u32 },
    #[error(
        "mbuf data room of {0} bytes is too large: at most 65535 bytes including the \
         128-byte headroom"
    )]
    DataRoom(usize),
}

/// DPDK's text for an errno (its own codes and the system's).
pub(crate) fn strerror(errno: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated
    // string, valid until the next call on this thread; it is copied at once.
    let p = unsafe { ffi::rte_strerror(errno) };
    if p.is_null() {
        return format!("errno {errno}");
    }
    // SAFETY: non-null, NUL-terminated (see above).
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    format!("{s}, errno {errno}")
}

/// `rte_errno` of this thread.
pub(crate) fn rte_errno() -> i32 {
    // SAFETY: reads a per-thread variable; no arguments.
    unsafe { ffi::lp_rte_errno() }
}

/// A port call's failure from its negative return value (`-errno`).
pub(crate) fn port_error(port: &str, call: &'static str, ret: i32) -> DpdkError {
    let errno = -ret;
    let hint = match errno {
        libc::EINVAL => {
            "the device refused the configuration: fewer queues or descriptors, or no RSS"
        }
        libc::ENOMEM => "not enough memory: a larger mempool (more mbufs) or more EAL memory (-m)",
        libc::ENODEV => "the port is gone: check its --vdev",
        libc::ENOTSUP => "the driver does not support this call",
        libc::EIO => "the device was removed",
        libc::EBUSY => "stop the port first",
        _ => "see EAL's log above",
    };
    DpdkError::Port {
        port: port.to_string(),
        call,
        errno,
        reason: strerror(errno),
        hint,
    }
}
