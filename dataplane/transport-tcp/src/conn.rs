//! One NVMe/TCP connection (one queue pair), the controller end: what each PDU means
//! to the target (commands, R2T-driven writes, termination), the response path, and
//! orderly or fatal close. The framing (receive state machine, send queue, PDU
//! assembly) is `lightpool_tcp_framing`'s; this is its [`Owner`]. Generic over
//! [`Stream`] so tests can feed it bytes split and coalesced in every way without a
//! socket.

use std::time::{Duration, Instant};

use lightpool_nvmf::queue::QueueState;
use lightpool_nvmf::{NvmfQueue, Target, Xfer};
use lightpool_spec::nvme::{Cqe, Sqe};
use lightpool_spec::status::Status;
use lightpool_spec::tcp::{fes, DataHeader, IcReq, IcResp, PduType, R2t, Role, TermError};
use lightpool_tcp_framing::{
    Flow, Next, Owner, Pdu, Receiver, RxConfig, RxError, SendParams, TxBuffers, TxQueue, MAX_IOV,
};

use crate::offload::Publisher;
use lightpool_tcp_framing::OffloadCounters;

pub use handover::ConnSnapshot;
pub use lightpool_tcp_framing::Stream;

/// Generic status 22h: Transient Transport Error, what a command whose data digest was
/// wrong completes with (NVMe/TCP: a data digest error is not fatal to the connection).
const TRANSIENT_TRANSPORT_ERROR: u8 = 0x22;
/// Bytes read per receive call into the staging buffer.
const RX_BUF: usize = 64 * 1024;
/// Payload at least this large, with nothing staged, is read straight into the
/// request's buffer.
const DIRECT_READ_MIN: u32 = 8 * 1024;
/// How long a closing connection waits for its last bytes to go out.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Per-request transport state.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct TcpReq {
    /// An R2T went out and H2CData is expected for this request.
    awaiting_h2c: bool,
    /// Bytes of H2C data received so far.
    h2c_received: u32,
}

/// Where the payload of the PDU being received goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    /// In-capsule data of the command in `slot`.
    Capsule { slot: u16 },
    /// H2CData for `slot`; `end` is DATAO + DATAL of this PDU.
    H2c { slot: u16, end: u32 },
    /// Payload of a command already failed: read and dropped.
    Discard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Active,
    /// Sending what is queued, waiting for the block devices, then closing.
    Closing {
        deadline: Option<Instant>,
    },
    Closed,
}

/// Negotiated at ICReq.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct Params {
    initialized: bool,
    hdgst: bool,
    ddgst: bool,
    hpda: u8,
}

/// Maximum H2CData payload per PDU we accept (announced in ICResp).
pub const MAXH2CDATA: u32 = 128 * 1024;

/// How a connection's receiver is set up.
fn rx_config(in_capsule_max: u32) -> RxConfig {
    RxConfig {
        role: Role::Controller,
        // CPDA 0 is announced in ICResp.
        pda: 0,
        maxh2cdata: MAXH2CDATA,
        in_capsule_max,
        staging: RX_BUF,
        // Read until the socket is drained or one buffer's worth was handled, so one
        // busy connection cannot starve the others on this reactor.
        budget: RX_BUF,
        direct_min: DIRECT_READ_MIN,
    }
}

/// One connection.
pub struct Conn<S: Stream> {
    rx: Receiver<Sink>,
    c: Core<S>,
    /// Where its offload counts are published (none in tests that poll it alone).
    offload: Option<Publisher>,
}

/// Everything of a connection but its receiver: what the receiver calls back into.
struct Core<S> {
    s: S,
    q: NvmfQueue<TcpReq>,
    tx: TxQueue,
    p: Params,
    phase: Phase,
    /// Human-readable peer, for logs.
    peer: String,
    /// The output blocked on a full socket buffer (the reactor should wait for EPOLLOUT).
    blocked_on_write: bool,
}

/// The queue's request buffers as the send queue sees them.
struct Slots<'a>(&'a mut NvmfQueue<TcpReq>);

impl TxBuffers for Slots<'_> {
    #[inline]
    fn data(&self, slot: u16) -> &[u8] {
        self.0.c2h_of(slot)
    }
    #[inline]
    fn release(&mut self, slot: u16) {
        self.0.free(slot);
    }
}

impl<S: Stream> Conn<S> {
    /// A connection owned by reactor `reactor`.
    pub fn new(s: S, target: std::sync::Arc<Target>, peer: String, reactor: usize) -> Conn<S> {
        let in_capsule_max = target.opts.in_capsule_data_size;
        Conn {
            rx: Receiver::new(rx_config(in_capsule_max)),
            c: Core {
                s,
                q: NvmfQueue::new(target, reactor),
                tx: TxQueue::new(256),
                p: Params::default(),
                phase: Phase::Active,
                peer,
                blocked_on_write: false,
            },
            offload: None,
        }
    }

