//! Physical Region Page entries (NVMe Base 2.0, 4.1.1): how a command names its data.
//!
//! PRP1 is the first byte of the data (any dword-aligned address); the rest of the
//! transfer is named one memory page at a time. Up to two pages fit in PRP1/PRP2;
//! longer transfers put a PRP list in PRP2: page-aligned entries, the last entry of each
//! full list page pointing to the next list page.

/// The memory page size the driver programs (CC.MPS = 0).
pub const PAGE_SIZE: usize = 4096;
/// Entries in one PRP list page.
pub const ENTRIES_PER_LIST_PAGE: usize = PAGE_SIZE / 8;

/// PRP1 and PRP2 of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prp {
    pub prp1: u64,
    pub prp2: u64,
    /// Entries written to the list (0 when PRP2 is empty or a data page).
    pub list_entries: usize,
}

/// Why a transfer cannot be described.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PrpError {
    #[error("the data address {0:#x} is not dword aligned")]
    Unaligned(u64),
    #[error("the transfer is empty")]
    Empty,
    #[error("the transfer needs {need} PRP list entries but the command has room for {room}")]
    ListTooSmall { need: usize, room: usize },
    #[error("the PRP list at {0:#x} is not page aligned")]
    ListUnaligned(u64),
}

/// List entries a transfer of `len` bytes starting at `iova` needs (0 when PRP1 and
/// PRP2 alone describe it), counting the chain pointers of a multi-page list.
pub fn list_entries_needed(iova: u64, len: usize) -> usize {
    let pages = pages_spanned(iova, len);
    if pages <= 2 {
        return 0;
    }
    let data = pages - 1;
    // Every full list page but the last gives one entry to the chain pointer.
    let mut list_pages = 1;
    while list_pages * (ENTRIES_PER_LIST_PAGE - 1) + 1 < data {
        list_pages += 1;
    }
    data + (list_pages - 1)
}

/// Memory pages that `iova..iova+len` touches.
pub fn pages_spanned(iova: u64, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let first = iova / PAGE_SIZE as u64;
    let last = (iova + len as u64 - 1) / PAGE_SIZE as u64;
    (last - first + 1) as usize
}

