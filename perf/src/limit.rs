//! `lightpool-perf limit`: the transport's limit on this machine, the yardstick a
//! target's figures are divided by.
//!
//! A request/response loop over loopback TCP with exactly the PDUs NVMe/TCP exchanges
//! for the workload (command capsule; C2HData and response capsule for reads;
//! in-capsule data, or R2T then H2CData, then a response for writes; digests when
//! asked), with no storage behind it. The server stands in for the target: one
//! thread pinned like the target's reactor, serving every connection; per pass it
//! reads everything each socket holds and answers all of it with one `writev`, as
//! well as any target could batch. The client side is driven by the same engine as a
//! real run (same pinning, queue depth, accounting), but only frames PDUs: read data
//! is checked (digests) and dropped, write data comes from one shared buffer.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use clap::Args;
use lightpool_reactor::readiness::Readiness;
use lightpool_spec::nvme::{io_opcode, Cqe, SglDescriptor, Sqe};
use lightpool_spec::status::Status;
use lightpool_spec::tcp::{self as pdu, DataHeader, IcReq, IcResp, R2t, Role};
use lightpool_tcp_framing::{
    Flow, Next, Owner, Pdu, Receiver, RxConfig, RxError, SendParams, Shared, TxQueue,
};

use crate::cli::{fail_setup, parse_size_u64, OutputArgs, WorkloadArgs};
use crate::engine::{Device, Done, IoQueue, PerfError, QueueSetup, WorkerSpec};
use crate::initiator::{ConnectRequest, Qpair, QpairConfig};
use crate::nvme::NvmeQueue;
use crate::report::Report;
use crate::workload::{Op, Region, Rng};

/// Options of `lightpool-perf limit`.
#[derive(Args, Debug)]
pub struct LimitArgs {
    /// Core of the server end (where the target would run). Default: unpinned.
    #[arg(long)]
    pub server_core: Option<usize>,
    /// The client: `raw` frames PDUs and nothing more (the transport's limit);
    /// `nvme` is lightpool-perf's own initiator (ICReq, Connect, command slab, data
    /// into the buffers), which measures what the initiator costs.
    #[arg(long, default_value = "raw", value_parser = ["raw", "nvme"])]
    pub client: String,
    /// Header and data digests.
    #[arg(long)]
    pub digest: bool,
    /// Writes up to this size travel in the command capsule, larger ones through
    /// R2T/H2CData (LightPool's default in_capsule_data_size is 8192).
    #[arg(long, default_value = "8192", value_parser = parse_size_u64)]
    pub in_capsule: u64,
    /// Most data per H2CData PDU (what the target's ICResp would announce).
    #[arg(long, default_value = "131072", value_parser = parse_size_u64)]
    pub maxh2cdata: u64,
    /// The server sends read data from, and copies write data to, random places in a
    /// buffer this large (e.g. 1GiB, in huge pages when the system has them free), as
    /// a target serving a RAM namespace of that size must; the default (0) is one
    /// I/O-sized buffer, always in the cache: the transport alone.
    #[arg(long, default_value = "0", value_parser = parse_size_u64)]
    pub data_span: u64,
    #[command(flatten)]
    pub w: WorkloadArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// Receive staging buffer of either end.
const RX_BUF: usize = 256 * 1024;
/// iovecs per `writev` of either end.
const MAX_IOV: usize = 256;
/// The server reads write payload of at least this size straight into the span, as
/// the target does into a request's buffer.
const DIRECT_READ_MIN: u32 = 8 * 1024;

/// What the framing of one PDU stream needs to know.
#[derive(Clone, Copy, Debug)]
struct Wire {
    hdgst: bool,
    ddgst: bool,
    in_capsule: u32,
    maxh2cdata: u32,
}

impl Wire {
    fn send_params(&self) -> SendParams {
        SendParams {
            hdgst: self.hdgst,
            ddgst: self.ddgst,
            pda: 0,
        }
    }
}

/// The server's data: one I/O-sized buffer, or `--data-span` bytes (mapped once,
/// touched in full before the run, in huge pages when possible).
struct Span {
    ptr: *mut u8,
    len: usize,
}

impl Span {
    fn new(len: usize) -> Span {
        let len = len.max(1).next_multiple_of(2 << 20);
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        // SAFETY: fresh anonymous mappings; nothing else is affected.
        let mut ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                anon | libc::MAP_HUGETLB,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            // SAFETY: as above; transparent huge pages where the system gives them.
            ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, anon, -1, 0) };
            assert!(
                ptr != libc::MAP_FAILED,
                "cannot map {len} bytes for the limit's data"
            );
            // SAFETY: advice on the mapping just made.
            unsafe { libc::madvise(ptr, len, libc::MADV_HUGEPAGE) };
        }
        let ptr = ptr.cast::<u8>();
        // SAFETY: the mapping is `len` bytes, ours, and written before any read.
        unsafe { std::ptr::write_bytes(ptr, 0xA5, len) };
        Span { ptr, len }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; no slice of it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A random `align`-aligned offset where `len` bytes fit in `span` (below 4 GiB: a
/// payload offset is 32 bits).
fn place(rng: &mut Rng, span: usize, len: usize, align: usize) -> u32 {
    let span = span.min(u32::MAX as usize);
    let slots = (span.saturating_sub(len) / align.max(1)) + 1;
    (rng.below(slots as u64) as usize * align.max(1)) as u32
}

/// Where a PDU's payload goes on the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Payload {
    /// In-capsule write data of `cid`, answered when complete.
    Capsule { cid: u16 },
    /// H2CData of `cid`; `last` ends the command.
    H2c { cid: u16, last: bool },
}

