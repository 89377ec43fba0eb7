//! One NVMe/TCP connection (one queue pair): the receive state machine, the response
//! path, and orderly or fatal close. Generic over [`Stream`] so tests can feed it bytes
//! split and coalesced in every way without a socket.

use std::io::{self, IoSlice};
use std::time::{Duration, Instant};

use lightpool_nvmf::queue::QueueState;
use lightpool_nvmf::{NvmfQueue, Target, Xfer};
use lightpool_spec::nvme::Cqe;
use lightpool_spec::status::Status;
use lightpool_spec::tcp::{
    self as tcpspec, fes, CommonHeader, PduType, TermError, COMMON_HEADER_SIZE, DIGEST_SIZE,
};
use lightpool_spec::tcp::{self as pdu, DataHeader, IcReq, IcResp, R2t};

use crate::tx::{TxQueue, MAX_IOV};

pub use handover::ConnSnapshot;

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

/// The byte stream under a connection.
pub trait Stream {
    /// Like `Read::read`: `Ok(0)` is end of stream, `WouldBlock` means nothing yet.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize>;
}

impl Stream for std::net::TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(self, buf)
    }
    fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        io::Write::write_vectored(self, iov)
    }
}

/// Per-request transport state.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct TcpReq {
    /// An R2T went out and H2CData is expected for this request.
    awaiting_h2c: bool,
    /// Bytes of H2C data received so far.
    h2c_received: u32,
}

