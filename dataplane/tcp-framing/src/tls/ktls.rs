//! kTLS: the record layer handed to the kernel once the handshake is done.
//!
//! OpenSSL runs the handshake; its key log hands over the application traffic secrets
//! (`CLIENT_TRAFFIC_SECRET_0`, `SERVER_TRAFFIC_SECRET_0`), from which the record keys
//! and IVs are derived here (HKDF-Expand-Label, RFC 8446 section 7.3) and given to the
//! kernel: `TCP_ULP "tls"`, then `SOL_TLS` `TLS_TX` and `TLS_RX` with the TLS 1.3
//! crypto info of the suite (sequence numbers 0: no record was sent or received under
//! these keys, the target sends no session tickets). From then on the socket carries
//! plaintext for this process, [`KtlsStream`].
//!
//! Not OpenSSL's own kTLS (`SSL_OP_ENABLE_KTLS`): the OpenSSL 3.0 of Debian bookworm
//! offloads only the sending side of TLS 1.3 (receive came with 3.2), and only under
//! its own socket BIO, not the BIO over a Rust stream that [`super::TlsStream`] runs on.
//!
//! A connection switches only when nothing sits in OpenSSL's buffers: connections that
//! may switch read the handshake without read-ahead (one record at a time), so no
//! record of the peer's beyond its Finished is ever pulled in; should one be there
//! anyway, the connection stays in software ([`Software::Buffered`]).

use std::ffi::c_int;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, OnceLock};

use openssl::ex_data::Index;
use openssl::md::{Md, MdRef};
use openssl::pkey::Id;
use openssl::pkey_ctx::{HkdfMode, PkeyCtx};
use openssl::ssl::{Ssl, SslRef};
use zeroize::{Zeroize, Zeroizing};

use crate::Stream;

// <linux/tls.h>
const SOL_TLS: c_int = 282;
const TLS_TX: c_int = 1;
const TLS_RX: c_int = 2;
const TLS_SET_RECORD_TYPE: c_int = 1;
const TLS_GET_RECORD_TYPE: c_int = 2;
const TLS_1_3_VERSION: u16 = 0x0304;
const TLS_CIPHER_AES_GCM_128: u16 = 51;
const TLS_CIPHER_AES_GCM_256: u16 = 52;

/// TLS record content types (RFC 8446 section 5.1).
const RECORD_ALERT: u8 = 21;
const RECORD_HANDSHAKE: u8 = 22;
const RECORD_APPLICATION_DATA: u8 = 23;

/// `struct tls12_crypto_info_aes_gcm_128` / `_256` (the TLS 1.3 ones too): a key of
/// `K` bytes, the IV's first 4 bytes as `salt`, its last 8 as `iv`.
#[repr(C)]
struct CryptoInfo<const K: usize> {
    version: u16,
    cipher_type: u16,
    iv: [u8; 8],
    key: [u8; K],
    salt: [u8; 4],
    rec_seq: [u8; 8],
}

impl<const K: usize> Drop for CryptoInfo<K> {
    fn drop(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
        self.salt.zeroize();
    }
}

/// HKDF-Expand-Label(secret, label, context, len) of TLS 1.3 (RFC 8446 section 7.1),
/// with the suite's hash `md`.
pub fn hkdf_expand_label(
    md: &MdRef,
    secret: &[u8],
    label: &[u8],
    context: &[u8],
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, openssl::error::ErrorStack> {
    let info = lightpool_spec::tcp::hkdf_label(len, label, context);
    let mut ctx = PkeyCtx::new_id(Id::HKDF)?;
    ctx.derive_init()?;
    ctx.set_hkdf_mode(HkdfMode::EXPAND_ONLY)?;
    ctx.set_hkdf_md(md)?;
    ctx.set_hkdf_key(secret)?;
    ctx.add_hkdf_info(&info)?;
    let mut out = Zeroizing::new(vec![0u8; len]);
    ctx.derive(Some(&mut out))?;
    Ok(out)
}

/// The record key and IV of one direction.
pub struct DirKeys {
    pub key: Zeroizing<Vec<u8>>,
    pub iv: Zeroizing<Vec<u8>>,
}

/// A suite's record cipher as the kernel names it: key length and hash.
fn cipher(suite: &str) -> Option<(usize, u16, &'static MdRef)> {
    match suite {
        "TLS_AES_128_GCM_SHA256" => Some((16, TLS_CIPHER_AES_GCM_128, Md::sha256())),
        "TLS_AES_256_GCM_SHA384" => Some((32, TLS_CIPHER_AES_GCM_256, Md::sha384())),
        _ => None,
    }
}

/// The key and IV of a traffic secret for `suite` (RFC 8446 section 7.3).
pub fn traffic_keys(suite: &str, secret: &[u8]) -> io::Result<DirKeys> {
    let (klen, _, md) = cipher(suite).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!("no kernel TLS cipher for {suite}"),
        )
    })?;
    Ok(DirKeys {
        key: hkdf_expand_label(md, secret, b"key", b"", klen).map_err(io::Error::other)?,
        iv: hkdf_expand_label(md, secret, b"iv", b"", 12).map_err(io::Error::other)?,
    })
}

