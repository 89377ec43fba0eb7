//! The receive state machine fed from memory, for both ends: every PDU stream split at
//! every byte and coalesced must give the same events and the same data; every hostile
//! header is refused with the status the specification prescribes before anything
//! else is read; a receiver exported at any byte goes on where it stood.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};

use lightpool_spec::nvme::{Cqe, Sqe};
use lightpool_spec::status::Status;
use lightpool_spec::tcp::{self as spec, fes, CommonHeader, DataHeader, IcReq, IcResp, R2t};

use super::*;

/// Input handed out `chunk` bytes per read call at most; reads counted.
struct Mem {
    input: VecDeque<u8>,
    chunk: usize,
    eof: bool,
    reads: usize,
    /// Reads that filled a buffer before the staging buffer (direct reads).
    direct: usize,
}

impl Mem {
    fn new(chunk: usize) -> Mem {
        Mem {
            input: VecDeque::new(),
            chunk,
            eof: false,
            reads: 0,
            direct: 0,
        }
    }
}

impl Stream for Mem {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_vectored(&mut [IoSliceMut::new(buf)])
    }
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        if self.input.is_empty() {
            return if self.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        self.reads += 1;
        if bufs.len() > 1 {
            self.direct += 1;
        }
        let mut n = 0;
        for b in bufs.iter_mut() {
            for x in b.iter_mut() {
                if n == self.chunk {
                    return Ok(n);
                }
                match self.input.pop_front() {
                    Some(v) => *x = v,
                    None => return Ok(n),
                }
                n += 1;
            }
        }
        Ok(n)
    }
    fn writev(&mut self, _iov: &[IoSlice<'_>]) -> io::Result<usize> {
        unreachable!("the receiver never writes")
    }
}

/// A sink of the test owner: slot i's buffer, or nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Sink {
    Slot(u16),
    Drop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Pdu(Pdu),
    Payload(Sink, bool),
    Staged(Sink, Vec<u8>),
    Error(RxError, Vec<u8>),
}

/// An owner that records everything and puts data PDUs' payload in slot buffers.
struct Rec {
    s: Mem,
    bufs: Vec<Vec<u8>>,
    /// Take whole staged payloads of these slots in place.
    take_staged: Vec<u16>,
    /// Answer this PDU kind with Stop.
    stop_at: Option<fn(&Pdu) -> bool>,
}

impl Rec {
    fn new(chunk: usize) -> Rec {
        Rec {
            s: Mem::new(chunk),
            bufs: vec![Vec::new(); 8],
            take_staged: Vec::new(),
            stop_at: None,
        }
    }
}

impl Owner for Rec {
    type Sink = Sink;
    type Stream = Mem;
    type Ctx = Vec<Ev>;

    fn stream(&mut self) -> &mut Mem {
        &mut self.s
    }

    fn payload_buf(&mut self, sink: Sink, end: u32) -> (&mut Mem, Option<&mut [u8]>) {
        match sink {
            Sink::Slot(i) => {
                let b = &mut self.bufs[usize::from(i)];
                if b.len() < end as usize {
                    b.resize(end as usize, 0);
                }
                (&mut self.s, Some(&mut b[..]))
            }
            Sink::Drop => (&mut self.s, None),
        }
    }

    fn on_pdu(&mut self, cx: &mut Vec<Ev>, pdu: &Pdu, _header: &[u8]) -> Next<Sink> {
        cx.push(Ev::Pdu(*pdu));
        if self.stop_at.is_some_and(|f| f(pdu)) {
            return Next::Stop;
        }
        let slot = |cid: u16| {
            if cid == 99 {
                Sink::Drop
            } else {
                Sink::Slot(cid % 8)
            }
        };
        match *pdu {
            Pdu::Command { sqe, data_len } if data_len > 0 => Next::Payload {
                sink: slot(sqe.cid),
                off: 0,
            },
            Pdu::H2CData { h, .. } | Pdu::C2HData { h, .. } => Next::Payload {
                sink: slot(h.cccid),
                off: h.datao,
            },
            Pdu::TermReq(_) => Next::Stop,
            _ => Next::Done,
        }
    }

