//! Hosts that go away in the middle of a transfer: on a connected I/O queue of a real
//! controller, a few commands of the largest transfer the controller takes (MDTS) are
//! sent, and once the target has them (their SENDs completed) the host's side of the
//! transfer goes: the memory region is deregistered (the target's RDMA READ or WRITE
//! fails remotely) or the queue pair is destroyed without a disconnect (the target's
//! work requests find no one and run out of retries). The target must end that queue
//! (the host sees its disconnect), give queue 1 back to the controller (the host
//! connects it again) and keep serving (a write and a read on the new queue). When the
//! queue pair goes, the target has only its own bound to notice by (soft-RoCE retries
//! forever, see the transport's `stall` module): the queue must end within that bound,
//! while another host's I/O goes on beside it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lightpool_nvmf_host::Dir;
use lightpool_nvmf_host_rdma::{RdmaQpair, RdmaQueueConfig};
use lightpool_rdma_sys::ffi::{ibv_wc_status, ibv_wr_opcode, rdma_cm_event_type as ev};
use lightpool_rdma_sys::{
    AcceptParams, CmId, CompChannel, CompletionQueue, EventChannel, MemoryRegion, ProtectionDomain,
    QpSizes, WorkCompletion,
};
use lightpool_spec::fabrics::{ConnectCommand, ConnectData, CONNECT_DATA_SIZE};
use lightpool_spec::nvme::{io_opcode, Cqe, Sqe, CQE_SIZE, SQE_SIZE};
use lightpool_spec::rdma::{CmRequest, KeyedSgl, SGL_KEYED_ADDRESS};

use crate::STEP;

/// Commands in flight when the host goes (queue 1 has `ENTRIES` entries).
const CMDS: usize = 8;
const ENTRIES: u16 = 16;
/// How long the test waits for the target to notice.
const NOTICE: Duration = Duration::from_secs(20);
/// How late past the target's stall bound a vanished queue pair may be noticed (the
/// reactor's timer, the disconnect's way to the host, an emulated guest).
const SLACK: Duration = Duration::from_secs(3);
/// Where the commands go: LBAs (512-byte blocks) past what the guest test's other hosts
/// use (the first 48 MiB of the 64 MiB namespace).
const SLBA: u64 = 100_000;
const RECV: u64 = 1 << 32;
const PSDT_SGL: u8 = 0x40;

/// What goes away.
#[derive(Clone, Copy)]
pub enum Gone {
    /// The memory region the keyed SGLs name (deregistered; the QP stays).
    Region,
    /// The queue pair (destroyed without a disconnect; the identifier stays). On
    /// soft-RoCE the target's work requests to it are retried without end: the target
    /// must end the queue by its own bound (`STALL_LIMIT`).
    QueuePair,
}

/// I/O queue 1, connected by hand so that its region and QP can be torn down alone.
/// Drop order: the QP (in `id`) before its CQ and channel, the region before `mem`,
/// the identifier before its event channel.
struct RawQueue {
    id: CmId,
    cq: CompletionQueue,
    _cc: CompChannel,
    mr: Option<MemoryRegion>,
    lkey: u32,
    rkey: u32,
    mem: Box<[u8]>,
    ch: EventChannel,
    len: usize,
    /// Responses that arrived, SENDs completed.
    answers: Vec<Cqe>,
    sent: usize,
}

const RESP_OFF: usize = CMDS * 2 * SQE_SIZE;
const DATA_OFF: usize = 8192;

