//! Get/Set Features (NVMe Base 2.0 sections 5.15, 5.27) and Asynchronous
//! Event Request completions (section 5.2).

use crate::nvme::Sqe;

/// Feature identifiers.
pub mod fid {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MGMT: u8 = 0x02;
    pub const LBA_RANGE_TYPE: u8 = 0x03;
    pub const TEMP_THRESHOLD: u8 = 0x04;
    pub const ERROR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    pub const INTERRUPT_VECTOR_CONFIG: u8 = 0x09;
    pub const WRITE_ATOMICITY: u8 = 0x0A;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0B;
    pub const AUTONOMOUS_POWER_STATE_TRANSITION: u8 = 0x0C;
    pub const HOST_MEMORY_BUFFER: u8 = 0x0D;
    pub const TIMESTAMP: u8 = 0x0E;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
    pub const HOST_CONTROLLED_THERMAL_MGMT: u8 = 0x10;
    pub const HOST_BEHAVIOR: u8 = 0x16;
    pub const HOST_IDENTIFIER: u8 = 0x81;
    pub const RESERVATION_NOTIFICATION_MASK: u8 = 0x82;
    pub const RESERVATION_PERSISTENCE: u8 = 0x83;
    pub const NAMESPACE_WRITE_PROTECTION: u8 = 0x84;
}

/// Get Features select values (CDW10 bits 10:8).
pub mod sel {
    pub const CURRENT: u8 = 0b000;
    pub const DEFAULT: u8 = 0b001;
    pub const SAVED: u8 = 0b010;
    pub const SUPPORTED_CAPABILITIES: u8 = 0b011;
}

/// Capability bits returned in DW0 for SEL = supported capabilities.
pub mod capabilities {
    pub const SAVEABLE: u32 = 1 << 0;
    pub const NAMESPACE_SPECIFIC: u32 = 1 << 1;
    pub const CHANGEABLE: u32 = 1 << 2;
}

/// Feature identifier: CDW10 bits 7:0 (Get and Set Features).
pub fn fid_of(sqe: &Sqe) -> u8 {
    (sqe.cdw10 & 0xFF) as u8
}

/// Get Features select: CDW10 bits 10:8.
pub fn sel_of(sqe: &Sqe) -> u8 {
    ((sqe.cdw10 >> 8) & 0x7) as u8
}

/// Set Features save: CDW10 bit 31.
pub fn save_of(sqe: &Sqe) -> bool {
    sqe.cdw10 & (1 << 31) != 0
}

/// Number of Queues (FID 07h): the counts the host asks for in CDW11, as
/// (submission queues, completion queues), already converted from 0's
/// based. A 0's based value of 0xFFFF is invalid; it reads as 65536.
pub fn number_of_queues_requested(cdw11: u32) -> (u32, u32) {
    ((cdw11 & 0xFFFF) + 1, (cdw11 >> 16) + 1)
}

/// Number of Queues completion DW0: NSQA in bits 15:0, NCQA in 31:16, both
/// 0's based; pass the counts allocated (at least 1 each).
pub fn number_of_queues_dw0(nsqa: u32, ncqa: u32) -> u32 {
    let zb = |n: u32| n.saturating_sub(1).min(0xFFFF);
    zb(nsqa) | (zb(ncqa) << 16)
}

/// Volatile Write Cache (FID 06h) CDW11 / DW0 bit 0: write cache enable.
pub const VWC_WCE: u32 = 1 << 0;

/// Arbitration (FID 01h) DW0 for round robin with the given burst (2^n).
pub fn arbitration_dw0(arbitration_burst: u8) -> u32 {
    u32::from(arbitration_burst & 0x7)
}

/// Asynchronous Event Configuration (FID 0Bh) bits in CDW11/DW0. Notice
/// bits sit where the matching OAES bits of Identify Controller sit.
pub mod async_event_config {
    /// SMART / health critical warnings, bits 7:0.
    pub const SMART_CRITICAL_WARNINGS: u32 = 0xFF;
    pub const NS_ATTR_NOTICES: u32 = 1 << 8;
    pub const FW_ACTIVATION_NOTICES: u32 = 1 << 9;
    pub const TELEMETRY_LOG_NOTICES: u32 = 1 << 10;
    pub const ANA_CHANGE_NOTICES: u32 = 1 << 11;
    pub const DISCOVERY_LOG_CHANGE_NOTICES: u32 = 1 << 31;
}

/// Optional Asynchronous Events Supported bits (Identify Controller OAES,
/// bytes 92..96).
pub mod oaes {
    pub const NS_ATTR: u32 = 1 << 8;
    pub const FW_ACTIVATION: u32 = 1 << 9;
    pub const ANA_CHANGE: u32 = 1 << 11;
    pub const DISCOVERY_CHANGE: u32 = 1 << 31;
}

/// Host Behavior Support (FID 16h) data: 512 bytes, byte 0 bit 0 ACRE.
pub const HOST_BEHAVIOR_SIZE: usize = 512;

/// Advanced Command Retry Enable from Host Behavior Support data.
pub fn host_behavior_acre(data: &[u8]) -> bool {
    data.first().is_some_and(|b| b & 1 != 0)
}

/// Keep Alive Timer (FID 0Fh): KATO in milliseconds, CDW11 / DW0.
pub fn keep_alive_timeout_ms(cdw11: u32) -> u32 {
    cdw11
}

/// Asynchronous Event Request completion DW0.
pub mod aen {
    /// Asynchronous event types (DW0 bits 2:0).
    pub mod event_type {
        pub const ERROR: u8 = 0;
        pub const SMART: u8 = 1;
        pub const NOTICE: u8 = 2;
        pub const IMMEDIATE: u8 = 3;
        pub const IO_CMD_SPECIFIC: u8 = 6;
        pub const VENDOR: u8 = 7;
    }

