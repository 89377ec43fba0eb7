//! The connection state machine fed from memory: every PDU split at every byte, or
//! coalesced with the next, must give the same answers; hostile input gets the
//! status or termination the specification prescribes.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Instant;

use lightpool_bdev_ram::MallocBdev;
use lightpool_nvmf::{NamespaceConfig, SubsystemConfig, Target, TargetOptions};
use lightpool_spec::fabrics::{ConnectCommand, ConnectData, PropertyCommand, CNTLID_DYNAMIC};
use lightpool_spec::nvme::{
    io_opcode, reg, Cqe, SglDescriptor, Sqe, SGL_DATA_BLOCK_OFFSET, SGL_TRANSPORT_DATA_BLOCK,
};
use lightpool_spec::status::{generic, Status};
use lightpool_spec::tcp::{self as tcpspec, fes, CommonHeader, PduType};
use lightpool_spec::tcp::{self as pdu, DataHeader, IcReq, IcResp, R2t, TermReq};

use super::{Conn, Stream};

const NQN: &str = "nqn.2024-01.io.lightpool:test";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:test-host";
const HOSTID: [u8; 16] = [7; 16];

/// Input delivered in chunks of a chosen size; output collected.
struct Mem {
    input: VecDeque<u8>,
    chunk: usize,
    out: Vec<u8>,
    eof: bool,
}

impl Stream for Mem {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return if self.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(self.chunk).min(self.input.len());
        for b in buf.iter_mut().take(n) {
            *b = self.input.pop_front().expect("length checked");
        }
        Ok(n)
    }
    fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut n = 0;
        for s in iov {
            self.out.extend_from_slice(s);
            n += s.len();
        }
        Ok(n)
    }
}

fn target() -> Arc<Target> {
    let t = Target::new(TargetOptions::default()).expect("default options are valid");
    let mut sc = SubsystemConfig::new(NQN);
    let bdev = MallocBdev::new("ram", 1 << 20, 512).expect("1 MiB RAM bdev");
    sc.namespaces.push(NamespaceConfig {
        nsid: 1,
        bdev,
        nguid: None,
        uuid: None,
        anagrpid: None,
        num_blocks: None,
    });
    t.add_subsystem(sc).expect("valid subsystem");
    t
}

#[derive(Clone, Copy)]
struct Host {
    hdgst: bool,
    ddgst: bool,
}

impl Host {
    fn icreq(&self) -> Vec<u8> {
        IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: self.hdgst,
            ddgst: self.ddgst,
            maxr2t: 0,
        }
        .encode()
        .to_vec()
    }

    /// A command capsule, with in-capsule data if `data` is given.
    fn capsule(&self, sqe: &Sqe, data: &[u8]) -> Vec<u8> {
        let mut hdr = [0u8; tcpspec::MAX_HEADER_BUF];
        let n = pdu::encode_capsule_cmd_header(
            sqe,
            self.hdgst,
            self.ddgst,
            data.len() as u32,
            0,
            &mut hdr,
        );
        let mut v = hdr[..n].to_vec();
        if !data.is_empty() {
            v.extend_from_slice(data);
            if self.ddgst {
                v.extend_from_slice(&tcpspec::digest_bytes(tcpspec::crc32c(data)));
            }
        }
        v
    }

    fn h2c(&self, cid: u16, ttag: u16, datao: u32, data: &[u8], last: bool) -> Vec<u8> {
        let mut hdr = [0u8; tcpspec::MAX_HEADER_BUF];
        let h = DataHeader {
            cccid: cid,
            ttag,
            datao,
            datal: data.len() as u32,
        };
        let n = pdu::encode_h2c_data_header(&h, last, self.hdgst, self.ddgst, 0, &mut hdr);
        let mut v = hdr[..n].to_vec();
        v.extend_from_slice(data);
        if self.ddgst {
            v.extend_from_slice(&tcpspec::digest_bytes(tcpspec::crc32c(data)));
        }
        v
    }

    fn connect(&self, cid: u16, qid: u16, cntlid: u16) -> Vec<u8> {
        let mut sqe = ConnectCommand {
            recfmt: 0,
            qid,
            sqsize: 31,
            cattr: 0,
            kato: if qid == 0 { 30_000 } else { 0 },
        }
        .to_sqe(cid);
        set_sgl(&mut sqe, SGL_DATA_BLOCK_OFFSET, 1024);
        let data = ConnectData::new(HOSTID, cntlid, NQN, HOSTNQN).to_bytes();
        self.capsule(&sqe, &data)
    }

    fn enable(&self, cid: u16) -> Vec<u8> {
        let sqe = PropertyCommand {
            size8: false,
            offset: reg::CC,
            value: 0x0046_0001,
        }
        .to_set_sqe(cid);
        self.capsule(&sqe, &[])
    }
}

