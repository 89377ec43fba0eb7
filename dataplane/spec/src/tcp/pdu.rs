//! PDU-specific headers and their encoders (NVMe/TCP 1.0 section 3.6.2).
//!
//! Encoders write the whole header, the header digest when enabled, and the
//! zero padding up to PDO, and return that length; the caller sends the data
//! and the data digest after it. PLEN already counts data and data digest.

use super::{
    data_offset, digest::header_digest, flags, CommonHeader, PduType, CAPSULE_CMD_HLEN,
    CAPSULE_RESP_HLEN, COMMON_HEADER_SIZE, DATA_HLEN, DIGEST_SIZE, IC_PDU_SIZE, R2T_HLEN,
    TERM_REQ_HLEN, TERM_REQ_MAX_DATA,
};
use crate::bytes::{array_at, put_u16, put_u32, u16_at, u32_at};
use crate::nvme::{Cqe, Sqe, CQE_SIZE, SQE_SIZE};

/// DGST byte bits of ICReq/ICResp.
pub mod dgst {
    pub const HDGST_ENABLE: u8 = 0x01;
    pub const DDGST_ENABLE: u8 = 0x02;
}

fn dgst_byte(hdgst: bool, ddgst: bool) -> u8 {
    (if hdgst { dgst::HDGST_ENABLE } else { 0 }) | (if ddgst { dgst::DDGST_ENABLE } else { 0 })
}

fn digest_flags(hdgst: bool, ddgst: bool) -> u8 {
    (if hdgst { flags::HDGSTF } else { 0 }) | (if ddgst { flags::DDGSTF } else { 0 })
}

fn hdgst_len(hdgst: bool) -> usize {
    if hdgst {
        DIGEST_SIZE
    } else {
        0
    }
}

/// Writes the header digest after `hlen` header bytes (when on) and zero
/// padding up to `end`; returns `end`.
fn finish_header(out: &mut [u8], hlen: usize, hdgst: bool, end: usize) -> usize {
    let mut pos = hlen;
    if hdgst {
        let d = header_digest(&out[..hlen]);
        out[pos..pos + DIGEST_SIZE].copy_from_slice(&d);
        pos += DIGEST_SIZE;
    }
    if end > pos {
        out[pos..end].fill(0);
    }
    end.max(pos)
}

/// Initialize Connection Request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IcReq {
    /// PDU format version, bytes 8..10 (0 = 1.0).
    pub pfv: u16,
    /// Host PDU data alignment, 0's based dwords, byte 10.
    pub hpda: u8,
    /// DGST byte 11 bit 0.
    pub hdgst: bool,
    /// DGST byte 11 bit 1.
    pub ddgst: bool,
    /// Maximum outstanding R2Ts per command, 0's based, bytes 12..16.
    pub maxr2t: u32,
}

impl IcReq {
    pub fn parse(b: &[u8; IC_PDU_SIZE]) -> IcReq {
        IcReq {
            pfv: u16_at(b, 8),
            hpda: b[10],
            hdgst: b[11] & dgst::HDGST_ENABLE != 0,
            ddgst: b[11] & dgst::DDGST_ENABLE != 0,
            maxr2t: u32_at(b, 12),
        }
    }

    /// The whole 128-byte PDU, common header included.
    pub fn encode(&self) -> [u8; IC_PDU_SIZE] {
        let mut b = [0u8; IC_PDU_SIZE];
        ic_header(PduType::IcReq).encode(&mut b);
        put_u16(&mut b, 8, self.pfv);
        b[10] = self.hpda;
        b[11] = dgst_byte(self.hdgst, self.ddgst);
        put_u32(&mut b, 12, self.maxr2t);
        b
    }

    /// What a controller checks before answering: PFV 1.0 and HPDA within
    /// 0..=31, else Unsupported Parameter naming the field.
    pub fn check(&self) -> Result<(), super::TermError> {
        if self.pfv != super::PFV_1_0 {
            return Err(super::TermError {
                fes: super::fes::UNSUPPORTED_PARAMETER,
                fei: 8,
            });
        }
        if self.hpda > super::MAX_PDA {
            return Err(super::TermError {
                fes: super::fes::UNSUPPORTED_PARAMETER,
                fei: 10,
            });
        }
        Ok(())
    }
}

