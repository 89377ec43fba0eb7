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

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use clap::Args;
use lightpool_spec::nvme::{io_opcode, Cqe, SglDescriptor, Sqe};
use lightpool_spec::status::Status;
use lightpool_spec::tcp::{
    self as pdu, flags, CommonHeader, DataHeader, IcResp, PduType, R2t, CAPSULE_CMD_HLEN,
    COMMON_HEADER_SIZE, MAX_HEADER_BUF,
};

use crate::cli::{fail_setup, parse_size_u64, OutputArgs, WorkloadArgs};
use crate::engine::{Device, Done, IoQueue, PerfError, QueueSetup, WorkerSpec};
use crate::initiator::tx::{TxQueue, INLINE_MAX, MAX_IOV};
use crate::initiator::{Qpair, QpairConfig};
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

/// What the framing of one PDU stream needs to know.
#[derive(Clone, Copy, Debug)]
struct Wire {
    hdgst: bool,
    ddgst: bool,
    in_capsule: u32,
    maxh2cdata: u32,
}

/// Where a PDU's payload goes once skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Payload {
    /// Server: in-capsule write data of `cid`, answered when complete.
    Capsule { cid: u16 },
    /// Server: H2CData of `cid`; `last` ends the command.
    H2c { cid: u16, last: bool },
    /// Client: C2HData.
    C2h,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rx {
    Hdr,
    Body {
        what: Payload,
        pad: u32,
        data: u32,
        crc: u32,
        digest: u8,
    },
}

/// The PDU framing both ends share: gathers headers, skips payload (computing the
/// data digest when on; on the server, copying write data into the span when there is
/// one), and hands each complete unit to `on`.
struct Framer {
    rx: Box<[u8]>,
    hdr: [u8; MAX_HEADER_BUF],
    have: usize,
    state: Rx,
    /// Server with `--data-span`: where write payload goes, and where the current one
    /// is going.
    store: Option<Store>,
    store_at: usize,
    rng: Rng,
}

/// The span write data is copied into (base, length).
#[derive(Clone, Copy)]
struct Store(*mut u8, usize);