    fn take_staged(&mut self, cx: &mut Vec<Ev>, sink: Sink, off: u32, data: &[u8]) -> bool {
        match sink {
            Sink::Slot(i) if off == 0 && self.take_staged.contains(&i) => {
                cx.push(Ev::Staged(sink, data.to_vec()));
                true
            }
            _ => false,
        }
    }

    fn on_payload(&mut self, cx: &mut Vec<Ev>, sink: Sink, digest_ok: bool) -> Flow {
        cx.push(Ev::Payload(sink, digest_ok));
        Flow::Continue
    }

    fn on_error(&mut self, cx: &mut Vec<Ev>, e: RxError, header: &[u8]) {
        cx.push(Ev::Error(e, header.to_vec()));
    }
}

fn cfg(role: Role) -> RxConfig {
    RxConfig {
        role,
        pda: 0,
        maxh2cdata: 16384,
        in_capsule_max: 8192,
        staging: 4096,
        budget: 1 << 20,
        direct_min: u32::MAX,
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn rw_sqe(cid: u16) -> Sqe {
    Sqe {
        opcode: 1,
        cid,
        nsid: 1,
        ..Sqe::default()
    }
}

fn icreq(d: Digests) -> Vec<u8> {
    IcReq {
        pfv: 0,
        hpda: 0,
        hdgst: d.header,
        ddgst: d.data,
        maxr2t: 0,
    }
    .encode()
    .to_vec()
}

fn capsule(d: Digests, cid: u16, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 256];
    let n = spec::encode_capsule_cmd_header(
        &rw_sqe(cid),
        d.header,
        d.data,
        data.len() as u32,
        0,
        &mut h,
    );
    let mut v = h[..n].to_vec();
    if !data.is_empty() {
        v.extend_from_slice(data);
        if d.data {
            v.extend_from_slice(&spec::data_digest(data));
        }
    }
    v
}

/// H2CData (or C2HData when `c2h`), with `pad` extra bytes of padding before the data.
fn data_pdu(d: Digests, c2h: bool, cid: u16, datao: u32, data: &[u8], last: bool) -> Vec<u8> {
    let h = DataHeader {
        cccid: cid,
        ttag: cid,
        datao,
        datal: data.len() as u32,
    };
    let mut out = [0u8; 256];
    let n = if c2h {
        spec::encode_c2h_data_header(&h, last, false, d.header, d.data, 0, &mut out)
    } else {
        spec::encode_h2c_data_header(&h, last, d.header, d.data, 0, &mut out)
    };
    let mut v = out[..n].to_vec();
    v.extend_from_slice(data);
    if d.data {
        v.extend_from_slice(&spec::data_digest(data));
    }
    v
}

/// Moves PDO of a data PDU `extra` bytes further (padding), fixing PLEN and the
/// header digest.
fn pad(mut pdu: Vec<u8>, extra: u8) -> Vec<u8> {
    let mut ch = CommonHeader::parse(pdu[..8].try_into().expect("8"));
    let at = usize::from(ch.pdo);
    ch.pdo += extra;
    ch.plen += u32::from(extra);
    ch.encode(&mut pdu);
    if ch.hdgst_len() != 0 {
        let hl = usize::from(ch.hlen);
        let dg = spec::header_digest(&pdu[..hl]);
        pdu[hl..hl + 4].copy_from_slice(&dg);
    }
    pdu.splice(at..at, vec![0u8; usize::from(extra)]);
    pdu
}

fn resp(d: Digests, cid: u16) -> Vec<u8> {
    let mut b = [0u8; 28];
    let n = spec::encode_capsule_resp(&Cqe::new(cid, Status::SUCCESS), d.header, &mut b);
    b[..n].to_vec()
}

/// Feeds `bytes` through a fresh receiver (`chunk` bytes per read) and returns the
/// events, the slot buffers and the receiver.
fn run(
    c: RxConfig,
    start: Option<Digests>,
    bytes: &[u8],
    chunk: usize,
    setup: impl FnOnce(&mut Rec),
) -> (Vec<Ev>, Rec, Receiver<Sink>) {
    let mut rx = match start {
        Some(d) => Receiver::connected(c, d),
        None => Receiver::new(c),
    };
    let mut o = Rec::new(chunk);
    setup(&mut o);
    o.s.input.extend(bytes);
    let mut ev = Vec::new();
    for _ in 0..bytes.len() + 2 {
        rx.receive(&mut o, &mut ev).expect("no I/O error");
        if o.s.input.is_empty() || rx.is_dead() {
            break;
        }
    }
    (ev, o, rx)
}

const ALL_DIGESTS: [Digests; 4] = [
    Digests {
        header: false,
        data: false,
    },
    Digests {
        header: true,
        data: false,
    },
    Digests {
        header: false,
        data: true,
    },
    Digests {
        header: true,
        data: true,
    },
];

/// A controller's stream: ICReq, a bare capsule, in-capsule data, two H2CData PDUs
/// (the second padded), a dropped payload.
fn controller_stream(d: Digests) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let small = pattern(1000, 1);
    let big = pattern(6000, 2);
    let mut s = icreq(d);
    s.extend(capsule(d, 1, &[]));
    s.extend(capsule(d, 2, &small));
    s.extend(data_pdu(d, false, 3, 0, &big[..2500], false));
    s.extend(pad(data_pdu(d, false, 3, 2500, &big[2500..], true), 12));
    s.extend(capsule(d, 99, &pattern(300, 3)));
    s.extend(capsule(d, 4, &[]));
    (s, small, big)
}

