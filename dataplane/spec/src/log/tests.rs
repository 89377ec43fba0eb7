//! Log page layouts against the NVMe Base 2.0 / NVMe-oF 1.1 tables and the
//! Linux structures (nvme_error_slot, nvme_smart_log, nvme_fw_slot_info_log,
//! nvmf_disc_rsp_page_hdr/entry, nvme_ana_rsp_hdr/nvme_ana_group_desc).

use super::*;
use crate::status::generic;
use crate::SpecError;

#[test]
fn get_log_page_fields() {
    let sqe = Sqe {
        opcode: admin_opcode::GET_LOG_PAGE,
        nsid: 0xFFFF_FFFF,
        // NUMDL 0x0003, RAE, LSP 0x7F, LID 0x0C.
        cdw10: (0x0003 << 16) | (1 << 15) | (0x7F << 8) | 0x0C,
        // LSI 0x1234, NUMDU 0x0001.
        cdw11: (0x1234 << 16) | 0x0001,
        cdw12: 0x0000_1000,
        cdw13: 0x0000_0002,
        ..Sqe::default()
    };
    let g = GetLogPage::parse(&sqe);
    assert_eq!(
        g,
        GetLogPage {
            lid: lid::ANA,
            lsp: 0x7F,
            rae: true,
            numd: 0x0001_0004,
            lpo: 0x2_0000_1000,
            lsi: 0x1234,
        }
    );
    assert_eq!(g.len_bytes(), 0x0001_0004 * 4);
    assert_eq!(g.to_sqe(0, 0xFFFF_FFFF), sqe);
}

#[test]
fn get_log_page_numd_edges() {
    let zero = GetLogPage::parse(&Sqe::default());
    assert_eq!(zero.numd, 1);
    assert_eq!(zero.len_bytes(), 4);
    let max = GetLogPage::parse(&Sqe {
        cdw10: 0xFFFF << 16,
        cdw11: 0xFFFF,
        ..Sqe::default()
    });
    assert_eq!(max.numd, u32::MAX);
}

#[test]
fn copy_window_clips() {
    let page = [1u8, 2, 3, 4, 5];
    let mut out = [0u8; 3];
    assert_eq!(copy_window(&page, 3, &mut out), 2);
    assert_eq!(&out[..2], &[4, 5]);
    assert_eq!(copy_window(&page, 9, &mut out), 0);
    assert_eq!(copy_window(&page, u64::MAX, &mut out), 0);
}

#[test]
fn error_entry_layout() {
    let e = ErrorLogEntry {
        error_count: 0x0102_0304_0506_0708,
        sqid: 0x0A0B,
        cid: 0x0C0D,
        status: Status::generic(generic::INVALID_FIELD).with_dnr(),
        param_error_location: 0x0128,
        lba: 0x1112_1314_1516_1718,
        nsid: 0x2122_2324,
        vendor_log_page: 0x25,
        trtype: 3,
        command_specific: 0x3132_3334_3536_3738,
        trtype_specific: 0x4142,
    };
    let b = e.encode();
    assert_eq!(&b[0..8], &0x0102_0304_0506_0708u64.to_le_bytes());
    assert_eq!(&b[8..10], &[0x0B, 0x0A]);
    assert_eq!(&b[10..12], &[0x0D, 0x0C]);
    // Status Field in bits 15:1, phase tag 0: 0x4002 << 1.
    assert_eq!(&b[12..14], &0x8004u16.to_le_bytes());
    assert_eq!(&b[14..16], &[0x28, 0x01]);
    assert_eq!(&b[16..24], &0x1112_1314_1516_1718u64.to_le_bytes());
    assert_eq!(&b[24..28], &0x2122_2324u32.to_le_bytes());
    assert_eq!(b[28], 0x25);
    assert_eq!(b[29], 3);
    assert_eq!(&b[32..40], &0x3132_3334_3536_3738u64.to_le_bytes());
    assert_eq!(&b[40..42], &[0x42, 0x41]);
    assert!(b[42..].iter().all(|&x| x == 0));
    assert_eq!(ErrorLogEntry::parse(&b), e);
}

