//! The completion queue entry Status Field (NVMe Base 2.0 section 4.2.3).
//!
//! [`Status`] holds the 15-bit field *without* the phase tag: bits 7:0 Status
//! Code (SC), 10:8 Status Code Type (SCT), 12:11 Command Retry Delay (CRD),
//! 13 More (M), 14 Do Not Retry (DNR). On the wire it sits in CQE bits 31:17
//! of dword 3, i.e. `(status << 1) | phase` in the last 16 bits.

use core::fmt;

/// The 15-bit CQE Status Field, phase tag excluded.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
pub struct Status(pub u16);

/// Status Code Type values.
pub mod sct {
    pub const GENERIC: u8 = 0x0;
    pub const COMMAND_SPECIFIC: u8 = 0x1;
    pub const MEDIA: u8 = 0x2;
    pub const PATH: u8 = 0x3;
    pub const VENDOR_SPECIFIC: u8 = 0x7;
}

/// Generic Command Status values, SCT 0.
pub mod generic {
    pub const SUCCESS: u8 = 0x00;
    pub const INVALID_OPCODE: u8 = 0x01;
    pub const INVALID_FIELD: u8 = 0x02;
    pub const CID_CONFLICT: u8 = 0x03;
    pub const DATA_TRANSFER_ERROR: u8 = 0x04;
    pub const POWER_LOSS_ABORT: u8 = 0x05;
    pub const INTERNAL_ERROR: u8 = 0x06;
    pub const ABORT_REQUESTED: u8 = 0x07;
    pub const ABORTED_SQ_DELETION: u8 = 0x08;
    pub const ABORTED_FUSED_FAILURE: u8 = 0x09;
    pub const ABORTED_FUSED_MISSING: u8 = 0x0A;
    pub const INVALID_NAMESPACE: u8 = 0x0B;
    pub const COMMAND_SEQUENCE_ERROR: u8 = 0x0C;
    pub const INVALID_SGL_SEGMENT_DESCRIPTOR: u8 = 0x0D;
    pub const INVALID_NUMBER_OF_SGL_DESCRIPTORS: u8 = 0x0E;
    pub const DATA_SGL_LENGTH_INVALID: u8 = 0x0F;
    pub const METADATA_SGL_LENGTH_INVALID: u8 = 0x10;
    pub const SGL_DESCRIPTOR_TYPE_INVALID: u8 = 0x11;
    pub const INVALID_SGL_OFFSET: u8 = 0x16;
    pub const HOST_ID_INCONSISTENT_FORMAT: u8 = 0x18;
    pub const KEEP_ALIVE_TIMER_EXPIRED: u8 = 0x19;
    pub const KEEP_ALIVE_TIMEOUT_INVALID: u8 = 0x1A;
    pub const COMMAND_ABORTED_PREEMPT: u8 = 0x1B;
    pub const NAMESPACE_WRITE_PROTECTED: u8 = 0x20;
    pub const COMMAND_INTERRUPTED: u8 = 0x21;
    pub const TRANSIENT_TRANSPORT_ERROR: u8 = 0x22;
    // NVM command set specific values of the generic type.
    pub const LBA_OUT_OF_RANGE: u8 = 0x80;
    pub const CAPACITY_EXCEEDED: u8 = 0x81;
    pub const NAMESPACE_NOT_READY: u8 = 0x82;
    pub const RESERVATION_CONFLICT: u8 = 0x83;
    pub const FORMAT_IN_PROGRESS: u8 = 0x84;
}

