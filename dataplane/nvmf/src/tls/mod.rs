//! Keys of NVMe/TCP over TLS 1.3 (NVMe/TCP transport specification 1.1, section 3.6.1,
//! from TP 8011): the PSK interchange format nvme-cli's `gen-tls-key` writes
//! (`NVMeTLSkey-1:HH:<base64(key || crc32)>:`), the retained PSK derived from a
//! configured one, the TLS PSK identity a host offers and the TLS PSK derived from it,
//! computed exactly as libnvme computes them (`src/nvme/linux.c`: `derive_retained_key`,
//! `derive_psk_digest`, `gen_tls_identity`, `derive_tls_key`, and their `_compat`
//! forms, which older nvme-cli releases used and `--compat` still selects).
//!
//! [`Keyring`]: the PSKs a target holds per (host, subsystem) and the per-listener
//! [`Secure`] and [`Ktls`] settings. No I/O and nothing from a TLS library: a transport turns
//! [`TlsPsk`]s into what its TLS library takes. None of this is on the I/O path.

mod key;
mod keyring;

pub use key::{ConfiguredPsk, Derivation, IdentityVersion, PskError, PskHash, TlsPsk};
pub use keyring::{Found, Keyring, Ktls, Secure};

#[cfg(test)]
mod tests;
