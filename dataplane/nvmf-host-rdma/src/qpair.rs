//! One NVMe/RDMA queue pair of a host: an RDMA_CM connection whose connect request
//! carries the NVMe/RDMA private data, one reliable-connected QP and its CQ, and one
//! registered region holding every command capsule, every response receive and every
//! data buffer. Commands go by SEND; their data by keyed SGL (the target RDMA READs
//! a write's data from the buffer, RDMA WRITEs a read's data into it) or, for a write
//! no larger than the controller's in-capsule size, in the capsule itself (a second
//! SGE of the same SEND: no copy). Responses arrive by RECV and are posted again at
//! once. Polled, never waited on a channel: the caller drives it. The queue's RDMA_CM
//! event channel is read too (at most once a millisecond, when a poll finds no
//! completion): a DISCONNECTED or DEVICE_REMOVAL ends the queue at once with a clear
//! error, where the queue pair alone would only time out (the target's side of a
//! connection it ended no longer answers, and soft-RoCE retries without end).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lightpool_nvmf_host::{
    AdminCommand, AdminQueue, Completion, ConnectRequest, Dir, InitiatorError,
};
use lightpool_rdma_sys::ffi::{ibv_wc_opcode, ibv_wc_status, rdma_cm_event_type as ev};
use lightpool_rdma_sys::{
    AcceptParams, CmId, CompChannel, CompletionQueue, EventChannel, MemoryRegion, ProtectionDomain,
    QpSizes, RdmaError, WorkCompletion,
};
use lightpool_spec::fabrics;
use lightpool_spec::nvme::{Cqe, SglDescriptor, Sqe, CQE_SIZE, SQE_SIZE};
use lightpool_spec::rdma::{cm_reject, CmRequest, KeyedSgl, SGL_KEYED_ADDRESS};

/// PSDT = 01b (SGL, the only data pointer fabrics take), in SQE byte 1 bits 7:6.
const PSDT_SGL: u8 = 0x40;
/// A receive's work request ID has this bit; a send's is the command's tag.
const RECV_BIT: u64 = 1 << 63;
/// Completions read from the CQ at a time.
const POLL_BATCH: usize = 32;
/// How often an idle poll reads the RDMA_CM event channel (a system call).
const CM_EVERY: Duration = Duration::from_millis(1);
/// How long a flushed work request waits for the RDMA_CM event that explains it: the
/// flush can reach the CQ before the DISCONNECTED event reaches the channel.
const FLUSH_EXPLAINED: Duration = Duration::from_millis(200);

/// Where a command stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Slot {
    #[default]
    Free,
    /// Handed out by `alloc`, not yet submitted.
    Reserved,
    /// Sent; `sent`: its SEND completed, `answered`: its response arrived. The tag is
    /// free again when both have.
    Busy { sent: bool, answered: bool },
}

/// How one queue pair is sized.
#[derive(Clone, Copy, Debug)]
pub struct RdmaQueueConfig {
    /// Commands in flight at most.
    pub depth: u16,
    /// Data buffer bytes per command.
    pub buf_len: usize,
    /// Largest write carried in the capsule (0: none; the admin queue takes none).
    pub in_capsule_max: u32,
}

/// A connected NVMe/RDMA queue pair. Fields drop in order: the QP (in `id`) before
/// its CQ and channel, the region before the memory it covers, the identifier before
/// its event channel.
pub struct RdmaQpair {
    id: CmId,
    cq: CompletionQueue,
    _cc: CompChannel,
    mr: MemoryRegion,
    mem: Box<[u8]>,
    ch: EventChannel,
    peer: SocketAddr,
    qid: u16,
    cfg: RdmaQueueConfig,
    /// Offsets in `mem`: responses (one per tag), then data buffers.
    resp_off: usize,
    data_off: usize,
    slots: Vec<Slot>,
    free: Vec<u16>,
    /// Commands whose response has not arrived.
    in_flight: usize,
    wcs: Vec<WorkCompletion>,
    /// The RDMA_CM event that ended the connection (DISCONNECTED, DEVICE_REMOVAL, ...):
    /// every call fails from then on.
    ended: Option<u32>,
    cm_checked: Instant,
}

