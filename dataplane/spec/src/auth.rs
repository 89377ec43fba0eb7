//! In-band authentication (NVMe Base 2.0 section 8.13, TP 8006): the Authentication
//! Send / Receive fabrics commands and the DH-HMAC-CHAP messages they carry.
//!
//! Parsers read untrusted bytes and check every length against the buffer before
//! any field is used; writers fill a caller's buffer and return how many bytes they
//! wrote. Nothing here allocates.

use crate::bytes::{get, u16_at, u32_at};
use crate::nvme::Sqe;

/// SECP of the Authentication Send/Receive commands for NVMe in-band authentication.
pub const SECP_DHCHAP: u8 = 0xE9;
/// SPSP0 and SPSP1 for NVMe in-band authentication.
pub const SPSP: u8 = 0x01;

/// Connect response Dword 0, bit 17: ATR (authentication transaction required).
pub const AUTHREQ_ATR: u32 = 1 << 17;
/// Connect response Dword 0, bit 18: ASCR (authentication and secure channel required).
pub const AUTHREQ_ASCR: u32 = 1 << 18;

/// Message classes (AUTH_Type).
pub mod auth_type {
    pub const COMMON: u8 = 0x00;
    pub const DHCHAP: u8 = 0x01;
}

/// Message identifiers (AUTH_Id).
pub mod msg {
    pub const NEGOTIATE: u8 = 0x00;
    pub const CHALLENGE: u8 = 0x01;
    pub const REPLY: u8 = 0x02;
    pub const SUCCESS1: u8 = 0x03;
    pub const SUCCESS2: u8 = 0x04;
    pub const FAILURE2: u8 = 0xF0;
    pub const FAILURE1: u8 = 0xF1;
}

/// The DH-HMAC-CHAP protocol's AUTH_ID in a Negotiate protocol descriptor.
pub const AUTHID_DHCHAP: u8 = 0x01;

/// Hash function identifiers.
pub mod hash_id {
    pub const SHA256: u8 = 0x01;
    pub const SHA384: u8 = 0x02;
    pub const SHA512: u8 = 0x03;
}

/// Diffie-Hellman group identifiers.
pub mod dhgroup_id {
    pub const NULL: u8 = 0x00;
    pub const FFDHE2048: u8 = 0x01;
    pub const FFDHE3072: u8 = 0x02;
    pub const FFDHE4096: u8 = 0x03;
    pub const FFDHE6144: u8 = 0x04;
    pub const FFDHE8192: u8 = 0x05;
}

/// Secure channel concatenation (SC_C) of a Negotiate: none is the only value a
/// controller without TLS accepts.
pub const SC_C_NONE: u8 = 0x00;

/// AUTH_Failure reason code.
pub const REASON_FAILED: u8 = 0x01;

/// AUTH_Failure reason code explanations.
pub mod failure {
    pub const FAILED: u8 = 0x01;
    pub const NOT_USABLE: u8 = 0x02;
    pub const CONCAT_MISMATCH: u8 = 0x03;
    pub const HASH_UNUSABLE: u8 = 0x04;
    pub const DHGROUP_UNUSABLE: u8 = 0x05;
    pub const INCORRECT_PAYLOAD: u8 = 0x06;
    pub const INCORRECT_MESSAGE: u8 = 0x07;

    /// The explanation's name as the specification gives it, for logs.
    pub fn name(code: u8) -> &'static str {
        match code {
            FAILED => "authentication failed",
            NOT_USABLE => "authentication protocol not usable",
            CONCAT_MISMATCH => "secure channel concatenation mismatch",
            HASH_UNUSABLE => "hash function not usable",
            DHGROUP_UNUSABLE => "DH group not usable",
            INCORRECT_PAYLOAD => "incorrect payload",
            INCORRECT_MESSAGE => "incorrect protocol message",
            _ => "unknown reason",
        }
    }
}

/// Bytes of a Negotiate header (before its protocol descriptors).
pub const NEGOTIATE_HEADER: usize = 8;
/// Bytes of one protocol descriptor of a Negotiate.
pub const PROTOCOL_DESCRIPTOR: usize = 64;
/// Hash IDs a descriptor can list (the first 30 bytes of its ID list).
pub const MAX_HASH_IDS: usize = 30;
/// DH group IDs a descriptor can list (the last 30 bytes of its ID list).
pub const MAX_DH_IDS: usize = 30;
/// Bytes of a Challenge, Reply or Success1 header (before the variable values).
pub const DHCHAP_HEADER: usize = 16;
/// Bytes of a Success2 message.
pub const SUCCESS2_SIZE: usize = 16;
/// Bytes of an AUTH_Failure1/2 message.
pub const FAILURE_SIZE: usize = 8;
/// The longest hash these messages carry (SHA-512).
pub const MAX_HASH_LEN: usize = 64;

