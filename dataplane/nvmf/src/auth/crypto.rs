//! The arithmetic of DH-HMAC-CHAP: the three HMACs, the FFDHE groups of RFC 7919 and
//! the values the exchange computes from them (NVMe Base 2.0 section 8.13.5).

use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use lightpool_spec::auth::{dhgroup_id, hash_id, MAX_HASH_LEN};
use num_bigint::BigUint;
use sha2::{Digest, Sha256, Sha384, Sha512};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// A hash function DH-HMAC-CHAP may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashFn {
    Sha256,
    Sha384,
    Sha512,
}

impl HashFn {
    pub const ALL: [HashFn; 3] = [HashFn::Sha256, HashFn::Sha384, HashFn::Sha512];

    pub fn from_id(id: u8) -> Option<HashFn> {
        match id {
            hash_id::SHA256 => Some(HashFn::Sha256),
            hash_id::SHA384 => Some(HashFn::Sha384),
            hash_id::SHA512 => Some(HashFn::Sha512),
            _ => None,
        }
    }

    pub fn id(self) -> u8 {
        match self {
            HashFn::Sha256 => hash_id::SHA256,
            HashFn::Sha384 => hash_id::SHA384,
            HashFn::Sha512 => hash_id::SHA512,
        }
    }

    /// Output length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            HashFn::Sha256 => 32,
            HashFn::Sha384 => 48,
            HashFn::Sha512 => 64,
        }
    }

    /// The name configurations use (and Linux's nvmet: `hmac(sha256)` is also read).
    pub fn name(self) -> &'static str {
        match self {
            HashFn::Sha256 => "sha256",
            HashFn::Sha384 => "sha384",
            HashFn::Sha512 => "sha512",
        }
    }

    pub fn from_name(s: &str) -> Option<HashFn> {
        let s = s.trim().to_ascii_lowercase();
        let s = s
            .strip_prefix("hmac(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or(&s);
        HashFn::ALL
            .into_iter()
            .find(|h| h.name() == s.replace('-', ""))
    }

    /// HMAC with this hash over the concatenation of `parts`; `out` takes
    /// [`HashFn::len`] bytes.
    pub fn hmac(self, key: &[u8], parts: &[&[u8]], out: &mut [u8]) {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]], out: &mut [u8]) {
            let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .expect("HMAC takes keys of any length");
            for p in parts {
                m.update(p);
            }
            let r = m.finalize().into_bytes();
            out[..r.len()].copy_from_slice(&r);
        }
        match self {
            HashFn::Sha256 => run::<Hmac<Sha256>>(key, parts, out),
            HashFn::Sha384 => run::<Hmac<Sha384>>(key, parts, out),
            HashFn::Sha512 => run::<Hmac<Sha512>>(key, parts, out),
        }
    }

    /// The plain hash of `data` into `out` ([`HashFn::len`] bytes).
    pub fn digest(self, data: &[u8], out: &mut [u8]) {
        match self {
            HashFn::Sha256 => out[..32].copy_from_slice(&Sha256::digest(data)),
            HashFn::Sha384 => out[..48].copy_from_slice(&Sha384::digest(data)),
            HashFn::Sha512 => out[..64].copy_from_slice(&Sha512::digest(data)),
        }
    }
}

/// A Diffie-Hellman group DH-HMAC-CHAP may use: none, or an RFC 7919 FFDHE group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DhGroup {
    Null,
    Ffdhe2048,
    Ffdhe3072,
    Ffdhe4096,
    Ffdhe6144,
    Ffdhe8192,
}

impl DhGroup {
    pub const ALL: [DhGroup; 6] = [
        DhGroup::Null,
        DhGroup::Ffdhe2048,
        DhGroup::Ffdhe3072,
        DhGroup::Ffdhe4096,
        DhGroup::Ffdhe6144,
        DhGroup::Ffdhe8192,
    ];

    pub fn from_id(id: u8) -> Option<DhGroup> {
        DhGroup::ALL.into_iter().find(|g| g.id() == id)
    }

