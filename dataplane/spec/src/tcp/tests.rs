//! Byte-layout and receive-validation tests for NVMe/TCP PDUs. Offsets come
//! from the NVMe/TCP 1.0 PDU tables and match Linux include/linux/nvme-tcp.h.

use super::*;
use crate::nvme::{Cqe, Sqe};
use crate::status::Status;

fn ch(t: PduType, flags: u8, pdo: u8, plen: u32) -> CommonHeader {
    CommonHeader {
        pdu_type: t as u8,
        flags,
        hlen: expected_hlen(t),
        pdo,
        plen,
    }
}

const NO_LIMIT: u32 = u32::MAX;

#[test]
fn pdu_type_values_follow_figure_7() {
    for (v, t) in [
        (0x00, PduType::IcReq),
        (0x01, PduType::IcResp),
        (0x02, PduType::H2CTermReq),
        (0x03, PduType::C2HTermReq),
        (0x04, PduType::CapsuleCmd),
        (0x05, PduType::CapsuleResp),
        (0x06, PduType::H2CData),
        (0x07, PduType::C2HData),
        (0x09, PduType::R2T),
    ] {
        assert_eq!(PduType::try_from(v), Ok(t));
        assert_eq!(t as u8, v);
    }
    assert_eq!(
        PduType::try_from(0x08),
        Err(SpecError::UnknownPduType(0x08))
    );
    assert_eq!(
        PduType::try_from(0x0A),
        Err(SpecError::UnknownPduType(0x0A))
    );
}

#[test]
fn hlen_table() {
    assert_eq!(expected_hlen(PduType::IcReq), 128);
    assert_eq!(expected_hlen(PduType::IcResp), 128);
    assert_eq!(expected_hlen(PduType::H2CTermReq), 24);
    assert_eq!(expected_hlen(PduType::C2HTermReq), 24);
    assert_eq!(expected_hlen(PduType::CapsuleCmd), 72);
    assert_eq!(expected_hlen(PduType::CapsuleResp), 24);
    assert_eq!(expected_hlen(PduType::H2CData), 24);
    assert_eq!(expected_hlen(PduType::C2HData), 24);
    assert_eq!(expected_hlen(PduType::R2T), 24);
}

#[test]
fn common_header_layout() {
    let h = CommonHeader {
        pdu_type: 4,
        flags: 3,
        hlen: 72,
        pdo: 76,
        plen: 0x0102_0304,
    };
    let b = h.to_bytes();
    assert_eq!(b, [4, 3, 72, 76, 0x04, 0x03, 0x02, 0x01]);
    assert_eq!(CommonHeader::parse(&b), h);
    let mut out = [0xEE; 10];
    h.encode(&mut out);
    assert_eq!(&out[..8], &b);
    assert_eq!(out[8], 0xEE);
}

#[test]
fn common_header_lengths() {
    // 72 + 4 header digest, pdo 128 (pda 31), 512 data, 4 ddgst.
    let h = ch(
        PduType::CapsuleCmd,
        flags::HDGSTF | flags::DDGSTF,
        128,
        128 + 512 + 4,
    );
    assert_eq!(h.header_end(), 76);
    assert!(h.has_data());
    assert_eq!(h.padding_len(), 52);
    assert_eq!(h.data_len(), 512);
    let none = ch(PduType::CapsuleCmd, 0, 0, 72);
    assert!(!none.has_data());
    assert_eq!(none.data_len(), 0);
    assert_eq!(none.padding_len(), 0);
}

#[test]
fn pdu_flags_values() {
    assert_eq!(flags::HDGSTF, 1 << 0);
    assert_eq!(flags::DDGSTF, 1 << 1);
    assert_eq!(flags::DATA_LAST, 1 << 2);
    assert_eq!(flags::DATA_SUCCESS, 1 << 3);
}

#[test]
fn icreq_layout_follows_figure_11() {
    let r = IcReq {
        pfv: 0,
        hpda: 3,
        hdgst: true,
        ddgst: true,
        maxr2t: 0x0102_0304,
    };
    let b = r.encode();
    assert_eq!(&b[..8], &[0x00, 0, 128, 0, 128, 0, 0, 0]);
    assert_eq!(&b[8..10], &[0, 0]);
    assert_eq!(b[10], 3);
    assert_eq!(b[11], 0x03);
    assert_eq!(&b[12..16], &[4, 3, 2, 1]);
    assert!(b[16..].iter().all(|&x| x == 0));
    assert_eq!(IcReq::parse(&b), r);
    let only_d = IcReq {
        ddgst: true,
        ..IcReq::default()
    };
    assert_eq!(only_d.encode()[11], 0x02);
}

