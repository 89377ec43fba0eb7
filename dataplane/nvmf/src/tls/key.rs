//! The configured, retained and TLS PSKs and the PSK identity.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroizing;

use crate::auth::HashFn;

/// A PSK interchange string that cannot be read. Each message names what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PskError {
    #[error("a TLS PSK starts with \"NVMeTLSkey-1:\" (as nvme gen-tls-key writes it)")]
    Prefix,
    #[error("the PSK hash {0:?} is unknown: use 00 (none), 01 (SHA-256) or 02 (SHA-384)")]
    HashId(String),
    #[error("the key part is not base64: {0}")]
    Base64(String),
    #[error("the key is {0} bytes: it must be 32 or 48 bytes followed by a 4-byte CRC-32")]
    Length(usize),
    #[error("hash {hash} takes {want}-byte keys, this one has {got} bytes")]
    HashLength {
        hash: &'static str,
        want: usize,
        got: usize,
    },
    #[error("the CRC-32 at the end of the key does not match it: the key was mistyped or cut")]
    Crc,
    #[error("no random bytes from the operating system")]
    Random,
    #[error("a PSK identity has no room for NQNs this long ({0} bytes)")]
    TooLong(usize),
}

/// The hash of a PSK: the transformation of a configured PSK into the retained one, and
/// the hash of the cipher suite the TLS PSK is for (SHA-256:
/// TLS_AES_128_GCM_SHA256, SHA-384: TLS_AES_256_GCM_SHA384).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PskHash {
    Sha256,
    Sha384,
}

impl PskHash {
    /// The number in the interchange format and in the identity (`NVMe1R01`).
    pub fn id(self) -> u8 {
        match self {
            PskHash::Sha256 => 1,
            PskHash::Sha384 => 2,
        }
    }

    pub fn key_len(self) -> usize {
        self.hash().digest_len()
    }

    pub fn name(self) -> &'static str {
        self.hash().name()
    }

    /// The TLS 1.3 cipher suite whose hash this is.
    pub fn cipher_suite(self) -> &'static str {
        match self {
            PskHash::Sha256 => "TLS_AES_128_GCM_SHA256",
            PskHash::Sha384 => "TLS_AES_256_GCM_SHA384",
        }
    }

    fn hash(self) -> HashFn {
        match self {
            PskHash::Sha256 => HashFn::Sha256,
            PskHash::Sha384 => HashFn::Sha384,
        }
    }

    /// What libnvme's `default_hmac` picks for an untransformed key of `len` bytes.
    fn for_len(len: usize) -> Option<PskHash> {
        match len {
            32 => Some(PskHash::Sha256),
            48 => Some(PskHash::Sha384),
            _ => None,
        }
    }
}

/// Which PSK identity a host offers: version 0 (`NVMe0R0x <hostnqn> <subnqn>`, the TLS
/// PSK derived with the identity as context) or version 1 (`NVMe1R0x <hostnqn> <subnqn>
/// <digest>`, what nvme-cli 2.x and Linux's `nvme connect --tls` use by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityVersion {
    V0,
    V1,
}

/// How the HKDF labels are laid out: as RFC 8446's HkdfLabel (libnvme since 1.11, the
/// default) or as libnvme did before (length little-endian, no length bytes before the
/// label and the context; nvme-cli `--compat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Derivation {
    Standard,
    Compat,
}

/// A configured PSK: what the interchange string holds. Its bytes never appear in
/// `Debug` output and are wiped when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfiguredPsk {
    /// The hash that transforms it into the retained PSK (None: used as it is).
    transform: Option<PskHash>,
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ConfiguredPsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ConfiguredPsk({} bytes, transform {})",
            self.key.len(),
            self.transform.map_or("none", PskHash::name)
        )
    }
}

/// A TLS PSK and the identity it goes with: what the TLS handshake uses.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsPsk {
    pub identity: String,
    pub key: Zeroizing<Vec<u8>>,
    /// The hash of the cipher suite it may be used with.
    pub hash: PskHash,
}

impl std::fmt::Debug for TlsPsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPsk")
            .field("identity", &self.identity)
            .field("hash", &self.hash.name())
            .finish()
    }
}

/// The longest NQN (NVMe Base 2.0 section 4.5).
const NQN_MAX: usize = 223;