fn rdma_err(addr: SocketAddr, e: RdmaError) -> InitiatorError {
    InitiatorError::Io {
        addr,
        source: std::io::Error::other(e.to_string()),
    }
}

fn reject_words(sts: u16) -> &'static str {
    match sts {
        cm_reject::INVALID_LEN => "invalid private data length",
        cm_reject::INVALID_RECFMT => "invalid record format",
        cm_reject::INVALID_QID => "invalid queue ID",
        cm_reject::INVALID_HSQSIZE => "invalid host send queue size",
        cm_reject::INVALID_HRQSIZE => "invalid host receive queue size",
        cm_reject::NO_RESOURCES => "no resources",
        cm_reject::INVALID_IRD => "invalid IRD",
        cm_reject::INVALID_ORD => "invalid ORD",
        _ => "rejected",
    }
}

impl RdmaQpair {
    /// Resolves `addr`, builds the QP and its region, and connects queue `qid` with
    /// `entries` submission queue entries (the private data's HSQSIZE is that less
    /// one; HRQSIZE, the responses the host can take, is the depth). The NVMe Connect
    /// command follows with [`RdmaQpair::fabric_connect`].
    pub fn connect(
        addr: SocketAddr,
        qid: u16,
        entries: u16,
        cntlid: u16,
        cfg: RdmaQueueConfig,
        timeout: Duration,
    ) -> Result<RdmaQpair, InitiatorError> {
        let e = |err| rdma_err(addr, err);
        let ch = EventChannel::new().map_err(e)?;
        let mut id = CmId::new(&ch).map_err(e)?;
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        id.resolve_addr(addr, ms).map_err(e)?;
        wait_for(
            &ch,
            addr,
            ev::RDMA_CM_EVENT_ADDR_RESOLVED,
            timeout,
            "address",
        )?;
        id.resolve_route(ms).map_err(e)?;
        wait_for(
            &ch,
            addr,
            ev::RDMA_CM_EVENT_ROUTE_RESOLVED,
            timeout,
            "route",
        )?;
        let ctx = id.verbs().ok_or_else(|| InitiatorError::Connect {
            addr,
            source: std::io::Error::other("no RDMA device serves this address"),
        })?;
        let pd = ProtectionDomain::new(ctx).map_err(e)?;
        let cc = CompChannel::new(ctx).map_err(e)?;
        let depth = usize::from(cfg.depth);
        let cq = CompletionQueue::new(ctx, 2 * depth as u32 + 4, &cc).map_err(e)?;
        id.create_qp(
            &pd,
            &cq,
            QpSizes {
                // A tag's SEND may complete after its response: up to two per tag.
                send_wr: 2 * depth as u32 + 2,
                recv_wr: depth as u32 + 1,
                send_sge: 2,
                recv_sge: 1,
            },
        )
        .map_err(e)?;
        let resp_off = depth * SQE_SIZE;
        let data_off = (resp_off + depth * CQE_SIZE).next_multiple_of(4096);
        let mut mem = vec![0u8; data_off + depth * cfg.buf_len].into_boxed_slice();
        // SAFETY: `mem` is a heap allocation owned by the queue pair beside the region
        // and never moved or resized; the region drops first (field order).
        let mr = unsafe { MemoryRegion::register_remote(&pd, mem.as_mut_ptr(), mem.len()) }
            .map_err(e)?;
        let mut q = RdmaQpair {
            id,
            cq,
            _cc: cc,
            mr,
            mem,
            ch,
            peer: addr,
            qid,
            cfg,
            resp_off,
            data_off,
            slots: vec![Slot::Free; depth],
            free: (0..cfg.depth).rev().collect(),
            in_flight: 0,
            wcs: vec![WorkCompletion::default(); POLL_BATCH],
            ended: None,
            cm_checked: Instant::now(),
        };
        for i in 0..depth {
            q.post_recv(i)?;
        }
        let req = CmRequest {
            recfmt: 0,
            qid,
            hrqsize: cfg.depth,
            hsqsize: entries - 1,
            cntlid,
        };
        q.id.connect(
            &req.encode(),
            AcceptParams {
                // The target RDMA READs a write's data from us: it needs inbound READ
                // resources here; we issue no READ ourselves.
                responder_resources: 16,
                initiator_depth: 0,
            },
        )
        .map_err(e)?;
        let ev =
            q.ch.wait_event(timeout)
                .map_err(e)?
                .ok_or_else(|| InitiatorError::Timeout {
                    addr,
                    what: format!("the RDMA_CM connect of queue {qid}"),
                    timeout,
                })?;
        match ev.kind {
            ev::RDMA_CM_EVENT_ESTABLISHED => Ok(q),
            ev::RDMA_CM_EVENT_REJECTED => {
                let sts = (ev.private_data.len() >= 4)
                    .then(|| u16::from_le_bytes([ev.private_data[2], ev.private_data[3]]));
                Err(InitiatorError::Connect {
                    addr,
                    source: std::io::Error::other(match sts {
                        Some(s) => format!(
                            "the target rejected queue {qid}: {} (NVMe/RDMA status {s:#x})",
                            reject_words(s)
                        ),
                        None => format!("the target rejected queue {qid} (status {})", ev.status),
                    }),
                })
            }
            _ => Err(InitiatorError::Connect {
                addr,
                source: std::io::Error::other(format!(
                    "queue {qid}: the connect ended in {} (status {})",
                    ev.name(),
                    ev.status
                )),
            }),
        }
    }

