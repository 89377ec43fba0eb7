//! Log pages (NVMe Base 2.0 section 5.16; NVMe-oF 1.1 section 5.4 for the
//! discovery log).
//!
//! Fixed-size pages encode into arrays; the variable-length ones (discovery,
//! ANA) encode any byte window `[offset, offset + out.len())` of the whole
//! page without building it, because hosts read a header first and the rest
//! at an offset (LPO).

use crate::bytes::{
    array_at, nul_trimmed_str, padded, put_u16, put_u32, put_u64, u16_at, u32_at, u64_at,
};
use crate::nvme::{admin_opcode, Sqe};
use crate::status::Status;

pub use crate::fabrics::NQN_FIELD_SIZE;

/// Log page identifiers.
pub mod lid {
    pub const ERROR_INFO: u8 = 0x01;
    pub const SMART_HEALTH: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NS_LIST: u8 = 0x04;
    pub const COMMANDS_SUPPORTED: u8 = 0x05;
    pub const DEVICE_SELF_TEST: u8 = 0x06;
    pub const ANA: u8 = 0x0C;
    pub const DISCOVERY: u8 = 0x70;
    pub const RESERVATION_NOTIFICATION: u8 = 0x80;
}

/// The fields of a Get Log Page command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GetLogPage {
    /// Log page identifier, CDW10 bits 7:0.
    pub lid: u8,
    /// Log specific field, CDW10 bits 14:8.
    pub lsp: u8,
    /// Retain asynchronous event, CDW10 bit 15.
    pub rae: bool,
    /// Dwords to return: NUMDU:NUMDL plus one (the wire value is 0's based).
    /// Saturates at `u32::MAX` for the one value that would overflow.
    pub numd: u32,
    /// Log page offset in bytes, CDW13:CDW12.
    pub lpo: u64,
    /// Log specific identifier, CDW11 bits 31:16.
    pub lsi: u16,
}

impl GetLogPage {
    pub fn parse(sqe: &Sqe) -> GetLogPage {
        let numdl = sqe.cdw10 >> 16;
        let numdu = sqe.cdw11 & 0xFFFF;
        GetLogPage {
            lid: (sqe.cdw10 & 0xFF) as u8,
            lsp: ((sqe.cdw10 >> 8) & 0x7F) as u8,
            rae: sqe.cdw10 & (1 << 15) != 0,
            numd: ((numdu << 16) | numdl).saturating_add(1),
            lpo: u64::from(sqe.cdw12) | (u64::from(sqe.cdw13) << 32),
            lsi: (sqe.cdw11 >> 16) as u16,
        }
    }

    /// Bytes the host asked for.
    pub fn len_bytes(&self) -> u64 {
        u64::from(self.numd) * 4
    }

    /// A Get Log Page SQE for `nsid`; `numd` must be at least 1. The
    /// transport fills DPTR.
    pub fn to_sqe(&self, cid: u16, nsid: u32) -> Sqe {
        let n = self.numd.saturating_sub(1);
        Sqe {
            opcode: admin_opcode::GET_LOG_PAGE,
            cid,
            nsid,
            cdw10: u32::from(self.lid)
                | (u32::from(self.lsp & 0x7F) << 8)
                | (u32::from(self.rae) << 15)
                | ((n & 0xFFFF) << 16),
            cdw11: (n >> 16) | (u32::from(self.lsi) << 16),
            cdw12: self.lpo as u32,
            cdw13: (self.lpo >> 32) as u32,
            ..Sqe::default()
        }
    }
}

/// Copies the part of `page` that the window `[offset, offset+out.len())`
/// covers into `out`; returns the bytes copied. For fixed-size pages.
pub fn copy_window(page: &[u8], offset: u64, out: &mut [u8]) -> usize {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(page.len());
    let n = (page.len() - start).min(out.len());
    out[..n].copy_from_slice(&page[start..start + n]);
    n
}

pub const ERROR_LOG_ENTRY_SIZE: usize = 64;