impl ConfiguredPsk {
    /// Read the interchange string (the trailing colon may be left out).
    pub fn parse(s: &str) -> Result<ConfiguredPsk, PskError> {
        let s = s.trim();
        let rest = s.strip_prefix("NVMeTLSkey-1:").ok_or(PskError::Prefix)?;
        let (hh, rest) = rest
            .split_once(':')
            .ok_or_else(|| PskError::HashId(rest.to_string()))?;
        let transform = match hh {
            "00" => None,
            "01" => Some(PskHash::Sha256),
            "02" => Some(PskHash::Sha384),
            other => return Err(PskError::HashId(other.to_string())),
        };
        let b64 = rest.strip_suffix(':').unwrap_or(rest);
        let mut raw = Zeroizing::new(
            STANDARD
                .decode(b64)
                .map_err(|e| PskError::Base64(e.to_string()))?,
        );
        if raw.len() != 36 && raw.len() != 52 {
            return Err(PskError::Length(raw.len().saturating_sub(4)));
        }
        let n = raw.len() - 4;
        let crc = u32::from_le_bytes([raw[n], raw[n + 1], raw[n + 2], raw[n + 3]]);
        if crc32fast::hash(&raw[..n]) != crc {
            return Err(PskError::Crc);
        }
        raw.truncate(n);
        ConfiguredPsk::new(transform, &raw)
    }

    /// A configured PSK from its bytes: 32 or 48 of them, and as many as the
    /// transformation hash gives when there is one.
    pub fn new(transform: Option<PskHash>, key: &[u8]) -> Result<ConfiguredPsk, PskError> {
        if key.len() != 32 && key.len() != 48 {
            return Err(PskError::Length(key.len()));
        }
        if let Some(h) = transform.filter(|h| h.key_len() != key.len()) {
            return Err(PskError::HashLength {
                hash: h.name(),
                want: h.key_len(),
                got: key.len(),
            });
        }
        Ok(ConfiguredPsk {
            transform,
            key: Zeroizing::new(key.to_vec()),
        })
    }

    /// A new random PSK (what `nvme gen-tls-key --hmac=H` does): 32 bytes for SHA-256,
    /// 48 for SHA-384.
    pub fn generate(transform: Option<PskHash>, len: usize) -> Result<ConfiguredPsk, PskError> {
        let mut key = Zeroizing::new(vec![0u8; len]);
        crate::auth::crypto::random(&mut key).map_err(|_| PskError::Random)?;
        ConfiguredPsk::new(transform, &key)
    }

    /// The interchange string (libnvme's `nvme_export_tls_key_versioned`).
    pub fn to_interchange(&self) -> String {
        let mut raw = Zeroizing::new(self.key.to_vec());
        raw.extend_from_slice(&crc32fast::hash(&self.key).to_le_bytes());
        let hh = self.transform.map_or(0, PskHash::id);
        let b64 = Zeroizing::new(STANDARD.encode(raw.as_slice()));
        format!("NVMeTLSkey-1:{hh:02}:{}:", b64.as_str())
    }

    pub fn transform(&self) -> Option<PskHash> {
        self.transform
    }

    /// The hash of the cipher suite the derived TLS PSK is for: the transformation
    /// hash, else the one that fits the key's length.
    pub fn cipher_hash(&self) -> PskHash {
        self.transform
            .or_else(|| PskHash::for_len(self.key.len()))
            .expect("a configured PSK is 32 or 48 bytes")
    }

    /// The retained PSK (libnvme `derive_retained_key`): HKDF-Expand-Label(
    /// HKDF-Extract(0, configured), "HostNQN", hostnqn, length) with the transformation
    /// hash, or the configured PSK itself when there is none.
    pub fn retained(&self, hostnqn: &str, d: Derivation) -> Result<Zeroizing<Vec<u8>>, PskError> {
        let Some(h) = self.transform else {
            return Ok(self.key.clone());
        };
        check_nqn(hostnqn)?;
        let n = self.key.len();
        let info = match d {
            Derivation::Standard => {
                lightpool_spec::tcp::hkdf_label(n, b"HostNQN", hostnqn.as_bytes())
            }
            Derivation::Compat => compat_label(n, b"HostNQN", hostnqn.as_bytes()),
        };
        Ok(hkdf(h.hash(), &self.key, &info, n))
    }

