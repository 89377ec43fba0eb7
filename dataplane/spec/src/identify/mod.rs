//! Identify data structures (NVMe Base 2.0 section 5.17.2; NVM Command Set
//! 1.0 section 4.1.5). All are 4096 bytes; offsets are checked by the tests
//! below against the spec figures and Linux `struct nvme_id_ctrl`/`nvme_id_ns`.

use crate::bytes::{array_at, put_u16, put_u32, put_u64, u16_at, u32_at, u64_at};
use crate::nvme::Sqe;

pub use crate::fabrics::NQN_FIELD_SIZE;

pub const IDENTIFY_DATA_SIZE: usize = 4096;

/// Controller or Namespace Structure values (CDW10 bits 7:0).
pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    pub const NS_ID_DESCRIPTORS: u8 = 0x03;
    pub const CS_NAMESPACE: u8 = 0x05;
    pub const CS_CONTROLLER: u8 = 0x06;
    pub const CS_ACTIVE_NS_LIST: u8 = 0x07;
    pub const CS_INDEPENDENT_NAMESPACE: u8 = 0x08;
    pub const ALLOCATED_NS_LIST: u8 = 0x10;
    pub const CONTROLLER_LIST: u8 = 0x13;
}

/// Command Set Identifier values.
pub mod csi {
    pub const NVM: u8 = 0x00;
    pub const KEY_VALUE: u8 = 0x01;
    pub const ZONED: u8 = 0x02;
}

/// The fields of an Identify command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentifyCommand {
    pub nsid: u32,
    /// CDW10 bits 7:0.
    pub cns: u8,
    /// Controller identifier, CDW10 bits 31:16.
    pub cntid: u16,
    /// CNS specific identifier, CDW11 bits 15:0.
    pub cnssid: u16,
    /// Command set identifier, CDW11 bits 31:24.
    pub csi: u8,
}

impl IdentifyCommand {
    pub fn parse(sqe: &Sqe) -> IdentifyCommand {
        IdentifyCommand {
            nsid: sqe.nsid,
            cns: (sqe.cdw10 & 0xFF) as u8,
            cntid: (sqe.cdw10 >> 16) as u16,
            cnssid: (sqe.cdw11 & 0xFFFF) as u16,
            csi: (sqe.cdw11 >> 24) as u8,
        }
    }

    /// An Identify SQE (opcode 0x06); the transport fills DPTR.
    pub fn to_sqe(&self, cid: u16) -> Sqe {
        Sqe {
            opcode: crate::nvme::admin_opcode::IDENTIFY,
            cid,
            nsid: self.nsid,
            cdw10: u32::from(self.cns) | (u32::from(self.cntid) << 16),
            cdw11: u32::from(self.cnssid) | (u32::from(self.csi) << 24),
            ..Sqe::default()
        }
    }
}

/// `s` as an ASCII field padded with spaces, as SN, MN and FR require.
/// Characters outside printable ASCII become `?`; text longer than `N`
/// bytes is cut.
pub fn pad_ascii<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [b' '; N];
    for (dst, c) in out.iter_mut().zip(s.chars()) {
        *dst = if c.is_ascii_graphic() || c == ' ' {
            c as u8
        } else {
            b'?'
        };
    }
    out
}

/// `s` as a NUL-padded 256-byte NQN field (cut at 255 bytes).
pub fn nqn_bytes(s: &str) -> [u8; NQN_FIELD_SIZE] {
    crate::fabrics::nqn_field(s)
}

/// Text of a space-padded ASCII field (SN, MN, FR) without the padding.
pub fn ascii_trimmed(field: &[u8]) -> &str {
    let s = crate::bytes::nul_trimmed_str(field);
    s.trim_end_matches(' ')
}

/// SQES value for 64-byte entries (minimum and maximum 2^6).
pub const SQES_64: u8 = 0x66;
/// CQES value for 16-byte entries (minimum and maximum 2^4).
pub const CQES_16: u8 = 0x44;

/// CMIC bits (byte 76).
pub mod cmic {
    pub const MULTI_PORT: u8 = 1 << 0;
    pub const MULTI_CONTROLLER: u8 = 1 << 1;
    pub const SRIOV: u8 = 1 << 2;
    pub const ANA_REPORTING: u8 = 1 << 3;
}

