//! NVMe/TCP over TLS 1.3 with external pre-shared keys (NVMe/TCP transport
//! specification section 3.6), through OpenSSL: the contexts of either end, the PSK
//! callbacks, and [`TlsStream`], a [`Stream`] that runs the handshake on its first reads
//! and writes (nonblocking, on whatever polls it) and then carries NVMe/TCP in records.
//!
//! Only TLS 1.3, only TLS_AES_128_GCM_SHA256 and TLS_AES_256_GCM_SHA384, only PSKs (no
//! certificates), no session tickets. The PSK of a handshake is the one whose hash
//! matches the suite: the target finds it by the identity the host offers
//! ([`PskStore`]), the host offers the one it was given.
//!
//! OpenSSL's Rust binding has no external-PSK (TLS 1.3 `psk_find_session` /
//! `psk_use_session`) calls, so the few functions they need are declared here; each call
//! is commented with what makes it sound.
//!
//! The record layer runs in the kernel (kTLS, [`ktls`]) where the kernel has it and the
//! connection asks for it ([`TlsStream::prepare_kernel`], then
//! [`TlsStream::to_kernel`] once the handshake is done), else in this process (software
//! TLS): every byte is encrypted or decrypted by OpenSSL on the reactor that owns the
//! connection. Software writes gather the send queue's pieces into one record of up
//! to [`RECORD`] bytes (one copy, which the encryption makes anyway, instead of one
//! record per header).

use std::ffi::{c_int, c_uchar};
use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};

use foreign_types::ForeignTypeRef;
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslRef,
    SslStream, SslVerifyMode, SslVersion,
};

use crate::Stream;

pub mod ktls;
pub use ktls::{kernel_tls, KtlsStream, Software, Switch};

/// The most plaintext one TLS record carries.
pub const RECORD: usize = 16 * 1024;

/// The TLS 1.3 cipher suites of NVMe/TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    /// TLS_AES_128_GCM_SHA256: PSKs whose hash is SHA-256.
    Aes128GcmSha256,
    /// TLS_AES_256_GCM_SHA384: PSKs whose hash is SHA-384.
    Aes256GcmSha384,
}

impl Suite {
    pub fn name(self) -> &'static str {
        match self {
            Suite::Aes128GcmSha256 => "TLS_AES_128_GCM_SHA256",
            Suite::Aes256GcmSha384 => "TLS_AES_256_GCM_SHA384",
        }
    }

    /// The suite's two-byte code (RFC 8446 appendix B.4).
    fn code(self) -> [u8; 2] {
        match self {
            Suite::Aes128GcmSha256 => [0x13, 0x01],
            Suite::Aes256GcmSha384 => [0x13, 0x02],
        }
    }
}

/// A TLS PSK with its identity. The key never appears in `Debug` output.
#[derive(Clone)]
pub struct Psk {
    pub identity: Vec<u8>,
    pub key: Vec<u8>,
    pub suite: Suite,
}

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Psk")
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .field("suite", &self.suite.name())
            .finish()
    }
}

impl Drop for Psk {
    fn drop(&mut self) {
        self.key.fill(0);
    }
}

/// Where a target finds the PSK of an identity a host offers.
pub trait PskStore: Send + Sync {
    fn find(&self, identity: &[u8]) -> Option<Psk>;
}

/// Why a TLS context or connection could not be set up (never a handshake's failure:
/// that is the connection's [`io::Error`], with the reason in words).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("OpenSSL refused the TLS setup: {0}")]
    Setup(#[from] ErrorStack),
}

type FindSessionCb = unsafe extern "C" fn(
    *mut openssl_sys::SSL,
    *const c_uchar,
    usize,
    *mut *mut openssl_sys::SSL_SESSION,
) -> c_int;
type UseSessionCb = unsafe extern "C" fn(
    *mut openssl_sys::SSL,
    *const openssl_sys::EVP_MD,
    *mut *const c_uchar,
    *mut usize,
    *mut *mut openssl_sys::SSL_SESSION,
) -> c_int;

