//! DH-HMAC-CHAP secrets in the representation nvme-cli's `gen-dhchap-key` writes and
//! Linux reads: `DHHC-1:<hh>:<base64(key || crc32(key) little-endian)>:`, where `hh` is
//! 00 (use the key as it is) or the hash (01 SHA-256, 02 SHA-384, 03 SHA-512) that
//! transforms it with the NQN before use.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::{Zeroize, Zeroizing};

use super::crypto::HashFn;

/// Key lengths a secret may have (bytes, before the CRC).
pub const KEY_LENGTHS: [usize; 3] = [32, 48, 64];

/// A secret that cannot be read. Each message names what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a DH-HMAC-CHAP secret starts with \"DHHC-1:\" (as nvme gen-dhchap-key writes it)")]
    Prefix,
    #[error("the transformation hash {0:?} is unknown: use 00 (none), 01 (SHA-256), 02 (SHA-384) or 03 (SHA-512)")]
    HashId(String),
    #[error("the key part is not base64: {0}")]
    Base64(String),
    #[error("the key is {0} bytes: it must be 32, 48 or 64 bytes followed by a 4-byte CRC-32")]
    Length(usize),
    #[error("the CRC-32 at the end of the key does not match it: the secret was mistyped or cut")]
    Crc,
    #[error("no random bytes from the operating system")]
    Random,
}

/// A host or controller secret. Its bytes never appear in `Debug` output and are wiped
/// when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// The hash that transforms the key (None: the key is used as it is).
    transform: Option<HashFn>,
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Secret({} bytes, transform {})",
            self.key.len(),
            self.transform.map_or("none", HashFn::name)
        )
    }
}

impl Secret {
    /// Read the DHHC-1 representation (the trailing colon may be left out).
    pub fn parse(s: &str) -> Result<Secret, SecretError> {
        let s = s.trim();
        let rest = s.strip_prefix("DHHC-1:").ok_or(SecretError::Prefix)?;
        let (hh, rest) = rest
            .split_once(':')
            .ok_or_else(|| SecretError::HashId(rest.to_string()))?;
        let transform = match hh {
            "00" => None,
            "01" => Some(HashFn::Sha256),
            "02" => Some(HashFn::Sha384),
            "03" => Some(HashFn::Sha512),
            other => return Err(SecretError::HashId(other.to_string())),
        };
        let b64 = rest.strip_suffix(':').unwrap_or(rest);
        let mut raw = Zeroizing::new(
            STANDARD
                .decode(b64)
                .map_err(|e| SecretError::Base64(e.to_string()))?,
        );
        if !KEY_LENGTHS.iter().any(|&n| n + 4 == raw.len()) {
            return Err(SecretError::Length(raw.len().saturating_sub(4)));
        }
        let n = raw.len() - 4;
        let crc = u32::from_le_bytes([raw[n], raw[n + 1], raw[n + 2], raw[n + 3]]);
        if crc32fast::hash(&raw[..n]) != crc {
            return Err(SecretError::Crc);
        }
        raw.truncate(n);
        Secret::new(transform, &raw)
    }

    /// A secret from its key bytes.
    pub fn new(transform: Option<HashFn>, key: &[u8]) -> Result<Secret, SecretError> {
        if !KEY_LENGTHS.contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(Secret {
            transform,
            key: Zeroizing::new(key.to_vec()),
        })
    }

    /// A new random secret (what `nvme gen-dhchap-key` does).
    pub fn generate(transform: Option<HashFn>, len: usize) -> Result<Secret, SecretError> {
        let mut key = Zeroizing::new(vec![0u8; len]);
        super::crypto::random(&mut key).map_err(|_| SecretError::Random)?;
        Secret::new(transform, &key)
    }

    /// The DHHC-1 representation.
    pub fn to_dhhc1(&self) -> String {
        let mut raw = Zeroizing::new(self.key.to_vec());
        raw.extend_from_slice(&crc32fast::hash(&self.key).to_le_bytes());
        let hh = self.transform.map_or(0, HashFn::id);
        let mut b64 = STANDARD.encode(raw.as_slice());
        let s = format!("DHHC-1:{hh:02}:{b64}:");
        b64.zeroize();
        s
    }

    pub fn transform_hash(&self) -> Option<HashFn> {
        self.transform
    }

    pub fn len(&self) -> usize {
        self.key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.key.is_empty()
    }

    /// The key as the exchange uses it: HMAC(key, NQN || "NVMe-over-Fabrics") with the
    /// transformation hash, or the key itself (section 8.13.5.7; Linux's
    /// `nvme_auth_transform_key`). The host's key is transformed with the host NQN,
    /// the controller's with the subsystem NQN.
    pub fn transformed(&self, nqn: &str) -> Zeroizing<Vec<u8>> {
        match self.transform {
            None => self.key.clone(),
            Some(h) => {
                let mut out = Zeroizing::new(vec![0u8; h.digest_len()]);
                h.hmac(&self.key, &[nqn.as_bytes(), b"NVMe-over-Fabrics"], &mut out);
                out
            }
        }
    }
}
