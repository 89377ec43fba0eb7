//! Submission and completion queue entries, SGL descriptors, opcodes and the
//! controller registers that NVMe-oF exposes as properties.
//!
//! Layouts from NVMe Base 2.0: Common Command Format, Completion Queue Entry,
//! SGL descriptor formats and the controller register map.

use crate::bytes::{array_at, put_u16, put_u32, put_u64, u16_at, u32_at, u64_at};
use crate::status::Status;

pub const SQE_SIZE: usize = 64;
pub const CQE_SIZE: usize = 16;
pub const SGL_DESCRIPTOR_SIZE: usize = 16;

pub const NVME_VERSION_1_3: u32 = 0x0001_0300;
pub const NVME_VERSION_1_4: u32 = 0x0001_0400;
pub const NVME_VERSION_2_0: u32 = 0x0002_0000;

/// Namespace ID meaning "all namespaces" / "broadcast".
pub const NSID_ALL: u32 = 0xFFFF_FFFF;

/// A 64-byte submission queue entry, every field as it sits on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sqe {
    pub opcode: u8,
    /// Command dword 0 bits 15:8: FUSE in 1:0, PSDT in 7:6.
    pub flags: u8,
    pub cid: u16,
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    pub mptr: u64,
    pub dptr: [u8; 16],
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}

/// Byte offsets of the SQE fields (Common Command Format); also the IPO values a Connect
/// response names when an SQE field is wrong.
pub mod sqe_offset {
    pub const OPCODE: usize = 0;
    pub const FLAGS: usize = 1;
    pub const CID: usize = 2;
    pub const NSID: usize = 4;
    pub const CDW2: usize = 8;
    pub const CDW3: usize = 12;
    pub const MPTR: usize = 16;
    pub const DPTR: usize = 24;
    pub const CDW10: usize = 40;
    pub const CDW11: usize = 44;
    pub const CDW12: usize = 48;
    pub const CDW13: usize = 52;
    pub const CDW14: usize = 56;
    pub const CDW15: usize = 60;
}

/// PSDT values (flags bits 7:6).
pub mod psdt {
    pub const PRP: u8 = 0;
    /// SGL for data, MPTR is the address of a contiguous metadata buffer.
    pub const SGL_MPTR_CONTIGUOUS: u8 = 1;
    /// SGL for data, MPTR is the address of an SGL segment.
    pub const SGL_MPTR_SGL: u8 = 2;
}

/// FUSE values (flags bits 1:0).
pub mod fuse {
    pub const NORMAL: u8 = 0;
    pub const FIRST: u8 = 1;
    pub const SECOND: u8 = 2;
}

impl Sqe {
    pub fn from_bytes(b: &[u8; SQE_SIZE]) -> Sqe {
        use sqe_offset as o;
        Sqe {
            opcode: b[o::OPCODE],
            flags: b[o::FLAGS],
            cid: u16_at(b, o::CID),
            nsid: u32_at(b, o::NSID),
            cdw2: u32_at(b, o::CDW2),
            cdw3: u32_at(b, o::CDW3),
            mptr: u64_at(b, o::MPTR),
            dptr: array_at(b, o::DPTR),
            cdw10: u32_at(b, o::CDW10),
            cdw11: u32_at(b, o::CDW11),
            cdw12: u32_at(b, o::CDW12),
            cdw13: u32_at(b, o::CDW13),
            cdw14: u32_at(b, o::CDW14),
            cdw15: u32_at(b, o::CDW15),
        }
    }

    pub fn to_bytes(&self) -> [u8; SQE_SIZE] {
        use sqe_offset as o;
        let mut b = [0u8; SQE_SIZE];
        b[o::OPCODE] = self.opcode;
        b[o::FLAGS] = self.flags;
        put_u16(&mut b, o::CID, self.cid);
        put_u32(&mut b, o::NSID, self.nsid);
        put_u32(&mut b, o::CDW2, self.cdw2);
        put_u32(&mut b, o::CDW3, self.cdw3);
        put_u64(&mut b, o::MPTR, self.mptr);
        b[o::DPTR..o::DPTR + 16].copy_from_slice(&self.dptr);
        put_u32(&mut b, o::CDW10, self.cdw10);
        put_u32(&mut b, o::CDW11, self.cdw11);
        put_u32(&mut b, o::CDW12, self.cdw12);
        put_u32(&mut b, o::CDW13, self.cdw13);
        put_u32(&mut b, o::CDW14, self.cdw14);
        put_u32(&mut b, o::CDW15, self.cdw15);
        b
    }