    fn post_recv(&mut self, i: usize) -> Result<(), InitiatorError> {
        let p = self.mem[self.resp_off + i * CQE_SIZE..].as_mut_ptr();
        self.id
            .post_recv(RECV_BIT | i as u64, p, CQE_SIZE as u32, self.mr.lkey())
            .map_err(|e| rdma_err(self.peer, e))
    }

    /// The NVMe Connect command `req` on this queue (its data by keyed SGL from tag
    /// 0's buffer; `req.qid` is the queue's); the controller ID the target answers.
    pub fn fabric_connect(
        &mut self,
        req: &ConnectRequest<'_>,
        timeout: Duration,
    ) -> Result<u16, InitiatorError> {
        debug_assert_eq!(req.qid, self.qid, "Connect names the queue it travels on");
        let (sqe, data, what) = (req.sqe(), req.data(), req.what());
        let c = self.execute(
            sqe,
            Dir::Write,
            Some(&data),
            data.len() as u32,
            timeout,
            &what,
        )?;
        if !c.status.is_success() {
            return Err(InitiatorError::Refused {
                addr: self.peer,
                subnqn: req.subnqn.to_string(),
                why: format!("{what}: {}", c.status),
            });
        }
        Ok((c.dw0 & 0xFFFF) as u16)
    }

