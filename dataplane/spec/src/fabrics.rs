//! NVMe over Fabrics commands: Connect, Property Get/Set, Disconnect
//! (NVMe-oF 1.1 section 3.3; NVMe Base 2.0 section 6).
//!
//! Every Fabrics command uses admin opcode 0x7F and names itself by FCTYPE at
//! SQE byte 4 (where other commands keep the low byte of NSID).

use crate::bytes::{array_at, nul_trimmed_str, nul_trimmed_str_checked, padded, put_u16, u16_at};
use crate::nvme::{admin_opcode, Cqe, DataDirection, Sqe};
use crate::status::Status;
use crate::SpecError;

/// Fabrics command types (FCTYPE).
pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const AUTH_SEND: u8 = 0x05;
    pub const AUTH_RECV: u8 = 0x06;
    pub const DISCONNECT: u8 = 0x08;
}

/// The well-known discovery subsystem NQN.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Size of an NQN field on the wire (Connect data, Identify, discovery log).
pub const NQN_FIELD_SIZE: usize = 256;
/// The longest NQN the spec allows, in bytes, without the NUL.
pub const NQN_MAX_LEN: usize = 223;

/// Controller ID asking the subsystem to allocate one (dynamic model).
pub const CNTLID_DYNAMIC: u16 = 0xFFFF;
/// Controller ID meaning "any controller" in the static model.
pub const CNTLID_STATIC_ANY: u16 = 0xFFFE;
/// The highest controller ID a subsystem may hand out.
pub const CNTLID_MAX: u16 = 0xFFEF;

/// Connect record format 0, the only one defined.
pub const RECFMT_0: u16 = 0;

/// Connect CATTR bit 2: the host asks to disable SQ flow control (SQHD).
pub const CATTR_DISABLE_SQ_FLOW_CONTROL: u8 = 1 << 2;
/// Connect CATTR bits 1:0: priority class.
pub const CATTR_PRIORITY_MASK: u8 = 0x3;

/// FCTYPE of a Fabrics command: SQE byte 4.
pub fn fctype(sqe: &Sqe) -> u8 {
    (sqe.nsid & 0xFF) as u8
}

/// True when `sqe` is a Fabrics command (opcode 0x7F).
pub fn is_fabrics(sqe: &Sqe) -> bool {
    sqe.opcode == admin_opcode::FABRICS
}

/// Data direction of a Fabrics command, from FCTYPE bits 1:0 the way the
/// opcode bits work for other commands.
pub fn data_transfer(fctype: u8) -> DataDirection {
    crate::nvme::data_transfer(fctype)
}

/// Byte offsets used as IPO in a Connect "invalid parameters" response.
pub mod connect_offset {
    /// In the SQE (IATTR 0).
    pub const SQE_RECFMT: u16 = 40;
    pub const SQE_QID: u16 = 42;
    pub const SQE_SQSIZE: u16 = 44;
    pub const SQE_CATTR: u16 = 46;
    pub const SQE_KATO: u16 = 48;
    /// In the Connect data (IATTR 1).
    pub const DATA_HOSTID: u16 = 0;
    pub const DATA_CNTLID: u16 = 16;
    pub const DATA_SUBNQN: u16 = 256;
    pub const DATA_HOSTNQN: u16 = 512;
}

/// IATTR value: the invalid parameter is in the Connect SQE.
pub const IATTR_SQE: u8 = 0;
/// IATTR value: the invalid parameter is in the Connect data.
pub const IATTR_DATA: u8 = 1;

/// The Connect command's own fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectCommand {
    /// Record format, CDW10 bits 15:0 (byte 40).
    pub recfmt: u16,
    /// Queue ID, CDW10 bits 31:16 (byte 42); 0 = admin queue.
    pub qid: u16,
    /// Submission queue size, 0's based, CDW11 bits 15:0 (byte 44).
    pub sqsize: u16,
    /// Connect attributes, CDW11 bits 23:16 (byte 46).
    pub cattr: u8,
    /// Keep alive timeout in milliseconds, CDW12 (byte 48).
    pub kato: u32,
}