fn set_sgl(sqe: &mut Sqe, id: u8, len: u32) {
    sqe.dptr = SglDescriptor {
        address: 0,
        length: len,
        id,
    }
    .to_bytes();
}

fn rw(opcode: u8, cid: u16, nsid: u32, slba: u64, nlb: u32, sgl_id: u8, len: u32) -> Sqe {
    let mut sqe = Sqe {
        opcode,
        cid,
        nsid,
        cdw10: slba as u32,
        cdw11: (slba >> 32) as u32,
        cdw12: nlb - 1,
        ..Default::default()
    };
    set_sgl(&mut sqe, sgl_id, len);
    sqe
}

/// What the target sent, one entry per PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    IcResp(IcResp),
    Resp(Cqe),
    Data {
        cid: u16,
        datao: u32,
        data: Vec<u8>,
        success: bool,
    },
    R2t(R2t),
    Term(TermReq),
}

fn parse_out(mut b: &[u8], host: Host) -> Vec<Out> {
    let mut v = Vec::new();
    while b.len() >= 8 {
        let ch = CommonHeader::parse(b[..8].try_into().expect("8 bytes"));
        let plen = ch.plen as usize;
        assert!(b.len() >= plen, "truncated PDU in output: {ch:?}");
        let p = &b[..plen];
        let t = PduType::try_from(ch.pdu_type).expect("valid PDU type from the target");
        if host.hdgst && !matches!(t, PduType::IcResp | PduType::C2HTermReq) {
            let hl = usize::from(ch.hlen);
            assert!(
                tcpspec::header_digest_ok(&p[..hl], p[hl..hl + 4].try_into().expect("4")),
                "bad header digest from target"
            );
        }
        v.push(match t {
            PduType::IcResp => Out::IcResp(IcResp::parse(p.try_into().expect("128"))),
            PduType::CapsuleResp => {
                Out::Resp(pdu::capsule_resp_cqe(p[..24].try_into().expect("24")))
            }
            PduType::R2T => Out::R2t(R2t::parse(p)),
            PduType::C2HTermReq => Out::Term(TermReq::parse(p)),
            PduType::C2HData => {
                let h = DataHeader::parse(p);
                let start = usize::from(ch.pdo);
                let data = p[start..start + h.datal as usize].to_vec();
                if host.ddgst {
                    let d: [u8; 4] = p[start + h.datal as usize..][..4].try_into().expect("4");
                    assert_eq!(
                        tcpspec::digest_bytes(tcpspec::crc32c(&data)),
                        d,
                        "bad data digest from target"
                    );
                }
                Out::Data {
                    cid: h.cccid,
                    datao: h.datao,
                    data,
                    success: ch.flags & tcpspec::flags::DATA_SUCCESS != 0,
                }
            }
            other => panic!("target sent a {other:?}"),
        });
        b = &b[plen..];
    }
    assert!(b.is_empty(), "trailing bytes in output");
    v
}

struct Harness {
    conn: Conn<Mem>,
    host: Host,
    seen: usize,
}

impl Harness {
    fn new(t: &Arc<Target>, host: Host, chunk: usize) -> Harness {
        let m = Mem {
            input: VecDeque::new(),
            chunk,
            out: Vec::new(),
            eof: false,
        };
        Harness {
            conn: Conn::new(m, t.clone(), "test".into(), 0),
            host,
            seen: 0,
        }
    }

    /// Feed bytes, poll until quiet, return the PDUs sent since last time.
    fn send(&mut self, bytes: &[u8]) -> Vec<Out> {
        self.conn.c.s.input.extend(bytes);
        for _ in 0..100_000 {
            let w = self.conn.poll(Instant::now());
            if w == 0 && self.conn.c.s.input.is_empty() && !self.conn.has_pending_work() {
                break;
            }
            if self.conn.is_closed() {
                break;
            }
        }
        let out = parse_out(&self.conn.c.s.out[self.seen..], self.host);
        self.seen = self.conn.c.s.out.len();
        out
    }

