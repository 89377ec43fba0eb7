//! An NVMe SSD driven from userspace through VFIO ([`lightpool_nvme_vfio`]).
//!
//! Hardware queues: one I/O queue pair per (controller, reactor thread), shared by
//! every channel opened on that thread. Channels are opened per target queue pair, and
//! hosts decide how many of those there are (a Linux host asks for one per CPU); an SSD
//! has a fixed number of hardware queues (QEMU's: 64), so a queue pair per channel would
//! run out, while a queue pair per thread is bounded by the number of reactors and never
//! needs a lock (SPDK shares its NVMe queue pairs per thread the same way). The shared
//! queue lives in a thread-local; its completions are routed back to the channel that
//! submitted them (the channel's slot number rides in the command's context), and it is
//! deleted when the last channel on its thread closes.
//!
//! Data: requests whose buffer lies inside the process-wide DMA pool (registered with
//! the VFIO container) go to the device as they are; any other buffer is bounced through
//! a pool buffer (copied in before a write, out after a read). The device offers that
//! pool ([`Bdev::dma_pool`]) and the NVMe-oF target takes its request buffers from it,
//! so what it serves never bounces; [`NvmeVfioBdev::bounced`] counts what did (logged
//! when the namespace closes). Requests larger than one pool buffer or the controller's
//! MDTS are split into several commands.
//!
//! Commands: Read, Write, Flush (only when the device has a volatile write cache; it is a
//! no-op otherwise), Write Zeroes (emulated with writes of zeroes where ONCS lacks it),
//! Deallocate as Dataset Management (a no-op where ONCS lacks it, which is allowed:
//! deallocation is advisory and the device then reports no deallocate support).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lightpool_dma::{DmaBuf, DmaMapper, DmaPool, HugePages, PoolOptions};
use lightpool_nvme_vfio::{
    CmdError, Container, ContainerState, Controller, ControllerOptions, ControllerState, IoCmd,
    IoQueuePair, MemState, NamespaceInfo, SubmitError,
};
use lightpool_spec::identify::oncs;
use lightpool_spec::status::{generic, sct};

use lightpool_bdev::{
    check_request, Adopter, Adoption, Bdev, BdevError, BdevInfo, Export, IoChannel, IoOp,
    IoRequest, IoStatus,
};

/// How to open an [`NvmeVfioBdev`].
#[derive(Debug, Clone)]
pub struct NvmeVfioOptions {
    /// The namespace to serve.
    pub nsid: u32,
    /// Entries per hardware I/O queue.
    pub queue_depth: u16,
    /// Per-command timeout (abort, then controller reset).
    pub command_timeout: Duration,
    /// Where DMA memory comes from.
    pub hugepages: HugePages,
    /// Buffers of the process-wide DMA pool (128 KiB each), made by the first device
    /// opened.
    pub pool_buffers: usize,
}

impl Default for NvmeVfioOptions {
    fn default() -> Self {
        NvmeVfioOptions {
            nsid: 1,
            queue_depth: 256,
            command_timeout: Duration::from_secs(30),
            hugepages: HugePages::Auto,
            pool_buffers: 256,
        }
    }
}

/// Bytes per pool buffer: the target's default largest transfer.
const POOL_BUF: usize = 128 * 1024;
/// Blocks one Write Zeroes command may name (NLB is 16 bits, 0's based).
const MAX_NLB: u64 = 65536;

static POOL: Mutex<Option<Arc<DmaPool>>> = Mutex::new(None);

/// The process-wide DMA pool, registered with the shared VFIO container; made on first
/// use (after a device is attached, since the container has no IOMMU before).
fn shared_pool(
    container: &Arc<Container>,
    opts: &NvmeVfioOptions,
) -> Result<Arc<DmaPool>, BdevError> {
    let mut p = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pool) = p.as_ref() {
        return Ok(pool.clone());
    }
    let mapper: Arc<dyn DmaMapper> = container.clone();
    let pool = DmaPool::new(
        &PoolOptions {
            buf_size: POOL_BUF,
            count: opts.pool_buffers.max(8),
            cache_size: 16,
            hugepages: opts.hugepages.clone(),
        },
        Some(mapper),
    )
    .map_err(|e| BdevError::Invalid(format!("DMA pool: {e}")))?;
    *p = Some(pool.clone());
    Ok(pool)
}