/// CTRATT bits (bytes 96..100).
pub mod ctratt {
    pub const HOST_ID_128_BIT: u32 = 1 << 0;
    pub const NON_OPERATIONAL_POWER_STATE_PERMISSIVE: u32 = 1 << 1;
    pub const TBKAS: u32 = 1 << 6;
}

/// CNTRLTYPE values (byte 111).
pub mod cntrltype {
    pub const IO: u8 = 1;
    pub const DISCOVERY: u8 = 2;
    pub const ADMINISTRATIVE: u8 = 3;
}

/// OACS bits (bytes 256..258).
pub mod oacs {
    pub const SECURITY: u16 = 1 << 0;
    pub const FORMAT_NVM: u16 = 1 << 1;
    pub const FIRMWARE: u16 = 1 << 2;
    pub const NS_MANAGEMENT: u16 = 1 << 3;
    pub const DEVICE_SELF_TEST: u16 = 1 << 4;
    pub const DIRECTIVES: u16 = 1 << 5;
    pub const NVME_MI: u16 = 1 << 6;
    pub const VIRTUALIZATION: u16 = 1 << 7;
    pub const DOORBELL_BUFFER_CONFIG: u16 = 1 << 8;
    pub const GET_LBA_STATUS: u16 = 1 << 9;
}

/// LPA bits (byte 261).
pub mod lpa {
    pub const SMART_PER_NAMESPACE: u8 = 1 << 0;
    pub const COMMANDS_SUPPORTED_AND_EFFECTS: u8 = 1 << 1;
    pub const EXTENDED_DATA: u8 = 1 << 2;
    pub const TELEMETRY: u8 = 1 << 3;
    pub const PERSISTENT_EVENT: u8 = 1 << 4;
}

/// ONCS bits (bytes 520..522).
pub mod oncs {
    pub const COMPARE: u16 = 1 << 0;
    pub const WRITE_UNCORRECTABLE: u16 = 1 << 1;
    pub const DATASET_MANAGEMENT: u16 = 1 << 2;
    pub const WRITE_ZEROES: u16 = 1 << 3;
    pub const SAVE_FIELD: u16 = 1 << 4;
    pub const RESERVATIONS: u16 = 1 << 5;
    pub const TIMESTAMP: u16 = 1 << 6;
    pub const VERIFY: u16 = 1 << 7;
}

/// FUSES bits (bytes 522..524).
pub mod fuses {
    pub const COMPARE_AND_WRITE: u16 = 1 << 0;
}

/// VWC bits (byte 525).
pub mod vwc {
    pub const PRESENT: u8 = 1 << 0;
    /// Bits 2:1 = 11b: Flush with NSID FFFFFFFFh is supported.
    pub const FLUSH_BROADCAST_SUPPORTED: u8 = 0b11 << 1;
    pub const FLUSH_BROADCAST_NOT_SUPPORTED: u8 = 0b10 << 1;
}

/// ANACAP bits (byte 343).
pub mod anacap {
    pub const OPTIMIZED: u8 = 1 << 0;
    pub const NON_OPTIMIZED: u8 = 1 << 1;
    pub const INACCESSIBLE: u8 = 1 << 2;
    pub const PERSISTENT_LOSS: u8 = 1 << 3;
    pub const CHANGE: u8 = 1 << 4;
    pub const ANAGRPID_STATIC: u8 = 1 << 6;
    pub const ANAGRPID_NONZERO: u8 = 1 << 7;
}

/// SGLS bits (bytes 536..540).
pub mod sgls {
    /// Bits 1:0 = 01b: SGLs supported, no alignment requirement.
    pub const SUPPORTED: u32 = 0b01;
    /// Bits 1:0 = 10b: SGLs supported, dword alignment required.
    pub const SUPPORTED_DWORD_ALIGNED: u32 = 0b10;
    pub const KEYED_DATA_BLOCK: u32 = 1 << 2;
    pub const BIT_BUCKET: u32 = 1 << 16;
    pub const METADATA_BYTE_ALIGNED: u32 = 1 << 17;
    pub const LONGER_THAN_DATA: u32 = 1 << 18;
    pub const MPTR_SGL: u32 = 1 << 19;
    /// The Offset sub type (in-capsule data) is supported.
    pub const OFFSET: u32 = 1 << 20;
    pub const TRANSPORT_SGL_DATA_BLOCK: u32 = 1 << 21;
}