    /// DPTR read as an SGL descriptor (meaningful when PSDT is not PRP).
    pub fn sgl(&self) -> SglDescriptor {
        SglDescriptor::from_bytes(&self.dptr)
    }

    /// Stores `desc` in DPTR and sets PSDT to "SGL, contiguous metadata",
    /// what NVMe-oF hosts send.
    pub fn set_sgl(&mut self, desc: &SglDescriptor) {
        self.dptr = desc.to_bytes();
        self.flags = (self.flags & 0x3F) | (psdt::SGL_MPTR_CONTIGUOUS << 6);
    }

    /// PRP or SGL for Data Transfer (flags bits 7:6).
    pub fn psdt(&self) -> u8 {
        self.flags >> 6
    }

    /// Fused operation (flags bits 1:0).
    pub fn fuse(&self) -> u8 {
        self.flags & 0x3
    }

    /// The data direction its opcode implies; see [`data_transfer`].
    pub fn data_direction(&self) -> DataDirection {
        data_transfer(self.opcode)
    }

    /// Read/Write/Compare/Write Zeroes: Starting LBA (CDW11:CDW10).
    pub fn rw_slba(&self) -> u64 {
        u64::from(self.cdw10) | (u64::from(self.cdw11) << 32)
    }

    /// Read/Write/Compare/Write Zeroes: number of logical blocks, already
    /// converted from the 0's based NLB in CDW12 bits 15:0 (1..=65536).
    pub fn rw_nlb(&self) -> u32 {
        (self.cdw12 & 0xFFFF) + 1
    }

    /// Read/Write: Force Unit Access (CDW12 bit 30).
    pub fn rw_fua(&self) -> bool {
        self.cdw12 & (1 << 30) != 0
    }

    /// Read/Write: Limited Retry (CDW12 bit 31).
    pub fn rw_limited_retry(&self) -> bool {
        self.cdw12 & (1 << 31) != 0
    }

    /// Write Zeroes: Deallocate (CDW12 bit 25).
    pub fn write_zeroes_deallocate(&self) -> bool {
        self.cdw12 & (1 << 25) != 0
    }

    /// Dataset Management: number of ranges, from the 0's based NR in CDW10
    /// bits 7:0 (1..=256).
    pub fn dsm_nr(&self) -> u32 {
        (self.cdw10 & 0xFF) + 1
    }

    /// Dataset Management: the Attribute - Deallocate bit (CDW11 bit 2).
    pub fn dsm_deallocate(&self) -> bool {
        self.cdw11 & (1 << 2) != 0
    }
}

/// A 16-byte completion queue entry. The phase tag is kept out of `status`;
/// NVMe-oF leaves it zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cqe {
    pub dw0: u32,
    pub dw1: u32,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    pub status: Status,
}

impl Cqe {
    pub fn new(cid: u16, status: Status) -> Cqe {
        Cqe {
            cid,
            status,
            ..Cqe::default()
        }
    }

    pub fn from_bytes(b: &[u8; CQE_SIZE]) -> Cqe {
        Cqe {
            dw0: u32_at(b, 0),
            dw1: u32_at(b, 4),
            sqhd: u16_at(b, 8),
            sqid: u16_at(b, 10),
            cid: u16_at(b, 12),
            status: Status(u16_at(b, 14) >> 1),
        }
    }

    /// Wire bytes with the phase tag 0 (fabrics).
    pub fn to_bytes(&self) -> [u8; CQE_SIZE] {
        self.to_bytes_with_phase(false)
    }

