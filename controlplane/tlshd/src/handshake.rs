//! One handshake request: accept it, run the TLS 1.3 client handshake with the PSK the
//! kernel names, hand the record layer to the kernel (kTLS), report `DONE`.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightpool_tcp_framing::tls::{client_context, Psk, Switch, TlsStream};
use lightpool_tcp_framing::Stream;

use crate::keys;
use crate::netlink::{self, Accepted, Genl, Message};

/// The wait when the kernel names none (ktls-utils waits as long).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a handshake failed: the errno the kernel is told and the reason in words.
#[derive(Debug)]
pub struct Failure {
    pub errno: i32,
    pub why: String,
}

impl Failure {
    fn new(errno: i32, why: impl Into<String>) -> Failure {
        Failure {
            errno,
            why: why.into(),
        }
    }
}

/// The errno's name, for the log (the system's text for one not sent here).
pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EACCES => "EACCES",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ENOKEY => "ENOKEY",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EINVAL => "EINVAL",
        libc::EKEYREJECTED => "EKEYREJECTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::EIO => "EIO",
        _ => return io::Error::from_raw_os_error(e).to_string(),
    };
    name.to_string()
}

/// What a successful handshake used.
#[derive(Debug)]
struct Done {
    serial: i32,
    identity: String,
    suite: &'static str,
}

/// Accept one pending request (a `READY` announced it) and serve it to its end. A
/// request another agent took first is no error.
pub fn accept_and_serve(family: u16) {
    let mut nl = match Genl::open() {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "cannot open a netlink socket for ACCEPT");
            return;
        }
    };
    let seq = nl.next_seq();
    let got = nl.request(&netlink::accept(family, seq), seq, |m| match m {
        Message::Genl { cmd, attrs, .. } if *cmd == netlink::HANDSHAKE_CMD_ACCEPT => {
            Some(netlink::parse_accept(attrs))
        }
        _ => None,
    });
    match got {
        Ok(a) => serve(nl, family, a),
        Err(e) => tracing::debug!(error = %e, "ACCEPT: no request for us"),
    }
}

fn serve(mut nl: Genl, family: u16, a: Accepted) {
    let Some(fd) = a.sockfd.filter(|&fd| fd >= 0) else {
        tracing::warn!(?a, "ACCEPT answer without a socket: nothing to do");
        return;
    };
    // SAFETY: the kernel installed `fd` in this process for this request; nothing else
    // owns it. It stays open until DONE was sent (the kernel finds the request by it).
    let tcp = Arc::new(TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd) }));
    let peer = a
        .peername
        .clone()
        .filter(|p| !p.is_empty())
        .or_else(|| tcp.peer_addr().ok().map(|p| p.to_string()))
        .unwrap_or_else(|| "?".into());
    let t0 = Instant::now();
    let outcome = handshake(&tcp, &a);
    let (status, remote): (u32, Vec<i32>) = match &outcome {
        Ok(d) => {
            tracing::info!(
                peer,
                identity = d.identity,
                suite = d.suite,
                key = format!("{:08x}", d.serial),
                record_layer = "kernel",
                ms = t0.elapsed().as_millis() as u64,
                "TLS handshake done"
            );
            (0, vec![d.serial])
        }
        Err(f) => {
            tracing::warn!(
                peer,
                status = errno_name(f.errno),
                reason = f.why,
                "TLS handshake failed"
            );
            (f.errno as u32, Vec::new())
        }
    };
    if let Err(e) = send_done(&mut nl, family, status, fd, &remote) {
        tracing::error!(peer, error = %e, "DONE refused by the kernel");
    }
    // Our copy of the socket closes here; the kernel keeps its own.
    drop(tcp);
}

fn send_done(nl: &mut Genl, family: u16, status: u32, fd: RawFd, remote: &[i32]) -> io::Result<()> {
    let seq = nl.next_seq();
    nl.request(&netlink::done(family, seq, status, fd, remote), seq, |m| {
        matches!(m, Message::Error { errno: 0, .. }).then_some(())
    })
}

/// The PSK to offer: the first of the request's keys that reads as a TLS PSK.
fn psk_of(a: &Accepted) -> Result<(i32, Psk), Failure> {
    if a.peer_identities.is_empty() {
        return Err(Failure::new(
            libc::ENOKEY,
            "the request names no PSK (no peer identity)",
        ));
    }
    if let Some(k) = a.keyring {
        // As tlshd does: possess the request's keyring, for keys only a possessor may
        // read. It stays linked (another request may need it at the same time).
        if let Err(e) = keys::link(k as i32, keys::KEY_SPEC_SESSION_KEYRING) {
            tracing::debug!(keyring = format!("{k:08x}"), error = %e, "cannot link the keyring");
        }
    }
    let mut why = Vec::new();
    for &serial in &a.peer_identities {
        match read_psk(serial) {
            Ok(p) => return Ok((serial, p)),
            Err(e) => why.push(format!("key {serial:08x}: {e}")),
        }
    }
    Err(Failure::new(libc::ENOKEY, why.join("; ")))
}

fn read_psk(serial: i32) -> Result<Psk, String> {
    let d = keys::describe(serial).map_err(|e| format!("cannot describe it ({e})"))?;
    let d = keys::parse_description(&d).ok_or_else(|| format!("odd description {d:?}"))?;
    if d.key_type != "psk" {
        return Err(format!("a key of type {:?}, not psk", d.key_type));
    }
    let id = keys::parse_identity(&d.description)?;
    let key = keys::read(serial).map_err(|e| format!("cannot read it ({e})"))?;
    if key.len() != id.key_len() {
        return Err(format!(
            "{} bytes, the identity's hash takes {}",
            key.len(),
            id.key_len()
        ));
    }
    Ok(Psk {
        identity: d.description.into_bytes(),
        key: key.to_vec(),
        suite: id.suite(),
    })
}

