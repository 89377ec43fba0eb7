//! The receive state machine of `lightpool_tcp_framing` (either end), fed an
//! arbitrary byte stream in the chunks the input chooses, with the staging size, read
//! budget and direct-read threshold it chooses.
//!
//! Invariants beyond "no panic":
//! - chunking does not matter: the same stream delivered whole and delivered in the
//!   input's chunks gives the same events (every PDU, payload, digest verdict and
//!   error, in order) and the same payload bytes in the owner's buffers;
//! - every header handed to the owner passed the checks (`validate_header_for` again,
//!   DATAL = the data PLEN carries, digests as negotiated), and after an error or a
//!   TermReq nothing more is delivered;
//! - the receiver allocates nothing per PDU: after its staging buffer, no allocation
//!   follows a length the stream claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lightpool_fuzz::{bounded_allocator, fix_digests, Armed, Choices, Mem};
use lightpool_spec::tcp::{self as spec, CommonHeader, Role, COMMON_HEADER_SIZE};
use lightpool_tcp_framing::{Flow, Next, Owner, Pdu, Receiver, RxConfig, RxError};

bounded_allocator!();

/// Payload buffers of the test owner: 4 slots of at most this many bytes.
const SLOT: usize = 64 << 10;
const DROP: u8 = 0xFF;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Pdu(Pdu, Vec<u8>),
    Payload(u8, bool),
    Error(RxError, Vec<u8>),
}

struct Rec {
    s: Mem,
    bufs: Vec<Vec<u8>>,
    pdus: u32,
    dead: bool,
}

impl Rec {
    fn new(chunks: &[u8]) -> Rec {
        Rec {
            s: Mem::new(chunks),
            // Made when first used: most inputs use none (zeroing them per input
            // would cost more than the input).
            bufs: vec![Vec::new(); 4],
            pdus: 0,
            dead: false,
        }
    }
}

impl Owner for Rec {
    type Sink = u8;
    type Stream = Mem;
    type Ctx = (Vec<Ev>, Role, bool);

    fn stream(&mut self) -> &mut Mem {
        &mut self.s
    }

    fn payload_buf(&mut self, sink: u8, end: u32) -> (&mut Mem, Option<&mut [u8]>) {
        let buf = match self.bufs.get_mut(usize::from(sink)) {
            Some(b) if end as usize <= SLOT => {
                b.resize(SLOT, 0);
                Some(&mut b[..])
            }
            _ => None,
        };
        (&mut self.s, buf)
    }

    fn on_pdu(&mut self, cx: &mut Self::Ctx, pdu: &Pdu, header: &[u8]) -> Next<u8> {
        assert!(!self.dead, "a PDU after the receiver was stopped");
        let (ev, role, _) = cx;
        ev.push(Ev::Pdu(*pdu, header.to_vec()));
        self.pdus += 1;
        let ch = CommonHeader::parse(header[..COMMON_HEADER_SIZE].try_into().expect("8 bytes"));
        // The header was checked: the spec's own check accepts it again (digest
        // settings as the PDU's flags say; ICReq/ICResp and TermReqs carry none).
        let hd = ch.flags & spec::flags::HDGSTF != 0;
        let dd = ch.flags & spec::flags::DDGSTF != 0;
        let t = spec::validate_header_for(*role, &ch, hd, dd, u32::MAX, u32::MAX)
            .expect("a header the receiver accepted");
        assert_eq!(header.len() as u32, ch.header_end());
        if hd && t.digests_apply() {
            let hl = usize::from(ch.hlen);
            assert!(spec::header_digest_ok(
                &header[..hl],
                header[hl..hl + 4].try_into().expect("4 bytes")
            ));
        }
        let off = match pdu {
            Pdu::TermReq(_) => {
                self.dead = true;
                return Next::Stop;
            }
            Pdu::H2CData { h, .. } | Pdu::C2HData { h, .. } => {
                assert_eq!(h.datal, ch.data_len());
                h.datao % SLOT as u32
            }
            _ => 0,
        };
        if !ch.has_data() {
            return Next::Done;
        }
        let sink = match self.pdus % 5 {
            4 => DROP,
            n => n as u8,
        };
        Next::Payload { sink, off }
    }