    pub fn id(self) -> u8 {
        match self {
            DhGroup::Null => dhgroup_id::NULL,
            DhGroup::Ffdhe2048 => dhgroup_id::FFDHE2048,
            DhGroup::Ffdhe3072 => dhgroup_id::FFDHE3072,
            DhGroup::Ffdhe4096 => dhgroup_id::FFDHE4096,
            DhGroup::Ffdhe6144 => dhgroup_id::FFDHE6144,
            DhGroup::Ffdhe8192 => dhgroup_id::FFDHE8192,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DhGroup::Null => "null",
            DhGroup::Ffdhe2048 => "ffdhe2048",
            DhGroup::Ffdhe3072 => "ffdhe3072",
            DhGroup::Ffdhe4096 => "ffdhe4096",
            DhGroup::Ffdhe6144 => "ffdhe6144",
            DhGroup::Ffdhe8192 => "ffdhe8192",
        }
    }

    pub fn from_name(s: &str) -> Option<DhGroup> {
        let s = s.trim().to_ascii_lowercase();
        DhGroup::ALL.into_iter().find(|g| g.name() == s)
    }

    /// Bits of the group's prime (0 for the NULL group).
    pub fn bits(self) -> u64 {
        match self {
            DhGroup::Null => 0,
            DhGroup::Ffdhe2048 => 2048,
            DhGroup::Ffdhe3072 => 3072,
            DhGroup::Ffdhe4096 => 4096,
            DhGroup::Ffdhe6144 => 6144,
            DhGroup::Ffdhe8192 => 8192,
        }
    }

    /// Bytes of an exponential or shared secret in this group (as the wire carries them).
    pub fn bytes(self) -> usize {
        (self.bits() / 8) as usize
    }

    /// RFC 7919's X for the group: the smallest value that makes the prime safe.
    fn x(self) -> u64 {
        match self {
            DhGroup::Null => 0,
            DhGroup::Ffdhe2048 => 560_316,
            DhGroup::Ffdhe3072 => 2_625_351,
            DhGroup::Ffdhe4096 => 5_736_041,
            DhGroup::Ffdhe6144 => 15_705_020,
            DhGroup::Ffdhe8192 => 10_965_728,
        }
    }

    /// The group's prime, built once from RFC 7919's formula:
    /// p = 2^b - 2^(b-64) + (floor(2^(b-130) e) + X) * 2^64 - 1 (the generator is 2).
    pub fn prime(self) -> Option<&'static BigUint> {
        static PRIMES: [OnceLock<BigUint>; 6] = [
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
        ];
        if self == DhGroup::Null {
            return None;
        }
        Some(PRIMES[usize::from(self.id())].get_or_init(|| {
            let b = self.bits();
            let one = BigUint::from(1u8);
            let e = e_scaled(b - 130);
            (&one << b) - (&one << (b - 64)) + ((e + BigUint::from(self.x())) << 64u32) - one
        }))
    }
}

/// floor(2^n * e), from e = sum 1/k!, computed with 64 guard bits (the terms dropped
/// below them add up to far less than one unit of the result).
fn e_scaled(n: u64) -> BigUint {
    const GUARD: u64 = 64;
    let mut term = BigUint::from(1u8) << (n + GUARD);
    let mut sum = term.clone();
    let mut k = 1u32;
    while term.bits() > 0 {
        term /= k;
        sum += &term;
        k += 1;
    }
    sum >> GUARD
}

/// The exponent bits of a private value: at least twice the security strength of the
/// largest group (RFC 7919 section 5.2, NIST SP 800-56A), and short enough that a
/// modular exponentiation stays a few milliseconds on the control path.
const PRIVATE_BITS: usize = 512;

/// One side's ephemeral DH key pair, for one transaction. (`BigUint` cannot wipe its
/// digits; the byte forms of the private value and of the shared secret are wiped.)
pub struct DhKey {
    group: DhGroup,
    x: BigUint,
    public: Vec<u8>,
}

/// A DH exchange that cannot go on; the AUTH_Failure explanation is "DH group not
/// usable".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DhError {
    #[error("the NULL group has no key")]
    NullGroup,
    #[error("the peer's exponential is {got} bytes, the group takes {want}")]
    Length { got: usize, want: usize },
    #[error("the peer's exponential is outside 2..p-2")]
    OutOfRange,
    #[error("no random bytes from the operating system")]
    Random,
}