#[test]
fn icreq_check() {
    assert_eq!(IcReq::default().check(), Ok(()));
    assert_eq!(
        IcReq {
            pfv: 1,
            ..IcReq::default()
        }
        .check(),
        Err(TermError {
            fes: fes::UNSUPPORTED_PARAMETER,
            fei: 8
        })
    );
    assert_eq!(
        IcReq {
            hpda: 32,
            ..IcReq::default()
        }
        .check(),
        Err(TermError {
            fes: fes::UNSUPPORTED_PARAMETER,
            fei: 10
        })
    );
}

#[test]
fn icresp_layout_follows_figure_12() {
    let r = IcResp {
        pfv: 0,
        cpda: 0,
        hdgst: false,
        ddgst: true,
        maxh2cdata: 131_072,
    };
    let b = r.encode();
    assert_eq!(&b[..8], &[0x01, 0, 128, 0, 128, 0, 0, 0]);
    assert_eq!(b[10], 0);
    assert_eq!(b[11], 0x02);
    assert_eq!(&b[12..16], &131_072u32.to_le_bytes());
    assert_eq!(IcResp::parse(&b), r);
}

#[test]
fn term_req_layout_follows_figure_14() {
    let offending = [0xAB; 200];
    let mut out = [0u8; 160];
    let n = encode_term_req(
        PduType::C2HTermReq,
        fes::INVALID_HEADER_FIELD,
        2,
        &offending,
        &mut out,
    );
    assert_eq!(n, 152);
    assert_eq!(&out[..8], &[0x03, 0, 24, 0, 152, 0, 0, 0]);
    assert_eq!(&out[8..10], &[1, 0]);
    assert_eq!(&out[10..14], &[2, 0, 0, 0]);
    assert!(out[14..24].iter().all(|&x| x == 0));
    assert!(out[24..152].iter().all(|&x| x == 0xAB));
    assert_eq!(TermReq::parse(&out[..n]), TermReq { fes: 1, fei: 2 });

    let n = encode_term_req(
        PduType::H2CTermReq,
        fes::PDU_SEQUENCE_ERROR,
        0,
        &[1, 2, 3],
        &mut out,
    );
    assert_eq!(n, 27);
    assert_eq!(out[0], 0x02);
    assert_eq!(&out[4..8], &27u32.to_le_bytes());
    assert_eq!(&out[24..27], &[1, 2, 3]);
    // A short slice parses without panicking.
    assert_eq!(TermReq::parse(&out[..9]).fei, 0);
}

#[test]
fn capsule_cmd_without_data() {
    let sqe = Sqe {
        opcode: 0x06,
        cid: 0x1234,
        cdw10: 1,
        ..Sqe::default()
    };
    let mut out = [0u8; MAX_HEADER_BUF];
    let n = encode_capsule_cmd_header(&sqe, false, true, 0, 0, &mut out);
    assert_eq!(n, 72);
    // DDGSTF stays clear without data; PDO 0.
    assert_eq!(&out[..8], &[0x04, 0, 72, 0, 72, 0, 0, 0]);
    assert_eq!(&out[8..72], &sqe.to_bytes());
    let hdr: [u8; 72] = out[..72].try_into().expect("72 bytes");
    assert_eq!(capsule_cmd_sqe(&hdr), sqe);

    let n = encode_capsule_cmd_header(&sqe, true, false, 0, 0, &mut out);
    assert_eq!(n, 76);
    assert_eq!(&out[..8], &[0x04, flags::HDGSTF, 72, 0, 76, 0, 0, 0]);
    assert_eq!(&out[72..76], &header_digest(&out[..72]));
}

