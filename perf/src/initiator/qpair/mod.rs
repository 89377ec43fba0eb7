//! One NVMe/TCP queue pair seen from the host: ICReq negotiation, Connect, command
//! submission (in-capsule or R2T-driven writes), the receive state machine (response
//! capsules, C2HData, R2T, termination) and orderly disconnect.
//!
//! Built for load generation: the command slab, data buffers, receive buffer and send
//! queue are allocated once at connect; a poll reads everything the socket holds with
//! one call (straight into the command's buffer while a C2HData payload is being
//! received, the next PDUs into the staging buffer behind it), and a flush writes every
//! queued PDU with one `writev`. The command id is the slab index.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use lightpool_spec::nvme::{Cqe, SglDescriptor, Sqe};
use lightpool_spec::status::Status;
use lightpool_spec::tcp::{
    self as pdu, flags, CommonHeader, DataHeader, PduType, Role, COMMON_HEADER_SIZE, DIGEST_SIZE,
    MAX_HEADER_BUF,
};

use super::tx::{TxQueue, INLINE_MAX, MAX_IOV};
use super::InitiatorError;

/// Staging buffer for received bytes: big enough to take every response of a deep
/// queue of small reads in one call.
const RX_BUF: usize = 256 * 1024;
/// Bytes one poll reads at most before it lets the other queue pairs of its core run.
const RX_BUDGET: usize = 4 * RX_BUF;
/// Read timeout of a socket in blocking mode (admin commands, connect, disconnect):
/// how often a waiting caller gets to look at its deadline.
const BLOCKING_SLICE: Duration = Duration::from_millis(50);
/// HPDA we announce: PDUs to us may put data right after the header.
const HPDA: u8 = 0;

/// The byte stream under a queue pair (a TCP socket; a scripted stream in tests).
pub trait Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize>;
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
}

impl Stream for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(self, buf)
    }
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        Read::read_vectored(self, bufs)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Write::write_vectored(self, bufs)
    }
}

/// Which way a command moves data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dir {
    #[default]
    None,
    /// Controller to host (C2HData).
    Read,
    /// Host to controller (in-capsule or H2CData after R2T).
    Write,
}

/// What ICReq/ICResp settled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    pub hdgst: bool,
    pub ddgst: bool,
    /// The controller's PDU data alignment (0's based dwords).
    pub cpda: u8,
    /// Most data bytes per H2CData PDU.
    pub maxh2cdata: u32,
}

/// How a queue pair is sized.
#[derive(Clone, Copy, Debug)]
pub struct QpairConfig {
    /// Commands in flight at most (the slab size).
    pub depth: u16,
    /// Data buffer bytes per command.
    pub buf_len: usize,
    /// Largest write sent in the capsule (IOCCSZ * 16 - 64; 8192 on the admin queue).
    pub in_capsule_max: u32,
    /// Send every write through R2T/H2CData, never in the capsule.
    pub force_r2t: bool,
}

/// A finished command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub cid: u16,
    pub status: Status,
    pub dw0: u32,
    pub dw1: u32,
    /// A C2HData PDU of this command failed its data digest.
    pub digest_error: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum SlotState {
    #[default]
    Free,
    /// Handed out by `alloc`, not yet submitted.
    Reserved,
    InFlight,
    /// Completed while the send queue still referenced its data.
    Parked,
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    state: SlotState,
    dir: Dir,
    len: u32,
    in_capsule: bool,
    /// C2HData bytes received (they must arrive in order).
    c2h_received: u32,
    /// End of the data requested by R2Ts so far.
    r2t_end: u32,
    digest_error: bool,
    /// Send-queue items that reference this command's data buffer.
    tx_refs: u16,
    parked: Option<Completion>,
}

/// Where the payload of the PDU being received goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sink {
    cid: u16,
    /// DATAO + DATAL of this PDU.
    end: u32,
    /// C2HData SUCCESS: the command completes with this PDU, no response follows.
    success: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rx {
    /// Gathering the common header.
    Ch,
    /// Gathering the rest of the header and its digest.
    Hdr { ch: CommonHeader, t: PduType },
    /// Skipping padding up to PDO.
    Pad {
        left: u32,
        sink: Sink,
        data: u32,
        ddgst: bool,
    },
    /// Receiving `left` more payload bytes at `off` of the command's buffer.
    Data {
        sink: Sink,
        off: u32,
        left: u32,
        ddgst: bool,
        crc: u32,
    },
    /// Gathering the data digest.
    Ddgst {
        sink: Sink,
        have: u8,
        crc: u32,
        digest: [u8; DIGEST_SIZE],
    },
}

