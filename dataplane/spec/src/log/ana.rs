//! Asymmetric Namespace Access log page (NVMe Base 2.0 section 5.16.1.12):
//! a 16-byte header, then per ANA group a 32-byte descriptor followed by its
//! NSIDs (none when the host sets RGO, "return groups only").

use super::Window;
use crate::bytes::{put_u16, put_u32, put_u64, u16_at, u32_at, u64_at};
use crate::SpecError;

pub const ANA_LOG_HEADER_SIZE: usize = 16;
pub const ANA_GROUP_DESC_SIZE: usize = 32;
/// Get Log Page LSP bit 0 for the ANA log: return groups only.
pub const ANA_LSP_RGO: u8 = 1 << 0;

/// ANA states (descriptor byte 16, bits 3:0).
pub mod ana_state {
    pub const OPTIMIZED: u8 = 0x01;
    pub const NON_OPTIMIZED: u8 = 0x02;
    pub const INACCESSIBLE: u8 = 0x03;
    pub const PERSISTENT_LOSS: u8 = 0x04;
    pub const CHANGE: u8 = 0x0F;
}

/// One ANA group as the target knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnaGroupDesc<'a> {
    pub grpid: u32,
    pub chgcnt: u64,
    /// One of [`ana_state`].
    pub state: u8,
    /// The group's NSIDs, ascending.
    pub nsids: &'a [u32],
}

impl AnaGroupDesc<'_> {
    fn len(&self, rgo: bool) -> u64 {
        let n = if rgo { 0 } else { self.nsids.len() as u64 };
        ANA_GROUP_DESC_SIZE as u64 + n * 4
    }

    fn header(&self, rgo: bool) -> [u8; ANA_GROUP_DESC_SIZE] {
        let mut b = [0u8; ANA_GROUP_DESC_SIZE];
        put_u32(&mut b, 0, self.grpid);
        let n = if rgo { 0 } else { self.nsids.len() };
        put_u32(&mut b, 4, u32::try_from(n).unwrap_or(u32::MAX));
        put_u64(&mut b, 8, self.chgcnt);
        b[16] = self.state & 0x0F;
        b
    }
}

/// Total length of the ANA log page for `groups`.
pub fn ana_log_len(groups: &[AnaGroupDesc<'_>], rgo: bool) -> u64 {
    groups.iter().fold(ANA_LOG_HEADER_SIZE as u64, |acc, g| {
        acc.saturating_add(g.len(rgo))
    })
}

/// Writes the window `[offset, offset + out.len())` of the ANA log page and
/// returns the bytes written (short when the page ends inside the window).
/// With `rgo` (LSP bit 0) NNSIDS is 0 and no NSIDs follow the descriptors.
pub fn encode_ana_log(
    chgcnt: u64,
    groups: &[AnaGroupDesc<'_>],
    rgo: bool,
    offset: u64,
    out: &mut [u8],
) -> usize {
    let total = ana_log_len(groups, rgo);
    let mut w = Window::new(offset, out);
    let mut hdr = [0u8; ANA_LOG_HEADER_SIZE];
    put_u64(&mut hdr, 0, chgcnt);
    put_u16(&mut hdr, 8, u16::try_from(groups.len()).unwrap_or(u16::MAX));
    w.put(&hdr);
    for g in groups {
        if w.done() {
            break;
        }
        if w.skip_if_before(g.len(rgo)) {
            continue;
        }
        w.put(&g.header(rgo));
        if rgo {
            continue;
        }
        for id in g.nsids {
            if w.done() {
                break;
            }
            if !w.skip_if_before(4) {
                w.put(&id.to_le_bytes());
            }
        }
    }
    w.written(total)
}

/// The ANA log header as read by a host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnaLogHeader {
    pub chgcnt: u64,
    pub ngrps: u16,
}

/// One group descriptor as read by a host, borrowing its NSID bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnaGroupView<'a> {
    pub grpid: u32,
    pub nnsids: u32,
    pub chgcnt: u64,
    pub state: u8,
    nsid_bytes: &'a [u8],
}

impl<'a> AnaGroupView<'a> {
    pub fn nsids(&self) -> impl Iterator<Item = u32> + 'a {
        self.nsid_bytes.chunks_exact(4).map(|c| u32_at(c, 0))
    }
}

/// Parses an ANA log page read from offset 0: the header and an iterator
/// over the group descriptors. The iterator yields an error and stops when
/// the buffer ends inside a descriptor.
pub fn parse_ana_log(b: &[u8]) -> Result<(AnaLogHeader, AnaGroupIter<'_>), SpecError> {
    if b.len() < ANA_LOG_HEADER_SIZE {
        return Err(SpecError::TooShort {
            need: ANA_LOG_HEADER_SIZE,
            got: b.len(),
        });
    }
    let hdr = AnaLogHeader {
        chgcnt: u64_at(b, 0),
        ngrps: u16_at(b, 8),
    };
    let it = AnaGroupIter {
        b,
        pos: ANA_LOG_HEADER_SIZE,
        left: hdr.ngrps,
    };
    Ok((hdr, it))
}

/// Iterator returned by [`parse_ana_log`].
pub struct AnaGroupIter<'a> {
    b: &'a [u8],
    pos: usize,
    left: u16,
}

impl<'a> Iterator for AnaGroupIter<'a> {
    type Item = Result<AnaGroupView<'a>, SpecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let short = |need: usize, got: usize| SpecError::TooShort { need, got };
        let desc_end = self.pos + ANA_GROUP_DESC_SIZE;
        let Some(d) = self.b.get(self.pos..desc_end) else {
            self.left = 0;
            return Some(Err(short(desc_end, self.b.len())));
        };
        let nnsids = u32_at(d, 4);
        let ids_end = (nnsids as usize)
            .checked_mul(4)
            .and_then(|n| n.checked_add(desc_end));
        let Some(ids) = ids_end.and_then(|end| self.b.get(desc_end..end)) else {
            self.left = 0;
            return Some(Err(short(ids_end.unwrap_or(usize::MAX), self.b.len())));
        };
        self.left -= 1;
        self.pos = desc_end + ids.len();
        Some(Ok(AnaGroupView {
            grpid: u32_at(d, 0),
            nnsids,
            chgcnt: u64_at(d, 8),
            state: d[16] & 0x0F,
            nsid_bytes: ids,
        }))
    }
}