/// Command Specific Status values, SCT 1 (NVMe Base 2.0; NVM
/// Command Set 1.0 for the I/O values; NVMe-oF 1.1 for Connect).
///
/// Values from 0x80 on depend on the command: 0x82 means "write to read-only
/// range" for an NVM I/O command and "Connect invalid parameters" for a
/// Fabrics Connect.
pub mod command_specific {
    pub const COMPLETION_QUEUE_INVALID: u8 = 0x00;
    pub const INVALID_QUEUE_IDENTIFIER: u8 = 0x01;
    pub const INVALID_QUEUE_SIZE: u8 = 0x02;
    pub const ABORT_COMMAND_LIMIT_EXCEEDED: u8 = 0x03;
    pub const ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED: u8 = 0x05;
    pub const INVALID_FIRMWARE_SLOT: u8 = 0x06;
    pub const INVALID_FIRMWARE_IMAGE: u8 = 0x07;
    pub const INVALID_INTERRUPT_VECTOR: u8 = 0x08;
    pub const INVALID_LOG_PAGE: u8 = 0x09;
    pub const INVALID_FORMAT: u8 = 0x0A;
    pub const INVALID_QUEUE_DELETION: u8 = 0x0C;
    pub const FEATURE_ID_NOT_SAVEABLE: u8 = 0x0D;
    pub const FEATURE_NOT_CHANGEABLE: u8 = 0x0E;
    pub const FEATURE_NOT_NAMESPACE_SPECIFIC: u8 = 0x0F;
    pub const NAMESPACE_ALREADY_ATTACHED: u8 = 0x18;
    pub const NAMESPACE_NOT_ATTACHED: u8 = 0x1A;
    pub const ANA_GROUP_IDENTIFIER_INVALID: u8 = 0x24;
    // NVM command set (I/O commands).
    pub const CONFLICTING_ATTRIBUTES: u8 = 0x80;
    pub const INVALID_PROTECTION_INFORMATION: u8 = 0x81;
    pub const ATTEMPTED_WRITE_TO_READ_ONLY_RANGE: u8 = 0x82;
    // Fabrics Connect.
    pub const CONNECT_INCOMPATIBLE_FORMAT: u8 = 0x80;
    pub const CONNECT_CONTROLLER_BUSY: u8 = 0x81;
    pub const CONNECT_INVALID_PARAMETERS: u8 = 0x82;
    pub const CONNECT_RESTART_DISCOVERY: u8 = 0x83;
    pub const CONNECT_INVALID_HOST: u8 = 0x84;
    // Fabrics, other.
    pub const DISCOVER_RESTART: u8 = 0x90;
    pub const AUTHENTICATION_REQUIRED: u8 = 0x91;
}

/// Media and Data Integrity Errors, SCT 2.
pub mod media {
    pub const WRITE_FAULT: u8 = 0x80;
    pub const UNRECOVERED_READ_ERROR: u8 = 0x81;
    pub const GUARD_CHECK_ERROR: u8 = 0x82;
    pub const APPLICATION_TAG_CHECK_ERROR: u8 = 0x83;
    pub const REFERENCE_TAG_CHECK_ERROR: u8 = 0x84;
    pub const COMPARE_FAILURE: u8 = 0x85;
    pub const ACCESS_DENIED: u8 = 0x86;
    pub const DEALLOCATED_OR_UNWRITTEN_BLOCK: u8 = 0x87;
}

/// Path Related Status, SCT 3.
pub mod path {
    pub const INTERNAL_PATH_ERROR: u8 = 0x00;
    pub const ASYMMETRIC_ACCESS_PERSISTENT_LOSS: u8 = 0x01;
    pub const ASYMMETRIC_ACCESS_INACCESSIBLE: u8 = 0x02;
    pub const ASYMMETRIC_ACCESS_TRANSITION: u8 = 0x03;
    pub const CONTROLLER_PATHING_ERROR: u8 = 0x60;
    pub const HOST_PATHING_ERROR: u8 = 0x70;
    pub const COMMAND_ABORTED_BY_HOST: u8 = 0x71;
}

const SC_MASK: u16 = 0x00FF;
const SCT_SHIFT: u16 = 8;
const SCT_MASK: u16 = 0x7;
const CRD_SHIFT: u16 = 11;
const CRD_MASK: u16 = 0x3;
const MORE_BIT: u16 = 1 << 13;
const DNR_BIT: u16 = 1 << 14;