#[test]
fn smart_layout() {
    let s = SmartLog {
        critical_warning: critical_warning::TEMPERATURE,
        temperature_k: 310,
        available_spare: 100,
        available_spare_threshold: 10,
        percentage_used: 3,
        data_units_read: 1 | (7u128 << 64),
        data_units_written: 2,
        host_read_commands: 3,
        host_write_commands: 4,
        controller_busy_time: 5,
        power_cycles: 6,
        power_on_hours: 7,
        unsafe_shutdowns: 8,
        media_errors: 9,
        num_error_log_entries: 10,
    };
    let b = s.encode();
    assert_eq!(b[0], 2);
    assert_eq!(&b[1..3], &310u16.to_le_bytes());
    assert_eq!(b[3], 100);
    assert_eq!(b[4], 10);
    assert_eq!(b[5], 3);
    assert_eq!(b[32], 1);
    assert_eq!(b[40], 7);
    for (i, off) in [48usize, 64, 80, 96, 112, 128, 144, 160, 176]
        .iter()
        .enumerate()
    {
        assert_eq!(b[*off], i as u8 + 2, "offset {off}");
        assert!(b[off + 1..off + 16].iter().all(|&x| x == 0));
    }
    assert!(b[192..].iter().all(|&x| x == 0));
    assert_eq!(SmartLog::parse(&b), s);
}

#[test]
fn firmware_slot_layout() {
    let mut f = FirmwareSlotLog {
        afi: 0x01,
        ..FirmwareSlotLog::default()
    };
    f.frs[0] = crate::identify::pad_ascii("1.0");
    f.frs[6] = *b"ABCDEFGH";
    let b = f.encode();
    assert_eq!(b[0], 1);
    assert!(b[1..8].iter().all(|&x| x == 0));
    assert_eq!(&b[8..16], b"1.0     ");
    assert_eq!(&b[56..64], b"ABCDEFGH");
    assert!(b[64..].iter().all(|&x| x == 0));
    assert_eq!(FirmwareSlotLog::parse(&b), f);
}

#[test]
fn changed_ns_list() {
    let mut b = [0xFFu8; 4096];
    encode_changed_ns_list(&[3, 7], &mut b);
    assert_eq!(&b[0..8], &[3, 0, 0, 0, 7, 0, 0, 0]);
    assert!(b[8..].iter().all(|&x| x == 0));
    let many: Vec<u32> = (1..=1025).collect();
    encode_changed_ns_list(&many, &mut b);
    assert_eq!(&b[0..4], &[0xFF; 4]);
    assert!(b[4..].iter().all(|&x| x == 0));
    encode_changed_ns_list(&many[..1024], &mut b);
    assert_eq!(&b[4092..4096], &1024u32.to_le_bytes());
}

#[test]
fn effects_layout() {
    let mut e = EffectsLog::default();
    e.acs[0x06] = effects::CSUPP;
    e.iocs[0x01] = effects::CSUPP | effects::LBCC;
    let mut b = [0xFFu8; 4096];
    e.encode(&mut b);
    assert_eq!(&b[0x06 * 4..0x06 * 4 + 4], &1u32.to_le_bytes());
    assert_eq!(&b[1024 + 4..1024 + 8], &3u32.to_le_bytes());
    assert!(b[2048..].iter().all(|&x| x == 0));
}

fn entry(i: u8) -> DiscoveryLogEntry {
    DiscoveryLogEntry::tcp(
        subtype::NVME_SUBSYSTEM,
        adrfam::IPV4,
        u16::from(i),
        "192.168.1.10",
        "4420",
        &format!("nqn.2024-01.io.lightpool:vol{i}"),
    )
}

#[test]
fn discovery_entry_layout_follows_figure_38() {
    let mut e = entry(1);
    e.treq = treq::NOT_REQUIRED | treq::SQ_FLOW_CONTROL_DISABLE;
    e.eflags = eflags::EPCSD;
    e.tsas[0] = tcp_sectype::NONE;
    let b = e.encode();
    assert_eq!(b[0], 3);
    assert_eq!(b[1], 1);
    assert_eq!(b[2], 2);
    assert_eq!(b[3], 0x06);
    assert_eq!(&b[4..6], &[1, 0]);
    assert_eq!(&b[6..8], &[0xFF, 0xFF]);
    assert_eq!(&b[8..10], &[32, 0]);
    assert_eq!(&b[10..12], &[2, 0]);
    assert!(b[12..32].iter().all(|&x| x == 0));
    assert_eq!(&b[32..36], b"4420");
    assert!(b[36..64].iter().all(|&x| x == b' '));
    assert!(b[64..256].iter().all(|&x| x == 0));
    assert_eq!(&b[256..285], b"nqn.2024-01.io.lightpool:vol1");
    assert_eq!(b[285], 0);
    assert_eq!(&b[512..524], b"192.168.1.10");
    assert_eq!(b[524], b' ');
    assert!(b[768..].iter().all(|&x| x == 0));
    let p = DiscoveryLogEntry::parse(&b);
    assert_eq!(p, e);
    assert_eq!(p.traddr_str(), "192.168.1.10");
    assert_eq!(p.trsvcid_str(), "4420");
    assert_eq!(p.subnqn_str(), "nqn.2024-01.io.lightpool:vol1");
}