/// The server's side of one connection: the framing's owner, answering every command
/// as soon as it is whole, with no storage behind it.
struct Srv {
    s: TcpStream,
    tx: TxQueue,
    w: Wire,
    /// The server's data (`Span`), which reads are sent from and, with `--data-span`,
    /// write data is copied to, at random places.
    data: *mut u8,
    data_len: usize,
    spanned: bool,
    rng: Rng,
    open: bool,
}

impl Srv {
    /// The span, for as long as the caller needs it (not tied to `self`, so the send
    /// queue can be filled while it is borrowed).
    fn data<'a>(&self) -> &'a [u8] {
        // SAFETY: `data` is the server's span, mapped for the whole of `serve`, which
        // owns every connection and outlives every use; the connections run one at a
        // time on its thread and no slice of the span is kept across calls, so no
        // mutable slice of it (see `payload_buf`) is alive at the same time.
        unsafe { std::slice::from_raw_parts(self.data, self.data_len) }
    }

    fn flush(&mut self) {
        let data = self.data();
        if self
            .tx
            .send::<MAX_IOV, _, _>(&mut self.s, &mut Shared(data))
            .is_err()
        {
            self.open = false;
        }
    }

    /// Where the payload of a write goes: a random place of the span, or nowhere.
    fn place_write(&mut self, len: u32) -> u32 {
        if self.spanned {
            place(&mut self.rng, self.data_len, len as usize, 4096)
        } else {
            0
        }
    }
}

impl Owner for Srv {
    type Sink = Payload;
    type Stream = TcpStream;
    type Ctx = ();

    fn stream(&mut self) -> &mut TcpStream {
        &mut self.s
    }

    fn payload_buf(&mut self, _sink: Payload, _end: u32) -> (&mut TcpStream, Option<&mut [u8]>) {
        let store = if self.spanned {
            // SAFETY: as in `data`; this slice lives only while the receiver copies
            // (or reads) this payload into it, and no other slice of the span is alive.
            Some(unsafe { std::slice::from_raw_parts_mut(self.data, self.data_len) })
        } else {
            None
        };
        (&mut self.s, store)
    }

