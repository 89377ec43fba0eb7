//! The NVMe/TCP PDU parsers of `lightpool_spec::tcp` (and the SQE/CQE and fabrics
//! decoders a capsule carries), fed one arbitrary PDU.
//!
//! Invariants beyond "no panic":
//! - the common header decodes and encodes back to the same 8 bytes;
//! - a header `validate_header_for` accepts (either end, any digest settings) has a
//!   consistent layout: header, digest, padding, data and data digest add up to PLEN,
//!   PDO lies within it, data only where the type allows it, and the in-capsule and
//!   H2CData limits hold;
//! - every fixed-layout header the receiver decodes (ICReq, ICResp, SQE, CQE, data
//!   header, R2T) encodes back to the bytes it came from (reserved bytes aside), and
//!   an encoder's output is accepted by the receive checks with the same fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lightpool_fuzz::{bounded_allocator, Armed, Choices};
use lightpool_spec::fabrics::{self, ConnectCommand, ConnectData, PropertyCommand};
use lightpool_spec::nvme::{Cqe, Sqe};
use lightpool_spec::tcp::{
    self as spec, flags, CommonHeader, DataHeader, IcReq, IcResp, PduType, R2t, Role, TermReq,
    CAPSULE_CMD_HLEN, CAPSULE_RESP_HLEN, COMMON_HEADER_SIZE, DATA_HLEN, IC_PDU_SIZE,
    MAX_HEADER_BUF, R2T_HLEN,
};

bounded_allocator!();

fn padded<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    let n = b.len().min(N);
    a[..n].copy_from_slice(&b[..n]);
    a
}

fn check_layout(role: Role, ch: &CommonHeader, t: PduType, maxh2c: u32, incap: u32) {
    assert_eq!(ch.hlen, spec::expected_hlen(t));
    assert_ne!(
        t.sender(),
        role,
        "a receiver accepted a PDU type it sends itself"
    );
    match t {
        PduType::IcReq | PduType::IcResp => assert_eq!(ch.plen, IC_PDU_SIZE as u32),
        PduType::H2CTermReq | PduType::C2HTermReq => {
            assert!((24..=152).contains(&ch.plen), "TermReq PLEN {}", ch.plen)
        }
        _ => {
            let end = ch.header_end();
            assert!(ch.plen >= end);
            if ch.has_data() {
                assert!(matches!(
                    t,
                    PduType::CapsuleCmd | PduType::H2CData | PduType::C2HData
                ));
                let pdo = u32::from(ch.pdo);
                assert!(pdo >= end);
                assert_eq!(pdo - end, ch.padding_len());
                let data = ch.data_len();
                assert!(data > 0, "a PDU with data accepted with none: {ch:?}");
                assert_eq!(
                    u64::from(end)
                        + u64::from(ch.padding_len())
                        + u64::from(data)
                        + u64::from(ch.ddgst_len()),
                    u64::from(ch.plen),
                    "layout does not add up to PLEN: {ch:?}"
                );
                if role == Role::Controller {
                    match t {
                        PduType::CapsuleCmd => assert!(data <= incap),
                        PduType::H2CData => assert!(data <= maxh2c),
                        _ => {}
                    }
                }
            } else {
                assert!(!matches!(t, PduType::H2CData | PduType::C2HData));
                assert_eq!(ch.data_len(), 0);
                assert_eq!(ch.ddgst_len(), 0, "DDGSTF on a PDU without data");
            }
        }
    }
}