/// [`Bdev::kind`] of NVMe namespaces driven through VFIO.
pub const KIND: &str = "nvme-vfio";

/// What a successor process needs to take an NVMe namespace over during a hot upgrade
/// (see [`NvmeVfioBdev::adopt`]). Descriptors travel beside it, in this order: the
/// container and its groups, the DMA pool's memory, then the controller's (device,
/// admin memory, one per I/O queue).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NvmeVfioHandover {
    pub ns: NamespaceInfo,
    pub pool_buf_size: usize,
    pub pool_count: usize,
    pub pool_mem: MemState,
    pub container: ContainerState,
    pub controller: ControllerState,
}

struct Shared {
    info: BdevInfo,
    ns: NamespaceInfo,
    ctrl: Arc<Controller>,
    nsid: u32,
    pool: Arc<DmaPool>,
    /// Largest read/write of one command, in blocks.
    chunk_blocks: u32,
    write_zeroes: bool,
    deallocate: bool,
    flush: bool,
    /// Commands whose data went through a bounce buffer (the caller's buffer was not
    /// pool memory). Counted on the bounce path only.
    bounced: AtomicU64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        tracing::info!(
            device = %self.info.name,
            bounced = self.bounced.load(Ordering::Relaxed),
            "VFIO NVMe namespace closed"
        );
    }
}

/// A namespace of an NVMe controller driven through VFIO.
pub struct NvmeVfioBdev {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NvmeVfioBdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmeVfioBdev")
            .field("info", &self.shared.info)
            .field("ctrl", &self.shared.ctrl)
            .finish()
    }
}

fn nvme_err(addr: &str, e: impl std::fmt::Display) -> BdevError {
    BdevError::Invalid(format!("NVMe device {addr}: {e}"))
}

impl NvmeVfioBdev {
    /// Opens namespace `opts.nsid` of the NVMe controller at PCI address `addr`, which
    /// must be bound to vfio-pci (hugepage-setup bind does it).
    pub fn open(addr: &str, opts: NvmeVfioOptions) -> Result<Arc<NvmeVfioBdev>, BdevError> {
        let container = Container::shared().map_err(|e| nvme_err(addr, e))?;
        let ctrl = Controller::open(
            container.clone(),
            addr,
            ControllerOptions {
                io_queue_depth: opts.queue_depth,
                command_timeout: opts.command_timeout,
                hugepages: opts.hugepages.clone(),
                ..ControllerOptions::default()
            },
        )
        .map_err(|e| nvme_err(addr, e))?;
        let ns: NamespaceInfo = ctrl.namespace(opts.nsid).map_err(|e| nvme_err(addr, e))?;
        let pool = shared_pool(&container, &opts)?;
        Self::assemble(addr, ctrl, ns, pool)
    }