    fn on_pdu(&mut self, _: &mut (), pdu: &Pdu, _header: &[u8]) -> Next<Payload> {
        let w = self.w;
        match *pdu {
            Pdu::IcReq(_) => {
                // For `--client nvme`: the digests of the run.
                let resp = IcResp {
                    pfv: pdu::PFV_1_0,
                    cpda: 0,
                    hdgst: w.hdgst,
                    ddgst: w.ddgst,
                    maxh2cdata: w.maxh2cdata,
                };
                self.tx.push_bytes(&resp.encode());
                Next::Done
            }
            Pdu::Command { sqe, data_len } if data_len > 0 => Next::Payload {
                sink: Payload::Capsule { cid: sqe.cid },
                off: self.place_write(data_len),
            },
            Pdu::Command { sqe, .. } => {
                let len = sqe.sgl().length;
                if sqe.opcode == io_opcode::READ {
                    let off = if self.spanned {
                        place(&mut self.rng, self.data_len, len as usize, 4096)
                    } else {
                        0
                    };
                    let h = DataHeader {
                        cccid: sqe.cid,
                        ttag: 0,
                        datao: 0,
                        datal: len,
                    };
                    let data = self.data();
                    let bytes = || &data[off as usize..(off + len) as usize];
                    let p = w.send_params();
                    self.tx.push_c2h_data(&h, true, false, p, (0, off), bytes);
                    self.tx
                        .push_resp(&Cqe::new(sqe.cid, Status::SUCCESS), w.hdgst);
                } else if sqe.opcode == io_opcode::WRITE {
                    let r2t = R2t {
                        cccid: sqe.cid,
                        ttag: sqe.cid,
                        r2to: 0,
                        r2tl: len,
                    };
                    self.tx.push_r2t(&r2t, w.hdgst);
                } else {
                    self.tx
                        .push_resp(&Cqe::new(sqe.cid, Status::SUCCESS), w.hdgst);
                }
                Next::Done
            }
            Pdu::H2CData { h, last } => Next::Payload {
                sink: Payload::H2c { cid: h.cccid, last },
                off: self.place_write(h.datal),
            },
            _ => {
                self.open = false;
                Next::Stop
            }
        }
    }

    fn on_payload(&mut self, _: &mut (), sink: Payload, _digest_ok: bool) -> Flow {
        if let Payload::Capsule { cid } | Payload::H2c { cid, last: true } = sink {
            self.tx
                .push_resp(&Cqe::new(cid, Status::SUCCESS), self.w.hdgst);
        }
        Flow::Continue
    }

    fn on_error(&mut self, _: &mut (), _e: RxError, _header: &[u8]) {
        self.open = false;
    }
}

/// The server's receivers and connections, side by side.
struct SrvConn {
    rx: Receiver<Payload>,
    c: Srv,
}

/// Serves up to `n` connections from `l` until `stop`: the stand-in target.
fn serve(l: TcpListener, n: usize, w: Wire, data_len: usize, data_span: usize, stop: &AtomicBool) {
    use std::os::fd::AsRawFd;
    let spanned = data_span > data_len;
    let span = Span::new(if spanned { data_span } else { data_len });
    let mut cs: Vec<SrvConn> = Vec::with_capacity(n);
    // Read only what epoll says is ready; write whatever is queued, each connection's
    // answers in one writev.
    let Ok(mut rd) = Readiness::new(n) else {
        return;
    };
    let mut ready = vec![false; n];
    let cfg = RxConfig {
        role: Role::Controller,
        pda: 0,
        maxh2cdata: w.maxh2cdata,
        in_capsule_max: w.in_capsule,
        staging: RX_BUF,
        budget: usize::MAX,
        direct_min: DIRECT_READ_MIN,
    };
    while !stop.load(Ordering::Relaxed) {
        if cs.len() < n {
            match l.accept() {
                Ok((s, _)) => {
                    let ok = s.set_nodelay(true).and_then(|_| s.set_nonblocking(true));
                    if ok.is_err() || rd.add(s.as_raw_fd(), cs.len() as u64).is_err() {
                        continue;
                    }
                    cs.push(SrvConn {
                        rx: Receiver::new(cfg),
                        c: Srv {
                            s,
                            tx: TxQueue::new(4096),
                            w,
                            data: span.ptr,
                            data_len: span.len,
                            spanned,
                            rng: Rng::new(cs.len() as u64 + 1),
                            open: true,
                        },
                    });
                }
                Err(_) if cs.is_empty() => thread::sleep(Duration::from_micros(100)),
                Err(_) => {}
            }
        }
        ready.fill(false);
        let _ = rd.poll();
        for t in rd.tokens() {
            if let Some(r) = ready.get_mut(t as usize) {
                *r = true;
            }
        }
        for (i, SrvConn { rx, c }) in cs.iter_mut().enumerate() {
            if !c.open {
                continue;
            }
            if ready[i] && rx.receive(c, &mut ()).is_err() {
                c.open = false;
                continue;
            }
            if !c.tx.is_empty() {
                c.flush();
            }
        }
    }
}

/// The client end of one connection, driven by the engine.
pub struct RawQueue {
    rx: Receiver<()>,
    c: Raw,
}