    /// One command, waited for: `data` (if any) is copied into the buffer first; the
    /// caller reads what a read brought with [`RdmaQpair::buf`] of the completion's
    /// tag. Only where nothing else is in flight (admin commands, Connect).
    pub fn execute(
        &mut self,
        sqe: Sqe,
        dir: Dir,
        data: Option<&[u8]>,
        len: u32,
        timeout: Duration,
        what: &str,
    ) -> Result<Completion, InitiatorError> {
        let tag = self.alloc().ok_or_else(|| InitiatorError::Protocol {
            addr: self.peer,
            qid: self.qid,
            msg: format!("{what}: no free command slot"),
        })?;
        if let Some(d) = data {
            self.buf_mut(tag)[..d.len()].copy_from_slice(d);
        }
        self.submit(tag, sqe, dir, len)?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(1);
        loop {
            self.poll(&mut out)?;
            if let Some(c) = out.pop() {
                // Wait for the SEND's completion too, so that the slot is free again.
                while self.slots[usize::from(tag)] != Slot::Free {
                    self.poll(&mut out)?;
                    if Instant::now() > deadline {
                        break;
                    }
                }
                return Ok(c);
            }
            if Instant::now() > deadline {
                return Err(InitiatorError::Timeout {
                    addr: self.peer,
                    what: what.to_string(),
                    timeout,
                });
            }
            std::thread::yield_now();
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }

    pub fn depth(&self) -> u16 {
        self.cfg.depth
    }

    /// Commands whose response has not arrived.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// A free tag (its response arrived and its SEND completed), if any.
    pub fn alloc(&mut self) -> Option<u16> {
        let t = self.free.pop()?;
        self.slots[usize::from(t)] = Slot::Reserved;
        Some(t)
    }

    pub fn buf(&self, tag: u16) -> &[u8] {
        let o = self.data_off + usize::from(tag) * self.cfg.buf_len;
        &self.mem[o..o + self.cfg.buf_len]
    }

    pub fn buf_mut(&mut self, tag: u16) -> &mut [u8] {
        let o = self.data_off + usize::from(tag) * self.cfg.buf_len;
        &mut self.mem[o..o + self.cfg.buf_len]
    }

    /// Sends `sqe` through `tag` (from `alloc`) with `len` bytes of its buffer moving
    /// as `dir` says: by keyed SGL, or in the capsule for a write that fits.
    pub fn submit(
        &mut self,
        tag: u16,
        mut sqe: Sqe,
        dir: Dir,
        len: u32,
    ) -> Result<(), InitiatorError> {
        if let Some(kind) = self.ended {
            return Err(self.ended_error(kind));
        }
        let t = usize::from(tag);
        if self.slots.get(t) != Some(&Slot::Reserved) || len as usize > self.cfg.buf_len {
            return Err(InitiatorError::Protocol {
                addr: self.peer,
                qid: self.qid,
                msg: format!("tag {tag} is not reserved, or {len} bytes exceed its buffer"),
            });
        }
        sqe.cid = tag;
        sqe.flags = (sqe.flags & !0xC0) | PSDT_SGL;
        let data = self.mem[self.data_off + t * self.cfg.buf_len..].as_ptr();
        let in_capsule = dir == Dir::Write && len > 0 && len <= self.cfg.in_capsule_max;
        sqe.dptr = if in_capsule {
            SglDescriptor::in_capsule(0, len).to_bytes()
        } else if dir == Dir::None || len == 0 {
            KeyedSgl {
                address: 0,
                length: 0,
                key: 0,
                id: SGL_KEYED_ADDRESS,
            }
            .to_bytes()
        } else {
            KeyedSgl {
                address: data as u64,
                length: len,
                key: self.mr.rkey(),
                id: SGL_KEYED_ADDRESS,
            }
            .to_bytes()
        };
        self.mem[t * SQE_SIZE..(t + 1) * SQE_SIZE].copy_from_slice(&sqe.to_bytes());
        let cmd = self.mem[t * SQE_SIZE..].as_ptr();
        let parts = [(cmd, SQE_SIZE as u32), (data, len)];
        let n = if in_capsule { 2 } else { 1 };
        self.id
            .post_send_gather(u64::from(tag), &parts[..n], self.mr.lkey())
            .map_err(|e| rdma_err(self.peer, e))?;
        self.slots[t] = Slot::Busy {
            sent: false,
            answered: false,
        };
        self.in_flight += 1;
        Ok(())
    }

    /// SENDs are posted as they are submitted: nothing to flush.
    pub fn flush(&mut self) -> Result<(), InitiatorError> {
        Ok(())
    }

    /// Appends the responses that arrived; frees tags whose SEND and response are both
    /// done. A failed work completion (the target ended the queue, a flush after a
    /// disconnect) is an error of the queue.
    pub fn poll(&mut self, out: &mut Vec<Completion>) -> Result<(), InitiatorError> {
        let mut got = 0;
        loop {
            let n = self
                .cq
                .poll(&mut self.wcs)
                .map_err(|e| rdma_err(self.peer, e))?;
            for k in 0..n {
                let wc = self.wcs[k];
                if wc.status != ibv_wc_status::IBV_WC_SUCCESS {
                    return Err(self.failed(wc.status));
                }
                if wc.wr_id & RECV_BIT != 0 {
                    let i = (wc.wr_id & !RECV_BIT) as usize;
                    let o = self.resp_off + i * CQE_SIZE;
                    let b: &[u8; CQE_SIZE] = self.mem[o..o + CQE_SIZE]
                        .try_into()
                        .map_err(|_| self.bad("a short response buffer"))?;
                    let cqe = Cqe::from_bytes(b);
                    if wc.opcode != ibv_wc_opcode::IBV_WC_RECV || (wc.byte_len as usize) < CQE_SIZE
                    {
                        return Err(self.bad("a receive that is not a 16-byte response"));
                    }
                    self.post_recv(i)?;
                    self.answer(cqe, out)?;
                } else {
                    let t = wc.wr_id as usize;
                    match self.slots.get(t).copied() {
                        Some(Slot::Busy { answered, .. }) => {
                            if answered {
                                self.release(t);
                            } else {
                                self.slots[t] = Slot::Busy {
                                    sent: true,
                                    answered,
                                };
                            }
                        }
                        _ => return Err(self.bad("a send completion for an idle tag")),
                    }
                }
            }
            got += n;
            if n < self.wcs.len() {
                break;
            }
        }
        // What arrived is delivered first; the end shows on the next poll that finds
        // nothing.
        if got == 0 {
            self.watch_cm()?;
        }
        Ok(())
    }

    /// Reads the RDMA_CM events waiting (at most every [`CM_EVERY`]); an error once
    /// the connection has ended.
    fn watch_cm(&mut self) -> Result<(), InitiatorError> {
        if self.ended.is_none() && self.cm_checked.elapsed() >= CM_EVERY {
            self.cm_checked = Instant::now();
            self.read_cm(Duration::ZERO)
                .map_err(|e| rdma_err(self.peer, e))?;
        }
        match self.ended {
            Some(kind) => Err(self.ended_error(kind)),
            None => Ok(()),
        }
    }

    /// Reads the RDMA_CM events waiting, and waits up to `wait` for more, until one
    /// ends the connection (recorded in `ended`); other events are passed over.
    fn read_cm(&mut self, wait: Duration) -> Result<(), RdmaError> {
        let deadline = Instant::now() + wait;
        while self.ended.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.ch.wait_event(left)? {
                Some(e) if ends_connection(e.kind) => self.ended = Some(e.kind),
                Some(_) => {}
                None => break,
            }
        }
        Ok(())
    }

