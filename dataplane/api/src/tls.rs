//! The API over TCP with mutual TLS: the target serves it there only with a
//! certificate of its own and a CA that every client's certificate must chain to;
//! clients ([`connect_tls`]) present a certificate and check the target's against
//! their CA. There is no plain-text TCP API.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// What a client needs to reach the API over TCP: the CA the target's certificate
/// chains to, and its own certificate and key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA that signed the target's certificate.
    pub ca: PathBuf,
    /// This client's certificate (signed by the CA the target trusts).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The name to check the target's certificate against; default: the host of
    /// the address.
    pub domain: Option<String>,
}

/// Why a TLS channel could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file holds no PEM block of the kind needed.
    #[error("{what} {path} holds no PEM {kind} block")]
    NotPem {
        what: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
    /// The address is not HOST:PORT.
    #[error("{0:?} is not HOST:PORT (e.g. \"10.0.0.5:9440\")")]
    Address(String),
    /// The transport refused the settings or could not connect.
    #[error("{0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Reads a PEM file that must hold a block whose label contains `kind`
/// ("CERTIFICATE", "PRIVATE KEY").
pub fn read_pem(what: &'static str, path: &Path, kind: &'static str) -> Result<Vec<u8>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&data);
    let has = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("-----BEGIN "))
        .any(|l| l.contains(kind));
    if !has {
        return Err(TlsError::NotPem {
            what,
            path: path.to_path_buf(),
            kind,
        });
    }
    Ok(data)
}

/// The client side's TLS settings.
pub fn client_config(tls: &ClientTls) -> Result<ClientTlsConfig, TlsError> {
    let ca = read_pem("CA certificate", &tls.ca, "CERTIFICATE")?;
    let cert = read_pem("client certificate", &tls.cert, "CERTIFICATE")?;
    let key = read_pem("client key", &tls.key, "PRIVATE KEY")?;
    let mut c = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key));
    if let Some(d) = &tls.domain {
        c = c.domain_name(d.clone());
    }
    Ok(c)
}

/// A channel to the API at `addr` (HOST:PORT) over mutual TLS.
pub async fn connect_tls(addr: &str, tls: &ClientTls) -> Result<Channel, TlsError> {
    let bad = || TlsError::Address(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    let cfg = client_config(tls)?;
    let ep = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|_| bad())?
        .tls_config(cfg)?;
    Ok(ep.connect().await?)
}