    /// Asynchronous event information for type Notice (DW0 bits 15:8).
    pub mod notice {
        pub const NS_ATTR_CHANGED: u8 = 0x00;
        pub const FW_ACTIVATION_STARTING: u8 = 0x01;
        pub const TELEMETRY: u8 = 0x02;
        pub const ANA_CHANGE: u8 = 0x03;
        pub const PREDICTABLE_LATENCY_AGGREGATE: u8 = 0x04;
        pub const LBA_STATUS: u8 = 0x05;
        pub const ENDURANCE_GROUP_AGGREGATE: u8 = 0x06;
        pub const DISCOVERY_LOG_CHANGE: u8 = 0xF0;
    }

    pub use event_type::{ERROR, IO_CMD_SPECIFIC, NOTICE, SMART, VENDOR};
    pub use notice::{
        ANA_CHANGE, DISCOVERY_LOG_CHANGE, FW_ACTIVATION_STARTING, NS_ATTR_CHANGED, TELEMETRY,
    };

    /// DW0: event type in bits 2:0, event information in 15:8, the log page
    /// to read in 23:16.
    pub fn dw0(event_type: u8, info: u8, log_page: u8) -> u32 {
        u32::from(event_type & 0x7) | (u32::from(info) << 8) | (u32::from(log_page) << 16)
    }

    /// The (type, info, log page) packed by [`dw0`].
    pub fn parse_dw0(dw0: u32) -> (u8, u8, u8) {
        (
            (dw0 & 0x7) as u8,
            ((dw0 >> 8) & 0xFF) as u8,
            ((dw0 >> 16) & 0xFF) as u8,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::lid;

    #[test]
    fn command_fields() {
        let sqe = Sqe {
            cdw10: (1 << 31) | (u32::from(sel::SUPPORTED_CAPABILITIES) << 8) | 0x0B,
            ..Sqe::default()
        };
        assert_eq!(fid_of(&sqe), fid::ASYNC_EVENT_CONFIG);
        assert_eq!(sel_of(&sqe), 3);
        assert!(save_of(&sqe));
        let plain = Sqe {
            cdw10: u32::from(fid::NUMBER_OF_QUEUES),
            ..Sqe::default()
        };
        assert_eq!(sel_of(&plain), sel::CURRENT);
        assert!(!save_of(&plain));
    }

    #[test]
    fn fid_values_match_linux() {
        assert_eq!(fid::ARBITRATION, 0x01);
        assert_eq!(fid::POWER_MGMT, 0x02);
        assert_eq!(fid::TEMP_THRESHOLD, 0x04);
        assert_eq!(fid::ERROR_RECOVERY, 0x05);
        assert_eq!(fid::VOLATILE_WRITE_CACHE, 0x06);
        assert_eq!(fid::NUMBER_OF_QUEUES, 0x07);
        assert_eq!(fid::INTERRUPT_COALESCING, 0x08);
        assert_eq!(fid::WRITE_ATOMICITY, 0x0A);
        assert_eq!(fid::ASYNC_EVENT_CONFIG, 0x0B);
        assert_eq!(fid::KEEP_ALIVE_TIMER, 0x0F);
        assert_eq!(fid::HOST_BEHAVIOR, 0x16);
    }

    #[test]
    fn number_of_queues() {
        // Linux asks for NCQR = NSQR = n - 1.
        assert_eq!(number_of_queues_requested((7 << 16) | 7), (8, 8));
        assert_eq!(number_of_queues_dw0(8, 4), (3 << 16) | 7);
        assert_eq!(number_of_queues_dw0(0, 70_000), 0xFFFF << 16);
    }

    #[test]
    fn aen_dw0_layout() {
        // ANA change notice pointing at the ANA log: 0x000C0302.
        assert_eq!(
            aen::dw0(aen::NOTICE, aen::ANA_CHANGE, lid::ANA),
            0x000C_0302
        );
        // Namespace attribute changed -> changed namespace list (0x04).
        assert_eq!(
            aen::dw0(aen::NOTICE, aen::NS_ATTR_CHANGED, lid::CHANGED_NS_LIST),
            0x0004_0002
        );
        // Discovery log change -> discovery log (0x70).
        assert_eq!(
            aen::dw0(aen::NOTICE, aen::DISCOVERY_LOG_CHANGE, lid::DISCOVERY),
            0x0070_F002
        );
        assert_eq!(aen::parse_dw0(0x0070_F002), (2, 0xF0, 0x70));
        assert_eq!(aen::event_type::IO_CMD_SPECIFIC, 6);
        assert_eq!(aen::VENDOR, 7);
    }

    #[test]
    fn oaes_bits_match_linux_aen_cfg() {
        assert_eq!(oaes::NS_ATTR, 0x100);
        assert_eq!(oaes::FW_ACTIVATION, 0x200);
        assert_eq!(oaes::ANA_CHANGE, 0x800);
        assert_eq!(oaes::DISCOVERY_CHANGE, 0x8000_0000);
        assert_eq!(async_event_config::ANA_CHANGE_NOTICES, oaes::ANA_CHANGE);
    }

    #[test]
    fn small_helpers() {
        assert!(host_behavior_acre(&[1, 0]));
        assert!(!host_behavior_acre(&[]));
        assert_eq!(keep_alive_timeout_ms(5000), 5000);
        assert_eq!(arbitration_dw0(0xFF), 7);
    }
}