// libssl (OpenSSL 1.1.1 and later) functions the Rust binding does not declare.
extern "C" {
    fn SSL_CTX_set_psk_find_session_callback(
        ctx: *mut openssl_sys::SSL_CTX,
        cb: Option<FindSessionCb>,
    );
    fn SSL_CTX_set_psk_use_session_callback(
        ctx: *mut openssl_sys::SSL_CTX,
        cb: Option<UseSessionCb>,
    );
    fn SSL_SESSION_new() -> *mut openssl_sys::SSL_SESSION;
    fn SSL_has_pending(ssl: *const openssl_sys::SSL) -> c_int;
    fn SSL_set_read_ahead(ssl: *mut openssl_sys::SSL, yes: c_int);
    fn SSL_SESSION_set1_master_key(
        s: *mut openssl_sys::SSL_SESSION,
        key: *const c_uchar,
        len: usize,
    ) -> c_int;
    fn SSL_SESSION_set_cipher(
        s: *mut openssl_sys::SSL_SESSION,
        cipher: *const openssl_sys::SSL_CIPHER,
    ) -> c_int;
    fn SSL_SESSION_set_protocol_version(s: *mut openssl_sys::SSL_SESSION, v: c_int) -> c_int;
    fn SSL_CIPHER_find(
        ssl: *mut openssl_sys::SSL,
        code: *const c_uchar,
    ) -> *const openssl_sys::SSL_CIPHER;
}

fn store_index() -> Result<Index<SslContext, Arc<dyn PskStore>>, ErrorStack> {
    static I: OnceLock<Index<SslContext, Arc<dyn PskStore>>> = OnceLock::new();
    if let Some(i) = I.get() {
        return Ok(*i);
    }
    let i = SslContext::new_ex_index()?;
    Ok(*I.get_or_init(|| i))
}

fn psk_index() -> Result<Index<Ssl, Psk>, ErrorStack> {
    static I: OnceLock<Index<Ssl, Psk>> = OnceLock::new();
    if let Some(i) = I.get() {
        return Ok(*i);
    }
    let i = Ssl::new_ex_index()?;
    Ok(*I.get_or_init(|| i))
}

/// What the target's callback saw: the identity offered, and whether it was known.
#[derive(Debug, Clone, Default)]
struct Offered {
    identity: Option<String>,
    known: bool,
}

fn offered_index() -> Result<Index<Ssl, Offered>, ErrorStack> {
    static I: OnceLock<Index<Ssl, Offered>> = OnceLock::new();
    if let Some(i) = I.get() {
        return Ok(*i);
    }
    let i = Ssl::new_ex_index()?;
    Ok(*I.get_or_init(|| i))
}

/// A TLS 1.3 session carrying `psk` as its resumption secret: what OpenSSL takes as an
/// external PSK. Null if OpenSSL refused any step.
///
/// # Safety
/// `ssl` is a live SSL handle (OpenSSL passes one to the callbacks that call this).
unsafe fn psk_session(ssl: *mut openssl_sys::SSL, psk: &Psk) -> *mut openssl_sys::SSL_SESSION {
    let code = psk.suite.code();
    // SAFETY: `ssl` is live (caller); `code` is the two bytes SSL_CIPHER_find reads.
    let cipher = unsafe { SSL_CIPHER_find(ssl, code.as_ptr()) };
    if cipher.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: plain constructor; null on allocation failure, checked.
    let sess = unsafe { SSL_SESSION_new() };
    if sess.is_null() {
        return sess;
    }
    // SAFETY: `sess` is the session just made; the key slice is valid for its length
    // and OpenSSL copies it; `cipher` is a static table entry found above.
    let ok = unsafe {
        SSL_SESSION_set1_master_key(sess, psk.key.as_ptr(), psk.key.len()) == 1
            && SSL_SESSION_set_cipher(sess, cipher) == 1
            && SSL_SESSION_set_protocol_version(sess, openssl_sys::TLS1_3_VERSION) == 1
    };
    if !ok {
        // SAFETY: `sess` is ours and nothing else refers to it.
        unsafe { openssl_sys::SSL_SESSION_free(sess) };
        return std::ptr::null_mut();
    }
    sess
}

