//! One NVMe/TCP queue pair seen from the host: command submission (in-capsule or
//! R2T-driven writes), what each PDU from the controller means (ICResp, response
//! capsules, C2HData, R2T, termination) and orderly disconnect. The framing (receive
//! state machine, send queue, PDU assembly) is `lightpool_tcp_framing`'s, the same the
//! target runs; this is its [`Owner`] for the host end.
//!
//! Built for load generation: the command slab, data buffers, receive buffer and send
//! queue are allocated once at connect; a poll reads everything the socket holds with
//! one call (straight into the command's buffer while a C2HData payload is being
//! received, the next PDUs into the staging buffer behind it), and a flush writes every
//! queued PDU with one `writev`. The command id is the slab index.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use lightpool_spec::nvme::{Cqe, SglDescriptor, Sqe};
use lightpool_spec::status::Status;
use lightpool_spec::tcp::{self as pdu, IcResp, Role, MAX_PDA, PFV_1_0};
use lightpool_tcp_framing::{
    Digests, Flow, Next, Owner, Pdu, Receiver, RxConfig, RxError, SendParams, TxBuffers, TxQueue,
};

pub use lightpool_tcp_framing::Stream;

use super::InitiatorError;

/// Staging buffer for received bytes: big enough to take every response of a deep
/// queue of small reads in one call.
const RX_BUF: usize = 256 * 1024;
/// Bytes one poll reads at most before it lets the other queue pairs of its core run.
const RX_BUDGET: usize = 4 * RX_BUF;
/// iovecs per `writev`.
const MAX_IOV: usize = 256;
/// Read timeout of a socket in blocking mode (admin commands, connect, disconnect):
/// how often a waiting caller gets to look at its deadline.
const BLOCKING_SLICE: Duration = Duration::from_millis(50);
/// HPDA we announce: PDUs to us may put data right after the header.
const HPDA: u8 = 0;

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
    /// Releases queued in the send queue for this command's data buffer.
    tx_refs: u16,
    parked: Option<Completion>,
    /// The caller's buffer (`submit_external`) instead of the slab's.
    ext: Option<ExtBuf>,
}

/// A caller's data buffer: start and length.
#[derive(Clone, Copy, Debug)]
struct ExtBuf(std::ptr::NonNull<u8>, usize);

// SAFETY: the queue pair dereferences it only from the thread that owns the queue pair;
// `submit_external`'s caller keeps the memory valid and unshared until the command
// completes, wherever the queue pair is then.
unsafe impl Send for ExtBuf {}

/// Where the payload of the PDU being received goes: C2HData of `cid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sink {
    cid: u16,
    /// DATAO + DATAL of this PDU.
    end: u32,
    /// C2HData SUCCESS: the command completes with this PDU, no response follows.
    success: bool,
}

/// The command slab: slots and their data buffers.
struct Slab {
    slots: Vec<Slot>,
    free: Vec<u16>,
    /// Data buffers, `buf_len` bytes per command from `data_base` (4096-aligned).
    data: Vec<u8>,
    data_base: usize,
    buf_len: usize,
    /// Completions that became deliverable while flushing.
    ready: Vec<Completion>,
    in_flight: usize,
}

impl Slab {
    fn range(&self, cid: u16) -> std::ops::Range<usize> {
        let start = self.data_base + usize::from(cid) * self.buf_len;
        start..start + self.buf_len
    }

    fn buf(&self, cid: u16) -> &[u8] {
        if let Some(ExtBuf(p, n)) = self.slots[usize::from(cid)].ext {
            // SAFETY: `submit_external`'s caller keeps `p..p+n` valid and untouched by
            // anyone else until the command's completion is returned.
            return unsafe { std::slice::from_raw_parts(p.as_ptr(), n) };
        }
        &self.data[self.range(cid)]
    }

    fn buf_mut(&mut self, cid: u16) -> &mut [u8] {
        if let Some(ExtBuf(p, n)) = self.slots[usize::from(cid)].ext {
            // SAFETY: as in `buf`; `&mut self` makes this the only view through the slab.
            return unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), n) };
        }
        let r = self.range(cid);
        &mut self.data[r]
    }
}