/// OFCS bits (bytes 1804..1806).
pub mod ofcs {
    pub const DISCONNECT: u16 = 1 << 0;
}

/// Byte offsets of Identify Controller fields ("Identify Controller Data Structure"; NVMe-oF adds the fabrics fields from byte 1792).
pub mod ctrl_offset {
    pub const VID: usize = 0;
    pub const SSVID: usize = 2;
    pub const SN: usize = 4;
    pub const MN: usize = 24;
    pub const FR: usize = 64;
    pub const RAB: usize = 72;
    pub const IEEE: usize = 73;
    pub const CMIC: usize = 76;
    pub const MDTS: usize = 77;
    pub const CNTLID: usize = 78;
    pub const VER: usize = 80;
    pub const OAES: usize = 92;
    pub const CTRATT: usize = 96;
    pub const CNTRLTYPE: usize = 111;
    pub const OACS: usize = 256;
    pub const ACL: usize = 258;
    pub const AERL: usize = 259;
    pub const FRMW: usize = 260;
    pub const LPA: usize = 261;
    pub const ELPE: usize = 262;
    pub const KAS: usize = 320;
    pub const ANATT: usize = 342;
    pub const ANACAP: usize = 343;
    pub const ANAGRPMAX: usize = 344;
    pub const NANAGRPID: usize = 348;
    pub const SQES: usize = 512;
    pub const CQES: usize = 513;
    pub const MAXCMD: usize = 514;
    pub const NN: usize = 516;
    pub const ONCS: usize = 520;
    pub const FUSES: usize = 522;
    pub const FNA: usize = 524;
    pub const VWC: usize = 525;
    pub const AWUN: usize = 526;
    pub const AWUPF: usize = 528;
    pub const SGLS: usize = 536;
    pub const MNAN: usize = 540;
    pub const SUBNQN: usize = 768;
    pub const IOCCSZ: usize = 1792;
    pub const IORCSZ: usize = 1796;
    pub const ICDOFF: usize = 1800;
    pub const FCATT: usize = 1802;
    pub const MSDBD: usize = 1803;
    pub const OFCS: usize = 1804;
}

/// Identify Controller data structure (CNS 01h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentifyController {
    pub vid: u16,
    pub ssvid: u16,
    /// Serial number, ASCII, space padded (see [`pad_ascii`]).
    pub sn: [u8; 20],
    /// Model number, ASCII, space padded.
    pub mn: [u8; 40],
    /// Firmware revision, ASCII, space padded.
    pub fr: [u8; 8],
    pub rab: u8,
    pub ieee: [u8; 3],
    pub cmic: u8,
    /// Maximum data transfer size, 2^n minimum pages (0 = no limit).
    pub mdts: u8,
    pub cntlid: u16,
    pub ver: u32,
    pub oaes: u32,
    pub ctratt: u32,
    pub cntrltype: u8,
    pub oacs: u16,
    /// Abort command limit, 0's based.
    pub acl: u8,
    /// Asynchronous event request limit, 0's based.
    pub aerl: u8,
    pub frmw: u8,
    pub lpa: u8,
    /// Error log page entries, 0's based.
    pub elpe: u8,
    /// Keep alive granularity in 100 ms units.
    pub kas: u16,
    /// Required SQ entry size: bits 3:0 minimum, 7:4 maximum (log2).
    pub sqes: u8,
    /// Required CQ entry size: bits 3:0 minimum, 7:4 maximum (log2).
    pub cqes: u8,
    pub maxcmd: u16,
    /// Number of namespaces (highest valid NSID).
    pub nn: u32,
    pub oncs: u16,
    pub fuses: u16,
    pub fna: u8,
    pub vwc: u8,
    pub awun: u16,
    pub awupf: u16,
    pub sgls: u32,
    /// ANA transition time in seconds.
    pub anatt: u8,
    pub anacap: u8,
    pub anagrpmax: u32,
    pub nanagrpid: u32,
    pub mnan: u32,
    /// Subsystem NQN, NUL padded (see [`nqn_bytes`]).
    pub subnqn: [u8; NQN_FIELD_SIZE],
    /// I/O queue command capsule supported size, 16-byte units.
    pub ioccsz: u32,
    /// I/O queue response capsule supported size, 16-byte units.
    pub iorcsz: u32,
    /// In-capsule data offset, 16-byte units.
    pub icdoff: u16,
    /// Fabrics controller attributes (bit 0: static model).
    pub fcatt: u8,
    /// Maximum SGL data block descriptors per command.
    pub msdbd: u8,
    /// Optional fabrics commands supported.
    pub ofcs: u16,
}