/// Everything of the client end but its receiver: what the receiver calls back into.
struct Raw {
    s: TcpStream,
    w: Wire,
    depth: u16,
    /// One buffer every tag shares: write data out, nothing in.
    data: Vec<u8>,
    free: Vec<u16>,
    tx: TxQueue,
    /// What went wrong in the stream, for `poll` to report.
    err: Option<String>,
}

impl RawQueue {
    /// A client end over `s`; its ICReq is the first thing queued.
    fn new(s: TcpStream, w: Wire, depth: u16, io_size: u32) -> RawQueue {
        let mut tx = TxQueue::new(usize::from(depth) * 4 + 16);
        let req = IcReq {
            pfv: pdu::PFV_1_0,
            hpda: 0,
            hdgst: w.hdgst,
            ddgst: w.ddgst,
            maxr2t: 0,
        };
        tx.push_bytes(&req.encode());
        let cfg = RxConfig {
            role: Role::Host,
            pda: 0,
            maxh2cdata: 0,
            in_capsule_max: 0,
            staging: RX_BUF,
            budget: usize::MAX,
            // Read data is dropped: nothing to read it into.
            direct_min: u32::MAX,
        };
        RawQueue {
            rx: Receiver::new(cfg),
            c: Raw {
                s,
                w,
                depth,
                data: vec![0x5Au8; io_size as usize],
                free: (0..depth).rev().collect(),
                tx,
                err: None,
            },
        }
    }
}

impl Owner for Raw {
    type Sink = ();
    type Stream = TcpStream;
    type Ctx = Vec<Done>;

    fn stream(&mut self) -> &mut TcpStream {
        &mut self.s
    }

    fn payload_buf(&mut self, _: (), _end: u32) -> (&mut TcpStream, Option<&mut [u8]>) {
        // Read data is only framed (and its digest checked), not kept.
        (&mut self.s, None)
    }

    fn on_pdu(&mut self, out: &mut Vec<Done>, pdu: &Pdu, _header: &[u8]) -> Next<()> {
        match pdu {
            Pdu::IcResp(_) => Next::Done,
            Pdu::Response(cqe) => {
                self.free.push(cqe.cid);
                out.push(Done {
                    tag: cqe.cid,
                    error: None,
                });
                Next::Done
            }
            Pdu::C2HData { .. } => Next::Payload { sink: (), off: 0 },
            Pdu::R2T(r) => {
                let p = self.w.send_params();
                self.tx
                    .push_h2c_for_r2t(r, self.w.maxh2cdata, p, r.cccid, &self.data);
                Next::Done
            }
            other => {
                self.err = Some(format!("unexpected PDU {other:?}"));
                Next::Stop
            }
        }
    }

    fn on_payload(&mut self, _: &mut Vec<Done>, _: (), _digest_ok: bool) -> Flow {
        Flow::Continue
    }

    fn on_error(&mut self, _: &mut Vec<Done>, e: RxError, _header: &[u8]) {
        self.err = Some(e.to_string());
    }
}

fn io_err(e: io::Error) -> PerfError {
    PerfError::Setup(format!("limit connection: {e}"))
}

impl IoQueue for RawQueue {
    fn depth(&self) -> u16 {
        self.c.depth
    }

    fn alloc(&mut self) -> Option<u16> {
        self.c.free.pop()
    }

    fn buf(&self, _tag: u16) -> &[u8] {
        &self.c.data
    }

    fn buf_mut(&mut self, _tag: u16) -> &mut [u8] {
        &mut self.c.data
    }

    fn submit(
        &mut self,
        tag: u16,
        op: Op,
        lba: u64,
        blocks: u32,
        bytes: u32,
    ) -> Result<(), PerfError> {
        let c = &mut self.c;
        let write = op == Op::Write;
        let in_capsule = write && bytes <= c.w.in_capsule;
        let mut sqe = Sqe {
            opcode: if write {
                io_opcode::WRITE
            } else {
                io_opcode::READ
            },
            cid: tag,
            nsid: 1,
            cdw10: lba as u32,
            cdw11: (lba >> 32) as u32,
            cdw12: blocks - 1,
            ..Sqe::default()
        };
        sqe.set_sgl(&if in_capsule {
            SglDescriptor::in_capsule(0, bytes)
        } else {
            SglDescriptor::transport(bytes)
        });
        let data = in_capsule.then(|| (tag, &c.data[..bytes as usize]));
        c.tx.push_capsule(&sqe, c.w.send_params(), data);
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Done>) -> Result<(), PerfError> {
        let res = self.rx.receive(&mut self.c, out);
        if let Some(e) = self.c.err.take() {
            return Err(PerfError::Setup(format!("limit connection: {e}")));
        }
        match res {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(PerfError::Setup(
                "the limit server closed a connection".into(),
            )),
            Err(e) => Err(io_err(e)),
        }
    }