/// A message that cannot be read as what it claims to be; the explanation code an
/// AUTH_Failure carries for it is [`failure::INCORRECT_PAYLOAD`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthMsgError {
    #[error("the message holds {got} bytes, {need} needed")]
    TooShort { need: usize, got: usize },
    #[error(
        "a protocol descriptor lists {halen} hash IDs and {dhlen} DH group IDs (30 each at most)"
    )]
    IdListTooLong { halen: u8, dhlen: u8 },
}

fn need(b: &[u8], n: usize) -> Result<(), AuthMsgError> {
    if b.len() < n {
        return Err(AuthMsgError::TooShort {
            need: n,
            got: b.len(),
        });
    }
    Ok(())
}

/// The fields of an Authentication Send or Receive command (Dwords 10 and 11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthCommand {
    pub spsp0: u8,
    pub spsp1: u8,
    pub secp: u8,
    /// Transfer length (Send) or allocation length (Receive), in bytes.
    pub len: u32,
}

impl AuthCommand {
    pub fn parse(sqe: &Sqe) -> AuthCommand {
        let b = sqe.cdw10.to_le_bytes();
        AuthCommand {
            spsp0: b[1],
            spsp1: b[2],
            secp: b[3],
            len: sqe.cdw11,
        }
    }

    /// An SQE for this command (an initiator's, or a test's).
    pub fn to_sqe(&self, fctype: u8, cid: u16) -> Sqe {
        let mut sqe = Sqe {
            opcode: crate::nvme::admin_opcode::FABRICS,
            cid,
            ..Sqe::default()
        };
        sqe.nsid = u32::from(fctype);
        sqe.cdw10 = u32::from_le_bytes([0, self.spsp0, self.spsp1, self.secp]);
        sqe.cdw11 = self.len;
        sqe
    }

    /// Whether SECP, SPSP0 and SPSP1 name DH-HMAC-CHAP; the first wrong field's byte
    /// offset in the SQE otherwise.
    pub fn check_protocol(&self) -> Result<(), usize> {
        if self.secp != SECP_DHCHAP {
            return Err(43);
        }
        if self.spsp0 != SPSP {
            return Err(41);
        }
        if self.spsp1 != SPSP {
            return Err(42);
        }
        Ok(())
    }
}

/// The first four fields every authentication message starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgHeader {
    pub auth_type: u8,
    pub auth_id: u8,
    pub t_id: u16,
}

impl MsgHeader {
    pub fn parse(b: &[u8]) -> Result<MsgHeader, AuthMsgError> {
        need(b, 6)?;
        Ok(MsgHeader {
            auth_type: b[0],
            auth_id: b[1],
            t_id: u16_at(b, 4),
        })
    }
}

/// An AUTH_Negotiate message, its first (DH-HMAC-CHAP) protocol descriptor read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiate {
    pub t_id: u16,
    pub sc_c: u8,
    pub napd: u8,
    pub authid: u8,
    pub halen: u8,
    pub dhlen: u8,
    pub idlist: [u8; 60],
}

impl Negotiate {
    pub fn parse(b: &[u8]) -> Result<Negotiate, AuthMsgError> {
        need(b, NEGOTIATE_HEADER + PROTOCOL_DESCRIPTOR)?;
        let napd = b[7];
        need(
            b,
            NEGOTIATE_HEADER + PROTOCOL_DESCRIPTOR * usize::from(napd.max(1)),
        )?;
        let d = &b[NEGOTIATE_HEADER..NEGOTIATE_HEADER + PROTOCOL_DESCRIPTOR];
        let (halen, dhlen) = (d[2], d[3]);
        if usize::from(halen) > MAX_HASH_IDS || usize::from(dhlen) > MAX_DH_IDS {
            return Err(AuthMsgError::IdListTooLong { halen, dhlen });
        }
        let mut idlist = [0u8; 60];
        idlist.copy_from_slice(&d[4..64]);
        Ok(Negotiate {
            t_id: u16_at(b, 4),
            sc_c: b[6],
            napd,
            authid: d[0],
            halen,
            dhlen,
            idlist,
        })
    }