impl TxBuffers for Slab {
    #[inline]
    fn data(&self, cid: u16) -> &[u8] {
        self.buf(cid)
    }

    /// A command's data is on the wire: a command the target answered early may be
    /// delivered now.
    #[inline]
    fn release(&mut self, cid: u16) {
        let s = &mut self.slots[usize::from(cid)];
        s.tx_refs -= 1;
        if s.tx_refs == 0 && s.state == SlotState::Parked {
            if let Some(c) = s.parked.take() {
                self.ready.push(c);
            }
            s.state = SlotState::Free;
            self.free.push(cid);
            self.in_flight -= 1;
        }
    }
}

/// One queue pair.
pub struct Qpair<S: Stream = crate::HostStream> {
    rx: Receiver<Sink>,
    c: Core<S>,
}

/// Everything of a queue pair but its receiver: what the receiver calls back into.
struct Core<S> {
    s: S,
    peer: SocketAddr,
    qid: u16,
    /// What was settled (before ICResp: the digests asked for).
    p: Negotiated,
    negotiated: bool,
    cfg: QpairConfig,
    slab: Slab,
    tx: TxQueue,
    /// A fatal error met while receiving, for `poll` to return.
    err: Option<InitiatorError>,
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

fn rx_config() -> RxConfig {
    RxConfig {
        role: Role::Host,
        pda: HPDA,
        maxh2cdata: 0,
        in_capsule_max: 0,
        staging: RX_BUF,
        budget: RX_BUDGET,
        // Any payload met with nothing staged goes straight into the command's buffer.
        direct_min: 1,
    }
}

impl<S: Stream> Qpair<S> {
    /// A queue pair over `s` once ICReq/ICResp settled `p`.
    pub fn new(s: S, peer: SocketAddr, p: Negotiated, cfg: QpairConfig) -> Qpair<S> {
        let digests = Digests {
            header: p.hdgst,
            data: p.ddgst,
        };
        let mut q = Qpair::unconnected(s, peer, p, cfg);
        q.rx = Receiver::connected(rx_config(), digests);
        q.c.negotiated = true;
        q
    }

    /// A queue pair over `s` whose ICReq (asking for `p`'s digests) is on its way:
    /// the first PDU expected is ICResp.
    fn unconnected(s: S, peer: SocketAddr, p: Negotiated, cfg: QpairConfig) -> Qpair<S> {
        let depth = usize::from(cfg.depth.max(1));
        let cfg = QpairConfig {
            depth: depth as u16,
            buf_len: round_up(cfg.buf_len.max(1), 4096),
            ..cfg
        };
        let data = vec![0u8; depth * cfg.buf_len + 4096];
        let data_base = data.as_ptr().align_offset(4096).min(4096);
        // Per command at most: capsule header, data, digest, release, and per
        // MAXH2CDATA chunk of an R2T'd write an H2CData header, data and digest.
        let chunks = cfg.buf_len.div_ceil(p.maxh2cdata.max(4096) as usize);
        Qpair {
            rx: Receiver::new(rx_config()),
            c: Core {
                s,
                peer,
                qid: 0,
                p,
                negotiated: false,
                cfg,
                slab: Slab {
                    slots: vec![Slot::default(); depth],
                    free: (0..depth as u16).rev().collect(),
                    data,
                    data_base,
                    buf_len: cfg.buf_len,
                    ready: Vec::with_capacity(depth),
                    in_flight: 0,
                },
                tx: TxQueue::new(depth * (4 + 3 * chunks) + 16),
                err: None,
            },
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.c.peer
    }

    pub fn qid(&self) -> u16 {
        self.c.qid
    }

    pub fn negotiated(&self) -> Negotiated {
        self.c.p
    }

    pub fn depth(&self) -> u16 {
        self.c.cfg.depth
    }

    /// Completions waiting for the next [`Qpair::poll`] that arrived while flushing
    /// (no socket event will announce them).
    pub fn has_ready(&self) -> bool {
        !self.c.slab.ready.is_empty() || self.c.s.buffered()
    }

    /// Commands submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.c.slab.in_flight
    }

