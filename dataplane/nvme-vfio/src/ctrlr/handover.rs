//! Hot upgrade: a controller's state and descriptors handed to a successor process,
//! which carries on driving the controller without resetting it.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use lightpool_dma::{Backing, DmaMapper, DmaMemory};
use lightpool_spec::nvme::{cc, csts, reg, Cap};

use super::{
    lock, map_bar0, Admin, Controller, ADMIN_CQ_OFF, ADMIN_DEPTH, ADMIN_MEM, ADMIN_SQ_OFF, CTRL_IDS,
};
use crate::prp::PAGE_SIZE;
use crate::ring::{CqRing, SqRing};
use crate::vfio::Container;
use crate::{ControllerInfo, ControllerOptions, NvmeError};

/// DMA memory as a successor process finds it: its descriptor travels beside.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemState {
    pub len: usize,
    pub iova: u64,
    pub backing: Backing,
}

impl MemState {
    /// The state of `mem`; `None` when it has no IOVA.
    pub fn of(mem: &DmaMemory) -> Option<MemState> {
        Some(MemState {
            len: mem.len(),
            iova: mem.iova()?,
            backing: mem.backing().clone(),
        })
    }

    /// Maps the same pages at the same IOVA in this process (no new IOMMU mapping).
    pub fn adopt(&self, fd: OwnedFd, container: &Arc<Container>) -> Result<DmaMemory, NvmeError> {
        let mapper: Arc<dyn DmaMapper> = container.clone();
        Ok(DmaMemory::adopt(
            fd,
            self.len,
            Some(self.iova),
            self.backing.clone(),
            Some(mapper),
        )?)
    }
}

/// One I/O queue pair of a controller at a hot upgrade. The driver drained it first, so
/// the SQ head equals the tail and every completion has been consumed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueState {
    pub qid: u16,
    /// Entries of both queues.
    pub depth: u16,
    pub sq_tail: u16,
    pub sq_head: u16,
    pub cq_head: u16,
    /// The phase tag the next new completion carries.
    pub cq_phase: bool,
    /// Queue memory: SQ at 0, CQ at `cq_off`, one PRP list page per slot from `prp_off`.
    pub mem: MemState,
    pub cq_off: usize,
    pub prp_off: usize,
}

/// The admin queue at a hot upgrade.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AdminState {
    pub sq_tail: u16,
    pub sq_head: u16,
    pub cq_head: u16,
    pub cq_phase: bool,
    /// Last command identifier used.
    pub cid: u16,
    pub mem: MemState,
}

/// Everything a successor process needs to carry on driving a running controller
/// without resetting it. Descriptors travel beside, in this order: the device, the
/// admin memory, then one per I/O queue (as in `io_queues`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ControllerState {
    pub addr: String,
    pub group: u32,
    /// CAP as read at start: the successor checks the device still says the same.
    pub cap: u64,
    pub info: ControllerInfo,
    pub opts: ControllerOptions,
    pub admin: AdminState,
    pub io_queues: Vec<QueueState>,
    /// Times the driver enabled the controller (CC.EN 0 -> 1) since it first opened it,
    /// across every process that drove it.
    pub enables: u64,
}

/// An I/O queue pair handed over by the predecessor and not yet taken by a thread of
/// this process: still created in the controller, idle.
pub(crate) struct ParkedQueue {
    pub(crate) state: QueueState,
    pub(crate) mem: DmaMemory,
}