    /// Publish this connection's offload counts through `p` from now on.
    pub(crate) fn set_offload(&mut self, p: Publisher) {
        self.offload = Some(p);
    }

    /// The digests its framing computed and checked and how its payload was placed.
    pub fn offload_counters(&self) -> OffloadCounters {
        let mut c = *self.rx.offload();
        c.merge(self.c.tx.offload());
        c
    }

    pub fn is_closed(&self) -> bool {
        self.c.phase == Phase::Closed
    }

    pub fn queue(&self) -> &NvmfQueue<TcpReq> {
        &self.c.q
    }

    /// Human-readable peer, for logs.
    pub fn peer(&self) -> &str {
        &self.c.peer
    }

    /// The output blocked on a full socket buffer (the reactor should wait for EPOLLOUT).
    pub fn blocked_on_write(&self) -> bool {
        self.c.blocked_on_write
    }

    pub fn stream(&self) -> &S {
        &self.c.s
    }

    /// One round of work: receive and execute, reap completions, send. Returns how much
    /// was done (0 = idle).
    pub fn poll(&mut self, now: Instant) -> usize {
        self.poll_ready(now, true)
    }

    /// As [`Conn::poll`], reading the socket only if `readable` (the caller's readiness
    /// set says it holds something; bytes already staged are consumed either way).
    pub fn poll_ready(&mut self, now: Instant, readable: bool) -> usize {
        let mut work = 0;
        let c = &mut self.c;
        match c.phase {
            Phase::Active => {
                if readable || self.rx.has_staged() {
                    let received = self.receive(now);
                    if received > 0 {
                        self.publish_rx();
                    }
                    work += received;
                }
                let c = &mut self.c;
                work += c.q.poll(now);
                work += c.collect_completions();
                work += c.flush();
                match c.q.state() {
                    QueueState::Failed => self.start_close("controller failed"),
                    QueueState::Disconnecting if c.tx.is_empty() => {
                        self.start_close("host disconnected the queue")
                    }
                    _ => {}
                }
            }
            Phase::Closing { deadline } => {
                work += c.q.poll(now);
                // Responses of a closing connection are dropped: the host has given up
                // on this association.
                while let Some(slot) = c.q.next_done() {
                    c.q.free(slot);
                    work += 1;
                }
                let give_up = deadline.is_some_and(|d| now > d);
                if !c.tx.is_empty() && !give_up {
                    work += c.flush();
                }
                if give_up && !c.tx.is_empty() {
                    c.tx.clear(&mut Slots(&mut c.q));
                }
                if c.tx.is_empty() && c.q.bdev_in_flight() == 0 {
                    c.q.close();
                    c.phase = Phase::Closed;
                    work += 1;
                }
                if let Phase::Closing { deadline: None } = c.phase {
                    c.phase = Phase::Closing {
                        deadline: Some(now + CLOSE_LINGER),
                    };
                }
            }
            Phase::Closed => {}
        }
        let closed = self.c.phase == Phase::Closed;
        if work > 0 || closed {
            if let Some(p) = &mut self.offload {
                p.tick(now, closed, self.rx.offload(), self.c.tx.offload());
            }
        }
        work
    }

    /// Whether the connection must keep being polled even without socket events.
    pub fn has_pending_work(&self) -> bool {
        self.c.q.bdev_in_flight() > 0
            || !self.c.tx.is_empty()
            || matches!(self.c.phase, Phase::Closing { .. })
    }

    /// Close the connection (an operator asked): what runs finishes, nothing more is
    /// read, and the socket closes.
    pub fn close(&mut self, why: &str) {
        self.start_close(why);
    }

    fn start_close(&mut self, why: &str) {
        if self.c.phase == Phase::Active {
            tracing::debug!(peer = %self.c.peer, why, "closing connection");
            self.rx.stop();
            self.c.phase = Phase::Closing { deadline: None };
        }
    }

    /// Read and execute what the socket holds.
    fn receive(&mut self, mut now: Instant) -> usize {
        let work = match self.rx.receive(&mut self.c, &mut now) {
            Ok(reads) => reads,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.start_close("peer closed the connection");
                1
            }
            Err(e) => {
                tracing::debug!(peer = %self.c.peer, error = %e, "receive failed");
                self.start_close("receive failed");
                1
            }
        };
        if self.c.phase != Phase::Active {
            self.rx.stop();
        }
        work
    }
}

impl<S: Stream> Owner for Core<S> {
    type Sink = Sink;
    type Stream = S;
    type Ctx = Instant;