#[test]
fn capsule_cmd_with_data_and_padding() {
    let sqe = Sqe::default();
    let mut out = [0xFF; MAX_HEADER_BUF];
    // cpda 0: PDO = 72 + 4 = 76.
    let n = encode_capsule_cmd_header(&sqe, true, true, 4096, 0, &mut out);
    assert_eq!(n, 76);
    let h = CommonHeader::parse(&out[..8].try_into().expect("8"));
    assert_eq!(h.flags, flags::HDGSTF | flags::DDGSTF);
    assert_eq!(h.pdo, 76);
    assert_eq!(h.plen, 76 + 4096 + 4);
    assert_eq!(h.data_len(), 4096);

    // cpda 31 (128-byte alignment): PDO 128, zero padding 76..128.
    let mut out = [0xFF; MAX_HEADER_BUF];
    let n = encode_capsule_cmd_header(&sqe, true, false, 100, 31, &mut out);
    assert_eq!(n, 128);
    let h = CommonHeader::parse(&out[..8].try_into().expect("8"));
    assert_eq!(h.pdo, 128);
    assert_eq!(h.plen, 228);
    assert_eq!(&out[72..76], &header_digest(&out[..72]));
    assert!(out[76..128].iter().all(|&x| x == 0));
    assert_eq!(out[128], 0xFF);
    assert_eq!(check_pdo_alignment(&h, 31), Ok(()));
    assert_eq!(
        validate_header(&h, true, false, NO_LIMIT, NO_LIMIT),
        Ok(PduType::CapsuleCmd)
    );

    // cpda 1 (8-byte alignment), no header digest: 72 is already aligned.
    let n = encode_capsule_cmd_header(&sqe, false, false, 8, 1, &mut out);
    assert_eq!(n, 72);
    assert_eq!(out[3], 72);
}

#[test]
fn capsule_resp_layout() {
    let cqe = Cqe {
        dw0: 7,
        sqhd: 3,
        cid: 0x55,
        status: Status::generic(2),
        ..Cqe::default()
    };
    let mut out = [0u8; 28];
    assert_eq!(encode_capsule_resp(&cqe, false, &mut out), 24);
    assert_eq!(&out[..8], &[0x05, 0, 24, 0, 24, 0, 0, 0]);
    assert_eq!(&out[8..24], &cqe.to_bytes());
    let hdr: [u8; 24] = out[..24].try_into().expect("24");
    assert_eq!(capsule_resp_cqe(&hdr), cqe);
    assert_eq!(encode_capsule_resp(&cqe, true, &mut out), 28);
    assert_eq!(&out[..8], &[0x05, flags::HDGSTF, 24, 0, 28, 0, 0, 0]);
    assert_eq!(&out[24..28], &header_digest(&out[..24]));
    let h = CommonHeader::parse(&out[..8].try_into().expect("8"));
    assert_eq!(
        validate_header_for(Role::Host, &h, true, true, 0, 0),
        Ok(PduType::CapsuleResp)
    );
}

#[test]
fn data_header_layout_follows_figure_18_20() {
    let d = DataHeader {
        cccid: 0x0102,
        ttag: 0x0304,
        datao: 0x0506_0708,
        datal: 8192,
    };
    let mut out = [0xFF; MAX_HEADER_BUF];
    let n = encode_c2h_data_header(&d, true, true, false, false, 0, &mut out);
    assert_eq!(n, 24);
    assert_eq!(
        &out[..8],
        &[
            0x07,
            flags::DATA_LAST | flags::DATA_SUCCESS,
            24,
            24,
            0x18,
            0x20,
            0,
            0
        ]
    );
    assert_eq!(&out[8..10], &[0x02, 0x01]);
    assert_eq!(&out[10..12], &[0x04, 0x03]);
    assert_eq!(&out[12..16], &[0x08, 0x07, 0x06, 0x05]);
    assert_eq!(&out[16..20], &8192u32.to_le_bytes());
    assert!(out[20..24].iter().all(|&x| x == 0));
    assert_eq!(DataHeader::parse(&out[..24]), d);

    // success implies last.
    encode_c2h_data_header(&d, false, true, false, false, 0, &mut out);
    assert_eq!(out[1], flags::DATA_LAST | flags::DATA_SUCCESS);
    encode_c2h_data_header(&d, false, false, false, false, 0, &mut out);
    assert_eq!(out[1], 0);

    // With both digests and hpda 3 (16-byte alignment): 24 + 4 -> PDO 32.
    let n = encode_c2h_data_header(&d, true, false, true, true, 3, &mut out);
    assert_eq!(n, 32);
    let h = CommonHeader::parse(&out[..8].try_into().expect("8"));
    assert_eq!(h.flags, flags::HDGSTF | flags::DDGSTF | flags::DATA_LAST);
    assert_eq!(h.pdo, 32);
    assert_eq!(h.plen, 32 + 8192 + 4);
    assert_eq!(&out[24..28], &header_digest(&out[..24]));
    assert!(out[28..32].iter().all(|&x| x == 0));
    assert_eq!(h.data_len(), 8192);
    assert_eq!(DataHeader::parse(&out[..24]).check_len(&h), Ok(()));
    assert_eq!(check_pdo_alignment(&h, 3), Ok(()));
    assert_eq!(
        validate_header_for(Role::Host, &h, true, true, 0, 0),
        Ok(PduType::C2HData)
    );
}