    /// A free command id, if any.
    pub fn alloc(&mut self) -> Option<u16> {
        let cid = self.c.slab.free.pop()?;
        let s = &mut self.c.slab.slots[usize::from(cid)];
        s.state = SlotState::Reserved;
        // The slab's own buffer until `submit_external` says otherwise.
        s.ext = None;
        Some(cid)
    }

    /// Command `cid`'s data buffer (`buf_len` bytes, 4096-aligned).
    pub fn buf(&self, cid: u16) -> &[u8] {
        self.c.slab.buf(cid)
    }

    /// Command `cid`'s data buffer, to fill before a write is submitted.
    pub fn buf_mut(&mut self, cid: u16) -> &mut [u8] {
        self.c.slab.buf_mut(cid)
    }

    /// Queues command `cid` (from [`Qpair::alloc`]); `len` data bytes move in
    /// direction `dir` through the command's buffer. Sets the CID and the SGL.
    pub fn submit(&mut self, cid: u16, sqe: Sqe, dir: Dir, len: u32) -> Result<(), InitiatorError> {
        self.submit_with(cid, sqe, dir, len, None)
    }

    /// As [`Qpair::submit`], with the data in the caller's `buf` (`len` bytes) instead
    /// of the command's slab buffer: a write is sent from it, a read received into it,
    /// with no copy.
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid, and must not be read or written by anyone else,
    /// until this command's completion has been returned by [`Qpair::poll`], or the
    /// queue pair is dropped.
    pub unsafe fn submit_external(
        &mut self,
        cid: u16,
        sqe: Sqe,
        dir: Dir,
        len: u32,
        buf: std::ptr::NonNull<u8>,
    ) -> Result<(), InitiatorError> {
        self.submit_with(cid, sqe, dir, len, Some(ExtBuf(buf, len as usize)))
    }

    fn submit_with(
        &mut self,
        cid: u16,
        mut sqe: Sqe,
        dir: Dir,
        len: u32,
        ext: Option<ExtBuf>,
    ) -> Result<(), InitiatorError> {
        let c = &mut self.c;
        let i = usize::from(cid);
        if c.slab.slots.get(i).map(|s| s.state) != Some(SlotState::Reserved) {
            return Err(c.err_protocol(format!(
                "command id {cid} submitted without being allocated"
            )));
        }
        if ext.is_none() && len as usize > c.cfg.buf_len {
            return Err(c.err_protocol(format!(
                "a {len}-byte transfer does not fit the {}-byte command buffers",
                c.cfg.buf_len
            )));
        }
        sqe.cid = cid;
        let in_capsule =
            dir == Dir::Write && len > 0 && len <= c.cfg.in_capsule_max && !c.cfg.force_r2t;
        let sgl = if in_capsule {
            SglDescriptor::in_capsule(0, len)
        } else {
            SglDescriptor::transport(if dir == Dir::None { 0 } else { len })
        };
        sqe.set_sgl(&sgl);
        // The buffer is the slot's before anything reads it (the capsule's data).
        c.slab.slots[i].ext = ext;
        let data = in_capsule.then(|| (cid, &c.slab.buf(cid)[..len as usize]));
        c.tx.push_capsule(&sqe, c.send_params(), data);
        let mut refs = 0;
        if in_capsule {
            c.tx.push_release(cid);
            refs = 1;
        }
        c.slab.slots[i] = Slot {
            state: SlotState::InFlight,
            dir,
            len,
            in_capsule,
            c2h_received: 0,
            r2t_end: 0,
            digest_error: false,
            tx_refs: refs,
            parked: None,
            ext,
        };
        c.slab.in_flight += 1;
        Ok(())
    }