/// A traffic secret, zeroed when dropped.
pub(super) type Secret = Zeroizing<Vec<u8>>;

/// The application traffic secrets of a connection that may switch, as the key log
/// hands them over (taken, and zeroed, at the switch).
#[derive(Default)]
pub(super) struct Secrets {
    /// Set by `prepare_kernel`: keep what the key log hands over.
    pub(super) wanted: bool,
    client: Option<Zeroizing<Vec<u8>>>,
    server: Option<Zeroizing<Vec<u8>>>,
}

pub(super) fn secrets_index() -> Result<Index<Ssl, Mutex<Secrets>>, openssl::error::ErrorStack> {
    static I: OnceLock<Index<Ssl, Mutex<Secrets>>> = OnceLock::new();
    if let Some(i) = I.get() {
        return Ok(*i);
    }
    let i = Ssl::new_ex_index()?;
    Ok(*I.get_or_init(|| i))
}

/// The key log callback of both contexts: keeps the two application traffic secrets
/// of connections that asked for them ([`super::TlsStream::prepare_kernel`]), ignores
/// everything else.
pub(super) fn keylog(ssl: &SslRef, line: &str) {
    let Ok(i) = secrets_index() else {
        return;
    };
    let Some(slot) = ssl.ex_data(i) else {
        return;
    };
    let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
    if !s.wanted {
        return;
    }
    let mut parts = line.split(' ');
    let (Some(label), Some(_random), Some(hex)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let which = match label {
        "CLIENT_TRAFFIC_SECRET_0" => &mut s.client,
        "SERVER_TRAFFIC_SECRET_0" => &mut s.server,
        _ => return,
    };
    *which = unhex(hex);
}

fn unhex(s: &str) -> Option<Zeroizing<Vec<u8>>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Zeroizing::new(Vec::with_capacity(s.len() / 2));
    for pair in s.as_bytes().chunks(2) {
        let d = |c: u8| (c as char).to_digit(16);
        out.push((d(pair[0])? * 16 + d(pair[1])?) as u8);
    }
    Some(out)
}

impl Secrets {
    /// Both secrets, left in place (tests).
    #[cfg(test)]
    pub(super) fn peek(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        Some((
            self.client.as_ref()?.to_vec(),
            self.server.as_ref()?.to_vec(),
        ))
    }

    /// (ours, the peer's) for the end that `server` says.
    pub(super) fn take(&mut self, server: bool) -> Option<(Secret, Secret)> {
        let (c, s) = (self.client.take()?, self.server.take()?);
        Some(if server { (s, c) } else { (c, s) })
    }
}

/// Whether this kernel has the `tls` TCP ULP, asked once per process: setting it on a
/// new, unconnected TCP socket fails with ENOTCONN where the module is there (or can
/// be loaded), ENOENT where it is not. `Err` says what the kernel answered.
pub fn kernel_tls() -> Result<(), &'static str> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            probe().map_err(|e| format!("no kernel TLS (the tls ULP cannot be set: {e})"))
        })
        .as_ref()
        .map(|_| ())
        .map_err(String::as_str)
}