#[test]
fn h2c_data_header() {
    let d = DataHeader {
        cccid: 9,
        ttag: 2,
        datao: 4096,
        datal: 4096,
    };
    let mut out = [0u8; MAX_HEADER_BUF];
    let n = encode_h2c_data_header(&d, true, false, true, 0, &mut out);
    assert_eq!(n, 24);
    assert_eq!(
        &out[..8],
        &[
            0x06,
            flags::DDGSTF | flags::DATA_LAST,
            24,
            24,
            0x1C,
            0x10,
            0,
            0
        ]
    );
    let h = CommonHeader::parse(&out[..8].try_into().expect("8"));
    assert_eq!(h.plen, 24 + 4096 + 4);
    assert_eq!(
        validate_header(&h, false, true, 4096, 0),
        Ok(PduType::H2CData)
    );
    assert_eq!(
        validate_header(&h, false, true, 4092, 0),
        Err(TermError {
            fes: fes::DATA_TRANSFER_LIMIT_EXCEEDED,
            fei: 0
        })
    );
    let parsed = DataHeader::parse(&out[..24]);
    assert_eq!(parsed, d);
    assert_eq!(parsed.check_len(&h), Ok(()));
    let wrong = DataHeader { datal: 4095, ..d };
    assert_eq!(wrong.check_len(&h), Err(TermError::invalid_field(16)));
}

#[test]
fn r2t_layout_follows_figure_22() {
    let r = R2t {
        cccid: 0x0A0B,
        ttag: 0x0C0D,
        r2to: 0x1000,
        r2tl: 0x2_0000,
    };
    let mut out = [0xFF; 28];
    assert_eq!(encode_r2t(&r, false, &mut out), 24);
    assert_eq!(&out[..8], &[0x09, 0, 24, 0, 24, 0, 0, 0]);
    assert_eq!(&out[8..10], &[0x0B, 0x0A]);
    assert_eq!(&out[10..12], &[0x0D, 0x0C]);
    assert_eq!(&out[12..16], &0x1000u32.to_le_bytes());
    assert_eq!(&out[16..20], &0x2_0000u32.to_le_bytes());
    assert!(out[20..24].iter().all(|&x| x == 0));
    assert_eq!(R2t::parse(&out[..24]), r);
    assert_eq!(encode_r2t(&r, true, &mut out), 28);
    assert_eq!(out[1], flags::HDGSTF);
    assert_eq!(&out[4..8], &28u32.to_le_bytes());
    assert_eq!(&out[24..28], &header_digest(&out[..24]));
}

#[test]
fn pdo_rounding() {
    assert_eq!(pda_alignment(0), 4);
    assert_eq!(pda_alignment(31), 128);
    assert_eq!(pda_alignment(200), 128);
    assert_eq!(data_offset(24, false, 0), 24);
    assert_eq!(data_offset(24, true, 0), 28);
    assert_eq!(data_offset(24, true, 1), 32);
    assert_eq!(data_offset(72, true, 31), 128);
    assert_eq!(data_offset(72, false, 15), 128);
}

#[test]
fn pdo_alignment_check() {
    let h = ch(PduType::H2CData, 0, 28, 28 + 16);
    assert_eq!(check_pdo_alignment(&h, 0), Ok(()));
    assert_eq!(check_pdo_alignment(&h, 1), Err(TermError::invalid_field(3)));
}