fn handshake(tcp: &Arc<TcpStream>, a: &Accepted) -> Result<Done, Failure> {
    supported(a)?;
    let (serial, psk) = psk_of(a)?;
    let identity = String::from_utf8_lossy(&psk.identity).into_owned();
    let fail =
        |errno: i32, why: String| Failure::new(errno, format!("identity {identity:?}: {why}"));
    let timeout = match a.timeout_ms {
        Some(ms) if ms > 0 => Duration::from_millis(ms.into()),
        _ => DEFAULT_TIMEOUT,
    };
    let deadline = Instant::now() + timeout;
    let ctx = client_context(psk.suite).map_err(|e| fail(libc::EIO, e.to_string()))?;
    let mut t =
        TlsStream::connect(&ctx, tcp.clone(), psk).map_err(|e| fail(libc::EIO, e.to_string()))?;
    t.prepare_kernel()
        .map_err(|e| fail(libc::EIO, e.to_string()))?;
    let flags = Nonblocking::set(tcp.as_raw_fd()).map_err(|e| fail(libc::EIO, e.to_string()))?;
    loop {
        match t.handshake() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(fail(libc::EACCES, e.to_string())),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(fail(
                libc::ETIMEDOUT,
                format!("the TLS handshake did not finish in {timeout:?}"),
            ));
        }
        let events = if t.buffered() {
            libc::POLLIN | libc::POLLOUT
        } else {
            libc::POLLIN
        };
        wait(tcp.as_raw_fd(), events, left);
    }
    drop(flags);
    let suite = t.suite().unwrap_or("?");
    match t.to_kernel(true) {
        Ok(Switch::Kernel(_)) => Ok(Done {
            serial,
            identity,
            suite,
        }),
        Ok(Switch::Software(why)) => Err(fail(
            libc::EOPNOTSUPP,
            format!("the kernel did not take the record layer (kTLS): {why}"),
        )),
        Err(e) => Err(fail(e.raw_os_error().unwrap_or(libc::EIO), e.to_string())),
    }
}

/// Whether the request is one this agent does: the client end, with a PSK.
fn supported(a: &Accepted) -> Result<(), Failure> {
    use netlink::{
        HANDSHAKE_AUTH_PSK as PSK, HANDSHAKE_AUTH_UNAUTH as UNAUTH, HANDSHAKE_AUTH_X509 as X509,
        HANDSHAKE_MSG_TYPE_CLIENTHELLO as CLIENT, HANDSHAKE_MSG_TYPE_SERVERHELLO as SERVER,
    };
    let (errno, why) = match (a.message_type, a.auth_mode) {
        (Some(CLIENT), Some(PSK)) => return Ok(()),
        (Some(SERVER), _) => (libc::EOPNOTSUPP, "server handshakes (ServerHello) are not implemented: lightpool-tlshd is the client end only".to_string()),
        (Some(CLIENT), Some(X509)) => (libc::EOPNOTSUPP, "x509 (certificate) handshakes are not implemented: lightpool-tlshd does PSK handshakes only".to_string()),
        (Some(CLIENT), Some(UNAUTH)) => (libc::EOPNOTSUPP, "unauthenticated handshakes are not implemented: lightpool-tlshd does PSK handshakes only".to_string()),
        (t, m) => (libc::EINVAL, format!("unknown handshake message type {t:?} or authentication mode {m:?}")),
    };
    Err(Failure::new(errno, why))
}

/// poll(2) on one descriptor, at most `left`.
fn wait(fd: RawFd, events: libc::c_short, left: Duration) {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = left.as_millis().clamp(1, 1000) as libc::c_int;
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) };
}

/// O_NONBLOCK on the socket for the handshake, the kernel's flags back after it.
struct Nonblocking {
    fd: RawFd,
    flags: libc::c_int,
}

impl Nonblocking {
    fn set(fd: RawFd) -> io::Result<Nonblocking> {
        // SAFETY: fcntl on a descriptor this process holds; integers only.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Nonblocking { fd, flags })
    }
}

impl Drop for Nonblocking {
    fn drop(&mut self) {
        // SAFETY: as in `set`; the descriptor outlives this guard.
        unsafe { libc::fcntl(self.fd, libc::F_SETFL, self.flags) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(t: u32, m: u32) -> Accepted {
        Accepted {
            message_type: Some(t),
            auth_mode: Some(m),
            ..Accepted::default()
        }
    }

    #[test]
    fn only_psk_client_handshakes_are_done() {
        assert!(supported(&req(1, 2)).is_ok());
        for (t, m, errno, says) in [
            (1, 3, libc::EOPNOTSUPP, "x509"),
            (1, 1, libc::EOPNOTSUPP, "unauthenticated"),
            (2, 2, libc::EOPNOTSUPP, "server"),
            (1, 9, libc::EINVAL, "unknown"),
            (0, 2, libc::EINVAL, "unknown"),
        ] {
            let f = supported(&req(t, m)).unwrap_err();
            assert_eq!(f.errno, errno, "{t} {m}");
            assert!(f.why.contains(says), "{t} {m}: {}", f.why);
        }
        let none = Accepted::default();
        assert_eq!(supported(&none).unwrap_err().errno, libc::EINVAL);
    }

    #[test]
    fn a_request_without_keys_is_enokey() {
        let f = psk_of(&req(1, 2)).unwrap_err();
        assert_eq!(f.errno, libc::ENOKEY);
        assert_eq!(errno_name(f.errno), "ENOKEY");
        assert_eq!(errno_name(libc::EACCES), "EACCES");
        assert_eq!(errno_name(libc::EIO), "EIO");
        assert!(errno_name(libc::ENOENT).contains("No such file"));
    }
}