impl RawQueue {
    fn connect(addr: SocketAddr, cntlid: u16, len: usize) -> Result<RawQueue> {
        let ch = EventChannel::new()?;
        let mut id = CmId::new(&ch)?;
        id.resolve_addr(addr, 2000)?;
        crate::expect_event(&ch, ev::RDMA_CM_EVENT_ADDR_RESOLVED)?;
        id.resolve_route(2000)?;
        crate::expect_event(&ch, ev::RDMA_CM_EVENT_ROUTE_RESOLVED)?;
        let ctx = id.verbs().context("no device for the address")?;
        let pd = ProtectionDomain::new(ctx)?;
        let cc = CompChannel::new(ctx)?;
        let cq = CompletionQueue::new(ctx, 128, &cc)?;
        id.create_qp(
            &pd,
            &cq,
            QpSizes {
                send_wr: 32,
                recv_wr: 32,
                send_sge: 1,
                recv_sge: 1,
            },
        )?;
        let mut mem = vec![0u8; DATA_OFF + CMDS * len].into_boxed_slice();
        // SAFETY: `mem` lives beside the region, never moved; the region drops first.
        let mr = unsafe { MemoryRegion::register_remote(&pd, mem.as_mut_ptr(), mem.len())? };
        let (lkey, rkey) = (mr.lkey(), mr.rkey());
        let mut q = RawQueue {
            id,
            cq,
            _cc: cc,
            mr: Some(mr),
            lkey,
            rkey,
            mem,
            ch,
            len,
            answers: Vec::new(),
            sent: 0,
        };
        for i in 0..usize::from(ENTRIES) {
            q.post_recv(i)?;
        }
        let req = CmRequest {
            recfmt: 0,
            qid: 1,
            hrqsize: ENTRIES,
            hsqsize: ENTRIES - 1,
            cntlid,
        };
        q.id.connect(
            &req.encode(),
            AcceptParams {
                responder_resources: 16,
                initiator_depth: 0,
            },
        )?;
        crate::expect_event(&q.ch, ev::RDMA_CM_EVENT_ESTABLISHED)?;
        Ok(q)
    }

    fn post_recv(&mut self, i: usize) -> Result<()> {
        let p = self.mem[RESP_OFF + i * CQE_SIZE..].as_mut_ptr();
        self.id
            .post_recv(RECV | i as u64, p, CQE_SIZE as u32, self.lkey)?;
        Ok(())
    }

    /// Sends `sqe` (command slot `i`) with `len` bytes of data buffer `i` by keyed SGL.
    fn send(&mut self, i: usize, mut sqe: Sqe, len: usize) -> Result<()> {
        sqe.cid = i as u16;
        sqe.flags = (sqe.flags & !0xC0) | PSDT_SGL;
        sqe.dptr = KeyedSgl {
            address: self.mem[DATA_OFF + i * self.len..].as_ptr() as u64,
            length: len as u32,
            key: self.rkey,
            id: SGL_KEYED_ADDRESS,
        }
        .to_bytes();
        self.mem[i * SQE_SIZE..(i + 1) * SQE_SIZE].copy_from_slice(&sqe.to_bytes());
        let p = self.mem[i * SQE_SIZE..].as_ptr();
        self.id.post_send(
            i as u64,
            ibv_wr_opcode::IBV_WR_SEND,
            p,
            SQE_SIZE as u32,
            self.lkey,
            (0, 0),
            0,
            true,
        )?;
        Ok(())
    }