impl ConnectCommand {
    pub fn parse(sqe: &Sqe) -> ConnectCommand {
        ConnectCommand {
            recfmt: (sqe.cdw10 & 0xFFFF) as u16,
            qid: (sqe.cdw10 >> 16) as u16,
            sqsize: (sqe.cdw11 & 0xFFFF) as u16,
            cattr: ((sqe.cdw11 >> 16) & 0xFF) as u8,
            kato: sqe.cdw12,
        }
    }

    /// A Connect SQE; the transport still fills PSDT and DPTR (see
    /// [`Sqe::set_sgl`]) for the 1024-byte Connect data.
    pub fn to_sqe(&self, cid: u16) -> Sqe {
        Sqe {
            opcode: admin_opcode::FABRICS,
            cid,
            nsid: u32::from(fctype::CONNECT),
            cdw10: u32::from(self.recfmt) | (u32::from(self.qid) << 16),
            cdw11: u32::from(self.sqsize) | (u32::from(self.cattr) << 16),
            cdw12: self.kato,
            ..Sqe::default()
        }
    }

    /// CATTR bit 2: the host disables SQ flow control.
    pub fn sq_flow_control_disabled(&self) -> bool {
        self.cattr & CATTR_DISABLE_SQ_FLOW_CONTROL != 0
    }
}

pub const CONNECT_DATA_SIZE: usize = 1024;

/// The 1024-byte Connect command data.
///
/// NQNs are kept as their raw NUL-padded 256-byte fields so parsing does not
/// allocate; [`ConnectData::subnqn_str`] and [`ConnectData::hostnqn_str`] give
/// the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectData {
    /// Host identifier, bytes 0..16.
    pub hostid: [u8; 16],
    /// Controller ID, bytes 16..18.
    pub cntlid: u16,
    /// Subsystem NQN, bytes 256..512.
    pub subnqn: [u8; NQN_FIELD_SIZE],
    /// Host NQN, bytes 512..768.
    pub hostnqn: [u8; NQN_FIELD_SIZE],
}

impl Default for ConnectData {
    fn default() -> Self {
        ConnectData {
            hostid: [0; 16],
            cntlid: 0,
            subnqn: [0; NQN_FIELD_SIZE],
            hostnqn: [0; NQN_FIELD_SIZE],
        }
    }
}

/// `s` as a NUL-padded 256-byte NQN field. Text longer than 255 bytes is cut
/// at 255 so the field stays NUL terminated; check [`NQN_MAX_LEN`] first
/// where that matters.
pub fn nqn_field(s: &str) -> [u8; NQN_FIELD_SIZE] {
    padded(s, 0, NQN_FIELD_SIZE - 1)
}

impl ConnectData {
    /// Connect data for the given host; NQNs as in [`nqn_field`].
    pub fn new(hostid: [u8; 16], cntlid: u16, subnqn: &str, hostnqn: &str) -> ConnectData {
        ConnectData {
            hostid,
            cntlid,
            subnqn: nqn_field(subnqn),
            hostnqn: nqn_field(hostnqn),
        }
    }

    /// Parses the first 1024 bytes of `b`; reserved bytes are ignored.
    pub fn parse(b: &[u8]) -> Result<ConnectData, SpecError> {
        if b.len() < CONNECT_DATA_SIZE {
            return Err(SpecError::TooShort {
                need: CONNECT_DATA_SIZE,
                got: b.len(),
            });
        }
        Ok(ConnectData {
            hostid: array_at(b, 0),
            cntlid: u16_at(b, 16),
            subnqn: array_at(b, 256),
            hostnqn: array_at(b, 512),
        })
    }

    pub fn to_bytes(&self) -> [u8; CONNECT_DATA_SIZE] {
        let mut b = [0u8; CONNECT_DATA_SIZE];
        b[0..16].copy_from_slice(&self.hostid);
        put_u16(&mut b, 16, self.cntlid);
        b[256..512].copy_from_slice(&self.subnqn);
        b[512..768].copy_from_slice(&self.hostnqn);
        b
    }