    /// Wire bytes with the given phase tag (PCIe completion queues).
    pub fn to_bytes_with_phase(&self, phase: bool) -> [u8; CQE_SIZE] {
        let mut b = [0u8; CQE_SIZE];
        put_u32(&mut b, 0, self.dw0);
        put_u32(&mut b, 4, self.dw1);
        put_u16(&mut b, 8, self.sqhd);
        put_u16(&mut b, 10, self.sqid);
        put_u16(&mut b, 12, self.cid);
        put_u16(
            &mut b,
            14,
            ((self.status.0 & 0x7FFF) << 1) | u16::from(phase),
        );
        b
    }

    /// The phase tag of a raw CQE (bit 0 of byte 14).
    pub fn phase_of(b: &[u8; CQE_SIZE]) -> bool {
        b[14] & 1 != 0
    }
}

/// SGL descriptor type values (identifier bits 7:4).
pub mod sgl_type {
    pub const DATA_BLOCK: u8 = 0x0;
    pub const BIT_BUCKET: u8 = 0x1;
    pub const SEGMENT: u8 = 0x2;
    pub const LAST_SEGMENT: u8 = 0x3;
    pub const KEYED_DATA_BLOCK: u8 = 0x4;
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5;
}

/// SGL descriptor sub type values (identifier bits 3:0).
pub mod sgl_subtype {
    pub const ADDRESS: u8 = 0x0;
    pub const OFFSET: u8 = 0x1;
    pub const TRANSPORT_SPECIFIC: u8 = 0xA;
}

/// Identifier byte: Data Block, sub type Offset - in-capsule data.
pub const SGL_DATA_BLOCK_OFFSET: u8 = (sgl_type::DATA_BLOCK << 4) | sgl_subtype::OFFSET;
/// Identifier byte: Transport SGL Data Block, sub type Transport Specific -
/// data moved by the transport (NVMe/TCP R2T/H2CData or C2HData).
pub const SGL_TRANSPORT_DATA_BLOCK: u8 =
    (sgl_type::TRANSPORT_DATA_BLOCK << 4) | sgl_subtype::TRANSPORT_SPECIFIC;

/// A 16-byte (unkeyed) SGL descriptor: address 0..8, length 8..12,
/// identifier at byte 15.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SglDescriptor {
    pub address: u64,
    pub length: u32,
    pub id: u8,
}

impl SglDescriptor {
    pub fn from_bytes(b: &[u8; SGL_DESCRIPTOR_SIZE]) -> SglDescriptor {
        SglDescriptor {
            address: u64_at(b, 0),
            length: u32_at(b, 8),
            id: b[15],
        }
    }

    pub fn to_bytes(&self) -> [u8; SGL_DESCRIPTOR_SIZE] {
        let mut b = [0u8; SGL_DESCRIPTOR_SIZE];
        put_u64(&mut b, 0, self.address);
        put_u32(&mut b, 8, self.length);
        b[15] = self.id;
        b
    }

    /// In-capsule data at `offset` bytes into the capsule's data area.
    pub fn in_capsule(offset: u64, length: u32) -> SglDescriptor {
        SglDescriptor {
            address: offset,
            length,
            id: SGL_DATA_BLOCK_OFFSET,
        }
    }

    /// Data the transport moves (R2T/H2CData or C2HData for NVMe/TCP).
    pub fn transport(length: u32) -> SglDescriptor {
        SglDescriptor {
            address: 0,
            length,
            id: SGL_TRANSPORT_DATA_BLOCK,
        }
    }

    /// Descriptor type (identifier bits 7:4).
    pub fn sgl_type(&self) -> u8 {
        self.id >> 4
    }

    /// Descriptor sub type (identifier bits 3:0).
    pub fn subtype(&self) -> u8 {
        self.id & 0x0F
    }
}

