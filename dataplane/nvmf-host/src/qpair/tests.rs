//! The receive state machine fed the target's PDUs split at every size and coalesced,
//! and the send side checked byte for byte.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};

use lightpool_spec::nvme::{io_opcode, Cqe, Sqe};
use lightpool_spec::status::{generic, Status};
use lightpool_spec::tcp::{self as pdu, fes, flags, CommonHeader, DataHeader, PduType, R2t};

use super::*;

/// A stream that hands out scripted chunks (one per read call) and records writes.
#[derive(Default)]
struct Script {
    chunks: VecDeque<Vec<u8>>,
    written: Vec<u8>,
}

impl Stream for Script {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_vectored(&mut [IoSliceMut::new(buf)])
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        let Some(mut chunk) = self.chunks.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let mut n = 0;
        for b in bufs.iter_mut() {
            let k = b.len().min(chunk.len() - n);
            b[..k].copy_from_slice(&chunk[n..n + k]);
            n += k;
        }
        if n < chunk.len() {
            self.chunks.push_front(chunk.split_off(n));
        }
        Ok(n)
    }

    fn writev(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut n = 0;
        for b in bufs {
            self.written.extend_from_slice(b);
            n += b.len();
        }
        Ok(n)
    }
}

fn peer() -> SocketAddr {
    "127.0.0.1:4420".parse().expect("address")
}

fn qpair(hdgst: bool, ddgst: bool) -> Qpair<Script> {
    Qpair::new(
        Script::default(),
        peer(),
        Negotiated {
            hdgst,
            ddgst,
            cpda: 0,
            maxh2cdata: 8192,
        },
        QpairConfig {
            depth: 4,
            buf_len: 32768,
            in_capsule_max: 8192,
            force_r2t: false,
        },
    )
}

fn rw_sqe(opcode: u8, len: u32) -> Sqe {
    Sqe {
        opcode,
        nsid: 1,
        cdw12: len / 512 - 1,
        ..Sqe::default()
    }
}

fn c2h(
    cid: u16,
    datao: u32,
    data: &[u8],
    last: bool,
    success: bool,
    hd: bool,
    dd: bool,
) -> Vec<u8> {
    let mut h = [0u8; 256];
    let n = pdu::encode_c2h_data_header(
        &DataHeader {
            cccid: cid,
            ttag: 0,
            datao,
            datal: data.len() as u32,
        },
        last,
        success,
        hd,
        dd,
        0,
        &mut h,
    );
    let mut v = h[..n].to_vec();
    v.extend_from_slice(data);
    if dd {
        v.extend_from_slice(&pdu::data_digest(data));
    }
    v
}

