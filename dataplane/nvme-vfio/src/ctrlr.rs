//! Controller set-up, the admin queue, and controller-wide error handling.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use lightpool_dma::{DmaMapper, DmaMemory, HugePages};
use lightpool_spec::features::fid;
use lightpool_spec::identify::{cns, IdentifyCommand, IdentifyController, IDENTIFY_DATA_SIZE};
use lightpool_spec::nvme::{admin_opcode, cc, csts, reg, Cap, Cqe, Sqe, CAP_CSS_NVM, SQE_SIZE};

use crate::prp::PAGE_SIZE;
use crate::qpair::QueueShadow;
use crate::ring::{CqRing, SqRing};
use crate::vfio::{Bar, Container, Device};
use crate::NvmeError;

/// Doorbells start here in BAR0.
const DOORBELL_BASE: usize = 0x1000;
/// Admin memory: SQ page, CQ page, one data page.
const ADMIN_SQ_OFF: usize = 0;
const ADMIN_CQ_OFF: usize = PAGE_SIZE;
const ADMIN_DATA_OFF: usize = 2 * PAGE_SIZE;
const ADMIN_MEM: usize = 3 * PAGE_SIZE;
/// Admin queue entries: 64 SQEs fill the SQ page; the CQ page holds 256 CQEs.
const ADMIN_DEPTH: u16 = 64;
/// How long an admin command may take before the driver gives up on it.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for CSTS.SHST after a shutdown notification.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// How to drive a controller.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ControllerOptions {
    /// Entries per I/O queue (capped by CAP.MQES + 1).
    pub io_queue_depth: u16,
    /// I/O queue pairs to ask the controller for.
    pub max_io_queues: u16,
    /// A command not completed after this is aborted; after twice this the controller
    /// is reset.
    pub command_timeout: Duration,
    /// Where the queues' memory comes from.
    pub hugepages: HugePages,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            io_queue_depth: 256,
            max_io_queues: 64,
            command_timeout: Duration::from_secs(30),
            hugepages: HugePages::Auto,
        }
    }
}

/// What Identify Controller and Number of Queues told us.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ControllerInfo {
    pub vid: u16,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    /// Largest transfer of one command in bytes; `None` when unlimited.
    pub max_transfer: Option<usize>,
    /// Number of namespaces (highest NSID).
    pub nn: u32,
    /// Optional NVM commands supported (ONCS).
    pub oncs: u16,
    /// A volatile write cache is present.
    pub volatile_write_cache: bool,
    /// I/O queue pairs granted.
    pub io_queues: u16,
    /// Entries per I/O queue the driver uses.
    pub io_queue_depth: u16,
}

/// What Identify Namespace told us about the format in use.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NamespaceInfo {
    pub nsid: u32,
    pub num_blocks: u64,
    pub block_size: u32,
    /// Metadata bytes per block (the driver serves only 0).
    pub metadata_size: u16,
    /// Deallocated blocks read back as zeroes (DLFEAT bits 2:0 = 001b).
    pub deallocate_reads_zeroes: bool,
    /// The namespace is write protected (NSATTR bit 0).
    pub write_protected: bool,
}

pub(crate) struct Admin {
    mem: DmaMemory,
    sq: SqRing,
    cq: CqRing,
    cid: u16,
}

static CTRL_IDS: AtomicU64 = AtomicU64::new(1);

mod handover;
pub(crate) use handover::{check_queue_state, ParkedQueue};
pub use handover::{AdminState, ControllerState, MemState, QueueState};