impl Default for IdentifyController {
    fn default() -> Self {
        IdentifyController {
            vid: 0,
            ssvid: 0,
            sn: [b' '; 20],
            mn: [b' '; 40],
            fr: [b' '; 8],
            rab: 0,
            ieee: [0; 3],
            cmic: 0,
            mdts: 0,
            cntlid: 0,
            ver: 0,
            oaes: 0,
            ctratt: 0,
            cntrltype: 0,
            oacs: 0,
            acl: 0,
            aerl: 0,
            frmw: 0,
            lpa: 0,
            elpe: 0,
            kas: 0,
            sqes: 0,
            cqes: 0,
            maxcmd: 0,
            nn: 0,
            oncs: 0,
            fuses: 0,
            fna: 0,
            vwc: 0,
            awun: 0,
            awupf: 0,
            sgls: 0,
            anatt: 0,
            anacap: 0,
            anagrpmax: 0,
            nanagrpid: 0,
            mnan: 0,
            subnqn: [0; NQN_FIELD_SIZE],
            ioccsz: 0,
            iorcsz: 0,
            icdoff: 0,
            fcatt: 0,
            msdbd: 0,
            ofcs: 0,
        }
    }
}

impl IdentifyController {
    /// Writes the structure; every byte this type does not model is zeroed.
    pub fn encode(&self, out: &mut [u8; IDENTIFY_DATA_SIZE]) {
        use ctrl_offset as o;
        out.fill(0);
        put_u16(out, o::VID, self.vid);
        put_u16(out, o::SSVID, self.ssvid);
        out[o::SN..o::SN + 20].copy_from_slice(&self.sn);
        out[o::MN..o::MN + 40].copy_from_slice(&self.mn);
        out[o::FR..o::FR + 8].copy_from_slice(&self.fr);
        out[o::RAB] = self.rab;
        out[o::IEEE..o::IEEE + 3].copy_from_slice(&self.ieee);
        out[o::CMIC] = self.cmic;
        out[o::MDTS] = self.mdts;
        put_u16(out, o::CNTLID, self.cntlid);
        put_u32(out, o::VER, self.ver);
        put_u32(out, o::OAES, self.oaes);
        put_u32(out, o::CTRATT, self.ctratt);
        out[o::CNTRLTYPE] = self.cntrltype;
        put_u16(out, o::OACS, self.oacs);
        out[o::ACL] = self.acl;
        out[o::AERL] = self.aerl;
        out[o::FRMW] = self.frmw;
        out[o::LPA] = self.lpa;
        out[o::ELPE] = self.elpe;
        put_u16(out, o::KAS, self.kas);
        out[o::ANATT] = self.anatt;
        out[o::ANACAP] = self.anacap;
        put_u32(out, o::ANAGRPMAX, self.anagrpmax);
        put_u32(out, o::NANAGRPID, self.nanagrpid);
        out[o::SQES] = self.sqes;
        out[o::CQES] = self.cqes;
        put_u16(out, o::MAXCMD, self.maxcmd);
        put_u32(out, o::NN, self.nn);
        put_u16(out, o::ONCS, self.oncs);
        put_u16(out, o::FUSES, self.fuses);
        out[o::FNA] = self.fna;
        out[o::VWC] = self.vwc;
        put_u16(out, o::AWUN, self.awun);
        put_u16(out, o::AWUPF, self.awupf);
        put_u32(out, o::SGLS, self.sgls);
        put_u32(out, o::MNAN, self.mnan);
        out[o::SUBNQN..o::SUBNQN + NQN_FIELD_SIZE].copy_from_slice(&self.subnqn);
        put_u32(out, o::IOCCSZ, self.ioccsz);
        put_u32(out, o::IORCSZ, self.iorcsz);
        put_u16(out, o::ICDOFF, self.icdoff);
        out[o::FCATT] = self.fcatt;
        out[o::MSDBD] = self.msdbd;
        put_u16(out, o::OFCS, self.ofcs);
    }