fn check_controller_events(ev: &[Ev], d: Digests) {
    let kinds: Vec<String> = ev
        .iter()
        .map(|e| match e {
            Ev::Pdu(Pdu::IcReq(r)) => format!("icreq {} {}", r.hdgst, r.ddgst),
            Ev::Pdu(Pdu::Command { sqe, data_len }) => format!("cmd {} {}", sqe.cid, data_len),
            Ev::Pdu(Pdu::H2CData { h, last }) => format!("h2c {} {} {last}", h.datao, h.datal),
            Ev::Payload(s, ok) => format!("payload {s:?} {ok}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            format!("icreq {} {}", d.header, d.data),
            "cmd 1 0".into(),
            "cmd 2 1000".into(),
            "payload Slot(2) true".into(),
            "h2c 0 2500 false".into(),
            "payload Slot(3) true".into(),
            "h2c 2500 3500 true".into(),
            "payload Slot(3) true".into(),
            "cmd 99 300".into(),
            "payload Drop true".into(),
            "cmd 4 0".into(),
        ]
    );
}

#[test]
fn controller_stream_split_at_every_byte_and_coalesced() {
    for d in ALL_DIGESTS {
        let (s, small, big) = controller_stream(d);
        let chunks: Vec<usize> = (1..=80).chain([97, 1000, 4095, 4096, s.len()]).collect();
        for chunk in chunks {
            let (ev, o, rx) = run(cfg(Role::Controller), None, &s, chunk, |_| {});
            check_controller_events(&ev, d);
            assert_eq!(o.bufs[2], small, "chunk {chunk} {d:?}");
            assert_eq!(o.bufs[3], big, "chunk {chunk} {d:?}");
            assert_eq!(rx.state(), RxState::Ch);
            assert_eq!(rx.digests(), d);
        }
    }
}

/// Large payloads met with an empty staging buffer are read into their buffer with
/// the staging buffer behind them, and give the same result.
#[test]
fn direct_reads_land_the_same_bytes() {
    for d in ALL_DIGESTS {
        let (s, small, big) = controller_stream(d);
        for chunk in [1, 7, 100, 2600, 5000, s.len()] {
            let c = RxConfig {
                direct_min: 64,
                staging: 512,
                ..cfg(Role::Controller)
            };
            let (ev, o, _) = run(c, None, &s, chunk, |_| {});
            check_controller_events(&ev, d);
            assert_eq!(o.bufs[2], small);
            assert_eq!(o.bufs[3], big);
            if chunk <= 512 {
                assert!(o.s.direct > 0, "chunk {chunk}: no direct read");
            }
        }
    }
}

#[test]
fn whole_staged_payloads_are_offered_in_place_without_a_digest() {
    for d in ALL_DIGESTS {
        let (s, small, _) = controller_stream(d);
        for chunk in [1, 500, s.len()] {
            let (ev, o, _) = run(cfg(Role::Controller), None, &s, chunk, |o| {
                o.take_staged = vec![2]
            });
            let staged = ev.iter().find_map(|e| match e {
                Ev::Staged(Sink::Slot(2), b) => Some(b.clone()),
                _ => None,
            });
            let whole_in_one_read = chunk == s.len();
            if !d.data && whole_in_one_read {
                assert_eq!(staged.as_deref(), Some(&small[..]));
                assert!(o.bufs[2].is_empty(), "not copied");
                assert!(!ev.contains(&Ev::Payload(Sink::Slot(2), true)));
            } else {
                assert_eq!(staged, None, "chunk {chunk} {d:?}");
                assert_eq!(o.bufs[2], small);
            }
        }
    }
}

#[test]
fn host_stream_split_at_every_byte() {
    for d in ALL_DIGESTS {
        let read = pattern(5000, 4);
        let ic = IcResp {
            pfv: 0,
            cpda: 0,
            hdgst: d.header,
            ddgst: d.data,
            maxh2cdata: 8192,
        }
        .encode();
        let mut s = ic.to_vec();
        s.extend(resp(d, 1));
        s.extend(data_pdu(d, true, 2, 0, &read[..3000], false));
        s.extend(pad(data_pdu(d, true, 2, 3000, &read[3000..], true), 4));
        s.extend(resp(d, 2));
        let mut r = [0u8; 28];
        let n = spec::encode_r2t(
            &R2t {
                cccid: 5,
                ttag: 6,
                r2to: 0,
                r2tl: 4096,
            },
            d.header,
            &mut r,
        );
        s.extend_from_slice(&r[..n]);
        for chunk in (1..=40).chain([999, s.len()]) {
            let (ev, o, rx) = run(cfg(Role::Host), None, &s, chunk, |_| {});
            assert_eq!(o.bufs[2], read);
            assert_eq!(rx.digests(), d);
            let kinds: Vec<String> = ev
                .iter()
                .map(|e| match e {
                    Ev::Pdu(Pdu::IcResp(r)) => format!("icresp {}", r.maxh2cdata),
                    Ev::Pdu(Pdu::Response(c)) => format!("resp {}", c.cid),
                    Ev::Pdu(Pdu::C2HData { h, last, success }) => {
                        format!("c2h {} {last} {success}", h.datao)
                    }
                    Ev::Pdu(Pdu::R2T(r)) => format!("r2t {} {}", r.cccid, r.r2tl),
                    Ev::Payload(s, ok) => format!("payload {s:?} {ok}"),
                    other => format!("{other:?}"),
                })
                .collect();
            assert_eq!(
                kinds,
                [
                    "icresp 8192",
                    "resp 1",
                    "c2h 0 false false",
                    "payload Slot(2) true",
                    "c2h 3000 true false",
                    "payload Slot(2) true",
                    "resp 2",
                    "r2t 5 4096"
                ],
                "chunk {chunk} {d:?}"
            );
        }
    }
}

#[test]
fn a_bad_data_digest_is_reported_on_the_payload_only() {
    let d = Digests {
        header: true,
        data: true,
    };
    let mut bad = capsule(d, 2, &pattern(700, 9));
    let n = bad.len();
    bad[n - 1] ^= 1;
    let mut s = icreq(d);
    s.extend(bad);
    s.extend(capsule(d, 3, &[]));
    for chunk in [1, 3, s.len()] {
        let (ev, _, rx) = run(cfg(Role::Controller), None, &s, chunk, |_| {});
        assert!(ev.contains(&Ev::Payload(Sink::Slot(2), false)));
        assert!(matches!(
            ev.last(),
            Some(Ev::Pdu(Pdu::Command { sqe, .. })) if sqe.cid == 3
        ));
        assert!(!rx.is_dead());
    }
}

/// Feeds `good` then `bad` to a connected controller and returns the error.
fn refused(bad: &[u8], d: Digests) -> (RxError, Vec<Ev>) {
    let mut s = capsule(d, 1, &[]);
    s.extend_from_slice(bad);
    // What follows a fatal error is never looked at.
    s.extend(capsule(d, 2, &[]));
    for chunk in [1, s.len()] {
        let (ev, _, rx) = run(cfg(Role::Controller), Some(d), &s, chunk, |_| {});
        assert!(rx.is_dead());
        assert!(
            matches!(ev.first(), Some(Ev::Pdu(Pdu::Command { sqe, .. })) if sqe.cid == 1),
            "{ev:?}"
        );
        let errors: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                Ev::Error(e, _) => Some(*e),
                _ => None,
            })
            .collect();
        assert_eq!(errors.len(), 1, "{ev:?}");
        assert!(
            !ev.iter()
                .any(|e| matches!(e, Ev::Pdu(Pdu::Command { sqe, .. }) if sqe.cid == 2)),
            "read past a fatal error"
        );
        if chunk == s.len() {
            return (errors[0], ev);
        }
    }
    unreachable!()
}