/// Describes `len` bytes at IOVA `iova` (IOVA-contiguous). When a list is needed, its
/// entries go to `list` (whose first entry has IOVA `list_iova`, page aligned, the slice
/// being IOVA-contiguous too).
pub fn build(iova: u64, len: usize, list: &mut [u64], list_iova: u64) -> Result<Prp, PrpError> {
    if len == 0 {
        return Err(PrpError::Empty);
    }
    if !iova.is_multiple_of(4) {
        return Err(PrpError::Unaligned(iova));
    }
    let page = PAGE_SIZE as u64;
    let first_page_end = (iova / page + 1) * page;
    let pages = pages_spanned(iova, len);
    match pages {
        1 => {
            return Ok(Prp {
                prp1: iova,
                prp2: 0,
                list_entries: 0,
            })
        }
        2 => {
            return Ok(Prp {
                prp1: iova,
                prp2: first_page_end,
                list_entries: 0,
            })
        }
        _ => {}
    }
    if !list_iova.is_multiple_of(page) {
        return Err(PrpError::ListUnaligned(list_iova));
    }
    let need = list_entries_needed(iova, len);
    if need > list.len() {
        return Err(PrpError::ListTooSmall {
            need,
            room: list.len(),
        });
    }
    let data_pages = pages - 1;
    let mut next_data = first_page_end;
    let mut written = 0;
    let mut i = 0;
    while written < data_pages {
        let left = data_pages - written;
        let slot_in_page = i % ENTRIES_PER_LIST_PAGE;
        if slot_in_page == ENTRIES_PER_LIST_PAGE - 1 && left > 1 {
            // The last entry of a full list page chains to the next list page.
            list[i] = list_iova + ((i + 1) * 8) as u64;
        } else {
            list[i] = next_data;
            next_data += page;
            written += 1;
        }
        i += 1;
    }
    Ok(Prp {
        prp1: iova,
        prp2: list_iova,
        list_entries: i,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE_SIZE as u64;

    /// Walks a PRP description the way a controller does and returns the (address,
    /// length) of every piece of data, merging nothing.
    fn walk(prp: Prp, len: usize, list: &[u64], list_iova: u64) -> Vec<(u64, usize)> {
        let mut out = Vec::new();
        let first = (P - prp.prp1 % P).min(len as u64) as usize;
        out.push((prp.prp1, first));
        let mut left = len - first;
        if left == 0 {
            return out;
        }
        if left <= PAGE_SIZE {
            out.push((prp.prp2, left));
            return out;
        }
        let mut at = ((prp.prp2 - list_iova) / 8) as usize;
        while left > 0 {
            let e = list[at];
            let is_last_in_page = (at + 1).is_multiple_of(ENTRIES_PER_LIST_PAGE);
            if is_last_in_page && left > PAGE_SIZE {
                at = ((e - list_iova) / 8) as usize;
                continue;
            }
            assert_eq!(e % P, 0, "list entries are page aligned");
            let n = left.min(PAGE_SIZE);
            out.push((e, n));
            left -= n;
            at += 1;
        }
        out
    }

    fn check_covers(iova: u64, len: usize, pieces: &[(u64, usize)]) {
        let mut at = iova;
        for &(a, n) in pieces {
            assert_eq!(a, at, "pieces are in order and contiguous");
            at += n as u64;
        }
        assert_eq!(at, iova + len as u64);
    }

    #[test]
    fn one_page_and_two_pages_need_no_list() {
        let mut list = [0u64; 4];
        let p = build(0x10_0000, 4096, &mut list, 0x20_0000).expect("prp");
        assert_eq!((p.prp1, p.prp2, p.list_entries), (0x10_0000, 0, 0));
        // 512 bytes before a page boundary, 512 after: two pages.
        let p = build(0x10_0E00, 1024, &mut list, 0x20_0000).expect("prp");
        assert_eq!((p.prp1, p.prp2), (0x10_0E00, 0x10_1000));
        let p = build(0x10_0000, 8192, &mut list, 0x20_0000).expect("prp");
        assert_eq!((p.prp1, p.prp2), (0x10_0000, 0x10_1000));
        assert_eq!(list, [0; 4], "no list written");
    }

    #[test]
    fn a_list_for_three_pages_and_more() {
        let mut list = [0u64; 64];
        let p = build(0x10_0000, 3 * 4096, &mut list, 0x20_0000).expect("prp");
        assert_eq!(p.prp2, 0x20_0000);
        assert_eq!(&list[..2], &[0x10_1000, 0x10_2000]);
        assert_eq!(p.list_entries, 2);
        // Unaligned start: 128 KiB from 0x...0200 touches 33 pages.
        let iova = 0x30_0200;
        let len = 128 * 1024;
        let p = build(iova, len, &mut list, 0x20_0000).expect("prp");
        assert_eq!(p.list_entries, 32);
        check_covers(iova, len, &walk(p, len, &list, 0x20_0000));
        assert_eq!(list[0], 0x30_1000);
        assert_eq!(list[31], 0x32_0000);
    }

    #[test]
    fn across_every_page_offset() {
        let mut list = vec![0u64; 64];
        for start in (0..PAGE_SIZE as u64).step_by(512) {
            for len in [512usize, 4096 - 512, 4096, 4097, 8192, 12288, 65536 + 512] {
                let iova = 0x4000_0000 + start;
                let p = build(iova, len, &mut list, 0x8000_0000).expect("prp");
                let pieces = walk(p, len, &list, 0x8000_0000);
                check_covers(iova, len, &pieces);
                assert_eq!(pieces.len(), pages_spanned(iova, len));
                assert_eq!(p.list_entries, list_entries_needed(iova, len));
            }
        }
    }

    #[test]
    fn a_chained_list_past_one_list_page() {
        // 2 MiB + 8 KiB from a page boundary: 514 pages, 513 in the list, which takes
        // two list pages (511 data entries and a chain pointer, then 2).
        let len = (2 << 20) + 8192;
        let iova = 0x1_0000_0000;
        assert_eq!(list_entries_needed(iova, len), 514);
        let mut list = vec![0u64; 2 * ENTRIES_PER_LIST_PAGE];
        let list_iova = 0x2_0000_0000;
        let p = build(iova, len, &mut list, list_iova).expect("prp");
        assert_eq!(list[511], list_iova + 512 * 8, "the chain pointer");
        check_covers(iova, len, &walk(p, len, &list, list_iova));
        // Exactly one full list page needs no chain: 512 data pages after PRP1.
        let len = 513 * 4096;
        assert_eq!(list_entries_needed(iova, len), 512);
        let p = build(iova, len, &mut list, list_iova).expect("prp");
        assert_eq!(list[511], iova + 512 * 4096, "data, not a chain pointer");
        check_covers(iova, len, &walk(p, len, &list, list_iova));
    }

    #[test]
    fn refusals() {
        let mut list = [0u64; 2];
        assert_eq!(
            build(0x1002, 4, &mut list, 0),
            Err(PrpError::Unaligned(0x1002))
        );
        assert_eq!(build(0x1000, 0, &mut list, 0), Err(PrpError::Empty));
        assert_eq!(
            build(0x1000, 4 * 4096, &mut list, 0x9000),
            Err(PrpError::ListTooSmall { need: 3, room: 2 })
        );
        assert_eq!(
            build(0x1000, 4 * 4096, &mut [0u64; 8], 0x9008),
            Err(PrpError::ListUnaligned(0x9008))
        );
    }
}