fn round_trips(t: PduType, ch: &CommonHeader, b: &[u8]) {
    match t {
        PduType::IcReq => {
            let h: [u8; IC_PDU_SIZE] = padded(b);
            let r = IcReq::parse(&h);
            let back = IcReq::parse(&r.encode());
            assert_eq!(r, back);
        }
        PduType::IcResp => {
            let h: [u8; IC_PDU_SIZE] = padded(b);
            let r = IcResp::parse(&h);
            assert_eq!(r, IcResp::parse(&r.encode()));
        }
        PduType::H2CTermReq | PduType::C2HTermReq => {
            let r = TermReq::parse(b);
            let mut out = [0u8; 160];
            let n = spec::encode_term_req(t, r.fes, r.fei, b.get(..128).unwrap_or(b), &mut out);
            assert!(n <= 152);
            assert_eq!(TermReq::parse(&out[..n]), r);
            let back = CommonHeader::parse(&padded(&out));
            assert_eq!(back.plen as usize, n);
            assert!(spec::validate_header_for(
                if t == PduType::H2CTermReq {
                    Role::Controller
                } else {
                    Role::Host
                },
                &back,
                false,
                false,
                0,
                0
            )
            .is_ok());
        }
        PduType::CapsuleCmd => {
            let h: [u8; CAPSULE_CMD_HLEN] = padded(b);
            let sqe = spec::capsule_cmd_sqe(&h);
            assert_eq!(&sqe.to_bytes()[..], &h[8..]);
            assert_eq!(Sqe::from_bytes(&sqe.to_bytes()), sqe);
            // The fabrics decoders on whatever the SQE holds.
            if fabrics::is_fabrics(&sqe) {
                let c = ConnectCommand::parse(&sqe);
                let again = ConnectCommand::parse(&c.to_sqe(sqe.cid));
                assert_eq!(c, again);
                let _ = PropertyCommand::parse_get(&sqe);
                let p = PropertyCommand::parse_set(&sqe);
                let _ = p.to_set_sqe(sqe.cid);
            }
            let mut hdr = [0u8; MAX_HEADER_BUF];
            let hd = ch.flags & flags::HDGSTF != 0;
            let dd = ch.flags & flags::DDGSTF != 0;
            let datal = ch.data_len().min(1 << 20);
            let n = spec::encode_capsule_cmd_header(&sqe, hd, dd, datal, 0, &mut hdr);
            let ch2 = CommonHeader::parse(&padded(&hdr));
            assert!(n <= MAX_HEADER_BUF);
            assert_eq!(ch2.data_len(), datal);
            assert_eq!(
                spec::validate_header(&ch2, hd, dd, u32::MAX, u32::MAX),
                Ok(PduType::CapsuleCmd)
            );
            assert_eq!(spec::capsule_cmd_sqe(&padded(&hdr)), sqe);
            if hd {
                let hl = CAPSULE_CMD_HLEN;
                assert!(spec::header_digest_ok(&hdr[..hl], &padded(&hdr[hl..])));
            }
        }
        PduType::CapsuleResp => {
            let h: [u8; CAPSULE_RESP_HLEN] = padded(b);
            let cqe = spec::capsule_resp_cqe(&h);
            assert_eq!(Cqe::from_bytes(&cqe.to_bytes()), cqe);
            let mut out = [0u8; 28];
            let hd = ch.flags & flags::HDGSTF != 0;
            let n = spec::encode_capsule_resp(&cqe, hd, &mut out);
            assert_eq!(spec::capsule_resp_cqe(&padded(&out)), cqe);
            let ch2 = CommonHeader::parse(&padded(&out));
            assert_eq!(ch2.plen as usize, n);
            assert_eq!(
                spec::validate_header_for(Role::Host, &ch2, hd, false, 0, 0),
                Ok(PduType::CapsuleResp)
            );
        }
        PduType::H2CData | PduType::C2HData => {
            let h = DataHeader::parse(b);
            let ok = h.check_len(ch).is_ok();
            assert_eq!(ok, h.datal != 0 && h.datal == ch.data_len());
            if h.datal > 1 << 24 {
                // The encoders take the sender's own lengths (at most a transfer).
                return;
            }
            let mut hdr = [0u8; MAX_HEADER_BUF];
            let hd = ch.flags & flags::HDGSTF != 0;
            let dd = ch.flags & flags::DDGSTF != 0;
            let pda = ch.pdo & 31;
            let last = ch.flags & flags::DATA_LAST != 0;
            let n = if t == PduType::H2CData {
                spec::encode_h2c_data_header(&h, last, hd, dd, pda, &mut hdr)
            } else {
                let ok = ch.flags & flags::DATA_SUCCESS != 0;
                spec::encode_c2h_data_header(&h, last, ok, hd, dd, pda, &mut hdr)
            };
            assert!(n <= MAX_HEADER_BUF);
            let back = DataHeader::parse(&hdr[..DATA_HLEN]);
            assert_eq!(back, h);
            let ch2 = CommonHeader::parse(&padded(&hdr));
            if h.datal > 0 {
                assert_eq!(ch2.data_len(), h.datal);
                assert!(spec::check_pdo_alignment(&ch2, pda).is_ok());
                let role = if t == PduType::H2CData {
                    Role::Controller
                } else {
                    Role::Host
                };
                assert_eq!(
                    spec::validate_header_for(role, &ch2, hd, dd, u32::MAX, u32::MAX),
                    Ok(t)
                );
            }
        }
        PduType::R2T => {
            let r = R2t::parse(b);
            let mut out = [0u8; 28];
            let hd = ch.flags & flags::HDGSTF != 0;
            let n = spec::encode_r2t(&r, hd, &mut out);
            assert_eq!(R2t::parse(&out[..R2T_HLEN]), r);
            let ch2 = CommonHeader::parse(&padded(&out));
            assert_eq!(ch2.plen as usize, n);
            assert_eq!(
                spec::validate_header_for(Role::Host, &ch2, hd, false, 0, 0),
                Ok(PduType::R2T)
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _armed = Armed::new(64 << 10, 1 << 20);
    let mut c = Choices::new(data);
    let knobs = c.byte();
    let maxh2c = c.u32();
    let incap = c.u32();
    let b = c.rest();
    if b.len() < COMMON_HEADER_SIZE {
        return;
    }
    let ch = CommonHeader::parse(&padded(b));
    assert_eq!(&ch.to_bytes()[..], &b[..COMMON_HEADER_SIZE]);
    let hd = knobs & 1 != 0;
    let dd = knobs & 2 != 0;
    for role in [Role::Controller, Role::Host] {
        if let Ok(t) = spec::validate_header_for(role, &ch, hd, dd, maxh2c, incap) {
            check_layout(role, &ch, t, maxh2c, incap);
            let _ = spec::check_pdo_alignment(&ch, knobs >> 3);
            round_trips(t, &ch, b);
        }
    }
    // The Connect data a fabrics Connect carries (1024 bytes), whatever precedes it.
    if let Ok(cd) = ConnectData::parse(b) {
        let back = ConnectData::parse(&cd.to_bytes()).expect("encoded Connect data parses");
        assert_eq!(back.to_bytes(), cd.to_bytes());
        let _ = (cd.subnqn_checked(), cd.hostnqn_checked());
    }
});
