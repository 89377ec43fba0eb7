//! The byte stream of an accepted connection: the socket itself, or (cargo feature
//! `tls`, on a listener with `secure` optional or required) TLS 1.3 over it.
//!
//! On a TLS listener the first byte the host sends decides (NVMe/TCP transport
//! specification 3.6.1.2): 0x16 is a TLS handshake record, anything else (an ICReq
//! starts with 0x00) is plain NVMe/TCP, which `secure = "required"` refuses. The
//! handshake runs inside the connection's first reads on its reactor, like any other
//! read; a connection whose handshake fails closes with a warning that says why.
//!
//! Once the handshake is done, the records go to the kernel (kTLS) where the listener's
//! `ktls` is auto and the kernel has the `tls` ULP; the connection then reads and
//! writes the socket like a plain one (through `KtlsStream`, which turns a TLS alert
//! or handshake record into the connection's end). Otherwise OpenSSL keeps them.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::TcpStream;

use lightpool_tcp_framing::Stream;

/// An accepted connection's stream.
pub enum Sock {
    /// Plain NVMe/TCP.
    Plain(TcpStream),
    /// A listener with TLS: detecting, handshaking, then records.
    #[cfg(feature = "tls")]
    Tls(Box<tls::Server>),
}

impl std::fmt::Debug for Sock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sock::Plain(_) => f.write_str("Sock::Plain"),
            #[cfg(feature = "tls")]
            Sock::Tls(t) => write!(f, "Sock::Tls({})", t.mode()),
        }
    }
}

impl Sock {
    /// The socket under the stream (descriptors, addresses, readiness).
    #[inline]
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Sock::Plain(s) => s,
            #[cfg(feature = "tls")]
            Sock::Tls(t) => t.tcp(),
        }
    }

    /// Whether a hot upgrade can hand the connection over as a socket: plain
    /// NVMe/TCP and kTLS (the kernel holds the keys and sequence numbers) can;
    /// software TLS (or a connection whose first byte has not decided yet) cannot.
    pub fn can_hand_over(&self) -> bool {
        match self {
            Sock::Plain(_) => true,
            #[cfg(feature = "tls")]
            Sock::Tls(t) => t.is_plain() || t.is_ktls(),
        }
    }

    /// Whether the bytes travel in TLS records this process encrypts: such a
    /// connection cannot be handed to another process (its keys and sequence numbers
    /// live in this process's OpenSSL).
    pub fn is_tls(&self) -> bool {
        match self {
            Sock::Plain(_) => false,
            #[cfg(feature = "tls")]
            Sock::Tls(t) => t.is_tls(),
        }
    }

    /// Who carries the connection's TLS records, as the management API shows it:
    /// "off", "kernel" (kTLS) or "software".
    pub fn record_layer(&self) -> &'static str {
        match self {
            Sock::Plain(_) => "off",
            #[cfg(feature = "tls")]
            Sock::Tls(t) if t.is_ktls() => "kernel",
            #[cfg(feature = "tls")]
            Sock::Tls(t) if t.is_tls() => "software",
            #[cfg(feature = "tls")]
            Sock::Tls(_) => "off",
        }
    }

    /// Whether the kernel carries the connection's TLS records (kTLS): its successor
    /// must know, to read alerts as the end of the connection.
    pub fn is_ktls(&self) -> bool {
        match self {
            Sock::Plain(_) => false,
            #[cfg(feature = "tls")]
            Sock::Tls(t) => t.is_ktls(),
        }
    }

    /// A connection a predecessor handed over in kTLS (a build without TLS reads it
    /// as plain: the kernel decrypts either way, an alert then ends it as an error).
    pub fn adopted_ktls(tcp: TcpStream) -> Sock {
        #[cfg(feature = "tls")]
        {
            Sock::Tls(Box::new(tls::Server::adopted_ktls(tcp)))
        }
        #[cfg(not(feature = "tls"))]
        {
            Sock::Plain(tcp)
        }
    }
}

impl Stream for Sock {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Plain(s) => Read::read(s, buf),
            #[cfg(feature = "tls")]
            Sock::Tls(t) => t.read(buf),
        }
    }

    #[inline]
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        match self {
            Sock::Plain(s) => Read::read_vectored(s, bufs),
            #[cfg(feature = "tls")]
            Sock::Tls(t) => t.read_vectored(bufs),
        }
    }

    #[inline]
    fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Sock::Plain(s) => Write::write_vectored(s, iov),
            #[cfg(feature = "tls")]
            Sock::Tls(t) => t.writev(iov),
        }
    }

    #[inline]
    fn buffered(&self) -> bool {
        match self {
            Sock::Plain(_) => false,
            #[cfg(feature = "tls")]
            Sock::Tls(t) => t.buffered(),
        }
    }
}

