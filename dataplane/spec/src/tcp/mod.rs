//! NVMe/TCP transport PDUs (NVMe/TCP Transport Specification 1.0, section 3).
//!
//! Every PDU starts with the 8-byte [`CommonHeader`]; HLEN is fixed per PDU
//! type ([`expected_hlen`]); a header digest (HDGST, 4 bytes) may follow the
//! header, then padding up to PDO, then data, then a data digest (DDGST).
//!
//! ```text
//! | CH (8) | PSH (HLEN-8) | HDGST? | PAD | DATA | DDGST? |
//! 0                      HLEN            PDO            PLEN
//! ```
//!
//! [`validate_header`] does the checks the specification asks of a receiver
//! before it commits to reading the rest of the PDU.

mod digest;
mod pdu;
mod tls;

pub use digest::*;
pub use pdu::*;
pub use tls::hkdf_label;

use crate::bytes::{put_u32, u32_at};
use crate::SpecError;

pub const COMMON_HEADER_SIZE: usize = 8;
pub const DIGEST_SIZE: usize = 4;

/// HLEN of ICReq/ICResp; also their PLEN.
pub const IC_PDU_SIZE: usize = 128;
/// HLEN of H2CTermReq/C2HTermReq.
pub const TERM_REQ_HLEN: usize = 24;
/// The most offending-header bytes a TermReq carries.
pub const TERM_REQ_MAX_DATA: usize = 128;
/// HLEN of a command capsule PDU: common header + SQE.
pub const CAPSULE_CMD_HLEN: usize = 72;
/// HLEN of a response capsule PDU: common header + CQE.
pub const CAPSULE_RESP_HLEN: usize = 24;
/// HLEN of H2CData/C2HData.
pub const DATA_HLEN: usize = 24;
/// HLEN of R2T.
pub const R2T_HLEN: usize = 24;
/// A buffer this large holds any PDU header, its digest and PDO padding.
pub const MAX_HEADER_BUF: usize = 256;
/// The well-known NVMe/TCP discovery port.
pub const DISCOVERY_PORT: u16 = 8009;
/// The IANA port for NVMe/TCP I/O controllers.
pub const DEFAULT_PORT: u16 = 4420;
/// PDU format version 1.0 (ICReq/ICResp PFV).
pub const PFV_1_0: u16 = 0;
/// The largest PDA value (alignment 128 bytes).
pub const MAX_PDA: u8 = 31;

/// NVMe/TCP PDU types.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PduType {
    IcReq = 0x00,
    IcResp = 0x01,
    H2CTermReq = 0x02,
    C2HTermReq = 0x03,
    CapsuleCmd = 0x04,
    CapsuleResp = 0x05,
    H2CData = 0x06,
    C2HData = 0x07,
    R2T = 0x09,
}

impl TryFrom<u8> for PduType {
    type Error = SpecError;

    fn try_from(v: u8) -> Result<Self, SpecError> {
        Ok(match v {
            0x00 => PduType::IcReq,
            0x01 => PduType::IcResp,
            0x02 => PduType::H2CTermReq,
            0x03 => PduType::C2HTermReq,
            0x04 => PduType::CapsuleCmd,
            0x05 => PduType::CapsuleResp,
            0x06 => PduType::H2CData,
            0x07 => PduType::C2HData,
            0x09 => PduType::R2T,
            other => return Err(SpecError::UnknownPduType(other)),
        })
    }
}

/// Which end of the connection a PDU comes from or goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Controller,
    Host,
}

impl PduType {
    /// The side that sends this PDU type: host-to-controller types are
    /// ICReq, H2CTermReq, CapsuleCmd and H2CData; the rest come from the
    /// controller.
    pub fn sender(self) -> Role {
        match self {
            PduType::IcReq | PduType::H2CTermReq | PduType::CapsuleCmd | PduType::H2CData => {
                Role::Host
            }
            PduType::IcResp
            | PduType::C2HTermReq
            | PduType::CapsuleResp
            | PduType::C2HData
            | PduType::R2T => Role::Controller,
        }
    }

    /// True for the PDU types whose header digest and data digest follow the
    /// negotiated settings (all but ICReq, ICResp and the TermReqs).
    pub fn digests_apply(self) -> bool {
        !matches!(
            self,
            PduType::IcReq | PduType::IcResp | PduType::H2CTermReq | PduType::C2HTermReq
        )
    }
}

/// Common header FLAGS bits.
pub mod flags {
    pub const HDGSTF: u8 = 0x01;
    pub const DDGSTF: u8 = 0x02;
    /// H2CData/C2HData: last PDU of the transfer (LAST_PDU).
    pub const DATA_LAST: u8 = 0x04;
    /// C2HData: the command succeeded, no response capsule follows (SUCCESS).
    pub const DATA_SUCCESS: u8 = 0x08;
}