    /// The error of a queue one of whose work requests completed with `status`. The
    /// RDMA_CM events are read first (a flush is waited on for [`FLUSH_EXPLAINED`]): a
    /// flushed request means the queue pair went to the error state, and when the
    /// connection's end explains that, the end is the error (a target that
    /// disconnects is [`InitiatorError::Closed`], not a protocol error), whichever of
    /// the two the host happened to see first.
    fn failed(&mut self, status: u32) -> InitiatorError {
        let wait = if status == ibv_wc_status::IBV_WC_WR_FLUSH_ERR {
            FLUSH_EXPLAINED
        } else {
            Duration::ZERO
        };
        // A channel that fails leaves the work request's status as the error.
        let _ = self.read_cm(wait);
        match self.ended {
            Some(kind) => self.ended_error(kind),
            None => InitiatorError::Protocol {
                addr: self.peer,
                qid: self.qid,
                msg: format!("a work request failed (status {status}): the target ended the queue"),
            },
        }
    }

    /// The error of a queue whose connection ended with RDMA_CM event `kind`.
    fn ended_error(&self, kind: u32) -> InitiatorError {
        match kind {
            ev::RDMA_CM_EVENT_DISCONNECTED | ev::RDMA_CM_EVENT_TIMEWAIT_EXIT => {
                InitiatorError::Closed { addr: self.peer }
            }
            ev::RDMA_CM_EVENT_DEVICE_REMOVAL => InitiatorError::Io {
                addr: self.peer,
                source: std::io::Error::other(format!(
                    "queue {}: the RDMA device was removed",
                    self.qid
                )),
            },
            _ => InitiatorError::Io {
                addr: self.peer,
                source: std::io::Error::other(format!(
                    "queue {}: the connection ended ({})",
                    self.qid,
                    lightpool_rdma_sys::event_name(kind)
                )),
            },
        }
    }