// ---- receive validation ----

#[test]
fn controller_accepts_host_pdus() {
    let ok = |h: CommonHeader, hd, dd| validate_header(&h, hd, dd, 8192, 8192);
    assert_eq!(
        ok(ch(PduType::IcReq, 0, 0, 128), false, false),
        Ok(PduType::IcReq)
    );
    assert_eq!(
        ok(ch(PduType::H2CTermReq, 0, 0, 24), true, true),
        Ok(PduType::H2CTermReq)
    );
    assert_eq!(
        ok(ch(PduType::H2CTermReq, 0, 0, 152), false, false),
        Ok(PduType::H2CTermReq)
    );
    assert_eq!(
        ok(ch(PduType::CapsuleCmd, 0, 0, 72), false, false),
        Ok(PduType::CapsuleCmd)
    );
    assert_eq!(
        ok(ch(PduType::CapsuleCmd, 0, 72, 72 + 8192), false, false),
        Ok(PduType::CapsuleCmd)
    );
    assert_eq!(
        ok(
            ch(
                PduType::H2CData,
                flags::HDGSTF | flags::DDGSTF,
                28,
                28 + 100 + 4
            ),
            true,
            true
        ),
        Ok(PduType::H2CData)
    );
}

#[test]
fn controller_rejects_controller_pdus_and_unknown_types() {
    for t in [
        PduType::IcResp,
        PduType::C2HTermReq,
        PduType::CapsuleResp,
        PduType::C2HData,
        PduType::R2T,
    ] {
        let h = ch(t, 0, 0, u32::from(expected_hlen(t)));
        assert_eq!(
            validate_header(&h, false, false, NO_LIMIT, NO_LIMIT),
            Err(TermError::invalid_field(0)),
            "{t:?}"
        );
    }
    let mut h = ch(PduType::R2T, 0, 0, 24);
    h.pdu_type = 0x08;
    assert_eq!(
        validate_header(&h, false, false, NO_LIMIT, NO_LIMIT),
        Err(TermError::invalid_field(0))
    );
    h.pdu_type = 0xFF;
    assert_eq!(
        validate_header_for(Role::Host, &h, false, false, 0, 0),
        Err(TermError::invalid_field(0))
    );
}

#[test]
fn host_rejects_host_pdus() {
    for t in [
        PduType::IcReq,
        PduType::H2CTermReq,
        PduType::CapsuleCmd,
        PduType::H2CData,
    ] {
        let h = ch(t, 0, 0, u32::from(expected_hlen(t)));
        assert_eq!(
            validate_header_for(Role::Host, &h, false, false, 0, 0),
            Err(TermError::invalid_field(0)),
            "{t:?}"
        );
    }
    assert_eq!(
        validate_header_for(
            Role::Host,
            &ch(PduType::IcResp, 0, 0, 128),
            false,
            false,
            0,
            0
        ),
        Ok(PduType::IcResp)
    );
    assert_eq!(
        validate_header_for(Role::Host, &ch(PduType::R2T, 0, 0, 24), false, false, 0, 0),
        Ok(PduType::R2T)
    );
}

#[test]
fn wrong_hlen() {
    let mut h = ch(PduType::CapsuleCmd, 0, 0, 72);
    h.hlen = 24;
    assert_eq!(
        validate_header(&h, false, false, NO_LIMIT, NO_LIMIT),
        Err(TermError::invalid_field(2))
    );
    let mut ic = ch(PduType::IcReq, 0, 0, 128);
    ic.hlen = 127;
    assert_eq!(
        validate_header(&ic, false, false, NO_LIMIT, NO_LIMIT),
        Err(TermError::invalid_field(2))
    );
}

#[test]
fn ic_and_term_plen() {
    let v = |h: CommonHeader| validate_header(&h, false, false, NO_LIMIT, NO_LIMIT);
    assert_eq!(
        v(ch(PduType::IcReq, 0, 0, 129)),
        Err(TermError::invalid_field(4))
    );
    assert_eq!(
        v(ch(PduType::H2CTermReq, 0, 0, 23)),
        Err(TermError::invalid_field(4))
    );
    assert_eq!(
        v(ch(PduType::H2CTermReq, 0, 0, 153)),
        Err(TermError::invalid_field(4))
    );
}