#[test]
fn hostile_headers_are_refused_before_their_payload() {
    let plain = Digests::default();
    let hd = Digests {
        header: true,
        data: false,
    };
    let dd = Digests {
        header: false,
        data: true,
    };
    let cap = |d: Digests, data: &[u8]| capsule(d, 7, data);
    let with = |mut v: Vec<u8>, f: &dyn Fn(&mut Vec<u8>)| {
        f(&mut v);
        v
    };
    let invalid = |fei| TermError::invalid_field(fei);
    let cases: Vec<(&str, Vec<u8>, Digests, TermError)> = vec![
        (
            "unknown type",
            with(cap(plain, &[]), &|v| v[0] = 0x7E),
            plain,
            invalid(0),
        ),
        (
            "host-bound response",
            with(cap(plain, &[]), &|v| v[0] = 0x05),
            plain,
            invalid(0),
        ),
        (
            "host-bound C2HData",
            with(cap(plain, &[]), &|v| v[0] = 0x07),
            plain,
            invalid(0),
        ),
        (
            "host-bound R2T",
            with(cap(plain, &[]), &|v| v[0] = 0x09),
            plain,
            invalid(0),
        ),
        (
            "wrong HLEN",
            with(cap(plain, &[]), &|v| v[2] = 70),
            plain,
            invalid(2),
        ),
        (
            "header digest flag missing",
            with(cap(hd, &[]), &|v| v[1] = 0),
            hd,
            invalid(1),
        ),
        (
            "data digest flag missing",
            with(cap(dd, &[0; 8]), &|v| v[1] = 0),
            dd,
            invalid(1),
        ),
        (
            "PLEN short of the header",
            with(cap(plain, &[]), &|v| v[4] = 60),
            plain,
            invalid(4),
        ),
        (
            "PDO inside the header",
            with(cap(plain, &[0; 8]), &|v| v[3] = 40),
            plain,
            invalid(3),
        ),
        (
            "in-capsule data over the limit",
            with(cap(plain, &[0; 8]), &|v| {
                v[4..8].copy_from_slice(&(72u32 + 8193).to_le_bytes());
                v.truncate(72)
            }),
            plain,
            invalid(4),
        ),
        (
            "H2CData over MAXH2CDATA",
            data_pdu(plain, false, 1, 0, &[0; 16388], true)[..24].to_vec(),
            plain,
            TermError {
                fes: fes::DATA_TRANSFER_LIMIT_EXCEEDED,
                fei: 0,
            },
        ),
        (
            "H2CData without data",
            with(data_pdu(plain, false, 1, 0, &[0; 4], true), &|v| {
                v[4..8].copy_from_slice(&24u32.to_le_bytes());
                v.truncate(24)
            }),
            plain,
            invalid(4),
        ),
        (
            "DATAL against PLEN",
            with(data_pdu(plain, false, 1, 0, &[0; 64], true), &|v| {
                v[16..20].copy_from_slice(&32u32.to_le_bytes())
            }),
            plain,
            invalid(16),
        ),
        (
            "bad header digest",
            with(cap(hd, &[]), &|v| v[72] ^= 0xFF),
            hd,
            TermError {
                fes: fes::HEADER_DIGEST_ERROR,
                fei: 0,
            },
        ),
        (
            "a second ICReq",
            icreq(plain),
            plain,
            TermError {
                fes: fes::PDU_SEQUENCE_ERROR,
                fei: 0,
            },
        ),
        (
            "TermReq too long",
            {
                let mut t = [0u8; 152];
                let n = spec::encode_term_req(PduType::H2CTermReq, 1, 0, &[0; 128], &mut t);
                let mut v = t[..n].to_vec();
                v[4..8].copy_from_slice(&153u32.to_le_bytes());
                v
            },
            plain,
            invalid(4),
        ),
    ];
    for (what, bad, d, want) in cases {
        let (e, ev) = refused(&bad, d);
        assert_eq!(e.term(), want, "{what}: {e}");
        // The error carries what was gathered of the offending header.
        let Some(Ev::Error(_, hdr)) = ev.last() else {
            panic!("{what}: {ev:?}")
        };
        assert!(!hdr.is_empty() && bad.starts_with(hdr), "{what}");
    }
}