    /// Writes what the send queue holds, as far as the socket takes it.
    pub fn flush(&mut self) -> Result<(), InitiatorError> {
        self.c.flush()
    }

    /// Reads what the socket holds and appends every command it completes to `out`.
    pub fn poll(&mut self, out: &mut Vec<Completion>) -> Result<(), InitiatorError> {
        out.append(&mut self.c.slab.ready);
        let res = self.rx.receive(&mut self.c, out);
        if let Some(e) = self.c.err.take() {
            return Err(e);
        }
        match res {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(InitiatorError::Closed { addr: self.c.peer })
            }
            Err(e) => Err(InitiatorError::io(self.c.peer, e)),
        }
    }
}

impl<S: Stream> Core<S> {
    fn err_protocol(&self, msg: String) -> InitiatorError {
        InitiatorError::Protocol {
            addr: self.peer,
            qid: self.qid,
            msg,
        }
    }

    fn send_params(&self) -> SendParams {
        SendParams {
            hdgst: self.p.hdgst,
            ddgst: self.p.ddgst,
            pda: self.p.cpda,
        }
    }

    fn flush(&mut self) -> Result<(), InitiatorError> {
        match self.tx.send::<MAX_IOV, _, _>(&mut self.s, &mut self.slab) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WriteZero => {
                Err(InitiatorError::Closed { addr: self.peer })
            }
            Err(e) => Err(InitiatorError::io(self.peer, e)),
        }
    }

    /// Records a fatal error for `poll` and stops the receiver.
    fn fail<K>(&mut self, e: InitiatorError) -> Next<K> {
        self.err = Some(e);
        Next::Stop
    }

    fn slot_in_flight(&self, cid: u16, what: &str) -> Result<Slot, InitiatorError> {
        match self.slab.slots.get(usize::from(cid)) {
            Some(s) if s.state == SlotState::InFlight => Ok(*s),
            _ => Err(self.err_protocol(format!(
                "{what} for command id {cid}, which is not outstanding"
            ))),
        }
    }

    /// The controller's answer to our ICReq: check it and take its parameters.
    fn on_icresp(&mut self, r: &IcResp) -> Result<(), InitiatorError> {
        if r.pfv != PFV_1_0 {
            return Err(
                self.err_protocol(format!("ICResp PDU format version {} is not 1.0", r.pfv))
            );
        }
        if r.cpda > MAX_PDA {
            return Err(self.err_protocol(format!("ICResp CPDA {} is out of range", r.cpda)));
        }
        if r.maxh2cdata < 4096 || !r.maxh2cdata.is_multiple_of(4) {
            return Err(self.err_protocol(format!("ICResp MAXH2CDATA {} is invalid", r.maxh2cdata)));
        }
        for (asked, got, what) in [
            (self.p.hdgst, r.hdgst, "header"),
            (self.p.ddgst, r.ddgst, "data"),
        ] {
            if asked != got {
                return Err(InitiatorError::Unsupported(format!(
                    "{}: {what} digests {} by the target",
                    self.peer,
                    if asked {
                        "were refused"
                    } else {
                        "were turned on unasked"
                    }
                )));
            }
        }
        self.p = Negotiated {
            hdgst: r.hdgst,
            ddgst: r.ddgst,
            cpda: r.cpda,
            maxh2cdata: r.maxh2cdata,
        };
        self.negotiated = true;
        Ok(())
    }

    #[inline(always)]
    fn on_c2h_data(
        &mut self,
        h: &pdu::DataHeader,
        last: bool,
        success: bool,
    ) -> Result<Next<Sink>, InitiatorError> {
        let s = self.slot_in_flight(h.cccid, "C2HData")?;
        let end = u64::from(h.datao) + u64::from(h.datal);
        if s.dir != Dir::Read || h.datao != s.c2h_received || end > u64::from(s.len) {
            return Err(self.err_protocol(format!(
                "C2HData for command id {} at offset {} ({} bytes) does not fit its {}-byte read ({} received)",
                h.cccid, h.datao, h.datal, s.len, s.c2h_received
            )));
        }
        if success && (!last || end != u64::from(s.len)) {
            return Err(self.err_protocol(format!(
                "C2HData SUCCESS for command id {} before all its data",
                h.cccid
            )));
        }
        Ok(Next::Payload {
            sink: Sink {
                cid: h.cccid,
                end: end as u32,
                success,
            },
            off: h.datao,
        })
    }

    fn on_r2t(&mut self, r: &pdu::R2t) -> Result<(), InitiatorError> {
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
        let p = self.send_params();
        self.tx
            .push_h2c_for_r2t(r, self.p.maxh2cdata, p, r.cccid, self.slab.buf(r.cccid));
        self.tx.push_release(r.cccid);
        let slot = &mut self.slab.slots[usize::from(r.cccid)];
        slot.tx_refs += 1;
        slot.r2t_end = end as u32;
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
        let slot = &mut self.slab.slots[usize::from(cqe.cid)];
        if slot.tx_refs > 0 {
            // The target answered before all our data went out (it failed the command
            // early): the buffer stays ours until the send queue is past it.
            slot.state = SlotState::Parked;
            slot.parked = Some(c);
        } else {
            slot.state = SlotState::Free;
            self.slab.free.push(cqe.cid);
            self.slab.in_flight -= 1;
            out.push(c);
        }
        Ok(())
    }
}