    pub fn parse(b: &[u8; IDENTIFY_DATA_SIZE]) -> IdentifyController {
        use ctrl_offset as o;
        IdentifyController {
            vid: u16_at(b, o::VID),
            ssvid: u16_at(b, o::SSVID),
            sn: array_at(b, o::SN),
            mn: array_at(b, o::MN),
            fr: array_at(b, o::FR),
            rab: b[o::RAB],
            ieee: array_at(b, o::IEEE),
            cmic: b[o::CMIC],
            mdts: b[o::MDTS],
            cntlid: u16_at(b, o::CNTLID),
            ver: u32_at(b, o::VER),
            oaes: u32_at(b, o::OAES),
            ctratt: u32_at(b, o::CTRATT),
            cntrltype: b[o::CNTRLTYPE],
            oacs: u16_at(b, o::OACS),
            acl: b[o::ACL],
            aerl: b[o::AERL],
            frmw: b[o::FRMW],
            lpa: b[o::LPA],
            elpe: b[o::ELPE],
            kas: u16_at(b, o::KAS),
            sqes: b[o::SQES],
            cqes: b[o::CQES],
            maxcmd: u16_at(b, o::MAXCMD),
            nn: u32_at(b, o::NN),
            oncs: u16_at(b, o::ONCS),
            fuses: u16_at(b, o::FUSES),
            fna: b[o::FNA],
            vwc: b[o::VWC],
            awun: u16_at(b, o::AWUN),
            awupf: u16_at(b, o::AWUPF),
            sgls: u32_at(b, o::SGLS),
            anatt: b[o::ANATT],
            anacap: b[o::ANACAP],
            anagrpmax: u32_at(b, o::ANAGRPMAX),
            nanagrpid: u32_at(b, o::NANAGRPID),
            mnan: u32_at(b, o::MNAN),
            subnqn: array_at(b, o::SUBNQN),
            ioccsz: u32_at(b, o::IOCCSZ),
            iorcsz: u32_at(b, o::IORCSZ),
            icdoff: u16_at(b, o::ICDOFF),
            fcatt: b[o::FCATT],
            msdbd: b[o::MSDBD],
            ofcs: u16_at(b, o::OFCS),
        }
    }

    /// Subsystem NQN text (see [`crate::fabrics::ConnectData::subnqn_str`]).
    pub fn subnqn_str(&self) -> &str {
        crate::bytes::nul_trimmed_str(&self.subnqn)
    }
}

/// Byte offsets of Identify Namespace fields (NVM Command Set 1.0, "Identify Namespace Data Structure").
pub mod ns_offset {
    pub const NSZE: usize = 0;
    pub const NCAP: usize = 8;
    pub const NUSE: usize = 16;
    pub const NSFEAT: usize = 24;
    pub const NLBAF: usize = 25;
    pub const FLBAS: usize = 26;
    pub const NMIC: usize = 30;
    pub const DLFEAT: usize = 33;
    pub const ANAGRPID: usize = 92;
    pub const NSATTR: usize = 99;
    pub const NGUID: usize = 104;
    pub const EUI64: usize = 120;
    /// LBA Format 0: MS u16 at +0, LBADS at +2, RP at +3.
    pub const LBAF0: usize = 128;
}

/// NSFEAT bits (byte 24).
pub mod nsfeat {
    pub const THIN_PROVISIONING: u8 = 1 << 0;
    pub const NSABP: u8 = 1 << 1;
    pub const DEALLOCATED_ERROR: u8 = 1 << 2;
    pub const UID_REUSE: u8 = 1 << 3;
    pub const OPTPERF: u8 = 1 << 4;
}

/// NMIC bits (byte 30).
pub mod nmic {
    /// The namespace may be attached to two or more controllers.
    pub const SHARED: u8 = 1 << 0;
}

