//! The API's TCP listener (`[api]` in the configuration): bound at start, so that a
//! busy or bad address stops the target with a clear message; served with mutual
//! TLS only; handed to a successor in a hot upgrade with its TLS files' paths, which
//! the successor reads again (a renewed certificate is taken up that way).

use std::net::TcpListener;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use lightpool_api::tls::read_pem;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::{ApiSection, ApiTls};

/// The TCP API's socket and what it is served with.
pub struct ApiTcp {
    pub listener: TcpListener,
    pub tls: ApiTls,
}

impl ApiTcp {
    /// Bind the configured address.
    pub fn bind(tls: ApiTls) -> Result<ApiTcp> {
        let listener = TcpListener::bind(tls.address).with_context(|| {
            format!(
                "api.address: cannot listen on {} (in use by another process, or not an address of this machine)",
                tls.address
            )
        })?;
        Ok(ApiTcp { listener, tls })
    }

    /// The section `config save` writes (at the port bound).
    pub fn section(&self) -> ApiSection {
        self.tls.section(self.listener.local_addr().ok())
    }

    /// The server's TLS settings, from the files (read now): clients must present a
    /// certificate that chains to the client CA.
    pub fn server_tls(&self) -> Result<ServerTlsConfig> {
        let t = &self.tls;
        let cert = read_pem("target's certificate", &t.cert, "CERTIFICATE")?;
        let key = read_pem("target's private key", &t.key, "PRIVATE KEY")?;
        let ca = read_pem("clients' CA certificate", &t.client_ca, "CERTIFICATE")?;
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(false)
            .timeout(std::time::Duration::from_secs(10)))
    }

    /// The hot upgrade's `api_tls=` value: the three paths, hex-encoded (any byte may
    /// be in a path; the REACTORS line is split at spaces).
    pub fn handover_value(&self) -> String {
        let t = &self.tls;
        [&t.cert, &t.key, &t.client_ca]
            .iter()
            .map(|p| hex(p.as_os_str().as_encoded_bytes()))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The successor's side: the listener handed over and the `api_tls=` value.
    pub fn adopt(listener: TcpListener, value: &str) -> Result<ApiTcp> {
        let paths: Vec<PathBuf> = value
            .split(':')
            .map(|h| unhex(h).map(|b| PathBuf::from(String::from_utf8_lossy(&b).into_owned())))
            .collect::<Result<_>>()?;
        let [cert, key, client_ca]: [PathBuf; 3] = paths
            .try_into()
            .map_err(|_| anyhow!("api_tls= names {value:?}, not three paths"))?;
        let address = listener.local_addr().context("the API's TCP socket")?;
        let t = ApiTcp {
            listener,
            tls: ApiTls {
                address,
                cert,
                key,
                client_ca,
            },
        };
        // Refuse the upgrade (the running target keeps serving) rather than come up
        // without the TCP API.
        t.server_tls().context("the TCP API's TLS files")?;
        Ok(t)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("{s:?} is not hex");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(s.get(i..i + 2).unwrap_or("x"), 16)
                .map_err(|_| anyhow!("{s:?} is not hex"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_survive_the_handover_line() {
        for p in ["/etc/lp/api.crt", "/tmp/with space/ü.pem", ""] {
            assert_eq!(unhex(&hex(p.as_bytes())).expect("hex"), p.as_bytes());
        }
        assert!(unhex("abc").is_err());
        assert!(unhex("zz").is_err());
    }
}
