//! The byte stream under a connection: a TCP socket in production, bytes from memory
//! in tests (fed split and coalesced in every way).

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::TcpStream;

use crate::offload::Placement;

/// What the framing reads from and writes to. The framing only calls these; it never
/// opens, configures or polls a socket itself.
pub trait Stream {
    /// Like `Read::read`: `Ok(0)` is end of stream, `WouldBlock` means nothing yet.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Like `Read::read_vectored`: fills the buffers in order. The default reads into
    /// the first non-empty one only.
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        match bufs.iter_mut().find(|b| !b.is_empty()) {
            Some(b) => self.read(b),
            None => Ok(0),
        }
    }

    /// Like `Write::write_vectored` (one `writev`).
    fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Input is waiting above the socket (decrypted and not yet read, or a handshake
    /// that must be driven again), which the socket's readiness does not show: the
    /// owner reads again without waiting for it.
    #[inline]
    fn buffered(&self) -> bool {
        false
    }

    /// How a read straight into a request's buffer gets the bytes there (counted by the
    /// receiver per such read): `recv(2)` for a kernel socket, the default.
    #[inline]
    fn placement(&self) -> Placement {
        Placement::Recv
    }
}

impl Stream for TcpStream {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(self, buf)
    }
    #[inline]
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        Read::read_vectored(self, bufs)
    }
    #[inline]
    fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        Write::write_vectored(self, iov)
    }
}