#[test]
fn discovery_text_trims_nul_padding_too() {
    let mut e = DiscoveryLogEntry::default();
    e.traddr[..4].copy_from_slice(b"fe80");
    e.traddr[4..].fill(0);
    assert_eq!(e.traddr_str(), "fe80");
    assert_eq!(DiscoveryLogEntry::default().trsvcid_str(), "");
}

fn whole_discovery(genctr: u64, entries: &[DiscoveryLogEntry]) -> Vec<u8> {
    let len = discovery_log_len(entries.len()) as usize;
    let mut v = vec![0xEE; len + 100];
    let n = encode_discovery_log(genctr, entries, 0, &mut v);
    assert_eq!(n, len);
    v.truncate(len);
    v
}

#[test]
fn discovery_header_follows_figure_37() {
    let entries = [entry(1), entry(2)];
    let page = whole_discovery(0x1122, &entries);
    assert_eq!(page.len(), 3072);
    assert_eq!(&page[0..8], &0x1122u64.to_le_bytes());
    assert_eq!(&page[8..16], &2u64.to_le_bytes());
    assert_eq!(&page[16..18], &[0, 0]);
    assert!(page[18..1024].iter().all(|&x| x == 0));
    assert_eq!(&page[1024..2048], &entries[0].encode());
    assert_eq!(&page[2048..3072], &entries[1].encode());
    let h = DiscoveryLogHeader::parse(&page).expect("header");
    assert_eq!(
        h,
        DiscoveryLogHeader {
            genctr: 0x1122,
            numrec: 2,
            recfmt: 0
        }
    );
    assert_eq!(discovery_log_entry(&page, 1), Some(entries[1]));
    assert_eq!(discovery_log_entry(&page, 2), None);
    assert!(DiscoveryLogHeader::parse(&page[..17]).is_err());
}

#[test]
fn discovery_windows_match_whole_page() {
    let entries = [entry(1), entry(2), entry(3)];
    let page = whole_discovery(9, &entries);
    for (offset, len) in [
        (0u64, 16usize),
        (0, 1024),
        (8, 8),
        (1000, 100),
        (1024, 1024),
        (2047, 2),
        (3000, 2000),
        (4096, 10),
        (5000, 10),
    ] {
        let mut out = vec![0xEE; len];
        let n = encode_discovery_log(9, &entries, offset, &mut out);
        let start = (offset as usize).min(page.len());
        let want = &page[start..(start + len).min(page.len())];
        assert_eq!(n, want.len(), "offset {offset} len {len}");
        assert_eq!(&out[..n], want, "offset {offset} len {len}");
        assert!(out[n..].iter().all(|&x| x == 0xEE));
    }
    // No entries: just the header.
    let mut out = [0u8; 2048];
    assert_eq!(encode_discovery_log(1, &[], 0, &mut out), 1024);
}

#[test]
fn discovery_constants_match_linux() {
    assert_eq!(trtype::RDMA, 1);
    assert_eq!(trtype::TCP, 3);
    assert_eq!(adrfam::IPV4, 1);
    assert_eq!(adrfam::IPV6, 2);
    assert_eq!(subtype::DISCOVERY_REFERRAL, 1);
    assert_eq!(subtype::NVME_SUBSYSTEM, 2);
    assert_eq!(subtype::CURRENT_DISCOVERY, 3);
    assert_eq!(treq::NOT_SPECIFIED, 0);
    assert_eq!(treq::NOT_REQUIRED, 2);
    assert_eq!(treq::SQ_FLOW_CONTROL_DISABLE, 4);
}

const NS_A: [u32; 3] = [1, 2, 5];
const NS_B: [u32; 1] = [9];

fn groups() -> [AnaGroupDesc<'static>; 3] {
    [
        AnaGroupDesc {
            grpid: 1,
            chgcnt: 10,
            state: ana_state::OPTIMIZED,
            nsids: &NS_A,
        },
        AnaGroupDesc {
            grpid: 2,
            chgcnt: 11,
            state: ana_state::INACCESSIBLE,
            nsids: &[],
        },
        AnaGroupDesc {
            grpid: 7,
            chgcnt: 12,
            state: ana_state::CHANGE,
            nsids: &NS_B,
        },
    ]
}