/// Admin command opcodes (NVMe Base 2.0 "Opcodes for Admin Commands"; 0x7F from NVMe-oF).
pub mod admin_opcode {
    pub const DELETE_IO_SQ: u8 = 0x00;
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const DELETE_IO_CQ: u8 = 0x04;
    pub const CREATE_IO_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0A;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0C;
    pub const NAMESPACE_MANAGEMENT: u8 = 0x0D;
    pub const FIRMWARE_COMMIT: u8 = 0x10;
    pub const FIRMWARE_DOWNLOAD: u8 = 0x11;
    pub const DEVICE_SELF_TEST: u8 = 0x14;
    pub const NAMESPACE_ATTACHMENT: u8 = 0x15;
    pub const KEEP_ALIVE: u8 = 0x18;
    pub const DIRECTIVE_SEND: u8 = 0x19;
    pub const DIRECTIVE_RECEIVE: u8 = 0x1A;
    pub const FABRICS: u8 = 0x7F;
    pub const FORMAT_NVM: u8 = 0x80;
    pub const SECURITY_SEND: u8 = 0x81;
    pub const SECURITY_RECEIVE: u8 = 0x82;
}

/// NVM command set I/O opcodes (NVM Command Set 1.0).
pub mod io_opcode {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const WRITE_UNCORRECTABLE: u8 = 0x04;
    pub const COMPARE: u8 = 0x05;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
    pub const VERIFY: u8 = 0x0C;
    pub const RESERVATION_REGISTER: u8 = 0x0D;
    pub const RESERVATION_REPORT: u8 = 0x0E;
    pub const RESERVATION_ACQUIRE: u8 = 0x11;
    pub const RESERVATION_RELEASE: u8 = 0x15;
}

/// Which way a command moves data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataDirection {
    None,
    HostToController,
    ControllerToHost,
    Bidirectional,
}

/// The data transfer direction from opcode bits 1:0 (the "Data Transfer"
/// column of the opcode tables). For the Fabrics opcode (0x7F) use
/// [`crate::fabrics::data_transfer`] on the FCTYPE instead.
pub fn data_transfer(opcode: u8) -> DataDirection {
    match opcode & 0x3 {
        0b00 => DataDirection::None,
        0b01 => DataDirection::HostToController,
        0b10 => DataDirection::ControllerToHost,
        _ => DataDirection::Bidirectional,
    }
}

pub const DSM_RANGE_SIZE: usize = 16;

/// One Dataset Management range (NVM Command Set 1.0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DsmRange {
    pub context_attributes: u32,
    /// Length in logical blocks (not 0's based).
    pub num_blocks: u32,
    pub starting_lba: u64,
}

impl DsmRange {
    pub fn from_bytes(b: &[u8; DSM_RANGE_SIZE]) -> DsmRange {
        DsmRange {
            context_attributes: u32_at(b, 0),
            num_blocks: u32_at(b, 4),
            starting_lba: u64_at(b, 8),
        }
    }

    pub fn to_bytes(&self) -> [u8; DSM_RANGE_SIZE] {
        let mut b = [0u8; DSM_RANGE_SIZE];
        put_u32(&mut b, 0, self.context_attributes);
        put_u32(&mut b, 4, self.num_blocks);
        put_u64(&mut b, 8, self.starting_lba);
        b
    }
}

/// Controller register (property) offsets (NVMe Base 2.0 section 3.1).
pub mod reg {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const INTMS: u32 = 0x0C;
    pub const INTMC: u32 = 0x10;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1C;
    pub const NSSR: u32 = 0x20;
    pub const AQA: u32 = 0x24;
    pub const ASQ: u32 = 0x28;
    pub const ACQ: u32 = 0x30;
}

/// Controller Capabilities (CAP): the fields a target sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cap {
    /// Maximum Queue Entries Supported, 0's based (bits 15:0).
    pub mqes: u16,
    /// Contiguous Queues Required (bit 16).
    pub cqr: bool,
    /// Arbitration Mechanism Supported (bits 18:17).
    pub ams: u8,
    /// Timeout in 500 ms units (bits 31:24).
    pub to: u8,
    /// Doorbell Stride (bits 35:32).
    pub dstrd: u8,
    /// NVM Subsystem Reset Supported (bit 36).
    pub nssrs: bool,
    /// Command Sets Supported (bits 44:37); bit 0 = NVM command set.
    pub css: u8,
    /// Memory Page Size Minimum, 2^(12+n) (bits 51:48).
    pub mpsmin: u8,
    /// Memory Page Size Maximum, 2^(12+n) (bits 55:52).
    pub mpsmax: u8,
}