/// Initialize Connection Response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IcResp {
    /// PDU format version, bytes 8..10.
    pub pfv: u16,
    /// Controller PDU data alignment, 0's based dwords, byte 10.
    pub cpda: u8,
    /// DGST byte 11 bit 0.
    pub hdgst: bool,
    /// DGST byte 11 bit 1.
    pub ddgst: bool,
    /// Most data bytes per H2CData PDU, bytes 12..16 (>= 4096, dword multiple).
    pub maxh2cdata: u32,
}

impl IcResp {
    pub fn parse(b: &[u8; IC_PDU_SIZE]) -> IcResp {
        IcResp {
            pfv: u16_at(b, 8),
            cpda: b[10],
            hdgst: b[11] & dgst::HDGST_ENABLE != 0,
            ddgst: b[11] & dgst::DDGST_ENABLE != 0,
            maxh2cdata: u32_at(b, 12),
        }
    }

    /// The whole 128-byte PDU, common header included.
    pub fn encode(&self) -> [u8; IC_PDU_SIZE] {
        let mut b = [0u8; IC_PDU_SIZE];
        ic_header(PduType::IcResp).encode(&mut b);
        put_u16(&mut b, 8, self.pfv);
        b[10] = self.cpda;
        b[11] = dgst_byte(self.hdgst, self.ddgst);
        put_u32(&mut b, 12, self.maxh2cdata);
        b
    }
}

fn ic_header(t: PduType) -> CommonHeader {
    CommonHeader {
        pdu_type: t as u8,
        flags: 0,
        hlen: IC_PDU_SIZE as u8,
        pdo: 0,
        plen: IC_PDU_SIZE as u32,
    }
}

/// H2CTermReq / C2HTermReq fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TermReq {
    /// Fatal error status, bytes 8..10.
    pub fes: u16,
    /// Fatal error information, bytes 10..14.
    pub fei: u32,
}

impl TermReq {
    /// Reads FES and FEI from a TermReq header; bytes past the end of `b`
    /// read as zero.
    pub fn parse(b: &[u8]) -> TermReq {
        TermReq {
            fes: u16_at(b, 8),
            fei: u32_at(b, 10),
        }
    }
}

/// Encodes a TermReq of type `pdu_type` (H2CTermReq or C2HTermReq) carrying
/// up to 128 bytes of `offending_header`; returns the PDU length (PLEN).
///
/// # Panics
/// If `out` is shorter than the returned length (at most 152 bytes).
pub fn encode_term_req(
    pdu_type: PduType,
    fes: u16,
    fei: u32,
    offending_header: &[u8],
    out: &mut [u8],
) -> usize {
    let n = offending_header.len().min(TERM_REQ_MAX_DATA);
    let plen = TERM_REQ_HLEN + n;
    CommonHeader {
        pdu_type: pdu_type as u8,
        flags: 0,
        hlen: TERM_REQ_HLEN as u8,
        pdo: 0,
        plen: plen as u32,
    }
    .encode(out);
    put_u16(out, 8, fes);
    put_u32(out, 10, fei);
    out[14..TERM_REQ_HLEN].fill(0);
    out[TERM_REQ_HLEN..plen].copy_from_slice(&offending_header[..n]);
    plen
}

