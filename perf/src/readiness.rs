//! Which sockets have something to read, asked of epoll without blocking.
//!
//! A busy-polling loop that calls `recv` on every socket each pass mostly gets
//! EAGAIN, and each of those calls takes the socket lock that the peer's loopback
//! delivery needs at that very moment; `epoll_wait` with a zero timeout looks at the
//! ready list instead and leaves the sockets alone (SPDK's posix sock groups do the
//! same). Level-triggered: a socket stays ready until it is drained.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An epoll set of sockets, each with a caller-chosen token.
pub struct Readiness {
    ep: OwnedFd,
    events: Vec<libc::epoll_event>,
    n: usize,
}

impl Readiness {
    /// A set expecting about `capacity` sockets.
    pub fn new(capacity: usize) -> io::Result<Readiness> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is an fd we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by epoll_create1 and is owned by nobody else.
        let ep = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Readiness {
            ep,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
            n: 0,
        })
    }

    /// Watches `fd` for input (and errors and hang-ups); `token` comes back with it.
    pub fn add(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token,
        };
        // SAFETY: `ev` is a live local the kernel reads; both fds are open.
        let rc = unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        if self.events.len() < 64 {
            self.events.push(libc::epoll_event { events: 0, u64: 0 });
        }
        Ok(())
    }

    /// Collects the ready sockets without blocking; see [`Readiness::token`].
    pub fn poll(&mut self) -> io::Result<usize> {
        self.wait(0)
    }

    /// Collects the ready sockets, waiting up to `timeout_ms` for the first.
    pub fn wait(&mut self, timeout_ms: i32) -> io::Result<usize> {
        let cap = i32::try_from(self.events.len()).unwrap_or(i32::MAX);
        // SAFETY: the kernel writes at most `cap` events into `self.events`, which
        // holds that many.
        let n = unsafe {
            libc::epoll_wait(
                self.ep.as_raw_fd(),
                self.events.as_mut_ptr(),
                cap,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            self.n = 0;
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        self.n = n as usize;
        Ok(self.n)
    }

    /// The token of ready socket `i` of the last poll.
    pub fn token(&self, i: usize) -> u64 {
        let ev = self.events[i];
        ev.u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn reports_only_sockets_with_input() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (b, _) = l.accept().expect("accept");
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (d, _) = l.accept().expect("accept");
        let mut r = Readiness::new(2).expect("epoll");
        r.add(b.as_raw_fd(), 7).expect("add");
        r.add(d.as_raw_fd(), 9).expect("add");
        assert_eq!(r.poll().expect("poll"), 0);
        (&c).write_all(b"x").expect("write");
        assert_eq!(r.wait(1000).expect("wait"), 1);
        assert_eq!(r.token(0), 9);
        drop(a);
        assert_eq!(r.wait(1000).expect("wait"), 2, "a hang-up is reported too");
    }
}