fn resp(cid: u16, status: Status, hd: bool) -> Vec<u8> {
    let mut b = [0u8; 28];
    let n = pdu::encode_capsule_resp(&Cqe::new(cid, status), hd, &mut b);
    b[..n].to_vec()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Feeds `bytes` in chunks of `size` and polls until nothing is left.
fn feed(
    q: &mut Qpair<Script>,
    bytes: &[u8],
    size: usize,
) -> Result<Vec<Completion>, InitiatorError> {
    for c in bytes.chunks(size.max(1)) {
        q.c.s.chunks.push_back(c.to_vec());
    }
    let mut out = Vec::new();
    for _ in 0..bytes.len() + 2 {
        q.poll(&mut out)?;
        if q.c.s.chunks.is_empty() {
            break;
        }
    }
    Ok(out)
}

const SPLITS: &[usize] = &[1, 3, 8, 23, 24, 25, 100, 4095, 4096, 5000, 1 << 20];

#[test]
fn read_completes_with_its_data_at_every_split() {
    for &(hd, dd) in &[(false, false), (true, false), (false, true), (true, true)] {
        for &split in SPLITS {
            let mut q = qpair(hd, dd);
            let cid = q.alloc().expect("slot");
            q.submit(cid, rw_sqe(io_opcode::READ, 4096), Dir::Read, 4096)
                .expect("submit");
            q.flush().expect("flush");
            let want = pattern(4096, split as u8);
            let mut bytes = c2h(cid, 0, &want, true, false, hd, dd);
            bytes.extend(resp(cid, Status::SUCCESS, hd));
            let out = feed(&mut q, &bytes, split).expect("no protocol error");
            assert_eq!(out.len(), 1, "split {split} hd {hd} dd {dd}");
            assert_eq!(out[0].cid, cid);
            assert!(out[0].status.is_success());
            assert!(!out[0].digest_error);
            assert_eq!(&q.buf(cid)[..4096], &want[..], "split {split}");
            assert_eq!(q.in_flight(), 0);
        }
    }
}

#[test]
fn many_reads_coalesced_in_one_buffer() {
    let mut q = qpair(false, true);
    let mut bytes = Vec::new();
    let mut cids = Vec::new();
    for i in 0..4 {
        let cid = q.alloc().expect("slot");
        q.submit(cid, rw_sqe(io_opcode::READ, 1024), Dir::Read, 1024)
            .expect("submit");
        bytes.extend(c2h(cid, 0, &pattern(1024, i), true, false, false, true));
        bytes.extend(resp(cid, Status::SUCCESS, false));
        cids.push(cid);
    }
    q.flush().expect("flush");
    // Four capsules of 72 bytes went out in one flush.
    assert_eq!(q.c.s.written.len(), 4 * 72);
    let out = feed(&mut q, &bytes, bytes.len()).expect("ok");
    assert_eq!(out.iter().map(|c| c.cid).collect::<Vec<_>>(), cids);
    for (i, cid) in cids.iter().enumerate() {
        assert_eq!(&q.buf(*cid)[..1024], &pattern(1024, i as u8)[..]);
    }
}

#[test]
fn split_c2h_pdus_padding_and_success_flag() {
    let mut q = qpair(false, false);
    let cid = q.alloc().expect("slot");
    q.submit(cid, rw_sqe(io_opcode::READ, 8192), Dir::Read, 8192)
        .expect("submit");
    let want = pattern(8192, 9);
    // First half with PDO 32 (8 bytes of padding after the 24-byte header).
    let mut first = c2h(cid, 0, &want[..4096], false, false, false, false);
    let mut ch = CommonHeader::parse(first[..8].try_into().expect("8"));
    ch.pdo = 32;
    ch.plen += 8;
    ch.encode(&mut first);
    first.splice(24..24, [0u8; 8]);
    let mut bytes = first;
    bytes.extend(c2h(cid, 4096, &want[4096..], true, true, false, false));
    for &split in SPLITS {
        let mut q2 = qpair(false, false);
        let c2 = q2.alloc().expect("slot");
        q2.submit(c2, rw_sqe(io_opcode::READ, 8192), Dir::Read, 8192)
            .expect("submit");
        let out = feed(&mut q2, &bytes, split).expect("ok");
        assert_eq!(out.len(), 1, "SUCCESS completes the command, split {split}");
        assert!(out[0].status.is_success());
        assert_eq!(&q2.buf(c2)[..8192], &want[..]);
    }
    // A response after SUCCESS names a command that is no longer outstanding.
    let out = feed(&mut q, &bytes, 100).expect("ok");
    assert_eq!(out.len(), 1);
    let err = feed(&mut q, &resp(cid, Status::SUCCESS, false), 100).expect_err("stray response");
    assert!(err.to_string().contains("not outstanding"), "{err}");
}

#[test]
fn data_digest_error_is_reported_on_the_command() {
    let mut q = qpair(true, true);
    let cid = q.alloc().expect("slot");
    q.submit(cid, rw_sqe(io_opcode::READ, 4096), Dir::Read, 4096)
        .expect("submit");
    let mut bytes = c2h(cid, 0, &pattern(4096, 1), true, false, true, true);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    bytes.extend(resp(cid, Status::SUCCESS, true));
    let out = feed(&mut q, &bytes, 777).expect("not fatal");
    assert_eq!(out.len(), 1);
    assert!(out[0].digest_error);
}

#[test]
fn header_digest_error_is_fatal() {
    let mut q = qpair(true, false);
    let cid = q.alloc().expect("slot");
    q.submit(cid, rw_sqe(io_opcode::WRITE, 512), Dir::Write, 512)
        .expect("submit");
    let mut bytes = resp(cid, Status::SUCCESS, true);
    bytes[10] ^= 1;
    let err = feed(&mut q, &bytes, 5).expect_err("fatal");
    assert!(err.to_string().contains("header digest"), "{err}");
}

#[test]
fn in_capsule_write_goes_out_with_its_data_and_digest() {
    let mut q = qpair(true, true);
    let cid = q.alloc().expect("slot");
    let data = pattern(4096, 3);
    q.buf_mut(cid)[..4096].copy_from_slice(&data);
    q.submit(cid, rw_sqe(io_opcode::WRITE, 4096), Dir::Write, 4096)
        .expect("submit");
    q.flush().expect("flush");
    let w = &q.c.s.written;
    let ch = CommonHeader::parse(w[..8].try_into().expect("8"));
    assert_eq!(ch.pdu_type, PduType::CapsuleCmd as u8);
    assert_eq!(ch.flags, flags::HDGSTF | flags::DDGSTF);
    assert_eq!(ch.pdo, 76);
    assert_eq!(ch.plen as usize, 76 + 4096 + 4);
    assert_eq!(w.len(), ch.plen as usize);
    assert_eq!(&w[76..76 + 4096], &data[..]);
    assert_eq!(&w[76 + 4096..], &pdu::data_digest(&data));
    let sqe = pdu::capsule_cmd_sqe(w[..72].try_into().expect("72"));
    assert_eq!(sqe.cid, cid);
    assert_eq!(sqe.sgl(), SglDescriptor::in_capsule(0, 4096));
    let out = feed(&mut q, &resp(cid, Status::SUCCESS, true), 7).expect("ok");
    assert_eq!(out.len(), 1);
}

#[test]
fn r2t_write_sends_h2c_pdus_split_at_maxh2cdata() {
    for &split in SPLITS {
        let mut q = qpair(false, true);
        let cid = q.alloc().expect("slot");
        let data = pattern(20480, 5);
        q.buf_mut(cid)[..20480].copy_from_slice(&data);
        q.submit(cid, rw_sqe(io_opcode::WRITE, 20480), Dir::Write, 20480)
            .expect("submit");
        q.flush().expect("flush");
        // Above the 8 KiB in-capsule limit: a bare capsule with a transport SGL.
        assert_eq!(q.c.s.written.len(), 72);
        let sqe = pdu::capsule_cmd_sqe(q.c.s.written[..72].try_into().expect("72"));
        assert_eq!(sqe.sgl(), SglDescriptor::transport(20480));
        q.c.s.written.clear();
        let mut r = [0u8; 28];
        let n = pdu::encode_r2t(
            &R2t {
                cccid: cid,
                ttag: 7,
                r2to: 0,
                r2tl: 20480,
            },
            false,
            &mut r,
        );
        let out = feed(&mut q, &r[..n], split).expect("ok");
        assert!(out.is_empty());
        q.flush().expect("flush");
        // 8192 + 8192 + 4096, each with its header and data digest.
        let w = q.c.s.written.clone();
        let mut at = 0;
        let mut got = Vec::new();
        for (i, want_len) in [8192u32, 8192, 4096].iter().enumerate() {
            let ch = CommonHeader::parse(w[at..at + 8].try_into().expect("8"));
            assert_eq!(ch.pdu_type, PduType::H2CData as u8);
            let h = DataHeader::parse(&w[at..at + 24]);
            assert_eq!(
                (h.cccid, h.ttag, h.datao, h.datal),
                (cid, 7, i as u32 * 8192, *want_len)
            );
            assert_eq!(ch.flags & flags::DATA_LAST != 0, i == 2);
            let d = &w[at + 24..at + 24 + *want_len as usize];
            assert_eq!(
                &w[at + 24 + d.len()..at + 28 + d.len()],
                &pdu::data_digest(d)
            );
            got.extend_from_slice(d);
            at += ch.plen as usize;
        }
        assert_eq!(at, w.len());
        assert_eq!(got, data);
        let out = feed(&mut q, &resp(cid, Status::SUCCESS, false), split).expect("ok");
        assert_eq!(out.len(), 1);
        assert_eq!(q.in_flight(), 0);
    }
}

#[test]
fn error_status_is_delivered_not_fatal() {
    let mut q = qpair(false, false);
    let cid = q.alloc().expect("slot");
    q.submit(cid, rw_sqe(io_opcode::READ, 512), Dir::Read, 512)
        .expect("submit");
    let st = Status::generic(generic::LBA_OUT_OF_RANGE).with_dnr();
    let out = feed(&mut q, &resp(cid, st, false), 3).expect("ok");
    assert_eq!(out[0].status, st);
}

#[test]
fn termination_and_bad_pdus_are_fatal_with_reasons() {
    let mut q = qpair(false, false);
    let mut t = [0u8; 152];
    let n = pdu::encode_term_req(
        PduType::C2HTermReq,
        fes::PDU_SEQUENCE_ERROR,
        0,
        &[1, 2, 3],
        &mut t,
    );
    let err = feed(&mut q, &t[..n], 10).expect_err("fatal");
    assert!(
        matches!(err, InitiatorError::Terminated { fes: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("PDU sequence error"), "{err}");

    // A PDU type only hosts send.
    let mut q = qpair(false, false);
    let mut b = [0u8; 256];
    let n = pdu::encode_capsule_cmd_header(&Sqe::default(), false, false, 0, 0, &mut b);
    let err = feed(&mut q, &b[..n], 10).expect_err("fatal");
    assert!(err.to_string().contains("invalid PDU header"), "{err}");

    // C2HData for a command never submitted.
    let mut q = qpair(false, false);
    let err =
        feed(&mut q, &c2h(3, 0, &[0; 512], true, false, false, false), 10).expect_err("fatal");
    assert!(err.to_string().contains("not outstanding"), "{err}");

    // Too much data for the read.
    let mut q = qpair(false, false);
    let cid = q.alloc().expect("slot");
    q.submit(cid, rw_sqe(io_opcode::READ, 512), Dir::Read, 512)
        .expect("submit");
    let err = feed(
        &mut q,
        &c2h(cid, 0, &[0; 1024], true, false, false, false),
        10,
    )
    .expect_err("fatal");
    assert!(err.to_string().contains("does not fit"), "{err}");

    // The stream ends.
    let mut q = qpair(false, false);
    q.c.s.chunks.push_back(Vec::new());
    let err = q.poll(&mut Vec::new()).expect_err("closed");
    assert!(matches!(err, InitiatorError::Closed { .. }));
}
