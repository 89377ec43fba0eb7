//! The receive state machine of one NVMe/TCP connection, for either end.
//!
//! ```text
//!   Ch --8 bytes--> Hdr --HLEN + HDGST--> [Pad --PDO--> ] Data --DATAL--> [Ddgst --4-->] Ch
//!    \______________\___________ a fatal error, a TermReq, the owner stops ________> Dead
//! ```
//!
//! Bytes come from the owner's [`Stream`] into a staging buffer (one `recv` fills it)
//! and are consumed from there, partial units tracked by offset and remaining count,
//! so a PDU split at any byte or coalesced with the next gives the same result; one
//! function ([`Receiver::receive`]) advances as far as the bytes allow.
//!
//! Each header is checked before anything is done with it: the common header against
//! the PDU type's table and the negotiated digests (`validate_header_for`), the ICReq
//! /ICResp sequence, PDO alignment, the header digest, DATAL against PLEN. Only then is
//! the owner asked ([`Owner::on_pdu`]) where the payload goes: it names a sink of its
//! own type (a request's buffer, a discard), per PDU. The payload then lands in the
//! sink's buffer: copied from the staging buffer, or, when a large payload meets an
//! empty staging buffer, read straight into the sink's buffer with the staging buffer
//! behind it for what follows (one `readv`, no copy). A payload staged whole (and with
//! no data digest to check first) is offered to the owner in place
//! ([`Owner::take_staged`]): a RAM namespace writes it from there.

use std::io::{self, IoSliceMut};

use lightpool_spec::nvme::{Cqe, Sqe};
use lightpool_spec::tcp::{
    self as spec, flags, CommonHeader, DataHeader, IcReq, IcResp, PduType, R2t, Role, TermError,
    TermReq, CAPSULE_CMD_HLEN, CAPSULE_RESP_HLEN, COMMON_HEADER_SIZE, DIGEST_SIZE, IC_PDU_SIZE,
    MAX_HEADER_BUF,
};
use serde::{Deserialize, Serialize};

use crate::offload::{Digest, DigestEngine, OffloadCounters, Placement};
use crate::Stream;

mod snapshot;

pub use snapshot::{ImportError, RxSnapshot};

/// How a receiver is set up.
#[derive(Debug, Clone, Copy)]
pub struct RxConfig {
    /// The end this receiver is: what PDU types it accepts.
    pub role: Role,
    /// The PDA this end announced (CPDA in ICResp for a controller, HPDA in ICReq for
    /// a host): every data PDU to it must put PDO on that alignment.
    pub pda: u8,
    /// Controller: the most H2CData payload per PDU (announced in ICResp).
    pub maxh2cdata: u32,
    /// Controller: the most in-capsule data of a command.
    pub in_capsule_max: u32,
    /// Bytes of the staging buffer one `recv` fills.
    pub staging: usize,
    /// Bytes one [`Receiver::receive`] reads at most, so one busy connection cannot
    /// starve the others of its poller.
    pub budget: usize,
    /// A payload with at least this much left, met with nothing staged, is read
    /// straight into its buffer (`u32::MAX`: never).
    pub direct_min: u32,
}

/// The digests ICReq/ICResp settled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// Where the receiver stands. `K` is the owner's sink: what it said the payload of
/// the current PDU is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RxState<K> {
    /// Gathering the 8-byte common header.
    Ch,
    /// Gathering the rest of the header and its digest (the common header is in the
    /// header bytes).
    Hdr,
    /// Skipping `left` bytes of padding up to PDO; `data` payload bytes follow, the
    /// first for offset `off` of the sink.
    Pad {
        left: u32,
        sink: K,
        off: u32,
        data: u32,
        ddgst: bool,
    },
    /// Receiving `left` more payload bytes, the next for offset `off` of the sink;
    /// `crc` is the data digest so far.
    Data {
        sink: K,
        off: u32,
        left: u32,
        ddgst: bool,
        crc: u32,
    },
    /// Gathering the 4-byte data digest.
    Ddgst {
        sink: K,
        have: u8,
        crc: u32,
        digest: [u8; DIGEST_SIZE],
    },
    /// After a fatal error, a TermReq, or the owner stopped: nothing more is read.
    Dead,
}