/// CAP.CSS bit for the NVM command set.
pub const CAP_CSS_NVM: u8 = 1 << 0;
/// CAP.CSS bit for "one or more I/O command sets" (CC.CSS = 110b allowed).
pub const CAP_CSS_IO_COMMAND_SETS: u8 = 1 << 6;
/// CAP.CSS bit for "no I/O command set" (admin-only, e.g. discovery).
pub const CAP_CSS_ADMIN_ONLY: u8 = 1 << 7;

impl Cap {
    pub fn to_u64(&self) -> u64 {
        u64::from(self.mqes)
            | (u64::from(self.cqr) << 16)
            | (u64::from(self.ams & 0x3) << 17)
            | (u64::from(self.to) << 24)
            | (u64::from(self.dstrd & 0xF) << 32)
            | (u64::from(self.nssrs) << 36)
            | (u64::from(self.css) << 37)
            | (u64::from(self.mpsmin & 0xF) << 48)
            | (u64::from(self.mpsmax & 0xF) << 52)
    }

    pub fn from_u64(v: u64) -> Cap {
        Cap {
            mqes: (v & 0xFFFF) as u16,
            cqr: (v >> 16) & 1 != 0,
            ams: ((v >> 17) & 0x3) as u8,
            to: ((v >> 24) & 0xFF) as u8,
            dstrd: ((v >> 32) & 0xF) as u8,
            nssrs: (v >> 36) & 1 != 0,
            css: ((v >> 37) & 0xFF) as u8,
            mpsmin: ((v >> 48) & 0xF) as u8,
            mpsmax: ((v >> 52) & 0xF) as u8,
        }
    }
}

/// CAP value from the fields a fabrics target needs; `mqes` is 0's based.
pub fn cap_value(mqes: u16, to_500ms: u8, css_nvm: bool, dstrd: u8, mpsmin: u8, mpsmax: u8) -> u64 {
    Cap {
        mqes,
        to: to_500ms,
        css: if css_nvm { CAP_CSS_NVM } else { 0 },
        dstrd,
        mpsmin,
        mpsmax,
        ..Cap::default()
    }
    .to_u64()
}

/// Controller Configuration (CC) fields.
pub mod cc {
    pub const EN: u32 = 1 << 0;
    pub const SHN_NONE: u8 = 0;
    pub const SHN_NORMAL: u8 = 1;
    pub const SHN_ABRUPT: u8 = 2;
    pub const CSS_NVM: u8 = 0b000;
    pub const CSS_IO_COMMAND_SETS: u8 = 0b110;
    pub const CSS_ADMIN_ONLY: u8 = 0b111;
}

/// CC.EN (bit 0).
pub fn cc_en(cc: u32) -> bool {
    cc & cc::EN != 0
}

/// CC.CSS, I/O Command Set Selected (bits 6:4).
pub fn cc_css(cc: u32) -> u8 {
    ((cc >> 4) & 0x7) as u8
}

/// CC.MPS, Memory Page Size 2^(12+n) (bits 10:7).
pub fn cc_mps(cc: u32) -> u8 {
    ((cc >> 7) & 0xF) as u8
}

/// CC.AMS, Arbitration Mechanism Selected (bits 13:11).
pub fn cc_ams(cc: u32) -> u8 {
    ((cc >> 11) & 0x7) as u8
}

/// CC.SHN, Shutdown Notification (bits 15:14).
pub fn cc_shn(cc: u32) -> u8 {
    ((cc >> 14) & 0x3) as u8
}

/// CC.IOSQES, I/O SQ entry size 2^n (bits 19:16).
pub fn cc_iosqes(cc: u32) -> u8 {
    ((cc >> 16) & 0xF) as u8
}