/// One NVMe controller driven through VFIO. Shared (Arc) by the I/O queue pairs of every
/// thread; shut down (CC.SHN) when the last reference goes.
pub struct Controller {
    id: u64,
    addr: String,
    container: Arc<Container>,
    bar: Bar,
    cap: Cap,
    doorbell_stride: usize,
    admin: Mutex<Admin>,
    /// Bumped at every controller reset; queue pairs that see it change re-create
    /// themselves.
    generation: AtomicU64,
    failed: AtomicBool,
    qids: Mutex<Vec<bool>>,
    /// Live I/O queue pairs' state, for a handover (registered at creation, no lock on
    /// the I/O path: the queue pairs update their shadows with relaxed stores).
    shadows: Mutex<Vec<Weak<QueueShadow>>>,
    /// I/O queues adopted from a predecessor that no thread has taken yet.
    parked: Mutex<Vec<ParkedQueue>>,
    /// False while a predecessor process may still use the controller (adopted, the
    /// handover not finished): then nothing here deletes queues, unmaps memory or shuts
    /// the controller down.
    owned: AtomicBool,
    /// CC.EN 0 -> 1 transitions by this driver, carried across hot upgrades.
    enables: AtomicU64,
    info: ControllerInfo,
    opts: ControllerOptions,
    /// Dropped after `bar` (field order): closes the device fd last.
    _device: Device,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("addr", &self.addr)
            .field("info", &self.info)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Controller {
    /// Opens the controller at PCI address `addr` (bound to vfio-pci) in `container`,
    /// resets and enables it, identifies it and asks for its I/O queues.
    pub fn open(
        container: Arc<Container>,
        addr: &str,
        opts: ControllerOptions,
    ) -> Result<Arc<Controller>, NvmeError> {
        let device = container.open_device(addr)?;
        let addr = device.addr().to_string();
        device.enable_bus_master()?;
        let bar = map_bar0(&device, &opts)?;
        let cap_raw = bar.read64(reg::CAP as usize);
        if cap_raw == u64::MAX {
            return Err(NvmeError::Gone { addr });
        }
        let cap = Cap::from_u64(cap_raw);
        if cap.css & CAP_CSS_NVM == 0 {
            return Err(NvmeError::Unsupported {
                addr,
                reason: "the controller does not support the NVM command set".into(),
            });
        }
        if cap.mpsmin != 0 {
            return Err(NvmeError::Unsupported {
                addr,
                reason: format!(
                    "the controller's smallest memory page is {} bytes; the driver uses 4096",
                    4096u64 << cap.mpsmin
                ),
            });
        }
        let mapper: Arc<dyn DmaMapper> = container.clone();
        let mem = DmaMemory::new(ADMIN_MEM, &opts.hugepages, Some(mapper))?;
        let depth = opts
            .io_queue_depth
            .clamp(2, cap.mqes.saturating_add(1).max(2));
        let mut ctrl = Controller {
            id: CTRL_IDS.fetch_add(1, Ordering::Relaxed),
            addr: addr.clone(),
            container,
            bar,
            cap,
            doorbell_stride: 4 << cap.dstrd,
            admin: Mutex::new(Admin {
                mem,
                sq: SqRing::new(ADMIN_DEPTH),
                cq: CqRing::new(ADMIN_DEPTH),
                cid: 0,
            }),
            generation: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            qids: Mutex::new(Vec::new()),
            shadows: Mutex::new(Vec::new()),
            parked: Mutex::new(Vec::new()),
            owned: AtomicBool::new(true),
            enables: AtomicU64::new(0),
            info: ControllerInfo {
                vid: 0,
                serial: String::new(),
                model: String::new(),
                firmware: String::new(),
                max_transfer: None,
                nn: 0,
                oncs: 0,
                volatile_write_cache: false,
                io_queues: 0,
                io_queue_depth: depth,
            },
            opts,
            _device: device,
        };
        {
            let mut a = lock(&ctrl.admin);
            ctrl.enable(&mut a)?;
            let (_, data) = ctrl.admin_read(
                &mut a,
                IdentifyCommand {
                    cns: cns::CONTROLLER,
                    ..IdentifyCommand::default()
                }
                .to_sqe(0),
                "Identify Controller",
            )?;
            let id = IdentifyController::parse(&data);
            let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
            ctrl.info.vid = id.vid;
            ctrl.info.serial = text(&id.sn);
            ctrl.info.model = text(&id.mn);
            ctrl.info.firmware = text(&id.fr);
            ctrl.info.max_transfer =
                (id.mdts != 0).then(|| (PAGE_SIZE << cap.mpsmin) << id.mdts.min(20));
            ctrl.info.nn = id.nn;
            ctrl.info.oncs = id.oncs;
            ctrl.info.volatile_write_cache = id.vwc & 1 != 0;
            let granted = ctrl.set_queue_count(&mut a)?;
            ctrl.info.io_queues = granted;
        }
        *lock(&ctrl.qids) = vec![false; usize::from(ctrl.info.io_queues) + 1];
        tracing::info!(
            addr = %ctrl.addr,
            model = %ctrl.info.model,
            serial = %ctrl.info.serial,
            io_queues = ctrl.info.io_queues,
            depth = ctrl.info.io_queue_depth,
            max_transfer = ?ctrl.info.max_transfer,
            "NVMe controller enabled (VFIO)"
        );
        Ok(Arc::new(ctrl))
    }

    pub(crate) fn owns_device(&self) -> bool {
        self.owned.load(Ordering::Acquire)
    }

    /// Times the controller was enabled by this driver (CC.EN 0 -> 1), over every
    /// process that drove it since it was first opened.
    pub fn enables(&self) -> u64 {
        self.enables.load(Ordering::Relaxed)
    }

    /// An adopted I/O queue no thread has taken yet.
    pub(crate) fn take_parked(&self) -> Option<ParkedQueue> {
        lock(&self.parked).pop()
    }

    pub(crate) fn register_shadow(&self, s: &Arc<QueueShadow>) {
        let mut v = lock(&self.shadows);
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(s));
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn info(&self) -> &ControllerInfo {
        &self.info
    }

    /// A number unique to this controller within the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn container(&self) -> &Arc<Container> {
        &self.container
    }