    /// Hot upgrade, new process: the namespace a predecessor served, on the same
    /// controller, queues, container and DMA memory, with no command sent to the
    /// controller (the predecessor may still take it back until [`Bdev::adopted`]).
    /// `fds` in the order [`NvmeVfioHandover`] says.
    pub fn adopt(st: &NvmeVfioHandover, fds: Vec<OwnedFd>) -> Result<Arc<NvmeVfioBdev>, BdevError> {
        let addr = st.controller.addr.as_str();
        let n_container = st.container.groups.len() + 1;
        let n_ctrl = st.controller.io_queues.len() + 2;
        if fds.len() != n_container + 1 + n_ctrl {
            return Err(nvme_err(
                addr,
                format!(
                    "{} descriptors were handed over, the state names {}",
                    fds.len(),
                    n_container + 1 + n_ctrl
                ),
            ));
        }
        let mut fds = fds;
        let ctrl_fds = fds.split_off(n_container + 1);
        let pool_fd = fds.pop().expect("length checked above");
        let container = Container::install_shared(
            Container::adopt(&st.container, fds).map_err(|e| nvme_err(addr, e))?,
        );
        let pool = {
            let mut p = POOL.lock().unwrap_or_else(|e| e.into_inner());
            match p.as_ref() {
                Some(pool) => pool.clone(),
                None => {
                    let mem = st
                        .pool_mem
                        .adopt(pool_fd, &container)
                        .map_err(|e| nvme_err(addr, e))?;
                    let pool = DmaPool::adopt(
                        &PoolOptions {
                            buf_size: st.pool_buf_size,
                            count: st.pool_count,
                            cache_size: 16,
                            hugepages: st.controller.opts.hugepages.clone(),
                        },
                        mem,
                    )
                    .map_err(|e| nvme_err(addr, format!("DMA pool: {e}")))?;
                    *p = Some(pool.clone());
                    pool
                }
            }
        };
        let ctrl = Controller::adopt(container, &st.controller, ctrl_fds)
            .map_err(|e| nvme_err(addr, e))?;
        Self::assemble(addr, ctrl, st.ns.clone(), pool)
    }

    fn assemble(
        addr: &str,
        ctrl: Arc<Controller>,
        ns: NamespaceInfo,
        pool: Arc<DmaPool>,
    ) -> Result<Arc<NvmeVfioBdev>, BdevError> {
        if ns.block_size != 512 && ns.block_size != 4096 {
            return Err(nvme_err(
                addr,
                format!(
                    "namespace {} has {}-byte blocks; only 512 and 4096 are served",
                    ns.nsid, ns.block_size
                ),
            ));
        }
        if ns.metadata_size != 0 {
            return Err(nvme_err(
                addr,
                format!(
                    "namespace {} is formatted with {} bytes of metadata per block; format it without",
                    ns.nsid, ns.metadata_size
                ),
            ));
        }
        let mut chunk = pool.buf_size();
        if let Some(m) = ctrl.info().max_transfer {
            chunk = chunk.min(m);
        }
        let chunk_blocks = u32::try_from(chunk / ns.block_size as usize)
            .unwrap_or(u32::MAX)
            .clamp(1, MAX_NLB as u32);
        let oncs_bits = ctrl.info().oncs;
        let deallocate = oncs_bits & oncs::DATASET_MANAGEMENT != 0;
        let info = BdevInfo {
            name: format!("nvme-vfio {} ns{}", ctrl.addr(), ns.nsid),
            block_size: ns.block_size,
            num_blocks: ns.num_blocks,
            read_only: ns.write_protected,
            volatile_write_cache: ctrl.info().volatile_write_cache,
            supports_deallocate: deallocate && ns.deallocate_reads_zeroes,
        };
        tracing::info!(
            device = %info.name,
            blocks = info.num_blocks,
            block_size = info.block_size,
            chunk_kib = (chunk_blocks as usize * ns.block_size as usize) >> 10,
            "VFIO NVMe namespace ready"
        );
        Ok(Arc::new(NvmeVfioBdev {
            shared: Arc::new(Shared {
                write_zeroes: oncs_bits & oncs::WRITE_ZEROES != 0,
                flush: info.volatile_write_cache,
                info,
                ctrl,
                nsid: ns.nsid,
                ns,
                pool,
                chunk_blocks,
                deallocate,
                bounced: AtomicU64::new(0),
            }),
        }))
    }

    /// Commands whose data was copied through a bounce buffer because the caller's
    /// buffer was not in the device's DMA pool ([`Bdev::dma_pool`]); zero when every
    /// request came with pool memory.
    pub fn bounced(&self) -> u64 {
        self.shared.bounced.load(Ordering::Relaxed)
    }

    /// The controller, for tools and tests.
    pub fn controller(&self) -> &Arc<Controller> {
        &self.shared.ctrl
    }
}