/// Encodes a command capsule header: common header, SQE, header digest and
/// padding up to PDO when `incapsule_data_len` > 0. PDO honours `cpda`, the
/// receiving controller's alignment. Returns the bytes written; the
/// in-capsule data (and its digest when `ddgst`) follow.
///
/// # Panics
/// If `out` is shorter than the returned length ([`super::MAX_HEADER_BUF`]
/// always suffices).
pub fn encode_capsule_cmd_header(
    sqe: &Sqe,
    hdgst: bool,
    ddgst: bool,
    incapsule_data_len: u32,
    cpda: u8,
    out: &mut [u8],
) -> usize {
    let has_data = incapsule_data_len > 0;
    let header_end = CAPSULE_CMD_HLEN + hdgst_len(hdgst);
    let ddgst = ddgst && has_data;
    let (pdo, end) = if has_data {
        let pdo = data_offset(CAPSULE_CMD_HLEN, hdgst, cpda);
        (pdo, usize::from(pdo))
    } else {
        (0, header_end)
    };
    let plen = if has_data {
        end as u32 + incapsule_data_len + if ddgst { DIGEST_SIZE as u32 } else { 0 }
    } else {
        header_end as u32
    };
    CommonHeader {
        pdu_type: PduType::CapsuleCmd as u8,
        flags: digest_flags(hdgst, ddgst),
        hlen: CAPSULE_CMD_HLEN as u8,
        pdo,
        plen,
    }
    .encode(out);
    out[COMMON_HEADER_SIZE..CAPSULE_CMD_HLEN].copy_from_slice(&sqe.to_bytes());
    finish_header(out, CAPSULE_CMD_HLEN, hdgst, end)
}

/// The SQE of a command capsule header (bytes 8..72).
pub fn capsule_cmd_sqe(hdr: &[u8; CAPSULE_CMD_HLEN]) -> Sqe {
    Sqe::from_bytes(&array_at::<SQE_SIZE>(hdr, COMMON_HEADER_SIZE))
}

/// Encodes a response capsule: common header, CQE, header digest when on.
/// Returns 24 or 28.
pub fn encode_capsule_resp(cqe: &Cqe, hdgst: bool, out: &mut [u8; 28]) -> usize {
    let len = CAPSULE_RESP_HLEN + hdgst_len(hdgst);
    CommonHeader {
        pdu_type: PduType::CapsuleResp as u8,
        flags: digest_flags(hdgst, false),
        hlen: CAPSULE_RESP_HLEN as u8,
        pdo: 0,
        plen: len as u32,
    }
    .encode(out);
    out[COMMON_HEADER_SIZE..CAPSULE_RESP_HLEN].copy_from_slice(&cqe.to_bytes());
    finish_header(out, CAPSULE_RESP_HLEN, hdgst, len)
}

/// The CQE of a response capsule header (bytes 8..24).
pub fn capsule_resp_cqe(hdr: &[u8; CAPSULE_RESP_HLEN]) -> Cqe {
    Cqe::from_bytes(&array_at::<CQE_SIZE>(hdr, COMMON_HEADER_SIZE))
}

/// H2CData / C2HData PDU-specific header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataHeader {
    /// Command capsule CID, bytes 8..10.
    pub cccid: u16,
    /// Transfer tag from the R2T (H2CData); reserved (0) in C2HData. 10..12.
    pub ttag: u16,
    /// Offset of this PDU's data in the command's data, bytes 12..16.
    pub datao: u32,
    /// Data bytes in this PDU, bytes 16..20.
    pub datal: u32,
}

impl DataHeader {
    /// Reads a data PDU header (24+ bytes, common header included); bytes
    /// past the end of `b` read as zero.
    pub fn parse(b: &[u8]) -> DataHeader {
        DataHeader {
            cccid: u16_at(b, 8),
            ttag: u16_at(b, 10),
            datao: u32_at(b, 12),
            datal: u32_at(b, 16),
        }
    }

    /// DATAL must be non-zero and equal the data PLEN carries
    /// (`ch.data_len()`); Invalid Header Field naming DATAL (FEI 16) if not.
    pub fn check_len(&self, ch: &CommonHeader) -> Result<(), super::TermError> {
        if self.datal == 0 || self.datal != ch.data_len() {
            return Err(super::TermError::invalid_field(16));
        }
        Ok(())
    }

    fn write(&self, out: &mut [u8]) {
        put_u16(out, 8, self.cccid);
        put_u16(out, 10, self.ttag);
        put_u32(out, 12, self.datao);
        put_u32(out, 16, self.datal);
        out[20..DATA_HLEN].fill(0);
    }
}