impl Controller {
    /// Hot upgrade, new process: carry on driving the controller a predecessor drove,
    /// from its state and descriptors ([`Controller::export`]), with no reset and no
    /// CC.EN change: BAR0 is mapped again from the device descriptor, the admin and I/O
    /// queues continue where the predecessor left them (same IDs, same memory at the
    /// same IOVAs, same tail/head/phase). Refused when the device does not look like the
    /// state says (not enabled and ready, another CAP, other admin queue addresses).
    /// Until [`Controller::take_ownership`], dropping the result leaves the device as it
    /// is, since the predecessor may take it back.
    pub fn adopt(
        container: Arc<Container>,
        st: &ControllerState,
        fds: Vec<OwnedFd>,
    ) -> Result<Arc<Controller>, NvmeError> {
        let addr = st.addr.clone();
        if fds.len() != st.io_queues.len() + 2 {
            return Err(NvmeError::Unsupported {
                addr,
                reason: format!(
                    "{} descriptors were handed over, not {} (device, admin memory, {} I/O queue(s))",
                    fds.len(),
                    st.io_queues.len() + 2,
                    st.io_queues.len()
                ),
            });
        }
        let mut fds = fds.into_iter();
        let mut next_fd = || fds.next().expect("count checked above");
        let device = container.adopt_device(&st.addr, st.group, next_fd())?;
        let bar = map_bar0(&device, &st.opts)?;
        let refuse = |reason: String| NvmeError::Unsupported {
            addr: addr.clone(),
            reason: format!("cannot take the controller over without a reset: {reason}"),
        };
        let cap_raw = bar.read64(reg::CAP as usize);
        if cap_raw == u64::MAX {
            return Err(NvmeError::Gone { addr });
        }
        if cap_raw != st.cap {
            return Err(refuse(format!(
                "CAP reads {cap_raw:#x}, the handed-over state says {:#x}",
                st.cap
            )));
        }
        let ccv = bar.read32(reg::CC as usize);
        let cstsv = bar.read32(reg::CSTS as usize);
        if ccv & cc::EN == 0 || cstsv & csts::RDY == 0 || cstsv & csts::CFS != 0 {
            return Err(refuse(format!(
                "it is not enabled and ready (CC {ccv:#x}, CSTS {cstsv:#x})"
            )));
        }
        let cap = Cap::from_u64(cap_raw);
        let admin_mem = st.admin.mem.adopt(next_fd(), &container)?;
        let asq = bar.read64(reg::ASQ as usize);
        let acq = bar.read64(reg::ACQ as usize);
        let aqa = bar.read32(reg::AQA as usize);
        let q = u32::from(ADMIN_DEPTH - 1);
        let want = (
            st.admin.mem.iova + ADMIN_SQ_OFF as u64,
            st.admin.mem.iova + ADMIN_CQ_OFF as u64,
            (q << 16) | q,
        );
        if (asq, acq, aqa) != want || admin_mem.len() < ADMIN_MEM {
            return Err(refuse(format!(
                "the admin queue registers (ASQ {asq:#x}, ACQ {acq:#x}, AQA {aqa:#x}) are not \
                 those of the handed-over admin memory ({:#x}, {:#x}, {:#x})",
                want.0, want.1, want.2
            )));
        }
        let bad_ring = || refuse("the admin queue state is out of range".into());
        let sq = SqRing::restore((ADMIN_DEPTH, st.admin.sq_tail, st.admin.sq_head))
            .ok_or_else(bad_ring)?;
        let cq = CqRing::restore(ADMIN_DEPTH, st.admin.cq_head, st.admin.cq_phase)
            .ok_or_else(bad_ring)?;
        let mut qids = vec![false; usize::from(st.info.io_queues) + 1];
        let mut parked = Vec::new();
        for qs in &st.io_queues {
            let fd = next_fd();
            let i = usize::from(qs.qid);
            if i == 0 || i >= qids.len() || qids[i] {
                return Err(refuse(format!(
                    "I/O queue ID {} is invalid or repeated",
                    qs.qid
                )));
            }
            check_queue_state(qs).map_err(&refuse)?;
            qids[i] = true;
            parked.push(ParkedQueue {
                mem: qs.mem.adopt(fd, &container)?,
                state: qs.clone(),
            });
        }
        let ctrl = Controller {
            id: CTRL_IDS.fetch_add(1, Ordering::Relaxed),
            addr: addr.clone(),
            container,
            bar,
            cap,
            doorbell_stride: 4 << cap.dstrd,
            admin: Mutex::new(Admin {
                mem: admin_mem,
                sq,
                cq,
                cid: st.admin.cid,
            }),
            generation: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            qids: Mutex::new(qids),
            shadows: Mutex::new(Vec::new()),
            parked: Mutex::new(parked),
            owned: AtomicBool::new(false),
            enables: AtomicU64::new(st.enables),
            info: st.info.clone(),
            opts: st.opts.clone(),
            _device: device,
        };
        let qs: Vec<String> = st
            .io_queues
            .iter()
            .map(|q| {
                format!(
                    "{}(sq_tail={},cq_head={},phase={})",
                    q.qid,
                    q.sq_tail,
                    q.cq_head,
                    u8::from(q.cq_phase)
                )
            })
            .collect();
        tracing::info!(
            addr = %ctrl.addr,
            admin_sq_tail = st.admin.sq_tail,
            admin_cq_head = st.admin.cq_head,
            io_queues = %qs.join(" "),
            enables = st.enables,
            "NVMe controller adopted (VFIO), no reset"
        );
        Ok(Arc::new(ctrl))
    }