/// CC.IOCQES, I/O CQ entry size 2^n (bits 23:20).
pub fn cc_iocqes(cc: u32) -> u8 {
    ((cc >> 20) & 0xF) as u8
}

/// Controller Status (CSTS) bits.
pub mod csts {
    pub const RDY: u32 = 1 << 0;
    pub const CFS: u32 = 1 << 1;
    pub const SHST_NORMAL: u32 = 0 << 2;
    pub const SHST_OCCURRING: u32 = 1 << 2;
    pub const SHST_COMPLETE: u32 = 2 << 2;
    pub const SHST_MASK: u32 = 3 << 2;
    pub const NSSRO: u32 = 1 << 4;
    pub const PP: u32 = 1 << 5;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern_sqe() -> [u8; 64] {
        let mut b = [0u8; 64];
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8;
        }
        b
    }

    #[test]
    fn sqe_offsets_follow_figure_87() {
        let b = pattern_sqe();
        let s = Sqe::from_bytes(&b);
        assert_eq!(s.opcode, 0x00);
        assert_eq!(s.flags, 0x01);
        assert_eq!(s.cid, 0x0302);
        assert_eq!(s.nsid, 0x0706_0504);
        assert_eq!(s.cdw2, 0x0B0A_0908);
        assert_eq!(s.cdw3, 0x0F0E_0D0C);
        assert_eq!(s.mptr, 0x1716_1514_1312_1110);
        assert_eq!(s.dptr[0], 24);
        assert_eq!(s.dptr[15], 39);
        assert_eq!(s.cdw10, 0x2B2A_2928);
        assert_eq!(s.cdw11, 0x2F2E_2D2C);
        assert_eq!(s.cdw12, 0x3332_3130);
        assert_eq!(s.cdw13, 0x3736_3534);
        assert_eq!(s.cdw14, 0x3B3A_3938);
        assert_eq!(s.cdw15, 0x3F3E_3D3C);
        assert_eq!(s.to_bytes(), b);
    }

    #[test]
    fn sqe_flags_fields() {
        let s = Sqe {
            flags: 0b0100_0010,
            ..Sqe::default()
        };
        assert_eq!(s.psdt(), psdt::SGL_MPTR_CONTIGUOUS);
        assert_eq!(s.fuse(), fuse::SECOND);
    }

    #[test]
    fn sqe_sgl_and_set_sgl() {
        let mut s = Sqe {
            flags: fuse::FIRST,
            ..Sqe::default()
        };
        s.set_sgl(&SglDescriptor::transport(8192));
        assert_eq!(s.psdt(), psdt::SGL_MPTR_CONTIGUOUS);
        assert_eq!(s.fuse(), fuse::FIRST);
        let b = s.to_bytes();
        // Length at DPTR+8, identifier at DPTR+15 = SQE byte 39.
        assert_eq!(&b[32..36], &8192u32.to_le_bytes());
        assert_eq!(b[39], 0x5A);
        assert_eq!(Sqe::from_bytes(&b).sgl(), SglDescriptor::transport(8192));
    }

    #[test]
    fn rw_fields() {
        let s = Sqe {
            opcode: io_opcode::WRITE,
            cdw10: 0x89AB_CDEF,
            cdw11: 0x0123_4567,
            cdw12: (1 << 30) | 7,
            ..Sqe::default()
        };
        assert_eq!(s.rw_slba(), 0x0123_4567_89AB_CDEF);
        assert_eq!(s.rw_nlb(), 8);
        assert!(s.rw_fua());
        assert!(!s.rw_limited_retry());
        assert_eq!(s.data_direction(), DataDirection::HostToController);
        let full = Sqe {
            cdw12: 0xFFFF,
            ..Sqe::default()
        };
        assert_eq!(full.rw_nlb(), 65536);
    }

    #[test]
    fn dsm_fields() {
        let s = Sqe {
            opcode: io_opcode::DATASET_MANAGEMENT,
            cdw10: 0xFF,
            cdw11: 1 << 2,
            ..Sqe::default()
        };
        assert_eq!(s.dsm_nr(), 256);
        assert!(s.dsm_deallocate());
    }

    #[test]
    fn cqe_layout_and_phase() {
        let c = Cqe {
            dw0: 0x1122_3344,
            dw1: 0x5566_7788,
            sqhd: 0x99AA,
            sqid: 0xBBCC,
            cid: 0xDDEE,
            status: Status::generic(0x02).with_dnr(),
        };
        let b = c.to_bytes();
        assert_eq!(&b[0..4], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&b[4..8], &[0x88, 0x77, 0x66, 0x55]);
        assert_eq!(&b[8..10], &[0xAA, 0x99]);
        assert_eq!(&b[10..12], &[0xCC, 0xBB]);
        assert_eq!(&b[12..14], &[0xEE, 0xDD]);
        // Status 0x4002 shifted left by one, phase 0.
        assert_eq!(u16::from_le_bytes([b[14], b[15]]), 0x8004);
        assert!(!Cqe::phase_of(&b));
        assert_eq!(Cqe::from_bytes(&b), c);

        let p = c.to_bytes_with_phase(true);
        assert!(Cqe::phase_of(&p));
        assert_eq!(Cqe::from_bytes(&p), c);
    }

    #[test]
    fn cqe_new() {
        let c = Cqe::new(7, Status::SUCCESS);
        assert_eq!(c.cid, 7);
        assert_eq!(c.dw0, 0);
        assert_eq!(c.to_bytes()[14..16], [0, 0]);
    }

    #[test]
    fn sgl_identifiers() {
        assert_eq!(SGL_DATA_BLOCK_OFFSET, 0x01);
        assert_eq!(SGL_TRANSPORT_DATA_BLOCK, 0x5A);
        let d = SglDescriptor::in_capsule(0, 4096);
        assert_eq!(d.sgl_type(), sgl_type::DATA_BLOCK);
        assert_eq!(d.subtype(), sgl_subtype::OFFSET);
        let t = SglDescriptor::transport(1);
        assert_eq!(t.sgl_type(), sgl_type::TRANSPORT_DATA_BLOCK);
        assert_eq!(t.subtype(), sgl_subtype::TRANSPORT_SPECIFIC);
        let b = SglDescriptor {
            address: 0x0102_0304_0506_0708,
            length: 0x0A0B_0C0D,
            id: 0x01,
        }
        .to_bytes();
        assert_eq!(
            b,
            [8, 7, 6, 5, 4, 3, 2, 1, 0x0D, 0x0C, 0x0B, 0x0A, 0, 0, 0, 0x01]
        );
    }

    #[test]
    fn data_direction_from_opcode_bits() {
        assert_eq!(data_transfer(io_opcode::FLUSH), DataDirection::None);
        assert_eq!(
            data_transfer(io_opcode::WRITE),
            DataDirection::HostToController
        );
        assert_eq!(
            data_transfer(io_opcode::READ),
            DataDirection::ControllerToHost
        );
        assert_eq!(
            data_transfer(io_opcode::COMPARE),
            DataDirection::HostToController
        );
        assert_eq!(data_transfer(io_opcode::WRITE_ZEROES), DataDirection::None);
        assert_eq!(
            data_transfer(io_opcode::DATASET_MANAGEMENT),
            DataDirection::HostToController
        );
        assert_eq!(
            data_transfer(admin_opcode::IDENTIFY),
            DataDirection::ControllerToHost
        );
        assert_eq!(
            data_transfer(admin_opcode::GET_LOG_PAGE),
            DataDirection::ControllerToHost
        );
        assert_eq!(
            data_transfer(admin_opcode::SET_FEATURES),
            DataDirection::HostToController
        );
        assert_eq!(data_transfer(admin_opcode::KEEP_ALIVE), DataDirection::None);
        assert_eq!(data_transfer(0x03), DataDirection::Bidirectional);
    }

    #[test]
    fn dsm_range_layout() {
        let r = DsmRange {
            context_attributes: 0x0403_0201,
            num_blocks: 0x0807_0605,
            starting_lba: 0x100F_0E0D_0C0B_0A09,
        };
        let b = r.to_bytes();
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
        assert_eq!(DsmRange::from_bytes(&b), r);
    }

    #[test]
    fn versions() {
        assert_eq!(NVME_VERSION_1_3, (1 << 16) | (3 << 8));
        assert_eq!(NVME_VERSION_1_4, (1 << 16) | (4 << 8));
        assert_eq!(NVME_VERSION_2_0, 2 << 16);
    }

    #[test]
    fn cap_bits_follow_figure_36() {
        let v = cap_value(127, 15, true, 0, 0, 0);
        // MQES 127, TO 15 at bits 31:24, CSS.NVM at bit 37 (matches Linux
        // nvmet_init_cap).
        assert_eq!(v, 127 | (15 << 24) | (1 << 37));
        let c = Cap {
            mqes: 0xFFFF,
            cqr: true,
            ams: 1,
            to: 0xFF,
            dstrd: 0xF,
            nssrs: true,
            css: 0xC1,
            mpsmin: 0xA,
            mpsmax: 0xB,
        };
        let v = c.to_u64();
        assert_eq!(v & 0xFFFF, 0xFFFF);
        assert_eq!((v >> 16) & 1, 1);
        assert_eq!((v >> 17) & 3, 1);
        assert_eq!((v >> 24) & 0xFF, 0xFF);
        assert_eq!((v >> 32) & 0xF, 0xF);
        assert_eq!((v >> 36) & 1, 1);
        assert_eq!((v >> 37) & 0xFF, 0xC1);
        assert_eq!((v >> 48) & 0xF, 0xA);
        assert_eq!((v >> 52) & 0xF, 0xB);
        assert_eq!(Cap::from_u64(v), c);
    }

    #[test]
    fn cc_fields_follow_figure_41() {
        // Linux host enable value: EN | CSS NVM | MPS 0 | AMS RR | IOSQES 6 | IOCQES 4.
        let cc = 1 | (6 << 16) | (4 << 20);
        assert!(cc_en(cc));
        assert_eq!(cc_css(cc), cc::CSS_NVM);
        assert_eq!(cc_mps(cc), 0);
        assert_eq!(cc_ams(cc), 0);
        assert_eq!(cc_shn(cc), cc::SHN_NONE);
        assert_eq!(cc_iosqes(cc), 6);
        assert_eq!(cc_iocqes(cc), 4);
        assert_eq!(cc_shn(1 << 14), cc::SHN_NORMAL);
        assert_eq!(cc_shn(2 << 14), cc::SHN_ABRUPT);
        assert_eq!(cc_css(6 << 4), cc::CSS_IO_COMMAND_SETS);
        assert_eq!(cc_mps(3 << 7), 3);
        assert_eq!(cc_ams(7 << 11), 7);
        assert!(!cc_en(0));
    }

    #[test]
    fn register_offsets() {
        assert_eq!(reg::CAP, 0x00);
        assert_eq!(reg::VS, 0x08);
        assert_eq!(reg::CC, 0x14);
        assert_eq!(reg::CSTS, 0x1C);
        assert_eq!(reg::NSSR, 0x20);
        assert_eq!(csts::SHST_COMPLETE, 0x8);
        assert_eq!(csts::SHST_OCCURRING, 0x4);
    }
}

#[cfg(test)]
mod roundtrip {
    use super::*;

    #[test]
    fn arbitrary_bytes_roundtrip() {
        let mut x: u64 = 0x1234_5678;
        let mut byte = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        };
        for _ in 0..1000 {
            let mut s = [0u8; 64];
            s.iter_mut().for_each(|b| *b = byte());
            assert_eq!(Sqe::from_bytes(&s).to_bytes(), s);
            let mut c = [0u8; 16];
            c.iter_mut().for_each(|b| *b = byte());
            let phase = Cqe::phase_of(&c);
            assert_eq!(Cqe::from_bytes(&c).to_bytes_with_phase(phase), c);
            let mut d = [0u8; 16];
            d.iter_mut().for_each(|b| *b = byte());
            assert_eq!(DsmRange::from_bytes(&d).to_bytes(), d);
        }
    }
}