/// DLFEAT values (byte 33): what a read of deallocated blocks returns.
pub mod dlfeat {
    pub const READ_NOT_REPORTED: u8 = 0b000;
    pub const READ_ZEROES: u8 = 0b001;
    pub const READ_ONES: u8 = 0b010;
    /// Write Zeroes with Deallocate is supported.
    pub const WRITE_ZEROES_DEALLOCATE: u8 = 1 << 3;
    pub const GUARD_CRC: u8 = 1 << 4;
}

/// Identify Namespace data structure (CNS 00h), with LBA format 0 only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentifyNamespace {
    /// Namespace size in logical blocks.
    pub nsze: u64,
    /// Namespace capacity in logical blocks.
    pub ncap: u64,
    /// Namespace utilization in logical blocks.
    pub nuse: u64,
    pub nsfeat: u8,
    /// Number of LBA formats, 0's based.
    pub nlbaf: u8,
    /// Formatted LBA size: bits 3:0 index of the format in use.
    pub flbas: u8,
    pub dlfeat: u8,
    pub nmic: u8,
    pub anagrpid: u32,
    /// Bit 0: write protected.
    pub nsattr: u8,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    /// LBA format 0 data size, log2 of the block size (9 = 512, 12 = 4096).
    pub lbads: u8,
}

impl IdentifyNamespace {
    /// Writes the structure; other bytes (LBAF metadata size and relative
    /// performance included) are zeroed.
    pub fn encode(&self, out: &mut [u8; IDENTIFY_DATA_SIZE]) {
        use ns_offset as o;
        out.fill(0);
        put_u64(out, o::NSZE, self.nsze);
        put_u64(out, o::NCAP, self.ncap);
        put_u64(out, o::NUSE, self.nuse);
        out[o::NSFEAT] = self.nsfeat;
        out[o::NLBAF] = self.nlbaf;
        out[o::FLBAS] = self.flbas;
        out[o::NMIC] = self.nmic;
        out[o::DLFEAT] = self.dlfeat;
        put_u32(out, o::ANAGRPID, self.anagrpid);
        out[o::NSATTR] = self.nsattr;
        out[o::NGUID..o::NGUID + 16].copy_from_slice(&self.nguid);
        out[o::EUI64..o::EUI64 + 8].copy_from_slice(&self.eui64);
        out[o::LBAF0 + 2] = self.lbads;
    }

    pub fn parse(b: &[u8; IDENTIFY_DATA_SIZE]) -> IdentifyNamespace {
        use ns_offset as o;
        IdentifyNamespace {
            nsze: u64_at(b, o::NSZE),
            ncap: u64_at(b, o::NCAP),
            nuse: u64_at(b, o::NUSE),
            nsfeat: b[o::NSFEAT],
            nlbaf: b[o::NLBAF],
            flbas: b[o::FLBAS],
            dlfeat: b[o::DLFEAT],
            nmic: b[o::NMIC],
            anagrpid: u32_at(b, o::ANAGRPID),
            nsattr: b[o::NSATTR],
            nguid: array_at(b, o::NGUID),
            eui64: array_at(b, o::EUI64),
            lbads: b[o::LBAF0 + 2],
        }
    }

    /// Logical block size in bytes from `lbads` (0 when LBADS is below 9,
    /// which the spec does not allow).
    pub fn block_size(&self) -> u32 {
        if (9..32).contains(&self.lbads) {
            1 << self.lbads
        } else {
            0
        }
    }
}

/// Most NSIDs an active namespace list holds.
pub const NS_LIST_MAX: usize = IDENTIFY_DATA_SIZE / 4;

/// Writes the Active Namespace ID list (CNS 02h): NSIDs greater than
/// `start_after`, increasing, at most 1024, zero filled. `nsids` should be
/// ascending; an entry not greater than the last one written is skipped so the
/// list stays strictly increasing.
pub fn encode_active_ns_list(
    nsids: impl Iterator<Item = u32>,
    start_after: u32,
    out: &mut [u8; IDENTIFY_DATA_SIZE],
) {
    out.fill(0);
    let mut last = start_after;
    let mut n = 0;
    for id in nsids {
        if n == NS_LIST_MAX {
            break;
        }
        if id <= last || id == 0 {
            continue;
        }
        put_u32(out, n * 4, id);
        last = id;
        n += 1;
    }
}