impl NvmeVfioBdev {
    fn export_state(&self) -> Result<(NvmeVfioHandover, Vec<OwnedFd>), String> {
        let d = &self.shared;
        let (container, mut fds) = d.ctrl.container().export().map_err(|e| e.to_string())?;
        let mem = d.pool.memory();
        let pool_mem = MemState::of(mem).ok_or("the DMA pool is not registered")?;
        fds.push(
            mem.file()
                .ok_or("the DMA pool is private memory")?
                .try_clone_to_owned()
                .map_err(|e| format!("duplicating the DMA pool's descriptor: {e}"))?,
        );
        let (controller, cfds) = d.ctrl.export().map_err(|e| e.to_string())?;
        fds.extend(cfds);
        Ok((
            NvmeVfioHandover {
                ns: d.ns.clone(),
                pool_buf_size: d.pool.buf_size(),
                pool_count: d.pool.count(),
                pool_mem,
                container,
                controller,
            },
            fds,
        ))
    }
}

impl Bdev for NvmeVfioBdev {
    fn info(&self) -> &BdevInfo {
        &self.shared.info
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    /// The controller's state (queues, IOVAs) and its descriptors (container, groups,
    /// DMA memory, device), in the order [`NvmeVfioBdev::adopt`] takes them. Taken
    /// only on a drained target ([`Bdev::export_at_pause`]).
    fn export(&self) -> Result<Export, BdevError> {
        let (state, fds) = self.export_state().map_err(BdevError::Invalid)?;
        Ok(Export {
            state: postcard::to_stdvec(&state).map_err(|e| {
                BdevError::Invalid(format!("{}: state: {e}", self.shared.info.name))
            })?,
            fds,
        })
    }

    fn adopted(&self) {
        self.shared.pool.memory().take_ownership();
        self.shared.ctrl.take_ownership();
    }

    fn export_at_pause(&self) -> bool {
        true
    }

    /// The process-wide DMA pool: buffers from it reach the device as they are.
    fn dma_pool(&self) -> Option<Arc<DmaPool>> {
        Some(self.shared.pool.clone())
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        let hw = thread_queue(&self.shared.ctrl)?;
        let inbox = Rc::new(RefCell::new(VecDeque::with_capacity(256)));
        let slot = {
            let mut h = hw.borrow_mut();
            match h.inboxes.iter().position(Option::is_none) {
                Some(i) => {
                    h.inboxes[i] = Some(inbox.clone());
                    i
                }
                None => {
                    h.inboxes.push(Some(inbox.clone()));
                    h.inboxes.len() - 1
                }
            }
        };
        Ok(Box::new(NvmeVfioChannel {
            dev: self.shared.clone(),
            hw,
            slot: slot as u64,
            inbox,
            reqs: Vec::new(),
            free_reqs: Vec::new(),
            ops: Vec::new(),
            free_ops: Vec::new(),
            backlog: VecDeque::with_capacity(256),
            done: VecDeque::with_capacity(256),
            in_flight: 0,
        }))
    }
}

type Inbox = Rc<RefCell<VecDeque<(u32, Result<u32, CmdError>)>>>;

/// The hardware queue pair of one controller on one thread.
struct HwQueue {
    qp: IoQueuePair,
    /// Completions per channel slot.
    inboxes: Vec<Option<Inbox>>,
}

impl HwQueue {
    fn poll(&mut self) -> usize {
        let inboxes = &self.inboxes;
        self.qp.poll(&mut |ctx, r| {
            let slot = (ctx >> 32) as usize;
            if let Some(Some(inbox)) = inboxes.get(slot) {
                inbox.borrow_mut().push_back((ctx as u32, r));
            }
        })
    }
}

thread_local! {
    static QUEUES: RefCell<Vec<(u64, Weak<RefCell<HwQueue>>)>> = const { RefCell::new(Vec::new()) };
}

fn thread_queue(ctrl: &Arc<Controller>) -> Result<Rc<RefCell<HwQueue>>, BdevError> {
    QUEUES.with(|q| {
        let mut q = q.borrow_mut();
        q.retain(|(_, w)| w.strong_count() > 0);
        if let Some(hw) = q
            .iter()
            .find(|(id, _)| *id == ctrl.id())
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(hw);
        }
        let qp = IoQueuePair::new(ctrl.clone()).map_err(|e| nvme_err(ctrl.addr(), e))?;
        tracing::debug!(addr = %ctrl.addr(), qid = qp.qid(), "hardware queue pair for this thread");
        let hw = Rc::new(RefCell::new(HwQueue {
            qp,
            inboxes: Vec::new(),
        }));
        q.push((ctrl.id(), Rc::downgrade(&hw)));
        Ok(hw)
    })
}