    pub fn options(&self) -> &ControllerOptions {
        &self.opts
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The controller could not be brought back after a reset.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Identify Namespace `nsid`: size and the LBA format in use.
    pub fn namespace(&self, nsid: u32) -> Result<NamespaceInfo, NvmeError> {
        let mut a = lock(&self.admin);
        let (_, d) = self.admin_read(
            &mut a,
            IdentifyCommand {
                nsid,
                cns: cns::NAMESPACE,
                ..IdentifyCommand::default()
            }
            .to_sqe(0),
            "Identify Namespace",
        )?;
        let u64_at =
            |o: usize| u64::from_le_bytes(d[o..o + 8].try_into().expect("8 bytes inside the page"));
        let nsze = u64_at(0);
        if nsze == 0 {
            return Err(NvmeError::Unsupported {
                addr: self.addr.clone(),
                reason: format!("namespace {nsid} is not active"),
            });
        }
        let flbas = d[26];
        let format = usize::from(flbas & 0xF) | (usize::from(flbas >> 5 & 0x3) << 4);
        let lbaf = 128 + 4 * format;
        let ms = u16::from_le_bytes([d[lbaf], d[lbaf + 1]]);
        let lbads = d[lbaf + 2];
        if !(9..=16).contains(&lbads) {
            return Err(NvmeError::Unsupported {
                addr: self.addr.clone(),
                reason: format!("namespace {nsid} has an invalid block size (LBADS {lbads})"),
            });
        }
        Ok(NamespaceInfo {
            nsid,
            num_blocks: nsze,
            block_size: 1 << lbads,
            metadata_size: ms,
            deallocate_reads_zeroes: d[33] & 0x7 == 1,
            write_protected: d[99] & 1 != 0,
        })
    }

    fn doorbell(&self, index: usize) -> usize {
        DOORBELL_BASE + index * self.doorbell_stride
    }

    pub(crate) fn ring_sq(&self, qid: u16, tail: u16) {
        self.bar
            .write32(self.doorbell(2 * usize::from(qid)), u32::from(tail));
    }

    pub(crate) fn ring_cq(&self, qid: u16, head: u16) {
        self.bar
            .write32(self.doorbell(2 * usize::from(qid) + 1), u32::from(head));
    }

    fn timeout_to(&self) -> Duration {
        Duration::from_millis(500 * (u64::from(self.cap.to) + 1))
    }

    fn wait_csts(
        &self,
        what: &'static str,
        limit: Duration,
        done: impl Fn(u32) -> bool,
    ) -> Result<(), NvmeError> {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.bar.read32(reg::CSTS as usize);
            if s == u32::MAX {
                return Err(NvmeError::Gone {
                    addr: self.addr.clone(),
                });
            }
            if done(s) {
                return Ok(());
            }
            if s & csts::CFS != 0 && what != "become not ready" {
                return Err(NvmeError::Fatal {
                    addr: self.addr.clone(),
                });
            }
            if Instant::now() > deadline {
                return Err(NvmeError::Timeout {
                    addr: self.addr.clone(),
                    what,
                    ms: limit.as_millis() as u64,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Disables the controller (if enabled), sets up the admin queue and enables it.
    fn enable(&self, a: &mut Admin) -> Result<(), NvmeError> {
        let ccv = self.bar.read32(reg::CC as usize);
        if ccv & cc::EN != 0 {
            self.bar.write32(reg::CC as usize, ccv & !cc::EN);
        }
        self.wait_csts("become not ready", self.timeout_to(), |s| {
            s & csts::RDY == 0
        })?;
        // SAFETY: the controller is disabled, so nothing writes the admin memory; the
        // range lies inside it.
        unsafe { std::ptr::write_bytes(a.mem.as_ptr(), 0, ADMIN_DATA_OFF) };
        a.sq.reset();
        a.cq.reset();
        let sq_iova = a
            .mem
            .iova_at(ADMIN_SQ_OFF)
            .ok_or_else(|| self.not_mapped())?;
        let cq_iova = a
            .mem
            .iova_at(ADMIN_CQ_OFF)
            .ok_or_else(|| self.not_mapped())?;
        let q = u32::from(ADMIN_DEPTH - 1);
        self.bar.write32(reg::AQA as usize, (q << 16) | q);
        self.bar.write64(reg::ASQ as usize, sq_iova);
        self.bar.write64(reg::ACQ as usize, cq_iova);
        let ccv = cc::EN
            | (u32::from(cc::CSS_NVM) << 4)
            // MPS 0 (4 KiB) at bits 10:7, AMS round robin at 13:11, SHN none.
            | (6 << 16) // IOSQES: 64-byte SQEs
            | (4 << 20); // IOCQES: 16-byte CQEs
        self.bar.write32(reg::CC as usize, ccv);
        let n = self.enables.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(addr = %self.addr, enables = n, "NVMe controller: CC.EN set (enable number {n})");
        self.wait_csts("become ready", self.timeout_to(), |s| s & csts::RDY != 0)
    }

    fn not_mapped(&self) -> NvmeError {
        NvmeError::Unsupported {
            addr: self.addr.clone(),
            reason: "the admin queue memory has no IOVA".into(),
        }
    }

    fn set_queue_count(&self, a: &mut Admin) -> Result<u16, NvmeError> {
        let want = u32::from(self.opts.max_io_queues.max(1) - 1);
        let c = self.admin_cmd(
            a,
            Sqe {
                opcode: admin_opcode::SET_FEATURES,
                cdw10: u32::from(fid::NUMBER_OF_QUEUES),
                cdw11: (want << 16) | want,
                ..Sqe::default()
            },
            None,
            "Set Features (Number of Queues)",
        )?;
        let nsqa = (c.dw0 & 0xFFFF) as u16;
        let ncqa = (c.dw0 >> 16) as u16;
        Ok(nsqa
            .min(ncqa)
            .saturating_add(1)
            .min(self.opts.max_io_queues.max(1)))
    }

    /// Runs one admin command to completion. `data`: the command moves up to one page
    /// through the admin data page.
    fn admin_cmd(
        &self,
        a: &mut Admin,
        mut sqe: Sqe,
        data: Option<()>,
        what: &str,
    ) -> Result<Cqe, NvmeError> {
        a.cid = a.cid.wrapping_add(1);
        sqe.cid = a.cid;
        if data.is_some() {
            let iova = a
                .mem
                .iova_at(ADMIN_DATA_OFF)
                .ok_or_else(|| self.not_mapped())?;
            sqe.dptr = [0; 16];
            sqe.dptr[..8].copy_from_slice(&iova.to_le_bytes());
        }
        let Some(at) = a.sq.push() else {
            return Err(NvmeError::Unsupported {
                addr: self.addr.clone(),
                reason: "the admin queue is full".into(),
            });
        };
        let bytes = sqe.to_bytes();
        // SAFETY: `at` < ADMIN_DEPTH, so the 64 bytes lie in the admin SQ page; the
        // controller reads that entry only after the doorbell below.
        unsafe {
            std::ptr::write_volatile(
                a.mem
                    .as_ptr()
                    .add(ADMIN_SQ_OFF + usize::from(at) * SQE_SIZE)
                    .cast::<[u8; SQE_SIZE]>(),
                bytes,
            )
        };
        std::sync::atomic::fence(Ordering::SeqCst);
        self.ring_sq(0, a.sq.tail());
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        let mut spins = 0u32;
        loop {
            // SAFETY: the admin CQ page holds ADMIN_DEPTH entries and stays mapped.
            let got = unsafe { a.cq.peek(a.mem.as_ptr().add(ADMIN_CQ_OFF)) };
            if let Some(c) = got {
                a.cq.advance();
                a.sq.set_head(c.sqhd);
                self.ring_cq(0, a.cq.head());
                if c.cid != sqe.cid {
                    // A late completion of a command we gave up on.
                    continue;
                }
                if !c.status.is_success() {
                    return Err(NvmeError::Command {
                        addr: self.addr.clone(),
                        what: what.to_string(),
                        status: c.status,
                    });
                }
                return Ok(c);
            }
            if Instant::now() > deadline {
                return Err(NvmeError::Timeout {
                    addr: self.addr.clone(),
                    what: "complete an admin command",
                    ms: ADMIN_TIMEOUT.as_millis() as u64,
                });
            }
            spins += 1;
            if spins < 1000 {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    fn admin_read(
        &self,
        a: &mut Admin,
        sqe: Sqe,
        what: &str,
    ) -> Result<(Cqe, Box<[u8; IDENTIFY_DATA_SIZE]>), NvmeError> {
        let c = self.admin_cmd(a, sqe, Some(()), what)?;
        let mut out = Box::new([0u8; IDENTIFY_DATA_SIZE]);
        std::sync::atomic::fence(Ordering::Acquire);
        // SAFETY: the data page lies inside the admin memory; the command that wrote it
        // has completed, so the device no longer touches it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                a.mem.as_ptr().add(ADMIN_DATA_OFF),
                out.as_mut_ptr(),
                IDENTIFY_DATA_SIZE,
            )
        };
        Ok((c, out))
    }

    /// Reserves an I/O queue ID.
    pub(crate) fn alloc_qid(&self) -> Option<u16> {
        let mut q = lock(&self.qids);
        let i = q.iter().skip(1).position(|used| !used)? + 1;
        q[i] = true;
        u16::try_from(i).ok()
    }

    pub(crate) fn release_qid(&self, qid: u16) {
        if let Some(x) = lock(&self.qids).get_mut(usize::from(qid)) {
            *x = false;
        }
    }

    /// Creates I/O CQ and SQ `qid` (no interrupts, physically contiguous).
    pub(crate) fn create_io_queues(
        &self,
        qid: u16,
        depth: u16,
        sq_iova: u64,
        cq_iova: u64,
    ) -> Result<(), NvmeError> {
        let doorbell_end = self.doorbell(2 * usize::from(qid) + 1) + 4;
        if doorbell_end > self.bar.len() {
            return Err(NvmeError::Unsupported {
                addr: self.addr.clone(),
                reason: format!("queue {qid}'s doorbells lie outside the mapped BAR0"),
            });
        }
        let mut a = lock(&self.admin);
        let size = u32::from(depth - 1) << 16 | u32::from(qid);
        let mut cq = Sqe {
            opcode: admin_opcode::CREATE_IO_CQ,
            cdw10: size,
            cdw11: 1,
            ..Sqe::default()
        };
        cq.dptr[..8].copy_from_slice(&cq_iova.to_le_bytes());
        self.admin_cmd(&mut a, cq, None, "Create I/O Completion Queue")?;
        let mut sq = Sqe {
            opcode: admin_opcode::CREATE_IO_SQ,
            cdw10: size,
            cdw11: (u32::from(qid) << 16) | 1,
            ..Sqe::default()
        };
        sq.dptr[..8].copy_from_slice(&sq_iova.to_le_bytes());
        if let Err(e) = self.admin_cmd(&mut a, sq, None, "Create I/O Submission Queue") {
            let _ = self.delete_queue(&mut a, admin_opcode::DELETE_IO_CQ, qid);
            return Err(e);
        }
        Ok(())
    }

    fn delete_queue(&self, a: &mut Admin, opcode: u8, qid: u16) -> Result<Cqe, NvmeError> {
        self.admin_cmd(
            a,
            Sqe {
                opcode,
                cdw10: u32::from(qid),
                ..Sqe::default()
            },
            None,
            "Delete I/O Queue",
        )
    }

    /// Deletes I/O SQ and CQ `qid`; the controller aborts what is still in the SQ.
    pub(crate) fn delete_io_queues(&self, qid: u16) -> Result<(), NvmeError> {
        let mut a = lock(&self.admin);
        self.delete_queue(&mut a, admin_opcode::DELETE_IO_SQ, qid)?;
        self.delete_queue(&mut a, admin_opcode::DELETE_IO_CQ, qid)?;
        Ok(())
    }

    /// Asks the controller to abort command `cid` of SQ `qid`.
    pub(crate) fn abort(&self, qid: u16, cid: u16) -> Result<(), NvmeError> {
        let mut a = lock(&self.admin);
        self.admin_cmd(
            &mut a,
            Sqe {
                opcode: admin_opcode::ABORT,
                cdw10: (u32::from(cid) << 16) | u32::from(qid),
                ..Sqe::default()
            },
            None,
            "Abort",
        )
        .map(|_| ())
    }

    /// Resets the controller unless someone already did since `seen` (a generation):
    /// every I/O queue is gone afterwards, and each queue pair re-creates its own when it
    /// sees the new generation.
    pub(crate) fn reset(&self, seen: u64) {
        let mut a = lock(&self.admin);
        if self.generation() != seen {
            return;
        }
        tracing::warn!(addr = %self.addr, "resetting the NVMe controller");
        let r = self
            .enable(&mut a)
            .and_then(|()| self.set_queue_count(&mut a).map(|_| ()));
        if let Err(e) = r {
            tracing::error!(addr = %self.addr, error = %e, "the controller did not come back from a reset");
            self.failed.store(true, Ordering::Relaxed);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Normal shutdown: CC.SHN = 01b, then wait for CSTS.SHST = complete.
    fn shutdown(&self) -> Result<(), NvmeError> {
        let _a = lock(&self.admin);
        let ccv = self.bar.read32(reg::CC as usize);
        if ccv & cc::EN == 0 {
            return Ok(());
        }
        let ccv = (ccv & !(0x3 << 14)) | (u32::from(cc::SHN_NORMAL) << 14);
        self.bar.write32(reg::CC as usize, ccv);
        self.wait_csts("finish its shutdown", SHUTDOWN_TIMEOUT, |s| {
            s & csts::SHST_MASK == csts::SHST_COMPLETE
        })
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if !self.owns_device() {
            // Adopted and the handover did not finish: the predecessor still drives it.
            return;
        }
        match self.shutdown() {
            Ok(()) => tracing::info!(addr = %self.addr, "NVMe controller shut down"),
            Err(e) => tracing::warn!(addr = %self.addr, error = %e, "NVMe controller shutdown"),
        }
    }
}

/// Maps BAR0: all of it, or (when the MSI-X table shares it and cannot be mapped) only
/// the registers and the doorbells the driver uses.
fn map_bar0(device: &Device, opts: &ControllerOptions) -> Result<Bar, NvmeError> {
    let bar = match device.map_bar(0, usize::MAX) {
        Ok(b) => b,
        Err(e) => {
            let need = DOORBELL_BASE + 2 * (usize::from(opts.max_io_queues) + 1) * 4 * 16;
            tracing::debug!(error = %e, "mapping all of BAR0 failed; mapping {need} bytes");
            device.map_bar(0, need.next_multiple_of(PAGE_SIZE))?
        }
    };
    if bar.len() < DOORBELL_BASE + 8 {
        return Err(NvmeError::Unsupported {
            addr: device.addr().to_string(),
            reason: format!("BAR0 is only {} bytes", bar.len()),
        });
    }
    Ok(bar)
}
