//! Certificates for the TLS tests, made fresh for each test: a CA, the target's
//! certificate (for 127.0.0.1 and localhost), a client's, and a "rogue" CA with a
//! client certificate of its own that the target must refuse.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// The PEM files written.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA that signed `server_*` and `client_*`.
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Another CA, and a client certificate it signed.
    pub rogue_ca: PathBuf,
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("CA key");
    let cert = p.self_signed(&key).expect("CA certificate");
    (p, key, cert.pem())
}

fn leaf(name: &str, sans: &[&str], issuer: &Issuer<'_, KeyPair>) -> (String, String) {
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("params");
    p.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, issuer).expect("certificate");
    (cert.pem(), key.serialize_pem())
}

/// Writes a fresh set of certificates into `dir`.
pub fn make(dir: &Path) -> Pki {
    std::fs::create_dir_all(dir).expect("certificate dir");
    let w = |name: &str, pem: &str| {
        let p = dir.join(name);
        std::fs::write(&p, pem).expect("write PEM");
        p
    };
    let (ca_params, ca_key, ca_pem) = ca("lightpool test CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let (server_cert, server_key) = leaf("lightpool-target", &["127.0.0.1", "localhost"], &issuer);
    let (client_cert, client_key) = leaf("operator", &[], &issuer);
    let (rogue_params, rogue_ca_key, rogue_pem) = ca("someone else's CA");
    let rogue = Issuer::new(rogue_params, rogue_ca_key);
    let (rogue_cert, rogue_key) = leaf("intruder", &[], &rogue);
    Pki {
        ca: w("ca.crt", &ca_pem),
        server_cert: w("server.crt", &server_cert),
        server_key: w("server.key", &server_key),
        client_cert: w("client.crt", &client_cert),
        client_key: w("client.key", &client_key),
        rogue_ca: w("rogue-ca.crt", &rogue_pem),
        rogue_cert: w("rogue.crt", &rogue_cert),
        rogue_key: w("rogue.key", &rogue_key),
    }
}

impl Pki {
    /// The `[api]` section serving on `address` with these files.
    pub fn api_section(&self, address: &str) -> String {
        format!(
            "[api]\naddress = \"{address}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"\n",
            self.server_cert.display(),
            self.server_key.display(),
            self.ca.display()
        )
    }
}
