//! One queue's DH-HMAC-CHAP transaction, as the controller runs it (NVMe Base 2.0
//! section 8.13.5; the message order of Linux's nvmet):
//!
//! ```text
//! AUTH_Send   Negotiate  -> pick hash and DH group           -> Challenge
//! AUTH_Recv              <- Challenge (T_ID, S1, C1, g^x)    -> Reply
//! AUTH_Send   Reply      -> check R1 (and g^y, C2, S2)        -> Success1
//! AUTH_Recv              <- Success1 (R2 if bidirectional)    -> Success2 | done
//! AUTH_Send   Success2   (bidirectional only)                -> done
//! ```
//!
//! Any fault moves the transaction to Failure1: the next AUTH_Recv returns an
//! AUTH_Failure1 naming the reason, and the queue is torn down. The transaction
//! never touches the I/O path: the queue only asks it whether to open.

use std::sync::Arc;

use lightpool_spec::auth::{
    self as wire, auth_type, failure, msg, Challenge, Failure, MsgHeader, Negotiate, Reply,
    Success1, AUTHID_DHCHAP, REASON_FAILED, SC_C_NONE,
};
use zeroize::Zeroizing;

use super::crypto::{self, DhGroup, DhKey, HashFn};
use super::HostKeys;

/// Who the transaction is between, and the keys the subsystem holds for the host now.
pub struct Peer<'a> {
    pub hostnqn: &'a str,
    pub subnqn: &'a str,
    pub keys: Option<Arc<HostKeys>>,
}

/// What a message did to the queue's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Nothing yet.
    None,
    /// The host proved its key (and, bidirectionally, heard the controller's proof).
    Authenticated,
    /// The transaction failed with this AUTH_Failure explanation: the queue goes.
    Failed { explanation: u8, by_host: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Waiting for a Negotiate (before the first, and after a finished transaction).
    Negotiate,
    Challenge,
    Reply,
    Success1,
    Success2,
    Failure1,
}

/// AUTH_Recv could not produce a message (the NVMe status is the caller's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiveError {
    #[error("the allocation length {al} is under the {need} bytes of the message")]
    TooShort { al: usize, need: usize },
}

/// A queue's transaction state.
pub struct Exchange {
    step: Step,
    t_id: u16,
    hash: HashFn,
    dh: DhGroup,
    keys: Option<Arc<HostKeys>>,
    s1: u32,
    s2: u32,
    c1: Zeroizing<[u8; wire::MAX_HASH_LEN]>,
    c2: Option<Zeroizing<[u8; wire::MAX_HASH_LEN]>>,
    dh_key: Option<DhKey>,
    session_key: Option<Zeroizing<Vec<u8>>>,
    explanation: u8,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange::new()
    }
}

impl Exchange {
    pub fn new() -> Exchange {
        Exchange {
            step: Step::Negotiate,
            t_id: 0,
            hash: HashFn::Sha256,
            dh: DhGroup::Null,
            keys: None,
            s1: 0,
            s2: 0,
            c1: Zeroizing::new([0; wire::MAX_HASH_LEN]),
            c2: None,
            dh_key: None,
            session_key: None,
            explanation: 0,
        }
    }

    /// Whether a transaction is under way (the host owes the next message).
    pub fn in_progress(&self) -> bool {
        self.step != Step::Negotiate
    }

    /// The hash and DH group of the current (or last) transaction.
    pub fn selected(&self) -> (HashFn, DhGroup) {
        (self.hash, self.dh)
    }

    fn fail(&mut self, explanation: u8) -> Event {
        self.step = Step::Failure1;
        self.explanation = explanation;
        self.c2 = None;
        self.dh_key = None;
        self.session_key = None;
        Event::None
    }

    /// Forget the secrets of a finished transaction.
    fn finish(&mut self) {
        self.step = Step::Negotiate;
        self.c2 = None;
        self.dh_key = None;
        self.session_key = None;
        self.keys = None;
    }