    /// The hash functions the host offers, in its order of preference.
    pub fn hash_ids(&self) -> &[u8] {
        &self.idlist[..usize::from(self.halen)]
    }

    /// The DH groups the host offers, in its order of preference.
    pub fn dh_ids(&self) -> &[u8] {
        &self.idlist[MAX_HASH_IDS..MAX_HASH_IDS + usize::from(self.dhlen)]
    }

    /// The message bytes (one descriptor), as an initiator sends it.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, AuthMsgError> {
        let n = NEGOTIATE_HEADER + PROTOCOL_DESCRIPTOR;
        need(out, n)?;
        out[..n].fill(0);
        out[0] = auth_type::COMMON;
        out[1] = msg::NEGOTIATE;
        out[4..6].copy_from_slice(&self.t_id.to_le_bytes());
        out[6] = self.sc_c;
        out[7] = 1;
        out[8] = self.authid;
        out[10] = self.halen;
        out[11] = self.dhlen;
        out[12..72].copy_from_slice(&self.idlist);
        Ok(n)
    }
}

/// A DH-HMAC-CHAP_Reply message: views into the bytes it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply<'a> {
    pub t_id: u16,
    pub hl: u8,
    /// Whether a challenge C2 for bidirectional authentication follows the response.
    pub cvalid: bool,
    /// Sequence number S2 (zero: no bidirectional authentication).
    pub seqnum: u32,
    pub response: &'a [u8],
    pub c2: &'a [u8],
    /// The host's DH exponential (empty with the NULL group).
    pub dhv: &'a [u8],
}

impl<'a> Reply<'a> {
    pub fn parse(b: &'a [u8]) -> Result<Reply<'a>, AuthMsgError> {
        need(b, DHCHAP_HEADER)?;
        let hl = usize::from(b[6]);
        let dhvlen = usize::from(u16_at(b, 10));
        need(b, DHCHAP_HEADER + 2 * hl + dhvlen)?;
        let v = &b[DHCHAP_HEADER..];
        Ok(Reply {
            t_id: u16_at(b, 4),
            hl: b[6],
            cvalid: b[8] & 1 != 0,
            seqnum: u32_at(b, 12),
            response: &v[..hl],
            c2: &v[hl..2 * hl],
            dhv: &v[2 * hl..2 * hl + dhvlen],
        })
    }

    /// The message bytes, as an initiator sends it.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, AuthMsgError> {
        let hl = usize::from(self.hl);
        let n = DHCHAP_HEADER + 2 * hl + self.dhv.len();
        need(out, n)?;
        out[..n].fill(0);
        out[0] = auth_type::DHCHAP;
        out[1] = msg::REPLY;
        out[4..6].copy_from_slice(&self.t_id.to_le_bytes());
        out[6] = self.hl;
        out[8] = u8::from(self.cvalid);
        out[10..12].copy_from_slice(&(self.dhv.len() as u16).to_le_bytes());
        out[12..16].copy_from_slice(&self.seqnum.to_le_bytes());
        let v = &mut out[DHCHAP_HEADER..n];
        v[..hl].copy_from_slice(&self.response[..hl]);
        if self.cvalid {
            v[hl..2 * hl].copy_from_slice(&self.c2[..hl]);
        }
        v[2 * hl..].copy_from_slice(self.dhv);
        Ok(n)
    }
}

/// A DH-HMAC-CHAP_Challenge message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge<'a> {
    pub t_id: u16,
    pub hash_id: u8,
    pub dhgroup_id: u8,
    /// Sequence number S1.
    pub seqnum: u32,
    /// Challenge C1 (as long as the hash's output).
    pub c1: &'a [u8],
    /// The controller's DH exponential (empty with the NULL group).
    pub dhv: &'a [u8],
}