#[cfg(feature = "tls")]
pub mod tls {
    //! The target's end of a connection on a TLS listener.

    use std::io::{self, IoSlice, IoSliceMut, Read, Write};
    use std::net::TcpStream;
    use std::sync::Arc;

    use lightpool_nvmf::tls::Ktls;
    use lightpool_nvmf::tls::{Keyring, PskHash, Secure};
    use lightpool_nvmf::Target;
    use lightpool_tcp_framing::tls::{
        kernel_tls, server_context, KtlsStream, Psk, PskStore, Suite, Switch, TlsError, TlsStream,
    };
    use lightpool_tcp_framing::Stream;
    use openssl::ssl::SslContext;

    /// The first byte of a TLS handshake record.
    const TLS_HANDSHAKE: u8 = 0x16;

    /// The target's PSKs as the handshake looks them up.
    struct TargetPsks(Arc<Target>);

    impl PskStore for TargetPsks {
        fn find(&self, identity: &[u8]) -> Option<Psk> {
            let keyring: &Keyring = &self.0.tls;
            let f = keyring.find(identity)?;
            Some(Psk {
                identity: identity.to_vec(),
                key: f.psk.key.to_vec(),
                suite: match f.psk.hash {
                    PskHash::Sha256 => Suite::Aes128GcmSha256,
                    PskHash::Sha384 => Suite::Aes256GcmSha384,
                },
            })
        }
    }

    /// The OpenSSL context of a target's TLS listeners. Says once whether the kernel
    /// can take the record layer (kTLS): the probe's answer is what every connection
    /// of `ktls = "auto"` listeners goes by.
    pub fn context(target: Arc<Target>) -> Result<SslContext, TlsError> {
        match kernel_tls() {
            Ok(()) => tracing::info!(
                "NVMe/TCP TLS: the kernel has the tls ULP: TLS records in the kernel (kTLS) after each handshake, except on listeners with ktls = \"off\""
            ),
            Err(e) => tracing::info!(
                error = %e,
                "NVMe/TCP TLS: no kernel TLS: TLS records in software (OpenSSL on the reactors)"
            ),
        }
        server_context(Arc::new(TargetPsks(target)))
    }

    enum Mode {
        /// Waiting for the host's first byte.
        Detect {
            ctx: SslContext,
            secure: Secure,
            ktls: Ktls,
        },
        /// The host spoke plain NVMe/TCP on an optional listener.
        Plain,
        /// Records in software (OpenSSL); the handshake runs here too.
        Tls(Box<TlsStream>, Ktls),
        /// Records in the kernel.
        Ktls(KtlsStream),
        /// Refused (the reason was logged); every read repeats it.
        Refused(String),
    }

    /// A connection on a TLS listener.
    pub struct Server {
        tcp: Arc<TcpStream>,
        mode: Mode,
        peer: String,
    }

    impl Server {
        pub fn new(
            tcp: TcpStream,
            ctx: SslContext,
            secure: Secure,
            ktls: Ktls,
            peer: String,
        ) -> Server {
            Server {
                tcp: Arc::new(tcp),
                mode: Mode::Detect { ctx, secure, ktls },
                peer,
            }
        }

        /// A connection handed over in kTLS by a predecessor.
        pub fn adopted_ktls(tcp: TcpStream) -> Server {
            let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let tcp = Arc::new(tcp);
            Server {
                mode: Mode::Ktls(KtlsStream::adopt(tcp.clone())),
                tcp,
                peer,
            }
        }

        pub fn tcp(&self) -> &TcpStream {
            &self.tcp
        }

        pub fn is_tls(&self) -> bool {
            matches!(self.mode, Mode::Tls(..) | Mode::Ktls(_))
        }

        pub fn is_ktls(&self) -> bool {
            matches!(self.mode, Mode::Ktls(_))
        }

        pub fn is_plain(&self) -> bool {
            matches!(self.mode, Mode::Plain)
        }

        pub fn mode(&self) -> &'static str {
            match self.mode {
                Mode::Detect { .. } => "detecting",
                Mode::Plain => "plain",
                Mode::Tls(..) => "tls",
                Mode::Ktls(_) => "ktls",
                Mode::Refused(_) => "refused",
            }
        }

        fn refuse(&mut self, why: String) -> io::Error {
            tracing::warn!(peer = %self.peer, reason = %why, "NVMe/TCP TLS: connection refused");
            self.mode = Mode::Refused(why.clone());
            io::Error::new(io::ErrorKind::PermissionDenied, why)
        }

