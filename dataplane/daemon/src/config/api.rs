//! `[api]`: the management API on TCP as well as on the Unix socket, only with mutual
//! TLS (there is no plain-text TCP API: anyone who reaches the port could reconfigure
//! the target).
//!
//! ```toml
//! [api]
//! address = "10.0.0.5:9440"
//! tls_cert = "/etc/lightpool/api.crt"   # the target's certificate chain (PEM)
//! tls_key = "/etc/lightpool/api.key"    # its private key (PEM)
//! client_ca = "/etc/lightpool/ca.crt"   # clients must present a certificate it signed
//! ```
//!
//! The files are read at start (and again by the successor of a hot upgrade, which
//! is how a renewed certificate is taken up without a restart).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ferr, FieldError};

/// The TCP API's address and its TLS files.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// `IP:PORT` to serve the API on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The target's certificate (chain), PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// The CA that clients' certificates must chain to, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// The checked section: where to listen and the three files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTls {
    pub address: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

fn file(
    key: &str,
    v: &Option<PathBuf>,
    what: &'static str,
    kind: &'static str,
) -> Result<PathBuf, FieldError> {
    let p = v.as_ref().ok_or_else(|| {
        ferr(
            format!("api.{key}"),
            format!("the TCP API is served only with mutual TLS: give the {what} (a PEM file)"),
        )
    })?;
    check_file(&format!("api.{key}"), p, what, kind)?;
    Ok(p.clone())
}

/// A PEM file that must hold a `kind` block: readable and of that kind.
pub fn check_file(
    key: &str,
    p: &Path,
    what: &'static str,
    kind: &'static str,
) -> Result<(), FieldError> {
    lightpool_api::tls::read_pem(what, p, kind)
        .map(|_| ())
        .map_err(|e| ferr(key, e.to_string()))
}

impl ApiSection {
    /// The section checked, files read; `None` when no address is given (then no
    /// other key may be).
    pub fn check(&self) -> Result<Option<ApiTls>, FieldError> {
        let Some(a) = &self.address else {
            if self.tls_cert.is_some() || self.tls_key.is_some() || self.client_ca.is_some() {
                return Err(ferr(
                    "api.address",
                    "TLS files are given but no address: add address = \"IP:PORT\" to serve the API on TCP, or remove the [api] section",
                ));
            }
            return Ok(None);
        };
        let address = a.parse::<SocketAddr>().map_err(|_| {
            ferr(
                "api.address",
                format!("{a:?} is not IP:PORT (e.g. \"10.0.0.5:9440\")"),
            )
        })?;
        Ok(Some(ApiTls {
            address,
            cert: file(
                "tls_cert",
                &self.tls_cert,
                "target's certificate",
                "CERTIFICATE",
            )?,
            key: file(
                "tls_key",
                &self.tls_key,
                "target's private key",
                "PRIVATE KEY",
            )?,
            client_ca: file(
                "client_ca",
                &self.client_ca,
                "clients' CA certificate",
                "CERTIFICATE",
            )?,
        }))
    }
}

impl ApiTls {
    /// The section that gives this (for `config save`), at the address bound.
    pub fn section(&self, bound: Option<SocketAddr>) -> ApiSection {
        ApiSection {
            address: Some(bound.unwrap_or(self.address).to_string()),
            tls_cert: Some(self.cert.clone()),
            tls_key: Some(self.key.clone()),
            client_ca: Some(self.client_ca.clone()),
        }
    }
}