    fn flush(&mut self) -> Result<(), PerfError> {
        let c = &mut self.c;
        c.tx.send::<MAX_IOV, _, _>(&mut c.s, &mut Shared(&c.data))
            .map(|_| ())
            .map_err(io_err)
    }

    fn in_flight(&self) -> usize {
        usize::from(self.c.depth) - self.c.free.len()
    }

    fn close(self) -> Result<(), PerfError> {
        Ok(())
    }

    fn describe(&self) -> String {
        "limit connection".to_string()
    }

    fn fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.c.s.as_raw_fd())
    }
}

/// `per_core` client queues for each core, connected here (the server answers
/// while it waits for the rest).
fn clients<Q: IoQueue + Send + 'static>(
    cores: &[Option<usize>],
    per_core: usize,
    seed: u64,
    region: Region,
    connect: &dyn Fn() -> Result<Q, PerfError>,
) -> Result<Vec<WorkerSpec<Q>>, PerfError> {
    let mut workers = Vec::new();
    for (ci, core) in cores.iter().enumerate() {
        let mut setups = Vec::new();
        for qi in 0..per_core {
            setups.push(QueueSetup {
                queue: connect()?,
                device: 0,
                region,
                seed: seed ^ ((ci * per_core + qi) as u64).wrapping_mul(0x9E37_79B9),
            });
        }
        workers.push(WorkerSpec {
            core: *core,
            build: Box::new(move || Ok(setups)),
        });
    }
    Ok(workers)
}

/// Serves `n` connections on a thread pinned to `core`.
fn start_server(
    n: usize,
    w: Wire,
    io_size: u32,
    data_span: usize,
    core: Option<usize>,
    stop: Arc<AtomicBool>,
) -> Result<(SocketAddr, thread::JoinHandle<Option<Duration>>), PerfError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io_err)?;
    let addr = l.local_addr().map_err(io_err)?;
    let h = thread::Builder::new()
        .name("limit-server".into())
        .spawn(move || {
            if let Some(c) = core {
                core_affinity::set_for_current(core_affinity::CoreId { id: c });
            }
            let _ = l.set_nonblocking(true);
            let d0 = crate::engine::run_delay();
            serve(l, n, w, io_size as usize, data_span, &stop);
            match (d0, crate::engine::run_delay()) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            }
        })
        .map_err(|e| PerfError::Setup(format!("cannot start the limit server: {e}")))?;
    Ok((addr, h))
}