    /// Subsystem NQN up to the first NUL. Invalid UTF-8 yields the longest
    /// valid prefix (which then matches no subsystem); use
    /// [`ConnectData::subnqn_checked`] to tell that case apart.
    pub fn subnqn_str(&self) -> &str {
        nul_trimmed_str(&self.subnqn)
    }

    /// Host NQN up to the first NUL; invalid UTF-8 as in `subnqn_str`.
    pub fn hostnqn_str(&self) -> &str {
        nul_trimmed_str(&self.hostnqn)
    }

    /// Subsystem NQN, refusing invalid UTF-8.
    pub fn subnqn_checked(&self) -> Result<&str, SpecError> {
        nul_trimmed_str_checked(&self.subnqn, "subnqn")
    }

    /// Host NQN, refusing invalid UTF-8.
    pub fn hostnqn_checked(&self) -> Result<&str, SpecError> {
        nul_trimmed_str_checked(&self.hostnqn, "hostnqn")
    }
}

/// Connect response DW0 on success: bits 15:0 CNTLID, bits 31:16 AUTHREQ
/// (zero: no authentication required).
pub fn connect_response_dw0(cntlid: u16) -> u32 {
    u32::from(cntlid)
}

/// Connect response DW0 for "Connect Invalid Parameters" (NVMe-oF 1.1
/// Connect Response): bits 15:0 IPO (byte offset of the bad field), bits
/// 23:16 IATTR (bit 0: 0 = offset is in the SQE, 1 = in the Connect data).
/// Linux's `IPO_IATTR_CONNECT_DATA` builds the same value.
pub fn connect_invalid_param_dw0(ipo: u16, iattr: u8) -> u32 {
    u32::from(ipo) | (u32::from(iattr) << 16)
}

/// The IPO and IATTR packed by [`connect_invalid_param_dw0`].
pub fn parse_connect_invalid_param_dw0(dw0: u32) -> (u16, u8) {
    ((dw0 & 0xFFFF) as u16, ((dw0 >> 16) & 0xFF) as u8)
}

/// Property Get/Set size codes (ATTRIB bits 2:0).
pub mod property_size {
    pub const FOUR_BYTES: u8 = 0;
    pub const EIGHT_BYTES: u8 = 1;
}

/// A Property Get or Set command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PropertyCommand {
    /// ATTRIB (byte 40) bits 2:0 == 1: an 8-byte property.
    pub size8: bool,
    /// OFST, CDW11 (byte 44): the register offset.
    pub offset: u32,
    /// VALUE, bytes 48..56 (Property Set only; 0 for Get).
    pub value: u64,
}

/// ATTRIB bits 2:0 of a Property Get/Set; values other than 0 and 1 are
/// reserved and deserve Invalid Field.
pub fn property_attrib_size(sqe: &Sqe) -> u8 {
    (sqe.cdw10 & 0x7) as u8
}

impl PropertyCommand {
    pub fn parse_get(sqe: &Sqe) -> PropertyCommand {
        PropertyCommand {
            size8: property_attrib_size(sqe) == property_size::EIGHT_BYTES,
            offset: sqe.cdw11,
            value: 0,
        }
    }

    pub fn parse_set(sqe: &Sqe) -> PropertyCommand {
        PropertyCommand {
            value: u64::from(sqe.cdw12) | (u64::from(sqe.cdw13) << 32),
            ..PropertyCommand::parse_get(sqe)
        }
    }

    fn base_sqe(&self, cid: u16, fctype: u8) -> Sqe {
        Sqe {
            opcode: admin_opcode::FABRICS,
            cid,
            nsid: u32::from(fctype),
            cdw10: u32::from(self.size8),
            cdw11: self.offset,
            ..Sqe::default()
        }
    }