/// Where the payload of the PDU being received goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Sink {
    /// In-capsule data of the command in `slot`.
    Capsule { slot: u16 },
    /// H2CData for `slot`; `end` is DATAO + DATAL of this PDU.
    H2c { slot: u16, end: u32 },
    /// Payload of a command already failed, or of a TermReq: read and dropped.
    Discard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rx {
    /// Gathering the 8-byte common header.
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
    /// Receiving `left` more payload bytes into `sink` at `off`.
    Data {
        sink: Sink,
        off: u32,
        left: u32,
        ddgst: bool,
        crc: u32,
    },
    /// Gathering the 4-byte data digest.
    Ddgst {
        sink: Sink,
        have: u8,
        crc: u32,
        digest: [u8; 4],
    },
    /// After a fatal error or a TermReq: nothing more is read.
    Dead,
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

/// One connection.
pub struct Conn<S: Stream> {
    s: S,
    q: NvmfQueue<TcpReq>,
    rx: Box<[u8]>,
    rx_start: usize,
    rx_end: usize,
    hdr: [u8; tcpspec::MAX_HEADER_BUF],
    hdr_have: usize,
    state: Rx,
    tx: TxQueue,
    p: Params,
    phase: Phase,
    in_capsule_max: u32,
    /// Human-readable peer, for logs.
    pub peer: String,
    /// The output blocked on a full socket buffer (the reactor should wait for EPOLLOUT).
    pub blocked_on_write: bool,
}

impl<S: Stream> Conn<S> {
    pub fn new(s: S, target: std::sync::Arc<Target>, peer: String) -> Conn<S> {
        let in_capsule_max = target.opts.in_capsule_data_size;
        Conn {
            s,
            q: NvmfQueue::new(target),
            rx: vec![0u8; RX_BUF].into_boxed_slice(),
            rx_start: 0,
            rx_end: 0,
            hdr: [0u8; tcpspec::MAX_HEADER_BUF],
            hdr_have: 0,
            state: Rx::Ch,
            tx: TxQueue::new(256),
            p: Params::default(),
            phase: Phase::Active,
            in_capsule_max,
            peer,
            blocked_on_write: false,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    pub fn queue(&self) -> &NvmfQueue<TcpReq> {
        &self.q
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
        match self.phase {
            Phase::Active => {
                if readable || self.rx_start < self.rx_end {
                    let received = self.receive(now);
                    if received > 0 {
                        self.publish_rx();
                    }
                    work += received;
                }
                work += self.q.poll(now);
                work += self.collect_completions();
                work += self.flush();
                match self.q.state() {
                    QueueState::Failed => self.start_close("controller failed"),
                    QueueState::Disconnecting if self.tx.is_empty() => {
                        self.start_close("host disconnected the queue")
                    }
                    _ => {}
                }
            }
            Phase::Closing { deadline } => {
                work += self.q.poll(now);
                // Responses of a closing connection are dropped: the host has given up
                // on this association.
                while let Some(slot) = self.q.next_done() {
                    self.q.free(slot);
                    work += 1;
                }
                let give_up = deadline.is_some_and(|d| now > d);
                if !self.tx.is_empty() && !give_up {
                    work += self.flush();
                }
                if give_up && !self.tx.is_empty() {
                    let q = &mut self.q;
                    self.tx.clear(&mut |slot| q.free(slot));
                }
                if self.tx.is_empty() && self.q.bdev_in_flight() == 0 {
                    self.q.close();
                    self.phase = Phase::Closed;
                    work += 1;
                }
                if let Phase::Closing { deadline: None } = self.phase {
                    self.phase = Phase::Closing {
                        deadline: Some(now + CLOSE_LINGER),
                    };
                }
            }
            Phase::Closed => {}
        }
        work
    }

    /// Whether the connection must keep being polled even without socket events.
    pub fn has_pending_work(&self) -> bool {
        self.q.bdev_in_flight() > 0
            || !self.tx.is_empty()
            || matches!(self.phase, Phase::Closing { .. })
    }

    fn start_close(&mut self, why: &str) {
        if self.phase == Phase::Active {
            tracing::debug!(peer = %self.peer, why, "closing connection");
            self.state = Rx::Dead;
            self.phase = Phase::Closing { deadline: None };
        }
    }

    /// Fatal transport error: C2HTermReq with the offending header, then close.
    fn terminate(&mut self, e: TermError) {
        tracing::warn!(peer = %self.peer, fes = e.fes, fei = e.fei, "fatal transport error: terminating the connection");
        let mut out = [0u8; tcpspec::TERM_REQ_HLEN + tcpspec::TERM_REQ_MAX_DATA];
        let n = pdu::encode_term_req(
            PduType::C2HTermReq,
            e.fes,
            e.fei,
            &self.hdr[..self.hdr_have],
            &mut out,
        );
        self.tx.push_bytes(&out[..n]);
        self.state = Rx::Dead;
        self.phase = Phase::Closing { deadline: None };
    }

    fn receive(&mut self, now: Instant) -> usize {
        let mut work = 0;
        // Read until the socket is drained or one buffer's worth was handled, so one busy
        // connection cannot starve the others on this reactor.
        let mut budget = RX_BUF;
        loop {
            if self.state == Rx::Dead {
                return work;
            }
            if self.rx_start == self.rx_end {
                self.rx_start = 0;
                self.rx_end = 0;
                if budget == 0 {
                    return work;
                }
                // Large payload with nothing staged: read straight into the request.
                if let Rx::Data {
                    sink,
                    off,
                    left,
                    ddgst,
                    crc,
                } = self.state
                {
                    if let (Sink::Capsule { slot } | Sink::H2c { slot, .. }, true) =
                        (sink, left >= DIRECT_READ_MIN)
                    {
                        let (o, l) = (off as usize, left as usize);
                        let buf = self.q.req(slot).buf_mut(o + l);
                        match self.s.read(&mut buf[o..o + l]) {
                            Ok(0) => {
                                self.start_close("peer closed the connection");
                                return work + 1;
                            }
                            Ok(n) => {
                                let crc = if ddgst {
                                    tcpspec::crc32c_append(crc, &buf[o..o + n])
                                } else {
                                    crc
                                };
                                budget = budget.saturating_sub(n);
                                work += 1;
                                let n = n as u32;
                                self.state = Rx::Data {
                                    sink,
                                    off: off + n,
                                    left: left - n,
                                    ddgst,
                                    crc,
                                };
                                if left == n {
                                    self.payload_done(now);
                                    continue;
                                }
                                // A short read: the socket is empty for now; asking
                                // again would only cost a system call.
                                return work;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return work,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => {
                                tracing::debug!(peer = %self.peer, error = %e, "receive failed");
                                self.start_close("receive failed");
                                return work + 1;
                            }
                        }
                    }
                }
                match self.s.read(&mut self.rx) {
                    Ok(0) => {
                        self.start_close("peer closed the connection");
                        return work + 1;
                    }
                    Ok(n) => {
                        self.rx_end = n;
                        budget = budget.saturating_sub(n);
                        work += 1;
                        if n < self.rx.len() {
                            // A short read: the socket is empty for now. Consume what
                            // came and stop, rather than pay a system call for EAGAIN.
                            self.consume(now);
                            if self.rx_start == self.rx_end {
                                return work;
                            }
                            continue;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return work,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::debug!(peer = %self.peer, error = %e, "receive failed");
                        self.start_close("receive failed");
                        return work + 1;
                    }
                }
            }
            self.consume(now);
        }
    }

    /// Advance the state machine over the staged bytes.
    fn consume(&mut self, now: Instant) {
        while self.rx_start < self.rx_end {
            let avail = self.rx_end - self.rx_start;
            match self.state {
                Rx::Dead => {
                    self.rx_start = self.rx_end;
                    return;
                }
                Rx::Ch => {
                    let n = (COMMON_HEADER_SIZE - self.hdr_have).min(avail);
                    self.take_hdr(n);
                    if self.hdr_have == COMMON_HEADER_SIZE {
                        self.on_common_header();
                    }
                }
                Rx::Hdr { ch, t } => {
                    let need = ch.header_end() as usize;
                    let n = (need - self.hdr_have).min(avail);
                    self.take_hdr(n);
                    if self.hdr_have == need {
                        self.on_header(ch, t, now);
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
                        self.data_state(sink, data, ddgst)
                    };
                }
                Rx::Data {
                    sink,
                    off,
                    left,
                    ddgst,
                    crc,
                } => {
                    // A whole in-capsule write, no digest, staged in full: a RAM
                    // namespace takes it from here, without the copy into the request.
                    if let (Sink::Capsule { slot }, 0, false) = (sink, off, ddgst) {
                        if left as usize <= avail {
                            let data = &self.rx[self.rx_start..self.rx_start + left as usize];
                            if self.q.execute_write_from(slot, data, now).is_some() {
                                self.rx_start += left as usize;
                                self.next_pdu();
                                continue;
                            }
                        }
                    }
                    let n = (left as usize).min(avail);
                    let src = &self.rx[self.rx_start..self.rx_start + n];
                    let crc = if ddgst {
                        tcpspec::crc32c_append(crc, src)
                    } else {
                        crc
                    };
                    match sink {
                        Sink::Capsule { slot } | Sink::H2c { slot, .. } => {
                            let buf = self.q.req(slot).buf_mut((off + left) as usize);
                            buf[off as usize..off as usize + n].copy_from_slice(src);
                        }
                        Sink::Discard => {}
                    }
                    self.rx_start += n;
                    let n = n as u32;
                    self.state = Rx::Data {
                        sink,
                        off: off + n,
                        left: left - n,
                        ddgst,
                        crc,
                    };
                    if left == n {
                        self.payload_done(now);
                    }
                }
                Rx::Ddgst {
                    sink,
                    have,
                    crc,
                    mut digest,
                } => {
                    let n = (DIGEST_SIZE - have as usize).min(avail);
                    digest[have as usize..have as usize + n]
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
                        let ok = tcpspec::digest_bytes(crc) == digest;
                        self.state = Rx::Ch;
                        self.hdr_have = 0;
                        self.pdu_done(sink, ok, now);
                    }
                }
            }
        }
    }

    fn take_hdr(&mut self, n: usize) {
        self.hdr[self.hdr_have..self.hdr_have + n]
            .copy_from_slice(&self.rx[self.rx_start..self.rx_start + n]);
        self.hdr_have += n;
        self.rx_start += n;
    }

    fn data_state(&self, sink: Sink, data: u32, ddgst: bool) -> Rx {
        let off = match sink {
            Sink::H2c { end, .. } => end - data,
            _ => 0,
        };
        Rx::Data {
            sink,
            off,
            left: data,
            ddgst,
            crc: 0,
        }
    }

    fn on_common_header(&mut self) {
        let ch = CommonHeader::parse(
            self.hdr[..COMMON_HEADER_SIZE]
                .try_into()
                .expect("8 bytes gathered"),
        );
        let (hd, dd) = if self.p.initialized {
            (self.p.hdgst, self.p.ddgst)
        } else {
            (false, false)
        };
        let t = match tcpspec::validate_header(&ch, hd, dd, MAXH2CDATA, self.in_capsule_max) {
            Ok(t) => t,
            Err(e) => return self.terminate(e),
        };
        let seq_ok = match t {
            PduType::IcReq => !self.p.initialized,
            _ => self.p.initialized,
        };
        if !seq_ok {
            return self.terminate(TermError {
                fes: fes::PDU_SEQUENCE_ERROR,
                fei: 0,
            });
        }
        if t != PduType::IcReq && t != PduType::H2CTermReq {
            if let Err(e) = tcpspec::check_pdo_alignment(&ch, 0) {
                return self.terminate(e);
            }
        }
        self.state = Rx::Hdr { ch, t };
    }

    /// The whole header (and header digest) is in `hdr`.
    fn on_header(&mut self, ch: CommonHeader, t: PduType, now: Instant) {
        let hlen = usize::from(ch.hlen);
        if ch.hdgst_len() != 0 && !matches!(t, PduType::IcReq | PduType::H2CTermReq) {
            let digest: [u8; 4] = self.hdr[hlen..hlen + 4].try_into().expect("4 bytes");
            if !tcpspec::header_digest_ok(&self.hdr[..hlen], &digest) {
                return self.terminate(TermError {
                    fes: fes::HEADER_DIGEST_ERROR,
                    fei: 0,
                });
            }
        }
        match t {
            PduType::IcReq => self.on_icreq(),
            PduType::H2CTermReq => {
                let tr = pdu::TermReq::parse(&self.hdr[..hlen]);
                tracing::warn!(peer = %self.peer, fes = tr.fes, fei = tr.fei, "host terminated the connection");
                self.state = Rx::Dead;
                self.phase = Phase::Closing { deadline: None };
            }
            PduType::CapsuleCmd => self.on_capsule(ch, now),
            PduType::H2CData => self.on_h2c_data(ch),
            // validate_header refuses every type a controller does not receive.
            _ => self.terminate(TermError::invalid_field(0)),
        }
    }

    fn on_icreq(&mut self) {
        let req = IcReq::parse(
            self.hdr[..tcpspec::IC_PDU_SIZE]
                .try_into()
                .expect("128 bytes"),
        );
        if let Err(e) = req.check() {
            return self.terminate(e);
        }
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
        self.next_pdu();
    }

    fn next_pdu(&mut self) {
        self.state = Rx::Ch;
        self.hdr_have = 0;
    }

    /// Set up receipt of a PDU's payload (padding, data, digest).
    fn expect_payload(&mut self, ch: &CommonHeader, sink: Sink) {
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
            self.data_state(sink, data, ddgst)
        };
    }

    fn on_capsule(&mut self, ch: CommonHeader, now: Instant) {
        let sqe = pdu::capsule_cmd_sqe(
            self.hdr[..tcpspec::CAPSULE_CMD_HLEN]
                .try_into()
                .expect("72 bytes"),
        );
        let incapsule = ch.data_len();
        let slot = match self.q.alloc(&sqe) {
            Some(s) => Some(s),
            None => {
                // Responses written but not yet sent still hold slots: send them first.
                self.collect_completions();
                self.flush();
                self.q.alloc(&sqe)
            }
        };
        let Some(slot) = slot else {
            tracing::warn!(peer = %self.peer, "host exceeded the queue depth it connected with");
            return self.terminate(TermError {
                fes: fes::PDU_SEQUENCE_ERROR,
                fei: 0,
            });
        };
        let prepared = self.q.prepare(slot, incapsule);
        if incapsule > 0 {
            let sink = if prepared.is_ok() {
                // Allocate the buffer now so the data can land in it.
                self.q.req(slot).buf_mut(incapsule as usize);
                Sink::Capsule { slot }
            } else {
                Sink::Discard
            };
            return self.expect_payload(&ch, sink);
        }
        self.next_pdu();
        match prepared {
            Ok(Xfer::H2C {
                len,
                in_capsule: false,
            }) => {
                let r = self.q.req(slot);
                r.tr.awaiting_h2c = true;
                r.tr.h2c_received = 0;
                r.buf_mut(len as usize);
                let r2t = R2t {
                    cccid: sqe.cid,
                    ttag: slot,
                    r2to: 0,
                    r2tl: len,
                };
                let mut out = [0u8; 28];
                let n = pdu::encode_r2t(&r2t, self.p.hdgst, &mut out);
                self.tx.push_bytes(&out[..n]);
            }
            Ok(_) => {
                self.q.execute(slot, now);
            }
            Err(_) => {}
        }
    }

    fn on_h2c_data(&mut self, ch: CommonHeader) {
        let h = DataHeader::parse(&self.hdr[..tcpspec::DATA_HLEN]);
        if let Err(e) = h.check_len(&ch) {
            return self.terminate(e);
        }
        let Some(r) = self.q.try_req(h.ttag).filter(|r| r.tr.awaiting_h2c) else {
            return self.terminate(TermError::invalid_field(10));
        };
        if r.sqe.cid != h.cccid {
            return self.terminate(TermError::invalid_field(8));
        }
        let len = match r.xfer {
            Xfer::H2C { len, .. } => len,
            _ => 0,
        };
        if h.datao != r.tr.h2c_received || u64::from(h.datao) + u64::from(h.datal) > u64::from(len)
        {
            return self.terminate(TermError {
                fes: fes::DATA_TRANSFER_OUT_OF_RANGE,
                fei: 12,
            });
        }
        let last = ch.flags & tcpspec::flags::DATA_LAST != 0;
        if last != (h.datao + h.datal == len) {
            return self.terminate(TermError::invalid_field(1));
        }
        self.expect_payload(
            &ch,
            Sink::H2c {
                slot: h.ttag,
                end: h.datao + h.datal,
            },
        );
    }

    /// All payload bytes of the current PDU are in; a data digest may follow.
    fn payload_done(&mut self, now: Instant) {
        let Rx::Data {
            sink, ddgst, crc, ..
        } = self.state
        else {
            return;
        };
        if ddgst {
            self.state = Rx::Ddgst {
                sink,
                have: 0,
                crc,
                digest: [0; 4],
            };
        } else {
            self.next_pdu();
            self.pdu_done(sink, true, now);
        }
    }

    fn pdu_done(&mut self, sink: Sink, digest_ok: bool, now: Instant) {
        match sink {
            Sink::Discard => {
                // A TermReq's payload ends the connection; a failed command's response is
                // already queued.
            }
            Sink::Capsule { slot } => {
                if digest_ok {
                    self.q.execute(slot, now);
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
                    self.q.execute(slot, now);
                }
            }
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
                let crc = if self.p.ddgst {
                    tcpspec::crc32c(&r.c2h_data()[..data_len as usize])
                } else {
                    0
                };
                let success = sq_flow_disabled;
                let h = DataHeader {
                    cccid: cqe.cid,
                    ttag: 0,
                    datao: 0,
                    datal: data_len,
                };
                let mut out = [0u8; tcpspec::MAX_HEADER_BUF];
                let hn = pdu::encode_c2h_data_header(
                    &h,
                    true,
                    success,
                    self.p.hdgst,
                    self.p.ddgst,
                    self.p.hpda,
                    &mut out,
                );
                self.tx.push_bytes(&out[..hn]);
                self.tx.push_data(slot, 0, data_len);
                if self.p.ddgst {
                    self.tx.push_bytes(&tcpspec::digest_bytes(crc));
                }
                resp_needed = !success;
            }
            if resp_needed {
                let mut out = [0u8; 28];
                let rn = pdu::encode_capsule_resp(&cqe, self.p.hdgst, &mut out);
                self.tx.push_bytes(&out[..rn]);
            }
            self.tx.push_release(slot);
        }
        n
    }

    /// Write as much as the socket takes.
    fn flush(&mut self) -> usize {
        let mut work = 0;
        while !self.tx.is_empty() {
            let q = &mut self.q;
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let res = {
                let qr = &*q;
                let n = self.tx.gather(&mut iov, &|slot| qr.c2h_of(slot));
                if n == 0 {
                    Ok(0)
                } else {
                    self.s.writev(&iov[..n])
                }
            };
            match res {
                Ok(0) if self.tx.bytes() > 0 => {
                    self.start_close("send returned zero");
                    break;
                }
                Ok(n) => {
                    self.tx.advance(n, &mut |slot| q.free(slot));
                    work += 1;
                    self.blocked_on_write = false;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked_on_write = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "send failed");
                    self.tx.clear(&mut |slot| q.free(slot));
                    self.state = Rx::Dead;
                    self.phase = Phase::Closing { deadline: None };
                    break;
                }
            }
        }
        work
    }
}

impl<S: Stream> Conn<S> {
    pub fn stream(&self) -> &S {
        &self.s
    }
}

mod handover;
#[cfg(test)]
mod tests;
