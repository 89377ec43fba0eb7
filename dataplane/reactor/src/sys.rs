//! Thin wrappers over the two kernel objects a reactor sleeps on: an epoll instance and
//! the eventfd that mailbox senders write to wake it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Which readiness a registered fd is waited for. Level-triggered: the owner of the fd
/// must consume the readiness (read the socket, drain the eventfd) or the reactor will
/// not be able to sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interest {
    pub readable: bool,
    pub writable: bool,
}

impl Interest {
    pub const READABLE: Interest = Interest {
        readable: true,
        writable: false,
    };
    pub const WRITABLE: Interest = Interest {
        readable: false,
        writable: true,
    };
    pub const BOTH: Interest = Interest {
        readable: true,
        writable: true,
    };

    fn events(self) -> u32 {
        let mut ev = 0;
        if self.readable {
            ev |= libc::EPOLLIN as u32 | libc::EPOLLRDHUP as u32;
        }
        if self.writable {
            ev |= libc::EPOLLOUT as u32;
        }
        ev
    }
}

/// Creates a non-blocking, close-on-exec eventfd.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; a non-negative return is a fresh fd we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd's counter. EAGAIN (counter saturated) still leaves it readable,
/// which is all a wake-up needs, so errors are ignored.
pub(crate) fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local u64; `fd` is an eventfd kept open by the
    // `Shared` that the caller borrows it from.
    let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// Resets an eventfd's counter to zero (non-blocking; nothing to read is fine).
pub(crate) fn eventfd_drain(fd: RawFd) {
    let mut buf: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live local u64; `fd` is an open eventfd.
    let _ = unsafe { libc::read(fd, (&mut buf as *mut u64).cast(), 8) };
}

pub(crate) struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

/// Token of the reactor's own wake-up eventfd in the epoll set.
pub(crate) const WAKE_TOKEN: u64 = u64::MAX;
const MAX_EVENTS: usize = 64;

impl Epoll {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative return is an fd we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            // SAFETY: `fd` was just returned by epoll_create1 and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: Vec::with_capacity(MAX_EVENTS),
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a live local the kernel only reads; the epoll fd is open.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(crate) fn add(&self, fd: RawFd, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, interest.events(), fd as u64)
    }

    pub(crate) fn add_token(&self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, interest.events(), token)
    }

    pub(crate) fn modify(&self, fd: RawFd, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, interest.events(), fd as u64)
    }

    pub(crate) fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits for readiness or `timeout` (None = forever; rounded up to whole
    /// milliseconds so a timer is never woken for early). Returns the tokens that fired
    /// through `seen`.
    pub(crate) fn wait(
        &mut self,
        timeout: Option<Duration>,
        mut seen: impl FnMut(u64),
    ) -> io::Result<usize> {
        let ms: libc::c_int = match timeout {
            None => -1,
            Some(d) => {
                let ms = d.as_nanos().div_ceil(1_000_000);
                libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
            }
        };
        self.events.clear();
        // SAFETY: the kernel writes at most `capacity` entries into the vector's spare
        // capacity, and we set the length to exactly what it reports having written.
        let n = unsafe {
            let n = libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.capacity() as libc::c_int,
                ms,
            );
            if n > 0 {
                self.events.set_len(n as usize);
            }
            n
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(err);
        }
        for ev in &self.events {
            seen(ev.u64);
        }
        Ok(n as usize)
    }
}