/// Target: the PSK of the identity the host offers (SSL_psk_find_session_cb_func).
/// Returns 1 with a session for a known identity, 1 with none for an unknown one (the
/// handshake then fails: there is nothing else to authenticate with), 0 on an error.
unsafe extern "C" fn find_session(
    ssl: *mut openssl_sys::SSL,
    identity: *const c_uchar,
    len: usize,
    sess: *mut *mut openssl_sys::SSL_SESSION,
) -> c_int {
    // SAFETY: OpenSSL calls this with a live SSL, `len` readable bytes at `identity` and
    // a writable `sess`, all for the duration of the call.
    let (ssl_ref, identity) = unsafe {
        *sess = std::ptr::null_mut();
        (
            SslRef::from_ptr_mut(ssl),
            std::slice::from_raw_parts(identity, len),
        )
    };
    let (Ok(si), Ok(oi)) = (store_index(), offered_index()) else {
        return 0;
    };
    let Some(store) = ssl_ref.ssl_context().ex_data(si).cloned() else {
        return 0;
    };
    let found = store.find(identity);
    ssl_ref.set_ex_data(
        oi,
        Offered {
            identity: Some(String::from_utf8_lossy(identity).into_owned()),
            known: found.is_some(),
        },
    );
    if let Some(psk) = found {
        // SAFETY: `ssl` is live (OpenSSL's call); `sess` is writable (above).
        unsafe {
            let s = psk_session(ssl, &psk);
            if s.is_null() {
                return 0;
            }
            *sess = s;
        }
    }
    1
}

/// Host: offer the PSK this connection was given (SSL_psk_use_session_cb_func). OpenSSL
/// asks once before the ClientHello (`md` null) and again after a HelloRetryRequest
/// with the hash of the suite chosen: a PSK of another hash is then not offered.
unsafe extern "C" fn use_session(
    ssl: *mut openssl_sys::SSL,
    md: *const openssl_sys::EVP_MD,
    id: *mut *const c_uchar,
    idlen: *mut usize,
    sess: *mut *mut openssl_sys::SSL_SESSION,
) -> c_int {
    // SAFETY: OpenSSL calls this with a live SSL and writable out-pointers.
    let ssl_ref = unsafe {
        *sess = std::ptr::null_mut();
        *id = std::ptr::null();
        *idlen = 0;
        SslRef::from_ptr_mut(ssl)
    };
    let Ok(pi) = psk_index() else {
        return 0;
    };
    let Some(psk) = ssl_ref.ex_data(pi) else {
        return 1;
    };
    // SAFETY: `ssl` is live; the suite code is two readable bytes.
    let cipher = unsafe { SSL_CIPHER_find(ssl, psk.suite.code().as_ptr()) };
    if cipher.is_null() {
        return 0;
    }
    // SAFETY: `cipher` is a static table entry (found above).
    if !md.is_null() && unsafe { openssl_sys::SSL_CIPHER_get_handshake_digest(cipher) } != md {
        return 1;
    }
    // SAFETY: `ssl` is live; the identity lives in the SSL's ex_data, as long as the SSL
    // that reads it through `id`; the out-pointers are writable.
    unsafe {
        let s = psk_session(ssl, psk);
        if s.is_null() {
            return 0;
        }
        *sess = s;
        *id = psk.identity.as_ptr();
        *idlen = psk.identity.len();
    }
    1
}

fn base(method: SslMethod, suites: &str) -> Result<SslContextBuilder, ErrorStack> {
    let mut b = SslContextBuilder::new(method)?;
    b.set_min_proto_version(Some(SslVersion::TLS1_3))?;
    b.set_max_proto_version(Some(SslVersion::TLS1_3))?;
    b.set_ciphersuites(suites)?;
    b.set_options(SslOptions::NO_TICKET);
    b.set_num_tickets(0)?;
    // A write that would block is retried with the same bytes re-gathered (same length
    // or more), maybe from another address.
    b.set_mode(SslMode::ENABLE_PARTIAL_WRITE | SslMode::ACCEPT_MOVING_WRITE_BUFFER);
    b.set_verify(SslVerifyMode::NONE);
    // Read as much as the socket holds into OpenSSL's buffer, not each record's
    // header and body with a receive call each (`buffered` reports what it holds).
    // SAFETY: the context is live (the builder owns it); a plain setter.
    unsafe { openssl_sys::SSL_CTX_set_read_ahead(b.as_ptr(), 1) };
    // The application traffic secrets of connections that may switch to kTLS.
    b.set_keylog_callback(ktls::keylog);
    Ok(b)
}

