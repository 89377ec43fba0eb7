//! The byte stream of an accepted connection: the socket itself, or (cargo feature
//! `tls`, on a listener with `secure` optional or required) TLS 1.3 over it.
//!
//! On a TLS listener the first byte the host sends decides (NVMe/TCP transport
//! specification 3.6.1.2): 0x16 is a TLS handshake record, anything else (an ICReq
//! starts with 0x00) is plain NVMe/TCP, which `secure = "required"` refuses. The
//! handshake runs inside the connection's first reads on its reactor, like any other
//! read; a connection whose handshake fails closes with a warning that says why.

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
    /// NVMe/TCP can; TLS (or a connection whose first byte has not decided yet)
    /// cannot.
    pub fn can_hand_over(&self) -> bool {
        match self {
            Sock::Plain(_) => true,
            #[cfg(feature = "tls")]
            Sock::Tls(t) => t.is_plain(),
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
            Sock::Tls(t) => match bufs.iter_mut().find(|b| !b.is_empty()) {
                Some(b) => t.read(b),
                None => Ok(0),
            },
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

    use std::io::{self, IoSlice, Read, Write};
    use std::net::TcpStream;
    use std::sync::Arc;

    use lightpool_nvmf::tls::{Keyring, PskHash, Secure};
    use lightpool_nvmf::Target;
    use lightpool_tcp_framing::tls::{server_context, Psk, PskStore, Suite, TlsError, TlsStream};
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
    /// could take the record layer (kTLS): this build keeps it in software either way.
    pub fn context(target: Arc<Target>) -> Result<SslContext, TlsError> {
        match ktls_probe() {
            Ok(()) => tracing::info!(
                "NVMe/TCP TLS: the kernel has the tls ULP, but this build keeps TLS records in software (OpenSSL on the reactors)"
            ),
            Err(e) => tracing::info!(
                error = %e,
                "NVMe/TCP TLS: no kernel TLS (the tls ULP cannot be set): TLS records in software (OpenSSL on the reactors)"
            ),
        }
        server_context(Arc::new(TargetPsks(target)))
    }

    /// Whether this kernel has the `tls` TCP ULP: setting it on a new, unconnected TCP
    /// socket fails with ENOTCONN where the module is there (ENOENT where it is not).
    fn ktls_probe() -> io::Result<()> {
        // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is the new socket, owned (and closed) by `_sock` from here on.
        let _sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let ulp = b"tls";
        // SAFETY: setsockopt(2) reads `ulp.len()` bytes from `ulp`, which lives across
        // the call.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_TCP,
                libc::TCP_ULP,
                ulp.as_ptr().cast(),
                ulp.len() as libc::socklen_t,
            )
        };
        let e = io::Error::last_os_error();
        match (r, e.raw_os_error()) {
            (0, _) => Ok(()),
            (_, Some(libc::ENOTCONN)) => Ok(()),
            _ => Err(e),
        }
    }

    enum Mode {
        /// Waiting for the host's first byte.
        Detect {
            ctx: SslContext,
            secure: Secure,
        },
        /// The host spoke plain NVMe/TCP on an optional listener.
        Plain,
        Tls(Box<TlsStream>),
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
        pub fn new(tcp: TcpStream, ctx: SslContext, secure: Secure, peer: String) -> Server {
            Server {
                tcp: Arc::new(tcp),
                mode: Mode::Detect { ctx, secure },
                peer,
            }
        }

        pub fn tcp(&self) -> &TcpStream {
            &self.tcp
        }

        pub fn is_tls(&self) -> bool {
            matches!(self.mode, Mode::Tls(_))
        }

        pub fn is_plain(&self) -> bool {
            matches!(self.mode, Mode::Plain)
        }

        pub fn mode(&self) -> &'static str {
            match self.mode {
                Mode::Detect { .. } => "detecting",
                Mode::Plain => "plain",
                Mode::Tls(_) => "tls",
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
            let Mode::Detect { ctx, secure } = &self.mode else {
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
                    (true, _) => match TlsStream::accept(ctx, self.tcp.clone()) {
                        Ok(s) => Mode::Tls(Box::new(s)),
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
                    Mode::Tls(t) => {
                        if !t.is_established() {
                            match t.handshake() {
                                Ok(true) => {
                                    tracing::info!(
                                        peer = %self.peer,
                                        suite = t.suite().unwrap_or("?"),
                                        identity = t.offered_identity().unwrap_or_default(),
                                        record_layer = "software",
                                        "NVMe/TCP TLS established"
                                    );
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
                    Mode::Refused(why) => {
                        return Err(io::Error::new(io::ErrorKind::PermissionDenied, why.clone()))
                    }
                }
            }
        }

        pub fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
            match &mut self.mode {
                Mode::Plain => (&*self.tcp).write_vectored(iov),
                Mode::Tls(t) if t.is_established() => t.writev(iov),
                // Nothing is sent before the host's first bytes were read.
                Mode::Detect { .. } | Mode::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
                Mode::Refused(why) => {
                    Err(io::Error::new(io::ErrorKind::PermissionDenied, why.clone()))
                }
            }
        }

        pub fn buffered(&self) -> bool {
            match &self.mode {
                Mode::Tls(t) => t.buffered(),
                _ => false,
            }
        }
    }
}