    fn resp(&mut self, bytes: &[u8]) -> Cqe {
        match self.send(bytes).as_slice() {
            [Out::Resp(c)] => *c,
            other => panic!("expected one response, got {other:?}"),
        }
    }
}

/// Admin connect + enable; returns the cntlid.
fn admin(t: &Arc<Target>, host: Host, chunk: usize) -> (Harness, u16) {
    let mut h = Harness::new(t, host, chunk);
    let out = h.send(&host.icreq());
    assert!(
        matches!(out.as_slice(), [Out::IcResp(r)] if r.hdgst == host.hdgst && r.ddgst == host.ddgst && r.maxh2cdata >= 4096)
    );
    let c = h.resp(&host.connect(1, 0, CNTLID_DYNAMIC));
    assert!(c.status.is_success(), "connect failed: {}", c.status);
    let cntlid = c.dw0 as u16;
    assert!(h.resp(&host.enable(2)).status.is_success());
    (h, cntlid)
}

fn io_queue(t: &Arc<Target>, host: Host, chunk: usize, cntlid: u16) -> Harness {
    let mut h = Harness::new(t, host, chunk);
    h.send(&host.icreq());
    let c = h.resp(&host.connect(1, 1, cntlid));
    assert!(c.status.is_success(), "I/O connect failed: {}", c.status);
    h
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Write in-capsule (4 KiB) and by R2T (64 KiB in two H2CData PDUs), read both back.
fn io_round_trip(host: Host, chunk: usize) {
    let t = target();
    let (_a, cntlid) = admin(&t, host, chunk);
    let mut q = io_queue(&t, host, chunk, cntlid);

    let small = pattern(4096, 1);
    let c = q.resp(&host.capsule(
        &rw(io_opcode::WRITE, 10, 1, 8, 8, SGL_DATA_BLOCK_OFFSET, 4096),
        &small,
    ));
    assert!(c.status.is_success(), "{}", c.status);
    assert_eq!(c.cid, 10);

    let big = pattern(65536, 2);
    let out = q.send(&host.capsule(
        &rw(
            io_opcode::WRITE,
            11,
            1,
            100,
            128,
            SGL_TRANSPORT_DATA_BLOCK,
            65536,
        ),
        &[],
    ));
    let [Out::R2t(r2t)] = out.as_slice() else {
        panic!("expected R2T, got {out:?}")
    };
    assert_eq!((r2t.cccid, r2t.r2to, r2t.r2tl), (11, 0, 65536));
    let mut bytes = host.h2c(11, r2t.ttag, 0, &big[..32768], false);
    bytes.extend(host.h2c(11, r2t.ttag, 32768, &big[32768..], true));
    let c = q.resp(&bytes);
    assert!(c.status.is_success(), "{}", c.status);

    for (cid, slba, want) in [(12u16, 8u64, &small), (13, 100, &big)] {
        let len = want.len() as u32;
        let out = q.send(&host.capsule(
            &rw(
                io_opcode::READ,
                cid,
                1,
                slba,
                len / 512,
                SGL_TRANSPORT_DATA_BLOCK,
                len,
            ),
            &[],
        ));
        match out.as_slice() {
            [Out::Data {
                cid: dc,
                datao: 0,
                data,
                success: false,
            }, Out::Resp(c)] => {
                assert_eq!(*dc, cid);
                assert!(c.status.is_success());
                assert!(data == want, "read back differs");
            }
            other => panic!("unexpected read answer {other:?}"),
        }
    }
}

#[test]
fn round_trip_coalesced() {
    io_round_trip(
        Host {
            hdgst: false,
            ddgst: false,
        },
        usize::MAX,
    );
}

#[test]
fn round_trip_byte_by_byte() {
    io_round_trip(
        Host {
            hdgst: false,
            ddgst: false,
        },
        1,
    );
}

#[test]
fn round_trip_with_digests_at_odd_splits() {
    for chunk in [1, 3, 7, 29, 1000, 4099] {
        io_round_trip(
            Host {
                hdgst: true,
                ddgst: true,
            },
            chunk,
        );
    }
}

#[test]
fn command_before_connect_gets_sequence_error() {
    let t = target();
    let host = Host {
        hdgst: false,
        ddgst: false,
    };
    let mut h = Harness::new(&t, host, usize::MAX);
    h.send(&host.icreq());
    let c = h.resp(&host.capsule(
        &rw(io_opcode::READ, 5, 1, 0, 1, SGL_TRANSPORT_DATA_BLOCK, 512),
        &[],
    ));
    assert_eq!(
        c.status,
        Status::generic(generic::COMMAND_SEQUENCE_ERROR).with_dnr()
    );
    // The connection still works: a Connect goes through afterwards.
    assert!(h
        .resp(&host.connect(6, 0, CNTLID_DYNAMIC))
        .status
        .is_success());
}

#[test]
fn bad_namespace_and_range() {
    let t = target();
    let host = Host {
        hdgst: false,
        ddgst: false,
    };
    let (_a, cntlid) = admin(&t, host, usize::MAX);
    let mut q = io_queue(&t, host, usize::MAX, cntlid);
    let c = q.resp(&host.capsule(
        &rw(io_opcode::READ, 1, 9, 0, 1, SGL_TRANSPORT_DATA_BLOCK, 512),
        &[],
    ));
    assert_eq!(
        c.status,
        Status::generic(generic::INVALID_NAMESPACE).with_dnr()
    );
    // 1 MiB namespace = 2048 blocks: block 2047 + 2 blocks runs past the end.
    let c = q.resp(&host.capsule(
        &rw(
            io_opcode::READ,
            2,
            1,
            2047,
            2,
            SGL_TRANSPORT_DATA_BLOCK,
            1024,
        ),
        &[],
    ));
    assert_eq!(
        c.status,
        Status::generic(generic::LBA_OUT_OF_RANGE).with_dnr()
    );
    let c = q.resp(&host.capsule(
        &rw(
            io_opcode::READ,
            3,
            1,
            u64::MAX,
            1,
            SGL_TRANSPORT_DATA_BLOCK,
            512,
        ),
        &[],
    ));
    assert_eq!(
        c.status,
        Status::generic(generic::LBA_OUT_OF_RANGE).with_dnr()
    );
    // Unknown opcode.
    let c = q.resp(&host.capsule(&rw(0x7E, 4, 1, 0, 1, SGL_TRANSPORT_DATA_BLOCK, 0), &[]));
    assert_eq!(
        c.status,
        Status::generic(generic::INVALID_OPCODE).with_dnr()
    );
    // The queue still serves good I/O.
    let out = q.send(&host.capsule(
        &rw(io_opcode::READ, 5, 1, 0, 1, SGL_TRANSPORT_DATA_BLOCK, 512),
        &[],
    ));
    assert!(matches!(out.as_slice(), [Out::Data { .. }, Out::Resp(c)] if c.status.is_success()));
}

fn expect_term(out: &[Out], want_fes: u16) -> TermReq {
    match out.last() {
        Some(Out::Term(t)) => {
            assert_eq!(t.fes, want_fes, "FES");
            *t
        }
        other => panic!("expected a C2HTermReq, got {other:?}"),
    }
}

#[test]
fn wrong_hlen_terminates() {
    let t = target();
    let host = Host {
        hdgst: false,
        ddgst: false,
    };
    let (mut h, _) = admin(&t, host, usize::MAX);
    let mut bad = host.capsule(
        &rw(io_opcode::READ, 1, 1, 0, 1, SGL_TRANSPORT_DATA_BLOCK, 512),
        &[],
    );
    bad[2] = 70;
    let tr = expect_term(&h.send(&bad), fes::INVALID_HEADER_FIELD);
    assert_eq!(tr.fei, 2);
    assert!(h.conn.is_closed());
}

#[test]
fn pdu_before_icreq_is_a_sequence_error() {
    let t = target();
    let host = Host {
        hdgst: false,
        ddgst: false,
    };
    let mut h = Harness::new(&t, host, usize::MAX);
    expect_term(
        &h.send(&host.connect(1, 0, CNTLID_DYNAMIC)),
        fes::PDU_SEQUENCE_ERROR,
    );
}

#[test]
fn unknown_and_host_bound_pdu_types_terminate() {
    for ty in [0x05u8, 0x07, 0x09, 0x0A, 0xFF] {
        let t = target();
        let host = Host {
            hdgst: false,
            ddgst: false,
        };
        let (mut h, _) = admin(&t, host, usize::MAX);
        let mut bad = host.capsule(
            &rw(io_opcode::READ, 1, 1, 0, 1, SGL_TRANSPORT_DATA_BLOCK, 512),
            &[],
        );
        bad[0] = ty;
        let tr = expect_term(&h.send(&bad), fes::INVALID_HEADER_FIELD);
        assert_eq!(tr.fei, 0, "type {ty:#x}");
    }
}

#[test]
fn bad_header_digest_terminates() {
    let t = target();
    let host = Host {
        hdgst: true,
        ddgst: false,
    };
    let (mut h, _) = admin(&t, host, usize::MAX);
    let mut bad = host.capsule(
        &rw(io_opcode::READ, 1, 1, 0, 1, SGL_TRANSPORT_DATA_BLOCK, 512),
        &[],
    );
    bad[72] ^= 0xFF;
    expect_term(&h.send(&bad), fes::HEADER_DIGEST_ERROR);
}

#[test]
fn bad_data_digest_fails_only_the_command() {
    let t = target();
    let host = Host {
        hdgst: true,
        ddgst: true,
    };
    let (_a, cntlid) = admin(&t, host, usize::MAX);
    let mut q = io_queue(&t, host, usize::MAX, cntlid);
    let mut bad = host.capsule(
        &rw(io_opcode::WRITE, 1, 1, 0, 8, SGL_DATA_BLOCK_OFFSET, 4096),
        &pattern(4096, 3),
    );
    let n = bad.len();
    bad[n - 1] ^= 0xFF;
    let c = q.resp(&bad);
    assert_eq!(c.status, Status::generic(0x22));
    let c = q.resp(&host.capsule(
        &rw(io_opcode::WRITE, 2, 1, 0, 8, SGL_DATA_BLOCK_OFFSET, 4096),
        &pattern(4096, 3),
    ));
    assert!(c.status.is_success());
}

#[test]
fn h2c_data_beyond_the_r2t_terminates() {
    let t = target();
    let host = Host {
        hdgst: false,
        ddgst: false,
    };
    let (_a, cntlid) = admin(&t, host, usize::MAX);
    let mut q = io_queue(&t, host, usize::MAX, cntlid);
    let out = q.send(&host.capsule(
        &rw(
            io_opcode::WRITE,
            7,
            1,
            0,
            16,
            SGL_TRANSPORT_DATA_BLOCK,
            8192,
        ),
        &[],
    ));
    let [Out::R2t(r2t)] = out.as_slice() else {
        panic!("{out:?}")
    };
    let bad = host.h2c(7, r2t.ttag, 4096, &pattern(8192, 0), true);
    expect_term(&q.send(&bad), fes::DATA_TRANSFER_OUT_OF_RANGE);
}

#[test]
fn h2c_data_with_unknown_tag_terminates() {
    let t = target();
    let host = Host {
        hdgst: false,
        ddgst: false,
    };
    let (_a, cntlid) = admin(&t, host, usize::MAX);
    let mut q = io_queue(&t, host, usize::MAX, cntlid);
    let tr = expect_term(
        &q.send(&host.h2c(1, 900, 0, &[0u8; 512], true)),
        fes::INVALID_HEADER_FIELD,
    );
    assert_eq!(tr.fei, 10);
}

#[test]
fn oversized_in_capsule_data_terminates_before_reading_it() {
    let t = target();
    let host = Host {
        hdgst: false,
        ddgst: false,
    };
    let (mut h, _) = admin(&t, host, usize::MAX);
    let mut sqe = rw(io_opcode::WRITE, 1, 1, 0, 1, SGL_DATA_BLOCK_OFFSET, 512);
    set_sgl(&mut sqe, SGL_DATA_BLOCK_OFFSET, 512);
    // Header that promises 1 GiB of in-capsule data; only the header is sent.
    let mut hdr = host.capsule(&sqe, &[0u8; 512]);
    hdr.truncate(72);
    let plen: u32 = 72 + (1 << 30);
    hdr[4..8].copy_from_slice(&plen.to_le_bytes());
    hdr[3] = 72;
    expect_term(&h.send(&hdr), fes::INVALID_HEADER_FIELD);
}

#[test]
fn truncated_pdu_then_eof_closes_quietly() {
    let t = target();
    let host = Host {
        hdgst: false,
        ddgst: false,
    };
    let (mut h, _) = admin(&t, host, usize::MAX);
    let full = host.capsule(
        &rw(io_opcode::READ, 1, 1, 0, 1, SGL_TRANSPORT_DATA_BLOCK, 512),
        &[],
    );
    h.conn.c.s.eof = true;
    let out = h.send(&full[..30]);
    assert!(out.is_empty(), "{out:?}");
    assert!(h.conn.is_closed());
}