fn to_fixed(v: &BigUint, len: usize) -> Vec<u8> {
    let mut raw = v.to_bytes_be();
    let mut out = vec![0u8; len.saturating_sub(raw.len())];
    out.extend_from_slice(&raw);
    raw.zeroize();
    out
}

impl DhKey {
    pub fn generate(group: DhGroup) -> Result<DhKey, DhError> {
        let p = group.prime().ok_or(DhError::NullGroup)?;
        let mut bytes = Zeroizing::new([0u8; PRIVATE_BITS / 8]);
        getrandom::getrandom(bytes.as_mut()).map_err(|_| DhError::Random)?;
        bytes[0] |= 0x80;
        let x = BigUint::from_bytes_be(bytes.as_ref());
        let public = to_fixed(&BigUint::from(2u8).modpow(&x, p), group.bytes());
        Ok(DhKey { group, x, public })
    }

    /// g^x mod p, as many bytes as the group's prime.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// The shared secret with the peer's exponential `peer`, as many bytes as the
    /// group's prime (leading zeros kept, as Linux's kpp gives it).
    pub fn shared(&self, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, DhError> {
        let p = self.group.prime().ok_or(DhError::NullGroup)?;
        if peer.len() != self.group.bytes() {
            return Err(DhError::Length {
                got: peer.len(),
                want: self.group.bytes(),
            });
        }
        let y = BigUint::from_bytes_be(peer);
        let one = BigUint::from(1u8);
        if y <= one || y >= p - &one {
            return Err(DhError::OutOfRange);
        }
        let s = y.modpow(&self.x, p);
        Ok(Zeroizing::new(to_fixed(&s, self.group.bytes())))
    }
}

/// A hash-sized value on the stack (the longest hash is SHA-512's).
pub type HashBuf = Zeroizing<[u8; MAX_HASH_LEN]>;

fn hash_buf() -> HashBuf {
    Zeroizing::new([0u8; MAX_HASH_LEN])
}

/// The challenge a response is computed over: C itself with the NULL group, else
/// HMAC(H(Ks), C) (section 8.13.5.3: the augmented challenge).
pub fn challenge_for(hash: HashFn, session_key: Option<&[u8]>, c: &[u8]) -> HashBuf {
    let mut out = hash_buf();
    let n = hash.digest_len();
    match session_key {
        None => out[..n].copy_from_slice(&c[..n]),
        Some(ks) => {
            let mut hk = hash_buf();
            hash.digest(ks, &mut hk[..]);
            hash.hmac(&hk[..n], &[&c[..n]], &mut out[..]);
        }
    }
    out
}

/// R1 = HMAC(Kh', Ca1 || S1 || T_ID || SC_C || "HostHost" || NQNh || 00h || NQNc), where
/// Kh' is the host's transformed key.
pub fn host_response(
    hash: HashFn,
    key: &[u8],
    challenge: &[u8],
    s1: u32,
    t_id: u16,
    hostnqn: &str,
    subnqn: &str,
) -> HashBuf {
    let mut out = hash_buf();
    hash.hmac(
        key,
        &[
            &challenge[..hash.digest_len()],
            &s1.to_le_bytes(),
            &t_id.to_le_bytes(),
            &[0],
            b"HostHost",
            hostnqn.as_bytes(),
            &[0],
            subnqn.as_bytes(),
        ],
        &mut out[..],
    );
    out
}

/// R2 = HMAC(Kc', Ca2 || S2 || T_ID || 00h || "Controller" || NQNc || 00h || NQNh), where
/// Kc' is the controller's transformed key.
pub fn ctrl_response(
    hash: HashFn,
    key: &[u8],
    challenge: &[u8],
    s2: u32,
    t_id: u16,
    subnqn: &str,
    hostnqn: &str,
) -> HashBuf {
    let mut out = hash_buf();
    hash.hmac(
        key,
        &[
            &challenge[..hash.digest_len()],
            &s2.to_le_bytes(),
            &t_id.to_le_bytes(),
            &[0],
            b"Controller",
            subnqn.as_bytes(),
            &[0],
            hostnqn.as_bytes(),
        ],
        &mut out[..],
    );
    out
}

/// Compare two secrets-derived values in constant time.
pub fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Random bytes from the operating system.
pub fn random(out: &mut [u8]) -> Result<(), DhError> {
    getrandom::getrandom(out).map_err(|_| DhError::Random)
}