/// One queue pair.
pub struct Qpair<S: Stream = TcpStream> {
    s: S,
    peer: SocketAddr,
    qid: u16,
    p: Negotiated,
    cfg: QpairConfig,
    slots: Vec<Slot>,
    free: Vec<u16>,
    /// Data buffers, `cfg.buf_len` bytes per command from `data_base` (4096-aligned).
    data: Vec<u8>,
    data_base: usize,
    rx: Box<[u8]>,
    rx_start: usize,
    rx_end: usize,
    hdr: [u8; MAX_HEADER_BUF],
    hdr_have: usize,
    state: Rx,
    tx: TxQueue,
    /// Completions that became deliverable while flushing.
    ready: Vec<Completion>,
    in_flight: usize,
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

impl<S: Stream> Qpair<S> {
    /// A queue pair over `s` once ICReq/ICResp settled `p`.
    pub fn new(s: S, peer: SocketAddr, p: Negotiated, cfg: QpairConfig) -> Qpair<S> {
        let depth = usize::from(cfg.depth.max(1));
        let cfg = QpairConfig {
            depth: depth as u16,
            buf_len: round_up(cfg.buf_len.max(1), 4096),
            ..cfg
        };
        let data = vec![0u8; depth * cfg.buf_len + 4096];
        let data_base = data.as_ptr().align_offset(4096).min(4096);
        Qpair {
            s,
            peer,
            qid: 0,
            p,
            cfg,
            slots: vec![Slot::default(); depth],
            free: (0..depth as u16).rev().collect(),
            data,
            data_base,
            rx: vec![0u8; RX_BUF].into_boxed_slice(),
            rx_start: 0,
            rx_end: 0,
            hdr: [0u8; MAX_HEADER_BUF],
            hdr_have: 0,
            state: Rx::Ch,
            // Per command at most: capsule header, data, digest, and per MAXH2CDATA
            // chunk of an R2T'd write an H2CData header, data and digest.
            tx: TxQueue::new(
                depth * (3 + 3 * cfg.buf_len.div_ceil(p.maxh2cdata.max(4096) as usize)) + 16,
            ),
            ready: Vec::with_capacity(depth),
            in_flight: 0,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }

    pub fn negotiated(&self) -> Negotiated {
        self.p
    }

    pub fn depth(&self) -> u16 {
        self.cfg.depth
    }

    /// Completions waiting for the next [`Qpair::poll`] that arrived while flushing
    /// (no socket event will announce them).
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Commands submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// A free command id, if any.
    pub fn alloc(&mut self) -> Option<u16> {
        let cid = self.free.pop()?;
        self.slots[usize::from(cid)].state = SlotState::Reserved;
        Some(cid)
    }

    fn buf_range(&self, cid: u16) -> std::ops::Range<usize> {
        let start = self.data_base + usize::from(cid) * self.cfg.buf_len;
        start..start + self.cfg.buf_len
    }

    /// Command `cid`'s data buffer (`buf_len` bytes, 4096-aligned).
    pub fn buf(&self, cid: u16) -> &[u8] {
        &self.data[self.buf_range(cid)]
    }

    /// Command `cid`'s data buffer, to fill before a write is submitted.
    pub fn buf_mut(&mut self, cid: u16) -> &mut [u8] {
        let r = self.buf_range(cid);
        &mut self.data[r]
    }

    fn err_protocol(&self, msg: String) -> InitiatorError {
        InitiatorError::Protocol {
            addr: self.peer,
            qid: self.qid,
            msg,
        }
    }

    /// Queues command `cid` (from [`Qpair::alloc`]); `len` data bytes move in
    /// direction `dir` through the command's buffer. Sets the CID and the SGL.
    pub fn submit(
        &mut self,
        cid: u16,
        mut sqe: Sqe,
        dir: Dir,
        len: u32,
    ) -> Result<(), InitiatorError> {
        let i = usize::from(cid);
        if self.slots.get(i).map(|s| s.state) != Some(SlotState::Reserved) {
            return Err(self.err_protocol(format!(
                "command id {cid} submitted without being allocated"
            )));
        }
        if len as usize > self.cfg.buf_len {
            return Err(self.err_protocol(format!(
                "a {len}-byte transfer does not fit the {}-byte command buffers",
                self.cfg.buf_len
            )));
        }
        sqe.cid = cid;
        let in_capsule =
            dir == Dir::Write && len > 0 && len <= self.cfg.in_capsule_max && !self.cfg.force_r2t;
        let sgl = if in_capsule {
            SglDescriptor::in_capsule(0, len)
        } else {
            SglDescriptor::transport(if dir == Dir::None { 0 } else { len })
        };
        sqe.set_sgl(&sgl);
        let mut h = [0u8; INLINE_MAX];
        let hl = pdu::encode_capsule_cmd_header(
            &sqe,
            self.p.hdgst,
            self.p.ddgst,
            if in_capsule { len } else { 0 },
            self.p.cpda,
            &mut h,
        );
        self.tx.push_header(h, hl);
        let mut refs = 0;
        if in_capsule {
            self.tx.push_data(cid, 0, len);
            refs = 1;
            if self.p.ddgst {
                let crc = pdu::crc32c(&self.buf(cid)[..len as usize]);
                self.tx.push_bytes(&pdu::digest_bytes(crc));
            }
        }
        self.slots[i] = Slot {
            state: SlotState::InFlight,
            dir,
            len,
            in_capsule,
            c2h_received: 0,
            r2t_end: 0,
            digest_error: false,
            tx_refs: refs,
            parked: None,
        };
        self.in_flight += 1;
        Ok(())
    }

    /// Writes what the send queue holds, as far as the socket takes it.
    pub fn flush(&mut self) -> Result<(), InitiatorError> {
        while !self.tx.is_empty() {
            let res = {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let (data, base, len) = (&self.data, self.data_base, self.cfg.buf_len);
                let n = self.tx.gather(&mut iov, &|cid| {
                    let s = base + usize::from(cid) * len;
                    &data[s..s + len]
                });
                self.s.write_vectored(&iov[..n])
            };
            match res {
                Ok(0) => return Err(InitiatorError::Closed { addr: self.peer }),
                Ok(n) => {
                    let (slots, free, ready) = (&mut self.slots, &mut self.free, &mut self.ready);
                    let in_flight = &mut self.in_flight;
                    self.tx.advance(n, &mut |cid| {
                        let s = &mut slots[usize::from(cid)];
                        s.tx_refs -= 1;
                        if s.tx_refs == 0 && s.state == SlotState::Parked {
                            if let Some(c) = s.parked.take() {
                                ready.push(c);
                            }
                            s.state = SlotState::Free;
                            free.push(cid);
                            *in_flight -= 1;
                        }
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(InitiatorError::io(self.peer, e)),
            }
        }
        Ok(())
    }

    /// Reads what the socket holds and appends every command it completes to `out`.
    pub fn poll(&mut self, out: &mut Vec<Completion>) -> Result<(), InitiatorError> {
        out.append(&mut self.ready);
        let mut budget = RX_BUDGET;
        loop {
            if self.rx_start == self.rx_end {
                self.rx_start = 0;
                self.rx_end = 0;
                if budget == 0 {
                    return Ok(());
                }
                let (res, asked) = if let Rx::Data {
                    sink, off, left, ..
                } = self.state
                {
                    // The rest of this payload straight into the command's buffer, what
                    // follows it into the staging buffer.
                    let s = self.data_base + usize::from(sink.cid) * self.cfg.buf_len;
                    let direct = &mut self.data[s + off as usize..s + (off + left) as usize];
                    let mut iov = [IoSliceMut::new(direct), IoSliceMut::new(&mut self.rx)];
                    (self.s.read_vectored(&mut iov), left as usize + RX_BUF)
                } else {
                    (self.s.read(&mut self.rx), RX_BUF)
                };
                let n = match res {
                    Ok(0) => return Err(InitiatorError::Closed { addr: self.peer }),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(InitiatorError::io(self.peer, e)),
                };
                budget = budget.saturating_sub(n);
                let staged = match self.state {
                    Rx::Data { left, .. } => {
                        let k = n.min(left as usize);
                        self.data_landed(k, out)?;
                        n - k
                    }
                    _ => n,
                };
                self.rx_end = staged;
                self.consume(out)?;
                if n < asked {
                    // The socket is drained: another read would only say so.
                    return Ok(());
                }
                continue;
            }
            self.consume(out)?;
        }
    }

    /// Advances the receive state machine over the staged bytes.
    fn consume(&mut self, out: &mut Vec<Completion>) -> Result<(), InitiatorError> {
        while self.rx_start < self.rx_end {
            let avail = self.rx_end - self.rx_start;
            match self.state {
                Rx::Ch => {
                    let n = (COMMON_HEADER_SIZE - self.hdr_have).min(avail);
                    self.take_hdr(n);
                    if self.hdr_have == COMMON_HEADER_SIZE {
                        self.on_common_header()?;
                    }
                }
                Rx::Hdr { ch, t } => {
                    let need = ch.header_end() as usize;
                    let n = (need - self.hdr_have).min(avail);
                    self.take_hdr(n);
                    if self.hdr_have == need {
                        self.on_header(ch, t, out)?;
                    }
                }
                Rx::Pad {
                    left,
                    sink,
                    data,
                    ddgst,
                } => {
                    let n = (left as usize).min(avail);
                    self.rx_start += n;
                    let left = left - n as u32;
                    self.state = if left > 0 {
                        Rx::Pad {
                            left,
                            sink,
                            data,
                            ddgst,
                        }
                    } else {
                        Rx::Data {
                            sink,
                            off: sink.end - data,
                            left: data,
                            ddgst,
                            crc: 0,
                        }
                    };
                }
                Rx::Data {
                    sink, off, left, ..
                } => {
                    let n = (left as usize).min(avail);
                    let s = self.data_base + usize::from(sink.cid) * self.cfg.buf_len;
                    self.data[s + off as usize..s + off as usize + n]
                        .copy_from_slice(&self.rx[self.rx_start..self.rx_start + n]);
                    self.rx_start += n;
                    self.data_landed(n, out)?;
                }
                Rx::Ddgst {
                    sink,
                    have,
                    crc,
                    mut digest,
                } => {
                    let n = (DIGEST_SIZE - usize::from(have)).min(avail);
                    digest[usize::from(have)..usize::from(have) + n]
                        .copy_from_slice(&self.rx[self.rx_start..self.rx_start + n]);
                    self.rx_start += n;
                    let have = have + n as u8;
                    if usize::from(have) < DIGEST_SIZE {
                        self.state = Rx::Ddgst {
                            sink,
                            have,
                            crc,
                            digest,
                        };
                    } else {
                        self.next_pdu();
                        self.pdu_done(sink, pdu::digest_bytes(crc) == digest, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn take_hdr(&mut self, n: usize) {
        self.hdr[self.hdr_have..self.hdr_have + n]
            .copy_from_slice(&self.rx[self.rx_start..self.rx_start + n]);
        self.hdr_have += n;
        self.rx_start += n;
    }

    fn next_pdu(&mut self) {
        self.state = Rx::Ch;
        self.hdr_have = 0;
    }

    fn on_common_header(&mut self) -> Result<(), InitiatorError> {
        let mut b = [0u8; COMMON_HEADER_SIZE];
        b.copy_from_slice(&self.hdr[..COMMON_HEADER_SIZE]);
        let ch = CommonHeader::parse(&b);
        let t = pdu::validate_header_for(Role::Host, &ch, self.p.hdgst, self.p.ddgst, 0, 0)
            .map_err(|e| {
                self.err_protocol(format!(
                    "invalid PDU header {:02x?} (error {:#x} at byte {})",
                    &b, e.fes, e.fei
                ))
            })?;
        if t != PduType::C2HTermReq {
            pdu::check_pdo_alignment(&ch, HPDA).map_err(|_| {
                self.err_protocol(format!("PDU data offset {} breaks our alignment", ch.pdo))
            })?;
        }
        self.state = Rx::Hdr { ch, t };
        Ok(())
    }

    fn on_header(
        &mut self,
        ch: CommonHeader,
        t: PduType,
        out: &mut Vec<Completion>,
    ) -> Result<(), InitiatorError> {
        let hlen = usize::from(ch.hlen);
        if ch.hdgst_len() != 0 && t.digests_apply() {
            let mut d = [0u8; DIGEST_SIZE];
            d.copy_from_slice(&self.hdr[hlen..hlen + DIGEST_SIZE]);
            if !pdu::header_digest_ok(&self.hdr[..hlen], &d) {
                return Err(self.err_protocol(format!(
                    "header digest error in a {t:?} PDU (data corrupted on the way)"
                )));
            }
        }
        match t {
            PduType::CapsuleResp => {
                let mut h = [0u8; pdu::CAPSULE_RESP_HLEN];
                h.copy_from_slice(&self.hdr[..pdu::CAPSULE_RESP_HLEN]);
                let cqe = pdu::capsule_resp_cqe(&h);
                self.next_pdu();
                self.complete(cqe, out)
            }
            PduType::C2HData => self.on_c2h_data(ch),
            PduType::R2T => {
                let r = pdu::R2t::parse(&self.hdr[..pdu::R2T_HLEN]);
                self.next_pdu();
                self.on_r2t(r)
            }
            PduType::C2HTermReq => {
                let tr = pdu::TermReq::parse(&self.hdr[..hlen]);
                Err(InitiatorError::Terminated {
                    addr: self.peer,
                    qid: self.qid,
                    fes: tr.fes,
                    fei: tr.fei,
                })
            }
            other => Err(self.err_protocol(format!("unexpected {other:?} PDU"))),
        }
    }

    fn slot_in_flight(&self, cid: u16, what: &str) -> Result<Slot, InitiatorError> {
        match self.slots.get(usize::from(cid)) {
            Some(s) if s.state == SlotState::InFlight => Ok(*s),
            _ => Err(self.err_protocol(format!(
                "{what} for command id {cid}, which is not outstanding"
            ))),
        }
    }

    fn on_c2h_data(&mut self, ch: CommonHeader) -> Result<(), InitiatorError> {
        let h = DataHeader::parse(&self.hdr[..pdu::DATA_HLEN]);
        h.check_len(&ch).map_err(|_| {
            self.err_protocol(format!("C2HData DATAL {} disagrees with PLEN", h.datal))
        })?;
        let s = self.slot_in_flight(h.cccid, "C2HData")?;
        let end = u64::from(h.datao) + u64::from(h.datal);
        if s.dir != Dir::Read || h.datao != s.c2h_received || end > u64::from(s.len) {
            return Err(self.err_protocol(format!(
                "C2HData for command id {} at offset {} ({} bytes) does not fit its {}-byte read ({} received)",
                h.cccid, h.datao, h.datal, s.len, s.c2h_received
            )));
        }
        let last = ch.flags & flags::DATA_LAST != 0;
        let success = ch.flags & flags::DATA_SUCCESS != 0;
        if success && (!last || end != u64::from(s.len)) {
            return Err(self.err_protocol(format!(
                "C2HData SUCCESS for command id {} before all its data",
                h.cccid
            )));
        }
        let sink = Sink {
            cid: h.cccid,
            end: end as u32,
            success,
        };
        let data = ch.data_len();
        let ddgst = ch.ddgst_len() != 0;
        let pad = ch.padding_len();
        self.state = if pad > 0 {
            Rx::Pad {
                left: pad,
                sink,
                data,
                ddgst,
            }
        } else {
            Rx::Data {
                sink,
                off: h.datao,
                left: data,
                ddgst,
                crc: 0,
            }
        };
        Ok(())
    }

    fn on_r2t(&mut self, r: pdu::R2t) -> Result<(), InitiatorError> {
        let s = self.slot_in_flight(r.cccid, "R2T")?;
        let end = u64::from(r.r2to) + u64::from(r.r2tl);
        if s.dir != Dir::Write
            || s.in_capsule
            || r.r2tl == 0
            || r.r2to != s.r2t_end
            || end > u64::from(s.len)
        {
            return Err(self.err_protocol(format!(
                "R2T for command id {} asks for {} bytes at {} of a {}-byte write ({} asked before)",
                r.cccid, r.r2tl, r.r2to, s.len, s.r2t_end
            )));
        }
        let end = end as u32;
        let mut off = r.r2to;
        let mut refs = 0u16;
        while off < end {
            let n = (end - off).min(self.p.maxh2cdata);
            let mut h = [0u8; INLINE_MAX];
            let hl = pdu::encode_h2c_data_header(
                &DataHeader {
                    cccid: r.cccid,
                    ttag: r.ttag,
                    datao: off,
                    datal: n,
                },
                off + n == end,
                self.p.hdgst,
                self.p.ddgst,
                self.p.cpda,
                &mut h,
            );
            self.tx.push_header(h, hl);
            self.tx.push_data(r.cccid, off, n);
            refs += 1;
            if self.p.ddgst {
                let crc = pdu::crc32c(&self.buf(r.cccid)[off as usize..(off + n) as usize]);
                self.tx.push_bytes(&pdu::digest_bytes(crc));
            }
            off += n;
        }
        let slot = &mut self.slots[usize::from(r.cccid)];
        slot.tx_refs += refs;
        slot.r2t_end = end;
        Ok(())
    }

    /// `n` more payload bytes are in the command's buffer at the current offset (read
    /// there directly or copied from the staging buffer): digest them and move on.
    fn data_landed(&mut self, n: usize, out: &mut Vec<Completion>) -> Result<(), InitiatorError> {
        let Rx::Data {
            sink,
            off,
            left,
            ddgst,
            crc,
        } = self.state
        else {
            return Ok(());
        };
        let at = self.data_base + usize::from(sink.cid) * self.cfg.buf_len + off as usize;
        let crc = if ddgst {
            pdu::crc32c_append(crc, &self.data[at..at + n])
        } else {
            crc
        };
        let n = n as u32;
        self.state = Rx::Data {
            sink,
            off: off + n,
            left: left - n,
            ddgst,
            crc,
        };
        if n == left {
            self.payload_done(out)?;
        }
        Ok(())
    }

    fn payload_done(&mut self, out: &mut Vec<Completion>) -> Result<(), InitiatorError> {
        let Rx::Data {
            sink, ddgst, crc, ..
        } = self.state
        else {
            return Ok(());
        };
        if ddgst {
            self.state = Rx::Ddgst {
                sink,
                have: 0,
                crc,
                digest: [0; DIGEST_SIZE],
            };
            Ok(())
        } else {
            self.next_pdu();
            self.pdu_done(sink, true, out)
        }
    }

    fn pdu_done(
        &mut self,
        sink: Sink,
        digest_ok: bool,
        out: &mut Vec<Completion>,
    ) -> Result<(), InitiatorError> {
        let s = &mut self.slots[usize::from(sink.cid)];
        s.c2h_received = sink.end;
        if !digest_ok {
            s.digest_error = true;
        }
        if sink.success {
            self.complete(Cqe::new(sink.cid, Status::SUCCESS), out)?;
        }
        Ok(())
    }

    fn complete(&mut self, cqe: Cqe, out: &mut Vec<Completion>) -> Result<(), InitiatorError> {
        let s = self.slot_in_flight(cqe.cid, "a response")?;
        if cqe.status.is_success()
            && s.dir == Dir::Read
            && s.c2h_received != s.len
            && !s.digest_error
        {
            return Err(self.err_protocol(format!(
                "command id {} completed with {} of its {} bytes of read data",
                cqe.cid, s.c2h_received, s.len
            )));
        }
        let c = Completion {
            cid: cqe.cid,
            status: cqe.status,
            dw0: cqe.dw0,
            dw1: cqe.dw1,
            digest_error: s.digest_error,
        };
        let slot = &mut self.slots[usize::from(cqe.cid)];
        if slot.tx_refs > 0 {
            // The target answered before all our data went out (it failed the command
            // early): the buffer stays ours until the send queue is past it.
            slot.state = SlotState::Parked;
            slot.parked = Some(c);
        } else {
            slot.state = SlotState::Free;
            self.free.push(cqe.cid);
            self.in_flight -= 1;
            out.push(c);
        }
        Ok(())
    }
}

mod connect;

#[cfg(test)]
mod tests;