/// The target's context: PSKs are found in `store` by the identity offered.
pub fn server_context(store: Arc<dyn PskStore>) -> Result<SslContext, TlsError> {
    let mut b = base(
        SslMethod::tls_server(),
        "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384",
    )?;
    b.set_ex_data(store_index()?, store);
    // SAFETY: the context is live (the builder owns it); the callback has the
    // signature OpenSSL declares for it.
    unsafe { SSL_CTX_set_psk_find_session_callback(b.as_ptr(), Some(find_session)) };
    Ok(b.build())
}

/// The host's context for PSKs of `suite`: each connection offers the PSK given to
/// [`TlsStream::connect`], and only the suite of its hash (the target picks a suite
/// before it looks the identity up, and a PSK of another hash would not be used).
pub fn client_context(suite: Suite) -> Result<SslContext, TlsError> {
    let b = base(SslMethod::tls_client(), suite.name())?;
    // SAFETY: as in `server_context`.
    unsafe { SSL_CTX_set_psk_use_session_callback(b.as_ptr(), Some(use_session)) };
    Ok(b.build())
}

/// `psk` as a PEM session file (`-----BEGIN SSL SESSION PARAMETERS-----`), what
/// `openssl s_client -psk_session FILE -psk_identity ID` offers as an external PSK.
/// s_client's `-psk HEX` always makes a SHA-256 session; a SHA-384 PSK
/// (TLS_AES_256_GCM_SHA384) can be given to it only this way.
pub fn psk_session_pem(psk: &Psk) -> Result<String, TlsError> {
    use foreign_types::ForeignType;
    let ctx = client_context(psk.suite)?;
    let ssl = Ssl::new(&ctx)?;
    // SAFETY: `ssl` is a live handle for the whole call.
    let sess = unsafe { psk_session(ssl.as_ptr(), psk) };
    if sess.is_null() {
        return Err(TlsError::Setup(ErrorStack::get()));
    }
    // SAFETY: `sess` is a new session this function owns; SslSession frees it.
    let sess = unsafe { openssl::ssl::SslSession::from_ptr(sess) };
    let b64 = openssl::base64::encode_block(&sess.to_der()?);
    let mut pem = String::from("-----BEGIN SSL SESSION PARAMETERS-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END SSL SESSION PARAMETERS-----\n");
    Ok(pem)
}

/// The socket as OpenSSL's BIO reads and writes it; the owner keeps its own handle
/// (for readiness, descriptors and addresses).
#[derive(Debug)]
struct Sock(Arc<TcpStream>);

impl Read for Sock {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for Sock {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One end of a TLS connection over a nonblocking socket: the handshake runs on the
/// first reads (and writes), [`Stream::read`] answering `WouldBlock` until it is done;
/// a handshake that fails is an error whose message says why.
pub struct TlsStream {
    tcp: Arc<TcpStream>,
    ssl: SslStream<Sock>,
    established: bool,
    /// The handshake wants to write and the socket is full.
    want_write: bool,
    /// The reason the handshake failed, once it has.
    failed: Option<String>,
    /// Where a write's pieces are gathered into one record.
    gather: Vec<u8>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("established", &self.established)
            .field("suite", &self.suite())
            .finish()
    }
}

impl TlsStream {
    /// The target's end of a connection accepted on `tcp` (nonblocking).
    pub fn accept(ctx: &SslContext, tcp: Arc<TcpStream>) -> Result<TlsStream, TlsError> {
        let mut ssl = Ssl::new(ctx)?;
        ssl.set_accept_state();
        Self::with(ssl, tcp)
    }