/// One request of the channel's caller.
struct Req {
    tag: u64,
    op: IoOp,
    buf: *mut u8,
    offset_blocks: u64,
    num_blocks: u32,
    /// Blocks for which commands have been queued.
    issued: u32,
    /// Commands queued and not completed.
    outstanding: u32,
    status: IoStatus,
}

/// One NVMe command in flight.
struct Op {
    req: u32,
    /// The bounce (or DSM range) buffer, returned to the pool at completion.
    buf: Option<DmaBuf>,
    /// For a bounced read: where the data goes, and how much.
    copy_to: *mut u8,
    len: usize,
}

struct NvmeVfioChannel {
    dev: Arc<Shared>,
    hw: Rc<RefCell<HwQueue>>,
    slot: u64,
    inbox: Inbox,
    reqs: Vec<Req>,
    free_reqs: Vec<u32>,
    ops: Vec<Op>,
    free_ops: Vec<u32>,
    /// Requests with commands still to queue, oldest first.
    backlog: VecDeque<u32>,
    /// Completions ready for the next poll.
    done: VecDeque<(u64, IoStatus)>,
    in_flight: usize,
}

fn cmd_status(e: CmdError) -> IoStatus {
    match e {
        CmdError::Status(s) if s.sct() == sct::GENERIC && s.sc() == generic::LBA_OUT_OF_RANGE => {
            IoStatus::OutOfRange
        }
        CmdError::Status(s)
            if s.sct() == sct::GENERIC && s.sc() == generic::NAMESPACE_WRITE_PROTECTED =>
        {
            IoStatus::ReadOnly
        }
        CmdError::Status(_) => IoStatus::Io(libc::EIO),
        CmdError::TimedOut => IoStatus::Io(libc::ETIMEDOUT),
        CmdError::Reset => IoStatus::Io(libc::ECANCELED),
    }
}

/// What the next command of a request is.
enum Next {
    /// Complete the request now (nothing more to send).
    Finished,
    /// Queue this command; `blocks` more blocks are then issued.
    Cmd { blocks: u32, data: Data },
}

enum Data {
    None,
    /// Read or write `len` bytes at byte offset `off` of the caller's buffer.
    Caller {
        off: usize,
        len: usize,
    },
    /// Zeroes written from a pool buffer (Write Zeroes emulation).
    Zeroes {
        len: usize,
    },
    /// One DSM range in a pool buffer.
    Range,
}

impl NvmeVfioChannel {
    fn alloc_req(&mut self, req: Req) -> u32 {
        match self.free_reqs.pop() {
            Some(i) => {
                self.reqs[i as usize] = req;
                i
            }
            None => {
                self.reqs.push(req);
                (self.reqs.len() - 1) as u32
            }
        }
    }

    fn alloc_op(&mut self, op: Op) -> u32 {
        match self.free_ops.pop() {
            Some(i) => {
                self.ops[i as usize] = op;
                i
            }
            None => {
                self.ops.push(op);
                (self.ops.len() - 1) as u32
            }
        }
    }