pub fn main(a: &LimitArgs) -> i32 {
    let job = match a.w.job(a.out.progress()) {
        Ok(j) => j,
        Err(e) => return fail_setup(PerfError::Invalid(e)),
    };
    if job.verify {
        return fail_setup(PerfError::Invalid(
            "--verify needs storage; the limit run has none".into(),
        ));
    }
    if let Some(c) = a.server_core {
        if !core_affinity::get_core_ids()
            .unwrap_or_default()
            .iter()
            .any(|x| x.id == c)
        {
            return fail_setup(PerfError::Invalid(format!(
                "--server-core {c} is not available to this process"
            )));
        }
    }
    let w = Wire {
        hdgst: a.digest,
        ddgst: a.digest,
        in_capsule: u32::try_from(a.in_capsule).unwrap_or(u32::MAX),
        maxh2cdata: u32::try_from(a.maxh2cdata.max(4096)).unwrap_or(u32::MAX),
    };
    let cores = a.w.core_list();
    let per_core = usize::from(a.w.qpairs);
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, server) = match start_server(
        cores.len() * per_core,
        w,
        job.io_size,
        usize::try_from(a.data_span).unwrap_or(usize::MAX),
        a.server_core,
        stop.clone(),
    ) {
        Ok(x) => x,
        Err(e) => return fail_setup(e),
    };
    // The LBAs are irrelevant here; a region just large enough keeps offsets varied.
    let region = Region {
        start_lba: 0,
        blocks: 1 << 30,
    };
    let devices = vec![Device {
        name: format!("loopback {addr}"),
        block_size: 512.min(job.io_size),
        range: region,
    }];
    let seed = a.w.seed();
    let started = SystemTime::now();
    let (depth, io_size) = (job.depth, job.io_size);
    let outcome = if a.client == "nvme" {
        let timeout = Duration::from_secs(5);
        let connect = || -> Result<NvmeQueue, PerfError> {
            let cfg = QpairConfig {
                depth,
                buf_len: io_size as usize,
                in_capsule_max: w.in_capsule,
                force_r2t: false,
            };
            let mut qp = Qpair::connect(addr, w.hdgst, w.ddgst, cfg, timeout)?;
            let req = ConnectRequest {
                qid: 1,
                entries: depth + 1,
                kato_ms: 0,
                cntlid: 1,
                subnqn: "nqn.limit",
                hostnqn: "nqn.limit-host",
                hostid: [0; 16],
            };
            qp.fabric_connect(&req, timeout)?;
            qp.set_nonblocking()?;
            Ok(NvmeQueue::new(qp, 1, false, timeout))
        };
        clients(&cores, per_core, seed, region, &connect)
            .and_then(|ws| crate::engine::run(&job, &devices, ws, &mut || Ok(())))
    } else {
        let connect = || -> Result<RawQueue, PerfError> {
            let s = TcpStream::connect(addr).map_err(io_err)?;
            s.set_nodelay(true).map_err(io_err)?;
            s.set_nonblocking(true).map_err(io_err)?;
            Ok(RawQueue::new(s, w, depth, io_size))
        };
        clients(&cores, per_core, seed, region, &connect)
            .and_then(|ws| crate::engine::run(&job, &devices, ws, &mut || Ok(())))
    };
    stop.store(true, Ordering::SeqCst);
    let server_wait = server.join().ok().flatten();
    let target = format!(
        "the transport limit (loopback TCP, server on {}, in-capsule writes up to {} B)",
        crate::engine::core_name(a.server_core),
        w.in_capsule
    );
    let digests = if a.digest { "header+data" } else { "" }.to_string();
    let mode = if a.client == "nvme" {
        "lightpool-perf's initiator against a null target"
    } else {
        "raw TCP request/response"
    };
    let settings = a.w.settings(mode, target, per_core, digests);
    match outcome {
        Ok(out) => {
            let mut r = Report::new(settings, &job, &devices, &out);
            r.server_preempted_ms = server_wait.map(|d| d.as_secs_f64() * 1000.0);
            a.out.emit(&r, started)
        }
        Err(e) => fail_setup(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Every workload completes its I/Os through the framing (in-capsule and R2T
    /// writes, reads, digests).
    #[test]
    fn raw_loop_completes_every_kind() {
        // The last two with a data span: reads from, and writes into, random places of
        // an 8 MiB buffer (digests computed over the right bytes).
        for &(digest, io, in_capsule, span) in &[
            (false, 4096u32, 8192u32, 0usize),
            (true, 16384, 8192, 0),
            (true, 4096, 0, 0),
            (true, 4096, 8192, 8 << 20),
            (true, 16384, 0, 8 << 20),
        ] {
            let w = Wire {
                hdgst: digest,
                ddgst: digest,
                in_capsule,
                maxh2cdata: 8192,
            };
            let stop = Arc::new(AtomicBool::new(false));
            let (addr, server) = start_server(1, w, io, span, None, stop.clone()).expect("server");
            let s = TcpStream::connect(addr).expect("connect");
            s.set_nonblocking(true).expect("nonblocking");
            let mut q = RawQueue::new(s, w, 4, io);
            let mut done = Vec::new();
            let mut total = 0;
            for round in 0..50 {
                while let Some(t) = q.alloc() {
                    let op = if (round + usize::from(t)) % 2 == 0 {
                        Op::Read
                    } else {
                        Op::Write
                    };
                    q.submit(t, op, 0, io / 512, io).expect("submit");
                }
                q.flush().expect("flush");
                let deadline = Instant::now() + Duration::from_secs(5);
                while q.in_flight() > 0 && Instant::now() < deadline {
                    done.clear();
                    q.poll(&mut done).expect("poll");
                    q.flush().expect("flush");
                    total += done.len();
                }
                assert_eq!(q.in_flight(), 0, "digest {digest} io {io}");
            }
            assert_eq!(total, 200);
            stop.store(true, Ordering::SeqCst);
            server.join().expect("server thread");
        }
    }
}