#[test]
fn pdo_off_the_announced_alignment_is_refused() {
    let d = Digests::default();
    let c = RxConfig {
        pda: 3, // 16-byte alignment
        ..cfg(Role::Controller)
    };
    let ok = pad(capsule(d, 1, &[1; 32]), 8); // PDO 80
    let bad = pad(capsule(d, 2, &[1; 32]), 4); // PDO 76
    let mut s = ok.clone();
    s.extend(bad);
    let (ev, _, rx) = run(c, Some(d), &s, s.len(), |_| {});
    assert!(rx.is_dead());
    assert!(ev.contains(&Ev::Payload(Sink::Slot(1), true)));
    assert!(matches!(
        ev.last(),
        Some(Ev::Error(RxError::Alignment(76), _))
    ));
}

#[test]
fn the_connection_starts_with_icreq_and_its_parameters_are_checked() {
    let d = Digests::default();
    // A command before ICReq.
    let (ev, _, rx) = run(
        cfg(Role::Controller),
        None,
        &capsule(d, 1, &[]),
        100,
        |_| {},
    );
    assert!(rx.is_dead());
    assert!(matches!(
        ev.as_slice(),
        [Ev::Error(RxError::Sequence(PduType::CapsuleCmd), _)]
    ));
    // PFV 1 and HPDA 32 are unsupported parameters.
    for (byte, value, fei) in [(8usize, 1u8, 8u32), (10, 32, 10)] {
        let mut ic = icreq(d);
        ic[byte] = value;
        let (ev, _, _) = run(cfg(Role::Controller), None, &ic, 100, |_| {});
        let [Ev::Error(e @ RxError::Params(_), hdr)] = ev.as_slice() else {
            panic!("{ev:?}")
        };
        assert_eq!(e.term().fes, fes::UNSUPPORTED_PARAMETER);
        assert_eq!(e.term().fei, fei);
        assert_eq!(hdr.len(), 128);
    }
    // The host end: controller-bound types are refused, and ICResp comes once.
    let mut s = IcResp {
        pfv: 0,
        cpda: 0,
        hdgst: false,
        ddgst: false,
        maxh2cdata: 4096,
    }
    .encode()
    .to_vec();
    s.extend(capsule(d, 1, &[]));
    let (ev, _, rx) = run(cfg(Role::Host), None, &s, 7, |_| {});
    assert!(rx.is_dead());
    assert!(matches!(ev.last(), Some(Ev::Error(RxError::Header(e), _)) if e.fei == 0));
    let mut twice = resp(d, 1);
    twice.extend(&s[..128]);
    let (ev, _, _) = run(cfg(Role::Host), Some(d), &twice, 7, |_| {});
    assert!(matches!(
        ev.last(),
        Some(Ev::Error(RxError::Sequence(PduType::IcResp), _))
    ));
}