/// One Error Information log entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorLogEntry {
    /// Unique, incrementing error count (0 marks an unused entry).
    pub error_count: u64,
    pub sqid: u16,
    pub cid: u16,
    /// The status the command completed with (phase tag 0 on the wire).
    pub status: Status,
    /// Bits 7:0 byte, bits 10:8 bit of the bad SQE field; 0xFFFF if none.
    pub param_error_location: u16,
    pub lba: u64,
    pub nsid: u32,
    pub vendor_log_page: u8,
    pub trtype: u8,
    pub command_specific: u64,
    pub trtype_specific: u16,
}

impl ErrorLogEntry {
    pub fn encode(&self) -> [u8; ERROR_LOG_ENTRY_SIZE] {
        let mut b = [0u8; ERROR_LOG_ENTRY_SIZE];
        put_u64(&mut b, 0, self.error_count);
        put_u16(&mut b, 8, self.sqid);
        put_u16(&mut b, 10, self.cid);
        put_u16(&mut b, 12, (self.status.0 & 0x7FFF) << 1);
        put_u16(&mut b, 14, self.param_error_location);
        put_u64(&mut b, 16, self.lba);
        put_u32(&mut b, 24, self.nsid);
        b[28] = self.vendor_log_page;
        b[29] = self.trtype;
        put_u64(&mut b, 32, self.command_specific);
        put_u16(&mut b, 40, self.trtype_specific);
        b
    }

    pub fn parse(b: &[u8; ERROR_LOG_ENTRY_SIZE]) -> ErrorLogEntry {
        ErrorLogEntry {
            error_count: u64_at(b, 0),
            sqid: u16_at(b, 8),
            cid: u16_at(b, 10),
            status: Status(u16_at(b, 12) >> 1),
            param_error_location: u16_at(b, 14),
            lba: u64_at(b, 16),
            nsid: u32_at(b, 24),
            vendor_log_page: b[28],
            trtype: b[29],
            command_specific: u64_at(b, 32),
            trtype_specific: u16_at(b, 40),
        }
    }
}

pub const SMART_LOG_SIZE: usize = 512;

/// Critical Warning bits (SMART byte 0).
pub mod critical_warning {
    pub const SPARE_BELOW_THRESHOLD: u8 = 1 << 0;
    pub const TEMPERATURE: u8 = 1 << 1;
    pub const RELIABILITY_DEGRADED: u8 = 1 << 2;
    pub const READ_ONLY: u8 = 1 << 3;
    pub const VOLATILE_BACKUP_FAILED: u8 = 1 << 4;
    pub const PMR_READ_ONLY: u8 = 1 << 5;
}

/// SMART / Health Information log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmartLog {
    pub critical_warning: u8,
    /// Composite temperature in Kelvin.
    pub temperature_k: u16,
    /// Available spare, percent.
    pub available_spare: u8,
    pub available_spare_threshold: u8,
    pub percentage_used: u8,
    /// In thousands of 512-byte units.
    pub data_units_read: u128,
    /// In thousands of 512-byte units.
    pub data_units_written: u128,
    pub host_read_commands: u128,
    pub host_write_commands: u128,
    /// Minutes.
    pub controller_busy_time: u128,
    pub power_cycles: u128,
    pub power_on_hours: u128,
    pub unsafe_shutdowns: u128,
    pub media_errors: u128,
    pub num_error_log_entries: u128,
}

mod smart_offset {
    pub const CRITICAL_WARNING: usize = 0;
    pub const TEMPERATURE: usize = 1;
    pub const AVAILABLE_SPARE: usize = 3;
    pub const SPARE_THRESHOLD: usize = 4;
    pub const PERCENTAGE_USED: usize = 5;
    pub const DATA_UNITS_READ: usize = 32;
    pub const DATA_UNITS_WRITTEN: usize = 48;
    pub const HOST_READS: usize = 64;
    pub const HOST_WRITES: usize = 80;
    pub const BUSY_TIME: usize = 96;
    pub const POWER_CYCLES: usize = 112;
    pub const POWER_ON_HOURS: usize = 128;
    pub const UNSAFE_SHUTDOWNS: usize = 144;
    pub const MEDIA_ERRORS: usize = 160;
    pub const ERROR_LOG_ENTRIES: usize = 176;
}