fn probe() -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is the new socket, owned (and closed) by `_sock` from here on.
    let _sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    match set_ulp(fd) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_ulp(fd: RawFd) -> io::Result<()> {
    let ulp = b"tls";
    // SAFETY: setsockopt(2) reads `ulp.len()` bytes from `ulp`, which lives across the
    // call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_TCP,
            libc::TCP_ULP,
            ulp.as_ptr().cast(),
            ulp.len() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_crypto<const K: usize>(
    fd: RawFd,
    dir: c_int,
    cipher_type: u16,
    k: &DirKeys,
) -> io::Result<()> {
    let mut info = CryptoInfo::<K> {
        version: TLS_1_3_VERSION,
        cipher_type,
        iv: [0; 8],
        key: [0; K],
        salt: [0; 4],
        rec_seq: [0; 8],
    };
    info.key.copy_from_slice(&k.key);
    info.salt.copy_from_slice(&k.iv[..4]);
    info.iv.copy_from_slice(&k.iv[4..12]);
    // SAFETY: setsockopt(2) reads `size_of_val(&info)` bytes of the repr(C) struct the
    // kernel declares, which lives across the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            SOL_TLS,
            dir,
            (&info as *const CryptoInfo<K>).cast(),
            std::mem::size_of_val(&info) as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Why a connection keeps its records in software.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Software {
    /// kTLS is off for it (`ktls = "off"`, `--ktls off`).
    Off,
    /// The kernel has no `tls` ULP (what the probe found).
    NoKernel(String),
    /// Record bytes sat in OpenSSL's buffers when the handshake finished.
    Buffered,
    /// The key log did not hand over both traffic secrets.
    NoSecrets,
    /// No kernel cipher for the suite.
    Suite(String),
    /// The kernel refused the switch before taking either direction: `TCP_ULP` or
    /// `TLS_TX` failed (e.g. no AES-GCM in the kernel's crypto).
    Refused(String),
}

impl std::fmt::Display for Software {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Software::Off => f.write_str("kTLS is off for this connection"),
            Software::NoKernel(e) => f.write_str(e),
            Software::Buffered => {
                f.write_str("record bytes were buffered in OpenSSL when the handshake finished")
            }
            Software::NoSecrets => {
                f.write_str("OpenSSL's key log did not hand over the traffic secrets")
            }
            Software::Suite(s) => write!(f, "no kernel TLS cipher for {s}"),
            Software::Refused(e) => write!(f, "the kernel refused kTLS: {e}"),
        }
    }
}

/// Whether a connection whose handshake is done may switch, before the kernel is
/// touched: `wanted` (kTLS not off), `kernel` (the probe), whether OpenSSL holds
/// record bytes, whether the secrets were handed over. The first obstacle wins.
pub fn may_switch(
    wanted: bool,
    kernel: Result<(), &str>,
    buffered: bool,
    secrets: bool,
) -> Result<(), Software> {
    if !wanted {
        return Err(Software::Off);
    }
    kernel.map_err(|e| Software::NoKernel(e.to_string()))?;
    if buffered {
        return Err(Software::Buffered);
    }
    if !secrets {
        return Err(Software::NoSecrets);
    }
    Ok(())
}

/// What came of a switch attempt.
pub enum Switch {
    /// The kernel carries the records now.
    Kernel(KtlsStream),
    /// Still in software, for this reason (the TLS stream goes on as before).
    Software(Software),
}

/// Hand `tcp`'s records to the kernel with `tx` and `rx` (our and the peer's
/// secrets). `Ok(Err)`: nothing changed, software goes on; `Err`: the kernel took one
/// direction and refused the other, and the connection cannot go on.
pub(super) fn enable(
    tcp: &TcpStream,
    suite: &str,
    tx: &[u8],
    rx: &[u8],
) -> io::Result<Result<(), Software>> {
    let Some((_, cipher_type, _)) = cipher(suite) else {
        return Ok(Err(Software::Suite(suite.to_string())));
    };
    let (tk, rk) = (traffic_keys(suite, tx)?, traffic_keys(suite, rx)?);
    let fd = tcp.as_raw_fd();
    if let Err(e) = set_ulp(fd) {
        return Ok(Err(Software::Refused(format!("TCP_ULP tls: {e}"))));
    }
    let set = |dir, k: &DirKeys| match cipher_type {
        TLS_CIPHER_AES_GCM_128 => set_crypto::<16>(fd, dir, cipher_type, k),
        _ => set_crypto::<32>(fd, dir, cipher_type, k),
    };
    // The ULP alone passes bytes through: a refused TLS_TX leaves software TLS working.
    if let Err(e) = set(TLS_TX, &tk) {
        return Ok(Err(Software::Refused(format!("TLS_TX: {e}"))));
    }
    set(TLS_RX, &rk).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("kTLS: the kernel took TLS_TX but refused TLS_RX: {e}"),
        )
    })?;
    Ok(Ok(()))
}

/// A socket whose records the kernel encrypts and decrypts: reads and writes are the
/// socket's own. A record other than application data (an alert, a handshake message
/// such as a key update) fails the read with EIO; it is then looked at (without taking
/// it): close_notify is the end of the stream, anything else an error that says what
/// came.
#[derive(Debug, Clone)]
pub struct KtlsStream {
    tcp: Arc<TcpStream>,
}