    /// The data of an AUTH_Send.
    pub fn send(&mut self, data: &[u8], peer: &Peer<'_>) -> Event {
        let Ok(h) = MsgHeader::parse(data) else {
            return self.fail(failure::INCORRECT_PAYLOAD);
        };
        match (h.auth_type, h.auth_id) {
            (auth_type::COMMON, msg::NEGOTIATE) => {
                // A Negotiate (re)starts a transaction whatever came before, with the
                // keys the subsystem holds now: a rotated key applies from here.
                self.finish();
                self.keys = peer.keys.clone();
                match self.negotiate(data) {
                    Ok(()) => {
                        self.step = Step::Challenge;
                        Event::None
                    }
                    Err(e) => self.fail(e),
                }
            }
            (auth_type::COMMON, msg::FAILURE2) => {
                let explanation = Failure::parse(data).map_or(failure::FAILED, |f| f.explanation);
                self.finish();
                Event::Failed {
                    explanation,
                    by_host: true,
                }
            }
            (auth_type::DHCHAP, id) => {
                let expected = match self.step {
                    Step::Reply => msg::REPLY,
                    Step::Success2 => msg::SUCCESS2,
                    _ => return self.fail(failure::INCORRECT_MESSAGE),
                };
                if id != expected {
                    return self.fail(failure::INCORRECT_MESSAGE);
                }
                if h.t_id != self.t_id {
                    return self.fail(failure::INCORRECT_PAYLOAD);
                }
                if id == msg::SUCCESS2 {
                    self.finish();
                    return Event::Authenticated;
                }
                match self.reply(data, peer) {
                    Ok(done) => {
                        self.step = Step::Success1;
                        if done {
                            Event::Authenticated
                        } else {
                            Event::None
                        }
                    }
                    Err(e) => self.fail(e),
                }
            }
            _ => self.fail(failure::INCORRECT_MESSAGE),
        }
    }

    fn negotiate(&mut self, data: &[u8]) -> Result<(), u8> {
        let n = Negotiate::parse(data).map_err(|_| failure::INCORRECT_PAYLOAD)?;
        self.t_id = n.t_id;
        if n.sc_c != SC_C_NONE {
            return Err(failure::CONCAT_MISMATCH);
        }
        if n.napd != 1 {
            return Err(failure::HASH_UNUSABLE);
        }
        if n.authid != AUTHID_DHCHAP {
            return Err(failure::INCORRECT_PAYLOAD);
        }
        let (want_hash, want_dh) = self
            .keys
            .as_ref()
            .map_or((HashFn::Sha256, DhGroup::Null), |k| (k.hash, k.dhgroup));
        // The configured hash and group when the host offers them, else the first the
        // host offers that this side knows (as nvmet falls back).
        self.hash = if n.hash_ids().contains(&want_hash.id()) {
            want_hash
        } else {
            n.hash_ids()
                .iter()
                .find_map(|&id| HashFn::from_id(id))
                .ok_or(failure::HASH_UNUSABLE)?
        };
        self.dh = if n.dh_ids().contains(&want_dh.id()) {
            want_dh
        } else {
            n.dh_ids()
                .iter()
                .find_map(|&id| DhGroup::from_id(id))
                .ok_or(failure::DHGROUP_UNUSABLE)?
        };
        Ok(())
    }

    /// Check the host's response; Ok(true) when the host is authenticated and no
    /// controller response was asked for.
    fn reply(&mut self, data: &[u8], peer: &Peer<'_>) -> Result<bool, u8> {
        let r = Reply::parse(data).map_err(|_| failure::INCORRECT_PAYLOAD)?;
        let hl = self.hash.digest_len();
        if usize::from(r.hl) != hl {
            return Err(failure::INCORRECT_PAYLOAD);
        }
        self.session_key = match (&self.dh_key, r.dhv.is_empty()) {
            (None, true) => None,
            (Some(k), false) => Some(k.shared(r.dhv).map_err(|_| failure::DHGROUP_UNUSABLE)?),
            _ => return Err(failure::INCORRECT_PAYLOAD),
        };
        let keys = self.keys.clone().ok_or(failure::FAILED)?;
        let kh = keys.host.transformed(peer.hostnqn);
        let ca1 = crypto::challenge_for(
            self.hash,
            self.session_key.as_deref().map(|v| &v[..]),
            &self.c1[..],
        );
        let want = crypto::host_response(
            self.hash,
            &kh,
            &ca1[..],
            self.s1,
            self.t_id,
            peer.hostnqn,
            peer.subnqn,
        );
        if !crypto::equal(&want[..hl], r.response) {
            return Err(failure::FAILED);
        }
        self.s2 = r.seqnum;
        if r.cvalid && r.seqnum != 0 {
            let mut c2 = Zeroizing::new([0u8; wire::MAX_HASH_LEN]);
            c2[..hl].copy_from_slice(r.c2);
            self.c2 = Some(c2);
            Ok(false)
        } else {
            self.c2 = None;
            Ok(true)
        }
    }