/// Fatal Error Status values of a TermReq.
pub mod fes {
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    pub const DATA_TRANSFER_OUT_OF_RANGE: u16 = 0x04;
    pub const DATA_TRANSFER_LIMIT_EXCEEDED: u16 = 0x05;
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

/// Byte offsets within the common header, used as FEI for Invalid Header
/// Field errors.
pub mod ch_offset {
    pub const PDU_TYPE: u32 = 0;
    pub const FLAGS: u32 = 1;
    pub const HLEN: u32 = 2;
    pub const PDO: u32 = 3;
    pub const PLEN: u32 = 4;
}

/// The 8-byte common header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommonHeader {
    pub pdu_type: u8,
    pub flags: u8,
    pub hlen: u8,
    pub pdo: u8,
    pub plen: u32,
}

impl CommonHeader {
    pub fn parse(b: &[u8; COMMON_HEADER_SIZE]) -> CommonHeader {
        CommonHeader {
            pdu_type: b[0],
            flags: b[1],
            hlen: b[2],
            pdo: b[3],
            plen: u32_at(b, 4),
        }
    }

    pub fn to_bytes(&self) -> [u8; COMMON_HEADER_SIZE] {
        let mut b = [0u8; COMMON_HEADER_SIZE];
        b[0] = self.pdu_type;
        b[1] = self.flags;
        b[2] = self.hlen;
        b[3] = self.pdo;
        put_u32(&mut b, 4, self.plen);
        b
    }

    /// Writes the header into `out[..8]`.
    ///
    /// # Panics
    /// If `out` is shorter than 8 bytes.
    pub fn encode(&self, out: &mut [u8]) {
        out[..COMMON_HEADER_SIZE].copy_from_slice(&self.to_bytes());
    }

    /// 4 when HDGSTF is set, else 0.
    pub fn hdgst_len(&self) -> u32 {
        if self.flags & flags::HDGSTF != 0 {
            DIGEST_SIZE as u32
        } else {
            0
        }
    }

    /// 4 when DDGSTF is set, else 0.
    pub fn ddgst_len(&self) -> u32 {
        if self.flags & flags::DDGSTF != 0 {
            DIGEST_SIZE as u32
        } else {
            0
        }
    }

    /// HLEN plus the header digest: where padding (or data) starts.
    pub fn header_end(&self) -> u32 {
        u32::from(self.hlen) + self.hdgst_len()
    }

    /// True when PLEN leaves room for data after the header and its digest.
    pub fn has_data(&self) -> bool {
        self.plen > self.header_end()
    }

    /// Bytes between the header digest and PDO (zero without data).
    pub fn padding_len(&self) -> u32 {
        if self.has_data() {
            u32::from(self.pdo).saturating_sub(self.header_end())
        } else {
            0
        }
    }

    /// Length of the PDU data: PLEN - PDO - DDGST (zero without data).
    /// Meaningful once [`validate_header`] accepted the header.
    pub fn data_len(&self) -> u32 {
        if self.has_data() {
            let start = u32::from(self.pdo).max(self.header_end());
            self.plen.saturating_sub(start + self.ddgst_len())
        } else {
            0
        }
    }
}

/// HLEN each PDU type must carry.
pub fn expected_hlen(t: PduType) -> u8 {
    match t {
        PduType::IcReq | PduType::IcResp => IC_PDU_SIZE as u8,
        PduType::H2CTermReq | PduType::C2HTermReq => TERM_REQ_HLEN as u8,
        PduType::CapsuleCmd => CAPSULE_CMD_HLEN as u8,
        PduType::CapsuleResp => CAPSULE_RESP_HLEN as u8,
        PduType::H2CData | PduType::C2HData => DATA_HLEN as u8,
        PduType::R2T => R2T_HLEN as u8,
    }
}

/// Alignment in bytes that a PDA value (0's based dwords) asks for.
pub fn pda_alignment(pda: u8) -> u32 {
    (u32::from(pda.min(MAX_PDA)) + 1) * 4
}

/// PDO for a PDU with data: the header and its digest, rounded up to the
/// receiver's PDA alignment.
pub fn data_offset(hlen: usize, hdgst: bool, pda: u8) -> u8 {
    let end = hlen as u32 + if hdgst { DIGEST_SIZE as u32 } else { 0 };
    let align = pda_alignment(pda);
    // At most 128 + 4 rounded up to 128: 256 does not occur because HLEN
    // 128 PDUs (ICReq/ICResp) carry no data.
    end.div_ceil(align)
        .saturating_mul(align)
        .min(u32::from(u8::MAX)) as u8
}

/// A fatal transport error: the FES and FEI to put in a TermReq before
/// closing the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermError {
    pub fes: u16,
    pub fei: u32,
}

impl TermError {
    pub const fn invalid_field(offset: u32) -> TermError {
        TermError {
            fes: fes::INVALID_HEADER_FIELD,
            fei: offset,
        }
    }
}

/// Controller-side receive check; see [`validate_header_for`].
pub fn validate_header(
    ch: &CommonHeader,
    hdgst_enabled: bool,
    ddgst_enabled: bool,
    maxh2cdata: u32,
    incapsule_max: u32,
) -> Result<PduType, TermError> {
    validate_header_for(
        Role::Controller,
        ch,
        hdgst_enabled,
        ddgst_enabled,
        maxh2cdata,
        incapsule_max,
    )
}