    /// The host's end over `tcp`, offering `psk`.
    pub fn connect(ctx: &SslContext, tcp: Arc<TcpStream>, psk: Psk) -> Result<TlsStream, TlsError> {
        let mut ssl = Ssl::new(ctx)?;
        ssl.set_ex_data(psk_index()?, psk);
        ssl.set_connect_state();
        Self::with(ssl, tcp)
    }

    fn with(mut ssl: Ssl, tcp: Arc<TcpStream>) -> Result<TlsStream, TlsError> {
        // Where the key log leaves the secrets, once `prepare_kernel` asks for them.
        ssl.set_ex_data(
            ktls::secrets_index()?,
            std::sync::Mutex::new(ktls::Secrets::default()),
        );
        Ok(TlsStream {
            ssl: SslStream::new(ssl, Sock(tcp.clone()))?,
            tcp,
            established: false,
            want_write: false,
            failed: None,
            gather: Vec::with_capacity(RECORD),
        })
    }

    /// The socket under the records.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    pub fn is_established(&self) -> bool {
        self.established
    }

    /// The suite negotiated, once the handshake has got that far.
    pub fn suite(&self) -> Option<&'static str> {
        self.ssl.ssl().current_cipher().map(|c| c.name())
    }

    /// The identity the host offered (target end), once it has.
    pub fn offered_identity(&self) -> Option<String> {
        let i = offered_index().ok()?;
        self.ssl.ssl().ex_data(i)?.identity.clone()
    }

    /// Advance the handshake as far as the socket allows: `Ok(true)` once it is done,
    /// `Ok(false)` while it waits for the peer, an error (its reason in words) when it
    /// failed.
    pub fn handshake(&mut self) -> io::Result<bool> {
        if self.established {
            return Ok(true);
        }
        if let Some(why) = &self.failed {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, why.clone()));
        }
        self.want_write = false;
        match self.ssl.do_handshake() {
            Ok(()) => {
                self.established = true;
                Ok(true)
            }
            Err(e) if e.code() == ErrorCode::WANT_READ => Ok(false),
            Err(e) if e.code() == ErrorCode::WANT_WRITE => {
                self.want_write = true;
                Ok(false)
            }
            Err(e) => {
                let why = self.failure(&e);
                self.failed = Some(why.clone());
                Err(io::Error::new(io::ErrorKind::PermissionDenied, why))
            }
        }
    }

    /// A failed handshake in words: what OpenSSL says, and what the identity tells.
    fn failure(&self, e: &openssl::ssl::Error) -> String {
        let offered = offered_index()
            .ok()
            .and_then(|i| self.ssl.ssl().ex_data(i).cloned());
        let lib = match (e.io_error(), e.ssl_error()) {
            (Some(io), _) => format!("socket error: {io}"),
            (None, Some(stack)) => stack.to_string(),
            (None, None) if e.code() == ErrorCode::SYSCALL => {
                "the peer closed the connection".to_string()
            }
            (None, None) => format!("OpenSSL error code {}", e.code().as_raw()),
        };
        match offered {
            Some(Offered {
                identity: Some(id),
                known: false,
            // (OpenSSL then looks for a certificate to sign with, and says it has none:
            // not worth repeating.)
            }) => format!("no TLS PSK is configured for the identity {id:?}"),
            Some(Offered {
                identity: Some(id),
                known: true,
            }) => format!(
                "TLS handshake failed for identity {id:?}: the host's PSK differs from the one configured, or it broke off ({lib})"
            ),
            _ => format!("TLS handshake failed ({lib})"),
        }
    }

    /// Ready this connection to hand its records to the kernel once the handshake is
    /// done: the handshake is read one record at a time (no read-ahead, so nothing of
    /// the peer's beyond the handshake reaches OpenSSL's buffer) and the key log keeps
    /// the application traffic secrets. Call before the handshake.
    pub fn prepare_kernel(&mut self) -> Result<(), TlsError> {
        let i = ktls::secrets_index()?;
        if let Some(m) = self.ssl.ssl().ex_data(i) {
            m.lock().unwrap_or_else(|p| p.into_inner()).wanted = true;
        }
        // SAFETY: the SSL handle is live as long as `self.ssl`; a plain setter.
        unsafe { SSL_set_read_ahead(self.ssl.ssl().as_ptr(), 0) };
        Ok(())
    }

    /// The handshake is done: hand the records to the kernel when `wanted`, the
    /// kernel has kTLS and OpenSSL holds no record bytes ([`ktls::may_switch`]). On
    /// [`Switch::Kernel`] this stream must not be used again (drop it: nothing is
    /// sent); on [`Switch::Software`] it goes on as before, read-ahead back on. An
    /// error: the kernel took one direction and refused the other, the connection is
    /// lost. The secrets are zeroed either way.
    pub fn to_kernel(&mut self, wanted: bool) -> io::Result<Switch> {
        let secrets = ktls::secrets_index()
            .ok()
            .and_then(|i| self.ssl.ssl().ex_data(i))
            .and_then(|m| {
                m.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(self.ssl.ssl().is_server())
            });
        let decided = ktls::may_switch(wanted, kernel_tls(), self.buffered(), secrets.is_some());
        let out = match (decided, secrets, self.suite()) {
            (Ok(()), Some((tx, rx)), Some(suite)) => {
                match ktls::enable(&self.tcp, suite, &tx, &rx)? {
                    Ok(()) => return Ok(Switch::Kernel(KtlsStream::adopt(self.tcp.clone()))),
                    Err(why) => why,
                }
            }
            (Err(why), _, _) => why,
            (Ok(()), _, _) => Software::NoSecrets,
        };
        // SAFETY: the SSL handle is live as long as `self.ssl`; a plain setter.
        unsafe { SSL_set_read_ahead(self.ssl.ssl().as_ptr(), 1) };
        Ok(Switch::Software(out))
    }

    /// (client, server) application traffic secrets, left in place (tests).
    #[cfg(test)]
    fn secrets(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let i = ktls::secrets_index().ok()?;
        let m = self.ssl.ssl().ex_data(i)?;
        let s = m.lock().ok()?;
        s.peek()
    }

    fn map(e: openssl::ssl::Error) -> io::Error {
        match e.code() {
            ErrorCode::WANT_READ | ErrorCode::WANT_WRITE => io::ErrorKind::WouldBlock.into(),
            ErrorCode::ZERO_RETURN => io::ErrorKind::UnexpectedEof.into(),
            _ => match e.into_io_error() {
                Ok(io) => io,
                Err(e) => io::Error::other(e.to_string()),
            },
        }
    }
}