    /// Polls until `done` holds (or fails past `STEP`).
    fn poll_until(&mut self, what: &str, done: impl Fn(&RawQueue) -> bool) -> Result<()> {
        let mut wcs = vec![WorkCompletion::default(); 16];
        let deadline = Instant::now() + STEP;
        while !done(self) {
            if Instant::now() > deadline {
                bail!("{what}: not in time");
            }
            let n = self.cq.poll(&mut wcs)?;
            for wc in &wcs[..n] {
                if wc.status != ibv_wc_status::IBV_WC_SUCCESS {
                    bail!(
                        "{what}: work request {} failed: status {}",
                        wc.wr_id,
                        wc.status
                    );
                }
                if wc.wr_id & RECV != 0 {
                    let i = (wc.wr_id & !RECV) as usize;
                    let b: &[u8; CQE_SIZE] = self.mem[RESP_OFF + i * CQE_SIZE..][..CQE_SIZE]
                        .try_into()
                        .context("a response")?;
                    self.answers.push(Cqe::from_bytes(b));
                    self.post_recv(i)?;
                } else {
                    self.sent += 1;
                }
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        Ok(())
    }

    /// The NVMe Connect of queue 1 (its data by RDMA READ from buffer 0).
    fn fabric_connect(
        &mut self,
        nqn: &str,
        hostnqn: &str,
        hostid: [u8; 16],
        cntlid: u16,
    ) -> Result<()> {
        let data = ConnectData::new(hostid, cntlid, nqn, hostnqn).to_bytes();
        self.mem[DATA_OFF..DATA_OFF + CONNECT_DATA_SIZE].copy_from_slice(&data);
        let sqe = ConnectCommand {
            recfmt: 0,
            qid: 1,
            sqsize: ENTRIES - 1,
            cattr: 0,
            kato: 0,
        }
        .to_sqe(0);
        self.send(0, sqe, CONNECT_DATA_SIZE)?;
        self.poll_until("Connect", |q| q.sent == 1 && !q.answers.is_empty())?;
        let cqe = self.answers.pop().context("a Connect response")?;
        if !cqe.status.is_success() {
            bail!("Connect of queue 1: {}", cqe.status);
        }
        self.sent = 0;
        Ok(())
    }

    /// Whether the target ends the connection within `timeout`.
    fn wait_disconnected(&self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.ch.wait_event(left)? {
                Some(e) if e.kind == ev::RDMA_CM_EVENT_DISCONNECTED => return Ok(true),
                Some(_) if !left.is_zero() => {}
                _ => return Ok(false),
            }
        }
    }
}

/// One case: `op` (Write: the target RDMA READs; Read: it RDMA WRITEs back) of MDTS
/// bytes, `CMDS` of them, then `gone` goes. Prints one line.
pub fn case(addr: SocketAddr, nqn: &str, name: &str, op: u8, gone: Gone) -> Result<()> {
    let hostnqn = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000dead1";
    let hostid = [0xDE; 16];
    let mut c = crate::controller(addr, nqn, hostnqn, hostid)?;
    c.request_io_queues(1)?;
    let cntlid = c.info.cntlid;
    let len = c.info.max_transfer.unwrap_or(128 * 1024).min(1 << 20) as usize;
    let mut q = RawQueue::connect(addr, cntlid, len)?;
    q.fabric_connect(nqn, hostnqn, hostid, cntlid)?;
    // Another host does I/O the whole time (only where the target's own bound is what
    // ends the queue: the wait is long enough to show that others are served). Started
    // before the commands go: they must still be in flight when the host goes.
    let beside = matches!(gone, Gone::QueuePair)
        .then(|| Beside::start(addr, nqn))
        .transpose()?;
    let nlb = (len / 512) as u64;
    for i in 0..CMDS {
        if op == io_opcode::WRITE {
            q.mem[DATA_OFF + i * len..][..len].fill(0xA5);
        }
        let slba = SLBA + i as u64 * nlb;
        let sqe = Sqe {
            opcode: op,
            nsid: 1,
            cdw10: slba as u32,
            cdw11: (slba >> 32) as u32,
            cdw12: (nlb - 1) as u32,
            ..Sqe::default()
        };
        q.send(i, sqe, len)?;
    }
    // The target has every command once its SEND completed.
    q.poll_until("the commands' SENDs", |q| q.sent == CMDS)?;
    let early = q.answers.len();
    match gone {
        Gone::Region => drop(q.mr.take()),
        Gone::QueuePair => q.id.destroy_qp(),
    }
    let t0 = Instant::now();
    let ended = q.wait_disconnected(NOTICE)?;
    let noticed = t0.elapsed();
    let beside = beside.map(Beside::stop);
    // The target gives queue 1 back once the connection is gone: connect it again (a
    // Connect naming a queue still in use is refused) and do I/O on it.
    let cfg = RdmaQueueConfig {
        depth: 4,
        buf_len: 4096,
        in_capsule_max: 0,
    };
    let again = Instant::now() + NOTICE;
    let mut nq: Option<RdmaQpair> = None;
    while nq.is_none() && Instant::now() < again {
        match c.connect_io_queue_at(1, 8, cfg) {
            Ok(x) => nq = Some(x),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let freed = t0.elapsed();
    let io_ok = match nq.as_mut() {
        Some(n) => io_roundtrip(n, SLBA - 8).is_ok(),
        None => false,
    };
    let bound = lightpool_transport_rdma::stall::STALL_LIMIT + SLACK;
    let late = matches!(gone, Gone::QueuePair) && noticed > bound;
    let verdict = match (ended, nq.is_some(), io_ok, &beside) {
        (false, ..) => "WRONG: still connected".to_string(),
        (_, false, ..) => "WRONG: queue 1 not given back".to_string(),
        (_, _, false, _) => "WRONG: no I/O on queue 1 again".to_string(),
        _ if late => format!("WRONG: noticed after more than {} ms", bound.as_millis()),
        (.., Some(Err(e))) => format!("WRONG: the other host was not served: {e:#}"),
        (.., Some(Ok(0))) => "WRONG: the other host did no I/O meanwhile".to_string(),
        _ => "ended ok".to_string(),
    };
    let other = match &beside {
        Some(Ok(n)) => format!(", the other host did {n} writes and reads meanwhile"),
        _ => String::new(),
    };
    println!(
        "HOSTILE: teardown {name}: {verdict} (disconnect after {} ms, queue 1 again after {} ms, {early} of {CMDS} answered before{other})",
        noticed.as_millis(),
        freed.as_millis()
    );
    if let Some(n) = nq {
        let _ = n.disconnect(true, STEP);
    }
    drop(q);
    c.shutdown()?;
    Ok(())
}

/// Another host (its own controller and I/O queue) writing and reading back on a
/// thread until stopped.
struct Beside {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Result<u64>>,
}

impl Beside {
    /// Returns once the other host is connected.
    fn start(addr: SocketAddr, nqn: &str) -> Result<Beside> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (nqn, s) = (nqn.to_string(), stop.clone());
        let thread = std::thread::spawn(move || -> Result<u64> {
            let hostnqn = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000b551";
            let mut c = crate::controller(addr, &nqn, hostnqn, [0xB5; 16])?;
            c.request_io_queues(1)?;
            let cfg = RdmaQueueConfig {
                depth: 4,
                buf_len: 4096,
                in_capsule_max: 0,
            };
            let mut q = c.connect_io_queue_at(1, 8, cfg)?;
            let _ = tx.send(());
            let mut n = 0;
            while !s.load(Ordering::Relaxed) {
                io_roundtrip(&mut q, SLBA - 16).with_context(|| format!("after {n}"))?;
                n += 1;
            }
            let _ = q.disconnect(true, STEP);
            c.shutdown()?;
            Ok(n)
        });
        if rx.recv_timeout(STEP * 2).is_err() {
            stop.store(true, Ordering::Relaxed);
            let e = match thread.join() {
                Ok(Err(e)) => e,
                _ => anyhow::anyhow!("not connected in time"),
            };
            return Err(e.context("the other host"));
        }
        Ok(Beside { stop, thread })
    }

    /// The writes and reads it did, or what went wrong.
    fn stop(self) -> Result<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the other host's thread panicked"))?
    }
}

/// A 4 KiB write at `slba` and its read back.
fn io_roundtrip(q: &mut RdmaQpair, slba: u64) -> Result<()> {
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let w = Sqe {
        opcode: io_opcode::WRITE,
        nsid: 1,
        cdw10: slba as u32,
        cdw12: 7,
        ..Sqe::default()
    };
    let c = q.execute(w, Dir::Write, Some(&pattern), 4096, STEP, "Write")?;
    if !c.status.is_success() {
        bail!("Write: {}", c.status);
    }
    let r = Sqe {
        opcode: io_opcode::READ,
        ..w
    };
    let c = q.execute(r, Dir::Read, None, 4096, STEP, "Read")?;
    if !c.status.is_success() || q.buf(c.cid)[..4096] != pattern[..] {
        bail!("Read back: {} or other data", c.status);
    }
    Ok(())
}
