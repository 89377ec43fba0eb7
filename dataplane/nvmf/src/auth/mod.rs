//! In-band authentication (DH-HMAC-CHAP, NVMe Base 2.0 section 8.13): the keys a
//! subsystem holds per host, the arithmetic, and the controller's side of the
//! transaction. A queue whose host has a key answers Connect with AUTHREQ.ATR and
//! refuses every command but Authentication Send/Receive until the transaction
//! succeeds (see `queue::fabrics`). None of this is on the I/O path.

pub mod crypto;
pub mod exchange;
pub mod secret;

pub use crypto::{DhGroup, HashFn};
pub use exchange::{Event, Exchange, Peer};
pub use secret::{Secret, SecretError};

use std::time::Duration;

/// How long a host has for each step of an authentication transaction (from the
/// Connect to its Negotiate, and from each message to the next): the keep-alive
/// timeout the host asked for, or 120 s when it asked for none, as Linux nvmet
/// does; never under [`AUTH_TIMEOUT_FLOOR`], so that a host computing a large DH
/// group on a slow machine is not cut off by a short keep-alive timeout.
pub fn auth_timeout(kato_ms: u32) -> Duration {
    if kato_ms == 0 {
        return Duration::from_secs(120);
    }
    Duration::from_millis(u64::from(kato_ms)).max(AUTH_TIMEOUT_FLOOR)
}

/// The shortest time [`auth_timeout`] gives.
pub const AUTH_TIMEOUT_FLOOR: Duration = Duration::from_secs(10);

/// The DH-HMAC-CHAP keys and parameters a subsystem holds for one host.
#[derive(Clone, PartialEq, Eq)]
pub struct HostKeys {
    /// The host's secret: the host proves it holds it.
    pub host: Secret,
    /// The controller's secret, for bidirectional authentication (the controller
    /// proves it holds it when the host asks).
    pub ctrl: Option<Secret>,
    /// The hash the controller picks when the host offers it.
    pub hash: HashFn,
    /// The DH group the controller picks when the host offers it.
    pub dhgroup: DhGroup,
}

impl std::fmt::Debug for HostKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKeys")
            .field("bidirectional", &self.ctrl.is_some())
            .field("hash", &self.hash.name())
            .field("dhgroup", &self.dhgroup.name())
            .finish()
    }
}

/// A host's keys as text (configuration file, management API, state region).
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostKeysText {
    /// DHHC-1 host secret.
    pub key: String,
    /// DHHC-1 controller secret (empty: unidirectional).
    #[serde(default)]
    pub ctrl_key: String,
    /// sha256 (default), sha384 or sha512.
    #[serde(default)]
    pub hash: String,
    /// null (default), ffdhe2048, ffdhe3072, ffdhe4096, ffdhe6144 or ffdhe8192.
    #[serde(default)]
    pub dhgroup: String,
}

impl std::fmt::Debug for HostKeysText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKeysText")
            .field("key", &"<redacted>")
            .field(
                "ctrl_key",
                &(!self.ctrl_key.is_empty()).then_some("<redacted>"),
            )
            .field("hash", &self.hash)
            .field("dhgroup", &self.dhgroup)
            .finish()
    }
}

/// Keys that cannot be used; each message names the field and what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    #[error("key: {0}")]
    Key(SecretError),
    #[error("ctrl_key: {0}")]
    CtrlKey(SecretError),
    #[error("hash {0:?} is unknown: use sha256, sha384 or sha512")]
    Hash(String),
    #[error("dhgroup {0:?} is unknown: use null, ffdhe2048, ffdhe3072, ffdhe4096, ffdhe6144 or ffdhe8192")]
    DhGroup(String),
}

impl HostKeysText {
    pub fn parse(&self) -> Result<HostKeys, KeysError> {
        let host = Secret::parse(&self.key).map_err(KeysError::Key)?;
        let ctrl = if self.ctrl_key.trim().is_empty() {
            None
        } else {
            Some(Secret::parse(&self.ctrl_key).map_err(KeysError::CtrlKey)?)
        };
        let hash = if self.hash.trim().is_empty() {
            HashFn::Sha256
        } else {
            HashFn::from_name(&self.hash).ok_or_else(|| KeysError::Hash(self.hash.clone()))?
        };
        let dhgroup = if self.dhgroup.trim().is_empty() {
            DhGroup::Null
        } else {
            DhGroup::from_name(&self.dhgroup)
                .ok_or_else(|| KeysError::DhGroup(self.dhgroup.clone()))?
        };
        Ok(HostKeys {
            host,
            ctrl,
            hash,
            dhgroup,
        })
    }
}

impl HostKeys {
    /// The text form (secrets in DHHC-1), for saving.
    pub fn to_text(&self) -> HostKeysText {
        HostKeysText {
            key: self.host.to_dhhc1(),
            ctrl_key: self.ctrl.as_ref().map(Secret::to_dhhc1).unwrap_or_default(),
            hash: self.hash.name().to_string(),
            dhgroup: self.dhgroup.name().to_string(),
        }
    }
}

#[cfg(test)]
mod tests;