impl Status {
    pub const SUCCESS: Status = Status(0);

    /// Status with the given type and code; CRD, More and DNR clear.
    pub const fn new(sct: u8, sc: u8) -> Status {
        Status((((sct as u16) & SCT_MASK) << SCT_SHIFT) | sc as u16)
    }

    pub const fn generic(sc: u8) -> Status {
        Status::new(sct::GENERIC, sc)
    }

    pub const fn command_specific(sc: u8) -> Status {
        Status::new(sct::COMMAND_SPECIFIC, sc)
    }

    pub const fn media(sc: u8) -> Status {
        Status::new(sct::MEDIA, sc)
    }

    pub const fn path(sc: u8) -> Status {
        Status::new(sct::PATH, sc)
    }

    /// The same status with Do Not Retry set.
    pub const fn with_dnr(self) -> Status {
        Status(self.0 | DNR_BIT)
    }

    /// The same status with More set (more detail in the Error log page).
    pub const fn with_more(self) -> Status {
        Status(self.0 | MORE_BIT)
    }

    /// The same status with Command Retry Delay set to `crd` (1..=3 picks
    /// CRDT1..3 of Identify Controller; 0 means retry at once).
    pub const fn with_crd(self, crd: u8) -> Status {
        Status((self.0 & !(CRD_MASK << CRD_SHIFT)) | (((crd as u16) & CRD_MASK) << CRD_SHIFT))
    }

    pub const fn sct(self) -> u8 {
        ((self.0 >> SCT_SHIFT) & SCT_MASK) as u8
    }

    pub const fn sc(self) -> u8 {
        (self.0 & SC_MASK) as u8
    }

    pub const fn crd(self) -> u8 {
        ((self.0 >> CRD_SHIFT) & CRD_MASK) as u8
    }

    pub const fn more(self) -> bool {
        self.0 & MORE_BIT != 0
    }

    pub const fn dnr(self) -> bool {
        self.0 & DNR_BIT != 0
    }

    /// True when SCT and SC are both zero (CRD/More/DNR do not matter).
    pub const fn is_success(self) -> bool {
        self.sct() == sct::GENERIC && self.sc() == generic::SUCCESS
    }