    fn answer(&mut self, cqe: Cqe, out: &mut Vec<Completion>) -> Result<(), InitiatorError> {
        let t = usize::from(cqe.cid);
        let Some(Slot::Busy {
            sent,
            answered: false,
        }) = self.slots.get(t).copied()
        else {
            return Err(self.bad(&format!("a response for tag {} not in flight", cqe.cid)));
        };
        self.in_flight -= 1;
        if sent {
            self.release(t);
        } else {
            self.slots[t] = Slot::Busy {
                sent,
                answered: true,
            };
        }
        out.push(Completion {
            cid: cqe.cid,
            status: cqe.status,
            dw0: cqe.dw0,
            dw1: cqe.dw1,
            digest_error: false,
        });
        Ok(())
    }

    fn release(&mut self, t: usize) {
        self.slots[t] = Slot::Free;
        self.free.push(t as u16);
    }

    fn bad(&self, msg: &str) -> InitiatorError {
        InitiatorError::Protocol {
            addr: self.peer,
            qid: self.qid,
            msg: msg.to_string(),
        }
    }

    /// Disconnect (when asked and nothing is in flight), then the RDMA_CM disconnect.
    pub fn disconnect(
        mut self,
        send_disconnect: bool,
        timeout: Duration,
    ) -> Result<(), InitiatorError> {
        let mut res = Ok(());
        if send_disconnect && self.in_flight == 0 && self.ended.is_none() {
            res = self
                .execute(
                    fabrics::disconnect_sqe(0),
                    Dir::None,
                    None,
                    0,
                    timeout,
                    "Disconnect",
                )
                .map(|_| ());
        }
        self.id.disconnect();
        res
    }
}

/// The admin queue of an NVMe/RDMA controller.
impl AdminQueue for RdmaQpair {
    fn exec(&mut self, c: AdminCommand<'_>) -> Result<Completion, InitiatorError> {
        self.execute(c.sqe, c.dir, None, c.len, c.timeout, c.what)
    }

    fn data(&self, cid: u16) -> &[u8] {
        self.buf(cid)
    }

    fn close(self, send_disconnect: bool, timeout: Duration) -> Result<(), InitiatorError> {
        self.disconnect(send_disconnect, timeout)
    }
}

impl RdmaQpair {
    /// Whether the target ends the connection (RDMA_CM DISCONNECTED) within `timeout`;
    /// other connection events are passed over.
    pub fn wait_disconnected(&self, timeout: Duration) -> Result<bool, InitiatorError> {
        if self.ended == Some(ev::RDMA_CM_EVENT_DISCONNECTED) {
            return Ok(true);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .ch
                .wait_event(left)
                .map_err(|e| rdma_err(self.peer, e))?
            {
                Some(e) if e.kind == ev::RDMA_CM_EVENT_DISCONNECTED => return Ok(true),
                Some(_) if !left.is_zero() => {}
                _ => return Ok(false),
            }
        }
    }
}

/// Whether RDMA_CM event `kind` on a connected identifier means the connection is gone.
fn ends_connection(kind: u32) -> bool {
    matches!(
        kind,
        ev::RDMA_CM_EVENT_DISCONNECTED
            | ev::RDMA_CM_EVENT_DEVICE_REMOVAL
            | ev::RDMA_CM_EVENT_TIMEWAIT_EXIT
            | ev::RDMA_CM_EVENT_CONNECT_ERROR
            | ev::RDMA_CM_EVENT_UNREACHABLE
            | ev::RDMA_CM_EVENT_ADDR_CHANGE
    )
}

/// Waits for the RDMA_CM event `want` of a resolve step.
fn wait_for(
    ch: &EventChannel,
    addr: SocketAddr,
    want: u32,
    timeout: Duration,
    what: &str,
) -> Result<(), InitiatorError> {
    let e = ch
        .wait_event(timeout)
        .map_err(|e| rdma_err(addr, e))?
        .ok_or_else(|| InitiatorError::Timeout {
            addr,
            what: format!("resolving the {what}"),
            timeout,
        })?;
    if e.kind != want {
        return Err(InitiatorError::Connect {
            addr,
            source: std::io::Error::other(format!(
                "resolving the {what}: {} (status {})",
                e.name(),
                e.status
            )),
        });
    }
    Ok(())
}