    /// Write the message an AUTH_Recv returns into `out` (the allocation length);
    /// returns its length and what it did to the queue.
    pub fn receive(
        &mut self,
        out: &mut [u8],
        peer: &Peer<'_>,
    ) -> Result<(usize, Event), ReceiveError> {
        let al = out.len();
        let short = |need: usize| ReceiveError::TooShort { al, need };
        match self.step {
            Step::Challenge => {
                let hl = self.hash.digest_len();
                let mut s1 = [0u8; 4];
                if crypto::random(&mut s1).is_err() || crypto::random(&mut self.c1[..hl]).is_err() {
                    self.fail(failure::FAILED);
                    return self.receive(out, peer);
                }
                // Zero is reserved (S2 = 0 means "no bidirectional authentication").
                self.s1 = u32::from_le_bytes(s1).max(1);
                self.dh_key = match self.dh {
                    DhGroup::Null => None,
                    g => match DhKey::generate(g) {
                        Ok(k) => Some(k),
                        Err(_) => {
                            self.fail(failure::DHGROUP_UNUSABLE);
                            return self.receive(out, peer);
                        }
                    },
                };
                let c = Challenge {
                    t_id: self.t_id,
                    hash_id: self.hash.id(),
                    dhgroup_id: self.dh.id(),
                    seqnum: self.s1,
                    c1: &self.c1[..hl],
                    dhv: self.dh_key.as_ref().map_or(&[][..], DhKey::public),
                };
                let n = c.write(out).map_err(|_| short(c.len()))?;
                self.step = Step::Reply;
                Ok((n, Event::None))
            }
            Step::Success1 => {
                let hl = self.hash.digest_len();
                let r2 = match &self.c2 {
                    None => None,
                    Some(c2) => {
                        let Some(kc) = self.keys.as_ref().and_then(|k| k.ctrl.as_ref()) else {
                            // The host asked for the controller's proof and there is no
                            // controller key to give it.
                            self.fail(failure::FAILED);
                            return self.receive(out, peer);
                        };
                        let kc = kc.transformed(peer.subnqn);
                        let ca2 = crypto::challenge_for(
                            self.hash,
                            self.session_key.as_deref().map(|v| &v[..]),
                            &c2[..],
                        );
                        Some(crypto::ctrl_response(
                            self.hash,
                            &kc,
                            &ca2[..],
                            self.s2,
                            self.t_id,
                            peer.subnqn,
                            peer.hostnqn,
                        ))
                    }
                };
                let s = Success1 {
                    t_id: self.t_id,
                    hl: hl as u8,
                    response: r2.as_ref().map(|r| &r[..hl]),
                };
                let n = s.write(out).map_err(|_| short(wire::DHCHAP_HEADER + hl))?;
                if r2.is_some() {
                    self.step = Step::Success2;
                } else {
                    self.finish();
                }
                Ok((n, Event::None))
            }
            Step::Failure1 | Step::Negotiate | Step::Reply | Step::Success2 => {
                // Failure1, or an AUTH_Recv where the host should have sent.
                let explanation = if self.step == Step::Failure1 {
                    self.explanation
                } else {
                    failure::INCORRECT_MESSAGE
                };
                let f = Failure {
                    auth_id: msg::FAILURE1,
                    t_id: self.t_id,
                    reason: REASON_FAILED,
                    explanation,
                };
                let n = f.write(out).map_err(|_| short(wire::FAILURE_SIZE))?;
                self.finish();
                Ok((
                    n,
                    Event::Failed {
                        explanation,
                        by_host: false,
                    },
                ))
            }
        }
    }
}