#[test]
fn digest_flags_must_match_negotiation() {
    let v = |h: CommonHeader, hd, dd| validate_header(&h, hd, dd, NO_LIMIT, NO_LIMIT);
    // Header digest negotiated but HDGSTF clear, and the reverse.
    assert_eq!(
        v(ch(PduType::CapsuleCmd, 0, 0, 76), true, false),
        Err(TermError::invalid_field(1))
    );
    assert_eq!(
        v(ch(PduType::CapsuleCmd, flags::HDGSTF, 0, 76), false, false),
        Err(TermError::invalid_field(1))
    );
    // Data digest negotiated, data present, DDGSTF clear.
    assert_eq!(
        v(ch(PduType::CapsuleCmd, 0, 72, 72 + 16), false, true),
        Err(TermError::invalid_field(1))
    );
    // DDGSTF set though not negotiated.
    assert_eq!(
        v(
            ch(PduType::CapsuleCmd, flags::DDGSTF, 72, 72 + 16 + 4),
            false,
            false
        ),
        Err(TermError::invalid_field(1))
    );
    // DDGSTF set on a PDU without data.
    assert_eq!(
        v(ch(PduType::CapsuleCmd, flags::DDGSTF, 0, 72), false, true),
        Err(TermError::invalid_field(1))
    );
    // No data, data digest negotiated, DDGSTF clear: fine.
    assert_eq!(
        v(ch(PduType::CapsuleCmd, 0, 0, 72), false, true),
        Ok(PduType::CapsuleCmd)
    );
}

#[test]
fn plen_and_pdo_consistency() {
    let v = |h: CommonHeader| validate_header(&h, true, false, NO_LIMIT, NO_LIMIT);
    let hd = flags::HDGSTF;
    // PLEN shorter than header + digest.
    assert_eq!(
        v(ch(PduType::CapsuleCmd, hd, 0, 72)),
        Err(TermError::invalid_field(4))
    );
    // PDO inside the header digest.
    assert_eq!(
        v(ch(PduType::CapsuleCmd, hd, 72, 200)),
        Err(TermError::invalid_field(3))
    );
    // PDO at or past PLEN.
    assert_eq!(
        v(ch(PduType::CapsuleCmd, hd, 200, 200)),
        Err(TermError::invalid_field(3))
    );
    assert_eq!(
        v(ch(PduType::CapsuleCmd, hd, 200, 150)),
        Err(TermError::invalid_field(3))
    );
    // H2CData without data.
    assert_eq!(
        v(ch(PduType::H2CData, hd, 0, 28)),
        Err(TermError::invalid_field(4))
    );
    // Data digest leaves no data byte.
    let h = ch(PduType::H2CData, hd | flags::DDGSTF, 28, 32);
    assert_eq!(
        validate_header(&h, true, true, NO_LIMIT, NO_LIMIT),
        Err(TermError::invalid_field(3))
    );
    // Host side: response capsule and R2T with trailing data.
    assert_eq!(
        validate_header_for(
            Role::Host,
            &ch(PduType::CapsuleResp, 0, 0, 30),
            false,
            false,
            0,
            0
        ),
        Err(TermError::invalid_field(4))
    );
    assert_eq!(
        validate_header_for(Role::Host, &ch(PduType::R2T, 0, 0, 25), false, false, 0, 0),
        Err(TermError::invalid_field(4))
    );
    assert_eq!(
        validate_header_for(
            Role::Host,
            &ch(PduType::C2HData, 0, 0, 24),
            false,
            false,
            0,
            0
        ),
        Err(TermError::invalid_field(4))
    );
}

#[test]
fn in_capsule_limit() {
    let h = ch(PduType::CapsuleCmd, 0, 72, 72 + 8193);
    assert_eq!(
        validate_header(&h, false, false, NO_LIMIT, 8192),
        Err(TermError::invalid_field(4))
    );
    assert_eq!(
        validate_header(&h, false, false, NO_LIMIT, 8193),
        Ok(PduType::CapsuleCmd)
    );
    // The host side ignores controller limits.
    let c2h = ch(PduType::C2HData, 0, 24, 24 + 1_000_000);
    assert_eq!(
        validate_header_for(Role::Host, &c2h, false, false, 0, 0),
        Ok(PduType::C2HData)
    );
}