/// A PDU whose header arrived whole and passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pdu {
    /// Controller: the host's ICReq (accepted: from now on the receiver expects the
    /// digests it asked for).
    IcReq(IcReq),
    /// Host: the controller's ICResp (from now on the receiver expects the digests it
    /// names; the owner checks the rest).
    IcResp(IcResp),
    /// H2CTermReq or C2HTermReq: the peer gave up on the connection.
    TermReq(TermReq),
    /// Controller: a command capsule with `data_len` bytes of in-capsule data.
    Command { sqe: Sqe, data_len: u32 },
    /// Host: a response capsule.
    Response(Cqe),
    /// Controller: host-to-controller data (DATAL agrees with PLEN).
    H2CData { h: DataHeader, last: bool },
    /// Host: controller-to-host data (DATAL agrees with PLEN); `success`: no response
    /// capsule follows.
    C2HData {
        h: DataHeader,
        last: bool,
        success: bool,
    },
    /// Host: ready to transfer.
    R2T(R2t),
}

/// What the owner wants done after a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next<K> {
    /// The PDU is finished (it carries no payload).
    Done,
    /// Its payload goes to `sink`, the first byte to offset `off` of the sink's buffer.
    /// Every PDU with data must be answered so (or with `Stop`).
    Payload { sink: K, off: u32 },
    /// Stop receiving: the connection is over (the owner has queued its TermReq, or
    /// recorded its error).
    Stop,
}

/// Whether to go on after a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// A fatal error found in the byte stream: the receiver is dead after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RxError {
    #[error("invalid PDU header (fatal error status {:#x} at byte {})", .0.fes, .0.fei)]
    Header(TermError),
    #[error("a {0:?} PDU out of sequence")]
    Sequence(PduType),
    #[error("PDU data offset {0} breaks this end's alignment")]
    Alignment(u8),
    #[error("header digest error in a {0:?} PDU (data corrupted on the way)")]
    HeaderDigest(PduType),
    #[error("connection parameters refused (fatal error status {:#x} at byte {})", .0.fes, .0.fei)]
    Params(TermError),
    #[error("DATAL {datal} disagrees with PLEN")]
    DataLength { datal: u32 },
}

impl RxError {
    /// What a controller puts in its C2HTermReq.
    pub fn term(&self) -> TermError {
        use lightpool_spec::tcp::fes;
        match *self {
            RxError::Header(e) | RxError::Params(e) => e,
            RxError::Sequence(_) => TermError {
                fes: fes::PDU_SEQUENCE_ERROR,
                fei: 0,
            },
            RxError::Alignment(_) => TermError::invalid_field(spec::ch_offset::PDO),
            RxError::HeaderDigest(_) => TermError {
                fes: fes::HEADER_DIGEST_ERROR,
                fei: 0,
            },
            RxError::DataLength { .. } => TermError::invalid_field(16),
        }
    }
}

/// The end of the connection the receiver serves: where payload goes and what each
/// PDU means. The receiver never holds the owner; it is lent for one call.
pub trait Owner {
    /// Where a PDU's payload goes, chosen per PDU by [`Owner::on_pdu`].
    type Sink: Copy;
    type Stream: Stream + ?Sized;
    /// What the owner's callbacks get beside itself (a clock, an output list).
    type Ctx: ?Sized;

    fn stream(&mut self) -> &mut Self::Stream;

    /// The stream, and the buffer payload for `sink` lands in (at least `end` bytes;
    /// bytes go at the offsets [`Next::Payload`] named), or `None` to drop it.
    fn payload_buf(&mut self, sink: Self::Sink, end: u32)
        -> (&mut Self::Stream, Option<&mut [u8]>);

    /// A header arrived and passed every check (`header`: its bytes).
    fn on_pdu(&mut self, cx: &mut Self::Ctx, pdu: &Pdu, header: &[u8]) -> Next<Self::Sink>;

    /// The whole payload for `sink` (from offset `off`) is staged, with no data digest
    /// to check: the owner may use it from there (return true; the PDU is then done
    /// and [`Owner::on_payload`] is not called). Otherwise it is copied as usual.
    fn take_staged(&mut self, cx: &mut Self::Ctx, sink: Self::Sink, off: u32, data: &[u8]) -> bool {
        let _ = (cx, sink, off, data);
        false
    }

    /// Every payload byte for `sink` arrived, and its data digest if there is one.
    fn on_payload(&mut self, cx: &mut Self::Ctx, sink: Self::Sink, digest_ok: bool) -> Flow;

    /// A fatal error in what the peer sent; `header` is what was gathered of the
    /// offending header. Nothing more is received.
    fn on_error(&mut self, cx: &mut Self::Ctx, e: RxError, header: &[u8]);
}

