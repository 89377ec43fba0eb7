//! The TLS PSKs a target holds, per (host NQN, subsystem NQN), and which listeners
//! require a secure channel: what a transport's handshake looks identities up in and
//! what the discovery log reports. Read at handshakes and discovery only, never on the
//! I/O path.

use std::collections::HashMap;
use std::sync::RwLock;

use super::key::{ConfiguredPsk, PskError, TlsPsk};

/// Whether a listener carries NVMe/TCP in TLS.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Secure {
    /// Plain NVMe/TCP only (a TLS ClientHello is refused).
    #[default]
    None,
    /// TLS or plain, as the host's first byte says (a TLS record or an ICReq).
    Optional,
    /// TLS only: a plain ICReq is refused.
    Required,
}

impl Secure {
    pub fn parse(s: &str) -> Option<Secure> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "none" | "no" => Some(Secure::None),
            "optional" => Some(Secure::Optional),
            "required" | "tls" => Some(Secure::Required),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Secure::None => "none",
            Secure::Optional => "optional",
            Secure::Required => "required",
        }
    }
}

/// Where a listener's TLS connections keep their record layer once the handshake is
/// done.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Ktls {
    /// In the kernel (kTLS) where the kernel has it, in software otherwise.
    #[default]
    Auto,
    /// In software (OpenSSL in this process) always.
    Off,
}

impl Ktls {
    pub fn parse(s: &str) -> Option<Ktls> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Some(Ktls::Auto),
            "off" => Some(Ktls::Off),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Ktls::Auto => "auto",
            Ktls::Off => "off",
        }
    }
}

/// What the handshake found for an identity.
#[derive(Debug, Clone)]
pub struct Found {
    pub psk: TlsPsk,
    pub hostnqn: String,
    pub subnqn: String,
}

#[derive(Default)]
struct Inner {
    /// The configured PSKs, by (host, subsystem).
    keys: HashMap<(String, String), ConfiguredPsk>,
    /// Every identity a host may offer for them, with its TLS PSK.
    by_identity: HashMap<String, Found>,
    /// Listener address (`IP:PORT`) to its setting; absent: none.
    listeners: HashMap<String, Secure>,
    /// Listeners with `ktls = "off"`; absent: auto.
    ktls_off: std::collections::HashSet<String>,
}

/// The TLS PSKs of a target.
#[derive(Default)]
pub struct Keyring {
    inner: RwLock<Inner>,
}

impl Keyring {
    /// Set (or with `None` remove) the PSK of `hostnqn` for `subnqn`. Returns whether
    /// one was there before.
    pub fn set(
        &self,
        hostnqn: &str,
        subnqn: &str,
        key: Option<ConfiguredPsk>,
    ) -> Result<bool, PskError> {
        let derived = match &key {
            Some(k) => k.all_tls_psks(hostnqn, subnqn)?,
            None => Vec::new(),
        };
        let mut g = self.inner.write().expect("keyring lock poisoned");
        let pair = (hostnqn.to_string(), subnqn.to_string());
        g.by_identity
            .retain(|_, f| !(f.hostnqn == hostnqn && f.subnqn == subnqn));
        let had = match key {
            Some(k) => g.keys.insert(pair, k).is_some(),
            None => g.keys.remove(&pair).is_some(),
        };
        for psk in derived {
            g.by_identity.insert(
                psk.identity.clone(),
                Found {
                    psk,
                    hostnqn: hostnqn.to_string(),
                    subnqn: subnqn.to_string(),
                },
            );
        }
        Ok(had)
    }

    /// The PSK of an identity a host offers.
    pub fn find(&self, identity: &[u8]) -> Option<Found> {
        let id = std::str::from_utf8(identity).ok()?;
        self.inner
            .read()
            .expect("keyring lock poisoned")
            .by_identity
            .get(id)
            .cloned()
    }

    /// Every configured PSK: (host, subsystem, key).
    pub fn all(&self) -> Vec<(String, String, ConfiguredPsk)> {
        let g = self.inner.read().expect("keyring lock poisoned");
        let mut v: Vec<_> = g
            .keys
            .iter()
            .map(|((h, s), k)| (h.clone(), s.clone(), k.clone()))
            .collect();
        v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        v
    }

    /// Whether any PSK is configured.
    pub fn is_empty(&self) -> bool {
        self.inner
            .read()
            .expect("keyring lock poisoned")
            .keys
            .is_empty()
    }

    /// Record a listener's setting (its transport enforces it; discovery reports it).
    pub fn set_listener(&self, addr: &str, secure: Secure) {
        let mut g = self.inner.write().expect("keyring lock poisoned");
        if secure == Secure::None {
            g.listeners.remove(addr);
            g.ktls_off.remove(addr);
        } else {
            g.listeners.insert(addr.to_string(), secure);
        }
    }

    /// A listener's setting (`IP:PORT`, brackets around IPv6).
    pub fn listener(&self, addr: &str) -> Secure {
        self.inner
            .read()
            .expect("keyring lock poisoned")
            .listeners
            .get(addr)
            .copied()
            .unwrap_or_default()
    }

    /// Record a TLS listener's record layer setting (saved with the configuration).
    pub fn set_listener_ktls(&self, addr: &str, ktls: Ktls) {
        let mut g = self.inner.write().expect("keyring lock poisoned");
        match ktls {
            Ktls::Off => g.ktls_off.insert(addr.to_string()),
            Ktls::Auto => g.ktls_off.remove(addr),
        };
    }

    /// A listener's record layer setting.
    pub fn listener_ktls(&self, addr: &str) -> Ktls {
        if self
            .inner
            .read()
            .expect("keyring lock poisoned")
            .ktls_off
            .contains(addr)
        {
            Ktls::Off
        } else {
            Ktls::Auto
        }
    }
}