#[test]
fn a_term_req_or_the_owner_stops_the_receiver() {
    let d = Digests::default();
    let mut t = [0u8; 152];
    let n = spec::encode_term_req(
        PduType::C2HTermReq,
        fes::PDU_SEQUENCE_ERROR,
        0,
        &[1; 30],
        &mut t,
    );
    let mut s = t[..n].to_vec();
    s.extend(resp(d, 1));
    let (ev, _, rx) = run(cfg(Role::Host), Some(d), &s, 5, |_| {});
    assert!(rx.is_dead());
    assert!(matches!(
        ev.as_slice(),
        [Ev::Pdu(Pdu::TermReq(tr))] if tr.fes == fes::PDU_SEQUENCE_ERROR
    ));
    let mut s = resp(d, 1);
    s.extend(resp(d, 2));
    let (ev, o, rx) = run(cfg(Role::Host), Some(d), &s, s.len(), |o| {
        o.stop_at = Some(|p| matches!(p, Pdu::Response(c) if c.cid == 1))
    });
    assert!(rx.is_dead());
    assert_eq!(ev.len(), 1);
    assert_eq!(o.s.reads, 1);
}

#[test]
fn end_of_stream_and_budget() {
    let d = Digests::default();
    let mut rx: Receiver<Sink> = Receiver::connected(cfg(Role::Host), d);
    let mut o = Rec::new(10);
    o.s.input.extend(&resp(d, 1)[..10]);
    o.s.eof = true;
    let mut ev = Vec::new();
    // A short read: the stream is taken to be empty for now.
    assert_eq!(rx.receive(&mut o, &mut ev).expect("bytes"), 1);
    let e = rx.receive(&mut o, &mut ev).expect_err("end of stream");
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    assert_eq!(rx.header().len(), 10);

    // A budget of 50 bytes: full reads go on until it is spent (three of 24 bytes),
    // the rest waits for the next call.
    let c = RxConfig {
        budget: 50,
        staging: 24,
        ..cfg(Role::Host)
    };
    let mut rx: Receiver<Sink> = Receiver::connected(c, d);
    let mut o = Rec::new(24);
    for cid in 0..4 {
        o.s.input.extend(resp(d, cid));
    }
    let mut ev = Vec::new();
    assert_eq!(rx.receive(&mut o, &mut ev).expect("ok"), 3);
    assert_eq!(ev.len(), 3);
    assert_eq!(rx.receive(&mut o, &mut ev).expect("ok"), 1);
    assert_eq!(ev.len(), 4);
}