    fn next_of(&self, r: &Req) -> Next {
        let d = &self.dev;
        let bs = d.info.block_size as usize;
        let left = r.num_blocks.saturating_sub(r.issued);
        match r.op {
            IoOp::Read | IoOp::Write => {
                if left == 0 {
                    return Next::Finished;
                }
                let blocks = left.min(d.chunk_blocks);
                Next::Cmd {
                    blocks,
                    data: Data::Caller {
                        off: r.issued as usize * bs,
                        len: blocks as usize * bs,
                    },
                }
            }
            IoOp::Flush => {
                if r.issued > 0 || !d.flush {
                    return Next::Finished;
                }
                // `issued` marks the flush as sent.
                Next::Cmd {
                    blocks: 1,
                    data: Data::None,
                }
            }
            IoOp::WriteZeroes => {
                if left == 0 {
                    return Next::Finished;
                }
                if d.write_zeroes {
                    Next::Cmd {
                        blocks: left.min(MAX_NLB as u32),
                        data: Data::None,
                    }
                } else {
                    let blocks = left.min(d.chunk_blocks);
                    Next::Cmd {
                        blocks,
                        data: Data::Zeroes {
                            len: blocks as usize * bs,
                        },
                    }
                }
            }
            IoOp::Deallocate => {
                if left == 0 || !d.deallocate {
                    return Next::Finished;
                }
                Next::Cmd {
                    blocks: left,
                    data: Data::Range,
                }
            }
        }
    }

    /// Queues commands for the backlog, oldest request first, until the hardware queue
    /// or the DMA pool runs out.
    fn pump(&mut self) {
        while let Some(&ri) = self.backlog.front() {
            let r = &self.reqs[ri as usize];
            let next = self.next_of(r);
            let (blocks, data) = match next {
                Next::Finished => {
                    self.backlog.pop_front();
                    self.maybe_finish(ri);
                    continue;
                }
                Next::Cmd { blocks, data } => (blocks, data),
            };
            if self.issue(ri, blocks, data).is_err() {
                // Out of queue entries or DMA buffers: retried at the next poll, after
                // completions have freed some.
                return;
            }
        }
    }

    /// Queues one command of request `ri`. `Err` when it must wait.
    fn issue(&mut self, ri: u32, blocks: u32, data: Data) -> Result<(), ()> {
        let d = self.dev.clone();
        let r = &self.reqs[ri as usize];
        let slba = r.offset_blocks + u64::from(r.issued);
        let mut buf = None;
        let mut copy_to = std::ptr::null_mut();
        let mut len = 0;
        let cmd = match data {
            Data::None => match r.op {
                IoOp::Flush => IoCmd::flush(d.nsid),
                _ => IoCmd::write_zeroes(d.nsid, slba, blocks),
            },
            Data::Caller { off, len: n } => {
                let src = r.buf.wrapping_add(off);
                let iova = match d.pool.iova_of(src, n) {
                    Some(iova) => iova,
                    None => {
                        let b = d.pool.get().ok_or(())?;
                        d.bounced.fetch_add(1, Ordering::Relaxed);
                        if r.op == IoOp::Write {
                            // SAFETY: the caller's buffer is valid for the request's
                            // length (submit contract) and `off + n` lies inside it; the
                            // pool buffer holds at least `n` bytes (n <= chunk <= its
                            // size) and is ours alone.
                            unsafe { std::ptr::copy_nonoverlapping(src, b.as_ptr(), n) };
                        } else {
                            copy_to = src;
                            len = n;
                        }
                        let iova = b.iova().expect("the VFIO pool is registered");
                        buf = Some(b);
                        iova
                    }
                };
                if r.op == IoOp::Write {
                    IoCmd::write(d.nsid, slba, blocks, iova, n)
                } else {
                    IoCmd::read(d.nsid, slba, blocks, iova, n)
                }
            }
            Data::Zeroes { len: n } => {
                let mut b = d.pool.get().ok_or(())?;
                b.as_mut_slice()[..n].fill(0);
                let iova = b.iova().expect("the VFIO pool is registered");
                buf = Some(b);
                IoCmd::write(d.nsid, slba, blocks, iova, n)
            }
            Data::Range => {
                let mut b = d.pool.get().ok_or(())?;
                let range = lightpool_spec::nvme::DsmRange {
                    context_attributes: 0,
                    num_blocks: blocks,
                    starting_lba: slba,
                }
                .to_bytes();
                b.as_mut_slice()[..16].copy_from_slice(&range);
                let iova = b.iova().expect("the VFIO pool is registered");
                buf = Some(b);
                IoCmd::deallocate(d.nsid, 1, iova)
            }
        };
        let oi = self.alloc_op(Op {
            req: ri,
            buf,
            copy_to,
            len,
        });
        let ctx = (self.slot << 32) | u64::from(oi);
        let res = self.hw.borrow_mut().qp.submit(&cmd, ctx);
        match res {
            Ok(()) => {
                let r = &mut self.reqs[ri as usize];
                r.issued += blocks;
                r.outstanding += 1;
                Ok(())
            }
            Err(SubmitError::Full) => {
                self.release_op(oi);
                Err(())
            }
            Err(e) => {
                tracing::warn!(device = %d.info.name, error = %e, "cannot queue an NVMe command");
                self.release_op(oi);
                // Fail the rest of the request: nothing more will be issued for it.
                let r = &mut self.reqs[ri as usize];
                r.status = IoStatus::Io(libc::EIO);
                r.issued = r.num_blocks;
                if r.op == IoOp::Flush {
                    r.issued = 1;
                }
                Ok(())
            }
        }
    }

