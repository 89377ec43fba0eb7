//! Discovery log page (NVMe-oF 1.1, "Discovery Log Page"): a
//! 1024-byte header followed by one 1024-byte entry per record.

use super::{padded_text, space_padded, Window, NQN_FIELD_SIZE};
use crate::bytes::{array_at, nul_trimmed_str, put_u16, put_u64, u16_at, u64_at};
use crate::fabrics::{nqn_field, CNTLID_DYNAMIC};
use crate::SpecError;

pub const DISCOVERY_LOG_HEADER_SIZE: usize = 1024;
pub const DISCOVERY_LOG_ENTRY_SIZE: usize = 1024;
pub const TRSVCID_SIZE: usize = 32;
pub const TRADDR_SIZE: usize = 256;
pub const TSAS_SIZE: usize = 256;

/// Transport types (TRTYPE).
pub mod trtype {
    pub const RDMA: u8 = 1;
    pub const FC: u8 = 2;
    pub const TCP: u8 = 3;
    pub const LOOP: u8 = 254;
}

/// Address families (ADRFAM).
pub mod adrfam {
    pub const PCI: u8 = 0;
    pub const IPV4: u8 = 1;
    pub const IPV6: u8 = 2;
    pub const IB: u8 = 3;
    pub const FC: u8 = 4;
}

/// Subsystem types (SUBTYPE).
pub mod subtype {
    pub const DISCOVERY_REFERRAL: u8 = 1;
    pub const NVME_SUBSYSTEM: u8 = 2;
    pub const CURRENT_DISCOVERY: u8 = 3;
}

/// Transport requirements (TREQ): bits 1:0 secure channel, bit 2 SQ flow
/// control disable supported.
pub mod treq {
    pub const NOT_SPECIFIED: u8 = 0;
    pub const REQUIRED: u8 = 1;
    pub const NOT_REQUIRED: u8 = 2;
    pub const SQ_FLOW_CONTROL_DISABLE: u8 = 1 << 2;
}

/// Entry flags (EFLAGS).
pub mod eflags {
    /// Duplicate returned information.
    pub const DUPRETINFO: u16 = 1 << 0;
    /// Explicit persistent connection support for discovery.
    pub const EPCSD: u16 = 1 << 1;
}

/// NVMe/TCP TSAS byte 0: security type (SECTYPE).
pub mod tcp_sectype {
    pub const NONE: u8 = 0;
    pub const TLS_1_2: u8 = 1;
    pub const TLS_1_3: u8 = 2;
}

/// One discovery log page entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscoveryLogEntry {
    pub trtype: u8,
    pub adrfam: u8,
    pub subtype: u8,
    pub treq: u8,
    pub portid: u16,
    pub cntlid: u16,
    /// Admin max SQ size.
    pub asqsz: u16,
    pub eflags: u16,
    /// Transport service id (TCP port number as text), space padded.
    pub trsvcid: [u8; TRSVCID_SIZE],
    /// Transport address (IP address as text), space padded.
    pub traddr: [u8; TRADDR_SIZE],
    /// Transport specific address subtype.
    pub tsas: [u8; TSAS_SIZE],
    /// Subsystem NQN, NUL padded.
    pub subnqn: [u8; NQN_FIELD_SIZE],
}

mod off {
    pub const TRTYPE: usize = 0;
    pub const ADRFAM: usize = 1;
    pub const SUBTYPE: usize = 2;
    pub const TREQ: usize = 3;
    pub const PORTID: usize = 4;
    pub const CNTLID: usize = 6;
    pub const ASQSZ: usize = 8;
    pub const EFLAGS: usize = 10;
    pub const TRSVCID: usize = 32;
    pub const SUBNQN: usize = 256;
    pub const TRADDR: usize = 512;
    pub const TSAS: usize = 768;
}

impl Default for DiscoveryLogEntry {
    fn default() -> Self {
        DiscoveryLogEntry {
            trtype: 0,
            adrfam: 0,
            subtype: 0,
            treq: 0,
            portid: 0,
            cntlid: 0,
            asqsz: 0,
            eflags: 0,
            trsvcid: [b' '; TRSVCID_SIZE],
            traddr: [b' '; TRADDR_SIZE],
            tsas: [0; TSAS_SIZE],
            subnqn: [0; NQN_FIELD_SIZE],
        }
    }
}

impl DiscoveryLogEntry {
    /// An NVMe/TCP entry: dynamic controller model (CNTLID 0xFFFF), admin
    /// queue size 32, TREQ not specified, no TLS.
    pub fn tcp(
        subtype: u8,
        adrfam: u8,
        portid: u16,
        traddr: &str,
        trsvcid: &str,
        subnqn: &str,
    ) -> DiscoveryLogEntry {
        DiscoveryLogEntry {
            trtype: trtype::TCP,
            adrfam,
            subtype,
            treq: treq::NOT_SPECIFIED,
            portid,
            cntlid: CNTLID_DYNAMIC,
            asqsz: 32,
            eflags: 0,
            trsvcid: space_padded(trsvcid),
            traddr: space_padded(traddr),
            tsas: [0; TSAS_SIZE],
            subnqn: nqn_field(subnqn),
        }
    }