/// The NSIDs of a namespace list, up to the first zero entry.
pub fn parse_ns_list(b: &[u8; IDENTIFY_DATA_SIZE]) -> impl Iterator<Item = u32> + '_ {
    b.chunks_exact(4)
        .map(|c| u32_at(c, 0))
        .take_while(|&id| id != 0)
}

/// Namespace Identifier Type values (NIDT).
pub mod nidt {
    pub const EUI64: u8 = 0x01;
    pub const NGUID: u8 = 0x02;
    pub const UUID: u8 = 0x03;
    pub const CSI: u8 = 0x04;
}

/// One Namespace Identification Descriptor (CNS 03h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsIdDescriptor {
    Eui64([u8; 8]),
    Nguid([u8; 16]),
    Uuid([u8; 16]),
    Csi(u8),
}

impl NsIdDescriptor {
    pub fn nidt(&self) -> u8 {
        match self {
            NsIdDescriptor::Eui64(_) => nidt::EUI64,
            NsIdDescriptor::Nguid(_) => nidt::NGUID,
            NsIdDescriptor::Uuid(_) => nidt::UUID,
            NsIdDescriptor::Csi(_) => nidt::CSI,
        }
    }

    fn nid(&self) -> &[u8] {
        match self {
            NsIdDescriptor::Eui64(v) => v,
            NsIdDescriptor::Nguid(v) | NsIdDescriptor::Uuid(v) => v,
            NsIdDescriptor::Csi(v) => core::slice::from_ref(v),
        }
    }

    /// NIDL: length of the identifier.
    pub fn nidl(&self) -> u8 {
        self.nid().len() as u8
    }
}

/// Writes the descriptors back to back (4-byte header: NIDT, NIDL, 2
/// reserved; then NID) and zero fills the rest, which ends the list.
/// Descriptors that do not fit are dropped.
pub fn encode_ns_id_descriptors(descs: &[NsIdDescriptor], out: &mut [u8; IDENTIFY_DATA_SIZE]) {
    out.fill(0);
    let mut pos = 0;
    for d in descs {
        let nid = d.nid();
        let end = pos + 4 + nid.len();
        if end > IDENTIFY_DATA_SIZE {
            break;
        }
        out[pos] = d.nidt();
        out[pos + 1] = nid.len() as u8;
        out[pos + 4..end].copy_from_slice(nid);
        pos = end;
    }
}

/// The descriptors of a CNS 03h structure, up to the first zero NIDT or one
/// that runs past the end. Unknown types and known types with a wrong NIDL
/// are skipped.
pub fn parse_ns_id_descriptors(b: &[u8; IDENTIFY_DATA_SIZE]) -> NsIdDescriptorIter<'_> {
    NsIdDescriptorIter { b, pos: 0 }
}

/// Iterator returned by [`parse_ns_id_descriptors`].
pub struct NsIdDescriptorIter<'a> {
    b: &'a [u8; IDENTIFY_DATA_SIZE],
    pos: usize,
}

impl Iterator for NsIdDescriptorIter<'_> {
    type Item = NsIdDescriptor;

    fn next(&mut self) -> Option<NsIdDescriptor> {
        loop {
            let hdr = self.b.get(self.pos..self.pos + 4)?;
            let (t, len) = (hdr[0], usize::from(hdr[1]));
            if t == 0 || len == 0 {
                return None;
            }
            let start = self.pos + 4;
            let nid = self.b.get(start..start + len)?;
            self.pos = start + len;
            let d = match (t, len) {
                (nidt::EUI64, 8) => NsIdDescriptor::Eui64(array_at(nid, 0)),
                (nidt::NGUID, 16) => NsIdDescriptor::Nguid(array_at(nid, 0)),
                (nidt::UUID, 16) => NsIdDescriptor::Uuid(array_at(nid, 0)),
                (nidt::CSI, 1) => NsIdDescriptor::Csi(nid[0]),
                _ => continue,
            };
            return Some(d);
        }
    }
}

#[cfg(test)]
mod tests;