    /// The spec's name for this SCT/SC pair, when this crate knows it.
    ///
    /// Command-specific codes from 0x80 on are ambiguous without the opcode;
    /// those names the Fabrics Connect meaning, which is what a fabrics target
    /// returns most.
    pub fn name(self) -> Option<&'static str> {
        let name = match (self.sct(), self.sc()) {
            (sct::GENERIC, sc) => match sc {
                generic::SUCCESS => "successful completion",
                generic::INVALID_OPCODE => "invalid command opcode",
                generic::INVALID_FIELD => "invalid field in command",
                generic::CID_CONFLICT => "command ID conflict",
                generic::DATA_TRANSFER_ERROR => "data transfer error",
                generic::POWER_LOSS_ABORT => "commands aborted due to power loss notification",
                generic::INTERNAL_ERROR => "internal error",
                generic::ABORT_REQUESTED => "command abort requested",
                generic::ABORTED_SQ_DELETION => "command aborted due to SQ deletion",
                generic::ABORTED_FUSED_FAILURE => "command aborted due to failed fused command",
                generic::ABORTED_FUSED_MISSING => "command aborted due to missing fused command",
                generic::INVALID_NAMESPACE => "invalid namespace or format",
                generic::COMMAND_SEQUENCE_ERROR => "command sequence error",
                generic::INVALID_SGL_SEGMENT_DESCRIPTOR => "invalid SGL segment descriptor",
                generic::INVALID_NUMBER_OF_SGL_DESCRIPTORS => "invalid number of SGL descriptors",
                generic::DATA_SGL_LENGTH_INVALID => "data SGL length invalid",
                generic::METADATA_SGL_LENGTH_INVALID => "metadata SGL length invalid",
                generic::SGL_DESCRIPTOR_TYPE_INVALID => "SGL descriptor type invalid",
                generic::INVALID_SGL_OFFSET => "invalid SGL offset",
                generic::HOST_ID_INCONSISTENT_FORMAT => "host identifier inconsistent format",
                generic::KEEP_ALIVE_TIMER_EXPIRED => "keep alive timer expired",
                generic::KEEP_ALIVE_TIMEOUT_INVALID => "keep alive timeout invalid",
                generic::COMMAND_ABORTED_PREEMPT => "command aborted due to preempt and abort",
                generic::NAMESPACE_WRITE_PROTECTED => "namespace is write protected",
                generic::COMMAND_INTERRUPTED => "command interrupted",
                generic::TRANSIENT_TRANSPORT_ERROR => "transient transport error",
                generic::LBA_OUT_OF_RANGE => "LBA out of range",
                generic::CAPACITY_EXCEEDED => "capacity exceeded",
                generic::NAMESPACE_NOT_READY => "namespace not ready",
                generic::RESERVATION_CONFLICT => "reservation conflict",
                generic::FORMAT_IN_PROGRESS => "format in progress",
                _ => return None,
            },
            (sct::COMMAND_SPECIFIC, sc) => match sc {
                command_specific::COMPLETION_QUEUE_INVALID => "completion queue invalid",
                command_specific::INVALID_QUEUE_IDENTIFIER => "invalid queue identifier",
                command_specific::INVALID_QUEUE_SIZE => "invalid queue size",
                command_specific::ABORT_COMMAND_LIMIT_EXCEEDED => "abort command limit exceeded",
                command_specific::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED => {
                    "asynchronous event request limit exceeded"
                }
                command_specific::INVALID_FIRMWARE_SLOT => "invalid firmware slot",
                command_specific::INVALID_FIRMWARE_IMAGE => "invalid firmware image",
                command_specific::INVALID_INTERRUPT_VECTOR => "invalid interrupt vector",
                command_specific::INVALID_LOG_PAGE => "invalid log page",
                command_specific::INVALID_FORMAT => "invalid format",
                command_specific::INVALID_QUEUE_DELETION => "invalid queue deletion",
                command_specific::FEATURE_ID_NOT_SAVEABLE => "feature identifier not saveable",
                command_specific::FEATURE_NOT_CHANGEABLE => "feature not changeable",
                command_specific::FEATURE_NOT_NAMESPACE_SPECIFIC => {
                    "feature not namespace specific"
                }
                command_specific::NAMESPACE_ALREADY_ATTACHED => "namespace already attached",
                command_specific::NAMESPACE_NOT_ATTACHED => "namespace not attached",
                command_specific::ANA_GROUP_IDENTIFIER_INVALID => "ANA group identifier invalid",
                command_specific::CONNECT_INCOMPATIBLE_FORMAT => "connect: incompatible format",
                command_specific::CONNECT_CONTROLLER_BUSY => "connect: controller busy",
                command_specific::CONNECT_INVALID_PARAMETERS => "connect: invalid parameters",
                command_specific::CONNECT_RESTART_DISCOVERY => "connect: restart discovery",
                command_specific::CONNECT_INVALID_HOST => "connect: invalid host",
                command_specific::DISCOVER_RESTART => "discover restart",
                command_specific::AUTHENTICATION_REQUIRED => "authentication required",
                _ => return None,
            },
            (sct::MEDIA, sc) => match sc {
                media::WRITE_FAULT => "write fault",
                media::UNRECOVERED_READ_ERROR => "unrecovered read error",
                media::GUARD_CHECK_ERROR => "end-to-end guard check error",
                media::APPLICATION_TAG_CHECK_ERROR => "end-to-end application tag check error",
                media::REFERENCE_TAG_CHECK_ERROR => "end-to-end reference tag check error",
                media::COMPARE_FAILURE => "compare failure",
                media::ACCESS_DENIED => "access denied",
                media::DEALLOCATED_OR_UNWRITTEN_BLOCK => "deallocated or unwritten logical block",
                _ => return None,
            },
            (sct::PATH, sc) => match sc {
                path::INTERNAL_PATH_ERROR => "internal path error",
                path::ASYMMETRIC_ACCESS_PERSISTENT_LOSS => "asymmetric access persistent loss",
                path::ASYMMETRIC_ACCESS_INACCESSIBLE => "asymmetric access inaccessible",
                path::ASYMMETRIC_ACCESS_TRANSITION => "asymmetric access transition",
                path::CONTROLLER_PATHING_ERROR => "controller pathing error",
                path::HOST_PATHING_ERROR => "host pathing error",
                path::COMMAND_ABORTED_BY_HOST => "command aborted by host",
                _ => return None,
            },
            _ => return None,
        };
        Some(name)
    }
}