impl SmartLog {
    pub fn encode(&self) -> [u8; SMART_LOG_SIZE] {
        use smart_offset as o;
        let mut b = [0u8; SMART_LOG_SIZE];
        b[o::CRITICAL_WARNING] = self.critical_warning;
        put_u16(&mut b, o::TEMPERATURE, self.temperature_k);
        b[o::AVAILABLE_SPARE] = self.available_spare;
        b[o::SPARE_THRESHOLD] = self.available_spare_threshold;
        b[o::PERCENTAGE_USED] = self.percentage_used;
        for (off, v) in [
            (o::DATA_UNITS_READ, self.data_units_read),
            (o::DATA_UNITS_WRITTEN, self.data_units_written),
            (o::HOST_READS, self.host_read_commands),
            (o::HOST_WRITES, self.host_write_commands),
            (o::BUSY_TIME, self.controller_busy_time),
            (o::POWER_CYCLES, self.power_cycles),
            (o::POWER_ON_HOURS, self.power_on_hours),
            (o::UNSAFE_SHUTDOWNS, self.unsafe_shutdowns),
            (o::MEDIA_ERRORS, self.media_errors),
            (o::ERROR_LOG_ENTRIES, self.num_error_log_entries),
        ] {
            b[off..off + 16].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    pub fn parse(b: &[u8; SMART_LOG_SIZE]) -> SmartLog {
        use smart_offset as o;
        let u128_at = |off: usize| u128::from_le_bytes(array_at(b, off));
        SmartLog {
            critical_warning: b[o::CRITICAL_WARNING],
            temperature_k: u16_at(b, o::TEMPERATURE),
            available_spare: b[o::AVAILABLE_SPARE],
            available_spare_threshold: b[o::SPARE_THRESHOLD],
            percentage_used: b[o::PERCENTAGE_USED],
            data_units_read: u128_at(o::DATA_UNITS_READ),
            data_units_written: u128_at(o::DATA_UNITS_WRITTEN),
            host_read_commands: u128_at(o::HOST_READS),
            host_write_commands: u128_at(o::HOST_WRITES),
            controller_busy_time: u128_at(o::BUSY_TIME),
            power_cycles: u128_at(o::POWER_CYCLES),
            power_on_hours: u128_at(o::POWER_ON_HOURS),
            unsafe_shutdowns: u128_at(o::UNSAFE_SHUTDOWNS),
            media_errors: u128_at(o::MEDIA_ERRORS),
            num_error_log_entries: u128_at(o::ERROR_LOG_ENTRIES),
        }
    }
}

pub const FIRMWARE_SLOT_LOG_SIZE: usize = 512;

/// Firmware Slot Information log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FirmwareSlotLog {
    /// Active firmware info: bits 2:0 active slot, 6:4 slot at next reset.
    pub afi: u8,
    /// Firmware revision for slots 1..=7 (ASCII, space padded; zero = empty).
    pub frs: [[u8; 8]; 7],
}

impl FirmwareSlotLog {
    pub fn encode(&self) -> [u8; FIRMWARE_SLOT_LOG_SIZE] {
        let mut b = [0u8; FIRMWARE_SLOT_LOG_SIZE];
        b[0] = self.afi;
        for (i, fr) in self.frs.iter().enumerate() {
            b[8 + i * 8..16 + i * 8].copy_from_slice(fr);
        }
        b
    }