    fn release_op(&mut self, oi: u32) {
        let op = &mut self.ops[oi as usize];
        if let Some(b) = op.buf.take() {
            self.dev.pool.put(b);
        }
        op.copy_to = std::ptr::null_mut();
        self.free_ops.push(oi);
    }

    /// Completes request `ri` if nothing of it is left to issue or outstanding.
    fn maybe_finish(&mut self, ri: u32) {
        let r = &self.reqs[ri as usize];
        if r.outstanding > 0 || !matches!(self.next_of(r), Next::Finished) {
            return;
        }
        if self.backlog.front() == Some(&ri) {
            self.backlog.pop_front();
        }
        self.done.push_back((r.tag, r.status));
        self.free_reqs.push(ri);
    }

    fn complete_op(&mut self, oi: u32, res: Result<u32, CmdError>) {
        let op = &mut self.ops[oi as usize];
        let ri = op.req;
        if res.is_ok() && !op.copy_to.is_null() {
            if let Some(b) = &op.buf {
                // SAFETY: the read finished, so the device is done with the pool buffer;
                // `copy_to` is inside the caller's buffer, which stays valid until this
                // request's completion is returned (submit contract), for `len` bytes.
                unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), op.copy_to, op.len) };
            }
        }
        self.release_op(oi);
        let r = &mut self.reqs[ri as usize];
        r.outstanding -= 1;
        if let Err(e) = res {
            if r.status == IoStatus::Success {
                r.status = cmd_status(e);
            }
        }
        if r.outstanding == 0 && !self.backlog.contains(&ri) {
            self.maybe_finish(ri);
        }
    }
}

