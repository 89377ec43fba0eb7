use super::*;

/// Dwords 10 and 11 of Authentication Send/Receive: SPSP0 at byte 41, SPSP1 at 42,
/// SECP at 43, TL/AL at 44 (Linux's struct nvmf_auth_send_command).
#[test]
fn command_fields_sit_where_the_spec_puts_them() {
    let c = AuthCommand {
        spsp0: SPSP,
        spsp1: SPSP,
        secp: SECP_DHCHAP,
        len: 72,
    };
    let sqe = c.to_sqe(crate::fabrics::fctype::AUTH_SEND, 7);
    let b = sqe.to_bytes();
    assert_eq!(b[4], crate::fabrics::fctype::AUTH_SEND);
    assert_eq!((b[41], b[42], b[43]), (0x01, 0x01, 0xE9));
    assert_eq!(u32::from_le_bytes([b[44], b[45], b[46], b[47]]), 72);
    assert_eq!(AuthCommand::parse(&sqe), c);
    assert_eq!(c.check_protocol(), Ok(()));
    assert_eq!(AuthCommand { secp: 0xEA, ..c }.check_protocol(), Err(43));
    assert_eq!(AuthCommand { spsp0: 0, ..c }.check_protocol(), Err(41));
    assert_eq!(AuthCommand { spsp1: 2, ..c }.check_protocol(), Err(42));
}

/// What the Linux host sends: one descriptor, SHA-256/384/512, the NULL group and the
/// five FFDHE groups (hash IDs in bytes 12.., DH IDs from byte 42).
#[test]
fn negotiate_round_trip_and_id_lists() {
    let mut idlist = [0u8; 60];
    idlist[..3].copy_from_slice(&[1, 2, 3]);
    idlist[30..36].copy_from_slice(&[0, 1, 2, 3, 4, 5]);
    let n = Negotiate {
        t_id: 0x1234,
        sc_c: 0,
        napd: 1,
        authid: AUTHID_DHCHAP,
        halen: 3,
        dhlen: 6,
        idlist,
    };
    let mut b = [0u8; 80];
    assert_eq!(n.write(&mut b), Ok(72));
    assert_eq!(&b[..8], &[0, 0, 0, 0, 0x34, 0x12, 0, 1]);
    assert_eq!(&b[8..12], &[1, 0, 3, 6]);
    assert_eq!(&b[12..15], &[1, 2, 3]);
    assert_eq!(&b[42..48], &[0, 1, 2, 3, 4, 5]);
    let p = Negotiate::parse(&b[..72]).unwrap();
    assert_eq!(p, n);
    assert_eq!(p.hash_ids(), &[1, 2, 3]);
    assert_eq!(p.dh_ids(), &[0, 1, 2, 3, 4, 5]);
}

#[test]
fn negotiate_rejects_short_and_overlong_lists() {
    assert_eq!(
        Negotiate::parse(&[0u8; 71]),
        Err(AuthMsgError::TooShort { need: 72, got: 71 })
    );
    let mut b = [0u8; 72];
    b[7] = 2; // two descriptors announced, one present
    assert_eq!(
        Negotiate::parse(&b),
        Err(AuthMsgError::TooShort { need: 136, got: 72 })
    );
    b[7] = 1;
    b[10] = 31;
    assert!(matches!(
        Negotiate::parse(&b),
        Err(AuthMsgError::IdListTooLong { halen: 31, .. })
    ));
}

/// Challenge: HL at byte 6, HASHID 8, DHGID 9, DHVLEN 10, SEQNUM 12, C1 at 16.
#[test]
fn challenge_layout() {
    let c1 = [0xAA; 32];
    let dhv = [0x55; 256];
    let c = Challenge {
        t_id: 9,
        hash_id: hash_id::SHA256,
        dhgroup_id: dhgroup_id::FFDHE2048,
        seqnum: 0xDEAD_BEEF,
        c1: &c1,
        dhv: &dhv,
    };
    let mut b = vec![0u8; 400];
    assert_eq!(c.write(&mut b), Ok(16 + 32 + 256));
    assert_eq!(
        &b[..16],
        &[1, 1, 0, 0, 9, 0, 32, 0, 1, 1, 0, 1, 0xEF, 0xBE, 0xAD, 0xDE]
    );
    assert_eq!(Challenge::parse(&b).unwrap(), c);
    assert!(c.write(&mut [0u8; 100]).is_err());
}

/// Reply: HL 6, CVALID 8, DHVLEN 10, SEQNUM 12, then response, C2, DH value.
#[test]
fn reply_layout_and_bounds() {
    let r = [1u8; 48];
    let c2 = [2u8; 48];
    let dhv = [3u8; 384];
    let reply = Reply {
        t_id: 3,
        hl: 48,
        cvalid: true,
        seqnum: 77,
        response: &r,
        c2: &c2,
        dhv: &dhv,
    };
    let mut b = vec![0u8; 16 + 96 + 384];
    assert_eq!(reply.write(&mut b), Ok(b.len()));
    assert_eq!(b[6], 48);
    assert_eq!(b[8], 1);
    assert_eq!(u16::from_le_bytes([b[10], b[11]]), 384);
    assert_eq!(Reply::parse(&b).unwrap(), reply);
    // A DH value longer than the message: refused, never read past the end.
    assert!(Reply::parse(&b[..b.len() - 1]).is_err());
}

#[test]
fn success1_and_failure_layouts() {
    let r = [7u8; 64];
    let s = Success1 {
        t_id: 5,
        hl: 64,
        response: Some(&r),
    };
    let mut b = [0u8; 80];
    assert_eq!(s.write(&mut b), Ok(80));
    assert_eq!(&b[..9], &[1, 3, 0, 0, 5, 0, 64, 0, 1]);
    assert_eq!(Success1::parse(&b).unwrap(), s);
    let f = Failure {
        auth_id: msg::FAILURE1,
        t_id: 5,
        reason: REASON_FAILED,
        explanation: failure::HASH_UNUSABLE,
    };
    let mut b = [0xFFu8; 8];
    assert_eq!(f.write(&mut b), Ok(8));
    assert_eq!(b, [0, 0xF1, 0, 0, 5, 0, 1, 4]);
    assert_eq!(Failure::parse(&b).unwrap(), f);
    let mut b = [0u8; 16];
    assert_eq!(write_success2(5, &mut b), Ok(16));
    assert_eq!(&b[..6], &[1, 4, 0, 0, 5, 0]);
}