/// Checks a received common header for `role` (the receiver) before the rest
/// of the PDU is read, as NVMe/TCP 1.0 section 3.6.2 / 3.3 prescribe.
///
/// - PDU type undefined, or one only the receiver itself sends: Invalid
///   Header Field, FEI 0.
/// - HLEN not the type's fixed length: FEI 2.
/// - ICReq/ICResp with PLEN != 128, TermReq with PLEN outside 24..=152: FEI 4.
///   These PDUs carry no digests; their FLAGS and PDO are not checked.
/// - Other types: HDGSTF must match the negotiated header digest and DDGSTF
///   must be set exactly when data is present and data digests are on
///   (FEI 1); PLEN must cover the header and digest, CapsuleResp and R2T
///   carry no data, H2CData/C2HData must (FEI 4); with data, PDO must lie at
///   or after the header digest and leave at least one data byte (FEI 3).
/// - Controller receiving a command capsule with more in-capsule data than
///   `incapsule_max` (IOCCSZ * 16 - 64): Invalid Header Field, FEI 4 (PLEN).
/// - Controller receiving H2CData with more than `maxh2cdata` bytes: Data
///   Transfer Limit Exceeded, FEI 0.
///
/// On the host side `maxh2cdata` and `incapsule_max` are not used. Before the
/// ICReq/ICResp exchange pass `false` for both digests. PDO alignment against
/// the PDA and DATAO/DATAL against PLEN are checked by the PDU-specific
/// parsers ([`check_pdo_alignment`], [`DataHeader::check_len`]).
pub fn validate_header_for(
    role: Role,
    ch: &CommonHeader,
    hdgst_enabled: bool,
    ddgst_enabled: bool,
    maxh2cdata: u32,
    incapsule_max: u32,
) -> Result<PduType, TermError> {
    let t = PduType::try_from(ch.pdu_type)
        .map_err(|_| TermError::invalid_field(ch_offset::PDU_TYPE))?;
    if t.sender() == role {
        return Err(TermError::invalid_field(ch_offset::PDU_TYPE));
    }
    if ch.hlen != expected_hlen(t) {
        return Err(TermError::invalid_field(ch_offset::HLEN));
    }

    match t {
        PduType::IcReq | PduType::IcResp => {
            if ch.plen != IC_PDU_SIZE as u32 {
                return Err(TermError::invalid_field(ch_offset::PLEN));
            }
            return Ok(t);
        }
        PduType::H2CTermReq | PduType::C2HTermReq => {
            let min = TERM_REQ_HLEN as u32;
            if ch.plen < min || ch.plen > min + TERM_REQ_MAX_DATA as u32 {
                return Err(TermError::invalid_field(ch_offset::PLEN));
            }
            return Ok(t);
        }
        _ => {}
    }

    if (ch.flags & flags::HDGSTF != 0) != hdgst_enabled {
        return Err(TermError::invalid_field(ch_offset::FLAGS));
    }
    let header_end = ch.header_end();
    if ch.plen < header_end {
        return Err(TermError::invalid_field(ch_offset::PLEN));
    }
    let has_data = ch.plen > header_end;
    match t {
        PduType::CapsuleResp | PduType::R2T if has_data => {
            return Err(TermError::invalid_field(ch_offset::PLEN));
        }
        PduType::H2CData | PduType::C2HData if !has_data => {
            return Err(TermError::invalid_field(ch_offset::PLEN));
        }
        _ => {}
    }
    if (ch.flags & flags::DDGSTF != 0) != (ddgst_enabled && has_data) {
        return Err(TermError::invalid_field(ch_offset::FLAGS));
    }
    if !has_data {
        return Ok(t);
    }

    let pdo = u32::from(ch.pdo);
    if pdo < header_end || u64::from(pdo) + u64::from(ch.ddgst_len()) >= u64::from(ch.plen) {
        return Err(TermError::invalid_field(ch_offset::PDO));
    }
    let data_len = ch.data_len();
    if role == Role::Controller {
        match t {
            PduType::CapsuleCmd if data_len > incapsule_max => {
                return Err(TermError::invalid_field(ch_offset::PLEN));
            }
            PduType::H2CData if data_len > maxh2cdata => {
                return Err(TermError {
                    fes: fes::DATA_TRANSFER_LIMIT_EXCEEDED,
                    fei: 0,
                });
            }
            _ => {}
        }
    }
    Ok(t)
}

/// Checks that a PDU with data puts PDO on the receiver's PDA alignment
/// (the alignment this side announced: CPDA for a controller, HPDA for a
/// host). Invalid Header Field, FEI 3, when it does not.
pub fn check_pdo_alignment(ch: &CommonHeader, pda: u8) -> Result<(), TermError> {
    if ch.has_data() && u32::from(ch.pdo) % pda_alignment(pda) != 0 {
        return Err(TermError::invalid_field(ch_offset::PDO));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