    pub fn encode(&self) -> [u8; DISCOVERY_LOG_ENTRY_SIZE] {
        let mut b = [0u8; DISCOVERY_LOG_ENTRY_SIZE];
        b[off::TRTYPE] = self.trtype;
        b[off::ADRFAM] = self.adrfam;
        b[off::SUBTYPE] = self.subtype;
        b[off::TREQ] = self.treq;
        put_u16(&mut b, off::PORTID, self.portid);
        put_u16(&mut b, off::CNTLID, self.cntlid);
        put_u16(&mut b, off::ASQSZ, self.asqsz);
        put_u16(&mut b, off::EFLAGS, self.eflags);
        b[off::TRSVCID..off::TRSVCID + TRSVCID_SIZE].copy_from_slice(&self.trsvcid);
        b[off::SUBNQN..off::SUBNQN + NQN_FIELD_SIZE].copy_from_slice(&self.subnqn);
        b[off::TRADDR..off::TRADDR + TRADDR_SIZE].copy_from_slice(&self.traddr);
        b[off::TSAS..off::TSAS + TSAS_SIZE].copy_from_slice(&self.tsas);
        b
    }

    pub fn parse(b: &[u8; DISCOVERY_LOG_ENTRY_SIZE]) -> DiscoveryLogEntry {
        DiscoveryLogEntry {
            trtype: b[off::TRTYPE],
            adrfam: b[off::ADRFAM],
            subtype: b[off::SUBTYPE],
            treq: b[off::TREQ],
            portid: u16_at(b, off::PORTID),
            cntlid: u16_at(b, off::CNTLID),
            asqsz: u16_at(b, off::ASQSZ),
            eflags: u16_at(b, off::EFLAGS),
            trsvcid: array_at(b, off::TRSVCID),
            traddr: array_at(b, off::TRADDR),
            tsas: array_at(b, off::TSAS),
            subnqn: array_at(b, off::SUBNQN),
        }
    }

    /// Transport address text without space or NUL padding.
    pub fn traddr_str(&self) -> &str {
        padded_text(&self.traddr)
    }

    /// Transport service id text without space or NUL padding.
    pub fn trsvcid_str(&self) -> &str {
        padded_text(&self.trsvcid)
    }

    /// Subsystem NQN text up to the first NUL.
    pub fn subnqn_str(&self) -> &str {
        nul_trimmed_str(&self.subnqn)
    }
}

/// The discovery log page header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscoveryLogHeader {
    /// Generation counter, bytes 0..8.
    pub genctr: u64,
    /// Number of records, bytes 8..16.
    pub numrec: u64,
    /// Record format, bytes 16..18.
    pub recfmt: u16,
}

impl DiscoveryLogHeader {
    /// Reads the first 18 bytes of the header.
    pub fn parse(b: &[u8]) -> Result<DiscoveryLogHeader, SpecError> {
        if b.len() < 18 {
            return Err(SpecError::TooShort {
                need: 18,
                got: b.len(),
            });
        }
        Ok(DiscoveryLogHeader {
            genctr: u64_at(b, 0),
            numrec: u64_at(b, 8),
            recfmt: u16_at(b, 16),
        })
    }

    pub fn encode(&self) -> [u8; DISCOVERY_LOG_HEADER_SIZE] {
        let mut b = [0u8; DISCOVERY_LOG_HEADER_SIZE];
        put_u64(&mut b, 0, self.genctr);
        put_u64(&mut b, 8, self.numrec);
        put_u16(&mut b, 16, self.recfmt);
        b
    }
}

/// Total length of a discovery log page with `entries` records.
pub fn discovery_log_len(entries: usize) -> u64 {
    (DISCOVERY_LOG_HEADER_SIZE as u64)
        .saturating_add((entries as u64).saturating_mul(DISCOVERY_LOG_ENTRY_SIZE as u64))
}

/// Writes the window `[offset, offset + out.len())` of the discovery log page
/// (header with `genctr`, NUMREC = `entries.len()`, RECFMT 0, then the
/// entries) and returns the bytes written; less than `out.len()` when the
/// page ends inside the window, 0 when `offset` is past its end.
pub fn encode_discovery_log(
    genctr: u64,
    entries: &[DiscoveryLogEntry],
    offset: u64,
    out: &mut [u8],
) -> usize {
    let total = discovery_log_len(entries.len());
    let mut w = Window::new(offset, out);
    if !w.skip_if_before(DISCOVERY_LOG_HEADER_SIZE as u64) {
        let hdr = DiscoveryLogHeader {
            genctr,
            numrec: entries.len() as u64,
            recfmt: 0,
        };
        w.put(&hdr.encode());
    }
    for e in entries {
        if w.done() {
            break;
        }
        if !w.skip_if_before(DISCOVERY_LOG_ENTRY_SIZE as u64) {
            w.put(&e.encode());
        }
    }
    w.written(total)
}

/// Entry `i` of a discovery log page held from its start in `page`, if the
/// buffer holds it.
pub fn discovery_log_entry(page: &[u8], i: usize) -> Option<DiscoveryLogEntry> {
    let start = DISCOVERY_LOG_HEADER_SIZE.checked_add(i.checked_mul(DISCOVERY_LOG_ENTRY_SIZE)?)?;
    let b = page.get(start..start.checked_add(DISCOVERY_LOG_ENTRY_SIZE)?)?;
    Some(DiscoveryLogEntry::parse(&array_at(b, 0)))
}