impl KtlsStream {
    /// A socket already in kTLS (handed over by a predecessor process: the kernel kept
    /// its keys and sequence numbers).
    pub fn adopt(tcp: Arc<TcpStream>) -> KtlsStream {
        KtlsStream { tcp }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Send one record of content type `record_type` (an alert: 21, a handshake
    /// message: 22) carrying `body`, through the kernel (TLS_SET_RECORD_TYPE).
    pub fn send_record(&self, record_type: u8, body: &[u8]) -> io::Result<usize> {
        let mut cbuf = [0u64; 4];
        let mut iov = libc::iovec {
            iov_base: body.as_ptr() as *mut libc::c_void,
            iov_len: body.len(),
        };
        // SAFETY: a zeroed msghdr is a valid empty one; its pointers are set below to
        // buffers that outlive the call; sendmsg(2) only reads `body`.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is arithmetic.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(1) } as _;
        // SAFETY: `cbuf` holds CMSG_SPACE(1) bytes (32 >= 24), so the first header
        // and its one data byte lie within it.
        let n = unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = SOL_TLS;
            (*c).cmsg_type = TLS_SET_RECORD_TYPE;
            (*c).cmsg_len = libc::CMSG_LEN(1) as _;
            *libc::CMSG_DATA(c) = record_type;
            libc::sendmsg(self.tcp.as_raw_fd(), &msg, 0)
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// The read failed with `e`: what to tell the owner. `Ok(None)`: the record at the
    /// head is application data after all, read again.
    #[cold]
    fn failed(&self, e: io::Error) -> io::Result<Option<usize>> {
        match e.raw_os_error() {
            Some(libc::EIO) => match peek_record(self.tcp.as_raw_fd())? {
                (RECORD_APPLICATION_DATA, _) => Ok(None),
                (RECORD_ALERT, body) if body.get(1) == Some(&0) => Ok(Some(0)),
                (RECORD_ALERT, body) => Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!(
                        "kTLS: the peer sent a TLS alert ({}, level {})",
                        alert_name(body.get(1).copied()),
                        body.first().copied().unwrap_or(0)
                    ),
                )),
                (RECORD_HANDSHAKE, body) => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "kTLS: the peer sent a TLS handshake message (type {}) after the handshake; a kTLS connection takes no key updates or tickets",
                        body.first().copied().unwrap_or(0)
                    ),
                )),
                (t, _) => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("kTLS: the peer sent a TLS record of content type {t}"),
                )),
            },
            Some(libc::EBADMSG) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "kTLS: a record from the peer failed authentication (EBADMSG)",
            )),
            Some(libc::EMSGSIZE) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "kTLS: a record from the peer is too long (EMSGSIZE)",
            )),
            _ => Err(e),
        }
    }
}

fn alert_name(d: Option<u8>) -> String {
    match d {
        Some(0) => "close_notify".into(),
        Some(10) => "unexpected_message".into(),
        Some(20) => "bad_record_mac".into(),
        Some(40) => "handshake_failure".into(),
        Some(47) => "illegal_parameter".into(),
        Some(50) => "decode_error".into(),
        Some(51) => "decrypt_error".into(),
        Some(80) => "internal_error".into(),
        Some(90) => "user_canceled".into(),
        Some(d) => format!("description {d}"),
        None => "empty".into(),
    }
}

/// The content type and the first bytes of the record at the head of a kTLS socket,
/// left there (MSG_PEEK, with room for the TLS_GET_RECORD_TYPE message).
fn peek_record(fd: RawFd) -> io::Result<(u8, Vec<u8>)> {
    let mut data = [0u8; 16];
    let mut cbuf = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: a zeroed msghdr is a valid empty one; its pointers are set below to
    // buffers that outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    // SAFETY: recvmsg(2) writes at most the lengths given into `data` and `cbuf`.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut kind = None;
    // SAFETY: the CMSG_* walk stays within `msg_controllen` bytes of `cbuf`, which the
    // kernel filled; CMSG_DATA of a TLS_GET_RECORD_TYPE message holds one byte.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == SOL_TLS && (*c).cmsg_type == TLS_GET_RECORD_TYPE {
                kind = Some(*libc::CMSG_DATA(c));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let kind = kind.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "kTLS: a read failed (EIO) and the kernel named no record type",
        )
    })?;
    Ok((kind, data[..n as usize].to_vec()))
}

impl KtlsStream {
    /// `recv` (a read of the socket) until it gives data, the end, `WouldBlock` or
    /// an error that says what came instead of application data.
    #[inline]
    fn reading(&self, mut recv: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
        loop {
            match recv() {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => match self.failed(e)? {
                    Some(n) => return Ok(n),
                    None => continue,
                },
                r => return r,
            }
        }
    }
}

impl Stream for KtlsStream {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let tcp = &*self.tcp;
        self.reading(|| {
            let mut t = tcp;
            t.read(buf)
        })
    }

    #[inline]
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        let tcp = &*self.tcp;
        self.reading(|| {
            let mut t = tcp;
            t.read_vectored(bufs)
        })
    }

    #[inline]
    fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        (&*self.tcp).write_vectored(iov)
    }
}

#[cfg(test)]
#[path = "ktls_tests.rs"]
mod tests;