/// The receive side of one connection.
pub struct Receiver<K> {
    cfg: RxConfig,
    digests: Digests,
    /// ICReq (controller) or ICResp (host) received.
    connected: bool,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    hdr: [u8; MAX_HEADER_BUF],
    hdr_have: usize,
    /// The common header and type of the current PDU (from state `Hdr` on).
    ch: CommonHeader,
    t: PduType,
    state: RxState<K>,
    /// Digests checked and payload placed (plain counts: see `offload`).
    counters: OffloadCounters,
}

impl<K: Copy> Receiver<K> {
    /// A receiver for a new connection: the first PDU must be ICReq (controller) or
    /// ICResp (host).
    pub fn new(cfg: RxConfig) -> Receiver<K> {
        Receiver {
            cfg,
            digests: Digests::default(),
            connected: false,
            buf: vec![0u8; cfg.staging.max(1)].into_boxed_slice(),
            start: 0,
            end: 0,
            hdr: [0u8; MAX_HEADER_BUF],
            hdr_have: 0,
            ch: CommonHeader::parse(&[0; COMMON_HEADER_SIZE]),
            t: PduType::IcReq,
            state: RxState::Ch,
            counters: OffloadCounters::default(),
        }
    }

    /// A receiver for a connection whose ICReq/ICResp exchange is done (settling
    /// `digests`).
    pub fn connected(cfg: RxConfig, digests: Digests) -> Receiver<K> {
        let mut r = Receiver::new(cfg);
        r.connected = true;
        r.digests = digests;
        r
    }

    pub fn config(&self) -> &RxConfig {
        &self.cfg
    }

    pub fn state(&self) -> RxState<K> {
        self.state
    }

    pub fn digests(&self) -> Digests {
        self.digests
    }

