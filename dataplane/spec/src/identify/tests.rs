//! Identify layouts against the spec tables and Linux nvme_id_ctrl/nvme_id_ns.

use super::*;
use crate::nvme::NVME_VERSION_1_4;

fn sample_ctrl() -> IdentifyController {
    IdentifyController {
        vid: 0x1B36,
        ssvid: 0x1AF4,
        sn: pad_ascii("SN123"),
        mn: pad_ascii("LightPool"),
        fr: pad_ascii("0.1"),
        rab: 6,
        ieee: [0x01, 0x02, 0x03],
        cmic: cmic::MULTI_PORT | cmic::MULTI_CONTROLLER | cmic::ANA_REPORTING,
        mdts: 5,
        cntlid: 0x0102,
        ver: NVME_VERSION_1_4,
        oaes: 0x8000_0900,
        ctratt: ctratt::HOST_ID_128_BIT,
        cntrltype: cntrltype::IO,
        oacs: 0x0203,
        acl: 3,
        aerl: 4,
        frmw: 0x05,
        lpa: 0x06,
        elpe: 0x07,
        kas: 0x0809,
        sqes: 0x66,
        cqes: 0x44,
        maxcmd: 0x0A0B,
        nn: 0x0C0D_0E0F,
        oncs: 0x1011,
        fuses: 0x1213,
        fna: 0x14,
        vwc: 0x15,
        awun: 0x1617,
        awupf: 0x1819,
        sgls: 0x1A1B_1C1D,
        anatt: 0x1E,
        anacap: 0x1F,
        anagrpmax: 0x2021_2223,
        nanagrpid: 0x2425_2627,
        mnan: 0x2829_2A2B,
        subnqn: nqn_bytes("nqn.2024-01.io.lightpool:vol1"),
        ioccsz: 0x2C2D_2E2F,
        iorcsz: 0x3031_3233,
        icdoff: 0x3435,
        fcatt: 0x36,
        msdbd: 0x37,
        ofcs: 0x3839,
    }
}

#[test]
fn controller_offsets_follow_figure_275() {
    let c = sample_ctrl();
    let mut b = [0xFFu8; 4096];
    c.encode(&mut b);
    assert_eq!(&b[0..2], &[0x36, 0x1B]);
    assert_eq!(&b[2..4], &[0xF4, 0x1A]);
    assert_eq!(&b[4..24], b"SN123               ");
    assert_eq!(&b[24..33], b"LightPool");
    assert_eq!(b[63], b' ');
    assert_eq!(&b[64..72], b"0.1     ");
    assert_eq!(b[72], 6);
    assert_eq!(&b[73..76], &[1, 2, 3]);
    assert_eq!(b[76], 0x0B);
    assert_eq!(b[77], 5);
    assert_eq!(&b[78..80], &[0x02, 0x01]);
    assert_eq!(&b[80..84], &[0x00, 0x04, 0x01, 0x00]);
    assert_eq!(&b[92..96], &0x8000_0900u32.to_le_bytes());
    assert_eq!(&b[96..100], &1u32.to_le_bytes());
    assert_eq!(b[111], 1);
    assert_eq!(&b[256..258], &[0x03, 0x02]);
    assert_eq!(b[258], 3);
    assert_eq!(b[259], 4);
    assert_eq!(b[260], 5);
    assert_eq!(b[261], 6);
    assert_eq!(b[262], 7);
    assert_eq!(&b[320..322], &[0x09, 0x08]);
    // ANATT is byte 342 (Linux: rsvd338[4] then anatt), ANACAP 343,
    // ANAGRPMAX 347:344, NANAGRPID 351:348.
    assert_eq!(b[342], 0x1E);
    assert_eq!(b[343], 0x1F);
    assert_eq!(&b[344..348], &[0x23, 0x22, 0x21, 0x20]);
    assert_eq!(&b[348..352], &[0x27, 0x26, 0x25, 0x24]);
    assert_eq!(b[512], 0x66);
    assert_eq!(b[513], 0x44);
    assert_eq!(&b[514..516], &[0x0B, 0x0A]);
    assert_eq!(&b[516..520], &[0x0F, 0x0E, 0x0D, 0x0C]);
    assert_eq!(&b[520..522], &[0x11, 0x10]);
    assert_eq!(&b[522..524], &[0x13, 0x12]);
    assert_eq!(b[524], 0x14);
    assert_eq!(b[525], 0x15);
    assert_eq!(&b[526..528], &[0x17, 0x16]);
    assert_eq!(&b[528..530], &[0x19, 0x18]);
    assert_eq!(&b[536..540], &[0x1D, 0x1C, 0x1B, 0x1A]);
    assert_eq!(&b[540..544], &[0x2B, 0x2A, 0x29, 0x28]);
    assert_eq!(&b[768..797], b"nqn.2024-01.io.lightpool:vol1");
    assert_eq!(b[797], 0);
    assert_eq!(&b[1792..1796], &[0x2F, 0x2E, 0x2D, 0x2C]);
    assert_eq!(&b[1796..1800], &[0x33, 0x32, 0x31, 0x30]);
    assert_eq!(&b[1800..1802], &[0x35, 0x34]);
    assert_eq!(b[1802], 0x36);
    assert_eq!(b[1803], 0x37);
    assert_eq!(&b[1804..1806], &[0x39, 0x38]);
    // Unmodelled bytes are zero (encode clears the buffer).
    assert!(b[100..111].iter().all(|&x| x == 0));
    assert!(b[1806..].iter().all(|&x| x == 0));
    assert_eq!(IdentifyController::parse(&b), c);
    assert_eq!(
        IdentifyController::parse(&b).subnqn_str(),
        "nqn.2024-01.io.lightpool:vol1"
    );
}

