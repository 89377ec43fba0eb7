//! One connection of the userspace stack, read and written like a socket.

use std::cell::RefCell;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::rc::Rc;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

use crate::stack::Shared;

/// A TCP connection of a [`crate::Stack`]. Reads take what the stack has received;
/// writes copy into the socket's send buffer and send at once. Dropping it closes the
/// connection (FIN) and frees the socket once the close has finished.
pub struct TcpConn {
    stack: Rc<RefCell<dyn Shared>>,
    handle: SocketHandle,
}

impl std::fmt::Debug for TcpConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TcpConn({:?})", self.peer_addr())
    }
}

fn addr(e: smoltcp::wire::IpEndpoint) -> SocketAddr {
    SocketAddr::new(e.addr.into(), e.port)
}

impl TcpConn {
    pub(crate) fn new(stack: Rc<RefCell<dyn Shared>>, handle: SocketHandle) -> Self {
        TcpConn { stack, handle }
    }

    fn with<R>(&self, f: impl FnOnce(&mut tcp::Socket<'static>) -> R) -> R {
        f(self.stack.borrow_mut().sockets().get_mut(self.handle))
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.with(|s| s.remote_endpoint().map(addr))
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.with(|s| s.local_endpoint().map(addr))
    }

    pub fn state(&self) -> tcp::State {
        self.with(|s| s.state())
    }

    /// Bytes are waiting, or the peer has closed (a read returns 0): a read will not
    /// block.
    pub fn readable(&self) -> bool {
        self.with(|s| s.can_recv() || !s.may_recv())
    }

    /// The send buffer has room, or the connection can no longer send (a write
    /// fails at once).
    pub fn writable(&self) -> bool {
        self.with(|s| s.can_send() || !s.may_send())
    }

    /// Bytes written and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.with(|s| s.send_queue())
    }

    /// Reset the connection (RST) instead of closing it.
    pub fn abort(&self) {
        self.with(|s| s.abort());
        self.stack.borrow_mut().poll();
    }

    /// Close the sending side (FIN); reads go on.
    pub fn shutdown_write(&self) {
        self.with(|s| s.close());
        self.stack.borrow_mut().poll();
    }
}

/// Move bytes buffer by buffer with `step` (bytes moved, buffer length), stopping at
/// the first buffer not moved whole: the total.
fn across<T>(
    bufs: impl IntoIterator<Item = T>,
    mut step: impl FnMut(T) -> Option<(usize, usize)>,
) -> usize {
    let mut n = 0;
    for b in bufs {
        match step(b) {
            Some((k, len)) => {
                n += k;
                if k < len {
                    break;
                }
            }
            None => break,
        }
    }
    n
}

fn ended(s: &tcp::Socket<'_>) -> io::Error {
    if s.state() == tcp::State::Closed {
        io::Error::from(io::ErrorKind::ConnectionReset)
    } else {
        io::Error::from(io::ErrorKind::BrokenPipe)
    }
}

impl lightpool_tcp_framing::Stream for TcpConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_vectored(&mut [IoSliceMut::new(buf)])
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        let n = self.with(|s| {
            let n = across(bufs.iter_mut().filter(|b| !b.is_empty()), |b| {
                let len = b.len();
                s.recv_slice(b).ok().map(|k| (k, len))
            });
            if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
                if s.may_recv() {
                    return Err(io::Error::from(io::ErrorKind::WouldBlock));
                }
                // The peer's FIN (an orderly end) or a reset.
                return Ok(0);
            }
            Ok(n)
        })?;
        if n > 0 {
            // The window opened: tell the peer now rather than at the next frame.
            self.stack.borrow_mut().poll();
        }
        Ok(n)
    }

    fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = self.with(|s| {
            if !s.may_send() {
                return Err(ended(s));
            }
            let n = across(iov, |b| s.send_slice(b).ok().map(|k| (k, b.len())));
            if n == 0 && iov.iter().any(|b| !b.is_empty()) {
                return Err(io::Error::from(io::ErrorKind::WouldBlock));
            }
            Ok(n)
        })?;
        self.stack.borrow_mut().poll();
        Ok(n)
    }

    /// A read straight into a request's buffer copies out of smoltcp's socket ring.
    #[inline]
    fn placement(&self) -> lightpool_tcp_framing::Placement {
        lightpool_tcp_framing::Placement::StackRing
    }
}

impl Drop for TcpConn {
    fn drop(&mut self) {
        self.stack.borrow_mut().release(self.handle);
    }
}