    /// The digests this receiver checked and how payload reached its buffers.
    pub fn offload(&self) -> &OffloadCounters {
        &self.counters
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn is_dead(&self) -> bool {
        matches!(self.state, RxState::Dead)
    }

    /// The bytes of the current header gathered so far.
    pub fn header(&self) -> &[u8] {
        &self.hdr[..self.hdr_have]
    }

    /// Bytes read from the stream and not consumed yet.
    pub fn staged(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn has_staged(&self) -> bool {
        self.start < self.end
    }

    /// Receive nothing more (the owner is closing the connection).
    pub fn stop(&mut self) {
        self.state = RxState::Dead;
    }

    /// Consume what is staged, then read from the owner's stream and consume, until
    /// the stream has nothing more (a short read says so: no system call is spent on
    /// EAGAIN), the budget is spent, or the receiver is dead. Returns the reads that
    /// brought bytes. End of stream is `UnexpectedEof`; `WouldBlock`, `TimedOut` (a
    /// blocking socket's read timeout) and `Interrupted` are not errors.
    pub fn receive<O: Owner<Sink = K>>(&mut self, o: &mut O, cx: &mut O::Ctx) -> io::Result<usize> {
        let mut reads = 0;
        let mut budget = self.cfg.budget;
        loop {
            self.consume(o, cx);
            if self.is_dead() {
                return Ok(reads);
            }
            self.start = 0;
            self.end = 0;
            if budget == 0 {
                return Ok(reads);
            }
            let (n, asked) = match self.fill(o, cx) {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(reads)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            reads += 1;
            budget = budget.saturating_sub(n);
            if n < asked {
                // A short read: the stream is empty for now. Consume what came and
                // stop, rather than pay a system call for EAGAIN.
                self.consume(o, cx);
                return Ok(reads);
            }
        }
    }

    /// One read: straight into the payload's buffer (and the staging buffer behind it)
    /// when a large payload is under way, else into the staging buffer. Returns the
    /// bytes read and the bytes asked for.
    fn fill<O: Owner<Sink = K>>(
        &mut self,
        o: &mut O,
        cx: &mut O::Ctx,
    ) -> io::Result<(usize, usize)> {
        if let RxState::Data {
            sink,
            off,
            left,
            ddgst,
            crc,
        } = self.state
        {
            if left >= self.cfg.direct_min {
                let (s, dest) = o.payload_buf(sink, off + left);
                if let Some(dest) = dest {
                    let how = s.placement();
                    let direct = &mut dest[off as usize..(off + left) as usize];
                    let n = {
                        let mut iov = [IoSliceMut::new(direct), IoSliceMut::new(&mut self.buf)];
                        s.read_vectored(&mut iov)?
                    };
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    let k = n.min(left as usize);
                    self.counters.place(how, k);
                    let crc = if ddgst {
                        self.counters.digest_bytes(k);
                        Digest::append(crc, &direct[..k])
                    } else {
                        crc
                    };
                    self.end = n - k;
                    let k = k as u32;
                    self.state = RxState::Data {
                        sink,
                        off: off + k,
                        left: left - k,
                        ddgst,
                        crc,
                    };
                    if k == left {
                        self.payload_done(o, cx);
                    }
                    return Ok((n, left as usize + self.buf.len()));
                }
            }
        }
        let n = o.stream().read(&mut self.buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.end = n;
        Ok((n, self.buf.len()))
    }

    /// Advance over the staged bytes.
    fn consume<O: Owner<Sink = K>>(&mut self, o: &mut O, cx: &mut O::Ctx) {
        while self.start < self.end {
            let avail = self.end - self.start;
            match self.state {
                RxState::Dead => {
                    self.start = self.end;
                    return;
                }
                RxState::Ch if self.hdr_have == 0 && avail >= COMMON_HEADER_SIZE => {
                    // The usual case: the header starts at a staged byte. Check it, and
                    // when all of it is staged, decode it where it is (no copy).
                    let at = self.start;
                    let ch = CommonHeader::parse(
                        self.buf[at..at + COMMON_HEADER_SIZE]
                            .try_into()
                            .expect("8 bytes"),
                    );
                    match self.check_common(&ch) {
                        Ok(t) => {
                            self.ch = ch;
                            self.t = t;
                            let need = ch.header_end() as usize;
                            if avail >= need {
                                self.start += need;
                                self.on_header(o, cx, ch, t, Some(at));
                            } else {
                                self.take_hdr(avail);
                                self.state = RxState::Hdr;
                            }
                        }
                        Err(e) => {
                            o.on_error(cx, e, &self.buf[at..at + COMMON_HEADER_SIZE]);
                            self.state = RxState::Dead;
                        }
                    }
                }
                RxState::Ch => {
                    let n = (COMMON_HEADER_SIZE - self.hdr_have).min(avail);
                    self.take_hdr(n);
                    if self.hdr_have == COMMON_HEADER_SIZE {
                        let ch = CommonHeader::parse(
                            self.hdr[..COMMON_HEADER_SIZE]
                                .try_into()
                                .expect("8 bytes gathered"),
                        );
                        match self.check_common(&ch) {
                            Ok(t) => {
                                self.ch = ch;
                                self.t = t;
                                self.state = RxState::Hdr;
                            }
                            Err(e) => self.fail(o, cx, e),
                        }
                    }
                }
                RxState::Hdr => {
                    let need = self.ch.header_end() as usize;
                    let n = (need - self.hdr_have).min(avail);
                    self.take_hdr(n);
                    if self.hdr_have == need {
                        self.on_header(o, cx, self.ch, self.t, None);
                    }
                }
                RxState::Pad {
                    left,
                    sink,
                    off,
                    data,
                    ddgst,
                } => {
                    let n = (left as usize).min(avail);
                    self.start += n;
                    let left = left - n as u32;
                    self.state = if left > 0 {
                        RxState::Pad {
                            left,
                            sink,
                            off,
                            data,
                            ddgst,
                        }
                    } else {
                        RxState::Data {
                            sink,
                            off,
                            left: data,
                            ddgst,
                            crc: 0,
                        }
                    };
                }
                RxState::Data {
                    sink,
                    off,
                    left,
                    ddgst,
                    crc,
                } => {
                    if !ddgst && left as usize <= avail {
                        let whole = &self.buf[self.start..self.start + left as usize];
                        if o.take_staged(cx, sink, off, whole) {
                            self.counters.place(Placement::Staged, left as usize);
                            self.start += left as usize;
                            self.next_pdu();
                            continue;
                        }
                    }
                    let n = (left as usize).min(avail);
                    let src = &self.buf[self.start..self.start + n];
                    // The digest over where the bytes landed when they land somewhere:
                    // a buffer the owner aligned, and in the cache from the copy.
                    let crc = match o.payload_buf(sink, off + left) {
                        (_, Some(dest)) => {
                            let dest = &mut dest[off as usize..off as usize + n];
                            dest.copy_from_slice(src);
                            self.counters.place(Placement::Staged, n);
                            if ddgst {
                                self.counters.digest_bytes(n);
                                Digest::append(crc, dest)
                            } else {
                                crc
                            }
                        }
                        (_, None) if ddgst => {
                            self.counters.digest_bytes(n);
                            Digest::append(crc, src)
                        }
                        (_, None) => crc,
                    };
                    self.start += n;
                    let n = n as u32;
                    self.state = RxState::Data {
                        sink,
                        off: off + n,
                        left: left - n,
                        ddgst,
                        crc,
                    };
                    if left == n {
                        self.payload_done(o, cx);
                    }
                }
                RxState::Ddgst {
                    sink,
                    have,
                    crc,
                    mut digest,
                } => {
                    let at = usize::from(have);
                    let n = (DIGEST_SIZE - at).min(avail);
                    digest[at..at + n].copy_from_slice(&self.buf[self.start..self.start + n]);
                    self.start += n;
                    if at + n < DIGEST_SIZE {
                        self.state = RxState::Ddgst {
                            sink,
                            have: (at + n) as u8,
                            crc,
                            digest,
                        };
                    } else {
                        self.counters.digest(0);
                        let ok = spec::digest_bytes(crc) == digest;
                        self.next_pdu();
                        if o.on_payload(cx, sink, ok) == Flow::Stop {
                            self.state = RxState::Dead;
                        }
                    }
                }
            }
        }
    }

    #[inline]
    fn take_hdr(&mut self, n: usize) {
        self.hdr[self.hdr_have..self.hdr_have + n]
            .copy_from_slice(&self.buf[self.start..self.start + n]);
        self.hdr_have += n;
        self.start += n;
    }

    #[inline]
    fn next_pdu(&mut self) {
        self.state = RxState::Ch;
        self.hdr_have = 0;
    }

    fn fail<O: Owner<Sink = K>>(&mut self, o: &mut O, cx: &mut O::Ctx, e: RxError) {
        o.on_error(cx, e, &self.hdr[..self.hdr_have]);
        self.state = RxState::Dead;
    }

    /// Checks a common header before any more of its PDU is read.
    #[inline]
    fn check_common(&self, ch: &CommonHeader) -> Result<PduType, RxError> {
        let (hd, dd) = if self.connected {
            (self.digests.header, self.digests.data)
        } else {
            (false, false)
        };
        let t = spec::validate_header_for(
            self.cfg.role,
            ch,
            hd,
            dd,
            self.cfg.maxh2cdata,
            self.cfg.in_capsule_max,
        )
        .map_err(RxError::Header)?;
        let ic = matches!(t, PduType::IcReq | PduType::IcResp);
        if ic == self.connected {
            return Err(RxError::Sequence(t));
        }
        if t.digests_apply() && spec::check_pdo_alignment(ch, self.cfg.pda).is_err() {
            return Err(RxError::Alignment(ch.pdo));
        }
        Ok(t)
    }

    /// The bytes of the current header: staged from `at`, or gathered.
    #[inline]
    fn header_bytes(&self, at: Option<usize>) -> &[u8] {
        match at {
            Some(at) => &self.buf[at..at + self.ch.header_end() as usize],
            None => &self.hdr[..self.hdr_have],
        }
    }

    /// The whole header `ch` of type `t` (and its digest) is in, staged from `at` or
    /// gathered: check what is left to check, ask the owner, follow its answer.
    #[inline(always)]
    fn on_header<O: Owner<Sink = K>>(
        &mut self,
        o: &mut O,
        cx: &mut O::Ctx,
        ch: CommonHeader,
        t: PduType,
        at: Option<usize>,
    ) {
        if ch.hdgst_len() != 0 && t.digests_apply() {
            self.counters.digest(usize::from(ch.hlen));
        }
        let next = {
            let h = self.header_bytes(at);
            match check_header(&ch, t, h) {
                Ok(()) => o.on_pdu(cx, &pdu_of(&ch, t, h), h),
                Err(e) => {
                    o.on_error(cx, e, h);
                    Next::Stop
                }
            }
        };
        if matches!(t, PduType::IcReq | PduType::IcResp) {
            self.connect(at);
        }
        match next {
            Next::Done if !ch.has_data() => self.next_pdu(),
            Next::Payload { sink, off } if ch.has_data() => self.expect_payload(sink, off),
            // An owner that leaves a payload unclaimed (or claims one that is not
            // there) cannot be followed: stop rather than misframe.
            Next::Done | Next::Payload { .. } | Next::Stop => self.state = RxState::Dead,
        }
    }

    /// ICReq or ICResp went through: from now on the digests they name apply.
    #[cold]
    fn connect(&mut self, at: Option<usize>) {
        let h: &[u8; IC_PDU_SIZE] = self.header_bytes(at)[..IC_PDU_SIZE]
            .try_into()
            .expect("128 bytes");
        // ICReq and ICResp both carry their DGST byte at 11.
        let r = IcReq::parse(h);
        self.digests = Digests {
            header: r.hdgst,
            data: r.ddgst,
        };
        self.connected = true;
    }

    /// Set up receipt of the current PDU's payload (padding, data, digest).
    fn expect_payload(&mut self, sink: K, off: u32) {
        let data = self.ch.data_len();
        let ddgst = self.ch.ddgst_len() != 0;
        let pad = self.ch.padding_len();
        self.state = if pad > 0 {
            RxState::Pad {
                left: pad,
                sink,
                off,
                data,
                ddgst,
            }
        } else {
            RxState::Data {
                sink,
                off,
                left: data,
                ddgst,
                crc: 0,
            }
        };
    }

    /// Every payload byte of the current PDU is in; a data digest may follow.
    fn payload_done<O: Owner<Sink = K>>(&mut self, o: &mut O, cx: &mut O::Ctx) {
        let RxState::Data {
            sink, ddgst, crc, ..
        } = self.state
        else {
            return;
        };
        if ddgst {
            self.state = RxState::Ddgst {
                sink,
                have: 0,
                crc,
                digest: [0; DIGEST_SIZE],
            };
        } else {
            self.next_pdu();
            if o.on_payload(cx, sink, true) == Flow::Stop {
                self.state = RxState::Dead;
            }
        }
    }
}

/// What can only be checked once the whole header (`h`, digest included) is in: the
/// header digest, the ICReq parameters, DATAL against PLEN.
#[inline(always)]
fn check_header(ch: &CommonHeader, t: PduType, h: &[u8]) -> Result<(), RxError> {
    let hlen = usize::from(ch.hlen);
    if ch.hdgst_len() != 0 && t.digests_apply() {
        let digest: &[u8; DIGEST_SIZE] = h[hlen..hlen + DIGEST_SIZE].try_into().expect("4 bytes");
        if Digest::append(0, &h[..hlen]).to_le_bytes() != *digest {
            return Err(RxError::HeaderDigest(t));
        }
    }
    match t {
        PduType::H2CData | PduType::C2HData => {
            // DATAL (bytes 16..20) alone: the rest of the data header is decoded once,
            // for the owner.
            let datal = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes"));
            if datal == 0 || datal != ch.data_len() {
                return Err(RxError::DataLength { datal });
            }
            Ok(())
        }
        PduType::IcReq => IcReq::parse(h[..IC_PDU_SIZE].try_into().expect("128 bytes"))
            .check()
            .map_err(RxError::Params),
        _ => Ok(()),
    }
}

/// A checked header (`h`: its bytes) as a [`Pdu`].
#[inline(always)]
fn pdu_of(ch: &CommonHeader, t: PduType, h: &[u8]) -> Pdu {
    let hlen = usize::from(ch.hlen);
    match t {
        PduType::CapsuleCmd => Pdu::Command {
            sqe: spec::capsule_cmd_sqe(h[..CAPSULE_CMD_HLEN].try_into().expect("72 bytes")),
            data_len: ch.data_len(),
        },
        PduType::CapsuleResp => Pdu::Response(spec::capsule_resp_cqe(
            h[..CAPSULE_RESP_HLEN].try_into().expect("24 bytes"),
        )),
        PduType::H2CData => Pdu::H2CData {
            h: DataHeader::parse(&h[..hlen]),
            last: ch.flags & flags::DATA_LAST != 0,
        },
        PduType::C2HData => Pdu::C2HData {
            h: DataHeader::parse(&h[..hlen]),
            last: ch.flags & flags::DATA_LAST != 0,
            success: ch.flags & flags::DATA_SUCCESS != 0,
        },
        PduType::R2T => Pdu::R2T(R2t::parse(&h[..hlen])),
        PduType::IcReq => Pdu::IcReq(IcReq::parse(
            h[..IC_PDU_SIZE].try_into().expect("128 bytes"),
        )),
        PduType::IcResp => Pdu::IcResp(IcResp::parse(
            h[..IC_PDU_SIZE].try_into().expect("128 bytes"),
        )),
        PduType::H2CTermReq | PduType::C2HTermReq => Pdu::TermReq(TermReq::parse(&h[..hlen])),
    }
}

#[cfg(test)]
mod tests;
