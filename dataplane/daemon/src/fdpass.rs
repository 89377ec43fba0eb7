//! Passing file descriptors over a Unix socket (SCM_RIGHTS), and line-oriented messages
//! beside them.

use std::io::{self, BufRead, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// `writeln!` with one `write_all`: the line goes out in one piece (`writeln!` on an
/// unbuffered socket may write its parts separately, and a reader may see half a line).
macro_rules! send_line {
    ($w:expr, $($arg:tt)*) => {{
        let mut line = format!($($arg)*);
        line.push('\n');
        std::io::Write::write_all(&mut $w, line.as_bytes())
    }};
}

/// Descriptors per message: the kernel's SCM_MAX_FD is 253.
pub const FDS_PER_MESSAGE: usize = 250;

/// Send `payload` with `fds` attached (at most FDS_PER_MESSAGE).
pub fn send_with_fds(sock: &UnixStream, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    assert!(
        fds.len() <= FDS_PER_MESSAGE,
        "too many descriptors for one message"
    );
    assert!(
        !payload.is_empty(),
        "a message carrying descriptors needs at least one byte"
    );
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut cbuf = vec![0u8; space.max(1)];
    // SAFETY: msghdr is plain data; every pointer we set below stays valid for the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` bytes, enough for one header carrying
        // `fds.len()` descriptors (CMSG_SPACE above); CMSG_FIRSTHDR is non-null then.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), fd_bytes);
        }
    }
    let mut sent = 0;
    while sent == 0 {
        // SAFETY: msg describes valid buffers (payload, control) for the whole call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        sent = n as usize;
    }
    if sent < payload.len() {
        // The descriptors went with the first byte; the rest is plain data.
        (&*sock).write_all(&payload[sent..])?;
    }
    Ok(())
}

/// Receive one message of at most `buf.len()` bytes and the descriptors that came with
/// it. Returns 0 bytes at end of stream.
pub fn recv_with_fds(sock: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((FDS_PER_MESSAGE * std::mem::size_of::<RawFd>()) as u32) }
        as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: plain data, pointers set below stay valid for the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: msg describes valid buffers for the whole call; MSG_CMSG_CLOEXEC keeps
        // the received descriptors from leaking into children.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        break n as usize;
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control buffer the kernel filled, with the CMSG_* macros;
    // every SCM_RIGHTS descriptor received is now ours and wrapped exactly once.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = len / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let mut fd: RawFd = 0;
                    std::ptr::copy_nonoverlapping(
                        data.add(i * std::mem::size_of::<RawFd>()),
                        (&mut fd as *mut RawFd).cast::<u8>(),
                        std::mem::size_of::<RawFd>(),
                    );
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptors were truncated in transit"));
    }
    Ok((n, fds))
}

/// Read one line (without its newline) from a buffered reader; None at end of stream.
pub fn read_line(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut s = String::new();
    if r.read_line(&mut s)? == 0 {
        return Ok(None);
    }
    Ok(Some(s.trim_end().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek};

    #[test]
    fn descriptors_cross_a_socket_pair() {
        let (a, b) = UnixStream::pair().expect("pair");
        let mut f = tempfile_like();
        f.write_all(b"through the socket").expect("write");
        send_with_fds(&a, b"STATE 1\n", &[f.as_raw_fd()]).expect("send");
        let mut buf = [0u8; 64];
        let (n, fds) = recv_with_fds(&b, &mut buf).expect("recv");
        assert_eq!(&buf[..n], b"STATE 1\n");
        assert_eq!(fds.len(), 1);
        let mut g = std::fs::File::from(fds.into_iter().next().expect("one fd"));
        g.rewind().expect("seek");
        let mut s = String::new();
        g.read_to_string(&mut s).expect("read");
        assert_eq!(s, "through the socket");
    }

    fn tempfile_like() -> std::fs::File {
        let name = std::ffi::CString::new("fdpass-test").expect("no NUL");
        // SAFETY: memfd_create reads a NUL-terminated name and returns a new descriptor.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fd is new and ours.
        unsafe { std::fs::File::from_raw_fd(fd) }
    }
}
