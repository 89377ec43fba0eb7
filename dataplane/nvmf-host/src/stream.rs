//! The byte stream of a host's queue pair: the socket, or (cargo feature `tls`) TLS 1.3
//! with a pre-shared key over it.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::TcpStream;

use lightpool_tcp_framing::Stream;

/// The TLS PSK a host offers, as `lightpool_nvmf::tls` derives it from a configured
/// PSK (`NVMeTLSkey-1:...`) for the host and subsystem NQNs. The key never appears in
/// `Debug` output.
#[derive(Clone)]
pub struct HostTls {
    pub identity: String,
    pub key: Vec<u8>,
    /// The PSK's hash is SHA-384 (TLS_AES_256_GCM_SHA384); else SHA-256
    /// (TLS_AES_128_GCM_SHA256).
    pub sha384: bool,
}

impl std::fmt::Debug for HostTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostTls")
            .field("identity", &self.identity)
            .field("sha384", &self.sha384)
            .finish()
    }
}

/// A queue pair's stream.
pub enum HostStream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<lightpool_tcp_framing::tls::TlsStream>),
}

impl HostStream {
    /// The socket under the stream.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            HostStream::Plain(s) => s,
            #[cfg(feature = "tls")]
            HostStream::Tls(t) => t.tcp(),
        }
    }

    /// Start TLS over `tcp` and run the handshake to its end (the socket may be
    /// blocking with a read timeout, or not: both are waited out until `deadline`).
    #[cfg(feature = "tls")]
    pub fn tls(
        tcp: TcpStream,
        psk: &HostTls,
        deadline: std::time::Instant,
    ) -> io::Result<HostStream> {
        use lightpool_tcp_framing::tls::{client_context, Psk, Suite, TlsStream};
        let suite = if psk.sha384 {
            Suite::Aes256GcmSha384
        } else {
            Suite::Aes128GcmSha256
        };
        let ctx = client_context(suite).map_err(io::Error::other)?;
        let p = Psk {
            identity: psk.identity.as_bytes().to_vec(),
            key: psk.key.clone(),
            suite,
        };
        let mut t =
            TlsStream::connect(&ctx, std::sync::Arc::new(tcp), p).map_err(io::Error::other)?;
        while !t.handshake()? {
            if std::time::Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the TLS handshake did not finish in time",
                ));
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        Ok(HostStream::Tls(Box::new(t)))
    }

    /// Without the `tls` feature there is no TLS.
    #[cfg(not(feature = "tls"))]
    pub fn tls(
        _tcp: TcpStream,
        _psk: &HostTls,
        _deadline: std::time::Instant,
    ) -> io::Result<HostStream> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this build has no TLS (the tls cargo feature of lightpool-nvmf-host)",
        ))
    }
}

impl Stream for HostStream {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            HostStream::Plain(s) => Read::read(s, buf),
            #[cfg(feature = "tls")]
            HostStream::Tls(t) => Stream::read(&mut **t, buf),
        }
    }

    #[inline]
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        match self {
            HostStream::Plain(s) => Read::read_vectored(s, bufs),
            #[cfg(feature = "tls")]
            HostStream::Tls(t) => Stream::read_vectored(&mut **t, bufs),
        }
    }

    #[inline]
    fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            HostStream::Plain(s) => Write::write_vectored(s, iov),
            #[cfg(feature = "tls")]
            HostStream::Tls(t) => t.writev(iov),
        }
    }

    #[inline]
    fn buffered(&self) -> bool {
        match self {
            HostStream::Plain(_) => false,
            #[cfg(feature = "tls")]
            HostStream::Tls(t) => t.buffered(),
        }
    }
}