impl<S: Stream> Owner for Core<S> {
    type Sink = Sink;
    type Stream = S;
    type Ctx = Vec<Completion>;

    #[inline]
    fn stream(&mut self) -> &mut S {
        &mut self.s
    }

    #[inline]
    fn payload_buf(&mut self, sink: Sink, _end: u32) -> (&mut S, Option<&mut [u8]>) {
        (&mut self.s, Some(self.slab.buf_mut(sink.cid)))
    }

    #[inline(always)]
    fn on_pdu(&mut self, out: &mut Vec<Completion>, pdu: &Pdu, _header: &[u8]) -> Next<Sink> {
        let res = match pdu {
            Pdu::Response(cqe) => self.complete(*cqe, out).map(|()| Next::Done),
            Pdu::C2HData { h, last, success } => self.on_c2h_data(h, *last, *success),
            Pdu::R2T(r) => self.on_r2t(r).map(|()| Next::Done),
            Pdu::IcResp(r) => self.on_icresp(r).map(|()| Next::Done),
            Pdu::TermReq(tr) => Err(InitiatorError::Terminated {
                addr: self.peer,
                qid: self.qid,
                fes: tr.fes,
                fei: tr.fei,
            }),
            // The receiver delivers only what a host receives.
            Pdu::IcReq(_) | Pdu::Command { .. } | Pdu::H2CData { .. } => {
                Err(self.err_protocol(format!("unexpected PDU {pdu:?}")))
            }
        };
        res.unwrap_or_else(|e| self.fail(e))
    }

    fn on_payload(&mut self, out: &mut Vec<Completion>, sink: Sink, digest_ok: bool) -> Flow {
        let s = &mut self.slab.slots[usize::from(sink.cid)];
        s.c2h_received = sink.end;
        if !digest_ok {
            s.digest_error = true;
        }
        if sink.success {
            if let Err(e) = self.complete(Cqe::new(sink.cid, Status::SUCCESS), out) {
                self.err = Some(e);
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    fn on_error(&mut self, _out: &mut Vec<Completion>, e: RxError, header: &[u8]) {
        let msg = if !self.negotiated {
            let shown = if header.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
                format!("{:?}", String::from_utf8_lossy(header))
            } else {
                format!("{header:02x?}")
            };
            format!("expected an ICResp but the peer sent {shown}; is this an NVMe/TCP target?")
        } else if let RxError::Header(_) = e {
            let n = header.len().min(pdu::COMMON_HEADER_SIZE);
            format!("{e}: {:02x?}", &header[..n])
        } else {
            e.to_string()
        };
        self.err = Some(self.err_protocol(msg));
    }
}

mod connect;

#[cfg(test)]
mod tests;
