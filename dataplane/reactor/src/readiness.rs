//! Which sockets have something to read, asked of epoll without blocking: the
//! readiness set of a poller that owns many sockets (the NVMe/TCP transport on a
//! reactor, lightpool-perf's workers and its limit server).
//!
//! A busy-polling loop that calls `recv` on every socket each pass mostly gets EAGAIN,
//! and each of those calls takes the socket lock that the peer's (loopback) delivery
//! needs at that very moment; `epoll_wait` with a zero timeout looks at the ready list
//! instead and leaves the sockets alone (SPDK's posix sock groups do the same).
//! Level-triggered: a socket stays ready until it is drained.
//!
//! Why a set of its own rather than the reactor's epoll set: that one is for sleeping
//! (it holds the mailbox eventfd and the fds pollers registered to be woken by, and it
//! is waited on only when every poller is idle). This one is per poller and is asked
//! every pass. Keeping them apart means a reactor without sockets (DPDK ports, RDMA
//! completion queues polled directly) pays nothing for it: no set, no system call.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Events collected per poll at most; the rest stay ready for the next poll.
pub const MAX_READY: usize = 64;

/// An epoll set of sockets, each with a caller-chosen token.
pub struct Readiness {
    ep: OwnedFd,
    events: Vec<libc::epoll_event>,
    n: usize,
}

impl Readiness {
    /// A set expecting about `capacity` sockets (events collected per poll: that many,
    /// up to [`MAX_READY`]; the buffer grows as sockets are added).
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
            events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.clamp(1, MAX_READY)],
            n: 0,
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token,
        };
        // SAFETY: `ev` is a live local the kernel only reads; the epoll fd is open.
        if unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), op, fd, &mut ev) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watches `fd` for input (and errors and hang-ups); `token` comes back with it.
    pub fn add(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token)?;
        if self.events.len() < MAX_READY {
            self.events.push(libc::epoll_event { events: 0, u64: 0 });
        }
        Ok(())
    }

    /// Stops watching `fd`. Closing a socket is not enough when it may have been
    /// duplicated (a hot upgrade holds copies): the set watches the open file, not the
    /// descriptor. Not watched (any more) is fine.
    pub fn remove(&mut self, fd: RawFd) {
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0);
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

    /// The tokens of the last poll.
    pub fn tokens(&self) -> impl Iterator<Item = u64> + '_ {
        self.events[..self.n].iter().map(|ev| ev.u64)
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
        assert_eq!(r.tokens().collect::<Vec<_>>(), vec![9]);
        drop(a);
        assert_eq!(r.wait(1000).expect("wait"), 2, "a hang-up is reported too");
        let mut got: Vec<u64> = r.tokens().collect();
        got.sort_unstable();
        assert_eq!(got, vec![7, 9]);
    }

    #[test]
    fn a_removed_socket_is_not_reported_even_if_duplicated() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (b, _) = l.accept().expect("accept");
        let copy = b.try_clone().expect("dup");
        let mut r = Readiness::new(1).expect("epoll");
        r.add(b.as_raw_fd(), 3).expect("add");
        r.remove(b.as_raw_fd());
        drop(b);
        (&a).write_all(b"x").expect("write");
        assert_eq!(r.wait(100).expect("wait"), 0);
        drop(copy);
        // Removing what is not there is harmless.
        r.remove(12345);
    }
}