impl fmt::Display for Status {
    /// `"invalid field in command (SCT 0x0, SC 0x02, DNR)"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} (SCT {:#x}, SC {:#04x}", self.sct(), self.sc())?,
            None => write!(f, "status (SCT {:#x}, SC {:#04x}", self.sct(), self.sc())?,
        }
        if self.crd() != 0 {
            write!(f, ", CRD {}", self.crd())?;
        }
        if self.more() {
            f.write_str(", More")?;
        }
        if self.dnr() {
            f.write_str(", DNR")?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_layout_matches_figure_94() {
        // SC bits 7:0, SCT 10:8, CRD 12:11, More 13, DNR 14.
        let s = Status::new(0x3, 0x02).with_crd(2).with_more().with_dnr();
        assert_eq!(s.0, 0x0002 | (0x3 << 8) | (2 << 11) | (1 << 13) | (1 << 14));
        assert_eq!(s.sct(), 3);
        assert_eq!(s.sc(), 2);
        assert_eq!(s.crd(), 2);
        assert!(s.more());
        assert!(s.dnr());
    }

    #[test]
    fn linux_compatible_values() {
        // include/linux/nvme.h encodes SCT<<8 | SC without the phase bit.
        assert_eq!(Status::generic(generic::INVALID_FIELD).0, 0x002);
        assert_eq!(Status::generic(generic::LBA_OUT_OF_RANGE).0, 0x080);
        assert_eq!(
            Status::command_specific(command_specific::INVALID_QUEUE_IDENTIFIER).0,
            0x101
        );
        assert_eq!(
            Status::command_specific(command_specific::FEATURE_NOT_CHANGEABLE).0,
            0x10E
        );
        assert_eq!(
            Status::command_specific(command_specific::CONNECT_INVALID_PARAMETERS).0,
            0x182
        );
        assert_eq!(
            Status::command_specific(command_specific::CONNECT_INVALID_HOST).0,
            0x184
        );
        assert_eq!(Status::media(media::UNRECOVERED_READ_ERROR).0, 0x281);
        assert_eq!(Status::media(media::ACCESS_DENIED).0, 0x286);
        assert_eq!(Status::path(path::ASYMMETRIC_ACCESS_TRANSITION).0, 0x303);
        assert_eq!(Status::generic(generic::INVALID_FIELD).with_dnr().0, 0x4002);
    }

    #[test]
    fn success_ignores_dnr_and_more() {
        assert!(Status::SUCCESS.is_success());
        assert!(Status::SUCCESS.with_dnr().is_success());
        assert!(!Status::generic(generic::INTERNAL_ERROR).is_success());
        assert!(!Status::path(0).is_success());
    }

    #[test]
    fn new_masks_sct() {
        assert_eq!(Status::new(0xF, 1).sct(), 0x7);
    }

    #[test]
    fn display_names_and_flags() {
        let s = Status::generic(generic::INVALID_FIELD).with_dnr();
        assert_eq!(
            s.to_string(),
            "invalid field in command (SCT 0x0, SC 0x02, DNR)"
        );
        let u = Status::new(sct::VENDOR_SPECIFIC, 0xC1);
        assert_eq!(u.to_string(), "status (SCT 0x7, SC 0xc1)");
    }
}