#[test]
fn ana_layout() {
    let g = groups();
    let len = ana_log_len(&g, false) as usize;
    assert_eq!(len, 16 + (32 + 12) + 32 + (32 + 4));
    let mut b = vec![0xEE; len + 8];
    assert_eq!(encode_ana_log(0x55, &g, false, 0, &mut b), len);
    // Header: CHGCNT, NGRPS, 6 reserved bytes.
    assert_eq!(&b[0..8], &0x55u64.to_le_bytes());
    assert_eq!(&b[8..10], &3u16.to_le_bytes());
    assert!(b[10..16].iter().all(|&x| x == 0));
    // Group 1 descriptor at 16: ANAGRPID, NNSIDS, CHGCNT, STATE, reserved.
    assert_eq!(&b[16..20], &1u32.to_le_bytes());
    assert_eq!(&b[20..24], &3u32.to_le_bytes());
    assert_eq!(&b[24..32], &10u64.to_le_bytes());
    assert_eq!(b[32], ana_state::OPTIMIZED);
    assert!(b[33..48].iter().all(|&x| x == 0));
    assert_eq!(&b[48..60], &[1, 0, 0, 0, 2, 0, 0, 0, 5, 0, 0, 0]);
    // Group 2 at 60, no NSIDs; group 7 at 92.
    assert_eq!(&b[60..64], &2u32.to_le_bytes());
    assert_eq!(&b[64..68], &0u32.to_le_bytes());
    assert_eq!(b[76], ana_state::INACCESSIBLE);
    assert_eq!(&b[92..96], &7u32.to_le_bytes());
    assert_eq!(b[108], 0x0F);
    assert_eq!(&b[124..128], &9u32.to_le_bytes());
    assert_eq!(b[128], 0xEE);

    let (h, it) = parse_ana_log(&b[..len]).expect("header");
    assert_eq!(
        h,
        AnaLogHeader {
            chgcnt: 0x55,
            ngrps: 3
        }
    );
    let views: Vec<_> = it.collect::<Result<_, _>>().expect("groups");
    assert_eq!(views.len(), 3);
    assert_eq!(views[0].grpid, 1);
    assert_eq!(views[0].nsids().collect::<Vec<_>>(), NS_A);
    assert_eq!(views[1].nnsids, 0);
    assert_eq!(views[2].state, ana_state::CHANGE);
    assert_eq!(views[2].chgcnt, 12);
    assert_eq!(views[2].nsids().collect::<Vec<_>>(), NS_B);
}

#[test]
fn ana_rgo_omits_nsids() {
    let g = groups();
    let len = ana_log_len(&g, true) as usize;
    assert_eq!(len, 16 + 3 * 32);
    let mut b = vec![0u8; len];
    assert_eq!(encode_ana_log(1, &g, true, 0, &mut b), len);
    assert_eq!(&b[20..24], &0u32.to_le_bytes());
    assert_eq!(&b[48..52], &2u32.to_le_bytes());
    let (_, it) = parse_ana_log(&b).expect("header");
    assert_eq!(it.filter_map(Result::ok).count(), 3);
}

#[test]
fn ana_windows_match_whole_page() {
    let g = groups();
    for rgo in [false, true] {
        let len = ana_log_len(&g, rgo) as usize;
        let mut page = vec![0u8; len];
        encode_ana_log(3, &g, rgo, 0, &mut page);
        for offset in 0..len as u64 + 3 {
            for wlen in [1usize, 3, 4, 16, 33, 200] {
                let mut out = vec![0xEE; wlen];
                let n = encode_ana_log(3, &g, rgo, offset, &mut out);
                let start = (offset as usize).min(len);
                let want = &page[start..(start + wlen).min(len)];
                assert_eq!(&out[..n], want, "rgo {rgo} offset {offset} len {wlen}");
                assert!(out[n..].iter().all(|&x| x == 0xEE));
            }
        }
    }
}

#[test]
fn ana_parse_truncated() {
    let g = groups();
    let len = ana_log_len(&g, false) as usize;
    let mut b = vec![0u8; len];
    encode_ana_log(3, &g, false, 0, &mut b);
    let (_, mut it) = parse_ana_log(&b[..50]).expect("header");
    assert!(matches!(it.next(), Some(Err(SpecError::TooShort { .. }))));
    assert!(it.next().is_none());
    assert!(parse_ana_log(&b[..15]).is_err());
}