    /// Hot upgrade, old process (drained and frozen): the controller's state, with the
    /// descriptors a successor needs (device, admin memory, one per I/O queue). Fails
    /// when a command is still outstanding or some memory cannot be handed over.
    pub fn export(&self) -> Result<(ControllerState, Vec<OwnedFd>), NvmeError> {
        let refuse = |reason: String| NvmeError::Unsupported {
            addr: self.addr.clone(),
            reason: format!("cannot hand the controller over: {reason}"),
        };
        if self.has_failed() {
            return Err(refuse("it failed and could not be reset".into()));
        }
        let dup = |m: &DmaMemory, what: &str| -> Result<(MemState, OwnedFd), NvmeError> {
            let st = MemState::of(m).ok_or_else(|| refuse(format!("the {what} has no IOVA")))?;
            let fd = m
                .file()
                .ok_or_else(|| refuse(format!("the {what} is private memory")))?
                .try_clone_to_owned()
                .map_err(|e| refuse(format!("duplicating the {what}'s descriptor: {e}")))?;
            Ok((st, fd))
        };
        let device_fd = self
            ._device
            .fd()
            .try_clone_to_owned()
            .map_err(|e| refuse(format!("duplicating the device descriptor: {e}")))?;
        let a = lock(&self.admin);
        let (admin_mem, admin_fd) = dup(&a.mem, "admin queue memory")?;
        let (_, sq_tail, sq_head) = a.sq.state();
        if sq_tail != sq_head {
            return Err(refuse("an admin command is outstanding".into()));
        }
        let admin = AdminState {
            sq_tail,
            sq_head,
            cq_head: a.cq.head(),
            cq_phase: a.cq.phase(),
            cid: a.cid,
            mem: admin_mem,
        };
        let mut queues: Vec<(QueueState, OwnedFd)> = Vec::new();
        for sh in lock(&self.shadows).iter().filter_map(Weak::upgrade) {
            let (st, fd) = sh.export().map_err(&refuse)?;
            if sh.in_flight() != 0 {
                return Err(refuse(format!(
                    "{} command(s) are outstanding on I/O queue {}",
                    sh.in_flight(),
                    st.qid
                )));
            }
            queues.push((st, fd));
        }
        for p in lock(&self.parked).iter() {
            let (_, fd) = dup(&p.mem, "I/O queue memory")?;
            queues.push((p.state.clone(), fd));
        }
        drop(a);
        queues.sort_by_key(|(q, _)| q.qid);
        let mut fds = vec![device_fd, admin_fd];
        let mut io_queues = Vec::new();
        for (q, fd) in queues {
            io_queues.push(q);
            fds.push(fd);
        }
        Ok((
            ControllerState {
                addr: self.addr.clone(),
                group: self._device.group(),
                cap: self.cap.to_u64(),
                info: self.info.clone(),
                opts: self.opts.clone(),
                admin,
                io_queues,
                enables: self.enables.load(Ordering::Relaxed),
            },
            fds,
        ))
    }

    /// The predecessor has let go (hot upgrade): from now on this process owns the
    /// controller, its queues and their memory.
    pub fn take_ownership(&self) {
        lock(&self.admin).mem.take_ownership();
        for p in lock(&self.parked).iter() {
            p.mem.take_ownership();
        }
        self.owned.store(true, Ordering::Release);
    }
}

/// Whether a handed-over I/O queue's numbers describe a queue this driver could have
/// made: rings in range, drained, and the memory large enough for the layout.
pub(crate) fn check_queue_state(q: &QueueState) -> Result<(), String> {
    use lightpool_spec::nvme::{CQE_SIZE, SQE_SIZE};
    let depth = usize::from(q.depth);
    if SqRing::restore((q.depth, q.sq_tail, q.sq_head)).is_none()
        || CqRing::restore(q.depth, q.cq_head, q.cq_phase).is_none()
    {
        return Err(format!("I/O queue {}'s ring state is out of range", q.qid));
    }
    if q.sq_tail != q.sq_head {
        return Err(format!("I/O queue {} was not drained", q.qid));
    }
    let sq_bytes = (depth * SQE_SIZE).next_multiple_of(PAGE_SIZE);
    let cq_bytes = (depth * CQE_SIZE).next_multiple_of(PAGE_SIZE);
    let need = sq_bytes + cq_bytes + (depth - 1) * PAGE_SIZE;
    if q.cq_off != sq_bytes || q.prp_off != sq_bytes + cq_bytes || q.mem.len < need {
        return Err(format!(
            "I/O queue {}'s memory layout (CQ at {}, PRP lists at {}, {} bytes) does not fit depth {}",
            q.qid, q.cq_off, q.prp_off, q.mem.len, q.depth
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(qid: u16, depth: u16) -> QueueState {
        let sq = (usize::from(depth) * 64).next_multiple_of(PAGE_SIZE);
        let cq = (usize::from(depth) * 16).next_multiple_of(PAGE_SIZE);
        QueueState {
            qid,
            depth,
            sq_tail: 5,
            sq_head: 5,
            cq_head: 5,
            cq_phase: false,
            mem: MemState {
                len: 2 << 20,
                iova: 1 << 32,
                backing: Backing::Hugepages {
                    mount: "/dev/hugepages".into(),
                    page_size: 2 << 20,
                },
            },
            cq_off: sq,
            prp_off: sq + cq,
        }
    }

    #[test]
    fn queue_state_checks() {
        assert_eq!(check_queue_state(&queue(1, 256)), Ok(()));
        let mut q = queue(1, 256);
        q.sq_tail = 6;
        assert!(check_queue_state(&q).unwrap_err().contains("not drained"));
        let mut q = queue(2, 256);
        q.cq_head = 256;
        assert!(check_queue_state(&q).unwrap_err().contains("out of range"));
        let mut q = queue(3, 256);
        q.mem.len = 4096;
        assert!(check_queue_state(&q).unwrap_err().contains("layout"));
        let mut q = queue(4, 256);
        q.cq_off += 4096;
        assert!(check_queue_state(&q).is_err());
    }
}