    fn take_staged(&mut self, cx: &mut Self::Ctx, sink: u8, off: u32, data: &[u8]) -> bool {
        // Taken in place on every other chance: recorded as if copied, so the events
        // cannot tell (which they must not: whether a payload is staged whole depends
        // on the chunking).
        if !cx.2 {
            return false;
        }
        if let Some(b) = self.bufs.get_mut(usize::from(sink)) {
            let end = off as usize + data.len();
            if end <= SLOT {
                b.resize(SLOT, 0);
                b[off as usize..end].copy_from_slice(data);
            }
        }
        cx.0.push(Ev::Payload(sink, true));
        true
    }

    fn on_payload(&mut self, cx: &mut Self::Ctx, sink: u8, digest_ok: bool) -> Flow {
        assert!(!self.dead, "a payload after the receiver was stopped");
        cx.0.push(Ev::Payload(sink, digest_ok));
        Flow::Continue
    }

    fn on_error(&mut self, cx: &mut Self::Ctx, e: RxError, header: &[u8]) {
        assert!(!self.dead, "an error after the receiver was stopped");
        self.dead = true;
        cx.0.push(Ev::Error(e, header.to_vec()));
    }
}

/// Runs the stream through a receiver; the events and the owner's buffers.
fn run(
    cfg: RxConfig,
    connected: Option<lightpool_tcp_framing::Digests>,
    stream: &[u8],
    chunks: &[u8],
    take: bool,
) -> (Vec<Ev>, Vec<Vec<u8>>) {
    let mut o = Rec::new(chunks);
    o.s.pipe().input.extend(stream);
    o.s.pipe().eof = true;
    let mut rx: Receiver<u8> = match connected {
        Some(d) => Receiver::connected(cfg, d),
        None => Receiver::new(cfg),
    };
    let mut cx = (Vec::new(), cfg.role, take);
    let _armed = Armed::new(64 << 10, 8 << 20);
    // Each call reads at least one byte or ends: the stream's length bounds the loop.
    for _ in 0..=stream.len() + 2 {
        match rx.receive(&mut o, &mut cx) {
            Ok(_) if rx.is_dead() => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
                break;
            }
        }
    }
    assert!(
        rx.is_dead() || o.s.pipe().input.is_empty(),
        "the receiver stalled with input left"
    );
    (cx.0, o.bufs)
}

fuzz_target!(|data: &[u8]| {
    let mut c = Choices::new(data);
    let k = c.byte();
    let role = if k & 1 == 0 {
        Role::Controller
    } else {
        Role::Host
    };
    let connected = (k & 2 != 0).then_some(lightpool_tcp_framing::Digests {
        header: k & 4 != 0,
        data: k & 8 != 0,
    });
    let cfg = RxConfig {
        role,
        pda: c.byte() & 0x3F,
        maxh2cdata: 4096 << (c.byte() % 8),
        in_capsule_max: 4096 << (c.byte() % 4),
        staging: 1 + usize::from(c.u16() >> 1),
        budget: if k & 0x10 != 0 {
            usize::MAX
        } else {
            1 + usize::from(c.u16())
        },
        direct_min: if k & 0x20 != 0 {
            u32::MAX
        } else {
            u32::from(c.u16())
        },
    };
    let take = k & 0x40 != 0;
    let nchunks = usize::from(c.byte() % 16);
    let chunks = c.bytes(nchunks).to_vec();
    let mut stream = c.rest().to_vec();
    if k & 0x80 != 0 {
        // Digests made right, so that PDUs with digests on get past their checks.
        fix_digests(&mut stream);
    }

    let (whole, bufs_whole) = run(cfg, connected, &stream, &[], take);
    let (split, bufs_split) = run(cfg, connected, &stream, &chunks, take);
    assert_eq!(whole, split, "the chunking changed what was received");
    assert!(
        bufs_whole == bufs_split,
        "the chunking changed the payload bytes"
    );
});