/// A receiver exported after any prefix of the stream, carried as bytes and imported,
/// gives exactly what one that was never interrupted gives.
#[test]
fn export_and_import_at_every_byte() {
    let d = Digests {
        header: true,
        data: true,
    };
    let (s, small, big) = controller_stream(d);
    for cut in 0..s.len() {
        let c = RxConfig {
            staging: 64,
            ..cfg(Role::Controller)
        };
        let mut rx: Receiver<Sink> = Receiver::new(c);
        let mut o = Rec::new(usize::MAX);
        o.s.input.extend(&s[..cut]);
        let mut ev = Vec::new();
        rx.receive(&mut o, &mut ev).expect("no error");
        let mut snap = rx.export();
        assert!(snap.staged.is_empty());
        // As if the next few bytes had been read and not consumed.
        let k = (s.len() - cut).min(cut % 50);
        snap.staged = s[cut..cut + k].to_vec();
        let bytes = postcard::to_allocvec(&snap).expect("encodes");
        let back: RxSnapshot<Sink> = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(back, snap);
        let mut rx = Receiver::import(c, &back).expect("imports");
        assert_eq!(rx.export(), snap);
        o.s.input.extend(&s[cut + k..]);
        for _ in 0..s.len() {
            rx.receive(&mut o, &mut ev).expect("no error");
            if o.s.input.is_empty() && !rx.has_staged() {
                break;
            }
        }
        check_controller_events(&ev, d);
        assert_eq!(o.bufs[2], small, "cut {cut}");
        assert_eq!(o.bufs[3], big, "cut {cut}");
    }
}