#[test]
fn default_controller_strings_are_spaces() {
    let mut b = [0u8; 4096];
    IdentifyController::default().encode(&mut b);
    assert!(b[4..72].iter().all(|&x| x == b' '));
    assert_eq!(ascii_trimmed(&b[4..24]), "");
}

#[test]
fn pad_ascii_rules() {
    let f: [u8; 8] = pad_ascii("ab");
    assert_eq!(&f, b"ab      ");
    let f: [u8; 4] = pad_ascii("abcdefg");
    assert_eq!(&f, b"abcd");
    let f: [u8; 4] = pad_ascii("é\tz");
    assert_eq!(&f, b"??z ");
    assert_eq!(ascii_trimmed(b"SN1   "), "SN1");
}

#[test]
fn nqn_bytes_is_nul_padded() {
    let b = nqn_bytes("nqn.x");
    assert_eq!(&b[..5], b"nqn.x");
    assert!(b[5..].iter().all(|&x| x == 0));
}

#[test]
fn namespace_offsets_follow_figure_97() {
    let ns = IdentifyNamespace {
        nsze: 0x0102_0304_0506_0708,
        ncap: 0x1112_1314_1516_1718,
        nuse: 0x2122_2324_2526_2728,
        nsfeat: nsfeat::THIN_PROVISIONING,
        nlbaf: 0,
        flbas: 0,
        dlfeat: dlfeat::READ_ZEROES | dlfeat::WRITE_ZEROES_DEALLOCATE,
        nmic: nmic::SHARED,
        anagrpid: 0x3132_3334,
        nsattr: 1,
        nguid: [0xA5; 16],
        eui64: [0x5A; 8],
        lbads: 12,
    };
    let mut b = [0xFFu8; 4096];
    ns.encode(&mut b);
    assert_eq!(&b[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(&b[8..16], &[0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11]);
    assert_eq!(
        &b[16..24],
        &[0x28, 0x27, 0x26, 0x25, 0x24, 0x23, 0x22, 0x21]
    );
    assert_eq!(b[24], 1);
    assert_eq!(b[25], 0);
    assert_eq!(b[26], 0);
    assert_eq!(b[30], 1);
    assert_eq!(b[33], 0x09);
    assert_eq!(&b[92..96], &[0x34, 0x33, 0x32, 0x31]);
    assert_eq!(b[99], 1);
    assert_eq!(&b[104..120], &[0xA5; 16]);
    assert_eq!(&b[120..128], &[0x5A; 8]);
    assert_eq!(&b[128..130], &[0, 0]);
    assert_eq!(b[130], 12);
    assert_eq!(b[131], 0);
    assert!(b[132..].iter().all(|&x| x == 0));
    let p = IdentifyNamespace::parse(&b);
    assert_eq!(p, ns);
    assert_eq!(p.block_size(), 4096);
    assert_eq!(IdentifyNamespace::default().block_size(), 0);
}

#[test]
fn identify_command_fields() {
    let sqe = Sqe {
        opcode: 0x06,
        nsid: 0,
        cdw10: (0x0005 << 16) | u32::from(cns::ACTIVE_NS_LIST),
        cdw11: (u32::from(csi::ZONED) << 24) | 0x0007,
        ..Sqe::default()
    };
    let c = IdentifyCommand::parse(&sqe);
    assert_eq!(c.cns, cns::ACTIVE_NS_LIST);
    assert_eq!(c.cntid, 5);
    assert_eq!(c.cnssid, 7);
    assert_eq!(c.csi, csi::ZONED);
    assert_eq!(c.to_sqe(0), sqe);
}

#[test]
fn active_ns_list() {
    let mut b = [0xFFu8; 4096];
    encode_active_ns_list([1u32, 2, 5, 9].into_iter(), 2, &mut b);
    assert_eq!(&b[0..4], &5u32.to_le_bytes());
    assert_eq!(&b[4..8], &9u32.to_le_bytes());
    assert!(b[8..].iter().all(|&x| x == 0));
    assert_eq!(parse_ns_list(&b).collect::<Vec<_>>(), vec![5, 9]);

    // Out-of-order and duplicate entries are dropped.
    encode_active_ns_list([3u32, 3, 1, 4].into_iter(), 0, &mut b);
    assert_eq!(parse_ns_list(&b).collect::<Vec<_>>(), vec![3, 4]);

    // At most 1024 entries.
    encode_active_ns_list(1u32..=2000, 0, &mut b);
    let v: Vec<u32> = parse_ns_list(&b).collect();
    assert_eq!(v.len(), 1024);
    assert_eq!(v[1023], 1024);
}

#[test]
fn ns_id_descriptors_layout_follows_figure_276() {
    let descs = [
        NsIdDescriptor::Eui64([1; 8]),
        NsIdDescriptor::Nguid([2; 16]),
        NsIdDescriptor::Uuid([3; 16]),
        NsIdDescriptor::Csi(csi::NVM),
    ];
    let mut b = [0xFFu8; 4096];
    encode_ns_id_descriptors(&descs, &mut b);
    assert_eq!(&b[0..4], &[1, 8, 0, 0]);
    assert_eq!(&b[4..12], &[1; 8]);
    assert_eq!(&b[12..16], &[2, 16, 0, 0]);
    assert_eq!(&b[16..32], &[2; 16]);
    assert_eq!(&b[32..36], &[3, 16, 0, 0]);
    assert_eq!(&b[36..52], &[3; 16]);
    assert_eq!(&b[52..56], &[4, 1, 0, 0]);
    assert_eq!(b[56], 0);
    assert!(b[57..].iter().all(|&x| x == 0));
    assert_eq!(parse_ns_id_descriptors(&b).collect::<Vec<_>>(), descs);
}

#[test]
fn ns_id_descriptor_parse_skips_unknown_and_stops_at_end() {
    let mut b = [0u8; 4096];
    // Unknown type 0x7F with 2 bytes, then a UUID.
    b[0] = 0x7F;
    b[1] = 2;
    b[6] = nidt::UUID;
    b[7] = 16;
    b[10..26].copy_from_slice(&[9; 16]);
    assert_eq!(
        parse_ns_id_descriptors(&b).collect::<Vec<_>>(),
        vec![NsIdDescriptor::Uuid([9; 16])]
    );
    // A descriptor running past the end stops the walk.
    let mut b = [0u8; 4096];
    b[4088] = nidt::NGUID;
    b[4089] = 16;
    let mut it = NsIdDescriptorIter { b: &b, pos: 4088 };
    assert_eq!(it.next(), None);
}