fn encode_data_header(
    t: PduType,
    h: &DataHeader,
    extra_flags: u8,
    hdgst: bool,
    ddgst: bool,
    pda: u8,
    out: &mut [u8],
) -> usize {
    let has_data = h.datal > 0;
    let ddgst = ddgst && has_data;
    let header_end = DATA_HLEN + hdgst_len(hdgst);
    let (pdo, end) = if has_data {
        let pdo = data_offset(DATA_HLEN, hdgst, pda);
        (pdo, usize::from(pdo))
    } else {
        (0, header_end)
    };
    let plen = end as u32 + h.datal + if ddgst { DIGEST_SIZE as u32 } else { 0 };
    CommonHeader {
        pdu_type: t as u8,
        flags: digest_flags(hdgst, ddgst) | extra_flags,
        hlen: DATA_HLEN as u8,
        pdo,
        plen,
    }
    .encode(out);
    h.write(out);
    finish_header(out, DATA_HLEN, hdgst, end)
}

/// Encodes a C2HData header for `h.datal` data bytes, PDO aligned to `pda`
/// (the host's HPDA). `success` (the SUCCESS flag: no response capsule will
/// follow) implies `last`, as the spec requires; a controller may only use it
/// when the host disabled SQ flow control at Connect, since the skipped
/// response would have carried SQHD. Returns header bytes including header
/// digest and padding.
///
/// # Panics
/// If `out` is shorter than the returned length ([`super::MAX_HEADER_BUF`]
/// always suffices).
pub fn encode_c2h_data_header(
    h: &DataHeader,
    last: bool,
    success: bool,
    hdgst: bool,
    ddgst: bool,
    pda: u8,
    out: &mut [u8],
) -> usize {
    let f = (if last || success { flags::DATA_LAST } else { 0 })
        | (if success { flags::DATA_SUCCESS } else { 0 });
    encode_data_header(PduType::C2HData, h, f, hdgst, ddgst, pda, out)
}

/// Encodes an H2CData header (host side), PDO aligned to `pda` (the
/// controller's CPDA). Returns header bytes including header digest and
/// padding.
///
/// # Panics
/// If `out` is shorter than the returned length.
pub fn encode_h2c_data_header(
    h: &DataHeader,
    last: bool,
    hdgst: bool,
    ddgst: bool,
    pda: u8,
    out: &mut [u8],
) -> usize {
    let f = if last { flags::DATA_LAST } else { 0 };
    encode_data_header(PduType::H2CData, h, f, hdgst, ddgst, pda, out)
}

/// Ready to Transfer PDU-specific header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct R2t {
    /// Command capsule CID, bytes 8..10.
    pub cccid: u16,
    /// Transfer tag, echoed in the H2CData PDUs, bytes 10..12.
    pub ttag: u16,
    /// Offset into the command's data, bytes 12..16.
    pub r2to: u32,
    /// Bytes requested, bytes 16..20.
    pub r2tl: u32,
}

impl R2t {
    /// Reads an R2T header (24+ bytes); bytes past the end read as zero.
    pub fn parse(b: &[u8]) -> R2t {
        R2t {
            cccid: u16_at(b, 8),
            ttag: u16_at(b, 10),
            r2to: u32_at(b, 12),
            r2tl: u32_at(b, 16),
        }
    }
}

/// Encodes an R2T PDU; returns 24 or 28.
pub fn encode_r2t(r: &R2t, hdgst: bool, out: &mut [u8; 28]) -> usize {
    let len = R2T_HLEN + hdgst_len(hdgst);
    CommonHeader {
        pdu_type: PduType::R2T as u8,
        flags: digest_flags(hdgst, false),
        hlen: R2T_HLEN as u8,
        pdo: 0,
        plen: len as u32,
    }
    .encode(out);
    put_u16(out, 8, r.cccid);
    put_u16(out, 10, r.ttag);
    put_u32(out, 12, r.r2to);
    put_u32(out, 16, r.r2tl);
    out[20..R2T_HLEN].fill(0);
    finish_header(out, R2T_HLEN, hdgst, len)
}