    #[inline]
    fn stream(&mut self) -> &mut S {
        &mut self.s
    }

    #[inline]
    fn payload_buf(&mut self, sink: Sink, end: u32) -> (&mut S, Option<&mut [u8]>) {
        match sink {
            Sink::Capsule { slot } | Sink::H2c { slot, .. } => {
                (&mut self.s, Some(self.q.req(slot).buf_mut(end as usize)))
            }
            Sink::Discard => (&mut self.s, None),
        }
    }

    #[inline(always)]
    fn on_pdu(&mut self, now: &mut Instant, pdu: &Pdu, header: &[u8]) -> Next<Sink> {
        match pdu {
            Pdu::Command { sqe, data_len } => self.on_capsule(sqe, *data_len, header, *now),
            Pdu::H2CData { h, last } => self.on_h2c_data(h, *last, header),
            Pdu::IcReq(req) => self.on_icreq(req),
            Pdu::TermReq(tr) => {
                tracing::warn!(peer = %self.peer, fes = tr.fes, fei = tr.fei, "host terminated the connection");
                self.phase = Phase::Closing { deadline: None };
                Next::Stop
            }
            // The receiver delivers only what a controller receives.
            Pdu::IcResp(_) | Pdu::Response(_) | Pdu::C2HData { .. } | Pdu::R2T(_) => {
                self.terminate(TermError::invalid_field(0), header);
                Next::Stop
            }
        }
    }

    /// A whole in-capsule write, no digest, staged in full: a RAM namespace takes it
    /// from there, without the copy into the request.
    #[inline]
    fn take_staged(&mut self, now: &mut Instant, sink: Sink, off: u32, data: &[u8]) -> bool {
        match sink {
            Sink::Capsule { slot } if off == 0 => {
                self.q.execute_write_from(slot, data, *now).is_some()
            }
            _ => false,
        }
    }

    fn on_payload(&mut self, now: &mut Instant, sink: Sink, digest_ok: bool) -> Flow {
        match sink {
            Sink::Discard => {
                // A failed command's response is already queued.
            }
            Sink::Capsule { slot } => {
                if digest_ok {
                    self.q.execute(slot, *now);
                } else {
                    tracing::warn!(peer = %self.peer, "data digest error in a command capsule");
                    self.q
                        .finish(slot, Status::generic(TRANSIENT_TRANSPORT_ERROR));
                }
            }
            Sink::H2c { slot, end } => {
                let r = self.q.req(slot);
                r.tr.h2c_received = end;
                let len = match r.xfer {
                    Xfer::H2C { len, .. } => len,
                    _ => 0,
                };
                if !digest_ok {
                    tracing::warn!(peer = %self.peer, "data digest error in H2CData");
                    r.tr.awaiting_h2c = false;
                    self.q
                        .finish(slot, Status::generic(TRANSIENT_TRANSPORT_ERROR));
                } else if r.tr.h2c_received == len {
                    r.tr.awaiting_h2c = false;
                    self.q.execute(slot, *now);
                }
            }
        }
        Flow::Continue
    }

    fn on_error(&mut self, _now: &mut Instant, e: RxError, header: &[u8]) {
        tracing::debug!(peer = %self.peer, error = %e, "refusing what the host sent");
        self.terminate(e.term(), header);
    }
}

impl<S: Stream> Core<S> {
    /// Fatal transport error: C2HTermReq with the offending header, then close.
    fn terminate(&mut self, e: TermError, header: &[u8]) {
        tracing::warn!(peer = %self.peer, fes = e.fes, fei = e.fei, "fatal transport error: terminating the connection");
        self.tx.push_term_req(PduType::C2HTermReq, e, header);
        self.phase = Phase::Closing { deadline: None };
    }

    fn on_icreq(&mut self, req: &IcReq) -> Next<Sink> {
        self.p = Params {
            initialized: true,
            hdgst: req.hdgst,
            ddgst: req.ddgst,
            hpda: req.hpda,
        };
        let resp = IcResp {
            pfv: 0,
            cpda: 0,
            hdgst: req.hdgst,
            ddgst: req.ddgst,
            maxh2cdata: MAXH2CDATA,
        };
        self.tx.push_bytes(&resp.encode());
        Next::Done
    }