        /// Decide TLS or plain from the first byte (without taking it).
        fn detect(&mut self) -> io::Result<()> {
            let Mode::Detect { ctx, secure, ktls } = &self.mode else {
                return Ok(());
            };
            let mut first = [0u8; 1];
            if self.tcp.peek(&mut first)? == 0 {
                // End of stream: the next read says so.
                self.mode = Mode::Plain;
                return Ok(());
            }
            let tls = first[0] == TLS_HANDSHAKE;
            self.mode =
                match (tls, *secure) {
                    (true, _) => match accept(ctx, self.tcp.clone(), *ktls) {
                        Ok(s) => Mode::Tls(Box::new(s), *ktls),
                        Err(e) => return Err(self.refuse(format!("cannot start TLS: {e}"))),
                    },
                    (false, Secure::Required) => return Err(self.refuse(
                        "plain NVMe/TCP on a listener that requires TLS (secure = \"required\")"
                            .to_string(),
                    )),
                    (false, _) => Mode::Plain,
                };
            Ok(())
        }

        pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            loop {
                match &mut self.mode {
                    Mode::Detect { .. } => self.detect()?,
                    Mode::Plain => return (&*self.tcp).read(buf),
                    Mode::Tls(t, ktls) => {
                        if !t.is_established() {
                            match t.handshake() {
                                Ok(true) => {
                                    let ktls = *ktls;
                                    self.established(ktls)?;
                                    continue;
                                }
                                Ok(false) => return Err(io::ErrorKind::WouldBlock.into()),
                                Err(e) => {
                                    let why = e.to_string();
                                    return Err(self.refuse(why));
                                }
                            }
                        }
                        return Stream::read(&mut **t, buf);
                    }
                    Mode::Ktls(k) => {
                        return match k.read(buf) {
                            Err(e) if e.raw_os_error().is_none() => Err(ktls_end(&self.peer, e)),
                            r => r,
                        }
                    }
                    Mode::Refused(why) => {
                        return Err(io::Error::new(io::ErrorKind::PermissionDenied, why.clone()))
                    }
                }
            }
        }

        pub fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
            if let Mode::Ktls(k) = &mut self.mode {
                return match k.read_vectored(bufs) {
                    Err(e) if e.raw_os_error().is_none() => Err(ktls_end(&self.peer, e)),
                    r => r,
                };
            }
            match bufs.iter_mut().find(|b| !b.is_empty()) {
                Some(b) => self.read(b),
                None => Ok(0),
            }
        }

        pub fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
            match &mut self.mode {
                Mode::Plain => (&*self.tcp).write_vectored(iov),
                Mode::Ktls(k) => k.writev(iov),
                Mode::Tls(t, _) if t.is_established() => t.writev(iov),
                // Nothing is sent before the host's first bytes were read.
                Mode::Detect { .. } | Mode::Tls(..) => Err(io::ErrorKind::WouldBlock.into()),
                Mode::Refused(why) => {
                    Err(io::Error::new(io::ErrorKind::PermissionDenied, why.clone()))
                }
            }
        }

        pub fn buffered(&self) -> bool {
            match &self.mode {
                Mode::Tls(t, _) => t.buffered(),
                _ => false,
            }
        }

        /// The handshake is done: hand the records to the kernel where `ktls` and the
        /// kernel allow, and say which record layer the connection has.
        fn established(&mut self, ktls: Ktls) -> io::Result<()> {
            let Mode::Tls(t, _) = &mut self.mode else {
                return Ok(());
            };
            let suite = t.suite().unwrap_or("?");
            let identity = t.offered_identity().unwrap_or_default();
            match t.to_kernel(ktls == Ktls::Auto) {
                Ok(Switch::Kernel(k)) => {
                    tracing::info!(
                        peer = %self.peer,
                        suite,
                        identity,
                        record_layer = "kernel",
                        "NVMe/TCP TLS established"
                    );
                    self.mode = Mode::Ktls(k);
                    Ok(())
                }
                Ok(Switch::Software(why)) => {
                    tracing::info!(
                        peer = %self.peer,
                        suite,
                        identity,
                        record_layer = "software",
                        reason = %why,
                        "NVMe/TCP TLS established"
                    );
                    Ok(())
                }
                Err(e) => Err(self.refuse(e.to_string())),
            }
        }
    }

    /// A kTLS read found something other than application data (an alert, a
    /// handshake message) or a record that failed: the connection ends, and says why.
    #[cold]
    fn ktls_end(peer: &str, e: io::Error) -> io::Error {
        tracing::warn!(peer, reason = %e, "NVMe/TCP TLS: connection closed");
        e
    }

    /// The target's TLS stream of a connection, ready for kTLS unless it is off.
    fn accept(ctx: &SslContext, tcp: Arc<TcpStream>, ktls: Ktls) -> Result<TlsStream, TlsError> {
        let mut s = TlsStream::accept(ctx, tcp)?;
        if ktls == Ktls::Auto && kernel_tls().is_ok() {
            s.prepare_kernel()?;
        }
        Ok(s)
    }
}