impl IoChannel for NvmeVfioChannel {
    unsafe fn submit(&mut self, req: IoRequest) {
        self.in_flight += 1;
        if let Err(status) = check_request(&self.dev.info, &req) {
            self.done.push_back((req.tag, status));
            return;
        }
        let ri = self.alloc_req(Req {
            tag: req.tag,
            op: req.op,
            buf: req.buf,
            offset_blocks: req.offset_blocks,
            num_blocks: req.num_blocks,
            issued: 0,
            outstanding: 0,
            status: IoStatus::Success,
        });
        self.backlog.push_back(ri);
        if self.backlog.len() == 1 {
            self.pump();
        }
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        self.hw.borrow_mut().poll();
        loop {
            let next = self.inbox.borrow_mut().pop_front();
            let Some((oi, res)) = next else { break };
            self.complete_op(oi, res);
        }
        if !self.backlog.is_empty() {
            self.pump();
        }
        self.hw.borrow_mut().qp.ring();
        let n = self.done.len();
        for _ in 0..n {
            if let Some((tag, st)) = self.done.pop_front() {
                self.in_flight -= 1;
                done(tag, st);
            }
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }
}

impl Drop for NvmeVfioChannel {
    fn drop(&mut self) {
        // The owner waits for its requests before dropping a channel; if it did not, the
        // device must be done with our buffers before they go back to the pool.
        let deadline = std::time::Instant::now() + self.dev.ctrl.options().command_timeout * 3;
        while self.ops.len() > self.free_ops.len() && std::time::Instant::now() < deadline {
            self.poll(&mut |_, _| {});
        }
        let mut hw = self.hw.borrow_mut();
        if let Some(x) = hw.inboxes.get_mut(self.slot as usize) {
            *x = None;
        }
    }
}

/// Rebuilds NVMe namespaces in a successor from the controller state and descriptors
/// handed over at the pause. Recovery cannot: the controller's queues lived in the
/// process that drove it.
pub struct NvmeVfioAdopter;

impl Adopter for NvmeVfioAdopter {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn adopt(&self, a: Adoption<'_>) -> Result<Arc<dyn Bdev>, BdevError> {
        let Some(fds) = a.fds else {
            return Err(BdevError::Invalid(format!(
                "the NVMe device {} was driven through VFIO, which cannot be recovered without \
                 the process that drove it; start from the configuration",
                a.name
            )));
        };
        let st: NvmeVfioHandover = postcard::from_bytes(a.state)
            .map_err(|e| BdevError::Invalid(format!("{}: unreadable state: {e}", a.name)))?;
        Ok(NvmeVfioBdev::adopt(&st, fds)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lightpool_nvme_vfio::{
        AdminState, ContainerState, ControllerInfo, ControllerOptions, ControllerState, MemState,
        NamespaceInfo, QueueState,
    };

    fn mem(iova: u64) -> MemState {
        MemState {
            len: 2 << 20,
            iova,
            backing: lightpool_dma::Backing::Hugepages {
                mount: "/dev/hugepages".into(),
                page_size: 2 << 20,
            },
        }
    }

    fn vfio_state() -> NvmeVfioHandover {
        NvmeVfioHandover {
            ns: NamespaceInfo {
                nsid: 1,
                num_blocks: 524288,
                block_size: 512,
                metadata_size: 0,
                deallocate_reads_zeroes: true,
                write_protected: false,
            },
            pool_buf_size: 128 << 10,
            pool_count: 256,
            pool_mem: mem(1 << 32),
            container: ContainerState {
                groups: vec![7],
                next_iova: (1 << 32) + (40 << 20),
                free_iovas: vec![((1 << 32) + (36 << 20), 2 << 20)],
            },
            controller: ControllerState {
                addr: "0000:00:04.0".into(),
                group: 7,
                cap: 0x0020_0000_2001_07ff,
                info: ControllerInfo {
                    vid: 0x1b36,
                    serial: "LPVFIO0001".into(),
                    model: "QEMU NVMe Ctrl".into(),
                    firmware: "9.0".into(),
                    max_transfer: Some(512 << 10),
                    nn: 256,
                    oncs: 0x15d,
                    volatile_write_cache: true,
                    io_queues: 64,
                    io_queue_depth: 256,
                },
                opts: ControllerOptions::default(),
                admin: AdminState {
                    sq_tail: 9,
                    sq_head: 9,
                    cq_head: 9,
                    cq_phase: true,
                    cid: 9,
                    mem: mem((1 << 32) + (32 << 20)),
                },
                io_queues: vec![QueueState {
                    qid: 1,
                    depth: 256,
                    sq_tail: 200,
                    sq_head: 200,
                    cq_head: 200,
                    cq_phase: false,
                    mem: mem((1 << 32) + (34 << 20)),
                    cq_off: 16384,
                    prp_off: 20480,
                }],
                enables: 1,
            },
        }
    }

    /// A controller's whole state survives the encoding its export uses.
    #[test]
    fn controller_state_round_trips() {
        let bytes = postcard::to_stdvec(&vfio_state()).expect("encode");
        let back: NvmeVfioHandover = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, vfio_state());
    }

    /// Without the process that drove it, a VFIO namespace cannot be recovered: the
    /// error says so and names the device.
    #[test]
    fn vfio_namespaces_are_not_recovered() {
        let e = NvmeVfioAdopter
            .adopt(Adoption {
                name: "0000:00:04.0",
                state: &[],
                fds: None,
                children: Vec::new(),
            })
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.contains("0000:00:04.0") && e.contains("start from the configuration"),
            "{e}"
        );
    }
}