#[test]
fn sender_roles() {
    assert_eq!(PduType::IcReq.sender(), Role::Host);
    assert_eq!(PduType::H2CData.sender(), Role::Host);
    assert_eq!(PduType::R2T.sender(), Role::Controller);
    assert_eq!(PduType::C2HTermReq.sender(), Role::Controller);
    assert!(!PduType::IcReq.digests_apply());
    assert!(!PduType::H2CTermReq.digests_apply());
    assert!(PduType::CapsuleCmd.digests_apply());
}

/// A small deterministic generator so the "never panics" tests need no
/// extra crate.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn validation_never_panics_and_accepted_headers_are_consistent() {
    let mut rng = Lcg(0x5EED);
    let mut accepted = 0;
    for _ in 0..200_000 {
        let r = rng.next();
        let t = (r % 11) as u8;
        let hlen = match r % 5 {
            0 => (rng.next() & 0xFF) as u8,
            _ => PduType::try_from(t).map(expected_hlen).unwrap_or(24),
        };
        let h = CommonHeader {
            pdu_type: t,
            flags: (rng.next() & 0x0F) as u8,
            hlen,
            pdo: (rng.next() & 0xFF) as u8,
            plen: match rng.next() % 3 {
                0 => rng.next() as u32,
                _ => (rng.next() % 300) as u32,
            },
        };
        let hd = rng.next() & 1 == 1;
        let dd = rng.next() & 1 == 1;
        for role in [Role::Controller, Role::Host] {
            let res = validate_header_for(role, &h, hd, dd, 8192, 8192);
            let _ = (h.data_len(), h.padding_len(), h.has_data());
            if let Ok(t) = res {
                accepted += 1;
                assert_ne!(t.sender(), role);
                assert_eq!(h.hlen, expected_hlen(t));
                if t.digests_apply() {
                    let end = h.header_end();
                    if h.has_data() {
                        assert!(u32::from(h.pdo) >= end);
                        assert_eq!(u32::from(h.pdo) + h.data_len() + h.ddgst_len(), h.plen);
                        assert!(h.data_len() > 0);
                    } else {
                        assert_eq!(h.plen, end);
                    }
                }
            }
        }
    }
    assert!(accepted > 1000, "only {accepted} accepted");
}

#[test]
fn encoded_headers_pass_validation() {
    let mut out = [0u8; MAX_HEADER_BUF];
    for hd in [false, true] {
        for dd in [false, true] {
            for pda in [0u8, 1, 7, 31] {
                for len in [0u32, 1, 4096] {
                    let n = encode_capsule_cmd_header(&Sqe::default(), hd, dd, len, pda, &mut out);
                    let h = CommonHeader::parse(&out[..8].try_into().expect("8"));
                    assert_eq!(
                        validate_header(&h, hd, dd, 0, 4096),
                        Ok(PduType::CapsuleCmd)
                    );
                    assert_eq!(check_pdo_alignment(&h, pda), Ok(()));
                    assert_eq!(h.data_len(), len);
                    assert_eq!(n as u32 + len + if dd && len > 0 { 4 } else { 0 }, h.plen);
                    if len == 0 {
                        continue;
                    }
                    let d = DataHeader {
                        datal: len,
                        ..DataHeader::default()
                    };
                    let n = encode_h2c_data_header(&d, true, hd, dd, pda, &mut out);
                    let h = CommonHeader::parse(&out[..8].try_into().expect("8"));
                    assert_eq!(validate_header(&h, hd, dd, 4096, 0), Ok(PduType::H2CData));
                    assert_eq!(usize::from(h.pdo), n);
                    assert_eq!(DataHeader::parse(&out[..24]).check_len(&h), Ok(()));
                    let n = encode_c2h_data_header(&d, true, false, hd, dd, pda, &mut out);
                    let h = CommonHeader::parse(&out[..8].try_into().expect("8"));
                    assert_eq!(
                        validate_header_for(Role::Host, &h, hd, dd, 0, 0),
                        Ok(PduType::C2HData)
                    );
                    assert_eq!(usize::from(h.pdo), n);
                    assert_eq!(check_pdo_alignment(&h, pda), Ok(()));
                }
            }
        }
    }
}