    pub fn to_get_sqe(&self, cid: u16) -> Sqe {
        self.base_sqe(cid, fctype::PROPERTY_GET)
    }

    pub fn to_set_sqe(&self, cid: u16) -> Sqe {
        Sqe {
            cdw12: self.value as u32,
            cdw13: (self.value >> 32) as u32,
            ..self.base_sqe(cid, fctype::PROPERTY_SET)
        }
    }
}

/// Property Get response: the value in DW0 (low) and DW1 (high) (NVMe-oF 1.1
/// Property Get Response).
pub fn property_get_response(cid: u16, value: u64) -> Cqe {
    Cqe {
        dw0: value as u32,
        dw1: (value >> 32) as u32,
        ..Cqe::new(cid, Status::SUCCESS)
    }
}

/// A Disconnect command SQE (NVMe Base 2.0 section 6.4): ends the queue it is
/// sent on.
pub fn disconnect_sqe(cid: u16) -> Sqe {
    Sqe {
        opcode: admin_opcode::FABRICS,
        cid,
        nsid: u32::from(fctype::DISCONNECT),
        ..Sqe::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fctype_is_sqe_byte_4() {
        let mut b = [0u8; 64];
        b[0] = 0x7F;
        b[4] = fctype::PROPERTY_GET;
        let sqe = Sqe::from_bytes(&b);
        assert!(is_fabrics(&sqe));
        assert_eq!(fctype(&sqe), fctype::PROPERTY_GET);
    }

    #[test]
    fn connect_offsets_follow_figure_19() {
        let mut b = [0u8; 64];
        b[0] = 0x7F;
        b[4] = fctype::CONNECT;
        b[40..42].copy_from_slice(&0u16.to_le_bytes());
        b[42..44].copy_from_slice(&3u16.to_le_bytes());
        b[44..46].copy_from_slice(&127u16.to_le_bytes());
        b[46] = CATTR_DISABLE_SQ_FLOW_CONTROL;
        b[48..52].copy_from_slice(&120_000u32.to_le_bytes());
        let sqe = Sqe::from_bytes(&b);
        let c = ConnectCommand::parse(&sqe);
        assert_eq!(
            c,
            ConnectCommand {
                recfmt: 0,
                qid: 3,
                sqsize: 127,
                cattr: CATTR_DISABLE_SQ_FLOW_CONTROL,
                kato: 120_000,
            }
        );
        assert!(c.sq_flow_control_disabled());
        let back = c.to_sqe(0).to_bytes();
        assert_eq!(back[0], 0x7F);
        assert_eq!(back[4], fctype::CONNECT);
        assert_eq!(&back[40..52], &b[40..52]);
        assert_eq!(usize::from(connect_offset::SQE_QID), 42);
        assert_eq!(usize::from(connect_offset::SQE_KATO), 48);
    }

    #[test]
    fn connect_data_offsets_follow_figure_20() {
        let d = ConnectData::new([0xAB; 16], CNTLID_DYNAMIC, DISCOVERY_NQN, "nqn.host");
        let b = d.to_bytes();
        assert_eq!(&b[0..16], &[0xAB; 16]);
        assert_eq!(&b[16..18], &[0xFF, 0xFF]);
        assert!(b[18..256].iter().all(|&x| x == 0));
        assert_eq!(&b[256..256 + DISCOVERY_NQN.len()], DISCOVERY_NQN.as_bytes());
        assert_eq!(b[256 + DISCOVERY_NQN.len()], 0);
        assert_eq!(&b[512..520], b"nqn.host");
        assert!(b[768..].iter().all(|&x| x == 0));
        let p = ConnectData::parse(&b).expect("1024 bytes");
        assert_eq!(p, d);
        assert_eq!(p.subnqn_str(), DISCOVERY_NQN);
        assert_eq!(p.hostnqn_str(), "nqn.host");
    }

    #[test]
    fn connect_data_too_short() {
        assert_eq!(
            ConnectData::parse(&[0u8; 1023]),
            Err(SpecError::TooShort {
                need: 1024,
                got: 1023
            })
        );
    }

    #[test]
    fn connect_data_bad_utf8() {
        let mut d = ConnectData::new([0; 16], 1, "nqn.ok", "h");
        d.subnqn[3] = 0xFF;
        assert_eq!(d.subnqn_str(), "nqn");
        assert_eq!(
            d.subnqn_checked(),
            Err(SpecError::InvalidUtf8 { field: "subnqn" })
        );
        assert_eq!(d.hostnqn_checked(), Ok("h"));
    }

    #[test]
    fn nqn_without_nul_uses_whole_field() {
        let d = ConnectData {
            subnqn: [b'a'; 256],
            ..ConnectData::default()
        };
        assert_eq!(d.subnqn_str().len(), 256);
        // Encoding keeps a terminator.
        let long = "x".repeat(300);
        let f = nqn_field(&long);
        assert_eq!(f[254], b'x');
        assert_eq!(f[255], 0);
    }

    #[test]
    fn connect_response_values() {
        assert_eq!(connect_response_dw0(0x1234), 0x0000_1234);
        // Same as Linux IPO_IATTR_CONNECT_DATA(subsysnqn): (1 << 16) | 256.
        let v = connect_invalid_param_dw0(connect_offset::DATA_SUBNQN, IATTR_DATA);
        assert_eq!(v, (1 << 16) | 256);
        assert_eq!(parse_connect_invalid_param_dw0(v), (256, 1));
        assert_eq!(
            connect_invalid_param_dw0(connect_offset::SQE_QID, IATTR_SQE),
            42
        );
    }

    #[test]
    fn property_offsets_follow_figures_31_33() {
        let mut b = [0u8; 64];
        b[0] = 0x7F;
        b[4] = fctype::PROPERTY_SET;
        b[40] = 1;
        b[44..48].copy_from_slice(&0x14u32.to_le_bytes());
        b[48..56].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        let sqe = Sqe::from_bytes(&b);
        let p = PropertyCommand::parse_set(&sqe);
        assert_eq!(
            p,
            PropertyCommand {
                size8: true,
                offset: 0x14,
                value: 0x0102_0304_0506_0708
            }
        );
        assert_eq!(p.to_set_sqe(0), sqe);
        let g = PropertyCommand::parse_get(&sqe);
        assert_eq!(g.value, 0);
        assert!(g.size8);
        let gb = g.to_get_sqe(9).to_bytes();
        assert_eq!(gb[4], fctype::PROPERTY_GET);
        assert_eq!(gb[40], 1);
        assert_eq!(&gb[44..48], &0x14u32.to_le_bytes());
        assert_eq!(&gb[48..56], &[0; 8]);
        b[40] = 2;
        assert_eq!(property_attrib_size(&Sqe::from_bytes(&b)), 2);
        assert!(!PropertyCommand::parse_get(&Sqe::from_bytes(&b)).size8);
    }

    #[test]
    fn property_get_response_splits_value() {
        let c = property_get_response(5, 0xAAAA_BBBB_CCCC_DDDD);
        assert_eq!(c.dw0, 0xCCCC_DDDD);
        assert_eq!(c.dw1, 0xAAAA_BBBB);
        assert_eq!(c.cid, 5);
    }

    #[test]
    fn fabrics_directions() {
        assert_eq!(
            data_transfer(fctype::CONNECT),
            DataDirection::HostToController
        );
        assert_eq!(data_transfer(fctype::PROPERTY_GET), DataDirection::None);
        assert_eq!(data_transfer(fctype::PROPERTY_SET), DataDirection::None);
        assert_eq!(
            data_transfer(fctype::AUTH_SEND),
            DataDirection::HostToController
        );
        assert_eq!(
            data_transfer(fctype::AUTH_RECV),
            DataDirection::ControllerToHost
        );
        assert_eq!(data_transfer(fctype::DISCONNECT), DataDirection::None);
        assert_eq!(disconnect_sqe(1).to_bytes()[4], 0x08);
    }
}