    #[inline(always)]
    fn on_capsule(&mut self, sqe: &Sqe, incapsule: u32, header: &[u8], now: Instant) -> Next<Sink> {
        let slot = match self.q.alloc(sqe) {
            Some(s) => Some(s),
            None => {
                // Responses written but not yet sent still hold slots: send them first.
                self.collect_completions();
                self.flush();
                if self.phase != Phase::Active {
                    return Next::Stop;
                }
                self.q.alloc(sqe)
            }
        };
        let Some(slot) = slot else {
            tracing::warn!(peer = %self.peer, "host exceeded the queue depth it connected with");
            self.terminate(
                TermError {
                    fes: fes::PDU_SEQUENCE_ERROR,
                    fei: 0,
                },
                header,
            );
            return Next::Stop;
        };
        let prepared = self.q.prepare(slot, incapsule);
        if incapsule > 0 {
            // The buffer is sized when the first byte lands in it (or never, when a RAM
            // namespace takes the data from the staging buffer).
            let sink = if prepared.is_ok() {
                Sink::Capsule { slot }
            } else {
                Sink::Discard
            };
            return Next::Payload { sink, off: 0 };
        }
        match prepared {
            Ok(Xfer::H2C {
                len,
                in_capsule: false,
            }) => {
                let r = self.q.req(slot);
                r.tr.awaiting_h2c = true;
                r.tr.h2c_received = 0;
                // The whole buffer now: each H2CData PDU fills its part of it.
                r.buf_mut(len as usize);
                let r2t = R2t {
                    cccid: sqe.cid,
                    ttag: slot,
                    r2to: 0,
                    r2tl: len,
                };
                self.tx.push_r2t(&r2t, self.p.hdgst);
            }
            Ok(_) => {
                self.q.execute(slot, now);
            }
            Err(_) => {}
        }
        Next::Done
    }

    fn on_h2c_data(&mut self, h: &DataHeader, last: bool, header: &[u8]) -> Next<Sink> {
        let Some(r) = self.q.try_req(h.ttag).filter(|r| r.tr.awaiting_h2c) else {
            self.terminate(TermError::invalid_field(10), header);
            return Next::Stop;
        };
        if r.sqe.cid != h.cccid {
            self.terminate(TermError::invalid_field(8), header);
            return Next::Stop;
        }
        let len = match r.xfer {
            Xfer::H2C { len, .. } => len,
            _ => 0,
        };
        if h.datao != r.tr.h2c_received || u64::from(h.datao) + u64::from(h.datal) > u64::from(len)
        {
            let e = TermError {
                fes: fes::DATA_TRANSFER_OUT_OF_RANGE,
                fei: 12,
            };
            self.terminate(e, header);
            return Next::Stop;
        }
        if last != (h.datao + h.datal == len) {
            self.terminate(TermError::invalid_field(1), header);
            return Next::Stop;
        }
        Next::Payload {
            sink: Sink::H2c {
                slot: h.ttag,
                end: h.datao + h.datal,
            },
            off: h.datao,
        }
    }

    /// Queue the data and response of every finished request.
    fn collect_completions(&mut self) -> usize {
        let mut n = 0;
        while let Some(slot) = self.q.next_done() {
            n += 1;
            let sq_flow_disabled = self.q.sq_flow_disabled();
            let r = self.q.req(slot);
            let cqe: Cqe = r.cqe;
            let data_len = if cqe.status.is_success() && matches!(r.xfer, Xfer::C2H { .. }) {
                r.c2h_len
            } else {
                0
            };
            if r.tr.awaiting_h2c {
                // Failed before its data arrived: H2CData still on the way would name a
                // tag we no longer honour, which is a fatal error for the host's stream.
                r.tr.awaiting_h2c = false;
            }
            let mut resp_needed = true;
            if data_len > 0 {
                let success = sq_flow_disabled;
                let h = DataHeader {
                    cccid: cqe.cid,
                    ttag: 0,
                    datao: 0,
                    datal: data_len,
                };
                let p = SendParams {
                    hdgst: self.p.hdgst,
                    ddgst: self.p.ddgst,
                    pda: self.p.hpda,
                };
                let r = &*r;
                self.tx
                    .push_c2h_data(&h, true, success, p, (slot, 0), || r.c2h_data());
                resp_needed = !success;
            }
            if resp_needed {
                self.tx.push_resp(&cqe, self.p.hdgst);
            }
            self.tx.push_release(slot);
        }
        n
    }

    /// Write as much as the socket takes.
    fn flush(&mut self) -> usize {
        match self
            .tx
            .send::<MAX_IOV, _, _>(&mut self.s, &mut Slots(&mut self.q))
        {
            Ok(sent) => {
                self.blocked_on_write = sent.blocked;
                sent.writes
            }
            Err(e) if e.kind() == std::io::ErrorKind::WriteZero => {
                if self.phase == Phase::Active {
                    tracing::debug!(peer = %self.peer, why = "send returned zero", "closing connection");
                    self.phase = Phase::Closing { deadline: None };
                }
                0
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "send failed");
                self.tx.clear(&mut Slots(&mut self.q));
                self.phase = Phase::Closing { deadline: None };
                0
            }
        }
    }
}

mod handover;
#[cfg(test)]
mod tests;