impl Stream for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.established && !self.handshake()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match self.ssl.ssl_read(buf) {
            Ok(n) => Ok(n),
            // close_notify: end of stream.
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => Ok(0),
            Err(e) => Err(Self::map(e)),
        }
    }

    fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        if !self.established && !self.handshake()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let total: usize = iov.iter().map(|s| s.len()).sum();
        let mut done = 0;
        while done < total {
            // The next record's worth of the pieces, from `done` on.
            self.gather.clear();
            let mut skip = done;
            for s in iov {
                if skip >= s.len() {
                    skip -= s.len();
                    continue;
                }
                let room = RECORD - self.gather.len();
                let piece = &s[skip..];
                skip = 0;
                let n = piece.len().min(room);
                self.gather.extend_from_slice(&piece[..n]);
                if self.gather.len() == RECORD {
                    break;
                }
            }
            match self.ssl.ssl_write(&self.gather) {
                Ok(n) => done += n,
                Err(e) => {
                    let e = Self::map(e);
                    if e.kind() == io::ErrorKind::WouldBlock && done > 0 {
                        break;
                    }
                    return Err(e);
                }
            }
        }
        Ok(done)
    }

    fn buffered(&self) -> bool {
        // SAFETY: the SSL handle is live as long as `self.ssl`; a read-only query.
        self.want_write || unsafe { SSL_has_pending(self.ssl.ssl().as_ptr()) } == 1
    }
}

#[cfg(test)]
mod tests;