    pub fn parse(b: &[u8; FIRMWARE_SLOT_LOG_SIZE]) -> FirmwareSlotLog {
        let mut frs = [[0u8; 8]; 7];
        for (i, fr) in frs.iter_mut().enumerate() {
            *fr = array_at(b, 8 + i * 8);
        }
        FirmwareSlotLog { afi: b[0], frs }
    }
}

pub const CHANGED_NS_LIST_SIZE: usize = 4096;
/// Entries the Changed Namespace List holds.
pub const CHANGED_NS_LIST_MAX: usize = 1024;

/// Changed Namespace List log: the NSIDs, or 0xFFFFFFFF alone
/// when more than 1024 changed; zero filled.
pub fn encode_changed_ns_list(nsids: &[u32], out: &mut [u8; CHANGED_NS_LIST_SIZE]) {
    out.fill(0);
    if nsids.len() > CHANGED_NS_LIST_MAX {
        put_u32(out, 0, 0xFFFF_FFFF);
        return;
    }
    for (i, &id) in nsids.iter().enumerate() {
        put_u32(out, i * 4, id);
    }
}

pub const EFFECTS_LOG_SIZE: usize = 4096;

/// Commands Supported and Effects entry bits.
pub mod effects {
    /// Command supported.
    pub const CSUPP: u32 = 1 << 0;
    /// Logical block content change.
    pub const LBCC: u32 = 1 << 1;
    /// Namespace capability change.
    pub const NCC: u32 = 1 << 2;
    /// Namespace inventory change.
    pub const NIC: u32 = 1 << 3;
    /// Controller capability change.
    pub const CCC: u32 = 1 << 4;
}

/// Commands Supported and Effects log: one dword per admin
/// opcode (bytes 0..1024) and per I/O opcode (bytes 1024..2048).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EffectsLog {
    pub acs: [u32; 256],
    pub iocs: [u32; 256],
}

impl Default for EffectsLog {
    fn default() -> Self {
        EffectsLog {
            acs: [0; 256],
            iocs: [0; 256],
        }
    }
}

impl EffectsLog {
    pub fn encode(&self, out: &mut [u8; EFFECTS_LOG_SIZE]) {
        out.fill(0);
        for (i, v) in self.acs.iter().enumerate() {
            put_u32(out, i * 4, *v);
        }
        for (i, v) in self.iocs.iter().enumerate() {
            put_u32(out, 1024 + i * 4, *v);
        }
    }
}

mod ana;
mod discovery;

pub use ana::*;
pub use discovery::*;

/// Writes the parts of a byte stream that fall inside a window, so a log
/// page can be produced piece by piece for any LPO.
struct Window<'a> {
    out: &'a mut [u8],
    start: u64,
    pos: u64,
}

impl<'a> Window<'a> {
    fn new(offset: u64, out: &'a mut [u8]) -> Self {
        Window {
            out,
            start: offset,
            pos: 0,
        }
    }

    fn end(&self) -> u64 {
        self.start.saturating_add(self.out.len() as u64)
    }

    /// True when no byte at or after the current position is wanted.
    fn done(&self) -> bool {
        self.pos >= self.end()
    }

    /// Advances past `len` bytes without producing them when none of them
    /// falls in the window; returns true if it skipped.
    fn skip_if_before(&mut self, len: u64) -> bool {
        if self.pos.saturating_add(len) <= self.start {
            self.pos = self.pos.saturating_add(len);
            true
        } else {
            false
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        let len = bytes.len() as u64;
        let lo = self.pos.max(self.start);
        let hi = self.pos.saturating_add(len).min(self.end());
        if lo < hi {
            let src = (lo - self.pos) as usize;
            let dst = (lo - self.start) as usize;
            let n = (hi - lo) as usize;
            self.out[dst..dst + n].copy_from_slice(&bytes[src..src + n]);
        }
        self.pos = self.pos.saturating_add(len);
    }

    /// Bytes of the window filled, given the stream's total length.
    fn written(&self, total: u64) -> usize {
        total.min(self.end()).saturating_sub(self.start) as usize
    }
}

/// Text of a fixed ASCII field padded with spaces and/or NULs.
fn padded_text(field: &[u8]) -> &str {
    nul_trimmed_str(field).trim_end_matches(' ')
}

/// `s` as a fixed ASCII field padded with spaces.
fn space_padded<const N: usize>(s: &str) -> [u8; N] {
    padded(s, b' ', N)
}

#[cfg(test)]
mod tests;