impl<'a> Challenge<'a> {
    /// Bytes the message takes.
    pub fn len(&self) -> usize {
        DHCHAP_HEADER + self.c1.len() + self.dhv.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn write(&self, out: &mut [u8]) -> Result<usize, AuthMsgError> {
        let n = self.len();
        need(out, n)?;
        out[..n].fill(0);
        out[0] = auth_type::DHCHAP;
        out[1] = msg::CHALLENGE;
        out[4..6].copy_from_slice(&self.t_id.to_le_bytes());
        out[6] = self.c1.len() as u8;
        out[8] = self.hash_id;
        out[9] = self.dhgroup_id;
        out[10..12].copy_from_slice(&(self.dhv.len() as u16).to_le_bytes());
        out[12..16].copy_from_slice(&self.seqnum.to_le_bytes());
        let hl = self.c1.len();
        out[DHCHAP_HEADER..DHCHAP_HEADER + hl].copy_from_slice(self.c1);
        out[DHCHAP_HEADER + hl..n].copy_from_slice(self.dhv);
        Ok(n)
    }

    pub fn parse(b: &'a [u8]) -> Result<Challenge<'a>, AuthMsgError> {
        need(b, DHCHAP_HEADER)?;
        let hl = usize::from(b[6]);
        let dhvlen = usize::from(u16_at(b, 10));
        need(b, DHCHAP_HEADER + hl + dhvlen)?;
        Ok(Challenge {
            t_id: u16_at(b, 4),
            hash_id: b[8],
            dhgroup_id: b[9],
            seqnum: u32_at(b, 12),
            c1: &b[DHCHAP_HEADER..DHCHAP_HEADER + hl],
            dhv: &b[DHCHAP_HEADER + hl..DHCHAP_HEADER + hl + dhvlen],
        })
    }
}

/// A DH-HMAC-CHAP_Success1 message: the controller's response when the host asked for
/// bidirectional authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Success1<'a> {
    pub t_id: u16,
    /// The hash's output length.
    pub hl: u8,
    /// The controller's response to C2, if the host sent one.
    pub response: Option<&'a [u8]>,
}

impl<'a> Success1<'a> {
    pub fn write(&self, out: &mut [u8]) -> Result<usize, AuthMsgError> {
        let hl = usize::from(self.hl);
        let n = DHCHAP_HEADER + hl;
        need(out, n)?;
        out[..n].fill(0);
        out[0] = auth_type::DHCHAP;
        out[1] = msg::SUCCESS1;
        out[4..6].copy_from_slice(&self.t_id.to_le_bytes());
        out[6] = self.hl;
        if let Some(r) = self.response {
            out[8] = 1;
            out[DHCHAP_HEADER..n].copy_from_slice(&r[..hl]);
        }
        Ok(n)
    }

    pub fn parse(b: &'a [u8]) -> Result<Success1<'a>, AuthMsgError> {
        need(b, DHCHAP_HEADER)?;
        let hl = usize::from(b[6]);
        need(b, DHCHAP_HEADER + hl)?;
        Ok(Success1 {
            t_id: u16_at(b, 4),
            hl: b[6],
            response: (b[8] & 1 != 0).then(|| &b[DHCHAP_HEADER..DHCHAP_HEADER + hl]),
        })
    }
}

/// An AUTH_Failure1 (controller to host) or AUTH_Failure2 (host to controller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// [`msg::FAILURE1`] or [`msg::FAILURE2`].
    pub auth_id: u8,
    pub t_id: u16,
    pub reason: u8,
    pub explanation: u8,
}

impl Failure {
    pub fn write(&self, out: &mut [u8]) -> Result<usize, AuthMsgError> {
        need(out, FAILURE_SIZE)?;
        out[..FAILURE_SIZE].fill(0);
        out[0] = auth_type::COMMON;
        out[1] = self.auth_id;
        out[4..6].copy_from_slice(&self.t_id.to_le_bytes());
        out[6] = self.reason;
        out[7] = self.explanation;
        Ok(FAILURE_SIZE)
    }

    pub fn parse(b: &[u8]) -> Result<Failure, AuthMsgError> {
        need(b, FAILURE_SIZE)?;
        Ok(Failure {
            auth_id: b[1],
            t_id: u16_at(b, 4),
            reason: get(b, 6),
            explanation: get(b, 7),
        })
    }
}

/// Writes a Success2 (host to controller), as an initiator sends it.
pub fn write_success2(t_id: u16, out: &mut [u8]) -> Result<usize, AuthMsgError> {
    need(out, SUCCESS2_SIZE)?;
    out[..SUCCESS2_SIZE].fill(0);
    out[0] = auth_type::DHCHAP;
    out[1] = msg::SUCCESS2;
    out[4..6].copy_from_slice(&t_id.to_le_bytes());
    Ok(SUCCESS2_SIZE)
}

#[cfg(test)]
mod tests;