    /// The TLS PSK identity and the TLS PSK for the pair `hostnqn`, `subnqn`
    /// (libnvme `derive_nvme_keys`).
    pub fn tls_psk(
        &self,
        hostnqn: &str,
        subnqn: &str,
        v: IdentityVersion,
        d: Derivation,
    ) -> Result<TlsPsk, PskError> {
        check_nqn(hostnqn)?;
        check_nqn(subnqn)?;
        let retained = self.retained(hostnqn, d)?;
        let hash = self.cipher_hash();
        let n = retained.len();
        let (identity, context) = match v {
            IdentityVersion::V0 => {
                let id = format!("NVMe0R{:02} {hostnqn} {subnqn}", hash.id());
                (id.clone(), id)
            }
            IdentityVersion::V1 => {
                // derive_psk_digest: HMAC(retained, "hostnqn subnqn NVMe-over-Fabrics").
                let mut mac = Zeroizing::new(vec![0u8; hash.key_len()]);
                hash.hash().hmac(
                    &retained,
                    &[
                        hostnqn.as_bytes(),
                        b" ",
                        subnqn.as_bytes(),
                        b" ",
                        b"NVMe-over-Fabrics",
                    ],
                    &mut mac,
                );
                let digest = STANDARD.encode(&mac[..hash.key_len().min(n)]);
                let id = format!("NVMe1R{:02} {hostnqn} {subnqn} {digest}", hash.id());
                (id, format!("{:02} {digest}", hash.id()))
            }
        };
        let info = match d {
            Derivation::Standard => {
                lightpool_spec::tcp::hkdf_label(n, b"nvme-tls-psk", context.as_bytes())
            }
            Derivation::Compat => compat_label(n, b"nvme-tls-psk", context.as_bytes()),
        };
        Ok(TlsPsk {
            identity,
            key: hkdf(hash.hash(), &retained, &info, n),
            hash,
        })
    }

    /// Every identity a host holding this key for the pair may offer, with its TLS PSK:
    /// both identity versions, both derivations (what a target matches the offered
    /// identity against).
    pub fn all_tls_psks(&self, hostnqn: &str, subnqn: &str) -> Result<Vec<TlsPsk>, PskError> {
        let mut out: Vec<TlsPsk> = Vec::with_capacity(4);
        for v in [IdentityVersion::V1, IdentityVersion::V0] {
            for d in [Derivation::Standard, Derivation::Compat] {
                let p = self.tls_psk(hostnqn, subnqn, v, d)?;
                // The version-0 identity does not depend on the derivation (only its
                // key does): the standard one is taken for it.
                if !out.iter().any(|o| o.identity == p.identity) {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }
}

fn check_nqn(nqn: &str) -> Result<(), PskError> {
    if nqn.len() > NQN_MAX {
        return Err(PskError::TooLong(nqn.len()));
    }
    Ok(())
}

/// libnvme's earlier layout (`derive_*_compat`): length little-endian, then "tls13 " +
/// label + context with no length bytes.
fn compat_label(len: usize, label: &[u8], context: &[u8]) -> Vec<u8> {
    let mut info = Vec::with_capacity(2 + 6 + label.len() + context.len());
    info.extend_from_slice(&(len as u16).to_le_bytes());
    info.extend_from_slice(b"tls13 ");
    info.extend_from_slice(label);
    info.extend_from_slice(context);
    info
}

/// HKDF (RFC 5869) with no salt: Expand(Extract(zeros, ikm), info, len).
pub(super) fn hkdf(h: HashFn, ikm: &[u8], info: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let hl = h.digest_len();
    let mut prk = Zeroizing::new(vec![0u8; hl]);
    h.hmac(&vec![0u8; hl], &[ikm], &mut prk);
    let mut out = Zeroizing::new(Vec::with_capacity(len + hl));
    let mut t = Zeroizing::new(vec![0u8; hl]);
    let mut i = 1u8;
    while out.len() < len {
        // T(i) = HMAC(PRK, T(i-1) || info || i), T(0) empty.
        let prev = &out[out.len().saturating_sub(hl)..];
        h.hmac(&prk, &[prev, info, &[i]], &mut t);
        out.extend_from_slice(&t);
        i += 1;
    }
    out.truncate(len);
    out
}