#[test]
fn snapshots_that_make_no_sense_are_refused() {
    let c = cfg(Role::Controller);
    let snap = |state, hdr: &[u8], staged: usize| RxSnapshot::<Sink> {
        state,
        digests: Digests::default(),
        connected: true,
        hdr: hdr.to_vec(),
        staged: vec![0; staged],
    };
    let cap = capsule(Digests::default(), 1, &[]);
    assert!(Receiver::import(c, &snap(RxState::Hdr, &cap[..30], 0)).is_ok());
    let bad = [
        snap(RxState::Ch, &cap[..9], 0),
        snap(RxState::Hdr, &cap[..2], 0),
        snap(RxState::Hdr, &[0x7E, 0, 72, 0, 72, 0, 0, 0], 0),
        snap(RxState::Hdr, &[0x04, 0, 200, 0, 200, 0, 0, 0, 0], 0),
        snap(
            RxState::Ddgst {
                sink: Sink::Drop,
                have: 4,
                crc: 0,
                digest: [0; 4],
            },
            &cap,
            0,
        ),
        snap(RxState::Ch, &[], c.staging + 1),
        snap(RxState::Ch, &[0; MAX_HEADER_BUF + 1], 0),
    ];
    for s in bad {
        assert!(Receiver::import(c, &s).is_err(), "{s:?}");
    }
}

/// The receiver counts every digest it checks with the bytes it covered, and every
/// payload byte placed in a buffer by how it got there, however the stream is split.
#[test]
fn digests_and_placement_are_counted() {
    use crate::offload::{Placement, PLACEMENTS};
    for d in ALL_DIGESTS {
        let (s, _, _) = controller_stream(d);
        for (chunk, direct_min) in [
            (1, u32::MAX),
            (97, u32::MAX),
            (s.len(), u32::MAX),
            (100, 64),
        ] {
            let c = RxConfig {
                direct_min,
                staging: 512,
                ..cfg(Role::Controller)
            };
            let (_, _, rx) = run(c, None, &s, chunk, |_| {});
            let n = rx.offload();
            // Six PDUs after ICReq: four capsules (HLEN 72), two H2CData (HLEN 24).
            let (hd, hb) = if d.header {
                (6, 4 * 72 + 2 * 24)
            } else {
                (0, 0)
            };
            // Payloads with data: 1000, 2500, 3500, and 300 dropped (still checked).
            let (dd, db) = if d.data { (4, 7300) } else { (0, 0) };
            assert_eq!(
                (n.digests, n.digest_bytes),
                (hd + dd, hb + db),
                "{d:?} chunk {chunk}"
            );
            let placed: u64 = n.placed_bytes.iter().sum();
            assert_eq!(
                placed, 7000,
                "{d:?} chunk {chunk}: the dropped payload is not placed"
            );
            let recv = n.placed_bytes[Placement::Recv as usize];
            if direct_min == u32::MAX {
                assert_eq!(recv, 0);
            } else {
                assert!(recv > 0, "{d:?}: no direct read counted");
            }
            for p in [Placement::StackRing, Placement::Device] {
                assert_eq!(n.placements[p as usize], 0);
            }
            assert_eq!(n.placements.len(), PLACEMENTS);
        }
    }
}
