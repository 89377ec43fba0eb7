//! The byte stream of a host's queue pair: the socket, or (cargo feature `tls`) TLS 1.3
//! with a pre-shared key over it, its records in software (OpenSSL) or, once the
//! handshake is done, in the kernel (kTLS) where the kernel has it and
//! `ConnectOptions::ktls` allows.

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
    /// TLS, records in software.
    #[cfg(feature = "tls")]
    Tls(Box<lightpool_tcp_framing::tls::TlsStream>),
    /// TLS, records in the kernel.
    #[cfg(feature = "tls")]
    Ktls(lightpool_tcp_framing::tls::KtlsStream),
}

/// How many TLS queue pairs this process has connected with each record layer, and
/// why the last software one is (what lightpool-perf reports).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordLayers {
    pub kernel: u64,
    pub software: u64,
    pub software_reason: Option<String>,
}

static RECORD_LAYERS: std::sync::Mutex<RecordLayers> = std::sync::Mutex::new(RecordLayers {
    kernel: 0,
    software: 0,
    software_reason: None,
});

/// The record layers of the TLS queue pairs connected so far.
pub fn record_layers() -> RecordLayers {
    RECORD_LAYERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

impl HostStream {
    /// The socket under the stream.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            HostStream::Plain(s) => s,
            #[cfg(feature = "tls")]
            HostStream::Tls(t) => t.tcp(),
            #[cfg(feature = "tls")]
            HostStream::Ktls(k) => k.tcp(),
        }
    }

    /// "kernel", "software" (TLS) or "none" (plain).
    pub fn record_layer(&self) -> &'static str {
        match self {
            HostStream::Plain(_) => "none",
            #[cfg(feature = "tls")]
            HostStream::Tls(_) => "software",
            #[cfg(feature = "tls")]
            HostStream::Ktls(_) => "kernel",
        }
    }

    /// Start TLS over `tcp` and run the handshake to its end (the socket may be
    /// blocking with a read timeout, or not: both are waited out until `deadline`);
    /// then hand the records to the kernel when `ktls` and the kernel allow.
    #[cfg(feature = "tls")]
    pub fn tls(
        tcp: TcpStream,
        psk: &HostTls,
        deadline: std::time::Instant,
        ktls: bool,
    ) -> io::Result<HostStream> {
        use lightpool_tcp_framing::tls::{
            client_context, kernel_tls, Psk, Suite, Switch, TlsStream,
        };
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
        if ktls && kernel_tls().is_ok() {
            t.prepare_kernel().map_err(io::Error::other)?;
        }
        while !t.handshake()? {
            if std::time::Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the TLS handshake did not finish in time",
                ));
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        let switched = t.to_kernel(ktls)?;
        let mut layers = RECORD_LAYERS.lock().unwrap_or_else(|p| p.into_inner());
        Ok(match switched {
            Switch::Kernel(k) => {
                layers.kernel += 1;
                HostStream::Ktls(k)
            }
            Switch::Software(why) => {
                layers.software += 1;
                layers.software_reason = Some(why.to_string());
                HostStream::Tls(Box::new(t))
            }
        })
    }

    /// Without the `tls` feature there is no TLS.
    #[cfg(not(feature = "tls"))]
    pub fn tls(
        _tcp: TcpStream,
        _psk: &HostTls,
        _deadline: std::time::Instant,
        _ktls: bool,
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
            #[cfg(feature = "tls")]
            HostStream::Ktls(k) => k.read(buf),
        }
    }

    #[inline]
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        match self {
            HostStream::Plain(s) => Read::read_vectored(s, bufs),
            #[cfg(feature = "tls")]
            HostStream::Tls(t) => Stream::read_vectored(&mut **t, bufs),
            #[cfg(feature = "tls")]
            HostStream::Ktls(k) => k.read_vectored(bufs),
        }
    }

    #[inline]
    fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            HostStream::Plain(s) => Write::write_vectored(s, iov),
            #[cfg(feature = "tls")]
            HostStream::Tls(t) => t.writev(iov),
            #[cfg(feature = "tls")]
            HostStream::Ktls(k) => k.writev(iov),
        }
    }

    #[inline]
    fn buffered(&self) -> bool {
        match self {
            HostStream::Plain(_) => false,
            #[cfg(feature = "tls")]
            HostStream::Tls(t) => t.buffered(),
            #[cfg(feature = "tls")]
            HostStream::Ktls(_) => false,
        }
    }
}