// SAFETY: only the server's framers have one, and they live and die on the server's
// thread, which also owns the span; a client's framer (moved to its worker) has none.
unsafe impl Send for Store {}

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

    fn as_slice(&self) -> &[u8] {
        // SAFETY: mapped and initialised in `new`, unmapped only in Drop.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; no slice of it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A random `align`-aligned offset where `len` bytes fit in `span`.
fn place(rng: &mut Rng, span: usize, len: usize, align: usize) -> usize {
    let slots = (span.saturating_sub(len) / align.max(1)) + 1;
    rng.below(slots as u64) as usize * align.max(1)
}

enum Unit<'a> {
    Header(CommonHeader, &'a [u8]),
    PayloadDone(Payload),
}

impl Framer {
    fn new() -> Framer {
        Framer {
            rx: vec![0u8; RX_BUF].into_boxed_slice(),
            hdr: [0u8; MAX_HEADER_BUF],
            have: 0,
            state: Rx::Hdr,
            store: None,
            store_at: 0,
            rng: Rng::new(0),
        }
    }

    /// Reads what `s` holds and feeds it through; false when the peer closed.
    fn pump(
        &mut self,
        s: &mut TcpStream,
        w: Wire,
        on: &mut dyn FnMut(Unit<'_>) -> Option<Payload>,
    ) -> io::Result<bool> {
        loop {
            let n = match s.read(&mut self.rx) {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.feed(n, w, on);
            if n < self.rx.len() {
                return Ok(true);
            }
        }
    }

    fn feed(&mut self, n: usize, w: Wire, on: &mut dyn FnMut(Unit<'_>) -> Option<Payload>) {
        let mut at = 0;
        while at < n {
            match self.state {
                Rx::Hdr => {
                    let need = if self.have < COMMON_HEADER_SIZE {
                        COMMON_HEADER_SIZE
                    } else {
                        let ch = CommonHeader::parse(
                            self.hdr[..COMMON_HEADER_SIZE].try_into().expect("8 bytes"),
                        );
                        (ch.header_end() as usize).min(MAX_HEADER_BUF)
                    };
                    let k = (need - self.have).min(n - at);
                    self.hdr[self.have..self.have + k].copy_from_slice(&self.rx[at..at + k]);
                    self.have += k;
                    at += k;
                    if self.have == need && need > COMMON_HEADER_SIZE {
                        let ch = CommonHeader::parse(
                            self.hdr[..COMMON_HEADER_SIZE].try_into().expect("8 bytes"),
                        );
                        let hlen = usize::from(ch.hlen);
                        if w.hdgst && ch.hdgst_len() != 0 {
                            // The digest work every receiver does; a mismatch cannot
                            // happen on loopback and would only be counted.
                            let d: [u8; 4] = self.hdr[hlen..hlen + 4].try_into().expect("4 bytes");
                            let _ = pdu::header_digest_ok(&self.hdr[..hlen], &d);
                        }
                        self.have = 0;
                        let next = on(Unit::Header(ch, &self.hdr[..hlen]));
                        if let Some(what) = next {
                            if let (
                                Some(Store(_, span)),
                                Payload::Capsule { .. } | Payload::H2c { .. },
                            ) = (self.store, what)
                            {
                                let len = ch.data_len() as usize;
                                self.store_at = place(&mut self.rng, span, len, 4096);
                            }
                            self.state = Rx::Body {
                                what,
                                pad: ch.padding_len(),
                                data: ch.data_len(),
                                crc: 0,
                                digest: ch.ddgst_len() as u8,
                            };
                        }
                    }
                }
                Rx::Body {
                    what,
                    mut pad,
                    mut data,
                    mut crc,
                    mut digest,
                } => {
                    let k = (pad as usize).min(n - at);
                    pad -= k as u32;
                    at += k;
                    let k = (data as usize).min(n - at);
                    if digest > 0 {
                        crc = pdu::crc32c_append(crc, &self.rx[at..at + k]);
                    }
                    if let (
                        Some(Store(base, span)),
                        Payload::Capsule { .. } | Payload::H2c { .. },
                    ) = (self.store, what)
                    {
                        // Write data lands in memory, as in a RAM namespace.
                        let k = k.min(span.saturating_sub(self.store_at));
                        // SAFETY: `store_at + k` stays inside the span (clamped above),
                        // which outlives the connection; the source is our rx buffer.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                self.rx[at..].as_ptr(),
                                base.add(self.store_at),
                                k,
                            )
                        };
                        self.store_at += k;
                    }
                    data -= k as u32;
                    at += k;
                    if data == 0 {
                        let k = usize::from(digest).min(n - at);
                        digest -= k as u8;
                        at += k;
                    }
                    if pad == 0 && data == 0 && digest == 0 {
                        self.state = Rx::Hdr;
                        on(Unit::PayloadDone(what));
                    } else {
                        self.state = Rx::Body {
                            what,
                            pad,
                            data,
                            crc,
                            digest,
                        };
                    }
                }
            }
        }
    }
}

fn flush(s: &mut TcpStream, tx: &mut TxQueue, data: &[u8]) -> io::Result<()> {
    while !tx.is_empty() {
        let r = {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let n = tx.gather(&mut iov, &|_| data);
            s.write_vectored(&iov[..n])
        };
        match r {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => tx.advance(n, &mut |_| {}),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn push_resp(tx: &mut TxQueue, cid: u16, w: Wire) {
    let mut b = [0u8; 28];
    let n = pdu::encode_capsule_resp(&Cqe::new(cid, Status::SUCCESS), w.hdgst, &mut b);
    tx.push_bytes(&b[..n]);
}

/// The server's side of one connection.
struct SrvConn {
    s: TcpStream,
    f: Framer,
    tx: TxQueue,
    open: bool,
}

/// Serves up to `n` connections from `l` until `stop`: the stand-in target.
fn serve(l: TcpListener, n: usize, w: Wire, data_len: usize, data_span: usize, stop: &AtomicBool) {
    use std::os::fd::AsRawFd;
    let spanned = data_span > data_len;
    let span = Span::new(if spanned { data_span } else { data_len });
    let data = span.as_slice();
    let mut rng = Rng::new(u64::MAX);
    let mut cs: Vec<SrvConn> = Vec::with_capacity(n);
    // Read only what epoll says is ready (see crate::readiness); write whatever is
    // queued, each connection's answers in one writev.
    let Ok(mut rd) = crate::readiness::Readiness::new(n) else {
        return;
    };
    let mut ready = vec![false; n];
    while !stop.load(Ordering::Relaxed) {
        if cs.len() < n {
            match l.accept() {
                Ok((s, _)) => {
                    let ok = s.set_nodelay(true).and_then(|_| s.set_nonblocking(true));
                    if ok.is_err() || rd.add(s.as_raw_fd(), cs.len() as u64).is_err() {
                        continue;
                    }
                    let mut f = Framer::new();
                    if spanned {
                        f.store = Some(Store(span.ptr, span.len));
                        f.rng = Rng::new(cs.len() as u64 + 1);
                    }
                    cs.push(SrvConn {
                        s,
                        f,
                        tx: TxQueue::new(4096),
                        open: true,
                    });
                }
                Err(_) if cs.is_empty() => thread::sleep(Duration::from_micros(100)),
                Err(_) => {}
            }
        }
        ready.fill(false);
        let n = rd.poll().unwrap_or(0);
        for k in 0..n {
            if let Some(r) = ready.get_mut(rd.token(k) as usize) {
                *r = true;
            }
        }
        for (i, c) in cs.iter_mut().enumerate() {
            if !c.open {
                continue;
            }
            if !ready[i] {
                if !c.tx.is_empty() && flush(&mut c.s, &mut c.tx, data).is_err() {
                    c.open = false;
                }
                continue;
            }
            let tx = &mut c.tx;
            let mut on = |u: Unit<'_>| -> Option<Payload> {
                match u {
                    Unit::Header(ch, hdr) => match PduType::try_from(ch.pdu_type) {
                        Ok(PduType::IcReq) => {
                            // For `--client nvme`: accept the digests asked for.
                            let resp = IcResp {
                                pfv: pdu::PFV_1_0,
                                cpda: 0,
                                hdgst: w.hdgst,
                                ddgst: w.ddgst,
                                maxh2cdata: w.maxh2cdata,
                            };
                            tx.push_bytes(&resp.encode());
                            None
                        }
                        Ok(PduType::CapsuleCmd) if hdr.len() >= CAPSULE_CMD_HLEN => {
                            let sqe = pdu::capsule_cmd_sqe(hdr.try_into().expect("72 bytes"));
                            if ch.has_data() {
                                return Some(Payload::Capsule { cid: sqe.cid });
                            }
                            let len = sqe.sgl().length;
                            if sqe.opcode == io_opcode::READ {
                                let mut h = [0u8; INLINE_MAX];
                                let hl = pdu::encode_c2h_data_header(
                                    &DataHeader {
                                        cccid: sqe.cid,
                                        ttag: 0,
                                        datao: 0,
                                        datal: len,
                                    },
                                    true,
                                    false,
                                    w.hdgst,
                                    w.ddgst,
                                    0,
                                    &mut h,
                                );
                                tx.push_header(h, hl);
                                let off = if spanned {
                                    place(&mut rng, data.len(), len as usize, 4096)
                                } else {
                                    0
                                };
                                tx.push_data(0, off as u32, len);
                                if w.ddgst {
                                    tx.push_bytes(&pdu::data_digest(
                                        &data[off..off + len as usize],
                                    ));
                                }
                                push_resp(tx, sqe.cid, w);
                            } else if sqe.opcode == io_opcode::WRITE {
                                let mut b = [0u8; 28];
                                let n = pdu::encode_r2t(
                                    &R2t {
                                        cccid: sqe.cid,
                                        ttag: sqe.cid,
                                        r2to: 0,
                                        r2tl: len,
                                    },
                                    w.hdgst,
                                    &mut b,
                                );
                                tx.push_bytes(&b[..n]);
                            } else {
                                push_resp(tx, sqe.cid, w);
                            }
                            None
                        }
                        Ok(PduType::H2CData) => {
                            let h = DataHeader::parse(hdr);
                            Some(Payload::H2c {
                                cid: h.cccid,
                                last: ch.flags & flags::DATA_LAST != 0,
                            })
                        }
                        _ => None,
                    },
                    Unit::PayloadDone(Payload::Capsule { cid })
                    | Unit::PayloadDone(Payload::H2c { cid, last: true }) => {
                        push_resp(tx, cid, w);
                        None
                    }
                    Unit::PayloadDone(_) => None,
                }
            };
            match c.f.pump(&mut c.s, w, &mut on) {
                Ok(true) => {}
                Ok(false) | Err(_) => {
                    c.open = false;
                    continue;
                }
            }
            if flush(&mut c.s, &mut c.tx, data).is_err() {
                c.open = false;
            }
        }
    }
}

/// The client end of one connection, driven by the engine.
pub struct RawQueue {
    s: TcpStream,
    w: Wire,
    depth: u16,
    /// One buffer every tag shares: write data out, nothing in.
    data: Vec<u8>,
    free: Vec<u16>,
    len: Vec<u32>,
    f: Framer,
    tx: TxQueue,
    done: Vec<u16>,
}

impl RawQueue {
    fn new(s: TcpStream, w: Wire, depth: u16, io_size: u32) -> RawQueue {
        RawQueue {
            s,
            w,
            depth,
            data: vec![0x5Au8; io_size as usize],
            free: (0..depth).rev().collect(),
            len: vec![0; usize::from(depth)],
            f: Framer::new(),
            tx: TxQueue::new(usize::from(depth) * 4 + 16),
            done: Vec::with_capacity(usize::from(depth)),
        }
    }
}

fn io_err(e: io::Error) -> PerfError {
    PerfError::Setup(format!("limit connection: {e}"))
}

impl IoQueue for RawQueue {
    fn depth(&self) -> u16 {
        self.depth
    }

    fn alloc(&mut self) -> Option<u16> {
        self.free.pop()
    }

    fn buf(&self, _tag: u16) -> &[u8] {
        &self.data
    }

    fn buf_mut(&mut self, _tag: u16) -> &mut [u8] {
        &mut self.data
    }

    fn submit(
        &mut self,
        tag: u16,
        op: Op,
        lba: u64,
        blocks: u32,
        bytes: u32,
    ) -> Result<(), PerfError> {
        let w = self.w;
        let write = op == Op::Write;
        let in_capsule = write && bytes <= w.in_capsule;
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
        let mut h = [0u8; INLINE_MAX];
        let hl = pdu::encode_capsule_cmd_header(
            &sqe,
            w.hdgst,
            w.ddgst,
            if in_capsule { bytes } else { 0 },
            0,
            &mut h,
        );
        self.tx.push_header(h, hl);
        if in_capsule {
            self.tx.push_data(tag, 0, bytes);
            if w.ddgst {
                self.tx
                    .push_bytes(&pdu::data_digest(&self.data[..bytes as usize]));
            }
        }
        self.len[usize::from(tag)] = bytes;
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Done>) -> Result<(), PerfError> {
        let (tx, data, done, w) = (&mut self.tx, &self.data, &mut self.done, self.w);
        let mut on = |u: Unit<'_>| -> Option<Payload> {
            match u {
                Unit::Header(ch, hdr) => match PduType::try_from(ch.pdu_type) {
                    Ok(PduType::CapsuleResp) => {
                        done.push(pdu::capsule_resp_cqe(hdr.try_into().expect("24 bytes")).cid);
                        None
                    }
                    Ok(PduType::C2HData) => Some(Payload::C2h),
                    Ok(PduType::R2T) => {
                        let r = R2t::parse(hdr);
                        let end = r.r2to + r.r2tl;
                        let mut off = r.r2to;
                        while off < end {
                            let n = (end - off).min(w.maxh2cdata);
                            let mut h = [0u8; INLINE_MAX];
                            let hl = pdu::encode_h2c_data_header(
                                &DataHeader {
                                    cccid: r.cccid,
                                    ttag: r.ttag,
                                    datao: off,
                                    datal: n,
                                },
                                off + n == end,
                                w.hdgst,
                                w.ddgst,
                                0,
                                &mut h,
                            );
                            tx.push_header(h, hl);
                            tx.push_data(r.cccid, off, n);
                            if w.ddgst {
                                tx.push_bytes(&pdu::data_digest(
                                    &data[off as usize..(off + n) as usize],
                                ));
                            }
                            off += n;
                        }
                        None
                    }
                    _ => None,
                },
                Unit::PayloadDone(_) => None,
            }
        };
        match self.f.pump(&mut self.s, w, &mut on) {
            Ok(true) => {}
            Ok(false) => {
                return Err(PerfError::Setup(
                    "the limit server closed a connection".into(),
                ))
            }
            Err(e) => return Err(io_err(e)),
        }
        for cid in self.done.drain(..) {
            self.free.push(cid);
            out.push(Done {
                tag: cid,
                error: None,
            });
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), PerfError> {
        flush(&mut self.s, &mut self.tx, &self.data).map_err(io_err)
    }

    fn in_flight(&self) -> usize {
        usize::from(self.depth) - self.free.len()
    }

    fn close(self) -> Result<(), PerfError> {
        Ok(())
    }

    fn describe(&self) -> String {
        "limit connection".to_string()
    }

    fn fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.s.as_raw_fd())
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
        Err(e) => return fail_setup(PerfError::Setup(e)),
    };
    if job.verify {
        return fail_setup(PerfError::Setup(
            "--verify needs storage; the limit run has none".into(),
        ));
    }
    if let Some(c) = a.server_core {
        if !core_affinity::get_core_ids()
            .unwrap_or_default()
            .iter()
            .any(|x| x.id == c)
        {
            return fail_setup(PerfError::Setup(format!(
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
            qp.fabric_connect(
                1,
                depth + 1,
                0,
                1,
                "nqn.limit",
                "nqn.limit-host",
                [0; 16],
                timeout,
            )?;
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
